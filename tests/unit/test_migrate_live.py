"""Live pre-copy between two in-process hosts (real TLS link, real data plane, fake guests): a writer keeps
dirtying the source's memory (write, then mark) while the rounds run, and the target's image must end equal
to the source's; the policy's refusal lifts the throttle; a cancel during the copy aborts the data plane."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_migrate_pair import Pair, hooks, make_pair

from ldoms.checks.facts import GuestProfile
from ldoms.hv.dirtymap import DirtyMap
from ldoms.hv.memory import GuestMemory
from ldoms.migration import transport
from ldoms.migration.engine_source import MigrationRequest
from ldoms.migration.precopy import PrecopyPolicy
from ldoms.migration.runstate import Outcome
from ldoms.model.domain import DomainState
from ldoms.units import PAGE_SIZE

LIVE = GuestProfile(os_name="Solaris 11.3", live_migration=True, latest_migration=True)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = make_pair(tmp_path)
    yield p
    p.listener.close()
    p.src.manager.close()
    p.dst.manager.close()


class Writer:
    """A guest that writes pages, then marks them, until stopped; `pause()` holds it at a step boundary."""

    def __init__(self, p: Pair, name: str, *, pages_per_step: int = 8, span: int = 0) -> None:
        dom = p.src.machine.domain(name)
        assert dom.bindings is not None
        blocks = [(b.ra, b.size) for b in dom.bindings.mblocks]
        self.mem = GuestMemory(p.src.guests.memory_path(name), blocks, create=False)
        self.dirty = DirtyMap(p.src.guests.dirty_path(name), self.mem.npages, create=False)
        self.pages = self.mem.pages()
        self.n = pages_per_step
        self.span = span or len(self.pages)  # the working set: the first `span` pages
        self.stop = threading.Event()
        self.hold = threading.Lock()
        self.steps = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        rng = np.random.default_rng(7)
        while not self.stop.is_set():
            with self.hold:
                idx = rng.integers(0, self.span, self.n)
                self.pages[idx] = rng.integers(1, 255, (self.n, PAGE_SIZE), dtype=np.uint8)
                if self.steps % 5 == 0:
                    self.pages[idx[:1]] = 0  # a page the guest clears
                self.dirty.mark(idx)
                self.steps += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        del self.pages
        self.dirty.close()
        self.mem.close()


def live_guest(p: Pair, name: str = "ldg1", memory: str = "32M") -> Writer:
    p.src.guests.profiles[name] = LIVE
    p.add_guest(name, DomainState.ACTIVE, memory=memory)
    w = Writer(p, name)
    guests = p.src.guests
    real_suspend = guests.suspend

    def suspend(n: str) -> bytes:  # the guest stops at a step boundary
        w.hold.acquire()
        return real_suspend(n)

    def resume(n: str) -> None:
        guests.calls.append(("resume", n))
        guests.suspended.discard(n)
        if w.hold.locked():
            w.hold.release()

    guests.suspend = suspend  # type: ignore[method-assign]
    guests.resume = resume  # type: ignore[method-assign]
    w.thread.start()
    return w


def images_equal(p: Pair, name: str, w: Writer) -> bool:
    dst = p.dst.guests.memory_path(name)
    a = np.frombuffer(w.mem.view(), dtype=np.uint8)
    b = np.fromfile(dst, dtype=np.uint8)
    try:
        return bool(np.array_equal(a, b))
    finally:
        del a


def test_live_rounds_while_the_guest_writes_leave_an_identical_image(pair: Pair) -> None:
    w = live_guest(pair)
    try:
        out = pair.migrate("ldg1")
        assert out.ok, out.lines
        assert out.record is not None and out.record["rounds"] >= 2 and out.record["outcome"] == "completed"
        assert images_equal(pair, "ldg1", w)
        after = pair.dst.machine.domain("ldg1")
        assert not after.cpu_dr_disabled and after.bindings is not None  # live: no 1.2 restrictions
        assert pair.dst.guests.calls == [("standby", "ldg1"), ("restore", "ldg1")]
    finally:
        w.close()


def run_with(p: Pair, policy: PrecopyPolicy) -> Outcome:
    req = MigrationRequest(source="ldg1", target_host="dst", target_ldom="ldg1", user="alice",
                           password="s3cret", precopy=policy)  # fmt: skip
    return p.finish(p.src.manager.start(req))


def test_a_guest_that_outruns_the_cap_is_refused_and_unthrottled(pair: Pair) -> None:
    w = live_guest(pair)
    w.span = 128  # a 1 MiB working set rewritten far faster than 2 MB/s can carry
    try:
        out = run_with(pair, PrecopyPolicy(bandwidth_cap=2 << 20, max_downtime_s=0.05, max_rounds=4))
        assert not out.ok and out.lines[-1] == "Domain Migration of LDom ldg1 failed"
        assert "did not converge in 4 rounds (max-rounds)" in out.lines[0]
        assert "MB/s and the link moves" in out.lines[0]
        assert pair.src.guests.throttles[-1] == ("ldg1", 0)  # auto-converge throttled it; lifted at the end
        assert max(pct for _, pct in pair.src.guests.throttles) > 0
        assert pair.src.machine.domain("ldg1").migration.value == ""
        assert pair.dst.machine.find("ldg1") is None and not pair.dst.guests.memory_path("ldg1").exists()
        assert out.record is not None and out.record["outcome"] == "failed"
    finally:
        w.close()


def test_cancel_during_the_copy_aborts_it(tmp_path: Path) -> None:
    p = make_pair(tmp_path, src_policy=hooks(pause={"source:switch-over": 30.0}))
    w = live_guest(p)
    try:
        run = p.start("ldg1")
        deadline = threading.Event()
        while run.phase != "precopy" and not deadline.wait(0.01):
            pass
        run.cancel("cancelled by the administrator (ldm cancel-operation migration)")
        out = p.finish(run)
        assert out.lines[0].startswith("Migration of LDom ldg1 cancelled")
        assert out.record is not None and out.record["outcome"] == "cancelled"
        assert ("suspend", "ldg1") not in p.src.guests.calls
        assert p.dst.machine.find("ldg1") is None
    finally:
        w.close()
        p.listener.close()


def test_the_suspend_time_reaches_the_target_on_its_own_clock(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target's Pong carries its wall clock (an hour behind here); the state its guest restores holds
    the source's suspend time moved onto that clock (SECURITY.md row 8)."""
    w = live_guest(pair)
    seen: list[float] = []
    real_restore = pair.dst.guests.restore

    def restore(name: str, cpu_state: bytes) -> float | None:
        seen.append(json.loads(cpu_state)["suspended_at"])
        return real_restore(name, cpu_state)

    monkeypatch.setattr(transport, "wall_clock", lambda: time.time() - 3600.0)  # only targets answer Pings
    monkeypatch.setattr(pair.dst.guests, "restore", restore)
    try:
        out = pair.migrate("ldg1")
        assert out.ok, out.lines
    finally:
        w.close()
    assert seen and seen[0] == pytest.approx(1.0 - 3600.0, abs=1.0)  # the fake guest suspended "at 1.0"
