"""The sections of long listings (`ldm list -l/-e/-o`, `list-bindings`, `list-services`), human and parseable.

Each section has a human renderer returning the section text (title line, indented header, rows) or None when
there is nothing to show, and a parseable renderer returning its `-p` lines (possibly none).  A bound or
active domain is shown from its bindings; an inactive one from its constraints (VCPU `COUNT`, MEMORY `SIZE`,
devices without peers or ports), as `list-constraints` does.

Column layouts follow the 1.2 book (Examples 9-3, 9-4, 9-10, 9-17).  Where the book shows nothing:
- MAU (crypto): `    ID     CPUSET` / `    0      (0, 1, 2, 3)`; parseable `|id=0|cpuset=0,1,2,3`.
- VCONS: `NAME SERVICE PORT`, NAME 17 and SERVICE 28 wide like DISK; the control domain has no human VCONS
  section and `VCONS|type=SP` in parseable form (Example 9-17).
- VARIABLES: `    name=value` rows, after MEMORY; parseable `VARIABLES` then `|name=value` lines.
- `nclients` (parseable VDS/VCC/VSW of `-l -p`) counts the clients held by bound or active domains.
- NETWORK peers: the vsw itself first, then every other vnet on the same vsw of a bound or active domain,
  in domain order then device order; parseable `|peer=name@ldom|mac-addr=...` lines after the VNET record.
- STATUS (SPEC 4.1, 7.1): `OPERATION PROGRESS SOURCE|TARGET`, shown only while a migration is recorded.
- `-o domain` shows STATE, FLAGS, SOFTSTATE, HOSTID, CONTROL (with the read-only `hardware-max-pagesize` and
  `effective-max-pagesize`, SPEC 3.1), DEPENDENCY, VARIABLES.  The effective page size is the hardware one:
  the model records no smaller page size per domain (SPEC 3.1 [REC]: E defaults to H).
- vsw DEVICE is always `switch@<id>` (the book leaves it blank for a routed vsw without net-dev).
- VLDC, VLDCC, VDPCS and VDPCC are not modelled and never shown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ldoms.cli.format.common import (
    INDENT,
    cols,
    console_label,
    flags_long,
    flags_short,
    is_bound,
    kv,
    migration_of,
    section,
    state_text,
    util_human,
    util_parseable,
    util_value,
    vcpu_count,
)
from ldoms.model.domain import Domain, DomainConfig, Vcc, Vds, Vnet, Vsw
from ldoms.model.machine import Machine
from ldoms.model.view import HostView
from ldoms.units import format_addr, format_mac, format_size


# ---------------------------------------------------------------- context: who provides which service
@dataclass(frozen=True, slots=True)
class Ctx:
    view: HostView
    vds: dict[str, tuple[str, Vds]] = field(default_factory=dict)
    vsw: dict[str, tuple[str, Vsw]] = field(default_factory=dict)
    vcc: dict[str, tuple[str, Vcc]] = field(default_factory=dict)

    @property
    def machine(self) -> Machine:
        return self.view.machine


def make_ctx(view: HostView) -> Ctx:
    ctx = Ctx(view)
    for dom in view.machine.domains:
        # The running services are the current constraints'; a service only pending (delayed
        # reconfiguration) is still indexed so that its clients can name its owner.
        for cfg in (dom.pending, dom.config):
            if cfg is None:
                continue
            for vds in cfg.vds:
                ctx.vds[vds.name] = (dom.name, vds)
            for vsw in cfg.vsw:
                ctx.vsw[vsw.name] = (dom.name, vsw)
            for vcc in cfg.vcc:
                ctx.vcc[vcc.name] = (dom.name, vcc)
    return ctx


def _at(name: str, table: dict[str, tuple[str, object]]) -> str:
    owner = table.get(name)
    return f"{name}@{owner[0]}" if owner else name


def _bound_domains(ctx: Ctx) -> list[Domain]:
    return [d for d in ctx.machine.domains if is_bound(d)]


# ---------------------------------------------------------------- domain identity (-e, -o domain)
def h_softstate(ctx: Ctx, dom: Domain) -> str | None:
    return f"SOFTSTATE\n{dom.softstate}\n" if dom.softstate else None


def p_softstate(ctx: Ctx, dom: Domain) -> list[str]:
    return [f"SOFTSTATE|softstate={dom.softstate}"]


def h_mac(ctx: Ctx, dom: Domain) -> str | None:
    return section("MAC", [INDENT + format_mac(dom.config.mac)])


def p_mac(ctx: Ctx, dom: Domain) -> list[str]:
    return [f"MAC|mac-addr={format_mac(dom.config.mac)}"]


def h_hostid(ctx: Ctx, dom: Domain) -> str | None:
    return section("HOSTID", [INDENT + format_addr(dom.config.hostid)])


def p_hostid(ctx: Ctx, dom: Domain) -> list[str]:
    return [f"HOSTID|hostid={format_addr(dom.config.hostid)}"]


def _control_props(ctx: Ctx, dom: Domain, *, pagesizes: bool, human: bool) -> list[tuple[str, str]]:
    props = [("failure-policy", dom.config.failure_policy)]
    if pagesizes:
        hw = ctx.machine.platform.hw_max_pagesize
        size = format_size(hw) if human else str(hw)
        props += [("hardware-max-pagesize", size), ("effective-max-pagesize", size)]
    return props


def h_control(ctx: Ctx, dom: Domain, *, pagesizes: bool = False) -> str | None:
    props = _control_props(ctx, dom, pagesizes=pagesizes, human=True)
    return section("CONTROL", [f"{INDENT}{k}={v}" for k, v in props])


def p_control(ctx: Ctx, dom: Domain, *, pagesizes: bool = False) -> list[str]:
    return ["CONTROL" + kv(*_control_props(ctx, dom, pagesizes=pagesizes, human=False))]


def h_dependency(ctx: Ctx, dom: Domain) -> str | None:
    return section("DEPENDENCY", [f"{INDENT}master={','.join(dom.config.master)}"])


def p_dependency(ctx: Ctx, dom: Domain) -> list[str]:
    return [f"DEPENDENCY|master={','.join(dom.config.master)}"]


def h_state(ctx: Ctx, dom: Domain) -> str | None:
    return section("STATE", [INDENT + state_text(ctx.view, dom)])


def p_state(ctx: Ctx, dom: Domain) -> list[str]:
    return [f"STATE|state={state_text(ctx.view, dom)}"]


def h_flags(ctx: Ctx, dom: Domain) -> str | None:
    return section("FLAGS", [INDENT + flags_short(dom)])


def p_flags(ctx: Ctx, dom: Domain) -> list[str]:
    return [f"FLAGS|flags={flags_long(dom)}"]


def h_variables(ctx: Ctx, dom: Domain) -> str | None:
    if not dom.config.variables:
        return None
    return section("VARIABLES", [f"{INDENT}{k}={v}" for k, v in dom.config.variables])


def p_variables(ctx: Ctx, dom: Domain) -> list[str]:
    if not dom.config.variables:
        return []
    return ["VARIABLES", *(f"|{k}={v}" for k, v in dom.config.variables)]


# ---------------------------------------------------------------- cpu, crypto, memory, physio
def h_vcpu(ctx: Ctx, dom: Domain) -> str | None:
    if not is_bound(dom) or dom.bindings is None:
        return section("VCPU", [INDENT + "COUNT", INDENT + str(vcpu_count(ctx.machine, dom))])
    util = util_human(ctx.view, dom)
    rows = [
        cols((str(vid), 7), (str(pid), 7), last=f"{util:>4}{'100%':>7}", indent=INDENT)
        for vid, pid in enumerate(dom.bindings.strands)
    ]
    return section("VCPU", [INDENT + "VID    PID    UTIL STRAND", *rows])


def p_vcpu(ctx: Ctx, dom: Domain) -> list[str]:
    if not is_bound(dom) or dom.bindings is None:
        return [f"VCPU|count={vcpu_count(ctx.machine, dom)}"]
    util = util_parseable(util_value(ctx.view, dom))
    return ["VCPU", *(kv(("vid", v), ("pid", p), ("util", util), ("strand", 100))
                      for v, p in enumerate(dom.bindings.strands))]


def _cpuset(maus: int, ctx: Ctx) -> tuple[int, ...]:
    for m in ctx.machine.platform.maus:
        if m.id == maus:
            return m.cpuset
    return ()


def h_mau(ctx: Ctx, dom: Domain) -> str | None:
    if not is_bound(dom) or dom.bindings is None:
        if not dom.config.mau:
            return None
        return section("MAU", [INDENT + "COUNT", INDENT + str(dom.config.mau)])
    if not dom.bindings.maus:
        return None
    rows = [
        cols((str(m), 7), last="(" + ", ".join(map(str, _cpuset(m, ctx))) + ")", indent=INDENT)
        for m in dom.bindings.maus
    ]
    return section("MAU", [INDENT + "ID     CPUSET", *rows])


def p_mau(ctx: Ctx, dom: Domain) -> list[str]:
    if not is_bound(dom) or dom.bindings is None:
        return [f"MAU|count={dom.config.mau}"] if dom.config.mau else []
    if not dom.bindings.maus:
        return []
    rows = [kv(("id", m), ("cpuset", ",".join(map(str, _cpuset(m, ctx))))) for m in dom.bindings.maus]
    return ["MAU", *rows]


def _constraint_memory(dom: Domain) -> int:
    return dom.config.memory or sum(b.size for b in dom.config.mblocks)


def h_memory(ctx: Ctx, dom: Domain) -> str | None:
    if not is_bound(dom) or dom.bindings is None:
        return section("MEMORY", [INDENT + "SIZE", INDENT + format_size(_constraint_memory(dom))])
    rows = [
        cols((format_addr(b.ra), 17), (format_addr(b.pa), 17), last=format_size(b.size), indent=INDENT)
        for b in dom.bindings.mblocks
    ]
    return section("MEMORY", [INDENT + "RA               PA               SIZE", *rows])


def p_memory(ctx: Ctx, dom: Domain) -> list[str]:
    if not is_bound(dom) or dom.bindings is None:
        return [f"MEMORY|size={_constraint_memory(dom)}"]
    return ["MEMORY", *(kv(("ra", format_addr(b.ra)), ("pa", format_addr(b.pa)), ("size", b.size))
                        for b in dom.bindings.mblocks)]


def pseudonym(machine: Machine, dev: str) -> str:
    for bus in (*machine.platform.pci_buses, *machine.platform.nius):
        if bus.dev == dev:
            return bus.pseudonym
    return ""


def _io_rows(dom: Domain) -> list[tuple[str, bool]]:
    """(device, bypass) of the buses the domain holds (bound) or asks for (inactive)."""
    bypass = {a.dev: a.bypass for a in dom.config.io}
    if is_bound(dom) and dom.bindings is not None:
        return [(dev, bypass.get(dev, False)) for dev in dom.bindings.io]
    return [(a.dev, a.bypass) for a in dom.config.io]


def h_io(ctx: Ctx, dom: Domain) -> str | None:
    rows = _io_rows(dom)
    if not rows:
        return None
    lines = [
        cols((dev, 17), (pseudonym(ctx.machine, dev), 17), last="bypass=on" if bp else "", indent=INDENT)
        for dev, bp in rows
    ]
    return section("IO", [INDENT + "DEVICE           PSEUDONYM        OPTIONS", *lines])


def p_io(ctx: Ctx, dom: Domain) -> list[str]:
    rows = _io_rows(dom)
    if not rows:
        return []
    return ["IO", *(kv(("dev", dev), ("alias", pseudonym(ctx.machine, dev))) + ("|bypass=on" if bp else "")
                    for dev, bp in rows)]


# ---------------------------------------------------------------- services (vcc, vsw, vds)
def _clients(ctx: Ctx, pick: Callable[[DomainConfig], int]) -> int:
    return sum(pick(d.config) for d in _bound_domains(ctx))


def vcc_clients(ctx: Ctx, name: str) -> int:
    return sum(
        1 for d in _bound_domains(ctx) if d.bindings is not None and d.bindings.console_service == name
    )


def h_vcc(ctx: Ctx, dom: Domain) -> str | None:
    if not dom.config.vcc:
        return None
    rows = [cols((v.name, 17), last=f"{v.port_min}-{v.port_max}", indent=INDENT) for v in dom.config.vcc]
    return section("VCC", [INDENT + "NAME             PORT-RANGE", *rows])


def p_vcc(ctx: Ctx, dom: Domain, *, nclients: bool = True) -> list[str]:
    out = []
    for v in dom.config.vcc:
        n = f"|nclients={vcc_clients(ctx, v.name)}" if nclients else ""
        out.append(f"VCC|name={v.name}{n}|port-range={v.port_min}-{v.port_max}")
    return out


def h_vsw(ctx: Ctx, dom: Domain) -> str | None:
    if not dom.config.vsw:
        return None
    rows = [
        cols((v.name, 17), (format_mac(v.mac), 18), (v.net_dev, 10), (f"switch@{v.id}", 10), last=v.mode,
             indent=INDENT)
        for v in dom.config.vsw
    ]
    return section("VSW", [INDENT + "NAME             MAC               NET-DEV   DEVICE    MODE", *rows])


def p_vsw(ctx: Ctx, dom: Domain, *, nclients: bool = True) -> list[str]:
    out = []
    for v in dom.config.vsw:
        n = _clients(ctx, lambda c, name=v.name: sum(1 for x in c.vnets if x.service == name))
        head = f"VSW|name={v.name}" + (f"|nclients={n}" if nclients else "")
        out.append(head + kv(("mac-addr", format_mac(v.mac)), ("net-dev", v.net_dev),
                             ("dev", f"switch@{v.id}"), ("mode", v.mode)))
    return out


def h_vds(ctx: Ctx, dom: Domain) -> str | None:
    if not dom.config.vds:
        return None
    rows: list[str] = []
    for vds in dom.config.vds:
        if not vds.volumes:
            rows.append(INDENT + vds.name)
        for i, vol in enumerate(vds.volumes):
            rows.append(cols((vds.name if i == 0 else "", 17), (vol.name, 15), (",".join(vol.options), 17),
                             last=vol.backend, indent=INDENT))
    return section("VDS", [INDENT + "NAME             VOLUME         OPTIONS          DEVICE", *rows])


def p_vds(ctx: Ctx, dom: Domain, *, nclients: bool = True) -> list[str]:
    out: list[str] = []
    for vds in dom.config.vds:
        n = _clients(ctx, lambda c, name=vds.name: sum(1 for x in c.vdisks if x.service == name))
        out.append(f"VDS|name={vds.name}" + (f"|nclients={n}" if nclients else ""))
        out += [kv(("vol", v.name), ("opts", ",".join(v.options)), ("dev", v.backend)) for v in vds.volumes]
    return out


# ---------------------------------------------------------------- guest devices (network, disk, console)
def peers(ctx: Ctx, dom: Domain, vnet: Vnet) -> list[tuple[str, int]]:
    """The other endpoints on the vnet's switch, as (name@ldom, mac); none unless the domain is bound."""
    if not is_bound(dom):
        return []
    out: list[tuple[str, int]] = []
    owner = ctx.vsw.get(vnet.service)
    if owner is not None:
        out.append((f"{vnet.service}@{owner[0]}", owner[1].mac))
    for other in _bound_domains(ctx):
        for w in other.config.vnets:
            if w.service == vnet.service and not (other.name == dom.name and w.name == vnet.name):
                out.append((f"{w.name}@{other.name}", w.mac))
    return out


