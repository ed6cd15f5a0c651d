"""Restart recovery under random kills: random configuration commands through `ldm`, `ldmd` SIGKILLed at
random moments (between commands, while an `ldm` waits for its answer, and during the restart's own
recovery), then restarted and checked.

Theory of operation (commands.py: the commands and the model; campaign.py: the loop and the judging).  A
campaign is one seeded `random.Random`: it picks each command from the host's current state (domains
ldg1..ldg5, their vCPUs, memory, crypto units, vnets, vdisks, variables; services; SP configurations;
bind/unbind/start/stop; delayed reconfigurations of primary and its reboot), and decides whether and when to
kill.  Every command is also run by the model: `ldoms.ops.base.run` on the machine ldmd served just before
(the same code ldmd runs, without ldmd's effects, store and locks), which predicts the new machine or the
refusal.  The outcome of each command is then judged:

- ldm exited 0 (acknowledged): the machine ldmd serves (after a restart, if it was killed) is the predicted
  one, up to what two correct runs may differ in (`canonical`: a start's clock, a new domain's UUID);
- ldm printed a refusal: the model refused with the same message, and nothing changed;
- ldm lost ldmd (killed mid-flight): after the restart the machine is exactly the one before (absent) or
  the predicted one (present), never anything else (ldmd commits a stop before it stops the guests, so a
  kill in between is the completed stop; see the two tests below);
- a kill between commands: after the restart, the machine is exactly the one served before the kill.

After every command: the bindings invariants (`binding_problems`: nothing held twice, congruent memory,
bindings matching constraints) and the guest processes (`guest_problems`: each active guest domain has its
live process, no orphan).  After every restart also: guests that were active and that the command did not
touch run with the same pid and the same `started_at` (uptime not reset), and `ldm list -p` agrees.

The model's verdict on each acknowledged command and the exact comparison after each restart are what keep
the test from passing vacuously; at the end it also checks that enough commands succeeded and that ldmd was
killed while an ldm was connected.

Reproducing: the seed is printed (`-s` shows it; a failure's message holds it and the last commands).
`LDOMS_KILL_SEED=N` replays the same choices; where an in-flight kill lands inside ldmd's work is timing, so
a replay diverges after the first in-flight kill that ends differently, but every outcome is checked.

    .venv/bin/pytest tests/recovery                  # the bounded sample (~30 s; in the default run, CI)
    .venv/bin/pytest -m slow tests/recovery          # the long campaigns (several seeds, minutes)
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from typing import cast

import pytest

from ldoms.binding import factory_default
from ldoms.model.codec import to_json
from ldoms.model.domain import DomainState
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.units import M
from tests.integration.conftest import DEADLINE_S, pid_alive, wait_for
from tests.integration.test_migrate_e2e import environment
from tests.recovery.campaign import LOST, Campaign, Outcome, campaign_seed, run_campaign
from tests.recovery.commands import SETUP, predict
from tests.recovery.conftest import KillHost, binding_problems, signal_pending


# ------------------------------------------------------------------------------------------- tests
def test_random_kills_bounded_sample(kill_host: KillHost) -> None:
    """~30 s: 55 random commands, a dozen kills (CI runs this one)."""
    run_campaign(kill_host, campaign_seed(), steps=55)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("campaign", range(4))
def test_random_kills_long(kill_host: KillHost, campaign: int) -> None:
    """The long run: four campaigns of 300 commands, each on a fresh host, each with its own seed."""
    base = campaign_seed()
    run_campaign(kill_host, (base + campaign) % (1 << 32), steps=300)


def test_stop_all_killed_between_two_guests_is_all_or_nothing(kill_host: KillHost) -> None:
    h = kill_host
    h.make_room()
    h.add_guest("ldg1")
    h.add_guest("ldg2")
    pid1, pid2 = h.guest_pid("ldg1"), h.guest_pid("ldg2")
    assert pid1 is not None and pid2 is not None
    os.kill(pid1, signal.SIGSTOP)  # ldg1 is stopped first and cannot exit: ldmd waits for it
    try:
        p = h.spawn_ldm("stop-domain", "-a")
        wait_for("ldmd to ask the guest of ldg1 to stop", lambda: signal_pending(pid1, signal.SIGTERM))
        h.kill9()
    finally:
        os.kill(pid1, signal.SIGCONT)  # it handles the pending SIGTERM and exits
    p.communicate(timeout=DEADLINE_S)
    wait_for("the guest of ldg1 to exit", lambda: not pid_alive(pid1))
    h.restart()
    states = {d["config"]["name"]: d["state"] for d in h.machine_doc()["domains"]}
    assert (states["ldg1"], states["ldg2"]) in (("active", "active"), ("bound", "bound")), states


def test_a_stop_killed_before_its_commit_is_the_stop(kill_host: KillHost) -> None:
    h = kill_host
    h.make_room()
    h.add_guest("ldg1")
    h.ldm("add-spconfig", "cfg1")  # the running configuration is now saved: `cfg1 [current]`
    pid = h.guest_pid("ldg1")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # it cannot exit on SIGTERM until continued: ldmd waits for it
    try:
        p = h.spawn_ldm("stop-domain", "ldg1")
        wait_for("ldmd to ask the guest of ldg1 to stop", lambda: signal_pending(pid, signal.SIGTERM))
        h.kill9()
    finally:
        os.kill(pid, signal.SIGCONT)
    p.communicate(timeout=DEADLINE_S)
    wait_for("the guest of ldg1 to exit", lambda: not pid_alive(pid))
    h.restart()
    assert h.parseable("ldg1")["state"] == "bound"
    # What the same stop says when it completes: the configuration changed since cfg1 was saved.
    assert h.ldm("list-spconfig").stdout == "factory-default\ncfg1 [next poweron]\n"


def test_a_start_killed_before_its_commit_leaves_no_orphan(kill_host: KillHost) -> None:
    """Deterministic: ldmd killed while the new guest starts (before the commit) -> the domain stays bound
    and the restarted ldmd kills the guest process it finds."""
    h = kill_host
    h.make_room()
    h.add_guest("ldg1", start=False)
    pre = h.machine_doc()
    h.term()  # the guest will hold before it is ready (its pid file): ldmd cannot commit the start
    with environment(LDMD_TEST_HOOKS=json.dumps({"pause": {"guest:ready": 60}})):
        h.restart()
    p = h.spawn_ldm("start-domain", "ldg1")
    wait_for("the guest process of ldg1 to appear", lambda: "ldg1" in h.guest_processes())
    orphans = h.guest_processes()["ldg1"]
    wait_for("the guest to hold", lambda: "holding 60 s at guest:ready" in _log(h, "ldg1"))
    assert not (h.home / "guests" / "ldg1.pid").exists()
    h.kill9()
    r = p.communicate(timeout=DEADLINE_S)
    assert p.returncode != 0 and r[1].startswith(LOST), r
    h.restart()
    assert h.machine_doc() == pre
    assert "ldg1" not in h.guest_processes()
    assert not any(pid_alive(pid) for pid in orphans)
    assert not (h.home / "guests" / "ldg1.mem").exists()
    assert "killed the guest of LDom ldg1" in (h.home / "ldmd.log").read_text()


def _log(h: KillHost, name: str) -> str:
    try:
        return (h.home / "guests" / f"{name}.log").read_text()
    except FileNotFoundError:
        return ""


# ------------------------------------------------------------------------------- the checks have teeth
GUESTS_BOUND = (
    *SETUP,
    *(("add-domain", n) for n in ("ldg1", "ldg2")),
    *(("add-vcpu", "4", n) for n in ("ldg1", "ldg2")),
    *(("add-memory", "1G", n) for n in ("ldg1", "ldg2")),
    *(("bind-domain", n) for n in ("ldg1", "ldg2")),
)


def _model(*commands: tuple[str, ...]) -> Machine:
    m = factory_default(load_platform("t5240"), "h1", seed=1)
    for argv in commands:
        pred = predict(m, argv)
        assert pred.machine is not None, f"{argv}: {pred.error}"
        m = pred.machine
    return m


def test_binding_checks_see_shared_strands_and_incongruent_memory() -> None:
    m = _model(*GUESTS_BOUND)
    assert binding_problems(m) == []
    d1, d2 = m.domain("ldg1"), m.domain("ldg2")
    assert d1.bindings is not None and d2.bindings is not None
    shared = replace(d2, bindings=replace(d2.bindings, strands=d1.bindings.strands))
    assert any("held by both ldg1 and ldg2" in p for p in binding_problems(m.with_domain(shared)))
    blk = d1.bindings.mblocks[0]
    moved = replace(d1, bindings=replace(d1.bindings, mblocks=(replace(blk, pa=blk.pa + 4 * M),)))
    assert any("is not congruent" in p for p in binding_problems(m.with_domain(moved)))
    unbound = replace(d1, state=DomainState.INACTIVE)
    assert any("inactive but holds bindings" in p for p in binding_problems(m.with_domain(unbound)))


def test_the_judge_accepts_all_or_nothing_and_refuses_half() -> None:
    pre = _model(*SETUP)
    pre_doc = to_json(pre)
    argv = ("add-domain", "ldg1")
    pred = predict(pre, argv)
    assert pred.machine is not None
    present = to_json(pred.machine)
    c = Campaign(cast(KillHost, None), seed=0, steps=0, p_during=0, p_between=0)
    c.log.append("#0 ldm add-domain ldg1")
    lost = Outcome(1, "", LOST[1])
    c.judge(argv, "lost", lost, pre_doc, pred, pre_doc)  # absent
    c.judge(argv, "lost", lost, pre_doc, pred, present)  # present
    assert (c.stats["lost-absent"], c.stats["lost-present"]) == (1, 1)
    half = to_json(pred.machine)
    half["domains"][-1]["config"]["mac"] += 1  # the domain is there, but not as the command made it
    with pytest.raises(AssertionError, match="holds part of it"):
        c.judge(argv, "lost", lost, pre_doc, pred, half)
    with pytest.raises(AssertionError, match="succeeded but the state is not the model's"):
        c.judge(argv, "acked", Outcome(0, "", ""), pre_doc, pred, pre_doc)  # an acknowledged command lost
    with pytest.raises(AssertionError, match="the model accepts it"):
        c.judge(argv, "refused", Outcome(1, "", "LDom ldg1 already exists"), pre_doc, pred, pre_doc)
