"""Validation of a domain definition read from outside (`add-domain -i`, `list-constraints -p` read back,
a migrating domain's definition): names follow the LDoms name rule, values lie in their documented ranges,
and names are unique where LDoms requires it.  Shared by the XML and the `-p` readers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ldoms.errors import UsageError
from ldoms.model.domain import DomainConfig
from ldoms.units import format_size

FAILURE_POLICIES = ("ignore", "panic", "reset", "stop")
CPU_ARCHS = ("native", "generic", "migration-class1", "sparc64-class1")
VOL_OPTIONS = ("ro", "slice", "excl")  # canonical order, as DomainConfig stores them
MAX_MASTERS = 4

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+#.:;~()-]{0,63}$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_VAR_NAME_RE = re.compile("^[^\\s=|\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]+$")
# Characters XML 1.0 cannot carry at all (not even as character references).
XML_BAD_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_CTRL_RE = re.compile("[\x00-\x1f\x7f]")


def shorten_quoted(message: str, limit: int = 60) -> str:
    """Cut every quoted value longer than `limit` in an error message: a hostile input can be megabytes."""
    pattern = "'([^'\\n]{" + str(limit + 1) + ",})'"
    return re.sub(pattern, lambda m: "'" + m.group(1)[: limit - 3] + "...'", message)


def _check_name(value: str, what: str) -> None:
    if not _NAME_RE.fullmatch(value):
        raise UsageError(
            f"Invalid {what} '{value}': a name starts with a letter and contains only letters, digits "
            "and - _ + # . : ; ~ ( ) (at most 64 characters)"
        )


def _check_range(value: int, what: str, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise UsageError(f"Invalid {what} {value}: must be between {lo} and {hi}")


def _check_text(value: str, what: str, *, allow_empty: bool = False) -> None:
    """Single-line free text (paths, device names): no control characters, no '|' (the -p separator)."""
    if not value and not allow_empty:
        raise UsageError(f"Invalid {what}: it cannot be empty")
    if _CTRL_RE.search(value) or XML_BAD_RE.search(value) or "|" in value or value != value.strip():
        raise UsageError(
            f"Invalid {what} {value!r}: control characters, '|' and leading or trailing spaces are not "
            "allowed"
        )


def _check_unique(names: Sequence[str], what: str, dom: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise UsageError(f"LDom {dom}: {what} {n} is defined more than once")
        seen.add(n)


def _check_vlans(pvid: int, vids: Sequence[int], what: str) -> None:
    _check_range(pvid, f"pvid of {what}", 1, 4094)
    for v in vids:
        _check_range(v, f"vid of {what}", 1, 4094)


def validate_config(cfg: DomainConfig) -> None:
    """Raise `UsageError` naming the domain, the object, the value and the rule if `cfg` is not a valid
    definition."""
    _check_name(cfg.name, "LDom name")  # first, so the prefix below is always a short, valid name
    try:
        _validate(cfg)
    except UsageError as e:
        if not str(e).startswith(f"LDom {cfg.name}"):
            raise UsageError(f"LDom {cfg.name}: {e}") from None
        raise


def _validate(cfg: DomainConfig) -> None:
    d = cfg.name
    if cfg.uuid and not _UUID_RE.fullmatch(cfg.uuid):
        raise UsageError(
            f"LDom {d}: invalid uuid '{cfg.uuid}': expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
        )
    _check_range(cfg.hostid, "hostid", 0, 0xFFFFFFFF)
    _check_range(cfg.mac, "MAC address", 0, (1 << 48) - 1)
    for what, value in (
        ("vcpu count", cfg.vcpus),
        ("max-cores", cfg.max_cores),
        ("crypto count", cfg.mau),
        ("memory size", cfg.memory),
    ):
        if value < 0:
            raise UsageError(f"LDom {d}: invalid {what} {value}: must not be negative")
    if cfg.mblocks:
        total = sum(b.size for b in cfg.mblocks)
        if total != cfg.memory:
            raise UsageError(
                f"LDom {d}: memory size {format_size(cfg.memory)} is not the sum of its named memory blocks "
                f"({format_size(total)})"
            )
        for b in cfg.mblocks:
            if b.pa < 0 or b.size <= 0:
                raise UsageError(f"LDom {d}: invalid memory block {b.pa:#x}:{b.size}")
    if cfg.failure_policy not in FAILURE_POLICIES:
        raise UsageError(
            f"LDom {d}: invalid failure-policy '{cfg.failure_policy}': expected one of "
            f"{', '.join(FAILURE_POLICIES)}"
        )
    if cfg.cpu_arch not in CPU_ARCHS:
        raise UsageError(
            f"LDom {d}: invalid cpu-arch '{cfg.cpu_arch}': expected one of {', '.join(CPU_ARCHS)}"
        )
    if len(cfg.master) > MAX_MASTERS:
        raise UsageError(
            f"LDom {d}: {len(cfg.master)} master domains given: at most {MAX_MASTERS} are allowed"
        )
    for m in cfg.master:
        _check_name(m, "master LDom name")
        if m == d:
            raise UsageError(f"LDom {d} cannot be its own master")
    _check_unique(cfg.master, "master domain", d)
    for io in cfg.io:
        _check_text(io.dev, "I/O device")
    _check_unique([io.dev for io in cfg.io], "I/O device", d)
    for vds in cfg.vds:
        _check_name(vds.name, "vds name")
        for vol in vds.volumes:
            _check_name(vol.name, f"volume name in vds {vds.name}")
            _check_text(vol.backend, f"backend of volume {vol.name}@{vds.name}")
            if vol.options != tuple(o for o in VOL_OPTIONS if o in vol.options):
                raise UsageError(
                    f"Invalid options '{','.join(vol.options)}' for volume {vol.name}@{vds.name}: "
                    "expected a subset of ro,slice,excl"
                )
            if vol.mpgroup:
                _check_name(vol.mpgroup, f"mpgroup of volume {vol.name}@{vds.name}")
        _check_unique([v.name for v in vds.volumes], f"vds {vds.name}: volume", d)
    for vsw in cfg.vsw:
        _check_name(vsw.name, "vsw name")
        _check_range(vsw.mac, f"MAC address of vsw {vsw.name}", 0, (1 << 48) - 1)
        _check_text(vsw.net_dev, f"net-dev of vsw {vsw.name}", allow_empty=True)
        _check_range(vsw.default_vlan_id, f"default-vlan-id of vsw {vsw.name}", 1, 4094)
        _check_vlans(vsw.pvid, vsw.vids, f"vsw {vsw.name}")
        _check_range(vsw.mtu, f"mtu of vsw {vsw.name}", 1500, 16000)
        _check_range(vsw.id, f"id of vsw {vsw.name}", 0, 1 << 31)
        if vsw.mode not in ("", "sc"):
            raise UsageError(f"Invalid mode '{vsw.mode}' for vsw {vsw.name}: expected sc or nothing")
        if vsw.linkprop not in ("", "phys-state"):
            raise UsageError(
                f"Invalid linkprop '{vsw.linkprop}' for vsw {vsw.name}: expected phys-state or nothing"
            )
    for vcc in cfg.vcc:
        _check_name(vcc.name, "vcc name")
        _check_range(vcc.port_min, f"port-range start of vcc {vcc.name}", 0, 65535)
        _check_range(vcc.port_max, f"port-range end of vcc {vcc.name}", vcc.port_min, 65535)
    for kind, names in (
        ("vds", [s.name for s in cfg.vds]),
        ("vsw", [s.name for s in cfg.vsw]),
        ("vcc", [s.name for s in cfg.vcc]),
    ):
        _check_unique(names, kind, d)
    for vnet in cfg.vnets:
        _check_name(vnet.name, "vnet name")
        _check_name(vnet.service, f"vsw name of vnet {vnet.name}")
        _check_range(vnet.mac, f"MAC address of vnet {vnet.name}", 0, (1 << 48) - 1)
        _check_vlans(vnet.pvid, vnet.vids, f"vnet {vnet.name}")
        _check_range(vnet.mtu, f"mtu of vnet {vnet.name}", 1500, 16000)
        _check_range(vnet.id, f"id of vnet {vnet.name}", 0, 1 << 31)
        if vnet.linkprop not in ("", "phys-state"):
            raise UsageError(
                f"Invalid linkprop '{vnet.linkprop}' for vnet {vnet.name}: expected phys-state or nothing"
            )
    _check_unique([v.name for v in cfg.vnets], "vnet", d)
    for vdisk in cfg.vdisks:
        _check_name(vdisk.name, "vdisk name")
        _check_name(vdisk.volume, f"volume name of vdisk {vdisk.name}")
        _check_name(vdisk.service, f"vds name of vdisk {vdisk.name}")
        _check_range(vdisk.timeout, f"timeout of vdisk {vdisk.name}", 0, 1 << 31)
        _check_range(vdisk.id, f"id of vdisk {vdisk.name}", 0, 1 << 31)
    _check_unique([v.name for v in cfg.vdisks], "vdisk", d)
    if cfg.vcons is not None:
        if cfg.vcons.group:
            _check_name(cfg.vcons.group, "console group")
        if cfg.vcons.service:
            _check_name(cfg.vcons.service, "vcc name of the console")
        _check_range(cfg.vcons.port, "console port", 0, 65535)
    for name, value in cfg.variables:
        if not _VAR_NAME_RE.fullmatch(name):
            raise UsageError(
                f"LDom {d}: invalid variable name {name!r}: it cannot be empty or contain spaces, control "
                "characters, '=' or '|'"
            )
        bad = XML_BAD_RE.search(value)
        if bad:
            raise UsageError(
                f"LDom {d}: variable {name}: the value contains the character U+{ord(bad.group()):04X}, "
                "which cannot be stored"
            )
    _check_unique([n for n, _ in cfg.variables], "variable", d)


def validate_configs(configs: Sequence[DomainConfig]) -> None:
    for cfg in configs:
        validate_config(cfg)
    _check_unique_domains([c.name for c in configs])


def _check_unique_domains(names: Sequence[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise UsageError(f"LDom {n} is defined more than once")
        seen.add(n)
