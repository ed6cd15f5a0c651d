"""The dirty map: one byte per 8 KiB guest page, in a file both the guest and ldmd map (`guests/NAME.dirty`).

Theory of operation.  The guest *writes a page, then marks it* (sets its byte to 1).  The migration engine
runs rounds: `snapshot_and_clear()` reads the whole map once, clears exactly the marks it read, and returns
their page indices; the engine then copies those pages.  No write is ever lost:

- Take a write W to page p and the mark M that follows it.  Let R be the round's read, C its clear of p (if p
  was read as marked) and P the copy of p, in that order: R < C < P.
- If M happened before C, then W (before M) happened before P: the copy carries W.  (If M fell between R and
  C and p was read as marked from an earlier write, the clear erases M, but the copy still follows W.)
- If M happened after C, or after R with p read as unmarked (then it is not cleared at all), p is still
  marked when the round ends: the next round sends it again.

So a page whose last write came after its last copy is always marked, and the final round, run with the
guest suspended at a step boundary (no W or M in flight), leaves nothing behind.  Two details make that hold:
the map is *copied* before the marked indices are searched (one read of each byte: numpy's `nonzero` reads
twice and fails if a byte changes between its passes), and only the indices read are cleared — clearing
the whole map would erase a mark set between the read and the clear, whose write the copy might miss.

Memory ordering.  Write-then-mark needs the guest's page stores to become visible before its mark store:
x86 (TSO) keeps stores in order.  The engine needs its clear (a store) to be visible before it loads the
pages it copies, which x86 does *not* promise (a load may pass an earlier store still in the store buffer:
the copy could read the old page while the clear later erases the new mark), so `snapshot_and_clear` ends
with a full fence (a lock round trip: a LOCK-prefixed instruction).

Bytes, not bits: a byte store is atomic on every CPU, so the guest never needs a read-modify-write that
could race with the engine's clear of a neighbouring page.  A GiB of guest memory takes 128 KiB of map.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_FENCE = threading.Lock()


def _fence() -> None:
    """A full memory barrier: taking a lock is an atomic read-modify-write (on x86, LOCK CMPXCHG)."""
    with _FENCE:
        pass


class DirtyMap:
    """The dirty map of one guest.  `create=True` (the guest, at start) makes a new zeroed file; other
    processes open the existing file, whose size must be `npages` bytes."""

    def __init__(self, path: str | os.PathLike[str], npages: int, *, create: bool) -> None:
        self.path = Path(path)
        if npages <= 0:
            raise ValueError(f"dirty map {self.path}: a guest has at least one page, not {npages}")
        self.npages = npages
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, npages)
            elif os.fstat(fd).st_size != npages:
                raise ValueError(
                    f"dirty map {self.path}: file holds {os.fstat(fd).st_size} bytes, the guest has "
                    f"{npages} pages (one byte each)"
                )
            self._mm = mmap.mmap(fd, npages, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.bits: np.ndarray = np.frombuffer(self._mm, dtype=np.uint8)

    # ------------------------------------------------------------------ the guest's side
    def mark(self, pages: int | Sequence[int] | np.ndarray) -> None:
        """Mark pages dirty.  Call it *after* writing them."""
        self.bits[pages] = 1

    def mark_range(self, start: int, stop: int) -> None:
        """Mark pages [start, stop) dirty (after writing them)."""
        self.bits[start:stop] = 1

    # ------------------------------------------------------------------ the engine's side
    def snapshot_and_clear(self) -> np.ndarray:
        """Sorted indices (int64) of the pages marked now; exactly those marks are cleared.  Copy the
        returned pages *after* this call (see the module docstring for why nothing is lost)."""
        snap = self.bits.copy()  # the read: each byte once
        idx = np.flatnonzero(snap)
        self.bits[idx] = 0  # the clear: only what was read; a mark set since stays for the next round
        _fence()  # the clear is visible before the caller's copy reads a page
        return idx

    def mark_all(self) -> None:
        """Mark every page (the first round sends everything; also after a failed copy)."""
        self.bits[:] = 1

    def count(self) -> int:
        """Pages marked now (a racy estimate while the guest runs; exact while it is suspended)."""
        return int(np.count_nonzero(self.bits))

    def marked(self) -> np.ndarray:
        """Sorted indices of the marked pages, without clearing them."""
        return np.flatnonzero(self.bits.copy())

    def close(self) -> None:
        if self._mm.closed:
            return
        self.bits = np.zeros(0, dtype=np.uint8)  # drop our view so the map can be unmapped
        try:
            self._mm.close()
        except BufferError:
            pass  # a caller still holds a view into the map: it is unmapped when that view goes

    def __enter__(self) -> DirtyMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
