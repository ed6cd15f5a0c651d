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
4. Prepare: active domains get their image and its receiver (`ldoms.migration.incoming`): over the data
   plane when the source offers one (the image where the guest will run it, blocks reserved and pre-touched,
   an ephemeral data port in PrepareAck, a standby guest started meanwhile), else the issue-3 staging image
   fed on the control link; PrepareAck;
5. the transfer (active): MemPages descriptors (one per data-plane chunk) and RoundDone are checked against
   what arrived, Suspend is acknowledged; FinalState: the accounting digest must match, the data plane must
   end cleanly, the image is flushed and the standby guest up before the journal may say "complete domain
   held";
6. CommitRequest: the standby guest takes the vCPU state and runs (`restore`; it measures the downtime),
   the domain is recorded active; Resumed (with the downtime); HandoffDone clears flag `t`.

Whatever ends it, `conn.outcome()` decides: DISCARD_TARGET (stop the receiver and the guest, scrub the
image in the background, remove the shell, release the lock: this host is as it was) or KEEP_TARGET (the
complete domain is here: run it if it is not running yet, clear flag `t`).  The journal is saved before each
send and after each received event, and settled with the decision once carried out; the migration's record
goes to the host's history.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Protocol

from ldoms.checks import run_target_checks, target_facts
from ldoms.checks.failure import CheckFailure, Code, Side
from ldoms.errors import LdmError, ResourceError
from ldoms.migration.checkwire import IncomingDomain, MalformedRequest, read_check_request
from ldoms.migration.engine_common import (
    LDM_VERSION,
    EngineDeps,
    add_domain,
    drop_domain,
    make_record,
    put_domain,
    settle_journal,
)
from ldoms.migration.engine_source import platform_facts
from ldoms.migration.events import (
    Abort,
    Auth,
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
    RecoveryQuery,
    Resumed,
    Role,
    RoundDone,
    Suspend,
    SuspendAck,
)
from ldoms.migration.incoming import IncomingActive
from ldoms.migration.live_target import boot_id
from ldoms.migration.protocol import MigrationConnection, Phase
from ldoms.migration.reserve import reserve
from ldoms.migration.runstate import RunState
from ldoms.migration.target_auth import TargetAuth
from ldoms.migration.transfer import TransferError, UnexpectedEvent
from ldoms.migration.transport import ControlChannel, ReadInterrupted
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


