"""What both migration engines need: the host they change, the guest runtime, and small model helpers.

The engines run in their own threads (one per migration on the source, one per peer connection on the
target) and change the host only through `HostLike.change(fn)`: `fn` runs under the host's lock, sees the
current machine and the `migrating` registry (the names `ldoms.ops` refuses to touch, SPEC 3.1 "operations on
other domains"), and returns the new machine, which is committed in one transaction.  So an engine's check
and its change are one atomic step, exactly like an operation's.

Runtime-only changes (the migration flag, the guest pid) keep the SP configuration's "modified" mark as it
was, so a migration that fails leaves the machine equal to what it was; only the moves themselves (the
domain leaves the source, arrives on the target) mark it modified (SPEC 7.19).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ldoms.checks.facts import GuestConditions, GuestProfile
from ldoms.checks.failure import CheckFailure
from ldoms.hv.files import PidRecord
from ldoms.migration.journal import JournalStore
from ldoms.migration.transport import MigrationPolicy
from ldoms.model.domain import Domain
from ldoms.model.machine import Machine

LDM_VERSION = "1.2"


class HostLike(Protocol):
    machine: Machine
    migrating: dict[str, str]

    def change(self, fn: Callable[[Machine], Machine]) -> Machine: ...


class GuestLike(Protocol):
    def profile(self, dom: Domain) -> tuple[GuestProfile, GuestConditions]: ...

    def memory_path(self, name: str) -> Path: ...

    def suspend(self, name: str) -> bytes: ...

    def resume(self, name: str) -> None: ...

    def start_incoming(self, dom: Domain, image: Path, cpu_state: bytes) -> PidRecord: ...

    def running(self, name: str) -> bool: ...

    def destroy(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class EngineDeps:
    host: HostLike
    home: Path
    journals: JournalStore
    guests: GuestLike
    policy: MigrationPolicy


def put_domain(machine: Machine, dom: Domain) -> Machine:
    """Replace a domain in place, the SP configuration's "modified" mark untouched (runtime facts)."""
    return replace(machine, domains=tuple(dom if d.name == dom.name else d for d in machine.domains))


def add_domain(machine: Machine, dom: Domain) -> Machine:
    """Append a domain (a migration's shell), the "modified" mark untouched until the move commits."""
    return replace(machine, domains=(*machine.domains, dom))


def drop_domain(machine: Machine, name: str) -> Machine:
    return replace(machine, domains=tuple(d for d in machine.domains if d.name != name))


def finding(f: CheckFailure) -> dict[str, str]:
    """A check failure as `-n --json` shows it."""
    return {
        "code": str(f.code),
        "message": f.message,
        "side": str(f.side),
        "resource": f.resource,
        "observed": f.observed,
        "required": f.required,
        "remedy": f.remedy,
        "severity": str(f.severity),
    }
