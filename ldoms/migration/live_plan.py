"""Pure decisions of a live migration: which transfer a guest gets, how many data channels, how a round is cut
into data-plane chunks, the transfer's accounting digest, and the progress items the API streams.

Theory of operation.
- `transfer_kind(facts)`: the guest is copied live (pre-copy while it runs) when the 3.x rules would not put
  it under the 1.2 CPU rules (an OS running with the latest migration functionality: Solaris 10 1/13+,
  Solaris 11.1+).  Every other active guest goes the LDoms 1.2 way (SPEC 2.2, 3.1 CPU): shrunk to one strand,
  suspended for the whole copy, whole cores and CPU DR off on the target.  Both move their bytes over the
  encrypted data plane.
- `channel_count`: SPEC 2.2 says migrations are faster with more crypto units (1.2) and more vCPUs (1.3) in
  `primary` on both sides.  Each side offers `side_channels(primary)` = one channel per crypto unit plus one
  per 8 vCPUs (at least one), never more than its vCPUs, one per two real cores, or `MAX_DATA_CHANNELS`;
  the migration uses the smaller offer.  Two cores per channel: one for its lane's crypto, one for the
  kernel's share of its network work.  A lane's AES-GCM holds the GIL, so channels only run in parallel as
  worker processes with those cores to run on (`channels.choose_workers`); with fewer, a second channel
  shares the first one's core and slows the copy down (bench/bench_dataplane.py: 0.65-0.75x on 2 cores).
- A round's pages are sent as data-plane *chunks* (each one data-plane round with its own end-of-round
  marker, announced to the target by a MemPages descriptor on the control link), so that a bandwidth cap can
  pace the copy, progress moves smoothly and every chunk is accounted for separately.
- `Transcript`: SHA-256 over (chunk, frames, pages) of every chunk in order.  Both sides build it; the
  source sends its digest in FinalState.  The AEAD already authenticates every byte that landed, so equal
  transcripts plus every chunk's own accounting mean the image is complete: no whole-image hash in the pause.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ldoms.checks.facts import MigrationMode as RulesMode
from ldoms.checks.facts import SourceFacts
from ldoms.errors import OpExecError
from ldoms.model.machine import Machine
from ldoms.units import PAGE_SIZE, M

MAX_DATA_CHANNELS = 8
VCPUS_PER_CHANNEL = 8
DEFAULT_CHUNK_BYTES = 128 * M  # candidate memory per data-plane round without a bandwidth cap
MIN_CHUNK_BYTES = 1 * M
PACING_SLICE_S = 0.1  # with a cap, a chunk is what the cap allows in this much time
PROGRESS_INTERVAL_S = 0.1  # at most ten progress items a second on the API stream
_TRANSCRIPT = struct.Struct(">QQQ")


class TransferKind(enum.StrEnum):
    LIVE = "live"  # pre-copy rounds while the guest runs, then a short pause
    STOP_AND_COPY = "stop-and-copy"  # LDoms 1.2: suspended for the whole copy


def transfer_kind(facts: SourceFacts) -> TransferKind:
    """Live for a guest the 3.x rules judge without the 1.2 CPU rules; the 1.2 way for every other."""
    judged = replace(facts, mode=RulesMode.V3)
    if facts.guest.live_migration and not judged.legacy_cpu_rules:
        return TransferKind.LIVE
    return TransferKind.STOP_AND_COPY


# ------------------------------------------------------------------------------------------------ channels
@dataclass(frozen=True, slots=True)
class PrimaryCaps:
    """What the control domain brings to the data plane: its virtual CPUs and crypto units."""

    vcpus: int
    maus: int


def primary_caps(machine: Machine) -> PrimaryCaps:
    ctl = machine.control
    b = ctl.bindings
    if b is None:  # the control domain is always bound; a host without bindings still gets one channel
        return PrimaryCaps(vcpus=1, maus=0)
    return PrimaryCaps(vcpus=len(b.strands), maus=len(b.maus))


def side_channels(caps: PrimaryCaps, cores: int, limit: int = MAX_DATA_CHANNELS) -> int:
    """The channels one side can drive (see the module docstring)."""
    wanted = caps.maus + max(1, caps.vcpus // VCPUS_PER_CHANNEL)
    return max(1, min(wanted, max(caps.vcpus, 1), max(cores // 2, 1), limit))


def channel_count(src: PrimaryCaps, dst: PrimaryCaps, *, src_cores: int, dst_cores: int) -> int:
    return min(side_channels(src, src_cores), side_channels(dst, dst_cores))


# -------------------------------------------------------------------------------------------------- chunks
def chunk_bytes(bandwidth_cap: int) -> int:
    """Candidate memory per data-plane round: big without a cap, a pacing slice's worth with one."""
    if not bandwidth_cap:
        return DEFAULT_CHUNK_BYTES
    size = int(bandwidth_cap * PACING_SLICE_S) // PAGE_SIZE * PAGE_SIZE
    return max(MIN_CHUNK_BYTES, min(DEFAULT_CHUNK_BYTES, size))


