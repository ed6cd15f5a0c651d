"""The hand-off fence under every interleaving: a source and a target ldmd, modelled as two connections,
the bytes in flight between them, and what each has persisted.

Hypothesis interleaves sends (following each side's script, with aborts, cancels and pings mixed in),
deliveries of any number of bytes, persisting the journals, and endings: a cut link, a crash of either side
(recovered from its journal alone), garbage on the link, or the normal end.  At every step, and for every
mix of live state and persisted journal, `outcome()` must never leave two running copies or none; an ending
that leaves the source in the error state is settled by a real RecoveryQuery conversation, after which there
is exactly one copy.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ldoms.migration.events import (
    Abort,
    Auth,
    AuthResult,
    Cancel,
    CheckRequest,
    CheckResult,
    CommitRequest,
    Decision,
    Event,
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
    RemoteProtocolError,
    Resumed,
    Role,
    RoundDone,
    Suspend,
    SuspendAck,
)
from ldoms.migration.protocol import (
    LINK_CLOSED,
    NEED_DATA,
    TERMINAL,
    Journal,
    MigrationConnection,
    Phase,
    Signal,
)
from ldoms.units import PAGE_SIZE

S, T = Role.SOURCE, Role.TARGET
P = Phase
CHECKSUM = hashlib.sha256(b"image").hexdigest()


@dataclass(frozen=True)
class Scenario:
    mode: MigrationMode
    dry_run: bool
    auth_ok: bool
    check_ok: bool
    rounds: int  # pre-copy rounds before the suspend; 0: the 1.2 single pass
    verdict: str  # what the target does after the final state: "ok", "bad-checksum", "resume-fails"


scenarios = st.builds(
    Scenario,
    mode=st.sampled_from(MigrationMode),
    dry_run=st.sampled_from([False, False, False, True]),
    auth_ok=st.sampled_from([True, True, True, False]),
    check_ok=st.sampled_from([True, True, True, False]),
    rounds=st.integers(0, 3),
    verdict=st.sampled_from(["ok", "ok", "bad-checksum", "resume-fails"]),
)


def safe(src: Decision, tgt: Decision) -> bool:
    """Never two running copies; never zero recoverable ones."""
    return (src, tgt) not in {
        (Decision.KEEP_SOURCE, Decision.KEEP_TARGET),
        (Decision.DESTROY_SOURCE, Decision.DISCARD_TARGET),
    }


def settle(src: Decision, tgt: Decision) -> int:
    """Copies left after recovery: the source's error state is resolved by asking the target."""
    if src is Decision.SOURCE_ERROR:
        src = Decision.DESTROY_SOURCE if ask_target(tgt) is Decision.KEEP_TARGET else Decision.KEEP_SOURCE
    return (src is Decision.KEEP_SOURCE) + (tgt is Decision.KEEP_TARGET)


def ask_target(recorded: Decision) -> Decision | None:
    """A RecoveryQuery conversation over a fresh link; the target answers from its journal."""
    src, tgt = MigrationConnection(S), MigrationConnection(T)
    steps: list[tuple[MigrationConnection, MigrationConnection, Event]] = [
        (src, tgt, Hello(role=S, version=1, min_version=1, migration_id="rq-1", host_name="src")),
        (tgt, src, Hello(role=T, version=1, min_version=1, migration_id="rq-1", host_name="tgt")),
        (src, tgt, Auth(user="root", password="pw")),
        (tgt, src, AuthResult(ok=True)),
        (src, tgt, RecoveryQuery(migration_id="mig-x")),
        (tgt, src, RecoveryAnswer(migration_id="mig-x", decision=recorded)),
    ]
    for sender, receiver, ev in steps:
        receiver.receive_data(sender.send(ev))
        assert receiver.next_event() == ev
    answer = src.ended_by
    assert isinstance(answer, RecoveryAnswer) and src.phase is P.CLOSED
    return answer.decision


