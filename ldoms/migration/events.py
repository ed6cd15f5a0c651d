"""The vocabulary of the migration protocol: message types, events, and the protocol's error classes.

Every event is a frozen, slotted, keyword-only dataclass.  Each field declares its rule
(`field(metadata=ruled(check))`); one `__post_init__` runs the rules, then the event's cross-field
`_check()`.  A broken rule raises `InvalidEvent`, so an event that exists is well formed, whether we built it
or decoded it from the peer's bytes.
Mapping fields (platform facts, runtime facts, data-plane parameters) are deep-frozen into read-only mappings
and tuples, so a frozen event is really immutable; enum fields accept their string values.

`kind` is what the transition table keys on: the event's type, refined where the next phase depends on the
content (AuthResult: AUTH_OK / AUTH_FAILED; CheckRequest: CHECK_ACTIVE / CHECK_COLD / CHECK_DRY_RUN;
CheckResult: CHECK_PASSED / CHECK_FAILED).

Errors: `ProtocolError` is the root; `LocalProtocolError` means *we* tried something the protocol forbids
(nothing was sent, our state is unchanged), `RemoteProtocolError` means the *peer* did (the connection is in
ERROR).  The framing errors live in `wire`, the version mismatch in `protocol`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias

from ldoms.migration.vocab import (  # noqa: F401
    AuthMethod,
    Decision,
    EventType,
    InvalidEvent,
    LocalProtocolError,
    MessageType,
    MigrationMode,
    ProtocolError,
    RemoteProtocolError,
    Role,
)
from ldoms.units import PAGE_SIZE

JSONValue: TypeAlias = "bool | int | float | str | tuple[JSONValue, ...] | Mapping[str, JSONValue] | None"
Facts: TypeAlias = "Mapping[str, JSONValue]"
Check: TypeAlias = Callable[[str, Any], Any]  # (qualified field name, value) -> normalised value
_MAX_DEPTH = 16  # facts are shallow; a deeper document is a hostile one
_U32 = 2**32 - 1
_U64 = 2**64


# ------------------------------------------------------------------------------------------------- rules
def _bad(where: str, value: object, rule: str) -> InvalidEvent:
    shown = f"{value[:60]!r}..." if isinstance(value, str | bytes) and len(value) > 60 else repr(value)
    return InvalidEvent(f"{where}={shown}: {rule}")


def text(*, empty: bool = False, limit: int = 4096, pattern: str | None = None, what: str = "") -> Check:
    def check(where: str, v: Any) -> Any:
        if not isinstance(v, str):
            raise _bad(where, v, "must be a string")
        if not empty and not v:
            raise _bad(where, v, "must not be empty")
        if len(v) > limit:
            raise _bad(where, v, f"must be at most {limit} characters")
        if pattern is not None and v and not re.fullmatch(pattern, v):
            raise _bad(where, v, f"must be {what}")
        return v

    return check


NAME = text(limit=255, pattern=r"[^\s\x00-\x1f\x7f]+", what="printable, without spaces")


def integer(lo: int = 0, hi: int = _U64 - 1) -> Check:
    def check(where: str, v: Any) -> Any:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise _bad(where, v, f"must be an integer in {lo}..{hi}")
        return v

    return check


def boolean(where: str, v: Any) -> Any:
    if not isinstance(v, bool):
        raise _bad(where, v, "must be true or false")
    return v


def raw(where: str, v: Any) -> Any:
    if not isinstance(v, bytes):
        raise _bad(where, v, "must be bytes")
    return v


def choice(enum_cls: type[enum.StrEnum]) -> Check:
    def check(where: str, v: Any) -> Any:
        try:
            return enum_cls(v)
        except ValueError:
            raise _bad(where, v, f"must be one of {', '.join(e.value for e in enum_cls)}") from None

    return check


def optional(inner: Check) -> Check:
    return lambda where, v: None if v is None else inner(where, v)


def strings(where: str, v: Any) -> Any:
    if not isinstance(v, tuple) or not all(isinstance(s, str) and s for s in v):
        raise _bad(where, v, "must be a tuple of non-empty strings")
    return v


def facts(where: str, v: Any) -> Any:
    if not isinstance(v, Mapping):
        raise _bad(where, v, "must be a mapping of names to JSON values")
    return freeze(v, where)


def freeze(value: Any, where: str, depth: int = 0) -> JSONValue:
    """A JSON document as read-only mappings and tuples (validated: finite numbers, string keys)."""
    if depth > _MAX_DEPTH:
        raise InvalidEvent(f"{where}: nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(where, value, "must be a finite number")
        return value
    if isinstance(value, list | tuple):
        return tuple(freeze(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidEvent(f"{where}: key {k!r} must be a string")
            out[k] = freeze(v, f"{where}.{k}", depth + 1)
        return MappingProxyType(out)
    raise _bad(where, value, "not a JSON value (null, bool, number, string, list, object)")


def thaw(value: Any) -> Any:
    """The inverse of `freeze`: plain dicts and lists, for json.dumps."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def ruled(check: Check) -> dict[str, Check]:
    """Field metadata: `field(metadata=ruled(check))` validates (and normalises) the field at construction."""
    return {"check": check}


