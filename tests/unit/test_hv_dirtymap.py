"""DirtyMap: the shared file, marks, snapshot-and-clear ordering, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ldoms.hv.dirtymap import DirtyMap


def test_marks_are_seen_by_another_mapping_and_snapshot_clears_them(tmp_path: Path) -> None:
    path = tmp_path / "g.dirty"
    with DirtyMap(path, 100, create=True) as guest, DirtyMap(path, 100, create=False) as engine:
        assert path.stat().st_size == 100
        assert engine.count() == 0
        guest.mark(7)
        guest.mark([3, 99])
        guest.mark(np.array([50, 51]))
        guest.mark_range(10, 13)
        assert engine.count() == 8
        assert engine.marked().tolist() == [3, 7, 10, 11, 12, 50, 51, 99]
        snap = engine.snapshot_and_clear()
        assert snap.tolist() == [3, 7, 10, 11, 12, 50, 51, 99]
        assert snap.dtype == np.int64
        assert guest.count() == 0
        assert engine.snapshot_and_clear().tolist() == []


def test_mark_all_marks_every_page(tmp_path: Path) -> None:
    with DirtyMap(tmp_path / "g.dirty", 17, create=True) as dm:
        dm.mark_all()
        assert dm.count() == 17
        assert dm.snapshot_and_clear().tolist() == list(range(17))
        assert dm.count() == 0


def test_a_mark_set_between_read_and_clear_survives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the clear must not lose: a page marked after the snapshot's read stays marked."""
    import ldoms.hv.dirtymap as mod

    dm = DirtyMap(tmp_path / "g.dirty", 8, create=True)
    dm.mark([1, 2])
    real = np.flatnonzero

    def search_then_race(a: np.ndarray) -> np.ndarray:
        idx = real(a)  # runs after the read (the copy), before the clear
        dm.mark(5)  # the guest writes page 5 and marks it now
        dm.mark(1)  # and writes page 1 again: read as marked, its copy comes after this write
        return idx

    monkeypatch.setattr(mod.np, "flatnonzero", search_then_race)
    assert dm.snapshot_and_clear().tolist() == [1, 2]
    monkeypatch.undo()
    assert dm.marked().tolist() == [5]  # page 5 goes in the next round; page 1 is in this one's copy
    dm.close()


def test_close_is_idempotent_and_tolerates_outside_views(tmp_path: Path) -> None:
    dm = DirtyMap(tmp_path / "g.dirty", 4, create=True)
    view = dm.bits[1:3]  # someone still holds a view into the map
    dm.close()
    dm.close()
    assert view.tolist() == [0, 0]  # still mapped until the view goes


def test_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.dirty"
    DirtyMap(path, 10, create=True).close()
    with pytest.raises(ValueError, match=r"g\.dirty: file holds 10 bytes, the guest has 12 pages"):
        DirtyMap(path, 12, create=False)


def test_create_refuses_an_existing_map(tmp_path: Path) -> None:
    path = tmp_path / "g.dirty"
    DirtyMap(path, 10, create=True).close()
    with pytest.raises(FileExistsError):
        DirtyMap(path, 10, create=True)


def test_no_pages_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one page, not 0"):
        DirtyMap(tmp_path / "g.dirty", 0, create=True)


def test_missing_map_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DirtyMap(tmp_path / "none.dirty", 4, create=False)