def h_network(ctx: Ctx, dom: Domain) -> str | None:
    if not dom.config.vnets:
        return None
    lines: list[str] = []
    for v in dom.config.vnets:
        lines.append(INDENT + "NAME             SERVICE                   DEVICE     MAC")
        lines.append(cols((v.name, 17), (_at(v.service, ctx.vsw), 26), (f"network@{v.id}", 11),
                          last=format_mac(v.mac), indent=INDENT))
        plist = peers(ctx, dom, v)
        if plist:
            lines.append(INDENT * 2 + "PEER                        MAC")
            lines += [cols((p, 28), last=format_mac(mac), indent=INDENT * 2) for p, mac in plist]
    return section("NETWORK", lines)


def p_network(ctx: Ctx, dom: Domain) -> list[str]:
    out: list[str] = []
    for v in dom.config.vnets:
        out.append("VNET" + kv(
            ("name", v.name), ("dev", f"network@{v.id}"), ("service", _at(v.service, ctx.vsw)),
            ("mac-addr", format_mac(v.mac)), ("pvid", v.pvid), ("vid", ",".join(map(str, v.vids))),
            ("mtu", v.mtu),
        ))
        out += [kv(("peer", p), ("mac-addr", format_mac(mac))) for p, mac in peers(ctx, dom, v)]
    return out


