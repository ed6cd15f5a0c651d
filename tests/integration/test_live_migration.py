"""Live migration between two real ldmd hosts on 127.0.0.1, through `ldm` (and the API stream where the
progress contract is checked): a ledger guest moved back and forth and proved intact after every move, a
busy guest that converges, the pre-copy policy refusing (and auto-converge rescuing) a guest that does not,
cancelling in every phase, links cut around the final round with the automatic recovery, the 1.2 way for a
legacy guest, and the faults (a damaged data frame, a guest that dies, a peer that stops reading, a full
disk).  Waiting is polling with a deadline; test hooks (LDMD_TEST_HOOKS) hold a daemon at a named point."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ldoms.cli.client import Client
from ldoms.hv.control import GuestControl
from ldoms.hv.files import GuestFiles
from ldoms.migration.live_plan import PHASES
from tests.integration.conftest import DEADLINE_S, LDM, LdmHost, pid_alive, wait_for
from tests.integration.test_migrate_e2e import (
    PASSWORD,
    TARGET,
    TRAILER,
    USER,
    Pair,
    add_guest,
    environment,
    fingerprint,
    hooks_env,
    make_pair,
)

LEDGER = {"ldoms-workload": "ledger", "ldoms-dirty-rate": "20M"}


# ------------------------------------------------------------------------------------------------ helpers
def control(h: LdmHost, name: str) -> GuestControl:
    return GuestControl(GuestFiles(h.home / "guests", name), timeout=10)


def assert_consistent(h: LdmHost, name: str) -> None:
    answer = control(h, name).verify(timeout=120)
    assert answer["consistent"], answer["problems"][:5]


def assert_running_free(h: LdmHost, name: str) -> None:
    """The guest runs, unsuspended and unthrottled."""
    st = control(h, name).status()
    assert (st["suspended"], st["throttle"]) == (False, 0), st


def history(h: LdmHost) -> list[Any]:
    return list(Client(h.home).view().history)


def restart(h: LdmHost, env: dict[str, str] | None = None) -> None:
    h.term()
    with environment(**(env or {"LDMD_TEST_HOOKS": ""})):
        h.start_ldmd(first=False)


def both_ways(p: Pair) -> None:
    """Let the target migrate back to the source (user and pinned peer on the other side too)."""
    assert p.src.run_ldmd("user", "add", USER, "--password-file", str(p.pwfile)).returncode == 0
    r = p.dst.run_ldmd("peer", "add", "src", f"127.0.0.1:{p.src.port}", "--fingerprint", fingerprint(p.src))
    assert r.returncode == 0, r.stderr


def migrate(h: LdmHost, pwfile: Path, *words: str) -> subprocess.CompletedProcess[str]:
    return h.ldm("migrate-domain", "-p", str(pwfile), *words, ok=False)


def start_migration(p: Pair, *words: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [LDM, "--home", str(p.src.home), "migrate-domain", "-p", str(p.pwfile), *words, "ldg1",
         f"{USER}@{TARGET}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def stream(h: LdmHost, *operands: str, props: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """Every item of the migration's NDJSON stream (the API `ldm migrate-domain` follows)."""
    body = {"flags": {}, "operands": list(operands), "password": PASSWORD, "user": USER, "props": props or []}
    return list(Client(h.home).migrate(body))


@pytest.fixture
def pair(hosts: Callable[..., LdmHost], tmp_path: Path) -> Iterator[Pair]:
    yield make_pair(hosts, tmp_path, src_env=hooks_env(policy={"recovery_retry_min_s": 0.2}))


