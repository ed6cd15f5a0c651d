"""Small listings: `ldm list-variable`, `ldm list-spconfig`, `ldm -V`.

- list-variable (1.2 Example 9-9): one `name=value` line per variable, in the order asked, or every variable
  of the domain in stored order when none is named.  The values are those of the newest constraints (the
  pending ones during a delayed reconfiguration).  A missing variable is an error whose message contains
  `not found` (SPEC 5.8).
- list-spconfig (1.2/1.3 "List Configurations"): `factory-default`, then the saved configurations in stored
  order, one per line.  `[current]` marks the configuration the machine last powered on with, only while the
  running configuration still matches it; once it has been changed, the configuration to be used at the next
  power-on carries `[next poweron]` instead (so after a change the current one shows `[next poweron]`, as in
  the book's `foo [next poweron]`).
- `ldm -V` (1.2 Example 9-1): starts with an empty line, as in the book; versions from the platform.
"""

from __future__ import annotations

from collections.abc import Sequence

from ldoms.errors import NotFoundError
from ldoms.model.machine import Machine
from ldoms.model.platform import Platform
from ldoms.model.view import HostView

FACTORY_DEFAULT = "factory-default"


def format_variables(view: HostView, name: str, varnames: Sequence[str]) -> str:
    dom = view.machine.domain(name)  # NotFoundError "LDom <name> not found"
    cfg = dom.pending if dom.pending is not None else dom.config
    if not varnames:
        return "".join(f"{k}={v}\n" for k, v in cfg.variables)
    lines = []
    for var in varnames:
        value = cfg.variable(var)
        if value is None:
            raise NotFoundError(f"Variable {var} not found in LDom {name}")
        lines.append(f"{var}={value}\n")
    return "".join(lines)


def format_spconfig(machine: Machine) -> str:
    names = [FACTORY_DEFAULT, *(c.name for c in machine.spconfigs if c.name != FACTORY_DEFAULT)]
    lines = []
    for n in names:
        if n == machine.current_spconfig and not machine.spconfig_modified:
            lines.append(f"{n} [current]")
        elif n == machine.next_spconfig and (machine.spconfig_modified or n != machine.current_spconfig):
            lines.append(f"{n} [next poweron]")
        else:
            lines.append(n)
    return "".join(f"{line}\n" for line in lines)


def format_version(platform: Platform, *, ldm_version: str = "1.2") -> str:
    hv, obp = platform.hypervisor_version, platform.obp_version
    return (
        "\n"
        f"Logical Domain Manager (v {ldm_version})\n"
        "   Hypervisor control protocol v 1.3\n"
        "   Using Hypervisor MD v 0.1\n"
        "\n"
        "System PROM:\n"
        f"   Hypervisor  v. {hv + '.':<10}@(#)Hypervisor {hv}. {platform.hypervisor_date}\n"
        f"   OpenBoot    v. {obp + '.':<10}@(#)OBP {obp}. {platform.obp_date}\n"
    )


def format_version_view(view: HostView) -> str:
    """`ldm -V` for a host view: the platform's firmware and the view's manager version."""
    return format_version(view.machine.platform, ldm_version=view.ldm_version)
