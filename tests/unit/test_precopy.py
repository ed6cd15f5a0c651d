"""The pre-copy policy with concrete numbers: a small simulator plays a guest that dirties a working set at
some rate over a link of some speed, and the policy decides round after round."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from ldoms.errors import OpExecError, StateError, UsageError
from ldoms.migration.precopy import (
    CopyAgain,
    Decision,
    GiveUp,
    GiveUpCause,
    Precopy,
    PrecopyPolicy,
    RoundReport,
    SwitchOver,
    Throttle,
    format_duration,
    format_knobs,
    parse_duration,
    parse_knobs,
)
from ldoms.units import PAGE_SIZE, G, K, M

P = PAGE_SIZE


@dataclass
class Run:
    decisions: list[Decision] = field(default_factory=list)
    throttles: list[int] = field(default_factory=list)
    progress: list[int] = field(default_factory=list)
    pc: Precopy | None = None

    @property
    def last(self) -> Decision:
        return self.decisions[-1]


def simulate(
    policy: PrecopyPolicy,
    *,
    memory: int,
    link: float,
    dirty_rate: float,
    working_set: int,
    throttle_works: bool = True,
    report_guest_rate: bool = True,
) -> Run:
    """Rounds take bytes / min(link, cap); a round dirties min(working set, effective rate x its duration)."""
    pc = Precopy("ldg1", memory, policy)
    run = Run(pc=pc)
    decision = pc.start()
    elapsed, throttle = 0.0, 0
    rate = min(link, policy.bandwidth_cap) if policy.bandwidth_cap else link
    while isinstance(decision, CopyAgain | Throttle):
        if isinstance(decision, Throttle):
            throttle = decision.percent
            run.throttles.append(throttle)
        seconds = decision.pages * P / rate
        effective = dirty_rate * (1 - throttle / 100) if throttle_works else dirty_rate
        dirty = int(min(working_set, effective * seconds)) // P
        elapsed += seconds
        decision = pc.feed(RoundReport(
            round=decision.round, pages_sent=decision.pages, bytes_sent=decision.pages * P, seconds=seconds,
            dirty_pages_now=dirty, page_size=P, elapsed_total_s=elapsed,
            guest_dirty_rate_bytes_s=effective if report_guest_rate else None,
        ))
        run.decisions.append(decision)
        run.progress.append(pc.progress())
        assert len(run.decisions) <= policy.max_rounds
    return run


def report(rnd: int, *, sent: int = 0, seconds: float = 0.0, dirty: int = 0, elapsed: float = 0.0,
           guest_rate: float | None = None) -> RoundReport:
    return RoundReport(round=rnd, pages_sent=sent // P, bytes_sent=sent, seconds=seconds,
                       dirty_pages_now=dirty, page_size=P, elapsed_total_s=elapsed,
                       guest_dirty_rate_bytes_s=guest_rate)


# ------------------------------------------------------------------------------------------- decisions


def test_idle_guest_converges_in_round_1() -> None:
    run = simulate(PrecopyPolicy(), memory=4 * G, link=G, dirty_rate=0, working_set=0)
    assert len(run.decisions) == 1
    assert run.last == SwitchOver(round=2, pages=0, expected_downtime_s=pytest.approx(0.020))
    assert run.throttles == []


@pytest.mark.parametrize("auto_converge", [True, False])
def test_256m_dirtying_over_512m_converges_on_a_1g_link(auto_converge: bool) -> None:
    run = simulate(PrecopyPolicy(auto_converge=auto_converge), memory=2 * G, link=G, dirty_rate=256 * M,
                   working_set=512 * M)
    # round 1: 2 s, 512M dirty (the whole working set); round 2: 0.5 s, 128M dirty -> 125 ms + 20 ms fits,
    # but a round of 125 ms would leave 32M (31 + 20 ms): copy it; then 8M (8 + 20 ms): copy it too; then
    # the copy part (8 ms) is below the resume overhead: switch
    assert [type(d) for d in run.decisions] == [CopyAgain, CopyAgain, CopyAgain, SwitchOver]
    assert run.last.pages == 8 * M // P
    assert run.last.expected_downtime_s == pytest.approx(0.0078125 + 0.020)
    assert run.throttles == []


def test_a_round_is_added_only_when_it_shortens_the_pause() -> None:
    pc = Precopy("ldg1", 4 * G)
    # 64M dirty in a 4 s round at 1G/s: a 62.5 ms round would leave 1M: 21 ms instead of 82.5 ms
    assert pc.feed(report(1, sent=4 * G, seconds=4.0, dirty=64 * M // P)) == CopyAgain(
        round=2, pages=64 * M // P, expected_s=pytest.approx(0.0625))
    # the guest wrote 16M in that round (dirtying faster): 36 ms now, mostly the resume overhead
    d = pc.feed(report(2, sent=64 * M, seconds=0.0625, dirty=16 * M // P))
    assert isinstance(d, SwitchOver) and d.expected_downtime_s == pytest.approx(0.020 + 16 / 1024, rel=0.05)


@pytest.mark.parametrize(
    "policy, rounds",
    [
        (PrecopyPolicy(max_rounds=2), 1),  # the next round would be the last one allowed: switch now
        (PrecopyPolicy(max_time_s=1.0), 1),  # out of time
    ],
)
def test_no_extra_round_without_rounds_or_time_to_spare(policy: PrecopyPolicy, rounds: int) -> None:
    pc = Precopy("ldg1", 4 * G, policy)
    d = pc.feed(report(rounds, sent=4 * G, seconds=4.0, dirty=64 * M // P, elapsed=4.0))
    assert isinstance(d, SwitchOver)


def test_a_round_that_would_not_cut_the_pause_by_a_quarter_is_not_copied() -> None:
    pc = Precopy("ldg1", 4 * G)
    # 200M dirtied in a 0.5 s round at 1G/s: 215 ms; a 195 ms round would leave 78M (96 ms): copy it
    assert isinstance(pc.feed(report(1, sent=G // 2, seconds=0.5, dirty=200 * M // P)), CopyAgain)
    # now 180M dirtied in 0.195 s (the guest writes fast): 196 ms; the next would leave 180M again
    d = pc.feed(report(2, sent=200 * M, seconds=0.195, dirty=180 * M // P))
    assert isinstance(d, SwitchOver)


def test_no_extra_round_when_the_pause_is_mostly_overhead() -> None:
    pc = Precopy("ldg1", G)
    # 10 pages: the copy part is far below the 20 ms resume overhead
    assert isinstance(pc.feed(report(1, sent=G, seconds=1.0, dirty=10)), SwitchOver)


def test_256m_dirtying_over_512m_needs_the_throttle_on_a_200m_link() -> None:
    common = dict(memory=2 * G, link=G, dirty_rate=256 * M, working_set=512 * M)
    with_throttle = simulate(PrecopyPolicy(bandwidth_cap=200 * M), **common)  # type: ignore[arg-type]
    assert isinstance(with_throttle.last, SwitchOver)
    assert with_throttle.throttles[:2] == [20, 30]
    assert with_throttle.last.expected_downtime_s is not None
    assert with_throttle.last.expected_downtime_s <= 0.300

    without = simulate(PrecopyPolicy(bandwidth_cap=200 * M, auto_converge=False), **common)  # type: ignore[arg-type]
    assert isinstance(without.last, GiveUp)
    assert without.last.cause is GiveUpCause.NOT_CONVERGING
    assert without.throttles == []


def test_1g_dirtying_over_a_400m_link_gives_up_naming_both_rates() -> None:
    run = simulate(PrecopyPolicy(auto_converge=False), memory=4 * G, link=400 * M, dirty_rate=G,
                   working_set=2 * G)
    assert isinstance(run.last, GiveUp)
    assert run.last.cause is GiveUpCause.NOT_CONVERGING
    assert run.last.round == 3  # round 1 sets the mark, rounds 2 and 3 fail to shrink it
    assert run.last.reason == (
        "migration of ldg1 does not converge: the guest dirties 1024 MB/s and the link moves 400 MB/s; "
        "remaining 2G would take 5.12 s, more than the 300 ms downtime budget "
        "(set max-downtime higher, enable auto-converge, or cap the guest's writes)")


def test_a_guest_that_ignores_the_throttle_gives_up_at_the_maximum() -> None:
    run = simulate(PrecopyPolicy(), memory=4 * G, link=400 * M, dirty_rate=G, working_set=2 * G,
                   throttle_works=False)
    assert run.throttles == [20, 30, 40, 50, 60, 70, 80, 90, 99]
    assert isinstance(run.last, GiveUp) and run.last.cause is GiveUpCause.NOT_CONVERGING
    assert "the guest, throttled by 99%, dirties 1024 MB/s and the link moves 400 MB/s" in run.last.reason
    assert "enable auto-converge" not in run.last.reason


def test_the_throttle_rescues_1g_dirtying_over_a_400m_link() -> None:
    run = simulate(PrecopyPolicy(), memory=4 * G, link=400 * M, dirty_rate=G, working_set=2 * G)
    assert isinstance(run.last, SwitchOver)
    assert run.throttles == sorted(run.throttles) and max(run.throttles) <= 99
    assert run.pc is not None and run.pc.throttle_percent == run.throttles[-1]


def test_switch_over_is_allowed_at_max_throttle_when_it_then_fits() -> None:
    policy = PrecopyPolicy(throttle_initial=99, stall_rounds=1)
    pc = Precopy("ldg1", G, policy)
    assert isinstance(pc.feed(report(1, sent=G, seconds=1.0, dirty=G // P // 2)), CopyAgain)
    assert pc.feed(report(2, sent=G // 2, seconds=0.5, dirty=G // P // 2)) == Throttle(
        percent=99, round=3, pages=G // P // 2, expected_s=pytest.approx(0.5))
    d = pc.feed(report(3, sent=G // 2, seconds=0.5, dirty=100 * M // P))
    assert isinstance(d, SwitchOver) and d.expected_downtime_s == pytest.approx(100 / 1024 + 0.02)


def test_the_bandwidth_cap_bounds_the_estimate() -> None:
    # the link measured 1G/s, but the operator capped the migration at 100M/s
    capped = Precopy("ldg1", 4 * G, PrecopyPolicy(bandwidth_cap=100 * M))
    assert capped.start() == CopyAgain(round=1, pages=4 * G // P, expected_s=pytest.approx(40.96))
    d = capped.feed(report(1, sent=4 * G, seconds=4.0, dirty=64 * M // P))
    assert capped.link_rate == 100 * M
    assert d == CopyAgain(round=2, pages=64 * M // P, expected_s=pytest.approx(0.64))
    free = Precopy("ldg1", 4 * G)
    assert free.start() == CopyAgain(round=1, pages=4 * G // P, expected_s=None)
    d = free.feed(report(1, sent=4 * G, seconds=4.0, dirty=64 * M // P))
    assert free.link_rate == G and d.expected_s == pytest.approx(0.0625)  # 64M at the measured 1G/s


def test_the_bandwidth_cap_is_named_when_it_holds_the_migration_back() -> None:
    run = simulate(PrecopyPolicy(bandwidth_cap=100 * M, auto_converge=False), memory=G, link=G,
                   dirty_rate=200 * M, working_set=256 * M)
    assert isinstance(run.last, GiveUp)
    assert "the link moves 100 MB/s" in run.last.reason
    assert "raise the bandwidth cap" in run.last.reason


def test_max_time_ends_it() -> None:
    policy = parse_knobs("max-time=10s,bandwidth=200M,auto-converge=off", PrecopyPolicy(stall_rounds=99))
    run = simulate(policy, memory=G, link=G, dirty_rate=190 * M, working_set=512 * M)
    assert isinstance(run.last, GiveUp) and run.last.cause is GiveUpCause.MAX_TIME
    assert run.last.reason.startswith("migration of ldg1 did not converge within max-time 10s (")
    assert "raise max-time" in run.last.reason
    assert len(run.decisions) < policy.max_rounds


def test_max_rounds_ends_it() -> None:
    policy = PrecopyPolicy(max_rounds=4, auto_converge=False, stall_rounds=99)
    run = simulate(policy, memory=G, link=G, dirty_rate=G, working_set=512 * M)
    assert len(run.decisions) == 4
    assert isinstance(run.last, GiveUp) and run.last.cause is GiveUpCause.MAX_ROUNDS
    assert run.last.round == 4
    assert run.last.reason.startswith("migration of ldg1 did not converge in 4 rounds (max-rounds): ")
    assert "raise max-rounds" in run.last.reason


def test_switch_over_wins_over_max_rounds_in_the_same_round() -> None:
    pc = Precopy("ldg1", G, PrecopyPolicy(max_rounds=1))
    assert isinstance(pc.feed(report(1, sent=G, seconds=1.0, dirty=10)), SwitchOver)


def test_min_rounds_delays_throttling() -> None:
    pc = Precopy("ldg1", G, PrecopyPolicy(min_rounds=5, stall_rounds=1))
    for rnd in range(1, 5):
        d = pc.feed(report(rnd, sent=G, seconds=2.0, dirty=G // P))
        assert isinstance(d, CopyAgain), rnd
    assert isinstance(pc.feed(report(5, sent=G, seconds=2.0, dirty=G // P)), Throttle)


def test_a_tiny_round_does_not_drag_the_rate_down() -> None:
    pc = Precopy("ldg1", 2 * G)
    pc.feed(report(1, sent=G, seconds=1.0, dirty=512 * M // P))
    assert pc.link_rate == G
    pc.feed(report(2, sent=8 * K, seconds=0.005, dirty=800 * M // P))  # latency, not bandwidth
    assert pc.link_rate is not None and pc.link_rate > 0.99 * G
    pc.feed(report(3, sent=0, seconds=0.003, dirty=800 * M // P))  # moved nothing: not a sample
    assert pc.link_rate is not None and pc.link_rate > 0.99 * G


def test_an_unknown_rate_never_switches_unless_nothing_is_dirty() -> None:
    pc = Precopy("ldg1", G, PrecopyPolicy(auto_converge=False))
    d = pc.feed(report(1, sent=0, seconds=0.0, dirty=10))
    assert d == CopyAgain(round=2, pages=10, expected_s=None) and pc.expected_downtime_s is None
    pc.feed(report(2, dirty=10))
    d = pc.feed(report(3, dirty=10))
    assert isinstance(d, GiveUp)
    assert "the guest keeps 80K dirty and the link has moved nothing yet; remaining 80K cannot be timed" \
        in d.reason
    pc2 = Precopy("ldg1", G)
    assert isinstance(pc2.feed(report(1, dirty=0)), SwitchOver)


def test_without_a_guest_measure_the_dirty_rate_is_a_floor() -> None:
    run = simulate(PrecopyPolicy(auto_converge=False), memory=4 * G, link=400 * M, dirty_rate=G,
                   working_set=2 * G, report_guest_rate=False)
    assert isinstance(run.last, GiveUp)
    assert "the guest dirties at least 400 MB/s and the link moves 400 MB/s" in run.last.reason


# -------------------------------------------------------------------------------------- legacy, progress


def test_legacy_guest_suspends_first_and_copies_everything_once() -> None:
    pc = Precopy("ldg1", 2 * G, PrecopyPolicy(bandwidth_cap=G), legacy=True)
    d = pc.start()
    assert d == SwitchOver(round=1, pages=2 * G // P, expected_downtime_s=pytest.approx(2.02), full=True)
    assert pc.progress() == 0
    assert pc.progress(in_round_bytes=G) == 50
    assert pc.progress(in_round_bytes=2 * G) == 99
    assert pc.progress() == 99  # kept
    with pytest.raises(StateError, match=r"^pre-copy of ldg1 has no pre-copy rounds \(legacy guest\): "):
        pc.feed(report(1, sent=2 * G, seconds=2.0))
    pc.complete()
    assert pc.progress() == 100 and pc.finished
    assert Precopy("ldg1", G, legacy=True).start().expected_downtime_s is None  # no cap: unknown


def test_progress_is_weighted_by_bytes_and_reaches_100_only_at_completion() -> None:
    pc = Precopy("ldg1", 3 * G)
    assert pc.progress() == 0
    assert pc.progress(in_round_bytes=G) == 33
    assert pc.progress(in_round_bytes=10 * G) == 99  # clipped to the round, and never 100 before the end
    pc.feed(report(1, sent=G, seconds=1.0, dirty=G // P))  # zero pages skipped: round 1 counts 3G anyway
    assert pc.progress() == 99  # 3G / 4G = 75, but the maximum is kept
    d = pc.feed(report(2, sent=G, seconds=1.0, dirty=10))
    assert isinstance(d, SwitchOver) and pc.progress() == 99
    pc.complete()
    assert pc.progress() == 100


def test_progress_grows_with_each_round() -> None:
    run = simulate(PrecopyPolicy(), memory=2 * G, link=G, dirty_rate=256 * M, working_set=512 * M)
    assert run.progress == [80, 95, 98, 99]  # 2G/(2G+512M), 2.5G/(2.5G+128M), 2.625G/(2.625G+32M), ...


def test_progress_after_giving_up_stays_where_it_was() -> None:
    run = simulate(PrecopyPolicy(auto_converge=False), memory=4 * G, link=400 * M, dirty_rate=G,
                   working_set=2 * G)
    assert run.pc is not None and run.pc.finished
    assert run.pc.progress(in_round_bytes=G) == run.progress[-1] < 100


# ---------------------------------------------------------------------------------------- error paths


def test_lifecycle_errors() -> None:
    pc = Precopy("ldg1", G)
    pc.feed(report(1, sent=G, seconds=1.0, dirty=G // P))
    with pytest.raises(StateError, match=r"^pre-copy of ldg1 has already started \(round 1 reported\)$"):
        pc.start()
    with pytest.raises(StateError, match=r"^pre-copy of ldg1: round 3 reported, expected round 2$"):
        pc.feed(report(3))
    with pytest.raises(StateError, match=r"^pre-copy of ldg1 cannot complete: it is still copying$"):
        pc.complete()
    assert isinstance(pc.feed(report(2, sent=G, seconds=1.0)), SwitchOver)
    with pytest.raises(StateError, match=r"^pre-copy of ldg1 is switching over: round 3 cannot be reported$"):
        pc.feed(report(3))
    pc.complete()
    with pytest.raises(StateError, match=r"^pre-copy of ldg1 cannot complete: it is complete$"):
        pc.complete()


def test_no_rounds_after_giving_up() -> None:
    pc = Precopy("ldg1", G, PrecopyPolicy(max_rounds=1))
    assert isinstance(pc.feed(report(1, sent=G, seconds=10.0, dirty=G // P)), GiveUp)
    with pytest.raises(StateError, match=r"^pre-copy of ldg1 has given up: round 2 cannot be reported$"):
        pc.feed(report(2))


@pytest.mark.parametrize(
    ("rep", "message"),
    [
        (dict(page_size=4 * K), r"page_size is 4096, the migration of ldg1 uses 8192"),
        (dict(dirty_pages_now=G // P + 1), r"dirty_pages_now is 131073, more than the 131072 pages of ldg1"),
    ],
)
def test_report_inconsistent_with_the_migration(rep: dict[str, int], message: str) -> None:
    base = dict(round=1, pages_sent=0, bytes_sent=0, seconds=0.0, dirty_pages_now=0, page_size=P,
                elapsed_total_s=0.0)
    with pytest.raises(OpExecError, match=r"^pre-copy round report 1: " + message):
        Precopy("ldg1", G).feed(RoundReport(**(base | rep)))  # type: ignore[arg-type]


def test_elapsed_time_cannot_go_backwards() -> None:
    pc = Precopy("ldg1", G)
    pc.feed(report(1, sent=G, seconds=1.0, dirty=G // P, elapsed=5.0))
    with pytest.raises(OpExecError, match=r"round report 2: elapsed_total_s is 4.0, earlier than the 5.0"):
        pc.feed(report(2, elapsed=4.0))


@pytest.mark.parametrize(
    ("field_", "value", "rule"),
    [
        ("round", 0, "must be at least 1"),
        ("page_size", 0, "must be at least 1"),
        ("pages_sent", -1, "must be a whole number of at least 0"),
        ("bytes_sent", 1.5, "must be a whole number of at least 0"),
        ("dirty_pages_now", True, "must be a whole number of at least 0"),
        ("seconds", -0.1, "must be a finite number of at least 0"),
        ("elapsed_total_s", float("nan"), "must be a finite number of at least 0"),
        ("guest_dirty_rate_bytes_s", float("inf"), "must be a finite number of at least 0"),
    ],
)
def test_report_validation(field_: str, value: object, rule: str) -> None:
    base: dict[str, object] = dict(round=1, pages_sent=0, bytes_sent=0, seconds=0.0, dirty_pages_now=0,
                                   page_size=P, elapsed_total_s=0.0)
    with pytest.raises(OpExecError, match=rf": {field_} is .*, {rule}$") as info:
        RoundReport(**(base | {field_: value}))  # type: ignore[arg-type]
    assert info.value.code == "precopy-report"


def test_memory_must_be_positive() -> None:
    with pytest.raises(OpExecError, match=r"^pre-copy of ldg1: memory 0 and page size 8192 must be positive"):
        Precopy("ldg1", 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(max_downtime_s=-1.0), "Invalid max-downtime '-1.0': must be a finite number of at least 0"),
        (dict(max_time_s=float("inf")), "Invalid max-time 'inf': must be a finite number"),
        (dict(rate_decay=True), "Invalid rate_decay 'True'"),
        (dict(max_downtime_s=0.02), "Invalid max-downtime '20ms': must be more than the 20 ms a switch-over"),
        (dict(bandwidth_cap=1000), "Invalid bandwidth '1000': a cap must be at least 1M per second, or 0"),
        (dict(max_rounds=0), "Invalid max-rounds '0': must be from 1 to 1000"),
        (dict(min_rounds=0), "Invalid min_rounds '0': must be at least 1"),
        (dict(stall_rounds=0), "Invalid stall_rounds '0': must be at least 1"),
        (dict(throttle_initial=50, throttle_max=40), r"Invalid throttle '50\.\.40': needs 1 <= initial"),
        (dict(throttle_max=100), r"Invalid throttle '20\.\.100'"),
        (dict(throttle_increment=0), "Invalid throttle_increment '0': must be at least 1 percent"),
        (dict(min_shrink=1.0), "Invalid min_shrink/rate_decay"),
    ],
)
def test_policy_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match="^" + message):
        PrecopyPolicy(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- knobs


def test_parse_knobs() -> None:
    p = parse_knobs("max-downtime=300ms,bandwidth=1G,auto-converge=on,max-time=10m")
    assert (p.max_downtime_s, p.bandwidth_cap, p.auto_converge, p.max_time_s) == (0.3, G, True, 600.0)
    p = parse_knobs(["Max-Downtime = 1.5s", "bandwidth=512M/s", "auto-converge=OFF", "max-rounds=5"])
    assert (p.max_downtime_s, p.bandwidth_cap, p.auto_converge, p.max_rounds) == (1.5, 512 * M, False, 5)
    assert parse_knobs("bandwidth=none,max-time=0") == PrecopyPolicy()
    assert parse_knobs("") == PrecopyPolicy()


def test_cli_knobs_override_host_defaults() -> None:
    host = parse_knobs("max-downtime=1s,bandwidth=100M")
    p = parse_knobs("max-downtime=50ms", host)
    assert (p.max_downtime_s, p.bandwidth_cap) == (0.05, 100 * M)


def test_format_knobs_round_trips() -> None:
    assert format_knobs(PrecopyPolicy()) == (
        "max-downtime=300ms,bandwidth=none,auto-converge=on,max-time=none,max-rounds=30")
    text = "max-downtime=1500ms,bandwidth=1536M,auto-converge=off,max-time=1h,max-rounds=7"
    assert format_knobs(parse_knobs(text)) == text


@pytest.mark.parametrize(
    ("text", "seconds", "shown"),
    [("300ms", 0.3, "300ms"), ("10m", 600.0, "10m"), ("1.5s", 1.5, "1500ms"), ("2H", 7200.0, "2h"),
     ("0", 0.0, "0"), ("0.25 s", 0.25, "250ms")],
)
def test_durations(text: str, seconds: float, shown: str) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("speed=1G", "Unknown migration setting 'speed': expected one of max-downtime, bandwidth, "
                     "auto-converge, max-time, max-rounds"),
        ("max-downtime", "Invalid migration setting 'max-downtime': expected max-downtime=value, "
                         "e.g. max-downtime=300ms"),
        ("bandwidth=", "Invalid migration setting 'bandwidth=': expected bandwidth=value, e.g. bandwidth=1G"),
        ("max-time=1m,max-time=2m", "Migration setting 'max-time' is given more than once"),
        ("max-downtime=300", "Invalid max-downtime '300': expected a number with a unit ms, s, m or h "
                             "(e.g. 300ms)"),
        ("max-downtime=0.5ms", "Invalid max-downtime '0.5ms': the resolution is 1ms"),
        ("max-downtime=10ms", "Invalid max-downtime '10ms': must be more than the 20 ms"),
        ("max-time=soon", "Invalid max-time 'soon': expected a number with a unit"),
        ("bandwidth=fast", "Invalid bandwidth 'fast': expected a number with an optional unit K, M or G"),
        ("bandwidth=100K", "Invalid bandwidth '100K': a cap must be at least 1M per second, or 0 for none"),
        ("auto-converge=yes", "Invalid auto-converge 'yes': expected on or off"),
        ("max-rounds=many", "Invalid max-rounds 'many': expected a whole number from 1 to 1000"),
        ("max-rounds=0", "Invalid max-rounds '0': must be from 1 to 1000"),
        ("max-rounds=5000", "Invalid max-rounds '5000': must be from 1 to 1000"),
    ],
)
def test_knob_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match="^" + re.escape(message)) as info:
        parse_knobs(text)
    assert info.value.exit_code == 2