# ---------------------------------------------------------------------------------------- moving a ledger
def test_ledger_guest_moves_back_and_forth_intact(pair: Pair) -> None:
    p = pair
    both_ways(p)
    add_guest(p.src, "ldg1", **LEDGER)
    items = stream(p.src, "ldg1", f"{USER}@{TARGET}")
    result = items[-1]
    assert result["type"] == "result" and result["ok"], result
    progress = [i for i in items if i["type"] == "progress"]
    assert {"percent", "phase", "round", "bytes_sent", "remaining_bytes", "rate_bytes_s",
            "expected_downtime_s", "throttle"} <= set(progress[0])  # fmt: skip
    percents = [i["percent"] for i in progress]
    assert percents == sorted(percents) and percents[-1] == 100
    seen = [i["phase"] for i in progress]
    assert set(seen) <= set(PHASES) and {"precopy", "suspended", "final", "handoff"} <= set(seen)
    assert seen.index("precopy") < seen.index("suspended") < seen.index("final") < seen.index("handoff")
    rec = result["record"]
    assert (rec["role"], rec["outcome"], rec["kind"]) == ("source", "completed", "active")
    assert rec["rounds"] >= 2 and rec["channels"] >= 1 and rec["bytes_sent"] > 0 and rec["downtime_s"] > 0
    assert_consistent(p.dst, "ldg1")
    assert_running_free(p.dst, "ldg1")
    # back, and over again, through ldm: silent success each time, the ledger intact after each move
    for here, there, peer in ((p.dst, p.src, "src"), (p.src, p.dst, TARGET)):
        r = migrate(here, p.pwfile, "ldg1", f"{USER}@{peer}")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        assert "ldg1" not in here.ldm("ls").stdout
        assert there.parseable("ldg1")["state"] == "active"
        assert_consistent(there, "ldg1")
    src_hist, dst_hist = history(p.src), history(p.dst)
    assert [(r.role, r.outcome) for r in src_hist] == [("source", "completed"), ("target", "completed"),
                                                       ("source", "completed")]  # fmt: skip
    assert [r.role for r in dst_hist] == ["target", "source", "target"]
    assert src_hist[0].id == dst_hist[0].id and dst_hist[0].downtime_s > 0


def test_a_guest_dirtying_256m_a_second_converges(pair: Pair) -> None:
    p = pair
    add_guest(p.src, "ldg1", memory="1G", **{"ldoms-workload": "dirty", "ldoms-dirty-rate": "256M",
                                             "ldoms-working-set": "512M"})  # fmt: skip
    wait_for("the working set written", lambda: control(p.src, "ldg1").status()["dirtied_bytes"] >= 512 << 20)
    items = stream(p.src, "ldg1", f"{USER}@{TARGET}")
    result = items[-1]
    assert result["ok"], result["lines"]
    rec = result["record"]
    assert rec["rounds"] >= 2 and rec["memory_bytes"] == 1 << 30
    assert_running_free(p.dst, "ldg1")
    assert control(p.dst, "ldg1").status()["workload"] == "dirty"


# ------------------------------------------------------------------------------------------------- policy
def test_non_converging_guest_is_refused_and_auto_converge_rescues_it(pair: Pair) -> None:
    p = pair
    add_guest(p.src, "ldg1", **{"ldoms-workload": "dirty", "ldoms-dirty-rate": "160M",
                                "ldoms-working-set": "64M"})  # fmt: skip
    wait_for("the working set written", lambda: control(p.src, "ldg1").status()["dirtied_bytes"] >= 64 << 20)
    before = p.snapshot()
    r = migrate(p.src, p.pwfile, "bandwidth=128M", "auto-converge=off", "ldg1", f"{USER}@{TARGET}")
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and lines[-1] == TRAILER.format("ldg1"), r.stderr
    assert "migration of ldg1 does not converge" in lines[0] or "did not converge" in lines[0], lines
    assert "the guest dirties" in lines[0] and "MB/s and the link moves" in lines[0]
    assert "enable auto-converge" in lines[0]
    assert_running_free(p.src, "ldg1")
    wait_for("both hosts as before", lambda: p.snapshot() == before)
    (rec,) = history(p.src)
    assert rec.outcome == "failed" and "converge" in rec.reason
    # auto-converge on: the guest is throttled until the copy catches up
    items = stream(p.src, "ldg1", f"{USER}@{TARGET}", props=[["bandwidth", "128M"], ["auto-converge", "on"]])
    assert items[-1]["ok"], items[-1]["lines"]
    assert max(i.get("throttle", 0) for i in items if i["type"] == "progress") > 0
    assert_running_free(p.dst, "ldg1")  # the throttle does not travel


