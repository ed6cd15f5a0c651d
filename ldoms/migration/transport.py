"""The migration control link: a sans-IO `MigrationConnection` driven over a verified `PeerLink`.

Theory of operation.  `ControlChannel.send(event)` asks the connection for the bytes (a step the protocol
forbids raises `LocalProtocolError` and nothing is written), persists the journal (write-ahead: the peer
never learns of a phase our disk does not know), then writes one link frame.  A failed write marks the
connection `send_failed()`: the peer may or may not have the bytes, and `conn.outcome()` counts it as sent.
`receive()` reads link frames into the connection until it yields an event, persists the journal again
(after each received event), answers Pings, reports Progress to a callback and returns anything else.
A peer that breaks the protocol raises `RemoteProtocolError`; when the error carries a farewell Abort the
channel journals, writes it (best effort) and closes the link.  A link that closes cleanly between frames
raises `LinkLost`; every other link failure is the `PeerError` the link raised (which names the other end).

Deadlines are named policy values (`MigrationPolicy`), chosen by the phase the connection waits in
(`protocol.DEADLINES`): each blocking read may last that long, and a timeout says which phase it hit.

`MigrationPolicy.hooks` (`TestHooks`) let integration tests stop a daemon at a named point: pause (waiting on
the migration's cancel event, never a bare sleep), crash the process, or drop the link instead of sending.
They come from the environment variable `LDMD_TEST_HOOKS` (JSON) and do nothing when it is unset; its
`policy` object shortens named deadlines (`{"policy": {"transfer_idle_s": 3}}`); its `hold` object holds a
daemon at a point until a file exists (`{"hold": {"source:round:2": "/tmp/x/release"}}`: the fault matrix
injects its fault while the daemon waits there, then releases it).

A Ping is answered at once, after `before_pong()` if set: the target waits there until it is ready for the
switch-over (its standby guest is up), which makes the source's Ping before the suspend a barrier.

`wake()` (after `enable_wake()`) ends a wait without harming the link (`ReadInterrupted`): the target's
transfer loop is woken so when its data plane fails, and then tells the source why (Abort).

`interrupt(why)` lets another thread stop a blocked read at once (a cancel while the source waits for the
target): the read in progress and every later one raise `LinkLost` naming the reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ldoms.errors import OpExecError
from ldoms.migration.events import Event, Ping, Pong, Progress, RemoteProtocolError
from ldoms.migration.journal import JournalStore
from ldoms.migration.protocol import DEADLINES, LINK_CLOSED, NEED_DATA, MigrationConnection, Phase
from ldoms.peer.errors import PeerClosed, PeerError, PeerTimeout
from ldoms.peer.link import PeerLink

log = logging.getLogger("ldmd.migration")

HOOKS_ENV = "LDMD_TEST_HOOKS"
HOLD_LIMIT_S = 120.0  # the longest a `hold` hook keeps a daemon waiting


wall_clock = time.time  # the clock a Pong reports (a test makes a host's clock run off)


@dataclass(frozen=True, slots=True)
class TestHooks:
    """Fault points for integration tests (see the module docstring).  Points are `role:name`, e.g.
    `source:transfer` or `target:final-state`."""

    __test__ = False  # not a pytest test class

    pause: dict[str, float] = field(default_factory=dict)  # point -> seconds (cut short by a cancel)
    crash: frozenset[str] = frozenset()  # point -> the process exits at once (status 70), as a crash would
    drop: frozenset[str] = frozenset()  # point -> the link is closed instead of sending
    policy: dict[str, float] = field(default_factory=dict)  # MigrationPolicy fields -> shorter deadlines
    hold: dict[str, str] = field(default_factory=dict)  # point -> a file: wait there until it exists

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> TestHooks:
        text = (environ if environ is not None else dict(os.environ)).get(HOOKS_ENV, "")
        if not text:
            return cls()
        try:
            doc = json.loads(text)
            return cls(
                pause={str(k): float(v) for k, v in dict(doc.get("pause", {})).items()},
                crash=frozenset(str(p) for p in doc.get("crash", ())),
                drop=frozenset(str(p) for p in doc.get("drop", ())),
                policy={str(k): float(v) for k, v in dict(doc.get("policy", {})).items()},
                hold={str(k): str(v) for k, v in dict(doc.get("hold", {})).items()},
            )
        except (ValueError, TypeError, AttributeError) as e:
            raise OpExecError(f"{HOOKS_ENV} is not a valid hooks document: {e}") from e

    def at(self, point: str, cancelled: threading.Event | None = None) -> None:
        """Pause or crash at `point` if a hook says so."""
        if point in self.crash:
            log.error("test hook: crashing at %s", point)
            os._exit(70)
        seconds = self.pause.get(point)
        if seconds:
            log.warning("test hook: pausing %g s at %s", seconds, point)
            (cancelled or threading.Event()).wait(seconds)
        release = self.hold.get(point)
        if release:
            self._hold(point, release, cancelled or threading.Event())

    def _hold(self, point: str, release: str, cancelled: threading.Event) -> None:
        """Wait at `point` until the file `release` exists (the test injected its fault meanwhile), a cancel,
        or HOLD_LIMIT_S: polled, so that a test that died never leaves a daemon held for long."""
        if os.path.exists(release):  # an open gate: pass silently
            return
        log.warning("test hook: holding at %s until %s exists", point, release)
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not os.path.exists(release):
            if cancelled.wait(0.02) or time.monotonic() > deadline:
                log.warning("test hook: hold at %s cut short (%s)", point,
                            "cancelled" if cancelled.is_set() else f"{HOLD_LIMIT_S:g} s")  # fmt: skip
                return
        log.warning("test hook: released at %s", point)

    def drops(self, point: str) -> bool:
        return point in self.drop


@dataclass(frozen=True, slots=True)
class MigrationPolicy:
    """Named deadlines (SPEC 7.13) and sizes.  Every blocking read on the link may take the deadline of the
    phase it waits in; the transfer has no overall deadline, only this idle one per read."""

    connect_s: float = 30.0  # TCP + TLS + the Hellos and the authentication
    check_s: float = 120.0  # phase 1: the target's checks and reservation
    prepare_s: float = 60.0  # phase 2: the target's shell
    handoff_ack_s: float = 60.0  # from the final state to Resumed (the target starts the guest)
    transfer_idle_s: float = 120.0  # between two messages of the transfer
    batch_bytes: int = 2 * 1024 * 1024  # page data per MemPages message on the control link
    cancel_wait_s: float = 60.0  # how long `cancel-operation migration` waits for the migration to end
    farewell_drain_s: float = 5.0  # after an Abort: how long to let the peer read it before closing
    recovery_retry_min_s: float = 2.0  # error state: first wait before asking the target again ...
    recovery_retry_max_s: float = 60.0  # ... doubling up to this bound while it does not answer
    hooks: TestHooks = field(default_factory=TestHooks)

    @classmethod
    def with_hooks(cls, hooks: TestHooks) -> MigrationPolicy:
        """The default policy with the hooks, and the deadlines they shorten (tests)."""
        names = {f.name for f in fields(cls)} - {"hooks", "batch_bytes"}
        unknown = sorted(set(hooks.policy) - names)
        if unknown:
            raise OpExecError(f"{HOOKS_ENV}: unknown policy fields {unknown}; known: {sorted(names)}")
        return cls(hooks=hooks, **hooks.policy)  # type: ignore[arg-type]

    def deadline(self, phase: Phase) -> float:
        name = DEADLINES.get(phase)
        return float(getattr(self, name)) if name else self.transfer_idle_s


class LinkLost(OpExecError):
    """The peer closed the link between two whole frames."""

    code = "link-lost"


class ReadInterrupted(OpExecError):
    """`wake()` stopped a wait for the peer; the link is intact (the waiter has something else to do)."""

    code = "interrupted"


class ControlChannel:
    """One migration conversation over one link (one thread at a time, as the link)."""

    def __init__(
        self,
        link: PeerLink,
        conn: MigrationConnection,
        *,
        policy: MigrationPolicy,
        journals: JournalStore | None = None,
        journal_extra: Callable[[], dict[str, Any]] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.link = link
        self.conn = conn
        self.policy = policy
        self.journals = journals
        self.journal_extra = journal_extra
        self.on_progress = on_progress
        self.journaling = journals is not None  # the owner may switch it on later (the target: at CHECK)
        self._persisted: tuple[object, str] | None = None
        self.before_pong: Callable[[], None] | None = None  # runs before a Ping is answered
        self._wake = threading.Lock()
        self._reading = False
        self._interrupted = ""
        self._wake_pipe: tuple[int, int] | None = None  # enable_wake(): wake() ends a wait, link intact

    def enable_wake(self) -> None:
        """Let `wake()` (from any thread) end the wait for the peer's next frame with `ReadInterrupted`."""
        if self._wake_pipe is None:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._wake_pipe = (r, w)

    def wake(self) -> None:
        with self._wake:  # never a write into a descriptor close() gave back
            if self._wake_pipe is not None:
                with contextlib.suppress(OSError):
                    os.write(self._wake_pipe[1], b"!")

    def _wait_readable(self, timeout: float | None) -> bool:
        """Wait until a frame can be read (False: timed out); ReadInterrupted when woken first."""
        assert self._wake_pipe is not None
        r = self._wake_pipe[0]
        if self.link.pending():
            return True
        ready, _, _ = select.select([self.link.fileno(), r], [], [], timeout)
        if r in ready:
            with contextlib.suppress(OSError):
                while os.read(r, 64):
                    pass
            raise ReadInterrupted(f"stopped waiting for {self.where}: woken")
        return bool(ready)

    def interrupt(self, why: str) -> None:
        """From any thread: make the blocking read in progress, and every later one, fail at once (a cancel
        while the engine waits for the peer).  Sends still work until the link breaks."""
        with self._wake:
            self._interrupted = why
            reading = self._reading
        if reading:
            self.link.interrupt()

    @property
    def where(self) -> str:
        return self.link.where

    # ------------------------------------------------------------------ journal
    def persist(self) -> None:
        """Make the journal durable, when it matters: a step that leaves the decision after a crash
        (`Journal.recovery()`) and the extra data as they were is not written again (PRECOPY, SUSPENDING and
        SUSPENDED all mean "keep the source, discard the target"), so the final pause costs only the writes
        of the fence itself."""
        if not self.journaling or self.journals is None or self.conn.migration_id is None:
            return
        if self.conn.recovery:  # a RecoveryQuery conversation touches no domain
            return
        extra = self.journal_extra() if self.journal_extra is not None else None
        journal = self.conn.journal()
        key = (journal.recovery(), json.dumps(extra, sort_keys=True, default=str))
        if key == self._persisted:
            return
        self.journals.save(journal, extra)
        self._persisted = key

    # ------------------------------------------------------------------ speaking
    def send(self, event: Event) -> None:
        data = self.conn.send(event)
        self.persist()
        try:
            self.link.send_frame(data)
        except PeerError:
            self.conn.send_failed()
            raise

    def try_send(self, event: Event) -> bool:
        """Send `event` if the protocol allows it now; swallow link errors (a farewell)."""
        if not self.conn.can_send(event):
            return False
        try:
            self.send(event)
            return True
        except PeerError as e:
            log.info("could not tell %s: %s", self.where, e)
            return False

    # ------------------------------------------------------------------ listening
    def receive(
        self, inspect: Callable[[Event], None] | None = None, *, timeout: float | None = None
    ) -> Event:
        """The peer's next event that is not a keep-alive or a progress report.

        `inspect(event)` runs before the journal records the event: what it raises propagates with the
        journal still at the previous phase (the target verifies the final state's checksum there, so its
        disk never says it holds a complete domain that it does not hold).  `timeout` replaces the phase's
        deadline for each read."""
        while True:
            try:
                ev = self.conn.next_event()
            except RemoteProtocolError as e:
                self._farewell(e)
                raise
            if ev is NEED_DATA:
                self._read(timeout)
                continue
            if ev is LINK_CLOSED:
                self.link.close()
                raise LinkLost(
                    f"{self.where[0].upper()}{self.where[1:]} closed the connection in phase "
                    f"{self.conn.phase} of the migration"
                )
            assert isinstance(ev, Event)
            self.policy.hooks.at(f"{self.conn.role}:received:{type(ev).__name__}")
            if inspect is not None:
                inspect(ev)
            self.persist()
            if isinstance(ev, Ping):
                if self.before_pong is not None:
                    self.before_pong()
                self.try_send(Pong(nonce=ev.nonce, wall_us=int(wall_clock() * 1_000_000)))
                continue
            if isinstance(ev, Progress):
                if self.on_progress is not None:
                    self.on_progress(ev.percent)
                continue
            return ev

    def _read(self, timeout: float | None = None) -> None:
        phase = self.conn.phase
        timeout = self.policy.deadline(phase) if timeout is None else timeout
        with self._wake:
            self._stopped(phase)
            self._reading = True
        try:
            if self._wake_pipe is not None and not self._wait_readable(timeout):
                self.link.close()  # as a timed-out read closes it
                raise PeerTimeout(f"no frame from {self.where}", where=self.where)
            self.link.settimeout(timeout)
            data = self.link.recv_frame()
        except PeerClosed:
            self._stopped(phase)
            self.conn.receive_data(b"")  # then next_event(): LINK_CLOSED, or a frame cut short
            return
        except PeerTimeout as e:
            self._stopped(phase)
            raise PeerTimeout(
                f"No answer from {self.where} within {timeout:g} s in phase {phase} of the migration "
                f"(deadline {DEADLINES.get(phase) or 'transfer_idle_s'}); the link is closed",
                where=e.where,
            ) from e
        except PeerError:
            self._stopped(phase)
            raise
        finally:
            with self._wake:
                self._reading = False
        self.conn.receive_data(data)

    def _stopped(self, phase: Phase) -> None:
        if self._interrupted:
            raise LinkLost(f"stopped waiting for {self.where} in phase {phase}: {self._interrupted}")

    def _farewell(self, exc: RemoteProtocolError) -> None:
        if exc.farewell is not None:
            self.persist()
            try:
                self.link.send_frame(exc.farewell)
            except PeerError:
                pass
        self.link.close()

    def close(self) -> None:
        self.link.close()
        with self._wake:
            pipe, self._wake_pipe = self._wake_pipe, None
        for fd in pipe or ():
            with contextlib.suppress(OSError):
                os.close(fd)
