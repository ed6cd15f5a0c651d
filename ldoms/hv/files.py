"""The files of one guest in the host's guests directory, and its pid file.

`NAME.spec.json` (written by ldmd: what to run), `NAME.mem` (memory image), `NAME.dirty` (dirty map: one
byte per page, shared with ldmd), `NAME.ctl` (control socket), `NAME.pid` (identity, written by the guest
when ready; an incoming guest adds the downtime it measured), `NAME.log` (the guest's stderr).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PidRecord:
    pid: int
    starttime: int  # clock ticks since boot (/proc/PID/stat field 22)
    domain: str
    # An incoming (migrated) guest's downtime in seconds: its first step's wall time minus the source's
    # suspend time.  Not part of the identity: the guest rewrites its pid file when it learns it.
    downtime: float | None = field(default=None, compare=False)


class GuestFiles:
    def __init__(self, directory: Path, domain: str) -> None:
        self.dir = directory
        self.domain = domain
        self.spec = directory / f"{domain}.spec.json"
        self.mem = directory / f"{domain}.mem"
        self.dirty = directory / f"{domain}.dirty"
        self.ctl = directory / f"{domain}.ctl"
        self.pid = directory / f"{domain}.pid"
        self.log = directory / f"{domain}.log"

    def write_pidfile(self, *, pid: int, starttime: int, domain: str, downtime: float | None = None) -> None:
        tmp = self.pid.with_name(self.pid.name + ".tmp")
        doc: dict[str, object] = {"pid": pid, "starttime": starttime, "domain": domain}
        if downtime is not None:
            doc["downtime"] = downtime
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.pid)  # atomic: a reader sees no pid file or a whole one

    def read_pidfile(self) -> PidRecord | None:
        """The guest's identity, or None if there is no pid file or it is unreadable."""
        try:
            doc = json.loads(self.pid.read_text())
            downtime = doc.get("downtime")
            return PidRecord(
                pid=int(doc["pid"]),
                starttime=int(doc["starttime"]),
                domain=str(doc["domain"]),
                downtime=None if downtime is None else float(downtime),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # a non-object is no record
            return None

    def remove_runtime(self, *, keep_memory: bool = False) -> None:
        """Remove what a running guest owns: memory image, dirty map, control socket, pid file.
        `keep_memory` spares the memory image (an incoming guest's image belongs to the migration receiver
        until the guest has come up)."""
        for p in (self.mem, self.dirty, self.ctl, self.pid, self.pid.with_name(self.pid.name + ".tmp")):
            if not (keep_memory and p == self.mem):
                p.unlink(missing_ok=True)

    def remove_all(self, *, keep_memory: bool = False) -> None:
        self.remove_runtime(keep_memory=keep_memory)
        self.spec.unlink(missing_ok=True)


def domains_with_files(directory: Path) -> set[str]:
    """Names of domains that have a pid file, a memory image or a dirty map in `directory`."""
    out: set[str] = set()
    if not directory.is_dir():
        return out
    for p in directory.iterdir():
        for suffix in (".pid", ".mem", ".dirty"):
            if p.name.endswith(suffix):
                out.add(p.name[: -len(suffix)])
    return out
