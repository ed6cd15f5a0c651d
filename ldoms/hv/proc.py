"""Facts about processes from /proc (Linux): start time, state, command line, CPU time.

A pid alone does not name a process for long: after it exits the kernel may hand the number to another.
A process is identified by (pid, start time in clock ticks since boot), which no other process can share,
plus a look at its command line as a second guard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    state: str  # R S D Z T ...
    utime: int  # clock ticks
    stime: int
    starttime: int  # clock ticks since boot

    @property
    def cpu_seconds(self) -> float:
        return (self.utime + self.stime) / CLK_TCK

    @property
    def dead(self) -> bool:
        # A zombie has exited; only its exit status waits for its parent.  X is "dead" (never seen normally).
        return self.state in ("Z", "X")


def stat(pid: int) -> ProcStat | None:
    """The process's /proc/PID/stat, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after the last ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N-3].
    return ProcStat(pid=pid, state=rest[0], utime=int(rest[11]), stime=int(rest[12]), starttime=int(rest[19]))


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def alive(pid: int, starttime: int) -> bool:
    """True if the process `pid` that started at `starttime` still runs (not a zombie)."""
    st = stat(pid)
    return st is not None and st.starttime == starttime and not st.dead


def boot_time() -> float:
    """Wall-clock seconds at boot (/proc/stat btime)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("/proc/stat has no btime line")


def start_wall(st: ProcStat) -> float:
    """Wall-clock time the process started (to the clock tick)."""
    return boot_time() + st.starttime / CLK_TCK


def own_starttime() -> int:
    st = stat(os.getpid())
    assert st is not None
    return st.starttime
