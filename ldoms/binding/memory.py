"""Memory binding: sizes and named blocks -> congruent RA/PA blocks.

Theory of operation.  A block maps the real addresses `[ra, ra+size)` a guest sees onto the physical
addresses `[pa, pa+size)`.  Every block keeps `pa ≡ ra (mod H)`, H being the platform's hardware largest page
size, so that the guest can map any H-aligned RA range with one hardware page ("congruency").  The control
domain runs on physical addresses (RA = PA, trivially congruent); guests' RAs start at GUEST_RA_BASE and are
contiguous.

Placing one block of a given RA and size (`_place_whole`): scan the free ranges by ascending PA and take the
lowest `pa >= start` with `pa ≡ ra (mod H)` and `pa + size <= end`.  When no single range can hold it,
`_place_split` cuts the request into pieces at boundaries aligned (in RA) to a split granule, filling the
lowest ranges first; each piece is congruent on its own.  Ordinary binding splits at 4M (binding a guest is
not a migration: its RA layout is being created, not preserved); `fit_blocks` (migration, SPEC §3.1) splits
only when given an effective page size, and otherwise fails on the first block that does not fit whole.

Resizing keeps what a domain holds: growing extends the top block in place when the PA range right above it
is free, else places the difference at the next RA; shrinking releases the highest RAs first (for the
control domain, whose RA is its PA, that keeps the lowest PA memory).
"""

from __future__ import annotations

from collections.abc import Sequence

from ldoms.binding.held import free_memory, holdings, subtract
from ldoms.errors import ResourceError
from ldoms.model.domain import DomainConfig, MemBinding
from ldoms.model.machine import Machine
from ldoms.model.platform import MemRange
from ldoms.units import PAGE_SIZE, M, format_addr, format_size, round_up

GUEST_RA_BASE = 0x8000000  # guests' first real address (128M), as in the 1.2 examples
MEM_ALIGN = 4 * M  # binding granule: the manager rounds requests to 4M
MIN_MEMORY = 12 * M  # OpenBoot's minimum


class MemoryFitError(ResourceError):
    """`fit_blocks` could not place `block` (its RA, size and source PA are kept for 3.x-style wording)."""

    def __init__(self, message: str, block: MemBinding) -> None:
        super().__init__(message)
        self.block = block


def wanted_memory(config: DomainConfig) -> int:
    """The size to bind: the named blocks' sum, else `config.memory` rounded up to 4M, at least 12M.

    The control domain is rounded to 8K only: at factory default it owns whole physical ranges, whose
    sizes need not be 4M multiples, and a rebind must not turn that into a request for more."""
    if config.mblocks:
        return sum(b.size for b in config.mblocks)
    if config.memory <= 0:
        raise ResourceError(
            f"LDom {config.name} has no memory: give it memory with 'ldm set-memory' before binding it"
        )
    return max(MIN_MEMORY, round_up(config.memory, PAGE_SIZE if config.is_control else MEM_ALIGN))


# ---------------------------------------------------------------- placement primitives
def _congruent_pa(r: MemRange, ra: int, hw: int) -> int:
    """Lowest address >= r.pa congruent to `ra` modulo `hw` (may lie beyond the range)."""
    return r.pa + (ra - r.pa) % hw


def _place_whole(free: Sequence[MemRange], ra: int, size: int, hw: int) -> MemBinding | None:
    for r in free:
        pa = _congruent_pa(r, ra, hw)
        if pa + size <= r.end:
            return MemBinding(ra=ra, pa=pa, size=size)
    return None


def _place_split(
    free: Sequence[MemRange], ra: int, size: int, hw: int, granule: int
) -> tuple[MemBinding, ...] | None:
    """Pieces of `[ra, ra+size)` cut at RA multiples of `granule`, lowest ranges first; None if short."""
    avail = list(free)
    pieces: list[MemBinding] = []
    cur, left = ra, size
    while left:
        for r in avail:
            pa = _congruent_pa(r, cur, hw)
            room = r.end - pa
            if room <= 0:
                continue
            # A piece ends at the block's end or on a granule boundary of the RA.
            n = left if room >= left else (cur + room) // granule * granule - cur
            if n > 0:
                break
        else:
            return None
        piece = MemBinding(ra=cur, pa=pa, size=n)
        pieces.append(piece)
        avail = list(subtract(avail, [(piece.pa, piece.pa_end)]))
        cur, left = cur + n, left - n
    return tuple(pieces)


