"""One migration in progress on this host, as the engine, the listings and the API stream see it.

`RunState` is written by the engine's thread (progress, suspended, the outcome) and read by everyone else:
`ldm list -o status` (`status()`), the NDJSON stream of `POST /v1/migrate` (`subscribe`: every item emitted
so far is replayed, then each new one is handed to the callback from the engine's thread), and
`ldm cancel-operation migration` / a disconnected client (`cancel()`, which the engine checks at each step).
`Outcome` is the end: the lines `ldm` prints, its exit status, and every problem for `-n --json`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ldoms.migration.events import Role
from ldoms.model.view import MigrationStatus


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    dry_run: bool = False
    lines: tuple[str, ...] = ()  # printed by ldm (on stderr): reasons, then the trailer
    exit_code: int = 0
    problems: tuple[dict[str, str], ...] = ()  # every failure: code, message, side, resource, ... remedy
    warnings: tuple[dict[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "result",
            "ok": self.ok,
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "lines": list(self.lines),
            "problems": [dict(p) for p in self.problems],
            "warnings": [dict(w) for w in self.warnings],
        }


Listener = Callable[[dict[str, Any]], None]


@dataclass
class RunState:
    domain: str  # the domain's name on this host
    role: Role
    peer: str  # the other host, as named by the admin (source) or by its Hello (target)
    progress: int = 0
    suspended: bool = False
    outcome: Outcome | None = None
    cancel_reason: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _items: list[dict[str, Any]] = field(default_factory=list)
    _listeners: list[Listener] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ engine side
    def set_progress(self, percent: int) -> bool:
        """Raise the progress (never lowers it); True when it changed."""
        percent = max(0, min(100, int(percent)))
        if percent <= self.progress:
            return False
        self.progress = percent
        self._emit({"type": "progress", "percent": percent})
        return True

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self._emit(outcome.to_json())
        self.done.set()

    def _emit(self, item: dict[str, Any]) -> None:
        with self._lock:
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
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()

    def status(self) -> MigrationStatus:
        return MigrationStatus(
            domain=self.domain,
            role=self.role.value,
            peer=self.peer,
            progress=self.progress,
            suspended=self.suspended,
        )
