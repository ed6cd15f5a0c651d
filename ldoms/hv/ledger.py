"""The ledger workload and its independent verifier.

Theory of operation.  Every byte the ledger writes is a function of (seed, step, page), so a checker that
knows only the seed, the step count and the memory size can say what every page must hold — the image an
unmigrated guest would have after that many steps — and name each page that differs.

Layout (file pages, the dirty map's numbering).  Page 0 is the *header*: magic, seed, step count, page count,
pages per step, and a keyed digest of them.  Pages 1..D (D = npages - 1) hold data.  Writes are numbered:
step s (1-based) makes writes (s-1)*K .. s*K-1 (K = PAGES_PER_STEP), and write i goes to data page
1 + (i * A mod D), where A is coprime to D (so the writes sweep every data page, scattered rather than in
order).  The last step to write page p is therefore computable directly: with q = (p-1) * A⁻¹ mod D and
T = s*K writes made, the last write to p is the largest L < T with L ≡ q (mod D), and its step is L // K + 1
(no step wrote p if q >= T).  Replaying a ledger is one vectorised formula, not a loop over steps.

Page contents.  A data page written at step s is 128 copies of the 64-byte keyed BLAKE2b digest of (s, p),
XORed with a per-seed 8 KiB pad (BLAKE2b counter blocks), with (s, p) in clear in its first 16 bytes: every
64-byte run of the page depends on s, so a torn page (part old, part new) or a stale one (an update lost)
differs from the expected page, and the clear stamp lets the verifier say which step's data it found.
A step writes its K data pages, marks them, then writes and marks the header: the header never claims a
step whose data is not yet in memory.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ldoms.hv.dirtymap import DirtyMap
from ldoms.hv.memory import GuestMemory
from ldoms.units import PAGE_SIZE

PAGES_PER_STEP = 4  # data pages per step; with the header, 40 KiB written per step
HEADER_PAGE = 0
MAGIC = b"LDOMS-LEDGER-v1\0"
_HEADER = struct.Struct("<16sQQQQQ")  # magic, seed, steps, npages, pages per step, multiplier
_DIGEST = 64
_RUNS = PAGE_SIZE // _DIGEST
_CHUNK = 1024  # pages compared at once by `verify` (8 MiB of expected image)
MAX_PROBLEMS = 20
MAX_SEED = 2**64 - 1


def _key(seed: int) -> bytes:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"ledger seed {seed} is out of range 0..{MAX_SEED}")
    return seed.to_bytes(8, "little")


@dataclass(frozen=True, slots=True)
class LedgerLayout:
    """Where the writes of each step go in a memory of `npages` pages (pure)."""

    npages: int
    multiplier: int
    inverse: int

    @classmethod
    def of(cls, npages: int) -> LedgerLayout:
        if npages < 2:
            raise ValueError(f"the ledger needs at least 2 pages (a header and a data page), not {npages}")
        d = npages - 1
        a = int(d * 0.6180339887) | 1  # the golden ratio scatters consecutive writes far apart
        while math.gcd(a, d) != 1:
            a += 2 if d % 2 == 0 else 1
        a %= d
        if d == 1:
            a = 1
        return cls(npages=npages, multiplier=a, inverse=pow(a, -1, d) if d > 1 else 0)

    @property
    def data_pages(self) -> int:
        return self.npages - 1

    def pages_of_step(self, step: int) -> np.ndarray:
        """The data pages step `step` (1-based) writes, in write order."""
        writes = (step - 1) * PAGES_PER_STEP + np.arange(PAGES_PER_STEP, dtype=np.int64)
        return 1 + (writes * self.multiplier) % self.data_pages

    def last_writer(self, steps: int) -> np.ndarray:
        """For each page, the last step (of `steps`) that wrote it; 0 = never written.  Page 0 (the header)
        gets `steps`: every step writes it."""
        d = self.data_pages
        q = (np.arange(d, dtype=np.int64) * self.inverse) % d
        total = steps * PAGES_PER_STEP
        last = q + d * ((total - 1 - q) // d)
        out = np.empty(self.npages, dtype=np.int64)
        out[0] = steps
        out[1:] = np.where(q < total, last // PAGES_PER_STEP + 1, 0)
        return out


class Ledger:
    """The page contents of one seed (pure)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._key = _key(seed)
        pad = b"".join(
            hashlib.blake2b(struct.pack("<Q", i), key=self._key, person=b"ldoms-ledg-pad").digest()
            for i in range(_RUNS)
        )
        self._pad = np.frombuffer(pad, dtype=np.uint8).reshape(1, _RUNS, _DIGEST)

    def data_pages(self, steps: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """(n, PAGE_SIZE) uint8: the contents page pages[i] gets when step steps[i] writes it."""
        steps = np.asarray(steps, dtype=np.int64)
        pages = np.asarray(pages, dtype=np.int64)
        n = len(pages)
        digests = b"".join(
            hashlib.blake2b(struct.pack("<QQ", s, p), key=self._key, person=b"ldoms-ledg-data").digest()
            for s, p in zip(steps.tolist(), pages.tolist(), strict=True)
        )
        d = np.frombuffer(digests, dtype=np.uint8).reshape(n, 1, _DIGEST)
        out = (d ^ self._pad).reshape(n, PAGE_SIZE)
        stamp = out[:, :16].view("<u8")  # little-endian on every host: the image may move between hosts
        stamp[:, 0] = steps
        stamp[:, 1] = pages
        return out

    def header(self, steps: int, layout: LedgerLayout) -> np.ndarray:
        """The header page after `steps` steps: zero before the first step."""
        page = np.zeros(PAGE_SIZE, dtype=np.uint8)
        if steps == 0:
            return page
        fields = _HEADER.pack(MAGIC, self.seed, steps, layout.npages, PAGES_PER_STEP, layout.multiplier)
        mac = hashlib.blake2b(fields, key=self._key, person=b"ldoms-ledg-head").digest()
        raw = fields + mac
        page[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        return page


@dataclass(frozen=True, slots=True)
class LedgerHeader:
    seed: int
    steps: int
    npages: int
    pages_per_step: int


def read_header(page: bytes | np.ndarray) -> LedgerHeader | None:
    """What a header page claims, or None if it is not a ledger header."""
    raw = bytes(page[: _HEADER.size])
    if len(raw) < _HEADER.size:
        return None
    magic, seed, steps, npages, per_step, _mult = _HEADER.unpack(raw)
    if magic != MAGIC:
        return None
    return LedgerHeader(seed=seed, steps=steps, npages=npages, pages_per_step=per_step)


def expected_image(seed: int, steps: int, npages: int) -> np.ndarray:
    """The (npages, PAGE_SIZE) image an unmigrated ledger guest holds after `steps` steps (small memories:
    `verify` compares in chunks instead)."""
    layout = LedgerLayout.of(npages)
    ledger = Ledger(seed)
    writers = layout.last_writer(steps)
    image = np.zeros((npages, PAGE_SIZE), dtype=np.uint8)
    image[0] = ledger.header(steps, layout)
    written = np.flatnonzero(writers[1:]) + 1
    image[written] = ledger.data_pages(writers[written], written)
    return image


def verify(memory: GuestMemory, seed: int, steps: int) -> list[str]:
    """Compare the memory with `expected_image(seed, steps, npages)`; one line per page that differs (at
    most MAX_PROBLEMS, then a count of the rest).  An empty list proves the image consistent."""
    npages = memory.npages
    layout = LedgerLayout.of(npages)
    ledger = Ledger(seed)
    writers = layout.last_writer(steps)
    actual = memory.pages()
    problems: list[str] = []
    bad = 0

    def note(text: str) -> None:
        nonlocal bad
        bad += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append(text)

    want_header = ledger.header(steps, layout)
    if not np.array_equal(actual[0], want_header):
        note(_header_problem(memory, actual[0], want_header, seed=seed, steps=steps, npages=npages))
    for start in range(1, npages, _CHUNK):
        stop = min(start + _CHUNK, npages)
        w = writers[start:stop]
        got = actual[start:stop]
        expect = np.zeros((stop - start, PAGE_SIZE), dtype=np.uint8)
        rows = np.flatnonzero(w)
        if len(rows):
            expect[rows] = ledger.data_pages(w[rows], rows + start)
        differ = np.flatnonzero(np.any(got.view(np.uint64) != expect.view(np.uint64), axis=1))
        for r in differ.tolist():
            note(_page_problem(memory, ledger, start + r, got[r], expect[r], int(w[r]), steps))
    del actual
    if bad > len(problems):
        problems.append(f"... and {bad - len(problems)} more pages differ")
    return problems


def _where(memory: GuestMemory, page: int) -> str:
    return f"page {page} (RA {memory.map.ra_of(page * PAGE_SIZE):#x})"


def _first_diff(got: np.ndarray, want: np.ndarray) -> int:
    return int(np.flatnonzero(got != want)[0])


def _header_problem(
    memory: GuestMemory, got: np.ndarray, want: np.ndarray, *, seed: int, steps: int, npages: int
) -> str:
    where = f"header {_where(memory, HEADER_PAGE)}"
    if steps == 0:
        return f"{where}: expected zero (no step has run), holds data"
    head = read_header(got)
    if head is None:
        if not got.any():
            return f"{where}: zero, expected the header of step {steps}"
        return f"{where}: not a ledger header (expected the header of step {steps})"
    if head.seed != seed:
        return f"{where}: records seed {head.seed}, expected seed {seed}"
    if head.steps != steps:
        return f"{where}: records step {head.steps}, expected step {steps}"
    if head.npages != npages:
        return f"{where}: records {head.npages} pages, the memory has {npages}"
    return f"{where}: corrupted (first difference at byte {_first_diff(got, want)})"


def _page_problem(
    memory: GuestMemory, ledger: Ledger, page: int, got: np.ndarray, want: np.ndarray, step: int, steps: int
) -> str:
    where = _where(memory, page)
    if step == 0:
        return f"{where}: expected zero (no step up to {steps} wrote it), holds data"
    if not got.any():
        return f"{where}: zero, expected the data of step {step}"
    stamp_step, stamp_page = (int(x) for x in got[:16].view("<u8"))
    if stamp_page == page and stamp_step == step:
        return f"{where}: byte {_first_diff(got, want)} differs from step {step}'s data (torn or corrupted)"
    if stamp_page == page and 0 < stamp_step < 2**62:
        other = ledger.data_pages(np.array([stamp_step]), np.array([page]))[0]
        if np.array_equal(got, other):
            why = "an update was lost" if stamp_step < step else "a step beyond the count"
            return f"{where}: holds the data of step {stamp_step}, expected step {step} ({why})"
    first = _first_diff(got, want)
    return f"{where}: holds no ledger data of step {step} (first difference at byte {first})"


class LedgerWorkload:
    """`ldoms-workload=ledger`: K scattered data pages and the header per step, paced to `rate` bytes/s."""

    name = "ledger"

    def __init__(self, memory: GuestMemory, dirty: DirtyMap, *, seed: int, rate: int) -> None:
        self.layout = LedgerLayout.of(memory.npages)
        self.ledger = Ledger(seed)
        self.seed = seed
        self.dirty = dirty
        self.steps = 0
        self.dirtied_bytes = 0
        self.bytes_per_step = (PAGES_PER_STEP + 1) * PAGE_SIZE
        self.period: float | None = self.bytes_per_step / rate if rate > 0 else None
        self._pages: np.ndarray | None = memory.pages()

    def step(self) -> float | None:
        assert self._pages is not None, "the ledger workload was closed"
        s = self.steps + 1
        idx = self.layout.pages_of_step(s)
        self._pages[idx] = self.ledger.data_pages(np.full(len(idx), s), idx)
        self.dirty.mark(idx)  # after the write: a copy that misses it finds the page marked again
        self._pages[HEADER_PAGE] = self.ledger.header(s, self.layout)
        self.dirty.mark(HEADER_PAGE)
        self.steps = s
        self.dirtied_bytes += self.bytes_per_step
        return self.period

    def status(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "steps": self.steps,
            "pages_per_step": PAGES_PER_STEP,
            "step_rate": None if self.period is None else 1.0 / self.period,
        }

    def state(self) -> dict[str, Any]:
        return {"seed": self.seed, "steps": self.steps}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the ledger of a suspended guest whose memory this is (checked against the header)."""
        seed, steps = state.get("seed"), state.get("steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"the ledger state holds no valid step count: {steps!r}")
        if seed != self.seed:
            raise ValueError(f"the ledger state has seed {seed!r}, this guest's ldoms-seed is {self.seed}")
        assert self._pages is not None
        header = self._pages[HEADER_PAGE]
        head = read_header(header)
        if head is not None and head.seed != self.seed:
            raise ValueError(
                f"the memory image holds the ledger of seed {head.seed}, not of seed {self.seed}"
            )
        held = head.steps if head is not None else (None if header.any() else 0)
        if held != steps:
            found = "no ledger header" if held is None else f"ledger step {held}"
            raise ValueError(
                f"the memory image holds {found}, the suspended state says step {steps}: the image is not "
                "the one that was suspended (incomplete copy?)"
            )
        self.steps = steps

    def verify(self, memory: GuestMemory) -> list[str]:
        return verify(memory, self.seed, self.steps)

    def close(self) -> None:
        self._pages = None
