"""Memory rules: the 1.2 seed example, the 3.2 example (with and without splitting), free totals, named
blocks of bound domains."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_checks_scenario import World

from ldoms.binding.memory import MemoryFitError
from ldoms.checks import Code, GuestProfile, MigrationMode, Side, run_all_checks, source_facts, target_facts
from ldoms.checks import memory as rules
from ldoms.errors import ResourceError
from ldoms.model.domain import Bindings, Domain, DomainConfig, DomainState, MemBinding, NamedMblock
from ldoms.model.machine import Machine
from ldoms.model.platform import MemRange
from ldoms.model.platforms import load_platform
from ldoms.units import G, M

SEED_FREE = (MemRange(pa=0x108000000, size=G), MemRange(pa=0x188000000, size=G))
SEED_BLOCK = MemBinding(ra=0x8000000, pa=0x208000000, size=2 * G)

# SPEC §3.1, 3.2 example (https://docs.oracle.com/cd/E48724_01/html/E48732/memory.html)
BLOCKS_32 = (
    MemBinding(ra=0x80000000, pa=0x400000000, size=2 * G),
    MemBinding(ra=0x400000000, pa=0x880000000, size=6 * G),
)
FREE_32 = (
    MemRange(pa=0x180880000000, size=5632 * M),
    MemRange(pa=0x301F70000000, size=2 * G),
    MemRange(pa=0x381B20000000, size=512 * M),
)
MESSAGE_32 = (
    "Free memory layout and congruency requirements prevent binding the\n"
    "memory block with PA 0x880000000, RA 0x400000000, and size 6G"
)


def test_layout_seed_example_1_2_wording() -> None:
    out = list(rules.check_memory_layout((SEED_BLOCK,), SEED_FREE, 256 * M))
    assert [(f.code, f.side, f.message) for f in out] == [
        (Code.MEM_LAYOUT, Side.TARGET, "Unable to bind 2G memory region at real address 0x8000000")
    ]
    assert out[0].observed == "free: 0x108000000 1G, 0x188000000 1G"


def test_layout_fits_keeping_ra_congruent() -> None:
    free = (MemRange(pa=0x100000000, size=4 * G),)
    assert list(rules.check_memory_layout((SEED_BLOCK,), free, 256 * M)) == []


def test_layout_congruency_can_prevent_a_fit() -> None:
    # 2G free, starting at a PA ≡ 0 mod 256M while the RA is ≡ 128M: from the congruent PA only 1920M remain.
    free = (MemRange(pa=0x100000000, size=2 * G),)
    out = list(rules.check_memory_layout((SEED_BLOCK,), free, 256 * M))
    assert [f.message for f in out] == ["Unable to bind 2G memory region at real address 0x8000000"]


def test_layout_3_2_example_without_split() -> None:
    out = list(rules.check_memory_layout(BLOCKS_32, FREE_32, 256 * M, mode=MigrationMode.V3))
    assert [f.message for f in out] == [MESSAGE_32]


def test_layout_3_2_example_in_split_mode() -> None:
    """With a 2G hardware and effective page size (SPARC T4 and later) no split lets the 6G block fit."""
    out = list(
        rules.check_memory_layout(BLOCKS_32, FREE_32, 2 * G, split_pagesize=2 * G, mode=MigrationMode.V3)
    )
    assert [(f.code, f.message) for f in out] == [(Code.MEM_LAYOUT, MESSAGE_32)]


def test_layout_split_at_256m_fits_the_3_2_example() -> None:
    # 256M pages everywhere: 6G becomes 3584M + 2G + 512M pieces and the domain fits exactly.
    assert list(rules.check_memory_layout(BLOCKS_32, FREE_32, 256 * M, split_pagesize=256 * M)) == []


def test_layout_every_misfit_block_is_named() -> None:
    blocks = (
        MemBinding(ra=0x8000000, pa=0, size=2 * G),
        MemBinding(ra=0x100000000, pa=0, size=512 * M),
        MemBinding(ra=0x200000000, pa=0, size=3 * G),
    )
    free = (MemRange(pa=0x100000000, size=G), MemRange(pa=0x200000000, size=G))
    out = list(rules.check_memory_layout(blocks, free, 256 * M))
    assert [f.message for f in out] == [
        "Unable to bind 2G memory region at real address 0x8000000",
        "Unable to bind 3G memory region at real address 0x200000000",
    ]


def _machine_with_free(free: tuple[MemRange, ...], hw: int) -> Machine:
    """A T4-class target whose only usable memory is `free` (no domain holds any of it)."""
    plat = replace(load_platform("t4-1"), memory=free, hw_max_pagesize=hw)
    prim = Domain(
        config=DomainConfig(name="primary", uuid="u", hostid=1, mac=1, vcpus=8),
        state=DomainState.ACTIVE,
        bindings=Bindings(strands=tuple(range(8))),
    )
    return Machine(host_name="target", platform=plat, domains=(prim,))


def _ldg1_32(mode: MigrationMode, profile: GuestProfile) -> tuple[object, object]:
    w = World()
    w.src_platform = replace(load_platform("t4-1"), memory=(MemRange(pa=0x400000000, size=32 * G),))
    assert w.guest.bindings is not None
    w.guest = replace(w.guest, bindings=replace(w.guest.bindings, mblocks=BLOCKS_32))
    src = source_facts(w.source_machine(), "ldg1", mode=mode, guest=profile)
    return src, target_facts(_machine_with_free(FREE_32, 2 * G))


def test_memory_fit_rule_3_2_example_split_mode() -> None:
    profile = GuestProfile(mem_split=True, effective_max_pagesize=2 * G, latest_migration=True)
    src, tgt = _ldg1_32(MigrationMode.V3, profile)
    assert [f.message for f in rules.check_memory_fit(src, tgt)] == [MESSAGE_32]  # type: ignore[arg-type]
    # the effective page size defaults to the hardware one
    src, tgt = _ldg1_32(MigrationMode.V3, GuestProfile(mem_split=True))
    assert [f.message for f in rules.check_memory_fit(src, tgt)] == [MESSAGE_32]  # type: ignore[arg-type]


def test_memory_fit_rule_split_only_in_3x_mode() -> None:
    w = World()
    w.tgt_free = (MemRange(pa=0x100000000, size=G), MemRange(pa=0x180000000, size=G))
    w.profile = GuestProfile(mem_split=True, effective_max_pagesize=256 * M)
    # 1.2: the 2G block may not be spread over the two 1G ranges
    assert [f.message for f in rules.check_memory_fit(*w.facts())] == [
        "Unable to bind 2G memory region at real address 0x8000000"
    ]
    w.mode = MigrationMode.V3
    assert list(rules.check_memory_fit(*w.facts())) == []  # split at 256M: fits
    w.profile = GuestProfile(mem_split=False)
    assert [f.message for f in rules.check_memory_fit(*w.facts())] == [
        "Free memory layout and congruency requirements prevent binding the\n"
        "memory block with PA 0x208000000, RA 0x8000000, and size 2G"
    ]


def test_memory_free_and_fit_report_one_cause_once() -> None:
    w = World()
    w.tgt_free = (MemRange(pa=0x200000000, size=G),)
    report = run_all_checks(*w.facts())
    assert [(f.code, f.message) for f in report.failures] == [
        (Code.MEM_FREE, "not enough free memory on dt212-239: need 2G, have 1G")
    ]


def test_memory_free_passes() -> None:
    assert list(rules.check_memory_free(*World().facts())) == []


def _bound(w: World, **cfg: object) -> World:
    w.guest = replace(w.guest, state=DomainState.BOUND, config=replace(w.guest.config, **cfg))  # type: ignore[arg-type]
    return w


def test_bound_domain_memory_any_layout() -> None:
    """Bound: RAs may change, so the seed layout (2 x 1G free for a 2G domain) is acceptable."""
    w = _bound(World())
    w.tgt_free = SEED_FREE
    report = run_all_checks(*w.facts())
    assert report.ok, report.failures


def test_bound_domain_memory_total_uses_constraints() -> None:
    w = _bound(World(), memory=3 * G)
    assert list(rules.check_memory_free(*w.facts())) == []  # 8G free
    w.tgt_free = SEED_FREE
    assert [f.message for f in rules.check_memory_free(*w.facts())] == [
        "not enough free memory on dt212-239: need 3G, have 2G"
    ]


def test_bound_domain_without_memory_constraint() -> None:
    w = _bound(World(), memory=0)
    out = list(rules.check_memory_free(*w.facts()))
    assert [f.code for f in out] == [Code.MEM_FREE]
    assert "has no memory" in out[0].message


def test_named_mblocks_of_bound_domain() -> None:
    w = _bound(World(), mblocks=(NamedMblock(pa=0x200000000, size=G), NamedMblock(pa=0x108000000, size=G)))
    out = list(rules.check_named_mblocks(*w.facts()))
    assert [f.message for f in out] == [
        "memory block PA 0x108000000 size 1G of LDom ldg1 is not free on dt212-239"
    ]
    assert [f.code for f in out] == [Code.MEM_BLOCKS]
    # judged block by block: no total check on top
    assert list(rules.check_memory_free(*w.facts())) == []
    w = _bound(World(), mblocks=(NamedMblock(pa=0x200000000, size=G),))
    assert list(rules.check_named_mblocks(*w.facts())) == []


def test_layout_other_binding_errors_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kw: object) -> tuple[MemBinding, ...]:
        raise ResourceError("hardware page size 3M is not a power of two")

    monkeypatch.setattr(rules, "fit_blocks", refuse)
    out = list(rules.check_memory_layout((SEED_BLOCK,), SEED_FREE, 3 * M))
    assert [(f.code, f.message) for f in out] == [
        (Code.MEM_LAYOUT, "hardware page size 3M is not a power of two")
    ]


def test_layout_stops_when_the_misfit_is_not_a_source_block(monkeypatch: pytest.MonkeyPatch) -> None:
    stranger = MemBinding(ra=0, pa=0, size=G)

    def refuse(*args: object, **kw: object) -> tuple[MemBinding, ...]:
        raise MemoryFitError("Unable to bind 1G memory region at real address 0x0", stranger)

    monkeypatch.setattr(rules, "fit_blocks", refuse)
    out = list(rules.check_memory_layout((SEED_BLOCK,), SEED_FREE, 256 * M))
    assert [f.message for f in out] == ["Unable to bind 1G memory region at real address 0x0"]
