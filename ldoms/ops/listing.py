"""The grammar of the listing verbs.  They change nothing (`mutates=False`); `execute` returns the machine
as it is, and the CLI formats the host's view according to the typed arguments built here.

    ldm list-domain [-e] [-l] [-o format] [-p] [ldom...]
    ldm list-bindings [-e] [-p] [ldom...]
    ldm list-constraints ([-x] | [-e] [-p]) [ldom...]
    ldm list-devices [-a] [-p] [cpu] [crypto|mau] [memory|mem] [io]
    ldm list-services [-e] [-p] [ldom...]

(`list-variable` and `list-spconfig` live with their kind, in `variables` and `spconfig`.)  A domain named
but not defined is `LDom X not found`: scripts poll `ldm ls -o status` until that substring appears.
"""

from __future__ import annotations

from dataclasses import dataclass

from ldoms.errors import UsageError
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import check_grammar, check_name, get_domain

# `-o` keywords: 1.2, then 1.3's resmgmt and stats, 3.x's core.
LIST_FORMATS = (
    "console", "core", "cpu", "crypto", "disk", "domain", "memory", "network", "physio", "resmgmt", "serial",
    "stats", "status",
)
# list-devices classes, with their aliases mapped to the canonical name.
DEVICE_CLASSES = {"cpu": "cpu", "crypto": "crypto", "mau": "crypto", "memory": "memory", "mem": "memory",
                  "io": "io"}


@dataclass(frozen=True, slots=True)
class ListArgs:
    names: tuple[str, ...] = ()  # domains (empty = all); for list-devices: the device classes
    extended: bool = False  # -e
    long: bool = False  # -l
    parseable: bool = False  # -p
    xml: bool = False  # -x
    all: bool = False  # -a
    formats: tuple[str, ...] = ()  # -o


def _domains(request: Request) -> tuple[str, ...]:
    return tuple(dict.fromkeys(check_name(n) for n in request.operands))


def _flags(request: Request) -> dict[str, bool]:
    f = request.flags
    return {
        "extended": bool(f.get("-e")),
        "long": bool(f.get("-l")),
        "parseable": bool(f.get("-p")),
        "xml": bool(f.get("-x")),
        "all": bool(f.get("-a")),
    }


def parse_formats(text: object) -> tuple[str, ...]:
    """'-o network,memory' -> ('network', 'memory'); comma-separated, no spaces (SPEC §5.3)."""
    if not isinstance(text, str) or not text:
        raise UsageError(
            f"Option -o needs a format: one or more of {', '.join(LIST_FORMATS)}, comma-separated"
        )
    formats = tuple(text.split(","))
    for fmt in formats:
        if fmt not in LIST_FORMATS:
            raise UsageError(f"Invalid format '{fmt}' for -o: valid formats are {', '.join(LIST_FORMATS)}")
    return tuple(dict.fromkeys(formats))


class _Listing:
    """Common phases: names checked, nothing changed."""

    spec: VerbSpec

    def check_arguments(self, request: Request) -> ListArgs:
        check_grammar(request, self.spec)
        return ListArgs(names=_domains(request), **_flags(request))

    def check_prereq(self, machine: Machine, args: ListArgs, ctx: OpContext) -> None:
        for name in args.names:
            get_domain(machine, name)  # "LDom X not found"

    def execute(self, machine: Machine, args: ListArgs, ctx: OpContext) -> OpResult:
        return OpResult(machine=machine)


@register
class ListDomain(_Listing):
    spec = VerbSpec(
        name="list-domain",
        aliases=("ls-domain", "list-dom", "ls-dom", "list", "ls"),
        flags=("-e", "-l", "-p"),
        value_flags=("-o",),
        usage="list-domain [-e] [-l] [-o format] [-p] [ldom...]",
        mutates=False,
    )

    def check_arguments(self, request: Request) -> ListArgs:
        check_grammar(request, self.spec)
        formats = parse_formats(request.flags["-o"]) if "-o" in request.flags else ()
        return ListArgs(names=_domains(request), formats=formats, **_flags(request))


@register
class ListBindings(_Listing):
    spec = VerbSpec(
        name="list-bindings",
        aliases=("ls-bindings",),
        flags=("-e", "-p"),
        usage="list-bindings [-e] [-p] [ldom...]",
        mutates=False,
    )


@register
class ListConstraints(_Listing):
    spec = VerbSpec(
        name="list-constraints",
        aliases=("ls-constraints",),
        flags=("-x", "-e", "-p"),
        usage="list-constraints ([-x] | [-e] [-p]) [ldom...]",
        mutates=False,
    )

    def check_arguments(self, request: Request) -> ListArgs:
        args = super().check_arguments(request)
        if args.xml and (args.parseable or args.extended):
            raise UsageError(f"Option -x cannot be combined with -e or -p. Usage: ldm {self.spec.usage}")
        return args


@register
class ListServices(_Listing):
    spec = VerbSpec(
        name="list-services",
        aliases=("ls-services",),
        flags=("-e", "-p"),
        usage="list-services [-e] [-p] [ldom...]",
        mutates=False,
    )


@register
class ListDevices(_Listing):
    """`names` holds the device classes asked for (canonical: cpu, crypto, memory, io; empty = all)."""

    spec = VerbSpec(
        name="list-devices",
        aliases=("ls-devices",),
        flags=("-a", "-p"),
        usage="list-devices [-a] [-p] [cpu] [crypto|mau] [memory|mem] [io]",
        mutates=False,
    )

    def check_arguments(self, request: Request) -> ListArgs:
        check_grammar(request, self.spec)
        classes: list[str] = []
        for op in request.operands:
            if op not in DEVICE_CLASSES:
                raise UsageError(
                    f"Invalid device class '{op}': valid classes are cpu, crypto (mau), memory (mem) and io"
                )
            classes.append(DEVICE_CLASSES[op])
        return ListArgs(names=tuple(dict.fromkeys(classes)), **_flags(request))

    def check_prereq(self, machine: Machine, args: ListArgs, ctx: OpContext) -> None:
        return None
