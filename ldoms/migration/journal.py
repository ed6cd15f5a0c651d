"""Durable migration journals: what each side knows about each migration, one small file per side.

Theory of operation.  `MigrationConnection.journal()` (ldoms.migration.protocol) says which phase a side has
reached and, once known, the decision it took; `protocol.outcome` turns a phase into what to do with this
side's copy of the domain if the link dies.  The engines save it here *before writing the bytes of every
send* (write-ahead: the peer never learns of a phase our disk does not know) and after each received event,
so that:

* after an ldmd crash, start-up recovery applies `Journal.recovery()` to every journal without a decision
  (`ldoms.daemon.migrate_recovery`);
* the target answers a source's RecoveryQuery from its journal (SPEC 4.3);
* `ldm cancel-operation migration` on a source left in the error state finds the target to ask.

A record is `{"journal": Journal.to_dict(), "extra": {...}}`: `extra` holds what recovery needs beyond the
protocol's journal (the target as the admin typed it, the recovery token both sides share, whether a
reservation was made, the guest's start time).  Files live in HOME/migrations, mode 0600, replaced
atomically (write, fsync, rename, fsync the directory), so a crash leaves the old or the new record, never a
mix.  A file's name is a hash of the migration id, so a peer's id never becomes a path.  Saving an unchanged
record is a no-op (no fsync per page batch).  Settled records are pruned beyond `KEEP` files.

The staging memory images of incoming active migrations (`image_path`) live in `HOME/guests/.incoming`: on
the guests' filesystem, so that moving an image between the guests directory and the staging area is always
a rename (a guests directory mounted from another filesystem made it fail with EXDEV, and a crashed target
then lost the image it had promised to keep), and in a subdirectory, which ldmd's guest recovery at start
never takes for a dead guest's leftover (it looks at the guests directory's own files only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldoms.errors import OpExecError
from ldoms.migration.events import Decision, InvalidEvent, Role
from ldoms.migration.protocol import Journal
from ldoms.peer.errors import PeerConfigError
from ldoms.peer.files import atomic_write

log = logging.getLogger("ldmd.migration.journal")

DIR_NAME = "migrations"
STAGING_DIR = ".incoming"  # in the guests directory (see the module docstring)
KEEP = 200  # settled records kept for RecoveryQuery answers and post-mortems; the oldest go first


class JournalError(OpExecError):
    code = "journal"


@dataclass(frozen=True, slots=True)
class JournalRecord:
    journal: Journal
    extra: dict[str, Any] = field(default_factory=dict)
    mtime: float = 0.0

    @property
    def settled(self) -> bool:
        return self.journal.decision is not None


def _key(migration_id: str, role: Role) -> str:
    digest = hashlib.sha256(migration_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"{Role(role).value}-{digest}"


class JournalStore:
    def __init__(self, directory: Path, images: Path | None = None) -> None:
        self.dir = directory
        self.images = directory if images is None else images  # where incoming images are staged
        self._last: dict[str, str] = {}  # file key -> text last written (skip unchanged saves)
        self._lock = threading.Lock()

    @classmethod
    def in_home(cls, home: Path) -> JournalStore:
        return cls(home / DIR_NAME, home / "guests" / STAGING_DIR)

    def _ensure(self) -> None:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise JournalError(f"migration journal directory {self.dir}: {e.strerror or e}") from e

    def path(self, migration_id: str, role: Role) -> Path:
        return self.dir / f"{_key(migration_id, role)}.json"

    def image_path(self, migration_id: str) -> Path:
        """Where an incoming active migration stages the guest's memory image (the directory is made)."""
        try:
            self.images.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise JournalError(f"incoming image directory {self.images}: {e.strerror or e}") from e
        return self.images / f"{_key(migration_id, Role.TARGET)}.image"

    # ------------------------------------------------------------------ writing
    def save(self, journal: Journal, extra: dict[str, Any] | None = None) -> None:
        """Durably record `journal` (and `extra`, merged over what was recorded before)."""
        key = _key(journal.migration_id, journal.role)
        with self._lock:
            merged: dict[str, Any] = {}
            previous = self._last.get(key)
            if previous is not None:
                before = json.loads(previous)
                merged.update(before.get("extra", {}))
                settled = before.get("journal", {}).get("decision")
                if journal.decision is None and settled is not None:
                    # Once carried out, a decision stays recorded; later phases (DONE) only move the phase.
                    journal = with_phase(journal, decision=settled)
            merged.update(extra or {})
            text = json.dumps({"journal": journal.to_dict(), "extra": merged}, sort_keys=True)
            if text == previous:
                return
            self._ensure()
            try:
                atomic_write(self.path(journal.migration_id, journal.role), text.encode())
            except PeerConfigError as e:
                raise JournalError(f"cannot record the migration journal: {e}") from e
            self._last[key] = text

    def settle(self, record_or_journal: JournalRecord | Journal, decision: Any) -> None:
        """Record the decision taken (after carrying it out: re-applying a decision is idempotent)."""
        j = record_or_journal.journal if isinstance(record_or_journal, JournalRecord) else record_or_journal
        self.save(Journal(**{**_fields(j), "decision": decision}))

    def remove(self, migration_id: str, role: Role) -> None:
        with self._lock:
            self._last.pop(_key(migration_id, role), None)
            self.path(migration_id, role).unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading
    def _read(self, path: Path) -> JournalRecord | None:
        try:
            text = path.read_text()
            doc = json.loads(text)
            journal = Journal.from_dict(doc["journal"])
            extra = doc.get("extra", {})
            if not isinstance(extra, dict):
                raise ValueError("extra is not an object")
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, InvalidEvent) as e:
            log.error("ignoring the unreadable migration journal %s: %s", path, e)
            return None
        with self._lock:
            self._last.setdefault(path.stem, json.dumps(doc, sort_keys=True))
        return JournalRecord(journal=journal, extra=extra, mtime=mtime)

    def load(self, migration_id: str, role: Role) -> JournalRecord | None:
        return self._read(self.path(migration_id, role))

    def all(self) -> list[JournalRecord]:
        """Every readable record, oldest first."""
        if not self.dir.is_dir():
            return []
        out = [r for p in sorted(self.dir.glob("*.json")) if (r := self._read(p)) is not None]
        return sorted(out, key=lambda r: r.mtime)

    def prune(self, keep: int = KEEP) -> None:
        """Remove the oldest settled records beyond `keep` (unsettled ones, and sources left in the error
        state, which `cancel-operation migration` still needs, are never removed)."""
        settled = [r for r in self.all() if r.settled and r.journal.decision is not Decision.SOURCE_ERROR]
        for r in settled[: max(0, len(settled) - keep)]:
            self.remove(r.journal.migration_id, r.journal.role)
            if r.journal.role is Role.TARGET:
                self.image_path(r.journal.migration_id).unlink(missing_ok=True)


def _fields(j: Journal) -> dict[str, Any]:
    return {
        "migration_id": j.migration_id,
        "role": j.role,
        "phase": j.phase,
        "source_domain": j.source_domain,
        "target_domain": j.target_domain,
        "peer": j.peer,
        "mode": j.mode,
        "decision": j.decision,
    }


def with_phase(j: Journal, **changes: Any) -> Journal:
    """A copy of `j` with some fields changed (Journal is frozen and validated)."""
    return Journal(**{**_fields(j), **changes})


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
