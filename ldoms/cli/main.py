"""`ldm`: the Logical Domains Manager command line.

    ldm [--home DIR] [--help [VERB]]
    ldm [--home DIR] -V
    ldm [--home DIR] VERB [options] [properties] [operands]

A verb's words are parsed with its `VerbSpec` (`ldoms.cli.parse`); `-i FILE` is read here and sent as text.
Mutating verbs are sent to ldmd, which answers the lines to print.  Listing verbs fetch the host's view,
run the operation's argument and prerequisite checks against it (so `LDom x not found` reads as in LDoms)
and print what the formatter in `FORMATTERS` makes of it.  Errors are one line on stderr; the exit status
is the error's `exit_code` (2 for usage errors).

`migrate-domain` (`run_migrate`) checks its words and that the domain exists, asks `Target Password:`
without echo (unless `-p FILE` or `-c`), then follows the migration's stream until its result: nothing on
success; on failure every reason and `Domain Migration of LDom NAME failed` on stderr, exit 1 (3 when the
target refused the credentials); `-n --json` prints the verdict as one JSON document on stdout.  ldm
ignores SIGHUP meanwhile (a lost terminal does not stop the migration, SPEC 2.7); a KILL ends the
connection, which cancels it.  When stderr is a terminal, a live progress bar (`ldoms.cli.progress`) shows
the transfer and is erased at the end, so the lines that stay are the same with or without a terminal.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldoms.cli.client import Client
from ldoms.cli.parse import parse_args, synopsis
from ldoms.cli.progress import ProgressDisplay, should_show
from ldoms.daemon.home import HOME_ENV, resolve_home
from ldoms.errors import LdmError, UsageError, one_line
from ldoms.model.view import HostView
from ldoms.ops.base import REGISTRY, OpContext, Operation, Request, VerbSpec, lookup

if TYPE_CHECKING:
    from ldoms.ops.migrate import MigrateArgs

FILE_FLAGS = ("-i",)  # value flags naming a file whose contents travel in the request

Formatter = Callable[[HostView, Request], str]


def _names(req: Request) -> list[str]:
    return list(dict.fromkeys(req.operands))


def _list_domain(view: HostView, req: Request) -> str:
    from ldoms.cli.format.domains import format_list

    sections = str(req.flags["-o"]).split(",") if "-o" in req.flags else None
    f = req.flags
    return format_list(
        view, _names(req), long="-l" in f, extended="-e" in f, parseable="-p" in f, sections=sections
    )


def _list_bindings(view: HostView, req: Request) -> str:
    from ldoms.cli.format.domains import format_bindings

    return format_bindings(view, _names(req), parseable="-p" in req.flags)


def _list_constraints(view: HostView, req: Request) -> str:
    from ldoms.cli.format.common import select_domains
    from ldoms.cli.format.constraints import format_constraints
    from ldoms.model.xmlio import constraints_to_xml
    from ldoms.ops.common import effective_config

    configs = [effective_config(d) for d in select_domains(view.machine, _names(req))]
    if "-x" in req.flags:
        return constraints_to_xml(configs)
    if "-p" in req.flags:
        return format_constraints(configs, parseable=True)
    platform = view.machine.platform
    aliases = {b.dev: b.pseudonym for b in platform.pci_buses} | {n.dev: n.pseudonym for n in platform.nius}
    return format_constraints(configs, parseable=False, pseudonyms=aliases)


def _list_devices(view: HostView, req: Request) -> str:
    from ldoms.cli.format.devices import format_devices

    return format_devices(view, _names(req), all="-a" in req.flags, parseable="-p" in req.flags)


def _list_services(view: HostView, req: Request) -> str:
    from ldoms.cli.format.services import format_services

    return format_services(view, _names(req), parseable="-p" in req.flags)


def _list_variable(view: HostView, req: Request) -> str:
    from ldoms.cli.format.misc import format_variables

    return format_variables(view, req.operands[-1], list(req.operands[:-1]))


def _list_spconfig(view: HostView, req: Request) -> str:
    from ldoms.cli.format.misc import format_spconfig

    return format_spconfig(view.machine)


def _list_migrations(view: HostView, req: Request) -> str:
    from ldoms.cli.format.history import format_history

    return format_history(view, _names(req), parseable="-p" in req.flags, tz=None)  # local time for people


# The one table wiring listing verbs (canonical names) to the pure formatters.
FORMATTERS: dict[str, Formatter] = {
    "list-domain": _list_domain,
    "list-bindings": _list_bindings,
    "list-constraints": _list_constraints,
    "list-devices": _list_devices,
    "list-services": _list_services,
    "list-variable": _list_variable,
    "list-spconfig": _list_spconfig,
    "list-migrations": _list_migrations,
}


def _version(view: HostView) -> str:
    from ldoms.cli.format.misc import format_version

    return format_version(view.machine.platform, ldm_version=view.ldm_version)


# ------------------------------------------------------------------------------------------------- help
def _usage_lines(spec: VerbSpec) -> list[str]:
    """The synopsis, split at " | " where the alternative is a whole command line."""
    lines: list[str] = []
    for part in synopsis(spec).split(" | "):
        if lines and not part.startswith(spec.name + " ") and part != spec.name:
            lines[-1] += " | " + part
        else:
            lines.append(part)
    return lines


def general_help() -> str:
    from ldoms import ops  # noqa: F401  (importing the package registers every verb)

    out = [
        "Usage:",
        "    ldm [--home DIR] [--help] command [options] [properties] operands",
        "    ldm [--home DIR] -V",
        "",
        f"The host is the one whose ldmd serves DIR (default: ${HOME_ENV}, else ~/.ldoms).",
        "",
        "Command(s):",
    ]
    for name in sorted(REGISTRY):
        spec = REGISTRY[name].spec
        out += [f"    {line}" for line in _usage_lines(spec)]
        if spec.aliases:
            out.append(f"        (aliases: {', '.join(spec.aliases)})")
    return "\n".join(out) + "\n"


def verb_help(op: Operation) -> str:
    spec = op.spec
    out = ["Usage:", *(f"    ldm {line}" for line in _usage_lines(spec))]
    if spec.aliases:
        out.append(f"Aliases: {', '.join(spec.aliases)}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------- running
def read_files(request: Request) -> Request:
    """Replace each file-naming flag's value by the file's text."""
    if not any(f in request.flags for f in FILE_FLAGS):
        return request
    flags = dict(request.flags)
    for f in FILE_FLAGS:
        if f in flags:
            path = Path(str(flags[f]))
            try:
                flags[f] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise LdmError(f"Unable to read file {path}: {reason}") from e
    return Request(verb=request.verb, flags=flags, props=request.props, operands=request.operands)


def run_verb(client: Client, op: Operation, request: Request, out: Any) -> None:
    if op.spec.mutates:
        for message in client.op(request):
            out.write(message.rstrip("\n") + "\n")
        return
    formatter = FORMATTERS.get(op.spec.name)
    if formatter is None:
        raise LdmError(f"ldm cannot display {op.spec.name}: no formatter is wired for it")
    view = client.view()
    args = op.check_arguments(request)
    op.check_prereq(view.machine, args, OpContext(now=view.now))
    out.write(formatter(view, request))


def ask_password(prompt: str = "Target Password: ") -> str:
    """The target password, read without echo from the terminal (or from stdin when there is none)."""
    import getpass
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", getpass.GetPassWarning)  # no terminal: stdin, as a pipe gives it
        try:
            return getpass.getpass(prompt)
        except EOFError:
            raise UsageError("No target password was entered (end of input): use -p FILE or -c") from None


def invoking_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def run_migrate(client: Client, op: Operation, request: Request, out: Any, err: Any) -> int:
    from ldoms.peer.credentials import read_password_file

    args = op.check_arguments(request)
    view = client.view()
    op.check_prereq(view.machine, args, OpContext(now=view.now))
    password: str | None = None
    if not args.certificate:
        password = read_password_file(args.password_file) if args.password_file else ask_password()
    body = {
        "flags": {k: v for k, v in request.flags.items() if k != "-p"},  # the password travels, not the file
        "props": [list(p) for p in request.props],  # the live-migration knobs (max-downtime=..., ...)
        "operands": list(request.operands),
        "password": password,
        "user": invoking_user(),
    }
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    result: dict[str, Any] | None = None
    show = not (args.dry_run or args.json) and should_show(err)
    with ProgressDisplay(err, label=_progress_label(args), enabled=show) as bar:
        for item in client.migrate(body):
            if item.get("type") == "result":
                result = item
            else:
                bar.update(item)
    if result is None:
        raise LdmError(f"ldmd ended the migration of LDom {args.source} without a result (see its ldmd.log)")
    ok = bool(result.get("ok"))
    if args.json:
        verdict = {
            "domain": args.source,
            "target": args.target.host,
            "target_domain": args.target_ldom,
            "would_succeed": ok,
            "problems": result.get("problems", []),
            "warnings": result.get("warnings", []),
        }
        _quiet_write(out, json.dumps(verdict, indent=2) + "\n")
        return 0 if ok else int(result.get("exit_code") or 1)
    for line in result.get("lines", []):
        _quiet_write(err, printable(str(line)))
    return 0 if ok else int(result.get("exit_code") or 1)


def printable(text: str) -> str:
    """Text that came from ldmd (and maybe from a peer through it) as it may reach a terminal: LDoms'
    line breaks kept, every other control character escaped, so a peer cannot retitle, clear or recolour the
    administrator's terminal."""
    return "".join(one_line(part) + "\n" for part in text.rstrip("\n").split("\n"))


