"""The fault matrix: which faults, at which phases, how each is injected, and what a cell must find after it.

A cell (`run_cell`) holds one daemon at its phase's point (a `hold` test hook), injects its fault there,
restarts whatever the fault killed, lets recovery run (the journal at restart; the source's automatic
recovery of the error state; a documented admin action only when the error state outlives `ERROR_GRACE_S`),
and then checks what must hold whatever failed and whenever (`check_one_copy`):

* exactly one host lists the domain, active with ordinary flags, its guest running unsuspended and
  unthrottled, and exactly one guest process of it exists across both hosts;
* its memory passes the ledger checker (no page lost or torn);
* the host that does not hold it keeps no memory image of it (scrubbed), no staged image, no shell;
* bindings and free resources: as before the migration when the source kept it; the source as empty when
  the target took it; and, once the domain is removed from its holder, both hosts exactly as empty as
  before the cell: nothing leaked anywhere.

Its outcome (`SOURCE`, `TARGET`, `ERR_SOURCE`, ...) is recorded in `RESULTS` for the table that conftest
prints, and compared with `expected()`: the hand-off fence decides it, so every cell has one right answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.faults.netns import qdisc_support
from tests.faults.world import GUEST, WAIT_S, FaultHost, Migration, World, guest_processes
from tests.integration.conftest import wait_for

ERROR_GRACE_S = 30.0  # the error state must be settled by ldmd itself within this; else the admin steps in

SOURCE = "source kept"
TARGET = "target took over"
ERR_SOURCE = "error→auto-recovered to source"
ERR_TARGET = "error→auto-recovered to target"
ADMIN_SOURCE = "error→admin cancel-operation→source"
ADMIN_TARGET = "error→admin cancel-operation→target"
SHORT = {SOURCE: "source", TARGET: "target", ERR_SOURCE: "err→source", ERR_TARGET: "err→target",
         ADMIN_SOURCE: "admin→source", ADMIN_TARGET: "admin→target"}  # fmt: skip


@dataclass(frozen=True)
class Phase:
    key: str
    title: str
    side: str  # whose daemon holds: "src" or "dst"
    point: str  # the hook point it holds at
    fenced: bool = False  # after the source handed the complete domain over (FinalState sent)


PHASES = (
    Phase("checks", "checks", "src", "source:checks"),
    Phase("prepare", "prepare", "dst", "target:prepare"),  # the target has reserved (shell, flag t)
    Phase("round1", "first round", "src", "source:round:1"),  # issue #5's "round 0": the engine counts from 1
    Phase("round2", "later round", "src", "source:round:2"),
    Phase("suspend", "suspend", "src", "source:suspended"),  # the guest suspended, Suspend not yet sent
    Phase("final", "final round", "src", "source:round:final"),  # SuspendAck in, last pages not sent
    Phase("unconfirmed", "hand-off, unconfirmed", "dst", "target:commit", fenced=True),
    Phase("confirmed", "hand-off, confirmed", "src", "source:confirmed", fenced=True),  # Resumed arrived
    Phase("cleanup", "cleanup", "src", "source:cleanup", fenced=True),  # source copy gone, HandoffDone next
)
POINTS = tuple(p.point for p in PHASES)


# ---------------------------------------------------------------------------------------------- faults
def _kill(side: str) -> Callable[[World, Phase, Migration], str]:
    def inject(w: World, phase: Phase, mig: Migration) -> str:
        h = w.src if side == "src" else w.dst
        h.kill9()
        w.open_gates()
        mig.wait()
        w.start(h)  # the same home, as an admin would
        return f"ldm exited {mig.code}"

    return inject


def kill_ldm(w: World, phase: Phase, mig: Migration) -> str:
    mig.kill()
    wait_for("ldmd to see its client go", lambda: "; cancelling it" in w.src.log(), WAIT_S)
    w.open_gates()
    return "the migration was cancelled as its client went away"


def cut_link(w: World, phase: Phase, mig: Migration) -> str:
    w.link.set_up(False)
    w.open_gates()
    mig.wait()  # the deadlines (10 s) end it, or it ends by itself
    w.link.set_up(True)
    return f"link down until ldm exited ({mig.code})"


def _impair(*qdisc: str) -> Callable[[World, Phase, Migration], str]:
    def inject(w: World, phase: Phase, mig: Migration) -> str:
        w.link.impair(*qdisc)
        w.open_gates()
        try:
            mig.wait(3 * WAIT_S)
            dropped = w.link.dropped()
        finally:
            w.link.clear()
        return f"{' '.join(qdisc)} until ldm exited ({mig.code}), {dropped} packets dropped"

    return inject


def cancel(w: World, phase: Phase, mig: Migration) -> str:
    proc = w.start_cancel()
    try:
        wait_for(
            "ldmd to take the cancel",
            lambda: f"cancelling the migration of LDom {GUEST}" in w.src.log() or proc.poll() is not None,
            WAIT_S,
        )
        w.open_gates()
        out, err = proc.communicate(timeout=WAIT_S)
    finally:
        proc.kill()
        proc.wait()
    if phase.key == "cleanup":  # the source copy is gone already: there is nothing here to cancel
        assert (proc.returncode, err.strip()) == (1, f"LDom {GUEST} not found"), (proc.returncode, err)
        return f"cancel-operation said: {err.strip()}"
    assert proc.returncode == 0, err
    return f"cancel-operation said: {out.strip()}"


def disk_full(w: World, phase: Phase, mig: Migration) -> str:
    w.fill_target_disk()
    w.open_gates()
    mig.wait()
    return f"ldm exited {mig.code}: {mig.stderr.strip().splitlines()[0] if mig.stderr.strip() else ''}"


NETEM = ("netem", "delay", "40ms", "10ms", "loss", "2%")
TBF = ("tbf", "rate", "400mbit", "burst", "128kb", "latency", "1ms")


@dataclass(frozen=True)
class Fault:
    key: str
    title: str
    inject: Callable[[World, Phase, Migration], str]
    tmpfs: str = ""  # the size of a tmpfs mounted over the target's guests directory ("": none)
    swept: bool = False  # the guest wrote every page before the migration: the target's image has no hole
    unavailable: Callable[[], str | None] = field(default=lambda: None)  # why the whole row cannot run here


FAULTS = (
    Fault("kill-src", "SIGKILL source ldmd", _kill("src")),
    Fault("kill-dst", "SIGKILL target ldmd", _kill("dst")),
    # The same, with the target's guests directory on a filesystem of its own (a dedicated volume).
    Fault("kill-dst-fs", "SIGKILL target, own fs", _kill("dst"), tmpfs="256m"),
    Fault("kill-ldm", "SIGKILL ldm", kill_ldm),
    Fault("link-cut", "link cut", cut_link),
    Fault("netem", "link slow+lossy (netem)", _impair(*NETEM), unavailable=lambda: qdisc_support(*NETEM[:3])),
    Fault("tbf", "link slow+lossy (tbf)", _impair(*TBF), unavailable=lambda: qdisc_support(*TBF)),
    Fault("cancel", "cancel-operation", cancel),
    Fault("disk-full", "disk full on target", disk_full, tmpfs="96m", swept=True),
)


def expected(fault: Fault, phase: Phase) -> tuple[str, ...]:
    """The right outcomes (one, but for a race the fence itself allows).  Before the fence the source copy
    is the master: any failure keeps it.  After it the target holds the complete domain; a source that lost
    the link before Resumed is in the error state, which its automatic recovery settles (the target kept
    it).  A cancel or a dying ldm after the fence is too late; a slow, lossy link only slows the migration
    down.  A full disk on the target fails the migration until the target sent Resumed (it may still refuse:
    its guest cannot start without room for its pid file), and does not touch a guest already running from a
    complete image.

    The race: a link cut (or a target killed) just before the final round may still let the last pages and
    FinalState leave the source, into the socket buffers.  The source, past the fence, waits for Resumed in
    vain and goes to the error state; the target never had the final state, so the recovery query answers
    "discarded" and the source copy resumes: error, then the source again, as safe as "source kept"."""
    if fault.key in ("netem", "tbf"):
        return (TARGET,)
    if fault.key == "disk-full":  # until Resumed the target may still refuse (its guest cannot start)
        return (TARGET,) if phase.key in ("confirmed", "cleanup") else (SOURCE,)
    if phase.key == "final" and fault.key in ("kill-dst", "kill-dst-fs", "link-cut"):
        return SOURCE, ERR_SOURCE
    if not phase.fenced:
        return (SOURCE,)
    if phase.key == "unconfirmed" and fault.key in ("kill-src", "kill-dst", "kill-dst-fs", "link-cut"):
        return (ERR_TARGET,)
    return (TARGET,)


# ------------------------------------------------------------------------------------------------- cells
# (fault key, phase key) -> (the outcome, or "n/a: why", "FAILED: why", "WRONG: ..."; the cell's details)
RESULTS: dict[tuple[str, str], tuple[str, str]] = {}


@dataclass
class Settled:
    holder: FaultHost
    other: FaultHost
    outcome: str
    note: str


def run_cell(w: World, fault: Fault, phase: Phase) -> Settled:
    t0 = time.monotonic()
    w.reset()
    if fault.tmpfs:
        w.mount_target_tmpfs(fault.tmpfs)
    w.add_guest(swept=fault.swept)
    before = (w.src.snapshot(), w.dst.snapshot())
    w.arm(phase.point)
    mig = w.start_migration()
    try:
        w.wait_held(w.src if phase.side == "src" else w.dst, phase.point, mig)
        note = fault.inject(w, phase, mig)
    finally:
        w.open_gates()
        if mig.proc.poll() is None and mig.code is None:
            mig.wait()
    settled = settle(w, mig, note)
    check_one_copy(w, settled, before)
    w.remove_guest(settled.holder)
    assert (w.src.snapshot(), w.dst.snapshot()) == w.empty, "bindings or resources leaked"
    settled.note += f"; {time.monotonic() - t0:.0f} s"
    return settled


def settle(w: World, mig: Migration, note: str) -> Settled:
    """Wait until no migration flag is left on either host (the error state: first by ldmd itself)."""
    mig.wait()
    admin = False
    deadline = time.monotonic() + ERROR_GRACE_S
    while True:
        flags = {h.name: h.flags() for h in w.hosts}
        marks = {f[5] for f in flags.values() if f is not None}
        # The flags clear a moment before the migration's run ends (`ldm ls -o status` shows it until then).
        if marks <= {"-"} and not any(_status_shown(h) for h in w.hosts if flags[h.name] is not None):
            break
        if time.monotonic() > deadline:
            assert marks == {"e"} and not admin, f"migration flags left behind: {flags}"
            # The documented admin action (SPEC 4.3): it asks the target how the migration ended.
            r = w.src.ldm("cancel-operation", "migration", GUEST)
            note += f"; admin: {r.stdout.strip()}"
            admin = True
        time.sleep(0.1)

    def scrubbed() -> bool:
        return not any(".scrub" in f for h in w.hosts for f in h.leftovers())

    wait_for("discarded images scrubbed", scrubbed, WAIT_S)
    listed = [h for h in w.hosts if h.lists()]
    assert len(listed) == 1, f"{len(listed)} copies of {GUEST}: on {[h.name for h in listed]}"
    holder = listed[0]
    other = w.dst if holder is w.src else w.src
    errored = admin or "automatic recovery:" in w.src.log() or "error state" in mig.stderr
    if holder is w.src:
        outcome = ADMIN_SOURCE if admin else ERR_SOURCE if errored else SOURCE
    else:
        outcome = ADMIN_TARGET if admin else ERR_TARGET if errored else TARGET
    return Settled(holder=holder, other=other, outcome=outcome, note=note)


def _status_shown(h: FaultHost) -> bool:
    r = h.ldm("ls", "-o", "status", GUEST, ok=False)
    return r.returncode == 0 and "STATUS" in r.stdout


def check_one_copy(w: World, s: Settled, before: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    h, other = s.holder, s.other
    dom = h.parseable(GUEST)
    assert (dom["state"], dom["flags"]) == ("active", "-n----"), dom
    assert "STATUS" not in h.ldm("ls", "-o", "status", GUEST).stdout
    pid = h.guest_pid(GUEST)
    # A destroyed copy's guest is killed (SIGKILL, suspended already) and not waited for: it may take a
    # moment to go.
    wait_for(f"the guest process on {other.name} gone", lambda: not guest_processes(other.home), 10)
    assert guest_processes(h.home) == [pid], (
        f"guest processes on {h.name}: {guest_processes(h.home)} (pid {pid})"
    )
    status = h.control().status()
    assert (status["suspended"], status["throttle"]) == (False, 0), status
    answer = h.control().verify(timeout=120)
    assert answer["consistent"], answer["problems"][:5]
    assert other.leftovers() == [], f"left on {other.name}: {other.leftovers()}"
    assert not [f for f in h.leftovers() if ".scrub" in f or f.endswith(".image")], h.leftovers()
    if h is w.src:
        assert (w.src.snapshot(), w.dst.snapshot()) == before, "the hosts differ from before the migration"
    else:
        assert w.src.snapshot() == w.empty[0], "the source kept something of the domain"
    procs = (guest_processes(h.home), guest_processes(other.home))
    assert procs == ([pid], []), (
        f"guest processes after the checks: {h.name} {procs[0]}, {other.name} {procs[1]}"
    )


def cell_id(fault: Fault, phase: Phase) -> str:
    return f"{fault.key}@{phase.key}"


__all__ = ["FAULTS", "GUEST", "PHASES", "POINTS", "RESULTS", "SHORT", "expected", "run_cell"]
