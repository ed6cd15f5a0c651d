"""The guest process: `python -m ldoms.hv.guest --dir GUESTS --domain NAME`.

Theory of operation.  `ldmd` writes `NAME.spec.json` (memory blocks, vCPUs, variables) in the guests
directory and starts this program in its own session, so the guest outlives `ldmd`.  The guest:

1. creates `NAME.mem`, its memory as a sparse file of the bound size indexed by RA (`GuestMemory`), and
   `NAME.dirty`, the dirty map it shares with ldmd (`DirtyMap`);
2. listens on `NAME.ctl`, a Unix stream socket taking one JSON request line per connection
   (`{"cmd": "ping"}` -> `{"ok": true, ...}`; see `HANDLERS` and ldoms/hv/control.py for the client);
3. writes `NAME.pid` (pid, start time in ticks, domain) *last*, atomically: its presence says "ready", and
   the start time lets a restarted `ldmd` tell this process from a later one with the same pid;
4. loops: runs its workload's steps, paced (ldoms/hv/pacing.py), and answers control requests *between*
   steps, until SIGTERM (or SIGINT); then removes its files and exits 0.  The memory file goes with the
   domain: a stopped domain has no memory image.

Suspend, resume, throttle.  Requests are served only between steps, so `suspend` answers at a step boundary
with the workload's state (JSON: workload, steps, suspended_at wall time, the workload's own progress); a
suspended guest runs no step and sleeps in the selector until a request or a signal comes.

Incoming guests (the target of a live migration).  A spec with `"incoming": {"state": STATE}` means the
migration receiver already created and filled `NAME.mem`: the guest opens it as it is, restores its
workload from STATE (the source's suspend answer), runs its first step at once and records
`downtime = first step's wall time - STATE["suspended_at"]`, which it reports in `status()` and in its pid
file (`PidRecord.downtime`, so `GuestSupervisor.start` returns it).  With `"incoming": {"standby": true}` the
guest comes up early, maps the memory as the receiver fills it, and waits suspended for a `restore`
request carrying STATE: the downtime then excludes the interpreter's start-up.  Clocks: the downtime
subtracts a source-clock time from a target-clock one; the source ldmd moves STATE's suspended_at onto the
target's clock first (`ldoms.migration.live_plan.on_peer_clock`), so skew between the hosts does not count.

Paths are relative to the guests directory (the process changes into it), which keeps the control socket's
path short whatever the home's length.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ldoms.errors import LdmError
from ldoms.hv.dirtymap import DirtyMap
from ldoms.hv.files import GuestFiles
from ldoms.hv.ledger import LedgerWorkload
from ldoms.hv.memory import GuestMemory
from ldoms.hv.pacing import Pacer, RateMeter
from ldoms.hv.proc import own_starttime
from ldoms.hv.workload import Workload, make_workload, parse_workload

MAX_REQUEST = 1024 * 1024  # a restore carries the workload state: small, but leave room
REQUEST_TIMEOUT_S = 2.0  # a client that connects and says nothing must not stall the guest for long
STATE_VERSION = 1


class RequestError(Exception):
    """A control request the guest refuses; the message goes back to the client."""


Handler = Callable[["Guest", dict[str, Any]], dict[str, Any]]


class Guest:
    def __init__(self, files: GuestFiles, spec: dict[str, Any]) -> None:
        self.files = files
        self.spec = spec
        self.domain: str = spec["domain"]
        self.vcpus: int = int(spec.get("vcpus", 1))
        self.variables: dict[str, str] = dict(spec.get("variables", {}))
        config = parse_workload(self.variables)
        incoming = spec.get("incoming")
        if incoming is not None and not isinstance(incoming, dict):
            raise ValueError(f"the spec's 'incoming' is {incoming!r}, expected an object")
        self.incoming = incoming is not None
        self._profile: dict[str, Any] | None = None
        if not (self.incoming and incoming and incoming.get("state") is not None):
            self.profile()  # a bad variable fails the start; an incoming guest's were judged on the source
        self.started = time.time()
        self.stopping = False
        self.suspended = False
        self.suspended_at: float | None = None
        self.standby = False  # incoming, waiting for its state
        self.downtime: float | None = None
        self.resumed_at: float | None = None
        self.pacer = Pacer()
        self.meter = RateMeter()
        blocks = [(int(ra), int(size)) for ra, size in spec["mblocks"]]
        self.memory = GuestMemory(files.mem, blocks, create=not self.incoming)
        files.dirty.unlink(missing_ok=True)  # a leftover of a guest that died: this guest starts clean
        self.dirty = DirtyMap(files.dirty, self.memory.npages, create=True)
        self.workload: Workload = make_workload(config, self.memory, self.dirty)
        self._pending_state: dict[str, Any] | None = None
        if incoming is not None:
            state = incoming.get("state")
            if state is None:
                if not incoming.get("standby"):
                    raise ValueError("the spec's 'incoming' holds neither a state nor standby")
                self.standby = self.suspended = True
            else:
                self.restore_state(state)
                self._pending_state = state
        files.ctl.unlink(missing_ok=True)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(files.ctl.name)  # relative: we run inside the guests directory
        os.chmod(files.ctl.name, 0o600)
        self.ctl.listen(8)
        self.ctl.setblocking(False)

    def profile(self, *, strict: bool = True) -> dict[str, Any]:
        """The OS profile, conditions and softstate (status fields).  Loaded lazily: the checks package it
        comes from takes a noticeable share of the interpreter's start, which an incoming guest with its
        state in hand would otherwise add to the downtime.  Not `strict` (a guest already running), a bad
        variable is reported in the status instead of failing: a running guest never dies of one."""
        if self._profile is None:
            from ldoms.hv.profile import guest_profile, guest_softstate

            try:
                profile, conditions = guest_profile(self.variables)
                softstate = guest_softstate(self.variables)
            except LdmError as e:
                if strict:
                    raise
                print(f"guest {self.domain}: {e}", file=sys.stderr, flush=True)
                self._profile = {
                    "profile": None,
                    "conditions": None,
                    "softstate": None,
                    "profile_error": str(e),
                }
            else:
                self._profile = {
                    "profile": asdict(profile),
                    "conditions": asdict(conditions),
                    "softstate": softstate,
                }
        return self._profile

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            **self.workload.state(),
            "version": STATE_VERSION,
            "domain": self.domain,
            "workload": self.workload.name,
            "steps": self.workload.steps,
            "suspended_at": self.suspended_at,
        }

    def restore_state(self, state: object) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"the incoming state is {type(state).__name__}, expected an object")
        if state.get("workload") != self.workload.name:
            raise ValueError(
                f"the incoming state is for workload {state.get('workload')!r}, LDom {self.domain}'s "
                f"variables choose {self.workload.name!r}"
            )
        at = state.get("suspended_at")
        if not isinstance(at, int | float) or isinstance(at, bool):
            raise ValueError(f"the incoming state holds no suspend time: suspended_at={at!r}")
        self.workload.restore(state)
        self.suspended_at = float(at)

    def resume_after_restore(self) -> None:
        """Run the first step now and measure the downtime from the source's suspend."""
        assert self.suspended_at is not None
        self.standby = self.suspended = False
        first = time.time()
        self.pacer.start(time.monotonic())
        self._step()
        self.downtime = first - self.suspended_at
        self.resumed_at = first
        self.suspended_at = None
        print(
            f"guest {self.domain}: resumed after migration at step {self.workload.steps}; downtime "
            f"{self.downtime * 1000:.1f} ms",
            file=sys.stderr,
            flush=True,
        )

    def _write_pidfile(self) -> None:
        self.files.write_pidfile(
            pid=os.getpid(), starttime=own_starttime(), domain=self.domain, downtime=self.downtime
        )

    def suspend(self) -> None:
        if not self.suspended:
            self.suspended = True
            self.suspended_at = time.time()
            self.pacer.stop()

    def resume(self) -> bool:
        was = self.suspended
        self.suspended = False
        self.suspended_at = None
        if self.pacer.next is None:
            self.pacer.start(time.monotonic())  # the time spent suspended is not caught up
        return was

    # ------------------------------------------------------------------ control requests
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        handler = HANDLERS.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}: expected one of {', '.join(HANDLERS)}"}
        try:
            return handler(self, request)
        except (RequestError, ValueError) as e:
            return {"ok": False, "error": str(e)}

    def serve_one(self) -> None:
        try:
            conn, _ = self.ctl.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(REQUEST_TIMEOUT_S)
            try:
                data = b""
                while b"\n" not in data and len(data) < MAX_REQUEST:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                try:
                    request = json.loads(data.split(b"\n", 1)[0] or b"null")
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                except ValueError as e:
                    reply: dict[str, Any] = {"ok": False, "error": f"bad request: {e}"}
                else:
                    reply = self.handle(request)
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass  # the client went away or stalled: its problem, not the guest's

    # ------------------------------------------------------------------ main loop
    def _step(self) -> None:
        started = time.monotonic()
        interval = self.workload.step()
        ended = time.monotonic()
        self.pacer.after_step(started, ended, interval)
        self.meter.sample(ended, self.workload.dirtied_bytes)

    def run(self) -> None:
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        signal.set_wakeup_fd(wsock.fileno())

        def on_stop(signum: int, frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        sel = selectors.DefaultSelector()
        sel.register(self.ctl, selectors.EVENT_READ, "ctl")
        sel.register(rsock, selectors.EVENT_READ, "signal")
        if self._pending_state is not None:
            self._pending_state = None
            self.resume_after_restore()  # before the pid file: start() returns the downtime
        elif not self.suspended:
            self.pacer.start(time.monotonic())
        self._hold("guest:ready")
        self._write_pidfile()
        self.profile(strict=False)  # deferred by an incoming guest until it runs
        while not self.stopping:
            # Suspended or idle, the pacer has no next step: the selector sleeps until a request or signal.
            for key, _ in sel.select(self.pacer.timeout(time.monotonic())):
                if key.data == "ctl":
                    self.serve_one()
                else:
                    try:
                        rsock.recv(256)
                    except BlockingIOError:
                        pass
            if self.stopping:
                break
            if not self.suspended and self.pacer.due(time.monotonic()):
                self._step()
        sel.close()
        rsock.close()
        wsock.close()

    def _hold(self, point: str) -> None:
        """Test hook: `LDMD_TEST_HOOKS` {"pause": {"guest:ready": SECONDS}} (inherited from ldmd) holds the
        guest before it says it is ready, so a test can kill ldmd in the middle of a start."""
        try:
            seconds = float(json.loads(os.environ.get("LDMD_TEST_HOOKS") or "{}").get("pause", {})[point])
        except (ValueError, TypeError, KeyError, AttributeError):
            return
        print(f"guest {self.domain}: test hook: holding {seconds:g} s at {point}", file=sys.stderr)
        sys.stderr.flush()
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.ctl.close()
        self.workload.close()
        self.dirty.close()
        self.memory.close()


# ---------------------------------------------------------------------- request handlers
def _ping(guest: Guest, request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "domain": guest.domain, "pid": os.getpid()}


def _status(guest: Guest, request: dict[str, Any]) -> dict[str, Any]:
    now = time.monotonic()
    return {
        "ok": True,
        "domain": guest.domain,
        "pid": os.getpid(),
        "vcpus": guest.vcpus,
        "memory": guest.memory.size,
        "pages": guest.memory.npages,
        "started": guest.started,
        "workload": guest.workload.name,
        "workload_status": guest.workload.status(),
        "steps": guest.workload.steps,
        "suspended": guest.suspended,
        "suspended_at": guest.suspended_at,
        "standby": guest.standby,
        "throttle": guest.pacer.throttle,
        "dirty_rate": guest.meter.rate(now),  # bytes/s written over the last second
        "dirtied_bytes": guest.workload.dirtied_bytes,
        "dirty_pages": guest.dirty.count(),
        **guest.profile(strict=False),
        "incoming": guest.incoming,
        "downtime": guest.downtime,
        "resumed_at": guest.resumed_at,
    }


def _not_standby(guest: Guest, cmd: str) -> None:
    if guest.standby:
        raise RequestError(
            f"the guest of LDom {guest.domain} is an incoming guest waiting for its state (restore): "
            f"it cannot {cmd} yet"
        )


def _suspend(guest: Guest, request: dict[str, Any]) -> dict[str, Any]:
    _not_standby(guest, "suspend")
    guest.suspend()
    return {"ok": True, "state": guest.state()}


def _resume(guest: Guest, request: dict[str, Any]) -> dict[str, Any]:
    _not_standby(guest, "resume")
    return {"ok": True, "resumed": guest.resume()}


def _throttle(guest: Guest, request: dict[str, Any]) -> dict[str, Any]:
    percent = request.get("percent")
    if not isinstance(percent, int) or isinstance(percent, bool):
        raise RequestError(f"throttle needs an integer percent 0..99, not {percent!r}")
    guest.pacer.set_throttle(percent)
    return {"ok": True, "throttle": percent}


def _restore(guest: Guest, request: dict[str, Any]) -> dict[str, Any]:
    if not guest.standby:
        raise RequestError(f"the guest of LDom {guest.domain} is not an incoming guest waiting for a state")
    guest.restore_state(request.get("state"))
    guest.resume_after_restore()
    guest._write_pidfile()
    return {"ok": True, "downtime": guest.downtime, "steps": guest.workload.steps}


def _verify(guest: Guest, request: dict[str, Any]) -> dict[str, Any]:
    _not_standby(guest, "verify")
    workload = guest.workload
    if not isinstance(workload, LedgerWorkload):
        raise RequestError(
            f"verify needs the ledger workload (ldoms-workload=ledger); LDom {guest.domain} runs "
            f"'{workload.name}'"
        )
    was_suspended = guest.suspended
    guest.suspend()  # the image must hold still while it is compared
    try:
        problems = workload.verify(guest.memory)
    finally:
        if not was_suspended:
            guest.resume()
    return {
        "ok": True,
        "consistent": not problems,
        "problems": problems,
        "steps": workload.steps,
        "seed": workload.seed,
        "pages": guest.memory.npages,
    }


HANDLERS: dict[str, Handler] = {
    "ping": _ping,
    "status": _status,
    "suspend": _suspend,
    "resume": _resume,
    "throttle": _throttle,
    "restore": _restore,
    "verify": _verify,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ldoms.hv.guest", description="An LDoms guest (started by ldmd)."
    )
    ap.add_argument("--dir", required=True, help="the host's guests directory")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--domain", help="the domain this guest runs")
    who.add_argument("--zygote", action="store_true", help="fork guests on request (ldoms.hv.zygote)")
    ap.add_argument("--room", help=argparse.SUPPRESS)  # the zygote's: room for its guests' command lines
    args = ap.parse_args(argv)
    if args.zygote:
        from ldoms.hv.zygote import serve

        return serve(Path(args.dir))
    os.chdir(args.dir)
    files = GuestFiles(Path("."), args.domain)
    guest: Guest | None = None
    try:
        spec = json.loads(files.spec.read_text())
        guest = Guest(files, spec)
        guest.run()
        return 0
    except Exception as e:  # the guest's log is its stderr: one clear line, then the trace for debugging
        print(f"guest {args.domain}: {type(e).__name__}: {e}", file=sys.stderr)
        raise
    finally:
        # Only a guest that came up owns the files; a failed start leaves them for ldmd to clean (it knows
        # whether another process might own them).
        if guest is not None:
            guest.close()
            files.remove_runtime()


if __name__ == "__main__":
    sys.exit(main())
