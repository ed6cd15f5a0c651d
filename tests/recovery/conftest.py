"""Pieces of the restart-recovery suite: a host whose `ldmd` is killed and restarted, what it holds, and the
checks a restarted host must pass.

- `KillHost` is the integration suite's `LdmHost` (a real `ldmd` in a temporary home, driven through the
  `ldm` executable) plus: the raw state (`GET /v1/view`, the machine as JSON), an `ldm` started without
  waiting for it (`spawn_ldm`, to kill ldmd while that ldm waits for its answer), `restart`, and the guest
  processes of the home found through /proc.
- `binding_problems(machine)`: every broken bindings invariant (a strand, MAU, PA range or console port held
  twice; a block outside usable memory or not congruent, PA ≡ RA modulo the largest page; bindings that do
  not match the constraints).  A half-applied command would show here.
- `guest_problems(...)`: every way the guest processes and the state disagree: an active guest domain
  without its live process (pid recorded in the state), a guest process of a domain that is not active (an
  orphan), two processes for one domain.
- `canonical(machine_doc, pre_doc)`: a machine document without what differs between two correct runs of
  the same request (the clock's `started_at` of domains the request started, guest pids, the random UUID of
  a new domain), so the model's prediction and ldmd's result can be compared.

Teardown kills ldmd and every process naming the home, pass or fail (the `reaper`).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ldoms.hv import proc
from ldoms.model.codec import decode
from ldoms.model.domain import DomainState
from ldoms.model.machine import Machine
from tests.conftest import Reaper
from tests.integration.conftest import DEADLINE_S, LDM, LdmHost
from tests.load.bighost import api

GUEST_MODULE = "ldoms.hv.guest"


class KillHost(LdmHost):
    """An `LdmHost` that is killed and restarted."""

    def view(self) -> dict[str, Any]:
        """GET /v1/view over the control socket (what `ldm list` fetches), as JSON."""
        status, body = api(self.home, "GET", "/v1/view", timeout=DEADLINE_S)
        assert status == 200, f"GET /v1/view answered {status}: {body[:200]!r}"
        return dict(json.loads(body))

    def machine_doc(self) -> dict[str, Any]:
        return dict(self.view()["machine"])

    def spawn_ldm(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [LDM, "--home", str(self.home), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def restart(self) -> None:
        self.start_ldmd(first=False)

    def guest_processes(self) -> dict[str, list[int]]:
        """Domain -> pids of the live guest processes of this home (zombies excluded)."""
        guests_dir = str((self.home / "guests").resolve())
        out: dict[str, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            argv = proc.cmdline(pid)
            if GUEST_MODULE not in argv or _arg(argv, "--dir") != guests_dir:
                continue
            if "--zygote" in argv:  # the launcher guests are forked from (ldoms.hv.zygote), not a guest
                continue
            st = proc.stat(pid)
            if st is None or st.dead:
                continue
            out.setdefault(_arg(argv, "--domain") or "?", []).append(pid)
        return out


def _arg(argv: list[str], flag: str) -> str | None:
    for a, b in itertools.pairwise(argv):
        if a == flag:
            return b
    return None


def has_socket(pid: int) -> bool:
    """True once process `pid` holds a socket (ldm holds exactly one: its connection to ldmd)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                return True
        except OSError:
            continue
    return False


