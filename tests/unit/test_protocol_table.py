"""The transition table, its complement, the rules beyond it, outcome() and the Journal."""

from __future__ import annotations

import pytest
from test_protocol_pair import CHECKSUM, MID, Pair, S, T, active_script, hello, page, reach, sample

from ldoms.migration.events import (
    Abort,
    CommitRequest,
    Decision,
    EventType,
    FinalState,
    InvalidEvent,
    LocalProtocolError,
    MemPages,
    MigrationMode,
    Ping,
    Pong,
    Prepare,
    Progress,
    RecoveryAnswer,
    RemoteProtocolError,
    Role,
    RoundDone,
    Suspend,
    SuspendAck,
)
from ldoms.migration.protocol import (
    DEADLINES,
    LATE_ARRIVALS,
    NEED_DATA,
    TERMINAL,
    TRANSITIONS,
    Journal,
    MigrationConnection,
    Phase,
    outcome,
)
from ldoms.migration.wire import encode_event

PHASES = [p for p in Phase if p is not Phase.ERROR]


# --------------------------------------------------------------------------------------- the table
def test_the_table_is_keyed_by_phase_role_and_kind() -> None:
    assert TRANSITIONS[(Phase.PRECOPY, Role.SOURCE, EventType.MEM_PAGES)] is Phase.PRECOPY
    assert (Phase.PRECOPY, Role.TARGET, EventType.MEM_PAGES) not in TRANSITIONS  # sent by whom matters
    assert not any(p in TERMINAL for (p, _, _) in TRANSITIONS)  # nothing leaves an end
    assert Phase.ERROR not in TRANSITIONS.values()  # ERROR is entered by failures only


def test_every_phase_but_the_ends_has_a_way_forward_for_someone() -> None:
    for phase in set(Phase) - TERMINAL:
        assert any(p is phase and q is not p for (p, _, _), q in TRANSITIONS.items()), phase


@pytest.mark.parametrize("phase", PHASES)
def test_sending_what_the_table_refuses_raises_locally_and_changes_nothing(phase: Phase) -> None:
    pair, _ = reach(phase)
    checked = 0
    for role in Role:
        conn = pair.conn(role)
        for kind in EventType:
            if (phase, role, kind) in TRANSITIONS:
                continue
            event = sample(kind, role)
            with pytest.raises(LocalProtocolError) as info:
                conn.send(event)
            msg = str(info.value)
            assert f"{role} cannot send {kind} in phase {phase}" in msg, msg
            assert conn.phase is phase and not conn.can_send(event)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("phase", PHASES)
def test_receiving_what_the_table_refuses_is_a_remote_error(phase: Phase) -> None:
    for role in Role:  # the sender
        for kind in EventType:
            if (phase, role, kind) in TRANSITIONS:
                continue
            pair, _ = reach(phase)
            receiver = pair.conn(role.peer)
            data = encode_event(sample(kind, role), version=1)
            receiver.receive_data(data)
            if kind in LATE_ARRIVALS.get(phase, ()):
                assert receiver.next_event() is NEED_DATA and receiver.phase is phase
                continue
            with pytest.raises(RemoteProtocolError) as info:
                receiver.next_event()
            assert f"{role} sent {kind} in phase {phase}" in str(info.value)
            assert receiver.phase is Phase.ERROR
            with pytest.raises(LocalProtocolError, match="in ERROR"):
                receiver.send(Ping(nonce=1))
            with pytest.raises(RemoteProtocolError, match="in ERROR"):
                receiver.next_event()


def test_a_refusal_lists_what_may_be_sent() -> None:
    pair, _ = reach(Phase.PRECOPY)
    with pytest.raises(LocalProtocolError, match=r"the source may send: .*MemPages.*RoundDone.*Suspend"):
        pair.src.send(FinalState(cpu_state=b"", checksum=CHECKSUM))


def test_nothing_may_be_sent_in_the_ends() -> None:
    pair, _ = reach(Phase.DONE)
    with pytest.raises(LocalProtocolError, match=r"may send: nothing"):
        pair.src.send(Progress(percent=100))


# --------------------------------------------------------------------------------- rules beyond it
def _at(phase: Phase) -> Pair:
    return reach(phase)[0]


RULES = [
    # (phase, sender, event, message fragment)
    (Phase.PRECOPY, S, MemPages(round=2, pages=(page(0),)), "round 2 is out of order: round 1 is open"),
    (Phase.PRECOPY, S, RoundDone(round=3, pages=0, nbytes=0), "round 3 is out of order"),
    (Phase.PRECOPY, S, Suspend(round=5), "round 5 is out of order"),
    (Phase.SUSPENDING, T, SuspendAck(round=1), "acknowledges round 1, the final round is 3"),
    (Phase.SUSPENDED, S, FinalState(cpu_state=b"", checksum=CHECKSUM), "final round 3 was not closed"),
    (Phase.PREPARE, S, Prepare(target_domain="other"), "target domain other is not the checked one, ldg1"),
    (Phase.FINAL, S, CommitRequest(mode=MigrationMode.BOUND), "mode bound is not the checked one, active"),
    (Phase.PRECOPY, T, Pong(nonce=9), "pong 9 answers no ping of the source"),
    (Phase.PRECOPY, S, Abort(reason="x", who=T), "must say who=source, not who=target"),
    (Phase.HELLO, T, hello(S), "the Hello of the target claims role source"),
    (Phase.HELLO, T, hello(T, mid="mig-9999"), "is for migration mig-9999, not mig-0001"),
    (Phase.RECOVERING, T, RecoveryAnswer(migration_id="mig-7", decision=None), "about migration mig-7"),
]


