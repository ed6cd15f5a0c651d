"""Benchmark of listing latency on three hosts while concurrent migrations run between them (numbers only,
nothing asserted).

Run: .venv/bin/python bench/bench_load.py [--quick] [--repeat N] [--api-repeat N] [--guests N] [--memory SIZE]

Three real ldmds on loopback (homes in /dev/shm when it exists, so guest memory lives in RAM), each a trusted
peer of the other two and set up the LDoms way (tests/load/cluster.py, as the load test does), each with
`--guests` active ledger guests (`--memory` each, dirtying 20M/s).  Then, first with the hosts idle and then
while migrations run, each of these is timed on every host, interleaved (one of each in turn, host after
host, so drift and noise hit all alike):

    ldm --help      the ldm baseline: the interpreter start and imports every ldm run pays, no request
    ldm list        the listing, human form
    GET /v1/view    the whole host as JSON, what every listing fetches (from this process, no ldm)

The migrations: a driver thread runs waves back to back until the measuring ends; in a wave every guest
moves at once, from each host alternately to the next and the previous host (A->B and B->A at the same
time, B->C, C->A ...), each an `ldm migrate-domain` of its own.  Its throughput, failures and the share of
the phase during which migrations were in flight are printed with the table.

The table gives p50/p95/max per host and over all three; under migration, `x idle` is the row's p50 (and
p95) over the same row's idle figure, measured in the same run.  `ldm --help` under migration shows how much
of the slowdown is only the machine being busy (an interpreter start takes longer) rather than ldmd.
The default run takes a few minutes (under migration an `ldm` run takes seconds on 2 cores); `--quick`: one
64M guest per host, 3 ldm runs and 15 requests per host per condition (about half a minute on an otherwise
idle machine).  Every process it started is stopped at the end, on success or not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_listing import percentile  # bench/ is the script's directory

from ldoms.cli.client import Client
from tests.conftest import kill_processes_mentioning
from tests.integration.conftest import LDM, LdmHost, wait_for
from tests.integration.test_live_migration import LEDGER
from tests.load.bighost import api
from tests.load.cluster import Cluster, Guest, add_guests, make_cluster

CASES = ("ldm --help", "ldm list", "GET /v1/view")


# ------------------------------------------------------------------------------------------- migrations
class Driver(threading.Thread):
    """Waves of concurrent migrations until `stop` is set (the wave in flight then finishes)."""

    def __init__(self, cluster: Cluster, placement: dict[str, str]) -> None:
        super().__init__(name="migrations", daemon=True)
        self.c = cluster
        self.placement = placement  # guest -> host
        self.stop = threading.Event()
        self.waves = 0
        self.done = 0
        self.times: list[float] = []
        self.failures: list[str] = []
        self.busy_s = 0.0
        self.started = self.ended = 0.0

    def plan(self) -> list[tuple[str, str, str]]:
        names = list(self.c.hosts)
        moves = []
        for k, hname in enumerate(names):
            here = sorted(g for g, h in self.placement.items() if h == hname)
            for j, g in enumerate(here):
                moves.append((g, hname, names[(k + 1 + (j + self.waves) % 2) % len(names)]))
        return moves

    def migrate(self, move: tuple[str, str, str]) -> tuple[tuple[str, str, str], int, str, float]:
        t0 = time.perf_counter()
        r = self.c.migrate(move[1], move[0], move[2])
        return move, r.returncode, r.stderr.strip(), time.perf_counter() - t0

    def run(self) -> None:
        self.started = time.monotonic()
        while not self.stop.is_set():
            moves = self.plan()
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=len(moves)) as pool:
                results = list(pool.map(self.migrate, moves))
            self.busy_s += time.monotonic() - t0
            for (name, src, dst), code, err, secs in results:
                if code == 0:
                    self.placement[name] = dst
                    self.done += 1
                    self.times.append(secs)
                else:
                    self.failures.append(f"{name} {src}->{dst}: {err}")
            self.waves += 1
        self.ended = time.monotonic()


# ------------------------------------------------------------------------------------------- measuring
def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_ldm(h: LdmHost, *args: str) -> None:
    r = subprocess.run([LDM, "--home", str(h.home), *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"ldm {' '.join(args)} on {h.name} failed: {r.stderr.strip()}")


def view(h: LdmHost) -> None:
    status, body = api(h.home, "GET", "/v1/view", timeout=120)
    if status != 200:
        raise SystemExit(f"GET /v1/view on {h.name} answered {status}: {body[:200]!r}")


def measure(c: Cluster, repeat: int, api_repeat: int) -> dict[tuple[str, str], list[float]]:
    """(case, host) -> seconds of each run."""
    out: dict[tuple[str, str], list[float]] = {(case, h): [] for case in CASES for h in c.hosts}
    per_round = max(1, api_repeat // repeat)
    for _ in range(repeat):
        for hname, h in c.hosts.items():
            out[("ldm --help", hname)].append(timed(lambda h=h: run_ldm(h, "--help")))
            out[("ldm list", hname)].append(timed(lambda h=h: run_ldm(h, "list")))
            for _ in range(per_round):
                out[("GET /v1/view", hname)].append(timed(lambda h=h: view(h)))
    return out


def rows(
    c: Cluster,
    condition: str,
    samples: dict[tuple[str, str], list[float]],
    idle: dict[tuple[str, str], list[float]] | None = None,
) -> list[str]:
    out = []
    for case in CASES:
        for hname in [*c.hosts, "all"]:
            hosts = list(c.hosts) if hname == "all" else [hname]
            values = [v for h in hosts for v in samples[(case, h)]]
            p50, p95 = statistics.median(values), percentile(values, 95)
            ratio = ""
            if idle is not None:
                base = [v for h in hosts for v in idle[(case, h)]]
                ratio = f"{p50 / statistics.median(base):8.2f} {p95 / percentile(base, 95):8.2f}"
            out.append(
                f"{case:<13} {hname:<4} {condition:<10} {p50 * 1000:8.1f} {p95 * 1000:8.1f} "
                f"{max(values) * 1000:8.1f}  {ratio}"
            )
    return out


# ------------------------------------------------------------------------------------------- the run
def start_cluster(base: Path, guests: int, memory: str) -> tuple[Cluster, dict[str, str]]:
    made: list[LdmHost] = []

    def host(name: str) -> LdmHost:
        made.append(LdmHost(base / name, name, "t5240"))
        return made[-1]

    c = make_cluster(host, base)
    placement: dict[str, str] = {}
    variables = tuple(LEDGER.items())

    def fill(hname: str) -> None:
        names = [f"g{hname[-1]}{j}" for j in range(guests)]
        add_guests(c.hosts[hname], [Guest(n, memory=memory, variables=variables) for n in names], base)
        placement.update(dict.fromkeys(names, hname))

    with ThreadPoolExecutor(max_workers=len(c.hosts)) as pool:
        list(pool.map(fill, c.hosts))
    return c, placement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=8, help="ldm runs of each kind per host per condition")
    ap.add_argument("--api-repeat", type=int, default=80, help="GET /v1/view per host per condition")
    ap.add_argument("--guests", type=int, default=2, help="active ledger guests per host")
    ap.add_argument("--memory", default="256M", help="memory of each guest")
    ap.add_argument("--quick", action="store_true", help="1 guest of 64M per host, 3 ldm runs, 15 requests")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.api_repeat, args.guests, args.memory = 3, 15, 1, "64M"
    shm = Path("/dev/shm")
    tmp = tempfile.mkdtemp(prefix="ldoms-bench-load-", dir=shm if shm.is_dir() else None)
    base = Path(tmp)
    t_start = time.monotonic()
    try:
        c, placement = start_cluster(base, args.guests, args.memory)
        print(f"  3 hosts with {args.guests} guest(s) of {args.memory} each, set up in "
              f"{time.monotonic() - t_start:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        idle = measure(c, args.repeat, args.api_repeat)
        print(f"  idle measured at {time.monotonic() - t_start:.1f} s", file=sys.stderr, flush=True)
        driver = Driver(c, placement)
        driver.start()
        # measure once the first wave's migrations are under way
        wait_for(
            "the first migrations", lambda: any(Client(h.home).view().migrations for h in c.hosts.values())
        )
        t0 = time.monotonic()
        loaded = measure(c, args.repeat, args.api_repeat)
        phase = time.monotonic() - t0
        driver.stop.set()
        driver.join(300)
    finally:
        kill_processes_mentioning([base])  # the ldmds and their guests
        subprocess.run(["rm", "-rf", str(base)], check=False)
    per_round = max(1, args.api_repeat // args.repeat)
    print(
        f"listing latency on 3 hosts, idle and during concurrent migrations; per host and condition "
        f"{args.repeat} runs of each ldm command and {args.repeat * per_round} requests, interleaved; "
        f"{os.cpu_count()} CPUs"
    )
    header = (f"{'what':<13} {'host':<4} {'condition':<10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  "
              f"{'p50 x idle':>8} {'p95 x idle':>8}")  # fmt: skip
    print(header)
    print("-" * len(header))
    print("\n".join(rows(c, "idle", idle)))
    print("\n".join(rows(c, "migrating", loaded, idle)))
    mean = statistics.mean(driver.times) if driver.times else 0.0
    span = max(driver.ended - driver.started, 1e-9)
    print(
        f"meanwhile: {driver.done} migrations completed in {driver.waves} waves of {len(placement)} at once "
        f"(mean {mean:.2f} s each), {len(driver.failures)} failed; migrations in flight "
        f"{100 * min(driver.busy_s / span, 1.0):.0f}% of the {span:.1f} s they ran "
        f"(the measuring took {phase:.1f} s); whole run {time.monotonic() - t_start:.1f} s"
    )
    for f in driver.failures[:5]:
        print(f"  failed: {f}")


if __name__ == "__main__":
    main()
