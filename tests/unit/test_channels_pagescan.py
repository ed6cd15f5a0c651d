"""Page sets, zero-page scans, memory preparation and the compression governor of the data plane."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ldoms.migration.compress import Compression, CompressionGovernor, Plan, compress, decompress
from ldoms.migration.pagescan import (
    as_pages,
    bool_runs,
    classify,
    data_ranges,
    pretouch,
    runs_from_indices,
    to_runs,
    work_units,
)
from ldoms.units import PAGE_SIZE

P = PAGE_SIZE


def expand(runs: np.ndarray) -> list[int]:
    return [p for f, n in runs.tolist() for p in range(f, f + n)]


@given(st.sets(st.integers(0, 500), max_size=120))
def test_indices_to_runs_and_back(pages: set[int]) -> None:
    runs = runs_from_indices(np.array(sorted(pages), dtype=np.int64))
    assert expand(runs) == sorted(pages)
    assert all(runs[1:, 0] > runs[:-1, 0] + runs[:-1, 1]) if len(runs) > 1 else True  # maximal, disjoint


@given(st.lists(st.booleans(), max_size=200))
def test_bitmap_to_runs(bits: list[bool]) -> None:
    runs = to_runs(np.array(bits, dtype=bool), len(bits))
    assert expand(runs) == [i for i, b in enumerate(bits) if b]


def test_ranges_are_merged_and_checked() -> None:
    runs = to_runs([(4 * P, 2 * P), (0, P), (5 * P, 3 * P), (8 * P, P), (20 * P, 0)], 100)
    assert runs.tolist() == [[0, 1], [4, 5]]
    assert to_runs([], 10).shape == (0, 2)
    with pytest.raises(ValueError, match=r"range \(0x1000, 0x2000\): offset and length must be whole"):
        to_runs([(0x1000, 0x2000)], 100)
    with pytest.raises(ValueError, match="beyond the memory's 10 pages"):
        to_runs([(8 * P, 4 * P)], 10)
    with pytest.raises(ValueError, match="page bitmap of 3 entries for a memory of 4 pages"):
        to_runs(np.ones(3, dtype=bool), 4)
    with pytest.raises(ValueError, match="reaches page 10"):
        to_runs(np.array([10]), 10)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 40)), max_size=10), st.integers(1, 17))
def test_work_units_cover_the_runs_in_order_within_the_cap(pairs: list[tuple[int, int]], unit: int) -> None:
    runs = to_runs([(a * P, n * P) for a, n in pairs], 200)
    units = list(work_units(runs, unit))
    assert all(int(u[:, 1].sum()) <= unit for u in units)
    assert all(int(u[:, 1].sum()) == unit for u in units[:-1])
    assert [p for u in units for p in expand(u)] == expand(runs)


def test_bool_runs_and_classify() -> None:
    assert bool_runs(np.array([], dtype=bool)).shape == (0, 3)
    assert bool_runs(np.array([1, 1, 0, 1], dtype=bool)).tolist() == [[0, 2, 1], [2, 1, 0], [3, 1, 1]]
    mem = np.zeros(10 * P, dtype=np.uint8)
    mem[3 * P + 100] = 1
    mem[4 * P] = 7
    mem[9 * P - 1] = 1  # last byte of page 8
    assert classify(as_pages(mem), 2, 8).tolist() == [[2, 1, 1], [3, 2, 0], [5, 3, 1], [8, 1, 0], [9, 1, 1]]


def test_as_pages_refuses_a_partial_page() -> None:
    with pytest.raises(ValueError, match="not a whole number of 8192-byte pages"):
        as_pages(bytearray(P + 1))
    assert as_pages(memoryview(bytearray(2 * P))).shape == (2, 1024)


def test_data_ranges_skip_holes(tmp_path: Path) -> None:
    path = tmp_path / "mem"
    size = 4096 * P
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(100 * P + 5)
        f.write(b"x")
        f.seek(3000 * P)
        f.write(b"y" * (2 * P))
    fd = os.open(path, os.O_RDONLY)
    try:
        ranges = data_ranges(fd, size)
    finally:
        os.close(fd)
    covered = {p for off, n in ranges for p in range(off // P, (off + n) // P)}
    assert {100, 3000, 3001} <= covered
    assert len(covered) < 4096  # a filesystem with holes reports them (tmpfs, ext4, xfs all do)
    assert all(off % P == 0 and n % P == 0 for off, n in ranges)


def test_data_ranges_of_an_empty_file_and_a_bad_fd() -> None:
    r, w = os.pipe()
    try:
        assert data_ranges(r, 3 * P) == [(0, 3 * P)]  # cannot seek: everything may hold data
        assert data_ranges(r, 0) == []
    finally:
        os.close(r)
        os.close(w)


def test_pretouch_keeps_contents(tmp_path: Path) -> None:
    path = tmp_path / "mem"
    with open(path, "wb") as f:
        f.truncate(64 * P)
        f.seek(5 * P)
        f.write(b"keep me")
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, 64 * P)
    os.close(fd)
    pretouch(mm)
    pretouch(mm, np.array([[1, 3], [60, 0]]))
    assert mm[5 * P : 5 * P + 7] == b"keep me"
    arr = np.zeros(8 * P, dtype=np.uint8)
    arr[P] = 9
    pretouch(arr[1 : P * 7 + 1])  # unaligned: the fallback path touches each page by hand
    assert arr[P] == 9
    mm.close()


# ----------------------------------------------------------------------------------------- compression
def test_lz4_round_trip() -> None:
    data = b"page " * 10000
    assert decompress(compress(memoryview(data)), len(data)) == data


def test_off_never_compresses_and_lz4_always_does() -> None:
    off, on = CompressionGovernor("off"), CompressionGovernor(Compression.LZ4)
    for _ in range(40):
        assert off.plan() is Plan.RAW
        assert on.plan() is Plan.COMPRESS
        on.observe_compress(1000, 999, 1.0)  # never pays, but "lz4" was asked for
    with pytest.raises(ValueError):
        CompressionGovernor("zip")


def test_auto_probes_then_turns_on_when_it_pays_and_off_when_it_stops() -> None:
    g = CompressionGovernor("auto", probe_every=4)
    assert g.plan() is Plan.PROBE
    g.observe_send(1_000_000, 1.0)  # a slow link: 1 MB/s
    g.observe_compress(16384, 1000, 0.0001)  # very compressible, fast to compress
    assert g.active and g.plan() is Plan.COMPRESS
    for _ in range(20):  # the memory turns random
        g.observe_compress(4 << 20, 4 << 20, 0.01)
    assert not g.active
    plans = [g.plan() for _ in range(8)]
    assert plans.count(Plan.PROBE) == 2 and plans.count(Plan.RAW) == 6


def test_auto_stays_off_when_the_link_is_faster_than_compression() -> None:
    g = CompressionGovernor("auto")
    g.observe_send(4 << 30, 1.0)  # 4 GB/s
    g.observe_compress(16384, 8192, 16384 / 1e9)  # halves the data at 1 GB/s: slower than sending
    assert not g.active
    g.observe_send(0, 1.0)
    g.observe_compress(0, 0, 1.0)  # empty samples change nothing
    assert g.ratio == 0.5


def test_auto_without_a_send_measurement_goes_by_ratio() -> None:
    g = CompressionGovernor("auto")
    assert not g.pays()
    g.observe_compress(16384, 4000, 0.001)
    assert g.active
    g2 = CompressionGovernor("auto")
    g2.observe_compress(16384, 16000, 0.001)
    assert not g2.active


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["zero", "first-word", "last-word", "random"]), min_size=1, max_size=40),
       st.data())  # fmt: skip
def test_classify_matches_a_full_scan(kinds: list[str], data: st.DataObject) -> None:
    """Pages whose first word is zero are read through: a page with data only at its end is not zero."""
    pages = np.zeros((len(kinds), PAGE_SIZE // 8), dtype=np.uint64)
    for i, kind in enumerate(kinds):
        if kind == "first-word":
            pages[i, 0] = 1
        elif kind == "last-word":
            pages[i, -1] = 1 << 63
        elif kind == "random":
            pages[i, data.draw(st.integers(1, PAGE_SIZE // 8 - 1))] = 7
    first = data.draw(st.integers(0, len(kinds) - 1))
    count = data.draw(st.integers(0, len(kinds) - first))
    expect = bool_runs(~pages[first : first + count].any(axis=1))
    expect[:, 0] += first
    assert classify(pages, first, count).tolist() == expect.tolist()
