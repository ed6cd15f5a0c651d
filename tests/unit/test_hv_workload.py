"""Workload variables and the dirty workload (in-process: no guest process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ldoms.errors import UsageError
from ldoms.hv.dirtymap import DirtyMap
from ldoms.hv.ledger import LedgerWorkload
from ldoms.hv.memory import GuestMemory
from ldoms.hv.workload import (
    DEFAULT_WORKING_SET,
    MAX_PAGES_PER_STEP,
    DirtyWorkload,
    IdleWorkload,
    WorkloadConfig,
    make_workload,
    parse_workload,
)
from ldoms.units import PAGE_SIZE, G, M


def test_defaults_and_values() -> None:
    assert parse_workload({}) == WorkloadConfig(
        name="idle", rate=None, working_set=DEFAULT_WORKING_SET, seed=1
    )
    cfg = parse_workload(
        {"ldoms-workload": "dirty", "ldoms-dirty-rate": "1G", "ldoms-working-set": "64M", "other": "x"}
    )
    assert cfg == WorkloadConfig(name="dirty", rate=1 * G, working_set=64 * M, seed=1)
    assert parse_workload({"ldoms-workload": "ledger", "ldoms-seed": "42"}).seed == 42
    assert parse_workload({"ldoms-dirty-rate": "0"}).rate == 0


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"ldoms-workload": "bogus"},
            "Invalid value 'bogus' for variable ldoms-workload: unknown workload 'bogus', expected one of "
            "dirty, fill-random, idle, ledger",
        ),
        (
            {"ldoms-dirty-rate": "fast"},
            "Invalid value 'fast' for variable ldoms-dirty-rate: expected a size in bytes per second such "
            "as 256M",
        ),
        ({"ldoms-working-set": "1X"}, "Invalid value '1X' for variable ldoms-working-set: expected a size"),
        ({"ldoms-working-set": "100"}, "Invalid value '100' for variable ldoms-working-set: .* one 8K page"),
        ({"ldoms-seed": "-3"}, "Invalid value '-3' for variable ldoms-seed: expected an integer 0..18446"),
        ({"ldoms-seed": str(2**64)}, "Invalid value '18446744073709551616' for variable ldoms-seed"),
    ],
)
def test_bad_values_name_the_variable_and_value(variables: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_workload(variables)


def mem_and_map(tmp_path: Path, npages: int) -> tuple[GuestMemory, DirtyMap]:
    mem = GuestMemory(tmp_path / "g.mem", [(0, npages * PAGE_SIZE)], create=True)
    return mem, DirtyMap(tmp_path / "g.dirty", npages, create=True)


def test_make_workload_builds_each_kind(tmp_path: Path) -> None:
    mem, dm = mem_and_map(tmp_path, 16)
    assert isinstance(make_workload(WorkloadConfig(), mem, dm), IdleWorkload)
    dirty = make_workload(WorkloadConfig(name="dirty"), mem, dm)
    assert isinstance(dirty, DirtyWorkload) and dirty.rate == 256 * M
    ledger = make_workload(WorkloadConfig(name="ledger", seed=9), mem, dm)
    assert isinstance(ledger, LedgerWorkload) and ledger.seed == 9


def test_idle_touches_nothing(tmp_path: Path) -> None:
    idle = IdleWorkload()
    assert idle.step() is None
    assert idle.state() == {} and idle.status() == {} and idle.steps == 0
    idle.restore({})
    idle.close()


def test_dirty_writes_then_marks_its_working_set_in_turn(tmp_path: Path) -> None:
    mem, dm = mem_and_map(tmp_path, 64)
    w = DirtyWorkload(mem, dm, rate=8 * PAGE_SIZE * 200, working_set=20 * PAGE_SIZE)  # 8 pages per 5 ms
    assert w.per_step == 8
    assert w.step() == pytest.approx(0.005)
    assert dm.snapshot_and_clear().tolist() == list(range(8))
    w.step()
    w.step()  # wraps around the 20-page working set
    assert dm.snapshot_and_clear().tolist() == [0, 1, 2, 3, *range(8, 20)]
    pages = mem.pages()
    assert pages[:20].any(axis=1).all() and not pages[20:].any()
    # Each write stamps a running counter: a rewritten page changes.
    assert pages[0, :8].view("<u8")[0] == 21  # step 3 wrote pages 16..19 (17..20), then 0 (21)
    assert w.status() == {"rate": 1600 * PAGE_SIZE, "working_set": 20 * PAGE_SIZE, "pages_per_step": 8,
                          "pages_written": 24}  # fmt: skip
    assert w.dirtied_bytes == 24 * PAGE_SIZE


def test_dirty_step_is_bounded_and_working_set_clamped(tmp_path: Path) -> None:
    mem, dm = mem_and_map(tmp_path, 4096)
    fast = DirtyWorkload(mem, dm, rate=100 * G, working_set=1 * G)
    assert fast.per_step == MAX_PAGES_PER_STEP
    assert fast.ws_pages == 4096  # clamped to the memory
    assert fast.period == pytest.approx(MAX_PAGES_PER_STEP * PAGE_SIZE / (100 * G))
    assert DirtyWorkload(mem, dm, rate=1, working_set=M).per_step == 1
    assert DirtyWorkload(mem, dm, rate=0, working_set=M).step() is None


def test_dirty_state_round_trip(tmp_path: Path) -> None:
    mem, dm = mem_and_map(tmp_path, 64)
    w = DirtyWorkload(mem, dm, rate=8 * PAGE_SIZE * 200, working_set=20 * PAGE_SIZE)
    for _ in range(3):
        w.step()
    state = w.state()
    assert state == {"cursor": 4, "counter": 24, "steps": 3}
    w2 = DirtyWorkload(mem, dm, rate=8 * PAGE_SIZE * 200, working_set=20 * PAGE_SIZE)
    w2.restore(state)
    w2.step()
    assert (w2.cursor, w2.counter, w2.steps) == (12, 32, 4)
    assert mem.pages()[4, :8].view("<u8")[0] == 25
    with pytest.raises(ValueError, match="no valid cursor: None"):
        w2.restore({"counter": 1, "steps": 1})
    with pytest.raises(ValueError, match="no valid steps: True"):
        w2.restore({"cursor": 1, "counter": 1, "steps": True})
    w2.close()
    assert np.count_nonzero(dm.bits) > 0
