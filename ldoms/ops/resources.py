"""Resource verbs: virtual CPUs, memory, crypto units and PCIe buses.

    ldm add-vcpu [-c] number ldom       ldm set-vcpu [-c] number ldom       ldm remove-vcpu [-c] number ldom
    ldm add-memory size[unit] ldom      ldm set-memory size[unit] ldom      ldm remove-memory size[unit] ldom
    ldm add-memory mblock=PA:size[,PA:size...] ldom   (and set-, remove-)
    ldm add-crypto number ldom          ldm set-crypto number ldom          ldm remove-crypto number ldom
    ldm add-io [bypass=on] bus ldom      ldm remove-io bus ldom

Each verb computes the domain's new constraints from its current ones (the pending ones during a delayed
reconfiguration) and hands them to `reconf.plan_change`, which applies the LDoms 1.2 state rules (inactive:
constraints; bound: rebind; active guest: CPU DR only; active control domain: delayed reconfiguration).
`check_prereq` runs the whole plan to validate; `execute` runs it again (it is pure) to build the machine.

Sizes: rounded up to a 4M multiple; a domain below OpenBoot's 12M minimum is raised to it with a notice
(SPEC §1.2).  `-c` counts whole cores (2.0 syntax); the whole-core constraint itself changes only while the
domain is inactive, or for the control domain as a delayed reconfiguration.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from ldoms.errors import (
    AlreadyExistsError,
    NotFoundError,
    OpPrereqError,
    ResourceError,
    StateError,
    UsageError,
)
from ldoms.model.domain import Domain, DomainConfig, DomainState, IoAssignment, NamedMblock
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import (
    check_grammar,
    check_name,
    check_not_migrating,
    check_other_domain_reconfig,
    effective_config,
    get_domain,
    is_delayed,
    parse_int,
)
from ldoms.ops.reconf import Change, Resource, check_crypto_strands, plan_change
from ldoms.units import M, format_addr, format_size, parse_addr, parse_size, round_up

MEM_ALIGN = 4 * M  # requests are rounded up to this
MEM_MINIMUM = 12 * M  # OpenBoot needs at least this much (1.2 release notes)

def _prepare(machine: Machine, ldom: str, ctx: OpContext) -> tuple[Domain, DomainConfig]:
    dom = get_domain(machine, ldom)
    check_not_migrating(dom.name, ctx)
    check_other_domain_reconfig(machine, dom.name)
    return dom, effective_config(dom)


def _result(change: Change, notices: tuple[str, ...] = ()) -> OpResult:
    return OpResult(machine=change.machine, messages=notices + change.messages)


# ---------------------------------------------------------------- vCPUs
@dataclass(frozen=True, slots=True)
class VcpuArgs:
    count: int
    whole_core: bool
    ldom: str


class _VcpuOp:
    mode = "add"
    spec: VerbSpec

    def check_arguments(self, request: Request) -> VcpuArgs:
        check_grammar(request, self.spec)
        number, ldom = request.operands
        what = "number of cores" if "-c" in request.flags else "number of virtual CPUs"
        count = parse_int(number, what, minimum=1)
        return VcpuArgs(count=count, whole_core=bool(request.flags.get("-c")), ldom=check_name(ldom))

    def _plan(self, machine: Machine, args: VcpuArgs, ctx: OpContext) -> Change:
        dom, cfg = _prepare(machine, args.ldom, ctx)
        new_cfg = self._new_config(machine, dom, cfg, args)
        check_crypto_strands(dom, new_cfg, machine.platform.strands_per_core)
        return plan_change(machine, dom, new_cfg, Resource.CPU)

    def _new_config(self, machine: Machine, dom: Domain, cfg: DomainConfig, args: VcpuArgs) -> DomainConfig:
        if args.whole_core != cfg.whole_core:
            if self.mode != "set":
                has = "has" if cfg.whole_core else "does not have"
                fix = "-c " if cfg.whole_core else ""
                raise OpPrereqError(
                    f"LDom {dom.name} {has} the whole-core constraint: use 'ldm {self.mode}-vcpu {fix}N "
                    f"{dom.name}', or 'ldm set-vcpu' to change the constraint"
                )
            if dom.state != DomainState.INACTIVE and not is_delayed(dom):
                raise StateError(
                    f"The whole-core constraint of LDom {dom.name} can be changed only while it is inactive "
                    f"(it is {dom.state.value})"
                )
        unit = "core" if args.whole_core else "virtual CPU"
        if self.mode == "add":
            count = cfg.vcpus + args.count
        elif self.mode == "set":
            count = args.count
        else:
            if args.count >= cfg.vcpus:
                raise OpPrereqError(
                    f"Cannot remove {args.count} {unit}(s) from LDom {dom.name}: it has {cfg.vcpus} and "
                    "needs at least one"
                )
            count = cfg.vcpus - args.count
        plat = machine.platform
        total = len(plat.cores) if args.whole_core else plat.nstrands
        if count > total:
            raise ResourceError(
                f"Cannot give LDom {dom.name} {count} {unit}s: the platform has only {total}"
            )
        return replace(cfg, vcpus=count, whole_core=args.whole_core)

    def check_prereq(self, machine: Machine, args: VcpuArgs, ctx: OpContext) -> None:
        self._plan(machine, args, ctx)

    def execute(self, machine: Machine, args: VcpuArgs, ctx: OpContext) -> OpResult:
        return _result(self._plan(machine, args, ctx))


def _vcpu_spec(mode: str, aliases: tuple[str, ...] = ()) -> VerbSpec:
    return VerbSpec(
        name=f"{mode}-vcpu", aliases=aliases, flags=("-c",), min_operands=2, max_operands=2,
        usage=f"{mode}-vcpu [-c] number ldom",
    )


@register
class AddVcpu(_VcpuOp):
    mode = "add"
    spec = _vcpu_spec("add")


@register
class SetVcpu(_VcpuOp):
    mode = "set"
    spec = _vcpu_spec("set")


@register
class RemoveVcpu(_VcpuOp):
    mode = "remove"
    spec = _vcpu_spec("remove", ("rm-vcpu",))


# ---------------------------------------------------------------- memory
@dataclass(frozen=True, slots=True)
class MemoryArgs:
    ldom: str
    size: int = 0  # bytes as given (before rounding); 0 with mblocks
    mblocks: tuple[NamedMblock, ...] = ()


def parse_mblocks(text: str) -> tuple[NamedMblock, ...]:
    """'0x400000000:1G,0x480000000:512M' -> named blocks (4M-aligned, not overlapping)."""
    blocks: list[NamedMblock] = []
    for part in text.split(","):
        pa_text, sep, size_text = part.strip().partition(":")
        if not sep or not pa_text or not size_text:
            raise UsageError(f"Invalid memory block '{part}': expected PA-start:size, e.g. 0x400000000:1G")
        pa = parse_addr(pa_text, what="memory block address")
        size = parse_size(size_text, what="memory block size")
        if size == 0 or pa % MEM_ALIGN or size % MEM_ALIGN:
            raise UsageError(
                f"Invalid memory block {part}: the address and the size must be non-zero multiples of 4M"
            )
        blocks.append(NamedMblock(pa=pa, size=size))
    _check_no_overlap(blocks)
    return tuple(blocks)


def _check_no_overlap(blocks: list[NamedMblock]) -> None:
    ordered = sorted(blocks, key=lambda b: b.pa)
    for a, b in itertools.pairwise(ordered):
        if b.pa < a.pa + a.size:
            raise UsageError(
                f"Memory blocks {format_addr(a.pa)}:{format_size(a.size)} and "
                f"{format_addr(b.pa)}:{format_size(b.size)} overlap"
            )


def _mblock_text(b: NamedMblock) -> str:
    return f"{format_addr(b.pa)}:{format_size(b.size)}"


class _MemoryOp:
    mode = "add"
    spec: VerbSpec

    def check_arguments(self, request: Request) -> MemoryArgs:
        check_grammar(request, self.spec)
        mblock = request.prop("mblock")
        ops = request.operands
        if mblock is not None:
            if len(ops) != 1:
                raise UsageError(f"Usage: ldm {self.spec.usage}")
            return MemoryArgs(ldom=check_name(ops[0]), mblocks=parse_mblocks(mblock))
        if len(ops) not in (2, 3):
            raise UsageError(f"Usage: ldm {self.spec.usage}")
        size = parse_size("".join(ops[:-1]), what="memory size")  # "1G ldom" or "1 G ldom" (1.2 synopsis)
        if size == 0:
            raise UsageError("Invalid memory size 0: it must be greater than 0")
        return MemoryArgs(ldom=check_name(ops[-1]), size=size)

    def _new_config(self, machine: Machine, dom: Domain, cfg: DomainConfig,
                    args: MemoryArgs) -> tuple[DomainConfig, tuple[str, ...]]:
        if args.mblocks:
            new_cfg = self._by_blocks(dom, cfg, args.mblocks)
            notices: tuple[str, ...] = ()
        else:
            new_cfg, notices = self._by_size(dom, cfg, args.size)
        usable = sum(r.size for r in machine.platform.usable_memory)
        if new_cfg.memory > usable:
            raise ResourceError(
                f"Cannot give LDom {dom.name} {format_size(new_cfg.memory)} of memory: the platform has only "
                f"{format_size(usable)} usable"
            )
        return new_cfg, notices

    def _by_size(self, dom: Domain, cfg: DomainConfig, size: int) -> tuple[DomainConfig, tuple[str, ...]]:
        if cfg.mblocks and self.mode != "set":
            raise OpPrereqError(
                f"LDom {dom.name} has named memory blocks: use '{self.mode}-memory mblock=PA:size', or "
                "'set-memory size' to replace them with a size"
            )
        amount = round_up(size, MEM_ALIGN)
        if self.mode == "remove":
            if amount > cfg.memory:
                raise OpPrereqError(
                    f"Cannot remove {format_size(amount)} of memory from LDom {dom.name}: it has "
                    f"{format_size(cfg.memory)}"
                )
            total = cfg.memory - amount
            if total < MEM_MINIMUM:
                raise OpPrereqError(
                    f"Cannot remove {format_size(amount)} of memory from LDom {dom.name}: it would have "
                    f"{format_size(total)}, below the {format_size(MEM_MINIMUM)} minimum that OpenBoot needs"
                )
        else:
            total = amount if self.mode == "set" else cfg.memory + amount
        notices: tuple[str, ...] = ()
        if total < MEM_MINIMUM:
            notices = (
                f"Notice: the memory of LDom {dom.name} was raised from {format_size(total)} to the "
                f"{format_size(MEM_MINIMUM)} minimum that OpenBoot needs",
            )
            total = MEM_MINIMUM
        return replace(cfg, memory=total, mblocks=()), notices

    def _by_blocks(self, dom: Domain, cfg: DomainConfig, blocks: tuple[NamedMblock, ...]) -> DomainConfig:
        if cfg.memory and not cfg.mblocks and self.mode != "set":
            raise OpPrereqError(
                f"LDom {dom.name} has a memory size constraint: use 'set-memory mblock=...' to replace it "
                "with named memory blocks"
            )
        if self.mode == "set":
            new = list(blocks)
        elif self.mode == "add":
            new = [*cfg.mblocks, *blocks]
            _check_no_overlap(new)
        else:
            new = list(cfg.mblocks)
            for b in blocks:
                if b not in new:
                    raise NotFoundError(f"Memory block {_mblock_text(b)} not found in LDom {dom.name}")
                new.remove(b)
            if not new:
                raise OpPrereqError(
                    f"Cannot remove every memory block of LDom {dom.name}: a domain needs memory"
                )
        total = sum(b.size for b in new)
        if total < MEM_MINIMUM:
            raise OpPrereqError(
                f"The memory blocks of LDom {dom.name} add up to {format_size(total)}, below the "
                f"{format_size(MEM_MINIMUM)} minimum that OpenBoot needs"
            )
        return replace(cfg, memory=total, mblocks=tuple(sorted(new, key=lambda b: b.pa)))

    def _change(self, machine: Machine, args: MemoryArgs, ctx: OpContext) -> OpResult:
        dom, cfg = _prepare(machine, args.ldom, ctx)
        new_cfg, notices = self._new_config(machine, dom, cfg, args)
        return _result(plan_change(machine, dom, new_cfg, Resource.MEMORY), notices)

    def check_prereq(self, machine: Machine, args: MemoryArgs, ctx: OpContext) -> None:
        self._change(machine, args, ctx)

    def execute(self, machine: Machine, args: MemoryArgs, ctx: OpContext) -> OpResult:
        return self._change(machine, args, ctx)


def _memory_spec(mode: str, aliases: tuple[str, ...]) -> VerbSpec:
    return VerbSpec(
        name=f"{mode}-memory", aliases=aliases, props=("mblock",), min_operands=1, max_operands=3,
        usage=f"{mode}-memory size[unit] ldom | {mode}-memory mblock=PA-start:size[,PA-start:size...] ldom",
    )


@register
class AddMemory(_MemoryOp):
    mode = "add"
    spec = _memory_spec("add", ("add-mem",))


@register
class SetMemory(_MemoryOp):
    mode = "set"
    spec = _memory_spec("set", ("set-mem",))


@register
class RemoveMemory(_MemoryOp):
    mode = "remove"
    spec = _memory_spec("remove", ("rm-memory", "remove-mem", "rm-mem"))


# ---------------------------------------------------------------- crypto units (MAU)
@dataclass(frozen=True, slots=True)
class CryptoArgs:
    count: int
    ldom: str


class _CryptoOp:
    mode = "add"
    spec: VerbSpec

    def check_arguments(self, request: Request) -> CryptoArgs:
        check_grammar(request, self.spec)
        number, ldom = request.operands
        count = parse_int(number, "number of crypto units", minimum=0 if self.mode == "set" else 1)
        return CryptoArgs(count=count, ldom=check_name(ldom))

    def _change(self, machine: Machine, args: CryptoArgs, ctx: OpContext) -> Change:
        dom, cfg = _prepare(machine, args.ldom, ctx)
        if self.mode == "add":
            count = cfg.mau + args.count
        elif self.mode == "set":
            count = args.count
        else:
            if args.count > cfg.mau:
                raise OpPrereqError(
                    f"Cannot remove {args.count} crypto unit(s) from LDom {dom.name}: it has {cfg.mau}"
                )
            count = cfg.mau - args.count
        total = len(machine.platform.maus)
        if count > total:
            raise ResourceError(
                f"Cannot give LDom {dom.name} {count} crypto units: the platform has only {total}"
            )
        return plan_change(machine, dom, replace(cfg, mau=count), Resource.CRYPTO)

    def check_prereq(self, machine: Machine, args: CryptoArgs, ctx: OpContext) -> None:
        self._change(machine, args, ctx)

    def execute(self, machine: Machine, args: CryptoArgs, ctx: OpContext) -> OpResult:
        return _result(self._change(machine, args, ctx))


def _crypto_spec(mode: str, aliases: tuple[str, ...]) -> VerbSpec:
    return VerbSpec(
        name=f"{mode}-crypto", aliases=aliases, min_operands=2, max_operands=2,
        usage=f"{mode}-crypto number ldom",
    )


@register
class AddCrypto(_CryptoOp):
    mode = "add"
    spec = _crypto_spec("add", ("add-mau",))


@register
class SetCrypto(_CryptoOp):
    mode = "set"
    spec = _crypto_spec("set", ("set-mau",))


@register
class RemoveCrypto(_CryptoOp):
    mode = "remove"
    spec = _crypto_spec("remove", ("rm-crypto", "remove-mau", "rm-mau"))


# ---------------------------------------------------------------- PCIe buses
@dataclass(frozen=True, slots=True)
class IoArgs:
    bus: str  # as given: "pci@780" or its pseudonym "bus_a"
    ldom: str
    bypass: bool = False


def resolve_bus(machine: Machine, bus: str) -> str:
    """'bus_a' or 'pci@780' -> 'pci@780'."""
    for b in machine.platform.pci_buses:
        if bus in (b.dev, b.pseudonym):
            return b.dev
    known = ", ".join(f"{b.dev} ({b.pseudonym})" for b in machine.platform.pci_buses) or "none"
    raise NotFoundError(f"I/O device {bus} not found: the buses of this platform are {known}")


def bus_owner(machine: Machine, dev: str) -> Domain | None:
    """The domain whose constraints (current or pending) hold the bus."""
    for d in machine.domains:
        for cfg in (d.config, d.pending):
            if cfg is not None and any(a.dev == dev for a in cfg.io):
                return d
    return None


@register
class AddIo:
    spec = VerbSpec(
        name="add-io", props=("bypass",), min_operands=2, max_operands=2, usage="add-io [bypass=on] bus ldom"
    )

    def check_arguments(self, request: Request) -> IoArgs:
        check_grammar(request, self.spec)
        bypass = request.prop("bypass")
        if bypass is not None and bypass != "on":
            raise UsageError(f"Invalid value bypass={bypass}: the only value is 'on'")
        bus, ldom = request.operands
        return IoArgs(bus=bus, ldom=check_name(ldom), bypass=bypass == "on")

    def _change(self, machine: Machine, args: IoArgs, ctx: OpContext) -> Change:
        dev = resolve_bus(machine, args.bus)
        dom, cfg = _prepare(machine, args.ldom, ctx)
        owner = bus_owner(machine, dev)
        if owner is not None:
            raise AlreadyExistsError(
                f"I/O device {dev} ({args.bus}) is already assigned to LDom {owner.name}"
            )
        new_cfg = replace(cfg, io=(*cfg.io, IoAssignment(dev=dev, bypass=args.bypass)))
        return plan_change(machine, dom, new_cfg, Resource.IO)

    def check_prereq(self, machine: Machine, args: IoArgs, ctx: OpContext) -> None:
        self._change(machine, args, ctx)

    def execute(self, machine: Machine, args: IoArgs, ctx: OpContext) -> OpResult:
        return _result(self._change(machine, args, ctx))


@register
class RemoveIo:
    spec = VerbSpec(
        name="remove-io", aliases=("rm-io",), min_operands=2, max_operands=2, usage="remove-io bus ldom"
    )

    def check_arguments(self, request: Request) -> IoArgs:
        check_grammar(request, self.spec)
        bus, ldom = request.operands
        return IoArgs(bus=bus, ldom=check_name(ldom))

    def _change(self, machine: Machine, args: IoArgs, ctx: OpContext) -> Change:
        dev = resolve_bus(machine, args.bus)
        dom, cfg = _prepare(machine, args.ldom, ctx)
        if not any(a.dev == dev for a in cfg.io):
            raise NotFoundError(f"I/O device {dev} ({args.bus}) is not assigned to LDom {dom.name}")
        new_cfg = replace(cfg, io=tuple(a for a in cfg.io if a.dev != dev))
        return plan_change(machine, dom, new_cfg, Resource.IO)

    def check_prereq(self, machine: Machine, args: IoArgs, ctx: OpContext) -> None:
        self._change(machine, args, ctx)

    def execute(self, machine: Machine, args: IoArgs, ctx: OpContext) -> OpResult:
        return _result(self._change(machine, args, ctx))
