"""The live progress bar of `ldm migrate-domain`, on stderr, only when stderr is a terminal.

Theory of operation.  While `POST /v1/migrate` runs, ldmd streams progress events (`{"type": "progress",
"percent", "phase", "round", "bytes_sent", "remaining_bytes", "rate_bytes_s", "expected_downtime_s",
"throttle"}`).  Two pure functions make the bar: `fold(state, event)` folds an event into a `ProgressState`
(a field an event lacks or gets wrong keeps its last value; the percentage never goes back), and
`render(state, width)` lays the state out on one line of at most `width` cells, dropping the least useful
fields first when the terminal is narrow.  `ProgressDisplay` is the only part that writes: it shows
`render`'s line with rich's `Live`, refreshed once per event (ldmd sends at most ~10 a second, so there is no
refresh thread), and erases it when the migration ends (transient), so what stays on the terminal is what
ldm prints without a terminal: nothing on success, the reasons and the LDoms trailer on failure.

The bar stays hidden during the checks (a refused migration prints exactly its reasons, and a dry run never
shows a bar): it appears with the first event past the `checks` phase.  The 1.2-style engine sends only
`percent` (1 and 3 during the checks, 5 once they passed), so an event without a phase counts as past the
checks from 5 % on.  A terminal that goes away (ldm ignores SIGHUP) only switches the bar off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TextIO

from ldoms.cli.format.quantities import approx_size, duration

PHASES = ("checks", "prepare", "precopy", "suspended", "final", "handoff")
LEGACY_VISIBLE_PERCENT = 5  # the 1.2-style engine's first percentage after the checks
MIN_BAR = 10  # narrower than this, the bar says nothing: drop it
MAX_BAR = 40  # wider, it only takes room from the figures
FIGURES_ROOM = 60  # the bar takes what a terminal has beyond this (between MIN_BAR and MAX_BAR)
SEP = "  "
MAX_PHASE_LEN = 16


@dataclass(frozen=True, slots=True)
class ProgressState:
    percent: int = 0
    phase: str = ""  # "" until an event names one (the 1.2-style engine sends only percent)
    round: int = 0
    bytes_sent: int = 0
    remaining_bytes: int | None = None
    rate_bytes_s: float | None = None
    expected_downtime_s: float | None = None
    throttle: int = 0

    @property
    def visible(self) -> bool:
        """Past the checks: a refused migration or a dry run shows no bar."""
        if self.phase:
            return self.phase != "checks"
        return self.percent >= LEGACY_VISIBLE_PERCENT


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) and v >= 0 else None


def fold(state: ProgressState, event: Mapping[str, Any]) -> ProgressState:
    """The state after one event (anything that is not a progress event changes nothing)."""
    if event.get("type") != "progress":
        return state
    changes: dict[str, Any] = {}
    percent = _int(event.get("percent"))
    if percent is not None:
        changes["percent"] = max(state.percent, min(percent, 100))
    phase = event.get("phase")
    if isinstance(phase, str) and 0 < len(phase) <= MAX_PHASE_LEN and phase.isprintable():
        changes["phase"] = phase
    for key in ("round", "bytes_sent", "throttle"):
        value = _int(event.get(key))
        if value is not None:
            changes[key] = value
    if "throttle" in changes:
        changes["throttle"] = min(changes["throttle"], 99)
    remaining = _int(event.get("remaining_bytes"))
    if remaining is not None:
        changes["remaining_bytes"] = remaining
    for key in ("rate_bytes_s", "expected_downtime_s"):
        if key in event:  # an explicit null clears the estimate (no figure yet)
            changes[key] = _num(event[key])
    return replace(state, **changes)


def fold_all(events: Iterable[Mapping[str, Any]], state: ProgressState | None = None) -> ProgressState:
    for event in events:
        state = fold(state or ProgressState(), event)
    return state or ProgressState()


def _bar(percent: int, width: int, unicode: bool) -> str:
    if not unicode:
        inner = width - 2
        done = percent * inner // 100
        return "[" + "#" * done + "-" * (inner - done) + "]"
    done = percent * width // 100
    return "█" * done + "░" * (width - done)


def render(state: ProgressState, width: int, *, label: str = "", unicode: bool = True) -> str:
    """One line of at most `width` cells: label, bar, percentage, phase and round, remaining bytes, rate,
    expected downtime, throttle.  Narrow terminals lose the least useful fields first (label, downtime,
    rate, throttle, remaining, round), then the bar; the percentage and the phase stay."""
    if width <= 0:
        return ""
    pct = f"{state.percent:>3}%"
    phase = state.phase or "migrating"
    # (text, keep-priority: higher stays longer); shown in list order.
    optional: list[tuple[str, int]] = []
    if label:
        optional.append((label if unicode else label.replace("→", "->"), 0))
    tail: list[tuple[str, int]] = []
    rnd = f"round {state.round}" if state.round > 0 else ""
    if rnd:
        tail.append((rnd, 5))
    if state.remaining_bytes is not None:
        tail.append((f"{approx_size(state.remaining_bytes)} left", 4))
    if state.rate_bytes_s:
        tail.append((f"{approx_size(state.rate_bytes_s)}/s", 2))
    if state.expected_downtime_s is not None:
        tail.append((f"downtime ~{duration(state.expected_downtime_s)}", 1))
    if state.throttle > 0:
        tail.append((f"throttle {state.throttle}%", 3))

    def line(bar_width: int, keep: set[str]) -> list[str]:
        parts = [t for t, _ in optional if t in keep]
        if bar_width:
            parts.append(_bar(state.percent, bar_width, unicode))
        parts += [pct, f"{phase} {rnd}" if rnd in keep else phase]
        parts += [t for t, _ in tail if t in keep and t != rnd]
        return parts

    # The bar's width depends on the terminal's alone, so it does not jump as figures come and go; the
    # figures that do not fit are dropped, least useful first, and only then does the bar shrink or go.
    bar = max(MIN_BAR, min(MAX_BAR, width - FIGURES_ROOM))
    keep = {t for t, _ in optional + tail}
    for text, _ in sorted(optional + tail, key=lambda tp: tp[1]):
        if len(SEP.join(line(bar, keep))) <= width:
            return SEP.join(line(bar, keep))
        keep.discard(text)
    room = width - len(SEP.join(line(0, keep))) - len(SEP)
    if room >= MIN_BAR:
        return SEP.join(line(min(room, bar), keep))
    return SEP.join(line(0, keep)).lstrip()[:width].rstrip()


# ------------------------------------------------------------------------------------------- on a terminal
def should_show(stream: Any) -> bool:
    """A bar only on a terminal that can move its cursor."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


