"""Data-plane frames without sockets: sealing, and every way the receiver refuses a frame."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ldoms.migration import dataplane_errors as errs
from ldoms.migration.dataframe import (
    END_META,
    HEADER,
    HEADER_SIZE,
    MAX_META,
    FrameOpener,
    FrameSealer,
    Header,
    Kind,
    meta_to_runs,
    runs_to_meta,
)
from ldoms.migration.dataplane_keys import KeySchedule
from ldoms.units import PAGE_SIZE

SECRET = bytes(range(32))
MEM = 64 * PAGE_SIZE
FRAME = 16 * PAGE_SIZE


def keys(secret: bytes = SECRET, mid: str = "mig") -> KeySchedule:
    return KeySchedule(secret, mid)


def opener(channel: int = 0, **kw: object) -> FrameOpener:
    ks = kw.pop("keys", None) or keys()
    args = {"nchannels": 2, "memory_bytes": MEM, "frame_bytes": FRAME} | kw
    return FrameOpener(ks, channel, **args)  # type: ignore[arg-type]


def wire(sealed: tuple[bytes, memoryview]) -> bytes:
    return sealed[0] + bytes(sealed[1])


def split(op: FrameOpener, frame: bytes) -> tuple[Header, bytes, memoryview]:
    h = op.check_header(frame[:HEADER_SIZE])
    meta = frame[HEADER_SIZE : HEADER_SIZE + h.meta_len]
    return h, meta, memoryview(bytearray(frame[HEADER_SIZE + h.meta_len :]))


def pages_frame(s: FrameSealer, data: bytes, first: int = 3, round_no: int = 1) -> bytes:
    runs = np.array([[first, len(data) // PAGE_SIZE, 0]])
    return wire(
        s.pages(round_no, runs, data, bytearray(len(data) + 16), compressed=False, plain_len=len(data))
    )


def hello_frame(s: FrameSealer, nch: int = 2, mem: int = MEM, frame: int = FRAME) -> bytes:
    return wire(s.hello(nch, mem, frame))


def accept(op: FrameOpener, frame: bytes) -> bytes:
    """Check and open a frame; returns the plaintext of a pages frame."""
    h, meta, payload = split(op, frame)
    if h.kind != Kind.PAGES:
        op.authenticate(h, meta, payload)
        return b""
    out = bytearray(h.payload_len - 16)
    op.page_table(h, meta, payload, out)
    op.decrypt_into(h, meta, payload, out)
    return bytes(out)


DATA = bytes(range(256)) * (2 * PAGE_SIZE // 256)


def test_a_channel_round_trips_hello_pages_end_and_goodbye() -> None:
    s, op = FrameSealer(keys(), 0), opener()
    assert accept(op, hello_frame(s)) == b""
    assert accept(op, pages_frame(s, DATA)) == DATA
    assert accept(op, wire(s.end_round(1, 1, 2, 0))) == b""
    assert accept(op, wire(s.goodbye())) == b""
    assert op.expected_seq == 4


def test_header_layout_is_52_bytes_and_runs_serialise() -> None:
    assert HEADER_SIZE == 52
    runs = np.array([[1, 2, 0], [2**40, 7, 1]])
    assert (meta_to_runs(runs_to_meta(runs)) == runs).all()


@pytest.mark.parametrize("offset", [6, 8, 20, 24 + 2, 28, 40 + 3, 44, 48, HEADER_SIZE, HEADER_SIZE + 20, -1])
def test_any_flipped_bit_is_refused(offset: int) -> None:
    s, op = FrameSealer(keys(), 0), opener()
    accept(op, hello_frame(s))
    frame = bytearray(pages_frame(s, DATA))
    frame[offset] ^= 0x01
    with pytest.raises(errs.FrameRejected) as ei:
        accept(op, bytes(frame))
    # a flip in a field checked before the tag is named by that check; anything else is tampering
    named = {
        8: errs.WrongMigration,
        20: errs.WrongMigration,
        26: errs.MalformedFrame,
        43: errs.MalformedFrame,
        44: errs.MalformedFrame,
    }
    assert type(ei.value) is named.get(offset, errs.TamperedFrame)
    assert op.expected_seq == 1  # nothing past the hello was accepted


def test_tampered_payload_names_channel_frame_and_round() -> None:
    s, op = FrameSealer(keys(), 1), opener(1)
    accept(op, hello_frame(s))
    frame = bytearray(pages_frame(s, DATA, round_no=4))
    frame[HEADER_SIZE + 16 + 100] ^= 0xFF
    with pytest.raises(errs.TamperedFrame, match=r"data channel 1, frame 1: authentication failed \(round 4"):
        accept(op, bytes(frame))


def test_truncated_payload_fails_authentication() -> None:
    s, op = FrameSealer(keys(), 0), opener()
    accept(op, hello_frame(s))
    frame = pages_frame(s, DATA)
    h, meta, payload = split(op, frame)
    with pytest.raises(errs.TamperedFrame):
        op.decrypt_into(h, meta, payload[:-1], bytearray(h.payload_len - 17))


def test_replayed_frame_is_refused() -> None:
    s, op = FrameSealer(keys(), 0), opener()
    accept(op, hello_frame(s))
    f1 = pages_frame(s, DATA)
    accept(op, f1)
    with pytest.raises(errs.ReplayedFrame, match="sequence 1 was already received"):
        accept(op, f1)


def test_reordered_frame_is_refused() -> None:
    s, op = FrameSealer(keys(), 0), opener()
    accept(op, hello_frame(s))
    pages_frame(s, DATA)
    f2 = pages_frame(s, DATA)
    with pytest.raises(errs.ReorderedFrame, match="sequence 2 arrived while 1 was expected"):
        accept(op, f2)


def test_a_frame_replayed_with_a_rewritten_sequence_fails_authentication() -> None:
    s, op = FrameSealer(keys(), 0), opener()
    accept(op, hello_frame(s))
    f1 = pages_frame(s, DATA)
    accept(op, f1)
    forged = bytearray(f1)
    forged[32:40] = struct.pack("!Q", 2)
    with pytest.raises(errs.TamperedFrame):
        accept(op, bytes(forged))


def test_wrong_key_is_named_at_the_hello() -> None:
    s = FrameSealer(KeySchedule(bytes(32), "mig"), 0)
    with pytest.raises(errs.WrongKey, match="different migration secrets"):
        accept(opener(), hello_frame(s))


def test_wrong_key_after_a_good_hello_is_tampering() -> None:
    good, bad, op = FrameSealer(keys(), 0), FrameSealer(KeySchedule(bytes(32), "mig"), 0), opener()
    accept(op, hello_frame(good))
    hello_frame(bad)
    with pytest.raises(errs.TamperedFrame):
        accept(op, pages_frame(bad, DATA))


def test_wrong_migration_and_misrouted_channel() -> None:
    with pytest.raises(errs.WrongMigration, match="another migration"):
        accept(opener(), hello_frame(FrameSealer(keys(mid="other"), 0)))
    with pytest.raises(errs.MisroutedFrame, match="frame for channel 1 arrived on channel 0"):
        accept(opener(0), hello_frame(FrameSealer(keys(), 1)))


def test_geometry_mismatch() -> None:
    with pytest.raises(errs.GeometryMismatch, match="the sender has 3 channels"):
        accept(opener(), hello_frame(FrameSealer(keys(), 0), nch=3))
    with pytest.raises(errs.GeometryMismatch, match=f"{MEM * 2} bytes of memory"):
        accept(opener(), hello_frame(FrameSealer(keys(), 0), mem=MEM * 2))
    with pytest.raises(errs.GeometryMismatch, match=f"frames up to {2 * FRAME} bytes"):
        accept(opener(), hello_frame(FrameSealer(keys(), 0), frame=2 * FRAME))
    accept(opener(), hello_frame(FrameSealer(keys(), 0), frame=FRAME // 2))  # smaller frames are fine


def test_the_first_frame_must_be_a_hello_and_only_the_first() -> None:
    with pytest.raises(errs.MalformedFrame, match="starts with exactly one hello"):
        accept(opener(), wire(FrameSealer(keys(), 0).end_round(1, 0, 0, 0)))  # seq 0, not a hello
    op = opener()
    accept(op, hello_frame(FrameSealer(keys(), 0)))
    again = FrameSealer(keys(), 0, start_seq=1)
    with pytest.raises(errs.MalformedFrame, match="exactly one hello"):
        accept(op, hello_frame(again))


def _raw_header(**over: int | bytes) -> bytes:
    f = {
        "magic": b"LDMp",
        "version": 1,
        "kind": 2,
        "flags": 0,
        "r1": 0,
        "tag": keys().tag,
        "channel": 0,
        "r2": 0,
        "round": 1,
        "seq": 0,
        "meta_len": 16,
        "payload_len": 16 + PAGE_SIZE,
        "plain_len": PAGE_SIZE,
    }
    f.update(over)
    return HEADER.pack(*f.values())


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"magic": b"HTTP"}, "bad magic"),
        ({"version": 2}, "frame version 2"),
        ({"kind": 9}, "unknown kind 9"),
        ({"flags": 0x80}, "flags 0x80"),
        ({"r1": 1}, "reserved"),
        ({"meta_len": MAX_META + 16}, "out of bounds"),
        ({"payload_len": FRAME + 17}, "out of bounds"),
        ({"payload_len": 15}, "out of bounds"),
        ({"meta_len": 15}, "whole 16-byte runs"),
        ({"plain_len": 100}, "whole 16-byte runs"),
    ],
)
def test_malformed_headers_are_refused_before_reading_the_body(over: dict[str, int], match: str) -> None:
    op = opener()
    op.expected_seq = 1
    with pytest.raises(errs.MalformedFrame, match=match):
        op.check_header(_raw_header(**({"seq": 1} | over)))


def test_control_frames_carry_no_data() -> None:
    op = opener()
    with pytest.raises(errs.MalformedFrame, match="HELLO frame carries no data"):
        op.check_header(_raw_header(kind=1, seq=0, payload_len=32))


@pytest.mark.parametrize(
    ("runs", "plain", "match"),
    [
        ([], 0, "empty page table"),
        ([[60, 8, 0]], 8 * PAGE_SIZE, "outside the 64-page memory"),
        ([[0, 0, 0]], 0, "outside"),
        ([[0, 1, 2]], PAGE_SIZE, "outside"),
        ([[0, 2, 0]], PAGE_SIZE, "lists 2 data pages"),
    ],
)
def test_authenticated_nonsense_page_tables_are_refused(
    runs: list[list[int]], plain: int, match: str
) -> None:
    op = opener()
    arr = np.array(runs, dtype=np.int64).reshape(-1, 3)
    h = Header(Kind.PAGES, 0, 0, 1, 1, len(runs) * 16, plain + 16, plain, b"")
    with pytest.raises(errs.MalformedFrame, match=match):
        op.check_runs(h, arr)


def test_end_round_and_goodbye_metadata_sizes_are_checked() -> None:
    s, op = FrameSealer(keys(), 0), opener()
    accept(op, hello_frame(s))
    head, body = s.end_round(1, 0, 0, 0)
    h = op.check_header(head[:HEADER_SIZE])
    with pytest.raises(errs.MalformedFrame, match="end-of-round metadata of 23 bytes"):
        op.authenticate(Header(h.kind, 0, 0, 1, 1, END_META.size - 1, 16, 0, h.raw), b"", body)
    with pytest.raises(errs.MalformedFrame, match="goodbye with 4 bytes"):
        op.authenticate(Header(Kind.GOODBYE, 0, 0, 0, 1, 4, 16, 0, h.raw), b"", body)
    with pytest.raises(errs.MalformedFrame, match="hello metadata of 4 bytes"):
        op.authenticate(Header(Kind.HELLO, 0, 0, 0, 1, 4, 16, 0, h.raw), b"", body)