def signal_pending(pid: int, signum: int) -> bool:
    """True if `signum` is pending (delivered, not yet handled) for process `pid`."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return False
    bit = 1 << (signum - 1)
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & bit:
            return True
    return False


# ------------------------------------------------------------------------------------------- checks
def decode_machine(doc: dict[str, Any]) -> Machine:
    return decode(Machine, doc)


def binding_problems(machine: Machine) -> list[str]:
    """Every broken invariant of the bindings of `machine` (empty: all hold)."""
    plat = machine.platform
    problems: list[str] = []
    held = [(d.name, d.bindings) for d in machine.domains if d.bindings is not None]
    for d in machine.domains:
        bound = d.state in (DomainState.BOUND, DomainState.ACTIVE)
        if bound != (d.bindings is not None):
            problems.append(f"LDom {d.name} is {d.state.value} but holds bindings={d.bindings is not None}")

    def shared(what: str, items: list[tuple[str, object]]) -> None:
        seen: dict[object, str] = {}
        for name, item in items:
            if item in seen:
                problems.append(f"{what} {item} is held by both {seen[item]} and {name}")
            seen[item] = name

    shared("strand", [(n, s) for n, b in held for s in (*b.strands, *b.reserved_strands)])
    shared("MAU", [(n, u) for n, b in held for u in b.maus])
    shared("console port", [(n, (b.console_service, b.console_port)) for n, b in held if b.console_port])
    shared("I/O bus", [(n, bus) for n, b in held for bus in b.io])
    blocks = sorted(((n, x) for n, b in held for x in b.mblocks), key=lambda nx: nx[1].pa)
    for (na, a), (nb, b) in itertools.pairwise(blocks):
        if a.pa + a.size > b.pa:
            problems.append(
                f"memory of {na} (PA {a.pa:#x}, {a.size:#x} bytes) overlaps {nb}'s (PA {b.pa:#x})"
            )
    usable = plat.usable_memory
    hw = plat.hw_max_pagesize
    for d in machine.domains:
        b, cfg = d.bindings, d.config
        if b is None:
            continue
        for x in b.mblocks:
            if not any(r.pa <= x.pa and x.pa + x.size <= r.end for r in usable):
                problems.append(f"memory of {d.name} at PA {x.pa:#x} lies outside usable memory")
            if (x.ra != x.pa) if cfg.is_control else (x.pa % hw != x.ra % hw):
                problems.append(f"memory of {d.name} RA {x.ra:#x} PA {x.pa:#x} is not congruent")
        want = cfg.vcpus * plat.strands_per_core if cfg.whole_core else cfg.vcpus
        if len(b.strands) != want:
            problems.append(f"LDom {d.name} holds {len(b.strands)} strands; its constraints ask {want}")
        if len(b.maus) != cfg.mau:
            problems.append(f"LDom {d.name} holds {len(b.maus)} MAUs; its constraints ask {cfg.mau}")
        if not {plat.maus[u].core for u in b.maus} <= {plat.core_of(s) for s in b.strands}:
            problems.append(f"LDom {d.name} holds a MAU of a core none of its strands is on")
        if not cfg.mblocks and cfg.memory and b.memory < cfg.memory:
            problems.append(f"LDom {d.name} holds {b.memory} bytes of memory; it asks {cfg.memory}")
    return problems


def guest_problems(machine: Machine, running: dict[str, list[int]]) -> list[str]:
    """Every disagreement between the state and the guest processes running (`KillHost.guest_processes`)."""
    problems: list[str] = []
    guests = {d.name: d for d in machine.domains if not d.config.is_control}
    for name, pids in sorted(running.items()):
        dom = guests.get(name)
        if dom is None or dom.state != DomainState.ACTIVE:
            state = "absent" if dom is None else dom.state.value
            problems.append(f"orphan guest process(es) {pids} of LDom {name}, which is {state}")
        elif pids != [dom.guest_pid]:
            problems.append(f"LDom {name} records guest pid {dom.guest_pid}; its processes are {pids}")
    for name, dom in guests.items():
        if dom.state == DomainState.ACTIVE and name not in running:
            problems.append(f"LDom {name} is active but no guest process runs for it (pid {dom.guest_pid})")
    return problems


def canonical(doc: dict[str, Any], pre: dict[str, Any]) -> dict[str, Any]:
    """`doc` (a machine as JSON) without what two correct runs of a request on state `pre` may differ in."""
    before = {d["config"]["name"]: d for d in pre["domains"]}
    out = copy.deepcopy(doc)
    for d in out["domains"]:
        old = before.get(d["config"]["name"])
        d["guest_pid"] = "*"  # checked against /proc by guest_problems
        if old is None or d["started_at"] != old["started_at"]:
            d["started_at"] = "restarted" if d["started_at"] else 0.0
        if old is None:  # a new domain's UUID is random
            d["config"]["uuid"] = "*"
            if d["pending"] is not None:
                d["pending"]["uuid"] = "*"
    return out


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ (paths), for assertion messages."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            name = x.get("config", {}).get("name", i) if isinstance(x, dict) else i
            out += diff(x, y, f"{path}[{name}]")
        return out
    return [] if a == b else [f"{path}: {json.dumps(a)[:150]} != {json.dumps(b)[:150]}"]


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def kill_host(tmp_path: Path, reaper: Reaper) -> Iterator[KillHost]:
    """A t5240 host at factory default, served by an ldmd that tests kill and restart."""
    h = KillHost(reaper.watch(tmp_path / "h1"), "h1", "t5240")
    try:
        h.start_ldmd()
        yield h
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()
        # the reaper (a dependency, torn down after us) kills every guest naming the home
