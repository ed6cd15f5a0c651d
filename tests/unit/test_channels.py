"""The data plane end to end over socket pairs: round trips, zero pages, rounds, compression, cancellation.
Attacks on the stream are in test_channels_attacks.py."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ldoms.migration import dataplane_errors as errs
from ldoms.migration.channels import (
    DataPlaneReceiver,
    DataPlaneSender,
    MemoryFile,
    Workers,
    choose_workers,
)
from ldoms.units import PAGE_SIZE

P = PAGE_SIZE
SECRET = bytes(range(32))
pytestmark = pytest.mark.timeout(120)


def memory(npages: int, nonzero: float, seed: int) -> np.ndarray:
    """Random pages where `nonzero` of them hold data, the rest all-zero; page 0 and the last hold data."""
    rng = np.random.default_rng(seed)
    mem = np.zeros(npages * P, dtype=np.uint8)
    pages = mem.reshape(npages, P)
    chosen = rng.random(npages) < nonzero
    chosen[0] = chosen[-1] = True
    pages[chosen] = rng.integers(0, 256, size=(int(chosen.sum()), P), dtype=np.uint8)
    pages[chosen, 17] = 1  # a random page is never all-zero
    return mem


def nonzero_pages(mem: np.ndarray) -> int:
    return int(mem.reshape(-1, P).any(axis=1).sum())


def socket_pairs(n: int) -> tuple[list[socket.socket], list[socket.socket]]:
    pairs = [socket.socketpair() for _ in range(n)]
    return [a for a, _ in pairs], [b for _, b in pairs]


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as ex:
        yield ex


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Every thread and process a test started has ended by its end."""
    before = {t.ident for t in threading.enumerate()}
    yield
    # A lane thread may still be returning from its last call when abort() has already seen it end: give
    # each a bounded moment; one still alive after that is a leak.
    new = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("dataplane")]
    for t in new:
        t.join(timeout=5.0)
    left = [t.name for t in new if t.is_alive()]
    assert left == []
    assert multiprocessing.active_children() == []


def as_file(tmp_path: Path, name: str, data: np.ndarray | int) -> MemoryFile:
    path = tmp_path / name
    with open(path, "wb") as f:
        if isinstance(data, int):
            f.truncate(data)
        else:
            f.write(data.tobytes())
    return MemoryFile(str(path), data if isinstance(data, int) else data.size)


def read_file(mf: MemoryFile) -> np.ndarray:
    return np.fromfile(mf.path, dtype=np.uint8)


@pytest.mark.parametrize(
    ("nch", "workers"),
    [(1, "threads"), (3, "threads"), (3, "processes"), (2, "auto")],
)
def test_round_trip_is_bit_exact(
    nch: int, workers: str, tmp_path: Path, pool: ThreadPoolExecutor, no_leftovers: None
) -> None:
    src = memory(700, 0.4, seed=nch)
    tx_socks, rx_socks = socket_pairs(nch)
    files = workers in ("processes", "auto")
    smem: Any = as_file(tmp_path, "src", src) if files else memoryview(src)
    dst = np.zeros_like(src)
    dmem: Any = as_file(tmp_path, "dst", src.size) if files else memoryview(dst)
    rx = DataPlaneReceiver(SECRET, "m-1", rx_socks, dmem, workers=workers, frame_bytes=64 * 1024)
    tx = DataPlaneSender(SECRET, "m-1", tx_socks, smem, workers=workers, frame_bytes=64 * 1024)
    assert tx.workers is choose_workers(workers, nch, files, os.cpu_count() or 1)
    got = pool.submit(rx.receive_round, 1)
    sent = tx.send_round(1, np.ones(700, dtype=bool), target_is_zero=True)
    recv = got.result()
    tx.close()
    rx.close()
    if files:
        dst = read_file(dmem)
    assert np.array_equal(src, dst)
    nz = nonzero_pages(src)
    assert (sent.pages, sent.zero_pages_skipped) == (nz, 700 - nz)
    assert (recv.pages, recv.zero_pages) == (nz, 0)
    assert sent.bytes_sent == recv.bytes_sent
    assert sent.frames == recv.frames >= nz * P // (64 * 1024)


