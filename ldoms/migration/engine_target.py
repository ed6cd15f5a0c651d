"""The target side: one peer connection, from the source's Hello to HandoffDone (or a RecoveryQuery).

Theory of operation (SPEC 2.2, 2.3, 4.3; DESIGN 3).  `TargetEngine.handle(link)` runs in the peer listener's
connection thread:

1. Hello: refused at once (Abort, code `migration-disabled`) when this ldmd takes no incoming migrations;
2. Auth: a password checked against the credential store, a client certificate (`-c`), or the recovery token
   of an earlier migration (which allows a RecoveryQuery and nothing else);
3. CheckRequest: the definition is read back safely (`checkwire`), every target rule runs
   (`run_target_checks`), then the resources are reserved as they will be held: inactive domains hold
   nothing; bound ones are bound anew (any layout); active ones keep their real addresses (`fit_blocks`) and
   get whole cores under the 1.2 rules (`bind_domain(..., full_cores=True)`).  Unless it is a dry run the
   shell is recorded (flag `t`, state bound or inactive) and locked against other operations;
4. Prepare: active domains get a staging image (a sparse file in HOME/migrations); PrepareAck;
5. the transfer (active): Suspend/SuspendAck, MemPages written into the image, RoundDone counts checked;
   FinalState: the image's digest must match before the journal may say "complete domain held";
6. CommitRequest: active domains start from the image (`GuestSupervisor.start(..., incoming_state=...)`),
   the domain is recorded active; Resumed; HandoffDone clears flag `t`.

Whatever ends it, `conn.outcome()` decides: DISCARD_TARGET (stop the guest if started, delete the image,
remove the shell, release the lock: this host is as it was) or KEEP_TARGET (the complete domain is here:
start it if it is not running yet, clear flag `t`).  The journal is saved before each send and after each
received event, and settled with the decision once carried out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import replace
from typing import Any, Protocol

from ldoms.checks import run_target_checks, target_facts
from ldoms.checks.failure import CheckFailure, Code, Side
from ldoms.errors import LdmError, ResourceError
from ldoms.migration.checkwire import IncomingDomain, MalformedRequest, read_check_request
from ldoms.migration.engine_common import LDM_VERSION, EngineDeps, add_domain, drop_domain, put_domain
from ldoms.migration.engine_source import RECOVERY_USER_PREFIX, platform_facts
from ldoms.migration.events import (
    Abort,
    Auth,
    AuthMethod,
    AuthResult,
    Cancel,
    CheckRequest,
    CheckResult,
    CommitRequest,
    Decision,
    Event,
    FinalState,
    Finding,
    HandoffDone,
    Hello,
    MemPages,
    MigrationMode,
    Prepare,
    PrepareAck,
    RecoveryAnswer,
    RecoveryQuery,
    Resumed,
    Role,
    RoundDone,
    Suspend,
    SuspendAck,
)
from ldoms.migration.protocol import MigrationConnection, Phase
from ldoms.migration.reserve import reserve
from ldoms.migration.runstate import RunState
from ldoms.migration.transfer import ImageWriter, TransferError, UnexpectedEvent
from ldoms.migration.transport import ControlChannel
from ldoms.migration.wire import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from ldoms.model.domain import DomainState, MigrationRole
from ldoms.model.machine import Machine
from ldoms.peer.errors import PeerError
from ldoms.peer.link import PeerLink

log = logging.getLogger("ldmd.migration.target")


class RunRegistry(Protocol):
    def add(self, run: RunState) -> None: ...

    def remove(self, run: RunState) -> None: ...


class Ended(LdmError):
    """The source ended the conversation (Abort, Cancel) or it ended by itself (a refusal we sent)."""

    code = "ended"


class TargetEngine:
    def __init__(self, deps: EngineDeps, runs: RunRegistry, *, accept_incoming: bool = True) -> None:
        self.deps = deps
        self.runs = runs
        self.accept_incoming = accept_incoming
        self.conn = MigrationConnection(Role.TARGET)
        self.chan: ControlChannel | None = None
        self.inc: IncomingDomain | None = None
        self.request: CheckRequest | None = None
        self.run: RunState | None = None
        self.reserved = False
        self.image: ImageWriter | None = None
        self.cpu_state: bytes | None = None
        self.started = False
        self.source_host = "?"
        self.extra: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.inc.name if self.inc is not None else "?"

    # ------------------------------------------------------------------ the conversation
    def handle(self, link: PeerLink) -> None:
        self.chan = ControlChannel(
            link,
            self.conn,
            policy=self.deps.policy,
            journals=self.deps.journals,
            journal_extra=lambda: self.extra,
        )
        self.chan.journaling = False  # nothing to recover until a domain is involved (CheckRequest)
        self.chan.on_progress = self._progress
        try:
            self._converse(self.chan)
        except BaseException as e:
            self._end(e)
        else:
            self._end(None)
        finally:
            self.chan.close()

    def _converse(self, chan: ControlChannel) -> None:
        hello = chan.receive()
        assert isinstance(hello, Hello)  # the table admits nothing else first
        self.source_host = hello.host_name
        machine = self.deps.host.machine
        if not self.accept_incoming:
            chan.send(
                Abort(
                    reason=f"Target host {machine.host_name} refuses the migration: its ldmd does not accept "
                    "incoming migrations (it runs with --no-incoming-migrations)",
                    who=Role.TARGET,
                    code="migration-disabled",
                )
            )
            return
        chan.send(
            Hello(
                role=Role.TARGET,
                version=PROTOCOL_VERSION,
                min_version=MIN_PROTOCOL_VERSION,
                migration_id=hello.migration_id,
                host_name=machine.host_name,
                ldm_version=LDM_VERSION,
                platform=platform_facts(machine),
            )
        )
        auth = chan.receive()
        assert isinstance(auth, Auth)
        recovery_of = self._authenticate(auth, chan.link)
        if self.conn.phase is not Phase.CHECK:
            return  # refused: AuthResult(failed) was sent
        ev = chan.receive()
        if isinstance(ev, RecoveryQuery):
            self._answer_recovery(ev, recovery_of)
            return
        if recovery_of is not None or not isinstance(ev, CheckRequest):
            raise TransferError("a recovery login may only ask how a migration ended (RecoveryQuery)")
        self._check(ev)
        if ev.dry_run or self.conn.phase is Phase.ABORTED:
            return
        self._prepare()
        if ev.mode is MigrationMode.ACTIVE:
            self._receive_image()
        self._expect(CommitRequest)
        self._commit()
        if self.deps.policy.hooks.drops("target:resumed"):
            log.warning("test hook: dropping the link instead of sending Resumed")
            chan.close()
            raise Ended("test hook: the link was dropped before Resumed")
        chan.send(Resumed(mode=ev.mode))
        self._expect(HandoffDone)

    # ------------------------------------------------------------------ authentication
    def _authenticate(self, auth: Auth, link: PeerLink) -> str | None:
        """Send AuthResult; return the migration id when the login is a recovery token."""
        from ldoms.peer import credentials
        from ldoms.peer.errors import AuthenticationFailed, PeerConfigError

        assert self.chan is not None
        host_name = self.deps.host.machine.host_name
        recovery_of: str | None = None
        try:
            if auth.method is AuthMethod.CERTIFICATE:
                credentials.authenticate_certificate(link.identity, host_name=host_name, client=link.where)
            elif auth.user.startswith(RECOVERY_USER_PREFIX):
                recovery_of = auth.user[len(RECOVERY_USER_PREFIX) :]
                self._check_token(recovery_of, auth.password or "", host_name)
            else:
                credentials.authenticate(
                    self.deps.home, auth.user, auth.password or "", host_name=host_name, client=link.where
                )
        except (AuthenticationFailed, PeerConfigError) as e:
            reason = (
                e.message
                if isinstance(e, AuthenticationFailed)
                else (f"Target host {host_name} cannot check credentials: {e.message}")
            )
            self.chan.send(AuthResult(ok=False, reason=reason))
            return None
        self.chan.send(AuthResult(ok=True))
        return recovery_of

    def _check_token(self, migration_id: str, token: str, host_name: str) -> None:
        from ldoms.peer.errors import AuthenticationFailed

        rec = self.deps.journals.load(migration_id, Role.TARGET)
        want = rec.extra.get("token_sha256") if rec is not None else None
        got = hashlib.sha256(token.encode()).hexdigest()
        if not isinstance(want, str) or not hmac.compare_digest(want, got):
            raise AuthenticationFailed(
                f"Authentication failed on target host {host_name}: no migration {migration_id} with that "
                "recovery token is recorded here"
            )

    def _answer_recovery(self, ev: RecoveryQuery, recovery_of: str | None) -> None:
        assert self.chan is not None
        decision: Decision | None = None
        detail = "no journal of that migration is recorded here"
        if recovery_of is not None and recovery_of != ev.migration_id:
            detail = "the recovery login was for another migration"
        else:
            rec = self.deps.journals.load(ev.migration_id, Role.TARGET)
            if rec is not None:
                decision = rec.journal.recovery()
                detail = f"the target reached phase {rec.journal.phase}"
        self.chan.send(RecoveryAnswer(migration_id=ev.migration_id, decision=decision, detail=detail))

    # ------------------------------------------------------------------ phase 1
    def _check(self, ev: CheckRequest) -> None:
        assert self.chan is not None
        self.request = ev
        token = ev.runtime.get("token_sha256")
        self.extra = {"token_sha256": token if isinstance(token, str) else ""}
        self.chan.journaling = not ev.dry_run
        self.chan.persist()
        failures: list[CheckFailure] = []
        warnings: list[CheckFailure] = []
        try:
            self.inc = read_check_request(ev)
        except MalformedRequest as e:
            failures.append(CheckFailure(code=Code.INTERNAL, message=e.message, side=Side.TARGET))
        else:
            failures, warnings = self._check_and_reserve(self.inc, dry_run=ev.dry_run)
        self.chan.send(
            CheckResult(
                failures=tuple(Finding.of(f) for f in failures),
                warnings=tuple(Finding.of(w) for w in warnings),
            )
        )

    def _check_and_reserve(
        self, inc: IncomingDomain, *, dry_run: bool
    ) -> tuple[list[CheckFailure], list[CheckFailure]]:
        host = self.deps.host
        out: tuple[list[CheckFailure], list[CheckFailure]] = ([], [])

        def judge(m: Machine) -> Machine:
            tf = target_facts(m, migrations_in_progress=tuple(host.migrating))
            report = run_target_checks(inc.facts, tf)
            failures, warnings = list(report.failures), list(report.warnings)
            out[0].extend(failures)
            out[1].extend(warnings)
            if failures:
                return m
            try:
                shell = reserve(m, inc)
            except ResourceError as e:
                out[0].append(
                    CheckFailure(code=Code.INTERNAL, message=e.message, side=Side.TARGET, resource="binding")
                )
                return m
            if dry_run:
                return m
            host.migrating[inc.name] = f"incoming migration from {self.source_host} in progress"
            self.reserved = True
            self.extra["reserved"] = True
            return add_domain(m, shell)

        try:
            host.change(judge)
        except BaseException:
            if self.reserved:  # the registry was written, the commit was not
                host.migrating.pop(inc.name, None)
                self.reserved = False
            raise
        if self.reserved:
            self.run = RunState(domain=inc.name, role=Role.TARGET, peer=self.source_host)
            self.runs.add(self.run)
        return out

    # ------------------------------------------------------------------ phases 2 to 4
    def _prepare(self) -> None:
        assert self.chan is not None and self.inc is not None and self.request is not None
        self._expect(Prepare)
        if self.request.mode is MigrationMode.ACTIVE:
            dom = self.deps.host.machine.domain(self.inc.name)
            assert dom.bindings is not None
            path = self.deps.journals.image_path(self.request_id)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a leftover of a crashed attempt with the same id cannot be ours
            self.image = ImageWriter(path, [(b.ra, b.size) for b in dom.bindings.mblocks])
        self.chan.send(PrepareAck(target_domain=self.inc.name))

    @property
    def request_id(self) -> str:
        assert self.conn.migration_id is not None
        return self.conn.migration_id

    def _receive_image(self) -> None:
        assert self.chan is not None and self.image is not None
        image = self.image
        while True:
            ev = self.chan.receive(inspect=self._verify_final)
            if isinstance(ev, MemPages):
                image.write(ev)
            elif isinstance(ev, RoundDone):
                image.end_round(ev)
            elif isinstance(ev, Suspend):
                if self.run is not None:
                    self.run.suspended = True
                self.chan.send(SuspendAck(round=ev.round))
            elif isinstance(ev, FinalState):
                return
            else:
                raise Ended(_ended_by(ev, self.source_host))

    def _verify_final(self, ev: Event) -> None:
        """Before the journal may say "complete domain held": the image matches and is on disk."""
        if not isinstance(ev, FinalState) or self.image is None:
            return
        digest = self.image.digest()
        if ev.algorithm != "sha256" or not hmac.compare_digest(digest, ev.checksum):
            raise TransferError(
                f"the memory image of LDom {self.name} does not match the source's checksum "
                f"({ev.algorithm} {ev.checksum[:16]}..., received {digest[:16]}...): pages were lost or "
                "damaged"
            )
        self.image.sync()
        self.image.close()
        self.cpu_state = ev.cpu_state
        self.extra["cpu_state"] = ev.cpu_state.decode("utf-8", "replace")

    def _commit(self) -> None:
        """The source handed the domain over: start it here (active) and record it."""
        assert self.request is not None
        if self.request.mode is MigrationMode.ACTIVE and not self.started:
            self._start_guest()
        if self.run is not None:
            self.run.set_progress(99)

    def _start_guest(self) -> None:
        assert self.inc is not None and self.cpu_state is not None
        facts = self.inc.facts
        shell = self.deps.host.machine.domain(self.inc.name)
        active = replace(
            shell,
            state=DomainState.ACTIVE,
            started_at=facts.domain.started_at or time.time(),
            softstate=facts.domain.softstate or "Solaris running",
        )
        image = self.deps.journals.image_path(self.request_id)
        rec = self.deps.guests.start_incoming(active, image, self.cpu_state)
        self.started = True
        self.deps.host.change(lambda m: put_domain(m, replace(active, guest_pid=rec.pid)))

    # ------------------------------------------------------------------ plumbing
    def _expect(self, cls: type[Event]) -> Event:
        assert self.chan is not None
        ev = self.chan.receive()
        if isinstance(ev, cls):
            return ev
        if isinstance(ev, Abort | Cancel):
            raise Ended(_ended_by(ev, self.source_host))
        raise UnexpectedEvent(ev, cls.__name__)

    def _progress(self, percent: int) -> None:
        if self.run is not None:
            self.run.set_progress(percent)

    # ------------------------------------------------------------------ the end: decide, apply
    def _end(self, exc: BaseException | None) -> None:
        chan = self.chan
        if exc is not None:
            if isinstance(exc, LdmError):
                log.info("migration from %s (LDom %s) ended: %s", self.source_host, self.name, exc)
            else:
                log.error("migration from %s failed on a bug", self.source_host, exc_info=exc)
            if chan is not None and not isinstance(exc, Ended):
                reason = exc.message if isinstance(exc, LdmError) else f"internal error on the target: {exc}"
                code = exc.code if isinstance(exc, LdmError) else "internal"
                if chan.try_send(Abort(reason=reason[:4000], who=Role.TARGET, code=code)):
                    self._drain(chan)
        if self.request is None or self.request.dry_run or self.conn.recovery:
            self._discard_image()
            return
        decision = self.conn.outcome()
        try:
            if decision is Decision.KEEP_TARGET:
                self._keep()
            else:
                self._discard()
        finally:
            if self.run is not None:
                self.run.done.set()
                self.runs.remove(self.run)

    def _drain(self, chan: ControlChannel) -> None:
        """After our Abort, read (and drop) what the source still sends until it closes the link: a source
        writing its CommitRequest meanwhile would otherwise fail to write, miss the Abort and go to the error
        state for nothing."""
        try:
            chan.link.settimeout(self.deps.policy.farewell_drain_s)
            while True:
                chan.link.recv_frame()
        except PeerError:
            pass

    def _keep(self) -> None:
        """The complete domain is here: it runs (active) and is an ordinary domain now."""
        if self.request is not None and self.request.mode is MigrationMode.ACTIVE and not self.started:
            try:
                self._start_guest()
            except LdmError as e:
                log.error("LDom %s arrived complete but its guest could not start: %s", self.name, e)
        name = self.name

        def keep(m: Machine) -> Machine:
            self.deps.host.migrating.pop(name, None)
            dom = m.find(name)
            if dom is None:
                return m
            return replace(put_domain(m, replace(dom, migration=MigrationRole.NONE)), spconfig_modified=True)

        self.deps.host.change(keep)
        self._settle(Decision.KEEP_TARGET)
        log.info("LDom %s arrived from %s", name, self.source_host)

    def _discard(self) -> None:
        """Nothing of the domain stays here: this host is as it was."""
        name = self.name
        if self.started:
            try:
                self.deps.guests.destroy(name)
            except LdmError as e:
                log.error("stopping the guest of the discarded LDom %s failed: %s", name, e)
        self._discard_image()
        if self.reserved and self.request is not None and self.request.mode is MigrationMode.ACTIVE:
            # A failed incoming start leaves the image, moved into the guests directory, to us: scrub it.
            self.deps.guests.memory_path(name).unlink(missing_ok=True)
            self.deps.journals.image_path(self.request_id).unlink(missing_ok=True)
        if self.reserved:

            def discard(m: Machine) -> Machine:
                self.deps.host.migrating.pop(name, None)
                dom = m.find(name)
                if dom is None or dom.migration is not MigrationRole.TARGET:
                    return m
                return drop_domain(m, name)

            self.deps.host.change(discard)
            self.reserved = False
        self._settle(Decision.DISCARD_TARGET)

    def _discard_image(self) -> None:
        if self.image is not None:
            self.image.discard()
            self.image = None

    def _settle(self, decision: Decision) -> None:
        if self.request is None or self.request.dry_run or self.conn.migration_id is None:
            return
        try:
            self.deps.journals.settle(self.conn.journal(), decision)
            self.deps.journals.prune()
        except LdmError as e:
            log.error("recording the end of the migration of LDom %s failed: %s", self.name, e)


def _ended_by(ev: Event, source: str) -> str:
    if isinstance(ev, Abort):
        return f"the source {source} aborted: {ev.reason}"
    if isinstance(ev, Cancel):
        return f"the source {source} cancelled: {ev.reason}"
    return f"the source {source} sent {type(ev).__name__}"