def _server(ctx: Ctx, service: str) -> str:
    owner = ctx.vds.get(service)
    return owner[0] if owner else ""


def h_disk(ctx: Ctx, dom: Domain) -> str | None:
    if not dom.config.vdisks:
        return None
    rows = [
        cols((d.name, 17), (f"{d.volume}@{d.service}", 28), (f"disk@{d.id}", 11),
             last=_server(ctx, d.service), indent=INDENT)
        for d in dom.config.vdisks
    ]
    return section("DISK", [INDENT + "NAME             VOLUME                      DEVICE     SERVER", *rows])


def p_disk(ctx: Ctx, dom: Domain) -> list[str]:
    return [
        "VDISK" + kv(("name", d.name), ("vol", f"{d.volume}@{d.service}"), ("timeout", d.timeout or ""),
                     ("dev", f"disk@{d.id}"), ("server", _server(ctx, d.service)))
        for d in dom.config.vdisks
    ]


def _vcons(ctx: Ctx, dom: Domain) -> tuple[str, str, str] | None:
    """(group, service@ldom, port) of a guest's console, or None for the control domain."""
    if dom.config.is_control:
        return None
    want = dom.config.vcons
    group = (want.group if want else "") or dom.name
    b = dom.bindings if is_bound(dom) else None
    service = (b.console_service if b else "") or (want.service if want else "")
    port = b.console_port if b and b.console_port else (want.port if want else 0)
    if not service and not port and want is None and b is None:
        return None
    return group, _at(service, ctx.vcc) if service else "", str(port) if port else ""


