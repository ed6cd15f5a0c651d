"""Domain variables (the guest's OpenBoot NVRAM variables; also how a guest's workload is chosen here).

    ldm add-variable var-name=[value]... ldom
    ldm set-variable var-name=[value]... ldom
    ldm remove-variable var-name... ldom
    ldm list-variable [var-name...] ldom

Variables are not resources: they change at once in any state (LDoms writes them to the domain's NVRAM
copy), for the control domain too, where a pending delayed reconfiguration receives the same change so the
reboot does not undo it.  Changing another domain while `primary` has a delayed reconfiguration pending is
refused like any other change.  `add-variable` refuses a name that exists (`already exists`); `set-variable`
creates or replaces; an unknown name is `Variable X not found`.

`name=value` operands reach the daemon either as properties (the CLI's generic `key=value` parsing) or as
operands; both are accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ldoms.errors import AlreadyExistsError, NotFoundError, UsageError
from ldoms.model.constraints_check import XML_BAD_RE
from ldoms.model.domain import Domain, DomainConfig
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import (
    check_name,
    check_not_migrating,
    check_other_domain_reconfig,
    effective_config,
    get_domain,
)

# Names and values must be what a constraints document can carry and read back (`constraints_check`): no
# control characters in names, nothing XML cannot hold in values, or `list-constraints -x` (and a migration)
# of the domain would fail later.
_VAR_NAME_RE = re.compile("^[^\\s=|\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]{1,64}$")


def check_var_name(name: str) -> str:
    if not _VAR_NAME_RE.fullmatch(name):  # not `match`: `$` lets a trailing newline through
        raise UsageError(f"Invalid variable name '{name}': 1 to 64 characters without spaces, '=' or '|'")
    return name


def _reject_flags(request: Request, spec: VerbSpec) -> None:
    for flag in request.flags:
        raise UsageError(f"Invalid option {flag} for {spec.name}. Usage: ldm {spec.usage}")


@dataclass(frozen=True, slots=True)
class VarArgs:
    ldom: str
    assignments: tuple[tuple[str, str], ...] = ()  # add/set
    names: tuple[str, ...] = ()  # remove/list


def _assignments(request: Request, spec: VerbSpec) -> VarArgs:
    _reject_flags(request, spec)
    if not request.operands:
        raise UsageError(f"Usage: ldm {spec.usage}")
    *pairs_text, ldom = request.operands
    pairs = list(request.props)
    for text in pairs_text:
        name, sep, value = text.partition("=")
        if not sep:
            raise UsageError(
                f"Invalid variable assignment '{text}': expected name=value. Usage: ldm {spec.usage}"
            )
        pairs.append((name, value))
    if not pairs:
        raise UsageError(f"Usage: ldm {spec.usage}")
    seen: dict[str, str] = {}
    for name, value in pairs:
        check_var_name(name)  # first: the value's errors name the variable
        if "\n" in value or "\r" in value or "|" in value:
            raise UsageError(f"Invalid value for variable {name}: it cannot contain a newline or '|'")
        bad = XML_BAD_RE.search(value)
        if bad:
            raise UsageError(
                f"Invalid value for variable {name}: it contains the character U+{ord(bad.group()):04X}, "
                "which cannot be stored"
            )
        seen[name] = value  # the last assignment of a name wins, as in a shell
    return VarArgs(ldom=check_name(ldom), assignments=tuple(seen.items()))


def _names(request: Request, spec: VerbSpec, *, at_least: int) -> VarArgs:
    _reject_flags(request, spec)
    if request.props or len(request.operands) < 1 + at_least:
        raise UsageError(f"Usage: ldm {spec.usage}")
    *names, ldom = request.operands
    return VarArgs(ldom=check_name(ldom), names=tuple(dict.fromkeys(check_var_name(n) for n in names)))


def _with_vars(cfg: DomainConfig, assignments: tuple[tuple[str, str], ...]) -> DomainConfig:
    variables = dict(cfg.variables)
    variables.update(assignments)
    return replace(cfg, variables=tuple(variables.items()))


def _without_vars(cfg: DomainConfig, names: tuple[str, ...]) -> DomainConfig:
    return replace(cfg, variables=tuple((k, v) for k, v in cfg.variables if k not in names))


def _update(machine: Machine, dom: Domain, change: VarArgs, *, remove: bool) -> Machine:
    def apply(cfg: DomainConfig) -> DomainConfig:
        return _without_vars(cfg, change.names) if remove else _with_vars(cfg, change.assignments)

    new = replace(dom, config=apply(dom.config))
    if dom.pending is not None:
        new = replace(new, pending=apply(dom.pending))
    return machine.with_domain(new)


def _target(machine: Machine, ldom: str, ctx: OpContext) -> Domain:
    dom = get_domain(machine, ldom)
    check_not_migrating(dom.name, ctx)
    check_other_domain_reconfig(machine, dom.name)
    return dom


def _check_known(dom: Domain, names: tuple[str, ...]) -> None:
    cfg = effective_config(dom)
    for name in names:
        if cfg.variable(name) is None:
            raise NotFoundError(f"Variable {name} not found in LDom {dom.name}")


@register
class AddVariable:
    spec = VerbSpec(
        name="add-variable",
        aliases=("add-var",),
        min_operands=1,
        usage="add-variable var-name=[value]... ldom",
    )

    def check_arguments(self, request: Request) -> VarArgs:
        return _assignments(request, self.spec)

    def check_prereq(self, machine: Machine, args: VarArgs, ctx: OpContext) -> None:
        dom = _target(machine, args.ldom, ctx)
        cfg = effective_config(dom)
        for name, _ in args.assignments:
            if cfg.variable(name) is not None:
                raise AlreadyExistsError(
                    f"Variable {name} already exists in LDom {dom.name} (ldm set-variable changes it)"
                )

    def execute(self, machine: Machine, args: VarArgs, ctx: OpContext) -> OpResult:
        return OpResult(machine=_update(machine, get_domain(machine, args.ldom), args, remove=False))


@register
class SetVariable:
    spec = VerbSpec(
        name="set-variable",
        aliases=("set-var",),
        min_operands=1,
        usage="set-variable var-name=[value]... ldom",
    )

    def check_arguments(self, request: Request) -> VarArgs:
        return _assignments(request, self.spec)

    def check_prereq(self, machine: Machine, args: VarArgs, ctx: OpContext) -> None:
        _target(machine, args.ldom, ctx)

    def execute(self, machine: Machine, args: VarArgs, ctx: OpContext) -> OpResult:
        return OpResult(machine=_update(machine, get_domain(machine, args.ldom), args, remove=False))


@register
class RemoveVariable:
    spec = VerbSpec(
        name="remove-variable",
        aliases=("rm-variable", "remove-var", "rm-var"),
        min_operands=2,
        usage="remove-variable var-name... ldom",
    )

    def check_arguments(self, request: Request) -> VarArgs:
        return _names(request, self.spec, at_least=1)

    def check_prereq(self, machine: Machine, args: VarArgs, ctx: OpContext) -> None:
        _check_known(_target(machine, args.ldom, ctx), args.names)

    def execute(self, machine: Machine, args: VarArgs, ctx: OpContext) -> OpResult:
        return OpResult(machine=_update(machine, get_domain(machine, args.ldom), args, remove=True))


@register
class ListVariable:
    """Grammar only: the listing is formatted elsewhere from `args.names` (empty = every variable)."""

    spec = VerbSpec(
        name="list-variable",
        aliases=("ls-variable", "list-var", "ls-var"),
        min_operands=1,
        usage="list-variable [var-name...] ldom",
        mutates=False,
    )

    def check_arguments(self, request: Request) -> VarArgs:
        return _names(request, self.spec, at_least=0)

    def check_prereq(self, machine: Machine, args: VarArgs, ctx: OpContext) -> None:
        _check_known(get_domain(machine, args.ldom), args.names)

    def execute(self, machine: Machine, args: VarArgs, ctx: OpContext) -> OpResult:
        return OpResult(machine=machine)
