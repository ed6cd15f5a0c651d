"""A host's home directory: where its files are, and the lock that lets one ldmd serve it.

HOME/            mode 0700
  ldmd.lock      flock held by the serving ldmd; holds its pid
  ldmd.sock      control socket for ldm (mode 0600)
  ldmd.log       the daemon's log
  state.db       SQLite state (WAL: state.db-wal, state.db-shm beside it)
  guests/        one set of files per running guest (see ldoms.hv.files)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ldoms.errors import LdmError

DEFAULT_HOME = "~/.ldoms"
HOME_ENV = "LDM_HOME"


class HomeError(LdmError):
    code = "home"


def resolve_home(arg: str | None) -> Path:
    """`--home`, else `$LDM_HOME`, else `~/.ldoms`; absolute."""
    text = arg or os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(text).expanduser().absolute()


class Home:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_file = path / "ldmd.lock"
        self.sock = path / "ldmd.sock"
        self.log = path / "ldmd.log"
        self.db = path / "state.db"
        self.guests = path / "guests"
        self._lock_fd: int | None = None

    def prepare(self) -> None:
        """Create the home (0700) and its guests directory; tighten the mode of an existing home."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
            self.guests.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise HomeError(f"home {self.path}: cannot be prepared: {e.strerror or e}") from e
        if not self.path.is_dir():
            raise HomeError(f"home {self.path}: is not a directory")

    def lock(self) -> None:
        """Take the home's lock for this process, or refuse naming the ldmd that holds it."""
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise HomeError(
                f"home {self.path} is already served by another ldmd (pid {holder}): stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._lock_fd = fd  # non-inheritable (Python's default): guests never hold the lock

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
