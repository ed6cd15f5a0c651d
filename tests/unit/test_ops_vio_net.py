"""Virtual network verbs: add/set/remove-vsw, add/set/remove-vnet."""

from __future__ import annotations

import pytest
from vio_world import apply, do, with_state, world  # tests/unit is on sys.path (rootdir import)

from ldoms.errors import AlreadyExistsError, BusyError, NotFoundError, OpPrereqError, StateError, UsageError
from ldoms.model.domain import DomainState, Vnet
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, lookup
from ldoms.ops.common import DR_FIRST_NOTICE
from ldoms.units import parse_mac

# ---------------------------------------------------------------- helpers


def switched() -> Machine:
    return apply(world(), "add-vsw net-dev=e1000g0 primary-vsw0 primary")


def all_macs(m: Machine) -> list[int]:
    out = []
    for d in m.domains:
        out.append(d.config.mac)
        out += [v.mac for v in d.config.vnets] + [s.mac for s in d.config.vsw]
    return out


# ---------------------------------------------------------------- grammar
@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("add-vswitch", "add-vsw"),
        ("set-vswitch", "set-vsw"),
        ("rm-vsw", "remove-vsw"),
        ("rm-vswitch", "remove-vsw"),
        ("remove-vswitch", "remove-vsw"),
        ("rm-vnet", "remove-vnet"),
    ],
)
def test_aliases(alias: str, canonical: str) -> None:
    assert lookup(alias).spec.name == canonical


@pytest.mark.parametrize(
    "line",
    [
        "add-vsw mtu=1499 vsw1 primary",
        "add-vsw mtu=16001 vsw1 primary",
        "add-vsw mtu=big vsw1 primary",
        "add-vsw pvid=0 vsw1 primary",
        "add-vsw vid=10,4095 vsw1 primary",
        "add-vsw vid=10,,20 vsw1 primary",
        "add-vsw default-vlan-id=5000 vsw1 primary",
        "add-vsw mode=hybrid vsw1 primary",
        "add-vsw mode= vsw1 primary",
        "add-vsw mac-addr=00:14:4f:zz:00:01 vsw1 primary",
        "add-vsw mac-addr= vsw1 primary",
        "add-vsw linkprop=fast vsw1 primary",
        "add-vsw id=-1 vsw1 primary",
        "add-vsw default-vlan-id=1 vsw1",
        "set-vsw primary-vsw0",
        "set-vsw default-vlan-id=2 primary-vsw0",  # not settable (1.2/1.3 synopsis)
        "set-vsw mode=hybrid primary-vsw0",
        "set-vsw mac-addr= primary-vsw0",
        "add-vnet mode=sc vnet1 primary-vsw0 ldg1",
        "add-vnet vnet1 primary-vsw0",
        "add-vnet 1vnet primary-vsw0 ldg1",
        "set-vnet vnet1 ldg1",
        "set-vnet vswitch= vnet1 ldg1",
        "set-vnet mode=sc vnet1 ldg1",
        "remove-vnet vnet1",
    ],
)
def test_usage_errors(line: str) -> None:
    with pytest.raises(UsageError):
        do(switched(), line)


# ---------------------------------------------------------------- vsw
def test_add_vsw_defaults_and_auto_mac() -> None:
    m = switched()
    (vsw,) = m.domain("primary").config.vsw
    assert (
        vsw.name,
        vsw.net_dev,
        vsw.default_vlan_id,
        vsw.pvid,
        vsw.vids,
        vsw.mode,
        vsw.mtu,
        vsw.id,
        vsw.linkprop,
    ) == ("primary-vsw0", "e1000g0", 1, 1, (), "", 1500, 0, "")
    pool = m.platform.mac_base
    assert pool <= vsw.mac < pool + 0x40000
    assert m.domain("primary").pending is None


