"""Every path of the migration protocol, run on two connections joined in memory, whole and byte by byte."""

from __future__ import annotations

import pytest
from test_protocol_pair import (
    FAILURE,
    MID,
    SCRIPTS,
    Pair,
    S,
    T,
    active_script,
    check_request,
    cold_script,
    dry_run_script,
    hello,
    opening,
    reach,
)

from ldoms.migration.events import (
    Abort,
    AuthResult,
    Cancel,
    CheckResult,
    CommitRequest,
    Decision,
    HandoffDone,
    MigrationMode,
    Ping,
    Pong,
    PrepareAck,
    Progress,
    RecoveryAnswer,
    RemoteProtocolError,
    Resumed,
)
from ldoms.migration.protocol import (
    LINK_CLOSED,
    NEED_DATA,
    SOURCE_MAY_ABORT,
    TARGET_MAY_ABORT,
    TERMINAL,
    LocalProtocolError,
    Phase,
)
from ldoms.migration.wire import BadMagic, MalformedFrame, UnsupportedVersion, VersionMismatch, encode_event

SPLITS = ["whole", "bytes"]


# ------------------------------------------------------------------------------------------- happy paths
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("mode", [MigrationMode.ACTIVE, MigrationMode.BOUND, MigrationMode.INACTIVE])
def test_migration_succeeds(split: str, mode: MigrationMode) -> None:
    pair = Pair(split=split)
    pair.run(active_script() if mode is MigrationMode.ACTIVE else cold_script(mode))
    assert pair.phases == (Phase.DONE, Phase.DONE)
    assert (pair.src.outcome(), pair.tgt.outcome()) == (Decision.DESTROY_SOURCE, Decision.KEEP_TARGET)
    assert pair.src.version == pair.tgt.version == 1
    assert pair.src.peer_host == "target-host" and pair.tgt.peer_host == "source-host"
    assert pair.src.request == pair.tgt.request == check_request(mode)
    assert isinstance(pair.tgt.ended_by, HandoffDone)
    for conn in (pair.src, pair.tgt):
        j = conn.journal()
        assert (j.migration_id, j.phase, j.mode, j.source_domain) == (MID, Phase.DONE, mode, "ldg1")
        assert j.recovery() is conn.outcome()


def test_cold_migration_goes_from_prepare_straight_to_handoff() -> None:
    pair = Pair()
    seen = []
    for role, event in cold_script(MigrationMode.INACTIVE):
        pair.run([(role, event)])
        seen.append(pair.src.phase)
    assert Phase.PRECOPY not in seen and Phase.FINAL not in seen
    assert seen[-4:] == [Phase.PREPARED_COLD, Phase.HANDOFF, Phase.RESUMED, Phase.DONE]


@pytest.mark.parametrize("split", SPLITS)
def test_legacy_single_pass_migration(split: str) -> None:
    pair = Pair(split=split)
    pair.run(active_script(legacy=True))
    assert pair.phases == (Phase.DONE, Phase.DONE)


def test_many_precopy_rounds() -> None:
    pair = Pair()
    pair.run(active_script(rounds=4))  # progress 20..80 then 100: never decreasing
    assert pair.phases == (Phase.DONE, Phase.DONE)


@pytest.mark.parametrize("split", SPLITS)
def test_dry_run_reports_every_failure_and_closes(split: str) -> None:
    second = FAILURE.__class__(code="strands", message="not enough free strands on t2: need 8, have 4")
    pair = Pair(split=split)
    pair.run(dry_run_script(failures=(FAILURE, second)))
    assert pair.phases == (Phase.CLOSED, Phase.CLOSED)
    assert isinstance(pair.src.ended_by, CheckResult)
    assert pair.src.ended_by.failures == (FAILURE, second)
    # The target releases its reservation; the source never stopped.
    assert (pair.src.outcome(), pair.tgt.outcome()) == (Decision.KEEP_SOURCE, Decision.DISCARD_TARGET)


def test_dry_run_that_would_succeed_also_closes() -> None:
    pair = Pair()
    pair.run(dry_run_script(failures=()))
    assert pair.phases == (Phase.CLOSED, Phase.CLOSED)


@pytest.mark.parametrize("mode", [MigrationMode.ACTIVE, MigrationMode.BOUND])
def test_failed_checks_abort_a_real_migration(mode: MigrationMode) -> None:
    pair = Pair()
    pair.run([*opening(), (S, check_request(mode)), (T, CheckResult(failures=(FAILURE,)))])
    assert pair.phases == (Phase.ABORTED, Phase.ABORTED)
    assert (pair.src.outcome(), pair.tgt.outcome()) == (Decision.KEEP_SOURCE, Decision.DISCARD_TARGET)


