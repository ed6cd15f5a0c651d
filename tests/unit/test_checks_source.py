"""Source-side rules, each passing and failing (SPEC §3.1, §3.3, §1.4)."""

from __future__ import annotations

from dataclasses import replace

from test_checks_scenario import GUEST, World

from ldoms.checks import Code, GuestConditions, GuestProfile, MigrationMode, Severity, Side, source_facts
from ldoms.checks import source as rules
from ldoms.checks.facts import SourceFacts
from ldoms.model.domain import DomainState, IoAssignment, MigrationRole, Vds


def facts(w: World | None = None, name: str = GUEST) -> SourceFacts:
    w = w or World()
    return source_facts(
        w.source_machine(),
        name,
        mode=w.mode,
        guest=w.profile,
        conditions=w.conditions,
        migrations_in_progress=w.src_migrating,
    )


def with_guest(w: World, **changes: object) -> World:
    w.guest = replace(w.guest, **changes)  # type: ignore[arg-type]
    return w


def with_config(w: World, **changes: object) -> World:
    w.guest = replace(w.guest, config=replace(w.guest.config, **changes))  # type: ignore[arg-type]
    return w


def messages(it: object) -> list[str]:
    return [f.message for f in it]  # type: ignore[attr-defined]


def test_control_domain_refused_once() -> None:
    src = facts(name="primary")
    out = list(rules.check_control_domain(src))
    assert messages(out) == ["LDom primary is the control domain: the control domain cannot be migrated"]
    assert out[0].code == Code.CONTROL_DOMAIN and out[0].side == Side.SOURCE
    # primary provides services and owns no bus here, but the one cause is reported once
    assert list(rules.check_service_domain(src)) == []
    assert list(rules.check_control_domain(facts())) == []


def test_service_domain() -> None:
    w = with_config(World(), vds=(Vds(name="ldg1-vds0"),))
    assert messages(rules.check_service_domain(facts(w))) == [
        "LDom ldg1 provides virtual services (vds ldg1-vds0): a service domain cannot be migrated"
    ]
    assert list(rules.check_service_domain(facts())) == []


def test_physical_io_from_constraints_or_bindings() -> None:
    w = with_config(World(), io=(IoAssignment(dev="pci@400"),))
    assert messages(rules.check_physical_io(facts(w))) == [
        "LDom ldg1 has physical I/O (pci@400): a domain with direct access to physical devices "
        "(an I/O domain) cannot be migrated"
    ]
    w = World()
    assert w.guest.bindings is not None
    w = with_guest(w, bindings=replace(w.guest.bindings, io=("pci@500",)))
    assert [f.observed for f in rules.check_physical_io(facts(w))] == ["pci@500"]
    assert list(rules.check_physical_io(facts())) == []


def test_already_migrating() -> None:
    w = with_guest(World(), migration=MigrationRole.ERROR)
    assert messages(rules.check_already_migrating(facts(w))) == [
        "LDom ldg1 is already being migrated (migration flag: error): only one migration of a domain at "
        "a time"
    ]
    w = World()
    w.src_migrating = (GUEST,)
    assert [f.code for f in rules.check_already_migrating(facts(w))] == [Code.MIGRATION_IN_PROGRESS]
    assert list(rules.check_already_migrating(facts())) == []


def test_source_delayed_reconfig() -> None:
    w = World()
    w.src_extra = {"pending": w.guest.config}
    assert messages(rules.check_source_delayed_reconfig(facts(w))) == [
        "LDom primary on src-host has a delayed reconfiguration pending: no migration can start while a "
        "delayed reconfiguration is active on the source or the target"
    ]
    assert list(rules.check_source_delayed_reconfig(facts())) == []


def test_source_power_policy() -> None:
    w = World()
    w.src_power = "elastic"
    assert messages(rules.check_source_power_policy(facts(w))) == [
        "src-host uses the elastic power policy: migration is refused while either machine uses the "
        "elastic policy"
    ]
    assert list(rules.check_source_power_policy(facts())) == []


def test_source_firmware_minimum_by_mode() -> None:
    w = World()
    w.src_platform = replace(w.src_platform, firmware="7.1.3")
    assert messages(rules.check_source_firmware(facts(w))) == [
        "System firmware 7.1.3 on src-host does not support domain migration: UltraSPARC T2 Plus machines "
        "need at least 7.2.0"
    ]
    assert list(rules.check_source_firmware(facts())) == []
    w = World()
    w.mode = MigrationMode.V3  # 3.x: T2/T2+ need 7.4.5
    assert [f.required for f in rules.check_source_firmware(facts(w))] == [">= 7.4.5"]
    w.src_platform = replace(w.src_platform, firmware="7.4.5")
    assert list(rules.check_source_firmware(facts(w))) == []


def test_guest_os_without_live_migration() -> None:
    w = World()
    w.profile = GuestProfile(os_name="Solaris 10 5/08", live_migration=False)
    assert messages(rules.check_guest_os(facts(w))) == [
        "LDom ldg1 runs Solaris 10 5/08, which does not support live migration: stop the domain and "
        "migrate it bound or inactive"
    ]
    assert list(rules.check_guest_os(facts())) == []


