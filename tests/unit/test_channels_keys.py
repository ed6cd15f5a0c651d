"""Data-plane key schedule: per-channel keys, key ids, nonces that never repeat."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ldoms.migration.dataplane_errors import NonceExhausted
from ldoms.migration.dataplane_keys import (
    SEQ_MAX,
    KeySchedule,
    NonceCounter,
    migration_tag,
    new_secret,
    nonce,
)

SECRET = bytes(range(32))


def test_keys_differ_per_channel_and_per_migration_and_are_deterministic() -> None:
    a, b = KeySchedule(SECRET, "mig-1"), KeySchedule(SECRET, "mig-2")
    keys = {a.channel_key(c) for c in range(8)} | {b.channel_key(c) for c in range(8)}
    assert len(keys) == 16
    assert all(len(k) == 32 for k in keys)
    assert KeySchedule(SECRET, "mig-1").channel_key(3) == a.channel_key(3)
    assert a.key_id != b.key_id and a.tag != b.tag


def test_key_id_depends_on_the_secret_and_reveals_no_key() -> None:
    a, b = KeySchedule(SECRET, "m"), KeySchedule(new_secret(), "m")
    assert a.tag == b.tag  # same migration
    assert a.key_id != b.key_id
    assert a.key_id not in a.channel_key(0)


def test_migration_tag_accepts_str_and_bytes_and_refuses_empty() -> None:
    assert migration_tag("x") == migration_tag(b"x")
    with pytest.raises(ValueError, match="migration id is empty"):
        migration_tag("")


@pytest.mark.parametrize("secret", [b"", b"short", bytes(33), "a" * 32])
def test_secret_must_be_32_bytes(secret: object) -> None:
    with pytest.raises(ValueError, match="must be 32 bytes"):
        KeySchedule(secret, "m")  # type: ignore[arg-type]


@pytest.mark.parametrize("channel", [-1, 65536])
def test_channel_out_of_range_is_refused(channel: int) -> None:
    with pytest.raises(ValueError, match=f"channel {channel}"):
        KeySchedule(SECRET, "m").channel_key(channel)
    with pytest.raises(ValueError, match="out of range"):
        NonceCounter(channel)


def test_nonce_is_channel_then_counter() -> None:
    assert nonce(2, 5) == b"\x00\x00\x00\x02" + (5).to_bytes(8, "big")
    assert len(nonce(65535, SEQ_MAX)) == 12


@given(channel=st.integers(0, 65535), start=st.integers(0, SEQ_MAX - 300), n=st.integers(1, 300))
def test_counter_never_repeats_and_strictly_increases(channel: int, start: int, n: int) -> None:
    c = NonceCounter(channel, start)
    taken = [c.take() for _ in range(n)]
    seqs = [s for s, _ in taken]
    assert seqs == list(range(start, start + n))
    assert len({iv for _, iv in taken}) == n
    assert all(iv[:4] == channel.to_bytes(4, "big") for _, iv in taken)


@given(channels=st.lists(st.integers(0, 65535), min_size=2, max_size=4, unique=True), n=st.integers(1, 50))
def test_nonces_of_different_channels_never_collide(channels: list[int], n: int) -> None:
    seen = set()
    for ch in channels:
        c = NonceCounter(ch)
        for _ in range(n):
            seen.add(c.take()[1])
    assert len(seen) == n * len(channels)


def test_counter_overflow_aborts_instead_of_wrapping() -> None:
    c = NonceCounter(7, SEQ_MAX)
    assert c.take()[0] == SEQ_MAX
    with pytest.raises(NonceExhausted, match="data channel 7: frame counter exhausted"):
        c.take()
    with pytest.raises(NonceExhausted):  # and stays refused
        c.take()
