"""Framing, payload encoding and event validation of the migration control link."""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol_pair import CHECKSUM, FAILURE, SAMPLES, page

from ldoms.migration.events import (
    Abort,
    Auth,
    AuthResult,
    CheckResult,
    Event,
    FinalState,
    Finding,
    Hello,
    InvalidEvent,
    LocalProtocolError,
    MemPages,
    MessageType,
    Ping,
    Progress,
    ProtocolError,
    RecoveryAnswer,
    Role,
)
from ldoms.migration.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    BadMagic,
    Flag,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    MalformedFrame,
    MalformedPayload,
    UnknownMessageType,
    UnsupportedVersion,
    decode_event,
    encode_event,
    encode_frame,
)
from ldoms.units import PAGE_SIZE

ALL_EVENTS = list(SAMPLES.values())


def decode_all(data: bytes, *, chunk: int | None = None, **kw: Any) -> list[Event]:
    dec = FrameDecoder(**kw)
    out: list[Event] = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        dec.feed(data[i : i + step])
        while (frame := dec.next_frame()) is not None:
            out.append(decode_event(frame))
    return out


def header(mtype: int = MessageType.PING, *, version: int = 1, flags: int = 0, length: int = 0) -> bytes:
    return HEADER.pack(MAGIC, version, mtype, flags, length)


# ---------------------------------------------------------------------------------------- framing
def test_header_layout() -> None:
    frame = encode_event(Ping(nonce=5))
    assert HEADER_SIZE == 12 and frame[:4] == b"LDMg"
    _magic, version, mtype, flags, length = HEADER.unpack_from(frame)
    assert (version, mtype, flags, length) == (1, MessageType.PING, 0, len(frame) - 12)
    assert json.loads(frame[12:]) == {"nonce": 5}


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_every_event_round_trips_in_any_split(chunk: int | None) -> None:
    stream = b"".join(encode_event(ev) for ev in ALL_EVENTS)
    assert decode_all(stream, chunk=chunk) == ALL_EVENTS


def test_pages_travel_as_binary() -> None:
    ev = MemPages(round=3, pages=(page(0), (PAGE_SIZE * 4, bytes(range(256)) * 64)))
    frame = encode_event(ev)
    assert len(frame) == HEADER_SIZE + 5 + 4 + (12 + PAGE_SIZE) + (12 + 2 * PAGE_SIZE)
    assert decode_all(frame) == [ev]
    desc = MemPages(round=1, descriptor=b"\x01\x02")
    assert decode_all(encode_event(desc)) == [desc]


def test_bad_magic_is_refused_on_the_first_byte() -> None:
    dec = FrameDecoder()
    dec.feed(b"G")
    with pytest.raises(BadMagic, match=r"bad frame magic b'G'.*not an ldmd.*expected b'LDMg'"):
        dec.next_frame()


def test_a_decoder_that_failed_stays_failed_and_keeps_nothing() -> None:
    dec = FrameDecoder()
    dec.feed(b"XXXX")
    with pytest.raises(BadMagic):
        dec.next_frame()
    dec.feed(encode_event(Ping(nonce=1)))
    assert dec.buffered == 0
    with pytest.raises(BadMagic):
        dec.next_frame()


def test_an_oversized_frame_is_refused_from_its_header() -> None:
    dec = FrameDecoder(max_payload=1024)
    dec.feed(header(length=1025))
    with pytest.raises(FrameTooLarge, match="payload of 1025 bytes, above the limit of 1024 bytes"):
        dec.next_frame()
    dec.feed(b"\x00" * 4096)  # the body that follows is not buffered
    assert dec.buffered == 0


def test_a_frame_at_the_cap_is_accepted() -> None:
    payload = b"\x00" * 5 + b"\x00" * 4  # MemPages header: round 0 would be invalid, so check framing only
    dec = FrameDecoder(max_payload=len(payload))
    dec.feed(header(MessageType.MEM_PAGES, length=len(payload)) + payload)
    assert dec.next_frame() == Frame(type=MessageType.MEM_PAGES, payload=payload)


def test_unknown_type_unless_ignorable() -> None:
    dec = FrameDecoder()
    dec.feed(header(200, flags=Flag.IGNORABLE, length=3) + b"abc" + encode_event(Ping(nonce=2)))
    assert decode_event(dec.next_frame()) == Ping(nonce=2)  # type: ignore[arg-type]
    dec = FrameDecoder()
    dec.feed(header(200))
    with pytest.raises(UnknownMessageType, match=r"unknown message type 200 .* speaks versions 1\.\.1"):
        dec.next_frame()


