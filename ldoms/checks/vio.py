"""Target-side virtual I/O rules (SPEC §3.1 Virtual I/O and NIU hybrid I/O, §3.2, §7 item 4).

Every service the domain uses must exist on the target under the same name: each vdisk's volume in a vds of
the same name, each vnet's vsw.  Active migrations also compare the vdsdev `options` and `mpgroup` (bound
ones do not: no runtime state crosses).  The console is re-created on the target: it needs a vcc with a free
port, and the domain's name becomes its console group, which must not clash.  MAC addresses must be unused
on the target.  An NIU hybrid request is a preference: without NIUs on the target it is only a warning.
"""

from __future__ import annotations

from collections.abc import Iterator

from ldoms.binding.held import holdings
from ldoms.checks.facts import SourceFacts, TargetFacts
from ldoms.checks.failure import CheckFailure, Code, Severity, Side
from ldoms.model.domain import Vds, VdsVolume, Vsw
from ldoms.model.machine import Machine
from ldoms.units import format_mac


def _fail(code: Code, message: str, **kw: str) -> CheckFailure:
    return CheckFailure(code=code, message=message, side=Side.TARGET, **kw)


def _target_vds(machine: Machine) -> dict[str, Vds]:
    return {s.name: s for d in machine.domains for s in d.config.vds}


def _target_vsw(machine: Machine) -> dict[str, Vsw]:
    return {s.name: s for d in machine.domains for s in d.config.vsw}


def _volume(vds: Vds, name: str) -> VdsVolume | None:
    return next((v for v in vds.volumes if v.name == name), None)


