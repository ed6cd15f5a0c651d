"""Guest processes: start, identity, control socket, stop, orphans, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ldoms.daemon.sockpath import connect_unix, read_line
from ldoms.hv import proc
from ldoms.hv.files import GuestFiles, PidRecord
from ldoms.hv.memory import allocated_bytes
from ldoms.hv.supervisor import GuestError, GuestPolicy, GuestSupervisor
from ldoms.model.domain import Bindings, Domain, DomainConfig, DomainState, MemBinding
from ldoms.units import G, M
from tests.conftest import Reaper


def domain(name: str = "ldg1", *, size: int = 1 * G, variables: tuple[tuple[str, str], ...] = ()) -> Domain:
    return Domain(
        config=DomainConfig(name=name, uuid="u", hostid=1, mac=1, vcpus=2, memory=size, variables=variables),
        state=DomainState.ACTIVE,
        bindings=Bindings(strands=(8, 9), mblocks=(MemBinding(ra=0x8000000, pa=0x10000000, size=size),)),
    )


@pytest.fixture
def sup(tmp_path: Path, reaper: Reaper) -> GuestSupervisor:
    return GuestSupervisor(reaper.watch(tmp_path / "guests"))


def ctl(sup: GuestSupervisor, name: str, request: bytes) -> dict[str, object]:
    with connect_unix(sup.files(name).ctl, timeout=5) as s:
        s.sendall(request)
        return json.loads(read_line(s, 1 << 20))


def test_started_guest_is_a_separate_session_with_a_sparse_memory_file(sup: GuestSupervisor) -> None:
    rec = sup.start(domain())
    assert rec.pid != os.getpid()
    assert os.getsid(rec.pid) == rec.pid  # its own session: ldmd's signals do not reach it
    mem = sup.files("ldg1").mem
    assert mem.stat().st_size == 1 * G
    assert allocated_bytes(mem) < 1 * M
    assert proc.alive(rec.pid, rec.starttime)
    assert sup.find("ldg1") == rec
    assert sup.scan() == [rec]
    assert sup.cpu_seconds(rec) is not None


def test_control_socket_answers(sup: GuestSupervisor) -> None:
    rec = sup.start(domain())
    assert ctl(sup, "ldg1", b'{"cmd": "ping"}\n') == {"ok": True, "domain": "ldg1", "pid": rec.pid}
    status = ctl(sup, "ldg1", b'{"cmd": "status"}\n')
    assert status["memory"] == 1 * G and status["vcpus"] == 2 and status["workload"] == "idle"
    assert ctl(sup, "ldg1", b'{"cmd": "fly"}\n')["ok"] is False
    assert "bad request" in str(ctl(sup, "ldg1", b"garbage\n")["error"])
    assert "bad request" in str(ctl(sup, "ldg1", b"[1]\n")["error"])
    assert sup.find("ldg1") == rec  # garbage did not hurt it


def test_stop_ends_the_guest_and_removes_its_memory(sup: GuestSupervisor) -> None:
    rec = sup.start(domain())
    sup.stop("ldg1")
    assert not proc.alive(rec.pid, rec.starttime)
    files = sup.files("ldg1")
    assert not files.mem.exists() and not files.pid.exists() and not files.ctl.exists()
    assert sup.find("ldg1") is None
    sup.stop("ldg1")  # stopping a stopped guest is not an error


def test_discard_kills_at_once_and_the_name_is_free_again(sup: GuestSupervisor) -> None:
    rec = sup.start(domain())
    sup.discard("ldg1")
    files = sup.files("ldg1")
    assert not files.mem.exists() and not files.pid.exists() and not files.ctl.exists()
    assert sup.find("ldg1") is None
    again = sup.start(domain())  # at once: the killed guest runs no clean-up that could remove these files
    deadline = time.monotonic() + 20
    while proc.alive(rec.pid, rec.starttime):
        assert time.monotonic() < deadline, "the discarded guest did not die"
        time.sleep(0.01)
    sup.reap()
    assert sup.find("ldg1") == again and files.mem.exists()
    sup.discard("ldg1")
    sup.discard("ldg1")  # nothing left to discard: not an error


def test_guest_exits_cleanly_on_sigterm_when_not_our_child(tmp_path: Path, reaper: Reaper) -> None:
    gdir = reaper.watch(tmp_path / "guests")
    gdir.mkdir()
    files = GuestFiles(gdir, "ldg2")
    files.spec.write_text(json.dumps({"domain": "ldg2", "mblocks": [[0, 8192]], "vcpus": 1}))
    child = subprocess.Popen(
        [sys.executable, "-m", "ldoms.hv.guest", "--dir", str(gdir), "--domain", "ldg2"],
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while files.read_pidfile() is None:
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=20) == 0
    assert not files.mem.exists() and not files.pid.exists()


def test_reused_pid_is_not_taken_for_the_guest(sup: GuestSupervisor) -> None:
    sup.dir.mkdir(parents=True)
    files = sup.files("ldg1")
    # Our own pid with a wrong start time, then with the right one but the wrong command line.
    files.write_pidfile(pid=os.getpid(), starttime=1, domain="ldg1")
    assert sup.find("ldg1") is None
    files.write_pidfile(pid=os.getpid(), starttime=proc.own_starttime(), domain="ldg1")
    assert sup.find("ldg1") is None
    sup.stop("ldg1")  # must not signal us
    assert not files.pid.exists()


def test_second_start_is_refused(sup: GuestSupervisor) -> None:
    rec = sup.start(domain())
    with pytest.raises(GuestError, match=f"one already runs \\(pid {rec.pid}\\)"):
        sup.start(domain())


def test_unbound_domain_cannot_start(sup: GuestSupervisor) -> None:
    with pytest.raises(GuestError, match="LDom ldg1: it holds no memory"):
        sup.start(replace(domain(), bindings=None))


def test_failed_start_reports_the_guests_reason(sup: GuestSupervisor) -> None:
    bad = domain(variables=(("ldoms-workload", "bogus"),))
    with pytest.raises(GuestError, match=r"Guest of LDom ldg1 failed to start .*unknown workload 'bogus'"):
        sup.start(bad)
    assert not sup.files("ldg1").mem.exists()
    assert sup.scan() == []


def test_start_that_never_gets_ready_is_killed(tmp_path: Path, reaper: Reaper) -> None:
    # A "python" that never writes a pid file: the start deadline fires and the process is killed.
    fake = tmp_path / "fakepython"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")
    fake.chmod(0o755)
    sup = GuestSupervisor(
        reaper.watch(tmp_path / "guests"), python=str(fake), policy=GuestPolicy(start_timeout_s=0.3)
    )
    with pytest.raises(
        GuestError, match=r"did not become ready within 0\.3 s \(start phase\); it was killed"
    ):
        sup.start(domain())


def test_stubborn_guest_is_killed_after_the_stop_deadline(tmp_path: Path, reaper: Reaper) -> None:
    sup = GuestSupervisor(reaper.watch(tmp_path / "guests"), policy=GuestPolicy(stop_timeout_s=0.2))
    rec = sup.start(domain())
    os.kill(rec.pid, signal.SIGSTOP)  # a stopped process does not act on SIGTERM
    sup.stop("ldg1")
    assert not proc.alive(rec.pid, rec.starttime)


def test_kill_and_scan(sup: GuestSupervisor) -> None:
    a = sup.start(domain("ldg1"))
    b = sup.start(domain("ldg2", size=256 * M))
    assert sorted(r.domain for r in sup.scan()) == ["ldg1", "ldg2"]
    sup.kill(a)
    assert not proc.alive(a.pid, a.starttime)
    assert [r.domain for r in sup.scan()] == ["ldg2"]
    sup.kill(PidRecord(pid=a.pid, starttime=a.starttime, domain="ldg1"))  # already gone: no error
    assert sup.names_with_files() == {"ldg1", "ldg2"}  # the killed guest could not clean up
    assert proc.alive(b.pid, b.starttime)
