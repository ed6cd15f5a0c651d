"""Shared pieces of every listing: column layout, flags, the per-domain summary values and version profiles.

Theory of operation.  Every formatter is a pure function of a `HostView` (state + clock + utilisation +
migration progress) and returns the exact text `ldm` prints, trailing newline included.  Human output is
built from fixed-width columns (`cols`): a value is left-aligned in its column and always followed by at least
one space, so an over-long value pushes the next column right instead of touching it; trailing blanks are
stripped from every line (the 1.2 book shows a stray blank after `512M` on bound rows: we never emit one).

Decisions where SPEC.md is silent or its samples disagree (each golden test names the difference it makes):

- The short header is the 3.x one, `NAME             STATE      FLAGS   CONS    VCPU  MEMORY   UTIL  UPTIME`
  (STATE 11 wide instead of 1.2's 9) because FLAGS is always six characters and `suspended` must fit.
- FLAGS column 2 is `n` for an active domain whose guest reports `Solaris running` (or nothing yet), `t`
  for an active domain whose guest reports anything else (OpenBoot, booting), `-` otherwise.  The 1.2 book's
  samples show `t` on running domains; the same book defines `n` as normal and 3.x samples show `-n-cv-`.
  Column 1 (`s`) and `d`egraded (column 2) and `r` (column 3) are never set: the model has no such states.
- CONS is `SP` for the control domain (`UART` in 3.x mode), the console port for a guest holding one, blank
  otherwise (inactive, or a migration target before its console is allocated, SPEC 7.18).  The 1.2 short
  sample shows a blank CONS for primary; the 1.2 `-l -p` sample says `cons=SP`; we follow the latter.
- VCPU and MEMORY come from the bindings of a bound/active domain, from the constraints of an inactive one or
  of a migration target (SPEC 7.18).  UTIL and UPTIME are blank unless the domain is active.
- The STATE of a migration source is `suspended` while its `MigrationStatus.suspended` is set (SPEC 1.3, 7.2).
- UTIL: the text with its `%` is right-aligned in 4 columns then 2 spaces (`0.5%`, ` 23%`, `100%`), which is
  what the 1.2 samples show; in `-l` every vCPU row shows the domain's figure (the view has one per domain).
- Version profile (`HostView.ldm_version`): the parseable `VERSION` line is 1.0 for 1.2, 1.4 for 1.3, 1.5 for
  2.x and 1.6 for 3.x; 3.x also says `UART` for the control domain's console and adds `norm_util` to the
  short `-p` line of active domains.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ldoms.errors import NotFoundError
from ldoms.model.domain import Domain, DomainState, MigrationRole
from ldoms.model.machine import Machine
from ldoms.model.view import HostView, MigrationStatus
from ldoms.units import format_size, format_uptime, format_util

SEPARATOR = "-" * 78
LIST_HEADER = "NAME             STATE      FLAGS   CONS    VCPU  MEMORY   UTIL  UPTIME"
INDENT = "    "

# Spelled-out flag names for `-l -p` (SPEC 5.3: only normal/control/vio-service are documented).
_MIGRATION_LETTER = {MigrationRole.SOURCE: "s", MigrationRole.TARGET: "t", MigrationRole.ERROR: "e"}
_MIGRATION_WORD = {
    MigrationRole.SOURCE: "source",
    MigrationRole.TARGET: "target",
    MigrationRole.ERROR: "error",
}
_RUNNING_SOFTSTATES = ("", "Solaris running")


# ---------------------------------------------------------------- layout
def cols(*cells: tuple[str, int], last: str = "", indent: str = "") -> str:
    """Fixed-width columns: each (text, width) cell left-aligned, at least one space after it."""
    out = [indent]
    for text, width in cells:
        out.append(text.ljust(width - 1) + " ")
    out.append(last)
    return "".join(out).rstrip()


def section(title: str, lines: Iterable[str]) -> str:
    """A human section: the title at column 0, then its lines (already indented), newline-terminated."""
    return "".join(f"{line}\n" for line in (title, *lines))


def join_blocks(blocks: Sequence[str]) -> str:
    """Domains of a long listing, separated by a line of 78 dashes preceded by a blank line."""
    return f"\n{SEPARATOR}\n".join(blocks)


def block(head: str, sections: Iterable[str]) -> str:
    """A domain block: its head lines, then each section preceded by a blank line."""
    return head + "".join(f"\n{s}" for s in sections)


def select_domains(machine: Machine, names: Sequence[str]) -> list[Domain]:
    """The named domains in the order given, or every domain in machine order; a missing name is an error."""
    if not names:
        return list(machine.domains)
    out: list[Domain] = []
    for name in names:
        dom = machine.find(name)
        if dom is None:
            raise NotFoundError(f"LDom {name} not found")
        out.append(dom)
    return out


# ---------------------------------------------------------------- version profile
def _major(view: HostView) -> int:
    head = view.ldm_version.split(".", 1)[0]
    return int(head) if head.isdigit() else 1


def _minor(view: HostView) -> int:
    parts = view.ldm_version.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def parseable_version(view: HostView) -> str:
    major = _major(view)
    if major >= 3:
        return "VERSION 1.6"
    if major == 2:
        return "VERSION 1.5"
    return "VERSION 1.4" if _minor(view) >= 3 else "VERSION 1.0"


def console_label(view: HostView) -> str:
    return "UART" if _major(view) >= 3 else "SP"


def wants_norm_util(view: HostView) -> bool:
    return _major(view) >= 3


# ---------------------------------------------------------------- flags
def _is_active(dom: Domain) -> bool:
    return dom.state == DomainState.ACTIVE


def _status_letter(dom: Domain) -> str:
    if not _is_active(dom):
        return "-"
    return "n" if dom.softstate in _RUNNING_SOFTSTATES else "t"


def flags_short(dom: Domain) -> str:
    """The six-column FLAGS string, e.g. `-n-cv-`."""
    return "".join(
        (
            "-",  # starting/stopping: no such transient state in the model
            _status_letter(dom),
            "d" if dom.delayed_reconfig else "-",
            "c" if dom.config.is_control else "-",
            "v" if dom.config.provides_services else "-",
            _MIGRATION_LETTER.get(dom.migration, "-"),
        )
    )


def flags_long(dom: Domain) -> str:
    """The spelled-out flags of `-l -p`, e.g. `normal,control,vio-service`; empty when none is set."""
    words: list[str] = []
    status = _status_letter(dom)
    if status == "n":
        words.append("normal")
    elif status == "t":
        words.append("transition")
    if dom.delayed_reconfig:
        words.append("delayed-reconfig")
    if dom.config.is_control:
        words.append("control")
    if dom.config.provides_services:
        words.append("vio-service")
    if dom.migration in _MIGRATION_WORD:
        words.append(_MIGRATION_WORD[dom.migration])
    return ",".join(words)


# ---------------------------------------------------------------- per-domain summary values
def migration_of(view: HostView, name: str) -> MigrationStatus | None:
    for m in view.migrations:
        if m.domain == name:
            return m
    return None


def is_bound(dom: Domain) -> bool:
    """Holds resources: bound or active with bindings (an inactive domain holds nothing)."""
    return dom.bindings is not None and dom.state != DomainState.INACTIVE


def uses_constraints(dom: Domain) -> bool:
    """Counts come from the constraints: inactive domains and migration targets (SPEC 7.18)."""
    return not is_bound(dom) or dom.migration == MigrationRole.TARGET


def state_text(view: HostView, dom: Domain) -> str:
    mig = migration_of(view, dom.name)
    if mig is not None and mig.role == "source" and mig.suspended:
        return "suspended"
    return dom.state.value


def vcpu_count(machine: Machine, dom: Domain) -> int:
    if not uses_constraints(dom) and dom.bindings is not None:
        return len(dom.bindings.strands)
    cfg = dom.config
    return cfg.vcpus * machine.platform.strands_per_core if cfg.whole_core else cfg.vcpus


def memory_bytes(dom: Domain) -> int:
    if not uses_constraints(dom) and dom.bindings is not None:
        return dom.bindings.memory
    cfg = dom.config
    return cfg.memory or sum(b.size for b in cfg.mblocks)


def cons_text(view: HostView, dom: Domain) -> str:
    if dom.config.is_control:
        return console_label(view)
    if is_bound(dom) and dom.bindings is not None and dom.bindings.console_port:
        return str(dom.bindings.console_port)
    return ""


def util_value(view: HostView, dom: Domain) -> float | None:
    """The domain's utilisation in percent, or None when it is not running."""
    return view.util.get(dom.name, 0.0) if _is_active(dom) else None


