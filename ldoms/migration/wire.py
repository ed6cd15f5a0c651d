"""Framing of the daemon-to-daemon migration control link, and the payload encoding of its events.

Theory of operation.  The control link is a byte stream (TLS over TCP) cut into frames.  Every frame is a
fixed 12-byte header followed by a payload:

    offset  size  field     meaning
    0       4     magic     b"LDMg": refuses a peer that is not an ldmd (an HTTP client, a stray port)
    4       1     version   the protocol version the frame is encoded in
    5       1     type      a `MessageType`
    6       2     flags     `Flag` bits; a bit this version does not know is refused
    8       4     length    payload length in bytes, at most the decoder's `max_payload`

all in network byte order.  The framing layer (`encode_frame`, `FrameDecoder`) knows nothing about events:
it hands out `Frame`s; the payload layer below turns them into events.

The decoder is incremental: `feed()` accepts any split of the stream (down to one byte at a time) and
`next_frame()` returns each complete frame or None.  It checks the magic on the first bytes, and the whole
header as soon as its 12 bytes are present, so an announced length above the cap is refused before any of
the body is buffered; after `next_frame()` returns None, at most one incomplete frame (header + `max_payload`
bytes) is held.  A decoder that raised stays failed: the stream has lost its framing and cannot be resynced.

Versions.  `HELLO` and `ABORT` frames have a layout frozen for all versions, so they are decoded whatever
their header version: two ldmds of different releases can always exchange Hellos, find out they do not share
a version, and say so to each other in an Abort naming both.  Every other frame must carry the version the
link negotiated (`FrameDecoder.version`), or `UnsupportedVersion` names both.

Payloads.  `encode_event` / `decode_event` turn events into frames and back.  Structured events are UTF-8
JSON objects holding exactly the dataclass' fields (bytes as base64, findings as objects); MemPages is binary,
so pages are not inflated by a third.  A payload that does not decode to a valid event of the frame's type
raises `MalformedPayload`.

Errors.  The decoder only ever reads the peer's bytes, so all its errors are `RemoteProtocolError`s, each of
a specific class defined here; the encoder refuses locally (`LocalProtocolError`) what the peer's decoder
would refuse.  The base classes live in `ldoms.migration.events`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from ldoms.migration.events import (
    EVENT_CLASSES,
    Event,
    Finding,
    InvalidEvent,
    LocalProtocolError,
    MemPages,
    MessageType,
    RemoteProtocolError,
    thaw,
)

MAGIC = b"LDMg"
HEADER = struct.Struct("!4sBBHI")
HEADER_SIZE = HEADER.size  # 12
PROTOCOL_VERSION = 1  # the newest version this ldmd speaks
MIN_PROTOCOL_VERSION = 1  # the oldest version this ldmd still speaks
# A MemPages batch of 8 MiB is far beyond what the data plane sends on the control link; the cap bounds
# what a hostile or broken peer can make us buffer.
DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024
_LENGTH_FIELD_MAX = 2**32 - 1


# ------------------------------------------------------------------------------------------ framing errors
class BadMagic(RemoteProtocolError):
    code = "protocol-magic"


class UnknownMessageType(RemoteProtocolError):
    code = "protocol-type"


class UnsupportedVersion(RemoteProtocolError):
    """A frame in a protocol version other than the negotiated one."""

    code = "protocol-version"


class VersionMismatch(RemoteProtocolError):
    """The two ldmds share no protocol version (found when the Hellos are exchanged)."""

    code = "protocol-version-mismatch"


class FrameTooLarge(RemoteProtocolError):
    code = "protocol-frame-size"


class MalformedFrame(RemoteProtocolError):
    """Unknown flag bits, a zero version, or a link closed in the middle of a frame."""

    code = "protocol-frame"


class MalformedPayload(RemoteProtocolError):
    """The payload does not decode to a valid event of the frame's type."""

    code = "protocol-payload"


# ------------------------------------------------------------------------------------------------- frames
FROZEN_TYPES = frozenset({MessageType.HELLO, MessageType.ABORT})
_KNOWN_TYPES = frozenset(int(t) for t in MessageType)


class Flag(enum.IntFlag):
    NONE = 0
    # A receiver that does not know the frame's type may skip it instead of failing: lets a newer ldmd add
    # advisory messages (telemetry, hints) without a version bump.
    IGNORABLE = 0x1