def coalesce(blocks: Sequence[MemBinding]) -> tuple[MemBinding, ...]:
    """Sort by RA and join blocks contiguous in both RA and PA."""
    out: list[MemBinding] = []
    for b in sorted(blocks, key=lambda b: b.ra):
        if out and out[-1].ra + out[-1].size == b.ra and out[-1].pa_end == b.pa:
            out[-1] = MemBinding(ra=out[-1].ra, pa=out[-1].pa, size=out[-1].size + b.size)
        else:
            out.append(b)
    return tuple(out)


def fit_blocks(
    free: Sequence[MemRange],
    blocks: Sequence[MemBinding],
    hw_pagesize: int,
    *,
    split_pagesize: int | None = None,
) -> tuple[MemBinding, ...]:
    """Find PAs for `blocks` keeping their RAs and sizes (SPEC §3.1 fitting algorithm).

    Blocks are placed in RA order, each at the lowest congruent PA of the free ranges left by the previous
    ones.  With `split_pagesize` (E), a block that fits no single range is cut into pieces at RA multiples
    of E.  Raises `MemoryFitError` (`Unable to bind 2G memory region at real address 0x8000000`) on the
    first block that cannot be placed.  The result is sorted by RA; split pieces stay separate blocks."""
    avail = list(subtract(free, []))
    out: list[MemBinding] = []
    for blk in sorted(blocks, key=lambda b: b.ra):
        placed: tuple[MemBinding, ...] | None = None
        whole = _place_whole(avail, blk.ra, blk.size, hw_pagesize)
        if whole is not None:
            placed = (whole,)
        elif split_pagesize:
            placed = _place_split(avail, blk.ra, blk.size, hw_pagesize, split_pagesize)
        if placed is None:
            raise MemoryFitError(
                f"Unable to bind {format_size(blk.size)} memory region at real address {format_addr(blk.ra)}",
                blk,
            )
        out.extend(placed)
        avail = list(subtract(avail, [(p.pa, p.pa_end) for p in placed]))
    return tuple(out)


# ---------------------------------------------------------------- binding by size
def _layout_error(
    host: str, name: str, size: int, ra: int, free: Sequence[MemRange], hw: int
) -> ResourceError:
    total = sum(r.size for r in free)
    if total < size:
        return ResourceError(
            f"not enough free memory on {host} for LDom {name}: need {format_size(size)}, "
            f"have {format_size(total)}"
        )
    largest = max((r.size for r in free), default=0)
    return ResourceError(
        f"free memory layout and congruency requirements (PA ≡ RA modulo {format_size(hw)}) prevent binding "
        f"{format_size(size)} of memory for LDom {name} at real address {format_addr(ra)} on {host} "
        f"(free: {format_size(total)}, largest free range {format_size(largest)})"
    )


def _guest_extend(
    free: Sequence[MemRange], ra: int, size: int, hw: int, top: MemBinding | None
) -> tuple[MemBinding, ...] | None:
    """`size` more bytes at RA `ra`: in place above `top` if free there, else one block, else pieces."""
    if top is not None:
        for r in free:
            if r.pa == top.pa_end and r.size >= size:
                return (MemBinding(ra=ra, pa=top.pa_end, size=size),)
    whole = _place_whole(free, ra, size, hw)
    if whole is not None:
        return (whole,)
    return _place_split(free, ra, size, hw, MEM_ALIGN)


def _control_extend(free: Sequence[MemRange], size: int) -> tuple[MemBinding, ...] | None:
    """RA = PA: the lowest free PAs, in as many pieces as it takes."""
    out: list[MemBinding] = []
    left = size
    for r in free:
        n = min(left, r.size)
        out.append(MemBinding(ra=r.pa, pa=r.pa, size=n))
        left -= n
        if not left:
            return tuple(out)
    return None


