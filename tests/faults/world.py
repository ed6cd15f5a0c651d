"""The fault matrix's world: two ldmd hosts, `src` and the target `dt212-239`, each in its own network
namespace, joined by a veth pair and reused by every cell.

Theory of operation.  Both daemons always run with the same `LDMD_TEST_HOOKS`: a `hold` at every point the
matrix uses, each released by its own file under `gates/` (the file exists: the gate is open), and the
matrix's deadlines (`POLICY`: short enough that a cut link is noticed within seconds, long enough for a
loaded 2-core machine).  A cell arms one gate (removes its file), starts `ldm migrate-domain`, waits for the
daemon's log to say it holds there, injects its fault, opens the gate.  So a cell needs no daemon restart
unless its fault killed one (restarted with the same home, as an admin would).

`ldm` verbs run in-process (`ldoms.cli.main.main` with its output captured: the same code as the `ldm`
executable, without an interpreter start per command); `ldm migrate-domain` and `ldm cancel-operation` run as
real processes, since the matrix kills or waits on them.

Between cells the world is checked back to its empty state (no guest, both snapshots as when it was built);
`reset()` builds a new pair of homes when that fails, so one broken cell does not break the next.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ldoms.cli.main import main as ldm_main
from ldoms.hv.control import GuestControl
from ldoms.hv.files import GuestFiles
from ldoms.hv.supervisor import GuestSupervisor
from tests.conftest import kill_processes_mentioning
from tests.faults.netns import IP, VethLink, start_in
from tests.integration.conftest import LDM, LDMD, LdmHost, wait_for
from tests.integration.test_migrate_e2e import PASSWORD, TARGET, USER, fingerprint, make_room

GUEST = "ldg1"
MEMORY = "64M"
LEDGER = {"ldoms-workload": "ledger", "ldoms-dirty-rate": "64M"}
# A downtime budget of 1 ms over the resume overhead: the ledger's first round leaves more dirty pages than
# that (at 64M/s, even when the first round takes only 30 ms: 2M, 2 ms at 1 GB/s; at 20M/s a fast first
# round left less), so every migration has at least two pre-copy rounds before its final one.
KNOBS = ("max-downtime=21ms",)
POLICY = {
    "connect_s": 10, "check_s": 10, "prepare_s": 10, "handoff_ack_s": 10, "transfer_idle_s": 10,
    "farewell_drain_s": 2, "cancel_wait_s": 30, "recovery_retry_min_s": 0.2, "recovery_retry_max_s": 1,
}  # fmt: skip
PORT = 6482
WAIT_S = 60.0  # the longest any one step of a cell may take before the cell fails as a hang


class FaultHost(LdmHost):
    """An `LdmHost` whose ldmd runs in a namespace and whose `ldm` runs in-process."""

    def __init__(self, home: Path, name: str, ns: str, address: str) -> None:
        super().__init__(home, name, "t5240")
        self.ns = ns
        self.address = address
        self.log_mark = 0

    def ldm(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = ldm_main(["--home", str(self.home), *args])
        r = subprocess.CompletedProcess(["ldm", *args], code, out.getvalue(), err.getvalue())
        if ok and code != 0:
            raise AssertionError(f"ldm {' '.join(args)} on {self.name} exited {code}: {r.stderr.strip()}")
        return r

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """The daemon's log since `mark()` (the current cell)."""
        try:
            with open(self.home / "ldmd.log", "rb") as f:
                f.seek(self.log_mark)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> None:
        try:
            self.log_mark = (self.home / "ldmd.log").stat().st_size
        except FileNotFoundError:
            self.log_mark = 0

    def domains(self) -> dict[str, dict[str, str]]:
        """Every domain's record of `ldm ls -p` (one listing: no domain comes or goes between two reads)."""
        out = {}
        for line in self.ldm("ls", "-p").stdout.splitlines():
            if line.startswith("DOMAIN|"):
                rec = dict(kv.split("=", 1) for kv in line.split("|")[1:] if "=" in kv)
                out[rec["name"]] = rec
        return out

    def lists(self, name: str = GUEST) -> bool:
        return name in self.domains()

    def flags(self, name: str = GUEST) -> str | None:
        rec = self.domains().get(name)
        return None if rec is None else rec["flags"]

    def snapshot(self) -> tuple[str, ...]:
        """Domains, bindings and free resources (the clock-driven UTIL and UPTIME fields aside)."""
        return tuple(
            re.sub(r"\|(util|uptime|norm-util)=[^|\n]*", "", self.ldm(*words).stdout)
            for words in (("ls", "-l", "-p"), ("ls-bindings", "-p"), ("ls-devices", "-a", "-p"))
        )

    def control(self, name: str = GUEST) -> GuestControl:
        return GuestControl(GuestFiles(self.home / "guests", name), timeout=10)

    def leftovers(self, name: str = GUEST) -> list[str]:
        """Files of `name` on this host: its guest files, images set aside for scrubbing, staged images (its
        guest's stderr log aside: a log, kept like any other)."""
        found = []
        guests = self.home / "guests"
        if guests.is_dir():
            found += [
                p.name
                for p in guests.iterdir()
                if p.name.startswith((f"{name}.", f".{name}.")) and p.name != f"{name}.log"
            ]
        found += [str(p.relative_to(self.home)) for p in self.home.rglob("*.image")]  # staged images
        return sorted(found)


