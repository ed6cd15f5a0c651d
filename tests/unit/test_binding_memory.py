"""Memory binding: congruent placement, splitting, named blocks, resizing and fit_blocks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from ldoms.binding import (
    GUEST_RA_BASE,
    MemoryFitError,
    bind_domain,
    factory_default,
    fit_blocks,
    free_memory,
    rebind_domain,
)
from ldoms.errors import ResourceError
from ldoms.model.domain import Bindings, Domain, DomainConfig, DomainState, MemBinding, NamedMblock
from ldoms.model.machine import Machine
from ldoms.model.platform import MemRange, Platform
from ldoms.units import G, M

HOST = "tiny1"
H = 256 * M


def tiny() -> Platform:
    """4 cores x 4 strands, 4G of which the first 64M are reserved, H = 256M."""
    return Platform(
        name="tiny",
        model="Tiny",
        cpu_type="UltraSPARC T2 Plus",
        cpu_mhz=1415,
        sockets=1,
        cores_per_socket=4,
        strands_per_core=4,
        memory=(MemRange(pa=0, size=64 * M, reserved=True), MemRange(pa=64 * M, size=4 * G - 64 * M)),
        hw_max_pagesize=H,
    )


def machine() -> Machine:
    """primary shrunk to 2 strands and 512M: it holds PA [0x4000000, 0x24000000)."""
    m = factory_default(tiny(), HOST, seed=1)
    p = m.control
    cfg = replace(p.config, vcpus=2, memory=512 * M, mau=0, io=())
    return m.with_domain(replace(p, config=cfg, bindings=rebind_domain(m, p, cfg)))


def guest(name: str = "ldg1", **kw: object) -> DomainConfig:
    kw.setdefault("vcpus", 1)
    return DomainConfig(name=name, uuid=f"uuid-{name}", hostid=1, mac=2, **kw)  # type: ignore[arg-type]


def occupy(m: Machine, name: str, ranges: Sequence[tuple[int, int]]) -> Machine:
    """A bound domain `name` holding the PA ranges `(pa, size)` (and no strands)."""
    blocks = tuple(MemBinding(ra=pa, pa=pa, size=size) for pa, size in ranges)
    dom = Domain(config=guest(name), state=DomainState.BOUND, bindings=Bindings(mblocks=blocks))
    return m.with_domain(dom)


def triples(blocks: Sequence[MemBinding]) -> list[tuple[int, int, int]]:
    return [(b.ra, b.pa, b.size) for b in blocks]


def err(fn: object, *args: object) -> str:
    with pytest.raises(ResourceError) as e:
        fn(*args)  # type: ignore[operator]
    return str(e.value)


# ---------------------------------------------------------------- guests by size
def test_guest_one_block_at_lowest_congruent_pa() -> None:
    b = bind_domain(machine(), guest(memory=1 * G))
    # Free memory starts at 0x24000000; the first PA ≡ 0x8000000 (mod 256M) is 0x28000000.
    assert triples(b.mblocks) == [(GUEST_RA_BASE, 0x28000000, 1 * G)]


def test_guest_split_over_ranges() -> None:
    m = occupy(machine(), "x", [(0x48000000, 128 * M), (0x70000000, 0x90000000)])
    # Free: [0x24000000, 0x48000000) 576M and [0x50000000, 0x70000000) 512M; no range holds 768M.
    b = bind_domain(m, guest(memory=768 * M))
    assert triples(b.mblocks) == [(0x8000000, 0x28000000, 512 * M), (0x28000000, 0x58000000, 256 * M)]
    assert all(x.pa % H == x.ra % H for x in b.mblocks)


def test_guest_not_enough_memory() -> None:
    assert err(bind_domain, machine(), guest(memory=8 * G)) == (
        f"not enough free memory on {HOST} for LDom ldg1: need 8G, have 3520M"
    )


def test_guest_congruency_prevents_binding() -> None:
    # Leave free only 64M chunks at 256M boundaries: none holds a PA ≡ 128M (mod 256M).
    m = machine()
    holes = [0x40000000, 0x50000000, 0x60000000]
    taken, start = [], 0x24000000
    for h in holes:
        taken.append((start, h - start))
        start = h + 64 * M
    taken.append((start, 4 * G - start))
    m = occupy(m, "x", taken)
    assert free_memory(m) == tuple(MemRange(pa=h, size=64 * M) for h in holes)
    msg = err(bind_domain, m, guest(memory=64 * M))
    assert msg.startswith("free memory layout and congruency requirements (PA ≡ RA modulo 256M) prevent ")
    assert "binding 64M of memory for LDom ldg1 at real address 0x8000000 on tiny1" in msg
    assert "largest free range 64M" in msg


def test_guest_without_memory() -> None:
    assert "LDom ldg1 has no memory" in err(bind_domain, machine(), guest(memory=0))


@pytest.mark.parametrize(("asked", "bound"), [(5 * M, 12 * M), (13 * M, 16 * M), (1 * G, 1 * G)])
def test_guest_memory_rounded(asked: int, bound: int) -> None:
    assert bind_domain(machine(), guest(memory=asked)).memory == bound


# ---------------------------------------------------------------- named blocks
def test_named_blocks_exact_pas_congruent_ras() -> None:
    cfg = guest(mblocks=(NamedMblock(pa=0x80000000, size=256 * M), NamedMblock(pa=0x40000000, size=512 * M)))
    b = bind_domain(machine(), cfg)
    # PA order; RAs from GUEST_RA_BASE, each the next RA congruent to its PA.
    assert triples(b.mblocks) == [(0x10000000, 0x40000000, 512 * M), (0x30000000, 0x80000000, 256 * M)]


def test_named_blocks_control_domain_ra_is_pa() -> None:
    m = machine()
    p = m.control
    cfg = replace(p.config, mblocks=(NamedMblock(pa=0x4000000, size=256 * M),), memory=256 * M)
    b = rebind_domain(m, p, cfg)
    assert triples(b.mblocks) == [(0x4000000, 0x4000000, 256 * M)]


def test_named_block_kept_on_rebind() -> None:
    m = machine()
    cfg = guest(mblocks=(NamedMblock(pa=0x40000000, size=256 * M),))
    d = Domain(config=cfg, state=DomainState.BOUND, bindings=bind_domain(m, cfg))
    m = m.with_domain(d)
    assert rebind_domain(m, d, replace(cfg, vcpus=2)).mblocks == d.bindings.mblocks  # type: ignore[union-attr]
    moved = rebind_domain(m, d, replace(cfg, mblocks=(NamedMblock(pa=0x50000000, size=256 * M),)))
    assert triples(moved.mblocks) == [(0x10000000, 0x50000000, 256 * M)]


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ([(0x20000000, 1 * G)], "memory block PA 0x20000000 size 1G is not free: overlaps LDom primary"),
        ([(0x0, 256 * M)], "memory block PA 0x0 size 256M is reserved (_sys_)"),
        ([(0xF0000000, 512 * M)], "memory block PA 0xf0000000 size 512M lies outside physical memory"),
        ([(0x40001000, 4 * M)], "memory block PA 0x40001000 size 4M is not aligned to 8K"),
        ([(0x40000000, 12345)], "memory block PA 0x40000000 size 12345 is not aligned to 8K"),
        (
            [(0x40000000, 512 * M), (0x50000000, 256 * M)],
            "memory block PA 0x50000000 size 256M overlaps memory block PA 0x40000000 of the same request",
        ),
    ],
)
def test_named_block_errors(blocks: list[tuple[int, int]], message: str) -> None:
    cfg = guest(mblocks=tuple(NamedMblock(pa=pa, size=size) for pa, size in blocks))
    assert err(bind_domain, machine(), cfg).startswith(message)


def test_named_block_overlaps_guest() -> None:
    m = occupy(machine(), "ldg9", [(0x40000000, 256 * M)])
    cfg = guest(mblocks=(NamedMblock(pa=0x3C000000, size=128 * M),))
    assert err(bind_domain, m, cfg) == "memory block PA 0x3c000000 size 128M is not free: overlaps LDom ldg9"


def test_named_block_outside_with_hole_in_physical_memory() -> None:
    plat = replace(tiny(), memory=(MemRange(pa=64 * M, size=G), MemRange(pa=2 * G, size=G)))
    m = factory_default(plat, HOST, seed=1)
    m = m.with_domain(replace(m.control, state=DomainState.INACTIVE))
    cfg = guest(mblocks=(NamedMblock(pa=G, size=2 * G),))
    assert err(bind_domain, m, cfg).endswith("lies outside physical memory")


# ---------------------------------------------------------------- resizing
def _bound(m: Machine, cfg: DomainConfig) -> tuple[Machine, Domain]:
    d = Domain(config=cfg, state=DomainState.ACTIVE, bindings=bind_domain(m, cfg))
    return m.with_domain(d), d


def test_grow_in_place() -> None:
    m, d = _bound(machine(), guest(memory=1 * G))
    b = rebind_domain(m, d, replace(d.config, memory=1536 * M))
    assert triples(b.mblocks) == [(0x8000000, 0x28000000, 1536 * M)]


def test_grow_elsewhere_keeps_existing_block() -> None:
    m, d = _bound(machine(), guest(memory=1 * G))
    m = occupy(m, "x", [(0x68000000, 64 * M)])
    b = rebind_domain(m, d, replace(d.config, memory=1280 * M))
    assert triples(b.mblocks) == [(0x8000000, 0x28000000, 1 * G), (0x48000000, 0x78000000, 256 * M)]


def test_shrink_releases_highest_ra() -> None:
    m = occupy(machine(), "x", [(0x48000000, 128 * M), (0x70000000, 0x90000000)])
    m, d = _bound(m, guest(memory=768 * M))
    b = rebind_domain(m, d, replace(d.config, memory=256 * M))
    assert triples(b.mblocks) == [(0x8000000, 0x28000000, 256 * M)]


def test_grow_not_enough() -> None:
    m, d = _bound(machine(), guest(memory=1 * G))
    assert err(rebind_domain, m, d, replace(d.config, memory=5 * G)).startswith(
        f"not enough free memory on {HOST} for LDom ldg1: need 4G, have 2496M"
    )


def test_control_domain_grows_at_lowest_pa_and_shrinks_keeping_lowest() -> None:
    m, _ = _bound(machine(), guest(memory=1 * G))  # guest at [0x28000000, 0x68000000)
    p = m.control
    grown = rebind_domain(m, p, replace(p.config, memory=640 * M))
    assert triples(grown.mblocks) == [(0x4000000, 0x4000000, 576 * M), (0x68000000, 0x68000000, 64 * M)]
    m = m.with_domain(replace(p, bindings=grown, config=replace(p.config, memory=640 * M)))
    shrunk = rebind_domain(m, m.control, replace(p.config, memory=256 * M))
    assert triples(shrunk.mblocks) == [(0x4000000, 0x4000000, 256 * M)]


def test_control_domain_grow_fails() -> None:
    m = machine()
    p = m.control
    assert err(rebind_domain, m, p, replace(p.config, memory=5 * G)).startswith(
        f"not enough free memory on {HOST} for LDom primary: need 4608M"
    )


# ---------------------------------------------------------------- fit_blocks (migration)
def test_fit_blocks_doc_example_1_2() -> None:
    free = [MemRange(pa=0x108000000, size=G), MemRange(pa=0x188000000, size=G)]
    src = [MemBinding(ra=0x8000000, pa=0x208000000, size=2 * G)]
    with pytest.raises(MemoryFitError) as e:
        fit_blocks(free, src, H)
    assert str(e.value) == "Unable to bind 2G memory region at real address 0x8000000"
    assert e.value.block == src[0]
    assert isinstance(e.value, ResourceError)


def test_fit_blocks_split_mode() -> None:
    free = [MemRange(pa=0x188000000, size=G), MemRange(pa=0x108000000, size=G)]  # unsorted on purpose
    src = [MemBinding(ra=0x8000000, pa=0x208000000, size=2 * G)]
    # Cut at 256M RA boundaries, the second range cannot take the rest congruently...
    with pytest.raises(MemoryFitError, match="Unable to bind 2G memory region"):
        fit_blocks(free, src, H, split_pagesize=H)
    # ...but with a smaller effective page size it can: one piece per range.
    got = fit_blocks(free, src, H, split_pagesize=4 * M)
    assert triples(got) == [(0x8000000, 0x108000000, G), (0x48000000, 0x188000000, G)]


def test_fit_blocks_split_cuts_on_effective_page_boundaries() -> None:
    # Neither range holds 1G congruently; with E = 256M the first piece stops at an RA multiple of 256M.
    free = [MemRange(pa=0x108000000, size=600 * M), MemRange(pa=0x200000000, size=800 * M)]
    got = fit_blocks(free, [MemBinding(ra=0x8000000, pa=0, size=G)], H, split_pagesize=H)
    assert triples(got) == [(0x8000000, 0x108000000, 384 * M), (0x20000000, 0x200000000, 640 * M)]
    assert all((b.ra + b.size) % H == 0 or b is got[-1] for b in got)


def test_fit_blocks_doc_example_3_2() -> None:
    free = [
        MemRange(pa=0x180880000000, size=5632 * M),
        MemRange(pa=0x301F70000000, size=2 * G),
        MemRange(pa=0x381B20000000, size=512 * M),
    ]
    src = [
        MemBinding(ra=0x80000000, pa=0x400000000, size=2 * G),
        MemBinding(ra=0x400000000, pa=0x880000000, size=6 * G),
    ]
    with pytest.raises(MemoryFitError) as e:
        fit_blocks(free, src, H)
    assert str(e.value) == "Unable to bind 6G memory region at real address 0x400000000"
    assert e.value.block == src[1]


def test_fit_blocks_keeps_ras_and_congruency() -> None:
    free = [MemRange(pa=0x100000000, size=8 * G)]
    src = [MemBinding(ra=0x48000000, pa=0x1, size=256 * M), MemBinding(ra=0x8000000, pa=0x2, size=G)]
    got = fit_blocks(free, src, H)
    assert triples(got) == [(0x8000000, 0x108000000, G), (0x48000000, 0x148000000, 256 * M)]
    assert fit_blocks(free, [], H) == ()


def test_control_domain_memory_not_rounded_to_4m() -> None:
    # A platform whose usable memory is not a 4M multiple: the factory primary rebinds unchanged.
    odd = (MemRange(pa=0, size=64 * M, reserved=True), MemRange(pa=64 * M, size=G + 8192))
    plat = replace(tiny(), memory=odd)
    m = factory_default(plat, HOST, seed=1)
    p = m.control
    assert rebind_domain(m, p, p.config).mblocks == p.bindings.mblocks  # type: ignore[union-attr]
    assert rebind_domain(m, p, replace(p.config, memory=5 * M)).memory == 12 * M
