"""Which rules run for which state and mode; isolation of a broken rule; facts and reports on the wire."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
from test_checks_scenario import World

from ldoms.checks import (
    CheckFailure,
    CheckReport,
    Code,
    GuestProfile,
    MigrationMode,
    Severity,
    Side,
    SourceFacts,
    TargetFacts,
    registry,
    run_all_checks,
    run_source_checks,
    run_target_checks,
    source_rules,
    target_rules,
)
from ldoms.model.codec import decode, to_json
from ldoms.model.domain import DomainState
from ldoms.model.platform import MemRange
from ldoms.model.platforms import load_platform
from ldoms.units import G


def names(rules: tuple[registry.Rule, ...]) -> set[str]:
    return {r.name for r in rules}


def test_rule_tables_by_state_and_mode() -> None:
    active_12 = names(target_rules(DomainState.ACTIVE, MigrationMode.V1_2))
    assert {"cpu-type", "memory-fit", "vdsdev-options", "whole-cores"} <= active_12
    assert "cpu-arch" not in active_12
    active_3 = names(target_rules(DomainState.ACTIVE, MigrationMode.V3))
    assert "cpu-arch" in active_3 and "cpu-type" not in active_3
    bound = names(target_rules(DomainState.BOUND, MigrationMode.V1_2))
    assert {"strands", "memory-free", "named-mblocks", "vdisks", "vsw", "vcc", "mac-collisions"} <= bound
    assert not {"cpu-type", "cpu-arch", "memory-fit", "vdsdev-options", "firmware-family"} & bound
    inactive = names(target_rules(DomainState.INACTIVE, MigrationMode.V1_2))
    assert inactive == {
        "target-name",
        "target-migrating",
        "target-delayed-reconfig",
        "target-power-policy",
        "target-firmware",
    }
    assert names(source_rules(DomainState.INACTIVE, MigrationMode.V1_2)) == {
        "control-domain",
        "service-domain",
        "physical-io",
        "already-migrating",
        "source-delayed-reconfig",
        "source-power-policy",
        "source-firmware",
    }
    assert {"cpu-dr-shrink", "crypto", "openboot", "guest-os"} <= names(
        source_rules(DomainState.ACTIVE, MigrationMode.V1_2)
    )


def _world_with_everything_missing(state: DomainState) -> World:
    w = World()
    w.guest = replace(w.guest, state=state)
    w.tgt_platform = load_platform("t4-1")  # another CPU type, clock, firmware family and page size
    w.tgt_services = replace(w.tgt_services, vds=(), vsw=(), vcc=())
    w.tgt_strands = set(range(64))  # every strand of the T4-1 held
    return w


def test_inactive_domain_gets_no_resource_checks() -> None:
    report = run_all_checks(*_world_with_everything_missing(DomainState.INACTIVE).facts())
    assert report.ok, report.failures


def test_inactive_domain_still_gets_the_general_checks() -> None:
    w = _world_with_everything_missing(DomainState.INACTIVE)
    w.tgt_power = "elastic"
    assert run_all_checks(*w.facts()).codes == {Code.POWER_POLICY}


def test_bound_domain_crosses_cpu_types_but_needs_resources_and_services() -> None:
    w = _world_with_everything_missing(DomainState.BOUND)
    codes = [f.code for f in run_all_checks(*w.facts()).failures]
    assert Code.CPU_TYPE not in codes and Code.CPU_FREQ not in codes and Code.FIRMWARE not in codes
    assert set(codes) == {Code.STRANDS, Code.VDS_SERVICE, Code.VSW, Code.VCC_PORT}
    assert codes.count(Code.VDS_SERVICE) == 3  # every vdisk's service is named


def test_bound_domain_skips_vdsdev_options() -> None:
    w = World()
    w.guest = replace(w.guest, state=DomainState.BOUND)
    first, *rest = w.tgt_services.vds
    w.tgt_services = replace(
        w.tgt_services,
        vds=(replace(first, volumes=tuple(replace(v, options=("ro",)) for v in first.volumes)), *rest),
    )
    assert run_all_checks(*w.facts()).ok
    w.guest = replace(w.guest, state=DomainState.ACTIVE)
    assert run_all_checks(*w.facts()).codes == {Code.VDSDEV_OPTIONS}


def test_active_domain_everything_reported_at_once() -> None:
    w = _world_with_everything_missing(DomainState.ACTIVE)
    w.tgt_free = (MemRange(pa=0x200000000, size=G),)
    report = run_all_checks(*w.facts())
    assert {
        Code.CPU_TYPE,
        Code.CPU_FREQ,
        Code.FIRMWARE,
        Code.STRANDS,
        Code.WHOLE_CORE,
        Code.VDS_SERVICE,
        Code.VSW,
        Code.VCC_PORT,
    } <= report.codes


def test_source_and_target_sides() -> None:
    w = World()
    w.src_power = w.tgt_power = "elastic"
    src, tgt = w.facts()
    assert [f.side for f in run_source_checks(src).failures] == [Side.SOURCE]
    assert [f.side for f in run_target_checks(src, tgt).failures] == [Side.TARGET]
    assert [f.side for f in run_all_checks(src, tgt).failures] == [Side.SOURCE, Side.TARGET]


def test_warnings_do_not_fail_the_check() -> None:
    w = World()
    w.mode = MigrationMode.V3
    w.src_platform = replace(w.src_platform, firmware="7.4.5")
    w.tgt_platform = replace(w.tgt_platform, firmware="7.4.5")
    report = run_all_checks(*w.facts())
    assert report.ok
    assert [(f.code, f.severity) for f in report.warnings] == [(Code.OS_COMPAT, Severity.WARNING)]
    w.profile = GuestProfile(latest_migration=True)
    assert run_all_checks(*w.facts()) == CheckReport()


def test_a_broken_rule_is_reported_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
        yield CheckFailure(code=Code.VSW, message="first", side=Side.TARGET)
        raise KeyError("vsw")

    rules = (registry.Rule("broken", Side.TARGET, broken), *registry.TARGET_RULES)
    monkeypatch.setattr(registry, "TARGET_RULES", rules)
    w = World()
    w.tgt_power = "elastic"
    report = run_target_checks(*w.facts())
    assert [(f.code, f.message) for f in report.failures] == [
        (Code.INTERNAL, "migration check broken could not run: KeyError: 'vsw'"),
        (
            Code.POWER_POLICY,
            "dt212-239 uses the elastic power policy: migration is refused while either machine uses the "
            "elastic policy",
        ),
    ]


def test_side_is_stamped_by_the_rule_table(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong_side(src: SourceFacts) -> Iterator[CheckFailure]:
        yield CheckFailure(code=Code.VSW, message="x", side=Side.TARGET)

    monkeypatch.setattr(registry, "SOURCE_RULES", (registry.Rule("x", Side.SOURCE, wrong_side),))
    src, _ = World().facts()
    assert [f.side for f in run_source_checks(src).failures] == [Side.SOURCE]


def test_facts_and_report_survive_the_codec() -> None:
    w = World()
    w.mode = MigrationMode.V1_3
    w.profile = GuestProfile(
        os_name="Solaris 10 10/09", crypto_dr=True, effective_max_pagesize=256 * 1024 * 1024
    )
    w.tgt_migrating = ("ldg5",)
    src, tgt = w.facts()
    src2 = decode(SourceFacts, json.loads(json.dumps(to_json(src))))
    tgt2 = decode(TargetFacts, json.loads(json.dumps(to_json(tgt))))
    assert src2 == src and tgt2 == tgt
    w.tgt_power = "elastic"
    report = run_all_checks(*w.facts())
    assert decode(CheckReport, json.loads(json.dumps(to_json(report)))) == report
    assert run_all_checks(src2, tgt2) == run_all_checks(src, tgt)


def test_source_facts_carry_only_the_volumes_the_domain_uses() -> None:
    src, _ = World().facts()
    assert {(s.name, v.name) for s in src.vds for v in s.volumes} == {
        ("primary-vds0", "vol1"),
        ("primary-vds0", "vol2"),
        ("aux-vds0", "vol3"),
    }
    assert src.volume("aux-vds0", "vol3") is not None and src.volume("aux-vds0", "vol9") is None


def test_report_helpers() -> None:
    e = CheckFailure(code=Code.VSW, message="e", side=Side.TARGET)
    warn = CheckFailure(code=Code.NIU_HYBRID, message="w", side=Side.TARGET, severity=Severity.WARNING)
    r = CheckReport.of([warn, e])
    assert r.failures == (e,) and r.warnings == (warn,) and not r.ok and r.codes == {Code.VSW}
    assert CheckReport().merged(r) == r and CheckReport().ok
