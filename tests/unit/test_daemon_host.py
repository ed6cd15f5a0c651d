"""Host.apply: one lock, effects then one commit, undo on failure, bugs become InternalError; reconcile;
recovery at start.  Operations are small stand-ins defined here."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from ldoms.daemon.host import Host, InternalError
from ldoms.daemon.recovery import recover
from ldoms.errors import NotFoundError, OpExecError
from ldoms.hv import proc
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.model.domain import Bindings, Domain, DomainConfig, DomainState, MemBinding
from ldoms.model.machine import Machine
from ldoms.ops.base import CancelMigration, OpContext, OpResult, Request, StartGuest, StopGuest
from ldoms.store import Store, StoreError
from ldoms.units import M
from tests.conftest import Reaper
from tests.unit.test_store import machine


def bound(name: str, ra: int = 0x8000000) -> Domain:
    return Domain(
        config=DomainConfig(name=name, uuid="u", hostid=2, mac=2, vcpus=1, memory=256 * M),
        state=DomainState.BOUND,
        bindings=Bindings(strands=(4,), mblocks=(MemBinding(ra=ra, pa=0x40000000, size=256 * M),)),
    )


def fake_run(m: Machine, req: Request, ctx: OpContext) -> OpResult:
    """A stand-in for ldoms.ops.base.run."""
    if req.verb == "add":
        return OpResult(machine=m.with_domain(bound(req.operands[0])), messages=("added",))
    if req.verb == "start":
        out, effects = m, []
        for name in req.operands:
            d = m.domain(name)
            out = out.with_domain(replace(d, state=DomainState.ACTIVE, started_at=ctx.now))
            effects.append(StartGuest(domain=name))
        return OpResult(machine=out, effects=tuple(effects))
    if req.verb == "stop":
        d = m.domain(req.operands[0])
        return OpResult(
            machine=m.with_domain(replace(d, state=DomainState.BOUND, started_at=0.0)),
            effects=(StopGuest(domain=d.name),),
        )
    if req.verb == "start-primary":
        return OpResult(machine=m, effects=(StopGuest(domain="primary"), StartGuest(domain="primary")))
    if req.verb == "refuse":
        raise NotFoundError("LDom nosuch not found")
    if req.verb == "cancel":
        return OpResult(machine=m, effects=(CancelMigration(domain="ldg1"),))
    raise KeyError(req.verb)  # a bug


@pytest.fixture
def host(tmp_path: Path, reaper: Reaper) -> Host:
    store = Store(tmp_path / "state.db")
    m = machine().with_domain(bound("ldg2"))
    store.create_host(m, listen="127.0.0.1:8101")
    guests = GuestSupervisor(reaper.watch(tmp_path / "guests"))
    return Host(
        machine=m, store=store, guests=guests, listen="127.0.0.1:8101", run_op=fake_run, clock=lambda: 5000.0
    )


def stored(host: Host) -> Machine:
    return Store(host.store.path).load().machine


def test_apply_commits_and_publishes(host: Host) -> None:
    assert host.apply(Request(verb="add", operands=("ldg3",))) == ("added",)
    assert host.machine.find("ldg3") is not None
    assert stored(host) == host.machine


def test_start_runs_a_guest_and_records_its_pid(host: Host) -> None:
    host.apply(Request(verb="start", operands=("ldg2",)))
    d = host.machine.domain("ldg2")
    rec = host.guests.find("ldg2")
    assert d.state == DomainState.ACTIVE and rec is not None and d.guest_pid == rec.pid
    assert d.started_at == 5000.0
    assert stored(host).domain("ldg2").guest_pid == rec.pid
    host.apply(Request(verb="stop", operands=("ldg2",)))
    assert host.guests.find("ldg2") is None and host.machine.domain("ldg2").guest_pid == 0
    assert not proc.alive(rec.pid, rec.starttime)


def test_refusal_changes_nothing(host: Host) -> None:
    before = host.machine
    with pytest.raises(NotFoundError):
        host.apply(Request(verb="refuse"))
    assert host.machine is before


def test_bug_in_an_operation_becomes_an_internal_error(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    before = host.machine
    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(InternalError, match="Internal error in frobnicate: KeyError"),
    ):
        host.apply(Request(verb="frobnicate"))
    assert host.machine is before
    assert "bug in operation frobnicate" in caplog.text
    host.apply(Request(verb="add", operands=("ldg3",)))  # still serving


def test_failed_effect_undoes_the_ones_done(host: Host, reaper: Reaper) -> None:
    m = host.machine.with_domain(replace(bound("ldg4", ra=0x20000000), bindings=None))  # cannot start
    host.store.commit(m)
    host.machine = m
    with pytest.raises(OpExecError, match="LDom ldg4: it holds no memory"):
        host.apply(Request(verb="start", operands=("ldg2", "ldg4")))
    assert host.guests.scan() == []  # ldg2's guest was stopped again
    assert host.machine.domain("ldg2").state == DomainState.BOUND
    assert stored(host).domain("ldg2").state == DomainState.BOUND


def test_failed_commit_undoes_the_effects(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_commit(m: Machine) -> None:
        raise StoreError("state database x: write failed: disk full")

    monkeypatch.setattr(host.store, "commit", broken_commit)
    with pytest.raises(StoreError, match="disk full"):
        host.apply(Request(verb="start", operands=("ldg2",)))
    assert host.guests.scan() == []
    assert host.machine.domain("ldg2").state == DomainState.BOUND


def test_failed_commit_of_a_stop_leaves_the_guest_running(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.apply(Request(verb="start", operands=("ldg2",)))
    old_pid = host.machine.domain("ldg2").guest_pid
    monkeypatch.setattr(host.store, "commit", lambda m: (_ for _ in ()).throw(RuntimeError("io error")))
    with pytest.raises(OpExecError, match="stop failed: RuntimeError: io error; nothing was changed"):
        host.apply(Request(verb="stop", operands=("ldg2",)))
    d = host.machine.domain("ldg2")
    rec = host.guests.find("ldg2")
    # The guest is stopped only after the commit: a failed commit never touched it.
    assert d.state == DomainState.ACTIVE and rec is not None and d.guest_pid == rec.pid == old_pid


def test_a_stop_commits_before_the_guest_is_stopped(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    host.apply(Request(verb="start", operands=("ldg2",)))
    order: list[str] = []
    real_commit, real_stop = host.store.commit, host.guests.stop
    monkeypatch.setattr(host.store, "commit", lambda m: (order.append("commit"), real_commit(m))[1])
    monkeypatch.setattr(host.guests, "stop", lambda name: (order.append(f"stop {name}"), real_stop(name))[1])
    host.apply(Request(verb="stop", operands=("ldg2",)))
    assert order == ["commit", "stop ldg2"]
    assert host.guests.find("ldg2") is None
    assert stored(host).domain("ldg2").state == DomainState.BOUND


def test_unknown_effect_is_refused(host: Host) -> None:
    with pytest.raises(OpExecError, match="cannot carry out the effect CancelMigration"):
        host.apply(Request(verb="cancel"))


def test_control_domain_runs_no_guest(host: Host) -> None:
    host.apply(Request(verb="start-primary"))
    assert host.guests.scan() == []


def test_view_reports_utilisation_and_notices_dead_guests(host: Host) -> None:
    host.apply(Request(verb="start", operands=("ldg2",)))
    view = host.view()
    assert view.now == 5000.0
    assert 0.0 <= view.util["ldg2"] <= 100.0
    assert "primary" in view.util
    rec = host.guests.find("ldg2")
    assert rec is not None
    os.kill(rec.pid, signal.SIGKILL)
    host.guests._wait_gone(rec, 10)
    view = host.view()
    assert view.machine.domain("ldg2").state == DomainState.BOUND
    assert "ldg2" not in view.util
    assert stored(host).domain("ldg2").state == DomainState.BOUND


# ---------------------------------------------------------------------------------------------- recovery
def test_recovery_reattaches_reports_dead_and_kills_orphans(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    host.apply(Request(verb="add", operands=("ldg3",)))
    host.apply(Request(verb="start", operands=("ldg2", "ldg3")))
    m = host.machine
    ldg3 = host.guests.find("ldg3")
    assert ldg3 is not None
    # ldg3's guest dies "while ldmd is down"; an orphan runs for ldg5, whose start was never committed.
    os.kill(ldg3.pid, signal.SIGKILL)
    host.guests._wait_gone(ldg3, 10)
    orphan = host.guests.start(replace(bound("ldg5"), state=DomainState.ACTIVE))
    fresh = GuestSupervisor(host.guests.dir)  # a new ldmd: not the guests' parent
    with caplog.at_level(logging.INFO):
        out = recover(m, fresh, now=5060.0)
    assert out.domain("ldg2").state == DomainState.ACTIVE and out.domain("ldg2").started_at == 5000.0
    assert out.domain("ldg3").state == DomainState.BOUND and out.domain("ldg3").started_at == 0.0
    assert not proc.alive(orphan.pid, orphan.starttime)
    assert [r.domain for r in fresh.scan()] == ["ldg2"]
    assert fresh.names_with_files() == {"ldg2"}
    assert "re-attached the guest of LDom ldg2" in caplog.text
    assert "LDom ldg3 is now bound" in caplog.text
    assert "killed the guest of LDom ldg5" in caplog.text
