"""Guests forked by the zygote (ldoms.hv.zygote): same identity, session and files as exec'd guests; a
zygote that cannot serve is replaced, or the guest is exec'd; bad requests do not stop it; it leaves with
its ldmd."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ldoms.daemon.sockpath import connect_unix
from ldoms.hv import proc, zygote
from ldoms.hv.supervisor import GUEST_MODULE, GuestError, GuestSupervisor
from ldoms.units import M
from tests.conftest import Reaper
from tests.unit.test_guest_process import domain

WAIT_S = 20.0


@pytest.fixture
def sup(tmp_path: Path, reaper: Reaper) -> GuestSupervisor:
    return GuestSupervisor(reaper.watch(tmp_path / "guests"))


def wait(what: str, check: object) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def zygote_pid(sup: GuestSupervisor) -> int:
    return int((sup.dir / zygote.PID_NAME).read_text())


def ask(sup: GuestSupervisor, raw: bytes) -> dict[str, object]:
    with connect_unix(sup.dir / zygote.SOCK_NAME, timeout=5) as s:
        s.sendall(raw)
        s.shutdown(1)
        return json.loads(s.makefile("rb").readline())


def test_a_forked_guest_looks_like_an_execd_one(sup: GuestSupervisor) -> None:
    rec = sup.start(domain(size=64 * M))
    argv = proc.cmdline(rec.pid)
    assert argv[1:] == ["-m", GUEST_MODULE, "--dir", str(sup.dir), "--domain", "ldg1"]  # retitled
    assert os.getsid(rec.pid) == rec.pid  # its own session
    with open(f"/proc/{rec.pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) != os.getpid()  # nobody's child: not ours
    z = zygote_pid(sup)
    assert "--zygote" in proc.cmdline(z) and z != rec.pid
    assert sup.scan() == [rec] and sup.find("ldg1") == rec
    second = sup.start(domain("ldg2", size=64 * M))
    assert zygote_pid(sup) == z  # one zygote serves every start
    sup.stop("ldg1")
    sup.stop("ldg2")
    assert not proc.alive(second.pid, second.starttime) and sup.scan() == []
    sup.stop_zygote()
    assert not proc.alive(z, proc.stat(z).starttime if proc.stat(z) else 0)


def test_a_dead_zygote_is_replaced(sup: GuestSupervisor) -> None:
    sup.start(domain(size=64 * M))
    first = zygote_pid(sup)
    os.kill(first, 9)
    wait("the zygote to die", lambda: proc.stat(first) is None or proc.stat(first).dead)  # type: ignore[union-attr]
    rec = sup.start(domain("ldg2", size=64 * M))
    assert zygote_pid(sup) != first and sup.find("ldg2") == rec


def test_without_a_zygote_the_guest_is_execd(
    sup: GuestSupervisor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise GuestError("the guest zygote exited with status 1")

    monkeypatch.setattr(sup, "_ensure_zygote", broken)
    with caplog.at_level(logging.WARNING, logger="ldmd.guests"):
        rec = sup.start(domain(size=64 * M))
    assert "cannot fork LDom ldg1's guest (the guest zygote exited with status 1): guests are exec'd" in (
        caplog.text
    )
    assert proc.cmdline(rec.pid)[-2:] == ["--domain", "ldg1"]
    assert not (sup.dir / zygote.PID_NAME).exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ldmd.guests"):
        sup.start(domain("ldg2", size=64 * M))  # not tried again: no second warning
    assert "cannot fork" not in caplog.text and not sup.use_zygote


def test_the_zygote_can_be_turned_off(tmp_path: Path, reaper: Reaper) -> None:
    sup = GuestSupervisor(reaper.watch(tmp_path / "guests"), zygote=False)
    rec = sup.start(domain(size=64 * M))
    assert sup.find("ldg1") == rec and not (sup.dir / zygote.PID_NAME).exists()
    sup.stop("ldg1")


def test_bad_requests_get_an_answer_and_the_zygote_serves_on(sup: GuestSupervisor) -> None:
    sup.start(domain(size=64 * M))
    for raw, says in (
        (b"garbage\n", "JSONDecodeError"),
        (b'{"domain": "../etc"}\n', "bad domain name '../etc'"),
        (b'{"domain": 7}\n', "bad domain name 7"),
        (b"[1]\n", "bad domain name None"),
    ):
        assert says in str(ask(sup, raw)["error"])
    rec = sup.start(domain("ldg2", size=64 * M))
    assert sup.find("ldg2") == rec


def test_the_zygote_leaves_with_its_ldmd(tmp_path: Path, reaper: Reaper) -> None:
    gdir = reaper.watch(tmp_path / "guests")
    gdir.mkdir(mode=0o700)
    parent = subprocess.Popen(  # an "ldmd" that starts a zygote and dies
        [sys.executable, "-c", "import subprocess, sys, time; "
         f"subprocess.Popen([sys.executable, '-m', '{GUEST_MODULE}', '--dir', sys.argv[1], '--zygote']); "
         "time.sleep(60)", str(gdir)],
    )  # fmt: skip
    try:
        wait("the zygote", lambda: (gdir / zygote.PID_NAME).exists())
        z = int((gdir / zygote.PID_NAME).read_text())
        start = proc.stat(z)
        assert start is not None
    finally:
        parent.kill()
        parent.wait()
    wait("the zygote to leave", lambda: not proc.alive(z, start.starttime))


def test_retitle_needs_room() -> None:
    assert zygote.retitle(["x" * 100_000]) is False  # far beyond this process's argument area
    assert zygote.valid_domain("ldg1") and not zygote.valid_domain("") and not zygote.valid_domain("a/b")


def test_warm_up_starts_the_zygote_in_the_background(sup: GuestSupervisor) -> None:
    sup.warm_up()
    wait("the zygote", lambda: (sup.dir / zygote.PID_NAME).exists())
    z = zygote_pid(sup)
    sup.start(domain(size=64 * M))
    assert zygote_pid(sup) == z  # the first start used it
    GuestSupervisor(sup.dir, zygote=False).warm_up()  # nothing to do without a zygote

