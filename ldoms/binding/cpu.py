"""CPU binding: strands (or whole cores) and the MAUs tied to their cores.

Theory of operation.  A MAU is usable only by a domain holding strands of its core, so MAUs are chosen
first and pin one strand on each of their cores; the remaining strands follow the preference order.

Strands (no whole-core): keep what the domain holds, lowest-numbered first (so shrinking releases the
highest-numbered strands), then add free strands on cores the domain already uses, then the
lowest-numbered free strands.  MAUs: keep the lowest-numbered held MAUs; add free MAUs on cores the domain
holds, then on the lowest cores that have a free strand.

Whole cores (`config.whole_core`, `config.vcpus` counting cores): only cores whose every strand is free (or
already the domain's) are used; held cores are kept (those with a kept MAU first), new cores are the
lowest fully free ones, those with a free MAU first while MAUs are still wanted.

Full cores (`full_cores=True`, the target of a 1.2-style live migration, SPEC §3.1 and §7 item 10): the
domain gets the lowest fully free cores, ceil(vcpus / strands per core) of them; it uses their first `vcpus`
strands and the rest are returned as reserved: held, unusable by anyone until the domain reboots.  Strands
reserved this way are never used, by their domain or anyone else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ldoms.binding.held import holdings
from ldoms.errors import ResourceError
from ldoms.model.domain import DomainConfig
from ldoms.model.machine import Machine


@dataclass(frozen=True, slots=True)
class CpuChoice:
    strands: tuple[int, ...]
    maus: tuple[int, ...]
    reserved: tuple[int, ...] = ()


def choose_cpu(
    machine: Machine,
    config: DomainConfig,
    *,
    held_strands: Sequence[int] = (),
    held_maus: Sequence[int] = (),
    reserved: Sequence[int] = (),
    full_cores: bool = False,
) -> CpuChoice:
    """Strands and MAUs for `config`, keeping `held_*` (what the domain holds now) where possible.

    `reserved`: strands the domain holds but may not use.  `full_cores`: bind whole cores whatever
    `config.whole_core` says, reserving the strands beyond `config.vcpus` (a 1.2 live-migration target)."""
    if config.vcpus <= 0:
        raise ResourceError(
            f"LDom {config.name} has no virtual CPUs: give it some with 'ldm set-vcpu' before binding it"
        )
    if config.mau < 0:
        raise ResourceError(f"LDom {config.name}: invalid MAU count {config.mau}")
    h = holdings(machine, exclude=config.name)
    plat = machine.platform
    own = set(reserved)
    avail = {s for c in plat.cores for s in c.strands if s not in h.strands and s not in own}
    free_mau = {m.id for m in plat.maus if m.id not in h.maus}
    held_set = set(held_strands) & avail
    held_m = sorted(set(held_maus) & free_mau)
    if full_cores and not config.whole_core:
        n = config.vcpus
        cores = -(-n // plat.strands_per_core)
        as_cores = replace(config, vcpus=cores, whole_core=True, max_cores=0)
        got = _whole_cores(machine, as_cores, avail, held_set, held_m, free_mau - set(held_m))
        # Core order: the first n strands touch every chosen core, so every MAU keeps a strand of its core.
        return CpuChoice(strands=got.strands[:n], maus=got.maus, reserved=got.strands[n:])
    if config.whole_core:
        return _whole_cores(machine, config, avail, held_set, held_m, free_mau - set(held_m))
    return _strands(machine, config, avail, held_set, held_m, free_mau - set(held_m))


def _strands(
    machine: Machine,
    config: DomainConfig,
    avail: set[int],
    held: set[int],
    held_maus: list[int],
    free_maus: set[int],
) -> CpuChoice:
    plat = machine.platform
    host, name, n, m = machine.host_name, config.name, config.vcpus, config.mau
    core = plat.core_of
    free = sorted(avail - held)
    if n > len(held) + len(free):
        raise ResourceError(f"not enough free strands on {host}: need {n - len(held)}, have {len(free)}")

    # MAUs: keep the lowest held ones, then add on held cores, then on cores with a free strand.
    keep = held_maus[:m]
    held_cores = {core(s) for s in held}
    free_cores = {core(s) for s in free}
    mau_core = {mu.id: mu.core for mu in plat.maus}
    if m > len(keep) + len(free_maus):
        raise ResourceError(
            f"not enough free MAUs on {host} for LDom {name}: need {m}, have {len(keep) + len(free_maus)}"
        )
    usable = sorted(
        (mid for mid in free_maus if mau_core[mid] in held_cores or mau_core[mid] in free_cores),
        key=lambda mid: (mau_core[mid] not in held_cores, mau_core[mid]),
    )
    extra = m - len(keep)
    if extra > len(usable):
        raise ResourceError(
            f"not enough free MAUs on cores with free strands on {host} for LDom {name}: need {m}, "
            f"have {len(keep) + len(usable)} (a MAU is usable only with a strand of its core)"
        )
    maus = sorted(keep + usable[:extra])
    pinned_cores = sorted({mau_core[mid] for mid in maus})
    if len(pinned_cores) > n:
        raise ResourceError(
            f"LDom {name}: {m} MAUs need strands on {len(pinned_cores)} cores, but only {n} virtual CPUs "
            "are requested (a MAU is usable only with a strand of its core)"
        )

    # One strand on each MAU core (a held one if any), then held strands, then free ones.
    chosen: list[int] = []
    for c in pinned_cores:
        on_core = sorted(s for s in held if core(s) == c) or sorted(s for s in free if core(s) == c)
        chosen.append(on_core[0])
    chosen.extend(sorted(held - set(chosen))[: n - len(chosen)])
    if len(chosen) < n:
        used_cores = {core(s) for s in chosen} | held_cores
        rest = sorted((s for s in free if s not in chosen), key=lambda s: (core(s) not in used_cores, s))
        chosen.extend(rest[: n - len(chosen)])
    return CpuChoice(strands=tuple(sorted(chosen)), maus=tuple(maus))


def _whole_cores(
    machine: Machine,
    config: DomainConfig,
    avail: set[int],
    held: set[int],
    held_maus: list[int],
    free_maus: set[int],
) -> CpuChoice:
    plat = machine.platform
    host, name, n, m = machine.host_name, config.name, config.vcpus, config.mau
    if config.max_cores and n > config.max_cores:
        raise ResourceError(
            f"LDom {name}: {n} whole cores requested, more than its max-cores constraint "
            f"of {config.max_cores}"
        )
    mau_core = {mu.id: mu.core for mu in plat.maus}
    mau_of = {mu.core: mu.id for mu in plat.maus}
    held_cores = [c.id for c in plat.cores if set(c.strands) <= held]
    free_cores = [c.id for c in plat.cores if set(c.strands) <= avail and c.id not in held_cores]
    if n > len(held_cores) + len(free_cores):
        raise ResourceError(
            f"not enough free whole cores on {host}: need {n - len(held_cores)}, have {len(free_cores)}"
        )
    if m > n:
        raise ResourceError(
            f"LDom {name}: {m} MAUs need strands on {m} cores, but only {n} whole cores are requested "
            "(a MAU is usable only with a strand of its core)"
        )
    if m > len(held_maus) + len(free_maus):
        raise ResourceError(
            f"not enough free MAUs on {host} for LDom {name}: need {m}, "
            f"have {len(held_maus) + len(free_maus)}"
        )
    # Keep held cores, those carrying a held MAU first; keep the MAUs on the kept cores.
    with_mau = {mau_core[mid] for mid in held_maus}
    kept = sorted(held_cores, key=lambda c: (c not in with_mau, c))[:n]
    maus = [mid for mid in held_maus if mau_core[mid] in kept][:m]
    maus += sorted(mid for mid in free_maus if mau_core[mid] in kept)[: m - len(maus)]
    # New cores: while MAUs are still wanted, fully free cores with a free MAU first.
    want = m - len(maus)
    new_needed = n - len(kept)
    with_free_mau = [c for c in free_cores if mau_of.get(c) in free_maus]
    if want > min(new_needed, len(with_free_mau)):
        raise ResourceError(
            f"not enough free MAUs on free whole cores on {host} for LDom {name}: need {m}, "
            f"have {len(maus) + min(new_needed, len(with_free_mau))}"
        )
    first = with_free_mau[:want]
    rest = [c for c in free_cores if c not in first][: new_needed - want]
    maus += [mau_of[c] for c in first]
    cores = sorted(kept + first + rest)
    by_id = {c.id: c for c in plat.cores}
    strands = tuple(s for c in cores for s in by_id[c].strands)
    return CpuChoice(strands=strands, maus=tuple(sorted(maus)))
