"""A guest launcher that forks guests from a warm interpreter (`python -m ldoms.hv.guest --dir D --zygote`).

Why.  A guest is a Python process that imports numpy and the workloads: starting one takes ~0.2 s of CPU on
this kind of machine (interpreter start and imports).  A live migration's target starts a standby guest
while the pages arrive, and that start competed with the copy for the cores, or (small guests) gated the
switch-over.  Forking an interpreter that has already imported everything takes a few milliseconds.

Theory of operation.  ldmd's `GuestSupervisor` starts one zygote per guests directory on first need.  The
zygote imports the guest code, listens on `D/.zygote-sock` (the directory is ldmd's, mode 0700), and
serves one JSON request per connection: `{"domain": NAME}` -> `{"pid": PID}` or `{"error": TEXT}`.  For a
request it forks twice: the first child forks the guest, which makes its own session, then exits at once, so
the guest is nobody's child (it outlives the zygote and ldmd, exactly like an exec'd guest) and the zygote
reaps only the short-lived middle process.  The guest closes the zygote's sockets, points its standard
streams at `NAME.log` and runs `ldoms.hv.guest.main` for its domain; everything it does from there is what
an exec'd guest does (spec file, memory, control socket, pid file last).

Identity.  A forked guest rewrites the command line it inherited (`... -m ldoms.hv.guest --dir D --zygote
--room ....`, the dots being room to spare) into an exec'd guest's (`... --dir D --domain NAME`, `retitle`),
so `ps`, the supervisor's identity check and its scan see what they would see of an exec'd guest.  Where
the kernel refuses that, the guest keeps the zygote's line: its pid file names it, and (pid, start time)
identifies it (`supervisor._is_our_guest`).
The zygote's own pid is in `D/.zygote-pid`, so a scan never takes it for a guest.  A zygote leaves within a
second of its ldmd (it watches its parent; PR_SET_PDEATHSIG would follow the thread that started it, which
may be a migration's); the guests stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

SOCK_NAME = ".zygote-sock"
PID_NAME = ".zygote-pid"  # not NAME.pid: no domain is called ".zygote"
ROOM = "." * 320  # an argument of the zygote's command line that its guests' own command lines reuse
PARENT_CHECK_S = 1.0  # how often the zygote looks whether its ldmd still runs
MAX_REQUEST = 4096


def valid_domain(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 255 and "/" not in name and name not in (".", "..")


def serve(directory: Path) -> int:
    """The zygote's loop (its process never returns from here except to exit)."""
    parent = os.getppid()
    # The point of the zygote: its children find the guest code imported (the profile's too, which the
    # guest imports late: it brings the checks package).
    import ldoms.hv.guest
    import ldoms.hv.profile  # noqa: F401

    os.chdir(directory)
    Path(SOCK_NAME).unlink(missing_ok=True)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(SOCK_NAME)
    lst.listen(16)
    tmp = Path(PID_NAME + ".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, PID_NAME)  # last: its presence says "ready"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    lst.settimeout(PARENT_CHECK_S)
    while True:
        try:
            conn, _ = lst.accept()
        except TimeoutError:
            if os.getppid() != parent:  # ldmd is gone (its successor starts a zygote of its own)
                return 0
            continue
        conn.settimeout(None)
        with conn:
            conn.settimeout(5.0)
            try:
                answer = _answer(lst, conn, directory)
            except Exception as e:  # a bad request never ends the zygote
                answer = {"error": f"{type(e).__name__}: {e}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")


def _answer(lst: socket.socket, conn: socket.socket, directory: Path) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
        chunk = conn.recv(MAX_REQUEST)
        if not chunk:
            break
        data += chunk
    request = json.loads(data)
    name = request.get("domain") if isinstance(request, dict) else None
    if not valid_domain(name):
        return {"error": f"bad domain name {name!r:.60}"}
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # the middle process: forks the guest and is gone, so the guest is nobody's child
        try:
            os.close(r)
            guest = os.fork()
            if guest == 0:
                os.close(w)
                _run_guest(lst, conn, directory, str(name))  # never returns
            os.write(w, str(guest).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        raw = b""
        while chunk := os.read(r, 64):
            raw += chunk
    finally:
        os.close(r)
        os.waitpid(middle, 0)
    if not raw:
        return {"error": "the guest could not be forked"}
    return {"pid": int(raw)}


def _run_guest(lst: socket.socket, conn: socket.socket, directory: Path, name: str) -> None:
    code = 1
    try:
        os.setsid()  # its own session, as an exec'd guest: signals to ldmd's group never reach it
        lst.close()
        conn.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        log = os.open(f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        from ldoms.hv.guest import main

        args = ["--dir", str(directory), "--domain", name]
        retitle([sys.orig_argv[0], "-m", "ldoms.hv.guest", *args])
        code = main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def retitle(words: list[str]) -> bool:
    """Make this process's command line read `words` (what `ps` and /proc/PID/cmdline show), by rewriting
    the argument area in place through /proc/self/mem; the zygote was started with room to spare
    (`ROOM`).  False when it does not fit or the kernel refuses: the pid file still names the guest."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49: arg_start, arg_end
        data = b"\0".join(os.fsencode(w) for w in words) + b"\0"
        if end <= start or len(data) > end - start:
            return False
        fd = os.open("/proc/self/mem", os.O_RDWR)
        try:
            return os.pwrite(fd, data.ljust(end - start, b"\0"), start) == end - start
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return False
