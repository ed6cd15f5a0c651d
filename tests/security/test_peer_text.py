"""Text a peer sends (refusal reasons, check findings) ends up on the administrator's terminal through `ldm`
(SECURITY.md, "Hostile input").  A target is only ever reached after its certificate was verified, so this is
about a trusted peer that misbehaves (or was taken over), not about a stranger on the network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ldoms.migration.events import Auth, AuthResult, Hello, Role
from ldoms.migration.protocol import MigrationConnection
from ldoms.peer.link import PeerLink
from tests.integration.conftest import LdmHost
from tests.integration.test_migrate_e2e import TRAILER, add_guest, make_room
from tests.integration.test_migrate_faults import FakeTarget

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m"  # retitle the terminal, clear it, turn it red


def refuse_with_escapes(link: PeerLink) -> None:
    conn = MigrationConnection(Role.TARGET)
    conn.receive_data(link.recv_frame())
    hello = conn.next_event()
    assert isinstance(hello, Hello)
    mid = hello.migration_id
    mine = Hello(role=Role.TARGET, version=1, min_version=1, migration_id=mid, host_name="fake")
    link.send_frame(conn.send(mine))
    conn.receive_data(link.recv_frame())
    assert isinstance(conn.next_event(), Auth)
    link.send_frame(conn.send(AuthResult(ok=False, reason=f"Authentication failed {ESCAPES}on fake")))


def test_a_peers_text_reaches_the_terminal_as_one_printable_line(
    hosts: Callable[..., LdmHost], tmp_path: Path
) -> None:
    src = hosts("src")
    src.start_ldmd()
    make_room(src)
    add_guest(src, "ldg1", state="inactive")
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    pw.chmod(0o600)
    fake = FakeTarget(tmp_path / "fake", refuse_with_escapes)
    try:
        r = src.run_ldmd("peer", "add", "fake", f"127.0.0.1:{fake.port}", "--fingerprint", fake.fingerprint)
        assert r.returncode == 0, r.stderr
        r = src.ldm("migrate-domain", "-p", str(pw), "ldg1", "bob@fake", ok=False)
    finally:
        fake.listener.close()
    lines = r.stderr.splitlines()
    assert r.returncode == 3 and lines[-1] == TRAILER.format("ldg1"), r.stderr
    assert "Authentication failed" in lines[0]
    assert not any(c in r.stderr for c in "\x1b\x07"), repr(r.stderr)
