"""The source's transfer over the data plane: live pre-copy, or the LDoms 1.2 stop-and-copy.

Theory of operation (DESIGN 1 "dirty tracking", 3.4; SPEC 2.2).  The engine has agreed a secret and opened
the channel sockets (Prepare / PrepareAck); `LiveTransfer.run(ctx)` drives a `DataPlaneSender` over the
guest's memory file and the control link in step:

* live: clear the dirty map, then round 1 sends every page of the sparse file's data ranges (zero pages are
  skipped outright: the target's image is fresh).  Each later round sends what `DirtyMap.snapshot_and_clear`
  returns (zero pages as zero runs, so a page the guest cleared is cleared there too).  After every round the
  pre-copy policy (`ldoms.migration.precopy`) answers: copy again, throttle the guest first
  (`GuestControl.throttle`), switch over, or give up (`PrecopyGaveUp`, its reason naming the rates).
  Switch-over: suspend the guest at a step boundary, Suspend/SuspendAck, the final round with the last dirty
  set; the vCPU state goes back to the engine, which sends FinalState.
* stop-and-copy (1.2): suspend first, Suspend/SuspendAck, one round of every data page.

Before any suspend the source pings the target and waits for the Pong (`_barrier`): the target answers only
when it has taken every chunk so far and its standby guest is up, so its catching up is not in the pause.

A round is cut into chunks (`live_plan`): each is one data-plane round and is announced after it was sent
with a MemPages descriptor (chunk number, frames, pages) on the control link; RoundDone closes the round
with its page count, and FinalState carries the digest of every chunk's accounting (`Transcript`) instead of
a whole-image hash.  With a bandwidth cap the source waits between chunks (cut short by a cancel) so the
round's average stays within the cap; the final round is not paced (the guest is down).

Cancellation: `RunState.on_cancel` aborts the data plane from the cancelling thread, so the copy stops within
a frame; the engine then resumes the guest.  A guest that dies is noticed before each chunk (`GuestDied`).
Everything here runs in the migration's thread; nothing is per page in Python.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldoms.hv.dirtymap import DirtyMap
from ldoms.migration.channels import DEFAULT_FRAME_BYTES, DataPlaneSender, MemoryFile
from ldoms.migration.events import MemPages, Ping, Pong, RoundDone, Suspend, SuspendAck
from ldoms.migration.live_plan import (
    ProgressFacts,
    Transcript,
    TransferKind,
    chunk_bytes,
    chunk_descriptor,
    chunks_of_indices,
    chunks_of_ranges,
    clock_offset_s,
    on_peer_clock,
    pacing_delay,
    transfer_percent,
)
from ldoms.migration.pagescan import data_ranges
from ldoms.migration.precopy import GiveUp, Precopy, PrecopyPolicy, RoundReport, SwitchOver, Throttle
from ldoms.migration.runstate import RunState
from ldoms.migration.transfer import TransferError, TransferResult, UnexpectedEvent
from ldoms.migration.transport import ControlChannel, TestHooks
from ldoms.units import PAGE_SIZE

log = logging.getLogger("ldmd.migration.source")


class PrecopyGaveUp(TransferError):
    code = "not-converging"


class GuestDied(TransferError):
    code = "guest-died"


@dataclass(frozen=True, slots=True)
class LiveGuest:
    """What the transfer asks of the source guest (the engine binds them to its domain)."""

    suspend: Callable[[], bytes]  # suspend at a step boundary; the vCPU state
    throttle: Callable[[int], None]  # percent of its CPU time taken away (0 lifts it)
    dirty_rate: Callable[[], float | None]  # bytes/s it writes, as it measures it
    alive: Callable[[], bool]


@dataclass(slots=True)
class LiveSourceContext:
    channel: ControlChannel
    domain: str
    migration_id: str
    secret: bytes
    sockets: list[socket.socket]
    memory: MemoryFile
    dirty_path: Path
    kind: TransferKind
    policy: PrecopyPolicy
    guest: LiveGuest
    run: RunState
    check_cancel: Callable[[], None]  # raises the engine's Cancelled when a cancel was asked
    report: Callable[[ProgressFacts, bool], None]  # (facts, force): the engine streams them
    hooks: TestHooks
    frame_bytes: int = DEFAULT_FRAME_BYTES
    workers: str = "auto"
    compression: str = "auto"
    barrier_s: float = 60.0  # how long the target may take to be ready for the switch-over


class LiveTransfer:
    name = "live"

    def run(self, ctx: LiveSourceContext) -> TransferResult:
        plane = DataPlaneSender(
            ctx.secret,
            ctx.migration_id,
            ctx.sockets,
            ctx.memory,
            frame_bytes=ctx.frame_bytes,
            compression=ctx.compression,
            workers=ctx.workers,
        )
        unregister = ctx.run.on_cancel(plane.abort)
        try:
            return _Job(ctx, plane).run()
        finally:
            unregister()
            plane.abort()  # a no-op once the plane closed cleanly; else no lane outlives the transfer


class _Job:
    def __init__(self, ctx: LiveSourceContext, plane: DataPlaneSender) -> None:
        self.ctx = ctx
        self.plane = plane
        self.size = ctx.memory.size
        self.npages = self.size // PAGE_SIZE
        self.pre = Precopy(ctx.domain, self.size, ctx.policy, legacy=ctx.kind is TransferKind.STOP_AND_COPY)
        self.transcript = Transcript()
        self.chunk = 0  # the next data-plane round
        self.chunk_bytes = chunk_bytes(ctx.policy.bandwidth_cap)
        self.bytes_sent = 0
        self.pages_sent = 0
        self.phase = "precopy"
        self.t0 = time.monotonic()
        self.rounds = 0
        self.suspended_at: float | None = None  # monotonic, for the switch-over's log line

    # ------------------------------------------------------------------ the rounds
    def run(self) -> TransferResult:
        ctx = self.ctx
        decision = self.pre.start()
        if isinstance(decision, SwitchOver):  # the 1.2 way: down for the whole copy
            state = self._suspend(decision.round)
            self._round(decision.round, self._data_ranges(), target_is_zero=True, final=True)
            return self._result(state)
        dirty = DirtyMap(ctx.dirty_path, self.npages, create=False)
        try:
            dirty.snapshot_and_clear()  # round 1 reads every page after this: what is written later is marked
            pages, seconds, wire = self._round(1, self._data_ranges(), target_is_zero=True)
            r = 1
            while True:
                rep = self._report(r, pages, wire, seconds, dirty.count())
                decision = self.pre.feed(rep)
                log.info(
                    "LDom %s: round %d sent %d pages in %.1f ms; %d pages dirty now, link %.0f MB/s: %s",
                    ctx.domain, r, pages, seconds * 1000, rep.dirty_pages_now,
                    (self.pre.link_rate or 0) / (1 << 20), type(decision).__name__,
                )  # fmt: skip
                if isinstance(decision, GiveUp):
                    raise PrecopyGaveUp(decision.reason)
                if isinstance(decision, SwitchOver):
                    break
                if isinstance(decision, Throttle):
                    ctx.guest.throttle(decision.percent)
                r = decision.round
                pages, seconds, wire = self._round(r, dirty.snapshot_and_clear(), target_is_zero=False)
            ctx.hooks.at("source:switch-over", ctx.run.cancelled)
            state = self._suspend(decision.round)
            self._round(decision.round, dirty.snapshot_and_clear(), target_is_zero=False, final=True)
        finally:
            dirty.close()
        return self._result(state)

    def _suspend(self, round_no: int) -> bytes:
        ctx = self.ctx
        ctx.check_cancel()
        offset = self._barrier()
        ctx.check_cancel()
        state = on_peer_clock(ctx.guest.suspend(), offset)  # its suspend time, on the target's clock
        self.suspended_at = time.monotonic()
        self.phase = "suspended"
        self._progress(round_no, 0, 0, force=True)
        ctx.hooks.at("source:suspended", ctx.run.cancelled)
        ctx.check_cancel()
        ctx.channel.send(Suspend(round=round_no))
        ack = ctx.channel.receive()
        if not isinstance(ack, SuspendAck):
            raise UnexpectedEvent(ack, "SuspendAck")
        return state

    def _barrier(self) -> float | None:
        """Ping the target and wait for its Pong before the suspend: it answers once it has taken every
        chunk so far and its standby guest is up, so none of that falls into the pause.  Returns the
        target's clock offset the Pong tells (`clock_offset_s`), for the guest's suspend time."""
        ctx = self.ctx
        nonce = secrets.randbits(62)
        sent = time.time()
        ctx.channel.send(Ping(nonce=nonce))
        ev = ctx.channel.receive(timeout=ctx.barrier_s)
        if not isinstance(ev, Pong) or ev.nonce != nonce:
            raise UnexpectedEvent(ev, "Pong")
        return clock_offset_s(sent, time.time(), ev.wall_us)

    def _data_ranges(self) -> list[tuple[int, int]]:
        fd = os.open(self.ctx.memory.path, os.O_RDONLY)
        try:
            return data_ranges(fd, self.size)
        finally:
            os.close(fd)

    def _round(
        self, r: int, pages: list[tuple[int, int]] | np.ndarray, *, target_is_zero: bool, final: bool = False
    ) -> tuple[int, float, int]:
        """Send round `r` (ranges, or page indices); (data pages sent, seconds, wire bytes)."""
        ctx = self.ctx
        t_start = time.monotonic()
        chunks: Iterable[np.ndarray]
        if isinstance(pages, np.ndarray):
            candidate = len(pages) * PAGE_SIZE
            chunks = chunks_of_indices(pages, self.chunk_bytes // PAGE_SIZE)
        else:
            candidate = sum(n for _, n in pages)
            chunks = chunks_of_ranges(pages, self.chunk_bytes)
        self.rounds = r
        covered = round_pages = round_wire = 0
        self._progress(r, 0, candidate, force=True)
        ctx.hooks.at(f"source:round:{'final' if final else r}", ctx.run.cancelled)
        for c in chunks:
            ctx.check_cancel()
            if not ctx.guest.alive():
                raise GuestDied(
                    f"The guest of LDom {ctx.domain} died during its migration (phase {self.phase}, "
                    f"round {r})"
                )
            st = self.plane.send_round(self.chunk, c, target_is_zero=target_is_zero)
            self.transcript.add(self.chunk, st.frames, st.pages)
            ctx.channel.send(MemPages(round=r, descriptor=chunk_descriptor(self.chunk, st.frames, st.pages)))
            self.chunk += 1
            covered += int(c[:, 1].sum()) if c.ndim == 2 else len(c) * PAGE_SIZE
            round_pages += st.pages
            round_wire += st.bytes_sent
            self.bytes_sent += st.bytes_sent
            self.pages_sent += st.pages
            self._progress(r, covered, candidate)
            cap = ctx.policy.bandwidth_cap
            if cap and not final:
                delay = pacing_delay(round_wire, time.monotonic() - t_start, cap)
                if delay > 0 and ctx.run.cancelled.wait(delay):
                    ctx.check_cancel()
        ctx.channel.send(RoundDone(round=r, pages=round_pages, nbytes=round_pages * PAGE_SIZE))
        return round_pages, time.monotonic() - t_start, round_wire

    def _report(self, r: int, pages: int, wire: int, seconds: float, dirty_now: int) -> RoundReport:
        rate: float | None
        try:
            rate = self.ctx.guest.dirty_rate()
        except Exception:  # the guest's own measure is a nicety; the policy estimates without it
            rate = None
        return RoundReport(
            round=r,
            pages_sent=pages,
            bytes_sent=wire,
            seconds=seconds,
            dirty_pages_now=min(dirty_now, self.npages),
            page_size=PAGE_SIZE,
            elapsed_total_s=time.monotonic() - self.t0,
            guest_dirty_rate_bytes_s=rate,
        )

    # ------------------------------------------------------------------ progress and result
    def _progress(self, r: int, covered: int, candidate: int, *, force: bool = False) -> None:
        if r == 1 and candidate:  # round 1 counts as the whole memory, holes included
            in_round = covered * self.size // candidate
        else:
            in_round = covered
        percent = transfer_percent(self.pre.progress(in_round))
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        rate = self.pre.link_rate or self.bytes_sent / elapsed
        self.ctx.report(
            ProgressFacts(
                percent=percent,
                phase=self.phase,
                round=r,
                bytes_sent=self.bytes_sent,
                remaining_bytes=max(0, candidate - covered),
                rate_bytes_s=float(rate),
                expected_downtime_s=self.pre.expected_downtime_s,
                throttle=self.pre.throttle_percent,
            ),
            force,
        )

    def _result(self, state: bytes) -> TransferResult:
        self.plane.close()  # goodbye on every channel: the target's receiver ends cleanly
        if self.suspended_at is not None:
            log.info(
                "LDom %s: %s copy in %d rounds over %d channels, %d pages (%d bytes on the wire); the "
                "final round took %.1f ms after the suspend",
                self.ctx.domain, self.ctx.kind.value, self.rounds, self.plane.nchannels, self.pages_sent,
                self.bytes_sent, (time.monotonic() - self.suspended_at) * 1000,
            )  # fmt: skip
        return TransferResult(
            checksum=self.transcript.hexdigest(),
            cpu_state=state,
            pages=self.pages_sent,
            nbytes=self.pages_sent * PAGE_SIZE,
            algorithm=Transcript.algorithm,
            rounds=self.rounds,
            channels=self.plane.nchannels,
            bytes_sent=self.bytes_sent,
        )