class _Line:
    """A rich renderable that lays the line out at the terminal's current width."""

    def __init__(self, display: ProgressDisplay) -> None:
        self.display = display

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.text import Text

        d = self.display
        text = render(d.state, options.max_width, label=d.label, unicode=d.unicode)
        yield Text(text, no_wrap=True, overflow="crop")


class ProgressDisplay:
    """Folds every event; on an enabled terminal, shows the bar from the first visible state until `close`."""

    def __init__(self, stream: TextIO, *, label: str = "", enabled: bool = True) -> None:
        self.stream = stream
        self.label = label
        self.enabled = enabled
        self.state = ProgressState()
        self.unicode = "utf" in (getattr(stream, "encoding", None) or "").lower()
        self._live: Any = None

    def update(self, event: Mapping[str, Any]) -> None:
        self.state = fold(self.state, event)
        if not self.enabled or not self.state.visible:
            return
        try:
            if self._live is None:
                from rich.console import Console
                from rich.live import Live

                console = Console(file=self.stream, highlight=False, emoji=False, markup=False)
                self._live = Live(
                    _Line(self), console=console, transient=True, auto_refresh=False,
                    redirect_stdout=False, redirect_stderr=False,
                )  # fmt: skip
                self._live.start()
            self._live.refresh()
        except OSError:  # the terminal is gone (SIGHUP is ignored): the migration goes on without a bar
            self.enabled = False
            self._live = None

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            try:
                live.stop()  # transient: erases the bar and shows the cursor again
            except OSError:
                pass

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
