"""How a source-side migration ends: the decision the hand-off fence allows, carried out, reported, recorded.

`SourceEnd` is the part of `SourceEngine` (ldoms.migration.engine_source) that runs once the conversation is
over, whatever ended it.  `_fail(exc)` tells the target (Cancel or Abort, best effort), asks
`conn.outcome()` what to do with this copy and does it (`_apply`):

* KEEP_SOURCE: the copy here is the master: the 1.2 shrink is undone (its strands come back), the throttle
  is lifted, a suspended guest resumes, flag `s` is cleared;
* SOURCE_ERROR: the complete domain was handed over and no Resumed came: the copy stays suspended with flag
  `e` (its journal keeps the strands to give back) until a RecoveryQuery settles it;
* DESTROY_SOURCE: the target runs it: this copy goes.

A cancel that interrupted a wait (the control link, the data plane) is reported as the cancel it was, as long
as the fence still allowed it.  `_with_record` adds the `MigrationRecord` to the outcome and the history.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from ldoms.errors import LdmError
from ldoms.migration.checkwire import mode_of
from ldoms.migration.engine_common import make_record, put_domain, settle_journal
from ldoms.migration.events import Abort, Cancel, Decision, RemoteProtocolError, Role
from ldoms.migration.runstate import Outcome
from ldoms.migration.source_plane import unshrunk
from ldoms.model.domain import MigrationRole
from ldoms.model.machine import Machine

if TYPE_CHECKING:
    from ldoms.migration.engine_source import SourceEngine

log = logging.getLogger("ldmd.migration.source")


class Cancelled(LdmError):
    code = "cancelled"


class Refused(LdmError):
    """The target said no (Abort, failed checks, refused credentials): `lines` are its reasons."""

    def __init__(self, lines: list[str], *, exit_code: int = 1, code: str = "refused") -> None:
        super().__init__("; ".join(lines), code=code)
        self.lines = lines
        self.exit_code = exit_code


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, LdmError):
        return exc.message
    return f"internal error in the migration engine: {type(exc).__name__}: {exc} (details in ldmd.log)"


def code_of(exc: BaseException) -> str:
    return exc.code if isinstance(exc, LdmError) else "internal"


class SourceEnd:
    end_outcome = "failed"  # the record's outcome: completed, failed, cancelled, error

    # ------------------------------------------------------------------ small steps
    def _settle(self: SourceEngine, decision: Decision) -> None:
        if self.conn is not None and self.conn.migration_id is not None and not self.req.dry_run:
            settle_journal(self.deps.journals, self.conn, decision, self.name)

    def _release(self: SourceEngine) -> None:
        """Give the domain back to ordinary operations (it stays, as it was or in the error state)."""

        def release(m: Machine) -> Machine:
            self.deps.host.migrating.pop(self.name, None)
            return m

        self.deps.host.change(release)
        self.claimed = False

    def _keep_source(self: SourceEngine) -> None:
        """Nothing left this host: the domain is as it was (flag `s` cleared)."""
        if not self.req.dry_run:
            self._mark(MigrationRole.NONE)
        self._settle(Decision.KEEP_SOURCE)

    def _mark(self: SourceEngine, role: MigrationRole) -> None:
        def mark(m: Machine) -> Machine:
            dom = m.find(self.name)
            return m if dom is None else put_domain(m, dataclasses.replace(dom, migration=role))

        self.deps.host.change(mark)

    # ------------------------------------------------------------------ failure: decide, apply, report
    def _fail(self: SourceEngine, exc: BaseException) -> Outcome:
        conn, chan = self.conn, self.chan
        decision = conn.outcome() if conn is not None and not self.req.dry_run else Decision.KEEP_SOURCE
        if (
            self.run_state.cancelled.is_set()
            and not isinstance(exc, Cancelled | Refused)
            and decision is Decision.KEEP_SOURCE
        ):
            log.info("LDom %s: %s (after the cancel)", self.name, reason_of(exc))
            exc = Cancelled(self.run_state.cancel_reason or "cancelled by the administrator")
        if isinstance(exc, Cancelled) and chan is not None and conn is not None:
            chan.try_send(Cancel(reason=str(exc)[:4000]))
        elif chan is not None and conn is not None and not isinstance(exc, Refused):
            chan.try_send(Abort(reason=reason_of(exc)[:4000], who=Role.SOURCE, code=code_of(exc)))
        if chan is not None:
            chan.close()
        if conn is not None and not self.req.dry_run:
            decision = conn.outcome()
        if not isinstance(exc, LdmError):
            log.error("migration of LDom %s failed on a bug", self.name, exc_info=exc)
        else:
            log.warning("migration of LDom %s failed (%s): %s", self.name, decision, exc)
        lines = self._apply(decision, exc)
        exit_code = exc.exit_code if isinstance(exc, Refused | LdmError) else 1
        if decision is Decision.DESTROY_SOURCE:
            self.end_outcome = "completed"
            return Outcome(ok=True)
        self.end_outcome = {Decision.SOURCE_ERROR: "error"}.get(
            decision, "cancelled" if isinstance(exc, Cancelled) else "failed"
        )
        return Outcome(ok=False, dry_run=self.req.dry_run, lines=(*lines, self.trailer), exit_code=exit_code)

    def _apply(self: SourceEngine, decision: Decision, exc: BaseException) -> list[str]:
        reasons = exc.lines if isinstance(exc, Refused) else [reason_of(exc)]
        if isinstance(exc, RemoteProtocolError):
            reasons = [f"Target host {self.req.target_host} broke the migration protocol: {exc.message}"]
        if isinstance(exc, Cancelled):
            reasons = [f"Migration of LDom {self.name} cancelled: {exc}"]
        if decision is Decision.DESTROY_SOURCE:
            self._destroy_source()
            return []
        if self.throttled and not self._guest_died():
            self._lift_throttle(reasons)
        if decision is Decision.SOURCE_ERROR:
            self._mark(MigrationRole.ERROR)
            self._settle(Decision.SOURCE_ERROR)
            return [
                *reasons,
                f"The link to {self.req.target_host} was lost after LDom {self.name} was handed over: it is "
                f"left in the error state on this host; run 'ldm cancel-operation migration {self.name}' to "
                "settle it (it asks the target whether it resumed the domain; ldmd also asks by itself "
                "once the target answers again)",
            ]
        if self.shrunk_from:
            strands = self.shrunk_from

            def grow(m: Machine) -> Machine:
                dom = m.find(self.name)
                return m if dom is None else put_domain(m, unshrunk(dom, strands))

            self.deps.host.change(grow)
            self.shrunk_from = ()
        if self._guest_died():
            self.suspended = False
            self.run_state.suspended = False
            reasons.append(
                f"The guest of LDom {self.name} is no longer running: LDom {self.name} is left bound on this "
                "host and runs nowhere (start it again with 'ldm start-domain')"
            )
        elif self.suspended:
            try:
                self.deps.guests.resume(self.name)
                self.suspended = False
                self.run_state.suspended = False
            except LdmError as e:
                log.error("LDom %s: resuming its guest after the failed migration failed: %s", self.name, e)
                reasons.append(f"LDom {self.name} could not be resumed: {e}")
        self._keep_source()
        return reasons

    def _guest_died(self: SourceEngine) -> bool:
        from ldoms.model.domain import DomainState

        if self.facts is None or self.facts.state is not DomainState.ACTIVE or self.req.dry_run:
            return False
        return not self.deps.guests.running(self.name)

    def _lift_throttle(self: SourceEngine, reasons: list[str]) -> None:
        try:
            self.deps.guests.throttle(self.name, 0)
            self.throttled = False
        except LdmError as e:
            log.error("LDom %s: lifting its throttle after the failed migration failed: %s", self.name, e)
            if self.deps.guests.running(self.name):
                reasons.append(f"LDom {self.name} could not be unthrottled: {e}")

    # ------------------------------------------------------------------ the record
    def _with_record(self: SourceEngine, outcome: Outcome) -> Outcome:
        if self.req.dry_run or self.facts is None or outcome.dry_run:
            return outcome
        ended = "completed" if outcome.ok else self.end_outcome
        reason = "" if outcome.ok else next(iter(outcome.lines), "")
        b = self.facts.domain.bindings
        st: dict[str, Any] = self.stats
        rec = make_record(
            migration_id=self.migration_id,
            domain=self.name,
            role="source",
            peer=self.req.target_host,
            kind=str(mode_of(self.facts.state)),
            started_at=self.started_at,
            outcome=ended,
            reason=reason,
            downtime_s=float(st.get("downtime_s", 0.0)),
            bytes_sent=int(st.get("bytes_sent", 0)),
            memory_bytes=b.memory if b is not None else 0,
            rounds=int(st.get("rounds", 0)),
            channels=int(st.get("channels", 0)),
        )
        self.deps.remember(rec)
        return dataclasses.replace(outcome, record=dataclasses.asdict(rec))
