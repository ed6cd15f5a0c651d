"""Target-side CPU rules: processor type, clock and `cpu-arch` class; free strands; whole cores; crypto
units (SPEC §3.1 CPU and Crypto units, §3.2 CPU, §2.6 cross-CPU).

Strand counts use the target's topology: under the 1.2 rules a live-migrated domain is given full cores, so
it needs ceil(strands / strands-per-core) cores whose every strand is free.
"""

from __future__ import annotations

from collections.abc import Iterator

from ldoms.binding import free_maus, free_strands
from ldoms.checks.compat import cross_cpu_problem
from ldoms.checks.facts import MigrationMode, SourceFacts, TargetFacts
from ldoms.checks.failure import CheckFailure, Code, Severity, Side
from ldoms.model.domain import DomainState
from ldoms.model.machine import Machine


def _fail(code: Code, message: str, **kw: str) -> CheckFailure:
    return CheckFailure(code=code, message=message, side=Side.TARGET, **kw)


def free_whole_cores(machine: Machine) -> int:
    free = set(free_strands(machine))
    return sum(1 for c in machine.platform.cores if set(c.strands) <= free)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------- type, clock, class (active only)
def check_cpu_type_exact(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """1.2/1.3: the same processor type at the same frequency (before 2.2 there was no cpu-arch)."""
    sp, tp = src.platform, tgt.platform
    if sp.cpu_type != tp.cpu_type:
        yield _fail(
            Code.CPU_TYPE,
            f"CPU type mismatch: {src.host_name} has {sp.cpu_type} but {tgt.host_name} has {tp.cpu_type}: "
            "live migration needs the same processor type on both machines",
            resource="cpu",
            observed=tp.cpu_type,
            required=sp.cpu_type,
            remedy="migrate the domain bound or inactive (no runtime state crosses)",
        )
    if sp.cpu_mhz != tp.cpu_mhz:
        yield _fail(
            Code.CPU_FREQ,
            f"CPU frequency mismatch: {src.host_name} runs at {sp.cpu_mhz} MHz but {tgt.host_name} at "
            f"{tp.cpu_mhz} MHz: live migration needs the same clock frequency on both machines",
            resource="cpu",
            observed=f"{tp.cpu_mhz} MHz",
            required=f"{sp.cpu_mhz} MHz",
            remedy="migrate the domain bound or inactive",
        )


def check_cpu_arch(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """3.x: compatibility by the domain's cpu-arch migration class."""
    arch = src.domain.config.cpu_arch
    problem = cross_cpu_problem(arch, src.platform.cpu_type, tgt.platform.cpu_type)
    if problem:
        yield _fail(
            Code.CPU_TYPE,
            f"LDom {src.name} (cpu-arch={arch}) cannot be live-migrated from {src.platform.cpu_type} on "
            f"{src.host_name} to {tgt.platform.cpu_type} on {tgt.host_name}: {problem}",
            resource="cpu",
            observed=f"{src.platform.cpu_type} -> {tgt.platform.cpu_type}",
            required=f"a target compatible with cpu-arch={arch}",
            remedy="set cpu-arch=generic while the domain is bound or inactive, or migrate it bound",
        )


# ---------------------------------------------------------------- strands and cores
def _need(src: SourceFacts, tgt: TargetFacts) -> tuple[int, int]:
    """(strands, whole cores) the target must supply; whole cores 0 when not required."""
    spc = tgt.platform.strands_per_core
    cfg = src.domain.config
    if src.state == DomainState.ACTIVE:
        n = src.strands
        cores = _ceil_div(n, spc) if (src.legacy_cpu_rules or cfg.whole_core) else 0
        return n, cores
    if cfg.whole_core:  # bound: the constraints, with vcpus counting cores
        return cfg.vcpus * spc, cfg.vcpus
    return cfg.vcpus, 0


def check_strands(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    n, _ = _need(src, tgt)
    have = len(free_strands(tgt.machine))
    if n > have:
        yield _fail(
            Code.STRANDS,
            f"not enough free strands on {tgt.host_name}: need {n}, have {have}",
            resource="cpu",
            observed=f"{have} free strands",
            required=f"{n} strands for LDom {src.name}",
            remedy=f"free strands on {tgt.host_name} (ldm set-vcpu, stop or unbind domains)",
        )


def check_whole_cores(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    _, cores = _need(src, tgt)
    if not cores:
        return
    have = free_whole_cores(tgt.machine)
    if cores > have:
        why = (
            "the domain has the whole-core constraint"
            if src.domain.config.whole_core
            else "a live-migrated domain is given full cores"
        )
        yield _fail(
            Code.WHOLE_CORE,
            f"not enough free whole cores on {tgt.host_name}: need {cores}, have {have} ({why})",
            resource="cpu",
            observed=f"{have} fully free cores",
            required=f"{cores} fully free cores for LDom {src.name}",
            remedy=f"free whole cores on {tgt.host_name}",
        )


def check_target_crypto(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """Crypto units on the target: a shortfall is only a warning when 1.3+ re-adds what is available."""
    m = src.maus if src.state == DomainState.ACTIVE else src.domain.config.mau
    if not m:
        return
    have = len(free_maus(tgt.machine))
    if have >= m:
        return
    readd = src.state == DomainState.ACTIVE and src.mode.at_least(MigrationMode.V1_3) and src.guest.crypto_dr
    if readd:
        yield CheckFailure(
            code=Code.CRYPTO,
            message=f"LDom {src.name} will have {have} of its {m} crypto unit(s) on {tgt.host_name}: "
            f"only {have} are free there",
            side=Side.TARGET,
            severity=Severity.WARNING,
            resource="crypto",
            observed=f"{have} free",
            required=str(m),
        )
    else:
        yield _fail(
            Code.CRYPTO,
            f"not enough free crypto units on {tgt.host_name}: need {m}, have {have}",
            resource="crypto",
            observed=f"{have} free crypto units",
            required=f"{m} for LDom {src.name}",
            remedy=f"free crypto units on {tgt.host_name}, or 'ldm set-mau' on the domain",
        )
