"""Gathering a migration's data channels at the target's data port: authenticated preambles, read
concurrently, each under its own short deadline.

Theory of operation.  Each channel starts with a preamble: the clear header `MAGIC, tag, channel, count`
(24 bytes; the tag is a digest of the migration id, `dataplane_keys.migration_tag`) followed by
HMAC-SHA256(preamble key, header)[:16], the preamble key being derived from the per-migration secret that
only the two daemons hold (`KeySchedule.preamble_key`).  A stranger cannot forge one; a preamble read on the
wire is bound to this migration, channel and count, and the channel it names is already taken by the real
one (the first valid preamble of a channel wins; the source sends it with its connect).

`gather_channels` waits for the N channels with one selector over the listening socket and every
connection whose preamble is not complete yet (non-blocking sockets, nothing read beyond the preamble, so
the channel's own frames stay in the socket).  Each connection has `preamble_s` from its accept to deliver
its whole preamble (not per read: trickling does not extend it).  A connection that stays silent,
trickles too slowly, closes, sends a wrong or unauthenticated preamble, or names a channel already taken is
closed and counted as a stray; none of them delays any other connection.  At most `max_pending` connections
wait for their preamble at once: a new one beyond that pushes out the one that has waited longest (a real
channel waits only for a round trip, a stranger for `preamble_s`).  Strays never fail the migration by
their number: the port keeps gathering until the N channels are in, the deadline passes, or `stop()`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PREAMBLE = struct.Struct("!4s16sHH")  # magic, migration tag, channel, channel count
MAGIC = b"LDMc"
MAC_BYTES = 16
PREAMBLE_BYTES = PREAMBLE.size + MAC_BYTES
PREAMBLE_S = 5.0  # from accept to the whole preamble, per connection
MAX_PENDING = 64  # connections waiting for their preamble at once
_POLL_S = 0.5  # how often `stop()` is looked at while nothing happens
_LOST = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}  # accept(2): the connection died before us


def seal_preamble(key: bytes, tag: bytes, channel: int, n: int) -> bytes:
    """The preamble of `channel` of `n`: the clear header and its MAC."""
    head = PREAMBLE.pack(MAGIC, tag, channel, n)
    return head + hmac.new(key, head, hashlib.sha256).digest()[:MAC_BYTES]


def open_preamble(key: bytes, tag: bytes, n: int, data: bytes) -> int | None:
    """The channel a complete preamble names, or None when it is not one of this migration's channels."""
    if len(data) != PREAMBLE_BYTES:
        return None
    head, mac = data[: PREAMBLE.size], data[PREAMBLE.size :]
    want = hmac.new(key, head, hashlib.sha256).digest()[:MAC_BYTES]
    if not hmac.compare_digest(mac, want):
        return None
    magic, got_tag, ch, count = PREAMBLE.unpack(head)
    if magic != MAGIC or got_tag != tag or count != n or ch >= n:
        return None
    return int(ch)


@dataclass(slots=True)
class _Pending:
    until: float  # the preamble must be complete by then
    buf: bytearray = field(default_factory=bytearray)


@dataclass(slots=True)
class Gathered:
    """What `gather_channels` took: the channels by index (complete or not), and the strays it closed."""

    channels: dict[int, socket.socket] = field(default_factory=dict)
    strays: int = 0


def gather_channels(
    listener: socket.socket,
    *,
    key: bytes,
    tag: bytes,
    n: int,
    until: float,
    stop: Callable[[], bool],
    preamble_s: float = PREAMBLE_S,
    max_pending: int = MAX_PENDING,
    into: Gathered | None = None,
) -> Gathered:
    """Accept on `listener` until the `n` channels are in, `until` (monotonic) passes or `stop()` says so.
    The channels come back non-blocking, with nothing read beyond their preamble; every other connection is
    closed.  `into` resumes an earlier gathering (the channels it holds stay taken).  On an exception, the
    channels taken so far are closed too."""
    out = into if into is not None else Gathered()
    pending: dict[socket.socket, _Pending] = {}  # oldest first

    def drop(conn: socket.socket) -> None:
        pending.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(conn)
        conn.close()
        out.strays += 1

    listener.setblocking(False)
    with selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ)
        try:
            while len(out.channels) < n and not stop():
                now = time.monotonic()
                if now >= until:
                    break
                for conn in [c for c, p in pending.items() if p.until <= now]:
                    drop(conn)
                nxt = min([until, now + _POLL_S, *(p.until for p in pending.values())])
                for ready, _ in sel.select(max(0.0, nxt - now)):
                    if ready.fileobj is listener:
                        _accept_ready(listener, sel, pending, drop, preamble_s, max_pending)
                        continue
                    conn = ready.fileobj
                    assert isinstance(conn, socket.socket)
                    p = pending.get(conn)
                    if p is None:
                        continue
                    try:
                        part = conn.recv(PREAMBLE_BYTES - len(p.buf))
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        part = b""
                    if not part:
                        drop(conn)
                        continue
                    p.buf += part
                    if len(p.buf) < PREAMBLE_BYTES:
                        continue
                    ch = open_preamble(key, tag, n, bytes(p.buf))
                    if ch is None or ch in out.channels:
                        drop(conn)
                        continue
                    del pending[conn]
                    sel.unregister(conn)
                    out.channels[ch] = conn
        except BaseException:
            for conn in out.channels.values():
                conn.close()
            raise
        finally:
            for conn in list(pending):
                drop(conn)
    return out


def _accept_ready(
    listener: socket.socket,
    sel: selectors.BaseSelector,
    pending: dict[socket.socket, _Pending],
    drop: Callable[[socket.socket], None],
    preamble_s: float,
    max_pending: int,
) -> None:
    """Take every connection the kernel has queued (the listener is non-blocking)."""
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in _LOST:  # that one connection is gone; the others may follow
                continue
            raise  # EMFILE, a closed listener ...: the caller decides
        conn.setblocking(False)
        while len(pending) >= max_pending:
            drop(next(iter(pending)))  # the one that has waited longest
        pending[conn] = _Pending(until=time.monotonic() + preamble_s)
        sel.register(conn, selectors.EVENT_READ)
