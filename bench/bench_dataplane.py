"""Benchmark of the migration data plane over loopback (not a test: numbers only, nothing asserted).

Run: .venv/bin/python bench/bench_dataplane.py [--gib 1] [--repeat 3] [--quick]

Sender and receiver run in separate processes, as on two hosts (they share this machine's cores, so every
figure pays for both sides).  Source and target memories are files in /dev/shm mapped shared, as guest
memory files are; the target is pre-touched (MADV_POPULATE_WRITE) before the clock starts, and the time that
took is printed apart.  Each time runs from the sender's start to the moment the receiver holds every page.

Table 1: 1 GiB of random data.  Baseline: plain, unencrypted 2-stream `sendall` / `recv_into` of the same
bytes into the same kind of pre-touched memory.  Then the data plane (AES-256-GCM, framing, zero scan,
compression governor on "auto") with 1 and 2 channels, lanes as threads or worker processes.
Table 2: the CPU-bound stage alone (zero scan + seal of 4 MiB frames of already-mapped memory, no sockets),
1 vs 2 lanes as threads vs processes, started together: what scales with channels on a host whose peer has
its own cores.  Threads overlap one lane's scan (numpy releases the GIL) with another's AES-GCM (which holds
it), so they scale too until the sealing alone fills one core (~9 GB/s); processes go past that.
Table 3: a 4 GiB guest of which 64 MiB was ever written: hole-aware first pass (SEEK_DATA ranges of the
sparse file), and a full zero-scan of all 4 GiB (an anonymous buffer: scanning a tmpfs file's holes would
allocate them).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ldoms.migration.channels import DataPlaneReceiver, DataPlaneSender, MemoryFile
from ldoms.migration.dataframe import FrameSealer
from ldoms.migration.dataplane_keys import KeySchedule, new_secret
from ldoms.migration.pagescan import as_pages, classify, data_ranges, pretouch

GIB = 1 << 30
MIB = 1 << 20
SHM = Path("/dev/shm")


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def fill_random(path: Path, size: int, chunks: list[tuple[int, int]] | None = None) -> None:
    rng = np.random.default_rng(7)
    with open(path, "r+b") as f:
        for off, n in chunks or [(0, size)]:
            f.seek(off)
            for pos in range(0, n, 64 * MIB):
                f.write(rng.bytes(min(64 * MIB, n - pos)))


# ------------------------------------------------------------------------------------- receiver process
def receiver_main(
    kind: str,
    port: int,
    nch: int,
    target: str,
    size: int,
    secret: bytes,
    workers: str,
    touch: bool,
    conn: Any,
) -> None:
    socks = []
    for _ in range(nch):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    mem = MemoryFile(target, size)
    t = time.perf_counter()
    if touch:
        with contextlib.closing(mem.map(writable=True)) as mm:
            pretouch(mm)
    touch_s = time.perf_counter() - t
    if kind == "baseline":
        with contextlib.closing(mem.map(writable=True)) as mm:
            view = memoryview(mm)
            share = size // nch

            def pull(k: int) -> None:
                buf = view[k * share : (k + 1) * share if k < nch - 1 else size]
                pos = 0
                while pos < len(buf):
                    got = socks[k].recv_into(buf[pos:])
                    if not got:
                        raise EOFError("baseline stream ended early")
                    pos += got

            conn.send(("ready", touch_s))
            ths = [threading.Thread(target=pull, args=(k,)) for k in range(nch)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            conn.send(("done", time.monotonic(), None))
            del view
        for s in socks:
            s.close()
        return
    rx = DataPlaneReceiver(secret, "bench", socks, mem, workers=workers)
    conn.send(("ready", touch_s))
    st = rx.receive_round(1)
    t_end = time.monotonic()
    rx.close()
    conn.send(("done", t_end, st))


def run_pair(
    kind: str,
    nch: int,
    src: Any,
    src_size: int,
    pages: Any,
    *,
    workers: str = "threads",
    touch: bool = True,
    target_is_zero: bool = True,
) -> tuple[float, float, Any]:
    """(seconds, pre-touch seconds, sender stats) for one transfer."""
    target = SHM / f"ldoms-bench-dst-{os.getpid()}"
    make_file(target, src_size)
    lst = socket.create_server(("127.0.0.1", 0), backlog=nch)
    parent, child = mp.Pipe()
    secret = new_secret()
    proc = mp.get_context("spawn").Process(
        target=receiver_main,
        args=(kind, lst.getsockname()[1], nch, str(target), src_size, secret, workers, touch, child),
    )
    proc.start()
    try:
        socks = [lst.accept()[0] for _ in range(nch)]
        msg = parent.recv()
        touch_s = msg[1]
        stats = None
        if kind == "baseline":
            mm = src.map(writable=False) if isinstance(src, MemoryFile) else None
            view = memoryview(mm if mm is not None else src).cast("B")
            share = src_size // nch
            t0 = time.monotonic()

            def push(k: int) -> None:
                socks[k].sendall(view[k * share : (k + 1) * share if k < nch - 1 else src_size])

            ths = [threading.Thread(target=push, args=(k,)) for k in range(nch)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            del view
            if mm is not None:
                mm.close()
            for s in socks:
                s.close()
        else:
            tx = DataPlaneSender(secret, "bench", socks, src, workers=workers)
            t0 = time.monotonic()
            stats = tx.send_round(1, pages, target_is_zero=target_is_zero)
            tx.close()
        done = parent.recv()
        proc.join()
        return done[1] - t0, touch_s, stats
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        lst.close()
        target.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- CPU stage
def seal_stage(src: str, size: int, lanes: int, lane: int, frame: int, barrier: Any) -> tuple[float, float]:
    """Scan and seal this lane's share of the frames; (start, end) on the system-wide monotonic clock."""
    mem = MemoryFile(src, size).map(writable=False)
    pages = as_pages(mem)
    raw = memoryview(mem)
    sealer = FrameSealer(KeySchedule(b"k" * 32, "bench"), lane)
    out = bytearray(frame + 16)
    fp = frame // 8192
    for first in range(lane * fp, len(pages), lanes * fp):  # fault the mapping in first: time the CPU work
        pages[first : first + fp].max()  # reads every word (any() would stop at the first non-zero one)
    barrier.wait()  # every lane starts together, so their times overlap as they would in a transfer
    t = time.monotonic()
    for first in range(lane * fp, len(pages), lanes * fp):
        n = min(fp, len(pages) - first)
        classify(pages, first, n)
        sealer.pages(
            1,
            np.array([[first, n, 0]]),
            raw[first * 8192 : (first + n) * 8192],
            out,
            compressed=False,
            plain_len=n * 8192,
        )
    done = time.monotonic()
    del raw, pages
    mem.close()
    return t, done


