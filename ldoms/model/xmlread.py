"""Reading one `<ldom>` element of a constraints document into a `DomainConfig` (see `ldoms.model.xmlio`
for the format).  Strict: an element not in `_SCHEMA` is an error naming it and where it was found; every
value error names the domain, the element and the value.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence

from ldoms.errors import UsageError
from ldoms.model.constraints_check import VOL_OPTIONS, shorten_quoted
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

PREFIX = "Invalid constraints XML"
_PREFIX = PREFIX


def tag_name(tag: object) -> str:
    """An element name for a message, cut short: a hostile document can use a megabyte-long name."""
    t = str(tag)
    return t if len(t) <= 40 else t[:37] + "..."


def unknown_element(elem: ET.Element, where: str) -> UsageError:
    return UsageError(f"{_PREFIX}: unknown element <{tag_name(elem.tag)}> in {where}")


def children(elem: ET.Element, where: str) -> list[ET.Element]:
    """The child elements of a container; text anywhere but in leaves is an error."""
    if (elem.text or "").strip():
        raise UsageError(
            shorten_quoted(
                f"{_PREFIX}: {where}: unexpected text '{elem.text.strip()}' (expected child elements)"
            )
        )
    for child in elem:
        if (child.tail or "").strip():
            raise UsageError(
                shorten_quoted(
                    f"{_PREFIX}: {where}: unexpected text '{child.tail.strip()}' after <{child.tag}>"
                )
            )
    return list(elem)


def _leaves(
    elem: ET.Element, where: str, allowed: Sequence[str], required: Sequence[str] = ()
) -> dict[str, str]:
    """A resource element: each allowed leaf at most once, as tag -> text."""
    out: dict[str, str] = {}
    for child in children(elem, where):
        if child.tag not in allowed:
            raise unknown_element(child, where)
        if child.tag in out:
            raise UsageError(f"{_PREFIX}: {where}<{child.tag}> is given more than once")
        if len(child):
            raise unknown_element(child[0], f"{where}<{child.tag}>")
        out[str(child.tag)] = child.text or ""
    for tag in required:
        if not out.get(tag, "").strip():
            raise UsageError(f"{_PREFIX}: {where}<{tag}> is missing")
    return out


class _Fields:
    """Typed access to a resource's leaves; every error names the domain, the element and the value."""

    def __init__(self, dom: str, where: str, leaves: dict[str, str]) -> None:
        self.dom, self.where, self.leaves = dom, where, leaves

    def _err(self, tag: str, what: str, value: str, rule: str) -> UsageError:
        return UsageError(
            f"{_PREFIX}: LDom {self.dom}: {self.where}<{tag}>: invalid {what} '{value}': {rule}"
        )

    def str(self, tag: str, default: str = "") -> str:
        return self.leaves[tag].strip() if tag in self.leaves else default

    def raw(self, tag: str) -> str:
        return self.leaves.get(tag, "")

    def int(self, tag: str, default: int = 0) -> int:
        if tag not in self.leaves:
            return default
        v = self.leaves[tag].strip()
        if not re.fullmatch(r"[0-9]{1,12}", v):
            raise self._err(tag, "number", v, "expected a whole number")
        return int(v)

    def size(self, tag: str) -> int:
        v = self.leaves[tag].strip()
        try:
            if len(v) > 24:
                raise UsageError("too long")
            return parse_size(v)
        except UsageError:
            raise self._err(
                tag, "size", v, "expected a number of bytes with an optional unit K, M or G"
            ) from None

    def hex(self, tag: str, default: int = 0) -> int:
        if tag not in self.leaves:
            return default
        v = self.leaves[tag].strip()
        try:
            if len(v) > 18:
                raise UsageError("too long")
            return parse_addr(v)
        except UsageError:
            raise self._err(tag, "hexadecimal number", v, "expected a value such as 0x84faed88") from None

    def mac(self, tag: str) -> int:
        if tag not in self.leaves:
            return 0
        v = self.leaves[tag].strip()
        try:
            return parse_mac(v)
        except UsageError:
            raise self._err(tag, "MAC address", v, "expected six colon-separated octets") from None

    def ids(self, tag: str) -> tuple[int, ...]:
        v = self.leaves.get(tag, "").strip()
        if not v:
            return ()
        if not re.fullmatch(r"[0-9]{1,5}(,[0-9]{1,5})*", v.replace(" ", "")):
            raise self._err(tag, "VLAN id list", v, "expected comma-separated numbers")
        return tuple(int(x) for x in v.replace(" ", "").split(","))

    def choice(self, tag: str, allowed: Sequence[str]) -> str:
        v = self.str(tag)
        if v not in allowed:
            raise self._err(tag, "value", v, "expected " + " or ".join(a or "nothing" for a in allowed))
        return v

    def options(self, tag: str) -> tuple[str, ...]:
        v = self.str(tag)
        opts = [o.strip() for o in v.split(",") if o.strip()]
        if any(o not in VOL_OPTIONS for o in opts) or len(set(opts)) != len(opts):
            raise self._err(tag, "options", v, "expected a subset of ro,slice,excl")
        return tuple(o for o in VOL_OPTIONS if o in opts)


