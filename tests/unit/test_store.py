"""The SQLite store: create, load back equal, diff commits, one transaction, kill -9 safety."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from ldoms.model.domain import Bindings, Domain, DomainConfig, DomainState, MemBinding, Vcc, Vds, VdsVolume
from ldoms.model.machine import Machine, SpConfig
from ldoms.model.platform import MemRange, PciBus, Platform
from ldoms.store import Store, StoreError, platform_doc
from ldoms.units import G, M

PLATFORM = Platform(
    name="tiny",
    model="Tiny",
    cpu_type="UltraSPARC T2 Plus",
    cpu_mhz=1415,
    sockets=1,
    cores_per_socket=2,
    strands_per_core=4,
    memory=(MemRange(pa=0, size=64 * M, reserved=True), MemRange(pa=64 * M, size=4 * G - 64 * M)),
    hw_max_pagesize=256 * M,
    pci_buses=(PciBus(dev="pci@400", pseudonym="bus_a"),),
)


def machine() -> Machine:
    primary = Domain(
        config=DomainConfig(
            name="primary",
            uuid="u-1",
            hostid=0x1,
            mac=0x00144FF80001,
            vcpus=8,
            memory=4 * G - 64 * M,
            vds=(Vds(name="primary-vds0", volumes=(VdsVolume(name="vol1", backend="/x", options=("ro",)),)),),
            vcc=(Vcc(name="primary-vcc0", port_min=5000, port_max=5100),),
            variables=(("auto-boot?", "true"),),
        ),
        state=DomainState.ACTIVE,
        bindings=Bindings(
            strands=tuple(range(8)), mblocks=(MemBinding(ra=64 * M, pa=64 * M, size=4 * G - 64 * M),)
        ),
        started_at=1000.5,
    )
    ldg1 = Domain(config=DomainConfig(name="ldg1", uuid="u-2", hostid=0x2, mac=0x00144FF80002, vcpus=4))
    return Machine(
        host_name="h1",
        platform=PLATFORM,
        domains=(primary, ldg1),
        spconfigs=(SpConfig(name="initial", domains=(primary,)),),
        current_spconfig="initial",
    )


def test_create_then_load_gives_an_equal_machine(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    assert not s.has_host()
    s.create_host(machine(), listen="127.0.0.1:8101")
    s.close()
    s2 = Store(tmp_path / "state.db")
    assert s2.has_host()
    rec = s2.load()
    assert rec.machine == machine()
    assert rec.listen == "127.0.0.1:8101"
    assert s2.stored_platform() == PLATFORM
    assert platform_doc(s2.stored_platform()) == platform_doc(PLATFORM)


def test_database_is_wal_with_full_sync(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s.create_host(machine(), listen="127.0.0.1:8101")
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_commit_writes_changes_removals_and_order(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    m = machine()
    s.create_host(m, listen="127.0.0.1:8101")
    ldg2 = Domain(config=DomainConfig(name="ldg2", uuid="u-3", hostid=3, mac=3, memory=1 * G))
    m2 = replace(
        m.without_domain("ldg1")
        .with_domain(ldg2)
        .with_domain(replace(m.domain("ldg1"), state=DomainState.BOUND)),
        next_spconfig="initial",
        spconfigs=(),
    )
    s.commit(m2)
    s.close()
    loaded = Store(tmp_path / "state.db").load().machine
    assert loaded == m2
    assert [d.name for d in loaded.domains] == ["primary", "ldg2", "ldg1"]


def test_commit_writes_only_rows_that_changed(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    m = machine()
    s.create_host(m, listen="127.0.0.1:8101")
    statements: list[str] = []
    s._db.set_trace_callback(statements.append)
    s.commit(m.with_domain(replace(m.domain("ldg1"), softstate="x")))
    writes = [q for q in statements if q.startswith(("INSERT", "UPDATE", "DELETE"))]
    assert len(writes) == 2  # ldg1's row and the machine document (spconfig_modified flipped)
    assert any("ldg1" in q for q in writes)


def test_commit_encodes_only_the_domains_that_are_new_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ldoms.store import db

    s = Store(tmp_path / "state.db")
    m = machine()
    s.create_host(m, listen="127.0.0.1:8101")
    m2 = m.with_domain(replace(m.domain("ldg1"), softstate="x"))
    s.commit(m2)  # fills the cache with this machine's domains
    encoded: list[str] = []
    real = db._dump
    monkeypatch.setattr(db, "_dump", lambda v: (encoded.append(getattr(v, "name", "?")), real(v))[1])
    m3 = m2.with_domain(replace(m2.domain("ldg1"), softstate="y"))
    s.commit(m3)
    assert encoded == ["ldg1"]  # the unchanged domains (and SP configurations) were not re-encoded
    s.close()
    assert Store(tmp_path / "state.db").load().machine == m3


def test_failed_commit_changes_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    m = machine()
    s.create_host(m, listen="127.0.0.1:8101")
    s._db.execute(
        "CREATE TRIGGER no_ldg3 BEFORE INSERT ON domains WHEN NEW.name = 'ldg3' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    ldg3 = Domain(config=DomainConfig(name="ldg3", uuid="u", hostid=4, mac=4))
    broken = m.with_domain(replace(m.domain("ldg1"), softstate="changed")).with_domain(ldg3)
    with pytest.raises(StoreError, match="write failed: refused"):
        s.commit(broken)
    assert Store(tmp_path / "state.db").load().machine == m
    # The store still commits against what it last wrote.
    m3 = m.with_domain(replace(m.domain("ldg1"), softstate="later"))
    s.commit(m3)
    assert Store(tmp_path / "state.db").load().machine == m3


def test_set_listen(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s.create_host(machine(), listen="127.0.0.1:8101")
    s.set_listen("127.0.0.1:9000")
    assert Store(tmp_path / "state.db").load().listen == "127.0.0.1:9000"


def test_errors_name_the_database(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    with pytest.raises(StoreError, match="holds no complete host"):
        s.load()
    with pytest.raises(StoreError, match="holds no host"):
        s.stored_platform()
    with pytest.raises(StoreError, match="commit before load"):
        s.commit(machine())
    s.create_host(machine(), listen="x:1")
    with pytest.raises(StoreError, match="already holds host h1"):
        s.create_host(machine(), listen="x:1")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s.create_host(machine(), listen="x:1")
    s._db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    s.close()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(tmp_path / "state.db")


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot be opened"):
        Store(tmp_path / "state.db")


def test_malformed_document_is_reported(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s.create_host(machine(), listen="x:1")
    s._db.execute("UPDATE domains SET doc = '{\"config\": 5}' WHERE name = 'ldg1'")
    with pytest.raises(StoreError, match="malformed"):
        s.load()


_WRITER = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from unit.test_store import machine
    from ldoms.store import Store
    s = Store(Path({db!r}))
    m = machine()
    s.create_host(m, listen="x:1")
    k = 0
    while True:
        k += 1
        # Every domain carries the same counter: a half-written commit would show two values.
        m = replace(m, domains=tuple(replace(d, softstate=str(k)) for d in m.domains))
        s.commit(m)
        print(k, flush=True)
    """
)


def test_kill_9_during_commits_loses_no_completed_commit_and_keeps_none_half(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    tests_dir = str(Path(__file__).resolve().parents[1])
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(tests=tests_dir, db=str(db))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        last = 0
        for line in child.stdout:  # blocks on the child's output, no sleeping
            last = int(line)
            if last >= 40:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert last >= 40
    rec = Store(db).load()
    counters = {d.softstate for d in rec.machine.domains}
    assert len(counters) == 1
    assert int(counters.pop()) >= last
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    json.loads(conn.execute("SELECT value FROM meta WHERE key='machine'").fetchone()[0])
