"""Two MigrationConnections joined in memory, the scripts of every path, and one valid sample per event kind.

Shared by the other tests/unit/test_protocol_*.py modules (pytest puts this directory on sys.path); its own
tests check the harness itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import pytest

from ldoms.migration.events import (
    Abort,
    Auth,
    AuthResult,
    Cancel,
    CheckRequest,
    CheckResult,
    CommitRequest,
    Event,
    EventType,
    FinalState,
    Finding,
    HandoffDone,
    Hello,
    MemPages,
    MigrationMode,
    Ping,
    Pong,
    Prepare,
    PrepareAck,
    Progress,
    RecoveryAnswer,
    RecoveryQuery,
    Resumed,
    Role,
    RoundDone,
    Suspend,
    SuspendAck,
)
from ldoms.migration.protocol import NEED_DATA, MigrationConnection, Phase, Signal
from ldoms.units import PAGE_SIZE

S, T = Role.SOURCE, Role.TARGET
MID = "mig-0001"
Step = tuple[Role, Event]


def hello(role: Role, *, versions: tuple[int, int] = (1, 1), mid: str = MID) -> Hello:
    return Hello(
        role=role,
        version=versions[1],
        min_version=versions[0],
        migration_id=mid,
        host_name=f"{role}-host",
        ldm_version="1.2",
        capabilities=("live", "crypto-dr"),
        platform={"cpu_type": "UltraSPARC T2 Plus", "cpu_mhz": 1415, "fw": 7.2, "page_sizes": [8192, 65536]},
    )


def check_request(mode: MigrationMode = MigrationMode.ACTIVE, *, dry_run: bool = False) -> CheckRequest:
    return CheckRequest(
        mode=mode,
        dry_run=dry_run,
        source_domain="ldg1",
        target_domain="ldg1",
        domain_xml="<LDM_interface version='1.0'/>",
        runtime={"os": "Solaris 10 10/09", "cpu_dr": True},
    )


def page(ra: int, fill: int = 0xA5) -> tuple[int, bytes]:
    return (ra, bytes([fill]) * PAGE_SIZE)


FAILURE = Finding(
    code="mem-layout",
    message="Unable to bind 512M memory region at real address 0x8000000",
    observed="largest free block 256M",
    required="512M congruent block",
    remedy="free memory on the target",
)
CHECKSUM = hashlib.sha256(b"image").hexdigest()


def opening() -> list[Step]:
    return [(S, hello(S)), (T, hello(T)), (S, Auth(user="root", password="secret")), (T, AuthResult(ok=True))]


def active_script(*, rounds: int = 2, legacy: bool = False) -> list[Step]:
    """Live migration; `legacy`: the 1.2 rule, suspended for the whole (single-round) copy."""
    steps = [
        *opening(),
        (S, check_request()),
        (T, CheckResult(warnings=(FAILURE,))),
        (S, Prepare(target_domain="ldg1")),
    ]
    steps.append((T, PrepareAck(target_domain="ldg1", data_plane={"channels": 2, "port": 7000})))
    rnd = 1
    if not legacy:
        for rnd in range(1, rounds + 1):
            steps += [
                (S, MemPages(round=rnd, pages=(page(0), page(PAGE_SIZE * rnd)))),
                (S, Progress(percent=20 * rnd)),
            ]
            steps.append((S, RoundDone(round=rnd, pages=2, nbytes=2 * PAGE_SIZE)))
        rnd += 1
    steps += [(S, Suspend(round=rnd)), (T, SuspendAck(round=rnd))]
    steps += [
        (S, MemPages(round=rnd, descriptor=b"channel-batch-7")),
        (S, RoundDone(round=rnd, pages=1, nbytes=PAGE_SIZE)),
    ]
    steps += [(S, FinalState(cpu_state=b"\x00cpu-state", checksum=CHECKSUM)), (S, Progress(percent=100))]
    steps += [
        (S, CommitRequest(mode=MigrationMode.ACTIVE)),
        (T, Resumed(mode=MigrationMode.ACTIVE)),
        (S, HandoffDone()),
    ]
    return steps


def cold_script(mode: MigrationMode = MigrationMode.BOUND) -> list[Step]:
    return [
        *opening(),
        (S, check_request(mode)),
        (T, CheckResult()),
        (S, Prepare(target_domain="ldg1")),
        (T, PrepareAck(target_domain="ldg1")),
        (S, CommitRequest(mode=mode)),
        (T, Resumed(mode=mode)),
        (S, HandoffDone()),
    ]


def dry_run_script(*, failures: Sequence[Finding] = (FAILURE,)) -> list[Step]:
    return [*opening(), (S, check_request(dry_run=True)), (T, CheckResult(failures=tuple(failures)))]


def recovery_script() -> list[Step]:
    from ldoms.migration.events import Decision

    return [
        *opening(),
        (S, RecoveryQuery(migration_id="mig-0000")),
        (
            T,
            RecoveryAnswer(migration_id="mig-0000", decision=Decision.KEEP_TARGET, detail="resumed at 12:00"),
        ),
    ]


SCRIPTS = {
    "active": active_script,
    "legacy": lambda: active_script(legacy=True),
    "bound": lambda: cold_script(MigrationMode.BOUND),
    "inactive": lambda: cold_script(MigrationMode.INACTIVE),
    "dry-run": dry_run_script,
    "recovery": recovery_script,
}


# One valid event of every kind (round numbers and nonces are irrelevant where the table refuses first).
SAMPLES: dict[EventType, Event] = {
    EventType.HELLO: hello(S),
    EventType.ABORT: Abort(reason="test", who=S),
    EventType.AUTH: Auth(user="root", password="secret"),
    EventType.AUTH_OK: AuthResult(ok=True),
    EventType.AUTH_FAILED: AuthResult(ok=False, reason="Authentication failed"),
    EventType.CHECK_ACTIVE: check_request(),
    EventType.CHECK_COLD: check_request(MigrationMode.BOUND),
    EventType.CHECK_DRY_RUN: check_request(dry_run=True),
    EventType.CHECK_PASSED: CheckResult(),
    EventType.CHECK_FAILED: CheckResult(failures=(FAILURE,)),
    EventType.PREPARE: Prepare(target_domain="ldg1"),
    EventType.PREPARE_ACK: PrepareAck(target_domain="ldg1"),
    EventType.MEM_PAGES: MemPages(round=1, pages=(page(0),)),
    EventType.ROUND_DONE: RoundDone(round=1, pages=1, nbytes=PAGE_SIZE),
    EventType.SUSPEND: Suspend(round=1),
    EventType.SUSPEND_ACK: SuspendAck(round=1),
    EventType.FINAL_STATE: FinalState(cpu_state=b"cpu", checksum=CHECKSUM),
    EventType.COMMIT_REQUEST: CommitRequest(mode=MigrationMode.ACTIVE),
    EventType.RESUMED: Resumed(mode=MigrationMode.ACTIVE),
    EventType.HANDOFF_DONE: HandoffDone(),
    EventType.CANCEL: Cancel(),
    EventType.PROGRESS: Progress(percent=1),
    EventType.PING: Ping(nonce=424242),
    EventType.PONG: Pong(nonce=434343),
    EventType.RECOVERY_QUERY: RecoveryQuery(migration_id=MID),
    EventType.RECOVERY_ANSWER: RecoveryAnswer(migration_id=MID, decision=None),
}


def sample(kind: EventType, sender: Role) -> Event:
    """SAMPLES[kind], made to come from `sender` where the event names its sender."""
    ev = SAMPLES[kind]
    if isinstance(ev, Hello):
        return hello(sender)
    if isinstance(ev, Abort):
        return Abort(reason="test", who=sender)
    return ev


class Pair:
    """A source and a target joined in memory.  `split`: deliver whole, or one byte at a time."""

    def __init__(self, *, split: str = "whole", src_versions: tuple[int, int] = (1, 1),
                 tgt_versions: tuple[int, int] = (1, 1)) -> None:  # fmt: skip
        self.src = MigrationConnection(S, versions=src_versions)
        self.tgt = MigrationConnection(T, versions=tgt_versions)
        self.split = split

    def conn(self, role: Role) -> MigrationConnection:
        return self.src if role is S else self.tgt

    def deliver(self, receiver: MigrationConnection, data: bytes) -> list[Event]:
        chunks: Iterator[bytes] = (
            iter([data]) if self.split == "whole" else (data[i : i + 1] for i in range(len(data)))
        )
        got: list[Event] = []
        for chunk in chunks:
            receiver.receive_data(chunk)
            while (ev := receiver.next_event()) is not NEED_DATA:
                assert not isinstance(ev, Signal), ev
                got.append(ev)
        return got

    def step(self, role: Role, event: Event) -> list[Event]:
        """`role` sends `event`; the peer receives it.  Returns what the peer's next_event() produced."""
        data = self.conn(role).send(event)
        return self.deliver(self.conn(role.peer), data)

    def run(self, steps: Sequence[Step]) -> None:
        for role, event in steps:
            got = self.step(role, event)
            assert got == [event], f"{role} sent {event.kind}, the peer got {got}"
            assert self.src.phase == self.tgt.phase, (role, event.kind, self.src.phase, self.tgt.phase)

    @property
    def phases(self) -> tuple[Phase, Phase]:
        return self.src.phase, self.tgt.phase


def reach(phase: Phase) -> tuple[Pair, list[Step]]:
    """A pair whose two sides are both in `phase` (not ERROR), and the steps that got it there."""
    candidates = [active_script(), cold_script(), dry_run_script(), recovery_script()]
    if phase is Phase.ABORTED:
        steps = [*opening()[:-1], (T, AuthResult(ok=False, reason="Authentication failed"))]
        pair = Pair()
        pair.run(steps)
        return pair, steps
    for script in candidates:
        pair = Pair()
        for i, (role, event) in enumerate(script):
            if pair.src.phase is phase:
                return pair, script[:i]
            pair.run([(role, event)])
        if pair.src.phase is phase:
            return pair, script
    raise AssertionError(f"no script reaches {phase}")


# ------------------------------------------------------------------------------------ harness self-tests
@pytest.mark.parametrize("phase", [p for p in Phase if p is not Phase.ERROR])
def test_every_phase_but_error_is_reachable(phase: Phase) -> None:
    pair, _ = reach(phase)
    assert pair.phases == (phase, phase)


def test_samples_cover_every_event_kind() -> None:
    assert set(SAMPLES) == set(EventType)
    assert all(ev.kind is kind for kind, ev in SAMPLES.items())
