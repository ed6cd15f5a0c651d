"""Domain verbs: create, change the identity and policies of, and remove domains.

    ldm add-domain -i file
    ldm add-domain [mac-addr=num] [hostid=num] [failure-policy=ignore|panic|reset|stop]
                   [master=master-ldom1,...,master-ldom4] [cpu-arch=...] ldom
    ldm add-domain ldom...
    ldm set-domain -i file
    ldm set-domain [mac-addr=num] [hostid=num] [failure-policy=...] [master=[...]] [cpu-arch=...] ldom
    ldm remove-domain -a
    ldm remove-domain ldom...

A new domain is inactive with empty resource constraints.  What it does not say is allocated: a UUID, a MAC
from the automatic pool, and a host ID derived from that MAC (LDoms guests' host IDs look like 0x84faed88);
with `-i` the same holds for every field the XML leaves out ("" or 0), vnets' MACs included.

`set-domain`: failure-policy and master are the manager's own policies and change at once in any state;
mac-addr, hostid and cpu-arch are part of the domain's machine description, so they change only while the
domain is bound or inactive (for the active control domain: as a delayed reconfiguration).

While the control domain has a delayed reconfiguration pending, every change to another domain (creating
and removing included) is refused (SPEC §1.4).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ldoms import binding
from ldoms.errors import AlreadyExistsError, NotFoundError, OpPrereqError, StateError, UsageError
from ldoms.model.constraints_check import CPU_ARCHS, FAILURE_POLICIES, MAX_MASTERS
from ldoms.model.domain import CONTROL_DOMAIN, Domain, DomainConfig, DomainState
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import (
    check_grammar,
    check_name,
    check_not_migrating,
    check_other_domain_reconfig,
    delayed_update,
    effective_config,
    get_domain,
    is_delayed,
)
from ldoms.units import format_mac, parse_mac

DOMAIN_PROPS = ("mac-addr", "hostid", "failure-policy", "master", "cpu-arch")
_MD_PROPS = ("mac", "hostid", "cpu_arch")  # DomainConfig fields that live in the domain's MD


# ---------------------------------------------------------------- shared with lifecycle (bind/start -i)
def configs_from_xml(text: Any) -> tuple[DomainConfig, ...]:
    if not isinstance(text, str | bytes) or not text:
        raise UsageError("Option -i needs the contents of an XML constraints file")
    from ldoms.model.xmlio import constraints_from_xml  # imported late: the XML layer is optional here

    configs = tuple(constraints_from_xml(text))
    if not configs:
        raise UsageError("The XML file defines no domain")
    return configs


def _hostid_from_mac(mac: int) -> int:
    # LDoms derives a guest's host ID from its MAC: high bit set, low 28 bits of the MAC.
    return 0x80000000 | (mac & 0x0FFFFFFF)


def _rng(ctx: OpContext, name: str) -> random.Random:
    if ctx.random_seed is None:
        return random.Random()  # seeded from the OS
    return random.Random(f"{ctx.random_seed}:{name}")


def fill_identity(machine: Machine, cfg: DomainConfig, ctx: OpContext, taken: set[int]) -> DomainConfig:
    """Allocate what `cfg` leaves out: UUID, MAC (domain and vnets), host ID.  `taken` collects the MACs
    allocated earlier in the same request."""
    mac = cfg.mac
    if mac == 0:
        mac = binding.allocate_mac(machine, taken=taken)
        taken.add(mac)
    vnets = []
    for v in cfg.vnets:
        if v.mac == 0:
            v = replace(v, mac=binding.allocate_mac(machine, taken=taken))
            taken.add(v.mac)
        vnets.append(v)
    return replace(
        cfg,
        uuid=cfg.uuid or str(uuid.UUID(int=_rng(ctx, cfg.name).getrandbits(128), version=4)),
        mac=mac,
        hostid=cfg.hostid or _hostid_from_mac(mac),
        vnets=tuple(vnets),
    )


def check_new_configs(machine: Machine, configs: Iterable[DomainConfig]) -> None:
    """Refuse new domains whose names or explicit MACs clash, or whose masters do not exist."""
    configs = tuple(configs)
    names = [c.name for c in configs]
    in_use = binding.macs_in_use(machine)
    new_names = set(names)
    for i, cfg in enumerate(configs):
        check_name(cfg.name)
        if machine.find(cfg.name) is not None or cfg.name in names[:i]:
            raise AlreadyExistsError(f"LDom {cfg.name} already exists")
        check_other_domain_reconfig(machine, cfg.name)
        explicit = [cfg.mac, *(v.mac for v in cfg.vnets)]
        for mac in explicit:
            if mac and mac in in_use:
                raise AlreadyExistsError(
                    f"MAC address {format_mac(mac)} of LDom {cfg.name} is already in use"
                )
            in_use.add(mac)
        _check_masters(machine, cfg.name, cfg.master, extra=new_names)


def add_configs(machine: Machine, configs: Iterable[DomainConfig], ctx: OpContext) -> Machine:
    taken: set[int] = set()
    for cfg in configs:
        machine = machine.with_domain(Domain(config=fill_identity(machine, cfg, ctx, taken)))
    return machine


def _check_masters(machine: Machine, name: str, masters: tuple[str, ...], extra: Iterable[str] = ()) -> None:
    known = {d.name for d in machine.domains} | set(extra)
    for m in masters:
        if m == name:
            raise OpPrereqError(f"LDom {name} cannot be its own master")
        if m not in known:
            raise NotFoundError(f"Master LDom {m} of LDom {name} not found")
    # A master chain must not come back to the domain (the failure policy would loop).
    seen: set[str] = set()
    todo = list(masters)
    while todo:
        m = todo.pop()
        if m == name:
            raise OpPrereqError(
                f"LDom {name} cannot have master {', '.join(masters)}: the dependency is a cycle"
            )
        if m in seen:
            continue
        seen.add(m)
        dom = machine.find(m)
        if dom is not None:
            todo.extend(dom.config.master)


# ---------------------------------------------------------------- properties
@dataclass(frozen=True, slots=True)
class DomainProps:
    mac: int | None = None
    hostid: int | None = None
    failure_policy: str | None = None
    master: tuple[str, ...] | None = None
    cpu_arch: str | None = None

    def apply(self, cfg: DomainConfig, *, md: bool = True, policy: bool = True) -> DomainConfig:
        """`cfg` with the given properties: those in the MD (`md`), the manager's policies (`policy`)."""
        changes: dict[str, Any] = {}
        if md:
            for field in _MD_PROPS:
                value = getattr(self, field)
                if value is not None:
                    changes[field] = value
        if policy:
            if self.failure_policy is not None:
                changes["failure_policy"] = self.failure_policy
            if self.master is not None:
                changes["master"] = self.master
        return replace(cfg, **changes)

    @property
    def touches_md(self) -> bool:
        return any(getattr(self, f) is not None for f in _MD_PROPS)


