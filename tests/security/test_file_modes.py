"""What a host keeps on disk is its owner's alone (SECURITY.md, "On disk" and "The local control socket").

A real ldmd is started from a parent whose umask is 000, in a home that already exists with mode 0755, so
every mode checked here is ldmd's own doing (its `umask 077`, the modes it asks for, `Home.prepare`), not
the test's.  The host is given everything a home can hold: users, a pinned peer, a trusted CA, a running
guest (memory image, dirty map, control socket, pid file, spec, log)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from ldoms.daemon.sockpath import bind_unix
from ldoms.peer import tls
from tests.integration.conftest import LDM, LdmHost
from tests.integration.test_peer_link import ca_pem, make_ca
from tests.security.conftest import NOBODY, as_user, loose_modes, needs_root, umask

PRIVATE_DIRS = ("", "guests", "tls")
PRIVATE_FILES = (
    "ldmd.lock", "ldmd.log", "state.db", "state.db-wal", "state.db-shm", "peer.lock", "users.toml",
    "peers.toml", "tls/host.key", "tls/host.crt", "tls/ca.pem", "guests/ldg1.mem", "guests/ldg1.dirty",
    "guests/ldg1.pid", "guests/ldg1.spec.json", "guests/ldg1.log",
)  # fmt: skip
PRIVATE_SOCKETS = ("ldmd.sock", "guests/ldg1.ctl")


def furnish(h: LdmHost, tmp_path: Path) -> None:
    """A user, a pinned peer (its certificate recorded), a trusted CA and a running guest."""
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    pw.chmod(0o600)
    assert h.run_ldmd("user", "add", "alice", "--password-file", str(pw)).returncode == 0
    other = tls.ensure_host_tls(tmp_path / "other", "other", "127.0.0.1:6482")
    r = h.run_ldmd("peer", "add", "other", "127.0.0.1:6482", "--cert", str(other.cert_path))
    assert r.returncode == 0, r.stderr
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ca_pem(make_ca()))
    assert h.run_ldmd("trust", "add-ca", str(ca)).returncode == 0
    h.make_room()
    h.add_guest("ldg1")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_every_file_of_a_serving_host_is_private(exposed_host: LdmHost, tmp_path: Path) -> None:
    h = exposed_host
    h.home.mkdir(mode=0o755)
    os.chmod(h.home, 0o755)  # an existing, too open home: ldmd tightens it
    with umask(0o000):  # whatever the parent's umask, ldmd (and its guests) create private files
        h.start_ldmd()
        furnish(h, tmp_path)
    wrong = {}
    for rel in PRIVATE_DIRS:
        if not (h.home / rel).is_dir() or mode(h.home / rel) != 0o700:
            wrong[rel or "."] = oct(mode(h.home / rel))
    for rel in PRIVATE_FILES:
        p = h.home / rel
        if not stat.S_ISREG(os.lstat(p).st_mode) or mode(p) != 0o600:
            wrong[rel] = oct(mode(p))
    for rel in PRIVATE_SOCKETS:
        p = h.home / rel
        if not stat.S_ISSOCK(os.lstat(p).st_mode) or mode(p) != 0o600:
            wrong[rel] = oct(mode(p))
    assert wrong == {}
    # And nothing else in the home gives group or others any access either.
    loose = loose_modes(h.home)
    assert loose == []


def test_any_process_of_the_owner_drives_ldmd_without_a_credential(exposed_host: LdmHost) -> None:
    """Known gap, by design: the local API asks no credential; whoever can open the socket (its owner,
    root) is the administrator."""
    h = exposed_host
    h.start_ldmd()
    body = b'{"verb": "add-domain", "operands": ["x"]}'
    head = (
        b"POST /v1/ops HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(h.home / "ldmd.sock"))  # no user name, no password, no token: nothing is asked
        s.sendall(head + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert "x" in h.ldm("ls").stdout.split()


@needs_root
def test_other_users_are_locked_out_by_the_home_and_by_each_file(
    exposed_host: LdmHost, tmp_path: Path
) -> None:
    h = exposed_host
    h.start_ldmd()
    furnish(h, tmp_path)
    home = h.home

    def connect(rel: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(home / rel))

    def read(rel: str) -> None:
        os.close(os.open(home / rel, os.O_RDONLY))

    probes = {f"connect {r}": (lambda r=r: connect(r)) for r in PRIVATE_SOCKETS}
    probes |= {f"read {r}": (lambda r=r: read(r)) for r in PRIVATE_FILES}
    sanity = {"list the home's parent": lambda: os.listdir(home.parent)}
    got = as_user(NOBODY, NOBODY, sanity | probes)
    assert got.pop("list the home's parent") == "ok"  # the parent hides nothing: the home's modes do
    assert got == {name: "EACCES" for name in probes}
    # Defence in depth: an admin who opens the directories up still exposes no file and no socket.
    for rel in PRIVATE_DIRS:
        os.chmod(home / rel, 0o755)
    try:
        got = as_user(NOBODY, NOBODY, {"list the home": lambda: os.listdir(home)} | probes)
    finally:
        for rel in PRIVATE_DIRS:
            os.chmod(home / rel, 0o700)
    assert got.pop("list the home") == "ok"
    assert got == {name: "EACCES" for name in probes}


def test_the_control_socket_is_never_open_to_others_even_for_an_instant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bind_unix creates the socket under a umask that already gives it 0600: the chmod after bind is a
    second line, not the only one (without it the mode is still 0600)."""
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    with umask(0o000), bind_unix(tmp_path / "ldmd.sock"):
        assert mode(tmp_path / "ldmd.sock") == 0o600
        assert os.umask(0o000) == 0o000  # and the caller's umask was put back


@needs_root
def test_ldm_refuses_a_control_socket_owned_by_another_user(exposed_host: LdmHost) -> None:
    h = exposed_host
    h.start_ldmd()
    os.chown(h.home, NOBODY, NOBODY)  # a home someone else controls (a mistyped LDM_HOME, a shared path)
    os.chown(h.home / "ldmd.sock", NOBODY, NOBODY)
    r = subprocess.run([LDM, "--home", str(h.home), "ls"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "primary" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert "Refusing to talk to" in r.stderr and f"uid {NOBODY}" in r.stderr, r.stderr
