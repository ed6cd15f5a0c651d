"""`ldm list-migrations [-p] [ldom...]`: the migrations this host finished, oldest first.

LDoms has no such listing; this one follows the house style of the others (SPEC 5.1).  Human form: a header
`STARTED DOMAIN ROLE PEER KIND OUTCOME TIME DOWNTIME SENT MEMORY ROUNDS CHAN REASON`, then one row per
migration in fixed-width columns (`COLUMNS`; an over-long value pushes the rest right; tests/golden/
history*.txt show it):

- STARTED is the start in the given time zone (UTC in tests; ldm passes the local zone), to the second.
- DOMAIN is the name on this host (the source name on the source, the target name on the target).
- TIME is start to end; DOWNTIME is the pause the guest itself measured, shown only for an active domain
  that completed or paused (a cold migration stops no guest, so the cell is blank, as UTIL is for a bound
  domain); SENT is approximate (`approx_size`), MEMORY exact (LDoms' sizes).
- An empty history prints the header alone (`-p`: the VERSION line alone).

Parseable (`-p`): the `VERSION` line, then one record per migration, sizes in bytes and times in seconds
(start and end: whole seconds since the epoch; durations: three decimals), `reason` last because it is free
text (newlines folded into blanks):

    MIGRATION|id=...|domain=ldg1|role=source|peer=host2|kind=active|outcome=completed|start=1700000000|
    end=1700000001|total=1.234|downtime=0.275|sent=1100000000|mem=1073741824|rounds=4|channels=2|reason=

(one line; wrapped here).

Naming a domain keeps its records; a name that is neither a domain here nor in the history is `LDom NAME not
found` (a domain that left this host by migration is still found through its records).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo

from ldoms.cli.format.common import cols, kv, parseable_version
from ldoms.cli.format.quantities import approx_size, duration
from ldoms.errors import NotFoundError
from ldoms.model.view import HostView, MigrationRecord
from ldoms.units import format_size

# (title, width): the last column (REASON) takes the rest of the line.
COLUMNS = (
    ("STARTED", 21), ("DOMAIN", 10), ("ROLE", 8), ("PEER", 12), ("KIND", 10), ("OUTCOME", 11), ("TIME", 9),
    ("DOWNTIME", 10), ("SENT", 8), ("MEMORY", 8), ("ROUNDS", 8), ("CHAN", 6),
)  # fmt: skip
HEADER = cols(*COLUMNS, last="REASON")


def select_records(view: HostView, names: Sequence[str]) -> list[MigrationRecord]:
    """The records of the named domains (all when none is named), oldest first."""
    records = sorted(view.history, key=lambda r: (r.started_at, r.ended_at))
    if not names:
        return records
    wanted = set(names)
    known = {r.domain for r in records} | {d.name for d in view.machine.domains}
    for name in names:
        if name not in known:
            raise NotFoundError(f"LDom {name} not found")
    return [r for r in records if r.domain in wanted]


def shows_downtime(rec: MigrationRecord) -> bool:
    """Only an active domain's guest pauses; a failed one that never paused has nothing to show."""
    return rec.kind == "active" and (rec.outcome == "completed" or rec.downtime_s > 0)


def _when(seconds: float, tz: tzinfo | None) -> str:
    if tz is None:
        return datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return datetime.fromtimestamp(seconds, tz).strftime("%Y-%m-%d %H:%M:%S")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def human_row(rec: MigrationRecord, tz: tzinfo | None = UTC) -> str:
    total = max(0.0, rec.ended_at - rec.started_at)
    cells = (
        _when(rec.started_at, tz), rec.domain, rec.role, rec.peer, rec.kind, rec.outcome, duration(total),
        duration(rec.downtime_s) if shows_downtime(rec) else "", approx_size(rec.bytes_sent),
        format_size(rec.memory_bytes), str(rec.rounds), str(rec.channels),
    )  # fmt: skip
    return cols(*zip(cells, (w for _, w in COLUMNS), strict=True), last=_one_line(rec.reason))


def parseable_record(rec: MigrationRecord) -> str:
    total = max(0.0, rec.ended_at - rec.started_at)
    return "MIGRATION" + kv(
        ("id", rec.id), ("domain", rec.domain), ("role", rec.role), ("peer", rec.peer), ("kind", rec.kind),
        ("outcome", rec.outcome), ("start", int(rec.started_at)), ("end", int(rec.ended_at)),
        ("total", f"{total:.3f}"), ("downtime", f"{rec.downtime_s:.3f}" if shows_downtime(rec) else ""),
        ("sent", rec.bytes_sent), ("mem", rec.memory_bytes), ("rounds", rec.rounds),
        ("channels", rec.channels), ("reason", _one_line(rec.reason)),
    )  # fmt: skip


def format_history(
    view: HostView, names: Sequence[str], *, parseable: bool = False, tz: tzinfo | None = UTC
) -> str:
    """`ldm list-migrations [-p] [ldom...]`; `tz=None` shows STARTED in the local time zone."""
    records = select_records(view, names)
    if parseable:
        lines = [parseable_version(view), *(parseable_record(r) for r in records)]
    else:
        lines = [HEADER, *(human_row(r, tz) for r in records)]
    return "".join(f"{line}\n" for line in lines)
