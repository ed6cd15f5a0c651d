"""The progress bar of `ldm migrate-domain`: folding the NDJSON progress events (pure), rendering the line at
fixed widths (pure), when it shows, and that without a terminal ldm prints exactly what it printed before."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ldoms.cli import main as cli
from ldoms.cli.format.quantities import approx_size, duration
from ldoms.cli.parse import parse_args
from ldoms.cli.progress import (
    MAX_BAR,
    ProgressDisplay,
    ProgressState,
    fold,
    fold_all,
    render,
    should_show,
)
from ldoms.migration.runstate import Outcome
from ldoms.ops.base import lookup
from tests.unit.test_migrate_cli import FAILED, FakeClient

LABEL = "ldg1 → host2"


def ev(**fields: Any) -> dict[str, Any]:
    return {"type": "progress", **fields}


PRECOPY = ev(
    percent=52, phase="precopy", round=3, bytes_sent=600 << 20, remaining_bytes=96 << 20,
    rate_bytes_s=1.2e9, expected_downtime_s=0.12, throttle=20,
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ fold
def test_fold_takes_every_contract_field() -> None:
    s = fold(ProgressState(), PRECOPY)
    assert s == ProgressState(
        percent=52, phase="precopy", round=3, bytes_sent=600 << 20, remaining_bytes=96 << 20,
        rate_bytes_s=1.2e9, expected_downtime_s=0.12, throttle=20,
    )  # fmt: skip


def test_percent_never_goes_back_and_stays_in_range() -> None:
    s = fold_all([ev(percent=40), ev(percent=30), ev(percent=250)])
    assert s.percent == 100
    assert fold_all([ev(percent=40), ev(percent=-5)]).percent == 40


def test_bad_or_missing_fields_keep_the_last_value() -> None:
    s = fold(ProgressState(), PRECOPY)
    bad = ev(percent="60", phase="\x1b[2J", round=True, bytes_sent=-1, remaining_bytes=1.5, throttle=None)
    assert fold(s, bad) == s  # a daemon's odd item never breaks (or paints over) the terminal
    assert fold(s, ev(phase="x" * 17)).phase == "precopy"
    assert fold(s, ev(throttle=150)).throttle == 99
    assert fold(s, {"type": "result", "ok": True}) == s


def test_null_estimates_clear_and_non_finite_ones_are_dropped() -> None:
    s = fold(ProgressState(), PRECOPY)
    assert fold(s, ev(expected_downtime_s=None)).expected_downtime_s is None
    assert fold(s, ev(rate_bytes_s=float("nan"))).rate_bytes_s is None
    assert fold(s, ev(percent=60)).expected_downtime_s == 0.12  # absent: kept


def test_the_bar_appears_only_past_the_checks() -> None:
    assert not fold_all([ev(percent=2, phase="checks")]).visible
    assert fold_all([ev(percent=2, phase="checks"), ev(percent=4, phase="prepare")]).visible
    # The 1.2-style engine sends only percent: 1 and 3 during the checks, 5 once they passed.
    assert not fold_all([ev(percent=1), ev(percent=3)]).visible
    assert fold_all([ev(percent=1), ev(percent=5)]).visible


# ---------------------------------------------------------------------------------------------- render
@pytest.mark.parametrize(
    ("width", "line"),
    [
        (
            126,
            "ldg1 → host2  ████████████████████░░░░░░░░░░░░░░░░░░░░   52%  precopy round 3  96M left  1.1G/s"
            "  downtime ~120ms  throttle 20%",
        ),
        (
            100,
            "████████████████████░░░░░░░░░░░░░░░░░░░░   52%  precopy round 3  96M left  1.1G/s  throttle 20%",
        ),
        (80, "██████████░░░░░░░░░░   52%  precopy round 3  96M left  1.1G/s  throttle 20%"),
        (60, "█████░░░░░   52%  precopy round 3  96M left  throttle 20%"),
        (40, "█████░░░░░   52%  precopy round 3"),
        (30, "█████░░░░░   52%  precopy"),
        (20, "52%  precopy"),
        (10, "52%  preco"),
        (3, "52%"),
        (0, ""),
    ],
)
def test_render_at_fixed_widths(width: int, line: str) -> None:
    assert render(fold(ProgressState(), PRECOPY), width, label=LABEL) == line


def test_the_bar_keeps_its_width_as_figures_come_and_go() -> None:
    early = fold_all([ev(percent=5, phase="precopy", round=1)])
    late = fold(early, PRECOPY)
    for width in (80, 100, 126):
        bars = [render(s, width, label=LABEL).replace(LABEL, "").strip().split()[0] for s in (early, late)]
        assert len(bars[0]) == len(bars[1]), width


def test_render_ascii_and_the_legacy_engine() -> None:
    s = fold(ProgressState(), PRECOPY)
    ascii_line = "[####----]   52%  precopy round 3  96M left  throttle 20%"
    assert render(s, 60, label=LABEL, unicode=False) == ascii_line
    assert render(s, 130, label=LABEL, unicode=False).startswith("ldg1 -> host2  [")
    legacy = fold_all([ev(percent=5), ev(percent=97)])  # no phase, no figures: a bar and the percentage
    assert render(legacy, 60, label=LABEL) == "ldg1 → host2  " + "█" * 9 + "░" + "   97%  migrating"


def test_render_suspended_and_done() -> None:
    s = fold_all([PRECOPY, ev(percent=100, phase="handoff", round=0, remaining_bytes=0, throttle=0,
                              expected_downtime_s=None, rate_bytes_s=0)])  # fmt: skip
    assert render(s, 50) == "█" * 10 + "  100%  handoff  0 left"  # a full bar; no round, no estimates
    assert render(s, 200) == "█" * MAX_BAR + "  100%  handoff  0 left"


@given(
    percent=st.integers(0, 100), width=st.integers(0, 300), rnd=st.integers(0, 10**6),
    remaining=st.integers(0, 2**50), rate=st.floats(0, 1e12), downtime=st.none() | st.floats(0, 1e5),
    throttle=st.integers(0, 99), phase=st.sampled_from(["checks", "prepare", "precopy", "final", ""]),
)  # fmt: skip
def test_render_never_exceeds_the_width(
    percent: int,
    width: int,
    rnd: int,
    remaining: int,
    rate: float,
    downtime: float | None,
    throttle: int,
    phase: str,
) -> None:
    s = ProgressState(percent=percent, phase=phase, round=rnd, remaining_bytes=remaining, rate_bytes_s=rate,
                      expected_downtime_s=downtime, throttle=throttle)  # fmt: skip
    line = render(s, width, label=LABEL)
    assert len(line) <= width
    if width >= 4:
        assert f"{percent}%" in line  # the percentage is the last thing to go


def test_quantities() -> None:
    sizes = (0, 512, 1024, 1536, 96 << 20, int(1.2e9), 118 * 1024**2 + 5, 1 << 40)
    assert [approx_size(n) for n in sizes] == [
        "0", "512", "1K", "1.5K", "96M", "1.1G", "118M", "1T",
    ]  # fmt: skip
    assert approx_size(-1) == "?" and approx_size(float("inf")) == "?"
    assert [duration(s) for s in (0, 0.1204, 0.9996, 1.234, 12.34, 125.6, 3725)] == [
        "0ms", "120ms", "1.00s", "1.23s", "12.3s", "2m 06s", "1h 02m",
    ]  # fmt: skip
    assert duration(-1) == "?" and duration(float("nan")) == "?"


# ------------------------------------------------------------------------------------ without a terminal
class Streams(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_should_show_only_on_a_capable_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    assert should_show(Streams(True)) and not should_show(Streams(False))
    assert not should_show(object())  # no isatty at all
    monkeypatch.setenv("TERM", "dumb")
    assert not should_show(Streams(True))


class StreamingClient(FakeClient):
    def migrate(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.bodies.append(body)
        yield ev(percent=2, phase="checks")
        yield PRECOPY
        yield ev(percent=98, phase="final", round=4, remaining_bytes=0)
        yield self.outcome.to_json()


def run(client: FakeClient, *words: str, tty: bool) -> tuple[int, str, str]:
    op = lookup("migrate-domain")
    out, err = Streams(tty), Streams(tty)
    rc = cli.run_migrate(client, op, parse_args(op.spec, list(words)), out, err)  # type: ignore[arg-type]
    return rc, out.getvalue(), err.getvalue()


def test_no_terminal_no_bar_and_the_same_output() -> None:
    assert run(StreamingClient(Outcome(ok=True)), "-c", "ldg1", "h2", tty=False) == (0, "", "")
    rc, out, err = run(StreamingClient(FAILED), "-c", "ldg1", "h2", tty=False)
    assert (rc, out) == (1, "")
    assert err.splitlines() == list(FAILED.lines)


def test_a_dry_run_never_shows_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    shown: list[bool] = []
    real = cli.ProgressDisplay

    def spy(stream: Any, *, label: str = "", enabled: bool = True) -> ProgressDisplay:
        shown.append(enabled)
        return real(stream, label=label, enabled=enabled)

    monkeypatch.setattr(cli, "ProgressDisplay", spy)
    run(StreamingClient(Outcome(ok=True, dry_run=True)), "-n", "-c", "ldg1", "h2", tty=True)
    run(StreamingClient(Outcome(ok=True)), "-c", "ldg1", "h2:ldg9", tty=True)
    assert shown == [False, True]


def test_a_terminal_that_goes_away_switches_the_bar_off() -> None:
    class Gone(Streams):
        def write(self, text: str) -> int:
            raise OSError(5, "Input/output error")

    d = ProgressDisplay(Gone(True), label=LABEL, enabled=True)
    d.update(PRECOPY)  # rich writes, the write fails: no exception, the bar is off
    assert not d.enabled
    d.update(ev(percent=60))
    assert d.state.percent == 60  # still folding
    d.close()


def test_display_folds_even_when_disabled() -> None:
    with ProgressDisplay(Streams(False), enabled=False) as d:
        d.update(PRECOPY)
    assert d.state.percent == 52


def test_the_knobs_travel_with_the_request() -> None:
    op = lookup("migrate-domain")
    if "max-downtime" not in op.spec.props:
        pytest.skip("this tree's migrate-domain takes no live-migration knobs")
    c = StreamingClient(Outcome(ok=True))
    assert run(c, "-c", "max-downtime=100ms", "bandwidth=500M", "ldg1", "h2", tty=False) == (0, "", "")
    assert c.bodies[0]["props"] == [["max-downtime", "100ms"], ["bandwidth", "500M"]]
