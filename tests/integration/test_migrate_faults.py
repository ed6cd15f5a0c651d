"""Peers that misbehave, and hosts in network namespaces.

- The target ldmd survives hostile clients on its peer port: random bytes instead of TLS, garbage and
  oversized frames over TLS, valid-looking frames out of order; a real migration works afterwards.
- A source ldmd facing a fake target (an in-process TLS peer listener pinned like a real one) that speaks
  garbage, another protocol version, or drops the link mid-exchange prints one clear line and the LDoms
  trailer, exits non-zero, and leaves nothing behind.
- Two hosts in two network namespaces joined by a veth pair, reached on the default port 6482 (skipped with
  the reason when not root or without `ip`).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ldoms.migration.events import Abort, Auth, AuthResult, CheckRequest, Hello, Role
from ldoms.migration.protocol import MigrationConnection
from ldoms.migration.wire import Frame, FrameDecoder, decode_event, encode_event
from ldoms.peer import tls
from ldoms.peer.errors import PeerError
from ldoms.peer.link import LENGTH, PeerLink
from ldoms.peer.listener import PeerListener
from tests.conftest import Reaper, kill_processes_mentioning
from tests.faults.netns import Unavailable, start_in, veth_link
from tests.integration.conftest import LDMD, LdmHost, wait_for
from tests.integration.test_migrate_e2e import TARGET, TRAILER, USER, add_guest, make_pair, make_room


# ---------------------------------------------------------------------------------------- hostile clients
def tls_link(port: int) -> PeerLink:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    link = PeerLink(sock, where="target under test")
    assert link.recv_frame() == b"LDoms-peer-link/1"
    return link


def source_hello() -> Hello:
    return Hello(role=Role.SOURCE, version=1, min_version=1, migration_id="hostile", host_name="mallory")


def test_the_target_survives_hostile_peers(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    p = make_pair(hosts, tmp_path)
    port = p.dst.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # not even TLS
        raw.sendall(os.urandom(4096))
    link = tls_link(port)  # garbage inside a frame
    link.send_frame(os.urandom(512))
    with pytest.raises(PeerError):
        link.recv_frame()
    link = tls_link(port)  # a frame announced far above any limit
    link.send_frame(b"")
    link._live().sendall(LENGTH.pack(0xFFFFFFFF))
    with pytest.raises(PeerError):
        link.recv_frame()
    link = tls_link(port)  # valid frames, out of order: a CheckRequest before any authentication
    link.send_frame(encode_event(source_hello(), version=1))
    hello = decode_event(_frame(link.recv_frame()))
    assert isinstance(hello, Hello) and hello.role is Role.TARGET
    link.send_frame(encode_event(CheckRequest(mode="inactive", dry_run=False, source_domain="x",
                                              target_domain="x", domain_xml="<x/>"), version=1))  # fmt: skip
    abort = decode_event(_frame(link.recv_frame()))
    assert isinstance(abort, Abort) and "sent CheckRequest(bound/inactive) in phase AUTH" in abort.reason
    link.close()
    # Still serving peers, and nothing was left behind.
    assert "LDom" not in p.dst.ldm("ls").stdout.replace("primary", "")
    add_guest(p.src, "ldg1", state="inactive")
    r = p.migrate("-n", "-p", str(p.pwfile), "ldg1", f"{USER}@{TARGET}")
    assert (r.returncode, r.stderr) == (0, "")
    assert p.dst.proc is not None and p.dst.proc.poll() is None


def _frame(data: bytes) -> Frame:
    dec = FrameDecoder()
    dec.feed(data)
    frame = dec.next_frame()
    assert frame is not None
    return frame


# -------------------------------------------------------------------------------------------- fake targets
class FakeTarget:
    """An in-process peer listener with its own TLS identity, behaving as `script` says."""

    def __init__(self, home: Path, script: Callable[[PeerLink], None]) -> None:
        tls.ensure_host_tls(home, "fake", "127.0.0.1:0")
        self.fingerprint = tls.load_host_tls(home).fingerprint()
        self.listener = PeerListener(home, "127.0.0.1:0", script, handshake_timeout=5.0).start()
        self.port = self.listener.address[1]


def garbage(link: PeerLink) -> None:
    link.recv_frame()
    link.send_frame(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def other_version(link: PeerLink) -> None:
    """A newer ldmd that speaks versions 2..3 only."""
    hello = decode_event(_frame(link.recv_frame()))
    assert isinstance(hello, Hello)
    reply = Hello(
        role=Role.TARGET, version=3, min_version=2, migration_id=hello.migration_id, host_name="fake"
    )
    link.send_frame(encode_event(reply, version=3))
    link.recv_frame()  # the source's farewell


def drop_after_auth(link: PeerLink) -> None:
    conn = MigrationConnection(Role.TARGET)
    conn.receive_data(link.recv_frame())
    hello = conn.next_event()
    assert isinstance(hello, Hello)
    link.send_frame(conn.send(Hello(role=Role.TARGET, version=1, min_version=1,
                                    migration_id=hello.migration_id, host_name="fake")))  # fmt: skip
    conn.receive_data(link.recv_frame())
    assert isinstance(conn.next_event(), Auth)
    link.send_frame(conn.send(AuthResult(ok=True)))
    link.recv_frame()  # the CheckRequest ... and the link drops with no answer


SCRIPTS: list[tuple[Callable[[PeerLink], None], str]] = [
    (garbage, "broke the migration protocol: bad frame magic b'HTTP': the peer is not an ldmd"),
    (other_version, "migration protocol version mismatch: the target ldmd fake speaks versions 2..3, "
                    "this source ldmd speaks versions 1..1"),
    (drop_after_auth, "closed the connection in phase CHECKING_COLD of the migration"),
]  # fmt: skip


def test_fake_targets(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    src = hosts("src")
    src.start_ldmd()
    make_room(src)
    add_guest(src, "ldg1", state="bound")
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    pw.chmod(0o600)
    before = src.ldm("ls-bindings", "ldg1").stdout
    for script, why in SCRIPTS:
        fake = FakeTarget(tmp_path / f"fake-{script.__name__}", script)
        try:
            name = f"fake-{script.__name__}".replace("_", "-")
            r = src.run_ldmd("peer", "add", name, f"127.0.0.1:{fake.port}", "--fingerprint", fake.fingerprint)
            assert r.returncode == 0, r.stderr
            r = src.ldm("migrate-domain", "-p", str(pw), "ldg1", f"bob@{name}", ok=False)
            lines = r.stderr.splitlines()
            assert r.returncode == 1 and len(lines) == 2, (script.__name__, lines)
            assert why in lines[0] and lines[1] == TRAILER.format("ldg1"), (script.__name__, lines)
            assert src.ldm("ls-bindings", "ldg1").stdout == before
            assert src.parseable("ldg1")["flags"] == "------"
        finally:
            fake.listener.close()


# ------------------------------------------------------------------------------------ network namespaces
@pytest.fixture
def namespaces(tmp_path: Path, reaper: Reaper) -> Iterator[tuple[str, str, str, str]]:
    """Two namespaces joined by a veth pair (tests.faults.netns), removed pass or fail."""
    try:
        with veth_link("ldmt") as link:
            try:
                yield link.ns_a, link.ns_b, link.ip_a, link.ip_b
            finally:
                kill_processes_mentioning([tmp_path.resolve()])  # ldmds and guests first, then the netns
    except Unavailable as e:
        pytest.skip(str(e))


def test_migration_between_two_network_namespaces(
    hosts: Callable[..., LdmHost], tmp_path: Path, namespaces: tuple[str, str, str, str]
) -> None:
    ns_a, ns_b, ip_a, ip_b = namespaces
    src, dst = hosts("src"), hosts(TARGET)
    threads = [threading.Thread(target=start_in, args=a) for a in ((ns_a, src, f"{ip_a}:6482"),
                                                                  (ns_b, dst, f"{ip_b}:6482"))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pw = tmp_path / "pw"
    pw.write_text("netns-pass\n")
    pw.chmod(0o600)
    assert dst.run_ldmd("user", "add", USER, "--password-file", str(pw)).returncode == 0
    fp = dst.run_ldmd("tls", "show").stdout.split()[1]
    # The admin records the peer from inside the source's namespace (where the target is reachable), by
    # address only: the LDoms manager's default port 6482.
    argv = ["ip", "netns", "exec", ns_a, LDMD, "--home", str(src.home), "peer", "add", TARGET, ip_b]
    r = subprocess.run([*argv, "--fingerprint", fp], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and f"{ip_b}:6482" in r.stdout, r.stderr
    make_room(src)
    make_room(dst)
    add_guest(src, "ldg1", memory="64M")
    r = src.ldm("migrate-domain", "-p", str(pw), "ldg1", f"{USER}@{TARGET}", ok=False)
    assert (r.returncode, r.stderr) == (0, "")
    wait_for("the guest on the target", lambda: dst.guest_pid("ldg1") is not None)
    assert dst.parseable("ldg1")["state"] == "active" and "ldg1" not in src.ldm("ls").stdout
