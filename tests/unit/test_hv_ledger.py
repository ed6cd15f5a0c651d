"""The ledger: determinism, the direct replay formula, verify naming what is wrong, restore checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ldoms.hv.dirtymap import DirtyMap
from ldoms.hv.ledger import (
    PAGES_PER_STEP,
    Ledger,
    LedgerLayout,
    LedgerWorkload,
    expected_image,
    read_header,
    verify,
)
from ldoms.hv.memory import GuestMemory
from ldoms.units import PAGE_SIZE, M

RA = 0x8000000


def guest(tmp_path: Path, npages: int = 64, *, seed: int = 7) -> tuple[GuestMemory, DirtyMap, LedgerWorkload]:
    mem = GuestMemory(tmp_path / "g.mem", [(RA, npages * PAGE_SIZE)], create=True)
    dm = DirtyMap(tmp_path / "g.dirty", npages, create=True)
    return mem, dm, LedgerWorkload(mem, dm, seed=seed, rate=40 * M)


@given(st.integers(min_value=2, max_value=70), st.integers(min_value=0, max_value=60))
def test_last_writer_is_the_replay_of_every_step(npages: int, steps: int) -> None:
    layout = LedgerLayout.of(npages)
    replay = np.zeros(npages, dtype=np.int64)
    replay[0] = steps
    for s in range(1, steps + 1):
        replay[layout.pages_of_step(s)] = s
    assert np.array_equal(layout.last_writer(steps), replay)


def test_writes_scatter_over_every_data_page() -> None:
    layout = LedgerLayout.of(1000)
    touched = np.concatenate([layout.pages_of_step(s) for s in range(1, 999 // PAGES_PER_STEP + 2)])
    assert set(touched.tolist()) == set(range(1, 1000))
    assert not np.array_equal(layout.pages_of_step(1), np.arange(1, PAGES_PER_STEP + 1))  # not in order


def test_layout_needs_two_pages() -> None:
    with pytest.raises(ValueError, match=r"at least 2 pages .* not 1"):
        LedgerLayout.of(1)


def test_page_contents_are_deterministic_and_depend_on_everything() -> None:
    a, b = Ledger(7), Ledger(7)
    p = a.data_pages(np.array([5]), np.array([3]))[0]
    assert np.array_equal(p, b.data_pages(np.array([5]), np.array([3]))[0])
    assert p[:16].view("<u8").tolist() == [5, 3]  # the stamp in clear
    for other in (
        a.data_pages(np.array([6]), np.array([3]))[0],
        a.data_pages(np.array([5]), np.array([4]))[0],
        Ledger(8).data_pages(np.array([5]), np.array([3]))[0],
    ):
        # Every 64-byte run differs: half a page of new data beside half of old is detected.
        assert (p.reshape(-1, 64) != other.reshape(-1, 64)).any(axis=1).all()


def test_seed_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="seed -1 is out of range"):
        Ledger(-1)


def test_running_ledger_equals_expected_image_and_verifies(tmp_path: Path) -> None:
    mem, dm, w = guest(tmp_path)
    assert verify(mem, 7, 0) == []  # before any step: all zero
    for _ in range(40):
        w.step()
    assert w.steps == 40
    assert np.array_equal(mem.pages(), expected_image(7, 40, 64))
    assert verify(mem, 7, 40) == []
    head = read_header(mem.pages()[0])
    assert head is not None and (head.seed, head.steps, head.npages) == (7, 40, 64)
    # Every page a step wrote was marked, the header too.
    assert set(dm.marked().tolist()) == {0} | set(
        np.flatnonzero(expected_image(7, 40, 64)[1:].any(axis=1)) + 1
    )


def test_flipped_byte_is_named_with_its_page(tmp_path: Path) -> None:
    mem, _, w = guest(tmp_path)
    for _ in range(30):
        w.step()
    page = int(w.layout.pages_of_step(30)[1])
    mem.pages()[page, 1234] ^= 0x40
    problems = verify(mem, 7, 30)
    ra = RA + page * PAGE_SIZE
    assert problems == [
        f"page {page} (RA {ra:#x}): byte 1234 differs from step 30's data (torn or corrupted)"
    ]


def test_lost_update_names_the_step_found(tmp_path: Path) -> None:
    mem, _, w = guest(tmp_path, npages=9)  # 8 data pages: steps 1 and 3 write the same pages
    w.step()
    old = mem.pages()[w.layout.pages_of_step(3)].copy()
    w.step()
    w.step()
    pages = w.layout.pages_of_step(3)
    mem.pages()[pages[0]] = old[0]  # step 3's write to this page never arrived
    problems = verify(mem, 7, 3)
    assert len(problems) == 1
    assert f"page {pages[0]} " in problems[0]
    assert "holds the data of step 1, expected step 3 (an update was lost)" in problems[0]


def test_zero_and_unexpected_pages_are_named(tmp_path: Path) -> None:
    mem, _, w = guest(tmp_path)
    for _ in range(3):
        w.step()
    written = int(w.layout.pages_of_step(2)[0])
    unwritten = int(np.flatnonzero(w.layout.last_writer(3) == 0)[0])
    mem.pages()[written] = 0
    mem.pages()[unwritten, 9] = 1
    problems = verify(mem, 7, 3)
    assert f"page {written} (RA {RA + written * PAGE_SIZE:#x}): zero, expected the data of step 2" in problems
    assert any(p.startswith(f"page {unwritten} ") and "expected zero" in p for p in problems)


def test_garbage_page_is_named(tmp_path: Path) -> None:
    mem, _, w = guest(tmp_path)
    w.step()
    page = int(w.layout.pages_of_step(1)[0])
    mem.pages()[page] = 0xAA
    where = f"page {page} (RA {RA + page * PAGE_SIZE:#x})"
    assert verify(mem, 7, 1) == [f"{where}: holds no ledger data of step 1 (first difference at byte 0)"]


@pytest.mark.parametrize(
    ("edit", "seed", "steps", "message"),
    [
        (None, 7, 4, "header page 0 (RA 0x8000000): records step 5, expected step 4"),
        (None, 8, 5, "header page 0 (RA 0x8000000): records seed 7, expected seed 8"),
        ("zero", 7, 5, "header page 0 (RA 0x8000000): zero, expected the header of step 5"),
        (
            "garbage",
            7,
            5,
            "header page 0 (RA 0x8000000): not a ledger header (expected the header of step 5)",
        ),
        ("mac", 7, 5, "header page 0 (RA 0x8000000): corrupted (first difference at byte 60)"),
        (None, 7, 0, "header page 0 (RA 0x8000000): expected zero (no step has run), holds data"),
    ],
)
def test_header_problems(tmp_path: Path, edit: str | None, seed: int, steps: int, message: str) -> None:
    mem, _, w = guest(tmp_path)
    for _ in range(5):
        w.step()
    header = mem.pages()[0]
    if edit == "zero":
        header[:] = 0
    elif edit == "garbage":
        header[:4] = 1
    elif edit == "mac":
        header[60] ^= 1
    assert verify(mem, seed, steps)[0] == message


def test_many_problems_are_summarised(tmp_path: Path) -> None:
    mem, _, w = guest(tmp_path, npages=200)
    for _ in range(40):
        w.step()
    mem.pages()[1:] ^= 1
    problems = verify(mem, 7, 40)
    assert len(problems) == 21
    assert problems[-1] == "... and 179 more pages differ"  # 199 data pages, 20 named


def test_state_and_restore_continue_the_ledger(tmp_path: Path) -> None:
    mem, dm, w = guest(tmp_path)
    for _ in range(10):
        w.step()
    state = w.state()
    assert state == {"seed": 7, "steps": 10}
    w2 = LedgerWorkload(mem, dm, seed=7, rate=40 * M)
    w2.restore(state)
    for _ in range(5):
        w2.step()
    assert verify(mem, 7, 15) == []
    assert w2.status()["steps"] == 15


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"seed": 7, "steps": 9}, "holds ledger step 10, the suspended state says step 9"),
        ({"seed": 7, "steps": -1}, "no valid step count: -1"),
        ({"seed": 7}, "no valid step count: None"),
        ({"seed": 8, "steps": 10}, "state has seed 8, this guest's ldoms-seed is 7"),
    ],
)
def test_restore_refuses_a_mismatched_state(tmp_path: Path, state: dict[str, int], message: str) -> None:
    mem, dm, w = guest(tmp_path)
    for _ in range(10):
        w.step()
    with pytest.raises(ValueError, match=message):
        LedgerWorkload(mem, dm, seed=7, rate=M).restore(state)


def test_restore_refuses_another_seeds_image_or_garbage(tmp_path: Path) -> None:
    mem, dm, w = guest(tmp_path, seed=3)
    w.step()
    with pytest.raises(ValueError, match="holds the ledger of seed 3, not of seed 7"):
        LedgerWorkload(mem, dm, seed=7, rate=M).restore({"seed": 7, "steps": 1})
    mem.pages()[0, :16] = 5
    with pytest.raises(ValueError, match="holds no ledger header, the suspended state says step 1"):
        LedgerWorkload(mem, dm, seed=3, rate=M).restore({"seed": 3, "steps": 1})


def test_rate_paces_the_steps(tmp_path: Path) -> None:
    mem = GuestMemory(tmp_path / "g.mem", [(RA, 8 * PAGE_SIZE)], create=True)
    dm = DirtyMap(tmp_path / "g.dirty", 8, create=True)
    w = LedgerWorkload(mem, dm, seed=1, rate=(PAGES_PER_STEP + 1) * PAGE_SIZE * 100)
    assert w.step() == pytest.approx(0.01)
    assert w.status()["step_rate"] == pytest.approx(100)
    assert LedgerWorkload(mem, dm, seed=1, rate=0).step() is None
    w.close()
