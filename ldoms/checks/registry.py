"""Which rules run, and running them all.

Theory of operation.  A `Rule` names one generator function, the side that runs it (the source runs its
rules on its own facts; the target runs its rules on the facts the source sent plus its own machine), the
source domain states it applies to, and the migration modes it applies to.  The tables below are the whole
policy (SPEC §3.1 active, §3.2 bound/inactive, §3.3):

- active: everything;
- bound: no runtime rules (CPU type, shrink, crypto shrink, memory RAs, vdsdev options, firmware features),
  but CPU, memory (any layout) and virtual I/O constraints must be satisfiable on the target;
- inactive: only the general rules (names, states, locks, policies, firmware minimum, I/O domains).

`run_source_checks` / `run_target_checks` run every applicable rule and collect every result.  A rule that
raises (a bug, or facts it cannot read) is reported as an `internal` failure naming it, and the other rules
still run: the report is never silently shorter, and an unchecked migration is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from ldoms.checks import cpu, memory, source, target, vio
from ldoms.checks.facts import MigrationMode, SourceFacts, TargetFacts
from ldoms.checks.failure import CheckFailure, CheckReport, Code, Side
from ldoms.model.domain import DomainState

_A = frozenset({DomainState.ACTIVE})
_B = frozenset({DomainState.BOUND})
_AB = frozenset({DomainState.ACTIVE, DomainState.BOUND})
_ALL = frozenset(DomainState)
_MODES = frozenset(MigrationMode)
_PRE_2_2 = frozenset({MigrationMode.V1_2, MigrationMode.V1_3})  # before cpu-arch (2.2)
_V3 = frozenset({MigrationMode.V3})


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    side: Side
    fn: Callable[..., Iterable[CheckFailure]]  # (src) on the source side, (src, tgt) on the target side
    states: frozenset[DomainState] = _ALL
    modes: frozenset[MigrationMode] = _MODES

    def applies(self, state: DomainState, mode: MigrationMode) -> bool:
        return state in self.states and mode in self.modes


def _src(
    name: str,
    fn: Callable[[SourceFacts], Iterable[CheckFailure]],
    states: frozenset[DomainState] = _ALL,
    modes: frozenset[MigrationMode] = _MODES,
) -> Rule:
    return Rule(name, Side.SOURCE, fn, states, modes)


def _tgt(
    name: str,
    fn: Callable[[SourceFacts, TargetFacts], Iterable[CheckFailure]],
    states: frozenset[DomainState] = _ALL,
    modes: frozenset[MigrationMode] = _MODES,
) -> Rule:
    return Rule(name, Side.TARGET, fn, states, modes)


SOURCE_RULES: tuple[Rule, ...] = (
    _src("control-domain", source.check_control_domain),
    _src("service-domain", source.check_service_domain),
    _src("physical-io", source.check_physical_io),
    _src("already-migrating", source.check_already_migrating),
    _src("source-delayed-reconfig", source.check_source_delayed_reconfig),
    _src("source-power-policy", source.check_source_power_policy),
    _src("source-firmware", source.check_source_firmware),
    _src("guest-os", source.check_guest_os, _A),
    _src("openboot", source.check_openboot, _A),
    _src("cpu-dr-shrink", source.check_cpu_dr_shrink, _A),
    _src("crypto", source.check_crypto, _A),
)

TARGET_RULES: tuple[Rule, ...] = (
    _tgt("target-name", target.check_target_name),
    _tgt("target-migrating", target.check_target_migrating),
    _tgt("target-delayed-reconfig", target.check_target_delayed_reconfig),
    _tgt("target-power-policy", target.check_target_power_policy),
    _tgt("target-firmware", target.check_target_firmware),
    _tgt("firmware-features", target.check_firmware_features, _A),
    _tgt("firmware-family", target.check_firmware_family, _A),
    _tgt("cpu-type", cpu.check_cpu_type_exact, _A, _PRE_2_2),
    _tgt("cpu-arch", cpu.check_cpu_arch, _A, _V3),
    _tgt("strands", cpu.check_strands, _AB),
    _tgt("whole-cores", cpu.check_whole_cores, _AB),
    _tgt("target-crypto", cpu.check_target_crypto, _AB),
    _tgt("memory-free", memory.check_memory_free, _AB),
    _tgt("memory-fit", memory.check_memory_fit, _A),
    _tgt("named-mblocks", memory.check_named_mblocks, _B),
    _tgt("vdisks", vio.check_vdisks, _AB),
    _tgt("vdsdev-options", vio.check_vdsdev_options, _A),
    _tgt("vsw", vio.check_vsw, _AB),
    _tgt("vcc", vio.check_vcc, _AB),
    _tgt("console-group", vio.check_console_group, _AB),
    _tgt("mac-collisions", vio.check_mac_collisions, _AB),
    _tgt("niu-hybrid", vio.check_niu_hybrid, _AB),
)


def source_rules(state: DomainState, mode: MigrationMode) -> tuple[Rule, ...]:
    return tuple(r for r in SOURCE_RULES if r.applies(state, mode))


def target_rules(state: DomainState, mode: MigrationMode) -> tuple[Rule, ...]:
    return tuple(r for r in TARGET_RULES if r.applies(state, mode))


def _run(rule: Rule, *facts: object) -> list[CheckFailure]:
    try:
        # Materialise inside the try: a generator raises only while it is being consumed.
        return [f if f.side == rule.side else replace(f, side=rule.side) for f in rule.fn(*facts)]
    except Exception as e:
        return [
            CheckFailure(
                code=Code.INTERNAL,
                message=f"migration check {rule.name} could not run: {type(e).__name__}: {e}",
                side=rule.side,
                resource=rule.name,
            )
        ]


def run_source_checks(src: SourceFacts) -> CheckReport:
    """Every source-side rule for the domain's state and the migration mode."""
    results: list[CheckFailure] = []
    for rule in source_rules(src.state, src.mode):
        results.extend(_run(rule, src))
    return CheckReport.of(results)


def run_target_checks(src: SourceFacts, tgt: TargetFacts) -> CheckReport:
    """Every target-side rule, judged on the target's own machine."""
    results: list[CheckFailure] = []
    for rule in target_rules(src.state, src.mode):
        results.extend(_run(rule, src, tgt))
    return CheckReport.of(results)


def run_all_checks(src: SourceFacts, tgt: TargetFacts) -> CheckReport:
    """Source then target checks, as `ldm migrate-domain -n` prints them (for tests and single-host use)."""
    return run_source_checks(src).merged(run_target_checks(src, tgt))
