"""Benchmark of listing latency (not a test: numbers only, nothing asserted).

Run: .venv/bin/python bench/bench_listing.py [--repeat 20] [--api-repeat 100] [--sizes 10,100,400] [--quick]

For each size a fresh home is made (tests/load/bighost.py: a 512-strand custom platform; a fifth of the
domains bound, 2 active with their guest processes, the rest inactive) and served by a real ldmd.  Then,
idle and again under mutation load, each of these is run many times, interleaved (one of each in turn, so
drift and noise hit all alike):

    ldm --help      the ldm baseline: the same interpreter start and imports as every ldm command, no request
    ldm -V          a request that fetches the whole view but prints a few lines (for reference)
    ldm list        the listing, human form
    ldm list -p     the listing, parseable form
    GET /v1/host    the API baseline: the same connection, HTTP parsing and routing, a tiny answer
    GET /v1/view    the whole host as JSON: what every listing fetches (from this process, no ldm)

Load: a separate process (so it shares no GIL with the measuring one) drives ldmd through its API as fast
as ldmd answers: add-domain, add-vcpu, add-memory, bind, unbind, remove-domain, in a loop.  Its throughput
is printed with the table.

Why these baselines rather than `ldm -V`: `-V` fetches the whole view too, so it grows with the domain count
and would hide what the listing costs; `ldm --help` pays exactly ldm's fixed cost (an interpreter start is
most of any ldm run), and GET /v1/host exactly the API's.  Each ratio is a p50 over the p50 of its baseline
measured in the same condition (idle, or under load), so a busy or slow machine moves both alike.  Under
load a last column gives p50 over the same row's idle p50: what the mutations cost the readers.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ldoms.daemon.sockpath import connect_unix
from tests.conftest import kill_processes_mentioning
from tests.load.bighost import api, api_op, build_machine, seed_home, write_platform

BIN = Path(sys.executable).parent
LDM = str(BIN / "ldm")
LDMD = str(BIN / "ldmd")
ACTIVE = 2


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


# ------------------------------------------------------------------------------------------- a host
class Host:
    def __init__(self, base: Path, size: int) -> None:
        self.home = base / f"h{size}"
        platform = write_platform(base)
        bound = [f"b{i:03d}" for i in range(size // 5 + ACTIVE)]
        inactive = [f"i{i:03d}" for i in range(size - len(bound))]
        seed_home(
            self.home,
            build_machine(platform, f"bench{size}", inactive=inactive, bound=bound),
            listen="127.0.0.1:0",
        )
        err = open(base / f"h{size}.ldmd.err", "ab")  # the daemon's stderr; the child keeps its copy
        self.proc = subprocess.Popen(
            [LDMD, "--home", str(self.home)], stdin=subprocess.DEVNULL, stdout=err, stderr=err
        )
        err.close()
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"ldmd exited with {self.proc.returncode}; see {base / f'h{size}.ldmd.err'}")
            try:
                connect_unix(self.home / "ldmd.sock", timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("ldmd did not come up within 60 s") from None
                time.sleep(0.05)
        self.ldm("start-domain", *bound[:ACTIVE])
        assert len(self.ldm("list").splitlines()) == size + 2  # header, primary, the domains

    def ldm(self, *args: str) -> str:
        r = subprocess.run([LDM, "--home", str(self.home), *args], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise SystemExit(f"ldm {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------- load
def mutate_forever(home: Path) -> None:
    """The mutator process: cycles until SIGTERM, then prints how many operations it completed."""
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    done = 0
    cycle = 0
    started = time.monotonic()
    while not stop:
        name = f"z{cycle}"
        for argv in (
            ("add-domain", name),
            ("add-vcpu", "1", name),
            ("add-memory", "256M", name),
            ("bind-domain", name),
            ("unbind-domain", name),
            ("remove-domain", name),
        ):
            status, body = api_op(home, *argv)
            if status != 200:
                print(f"mutator: {' '.join(argv)} answered {status}: {body[:200]!r}", file=sys.stderr)
                sys.exit(1)
            done += 1
        cycle += 1
    print(f"{done} {time.monotonic() - started:.3f}", flush=True)


class Mutator:
    def __init__(self, home: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--mutate", str(home)], stdout=subprocess.PIPE, text=True
        )

    def stop(self) -> float:
        """Stop it; its throughput in operations per second."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0 or not out.strip():
            raise SystemExit(f"the mutator failed (exit {self.proc.returncode})")
        done, secs = out.split()
        return int(done) / float(secs)


