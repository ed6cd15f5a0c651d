"""The fault matrix's fixtures: one world (two hosts in two network namespaces) for the whole session, torn
down pass or fail (daemons and guests killed, tmpfs unmounted, namespaces deleted), and the table of outcomes
printed at the end of every run that ran a cell (`pytest_terminal_summary`: shown without -s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.matrix import FAULTS, PHASES, POINTS, RESULTS, SHORT
from tests.faults.netns import Unavailable, veth_link
from tests.faults.world import World, world_in


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("faults")
    try:
        with veth_link("ldmf") as link, world_in(root, link, POINTS) as w:
            yield w
    except Unavailable as e:
        pytest.skip(str(e))


def render(results: dict[tuple[str, str], tuple[str, str]]) -> list[str]:
    """The grid (short outcomes; "·" for a cell not run), a legend, then every cell run, in full."""

    def short(outcome: str) -> str:
        return SHORT.get(outcome, outcome.split(":")[0])

    width = max([len(short(o)) for o, _ in results.values()] + [len(p.key) for p in PHASES]) + 2
    row_w = max(len(f.title) for f in FAULTS) + 2
    lines = ["fault \\ phase".ljust(row_w) + "".join(p.key.ljust(width) for p in PHASES)]
    for f in FAULTS:
        cells = [results.get((f.key, p.key)) for p in PHASES]
        lines.append(
            f.title.ljust(row_w) + "".join(("·" if c is None else short(c[0])).ljust(width) for c in cells)
        )
    lines += [
        "",
        "phases: " + "; ".join(f"{p.key} = {p.title} (hold at {p.point})" for p in PHASES),
        "source = source kept; target = target took over; err→X = the source went to the error state and "
        "ldmd's automatic recovery settled it to X; admin→X = settled by 'ldm cancel-operation migration'; "
        "n/a = cannot run here; · = not run (the default run is a subset: -m slow runs the rest)",
        "",
    ]
    for f in FAULTS:
        for p in PHASES:
            c = results.get((f.key, p.key))
            if c is not None:
                lines.append(f"{f.title} @ {p.title}: {c[0]}" + (f" ({c[1]})" if c[1] else ""))
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("fault matrix: fault x phase -> outcome")
    for line in render(RESULTS):
        terminalreporter.write_line(line)