def _seal_proc(src: str, size: int, lanes: int, lane: int, frame: int, barrier: Any, conn: Any) -> None:
    conn.send(seal_stage(src, size, lanes, lane, frame, barrier))


def run_seal(src: str, size: int, lanes: int, how: str) -> float:
    """Seconds from the lanes' common start to the last one's end."""
    frame = 4 * MIB
    spans: list[tuple[float, float]] = []
    if how == "threads":
        barrier: Any = threading.Barrier(lanes)

        def lane_thread(k: int) -> None:
            spans.append(seal_stage(src, size, lanes, k, frame, barrier))

        ths = [threading.Thread(target=lane_thread, args=(k,)) for k in range(lanes)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
    else:
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(lanes)
        pipes = [ctx.Pipe() for _ in range(lanes)]
        procs = [
            ctx.Process(target=_seal_proc, args=(src, size, lanes, k, frame, barrier, pipes[k][1]))
            for k in range(lanes)
        ]
        for p in procs:
            p.start()
        spans = [pipes[k][0].recv() for k in range(lanes)]
        for p in procs:
            p.join()
    return max(e for _, e in spans) - min(s for s, _ in spans)


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="size of the random transfer (GiB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (the median run is shown)")
    ap.add_argument("--quick", action="store_true", help="one run per row, skip the 4 GiB case")
    args = ap.parse_args()
    repeat = 1 if args.quick else args.repeat
    size = int(args.gib * GIB) // (8192 * 2) * 8192 * 2
    src = SHM / f"ldoms-bench-src-{os.getpid()}"
    sparse = SHM / f"ldoms-bench-sparse-{os.getpid()}"
    try:
        make_file(src, size)
        fill_random(src, size)
        smem = MemoryFile(str(src), size)
        everything = np.ones(size // 8192, dtype=bool)
        print(
            f"Table 1: {size / GIB:.2f} GiB of random data over loopback, {os.cpu_count()} cores, "
            f"median of {repeat}"
        )
        print(f"{'transfer':44} {'seconds':>8} {'GB/s':>6} {'x base':>7} {'pretouch s':>10}")
        configs: list[tuple[str, Callable[[], tuple[float, float, Any]]]] = [
            ("baseline: plain 2-stream sockets", lambda: run_pair("baseline", 2, smem, size, None)),
        ]
        for label, nch, workers in [
            ("data plane, 1 channel (thread)", 1, "threads"),
            ("data plane, 2 channels (threads)", 2, "threads"),
            ("data plane, 2 channels (worker processes)", 2, "processes"),
        ]:
            configs.append(
                (label, lambda n=nch, w=workers: run_pair("plane", n, smem, size, everything, workers=w))
            )
        # rounds interleave the configurations, so a neighbour's load hits every row alike
        results: list[list[tuple[float, float, Any]]] = [[] for _ in configs]
        for _ in range(repeat):
            for k, (_label, fn) in enumerate(configs):
                results[k].append(fn())
        med = [statistics.median(r[0] for r in res) for res in results]
        touch = [statistics.median(r[1] for r in res) for res in results]
        for k, (label, _fn) in enumerate(configs):
            print(
                f"{label:44} {med[k]:8.3f} {size / med[k] / 1e9:6.2f} {med[k] / med[0]:7.2f} {touch[k]:10.3f}"
            )
        print(f"  2 channels vs 1: threads {med[1] / med[2]:.2f}x, processes {med[1] / med[3]:.2f}x")
        base = (med[0],)

        print("\nTable 2: the CPU-bound stage alone (zero scan + AES-GCM seal of mapped memory, 4 MiB)")
        print(f"{'lanes':28} {'seconds':>8} {'GB/s':>6} {'vs 1 lane':>9}")
        stages = [
            ("1 lane", 1, "threads"),
            ("2 lanes, threads", 2, "threads"),
            ("2 lanes, worker processes", 2, "processes"),
        ]
        times: list[list[float]] = [[] for _ in stages]
        for _ in range(repeat):
            for k, (_label, lanes, how) in enumerate(stages):
                times[k].append(run_seal(str(src), size, lanes, how))
        single = statistics.median(times[0])
        for k, (label, _lanes, _how) in enumerate(stages):
            secs = statistics.median(times[k])
            print(f"{label:28} {secs:8.3f} {size / secs / 1e9:6.2f} {single / secs:8.2f}x")

        if not args.quick:
            print("\nTable 3: a 4 GiB guest that wrote 64 MiB (64 x 1 MiB, 64 MiB apart); 2 channels")
            big = 4 * GIB
            make_file(sparse, big)
            chunks = [(k * 64 * MIB, MIB) for k in range(64)]
            fill_random(sparse, big, chunks)
            fd = os.open(sparse, os.O_RDONLY)
            try:
                t = time.perf_counter()
                ranges = data_ranges(fd, big)
                scan_s = time.perf_counter() - t
            finally:
                os.close(fd)
            secs, _t, st = run_pair(
                "plane", 2, MemoryFile(str(sparse), big), big, ranges, workers="processes", touch=False
            )
            print(
                f"hole-aware (SEEK_DATA: {len(ranges)} ranges in {scan_s * 1e3:.1f} ms): {secs:.3f} s, "
                f"{st.pages * 8192 / MIB:.0f} MiB sent in {st.frames} frames, {st.bytes_sent / MIB:.1f} MiB "
                "on the wire"
            )
            anon = np.zeros(big, dtype=np.uint8)
            anon_pages = as_pages(anon)
            rng = np.random.default_rng(3)
            for off, n in chunks:
                anon_pages[off // 8192 : (off + n) // 8192] = rng.integers(
                    0, 2**63, size=(n // 8192, 1024), dtype=np.uint64
                )
            secs, _t, st = run_pair(
                "plane",
                2,
                memoryview(anon),
                big,
                np.ones(big // 8192, dtype=bool),
                workers="threads",
                touch=False,
            )
            print(
                f"full zero-scan of 4 GiB (anonymous memory, threads): {secs:.3f} s, {st.zero_pages} zero "
                f"pages skipped, {st.bytes_sent / MIB:.1f} MiB on the wire"
            )
            print(
                f"  (plain baseline would move all 4 GiB: about {base[0] * big / size:.2f} s "
                "at table 1's rate)"
            )
    finally:
        src.unlink(missing_ok=True)
        sparse.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
