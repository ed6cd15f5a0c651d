"""What an incoming domain holds on the target: its shell, reserved as it will be held (pure).

- inactive: nothing (the constraints only, SPEC 3.2);
- bound: bound anew, any memory layout (it has not booted, SPEC 3.2);
- active: the real addresses stay (SPEC 3.1 Memory): `fit_blocks` finds congruent PAs for the source's blocks
  in the target's free memory, and those PAs become named blocks for `bind_domain`, which then reserves
  CPUs (whole cores and CPU DR off under the 1.2 rules, SPEC 3.1 CPU, 7.10, unless the source copies the
  guest live: `extra["transfer"] == "live"`), crypto units and the console around them; the shell keeps the
  source's constraints and gets the fitted blocks as its bindings.

Raises `ResourceError` (`MemoryFitError`: `Unable to bind 2G memory region at real address 0x8000000`) naming
what is missing; the target reports it as a failure of the migration.
"""

from __future__ import annotations

from dataclasses import replace

from ldoms import binding
from ldoms.migration.checkwire import IncomingDomain
from ldoms.model.domain import Domain, DomainState, MigrationRole, NamedMblock
from ldoms.model.machine import Machine


def reserve(machine: Machine, inc: IncomingDomain) -> Domain:
    """The shell as the target will hold it (pure; raises ResourceError naming what is missing)."""
    cfg, facts = inc.config, inc.facts
    state = facts.state
    if state is DomainState.INACTIVE:
        return Domain(config=cfg, state=DomainState.INACTIVE, migration=MigrationRole.TARGET)
    if state is DomainState.BOUND:
        b = binding.bind_domain(machine, cfg)
        return Domain(config=cfg, state=DomainState.BOUND, bindings=b, migration=MigrationRole.TARGET)
    # Active: the real addresses stay (SPEC 3.1 Memory); the PAs found become named blocks for the binder,
    # which then reserves CPUs (whole cores under the 1.2 rules), crypto units and the console around them.
    fitted = binding.fit_blocks(binding.free_memory(machine), inc.blocks, machine.platform.hw_max_pagesize)
    named = tuple(NamedMblock(pa=b.pa, size=b.size) for b in fitted)
    as_named = replace(cfg, mblocks=named, memory=sum(b.size for b in fitted))
    # Live pre-copy (the source says so) keeps the guest's CPUs as they are; the 1.2 way gets whole cores
    # and CPU DR off until the reboot.
    legacy = facts.legacy_cpu_rules and inc.extra.get("transfer") != "live"
    b = binding.bind_domain(machine, as_named, full_cores=legacy)
    return Domain(
        config=cfg,
        state=DomainState.BOUND,
        bindings=replace(b, mblocks=fitted),
        migration=MigrationRole.TARGET,
        cpu_dr_disabled=legacy,
    )
