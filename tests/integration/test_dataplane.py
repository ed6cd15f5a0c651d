"""The data plane between two guest memory files over TCP on 127.0.0.1, with worker processes: a hole-aware
first pass, then pre-copy rounds of dirty pages while a writer keeps changing the source (write, then mark),
and a final round after it stops.  The target file must end bit-identical to the source."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ldoms.hv.memory import GuestMemory
from ldoms.migration.channels import DataPlaneReceiver, DataPlaneSender, MemoryFile
from ldoms.migration.dataplane_keys import new_secret
from ldoms.migration.pagescan import data_ranges, pretouch, to_runs
from ldoms.units import PAGE_SIZE, M

BLOCKS = [(0x8000000, 8 * M), (0x20000000, 4 * M)]
NCH = 2
pytestmark = pytest.mark.timeout(120)


def tcp_channels(n: int) -> tuple[list[socket.socket], list[socket.socket]]:
    with socket.create_server(("127.0.0.1", 0), backlog=n) as lst:
        port = lst.getsockname()[1]
        out = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        inc = [lst.accept()[0] for _ in range(n)]
    return out, inc


@pytest.fixture
def guests(tmp_path: Path) -> Iterator[tuple[GuestMemory, GuestMemory]]:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    src = GuestMemory(tmp_path / "src" / "mem", BLOCKS, create=True)
    dst = GuestMemory(tmp_path / "dst" / "mem", BLOCKS, create=True)
    yield src, dst
    src.close()
    dst.close()


def test_live_rounds_between_guest_memory_files(guests: tuple[GuestMemory, GuestMemory]) -> None:
    src, dst = guests
    rng = np.random.default_rng(4)
    src.write(0x8000000, rng.bytes(3 * M))  # the first block's start
    src.write(0x20000000 + M, rng.bytes(64 * PAGE_SIZE))  # a piece of the second
    fd = os.open(src.path, os.O_RDONLY)
    try:
        first_pass = data_ranges(fd, src.size)
    finally:
        os.close(fd)
    assert sum(n for _, n in first_pass) < src.size  # the holes were skipped

    pretouch(dst.view(), to_runs(first_pass, src.size // PAGE_SIZE))
    tx_socks, rx_socks = tcp_channels(NCH)
    secret = new_secret()
    rx = DataPlaneReceiver(
        secret, "mig-7", rx_socks, MemoryFile(str(dst.path), dst.size), workers="processes"
    )
    tx = DataPlaneSender(secret, "mig-7", tx_socks, MemoryFile(str(src.path), src.size), workers="processes")
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = pool.submit(rx.receive_round, 1)
        sent = tx.send_round(1, first_pass, target_is_zero=True)
        assert got.result().pages == sent.pages == 3 * M // PAGE_SIZE + 64

        # round 2 runs while the guest writes; each write is marked dirty after it lands (write-then-mark)
        dirty: set[int] = set()
        lock = threading.Lock()
        stop = threading.Event()
        zeroed = src.map.page_of(0x8000000 + M)

        def guest() -> None:
            wrng = np.random.default_rng(5)
            src.write(0x8000000 + M, bytes(PAGE_SIZE))  # a page the guest clears
            with lock:
                dirty.add(zeroed)
            while not stop.is_set():
                ra = 0x8000000 + int(wrng.integers(0, 8 * M // PAGE_SIZE)) * PAGE_SIZE
                src.write(ra, wrng.bytes(PAGE_SIZE))
                with lock:
                    dirty.add(src.map.page_of(ra))

        writer = pool.submit(guest)
        rnd = 1
        for rnd in (2, 3):
            with lock:
                batch, dirty = np.array(sorted(dirty), dtype=np.int64), set()
            got = pool.submit(rx.receive_round, rnd)
            tx.send_round(rnd, batch)
            got.result()
        stop.set()
        writer.result()
        with lock:  # the final round: the guest is stopped, the dirty set is final
            final = np.array(sorted(dirty), dtype=np.int64)
        got = pool.submit(rx.receive_round, rnd + 1)
        last = tx.send_round(rnd + 1, final)
        assert got.result().pages == last.pages
    tx.close()
    rx.close()
    a = np.frombuffer(src.view(), dtype=np.uint8)
    b = np.frombuffer(dst.view(), dtype=np.uint8)
    assert np.array_equal(a, b)
    del a, b  # release the views before the fixture unmaps the files
