"""SP configurations: named snapshots of the whole domain set, kept by the service processor.

    ldm add-spconfig config-name      ldm set-spconfig config-name
    ldm remove-spconfig config-name   ldm list-spconfig

`add-spconfig` saves the running configuration (every domain, with any pending delayed reconfiguration, so
that LDoms' usual "ldm add-config initial; reboot" keeps the shrunk control domain) under a new name and
makes it both the current and the next power-on configuration (refused while a migration runs: the snapshot
would catch a domain half-way between two hosts).  `set-spconfig` chooses the configuration the
next power-on uses.  `factory-default` always exists and cannot be removed.  The SP holds at most eight
configurations, `factory-default` included; names are up to 64 characters.

Removing the configuration marked current or next-poweron moves that mark back to `factory-default`, and the
running configuration is then reported as not saved (`spconfig_modified`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ldoms.errors import AlreadyExistsError, BusyError, NotFoundError, OpPrereqError, ResourceError
from ldoms.model.machine import Machine, SpConfig
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import check_grammar, check_name

FACTORY_DEFAULT = "factory-default"
MAX_SPCONFIGS = 8  # the SP's limit, factory-default included


@dataclass(frozen=True, slots=True)
class SpConfigArgs:
    name: str = ""


def _names(machine: Machine) -> list[str]:
    return [FACTORY_DEFAULT, *(c.name for c in machine.spconfigs if c.name != FACTORY_DEFAULT)]


def _name_arg(request: Request, spec: VerbSpec) -> SpConfigArgs:
    check_grammar(request, spec)
    return SpConfigArgs(name=check_name(request.operands[0], "configuration name"))


def _require(machine: Machine, name: str) -> None:
    if name not in _names(machine):
        raise NotFoundError(f"Configuration {name} not found (ldm list-spconfig lists them)")


def _spec(verb: str, aliases: tuple[str, ...], *, operands: int = 1, mutates: bool = True) -> VerbSpec:
    usage = f"{verb}-spconfig config-name" if operands else f"{verb}-spconfig"
    return VerbSpec(
        name=f"{verb}-spconfig",
        aliases=aliases,
        min_operands=operands,
        max_operands=operands,
        usage=usage,
        mutates=mutates,
    )


@register
class AddSpConfig:
    spec = _spec("add", ("add-config",))

    def check_arguments(self, request: Request) -> SpConfigArgs:
        return _name_arg(request, self.spec)

    def check_prereq(self, machine: Machine, args: SpConfigArgs, ctx: OpContext) -> None:
        if ctx.migrating:
            # The snapshot would catch a domain half-way between two hosts.
            name, what = next(iter(ctx.migrating.items()))
            raise BusyError(
                f"Cannot save configuration {args.name} while a migration of LDom {name} is in progress "
                f"({what})"
            )
        names = _names(machine)
        if args.name in names:
            raise AlreadyExistsError(f"Configuration {args.name} already exists")
        if len(names) >= MAX_SPCONFIGS:
            raise ResourceError(
                f"Cannot save configuration {args.name}: the service processor already holds "
                f"{len(names)} configurations, the most it can ({MAX_SPCONFIGS}, factory-default included); "
                "remove one first (ldm remove-spconfig)"
            )

    def execute(self, machine: Machine, args: SpConfigArgs, ctx: OpContext) -> OpResult:
        saved = SpConfig(name=args.name, domains=machine.domains)
        return OpResult(
            machine=replace(
                machine,
                spconfigs=(*machine.spconfigs, saved),
                current_spconfig=args.name,
                next_spconfig=args.name,
                spconfig_modified=False,
            )
        )


@register
class SetSpConfig:
    spec = _spec("set", ("set-config",))

    def check_arguments(self, request: Request) -> SpConfigArgs:
        return _name_arg(request, self.spec)

    def check_prereq(self, machine: Machine, args: SpConfigArgs, ctx: OpContext) -> None:
        _require(machine, args.name)

    def execute(self, machine: Machine, args: SpConfigArgs, ctx: OpContext) -> OpResult:
        return OpResult(machine=replace(machine, next_spconfig=args.name))


@register
class RemoveSpConfig:
    spec = _spec("remove", ("rm-spconfig", "remove-config", "rm-config"))

    def check_arguments(self, request: Request) -> SpConfigArgs:
        return _name_arg(request, self.spec)

    def check_prereq(self, machine: Machine, args: SpConfigArgs, ctx: OpContext) -> None:
        if args.name == FACTORY_DEFAULT:
            raise OpPrereqError(f"The {FACTORY_DEFAULT} configuration cannot be removed")
        _require(machine, args.name)

    def execute(self, machine: Machine, args: SpConfigArgs, ctx: OpContext) -> OpResult:
        new = replace(machine, spconfigs=tuple(c for c in machine.spconfigs if c.name != args.name))
        if machine.current_spconfig == args.name:
            new = replace(new, current_spconfig=FACTORY_DEFAULT, spconfig_modified=True)
        if machine.next_spconfig == args.name:
            new = replace(new, next_spconfig=FACTORY_DEFAULT)
        return OpResult(machine=new)


@register
class ListSpConfig:
    """Grammar only: the listing is formatted elsewhere."""

    spec = _spec("list", ("ls-spconfig", "list-config", "ls-config"), operands=0, mutates=False)

    def check_arguments(self, request: Request) -> SpConfigArgs:
        check_grammar(request, self.spec)
        return SpConfigArgs()

    def check_prereq(self, machine: Machine, args: SpConfigArgs, ctx: OpContext) -> None:
        return None

    def execute(self, machine: Machine, args: SpConfigArgs, ctx: OpContext) -> OpResult:
        return OpResult(machine=machine)
