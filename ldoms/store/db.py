"""The host's state database (SQLite): one transaction per operation.

Theory of operation.  The whole `Machine` lives in memory in ldmd; the store is its durable copy.  Each
domain and each SP configuration is one JSON document (`ldoms.model.codec.to_json`) in its own row, with its
position (domains are listed in creation order, control domain first).  The machine's own fields (SP config
names, power policy) are one more document in `meta`, next to the host's identity: name, platform (the full
description, so a host does not depend on the TOML file it was created from), peer listen address and the
schema version.

`commit(machine)` compares the new documents with the ones last written and writes only the rows that
differ, all in one `BEGIN IMMEDIATE` ... `COMMIT`.  WAL with `synchronous=FULL` makes a returned commit
durable: after a `kill -9` at any moment, a restart finds every committed operation and no part of another.

Besides the machine: `migrations` holds the last `MIGRATION_HISTORY` finished migrations (one JSON document
each, oldest pruned in the same transaction), and `meta` holds small host settings (`get_setting` /
`set_setting`, e.g. the host's migration defaults).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, fields, replace
from itertools import count
from pathlib import Path
from typing import Any

from ldoms.errors import LdmError
from ldoms.model.codec import decode, to_json
from ldoms.model.domain import Domain
from ldoms.model.machine import Machine, SpConfig
from ldoms.model.platform import Platform

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS domains (name TEXT PRIMARY KEY, position INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spconfigs (name TEXT PRIMARY KEY, position INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS migrations (seq INTEGER PRIMARY KEY AUTOINCREMENT, doc TEXT NOT NULL);
"""
MIGRATION_HISTORY = 100  # finished migrations kept (`ldm list-migrations`); the oldest go first

# Machine fields kept elsewhere than in the machine document.
_SEPARATE = ("host_name", "platform", "domains", "spconfigs")


class StoreError(LdmError):
    code = "store"


@dataclass(frozen=True, slots=True)
class HostRecord:
    machine: Machine
    listen: str


def _dump(value: Any) -> str:
    return json.dumps(to_json(value), sort_keys=True, separators=(",", ":"))


def platform_doc(platform: Platform) -> str:
    """The canonical text of a platform: two platforms are the same iff these are equal."""
    return _dump(platform)


@dataclass(frozen=True, slots=True)
class _Docs:
    machine: str
    domains: dict[str, tuple[int, str]]
    spconfigs: dict[str, tuple[int, str]]


class _DumpCache:
    """Documents of the frozen domain and SP-configuration values last written, by identity.

    An operation builds a new `Machine` but reuses every domain it did not change, so a commit only has to
    encode the values that are new objects; at 400 domains re-encoding all of them cost ~28 ms per commit."""

    def __init__(self) -> None:
        self._docs: dict[int, tuple[object, str]] = {}

    def dump_all(self, values: tuple[Any, ...]) -> list[str]:
        fresh: dict[int, tuple[object, str]] = {}
        out = []
        for v in values:
            hit = self._docs.get(id(v))
            doc = hit[1] if hit is not None and hit[0] is v else _dump(v)
            fresh[id(v)] = (v, doc)  # holding `v` keeps its id from being reused by another object
            out.append(doc)
        self._docs = fresh
        return out