def chunks_of_ranges(ranges: Sequence[tuple[int, int]], size: int) -> Iterator[np.ndarray]:
    """(file offset, length) ranges cut into chunks of at most `size` bytes, each an (n, 2) int64 array of
    ranges (the form `DataPlaneSender.send_round` takes)."""
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"chunk size {size}: must be a positive number of whole pages")
    cur: list[tuple[int, int]] = []
    room = size
    for off, length in ranges:
        while length > 0:
            n = min(length, room)
            cur.append((off, n))
            off, length, room = off + n, length - n, room - n
            if room == 0:
                yield np.array(cur, dtype=np.int64)
                cur, room = [], size
    if cur:
        yield np.array(cur, dtype=np.int64)


def chunks_of_indices(indices: np.ndarray, pages: int) -> Iterator[np.ndarray]:
    """Sorted page indices cut into chunks of at most `pages` pages (1-D int64 arrays)."""
    if pages <= 0:
        raise ValueError(f"chunk of {pages} pages: must be positive")
    for i in range(0, len(indices), pages):
        yield indices[i : i + pages]


def pacing_delay(sent_bytes: int, elapsed_s: float, cap: int) -> float:
    """How long to wait so that `sent_bytes` in `elapsed_s` stays within `cap` bytes per second."""
    if not cap or sent_bytes <= 0:
        return 0.0
    return max(0.0, sent_bytes / cap - elapsed_s)


# ------------------------------------------------------------------------------------------- accounting
class Transcript:
    """The digest of a data plane's accounting, chunk by chunk (see the module docstring)."""

    algorithm = "sha256"

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"ldoms-transfer-transcript-v1")
        self.chunks = 0
        self.pages = 0

    def add(self, chunk: int, frames: int, pages: int) -> None:
        self._h.update(_TRANSCRIPT.pack(chunk, frames, pages))
        self.chunks += 1
        self.pages += pages

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class DescriptorError(OpExecError):
    code = "transfer"


def chunk_descriptor(chunk: int, frames: int, pages: int) -> bytes:
    """What a MemPages descriptor says about one data-plane chunk."""
    return json.dumps({"chunk": chunk, "frames": frames, "pages": pages}, sort_keys=True).encode()


def read_descriptor(data: bytes) -> tuple[int, int, int]:
    """(chunk, frames, pages) of a MemPages descriptor, or DescriptorError naming what is wrong."""
    try:
        doc: Any = json.loads(data)
        values = tuple(doc[k] for k in ("chunk", "frames", "pages"))
    except (ValueError, TypeError, KeyError):
        raise DescriptorError(f"the source sent an unreadable data-plane descriptor {data[:80]!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in values):
        raise DescriptorError(f"the source sent a data-plane descriptor with bad counts {values!r}")
    return values  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- progress
PHASES = ("checks", "prepare", "precopy", "suspended", "final", "handoff")


@dataclass(frozen=True, slots=True)
class ProgressFacts:
    """One progress item of the API stream (the CLI's progress bar renders it)."""

    percent: int
    phase: str
    round: int = 0
    bytes_sent: int = 0
    remaining_bytes: int = 0
    rate_bytes_s: float = 0.0
    expected_downtime_s: float | None = None
    throttle: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "progress",
            "percent": self.percent,
            "phase": self.phase,
            "round": self.round,
            "bytes_sent": self.bytes_sent,
            "remaining_bytes": self.remaining_bytes,
            "rate_bytes_s": round(float(self.rate_bytes_s), 1),
            "expected_downtime_s": (
                None if self.expected_downtime_s is None else round(float(self.expected_downtime_s), 4)
            ),
            "throttle": self.throttle,
        }


def transfer_percent(precopy_percent: int) -> int:
    """The transfer's own 0..100 mapped into the whole migration's scale (checks and prepare take the first
    5 %, the hand-off the last 5 %)."""
    return 5 + (90 * max(0, min(100, precopy_percent))) // 100


class ProgressGate:
    """At most one item per `interval` seconds, except when the phase changes or the item is forced.
    Pure: the caller passes the clock."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_S) -> None:
        self.interval = interval
        self._last: float | None = None
        self._phase: str | None = None

    def due(self, now: float, phase: str, *, force: bool = False) -> bool:
        if force or phase != self._phase or self._last is None or now - self._last >= self.interval:
            self._last, self._phase = now, phase
            return True
        return False


# ------------------------------------------------------------------------------------------------ clocks
def clock_offset_s(sent: float, received: float, peer_wall_us: int | None) -> float | None:
    """The peer's wall clock minus ours, from a Ping sent at `sent` and its Pong, stamped `peer_wall_us`
    by the peer, received at `received` (our wall clock): the peer read its clock about half way, so the
    estimate is off by at most half the round trip.  None when the Pong carried no time."""
    if peer_wall_us is None or received < sent:
        return None
    return peer_wall_us / 1_000_000 - (sent + received) / 2


def on_peer_clock(state: bytes, offset_s: float | None) -> bytes:
    """A guest's suspend state with its `suspended_at` (our wall clock) moved to the target's clock, so
    the downtime the target's guest measures against its own clock does not include the hosts' clock skew.
    A state that is not a JSON object with a numeric `suspended_at` is passed on as it is."""
    if offset_s is None:
        return state
    try:
        doc = json.loads(state)
    except ValueError:
        return state
    at = doc.get("suspended_at") if isinstance(doc, dict) else None
    if isinstance(at, bool) or not isinstance(at, int | float):
        return state
    doc["suspended_at"] = at + offset_s
    return json.dumps(doc).encode()
