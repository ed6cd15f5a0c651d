"""bind, unbind, start, stop: transitions, effects, the control domain's reboot, and every refusal."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ops_world import CTX, do, ok, shrunk  # tests/unit is on sys.path (rootdir import)

from ldoms.binding import free_strands
from ldoms.errors import BusyError, NotFoundError, OpPrereqError, ResourceError, StateError, UsageError
from ldoms.model.domain import DomainConfig, DomainState, MigrationRole
from ldoms.model.machine import Machine
from ldoms.model.xmlio import constraints_to_xml
from ldoms.ops.base import StartGuest, StopGuest
from ldoms.units import G

MIGRATING = replace(CTX, migrating={"ldg9": "to host2"})


BASE = shrunk()


def defined(*names: str) -> Machine:
    m = BASE
    for n in names:
        m = ok(m, "add-domain", n)
        m = ok(m, "set-vcpu", "2", n)
        m = ok(m, "set-mem", "1G", n)
    return m


def test_bind_unbind() -> None:
    m = ok(defined("ldg1"), "bind-domain", "ldg1")
    d = m.domain("ldg1")
    assert d.state == DomainState.BOUND and len(d.bindings.strands) == 2 and d.bindings.memory == G
    assert not set(d.bindings.strands) & set(free_strands(m))
    m = ok(m, "unbind", "ldg1")
    assert m.domain("ldg1").state == DomainState.INACTIVE and m.domain("ldg1").bindings is None
    assert free_strands(m) == free_strands(defined("ldg1"))


def test_bind_refusals() -> None:
    m = ok(BASE, "add-domain", "ldg1")
    with pytest.raises(OpPrereqError, match="has no virtual CPUs"):
        do(m, "bind", "ldg1")
    with pytest.raises(OpPrereqError, match="has no memory"):
        do(ok(m, "set-vcpu", "1", "ldg1"), "bind", "ldg1")
    bound = ok(defined("ldg1"), "bind", "ldg1")
    with pytest.raises(StateError, match="LDom ldg1 is already bound"):
        do(bound, "bind", "ldg1")
    with pytest.raises(StateError, match="already active"):
        do(BASE, "bind", "primary")
    with pytest.raises(ResourceError):
        do(ok(defined("ldg1"), "set-vcpu", "121", "ldg1"), "bind", "ldg1")
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        do(BASE, "bind", "nosuch")
    with pytest.raises(BusyError, match="Cannot bind while a migration of LDom ldg9"):
        do(defined("ldg1"), "bind", "ldg1", ctx=MIGRATING)
    with pytest.raises(BusyError, match="migration of LDom ldg9"):
        do(defined("ldg9"), "bind", "ldg9", ctx=MIGRATING)
    with pytest.raises(BusyError, match="delayed reconfiguration"):
        do(ok(defined("ldg1"), "set-mem", "5G", "primary"), "bind", "ldg1")
    with pytest.raises(UsageError):
        do(defined("ldg1", "ldg2"), "bind", "ldg1", "ldg2")
    with pytest.raises(UsageError):
        do(BASE, "bind")


def test_bind_and_start_from_xml() -> None:
    xml = constraints_to_xml([DomainConfig(name="ldg1", uuid="", hostid=0, mac=0, vcpus=2, memory=G)])
    assert ok(BASE, "bind-domain", i=xml).domain("ldg1").state == DomainState.BOUND
    r = do(BASE, "start-domain", i=xml)
    assert r.machine.domain("ldg1").state == DomainState.ACTIVE and r.effects == (StartGuest(domain="ldg1"),)
    two = constraints_to_xml(
        [
            DomainConfig(name="ldg1", uuid="", hostid=0, mac=0, vcpus=2, memory=G),
            DomainConfig(name="ldg2", uuid="", hostid=0, mac=0, vcpus=2, memory=G),
        ]
    )
    with pytest.raises(UsageError, match="bind-domain -i takes one"):
        do(BASE, "bind-domain", i=two)
    assert {d.name for d in ok(BASE, "start", i=two).domains} == {"primary", "ldg1", "ldg2"}


def test_unbind_refusals() -> None:
    active = ok(ok(defined("ldg1"), "bind", "ldg1"), "start", "ldg1")
    with pytest.raises(StateError, match="stop it first"):
        do(active, "unbind", "ldg1")
    with pytest.raises(StateError, match="not bound"):
        do(defined("ldg1"), "unbind-domain", "ldg1")
    with pytest.raises(StateError):
        do(BASE, "unbind", "primary")
    with pytest.raises(BusyError):
        do(ok(defined("ldg9"), "bind", "ldg9"), "unbind", "ldg9", ctx=MIGRATING)


def test_start_and_stop() -> None:
    m = ok(ok(defined("ldg1", "ldg2"), "bind", "ldg1"), "bind", "ldg2")
    r = do(m, "start", "-a")
    assert r.messages == ("LDom ldg1 started", "LDom ldg2 started")
    assert r.effects == (StartGuest(domain="ldg1"), StartGuest(domain="ldg2"))
    g = r.machine.domain("ldg1")
    assert (g.state, g.started_at, g.softstate) == (DomainState.ACTIVE, 1000.0, "Solaris running")
    r = do(r.machine, "stop-domain", "-f", "ldg1")
    assert r.messages == ("LDom ldg1 stopped",) and r.effects == (StopGuest(domain="ldg1"),)
    g = r.machine.domain("ldg1")
    assert (g.state, g.started_at, g.softstate) == (DomainState.BOUND, 0.0, "")
    assert g.bindings is not None  # stop keeps the resources
    r = do(r.machine, "stop", "-a")  # guests only; the control domain is not rebooted by -a
    assert r.effects == (StopGuest(domain="ldg2"),) and r.machine.control == m.control


def test_start_all_skips_migration_shells() -> None:
    m = ok(ok(defined("ldg1", "ldg2"), "bind", "ldg1"), "bind", "ldg2")
    m = m.with_domain(replace(m.domain("ldg2"), migration=MigrationRole.TARGET))
    assert do(m, "start", "-a").effects == (StartGuest(domain="ldg1"),)


def test_stop_ends_what_lasts_until_reboot() -> None:
    m = ok(ok(defined("ldg1"), "bind", "ldg1"), "start", "ldg1")
    d = m.domain("ldg1")
    spare = free_strands(m)[-2:]
    m = m.with_domain(replace(d, cpu_dr_disabled=True, bindings=replace(d.bindings, reserved_strands=spare)))
    d = ok(m, "stop", "ldg1").domain("ldg1")
    assert not d.cpu_dr_disabled and d.bindings.reserved_strands == ()


def test_stop_primary_is_a_reboot() -> None:
    r = do(BASE, "stop", "primary", ctx=replace(CTX, now=5000.0))
    p = r.machine.control
    assert p.state == DomainState.ACTIVE and p.started_at == 5000.0 and p.config == BASE.control.config
    assert r.effects == () and "rebooted" in r.messages[0] and "took effect" not in r.messages[0]
    dr = ok(BASE, "set-mem", "2G", "primary")
    dr = dr.with_domain(replace(dr.control, pending_vio_removed=True))
    p = ok(dr, "stop", "primary").control
    assert p.config.memory == 2 * G and p.bindings.memory == 2 * G
    assert p.pending is None and not p.pending_vio_removed


def test_start_stop_refusals() -> None:
    bound = ok(defined("ldg1"), "bind", "ldg1")
    active = ok(bound, "start", "ldg1")
    with pytest.raises(StateError, match="LDom ldg1 is already active"):
        do(active, "start", "ldg1")
    with pytest.raises(StateError, match="already active"):
        do(BASE, "start", "primary")
    with pytest.raises(StateError, match="not bound: bind it first"):
        do(defined("ldg1"), "start", "ldg1")
    with pytest.raises(StateError, match="it is already stopped"):
        do(bound, "stop", "ldg1")
    with pytest.raises(StateError, match="not active"):
        do(defined("ldg1"), "stop", "ldg1")
    with pytest.raises(NotFoundError):
        do(active, "stop", "ldg1", "nosuch")
    with pytest.raises(BusyError, match="Cannot stop while a migration"):
        do(active, "stop", "ldg1", ctx=MIGRATING)
    with pytest.raises(BusyError, match="being migrated"):
        do(ok(defined("ldg9"), "bind", "ldg9"), "start", "ldg9", ctx=MIGRATING)
    for verb, words in (
        ("start", ()),
        ("stop", ()),
        ("start", ("-a", "ldg1")),
        ("stop", ("-x", "ldg1")),
        ("stop", ("bad name",)),
    ):
        with pytest.raises(UsageError):
            do(active, verb, *words)
