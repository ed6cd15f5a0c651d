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
class HostView:
    machine: Machine
    now: float  # wall-clock seconds; UPTIME = now - domain.started_at
    util: dict[str, float] = field(default_factory=dict)  # domain name -> percent of its strands' capacity
    migrations: tuple[MigrationStatus, ...] = ()
    ldm_version: str = "1.2"
