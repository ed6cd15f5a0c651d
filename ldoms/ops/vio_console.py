"""Virtual console verbs: the console concentrator service (vcc) and each domain's console (vcons).

    ldm add-vcc port-range=x-y vcc-name ldom
    ldm set-vcc port-range=x-y vcc-name
    ldm remove-vcc [-f] vcc-name
    ldm set-vcons [port=[port-num]] [group=group] [service=vcc-server] ldom

Rules:

- a port range lies within 1..65535 and does not overlap another vcc's range on the host;
- `set-vcc` cannot shrink a range past a port a domain holds (bound or active) or asks for
  (`set-vcons port=`);
- `remove-vcc` refuses while domains use the concentrator (asked for by name, or holding a port from it);
  `-f` removes it from under inactive domains only (their console then falls back to any vcc at bind);
- `set-vcons` changes what the domain asks for; the port and concentrator are bound at `bind-domain`, so it is
  allowed only while the domain is inactive, and never on the control domain, whose console is the service
  processor's (`SP`).  An empty value returns a property to its default: `port=` any free port, `group=` the
  domain's name, `service=` any concentrator.  Whether an explicit port is free is decided at bind, as other
  inactive domains may ask for the same one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ldoms.errors import ResourceError, StateError, UsageError
from ldoms.model.domain import DomainConfig, DomainState, Vcc, Vcons
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import check_name, effective_config, require_state
from ldoms.ops.vio_common import (
    PORT_MAX,
    PORT_MIN,
    add_service,
    apply_device_change,
    check_device_domain,
    check_removable,
    check_request,
    check_service_name_free,
    check_service_owner,
    configs,
    console_users,
    drop_service,
    force_flag,
    get_service,
    nothing_to_set,
    replace_service,
    update_owner,
)


def parse_port_range(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*([0-9]{1,20})\s*-\s*([0-9]{1,20})\s*", text)
    if not m:
        raise UsageError(f"Invalid port-range '{text}': expected x-y, e.g. port-range=5000-5100")
    lo, hi = int(m.group(1)), int(m.group(2))
    if not (PORT_MIN <= lo <= PORT_MAX and PORT_MIN <= hi <= PORT_MAX):
        raise UsageError(f"Invalid port-range {lo}-{hi}: ports must be between {PORT_MIN} and {PORT_MAX}")
    if lo > hi:
        raise UsageError(f"Invalid port-range {lo}-{hi}: the first port must not exceed the last")
    return lo, hi


def parse_port(text: str) -> int:
    if not re.fullmatch(r"\s*[0-9]{1,20}\s*", text):
        raise UsageError(f"Invalid port '{text}': expected a port number between {PORT_MIN} and {PORT_MAX}")
    port = int(text)
    if not PORT_MIN <= port <= PORT_MAX:
        raise UsageError(f"Invalid port {port}: a port must be between {PORT_MIN} and {PORT_MAX}")
    return port


def all_vccs(machine: Machine) -> list[tuple[str, Vcc]]:
    """(owner name, vcc) for every concentrator on the host, current and pending constraints, once each."""
    seen: set[str] = set()
    out: list[tuple[str, Vcc]] = []
    for dom in machine.domains:
        for cfg in configs(dom):
            for vcc in cfg.vcc:
                if vcc.name not in seen:
                    seen.add(vcc.name)
                    out.append((dom.name, vcc))
    return out


def check_no_overlap(machine: Machine, name: str, lo: int, hi: int) -> None:
    for owner, vcc in all_vccs(machine):
        if vcc.name != name and lo <= vcc.port_max and vcc.port_min <= hi:
            raise ResourceError(
                f"Port range {lo}-{hi} overlaps port range {vcc.port_min}-{vcc.port_max} of virtual console "
                f"concentrator {vcc.name} in LDom {owner}: console port ranges must not overlap"
            )


# ---------------------------------------------------------------- vcc
@dataclass(frozen=True, slots=True)
class VccArgs:
    name: str
    ldom: str = ""
    port_min: int = 0
    port_max: int = 0
    force: bool = False


@register
class AddVcc:
    spec = VerbSpec(
        name="add-vcc",
        aliases=("add-vconscon",),
        props=("port-range",),
        min_operands=2,
        max_operands=2,
        usage="add-vcc port-range=x-y vcc-name ldom",
    )

    def check_arguments(self, request: Request) -> VccArgs:
        p = check_request(request, self.spec)
        if "port-range" not in p:
            raise UsageError(f"port-range=x-y is required. Usage: ldm {self.spec.usage}")
        lo, hi = parse_port_range(p["port-range"])
        name, ldom = request.operands
        return VccArgs(name=check_name(name, "vcc name"), ldom=ldom, port_min=lo, port_max=hi)

    def check_prereq(self, machine: Machine, args: VccArgs, ctx: OpContext) -> None:
        owner = machine.domain(args.ldom)
        check_service_owner(machine, owner, ctx)
        check_service_name_free(machine, args.name)
        check_no_overlap(machine, args.name, args.port_min, args.port_max)

    def execute(self, machine: Machine, args: VccArgs, ctx: OpContext) -> OpResult:
        owner = machine.domain(args.ldom)
        vcc = Vcc(name=args.name, port_min=args.port_min, port_max=args.port_max)
        return OpResult(machine=update_owner(machine, owner, lambda c: add_service(c, "vcc", vcc)))


@register
class SetVcc:
    spec = VerbSpec(
        name="set-vcc",
        aliases=("set-vconscon",),
        props=("port-range",),
        min_operands=1,
        max_operands=1,
        usage="set-vcc port-range=x-y vcc-name",
    )

    def check_arguments(self, request: Request) -> VccArgs:
        p = check_request(request, self.spec)
        if "port-range" not in p:
            raise UsageError(f"port-range=x-y is required. Usage: ldm {self.spec.usage}")
        lo, hi = parse_port_range(p["port-range"])
        return VccArgs(name=request.operands[0], port_min=lo, port_max=hi)

    def check_prereq(self, machine: Machine, args: VccArgs, ctx: OpContext) -> None:
        ref = get_service(machine, "vcc", args.name)
        check_service_owner(machine, ref.owner, ctx)
        check_no_overlap(machine, args.name, args.port_min, args.port_max)
        for dom in machine.domains:
            b = dom.bindings
            if b is not None and b.console_service == args.name and b.console_port:
                port, why = b.console_port, "holds"
            else:
                asked = [
                    c.vcons.port
                    for c in configs(dom)
                    if c.vcons is not None and c.vcons.service == args.name and c.vcons.port
                ]
                if not asked:
                    continue
                port, why = asked[0], "asks for"
            if not args.port_min <= port <= args.port_max:
                raise StateError(
                    f"LDom {dom.name} {why} console port {port} of {args.name}, outside the new port range "
                    f"{args.port_min}-{args.port_max}"
                )

    def execute(self, machine: Machine, args: VccArgs, ctx: OpContext) -> OpResult:
        ref = get_service(machine, "vcc", args.name)
        vcc = Vcc(name=args.name, port_min=args.port_min, port_max=args.port_max)
        return OpResult(machine=update_owner(machine, ref.owner, lambda c: replace_service(c, "vcc", vcc)))


@register
class RemoveVcc:
    spec = VerbSpec(
        name="remove-vcc",
        aliases=("rm-vcc", "remove-vconscon", "rm-vconscon"),
        flags=("-f",),
        min_operands=1,
        max_operands=1,
        usage="remove-vcc [-f] vcc-name",
    )

    def check_arguments(self, request: Request) -> VccArgs:
        check_request(request, self.spec)
        return VccArgs(name=request.operands[0], force=force_flag(request))

    def check_prereq(self, machine: Machine, args: VccArgs, ctx: OpContext) -> None:
        ref = get_service(machine, "vcc", args.name)
        check_service_owner(machine, ref.owner, ctx)
        users = console_users(machine, args.name)
        check_removable(f"Virtual console concentrator {args.name}", users, args.force, ctx)

    def execute(self, machine: Machine, args: VccArgs, ctx: OpContext) -> OpResult:
        ref = get_service(machine, "vcc", args.name)
        # Inactive domains that named it (only possible with -f) fall back to any concentrator.
        out = update_owner(machine, ref.owner, lambda c: drop_service(c, "vcc", args.name))
        for dom in out.domains:
            if dom.config.vcons is not None and dom.config.vcons.service == args.name:
                cfg = replace(dom.config, vcons=replace(dom.config.vcons, service=""))
                out = out.with_domain(replace(dom, config=cfg))
        return OpResult(machine=out)


# ---------------------------------------------------------------- vcons
@dataclass(frozen=True, slots=True)
class VconsArgs:
    ldom: str
    port: int | None = None  # None = not given; 0 = any free port
    group: str | None = None  # "" = the domain's name
    service: str | None = None  # "" = any concentrator


@register
class SetVcons:
    spec = VerbSpec(
        name="set-vcons",
        aliases=("set-vconsole",),
        props=("port", "group", "service"),
        min_operands=1,
        max_operands=1,
        usage="set-vcons [port=[port-num]] [group=group] [service=vcc-server] ldom",
    )

    def check_arguments(self, request: Request) -> VconsArgs:
        p = check_request(request, self.spec)
        if not p:
            raise nothing_to_set(self.spec.usage, "port=, group= and/or service=")
        port = None
        if "port" in p:
            port = 0 if p["port"].strip() == "" else parse_port(p["port"])
        group = p.get("group")
        return VconsArgs(
            ldom=request.operands[0],
            port=port,
            group=check_name(group, "console group") if group else group,
            service=p.get("service"),
        )

    def _merged(self, cfg: DomainConfig, args: VconsArgs) -> Vcons:
        cur = cfg.vcons or Vcons()
        return Vcons(
            group=cur.group if args.group is None else args.group,
            service=cur.service if args.service is None else args.service,
            port=cur.port if args.port is None else args.port,
        )

    def check_prereq(self, machine: Machine, args: VconsArgs, ctx: OpContext) -> None:
        dom = machine.domain(args.ldom)
        if dom.config.is_control:
            raise StateError(
                f"Cannot set the console of LDom {dom.name}: the control domain's console is the service "
                "processor console (SP)"
            )
        check_device_domain(machine, dom, ctx)
        require_state(dom, DomainState.INACTIVE, action="set-vcons")
        want = self._merged(effective_config(dom), args)
        if want.service:
            ref = get_service(machine, "vcc", want.service)
            assert isinstance(ref.service, Vcc)
            ranges = [ref.service]
        else:
            ranges = [vcc for _, vcc in all_vccs(machine)]
        if want.port and not any(v.port_min <= want.port <= v.port_max for v in ranges):
            offered = ", ".join(f"{v.name} {v.port_min}-{v.port_max}" for v in ranges) or "no concentrator"
            raise ResourceError(
                f"Console port {want.port} for LDom {dom.name} is outside the port range of every usable "
                f"virtual console concentrator ({offered})"
            )

    def execute(self, machine: Machine, args: VconsArgs, ctx: OpContext) -> OpResult:
        dom = machine.domain(args.ldom)
        cfg = effective_config(dom)
        new, notices = apply_device_change(machine, dom, replace(cfg, vcons=self._merged(cfg, args)))
        return OpResult(machine=new, messages=notices)
