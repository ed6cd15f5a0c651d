"""Frames of the data plane: layout, sealing (sender) and checking/opening (receiver).  No sockets here.

Theory of operation.  Each channel is one TCP stream of frames.  A frame is a fixed 52-byte header, then
`meta_len` bytes of clear metadata, then `payload_len` bytes of AES-256-GCM ciphertext (the last 16 its tag):

    offset size field
    0      4    magic       b"LDMp"
    4      1    version     1
    5      1    kind        HELLO, PAGES, END_ROUND, GOODBYE
    6      1    flags       COMPRESSED (the plaintext is an LZ4 block)
    7      1    reserved    0
    8      16   tag         digest of the migration id (`dataplane_keys.migration_tag`)
    24     2    channel     this channel's index
    26     2    reserved    0
    28     4    round       pre-copy round (0 for hello and goodbye)
    32     8    seq         frame number on this channel: 0 for the hello, then +1 per frame
    40     4    meta_len
    44     4    payload_len ciphertext + tag
    48     4    plain_len   bytes of page data the payload stands for (after decompression)

all big-endian.  The header *and* the metadata are GCM's associated data, so not one bit of either can be
changed unnoticed; the nonce is (channel, seq) as the receiver expects it (see `dataplane_keys`).

Metadata by kind:
  HELLO      key id (16), channel count (2), reserved (2), page size (4), memory bytes (8), largest frame
             (4); empty plaintext
  PAGES      runs of 16 bytes: first page (8), page count (4), is-zero (4).  Data runs' pages are the
             plaintext, in order; zero runs carry no data: the receiver zeroes those pages
  END_ROUND  PAGES frames (8), data pages (8), zero pages (8) this channel sent in the round; empty plaintext
  GOODBYE    nothing; the sender closes cleanly after it

The receiver checks, in order: magic/version/kind/lengths (`MalformedFrame`), migration tag
(`WrongMigration`), channel (`MisroutedFrame`), sequence (`ReplayedFrame` / `ReorderedFrame`), the hello's
key id (`WrongKey`), then the GCM tag (`TamperedFrame`), and only then the meaning of authenticated fields.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ldoms.migration.dataplane_errors import (
    GeometryMismatch,
    MalformedFrame,
    MisroutedFrame,
    ReorderedFrame,
    ReplayedFrame,
    TamperedFrame,
    WrongKey,
    WrongMigration,
)
from ldoms.migration.dataplane_keys import KeySchedule, NonceCounter, nonce
from ldoms.units import PAGE_SIZE

MAGIC = b"LDMp"
VERSION = 1
FLAG_COMPRESSED = 0x01
GCM_TAG = 16
HEADER = struct.Struct("!4sBBBB16sHHIQIII")
HEADER_SIZE = HEADER.size  # 52
HELLO_META = struct.Struct("!16sHHIQI")
END_META = struct.Struct("!QQQ")
RUN_DTYPE = np.dtype([("first", ">u8"), ("count", ">u4"), ("zero", ">u4")])
RUN_SIZE = RUN_DTYPE.itemsize  # 16
# Caps a hostile or broken peer cannot make the receiver exceed (checked before anything is buffered).
MAX_RUNS = 65536
MAX_META = MAX_RUNS * RUN_SIZE


class Kind(enum.IntEnum):
    HELLO = 1
    PAGES = 2
    END_ROUND = 3
    GOODBYE = 4


@dataclass(frozen=True, slots=True)
class Header:
    kind: Kind
    flags: int
    channel: int
    round: int
    seq: int
    meta_len: int
    payload_len: int
    plain_len: int
    raw: bytes


def max_payload(frame_bytes: int) -> int:
    """The largest ciphertext a frame of `frame_bytes` of pages may carry (an LZ4 block of incompressible
    data grows by at most n/255 + 16 bytes, but the sender never sends a block larger than the data)."""
    return frame_bytes + GCM_TAG


def runs_to_meta(runs: np.ndarray) -> bytes:
    """Serialise an (n, 3) int array of (first page, count, is-zero) rows."""
    out = np.empty(len(runs), dtype=RUN_DTYPE)
    out["first"], out["count"], out["zero"] = runs[:, 0], runs[:, 1], runs[:, 2]
    return out.tobytes()


def meta_to_runs(meta: bytes | memoryview) -> np.ndarray:
    rec = np.frombuffer(meta, dtype=RUN_DTYPE)
    return np.stack(
        [rec["first"].astype(np.int64), rec["count"].astype(np.int64), rec["zero"].astype(np.int64)], axis=1
    ).reshape(-1, 3)


class FrameSealer:
    """The sending end of one channel: numbers and seals frames.  Output is (head, ciphertext) where head is
    header + metadata (sent in clear, authenticated) and ciphertext a view into `out` (reused per frame)."""

    def __init__(self, keys: KeySchedule, channel: int, *, start_seq: int = 0) -> None:
        self.channel = channel
        self._tag = keys.tag
        self._key_id = keys.key_id
        self._aead = AESGCM(keys.channel_key(channel))
        self.counter = NonceCounter(channel, start_seq)

    def _seal(
        self,
        kind: Kind,
        round_no: int,
        meta: bytes,
        plain: memoryview | bytes,
        out: bytearray | memoryview,
        *,
        flags: int = 0,
        plain_len: int | None = None,
    ) -> tuple[bytes, memoryview]:
        seq, iv = self.counter.take()
        n = len(plain)
        head = (
            HEADER.pack(
                MAGIC,
                VERSION,
                kind,
                flags,
                0,
                self._tag,
                self.channel,
                0,
                round_no,
                seq,
                len(meta),
                n + GCM_TAG,
                n if plain_len is None else plain_len,
            )
            + meta
        )
        buf = memoryview(out)[: n + GCM_TAG]
        self._aead.encrypt_into(iv, plain, head, buf)
        return head, buf

    def hello(self, nchannels: int, memory_bytes: int, frame_bytes: int) -> tuple[bytes, memoryview]:
        meta = HELLO_META.pack(self._key_id, nchannels, 0, PAGE_SIZE, memory_bytes, frame_bytes)
        return self._seal(Kind.HELLO, 0, meta, b"", bytearray(GCM_TAG))

    def pages(
        self,
        round_no: int,
        runs: np.ndarray,
        plain: memoryview | bytes,
        out: bytearray | memoryview,
        *,
        compressed: bool,
        plain_len: int,
    ) -> tuple[bytes, memoryview]:
        return self._seal(
            Kind.PAGES,
            round_no,
            runs_to_meta(runs),
            plain,
            out,
            flags=FLAG_COMPRESSED if compressed else 0,
            plain_len=plain_len,
        )

    def end_round(
        self, round_no: int, frames: int, data_pages: int, zero_pages: int
    ) -> tuple[bytes, memoryview]:
        return self._seal(
            Kind.END_ROUND, round_no, END_META.pack(frames, data_pages, zero_pages), b"", bytearray(GCM_TAG)
        )

    def goodbye(self) -> tuple[bytes, memoryview]:
        return self._seal(Kind.GOODBYE, 0, b"", b"", bytearray(GCM_TAG))


class FrameOpener:
    """The receiving end of one channel: checks each header against what it expects, then authenticates
    (and decrypts) the frame.  `expected_seq` only advances past frames that authenticated."""

    def __init__(
        self, keys: KeySchedule, channel: int, *, nchannels: int, memory_bytes: int, frame_bytes: int
    ) -> None:
        self.channel = channel
        self.nchannels = nchannels
        self.memory_bytes = memory_bytes
        self.npages = memory_bytes // PAGE_SIZE
        self._tag = keys.tag
        self._key_id = keys.key_id
        self._aead = AESGCM(keys.channel_key(channel))
        self.expected_seq = 0
        self.frame_bytes = frame_bytes
        self.max_payload = max_payload(frame_bytes)

    def where(self, seq: int | None = None) -> str:
        return f"data channel {self.channel}, frame {self.expected_seq if seq is None else seq}"

    def check_header(self, raw: bytes) -> Header:
        magic, version, kind, flags, r1, tag, channel, r2, round_no, seq, meta_len, payload_len, plain_len = (
            HEADER.unpack(raw)
        )
        w = self.where()
        if magic != MAGIC:
            raise MalformedFrame(f"{w}: bad magic {magic!r} (want {MAGIC!r}): not a data-plane stream")
        if version != VERSION:
            raise MalformedFrame(f"{w}: frame version {version}, this receiver speaks version {VERSION}")
        if kind not in Kind.__members__.values() or r1 or r2 or flags & ~FLAG_COMPRESSED:
            raise MalformedFrame(f"{w}: unknown kind {kind}, flags {flags:#x} or reserved bits set")
        if tag != self._tag:
            raise WrongMigration(
                f"{w}: the frame belongs to another migration (tag {tag.hex()}, want {self._tag.hex()})"
            )
        if channel != self.channel:
            raise MisroutedFrame(f"{w}: frame for channel {channel} arrived on channel {self.channel}")
        if seq < self.expected_seq:
            raise ReplayedFrame(
                f"{w}: sequence {seq} was already received (next expected {self.expected_seq})"
            )
        if seq > self.expected_seq:
            raise ReorderedFrame(
                f"{w}: sequence {seq} arrived while {self.expected_seq} was expected: frames "
                "were dropped or reordered"
            )
        if (seq == 0) != (kind == Kind.HELLO):
            raise MalformedFrame(f"{w}: a channel starts with exactly one hello, got kind {Kind(kind).name}")
        if meta_len > MAX_META or payload_len > self.max_payload or payload_len < GCM_TAG:
            raise MalformedFrame(
                f"{w}: metadata {meta_len} / payload {payload_len} bytes out of bounds "
                f"(metadata at most {MAX_META}, payload {GCM_TAG}..{self.max_payload})"
            )
        if kind != Kind.PAGES and (payload_len != GCM_TAG or flags):
            raise MalformedFrame(f"{w}: a {Kind(kind).name} frame carries no data, got {payload_len} bytes")
        if kind == Kind.PAGES and (meta_len % RUN_SIZE or plain_len % PAGE_SIZE):
            raise MalformedFrame(
                f"{w}: page table of {meta_len} bytes or {plain_len} data bytes "
                f"is not whole {RUN_SIZE}-byte runs / {PAGE_SIZE}-byte pages"
            )
        return Header(Kind(kind), flags, channel, round_no, seq, meta_len, payload_len, plain_len, raw)

    def _aad(self, h: Header, meta: bytes | memoryview) -> bytes:
        return h.raw + bytes(meta)

    def authenticate(self, h: Header, meta: bytes | memoryview, payload: memoryview) -> None:
        """Verify a frame without data (hello, end of round, goodbye) and check what a hello declares."""
        if h.kind == Kind.HELLO:
            if h.meta_len != HELLO_META.size:
                raise MalformedFrame(f"{self.where()}: hello metadata of {h.meta_len} bytes")
            key_id, nch, _r, page, mem, frame = HELLO_META.unpack(meta)
            if key_id != self._key_id:
                raise WrongKey(
                    f"{self.where()}: the sender's key id {key_id.hex()} is not ours "
                    f"({self._key_id.hex()}): the two sides hold different migration secrets"
                )
        elif h.kind == Kind.END_ROUND and h.meta_len != END_META.size:
            raise MalformedFrame(f"{self.where()}: end-of-round metadata of {h.meta_len} bytes")
        elif h.kind == Kind.GOODBYE and h.meta_len:
            raise MalformedFrame(f"{self.where()}: goodbye with {h.meta_len} bytes of metadata")
        self.decrypt_into(h, meta, payload, bytearray(0))
        if h.kind == Kind.HELLO and (
            (nch, page, mem) != (self.nchannels, PAGE_SIZE, self.memory_bytes) or frame > self.frame_bytes
        ):
            raise GeometryMismatch(
                f"data channel {self.channel}: the sender has {nch} channels, {page}-byte pages, "
                f"{mem} bytes of memory and frames up to {frame} bytes; this receiver has {self.nchannels}, "
                f"{PAGE_SIZE}, {self.memory_bytes} and frames up to {self.frame_bytes}"
            )

    def decrypt_into(
        self, h: Header, meta: bytes | memoryview, payload: memoryview, out: bytearray | memoryview
    ) -> None:
        """Authenticate and decrypt into `out` (exactly payload_len - 16 bytes).  On a bad tag `out` may hold
        unauthenticated bytes: the caller scrubs it.  Advances the expected sequence only on success."""
        try:
            self._aead.decrypt_into(nonce(self.channel, h.seq), payload, self._aad(h, meta), out)
        except InvalidTag:
            raise TamperedFrame(
                f"{self.where()}: authentication failed (round {h.round}, {h.payload_len} bytes): "
                "the header, page table or pages were altered, or the frame was sealed under another key"
            ) from None
        self.expected_seq += 1

    def page_table(
        self, h: Header, meta: bytes | memoryview, payload: memoryview, scratch: bytearray | memoryview
    ) -> tuple[np.ndarray, int, int]:
        """The runs of a pages frame, checked: (runs, data pages, zero pages).  A table that breaks a rule is
        first authenticated (into `scratch`): if it does not authenticate it was tampered with, and that is
        the error raised."""
        runs = meta_to_runs(meta)
        try:
            data_pages, zero_pages = self.check_runs(h, runs)
        except MalformedFrame:
            self.decrypt_into(h, meta, payload, memoryview(scratch)[: h.payload_len - GCM_TAG])
            raise
        return runs, data_pages, zero_pages

    def check_runs(self, h: Header, runs: np.ndarray) -> tuple[int, int]:
        """Validate an authenticated page table: (data pages, zero pages).  A violation here comes from a
        sender that sealed nonsense, not from the wire."""
        if len(runs) == 0:
            raise MalformedFrame(f"{self.where(h.seq)}: a pages frame with an empty page table")
        first, count, zero = runs[:, 0], runs[:, 1], runs[:, 2]
        if (
            (count <= 0).any()
            or (first < 0).any()
            or ((first + count) > self.npages).any()
            or (zero > 1).any()
        ):
            raise MalformedFrame(
                f"{self.where(h.seq)}: a page run lies outside the {self.npages}-page memory, "
                "is empty or has an unknown kind"
            )
        data_pages = int(count[zero == 0].sum())
        if data_pages * PAGE_SIZE != h.plain_len:
            raise MalformedFrame(
                f"{self.where(h.seq)}: page table lists {data_pages} data pages, "
                f"the payload stands for {h.plain_len} bytes"
            )
        return data_pages, int(count[zero == 1].sum())
