"""One migration in progress on this host, as the engine, the listings and the API stream see it.

`RunState` is written by the engine's thread (progress, suspended, the outcome) and read by everyone else:
`ldm list -o status` (`status()`), the NDJSON stream of `POST /v1/migrate` (`subscribe`: every item emitted
so far is replayed, then each new one is handed to the callback from the engine's thread), and
`ldm cancel-operation migration` / a disconnected client (`cancel()`, which the engine checks at each step).
`Outcome` is the end: the lines `ldm` prints, its exit status, every problem for `-n --json`, and the
migration's record (`MigrationRecord` as JSON) once it ran.

Progress items carry the whole progress contract (`live_plan.ProgressFacts`: percent, phase, round, bytes
sent, remaining bytes, rate, expected downtime, throttle); `report()` emits at most ten a second (a phase
change or a forced item always goes out) and `percent` never decreases.  `on_cancel(cb)` registers what must
happen the moment a cancel is asked (the engine aborts its data plane there, from the cancelling thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ldoms.migration.events import Role
from ldoms.migration.live_plan import ProgressFacts, ProgressGate
from ldoms.model.view import MigrationStatus


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    dry_run: bool = False
    lines: tuple[str, ...] = ()  # printed by ldm (on stderr): reasons, then the trailer
    exit_code: int = 0
    problems: tuple[dict[str, str], ...] = ()  # every failure: code, message, side, resource, ... remedy
    warnings: tuple[dict[str, str], ...] = ()
    record: dict[str, Any] | None = None  # the MigrationRecord, once the migration ran (not for refusals)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "result",
            "ok": self.ok,
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "lines": list(self.lines),
            "problems": [dict(p) for p in self.problems],
            "warnings": [dict(w) for w in self.warnings],
        }
        if self.record is not None:
            doc["record"] = dict(self.record)
        return doc


Listener = Callable[[dict[str, Any]], None]
log = logging.getLogger("ldmd.migration")


@dataclass
class RunState:
    domain: str  # the domain's name on this host
    role: Role
    peer: str  # the other host, as named by the admin (source) or by its Hello (target)
    progress: int = 0
    phase: str = "checks"
    facts: ProgressFacts | None = None  # the latest progress item's content
    suspended: bool = False
    outcome: Outcome | None = None
    cancel_reason: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _items: list[dict[str, Any]] = field(default_factory=list)
    _listeners: list[Listener] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cancel_cbs: list[Callable[[], None]] = field(default_factory=list)
    _gate: ProgressGate = field(default_factory=ProgressGate)

    # ------------------------------------------------------------------ engine side
    def set_progress(self, percent: int, phase: str | None = None) -> bool:
        """Raise the progress (never lowers it) and emit an item; True when the percentage changed."""
        percent = max(0, min(100, int(percent)))
        changed = percent > self.progress
        if not changed and (phase is None or phase == self.phase):
            return False
        base = self.facts or ProgressFacts(percent=0, phase=self.phase)
        self.report(replace(base, percent=max(percent, self.progress), phase=phase or self.phase), force=True)
        return changed

    def report(self, facts: ProgressFacts, *, force: bool = False, now: float | None = None) -> bool:
        """Record `facts` (the percentage only ever rises) and emit them unless one went out less than a
        tenth of a second ago in the same phase; True when emitted."""
        facts = replace(facts, percent=max(self.progress, max(0, min(100, facts.percent))))
        self.progress = facts.percent
        self.phase = facts.phase
        self.facts = facts
        if not self._gate.due(time.monotonic() if now is None else now, facts.phase, force=force):
            return False
        self._emit(facts.to_json())
        return True

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self._emit(outcome.to_json())
        self.done.set()

    def _emit(self, item: dict[str, Any]) -> None:
        with self._lock:
            if item.get("type") == "progress" and self._items and self._items[-1].get("type") == "progress":
                self._items[-1] = item  # a late subscriber needs only the latest progress: bounded backlog
            else:
                self._items.append(item)
            listeners = list(self._listeners)
        for cb in listeners:
            cb(item)

    # ------------------------------------------------------------------ everyone else
    def subscribe(self, cb: Listener) -> None:
        with self._lock:
            backlog = list(self._items)
            self._listeners.append(cb)
        for item in backlog:
            cb(item)

    def unsubscribe(self, cb: Listener) -> None:
        with self._lock:
            if cb in self._listeners:
                self._listeners.remove(cb)

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self.cancelled.is_set():
                return
            self.cancel_reason = reason
            self.cancelled.set()
            cbs = list(self._cancel_cbs)
        for cb in cbs:
            try:
                cb()
            except Exception:  # a callback that fails must not stop the cancel
                log.exception("a cancel callback of the migration of LDom %s failed", self.domain)

    def on_cancel(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Call `cb` (from the cancelling thread) when a cancel comes, at once if one came already; returns
        the function that unregisters it."""
        with self._lock:
            already = self.cancelled.is_set()
            if not already:
                self._cancel_cbs.append(cb)
        if already:
            cb()

        def unregister() -> None:
            with self._lock:
                if cb in self._cancel_cbs:
                    self._cancel_cbs.remove(cb)

        return unregister

    def status(self) -> MigrationStatus:
        return MigrationStatus(
            domain=self.domain,
            role=self.role.value,
            peer=self.peer,
            progress=self.progress,
            suspended=self.suspended,
        )
