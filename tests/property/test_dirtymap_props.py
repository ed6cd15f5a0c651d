"""No lost update: with a writer (write a page, then mark it) running against a snapshotter (snapshot-and-
clear, then copy the pages read), every page whose last write came after its last copy is marked at the end.

Three drivers: Hypothesis schedules that interleave the writer's write and mark steps with every phase of a
round (between the read and the clear, and between the copies of single pages); a writer thread against
the snapshotter; and a writer *process* on its own core against the snapshotter, through the shared files.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import ldoms.hv.dirtymap as dirtymap_module
from ldoms.hv.dirtymap import DirtyMap
from ldoms.hv.memory import GuestMemory
from ldoms.units import PAGE_SIZE

NPAGES = 6
WORDS = PAGE_SIZE // 8


class Writer:
    """A guest in slow motion: `write(p)` stores a new version in page p; `mark(p)` marks the oldest
    unmarked write (marks follow their writes, in order)."""

    def __init__(self, dm: DirtyMap) -> None:
        self.dm = dm
        self.source = np.zeros(NPAGES, dtype=np.int64)
        self.version = 0
        self.unmarked: list[int] = []

    def write(self, page: int) -> None:
        self.version += 1
        self.source[page] = self.version
        self.unmarked.append(page)

    def mark(self) -> None:
        if self.unmarked:
            self.dm.mark(self.unmarked.pop(0))

    def run(self, ops: list[tuple[str, int]]) -> None:
        for op, page in ops:
            self.write(page) if op == "write" else self.mark()


@contextmanager
def between_read_and_clear(action: Callable[[], None]) -> Iterator[None]:
    """Run `action` inside snapshot_and_clear, after its read and before its clear."""
    real = np.flatnonzero

    def search(a: np.ndarray) -> np.ndarray:
        idx = real(a)
        action()
        return idx

    fake = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    fake.flatnonzero = search
    saved = dirtymap_module.np
    dirtymap_module.np = fake  # type: ignore[assignment]
    try:
        yield
    finally:
        dirtymap_module.np = saved


writer_ops = st.lists(
    st.tuples(st.sampled_from(("write", "mark")), st.integers(min_value=0, max_value=NPAGES - 1)),
    max_size=4,
)
rounds = st.lists(
    st.tuples(
        writer_ops,  # before the round
        writer_ops,  # between the read and the clear
        st.integers(min_value=0, max_value=NPAGES),  # after how many page copies ...
        writer_ops,  # ... these run
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(rounds, writer_ops)
def test_interleaved_schedules_lose_no_update(tmp_path_factory: Any, schedule: Any, tail: Any) -> None:
    path = tmp_path_factory.mktemp("dm") / "g.dirty"
    dm = DirtyMap(path, NPAGES, create=True)
    w = Writer(dm)
    target = np.zeros(NPAGES, dtype=np.int64)
    for before, during, split, during_copy in schedule:
        w.run(before)
        with between_read_and_clear(lambda ops=during: w.run(ops)):
            idx = dm.snapshot_and_clear()
        for i, page in enumerate(idx.tolist()):
            if i == split:
                w.run(during_copy)
            target[page] = w.source[page]
        if split >= len(idx):
            w.run(during_copy)
    w.run(tail)
    # The writer may have a write in flight (written, not yet marked): only completed writes count.
    in_flight = set(w.unmarked)
    marked = set(dm.marked().tolist())
    for page in range(NPAGES):
        if target[page] != w.source[page] and page not in in_flight:
            assert page in marked, f"page {page}: written after its last copy, but not marked"
    # The final round (writer suspended, its marks done) brings the copy up to date.
    while w.unmarked:
        w.mark()
    idx = dm.snapshot_and_clear()
    target[idx] = w.source[idx]
    assert np.array_equal(target, w.source)
    dm.close()


def _rounds(writes: Callable[[], int], dm: DirtyMap, copy: Callable[[np.ndarray], None]) -> int:
    """Run rounds against the running writer until it has made many writes and many rounds found pages to
    copy (so the two really overlapped); return how many rounds found pages."""
    busy = rounds = 0
    start = writes()
    deadline = time.monotonic() + 30
    while busy < 50 or writes() - start < 20000:
        assert time.monotonic() < deadline, f"the writer made {writes() - start} writes in {rounds} rounds"
        idx = dm.snapshot_and_clear()
        copy(idx)
        rounds += 1
        busy += bool(len(idx))
    return busy


def _check_no_lost_update(dm: DirtyMap, source: np.ndarray, target: np.ndarray) -> None:
    stale = np.flatnonzero(source != target)
    marked = dm.bits.astype(bool)
    assert marked[stale].all(), f"pages written after their last copy but not marked: {stale[~marked[stale]]}"
    idx = dm.snapshot_and_clear()
    target[idx] = source[idx]
    assert np.array_equal(source, target)


def test_writer_thread_against_snapshotter(tmp_path: Path) -> None:
    npages = 64
    dm = DirtyMap(tmp_path / "g.dirty", npages, create=True)
    source = np.zeros(npages, dtype=np.int64)
    target = np.zeros(npages, dtype=np.int64)
    pages = np.random.default_rng(1).integers(0, npages, size=4096).tolist()
    running = threading.Event()
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        version = 0
        running.set()
        while not stop.is_set():
            version += 1
            page = pages[version % len(pages)]
            source[page] = version  # write ...
            dm.mark(page)  # ... then mark
            written[0] = version

    def copy(idx: np.ndarray) -> None:
        for page in idx.tolist():  # one page at a time, so the writer can slip in between
            target[page] = source[page]

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: many interleavings
    t = threading.Thread(target=writer)
    try:
        t.start()
        assert running.wait(30)
        _rounds(lambda: written[0], dm, copy)
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    _check_no_lost_update(dm, source, target)
    dm.close()


def _writer_process(
    mem_path: str, dirty_path: str, npages: int, running: Any, stop: Any, written: Any
) -> None:
    mem = GuestMemory(mem_path, [(0, npages * PAGE_SIZE)], create=False)
    dm = DirtyMap(dirty_path, npages, create=False)
    words = np.frombuffer(mem.view(), dtype=np.uint64)
    pages = np.random.default_rng(2).integers(0, npages, size=4096).tolist()
    running.set()
    version = 0
    while not stop.is_set():
        for page in pages:
            version += 1
            words[page * WORDS] = version  # write ...
            dm.mark(page)  # ... then mark
        written.value = version


def test_writer_process_against_snapshotter(tmp_path: Path) -> None:
    """True parallelism: the writer runs on another core and shares only the two files."""
    npages = 256
    mem = GuestMemory(tmp_path / "g.mem", [(0, npages * PAGE_SIZE)], create=True)
    dm = DirtyMap(tmp_path / "g.dirty", npages, create=True)
    words = np.frombuffer(mem.view(), dtype=np.uint64)
    target = np.zeros(npages, dtype=np.uint64)
    ctx = multiprocessing.get_context("fork")
    running, stop, written = ctx.Event(), ctx.Event(), ctx.Value("q", 0, lock=False)
    proc = ctx.Process(
        target=_writer_process,
        args=(str(mem.path), str(dm.path), npages, running, stop, written),
        daemon=True,
    )
    proc.start()

    def copy(idx: np.ndarray) -> None:
        target[idx] = words[idx * WORDS]

    try:
        assert running.wait(30)
        _rounds(lambda: int(written.value), dm, copy)
        stop.set()
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    _check_no_lost_update(dm, words[np.arange(npages) * WORDS], target)
    dm.close()
    mem.close()
