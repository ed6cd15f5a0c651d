"""Lifecycle verbs: inactive -> bound -> active and back (SPEC §1.3).

    ldm bind-domain (-i file | ldom)          ldm unbind-domain ldom
    ldm start-domain (-a | -i file | ldom...) ldm stop-domain [-f] (-a | ldom...)

`bind` reserves every resource the constraints ask for (all or none, `bind_domain`); `start` makes the
daemon start the guest (effect `StartGuest`); `stop` makes it stop the guest (`StopGuest`) and keeps the
resources.  Stopping `primary` is its reboot: the control domain stays active, and a pending delayed
reconfiguration takes effect (`rebind_domain` with the pending constraints).  A reboot also ends what LDoms
keeps "until the domain reboots": the strands reserved after a 1.2-style migration and the disabled CPU DR.

While a migration runs on this host, bind and stop of any domain are refused, and every change to the
migrating domain (SPEC §3.1).  Binding another domain while `primary` has a delayed reconfiguration pending is
refused like any other change to it; start and stop are not reconfigurations and stay allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ldoms import binding
from ldoms.errors import OpPrereqError, StateError, UsageError
from ldoms.model.domain import CONTROL_DOMAIN, Bindings, Domain, DomainConfig, DomainState, MigrationRole
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, StartGuest, StopGuest, VerbSpec, register
from ldoms.ops.common import (
    check_bind_stop_allowed,
    check_grammar,
    check_name,
    check_not_migrating,
    check_other_domain_reconfig,
    get_domain,
)
from ldoms.ops.domains import add_configs, check_new_configs, configs_from_xml

SOFTSTATE_RUNNING = "Solaris running"


@dataclass(frozen=True, slots=True)
class LifecycleArgs:
    names: tuple[str, ...] = ()
    all: bool = False
    force: bool = False
    configs: tuple[DomainConfig, ...] = ()  # -i: define these domains first


def _names_or_xml(request: Request, usage: str, *, allow_all: bool, single: bool) -> LifecycleArgs:
    if "-i" in request.flags:
        if request.operands or request.flags.get("-a"):
            raise UsageError(f"Option -i takes no other operand. Usage: ldm {usage}")
        configs = configs_from_xml(request.flags["-i"])
        if single and len(configs) != 1:
            raise UsageError(f"The XML file defines {len(configs)} domains: bind-domain -i takes one")
        return LifecycleArgs(names=tuple(c.name for c in configs), configs=configs)
    if allow_all and request.flags.get("-a"):
        if request.operands:
            raise UsageError(f"Option -a takes no domain name. Usage: ldm {usage}")
        return LifecycleArgs(all=True, force=bool(request.flags.get("-f")))
    if not request.operands or (single and len(request.operands) != 1):
        raise UsageError(f"Usage: ldm {usage}")
    names = tuple(dict.fromkeys(check_name(n) for n in request.operands))
    return LifecycleArgs(names=names, force=bool(request.flags.get("-f")))


def _with_defined(machine: Machine, args: LifecycleArgs, ctx: OpContext) -> Machine:
    """The machine with the domains of `-i` added (checked as add-domain -i checks them)."""
    if not args.configs:
        return machine
    check_new_configs(machine, args.configs)
    return add_configs(machine, args.configs, ctx)


def _bind(machine: Machine, dom: Domain, ctx: OpContext) -> Machine:
    check_not_migrating(dom.name, ctx)
    check_other_domain_reconfig(machine, dom.name)
    if dom.state != DomainState.INACTIVE:
        raise StateError(
            f"LDom {dom.name} is already {dom.state.value}: only an inactive domain can be bound"
        )
    cfg = dom.config
    if cfg.vcpus <= 0:
        raise OpPrereqError(
            f"LDom {dom.name} has no virtual CPUs: give it some first (ldm set-vcpu N {dom.name})"
        )
    if cfg.memory <= 0 and not cfg.mblocks:
        raise OpPrereqError(
            f"LDom {dom.name} has no memory: give it some first (ldm set-memory SIZE {dom.name})"
        )
    bindings = binding.bind_domain(machine, cfg)
    return machine.with_domain(replace(dom, state=DomainState.BOUND, bindings=bindings))


def _start(machine: Machine, dom: Domain, ctx: OpContext) -> Machine:
    check_not_migrating(dom.name, ctx)
    if dom.state == DomainState.ACTIVE:
        raise StateError(f"LDom {dom.name} is already active")
    if dom.state != DomainState.BOUND:
        raise StateError(f"LDom {dom.name} is not bound: bind it first (ldm bind-domain {dom.name})")
    started = replace(
        dom,
        state=DomainState.ACTIVE,
        started_at=ctx.now,
        softstate=SOFTSTATE_RUNNING,
        cpu_dr_disabled=False,
    )
    return machine.with_domain(started)


def _rebooted(bindings: Bindings | None) -> Bindings | None:
    # Strands held back after a 1.2-style migration are released when the domain's OS instance ends.
    return replace(bindings, reserved_strands=()) if bindings is not None else None


def _stop(machine: Machine, dom: Domain, ctx: OpContext) -> tuple[Machine, str]:
    check_not_migrating(dom.name, ctx)
    if dom.state != DomainState.ACTIVE:
        raise StateError(f"LDom {dom.name} is not active (it is {dom.state.value}): it is already stopped")
    if dom.config.is_control:
        return _reboot_control(machine, dom, ctx)
    stopped = replace(
        dom,
        state=DomainState.BOUND,
        started_at=0.0,
        softstate="",
        cpu_dr_disabled=False,
        bindings=_rebooted(dom.bindings),
    )
    return machine.with_domain(stopped), f"LDom {dom.name} stopped"


def _reboot_control(machine: Machine, dom: Domain, ctx: OpContext) -> tuple[Machine, str]:
    """Stopping the control domain reboots it: it stays active; a delayed reconfiguration takes effect."""
    config, bindings = dom.config, dom.bindings
    if dom.pending is not None:
        config = dom.pending
        bindings = binding.rebind_domain(machine, dom, config)
        note = (
            f"LDom {dom.name} rebooted (stopping the control domain reboots it; it stays active): "
            "the delayed reconfiguration took effect"
        )
    else:
        note = f"LDom {dom.name} rebooted (stopping the control domain reboots it; it stays active)"
    rebooted = replace(
        dom,
        config=config,
        bindings=_rebooted(bindings),
        pending=None,
        pending_vio_removed=False,
        started_at=ctx.now,
        softstate=SOFTSTATE_RUNNING,
        cpu_dr_disabled=False,
    )
    return machine.with_domain(rebooted), note


# ---------------------------------------------------------------- verbs
@register
class BindDomain:
    spec = VerbSpec(
        name="bind-domain",
        aliases=("bind", "bind-dom"),
        value_flags=("-i",),
        min_operands=0,
        max_operands=1,
        usage="bind-domain (-i file | ldom)",
    )

    def check_arguments(self, request: Request) -> LifecycleArgs:
        check_grammar(request, self.spec)
        return _names_or_xml(request, self.spec.usage, allow_all=False, single=True)

    def check_prereq(self, machine: Machine, args: LifecycleArgs, ctx: OpContext) -> None:
        self.execute(machine, args, ctx)  # pure: validates by building

    def execute(self, machine: Machine, args: LifecycleArgs, ctx: OpContext) -> OpResult:
        check_bind_stop_allowed(ctx, "bind")
        machine = _with_defined(machine, args, ctx)
        return OpResult(machine=_bind(machine, get_domain(machine, args.names[0]), ctx))


@register
class UnbindDomain:
    spec = VerbSpec(
        name="unbind-domain",
        aliases=("unbind", "unbind-dom"),
        min_operands=1,
        max_operands=1,
        usage="unbind-domain ldom",
    )

    def check_arguments(self, request: Request) -> LifecycleArgs:
        check_grammar(request, self.spec)
        return LifecycleArgs(names=(check_name(request.operands[0]),))

    def check_prereq(self, machine: Machine, args: LifecycleArgs, ctx: OpContext) -> None:
        dom = get_domain(machine, args.names[0])
        check_not_migrating(dom.name, ctx)
        if dom.state == DomainState.ACTIVE:
            raise StateError(f"LDom {dom.name} is active: stop it first (ldm stop-domain {dom.name})")
        if dom.state != DomainState.BOUND:
            raise StateError(f"LDom {dom.name} is not bound")

    def execute(self, machine: Machine, args: LifecycleArgs, ctx: OpContext) -> OpResult:
        dom = get_domain(machine, args.names[0])
        unbound = replace(dom, state=DomainState.INACTIVE, bindings=None, cpu_dr_disabled=False)
        return OpResult(machine=machine.with_domain(unbound))


@register
class StartDomain:
    spec = VerbSpec(
        name="start-domain",
        aliases=("start", "start-dom"),
        flags=("-a",),
        value_flags=("-i",),
        min_operands=0,
        usage="start-domain (-a | -i file | ldom...)",
    )

    def check_arguments(self, request: Request) -> LifecycleArgs:
        check_grammar(request, self.spec)
        return _names_or_xml(request, self.spec.usage, allow_all=True, single=False)

    def _targets(self, machine: Machine, args: LifecycleArgs, ctx: OpContext) -> tuple[str, ...]:
        if args.all:
            # Every bound guest that no migration holds (a migration's target shell is bound too).
            return tuple(
                d.name for d in machine.domains
                if d.state == DomainState.BOUND and not d.config.is_control
                and d.migration == MigrationRole.NONE and d.name not in ctx.migrating
            )
        return args.names

    def check_prereq(self, machine: Machine, args: LifecycleArgs, ctx: OpContext) -> None:
        self.execute(machine, args, ctx)

    def execute(self, machine: Machine, args: LifecycleArgs, ctx: OpContext) -> OpResult:
        if args.configs:
            check_bind_stop_allowed(ctx, "bind")
            machine = _with_defined(machine, args, ctx)
            for name in args.names:
                machine = _bind(machine, get_domain(machine, name), ctx)
        names = self._targets(machine, args, ctx)
        for name in names:
            machine = _start(machine, get_domain(machine, name), ctx)
        return OpResult(
            machine=machine,
            messages=tuple(f"LDom {n} started" for n in names),
            effects=tuple(StartGuest(domain=n) for n in names),
        )


@register
class StopDomain:
    spec = VerbSpec(
        name="stop-domain",
        aliases=("stop", "stop-dom"),
        flags=("-f", "-a"),
        min_operands=0,
        usage="stop-domain [-f] (-a | ldom...)",
    )

    def check_arguments(self, request: Request) -> LifecycleArgs:
        check_grammar(request, self.spec)
        return _names_or_xml(request, self.spec.usage, allow_all=True, single=False)

    def _targets(self, machine: Machine, args: LifecycleArgs) -> tuple[str, ...]:
        if args.all:
            # -a stops the guests; the control domain reboots only when named.
            return tuple(
                d.name for d in machine.domains if d.state == DomainState.ACTIVE and not d.config.is_control
            )
        return args.names

    def check_prereq(self, machine: Machine, args: LifecycleArgs, ctx: OpContext) -> None:
        self.execute(machine, args, ctx)

    def execute(self, machine: Machine, args: LifecycleArgs, ctx: OpContext) -> OpResult:
        check_bind_stop_allowed(ctx, "stop")
        messages: list[str] = []
        effects: list[StopGuest] = []
        for name in self._targets(machine, args):
            machine, note = _stop(machine, get_domain(machine, name), ctx)
            messages.append(note)
            if name != CONTROL_DOMAIN:
                effects.append(StopGuest(domain=name))
        return OpResult(machine=machine, messages=tuple(messages), effects=tuple(effects))
