"""The source side of `ldm migrate-domain`: claim the domain, check, talk to the target, hand the domain over.

Theory of operation (SPEC 2.2, DESIGN 3).  `claim()` runs in the caller's thread so that a refusal (no such
domain, already migrating) is one immediate error; `run()` then does the rest in the migration's thread:

1. source checks (`run_source_checks`) on the facts taken at claim time;
2. the verified TLS link (`connect_peer`: configured peers first, then DNS on port 6482), Hellos, Auth;
3. CheckRequest: the target checks and reserves.  A dry run (`-n`), or a migration whose source checks
   already failed, asks for a dry-run check so every problem of both sides is reported and nothing is
   reserved;
4. Prepare / PrepareAck: the target's shell exists;
5. active domains only: the transfer step (`ldoms.migration.transfer`, 1.2 stop-and-copy), then FinalState;
6. CommitRequest; Resumed; the source copy is destroyed (the domain leaves this host in one commit);
   HandoffDone.

The journal is saved before every send (ControlChannel).  Whatever ends the conversation, the decision is
`conn.outcome()` (protocol's hand-off fence): KEEP_SOURCE (resume the guest if suspended, clear flag `s`),
SOURCE_ERROR (the complete domain was handed over and no Resumed came: keep the suspended copy with flag `e`
for `ldm cancel-operation migration`), DESTROY_SOURCE (the target runs it: remove this copy).  A cancel
(`ldm cancel-operation migration`, or the `ldm` client going away) is honoured at the next step while the
source may still abort; after the fence it is too late and the hand-off completes.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from ldoms.checks import run_source_checks, source_facts
from ldoms.checks.facts import MigrationMode as RulesMode
from ldoms.checks.facts import SourceFacts
from ldoms.checks.failure import CheckReport
from ldoms.errors import AuthError, BusyError, LdmError
from ldoms.migration.checkwire import build_check_request, mode_of
from ldoms.migration.engine_common import LDM_VERSION, EngineDeps, drop_domain, finding, put_domain
from ldoms.migration.events import (
    Abort,
    Auth,
    AuthMethod,
    AuthResult,
    Cancel,
    CheckResult,
    CommitRequest,
    Decision,
    Event,
    FinalState,
    Finding,
    HandoffDone,
    Hello,
    MigrationMode,
    Prepare,
    PrepareAck,
    Progress,
    RemoteProtocolError,
    Resumed,
    Role,
)
from ldoms.migration.protocol import MigrationConnection
from ldoms.migration.runstate import Outcome, RunState
from ldoms.migration.transfer import SourceTransferContext, StopAndCopy, Transfer, UnexpectedEvent
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


class Cancelled(LdmError):
    code = "cancelled"


class Refused(LdmError):
    """The target said no (Abort, failed checks, refused credentials): `lines` are its reasons."""

    def __init__(self, lines: list[str], *, exit_code: int = 1, code: str = "refused") -> None:
        super().__init__("; ".join(lines), code=code)
        self.lines = lines
        self.exit_code = exit_code


def remote_finding(f: Finding, severity: str) -> dict[str, str]:
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


class SourceEngine:
    def __init__(
        self, deps: EngineDeps, request: MigrationRequest, run: RunState, *, transfer: Transfer | None = None
    ) -> None:
        self.deps = deps
        self.req = request
        self.run_state = run
        self.transfer = transfer or StopAndCopy()
        self.facts: SourceFacts | None = None
        self.claimed = False
        self.suspended = False
        self.destroyed = False
        self.conn: MigrationConnection | None = None
        self.chan: ControlChannel | None = None
        self.token = secrets.token_urlsafe(32)
        self.migration_id = uuid.uuid4().hex

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
                    lines=(_reason(e), f"Undoing the migration failed too: {_reason(again)}", self.trailer),
                    exit_code=1,
                )
        finally:
            try:
                if self.claimed:
                    self._release()
            finally:
                self.run_state.finish(outcome)
        return outcome

    def _run(self, facts: SourceFacts) -> Outcome:
        report = run_source_checks(facts)
        self.run_state.set_progress(1)
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
        self.run_state.set_progress(5)
        mode = mode_of(facts.state)
        self._checkpoint()
        self._send(Prepare(target_domain=self.req.target_ldom))
        self._expect(PrepareAck)
        self.deps.policy.hooks.at("source:transfer", self.run_state.cancelled)
        self._checkpoint()
        if mode is MigrationMode.ACTIVE:
            self._transfer(facts)
        self._send(CommitRequest(mode=mode))
        self._expect(Resumed)
        self.run_state.set_progress(99)
        self._destroy_source()
        assert self.chan is not None
        self.chan.try_send(HandoffDone())
        self._close()
        self.run_state.set_progress(100)
        log.info("migration of LDom %s to %s done", self.name, self.req.target_host)
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
            },
        )
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
                extra={"token_sha256": digest, "force": self.req.force},
            )
        )
        result = self._expect(CheckResult)
        assert isinstance(result, CheckResult)
        return result

    def _transfer(self, facts: SourceFacts) -> None:
        dom = facts.domain
        assert dom.bindings is not None and self.chan is not None
        ctx = SourceTransferContext(
            channel=self.chan,
            memory_path=self.deps.guests.memory_path(self.name),
            blocks=tuple((b.ra, b.size) for b in dom.bindings.mblocks),
            suspend=self._suspend,
            progress=self._transfer_progress,
            check_cancel=self._checkpoint,
            batch_bytes=self.deps.policy.batch_bytes,
        )
        result = self.transfer.run(ctx)
        self.deps.policy.hooks.at("source:final-state", self.run_state.cancelled)
        self._checkpoint()  # the last moment the source may still abort
        self._send(
            FinalState(cpu_state=result.cpu_state, checksum=result.checksum, algorithm=result.algorithm)
        )
        self.run_state.set_progress(97)

    def _suspend(self) -> bytes:
        state = self.deps.guests.suspend(self.name)
        self.suspended = True
        self.run_state.suspended = True
        return state

    def _transfer_progress(self, done: int, total: int) -> None:
        percent = 5 + (90 * done) // max(total, 1)
        if self.run_state.set_progress(percent) and self.chan is not None and self.conn is not None:
            ev = Progress(percent=self.run_state.progress)
            if self.conn.can_send(ev):
                self._send(ev)

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
            return replace(drop_domain(m, self.name), spconfig_modified=True)

        self.deps.host.change(drop)
        self.claimed = False
        self.destroyed = True
        self._settle(Decision.DESTROY_SOURCE)

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

    def _checkpoint(self) -> None:
        if self.run_state.cancelled.is_set():
            raise Cancelled(self.run_state.cancel_reason or "cancelled by the administrator")

    def _close(self) -> None:
        if self.chan is not None:
            self.chan.close()

    def _settle(self, decision: Decision) -> None:
        if self.conn is None or self.conn.migration_id is None or self.req.dry_run:
            return
        try:
            self.deps.journals.settle(self.conn.journal(), decision)
            self.deps.journals.prune()
        except LdmError as e:
            log.error("recording the end of the migration of LDom %s failed: %s", self.name, e)

    def _release(self) -> None:
        """Give the domain back to ordinary operations (it stays, as it was or in the error state)."""

        def release(m: Machine) -> Machine:
            self.deps.host.migrating.pop(self.name, None)
            return m

        self.deps.host.change(release)
        self.claimed = False

    def _keep_source(self) -> None:
        """Nothing left this host: the domain is as it was (flag `s` cleared)."""
        if not self.req.dry_run:
            self._mark(MigrationRole.NONE)
        self._settle(Decision.KEEP_SOURCE)

    # ------------------------------------------------------------------ failure: decide, apply, report
    def _fail(self, exc: BaseException) -> Outcome:
        conn, chan = self.conn, self.chan
        if isinstance(exc, Cancelled) and chan is not None and conn is not None:
            chan.try_send(Cancel(reason=str(exc)[:4000]))
        elif chan is not None and conn is not None and not isinstance(exc, Refused):
            chan.try_send(Abort(reason=_reason(exc)[:4000], who=Role.SOURCE, code=_code(exc)))
        if chan is not None:
            chan.close()
        decision = conn.outcome() if conn is not None and not self.req.dry_run else Decision.KEEP_SOURCE
        if not isinstance(exc, LdmError):
            log.error("migration of LDom %s failed on a bug", self.name, exc_info=exc)
        else:
            log.warning("migration of LDom %s failed (%s): %s", self.name, decision, exc)
        lines = self._apply(decision, exc)
        exit_code = exc.exit_code if isinstance(exc, Refused | LdmError) else 1
        if decision is Decision.DESTROY_SOURCE:
            return Outcome(ok=True)
        return Outcome(ok=False, dry_run=self.req.dry_run, lines=(*lines, self.trailer), exit_code=exit_code)

    def _apply(self, decision: Decision, exc: BaseException) -> list[str]:
        reasons = exc.lines if isinstance(exc, Refused) else [_reason(exc)]
        if isinstance(exc, RemoteProtocolError):
            reasons = [f"Target host {self.req.target_host} broke the migration protocol: {exc.message}"]
        if isinstance(exc, Cancelled):
            reasons = [f"Migration of LDom {self.name} cancelled: {exc}"]
        if decision is Decision.DESTROY_SOURCE:
            self._destroy_source()
            return []
        if decision is Decision.SOURCE_ERROR:
            self._mark(MigrationRole.ERROR)
            self._settle(Decision.SOURCE_ERROR)
            return [
                *reasons,
                f"The link to {self.req.target_host} was lost after LDom {self.name} was handed over: it is "
                f"left in the error state on this host; run 'ldm cancel-operation migration {self.name}' to "
                "settle it (it asks the target whether it resumed the domain)",
            ]
        if self.suspended:
            try:
                self.deps.guests.resume(self.name)
                self.suspended = False
                self.run_state.suspended = False
            except LdmError as e:
                log.error("LDom %s: resuming its guest after the failed migration failed: %s", self.name, e)
                reasons.append(f"LDom {self.name} could not be resumed: {e}")
        self._keep_source()
        return reasons

    def _mark(self, role: MigrationRole) -> None:
        def mark(m: Machine) -> Machine:
            dom = m.find(self.name)
            return m if dom is None else put_domain(m, replace(dom, migration=role))

        self.deps.host.change(mark)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, LdmError):
        return exc.message
    return f"internal error in the migration engine: {type(exc).__name__}: {exc} (details in ldmd.log)"


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, LdmError) else "internal"


__all__ = ["RECOVERY_USER_PREFIX", "Cancelled", "CheckReport", "MigrationRequest", "Refused", "SourceEngine"]
