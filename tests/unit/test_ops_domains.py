"""add-domain, set-domain, remove-domain."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ops_world import CTX, do, ok, shrunk  # tests/unit is on sys.path (rootdir import)

from ldoms.binding import MAC_POOL_SIZE
from ldoms.errors import (
    AlreadyExistsError,
    BusyError,
    NotFoundError,
    OpPrereqError,
    StateError,
    UsageError,
)
from ldoms.model.domain import DomainConfig, DomainState, Vcc, Vnet
from ldoms.model.xmlio import constraints_to_xml
from ldoms.ops.common import DR_FIRST_NOTICE
from ldoms.units import G, parse_mac

MIGRATING = replace(CTX, migrating={"ldg1": "to host2"})


BASE = shrunk()


# ---------------------------------------------------------------- add-domain
def test_add_domain_allocates_identity() -> None:
    r = do(BASE, "add-domain", "ldg1", "ldg2")
    a, b = r.machine.domain("ldg1"), r.machine.domain("ldg2")
    assert a.state == DomainState.INACTIVE and a.bindings is None and a.config.vcpus == 0
    assert a.config.uuid and a.config.uuid != b.config.uuid
    base = BASE.platform.mac_base
    assert base <= a.config.mac < base + MAC_POOL_SIZE and a.config.mac != b.config.mac
    assert a.config.hostid == 0x80000000 | (a.config.mac & 0x0FFFFFFF)
    # Deterministic under a seed.
    assert ok(BASE, "create", "ldg1").domain("ldg1").config == a.config


def test_add_domain_with_properties() -> None:
    m = ok(BASE, "add-domain", "ldg0")
    m = ok(
        m,
        "add-dom",
        "mac-addr=00:14:4f:fa:00:01",
        "hostid=0x84faed88",
        "failure-policy=reset",
        "master=ldg0",
        "cpu-arch=generic",
        "ldg1",
    )
    cfg = m.domain("ldg1").config
    assert cfg.mac == parse_mac("00:14:4f:fa:00:01") and cfg.hostid == 0x84FAED88
    assert (cfg.failure_policy, cfg.master, cfg.cpu_arch) == ("reset", ("ldg0",), "generic")


def test_add_domain_from_xml() -> None:
    cfgs = [
        DomainConfig(
            name="ldg1",
            uuid="",
            hostid=0,
            mac=0,
            vcpus=4,
            memory=G,
            vnets=(Vnet(name="vnet0", service="primary-vsw0", mac=0),),
            variables=(("auto-boot?", "false"),),
        ),
        DomainConfig(
            name="ldg2",
            uuid="12345678-1234-4234-8234-123456789abc",
            hostid=0x84000001,
            mac=parse_mac("00:14:4f:fa:00:02"),
            vcpus=1,
            memory=G,
        ),
    ]
    m = ok(BASE, "add-domain", i=constraints_to_xml(cfgs))
    one, two = m.domain("ldg1").config, m.domain("ldg2").config
    assert (one.vcpus, one.memory, one.variables) == (4, G, (("auto-boot?", "false"),))
    assert one.uuid and one.mac and one.hostid and one.vnets[0].mac not in (0, one.mac)
    assert (two.uuid, two.hostid, two.mac) == (cfgs[1].uuid, cfgs[1].hostid, cfgs[1].mac)


def test_add_domain_refusals() -> None:
    m = ok(BASE, "add-domain", "ldg1")
    with pytest.raises(AlreadyExistsError, match="LDom ldg1 already exists"):
        do(m, "add-domain", "ldg1")
    with pytest.raises(AlreadyExistsError, match="LDom primary already exists"):
        do(m, "add-domain", "primary")
    with pytest.raises(AlreadyExistsError, match="LDom ldg2 already exists"):
        do(m, "add-domain", "ldg2", "ldg2")
    mac = m.domain("ldg1").config.mac
    with pytest.raises(AlreadyExistsError, match="already in use"):
        do(
            m,
            "add-domain",
            f"mac-addr={':'.join(f'{(mac >> s) & 255:02x}' for s in range(40, -1, -8))}",
            "ldg2",
        )
    with pytest.raises(NotFoundError, match="Master LDom nosuch of LDom ldg2 not found"):
        do(m, "add-domain", "master=nosuch", "ldg2")
    with pytest.raises(OpPrereqError, match="its own master"):
        do(m, "add-domain", "master=ldg2", "ldg2")
    for words in (
        ("1bad",),
        (),
        ("failure-policy=explode", "ldg2"),
        ("cpu-arch=sparc9", "ldg2"),
        ("hostid=zz", "ldg2"),
        ("hostid=0", "ldg2"),
        ("mac-addr=00:14", "ldg2"),
        ("master=", "ldg2"),
        ("master=a,b,c,d,e", "ldg2"),
        ("master=ldg1,ldg1", "ldg2"),
        ("failure-policy=panic", "ldg2", "ldg3"),
        ("bogus=1", "ldg2"),
    ):
        with pytest.raises(UsageError):
            do(m, "add-domain", *words)
    with pytest.raises(UsageError):
        do(m, "add-domain", "ldg2", i="<LDM_interface/>")
    with pytest.raises(UsageError):
        do(m, "add-domain", i="<not-ldm/>")
    with pytest.raises(UsageError):
        do(m, "add-domain", i="")
    with pytest.raises(AlreadyExistsError):
        do(m, "add-domain", i=constraints_to_xml([DomainConfig(name="ldg1", uuid="", hostid=0, mac=0)]))
    dr = ok(BASE, "set-mem", "5G", "primary")
    with pytest.raises(BusyError, match="delayed reconfiguration"):
        do(dr, "add-domain", "ldg2")


# ---------------------------------------------------------------- set-domain
def test_set_domain_policies_in_any_state() -> None:
    m = ok(ok(BASE, "add-domain", "ldg0"), "add-domain", "ldg1")
    m = ok(m, "set-vcpu", "1", "ldg1")
    m = ok(m, "set-mem", "1G", "ldg1")
    m = ok(m, "bind", "ldg1")
    m = ok(m, "start", "ldg1")
    m = ok(m, "set-domain", "failure-policy=stop", "master=ldg0", "ldg1")
    cfg = m.domain("ldg1").config
    assert (cfg.failure_policy, cfg.master) == ("stop", ("ldg0",))
    assert ok(m, "modify", "master=", "ldg1").domain("ldg1").config.master == ()


def test_set_domain_identity_rules() -> None:
    m = ok(BASE, "add-domain", "ldg1")
    m = ok(m, "set-dom", "cpu-arch=generic", "hostid=0x1234", "ldg1")
    assert (m.domain("ldg1").config.cpu_arch, m.domain("ldg1").config.hostid) == ("generic", 0x1234)
    m = ok(m, "set-vcpu", "1", "ldg1")
    m = ok(m, "set-mem", "1G", "ldg1")
    m = ok(m, "bind", "ldg1")
    assert ok(m, "set-domain", "cpu-arch=native", "ldg1").domain("ldg1").config.cpu_arch == "native"
    m = ok(m, "start", "ldg1")
    with pytest.raises(StateError, match="only while it is bound or inactive"):
        do(m, "set-domain", "cpu-arch=native", "ldg1")
    # The control domain: a delayed reconfiguration for the MD part, at once for the policy part.
    r = do(BASE, "set-domain", "hostid=0x99", "failure-policy=panic", "primary")
    assert r.messages == (DR_FIRST_NOTICE,)
    p = r.machine.control
    assert p.config.failure_policy == "panic" and p.config.hostid != 0x99
    assert p.pending.hostid == 0x99 and p.pending.failure_policy == "panic"
    # A policy change during the delayed reconfiguration reaches both.
    p2 = ok(r.machine, "set-domain", "failure-policy=reset", "primary").control
    assert p2.config.failure_policy == "reset" == p2.pending.failure_policy


def test_set_domain_from_xml_replaces_inactive_definitions() -> None:
    m = ok(BASE, "add-domain", "ldg1")
    old = m.domain("ldg1").config
    xml = constraints_to_xml([DomainConfig(name="ldg1", uuid="", hostid=0, mac=0, vcpus=2, memory=G)])
    new = ok(m, "set-domain", i=xml).domain("ldg1").config
    assert (new.vcpus, new.memory, new.uuid, new.mac, new.hostid) == (2, G, old.uuid, old.mac, old.hostid)
    bound = ok(ok(ok(m, "set-vcpu", "1", "ldg1"), "set-mem", "1G", "ldg1"), "bind", "ldg1")
    with pytest.raises(StateError, match="inactive domains only"):
        do(bound, "set-domain", i=xml)
    with pytest.raises(NotFoundError):
        do(BASE, "set-domain", i=xml)


def test_set_domain_refusals() -> None:
    m = ok(ok(BASE, "add-domain", "ldg1"), "add-domain", "ldg2")
    m = ok(m, "set-domain", "master=ldg1", "ldg2")
    with pytest.raises(OpPrereqError, match="cycle"):
        do(m, "set-domain", "master=ldg2", "ldg1")
    with pytest.raises(OpPrereqError, match="cannot have a master"):
        do(m, "set-domain", "master=ldg1", "primary")
    with pytest.raises(AlreadyExistsError, match="already in use"):
        mac = m.domain("ldg1").config.mac
        do(
            m,
            "set-domain",
            f"mac-addr={':'.join(f'{(mac >> s) & 255:02x}' for s in range(40, -1, -8))}",
            "ldg2",
        )
    with pytest.raises(UsageError):
        do(m, "set-domain", "ldg1")  # nothing to set
    with pytest.raises(UsageError):
        do(m, "set-domain", "failure-policy=stop", "ldg1", "ldg2")
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        do(m, "set-domain", "failure-policy=stop", "nosuch")
    with pytest.raises(BusyError, match="being migrated"):
        do(m, "set-domain", "failure-policy=stop", "ldg1", ctx=MIGRATING)
    dr = ok(m, "set-mem", "5G", "primary")
    with pytest.raises(BusyError, match="delayed reconfiguration"):
        do(dr, "set-domain", "failure-policy=stop", "ldg1")


# ---------------------------------------------------------------- remove-domain
def test_remove_domain() -> None:
    m = ok(BASE, "add-domain", "ldg1", "ldg2", "ldg3")
    m = ok(m, "rm-dom", "ldg1", "ldg2")
    assert [d.name for d in m.domains] == ["primary", "ldg3"]
    assert [d.name for d in ok(m, "destroy", "-a").domains] == ["primary"]
    assert ok(BASE, "remove-domain", "-a").domains == BASE.domains


def test_remove_domain_refusals() -> None:
    m = ok(BASE, "add-domain", "ldg1", "ldg2")
    with pytest.raises(OpPrereqError, match="control domain"):
        do(m, "remove-domain", "primary")
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        do(m, "remove-domain", "ldg1", "nosuch")
    bound = ok(ok(ok(m, "set-vcpu", "1", "ldg1"), "set-mem", "1G", "ldg1"), "bind", "ldg1")
    with pytest.raises(StateError, match="only an inactive domain can be removed"):
        do(bound, "remove-domain", "ldg1")
    with pytest.raises(StateError):
        do(bound, "remove-domain", "-a")
    assert bound.find("ldg2") is not None  # all or none
    slave = ok(m, "set-domain", "master=ldg1", "ldg2")
    with pytest.raises(OpPrereqError, match="master of LDom ldg2"):
        do(slave, "remove-domain", "ldg1")
    assert [d.name for d in ok(slave, "remove-domain", "ldg1", "ldg2").domains] == ["primary"]
    svc = m.with_domain(
        replace(
            m.domain("ldg1"),
            config=replace(m.domain("ldg1").config, vcc=(Vcc(name="vcc9", port_min=5000, port_max=5100),)),
        )
    )
    svc = svc.with_domain(
        replace(
            svc.domain("ldg2"),
            config=replace(svc.domain("ldg2").config, vnets=(Vnet(name="n", service="vcc9", mac=1),)),
        )
    )
    with pytest.raises(OpPrereqError, match="service vcc9 is used by LDom ldg2"):
        do(svc, "remove-domain", "ldg1")
    with pytest.raises(BusyError):
        do(m, "remove-domain", "ldg1", ctx=MIGRATING)
    with pytest.raises(UsageError):
        do(m, "remove-domain")
    with pytest.raises(UsageError):
        do(m, "remove-domain", "-a", "ldg1")
    dr = ok(m, "set-mem", "5G", "primary")
    with pytest.raises(BusyError):
        do(dr, "remove-domain", "ldg1")
