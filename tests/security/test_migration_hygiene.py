"""What a live migration leaves on disk, on two real hosts (SECURITY.md, "Secrets on disk" and "Scrubbing"):
after a failed one, no page of the guest stays on the target; after a successful one, neither home holds the
target password or the data-plane secret, every file is still private, and the source keeps no page.
(Cancelling in every phase is checked the same way in tests/integration/test_live_migration.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ldoms.migration.engine_source import RECOVERY_USER_PREFIX
from ldoms.migration.events import (
    Abort,
    Auth,
    AuthResult,
    CheckRequest,
    Hello,
    RecoveryAnswer,
    RecoveryQuery,
    Role,
)
from ldoms.migration.protocol import MigrationConnection
from ldoms.peer.errors import PeerError
from ldoms.peer.link import PeerLink
from tests.integration.conftest import LdmHost, wait_for
from tests.integration.test_migrate_e2e import (
    PASSWORD,
    TARGET,
    TRAILER,
    USER,
    add_guest,
    hooks_env,
    make_pair,
)
from tests.integration.test_migrate_faults import tls_link
from tests.security.conftest import loose_modes

LEDGER = {"ldoms-workload": "ledger", "ldoms-dirty-rate": "20M"}
MEMORY_SUFFIXES = (".mem", ".dirty", ".image")  # files that hold (or map) guest pages
HEX64 = re.compile(rb"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")


def entries(home: Path) -> Iterator[Path]:
    yield home
    yield from home.rglob("*")


def page_holders(home: Path, domain: str) -> list[str]:
    """Files of `home` that hold or map pages of `domain` (images, dirty maps, images being scrubbed)."""
    out = []
    for p in entries(home):
        name = p.name
        if (name.startswith(f"{domain}.") or name.startswith(f".{domain}.")) and (
            name.endswith(MEMORY_SUFFIXES) or ".scrub-" in name
        ):
            out.append(str(p.relative_to(home)))
    out += [str(p.relative_to(home)) for p in home.rglob("*.image")]  # staged (HOME/guests/.incoming)
    return sorted(out)


def readable_files(home: Path) -> Iterator[tuple[Path, bytes]]:
    """Every regular file but the guests' memory images (gigabytes of guest data, which never see the
    password or the secret: nothing of ldmd's is written there)."""
    for p in entries(home):
        try:  # a daemon is running: a temporary file may go between the listing and the read
            if stat.S_ISREG(os.lstat(p).st_mode) and not p.name.endswith(".mem"):
                yield p, p.read_bytes()
        except FileNotFoundError:
            continue


def recovery_login(
    port: int, migration_id: str, token: str
) -> tuple[MigrationConnection, tuple[PeerLink, Callable[[], object]], AuthResult]:
    """Log in to a target's peer port the way a source in the error state does: with a recovery token."""
    link = tls_link(port)
    conn = MigrationConnection(Role.SOURCE)

    def receive() -> object:
        conn.receive_data(link.recv_frame())
        return conn.next_event()

    link.send_frame(conn.send(Hello(role=Role.SOURCE, version=1, min_version=1, migration_id=uuid.uuid4().hex,
                                    host_name="mallory")))  # fmt: skip
    assert isinstance(receive(), Hello)
    link.send_frame(conn.send(Auth(user=RECOVERY_USER_PREFIX + migration_id, password=token)))
    result = receive()
    assert isinstance(result, AuthResult)
    return conn, (link, receive), result


def test_a_failed_live_migration_leaves_no_page_on_the_target(
    hosts: Callable[..., LdmHost], tmp_path: Path
) -> None:
    p = make_pair(hosts, tmp_path, src_env=hooks_env(drop=["source:corrupt-frame"]))  # a frame damaged
    add_guest(p.src, "ldg1", **LEDGER)
    r = p.migrate("-p", str(p.pwfile), "ldg1", f"{USER}@{TARGET}")
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == TRAILER.format("ldg1"), r.stderr
    wait_for("the target's copy to be scrubbed", lambda: page_holders(p.dst.home, "ldg1") == [])
    assert p.dst.guest_pid("ldg1") is None and "ldg1" not in p.dst.ldm("ls").stdout
    assert (p.src.home / "guests" / "ldg1.mem").exists()  # the source keeps running it
    assert p.src.parseable("ldg1")["state"] == "active"


def test_a_live_migration_writes_no_secret_down_and_leaves_both_homes_private(
    hosts: Callable[..., LdmHost], tmp_path: Path
) -> None:
    p = make_pair(hosts, tmp_path)
    add_guest(p.src, "ldg1", **LEDGER)
    r = p.migrate("-p", str(p.pwfile), "ldg1", f"{USER}@{TARGET}")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    record = p.src.ldm("list-migrations", "-p").stdout
    assert re.search(r"\|channels=[1-9]", record), record  # the pages went over the encrypted data plane
    # The source keeps no page of the guest it handed over.
    wait_for("the source's copy to be gone", lambda: page_holders(p.src.home, "ldg1") == [])
    # The recovery token is the one secret written down, in the source's private journal (the target keeps
    # its SHA-256).  Every other 64-hex-digit string in either home would be a key or a secret: none exists.
    [journal] = [j for j in (p.src.home / "migrations").glob("source-*.json")]
    token = json.loads(journal.read_text())["extra"]["token"]
    explained = {hashlib.sha256(token.encode()).hexdigest().encode()}
    found: dict[str, set[bytes]] = {}
    seen: set[bytes] = set()
    for h in (p.src, p.dst):
        for path, data in readable_files(h.home):
            assert PASSWORD.encode() not in data, f"the target password is written in {path}"
            hexes = {m.group().lower() for m in HEX64.finditer(data)}
            seen |= hexes & explained
            if hexes - explained:
                found[str(path)] = hexes - explained
    assert found == {}
    assert seen == explained  # the scan does read the journals (the target's holds the token's digest)
    # Both homes stay private after a migration: journals, images, the arriving guest's files.
    loose = [entry for h in (p.src, p.dst) for entry in loose_modes(h.home)]
    assert loose == []
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    # The token opens one door: asking the target how that migration ended.  A forged one opens none, and a
    # genuine one cannot start anything.
    mid = json.loads(journal.read_text())["journal"]["migration_id"]
    _, _, forged = recovery_login(p.dst.port, mid, "forged")
    assert not forged.ok and "no migration" in forged.reason
    conn, (link, receive), ok = recovery_login(p.dst.port, mid, token)
    assert ok.ok
    link.send_frame(conn.send(RecoveryQuery(migration_id=mid)))  # type: ignore[attr-defined]
    answer = receive()
    assert isinstance(answer, RecoveryAnswer) and answer.decision is not None
    conn, (link, receive), ok = recovery_login(p.dst.port, mid, token)
    link.send_frame(conn.send(CheckRequest(mode="inactive", dry_run=True, source_domain="x",  # type: ignore[attr-defined]
                                           target_domain="x", domain_xml="<x/>")))  # fmt: skip
    try:
        refused = receive()
    except PeerError:
        refused = None  # the target hung up: refused too
    assert refused is None or isinstance(refused, Abort), refused
    # What the target records of that peer is the host name it claimed in its Hello: nothing proves it.
    log = p.dst.home / "ldmd.log"
    wait_for("the refusal in the target's log", lambda: "migration from mallory" in log.read_text())