@dataclass(frozen=True, slots=True, kw_only=True)
class Validated:
    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                value = check(f"{type(self).__name__}.{f.name}", getattr(self, f.name))
                object.__setattr__(self, f.name, value)  # frozen: normalising is part of construction
        self._check()

    def _check(self) -> None:
        """Rules across fields; override."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding(Validated):
    """One check failure or warning as it travels (the fields of `ldoms.checks.failure.CheckFailure`)."""

    code: str = field(metadata=ruled(text(limit=64)))
    message: str = field(metadata=ruled(text()))
    side: Role = field(default=Role.TARGET, metadata=ruled(choice(Role)))
    resource: str = field(default="", metadata=ruled(text(empty=True)))
    observed: str = field(default="", metadata=ruled(text(empty=True)))
    required: str = field(default="", metadata=ruled(text(empty=True)))
    remedy: str = field(default="", metadata=ruled(text(empty=True)))

    @classmethod
    def of(cls, failure: Any) -> Finding:
        """From any object with CheckFailure's attributes (code, message, side, resource, ...)."""
        given: dict[str, Any] = {
            f.name: str(getattr(failure, f.name)) for f in dataclasses.fields(cls) if hasattr(failure, f.name)
        }
        return cls(**given)


def findings(where: str, v: Any) -> Any:
    if not isinstance(v, tuple) or not all(isinstance(f, Finding) for f in v):
        raise _bad(where, v, "must be a tuple of Finding")
    return v


