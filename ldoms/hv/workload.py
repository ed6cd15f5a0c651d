"""Workloads: what a guest does with its memory between control requests.

The guest loop calls `step(memory)` whenever the previous step asked to be called again; a step returns how
many seconds to wait before the next one, or None to wait only for control requests and signals (idle).
A step must be short (it runs between control requests and the stop signal) and must write a page *before*
marking it dirty (the migration engine relies on write-then-mark).  Later workloads (dirty N MiB/s, the
ledger) plug into `WORKLOADS` and are chosen by domain variables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ldoms.hv.memory import GuestMemory


class Workload(Protocol):
    name: str

    def step(self, memory: GuestMemory) -> float | None: ...

    def status(self) -> dict[str, Any]: ...


class IdleWorkload:
    """Touches nothing: an idle OS.  Its memory stays a hole."""

    name = "idle"

    def step(self, memory: GuestMemory) -> float | None:
        return None

    def status(self) -> dict[str, Any]:
        return {}


WorkloadFactory = Callable[[Mapping[str, str]], Workload]

WORKLOADS: dict[str, WorkloadFactory] = {"idle": lambda _vars: IdleWorkload()}

# The domain variable that chooses the workload ([REC]: not an LDoms variable; guests ignore unknown ones).
WORKLOAD_VARIABLE = "ldoms-workload"


def make_workload(variables: Mapping[str, str]) -> Workload:
    name = variables.get(WORKLOAD_VARIABLE, "idle")
    factory = WORKLOADS.get(name)
    if factory is None:
        raise ValueError(
            f"unknown workload '{name}' in variable {WORKLOAD_VARIABLE}: expected one of "
            f"{', '.join(sorted(WORKLOADS))}"
        )
    return factory(variables)
