"""Incoming guests: suspend on A, copy the memory, start on B from the state; the ledger carries on seamlessly
and verifies; standby guests; the verifier CLI; refused incoming starts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ldoms.hv import verify as verify_cli
from ldoms.hv.files import GuestFiles
from ldoms.hv.guest import Guest
from ldoms.hv.ledger import verify
from ldoms.hv.memory import GuestMemory
from ldoms.hv.supervisor import GuestError, GuestSupervisor
from tests.conftest import Reaper
from tests.unit.test_guest_control import RA, SIZE, domain, steps, wait_for

LEDGER = {"ldoms_workload": "ledger", "ldoms_seed": "5"}


@pytest.fixture
def hosts(tmp_path: Path, reaper: Reaper) -> tuple[GuestSupervisor, GuestSupervisor]:
    return (
        GuestSupervisor(reaper.watch(tmp_path / "a" / "guests")),
        GuestSupervisor(reaper.watch(tmp_path / "b" / "guests")),
    )


def suspended_ledger(a: GuestSupervisor, at_least: int = 30) -> dict[str, Any]:
    a.start(domain(**LEDGER))
    ctl = a.control("ldg1")
    wait_for("ledger steps", lambda: steps(ctl) >= at_least)
    return ctl.suspend()["state"]


def copy_image(a: GuestSupervisor, b: GuestSupervisor) -> None:
    b.dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(a.files("ldg1").mem, b.files("ldg1").mem)


def test_incoming_restore_continues_the_ledger(hosts: tuple[GuestSupervisor, GuestSupervisor]) -> None:
    a, b = hosts
    state = suspended_ledger(a)
    copy_image(a, b)
    rec = b.start(domain(**LEDGER), incoming_state=state)
    assert rec.downtime is not None and rec.downtime > 0
    a.stop("ldg1")  # the hand-off: only one copy runs from here on
    ctl = b.control("ldg1")
    status = ctl.status()
    assert status["incoming"] is True and status["downtime"] == rec.downtime
    assert status["resumed_at"] == pytest.approx(state["suspended_at"] + rec.downtime)
    assert status["dirty_pages"] > 0  # B tracks its own writes from its first step
    wait_for("steps on B", lambda: steps(ctl) >= state["steps"] + 30)
    result = ctl.verify()
    assert result["consistent"] is True, result["problems"]
    assert result["steps"] > state["steps"] and result["seed"] == 5
    # The verifier, independent of the guest, agrees on the suspended image.
    n = ctl.suspend()["state"]["steps"]
    ok, lines = verify_cli.run(b.dir, "ldg1")
    assert ok and lines == [f"ledger of LDom ldg1: consistent after {n} steps (seed 5, 2048 pages, 16M)"]
    assert "resumed after migration" in b.files("ldg1").log.read_text()


def test_standby_guest_takes_its_state_later(hosts: tuple[GuestSupervisor, GuestSupervisor]) -> None:
    a, b = hosts
    b.dir.mkdir(parents=True)
    receiver = GuestMemory(b.files("ldg1").mem, [(RA, SIZE)], create=True)  # what ldmd's receiver does
    rec = b.start(domain(**LEDGER), standby=True)
    assert rec.downtime is None
    ctl = b.control("ldg1")
    status = ctl.status()
    assert status["standby"] is True and status["suspended"] is True and status["steps"] == 0
    for cmd in ("suspend", "resume", "verify"):
        with pytest.raises(
            GuestError, match=f"{cmd} request failed: .*waiting for its state .* cannot {cmd}"
        ):
            ctl.request(cmd)
    state = suspended_ledger(a)
    with GuestMemory(a.files("ldg1").mem, [(RA, SIZE)], create=False) as source:
        receiver.view()[:] = source.view()  # the transfer, into the memory the standby guest maps
    with pytest.raises(
        GuestError, match="restore request failed: the incoming state is for workload 'dirty'"
    ):
        ctl.restore({**state, "workload": "dirty"})
    answer = ctl.restore(state)
    assert answer["downtime"] > 0 and answer["steps"] == state["steps"] + 1
    assert b.find("ldg1") == rec and b.files("ldg1").read_pidfile().downtime == answer["downtime"]  # type: ignore[union-attr]
    wait_for("steps on B", lambda: steps(ctl) >= state["steps"] + 20)
    assert ctl.verify()["consistent"] is True
    receiver.close()


def test_dirty_workload_continues_where_it_stopped(hosts: tuple[GuestSupervisor, GuestSupervisor]) -> None:
    a, b = hosts
    variables = {"ldoms_workload": "dirty", "ldoms_dirty_rate": "32M", "ldoms_working_set": "4M"}
    a.start(domain(**variables))
    ctl = a.control("ldg1")
    wait_for("dirty steps", lambda: steps(ctl) >= 5)
    state = ctl.suspend()["state"]
    assert {"cursor", "counter", "steps", "suspended_at"} <= set(state)
    copy_image(a, b)
    # A variable changed while the domain ran (the guest reads them at start): the incoming guest runs on
    # and reports it, rather than dying after the source was given up.
    b.start(domain(**variables, ldoms_os="bogus"), incoming_state=state)
    status = b.control("ldg1").status()
    assert status["steps"] >= state["steps"] + 1
    assert status["workload_status"]["pages_written"] >= state["counter"] + 1
    assert "Invalid value 'bogus' for variable ldoms-os" in status["profile_error"]
    assert status["profile"] is None


def test_stale_image_is_refused_and_left_to_the_receiver(
    hosts: tuple[GuestSupervisor, GuestSupervisor],
) -> None:
    a, b = hosts
    a.start(domain(**LEDGER))
    ctl = a.control("ldg1")
    wait_for("ledger steps", lambda: steps(ctl) >= 5)
    ctl.suspend()
    copy_image(a, b)  # a copy taken at one step count ...
    ctl.resume()
    wait_for("more steps", lambda: steps(ctl) >= 50)
    state = ctl.suspend()["state"]  # ... and a state taken later: the final round is missing
    with pytest.raises(
        GuestError, match=r"failed to start .*the suspended state says step \d+: the image is not"
    ):
        b.start(domain(**LEDGER), incoming_state=state)
    files = b.files("ldg1")
    assert files.mem.exists()  # the receiver's, to scrub
    assert not files.pid.exists() and not files.dirty.exists() and not files.spec.exists()
    assert b.scan() == []


def test_refused_incoming_starts(hosts: tuple[GuestSupervisor, GuestSupervisor]) -> None:
    _, b = hosts
    with pytest.raises(
        GuestError, match=r"Cannot start the incoming guest of LDom ldg1: its memory image .* missing"
    ):
        b.start(domain(**LEDGER), incoming_state={"workload": "ledger"})
    b.dir.mkdir(parents=True)
    GuestMemory(b.files("ldg1").mem, [(RA, SIZE)], create=True).close()
    with pytest.raises(GuestError, match="a state and standby exclude each other"):
        b.start(domain(**LEDGER), incoming_state={}, standby=True)
    with pytest.raises(
        GuestError, match=r"failed to start .*incoming state is for workload 'dirty', LDom ldg1's"
    ):
        b.start(domain(**LEDGER), incoming_state={"workload": "dirty", "suspended_at": 1.0})
    with pytest.raises(GuestError, match=r"failed to start .*holds no suspend time: suspended_at=None"):
        b.start(domain(**LEDGER), incoming_state={"workload": "ledger", "seed": 5, "steps": 0})
    assert b.files("ldg1").mem.exists() and b.scan() == []


def test_verifier_cli(
    hosts: tuple[GuestSupervisor, GuestSupervisor], capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = hosts
    a.start(domain(**LEDGER))
    ctl = a.control("ldg1")
    wait_for("ledger steps", lambda: steps(ctl) >= 10)
    argv = ["--dir", str(a.dir), "--domain", "ldg1"]
    assert verify_cli.main(argv) == 2  # running: its image would change under the check
    assert "is running: suspend it first" in capsys.readouterr().err
    n = ctl.suspend()["state"]["steps"]
    done = subprocess.run(
        [sys.executable, "-m", "ldoms.hv.verify", *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ledger of LDom ldg1: consistent after {n} steps (seed 5, 2048 pages, 16M)\n"
    assert verify_cli.main([*argv, "--steps", str(n - 1)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"header page 0 (RA {RA:#x}): records step {n}, expected step {n - 1}"
    assert out[-1] == f"ledger of LDom ldg1: INCONSISTENT after {n - 1} steps (seed 5, 2048 pages, 16M)"
    with GuestMemory(a.files("ldg1").mem, [(RA, SIZE)], create=False) as mem:
        mem.pages()[0] = 7
        assert verify(mem, 5, n)  # the header is garbage now
    assert verify_cli.main(argv) == 1
    assert "not a ledger header, and no --steps given" in capsys.readouterr().out


def test_verifier_cli_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gdir = tmp_path / "guests"
    gdir.mkdir()
    assert verify_cli.main(["--dir", str(gdir), "--domain", "ldg1"]) == 2
    assert "cannot read the spec of LDom ldg1" in capsys.readouterr().err
    spec = {"domain": "ldg1", "mblocks": [[RA, SIZE]], "variables": {}}
    (gdir / "ldg1.spec.json").write_text(json.dumps(spec))
    assert verify_cli.main(["--dir", str(gdir), "--domain", "ldg1"]) == 2
    assert "runs the 'idle' workload, not the ledger" in capsys.readouterr().err
    spec["variables"] = {"ldoms-workload": "ledger"}
    (gdir / "ldg1.spec.json").write_text(json.dumps(spec))
    assert verify_cli.main(["--dir", str(gdir), "--domain", "ldg1"]) == 2
    assert "cannot open the memory image of LDom ldg1" in capsys.readouterr().err
    image = tmp_path / "copy.mem"
    GuestMemory(image, [(RA, SIZE)], create=True).close()  # a fresh image: a ledger of 0 steps
    assert verify_cli.main(["--dir", str(gdir), "--domain", "ldg1", "--mem", str(image)]) == 0
    assert (
        capsys.readouterr().out == "ledger of LDom ldg1: consistent after 0 steps (seed 1, 2048 pages, 16M)\n"
    )
    with pytest.raises(SystemExit):
        verify_cli.main(["--dir", str(gdir), "--domain", "ldg1", "--steps", "-1"])


@pytest.mark.parametrize(
    ("incoming", "message"),
    [
        (5, "the spec's 'incoming' is 5, expected an object"),
        ({}, "the spec's 'incoming' holds neither a state nor standby"),
        ({"state": [1]}, "the incoming state is list, expected an object"),
    ],
)
def test_malformed_incoming_spec_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, incoming: object, message: str
) -> None:
    monkeypatch.chdir(tmp_path)  # a guest binds its control socket in the working directory
    GuestMemory(tmp_path / "ldg1.mem", [(RA, SIZE)], create=True).close()
    spec = {"domain": "ldg1", "mblocks": [[RA, SIZE]], "vcpus": 1, "incoming": incoming}
    with pytest.raises(ValueError, match=re.escape(message)):
        Guest(GuestFiles(Path("."), "ldg1"), spec)
    assert not (tmp_path / "ldg1.ctl").exists()
