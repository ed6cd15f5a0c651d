"""A random-kills campaign: the loop that runs commands through `ldm`, kills and restarts `ldmd`, and judges
every outcome (the theory of operation is in test_random_kills.py's docstring)."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldoms.model.codec import to_json
from ldoms.model.domain import DomainState
from ldoms.model.machine import Machine
from tests.integration.conftest import DEADLINE_S, pid_alive
from tests.recovery.commands import SETUP, Prediction, choose, guests_of, predict, touched
from tests.recovery.conftest import (
    KillHost,
    binding_problems,
    canonical,
    decode_machine,
    diff,
    guest_problems,
    has_socket,
)

SEED_ENV = "LDOMS_KILL_SEED"
LOST = ("Failed to connect to logical domain manager", "Lost the connection to the logical domain manager")


# ------------------------------------------------------------------------------------------- a campaign
@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str
    killed: bool = False
    connected: bool = False  # the kill came while that ldm held its connection to ldmd
    kill_wall: float = 0.0

    @property
    def kind(self) -> str:
        if self.rc == 0:
            return "acked"
        if any(self.stderr.startswith(x) for x in LOST):
            return "lost"
        return "refused"


class Campaign:
    def __init__(self, host: KillHost, seed: int, steps: int, *, p_during: float, p_between: float) -> None:
        self.host = host
        self.seed = seed
        self.steps = steps
        self.p_during = p_during
        self.p_between = p_between
        self.rng = random.Random(seed)
        self.stats: Counter[str] = Counter()
        self.log: list[str] = []
        self.durations: dict[str, list[float]] = {}
        self.restart_times: list[float] = []
        self.doc: dict[str, Any] = {}
        self.machine: Machine | None = None
        self.entry = 0  # the log line of the command being judged

    # ------------------------------------------------------------------ reporting
    def fail(self, message: str) -> None:
        tail = "\n  ".join(self.log[-25:])
        raise AssertionError(
            f"{message}\n(seed {self.seed}: replay with {SEED_ENV}={self.seed}; last commands:\n  {tail})"
        )

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.fail(message)

    def summary(self) -> str:
        s = self.stats
        return (
            f"random kills, seed {self.seed}: {self.steps} commands ({s['acked']} acknowledged, "
            f"{s['refused']} refused, {s['lost']} lost to a kill: {s['lost-absent']} absent, "
            f"{s['lost-present']} present); {s['restarts']} restarts "
            f"({s['kill-between']} between commands, {s['kill-during']} during one, "
            f"{s['kill-connected']} of them while ldm was connected, {s['kill-at-commit']} aimed at the "
            f"commit, {s['kill-recovery']} during recovery)"
        )

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        for argv in SETUP:
            self.host.ldm(*argv)
        self.sync()
        for i in range(self.steps):
            self.step(i)
        self.kill_between(self.steps)  # and once more at the end, whatever the dice said

    def sync(self) -> None:
        self.doc = self.host.machine_doc()
        self.machine = decode_machine(self.doc)
        self.check_state("")

    def step(self, i: int) -> None:
        assert self.machine is not None
        argv = choose(self.rng, self.machine)
        pre_doc, pre = self.doc, self.machine
        pred = predict(pre, argv)
        weights = (1 - self.p_during - self.p_between, self.p_during, self.p_between)
        mode = self.rng.choices(("plain", "during", "between"), weights)[0]
        if argv[0] in ("start-domain", "stop-domain") and mode == "plain" and self.rng.random() < 0.3:
            mode = "during"  # the verbs with effects (guest processes) deserve more in-flight kills
        aim, frac = self.rng.random(), self.rng.random()  # drawn whatever the mode: the stream stays aligned
        if i % 20 == 10:  # every 20 commands, for sure: a kill early in ldmd's work on this command
            mode, aim, frac = "during", 0.0, frac * 0.25
        if mode == "during":
            out = self.run_killed(argv, aim, frac)
        else:
            t0 = time.monotonic()
            r = self.host.ldm(*argv, ok=False)
            self.durations.setdefault(argv[0], []).append(time.monotonic() - t0)
            out = Outcome(r.returncode, r.stdout, r.stderr.strip())
        kind = out.kind
        self.stats[kind] += 1
        what = f"#{i} ldm {' '.join(argv)} -> {kind}" + (
            f" (ldmd killed {'while ldm was connected' if out.connected else 'during the command'})"
            if out.killed
            else ""
        )
        self.log.append(what + ("" if kind != "refused" else f": {out.stderr}"))
        self.entry = len(self.log) - 1
        if out.killed:
            self.restart()
        actual = self.host.machine_doc()
        self.judge(argv, kind, out, pre_doc, pred, actual)
        self.doc, self.machine = actual, decode_machine(actual)
        self.check_state(what)
        if out.killed:
            self.check_restart(argv, pre, out.kill_wall)
        if mode == "between":
            self.kill_between(i)

    def judge(
        self,
        argv: tuple[str, ...],
        kind: str,
        out: Outcome,
        pre_doc: dict[str, Any],
        pred: Prediction,
        actual: dict[str, Any],
    ) -> None:
        cmd = f"ldm {' '.join(argv)}"
        if kind == "refused":
            self.check(pred.machine is None, f"{cmd} was refused ({out.stderr}); the model accepts it")
            self.check(out.stderr == pred.error, f"{cmd}: ldmd says {out.stderr!r}, the model {pred.error!r}")
            self.check(actual == pre_doc, f"{cmd} was refused but changed the state: {diff(pre_doc, actual)}")
            return
        if kind == "acked":
            self.check(pred.machine is not None, f"{cmd} succeeded; the model refuses it: {pred.error}")
            assert pred.machine is not None
            want = canonical(to_json(pred.machine), pre_doc)
            got = canonical(actual, pre_doc)
            self.check(got == want, f"{cmd} succeeded but the state is not the model's: {diff(want, got)}")
            return
        # Lost: ldmd was killed before ldm had its answer.  All of it, or none of it.
        if actual == pre_doc:
            self.stats["lost-absent"] += 1
            self.log[self.entry] += ": absent after the restart"
            return
        self.check(
            pred.machine is not None,
            f"{cmd} (killed) changed the state, yet the model refuses it "
            f"({pred.error}): {diff(pre_doc, actual)}",
        )
        assert pred.machine is not None
        want = canonical(to_json(pred.machine), pre_doc)
        got = canonical(actual, pre_doc)
        if got == want:
            self.stats["lost-present"] += 1
            self.log[self.entry] += ": present after the restart"
            return
        self.fail(
            f"{cmd} was killed mid-flight and the restarted host holds part of it: neither the state before "
            f"(differences {diff(pre_doc, actual)}) nor the predicted one (differences {diff(want, got)})"
        )

    # ------------------------------------------------------------------ kills
    def _estimate(self, verb: str) -> tuple[float, float]:
        """(whole ldm run, ldmd's part of it) for `verb`, from this campaign's plain runs."""
        every = [d for ds in self.durations.values() for d in ds]
        startup = min(every) if every else 0.15  # the quickest command is nearly all interpreter start
        mine = self.durations.get(verb) or every or [0.2]
        whole = statistics.median(mine) * 1.2
        return whole, max(0.02, (statistics.median(mine) - startup) * 1.5)

    def run_killed(self, argv: tuple[str, ...], aim: float, frac: float) -> Outcome:
        """Run `ldm argv` and SIGKILL ldmd while it runs, at one of three kinds of moment:
        - a random part of ldmd's typical time for the verb after ldm connected (inside ldmd's work);
        - as soon as the state database's write-ahead log changes (just after the commit, before the answer
          reaches ldm: the outcome "present although ldm lost ldmd" is otherwise a millisecond wide);
        - a random part of a typical whole ldm run after it was spawned (often before it connects)."""
        whole, server = self._estimate(argv[0])
        wal = self.host.home / "state.db-wal"
        wal_before = _stat_key(wal)
        p = self.host.spawn_ldm(*argv)
        deadline = time.monotonic() + DEADLINE_S
        if aim < 0.35:
            while p.poll() is None and not has_socket(p.pid) and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(frac * server)  # the kill moment, chosen at random (not a wait for an event)
        elif aim < 0.6:
            self.stats["kill-at-commit"] += 1
            while p.poll() is None and _stat_key(wal) == wal_before and time.monotonic() < deadline:
                time.sleep(0.0002)
        else:
            time.sleep(frac * whole)
        connected = p.poll() is None and has_socket(p.pid)
        kill_wall = time.time()
        self.host.kill9()
        stdout, stderr = p.communicate(timeout=DEADLINE_S)
        self.stats["kill-during"] += 1
        self.stats["kill-connected"] += connected
        return Outcome(
            p.returncode, stdout, stderr.strip(), killed=True, connected=connected, kill_wall=kill_wall
        )

    def restart(self) -> None:
        """Start ldmd again; sometimes kill it during its start (recovery) first."""
        self.stats["restarts"] += 1
        if self.rng.random() < 0.2:
            est = statistics.median(self.restart_times) if self.restart_times else 0.8
            self.host.start_ldmd(first=False, wait=False)
            time.sleep(self.rng.random() * est)  # a random moment of the start-up, recovery included
            self.host.kill9()
            self.stats["kill-recovery"] += 1
            self.log.append("   ldmd killed again during its start-up")
        t0 = time.monotonic()
        self.host.restart()
        self.restart_times.append(time.monotonic() - t0)

    def kill_between(self, i: int) -> None:
        assert self.machine is not None
        before_doc, before = self.doc, self.machine
        kill_wall = time.time()
        self.host.kill9()
        self.stats["kill-between"] += 1
        self.log.append(f"#{i} ldmd killed between commands")
        self.restart()
        actual = self.host.machine_doc()
        self.check(
            actual == before_doc,
            f"after a kill between commands the restarted host differs from the "
            f"one before: {diff(before_doc, actual)}",
        )
        self.check_state("after a kill between commands")
        self.check_restart((), before, kill_wall)

    # ------------------------------------------------------------------ invariants
    def check_state(self, what: str) -> None:
        assert self.machine is not None
        problems = binding_problems(self.machine) + guest_problems(self.machine, self.host.guest_processes())
        self.check(not problems, f"{what}: " + "; ".join(problems))

    def check_restart(self, argv: tuple[str, ...], pre: Machine, kill_wall: float) -> None:
        """Guests the command did not touch kept running through the kill, same pid, same uptime origin;
        and `ldm list -p` agrees with the state."""
        m = self.machine
        assert m is not None
        may_change = touched(argv, pre)
        for d in guests_of(pre, DomainState.ACTIVE):
            if d.name in may_change:
                continue
            now = m.find(d.name)
            self.check(
                now is not None
                and now.state == DomainState.ACTIVE
                and now.guest_pid == d.guest_pid
                and now.started_at == d.started_at
                and pid_alive(d.guest_pid),
                f"the guest of LDom {d.name} (pid {d.guest_pid}) did not survive the kill of ldmd as it was: "
                f"now {None if now is None else (now.state.value, now.guest_pid, now.started_at)}",
            )
        listed = {}
        for line in self.host.ldm("list", "-p").stdout.splitlines():
            if line.startswith("DOMAIN|"):
                f = dict(kv.split("=", 1) for kv in line.split("|")[1:] if "=" in kv)
                listed[f["name"]] = f
        self.check(
            {n: f["state"] for n, f in listed.items()} == {d.name: d.state.value for d in m.domains},
            f"ldm list -p after the restart disagrees with the state: {listed}",
        )
        for d in guests_of(m, DomainState.ACTIVE):
            if d.started_at <= kill_wall:  # running before the kill: its uptime counts from then
                up = int(listed[d.name]["uptime"])
                self.check(
                    up >= int(kill_wall - d.started_at),
                    f"LDom {d.name} lists uptime {up} s after the restart: reset",
                )


def _stat_key(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (st.st_size, st.st_mtime_ns)


def campaign_seed() -> int:
    text = os.environ.get(SEED_ENV)
    return int(text) if text else random.SystemRandom().randrange(1 << 32)


def run_campaign(host: KillHost, seed: int, steps: int) -> Campaign:
    c = Campaign(host, seed, steps, p_during=0.12, p_between=0.07)
    print(f"random kills: seed {seed} (replay: {SEED_ENV}={seed})", flush=True)
    c.run()
    print(c.summary(), flush=True)
    c.check(c.stats["acked"] >= steps // 4, f"only {c.stats['acked']} of {steps} commands succeeded")
    c.check(c.stats["restarts"] >= 3, f"ldmd was restarted only {c.stats['restarts']} times")
    c.check(c.stats["kill-connected"] >= 1, "ldmd was never killed while an ldm waited for its answer")
    return c