@pytest.mark.parametrize(
    ("raw", "error", "fragment"),
    [
        (header(flags=0x8), MalformedFrame, "unknown flags 0x8"),
        (header(version=0), MalformedFrame, "protocol version 0"),
        (
            header(version=2),
            UnsupportedVersion,
            "PING frame in migration protocol version 2; this link speaks 1",
        ),
    ],
)
def test_bad_headers(raw: bytes, error: type[ProtocolError], fragment: str) -> None:
    dec = FrameDecoder()
    dec.feed(raw)
    with pytest.raises(error, match=fragment.replace("this link speaks 1", "this link speaks version 1")):
        dec.next_frame()


def test_hello_and_abort_are_read_in_any_version() -> None:
    hello = SAMPLES[next(k for k in SAMPLES if k.name == "HELLO")]
    abort = Abort(reason="versions differ", who=Role.TARGET)
    stream = encode_event(hello, version=9) + encode_event(abort, version=200)
    assert decode_all(stream) == [hello, abort]


def test_end_of_stream() -> None:
    dec = FrameDecoder()
    dec.feed(encode_event(Ping(nonce=1)))
    dec.feed_eof()
    assert dec.next_frame() is not None and dec.next_frame() is None and dec.at_eof
    with pytest.raises(LocalProtocolError, match="after the end of the stream"):
        dec.feed(b"x")
    dec = FrameDecoder()
    dec.feed(encode_event(Ping(nonce=1))[:-1])
    dec.feed_eof()
    with pytest.raises(MalformedFrame, match=r"closed in the middle of a frame \(22 bytes"):
        dec.next_frame()


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(LocalProtocolError, match=r"MEM_PAGES payload of .* exceeds the frame limit of 100"):
        encode_event(MemPages(round=1, pages=(page(0),)), max_payload=100)
    with pytest.raises(LocalProtocolError, match=r"version 256 does not fit"):
        encode_frame(Frame(type=MessageType.PING, version=256))
    with pytest.raises(LocalProtocolError, match="unknown frame flags 0x4"):
        encode_frame(Frame(type=MessageType.PING, flags=Flag(4)))
    with pytest.raises(ValueError, match="max_payload"):
        FrameDecoder(max_payload=0)


# ---------------------------------------------------------------------------------------- payloads
def frame_of(mtype: MessageType, payload: bytes) -> Frame:
    return Frame(type=mtype, payload=payload)


PINGS = MessageType.PING
BAD_PAYLOADS = [
    (PINGS, b"\xff\xfe", "malformed PING payload"),
    (PINGS, b"{nonce: 1}", "malformed PING payload"),
    (PINGS, b"[1]", "must be a JSON object"),
    (PINGS, b'{"nonce": 1, "colour": 2}', r"unknown fields \['colour'\]"),
    (PINGS, b"{}", "missing 1 required keyword-only argument: 'nonce'"),
    (PINGS, b'{"nonce": "1"}', "Ping.nonce='1': must be an integer"),
    (PINGS, b'{"nonce": true}', "Ping.nonce=True: must be an integer"),
    (PINGS, b'{"nonce": 1' + b"0" * 5000 + b"}", "malformed PING payload"),
    (MessageType.PROGRESS, b'{"percent": NaN}', "NaN is not a JSON number"),
    (
        MessageType.PREPARE,
        b'{"target_domain": "x", "data_plane": ' + b"[" * 100000 + b"]" * 100000 + b"}",
        "PREPARE",
    ),
    (
        MessageType.PREPARE,
        b'{"target_domain": "x", "data_plane": ' + b'{"a":' * 20 + b"1" + b"}" * 21,
        "deeper than 16",
    ),
    (
        MessageType.FINAL_STATE,
        b'{"cpu_state": "!!", "checksum": "' + CHECKSUM.encode() + b'"}',
        "invalid base64",
    ),
    (MessageType.FINAL_STATE, b'{"cpu_state": 5, "checksum": "' + CHECKSUM.encode() + b'"}', "base64 string"),
    (
        MessageType.CHECK_RESULT,
        b'{"failures": [{"code": "x", "message": "m", "shoe": 1}]}',
        "unexpected keyword",
    ),
    (MessageType.CHECK_RESULT, b'{"failures": ["x"]}', "expected a finding object"),
    (MessageType.CHECK_RESULT, b'{"failures": {"a": 1}}', "expected a list"),
    (MessageType.MEM_PAGES, b"\x00\x00", "shorter than the 5-byte page header"),
    (MessageType.MEM_PAGES, struct.pack("!IB", 1, 7), "unknown page payload kind 7"),
    (MessageType.MEM_PAGES, struct.pack("!IB", 1, 0), "run count is missing"),
    (MessageType.MEM_PAGES, struct.pack("!IBI", 1, 0, 1) + b"\x00", "run 0 of 1: its header is cut short"),
    (
        MessageType.MEM_PAGES,
        struct.pack("!IBIQI", 1, 0, 1, 0, 8192) + b"\x00",
        "8192 bytes announced, 1 present",
    ),
    (MessageType.MEM_PAGES, struct.pack("!IBI", 1, 0, 0) + b"\x00", "1 stray bytes after 0 runs"),
    (MessageType.MEM_PAGES, struct.pack("!IBIQI", 1, 0, 1, 4096, 8192) + b"\x00" * 8192, "page-aligned"),
    (MessageType.MEM_PAGES, struct.pack("!IB", 0, 1) + b"d", "MemPages.round=0"),
    (MessageType.MEM_PAGES, struct.pack("!IB", 1, 1), "the descriptor is empty"),
]


