"""Virtual console verbs: add/set/remove-vcc and set-vcons; and the LDoms quick-start service setup."""

from __future__ import annotations

from dataclasses import replace

import pytest
from vio_world import apply, do, world  # tests/unit is on sys.path (rootdir import)

from ldoms.errors import BusyError, NotFoundError, OpPrereqError, ResourceError, StateError, UsageError
from ldoms.model.domain import Bindings, DomainState, Vcc, Vcons, Vdisk
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, lookup

# ---------------------------------------------------------------- helpers


def bound(m: Machine, name: str, port: int, service: str, state: DomainState = DomainState.BOUND) -> Machine:
    d = m.domain(name)
    b = Bindings(strands=(60,), console_port=port, console_service=service)
    return m.with_domain(replace(d, state=state, bindings=b))


def consoled() -> Machine:
    return apply(world(), "add-vcc port-range=5000-5100 primary-vcc0 primary")


# ---------------------------------------------------------------- quick start
def test_ldoms_quick_start_service_setup() -> None:
    m = apply(
        world("ldg1"),
        "add-vds primary-vds0 primary",
        "add-vcc port-range=5000-5100 primary-vcc0 primary",
        "add-vsw net-dev=e1000g0 primary-vsw0 primary",
        "add-vdsdev /ldoms/disk1 vol1@primary-vds0",
        "add-vnet vnet1 primary-vsw0 ldg1",
        "add-vdisk vdisk1 vol1@primary-vds0 ldg1",
    )
    primary, ldg1 = m.domain("primary"), m.domain("ldg1")
    assert primary.pending is None and primary.config.provides_services
    assert [v.name for v in primary.config.vds] == ["primary-vds0"]
    assert [(v.name, v.backend) for v in primary.config.vds[0].volumes] == [("vol1", "/ldoms/disk1")]
    assert primary.config.vcc == (Vcc(name="primary-vcc0", port_min=5000, port_max=5100),)
    assert [(s.name, s.net_dev, s.id) for s in primary.config.vsw] == [("primary-vsw0", "e1000g0", 0)]
    assert [(v.name, v.service, v.id) for v in ldg1.config.vnets] == [("vnet1", "primary-vsw0", 0)]
    assert ldg1.config.vdisks == (Vdisk(name="vdisk1", volume="vol1", service="primary-vds0", id=0),)
    assert m.spconfig_modified


# ---------------------------------------------------------------- grammar
@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("add-vconscon", "add-vcc"),
        ("set-vconscon", "set-vcc"),
        ("rm-vcc", "remove-vcc"),
        ("rm-vconscon", "remove-vcc"),
        ("set-vconsole", "set-vcons"),
    ],
)
def test_aliases(alias: str, canonical: str) -> None:
    assert lookup(alias).spec.name == canonical


@pytest.mark.parametrize(
    "line",
    [
        "add-vcc primary-vcc1 primary",  # port-range is required
        "add-vcc port-range=5000 primary-vcc1 primary",
        "add-vcc port-range=0-10 primary-vcc1 primary",
        "add-vcc port-range=65000-65536 primary-vcc1 primary",
        "add-vcc port-range=6000-5000 primary-vcc1 primary",
        "add-vcc port-range=a-b primary-vcc1 primary",
        "set-vcc primary-vcc0",
        "set-vcons ldg1",
        "set-vcons port=70000 ldg1",
        "set-vcons port=x ldg1",
        "set-vcons group=9grp ldg1",
        "remove-vcc -x primary-vcc0",
    ],
)
def test_usage_errors(line: str) -> None:
    with pytest.raises(UsageError):
        do(consoled(), line)


# ---------------------------------------------------------------- vcc
def test_add_vcc_single_port_and_overlap() -> None:
    m = apply(consoled(), "add-vcc port-range=5101-5101 vcc1 ldg1")
    assert m.domain("ldg1").config.vcc == (Vcc(name="vcc1", port_min=5101, port_max=5101),)
    with pytest.raises(
        ResourceError,
        match="5100-5200 overlaps port range 5000-5100 of virtual console "
        "concentrator primary-vcc0 in LDom primary",
    ):
        do(m, "add-vcc port-range=5100-5200 vcc2 primary")
    with pytest.raises(ResourceError, match="overlaps"):
        do(m, "add-vcc port-range=4000-6000 vcc2 primary")


def test_add_vcc_errors() -> None:
    from ldoms.errors import AlreadyExistsError

    with pytest.raises(AlreadyExistsError, match="primary-vcc0 already exists"):
        do(consoled(), "add-vcc port-range=6000-6100 primary-vcc0 ldg1")
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        do(consoled(), "add-vcc port-range=6000-6100 vcc1 nosuch")
    with pytest.raises(BusyError, match="being migrated"):
        do(consoled(), "add-vcc port-range=6000-6100 vcc1 ldg1", OpContext(now=0.0, migrating={"ldg1": "x"}))


