"""The migration data plane: guest pages over N parallel, encrypted, authenticated channels.

Theory of operation.  The control link (TLS) carries a per-migration secret (`dataplane_keys.new_secret`)
and opens N plain TCP connections, one per channel, which it hands to a `DataPlaneSender` on the source and
a `DataPlaneReceiver` on the target.  From then on each channel is a stream of AES-256-GCM frames
(`dataframe`): a hello (key id, geometry), then for each pre-copy round the channel's share of the pages and
an end-of-round marker, and a goodbye at the end.  Every header is authenticated; nonces are (channel,
counter) and never repeat; the receiver refuses a replayed, reordered, truncated, altered or wrongly-keyed
frame with a specific `dataplane_errors` class, and any refusal aborts that migration's data plane.

A round's page set (indices, bitmap or byte ranges) is cut into units of `frame_bytes` worth of candidate
pages, dealt round-robin to the channels' lanes (`lanes`).  Each lane scans its units for zero pages
(never sent: skipped outright when `target_is_zero`, else sent as 16-byte zero runs so a page the guest
cleared since an earlier round is cleared on the target too), batches the rest into frames, optionally
compresses (`compress`), encrypts and sends.  The receiving lanes write pages straight into the target's
memory (see `pagescan.pretouch` to fault it in beforehand): a frame of one contiguous run is decrypted in
place, and if its tag then fails its pages are zeroed before the error is raised, so no unauthenticated byte
stays in the target (whose image is discarded anyway: any refusal aborts the migration).

The first pass into a fresh target should name only the pages that may hold data: for a sparse memory file
`pagescan.data_ranges` (SEEK_DATA) gives them in microseconds, where a zero scan must read every page (and
on tmpfs, reading a hole through a shared mapping allocates it: 3 s and 4 GiB for a 4 GiB guest).

Workers.  AES-GCM in `cryptography` holds the GIL (measured: 1 thread 9.4 GB/s, 2 threads 8.2 GB/s), so
lanes run in worker processes when `workers="processes"`; a worker maps the memory file itself (give a
`MemoryFile`), and processes come from a forkserver, never from fork() of a threaded daemon (the
forkserver, like spawn, re-imports the main module: the program must guard its entry point with
`if __name__ == "__main__"`, as console scripts and pytest do).  With `workers="threads"` lanes are
threads of the caller (sockets and numpy release the GIL, crypto does not).
`"auto"` picks processes only where there are cores to run them (`choose_workers`); see
bench/bench_dataplane.py for the measurements behind it.

Ownership and cancellation.  The plane owns the sockets it is given: `close()` ends cleanly (goodbye on
every channel, workers joined, sockets closed); `abort()` may be called from any thread at any time: it
shuts the sockets down, which wakes every lane on both sides (the peer's lanes see the stream end and fail
with `TruncatedFrame` or `ChannelClosed`), and the call in progress raises `DataPlaneCancelled`.  No thread
or process outlives `close()`/`abort()`.  Except for `abort()`, a plane is used from one thread.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from ldoms.migration import dataplane_errors as errs
from ldoms.migration.compress import Compression
from ldoms.migration.dataplane_keys import MAX_CHANNELS, KeySchedule
from ldoms.migration.lanes import LaneSpec, MemoryFile, receiver_lane, sender_lane
from ldoms.migration.pagescan import to_runs, work_units
from ldoms.migration.workers import Workers, choose_workers, forkserver
from ldoms.units import PAGE_SIZE

__all__ = ["DataPlaneReceiver", "DataPlaneSender", "MemoryFile", "RoundStats", "Workers"]

DEFAULT_FRAME_BYTES = 4 * 1024 * 1024
MIN_FRAME_BYTES = 64 * 1024
MAX_FRAME_BYTES = 16 * 1024 * 1024
JOIN_DEADLINE_S = 5.0  # how long a lane may take to finish after its sockets were shut down


def _unmap(mapping: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):
        mapping.close()


@dataclass(frozen=True, slots=True)
class RoundStats:
    """One round as one side saw it.  `pages`: pages whose data travelled; `zero_pages`: zero pages whose
    data did not (skipped, or sent as zero runs); `bytes_sent`: bytes on the wire, framing included."""

    round: int
    pages: int
    zero_pages: int
    bytes_sent: int
    frames: int
    compressed_frames: int
    seconds: float

    @property
    def zero_pages_skipped(self) -> int:
        return self.zero_pages


class _Lane:
    def __init__(
        self,
        channel: int,
        conn: Connection,
        sock: socket.socket,
        runner: threading.Thread | multiprocessing.process.BaseProcess,
    ) -> None:
        self.channel = channel
        self.conn = conn
        self.sock = sock
        self.runner = runner
        self.alive = True  # its pipe has not reported an end


class _Plane:
    _lane_fn: Callable[..., None]
    _role: str

    def __init__(
        self,
        secret: bytes,
        migration_id: str | bytes,
        channels: list[socket.socket],
        memory: Any,
        *,
        frame_bytes: int,
        compression: Compression | str,
        workers: Workers | str,
    ) -> None:
        KeySchedule(secret, migration_id)  # validates the secret and the id before anything starts
        if not 1 <= len(channels) <= MAX_CHANNELS:
            raise ValueError(f"data plane: {len(channels)} channels; must be 1..{MAX_CHANNELS}")
        if frame_bytes % PAGE_SIZE or not MIN_FRAME_BYTES <= frame_bytes <= MAX_FRAME_BYTES:
            raise ValueError(
                f"data plane frame size {frame_bytes}: must be whole {PAGE_SIZE}-byte pages "
                f"in {MIN_FRAME_BYTES}..{MAX_FRAME_BYTES}"
            )
        mode = choose_workers(workers, len(channels), isinstance(memory, MemoryFile), os.cpu_count() or 1)
        if mode is Workers.PROCESSES and not isinstance(memory, MemoryFile):
            raise ValueError("data plane: worker processes map the memory themselves; pass a MemoryFile")
        self.workers = mode
        self.nchannels = len(channels)
        self.frame_bytes = frame_bytes
        self._mapping = None
        if isinstance(memory, MemoryFile):
            size = memory.size
            if mode is Workers.THREADS and self._role != "receiver":  # receivers pwrite (lanes.FileSink)
                self._mapping = memory.map(writable=False)
                memory = self._mapping
        else:
            size = memoryview(memory).nbytes
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(
                f"data plane memory of {size} bytes: must be a positive number of {PAGE_SIZE}-byte pages"
            )
        self.memory_bytes = size
        self._memory = memory
        self._lock = threading.Lock()
        self._busy = False
        self._busy_owner: int | None = None
        self._released = threading.Event()
        self._cancelled = False
        self._torn_down = False
        self._lanes: list[_Lane] = []
        try:
            for ch, sock in enumerate(channels):
                spec = LaneSpec(
                    bytes(secret),
                    migration_id,
                    ch,
                    len(channels),
                    size,
                    frame_bytes,
                    str(Compression(compression)),
                    memory if isinstance(memory, MemoryFile) else None,
                )
                self._lanes.append(self._start(spec, sock, memory))
        except BaseException:
            self._teardown()
            raise

    def _start(self, spec: LaneSpec, sock: socket.socket, memory: Any) -> _Lane:
        fn = type(self)._lane_fn
        if self.workers is Workers.THREADS:
            parent, child = multiprocessing.Pipe()
            runner: Any = threading.Thread(
                target=fn,
                args=(spec, sock, memory, child),
                daemon=True,
                name=f"dataplane-{self._role}-{spec.channel}",
            )
            runner.start()
            return _Lane(spec.channel, parent, sock, runner)
        ctx = forkserver()
        parent, child = ctx.Pipe()
        runner = ctx.Process(
            target=fn,
            args=(spec, sock, None, child),
            daemon=True,
            name=f"dataplane-{self._role}-{spec.channel}",
        )
        runner.start()
        child.close()  # the worker holds its own end; ours must go so its exit shows as end-of-pipe
        return _Lane(spec.channel, parent, sock, runner)

    # ------------------------------------------------------------------------------------ cancellation
    def abort(self) -> None:
        """Stop now, from any thread: shut the sockets down; the call in progress (if any) raises
        `DataPlaneCancelled` and tears down, else this call does.  Returns when every lane has ended
        (unless called from inside the call in progress, e.g. from `on_progress`)."""
        with self._lock:
            self._cancelled = True
            for lane in self._lanes:
                with contextlib.suppress(OSError):
                    lane.sock.shutdown(socket.SHUT_RDWR)
            busy = self._busy
        if not busy:
            self._teardown()
        elif self._busy_owner != threading.get_ident():
            # the call in progress tears down as it unwinds; return once it has released everything
            self._released.wait(2 * JOIN_DEADLINE_S)

    def _teardown(self) -> None:
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
            self._cancelled = True
        for lane in self._lanes:
            with contextlib.suppress(OSError):
                lane.sock.shutdown(socket.SHUT_RDWR)
            lane.conn.close()  # a sender lane waiting for a command sees the pipe end
        deadline = time.monotonic() + JOIN_DEADLINE_S
        for lane in self._lanes:
            lane.runner.join(max(0.0, deadline - time.monotonic()))
            if isinstance(lane.runner, multiprocessing.process.BaseProcess):
                if lane.runner.is_alive():
                    lane.runner.kill()
                    lane.runner.join()
                lane.runner.close()
            lane.sock.close()
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            # Unmapping a GiB takes tens of milliseconds: on the source that would fall into the guest's pause
            # (the plane closes between the final round and FinalState), so it happens beside it.
            threading.Thread(target=_unmap, args=(mapping,), name="dataplane-unmap", daemon=True).start()
        self._released.set()

    def _enter(self) -> None:
        with self._lock:
            if self._cancelled:
                raise errs.DataPlaneCancelled(f"data plane ({self._role}): already aborted or closed")
            self._busy = True
            self._busy_owner = threading.get_ident()

    def _leave(self, failed: bool) -> None:
        with self._lock:
            self._busy = False
            self._busy_owner = None
            cancelled = self._cancelled
        if failed or cancelled:
            self._teardown()

    def _fail(self, lane: _Lane, name: str, message: str) -> errs.DataPlaneError:
        """The error a lane reported, as an exception to raise (cancellation wins over its symptoms)."""
        if self._cancelled:
            return errs.DataPlaneCancelled(f"data plane ({self._role}): cancelled")
        cls = getattr(errs, name, errs.DataPlaneError)
        if not (isinstance(cls, type) and issubclass(cls, errs.DataPlaneError)):
            cls = errs.DataPlaneError
        return cls(message)

    def _recv(self, lane: _Lane) -> tuple[Any, ...]:
        try:
            return lane.conn.recv()
        except (EOFError, OSError):
            lane.alive = False
            if self._cancelled:
                raise errs.DataPlaneCancelled(f"data plane ({self._role}): cancelled") from None
            raise errs.ChannelClosed(
                f"data channel {lane.channel}: its {self._role} worker ended without a word"
            ) from None

    def __enter__(self) -> _Plane:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        raise NotImplementedError


class DataPlaneSender(_Plane):
    """The source end.  `memory` is the guest memory: a buffer (memoryview, mmap, numpy array) or a
    `MemoryFile` (needed for worker processes).  `channels` are connected TCP sockets, channel i being the
    receiver's channel i."""

    _lane_fn = staticmethod(sender_lane)
    _role = "sender"

    def __init__(
        self,
        secret: bytes,
        migration_id: str | bytes,
        channels: list[socket.socket],
        memory: Any,
        *,
        frame_bytes: int = DEFAULT_FRAME_BYTES,
        compression: Compression | str = Compression.AUTO,
        workers: Workers | str = Workers.AUTO,
    ) -> None:
        super().__init__(
            secret,
            migration_id,
            channels,
            memory,
            frame_bytes=frame_bytes,
            compression=compression,
            workers=workers,
        )
        self._next_round = 0

    def send_round(self, round_no: int, pages: Any, *, target_is_zero: bool = False) -> RoundStats:
        """Send the pages of one round: page indices (1-D int array), a bitmap (1-D bool array, one entry
        per page) or (file offset, length) ranges.  Rounds are numbered upwards.  `target_is_zero`: the
        target's copy of these pages is known to be zero (the first pass into a fresh image), so zero pages
        are skipped outright.  Returns when every channel has sent its end-of-round marker."""
        if not isinstance(round_no, int) or not self._next_round <= round_no < 2**32:
            raise ValueError(
                f"data plane round {round_no}: rounds go upwards from {self._next_round}, below 2**32"
            )
        runs = to_runs(pages, self.memory_bytes // PAGE_SIZE)
        self._enter()
        failed = True
        try:
            t0 = time.perf_counter()
            units = list(work_units(runs, self.frame_bytes // PAGE_SIZE))
            n = self.nchannels
            for lane in self._lanes:
                try:
                    lane.conn.send(("round", round_no, units[lane.channel :: n], target_is_zero))
                except OSError:
                    raise self._fail(
                        lane, "ChannelClosed", f"data channel {lane.channel}: its sender worker is gone"
                    ) from None
            totals = np.zeros(5, dtype=np.int64)
            waiting = {lane.conn: lane for lane in self._lanes}
            while waiting:
                for conn in wait(list(waiting)):
                    lane = waiting[conn]  # type: ignore[index]
                    msg = self._recv(lane)
                    if msg[0] == "error":
                        raise self._fail(lane, msg[1], msg[2])
                    if msg[0] == "done" and msg[1] == round_no:
                        totals += np.array(msg[2], dtype=np.int64)
                        del waiting[conn]  # type: ignore[arg-type]
            self._next_round = round_no + 1
            frames, npages, zero, nbytes, comp = (int(x) for x in totals)
            failed = False
            return RoundStats(round_no, npages, zero, nbytes, frames, comp, time.perf_counter() - t0)
        finally:
            self._leave(failed)

    def close(self) -> None:
        """Say goodbye on every channel and release everything.  Raises if a channel failed on the way."""
        if self._torn_down:
            return
        self._enter()
        try:
            for lane in self._lanes:
                with contextlib.suppress(OSError):
                    lane.conn.send(("close",))
            for lane in self._lanes:
                msg = self._recv(lane)
                if msg[0] == "error":
                    raise self._fail(lane, msg[1], msg[2])
        finally:
            self._leave(True)


class DataPlaneReceiver(_Plane):
    """The target end.  `memory` is the target's memory, writable: a buffer or a `MemoryFile`.  Lanes start
    reading at once; `receive_round` waits for a round to be complete on every channel.  `on_progress(round,
    pages)` is called from the thread in `receive_round`/`close` as pages land."""

    _lane_fn = staticmethod(receiver_lane)
    _role = "receiver"

    def __init__(
        self,
        secret: bytes,
        migration_id: str | bytes,
        channels: list[socket.socket],
        memory: Any,
        *,
        frame_bytes: int = DEFAULT_FRAME_BYTES,
        workers: Workers | str = Workers.AUTO,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        if not isinstance(memory, MemoryFile) and memoryview(memory).readonly:
            raise ValueError("data plane receiver: the target memory must be writable")
        super().__init__(
            secret,
            migration_id,
            channels,
            memory,
            frame_bytes=frame_bytes,
            compression=Compression.OFF,
            workers=workers,
        )
        self.on_progress = on_progress
        self._rounds: dict[int, dict[int, tuple[int, ...]]] = {}
        self._progress: dict[int, dict[int, int]] = {}
        self._goodbyes: set[int] = set()

    def _pump(self, done: Callable[[], bool], timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            live = [lane.conn for lane in self._lanes if lane.alive and lane.channel not in self._goodbyes]
            if not live:
                raise errs.ChannelClosed(f"data plane receiver: every channel ended before {what}")
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait(live, left)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                raise errs.RoundTimeout(f"data plane receiver: {what} not complete after {timeout} s")
            for conn in ready:
                lane = next(ln for ln in self._lanes if ln.conn is conn)
                self._handle(lane, self._recv(lane))

    def _handle(self, lane: _Lane, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "error":
            raise self._fail(lane, msg[1], msg[2])
        if kind == "progress":
            r, pages = msg[1], msg[2]
            self._progress.setdefault(r, {})[lane.channel] = pages
            if self.on_progress is not None:
                self.on_progress(r, sum(self._progress[r].values()))
        elif kind == "round":
            self._rounds.setdefault(msg[1], {})[lane.channel] = msg[2:]
        elif kind == "goodbye":
            self._goodbyes.add(lane.channel)

    @property
    def goodbyes_received(self) -> bool:
        """Every channel has said goodbye: the sender closed the plane cleanly."""
        return len(self._goodbyes) == self.nchannels

    def receive_round(self, round_no: int, timeout: float | None = None) -> RoundStats:
        """Wait until every channel has delivered round `round_no` (its end-of-round marker authenticated
        and every page applied).  `seconds` runs from the round's first frame on any channel to its last
        end-of-round marker."""
        self._enter()
        failed = True
        try:
            self._pump(
                lambda: len(self._rounds.get(round_no, {})) == self.nchannels, timeout, f"round {round_no}"
            )
            parts = self._rounds.pop(round_no)
            self._progress.pop(round_no, None)
            totals = np.sum([parts[c][0] for c in sorted(parts)], axis=0)
            frames, npages, zero, nbytes, comp = (int(x) for x in totals)
            seconds = max(p[2] for p in parts.values()) - min(p[1] for p in parts.values())
            failed = False
            if self.on_progress is not None:
                self.on_progress(round_no, npages)
            return RoundStats(round_no, npages, zero, nbytes, frames, comp, seconds)
        finally:
            self._leave(failed)

    def close(self, timeout: float | None = None) -> None:
        """Wait for the sender's goodbye on every channel, then release everything.  Raises if a channel
        ended otherwise (the sender aborted, the stream was cut)."""
        if self._torn_down:
            return
        self._enter()
        try:
            self._pump(lambda: len(self._goodbyes) == self.nchannels, timeout, "the sender's goodbye")
        finally:
            self._leave(True)