class TargetEngine(TargetAuth):
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
        self.incoming: IncomingActive | None = None
        self.cpu_state: bytes | None = None
        self.source_host = "?"
        self.extra: dict[str, Any] = {}
        self.started_at = time.time()
        self.end_reason = ""
        self.rounds = 0

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
        measured: dict[str, Any] = {}
        if self.incoming is not None and self.incoming.downtime_s is not None:
            measured["downtime_s"] = float(self.incoming.downtime_s)
        self.extra["resumed"] = True  # the journal knows the source may now destroy its copy
        chan.send(Resumed(mode=ev.mode, measured=measured))
        self._expect(HandoffDone)

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
        ev = self._expect(Prepare)
        assert isinstance(ev, Prepare)
        ack: dict[str, Any] = {}
        if self.request.mode is MigrationMode.ACTIVE:
            self._phase("prepare")
            self.deps.policy.hooks.at("target:prepare")
            shell = self.deps.host.machine.domain(self.inc.name)
            self.incoming = IncomingActive(self.deps, self.inc.name, self.request_id)
            bind = self.chan.link.local_address
            self.chan.enable_wake()
            host = bind[0] if bind is not None else "127.0.0.1"
            ack = self.incoming.prepare(ev, shell, host, self.chan.wake)
        self.chan.send(PrepareAck(target_domain=self.inc.name, data_plane=ack))
        if self.incoming is not None:
            self.incoming.started_link()
            self.chan.before_pong = self.incoming.ready_for_switch_over

    @property
    def request_id(self) -> str:
        assert self.conn.migration_id is not None
        return self.conn.migration_id

    def _receive_image(self) -> None:
        assert self.chan is not None and self.incoming is not None
        incoming = self.incoming
        self._phase("precopy")
        while True:
            try:
                ev = self.chan.receive(inspect=self._verify_final)
            except ReadInterrupted:  # the data plane stopped: say why (raises)
                incoming.check()
                raise TransferError("the data plane stopped without a reason") from None
            if isinstance(ev, MemPages):
                incoming.pages(ev)
            elif isinstance(ev, RoundDone):
                incoming.round_done(ev)
                self.rounds += 1
            elif isinstance(ev, Suspend):
                self._phase("suspended")
                if self.run is not None:
                    self.run.suspended = True
                if self.deps.policy.hooks.drops("target:suspend-ack"):
                    log.warning("test hook: dropping the link instead of sending SuspendAck")
                    self.chan.close()
                    raise Ended("test hook: the link was dropped before SuspendAck")
                self.chan.send(SuspendAck(round=ev.round))
            elif isinstance(ev, FinalState):
                self._phase("final")
                return
            else:
                raise Ended(_ended_by(ev, self.source_host))

    def _verify_final(self, ev: Event) -> None:
        """Before the journal may say "complete domain held": the image is complete and on disk."""
        if not isinstance(ev, FinalState) or self.incoming is None:
            return
        self.deps.policy.hooks.at("target:verify-final")
        t0 = time.monotonic()
        self.incoming.verify_final(ev)
        log.info("LDom %s: the final state checked out in %.1f ms", self.name, (time.monotonic() - t0) * 1000)
        self.cpu_state = ev.cpu_state
        self.extra["cpu_state"] = ev.cpu_state.decode("utf-8", "replace")
        if self.incoming.data_plane:
            self.extra["boot_id"] = boot_id()  # the image is held in memory: valid for this boot only

    def _commit(self) -> None:
        """The source handed the domain over: run it here (active) and record it."""
        assert self.request is not None
        self._phase("handoff")
        self.deps.policy.hooks.at("target:commit")
        if self.request.mode is MigrationMode.ACTIVE and not self._started:
            self._start_guest()
        if self.run is not None:
            self.run.set_progress(99)

    @property
    def _started(self) -> bool:
        return self.incoming is not None and self.incoming.started

    def _start_guest(self) -> None:
        assert self.inc is not None and self.cpu_state is not None and self.incoming is not None
        facts = self.inc.facts
        shell = self.deps.host.machine.domain(self.inc.name)
        active = replace(
            shell,
            state=DomainState.ACTIVE,
            started_at=facts.domain.started_at or time.time(),
            softstate=facts.domain.softstate or "Solaris running",
        )
        pid = self.incoming.start(active, self.cpu_state)
        self.deps.host.change(lambda m: put_domain(m, replace(active, guest_pid=pid)))

    def _phase(self, phase: str) -> None:
        if self.run is not None:
            self.run.set_progress(self.run.progress, phase)

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
            self.end_reason = exc.message if isinstance(exc, LdmError) else f"internal error: {exc}"
            if isinstance(exc, LdmError):
                log.info("migration from %s (LDom %s) ended: %s", self.source_host, self.name, exc)
            else:
                log.error("migration from %s failed on a bug", self.source_host, exc_info=exc)
            if self.incoming is not None:
                self.incoming.close()  # no lane keeps writing while we tell the source and decide
            if chan is not None and not isinstance(exc, Ended):
                reason = exc.message if isinstance(exc, LdmError) else f"internal error on the target: {exc}"
                code = exc.code if isinstance(exc, LdmError) else "internal"
                if chan.try_send(Abort(reason=reason[:4000], who=Role.TARGET, code=code)):
                    self._drain(chan)
        if self.request is None or self.request.dry_run or self.conn.recovery:
            if self.incoming is not None:
                self.incoming.discard()
            return
        decision = self.conn.outcome()
        try:
            if decision is Decision.KEEP_TARGET:
                self._keep()
            else:
                self._discard()
        finally:
            if self.run is not None:
                self._record(decision, exc)
                self.run.done.set()
                self.runs.remove(self.run)

    def _record(self, decision: Decision, exc: BaseException | None) -> None:
        assert self.run is not None and self.request is not None
        ended = self.conn.ended_by
        if decision is Decision.KEEP_TARGET:
            outcome, reason = "completed", ""
        elif isinstance(ended, Cancel):
            outcome, reason = "cancelled", ended.reason
        else:
            outcome, reason = "failed", self.end_reason or (ended.reason if isinstance(ended, Abort) else "")
        inc = self.incoming
        dom = self.inc.facts.domain if self.inc is not None else None
        memory = dom.bindings.memory if dom is not None and dom.bindings is not None else 0
        rec = make_record(
            migration_id=self.request_id,
            domain=self.name,
            role="target",
            peer=self.source_host,
            kind=str(self.request.mode),
            started_at=self.started_at,
            outcome=outcome,
            reason=reason,
            downtime_s=(inc.downtime_s or 0.0) if inc is not None else 0.0,
            memory_bytes=memory,
            channels=inc.channels if inc is not None else 0,
            rounds=self.rounds,
            bytes_sent=inc.bytes_received if inc is not None else 0,
        )
        self.deps.remember(rec)

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
        if self.request is not None and self.request.mode is MigrationMode.ACTIVE and not self._started:
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
        """Nothing of the domain stays here: this host is as it was (the image is scrubbed meanwhile)."""
        name = self.name
        if self.incoming is not None:
            self.incoming.discard()
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

    def _settle(self, decision: Decision) -> None:
        if self.request is not None and not self.request.dry_run and self.conn.migration_id is not None:
            settle_journal(self.deps.journals, self.conn, decision, self.name)


def _ended_by(ev: Event, source: str) -> str:
    if isinstance(ev, Abort):
        return f"the source {source} aborted: {ev.reason}"
    if isinstance(ev, Cancel):
        return f"the source {source} cancelled: {ev.reason}"
    return f"the source {source} sent {type(ev).__name__}"
