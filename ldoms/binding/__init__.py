"""Binding: (machine, constraints) -> concrete resources.  Pure functions; never mutate; all-or-none.

Public interface (implemented in the submodules, re-exported here):

- `free_strands(machine) -> tuple[int, ...]`: strands no domain holds (bound, active or reserved).
- `free_memory(machine) -> tuple[MemRange, ...]`: free PA ranges (not `_sys_`, not bound), sorted, merged.
- `free_maus(machine) -> tuple[int, ...]`.
  (All three take `exclude=name` to count a domain's own holdings as free.)
- `bind_domain(machine, config) -> Bindings`: a fresh bind of an inactive domain (strands, whole cores with
  `-c`, MAUs only with strands of their core, memory as congruent blocks PA ≡ RA mod H with guests' RAs
  starting at GUEST_RA_BASE, named mblocks exactly where asked, console port from a vcc, I/O buses).
  Raises `ResourceError` naming what is missing (`not enough free strands on host1: need 8, have 4`).
  A guest is bound without a console (port 0) when the host has no vcc at all, as LDoms does.
  `bind_domain(machine, config, full_cores=True)`: a 1.2 live-migration target gets the lowest fully free
  cores; the strands beyond `config.vcpus` go to `reserved_strands` until it reboots (SPEC §7 item 10).
- `rebind_domain(machine, domain, new_config) -> Bindings`: an incremental change of a bound or active domain
  (or the control domain at reboot after a delayed reconfiguration): keeps what it already holds where it can,
  adds or releases the difference (highest-numbered strands and MAUs, highest-RA memory go first).
- `fit_blocks(free, blocks, hw_pagesize, *, split_pagesize=None) -> tuple[MemBinding, ...]`: PAs for blocks
  whose RAs and sizes are fixed (migration, SPEC §3.1); raises `MemoryFitError` (a `ResourceError`)
  `Unable to bind 2G memory region at real address 0x8000000` on the first block that does not fit.
- `allocate_mac(machine, *, taken=()) -> int`: a free MAC from the platform's automatic pool, unique over
  every domain, vnet and vsw (and `taken`), avoiding the MACs of domains that migrated away
  (`machine.departed_macs`) while others are free.
- `remember_departed(machine, domain) -> Machine`: note the MACs of a domain that now lives on another host.
- `factory_default(platform, host_name, *, seed=None) -> Machine`: the control domain `primary` owning every
  strand, MAU, non-reserved memory range (RA = PA) and PCIe bus, active, console `SP`.
"""

from ldoms.binding.bind import bind_domain, rebind_domain
from ldoms.binding.factory import (
    MAC_POOL_SIZE,
    allocate_mac,
    factory_default,
    macs_in_use,
    remember_departed,
)
from ldoms.binding.held import free_maus, free_memory, free_strands
from ldoms.binding.memory import GUEST_RA_BASE, MEM_ALIGN, MIN_MEMORY, MemoryFitError, fit_blocks

__all__ = [
    "GUEST_RA_BASE",
    "MAC_POOL_SIZE",
    "MEM_ALIGN",
    "MIN_MEMORY",
    "MemoryFitError",
    "allocate_mac",
    "bind_domain",
    "factory_default",
    "fit_blocks",
    "free_maus",
    "free_memory",
    "free_strands",
    "macs_in_use",
    "rebind_domain",
    "remember_departed",
]
