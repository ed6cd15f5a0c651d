"""The served host: its current `Machine`, the one lock that serialises changes, and how a change is applied.

Theory of operation.  `apply(request)` under the host lock:

1. runs the operation (`ldoms.ops.base.run`: check_arguments, check_prereq, execute) on the current
   machine; it is pure, so a refusal changes nothing;
2. carries out its effects in order (start or stop guest processes), recording each one's undo;
3. writes the new machine in one store transaction;
4. only then publishes the new machine to readers.

If an effect or the commit fails, the effects already done are undone in reverse order and nothing is
committed.

Migrations (ldoms.daemon.migrate) hold domains in `migrating` (name -> what holds it).  Operations get it in
their context and refuse what SPEC 3.1 forbids; `apply` also refuses, whatever the operation, a result that
would change a migrating domain or start a delayed reconfiguration while a migration runs.  The migration
engines change the machine through `change(fn)`, under the same lock, one commit per change.  A few verbs
are answered by the migration manager instead (`MigrationManager.intercept`), and a CancelMigration effect
is handed to it; `apply` then waits, outside the lock, for the migration to end.

Any exception that is not an `LdmError` is a bug: it is logged with its traceback and becomes an
`InternalError` naming the verb, so the daemon keeps serving.

The control domain runs no guest process (ldmd itself stands for its OS): its start/stop effects only
change state.  Readers (`view`) take no lock: the machine is immutable and replaced by one assignment.

Finished migrations (`record_migration`, called by the engines of both directions) are written to the
store's bounded history under the same lock and kept in memory for `view().history`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ldoms.errors import BusyError, LdmError, OpExecError
from ldoms.hv import proc
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.model.domain import Domain, DomainState
from ldoms.model.machine import Machine
from ldoms.model.view import HostView, MigrationRecord
from ldoms.ops import base as ops_base
from ldoms.ops.base import CancelMigration, Effect, OpContext, OpResult, Request, StartGuest, StopGuest
from ldoms.store import Store
from ldoms.store.db import MIGRATION_HISTORY

log = logging.getLogger("ldmd.host")

RunOp = Callable[[Machine, Request, OpContext], OpResult]


class InternalError(LdmError):
    """A bug in ldmd or an operation (not a refusal): reported as a 500 and logged with its traceback."""

    code = "internal"


def put_domain(machine: Machine, dom: Domain) -> Machine:
    """Replace a domain in place without marking the SP configuration modified (runtime facts only)."""
    return replace(machine, domains=tuple(dom if d.name == dom.name else d for d in machine.domains))


@dataclass
class _Sample:
    pid: int
    cpu: float
    wall: float
    util: float


class Host:
    def __init__(
        self,
        *,
        machine: Machine,
        store: Store,
        guests: GuestSupervisor,
        listen: str,
        run_op: RunOp = ops_base.run,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.machine = machine
        self.store = store
        self.guests = guests
        self.listen = listen
        self.run_op = run_op
        self.clock = clock
        self.migrating: dict[str, str] = {}
        self.migrations: Any = None  # the MigrationManager, once ldmd has one (ldoms.daemon.migrate)
        self._lock = threading.Lock()
        self._samples: dict[str, _Sample] = {}
        self._samples_lock = threading.Lock()
        self._history: tuple[MigrationRecord, ...] = tuple(
            r for r in (_record_of(d) for d in store.migrations()) if r is not None
        )[-MIGRATION_HISTORY:]

    # ------------------------------------------------------------------ finished migrations
    def record_migration(self, record: MigrationRecord) -> None:
        """Keep a finished migration in the store's history (the newest MIGRATION_HISTORY)."""
        with self._lock:
            self.store.add_migration(asdict(record), keep=MIGRATION_HISTORY)
            self._history = (*self._history, record)[-MIGRATION_HISTORY:]

    @property
    def history(self) -> tuple[MigrationRecord, ...]:
        return self._history

    # ------------------------------------------------------------------ changes
    def apply(self, request: Request) -> tuple[str, ...]:
        if self.migrations is not None:
            answer = self.migrations.intercept(request)
            if answer is not None:
                return tuple(answer)
        cancels: list[CancelMigration] = []
        messages = self._apply(request, cancels)
        return messages + self._wait_cancelled(cancels)

    def _apply(self, request: Request, cancels: list[CancelMigration]) -> tuple[str, ...]:
        with self._lock:
            old = self.machine
            ctx = OpContext(now=self.clock(), migrating=dict(self.migrating))
            try:
                result = self.run_op(old, request, ctx)
            except LdmError:
                raise
            except Exception as e:
                log.exception("bug in operation %s (request %r)", request.verb, request)
                raise InternalError(
                    f"Internal error in {request.verb}: {type(e).__name__}: {e} (details in ldmd.log)"
                ) from e
            new = result.machine
            if new is old and not result.effects:
                return result.messages  # a read-only verb: nothing to write (no fsync)
            check_migration_locks(old, new, ctx, request.verb)
            undo: list[Callable[[], None]] = []
            stops: list[str] = []
            try:
                for effect in result.effects:
                    if isinstance(effect, CancelMigration) and self.migrations is not None:
                        cancels.append(effect)
                        continue
                    if isinstance(effect, StopGuest):
                        # Guests stop only after the commit: a crash in between leaves the committed stop
                        # and a guest whose domain is no longer active, which recovery kills. Stopping first
                        # would let a crash turn a stop into a "guest died" (or half a `stop -a`).
                        new = self._plan_stop(effect, old, new, stops)
                        continue
                    new = self._do_effect(effect, old, new, undo)
                self.store.commit(new)
            except Exception as e:
                self._undo(undo, request.verb)
                if isinstance(e, LdmError):
                    log.warning("%s failed, effects undone, nothing committed: %s", request.verb, e)
                    raise
                log.exception("%s failed while applying its effects; effects undone", request.verb)
                raise OpExecError(
                    f"{request.verb} failed: {type(e).__name__}: {e}; nothing was changed "
                    "(details in ldmd.log)"
                ) from e
            self.machine = new
            log.info("%s %s: committed", request.verb, " ".join(request.operands))
            for name in stops:
                try:
                    self.guests.stop(name)
                except Exception:
                    log.exception("guest of LDom %s did not stop; the next recovery kills it", name)
            return result.messages

    def _plan_stop(self, effect: StopGuest, old: Machine, new: Machine, stops: list[str]) -> Machine:
        before = old.find(effect.domain)
        if before is None or before.config.is_control:
            return new
        stops.append(effect.domain)
        after = new.find(effect.domain)
        return new if after is None else put_domain(new, replace(after, guest_pid=0))

    def _do_effect(
        self, effect: Effect, old: Machine, new: Machine, undo: list[Callable[[], None]]
    ) -> Machine:
        if isinstance(effect, StartGuest):
            dom = new.domain(effect.domain)
            if dom.config.is_control:
                return new
            rec = self.guests.start(dom)
            undo.append(lambda: self.guests.stop(effect.domain))
            return put_domain(new, replace(dom, guest_pid=rec.pid))
        raise OpExecError(f"this ldmd cannot carry out the effect {type(effect).__name__} yet")

    def _wait_cancelled(self, cancels: list[CancelMigration]) -> tuple[str, ...]:
        """Hand each cancel to the migration engine and wait for the migration to end (outside the lock:
        the engine needs it to restore the domain)."""
        out: list[str] = []
        for c in cancels:
            run = self.migrations.cancel(c.domain)
            if run is None:
                out.append(f"The migration of LDom {c.domain} had already ended")
                continue
            if not self.migrations.wait(run):
                out.append(f"Cancel of the migration of LDom {c.domain} requested; it is still winding down")
            elif run.outcome is not None and run.outcome.ok:
                out.append(
                    f"The migration of LDom {c.domain} had already handed the domain over and completed: "
                    "nothing was cancelled"
                )
            else:
                out.append(f"Migration of LDom {c.domain} cancelled")
        return tuple(out)

    # ------------------------------------------------------------------ the migration engines
    def change(self, fn: Callable[[Machine], Machine]) -> Machine:
        """Run `fn` on the current machine under the host lock and commit what it returns (one transaction);
        `fn` may also update `migrating`.  An exception leaves the machine as it was."""
        with self._lock:
            old = self.machine
            new = fn(old)
            if new is not old and new != old:
                self.store.commit(new)
                self.machine = new
            return self.machine

    def _undo(self, undo: list[Callable[[], None]], verb: str) -> None:
        for step in reversed(undo):
            try:
                step()
            except Exception:
                log.exception("undo of %s failed (continuing with the other undo steps)", verb)

    # ------------------------------------------------------------------ guests that died under us
    def reconcile(self) -> None:
        """Domains whose guest process died while ldmd runs become bound (logged, committed)."""
        if not self._lock.acquire(blocking=False):
            return  # a change is under way; the next view will look again
        try:
            machine = self.machine
            for dom in machine.domains:
                if dom.state != DomainState.ACTIVE or dom.config.is_control or dom.name in self.migrating:
                    continue  # a migrating domain's guest comes and goes under the engine's control
                if self.guests.find(dom.name) is None:
                    log.warning(
                        "guest of LDom %s exited on its own: LDom %s is now bound", dom.name, dom.name
                    )
                    self.guests.files(dom.name).remove_all()
                    machine = put_domain(machine, guest_gone(dom))
            if machine is not self.machine:
                self.store.commit(machine)
                self.machine = machine
        except Exception:
            log.exception("reconciling guest processes failed")
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ reading
    def view(self) -> HostView:
        self.reconcile()
        machine = self.machine
        now = self.clock()
        migrations = self.migrations.statuses() if self.migrations is not None else ()
        return HostView(
            machine=machine,
            now=now,
            util=self._utilisation(machine, time.monotonic()),
            migrations=migrations,
            history=self._history,
        )

    def _utilisation(self, machine: Machine, mono: float) -> dict[str, float]:
        """Percent of its strands' capacity each active domain used since the previous view (since it
        started, the first time).  The control domain's figure is ldmd's own CPU time."""
        out: dict[str, float] = {}
        with self._samples_lock:
            for dom in machine.domains:
                if dom.state != DomainState.ACTIVE:
                    continue
                pid = os.getpid() if dom.config.is_control else dom.guest_pid
                st = proc.stat(pid) if pid else None
                if st is None or st.dead:
                    continue
                nstrands = max(1, len(dom.bindings.strands) if dom.bindings else 1)
                prev = self._samples.get(dom.name)
                if prev is not None and prev.pid == pid:
                    if mono - prev.wall < 0.5:  # too short an interval to mean anything: repeat the last
                        out[dom.name] = prev.util
                        continue
                    dcpu, dwall = st.cpu_seconds - prev.cpu, mono - prev.wall
                else:  # first look: the process's whole life
                    dcpu, dwall = st.cpu_seconds, max(time.time() - proc.start_wall(st), 0.5)
                util = min(100.0, max(0.0, 100.0 * dcpu / dwall / nstrands))
                self._samples[dom.name] = _Sample(pid=pid, cpu=st.cpu_seconds, wall=mono, util=util)
                out[dom.name] = round(util, 1)
            for name in set(self._samples) - set(out):
                del self._samples[name]
        return out