def test_set_vcc() -> None:
    m = apply(consoled(), "set-vcc port-range=5000-5010 primary-vcc0")
    assert m.domain("primary").config.vcc[0] == Vcc(name="primary-vcc0", port_min=5000, port_max=5010)
    m = apply(m, "add-vcc port-range=6000-6100 vcc1 ldg1")
    with pytest.raises(ResourceError, match="overlaps"):
        do(m, "set-vcc port-range=5000-6000 primary-vcc0")
    with pytest.raises(NotFoundError, match="Virtual console concentrator nosuch does not exist"):
        do(m, "set-vcc port-range=7000-7001 nosuch")


def test_set_vcc_keeps_ports_in_use() -> None:
    m = bound(consoled(), "ldg1", 5050, "primary-vcc0")
    with pytest.raises(StateError, match="LDom ldg1 holds console port 5050 of primary-vcc0"):
        do(m, "set-vcc port-range=5000-5049 primary-vcc0")
    asked = apply(consoled(), "set-vcons port=5080 service=primary-vcc0 ldg2")
    with pytest.raises(StateError, match="LDom ldg2 asks for console port 5080"):
        do(asked, "set-vcc port-range=5000-5049 primary-vcc0")
    apply(m, "set-vcc port-range=5050-5060 primary-vcc0")


def test_remove_vcc() -> None:
    assert apply(consoled(), "rm-vcc primary-vcc0").domain("primary").config.vcc == ()
    with pytest.raises(NotFoundError, match="does not exist"):
        do(consoled(), "rm-vcc nosuch")


def test_remove_vcc_in_use() -> None:
    m = apply(consoled(), "set-vcons service=primary-vcc0 ldg1")
    with pytest.raises(OpPrereqError, match="primary-vcc0 is attached to console in LDom ldg1"):
        do(m, "rm-vcc primary-vcc0")
    forced = apply(m, "rm-vcc -f primary-vcc0")
    assert forced.domain("ldg1").config.vcons == Vcons(service="")  # falls back to any vcc at bind
    live = bound(consoled(), "ldg2", 5000, "primary-vcc0", DomainState.ACTIVE)
    with pytest.raises(OpPrereqError, match="console in LDom ldg2, which is bound or active"):
        do(live, "rm-vcc -f primary-vcc0")


# ---------------------------------------------------------------- vcons
def test_set_vcons_and_reset() -> None:
    m = apply(consoled(), "set-vcons port=5005 group=grp1 service=primary-vcc0 ldg1")
    assert m.domain("ldg1").config.vcons == Vcons(group="grp1", service="primary-vcc0", port=5005)
    m = apply(m, "set-vcons group=grp2 ldg1")
    assert m.domain("ldg1").config.vcons == Vcons(group="grp2", service="primary-vcc0", port=5005)
    m = apply(m, "set-vcons port= group= service= ldg1")
    assert m.domain("ldg1").config.vcons == Vcons()


def test_set_vcons_port_without_service_must_fit_some_vcc() -> None:
    m = apply(consoled(), "add-vcc port-range=6000-6010 vcc1 ldg2")
    assert apply(m, "set-vcons port=6003 ldg1").domain("ldg1").config.vcons == Vcons(port=6003)
    with pytest.raises(
        ResourceError, match=r"outside the port range .*primary-vcc0 5000-5100, vcc1 6000-6010"
    ):
        do(m, "set-vcons port=7000 ldg1")
    with pytest.raises(ResourceError, match="no concentrator"):
        do(world(), "set-vcons port=5000 ldg1")


def test_set_vcons_errors() -> None:
    m = consoled()
    with pytest.raises(ResourceError, match="outside the port range"):
        do(m, "set-vcons port=6000 service=primary-vcc0 ldg1")
    with pytest.raises(NotFoundError, match="Virtual console concentrator nosuch does not exist"):
        do(m, "set-vcons service=nosuch ldg1")
    with pytest.raises(StateError, match="control domain's console is the service processor console"):
        do(m, "set-vcons group=g primary")
    with pytest.raises(StateError, match="LDom ldg1 is bound: set-vcons requires it to be inactive"):
        do(bound(m, "ldg1", 5000, "primary-vcc0"), "set-vcons group=g ldg1")
    with pytest.raises(StateError, match="is active"):
        do(bound(m, "ldg1", 5000, "primary-vcc0", DomainState.ACTIVE), "set-vcons group=g ldg1")
    with pytest.raises(BusyError, match="being migrated"):
        do(m, "set-vcons group=g ldg1", OpContext(now=0.0, migrating={"ldg1": "x"}))
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        do(m, "set-vcons group=g nosuch")


def test_set_vcons_refused_during_control_delayed_reconfig() -> None:
    m = apply(consoled(), "add-vsw primary-vsw0 primary", "add-vnet vnet0 primary-vsw0 primary")
    with pytest.raises(BusyError, match="delayed reconfiguration"):
        do(m, "set-vcons group=g ldg1")