def test_guest_os_3x_older_guest_warning_exact() -> None:
    w = World()
    w.mode = MigrationMode.V3
    out = list(rules.check_guest_os(facts(w)))
    assert messages(out) == [
        "Domain ldg1 is not running an operating system that is\n"
        "compatible with the latest migration functionality."
    ]
    assert out[0].severity == Severity.WARNING
    w.profile = GuestProfile(latest_migration=True)
    assert list(rules.check_guest_os(facts(w))) == []
    # in OpenBoot even a modern guest gets the 1.2 rules, hence the warning
    w = with_guest(w, softstate="OpenBoot Running")
    assert [f.severity for f in rules.check_guest_os(facts(w))] == [Severity.WARNING]


def test_openboot_needs_single_vcpu() -> None:
    w = with_guest(World(), softstate="OpenBoot Running")
    assert messages(rules.check_openboot(facts(w))) == [
        "LDom ldg1 is not running an OS (OpenBoot Running) and has 8 virtual CPUs: a domain in OpenBoot or "
        "the kernel debugger can be migrated only with a single virtual CPU"
    ]
    assert w.guest.bindings is not None
    w = with_guest(w, bindings=replace(w.guest.bindings, strands=(8,)))
    assert list(rules.check_openboot(facts(w))) == []
    assert list(rules.check_openboot(facts())) == []


def test_cpu_dr_every_condition_reported() -> None:
    w = World()
    w.profile = GuestProfile(cpu_dr=False)
    w.conditions = GuestConditions(bound_processes=3, processor_sets=2)
    prefix = "LDom ldg1 cannot be shrunk to one strand for migration"
    assert messages(rules.check_cpu_dr_shrink(facts(w))) == [
        "LDom ldg1 cannot be shrunk to one strand for migration: its guest OS does not support CPU dynamic "
        "reconfiguration and it has 8 strands",
        f"{prefix}: 3 process(es) in the guest are bound to CPUs",
        f"{prefix}: 2 processor set(s) are configured in the guest",
    ]
    assert list(rules.check_cpu_dr_shrink(facts())) == []


def test_cpu_dr_not_needed_for_single_strand_or_latest_guest() -> None:
    w = World()
    w.profile = GuestProfile(cpu_dr=False)
    assert w.guest.bindings is not None
    single = with_guest(World(), bindings=replace(w.guest.bindings, strands=(8,)))
    single.profile = w.profile
    assert list(rules.check_cpu_dr_shrink(facts(single))) == []
    w.mode = MigrationMode.V3
    w.profile = GuestProfile(cpu_dr=False, latest_migration=True)
    assert list(rules.check_cpu_dr_shrink(facts(w))) == []


def _with_mau(w: World) -> World:
    assert w.guest.bindings is not None
    return with_guest(w, bindings=replace(w.guest.bindings, maus=(1,)))


def test_crypto_refused_in_1_2_with_several_strands() -> None:
    out = list(rules.check_crypto(facts(_with_mau(World()))))
    assert messages(out) == [
        "LDom ldg1 has 1 crypto unit(s) bound and 8 strands: it cannot be shrunk to one strand for migration "
        "while crypto units are bound"
    ]
    assert out[0].severity == Severity.ERROR
    w = _with_mau(World())
    assert w.guest.bindings is not None
    w = with_guest(w, bindings=replace(w.guest.bindings, strands=(8,)))
    assert list(rules.check_crypto(facts(w))) == []
    assert list(rules.check_crypto(facts())) == []


def test_crypto_1_3_removed_and_readded_with_crypto_dr() -> None:
    w = _with_mau(World())
    w.mode = MigrationMode.V1_3
    w.profile = GuestProfile(crypto_dr=True)
    out = list(rules.check_crypto(facts(w)))
    assert [f.severity for f in out] == [Severity.WARNING]
    assert out[0].message.startswith("LDom ldg1: its 1 crypto unit(s) will be removed before the migration")
    w.profile = GuestProfile(crypto_dr=False)  # no crypto DR: the 1.2 rule again
    assert [f.severity for f in rules.check_crypto(facts(w))] == [Severity.ERROR]
    w.mode = MigrationMode.V1_2  # 1.2 knows no crypto DR
    w.profile = GuestProfile(crypto_dr=True)
    assert [f.severity for f in rules.check_crypto(facts(w))] == [Severity.ERROR]


def test_facts_of_an_inactive_domain_come_from_its_constraints() -> None:
    w = with_guest(World(), state=DomainState.INACTIVE)
    w = with_config(w, whole_core=True, vcpus=2, mau=1)
    src = facts(w)
    assert (src.strands, src.maus) == (16, 1)  # 2 whole cores of 8 strands; the stale bindings are ignored
    w = with_config(w, whole_core=False, vcpus=3)
    assert facts(w).strands == 3