@pytest.mark.parametrize("split", SPLITS)
def test_authentication_failure_aborts(split: str) -> None:
    pair = Pair(split=split)
    refusal = AuthResult(ok=False, reason="Authentication failed for user root on target-host")
    pair.run([*opening()[:-1], (T, refusal)])
    assert pair.phases == (Phase.ABORTED, Phase.ABORTED)
    assert pair.src.ended_by == refusal


def test_recovery_query_touches_no_domain() -> None:
    pair = Pair()
    pair.run(SCRIPTS["recovery"]())
    assert pair.phases == (Phase.CLOSED, Phase.CLOSED)
    assert isinstance(pair.src.ended_by, RecoveryAnswer)
    assert pair.src.ended_by.decision is Decision.KEEP_TARGET
    assert pair.src.outcome() is pair.tgt.outcome() is Decision.NOTHING


# ------------------------------------------------------------------------------- aborts and cancels
def _prefixes(script_name: str) -> list[int]:
    return list(range(1, len(SCRIPTS[script_name]()) + 1))


@pytest.mark.parametrize("who", [S, T])
@pytest.mark.parametrize("script_name", sorted(SCRIPTS))
def test_abort_from_either_side_at_every_phase(script_name: str, who: object) -> None:
    for n in _prefixes(script_name):
        for split in SPLITS:
            pair = Pair(split=split)
            pair.run(SCRIPTS[script_name]()[:n])
            phase = pair.src.phase
            role = S if who is S else T
            abort = Abort(reason=f"aborted by the {role} in {phase}", who=role, code="test")
            may = SOURCE_MAY_ABORT if role is S else TARGET_MAY_ABORT
            if phase in may:
                pair.run([(role, abort)])
                assert pair.phases == (Phase.ABORTED, Phase.ABORTED)
                assert pair.src.ended_by == pair.tgt.ended_by == abort
                undo = (Decision.KEEP_SOURCE, Decision.DISCARD_TARGET)
                nothing = (Decision.NOTHING, Decision.NOTHING)  # a recovery query touches no domain
                assert (pair.src.outcome(), pair.tgt.outcome()) == (nothing if pair.src.recovery else undo)
            else:
                with pytest.raises(LocalProtocolError, match=f"{role} cannot send Abort in phase {phase}"):
                    pair.conn(role).send(abort)
                assert pair.src.phase is phase  # an illegal send changes nothing
                fenced = {Phase.FINAL, Phase.HANDOFF, Phase.RESUMED} if role is S else {Phase.RESUMED}
                assert phase in fenced | TERMINAL


@pytest.mark.parametrize("split", SPLITS)
def test_cancel_before_the_fence_aborts_both_sides(split: str) -> None:
    for n in _prefixes("active"):
        pair = Pair(split=split)
        pair.run(active_script()[:n])
        if pair.src.phase in SOURCE_MAY_ABORT:
            pair.run([(S, Cancel())])
            assert pair.phases == (Phase.ABORTED, Phase.ABORTED)
            assert pair.tgt.ended_by == Cancel()
        else:
            with pytest.raises(LocalProtocolError):
                pair.src.send(Cancel())


def test_cancel_after_final_state_names_the_fence() -> None:
    pair, _ = reach(Phase.FINAL)
    assert not pair.src.can_send(Cancel())
    with pytest.raises(LocalProtocolError, match="can no longer abort; the target decides"):
        pair.src.send(Cancel())
    assert pair.src.phase is Phase.FINAL


def test_only_the_source_cancels() -> None:
    pair, _ = reach(Phase.PRECOPY)
    with pytest.raises(LocalProtocolError, match="target cannot send Cancel in phase PRECOPY"):
        pair.tgt.send(Cancel())


def test_target_aborts_after_the_final_state_and_the_source_resumes() -> None:
    """A bad image checksum: the target's Abort promises it discards, so the source may resume."""
    for phase in (Phase.FINAL, Phase.HANDOFF):
        pair, _ = reach(phase)
        pair.run([(T, Abort(reason="image checksum mismatch", who=T, code="checksum"))])
        assert (pair.src.outcome(), pair.tgt.outcome()) == (Decision.KEEP_SOURCE, Decision.DISCARD_TARGET)


def test_target_cannot_abort_once_resumed() -> None:
    pair, _ = reach(Phase.RESUMED)
    with pytest.raises(LocalProtocolError, match="target cannot send Abort in phase RESUMED"):
        pair.tgt.send(Abort(reason="too late", who=T))


# ------------------------------------------------------------------------------- events that cross
def test_aborts_that_cross_are_both_dropped() -> None:
    pair, _ = reach(Phase.PRECOPY)
    to_tgt = pair.src.send(Abort(reason="source gives up", who=S))
    to_src = pair.tgt.send(Abort(reason="target gives up", who=T))
    assert pair.deliver(pair.tgt, to_tgt) == [] and pair.deliver(pair.src, to_src) == []
    assert pair.phases == (Phase.ABORTED, Phase.ABORTED)