def parse_props(request: Request, *, allow_empty_master: bool) -> DomainProps:
    values: dict[str, Any] = {}
    for key, text in request.props:
        if key == "mac-addr":
            values["mac"] = parse_mac(text)
        elif key == "hostid":
            values["hostid"] = _parse_hostid(text)
        elif key == "failure-policy":
            if text not in FAILURE_POLICIES:
                raise UsageError(
                    f"Invalid failure-policy '{text}': expected one of {', '.join(FAILURE_POLICIES)}"
                )
            values["failure_policy"] = text
        elif key == "master":
            values["master"] = _parse_master(text, allow_empty=allow_empty_master)
        elif key == "cpu-arch":
            if text not in CPU_ARCHS:
                raise UsageError(f"Invalid cpu-arch '{text}': expected one of {', '.join(CPU_ARCHS)}")
            values["cpu_arch"] = text
    return DomainProps(**values)


def _parse_hostid(text: str) -> int:
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 0)
    except ValueError:
        raise UsageError(f"Invalid hostid '{text}': expected a number such as 0x84faed88") from None
    if not 0 < value <= 0xFFFFFFFF:
        raise UsageError(f"Invalid hostid '{text}': it must be a non-zero 32-bit number")
    return value


def _parse_master(text: str, *, allow_empty: bool) -> tuple[str, ...]:
    if text == "":
        if not allow_empty:
            raise UsageError("Invalid master='': name one to four master domains")
        return ()
    names = tuple(n.strip() for n in text.split(","))
    if len(names) > MAX_MASTERS:
        raise UsageError(f"Invalid master={text}: at most {MAX_MASTERS} master domains")
    if len(set(names)) != len(names):
        raise UsageError(f"Invalid master={text}: a master domain is named twice")
    return tuple(check_name(n, "master LDom name") for n in names)


# ---------------------------------------------------------------- add-domain
@dataclass(frozen=True, slots=True)
class AddDomainArgs:
    configs: tuple[DomainConfig, ...]


