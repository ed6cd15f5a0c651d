"""The source side of `ldm migrate-domain`: claim the domain, check, talk to the target, hand the domain over.

Theory of operation (SPEC 2.2, DESIGN 3).  `claim()` runs in the caller's thread so that a refusal (no such
domain, already migrating) is one immediate error; `run()` then does the rest in the migration's thread:

1. source checks (`run_source_checks`) on the facts taken at claim time;
2. the verified TLS link (`connect_peer`: configured peers first, then DNS on port 6482), Hellos, Auth;
3. CheckRequest: the target checks and reserves.  A dry run (`-n`), or a migration whose source checks
   already failed, asks for a dry-run check so every problem of both sides is reported and nothing is
   reserved;
4. Prepare / PrepareAck: the target's shell exists;
   Active domains offer a data plane in Prepare (`source_plane.make_offer`: secret, channels, frame size)
   and open its channels to the port PrepareAck names;
5. active domains only: the transfer step, then FinalState.  `live_source.LiveTransfer` runs live pre-copy
   for guests the checks' rules allow (`live_plan.transfer_kind`), and the 1.2 way (shrunk to one strand,
   suspended for the whole copy) for the others; both over the data plane.  A target that answers without a
   data plane gets the issue-3 `StopAndCopy` on the control link;
6. CommitRequest; Resumed (with the downtime the target's guest measured); the source copy is destroyed
   (the domain leaves this host in one commit); HandoffDone.

The journal is saved before every send (ControlChannel).  Whatever ends the conversation, the decision is
`conn.outcome()` (protocol's hand-off fence): KEEP_SOURCE (resume the guest if suspended, clear flag `s`),
SOURCE_ERROR (the complete domain was handed over and no Resumed came: keep the suspended copy with flag `e`
for `ldm cancel-operation migration`), DESTROY_SOURCE (the target runs it: remove this copy).  A cancel
(`ldm cancel-operation migration`, or the `ldm` client going away) is honoured at the next step while the
source may still abort; after the fence it is too late and the hand-off completes.  A cancel also stops
what the engine waits on at once: the data plane is aborted (`RunState.on_cancel`) and a blocked read of the
control link is interrupted (`ControlChannel.interrupt`), under the same lock as the FinalState send, so a
cancel either wins before the fence or does nothing.  Whatever the end, throttling is lifted, a shrunk
domain gets its strands back, and a `MigrationRecord` goes to the host's history and into the result.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from ldoms.checks import run_source_checks, source_facts
from ldoms.checks.facts import MigrationMode as RulesMode
from ldoms.checks.facts import SourceFacts
from ldoms.checks.failure import CheckReport
from ldoms.errors import AuthError, BusyError, LdmError
from ldoms.migration.checkwire import build_check_request, mode_of
from ldoms.migration.engine_common import LDM_VERSION, EngineDeps, depart_domain, finding, put_domain
from ldoms.migration.events import (
    Abort,
    Auth,
    AuthMethod,
    AuthResult,
    CheckResult,
    CommitRequest,
    Decision,
    Event,
    HandoffDone,
    Hello,
    MigrationMode,
    Prepare,
    PrepareAck,
    Resumed,
    Role,
)
from ldoms.migration.live_plan import TransferKind, transfer_kind
from ldoms.migration.precopy import PrecopyPolicy
from ldoms.migration.protocol import SOURCE_MAY_ABORT, MigrationConnection
from ldoms.migration.runstate import Outcome, RunState
from ldoms.migration.source_end import Cancelled, Refused, SourceEnd, reason_of
from ldoms.migration.source_plane import make_offer
from ldoms.migration.source_transfer import SourceTransfer
from ldoms.migration.transfer import Transfer, UnexpectedEvent
from ldoms.migration.transport import ControlChannel
from ldoms.migration.wire import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from ldoms.model.domain import DomainState, MigrationRole
from ldoms.model.machine import Machine

log = logging.getLogger("ldmd.migration.source")

RECOVERY_USER_PREFIX = "recovery:"


@dataclass(frozen=True, slots=True)
class MigrationRequest:
    source: str
    target_host: str  # as typed: a peer name, a host name or an IP address
    target_ldom: str
    user: str  # the target login ("" in certificate mode: the host name is sent)
    password: str | None = field(default=None, repr=False)
    certificate: bool = False
    dry_run: bool = False
    force: bool = False
    precopy: PrecopyPolicy | None = None  # the knobs (host defaults with the command's properties applied)


def remote_finding(f: Any, severity: str) -> dict[str, str]:
    return {
        "code": f.code,
        "message": f.message,
        "side": str(f.side),
        "resource": f.resource,
        "observed": f.observed,
        "required": f.required,
        "remedy": f.remedy,
        "severity": severity,
    }


def platform_facts(machine: Machine) -> dict[str, Any]:
    p = machine.platform
    return {
        "cpu_type": p.cpu_type,
        "cpu_mhz": p.cpu_mhz,
        "firmware": p.firmware,
        "hw_max_pagesize": p.hw_max_pagesize,
    }


class SourceEngine(SourceTransfer, SourceEnd):
    def __init__(
        self, deps: EngineDeps, request: MigrationRequest, run: RunState, *, transfer: Transfer | None = None
    ) -> None:
        self.deps = deps
        self.req = request
        self.run_state = run
        self.transfer: Transfer | None = transfer
        self.facts: SourceFacts | None = None
        self.kind = TransferKind.STOP_AND_COPY
        self.claimed = False
        self.suspended = False
        self.throttled = False
        self.shrunk_from: tuple[int, ...] = ()  # the strands before the 1.2 shrink (restored on failure)
        self.destroyed = False
        self.conn: MigrationConnection | None = None
        self.chan: ControlChannel | None = None
        self.token = secrets.token_urlsafe(32)
        self.migration_id = uuid.uuid4().hex
        self.started_at = time.time()
        self.stats: dict[str, Any] = {}  # rounds, channels, bytes_sent, downtime_s (the record's figures)
        self._fence = threading.Lock()  # a cancel's interrupt and the FinalState send exclude each other

    @property
    def name(self) -> str:
        return self.req.source

    @property
    def trailer(self) -> str:
        verdict = "would fail if attempted" if self.req.dry_run else "failed"
        return f"Domain Migration of LDom {self.name} {verdict}"

    # ------------------------------------------------------------------ claim (caller's thread)
    def claim(self) -> None:
        """Take the domain for this migration, or raise (nothing changed)."""
        host, guests, req = self.deps.host, self.deps.guests, self.req

        def take(m: Machine) -> Machine:
            dom = m.domain(req.source)  # NotFoundError: LDom <name> not found
            if req.source in host.migrating:
                raise BusyError(
                    f"LDom {req.source} is already being migrated ({host.migrating[req.source]}): only one "
                    "migration of a domain at a time"
                )
            if dom.migration is MigrationRole.ERROR:
                raise BusyError(
                    f"LDom {req.source} is in the migration error state (an earlier migration lost its "
                    "link after the hand-over): settle it first with "
                    f"'ldm cancel-operation migration {req.source}'"
                )
            profile, conditions = guests.profile(dom)
            self.facts = source_facts(
                m,
                req.source,
                target_name=req.target_ldom,
                mode=RulesMode.V1_2,
                guest=profile,
                conditions=conditions,
                migrations_in_progress=tuple(host.migrating),
            )
            host.migrating[req.source] = f"migration to {req.target_host} in progress"
            if req.dry_run:
                return m
            return put_domain(m, replace(dom, migration=MigrationRole.SOURCE))

        try:
            host.change(take)
        except BaseException:
            if self.facts is not None:  # the registry was written, the commit was not
                host.migrating.pop(req.source, None)
            raise
        self.claimed = True
        assert self.facts is not None
        self.kind = transfer_kind(self.facts)
        self.run_state.on_cancel(self._on_cancel)

    # ------------------------------------------------------------------ the migration (its own thread)
    def run(self) -> Outcome:
        assert self.facts is not None, "claim() first"
        outcome = Outcome(ok=False, lines=(self.trailer,), exit_code=1)
        try:
            outcome = self._run(self.facts)
        except BaseException as e:  # the outcome of every failure is decided and applied here
            try:
                outcome = self._fail(e)
            except BaseException as again:  # undoing failed too: say so, never leave the client waiting
                log.exception("undoing the failed migration of LDom %s failed", self.name)
                outcome = Outcome(
                    ok=False,
                    lines=(
                        reason_of(e),
                        f"Undoing the migration failed too: {reason_of(again)}",
                        self.trailer,
                    ),
                    exit_code=1,
                )
        finally:
            try:
                if self.claimed:
                    self._release()
            finally:
                outcome = self._with_record(outcome)
                self.run_state.finish(outcome)
        return outcome

    def _run(self, facts: SourceFacts) -> Outcome:
        report = run_source_checks(facts)
        self.run_state.set_progress(1, "checks")
        self.deps.policy.hooks.at("source:checks", self.run_state.cancelled)
        self._checkpoint()
        dry = self.req.dry_run or not report.ok
        self._connect()
        self.run_state.set_progress(3)
        result = self._check(facts, dry)
        problems = [finding(f) for f in report.failures]
        problems += [remote_finding(f, "error") for f in result.failures]
        warnings = [finding(f) for f in report.warnings]
        warnings += [remote_finding(f, "warning") for f in result.warnings]
        if dry or problems:
            self._close()
            self._keep_source()
            if not problems:
                return Outcome(ok=True, dry_run=True, warnings=tuple(warnings))
            lines = [p["message"] for p in problems] + [w["message"] for w in warnings] + [self.trailer]
            return Outcome(
                ok=False,
                dry_run=self.req.dry_run,
                lines=tuple(lines),
                exit_code=1,
                problems=tuple(problems),
                warnings=tuple(warnings),
            )
        self.run_state.set_progress(5, "prepare")
        mode = mode_of(facts.state)
        self._checkpoint()
        secret, offer = b"", {}
        if mode is MigrationMode.ACTIVE:
            secret, offer = make_offer(
                self.deps.host.machine,
                str(self.deps.guests.memory_path(self.name)),
                self._memory_bytes(),
                self.kind,
            )
        self._send(Prepare(target_domain=self.req.target_ldom, data_plane=offer))
        ack = self._expect(PrepareAck)
        assert isinstance(ack, PrepareAck)
        self.deps.policy.hooks.at("source:transfer", self.run_state.cancelled)
        self._checkpoint()
        if mode is MigrationMode.ACTIVE:
            self._transfer(facts, secret, dict(ack.data_plane))
        self.run_state.set_progress(97, "handoff")
        self._send(CommitRequest(mode=mode))
        resumed = self._expect(Resumed)
        assert isinstance(resumed, Resumed)
        self.deps.policy.hooks.at("source:confirmed", self.run_state.cancelled)
        downtime = resumed.measured.get("downtime_s")
        if isinstance(downtime, int | float):
            self.stats["downtime_s"] = float(downtime)
        self.run_state.set_progress(99)
        self._destroy_source()
        self.deps.policy.hooks.at("source:cleanup", self.run_state.cancelled)
        assert self.chan is not None
        self.chan.try_send(HandoffDone())
        self._close()
        self.run_state.set_progress(100)
        log.info(
            "migration of LDom %s to %s done: %s rounds, %s channels, %s bytes sent, downtime %s s",
            self.name, self.req.target_host, self.stats.get("rounds", 0), self.stats.get("channels", 0),
            self.stats.get("bytes_sent", 0), self.stats.get("downtime_s", "?"),
        )  # fmt: skip
        return Outcome(ok=True, warnings=tuple(warnings))

    # ------------------------------------------------------------------ steps
    def _connect(self) -> None:
        from ldoms.peer.link import connect_peer  # the TLS stack: only when a migration runs

        policy = self.deps.policy
        link = connect_peer(
            self.deps.home,
            self.req.target_host,
            certificate_mode=self.req.certificate,
            timeout=policy.connect_s,
            busy_retry_s=policy.connect_s / 3,  # a target receiving a burst of migrations may be at its limit
        )
        self.conn = MigrationConnection(Role.SOURCE)
        self.chan = ControlChannel(
            link,
            self.conn,
            policy=policy,
            journals=None if self.req.dry_run else self.deps.journals,
            journal_extra=lambda: {
                "target": self.req.target_host,
                "token": self.token,
                "certificate": self.req.certificate,
                "shrunk_from": list(self.shrunk_from),
            },
        )
        if self.run_state.cancelled.is_set():
            self.chan.interrupt(self.run_state.cancel_reason or "cancelled")
        machine = self.deps.host.machine
        self._send(
            Hello(
                role=Role.SOURCE,
                version=PROTOCOL_VERSION,
                min_version=MIN_PROTOCOL_VERSION,
                migration_id=self.migration_id,
                host_name=machine.host_name,
                ldm_version=LDM_VERSION,
                platform=platform_facts(machine),
            )
        )
        self._expect(Hello)
        if self.req.certificate:
            auth = Auth(user=self.req.user or machine.host_name, method=AuthMethod.CERTIFICATE)
        else:
            auth = Auth(user=self.req.user, method=AuthMethod.PASSWORD, password=self.req.password or "")
        self._send(auth)
        answer = self._expect(AuthResult)
        assert isinstance(answer, AuthResult)
        if not answer.ok:
            raise Refused([answer.reason], exit_code=AuthError.exit_code, code="auth")

    def _check(self, facts: SourceFacts, dry: bool) -> CheckResult:
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        self._send(
            build_check_request(
                facts,
                target_domain=self.req.target_ldom,
                dry_run=dry,
                extra={"token_sha256": digest, "force": self.req.force, "transfer": self.kind.value},
            )
        )
        result = self._expect(CheckResult)
        assert isinstance(result, CheckResult)
        return result

    def _memory_bytes(self) -> int:
        assert self.facts is not None
        b = self.facts.domain.bindings
        return b.memory if b is not None else 0

    def _destroy_source(self) -> None:
        """The target runs (or holds) the domain: remove this copy, in one commit."""
        if self.destroyed:
            return
        facts = self.facts
        if facts is not None and facts.state is DomainState.ACTIVE:
            try:
                self.deps.guests.destroy(self.name)
            except LdmError as e:
                log.error("LDom %s moved, but its guest here could not be stopped: %s", self.name, e)

        def drop(m: Machine) -> Machine:
            self.deps.host.migrating.pop(self.name, None)
            return replace(depart_domain(m, self.name), spconfig_modified=True)  # its MACs are in use there

        self.deps.host.change(drop)
        self.claimed = False
        self.destroyed = True
        self._settle(Decision.DESTROY_SOURCE)

    # ------------------------------------------------------------------ cancel
    def _on_cancel(self) -> None:
        """From the cancelling thread: stop waiting for the target, unless the domain was handed over."""
        with self._fence:
            conn, chan = self.conn, self.chan
            if conn is not None and chan is not None and conn.phase in SOURCE_MAY_ABORT:
                chan.interrupt(self.run_state.cancel_reason or "cancelled")

    # ------------------------------------------------------------------ plumbing
    def _send(self, event: Event) -> None:
        assert self.chan is not None
        self.chan.send(event)

    def _expect(self, cls: type[Event]) -> Event:
        assert self.chan is not None
        ev = self.chan.receive()
        if isinstance(ev, cls):
            return ev
        if isinstance(ev, Abort):
            raise Refused([ev.reason], code=ev.code)
        raise UnexpectedEvent(ev, cls.__name__)

    def _abort_reason(self) -> None:
        """After the data plane broke: if the target aborted meanwhile, raise its reason (Refused)."""
        chan = self.chan
        if chan is None or chan.conn.phase not in SOURCE_MAY_ABORT:
            return
        try:
            ev = chan.receive(timeout=self.deps.policy.farewell_drain_s)
        except LdmError:
            return
        if isinstance(ev, Abort):
            raise Refused([ev.reason], code=ev.code)

    def _checkpoint(self) -> None:
        if self.run_state.cancelled.is_set():
            raise Cancelled(self.run_state.cancel_reason or "cancelled by the administrator")

    def _close(self) -> None:
        if self.chan is not None:
            self.chan.close()


__all__ = ["RECOVERY_USER_PREFIX", "Cancelled", "CheckReport", "MigrationRequest", "Refused", "SourceEngine"]
