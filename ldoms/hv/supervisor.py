"""Starting, finding and stopping guest processes (ldmd's side of ldoms.hv.guest).

Theory of operation.  A guest is started in its own session (`start_new_session=True`) so that signals to
ldmd's process group never reach it and it outlives ldmd.  It is ready when its pid file appears; until
then `start` polls with a deadline and fails with the guest's own last log line if it exits first.
A guest is identified by its pid file: (pid, start time) must match a live process whose command line is
`... -m ldoms.hv.guest --dir <this guests dir> --domain <name>`, so a pid reused by an unrelated process
is never taken for a guest (nor signalled).  Guests ldmd started are its children and are reaped; guests
adopted after a restart are watched through /proc only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldoms.daemon.sockpath import connect_unix, read_line
from ldoms.errors import OpExecError
from ldoms.hv import proc, zygote
from ldoms.hv.files import GuestFiles, PidRecord, domains_with_files
from ldoms.model.domain import Domain

if TYPE_CHECKING:
    from ldoms.hv.control import GuestControl

log = logging.getLogger("ldmd.guests")

GUEST_MODULE = "ldoms.hv.guest"


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    start_timeout_s: float = 20.0  # interpreter start + memory file creation on a loaded 2-core machine
    stop_timeout_s: float = 10.0  # after SIGTERM, before SIGKILL
    poll_s: float = 0.01


class GuestError(OpExecError):
    code = "guest"


class GuestSupervisor:
    def __init__(
        self,
        directory: Path,
        *,
        python: str = sys.executable,
        policy: GuestPolicy | None = None,
        zygote: bool = True,
    ) -> None:
        self.dir = directory.resolve()
        self.python = python
        self.policy = policy or GuestPolicy()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self.use_zygote = zygote
        self._zygote: subprocess.Popen[bytes] | None = None
        self._zygote_lock = threading.Lock()

    def files(self, name: str) -> GuestFiles:
        return GuestFiles(self.dir, name)

    # ------------------------------------------------------------------ identity
    def _is_our_guest(self, rec: PidRecord, name: str) -> bool:
        if not proc.alive(rec.pid, rec.starttime):
            return False
        argv = proc.cmdline(rec.pid)
        if GUEST_MODULE not in argv or _arg(argv, "--dir") != str(self.dir):
            return False
        if "--zygote" in argv:  # forked by the zygote: its pid file names it (see ldoms.hv.zygote)
            return rec.pid != self._zygote_pid()
        return _arg(argv, "--domain") == name

    def _zygote_pid(self) -> int | None:
        try:
            return int((self.dir / zygote.PID_NAME).read_text())
        except (OSError, ValueError):
            return None

    def find(self, name: str) -> PidRecord | None:
        """The live guest of domain `name`, or None."""
        self.reap()
        rec = self.files(name).read_pidfile()
        if rec is None or rec.domain != name or not self._is_our_guest(rec, name):
            return None
        return rec

    def names_with_files(self) -> set[str]:
        return domains_with_files(self.dir)

    def cpu_seconds(self, rec: PidRecord) -> float | None:
        st = proc.stat(rec.pid)
        if st is None or st.starttime != rec.starttime or st.dead:
            return None
        return st.cpu_seconds

    # ------------------------------------------------------------------ start
    def start(
        self, domain: Domain, *, incoming_state: dict[str, Any] | None = None, standby: bool = False
    ) -> PidRecord:
        """Start the guest of a bound domain and wait until it is ready.

        Incoming (the target of a migration): the memory image `NAME.mem` already exists, created and filled
        by the migration receiver.  With `incoming_state` (the source's suspend answer's `state`) the guest
        restores its workload and runs at once; the returned record's `downtime` is measured from the
        source's suspend.  With `standby=True` it comes up suspended, without a state, and waits for
        `GuestControl.restore(state)`.  A failed incoming start leaves the memory image to the receiver."""
        name = domain.name
        incoming = incoming_state is not None or standby
        if incoming_state is not None and standby:
            raise GuestError(
                f"Cannot start the incoming guest of LDom {name}: a state and standby exclude each other"
            )
        if domain.bindings is None or not domain.bindings.mblocks:
            raise GuestError(f"Cannot start a guest for LDom {name}: it holds no memory (not bound)")
        existing = self.find(name)
        if existing is not None:
            raise GuestError(f"Cannot start a guest for LDom {name}: one already runs (pid {existing.pid})")
        files = self.files(name)
        if incoming and not files.mem.exists():
            raise GuestError(
                f"Cannot start the incoming guest of LDom {name}: its memory image {files.mem} is missing"
            )
        # Leftovers of a guest that died without cleaning up (an incoming image is the receiver's, not one).
        files.remove_all(keep_memory=incoming)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        spec: dict[str, Any] = {
            "domain": name,
            "mblocks": [[b.ra, b.size] for b in domain.bindings.mblocks],
            "vcpus": len(domain.bindings.strands),
            "variables": dict(domain.config.variables),
        }
        if incoming_state is not None:
            spec["incoming"] = {"state": incoming_state}
        elif standby:
            spec["incoming"] = {"standby": True}
        files.spec.write_text(json.dumps(spec))
        forked = self._fork_guest(name) if self.use_zygote else None
        child: subprocess.Popen[bytes] | None = None
        if forked is None:
            argv = [self.python, "-m", GUEST_MODULE, "--dir", str(self.dir), "--domain", name]
            with open(files.log, "ab") as logf:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    cwd=self.dir,
                    start_new_session=True,
                    close_fds=True,
                )
            self._children[child.pid] = child
        pid = forked if child is None else child.pid
        deadline = time.monotonic() + self.policy.start_timeout_s
        while True:
            rec = files.read_pidfile()
            if rec is not None and rec.pid == pid:
                log.info("guest of LDom %s started: pid %d", name, pid)
                return rec
            ended = _ended(child, pid)
            if ended is not None:
                self._children.pop(pid, None)
                files.remove_all(keep_memory=incoming)
                raise GuestError(f"Guest of LDom {name} failed to start ({ended}): {_last_line(files.log)}")
            if time.monotonic() > deadline:
                if child is not None:
                    self._kill_child(child)
                else:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                files.remove_all(keep_memory=incoming)
                raise GuestError(
                    f"Guest of LDom {name} did not become ready within {self.policy.start_timeout_s:g} s "
                    "(start phase); it was killed"
                )
            time.sleep(self.policy.poll_s)

    # ------------------------------------------------------------------ the zygote
    def _fork_guest(self, name: str) -> int | None:
        """A guest forked by the zygote (started on first need); None when the zygote cannot serve, and
        the caller execs the guest instead (slower, same result)."""
        with self._zygote_lock:
            try:
                self._ensure_zygote()
                with connect_unix(self.dir / zygote.SOCK_NAME, timeout=self.policy.start_timeout_s) as s:
                    s.sendall(json.dumps({"domain": name}).encode() + b"\n")
                    data = read_line(s, 4096)
                answer = json.loads(data)
                if not isinstance(answer, dict) or not isinstance(answer.get("pid"), int):
                    raise OSError(f"the zygote answered {answer!r:.80}")
                return int(answer["pid"])
            except (OSError, ValueError, GuestError) as e:
                # Not retried: a zygote that fails once may fail slowly every time (its start deadline is
                # the guests'); exec'd guests are slower to start, not worse.
                log.warning("the guest zygote of %s cannot fork LDom %s's guest (%s): guests are exec'd from "
                            "now on", self.dir, name, e)  # fmt: skip
                self.stop_zygote()
                self.use_zygote = False
                return None

    def warm_up(self) -> None:
        """Start the zygote now, in the background (a failure shows at the first guest start, which then
        execs its guest)."""
        if not self.use_zygote:
            return

        def start() -> None:
            with self._zygote_lock:
                try:
                    self._ensure_zygote()
                except (OSError, GuestError) as e:
                    log.warning("the guest zygote of %s did not start: %s", self.dir, e)

        threading.Thread(target=start, name="zygote-start", daemon=True).start()

    def _ensure_zygote(self) -> None:
        z = self._zygote
        if z is not None and z.poll() is None and self._zygote_pid() == z.pid:
            return
        self.stop_zygote()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.dir / zygote.PID_NAME).unlink(missing_ok=True)
        argv = [self.python, "-m", GUEST_MODULE, "--dir", str(self.dir), "--zygote", "--room", zygote.ROOM]
        with open(self.dir / ".zygote.log", "ab") as logf:
            z = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=self.dir,
                                 start_new_session=True, close_fds=True)  # fmt: skip
        self._zygote = z
        deadline = time.monotonic() + self.policy.start_timeout_s
        while self._zygote_pid() != z.pid:
            if z.poll() is not None:
                raise GuestError(f"the guest zygote exited with status {z.returncode}")
            if time.monotonic() > deadline:
                raise GuestError(f"the guest zygote did not start within {self.policy.start_timeout_s:g} s")
            time.sleep(self.policy.poll_s)

    def stop_zygote(self) -> None:
        """Stop the zygote (at ldmd's exit; its guests are not its children and keep running)."""
        z, self._zygote = self._zygote, None
        if z is not None and z.poll() is None:
            z.kill()
            z.wait()
        (self.dir / zygote.PID_NAME).unlink(missing_ok=True)

    def control(self, name: str, *, timeout: float = 2.0) -> GuestControl:
        """A client of the control socket of `name`'s guest (suspend, resume, throttle, status, verify)."""
        from ldoms.hv.control import GuestControl  # control.py imports GuestError from here

        return GuestControl(self.files(name), timeout=timeout)

    # ------------------------------------------------------------------ stop
    def stop(self, name: str) -> None:
        """Stop the guest of `name` (SIGTERM, then SIGKILL after the stop deadline) and remove its files.
        A guest that is already gone is not an error."""
        rec = self.find(name)
        files = self.files(name)
        if rec is not None:
            self._terminate(rec, name)
        files.remove_all()

    def discard(self, name: str) -> None:
        """End the guest of `name` for good without waiting for it: the copy left behind by a migration,
        suspended and worthless.  SIGKILL, so it runs no code again (in particular not its own clean-up,
        which would remove files by name that a new guest of the same name may own by then); its files go
        now, and the kernel frees its memory as the process finishes exiting, while ldmd moves on (a
        graceful stop of a 1 GiB guest takes a quarter of a second, most of it spent freeing pages)."""
        rec = self.find(name)
        if rec is not None:
            try:
                os.kill(rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            else:
                log.info("guest of LDom %s discarded: pid %d", name, rec.pid)
        self.files(name).remove_all()
        self.reap()

    def _terminate(self, rec: PidRecord, name: str) -> None:
        try:
            os.kill(rec.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if self._wait_gone(rec, self.policy.stop_timeout_s):
            log.info("guest of LDom %s stopped: pid %d", name, rec.pid)
            return
        log.warning(
            "guest of LDom %s (pid %d) ignored SIGTERM for %g s (stop phase): killing it",
            name,
            rec.pid,
            self.policy.stop_timeout_s,
        )
        try:
            os.kill(rec.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._wait_gone(rec, self.policy.stop_timeout_s)

    def scan(self) -> list[PidRecord]:
        """Every live guest process of this guests directory, found through /proc (pid file or not: a guest
        killed before it wrote its pid file is found too)."""
        out: list[PidRecord] = []
        claimed: dict[int, str] | None = None
        zygote_pid = self._zygote_pid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            argv = proc.cmdline(pid)
            if GUEST_MODULE not in argv or _arg(argv, "--dir") != str(self.dir) or pid == zygote_pid:
                continue
            st = proc.stat(pid)
            name = _arg(argv, "--domain")
            if name is None and "--zygote" in argv:
                # A zygote (this ldmd's, or one leaving after its ldmd died), or a forked guest that could
                # not retitle itself: that one is named by its pid file.
                if claimed is None:
                    claimed = self._claimed_pids()
                name = claimed.get(pid)
            if st is not None and not st.dead and name is not None:
                out.append(PidRecord(pid=pid, starttime=st.starttime, domain=name))
        return out

    def _claimed_pids(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for name in self.names_with_files():
            rec = self.files(name).read_pidfile()
            if rec is not None and rec.domain == name:
                out[rec.pid] = name
        return out

    def kill(self, rec: PidRecord) -> None:
        """SIGKILL one guest process (identified by pid and start time) and wait until it is gone."""
        if not proc.alive(rec.pid, rec.starttime):
            return
        try:
            os.kill(rec.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._wait_gone(rec, self.policy.stop_timeout_s)

    def _wait_gone(self, rec: PidRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            if not proc.alive(rec.pid, rec.starttime):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(self.policy.poll_s)

    def _kill_child(self, child: subprocess.Popen[bytes]) -> None:
        try:
            child.kill()
        except ProcessLookupError:
            pass
        child.wait()
        self._children.pop(child.pid, None)

    def reap(self) -> None:
        """Collect the exit status of our children that ended, so none lingers as a zombie."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    def forget_children(self) -> None:
        """Let go of the Popen objects (at ldmd exit) without touching the processes."""
        self._children.clear()


def _ended(child: subprocess.Popen[bytes] | None, pid: int) -> str | None:
    """How a starting guest ended, if it did (an exec'd one is our child; a forked one is not)."""
    if child is not None:
        rc = child.poll()
        return None if rc is None else f"exit status {rc}"
    st = proc.stat(pid)
    return "it exited" if st is None or st.dead else None


def _arg(argv: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a == flag:
            return argv[i + 1]
    return None


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    # The one-line summary the guest prints comes before Python's traceback; prefer the latest one.
    for ln in reversed(lines):
        if ln.startswith("guest "):
            return ln
    return lines[-1] if lines else "no output"