@register
class AddDomain:
    spec = VerbSpec(
        name="add-domain",
        aliases=("add-dom", "create"),
        value_flags=("-i",),
        props=DOMAIN_PROPS,
        min_operands=0,
        usage=(
            "add-domain -i file | add-domain [mac-addr=num] [hostid=num] "
            "[failure-policy=ignore|panic|reset|stop] [master=master-ldom1,...,master-ldom4] "
            "[cpu-arch=generic|native] ldom | add-domain ldom..."
        ),
    )

    def check_arguments(self, request: Request) -> AddDomainArgs:
        check_grammar(request, self.spec)
        if "-i" in request.flags:
            if request.props or request.operands:
                raise UsageError(f"Option -i takes no other operand. Usage: ldm {self.spec.usage}")
            return AddDomainArgs(configs=configs_from_xml(request.flags["-i"]))
        if not request.operands:
            raise UsageError(f"Usage: ldm {self.spec.usage}")
        if request.props and len(request.operands) != 1:
            raise UsageError("Properties can be given when adding a single domain only")
        props = parse_props(request, allow_empty_master=False)
        configs = tuple(
            props.apply(DomainConfig(name=check_name(n), uuid="", hostid=0, mac=0)) for n in request.operands
        )
        return AddDomainArgs(configs=configs)

    def check_prereq(self, machine: Machine, args: AddDomainArgs, ctx: OpContext) -> None:
        check_new_configs(machine, args.configs)
        add_configs(machine, args.configs, ctx)  # the MAC pool may be exhausted

    def execute(self, machine: Machine, args: AddDomainArgs, ctx: OpContext) -> OpResult:
        return OpResult(machine=add_configs(machine, args.configs, ctx))


# ---------------------------------------------------------------- set-domain
@dataclass(frozen=True, slots=True)
class SetDomainArgs:
    ldom: str = ""
    props: DomainProps = DomainProps()
    configs: tuple[DomainConfig, ...] = ()  # -i


def _set_props(machine: Machine, dom: Domain, props: DomainProps) -> tuple[Machine, tuple[str, ...]]:
    """The machine after `set-domain props dom` (validated by `_check_set_props`)."""
    if props.touches_md and is_delayed(dom):
        # Policies now, the MD part at the reboot.
        now = replace(dom, config=props.apply(dom.config, md=False))
        return delayed_update(machine, now, props.apply(effective_config(dom)))
    new = replace(dom, config=props.apply(dom.config))
    if dom.pending is not None:
        new = replace(new, pending=props.apply(dom.pending))
    return machine.with_domain(new), ()


def _check_set_props(machine: Machine, dom: Domain, props: DomainProps) -> None:
    if props.touches_md and dom.state == DomainState.ACTIVE and not dom.config.is_control:
        raise StateError(
            f"The MAC address, host ID and cpu-arch of LDom {dom.name} can be changed only while it is bound "
            f"or inactive (it is active): stop it first (ldm stop-domain {dom.name})"
        )
    if props.mac is not None and props.mac != effective_config(dom).mac:
        if props.mac in binding.macs_in_use(machine):
            raise AlreadyExistsError(f"MAC address {format_mac(props.mac)} is already in use")
    if props.master is not None:
        if dom.config.is_control and props.master:
            raise OpPrereqError(f"LDom {CONTROL_DOMAIN} cannot have a master domain")
        _check_masters(machine, dom.name, props.master)


@register
class SetDomain:
    spec = VerbSpec(
        name="set-domain",
        aliases=("set-dom", "modify"),
        value_flags=("-i",),
        props=DOMAIN_PROPS,
        min_operands=0,
        max_operands=1,
        usage=(
            "set-domain -i file | set-domain [mac-addr=num] [hostid=num] "
            "[failure-policy=ignore|panic|reset|stop] [master=[master-ldom1,...,master-ldom4]] "
            "[cpu-arch=generic|native] ldom"
        ),
    )

    def check_arguments(self, request: Request) -> SetDomainArgs:
        check_grammar(request, self.spec)
        if "-i" in request.flags:
            if request.props or request.operands:
                raise UsageError(f"Option -i takes no other operand. Usage: ldm {self.spec.usage}")
            return SetDomainArgs(configs=configs_from_xml(request.flags["-i"]))
        if len(request.operands) != 1 or not request.props:
            raise UsageError(f"Usage: ldm {self.spec.usage}")
        return SetDomainArgs(
            ldom=check_name(request.operands[0]), props=parse_props(request, allow_empty_master=True)
        )

    def check_prereq(self, machine: Machine, args: SetDomainArgs, ctx: OpContext) -> None:
        self.execute(machine, args, ctx)  # pure: builds and drops the result, raising what it meets

    def execute(self, machine: Machine, args: SetDomainArgs, ctx: OpContext) -> OpResult:
        if args.configs:
            return OpResult(machine=self._replace_all(machine, args.configs, ctx))
        dom = get_domain(machine, args.ldom)
        check_not_migrating(dom.name, ctx)
        check_other_domain_reconfig(machine, dom.name)
        _check_set_props(machine, dom, args.props)
        new_machine, notices = _set_props(machine, dom, args.props)
        return OpResult(machine=new_machine, messages=notices)

    def _replace_all(self, machine: Machine, configs: tuple[DomainConfig, ...], ctx: OpContext) -> Machine:
        """`set-domain -i`: the XML replaces the whole definition of inactive domains."""
        taken: set[int] = set()
        for cfg in configs:
            dom = get_domain(machine, cfg.name)
            check_not_migrating(dom.name, ctx)
            check_other_domain_reconfig(machine, dom.name)
            if dom.state != DomainState.INACTIVE:
                raise StateError(
                    f"LDom {dom.name} is {dom.state.value}: set-domain -i replaces the constraints of "
                    "inactive domains only"
                )
            _check_masters(machine, dom.name, cfg.master)
            keep = replace(cfg, uuid=cfg.uuid or dom.config.uuid, mac=cfg.mac or dom.config.mac,
                           hostid=cfg.hostid or dom.config.hostid)
            machine = machine.with_domain(replace(dom, config=fill_identity(machine, keep, ctx, taken)))
        return machine