# ------------------------------------------------------------------------------------------- measuring
def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(host: Host, repeat: int, api_repeat: int) -> dict[str, list[float]]:
    def get(path: str) -> Callable[[], object]:
        def call() -> None:
            status, _ = api(host.home, "GET", path)
            assert status == 200

        return call

    ldm_cases: dict[str, Callable[[], object]] = {
        "ldm --help": lambda: host.ldm("--help"),
        "ldm -V": lambda: host.ldm("-V"),
        "ldm list": lambda: host.ldm("list"),
        "ldm list -p": lambda: host.ldm("list", "-p"),
    }
    api_cases = {"GET /v1/host": get("/v1/host"), "GET /v1/view": get("/v1/view")}
    out: dict[str, list[float]] = {k: [] for k in (*ldm_cases, *api_cases)}
    for _ in range(repeat):
        for name, fn in ldm_cases.items():
            out[name].append(timed(fn))
    for _ in range(api_repeat):
        for name, fn in api_cases.items():
            out[name].append(timed(fn))
    return out


BASELINE = {
    "ldm -V": "ldm --help",
    "ldm list": "ldm --help",
    "ldm list -p": "ldm --help",
    "GET /v1/view": "GET /v1/host",
}


def rows(
    size: int, condition: str, samples: dict[str, list[float]], idle: dict[str, list[float]] | None = None
) -> list[str]:
    out = []
    for name, values in samples.items():
        p50 = statistics.median(values)
        base = BASELINE.get(name)
        ratio = f"{p50 / statistics.median(samples[base]):6.2f}" if base else "  base"
        vs_idle = f"{p50 / statistics.median(idle[name]):8.2f}" if idle else ""
        out.append(
            f"{size:>5}  {condition:<8} {name:<13} {p50 * 1000:8.1f} {percentile(values, 95) * 1000:8.1f} "
            f"{max(values) * 1000:8.1f}  {ratio}{vs_idle}"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20, help="runs of each ldm command per condition")
    ap.add_argument("--api-repeat", type=int, default=100, help="requests of each API call per condition")
    ap.add_argument("--sizes", default="10,100,400", help="domain counts, comma-separated")
    ap.add_argument("--quick", action="store_true", help="5 ldm runs and 20 requests of each (a smoke run)")
    ap.add_argument("--mutate", metavar="HOME", help=argparse.SUPPRESS)  # the load process
    args = ap.parse_args()
    if args.mutate:
        mutate_forever(Path(args.mutate))
        return
    if args.quick:
        args.repeat, args.api_repeat = 5, 20
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"listing latency; {args.repeat} runs of each ldm command, {args.api_repeat} of each request, "
        f"interleaved; {os.cpu_count()} CPUs"
    )
    header = (
        f"{'size':>5}  {'load':<8} {'what':<13} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}   ratio  vs idle"
    )
    table = [header, "-" * len(header)]
    notes = []
    with tempfile.TemporaryDirectory(prefix="ldoms-bench-") as tmp:
        base = Path(tmp)
        try:
            for size in sizes:
                host = Host(base, size)
                try:
                    idle = measure(host, args.repeat, args.api_repeat)
                    table += rows(size, "idle", idle)
                    mutator = Mutator(host.home)
                    time.sleep(0.5)  # let the mutator's interpreter start before measuring under its load
                    loaded = measure(host, args.repeat, args.api_repeat)
                    rate = mutator.stop()
                    table += rows(size, "mutating", loaded, idle)
                    notes.append(f"{size} domains: the mutator completed {rate:.0f} operations/s meanwhile")
                finally:
                    host.close()
                print(f"  {size} domains done", file=sys.stderr, flush=True)
        finally:
            kill_processes_mentioning([base])  # the guests (they outlive ldmd by design)
    print("\n".join(table))
    print("\n".join(notes))


if __name__ == "__main__":
    main()
