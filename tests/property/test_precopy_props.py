"""The pre-copy policy under any sequence of measurements: it always ends (by max-rounds at the latest),
progress never decreases and stays within 0..100, the throttle only rises and never passes its maximum;
a guest that dirties slower than the link always converges; the knobs round-trip through their text."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from ldoms.migration.precopy import (
    CopyAgain,
    GiveUp,
    Precopy,
    PrecopyPolicy,
    RoundReport,
    SwitchOver,
    Throttle,
    format_knobs,
    parse_knobs,
)
from ldoms.units import PAGE_SIZE, G, M

P = PAGE_SIZE


@st.composite
def policies(draw: st.DrawFn) -> PrecopyPolicy:
    initial = draw(st.integers(1, 99))
    return PrecopyPolicy(
        max_downtime_s=draw(st.sampled_from([0.05, 0.3, 2.0])),
        bandwidth_cap=draw(st.sampled_from([0, M, 100 * M, G])),
        auto_converge=draw(st.booleans()),
        throttle_initial=initial,
        throttle_increment=draw(st.integers(1, 50)),
        throttle_max=draw(st.integers(initial, 99)),
        max_time_s=draw(st.sampled_from([0.0, 1.0, 60.0])),
        max_rounds=draw(st.integers(1, 40)),
        min_rounds=draw(st.integers(1, 6)),
        stall_rounds=draw(st.integers(1, 4)),
        min_shrink=draw(st.sampled_from([0.0, 0.1, 0.25, 0.5])),
        rate_decay=draw(st.sampled_from([0.0, 0.5, 0.9])),
    )


@settings(max_examples=300, deadline=None)
@given(policy=policies(), memory_pages=st.integers(1, 1 << 20), legacy=st.sampled_from([False] * 5 + [True]),
       data=st.data())
def test_any_sequence_of_reports_ends_within_max_rounds(
    policy: PrecopyPolicy, memory_pages: int, legacy: bool, data: st.DataObject
) -> None:
    pc = Precopy("ldg1", memory_pages * P, policy, legacy=legacy)
    decision = pc.start()
    progress = [pc.progress()]
    throttle, elapsed, rnd = 0, 0.0, 0
    while isinstance(decision, CopyAgain | Throttle):
        assert rnd < policy.max_rounds, "a round was asked for beyond max-rounds"
        assert decision.round == rnd + 1
        if isinstance(decision, Throttle):
            assert policy.auto_converge
            assert throttle < decision.percent <= policy.throttle_max
            throttle = decision.percent
        assert pc.throttle_percent == throttle
        progress.append(pc.progress(in_round_bytes=data.draw(st.integers(-P, 2 * memory_pages * P))))
        rnd += 1
        elapsed += data.draw(st.floats(0, 5))
        pages = data.draw(st.integers(0, memory_pages))
        decision = pc.feed(RoundReport(
            round=rnd,
            pages_sent=pages,
            bytes_sent=data.draw(st.sampled_from([0, pages * P, pages * P // 3, 17])),
            seconds=data.draw(st.sampled_from([0.0, 1e-6, 0.004, 1.0, 37.5])),
            dirty_pages_now=data.draw(  # mostly large: a set that fits switches at once and ends the story
                st.integers(memory_pages // 2, memory_pages) | st.integers(0, memory_pages)),
            page_size=P,
            elapsed_total_s=elapsed,
            guest_dirty_rate_bytes_s=data.draw(st.none() | st.floats(0, 1e12)),
        ))
        progress.append(pc.progress())
    assert rnd <= policy.max_rounds
    assert pc.throttle_percent <= policy.throttle_max
    event(f"{type(decision).__name__}, {'max-rounds' if rnd == policy.max_rounds else 'earlier'}")
    event(f"throttled: {pc.throttle_percent > 0}")
    if isinstance(decision, GiveUp):
        assert pc.finished and decision.round == rnd
        assert decision.reason.startswith("migration of ldg1 ")
        assert "downtime budget" in decision.reason
    else:
        assert isinstance(decision, SwitchOver)
        assert decision.full == legacy and decision.round == rnd + 1
        assert legacy or decision.expected_downtime_s is not None
        assert legacy or decision.expected_downtime_s <= policy.max_downtime_s  # type: ignore[operator]
        progress.append(pc.progress(in_round_bytes=data.draw(st.integers(0, memory_pages * P))))
        assert progress[-1] < 100
        pc.complete()
        progress.append(pc.progress())
        assert progress[-1] == 100
    assert all(0 <= p <= 100 for p in progress)
    assert progress == sorted(progress)


@settings(max_examples=200, deadline=None)
@given(
    memory=st.integers(64, 65536).map(lambda mib: mib * M),
    link=st.integers(100, 4096).map(lambda mib: mib * M),
    ratio=st.floats(0.0, 0.5),
    working_fraction=st.floats(0.01, 1.0),
    auto_converge=st.booleans(),
)
def test_a_guest_slower_than_half_the_link_always_converges_unthrottled(
    memory: int, link: int, ratio: float, working_fraction: float, auto_converge: bool
) -> None:
    pc = Precopy("ldg1", memory, PrecopyPolicy(auto_converge=auto_converge))
    decision = pc.start()
    elapsed = 0.0
    working_set = memory * working_fraction
    while isinstance(decision, CopyAgain):
        seconds = decision.pages * P / link
        elapsed += seconds
        dirty = int(min(working_set, ratio * link * seconds)) // P
        decision = pc.feed(RoundReport(round=decision.round, pages_sent=decision.pages,
                                       bytes_sent=decision.pages * P, seconds=seconds, dirty_pages_now=dirty,
                                       page_size=P, elapsed_total_s=elapsed))
    assert isinstance(decision, SwitchOver), decision


@settings(max_examples=200, deadline=None)
@given(
    memory=st.integers(64, 16384).map(lambda mib: mib * M),
    link=st.integers(100, 4096).map(lambda mib: mib * M),
    ratio=st.floats(0.5, 3.0),
    working_fraction=st.floats(0.01, 1.0),
)
def test_auto_converge_rescues_a_guest_faster_than_the_link(
    memory: int, link: int, ratio: float, working_fraction: float
) -> None:
    pc = Precopy("ldg1", memory)
    decision = pc.start()
    elapsed, throttle = 0.0, 0
    working_set = memory * working_fraction
    while isinstance(decision, CopyAgain | Throttle):
        if isinstance(decision, Throttle):
            throttle = decision.percent
        seconds = decision.pages * P / link
        elapsed += seconds
        dirty = int(min(working_set, ratio * (1 - throttle / 100) * link * seconds)) // P
        decision = pc.feed(RoundReport(round=decision.round, pages_sent=decision.pages,
                                       bytes_sent=decision.pages * P, seconds=seconds, dirty_pages_now=dirty,
                                       page_size=P, elapsed_total_s=elapsed))
    assert isinstance(decision, SwitchOver), decision


@given(
    downtime_ms=st.integers(21, 3_600_000),
    cap=st.just(0) | st.integers(1, 1 << 16).map(lambda mib: mib * M) | st.integers(M, 1 << 40),
    auto_converge=st.booleans(),
    max_time_ms=st.just(0) | st.integers(1, 10_000_000),
    max_rounds=st.integers(1, 1000),
)
def test_knobs_round_trip(
    downtime_ms: int, cap: int, auto_converge: bool, max_time_ms: int, max_rounds: int
) -> None:
    policy = PrecopyPolicy(max_downtime_s=downtime_ms / 1000, bandwidth_cap=cap, auto_converge=auto_converge,
                           max_time_s=max_time_ms / 1000, max_rounds=max_rounds)
    assert parse_knobs(format_knobs(policy)) == policy
