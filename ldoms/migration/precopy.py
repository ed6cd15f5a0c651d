"""The live-migration pre-copy policy: after each round, copy again, throttle the guest, switch over, or
give up, and say why.  Pure: no clocks, no I/O; the engine passes its measurements in.

Theory of operation
-------------------
Round 1 copies the whole memory while the guest runs; each later round copies the pages the guest dirtied
during the previous one (DESIGN §1: write-then-mark, snapshot-and-clear).  After every round the engine
feeds a `RoundReport` to `Precopy.feed`, which answers with one `Decision`:

* `SwitchOver` as soon as the expected downtime fits the budget:
  ``remaining dirty bytes / link rate + resume overhead <= max_downtime_s``.  The engine suspends the
  guest and runs the final round.  This is checked first, so it is allowed at any throttle and in the
  very round that hits max-rounds or max-time.  One exception: when one more round is expected to cut
  the pause by a quarter or more (the dirty set still shrinks, no throttle, rounds and time to spare), it
  is copied first: the budget is a ceiling, and a guest that can pause for less should
  (`_round_shortens_the_pause`).
* `GiveUp` when max-rounds or max-time is reached, or when the dirty set has stopped shrinking for
  `stall_rounds` rounds and nothing is left to try (auto-converge is off or already at its maximum).
* `Throttle` when the dirty set stops shrinking and auto-converge is on: first `throttle_initial` %
  after `stall_rounds` stalled rounds, then `throttle_increment` more after every further stalled round, up
  to `throttle_max`.  The throttle only ever rises; the engine lifts it when the guest resumes anywhere.
* `CopyAgain` otherwise.

"Stopped shrinking" means a round did not bring the dirty set at least `min_shrink` below the smallest
set seen so far.  Neither throttling nor giving up for lack of progress happens before `min_rounds` rounds
have measured the link.  So the loop always ends: by `max_rounds` at the latest.

The link rate is a duration-weighted moving average: decayed sums of bytes and of seconds, rate = their
ratio.  A tiny round (a few pages, mostly latency) adds almost nothing to either sum, so it cannot drag the
estimate down the way averaging per-round rates would; a round that moved nothing measures only latency
and is not a sample.  The estimate is capped by `bandwidth_cap`.  The remaining bytes are the dirty pages
at full page size: with compression or zero pages the wire carries less, so the estimate errs long (safe).

Progress (`Precopy.progress`) is weighted by memory bytes: round 1 counts as the whole memory (zero pages
the data plane skipped included), later rounds as the larger of the dirty set they started from and the
pages they sent; the total is what was done plus the round in flight.  It is kept as a running maximum, so
it never decreases, and reads 100 only after `complete()`.

A legacy guest (1.2 rules) gets no pre-copy: `start()` answers `SwitchOver(full=True)` at once, so the
engine suspends first and runs one full round, on the same path as a live migration's final round.

Knobs (`parse_knobs`, `format_knobs`) are the strings the CLI and the host defaults use:
``max-downtime=300ms,bandwidth=1G,auto-converge=on,max-time=10m,max-rounds=30``.  Sizes and rates use
ldm's binary units: 1G is 2**30 bytes, and the "MB/s" of the messages is 2**20 bytes per second.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ldoms.errors import OpExecError, StateError
from ldoms.migration.precopy_knobs import (
    KNOBS,
    PrecopyPolicy,
    _fmt_num,
    _fmt_seconds,
    format_duration,
    format_knobs,
    parse_duration,
    parse_knobs,
)
from ldoms.units import PAGE_SIZE, K, M

__all__ = [
    "KNOBS",
    "CopyAgain",
    "Decision",
    "GiveUp",
    "GiveUpCause",
    "Precopy",
    "PrecopyPolicy",
    "RoundReport",
    "SwitchOver",
    "Throttle",
    "format_duration",
    "format_knobs",
    "parse_duration",
    "parse_knobs",
]

# ------------------------------------------------------------------------------------ reports, decisions


def _bad_report(round_: object, field: str, value: object, rule: str) -> OpExecError:
    return OpExecError(f"pre-copy round report {round_}: {field} is {value!r}, {rule}", code="precopy-report")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundReport:
    """What one finished round measured.  `dirty_pages_now`: pages dirtied since this round's snapshot (the
    next round's work); `elapsed_total_s`: since the transfer began; `guest_dirty_rate_bytes_s`: the
    guest's own measure, if it gives one (else the policy estimates it from the dirty set)."""

    round: int
    pages_sent: int
    bytes_sent: int
    seconds: float
    dirty_pages_now: int
    page_size: int
    elapsed_total_s: float
    guest_dirty_rate_bytes_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("round", "pages_sent", "bytes_sent", "dirty_pages_now", "page_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _bad_report(self.round, name, value, "must be a whole number of at least 0")
        if self.round < 1 or self.page_size < 1:
            name = "round" if self.round < 1 else "page_size"
            raise _bad_report(self.round, name, getattr(self, name), "must be at least 1")
        for name in ("seconds", "elapsed_total_s", "guest_dirty_rate_bytes_s"):
            value = getattr(self, name)
            if value is None and name == "guest_dirty_rate_bytes_s":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise _bad_report(self.round, name, value, "must be a finite number of at least 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyAgain:
    """Run pre-copy round `round` over about `pages` pages (`expected_s` at the estimated link rate)."""

    round: int
    pages: int
    expected_s: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Throttle:
    """Throttle the guest to `percent` (of its CPU time taken away), then run round `round` as CopyAgain."""

    percent: int
    round: int
    pages: int
    expected_s: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SwitchOver:
    """Suspend the guest and run the final round `round` (about `pages` pages); the guest should be down for
    `expected_downtime_s` (None: no rate known yet).  `full`: the final round copies the whole memory (a
    legacy guest without pre-copy)."""

    round: int
    pages: int
    expected_downtime_s: float | None
    full: bool = False


class GiveUpCause(enum.StrEnum):
    NOT_CONVERGING = "not-converging"
    MAX_ROUNDS = "max-rounds"
    MAX_TIME = "max-time"


@dataclass(frozen=True, slots=True, kw_only=True)
class GiveUp:
    """Stop: resume the source and abort.  `reason` is a sentence for the operator, numbers included."""

    round: int
    cause: GiveUpCause
    reason: str


Decision = CopyAgain | Throttle | SwitchOver | GiveUp


# ----------------------------------------------------------------------------------------------- policy


class _State(enum.Enum):  # values read after "pre-copy of ldg1 ..."
    COPYING = "is still copying"
    SWITCHING = "is switching over"
    DONE = "is complete"
    GAVE_UP = "has given up"


PAUSE_GAIN = 0.75  # a round more is worth it when it is expected to leave at most this share of the pause


class Precopy:
    """The pre-copy loop of one migration: `start()`, then `feed(report)` after each round until a
    SwitchOver (then `complete()` once the final round landed and the target resumed) or a GiveUp."""

    def __init__(
        self,
        domain: str,
        memory_bytes: int,
        policy: PrecopyPolicy | None = None,
        *,
        legacy: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> None:
        if memory_bytes < 1 or page_size < 1:
            raise OpExecError(
                f"pre-copy of {domain}: memory {memory_bytes} and page size {page_size} must be positive",
                code="precopy-report",
            )
        self.domain = domain
        self.policy = policy if policy is not None else PrecopyPolicy()
        self.legacy = legacy
        self.page_size = page_size
        self.memory_pages = -(-memory_bytes // page_size)
        self._round = 0  # the last round reported
        self._elapsed = 0.0
        self._sum_bytes = 0.0  # decayed, see the module docstring
        self._sum_seconds = 0.0
        self._best_dirty: int | None = None
        self._stalled = 0
        self._throttle = 0
        self._done_bytes = 0  # memory bytes covered by finished rounds
        self._planned_bytes = memory_bytes  # memory bytes the round in flight covers
        self._progress = 0
        self._expected_downtime: float | None = None
        cap = self.policy.bandwidth_cap
        if legacy:
            self._state = _State.SWITCHING
            self._expected_downtime = memory_bytes / cap + self.policy.resume_overhead_s if cap else None
            self._last: Decision = SwitchOver(
                round=1, pages=self.memory_pages, expected_downtime_s=self._expected_downtime, full=True
            )
        else:
            self._state = _State.COPYING
            self._last = CopyAgain(
                round=1, pages=self.memory_pages, expected_s=memory_bytes / cap if cap else None
            )

    # ---- queries

    @property
    def link_rate(self) -> float | None:
        """Estimated bytes per second on the wire, capped by the policy; None before any data moved."""
        rate = self._measured_rate()
        cap = self.policy.bandwidth_cap
        return min(rate, cap) if cap and rate is not None else rate

    def _measured_rate(self) -> float | None:
        return self._sum_bytes / self._sum_seconds if self._sum_seconds > 0 else None

    @property
    def throttle_percent(self) -> int:
        return self._throttle

    @property
    def expected_downtime_s(self) -> float | None:
        return self._expected_downtime

    @property
    def last_decision(self) -> Decision:
        return self._last

    @property
    def finished(self) -> bool:
        return self._state in (_State.DONE, _State.GAVE_UP)

    def start(self) -> Decision:
        """The first decision: round 1 over the whole memory (or, legacy, suspend and copy it all)."""
        if self._round:
            raise StateError(f"pre-copy of {self.domain} has already started (round {self._round} reported)")
        return self._last

    def progress(self, in_round_bytes: int = 0) -> int:
        """Percent done, 0..100, never decreasing.  `in_round_bytes`: memory bytes the round in flight has
        covered so far, if the engine knows (clipped to the round's planned size)."""
        if self._state is _State.DONE:
            return 100
        if self._state is _State.COPYING or self._state is _State.SWITCHING:
            partial = min(max(in_round_bytes, 0), self._planned_bytes)
            total = self._done_bytes + self._planned_bytes
            if total > 0:
                pct = min(99, (100 * (self._done_bytes + partial)) // total)
                self._progress = max(self._progress, pct)
        return self._progress

    # ---- transitions

    def complete(self) -> None:
        """The final round landed and the target resumed: progress is 100."""
        if self._state is not _State.SWITCHING:
            raise StateError(f"pre-copy of {self.domain} cannot complete: it {self._state.value}")
        self._state = _State.DONE

    def feed(self, report: RoundReport) -> Decision:
        """Take the measurements of the round just finished; answer what to do next."""
        self._check(report)
        p, ps = self.policy, report.page_size
        self._round = report.round
        self._elapsed = report.elapsed_total_s
        if report.bytes_sent > 0 and report.seconds > 0:
            self._sum_bytes = self._sum_bytes * p.rate_decay + report.bytes_sent
            self._sum_seconds = self._sum_seconds * p.rate_decay + report.seconds
        self._done_bytes += max(self._planned_bytes, report.pages_sent * ps)
        remaining = report.dirty_pages_now * ps
        self._planned_bytes = remaining
        rate = self.link_rate
        downtime = (
            p.resume_overhead_s + remaining / rate
            if rate
            else (p.resume_overhead_s if remaining == 0 else None)
        )
        self._expected_downtime = downtime
        nxt = report.round + 1
        expected_s = remaining / rate if rate else None
        self._note_progress(report.dirty_pages_now)

        decision: Decision
        if (
            downtime is not None
            and downtime <= p.max_downtime_s
            and self._round_shortens_the_pause(report, downtime)
        ):
            decision = CopyAgain(round=nxt, pages=report.dirty_pages_now, expected_s=expected_s)
        elif downtime is not None and downtime <= p.max_downtime_s:
            decision = SwitchOver(round=nxt, pages=report.dirty_pages_now, expected_downtime_s=downtime)
        elif report.round >= p.max_rounds:
            decision = self._give_up(report, GiveUpCause.MAX_ROUNDS)
        elif p.max_time_s and report.elapsed_total_s >= p.max_time_s:
            decision = self._give_up(report, GiveUpCause.MAX_TIME)
        elif report.round < p.min_rounds or not self._stalled:
            decision = CopyAgain(round=nxt, pages=report.dirty_pages_now, expected_s=expected_s)
        elif p.auto_converge and self._throttle < p.throttle_max:
            # the first step waits for stall_rounds; once throttled, one more stalled round says "not enough"
            if self._throttle == 0 and self._stalled < p.stall_rounds:
                decision = CopyAgain(round=nxt, pages=report.dirty_pages_now, expected_s=expected_s)
            else:
                step = p.throttle_initial if self._throttle == 0 else self._throttle + p.throttle_increment
                self._throttle = min(step, p.throttle_max)
                self._stalled = 0
                decision = Throttle(
                    percent=self._throttle, round=nxt, pages=report.dirty_pages_now, expected_s=expected_s
                )
        elif self._stalled >= p.stall_rounds:
            decision = self._give_up(report, GiveUpCause.NOT_CONVERGING)
        else:
            decision = CopyAgain(round=nxt, pages=report.dirty_pages_now, expected_s=expected_s)

        if isinstance(decision, SwitchOver):
            self._state = _State.SWITCHING
        elif isinstance(decision, GiveUp):
            self._state = _State.GAVE_UP
        self._last = decision
        self.progress()
        return decision

    def _round_shortens_the_pause(self, report: RoundReport, downtime: float) -> bool:
        """Whether one more round is expected to cut a pause that already fits the budget by a quarter
        or more (then the guest runs a little longer and pauses for less).  The round would take
        remaining / rate; meanwhile the guest dirties pages at the rate the last round saw (the pages it
        dirtied during that round, over its length), never more than it dirtied last time.  Only while
        the dirty set shrinks, unthrottled, with rounds and time to spare, and while the copy part of the
        pause is above the fixed resume overhead: each such round cuts the pause by a quarter, so only a
        few are taken (from the 300 ms default budget down to the 20 ms overhead: at most nine)."""
        p, rate = self.policy, self.link_rate
        remaining = report.dirty_pages_now * report.page_size
        if not rate or remaining == 0 or report.seconds <= 0 or self._stalled or self._throttle:
            return False
        if report.round + 1 >= p.max_rounds or (p.max_time_s and report.elapsed_total_s >= p.max_time_s):
            return False
        copy_s = downtime - p.resume_overhead_s
        if copy_s <= p.resume_overhead_s:
            return False
        next_remaining = min(remaining, remaining / report.seconds * (remaining / rate))
        return p.resume_overhead_s + next_remaining / rate <= downtime * PAUSE_GAIN

    def _check(self, report: RoundReport) -> None:
        if self._state is not _State.COPYING:
            what = "has no pre-copy rounds (legacy guest)" if self.legacy else self._state.value
            raise StateError(f"pre-copy of {self.domain} {what}: round {report.round} cannot be reported")
        if report.round != self._round + 1:
            raise StateError(
                f"pre-copy of {self.domain}: round {report.round} reported, expected round {self._round + 1}"
            )
        if report.page_size != self.page_size:
            raise _bad_report(
                report.round,
                "page_size",
                report.page_size,
                f"the migration of {self.domain} uses {self.page_size}",
            )
        if report.dirty_pages_now > self.memory_pages:
            raise _bad_report(
                report.round,
                "dirty_pages_now",
                report.dirty_pages_now,
                f"more than the {self.memory_pages} pages of {self.domain}",
            )
        if report.elapsed_total_s < self._elapsed:
            raise _bad_report(
                report.round,
                "elapsed_total_s",
                report.elapsed_total_s,
                f"earlier than the {self._elapsed} of the round before",
            )

    def _note_progress(self, dirty: int) -> None:
        best = self._best_dirty
        if best is None or dirty <= best * (1 - self.policy.min_shrink) or dirty == 0:
            self._stalled = 0
        else:
            self._stalled += 1
        self._best_dirty = dirty if best is None else min(best, dirty)

    # ---- the reason

    def _give_up(self, report: RoundReport, cause: GiveUpCause) -> GiveUp:
        p = self.policy
        remaining = report.dirty_pages_now * report.page_size
        rate = self.link_rate
        dirty_rate, floor = report.guest_dirty_rate_bytes_s, ""
        if dirty_rate is None and report.seconds > 0:
            # distinct pages dirtied per second: a page written twice counts once, so only a floor
            dirty_rate, floor = remaining / report.seconds, "at least "
        guest = "the guest" if not self._throttle else f"the guest, throttled by {self._throttle}%,"
        dirties = (
            f"{guest} dirties {floor}{_fmt_rate(dirty_rate)}"
            if dirty_rate is not None
            else (f"{guest} keeps {_fmt_bytes(remaining)} dirty")
        )
        link = f"the link moves {_fmt_rate(rate)}" if rate else "the link has moved nothing yet"
        took = f"would take {_fmt_seconds(remaining / rate)}" if rate else "cannot be timed"
        facts = (
            f"{dirties} and {link}; remaining {_fmt_bytes(remaining)} {took}, more than the "
            f"{_fmt_seconds(p.max_downtime_s)} downtime budget"
        )
        remedies = ["set max-downtime higher"]
        if cause is GiveUpCause.MAX_ROUNDS:
            remedies.append("raise max-rounds")
        elif cause is GiveUpCause.MAX_TIME:
            remedies.append("raise max-time")
        if not p.auto_converge:
            remedies.append("enable auto-converge")
        measured = self._measured_rate()
        if p.bandwidth_cap and measured is not None and measured >= 0.95 * p.bandwidth_cap:
            remedies.append("raise the bandwidth cap")
        remedies.append("or cap the guest's writes")
        if cause is GiveUpCause.NOT_CONVERGING:
            head = f"migration of {self.domain} does not converge"
        elif cause is GiveUpCause.MAX_ROUNDS:
            head = f"migration of {self.domain} did not converge in {p.max_rounds} rounds (max-rounds)"
        else:
            head = (
                f"migration of {self.domain} did not converge within max-time "
                f"{format_duration(p.max_time_s)} ({report.elapsed_total_s:.1f} s, "
                f"{report.round} rounds)"
            )
        return GiveUp(round=report.round, cause=cause, reason=f"{head}: {facts} ({', '.join(remedies)})")


def _fmt_rate(bytes_s: float) -> str:
    return f"{_fmt_num(bytes_s / M)} MB/s"


def _fmt_bytes(n: int) -> str:
    for unit, mult in (("G", 1024 * M), ("M", M), ("K", K)):
        if n >= mult:
            return f"{_fmt_num(n / mult)}{unit}"
    return str(n)