def test_a_reply_crossing_an_abort_is_dropped() -> None:
    pair, _ = reach(Phase.PREPARING)
    to_tgt = pair.src.send(Abort(reason="cancelled", who=S))
    to_src = pair.tgt.send(PrepareAck(target_domain="ldg1"))
    assert pair.deliver(pair.src, to_src) == []  # the source no longer cares
    assert pair.deliver(pair.tgt, to_tgt) == [Abort(reason="cancelled", who=S)]
    assert pair.phases == (Phase.ABORTED, Phase.ABORTED)


def test_a_target_abort_crossing_the_final_state_lets_the_source_resume() -> None:
    pair, steps = reach(Phase.SUSPENDED)
    final_round = [s for s in active_script()[len(steps) :] if s[1].kind.name in ("MEM_PAGES", "ROUND_DONE")]
    pair.run(final_round)
    to_src = pair.tgt.send(Abort(reason="out of memory", who=T))
    to_tgt = pair.src.send(active_script()[len(steps) + len(final_round)][1])  # FinalState
    assert pair.src.phase is Phase.FINAL and pair.src.outcome() is Decision.SOURCE_ERROR
    assert pair.deliver(pair.tgt, to_tgt) == []
    assert [e.kind.name for e in pair.deliver(pair.src, to_src)] == ["ABORT"]
    assert (pair.src.outcome(), pair.tgt.outcome()) == (Decision.KEEP_SOURCE, Decision.DISCARD_TARGET)


def test_pings_cross_the_end_of_the_conversation() -> None:
    pair, _ = reach(Phase.RESUMED)
    to_src = pair.tgt.send(Ping(nonce=7))
    pair.run([(S, HandoffDone())])
    assert pair.deliver(pair.src, to_src) == []  # dropped in DONE, no Pong owed
    assert pair.phases == (Phase.DONE, Phase.DONE)


def test_ping_pong_and_progress() -> None:
    pair, _ = reach(Phase.PRECOPY)
    pair.run([(T, Ping(nonce=1)), (S, Ping(nonce=1)), (S, Pong(nonce=1)), (T, Pong(nonce=1))])
    pair.run([(S, Progress(percent=10)), (S, Progress(percent=10))])
    assert pair.phases == (Phase.PRECOPY, Phase.PRECOPY)


def test_late_progress_reaches_a_resumed_target() -> None:
    pair, _ = reach(Phase.HANDOFF)
    to_tgt = pair.src.send(Progress(percent=100))
    pair.run([(T, Resumed(mode=MigrationMode.ACTIVE))])
    assert pair.deliver(pair.tgt, to_tgt) == [Progress(percent=100)]


# --------------------------------------------------------------------------------- versions
def test_the_highest_common_version_is_used() -> None:
    pair = Pair(src_versions=(1, 1), tgt_versions=(1, 3))
    pair.run([(S, hello(S, versions=(1, 1))), (T, hello(T, versions=(1, 3)))])
    assert pair.src.version == pair.tgt.version == 1


@pytest.mark.parametrize(("src", "tgt"), [((2, 2), (1, 1)), ((1, 1), (2, 3))])
def test_a_version_mismatch_names_both_versions_on_both_sides(
    src: tuple[int, int], tgt: tuple[int, int]
) -> None:
    pair = Pair(src_versions=src, tgt_versions=tgt)
    data = pair.src.send(hello(S, versions=src))
    with pytest.raises(VersionMismatch) as info:
        pair.deliver(pair.tgt, data)
    ranges = (f"versions {src[0]}..{src[1]}", f"versions {tgt[0]}..{tgt[1]}")
    assert all(r in str(info.value) for r in ranges), str(info.value)
    assert pair.tgt.phase is Phase.ERROR and pair.tgt.outcome() is Decision.DISCARD_TARGET
    assert info.value.farewell is not None
    # The Abort layout is frozen: the other release reads it whatever version it speaks.
    [abort] = pair.deliver(pair.src, info.value.farewell)
    assert isinstance(abort, Abort) and abort.who is T and abort.code == "protocol-version-mismatch"
    assert all(r in abort.reason for r in ranges)
    assert pair.src.phase is Phase.ABORTED


def test_the_source_detects_an_incompatible_target_too() -> None:
    pair = Pair()
    pair.src.send(hello(S))
    with pytest.raises(VersionMismatch, match=r"target ldmd target-host speaks versions 2\.\.2"):
        pair.deliver(pair.src, encode_event(hello(T, versions=(2, 2)), version=2))
    assert pair.src.phase is Phase.ERROR