class MigrationPair(RuleBasedStateMachine):
    @initialize(sc=scenarios)
    def begin(self, sc: Scenario) -> None:
        self.count = 0
        self._start(sc)

    def _start(self, sc: Scenario) -> None:
        self.sc = sc
        self.count += 1
        self.conn = {S: MigrationConnection(S), T: MigrationConnection(T)}
        self.journal: dict[Role, Journal | None] = {S: None, T: None}
        self.inbox: dict[Role, bytearray] = {S: bytearray(), T: bytearray()}
        self.owed: dict[Role, list[int]] = {S: [], T: []}
        self.nonce = {S: 0, T: 10**6}
        final = sc.rounds + 1
        pre: list[Event] = []
        for r in range(1, sc.rounds + 1):
            pre += [
                MemPages(round=r, pages=((PAGE_SIZE * r, b"\x5a" * PAGE_SIZE),)),
                Progress(percent=30 * r),
            ]
            pre.append(RoundDone(round=r, pages=1, nbytes=PAGE_SIZE))
        pre.append(Suspend(round=final))
        fin: list[Event] = [
            MemPages(round=final, descriptor=b"batch"),
            RoundDone(round=final, pages=1, nbytes=0),
        ]
        fin.append(FinalState(cpu_state=b"cpu", checksum=CHECKSUM))
        self.plan = {P.PRECOPY: deque(pre), P.SUSPENDED: deque(fin)}
        self.final_round = final

    # ------------------------------------------------------------------------------------ scripts
    def _script(self, role: Role) -> Event | None:
        conn, sc, mode = self.conn[role], self.sc, self.sc.mode
        if self.owed[role]:
            return Pong(nonce=self.owed[role][0])
        phase = conn.phase
        if role is S:
            if phase in self.plan:
                return self.plan[phase][0] if self.plan[phase] else None
            return {
                P.IDLE: Hello(role=S, version=1, min_version=1, migration_id=f"mig-{self.count}",
                              host_name="src"),
                P.AUTH: Auth(user="root", password="pw"),
                P.CHECK: CheckRequest(mode=mode, dry_run=sc.dry_run, source_domain="ldg1",
                                      target_domain="ldg1", domain_xml="<ldg1/>"),
                P.PREPARE: Prepare(target_domain="ldg1"),
                P.PREPARE_COLD: Prepare(target_domain="ldg1"),
                P.FINAL: CommitRequest(mode=mode),
                P.PREPARED_COLD: CommitRequest(mode=mode),
                P.RESUMED: HandoffDone(),
            }.get(phase)  # fmt: skip
        failures = () if sc.check_ok else (Finding(code="strands", message="not enough free strands"),)
        return {
            P.HELLO: Hello(role=T, version=1, min_version=1, migration_id=conn.migration_id or "x",
                           host_name="tgt"),
            P.AUTHENTICATING: AuthResult(ok=sc.auth_ok, reason="" if sc.auth_ok else "Authentication failed"),
            P.CHECKING: CheckResult(failures=failures),
            P.CHECKING_COLD: CheckResult(failures=failures),
            P.CHECKING_DRY_RUN: CheckResult(failures=failures),
            P.PREPARING: PrepareAck(target_domain="ldg1"),
            P.PREPARING_COLD: PrepareAck(target_domain="ldg1"),
            P.SUSPENDING: SuspendAck(round=self.final_round),
            P.FINAL: Abort(reason="image checksum mismatch", who=T) if sc.verdict == "bad-checksum" else None,
            P.HANDOFF: Abort(reason="resume failed", who=T) if sc.verdict == "resume-fails"
                       else Resumed(mode=mode),
        }.get(phase)  # fmt: skip

    def _send(self, role: Role, ev: Event) -> bool:
        conn = self.conn[role]
        if not conn.can_send(ev):
            return False
        data = conn.send(ev)
        self._persist(role)  # write-ahead: the disk knows before the peer can
        self.inbox[role.peer] += data
        return True

    def _persist(self, role: Role) -> None:
        if self.conn[role].migration_id is not None:
            self.journal[role] = self.conn[role].journal()

    # -------------------------------------------------------------------------------------- steps
    @rule(role=st.sampled_from(Role))
    def speak(self, role: Role) -> None:
        ev = self._script(role)
        phase = self.conn[role].phase
        if isinstance(ev, Pong) and not self.conn[role].can_send(ev):
            self.owed[role].pop(0)  # the conversation ended before we answered
        elif ev is not None and self._send(role, ev):
            if isinstance(ev, Pong):
                self.owed[role].pop(0)
            elif phase in self.plan and self.plan[phase] and self.plan[phase][0] is ev:
                self.plan[phase].popleft()

    @rule(role=st.sampled_from(Role), n=st.integers(1, 1 << 14))
    def deliver(self, role: Role, n: int) -> None:
        box, conn = self.inbox[role], self.conn[role]
        data = bytes(box[:n])
        del box[:n]
        if data:
            conn.receive_data(data)
        while (ev := conn.next_event()) is not NEED_DATA:  # a correct peer never causes a protocol error
            assert not isinstance(ev, Signal)
            if isinstance(ev, Ping) and conn.phase not in TERMINAL:
                self.owed[role].append(ev.nonce)

    @rule(role=st.sampled_from(Role))
    def persist(self, role: Role) -> None:
        """Received events reach the journal later than the connection: that lag must be safe."""
        self._persist(role)

    @rule(until=st.sampled_from(sorted(set(Phase) - TERMINAL)), who=st.sampled_from(Role))
    def advance(self, until: Phase, who: Role) -> None:
        """Both sides follow their scripts, delivering everything, until `who` reaches `until` (or the
        conversation cannot get there): every phase gets its share of the endings and aborts."""
        for _ in range(60):
            if self.conn[who].phase is until:
                return
            for role in Role:
                self.speak(role)
                self.deliver(role.peer, len(self.inbox[role.peer]))
                if self.conn[who].phase is until:
                    return

    @rule(role=st.sampled_from(Role), dice=st.integers(0, 3))
    def abort(self, role: Role, dice: int) -> None:
        if dice == 0:  # rarer than the script's own steps, so that runs get deep before someone gives up
            self._send(role, Abort(reason=f"the {role} gives up", who=role))

    @rule(dice=st.integers(0, 3))
    def cancel(self, dice: int) -> None:
        if dice == 0:
            self._send(S, Cancel())

    @rule(role=st.sampled_from(Role))
    def ping(self, role: Role) -> None:
        self.nonce[role] += 1
        self._send(role, Ping(nonce=self.nonce[role]))

    # ------------------------------------------------------------------------------------ endings
    @rule(how=st.sampled_from(["cut", "crash", "garble"]), role=st.sampled_from(Role), sc=scenarios)
    def ending(self, how: str, role: Role, sc: Scenario) -> None:
        """One rule for the violent endings, so they stay rarer than the steps of the conversation."""
        if how == "cut":
            self.cut_link(sc)
        elif how == "crash":
            self.crash(role, sc)
        else:
            self.garble(role, sc)

    def cut_link(self, sc: Scenario) -> None:
        """The link dies: in-flight bytes are lost, each side sees the end of the stream."""
        for role in Role:
            conn = self.conn[role]
            conn.receive_data(b"")
            try:
                while (ev := conn.next_event()) is not LINK_CLOSED:
                    assert ev is not NEED_DATA
            except RemoteProtocolError as exc:  # a frame cut by the end of the link
                assert exc.farewell is None
        self._end("cut", self.conn[S].outcome(), self.conn[T].outcome(), sc)

    def crash(self, role: Role, sc: Scenario) -> None:
        """`role`'s ldmd dies; on restart it knows only its journal.  The other side sees the link die."""
        recovered = self._recovered(role)
        other = self.conn[role.peer].outcome()
        self._end(f"crash-{role}", *((recovered, other) if role is S else (other, recovered)), sc)

    def garble(self, role: Role, sc: Scenario) -> None:
        """Garbage reaches `role` after everything in flight: it fails, says farewell where it may abort."""
        self.deliver(role, len(self.inbox[role]))
        conn = self.conn[role]
        conn.receive_data(b"\x00garbage")
        try:
            conn.next_event()
            raise AssertionError("garbage was accepted")
        except RemoteProtocolError as exc:
            if exc.farewell is not None:
                self._persist(role)
                self.inbox[role.peer] += exc.farewell
        self.deliver(role.peer, len(self.inbox[role.peer]))
        self.conn[role.peer].receive_data(b"")
        assert self.conn[role.peer].next_event() is LINK_CLOSED
        self._end(f"garble-{role}", self.conn[S].outcome(), self.conn[T].outcome(), sc)

    @rule(sc=scenarios)
    def finish(self, sc: Scenario) -> None:
        if self.conn[S].phase in TERMINAL and self.conn[T].phase in TERMINAL:
            # Not always the same end: an Abort crossing a dry run's result ends ABORTED on one side only.
            self._end(f"end-{self.conn[S].phase}", self.conn[S].outcome(), self.conn[T].outcome(), sc)

    def _recovered(self, role: Role) -> Decision:
        j = self.journal[role]
        if j is None:  # nothing was ever sent by it, nor persisted
            return Decision.KEEP_SOURCE if role is S else Decision.DISCARD_TARGET
        return j.recovery()

    def _end(self, how: str, src: Decision, tgt: Decision, sc: Scenario) -> None:
        assert safe(src, tgt), (how, src, tgt, self.conn[S].phase, self.conn[T].phase)
        assert settle(src, tgt) == 1, (how, src, tgt)
        event(f"{how}: {src} / {tgt}")
        self._start(sc)

    # ---------------------------------------------------------------------------------- invariant
    @invariant()
    def never_two_copies_nor_none(self) -> None:
        """Whatever dies now (the link, either process), the decisions are safe together."""
        src = {self.conn[S].outcome(), self._recovered(S)}
        tgt = {self.conn[T].outcome(), self._recovered(T)}
        for s in src:
            for t in tgt:
                assert safe(s, t), (s, t, self.conn[S].phase, self.conn[T].phase, self.journal)


MigrationPair.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestMigrationPair = MigrationPair.TestCase
