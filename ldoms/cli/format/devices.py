"""`ldm list-devices [-a] [-p] [cpu] [crypto|mau] [memory|mem] [io]` (SPEC 5.4, 1.2 Example 9-12).

Sections VCPU, MAU, MEMORY, IO in that order, separated by a blank line; an empty section is left out.
Without `-a` only free resources are listed and no BOUND column is shown; with `-a` everything is listed.

- VCPU: `PID %FREE PM`.  A strand held by a bound or active domain is 0 % free; a strand held back after a
  1.2-style migration (`Bindings.reserved_strands`, SPEC 7.10) is also 0 % free and is listed even without
  `-a`, so the admin sees why it cannot be used.  Power management is not modelled: PM is `NO` for a held
  strand and `---` for a free one (parseable `pm=no` / `pm=`).
- MAU: `CPUSET` as `(0, 1, 2, 3)` (40 wide) and, with `-a`, BOUND; parseable `|cpuset=0,1,2,3|bound=ldg2`.
- MEMORY: `PA SIZE` and, with `-a`, BOUND: firmware ranges `_sys_`, every bound block with its holder, free
  ranges with an empty BOUND, sorted by PA.  Parseable sizes are bytes.
- IO: `DEVICE PSEUDONYM` and, with `-a`, `BOUND OPTIONS` (`yes`/`no`, `bypass=on`), PCIe buses then NIUs.
An inactive domain holds nothing, whatever its `bindings` field says.
"""

from __future__ import annotations

from collections.abc import Sequence

from ldoms.cli.format.common import INDENT, cols, is_bound, kv, parseable_version, section
from ldoms.errors import UsageError
from ldoms.model.machine import Machine
from ldoms.model.view import HostView
from ldoms.units import format_addr, format_size

_CLASSES = {"cpu": "cpu", "crypto": "mau", "mau": "mau", "memory": "mem", "mem": "mem", "io": "io"}
_ORDER = ("cpu", "mau", "mem", "io")


def _classes(requested: Sequence[str]) -> list[str]:
    wanted: set[str] = set()
    for c in requested:
        if c not in _CLASSES:
            raise UsageError(
                f"Invalid device class '{c}': expected cpu, crypto (or mau), memory (or mem) or io"
            )
        wanted.add(_CLASSES[c])
    return [c for c in _ORDER if not wanted or c in wanted]


# ---------------------------------------------------------------- who holds what
def _strands(machine: Machine, all_: bool) -> list[tuple[int, int, str]]:
    """(pid, %free, holder) rows."""
    held: dict[int, str] = {}
    reserved: dict[int, str] = {}
    for d in machine.domains:
        if is_bound(d) and d.bindings is not None:
            held.update(dict.fromkeys(d.bindings.strands, d.name))
            reserved.update(dict.fromkeys(d.bindings.reserved_strands, d.name))
    rows = []
    for core in machine.platform.cores:
        for pid in core.strands:
            if pid in held:
                if all_:
                    rows.append((pid, 0, held[pid]))
            elif pid in reserved:
                rows.append((pid, 0, reserved[pid]))
            else:
                rows.append((pid, 100, ""))
    return rows


def _maus(machine: Machine, all_: bool) -> list[tuple[tuple[int, ...], str]]:
    owner: dict[int, str] = {}
    for d in machine.domains:
        if is_bound(d) and d.bindings is not None:
            owner.update(dict.fromkeys(d.bindings.maus, d.name))
    return [(m.cpuset, owner.get(m.id, "")) for m in machine.platform.maus if all_ or m.id not in owner]


def _memory(machine: Machine, all_: bool) -> list[tuple[int, int, str]]:
    """(pa, size, bound) rows sorted by PA: `_sys_` ranges, bound blocks, free gaps of usable ranges."""
    bound = sorted(
        (b.pa, b.size, d.name)
        for d in machine.domains
        if is_bound(d) and d.bindings is not None
        for b in d.bindings.mblocks
    )
    free: list[tuple[int, int, str]] = []
    for r in machine.platform.usable_memory:
        cursor = r.pa
        for pa, size, _ in bound:
            if pa + size <= cursor or pa >= r.end:
                continue
            if pa > cursor:
                free.append((cursor, pa - cursor, ""))
            cursor = max(cursor, pa + size)
        if cursor < r.end:
            free.append((cursor, r.end - cursor, ""))
    if not all_:
        return free
    sys_ = [(r.pa, r.size, "_sys_") for r in machine.platform.memory if r.reserved]
    return sorted(sys_ + bound + free)