def test_add_vsw_all_properties() -> None:
    m = apply(
        switched(),
        "add-vsw default-vlan-id=7 pvid=3 vid=10,20,10 linkprop=phys-state "
        "mac-addr=00:14:4f:fb:00:01 net-dev=nxge0 mode=sc mtu=9000 id=5 vsw1 ldg1",
    )
    (vsw,) = m.domain("ldg1").config.vsw
    assert (
        vsw.default_vlan_id,
        vsw.pvid,
        vsw.vids,
        vsw.linkprop,
        vsw.mac,
        vsw.net_dev,
        vsw.mode,
        vsw.mtu,
        vsw.id,
    ) == (7, 3, (10, 20), "phys-state", parse_mac("00:14:4f:fb:00:01"), "nxge0", "sc", 9000, 5)


def test_switch_ids_lowest_free_per_owner() -> None:
    m = apply(
        world(),
        "add-vsw id=1 vswA primary",
        "add-vsw vswB primary",
        "add-vsw vswC primary",
        "add-vsw vswD ldg1",
    )
    assert [s.id for s in m.domain("primary").config.vsw] == [1, 0, 2]
    assert [s.id for s in m.domain("ldg1").config.vsw] == [0]
    with pytest.raises(
        AlreadyExistsError, match=r"switch@2 already exists in LDom primary \(virtual switch vswC\)"
    ):
        do(m, "add-vsw id=2 vswE primary")


def test_add_vsw_errors() -> None:
    m = switched()
    with pytest.raises(AlreadyExistsError, match="primary-vsw0 already exists"):
        do(m, "add-vsw primary-vsw0 ldg1")
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        do(m, "add-vsw vsw1 nosuch")
    ldg1_mac = "00:14:4f:aa:00:00"
    with pytest.raises(
        AlreadyExistsError, match=f"MAC address {ldg1_mac} already exists: it is used by LDom ldg1"
    ):
        do(m, f"add-vsw mac-addr={ldg1_mac} vsw1 primary")
    with pytest.raises(BusyError, match="being migrated"):
        do(m, "add-vsw vsw1 ldg1", OpContext(now=0.0, migrating={"ldg1": "to host2"}))


def test_set_vsw_changes_and_resets() -> None:
    m = apply(
        switched(),
        "set-vsw pvid=5 vid=7,8 net-dev=nxge1 linkprop=phys-state mode=sc mtu=9000 "
        "mac-addr=00:14:4f:fb:00:09 primary-vsw0",
    )
    (vsw,) = m.domain("primary").config.vsw
    assert (vsw.pvid, vsw.vids, vsw.net_dev, vsw.linkprop, vsw.mode, vsw.mtu, vsw.mac) == (
        5,
        (7, 8),
        "nxge1",
        "phys-state",
        "sc",
        9000,
        parse_mac("00:14:4f:fb:00:09"),
    )
    m = apply(m, "set-vsw pvid= vid= net-dev= linkprop= mode= mtu= primary-vsw0")
    (vsw,) = m.domain("primary").config.vsw
    assert (vsw.pvid, vsw.vids, vsw.net_dev, vsw.linkprop, vsw.mode, vsw.mtu) == (1, (), "", "", "", 1500)


def test_set_vsw_errors() -> None:
    m = apply(switched(), "add-vnet vnet1 primary-vsw0 ldg1")
    vnet_mac = m.domain("ldg1").config.vnets[0].mac
    own = m.domain("primary").config.vsw[0].mac
    from ldoms.units import format_mac

    with pytest.raises(AlreadyExistsError, match="used by vnet vnet1 in LDom ldg1"):
        do(m, f"set-vsw mac-addr={format_mac(vnet_mac)} primary-vsw0")
    apply(m, f"set-vsw mac-addr={format_mac(own)} primary-vsw0")  # its own MAC is fine
    with pytest.raises(NotFoundError, match="Virtual switch nosuch does not exist"):
        do(m, "set-vsw mtu=9000 nosuch")


def test_remove_vsw() -> None:
    assert apply(switched(), "rm-vsw primary-vsw0").domain("primary").config.vsw == ()
    with pytest.raises(NotFoundError, match="does not exist"):
        do(switched(), "remove-vswitch nosuch")