def guest_processes(home: Path, name: str = GUEST) -> list[int]:
    """Pids of live guest processes of `name` whose guests directory is in `home`: the supervisor's own scan
    of /proc (a forked guest may carry its launcher's command line: its pid file names it then)."""
    return sorted(rec.pid for rec in GuestSupervisor(home / "guests").scan() if rec.domain == name)


@dataclass
class Migration:
    """One `ldm migrate-domain` process, and what it said once it ended."""

    proc: subprocess.Popen[str]
    code: int | None = None
    stdout: str = ""
    stderr: str = ""

    def wait(self, timeout: float = WAIT_S) -> int:
        if self.code is None:
            try:
                self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"ldm migrate-domain still runs after {timeout:g} s: a hang") from None
            self.code = self.proc.returncode
        return self.code

    def kill(self) -> None:
        self.proc.kill()
        self.wait()


class World:
    def __init__(self, root: Path, link: VethLink, points: Sequence[str]) -> None:
        self.root = root
        self.link = link
        self.points = tuple(points)
        self.gates = root / "gates"
        self.gates.mkdir(parents=True, exist_ok=True)
        self.generation = 0
        self.mounted: Path | None = None
        self.src: FaultHost
        self.dst: FaultHost
        self.empty: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self.open_gates()

    # ------------------------------------------------------------------ the hosts
    def hooks(self) -> dict[str, str]:
        hold = {p: str(self.gate(p)) for p in self.points}
        return {"LDMD_TEST_HOOKS": json.dumps({"hold": hold, "policy": POLICY})}

    def build(self) -> None:
        """Two fresh hosts (new homes), a user on the target, the target pinned on the source, room made."""
        self.generation += 1
        base = self.root / f"w{self.generation}"
        base.mkdir(parents=True)
        self.src = FaultHost(base / "src", "src", self.link.ns_a, self.link.ip_a)
        self.dst = FaultHost(base / TARGET, TARGET, self.link.ns_b, self.link.ip_b)
        both([lambda h=h: start_in(h.ns, h, f"{h.address}:{PORT}", self.hooks()) for h in self.hosts])
        self.pwfile = base / "password"
        self.pwfile.write_text(PASSWORD + "\n")
        self.pwfile.chmod(0o600)
        assert self.dst.run_ldmd("user", "add", USER, "--password-file", str(self.pwfile)).returncode == 0
        argv = [IP, "netns", "exec", self.src.ns, LDMD, "--home", str(self.src.home), "peer", "add", TARGET,
                self.dst.address, "--fingerprint", fingerprint(self.dst)]  # fmt: skip
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        for h in self.hosts:
            make_room(h)
        self.empty = (self.src.snapshot(), self.dst.snapshot())

    @property
    def hosts(self) -> tuple[FaultHost, FaultHost]:
        return self.src, self.dst

    def start(self, h: FaultHost) -> None:
        """(Re)start `h`'s ldmd with the same home, as an admin would after a crash."""
        start_in(h.ns, h, env=self.hooks())

    def stop(self, h: FaultHost) -> None:
        if h.alive():
            assert h.proc is not None
            h.proc.terminate()
            try:
                h.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                h.kill9()

    def close(self) -> None:
        for h in (getattr(self, "src", None), getattr(self, "dst", None)):
            if h is not None and h.alive():
                h.kill9()
        kill_processes_mentioning([self.root.resolve()])  # guests too
        self.unmount(restart=False)

    # ------------------------------------------------------------------ gates (the hold hooks)
    def gate(self, point: str) -> Path:
        return self.gates / point.replace(":", "_")

    def open_gates(self) -> None:
        for p in self.points:
            self.gate(p).touch()

    def arm(self, point: str) -> None:
        self.gate(point).unlink(missing_ok=True)

    def wait_held(self, h: FaultHost, point: str, mig: Migration) -> None:
        def held() -> bool:
            if f"holding at {point} until" in h.log():
                return True
            if mig.proc.poll() is not None:
                mig.wait()
                tail = " | ".join(h.log().splitlines()[-8:])
                raise AssertionError(
                    f"the migration ended (ldm exited {mig.code}) before it reached {point}: "
                    f"{mig.stderr.strip()}; {h.name}'s log: {tail}"
                )
            return False

        wait_for(f"{h.name} to hold at {point}", held, WAIT_S)

    # ------------------------------------------------------------------ the guest and its migration
    def add_guest(self, *, swept: bool = False) -> None:
        """The ledger guest, running on the source.  `swept`: wait until the ledger has written every page
        once, so that its image holds no hole (the target then allocates all of it during the copy)."""
        h = self.src
        h.ldm("add-domain", GUEST)
        h.ldm("add-vcpu", "8", GUEST)
        h.ldm("add-memory", MEMORY, GUEST)
        h.ldm("set-variable", *(f"{k}={v}" for k, v in LEDGER.items()), GUEST)
        h.ldm("bind-domain", GUEST)
        h.ldm("start-domain", GUEST)
        if swept:
            st = h.control().status()
            pages = int(st["pages"])
            per_step = int(st["workload_status"].get("pages_per_step", 4))
            wait_for(
                "the ledger to write every page",
                lambda: h.control().status()["steps"] * per_step >= pages,
                WAIT_S,
            )

    def remove_guest(self, h: FaultHost) -> None:
        if not h.lists():
            return
        if h.parseable(GUEST)["state"] == "active":
            h.ldm("stop-domain", "-f", GUEST)
        if h.parseable(GUEST)["state"] == "bound":
            h.ldm("unbind-domain", GUEST)
        h.ldm("remove-domain", GUEST)

    def start_migration(self) -> Migration:
        argv = [LDM, "--home", str(self.src.home), "migrate-domain", "-p", str(self.pwfile), *KNOBS, GUEST,
                f"{USER}@{TARGET}"]  # fmt: skip
        return Migration(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))  # fmt: skip

    def start_cancel(self) -> subprocess.Popen[str]:
        argv = [LDM, "--home", str(self.src.home), "cancel-operation", "migration", GUEST]
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    # ------------------------------------------------------------------ a full disk on the target
    def mount_target_tmpfs(self, size: str = "96m") -> None:
        """A small tmpfs over the target's guests directory.  The target's ldmd is restarted around it:
        `ip netns exec` gave it a mount namespace of its own, which sees only the mounts made before it
        started (they then share the same tmpfs with this process)."""
        guests = self.dst.home / "guests"
        guests.mkdir(mode=0o700, exist_ok=True)
        self.stop(self.dst)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(guests)],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
        if r.returncode == 0:
            self.mounted = guests
        self.start(self.dst)
        if r.returncode != 0:
            raise AssertionError(f"cannot mount a small tmpfs over {guests}: {r.stderr.strip()}")

    def fill_target_disk(self) -> None:
        """Take every free block of the target's guests filesystem (a filler file, written until ENOSPC)."""
        assert self.mounted is not None
        chunk = b"\xa5" * (1 << 20)
        with open(self.mounted / "filler", "ab", buffering=0) as f:
            for size in (1 << 20, 1 << 12):
                with contextlib.suppress(OSError):
                    for _ in range(4096):  # bounded: the tmpfs is far smaller than 4 GiB
                        f.write(chunk[:size])
        st = os.statvfs(self.mounted)
        assert st.f_bavail == 0, f"{self.mounted} still has {st.f_bavail} free blocks"

    def unmount(self, *, restart: bool = True) -> None:
        """Remove the tmpfs (the target's ldmd restarted around it, see `mount_target_tmpfs`)."""
        if self.mounted is None:
            return
        self.stop(self.dst)
        (self.mounted / "filler").unlink(missing_ok=True)
        r = subprocess.run(["umount", str(self.mounted)], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(self.mounted)], capture_output=True, timeout=30)
        self.mounted = None
        if restart:
            self.start(self.dst)

    # ------------------------------------------------------------------ between cells
    def reset(self) -> None:
        """Back to the empty world (both daemons serving, all gates open, plain link, no guest), or a new
        one when that cannot be had."""
        self.open_gates()
        self.link.clear()
        try:
            for h in self.hosts:
                if not h.alive():
                    self.start(h)
            for h in self.hosts:
                self.remove_guest(h)
            self.unmount()
            wait_for("the empty world", lambda: (self.src.snapshot(), self.dst.snapshot()) == self.empty, 10)
            wait_for("no guest files left", lambda: not any(h.leftovers() for h in self.hosts), 10)
        except AssertionError:
            self.close()
            self.build()
        for h in self.hosts:
            h.mark()


def both(steps: Sequence[Callable[[], None]]) -> None:
    """Run the steps at once (starting two daemons), re-raising the first failure."""
    errors: list[BaseException] = []

    def run(step: Callable[[], None]) -> None:
        try:
            step()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@contextlib.contextmanager
def world_in(root: Path, link: VethLink, points: Sequence[str]) -> Iterator[World]:
    w = World(root, link, points)
    try:
        w.build()
        yield w
    finally:
        w.close()
