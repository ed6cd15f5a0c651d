"""`ldm list` in all its forms (short, `-l`, `-e`, `-p`, `-l -p`, `-o format,...`) and `ldm list-bindings`.

- Short: LIST_HEADER once, then one row per domain.  `-p`: `VERSION` line, then one `DOMAIN|` record each.
- Long (`-l`; `-e` adds SOFTSTATE, MAC, HOSTID, CONTROL, DEPENDENCY as in 1.2 Example 9-4): per domain the
  header and its row, then each section after a blank line; domains separated by a blank line and 78 dashes.
  `-l -p`: `VERSION`, then per domain the `DOMAIN|` record (flags spelled out, softstate) and section records
  (order of Example 9-17: VCPU, MAU, MEMORY, VARIABLES, IO, VDS, VCC, VSW, VNET, VDISK, VCONS).
- `-o`: per domain a `NAME` block (`NAME`, the name) then only the requested sections, in the order asked;
  parseable: `DOMAIN|name=x|` (trailing bar, as SPEC 4.1's sample) then the section records.  `-o status`
  adds nothing unless a migration of that domain is recorded, so pollers see `STATUS` disappear (SPEC 4.1).
- `list-bindings` is the long listing; an inactive domain holds nothing, so it shows only its row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from ldoms.cli.format import sections as s
from ldoms.cli.format.common import (
    LIST_HEADER,
    block,
    domain_record,
    is_bound,
    join_blocks,
    parseable_version,
    select_domains,
    short_row,
)
from ldoms.errors import UsageError
from ldoms.model.domain import Domain
from ldoms.model.view import HostView

Human = Callable[[s.Ctx, Domain], str | None]
Parse = Callable[[s.Ctx, Domain], list[str]]

_EXTENDED_HUMAN: tuple[Human, ...] = (s.h_softstate, s.h_mac, s.h_hostid, s.h_control, s.h_dependency)
_EXTENDED_PARSE: tuple[Parse, ...] = (s.p_mac, s.p_hostid, s.p_control, s.p_dependency)
_LONG_HUMAN: tuple[Human, ...] = (
    s.h_vcpu, s.h_mau, s.h_memory, s.h_variables, s.h_io, s.h_vcc, s.h_vsw, s.h_vds,
    s.h_network, s.h_disk, s.h_vcons,
)
_LONG_PARSE: tuple[Parse, ...] = (
    s.p_vcpu, s.p_mau, s.p_memory, s.p_variables, s.p_io, s.p_vds, s.p_vcc, s.p_vsw,
    s.p_network, s.p_disk, s.p_vcons,
)

# `-o` keywords of 1.2 (SPEC 5.3) -> (human sections, parseable sections).
OUTPUT_FORMATS: dict[str, tuple[tuple[Human, ...], tuple[Parse, ...]]] = {
    "cpu": ((s.h_vcpu,), (s.p_vcpu,)),
    "crypto": ((s.h_mau,), (s.p_mau,)),
    "memory": ((s.h_memory,), (s.p_memory,)),
    "physio": ((s.h_io,), (s.p_io,)),
    "network": ((s.h_mac, s.h_vsw, s.h_network), (s.p_mac, s.p_vsw, s.p_network)),
    "disk": ((s.h_vds, s.h_disk), (s.p_vds, s.p_disk)),
    "console": ((s.h_vcc, s.h_vcons), (s.p_vcc, s.p_vcons)),
    "domain": (
        (s.h_state, s.h_flags, s.h_softstate, s.h_hostid, partial(s.h_control, pagesizes=True),
         s.h_dependency, s.h_variables),
        (s.p_state, s.p_flags, s.p_softstate, s.p_hostid, partial(s.p_control, pagesizes=True),
         s.p_dependency, s.p_variables),
    ),
    "serial": ((), ()),  # vldc, vldcc, vdpcs, vdpcc: not modelled
    "status": ((s.h_status,), (s.p_status,)),
}


def _check_formats(formats: Sequence[str]) -> list[str]:
    out: list[str] = []
    for f in formats:
        if f not in OUTPUT_FORMATS:
            raise UsageError(
                f"Invalid output format '{f}': expected one or more of {', '.join(sorted(OUTPUT_FORMATS))}, "
                "separated by commas"
            )
        if f not in out:
            out.append(f)
    return out


def _human_sections(ctx: s.Ctx, dom: Domain, renderers: Sequence[Human]) -> list[str]:
    return [text for r in renderers if (text := r(ctx, dom)) is not None]


def _long_human(ctx: s.Ctx, dom: Domain, *, extended: bool, bindings_only: bool) -> str:
    head = f"{LIST_HEADER}\n{short_row(ctx.view, dom)}\n"
    if bindings_only and not is_bound(dom):
        return head
    renderers = (*(_EXTENDED_HUMAN if extended else ()), *_LONG_HUMAN)
    return block(head, _human_sections(ctx, dom, renderers))


def _long_parse(ctx: s.Ctx, dom: Domain, *, extended: bool, bindings_only: bool) -> list[str]:
    lines = [domain_record(ctx.view, dom, long=True)]
    if bindings_only and not is_bound(dom):
        return lines
    for r in (*(_EXTENDED_PARSE if extended else ()), *_LONG_PARSE):
        lines += r(ctx, dom)
    return lines


def _lines(lines: Sequence[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def format_list(
    view: HostView,
    names: Sequence[str],
    *,
    long: bool = False,
    extended: bool = False,
    parseable: bool = False,
    sections: Sequence[str] | None = None,
) -> str:
    """`ldm list [-e] [-l] [-o format] [-p] [ldom...]`.  Empty `names` lists every domain in order."""
    formats = _check_formats(sections) if sections else None
    domains = select_domains(view.machine, names)
    ctx = s.make_ctx(view)
    if formats is not None:
        if parseable:
            out = [parseable_version(view)]
            for dom in domains:
                out.append(f"DOMAIN|name={dom.name}|")
                for f in formats:
                    for r in OUTPUT_FORMATS[f][1]:
                        out += r(ctx, dom)
            return _lines(out)
        blocks = []
        for dom in domains:
            renderers = [r for f in formats for r in OUTPUT_FORMATS[f][0]]
            blocks.append(block(f"NAME\n{dom.name}\n", _human_sections(ctx, dom, renderers)))
        return join_blocks(blocks)
    if long or extended:
        return _long(ctx, domains, extended=extended, parseable=parseable, bindings_only=False)
    if parseable:
        return _lines([parseable_version(view), *(domain_record(view, d, long=False) for d in domains)])
    return _lines([LIST_HEADER, *(short_row(view, d) for d in domains)])


def _long(
    ctx: s.Ctx, domains: Sequence[Domain], *, extended: bool, parseable: bool, bindings_only: bool
) -> str:
    if parseable:
        out = [parseable_version(ctx.view)]
        for dom in domains:
            out += _long_parse(ctx, dom, extended=extended, bindings_only=bindings_only)
        return _lines(out)
    return join_blocks([_long_human(ctx, d, extended=extended, bindings_only=bindings_only) for d in domains])


def format_bindings(view: HostView, names: Sequence[str], *, parseable: bool = False) -> str:
    """`ldm list-bindings [-p] [ldom...]` (SPEC 5.6, Example 9-10)."""
    domains = select_domains(view.machine, names)
    return _long(s.make_ctx(view), domains, extended=False, parseable=parseable, bindings_only=True)
