"""`ldm list-constraints [-p] [ldom...]`: a domain's constraints as text (the `-x` form is
`ldoms.model.xmlio.constraints_to_xml`).

Theory of operation.  The human form follows LDoms 1.2 Example 9-14: each section is a name at column 0 with
its header and rows indented by four spaces, sections are separated by a blank line, and several domains by
a line of 78 dashes (as `ldm list -l` does).  The `-p` form follows Example 9-16: `VERSION 1.0`, then per
domain a `DOMAIN|name=` record followed by its resource records, `|key=value` rows under the records that have
rows, sizes in bytes.

Sections and fields that hold their default value are left out, so a plain domain prints exactly as in the
1.2 examples, while everything that defines a domain (uuid, MAC, hostid, failure-policy, cpu-arch, masters,
whole cores, named memory blocks, crypto units, I/O, services and device options) still appears when set;
`ldoms.model.parseable` reads the `-p` form back into the same `DomainConfig`s.  A variable's newlines are
printed as spaces in the `-p` form, as in Example 9-16, since a record is one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ldoms.model.domain import DomainConfig, Vcons
from ldoms.units import format_mac, format_size

SEPARATOR = "-" * 78
INDENT = "    "


# ============================================================================================ human form
def _table(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]]) -> list[str]:
    """Header and rows, each cell left-aligned in its width (the last column unpadded), indented by four
    spaces; a cell as wide as its column still gets one space after it."""

    def line(cells: Sequence[str]) -> str:
        out = ""
        for (_, width), cell in zip(columns[:-1], cells[:-1], strict=True):
            out += cell.ljust(width) if len(cell) < width else cell + " "
        return (INDENT + out + cells[-1]).rstrip()

    return [line([h for h, _ in columns]), *(line(r) for r in rows)]


def _optional_columns(
    columns: list[tuple[str, int]], rows: list[list[str]], extra: Sequence[tuple[str, int, Sequence[str]]]
) -> None:
    """Append the extra columns that hold a value in at least one row (defaults print as blanks)."""
    for header, width, values in extra:
        if any(values):
            columns.append((header, width))
            for row, value in zip(rows, values, strict=True):
                row.append(value)


def _section(name: str, lines: Sequence[str]) -> str:
    return "\n".join([name, *lines])


def _human_domain(c: DomainConfig, pseudonyms: Mapping[str, str]) -> str:
    s: list[str] = [_section("DOMAIN", [c.name])]
    if c.uuid:
        s.append(_section("UUID", [INDENT + c.uuid]))
    if c.mac:
        s.append(_section("MAC", [INDENT + format_mac(c.mac)]))
    if c.hostid:
        s.append(_section("HOSTID", [INDENT + f"{c.hostid:#x}"]))
    if c.failure_policy != "ignore" or c.cpu_arch != "native":
        s.append(
            _section(
                "CONTROL", [INDENT + f"failure-policy={c.failure_policy}", INDENT + f"cpu-arch={c.cpu_arch}"]
            )
        )
    if c.master:
        s.append(_section("DEPENDENCY", [INDENT + "master=" + ",".join(c.master)]))
    s.append(_section("CORE" if c.whole_core else "VCPU", [INDENT + "COUNT", INDENT + str(c.vcpus)]))
    if c.whole_core or c.max_cores:
        lines = [INDENT + "cpu=whole-core"] if c.whole_core else []
        lines.append(INDENT + f"max-cores={c.max_cores or 'unlimited'}")
        s.append(_section("CONSTRAINT", lines))
    if c.mau:
        s.append(_section("MAU", [INDENT + "COUNT", INDENT + str(c.mau)]))
    if c.mblocks:
        rows = [[f"{b.pa:#x}", format_size(b.size)] for b in c.mblocks]
        s.append(_section("MEMORY", _table([("PA", 21), ("SIZE", 0)], rows)))
    else:
        s.append(_section("MEMORY", [INDENT + "SIZE", INDENT + format_size(c.memory)]))
    if c.variables:
        # A multi-line value (nvramrc) continues on indented lines.
        s.append(
            _section("VARIABLES", [INDENT + f"{k}={v}".replace("\n", "\n" + INDENT) for k, v in c.variables])
        )
    if c.io:
        rows = [[io.dev, pseudonyms.get(io.dev, ""), "bypass=on" if io.bypass else ""] for io in c.io]
        s.append(_section("IO", _table([("DEVICE", 17), ("PSEUDONYM", 17), ("OPTIONS", 0)], rows)))
    if c.vcc:
        rows = [[v.name, f"{v.port_min}-{v.port_max}"] for v in c.vcc]
        s.append(_section("VCC", _table([("NAME", 17), ("PORT-RANGE", 0)], rows)))
    if c.vsw:
        s.append(_section("VSW", _vsw_table(c)))
    if c.vds:
        s.append(_section("VDS", _vds_table(c)))
    if c.vnets:
        s.append(_section("NETWORK", _vnet_table(c)))
    if c.vdisks:
        s.append(_section("DISK", _vdisk_table(c)))
    if c.vcons is not None:
        s.append(_section("VCONS", _vcons_table(c.vcons, c.name)))
    return "\n\n".join(s)


def _vsw_table(c: DomainConfig) -> list[str]:
    cols = [("NAME", 17), ("MAC", 18), ("NET-DEV", 10), ("DEVICE", 10), ("MODE", 6)]
    rows = [[v.name, format_mac(v.mac) if v.mac else "", v.net_dev, f"switch@{v.id}", v.mode] for v in c.vsw]
    _optional_columns(
        cols,
        rows,
        [
            (
                "DEFAULT-VLAN-ID",
                16,
                [str(v.default_vlan_id) if v.default_vlan_id != 1 else "" for v in c.vsw],
            ),
            ("PVID", 6, [str(v.pvid) if v.pvid != 1 else "" for v in c.vsw]),
            ("VID", 12, [",".join(map(str, v.vids)) for v in c.vsw]),
            ("MTU", 7, [str(v.mtu) if v.mtu != 1500 else "" for v in c.vsw]),
            ("LINKPROP", 11, [v.linkprop for v in c.vsw]),
        ],
    )
    return _table(cols, rows)


def _vds_table(c: DomainConfig) -> list[str]:
    cols = [("NAME", 17), ("VOLUME", 15), ("OPTIONS", 17), ("DEVICE", 0)]
    rows: list[list[str]] = []
    mpgroups: list[str] = []
    for vds in c.vds:
        if not vds.volumes:
            rows.append([vds.name, "", "", ""])
            mpgroups.append("")
        for i, vol in enumerate(vds.volumes):
            # Volume rows of the same vds continue with an empty NAME, as in `ldm list -l`.
            rows.append([vds.name if i == 0 else "", vol.name, ",".join(vol.options), vol.backend])
            mpgroups.append(vol.mpgroup)
    if any(mpgroups):
        cols[-1] = ("DEVICE", 25)
        cols.append(("MPGROUP", 0))
        for row, mp in zip(rows, mpgroups, strict=True):
            row.append(mp)
    return _table(cols, rows)


def _vnet_table(c: DomainConfig) -> list[str]:
    cols = [("NAME", 13), ("SERVICE", 28), ("DEVICE", 13), ("MAC", 18)]
    rows = [[v.name, v.service, f"network@{v.id}", format_mac(v.mac) if v.mac else ""] for v in c.vnets]
    _optional_columns(
        cols,
        rows,
        [
            ("MODE", 8, ["hybrid" if v.hybrid else "" for v in c.vnets]),
            ("PVID", 6, [str(v.pvid) if v.pvid != 1 else "" for v in c.vnets]),
            ("VID", 12, [",".join(map(str, v.vids)) for v in c.vnets]),
            ("MTU", 7, [str(v.mtu) if v.mtu != 1500 else "" for v in c.vnets]),
            ("LINKPROP", 11, [v.linkprop for v in c.vnets]),
        ],
    )
    return _table(cols, rows)


def _vdisk_table(c: DomainConfig) -> list[str]:
    cols = [("NAME", 17), ("VOLUME", 28)]
    rows = [[v.name, f"{v.volume}@{v.service}"] for v in c.vdisks]
    _optional_columns(
        cols,
        rows,
        [
            ("TOUT", 6, [str(v.timeout) if v.timeout else "" for v in c.vdisks]),
            ("ID", 6, [str(v.id) if v.id else "" for v in c.vdisks]),
        ],
    )
    return _table(cols, rows)


def _vcons_table(v: Vcons, name: str) -> list[str]:
    cols = [("NAME", 17), ("SERVICE", 28)]
    # An unset group is the domain name, and an unset service any vcc of the control domain (DomainConfig).
    rows = [[v.group or name, v.service]]
    _optional_columns(cols, rows, [("PORT", 0, [str(v.port) if v.port else ""])])
    return _table(cols, rows)


# ========================================================================================= parseable form
def _p_value(text: str) -> str:
    # A record is one line: a newline inside a value (nvramrc) prints as a space, as in Example 9-16.
    return text.replace("\r", " ").replace("\n", " ")


def _rec(tag: str, *fields: tuple[str, str] | None) -> str:
    return tag + "".join(f"|{k}={v}" for f in fields if f is not None for k, v in [f])


def _row(*fields: tuple[str, str] | None) -> str:
    return _rec("", *fields)


def _opt(key: str, value: object, default: object) -> tuple[str, str] | None:
    return None if value == default else (key, str(value))


def _ids(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def _parseable_domain(c: DomainConfig, pseudonyms: Mapping[str, str]) -> list[str]:
    out = [_rec("DOMAIN", ("name", c.name))]
    if c.uuid:
        out.append(_rec("UUID", ("uuid", c.uuid)))
    if c.mac:
        out.append(_rec("MAC", ("mac-addr", format_mac(c.mac))))
    if c.hostid:
        out.append(_rec("HOSTID", ("hostid", f"{c.hostid:#x}")))
    if c.failure_policy != "ignore" or c.cpu_arch != "native":
        out.append(_rec("CONTROL", ("failure-policy", c.failure_policy), ("cpu-arch", c.cpu_arch)))
    if c.master:
        out.append(_rec("DEPENDENCY", ("master", ",".join(c.master))))
    out.append(
        _rec("CORE" if c.whole_core else "VCPU", ("count", str(c.vcpus)), _opt("max-cores", c.max_cores, 0))
    )
    if c.mau:
        out.append(_rec("MAU", ("count", str(c.mau))))
    out.append(_rec("MEMORY", ("size", str(c.memory))))
    out.extend(_row(("pa", f"{b.pa:#x}"), ("size", str(b.size))) for b in c.mblocks)
    if c.variables:
        out.append("VARIABLES")
        out.extend(f"|{k}={_p_value(v)}" for k, v in c.variables)
    if c.io:
        out.append("IO")
        out.extend(
            _row(
                ("dev", io.dev),
                ("alias", pseudonyms.get(io.dev, "")),
                ("bypass", "on") if io.bypass else None,
            )
            for io in c.io
        )
    for vds in c.vds:
        out.append(_rec("VDS", ("name", vds.name)))
        out.extend(
            _row(
                ("vol", v.name),
                ("opts", ",".join(v.options)),
                ("dev", v.backend),
                _opt("mpgroup", v.mpgroup, ""),
            )
            for v in vds.volumes
        )
    out.extend(_rec("VCC", ("name", v.name), ("port-range", f"{v.port_min}-{v.port_max}")) for v in c.vcc)
    out.extend(
        _rec(
            "VSW",
            ("name", v.name),
            ("mac-addr", format_mac(v.mac) if v.mac else ""),
            ("net-dev", v.net_dev),
            ("dev", f"switch@{v.id}"),
            _opt("default-vlan-id", v.default_vlan_id, 1),
            _opt("pvid", v.pvid, 1),
            _opt("vid", _ids(v.vids), ""),
            _opt("mode", v.mode, ""),
            _opt("mtu", v.mtu, 1500),
            _opt("linkprop", v.linkprop, ""),
        )
        for v in c.vsw
    )
    out.extend(
        _rec(
            "VNET",
            ("name", v.name),
            ("dev", f"network@{v.id}"),
            ("service", v.service),
            ("mac-addr", format_mac(v.mac) if v.mac else ""),
            ("mode", "hybrid") if v.hybrid else None,
            _opt("pvid", v.pvid, 1),
            _opt("vid", _ids(v.vids), ""),
            _opt("mtu", v.mtu, 1500),
            _opt("linkprop", v.linkprop, ""),
        )
        for v in c.vnets
    )
    out.extend(
        _rec(
            "VDISK",
            ("name", v.name),
            ("vol", f"{v.volume}@{v.service}"),
            _opt("timeout", v.timeout, 0),
            _opt("id", v.id, 0),
        )
        for v in c.vdisks
    )
    if c.vcons is not None:
        port = str(c.vcons.port) if c.vcons.port else ""
        out.append(_rec("VCONS", ("group", c.vcons.group), ("service", c.vcons.service), ("port", port)))
    return out


# ================================================================================================ entry
def format_constraints(
    domains: Sequence[DomainConfig], *, parseable: bool, pseudonyms: Mapping[str, str] | None = None
) -> str:
    """`ldm list-constraints` (human, Example 9-14) or `ldm list-constraints -p` (Example 9-16).

    `pseudonyms` maps an I/O device (`pci@780`) to its platform pseudonym (`bus_a`); LDoms 1.2 prints the
    alias empty in `-p` output, which is what leaving it out gives."""
    aliases = pseudonyms or {}
    if parseable:
        lines = ["VERSION 1.0"]
        for c in domains:
            lines.extend(_parseable_domain(c, aliases))
        return "\n".join(lines) + "\n"
    if not domains:
        return ""
    return f"\n\n{SEPARATOR}\n".join(_human_domain(c, aliases) for c in domains) + "\n"
