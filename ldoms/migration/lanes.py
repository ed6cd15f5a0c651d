"""The per-channel loops of the data plane ("lanes"), runnable in a thread or in a worker process.

Theory of operation.  A lane owns one data socket and one end of a control pipe (a
`multiprocessing.connection.Connection`, so the same code runs in a thread or in a process).

A *sender lane* sends its hello, then obeys commands:
  ("round", round_no, units, target_is_zero)  scan the units (runs of candidate pages) for zero pages, batch
      the non-zero pages into frames of at most `frame_bytes`, seal and send them, then an end-of-round
      marker; reply ("done", round_no, stats).  A frame whose pages form one contiguous run is encrypted
      straight out of the guest memory; scattered pages are gathered into a scratch buffer first.
  ("close",)  send a goodbye, reply ("closed",) and return.
  end of pipe  return at once (the parent aborted).
A *receiver lane* checks its hello, then reads frames until the goodbye, writing each frame's pages into the
target memory and reporting ("progress", pages), ("round", round_no, stats) after each end-of-round marker
and ("goodbye",) at the end.

Any failure is reported as ("error", class name, message) and ends the lane; the parent aborts the whole data
plane (shutting the sockets down wakes every other lane).  In a worker process the memory is mapped from the
`MemoryFile` the parent names (MAP_SHARED: the worker sees the guest's writes as they happen).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ldoms.migration import dataplane_errors as errs
from ldoms.migration.compress import SAMPLE_BYTES, CompressionGovernor, Plan, compress, decompress
from ldoms.migration.dataframe import (
    END_META,
    GCM_TAG,
    HEADER_SIZE,
    MAX_RUNS,
    FrameOpener,
    FrameSealer,
    Header,
    Kind,
)
from ldoms.migration.dataplane_keys import KeySchedule
from ldoms.migration.pagescan import as_pages, classify
from ldoms.migration.sink import BufferSink, FileSink, PageSink
from ldoms.units import PAGE_SIZE

PROGRESS_EVERY = 8  # frames between progress reports (keeps the report pipe far from full)


@dataclass(frozen=True, slots=True)
class MemoryFile:
    """Guest memory as a file that a worker process can map itself: `size` bytes at `offset` of `path`."""

    path: str
    size: int
    offset: int = 0

    def map(self, *, writable: bool) -> mmap.mmap:
        fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            return mmap.mmap(fd, self.size, mmap.MAP_SHARED, prot, offset=self.offset)
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class LaneSpec:
    secret: bytes
    migration_id: str | bytes
    channel: int
    nchannels: int
    memory_bytes: int
    frame_bytes: int
    compression: str
    memory_file: MemoryFile | None = None  # set when the lane runs in a worker process


@dataclass(slots=True)
class LaneStats:
    frames: int = 0
    pages: int = 0
    zero_pages: int = 0
    bytes: int = 0
    compressed_frames: int = 0

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.frames, self.pages, self.zero_pages, self.bytes, self.compressed_frames)


class _EOF(Exception):
    def __init__(self, got: int) -> None:
        self.got = got


def send_all(sock: socket.socket, bufs: list[Any]) -> int:
    """Send buffers back to back with as few system calls as the kernel allows; returns bytes sent."""
    views = [memoryview(b).cast("B") for b in bufs if len(b)]
    total = sum(len(v) for v in views)
    while views:
        n = sock.sendmsg(views)
        while n and views:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0
    return total


def recv_exact(sock: socket.socket, buf: memoryview) -> None:
    pos, n = 0, len(buf)
    while pos < n:
        got = sock.recv_into(buf[pos:], n - pos)
        if got == 0:
            raise _EOF(pos)
        pos += got


def _report_error(conn: Connection, exc: BaseException, channel: int) -> None:
    if isinstance(exc, errs.DataPlaneError):
        msg: tuple[Any, ...] = ("error", type(exc).__name__, str(exc))
    elif isinstance(exc, OSError):
        msg = ("error", "ChannelClosed", f"data channel {channel}: {exc.strerror or exc}")
    else:
        msg = (
            "error",
            "DataPlaneError",
            f"data channel {channel}: internal failure: {type(exc).__name__}: {exc}\n"
            f"{traceback.format_exc()}",
        )
    with contextlib.suppress(OSError, ValueError):
        conn.send(msg)


def _memory(spec: LaneSpec, memory: Any, *, writable: bool) -> tuple[Any, Any]:
    """(buffer, mapping to close) for the lane."""
    if memory is not None:
        return memory, None
    assert spec.memory_file is not None
    mm = spec.memory_file.map(writable=writable)
    return mm, mm


# ------------------------------------------------------------------------------------------------ sender
class _SenderLane:
    def __init__(self, spec: LaneSpec, sock: socket.socket, memory: Any) -> None:
        self.spec = spec
        self.sock = sock
        self.raw = memoryview(memory).cast("B")
        self.pages = as_pages(memory)
        self.frame_pages = spec.frame_bytes // PAGE_SIZE
        self.sealer = FrameSealer(KeySchedule(spec.secret, spec.migration_id), spec.channel)
        self.gov = CompressionGovernor(spec.compression)
        self.scratch = np.empty((self.frame_pages, PAGE_SIZE // 8), dtype=np.uint64)
        self.out = bytearray(spec.frame_bytes + GCM_TAG)
        self.carry = 0  # bytes sent outside a round (the hello), counted in the next round's stats

    def _send(self, head: bytes, body: memoryview, stats: LaneStats) -> float:
        t = time.perf_counter()
        stats.bytes += send_all(self.sock, [head, body])
        return time.perf_counter() - t

    def hello(self) -> None:
        head, body = self.sealer.hello(self.spec.nchannels, self.spec.memory_bytes, self.spec.frame_bytes)
        self.carry += send_all(self.sock, [head, body])

    def _flush(self, round_no: int, pending: list[tuple[int, int, int]], stats: LaneStats) -> None:
        runs = np.array(pending, dtype=np.int64)
        data = runs[runs[:, 2] == 0]
        n = int(data[:, 1].sum()) if len(data) else 0
        plain: memoryview
        if len(data) == 1:  # one contiguous run: encrypt straight from guest memory
            f = int(data[0, 0])
            plain = self.raw[f * PAGE_SIZE : (f + n) * PAGE_SIZE]
        else:
            pos = 0
            for f, c in data[:, :2].tolist():
                self.scratch[pos : pos + c] = self.pages[f : f + c]
                pos += c
            plain = memoryview(self.scratch).cast("B")[: n * PAGE_SIZE]
        payload, compressed = plain, False
        plan = self.gov.plan() if n else Plan.RAW
        if plan is not Plan.RAW:
            sample = plain if plan is Plan.COMPRESS else plain[:SAMPLE_BYTES]
            t = time.perf_counter()
            packed = compress(sample)
            self.gov.observe_compress(len(sample), len(packed), time.perf_counter() - t)
            if plan is Plan.COMPRESS and len(packed) < len(plain):
                payload, compressed = memoryview(packed), True
        head, body = self.sealer.pages(
            round_no, runs, payload, self.out, compressed=compressed, plain_len=n * PAGE_SIZE
        )
        dt = self._send(head, body, stats)
        self.gov.observe_send(len(head) + len(body), dt)
        stats.frames += 1
        stats.compressed_frames += compressed
        stats.pages += n
        pending.clear()

    def round(self, round_no: int, units: list[np.ndarray], target_is_zero: bool) -> LaneStats:
        stats = LaneStats(bytes=self.carry)
        self.carry = 0
        pending: list[tuple[int, int, int]] = []
        filled = 0  # data pages in `pending`
        for unit in units:
            for first, count in unit.tolist():
                for f, c, z in classify(self.pages, first, count).tolist():
                    if z:
                        stats.zero_pages += c
                        if not target_is_zero:  # the target may hold old data there: say "zero"
                            pending.append((f, c, 1))
                            if len(pending) >= MAX_RUNS:
                                self._flush(round_no, pending, stats)
                                filled = 0
                        continue
                    while c:
                        take = min(c, self.frame_pages - filled)
                        pending.append((f, take, 0))
                        f, c, filled = f + take, c - take, filled + take
                        if filled == self.frame_pages or len(pending) >= MAX_RUNS:
                            self._flush(round_no, pending, stats)
                            filled = 0
        if pending:
            self._flush(round_no, pending, stats)
        head, body = self.sealer.end_round(
            round_no, stats.frames, stats.pages, stats.zero_pages if not target_is_zero else 0
        )
        self._send(head, body, stats)
        return stats

    def goodbye(self) -> None:
        head, body = self.sealer.goodbye()
        send_all(self.sock, [head, body])


def sender_lane(spec: LaneSpec, sock: socket.socket, memory: Any, conn: Connection) -> None:
    mapping = None
    try:
        buf, mapping = _memory(spec, memory, writable=False)
        lane = _SenderLane(spec, sock, buf)
        lane.hello()
        while True:
            try:
                cmd = conn.recv()
            except (EOFError, OSError):
                return  # the parent went away or aborted
            if cmd[0] == "round":
                _, round_no, units, target_is_zero = cmd
                stats = lane.round(round_no, units, target_is_zero)
                conn.send(("done", round_no, stats.as_tuple()))
            elif cmd[0] == "close":
                lane.goodbye()
                conn.send(("closed",))
                return
    except BaseException as exc:  # reported to the parent, which raises it
        _report_error(conn, exc, spec.channel)
    finally:
        with contextlib.suppress(Exception):
            del lane  # releases the memoryviews before the mapping closes
        if mapping is not None:
            with contextlib.suppress(BufferError):
                mapping.close()


# ---------------------------------------------------------------------------------------------- receiver
class _ReceiverLane:
    def __init__(self, spec: LaneSpec, sock: socket.socket, sink: PageSink) -> None:
        self.spec = spec
        self.sock = sock
        self.sink = sink
        self.opener = FrameOpener(
            KeySchedule(spec.secret, spec.migration_id),
            spec.channel,
            nchannels=spec.nchannels,
            memory_bytes=spec.memory_bytes,
            frame_bytes=spec.frame_bytes,
        )
        self.head = bytearray(HEADER_SIZE)
        self.ct = bytearray(self.opener.max_payload)
        self.plain = bytearray(spec.frame_bytes)
        self.last_round = -1  # the last round whose end-of-round marker was received
        self.open_round: int | None = None
        self.stats = LaneStats()
        self.t0: float | None = None  # when this round's first frame arrived (monotonic, system-wide)

    def _read(self, buf: memoryview, what: str, h: Header | None) -> None:
        try:
            recv_exact(self.sock, buf)
        except _EOF as e:
            where = self.opener.where()
            if h is None and e.got == 0:
                inside = (
                    f"inside round {self.open_round}" if self.open_round is not None else "between rounds"
                )
                raise errs.TruncatedFrame(
                    f"{where}: the stream ended {inside} before the sender's goodbye "
                    "(the sender aborted, or the stream was cut)"
                ) from None
            raise errs.TruncatedFrame(
                f"{where}: the stream ended inside the frame's {what} ({e.got} of {len(buf)} bytes)"
            ) from None

    def next_frame(self) -> tuple[Header, memoryview, memoryview]:
        self._read(memoryview(self.head), "header", None)
        if self.t0 is None:
            self.t0 = time.monotonic()
        h = self.opener.check_header(bytes(self.head))
        meta = bytearray(h.meta_len)
        self._read(memoryview(meta), "metadata", h)
        payload = memoryview(self.ct)[: h.payload_len]
        self._read(payload, "payload", h)
        self.stats.bytes += HEADER_SIZE + h.meta_len + h.payload_len
        return h, memoryview(meta), payload

    def _reject(self, h: Header, meta: memoryview, payload: memoryview, exc: errs.FrameRejected) -> None:
        """Raise `exc`, unless the frame does not authenticate: then it was tampered with, and that is the
        error to name."""
        self.opener.decrypt_into(h, meta, payload, memoryview(self.plain)[: h.payload_len - GCM_TAG])
        raise exc

    def apply_pages(self, h: Header, meta: memoryview, payload: memoryview) -> None:
        w = self.opener.where()
        runs, data_pages, zero_pages = self.opener.page_table(h, meta, payload, self.plain)
        if h.round <= self.last_round or (self.open_round is not None and h.round != self.open_round):
            self._reject(
                h,
                meta,
                payload,
                errs.RoundMismatch(
                    f"{w}: a frame of round {h.round} after round {self.last_round} ended "
                    f"(open round: {self.open_round})"
                ),
            )
        data = runs[runs[:, 2] == 0]
        n_plain = h.payload_len - GCM_TAG
        # Authenticated before anything is written: the memory never holds unauthenticated bytes.
        self.opener.decrypt_into(h, meta, payload, memoryview(self.plain)[:n_plain])
        src: Any = memoryview(self.plain)[:n_plain]
        if h.flags:
            try:
                src = decompress(src, h.plain_len)
            except Exception as exc:
                raise errs.MalformedFrame(f"{w}: the compressed pages do not decompress: {exc}") from None
            if len(src) != h.plain_len:
                raise errs.MalformedFrame(f"{w}: the pages decompress to {len(src)} bytes, not {h.plain_len}")
        elif n_plain != h.plain_len:
            raise errs.MalformedFrame(f"{w}: {n_plain} bytes of pages, the header says {h.plain_len}")
        pos = 0
        for f, c in data[:, :2].tolist():
            self.sink.write(f, src[pos : pos + c * PAGE_SIZE])
            pos += c * PAGE_SIZE
        for f, c in runs[runs[:, 2] == 1][:, :2].tolist():
            self.sink.zero(f, c)
        self.open_round = h.round
        self.stats.frames += 1
        self.stats.pages += data_pages
        self.stats.zero_pages += zero_pages
        self.stats.compressed_frames += bool(h.flags)

    def end_round(self, h: Header, meta: memoryview) -> tuple[LaneStats, float]:
        """Close the open round: (its stats, when its first frame arrived)."""
        frames, pages, zero = END_META.unpack(meta)
        s = self.stats
        if (
            h.round <= self.last_round
            or (self.open_round is not None and h.round != self.open_round)
            or ((frames, pages, zero) != (s.frames, s.pages, s.zero_pages))
        ):
            raise errs.RoundMismatch(
                f"{self.opener.where(h.seq)}: end of round {h.round} announces {frames} frames, "
                f"{pages} pages, {zero} zero pages; received {s.frames}, {s.pages}, {s.zero_pages} in round "
                f"{self.open_round} (last ended round {self.last_round})"
            )
        t0 = self.t0 if self.t0 is not None else time.monotonic()
        self.last_round, self.open_round, self.stats, self.t0 = h.round, None, LaneStats(), None
        return s, t0


def receiver_lane(spec: LaneSpec, sock: socket.socket, memory: Any, conn: Connection) -> None:
    sink: PageSink | None = None
    try:
        file = memory if isinstance(memory, MemoryFile) else spec.memory_file if memory is None else None
        sink = FileSink(file.path, file.size, file.offset) if file is not None else BufferSink(memory)
        lane = _ReceiverLane(spec, sock, sink)
        h, meta, payload = lane.next_frame()
        lane.opener.authenticate(h, meta, payload)  # the hello: key id, geometry
        lane.t0 = None
        while True:
            h, meta, payload = lane.next_frame()
            if h.kind == Kind.PAGES:
                lane.apply_pages(h, meta, payload)
                if lane.stats.frames % PROGRESS_EVERY == 0:
                    conn.send(("progress", h.round, lane.stats.pages))
                continue
            lane.opener.authenticate(h, meta, payload)
            if h.kind == Kind.END_ROUND:
                stats, t0 = lane.end_round(h, meta)
                conn.send(("round", h.round, stats.as_tuple(), t0, time.monotonic()))
            elif h.kind == Kind.GOODBYE:
                if lane.open_round is not None:
                    raise errs.RoundMismatch(
                        f"{lane.opener.where(h.seq)}: goodbye inside round "
                        f"{lane.open_round}, before its end-of-round marker"
                    )
                conn.send(("goodbye",))
                return
            else:
                raise errs.MalformedFrame(f"{lane.opener.where(h.seq)}: a second hello")
    except BaseException as exc:
        _report_error(conn, exc, spec.channel)
    finally:
        if sink is not None:
            with contextlib.suppress(Exception):
                sink.close()
