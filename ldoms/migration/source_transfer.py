"""The source engine's transfer step (phase 3-4 of SPEC 2.2): the data-plane transfer or the issue-3
fallback, the 1.2 shrink, suspend and throttle on the guest's behalf, progress for the stream, and the
FinalState send under the fence lock (a cancel after it does nothing).  A mixin of `SourceEngine`, split out
to keep each module short."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ldoms.migration.channels import MemoryFile
from ldoms.migration.dataplane_errors import DataPlaneError
from ldoms.migration.dataplane_link import is_idle_timeout
from ldoms.migration.engine_common import put_domain
from ldoms.migration.events import Abort, FinalState, Progress
from ldoms.migration.live_plan import ProgressFacts, TransferKind
from ldoms.migration.live_source import LiveGuest, LiveSourceContext, LiveTransfer
from ldoms.migration.precopy import PrecopyPolicy
from ldoms.migration.source_end import Refused
from ldoms.migration.source_plane import open_plane, plane_failure, shrink
from ldoms.migration.transfer import SourceTransferContext, StopAndCopy, UnexpectedEvent
from ldoms.model.machine import Machine

if TYPE_CHECKING:
    from ldoms.checks.facts import SourceFacts
    from ldoms.migration.engine_source import SourceEngine


class SourceTransfer:
    def _transfer(self: SourceEngine, facts: SourceFacts, secret: bytes, ack: dict[str, Any]) -> None:
        dom = facts.domain
        assert dom.bindings is not None and self.chan is not None
        if self.kind is TransferKind.STOP_AND_COPY:
            self._shrink()
        if not ack:  # the target takes pages on the control link only: the issue-3 stop-and-copy
            result = (self.transfer or StopAndCopy()).run(self._control_context(dom))
        else:
            result = self._live(secret, ack)
        self.stats.update(rounds=result.rounds, channels=result.channels, bytes_sent=result.bytes_sent)
        self.deps.policy.hooks.at("source:final-state", self.run_state.cancelled)
        self.run_state.set_progress(95, "final")
        with self._fence:  # the last moment the source may still abort; a cancel after this does nothing
            self._checkpoint()
            self._send(
                FinalState(cpu_state=result.cpu_state, checksum=result.checksum, algorithm=result.algorithm)
            )
        self.run_state.set_progress(96)

    def _live(self: SourceEngine, secret: bytes, ack: dict[str, Any]) -> Any:
        assert self.chan is not None and self.conn is not None
        policy, guests, name = self.deps.policy, self.deps.guests, self.name
        remote = self.chan.link.remote_address
        socks = open_plane(
            ack, remote[0] if remote else self.req.target_host, self.migration_id, policy, secret=secret
        )
        ctx = LiveSourceContext(
            channel=self.chan,
            domain=name,
            migration_id=self.migration_id,
            secret=secret,
            sockets=socks,
            memory=MemoryFile(str(guests.memory_path(name)), self._memory_bytes()),
            dirty_path=guests.dirty_path(name),
            kind=self.kind,
            policy=self.req.precopy or PrecopyPolicy(),
            guest=LiveGuest(
                suspend=self._suspend,
                throttle=self._throttle,
                dirty_rate=lambda: _rate(guests.status(name)),
                alive=lambda: guests.running(name),
            ),
            run=self.run_state,
            check_cancel=self._checkpoint,
            report=self._report,
            hooks=policy.hooks,
            barrier_s=policy.handoff_ack_s,
        )
        transfer = self.transfer if isinstance(self.transfer, LiveTransfer) else LiveTransfer()
        try:
            return transfer.run(ctx)
        except UnexpectedEvent as e:
            if isinstance(e.event, Abort):
                raise Refused([e.event.reason], code=e.event.code) from None
            raise
        except DataPlaneError as e:
            self._checkpoint()  # aborted by a cancel: say so
            if not is_idle_timeout(e.message):
                self._abort_reason()  # the target aborted first: its reason is the one to tell
            raise plane_failure(
                e, peer=self.req.target_host, phase=self.run_state.phase,
                round_no=(self.run_state.facts.round if self.run_state.facts else 0),
                idle_s=policy.transfer_idle_s,
            ) from None  # fmt: skip

    def _control_context(self: SourceEngine, dom: Any) -> SourceTransferContext:
        assert self.chan is not None
        return SourceTransferContext(
            channel=self.chan,
            memory_path=self.deps.guests.memory_path(self.name),
            blocks=tuple((b.ra, b.size) for b in dom.bindings.mblocks),
            suspend=self._suspend,
            progress=self._transfer_progress,
            check_cancel=self._checkpoint,
            batch_bytes=self.deps.policy.batch_bytes,
        )

    def _shrink(self: SourceEngine) -> None:
        """1.2: the domain runs on one strand during the transfer (restored if the source keeps it)."""

        def do(m: Machine) -> Machine:
            dom = m.domain(self.name)
            if dom.bindings is None or len(dom.bindings.strands) <= 1:
                return m
            self.shrunk_from = tuple(dom.bindings.strands)
            return put_domain(m, shrink(dom))

        self.deps.host.change(do)
        if self.chan is not None:
            self.chan.persist()  # the journal knows the strands to give back after a crash

    def _suspend(self: SourceEngine) -> bytes:
        state = self.deps.guests.suspend(self.name)
        self.suspended = True
        self.run_state.suspended = True
        return state

    def _throttle(self: SourceEngine, percent: int) -> None:
        self.deps.guests.throttle(self.name, percent)
        self.throttled = percent > 0

    def _report(self: SourceEngine, facts: ProgressFacts, force: bool) -> None:
        emitted = self.run_state.report(facts, force=force)
        if emitted and self.conn is not None:
            ev = Progress(percent=self.run_state.progress)
            if self.conn.can_send(ev):
                self._send(ev)

    def _transfer_progress(self: SourceEngine, done: int, total: int) -> None:
        percent = 5 + (90 * done) // max(total, 1)
        if self.run_state.set_progress(percent) and self.chan is not None and self.conn is not None:
            ev = Progress(percent=self.run_state.progress)
            if self.conn.can_send(ev):
                self._send(ev)


def _rate(status: dict[str, Any]) -> float | None:
    rate = status.get("dirty_rate")
    return float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else None
