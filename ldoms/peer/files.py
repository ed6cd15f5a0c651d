"""Private configuration files in a host's home: atomic replacement, one writer at a time, a small TOML.

Readers never lock: a file is only ever replaced whole (write a temporary file beside it, fsync, rename,
fsync the directory), so a reader sees the old or the new content, never a mix, and a crash leaves one of
the two.  Writers (`ldmd peer|trust|user ...`, possibly two admins at once, and ldmd creating its TLS
identity) take `peer.lock` in the home around their read-modify-write, so no update is lost.

Every file is created mode 0600: the home is the host's secret store (a TLS key, password hashes).

The TOML writer covers what our files hold: tables nested by name, strings, integers and booleans.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ldoms.peer.errors import PeerConfigError

LOCK_NAME = "peer.lock"
PRIVATE = 0o600


def why(e: OSError) -> str:
    """An OSError as message text: `no such file or directory`."""
    return (e.strerror or str(e)).lower()


def atomic_write(path: Path, data: bytes, *, mode: int = PRIVATE) -> None:
    """Replace `path` with `data` in one step; the file is created with `mode` (never wider, ever)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; a stale tmp file keeps its own
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # the rename itself is durable
        finally:
            os.close(dfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise PeerConfigError(f"cannot write {path}: {why(e)}") from e


@contextlib.contextmanager
def config_lock(home: Path) -> Iterator[None]:
    """Hold the home's configuration lock (an flock, released if the process dies)."""
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT, PRIVATE)
    except OSError as e:
        raise PeerConfigError(f"cannot lock the configuration in {home}: {why(e)}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_private(path: Path, *, what: str) -> bytes | None:
    """The bytes of a private file, None if it does not exist; refused when group or others may access it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PeerConfigError(f"cannot read {what} {path}: {why(e)}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PeerConfigError(f"{what} {path} is not a regular file")
        if st.st_mode & 0o077:
            raise PeerConfigError(
                f"{what} {path} must not be accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it"
            )
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise PeerConfigError(f"cannot read {what} {path}: {why(e)}") from e
    finally:
        os.close(fd)


def read_toml(path: Path, *, what: str) -> dict[str, Any]:
    """A private TOML file as a dict; {} when it does not exist."""
    data = read_private(path, what=what)
    if data is None:
        return {}
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PeerConfigError(f"{what} {path} is malformed: {e}") from e


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        # Multi-line text (a PEM certificate) stays readable as a literal string when it safely can.
        if "\n" in v and "'''" not in v and all(c == "\n" or 0x20 <= ord(c) != 0x7F for c in v):
            return "'''\n" + v + "'''"
        return _string(v)
    raise TypeError(f"cannot write a {type(v).__name__} to TOML")


def toml_dumps(doc: Mapping[str, Any], *, header: str = "") -> str:
    """TOML text for nested mappings of str/int/bool values (a table's scalars before its sub-tables)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def table(path: list[str], body: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in body.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in body.items() if isinstance(v, Mapping)]
        if path and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_key(p) for p in path) + "]")
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars)
        for k, v in tables:
            table([*path, k], v)

    table([], doc)
    return "\n".join(lines) + "\n"
