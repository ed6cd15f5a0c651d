"""Operations: how a verb changes a host.

Theory of operation.  `ldm` parses a command line into a `Request` using only the verb's grammar (which
flags, which `key=value` properties, how many operands: `VerbSpec`).  The daemon hands the request and the
current `Machine` to `run()`, which finds the operation and calls its three phases:

1. `check_arguments(request)` turns the generic request into typed values (sizes, numbers, MACs) or raises
   `UsageError`;
2. `check_prereq(machine, args)` verifies the state allows it and raises an `OpPrereqError` subclass (nothing
   has changed);
3. `execute(machine, args)` returns the new `Machine`, the lines to print, and the side effects the daemon
   must carry out (start or stop a guest process).  Only this phase builds new state, and it does not raise
   for reasons `check_prereq` could have seen.

Operations are pure: no I/O, no clock (the time comes in through `OpContext`), so they are unit-tested on
values.  The daemon writes the new machine in one transaction: one operation, one commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ldoms.errors import LdmError, UsageError, one_line
from ldoms.model.machine import Machine


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A parsed command line.  `verb` is the canonical (long) name; `flags` maps a flag ("-a", "-c") to True
    or to its value ("-i" -> file contents, read by the CLI); `props` are `key=value` operands in order."""

    verb: str
    flags: dict[str, Any] = field(default_factory=dict)
    props: tuple[tuple[str, str], ...] = ()
    operands: tuple[str, ...] = ()

    def prop(self, key: str) -> str | None:
        for k, v in self.props:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartGuest:
    domain: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StopGuest:
    domain: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelMigration:
    """Ask the migration engine to abort the migration of `domain` (`cancel-operation migration`)."""

    domain: str


Effect = StartGuest | StopGuest | CancelMigration


@dataclass(frozen=True, slots=True, kw_only=True)
class OpResult:
    machine: Machine
    messages: tuple[str, ...] = ()  # printed by ldm on stdout, one per line (notices, confirmations)
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class OpContext:
    now: float  # wall-clock seconds (uptime start of domains started now)
    # Domains locked by a migration in progress on this host: name -> description for messages.
    migrating: dict[str, str] = field(default_factory=dict)
    random_seed: int | None = None  # for UUIDs/hostids in tests; None = os randomness


@dataclass(frozen=True, slots=True, kw_only=True)
class VerbSpec:
    """The grammar of one verb: what the CLI accepts before anything is sent to the daemon."""

    name: str  # canonical long name, e.g. "add-vcpu"
    aliases: tuple[str, ...] = ()  # e.g. ("add-vcpu",) short forms like "rm-vcpu" go here
    flags: tuple[str, ...] = ()  # boolean flags, e.g. ("-c",)
    value_flags: tuple[str, ...] = ()  # flags taking a value, e.g. ("-i",) (a file name the CLI reads)
    props: tuple[str, ...] = ()  # accepted key=value keys
    min_operands: int = 0
    max_operands: int | None = None  # None = unlimited
    usage: str = ""  # LDoms-style synopsis printed on a usage error
    mutates: bool = True  # False for read-only verbs (listings)


class Operation(Protocol):
    spec: VerbSpec

    def check_arguments(self, request: Request) -> Any: ...

    def check_prereq(self, machine: Machine, args: Any, ctx: OpContext) -> None: ...

    def execute(self, machine: Machine, args: Any, ctx: OpContext) -> OpResult: ...


REGISTRY: dict[str, Operation] = {}
ALIASES: dict[str, str] = {}


def register(op_cls: Callable[[], Operation]) -> Callable[[], Operation]:
    """Class decorator: instantiate and register an operation under its name and aliases."""
    op = op_cls()
    name = op.spec.name
    if name in REGISTRY:
        raise RuntimeError(f"verb {name} registered twice")
    REGISTRY[name] = op
    ALIASES[name] = name
    for alias in op.spec.aliases:
        ALIASES[alias] = name
    return op_cls


def lookup(verb: str) -> Operation:
    from ldoms import ops as _ops  # noqa: F401  (importing the package registers every operation)

    name = ALIASES.get(verb)
    if name is None:
        raise UsageError(one_line(f"Unknown command: {verb}"))  # the API takes any string as a verb
    return REGISTRY[name]


def run(machine: Machine, request: Request, ctx: OpContext) -> OpResult:
    try:
        op = lookup(request.verb)
        args = op.check_arguments(request)
        op.check_prereq(machine, args, ctx)
        return op.execute(machine, args, ctx)
    except LdmError as e:
        # Refusals quote what was asked (names, values), which may hold newlines or other control characters
        # (the API takes any string): escaped here, once for every operation, the message stays one line.
        # No operation raises LDoms' documented multi-line texts (those are notices, in OpResult.messages).
        e.message = one_line(e.message)
        e.args = (e.message,)
        raise
