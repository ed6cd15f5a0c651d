"""Checks and helpers shared by every operation module."""

from __future__ import annotations

import re
from dataclasses import replace

from ldoms.errors import BusyError, NotFoundError, StateError, UsageError
from ldoms.model.domain import CONTROL_DOMAIN, Domain, DomainConfig, DomainState
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, Request, VerbSpec

# LDoms: names start with a letter and hold letters, digits and - _ + # . : ; ~ ( ); 64 characters at most.
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+#.:;~()-]{0,63}$")

DR_FIRST_NOTICE = (
    "Initiating delayed reconfigure operation on LDom primary. All\n"
    "configuration changes for other LDoms are disabled until the\n"
    "LDom reboots, at which time the new configuration for LDom\n"
    "primary will also take effect."
)
DR_NOTICE = (
    "Notice: LDom primary is in the process of a delayed\n"
    "reconfiguration. Any changes made to this LDom will only take\n"
    "effect after it reboots."
)


def check_name(name: str, what: str = "LDom name") -> str:
    if not _NAME_RE.fullmatch(name):  # fullmatch: `$` alone would let a trailing newline through
        raise UsageError(
            f"Invalid {what} '{name}': a name starts with a letter and contains only letters, digits "
            "and - _ + # . : ; ~ ( ) (at most 64 characters)"
        )
    return name


def parse_int(text: str, what: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise UsageError(f"Invalid {what} '{text}': expected a whole number")
    if len(text.strip()) > 20:  # beyond any count or id (and int() refuses over 4300 digits)
        raise UsageError(f"Invalid {what} '{text}': the number is too large")
    value = int(text)
    if value < minimum or (maximum is not None and value > maximum):
        hi = f" and {maximum}" if maximum is not None else ""
        raise UsageError(f"Invalid {what} {value}: must be at least {minimum}{hi}")
    return value


def only_operand(request: Request, what: str = "LDom") -> str:
    if len(request.operands) != 1:
        raise UsageError(f"Exactly one {what} must be given")
    return request.operands[0]


def get_domain(machine: Machine, name: str) -> Domain:
    return machine.domain(name)  # raises NotFoundError "LDom <name> not found"


def check_not_migrating(name: str, ctx: OpContext) -> None:
    if name in ctx.migrating:
        raise BusyError(f"LDom {name} is being migrated ({ctx.migrating[name]}): operation not allowed")


def check_bind_stop_allowed(ctx: OpContext, verb: str) -> None:
    """While any migration runs on this host, bind and stop of any domain are refused (SPEC §3.1)."""
    if ctx.migrating:
        name, what = next(iter(ctx.migrating.items()))
        raise BusyError(f"Cannot {verb} while a migration of LDom {name} is in progress ({what})")


def check_other_domain_reconfig(machine: Machine, target: str) -> None:
    """While the control domain has a delayed reconfiguration pending, other domains cannot be changed."""
    if target == CONTROL_DOMAIN:
        return
    ctl = machine.find(CONTROL_DOMAIN)
    if ctl is not None and ctl.delayed_reconfig:
        raise BusyError(
            f"LDom {CONTROL_DOMAIN} is in the process of a delayed reconfiguration: configuration changes "
            f"for LDom {target} are disabled until {CONTROL_DOMAIN} reboots "
            f"(or 'ldm cancel-operation reconf {CONTROL_DOMAIN}')"
        )


def is_delayed(dom: Domain) -> bool:
    """A change to this domain is a delayed reconfiguration: the active control domain."""
    return dom.config.is_control and dom.state == DomainState.ACTIVE


def delayed_update(
    machine: Machine, dom: Domain, new_config: DomainConfig
) -> tuple[Machine, tuple[str, ...]]:
    """Record `new_config` as the control domain's pending constraints; return the notice LDoms prints."""
    notice = DR_NOTICE if dom.delayed_reconfig else DR_FIRST_NOTICE
    return machine.with_domain(replace(dom, pending=new_config)), (notice,)


def effective_config(dom: Domain) -> DomainConfig:
    """The constraints a new change applies to: the pending ones during a delayed reconfiguration."""
    return dom.pending if dom.pending is not None else dom.config


def require_state(dom: Domain, *states: DomainState, action: str) -> None:
    if dom.state not in states:
        allowed = " or ".join(s.value for s in states)
        raise StateError(f"LDom {dom.name} is {dom.state.value}: {action} requires it to be {allowed}")


def find_service_owner(machine: Machine, kind: str, name: str) -> Domain:
    """The domain providing the vds/vsw/vcc called `name`."""
    for d in machine.domains:
        cfg = effective_config(d)
        for svc in getattr(cfg, kind):
            if svc.name == name:
                return d
    raise NotFoundError(f"Service {name} not found")


def check_grammar(request: Request, spec: VerbSpec) -> None:
    """Refuse flags, properties and operand counts outside the verb's grammar (requests may come from the
    XML interface or the API, not only from the CLI, which checks the same)."""
    usage = f"Usage: ldm {spec.usage}" if spec.usage else f"Invalid arguments for {spec.name}"
    for flag in request.flags:
        if flag not in spec.flags and flag not in spec.value_flags:
            raise UsageError(f"Invalid option {flag} for {spec.name}. {usage}")
    for key, _ in request.props:
        if key not in spec.props:
            raise UsageError(f"Invalid property '{key}' for {spec.name}. {usage}")
    n = len(request.operands)
    if n < spec.min_operands or (spec.max_operands is not None and n > spec.max_operands):
        raise UsageError(usage)
