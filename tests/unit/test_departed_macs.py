"""A domain that migrated away keeps its MACs on the other host, so the host it left must not hand them out
again (found by tests/load/test_three_hosts.py: a domain made after another had left got its MAC, and its
own later migration to where the first one lived was refused as a MAC collision)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ldoms.binding import MAC_POOL_SIZE, allocate_mac, factory_default, remember_departed
from ldoms.errors import ResourceError
from ldoms.migration.engine_common import depart_domain, drop_domain
from ldoms.model.domain import Domain, DomainConfig, Vnet
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.store import Store


def host_with_guest() -> tuple[Machine, int, int]:
    """A host whose guest ldg1 took the first two automatic MACs (its own, its vnet's)."""
    m = factory_default(load_platform("t5240"), "ha", seed=1)
    mac = allocate_mac(m)
    vnet_mac = allocate_mac(m, taken=[mac])
    cfg = DomainConfig(name="ldg1", uuid="u", hostid=1, mac=mac,
                       vnets=(Vnet(name="vnet0", service="primary-vsw0", mac=vnet_mac),))  # fmt: skip
    return m.with_domain(Domain(config=cfg)), mac, vnet_mac


def test_a_migrated_domains_macs_are_not_handed_out_again() -> None:
    m, mac, vnet_mac = host_with_guest()
    before = allocate_mac(factory_default(load_platform("t5240"), "ha", seed=1))
    assert before == mac  # without the memory, the pool would hand ldg1's MAC out at once
    left = depart_domain(m, "ldg1")
    assert left.find("ldg1") is None
    assert left.departed_macs == (mac, vnet_mac)
    fresh = allocate_mac(left)
    assert fresh not in (mac, vnet_mac)
    assert allocate_mac(left, taken=[fresh]) not in (mac, vnet_mac, fresh)


def test_remembering_is_idempotent_and_skips_unknown_domains() -> None:
    m, mac, vnet_mac = host_with_guest()
    dom = m.domain("ldg1")
    once = remember_departed(m, dom)
    assert remember_departed(once, dom) is once  # nothing new: the same machine
    assert depart_domain(m, "nosuch") == m
    # a domain that comes back and leaves again is remembered once
    back = depart_domain(depart_domain(m, "ldg1").with_domain(dom), "ldg1")
    assert back.departed_macs == (mac, vnet_mac)
    # a discarded incoming copy (a failed migration) leaves the target as it was
    assert drop_domain(m, "ldg1").departed_macs == ()


def test_departed_macs_are_handed_out_last_oldest_first() -> None:
    m, mac, vnet_mac = host_with_guest()
    left = depart_domain(m, "ldg1")
    base = m.platform.mac_base
    everything_else = [x for x in range(base, base + MAC_POOL_SIZE) if x not in (mac, vnet_mac)]
    assert allocate_mac(left, taken=everything_else) == mac  # the pool is used up: the oldest goes first
    assert allocate_mac(left, taken=[*everything_else, mac]) == vnet_mac
    with pytest.raises(ResourceError, match="no free MAC address in the automatic pool"):
        allocate_mac(left, taken=[*everything_else, mac, vnet_mac])


def test_departed_macs_survive_a_restart(tmp_path: Path) -> None:
    m, mac, vnet_mac = host_with_guest()
    store = Store(tmp_path / "state.db")
    store.create_host(m, listen="127.0.0.1:0")
    store.commit(replace(depart_domain(m, "ldg1"), spconfig_modified=True))
    store.close()
    again = Store(tmp_path / "state.db")
    try:
        assert again.load().machine.departed_macs == (mac, vnet_mac)
    finally:
        again.close()
