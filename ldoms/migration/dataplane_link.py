"""Opening the data plane's N plain TCP connections between two ldmds (the frames on them are encrypted).

Theory of operation.  The target listens on an ephemeral port of the address the source reached its control
link on (so namespaces and multi-homed hosts work) and tells the port in PrepareAck; the source opens N
connections and starts each with a small clear preamble: magic, the migration's tag (a digest of its id,
`dataplane_keys.migration_tag`: not secret), the channel index and the channel count.  The target sorts the
connections by channel and refuses (closes) any whose preamble does not fit; it stops after `deadline` or
`max_strays` refused connections.  A stranger that guesses the tag gains nothing: every frame is
authenticated with the per-migration key that only the two daemons hold (the TLS control link carried it),
and a wrong frame aborts the migration (a denial of service only, like cutting the cable).

Deadlines.  Sockets are left blocking (worker processes inherit the descriptors) with the kernel's send and
receive timeouts (SO_SNDTIMEO / SO_RCVTIMEO) set to the data-plane idle deadline: a peer that stops reading
or writing makes the lane fail with EAGAIN, reported as `is_idle_timeout`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from ldoms.errors import OpExecError
from ldoms.migration.dataplane_keys import migration_tag

PREAMBLE = struct.Struct("!4s16sHH")
MAGIC = b"LDMc"
MAX_STRAYS = 32


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
    host: str, port: int, migration_id: str, n: int, *, connect_s: float, idle_s: float
) -> list[socket.socket]:
    """N connected channel sockets to the target's data port, channel i first sending preamble i."""
    tag = migration_tag(migration_id)
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
            s.sendall(PREAMBLE.pack(MAGIC, tag, ch, n))
            set_idle_deadline(s, idle_s)
        return out
    except BaseException:
        for s in out:
            s.close()
        raise


class ChannelListener:
    """The target's data port for one migration (see the module docstring)."""

    def __init__(self, bind_host: str, migration_id: str, n: int, *, idle_s: float) -> None:
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.bind((bind_host, 0))
            self._sock.listen(max(n, 4))
        except OSError as e:
            self._sock.close()
            raise DataLinkError(
                f"Cannot listen for data channels on {bind_host}: {e.strerror or e}"
            ) from None
        self.port: int = self._sock.getsockname()[1]
        self.tag = migration_tag(migration_id)
        self.n = n
        self.idle_s = idle_s
        self._closed = threading.Event()

    def accept_all(self, deadline_s: float, cancelled: threading.Event | None = None) -> list[socket.socket]:
        """The N channel sockets, in channel order; DataLinkError when they do not all come in time."""
        got: dict[int, socket.socket] = {}
        strays = 0
        end = time.monotonic() + deadline_s
        try:
            while len(got) < self.n:
                left = end - time.monotonic()
                if left <= 0 or self._closed.is_set() or (cancelled is not None and cancelled.is_set()):
                    raise DataLinkError(
                        f"only {len(got)} of {self.n} data channels connected within {deadline_s:g} s "
                        f"(port {self.port}; deadline prepare_s)"
                    )
                self._sock.settimeout(min(left, 0.5))
                try:
                    conn, _ = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError as e:
                    if self._closed.is_set():
                        continue
                    raise DataLinkError(f"accepting data channels failed: {e.strerror or e}") from None
                ch = self._preamble(conn, max(0.1, min(5.0, end - time.monotonic())))
                if ch is None or ch in got:
                    conn.close()
                    strays += 1
                    if strays > MAX_STRAYS:
                        raise DataLinkError(
                            f"{strays} connections to data port {self.port} were not this migration's "
                            "channels"
                        )
                    continue
                set_idle_deadline(conn, self.idle_s)
                got[ch] = conn
            return [got[i] for i in range(self.n)]
        except BaseException:
            for s in got.values():
                s.close()
            raise
        finally:
            self.close()

    def _preamble(self, conn: socket.socket, timeout: float) -> int | None:
        conn.settimeout(timeout)
        buf = b""
        try:
            while len(buf) < PREAMBLE.size:
                part = conn.recv(PREAMBLE.size - len(buf))
                if not part:
                    return None
                buf += part
        except OSError:
            return None
        magic, tag, ch, n = PREAMBLE.unpack(buf)
        if magic != MAGIC or tag != self.tag or n != self.n or ch >= n:
            return None
        return int(ch)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.close()
