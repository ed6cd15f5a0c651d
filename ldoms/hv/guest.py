"""The guest process: `python -m ldoms.hv.guest --dir GUESTS --domain NAME`.

Theory of operation.  `ldmd` writes `NAME.spec.json` (memory blocks, vCPUs, variables) in the guests
directory and starts this program in its own session, so the guest outlives `ldmd`.  The guest:

1. creates `NAME.mem`, its memory as a sparse file of the bound size indexed by RA (`GuestMemory`);
2. listens on `NAME.ctl`, a Unix stream socket taking one JSON request line per connection
   (`{"cmd": "ping"}` -> `{"ok": true, ...}`): the control channel later issues extend (suspend, dirty map);
3. writes `NAME.pid` (pid, start time in ticks, domain) *last*, atomically: its presence says "ready", and
   the start time lets a restarted `ldmd` tell this process from a later one with the same pid;
4. loops: runs its workload's steps and answers control requests until SIGTERM (or SIGINT), then removes
   its files and exits 0.  The memory file goes with the domain: a stopped domain has no memory image.

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
from pathlib import Path
from typing import Any

from ldoms.hv.files import GuestFiles
from ldoms.hv.memory import GuestMemory
from ldoms.hv.proc import own_starttime
from ldoms.hv.workload import Workload, make_workload

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT_S = 2.0  # a client that connects and says nothing must not stall the guest for long

Handler = Callable[["Guest", dict[str, Any]], dict[str, Any]]


class Guest:
    def __init__(self, files: GuestFiles, spec: dict[str, Any]) -> None:
        self.files = files
        self.spec = spec
        self.domain: str = spec["domain"]
        self.vcpus: int = int(spec.get("vcpus", 1))
        self.variables: dict[str, str] = dict(spec.get("variables", {}))
        self.started = time.time()
        self.stopping = False
        self.workload: Workload = make_workload(self.variables)
        self.memory = GuestMemory(
            files.mem, [(int(ra), int(size)) for ra, size in spec["mblocks"]], create=True
        )
        files.ctl.unlink(missing_ok=True)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(files.ctl.name)  # relative: we run inside the guests directory
        os.chmod(files.ctl.name, 0o600)
        self.ctl.listen(8)
        self.ctl.setblocking(False)

    # ------------------------------------------------------------------ control requests
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        handler = HANDLERS.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}: expected one of {', '.join(HANDLERS)}"}
        return handler(self, request)

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
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                try:
                    request = json.loads(data.split(b"\n", 1)[0] or b"null")
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    reply = self.handle(request)
                except ValueError as e:
                    reply = {"ok": False, "error": f"bad request: {e}"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass  # the client went away or stalled: its problem, not the guest's

    # ------------------------------------------------------------------ main loop
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
        self.files.write_pidfile(pid=os.getpid(), starttime=own_starttime(), domain=self.domain)
        next_step: float | None = time.monotonic()
        while not self.stopping:
            timeout = None if next_step is None else max(0.0, next_step - time.monotonic())
            for key, _ in sel.select(timeout):
                if key.data == "ctl":
                    self.serve_one()
                else:
                    try:
                        rsock.recv(256)
                    except BlockingIOError:
                        pass
            if self.stopping:
                break
            if next_step is not None and time.monotonic() >= next_step:
                delay = self.workload.step(self.memory)
                next_step = None if delay is None else time.monotonic() + delay
        sel.close()
        rsock.close()
        wsock.close()

    def close(self) -> None:
        self.ctl.close()
        self.memory.close()


def _ping(guest: Guest, request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "domain": guest.domain, "pid": os.getpid()}


def _status(guest: Guest, request: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": True,
        "domain": guest.domain,
        "pid": os.getpid(),
        "vcpus": guest.vcpus,
        "memory": guest.memory.size,
        "started": guest.started,
        "workload": guest.workload.name,
        "workload_status": guest.workload.status(),
    }


HANDLERS: dict[str, Handler] = {"ping": _ping, "status": _status}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ldoms.hv.guest", description="An LDoms guest (started by ldmd)."
    )
    ap.add_argument("--dir", required=True, help="the host's guests directory")
    ap.add_argument("--domain", required=True, help="the domain this guest runs")
    args = ap.parse_args(argv)
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
