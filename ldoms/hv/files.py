"""The files of one guest in the host's guests directory, and its pid file.

`NAME.spec.json` (written by ldmd: what to run), `NAME.mem` (memory image), `NAME.ctl` (control socket),
`NAME.pid` (identity, written by the guest when ready), `NAME.log` (the guest's stderr).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PidRecord:
    pid: int
    starttime: int  # clock ticks since boot (/proc/PID/stat field 22)
    domain: str


class GuestFiles:
    def __init__(self, directory: Path, domain: str) -> None:
        self.dir = directory
        self.domain = domain
        self.spec = directory / f"{domain}.spec.json"
        self.mem = directory / f"{domain}.mem"
        self.ctl = directory / f"{domain}.ctl"
        self.pid = directory / f"{domain}.pid"
        self.log = directory / f"{domain}.log"

    def write_pidfile(self, *, pid: int, starttime: int, domain: str) -> None:
        tmp = self.pid.with_name(self.pid.name + ".tmp")
        tmp.write_text(json.dumps({"pid": pid, "starttime": starttime, "domain": domain}))
        os.replace(tmp, self.pid)  # atomic: a reader sees no pid file or a whole one

    def read_pidfile(self) -> PidRecord | None:
        """The guest's identity, or None if there is no pid file or it is unreadable."""
        try:
            doc = json.loads(self.pid.read_text())
            return PidRecord(pid=int(doc["pid"]), starttime=int(doc["starttime"]), domain=str(doc["domain"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remove_runtime(self) -> None:
        """Remove what a running guest owns: memory image, control socket, pid file."""
        for p in (self.mem, self.ctl, self.pid, self.pid.with_name(self.pid.name + ".tmp")):
            p.unlink(missing_ok=True)

    def remove_all(self) -> None:
        self.remove_runtime()
        self.spec.unlink(missing_ok=True)


def domains_with_files(directory: Path) -> set[str]:
    """Names of domains that have a pid file or a memory image in `directory`."""
    out: set[str] = set()
    if not directory.is_dir():
        return out
    for p in directory.iterdir():
        for suffix in (".pid", ".mem"):
            if p.name.endswith(suffix):
                out.add(p.name[: -len(suffix)])
    return out
