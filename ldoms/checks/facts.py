"""The facts the migration checks judge: `SourceFacts` (gathered on the source and sent to the target in
the protocol's CHECK message) and `TargetFacts` (the target's own machine).  Plain frozen dataclasses,
encoded with `ldoms.model.codec`.

`MigrationMode` is the version switch for rules the versions disagree on (SPEC §3.1, §8):

- `1.2`  (default): same CPU type and clock; the guest is shrunk to one strand (CPU DR) and given whole cores;
  a domain with crypto units and more than one strand cannot be shrunk; memory blocks keep their number and
  sizes; LDoms 1.2 message wording.
- `1.3`: as 1.2, but a guest with crypto DR has its crypto units removed before and re-added after.
- `3.x`: CPU compatibility by `cpu-arch` class; guests with the latest migration support (Solaris 10 1/13)
  escape the single-strand/whole-core rules; guests that support it may have memory blocks split at their
  effective largest page size; 3.2 message wording.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ldoms.model.domain import Domain, DomainState, Vds, VdsVolume
from ldoms.model.machine import Machine
from ldoms.model.platform import Platform

OS_RUNNING_SOFTSTATE = "Solaris running"


class MigrationMode(enum.StrEnum):
    V1_2 = "1.2"
    V1_3 = "1.3"
    V3 = "3.x"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: MigrationMode) -> bool:
        return self.rank >= other.rank


_RANK = {MigrationMode.V1_2: 0, MigrationMode.V1_3: 1, MigrationMode.V3: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestProfile:
    """What the guest OS supports, as it reports it (SPEC §3.1; DESIGN §1 "OS profile")."""

    os_name: str = ""  # e.g. "Solaris 10 10/09", for messages
    live_migration: bool = True  # the OS can be migrated while running at all
    latest_migration: bool = False  # 3.x, Solaris 10 1/13+: no shrink, no whole cores, CPU DR kept
    cpu_dr: bool = True  # CPU dynamic reconfiguration (needed to shrink to one strand under the 1.2 rules)
    crypto_dr: bool = False  # crypto-unit DR (1.3+: units removed before and re-added after)
    mem_split: bool = False  # 3.x, Solaris 11.3: memory blocks may be split during migration
    effective_max_pagesize: int = 0  # largest page the domain uses; 0 = the hardware largest page size


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestConditions:
    """Conditions inside the guest that make a CPU-DR removal fail (SPEC §3.1 CPU)."""

    bound_processes: int = 0  # processes bound to CPUs
    processor_sets: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceFacts:
    host_name: str
    platform: Platform  # the source platform: CPU type and clock, firmware, hardware page size
    domain: Domain  # constraints, bindings, state, softstate, migration flag
    target_name: str = ""  # name on the target; "" = the same name
    mode: MigrationMode = MigrationMode.V1_2
    guest: GuestProfile = GuestProfile()
    conditions: GuestConditions = GuestConditions()
    # The source vds services and volumes the domain's vdisks use (their options and mpgroup are compared).
    vds: tuple[Vds, ...] = ()
    delayed_reconfig: tuple[str, ...] = ()  # source-host domains with a delayed reconfig pending
    power_policy: str = "performance"
    migrations_in_progress: tuple[str, ...] = ()  # domains of the source host being migrated now

    @property
    def name(self) -> str:
        return self.domain.name

    @property
    def name_on_target(self) -> str:
        return self.target_name or self.domain.name

    @property
    def state(self) -> DomainState:
        return self.domain.state

    @property
    def os_running(self) -> bool:
        """False in OpenBoot or the kernel debugger (or before the OS reported in)."""
        return self.domain.softstate.strip().lower() == OS_RUNNING_SOFTSTATE.lower()

    @property
    def legacy_cpu_rules(self) -> bool:
        """The 1.2 CPU rules (shrink to one strand, whole cores) apply (SPEC §3.1 CPU, [3.x DOC])."""
        return not (self.mode == MigrationMode.V3 and self.os_running and self.guest.latest_migration)

    @property
    def strands(self) -> int:
        """Strands the domain holds (bound/active), else what its constraints ask for."""
        b = self.domain.bindings
        if b is not None and b.strands and self.state != DomainState.INACTIVE:
            return len(b.strands)
        cfg = self.domain.config
        return cfg.vcpus * self.platform.strands_per_core if cfg.whole_core else cfg.vcpus

    @property
    def maus(self) -> int:
        b = self.domain.bindings
        if b is not None and self.state != DomainState.INACTIVE:
            return len(b.maus)
        return self.domain.config.mau

    def volume(self, service: str, volume: str) -> VdsVolume | None:
        for svc in self.vds:
            if svc.name == service:
                for vol in svc.volumes:
                    if vol.name == volume:
                        return vol
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetFacts:
    machine: Machine  # the target host as it is now (platform, domains, power policy, delayed reconfig)
    migrations_in_progress: tuple[str, ...] = ()  # domains migrating to or from the target now

    @property
    def host_name(self) -> str:
        return self.machine.host_name

    @property
    def platform(self) -> Platform:
        return self.machine.platform

    @property
    def power_policy(self) -> str:
        return self.machine.power_policy

    @property
    def delayed_reconfig(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.machine.domains if d.delayed_reconfig)


def source_facts(
    machine: Machine,
    name: str,
    *,
    target_name: str = "",
    mode: MigrationMode = MigrationMode.V1_2,
    guest: GuestProfile | None = None,
    conditions: GuestConditions | None = None,
    migrations_in_progress: tuple[str, ...] = (),
) -> SourceFacts:
    """Gather the facts about domain `name` of the source `machine` (raises NotFoundError if it is absent)."""
    dom = machine.domain(name)
    used = {(vd.service, vd.volume) for vd in dom.config.vdisks}
    vds: list[Vds] = []
    for d in machine.domains:
        for svc in d.config.vds:
            vols = tuple(v for v in svc.volumes if (svc.name, v.name) in used)
            if vols:
                vds.append(Vds(name=svc.name, volumes=vols))
    return SourceFacts(
        host_name=machine.host_name,
        platform=machine.platform,
        domain=dom,
        target_name=target_name,
        mode=mode,
        guest=guest if guest is not None else GuestProfile(),
        conditions=conditions if conditions is not None else GuestConditions(),
        vds=tuple(vds),
        delayed_reconfig=tuple(d.name for d in machine.domains if d.delayed_reconfig),
        power_policy=machine.power_policy,
        migrations_in_progress=migrations_in_progress,
    )


def target_facts(machine: Machine, *, migrations_in_progress: tuple[str, ...] = ()) -> TargetFacts:
    return TargetFacts(machine=machine, migrations_in_progress=migrations_in_progress)
