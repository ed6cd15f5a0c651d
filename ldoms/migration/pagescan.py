"""Page sets, zero-page scans and memory preparation for the data plane (numpy; no sockets).

A page set travels as *runs*: an (n, 2) int64 array of (first page, page count), sorted, not overlapping.
Callers hand in page indices, a dirty bitmap or (file offset, length) ranges; `to_runs` turns any of them into
runs.  Pages are 8 KiB (SPARC's base page), page i lives at file offset i * 8 KiB.

Scanning for zero pages views the memory as (pages, 1024) uint64 and asks numpy which rows have any bit set:
it runs at memory speed (DESIGN §5: ~8 GB/s or better) and releases the GIL.  A sparse memory file answers
faster still through SEEK_DATA/SEEK_HOLE (`data_ranges`): the holes need not be read at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ldoms.units import PAGE_SIZE

WORDS_PER_PAGE = PAGE_SIZE // 8
MADV_POPULATE_WRITE = 23  # Linux 5.14+; not exposed by Python 3.11's mmap module
PageSet = np.ndarray | Iterable[tuple[int, int]]


def as_pages(buf: Any) -> np.ndarray:
    """A (pages, 1024) uint64 view of a buffer (memoryview, mmap, bytearray, numpy array); no copy."""
    arr = (
        np.frombuffer(buf, dtype=np.uint8)
        if not isinstance(buf, np.ndarray)
        else buf.reshape(-1).view(np.uint8)
    )
    if arr.size % PAGE_SIZE:
        raise ValueError(f"memory buffer of {arr.size} bytes is not a whole number of {PAGE_SIZE}-byte pages")
    return arr.view(np.uint64).reshape(-1, WORDS_PER_PAGE)


def bool_runs(mask: np.ndarray) -> np.ndarray:
    """Runs of equal values in a boolean vector: (n, 3) int64 of (start, length, value)."""
    n = len(mask)
    if n == 0:
        return np.empty((0, 3), dtype=np.int64)
    edges = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    starts = np.concatenate(([0], edges))
    lengths = np.diff(np.concatenate((starts, [n])))
    return np.stack([starts, lengths, mask[starts].astype(np.int64)], axis=1).astype(np.int64)


def runs_from_indices(indices: np.ndarray) -> np.ndarray:
    idx = np.unique(np.asarray(indices, dtype=np.int64))
    if idx.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    brk = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = idx[np.concatenate(([0], brk))]
    ends = idx[np.concatenate((brk - 1, [idx.size - 1]))] + 1
    return np.stack([starts, ends - starts], axis=1)


def runs_from_bitmap(bitmap: np.ndarray) -> np.ndarray:
    """Runs of set pages in a bool (or 0/1) vector with one entry per page."""
    r = bool_runs(np.asarray(bitmap).astype(bool, copy=False))
    return r[r[:, 2] == 1][:, :2].copy()


def runs_from_ranges(ranges: Iterable[tuple[int, int]]) -> np.ndarray:
    """Runs covering (file offset, length) ranges; offsets and lengths must be whole pages."""
    out = []
    for off, length in ranges:
        if off < 0 or length < 0 or off % PAGE_SIZE or length % PAGE_SIZE:
            raise ValueError(
                f"range ({off:#x}, {length:#x}): offset and length must be whole {PAGE_SIZE}-byte pages"
            )
        if length:
            out.append((off // PAGE_SIZE, length // PAGE_SIZE))
    if not out:
        return np.empty((0, 2), dtype=np.int64)
    # normalise: sort and merge overlapping or touching ranges, so no page is sent twice in a round
    runs = np.array(sorted(out), dtype=np.int64)
    starts, ends = runs[:, 0], runs[:, 0] + runs[:, 1]
    merged = [[int(starts[0]), int(ends[0])]]
    for s, e in zip(starts[1:], ends[1:], strict=True):
        if s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], int(e))
        else:
            merged.append([int(s), int(e)])
    m = np.array(merged, dtype=np.int64)
    return np.stack([m[:, 0], m[:, 1] - m[:, 0]], axis=1)


def to_runs(pages: Any, npages: int) -> np.ndarray:
    """Any page-set form -> runs, checked against a memory of `npages` pages.  A 1-D bool array is a
    bitmap; a 1-D integer array is page indices; an (n, 2) array or list of pairs is (offset, length)."""
    if isinstance(pages, np.ndarray) and pages.ndim == 1:
        if pages.dtype == bool:
            if len(pages) != npages:
                raise ValueError(f"page bitmap of {len(pages)} entries for a memory of {npages} pages")
            runs = runs_from_bitmap(pages)
        else:
            runs = runs_from_indices(pages)
    else:
        runs = runs_from_ranges((int(o), int(n)) for o, n in pages)
    if len(runs) and (runs[0, 0] < 0 or runs[-1, 0] + runs[-1, 1] > npages):
        raise ValueError(
            f"page set reaches page {int(runs[-1, 0] + runs[-1, 1]) - 1}, beyond the memory's {npages} pages"
        )
    return runs


def work_units(runs: np.ndarray, unit_pages: int) -> Iterator[np.ndarray]:
    """Cut runs into consecutive units of at most `unit_pages` candidate pages (a run may be split)."""
    cur: list[tuple[int, int]] = []
    room = unit_pages
    for first, count in runs.tolist():
        while count:
            n = min(count, room)
            cur.append((first, n))
            first, count, room = first + n, count - n, room - n
            if room == 0:
                yield np.array(cur, dtype=np.int64)
                cur, room = [], unit_pages
    if cur:
        yield np.array(cur, dtype=np.int64)


def classify(pages: np.ndarray, first: int, count: int) -> np.ndarray:
    """Runs of zero / non-zero pages in [first, first+count): (n, 3) of (first page, count, is-zero).
    A page whose first word is set holds data: only the others are read through (guest memory that holds
    data mostly says so in its first word, so a full scan reads 8 bytes of each such page, not 8 KiB)."""
    sub = pages[first : first + count]
    nz = sub[:, 0] != 0
    maybe = np.flatnonzero(~nz)
    if len(maybe):
        nz[maybe] = sub[maybe].any(axis=1)
    r = bool_runs(~nz)
    r[:, 0] += first
    return r


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """The (offset, length) ranges of a sparse file that may hold data (everything but its holes), widened to
    whole pages.  Where the filesystem does not report holes this is the whole file."""
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            a, b = start // PAGE_SIZE * PAGE_SIZE, -(-end // PAGE_SIZE) * PAGE_SIZE
            if out and a <= out[-1][0] + out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][0] + out[-1][1], b) - out[-1][0])
            else:
                out.append((a, b - a))
            pos = end
    except (OSError, AttributeError):
        return [(0, size)] if size else []
    return out


_libc: Any = None


def _madvise(addr: int, length: int, advice: int) -> bool:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), advice) == 0


def pretouch(buf: Any, runs: np.ndarray | None = None) -> None:
    """Fault in (and allocate) the target's pages before the transfer, so the first write of each page does
    not pay for the fault while the clock runs (DESIGN §5: fresh memory takes writes at a fifth of the speed).
    Contents are unchanged.  `runs` limits it to some pages: a mostly-empty guest should not be inflated."""
    pages = as_pages(buf)
    base = pages.ctypes.data
    todo = [(0, len(pages))] if runs is None else [(int(a), int(n)) for a, n in runs]
    for first, count in todo:
        if count <= 0:
            continue
        addr, length = base + first * PAGE_SIZE, count * PAGE_SIZE
        if addr % os.sysconf("SC_PAGE_SIZE") or not _madvise(addr, length, MADV_POPULATE_WRITE):
            # older kernel: write each page's first word back to itself (the target is not running)
            with contextlib.suppress(ValueError):
                view = pages[first : first + count, 0]
                view |= np.uint64(0)
