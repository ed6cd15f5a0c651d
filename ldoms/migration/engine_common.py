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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ldoms.binding import remember_departed
from ldoms.checks.facts import GuestConditions, GuestProfile
from ldoms.checks.failure import CheckFailure
from ldoms.errors import LdmError
from ldoms.hv.files import PidRecord
from ldoms.migration.journal import JournalStore
from ldoms.migration.protocol import MigrationConnection
from ldoms.migration.transport import MigrationPolicy
from ldoms.migration.vocab import Decision
from ldoms.model.domain import Domain
from ldoms.model.machine import Machine
from ldoms.model.view import MigrationRecord

log = logging.getLogger("ldmd.migration")

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

    # live migration (issue 4)
    def dirty_path(self, name: str) -> Path: ...

    def throttle(self, name: str, percent: int) -> None: ...

    def status(self, name: str) -> dict[str, Any]: ...

    def start_standby(self, dom: Domain) -> PidRecord: ...

    def restore(self, name: str, cpu_state: bytes) -> float | None: ...

    def pid(self, name: str) -> int: ...


@dataclass(frozen=True, slots=True)
class EngineDeps:
    host: HostLike
    home: Path
    journals: JournalStore
    guests: GuestLike
    policy: MigrationPolicy
    history: Callable[[MigrationRecord], None] | None = None  # where finished migrations are recorded

    def remember(self, record: MigrationRecord) -> None:
        if self.history is None:
            return
        try:
            self.history(record)
        except Exception:  # the record is a report: losing it must not change the migration's outcome
            log.exception("recording migration %s failed", record.id)


def put_domain(machine: Machine, dom: Domain) -> Machine:
    """Replace a domain in place, the SP configuration's "modified" mark untouched (runtime facts)."""
    return replace(machine, domains=tuple(dom if d.name == dom.name else d for d in machine.domains))


def add_domain(machine: Machine, dom: Domain) -> Machine:
    """Append a domain (a migration's shell), the "modified" mark untouched until the move commits."""
    return replace(machine, domains=(*machine.domains, dom))


def drop_domain(machine: Machine, name: str) -> Machine:
    return replace(machine, domains=tuple(d for d in machine.domains if d.name != name))


def depart_domain(machine: Machine, name: str) -> Machine:
    """Remove the source copy of a domain that now lives on its target: its MACs are remembered, so this
    host's automatic pool does not hand them out again (they would collide there)."""
    dom = machine.find(name)
    kept = drop_domain(machine, name)
    return kept if dom is None else remember_departed(kept, dom)


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


def make_record(
    *,
    migration_id: str,
    domain: str,
    role: str,
    peer: str,
    kind: str,
    started_at: float,
    outcome: str,
    reason: str = "",
    downtime_s: float = 0.0,
    bytes_sent: int = 0,
    memory_bytes: int = 0,
    rounds: int = 0,
    channels: int = 0,
    ended_at: float | None = None,
) -> MigrationRecord:
    """A finished migration as this host saw it (the reason kept to one line)."""
    return MigrationRecord(
        id=migration_id,
        domain=domain,
        role=role,
        peer=peer,
        kind=kind,
        started_at=started_at,
        ended_at=time.time() if ended_at is None else ended_at,
        outcome=outcome,
        reason=" ".join(reason.split())[:1000],
        downtime_s=max(0.0, float(downtime_s)),
        bytes_sent=bytes_sent,
        memory_bytes=memory_bytes,
        rounds=rounds,
        channels=channels,
    )


def settle_journal(journals: JournalStore, conn: MigrationConnection, decision: Decision, name: str) -> None:
    """Record how a migration ended in its journal (both sides); a failure to write is logged, not raised:
    the migration has ended either way, and recovery reads the journal as it is."""
    try:
        journals.settle(conn.journal(), decision)
        journals.prune()
    except LdmError as e:
        log.error("recording the end of the migration of LDom %s failed: %s", name, e)
