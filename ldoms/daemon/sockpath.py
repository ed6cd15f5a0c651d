"""Unix socket paths of any length.

`sockaddr_un` holds at most 107 bytes of path, and a home may sit deeper than that.  Linux resolves
`/proc/self/fd/N/<name>` through the directory open as fd N, so binding or connecting through that short
alias reaches the socket at its real path.  The caller keeps the directory fd open for the call.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

MAX_SUN_PATH = 107


@contextlib.contextmanager
def short_path(path: Path) -> Iterator[str]:
    """A path for `bind`/`connect` that names `path` and fits in a sockaddr_un."""
    text = str(path)
    if len(os.fsencode(text)) <= MAX_SUN_PATH:
        yield text
        return
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


def bind_unix(path: Path, *, mode: int = 0o600, backlog: int = 64) -> socket.socket:
    """A listening stream socket at `path` (a stale socket file there is replaced), created with `mode`."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)  # created with the right mode: no window where others may connect
    try:
        with short_path(path) as p:
            sock.bind(p)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


def connect_unix(path: Path, timeout: float | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with short_path(path) as p:
            sock.connect(p)
    except OSError:
        sock.close()
        raise
    return sock


class LineTooLong(ValueError):
    pass


def read_line(sock: socket.socket, limit: int) -> bytes:
    """Bytes up to and including the first newline (or to the end of the stream), at most `limit` of them
    (LineTooLong beyond): the answer of a one-request-per-connection JSON socket."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise LineTooLong(f"answer longer than {limit} bytes")
    return data