# Each resource element: the leaves it may hold and those it must hold (<memory> is read by _read_memory).
_SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ldom_info": (
        ("ldom_name", "uuid", "mac_address", "hostid", "failure-policy", "master", "cpu-arch"),
        ("ldom_name",),
    ),
    "cpu": (("number", "wcore", "max-cores"), ()),
    "mau": (("number",), ()),
    "physio_device": (("name", "bypass"), ("name",)),
    "vds": (("service_name",), ("service_name",)),
    "vds_volume": (
        ("vol_name", "service_name", "block_dev", "vol_opts", "mpgroup"),
        ("vol_name", "service_name", "block_dev"),
    ),
    "vsw": (
        (
            "service_name",
            "mac_address",
            "dev_path",
            "default-vlan-id",
            "pvid",
            "vid",
            "mode",
            "mtu",
            "id",
            "linkprop",
        ),
        ("service_name",),
    ),
    "vcc": (("service_name", "min_port", "max_port"), ("service_name", "min_port", "max_port")),
    "network": (
        ("vnet_name", "service_name", "mac_address", "mode", "pvid", "vid", "mtu", "id", "linkprop"),
        ("vnet_name", "service_name"),
    ),
    "disk": (
        ("vdisk_name", "service_name", "vol_name", "timeout", "id"),
        ("vdisk_name", "service_name", "vol_name"),
    ),
    "console": (("group", "service_name", "port"), ()),
    "var": (("name", "value"), ("name",)),
    "mblock": (("pa", "size"), ("pa", "size")),
}
_SINGLE = ("ldom_info", "cpu", "mau", "memory", "console")


