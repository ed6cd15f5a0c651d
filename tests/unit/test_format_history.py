"""`ldm list-migrations [-p] [ldom...]`: golden files for the human and parseable forms, and every rule of
ldoms/cli/format/history.py (order, filtering, blank downtime, not found, free-text reason), plus the verb's
grammar and its wiring into ldm."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import timedelta, timezone
from pathlib import Path

import pytest

from ldoms.binding import factory_default
from ldoms.cli import main as cli
from ldoms.cli.format.history import HEADER, format_history, select_records, shows_downtime
from ldoms.cli.parse import parse_args
from ldoms.errors import NotFoundError, UsageError
from ldoms.model.domain import Domain, DomainConfig
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.model.view import HostView, MigrationRecord
from ldoms.ops.base import ALIASES, OpContext, Request, lookup, run
from ldoms.units import G, M

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def golden(name: str) -> str:
    return (GOLDEN / f"{name}.txt").read_text()


def machine(*guests: str) -> Machine:
    m = factory_default(load_platform("t5240"), "host1", seed=1)
    for name in guests:
        m = m.with_domain(Domain(config=DomainConfig(name=name, uuid=f"u-{name}", hostid=1, mac=1)))
    return m


LIVE = MigrationRecord(
    id="6f1c2a9e", domain="ldg1", role="source", peer="host2", kind="active", started_at=T0,
    ended_at=T0 + 1.234, outcome="completed", downtime_s=0.275, bytes_sent=1_100_000_000,
    memory_bytes=G, rounds=4, channels=2,
)  # fmt: skip
COLD = MigrationRecord(
    id="0b7d51c3", domain="ldg2", role="target", peer="host2", kind="bound", started_at=T0 + 60,
    ended_at=T0 + 60.5, outcome="completed", bytes_sent=4_096, memory_bytes=512 * M,
)  # fmt: skip
REFUSED = MigrationRecord(
    id="9a0e44d1", domain="ldg1", role="source", peer="dt212-239", kind="active", started_at=T0 - 3600,
    ended_at=T0 - 3599.9, outcome="failed", memory_bytes=2 * G,
    reason="Unable to bind 2G memory region at real address 0x8000000",
)  # fmt: skip
LONG = MigrationRecord(
    id="c4e2f7a8", domain="ldg3", role="source", peer="host2", kind="active", started_at=T0 + 120,
    ended_at=T0 + 245.6, outcome="cancelled", reason="cancelled by the administrator\n(ldm cancel-operation)",
    downtime_s=0.0, bytes_sent=27_000_000_000, memory_bytes=16 * G, rounds=30, channels=2,
)  # fmt: skip


def view(*records: MigrationRecord, guests: tuple[str, ...] = ("ldg2",), version: str = "1.2") -> HostView:
    return HostView(machine=machine(*guests), now=T0 + 300, history=records, ldm_version=version)


# ------------------------------------------------------------------------------------------- golden files
def test_human_golden() -> None:
    # Newest last in the view, but also given out of order: the listing is oldest first.
    out = format_history(view(COLD, LIVE, REFUSED, LONG), [])
    assert out == golden("history")


def test_parseable_golden() -> None:
    out = format_history(view(LIVE, REFUSED, COLD, LONG), [], parseable=True)
    assert out == golden("history_p")


def test_empty_history_is_the_header_alone() -> None:
    assert format_history(view(), []) == HEADER + "\n"
    assert format_history(view(), [], parseable=True) == "VERSION 1.0\n"
    assert format_history(view(version="3.6"), [], parseable=True) == "VERSION 1.6\n"  # the house profile


# ------------------------------------------------------------------------------------------------ rules
def test_naming_domains_filters_and_a_migrated_away_domain_is_found() -> None:
    v = view(LIVE, COLD, REFUSED)  # ldg1 left this host: it is in no machine, only in the records
    assert [r.id for r in select_records(v, ["ldg1"])] == [REFUSED.id, LIVE.id]
    assert [r.id for r in select_records(v, ["ldg2", "ldg1"])] == [REFUSED.id, LIVE.id, COLD.id]
    assert select_records(v, ["primary"]) == []  # a domain here that never migrated: nothing, no error
    assert format_history(v, ["primary"]) == HEADER + "\n"


def test_a_name_nobody_knows_is_not_found() -> None:
    with pytest.raises(NotFoundError, match=r"^LDom nosuch not found$"):
        format_history(view(LIVE), ["ldg1", "nosuch"])


def test_downtime_only_where_a_guest_paused() -> None:
    assert shows_downtime(LIVE)
    assert not shows_downtime(COLD)  # a cold migration stops no guest
    assert not shows_downtime(REFUSED)  # refused in the checks: never paused
    assert shows_downtime(replace(REFUSED, outcome="cancelled", downtime_s=0.05))  # paused, then resumed
    row = format_history(view(COLD), [], parseable=True).splitlines()[1]
    assert "|downtime=|" in row


def test_reason_is_one_line_and_last() -> None:
    out = format_history(view(LONG), [], parseable=True)
    assert out.count("\n") == 2
    assert out.splitlines()[1].endswith("|reason=cancelled by the administrator (ldm cancel-operation)")


def test_local_time_zone_is_the_callers_choice() -> None:
    plus2 = timezone(timedelta(hours=2))
    row = format_history(view(LIVE), [], tz=plus2).splitlines()[1]
    assert row.startswith("2023-11-15 00:13:20  ldg1")
    assert format_history(view(LIVE), [], tz=None).splitlines()[1][19:].startswith("  ldg1")  # local zone


def test_end_before_start_shows_no_negative_time() -> None:
    skewed = replace(LIVE, ended_at=LIVE.started_at - 5)  # a clock step between start and end
    assert "|total=0.000|" in format_history(view(skewed), [], parseable=True)


# ---------------------------------------------------------------------------------------------- the verb
def test_verb_grammar_and_alias() -> None:
    op = lookup("ls-migrations")
    assert op.spec.name == "list-migrations" and ALIASES["ls-migrations"] == "list-migrations"
    assert not op.spec.mutates
    args = op.check_arguments(parse_args(op.spec, ["-p", "ldg1", "ldg1", "ldg2"]))
    assert args.parseable and args.names == ("ldg1", "ldg2")
    m = machine()
    result = run(m, Request(verb="list-migrations", operands=("gone",)), OpContext(now=0.0))
    assert result.machine is m and result.messages == ()  # a listing changes nothing; `gone` may be history


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (Request(verb="list-migrations", flags={"-l": True}), "Invalid option -l for list-migrations"),
        (Request(verb="list-migrations", operands=("bad name",)), "Invalid LDom name 'bad name'"),
        (Request(verb="list-migrations", props=(("a", "b"),)), "Invalid property 'a' for list-migrations"),
    ],
)
def test_verb_refusals(request_: Request, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        run(machine(), request_, OpContext(now=0.0))


class FakeClient:
    def __init__(self, v: HostView) -> None:
        self.v = v

    def view(self) -> HostView:
        return self.v


def test_ldm_prints_it_through_the_formatters_table() -> None:
    assert "list-migrations" in cli.FORMATTERS
    op = lookup("list-migrations")
    out = io.StringIO()
    cli.run_verb(FakeClient(view(LIVE)), op, parse_args(op.spec, ["-p"]), out)  # type: ignore[arg-type]
    assert out.getvalue() == format_history(view(LIVE), [], parseable=True)
    out = io.StringIO()
    cli.run_verb(FakeClient(view(LIVE)), op, parse_args(op.spec, ["ldg1"]), out)  # type: ignore[arg-type]
    assert out.getvalue().splitlines()[0] == HEADER
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        cli.run_verb(FakeClient(view(LIVE)), op, parse_args(op.spec, ["nosuch"]), io.StringIO())  # type: ignore[arg-type]
    assert "list-migrations [-p] [ldom...]" in cli.general_help()
