"""The daemon-to-daemon migration protocol as a pure (sans-IO) state machine.

Theory of operation
-------------------
One `MigrationConnection` per side: `send(event) -> bytes` to speak, `receive_data(bytes)` then
`next_event()` (an event, `NEED_DATA`, or `LINK_CLOSED`) to listen.  It never touches a socket or a clock;
the transport moves the bytes and owns the deadlines (`DEADLINES` names the one each phase waits under).

The conversation is strictly turn-based; one phase names whose turn it is, and both sides walk the same
phases because every event is checked against ONE table, `TRANSITIONS[(phase, sender role, event kind)]`,
for what we send (else `LocalProtocolError`, and nothing changes: no bytes were produced, so both views still
agree) and for what we receive (else `RemoteProtocolError`, and the connection is in ERROR for good):

    IDLE -S:Hello-> HELLO -T:Hello-> AUTH -S:Auth-> AUTHENTICATING -T:AuthResult(ok)-> CHECK
    CHECK -S:CheckRequest(active)-> CHECKING -T:CheckResult(passed)-> PREPARE -S:Prepare-> PREPARING
      -T:PrepareAck-> PRECOPY (S: MemPages*, RoundDone per round) -S:Suspend-> SUSPENDING -T:SuspendAck->
      SUSPENDED (S: final round) -S:FinalState-> FINAL -S:CommitRequest-> HANDOFF -T:Resumed-> RESUMED
      -S:HandoffDone-> DONE
    CHECK -S:CheckRequest(bound/inactive)-> CHECKING_COLD -> PREPARE_COLD -> PREPARING_COLD -> PREPARED_COLD
      -S:CommitRequest-> HANDOFF (no transfer)
    CHECK -S:CheckRequest(dry run)-> CHECKING_DRY_RUN -T:CheckResult-> CLOSED
    CHECK -S:RecoveryQuery-> RECOVERING -T:RecoveryAnswer-> CLOSED
    a refused authentication or a failed check, Abort (either side) or Cancel (source) -> ABORTED

Rules the table cannot express (round numbers follow each other, a Pong answers a Ping, progress never
decreases, Prepare names the checked domain, the Hellos share a version) are checked the same way in both
directions.  Unsolicited events cross in flight, so an event the peer sent before it learned that we had
finished (`LATE_ARRIVALS`) is received and dropped instead of being an error.

The hand-off fence
------------------
At every moment each side knows what to do if the link dies now; `outcome(role, phase)` says it, and the
invariant is: never two running copies, never zero recoverable copies.

* Until the source has sent FinalState (or, cold, CommitRequest: the message that hands the complete domain
  over) the source copy is the master: the source resumes it (KEEP_SOURCE), the target scrubs and destroys
  its shell (DISCARD_TARGET).  The source may abort.
* Once that message was sent, the source can no longer know whether the target holds the complete image and
  resumes it, so it may no longer abort or resume: if the link dies before Resumed arrives it keeps its
  suspended copy in the error state `e` (SOURCE_ERROR, SPEC 4.3) for the admin or a RecoveryQuery to settle.
  The target, once it received the complete final state, keeps and resumes its copy (KEEP_TARGET); before
  that it discards.  Both are safe together: `e` never runs, and it stays recoverable.
* The target may still abort until it sends Resumed (bad checksum, failed resume); Abort is its promise to
  discard, so a source that receives it resumes.  After Resumed the target keeps its copy and the source,
  once Resumed arrived, destroys its own (DESTROY_SOURCE).
* A connection in ERROR answers from the phase it had reached, counting a send whose bytes may have left
  (`send_failed`).  When a remote error still allows us to abort, the error carries a farewell Abort and we
  count as aborted, so that our decision matches what we may have told the peer (journal it before writing
  it).  A frame cut short by the end of the link gets no farewell: nobody would read it.

Each side persists `journal()` (a tiny `Journal`) so that recovery after a crash knows what happened: before
writing the bytes of every send (write-ahead: the peer must never learn of a phase our disk does not know),
and after each received event (a lag there is safe: it only makes the decision more conservative).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from ldoms.migration.events import (
    NAME,
    Abort,
    CheckRequest,
    CommitRequest,
    Decision,
    Event,
    EventType,
    FinalState,
    Hello,
    InvalidEvent,
    LocalProtocolError,
    MemPages,
    MigrationMode,
    Ping,
    Pong,
    Prepare,
    PrepareAck,
    Progress,
    ProtocolError,
    RecoveryAnswer,
    RecoveryQuery,
    RemoteProtocolError,
    Resumed,
    Role,
    RoundDone,
    Suspend,
    SuspendAck,
    Validated,
    choice,
    optional,
    ruled,
    text,
)
from ldoms.migration.wire import (
    DEFAULT_MAX_PAYLOAD,
    FROZEN_TYPES,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    FrameDecoder,
    VersionMismatch,
    decode_event,
    encode_event,
)


class Phase(enum.StrEnum):
    IDLE = "IDLE"  # nothing exchanged
    HELLO = "HELLO"  # the source's Hello is out; the target answers with its own
    AUTH = "AUTH"  # versions agreed; the source authenticates
    AUTHENTICATING = "AUTHENTICATING"  # the target checks the credentials
    CHECK = "CHECK"  # authenticated; the source asks for the checks (or a recovery answer)
    CHECKING = "CHECKING"  # the target checks an active domain and reserves its resources
    CHECKING_COLD = "CHECKING_COLD"  # the same for a bound or inactive domain
    CHECKING_DRY_RUN = "CHECKING_DRY_RUN"  # the same for `migrate-domain -n`; ends after the result
    RECOVERING = "RECOVERING"  # the target looks up its journal of a failed hand-off
    PREPARE = "PREPARE"  # checks passed; the source asks for the shell
    PREPARING = "PREPARING"  # the target creates the shell and pre-touches memory
    PREPARE_COLD = "PREPARE_COLD"
    PREPARING_COLD = "PREPARING_COLD"
    PREPARED_COLD = "PREPARED_COLD"  # the shell exists; the source hands the domain over
    PRECOPY = "PRECOPY"  # rounds of pages while the guest runs
    SUSPENDING = "SUSPENDING"  # the source guest is suspended; the target confirms earlier rounds landed
    SUSPENDED = "SUSPENDED"  # the final round
    FINAL = "FINAL"  # the final state is out (source) / in (target): the fence is passed
    HANDOFF = "HANDOFF"  # the target records the domain and resumes it
    RESUMED = "RESUMED"  # the target runs the domain; the source destroys its copy
    DONE = "DONE"  # the domain moved
    CLOSED = "CLOSED"  # ended without moving anything: dry run, recovery query
    ABORTED = "ABORTED"  # refused, aborted or cancelled: both sides undo
    ERROR = "ERROR"  # a protocol violation or a failed send: refuses everything


S, T, E, P = Role.SOURCE, Role.TARGET, EventType, Phase
_MAIN: dict[tuple[Phase, Role, EventType], Phase] = {
    (P.IDLE, S, E.HELLO): P.HELLO,
    (P.HELLO, T, E.HELLO): P.AUTH,
    (P.AUTH, S, E.AUTH): P.AUTHENTICATING,
    (P.AUTHENTICATING, T, E.AUTH_OK): P.CHECK,
    (P.AUTHENTICATING, T, E.AUTH_FAILED): P.ABORTED,
    (P.CHECK, S, E.CHECK_ACTIVE): P.CHECKING,
    (P.CHECK, S, E.CHECK_COLD): P.CHECKING_COLD,
    (P.CHECK, S, E.CHECK_DRY_RUN): P.CHECKING_DRY_RUN,
    (P.CHECK, S, E.RECOVERY_QUERY): P.RECOVERING,
    (P.RECOVERING, T, E.RECOVERY_ANSWER): P.CLOSED,
    (P.CHECKING_DRY_RUN, T, E.CHECK_PASSED): P.CLOSED,
    (P.CHECKING_DRY_RUN, T, E.CHECK_FAILED): P.CLOSED,
    (P.CHECKING, T, E.CHECK_PASSED): P.PREPARE,
    (P.CHECKING, T, E.CHECK_FAILED): P.ABORTED,
    (P.PREPARE, S, E.PREPARE): P.PREPARING,
    (P.PREPARING, T, E.PREPARE_ACK): P.PRECOPY,
    (P.PRECOPY, S, E.MEM_PAGES): P.PRECOPY,
    (P.PRECOPY, S, E.ROUND_DONE): P.PRECOPY,
    (P.PRECOPY, S, E.SUSPEND): P.SUSPENDING,
    (P.SUSPENDING, T, E.SUSPEND_ACK): P.SUSPENDED,
    (P.SUSPENDED, S, E.MEM_PAGES): P.SUSPENDED,
    (P.SUSPENDED, S, E.ROUND_DONE): P.SUSPENDED,
    (P.SUSPENDED, S, E.FINAL_STATE): P.FINAL,
    (P.FINAL, S, E.COMMIT_REQUEST): P.HANDOFF,
    (P.CHECKING_COLD, T, E.CHECK_PASSED): P.PREPARE_COLD,
    (P.CHECKING_COLD, T, E.CHECK_FAILED): P.ABORTED,
    (P.PREPARE_COLD, S, E.PREPARE): P.PREPARING_COLD,
    (P.PREPARING_COLD, T, E.PREPARE_ACK): P.PREPARED_COLD,
    (P.PREPARED_COLD, S, E.COMMIT_REQUEST): P.HANDOFF,
    (P.HANDOFF, T, E.RESUMED): P.RESUMED,
    (P.RESUMED, S, E.HANDOFF_DONE): P.DONE,
}
TERMINAL = frozenset({P.DONE, P.CLOSED, P.ABORTED, P.ERROR})
# Where the source may still abort: before it handed the complete domain over (FinalState / CommitRequest).
SOURCE_MAY_ABORT = frozenset(set(P) - TERMINAL - {P.IDLE, P.FINAL, P.HANDOFF, P.RESUMED})
# Where the target may abort: until it sends Resumed.
TARGET_MAY_ABORT = frozenset(SOURCE_MAY_ABORT | {P.FINAL, P.HANDOFF})
# Keep-alives once a version is agreed on both sides (the source learns it from the target's Hello).
_TALKING = frozenset(set(P) - TERMINAL - {P.IDLE, P.HELLO})
_PROGRESS = frozenset({P.PRECOPY, P.SUSPENDING, P.SUSPENDED, P.FINAL, P.HANDOFF, P.RESUMED})

TRANSITIONS: Mapping[tuple[Phase, Role, EventType], Phase] = MappingProxyType(
    {
        **_MAIN,
        **{(p, S, e): P.ABORTED for p in SOURCE_MAY_ABORT for e in (E.ABORT, E.CANCEL)},
        **{(p, T, E.ABORT): P.ABORTED for p in TARGET_MAY_ABORT},
        **{(p, r, e): p for p in _TALKING for r in Role for e in (E.PING, E.PONG)},
        **{(p, S, E.PROGRESS): p for p in _PROGRESS},
    }
)
# Events the peer may have sent before it learned that we had finished: received and dropped.
LATE_ARRIVALS: Mapping[Phase, frozenset[EventType]] = MappingProxyType(
    {
        P.ABORTED: frozenset(EventType),
        P.CLOSED: frozenset({E.PING, E.PONG, E.ABORT, E.CANCEL}),
        P.DONE: frozenset({E.PING, E.PONG}),
    }
)
# The named policy deadline (ldmd's `policy.<name>`) a side waits under in each phase; None: no deadline of
# its own (the transfer is watched by its progress).  SPEC 7.13: connect 30 s, checks 120 s, hand-off 60 s.
DEADLINES: Mapping[Phase, str | None] = MappingProxyType(
    {p: "connect_s" for p in (P.IDLE, P.HELLO, P.AUTH, P.AUTHENTICATING)}
    | {p: "check_s" for p in (P.CHECK, P.CHECKING, P.CHECKING_COLD, P.CHECKING_DRY_RUN, P.RECOVERING)}
    | {p: "prepare_s" for p in (P.PREPARE, P.PREPARING, P.PREPARE_COLD, P.PREPARING_COLD, P.PREPARED_COLD)}
    | {p: None for p in (P.PRECOPY, P.SUSPENDING, P.SUSPENDED, *TERMINAL)}
    | {p: "handoff_ack_s" for p in (P.FINAL, P.HANDOFF, P.RESUMED)}
)

_SOURCE_OUTCOME = {P.FINAL: Decision.SOURCE_ERROR, P.HANDOFF: Decision.SOURCE_ERROR}
_SOURCE_OUTCOME |= {P.RESUMED: Decision.DESTROY_SOURCE, P.DONE: Decision.DESTROY_SOURCE}
_TARGET_OUTCOME = {p: Decision.KEEP_TARGET for p in (P.FINAL, P.HANDOFF, P.RESUMED, P.DONE)}


def outcome(role: Role, phase: Phase) -> Decision:
    """What `role` does with its copy if the link dies once it reached `phase` (the fence, above)."""
    if phase is P.ERROR:
        raise LocalProtocolError("ERROR is not a phase reached: ask the connection (conn.outcome())")
    if phase is P.RECOVERING:
        return Decision.NOTHING
    if role is S:
        return _SOURCE_OUTCOME.get(phase, Decision.KEEP_SOURCE)
    return _TARGET_OUTCOME.get(phase, Decision.DISCARD_TARGET)


class Signal(enum.Enum):
    NEED_DATA = "NEED_DATA"  # feed more bytes
    LINK_CLOSED = "LINK_CLOSED"  # the peer closed the link cleanly after whole frames: apply outcome()


NEED_DATA = Signal.NEED_DATA
LINK_CLOSED = Signal.LINK_CLOSED
_DECISIONS = {S: {Decision.KEEP_SOURCE, Decision.SOURCE_ERROR, Decision.DESTROY_SOURCE, Decision.NOTHING}}
_DECISIONS[T] = {Decision.DISCARD_TARGET, Decision.KEEP_TARGET, Decision.NOTHING}


@dataclass(frozen=True, slots=True, kw_only=True)
class Journal(Validated):
    """What one side persists about one migration: the phase reached and, at the end, the decision taken.
    After a crash, `recovery()` is what to do; the target also answers RecoveryQuery from it."""

    migration_id: str = field(metadata=ruled(NAME))
    role: Role = field(metadata=ruled(choice(Role)))
    phase: Phase = field(metadata=ruled(choice(Phase)))
    source_domain: str = field(default="", metadata=ruled(text(empty=True, limit=255)))
    target_domain: str = field(default="", metadata=ruled(text(empty=True, limit=255)))
    peer: str = field(default="", metadata=ruled(text(empty=True, limit=255)))  # the other ldmd's host
    mode: MigrationMode | None = field(default=None, metadata=ruled(optional(choice(MigrationMode))))
    decision: Decision | None = field(default=None, metadata=ruled(optional(choice(Decision))))

    def _check(self) -> None:
        if self.phase is P.ERROR:
            raise InvalidEvent("Journal.phase=ERROR: record the phase reached (conn.journal() does)")
        if self.decision is not None and self.decision not in _DECISIONS[self.role]:
            raise InvalidEvent(f"Journal.decision={self.decision.value}: not a decision of the {self.role}")

    def recovery(self) -> Decision:
        return self.decision if self.decision is not None else outcome(self.role, self.phase)

    def to_dict(self) -> dict[str, str | None]:
        """Plain strings, for the store."""
        return {f.name: None if (v := getattr(self, f.name)) is None else str(v) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Journal:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidEvent(f"Journal: unknown fields {sorted(unknown)}")
        return cls(**data)


class MigrationConnection:
    """One side of one migration conversation (see the module docstring)."""

    def __init__(
        self,
        role: Role,
        *,
        versions: tuple[int, int] = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.role = Role(role)
        if not 1 <= versions[0] <= versions[1] <= 255:
            raise LocalProtocolError(f"protocol versions {versions}: need 1 <= oldest <= newest <= 255")
        self.versions = versions  # (oldest, newest) we speak; our Hello must say the same
        self.version: int | None = None  # negotiated once both Hellos are known
        self.migration_id: str | None = None
        self.peer_host: str | None = None
        self.request: CheckRequest | None = None
        self.ended_by: Event | None = None  # the event that led to DONE, CLOSED or ABORTED
        self.recovery = False  # a RecoveryQuery conversation: touches no domain
        self._phase = P.IDLE
        self._reached = P.IDLE  # the phase outcome() answers from once in ERROR
        self._failure: ProtocolError | None = None
        self._eof = False
        self._max_payload = max_payload
        self._decoder = FrameDecoder(version=versions[1], max_payload=max_payload)
        self._round = 1  # the round MemPages and RoundDone belong to
        self._final_round: int | None = None
        self._progress = 0
        self._pings: dict[Role, set[int]] = {S: set(), T: set()}  # nonces each role sent, not yet answered
        self._hellos: dict[Role, Hello] = {}
        self._asked: str | None = None  # the migration a RecoveryQuery asked about

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def their_role(self) -> Role:
        return self.role.peer

    # ------------------------------------------------------------------------------------ speaking
    def send(self, event: Event) -> bytes:
        """The bytes to write for `event`.  Persist `journal()` before writing them (write-ahead)."""
        if self._failure is not None:
            raise LocalProtocolError(
                f"the {self.role} connection is in ERROR ({self._failure}); it sends nothing"
            )
        problem = self._violation(self.role, event)
        if problem is not None:
            raise LocalProtocolError(
                f"{self.role} cannot send {event.kind} in phase {self._phase}: {problem}"
            )
        frozen = event.TYPE in FROZEN_TYPES
        data = encode_event(event, version=self._wire_version(frozen), max_payload=self._max_payload)
        self._apply(self.role, event)
        return data

    def can_send(self, event: Event) -> bool:
        return self._failure is None and self._violation(self.role, event) is None

    def send_failed(self) -> None:
        """The transport could not write (all of) the last bytes: the peer may or may not have them."""
        self._enter_error(LocalProtocolError(f"a send failed in phase {self._phase}"))

    # ----------------------------------------------------------------------------------- listening
    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer, split anywhere; b"" means the peer closed the link."""
        if self._failure is not None:
            raise self._refusal()
        if data:
            self._decoder.feed(data)
        else:
            self._eof = True
            self._decoder.feed_eof()

    def next_event(self) -> Event | Signal:
        """The peer's next event, NEED_DATA, or LINK_CLOSED.  Persist `journal()` before acting on it."""
        if self._failure is not None:
            raise self._refusal()
        while True:
            try:
                frame = self._decoder.next_frame()
                if frame is None:
                    return LINK_CLOSED if self._decoder.at_eof else NEED_DATA
                event = decode_event(frame)
                if event.kind in LATE_ARRIVALS.get(self._phase, ()):
                    continue
                problem = self._violation(self.their_role, event)
                if problem is not None:
                    raise RemoteProtocolError(
                        f"{self.their_role} sent {event.kind} in phase {self._phase}: {problem}"
                    )
            except RemoteProtocolError as exc:
                if not self._eof:  # a closed link carries no farewell: keep the decision of the phase reached
                    self._farewell(exc)
                self._enter_error(exc)
                raise
            self._apply(self.their_role, event)
            return event

    # ------------------------------------------------------------------------------------- outcome
    def outcome(self) -> Decision:
        """What this side does with its copy if the link dies now (see the hand-off fence)."""
        if self.recovery:
            return Decision.NOTHING
        return outcome(self.role, self._reached if self._phase is P.ERROR else self._phase)

    def journal(self, decision: Decision | None = None) -> Journal:
        if self.migration_id is None:
            raise LocalProtocolError(f"the {self.role} has no migration to journal before the Hellos")
        req = self.request
        return Journal(
            migration_id=self.migration_id,
            role=self.role,
            phase=self._reached if self._phase is P.ERROR else self._phase,
            source_domain=req.source_domain if req else "",
            target_domain=req.target_domain if req else "",
            peer=self.peer_host or "",
            mode=req.mode if req else None,
            decision=decision,
        )

    # ------------------------------------------------------------------------------------ internals
    def _wire_version(self, frozen: bool) -> int:
        return self.versions[1] if frozen or self.version is None else self.version

    def _violation(self, sender: Role, ev: Event) -> str | None:
        """Why `sender` may not send `ev` now, or None.  Pure: decides before anything changes."""
        kind = ev.kind
        if (self._phase, sender, kind) not in TRANSITIONS:
            if sender is S and kind in (E.ABORT, E.CANCEL) and self._phase in (P.FINAL, P.HANDOFF):
                return (
                    "the complete domain was handed to the target, so the source can no longer abort; "
                    "the target decides (wait for Resumed or the hand-off deadline)"
                )
            allowed = sorted({k for (p, r, k) in TRANSITIONS if p is self._phase and r is sender})
            return f"not a step of the protocol (the {sender} may send: {', '.join(allowed) or 'nothing'})"
        return self._rule_violation(sender, ev)

    def _rule_violation(self, sender: Role, ev: Event) -> str | None:
        """The rules the table cannot express, the same in both directions."""
        req = self.request
        match ev:
            case Hello():
                return self._hello_violation(sender, ev)
            case Abort() if ev.who is not sender:
                return f"an Abort sent by the {sender} must say who={sender}, not who={ev.who}"
            case Prepare() | PrepareAck() if req is None or ev.target_domain != req.target_domain:
                return f"target domain {ev.target_domain} is not the checked one, {req and req.target_domain}"
            case MemPages() | RoundDone() | Suspend() if self._final_round_closed():
                return f"round {ev.round} comes after the final round {self._final_round} was closed"
            case MemPages() | RoundDone() | Suspend() if ev.round != self._round:
                return f"round {ev.round} is out of order: round {self._round} is open"
            case SuspendAck() if ev.round != self._final_round:
                return f"it acknowledges round {ev.round}, the final round is {self._final_round}"
            case FinalState() if not self._final_round_closed():
                return f"the final round {self._final_round} was not closed by its RoundDone"
            case CommitRequest() | Resumed() if req is None or ev.mode is not req.mode:
                return f"mode {ev.mode} is not the checked one, {req and req.mode}"
            case Progress() if ev.percent < self._progress:
                return f"progress went back from {self._progress}% to {ev.percent}%"
            case Ping() if ev.nonce in self._pings[sender]:
                return f"ping {ev.nonce} of the {sender} is already outstanding"
            case Pong() if ev.nonce not in self._pings[sender.peer]:
                return f"pong {ev.nonce} answers no ping of the {sender.peer}"
            case RecoveryAnswer() if ev.migration_id != self._asked:
                return f"it answers about migration {ev.migration_id}, the question was about {self._asked}"
        return None

    def _final_round_closed(self) -> bool:
        return self._final_round is not None and self._round > self._final_round

    def _hello_violation(self, sender: Role, hello: Hello) -> str | None:
        if hello.role is not sender:
            return f"the Hello of the {sender} claims role {hello.role}"
        if sender is self.role and (hello.min_version, hello.version) != self.versions:
            return f"our Hello must offer versions {self.versions[0]}..{self.versions[1]}"
        first = self._hellos.get(S)
        if sender is T and first is not None and hello.migration_id != first.migration_id:
            return f"the target's Hello is for migration {hello.migration_id}, not {first.migration_id}"
        return None

    def _apply(self, sender: Role, ev: Event) -> None:
        self._phase = self._reached = TRANSITIONS[(self._phase, sender, ev.kind)]
        if self._phase in TERMINAL:
            self.ended_by = ev
        match ev:
            case Hello():
                self._hellos[sender] = ev
                self.migration_id = self._hellos[S].migration_id if S in self._hellos else ev.migration_id
                if sender is not self.role:
                    self.peer_host = ev.host_name
                    self._negotiate(sender, ev)
            case CheckRequest():
                self.request = ev
            case RecoveryQuery():
                self.recovery = True
                self._asked = ev.migration_id
            case RoundDone():
                self._round += 1
            case Suspend():
                self._final_round = ev.round
            case Progress():
                self._progress = ev.percent
            case Ping():
                self._pings[sender].add(ev.nonce)
            case Pong():
                self._pings[sender.peer].discard(ev.nonce)

    def _negotiate(self, sender: Role, hello: Hello) -> None:
        """The highest version both speak; without one the peer learns both ranges from our farewell."""
        ours, theirs = self.versions, (hello.min_version, hello.version)
        common = min(ours[1], theirs[1])
        if common < max(ours[0], theirs[0]):
            exc = VersionMismatch(
                f"migration protocol version mismatch: the {sender} ldmd {hello.host_name} speaks versions "
                f"{theirs[0]}..{theirs[1]}, this {self.role} ldmd speaks versions {ours[0]}..{ours[1]}"
            )
            self._farewell(exc)
            self._enter_error(exc)
            raise exc
        self.version = common
        self._decoder.version = common

    def _farewell(self, exc: RemoteProtocolError) -> None:
        """Attach an Abort telling the peer why, where we may still abort; we then count as aborted."""
        if exc.farewell is not None or (self._phase, self.role, E.ABORT) not in TRANSITIONS:
            return
        abort = Abort(reason=str(exc)[:4096], who=self.role, code=exc.code)
        exc.farewell = encode_event(abort, version=self.versions[1], max_payload=self._max_payload)
        self._phase = self._reached = P.ABORTED

    def _enter_error(self, exc: ProtocolError) -> None:
        if self._failure is None:
            self._failure = exc
            if self._phase is not P.ERROR:
                self._reached = self._phase
            self._phase = P.ERROR

    def _refusal(self) -> ProtocolError:
        cls = RemoteProtocolError if isinstance(self._failure, RemoteProtocolError) else LocalProtocolError
        return cls(f"the {self.role} connection is in ERROR ({self._failure}); it receives nothing")