def test_zero_pages_are_not_sent(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    """Count the bytes that crossed the sockets (the receiver's count of bytes read): a zero page costs
    nothing, a data page its 8 KiB plus a share of a frame's 52-byte header, run table and 16-byte tag."""
    npages = 2048
    src = np.zeros(npages * P, dtype=np.uint8)
    for p in (5, 6, 7, 1000, 2047):
        src[p * P : (p + 1) * P] = 0xA5
    dst = np.zeros_like(src)
    tx_socks, rx_socks = socket_pairs(2)
    rx = DataPlaneReceiver(SECRET, "m", rx_socks, memoryview(dst))
    tx = DataPlaneSender(SECRET, "m", tx_socks, memoryview(src))
    got = pool.submit(rx.receive_round, 1)
    sent = tx.send_round(1, np.ones(npages, dtype=bool), target_is_zero=True)
    recv = got.result()
    tx.close()
    rx.close()
    assert np.array_equal(src, dst)
    assert sent.pages == 5 and sent.zero_pages_skipped == npages - 5
    assert recv.bytes_sent == sent.bytes_sent
    # per channel: hello 84 + one frame (52 + runs + 16) + end of round 92, goodbye not counted
    assert 5 * P < recv.bytes_sent < 5 * P + 600


def test_an_all_zero_round_sends_only_framing(pool: ThreadPoolExecutor) -> None:
    src = np.zeros(512 * P, dtype=np.uint8)
    tx_socks, rx_socks = socket_pairs(1)
    rx = DataPlaneReceiver(SECRET, "m", rx_socks, memoryview(np.zeros_like(src)))
    tx = DataPlaneSender(SECRET, "m", tx_socks, memoryview(src))
    got = pool.submit(rx.receive_round, 0)
    sent = tx.send_round(0, [(0, src.size)], target_is_zero=True)
    assert got.result().pages == 0 and sent.frames == 0 and sent.bytes_sent < 200
    tx.close()
    rx.close()


def test_later_rounds_resend_dirty_pages_and_clear_zeroed_ones(pool: ThreadPoolExecutor) -> None:
    npages = 600
    src = memory(npages, 0.5, seed=11)
    dst = np.zeros_like(src)
    seen: list[tuple[int, int]] = []
    tx_socks, rx_socks = socket_pairs(2)
    rx = DataPlaneReceiver(
        SECRET,
        "m",
        rx_socks,
        memoryview(dst),
        frame_bytes=64 * 1024,
        on_progress=lambda r, n: seen.append((r, n)),
    )
    tx = DataPlaneSender(SECRET, "m", tx_socks, memoryview(src), frame_bytes=64 * 1024)
    got = pool.submit(rx.receive_round, 1)
    tx.send_round(1, np.arange(npages), target_is_zero=True)
    got.result()
    pages = src.reshape(npages, P)
    was_data = np.flatnonzero(pages.any(axis=1))
    zeroed = was_data[:40]  # the guest cleared these...
    pages[zeroed] = 0
    written = np.flatnonzero(~pages.any(axis=1))[-30:]  # ...and wrote into these
    pages[written] = 0x5A
    dirty = np.union1d(zeroed, written)
    got = pool.submit(rx.receive_round, 2)
    sent = tx.send_round(2, dirty)  # the target holds round 1's data: zero pages travel as zero runs
    recv = got.result()
    tx.close()
    rx.close()
    assert np.array_equal(src, dst)
    assert (sent.pages, sent.zero_pages) == (len(np.setdiff1d(written, zeroed)), len(zeroed))
    assert (recv.pages, recv.zero_pages) == (sent.pages, sent.zero_pages)
    assert seen and seen[-1] == (2, sent.pages) and {r for r, _ in seen} == {1, 2}


def test_rounds_may_arrive_before_they_are_awaited(pool: ThreadPoolExecutor) -> None:
    src = memory(64, 0.5, seed=5)
    dst = np.zeros_like(src)
    tx_socks, rx_socks = socket_pairs(2)
    rx = DataPlaneReceiver(SECRET, "m", rx_socks, memoryview(dst))
    tx = DataPlaneSender(SECRET, "m", tx_socks, memoryview(src))
    tx.send_round(1, np.arange(32), target_is_zero=True)  # socket buffers hold it all
    tx.send_round(2, np.arange(32, 64), target_is_zero=True)
    assert rx.receive_round(2).pages + rx.receive_round(1).pages == nonzero_pages(src)
    tx.close()
    rx.close()
    assert np.array_equal(src, dst)


def test_compression_round_trips_and_shrinks_the_wire(pool: ThreadPoolExecutor) -> None:
    npages = 256
    text = (b"ldoms guest page, quite compressible. " * 300)[:P]
    src = np.frombuffer(text * npages, dtype=np.uint8).copy()
    src[P * 10 : P * 20] = 0  # zero pages among compressed ones
    dst = np.zeros_like(src)
    tx_socks, rx_socks = socket_pairs(2)
    rx = DataPlaneReceiver(SECRET, "m", rx_socks, memoryview(dst), frame_bytes=128 * 1024)
    tx = DataPlaneSender(SECRET, "m", tx_socks, memoryview(src), compression="lz4", frame_bytes=128 * 1024)
    got = pool.submit(rx.receive_round, 1)
    sent = tx.send_round(1, np.ones(npages, dtype=bool), target_is_zero=True)
    recv = got.result()
    tx.close()
    rx.close()
    assert np.array_equal(src, dst)
    assert sent.compressed_frames == recv.compressed_frames == sent.frames > 0
    assert sent.bytes_sent < sent.pages * P // 10


def test_random_pages_are_sent_raw_even_when_lz4_is_asked(pool: ThreadPoolExecutor) -> None:
    src = memory(64, 1.0, seed=2)
    dst = np.zeros_like(src)
    tx_socks, rx_socks = socket_pairs(1)
    rx = DataPlaneReceiver(SECRET, "m", rx_socks, memoryview(dst), frame_bytes=64 * 1024)
    tx = DataPlaneSender(SECRET, "m", tx_socks, memoryview(src), compression="lz4", frame_bytes=64 * 1024)
    got = pool.submit(rx.receive_round, 1)
    sent = tx.send_round(1, np.arange(64))
    got.result()
    tx.close()
    rx.close()
    assert sent.compressed_frames == 0 and np.array_equal(src, dst)


# ------------------------------------------------------------------------------------ argument errors
def test_arguments_are_checked(tmp_path: Path) -> None:
    mem = memoryview(bytearray(4 * P))
    a, b = socket.socketpair()
    with pytest.raises(ValueError, match="0 channels"):
        DataPlaneSender(SECRET, "m", [], mem)
    with pytest.raises(ValueError, match="frame size 1000"):
        DataPlaneSender(SECRET, "m", [a], mem, frame_bytes=1000)
    with pytest.raises(ValueError, match="memory of 100 bytes"):
        DataPlaneSender(SECRET, "m", [a], memoryview(bytearray(100)))
    with pytest.raises(ValueError, match="pass a MemoryFile"):
        DataPlaneSender(SECRET, "m", [a], mem, workers="processes")
    with pytest.raises(ValueError, match="must be writable"):
        DataPlaneReceiver(SECRET, "m", [b], memoryview(bytes(4 * P)))
    with pytest.raises(ValueError, match="must be 32 bytes"):
        DataPlaneReceiver(b"x", "m", [b], mem)
    with pytest.raises(ValueError, match="'fibres' is not a valid Workers"):
        DataPlaneSender(SECRET, "m", [a], mem, workers="fibres")
    a.close()
    b.close()


def test_rounds_must_go_upwards_and_stay_inside_memory(pool: ThreadPoolExecutor) -> None:
    src = memory(16, 1.0, seed=1)
    tx_socks, rx_socks = socket_pairs(1)
    rx = DataPlaneReceiver(SECRET, "m", rx_socks, memoryview(np.zeros_like(src)))
    tx = DataPlaneSender(SECRET, "m", tx_socks, memoryview(src))
    got = pool.submit(rx.receive_round, 3)
    tx.send_round(3, np.arange(4))
    got.result()
    with pytest.raises(ValueError, match="rounds go upwards from 4"):
        tx.send_round(3, np.arange(4))
    with pytest.raises(ValueError, match="beyond the memory's 16 pages"):
        tx.send_round(4, np.arange(20))
    tx.close()
    rx.close()
    with pytest.raises(errs.DataPlaneCancelled, match="already aborted or closed"):
        tx.send_round(5, np.arange(4))
    tx.close()  # closing twice is harmless


def test_memory_file_must_exist_for_threads(tmp_path: Path) -> None:
    a, _b = socket.socketpair()
    with pytest.raises(FileNotFoundError):
        DataPlaneSender(SECRET, "m", [a], MemoryFile(str(tmp_path / "nope"), 4 * P), workers="threads")


def test_pages_land_in_a_memory_file_mapped_by_threads(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    src = memory(128, 0.3, seed=9)
    s, d = as_file(tmp_path, "s", src), as_file(tmp_path, "d", src.size)
    tx_socks, rx_socks = socket_pairs(1)
    rx = DataPlaneReceiver(SECRET, "m", rx_socks, d, workers="threads")
    tx = DataPlaneSender(SECRET, "m", tx_socks, s, workers="threads")
    got = pool.submit(rx.receive_round, 1)
    tx.send_round(1, [(0, src.size)], target_is_zero=True)
    got.result()
    tx.close()
    rx.close()
    assert np.array_equal(read_file(d), src)


def test_auto_workers_are_processes_only_with_cores_to_spare() -> None:
    assert choose_workers("auto", 2, True, 8) is Workers.PROCESSES
    assert choose_workers("auto", 2, True, 2) is Workers.THREADS  # this machine: both ends share 2 cores
    assert choose_workers("auto", 1, True, 64) is Workers.THREADS
    assert choose_workers("auto", 4, False, 64) is Workers.THREADS  # a bare buffer cannot be re-mapped
    assert choose_workers("processes", 2, True, 1) is Workers.PROCESSES