def h_vcons(ctx: Ctx, dom: Domain) -> str | None:
    c = _vcons(ctx, dom)
    if c is None:
        return None
    group, service, port = c
    row = cols((group, 17), (service, 28), last=port, indent=INDENT)
    return section("VCONS", [INDENT + "NAME             SERVICE                     PORT", row])


def p_vcons(ctx: Ctx, dom: Domain) -> list[str]:
    if dom.config.is_control:
        return [f"VCONS|type={console_label(ctx.view)}"]
    c = _vcons(ctx, dom)
    if c is None:
        return []
    group, service, port = c
    return ["VCONS" + kv(("group", group), ("service", service), ("port", port))]


# ---------------------------------------------------------------- migration status (-o status)
def h_status(ctx: Ctx, dom: Domain) -> str | None:
    mig = migration_of(ctx.view, dom.name)
    if mig is None:
        return None
    peer_head = "TARGET" if mig.role == "source" else "SOURCE"
    row = cols(("migration", 13), (f"{mig.progress}%", 12), last=mig.peer, indent=INDENT)
    return section("STATUS", [INDENT + f"OPERATION    PROGRESS    {peer_head}", row])


def p_status(ctx: Ctx, dom: Domain) -> list[str]:
    mig = migration_of(ctx.view, dom.name)
    if mig is None:
        return []
    peer_key = "target" if mig.role == "source" else "source"
    error = "yes" if mig.error else "no"
    row = kv(("op", "migration"), ("progress", mig.progress), ("error", error), (peer_key, mig.peer))
    return ["STATUS", row]