# ------------------------------------------------------------------------------------------------- cancel
CANCEL_POINTS = [
    ("checks", "src", "source:checks"),
    ("prepare", "dst", "target:prepare"),
    ("precopy", "src", "source:switch-over"),  # after the pre-copy rounds, the guest still running
    ("suspended", "src", "source:suspended"),  # the guest suspended, before the final round
    ("final", "src", "source:final-state"),  # the final round sent, FinalState not yet
]


@pytest.mark.slow
def test_cancel_in_every_phase_resumes_the_source(pair: Pair) -> None:
    p = pair
    add_guest(p.src, "ldg1", **LEDGER)
    pid = p.src.guest_pid("ldg1")
    before = p.snapshot()
    for phase, side, point in CANCEL_POINTS:
        restart(getattr(p, side), hooks_env(pause={point: 120}))
        proc = start_migration(p)
        try:
            wait_for(f"the migration to reach {phase}", lambda s=side, pt=point: _paused_at(p, s, pt))
            r = p.src.ldm("cancel-operation", "migration", "ldg1")
            assert r.stdout == "Migration of LDom ldg1 cancelled\n", (phase, r.stdout)
            _, err = proc.communicate(timeout=DEADLINE_S)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 1 and err.splitlines()[-1] == TRAILER.format("ldg1"), (phase, err)
        assert "cancelled" in err, (phase, err)
        assert_running_free(p.src, "ldg1")
        assert p.src.guest_pid("ldg1") == pid
        restart(getattr(p, side))  # the next phase's hook (and lets a paused target finish its discard)
        wait_for(f"both hosts as before ({phase})", lambda: p.snapshot() == before)
        assert not (p.dst.home / "guests" / "ldg1.mem").exists()
        wait_for("the target's image scrubbed", lambda: not list(p.dst.home.glob("guests/.ldg1.mem.scrub*")))
    assert_consistent(p.src, "ldg1")
    outcomes = [r.outcome for r in history(p.src)]
    assert outcomes == ["cancelled"] * len(CANCEL_POINTS)


def _paused_at(p: Pair, side: str, point: str) -> bool:
    log = (getattr(p, side).home / "ldmd.log").read_text()
    return f"pausing 120 s at {point}" in log.split("serving host")[-1]


def test_cancel_while_the_precopy_runs(pair: Pair) -> None:
    """The live phase of the cancels above, in the default run (the others are slow)."""
    p = pair
    add_guest(p.src, "ldg1", **LEDGER)
    before = p.snapshot()
    restart(p.src, hooks_env(pause={"source:switch-over": 120}))
    proc = start_migration(p)
    try:
        wait_for("the switch-over", lambda: _paused_at(p, "src", "source:switch-over"))
        r = p.src.ldm("cancel-operation", "migration", "ldg1")
        assert r.stdout == "Migration of LDom ldg1 cancelled\n"
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1 and "Migration of LDom ldg1 cancelled: cancelled by the administrator" in err
    assert_running_free(p.src, "ldg1")
    wait_for("both hosts as before", lambda: p.snapshot() == before)
    wait_for("the target's image scrubbed", lambda: not list(p.dst.home.glob("guests/*ldg1.mem*")))
    assert [r.outcome for r in history(p.src)] == ["cancelled"]


# ---------------------------------------------------------------------------------------- cut links
@pytest.mark.slow
def test_link_cut_before_the_final_round_keeps_the_source(pair: Pair, hosts: Callable[..., LdmHost]) -> None:
    p = pair
    add_guest(p.src, "ldg1", **LEDGER)
    before = p.snapshot()
    restart(p.dst, hooks_env(drop=["target:suspend-ack"]))
    r = migrate(p.src, p.pwfile, "ldg1", f"{USER}@{TARGET}")
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == TRAILER.format("ldg1")
    assert "error state" not in r.stderr
    assert_running_free(p.src, "ldg1")
    wait_for("both hosts as before", lambda: p.snapshot() == before)
    assert_consistent(p.src, "ldg1")


