"""The hand-off fence in practice: the error state and its resolution by RecoveryQuery, recovery from the
journals after an ldmd crash, and the lock other operations meet while a migration runs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_migrate_pair import Pair, hooks, make_pair

from ldoms.daemon.migrate_recovery import recover_after_start, recover_before_guests
from ldoms.errors import BusyError, OpExecError, StateError, UsageError
from ldoms.hv.memory import GuestMemory
from ldoms.migration.events import Decision, MigrationMode, Role
from ldoms.migration.protocol import Journal, Phase
from ldoms.model.domain import DomainState, MigrationRole
from ldoms.ops.base import Request


@pytest.fixture
def dropping(tmp_path: Path) -> Iterator[Pair]:
    """A pair whose target drops the link instead of sending Resumed (after it started the guest)."""
    p = make_pair(tmp_path, dst_policy=hooks(drop=frozenset({"target:resumed"})))
    yield p
    p.listener.close()


def error_state(p: Pair) -> None:
    p.add_guest("ldg1", DomainState.ACTIVE)
    out = p.migrate("ldg1")
    assert not out.ok and out.exit_code == 1
    assert "it is left in the error state on this host" in out.lines[-2]
    assert out.lines[-1] == "Domain Migration of LDom ldg1 failed"
    dom = p.src.machine.domain("ldg1")
    assert dom.migration is MigrationRole.ERROR and dom.state is DomainState.ACTIVE
    assert p.src.guests.calls == [("suspend", "ldg1")]  # still suspended: never two running copies
    assert p.src.stored() == p.src.machine
    (status,) = p.src.host.view().migrations
    assert (status.domain, status.role, status.peer, status.error) == ("ldg1", "source", "dst", True)
    tgt = p.dst.machine.domain("ldg1")  # the target had the complete domain: it kept and resumed it
    assert tgt.state is DomainState.ACTIVE and tgt.migration is MigrationRole.NONE


def test_lost_link_after_hand_over_then_the_target_kept_it(dropping: Pair) -> None:
    p = dropping
    error_state(p)
    with pytest.raises(
        BusyError, match=r"in the migration error state .* with 'ldm cancel-operation migration"
    ):
        p.start("ldg1")
    msgs = p.src.ldm("cancel-operation", "migration", "ldg1")
    assert msgs == (
        "LDom ldg1 runs on dst: its migration had completed, so the copy on this host was removed",
    )
    assert p.src.machine.find("ldg1") is None and p.src.guests.calls[-1] == ("destroy", "ldg1")
    assert p.src.host.view().migrations == ()
    (rec,) = p.src.manager.journals.all()
    assert rec.journal.decision is Decision.DESTROY_SOURCE


def test_lost_link_after_hand_over_then_the_target_discarded_it(dropping: Pair) -> None:
    p = dropping
    error_state(p)
    (rec,) = p.dst.manager.journals.all()  # pretend the target's journal said "discard" (it crashed early)
    p.dst.manager.journals.settle(rec, Decision.DISCARD_TARGET)
    msgs = p.src.ldm("cancel-operation", "migration", "ldg1")
    assert msgs == ("Migration of LDom ldg1 cancelled: dst did not keep it; this copy is the master again",)
    dom = p.src.machine.domain("ldg1")
    assert dom.migration is MigrationRole.NONE and p.src.guests.calls[-1] == ("resume", "ldg1")


def test_error_state_stays_while_the_target_cannot_be_asked(dropping: Pair) -> None:
    p = dropping
    error_state(p)
    p.listener.close()
    with pytest.raises(
        OpExecError, match=r"Cannot learn from dst how the migration of LDom ldg1 ended: .*stays in"
    ):
        p.src.ldm("cancel-operation", "migration", "ldg1")
    assert p.src.machine.domain("ldg1").migration is MigrationRole.ERROR
    assert not p.src.host.migrating


# ------------------------------------------------------------------------------------------- the lock
def test_operations_meet_the_migration_lock(tmp_path: Path) -> None:
    p = make_pair(tmp_path, src_policy=hooks(pause={"source:transfer": 30.0}))
    try:
        p.add_guest("ldg1", DomainState.ACTIVE)
        p.add_guest("other", DomainState.INACTIVE)
        p.dst.ldm("add-domain", "spare")
        p.dst.ldm("add-vcpu", "1", "spare")
        p.dst.ldm("add-memory", "64M", "spare")
        run = p.start("ldg1")
        deadline_wait(lambda: p.dst.machine.find("ldg1") is not None)
        with pytest.raises(BusyError, match=r"Cannot bind while a migration of LDom ldg1 is in progress"):
            p.src.ldm("bind-domain", "other")
        with pytest.raises(BusyError, match=r"Cannot stop while a migration of LDom ldg1"):
            p.src.ldm("stop-domain", "primary")
        with pytest.raises(BusyError, match=r"LDom ldg1 is being migrated \(migration to dst in progress\)"):
            p.src.ldm("set-vcpu", "4", "ldg1")
        with pytest.raises(BusyError, match="Cannot start a delayed reconfiguration of LDom primary while a "
                                            "migration of LDom ldg1 is in progress"):  # fmt: skip
            p.src.ldm("set-memory", "2G", "primary")
        with pytest.raises(BusyError, match="Cannot bind while a migration of LDom ldg1 is in progress "
                                            r"\(incoming migration from src in progress\)"):  # fmt: skip
            p.dst.ldm("bind-domain", "spare")
        with pytest.raises(StateError, match="can only be cancelled on the source machine"):
            p.dst.ldm("cancel-operation", "migration", "ldg1")
        with pytest.raises(UsageError, match="POST /v1/migrate"):
            p.src.host.apply(Request(verb="migrate", operands=("other", "dst")))
        p.src.ldm("add-domain", "ldg9")  # not every change is refused: only what SPEC 3.1 names
        view = p.src.host.view()
        assert view.machine.domain("ldg1").migration is MigrationRole.SOURCE
        run.cancel("test over")
        assert p.finish(run).lines[0] == "Migration of LDom ldg1 cancelled: test over"
        p.src.ldm("bind-domain", "other")  # the lock went with the migration
    finally:
        p.listener.close()


def deadline_wait(cond: object, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------- recovery after a crash
def journal(role: Role, phase: Phase, *, mid: str = "m1", name: str = "ldg1",
            mode: MigrationMode = MigrationMode.ACTIVE) -> Journal:  # fmt: skip
    return Journal(migration_id=mid, role=role, phase=phase, source_domain=name, target_domain=name,
                   peer="other", mode=mode)  # fmt: skip


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = make_pair(tmp_path)
    yield p
    p.listener.close()


def flag(p: Pair, side: str, name: str, role: MigrationRole) -> None:
    s = getattr(p, side)
    s.host.change(lambda m: m.with_domain(replace(m.domain(name), migration=role)))


def test_crashed_source_before_the_hand_over_keeps_its_copy(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.ACTIVE)
    flag(pair, "src", "ldg1", MigrationRole.SOURCE)
    pair.src.manager.journals.save(journal(Role.SOURCE, Phase.SUSPENDED))
    recover_after_start(pair.src.manager)
    assert pair.src.machine.domain("ldg1").migration is MigrationRole.NONE
    assert pair.src.guests.calls == [("resume", "ldg1")]
    (rec,) = pair.src.manager.journals.all()
    assert rec.journal.decision is Decision.KEEP_SOURCE


def test_crashed_source_after_the_hand_over_is_in_error(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.ACTIVE)
    flag(pair, "src", "ldg1", MigrationRole.SOURCE)
    pair.src.manager.journals.save(journal(Role.SOURCE, Phase.HANDOFF))
    recover_after_start(pair.src.manager)
    assert pair.src.machine.domain("ldg1").migration is MigrationRole.ERROR
    recover_after_start(pair.src.manager)  # idempotent: settled, and the error state is explained
    assert pair.src.machine.domain("ldg1").migration is MigrationRole.ERROR


def test_crashed_target_before_the_final_state_discards(pair: Pair) -> None:
    pair.dst.ldm("add-domain", "ldg1")
    flag(pair, "dst", "ldg1", MigrationRole.TARGET)
    pair.dst.manager.journals.save(journal(Role.TARGET, Phase.PRECOPY))
    image = pair.dst.manager.journals.image_path("m1")
    image.write_bytes(b"x")
    recover_after_start(pair.dst.manager)
    assert pair.dst.machine.find("ldg1") is None and not image.exists()


def test_crashed_target_after_the_final_state_starts_the_domain(pair: Pair, tmp_path: Path) -> None:
    pair.dst.ldm("add-domain", "ldg1")
    pair.dst.ldm("add-vcpu", "8", "ldg1")
    pair.dst.ldm("add-memory", "64M", "ldg1")
    pair.dst.ldm("bind-domain", "ldg1")
    flag(pair, "dst", "ldg1", MigrationRole.TARGET)
    j = journal(Role.TARGET, Phase.FINAL)
    pair.dst.manager.journals.save(j, {"cpu_state": '{"steps": 7}'})
    dom = pair.dst.machine.domain("ldg1")
    assert dom.bindings is not None
    GuestMemory(pair.dst.manager.journals.image_path("m1"), [(b.ra, b.size) for b in dom.bindings.mblocks],
                create=True).close()  # fmt: skip
    recover_after_start(pair.dst.manager)
    dom = pair.dst.machine.domain("ldg1")
    assert dom.state is DomainState.ACTIVE and dom.migration is MigrationRole.NONE
    assert pair.dst.guests.calls == [("start", "ldg1")]


def test_flags_without_a_journal_are_cleared(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.BOUND)
    flag(pair, "src", "ldg1", MigrationRole.SOURCE)
    pair.dst.ldm("add-domain", "shell")
    flag(pair, "dst", "shell", MigrationRole.TARGET)
    recover_after_start(pair.src.manager)
    recover_after_start(pair.dst.manager)
    assert pair.src.machine.domain("ldg1").migration is MigrationRole.NONE
    assert pair.dst.machine.find("shell") is None


def test_incoming_image_is_kept_away_from_the_guest_recovery(pair: Pair) -> None:
    pair.dst.ldm("add-domain", "ldg1")
    flag(pair, "dst", "ldg1", MigrationRole.TARGET)
    pair.dst.manager.journals.save(journal(Role.TARGET, Phase.HANDOFF))
    guests = pair.dst.host.guests
    guests.dir.mkdir(parents=True, exist_ok=True)
    guests.files("ldg1").mem.write_bytes(b"image")
    m = recover_before_guests(pair.dst.machine, pair.dst.manager.journals, guests)
    assert m == pair.dst.machine
    assert not guests.files("ldg1").mem.exists()
    assert pair.dst.manager.journals.image_path("m1").read_bytes() == b"image"


def test_error_state_without_a_journal_resumes_as_spec_4_3_says(dropping: Pair) -> None:
    p = dropping
    error_state(p)
    for path in p.src.journals():
        path.unlink()  # the admin removed it: they checked the target themselves
    p.src.manager.journals._last.clear()
    msgs = p.src.ldm("cancel-operation", "migration", "ldg1")
    assert msgs == (
        "Migration of LDom ldg1 cancelled: the target did not keep it; this copy is the master again",
    )
    assert p.src.machine.domain("ldg1").migration is MigrationRole.NONE


def test_a_recovery_token_the_target_does_not_know_is_refused(dropping: Pair) -> None:
    p = dropping
    error_state(p)
    (rec,) = p.src.manager.journals.all()
    p.src.manager.journals.save(rec.journal, {"token": "forged"})
    with pytest.raises(OpExecError, match=r"no migration .* with that recovery token is recorded here"):
        p.src.ldm("cancel-operation", "migration", "ldg1")
    assert p.src.machine.domain("ldg1").migration is MigrationRole.ERROR


def test_crashed_source_after_resumed_destroys_its_copy(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.ACTIVE)
    flag(pair, "src", "ldg1", MigrationRole.SOURCE)
    pair.src.manager.journals.save(journal(Role.SOURCE, Phase.RESUMED))
    recover_after_start(pair.src.manager)
    assert pair.src.machine.find("ldg1") is None and pair.src.guests.calls == [("destroy", "ldg1")]


def test_journal_write_failures_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ldoms.migration.journal import JournalError, JournalStore
    from ldoms.peer.errors import PeerConfigError

    def fail(path: Path, data: bytes, **kw: object) -> None:
        raise PeerConfigError(f"cannot write {path}: no space left on device")

    monkeypatch.setattr("ldoms.migration.journal.atomic_write", fail)
    with pytest.raises(JournalError, match=r"cannot record the migration journal: .*no space left"):
        JournalStore(tmp_path / "m").save(journal(Role.SOURCE, Phase.HELLO))