def _shrink(blocks: Sequence[MemBinding], size: int) -> tuple[MemBinding, ...]:
    """Keep the lowest `size` bytes of RA; release the rest."""
    out: list[MemBinding] = []
    left = size
    for b in sorted(blocks, key=lambda b: b.ra):
        if left <= 0:
            break
        n = min(left, b.size)
        out.append(MemBinding(ra=b.ra, pa=b.pa, size=n))
        left -= n
    return tuple(out)


def resize_memory(
    machine: Machine, config: DomainConfig, held: Sequence[MemBinding], size: int
) -> tuple[MemBinding, ...]:
    """`held` (blocks the domain `config.name` holds now, possibly none) grown or shrunk to `size`."""
    current = sum(b.size for b in held)
    if size <= current:
        return coalesce(_shrink(held, size))
    # Free as the machine records it: the domain's own blocks are held, so they are not free.
    free = free_memory(machine, exclude=config.name)
    free = subtract(free, [(b.pa, b.pa_end) for b in held])
    hw = machine.platform.hw_max_pagesize
    delta = size - current
    if config.is_control:
        added = _control_extend(free, delta)
        ra = min((r.pa for r in free), default=0)
    else:
        top = max(held, key=lambda b: b.ra + b.size, default=None)
        ra = top.ra + top.size if top is not None else GUEST_RA_BASE
        added = _guest_extend(free, ra, delta, hw, top)
    if added is None:
        raise _layout_error(machine.host_name, config.name, delta, ra, free, hw)
    return coalesce((*held, *added))


# ---------------------------------------------------------------- named blocks
def bind_named(machine: Machine, config: DomainConfig) -> tuple[MemBinding, ...]:
    """`config.mblocks` bound exactly at their PAs; RAs assigned in PA order, congruent (control: RA = PA)."""
    plat = machine.platform
    hw = plat.hw_max_pagesize
    held = holdings(machine, exclude=config.name).memory
    done: list[tuple[int, int]] = []
    out: list[MemBinding] = []
    next_ra = GUEST_RA_BASE
    for nb in sorted(config.mblocks, key=lambda b: b.pa):
        what = f"memory block PA {format_addr(nb.pa)} size {format_size(nb.size)}"
        end = nb.pa + nb.size
        if nb.size <= 0 or nb.pa % PAGE_SIZE or nb.size % PAGE_SIZE:
            raise ResourceError(f"{what} is not aligned to 8K (PA and size must be multiples of 8K)")
        if not _covered(plat.memory, nb.pa, end):
            raise ResourceError(f"{what} lies outside physical memory")
        if any(r.reserved and r.pa < end and nb.pa < r.end for r in plat.memory):
            raise ResourceError(f"{what} is reserved (_sys_)")
        for pa, hend, holder in held:
            if pa < end and nb.pa < hend:
                raise ResourceError(f"{what} is not free: overlaps LDom {holder}")
        for pa, dend in done:
            if pa < end and nb.pa < dend:
                raise ResourceError(f"{what} overlaps memory block PA {format_addr(pa)} of the same request")
        done.append((nb.pa, end))
        if config.is_control:
            ra = nb.pa
        else:
            ra = next_ra + (nb.pa - next_ra) % hw
            next_ra = ra + nb.size
        out.append(MemBinding(ra=ra, pa=nb.pa, size=nb.size))
    return tuple(sorted(out, key=lambda b: b.ra))


def _covered(ranges: Sequence[MemRange], pa: int, end: int) -> bool:
    """True if `[pa, end)` lies entirely inside the union of `ranges` (reserved ones included)."""
    for r in ranges:
        if r.pa <= pa < r.end:
            pa = r.end
            if pa >= end:
                return True
    return False


def bind_memory(
    machine: Machine, config: DomainConfig, held: Sequence[MemBinding] = ()
) -> tuple[MemBinding, ...]:
    """The blocks `config` asks for, keeping `held` where possible (empty for a fresh bind)."""
    size = wanted_memory(config)
    if config.mblocks:
        asked = sorted((b.pa, b.size) for b in config.mblocks)
        if sorted((b.pa, b.size) for b in held) == asked:
            return tuple(sorted(held, key=lambda b: b.ra))
        return bind_named(machine, config)
    return resize_memory(machine, config, held, size)