def test_remove_vsw_in_use_names_users() -> None:
    m = apply(switched(), "add-vnet vnet1 primary-vsw0 ldg1", "add-vnet vnet2 primary-vsw0 ldg2")
    with pytest.raises(OpPrereqError, match="vnet vnet1 in LDom ldg1, vnet vnet2 in LDom ldg2"):
        do(m, "rm-vsw primary-vsw0")
    assert apply(m, "rm-vsw -f primary-vsw0").domain("primary").config.vsw == ()
    active = with_state(m, "ldg2", DomainState.ACTIVE)
    with pytest.raises(OpPrereqError, match="vnet vnet2 in LDom ldg2, which is bound or active"):
        do(active, "rm-vsw -f primary-vsw0")


# ---------------------------------------------------------------- vnet
def test_add_vnet_auto_mac_and_ids_unique() -> None:
    m = apply(
        switched(),
        "add-vnet vnet1 primary-vsw0 ldg1",
        "add-vnet vnet2 primary-vsw0 ldg1",
        "add-vnet vnet1 primary-vsw0 ldg2",
    )
    v1, v2 = m.domain("ldg1").config.vnets
    assert (v1.id, v2.id, m.domain("ldg2").config.vnets[0].id) == (0, 1, 0)
    macs = all_macs(m)
    assert len(macs) == len(set(macs))
    assert v1 == Vnet(name="vnet1", service="primary-vsw0", mac=v1.mac)


def test_add_vnet_all_properties() -> None:
    m = apply(
        switched(),
        "add-vnet mac-addr=00:14:4f:fb:11:22 mode=hybrid pvid=2 vid=3,4 linkprop=phys-state "
        "mtu=16000 id=7 vnet1 primary-vsw0 ldg1",
    )
    (v,) = m.domain("ldg1").config.vnets
    assert (v.mac, v.hybrid, v.pvid, v.vids, v.linkprop, v.mtu, v.id) == (
        parse_mac("00:14:4f:fb:11:22"),
        True,
        2,
        (3, 4),
        "phys-state",
        16000,
        7,
    )


def test_add_vnet_errors() -> None:
    m = apply(switched(), "add-vnet id=3 vnet1 primary-vsw0 ldg1")
    with pytest.raises(AlreadyExistsError, match="Vnet vnet1 already exists in LDom ldg1"):
        do(m, "add-vnet vnet1 primary-vsw0 ldg1")
    with pytest.raises(NotFoundError, match="Virtual switch nosuch does not exist"):
        do(m, "add-vnet vnet2 nosuch ldg1")
    with pytest.raises(AlreadyExistsError, match=r"network@3 already exists in LDom ldg1 \(vnet vnet1\)"):
        do(m, "add-vnet id=3 vnet2 primary-vsw0 ldg1")
    vsw_mac = m.domain("primary").config.vsw[0].mac
    from ldoms.units import format_mac

    with pytest.raises(AlreadyExistsError, match="virtual switch primary-vsw0 in LDom primary"):
        do(m, f"add-vnet mac-addr={format_mac(vsw_mac)} vnet2 primary-vsw0 ldg1")
    with pytest.raises(BusyError, match="being migrated"):
        do(m, "add-vnet vnet2 primary-vsw0 ldg1", OpContext(now=0.0, migrating={"ldg1": "to host2"}))


def test_vnet_on_active_guest_is_dynamic() -> None:
    m = with_state(switched(), "ldg1", DomainState.ACTIVE)
    res = do(m, "add-vnet vnet1 primary-vsw0 ldg1")
    assert res.messages == () and res.machine.domain("ldg1").pending is None
    m = apply(res.machine, "set-vnet pvid=9 vid=10 mtu=9000 linkprop=phys-state vnet1 ldg1")
    v = m.domain("ldg1").config.vnets[0]
    assert (v.pvid, v.vids, v.mtu, v.linkprop) == (9, (10,), 9000, "phys-state")
    assert apply(m, "rm-vnet vnet1 ldg1").domain("ldg1").config.vnets == ()