# ------------------------------------------------------------------------------------------------ events
@dataclass(frozen=True, slots=True, kw_only=True)
class Event(Validated):
    TYPE: ClassVar[MessageType]

    @property
    def kind(self) -> EventType:
        return EventType[self.TYPE.name]


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Event):
    """Each side's first message.  The link speaks the highest version in both [min_version, version]
    ranges.  `platform` carries the cpu type, clock, firmware and page sizes the checks compare."""

    TYPE = MessageType.HELLO
    role: Role = field(metadata=ruled(choice(Role)))
    version: int = field(metadata=ruled(integer(1, 255)))
    min_version: int = field(metadata=ruled(integer(1, 255)))
    migration_id: str = field(metadata=ruled(NAME))
    host_name: str = field(metadata=ruled(NAME))
    # the manager release ("1.2"), for the software compatibility checks
    ldm_version: str = field(default="", metadata=ruled(text(empty=True, limit=64)))
    capabilities: tuple[str, ...] = field(default=(), metadata=ruled(strings))
    platform: Facts = field(default_factory=dict, metadata=ruled(facts))

    def _check(self) -> None:
        if self.min_version > self.version:
            raise InvalidEvent(f"Hello: min_version {self.min_version} is above version {self.version}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth(Event):
    TYPE = MessageType.AUTH
    user: str = field(metadata=ruled(NAME))
    method: AuthMethod = field(default=AuthMethod.PASSWORD, metadata=ruled(choice(AuthMethod)))
    # repr=False: never in a log
    password: str | None = field(default=None, repr=False, metadata=ruled(optional(text(empty=True))))

    def _check(self) -> None:
        if (self.method is AuthMethod.PASSWORD) != (self.password is not None):
            raise InvalidEvent("Auth: a password comes with method password, and only with it")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult(Event):
    TYPE = MessageType.AUTH_RESULT
    ok: bool = field(metadata=ruled(boolean))
    reason: str = field(default="", metadata=ruled(text(empty=True)))

    def _check(self) -> None:
        if not self.ok and not self.reason:
            raise InvalidEvent("AuthResult: a refusal needs a reason")

    @property
    def kind(self) -> EventType:
        return EventType.AUTH_OK if self.ok else EventType.AUTH_FAILED


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckRequest(Event):
    """Phase 1: the source's facts.  The target runs its checks and reserves what the domain needs."""

    TYPE = MessageType.CHECK_REQUEST
    mode: MigrationMode = field(metadata=ruled(choice(MigrationMode)))
    dry_run: bool = field(metadata=ruled(boolean))
    source_domain: str = field(metadata=ruled(NAME))
    target_domain: str = field(metadata=ruled(NAME))
    # the constraints, as `ldm list-constraints -x` prints them
    domain_xml: str = field(metadata=ruled(text(limit=4 * 1024 * 1024)))
    # the source machine's and the guest's facts that the target's checks need
    runtime: Facts = field(default_factory=dict, metadata=ruled(facts))

    @property
    def kind(self) -> EventType:
        if self.dry_run:
            return EventType.CHECK_DRY_RUN
        return EventType.CHECK_ACTIVE if self.mode is MigrationMode.ACTIVE else EventType.CHECK_COLD


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult(Event):
    """Every failure (the migration is refused) and every warning (it goes ahead) the target found."""

    TYPE = MessageType.CHECK_RESULT
    failures: tuple[Finding, ...] = field(default=(), metadata=ruled(findings))
    warnings: tuple[Finding, ...] = field(default=(), metadata=ruled(findings))

    @property
    def kind(self) -> EventType:
        return EventType.CHECK_FAILED if self.failures else EventType.CHECK_PASSED


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryQuery(Event):
    """After a hand-off that left the source in the error state: what did the target decide?"""

    TYPE = MessageType.RECOVERY_QUERY
    migration_id: str = field(metadata=ruled(NAME))


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryAnswer(Event):
    """`decision` is None when the target holds no journal of that migration."""

    TYPE = MessageType.RECOVERY_ANSWER
    migration_id: str = field(metadata=ruled(NAME))
    decision: Decision | None = field(metadata=ruled(optional(choice(Decision))))
    detail: str = field(default="", metadata=ruled(text(empty=True)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare(Event):
    """Phase 2: the target creates the domain shell (flag t) and pre-touches its memory."""

    TYPE = MessageType.PREPARE
    target_domain: str = field(metadata=ruled(NAME))
    # the source's offer: channel count, cipher, key share
    data_plane: Facts = field(default_factory=dict, metadata=ruled(facts))


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareAck(Event):
    """The target holds the shell and its reservation; `data_plane` answers the offer."""

    TYPE = MessageType.PREPARE_ACK
    target_domain: str = field(metadata=ruled(NAME))
    data_plane: Facts = field(default_factory=dict, metadata=ruled(facts))


@dataclass(frozen=True, slots=True, kw_only=True)
class MemPages(Event):
    """Pages of round `round`: inline runs `(real address, bytes)`, or an opaque data-plane `descriptor`
    (the pages travelled over the parallel channels).  Runs are whole 8 KiB pages at aligned addresses."""

    TYPE = MessageType.MEM_PAGES
    round: int = field(metadata=ruled(integer(1, _U32)))
    pages: tuple[tuple[int, bytes], ...] = ()
    descriptor: bytes | None = field(default=None, metadata=ruled(optional(raw)))

    def _check(self) -> None:
        if not isinstance(self.pages, tuple) or bool(self.pages) == (self.descriptor is not None):
            raise InvalidEvent("MemPages: needs a tuple of page runs or a descriptor, not both, not neither")
        if self.descriptor is not None and not self.descriptor:
            raise InvalidEvent("MemPages: the descriptor is empty")
        for i, run in enumerate(self.pages):
            ra, data = run if isinstance(run, tuple) and len(run) == 2 else (None, None)
            if not isinstance(ra, int) or isinstance(ra, bool) or not isinstance(data, bytes):
                raise _bad(f"MemPages.pages[{i}]", run, "must be (real address, bytes)")
            if ra < 0 or ra % PAGE_SIZE or not data or len(data) % PAGE_SIZE or ra + len(data) > _U64:
                raise InvalidEvent(
                    f"MemPages.pages[{i}]: a run of {len(data)} bytes at real address {ra:#x} must be whole "
                    f"{PAGE_SIZE}-byte pages at a page-aligned address below 2**64"
                )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundDone(Event):
    TYPE = MessageType.ROUND_DONE
    round: int = field(metadata=ruled(integer(1, _U32)))
    pages: int = field(metadata=ruled(integer()))
    nbytes: int = field(metadata=ruled(integer()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Suspend(Event):
    """The source guest is suspended; `round` numbers the final round that follows."""

    TYPE = MessageType.SUSPEND
    round: int = field(metadata=ruled(integer(1, _U32)))


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspendAck(Event):
    TYPE = MessageType.SUSPEND_ACK
    round: int = field(metadata=ruled(integer(1, _U32)))


CHECKSUM_HEX_DIGITS = {"sha256": 64, "blake2b": 128}


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalState(Event):
    """The vCPU state and the checksum of the whole memory image: the last of the runtime state."""

    TYPE = MessageType.FINAL_STATE
    cpu_state: bytes = field(metadata=ruled(raw))
    checksum: str = field(metadata=ruled(text(limit=128)))
    algorithm: str = field(
        default="sha256",
        metadata=ruled(text(pattern="|".join(CHECKSUM_HEX_DIGITS), what="sha256 or blake2b")),
    )

    def _check(self) -> None:
        digits = CHECKSUM_HEX_DIGITS[self.algorithm]
        if not re.fullmatch(f"[0-9a-f]{{{digits}}}", self.checksum):
            raise _bad("FinalState.checksum", self.checksum, f"must be {digits} lowercase hex digits")


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRequest(Event):
    """Source to target: durably record the domain, then resume it (active) or keep it bound/inactive."""

    TYPE = MessageType.COMMIT_REQUEST
    mode: MigrationMode = field(metadata=ruled(choice(MigrationMode)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Resumed(Event):
    """Target to source: the domain is recorded here and runs (active) or is bound/inactive.  `measured`:
    what the target observed, e.g. `downtime_s`, the pause its guest measured (for the source's record)."""

    TYPE = MessageType.RESUMED
    mode: MigrationMode = field(metadata=ruled(choice(MigrationMode)))
    measured: Facts = field(default_factory=dict, metadata=ruled(facts))


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffDone(Event):
    """Source to target: the source copy is destroyed; the target clears flag t."""

    TYPE = MessageType.HANDOFF_DONE


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort(Event):
    """Ends the migration; both sides undo.  `who` is the sender, `code` a stable reason identifier."""

    TYPE = MessageType.ABORT
    reason: str = field(metadata=ruled(text()))
    who: Role = field(metadata=ruled(choice(Role)))
    code: str = field(default="aborted", metadata=ruled(text(limit=64)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(Event):
    """`ldm cancel-operation migration` (or a killed ldm) on the source: an abort the admin asked for."""

    TYPE = MessageType.CANCEL
    reason: str = field(default="cancelled by the administrator", metadata=ruled(text()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress(Event):
    TYPE = MessageType.PROGRESS
    percent: int = field(metadata=ruled(integer(0, 100)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Event):
    TYPE = MessageType.PING
    nonce: int = field(metadata=ruled(integer(0, 2**63 - 1)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(Event):
    """`wall_us`: the answering host's wall clock (microseconds since the epoch) when it answered: the
    source estimates the two hosts' clock offset from it (`live_plan.clock_offset_s`)."""

    TYPE = MessageType.PONG
    nonce: int = field(metadata=ruled(integer(0, 2**63 - 1)))
    wall_us: int | None = field(default=None, metadata=ruled(optional(integer(0, 2**63 - 1))))


EVENT_CLASSES: dict[MessageType, type[Event]] = {
    c.TYPE: c
    for c in (Hello, Abort, Auth, AuthResult, CheckRequest, CheckResult, Prepare, PrepareAck, MemPages,
              RoundDone, Suspend, SuspendAck, FinalState, CommitRequest, Resumed, HandoffDone, Cancel,
              Progress, Ping, Pong, RecoveryQuery, RecoveryAnswer)
}  # fmt: skip
