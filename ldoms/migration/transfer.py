"""Moving an active guest's memory: the image scan, its digest, the target's writer, and the transfer step.

Theory of operation.  A guest's memory is a sparse file indexed by real address (`ldoms.hv.memory`): holes
and zero pages are zero on both sides and never travel.  `scan_runs` walks the file's data extents
(SEEK_DATA / SEEK_HOLE, so a 32G idle guest costs nothing), finds the non-zero 8 KiB pages with numpy and
yields them as runs `(real address, bytes)` that never cross a memory block (RAs jump between blocks).

`ImageDigest` is the checksum FinalState carries: SHA-256 over `(RA as 8 bytes big-endian, page)` for every
non-zero page in RA order.  It depends only on the image, not on how it was cut into messages, so the target
recomputes it by scanning what it wrote, and a lost, torn or misplaced page changes it.

The transfer is one replaceable step (`Transfer`): the source engine calls `transfer.run(ctx)` between
PrepareAck and FinalState and gets the checksum and the vCPU state back.  `StopAndCopy` is the LDoms 1.2
behaviour: suspend the guest, announce the (only, final) round with Suspend, send every non-zero page on the
control link in MemPages batches, close the round with RoundDone.  It is the fallback for a target that
answers Prepare without a data plane; `ldoms.migration.live_source.LiveTransfer` (live pre-copy, or the 1.2
stop-and-copy, over the parallel encrypted data plane) is the usual step, and
`ldoms.migration.live_target` holds the target's receivers (control link or data plane) behind one
interface.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ldoms.errors import OpExecError
from ldoms.hv.memory import GuestMemory
from ldoms.migration.events import MemPages, RoundDone, Suspend, SuspendAck
from ldoms.migration.transport import ControlChannel
from ldoms.units import PAGE_SIZE

_RA = struct.Struct(">Q")
SCAN_PAGES = 256  # pages examined per numpy step (2 MiB)


class TransferError(OpExecError):
    code = "transfer"


# ------------------------------------------------------------------------------------------------ scanning
def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Page-aligned [start, end) file ranges that may hold data (holes skipped where the filesystem says)."""
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole from here on
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support: everything may be data
                yield off, size
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        start -= start % PAGE_SIZE
        end = min(size, -(-end // PAGE_SIZE) * PAGE_SIZE)
        if end <= start:
            return
        yield start, end
        off = end


def scan_runs(memory: GuestMemory, *, max_run: int = 2 * 1024 * 1024) -> Iterator[tuple[int, bytes]]:
    """Every non-zero page of `memory` as runs (RA, bytes) of at most `max_run` bytes, in RA order."""
    max_pages = max(1, max_run // PAGE_SIZE)
    pages = np.frombuffer(memory.view(), dtype=np.uint8).reshape(-1, PAGE_SIZE)
    fd = os.open(memory.path, os.O_RDONLY)
    try:
        extents = list(data_extents(fd, memory.size))
    finally:
        os.close(fd)
    try:
        for seg in memory.map.segments:
            lo, hi = seg.offset, seg.offset + seg.size
            for a, b in extents:
                a, b = max(a, lo), min(b, hi)
                for p0 in range(a // PAGE_SIZE, b // PAGE_SIZE, SCAN_PAGES):
                    p1 = min(p0 + SCAN_PAGES, b // PAGE_SIZE)
                    nz = np.flatnonzero(pages[p0:p1].any(axis=1))
                    if nz.size == 0:
                        continue
                    # Split the non-zero indices into runs of consecutive pages, each at most max_pages long.
                    breaks = np.flatnonzero(np.diff(nz) != 1) + 1
                    for run in np.split(nz, breaks):
                        for i in range(0, run.size, max_pages):
                            first, last = int(run[i]) + p0, int(run[min(i + max_pages, run.size) - 1]) + p0
                            ra = seg.ra + first * PAGE_SIZE - seg.offset
                            yield ra, pages[first : last + 1].tobytes()
    finally:
        del pages  # the array pins the mapping


class ImageDigest:
    """SHA-256 over (RA, page) of the non-zero pages, in RA order (see the module docstring)."""

    algorithm = "sha256"

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update_run(self, ra: int, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(data), PAGE_SIZE):
            self._h.update(_RA.pack(ra + i))
            self._h.update(view[i : i + PAGE_SIZE])

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def image_digest(memory: GuestMemory) -> str:
    d = ImageDigest()
    for ra, data in scan_runs(memory):
        d.update_run(ra, data)
    return d.hexdigest()


# ------------------------------------------------------------------------------------------- target side
class ImageWriter:
    """The target's staging image: a new sparse file for `blocks` [(ra, size)], filled by MemPages."""

    def __init__(self, path: Path, blocks: Sequence[tuple[int, int]]) -> None:
        self.path = path
        self.memory = GuestMemory(path, blocks, create=True)
        self.round_pages = 0
        self.round_bytes = 0

    def write(self, ev: MemPages) -> None:
        if ev.descriptor is not None:
            raise TransferError(
                "the source sent pages through a data plane this link did not negotiate (a MemPages "
                "descriptor); this ldmd takes pages on the control link only"
            )
        for ra, data in ev.pages:
            try:
                self.memory.write(ra, data)
            except ValueError as e:
                raise TransferError(
                    f"page run of {len(data)} bytes at real address {ra:#x} lies outside the domain's "
                    f"memory blocks: {e}"
                ) from None
            self.round_pages += len(data) // PAGE_SIZE
            self.round_bytes += len(data)

    def end_round(self, ev: RoundDone) -> None:
        got = (self.round_pages, self.round_bytes)
        self.round_pages = self.round_bytes = 0
        if got != (ev.pages, ev.nbytes):
            raise TransferError(
                f"round {ev.round} ended with {ev.pages} pages ({ev.nbytes} bytes) announced but {got[0]} "
                f"pages ({got[1]} bytes) received"
            )

    def digest(self) -> str:
        return image_digest(self.memory)

    def sync(self) -> None:
        """Make the image durable (before the target journals that it holds the complete domain)."""
        self.memory.flush()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.memory.close()

    def discard(self) -> None:
        """Scrub: the staging image is deleted (its pages never reach another domain)."""
        self.close()
        self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- source side
@dataclass(frozen=True, slots=True)
class TransferResult:
    checksum: str
    cpu_state: bytes
    pages: int
    nbytes: int
    algorithm: str = ImageDigest.algorithm
    rounds: int = 1
    channels: int = 0  # data channels (0: the pages went on the control link)
    bytes_sent: int = 0  # bytes on the wire for the pages (framing included); 0: as nbytes


@dataclass(slots=True)
class SourceTransferContext:
    channel: ControlChannel
    memory_path: Path
    blocks: tuple[tuple[int, int], ...]  # (ra, size) of the guest's memory blocks
    suspend: Callable[[], bytes]  # suspends the guest; returns its vCPU state
    progress: Callable[[int, int], None]  # (bytes scanned, total bytes)
    check_cancel: Callable[[], None]  # raises when a cancel was asked (the engine then aborts)
    batch_bytes: int = 2 * 1024 * 1024


class Transfer(Protocol):
    """A replaceable transfer step: `StopAndCopy` here (pages on the control link), `LiveTransfer`
    (ldoms.migration.live_source: pre-copy over the data plane) with its own context type."""

    name: str

    def run(self, ctx: Any) -> TransferResult: ...


class StopAndCopy:
    """LDoms 1.2: the guest is suspended for the whole copy (one round, which is also the final one)."""

    name = "stop-and-copy"

    def run(self, ctx: SourceTransferContext) -> TransferResult:
        ctx.check_cancel()
        cpu_state = ctx.suspend()
        ch = ctx.channel
        ch.send(Suspend(round=1))
        ack = ch.receive()
        if not isinstance(ack, SuspendAck):
            raise UnexpectedEvent(ack, "SuspendAck")
        digest = ImageDigest()
        total = sum(size for _, size in ctx.blocks)
        npages = nbytes = 0
        batch: list[tuple[int, bytes]] = []
        batched = 0
        with GuestMemory(ctx.memory_path, ctx.blocks, create=False) as memory:
            for ra, data in scan_runs(memory, max_run=ctx.batch_bytes):
                digest.update_run(ra, data)
                batch.append((ra, data))
                batched += len(data)
                npages += len(data) // PAGE_SIZE
                nbytes += len(data)
                if batched >= ctx.batch_bytes:
                    ch.send(MemPages(round=1, pages=tuple(batch)))
                    ctx.progress(min(total, memory.map.offset_of(ra) + len(data)), total)
                    batch, batched = [], 0
                    ctx.check_cancel()
            if batch:
                ch.send(MemPages(round=1, pages=tuple(batch)))
        ctx.progress(total, total)
        ch.send(RoundDone(round=1, pages=npages, nbytes=nbytes))
        return TransferResult(checksum=digest.hexdigest(), cpu_state=cpu_state, pages=npages, nbytes=nbytes)


class UnexpectedEvent(TransferError):
    """The peer sent a legal event the engine did not wait for here (an Abort, most often)."""

    def __init__(self, event: object, wanted: str) -> None:
        super().__init__(f"expected {wanted}, received {type(event).__name__}")
        self.event = event
