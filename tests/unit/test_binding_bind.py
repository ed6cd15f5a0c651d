"""bind_domain / rebind_domain as a whole: console ports, I/O buses, the control domain, purity."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ldoms.binding import (
    GUEST_RA_BASE,
    bind_domain,
    factory_default,
    free_memory,
    free_strands,
    rebind_domain,
)
from ldoms.errors import ResourceError
from ldoms.model.domain import Bindings, Domain, DomainConfig, DomainState, IoAssignment, Vcc, Vcons
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.units import G

HOST = "t5240-1"
TWO_VCCS = (
    Vcc(name="primary-vcc0", port_min=5000, port_max=5002),
    Vcc(name="vcc1", port_min=6000, port_max=6010),
)


def host(*, vcc: tuple[Vcc, ...] = (Vcc(name="primary-vcc0", port_min=5000, port_max=5002),)) -> Machine:
    """A T5240 whose primary was shrunk to 8 strands, 1 MAU, 4G and bus_a, with a vcc."""
    m = factory_default(load_platform("t5240"), HOST, seed=3)
    p = m.control
    cfg = replace(p.config, vcpus=8, mau=1, memory=4 * G, io=(IoAssignment(dev="pci@400"),), vcc=vcc)
    return m.with_domain(replace(p, config=cfg, bindings=rebind_domain(m, p, cfg)))


def guest(name: str = "ldg1", **kw: object) -> DomainConfig:
    kw.setdefault("vcpus", 4)
    kw.setdefault("memory", 1 * G)
    return DomainConfig(name=name, uuid=f"uuid-{name}", hostid=1, mac=2, **kw)  # type: ignore[arg-type]


def bound(m: Machine, cfg: DomainConfig, state: DomainState = DomainState.BOUND) -> Machine:
    return m.with_domain(Domain(config=cfg, state=state, bindings=bind_domain(m, cfg)))


def err(fn: object, *args: object) -> str:
    with pytest.raises(ResourceError) as e:
        fn(*args)  # type: ignore[operator]
    return str(e.value)


def test_full_guest_bind() -> None:
    m = host()
    b = bind_domain(m, guest(vcpus=8, mau=1, memory=2 * G))
    assert b.strands == tuple(range(8, 16))
    assert b.maus == (1,)
    assert [(x.ra, x.size) for x in b.mblocks] == [(GUEST_RA_BASE, 2 * G)]
    assert b.mblocks[0].pa == 0x108000000  # primary ends at 0x104000000; next PA ≡ 128M (mod 256M)
    assert (b.console_service, b.console_port) == ("primary-vcc0", 5000)
    assert b.io == () and b.reserved_strands == ()


def test_bind_is_pure() -> None:
    m = host()
    before = (free_strands(m), free_memory(m), m)
    bind_domain(m, guest())
    assert (free_strands(m), free_memory(m), m) == before


def test_failure_reports_first_missing_resource() -> None:
    m = host()
    assert err(bind_domain, m, guest(vcpus=121)) == f"not enough free strands on {HOST}: need 121, have 120"


# ---------------------------------------------------------------- console
def test_console_ports_lowest_free() -> None:
    m = bound(host(), guest("ldg1"))
    m = bound(m, guest("ldg2"))
    assert bind_domain(m, guest("ldg3")).console_port == 5002
    assert err(bind_domain, bound(m, guest("ldg3")), guest("ldg4")) == (
        "no free console port for LDom ldg4: every port of primary-vcc0 (5000-5002) is in use"
    )


def test_console_requested_port_and_service() -> None:
    vccs = TWO_VCCS
    m = host(vcc=vccs)
    b = bind_domain(m, guest(vcons=Vcons(service="vcc1", port=6005)))
    assert (b.console_service, b.console_port) == ("vcc1", 6005)
    assert bind_domain(m, guest(vcons=Vcons(service="vcc1"))).console_port == 6000
    assert bind_domain(m, guest(vcons=Vcons(port=5001))).console_port == 5001
    assert bind_domain(m, guest(vcons=Vcons(group="grp"))).console_port == 5000
    m = bound(m, guest("ldg9", vcons=Vcons(service="vcc1", port=6005)))
    assert err(bind_domain, m, guest(vcons=Vcons(service="vcc1", port=6005))) == (
        "console port 6005 of vcc1 is already used by LDom ldg9"
    )
    assert err(bind_domain, m, guest(vcons=Vcons(service="vcc1", port=7000))) == (
        "console port 7000 of LDom ldg1 is outside the port range 6000-6010 of vcc1"
    )
    assert err(bind_domain, m, guest(vcons=Vcons(service="nosuch"))) == (
        "console service nosuch of LDom ldg1 not found"
    )


def test_console_falls_back_to_other_vcc() -> None:
    m = host(vcc=(Vcc(name="primary-vcc0", port_min=5000, port_max=5000),))
    svc = Domain(config=guest("svc", vcc=(Vcc(name="svc-vcc", port_min=7000, port_max=7001),)))
    m = bound(m.with_domain(svc), guest("ldg1"))
    b = bind_domain(m, guest("ldg2"))
    assert (b.console_service, b.console_port) == ("svc-vcc", 7000)
    m = bound(m, guest("ldg2"))
    m = bound(m, guest("ldg3"))
    assert err(bind_domain, m, guest("ldg4")) == (
        "no free console port for LDom ldg4: every port of primary-vcc0 (5000-5000) is in use "
        "and so are the other vccs'"
    )


def test_no_vcc_binds_without_console() -> None:
    b = bind_domain(host(vcc=()), guest())
    assert (b.console_service, b.console_port) == ("", 0)


def test_rebind_keeps_console_unless_asked_otherwise() -> None:
    vccs = TWO_VCCS
    m = bound(host(vcc=vccs), guest("ldg0"))  # takes 5000
    cfg = guest(vcons=Vcons(port=5001))
    m = bound(m, cfg, DomainState.ACTIVE)
    d = m.domain("ldg1")
    assert rebind_domain(m, d, replace(cfg, vcpus=2)).console_port == 5001
    assert rebind_domain(m, d, replace(cfg, vcons=None)).console_port == 5001
    assert rebind_domain(m, d, replace(cfg, vcons=Vcons(port=5002))).console_port == 5002
    moved = rebind_domain(m, d, replace(cfg, vcons=Vcons(service="vcc1")))
    assert (moved.console_service, moved.console_port) == ("vcc1", 6000)
    # Bound while no vcc existed: a rebind gives it a port once one exists.
    nocons = Domain(config=guest("ldg5"), state=DomainState.BOUND, bindings=Bindings(strands=(100,)))
    m = m.with_domain(nocons)
    assert rebind_domain(m, nocons, nocons.config).console_port == 5002


def test_control_domain_has_no_console_port() -> None:
    m = host()
    b = rebind_domain(m, m.control, replace(m.control.config, vcpus=16))
    assert (b.console_service, b.console_port) == ("", 0)


# ---------------------------------------------------------------- I/O
def test_io_bus_binding() -> None:
    m = host()
    b = bind_domain(m, guest(io=(IoAssignment(dev="pci@500", bypass=True),)))
    assert b.io == ("pci@500",)
    assert err(bind_domain, m, guest(io=(IoAssignment(dev="pci@400"),))) == (
        "I/O bus pci@400 (bus_a) is not free: it is bound to LDom primary"
    )
    assert err(bind_domain, m, guest(io=(IoAssignment(dev="pci@700"),))) == (
        "I/O bus pci@700 of LDom ldg1 does not exist on platform t5240 (buses: pci@400, pci@500)"
    )


# ---------------------------------------------------------------- control domain after a delayed reconfig
def test_control_domain_reboot_applies_pending() -> None:
    m = factory_default(load_platform("t5240"), HOST, seed=3)
    p = m.control
    pending = replace(p.config, vcpus=4, mau=0, memory=2 * G, io=(IoAssignment(dev="pci@400"),))
    b = rebind_domain(m, replace(p, pending=pending), pending)
    assert b.strands == (0, 1, 2, 3)
    assert b.maus == ()
    assert [(x.ra, x.pa, x.size) for x in b.mblocks] == [(0x4000000, 0x4000000, 2 * G)]
    assert b.io == ("pci@400",)


def test_rebind_inactive_is_a_fresh_bind() -> None:
    m = host()
    d = Domain(config=guest(), state=DomainState.INACTIVE)
    assert rebind_domain(m, d, d.config) == bind_domain(m, d.config)


def test_rebind_is_all_or_none() -> None:
    m = bound(host(), guest(), DomainState.ACTIVE)
    d = m.domain("ldg1")
    # Strands would fit, memory would not: nothing is returned, the machine is untouched.
    assert err(rebind_domain, m, d, replace(d.config, vcpus=8, memory=64 * G)).startswith(
        f"not enough free memory on {HOST} for LDom ldg1"
    )
    assert m.domain("ldg1") == d


def test_fresh_bind_of_the_control_domain() -> None:
    m = factory_default(load_platform("t5240"), HOST, seed=3)
    p = replace(m.control, state=DomainState.INACTIVE, bindings=None)
    m = m.with_domain(p)
    cfg = replace(p.config, vcpus=4, mau=1, memory=1 * G, vcc=TWO_VCCS)
    b = bind_domain(m, cfg)
    assert b.strands == (0, 1, 2, 3) and b.maus == (0,)
    assert [(x.ra, x.pa, x.size) for x in b.mblocks] == [(0x4000000, 0x4000000, 1 * G)]
    assert (b.console_service, b.console_port) == ("", 0)  # the SP
