"""The control socket against real guest processes: status, suspend/resume, throttle, verify, errors."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ldoms.hv.control import GuestControl, GuestControlError
from ldoms.hv.files import GuestFiles
from ldoms.hv.ledger import verify
from ldoms.hv.memory import GuestMemory
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.model.domain import Bindings, Domain, DomainConfig, DomainState, MemBinding
from ldoms.units import PAGE_SIZE, M
from tests.conftest import Reaper

RA = 0x8000000
SIZE = 16 * M


def domain(name: str = "ldg1", **variables: str) -> Domain:
    return Domain(
        config=DomainConfig(
            name=name,
            uuid="u",
            hostid=1,
            mac=1,
            vcpus=2,
            memory=SIZE,
            variables=tuple((k.replace("_", "-"), v) for k, v in variables.items()),
        ),
        state=DomainState.ACTIVE,
        bindings=Bindings(strands=(8, 9), mblocks=(MemBinding(ra=RA, pa=0x10000000, size=SIZE),)),
    )


def wait_for(what: str, pred: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def sup(tmp_path: Path, reaper: Reaper) -> GuestSupervisor:
    return GuestSupervisor(reaper.watch(tmp_path / "guests"))


def steps(ctl: GuestControl) -> int:
    return int(ctl.status()["steps"])


def test_status_reports_workload_profile_conditions_and_progress(sup: GuestSupervisor) -> None:
    sup.start(
        domain(
            ldoms_workload="ledger",
            ldoms_os="solaris10-10/09",
            ldoms_bound_processes="2",
            ldoms_softstate="OpenBoot Running",
        )
    )
    ctl = sup.control("ldg1")
    status = wait_for("dirty rate", lambda: (s := ctl.status())["dirty_rate"] > 0 and s)
    assert status["workload"] == "ledger" and status["steps"] > 0
    assert status["suspended"] is False and status["throttle"] == 0 and status["standby"] is False
    assert status["profile"] == {
        "os_name": "Solaris 10 10/09",
        "live_migration": True,
        "latest_migration": False,
        "cpu_dr": True,
        "crypto_dr": True,
        "mem_split": False,
        "effective_max_pagesize": 0,
    }
    assert status["conditions"] == {"bound_processes": 2, "processor_sets": 0}
    assert status["softstate"] == "OpenBoot Running"
    assert status["pages"] == SIZE // PAGE_SIZE and status["dirty_pages"] > 0
    assert status["incoming"] is False and status["downtime"] is None
    assert status["workload_status"]["seed"] == 1
    sup.stop("ldg1")
    assert not sup.files("ldg1").dirty.exists()


def test_suspend_holds_at_a_step_boundary_and_resume_continues(sup: GuestSupervisor) -> None:
    sup.start(domain(ldoms_workload="ledger", ldoms_seed="11"))
    ctl = sup.control("ldg1")
    wait_for("some steps", lambda: steps(ctl) >= 20)
    answer = ctl.suspend(5.0)
    state = answer["state"]
    assert state["workload"] == "ledger" and state["seed"] == 11 and state["domain"] == "ldg1"
    assert state["steps"] >= 20 and abs(state["suspended_at"] - time.time()) < 60
    assert ctl.suspend()["state"] == state  # suspending a suspended guest changes nothing
    status = ctl.status()
    assert status["suspended"] is True and status["steps"] == state["steps"]
    # Held still at a step boundary: the image is exactly the ledger of that many steps.
    with GuestMemory(sup.files("ldg1").mem, [(RA, SIZE)], create=False) as mem:
        assert verify(mem, 11, state["steps"]) == []
    assert ctl.status()["steps"] == state["steps"]
    assert ctl.resume() == {"ok": True, "resumed": True}
    assert ctl.resume() == {"ok": True, "resumed": False}
    wait_for("steps after resume", lambda: steps(ctl) > state["steps"] + 5)
    assert ctl.status()["suspended_at"] is None


def test_verify_command_holds_the_guest_still_and_names_a_bad_page(sup: GuestSupervisor) -> None:
    sup.start(domain(ldoms_workload="ledger"))
    ctl = sup.control("ldg1")
    wait_for("some steps", lambda: steps(ctl) >= 10)
    result = ctl.verify()
    assert result["consistent"] is True and result["problems"] == [] and result["steps"] >= 10
    assert ctl.status()["suspended"] is False  # verify resumed the guest it suspended
    wait_for("steps after verify", lambda: steps(ctl) > result["steps"])
    n = ctl.suspend()["state"]["steps"]
    with GuestMemory(sup.files("ldg1").mem, [(RA, SIZE)], create=False) as mem:
        mem.pages()[0, 4000] ^= 0xFF  # corrupt the header page
    result = ctl.verify()
    assert result["consistent"] is False
    assert result["problems"] == [f"header page 0 (RA {RA:#x}): corrupted (first difference at byte 4000)"]
    assert ctl.status()["suspended"] is True and steps(ctl) == n  # it was suspended: it stays so


def test_throttle_reduces_the_step_rate(sup: GuestSupervisor) -> None:
    sup.start(domain(ldoms_workload="ledger"))  # 1024 steps/s unthrottled
    ctl = sup.control("ldg1")
    wait_for("some steps", lambda: steps(ctl) >= 10)

    def rate_over(window: float) -> float:
        t0, s0 = time.monotonic(), steps(ctl)
        wait_for("the window", lambda: time.monotonic() - t0 >= window)
        return (steps(ctl) - s0) / (time.monotonic() - t0)

    free = rate_over(0.4)
    assert ctl.throttle(90) == {"ok": True, "throttle": 90}
    throttled = rate_over(0.4)
    assert ctl.status()["throttle"] == 90
    assert throttled < free / 3  # 10 % of the rate, with a wide margin for a loaded machine
    ctl.throttle(0)
    assert ctl.status()["throttle"] == 0


def test_idle_and_suspended_guests_sleep(sup: GuestSupervisor) -> None:
    idle = sup.start(domain("ldg1"))
    busy = sup.start(domain("ldg2", ldoms_workload="dirty", ldoms_dirty_rate="64M"))
    sup.control("ldg2").suspend()
    before = {rec.pid: sup.cpu_seconds(rec) for rec in (idle, busy)}
    t0 = time.monotonic()
    wait_for("a while", lambda: time.monotonic() - t0 >= 0.5)
    for rec in (idle, busy):
        used = sup.cpu_seconds(rec) - before[rec.pid]  # type: ignore[operator]
        assert used < 0.1, f"guest {rec.domain} used {used:.2f} s of CPU while it had nothing to do"


def test_refused_requests_name_the_domain_and_command(sup: GuestSupervisor) -> None:
    sup.start(domain(ldoms_workload="dirty", ldoms_dirty_rate="1M"))
    ctl = sup.control("ldg1")
    for percent, message in ((100, "throttle 100 % is out of range 0..99"), (-5, "out of range")):
        with pytest.raises(
            GuestControlError, match=f"Guest of LDom ldg1: throttle request failed: .*{message}"
        ):
            ctl.throttle(percent)
    with pytest.raises(GuestControlError, match=r"throttle needs an integer percent 0\.\.99, not '9'"):
        ctl.request("throttle", percent="9")
    with pytest.raises(
        GuestControlError, match=r"verify request failed: verify needs the ledger workload .* 'dirty'"
    ):
        ctl.verify()
    with pytest.raises(GuestControlError, match="fly request failed: unknown command 'fly'") as info:
        ctl.request("fly")
    assert (info.value.domain, info.value.cmd, info.value.code) == ("ldg1", "fly", "guest-control")
    with pytest.raises(GuestControlError, match=r"restore request failed: .* not an incoming guest"):
        ctl.restore({"workload": "dirty"})
    assert ctl.ping()["domain"] == "ldg1"  # none of that hurt it


def test_unreachable_guest(tmp_path: Path) -> None:
    files = GuestFiles(tmp_path, "ldg9")
    ctl = GuestControl(files, timeout=0.2)
    with pytest.raises(GuestControlError, match=r"Guest of LDom ldg9: status request failed: .*not running"):
        ctl.status()
    # A socket nobody serves (a guest hung mid-step, or stopped with SIGSTOP): the timeout names itself.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(files.ctl))
        server.listen(1)
        with pytest.raises(GuestControlError, match=r"ldg9: suspend request failed: no answer within 0\.2 s"):
            ctl.suspend()
    # The socket file is left behind by a dead guest: nobody listens.
    with pytest.raises(GuestControlError, match="ping request failed: the guest is not running"):
        ctl.ping()


def test_bad_answers_are_reported(tmp_path: Path) -> None:
    files = GuestFiles(tmp_path, "ldg9")
    ctl = GuestControl(files, timeout=5)
    for answer, message in (
        (b"", "closed the connection without answering"),
        (b"nonsense\n", "unreadable answer b'nonsense\\\\n'"),
        (b"[1]\n", "unreadable answer"),
        (b'{"ok": false}\n', "refused without a reason"),
        (b"x" * (4 * 1024 * 1024 + 1), "answer longer than 4194304 bytes"),
        (None, "control socket error: .*Connection reset"),  # closed with our request unread
    ):
        files.ctl.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(files.ctl))
            server.listen(1)

            def serve(server: socket.socket = server, answer: bytes | None = answer) -> None:
                conn, _ = server.accept()
                with conn:
                    if answer is None:
                        conn.recv(1, socket.MSG_PEEK)  # the request is here: close with it unread
                        return
                    conn.recv(4096)
                    try:
                        conn.sendall(answer)
                    except OSError:
                        pass  # the client gave up reading (the too-long answer)

            t = threading.Thread(target=serve)
            t.start()
            with pytest.raises(GuestControlError, match=message):
                ctl.ping()
            t.join()