def util_human(view: HostView, dom: Domain) -> str:
    u = util_value(view, dom)
    return "" if u is None else format_util(u)


def util_parseable(u: float | None) -> str:
    """A bare number: one decimal below 10, none at 10 or above (`0.6`, `29`)."""
    if u is None:
        return ""
    return format_util(u).rstrip("%")


def uptime_seconds(view: HostView, dom: Domain) -> int | None:
    if not _is_active(dom):
        return None
    if dom.started_at <= 0:  # start time unknown: say 0s rather than decades
        return 0
    return max(0, int(view.now - dom.started_at))


def short_row(view: HostView, dom: Domain) -> str:
    """One line of `ldm list` under LIST_HEADER."""
    machine = view.machine
    uptime = uptime_seconds(view, dom)
    return cols(
        (dom.name, 17),
        (state_text(view, dom), 11),
        (flags_short(dom), 8),
        (cons_text(view, dom), 8),
        (str(vcpu_count(machine, dom)), 6),
        (format_size(memory_bytes(dom)), 9),
        (util_human(view, dom).rjust(4), 6),
        last="" if uptime is None else format_uptime(uptime),
    )


def domain_record(view: HostView, dom: Domain, *, long: bool) -> str:
    """The parseable `DOMAIN|...` line: short flags with `-p`, spelled out (and softstate) with `-l -p`."""
    name = dom.name
    if dom.state == DomainState.INACTIVE:
        # SPEC 5.2: an inactive domain has empty values.
        line = f"DOMAIN|name={name}|state=inactive|flags=|cons=|ncpu=|mem=|util=|uptime="
        return line + "|softstate=" if long else line
    u = util_value(view, dom)
    uptime = uptime_seconds(view, dom)
    fields = [
        f"name={name}",
        f"state={state_text(view, dom)}",
        f"flags={flags_long(dom) if long else flags_short(dom)}",
        f"cons={cons_text(view, dom)}",
        f"ncpu={vcpu_count(view.machine, dom)}",
        f"mem={memory_bytes(dom)}",
        f"util={util_parseable(u)}",
        f"uptime={'' if uptime is None else uptime}",
    ]
    if long:
        fields.append(f"softstate={dom.softstate}")
    elif wants_norm_util(view) and u is not None:
        fields.append(f"norm_util={util_parseable(u)}")
    return "DOMAIN|" + "|".join(fields)


def kv(*pairs: tuple[str, object]) -> str:
    """`|k=v|k=v` for parseable child lines."""
    return "".join(f"|{k}={v}" for k, v in pairs)
