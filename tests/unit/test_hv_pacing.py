"""Pacer and RateMeter with a simulated clock."""

from __future__ import annotations

import pytest

from ldoms.hv.pacing import Pacer, RateMeter


def simulate(
    pacer: Pacer, *, interval: float, work: float, seconds: float, wake_slack: float = 0.0
) -> tuple[int, float]:
    """Run the guest loop on a fake clock; return (steps, time spent sleeping)."""
    now = 0.0
    pacer.start(now)
    steps = 0
    slept = 0.0
    while now < seconds:
        timeout = pacer.timeout(now)
        assert timeout is not None
        if timeout > 0:
            slept += timeout + wake_slack
            now += timeout + wake_slack  # the selector oversleeps a little
        if pacer.due(now):
            started = now
            now += work
            pacer.after_step(started, now, interval)
            steps += 1
    return steps, slept


def test_rate_is_kept_despite_timer_slack() -> None:
    steps, _ = simulate(Pacer(), interval=0.001, work=0.0001, seconds=1.0, wake_slack=0.0003)
    assert 990 <= steps <= 1001


@pytest.mark.parametrize("percent", [0, 25, 50, 90, 99])
def test_throttle_cuts_the_step_rate_to_the_remaining_share(percent: int) -> None:
    pacer = Pacer()
    pacer.set_throttle(percent)
    steps, _ = simulate(pacer, interval=0.001, work=0.0001, seconds=2.0)
    assert steps == pytest.approx(2000 * (100 - percent) / 100, rel=0.02, abs=2)


def test_throttle_makes_a_busy_guest_sleep_its_share() -> None:
    # A guest whose steps take longer than it asks for (always behind) still sleeps p % of the time.
    pacer = Pacer()
    pacer.set_throttle(75)
    steps, slept = simulate(pacer, interval=0.0, work=0.001, seconds=4.0)
    assert slept / 4.0 == pytest.approx(0.75, abs=0.01)
    assert steps == pytest.approx(1000, rel=0.02)


def test_a_guest_far_behind_does_not_burst() -> None:
    pacer = Pacer(max_lag=0.1)
    pacer.start(0.0)
    pacer.after_step(0.0, 0.0001, 0.001)
    # A long control request held the loop until t=5: the step due at 0.001 runs late.
    pacer.after_step(5.0, 5.0001, 0.001)
    assert pacer.next == pytest.approx(4.9001)  # 100 steps to catch up at most, not 5000


def test_idle_and_stop_wait_for_requests() -> None:
    pacer = Pacer()
    assert pacer.timeout(0.0) is None and not pacer.due(0.0)
    pacer.start(1.0)
    assert pacer.timeout(0.5) == 0.5 and pacer.due(1.0)
    pacer.after_step(1.0, 1.001, None)
    assert pacer.timeout(2.0) is None
    pacer.start(3.0)
    pacer.stop()
    assert not pacer.due(4.0)


@pytest.mark.parametrize("percent", [-1, 100])
def test_throttle_out_of_range(percent: int) -> None:
    with pytest.raises(ValueError, match=f"throttle {percent} % is out of range 0..99"):
        Pacer().set_throttle(percent)


def test_rate_meter() -> None:
    meter = RateMeter(window=1.0, resolution=0.05)
    assert meter.rate(0.0) == 0.0
    for i in range(41):  # 1000 bytes every 50 ms: 20 kB/s
        meter.sample(i * 0.05, i * 1000)
    assert meter.rate(2.0) == pytest.approx(20000, rel=0.1)
    assert meter.rate(4.0) == 0.0  # nothing new for longer than the window
    meter.sample(2.01, 41000)  # within the resolution: replaces the last total
    assert meter.rate(2.01) == pytest.approx(20000, rel=0.1)
    meter.reset()
    assert meter.rate(2.01) == 0.0
