"""Target-side CPU rules: type, clock, cpu-arch classes, strands, whole cores, crypto units."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_checks_scenario import World

from ldoms.checks import Code, GuestProfile, MigrationMode, Severity, Side
from ldoms.checks import cpu as rules
from ldoms.checks.compat import cpu_family, cross_cpu_problem
from ldoms.model.domain import DomainState
from ldoms.model.platforms import load_platform


def test_cpu_type_and_frequency_both_reported() -> None:
    w = World()
    w.tgt_platform = load_platform("t5220")  # UltraSPARC T2 at 1415 MHz
    w.tgt_platform = replace(w.tgt_platform, cpu_mhz=1165)
    out = list(rules.check_cpu_type_exact(*w.facts()))
    assert [(f.code, f.side) for f in out] == [(Code.CPU_TYPE, Side.TARGET), (Code.CPU_FREQ, Side.TARGET)]
    assert out[0].message == (
        "CPU type mismatch: src-host has UltraSPARC T2 Plus but dt212-239 has UltraSPARC T2: live migration "
        "needs the same processor type on both machines"
    )
    assert out[1].message == (
        "CPU frequency mismatch: src-host runs at 1415 MHz but dt212-239 at 1165 MHz: live migration needs "
        "the same clock frequency on both machines"
    )
    assert list(rules.check_cpu_type_exact(*World().facts())) == []


def test_t5140_preset_differs_only_in_clock() -> None:
    w = World()
    w.tgt_platform = load_platform("t5140")
    assert [f.code for f in rules.check_cpu_type_exact(*w.facts())] == [Code.CPU_FREQ]


@pytest.mark.parametrize(
    ("cpu_type", "family"),
    [
        ("UltraSPARC T2 Plus", ("t2+", 2)),
        ("UltraSPARC T2", ("t2", 2)),
        ("SPARC T3", ("t3", 3)),
        ("SPARC T4", ("t4", 4)),
        ("SPARC T5", ("t5", 5)),
        ("SPARC M7", ("t7", 7)),
        ("SPARC64-X", ("sparc64", 0)),
        ("Intel Xeon", ("", -1)),
    ],
)
def test_cpu_family(cpu_type: str, family: tuple[str, int]) -> None:
    assert cpu_family(cpu_type) == family


@pytest.mark.parametrize(
    ("arch", "source", "target", "allowed"),
    [
        ("native", "SPARC T4", "SPARC T4", True),
        ("native", "SPARC T4", "SPARC T5", False),
        ("generic", "UltraSPARC T2 Plus", "SPARC T4", True),
        ("generic", "UltraSPARC T2 Plus", "SPARC T5", False),
        ("generic", "SPARC T5", "SPARC T3", False),
        ("migration-class1", "SPARC T4", "SPARC T5", True),
        ("migration-class1", "UltraSPARC T2 Plus", "SPARC T4", False),
        ("sparc64-class1", "SPARC64-X", "SPARC64 X+", True),
        ("sparc64-class1", "SPARC T4", "SPARC64-X", False),
        ("turbo", "SPARC T4", "SPARC T4", False),
    ],
)
def test_cross_cpu_classes(arch: str, source: str, target: str, allowed: bool) -> None:
    assert (cross_cpu_problem(arch, source, target) == "") is allowed


def test_cpu_arch_rule_message() -> None:
    w = World()
    w.mode = MigrationMode.V3
    w.tgt_platform = load_platform("t4-1")
    out = list(rules.check_cpu_arch(*w.facts()))
    assert [f.message for f in out] == [
        "LDom ldg1 (cpu-arch=native) cannot be live-migrated from UltraSPARC T2 Plus on src-host to SPARC T4 "
        "on dt212-239: cpu-arch=native needs the same processor type on both machines"
    ]
    w.guest = replace(w.guest, config=replace(w.guest.config, cpu_arch="generic"))
    assert list(rules.check_cpu_arch(*w.facts())) == []


def test_strands_message_and_pass() -> None:
    w = World()
    w.tgt_strands |= set(range(124))
    out = list(rules.check_strands(*w.facts()))
    assert [f.message for f in out] == ["not enough free strands on dt212-239: need 8, have 4"]
    assert list(rules.check_strands(*World().facts())) == []


def test_whole_cores_for_legacy_active_domain() -> None:
    w = World()
    w.tgt_strands |= {c.strands[0] for c in w.tgt_platform.cores}  # every core partly used
    out = list(rules.check_whole_cores(*w.facts()))
    assert [f.message for f in out] == [
        "not enough free whole cores on dt212-239: need 1, have 0 "
        "(a live-migrated domain is given full cores)"
    ]
    assert list(rules.check_strands(*w.facts())) == []  # enough strands, only cores are short
    # 3.x with a guest that has the latest migration support: plain strands suffice
    w.mode = MigrationMode.V3
    w.profile = GuestProfile(latest_migration=True)
    assert list(rules.check_whole_cores(*w.facts())) == []


def test_whole_core_constraint_of_bound_domain() -> None:
    w = World()
    w.guest = replace(
        w.guest, state=DomainState.BOUND, config=replace(w.guest.config, whole_core=True, vcpus=2)
    )
    w.tgt_strands |= set(range(8, 8 * 15))  # one fully free core left
    out = list(rules.check_whole_cores(*w.facts()))
    assert [f.message for f in out] == [
        "not enough free whole cores on dt212-239: need 2, have 1 (the domain has the whole-core constraint)"
    ]
    w.tgt_strands = set(range(8))
    assert list(rules.check_whole_cores(*w.facts())) == []


def test_bound_domain_strands_come_from_constraints() -> None:
    w = World()
    w.guest = replace(w.guest, state=DomainState.BOUND, config=replace(w.guest.config, vcpus=125))
    assert [f.message for f in rules.check_strands(*w.facts())] == [
        "not enough free strands on dt212-239: need 125, have 120"
    ]


def _guest_maus(w: World, n: int) -> World:
    assert w.guest.bindings is not None
    maus = tuple(range(1, 1 + n))
    w.guest = replace(
        w.guest, bindings=replace(w.guest.bindings, maus=maus), config=replace(w.guest.config, mau=n)
    )
    return w


def test_target_crypto_failure_without_crypto_dr() -> None:
    w = _guest_maus(World(), 2)
    w.tgt_maus = tuple(range(15))  # one free MAU
    out = list(rules.check_target_crypto(*w.facts()))
    assert [(f.message, f.severity) for f in out] == [
        ("not enough free crypto units on dt212-239: need 2, have 1", Severity.ERROR)
    ]
    assert list(rules.check_target_crypto(*_guest_maus(World(), 2).facts())) == []
    assert list(rules.check_target_crypto(*World().facts())) == []


def test_target_crypto_shortfall_is_a_warning_when_readded() -> None:
    w = _guest_maus(World(), 2)
    w.tgt_maus = tuple(range(15))
    w.mode = MigrationMode.V1_3
    w.profile = GuestProfile(crypto_dr=True)
    out = list(rules.check_target_crypto(*w.facts()))
    assert [(f.message, f.severity) for f in out] == [
        (
            "LDom ldg1 will have 1 of its 2 crypto unit(s) on dt212-239: only 1 are free there",
            Severity.WARNING,
        )
    ]
