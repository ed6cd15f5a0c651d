"""ldmd's migration manager: the running migrations of this host, in both directions.

Theory of operation.
- Outgoing: `start(request)` claims the domain in the caller's thread (so "not found" or "already being
  migrated" is an immediate refusal) and runs the `SourceEngine` in a thread of its own; the returned
  `RunState` streams progress and the outcome to `POST /v1/migrate` (ldoms.daemon.api).
- Incoming: the peer listener calls `handle_peer(link)` in its connection thread; a `TargetEngine` converses.
- `cancel(name)`: `ldm cancel-operation migration` (through the CancelMigration effect) or a client that went
  away; the engine honours it at its next step.
- `statuses()`: what `ldm list -o status` shows, including sources left in the error state.
- `intercept(request)`: verbs the manager answers instead of the operations: `migrate-domain` sent to the
  plain operations route, and `cancel-operation migration` of a domain in the error state, which asks the
  target how the migration ended (`ldoms.daemon.migrate_recovery`).
- `defaults()`: the host's live-migration knobs (`ldmd --migration-defaults`, kept in the store), which a
  command's properties override.
- Finished migrations are recorded in the host's history (`Host.record_migration`).
- Automatic recovery of the error state: a background loop (`migrate_recovery.auto_recover`) asks the target
  of every source left in the error state how the migration ended, first `recovery_retry_min_s` after it,
  then at a doubling interval bounded by `recovery_retry_max_s` while the target does not answer; `ldm
  cancel-operation migration` still settles it at once.
Every thread is a daemon thread and `close()` cancels and joins them, so a stopping ldmd never hangs.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ldoms.errors import LdmError, UsageError
from ldoms.migration.engine_common import EngineDeps
from ldoms.migration.engine_source import MigrationRequest, SourceEngine
from ldoms.migration.engine_target import TargetEngine
from ldoms.migration.events import Role
from ldoms.migration.journal import JournalStore
from ldoms.migration.precopy_knobs import PrecopyPolicy, parse_knobs
from ldoms.migration.runstate import RunState
from ldoms.migration.transport import MigrationPolicy
from ldoms.model.domain import MigrationRole
from ldoms.model.view import MigrationStatus
from ldoms.ops.base import Request
from ldoms.peer.link import PeerLink

if TYPE_CHECKING:
    from ldoms.daemon.host import Host
    from ldoms.daemon.migrate_guest import GuestOps

log = logging.getLogger("ldmd.migration")

CANCELLED_BY_ADMIN = "cancelled by the administrator (ldm cancel-operation migration)"
DEFAULTS_SETTING = "migration-defaults"


class MigrationManager:
    def __init__(
        self,
        host: Host,
        home: Path,
        guests: GuestOps,
        *,
        policy: MigrationPolicy | None = None,
        accept_incoming: bool = True,
    ) -> None:
        self.host = host
        self.home = home
        self.guests = guests
        self.policy = policy or MigrationPolicy()
        self.accept_incoming = accept_incoming
        self.journals = JournalStore.in_home(home)
        self.deps = EngineDeps(
            host=host,
            home=home,
            journals=self.journals,
            guests=guests,
            policy=self.policy,
            history=getattr(host, "record_migration", None),
        )
        self._runs: dict[tuple[str, Role], RunState] = {}
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closing = False
        self.stopping = threading.Event()  # set by close(): background loops end
        self.recovery_wake = threading.Event()  # set when a migration left a source in the error state

    # ------------------------------------------------------------------ the registry (RunRegistry)
    def add(self, run: RunState) -> None:
        with self._lock:
            self._runs[(run.domain, run.role)] = run

    def remove(self, run: RunState) -> None:
        with self._lock:
            if self._runs.get((run.domain, run.role)) is run:
                del self._runs[(run.domain, run.role)]

    def run_of(self, name: str, role: Role = Role.SOURCE) -> RunState | None:
        with self._lock:
            return self._runs.get((name, role))

    def _spawn(self, target: object, name: str, *args: object) -> None:
        def body() -> None:
            try:
                target(*args)  # type: ignore[operator]
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        t = threading.Thread(target=body, name=name, daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    # ------------------------------------------------------------------ outgoing
    def start(self, request: MigrationRequest) -> RunState:
        """Claim the domain and start migrating it; raise (nothing changed) when it cannot start."""
        if self._closing:
            raise LdmError("ldmd is stopping: no migration can start")
        run = RunState(domain=request.source, role=Role.SOURCE, peer=request.target_host)
        engine = SourceEngine(self.deps, request, run)
        engine.claim()
        self.add(run)
        self._spawn(self._run_source, f"migrate-{request.source}", engine, run)
        return run

    def _run_source(self, engine: SourceEngine, run: RunState) -> None:
        try:
            engine.run()
        finally:
            self.remove(run)
            dom = self.host.machine.find(engine.name)
            if dom is not None and dom.migration is MigrationRole.ERROR:
                self.recovery_wake.set()

    def defaults(self) -> PrecopyPolicy:
        """The host's live-migration knobs (`ldmd --migration-defaults`), or the built-in ones."""
        store = getattr(self.host, "store", None)
        text = store.get_setting(DEFAULTS_SETTING) if store is not None else None
        if not text:
            return PrecopyPolicy()
        try:
            return parse_knobs(text)
        except LdmError as e:  # stored by an ldmd that accepted it: a later release may disagree
            log.error("ignoring the stored migration defaults '%s': %s", text, e.message)
            return PrecopyPolicy()

    def cancel(self, name: str, reason: str = CANCELLED_BY_ADMIN) -> RunState | None:
        run = self.run_of(name)
        if run is not None:
            log.info("cancelling the migration of LDom %s: %s", name, reason)
            run.cancel(reason)
        return run

    def wait(self, run: RunState, timeout: float | None = None) -> bool:
        return run.done.wait(self.policy.cancel_wait_s if timeout is None else timeout)

    # ------------------------------------------------------------------ incoming
    def handle_peer(self, link: PeerLink) -> None:
        TargetEngine(self.deps, self, accept_incoming=self.accept_incoming and not self._closing).handle(link)

    # ------------------------------------------------------------------ listings
    def statuses(self) -> tuple[MigrationStatus, ...]:
        with self._lock:
            running = [r.status() for r in self._runs.values()]
        names = {s.domain for s in running}
        errored = [
            d.name
            for d in self.host.machine.domains
            if d.migration is MigrationRole.ERROR and d.name not in names
        ]
        if errored:
            from ldoms.daemon.migrate_recovery import error_journal

            for name in errored:
                rec = error_journal(self.journals, name)
                peer = str(rec.extra.get("target") or rec.journal.peer) if rec is not None else "unknown"
                running.append(
                    MigrationStatus(domain=name, role="source", peer=peer, progress=100, error=True)
                )
        return tuple(running)

    # ------------------------------------------------------------------ verbs answered here
    def intercept(self, request: Request) -> tuple[str, ...] | None:
        """The answer to `request` when the manager owns it, else None (the operations run it)."""
        from ldoms.ops.base import ALIASES

        verb = ALIASES.get(request.verb)  # None for an unknown verb: the operations refuse it
        if verb == "migrate-domain":
            raise UsageError(
                "migrate-domain is carried out through POST /v1/migrate (ldm migrate-domain uses it): it "
                "streams the migration's progress and takes the target password out of the request flags"
            )
        if verb != "cancel-operation" or len(request.operands) != 2 or request.operands[0] != "migration":
            return None
        name = request.operands[1]
        dom = self.host.machine.find(name)
        if dom is None or dom.migration is not MigrationRole.ERROR or name in self.host.migrating:
            return None
        from ldoms.daemon.migrate_recovery import resolve_error

        return resolve_error(self, name)

    # ------------------------------------------------------------------ start and stop
    def recover(self) -> None:
        """Apply the decision of every migration an earlier ldmd left unsettled (after a crash), then settle
        sources in the error state in the background as their targets answer."""
        from ldoms.daemon.migrate_recovery import auto_recover, recover_after_start

        recover_after_start(self)
        self._spawn(auto_recover, "migration-auto-recovery", self)

    def close(self, timeout: float = 10.0) -> None:
        self._closing = True
        self.stopping.set()
        self.recovery_wake.set()
        with self._lock:
            runs = [r for (_, role), r in self._runs.items() if role is Role.SOURCE]
            threads = list(self._threads)
        for r in runs:
            r.cancel("ldmd is stopping")
        for t in threads:
            t.join(timeout)
