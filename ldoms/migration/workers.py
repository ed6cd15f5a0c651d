"""Where the data plane's lanes run: threads of the calling process, or worker processes forked from a
server that already imported the lane code (`channels` decides per plane; `choose_workers` says what
"auto" means)."""

from __future__ import annotations

import enum
import multiprocessing
from typing import Any


class Workers(enum.StrEnum):
    AUTO = "auto"
    THREADS = "threads"
    PROCESSES = "processes"


def choose_workers(asked: Workers | str, nchannels: int, memory_is_file: bool, cpus: int) -> Workers:
    """What `workers="auto"` means.  Worker processes let the crypto of N channels use N cores (the GIL
    serialises it in threads), but each costs a process and its own page-table faults on the memory; they
    pay only when the cores are there to run them: more than one channel, a memory file they can map, and
    at least two cores per channel (one for the lane, one for the kernel's share of its network work).
    On a 2-core machine both ends share, threads were as fast or faster (bench/bench_dataplane.py)."""
    mode = Workers(asked)
    if mode is not Workers.AUTO:
        return mode
    return (
        Workers.PROCESSES if nchannels > 1 and memory_is_file and cpus >= 2 * nchannels else Workers.THREADS
    )


def forkserver() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    # a fresh worker then forks from a server that already imported the lanes (numpy, cryptography, lz4)
    ctx.set_forkserver_preload(["ldoms.migration.lanes"])
    return ctx