def check_migration_locks(old: Machine, new: Machine, ctx: OpContext, verb: str) -> None:
    """Whatever the operation: no change to a migrating domain, no new delayed reconfiguration while a
    migration runs on this host (SPEC 3.1, 7.5).  Operations refuse these themselves; this is the net."""
    for name, what in ctx.migrating.items():
        if old.find(name) != new.find(name):
            raise BusyError(
                f"LDom {name} is being migrated ({what}): {verb} would change it, which is refused"
            )
    if not ctx.migrating:
        return
    name, what = next(iter(ctx.migrating.items()))
    for dom in new.domains:
        before = old.find(dom.name)
        if dom.pending is not None and (before is None or before.pending is None):
            raise BusyError(
                f"Cannot start a delayed reconfiguration of LDom {dom.name} while a migration of LDom {name} "
                f"is in progress ({what})"
            )


def guest_gone(dom: Domain) -> Domain:
    """The domain after its guest process vanished: bound, no uptime."""
    return replace(dom, state=DomainState.BOUND, started_at=0.0, guest_pid=0, softstate="")


def _record_of(doc: dict[str, Any]) -> MigrationRecord | None:
    """A stored history document as a record (fields of another release ignored; unreadable: None)."""
    known = {f.name for f in fields(MigrationRecord)}
    try:
        return MigrationRecord(**{k: v for k, v in doc.items() if k in known})
    except TypeError:
        return None
