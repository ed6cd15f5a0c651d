"""The data plane under attack and under cancellation: a relay between the two ends tampers with, replays,
reorders, drops and cuts frames; a hand-made sender breaks the round rules; either side cancels mid-round.
Every case ends with the specific error and with no thread or worker process left behind."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ldoms.migration import dataplane_errors as errs
from ldoms.migration.channels import DataPlaneReceiver, DataPlaneSender, MemoryFile
from ldoms.migration.dataframe import HEADER_SIZE, HELLO_META, FrameSealer
from ldoms.migration.dataplane_keys import KeySchedule
from ldoms.migration.lanes import send_all
from ldoms.units import PAGE_SIZE

P = PAGE_SIZE
SECRET = bytes(range(32))
FRAME = 64 * 1024
HELLO_BYTES = HEADER_SIZE + HELLO_META.size + 16
pytestmark = pytest.mark.timeout(120)
Edit = Callable[[int, bytes], bytes | None]


def memory(npages: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, size=npages * P, dtype=np.uint8)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=3) as ex:
        yield ex


@pytest.fixture
def no_leftovers() -> Iterator[None]:
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


class Relay:
    """Copies one channel's frames from the sender's socket to the receiver's, passing each through
    `edit(index, frame)`: it returns the bytes to forward (b"" holds the frame back) or None to cut the
    stream there.  The hello is frame 0."""

    def __init__(self, src: socket.socket, dst: socket.socket, edit: Edit) -> None:
        self.src, self.dst, self.edit = src, dst, edit
        self.thread = threading.Thread(target=self._run, name="relay")
        self.thread.start()

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            got = self.src.recv(n - len(buf))
            if not got:
                break
            buf += got
        return bytes(buf)

    def _run(self) -> None:
        try:
            i = 0
            while head := self._recv(HEADER_SIZE):
                meta_len, payload_len = struct.unpack_from("!II", head, 40)
                out = self.edit(i, head + self._recv(meta_len + payload_len))
                if out is None:
                    break
                self.dst.sendall(out)
                i += 1
        except OSError:
            pass
        finally:
            self.dst.close()
            self.src.close()


def relayed(edit: Edit, nch: int = 1) -> tuple[list[socket.socket], list[socket.socket], list[Relay]]:
    tx, rx, relays = [], [], []
    for ch in range(nch):
        a, a_peer = socket.socketpair()
        b, b_peer = socket.socketpair()
        tx.append(a)
        rx.append(b)
        relays.append(Relay(a_peer, b_peer, edit if ch == 0 else (lambda _i, f: f)))
    return tx, rx, relays


def attack(edit: Edit, pool: ThreadPoolExecutor, *, nch: int = 1, npages: int = 64) -> errs.DataPlaneError:
    """Run one round through a relay that applies `edit` to channel 0; return the receiver's error."""
    src = memory(npages)
    tx_socks, rx_socks, relays = relayed(edit, nch)
    rx = DataPlaneReceiver(SECRET, "m", rx_socks, memoryview(np.zeros_like(src)), frame_bytes=FRAME)
    tx = DataPlaneSender(SECRET, "m", tx_socks, memoryview(src), frame_bytes=FRAME)
    sending = pool.submit(tx.send_round, 1, np.arange(npages))
    with pytest.raises(errs.DataPlaneError) as ei:
        rx.receive_round(1)
        rx.close()
    try:
        sending.result()  # it may have finished into the socket buffers, or failed: either is fine
    except errs.DataPlaneError:
        pass
    tx.abort()
    rx.abort()
    for r in relays:
        r.thread.join()
    return ei.value


def flip(index: int, offset: int) -> Edit:
    def edit(i: int, f: bytes) -> bytes:
        if i != index:
            return f
        b = bytearray(f)
        b[offset] ^= 0x40
        return bytes(b)

    return edit