def test_link_cut_after_the_final_round_then_automatic_recovery(pair: Pair) -> None:
    p = pair
    add_guest(p.src, "ldg1", **LEDGER)
    restart(p.dst, hooks_env(drop=["target:resumed"]))
    r = migrate(p.src, p.pwfile, "ldg1", f"{USER}@{TARGET}")
    assert r.returncode == 1 and "left in the error state" in r.stderr
    # the target held the complete domain and runs it; ldmd asks it by itself and removes its copy
    wait_for("the source copy removed", lambda: "ldg1" not in p.src.ldm("ls").stdout)
    assert p.dst.parseable("ldg1")["flags"] == "-n----"
    assert_consistent(p.dst, "ldg1")
    assert [r.outcome for r in history(p.src)] == ["error"]
    assert [r.outcome for r in history(p.dst)] == ["completed"]


@pytest.mark.slow
def test_target_down_after_the_final_state_is_settled_when_it_answers(pair: Pair) -> None:
    p = pair
    add_guest(p.src, "ldg1", **LEDGER)
    pid = p.src.guest_pid("ldg1")
    restart(p.dst, hooks_env(crash=["target:received:FinalState"]))
    r = migrate(p.src, p.pwfile, "ldg1", f"{USER}@{TARGET}")
    assert r.returncode == 1 and "left in the error state" in r.stderr
    assert p.dst.proc is not None and p.dst.proc.wait(timeout=DEADLINE_S) == 70
    assert p.flags(p.src, "ldg1") == "-n---e"  # nobody answers: the error state stays
    with environment(LDMD_TEST_HOOKS=""):
        p.dst.start_ldmd(first=False)  # its journal says the final state never arrived: it discards
    wait_for("the source copy resumed", lambda: p.flags(p.src, "ldg1") == "-n----")
    assert p.src.guest_pid("ldg1") == pid
    assert_running_free(p.src, "ldg1")
    assert_consistent(p.src, "ldg1")
    assert "ldg1" not in p.dst.ldm("ls").stdout


# --------------------------------------------------------------------------------------------- the 1.2 way
def test_a_legacy_guest_migrates_the_1_2_way(pair: Pair) -> None:
    p = pair
    p.src.ldm("add-domain", "ldg1")
    p.src.ldm("add-vcpu", "4", "ldg1")
    p.src.ldm("add-memory", "256M", "ldg1")
    p.src.ldm("set-variable", "ldoms-os=solaris10-10/09", "ldoms-workload=ledger", "ldoms-dirty-rate=20M",
              "ldg1")  # fmt: skip
    p.src.ldm("bind-domain", "ldg1")
    p.src.ldm("start-domain", "ldg1")
    restart(p.src, hooks_env(pause={"source:final-state": 3}))
    proc = start_migration(p)
    try:
        wait_for("the final state", lambda: _paused_at_any(p.src, "source:final-state"))
        assert p.src.parseable("ldg1")["ncpu"] == "1"  # shrunk to one strand for the transfer
        assert control(p.src, "ldg1").status()["suspended"]  # suspended for the whole copy
        out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out, err) == (0, "", "")
    moved = p.dst.parseable("ldg1")
    assert moved["state"] == "active" and moved["ncpu"] == "4"
    r = p.dst.ldm("set-vcpu", "2", "ldg1", ok=False)  # CPU DR is off until the domain reboots
    assert r.returncode == 1 and "CPU dynamic reconfiguration is disabled after its migration" in r.stderr
    busy = [ln for ln in p.dst.ldm("ls-devices", "-a", "cpu").stdout.splitlines()[2:] if ln.split()[1] == "0"]
    assert len(busy) == 8 + 8  # primary's core, and the whole core ldg1's 4 strands hold (4 held back)
    assert_consistent(p.dst, "ldg1")
    (rec,) = history(p.src)
    assert (rec.rounds, rec.outcome) == (1, "completed")


