"""Two hosts in one process joined by the real peer link (TLS on 127.0.0.1), for the migration engines.

Each `Side` is a real `Host` (SQLite store in a temporary home, real operations) with a real
`MigrationManager`; the target's `PeerListener` serves the target manager.  Guests are `FakeGuests`: a
memory file per active domain and a record of suspend/resume/start/destroy calls, so the engines' guest
handling is observable and fast (the real guest processes are exercised by the integration tests).

Shared by the other tests/unit/test_migrate_*.py modules (pytest puts this directory on sys.path); its own
tests check the harness and the successful paths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from ldoms.binding import factory_default
from ldoms.checks.facts import GuestConditions, GuestProfile
from ldoms.cli.parse import parse_args
from ldoms.daemon.host import Host
from ldoms.daemon.migrate import MigrationManager
from ldoms.errors import OpExecError
from ldoms.hv.files import PidRecord
from ldoms.hv.memory import GuestMemory
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.migration.engine_source import MigrationRequest
from ldoms.migration.events import Role
from ldoms.migration.runstate import Outcome, RunState
from ldoms.migration.transport import MigrationPolicy, TestHooks
from ldoms.model.domain import Domain, DomainState
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.ops.base import Request, lookup
from ldoms.peer import credentials, tls, trust
from ldoms.peer.listener import PeerListener
from ldoms.store import Store
from ldoms.units import PAGE_SIZE, M

USER, PASSWORD = "alice", "s3cret"
WAIT = 30.0  # a deadline for things that happen at once


@dataclass
class FakeGuests:
    """GuestLike for the engines: memory files in `dir`, calls recorded."""

    dir: Path
    profiles: dict[str, GuestProfile] = field(default_factory=dict)
    suspended: set[str] = field(default_factory=set)
    running_: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_start: bool = False
    fail_suspend: bool = False
    throttles: list[tuple[str, int]] = field(default_factory=list)
    downtime: float = 0.004

    def profile(self, dom: Domain) -> tuple[GuestProfile, GuestConditions]:
        return self.profiles.get(dom.name, GuestProfile()), GuestConditions()

    def memory_path(self, name: str) -> Path:
        return self.dir / f"{name}.mem"

    def suspend(self, name: str) -> bytes:
        self.calls.append(("suspend", name))
        if self.fail_suspend:
            raise OpExecError(f"Guest of LDom {name}: suspend request failed: test")
        self.suspended.add(name)
        return json.dumps({"workload": "idle", "steps": 7, "suspended_at": 1.0}).encode()

    def resume(self, name: str) -> None:
        self.calls.append(("resume", name))
        self.suspended.discard(name)

    def start_incoming(self, dom: Domain, image: Path, cpu_state: bytes) -> PidRecord:
        self.calls.append(("start", dom.name))
        if self.fail_start:
            raise OpExecError(f"Guest of LDom {dom.name} failed to start: test")
        assert json.loads(cpu_state)["steps"] == 7
        os.replace(image, self.memory_path(dom.name))
        self.running_.add(dom.name)
        return PidRecord(pid=os.getpid(), starttime=0, domain=dom.name)

    def running(self, name: str) -> bool:
        return name in self.running_

    def destroy(self, name: str) -> None:
        self.calls.append(("destroy", name))
        self.running_.discard(name)
        self.suspended.discard(name)
        self.memory_path(name).unlink(missing_ok=True)

    # live migration
    def dirty_path(self, name: str) -> Path:
        return self.dir / f"{name}.dirty"

    def throttle(self, name: str, percent: int) -> None:
        self.throttles.append((name, percent))

    def status(self, name: str) -> dict[str, object]:
        return {"dirty_rate": 0.0, "suspended": name in self.suspended}

    def start_standby(self, dom: Domain) -> PidRecord:
        self.calls.append(("standby", dom.name))
        if self.fail_start:
            raise OpExecError(f"Guest of LDom {dom.name} failed to start: test")
        assert self.memory_path(dom.name).exists()
        return PidRecord(pid=os.getpid(), starttime=0, domain=dom.name)

    def restore(self, name: str, cpu_state: bytes) -> float | None:
        self.calls.append(("restore", name))
        assert json.loads(cpu_state)["steps"] == 7
        self.running_.add(name)
        return self.downtime

    def pid(self, name: str) -> int:
        return os.getpid()


@dataclass
class Side:
    name: str
    home: Path
    host: Host
    manager: MigrationManager
    guests: FakeGuests

    def ldm(self, *words: str) -> tuple[str, ...]:
        op = lookup(words[0])
        return self.host.apply(parse_args(op.spec, list(words[1:])))

    @property
    def machine(self) -> Machine:
        return self.host.machine

    def stored(self) -> Machine:
        return Store(self.home / "state.db").load().machine

    def journals(self) -> list[Path]:
        d = self.home / "migrations"
        return sorted(d.glob("*.json")) if d.is_dir() else []


def make_side(
    tmp: Path, name: str, *, policy: MigrationPolicy | None = None, platform: str = "t5240"
) -> Side:
    home = tmp / name
    home.mkdir(parents=True)
    store = Store(home / "state.db")
    machine = factory_default(load_platform(platform), name, seed=hash(name) & 0xFFFF)
    store.create_host(machine, listen="127.0.0.1:0")
    host = Host(machine=machine, store=store, guests=GuestSupervisor(home / "guests"), listen="127.0.0.1:0")
    host.reconcile = lambda: None  # type: ignore[method-assign]  # fake guests have no processes to watch
    guests = FakeGuests(home / "fakeguests")
    guests.dir.mkdir()
    manager = MigrationManager(host, home, guests, policy=policy or MigrationPolicy(connect_s=10.0))  # type: ignore[arg-type]
    host.migrations = manager
    tls.ensure_host_tls(home, name, "127.0.0.1:0")
    side = Side(name=name, home=home, host=host, manager=manager, guests=guests)
    for words in (
        ("set-crypto", "0", "primary"),
        ("set-vcpu", "8", "primary"),
        ("set-memory", "4G", "primary"),
        ("stop-domain", "primary"),
        ("add-vcc", "port-range=5000-5100", "primary-vcc0", "primary"),
    ):
        side.ldm(*words)
    return side


@dataclass
class Pair:
    src: Side
    dst: Side
    listener: PeerListener
    peer_name: str = "dst"

    def add_guest(self, name: str, state: DomainState = DomainState.ACTIVE, *, memory: str = "64M") -> Domain:
        """A guest on the source; an active one gets a memory file with a few non-zero pages."""
        s = self.src
        s.ldm("add-domain", name)
        s.ldm("add-vcpu", "8", name)
        s.ldm("add-memory", memory, name)
        if state is not DomainState.INACTIVE:
            s.ldm("bind-domain", name)
        if state is DomainState.ACTIVE:
            dom = s.machine.domain(name)
            assert dom.bindings is not None
            blocks = [(b.ra, b.size) for b in dom.bindings.mblocks]
            s.guests.dirty_path(name).write_bytes(bytes(sum(n for _, n in blocks) // PAGE_SIZE))
            with GuestMemory(s.guests.memory_path(name), blocks, create=True) as mem:
                ra0 = blocks[0][0]
                for i, ra in enumerate((ra0, ra0 + PAGE_SIZE, ra0 + 5 * PAGE_SIZE, ra0 + 9 * M)):
                    mem.write(ra, bytes([i + 1]) * PAGE_SIZE)
            active = replace(dom, state=DomainState.ACTIVE, softstate="Solaris running", started_at=100.0)
            s.host.change(lambda m: m.with_domain(active))
            s.guests.running_.add(name)
        return s.machine.domain(name)

    def migrate(
        self,
        name: str,
        *,
        target_ldom: str | None = None,
        user: str = USER,
        password: str | None = PASSWORD,
        dry_run: bool = False,
        certificate: bool = False,
        target: str | None = None,
    ) -> Outcome:
        run = self.start(name, target_ldom=target_ldom, user=user, password=password, dry_run=dry_run,
                         certificate=certificate, target=target)  # fmt: skip
        return self.finish(run)

    def start(
        self,
        name: str,
        *,
        target_ldom: str | None = None,
        user: str = USER,
        password: str | None = PASSWORD,
        dry_run: bool = False,
        certificate: bool = False,
        target: str | None = None,
    ) -> RunState:
        req = MigrationRequest(
            source=name,
            target_host=target or self.peer_name,
            target_ldom=target_ldom or name,
            user=user,
            password=password,
            certificate=certificate,
            dry_run=dry_run,
        )
        return self.src.manager.start(req)

    def finish(self, run: RunState) -> Outcome:
        assert run.done.wait(WAIT), "the migration did not end"
        assert run.outcome is not None
        self.wait_target_idle()
        return run.outcome

    def wait_target_idle(self) -> None:
        """The target's connection threads end shortly after the source's: wait for them."""
        import time

        deadline = time.monotonic() + WAIT
        while self.listener.active_connections or self.dst.host.migrating:
            assert time.monotonic() < deadline, f"target still busy: {self.dst.host.migrating}"
            time.sleep(0.01)


def make_pair(
    tmp: Path,
    *,
    src_policy: MigrationPolicy | None = None,
    dst_policy: MigrationPolicy | None = None,
    dst_platform: str = "t5240",
) -> Pair:
    src = make_side(tmp, "src", policy=src_policy)
    dst = make_side(tmp, "dst", policy=dst_policy, platform=dst_platform)
    listener = PeerListener(dst.home, "127.0.0.1:0", dst.manager.handle_peer, handshake_timeout=5.0).start()
    me = tls.load_host_tls(dst.home)
    trust.add_peer(
        src.home,
        trust.make_peer(
            "dst", "127.0.0.1", listener.address[1], fingerprint_text=me.fingerprint(),
            certificate=tls.der(me.certificate),
        ),
    )  # fmt: skip
    credentials.add_user(dst.home, USER, PASSWORD, params=credentials.ScryptParams(n=16))
    return Pair(src=src, dst=dst, listener=listener)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = make_pair(tmp_path)
    try:
        yield p
    finally:
        p.listener.close()
        p.src.manager.close()
        p.dst.manager.close()


def request(verb: str, *operands: str, **flags: object) -> Request:
    return Request(verb=verb, operands=operands, flags=dict(flags))


def hooks(**points: object) -> MigrationPolicy:
    return MigrationPolicy(connect_s=10.0, hooks=TestHooks(**points))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- the harness
def test_pair_hosts_are_ready(pair: Pair) -> None:
    assert [d.name for d in pair.src.machine.domains] == ["primary"]
    assert pair.src.stored() == pair.src.machine


@pytest.mark.parametrize("state", [DomainState.INACTIVE, DomainState.BOUND, DomainState.ACTIVE])
def test_migration_moves_the_domain(pair: Pair, state: DomainState) -> None:
    before = pair.add_guest("ldg1", state)
    outcome = pair.migrate("ldg1")
    assert outcome.ok and not outcome.lines and outcome.record is not None
    rec = outcome.record
    assert (rec["domain"], rec["role"], rec["peer"], rec["kind"], rec["outcome"]) == (
        "ldg1",
        "source",
        "dst",
        state.value,
        "completed",
    )
    (src_rec,) = pair.src.host.view().history
    (dst_rec,) = pair.dst.host.view().history
    assert src_rec.id == dst_rec.id == rec["id"]
    assert (dst_rec.role, dst_rec.outcome) == ("target", "completed")
    assert pair.src.machine.find("ldg1") is None
    assert pair.src.stored() == pair.src.machine and pair.src.machine.spconfig_modified
    after = pair.dst.machine.domain("ldg1")
    assert after.state is state and after.migration.value == ""
    assert after.config == before.config  # uuid, hostid, MAC and every constraint travelled
    assert pair.dst.stored() == pair.dst.machine
    assert not pair.src.host.migrating and not pair.dst.host.migrating
    if state is DomainState.ACTIVE:
        assert pair.src.guests.calls == [("suspend", "ldg1"), ("destroy", "ldg1")]
        assert pair.dst.guests.calls == [("standby", "ldg1"), ("restore", "ldg1")]
        assert rec["downtime_s"] == dst_rec.downtime_s == 0.004 and rec["channels"] >= 1
        assert rec["rounds"] == 1 and rec["bytes_sent"] > 4 * PAGE_SIZE
        assert after.bindings is not None and before.bindings is not None
        assert [(b.ra, b.size) for b in after.bindings.mblocks] == [
            (b.ra, b.size) for b in before.bindings.mblocks
        ]
        assert after.cpu_dr_disabled and len(after.bindings.strands) == 8
        blocks = [(b.ra, b.size) for b in after.bindings.mblocks]
        with GuestMemory(pair.dst.guests.memory_path("ldg1"), blocks, create=False) as mem:
            ra0 = after.bindings.mblocks[0].ra
            assert mem.read(ra0 + 5 * PAGE_SIZE, PAGE_SIZE) == bytes([3]) * PAGE_SIZE
            assert mem.read(ra0 + 9 * M, PAGE_SIZE) == bytes([4]) * PAGE_SIZE
            assert mem.read(ra0 + 2 * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)
    elif state is DomainState.BOUND:
        assert after.bindings is not None and after.bindings.memory == 64 * M
    else:
        assert after.bindings is None


def test_rename_on_the_target(pair: Pair) -> None:
    pair.add_guest("ldg-src", DomainState.BOUND)
    assert pair.migrate("ldg-src", target_ldom="ldg-tgt").ok
    assert pair.dst.machine.find("ldg-src") is None
    assert pair.dst.machine.domain("ldg-tgt").state is DomainState.BOUND


def test_journals_are_settled(pair: Pair) -> None:
    pair.add_guest("ldg1", DomainState.ACTIVE)
    assert pair.migrate("ldg1").ok
    (src_rec,) = pair.src.manager.journals.all()
    (dst_rec,) = pair.dst.manager.journals.all()
    assert (src_rec.journal.role, src_rec.journal.decision) == (Role.SOURCE, "destroy-source")
    assert (dst_rec.journal.role, dst_rec.journal.decision) == (Role.TARGET, "keep-target")
    assert src_rec.journal.migration_id == dst_rec.journal.migration_id
    assert not list((pair.dst.home / "migrations").glob("*.image"))  # the image became the guest's memory
    assert "token" in src_rec.extra and "token" not in dst_rec.extra and dst_rec.extra["token_sha256"]


def test_bound_domains_cross_cpu_types_active_ones_do_not(tmp_path: Path) -> None:
    p = make_pair(tmp_path, dst_platform="t4-1")  # SPARC T4 at 2848 MHz: another CPU type and clock
    try:
        p.add_guest("ldg-b", DomainState.BOUND)
        p.add_guest("ldg-a", DomainState.ACTIVE)
        assert p.migrate("ldg-b").ok
        assert p.dst.machine.domain("ldg-b").state is DomainState.BOUND
        out = p.migrate("ldg-a")
        assert not out.ok and {x["code"] for x in out.problems} == {"cpu-type", "cpu-freq", "firmware"}
        assert p.src.machine.domain("ldg-a").state is DomainState.ACTIVE
    finally:
        p.listener.close()
