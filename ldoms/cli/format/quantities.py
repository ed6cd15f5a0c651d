"""Approximate quantities for people: sizes that are not exact multiples (bytes sent, a rate), and durations.

LDoms prints a configured size exactly (`format_size`: `5632M`); a measured size rarely divides, so it is
shown with three significant figures at most in the largest unit it reaches: `512`, `96M`, `1.5G`, `118M`,
and a whole multiple keeps LDoms' form (`1G`, `64M`).  Durations: `0ms`..`999ms`, `1.23s`, `12.3s`,
`2m 05s`, `1h 02m`.
"""

from __future__ import annotations

import math

_UNITS = (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024))


def approx_size(nbytes: float) -> str:
    """A byte count for people: below 1K the bare number (SPEC 5.1), else at most three figures."""
    if not math.isfinite(nbytes) or nbytes < 0:
        return "?"
    n = round(nbytes)
    if n < 1024:
        return str(n)
    for letter, unit in _UNITS:
        if n >= unit:
            if n % unit == 0:
                return f"{n // unit}{letter}"
            value = n / unit
            return f"{value:.1f}{letter}" if value < 9.95 else f"{round(value)}{letter}"
    return str(n)  # pragma: no cover  (n >= 1024 always matches K)


def duration(seconds: float) -> str:
    """A duration for people: milliseconds under a second, then seconds, minutes, hours."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 0.9995:
        return f"{round(seconds * 1000)}ms"
    if seconds < 9.995:
        return f"{seconds:.2f}s"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