_KNOWN_FLAGS = int(Flag.IGNORABLE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    type: MessageType
    payload: bytes = b""
    version: int = PROTOCOL_VERSION
    flags: Flag = Flag.NONE


def encode_frame(frame: Frame, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Header + payload.  Refuses (locally) what the peer's decoder would refuse."""
    n = len(frame.payload)
    if n > max_payload:
        raise LocalProtocolError(
            f"{frame.type.name} payload of {n} bytes exceeds the frame limit of {max_payload} bytes; "
            "split it into smaller messages",
            code="protocol-frame-size",
        )
    if not 1 <= frame.version <= 255:
        raise LocalProtocolError(f"protocol version {frame.version} does not fit a frame header (1..255)")
    if int(frame.flags) & ~_KNOWN_FLAGS:
        raise LocalProtocolError(f"unknown frame flags {int(frame.flags):#x}")
    return HEADER.pack(MAGIC, frame.version, int(frame.type), int(frame.flags), n) + frame.payload


# ------------------------------------------------------------------------------------------------ decoder
@dataclass(frozen=True, slots=True)
class _Header:
    version: int
    type: int
    flags: int
    length: int


class FrameDecoder:
    """Incremental frame decoder for the peer's byte stream (see the module docstring)."""

    def __init__(self, *, version: int = PROTOCOL_VERSION, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not 0 < max_payload <= _LENGTH_FIELD_MAX:
            raise ValueError(f"max_payload must be in 1..{_LENGTH_FIELD_MAX}, not {max_payload}")
        self.version = version  # set to the negotiated version once the Hellos are exchanged
        self.max_payload = max_payload
        self._buf = bytearray()
        self._header: _Header | None = None
        self._eof = False
        self._failure: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet part of a returned frame."""
        return len(self._buf)

    @property
    def at_eof(self) -> bool:
        """The link was closed and every complete frame has been returned."""
        return self._eof and not self._buf

    def feed(self, data: bytes) -> None:
        if self._eof and data:
            raise LocalProtocolError("received data after the end of the stream")
        if self._failure is None:  # a failed stream keeps nothing: its framing is lost
            self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed (or the stream ended cleanly)."""
        if self._failure is not None:
            raise self._failure
        try:
            return self._next_frame()
        except RemoteProtocolError as exc:
            self._failure = exc
            self._buf.clear()
            raise

    def _next_frame(self) -> Frame | None:
        while True:
            if self._header is None:
                # Refuse a foreign stream on its first bytes, not after 12 of them: an HTTP client's "GET "
                # fails at once.
                head = bytes(self._buf[: len(MAGIC)])
                if not MAGIC.startswith(head):
                    raise BadMagic(
                        f"bad frame magic {head!r}: the peer is not an ldmd speaking the migration protocol "
                        f"(expected {MAGIC!r})"
                    )
                if len(self._buf) < HEADER_SIZE:
                    return self._need_more()
                self._header = self._check_header(*HEADER.unpack_from(self._buf))
            hdr = self._header
            if len(self._buf) < HEADER_SIZE + hdr.length:
                return self._need_more()
            payload = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + hdr.length])
            del self._buf[: HEADER_SIZE + hdr.length]
            self._header = None
            if hdr.type not in _KNOWN_TYPES:
                continue  # an ignorable frame of a type we do not know (_check_header let only those by)
            return Frame(
                type=MessageType(hdr.type), payload=payload, version=hdr.version, flags=Flag(hdr.flags)
            )

    def _need_more(self) -> Frame | None:
        """None (wait for more bytes), unless the stream already ended: then the frame is cut short."""
        if self._eof and self._buf:
            raise MalformedFrame(
                f"the link was closed in the middle of a frame ({len(self._buf)} bytes of it received)"
            )
        return None

    def _check_header(self, _magic: bytes, version: int, mtype: int, flags: int, length: int) -> _Header:
        if length > self.max_payload:
            raise FrameTooLarge(
                f"frame announces a payload of {length} bytes, above the limit of {self.max_payload} bytes"
            )
        if version == 0:
            raise MalformedFrame("frame carries protocol version 0, which no ldmd speaks")
        if flags & ~_KNOWN_FLAGS:
            raise MalformedFrame(f"frame carries unknown flags {flags & ~_KNOWN_FLAGS:#x}")
        if mtype not in _KNOWN_TYPES:
            if flags & Flag.IGNORABLE:
                return _Header(version, mtype, flags, length)
            raise UnknownMessageType(
                f"unknown message type {mtype} in a protocol version {version} frame "
                f"(this ldmd speaks versions {MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION})"
            )
        if mtype not in FROZEN_TYPES and version != self.version:
            raise UnsupportedVersion(
                f"peer sent a {MessageType(mtype).name} frame in migration protocol version {version}; "
                f"this link speaks version {self.version}"
            )
        return _Header(version, mtype, flags, length)


# ------------------------------------------------------------------------------------------------ payloads
def encode_event(
    event: Event, *, version: int = PROTOCOL_VERSION, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> bytes:
    """The complete frame carrying `event`."""
    if isinstance(event, MemPages):
        payload = _encode_pages(event)
    else:
        doc = {
            f.name: _FIELD_CODECS.get(str(f.type), _SAME)[0](getattr(event, f.name)) for f in fields(event)
        }
        payload = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    return encode_frame(Frame(type=event.TYPE, payload=payload, version=version), max_payload=max_payload)


def decode_event(frame: Frame) -> Event:
    """The event a frame carries, or MalformedPayload naming the type and the problem."""
    cls = EVENT_CLASSES[frame.type]
    try:
        if cls is MemPages:
            return _decode_pages(frame.payload)
        doc = json.loads(frame.payload.decode("utf-8"), parse_constant=_reject_constant)
        if not isinstance(doc, dict):
            raise InvalidEvent("the payload must be a JSON object")
        known = {f.name: str(f.type) for f in fields(cls)}
        unknown = sorted(set(doc) - set(known))
        if unknown:
            raise InvalidEvent(f"unknown fields {unknown}")
        return cls(**{k: _FIELD_CODECS.get(known[k], _SAME)[1](v) for k, v in doc.items()})
    except (InvalidEvent, TypeError, ValueError, RecursionError) as exc:
        # TypeError: a missing field; ValueError: bad UTF-8 or JSON, or an integer of thousands of digits;
        # RecursionError: nesting too deep for the json module itself.
        raise MalformedPayload(f"malformed {frame.type.name} payload: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _b64decode(v: Any) -> bytes:
    if not isinstance(v, str):
        raise InvalidEvent(f"{v!r}: bytes travel as a base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidEvent(f"invalid base64: {exc}") from None


def _list_of(conv: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def decode(v: Any) -> Any:
        if not isinstance(v, list):
            raise InvalidEvent(f"{v!r}: expected a list")
        return tuple(conv(x) for x in v)

    return decode


def _finding(v: Any) -> Finding:
    if not isinstance(v, dict):
        raise InvalidEvent(f"{v!r}: expected a finding object (code, message, side, ...)")
    return Finding(**v)  # an unknown key is a TypeError, reported as malformed


def _same(v: Any) -> Any:
    return v


_SAME = (_same, _same)
# Field annotation, as written in events.py -> (to JSON, from JSON).  Other fields (strings, numbers,
# enums, None) pass through: the event's own rules check them.
_FIELD_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "bytes": (lambda v: base64.b64encode(v).decode("ascii"), _b64decode),
    "tuple[str, ...]": (list, _list_of(_same)),
    "tuple[Finding, ...]": (lambda v: [thaw(asdict(f)) for f in v], _list_of(_finding)),
    "Facts": (thaw, _same),
}

# MemPages: !IB round, kind.  Kind 0, inline runs: !I count, then per run !QI real address, length, bytes.
# Kind 1, descriptor: the rest of the payload.
_PAGES_HEAD = struct.Struct("!IB")
_COUNT = struct.Struct("!I")
_RUN = struct.Struct("!QI")


def _encode_pages(ev: MemPages) -> bytes:
    if ev.descriptor is not None:
        return _PAGES_HEAD.pack(ev.round, 1) + ev.descriptor
    parts = [_PAGES_HEAD.pack(ev.round, 0), _COUNT.pack(len(ev.pages))]
    for ra, data in ev.pages:
        parts += [_RUN.pack(ra, len(data)), data]
    return b"".join(parts)


def _decode_pages(payload: bytes) -> MemPages:
    if len(payload) < _PAGES_HEAD.size:
        raise InvalidEvent(f"{len(payload)} bytes is shorter than the {_PAGES_HEAD.size}-byte page header")
    rnd, kind = _PAGES_HEAD.unpack_from(payload)
    if kind == 1:
        return MemPages(round=rnd, descriptor=payload[_PAGES_HEAD.size :])
    if kind != 0:
        raise InvalidEvent(f"unknown page payload kind {kind}")
    off = _PAGES_HEAD.size
    if len(payload) < off + _COUNT.size:
        raise InvalidEvent("the run count is missing")
    (count,) = _COUNT.unpack_from(payload, off)
    off += _COUNT.size
    pages: list[tuple[int, bytes]] = []
    for i in range(count):
        if len(payload) < off + _RUN.size:
            raise InvalidEvent(f"run {i} of {count}: its header is cut short")
        ra, n = _RUN.unpack_from(payload, off)
        off += _RUN.size
        if len(payload) < off + n:
            raise InvalidEvent(f"run {i} of {count}: {n} bytes announced, {len(payload) - off} present")
        pages.append((ra, payload[off : off + n]))
        off += n
    if off != len(payload):
        raise InvalidEvent(f"{len(payload) - off} stray bytes after {count} runs")
    return MemPages(round=rnd, pages=tuple(pages))
