"""`ldm migrate-domain` between two real ldmd hosts on 127.0.0.1 (different ports), driven only through the
`ldm` and `ldmd` executables: the seed example through a terminal, active/bound/inactive moves, dry runs,
every refusal, listings and locks during a migration, cancelling (by command and by killing ldm), and the
error state after a link lost at the hand-over.  Waiting is polling with a deadline; every process is killed
at teardown (the `reaper`)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.integration.conftest import DEADLINE_S, LDM, LdmHost, pid_alive, wait_for

USER, PASSWORD = "alice", "s3cret pass"
TARGET = "dt212-239"
TRAILER = "Domain Migration of LDom {} failed"


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Variables the next started process inherits (ldmd test hooks)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def hooks_env(**doc: object) -> dict[str, str]:
    return {"LDMD_TEST_HOOKS": json.dumps(doc)}


def fingerprint(host: LdmHost) -> str:
    out = host.run_ldmd("tls", "show").stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("fingerprint:"))


def make_room(h: LdmHost, primary_memory: str = "4G") -> None:
    for words in (
        ("set-crypto", "0", "primary"),
        ("set-vcpu", "8", "primary"),
        ("set-memory", primary_memory, "primary"),
        ("stop-domain", "primary"),
        ("add-vcc", "port-range=5000-5100", "primary-vcc0", "primary"),
    ):
        h.ldm(*words)


@dataclass
class Pair:
    src: LdmHost
    dst: LdmHost
    pwfile: Path

    def migrate(self, *words: str, ok: bool = False) -> subprocess.CompletedProcess[str]:
        return self.src.ldm("migrate-domain", *words, ok=ok)

    def snapshot(self) -> tuple[str, ...]:
        """What must not change when a migration fails: domains, bindings, free resources, both hosts (the
        clock-driven UTIL and UPTIME fields aside)."""
        out = []
        for h in (self.src, self.dst):
            for words in (("ls", "-l", "-p"), ("ls-bindings", "-p"), ("ls-devices", "-a", "-p")):
                out.append(re.sub(r"\|(util|uptime|norm-util)=[^|\n]*", "", h.ldm(*words).stdout))
        return tuple(out)

    def flags(self, host: LdmHost, name: str) -> str:
        return host.parseable(name)["flags"]


def make_pair(
    hosts: Callable[..., LdmHost],
    tmp_path: Path,
    *,
    src_env: dict[str, str] | None = None,
    dst_env: dict[str, str] | None = None,
    src_primary_memory: str = "4G",
    room: bool = True,
) -> Pair:
    src, dst = hosts("src"), hosts(TARGET)
    with environment(**(src_env or {})):
        src.start_ldmd(wait=False)
    with environment(**(dst_env or {})):
        dst.start_ldmd(wait=False)
    src.wait_ready()
    dst.wait_ready()
    pwfile = tmp_path / "password"
    pwfile.write_text(PASSWORD + "\n")
    pwfile.chmod(0o600)
    assert dst.run_ldmd("user", "add", USER, "--password-file", str(pwfile)).returncode == 0
    r = src.run_ldmd("peer", "add", TARGET, f"127.0.0.1:{dst.port}", "--fingerprint", fingerprint(dst))
    assert r.returncode == 0, r.stderr
    if room:
        make_room(src, src_primary_memory)
        make_room(dst)
    return Pair(src=src, dst=dst, pwfile=pwfile)


def add_guest(
    h: LdmHost, name: str, *, memory: str = "256M", state: str = "active", **variables: str
) -> None:
    h.ldm("add-domain", name)
    h.ldm("add-vcpu", "8", name)
    h.ldm("add-memory", memory, name)
    if variables:
        h.ldm("set-variable", *(f"{k}={v}" for k, v in variables.items()), name)
    if state in ("bound", "active"):
        h.ldm("bind-domain", name)
    if state == "active":
        h.ldm("start-domain", name)


# ------------------------------------------------------------------------------------- the seed example
def run_in_terminal(argv: list[str], answer: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `argv` on a new pseudo-terminal and type `answer` at the password prompt: (status, what showed)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal (getpass reads /dev/tty)
        os.execve(argv[0], argv, env)
    out = b""
    answered = False
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if not answered and b"Target Password:" in out:
                    os.write(fd, answer.encode() + b"\n")
                    answered = True
        else:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace").replace("\r\n", "\n")


def test_seed_example_through_a_terminal(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    # Source: primary keeps 8G from 0x4000000, so ldg-src's 2G lands at RA 0x8000000, PA 0x208000000.
    p = make_pair(hosts, tmp_path, src_primary_memory="8G")
    add_guest(p.src, "ldg-src", memory="2G")
    assert "0x8000000        0x208000000      2G" in p.src.ldm("ls-bindings", "ldg-src").stdout
    # Target: primary holds [0x4000000, 0x104000000); named blocks leave exactly 0x108000000 1G and
    # 0x188000000 1G free (SPEC 3.1, the 1.2 memory example).
    for name, mblock in (("f1", "0x104000000:64M"), ("f2", "0x148000000:1G"), ("f3", "0x1c8000000:25472M")):
        p.dst.ldm("add-domain", name)
        p.dst.ldm("add-vcpu", "1", name)
        p.dst.ldm("add-memory", f"mblock={mblock}", name)
        p.dst.ldm("bind-domain", name)
    free = p.dst.ldm("ls-devices", "memory").stdout
    assert "0x108000000          1G" in free and "0x188000000          1G" in free and free.count("G\n") == 2
    before = p.snapshot()
    env = {**os.environ, "LOGNAME": USER, "USER": USER}  # the invoking user is the default target login
    status, shown = run_in_terminal([LDM, "--home", str(p.src.home), "migrate-domain", "ldg-src", TARGET],
                                    PASSWORD, env)  # fmt: skip
    assert shown == (
        "Target Password: \n"
        "Unable to bind 2G memory region at real address 0x8000000\n"
        "Domain Migration of LDom ldg-src failed\n"
    )
    assert status == 1
    assert p.snapshot() == before


# ------------------------------------------------------------------------------------------ migrations
def test_active_migration_renamed_keeps_every_page(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    from ldoms.hv.control import GuestControl
    from ldoms.hv.files import GuestFiles

    p = make_pair(hosts, tmp_path)
    add_guest(p.src, "ldg1", **{"ldoms-workload": "ledger", "ldoms-dirty-rate": "20M"})
    xml = p.src.ldm("ls-constraints", "-x", "ldg1").stdout
    src_pid = p.src.guest_pid("ldg1")
    assert src_pid is not None
    assert p.migrate("-n", "-p", str(p.pwfile), "ldg1", f"{USER}@{TARGET}:ldg2").returncode == 0
    r = p.migrate("-p", str(p.pwfile), "ldg1", f"{USER}@{TARGET}:ldg2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert "ldg1" not in p.src.ldm("ls").stdout
    wait_for("the source's guest killed", lambda: not pid_alive(src_pid))  # SIGKILLed, not waited for
    moved = p.dst.parseable("ldg2")
    assert moved["state"] == "active" and moved["flags"] == "-n----"
    assert p.dst.ldm("ls-constraints", "-x", "ldg2").stdout == xml.replace(
        "<ldom_name>ldg1</ldom_name>", "<ldom_name>ldg2</ldom_name>"
    )  # uuid, hostid, MAC, variables: everything that defines the domain travelled
    answer = GuestControl(GuestFiles(p.dst.home / "guests", "ldg2"), timeout=10).verify(timeout=60)
    assert answer["consistent"], answer["problems"]  # the ledger proves no page was lost or torn


def test_bound_and_inactive_domains_and_dry_runs(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    p = make_pair(hosts, tmp_path)
    add_guest(p.src, "ldg-b", state="bound")
    add_guest(p.src, "ldg-i", state="inactive")
    pw = ("-p", str(p.pwfile))
    for name in ("ldg-b", "ldg-i"):
        r = p.migrate("-n", *pw, name, f"{USER}@{TARGET}")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")  # would succeed: silence
        r = p.migrate(*pw, name, f"{USER}@{TARGET}")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert p.dst.parseable("ldg-b")["state"] == "bound" and p.dst.parseable("ldg-i")["state"] == "inactive"
    assert "ldg-b" not in p.src.ldm("ls").stdout and "ldg-i" not in p.src.ldm("ls").stdout
    # A failing dry run: every problem, one line each, then the dry-run trailer; --json for scripts.
    add_guest(p.src, "ldg-b", state="bound")
    before = p.snapshot()
    r = p.migrate("-n", *pw, "ldg-b", f"{USER}@{TARGET}")
    assert r.returncode == 1
    assert (
        r.stderr.splitlines()
        == [
            f"LDom ldg-b already exists on {TARGET}: the migrated domain needs an unused name",
            f"Console group ldg-b is already used by LDom ldg-b on {TARGET}: the migrated domain's console "
            "group is its name",
            "Domain Migration of LDom ldg-b would fail if attempted",
        ]
        or r.stderr.splitlines()[-1] == "Domain Migration of LDom ldg-b would fail if attempted"
    )
    doc = json.loads(p.migrate("-n", "--json", *pw, "ldg-b", f"{USER}@{TARGET}").stdout)
    assert doc["would_succeed"] is False and doc["domain"] == "ldg-b"
    first = doc["problems"][0]
    assert first["code"] == "name-in-use" and first["side"] == "target" and first["remedy"]
    assert p.snapshot() == before


# ----------------------------------------------------------------------------------------- refusals
def test_every_refusal_is_one_clear_line_and_changes_nothing(
    hosts: Callable[..., LdmHost], tmp_path: Path
) -> None:
    p = make_pair(hosts, tmp_path)
    add_guest(p.src, "ldg1", state="bound")
    port = p.dst.port
    closed = __import__("tests.integration.conftest", fromlist=["free_port"]).free_port()
    assert p.src.run_ldmd("peer", "add", "nopin", f"127.0.0.1:{port}").returncode == 0
    assert p.src.run_ldmd("peer", "add", "down", f"127.0.0.1:{closed}").returncode == 0
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    wrong.chmod(0o600)
    empty = tmp_path / "empty"
    empty.write_text("")
    empty.chmod(0o600)
    open_ = tmp_path / "open"
    open_.write_text("x\n")
    open_.chmod(0o644)
    pw = str(p.pwfile)
    before = p.snapshot()
    cases: list[tuple[tuple[str, ...], int, list[str]]] = [
        (("-p", str(wrong), "ldg1", f"{USER}@{TARGET}"), 3,
         [f"Authentication failed for user {USER} on target host {TARGET}: wrong password", TRAILER]),
        (("-p", pw, "ldg1", f"bob@{TARGET}"), 3,
         [f"Authentication failed for user bob on target host {TARGET}: unknown user", TRAILER]),
        (("-p", pw, "ldg1", f"{USER}@nopin"), 1, ["is not trusted: no pin is recorded", TRAILER]),
        (("-p", pw, "ldg1", f"{USER}@down"), 1, ["connection refused", TRAILER]),
        (("-p", pw, "ldg1", f"{USER}@no-such-host.invalid"), 1, ["cannot resolve host name", TRAILER]),
        (("-p", pw, "nosuch", f"{USER}@{TARGET}"), 1, ["LDom nosuch not found"]),
        (("-p", pw, "ldg1", f"@{TARGET}"), 2, ["the user name before '@' is empty"]),
        (("-p", pw, "ldg1", f"{USER}@"), 2, ["the target host is missing"]),
        (("-p", pw, "ldg1", f"{TARGET}:"), 2, ["the target domain name after ':' is empty"]),
        (("-p", pw, "ldg1", f"{TARGET}:9x"), 2, ["'9x' is not a valid LDom name"]),
        (("-c", "ldg1", f"{USER}@{TARGET}"), 2, ["no user may be given"]),
        (("-p", str(tmp_path / "missing"), "ldg1", TARGET), 2, ["does not exist"]),
        (("-p", str(empty), "ldg1", TARGET), 2, ["is empty"]),
        (("-p", str(open_), "ldg1", TARGET), 2, ["must not be accessible by group or others"]),
    ]  # fmt: skip
    for words, code, wanted in cases:
        r = p.migrate(*words)
        lines = r.stderr.splitlines()
        assert r.returncode == code, (words, r.stderr)
        assert len(lines) == len(wanted), (words, lines)
        for line, want in zip(lines, wanted, strict=True):
            assert want.format("ldg1") in line, (words, line)
        assert r.stdout == ""
    assert p.snapshot() == before


def test_a_target_that_refuses_migrations(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    p = make_pair(hosts, tmp_path, room=False)
    p.dst.term()
    p.dst.start_ldmd("--no-incoming-migrations", first=False)
    add_guest(p.src, "ldg1", state="inactive")
    r = p.migrate("-p", str(p.pwfile), "ldg1", f"{USER}@{TARGET}")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"Target host {TARGET} refuses the migration: its ldmd does not accept incoming migrations (it runs "
        "with --no-incoming-migrations)",
        TRAILER.format("ldg1"),
    ]


# ------------------------------------------------------------------------------------- while it runs
def paused_pair(hosts: Callable[..., LdmHost], tmp_path: Path) -> Pair:
    p = make_pair(hosts, tmp_path, src_env=hooks_env(pause={"source:transfer": 60}))
    add_guest(p.src, "ldg1")
    add_guest(p.src, "other", state="inactive")
    return p


def start_migration(p: Pair) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [LDM, "--home", str(p.src.home), "migrate-domain", "-p", str(p.pwfile), "ldg1", f"{USER}@{TARGET}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for("the target's shell", lambda: "ldg1" in p.dst.ldm("ls").stdout)
    return proc


def test_listings_locks_and_cancel_operation(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    p = paused_pair(hosts, tmp_path)
    before = p.snapshot()
    proc = start_migration(p)
    try:
        assert p.flags(p.src, "ldg1") == "-n---s" and p.flags(p.dst, "ldg1") == "-----t"
        status = p.src.ldm("ls", "-o", "status", "ldg1").stdout
        assert "STATUS" in status and "TARGET" in status and TARGET in status
        status = p.dst.ldm("ls", "-p", "-o", "status", "ldg1").stdout
        assert "|op=migration|" in status and "|error=no|source=src" in status
        for host, words, why in (
            (p.src, ("bind-domain", "other"), "Cannot bind while a migration of LDom ldg1 is in progress"),
            (p.src, ("stop-domain", "primary"), "Cannot stop while a migration of LDom ldg1 is in progress"),
            (p.src, ("set-vcpu", "4", "ldg1"), "LDom ldg1 is being migrated"),
            (
                p.src,
                ("set-memory", "2G", "primary"),
                "Cannot start a delayed reconfiguration of LDom primary",
            ),
            (p.dst, ("cancel-operation", "migration", "ldg1"), "can only be cancelled on the source machine"),
            (p.src, ("migrate", "-p", str(p.pwfile), "ldg1", TARGET), "LDom ldg1 is already being migrated"),
        ):
            r = host.ldm(*words, ok=False)
            assert r.returncode == 1 and why in r.stderr, (words, r.stderr)
        r = p.src.ldm("cancel-operation", "migration", "ldg1")
        assert r.stdout == "Migration of LDom ldg1 cancelled\n"
        out, err = proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == 1 and out == ""
        assert err.splitlines() == [
            "Migration of LDom ldg1 cancelled: cancelled by the administrator "
            "(ldm cancel-operation migration)",
            TRAILER.format("ldg1"),
        ]
    finally:
        proc.kill()
        proc.wait()
    wait_for("both hosts as before", lambda: p.snapshot() == before)


def test_killing_ldm_cancels_the_migration(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    p = paused_pair(hosts, tmp_path)
    before = p.snapshot()
    proc = start_migration(p)
    proc.kill()  # SIGKILL (SPEC 2.7): the target is destroyed, the source resumes
    proc.wait()
    wait_for("both hosts as before", lambda: p.snapshot() == before)
    assert "ldg1" not in p.dst.ldm("ls").stdout


# ------------------------------------------------------------------------------------ the error state
# ldmd settles the error state by itself once the target answers; these tests take the admin's path.
NO_AUTO_RECOVERY = hooks_env(pause={"source:auto-recovery": 600})


def test_link_lost_at_the_hand_over_then_the_target_kept_it(
    hosts: Callable[..., LdmHost], tmp_path: Path
) -> None:
    p = make_pair(hosts, tmp_path, src_env=NO_AUTO_RECOVERY, dst_env=hooks_env(drop=["target:resumed"]))
    add_guest(p.src, "ldg1")
    src_pid = p.src.guest_pid("ldg1")
    r = p.migrate("-p", str(p.pwfile), "ldg1", f"{USER}@{TARGET}")
    assert r.returncode == 1 and "left in the error state" in r.stderr
    assert p.flags(p.src, "ldg1") == "-n---e"
    assert "|error=yes|target=" in p.src.ldm("ls", "-p", "-o", "status", "ldg1").stdout
    assert p.dst.parseable("ldg1")["state"] == "active"  # the target held it complete: it kept it
    r = p.src.ldm("cancel-operation", "migration", "ldg1")
    assert (
        r.stdout
        == f"LDom ldg1 runs on {TARGET}: its migration had completed, so the copy on this host was removed\n"
    )
    assert "ldg1" not in p.src.ldm("ls").stdout
    assert src_pid is not None
    wait_for("the source's guest killed", lambda: not pid_alive(src_pid))


def test_target_crash_before_it_held_the_domain(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    p = make_pair(
        hosts, tmp_path, src_env=NO_AUTO_RECOVERY, dst_env=hooks_env(crash=["target:received:FinalState"])
    )
    add_guest(p.src, "ldg1")
    src_pid = p.src.guest_pid("ldg1")
    r = p.migrate("-p", str(p.pwfile), "ldg1", f"{USER}@{TARGET}")
    assert r.returncode == 1 and "left in the error state" in r.stderr
    assert p.dst.proc is not None and p.dst.proc.wait(timeout=DEADLINE_S) == 70
    assert p.flags(p.src, "ldg1") == "-n---e"
    p.dst.start_ldmd(first=False)  # its journal says the final state never arrived: the shell goes
    assert "ldg1" not in p.dst.ldm("ls").stdout
    r = p.src.ldm("cancel-operation", "migration", "ldg1")
    assert (
        r.stdout
        == f"Migration of LDom ldg1 cancelled: {TARGET} did not keep it; this copy is the master again\n"
    )
    assert p.flags(p.src, "ldg1") == "-n----" and p.src.guest_pid("ldg1") == src_pid
    from ldoms.hv.control import GuestControl
    from ldoms.hv.files import GuestFiles

    assert GuestControl(GuestFiles(p.src.home / "guests", "ldg1")).status()["suspended"] is False
