"""The migration's building blocks: journals on disk, the memory image scan and digest, the target's image
writer, the CheckRequest built and read back, the run state streamed to ldm, and the test hooks."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from ldoms.binding import factory_default
from ldoms.checks import source_facts
from ldoms.cli.parse import parse_args
from ldoms.daemon.migrate_api import CLIENT_GONE, stream
from ldoms.errors import OpExecError
from ldoms.hv.memory import GuestMemory
from ldoms.migration.checkwire import MalformedRequest, build_check_request, read_check_request
from ldoms.migration.events import CheckRequest, Decision, MemPages, MigrationMode, Role, RoundDone
from ldoms.migration.journal import JournalStore
from ldoms.migration.protocol import Journal, Phase
from ldoms.migration.runstate import Outcome, RunState
from ldoms.migration.transfer import ImageDigest, ImageWriter, TransferError, image_digest, scan_runs
from ldoms.migration.transport import MigrationPolicy, TestHooks
from ldoms.model.domain import DomainState, Vcons
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.ops.base import OpContext, lookup, run
from ldoms.units import PAGE_SIZE, M


# ------------------------------------------------------------------------------------------------ journals
def j(mid: str = "m1", phase: Phase = Phase.CHECKING, role: Role = Role.TARGET) -> Journal:
    return Journal(migration_id=mid, role=role, phase=phase, source_domain="a", target_domain="b", peer="h")


def test_journal_round_trip_and_write_ahead(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "migrations")
    assert store.all() == [] and store.load("m1", Role.TARGET) is None
    store.save(j(), {"token_sha256": "ab"})
    path = store.path("m1", Role.TARGET)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    stamp = path.stat().st_mtime_ns
    store.save(j())  # unchanged: not written again (no fsync per page batch)
    assert path.stat().st_mtime_ns == stamp
    store.save(j(phase=Phase.FINAL), {"cpu_state": "{}"})
    rec = JournalStore(tmp_path / "migrations").load("m1", Role.TARGET)  # a fresh reader: from disk
    assert (
        rec is not None
        and rec.journal.phase is Phase.FINAL
        and rec.journal.recovery() is Decision.KEEP_TARGET
    )
    assert rec.extra == {"token_sha256": "ab", "cpu_state": "{}"}  # extras accumulate
    store.settle(rec, Decision.KEEP_TARGET)
    store.save(j(phase=Phase.DONE))  # a later phase keeps the decision carried out
    rec = store.load("m1", Role.TARGET)
    assert rec is not None and rec.settled and rec.journal.phase is Phase.DONE


def test_journal_names_never_come_from_the_peer(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "migrations")
    store.save(j(mid="../../etc/passwd"))
    (only,) = (tmp_path / "migrations").iterdir()
    assert only.parent == tmp_path / "migrations" and "/" not in only.name and ".." not in only.name
    assert store.load("../../etc/passwd", Role.TARGET) is not None


def test_unreadable_journals_are_skipped_and_pruning_keeps_the_unsettled(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "migrations")
    for i in range(5):
        store.save(j(mid=f"m{i}"))
        if i < 4:
            store.settle(j(mid=f"m{i}"), Decision.DISCARD_TARGET)
    (tmp_path / "migrations" / "garbage.json").write_text("{not json")
    store.prune(keep=1)
    left = {r.journal.migration_id for r in store.all()}
    assert "m4" in left and len(left) == 2


# ------------------------------------------------------------------------------------------ memory images
BLOCKS = [(0x8000000, 4 * M), (0x20000000, 2 * M)]


def filled(path: Path) -> GuestMemory:
    mem = GuestMemory(path, BLOCKS, create=True)
    mem.write(0x8000000, b"\x01" * PAGE_SIZE)
    mem.write(0x8000000 + PAGE_SIZE, b"\x02" * PAGE_SIZE)
    mem.write(0x8000000 + 4 * M - PAGE_SIZE, b"\x03" * PAGE_SIZE)  # last page of block 1 ...
    mem.write(0x20000000, b"\x04" * PAGE_SIZE)  # ... and first of block 2: a file run, two RA runs
    mem.write(0x20000000 + 3 * PAGE_SIZE, b"\x00" * (PAGE_SIZE - 1) + b"\x05")
    return mem


def test_scan_finds_only_non_zero_pages_and_never_crosses_a_block(tmp_path: Path) -> None:
    with filled(tmp_path / "m") as mem:
        runs = [(ra, len(data)) for ra, data in scan_runs(mem)]
        assert runs == [
            (0x8000000, 2 * PAGE_SIZE),
            (0x8000000 + 4 * M - PAGE_SIZE, PAGE_SIZE),
            (0x20000000, PAGE_SIZE),
            (0x20000000 + 3 * PAGE_SIZE, PAGE_SIZE),
        ]
        assert [len(d) for _, d in scan_runs(mem, max_run=PAGE_SIZE)][:2] == [PAGE_SIZE, PAGE_SIZE]
    with GuestMemory(tmp_path / "empty", BLOCKS, create=True) as empty:
        assert list(scan_runs(empty)) == []


def test_digest_is_the_image_not_the_messages(tmp_path: Path) -> None:
    with filled(tmp_path / "m") as mem:
        whole = image_digest(mem)
        cut = ImageDigest()
        for ra, data in scan_runs(mem, max_run=PAGE_SIZE):
            cut.update_run(ra, data)
        assert cut.hexdigest() == whole
        mem.write(0x20000000 + 3 * PAGE_SIZE, b"\x00" * PAGE_SIZE)  # one byte gone: another digest
        assert image_digest(mem) != whole


def test_writer_rebuilds_the_image_and_checks_what_it_is_given(tmp_path: Path) -> None:
    with filled(tmp_path / "src") as src:
        pages = tuple(scan_runs(src))
        want = image_digest(src)
    w = ImageWriter(tmp_path / "dst", BLOCKS)
    w.write(MemPages(round=1, pages=pages))
    w.end_round(RoundDone(round=1, pages=5, nbytes=5 * PAGE_SIZE))
    assert w.digest() == want
    w.write(MemPages(round=2, pages=pages[:1]))
    with pytest.raises(TransferError, match=r"round 2 ended with 1 pages .* announced but 2 pages"):
        w.end_round(RoundDone(round=2, pages=1, nbytes=PAGE_SIZE))
    with pytest.raises(TransferError, match=r"at real address 0x100000 lies outside the domain's memory"):
        w.write(MemPages(round=3, pages=((0x100000, b"\x01" * PAGE_SIZE),)))
    with pytest.raises(TransferError, match="data plane this link did not negotiate"):
        w.write(MemPages(round=3, descriptor=b"x"))
    w.sync()
    w.discard()
    assert not (tmp_path / "dst").exists()


# ---------------------------------------------------------------------------------------------- checkwire
def source_machine() -> Machine:
    m = factory_default(load_platform("t5240"), "src", seed=3)
    for line in ("set-crypto 0 primary", "set-vcpu 8 primary", "set-memory 4G primary", "stop-domain primary",
                 "add-vcc port-range=5000-5100 vcc0 primary", "add-domain hostid=0x1234 ldg1",
                 "add-vcpu 8 ldg1", "add-memory 256M ldg1", "set-vcons group=mine port=5007 ldg1",
                 "bind-domain ldg1"):  # fmt: skip
        words = line.split()
        m = run(m, parse_args(lookup(words[0]).spec, words[1:]), OpContext(now=1.0, random_seed=5)).machine
    return m.with_domain(replace(m.domain("ldg1"), state=DomainState.ACTIVE, softstate="Solaris running"))


def test_check_request_round_trip() -> None:
    m = source_machine()
    facts = source_facts(m, "ldg1", target_name="ldg2")
    ev = build_check_request(facts, target_domain="ldg2", dry_run=False, extra={"token_sha256": "x"})
    assert ev.mode is MigrationMode.ACTIVE and f"<uuid>{facts.domain.config.uuid}</uuid>" in ev.domain_xml
    assert "<hostid>0x1234</hostid>" in ev.domain_xml
    inc = read_check_request(ev)
    assert inc.config == replace(facts.domain.config, name="ldg2", vcons=Vcons())  # console is re-created
    assert inc.facts.name_on_target == "ldg2" and inc.extra == {"token_sha256": "x"}
    assert inc.blocks == facts.domain.bindings.mblocks  # type: ignore[union-attr]


def mangled(**changes: object) -> CheckRequest:
    facts = source_facts(source_machine(), "ldg1")
    ev = build_check_request(facts, target_domain="ldg1", dry_run=False)
    fields = {f: getattr(ev, f) for f in ("mode", "dry_run", "source_domain", "target_domain", "domain_xml",
                                          "runtime")}  # fmt: skip
    return CheckRequest(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"domain_xml": "<LDM_interface/>"}, "not one domain ldg1"),
        ({"domain_xml": "<!DOCTYPE x [<!ENTITY a 'b'>]><x/>"}, "definition the source sent is not valid"),
        ({"source_domain": "other"}, "not one domain other"),
        ({"mode": MigrationMode.BOUND}, "for a bound domain but LDom ldg1 is active"),
        ({"runtime": {"v": 9}}, "format 9; this ldmd reads format 1"),
        ({"runtime": {"v": 1, "facts": {"domain": 7}}}, "facts are malformed"),
        ({"target_domain": "9bad"}, "Invalid LDom name '9bad'"),
    ],
)
def test_malformed_check_requests(changes: dict[str, object], why: str) -> None:
    with pytest.raises(MalformedRequest, match=why):
        read_check_request(mangled(**changes))


def test_hostile_memory_blocks() -> None:
    ev = mangled()
    runtime = __import__("ldoms.migration.events", fromlist=["thaw"]).thaw(ev.runtime)
    runtime["facts"]["domain"]["bindings"]["mblocks"] = [{"ra": 1, "pa": 0, "size": PAGE_SIZE}]
    with pytest.raises(MalformedRequest, match="is not whole 8K pages"):
        read_check_request(mangled(runtime=runtime))
    runtime["facts"]["domain"]["bindings"]["mblocks"] = [{"ra": 0, "pa": 0, "size": "big"}]
    with pytest.raises(MalformedRequest, match="must be integers"):
        read_check_request(mangled(runtime=runtime))
    runtime["facts"]["domain"]["bindings"]["mblocks"] = [
        {"ra": 0, "pa": 0, "size": 2 * PAGE_SIZE},
        {"ra": PAGE_SIZE, "pa": 0, "size": PAGE_SIZE},
    ]
    with pytest.raises(MalformedRequest, match="overlap"):
        read_check_request(mangled(runtime=runtime))


# ----------------------------------------------------------------------------------------- run and stream
def test_run_state_progress_never_decreases_and_replays() -> None:
    run = RunState(domain="ldg1", role=Role.SOURCE, peer="h2")
    assert run.set_progress(10) and not run.set_progress(5) and run.progress == 10
    seen: list[dict[str, object]] = []
    run.subscribe(seen.append)
    run.finish(Outcome(ok=True))
    assert [i["type"] for i in seen] == ["progress", "result"]
    assert run.status().progress == 10 and run.status().role == "source"


def test_stream_ends_with_the_result_and_a_client_that_leaves_cancels() -> None:
    class HostStub:
        migrations = None

    async def read_all(run: RunState) -> list[bytes]:
        return [chunk async for chunk in stream(HostStub(), run)]  # type: ignore[arg-type]

    done = RunState(domain="a", role=Role.SOURCE, peer="h")
    done.set_progress(50)
    done.finish(Outcome(ok=False, lines=("x",), exit_code=1))
    lines = asyncio.run(read_all(done))
    first = json.loads(lines[0])
    assert (first["type"], first["percent"], first["phase"]) == ("progress", 50, "checks")
    assert b'"type": "result"' in lines[-1]

    async def leave_early(run: RunState) -> None:
        gen = stream(HostStub(), run)  # type: ignore[arg-type]
        run.set_progress(3)
        await gen.__anext__()
        await gen.aclose()  # what the server does when the client's connection is gone

    running = RunState(domain="b", role=Role.SOURCE, peer="h")
    asyncio.run(leave_early(running))
    assert running.cancelled.is_set() and running.cancel_reason == CLIENT_GONE


# ------------------------------------------------------------------------------------------------- hooks
def test_hooks_from_the_environment() -> None:
    assert TestHooks.from_env({}) == TestHooks()
    h = TestHooks.from_env(
        {"LDMD_TEST_HOOKS": '{"pause": {"source:transfer": 2}, "drop": ["target:resumed"]}'}
    )
    assert h.pause == {"source:transfer": 2.0} and h.drops("target:resumed") and not h.drops("x")
    with pytest.raises(OpExecError, match="LDMD_TEST_HOOKS is not a valid hooks document"):
        TestHooks.from_env({"LDMD_TEST_HOOKS": "[1"})
    import threading

    cancelled = threading.Event()
    cancelled.set()
    TestHooks(pause={"p": 60.0}).at("p", cancelled)  # a cancel cuts a pause short: returns at once
    assert (
        MigrationPolicy().deadline(Phase.HANDOFF) == 60.0
        and MigrationPolicy().deadline(Phase.PRECOPY) == 120.0
    )
    assert os.environ.get("LDMD_TEST_HOOKS") is None


# ---------------------------------------------------------------------------------- reservation (pure)
def host_after(name: str, *lines: str) -> Machine:
    m = factory_default(load_platform("t5240"), name, seed=7)
    for line in lines:
        words = line.split()
        m = run(m, parse_args(lookup(words[0]).spec, words[1:]), OpContext(now=1.0, random_seed=9)).machine
    return m


ROOM = ("set-crypto 0 primary", "set-vcpu 8 primary", "set-memory 4G primary", "stop-domain primary",
        "add-vcc port-range=5000-5100 vcc0 primary")  # fmt: skip


def seed_source() -> Machine:
    m = host_after("src", *ROOM[:2], "set-memory 8G primary", *ROOM[3:], "add-domain ldg-src",
                   "add-vcpu 8 ldg-src", "add-memory 2G ldg-src", "bind-domain ldg-src")  # fmt: skip
    dom = m.domain("ldg-src")
    assert dom.bindings is not None and [(b.ra, b.pa, b.size) for b in dom.bindings.mblocks] == [
        (0x8000000, 0x208000000, 2048 * M)
    ]
    return m.with_domain(replace(dom, state=DomainState.ACTIVE, softstate="Solaris running"))


def seed_target() -> Machine:
    lines = [*ROOM]
    for name, mblock in (("f1", "0x104000000:64M"), ("f2", "0x148000000:1G"), ("f3", "0x1c8000000:25472M")):
        lines += [f"add-domain {name}", f"add-vcpu 1 {name}", f"add-memory mblock={mblock} {name}",
                  f"bind-domain {name}"]  # fmt: skip
    return host_after("dt212-239", *lines)


def incoming(src: Machine, name: str = "ldg-src") -> object:
    facts = source_facts(src, name)
    return read_check_request(build_check_request(facts, target_domain=name, dry_run=False))


def test_seed_example_on_values() -> None:
    from ldoms.binding import free_memory
    from ldoms.checks import run_target_checks, target_facts
    from ldoms.errors import ResourceError
    from ldoms.migration.reserve import reserve

    src, dst = seed_source(), seed_target()
    assert [(r.pa, r.size) for r in free_memory(dst)] == [(0x108000000, 1024 * M), (0x188000000, 1024 * M)]
    inc = incoming(src)
    report = run_target_checks(inc.facts, target_facts(dst))  # type: ignore[attr-defined]
    assert [f.message for f in report.failures] == [
        "Unable to bind 2G memory region at real address 0x8000000"
    ]
    with pytest.raises(ResourceError, match="Unable to bind 2G memory region at real address 0x8000000"):
        reserve(dst, inc)  # type: ignore[arg-type]


def test_active_shell_keeps_real_addresses_on_whole_cores() -> None:
    from ldoms.migration.reserve import reserve

    src = host_after("src", *ROOM, "add-domain ldg1", "add-vcpu 3 ldg1", "add-memory 1G ldg1",
                     "bind-domain ldg1")  # fmt: skip
    src = src.with_domain(replace(src.domain("ldg1"), state=DomainState.ACTIVE, softstate="Solaris running"))
    dst = host_after("dst", *ROOM)
    shell = reserve(dst, incoming(src, "ldg1"))  # type: ignore[arg-type]
    before = src.domain("ldg1").bindings
    assert shell.bindings is not None and before is not None
    assert [(b.ra, b.size) for b in shell.bindings.mblocks] == [(b.ra, b.size) for b in before.mblocks]
    assert len(shell.bindings.strands) == 3 and len(shell.bindings.reserved_strands) == 5  # one whole core
    assert shell.cpu_dr_disabled and shell.state is DomainState.BOUND and shell.migration.value == "target"
    assert shell.config.memory == 1024 * M and shell.config.mblocks == ()  # the constraints are the source's
