"""`ldm migrate-domain`: the verb's grammar and its target operand `[user@]target-host[:target-ldom]`."""

from __future__ import annotations

import pytest

from ldoms.binding import factory_default
from ldoms.cli.parse import parse_args
from ldoms.errors import BusyError, NotFoundError, OpExecError, UsageError, one_line
from ldoms.model.platforms import load_platform
from ldoms.ops.base import OpContext, lookup
from ldoms.ops.migrate import USAGE, MigrateArgs, TargetSpec, migrate_args, parse_target


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("dt212-239", TargetSpec(host="dt212-239")),
        ("root@dt212-239", TargetSpec(host="dt212-239", user="root")),
        ("system2:ldg-tgt", TargetSpec(host="system2", ldom="ldg-tgt")),
        ("admin@host2.example.com:new", TargetSpec(host="host2.example.com", user="admin", ldom="new")),
        ("192.0.2.7", TargetSpec(host="192.0.2.7")),
        ("u@[fe80::1]:ldg2", TargetSpec(host="fe80::1", user="u", ldom="ldg2")),
        ("[::1]", TargetSpec(host="::1")),
        ("h:ldg:1", TargetSpec(host="h", ldom="ldg:1")),  # ':' is a valid character of an LDom name
    ],
)
def test_target_operand(text: str, spec: TargetSpec) -> None:
    assert parse_target(text) == spec


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("@host", "the user name before '@' is empty"),
        ("user@", "the target host is missing"),
        ("host:", "the target domain name after ':' is empty"),
        (":ldg", "the target host is missing"),
        ("", "the target host is missing"),
        ("a@b@c", "more than one '@'"),
        ("1bad@host", "'1bad' is not a valid user name"),
        ("host_name", "'host_name' is neither a host name nor an IP address"),
        ("host:9bad", "'9bad' is not a valid LDom name"),
        ("[fe80::1", "'[' opens an IPv6 address that no ']' closes"),
        ("[nothex]:x", "'nothex' in brackets is not an IPv6 address"),
        ("[::1]x", "unexpected 'x' after the IPv6 address"),
        ("[::1]:", "the target domain name after ':' is empty"),
        ("host\n", "'host\\n' is neither a host name nor an IP address"),
    ],
)
def test_malformed_target_operand(text: str, why: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_target(text)
    assert f"Invalid target '{one_line(text)}': {why}" in e.value.message
    assert e.value.message.endswith(f"Usage: ldm {USAGE}")
    assert USAGE.startswith("migrate-domain [-f] [-n] [-c] [-p password-file] [--json] [max-downtime=T]")


def args(*words: str) -> MigrateArgs:
    spec = lookup("migrate-domain").spec
    return migrate_args(parse_args(spec, list(words)))


def test_flags() -> None:
    a = args("-n", "-p", "pfile", "ldg1", "root@system2:ldg2")
    assert (a.dry_run, a.password_file, a.source, a.target_ldom) == (True, "pfile", "ldg1", "ldg2")
    a = args("-fc", "ldg1", "system2")
    assert (a.force, a.certificate, a.target_ldom, a.password_file) == (True, True, "ldg1", None)
    assert args("-n", "--json", "ldg1", "h").json
    assert lookup("migrate").spec.name == "migrate-domain"


@pytest.mark.parametrize(
    ("words", "why"),
    [
        (
            ("-c", "ldg1", "root@h"),
            "Option -c authenticates with the hosts' certificates: no user may be given",
        ),
        (("-c", "-p", "f", "ldg1", "h"), "Options -c and -p exclude each other"),
        (("--json", "ldg1", "h"), "Option --json goes with -n"),
        (("ldg1",), "Missing operands"),
        (("ldg1", "h", "x"), "Too many operands"),
        (("-x", "ldg1", "h"), "Unknown option -x"),
        (("-p", "a", "-p", "b", "ldg1", "h"), "Option -p given more than once"),
        (("9ldg", "h"), "Invalid LDom name '9ldg'"),
    ],
)
def test_bad_command_lines(words: tuple[str, ...], why: str) -> None:
    with pytest.raises(UsageError, match=why):
        args(*words)


def test_prerequisites_and_no_plain_execution() -> None:
    op = lookup("migrate-domain")
    m = factory_default(load_platform("t5240"), "h1", seed=1)
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        op.check_prereq(m, args("nosuch", "h"), OpContext(now=0.0))
    with pytest.raises(BusyError, match=r"LDom primary is already being migrated \(x\)"):
        op.check_prereq(m, args("primary", "h"), OpContext(now=0.0, migrating={"primary": "x"}))
    with pytest.raises(OpExecError, match="POST /v1/migrate"):
        op.execute(m, args("primary", "h"), OpContext(now=0.0))
