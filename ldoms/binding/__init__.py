"""Binding: (machine, constraints) -> concrete resources.  Pure functions; never mutate; all-or-none.

Public interface (implemented in the submodules, re-exported here):

- `free_strands(machine) -> tuple[int, ...]`: strands no domain holds (bound, active or reserved).
- `free_memory(machine) -> tuple[MemRange, ...]`: free PA ranges (not `_sys_`, not bound), sorted, merged.
- `free_maus(machine) -> tuple[int, ...]`.
- `bind_domain(machine, config) -> Bindings`: a fresh bind of an inactive domain (strands, whole cores with
  `-c`, MAUs only with strands of their core, memory as congruent blocks PA ≡ RA mod H with guests' RAs
  starting at GUEST_RA_BASE, named mblocks exactly where asked, console port from a vcc, I/O buses).
  Raises `ResourceError` naming what is missing (`not enough free strands: need 8, have 4`).
- `rebind_domain(machine, domain, new_config) -> Bindings`: an incremental change of a bound or active domain
  (or the control domain at reboot after a delayed reconfiguration): keeps what it already holds where it can,
  adds or releases the difference.
- `allocate_mac(machine, *, taken=()) -> int`: a free MAC from the platform's automatic pool, unique over every
  domain, vnet and vsw (and `taken`).
- `factory_default(platform, host_name, *, seed=None) -> Machine`: the control domain `primary` owning every
  strand, MAU, non-reserved memory range (RA = PA) and PCIe bus, active, console `SP`.
"""
