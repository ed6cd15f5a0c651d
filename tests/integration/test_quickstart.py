"""The README's first command, `bash scripts/quickstart.sh`, end to end: in a temporary copy of the scripts
(its homes, password and logs land there, on two free loopback ports), run twice (it must be idempotent),
the second time on a pseudo-terminal (the progress bar shows), then `--stop`, which must leave no process
behind.  The copy shares the project's virtualenv, so the code under test is this tree's."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Reaper, processes_mentioning
from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
RUN_DEADLINE_S = 120.0  # "well under a minute" on an idle machine; generous for a loaded 2-core one


def demo_copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(ROOT / "scripts", repo / "scripts")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / ".venv").symlink_to(VENV)
    return repo


def environment(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LDM_HOME", "LDOMS_DEMO_DIR")}
    env["LDOMS_DEMO_PORTS"] = f"{free_port()} {free_port()}"
    env["PATH"] = f"{VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def on_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execvpe(argv[0], argv, {**env, "TERM": "xterm", "COLUMNS": "100"})
    out = b""
    deadline = time.monotonic() + RUN_DEADLINE_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        else:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace").replace("\r\n", "\n")


def check_transcript(out: str) -> None:
    steps = [line for line in out.splitlines() if line.startswith("== ")]
    assert [s.split(".")[0] for s in steps] == [f"== {n}" for n in range(1, 8)], steps
    after = out.split("== 6.", 1)[1]
    host1, rest = after.split("host2$ ldm list\n", 1)
    assert "\nldg1 " not in host1  # gone from the source ...
    host2 = rest.split("host1$ ldm list-migrations", 1)[0]
    assert any(line.startswith("ldg1 ") and " active " in line for line in host2.splitlines())  # ... here
    assert after.count("STARTED              DOMAIN") == 2  # both hosts' migration history
    assert "ledger of LDom ldg1: consistent after" in out
    assert "the guest itself measured a pause of" in out
    assert "bash scripts/quickstart.sh --stop" in out


@pytest.mark.timeout(600)
def test_quickstart_runs_twice_then_stops(tmp_path: Path, reaper: Reaper) -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    setup_stamp = VENV / f".installed-{digest[:16]}"
    if not setup_stamp.exists():  # the copy would otherwise reinstall the project into this virtualenv
        pytest.skip("the virtualenv was not made by scripts/setup.sh (run it first)")
    repo = demo_copy(tmp_path)
    demo = reaper.watch(repo / "demo-hosts")
    env = environment(repo)

    r = subprocess.run(
        ["bash", "scripts/quickstart.sh"], cwd=repo, env=env, capture_output=True, text=True,
        timeout=RUN_DEADLINE_S, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_transcript(r.stdout)
    assert "\x1b" not in r.stdout + r.stderr  # not a terminal: no bar, no escape sequence
    migrate = r.stdout.split("host1$ ldm migrate-domain", 1)[1].splitlines()
    assert migrate[1].startswith("(migrate-domain took")  # LDoms is silent on success

    status, shown = on_terminal(["bash", "scripts/quickstart.sh"], env, repo)  # again: idempotent
    assert status == 0, shown[-3000:]
    check_transcript(shown)
    assert "ldg1 → host2" in shown and "%" in shown.split("host1$ ldm migrate-domain", 1)[1]  # the bar

    r = subprocess.run(
        ["bash", "scripts/quickstart.sh", "--stop"], cwd=repo, env=env, capture_output=True, text=True,
        timeout=RUN_DEADLINE_S,
    )  # fmt: skip
    assert r.returncode == 0 and "are stopped" in r.stdout, r.stderr
    assert processes_mentioning([demo.resolve()]) == []  # every ldmd and guest is gone
    r = subprocess.run(
        ["bash", "scripts/quickstart.sh", "--stop"], cwd=repo, env=env, capture_output=True, text=True,
        timeout=RUN_DEADLINE_S,
    )  # fmt: skip
    assert r.returncode == 0  # stopping twice is fine


def test_quickstart_refuses_unknown_arguments(tmp_path: Path) -> None:
    repo = demo_copy(tmp_path)
    r = subprocess.run(["bash", "scripts/quickstart.sh", "--bogus"], cwd=repo, capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 2 and "usage: bash scripts/quickstart.sh [--stop]" in r.stderr
