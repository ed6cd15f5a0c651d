"""`ldm migrate-domain` (alias `migrate`): its grammar, and the operand `[user@]target-host[:target-ldom]`.

    ldm migrate-domain [-f] [-n] [-c] [-p password-file] [--json] [max-downtime=T] [bandwidth=RATE]
                       [auto-converge=on|off] [max-time=T] [max-rounds=N]
                       source-ldom [user@]target-host[:target-ldom]

This module is only the verb's syntax and its local prerequisite (the source domain exists): a migration is
not one operation on one machine but a conversation between two ldmds, carried out by the migration engine
(`ldoms.daemon.migrate`, reached through `POST /v1/migrate`).  `ldm` parses and checks the command line here
before it asks for the password, so a malformed target never costs a prompt.

Decisions where SPEC is silent:
- `-c` (certificates) takes no `user@` and no `-p` (SPEC 2.4: no password is asked for, no alternate user);
- `--json` is accepted with `-n` only: it prints the dry run's verdict as one JSON document (every problem's
  code, side, resource, observed, required and remedy) instead of the lines; a real migration has no
  document to print (success is silent, failure is the LDoms lines);
- a target host is a host name, an IPv4 address or a bracketed IPv6 address (`[fe80::1]:ldg2`), because
  the colon separates the target domain name;
- `-f` is accepted (2.0+ syntax); LDoms 1.2 rules have no forceable check, so it changes nothing yet;
- the live-migration knobs are properties (`max-downtime=100ms bandwidth=500M auto-converge=off
  max-time=2m max-rounds=20`, `ldoms.migration.precopy_knobs`): each overrides the host's default
  (`ldmd --migration-defaults`) for this migration only; a bad value is a usage error before any prompt.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ldoms.errors import BusyError, OpExecError, UsageError, one_line
from ldoms.migration.precopy_knobs import KNOBS, parse_knobs
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import check_grammar, check_name, get_domain

USAGE = (
    "migrate-domain [-f] [-n] [-c] [-p password-file] [--json] [max-downtime=T] [bandwidth=RATE] "
    "[auto-converge=on|off] [max-time=T] [max-rounds=N] source-ldom [user@]target-host[:target-ldom]"
)
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
# The same rule as `ldmd user add` (ldoms.peer.credentials): a target user must be able to exist there.
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """`[user@]target-host[:target-ldom]` taken apart; `user` and `ldom` are None when not given."""

    host: str
    user: str | None = None
    ldom: str | None = None


@dataclass(frozen=True, slots=True)
class MigrateArgs:
    source: str
    target: TargetSpec
    dry_run: bool = False
    certificate: bool = False
    force: bool = False
    json: bool = False
    password_file: str | None = None
    knobs: tuple[str, ...] = ()  # "name=value" live-migration settings, checked (precopy_knobs)

    @property
    def target_ldom(self) -> str:
        return self.target.ldom or self.source


def _bad(text: str, why: str) -> UsageError:
    # The operand may hold control characters: escaped, the message stays one line and still shows them.
    return UsageError(one_line(f"Invalid target '{text}': {why}. Usage: ldm {USAGE}"))


def check_target_host(host: str, text: str) -> str:
    """A host name or an IP address (IPv6 without its brackets)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not _HOST_RE.fullmatch(host):
        raise _bad(text, f"'{host}' is neither a host name nor an IP address")
    return host


