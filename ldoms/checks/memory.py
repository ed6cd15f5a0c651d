"""Target-side memory rules (SPEC §3.1 Memory, §3.2 Bound, §7 item 9).

Active domains keep their real addresses: the target must place the same number of blocks of the same sizes
at the same RAs, each at a PA congruent to its RA modulo the target's hardware largest page size, and a block
may not be spread over several free ranges.  Only in 3.x mode, for a guest that supports it, may a block be
split, at RA boundaries aligned to the guest's effective largest page size.  The placement itself is
`ldoms.binding.memory.fit_blocks` (the same algorithm the target uses to reserve); these rules turn its
refusals into failures, one per block that cannot be placed.

Bound domains have not booted, so their memory may take any layout on the target: only the total (or the
named blocks' exact PAs) matters.  Inactive domains are not checked at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ldoms.binding import MemoryFitError, fit_blocks, free_memory
from ldoms.binding.memory import wanted_memory
from ldoms.checks.facts import MigrationMode, SourceFacts, TargetFacts
from ldoms.checks.failure import CheckFailure, Code, Side
from ldoms.errors import ResourceError
from ldoms.model.domain import DomainState, MemBinding
from ldoms.model.platform import MemRange
from ldoms.units import format_addr, format_size

# LDoms 3.2 wording (the line break is LDoms' own).
LAYOUT_MESSAGE_3X = (
    "Free memory layout and congruency requirements prevent binding the\n"
    "memory block with PA {pa}, RA {ra}, and size {size}"
)
LAYOUT_MESSAGE_1X = "Unable to bind {size} memory region at real address {ra}"


def _fail(code: Code, message: str, **kw: str) -> CheckFailure:
    return CheckFailure(code=code, message=message, side=Side.TARGET, **kw)


def _describe(free: Sequence[MemRange], limit: int = 8) -> str:
    shown = ", ".join(f"{format_addr(r.pa)} {format_size(r.size)}" for r in free[:limit])
    more = f", ... ({len(free) - limit} more)" if len(free) > limit else ""
    return f"free: {shown or 'none'}{more}"


def layout_message(blk: MemBinding, mode: MigrationMode) -> str:
    if mode == MigrationMode.V3:
        return LAYOUT_MESSAGE_3X.format(
            pa=format_addr(blk.pa), ra=format_addr(blk.ra), size=format_size(blk.size)
        )
    return LAYOUT_MESSAGE_1X.format(size=format_size(blk.size), ra=format_addr(blk.ra))


def check_memory_layout(
    blocks: Sequence[MemBinding],
    free: Sequence[MemRange],
    hw_pagesize: int,
    *,
    split_pagesize: int | None = None,
    mode: MigrationMode = MigrationMode.V1_2,
) -> Iterator[CheckFailure]:
    """One failure per source block that cannot be placed on `free` keeping its RA (and size, unless split).

    Blocks are tried in RA order as the target would reserve them; a block that does not fit is reported
    and left out, and the rest are tried again, so every misfit is named, not only the first."""
    remaining = sorted(blocks, key=lambda b: b.ra)
    rule = f"PA ≡ RA modulo {format_size(hw_pagesize)}"
    if split_pagesize:
        rule += f", split only at {format_size(split_pagesize)} boundaries"
    where = "" if split_pagesize else " in one free range"
    while remaining:
        try:
            fit_blocks(free, remaining, hw_pagesize, split_pagesize=split_pagesize)
            return
        except MemoryFitError as e:
            blk = e.block
            yield _fail(
                Code.MEM_LAYOUT,
                layout_message(blk, mode),
                resource=f"memory block RA {format_addr(blk.ra)}",
                observed=_describe(free),
                required=f"{format_size(blk.size)} at RA {format_addr(blk.ra)}{where} ({rule})",
                remedy="free a large enough, suitably aligned range on the target, or migrate the "
                "domain bound (its memory may then be laid out anew)",
            )
            if blk not in remaining:  # not one of ours: nothing left to learn from retrying
                return
            remaining.remove(blk)
        except ResourceError as e:
            yield _fail(Code.MEM_LAYOUT, str(e), resource="memory", observed=_describe(free))
            return


def _active_need(src: SourceFacts) -> int:
    b = src.domain.bindings
    return b.memory if b is not None else 0


def check_memory_free(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """Enough free memory in total (bound domains with named blocks are judged block by block instead)."""
    cfg = src.domain.config
    if src.state == DomainState.ACTIVE:
        need = _active_need(src)
    elif cfg.mblocks:
        return
    else:
        try:
            need = wanted_memory(cfg)
        except ResourceError as e:
            yield _fail(Code.MEM_FREE, str(e), resource="memory", required="a memory constraint")
            return
    have = sum(r.size for r in free_memory(tgt.machine))
    if need > have:
        yield _fail(
            Code.MEM_FREE,
            f"not enough free memory on {tgt.host_name}: need {format_size(need)}, have {format_size(have)}",
            resource="memory",
            observed=f"{format_size(have)} free",
            required=f"{format_size(need)} for LDom {src.name}",
            remedy=f"free memory on {tgt.host_name} (ldm set-memory, stop or unbind domains)",
        )


def check_memory_fit(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """Active: the source blocks fit the target's free layout with their RAs (SPEC §3.1).  When the total
    is short, `check_memory_free` reports it and this rule stays silent (one cause, one failure)."""
    b = src.domain.bindings
    if b is None or not b.mblocks:
        return
    free = free_memory(tgt.machine)
    if sum(r.size for r in free) < b.memory:
        return
    hw = tgt.platform.hw_max_pagesize
    split: int | None = None
    if src.mode == MigrationMode.V3 and src.guest.mem_split:
        split = src.guest.effective_max_pagesize or hw
    yield from check_memory_layout(b.mblocks, free, hw, split_pagesize=split, mode=src.mode)


def check_named_mblocks(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """Bound, with named blocks (`mblock=PA:size`): each must be free at the same PA on the target."""
    free = free_memory(tgt.machine)
    for nb in src.domain.config.mblocks:
        if not any(r.pa <= nb.pa and nb.pa + nb.size <= r.end for r in free):
            yield _fail(
                Code.MEM_BLOCKS,
                f"memory block PA {format_addr(nb.pa)} size {format_size(nb.size)} of LDom {src.name} is not "
                f"free on {tgt.host_name}",
                resource=f"memory block PA {format_addr(nb.pa)}",
                observed=_describe(free),
                required=f"{format_size(nb.size)} free at PA {format_addr(nb.pa)}",
                remedy="free that range on the target, or give the domain a memory size instead",
            )