# ---------------------------------------------------------------- remove-domain
@dataclass(frozen=True, slots=True)
class RemoveDomainArgs:
    names: tuple[str, ...] = ()
    all: bool = False


def _service_users(machine: Machine, dom: Domain) -> tuple[str, str] | None:
    """(service, client domain) for a service of `dom` that another domain uses, if any."""
    cfg = effective_config(dom)
    services = {s.name for s in (*cfg.vds, *cfg.vsw, *cfg.vcc)}
    for other in machine.domains:
        if other.name == dom.name:
            continue
        ocfg = effective_config(other)
        used = [v.service for v in ocfg.vnets] + [d.service for d in ocfg.vdisks]
        if ocfg.vcons is not None and ocfg.vcons.service:
            used.append(ocfg.vcons.service)
        for svc in used:
            if svc in services:
                return svc, other.name
    return None


@register
class RemoveDomain:
    spec = VerbSpec(
        name="remove-domain",
        aliases=("rm-domain", "remove-dom", "rm-dom", "destroy"),
        flags=("-a",),
        min_operands=0,
        usage="remove-domain -a | remove-domain ldom...",
    )

    def check_arguments(self, request: Request) -> RemoveDomainArgs:
        check_grammar(request, self.spec)
        if request.flags.get("-a"):
            if request.operands:
                raise UsageError(f"Option -a takes no domain name. Usage: ldm {self.spec.usage}")
            return RemoveDomainArgs(all=True)
        if not request.operands:
            raise UsageError(f"Usage: ldm {self.spec.usage}")
        return RemoveDomainArgs(names=tuple(check_name(n) for n in request.operands))

    def _targets(self, machine: Machine, args: RemoveDomainArgs) -> tuple[Domain, ...]:
        if args.all:
            return tuple(d for d in machine.domains if not d.config.is_control)
        return tuple(get_domain(machine, n) for n in dict.fromkeys(args.names))

    def check_prereq(self, machine: Machine, args: RemoveDomainArgs, ctx: OpContext) -> None:
        targets = self._targets(machine, args)
        going = {d.name for d in targets}
        for dom in targets:
            if dom.config.is_control:
                raise OpPrereqError(f"LDom {dom.name} cannot be removed: it is the control domain")
            check_not_migrating(dom.name, ctx)
            check_other_domain_reconfig(machine, dom.name)
            if dom.state != DomainState.INACTIVE:
                raise StateError(
                    f"LDom {dom.name} is {dom.state.value}: only an inactive domain can be removed "
                    f"(ldm stop-domain {dom.name}; ldm unbind-domain {dom.name})"
                )
            for other in machine.domains:
                if other.name not in going and dom.name in other.config.master:
                    raise OpPrereqError(
                        f"LDom {dom.name} cannot be removed: it is the master of LDom {other.name}"
                    )
            use = _service_users(machine, dom)
            if use is not None and use[1] not in going:
                raise OpPrereqError(
                    f"LDom {dom.name} cannot be removed: its service {use[0]} is used by LDom {use[1]}"
                )

    def execute(self, machine: Machine, args: RemoveDomainArgs, ctx: OpContext) -> OpResult:
        for dom in self._targets(machine, args):
            machine = machine.without_domain(dom.name)
        return OpResult(machine=machine)
