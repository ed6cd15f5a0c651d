"""A domain's constraints as XML: what `ldm list-constraints -x` prints and `ldm add-domain -i file` reads
back.  The migration protocol carries a domain's definition in the same form.

Theory of operation.

*Format.*  LDoms 1.2 prints `<LDM_interface version="1.0"><data version="2.0">` holding one `<ldom>` per
domain, one element per line, indented by two spaces (SPEC §5.5, Example 9-15).  Inside `<ldom>` every
resource is an element named after its XML-interface resource type (`ldom_info`, `cpu`, `mau`, `memory`,
`physio_device`, `vds`, `vds_volume`, `vsw`, `vcc`, `network`, `disk`, `console`, `var`) whose children are
named after that resource's documented property keys (`vnet_name`, `service_name`, `vol_name`, `block_dev`,
`vol_opts`, `dev_path`, `min_port`, ...); the OVF `<rasd:Address>` becomes `<mac_address>`, as Example 9-15
shows for `<network>`.  A field equal to its `DomainConfig` default is left out, so reading a document back
gives every left-out field its default and the round trip is exact; an absent uuid reads as "" and an
absent hostid or MAC as 0, which `add-domain` takes as "allocate one".

*Safety.*  The text is admin-supplied (or comes from a peer), so it is parsed with defusedxml with DTDs,
entity declarations and external references refused (billion laughs and XXE fail before any expansion),
its size is capped (`XML_MAX_BYTES`), and its nesting depth is checked while parsing (`XML_MAX_DEPTH`), so
hostile input fails fast with a `UsageError`.  The reader is strict: an element it does not know is an
error naming it and where it was found, never silently dropped.

*Modules.*  This one writes, and parses safely; `ldoms.model.xmlread` maps each `<ldom>` to a `DomainConfig`;
`ldoms.model.constraints_check.validate_configs` (shared with the `-p` reader) checks the result: names
follow the LDoms name rule, values lie in their documented ranges, names are unique where LDoms requires it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from ldoms.errors import UsageError, one_line
from ldoms.model.constraints_check import XML_BAD_RE, shorten_quoted, validate_configs
from ldoms.model.domain import DomainConfig
from ldoms.model.xmlread import PREFIX as _PREFIX
from ldoms.model.xmlread import children, read_ldom, tag_name, unknown_element
from ldoms.units import format_mac, format_size

XML_MAX_BYTES = 1024 * 1024
XML_MAX_DEPTH = 8  # the deepest valid element, LDM_interface/data/ldom/memory/mblock/size, is at depth 6


# ============================================================================================= writer
def _esc(text: str) -> str:
    bad = XML_BAD_RE.search(text)
    if bad:
        raise UsageError(
            f"The value {text!r} contains the character U+{ord(bad.group()):04X}, which XML cannot carry"
        )
    # A bare CR would be read back as LF (XML end-of-line handling): keep it as a character reference.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _ids(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = ['<?xml version="1.0"?>']
        self.depth = 0

    def open(self, tag: str, attrs: str = "") -> None:
        self.lines.append(f"{'  ' * self.depth}<{tag}{attrs}>")
        self.depth += 1

    def close(self, tag: str) -> None:
        self.depth -= 1
        self.lines.append(f"{'  ' * self.depth}</{tag}>")

    def leaf(self, tag: str, text: str) -> None:
        self.lines.append(f"{'  ' * self.depth}<{tag}>{_esc(text)}</{tag}>")

    def block(self, tag: str, leaves: Sequence[tuple[str, str | None]]) -> None:
        """`<tag>` with one leaf per (name, value); a None value is left out (it equals the default)."""
        present = [(k, v) for k, v in leaves if v is not None]
        if not present:
            self.lines.append(f"{'  ' * self.depth}<{tag}/>")
            return
        self.open(tag)
        for k, v in present:
            self.leaf(k, v)
        self.close(tag)


def _opt(value: Any, default: Any, render: Callable[[Any], str] = str) -> str | None:
    return None if value == default else render(value)


def _write_ldom(w: _Writer, c: DomainConfig) -> None:
    w.open("ldom")
    w.block(
        "ldom_info",
        [
            ("ldom_name", c.name),
            ("uuid", c.uuid or None),
            ("mac_address", _opt(c.mac, 0, format_mac)),
            ("hostid", _opt(c.hostid, 0, lambda h: f"{h:#x}")),
            ("failure-policy", _opt(c.failure_policy, "ignore")),
            ("master", ",".join(c.master) or None),
            ("cpu-arch", _opt(c.cpu_arch, "native")),
        ],
    )
    w.block(
        "cpu",
        [
            ("wcore" if c.whole_core else "number", str(c.vcpus)),
            ("max-cores", _opt(c.max_cores, 0)),
        ],
    )
    if c.mau:
        w.block("mau", [("number", str(c.mau))])
    w.open("memory")
    w.leaf("size", format_size(c.memory))
    for b in c.mblocks:
        w.block("mblock", [("pa", f"{b.pa:#x}"), ("size", format_size(b.size))])
    w.close("memory")
    for io in c.io:
        w.block("physio_device", [("name", io.dev), ("bypass", "on" if io.bypass else None)])
    for vds in c.vds:
        w.block("vds", [("service_name", vds.name)])
        for vol in vds.volumes:
            w.block(
                "vds_volume",
                [
                    ("vol_name", vol.name),
                    ("service_name", vds.name),
                    ("block_dev", vol.backend),
                    ("vol_opts", ",".join(vol.options) or None),
                    ("mpgroup", vol.mpgroup or None),
                ],
            )
    for vsw in c.vsw:
        w.block(
            "vsw",
            [
                ("service_name", vsw.name),
                ("mac_address", _opt(vsw.mac, 0, format_mac)),
                ("dev_path", vsw.net_dev or None),
                ("default-vlan-id", _opt(vsw.default_vlan_id, 1)),
                ("pvid", _opt(vsw.pvid, 1)),
                ("vid", _ids(vsw.vids) or None),
                ("mode", vsw.mode or None),
                ("mtu", _opt(vsw.mtu, 1500)),
                ("id", _opt(vsw.id, 0)),
                ("linkprop", vsw.linkprop or None),
            ],
        )
    for vcc in c.vcc:
        w.block(
            "vcc",
            [("service_name", vcc.name), ("min_port", str(vcc.port_min)), ("max_port", str(vcc.port_max))],
        )
    for vnet in c.vnets:
        w.block(
            "network",
            [
                ("vnet_name", vnet.name),
                ("service_name", vnet.service),
                ("mac_address", _opt(vnet.mac, 0, format_mac)),
                ("mode", "hybrid" if vnet.hybrid else None),
                ("pvid", _opt(vnet.pvid, 1)),
                ("vid", _ids(vnet.vids) or None),
                ("mtu", _opt(vnet.mtu, 1500)),
                ("id", _opt(vnet.id, 0)),
                ("linkprop", vnet.linkprop or None),
            ],
        )
    for vdisk in c.vdisks:
        w.block(
            "disk",
            [
                ("vdisk_name", vdisk.name),
                ("service_name", vdisk.service),
                ("vol_name", vdisk.volume),
                ("timeout", _opt(vdisk.timeout, 0)),
                ("id", _opt(vdisk.id, 0)),
            ],
        )
    if c.vcons is not None:
        w.block(
            "console",
            [
                ("group", c.vcons.group or None),
                ("service_name", c.vcons.service or None),
                ("port", _opt(c.vcons.port, 0)),
            ],
        )
    for name, value in c.variables:
        w.block("var", [("name", name), ("value", value)])
    w.close("ldom")


def constraints_to_xml(domains: Sequence[DomainConfig]) -> str:
    """`ldm list-constraints -x`: the domains' constraints as an `LDM_interface` document."""
    w = _Writer()
    w.open("LDM_interface", ' version="1.0"')
    w.open("data", ' version="2.0"')
    for c in domains:
        _write_ldom(w, c)
    w.close("data")
    w.close("LDM_interface")
    return "\n".join(w.lines) + "\n"


