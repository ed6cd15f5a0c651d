"""Who holds what: the resources recorded in the bindings of bound and active domains, and what is free.

An inactive domain holds nothing, whatever its `bindings` field says.  Every function takes an optional
`exclude` domain name so that a rebind can compute "free as if this domain held nothing".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ldoms.model.domain import Bindings, Domain, DomainState
from ldoms.model.machine import Machine
from ldoms.model.platform import MemRange


def holders(machine: Machine, *, exclude: str | None = None) -> tuple[tuple[Domain, Bindings], ...]:
    """Every bound or active domain (except `exclude`) with its bindings."""
    return tuple(
        (d, d.bindings)
        for d in machine.domains
        if d.bindings is not None and d.state != DomainState.INACTIVE and d.name != exclude
    )


@dataclass(frozen=True, slots=True)
class Holdings:
    """Resource -> holder name, for messages that say who holds what."""

    strands: dict[int, str]
    maus: dict[int, str]
    io: dict[str, str]
    memory: tuple[tuple[int, int, str], ...]  # (pa, end, holder), sorted by pa
    console: dict[tuple[str, int], str]  # (vcc name, port) -> holder


def holdings(machine: Machine, *, exclude: str | None = None) -> Holdings:
    strands: dict[int, str] = {}
    maus: dict[int, str] = {}
    io: dict[str, str] = {}
    memory: list[tuple[int, int, str]] = []
    console: dict[tuple[str, int], str] = {}
    for d, b in holders(machine, exclude=exclude):
        for s in (*b.strands, *b.reserved_strands):
            strands[s] = d.name
        for m in b.maus:
            maus[m] = d.name
        for dev in b.io:
            io[dev] = d.name
        for blk in b.mblocks:
            memory.append((blk.pa, blk.pa_end, d.name))
        if b.console_port:
            console[(b.console_service, b.console_port)] = d.name
    return Holdings(strands, maus, io, tuple(sorted(memory)), console)


def free_strands(machine: Machine, *, exclude: str | None = None) -> tuple[int, ...]:
    """Strands no bound or active domain holds, reserved strands counting as held."""
    held = holdings(machine, exclude=exclude).strands
    return tuple(s for c in machine.platform.cores for s in c.strands if s not in held)


def free_maus(machine: Machine, *, exclude: str | None = None) -> tuple[int, ...]:
    held = holdings(machine, exclude=exclude).maus
    return tuple(m.id for m in machine.platform.maus if m.id not in held)


def free_memory(machine: Machine, *, exclude: str | None = None) -> tuple[MemRange, ...]:
    """Free PA ranges: usable memory minus every bound block; sorted by PA, adjacent ranges merged."""
    used = [(pa, end) for pa, end, _ in holdings(machine, exclude=exclude).memory]
    return subtract(machine.platform.usable_memory, used)


# ---------------------------------------------------------------- range arithmetic on (pa, end) pairs
def merge(ranges: Iterable[MemRange]) -> tuple[MemRange, ...]:
    """Sort and coalesce touching or overlapping ranges (all taken as unreserved)."""
    out: list[MemRange] = []
    for r in sorted(ranges, key=lambda r: r.pa):
        if r.size <= 0:
            continue
        if out and r.pa <= out[-1].end:
            last = out[-1]
            out[-1] = MemRange(pa=last.pa, size=max(last.end, r.end) - last.pa)
        else:
            out.append(MemRange(pa=r.pa, size=r.size))
    return tuple(out)


def subtract(ranges: Iterable[MemRange], used: Sequence[tuple[int, int]]) -> tuple[MemRange, ...]:
    """`ranges` minus the `(pa, end)` intervals in `used`, merged."""
    cuts = sorted(used)
    out: list[MemRange] = []
    for r in merge(ranges):
        start = r.pa
        for pa, end in cuts:
            if end <= start or pa >= r.end:
                continue
            if pa > start:
                out.append(MemRange(pa=start, size=pa - start))
            start = max(start, end)
            if start >= r.end:
                break
        if start < r.end:
            out.append(MemRange(pa=start, size=r.end - start))
    return merge(out)