def _io(machine: Machine, all_: bool) -> list[tuple[str, str, str, str]]:
    """(dev, pseudonym, bound yes/no, options) rows."""
    bypass: dict[str, bool] = {}
    owned: set[str] = set()
    for d in machine.domains:
        if is_bound(d) and d.bindings is not None:
            owned.update(d.bindings.io)
            bypass.update({a.dev: a.bypass for a in d.config.io if a.dev in d.bindings.io})
    rows = []
    for bus in (*machine.platform.pci_buses, *machine.platform.nius):
        is_owned = bus.dev in owned
        if all_ or not is_owned:
            opts = "bypass=on" if bypass.get(bus.dev) else ""
            rows.append((bus.dev, bus.pseudonym, "yes" if is_owned else "no", opts))
    return rows


# ---------------------------------------------------------------- human
def _human(machine: Machine, cls: str, all_: bool) -> str | None:
    if cls == "cpu":
        vcpu_rows = _strands(machine, all_)
        lines = [
            cols((str(pid), 8), (str(free), 7), last="---" if free == 100 else "NO", indent=INDENT)
            for pid, free, _ in vcpu_rows
        ]
        return section("VCPU", [INDENT + "PID  %FREE     PM", *lines]) if lines else None
    if cls == "mau":
        mau_rows = _maus(machine, all_)
        lines = [
            cols(("(" + ", ".join(map(str, cpuset)) + ")", 40), last=owner if all_ else "", indent=INDENT)
            for cpuset, owner in mau_rows
        ]
        head = INDENT + ("CPUSET                                  BOUND" if all_ else "CPUSET")
        return section("MAU", [head, *lines]) if lines else None
    if cls == "mem":
        mem_rows = _memory(machine, all_)
        lines = [
            cols((format_addr(pa), 21), (format_size(size), 16), last=who if all_ else "", indent=INDENT)
            for pa, size, who in mem_rows
        ]
        head = INDENT + "PA                   SIZE" + ("            BOUND" if all_ else "")
        return section("MEMORY", [head, *lines]) if lines else None
    io_rows = _io(machine, all_)
    if all_:
        lines = [
            cols((dev, 17), (alias, 17), (b, 8), last=opts, indent=INDENT) for dev, alias, b, opts in io_rows
        ]
        head = INDENT + "DEVICE           PSEUDONYM        BOUND   OPTIONS"
    else:
        lines = [cols((dev, 17), last=alias, indent=INDENT) for dev, alias, _, _ in io_rows]
        head = INDENT + "DEVICE           PSEUDONYM"
    return section("IO", [head, *lines]) if lines else None


# ---------------------------------------------------------------- parseable
def _parseable(machine: Machine, cls: str, all_: bool) -> list[str]:
    rows: list[str]
    if cls == "cpu":
        rows = [kv(("pid", pid), ("free", free), ("pm", "" if free == 100 else "no"))
                for pid, free, _ in _strands(machine, all_)]
        return ["VCPU", *rows] if rows else []
    if cls == "mau":
        rows = [kv(("cpuset", ",".join(map(str, cpuset))), *((("bound", owner),) if all_ else ()))
                for cpuset, owner in _maus(machine, all_)]
        return ["MAU", *rows] if rows else []
    if cls == "mem":
        rows = [kv(("pa", format_addr(pa)), ("size", size), *((("bound", who),) if all_ else ()))
                for pa, size, who in _memory(machine, all_)]
        return ["MEMORY", *rows] if rows else []
    rows = [kv(("dev", dev), ("alias", alias), *((("bound", b), ("opts", opts)) if all_ else ()))
            for dev, alias, b, opts in _io(machine, all_)]
    return ["IO", *rows] if rows else []


def format_devices(
    view: HostView, classes: Sequence[str], *, all: bool = False, parseable: bool = False
) -> str:
    """`ldm list-devices`; `classes` from cpu, crypto/mau, memory/mem, io (none = every class)."""
    machine = view.machine
    wanted = _classes(classes)
    if parseable:
        lines = [parseable_version(view)]
        for cls in wanted:
            lines += _parseable(machine, cls, all)
        return "".join(f"{line}\n" for line in lines)
    return "\n".join(text for cls in wanted if (text := _human(machine, cls, all)) is not None)
