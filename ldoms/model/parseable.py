"""Reading `ldm list-constraints -p` output (SPEC §5.5, Example 9-16) back into `DomainConfig`s.

Theory of operation.  The text is `VERSION x`, then lines that are either a record (`TAG` or
`TAG|key=value|...`) or a row (`|key=value|...`) belonging to the last record that takes rows (`MEMORY`
takes named memory blocks, `VARIABLES` variables, `IO` devices, `VDS` volumes).  A `DOMAIN|name=` record
starts a domain; every other record adds to the current one.  A `VARIABLES` row is `|name=value` split at
the first `=`, so a value may hold `=` and `|`; every other line is split at each `|`.  The reader is strict:
an unknown record, key or repeated record is an error naming the line.  Fields a record leaves out take the
`DomainConfig` defaults, so this reads exactly what `ldoms.cli.format.constraints` prints.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ldoms.errors import UsageError
from ldoms.model.constraints_check import VOL_OPTIONS, shorten_quoted, validate_configs
from ldoms.model.domain import (
    DomainConfig,
    IoAssignment,
    NamedMblock,
    Vcc,
    Vcons,
    Vdisk,
    Vds,
    VdsVolume,
    Vnet,
    Vsw,
)
from ldoms.units import parse_addr, parse_mac, parse_size

_PREFIX = "Invalid parseable constraints"

# record tag -> the keys it may carry; rows are described under the record that takes them.
_RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "DOMAIN": ("name",),
    "UUID": ("uuid",),
    "MAC": ("mac-addr",),
    "HOSTID": ("hostid",),
    "CONTROL": ("failure-policy", "cpu-arch"),
    "DEPENDENCY": ("master",),
    "VCPU": ("count", "max-cores"),
    "CORE": ("count", "max-cores"),
    "MAU": ("count",),
    "MEMORY": ("size",),
    "VARIABLES": (),
    "IO": (),
    "VDS": ("name",),
    "VCC": ("name", "port-range"),
    "VSW": (
        "name",
        "mac-addr",
        "net-dev",
        "dev",
        "default-vlan-id",
        "pvid",
        "vid",
        "mode",
        "mtu",
        "linkprop",
    ),
    "VNET": ("name", "dev", "service", "mac-addr", "mode", "pvid", "vid", "mtu", "linkprop"),
    "VDISK": ("name", "vol", "timeout", "id"),
    "VCONS": ("group", "service", "port"),
}
_ROW_KEYS: dict[str, tuple[str, ...]] = {
    "MEMORY": ("pa", "size"),
    "IO": ("dev", "alias", "bypass"),
    "VDS": ("vol", "opts", "dev", "mpgroup"),
}
_ONCE = ("UUID", "MAC", "HOSTID", "CONTROL", "DEPENDENCY", "MAU", "MEMORY", "VARIABLES", "IO", "VCONS")


@dataclass
class _Line:
    """One record or row: its fields, with typed access whose errors name the line and the value."""

    number: int
    text: str
    fields: dict[str, str]

    def err(self, message: str) -> UsageError:
        shown = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return UsageError(f"{_PREFIX}: line {self.number} ({shown!r}): {shorten_quoted(message)}")

    def str(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    def required(self, key: str) -> str:
        if not self.fields.get(key):
            raise self.err(f"'{key}=' is missing or empty")
        return self.fields[key]

    def int(self, key: str, default: int = 0) -> int:
        v = self.fields.get(key, "")
        if v == "":
            return default
        if not re.fullmatch(r"[0-9]{1,12}", v):
            raise self.err(f"invalid {key} '{v}': expected a whole number")
        return int(v)

    def size(self, key: str) -> int:
        v = self.required(key)
        try:
            if len(v) > 24:
                raise UsageError("too long")
            return parse_size(v)
        except UsageError:
            raise self.err(f"invalid {key} '{v}': expected a number of bytes") from None

    def hex(self, key: str) -> int:
        v = self.required(key)
        try:
            if len(v) > 18:
                raise UsageError("too long")
            return parse_addr(v)
        except UsageError:
            raise self.err(f"invalid {key} '{v}': expected a hexadecimal number such as 0x84faed88") from None

    def mac(self, key: str) -> int:
        v = self.fields.get(key, "")
        try:
            return parse_mac(v) if v else 0
        except UsageError:
            raise self.err(f"invalid {key} '{v}': expected six colon-separated octets") from None

    def ids(self, key: str) -> tuple[int, ...]:
        v = self.fields.get(key, "")
        if not v:
            return ()
        if not re.fullmatch(r"[0-9]{1,5}(,[0-9]{1,5})*", v):
            raise self.err(f"invalid {key} '{v}': expected comma-separated VLAN ids")
        return tuple(int(x) for x in v.split(","))

    def device(self, key: str, prefix: str) -> int:
        """`network@3` -> 3."""
        v = self.required(key)
        m = re.fullmatch(re.escape(prefix) + r"@([0-9]{1,9})", v)
        if not m:
            raise self.err(f"invalid {key} '{v}': expected {prefix}@<number>")
        return int(m.group(1))

    def choice(self, key: str, allowed: Sequence[str]) -> str:
        v = self.fields.get(key, "")
        if v not in allowed:
            raise self.err(f"invalid {key} '{v}': expected " + " or ".join(a or "nothing" for a in allowed))
        return v


@dataclass
class _Domain:
    """A domain being read: DomainConfig keyword arguments plus the records seen so far."""

    kw: dict[str, Any]
    seen: set[str] = field(default_factory=set)
    lists: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, key: str, value: Any) -> None:
        self.lists.setdefault(key, []).append(value)

    def build(self) -> DomainConfig:
        kw = dict(self.kw)
        for key in ("mblocks", "io", "vnets", "vdisks", "vsw", "vcc", "variables", "master"):
            if key in self.lists:
                kw[key] = tuple(self.lists[key])
        if "vds" in self.lists:
            kw["vds"] = tuple(Vds(name=n, volumes=tuple(vols)) for n, vols in self.lists["vds"])
        return DomainConfig(**kw)


def _split(number: int, text: str, keys: Sequence[str], what: str) -> _Line:
    fields: dict[str, str] = {}
    line = _Line(number, text, fields)
    for part in text.split("|")[1:]:
        key, eq, value = part.partition("=")
        if not eq:
            raise line.err(f"'{part}' is not a key=value pair")
        if key not in keys:
            raise line.err(f"unknown key '{key}' in {what}")
        if key in fields:
            raise line.err(f"'{key}=' is given more than once")
        fields[key] = value
    return line


def constraints_from_parseable(text: str) -> list[DomainConfig]:
    """Parse `ldm list-constraints -p` output; raise `UsageError` naming the line on anything malformed."""
    # The writer never puts a CR in a line (it prints one inside a value as a space), so a CR before the LF
    # can only come from a CRLF file and is dropped.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not re.fullmatch(r"VERSION [0-9]+(\.[0-9]+)*", lines[0]):
        first = lines[0] if lines else ""
        raise UsageError(shorten_quoted(f"{_PREFIX}: the first line must be 'VERSION 1.0', not '{first}'"))
    domains: list[_Domain] = []
    section = ""  # the last record that takes rows, "" when rows are not allowed
    for number, raw in enumerate(lines[1:], start=2):
        if raw == "":
            continue
        if raw.startswith("|"):
            if not domains or not section:
                raise _Line(number, raw, {}).err(
                    "a '|key=value' row must follow a MEMORY, VARIABLES, IO or VDS record"
                )
            _read_row(domains[-1], section, number, raw)
            continue
        tag = raw.split("|", 1)[0]
        if tag not in _RECORD_KEYS:
            raise _Line(number, raw, {}).err(f"unknown record '{tag}'")
        rec = _split(number, raw, _RECORD_KEYS[tag], f"a {tag} record")
        if tag == "DOMAIN":
            domains.append(_Domain(kw={"name": rec.required("name"), "uuid": "", "hostid": 0, "mac": 0}))
        elif not domains:
            raise rec.err("a record must follow a DOMAIN|name= record")
        else:
            dom = domains[-1]
            once = "VCPU" if tag == "CORE" else tag
            if once in (*_ONCE, "VCPU") and once in dom.seen:
                raise rec.err(f"LDom {dom.kw['name'][:40]} has more than one {tag} record")
            dom.seen.add(once)
            _read_record(dom, tag, rec)
        section = tag if tag in ("MEMORY", "VARIABLES", "IO", "VDS") else ""
    configs = [d.build() for d in domains]
    try:
        validate_configs(configs)
    except UsageError as e:
        raise UsageError(shorten_quoted(f"{_PREFIX}: {e}")) from None
    return configs


def _read_record(dom: _Domain, tag: str, rec: _Line) -> None:
    kw = dom.kw
    if tag == "UUID":
        kw["uuid"] = rec.str("uuid")
    elif tag == "MAC":
        kw["mac"] = rec.mac("mac-addr")
    elif tag == "HOSTID":
        kw["hostid"] = rec.hex("hostid")
    elif tag == "CONTROL":
        kw["failure_policy"] = rec.str("failure-policy", "ignore")
        kw["cpu_arch"] = rec.str("cpu-arch", "native")
    elif tag == "DEPENDENCY":
        dom.lists["master"] = [m for m in rec.str("master").split(",") if m]
    elif tag in ("VCPU", "CORE"):
        kw["vcpus"] = rec.int("count")
        kw["whole_core"] = tag == "CORE"
        kw["max_cores"] = rec.int("max-cores")
    elif tag == "MAU":
        kw["mau"] = rec.int("count")
    elif tag == "MEMORY":
        kw["memory"] = rec.size("size")
    elif tag == "VDS":
        dom.add("vds", (rec.required("name"), []))
    elif tag == "VCC":
        m = re.fullmatch(r"([0-9]{1,5})-([0-9]{1,5})", rec.str("port-range"))
        if not m:
            raise rec.err(f"invalid port-range '{rec.str('port-range')}': expected <min>-<max>")
        dom.add("vcc", Vcc(name=rec.required("name"), port_min=int(m.group(1)), port_max=int(m.group(2))))
    elif tag == "VSW":
        dom.add(
            "vsw",
            Vsw(
                name=rec.required("name"),
                mac=rec.mac("mac-addr"),
                net_dev=rec.str("net-dev"),
                id=rec.device("dev", "switch"),
                default_vlan_id=rec.int("default-vlan-id", 1),
                pvid=rec.int("pvid", 1),
                vids=rec.ids("vid"),
                mode=rec.str("mode"),
                mtu=rec.int("mtu", 1500),
                linkprop=rec.str("linkprop"),
            ),
        )
    elif tag == "VNET":
        dom.add(
            "vnets",
            Vnet(
                name=rec.required("name"),
                service=rec.required("service"),
                mac=rec.mac("mac-addr"),
                id=rec.device("dev", "network"),
                hybrid=rec.choice("mode", ("", "hybrid")) == "hybrid",
                pvid=rec.int("pvid", 1),
                vids=rec.ids("vid"),
                mtu=rec.int("mtu", 1500),
                linkprop=rec.str("linkprop"),
            ),
        )
    elif tag == "VDISK":
        volume, at, service = rec.required("vol").partition("@")
        if not at or not volume or not service:
            raise rec.err(f"invalid vol '{rec.str('vol')}': expected <volume>@<vds>")
        dom.add(
            "vdisks",
            Vdisk(
                name=rec.required("name"),
                volume=volume,
                service=service,
                timeout=rec.int("timeout"),
                id=rec.int("id"),
            ),
        )
    elif tag == "VCONS":
        kw["vcons"] = Vcons(group=rec.str("group"), service=rec.str("service"), port=rec.int("port"))
    # VARIABLES and IO carry no fields: their content is in the rows that follow.


def _read_row(dom: _Domain, section: str, number: int, raw: str) -> None:
    if section == "VARIABLES":
        # One variable per row, split at the first '=': the value may hold '=' and '|'.
        name, eq, value = raw[1:].partition("=")
        if not eq:
            raise _Line(number, raw, {}).err("a variable row must be '|name=value'")
        dom.add("variables", (name, value))
        return
    row = _split(number, raw, _ROW_KEYS[section], f"a {section} row")
    if section == "MEMORY":
        dom.add("mblocks", NamedMblock(pa=row.hex("pa"), size=row.size("size")))
    elif section == "IO":
        # `alias` is the platform pseudonym, printed for information only.
        dom.add(
            "io",
            IoAssignment(dev=row.required("dev"), bypass=row.choice("bypass", ("", "on", "off")) == "on"),
        )
    else:
        opts = [o for o in row.str("opts").split(",") if o]
        if any(o not in VOL_OPTIONS for o in opts) or len(set(opts)) != len(opts):
            raise row.err(f"invalid opts '{row.str('opts')}': expected a subset of ro,slice,excl")
        _, volumes = dom.lists["vds"][-1]
        volumes.append(
            VdsVolume(
                name=row.required("vol"),
                backend=row.required("dev"),
                options=tuple(o for o in VOL_OPTIONS if o in opts),
                mpgroup=row.str("mpgroup"),
            )
        )
