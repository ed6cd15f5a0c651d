"""A host's whole state: its platform, its domains (control domain first) and its saved SP configurations.
Immutable: operations compute a new `Machine`, and the store writes the difference in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ldoms.errors import NotFoundError
from ldoms.model.domain import CONTROL_DOMAIN, Domain
from ldoms.model.platform import Platform


@dataclass(frozen=True, slots=True, kw_only=True)
class SpConfig:
    """A saved configuration on the service processor (`add-spconfig`)."""

    name: str
    domains: tuple[Domain, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    host_name: str
    platform: Platform
    domains: tuple[Domain, ...] = ()
    spconfigs: tuple[SpConfig, ...] = ()
    current_spconfig: str = "factory-default"
    next_spconfig: str = "factory-default"
    spconfig_modified: bool = False  # the running configuration differs from the current SP config
    power_policy: str = "performance"  # or "elastic"
    # MACs of domains that left this host by migration, oldest first: they live on elsewhere, so the
    # automatic pool hands them out again only when nothing else is free (ldoms.binding.allocate_mac).
    departed_macs: tuple[int, ...] = ()

    def find(self, name: str) -> Domain | None:
        for d in self.domains:
            if d.name == name:
                return d
        return None

    def domain(self, name: str) -> Domain:
        d = self.find(name)
        if d is None:
            raise NotFoundError(f"LDom {name} not found")
        return d

    @property
    def control(self) -> Domain:
        return self.domain(CONTROL_DOMAIN)

    def with_domain(self, dom: Domain) -> Machine:
        """Replace the domain of the same name, or append it."""
        out = []
        found = False
        for d in self.domains:
            if d.name == dom.name:
                out.append(dom)
                found = True
            else:
                out.append(d)
        if not found:
            out.append(dom)
        return replace(self, domains=tuple(out), spconfig_modified=True)

    def without_domain(self, name: str) -> Machine:
        return replace(self, domains=tuple(d for d in self.domains if d.name != name), spconfig_modified=True)