@pytest.mark.parametrize(("phase", "sender", "event", "fragment"), RULES, ids=[r[3][:30] for r in RULES])
def test_rules_hold_in_both_directions(phase: Phase, sender: Role, event: object, fragment: str) -> None:
    pair = _at(phase)
    with pytest.raises(LocalProtocolError, match=fragment):
        pair.conn(sender).send(event)  # type: ignore[arg-type]
    assert pair.conn(sender).phase is phase
    pair.conn(sender.peer).receive_data(encode_event(event, version=1))  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError, match=fragment):
        pair.conn(sender.peer).next_event()


def test_the_final_round_is_closed_once() -> None:
    pair = _at(Phase.SUSPENDED)
    pair.run([(S, RoundDone(round=3, pages=0, nbytes=0))])
    with pytest.raises(LocalProtocolError, match="after the final round 3 was closed"):
        pair.src.send(MemPages(round=4, pages=(page(0),)))


def test_progress_never_goes_back() -> None:
    pair = _at(Phase.PRECOPY)
    pair.run([(S, Progress(percent=40))])
    with pytest.raises(LocalProtocolError, match="progress went back from 40% to 39%"):
        pair.src.send(Progress(percent=39))


def test_a_ping_is_answered_once() -> None:
    pair = _at(Phase.PRECOPY)
    pair.run([(S, Ping(nonce=3))])
    with pytest.raises(LocalProtocolError, match="ping 3 of the source is already outstanding"):
        pair.src.send(Ping(nonce=3))
    pair.run([(T, Pong(nonce=3))])
    with pytest.raises(LocalProtocolError, match="pong 3 answers no ping"):
        pair.tgt.send(Pong(nonce=3))


def test_our_hello_must_offer_our_versions() -> None:
    conn = MigrationConnection(S, versions=(1, 2))
    with pytest.raises(LocalProtocolError, match=r"must offer versions 1\.\.2"):
        conn.send(hello(S, versions=(1, 1)))
    frame = conn.send(hello(S, versions=(1, 2)))
    assert frame[4] == 2  # Hello goes out in our newest version: its layout is frozen


# ------------------------------------------------------------------------------------------ outcome
def test_outcome_is_the_hand_off_fence() -> None:
    script = active_script()
    fence = next(i for i, (_, e) in enumerate(script) if e.kind is EventType.FINAL_STATE)
    pair = Pair()
    for i, step in enumerate(script):
        pair.run([step])
        src, tgt = pair.src.outcome(), pair.tgt.outcome()
        assert (src, tgt) != (Decision.KEEP_SOURCE, Decision.KEEP_TARGET)  # never two running copies
        assert (src, tgt) != (Decision.DESTROY_SOURCE, Decision.DISCARD_TARGET)  # never none
        if i < fence:
            assert (src, tgt) == (Decision.KEEP_SOURCE, Decision.DISCARD_TARGET)
        elif pair.src.phase in (Phase.FINAL, Phase.HANDOFF):
            assert (src, tgt) == (Decision.SOURCE_ERROR, Decision.KEEP_TARGET)
        else:
            assert (src, tgt) == (Decision.DESTROY_SOURCE, Decision.KEEP_TARGET)


def test_outcome_refuses_error_and_is_nothing_for_recovery() -> None:
    with pytest.raises(LocalProtocolError, match="ERROR is not a phase reached"):
        outcome(S, Phase.ERROR)
    assert outcome(T, Phase.RECOVERING) is outcome(S, Phase.RECOVERING) is Decision.NOTHING


def test_every_phase_has_a_named_deadline_entry() -> None:
    assert set(DEADLINES) == set(Phase)
    assert DEADLINES[Phase.HANDOFF] == "handoff_ack_s" and DEADLINES[Phase.CHECKING] == "check_s"


# ------------------------------------------------------------------------------------------ journal
def test_journal_round_trips_through_a_dict() -> None:
    pair = _at(Phase.HANDOFF)
    j = pair.src.journal(decision=Decision.SOURCE_ERROR)
    d = j.to_dict()
    assert d == {
        "migration_id": MID,
        "role": "source",
        "phase": "HANDOFF",
        "source_domain": "ldg1",
        "target_domain": "ldg1",
        "peer": "target-host",
        "mode": "active",
        "decision": "source-error",
    }
    assert Journal.from_dict(d) == j and j.recovery() is Decision.SOURCE_ERROR
    assert Journal.from_dict({**d, "decision": None}).recovery() is Decision.SOURCE_ERROR  # from the phase


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"phase": "ERROR"}, "record the phase reached"),
        ({"phase": "LIMBO"}, "Journal.phase='LIMBO': must be one of"),
        ({"decision": "keep-target"}, "not a decision of the source"),
        ({"colour": "red"}, r"unknown fields \['colour'\]"),
        ({"migration_id": "a b"}, "printable, without spaces"),
    ],
)
def test_a_bad_journal_is_refused(changes: dict[str, str], fragment: str) -> None:
    good = Journal(migration_id=MID, role=Role.SOURCE, phase=Phase.PRECOPY).to_dict()
    with pytest.raises(InvalidEvent, match=fragment):
        Journal.from_dict({**good, **changes})