def _progress_label(args: MigrateArgs) -> str:
    target = args.target.host if args.target_ldom == args.source else f"{args.target.host}:{args.target_ldom}"
    return f"{args.source} → {target}"


def _quiet_write(stream: Any, text: str) -> None:
    """Write and flush; a terminal that is gone (SIGHUP ignored) must not turn the result into a traceback."""
    try:
        stream.write(text)
        stream.flush()
    except OSError:
        pass


def _split_globals(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Leading `--home DIR` / `--home=DIR` (before the verb); the rest."""
    words = list(argv)
    home: str | None = None
    while words:
        if words[0] == "--home":
            if len(words) < 2:
                raise UsageError("Option --home requires a directory. Usage: ldm --home DIR command ...")
            home, words = words[1], words[2:]
        elif words[0].startswith("--home="):
            home, words = words[0].split("=", 1)[1], words[1:]
        else:
            break
    return home, words


def main(argv: Sequence[str] | None = None) -> int:
    out, err = sys.stdout, sys.stderr
    try:
        home_arg, words = _split_globals(sys.argv[1:] if argv is None else argv)
        if not words or words[0] in ("--help", "-h", "help"):
            if len(words) > 1:
                out.write(verb_help(lookup(words[1])))
            else:
                out.write(general_help())
            return 0
        client = Client(resolve_home(home_arg))
        if words[0] == "-V":
            if len(words) > 1:
                raise UsageError("Option -V takes no operands. Usage: ldm -V")
            out.write(_version(client.view()))
            return 0
        try:
            op = lookup(words[0])
        except UsageError as e:
            raise UsageError(f"{e.message}: run 'ldm --help' for the list of commands") from e
        if "--help" in words[1:]:
            out.write(verb_help(op))
            return 0
        request = read_files(parse_args(op.spec, words[1:]))
        if op.spec.name == "migrate-domain":
            return run_migrate(client, op, request, out, err)
        run_verb(client, op, request, out)
        out.flush()
        return 0
    except LdmError as e:
        out.flush()
        err.write(printable(e.message))
        return e.exit_code
    except KeyboardInterrupt:
        err.write("Interrupted\n")
        return 130
    except BrokenPipeError:
        # `ldm ls | head`: the reader left.  Point stdout at /dev/null so the exit-time flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug: one line, as every ldm error; LDM_DEBUG=1 shows the traceback
        if os.environ.get("LDM_DEBUG"):
            raise
        err.write(f"ldm: internal error: {type(e).__name__}: {e} (set LDM_DEBUG=1 for details)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
