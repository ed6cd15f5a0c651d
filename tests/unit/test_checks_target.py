"""General target rules: name, migrations, delayed reconfiguration, power policy, firmware."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_checks_scenario import GUEST, World, other_domain

from ldoms.checks import Code, MigrationMode, Side
from ldoms.checks import target as rules
from ldoms.checks.compat import firmware_downgrade, firmware_key, firmware_major
from ldoms.model.domain import DomainConfig


def msgs(it: object) -> list[str]:
    return [f.message for f in it]  # type: ignore[attr-defined]


def test_target_name_in_use_and_rename() -> None:
    w = World()
    w.tgt_domains.append(other_domain(GUEST, 0x00144FF80100))
    out = list(rules.check_target_name(*w.facts()))
    assert msgs(out) == ["LDom ldg1 already exists on dt212-239: the migrated domain needs an unused name"]
    assert (out[0].code, out[0].side) == (Code.NAME_IN_USE, Side.TARGET)
    w.target_name = "ldg2"
    assert list(rules.check_target_name(*w.facts())) == []
    w.tgt_domains.append(other_domain("ldg2", 0x00144FF80101))
    assert msgs(rules.check_target_name(*w.facts())) == [
        "LDom ldg2 already exists on dt212-239: the migrated domain needs an unused name"
    ]


def test_target_migration_in_progress() -> None:
    w = World()
    w.tgt_migrating = ("ldg1",)
    assert msgs(rules.check_target_migrating(*w.facts())) == [
        "A migration of LDom ldg1 is already in progress on dt212-239"
    ]
    w.tgt_migrating = ("ldg5",)
    assert list(rules.check_target_migrating(*w.facts())) == []


def test_target_delayed_reconfig() -> None:
    w = World()
    w.tgt_extra = {"pending": DomainConfig(name="primary", uuid="u", hostid=1, mac=1)}
    out = list(rules.check_target_delayed_reconfig(*w.facts()))
    assert msgs(out) == [
        "LDom primary on dt212-239 has a delayed reconfiguration pending: no migration can start while a "
        "delayed reconfiguration is active on the source or the target"
    ]
    assert out[0].remedy == "reboot primary on dt212-239, or 'ldm cancel-operation reconf primary' there"
    assert list(rules.check_target_delayed_reconfig(*World().facts())) == []


def test_target_power_policy() -> None:
    w = World()
    w.tgt_power = "elastic"
    assert msgs(rules.check_target_power_policy(*w.facts())) == [
        "dt212-239 uses the elastic power policy: migration is refused while either machine uses the "
        "elastic policy"
    ]
    assert list(rules.check_target_power_policy(*World().facts())) == []


def test_target_firmware_minimum() -> None:
    w = World()
    w.tgt_platform = replace(w.tgt_platform, firmware="7.1.0")
    assert msgs(rules.check_target_firmware(*w.facts())) == [
        "System firmware 7.1.0 on dt212-239 does not support domain migration: UltraSPARC T2 Plus machines "
        "need at least 7.2.0"
    ]
    assert list(rules.check_target_firmware(*World().facts())) == []


def test_target_firmware_minimum_3x_t4() -> None:
    w = World()
    w.mode = MigrationMode.V3
    w.tgt_platform = replace(w.tgt_platform, cpu_type="SPARC T4", firmware="8.2.2.b")
    assert [f.required for f in rules.check_target_firmware(*w.facts())] == [">= 8.2.2.c"]
    w.tgt_platform = replace(w.tgt_platform, firmware="8.2.2.c")
    assert list(rules.check_target_firmware(*w.facts())) == []


def test_firmware_features_exact_wording() -> None:
    w = World()
    w.src_platform = replace(w.src_platform, firmware="8.4.0")
    w.tgt_platform = replace(w.tgt_platform, firmware="8.3.11")
    assert msgs(rules.check_firmware_features(*w.facts())) == [
        "Domain ldg1 is using features of the system firmware that are not supported in\n"
        "the version of the firmware running on the target machine."
    ]
    w.tgt_platform = replace(w.tgt_platform, firmware="8.4")
    assert list(rules.check_firmware_features(*w.facts())) == []


def test_firmware_family_7_to_8() -> None:
    w = World()
    w.tgt_platform = replace(w.tgt_platform, firmware="8.1.4")
    out = list(rules.check_firmware_family(*w.facts()))
    assert msgs(out) == [
        "Cannot live-migrate LDom ldg1 between system firmware 7.2.0 (src-host) and 8.1.4 (dt212-239): 7.x "
        "and 8.x machines are not compatible for live migration"
    ]
    assert list(rules.check_firmware_family(*World().facts())) == []
    w.src_platform = replace(w.src_platform, firmware="8.3.0")
    assert list(rules.check_firmware_family(*w.facts())) == []


@pytest.mark.parametrize(
    ("source", "target", "downgrade"),
    [
        ("8.4.0", "8.3.11", True),
        ("8.4", "8.4.0", False),
        ("9.1.0", "8.5", False),
        ("8.3.0", "7.4.5", False),
        ("XCP2210", "XCP2100", True),
        ("XCP2210", "XCP2230", False),
        ("XCP2210", "8.3", False),
    ],
)
def test_firmware_downgrade(source: str, target: str, downgrade: bool) -> None:
    assert firmware_downgrade(source, target) is downgrade


def test_firmware_version_parsing() -> None:
    assert firmware_key("8.2.2.c") > firmware_key("8.2.2") > firmware_key("8.2.1.z")
    assert firmware_key("7.10.0") > firmware_key("7.9.9")
    assert firmware_major("7.4.5") == 7
    assert firmware_major("XCP2210") is None
