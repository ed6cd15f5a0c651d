"""Pre-copy settings: the knobs an administrator sets on `migrate-domain` or as host defaults, parsed from
and formatted to the strings they type (split from `precopy` to keep each module short)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal

from ldoms.errors import UsageError
from ldoms.units import M, format_size, parse_size

KNOBS = ("max-downtime", "bandwidth", "auto-converge", "max-time", "max-rounds")
_EXAMPLES = {
    "max-downtime": "300ms",
    "bandwidth": "1G",
    "auto-converge": "on",
    "max-time": "10m",
    "max-rounds": "30",
}
MIN_BANDWIDTH_CAP = M  # a smaller cap would stall any guest that writes at all
MAX_ROUNDS_LIMIT = 1000


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecopyPolicy:
    """What the operator allows.  Durations in seconds, rates in bytes per second, 0 meaning "none"."""

    max_downtime_s: float = 0.300
    bandwidth_cap: int = 0
    auto_converge: bool = True
    throttle_initial: int = 20  # percent of the guest's CPU time taken away at the first step
    throttle_increment: int = 10
    throttle_max: int = 99
    max_time_s: float = 0.0
    max_rounds: int = 30
    min_rounds: int = 2  # rounds measured before the rate is trusted to throttle or give up
    stall_rounds: int = 2  # rounds without shrinking before the first throttle step, or giving up
    min_shrink: float = 0.25  # a round must cut the dirty set by this fraction to count as progress
    rate_decay: float = 0.5  # weight an older round keeps in the rate estimate, per round
    resume_overhead_s: float = 0.020  # fixed cost of the switch-over on top of the copy (vCPU state, resume)

    def __post_init__(self) -> None:
        def bad(knob: str, shown: object, rule: str) -> UsageError:
            return UsageError(f"Invalid {knob} '{shown}': {rule}")

        knob = {"max_downtime_s": "max-downtime", "max_time_s": "max-time"}
        for name in ("max_downtime_s", "max_time_s", "min_shrink", "rate_decay", "resume_overhead_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise bad(knob.get(name, name), value, "must be a finite number of at least 0")
        if not 0 <= self.resume_overhead_s < self.max_downtime_s:
            raise bad(
                "max-downtime",
                format_duration(self.max_downtime_s),
                f"must be more than the {_fmt_seconds(self.resume_overhead_s)} a switch-over costs "
                "besides copying (the resume overhead)",
            )
        if self.bandwidth_cap != 0 and self.bandwidth_cap < MIN_BANDWIDTH_CAP:
            raise bad(
                "bandwidth",
                format_size(self.bandwidth_cap),
                f"a cap must be at least {format_size(MIN_BANDWIDTH_CAP)} per second, or 0 for none",
            )
        if not 1 <= self.max_rounds <= MAX_ROUNDS_LIMIT:
            raise bad("max-rounds", self.max_rounds, f"must be from 1 to {MAX_ROUNDS_LIMIT}")
        for name in ("min_rounds", "stall_rounds"):  # above max-rounds is harmless: max-rounds ends it
            if getattr(self, name) < 1:
                raise bad(name, getattr(self, name), "must be at least 1")
        if not 1 <= self.throttle_initial <= self.throttle_max <= 99:
            raise bad(
                "throttle",
                f"{self.throttle_initial}..{self.throttle_max}",
                "needs 1 <= initial <= max <= 99 percent",
            )
        if self.throttle_increment < 1:
            raise bad("throttle_increment", self.throttle_increment, "must be at least 1 percent")
        if self.min_shrink >= 1 or self.rate_decay >= 1:
            raise bad("min_shrink/rate_decay", (self.min_shrink, self.rate_decay), "must be below 1")


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$", re.IGNORECASE)
_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_duration(text: str, *, what: str = "duration") -> float:
    """'300ms' -> 0.3, '10m' -> 600.0, '1.5s' -> 1.5; '0' -> 0.0.  A unit is required (is '300' seconds or
    milliseconds?), and the resolution is one millisecond."""
    if text.strip() == "0":
        return 0.0
    m = _DURATION_RE.match(text)
    if not m:
        raise UsageError(f"Invalid {what} '{text}': expected a number with a unit ms, s, m or h (e.g. 300ms)")
    ms = Decimal(m.group(1)) * _MS[m.group(2).lower()]  # Decimal: '0.1s' is exactly 100 ms
    if ms != ms.to_integral_value():
        raise UsageError(f"Invalid {what} '{text}': the resolution is 1ms")
    return int(ms) / 1000


def format_duration(seconds: float) -> str:
    """0.3 -> '300ms', 600 -> '10m', 1.5 -> '1500ms': the largest unit that divides exactly."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0"
    for unit in ("h", "m", "s"):
        if ms % _MS[unit] == 0:
            return f"{ms // _MS[unit]}{unit}"
    return f"{ms}ms"


_NONE = ("0", "none", "off", "unlimited")


def parse_knobs(items: str | Iterable[str], base: PrecopyPolicy | None = None) -> PrecopyPolicy:
    """`base` (the defaults, or the host's settings) with the `name=value` knobs applied.  `items` is one
    comma-separated string or an iterable of them; a knob may appear once."""
    parts = [items] if isinstance(items, str) else list(items)
    changes: dict[str, object] = {}
    seen: set[str] = set()
    for part in (p.strip() for chunk in parts for p in chunk.split(",")):
        if not part:
            continue
        name, eq, value = (s.strip() for s in part.partition("="))
        name = name.lower()
        if name not in KNOBS:
            raise UsageError(f"Unknown migration setting '{name}': expected one of {', '.join(KNOBS)}")
        if not eq or not value:
            raise UsageError(
                f"Invalid migration setting '{part}': expected {name}=value, e.g. {name}={_EXAMPLES[name]}"
            )
        if name in seen:
            raise UsageError(f"Migration setting '{name}' is given more than once")
        seen.add(name)
        low = value.lower()
        if name == "max-downtime":
            changes["max_downtime_s"] = parse_duration(value, what=name)
        elif name == "max-time":
            changes["max_time_s"] = 0.0 if low in _NONE else parse_duration(value, what=name)
        elif name == "bandwidth":
            rate = low.removesuffix("/s")
            changes["bandwidth_cap"] = 0 if rate in _NONE else parse_size(rate, what=name)
        elif name == "auto-converge":
            if low not in ("on", "off"):
                raise UsageError(f"Invalid auto-converge '{value}': expected on or off")
            changes["auto_converge"] = low == "on"
        else:
            if not value.isdigit():
                raise UsageError(
                    f"Invalid max-rounds '{value}': expected a whole number from 1 to {MAX_ROUNDS_LIMIT}"
                )
            changes["max_rounds"] = int(value)
    return replace(base if base is not None else PrecopyPolicy(), **changes)  # type: ignore[arg-type]


def format_knobs(policy: PrecopyPolicy) -> str:
    """The knobs of `policy`, in the syntax `parse_knobs` reads."""
    return ",".join(
        (
            f"max-downtime={format_duration(policy.max_downtime_s)}",
            f"bandwidth={format_size(policy.bandwidth_cap) if policy.bandwidth_cap else 'none'}",
            f"auto-converge={'on' if policy.auto_converge else 'off'}",
            f"max-time={format_duration(policy.max_time_s) if policy.max_time_s else 'none'}",
            f"max-rounds={policy.max_rounds}",
        )
    )


def _fmt_num(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    text = f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".")


def _fmt_seconds(s: float) -> str:
    return f"{_fmt_num(s * 1000)} ms" if s < 1 else f"{_fmt_num(s)} s"
