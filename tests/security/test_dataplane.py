"""The migration data plane as a network attacker meets it (SECURITY.md, "The data plane"): what travels in
clear, how much a stranger on the data port can make the target do, and where the per-migration secret may
appear.  Keys, nonces, replay, reordering, truncation and tampering are checked in tests/unit/test_channels_*.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ldoms.migration.dataframe import HEADER_SIZE, FrameSealer, runs_to_meta
from ldoms.migration.dataplane_gate import (
    MAC_BYTES,
    MAGIC,
    PREAMBLE_BYTES,
    Gathered,
    gather_channels,
    seal_preamble,
)
from ldoms.migration.dataplane_keys import KeySchedule, migration_tag, new_secret
from ldoms.migration.dataplane_link import PREAMBLE, ChannelListener, DataLinkError, open_channels
from ldoms.migration.live_plan import PrimaryCaps
from ldoms.migration.live_target import DataPlaneImage
from ldoms.migration.transfer import TransferError
from ldoms.units import PAGE_SIZE

WAIT = 10.0
SECRET = bytes(range(32))


def test_what_an_observer_of_the_data_plane_sees() -> None:
    """Page contents are encrypted; the frame header and page table are authenticated but in clear: an
    observer learns which pages travel in which round, which are zero, the sizes, and a digest of the
    migration id, never the pages, the id, the secret or a key."""
    secret, mid = new_secret(), "4f2a-migration-id"
    keys = KeySchedule(secret, mid)
    data = bytes(range(256)) * (2 * PAGE_SIZE // 256)
    runs = np.array([[5, 2, 0], [9, 3, 1]])  # pages 5-6 with data, pages 9-11 zero
    head, ct = FrameSealer(keys, 0).pages(
        7, runs, data, bytearray(len(data) + 16), compressed=False, plain_len=len(data)
    )
    wire = head + bytes(ct)
    assert head[HEADER_SIZE:] == runs_to_meta(runs)  # the page table, readable
    assert head[8:24] == migration_tag(mid) and mid.encode() not in wire
    assert all(data[i : i + 16] not in wire for i in range(0, len(data), 16))  # no plaintext block
    assert secret not in wire and keys.channel_key(0) not in wire and keys.key_id not in wire


def refused(s: socket.socket) -> bool:
    """Whether the target closed `s` (a reset too: it closes without reading what is left)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def stranger_preambles(mid: str, n: int) -> list[bytes]:
    """What strangers can send without the secret: garbage, another migration's channel, and this
    migration's own clear header (an on-path observer reads its tag) with no MAC or a forged one."""
    head = PREAMBLE.pack(MAGIC, migration_tag(mid), 0, n)
    return [
        b"GET / HTTP/1.0\r\n\r\n" + bytes(PREAMBLE_BYTES),
        seal_preamble(KeySchedule(new_secret(), "another").preamble_key(), migration_tag("another"), 0, n),
        head + bytes(MAC_BYTES),
        seal_preamble(KeySchedule(new_secret(), mid).preamble_key(), migration_tag(mid), 0, n),  # wrong key
    ]


def test_strangers_on_the_data_port_can_only_make_the_migration_fail() -> None:
    """The target's data port takes anyone's connection while it waits for the channels.  A preamble is
    authenticated with a key derived from the per-migration secret, so no stranger, not even one who read the
    migration's tag on the wire, can claim a channel; strays are closed at once and their number does not
    fail the migration (many times the old limit of 32 here): the real channels still get in.  What a
    stranger can still do is keep the channels from connecting at all (a flood, or cutting the path), which
    makes the migration fail: a denial of service, nothing more, since every frame is authenticated."""
    mid, n = "mig-dos", 2
    lst = ChannelListener("127.0.0.1", mid, n, secret=SECRET, idle_s=5)
    got: list[socket.socket] = []
    failed: list[BaseException] = []

    def accept() -> None:
        try:
            got.extend(lst.accept_all(WAIT))
        except DataLinkError as e:
            failed.append(e)

    t = threading.Thread(target=accept)
    t.start()
    socks: list[socket.socket] = []
    try:
        for _ in range(25):
            for preamble in stranger_preambles(mid, n):
                with socket.create_connection(("127.0.0.1", lst.port), timeout=WAIT) as s:
                    s.sendall(preamble)
                    assert refused(s)  # closed by the target at once
        socks = open_channels("127.0.0.1", lst.port, mid, n, secret=SECRET, connect_s=WAIT, idle_s=WAIT)
        t.join(WAIT)
        assert failed == [] and len(got) == n
        for i, (a, b) in enumerate(zip(socks, got, strict=True)):
            a.sendall(bytes([i]))
            assert b.recv(1) == bytes([i])  # the source's channel i, with nothing of its stream eaten
    finally:
        t.join(WAIT)
        lst.close()
        for s in (*socks, *got):
            s.close()


