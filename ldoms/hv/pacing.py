"""When the guest runs its next step: pacing, throttling and a measured dirty rate.  Pure: the caller passes
the clock readings.

Pacing.  A workload asks for an *interval* between step starts.  The next step is scheduled from when this
one was *due*, not when it ran, so timer slack (the selector sleeps in whole milliseconds) does not lower
the rate; a guest that falls more than `max_lag` behind (a loaded host, a long control request) gives up
the lost time rather than running a burst of steps.

Throttle (auto-converge).  At p % the guest sleeps p % of the time: every interval is stretched by
1 / (1 - p/100), so the step rate, and the dirty rate with it, falls to (100 - p) % — and at least
work * p / (100 - p) of sleep follows each step even when the guest is behind, so a busy guest slows too.
"""

from __future__ import annotations

from collections import deque


class Pacer:
    def __init__(self, *, max_lag: float = 0.1) -> None:
        self.max_lag = max_lag
        self.throttle = 0  # percent of the time the guest sleeps, 0..99
        self.next: float | None = None  # when the next step is due; None: no step until restarted

    def start(self, now: float) -> None:
        """Run a step now (at start, and on resume: the time spent suspended is not caught up)."""
        self.next = now

    def stop(self) -> None:
        self.next = None

    def set_throttle(self, percent: int) -> None:
        if not 0 <= percent <= 99:
            raise ValueError(f"throttle {percent} % is out of range 0..99")
        self.throttle = percent

    def timeout(self, now: float) -> float | None:
        """How long the loop may wait for requests before the next step (None: indefinitely)."""
        return None if self.next is None else max(0.0, self.next - now)

    def due(self, now: float) -> bool:
        return self.next is not None and now >= self.next

    def after_step(self, started: float, ended: float, interval: float | None) -> None:
        """Schedule the step after one that ran from `started` to `ended` and asked for `interval`."""
        if interval is None:
            self.next = None
            return
        share = self.throttle / 100
        due = self.next if self.next is not None else started
        nxt = due + max(interval, ended - started) / (1 - share)
        if share:  # a throttled guest sleeps its share after every step, even when behind
            nxt = max(nxt, ended + (ended - started) * share / (1 - share))
        self.next = max(nxt, ended - self.max_lag)


class RateMeter:
    """Bytes per second over the last `window` seconds, from (time, cumulative bytes) samples."""

    def __init__(self, *, window: float = 1.0, resolution: float = 0.05) -> None:
        self.window = window
        self.resolution = resolution
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, total: int) -> None:
        if self._samples and now - self._samples[-1][0] < self.resolution:
            self._samples[-1] = (self._samples[-1][0], total)  # keep the latest total, few samples
            return
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        if len(self._samples) < 2 or now - self._samples[-1][0] > self.window:
            return 0.0  # nothing written lately (suspended, idle)
        t0, b0 = self._samples[0]
        _, b1 = self._samples[-1]
        span = now - t0
        return (b1 - b0) / span if span > 0 else 0.0

    def reset(self) -> None:
        self._samples.clear()