@pytest.mark.parametrize(
    ("mtype", "payload", "fragment"), BAD_PAYLOADS, ids=[b[2][:30] for b in BAD_PAYLOADS]
)
def test_malformed_payloads(mtype: MessageType, payload: bytes, fragment: str) -> None:
    with pytest.raises(MalformedPayload, match=fragment):
        decode_event(frame_of(mtype, payload))


# ---------------------------------------------------------------------------------------- events
def mk_hello(**kw: Any) -> Hello:
    fields: dict[str, Any] = {
        "role": "source",
        "version": 1,
        "min_version": 1,
        "migration_id": "m",
        "host_name": "h",
    }
    return Hello(**(fields | kw))


BAD_EVENTS = [
    (lambda: mk_hello(role="src"), "must be one of"),
    (lambda: mk_hello(min_version=2), "min_version 2"),
    (lambda: mk_hello(version=0), r"in 1\.\.255"),
    (lambda: mk_hello(host_name="a b"), "without spaces"),
    (lambda: mk_hello(migration_id=""), "must not be empty"),
    (lambda: mk_hello(capabilities=("",)), "tuple of non-empty strings"),
    (lambda: mk_hello(platform=[]), "mapping of names to JSON values"),
    (lambda: mk_hello(platform={1: 2}), "key 1 must be a string"),
    (lambda: mk_hello(platform={"x": float("inf")}), "finite number"),
    (lambda: mk_hello(platform={"x": b"raw"}), "not a JSON value"),
    (lambda: Auth(user="root"), "a password comes with method password"),
    (lambda: Auth(user="root", method="certificate", password="pw"), "and only with it"),
    (lambda: Auth(user="root", method="kerberos"), "must be one of password, certificate"),
    (lambda: AuthResult(ok=False), "a refusal needs a reason"),
    (lambda: AuthResult(ok=1), "must be true or false"),
    (lambda: CheckResult(failures=[FAILURE]), "must be a tuple of Finding"),
    (lambda: Finding(code="x", message="m", side="both"), "must be one of source, target"),
    (lambda: Finding(code="x" * 65, message="m"), "at most 64 characters"),
    (lambda: Finding(code="x", message=3), "must be a string"),
    (lambda: MemPages(round=1), "not both, not neither"),
    (lambda: MemPages(round=1, pages=(page(0),), descriptor=b"d"), "not both, not neither"),
    (lambda: MemPages(round=1, pages=((0, "text"),)), r"pages\[0\]=\(0, 'text'\): must be \(real address"),
    (lambda: MemPages(round=1, pages=((0, b"short"),)), "whole 8192-byte pages"),
    (lambda: MemPages(round=1, pages=((2**64 - PAGE_SIZE, b"\x00" * 2 * PAGE_SIZE),)), "below 2\\*\\*64"),
    (lambda: FinalState(cpu_state=b"", checksum="ABC"), "64 lowercase hex digits"),
    (lambda: FinalState(cpu_state=b"", checksum=CHECKSUM, algorithm="md5"), "sha256 or blake2b"),
    (lambda: FinalState(cpu_state="s", checksum=CHECKSUM), "must be bytes"),
    (lambda: Progress(percent=101), r"in 0\.\.100"),
    (lambda: Ping(nonce=-1), "must be an integer"),
    (lambda: RecoveryAnswer(migration_id="m", decision="maybe"), "must be one of keep-source"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "fragment"), BAD_EVENTS, ids=[b[1][:30] for b in BAD_EVENTS])
