"""Virtual network verbs: the virtual switch service (vsw) and the guests' virtual network devices (vnet).

    ldm add-vsw [default-vlan-id=vlan-id] [pvid=port-vlan-id] [vid=vlan-id1,vlan-id2,...]
        [linkprop=phys-state] [mac-addr=num] [net-dev=device] [mode=sc] [mtu=size] [id=switch-id]
        vswitch-name ldom
    ldm set-vsw [pvid=[port-vlan-id]] [vid=[vlan-id1,...]] [mac-addr=num] [net-dev=[device]]
        [linkprop=[phys-state]] [mode=[sc]] [mtu=[size]] vswitch-name
    ldm remove-vsw [-f] vswitch-name
    ldm add-vnet [mac-addr=num] [mode=hybrid] [pvid=port-vlan-id] [vid=vlan-id1,...] [linkprop=phys-state]
        [mtu=size] [id=network-id] if-name vswitch-name ldom
    ldm set-vnet [mac-addr=num] [vswitch=vswitch-name] [mode=[hybrid]] [pvid=[port-vlan-id]]
        [linkprop=[phys-state]] [vid=[vlan-id1,...]] [mtu=[size]] if-name ldom
    ldm remove-vnet [-f] if-name ldom

Rules (see `vio_common` for the service/device split and the delayed-reconfiguration handling):

- MACs are unique on the host (domains, vnets, vsws); without `mac-addr=` one is taken from the automatic
  pool; an explicit one is checked for format and uniqueness;
- `switch@N` ids are allocated lowest-free among the owner's switches, `network@N` among the domain's vnets;
- mtu is 1500..16000, VLAN ids 1..4094; on `set-*` an empty value (`pvid=`, `vid=`, `mtu=`, `mode=`,
  `linkprop=`, `net-dev=`) returns the property to its default (1.3 syntax);
- a vnet must name an existing vsw when it is added or moved (`vswitch=`);
- on an active guest, vnets can be added and removed (virtual I/O DR) and their VLANs, mtu, link property
  and switch changed, but `mode=` (hybrid I/O) and `mac-addr=` are refused: they change what the running OS
  sees and LDoms makes them a delayed reconfiguration, which exists only on the control domain;
- `remove-vsw` refuses while vnets use the switch; `-f` removes it from under inactive domains only.
  `remove-vnet -f` is accepted for compatibility; removal never depends on the guest here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from ldoms.errors import AlreadyExistsError, NotFoundError, StateError, UsageError
from ldoms.model.domain import Domain, DomainConfig, DomainState, Vnet, Vsw
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import check_name, effective_config
from ldoms.ops.vio_common import (
    MTU_MIN,
    VLAN_MIN,
    add_service,
    apply_device_change,
    check_device_domain,
    check_device_name,
    check_mac_free,
    check_removable,
    check_request,
    check_service_name_free,
    check_service_owner,
    configs,
    drop_service,
    force_flag,
    get_service,
    lowest_free_id,
    new_mac,
    nothing_to_set,
    parse_device_id,
    parse_linkprop,
    parse_mac_prop,
    parse_mtu,
    parse_vid_list,
    parse_vlan,
    replace_service,
    update_owner,
    vnet_users,
)

T = TypeVar("T")


def _mode(text: str, allowed: str, *, empty_ok: bool) -> str:
    if text == allowed or (empty_ok and text == ""):
        return text
    wanted = f"'{allowed}' or empty" if empty_ok else f"'{allowed}'"
    raise UsageError(f"Invalid mode '{text}': expected {wanted}")


def _set_or_default(props: dict[str, str], key: str, parse: Callable[[str], T], default: T) -> T | None:
    """For set-*: None when not given, `default` when given empty, else the parsed value."""
    if key not in props:
        return None
    return default if props[key].strip() == "" else parse(props[key])


def _mac_given(props: dict[str, str]) -> int | None:
    if "mac-addr" not in props:
        return None
    if props["mac-addr"].strip() == "":
        raise UsageError("Invalid mac-addr '': expected six colon-separated octets")
    return parse_mac_prop(props["mac-addr"])


# ---------------------------------------------------------------- vsw
@dataclass(frozen=True, slots=True)
class VswArgs:
    name: str
    ldom: str = ""
    mac: int | None = None
    net_dev: str | None = None
    default_vlan_id: int | None = None
    pvid: int | None = None
    vids: tuple[int, ...] | None = None
    mode: str | None = None
    mtu: int | None = None
    id: int | None = None
    linkprop: str | None = None
    force: bool = False


def _switch_ids(owner: Domain) -> dict[int, str]:
    return {s.id: s.name for cfg in configs(owner) for s in cfg.vsw}


@register
class AddVsw:
    spec = VerbSpec(
        name="add-vsw",
        aliases=("add-vswitch",),
        props=("default-vlan-id", "pvid", "vid", "linkprop", "mac-addr", "net-dev", "mode", "mtu", "id"),
        min_operands=2,
        max_operands=2,
        usage="add-vsw [default-vlan-id=vlan-id] [pvid=port-vlan-id] [vid=vlan-id1,vlan-id2,...] "
        "[linkprop=phys-state] [mac-addr=num] [net-dev=device] [mode=sc] [mtu=size] [id=switch-id] "
        "vswitch-name ldom",
    )

    def check_arguments(self, request: Request) -> VswArgs:
        p = check_request(request, self.spec)
        name, ldom = request.operands
        return VswArgs(
            name=check_name(name, "vswitch name"),
            ldom=ldom,
            mac=_mac_given(p),
            net_dev=check_device_name(p["net-dev"], "net-dev") if "net-dev" in p else "",
            default_vlan_id=(
                parse_vlan(p["default-vlan-id"], "default-vlan-id") if "default-vlan-id" in p else VLAN_MIN
            ),
            pvid=parse_vlan(p["pvid"], "pvid") if "pvid" in p else 1,
            vids=parse_vid_list(p["vid"]) if "vid" in p else (),
            mode=_mode(p["mode"], "sc", empty_ok=False) if "mode" in p else "",
            mtu=parse_mtu(p["mtu"]) if "mtu" in p else MTU_MIN,
            id=parse_device_id(p["id"], "switch id") if "id" in p else None,
            linkprop=parse_linkprop(p["linkprop"]) if "linkprop" in p else "",
        )

    def check_prereq(self, machine: Machine, args: VswArgs, ctx: OpContext) -> None:
        owner = machine.domain(args.ldom)
        check_service_owner(machine, owner, ctx)
        check_service_name_free(machine, args.name)
        if args.mac is not None:
            check_mac_free(machine, args.mac)
        if args.id is not None and args.id in _switch_ids(owner):
            raise AlreadyExistsError(
                f"Device switch@{args.id} already exists in LDom {args.ldom} "
                f"(virtual switch {_switch_ids(owner)[args.id]})"
            )

    def execute(self, machine: Machine, args: VswArgs, ctx: OpContext) -> OpResult:
        owner = machine.domain(args.ldom)
        vsw = Vsw(
            name=args.name,
            mac=args.mac if args.mac is not None else new_mac(machine),
            net_dev=args.net_dev or "",
            default_vlan_id=args.default_vlan_id or VLAN_MIN,
            pvid=args.pvid or VLAN_MIN,
            vids=args.vids or (),
            mode=args.mode or "",
            mtu=args.mtu or MTU_MIN,
            id=args.id if args.id is not None else lowest_free_id(set(_switch_ids(owner))),
            linkprop=args.linkprop or "",
        )
        return OpResult(machine=update_owner(machine, owner, lambda c: add_service(c, "vsw", vsw)))


@register
class SetVsw:
    spec = VerbSpec(
        name="set-vsw",
        aliases=("set-vswitch",),
        props=("pvid", "vid", "mac-addr", "net-dev", "linkprop", "mode", "mtu"),
        min_operands=1,
        max_operands=1,
        usage="set-vsw [pvid=[port-vlan-id]] [vid=[vlan-id1,vlan-id2,...]] [mac-addr=num] [net-dev=[device]] "
        "[linkprop=[phys-state]] [mode=[sc]] [mtu=[size]] vswitch-name",
    )

    def check_arguments(self, request: Request) -> VswArgs:
        p = check_request(request, self.spec)
        if not p:
            raise nothing_to_set(self.spec.usage)
        return VswArgs(
            name=request.operands[0],
            mac=_mac_given(p),
            net_dev=_set_or_default(p, "net-dev", lambda t: check_device_name(t, "net-dev"), ""),
            pvid=_set_or_default(p, "pvid", lambda t: parse_vlan(t, "pvid"), VLAN_MIN),
            vids=parse_vid_list(p["vid"]) if "vid" in p else None,
            mode=_mode(p["mode"], "sc", empty_ok=True) if "mode" in p else None,
            mtu=_set_or_default(p, "mtu", parse_mtu, MTU_MIN),
            linkprop=parse_linkprop(p["linkprop"]) if "linkprop" in p else None,
        )

    def check_prereq(self, machine: Machine, args: VswArgs, ctx: OpContext) -> None:
        ref = get_service(machine, "vsw", args.name)
        check_service_owner(machine, ref.owner, ctx)
        assert isinstance(ref.service, Vsw)
        if args.mac is not None:
            check_mac_free(machine, args.mac, exclude=ref.service.mac)

    def execute(self, machine: Machine, args: VswArgs, ctx: OpContext) -> OpResult:
        ref = get_service(machine, "vsw", args.name)
        changes = {
            "mac": args.mac,
            "net_dev": args.net_dev,
            "pvid": args.pvid,
            "vids": args.vids,
            "mode": args.mode,
            "mtu": args.mtu,
            "linkprop": args.linkprop,
        }
        given = {k: v for k, v in changes.items() if v is not None}

        def change(cfg: DomainConfig) -> DomainConfig:
            for s in cfg.vsw:
                if s.name == args.name:
                    return replace_service(cfg, "vsw", replace(s, **given))
            return cfg

        return OpResult(machine=update_owner(machine, ref.owner, change))


@register
class RemoveVsw:
    spec = VerbSpec(
        name="remove-vsw",
        aliases=("rm-vsw", "remove-vswitch", "rm-vswitch"),
        flags=("-f",),
        min_operands=1,
        max_operands=1,
        usage="remove-vsw [-f] vswitch-name",
    )

    def check_arguments(self, request: Request) -> VswArgs:
        check_request(request, self.spec)
        return VswArgs(name=request.operands[0], force=force_flag(request))

    def check_prereq(self, machine: Machine, args: VswArgs, ctx: OpContext) -> None:
        ref = get_service(machine, "vsw", args.name)
        check_service_owner(machine, ref.owner, ctx)
        check_removable(f"Virtual switch {args.name}", vnet_users(machine, args.name), args.force, ctx)

    def execute(self, machine: Machine, args: VswArgs, ctx: OpContext) -> OpResult:
        ref = get_service(machine, "vsw", args.name)
        return OpResult(machine=update_owner(machine, ref.owner, lambda c: drop_service(c, "vsw", args.name)))


# ---------------------------------------------------------------- vnet
@dataclass(frozen=True, slots=True)
class VnetArgs:
    name: str
    ldom: str
    vswitch: str | None = None
    mac: int | None = None
    hybrid: bool | None = None
    pvid: int | None = None
    vids: tuple[int, ...] | None = None
    mtu: int | None = None
    id: int | None = None
    linkprop: str | None = None
    force: bool = False


def _find_vnet(cfg: DomainConfig, name: str) -> Vnet | None:
    for vn in cfg.vnets:
        if vn.name == name:
            return vn
    return None


def _get_vnet(dom: Domain, name: str) -> Vnet:
    vn = _find_vnet(effective_config(dom), name)
    if vn is None:
        raise NotFoundError(f"Vnet {name} does not exist in LDom {dom.name}")
    return vn


def _active_guest(dom: Domain) -> bool:
    return dom.state == DomainState.ACTIVE and not dom.config.is_control


@register
class AddVnet:
    spec = VerbSpec(
        name="add-vnet",
        props=("mac-addr", "mode", "pvid", "vid", "linkprop", "mtu", "id"),
        min_operands=3,
        max_operands=3,
        usage="add-vnet [mac-addr=num] [mode=hybrid] [pvid=port-vlan-id] [vid=vlan-id1,vlan-id2,...] "
        "[linkprop=phys-state] [mtu=size] [id=network-id] if-name vswitch-name ldom",
    )

    def check_arguments(self, request: Request) -> VnetArgs:
        p = check_request(request, self.spec)
        name, vswitch, ldom = request.operands
        return VnetArgs(
            name=check_name(name, "interface name"),
            ldom=ldom,
            vswitch=vswitch,
            mac=_mac_given(p),
            hybrid=_mode(p["mode"], "hybrid", empty_ok=False) == "hybrid" if "mode" in p else False,
            pvid=parse_vlan(p["pvid"], "pvid") if "pvid" in p else VLAN_MIN,
            vids=parse_vid_list(p["vid"]) if "vid" in p else (),
            mtu=parse_mtu(p["mtu"]) if "mtu" in p else MTU_MIN,
            id=parse_device_id(p["id"], "network id") if "id" in p else None,
            linkprop=parse_linkprop(p["linkprop"]) if "linkprop" in p else "",
        )

    def check_prereq(self, machine: Machine, args: VnetArgs, ctx: OpContext) -> None:
        dom = machine.domain(args.ldom)
        check_device_domain(machine, dom, ctx)
        cfg = effective_config(dom)
        if _find_vnet(cfg, args.name) is not None:
            raise AlreadyExistsError(f"Vnet {args.name} already exists in LDom {args.ldom}")
        assert args.vswitch is not None
        get_service(machine, "vsw", args.vswitch)
        if args.mac is not None:
            check_mac_free(machine, args.mac)
        if args.id is not None:
            for vn in cfg.vnets:
                if vn.id == args.id:
                    raise AlreadyExistsError(
                        f"Device network@{args.id} already exists in LDom {args.ldom} (vnet {vn.name})"
                    )

    def execute(self, machine: Machine, args: VnetArgs, ctx: OpContext) -> OpResult:
        dom = machine.domain(args.ldom)
        cfg = effective_config(dom)
        assert args.vswitch is not None
        vnet = Vnet(
            name=args.name,
            service=args.vswitch,
            mac=args.mac if args.mac is not None else new_mac(machine),
            hybrid=bool(args.hybrid),
            pvid=args.pvid or VLAN_MIN,
            vids=args.vids or (),
            mtu=args.mtu or MTU_MIN,
            id=args.id if args.id is not None else lowest_free_id({vn.id for vn in cfg.vnets}),
            linkprop=args.linkprop or "",
        )
        new, notices = apply_device_change(machine, dom, replace(cfg, vnets=(*cfg.vnets, vnet)))
        return OpResult(machine=new, messages=notices)


@register
class SetVnet:
    spec = VerbSpec(
        name="set-vnet",
        props=("mac-addr", "vswitch", "mode", "pvid", "linkprop", "vid", "mtu"),
        min_operands=2,
        max_operands=2,
        usage="set-vnet [mac-addr=num] [vswitch=vswitch-name] [mode=[hybrid]] [pvid=[port-vlan-id]] "
        "[linkprop=[phys-state]] [vid=[vlan-id1,vlan-id2,...]] [mtu=[size]] if-name ldom",
    )

    def check_arguments(self, request: Request) -> VnetArgs:
        p = check_request(request, self.spec)
        if not p:
            raise nothing_to_set(self.spec.usage)
        name, ldom = request.operands
        if "vswitch" in p and p["vswitch"].strip() == "":
            raise UsageError("Invalid vswitch '': a vnet must be connected to a virtual switch")
        return VnetArgs(
            name=name,
            ldom=ldom,
            vswitch=p.get("vswitch"),
            mac=_mac_given(p),
            hybrid=_mode(p["mode"], "hybrid", empty_ok=True) == "hybrid" if "mode" in p else None,
            pvid=_set_or_default(p, "pvid", lambda t: parse_vlan(t, "pvid"), VLAN_MIN),
            vids=parse_vid_list(p["vid"]) if "vid" in p else None,
            mtu=_set_or_default(p, "mtu", parse_mtu, MTU_MIN),
            linkprop=parse_linkprop(p["linkprop"]) if "linkprop" in p else None,
        )

    def check_prereq(self, machine: Machine, args: VnetArgs, ctx: OpContext) -> None:
        dom = machine.domain(args.ldom)
        vnet = _get_vnet(dom, args.name)
        check_device_domain(machine, dom, ctx)
        if _active_guest(dom):
            if args.hybrid is not None and args.hybrid != vnet.hybrid:
                raise StateError(
                    f"Cannot change mode= of vnet {args.name}: LDom {args.ldom} is active and hybrid I/O can "
                    "only change by delayed reconfiguration, which only the control domain supports; "
                    "stop the domain first"
                )
            if args.mac is not None and args.mac != vnet.mac:
                raise StateError(
                    f"Cannot change mac-addr of vnet {args.name}: LDom {args.ldom} is active; stop the "
                    "domain first"
                )
        if args.vswitch is not None:
            get_service(machine, "vsw", args.vswitch)
        if args.mac is not None:
            check_mac_free(machine, args.mac, exclude=vnet.mac)

    def execute(self, machine: Machine, args: VnetArgs, ctx: OpContext) -> OpResult:
        dom = machine.domain(args.ldom)
        cfg = effective_config(dom)
        changes = {
            "service": args.vswitch,
            "mac": args.mac,
            "hybrid": args.hybrid,
            "pvid": args.pvid,
            "vids": args.vids,
            "mtu": args.mtu,
            "linkprop": args.linkprop,
        }
        given = {k: v for k, v in changes.items() if v is not None}
        vnets = tuple(replace(vn, **given) if vn.name == args.name else vn for vn in cfg.vnets)
        new, notices = apply_device_change(machine, dom, replace(cfg, vnets=vnets))
        return OpResult(machine=new, messages=notices)


@register
class RemoveVnet:
    spec = VerbSpec(
        name="remove-vnet",
        aliases=("rm-vnet",),
        flags=("-f",),
        min_operands=2,
        max_operands=2,
        usage="remove-vnet [-f] if-name ldom",
    )

    def check_arguments(self, request: Request) -> VnetArgs:
        check_request(request, self.spec)
        name, ldom = request.operands
        return VnetArgs(name=name, ldom=ldom, force=force_flag(request))

    def check_prereq(self, machine: Machine, args: VnetArgs, ctx: OpContext) -> None:
        dom = machine.domain(args.ldom)
        _get_vnet(dom, args.name)
        check_device_domain(machine, dom, ctx)

    def execute(self, machine: Machine, args: VnetArgs, ctx: OpContext) -> OpResult:
        dom = machine.domain(args.ldom)
        cfg = effective_config(dom)
        new_cfg = replace(cfg, vnets=tuple(vn for vn in cfg.vnets if vn.name != args.name))
        new, notices = apply_device_change(machine, dom, new_cfg, removed=True)
        return OpResult(machine=new, messages=notices)