def parse_target(text: str) -> TargetSpec:
    """`[user@]target-host[:target-ldom]` -> TargetSpec, refusing an empty user, host or domain name."""
    user: str | None = None
    rest = text
    if "@" in text:
        user, rest = text.split("@", 1)
        if not user:
            raise _bad(text, "the user name before '@' is empty")
        if not _USER_RE.fullmatch(user):
            raise _bad(
                text,
                f"'{user}' is not a valid user name (1 to 32 letters, digits, '_', '.' or '-', not starting "
                "with a digit, '.' or '-')",
            )
        if "@" in rest:
            raise _bad(text, "more than one '@'")
    ldom: str | None = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise _bad(text, "'[' opens an IPv6 address that no ']' closes")
        host, after = rest[1:end], rest[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(text, f"'{host}' in brackets is not an IPv6 address") from None
        if after:
            if not after.startswith(":"):
                raise _bad(text, f"unexpected '{after}' after the IPv6 address")
            ldom = after[1:]
            if not ldom:
                raise _bad(text, "the target domain name after ':' is empty")
    else:
        host, colon, name = rest.partition(":")
        if not host:
            raise _bad(text, "the target host is missing")
        if colon:
            if not name:
                raise _bad(text, "the target domain name after ':' is empty")
            ldom = name
        check_target_host(host, text)
    if not host:
        raise _bad(text, "the target host is missing")
    if ldom is not None:
        try:
            check_name(ldom)
        except UsageError:
            raise _bad(
                text,
                f"'{ldom}' is not a valid LDom name (it starts with a letter and holds only letters, digits "
                "and - _ + # . : ; ~ ( ), at most 64 characters)",
            ) from None
    return TargetSpec(host=host, user=user, ldom=ldom)


def migrate_args(request: Request) -> MigrateArgs:
    """Typed arguments of a migrate-domain request, or a UsageError naming the problem."""
    check_grammar(request, MigrateDomain.spec)
    source, target_text = request.operands
    check_name(source)
    target = parse_target(target_text)
    f = request.flags
    certificate = bool(f.get("-c"))
    password_file = f.get("-p")
    if password_file is not None and not isinstance(password_file, str):
        raise UsageError(f"Option -p requires a password file. Usage: ldm {USAGE}")
    if certificate and target.user is not None:
        raise UsageError(
            f"Option -c authenticates with the hosts' certificates: no user may be given ({target.user}@). "
            f"Usage: ldm {USAGE}"
        )
    if certificate and password_file is not None:
        raise UsageError(
            f"Options -c and -p exclude each other: -c authenticates with certificates, no password. "
            f"Usage: ldm {USAGE}"
        )
    knobs = tuple(f"{k}={v}" for k, v in request.props)
    try:
        parse_knobs(knobs)
    except UsageError as e:
        raise UsageError(f"{e.message}. Usage: ldm {USAGE}") from None
    dry_run = bool(f.get("-n"))
    if f.get("--json") and not dry_run:
        raise UsageError(f"Option --json goes with -n (the dry run's verdict). Usage: ldm {USAGE}")
    return MigrateArgs(
        source=source,
        target=target,
        dry_run=dry_run,
        certificate=certificate,
        force=bool(f.get("-f")),
        json=bool(f.get("--json")),
        password_file=password_file,
        knobs=knobs,
    )


@register
class MigrateDomain:
    spec = VerbSpec(
        name="migrate-domain",
        aliases=("migrate",),
        flags=("-n", "-c", "-f", "--json"),
        value_flags=("-p",),
        props=KNOBS,
        min_operands=2,
        max_operands=2,
        usage=USAGE,
    )

    def check_arguments(self, request: Request) -> MigrateArgs:
        return migrate_args(request)

    def check_prereq(self, machine: Machine, args: MigrateArgs, ctx: OpContext) -> None:
        get_domain(machine, args.source)  # LDom <name> not found
        if args.source in ctx.migrating:
            raise BusyError(
                f"LDom {args.source} is already being migrated ({ctx.migrating[args.source]}): only one "
                "migration of a domain at a time"
            )

    def execute(self, machine: Machine, args: MigrateArgs, ctx: OpContext) -> OpResult:
        # Never reached through ldmd: a migration is a conversation with another ldmd, not one commit here.
        raise OpExecError(
            "migrate-domain is carried out by ldmd's migration engine (POST /v1/migrate), not as a single "
            "operation"
        )
