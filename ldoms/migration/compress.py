"""Optional LZ4 compression of page frames, and the governor that turns it off when it does not pay.

Theory of operation.  Compressing a frame of S bytes costs about S/c on the sender plus S/d on the receiver
(c, d: LZ4 compress / decompress speeds) and saves (1 - r)·S/b of link time (r: compressed/raw ratio,
b: the channel's send speed as measured).  It pays when

    (1 - r) / b  >  1/c + 1/d          with d taken as 2c (LZ4 decompresses about twice as fast)

On a fast link with random-looking memory (DESIGN §5: LZ4 on random data is slower than loopback) it never
pays and the governor stays off; on a slow link with compressible memory it turns on.  While off it probes a
16 KiB sample every `probe_every` frames (about 1 % of the work), so it notices when memory becomes
compressible; while on, every frame is a measurement.  Measurements are moving averages; the governor is pure
(callers pass in byte counts and seconds), so its policy is tested without clocks.
"""

from __future__ import annotations

import enum

import lz4.block

SAMPLE_BYTES = 16 * 1024
_ALPHA = 0.25  # weight of the newest measurement in the moving averages


class Compression(enum.StrEnum):
    OFF = "off"  # never compress
    LZ4 = "lz4"  # compress every frame (a frame that does not shrink is sent raw)
    AUTO = "auto"  # compress while it pays (see module docstring)


class Plan(enum.Enum):
    RAW = "raw"
    PROBE = "probe"  # send raw, but first compress a sample to measure
    COMPRESS = "compress"


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - _ALPHA) * old + _ALPHA * new


class CompressionGovernor:
    def __init__(self, mode: Compression | str = Compression.AUTO, *, probe_every: int = 16) -> None:
        self.mode = Compression(mode)
        self.probe_every = probe_every
        self.ratio: float | None = None  # compressed / raw
        self.compress_bps: float | None = None
        self.send_bps: float | None = None
        self.active = self.mode is Compression.LZ4
        self._since_probe = probe_every  # probe on the first frame

    def plan(self) -> Plan:
        if self.mode is Compression.OFF:
            return Plan.RAW
        if self.active:
            return Plan.COMPRESS
        self._since_probe += 1
        if self._since_probe >= self.probe_every:
            self._since_probe = 0
            return Plan.PROBE
        return Plan.RAW

    def pays(self) -> bool:
        if self.ratio is None or self.compress_bps is None:
            return False
        if self.send_bps is None:  # nothing sent yet: go by the ratio alone
            return self.ratio <= 0.5
        return (1 - self.ratio) / self.send_bps > 1.5 / self.compress_bps

    def observe_compress(self, raw: int, compressed: int, seconds: float) -> None:
        if raw <= 0:
            return
        self.ratio = _ewma(self.ratio, min(compressed / raw, 1.0))
        self.compress_bps = _ewma(self.compress_bps, raw / max(seconds, 1e-9))
        if self.mode is Compression.AUTO:
            self.active = self.pays()

    def observe_send(self, nbytes: int, seconds: float) -> None:
        if nbytes > 0:
            self.send_bps = _ewma(self.send_bps, nbytes / max(seconds, 1e-9))


def compress(data: memoryview | bytes) -> bytes:
    return lz4.block.compress(data, store_size=False)


def decompress(data: memoryview | bytes, size: int) -> bytes:
    return lz4.block.decompress(data, uncompressed_size=size)
