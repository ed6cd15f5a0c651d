"""Workloads: what a guest does with its memory between control requests, chosen by domain variables.

The variables (`ldm set-variable NAME=VALUE ldg1`; read when the guest starts; guests ignore the rest):

    ldoms-workload=idle|dirty|ledger|fill-random   what the guest runs (default idle: it touches nothing)
    ldoms-dirty-rate=SIZE              bytes written per second: `256M`, `1G`, `0` (dirty: default 256M;
                                       ledger: default 40M, i.e. 1024 steps/s of 40 KiB; fill-random: as
                                       fast as it can unless given)
    ldoms-working-set=SIZE             dirty: the first SIZE bytes of memory are written over and over, page
                                       after page; fill-random: the first SIZE bytes are written once
                                       (default 512M; at most the domain's memory)
    ldoms-seed=N                       ledger: the seed every byte derives from (default 1; 0..2**64-1)

e.g. `ldm set-variable ldoms-workload=dirty ldoms-dirty-rate=512M ldoms-working-set=1G ldg1`.

`fill-random` fills its working set with fresh random data once, then idles: an idle guest whose memory
has no zero page and does not compress (benchmarks; `status()` says when it is `done`).

The guest loop calls `step()` when the previous step asked for it.  A step is small (well under 1 ms of work:
suspend waits for at most one step) and returns the interval from its start to the next step's start, or
None to run no more steps (idle).  A step *writes a page, then marks it* in the dirty map: the migration
engine relies on write-then-mark (ldoms/hv/dirtymap.py).  Workloads carry their progress in `state()`, a
JSON-able dict that `restore()` takes back on the target of a migration.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ldoms.errors import UsageError
from ldoms.hv.dirtymap import DirtyMap
from ldoms.hv.ledger import MAX_SEED, LedgerWorkload
from ldoms.hv.memory import GuestMemory
from ldoms.units import PAGE_SIZE, M, parse_size

WORKLOAD_VARIABLE = "ldoms-workload"
DIRTY_RATE_VARIABLE = "ldoms-dirty-rate"
WORKING_SET_VARIABLE = "ldoms-working-set"
SEED_VARIABLE = "ldoms-seed"
WORKLOAD_VARIABLES = (WORKLOAD_VARIABLE, DIRTY_RATE_VARIABLE, WORKING_SET_VARIABLE, SEED_VARIABLE)

DEFAULT_DIRTY_RATE = 256 * M
DEFAULT_LEDGER_RATE = 40 * M
DEFAULT_WORKING_SET = 512 * M
DEFAULT_SEED = 1
TARGET_STEP_S = 0.005  # a dirty step writes what 5 ms of its rate asks for ...
MAX_PAGES_PER_STEP = 128  # ... but at most 1 MiB, so a step stays well under a millisecond
FILL_PAGES_PER_STEP = 32  # fill-random: 256 KiB of fresh random data a step (random bytes cost ~0.1 ms/MiB)


class Workload(Protocol):
    name: str
    steps: int  # steps run (continued across a migration)
    dirtied_bytes: int  # bytes written (this process only)

    def step(self) -> float | None: ...

    def status(self) -> dict[str, Any]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    name: str = "idle"
    rate: int | None = None  # bytes/s; None = the workload's default
    working_set: int = DEFAULT_WORKING_SET
    seed: int = DEFAULT_SEED


def _size(variables: Mapping[str, str], name: str, what: str) -> int | None:
    text = variables.get(name)
    if text is None:
        return None
    try:
        return parse_size(text)
    except UsageError:
        raise UsageError(
            f"Invalid value '{text}' for variable {name}: expected {what} such as 256M"
        ) from None


def parse_workload(variables: Mapping[str, str]) -> WorkloadConfig:
    """The workload the variables choose (pure; raises UsageError naming the variable and the value)."""
    name = variables.get(WORKLOAD_VARIABLE, "idle")
    if name not in WORKLOADS:
        raise UsageError(
            f"Invalid value '{name}' for variable {WORKLOAD_VARIABLE}: unknown workload '{name}', expected "
            f"one of {', '.join(sorted(WORKLOADS))}"
        )
    rate = _size(variables, DIRTY_RATE_VARIABLE, "a size in bytes per second")
    working_set = _size(variables, WORKING_SET_VARIABLE, "a size")
    if working_set is not None and working_set < PAGE_SIZE:
        raise UsageError(
            f"Invalid value '{variables[WORKING_SET_VARIABLE]}' for variable {WORKING_SET_VARIABLE}: the "
            f"working set must hold at least one {PAGE_SIZE // 1024}K page"
        )
    seed_text = variables.get(SEED_VARIABLE)
    seed = DEFAULT_SEED
    if seed_text is not None:
        if not seed_text.strip().isdigit() or int(seed_text) > MAX_SEED:
            raise UsageError(
                f"Invalid value '{seed_text}' for variable {SEED_VARIABLE}: expected an integer 0..{MAX_SEED}"
            )
        seed = int(seed_text)
    return WorkloadConfig(
        name=name,
        rate=rate,
        working_set=DEFAULT_WORKING_SET if working_set is None else working_set,
        seed=seed,
    )


class IdleWorkload:
    """Touches nothing: an idle OS.  Its memory stays a hole."""

    name = "idle"

    def __init__(self) -> None:
        self.steps = 0
        self.dirtied_bytes = 0

    def step(self) -> float | None:
        return None

    def status(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class DirtyWorkload:
    """Writes `rate` bytes/s over the first `working_set` bytes, page after page, wrapping around.

    The data is random (so neither zero-page skipping nor compression hides it) with a running counter
    stamped in each page's first 8 bytes (so every write changes the page)."""

    name = "dirty"

    def __init__(self, memory: GuestMemory, dirty: DirtyMap, *, rate: int, working_set: int) -> None:
        self.dirty = dirty
        self.ws_pages = max(1, min(working_set // PAGE_SIZE, memory.npages))
        self.rate = rate
        n = round(rate * TARGET_STEP_S / PAGE_SIZE)
        self.per_step = max(1, min(n, MAX_PAGES_PER_STEP, self.ws_pages))
        self.period: float | None = self.per_step * PAGE_SIZE / rate if rate > 0 else None
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        self._block = rng.integers(0, 256, size=(self.per_step, PAGE_SIZE), dtype=np.uint8)
        self._pages: np.ndarray | None = memory.pages()
        self.cursor = 0  # the next page to write
        self.counter = 0  # pages written so far, across migrations
        self.steps = 0
        self.dirtied_bytes = 0

    def step(self) -> float | None:
        assert self._pages is not None, "the dirty workload was closed"
        n = self.per_step
        idx = (self.cursor + np.arange(n, dtype=np.int64)) % self.ws_pages
        self._block[:, :8].view("<u8")[:, 0] = self.counter + 1 + np.arange(n, dtype=np.uint64)
        self._pages[idx] = self._block
        self.dirty.mark(idx)  # after the write (see ldoms/hv/dirtymap.py)
        self.cursor = int((self.cursor + n) % self.ws_pages)
        self.counter += n
        self.steps += 1
        self.dirtied_bytes += n * PAGE_SIZE
        return self.period

    def status(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "working_set": self.ws_pages * PAGE_SIZE,
            "pages_per_step": self.per_step,
            "pages_written": self.counter,
        }

    def state(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "counter": self.counter, "steps": self.steps}

    def restore(self, state: dict[str, Any]) -> None:
        for key in ("cursor", "counter", "steps"):
            value = state.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"the dirty workload state holds no valid {key}: {value!r}")
        self.cursor = state["cursor"] % self.ws_pages  # the target may clamp the working set differently
        self.counter = state["counter"]
        self.steps = state["steps"]

    def close(self) -> None:
        self._pages = None


class FillRandomWorkload:
    """Writes fresh random data over the first `working_set` bytes once, page after page, then idles.

    `FILL_PAGES_PER_STEP` pages a step keeps a step well under a millisecond; without a rate the steps follow
    each other at once.  Its state is how far it got, so a migrated guest neither refills nor starts over."""

    name = "fill-random"

    def __init__(self, memory: GuestMemory, dirty: DirtyMap, *, working_set: int, rate: int | None) -> None:
        self.dirty = dirty
        self.fill_pages = max(1, min(working_set // PAGE_SIZE, memory.npages))
        self.per_step = min(FILL_PAGES_PER_STEP, self.fill_pages)
        self.period = self.per_step * PAGE_SIZE / rate if rate else 0.0
        self._rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        self._pages: np.ndarray | None = memory.pages()
        self.cursor = 0  # the next page to fill
        self.steps = 0
        self.dirtied_bytes = 0

    @property
    def done(self) -> bool:
        return self.cursor >= self.fill_pages

    def step(self) -> float | None:
        assert self._pages is not None, "the fill-random workload was closed"
        if self.done:
            return None
        n = min(self.per_step, self.fill_pages - self.cursor)
        block = np.frombuffer(self._rng.bytes(n * PAGE_SIZE), dtype=np.uint8).reshape(n, PAGE_SIZE)
        self._pages[self.cursor : self.cursor + n] = block
        self.dirty.mark(np.arange(self.cursor, self.cursor + n, dtype=np.int64))  # after the write
        self.cursor += n
        self.steps += 1
        self.dirtied_bytes += n * PAGE_SIZE
        return None if self.done else self.period

    def status(self) -> dict[str, Any]:
        return {
            "fill_bytes": self.fill_pages * PAGE_SIZE,
            "filled_bytes": self.cursor * PAGE_SIZE,
            "done": self.done,
        }

    def state(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "steps": self.steps}

    def restore(self, state: dict[str, Any]) -> None:
        for key in ("cursor", "steps"):
            value = state.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"the fill-random workload state holds no valid {key}: {value!r}")
        self.cursor = min(state["cursor"], self.fill_pages)  # the target may clamp the working set
        self.steps = state["steps"]

    def close(self) -> None:
        self._pages = None


WorkloadFactory = Callable[[WorkloadConfig, GuestMemory, DirtyMap], Workload]

WORKLOADS: dict[str, WorkloadFactory] = {
    "idle": lambda cfg, memory, dirty: IdleWorkload(),
    "dirty": lambda cfg, memory, dirty: DirtyWorkload(
        memory,
        dirty,
        rate=DEFAULT_DIRTY_RATE if cfg.rate is None else cfg.rate,
        working_set=cfg.working_set,
    ),
    "ledger": lambda cfg, memory, dirty: LedgerWorkload(
        memory, dirty, seed=cfg.seed, rate=DEFAULT_LEDGER_RATE if cfg.rate is None else cfg.rate
    ),
    "fill-random": lambda cfg, memory, dirty: FillRandomWorkload(
        memory, dirty, working_set=cfg.working_set, rate=cfg.rate
    ),
}


def make_workload(config: WorkloadConfig, memory: GuestMemory, dirty: DirtyMap) -> Workload:
    return WORKLOADS[config.name](config, memory, dirty)