def test_events_validate_on_construction(build: Any, fragment: str) -> None:
    with pytest.raises(InvalidEvent, match=fragment):
        build()


def test_events_are_frozen_deeply_and_hide_passwords() -> None:
    hello = SAMPLES[next(k for k in SAMPLES if k.name == "HELLO")]
    assert isinstance(hello, Hello)
    with pytest.raises(FrozenInstanceError):
        hello.version = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        hello.platform["cpu_mhz"] = 1  # type: ignore[index]
    assert hello.platform["page_sizes"] == (8192, 65536)
    assert "secret" not in repr(Auth(user="root", password="secret"))
    assert not hasattr(hello, "__dict__")  # slotted


def test_finding_of_a_check_failure_like_object() -> None:
    @dataclass
    class Failure:  # the shape of ldoms.checks.failure.CheckFailure
        code: str
        message: str
        side: str
        observed: str = ""
        severity: str = "error"

    f = Finding.of(Failure(code="cpu-type", message="CPU type mismatch", side="target", observed="T2"))
    assert f == Finding(code="cpu-type", message="CPU type mismatch", side=Role.TARGET, observed="T2")


# ------------------------------------------------------------------------------------------ fuzzing
SMALL_CAP = 256


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from([b"", MAGIC[:2], MAGIC, MAGIC + b"\x01", MAGIC + b"\x01\x13\x00\x00\x00\x00"]),
    data=st.binary(max_size=2048),
    chunks=st.lists(st.integers(1, 64), max_size=40),
)
def test_random_bytes_raise_only_protocol_errors_and_stay_under_the_cap(
    prefix: bytes, data: bytes, chunks: list[int]
) -> None:
    """Prefixes of a valid header get the random bytes past the magic, into the header and payload checks."""
    _feed_and_check(prefix + data, chunks)


@settings(max_examples=400, deadline=None)
@given(
    events=st.lists(st.sampled_from(ALL_EVENTS), min_size=1, max_size=4),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
    chunks=st.lists(st.integers(1, 64), max_size=40),
)
def test_corrupted_streams_raise_only_protocol_errors(
    events: list[Event], flips: list[tuple[int, int]], chunks: list[int]
) -> None:
    """Valid frames with bytes flipped reach deep into the payload decoders."""
    stream = bytearray(b"".join(encode_event(e) for e in events))
    for pos, mask in flips:
        stream[pos % len(stream)] ^= mask
    _feed_and_check(bytes(stream), chunks, cap=DEFAULT_MAX_PAYLOAD)


def _feed_and_check(data: bytes, chunks: list[int], cap: int = SMALL_CAP) -> None:
    dec = FrameDecoder(max_payload=cap)
    pos, i = 0, 0
    try:
        while pos < len(data):
            n = chunks[i % len(chunks)] if chunks else len(data)
            dec.feed(data[pos : pos + n])
            pos, i = pos + n, i + 1
            for _ in range(len(data) + 1):  # bounded: each frame consumes at least a header
                frame = dec.next_frame()
                if frame is None:
                    break
                decode_event(frame)
            else:
                raise AssertionError("the decoder produced more frames than bytes")
            assert dec.buffered <= HEADER_SIZE + cap
        dec.feed_eof()
        assert dec.next_frame() is None
    except ProtocolError:
        assert dec.buffered <= HEADER_SIZE + cap


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, 10**6), max_size=30))
def test_any_split_of_a_valid_stream_gives_the_same_events(cuts: list[int]) -> None:
    stream = b"".join(encode_event(e) for e in ALL_EVENTS)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec, got = FrameDecoder(), []
    for a, b in itertools.pairwise(points):
        dec.feed(stream[a:b])
        while (frame := dec.next_frame()) is not None:
            got.append(decode_event(frame))
    assert got == ALL_EVENTS and dec.buffered == 0


def test_event_payload_json_is_canonical() -> None:
    ev = CheckResult(failures=(FAILURE,))
    payload = encode_event(ev)[HEADER_SIZE:]
    assert payload == json.dumps(json.loads(payload), separators=(",", ":"), sort_keys=True).encode()
    final = FinalState(cpu_state=b"\x00\xff", checksum=CHECKSUM)
    assert decode_event(frame_of(MessageType.FINAL_STATE, encode_event(final)[HEADER_SIZE:])) == final