# ------------------------------------------------------------------------------------------------- faults
def test_a_damaged_data_frame_aborts_cleanly(pair: Pair) -> None:
    p = pair
    add_guest(p.src, "ldg1", **LEDGER)
    before = p.snapshot()
    restart(p.src, hooks_env(drop=["source:corrupt-frame"]))
    r = migrate(p.src, p.pwfile, "ldg1", f"{USER}@{TARGET}")
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and lines[-1] == TRAILER.format("ldg1"), r.stderr
    assert "data" in lines[0] and any(w in lines[0] for w in ("tamper", "authentic", "refused")), lines
    assert_running_free(p.src, "ldg1")
    wait_for("both hosts as before", lambda: p.snapshot() == before)
    assert_consistent(p.src, "ldg1")


@pytest.mark.slow
def test_a_guest_that_dies_during_its_migration(pair: Pair) -> None:
    p = pair
    add_guest(p.src, "ldg1", **LEDGER)
    restart(p.src, hooks_env(pause={"source:switch-over": 3}))
    proc = start_migration(p)
    try:
        wait_for("the switch-over", lambda: _paused_at_any(p.src, "source:switch-over"))
        pid = p.src.guest_pid("ldg1")
        assert pid is not None
        os.kill(pid, 9)
        wait_for("the guest gone", lambda: not pid_alive(pid))
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1 and "is no longer running" in err and TRAILER.format("ldg1") in err, err
    wait_for("the dead domain bound", lambda: p.src.parseable("ldg1")["state"] == "bound")
    wait_for("nothing on the target", lambda: "ldg1" not in p.dst.ldm("ls").stdout)


def _paused_at_any(h: LdmHost, point: str) -> bool:
    return f"at {point}" in (h.home / "ldmd.log").read_text().split("serving host")[-1]


def test_a_target_that_stops_reading_meets_the_deadlines(pair: Pair) -> None:
    p = pair
    add_guest(p.src, "ldg1", **LEDGER)
    before = p.snapshot()
    # data plane: the target takes its channels but does not read them
    restart(p.src, hooks_env(policy={"transfer_idle_s": 2}))
    restart(p.dst, hooks_env(pause={"target:receiver": 8}, policy={"transfer_idle_s": 30}))
    r = migrate(p.src, p.pwfile, "ldg1", f"{USER}@{TARGET}")
    assert r.returncode == 1 and "made no progress for 2 s in phase precopy" in r.stderr, r.stderr
    assert "deadline transfer_idle_s" in r.stderr
    assert_running_free(p.src, "ldg1")
    wait_for("both hosts as before", lambda: p.snapshot() == before)
    # control link: the target does not answer Prepare in time
    restart(p.src, hooks_env(policy={"prepare_s": 1}))
    restart(p.dst, hooks_env(pause={"target:prepare": 5}))
    r = migrate(p.src, p.pwfile, "ldg1", f"{USER}@{TARGET}")
    assert r.returncode == 1 and "within 1 s in phase PREPARING" in r.stderr, r.stderr
    assert "(deadline prepare_s)" in r.stderr
    assert_running_free(p.src, "ldg1")
    restart(p.dst)
    wait_for("both hosts as before", lambda: p.snapshot() == before)


def test_a_full_disk_on_the_target_is_named(pair: Pair) -> None:
    p = pair
    guests = p.dst.home / "guests"
    guests.mkdir(mode=0o700, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(guests)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the target's guests: {mount.stderr.strip()}")
    try:
        add_guest(p.src, "ldg1", **{"ldoms-workload": "dirty", "ldoms-dirty-rate": "256M",
                                    "ldoms-working-set": "96M"})  # fmt: skip
        wait_for("the working set", lambda: control(p.src, "ldg1").status()["dirtied_bytes"] >= 96 << 20)
        before = p.snapshot()
        r = migrate(p.src, p.pwfile, "ldg1", f"{USER}@{TARGET}")
        lines = r.stderr.splitlines()
        assert r.returncode == 1 and lines[-1] == TRAILER.format("ldg1"), r.stderr
        assert f"Target host {TARGET} has no room for the memory image: {guests}/ldg1.mem" in lines[0], lines
        assert "no space left on device" in lines[0]
        assert_running_free(p.src, "ldg1")
        wait_for("both hosts as before", lambda: p.snapshot() == before)
    finally:
        p.dst.kill9()
        subprocess.run(["umount", "-l", str(guests)], capture_output=True)
