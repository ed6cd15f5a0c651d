"""Real hosts for end-to-end tests: `ldmd` processes in temporary homes on 127.0.0.1, driven only through the
`ldm` executable.  Waiting is polling with a deadline.  Every host's daemon and guest processes are killed at
teardown, pass or fail (the `reaper` kills whatever names the test's directory)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ldoms.daemon.sockpath import connect_unix
from tests.conftest import Reaper

BIN = Path(sys.executable).parent
LDM = str(BIN / "ldm")
LDMD = str(BIN / "ldmd")
DEADLINE_S = 30.0  # generous: a loaded 2-core machine; polling returns as soon as the thing happens


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LdmHost:
    def __init__(self, home: Path, name: str, platform: str) -> None:
        self.home = home
        self.name = name
        self.platform = platform
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_path = home.parent / f"{home.name}.ldmd.err"

    # ------------------------------------------------------------------ the daemon
    def start_ldmd(self, *extra: str, first: bool = True, wait: bool = True) -> subprocess.Popen[str]:
        args = [LDMD, "--home", str(self.home)]
        if first:
            args += ["--platform", self.platform, "--name", self.name, "--listen", f"127.0.0.1:{self.port}"]
        args += list(extra)
        with open(self.stderr_path, "a") as err:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err, text=True)
        self.proc = proc
        if wait:
            self.wait_ready()
        return proc

    def wait_ready(self) -> None:
        proc = self.proc
        assert proc is not None

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"ldmd exited with {proc.returncode}: {self.stderr_path.read_text()}")
            # A killed ldmd leaves its socket file behind: ready means a server accepts on it.
            try:
                connect_unix(self.home / "ldmd.sock", timeout=5).close()
            except OSError:
                return False
            return True

        wait_for(f"ldmd in {self.home} to serve", ready)

    def run_ldmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run an ldmd expected to refuse and exit at once."""
        return subprocess.run(
            [LDMD, "--home", str(self.home), *args], capture_output=True, text=True, timeout=DEADLINE_S
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=DEADLINE_S)

    def term(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE_S)

    # ------------------------------------------------------------------ ldm
    def ldm(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [LDM, "--home", str(self.home), *args], capture_output=True, text=True, timeout=DEADLINE_S
        )
        if ok and r.returncode != 0:
            raise AssertionError(f"ldm {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
        return r

    def parseable(self, name: str) -> dict[str, str]:
        """The DOMAIN record of `ldm ls -p NAME` as a dict."""
        out = self.ldm("ls", "-p", name).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("DOMAIN|"))
        return dict(kv.split("=", 1) for kv in line.split("|")[1:] if "=" in kv)

    def guest_pid(self, domain: str) -> int | None:
        try:
            text = (self.home / "guests" / f"{domain}.pid").read_text()
        except FileNotFoundError:
            return None
        m = re.search(r'"pid": (\d+)', text)
        return int(m.group(1)) if m else None

    # ------------------------------------------------------------------ a guest, the LDoms way
    def make_room(self) -> None:
        """Shrink primary (delayed reconfiguration, then its reboot) and give it a console concentrator."""
        self.ldm("set-crypto", "0", "primary")
        self.ldm("set-vcpu", "8", "primary")
        self.ldm("set-memory", "4G", "primary")
        self.ldm("stop-domain", "primary")  # the control domain's reboot applies the reconfiguration
        self.ldm("add-vcc", "port-range=5000-5100", "primary-vcc0", "primary")

    def add_guest(self, name: str, *, start: bool = True) -> None:
        self.ldm("add-domain", name)
        self.ldm("add-vcpu", "8", name)
        self.ldm("add-memory", "1G", name)
        self.ldm("bind-domain", name)
        if start:
            self.ldm("start-domain", name)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def hosts(tmp_path: Path, reaper: Reaper) -> Iterator[Callable[..., LdmHost]]:
    made: list[LdmHost] = []

    def make(name: str = "h1", platform: str = "t5240") -> LdmHost:
        home = reaper.watch(tmp_path / name)
        h = LdmHost(home, name, platform)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            if h.proc is not None and h.proc.poll() is None:
                h.proc.kill()
                h.proc.wait()
        # reaper (a dependency, so it tears down after us) kills every guest named by the homes


@pytest.fixture
def host(hosts: Callable[..., LdmHost]) -> LdmHost:
    h = hosts()
    h.start_ldmd()
    return h


def is_sparse(path: Path) -> bool:
    st = os.stat(path)
    return st.st_blocks * 512 < st.st_size // 8