def test_set_vnet_mode_and_mac_refused_on_active_guest() -> None:
    m = with_state(apply(switched(), "add-vnet vnet1 primary-vsw0 ldg1"), "ldg1", DomainState.ACTIVE)
    with pytest.raises(StateError, match="Cannot change mode= of vnet vnet1: LDom ldg1 is active"):
        do(m, "set-vnet mode=hybrid vnet1 ldg1")
    with pytest.raises(StateError, match="Cannot change mac-addr of vnet vnet1: LDom ldg1 is active"):
        do(m, "set-vnet mac-addr=00:14:4f:fb:00:42 vnet1 ldg1")
    apply(m, "set-vnet mode= vnet1 ldg1")  # already off: no change, accepted
    bound = with_state(m, "ldg1", DomainState.BOUND)
    v = (
        apply(bound, "set-vnet mode=hybrid mac-addr=00:14:4f:fb:00:42 vnet1 ldg1")
        .domain("ldg1")
        .config.vnets[0]
    )
    assert v.hybrid and v.mac == parse_mac("00:14:4f:fb:00:42")


def test_set_vnet_on_inactive_guest() -> None:
    m = apply(
        switched(),
        "add-vsw primary-vsw1 primary",
        "add-vnet mode=hybrid pvid=4 mtu=9000 vnet1 primary-vsw0 ldg1",
        "set-vnet mode= vswitch=primary-vsw1 pvid= vid= mtu= linkprop= vnet1 ldg1",
    )
    v = m.domain("ldg1").config.vnets[0]
    assert (v.hybrid, v.service, v.pvid, v.vids, v.mtu, v.linkprop) == (
        False,
        "primary-vsw1",
        1,
        (),
        1500,
        "",
    )


def test_set_vnet_errors() -> None:
    m = apply(switched(), "add-vnet vnet1 primary-vsw0 ldg1", "add-vnet vnet2 primary-vsw0 ldg1")
    with pytest.raises(NotFoundError, match="Vnet vnet9 does not exist in LDom ldg1"):
        do(m, "set-vnet mtu=9000 vnet9 ldg1")
    with pytest.raises(NotFoundError, match="Virtual switch nosuch does not exist"):
        do(m, "set-vnet vswitch=nosuch vnet1 ldg1")
    from ldoms.units import format_mac

    other = format_mac(m.domain("ldg1").config.vnets[1].mac)
    with pytest.raises(AlreadyExistsError, match="used by vnet vnet2 in LDom ldg1"):
        do(m, f"set-vnet mac-addr={other} vnet1 ldg1")


def test_vnet_on_control_domain_is_delayed_reconfiguration() -> None:
    m = switched()
    res = do(m, "add-vnet vnet0 primary-vsw0 primary")
    primary = res.machine.domain("primary")
    assert res.messages == (DR_FIRST_NOTICE,)
    assert primary.config.vnets == () and [v.name for v in primary.pending.vnets] == ["vnet0"]  # type: ignore[union-attr]
    # the pending vnet's MAC is taken: a new vnet elsewhere gets another one
    m2 = apply(res.machine, "set-vnet mode=hybrid vnet0 primary")  # hybrid on the control domain: delayed
    assert m2.domain("primary").pending.vnets[0].hybrid  # type: ignore[union-attr]
    with pytest.raises(BusyError, match="delayed reconfiguration"):
        do(m2, "add-vnet vnet1 primary-vsw0 ldg1")
    removed = apply(m2, "rm-vnet vnet0 primary").domain("primary")
    assert removed.pending is not None and removed.pending.vnets == () and removed.pending_vio_removed


def test_pending_macs_are_not_reused() -> None:
    m = apply(switched(), "add-vnet vnet0 primary-vsw0 primary", "add-vsw vsw9 primary")
    pending_mac = m.domain("primary").pending.vnets[0].mac  # type: ignore[union-attr]
    assert m.domain("primary").config.vsw[1].mac != pending_mac


def test_remove_vnet() -> None:
    m = apply(switched(), "add-vnet vnet1 primary-vsw0 ldg1")
    assert apply(m, "remove-vnet -f vnet1 ldg1").domain("ldg1").config.vnets == ()
    with pytest.raises(NotFoundError, match="Vnet vnet1 does not exist in LDom ldg2"):
        do(m, "rm-vnet vnet1 ldg2")
    with pytest.raises(BusyError, match="being migrated"):
        do(m, "rm-vnet vnet1 ldg1", OpContext(now=0.0, migrating={"ldg1": "to host2"}))
