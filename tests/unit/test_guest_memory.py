"""GuestMemory / MemoryMap: RA -> file offset translation and the sparse file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ldoms.hv.memory import GuestMemory, MemoryMap, allocated_bytes
from ldoms.units import PAGE_SIZE, G, M


def test_blocks_are_laid_out_in_ra_order() -> None:
    m = MemoryMap([(0x20000000, 256 * M), (0x8000000, 128 * M)])
    assert [s.ra for s in m.segments] == [0x8000000, 0x20000000]
    assert m.offset_of(0x8000000) == 0
    assert m.offset_of(0x20000000) == 128 * M
    assert m.offset_of(0x20000000 + PAGE_SIZE) == 128 * M + PAGE_SIZE
    assert m.size == 384 * M
    assert m.npages == 384 * M // PAGE_SIZE
    assert m.page_of(0x20000000) == 128 * M // PAGE_SIZE
    assert m.ra_of(128 * M) == 0x20000000


def test_unmapped_ra_is_refused_naming_it() -> None:
    m = MemoryMap([(0x8000000, 128 * M)])
    with pytest.raises(ValueError, match="0x4000000 is not in any memory block"):
        m.offset_of(0x4000000)
    with pytest.raises(ValueError, match="0x10000000 is not in any memory block"):
        m.offset_of(0x8000000 + 128 * M)
    with pytest.raises(ValueError, match="beyond the guest's memory"):
        m.ra_of(128 * M)


@pytest.mark.parametrize(
    ("blocks", "match"),
    [
        ([(0x1000, 128 * M)], "multiples of the 8K page"),
        ([(0x8000000, 100)], "multiples of the 8K page"),
        ([(0x8000000, 0)], "multiples of the 8K page"),
        ([(0x8000000, 256 * M), (0x10000000, 128 * M)], "overlaps the block at RA 0x8000000"),
    ],
)
def test_bad_blocks_are_refused(blocks: list[tuple[int, int]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MemoryMap(blocks)


@given(
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=8), min_size=6, max_size=6),
)
def test_offsets_are_a_bijection(sizes: list[int], gaps: list[int]) -> None:
    blocks = []
    ra = 0
    for size, gap in zip(sizes, gaps, strict=False):
        ra += gap * PAGE_SIZE
        blocks.append((ra, size * PAGE_SIZE))
        ra += size * PAGE_SIZE
    m = MemoryMap(blocks)
    offsets = []
    for bra, bsize in blocks:
        for page in range(bsize // PAGE_SIZE):
            a = bra + page * PAGE_SIZE
            off = m.offset_of(a)
            assert m.ra_of(off) == a
            offsets.append(off)
    assert offsets == list(range(0, m.size, PAGE_SIZE))


def test_file_is_sparse_and_sized(tmp_path: Path) -> None:
    path = tmp_path / "g.mem"
    with GuestMemory(path, [(0x8000000, 1 * G)], create=True) as mem:
        assert path.stat().st_size == 1 * G
        assert allocated_bytes(path) < 1 * M
        mem.write(0x8000000 + 5 * PAGE_SIZE, b"hello")
        assert mem.read(0x8000000 + 5 * PAGE_SIZE, 5) == b"hello"
        mem.flush()
    assert allocated_bytes(path) < 1 * M


def test_access_across_adjacent_blocks(tmp_path: Path) -> None:
    path = tmp_path / "g.mem"
    blocks = [(0x0, PAGE_SIZE), (PAGE_SIZE, PAGE_SIZE)]
    with GuestMemory(path, blocks, create=True) as mem:
        mem.write(PAGE_SIZE - 2, b"abcd")
        assert mem.read(PAGE_SIZE - 2, 4) == b"abcd"
        assert bytes(mem.view()[PAGE_SIZE - 2 : PAGE_SIZE + 2]) == b"abcd"


def test_second_process_sees_the_same_pages(tmp_path: Path) -> None:
    path = tmp_path / "g.mem"
    blocks = [(0x10000000, 16 * PAGE_SIZE)]
    with GuestMemory(path, blocks, create=True) as a, GuestMemory(path, blocks, create=False) as b:
        a.write(0x10000000 + PAGE_SIZE, b"x" * 10)
        assert b.read(0x10000000 + PAGE_SIZE, 10) == b"x" * 10


def test_create_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "g.mem"
    path.write_bytes(b"")
    with pytest.raises(FileExistsError):
        GuestMemory(path, [(0, PAGE_SIZE)], create=True)


def test_open_refuses_a_file_of_the_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "g.mem"
    path.write_bytes(b"\0" * PAGE_SIZE)
    with pytest.raises(ValueError, match="file holds 8192 bytes, the blocks need 16384"):
        GuestMemory(path, [(0, 2 * PAGE_SIZE)], create=False)


def test_no_blocks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no memory blocks"):
        GuestMemory(tmp_path / "g.mem", [], create=True)
