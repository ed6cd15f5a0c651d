"""End-to-end: real ldmd processes, driven through the ldm executable."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ldoms.daemon.sockpath import connect_unix
from tests.integration.conftest import LdmHost, is_sparse, pid_alive, wait_for


def test_start_list_and_stop_cleanly(host: LdmHost) -> None:
    r = host.ldm("ls")
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATE", "FLAGS"]
    assert lines[1].split()[:2] == ["primary", "active"] and len(lines) == 2
    p = host.parseable("primary")
    assert p["state"] == "active" and p["name"] == "primary"
    assert "Logical Domain Manager" in host.ldm("-V").stdout
    assert "primary" in host.ldm("list-bindings").stdout
    assert stat.S_IMODE(os.stat(host.home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(host.home / "ldmd.sock").st_mode) == 0o600
    # Errors: one line on stderr, LDoms wording, the error's exit code.
    r = host.ldm("ls", "nosuch", ok=False)
    assert (r.returncode, r.stderr, r.stdout) == (1, "LDom nosuch not found\n", "")
    r = host.ldm("ls", "-z", ok=False)
    assert r.returncode == 2 and r.stderr.startswith("Unknown option -z. Usage: ldm list-domain")
    assert host.term() == 0
    assert not (host.home / "ldmd.sock").exists()
    r = host.ldm("ls", ok=False)
    assert r.returncode != 0 and f"no ldmd is serving home {host.home}" in r.stderr
    assert r.stderr.count("\n") == 1


def test_second_ldmd_on_the_same_home_is_refused(host: LdmHost) -> None:
    assert host.proc is not None
    r = host.run_ldmd()
    assert r.returncode == 1
    assert f"already served by another ldmd (pid {host.proc.pid})" in r.stderr
    host.ldm("ls")  # the first one is unharmed


def test_a_different_platform_is_refused_and_state_is_reused(host: LdmHost) -> None:
    host.ldm("add-domain", "ldg1")
    assert host.term() == 0
    r = host.run_ldmd("--platform", "t5140")
    assert r.returncode == 1 and "is a different platform" in r.stderr and "t5240" in r.stderr
    host.start_ldmd(first=False)  # no --platform, no --name: the stored host
    assert "ldg1" in host.ldm("ls").stdout


def test_two_hosts_side_by_side(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    h1, h2 = hosts("h1", "t5240"), hosts("h2", "t5140")
    h1.start_ldmd()
    h2.start_ldmd()
    h1.ldm("add-domain", "ldg1")
    assert "ldg1" in h1.ldm("ls").stdout
    assert "ldg1" not in h2.ldm("ls").stdout
    # Each serves its own platform: primary owns all of each machine's memory at factory default.
    assert h1.parseable("primary")["mem"] != h2.parseable("primary")["mem"]
    # A domain's constraints travel as XML: -x on one host, add-domain -i (a file ldm reads) on the other.
    xml = tmp_path / "ldg1.xml"
    xml.write_text(h1.ldm("list-constraints", "-x", "ldg1").stdout)
    h2.ldm("add-domain", "-i", str(xml))
    assert "ldg1" in h2.ldm("ls").stdout
    r = h2.ldm("add-domain", "-i", str(tmp_path / "missing.xml"), ok=False)
    assert r.returncode == 1 and f"Unable to read file {tmp_path / 'missing.xml'}" in r.stderr


def test_guest_runs_as_a_process_and_survives_kill_9_of_ldmd(host: LdmHost) -> None:
    host.make_room()
    host.add_guest("ldg1")
    pid = host.guest_pid("ldg1")
    assert pid is not None and pid_alive(pid)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"ldoms.hv.guest" in f.read()
    assert os.getsid(pid) != os.getsid(host.proc.pid if host.proc else 0)  # outside ldmd's session
    mem = host.home / "guests" / "ldg1.mem"
    assert mem.stat().st_size == 1024**3 and is_sparse(mem)
    before = host.parseable("ldg1")
    assert before["state"] == "active"
    host.ldm("add-domain", "ldg2")  # a committed change
    host.kill9()
    assert pid_alive(pid)  # guests outlive ldmd
    host.start_ldmd(first=False)
    after = host.parseable("ldg1")
    assert after["state"] == "active"
    assert int(after["uptime"]) >= int(before["uptime"])  # started_at kept: the uptime was not reset
    assert host.guest_pid("ldg1") == pid
    assert "ldg2" in host.ldm("ls").stdout
    assert "re-attached the guest of LDom ldg1" in (host.home / "ldmd.log").read_text()
    # A clean stop (SIGTERM) leaves the guest running too.
    assert host.term() == 0
    assert pid_alive(pid)
    host.start_ldmd(first=False)
    assert host.parseable("ldg1")["state"] == "active"
    # Stop: the process ends and the memory image goes with it.
    host.ldm("stop-domain", "ldg1")
    wait_for("the guest to exit", lambda: not pid_alive(pid))
    assert not mem.exists()
    assert host.parseable("ldg1")["state"] == "bound"


def test_recovery_reports_dead_guests_and_kills_orphans(host: LdmHost) -> None:
    host.make_room()
    host.add_guest("ldg1")
    host.add_guest("ldg2", start=False)
    pid = host.guest_pid("ldg1")
    assert pid is not None
    host.kill9()
    os.kill(pid, 9)  # the guest dies while ldmd is down
    wait_for("the guest to die", lambda: not pid_alive(pid))
    # An orphan: a guest for ldg2 whose start was never committed (ldmd died before its commit).
    guests = host.home / "guests"
    (guests / "ldg2.spec.json").write_text(json.dumps({"domain": "ldg2", "mblocks": [[0, 8192]], "vcpus": 1}))
    orphan = subprocess.Popen(
        [sys.executable, "-m", "ldoms.hv.guest", "--dir", str(guests), "--domain", "ldg2"],
        start_new_session=True,
    )
    wait_for("the orphan to be ready", lambda: (guests / "ldg2.pid").exists())
    host.start_ldmd(first=False)
    assert host.parseable("ldg1")["state"] == "bound"
    assert host.parseable("ldg2")["state"] == "bound"
    assert orphan.wait(timeout=30) != 0  # killed
    log = (host.home / "ldmd.log").read_text()
    assert "died while ldmd was down: LDom ldg1 is now bound" in log
    assert "killed the guest of LDom ldg2" in log
    host.ldm("start-domain", "ldg1")  # and it can start again
    assert host.parseable("ldg1")["state"] == "active"


def _raw(host: LdmHost, data: bytes, *, hang_up: bool = False) -> bytes:
    """Send bytes on the control socket; read the answer until the server closes (or, with `hang_up`,
    close our side first: for garbage the server may wait on forever, and half-closing is its EOF)."""
    with connect_unix(host.home / "ldmd.sock", timeout=30) as s:
        try:
            s.sendall(data)
            if hang_up:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close on us mid-way: that is a fine answer to garbage
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
    return out


def _post(body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (
        b"POST /v1/ops HTTP/1.1\r\nHost: ldmd\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {n}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def test_api_fed_garbage_keeps_serving(host: LdmHost) -> None:
    import random

    rng = random.Random(7)
    _raw(host, bytes(rng.getrandbits(8) for _ in range(4096)), hang_up=True)
    _raw(host, b"GET / HTTP/9.9\r\n\r\n", hang_up=True)
    _raw(host, b"\r\n" * 1000, hang_up=True)
    assert b" 422 " in _raw(host, _post(b"{not json"))
    assert b" 422 " in _raw(host, _post(json.dumps({"verb": "list-domain", "bogus": 1}).encode()))
    assert b" 422 " in _raw(host, _post(json.dumps({"verb": 5}).encode()))
    assert b" 413 " in _raw(host, _post(b"x" * (5 * 1024 * 1024)))
    assert b" 413 " in _raw(host, _post(b"", length=10**12))
    _raw(host, _post(b'{"verb": "list-domain"', length=1000), hang_up=True)  # a body that never completes
    answer = _raw(host, _post(json.dumps({"verb": "no-such-verb"}).encode()))
    assert b" 400 " in answer and b"Unknown command: no-such-verb" in answer
    assert "primary" in host.ldm("ls").stdout
    assert host.proc is not None and host.proc.poll() is None