@pytest.mark.parametrize(
    ("where", "offset"),
    [("payload", HEADER_SIZE + 16 + 1000), ("tag", -1), ("page table", HEADER_SIZE + 3), ("round", 30)],
)
def test_tampering_is_refused(where: str, offset: int, pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    err = attack(flip(1, offset), pool)
    assert isinstance(err, errs.TamperedFrame), f"{where}: {err!r}"
    assert "data channel 0, frame 1: authentication failed" in str(err)


def test_tampered_pages_never_stay_in_the_target(pool: ThreadPoolExecutor) -> None:
    npages = 16
    src = memory(npages)
    dst = np.zeros_like(src)
    tx_socks, rx_socks, relays = relayed(flip(1, HEADER_SIZE + 16 + 5))
    rx = DataPlaneReceiver(SECRET, "m", rx_socks, memoryview(dst), frame_bytes=FRAME)
    tx = DataPlaneSender(SECRET, "m", tx_socks, memoryview(src), frame_bytes=FRAME)
    pool.submit(tx.send_round, 1, np.arange(npages))
    with pytest.raises(errs.TamperedFrame):
        rx.receive_round(1)
    tx.abort()
    relays[0].thread.join()
    assert not dst[: 8 * P].any()  # the frame was decrypted in place, then scrubbed


def test_replayed_frame_is_refused(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    err = attack(lambda i, f: f + f if i == 1 else f, pool)
    assert isinstance(err, errs.ReplayedFrame)
    assert "sequence 1 was already received (next expected 2)" in str(err)


def test_reordered_frames_are_refused(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    held: list[bytes] = []

    def swap(i: int, f: bytes) -> bytes:
        if i == 1:
            held.append(f)
            return b""
        return f + held.pop() if i == 2 else f

    err = attack(swap, pool)
    assert isinstance(err, errs.ReorderedFrame)
    assert "sequence 2 arrived while 1 was expected" in str(err)


def test_a_dropped_frame_is_refused(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    err = attack(lambda i, f: b"" if i == 2 else f, pool)
    assert isinstance(err, errs.ReorderedFrame)


def test_a_stream_cut_inside_a_frame_is_truncation(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    cut: dict[str, bytes] = {}

    def edit(i: int, f: bytes) -> bytes | None:
        if i == 2:
            cut["tail"] = f[: len(f) // 2]
            return f[: len(f) // 2]
        return None if i == 3 else f

    err = attack(edit, pool)
    assert isinstance(err, errs.TruncatedFrame)
    assert "ended inside the frame's payload" in str(err)


def test_a_stream_cut_between_frames_is_truncation(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    err = attack(lambda i, f: None if i == 2 else f, pool)
    assert isinstance(err, errs.TruncatedFrame)
    assert "the stream ended inside round 1 before the sender's goodbye" in str(err)


def test_a_stream_cut_inside_the_header(pool: ThreadPoolExecutor) -> None:
    err = attack(lambda i, f: f[:10] if i == 1 else (None if i > 1 else f), pool)
    assert isinstance(err, errs.TruncatedFrame) and "inside the frame's header (10 of 52 bytes)" in str(err)


def test_tampering_on_one_of_three_channels_stops_all(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    err = attack(flip(1, -3), pool, nch=3, npages=96)
    assert isinstance(err, errs.TamperedFrame)


def _pair_round(
    tx_kw: dict[str, Any], rx_kw: dict[str, Any], pool: ThreadPoolExecutor, swap: bool = False
) -> errs.DataPlaneError:
    src = memory(16)
    n = tx_kw.pop("nch", 1)
    pairs = [socket.socketpair() for _ in range(n)]
    rx_socks = [b for _, b in pairs]
    if swap:
        rx_socks.reverse()
    rx = DataPlaneReceiver(
        rx_kw.pop("secret", SECRET),
        rx_kw.pop("mid", "m"),
        rx_socks,
        memoryview(np.zeros(rx_kw.pop("size", src.size), dtype=np.uint8)),
    )
    tx = DataPlaneSender(
        tx_kw.pop("secret", SECRET), tx_kw.pop("mid", "m"), [a for a, _ in pairs], memoryview(src)
    )
    pool.submit(tx.send_round, 1, np.arange(16))
    with pytest.raises(errs.DataPlaneError) as ei:
        rx.receive_round(1)
    tx.abort()
    return ei.value


def test_wrong_key_is_refused_by_name(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    err = _pair_round({"secret": bytes(32)}, {}, pool)
    assert isinstance(err, errs.WrongKey) and "different migration secrets" in str(err)


def test_wrong_migration_is_refused(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    assert isinstance(_pair_round({"mid": "other"}, {}, pool), errs.WrongMigration)


def test_crossed_sockets_are_refused(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    err = _pair_round({"nch": 2}, {}, pool, swap=True)
    assert isinstance(err, errs.MisroutedFrame) and "arrived on channel" in str(err)


def test_memory_size_mismatch_is_refused(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    err = _pair_round({}, {"size": 32 * P}, pool)
    assert isinstance(err, errs.GeometryMismatch)


# ------------------------------------------------------------------------- a sender that breaks the rules
def handmade(frames: Callable[[FrameSealer], list[tuple[bytes, memoryview]]]) -> errs.DataPlaneError:
    a, b = socket.socketpair()
    rx = DataPlaneReceiver(SECRET, "m", [b], memoryview(np.zeros(16 * P, dtype=np.uint8)), frame_bytes=FRAME)
    sealer = FrameSealer(KeySchedule(SECRET, "m"), 0)
    for head, body in [sealer.hello(1, 16 * P, FRAME), *frames(sealer)]:
        send_all(a, [head, body])
    a.close()
    with pytest.raises(errs.DataPlaneError) as ei:
        rx.receive_round(1)
        rx.receive_round(2)
        rx.close()
    rx.abort()
    return ei.value


def pages(
    s: FrameSealer, rnd: int, first: int = 0, n: int = 1, data: bytes | None = None, compressed: bool = False
) -> tuple[bytes, memoryview]:
    body = data if data is not None else bytes([7]) * (n * P)
    return s.pages(
        rnd,
        np.array([[first, n, 0]]),
        body,
        bytearray(len(body) + 16),
        compressed=compressed,
        plain_len=n * P,
    )


def test_end_of_round_that_miscounts_is_refused() -> None:
    err = handmade(lambda s: [pages(s, 1), s.end_round(1, 2, 1, 0)])
    assert isinstance(err, errs.RoundMismatch) and "announces 2 frames, 1 pages" in str(err)


def test_frames_of_an_ended_round_are_refused() -> None:
    err = handmade(lambda s: [pages(s, 1), s.end_round(1, 1, 1, 0), pages(s, 1)])
    assert isinstance(err, errs.RoundMismatch) and "a frame of round 1 after round 1 ended" in str(err)


def test_frames_of_two_rounds_may_not_interleave() -> None:
    err = handmade(lambda s: [pages(s, 1), pages(s, 2)])
    assert isinstance(err, errs.RoundMismatch) and "open round: 1" in str(err)


def test_goodbye_inside_a_round_is_refused() -> None:
    err = handmade(lambda s: [pages(s, 1), s.goodbye()])
    assert isinstance(err, errs.RoundMismatch) and "goodbye inside round 1" in str(err)


def test_a_second_hello_is_refused() -> None:
    err = handmade(lambda s: [s.hello(1, 16 * P, FRAME)])
    assert isinstance(err, errs.MalformedFrame) and "exactly one hello" in str(err)


def test_compressed_pages_that_do_not_decompress_are_refused() -> None:
    err = handmade(lambda s: [pages(s, 1, n=1, data=b"\xff" * 100, compressed=True)])
    assert isinstance(err, errs.MalformedFrame) and "do not decompress" in str(err)


def test_compressed_pages_of_the_wrong_size_are_refused() -> None:
    import lz4.block

    short = lz4.block.compress(b"a" * 100, store_size=False)
    err = handmade(lambda s: [pages(s, 1, n=1, data=short, compressed=True)])
    assert isinstance(err, errs.MalformedFrame) and "decompress to 100 bytes, not 8192" in str(err)


def test_a_stream_that_ends_between_rounds() -> None:
    err = handmade(lambda s: [pages(s, 1), s.end_round(1, 1, 1, 0)])
    assert isinstance(err, errs.TruncatedFrame) and "between rounds" in str(err)


def test_a_round_that_never_comes_times_out() -> None:
    a, b = socket.socketpair()
    rx = DataPlaneReceiver(SECRET, "m", [b], memoryview(np.zeros(16 * P, dtype=np.uint8)))
    with pytest.raises(errs.RoundTimeout, match=r"round 1 not complete after 0\.05 s"):
        rx.receive_round(1, timeout=0.05)
    with pytest.raises(errs.DataPlaneCancelled):  # a failed call aborts the plane
        rx.receive_round(1)
    a.close()


# ------------------------------------------------------------------------------------------ cancellation
def files(tmp_path: Path, src: np.ndarray) -> tuple[MemoryFile, MemoryFile]:
    (tmp_path / "s").write_bytes(src.tobytes())
    with open(tmp_path / "d", "wb") as f:
        f.truncate(src.size)
    return MemoryFile(str(tmp_path / "s"), src.size), MemoryFile(str(tmp_path / "d"), src.size)


def wait_until_round_began(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    """Block (no sleeping) until every channel has sent something past its hello: the round is
    under way, and with 16 MiB to send to a peer that reads no more, its lanes stay blocked in send."""
    for _, b in pairs:
        assert len(b.recv(HELLO_BYTES, socket.MSG_WAITALL)) == HELLO_BYTES
        assert b.recv(1, socket.MSG_PEEK)


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_sender_abort_mid_round_unblocks_and_leaves_nothing(
    workers: str, tmp_path: Path, pool: ThreadPoolExecutor, no_leftovers: None
) -> None:
    src = memory(2048)  # 16 MiB: far more than the socket buffers of a peer that never reads
    s, _d = files(tmp_path, src)
    pairs = [socket.socketpair() for _ in range(2)]
    tx = DataPlaneSender(SECRET, "m", [a for a, _ in pairs], s, workers=workers, frame_bytes=FRAME)
    sending = pool.submit(tx.send_round, 1, np.arange(2048))
    wait_until_round_began(pairs)
    tx.abort()
    with pytest.raises(errs.DataPlaneCancelled, match="cancelled"):
        sending.result()
    tx.abort()  # idempotent
    for _, b in pairs:
        b.close()


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_receiver_abort_mid_round_fails_the_sender(
    workers: str, tmp_path: Path, pool: ThreadPoolExecutor, no_leftovers: None
) -> None:
    src = memory(2048)
    s, d = files(tmp_path, src)
    pairs = [socket.socketpair() for _ in range(2)]
    box: dict[str, DataPlaneReceiver] = {}

    def stop_at_first_progress(_round: int, _pages: int) -> None:
        box["rx"].abort()  # from inside receive_round: its own call must raise "cancelled"

    box["rx"] = rx = DataPlaneReceiver(
        SECRET,
        "m",
        [b for _, b in pairs],
        d,
        workers=workers,
        frame_bytes=FRAME,
        on_progress=stop_at_first_progress,
    )
    tx = DataPlaneSender(SECRET, "m", [a for a, _ in pairs], s, workers=workers, frame_bytes=FRAME)
    sending = pool.submit(tx.send_round, 1, np.arange(2048))
    with pytest.raises(errs.DataPlaneCancelled):
        rx.receive_round(1)
    with pytest.raises(errs.ChannelClosed):
        sending.result()
    tx.abort()


def test_a_killed_worker_process_fails_the_round(
    tmp_path: Path, pool: ThreadPoolExecutor, no_leftovers: None
) -> None:
    src = memory(2048)
    s, _d = files(tmp_path, src)
    pairs = [socket.socketpair() for _ in range(2)]
    tx = DataPlaneSender(SECRET, "m", [a for a, _ in pairs], s, workers="processes", frame_bytes=FRAME)
    sending = pool.submit(tx.send_round, 1, np.arange(2048))
    wait_until_round_began(pairs)
    pid = tx._lanes[1].runner.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(errs.ChannelClosed, match="data channel 1: its sender worker ended without a word"):
        sending.result()
    for _, b in pairs:
        b.close()


def test_context_manager_closes_cleanly_or_aborts(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    src = memory(8)
    pairs = [socket.socketpair() for _ in range(1)]
    rx = DataPlaneReceiver(SECRET, "m", [b for _, b in pairs], memoryview(np.zeros_like(src)))
    with DataPlaneSender(SECRET, "m", [a for a, _ in pairs], memoryview(src)) as tx:
        got = pool.submit(rx.receive_round, 1)
        tx.send_round(1, np.arange(8))
        got.result()
    rx.close()  # the goodbye arrived
    a, b = socket.socketpair()
    with pytest.raises(RuntimeError), DataPlaneSender(SECRET, "m", [a], memoryview(src)):
        raise RuntimeError("the daemon failed")
    b.close()


def test_waiting_for_a_round_the_sender_never_sent(pool: ThreadPoolExecutor, no_leftovers: None) -> None:
    src = memory(8)
    a, b = socket.socketpair()
    rx = DataPlaneReceiver(SECRET, "m", [b], memoryview(np.zeros_like(src)))
    tx = DataPlaneSender(SECRET, "m", [a], memoryview(src))
    tx.send_round(1, np.arange(8))
    tx.close()
    assert rx.receive_round(1).pages == 8
    with pytest.raises(errs.ChannelClosed, match="every channel ended before round 2"):
        rx.receive_round(2)


def test_an_internal_failure_in_a_lane_is_reported_with_its_cause(
    monkeypatch: pytest.MonkeyPatch, pool: ThreadPoolExecutor, no_leftovers: None
) -> None:
    import ldoms.migration.lanes as lanes

    def broken(*_: object) -> None:
        raise RuntimeError("scanner exploded")

    monkeypatch.setattr(lanes, "classify", broken)
    src = memory(8)
    a, b = socket.socketpair()
    tx = DataPlaneSender(SECRET, "m", [a], memoryview(src), workers="threads")
    with pytest.raises(errs.DataPlaneError, match="data channel 0: internal failure: RuntimeError: scanner"):
        tx.send_round(1, np.arange(8))
    b.close()


# ------------------------------------------------------------------------------------------ a full disk
def test_a_target_filesystem_that_fills_up_is_no_space(
    tmp_path: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch, no_leftovers: None
) -> None:
    """The receiver's lanes pwrite the image: ENOSPC on the third write is a NoSpace error naming the image
    (never a SIGBUS in a mapping), and the sender is told the channel closed."""
    src = memory(256)
    s, d = files(tmp_path, src)
    real, calls = os.pwrite, [0]

    def fills_up(fd: int, data: Any, off: int) -> int:
        calls[0] += 1
        if calls[0] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, off)

    monkeypatch.setattr(os, "pwrite", fills_up)
    a, b = socket.socketpair()
    rx = DataPlaneReceiver(SECRET, "m", [b], d, workers="threads", frame_bytes=FRAME)
    tx = DataPlaneSender(SECRET, "m", [a], s, workers="threads", frame_bytes=FRAME)
    sending = pool.submit(tx.send_round, 1, np.arange(256))
    with pytest.raises(errs.NoSpace, match=f"{d.path}: no space left on device") as e:
        rx.receive_round(1)
    assert e.value.code == "no-space"
    with pytest.raises(errs.DataPlaneError):
        sending.result()
    tx.abort()
