"""The factory-default machine and the automatic MAC pool.

Factory default: as delivered from the service processor, the control domain `primary` is active and owns
every strand, every MAU, every usable memory range (RA = PA: the control domain runs on physical
addresses) and every PCIe bus; its console is the SP.  The admin then shrinks it.

MACs: LDoms draws automatic MACs from a pool at `platform.mac_base` (00:14:4f:f8:00:00, 256K addresses),
checking on the network that no other manager uses them.  We have no network here, so to make two hosts of
the same platform unlikely to collide, the search starts at an offset derived from the host name (stable
across restarts, so allocation stays deterministic) and takes the first address free on this host.  What
the network check would catch is a domain that migrated away and still uses its MACs on another host: this
host remembers them (`Machine.departed_macs`, noted by `remember_departed` when the domain leaves) and hands
them out again only once the rest of the pool is used up.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterable
from dataclasses import replace

from ldoms.errors import ResourceError
from ldoms.model.domain import (
    CONTROL_DOMAIN,
    Bindings,
    Domain,
    DomainConfig,
    DomainState,
    IoAssignment,
    MemBinding,
)
from ldoms.model.machine import Machine
from ldoms.model.platform import MAC_POOL_SIZE, Platform
from ldoms.units import format_mac

__all__ = ["MAC_POOL_SIZE", "allocate_mac", "factory_default", "macs_in_use"]
# Sun's hardware OUI, as in the constraints example `MAC|mac-addr=00:03:ba:d8:b1:46`: the control domain
# uses the machine's own (non-pool) MAC.
_HW_OUI = 0x0003BA000000


def factory_default(platform: Platform, host_name: str, *, seed: int | None = None) -> Machine:
    """A new host: `primary` active (started_at 0; the daemon sets the real time), owning everything.

    `seed` makes the UUID, hostid and MAC deterministic (`random.Random(seed)`); None draws from the OS."""
    rng = random.Random(seed)
    mac = _HW_OUI | rng.getrandbits(24)
    hostid = rng.getrandbits(32)
    dom_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    usable = platform.usable_memory
    strands = tuple(s for c in platform.cores for s in c.strands)
    maus = tuple(m.id for m in platform.maus)
    buses = tuple(b.dev for b in platform.pci_buses)
    config = DomainConfig(
        name=CONTROL_DOMAIN,
        uuid=dom_uuid,
        hostid=hostid,
        mac=mac,
        vcpus=len(strands),
        memory=sum(r.size for r in usable),
        mau=len(maus),
        io=tuple(IoAssignment(dev=d) for d in buses),
    )
    bindings = Bindings(
        strands=strands,
        mblocks=tuple(MemBinding(ra=r.pa, pa=r.pa, size=r.size) for r in usable),
        maus=maus,
        io=buses,
    )
    primary = Domain(
        config=config,
        state=DomainState.ACTIVE,
        bindings=bindings,
        started_at=0.0,
        softstate="Solaris running",
    )
    return Machine(host_name=host_name, platform=platform, domains=(primary,))


def domain_macs(dom: Domain) -> set[int]:
    """Every MAC `dom`, its vnets and vsws use (pending constraints included)."""
    used: set[int] = set()
    for cfg in (dom.config, dom.pending):
        if cfg is None:
            continue
        used.add(cfg.mac)
        used.update(v.mac for v in cfg.vnets)
        used.update(v.mac for v in cfg.vsw)
    return used


def macs_in_use(machine: Machine) -> set[int]:
    """Every MAC a domain, vnet or vsw of this host uses (pending constraints included)."""
    used: set[int] = set()
    for d in machine.domains:
        used |= domain_macs(d)
    return used


def remember_departed(machine: Machine, dom: Domain) -> Machine:
    """`machine` noting that `dom` lives on elsewhere now (it migrated away): its MACs join `departed_macs`,
    so they are not handed out again here while it may still use them on the other host (SPEC §3.1: its
    MACs must be free on a later target)."""
    new = sorted(domain_macs(dom) - set(machine.departed_macs) - {0})
    if not new:
        return machine
    return replace(machine, departed_macs=(*machine.departed_macs, *new))


def allocate_mac(machine: Machine, *, taken: Iterable[int] = ()) -> int:
    """A MAC from the automatic pool used by nothing on this host nor in `taken`; a MAC of a domain that
    migrated away only when no other is free (then the one that left first)."""
    used = macs_in_use(machine) | set(taken)
    departed = set(machine.departed_macs)
    base = machine.platform.mac_base
    start = int.from_bytes(hashlib.sha256(machine.host_name.encode()).digest()[:4], "big") % MAC_POOL_SIZE
    for i in range(MAC_POOL_SIZE):
        mac = base + (start + i) % MAC_POOL_SIZE
        if mac not in used and mac not in departed:
            return mac
    for mac in machine.departed_macs:
        if mac not in used and base <= mac < base + MAC_POOL_SIZE:
            return mac
    raise ResourceError(
        f"no free MAC address in the automatic pool {format_mac(base)} - "
        f"{format_mac(base + MAC_POOL_SIZE - 1)} on {machine.host_name}"
    )
