"""Load: a host with hundreds of domains, listed by several concurrent `ldm` clients while others change it.

The host (tests/load/bighost.py): 300 inactive domains, 40 bound, 10 active with their guest processes, on
a custom 4-socket platform, served by a real `ldmd`.  Then, at the same time:

- readers run `ldm list` and `ldm list -p` in turn; an API reader fetches `GET /v1/view` (what every
  listing fetches) and checks the bindings invariants of what it gets;
- mutators each walk their own domains through add-domain, add-vcpu, add-memory, bind, unbind and (every
  other one) remove-domain, through `ldm`.

Checked: every `ldm` exits 0 and prints a well-formed listing (each name once); every listing holds the 351
standing domains in their states and nothing else but mutator domains; each mutator domain is listed in a
state that some moment of the listing could have seen (linearizability against the mutator's acknowledged
operations: an operation acknowledged before a listing started is in it, one sent after it ended is not);
at the end, every acknowledged mutation is in the state (no lost update), the counts add up, ldmd still
runs and the 10 guests still run with the same pids.

    .venv/bin/pytest tests/load                # the bounded sample (< 40 s; in the default run, CI)
    .venv/bin/pytest -m slow tests/load        # the long run (about six times as much, with guest starts)
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from ldoms.model.codec import decode
from ldoms.model.machine import Machine
from tests.conftest import Reaper
from tests.integration.conftest import DEADLINE_S, LDM, LdmHost, free_port, pid_alive
from tests.load.bighost import (
    api,
    build_machine,
    guest_pid,
    list_states,
    seed_home,
    view_states,
    write_platform,
)
from tests.recovery.conftest import binding_problems

INACTIVE = tuple(f"i{i:03d}" for i in range(300))
ACTIVE = tuple(f"a{i:02d}" for i in range(10))
BOUND = tuple(f"b{i:02d}" for i in range(40))


@dataclass
class BigHost:
    host: LdmHost
    standing: dict[str, str]  # name -> state of every domain no mutator touches
    guests: dict[str, int]  # active domain -> guest pid


@pytest.fixture
def big_host(tmp_path: Path, reaper: Reaper) -> Iterator[BigHost]:
    platform = write_platform(tmp_path)
    home = reaper.watch(tmp_path / "big")
    port = free_port()
    seed_home(
        home,
        build_machine(platform, "big", inactive=INACTIVE, bound=ACTIVE + BOUND),
        listen=f"127.0.0.1:{port}",
    )
    h = LdmHost(home, "big", str(platform))
    try:
        h.start_ldmd(first=False)
        h.ldm("start-domain", *ACTIVE)
        guests = {name: guest_pid(home, name) or 0 for name in ACTIVE}
        assert all(guests.values()), guests
        standing = {"primary": "active"} | dict.fromkeys(INACTIVE, "inactive") | dict.fromkeys(BOUND, "bound")
        standing |= dict.fromkeys(ACTIVE, "active")
        yield BigHost(h, standing, guests)
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


# ------------------------------------------------------------------------------------------- histories
@dataclass
class Op:
    argv: tuple[str, ...]
    sent: float
    acked: float  # inf while in flight
    state: str  # the domain's state after it: "absent", "inactive", "bound", "active"


@dataclass
class History:
    """One mutator domain's operations, in order (its mutator runs them one at a time)."""

    ops: list[Op] = field(default_factory=list)

    def allowed(self, start: float, end: float) -> set[str]:
        """The states a snapshot taken between `start` and `end` may show (monotonic clock)."""
        states = ["absent", *(op.state for op in self.ops)]
        out = set()
        for j, state in enumerate(states):
            sent_before_end = j == 0 or self.ops[j - 1].sent < end
            next_acked_before_start = j < len(self.ops) and self.ops[j].acked < start
            if sent_before_end and not next_acked_before_start:
                out.add(state)
        return out