def check_vdisks(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """Each vdisk's volume must exist under the same volume and vds service names."""
    services = _target_vds(tgt.machine)
    for vd in src.domain.config.vdisks:
        svc = services.get(vd.service)
        ref = f"{vd.volume}@{vd.service}"
        if svc is None:
            yield _fail(
                Code.VDS_SERVICE,
                f"Service {vd.service} not found on {tgt.host_name}: vdisk {vd.name} of LDom {src.name} "
                f"needs volume {ref}",
                resource=f"vds {vd.service}",
                required=f"a vds named {vd.service}",
                remedy=f"'ldm add-vds {vd.service} <ldom>' on {tgt.host_name}",
            )
        elif _volume(svc, vd.volume) is None:
            yield _fail(
                Code.VDISK_VOLUME,
                f"Volume {ref} does not exist on {tgt.host_name}: vdisk {vd.name} of LDom {src.name} needs "
                "the same volume and service names on the target",
                resource=f"volume {ref}",
                required=f"volume {ref} exported to the same storage",
                remedy=f"'ldm add-vdsdev <backend> {ref}' on {tgt.host_name}",
            )


def _opts(vol: VdsVolume) -> str:
    return ",".join(vol.options) or "none"


def check_vdsdev_options(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """Active only: the target's vdsdev options and mpgroup must equal the source's."""
    services = _target_vds(tgt.machine)
    for vd in src.domain.config.vdisks:
        svc = services.get(vd.service)
        theirs = _volume(svc, vd.volume) if svc is not None else None
        ours = src.volume(vd.service, vd.volume)
        if theirs is None or ours is None:
            continue  # a missing volume is check_vdisks' finding
        if sorted(ours.options) == sorted(theirs.options) and ours.mpgroup == theirs.mpgroup:
            continue
        ref = f"{vd.volume}@{vd.service}"
        yield _fail(
            Code.VDSDEV_OPTIONS,
            f"Volume {ref} has options={_opts(theirs)} mpgroup={theirs.mpgroup or 'none'} on "
            f"{tgt.host_name} but options={_opts(ours)} mpgroup={ours.mpgroup or 'none'} on "
            f"{src.host_name}: an active migration needs equal vdsdev options and mpgroup",
            resource=f"volume {ref}",
            observed=f"options={_opts(theirs)} mpgroup={theirs.mpgroup or 'none'}",
            required=f"options={_opts(ours)} mpgroup={ours.mpgroup or 'none'}",
            remedy=f"'ldm set-vdsdev' on {tgt.host_name}, or migrate the domain bound",
        )


def check_vsw(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    switches = _target_vsw(tgt.machine)
    for vn in src.domain.config.vnets:
        if vn.service not in switches:
            yield _fail(
                Code.VSW,
                f"Virtual switch {vn.service} not found on {tgt.host_name}: vnet {vn.name} of LDom "
                f"{src.name} needs a vsw with the same name on the target",
                resource=f"vsw {vn.service}",
                required=f"a vsw named {vn.service}",
                remedy=f"'ldm add-vsw {vn.service} <ldom>' on {tgt.host_name}",
            )


def check_vcc(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """A vcc with at least one free port (the domain's own console settings are not carried over)."""
    vccs = [v for d in tgt.machine.domains for v in d.config.vcc]
    if not vccs:
        yield _fail(
            Code.VCC_PORT,
            f"No virtual console concentrator on {tgt.host_name}: LDom {src.name} needs a vcc with a "
            "free port",
            resource="vcc",
            required="a vcc with a free port",
            remedy=f"'ldm add-vcc port-range=5000-5100 primary-vcc0 primary' on {tgt.host_name}",
        )
        return
    taken = holdings(tgt.machine).console
    for v in vccs:
        if any((v.name, p) not in taken for p in range(v.port_min, v.port_max + 1)):
            return
    ranges = ", ".join(f"{v.name} {v.port_min}-{v.port_max}" for v in vccs)
    yield _fail(
        Code.VCC_PORT,
        f"No free console port on {tgt.host_name} ({ranges} all in use): LDom {src.name} needs a vcc with a "
        "free port",
        resource="vcc",
        observed=f"{ranges}: no free port",
        required="one free port",
        remedy="widen a vcc port range ('ldm set-vcc port-range=') or free a console",
    )


def check_console_group(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """The migrated domain's console group is its name; another domain may not already use that group."""
    group = src.name_on_target
    for d in tgt.machine.domains:
        if d.name == group or d.config.is_control:
            continue  # a domain of the same name is check_target_name's finding
        vc = d.config.vcons
        theirs = vc.group if vc is not None and vc.group else d.name
        if theirs == group:
            yield _fail(
                Code.CONSOLE_GROUP,
                f"Console group {group} is already used by LDom {d.name} on {tgt.host_name}: the migrated "
                "domain's console group is its name",
                resource=f"console group {group}",
                observed=f"used by LDom {d.name}",
                remedy=f"change the console group of LDom {d.name}, or migrate under another name",
            )


def _macs_on(machine: Machine) -> dict[int, str]:
    """Every MAC of the host -> who uses it (pending constraints included)."""
    used: dict[int, str] = {}
    for d in machine.domains:
        for cfg in (d.config, d.pending):
            if cfg is None:
                continue
            used.setdefault(cfg.mac, f"LDom {d.name}")
            for vn in cfg.vnets:
                used.setdefault(vn.mac, f"vnet {vn.name} of LDom {d.name}")
            for sw in cfg.vsw:
                used.setdefault(sw.mac, f"vsw {sw.name} of LDom {d.name}")
    return used


def check_mac_collisions(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    cfg = src.domain.config
    used = _macs_on(tgt.machine)
    mine = [(cfg.mac, f"LDom {src.name}")] + [
        (vn.mac, f"vnet {vn.name} of LDom {src.name}") for vn in cfg.vnets
    ]
    for mac, what in mine:
        if mac and mac in used:
            yield _fail(
                Code.MAC_COLLISION,
                f"MAC address {format_mac(mac)} of {what} is already used by {used[mac]} on {tgt.host_name}",
                resource=what,
                observed=f"{format_mac(mac)} used by {used[mac]}",
                required="a MAC address unused on the target",
                remedy="give the domain or vnet another MAC address ('mac-addr=')",
            )


def check_niu_hybrid(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    if tgt.platform.nius:
        return
    for vn in src.domain.config.vnets:
        if vn.hybrid:
            yield CheckFailure(
                code=Code.NIU_HYBRID,
                message=f"vnet {vn.name} of LDom {src.name} asks for NIU hybrid I/O but {tgt.host_name} has "
                "no NIU: the constraint is kept but not fulfilled",
                side=Side.TARGET,
                severity=Severity.WARNING,
                resource=f"vnet {vn.name}",
            )
