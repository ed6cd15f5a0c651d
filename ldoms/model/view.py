"""What `ldm` receives to print a listing: the host's state plus the runtime facts that are not state
(the clock, guest CPU utilisation, migration progress).  Formatting is a pure function of this value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ldoms.model.machine import Machine


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationStatus:
    """A migration in progress (or ended in error) as `ldm list -o status` shows it."""

    domain: str
    role: str  # "source" or "target"
    peer: str  # the other host's name
    progress: int = 0  # 0..100, never decreasing
    error: bool = False
    suspended: bool = False  # source only: the guest is suspended (final copy); `ldm list` says `suspended`


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationRecord:
    """A finished migration as this host saw it: kept in the store, listed by `ldm list-migrations`."""

    id: str  # the migration id both hosts journal
    domain: str  # the domain's name on this host (source name on the source, target name on the target)
    role: str  # "source" or "target"
    peer: str  # the other host's name
    kind: str  # "active", "bound" or "inactive"
    started_at: float  # wall-clock seconds
    ended_at: float
    outcome: str  # "completed", "failed", "cancelled", "error" (flag e), "recovered"
    reason: str = ""  # why it failed or was cancelled, one line
    downtime_s: float = 0.0  # the pause the guest itself observed (active migrations)
    bytes_sent: int = 0  # data-plane and control bytes of memory moved
    memory_bytes: int = 0  # the domain's memory size
    rounds: int = 0
    channels: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class HostView:
    machine: Machine
    now: float  # wall-clock seconds; UPTIME = now - domain.started_at
    util: dict[str, float] = field(default_factory=dict)  # domain name -> percent of its strands' capacity
    migrations: tuple[MigrationStatus, ...] = ()
    history: tuple[MigrationRecord, ...] = ()  # newest last; bounded by the daemon
    ldm_version: str = "1.2"