def _docs(machine: Machine, caches: tuple[_DumpCache, _DumpCache] | None = None) -> _Docs:
    mdoc = {f.name: to_json(getattr(machine, f.name)) for f in fields(machine) if f.name not in _SEPARATE}
    dom_cache, cfg_cache = caches if caches is not None else (_DumpCache(), _DumpCache())
    dom_docs = dom_cache.dump_all(machine.domains)
    cfg_docs = cfg_cache.dump_all(machine.spconfigs)
    return _Docs(
        machine=json.dumps(mdoc, sort_keys=True, separators=(",", ":")),
        domains={d.name: (i, doc) for i, d, doc in zip(count(), machine.domains, dom_docs, strict=False)},
        spconfigs={c.name: (i, doc) for i, c, doc in zip(count(), machine.spconfigs, cfg_docs, strict=False)},
    )


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.  ldmd calls from its worker threads,
            # always under the host lock, hence check_same_thread=False.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"state database {path}: cannot be opened: {e}") from e
        self._written: _Docs | None = None
        self._caches = (_DumpCache(), _DumpCache())  # domains, SP configurations
        version = self._meta("schema_version")
        if version is not None and int(version) > SCHEMA_VERSION:
            raise StoreError(
                f"state database {path}: schema version {version} is newer than this ldmd understands "
                f"({SCHEMA_VERSION})"
            )

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ reading
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def has_host(self) -> bool:
        return self._meta("host_name") is not None

    def stored_platform(self) -> Platform:
        doc = self._meta("platform")
        if doc is None:
            raise StoreError(f"state database {self.path}: holds no host")
        return decode(Platform, json.loads(doc))

    def load(self) -> HostRecord:
        name = self._meta("host_name")
        pdoc = self._meta("platform")
        mdoc = self._meta("machine")
        listen = self._meta("listen")
        if name is None or pdoc is None or mdoc is None or listen is None:
            raise StoreError(f"state database {self.path}: holds no complete host")
        try:
            doms = [
                decode(Domain, json.loads(doc))
                for (doc,) in self._db.execute("SELECT doc FROM domains ORDER BY position, name")
            ]
            cfgs = [
                decode(SpConfig, json.loads(doc))
                for (doc,) in self._db.execute("SELECT doc FROM spconfigs ORDER BY position, name")
            ]
            fields = json.loads(mdoc)
            fields.update(host_name=name, platform=json.loads(pdoc), domains=[], spconfigs=[])
            machine = decode(Machine, fields)
        except (ValueError, TypeError, KeyError) as e:
            raise StoreError(f"state database {self.path}: a stored document is malformed: {e}") from e
        machine = replace(machine, domains=tuple(doms), spconfigs=tuple(cfgs))
        self._written = _docs(machine)
        return HostRecord(machine=machine, listen=listen)

    # ------------------------------------------------------------------ writing
    def create_host(self, machine: Machine, *, listen: str) -> None:
        """Write a new host (its first machine) in one transaction."""
        if self.has_host():
            raise StoreError(f"state database {self.path}: already holds host {self._meta('host_name')}")
        docs = _docs(machine)
        with self._transaction():
            rows = {
                "schema_version": str(SCHEMA_VERSION),
                "host_name": machine.host_name,
                "platform": platform_doc(machine.platform),
                "listen": listen,
                "machine": docs.machine,
            }
            self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows.items())
            self._write_rows("domains", {}, docs.domains)
            self._write_rows("spconfigs", {}, docs.spconfigs)
        self._written = docs

    # ------------------------------------------------------------------ host settings, migration history
    def get_setting(self, key: str) -> str | None:
        return self._meta(f"setting:{key}")

    def set_setting(self, key: str, value: str | None) -> None:
        with self._transaction():
            if value is None:
                self._db.execute("DELETE FROM meta WHERE key = ?", (f"setting:{key}",))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"setting:{key}", value)
                )

    def add_migration(self, doc: dict[str, Any], keep: int = MIGRATION_HISTORY) -> None:
        """Record a finished migration; only the newest `keep` stay."""
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        with self._transaction():
            self._db.execute("INSERT INTO migrations (doc) VALUES (?)", (text,))
            self._db.execute(
                "DELETE FROM migrations WHERE seq NOT IN "
                "(SELECT seq FROM migrations ORDER BY seq DESC LIMIT ?)",
                (keep,),
            )

    def migrations(self) -> list[dict[str, Any]]:
        """The recorded migrations, oldest first (unreadable rows are skipped)."""
        out = []
        for (text,) in self._db.execute("SELECT doc FROM migrations ORDER BY seq"):
            try:
                doc = json.loads(text)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def set_listen(self, listen: str) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('listen', ?)", (listen,))

    def commit(self, machine: Machine) -> None:
        """Write the difference between `machine` and the last machine written, in one transaction."""
        if self._written is None:
            raise StoreError(f"state database {self.path}: commit before load or create_host")
        old, new = self._written, _docs(machine, self._caches)
        with self._transaction():
            if new.machine != old.machine:
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'machine'", (new.machine,))
            self._write_rows("domains", old.domains, new.domains)
            self._write_rows("spconfigs", old.spconfigs, new.spconfigs)
        self._written = new

    def _write_rows(
        self, table: str, old: dict[str, tuple[int, str]], new: dict[str, tuple[int, str]]
    ) -> None:
        gone = [(name,) for name in old if name not in new]
        if gone:
            self._db.executemany(f"DELETE FROM {table} WHERE name = ?", gone)
        changed = [(name, pos, doc) for name, (pos, doc) in new.items() if old.get(name) != (pos, doc)]
        if changed:
            self._db.executemany(
                f"INSERT OR REPLACE INTO {table} (name, position, doc) VALUES (?, ?, ?)", changed
            )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.path)


class _Transaction:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"state database {self.path}: cannot begin a transaction: {e}") from e

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as e:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise StoreError(f"state database {self.path}: commit failed: {e}") from e
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the original error matters more
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"state database {self.path}: write failed: {exc}") from exc
