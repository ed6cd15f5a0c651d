"""Opening the data plane's N plain TCP connections between two ldmds (the frames on them are encrypted).

Theory of operation.  The target listens on an ephemeral port of the address the source reached its control
link on (so namespaces and multi-homed hosts work) and tells the port in PrepareAck; the source opens N
connections and starts each with a small preamble: magic, the migration's tag (a digest of its id,
`dataplane_keys.migration_tag`: not secret), the channel index and the channel count, in clear, and their
MAC under a key derived from the per-migration secret (`dataplane_gate`).  The target reads the preambles of
all connections at once, each within 5 s of its accept, sorts the channels by index and closes any other
connection (a silent, slow, foreign or forged one), without delay to the others and without a limit on their
number; it stops after `deadline`.  Only the two daemons can claim a channel, and every frame is
authenticated with the per-migration key (the TLS control link carried the secret): a stranger can at most
keep the channels from connecting by flooding the port, or abort the migration from the path (a denial of
service only, like cutting the cable).

Deadlines.  Sockets are left blocking (worker processes inherit the descriptors) with the kernel's send and
receive timeouts (SO_SNDTIMEO / SO_RCVTIMEO) set to the data-plane idle deadline: a peer that stops reading
or writing makes the lane fail with EAGAIN, reported as `is_idle_timeout`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time

from ldoms.errors import OpExecError
from ldoms.migration.dataplane_gate import MAGIC, PREAMBLE, gather_channels, seal_preamble
from ldoms.migration.dataplane_keys import KeySchedule

log = logging.getLogger("ldmd.migration")

__all__ = [
    "MAGIC",
    "PREAMBLE",
    "ChannelListener",
    "DataLinkError",
    "is_idle_timeout",
    "open_channels",
    "set_idle_deadline",
]


class DataLinkError(OpExecError):
    code = "dataplane-connect"


def set_idle_deadline(sock: socket.socket, seconds: float) -> None:
    """Blocking socket whose every send and receive may wait at most `seconds` (kernel timeouts)."""
    sock.settimeout(None)
    sec = int(seconds)
    usec = int((seconds - sec) * 1_000_000)
    tv = struct.pack("ll", sec, usec)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def is_idle_timeout(message: str) -> bool:
    """Whether a lane's failure message is the kernel's timeout (EAGAIN) or Python's ("timed out")."""
    low = message.lower()
    return "temporarily unavailable" in low or "timed out" in low


def open_channels(
    host: str, port: int, migration_id: str, n: int, *, secret: bytes, connect_s: float, idle_s: float
) -> list[socket.socket]:
    """N connected channel sockets to the target's data port, channel i first sending preamble i (its MAC
    keyed by the migration's `secret`)."""
    keys = KeySchedule(secret, migration_id)
    key = keys.preamble_key()
    out: list[socket.socket] = []
    try:
        for ch in range(n):
            try:
                s = socket.create_connection((host, port), timeout=connect_s)
            except OSError as e:
                raise DataLinkError(
                    f"Cannot open data channel {ch} of {n} to {host} port {port}: "
                    f"{(e.strerror or str(e)).lower()}"
                ) from None
            out.append(s)
            s.sendall(seal_preamble(key, keys.tag, ch, n))
            set_idle_deadline(s, idle_s)
        return out
    except BaseException:
        for s in out:
            s.close()
        raise


class ChannelListener:
    """The target's data port for one migration (see the module docstring)."""

    def __init__(self, bind_host: str, migration_id: str, n: int, *, secret: bytes, idle_s: float) -> None:
        keys = KeySchedule(secret, migration_id)  # a bad secret is refused before anything listens
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.bind((bind_host, 0))
            self._sock.listen(max(n, 64))  # strangers in the accept queue must not crowd the channels out
        except OSError as e:
            self._sock.close()
            raise DataLinkError(
                f"Cannot listen for data channels on {bind_host}: {e.strerror or e}"
            ) from None
        self.port: int = self._sock.getsockname()[1]
        self.tag = keys.tag
        self._key = keys.preamble_key()
        self.n = n
        self.idle_s = idle_s
        self._closed = threading.Event()

    def accept_all(self, deadline_s: float, cancelled: threading.Event | None = None) -> list[socket.socket]:
        """The N channel sockets, in channel order; DataLinkError when they do not all come in time.
        Preambles are read concurrently, each under its own deadline (`dataplane_gate`)."""
        try:
            try:
                gathered = gather_channels(
                    self._sock,
                    key=self._key,
                    tag=self.tag,
                    n=self.n,
                    until=time.monotonic() + deadline_s,
                    stop=lambda: self._closed.is_set() or (cancelled is not None and cancelled.is_set()),
                )
            except OSError as e:
                why = "the data port was closed" if self._closed.is_set() else (e.strerror or str(e))
                raise DataLinkError(f"accepting data channels failed: {why}") from None
            got = gathered.channels
            if len(got) < self.n:
                for s in got.values():
                    s.close()
                strays = f"; {gathered.strays} other connections were refused" if gathered.strays else ""
                raise DataLinkError(
                    f"only {len(got)} of {self.n} data channels connected within {deadline_s:g} s "
                    f"(port {self.port}; deadline prepare_s{strays})"
                )
            for s in got.values():
                set_idle_deadline(s, self.idle_s)
            if gathered.strays:
                log.warning(
                    "data port %d: closed %d connections that were not this migration's channels",
                    self.port,
                    gathered.strays,
                )
            return [got[i] for i in range(self.n)]
        finally:
            self.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.close()
