"""Shared fixtures.  `reaper`: tests that start processes (ldmd, guests) register the directories those
processes use; at teardown, pass or fail, every process whose command line names one of them is killed."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


def processes_mentioning(paths: list[Path]) -> list[int]:
    """Pids of live processes whose command line contains one of `paths` (and are not this process)."""
    needles = [os.fsencode(str(p)) for p in paths]
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue
        if any(n in argv for n in needles):
            out.append(int(entry))
    return out


def kill_processes_mentioning(paths: list[Path]) -> None:
    for pid in processes_mentioning(paths):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)  # reaps it if it is our child (ldmd, or a guest started in-process)
        except ChildProcessError:
            pass


class Reaper:
    def __init__(self) -> None:
        self.paths: list[Path] = []

    def watch(self, path: Path) -> Path:
        self.paths.append(path.resolve())
        return path


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    try:
        yield r
    finally:
        if r.paths:
            kill_processes_mentioning(r.paths)
