"""The grammar of `ldm list-migrations [-p] [ldom...]` (alias `ls-migrations`): the migrations this host
finished, from `HostView.history` (formatted by `ldoms.cli.format.history`).

It changes nothing (`mutates=False`).  Its prerequisite check is only the names' syntax: a domain that left
this host by migration is no longer in the machine but still has records, so whether a name is known is
decided against the history, by the formatter (`LDom NAME not found` when neither knows it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import check_grammar, check_name


@dataclass(frozen=True, slots=True)
class ListMigrationsArgs:
    names: tuple[str, ...] = ()  # domains (empty = all)
    parseable: bool = False


@register
class ListMigrations:
    spec = VerbSpec(
        name="list-migrations",
        aliases=("ls-migrations",),
        flags=("-p",),
        usage="list-migrations [-p] [ldom...]",
        mutates=False,
    )

    def check_arguments(self, request: Request) -> ListMigrationsArgs:
        check_grammar(request, self.spec)
        names = tuple(dict.fromkeys(check_name(n) for n in request.operands))
        return ListMigrationsArgs(names=names, parseable=bool(request.flags.get("-p")))

    def check_prereq(self, machine: Machine, args: ListMigrationsArgs, ctx: OpContext) -> None:
        return None

    def execute(self, machine: Machine, args: ListMigrationsArgs, ctx: OpContext) -> OpResult:
        return OpResult(machine=machine)
