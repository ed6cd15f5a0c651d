"""Shared pieces of the security suite (SECURITY.md names the test behind each claim).

* `hosts` / `host`: the integration suite's real ldmd hosts (re-exported from tests/integration/conftest.py:
  temporary homes, 127.0.0.1, every process killed at teardown by the `reaper`).
* `exposed_host`: the same kind of host, with its home in a fresh directory that *every* user may traverse.
  pytest's own temporary directories are private (0700) and would hide the home from another user whatever
  the home's modes are; a test that shows another user is locked out must show it is the home's own modes
  that lock them out.  Teardown kills the daemon and every process naming the directory, then removes it.
* `as_user(uid, gid, probes)`: run small probes (socket connects, file opens) in a forked child that has
  dropped to another user, and report what each got (`ok` or the errno name).  Needs root to drop.
* `umask(mask)`: a context in which processes started by the test inherit `mask`.
* `loose_modes(home)`: what in a home gives group or others any access.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Reaper, kill_processes_mentioning
from tests.integration.conftest import LdmHost, host, hosts  # noqa: F401  (fixtures, re-exported)

NOBODY = 65534  # uid and gid of `nobody` on Linux
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def as_user(uid: int, gid: int, probes: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Run each probe as uid/gid (in a forked child, no supplementary groups): {name: "ok" | "EACCES" ...}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: plain system calls only, then _exit (never back into pytest)
        status = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out: dict[str, str] = {}
            for name, probe in probes.items():
                try:
                    probe()
                    out[name] = "ok"
                except OSError as e:
                    out[name] = errno.errorcode.get(e.errno or 0, str(e.errno))
                except BaseException as e:  # reported, never raised in a forked child
                    out[name] = type(e).__name__
            os.write(w, json.dumps(out).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 0, "the probing child failed before it could report"
    return dict(json.loads(b"".join(chunks)))


def loose_modes(home: Path) -> list[str]:
    """Entries of `home` (itself included) that give group or others any access, as 'path mode'.  A file
    that vanishes while the walk runs (a daemon's temporary file) is skipped."""
    out = []
    for p in [home, *home.rglob("*")]:
        try:
            mode = stat.S_IMODE(os.lstat(p).st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            out.append(f"{p} {oct(mode)}")
    return out


@pytest.fixture
def exposed_host(reaper: Reaper) -> Iterator[LdmHost]:
    parent = Path(tempfile.mkdtemp(prefix="ldsec-", dir="/tmp"))
    parent.chmod(0o755)  # anyone may traverse it: only the home's own modes protect what is inside
    reaper.watch(parent)
    h = LdmHost(parent / "home", "exposed", "t5240")
    try:
        yield h
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()
        kill_processes_mentioning([parent.resolve()])
        shutil.rmtree(parent, ignore_errors=True)
