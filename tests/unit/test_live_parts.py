"""Parts of live migration with a little I/O: the data channels' preamble and deadlines, the target's image
(space reserved, sizes checked, scrubbing, the boot it is valid for), the run state's progress items and
cancel callbacks, the journal writes the control channel skips, and the bounded migration history."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from ldoms.binding import factory_default
from ldoms.daemon.host import Host
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.migration import live_target
from ldoms.migration.dataplane_gate import seal_preamble
from ldoms.migration.dataplane_keys import KeySchedule, migration_tag
from ldoms.migration.dataplane_link import (
    MAGIC,
    PREAMBLE,
    ChannelListener,
    DataLinkError,
    is_idle_timeout,
    open_channels,
)
from ldoms.migration.engine_common import make_record
from ldoms.migration.events import Role
from ldoms.migration.live_plan import ProgressFacts
from ldoms.migration.live_target import ImageSpaceError, create_image, image_survives, scrub
from ldoms.migration.runstate import Outcome, RunState
from ldoms.migration.source_plane import shrink, unshrunk
from ldoms.model.platforms import load_platform
from ldoms.store import Store
from ldoms.units import M

# ------------------------------------------------------------------------------------------ data channels
SECRET = bytes(range(32))


def test_channels_arrive_in_channel_order_and_strangers_are_refused() -> None:
    lst = ChannelListener("127.0.0.1", "mig-1", 3, secret=SECRET, idle_s=5)
    stray = socket.create_connection(("127.0.0.1", lst.port))
    stray.sendall(PREAMBLE.pack(MAGIC, migration_tag("another"), 0, 3))  # another migration's channel
    got: list[socket.socket] = []
    t = threading.Thread(target=lambda: got.extend(lst.accept_all(10)))
    t.start()
    socks = open_channels("127.0.0.1", lst.port, "mig-1", 3, secret=SECRET, connect_s=5, idle_s=5)
    t.join(10)
    try:
        assert len(got) == 3
        for i, (a, b) in enumerate(zip(socks, got, strict=True)):
            a.sendall(bytes([i]))
            assert b.recv(1) == bytes([i])  # channel i on both ends
        stray.settimeout(5)
        assert stray.recv(1) == b""  # closed by the target
    finally:
        for s in (*socks, *got, stray):
            s.close()


def test_missing_channels_meet_the_deadline() -> None:
    lst = ChannelListener("127.0.0.1", "mig-2", 2, secret=SECRET, idle_s=5)
    first = socket.create_connection(("127.0.0.1", lst.port))
    key = KeySchedule(SECRET, "mig-2").preamble_key()
    first.sendall(seal_preamble(key, migration_tag("mig-2"), 0, 2))  # channel 0 of 2; channel 1 never comes
    one = [first]
    with pytest.raises(DataLinkError, match=r"only \d of 2 data channels connected within 0.3 s"):
        lst.accept_all(0.3)
    for s in one:
        s.close()
    with pytest.raises(DataLinkError, match="Cannot open data channel 0 of 1"):
        open_channels("127.0.0.1", lst.port, "mig-2", 1, secret=SECRET, connect_s=1, idle_s=1)  # port closed


def test_idle_deadline_is_recognised() -> None:
    assert is_idle_timeout("data channel 0: Resource temporarily unavailable")
    assert is_idle_timeout("data channel 1: timed out")
    assert not is_idle_timeout("data channel 0: connection reset by peer")


# ------------------------------------------------------------------------------------------- the image
def test_the_image_is_sparse_and_never_someone_elses(tmp_path: Path) -> None:
    path = tmp_path / "ldg1.mem"
    create_image(path, 64 * M, host="h2")
    assert path.stat().st_size == 64 * M
    assert path.stat().st_blocks == 0  # nothing allocated ahead: the lanes' pwrite allocates the pages
    with pytest.raises(Exception, match="cannot create the memory image"):
        create_image(path, 64 * M, host="h2")  # exists already: never someone else's file


def test_a_full_disk_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.statvfs(tmp_path)

    class Full:
        f_frsize, f_bavail = real.f_frsize, (16 * M) // real.f_frsize

    monkeypatch.setattr(live_target.os, "statvfs", lambda p: Full())
    path = tmp_path / "ldg1.mem"
    with pytest.raises(ImageSpaceError) as e:
        create_image(path, 64 * M, host="h2")  # 16 MiB free: the domain's 64 MiB do not fit
    assert e.value.message.startswith(
        f"Target host h2 has no room for the memory image: {path}: no space left"
    )
    assert "(64 MiB for the domain's memory)" in e.value.message and not path.exists()
    create_image(path, 16 * M, host="h2")  # what fits is accepted
    assert path.exists()


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "ldg1.mem"
    with pytest.raises(Exception, match=f"Target host h2 cannot create the memory image {path}: no such"):
        create_image(path, 64 * M, host="h2")


def test_scrub_takes_the_image_away_at_once(tmp_path: Path) -> None:
    path = tmp_path / "ldg1.mem"
    path.write_bytes(b"secret" * 1000)
    t = scrub(path)
    assert not path.exists()
    assert t is not None
    t.join(10)
    assert not list(tmp_path.iterdir())
    assert scrub(path) is None  # nothing to do


def test_an_image_held_in_memory_is_valid_for_its_boot_only() -> None:
    assert image_survives(live_target.boot_id())
    assert not image_survives("00000000-0000-0000-0000-000000000000")
    assert image_survives("") and image_survives(None)  # no boot id recorded: flushed (issue 3) or unknown


# --------------------------------------------------------------------------------------------- run state
def test_progress_is_gated_and_never_goes_back() -> None:
    run = RunState(domain="ldg1", role=Role.SOURCE, peer="h2")
    seen: list[dict[str, object]] = []
    run.subscribe(seen.append)
    assert run.report(ProgressFacts(percent=10, phase="precopy"), now=0.0)
    assert not run.report(ProgressFacts(percent=20, phase="precopy"), now=0.05)  # too soon
    assert run.report(ProgressFacts(percent=5, phase="precopy"), now=0.2)  # a lower figure is kept at 20
    assert [i["percent"] for i in seen] == [10, 20] and run.progress == 20
    assert run.set_progress(30, "suspended") and seen[-1]["phase"] == "suspended"
    run.finish(Outcome(ok=True, record={"id": "m"}))
    assert seen[-1]["record"] == {"id": "m"}
    late: list[dict[str, object]] = []
    run.subscribe(late.append)  # a late subscriber gets the latest progress and the result
    assert [i["type"] for i in late] == ["progress", "result"] and late[0]["percent"] == 30


def test_cancel_callbacks_run_once_from_the_cancelling_thread() -> None:
    run = RunState(domain="ldg1", role=Role.SOURCE, peer="h2")
    calls: list[str] = []
    off = run.on_cancel(lambda: calls.append("a"))
    run.on_cancel(lambda: calls.append("b"))
    off()
    run.cancel("stop")
    run.cancel("again")
    assert calls == ["b"] and run.cancel_reason == "stop"
    run.on_cancel(lambda: calls.append("late"))  # registered after the cancel: called at once
    assert calls == ["b", "late"]


# ------------------------------------------------------------------------------------------------ shrink
def test_the_1_2_shrink_keeps_one_strand_and_gives_them_back() -> None:
    m = factory_default(load_platform("t5240"), "h1")
    dom = m.control
    small = shrink(dom)
    assert small.bindings is not None and small.bindings.strands == dom.bindings.strands[:1]  # type: ignore[union-attr]
    assert unshrunk(small, dom.bindings.strands) == dom  # type: ignore[union-attr]
    assert shrink(small) == small and unshrunk(small, ()) == small


# ------------------------------------------------------------------------------------------------ history
def test_history_is_stored_bounded_and_read_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    m = factory_default(load_platform("t5240"), "h1")
    store.create_host(m, listen="127.0.0.1:1")
    host = Host(machine=m, store=store, guests=GuestSupervisor(tmp_path / "g"), listen="127.0.0.1:1")
    for i in range(105):
        host.record_migration(
            make_record(
                migration_id=f"m{i}",
                domain="ldg1",
                role="source",
                peer="h2",
                kind="active",
                started_at=1.0,
                outcome="completed",
                reason="a\\nb  c",
                rounds=i,
            )
        )
    assert [r.id for r in host.view().history][:2] == ["m5", "m6"] and len(host.history) == 100
    again = Host(machine=m, store=store, guests=GuestSupervisor(tmp_path / "g"), listen="127.0.0.1:1")
    assert again.history == host.history and again.history[-1].rounds == 104
    assert len(store.migrations()) == 100
    store.set_setting("migration-defaults", "max-downtime=100ms")
    assert store.get_setting("migration-defaults") == "max-downtime=100ms"
    store.set_setting("migration-defaults", None)
    assert store.get_setting("migration-defaults") is None
    assert make_record(migration_id="x", domain="d", role="target", peer="p", kind="bound", started_at=0,
                       outcome="failed", reason="one\\n  two").reason == "one\\n two"  # fmt: skip
    os.sync()


# ------------------------------------------------------------------------------------------ host defaults
def test_host_migration_defaults_are_stored_and_applied(tmp_path: Path) -> None:
    from ldoms.daemon.main import _store_migration_defaults, full_parser
    from ldoms.daemon.migrate import MigrationManager
    from ldoms.errors import UsageError
    from ldoms.migration.precopy_knobs import PrecopyPolicy

    store = Store(tmp_path / "state.db")
    m = factory_default(load_platform("t5240"), "h1")
    store.create_host(m, listen="127.0.0.1:1")
    host = Host(machine=m, store=store, guests=GuestSupervisor(tmp_path / "g"), listen="127.0.0.1:1")
    mgr = MigrationManager(host, tmp_path, None)  # type: ignore[arg-type]
    assert mgr.defaults() == PrecopyPolicy()
    args = full_parser().parse_args(["--migration-defaults", "max-downtime=200ms, bandwidth=1G"])
    _store_migration_defaults(store, args)
    assert mgr.defaults() == PrecopyPolicy(max_downtime_s=0.2, bandwidth_cap=1 << 30)
    assert store.get_setting(
        "migration-defaults",
    ) == ("max-downtime=200ms,bandwidth=1G,auto-converge=on,max-time=none,max-rounds=30")
    _store_migration_defaults(store, full_parser().parse_args([]))  # omitted: kept
    assert mgr.defaults().max_downtime_s == 0.2
    with pytest.raises(UsageError, match="Unknown migration setting 'speed'"):
        _store_migration_defaults(store, full_parser().parse_args(["--migration-defaults", "speed=1"]))
    _store_migration_defaults(store, full_parser().parse_args(["--migration-defaults", ""]))
    assert mgr.defaults() == PrecopyPolicy()
    store.set_setting("migration-defaults", "max-downtime=fast")  # written by another release
    assert mgr.defaults() == PrecopyPolicy()
