"""A passing migration scenario, the violations that can be injected into it, and the seed examples.

The builder is shared with tests/property/test_checks_props.py (loaded by path there).  A `World` is the
mutable description of one scenario; each `Violation` edits it to break exactly one rule and says how the
break must be reported (code, side and a fragment of the message).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ldoms.binding.held import subtract
from ldoms.checks import (
    CheckReport,
    Code,
    GuestConditions,
    GuestProfile,
    MigrationMode,
    Side,
    run_all_checks,
    source_facts,
    target_facts,
)
from ldoms.model.domain import (
    Bindings,
    Domain,
    DomainConfig,
    DomainState,
    IoAssignment,
    MemBinding,
    Vcc,
    Vcons,
    Vdisk,
    Vds,
    VdsVolume,
    Vnet,
    Vsw,
)
from ldoms.model.machine import Machine
from ldoms.model.platform import MemRange, Platform
from ldoms.model.platforms import load_platform
from ldoms.units import G

SRC_HOST = "src-host"
TGT_HOST = "dt212-239"
GUEST = "ldg1"
GUEST_MAC = 0x00144FF80000
VNET_MAC = 0x00144FF80001
GUEST_BLOCK = MemBinding(ra=0x8000000, pa=0x208000000, size=2 * G)


@dataclass(frozen=True)
class Services:
    vds: tuple[Vds, ...]
    vsw: tuple[Vsw, ...]
    vcc: tuple[Vcc, ...]


def services(vsw_mac: int) -> Services:
    return Services(
        vds=(
            Vds(
                name="primary-vds0",
                volumes=(
                    VdsVolume(name="vol1", backend="/ldoms/vol1.img"),
                    VdsVolume(name="vol2", backend="/ldoms/vol2.img", mpgroup="mp1"),
                ),
            ),
            Vds(
                name="aux-vds0",
                volumes=(VdsVolume(name="vol3", backend="/dev/dsk/c1t1d0s2", options=("excl",)),),
            ),
        ),
        vsw=(Vsw(name="primary-vsw0", mac=vsw_mac, net_dev="e1000g0"),),
        vcc=(Vcc(name="primary-vcc0", port_min=5000, port_max=5100),),
    )


def primary(platform: Platform, *, mac: int, vsw_mac: int, held: Iterable[MemBinding] = ()) -> Domain:
    """The control domain: core 0, MAU 0, every usable range except `held` (RA = PA), the services."""
    mem = subtract(platform.usable_memory, [(b.pa, b.pa_end) for b in held])
    blocks = tuple(MemBinding(ra=r.pa, pa=r.pa, size=r.size) for r in mem)
    cfg = DomainConfig(
        name="primary",
        uuid="u-primary",
        hostid=1,
        mac=mac,
        vcpus=8,
        memory=sum(b.size for b in blocks),
        mau=1,
    )
    svc = services(vsw_mac)
    cfg = replace(cfg, vds=svc.vds, vsw=svc.vsw, vcc=svc.vcc)
    b = Bindings(strands=tuple(range(8)), maus=(0,), mblocks=blocks)
    return Domain(config=cfg, state=DomainState.ACTIVE, bindings=b, softstate="Solaris running")


def guest_domain(**cfg_changes: object) -> Domain:
    cfg = DomainConfig(
        name=GUEST,
        uuid="u-ldg1",
        hostid=2,
        mac=GUEST_MAC,
        vcpus=8,
        memory=2 * G,
        vnets=(Vnet(name="vnet1", service="primary-vsw0", mac=VNET_MAC),),
        vdisks=(
            Vdisk(name="vdisk1", volume="vol1", service="primary-vds0"),
            Vdisk(name="vdisk2", volume="vol2", service="primary-vds0"),
            Vdisk(name="vdisk3", volume="vol3", service="aux-vds0"),
        ),
        vcons=Vcons(group=GUEST, service="primary-vcc0"),
    )
    cfg = replace(cfg, **cfg_changes)  # type: ignore[arg-type]
    b = Bindings(
        strands=tuple(range(8, 16)), mblocks=(GUEST_BLOCK,), console_port=5000, console_service="primary-vcc0"
    )
    return Domain(config=cfg, state=DomainState.ACTIVE, bindings=b, softstate="Solaris running")


def other_domain(name: str, mac: int, **cfg_changes: object) -> Domain:
    """An inactive domain on the target (holds nothing)."""
    cfg = replace(
        DomainConfig(name=name, uuid=f"u-{name}", hostid=3, mac=mac, vcpus=1, memory=G), **cfg_changes
    )  # type: ignore[arg-type]
    return Domain(config=cfg)


@dataclass
class World:
    """Everything one check run sees; violations edit it."""

    src_platform: Platform = field(default_factory=lambda: load_platform("t5240"))
    tgt_platform: Platform = field(default_factory=lambda: load_platform("t5240"))
    guest: Domain = field(default_factory=guest_domain)
    src_extra: dict[str, object] = field(default_factory=dict)  # replace() on the source primary's Domain
    tgt_free: tuple[MemRange, ...] = (MemRange(pa=0x200000000, size=8 * G),)
    tgt_strands: set[int] = field(default_factory=lambda: set(range(8)))  # held by the target primary
    tgt_maus: tuple[int, ...] = (0,)  # held by the target primary
    tgt_services: Services = field(default_factory=lambda: services(0x0003BA000102))
    tgt_domains: list[Domain] = field(default_factory=list)
    tgt_extra: dict[str, object] = field(default_factory=dict)  # replace() on the target primary's Domain
    tgt_power: str = "performance"
    src_power: str = "performance"
    mode: MigrationMode = MigrationMode.V1_2
    profile: GuestProfile = field(default_factory=GuestProfile)
    conditions: GuestConditions = field(default_factory=GuestConditions)
    src_migrating: tuple[str, ...] = ()
    tgt_migrating: tuple[str, ...] = ()
    target_name: str = ""

    def source_machine(self) -> Machine:
        p = self.src_platform
        prim = replace(
            primary(
                p,
                mac=0x0003BA000001,
                vsw_mac=0x0003BA000002,
                held=self.guest.bindings.mblocks if self.guest.bindings else (),
            ),
            **self.src_extra,
        )  # type: ignore[arg-type]
        return Machine(
            host_name=SRC_HOST, platform=p, domains=(prim, self.guest), power_policy=self.src_power
        )

    def target_machine(self) -> Machine:
        p = self.tgt_platform
        held = [MemBinding(ra=r.pa, pa=r.pa, size=r.size) for r in self.tgt_free]
        prim = primary(p, mac=0x0003BA000101, vsw_mac=0x0003BA000102, held=held)
        svc = self.tgt_services
        cfg = replace(prim.config, vds=svc.vds, vsw=svc.vsw, vcc=svc.vcc)
        assert prim.bindings is not None
        b = replace(prim.bindings, strands=tuple(sorted(self.tgt_strands)), maus=self.tgt_maus)
        prim = replace(prim, config=cfg, bindings=b, **self.tgt_extra)  # type: ignore[arg-type]
        return Machine(
            host_name=TGT_HOST, platform=p, domains=(prim, *self.tgt_domains), power_policy=self.tgt_power
        )

    def facts(self):  # type: ignore[no-untyped-def]
        src = source_facts(
            self.source_machine(),
            GUEST,
            target_name=self.target_name,
            mode=self.mode,
            guest=self.profile,
            conditions=self.conditions,
            migrations_in_progress=self.src_migrating,
        )
        return src, target_facts(self.target_machine(), migrations_in_progress=self.tgt_migrating)

    def report(self) -> CheckReport:
        return run_all_checks(*self.facts())


# ---------------------------------------------------------------- violations
@dataclass(frozen=True)
class Violation:
    name: str
    apply: Callable[[World], None]
    code: Code
    side: Side
    fragment: str  # a piece of the expected message

    def found_in(self, report: CheckReport) -> bool:
        return any(
            f.code == self.code and f.side == self.side and self.fragment in f.message
            for f in report.failures
        )


def _set(attr: str, value: object) -> Callable[[World], None]:
    return lambda w: setattr(w, attr, value)


def _guest(**changes: object) -> Callable[[World], None]:
    def apply(w: World) -> None:
        w.guest = replace(w.guest, config=replace(w.guest.config, **changes))  # type: ignore[arg-type]

    return apply


def _hold_one_strand_per_core(w: World) -> None:
    w.tgt_strands |= {c.strands[0] for c in w.tgt_platform.cores}


def _hold_all_but_four(w: World) -> None:
    w.tgt_strands |= set(range(w.tgt_platform.nstrands - 4))


def _add_domain(d: Domain) -> Callable[[World], None]:
    return lambda w: w.tgt_domains.append(d)


def _services(**changes: object) -> Callable[[World], None]:
    def apply(w: World) -> None:
        w.tgt_services = replace(w.tgt_services, **changes)  # type: ignore[arg-type]

    return apply


def _drop_service(w: World) -> None:
    w.tgt_services = replace(w.tgt_services, vds=tuple(s for s in w.tgt_services.vds if s.name != "aux-vds0"))


def _edit_vds0(w: World, edit: Callable[[VdsVolume], VdsVolume | None]) -> None:
    first, *rest = w.tgt_services.vds
    vols = tuple(v for v in (edit(v) for v in first.volumes) if v is not None)
    w.tgt_services = replace(w.tgt_services, vds=(replace(first, volumes=vols), *rest))


def _drop_volume(w: World) -> None:
    _edit_vds0(w, lambda v: None if v.name == "vol2" else v)


def _vol1_read_only(w: World) -> None:
    _edit_vds0(w, lambda v: replace(v, options=("ro",)) if v.name == "vol1" else v)


def _target_dr(w: World) -> None:
    w.tgt_extra = {**w.tgt_extra, "pending": DomainConfig(name="primary", uuid="u", hostid=1, mac=1)}


def _source_dr(w: World) -> None:
    w.src_extra = {**w.src_extra, "pending": DomainConfig(name="primary", uuid="u", hostid=1, mac=1)}


def _guest_maus(w: World) -> None:
    assert w.guest.bindings is not None
    w.guest = replace(
        w.guest, bindings=replace(w.guest.bindings, maus=(1,)), config=replace(w.guest.config, mau=1)
    )


def _profile(**changes: object) -> Callable[[World], None]:
    return lambda w: setattr(w, "profile", replace(w.profile, **changes))  # type: ignore[arg-type]


def _conditions(**changes: int) -> Callable[[World], None]:
    return lambda w: setattr(w, "conditions", replace(w.conditions, **changes))


def _platform(which: str, **changes: object) -> Callable[[World], None]:
    attr = f"{which}_platform"
    return lambda w: setattr(w, attr, replace(getattr(w, attr), **changes))  # type: ignore[arg-type]


S, T = Side.SOURCE, Side.TARGET
INDEPENDENT: tuple[Violation, ...] = (
    Violation(
        "name-in-use",
        _add_domain(other_domain(GUEST, 0x00144FF80100)),
        Code.NAME_IN_USE,
        T,
        "LDom ldg1 already exists on dt212-239",
    ),
    Violation(
        "target-migrating",
        _set("tgt_migrating", (GUEST,)),
        Code.MIGRATION_IN_PROGRESS,
        T,
        "already in progress on dt212-239",
    ),
    Violation(
        "source-migrating",
        _set("src_migrating", (GUEST,)),
        Code.MIGRATION_IN_PROGRESS,
        S,
        "LDom ldg1 is already being migrated",
    ),
    Violation("target-dr", _target_dr, Code.DELAYED_RECONFIG, T, "LDom primary on dt212-239 has a delayed"),
    Violation("source-dr", _source_dr, Code.DELAYED_RECONFIG, S, "LDom primary on src-host has a delayed"),
    Violation(
        "target-elastic", _set("tgt_power", "elastic"), Code.POWER_POLICY, T, "dt212-239 uses the elastic"
    ),
    Violation(
        "source-elastic", _set("src_power", "elastic"), Code.POWER_POLICY, S, "src-host uses the elastic"
    ),
    Violation("cpu-type", _platform("tgt", cpu_type="UltraSPARC T2"), Code.CPU_TYPE, T, "CPU type mismatch"),
    Violation("cpu-freq", _platform("tgt", cpu_mhz=1165), Code.CPU_FREQ, T, "CPU frequency mismatch"),
    Violation(
        "whole-core",
        _hold_one_strand_per_core,
        Code.WHOLE_CORE,
        T,
        "not enough free whole cores on dt212-239: need 1, have 0",
    ),
    Violation(
        "strands", _hold_all_but_four, Code.STRANDS, T, "not enough free strands on dt212-239: need 8, have"
    ),
    Violation("vds-service", _drop_service, Code.VDS_SERVICE, T, "Service aux-vds0 not found on dt212-239"),
    Violation("vdisk-volume", _drop_volume, Code.VDISK_VOLUME, T, "Volume vol2@primary-vds0 does not exist"),
    Violation(
        "vdsdev-options", _vol1_read_only, Code.VDSDEV_OPTIONS, T, "Volume vol1@primary-vds0 has options=ro"
    ),
    Violation(
        "vsw",
        _services(vsw=(Vsw(name="other-vsw0", mac=0x0003BA000102),)),
        Code.VSW,
        T,
        "Virtual switch primary-vsw0 not found",
    ),
    Violation("vcc", _services(vcc=()), Code.VCC_PORT, T, "No virtual console concentrator on dt212-239"),
    Violation(
        "console-group",
        _add_domain(other_domain("ldg9", 0x00144FF80200, vcons=Vcons(group=GUEST))),
        Code.CONSOLE_GROUP,
        T,
        "Console group ldg1 is already used by LDom ldg9",
    ),
    Violation(
        "mac",
        _add_domain(other_domain("ldg8", VNET_MAC)),
        Code.MAC_COLLISION,
        T,
        "MAC address 00:14:4f:f8:00:01 of vnet vnet1 of LDom ldg1 is already used by LDom ldg8",
    ),
    Violation(
        "target-firmware", _platform("tgt", firmware="7.1.0"), Code.FIRMWARE, T, "System firmware 7.1.0"
    ),
    Violation(
        "source-firmware", _platform("src", firmware="7.0.9"), Code.FIRMWARE, S, "System firmware 7.0.9"
    ),
    Violation(
        "service-domain",
        _guest(vcc=(Vcc(name="ldg1-vcc", port_min=6000, port_max=6010),)),
        Code.SERVICE_DOMAIN,
        S,
        "provides virtual services (vcc ldg1-vcc)",
    ),
    Violation(
        "phys-io", _guest(io=(IoAssignment(dev="pci@500"),)), Code.PHYS_IO, S, "has physical I/O (pci@500)"
    ),
    Violation("crypto", _guest_maus, Code.CRYPTO, S, "has 1 crypto unit(s) bound and 8 strands"),
    Violation(
        "os-compat", _profile(live_migration=False), Code.OS_COMPAT, S, "does not support live migration"
    ),
)
# Mutually exclusive alternatives (one cause each), drawn one at a time.
MEMORY: tuple[Violation, ...] = (
    Violation(
        "mem-free",
        _set("tgt_free", (MemRange(pa=0x200000000, size=G),)),
        Code.MEM_FREE,
        T,
        "not enough free memory on dt212-239: need 2G, have 1G",
    ),
    Violation(
        "mem-layout",
        _set("tgt_free", (MemRange(pa=0x108000000, size=G), MemRange(pa=0x188000000, size=G))),
        Code.MEM_LAYOUT,
        T,
        "Unable to bind 2G memory region at real address 0x8000000",
    ),
)
# In OpenBoot no OS runs, so the CPU-DR conditions inside the guest do not apply: also alternatives.
GUEST_STATE: tuple[Violation, ...] = (
    Violation(
        "openboot",
        lambda w: setattr(w, "guest", replace(w.guest, softstate="OpenBoot Running")),
        Code.OPENBOOT,
        S,
        "is not running an OS (OpenBoot Running) and has 8 virtual CPUs",
    ),
    Violation(
        "no-cpu-dr", _profile(cpu_dr=False), Code.CPU_DR, S, "does not support CPU dynamic reconfiguration"
    ),
    Violation(
        "bound-processes", _conditions(bound_processes=2), Code.CPU_DR, S, "2 process(es) in the guest"
    ),
    Violation("processor-sets", _conditions(processor_sets=1), Code.CPU_DR, S, "1 processor set(s)"),
)


# ---------------------------------------------------------------- tests
def test_base_scenario_passes() -> None:
    report = World().report()
    assert report.failures == ()
    assert report.warnings == ()


def test_each_violation_alone_is_reported() -> None:
    for v in (*INDEPENDENT, *MEMORY, *GUEST_STATE):
        w = World()
        v.apply(w)
        report = w.report()
        assert v.found_in(report), (v.name, report.failures)
        assert Code.INTERNAL not in report.codes, report.failures


def test_seed_example_exactly_one_memory_failure() -> None:
    """SPEC §3.1, 1.2 example: target free 0x108000000 1G and 0x188000000 1G; ldg-src has one block,
    RA 0x8000000 PA 0x208000000 2G."""
    w = World()
    w.guest = replace(w.guest, config=replace(w.guest.config, name="ldg-src", vcons=Vcons(group="ldg-src")))
    w.tgt_free = (MemRange(pa=0x108000000, size=G), MemRange(pa=0x188000000, size=G))
    src = source_facts(w.source_machine(), "ldg-src")
    report = run_all_checks(src, target_facts(w.target_machine()))
    assert [(f.code, f.side, f.message) for f in report.failures] == [
        (Code.MEM_LAYOUT, Side.TARGET, "Unable to bind 2G memory region at real address 0x8000000")
    ]


def test_seed_example_fits_once_one_range_is_large_enough() -> None:
    w = World()
    w.tgt_free = (MemRange(pa=0x108000000, size=G), MemRange(pa=0x188000000, size=2 * G))
    assert w.report().ok
