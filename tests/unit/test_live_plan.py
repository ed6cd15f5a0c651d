"""The pure pieces of live migration: which transfer a guest gets, how many channels, chunks and pacing, the
accounting transcript and descriptors, and the progress items."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ldoms.binding import factory_default
from ldoms.checks import source_facts
from ldoms.checks.facts import GuestProfile
from ldoms.migration.live_plan import (
    DEFAULT_CHUNK_BYTES,
    MAX_DATA_CHANNELS,
    MIN_CHUNK_BYTES,
    DescriptorError,
    PrimaryCaps,
    ProgressFacts,
    ProgressGate,
    Transcript,
    TransferKind,
    channel_count,
    chunk_bytes,
    chunk_descriptor,
    chunks_of_indices,
    chunks_of_ranges,
    pacing_delay,
    primary_caps,
    read_descriptor,
    side_channels,
    transfer_kind,
    transfer_percent,
)
from ldoms.model.platforms import load_platform
from ldoms.units import PAGE_SIZE, M


# ---------------------------------------------------------------------------------------- transfer kind
def facts_for(profile: GuestProfile, softstate: str = "Solaris running"):  # type: ignore[no-untyped-def]
    m = factory_default(load_platform("t5240"), "h1")
    ctl = m.control
    return replace(source_facts(m, ctl.name, guest=profile), domain=replace(ctl, softstate=softstate))


@pytest.mark.parametrize(
    ("profile", "softstate", "kind"),
    [
        (GuestProfile(live_migration=True, latest_migration=True), "Solaris running", TransferKind.LIVE),
        (
            GuestProfile(live_migration=True, latest_migration=False),
            "Solaris running",
            TransferKind.STOP_AND_COPY,
        ),
        (
            GuestProfile(live_migration=True, latest_migration=True),
            "OpenBoot Running",
            TransferKind.STOP_AND_COPY,
        ),
        (
            GuestProfile(live_migration=False, latest_migration=True),
            "Solaris running",
            TransferKind.STOP_AND_COPY,
        ),
    ],
)
def test_transfer_kind_follows_the_3x_cpu_rules(
    profile: GuestProfile, softstate: str, kind: TransferKind
) -> None:
    assert transfer_kind(facts_for(profile, softstate)) is kind


# --------------------------------------------------------------------------------------------- channels
def test_more_crypto_units_and_vcpus_mean_more_channels() -> None:
    assert side_channels(PrimaryCaps(vcpus=8, maus=0), cores=16) == 1
    assert side_channels(PrimaryCaps(vcpus=8, maus=2), cores=16) == 3
    assert side_channels(PrimaryCaps(vcpus=16, maus=0), cores=16) == 2
    assert side_channels(PrimaryCaps(vcpus=2, maus=4), cores=16) == 2  # never more than its vCPUs
    assert side_channels(PrimaryCaps(vcpus=64, maus=8), cores=4) == 2  # nor than one per two real cores
    assert side_channels(PrimaryCaps(vcpus=8, maus=1), cores=2) == 1  # a second one would share a core
    assert side_channels(PrimaryCaps(vcpus=8, maus=1), cores=3) == 1
    assert side_channels(PrimaryCaps(vcpus=128, maus=16), cores=64) == MAX_DATA_CHANNELS
    assert side_channels(PrimaryCaps(vcpus=0, maus=0), cores=0) == 1
    big, small = PrimaryCaps(vcpus=32, maus=4), PrimaryCaps(vcpus=8, maus=1)
    assert channel_count(big, small, src_cores=16, dst_cores=16) == 2  # the smaller side decides
    assert channel_count(small, big, src_cores=16, dst_cores=16) == 2


@given(st.integers(0, 256), st.integers(0, 32), st.integers(0, 256), st.integers(0, 32), st.integers(0, 64))
def test_channels_are_monotonic_and_bounded(v: int, m: int, dv: int, dm: int, cores: int) -> None:
    n = side_channels(PrimaryCaps(vcpus=v, maus=m), cores)
    assert 1 <= n <= MAX_DATA_CHANNELS
    assert side_channels(PrimaryCaps(vcpus=v, maus=m + dm), cores) >= n
    assert side_channels(PrimaryCaps(vcpus=v + dv, maus=m), cores) >= n


def test_primary_caps_of_a_factory_machine() -> None:
    m = factory_default(load_platform("t5240"), "h1")
    caps = primary_caps(m)
    assert caps.vcpus == len(m.control.bindings.strands) and caps.maus == len(m.control.bindings.maus)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ chunks, pacing
def test_chunk_size_follows_the_cap() -> None:
    assert chunk_bytes(0) == DEFAULT_CHUNK_BYTES
    assert chunk_bytes(64 * M) == int(64 * M * 0.1) // PAGE_SIZE * PAGE_SIZE
    assert chunk_bytes(M) == MIN_CHUNK_BYTES and chunk_bytes(100 * 1024 * M) == DEFAULT_CHUNK_BYTES


@given(st.lists(st.tuples(st.integers(0, 64), st.integers(1, 64)), max_size=20), st.integers(1, 40))
def test_chunks_of_ranges_cover_the_ranges_exactly(pieces: list[tuple[int, int]], chunk_pages: int) -> None:
    ranges, pos = [], 0
    for gap, n in pieces:
        pos += gap * PAGE_SIZE
        ranges.append((pos, n * PAGE_SIZE))
        pos += n * PAGE_SIZE
    chunks = list(chunks_of_ranges(ranges, chunk_pages * PAGE_SIZE))
    assert all(int(c[:, 1].sum()) <= chunk_pages * PAGE_SIZE for c in chunks)
    flat = [(int(o), int(n)) for c in chunks for o, n in c]
    covered = sorted(set().union(*[set(range(o, o + n, PAGE_SIZE)) for o, n in flat])) if flat else []
    want = sorted(set().union(*[set(range(o, o + n, PAGE_SIZE)) for o, n in ranges])) if ranges else []
    assert covered == want and sum(n for _, n in flat) == sum(n for _, n in ranges)


def test_chunks_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="whole pages"):
        list(chunks_of_ranges([(0, PAGE_SIZE)], 100))
    with pytest.raises(ValueError, match="must be positive"):
        list(chunks_of_indices(np.arange(3), 0))
    parts = list(chunks_of_indices(np.arange(10, dtype=np.int64), 4))
    assert [len(p) for p in parts] == [4, 4, 2] and np.array_equal(np.concatenate(parts), np.arange(10))


def test_pacing_keeps_the_average_under_the_cap() -> None:
    assert pacing_delay(100 * M, 0.5, 0) == 0.0  # no cap
    assert pacing_delay(100 * M, 0.5, 100 * M) == pytest.approx(0.5)
    assert pacing_delay(10 * M, 0.5, 100 * M) == 0.0  # already slower than the cap
    assert pacing_delay(0, 0.0, M) == 0.0


def test_transcripts_agree_only_on_the_same_accounting() -> None:
    a, b, c = Transcript(), Transcript(), Transcript()
    for t in (a, b):
        t.add(0, 3, 100)
        t.add(1, 1, 7)
    c.add(0, 3, 100)
    c.add(1, 1, 6)  # a page lost
    assert a.hexdigest() == b.hexdigest() != c.hexdigest()
    assert (a.chunks, a.pages) == (2, 107) and len(a.hexdigest()) == 64


def test_descriptors_round_trip_and_refuse_garbage() -> None:
    assert read_descriptor(chunk_descriptor(5, 2, 300)) == (5, 2, 300)
    for bad in (b"{", b"[]", b'{"chunk": 1}', b'{"chunk": -1, "frames": 0, "pages": 0}',
                b'{"chunk": true, "frames": 0, "pages": 0}'):  # fmt: skip
        with pytest.raises(DescriptorError):
            read_descriptor(bad)


# -------------------------------------------------------------------------------------------- progress
def test_progress_items_carry_the_contract() -> None:
    facts = ProgressFacts(percent=40, phase="precopy", round=2, bytes_sent=10, remaining_bytes=5,
                          rate_bytes_s=1.23456, expected_downtime_s=0.0123456, throttle=20)  # fmt: skip
    item = facts.to_json()
    assert item == {"type": "progress", "percent": 40, "phase": "precopy", "round": 2, "bytes_sent": 10,
                    "remaining_bytes": 5, "rate_bytes_s": 1.2, "expected_downtime_s": 0.0123,
                    "throttle": 20}  # fmt: skip
    assert ProgressFacts(percent=1, phase="checks").to_json()["expected_downtime_s"] is None
    assert [transfer_percent(p) for p in (0, 50, 100, 150)] == [5, 50, 95, 95]


def test_progress_gate_allows_ten_a_second_and_every_phase_change() -> None:
    g = ProgressGate(0.1)
    assert g.due(0.0, "precopy")
    assert not g.due(0.05, "precopy")
    assert g.due(0.06, "suspended")  # a phase change always goes out
    assert not g.due(0.1, "suspended") and g.due(0.1, "suspended", force=True)
    assert g.due(0.21, "suspended")
