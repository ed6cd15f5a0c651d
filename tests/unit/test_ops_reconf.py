"""Delayed reconfiguration of the control domain, the state rules of resource changes, cancel-operation, and
the LDoms 1.2 administrator's usual sequence end to end."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ops_world import CTX  # tests/unit is on sys.path (rootdir import)

from ldoms.binding import factory_default
from ldoms.errors import BusyError, NotFoundError, OpPrereqError, ResourceError, StateError, UsageError
from ldoms.model.domain import DomainState, MigrationRole
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.ops import reconf
from ldoms.ops.base import CancelMigration, OpContext, OpResult, Request, StartGuest, lookup, run
from ldoms.ops.common import DR_FIRST_NOTICE, DR_NOTICE
from ldoms.units import G, M


def fresh() -> Machine:
    return factory_default(load_platform("t5240"), "host1", seed=1)


def do(m: Machine, verb: str, *words: str, ctx: OpContext = CTX, **flags: object) -> OpResult:
    """Run `ldm verb words...`: `k=v` words are properties when the verb knows the key, else operands."""
    spec = lookup(verb).spec
    props, operands = [], []
    for w in words:
        key, sep, value = w.partition("=")
        if sep and key in spec.props:
            props.append((key, value))
        elif w.startswith("-") and len(w) == 2:
            flags[w] = True
        else:
            operands.append(w)
    req = Request(
        verb=verb,
        flags={k.replace("_", "-"): v for k, v in flags.items()},
        props=tuple(props),
        operands=tuple(operands),
    )
    return run(m, req, ctx)


def ok(m: Machine, verb: str, *words: str, ctx: OpContext = CTX) -> Machine:
    return do(m, verb, *words, ctx=ctx).machine


def shrunk() -> Machine:
    """primary with 1 MAU, 8 vCPUs and 4G after its reboot: room for guests."""
    m = fresh()
    for verb, *words in (("set-mau", "1"), ("set-vcpu", "8"), ("set-mem", "4G")):
        m = ok(m, verb, *words, "primary")
    return ok(m, "stop", "primary")


def with_guest(state: DomainState = DomainState.ACTIVE, name: str = "ldg1") -> Machine:
    m = shrunk()
    m = ok(m, "add-domain", name)
    m = ok(m, "set-vcpu", "8", name)
    m = ok(m, "set-mem", "2G", name)
    if state == DomainState.INACTIVE:
        return m
    m = ok(m, "bind", name)
    if state == DomainState.BOUND:
        return m
    return ok(m, "start", name)


# ---------------------------------------------------------------- the usual sequence
def test_admin_sequence_shrink_reboot_create_bind_start() -> None:
    m = fresh()
    r = do(m, "set-mau", "1", "primary")
    assert r.messages == (DR_FIRST_NOTICE,)
    assert r.machine.control.pending is not None and r.machine.control.config.mau == 16
    r = do(r.machine, "set-vcpu", "8", "primary")
    assert r.messages == (DR_NOTICE,)
    r = do(r.machine, "set-memory", "4G", "primary")
    assert r.messages == (DR_NOTICE,)
    m = r.machine
    # Nothing took effect yet, and other domains cannot be created.
    assert m.control.config.vcpus == 128 and len(m.control.bindings.strands) == 128
    with pytest.raises(BusyError, match="delayed reconfiguration"):
        do(m, "add-domain", "ldg1")
    m = ok(m, "add-spconfig", "initial")  # LDoms' "ldm add-config initial" before the reboot
    r = do(m, "stop-domain", "primary", ctx=replace(CTX, now=2000.0))
    assert "rebooted" in r.messages[0] and "delayed reconfiguration took effect" in r.messages[0]
    assert r.effects == ()
    p = r.machine.control
    assert p.state == DomainState.ACTIVE and p.pending is None and p.started_at == 2000.0
    assert (p.config.vcpus, p.config.mau, p.config.memory) == (8, 1, 4 * G)
    assert len(p.bindings.strands) == 8 and len(p.bindings.maus) == 1 and p.bindings.memory == 4 * G
    m = ok(r.machine, "add-domain", "ldg1")
    m = ok(m, "set-vcpu", "4", "ldg1")
    m = ok(m, "set-memory", "1G", "ldg1")
    m = ok(m, "bind-domain", "ldg1")
    assert m.domain("ldg1").state == DomainState.BOUND
    r = do(m, "start-domain", "ldg1")
    assert r.messages == ("LDom ldg1 started",) and r.effects == (StartGuest(domain="ldg1"),)
    g = r.machine.domain("ldg1")
    assert g.state == DomainState.ACTIVE and g.softstate == "Solaris running" and g.started_at == 1000.0
    assert len(g.bindings.strands) == 4 and g.bindings.memory == 1 * G
    assert not set(g.bindings.strands) & set(r.machine.control.bindings.strands)


# ---------------------------------------------------------------- control domain rules
def test_control_vcpu_is_dynamic_when_nothing_is_pending() -> None:
    m = shrunk()
    r = do(m, "add-vcpu", "8", "primary")
    assert r.messages == () and r.machine.control.pending is None
    assert len(r.machine.control.bindings.strands) == 16


def test_control_vcpu_is_delayed_when_policy_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconf, "CONTROL_CPU_DR", False)
    r = do(fresh(), "set-vcpu", "16", "primary")  # 16 strands: one for each of the 16 MAUs
    assert r.messages == (DR_FIRST_NOTICE,)
    assert r.machine.control.pending.vcpus == 16 and r.machine.control.config.vcpus == 128
    assert len(r.machine.control.bindings.strands) == 128


def test_control_memory_crypto_io_are_delayed() -> None:
    m = shrunk()
    for verb, words in (("add-mem", ("1G",)), ("set-crypto", ("2",)), ("rm-io", ("bus_b",))):
        r = do(m, verb, *words, "primary")
        assert r.messages == (DR_FIRST_NOTICE,)
        assert r.machine.control.config == m.control.config


def test_delayed_change_is_validated_now() -> None:
    with pytest.raises(ResourceError):
        do(shrunk(), "add-mem", "30G", "primary")  # more than is free: the reboot could not do it


def test_other_domains_are_frozen_during_delayed_reconfiguration() -> None:
    m = with_guest(DomainState.BOUND)
    m = ok(m, "set-mem", "3G", "primary")
    for verb, words in (
        ("set-vcpu", ("2", "ldg1")),
        ("set-mem", ("1G", "ldg1")),
        ("set-var", ("auto-boot?=false", "ldg1")),
        ("rm-dom", ("ldg1",)),
        ("add-domain", ("ldg2",)),
    ):
        with pytest.raises(BusyError, match="ldm cancel-operation reconf primary"):
            do(m, verb, *words)
    # Starting and stopping are not reconfigurations.
    m = ok(m, "start", "ldg1")
    m = ok(m, "stop", "ldg1")


def test_removing_the_last_strand_of_a_mau_is_refused_on_primary() -> None:
    m = fresh()
    m = ok(m, "set-mau", "4", "primary")
    with pytest.raises(OpPrereqError, match="crypto unit"):
        do(m, "set-vcpu", "2", "primary")
    with pytest.raises(OpPrereqError, match="crypto unit"):
        do(fresh(), "set-vcpu", "8", "primary")  # 16 MAUs need 16 strands


# ---------------------------------------------------------------- cancel-operation
def test_cancel_reconf_drops_pending() -> None:
    m = ok(fresh(), "set-mem", "4G", "primary")
    r = do(m, "cancel-op", "reconf", "primary")
    assert r.machine.control.pending is None and r.machine.control.config.memory == m.control.config.memory
    assert "cancelled" in r.messages[0]
    assert ok(m, "cancel-reconf", "primary").control.pending is None  # 2.0 spelling
    assert ok(m, "remove-reconf", "primary").control.pending is None  # XML action


def test_cancel_reconf_errors() -> None:
    with pytest.raises(StateError, match="No delayed reconfiguration in progress for LDom primary"):
        do(fresh(), "cancel-operation", "reconf", "primary")
    with pytest.raises(StateError, match="No delayed reconfiguration"):
        do(fresh(), "rm-reconf", "primary")
    m = ok(fresh(), "set-mem", "4G", "primary")
    m = m.with_domain(replace(m.control, pending_vio_removed=True))
    with pytest.raises(StateError, match="virtual I/O"):
        do(m, "cancel-operation", "reconf", "primary")
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        do(m, "cancel-operation", "reconf", "nosuch")
    with pytest.raises(UsageError):
        do(m, "cancel-operation", "memdr", "primary")
    with pytest.raises(UsageError):
        do(m, "cancel-operation", "reconf")
    with pytest.raises(UsageError):
        do(m, "cancel-operation", "reconf", "bad name")


def test_cancel_migration_seam() -> None:
    m = with_guest()
    with pytest.raises(NotFoundError, match="No migration in progress for LDom ldg1"):
        do(m, "cancel-operation", "migration", "ldg1")
    ctx = replace(CTX, migrating={"ldg1": "to host2"})
    src = m.with_domain(replace(m.domain("ldg1"), migration=MigrationRole.SOURCE))
    r = do(src, "cancel-operation", "migration", "ldg1", ctx=ctx)
    assert r.effects == (CancelMigration(domain="ldg1"),) and r.machine == src
    tgt = m.with_domain(replace(m.domain("ldg1"), migration=MigrationRole.TARGET))
    with pytest.raises(StateError, match="source machine"):
        do(tgt, "cancel-operation", "migration", "ldg1", ctx=ctx)


def test_cancel_migration_clears_error_state() -> None:
    m = with_guest()
    m = m.with_domain(replace(m.domain("ldg1"), migration=MigrationRole.ERROR))
    r = do(m, "cancel-op", "migration", "ldg1")
    assert r.machine.domain("ldg1").migration == MigrationRole.NONE
    assert r.machine.domain("ldg1").state == DomainState.ACTIVE


def test_guest_memory_minimum_notice_and_rounding() -> None:
    m = ok(shrunk(), "add-domain", "ldg1")
    r = do(m, "set-mem", "5M", "ldg1")
    assert r.machine.domain("ldg1").config.memory == 12 * M
    assert "12M minimum" in r.messages[0]
    r = do(m, "set-mem", "13M", "ldg1")
    assert r.machine.domain("ldg1").config.memory == 16 * M and r.messages == ()
