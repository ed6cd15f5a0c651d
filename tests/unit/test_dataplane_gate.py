"""The data port's gate (ldoms/migration/dataplane_gate.py): authenticated preambles, read concurrently,
each under its own deadline, with a bounded number waiting at once."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from ldoms.migration.dataplane_gate import (
    MAC_BYTES,
    PREAMBLE,
    PREAMBLE_BYTES,
    Gathered,
    gather_channels,
    open_preamble,
    seal_preamble,
)
from ldoms.migration.dataplane_keys import KeySchedule
from ldoms.migration.dataplane_link import ChannelListener, DataLinkError

WAIT = 10.0
SECRET = bytes(range(32))
KEYS = KeySchedule(SECRET, "mig-gate")
KEY, TAG = KEYS.preamble_key(), KEYS.tag


@pytest.fixture
def port() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s


def dial(port: socket.socket, data: bytes = b"") -> socket.socket:
    s = socket.create_connection(port.getsockname(), timeout=WAIT)
    if data:
        s.sendall(data)
    return s


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_preamble_round_trip_and_refusals() -> None:
    good = seal_preamble(KEY, TAG, 2, 4)
    assert len(good) == PREAMBLE_BYTES == PREAMBLE.size + MAC_BYTES
    assert open_preamble(KEY, TAG, 4, good) == 2
    other = KeySchedule(SECRET, "another")
    assert open_preamble(KEY, TAG, 4, good[:-1]) is None  # short
    assert open_preamble(KEY, TAG, 4, good[:-1] + bytes([good[-1] ^ 1])) is None  # MAC
    assert open_preamble(KEYS.channel_key(0), TAG, 4, good) is None  # another key
    assert open_preamble(KEY, other.tag, 4, good) is None  # another migration's tag
    assert open_preamble(KEY, TAG, 3, good) is None  # another count
    assert open_preamble(KEY, TAG, 4, seal_preamble(KEY, TAG, 4, 4)) is None  # channel out of range
    forged = bytearray(seal_preamble(KEY, TAG, 2, 4))
    forged[:4] = b"XXXX"  # a MAC over a wrong magic is still refused
    head = bytes(forged[: PREAMBLE.size])
    mac = hmac.new(KEY, head, hashlib.sha256).digest()[:MAC_BYTES]
    assert open_preamble(KEY, TAG, 4, head + mac) is None


def test_channels_keep_the_bytes_after_their_preamble(port: socket.socket) -> None:
    a = dial(port, seal_preamble(KEY, TAG, 1, 2) + b"frame-1")
    b = dial(port, seal_preamble(KEY, TAG, 0, 2) + b"frame-0")
    out = gather_channels(port, key=KEY, tag=TAG, n=2, until=time.monotonic() + WAIT, stop=lambda: False)
    try:
        assert sorted(out.channels) == [0, 1] and out.strays == 0
        for ch, sock in out.channels.items():
            sock.setblocking(True)
            assert sock.recv(64) == f"frame-{ch}".encode()
    finally:
        for s in (a, b, *out.channels.values()):
            s.close()


def test_a_trickler_is_cut_by_its_own_deadline_not_per_read(port: socket.socket) -> None:
    """A connection has preamble_s from its accept for its whole preamble, however it paces its bytes."""
    preamble = seal_preamble(KEY, TAG, 0, 1)
    trickler = dial(port, preamble[:1])
    stop = threading.Event()

    def trickle() -> None:
        for byte in preamble[1:-1]:  # never the last byte
            if stop.wait(0.05):  # the pace of the trickle, well under the deadline each
                return
            try:
                trickler.sendall(bytes([byte]))
            except OSError:
                return

    t = threading.Thread(target=trickle)
    t.start()
    start = time.monotonic()
    out = gather_channels(port, key=KEY, tag=TAG, n=1, until=start + 0.6, stop=lambda: False, preamble_s=0.3)
    stop.set()
    t.join(WAIT)
    try:
        assert out.channels == {} and out.strays == 1
        assert closed(trickler)
    finally:
        trickler.close()


def test_the_longest_waiting_connection_makes_room(port: socket.socket) -> None:
    silent = [dial(port) for _ in range(3)]
    taken = dial(port, seal_preamble(KEY, TAG, 0, 1))
    out = Gathered()
    try:
        # max_pending=2: the three silent ones and the channel cannot all wait; the oldest make room
        gather_channels(
            port,
            key=KEY,
            tag=TAG,
            n=1,
            until=time.monotonic() + WAIT,
            stop=lambda: False,
            max_pending=2,
            into=out,
        )
        assert list(out.channels) == [0] and out.strays == 3  # two pushed out, one let go at the end
        assert all(closed(s) for s in silent)
    finally:
        for s in (*silent, taken, *out.channels.values()):
            s.close()


def test_stop_and_deadline_end_the_gathering(port: socket.socket) -> None:
    silent = dial(port)
    try:
        out = gather_channels(port, key=KEY, tag=TAG, n=1, until=time.monotonic() + WAIT, stop=lambda: True)
        assert out.channels == {}
        out = gather_channels(port, key=KEY, tag=TAG, n=1, until=time.monotonic() + 0.2, stop=lambda: False)
        assert out.channels == {} and out.strays == 1 and closed(silent)
    finally:
        silent.close()


def test_an_error_closes_the_channels_taken(port: socket.socket) -> None:
    first = dial(port, seal_preamble(KEY, TAG, 0, 2))
    out = Gathered()

    def stop() -> bool:
        if out.channels:
            raise RuntimeError("stop failed")
        return False

    try:
        with pytest.raises(RuntimeError, match="stop failed"):
            gather_channels(port, key=KEY, tag=TAG, n=2, until=time.monotonic() + WAIT, stop=stop, into=out)
        assert out.channels[0].fileno() == -1  # closed
        assert closed(first)
    finally:
        first.close()


def test_a_listener_that_cannot_accept_is_an_error(port: socket.socket) -> None:
    port.close()
    with pytest.raises(OSError):
        gather_channels(port, key=KEY, tag=TAG, n=1, until=time.monotonic() + WAIT, stop=lambda: False)


def test_channel_listener_errors() -> None:
    with pytest.raises(ValueError, match="must be 32 bytes"):
        ChannelListener("127.0.0.1", "m", 1, secret=b"short", idle_s=1)
    lst = ChannelListener("127.0.0.1", "m", 1, secret=SECRET, idle_s=1)
    lst.close()
    with pytest.raises(DataLinkError, match="accepting data channels failed: the data port was closed"):
        lst.accept_all(1)
    with pytest.raises(DataLinkError, match=r"Cannot listen for data channels on 192\.0\.2\.254"):
        ChannelListener("192.0.2.254", "m", 1, secret=SECRET, idle_s=1)


def test_strays_are_reported_when_the_channels_do_not_come() -> None:
    lst = ChannelListener("127.0.0.1", "mig-late", 1, secret=SECRET, idle_s=1)
    stray = socket.create_connection(("127.0.0.1", lst.port), timeout=WAIT)
    stray.sendall(bytes(PREAMBLE_BYTES))
    try:
        with pytest.raises(
            DataLinkError, match=r"only 0 of 1 .* within 0.3 s .*; 1 other connections were refused"
        ):
            lst.accept_all(0.3)
    finally:
        stray.close()