def read_ldom(ldom: ET.Element, index: int) -> DomainConfig:
    elems = children(ldom, "<ldom>")
    counts = Counter(e.tag for e in elems)
    if counts["ldom_info"] != 1:
        what = "no" if not counts["ldom_info"] else "more than one"
        raise UsageError(f"{_PREFIX}: <ldom> number {index} has {what} <ldom_info><ldom_name>")
    info_elem = next(e for e in elems if e.tag == "ldom_info")
    name = _leaves(info_elem, "<ldom_info>", *_SCHEMA["ldom_info"])["ldom_name"].strip()
    shown = tag_name(name)  # for messages; validation rejects an overlong name afterwards
    for e in elems:
        if (e.tag != "memory" and e.tag not in _SCHEMA) or e.tag == "mblock":
            raise unknown_element(e, f"<ldom> of LDom {shown}")
        if e.tag in _SINGLE and counts[e.tag] > 1:
            raise UsageError(f"{_PREFIX}: <ldom> of LDom {shown} has more than one <{e.tag}>")

    res: dict[str, list[_Fields]] = {tag: [] for tag in _SCHEMA}
    for e in elems:
        if e.tag != "memory":
            tag = str(e.tag)
            res[tag].append(_Fields(shown, f"<{tag}>", _leaves(e, f"LDom {shown}: <{tag}>", *_SCHEMA[tag])))
    info = res["ldom_info"][0]

    vcpus, whole_core, max_cores = 0, False, 0
    for cpu in res["cpu"]:
        # <wcore> present means whole-core allocation, its value the number of cores; <number> is vCPUs.
        whole_core = "wcore" in cpu.leaves
        vcpus = cpu.int("wcore") if whole_core else cpu.int("number")
        max_cores = 0 if cpu.str("max-cores") == "unlimited" else cpu.int("max-cores")
    memory, mblocks = _read_memory([e for e in elems if e.tag == "memory"], shown)

    volumes: dict[str, list[VdsVolume]] = {f.str("service_name"): [] for f in res["vds"]}
    for f in res["vds_volume"]:
        svc = f.str("service_name")
        if svc not in volumes:
            raise UsageError(
                f"{_PREFIX}: LDom {shown}: <vds_volume> {f.str('vol_name')}: vds {svc} is not defined "
                "in this <ldom>"
            )
        volumes[svc].append(
            VdsVolume(
                name=f.str("vol_name"),
                backend=f.str("block_dev"),
                options=f.options("vol_opts"),
                mpgroup=f.str("mpgroup"),
            )
        )
    console = res["console"][0] if res["console"] else None
    return DomainConfig(
        name=name,
        uuid=info.str("uuid"),
        hostid=info.hex("hostid"),
        mac=info.mac("mac_address"),
        vcpus=vcpus,
        whole_core=whole_core,
        max_cores=max_cores,
        memory=memory,
        mblocks=mblocks,
        mau=res["mau"][0].int("number") if res["mau"] else 0,
        io=tuple(
            IoAssignment(dev=f.str("name"), bypass=f.choice("bypass", ("", "off", "on")) == "on")
            for f in res["physio_device"]
        ),
        vnets=tuple(
            Vnet(
                name=f.str("vnet_name"),
                service=f.str("service_name"),
                mac=f.mac("mac_address"),
                hybrid=f.choice("mode", ("", "hybrid")) == "hybrid",
                pvid=f.int("pvid", 1),
                vids=f.ids("vid"),
                mtu=f.int("mtu", 1500),
                id=f.int("id"),
                linkprop=f.str("linkprop"),
            )
            for f in res["network"]
        ),
        vdisks=tuple(
            Vdisk(
                name=f.str("vdisk_name"),
                volume=f.str("vol_name"),
                service=f.str("service_name"),
                timeout=f.int("timeout"),
                id=f.int("id"),
            )
            for f in res["disk"]
        ),
        vcons=None
        if console is None
        else Vcons(group=console.str("group"), service=console.str("service_name"), port=console.int("port")),
        vds=tuple(Vds(name=n, volumes=tuple(v)) for n, v in volumes.items()),
        vsw=tuple(
            Vsw(
                name=f.str("service_name"),
                mac=f.mac("mac_address"),
                net_dev=f.str("dev_path"),
                default_vlan_id=f.int("default-vlan-id", 1),
                pvid=f.int("pvid", 1),
                vids=f.ids("vid"),
                mode=f.str("mode"),
                mtu=f.int("mtu", 1500),
                id=f.int("id"),
                linkprop=f.str("linkprop"),
            )
            for f in res["vsw"]
        ),
        vcc=tuple(
            Vcc(name=f.str("service_name"), port_min=f.int("min_port"), port_max=f.int("max_port"))
            for f in res["vcc"]
        ),
        # Variable values keep their exact text, surrounding spaces and newlines included.
        variables=tuple((f.str("name"), f.raw("value")) for f in res["var"]),
        cpu_arch=info.str("cpu-arch", "native"),
        failure_policy=info.str("failure-policy", "ignore"),
        master=tuple(m.strip() for m in info.str("master").split(",") if m.strip()),
    )


def _read_memory(elems: list[ET.Element], dom: str) -> tuple[int, tuple[NamedMblock, ...]]:
    if not elems:
        return 0, ()
    where = f"LDom {dom}: <memory>"
    size_leaf: dict[str, str] = {}
    blocks: list[NamedMblock] = []
    for child in children(elems[0], where):
        if child.tag == "size":
            if size_leaf:
                raise UsageError(f"{_PREFIX}: {where}<size> is given more than once")
            if len(child):
                raise unknown_element(child[0], f"{where}<size>")
            size_leaf["size"] = child.text or ""
        elif child.tag == "mblock":
            f = _Fields(dom, "<memory><mblock>", _leaves(child, f"{where}<mblock>", *_SCHEMA["mblock"]))
            blocks.append(NamedMblock(pa=f.hex("pa"), size=f.size("size")))
        else:
            raise unknown_element(child, where)
    # Without <size>, the named blocks define the size; with both, validation checks that they agree.
    size = _Fields(dom, "<memory>", size_leaf).size("size") if size_leaf else sum(b.size for b in blocks)
    return size, tuple(blocks)
