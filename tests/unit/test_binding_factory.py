"""factory_default, allocate_mac and the free-resource queries."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ldoms.binding import (
    MAC_POOL_SIZE,
    allocate_mac,
    factory_default,
    free_maus,
    free_memory,
    free_strands,
    rebind_domain,
)
from ldoms.binding.held import merge, subtract
from ldoms.errors import ResourceError
from ldoms.model.domain import CONTROL_DOMAIN, Domain, DomainConfig, DomainState, Vnet, Vsw
from ldoms.model.platform import MemRange
from ldoms.model.platforms import list_presets, load_platform
from ldoms.units import G, M


@pytest.mark.parametrize("preset", list_presets())
def test_factory_default_owns_everything(preset: str) -> None:
    plat = load_platform(preset)
    m = factory_default(plat, "host1", seed=7)
    assert m.host_name == "host1" and m.platform is plat
    assert [d.name for d in m.domains] == [CONTROL_DOMAIN]
    p = m.control
    assert p.state == DomainState.ACTIVE and p.started_at == 0.0
    assert p.softstate == "Solaris running"
    b = p.bindings
    assert b is not None
    assert b.strands == tuple(range(plat.nstrands))
    assert b.maus == tuple(mu.id for mu in plat.maus)
    assert b.io == tuple(x.dev for x in plat.pci_buses)
    assert [(x.ra, x.pa, x.size) for x in b.mblocks] == [(r.pa, r.pa, r.size) for r in plat.usable_memory]
    assert (b.console_port, b.console_service) == (0, "")
    cfg = p.config
    assert cfg.vcpus == plat.nstrands and cfg.mau == len(plat.maus)
    assert cfg.memory == b.memory == plat.total_memory - 64 * M
    assert [io.dev for io in cfg.io] == list(b.io)
    assert free_strands(m) == () and free_maus(m) == () and free_memory(m) == ()


def test_factory_default_seeded_is_deterministic() -> None:
    plat = load_platform("t5240")
    a = factory_default(plat, "h", seed=1).control.config
    b = factory_default(plat, "h", seed=1).control.config
    c = factory_default(plat, "h", seed=2).control.config
    assert (a.uuid, a.hostid, a.mac) == (b.uuid, b.hostid, b.mac)
    assert (a.uuid, a.hostid, a.mac) != (c.uuid, c.hostid, c.mac)
    assert len(a.uuid) == 36 and a.uuid[14] == "4"  # a version-4 UUID
    assert 0 <= a.hostid < 2**32
    assert a.mac >> 24 == 0x0003BA  # the machine's own MAC, outside the automatic pool


def test_factory_default_unseeded_differs() -> None:
    plat = load_platform("t5240")
    assert factory_default(plat, "h").control.config.uuid != factory_default(plat, "h").control.config.uuid


def test_allocate_mac_in_pool_and_stable() -> None:
    m = factory_default(load_platform("t5240"), "h", seed=1)
    mac = allocate_mac(m)
    base = m.platform.mac_base
    assert base <= mac < base + MAC_POOL_SIZE
    assert allocate_mac(m) == mac  # pure: same machine, same answer
    other = factory_default(load_platform("t5240"), "other-host", seed=1)
    assert allocate_mac(other) != mac  # different hosts start at different places


def test_allocate_mac_skips_every_use() -> None:
    m = factory_default(load_platform("t5240"), "h", seed=1)
    used: list[int] = []
    for _ in range(6):
        used.append(allocate_mac(m, taken=used))
    assert len(set(used)) == 6
    # Make the first five used by a domain, a vnet, a vsw, pending constraints and `taken`: the next
    # allocation must be the sixth.
    p = m.control
    cfg = replace(p.config, vsw=(Vsw(name="vsw0", mac=used[1]),))
    pending = replace(p.config, vsw=(Vsw(name="vsw1", mac=used[2]),))
    m = m.with_domain(replace(p, config=cfg, pending=pending))
    vnet = Vnet(name="v", service="vsw0", mac=used[3])
    g = DomainConfig(name="ldg1", uuid="u", hostid=1, mac=used[0], vnets=(vnet,))
    m = m.with_domain(Domain(config=g))
    assert allocate_mac(m, taken=[used[4]]) == used[5]


def test_allocate_mac_pool_exhausted() -> None:
    m = factory_default(load_platform("t5240"), "h", seed=1)
    base = m.platform.mac_base
    with pytest.raises(ResourceError, match="no free MAC address in the automatic pool 00:14:4f:f8:00:00 - "):
        allocate_mac(m, taken=range(base, base + MAC_POOL_SIZE))


def test_free_resources_after_shrinking_primary() -> None:
    m = factory_default(load_platform("t5240"), "h", seed=1)
    p = m.control
    cfg = replace(p.config, vcpus=8, mau=1, memory=1 * G, io=p.config.io[:1])
    b = rebind_domain(m, p, cfg)
    m = m.with_domain(replace(p, config=cfg, bindings=b))
    assert free_strands(m) == tuple(range(8, 128))
    assert free_maus(m) == tuple(range(1, 16))
    assert free_memory(m) == (MemRange(pa=0x4000000 + G, size=32 * G - 64 * M - G),)
    # A domain's own holdings count as free when excluded.
    assert free_strands(m, exclude=CONTROL_DOMAIN) == tuple(range(128))
    # An inactive domain holds nothing, whatever its bindings field says.
    m2 = m.with_domain(replace(m.control, state=DomainState.INACTIVE))
    assert len(free_strands(m2)) == 128


def test_range_arithmetic() -> None:
    rs = [MemRange(pa=40, size=0), MemRange(pa=5, size=10), MemRange(pa=0, size=10), MemRange(pa=15, size=5)]
    assert merge(rs) == (MemRange(pa=0, size=20),)
    assert subtract([MemRange(pa=0, size=100)], [(90, 120), (10, 20), (15, 30), (-5, 2)]) == (
        MemRange(pa=2, size=8),
        MemRange(pa=30, size=60),
    )
    assert subtract([MemRange(pa=0, size=10)], [(0, 10)]) == ()
