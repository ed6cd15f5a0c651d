"""`ldm list-services [-p] [ldom...]` (SPEC 5.6): the VCC, VSW and VDS of the service-providing domains.

Human form: the sections of `ldm list -l` (same columns), one block per service domain in machine order,
blocks separated like long-listing domains (blank line, 78 dashes).  Parseable form: `VERSION`, then per
domain `VDS|name=` with its `|vol=|opts=|dev=` lines, `VCC|name=|port-range=`, `VSW|name=|mac-addr=|net-dev=
|dev=|mode=` (the shapes public scripts parse; no `nclients` here, unlike `list -l -p`).  A named domain that
provides nothing contributes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from ldoms.cli.format import sections as s
from ldoms.cli.format.common import join_blocks, parseable_version, select_domains
from ldoms.model.view import HostView


def format_services(view: HostView, names: Sequence[str], *, parseable: bool = False) -> str:
    domains = [d for d in select_domains(view.machine, names) if d.config.provides_services]
    ctx = s.make_ctx(view)
    if parseable:
        lines = [parseable_version(view)]
        for dom in domains:
            lines += s.p_vds(ctx, dom, nclients=False)
            lines += s.p_vcc(ctx, dom, nclients=False)
            lines += s.p_vsw(ctx, dom, nclients=False)
        return "".join(f"{line}\n" for line in lines)
    blocks = []
    for dom in domains:
        parts = [t for t in (s.h_vcc(ctx, dom), s.h_vsw(ctx, dom), s.h_vds(ctx, dom)) if t is not None]
        blocks.append("\n".join(parts))
    return join_blocks(blocks)