class Load:
    def __init__(self, big: BigHost) -> None:
        self.big = big
        self.home = big.host.home
        self.lock = threading.Lock()
        self.histories: dict[str, History] = {}
        self.listings = 0
        self.views = 0
        self.mutations = 0

    def ldm(self, *args: str) -> str:
        r = subprocess.run(
            [LDM, "--home", str(self.home), *args], capture_output=True, text=True, timeout=DEADLINE_S
        )
        assert r.returncode == 0, f"ldm {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}"
        return r.stdout

    # ------------------------------------------------------------------ mutators
    def mutator(self, k: int, cycles: int, with_guests: bool) -> None:
        for c in range(cycles):
            name = f"m{k}-{c}"
            steps: list[tuple[tuple[str, ...], str]] = [
                (("add-domain", name), "inactive"),
                (("add-vcpu", "1", name), "inactive"),
                (("add-memory", "256M", name), "inactive"),
                (("bind-domain", name), "bound"),
            ]
            if with_guests and c % 3 == 0:
                steps += [(("start-domain", name), "active"), (("stop-domain", name), "bound")]
            steps.append((("unbind-domain", name), "inactive"))
            if c % 2 == 0:
                steps.append((("remove-domain", name), "absent"))
            history = History()
            with self.lock:
                self.histories[name] = history
            for argv, state in steps:
                # Recorded before it is sent: a listing that ends meanwhile may already show it.
                op = Op(argv, time.monotonic(), math.inf, state)
                with self.lock:
                    history.ops.append(op)
                self.ldm(*argv)
                with self.lock:
                    op.acked = time.monotonic()
                    self.mutations += 1

    # ------------------------------------------------------------------ readers
    def check_snapshot(self, states: dict[str, str], start: float, end: float, what: str) -> None:
        for name, state in self.big.standing.items():
            assert states.get(name) == state, f"{what}: {name} is listed {states.get(name)}, expected {state}"
        with self.lock:
            histories = {n: History([replace(op) for op in h.ops]) for n, h in self.histories.items()}
        extra = set(states) - set(self.big.standing) - set(histories)
        assert not extra, f"{what}: lists domains nobody made: {sorted(extra)}"
        for name, h in histories.items():
            seen = states.get(name, "absent")
            allowed = h.allowed(start, end)
            assert seen in allowed, (
                f"{what}: {name} is {seen}; a snapshot between t={start:.3f} and t={end:.3f} can only show "
                f"{sorted(allowed)} (its operations: {[(op.argv[0], op.sent, op.acked) for op in h.ops]})"
            )
        mutated = sum(1 for n in states if n in histories)
        assert len(states) == len(self.big.standing) + mutated, f"{what}: {len(states)} domains listed"

    def reader(self, rounds: int) -> None:
        for i in range(rounds):
            parseable = i % 2 == 1
            start = time.monotonic()
            out = self.ldm("list", "-p") if parseable else self.ldm("list")
            end = time.monotonic()
            self.check_snapshot(list_states(out, parseable), start, end, "ldm list" + " -p" * parseable)
            with self.lock:
                self.listings += 1

    def api_reader(self, rounds: int) -> None:
        for i in range(rounds):
            start = time.monotonic()
            status, body = api(self.home, "GET", "/v1/view", timeout=DEADLINE_S)
            end = time.monotonic()
            assert status == 200, f"GET /v1/view answered {status}: {body[:200]!r}"
            self.check_snapshot(view_states(body), start, end, "GET /v1/view")
            if i % 5 == 0:
                machine = decode(Machine, json.loads(body)["machine"])
                problems = binding_problems(machine)
                assert not problems, f"GET /v1/view: {problems}"
            with self.lock:
                self.views += 1

    # ------------------------------------------------------------------ the run
    def run(
        self,
        *,
        readers: int,
        rounds: int,
        api_rounds: int,
        mutators: int,
        cycles: int,
        with_guests: bool = False,
    ) -> None:
        jobs: list[Callable[[], None]] = [lambda: self.reader(rounds) for _ in range(readers)]
        jobs.append(lambda: self.api_reader(api_rounds))
        jobs += [lambda k=k: self.mutator(k, cycles, with_guests) for k in range(mutators)]  # type: ignore[misc]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(job) for job in jobs]
            for f in futures:
                f.result()  # the first failure, with its message
        self.check_final()

    def check_final(self) -> None:
        h = self.big.host
        assert h.proc is not None and h.proc.poll() is None, f"ldmd exited: {h.stderr_path.read_text()}"
        status, body = api(self.home, "GET", "/v1/view", timeout=DEADLINE_S)
        assert status == 200
        states = view_states(body)
        end = time.monotonic()
        self.check_snapshot(states, end, end, "the final state")  # every acknowledged mutation is there
        kept = [n for n, hist in self.histories.items() if hist.ops[-1].state != "absent"]
        assert len(states) == len(self.big.standing) + len(kept)
        assert self.mutations == sum(len(hist.ops) for hist in self.histories.values())
        doc = json.loads(body)["machine"]
        pids = {d["config"]["name"]: d["guest_pid"] for d in doc["domains"] if d["config"]["name"] in ACTIVE}
        assert pids == self.big.guests
        assert all(pid_alive(pid) for pid in pids.values())
        problems = binding_problems(decode(Machine, doc))
        assert not problems, problems


def test_listing_under_mutation_bounded_sample(big_host: BigHost) -> None:
    """< 40 s: 3 readers x 18 listings, 120 API views, 2 mutators x 6 cycles (CI runs this one)."""
    load = Load(big_host)
    load.run(readers=3, rounds=18, api_rounds=120, mutators=2, cycles=6)
    assert load.listings == 54 and load.views == 120 and load.mutations == 2 * (3 * 6 + 3 * 5)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_listing_under_mutation_long(big_host: BigHost) -> None:
    """The long run: 4 readers x 60 listings, 400 API views, 3 mutators x 24 cycles, some starting guests."""
    load = Load(big_host)
    load.run(readers=4, rounds=60, api_rounds=400, mutators=3, cycles=24, with_guests=True)
    assert load.listings == 240 and load.views == 400


def test_history_allows_only_what_some_moment_of_a_snapshot_could_show() -> None:
    h = History(
        [Op(("add-domain", "x"), 1.0, 2.0, "inactive"), Op(("bind-domain", "x"), 3.0, math.inf, "bound")]
    )
    assert h.allowed(0.0, 0.5) == {"absent"}  # before anything was sent
    assert h.allowed(0.5, 1.5) == {"absent", "inactive"}  # the add may or may not have committed
    assert h.allowed(2.5, 2.7) == {"inactive"}  # acknowledged before the snapshot began: it must show
    assert h.allowed(3.5, 3.6) == {"inactive", "bound"}  # the bind is in flight
    h.ops[1].acked = 4.0
    assert h.allowed(5.0, 6.0) == {"bound"}