# ============================================================================================= reader
def constraints_from_xml(text: str | bytes) -> list[DomainConfig]:
    """Parse what `constraints_to_xml` (or `ldm list-constraints -x`) printed.  Raise `UsageError` on hostile,
    malformed or invalid input, naming the element and the value."""
    try:
        return _read_document(text)
    except UsageError as e:
        # Messages quote the document's text, which XML lets hold DEL, C1 controls and (through character
        # references) newlines: escaped, the message stays one line.
        raise UsageError(one_line(e.message)) from None


def _read_document(text: str | bytes) -> list[DomainConfig]:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if len(raw) > XML_MAX_BYTES:
        raise UsageError(
            f"{_PREFIX}: the document is {len(raw)} bytes, more than the {XML_MAX_BYTES} allowed"
        )
    root = _parse_safely(text)
    if root.tag != "LDM_interface":
        raise UsageError(f"{_PREFIX}: the root element is <{tag_name(root.tag)}>, expected <LDM_interface>")
    configs: list[DomainConfig] = []
    for data in children(root, "<LDM_interface>"):
        if data.tag != "data":
            raise unknown_element(data, "<LDM_interface>")
        version = data.get("version", "2.0")
        if version != "2.0":
            raise UsageError(
                f'{_PREFIX}: <data version="{version}"> is not supported: this ldm reads the version 2.0 '
                "format that `ldm list-constraints -x` prints"
            )
        for ldom in children(data, "<data>"):
            if ldom.tag != "ldom":
                raise unknown_element(ldom, "<data>")
            configs.append(read_ldom(ldom, len(configs) + 1))
    try:
        validate_configs(configs)
    except UsageError as e:
        raise UsageError(shorten_quoted(f"{_PREFIX}: {e}")) from None
    return configs


class _DepthLimitedBuilder(ET.TreeBuilder):
    """Builds the tree but stops the parse as soon as elements nest deeper than in any valid document, so a
    deeply nested input fails at the first too-deep element instead of being built first."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0

    def start(self, tag: Any, attrs: Any) -> ET.Element:
        self._depth += 1
        if self._depth > XML_MAX_DEPTH:
            raise UsageError(
                f"{_PREFIX}: elements nest deeper than {XML_MAX_DEPTH} levels (at <{tag_name(tag)}>)"
            )
        return super().start(tag, attrs)

    def end(self, tag: Any) -> ET.Element:
        self._depth -= 1
        return super().end(tag)


def _parse_safely(text: str | bytes) -> ET.Element:
    parser = DefusedXMLParser(
        target=_DepthLimitedBuilder(), forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    try:
        # A str is fed as is: expat then ignores the encoding its declaration names, which no longer applies.
        parser.feed(text)
        return parser.close()
    except DefusedXmlException as e:
        raise UsageError(
            f"{_PREFIX}: {type(e).__name__}: DTDs (<!DOCTYPE ...>), entity declarations and external "
            "references are not accepted"
        ) from None
    except ET.ParseError as e:
        raise UsageError(f"{_PREFIX}: not well-formed XML: {e}") from None
    except (LookupError, UnicodeError) as e:
        raise UsageError(f"{_PREFIX}: the text cannot be decoded: {e}") from None
