"""A guest's memory: a sparse, memory-mapped file indexed by real address (RA).

Theory of operation.  A bound domain holds memory blocks, each an RA range backed by a PA range.  The guest
sees only RAs, so its memory file holds the blocks' contents back to back in RA order: block i starts at
file offset sum(size of the blocks before it).  `MemoryMap` is that pure translation (RA -> file offset,
page numbers for a dirty map); `GuestMemory` opens the file, grows it with `ftruncate` (untouched pages are
holes: zero and free) and maps it shared, so another process (a migration engine) can map the same file.

Pages are SPARC's 8 KiB base pages; a block's RA and size are multiples of a page.
"""

from __future__ import annotations

import bisect
import mmap
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldoms.units import PAGE_SIZE


@dataclass(frozen=True, slots=True)
class Segment:
    """One memory block of the guest: RA range [ra, ra+size) stored at file offset `offset`."""

    ra: int
    size: int
    offset: int

    @property
    def ra_end(self) -> int:
        return self.ra + self.size


class MemoryMap:
    """RA ranges of a domain's memory blocks -> offsets in one file.  Pure: no file is touched."""

    def __init__(self, blocks: Iterable[tuple[int, int]]) -> None:
        segs: list[Segment] = []
        offset = 0
        for ra, size in sorted(blocks):
            if ra < 0 or size <= 0 or ra % PAGE_SIZE or size % PAGE_SIZE:
                raise ValueError(
                    f"memory block RA {ra:#x} size {size:#x}: RA and size must be positive multiples of "
                    f"the {PAGE_SIZE // 1024}K page"
                )
            if segs and ra < segs[-1].ra_end:
                raise ValueError(
                    f"memory block RA {ra:#x} overlaps the block at RA {segs[-1].ra:#x} "
                    f"(which ends at {segs[-1].ra_end:#x})"
                )
            segs.append(Segment(ra=ra, size=size, offset=offset))
            offset += size
        self.segments: tuple[Segment, ...] = tuple(segs)
        self.size = offset
        self._starts = [s.ra for s in segs]

    @property
    def npages(self) -> int:
        return self.size // PAGE_SIZE

    def segment_of(self, ra: int) -> Segment:
        i = bisect.bisect_right(self._starts, ra) - 1
        if i < 0 or ra >= self.segments[i].ra_end:
            raise ValueError(f"real address {ra:#x} is not in any memory block of this guest")
        return self.segments[i]

    def offset_of(self, ra: int) -> int:
        seg = self.segment_of(ra)
        return seg.offset + (ra - seg.ra)

    def ra_of(self, offset: int) -> int:
        """The RA stored at a file offset (inverse of `offset_of`)."""
        for seg in self.segments:
            if seg.offset <= offset < seg.offset + seg.size:
                return seg.ra + (offset - seg.offset)
        raise ValueError(f"file offset {offset:#x} is beyond the guest's memory ({self.size:#x} bytes)")

    def page_of(self, ra: int) -> int:
        """Index of the page holding `ra` in the file (and so in a dirty map)."""
        return self.offset_of(ra) // PAGE_SIZE

    def pieces(self, ra: int, length: int) -> Iterator[tuple[int, int]]:
        """(file offset, length) pieces covering [ra, ra+length), which may cross adjacent blocks."""
        while length > 0:
            seg = self.segment_of(ra)
            n = min(length, seg.ra_end - ra)
            yield seg.offset + (ra - seg.ra), n
            ra += n
            length -= n


class GuestMemory:
    """The memory file of one guest, mapped shared.  Create it with `create=True` (the guest does); other
    processes open the existing file."""

    def __init__(
        self, path: str | os.PathLike[str], blocks: Iterable[tuple[int, int]], *, create: bool
    ) -> None:
        self.path = Path(path)
        self.map = MemoryMap(blocks)
        if self.map.size == 0:
            raise ValueError(f"guest memory {self.path}: no memory blocks")
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, self.map.size)  # a hole: no block is allocated until written
            elif os.fstat(fd).st_size != self.map.size:
                raise ValueError(
                    f"guest memory {self.path}: file holds {os.fstat(fd).st_size} bytes, the blocks "
                    f"need {self.map.size}"
                )
            self._mm = mmap.mmap(fd, self.map.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    @property
    def size(self) -> int:
        return self.map.size

    def read(self, ra: int, length: int) -> bytes:
        return b"".join(self._mm[off : off + n] for off, n in self.map.pieces(ra, length))

    def write(self, ra: int, data: bytes) -> None:
        pos = 0
        for off, n in self.map.pieces(ra, len(data)):
            self._mm[off : off + n] = data[pos : pos + n]
            pos += n

    def view(self) -> memoryview:
        """The whole file as a writable buffer, in file-offset order (for bulk page copies)."""
        return memoryview(self._mm)

    @property
    def npages(self) -> int:
        return self.map.npages

    def pages(self) -> np.ndarray:
        """The whole file as a writable (pages, PAGE_SIZE) uint8 array, in file-offset order: row i is the
        page a dirty map calls i.  Drop every such array before `close` (they pin the mapping)."""
        return np.frombuffer(self._mm, dtype=np.uint8).reshape(self.map.npages, PAGE_SIZE)

    def flush(self) -> None:
        self._mm.flush()

    def close(self) -> None:
        if not self._mm.closed:
            try:
                self._mm.close()
            except BufferError:
                # A buffer (numpy array, memoryview) still points into the map: closing it now would leave
                # that buffer dangling, so the map is unmapped when the last such buffer is dropped instead.
                pass

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def allocated_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes the file really occupies on disk (a sparse file occupies less than its size)."""
    return os.stat(path).st_blocks * 512
