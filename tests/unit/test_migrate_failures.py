"""Migrations that fail, are refused or are cancelled: each leaves both hosts exactly as they were and says
why in one clear line (then LDoms' `Domain Migration of LDom NAME failed`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_migrate_pair import PASSWORD, USER, Pair, hooks, make_pair

from ldoms.migration.events import Role
from ldoms.model.domain import DomainState
from ldoms.model.machine import Machine
from ldoms.peer import credentials, tls, trust


def snapshot(p: Pair) -> tuple[Machine, Machine]:
    return p.src.machine, p.dst.machine


def unchanged(p: Pair, before: tuple[Machine, Machine]) -> None:
    assert (p.src.machine, p.dst.machine) == before
    assert (p.src.stored(), p.dst.stored()) == before
    assert not p.src.host.migrating and not p.dst.host.migrating
    assert not list(p.dst.home.rglob("*.image"))  # staged incoming images (HOME/guests/.incoming)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = make_pair(tmp_path)
    yield p
    p.listener.close()


def test_dry_run_that_would_succeed_is_silent_and_changes_nothing(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.ACTIVE)
    before = snapshot(pair)
    out = pair.migrate("ldg1", dry_run=True)
    assert out.ok and out.dry_run and out.lines == ()
    unchanged(pair, before)
    assert pair.src.journals() == [] and pair.dst.journals() == []  # a dry run reserves and records nothing
    assert pair.src.guests.calls == []


def test_dry_run_reports_every_problem_of_both_sides(pair: Pair) -> None:
    dom = pair.add_guest("ldg1", DomainState.ACTIVE)
    # Source side: in OpenBoot with 8 vCPUs; target side: the name is in use.
    pair.src.host.change(lambda m: m.with_domain(replace(dom, softstate="OpenBoot Running")))
    pair.dst.ldm("add-domain", "ldg1")
    before = snapshot(pair)
    out = pair.migrate("ldg1", dry_run=True)
    assert not out.ok and out.exit_code == 1
    codes = [(p["side"], p["code"]) for p in out.problems]
    assert ("source", "openboot") in codes and ("target", "name-in-use") in codes
    assert out.lines[-1] == "Domain Migration of LDom ldg1 would fail if attempted"
    assert len(out.lines) == len(out.problems) + 1
    for p in out.problems:
        assert set(p) >= {"code", "message", "side", "resource", "observed", "required", "remedy"}
    unchanged(pair, before)


def test_failed_source_checks_reserve_nothing_on_the_target(pair: Pair) -> None:
    dom = pair.add_guest("ldg1", DomainState.ACTIVE)
    pair.src.host.change(lambda m: m.with_domain(replace(dom, softstate="OpenBoot Running")))
    pair.dst.ldm("add-domain", "ldg1")
    before = snapshot(pair)
    out = pair.migrate("ldg1")
    assert not out.ok
    assert out.lines[-1] == "Domain Migration of LDom ldg1 failed"
    assert any("already exists on dst" in line for line in out.lines)  # the target's findings too
    assert any("in OpenBoot or the kernel debugger" in line for line in out.lines)
    unchanged(pair, before)
    assert pair.src.guests.calls == []


def test_wrong_password_and_unknown_user_are_distinct_auth_failures(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.INACTIVE)
    before = snapshot(pair)
    out = pair.migrate("ldg1", password="nope")
    assert out.exit_code == 3
    assert out.lines == (
        f"Authentication failed for user {USER} on target host dst: wrong password",
        "Domain Migration of LDom ldg1 failed",
    )
    out = pair.migrate("ldg1", user="bob")
    assert out.exit_code == 3
    assert out.lines[0] == "Authentication failed for user bob on target host dst: unknown user"
    unchanged(pair, before)


def test_certificate_mode(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.INACTIVE)
    before = snapshot(pair)
    out = pair.migrate("ldg1", certificate=True, user="", password=None)
    assert not out.ok and out.exit_code == 1
    assert "refused this host's certificate" in out.lines[0]
    unchanged(pair, before)
    me = tls.load_host_tls(pair.src.home)
    trust.add_peer(pair.dst.home, trust.make_peer("src", "127.0.0.1", 1, fingerprint_text=me.fingerprint(),
                                                  certificate=tls.der(me.certificate)))  # fmt: skip
    assert pair.migrate("ldg1", certificate=True, user="", password=None).ok
    assert pair.dst.machine.domain("ldg1").state is DomainState.INACTIVE


def test_untrusted_and_unreachable_targets(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.INACTIVE)
    before = snapshot(pair)
    port = pair.listener.address[1]
    trust.add_peer(pair.src.home, trust.make_peer("nopin", "127.0.0.1", port))
    out = pair.migrate("ldg1", target="nopin")
    assert "is not trusted: no pin is recorded for it and no CA is trusted" in out.lines[0]
    assert out.lines[1] == "Domain Migration of LDom ldg1 failed" and out.exit_code == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    trust.add_peer(pair.src.home, trust.make_peer("down", "127.0.0.1", closed))
    out = pair.migrate("ldg1", target="down")
    assert "connection refused" in out.lines[0] and out.exit_code == 1
    unchanged(pair, before)


def test_a_target_that_refuses_migrations(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.INACTIVE)
    pair.dst.manager.accept_incoming = False
    before = snapshot(pair)
    out = pair.migrate("ldg1")
    assert out.lines[0].startswith("Target host dst refuses the migration: its ldmd does not accept incoming")
    unchanged(pair, before)


def test_missing_service_on_the_target(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.BOUND)
    pair.dst.ldm("remove-vcc", "primary-vcc0")  # checks: a vcc with a free port is needed
    before = snapshot(pair)
    out = pair.migrate("ldg1")
    assert [(p["side"], p["code"]) for p in out.problems] == [("target", "vcc-port")]
    assert out.lines[0] == "No virtual console concentrator on dst: LDom ldg1 needs a vcc with a free port"
    unchanged(pair, before)


def test_cancel_before_the_transfer(tmp_path: Path) -> None:
    p = make_pair(tmp_path, src_policy=hooks(pause={"source:transfer": 30.0}))
    try:
        p.add_guest("ldg1", DomainState.ACTIVE)
        before = snapshot(p)
        run = p.start("ldg1")
        _wait(lambda: p.dst.machine.find("ldg1") is not None)
        assert p.src.machine.domain("ldg1").migration.value == "source"
        assert p.dst.machine.domain("ldg1").migration.value == "target"
        assert {(s.domain, s.role) for s in p.src.host.view().migrations} == {("ldg1", "source")}
        assert {(s.domain, s.role) for s in p.dst.host.view().migrations} == {("ldg1", "target")}
        msgs = p.src.ldm("cancel-operation", "migration", "ldg1")
        assert msgs == ("Migration of LDom ldg1 cancelled",)
        out = p.finish(run)
        assert out.lines == (
            "Migration of LDom ldg1 cancelled: cancelled by the administrator "
            "(ldm cancel-operation migration)",
            "Domain Migration of LDom ldg1 failed",
        )
        unchanged(p, before)
        assert p.src.guests.calls == []
    finally:
        p.listener.close()


def test_cancel_while_suspended_resumes_the_guest(tmp_path: Path) -> None:
    p = make_pair(tmp_path, src_policy=hooks(pause={"source:final-state": 30.0}))
    try:
        p.add_guest("ldg1", DomainState.ACTIVE)
        before = snapshot(p)
        run = p.start("ldg1")
        _wait(lambda: run.suspended)
        assert p.src.host.view().migrations[0].suspended
        run.cancel("the ldm command that started it went away (killed or disconnected)")
        out = p.finish(run)
        assert "went away" in out.lines[0]
        assert p.src.guests.calls == [("suspend", "ldg1"), ("resume", "ldg1")]
        unchanged(p, before)
    finally:
        p.listener.close()


def test_checksum_mismatch_is_refused_by_the_target(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    from ldoms.migration import live_plan

    class Lossy(live_plan.Transcript):  # the target's accounting misses a chunk
        def hexdigest(self) -> str:
            return "0" * 64

    monkeypatch.setattr("ldoms.migration.live_target.Transcript", Lossy)
    pair.add_guest("ldg1", DomainState.ACTIVE)
    before = snapshot(pair)
    out = pair.migrate("ldg1")
    assert "the transfer's accounting does not match the source's" in out.lines[0]
    assert pair.src.guests.calls == [("suspend", "ldg1"), ("resume", "ldg1")]
    assert pair.dst.guests.calls in ([], [("standby", "ldg1"), ("destroy", "ldg1")])
    assert not pair.dst.guests.memory_path("ldg1").exists()
    unchanged(pair, before)


def test_guest_that_cannot_start_on_the_target(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.ACTIVE)
    pair.dst.guests.fail_start = True
    before = snapshot(pair)
    out = pair.migrate("ldg1")
    assert "failed to start" in out.lines[0]
    assert pair.src.guests.calls[-1] == ("resume", "ldg1")
    unchanged(pair, before)
    assert not pair.dst.guests.memory_path("ldg1").exists()  # the image was scrubbed


def test_suspend_failure_keeps_the_source(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.ACTIVE)
    pair.src.guests.fail_suspend = True
    before = snapshot(pair)
    out = pair.migrate("ldg1")
    assert "suspend request failed" in out.lines[0]
    unchanged(pair, before)


def _wait(cond: object, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_password_is_never_in_the_journal(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.INACTIVE)
    assert pair.migrate("ldg1").ok
    for side in (pair.src, pair.dst):
        for path in side.journals():
            assert PASSWORD not in path.read_text()
    assert credentials.list_users(pair.dst.home) == [USER]
    assert [r.journal.role for r in pair.dst.manager.journals.all()] == [Role.TARGET]