def test_a_frame_in_another_version_after_negotiation_is_refused() -> None:
    pair, _ = reach(Phase.CHECK)
    with pytest.raises(UnsupportedVersion, match="version 2; this link speaks version 1"):
        pair.deliver(pair.tgt, encode_event(check_request(), version=2))


# ----------------------------------------------------------------------- link loss and local failures
def test_a_clean_close_is_reported_and_the_fence_decides() -> None:
    pair, _ = reach(Phase.FINAL)
    pair.src.receive_data(b"")
    assert pair.src.next_event() is LINK_CLOSED and pair.src.next_event() is LINK_CLOSED
    assert pair.src.outcome() is Decision.SOURCE_ERROR


def test_a_close_inside_a_frame_is_a_remote_error() -> None:
    pair, _ = reach(Phase.PRECOPY)
    data = pair.src.send(Progress(percent=5))
    pair.tgt.receive_data(data[:-1])
    assert pair.tgt.next_event() is NEED_DATA
    pair.tgt.receive_data(b"")
    with pytest.raises(MalformedFrame, match="closed in the middle of a frame"):
        pair.tgt.next_event()
    assert pair.tgt.phase is Phase.ERROR and pair.tgt.outcome() is Decision.DISCARD_TARGET


def test_a_failed_send_of_the_final_state_fences_the_source() -> None:
    pair, steps = reach(Phase.SUSPENDED)
    script = active_script()
    for role, event in script[len(steps) :]:
        if event.kind.name == "FINAL_STATE":
            break
        pair.run([(role, event)])
    pair.src.send(event)  # the bytes may or may not have left
    pair.src.send_failed()
    assert pair.src.phase is Phase.ERROR
    assert pair.src.outcome() is Decision.SOURCE_ERROR
    assert pair.src.journal().phase is Phase.FINAL
    with pytest.raises(LocalProtocolError, match="in ERROR"):
        pair.src.send(Progress(percent=99))
    with pytest.raises(LocalProtocolError, match="in ERROR"):
        pair.src.receive_data(b"x")
    with pytest.raises(LocalProtocolError, match="in ERROR"):
        pair.src.next_event()


def test_garbage_from_the_peer_gets_a_farewell_where_we_may_abort() -> None:
    pair, _ = reach(Phase.PRECOPY)
    with pytest.raises(BadMagic) as info:
        pair.deliver(pair.tgt, b"GET / HTTP/1.1\r\n")
    assert pair.tgt.outcome() is Decision.DISCARD_TARGET  # it told the source it aborts
    assert info.value.farewell is not None
    [abort] = pair.deliver(pair.src, info.value.farewell)
    assert isinstance(abort, Abort) and "bad frame magic" in abort.reason and abort.code == "protocol-magic"
    assert pair.src.outcome() is Decision.KEEP_SOURCE
    with pytest.raises(RemoteProtocolError, match="in ERROR"):
        pair.tgt.next_event()
    with pytest.raises(RemoteProtocolError, match="in ERROR"):
        pair.tgt.receive_data(b"more")


def test_no_farewell_past_the_fence() -> None:
    pair, _ = reach(Phase.RESUMED)
    with pytest.raises(BadMagic) as info:
        pair.deliver(pair.tgt, b"\x00")
    assert info.value.farewell is None
    assert pair.tgt.outcome() is Decision.KEEP_TARGET  # it runs the domain: it keeps it
    pair2, _ = reach(Phase.HANDOFF)
    with pytest.raises(BadMagic) as info:
        pair2.deliver(pair2.src, b"\x00")
    assert info.value.farewell is None and pair2.src.outcome() is Decision.SOURCE_ERROR


def test_journal_needs_a_migration() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError, match="no migration to journal"):
        pair.src.journal()
    pair.src.send(hello(S))
    assert pair.src.journal().migration_id == MID and pair.src.journal().peer == ""


def test_a_link_closed_inside_a_frame_after_the_final_state_keeps_the_target_copy() -> None:
    pair, _ = reach(Phase.FINAL)
    data = pair.src.send(CommitRequest(mode=MigrationMode.ACTIVE))
    pair.tgt.receive_data(data[:5])
    pair.tgt.receive_data(b"")
    with pytest.raises(MalformedFrame) as info:
        pair.tgt.next_event()
    assert info.value.farewell is None
    assert pair.tgt.outcome() is Decision.KEEP_TARGET  # it holds the complete image; the source is fenced


def test_the_version_range_is_checked() -> None:
    from ldoms.migration.protocol import MigrationConnection

    with pytest.raises(LocalProtocolError, match=r"protocol versions \(2, 1\)"):
        MigrationConnection(S, versions=(2, 1))
