"""Key schedule of the data plane: one secret per migration, one AES-256-GCM key per channel, nonces that
never repeat.

Theory of operation.  The two daemons agree a 256-bit secret over the verified TLS control link (the source
draws it with `new_secret()` and sends it inside the authenticated, encrypted link).  Everything else is
derived from it with HKDF-SHA256, salted with a digest of the migration id, so that two migrations, or two
channels of one migration, never share a key even if a secret were reused by mistake:

    tag       = SHA-256("ldoms-dataplane-v1 id" || migration id)[:16]   carried in every frame header
    key_id    = HKDF(secret, salt=tag, info="ldoms-dataplane-v1 key-id")[:16]
                sent in each channel's hello so a receiver holding another secret says "wrong key" rather
                than "tampered" (it reveals nothing of the keys: HKDF outputs are independent)
    key[c]    = HKDF(secret, salt=tag, info="ldoms-dataplane-v1 source->target channel" || c)
    preamble  = HKDF(secret, salt=tag, info="ldoms-dataplane-v1 channel preamble")
                the HMAC key of each channel's preamble (`dataplane_link`): only the two daemons can
                claim a channel of the data port

The 96-bit GCM nonce of frame number `seq` on channel `c` is c (32 bits) || seq (64 bits).  `seq` starts at
0 with the channel's hello and grows by one per frame; a channel that would pass 2**64 - 1 refuses to send
(`NonceExhausted`) instead of wrapping.  The receiver does not take the nonce from the wire: it computes it
from the sequence number it expects next, so a replayed or reordered frame fails even if its header lied.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ldoms.migration.dataplane_errors import NonceExhausted

SECRET_BYTES = 32
TAG_BYTES = 16
KEY_ID_BYTES = 16
MAX_CHANNELS = 2**16  # the header's channel field is 16 bits
SEQ_MAX = 2**64 - 1
_LABEL = b"ldoms-dataplane-v1 "


def new_secret() -> bytes:
    """A fresh per-migration secret (the source draws it; the control link carries it to the target)."""
    return os.urandom(SECRET_BYTES)


def migration_tag(migration_id: str | bytes) -> bytes:
    """The 16-byte digest of a migration id that every frame header carries."""
    raw = migration_id.encode() if isinstance(migration_id, str) else bytes(migration_id)
    if not raw:
        raise ValueError("data plane: the migration id is empty")
    return hashlib.sha256(_LABEL + b"id" + raw).digest()[:TAG_BYTES]


def _hkdf(secret: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=_LABEL + info).derive(secret)


class KeySchedule:
    """The keys of one migration's data plane, derived from its secret and id."""

    def __init__(self, secret: bytes, migration_id: str | bytes) -> None:
        if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
            got = len(secret) if isinstance(secret, bytes | bytearray) else type(secret).__name__
            raise ValueError(f"data plane secret: must be {SECRET_BYTES} bytes, got {got}")
        self._secret = bytes(secret)
        self.tag = migration_tag(migration_id)
        self.key_id = _hkdf(self._secret, self.tag, b"key-id", KEY_ID_BYTES)

    def preamble_key(self) -> bytes:
        """The key that authenticates the channels' preambles (HMAC-SHA256)."""
        return _hkdf(self._secret, self.tag, b"channel preamble", 32)

    def channel_key(self, channel: int) -> bytes:
        if not 0 <= channel < MAX_CHANNELS:
            raise ValueError(f"data plane channel {channel}: must be in 0..{MAX_CHANNELS - 1}")
        return _hkdf(self._secret, self.tag, b"source->target channel" + struct.pack("!H", channel), 32)


def nonce(channel: int, seq: int) -> bytes:
    """The GCM nonce of frame `seq` on `channel`: 4 bytes of channel, 8 bytes of counter."""
    return struct.pack("!IQ", channel, seq)


class NonceCounter:
    """The sending side's frame counter of one channel.  `take()` hands out each sequence number once, in
    strictly increasing order, and refuses to wrap."""

    def __init__(self, channel: int, start: int = 0) -> None:
        if not 0 <= channel < MAX_CHANNELS or not 0 <= start <= SEQ_MAX + 1:
            raise ValueError(f"nonce counter: channel {channel} / start {start} out of range")
        self.channel = channel
        self._next = start

    @property
    def next_seq(self) -> int:
        return self._next

    def take(self) -> tuple[int, bytes]:
        """(sequence number, nonce) for the next frame."""
        seq = self._next
        if seq > SEQ_MAX:
            raise NonceExhausted(
                f"data channel {self.channel}: frame counter exhausted after {SEQ_MAX} frames; "
                "a nonce is never reused, so this migration's data plane stops"
            )
        self._next = seq + 1
        return seq, nonce(self.channel, seq)
