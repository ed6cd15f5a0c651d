"""Benchmark of `ldm migrate-domain` between two real hosts on loopback (numbers and targets, not a test).

Run: .venv/bin/python bench/bench_migrate.py [--quick] [--keep]

Two `ldmd` processes (homes in /dev/shm, so guest memory lives in RAM as on a real host; two loopback ports)
are set up the LDoms way (primary shrunk to 8 vCPUs and 4G, one crypto unit: the engine's data channels
follow primary's crypto units and vCPUs, SPEC 2.2), then each case starts a guest on the source, migrates it
with `ldm migrate-domain`, reads the figures and removes it from the target:

  baseline     the same bytes as the random guest's memory sent over two plain, unencrypted TCP streams into
               another process, which writes them into a new file as a migration's target does (what the
               targets use); and again into memory it pre-touched before the clock started (for reference)
  random       an idle guest whose memory is all random (workload fill-random): total time, downtime, ratio
  idle         an idle guest that never touched its memory: downtime
  dirty        a guest writing 256 MiB/s over a 512 MiB working set: downtime, rounds
  sparse       a 4 GiB guest that wrote 64 MiB vs a 64 MiB guest that wrote the same: total-time ratio
  1 channel    the random guest again with primary on both hosts reconfigured to no crypto unit (1 channel)

Figures come from the source's migration record (`ldm list-migrations -p`: total, downtime as the guest
measured it, bytes sent, rounds, channels).  Where the engine keeps no record, total is the wall time of the
`ldm` command and the downtime the one the target guest measured (its pid file); the other cells say `?`.
`--quick` divides the sizes by four and skips the channel case.  Every process is stopped at the end, on
success or not (`--keep` leaves the hosts running for a look, and says how to stop them).
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ldoms.cli.format.quantities import approx_size, duration
from ldoms.hv.control import GuestControl
from ldoms.hv.files import GuestFiles
from ldoms.units import format_size

BIN = Path(sys.executable).parent
LDM, LDMD = str(BIN / "ldm"), str(BIN / "ldmd")
MIB, GIB = 1 << 20, 1 << 30
DEADLINE_S = 120.0
USER = "bench"


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------- hosts
class Host:
    def __init__(self, root: Path, name: str) -> None:
        self.home = root / name
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.home.parent / f"{self.name}.out", "ab")
        self.proc = subprocess.Popen(
            [LDMD, "--home", str(self.home), "--platform", "t5240", "--name", self.name,
             "--listen", f"127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"ldmd {self.name} exited: see {self.home.parent / (self.name + '.out')}")
            return self.ldm("list", check=False).returncode == 0

        wait_for(f"ldmd {self.name}", ready)

    def ldm(self, *words: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([LDM, "--home", str(self.home), *words], capture_output=True, text=True,
                           timeout=DEADLINE_S, stdin=subprocess.DEVNULL)  # fmt: skip
        if check and r.returncode != 0:
            raise RuntimeError(f"{self.name}$ ldm {' '.join(words)}: {r.stderr.strip() or r.returncode}")
        return r

    def ldmd(self, *words: str) -> str:
        r = subprocess.run([LDMD, "--home", str(self.home), *words], capture_output=True, text=True,
                           timeout=DEADLINE_S)  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}$ ldmd {' '.join(words)}: {r.stderr.strip()}")
        return r.stdout

    def guest(self, name: str) -> GuestControl:
        return GuestControl(GuestFiles(self.home / "guests", name), timeout=10)

    def set_primary(self, maus: int) -> None:
        """Primary with 8 vCPUs, 4G and `maus` crypto units, by a delayed reconfiguration and its reboot."""
        for words in (("set-crypto", str(maus), "primary"), ("set-vcpu", "8", "primary"),
                      ("set-memory", "4G", "primary"), ("stop-domain", "primary")):  # fmt: skip
            self.ldm(*words)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.ldm("stop-domain", "-a", check=False)  # guests outlive their ldmd: stop them first
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def kill_leftovers(root: Path) -> None:
    """Every process whose command line names the bench's directory (ldmds, guests, data-plane lanes)."""
    needle = os.fsencode(str(root))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            os.kill(int(entry), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


# -------------------------------------------------------------------------------------------- baseline
def _receiver(port: int, target: str, size: int, streams: int, fresh: bool, conn: Any) -> None:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(streams)]
    share = size // streams
    bounds = [(k * share, size if k == streams - 1 else (k + 1) * share) for k in range(streams)]
    with open(target, "r+b") as f, mmap.mmap(f.fileno(), size) as mm:
        view = memoryview(mm)
        if not fresh:
            for off in range(0, size, mmap.PAGESIZE):  # pre-touched, outside the clock
                view[off] = 0

        def pull(k: int) -> None:
            lo, hi = bounds[k]
            # fresh: into a new file, as a migration's target image is (the fastest plain way: pwrite from a
            # reused buffer allocates each page without zeroing or mapping it first); else into the mapping
            chunk = memoryview(bytearray(4 << 20)) if fresh else None
            pos = lo
            while pos < hi:
                buf = chunk[: min(len(chunk), hi - pos)] if chunk is not None else view[pos:hi]
                got = socks[k].recv_into(buf)
                if not got:
                    raise EOFError("a baseline stream ended early")
                if chunk is not None:
                    os.pwrite(f.fileno(), chunk[:got], pos)
                pos += got

        conn.send("ready")
        threads = [threading.Thread(target=pull, args=(k,)) for k in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conn.send(time.monotonic())
        view.release()  # the mapping can close now


def baseline(source: Path, size: int, scratch: Path, *, fresh: bool, streams: int = 2) -> float:
    """Seconds to send `source`'s first `size` bytes over `streams` plain TCP streams into another process:
    into a new file (`fresh`, as a migration's target image is new) or into memory pre-touched before the
    clock starts (the clock starts once the receiver is connected and ready)."""
    target = scratch / "baseline.mem"
    with open(target, "wb") as f:
        f.truncate(size)
    lst = socket.create_server(("127.0.0.1", 0), backlog=streams)
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(
        target=_receiver, args=(lst.getsockname()[1], str(target), size, streams, fresh, child)
    )
    proc.start()
    try:
        socks = [lst.accept()[0] for _ in range(streams)]
        if not parent.poll(DEADLINE_S) or parent.recv() != "ready":
            raise RuntimeError("the baseline receiver did not get ready")
        with open(source, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mm:
            view = memoryview(mm)
            share = size // streams
            t0 = time.monotonic()
            parts = [view[k * share : size if k == streams - 1 else (k + 1) * share] for k in range(streams)]
            threads = [threading.Thread(target=socks[k].sendall, args=(parts[k],)) for k in range(streams)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for part in parts:
                part.release()
            view.release()
        if not parent.poll(DEADLINE_S):
            raise RuntimeError("the baseline receiver did not finish")
        done = float(parent.recv())
        proc.join(DEADLINE_S)
        for s in socks:
            s.close()
        return done - t0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        lst.close()
        target.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    name: str
    memory: int
    content: str  # what the memory holds, for the table
    dirty_rate: int = 0
    variables: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    case: Case
    total_s: float
    downtime_s: float | None
    sent: int | None
    rounds: int | None
    channels: int | None
    recorded: bool  # figures from the engine's record (else: wall time and the guest's pid file)


def migration_record(host: Host, domain: str) -> dict[str, str] | None:
    """The newest record of `domain` as the source of a migration, from `ldm list-migrations -p`."""
    r = host.ldm("list-migrations", "-p", domain, check=False)
    if r.returncode != 0:
        return None  # an ldm without list-migrations, or no record
    rows = [dict(kv.split("=", 1) for kv in line.split("|")[1:] if "=" in kv)
            for line in r.stdout.splitlines() if line.startswith("MIGRATION|")]  # fmt: skip
    rows = [row for row in rows if row.get("role") == "source"]
    return rows[-1] if rows else None


def _int(text: str | None) -> int | None:
    return int(text) if text else None


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.src = Host(root, "src")
        self.dst = Host(root, "dst")
        self.pwfile = root / "password"
        self.count = 0

    def setup(self) -> None:
        for h in (self.src, self.dst):
            h.start()
            h.ldm("add-vcc", "port-range=5000-5100", "primary-vcc0", "primary")
            h.set_primary(maus=1)
        self.pwfile.write_text("bench password\n")
        self.pwfile.chmod(0o600)
        self.dst.ldmd("user", "add", USER, "--password-file", str(self.pwfile))
        fp = next(line.split()[1] for line in self.dst.ldmd("tls", "show").splitlines()
                  if line.startswith("fingerprint"))  # fmt: skip
        self.src.ldmd("peer", "add", "dst", f"127.0.0.1:{self.dst.port}", "--fingerprint", fp)

    def set_channels(self, maus: int) -> None:
        for h in (self.src, self.dst):
            h.set_primary(maus=maus)

    def start_guest(self, case: Case) -> str:
        self.count += 1
        name = f"{case.name}{self.count}"
        h = self.src
        h.ldm("add-domain", name)
        h.ldm("add-vcpu", "8", name)
        h.ldm("add-memory", format_size(case.memory), name)
        if case.variables:
            h.ldm("set-variable", *(f"{k}={v}" for k, v in case.variables.items()), name)
        h.ldm("bind-domain", name)
        h.ldm("start-domain", name)
        guest = h.guest(name)
        wait_for(f"guest {name}", lambda: (self.src.home / "guests" / f"{name}.pid").exists())
        if case.variables.get("ldoms-workload") == "fill-random":
            wait_for(f"{name} to fill its memory", lambda: guest.status()["workload_status"]["done"])
        if case.dirty_rate:
            wait_for(f"{name} to dirty at full rate",
                     lambda: guest.status()["dirty_rate"] >= 0.8 * case.dirty_rate, timeout=10)  # fmt: skip
        return name

    def migrate(self, case: Case, name: str) -> Result:
        t0 = time.monotonic()
        r = self.src.ldm("migrate-domain", "-p", str(self.pwfile), name, f"{USER}@dst", check=False)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"migrating {name} failed: {r.stderr.strip()}")
        rec = migration_record(self.src, name)
        pid = GuestFiles(self.dst.home / "guests", name).read_pidfile()
        guest_downtime = pid.downtime if pid is not None else None
        if rec is not None:
            downtime = float(rec["downtime"]) if rec.get("downtime") else guest_downtime
            sent, rounds, channels = (_int(rec.get(k)) for k in ("sent", "rounds", "channels"))
            result = Result(case, float(rec["total"]), downtime, sent, rounds, channels, recorded=True)
        else:
            result = Result(case, wall, guest_downtime, None, None, None, recorded=False)
        for words in (("stop-domain", name), ("unbind-domain", name), ("remove-domain", name)):
            self.dst.ldm(*words, check=False)  # room for the next case
        return result

    def run(self, case: Case, before: Callable[[str], None] | None = None) -> Result:
        name = self.start_guest(case)
        if before is not None:
            before(name)
        return self.migrate(case, name)

    def stop(self) -> None:
        for h in (self.src, self.dst):
            with contextlib.suppress(Exception):
                h.stop()
        kill_leftovers(self.root)


# ---------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class Target:
    what: str
    value: float | None  # the measured figure (None: not measured)
    limit: float
    higher_is_better: bool = False
    unit: str = "x"

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        ok = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        return "PASS" if ok else "FAIL"

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="

        def show(v: float) -> str:
            return duration(v) if self.unit == "s" else f"{v:.2f}{self.unit}" if self.unit else f"{v:g}"

        shown = "?" if self.value is None else show(self.value)
        limit = duration(self.limit) if self.unit == "s" else f"{self.limit:g}{self.unit}"
        return f"  {self.verdict:<5} {self.what}: {shown} (target {sign} {limit})"


HEAD = ("case", "size", "content", "dirty rate", "ch", "total", "downtime", "sent/mem", "rounds", "baseline")


def _opt(value: object) -> str:
    return "?" if value is None else str(value)


def row(res: Result, base_s: float | None) -> tuple[str, ...]:
    c = res.case
    return (
        c.name, format_size(c.memory), c.content, f"{approx_size(c.dirty_rate)}/s" if c.dirty_rate else "-",
        _opt(res.channels), duration(res.total_s) + ("" if res.recorded else "*"),
        "?" if res.downtime_s is None else duration(res.downtime_s),
        "?" if res.sent is None else f"{res.sent / c.memory:.2f}", _opt(res.rounds),
        f"{duration(base_s)} ({res.total_s / base_s:.1f}x)" if base_s and c.content == "random" else "",
    )  # fmt: skip


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


# Issue 4's targets: the figures each case must reach (ratios are to the same run's measurements).
MAX_RATIO_TO_BASELINE = 2.5  # 1G random, idle, encrypted: total <= 2.5x a plain 2-stream socket transfer
MAX_IDLE_DOWNTIME_S = 0.050  # the pause the guest itself observes, idle 1G guest
MAX_DIRTY_DOWNTIME_S = 0.100  # the same, guest dirtying 256 MiB/s over a 512 MiB working set
MAX_ROUNDS = 30  # the dirtying guest converges before the default max-rounds
MAX_SPARSE_RATIO = 1.5  # a 4G domain that touched 64M: <= 1.5x the time of a 64M domain
MIN_CHANNEL_SPEEDUP = 1.5  # 2 channels >= 1.5x one channel (the issue asks it when one channel is CPU-bound)


def bench_root() -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="ldoms-bench-", dir=base))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark ldm migrate-domain between two hosts on loopback.")
    ap.add_argument("--quick", action="store_true", help="sizes divided by four, no channel comparison")
    ap.add_argument("--keep", action="store_true", help="leave both hosts running at the end")
    args = ap.parse_args(argv)
    scale = 4 if args.quick else 1
    size = GIB // scale
    fill = {"ldoms-workload": "fill-random"}
    random = Case("random", size, "random", variables={**fill, "ldoms-working-set": format_size(size)})
    idle = Case("idle", size, "untouched")
    dirty = Case("dirty", GIB, "dirty 512M", dirty_rate=256 * MIB, variables={
        "ldoms-workload": "dirty", "ldoms-dirty-rate": "256M", "ldoms-working-set": "512M"})  # fmt: skip
    sparse = Case("sparse", 4 * GIB // scale, "64M random", variables={**fill, "ldoms-working-set": "64M"})
    small = Case("small", 64 * MIB, "64M random", variables={**fill, "ldoms-working-set": "64M"})

    root = bench_root()
    bench = Bench(root)
    started = time.monotonic()
    base_s: list[float] = []  # into a fresh file (what the targets use), then into pre-touched memory
    results: dict[str, Result] = {}
    try:
        print(f"two hosts on loopback, homes in {root}; {os.cpu_count()} CPUs", flush=True)
        bench.setup()

        def measure_baseline(name: str) -> None:
            for fresh, into in ((True, "a new file"), (False, "pre-touched memory")):
                base_s.append(baseline(bench.src.home / "guests" / f"{name}.mem", size, root, fresh=fresh))
                print(f"baseline: {format_size(size)} over 2 plain TCP streams into {into}: "
                      f"{duration(base_s[-1])} ({approx_size(size / base_s[-1])}/s)", flush=True)  # fmt: skip

        for case, before in ((random, measure_baseline), (idle, None), (dirty, None), (sparse, None),
                             (small, None)):  # fmt: skip
            results[case.name] = res = bench.run(case, before)
            print(f"  {case.name}: {duration(res.total_s)}", flush=True)
        if not args.quick and (results["random"].channels or 0) > 1:
            bench.set_channels(maus=0)  # primary without crypto units on both hosts: one channel
            one = Case("random-1ch", size, "random", variables=random.variables)
            results[one.name] = res = bench.run(one)
            print(f"  {one.name}: {duration(res.total_s)}", flush=True)
    finally:
        if args.keep:
            pids = [h.proc.pid for h in (bench.src, bench.dst) if h.proc is not None]
            print(f"hosts kept: ldm --home {bench.src.home} / --home {bench.dst.home}; stop them with "
                  f"`kill {' '.join(map(str, pids))}` (guests first: ldm --home HOME stop -a)")  # fmt: skip
        else:
            bench.stop()
            shutil.rmtree(root, ignore_errors=True)

    b = base_s[0] if base_s else None
    print()
    print(table([HEAD, *(row(r, b) for r in results.values())]))
    if not all(r.recorded for r in results.values()):
        print("* no migration record from the engine: wall time of the ldm command")
    r, ch1 = results["random"], results.get("random-1ch")
    speedup = None
    if ch1 is not None and r.channels is not None and ch1.channels is not None and ch1.channels < r.channels:
        speedup = ch1.total_s / r.total_s
    rounds = results["dirty"].rounds
    sparse_ratio = results["sparse"].total_s / results["small"].total_s
    gb = format_size(size)
    if len(base_s) > 1:
        print(f"(into pre-touched memory the baseline took {duration(base_s[1])}: the random case is "
              f"{r.total_s / base_s[1]:.1f}x that; the target is held to the new-file baseline, as a "
              "migration's target image is new)")  # fmt: skip
    targets = [
        Target(f"{gb} random: total time / baseline", r.total_s / b if b else None, MAX_RATIO_TO_BASELINE),
        Target(f"{gb} random: downtime", r.downtime_s, MAX_IDLE_DOWNTIME_S, unit="s"),
        Target(f"{gb} idle: downtime", results["idle"].downtime_s, MAX_IDLE_DOWNTIME_S, unit="s"),
        Target("256M/s over 512M: downtime", results["dirty"].downtime_s, MAX_DIRTY_DOWNTIME_S, unit="s"),
        Target("256M/s over 512M: rounds", None if rounds is None else float(rounds), MAX_ROUNDS, unit=""),
        Target(f"{format_size(sparse.memory)} touched 64M / 64M domain: total time", sparse_ratio,
               MAX_SPARSE_RATIO),
    ]
    if not args.quick:
        what = "2 channels vs 1: speed-up"
        if r.channels == 1:  # side_channels: a channel needs two cores
            what += (f" (not measurable here: {os.cpu_count()} cores run one channel; the CPU-bound stage's "
                     "scaling is Table 2 of bench/bench_dataplane.py)")  # fmt: skip
        targets.append(Target(what, speedup, MIN_CHANNEL_SPEEDUP, higher_is_better=True))
    print("\ntargets:")
    for t in targets:
        print(t.line())
    passed = sum(t.verdict == "PASS" for t in targets)
    print(f"{passed} of {len(targets)} targets pass ({duration(time.monotonic() - started)} in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