def test_a_replayed_preamble_cannot_take_a_channel_the_source_holds() -> None:
    """An on-path attacker who copies a real channel's preamble gets a closed connection: the channel is
    already the source's (the copy can only come after the original), and the copy is bound to this
    migration, channel and count."""
    mid = "mig-replay"
    key, tag = KeySchedule(SECRET, mid).preamble_key(), migration_tag(mid)
    with socket.create_server(("127.0.0.1", 0)) as port:
        addr = port.getsockname()
        real = socket.create_connection(addr, timeout=WAIT)
        real.sendall(seal_preamble(key, tag, 0, 2))
        until = time.monotonic() + WAIT
        out = Gathered()
        gather_channels(port, key=key, tag=tag, n=2, until=until, stop=lambda: 0 in out.channels, into=out)
        copy = socket.create_connection(addr, timeout=WAIT)  # the attacker replays what he saw
        last = socket.create_connection(addr, timeout=WAIT)
        copy.sendall(seal_preamble(key, tag, 0, 2))
        last.sendall(seal_preamble(key, tag, 1, 2))
        gather_channels(port, key=key, tag=tag, n=2, until=until, stop=lambda: False, into=out)
        try:
            assert sorted(out.channels) == [0, 1] and out.strays == 1
            copy.settimeout(WAIT)
            assert refused(copy)  # channel 0 is taken
            real.sendall(b"r")
            out.channels[0].setblocking(True)
            assert out.channels[0].recv(1) == b"r"  # channel 0 is the source's connection, not the copy
        finally:
            for s in (real, copy, last, *out.channels.values()):
                s.close()


def test_a_silent_stranger_does_not_hold_the_channels_back() -> None:
    """Preambles are read concurrently, each within its own deadline: strangers who connect first and say
    nothing, or trickle, delay no channel, and the real ones get in at once."""
    lst = ChannelListener("127.0.0.1", "mig-silent", 2, secret=SECRET, idle_s=5)
    silent = [socket.create_connection(("127.0.0.1", lst.port), timeout=WAIT) for _ in range(8)]
    silent[0].sendall(b"LD")  # a trickler: two bytes, then nothing
    got: list[socket.socket] = []
    failed: list[BaseException] = []

    def accept() -> None:
        try:
            got.extend(lst.accept_all(2.0))  # well under the strangers' 5 s preamble deadline, times 8
        except DataLinkError as e:
            failed.append(e)

    t = threading.Thread(target=accept)
    t.start()
    socks = open_channels("127.0.0.1", lst.port, "mig-silent", 2, secret=SECRET, connect_s=WAIT, idle_s=WAIT)
    t.join(WAIT)
    try:
        assert failed == [] and len(got) == 2
        for s in silent:  # and the strangers were let go when the channels were complete
            s.settimeout(WAIT)
            assert refused(s)
    finally:
        for s in (*socks, *got, *silent):
            s.close()


def test_the_secret_never_appears_in_an_error_message(tmp_path: Path) -> None:
    secret = new_secret()
    with pytest.raises(TransferError) as refused:
        DataPlaneImage(
            path=tmp_path / "ldg1.mem",
            size=16 * PAGE_SIZE,
            offer={"secret": secret.hex(), "channels": "two", "frame_bytes": 1 << 22},
            migration_id="m",
            bind_host="127.0.0.1",
            host="target",
            primary=PrimaryCaps(vcpus=8, maus=1),
            cores=2,
            idle_s=1,
            accept_s=1,
        )
    assert secret.hex() not in refused.value.message
