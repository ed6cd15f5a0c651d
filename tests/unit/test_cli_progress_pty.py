"""`ldm migrate-domain`'s progress bar on a real pseudo-terminal: `run_migrate` runs in a child process whose
stderr is a pty, fed a fake ldmd stream.  A small screen model replays what the terminal received, so the
test sees both what was drawn and what stayed on the screen: the bar while the migration ran, then (the bar
being transient) exactly the lines ldm prints without a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0

CHILD = r"""
import sys
from ldoms.cli import main as cli
from ldoms.cli.parse import parse_args
from ldoms.migration.runstate import Outcome
from ldoms.model.domain import Domain, DomainConfig
from ldoms.model.view import HostView
from ldoms.binding import factory_default
from ldoms.model.platforms import load_platform
from ldoms.ops.base import lookup

FAILED = Outcome(ok=False, exit_code=1, lines=(
    "Unable to bind 2G memory region at real address 0x8000000", "Domain Migration of LDom ldg1 failed"))
EVENTS = [
    {"type": "progress", "percent": 2, "phase": "checks", "round": 0},
    {"type": "progress", "percent": 30, "phase": "precopy", "round": 1, "remaining_bytes": 768 << 20,
     "rate_bytes_s": 1.2e9, "expected_downtime_s": None, "throttle": 0, "bytes_sent": 256 << 20},
    {"type": "progress", "percent": 52, "phase": "precopy", "round": 3, "remaining_bytes": 96 << 20,
     "rate_bytes_s": 1.2e9, "expected_downtime_s": 0.12, "throttle": 20, "bytes_sent": 600 << 20},
    {"type": "progress", "percent": 98, "phase": "final", "round": 4, "remaining_bytes": 0},
]

class Client:
    def __init__(self, outcome, events):
        self.outcome, self.events = outcome, events
    def view(self):
        m = factory_default(load_platform("t5240"), "h1", seed=1)
        ldg1 = Domain(config=DomainConfig(name="ldg1", uuid="u", hostid=1, mac=1))
        return HostView(machine=m.with_domain(ldg1), now=0.0)
    def migrate(self, body):
        yield from self.events
        yield self.outcome.to_json()

mode = sys.argv[1]
outcome = Outcome(ok=True) if mode == "ok" else FAILED
events = EVENTS[:1] if mode == "refused" else EVENTS
words = ["-n", "-c", "ldg1", "h2"] if mode == "dry" else ["-c", "ldg1", "h2"]
op = lookup("migrate-domain")
sys.exit(cli.run_migrate(Client(outcome, events), op, parse_args(op.spec, words), sys.stdout, sys.stderr))
"""


def run_on_pty(mode: str, columns: int = 100) -> tuple[int, bytes]:
    """Run the child on a new pty `columns` wide; its exit status and every byte it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the pty
        env = {**os.environ, "TERM": "xterm", "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}
        env.pop("NO_COLOR", None)
        os.execve(sys.executable, [sys.executable, "-c", CHILD, mode], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    out = b""
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
        else:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out


_CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")


def screen(raw: bytes) -> list[str]:
    """What a terminal shows after `raw`: printable text, CR, LF, cursor up (CSI n A), erase line (CSI 2K),
    cursor show/hide (ignored).  Any other control sequence fails the test: the bar must stay that simple."""
    text = raw.decode()
    lines: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            m = _CSI.match(text, i)
            assert m, f"unexpected escape at {text[i:i + 12]!r}"
            arg, cmd = m.groups()
            if cmd == "A":
                row = max(0, row - int(arg or "1"))
            elif cmd == "K" and arg == "2":
                lines[row] = []
            elif arg not in ("?25",) or cmd not in "lh":
                raise AssertionError(f"unexpected control sequence {m.group(0)!r}")
            i = m.end()
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            if row == len(lines):
                lines.append([])
        else:
            line = lines[row]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    shown = ["".join(line).rstrip() for line in lines]
    while shown and not shown[-1]:
        shown.pop()
    return shown


def drawn(raw: bytes) -> str:
    return _CSI.sub("", raw.decode())


@pytest.mark.parametrize("columns", [130, 60])
def test_the_bar_is_drawn_then_leaves_only_the_failure_lines(columns: int) -> None:
    status, raw = run_on_pty("fail", columns)
    assert status == 1
    text = drawn(raw)
    assert "52%  precopy round 3" in text and "98%  final round 4" in text
    assert " 2%" not in text  # the checks show no bar
    if columns == 130:
        assert "ldg1 → h2" in text and "downtime ~120ms  throttle 20%" in text and "1.1G/s" in text
    for line in text.replace("\r", "\n").splitlines():
        assert len(line) <= columns  # never wraps
    assert screen(raw) == [
        "Unable to bind 2G memory region at real address 0x8000000",
        "Domain Migration of LDom ldg1 failed",
    ]


def test_success_leaves_a_clean_terminal() -> None:
    status, raw = run_on_pty("ok")
    assert status == 0
    assert "52%  precopy round 3" in drawn(raw)
    assert screen(raw) == []  # LDoms is silent on success
    assert raw.rstrip(b"\r\n").endswith(b"\x1b[2K") and b"\x1b[?25h" in raw  # erased, cursor shown again


@pytest.mark.parametrize("mode", ["refused", "dry"])
def test_refusals_in_the_checks_and_dry_runs_draw_nothing(mode: str) -> None:
    status, raw = run_on_pty(mode)
    assert b"\x1b" not in raw  # no bar, not even a hidden cursor
    if mode == "refused":
        assert status == 1
        assert raw.decode().splitlines() == [
            "Unable to bind 2G memory region at real address 0x8000000",
            "Domain Migration of LDom ldg1 failed",
        ]
    else:
        assert status == 1 and raw.decode().replace("\r\n", "\n").endswith("failed\n")
