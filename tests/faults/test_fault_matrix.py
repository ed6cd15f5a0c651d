"""Fault x phase, end to end: a live migration of a ledger guest between two ldmd hosts in two network
namespaces, one fault injected while a daemon holds at one phase, then recovery, then the one-copy checks
(see tests/faults/matrix.py).  The default run takes one cell per fault, spread across the phases (`CI`);
`-m slow` runs the rest.  The table of outcomes prints at the end of the run."""

from __future__ import annotations

import functools

import pytest

from tests.faults.matrix import FAULTS, PHASES, RESULTS, Fault, Phase, cell_id, expected, run_cell
from tests.faults.world import World

# One cell per fault in the default run, each at a different phase (netem: n/a where the kernel lacks it).
CI = {
    ("kill-src", "checks"),
    ("kill-ldm", "prepare"),
    ("tbf", "round1"),
    ("cancel", "round2"),
    ("link-cut", "suspend"),
    ("disk-full", "final"),
    ("kill-dst-fs", "unconfirmed"),  # the regression test of the image lost across filesystems
    ("kill-dst", "confirmed"),
    ("netem", "cleanup"),
}
CELLS = [
    pytest.param(f, p, id=cell_id(f, p), marks=() if (f.key, p.key) in CI else (pytest.mark.slow,))
    for f in FAULTS
    for p in PHASES
]


@functools.cache
def unavailable(fault: Fault) -> str | None:
    return fault.unavailable()


@pytest.mark.parametrize(("fault", "phase"), CELLS)
def test_cell(world: World, fault: Fault, phase: Phase) -> None:
    key = (fault.key, phase.key)
    why = unavailable(fault)
    if why:
        RESULTS[key] = (f"n/a: {why}", "")
        pytest.skip(f"n/a: {why}")
    try:
        s = run_cell(world, fault, phase)
    except BaseException as e:
        text = str(e).strip()
        RESULTS[key] = (f"FAILED: {text.splitlines()[0][:200] if text else type(e).__name__}", "")
        raise
    want = expected(fault, phase)
    right = s.outcome in want
    RESULTS[key] = (s.outcome if right else f"WRONG: {s.outcome}, expected {' or '.join(want)}", s.note)
    assert right, s.note
