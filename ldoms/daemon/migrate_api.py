"""`POST /v1/migrate`: starting an outgoing migration from the API and streaming it as NDJSON.

The request carries the verb's flags, properties (the live-migration knobs, applied over the host's
defaults) and operands as ldm parsed them (checked again here with the verb's own
grammar, `ldoms.ops.migrate`), the password ldm read (prompt or `-p FILE`; never the file name: ldmd reads no
admin file), and the invoking user for a target without `user@`.  The stream is one JSON object per line:
progress while the migration runs, then its result.  The migration belongs to the client that started it
(SPEC 2.7): when the client goes away before the result (ldm killed, its connection closed), the stream's
generator is closed and the migration is cancelled.  A stopped client (SIGSTOP) only stops reading: the
migration goes on and its items wait in memory (a few hundred at most).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from ldoms.daemon.host import Host
from ldoms.errors import LdmError, UsageError
from ldoms.migration.engine_source import MigrationRequest
from ldoms.migration.precopy_knobs import parse_knobs
from ldoms.migration.runstate import RunState
from ldoms.ops.base import Request
from ldoms.ops.migrate import USAGE, migrate_args
from ldoms.peer.credentials import check_user_name

log = logging.getLogger("ldmd.api")

CLIENT_GONE = "the ldm command that started it went away (killed or disconnected)"


def start_migration(host: Host, request: Request, *, password: str | None, user: str | None) -> RunState:
    args = migrate_args(request)
    if host.migrations is None:
        raise LdmError("this ldmd runs no migration engine")
    login = args.target.user or user or ""
    if not args.certificate:
        if not login:
            raise UsageError(
                f"No user to log in as on {args.target.host}: give user@{args.target.host}. "
                f"Usage: ldm {USAGE}"
            )
        check_user_name(login)
        if password is None:
            raise UsageError(
                f"No target password: ldm asks for it (Target Password:) or reads it with -p FILE; -c uses "
                f"certificates instead. Usage: ldm {USAGE}"
            )
    req = MigrationRequest(
        source=args.source,
        target_host=args.target.host,
        target_ldom=args.target_ldom,
        user=login if not args.certificate else "",
        password=None if args.certificate else password,
        certificate=args.certificate,
        dry_run=args.dry_run,
        force=args.force,
        precopy=parse_knobs(args.knobs, base=host.migrations.defaults()),
    )
    return host.migrations.start(req)


async def stream(host: Host, run: RunState) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_item(item: dict[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (ldmd stopping): nobody to tell
            pass

    run.subscribe(on_item)
    finished = False
    try:
        while True:
            item = await queue.get()
            yield (json.dumps(item) + "\n").encode()
            if item.get("type") == "result":
                finished = True
                return
    finally:
        run.unsubscribe(on_item)
        if not finished and not run.done.is_set():
            log.warning("migration of LDom %s: %s; cancelling it", run.domain, CLIENT_GONE)
            run.cancel(CLIENT_GONE)
