"""The fill-random workload (benchmarks): fills its working set once with random data, writing then marking
each page, then idles; its state carries how far it got across a migration."""

from __future__ import annotations

from pathlib import Path

import lz4.frame
import numpy as np
import pytest

from ldoms.hv.dirtymap import DirtyMap
from ldoms.hv.memory import GuestMemory
from ldoms.hv.workload import (
    FILL_PAGES_PER_STEP,
    FillRandomWorkload,
    WorkloadConfig,
    make_workload,
    parse_workload,
)
from ldoms.units import PAGE_SIZE, G, M


def mem_and_map(tmp_path: Path, npages: int) -> tuple[GuestMemory, DirtyMap]:
    mem = GuestMemory(tmp_path / "g.mem", [(0, npages * PAGE_SIZE)], create=True)
    return mem, DirtyMap(tmp_path / "g.dirty", npages, create=True)


def test_chosen_by_the_variables(tmp_path: Path) -> None:
    cfg = parse_workload({"ldoms-workload": "fill-random", "ldoms-working-set": "64M"})
    assert cfg == WorkloadConfig(name="fill-random", working_set=64 * M)
    mem, dm = mem_and_map(tmp_path, 16)
    w = make_workload(cfg, mem, dm)
    assert isinstance(w, FillRandomWorkload) and w.fill_pages == 16  # clamped to the memory
    assert w.period == 0.0  # no rate: as fast as it can
    paced = make_workload(WorkloadConfig(name="fill-random", rate=1 * G), mem, dm)
    assert isinstance(paced, FillRandomWorkload) and paced.period > 0


def test_fills_then_marks_then_idles(tmp_path: Path) -> None:
    npages = 2 * FILL_PAGES_PER_STEP + 5
    mem, dm = mem_and_map(tmp_path, npages + 10)
    w = FillRandomWorkload(mem, dm, working_set=npages * PAGE_SIZE, rate=None)
    assert w.step() == 0.0
    assert dm.snapshot_and_clear().tolist() == list(range(FILL_PAGES_PER_STEP))
    assert w.step() == 0.0
    assert w.step() is None  # the last (short) step: done, nothing more to run
    assert dm.snapshot_and_clear().tolist() == list(range(FILL_PAGES_PER_STEP, npages))
    assert w.step() is None and dm.snapshot_and_clear().tolist() == []  # idle now
    pages = mem.pages()
    assert pages[:npages].any(axis=1).all() and not pages[npages:].any()  # no zero page, nothing beyond
    data = pages[:npages].tobytes()
    assert len(lz4.frame.compress(data)) > 0.99 * len(data)  # random: compression gains nothing
    assert w.status() == {"fill_bytes": npages * PAGE_SIZE, "filled_bytes": npages * PAGE_SIZE, "done": True}
    assert w.dirtied_bytes == npages * PAGE_SIZE and w.steps == 3


def test_a_rate_paces_the_fill(tmp_path: Path) -> None:
    mem, dm = mem_and_map(tmp_path, 4 * FILL_PAGES_PER_STEP)
    w = FillRandomWorkload(mem, dm, working_set=G, rate=FILL_PAGES_PER_STEP * PAGE_SIZE * 100)
    assert w.step() == pytest.approx(0.01)


def test_state_round_trip_does_not_refill(tmp_path: Path) -> None:
    mem, dm = mem_and_map(tmp_path, 3 * FILL_PAGES_PER_STEP)
    w = FillRandomWorkload(mem, dm, working_set=G, rate=None)
    w.step()
    assert w.state() == {"cursor": FILL_PAGES_PER_STEP, "steps": 1}
    before = mem.pages()[:FILL_PAGES_PER_STEP].copy()
    w2 = FillRandomWorkload(mem, dm, working_set=G, rate=None)
    w2.restore(w.state())
    w2.step()
    assert np.array_equal(mem.pages()[:FILL_PAGES_PER_STEP], before)  # it went on where the source stopped
    assert w2.status()["filled_bytes"] == 2 * FILL_PAGES_PER_STEP * PAGE_SIZE and w2.steps == 2
    w2.restore({"cursor": 10**9, "steps": 5})
    assert w2.done and w2.step() is None  # a larger source working set: clamped, done
    with pytest.raises(ValueError, match="no valid cursor: -1"):
        w2.restore({"cursor": -1, "steps": 1})
    with pytest.raises(ValueError, match="no valid steps: True"):
        w2.restore({"cursor": 1, "steps": True})
    w2.close()
    with pytest.raises(AssertionError, match="closed"):
        w2.step()
