"""Platform presets and custom platform files (TOML).

A platform is named either by a preset (`t5240`, `t5140`, `t5220`, `t4-1`: files shipped in
`ldoms/model/platforms/`) or by the path of a TOML file; `load_platform()` accepts both.  Every key is
checked: a wrong type or value, a missing required key or an unknown key raises `PlatformError` naming the
file, the key and the problem, e.g. `platform file x.toml: key 'cpu.mhz' must be a positive integer, got
'fast'`.

TOML format (sizes are bytes as integers or strings with a unit: `"512K"`, `"62M"`, `"32G"`; addresses are
integers, hex allowed by TOML itself (`0x4000000`), or strings `"0x4000000"`)::

    model = "SPARC Enterprise T5240"          # required

    [cpu]                                     # required
    type = "UltraSPARC T2 Plus"               # required; live migration needs equal type and clock
    mhz = 1415                                # required, positive
    sockets = 2                               # required, positive
    cores_per_socket = 8                      # required, positive
    strands_per_core = 8                      # required, positive; one MAU per core is derived

    [memory]                                  # required
    hw_max_pagesize = "256M"                  # required; a power of two, at least 8K
    [[memory.range]]                          # one or more, sorted by PA, not overlapping
    pa = 0x0
    size = "512K"                             # a positive multiple of 8K
    reserved = true                           # optional (default false): firmware/hypervisor `_sys_`

    [[pci]]                                   # optional, any number
    dev = "pci@400"
    pseudonym = "bus_a"

    [[niu]]                                   # optional, any number
    dev = "niu@80"
    pseudonym = "niu_0"

    [firmware]                                # optional; every key optional (defaults: Platform's)
    hypervisor = "1.7.0"
    hypervisor_date = "2008/11/19 10:20"
    obp = "4.30.0"
    obp_date = "2008/11/18 13:44"
    release = "7.2.0"                         # system firmware; migration compares major versions

    [mac]                                     # optional
    base = "00:14:4f:f8:00:00"                # start of the automatic MAC pool

At least one memory range must be usable (not reserved).  Device names and pseudonyms must be unique.
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldoms.errors import LdmError, PlatformError
from ldoms.model.platform import MemRange, Niu, PciBus, Platform
from ldoms.units import PAGE_SIZE, parse_addr, parse_mac, parse_size

_PRESET_PACKAGE = "ldoms.model"
_PRESET_DIR = "platforms"


def list_presets() -> tuple[str, ...]:
    """The names of the shipped presets, sorted."""
    root = importlib.resources.files(_PRESET_PACKAGE).joinpath(_PRESET_DIR)
    return tuple(sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml")))


def load_platform(name_or_path: str) -> Platform:
    """A preset by name (`t5240`), or a TOML file by path (anything containing `/` or ending in `.toml`)."""
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise PlatformError(f"platform file {name_or_path}: cannot be read: {e.strerror or e}") from e
        return platform_from_toml(text, path.stem, source=path.name)
    presets = list_presets()
    if name_or_path not in presets:
        raise PlatformError(
            f"unknown platform '{name_or_path}': expected one of {', '.join(presets)} "
            "or a path to a .toml file"
        )
    res = importlib.resources.files(_PRESET_PACKAGE).joinpath(_PRESET_DIR, f"{name_or_path}.toml")
    return platform_from_toml(res.read_text(encoding="utf-8"), name_or_path)


def platform_from_toml(text: str, name: str, *, source: str | None = None) -> Platform:
    """Parse and validate a platform description; `name` becomes `Platform.name`, `source` (default
    `<name>.toml`) names the file in error messages."""
    p = _Parser(source or f"{name}.toml")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PlatformError(f"platform file {p.source}: not valid TOML: {e}") from e
    return p.platform(doc, name)


class _Parser:
    """Validating reader of one document: every accessor names the dotted key in its errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> PlatformError:
        return PlatformError(f"platform file {self.source}: key '{key}' {problem}")

    def table(self, doc: dict[str, Any], key: str, prefix: str, *, required: bool) -> dict[str, Any]:
        full = f"{prefix}{key}"
        if key not in doc:
            if required:
                raise self.fail(full, "is missing")
            return {}
        value = doc[key]
        if not isinstance(value, dict):
            raise self.fail(full, f"must be a table, got {value!r}")
        return value

    def array_of_tables(self, doc: dict[str, Any], key: str, prefix: str) -> list[dict[str, Any]]:
        full = f"{prefix}{key}"
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(full, f"must be an array of tables ([[{full}]]), got {value!r}")
        return value

    def check_keys(self, doc: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in doc:
            if key not in allowed:
                raise self.fail(f"{prefix}{key}", f"is unknown (allowed here: {', '.join(sorted(allowed))})")

    def get(
        self, doc: dict[str, Any], key: str, prefix: str, conv: Callable[[str, Any], Any], default: Any = ...
    ) -> Any:
        full = f"{prefix}{key}"
        if key not in doc:
            if default is ...:
                raise self.fail(full, "is missing")
            return default
        return conv(full, doc[key])

    # ---------------------------------------------------------------- value converters
    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def positive_int(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail(key, f"must be a positive integer, got {value!r}")
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def size(self, key: str, value: Any) -> int:
        n = self._number(key, value, parse_size, "a size (bytes, or a string like '512K', '62M', '32G')")
        if n <= 0 or n % PAGE_SIZE:
            raise self.fail(key, f"must be a positive multiple of 8K, got {value!r}")
        return n

    def address(self, key: str, value: Any) -> int:
        return self._number(
            key, value, parse_addr, "an address (an integer, or a hex string like '0x4000000')"
        )

    def mac(self, key: str, value: Any) -> int:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a MAC address string like '00:14:4f:f8:00:00', got {value!r}")
        try:
            return parse_mac(value)
        except LdmError as e:
            raise self.fail(key, f"must be a MAC address like '00:14:4f:f8:00:00', got {value!r}") from e

    def _number(self, key: str, value: Any, parse: Callable[[str], int], what: str) -> int:
        if isinstance(value, bool):
            raise self.fail(key, f"must be {what}, got {value!r}")
        if isinstance(value, int):
            if value < 0:
                raise self.fail(key, f"must be {what}, got {value!r}")
            return value
        if isinstance(value, str):
            try:
                return parse(value)
            except LdmError as e:
                raise self.fail(key, f"must be {what}, got {value!r}") from e
        raise self.fail(key, f"must be {what}, got {value!r}")

    # ---------------------------------------------------------------- the document
    def platform(self, doc: dict[str, Any], name: str) -> Platform:
        self.check_keys(doc, {"model", "cpu", "memory", "pci", "niu", "firmware", "mac"}, "")
        model = self.get(doc, "model", "", self.string)

        cpu = self.table(doc, "cpu", "", required=True)
        self.check_keys(cpu, {"type", "mhz", "sockets", "cores_per_socket", "strands_per_core"}, "cpu.")
        cpu_type = self.get(cpu, "type", "cpu.", self.string)
        mhz = self.get(cpu, "mhz", "cpu.", self.positive_int)
        sockets = self.get(cpu, "sockets", "cpu.", self.positive_int)
        cores = self.get(cpu, "cores_per_socket", "cpu.", self.positive_int)
        strands = self.get(cpu, "strands_per_core", "cpu.", self.positive_int)

        mem = self.table(doc, "memory", "", required=True)
        self.check_keys(mem, {"hw_max_pagesize", "range"}, "memory.")
        hw_page = self.get(mem, "hw_max_pagesize", "memory.", self.size)
        if hw_page & (hw_page - 1):
            raise self.fail(
                "memory.hw_max_pagesize", f"must be a power of two, got {mem['hw_max_pagesize']!r}"
            )
        ranges = self.memory_ranges(mem)

        pci = tuple(PciBus(dev=d, pseudonym=a) for d, a in self.devices(doc, "pci"))
        niu = tuple(Niu(dev=d, pseudonym=a) for d, a in self.devices(doc, "niu"))

        fw = self.table(doc, "firmware", "", required=False)
        self.check_keys(fw, {"hypervisor", "hypervisor_date", "obp", "obp_date", "release"}, "firmware.")
        dflt = {f: Platform.__dataclass_fields__[f].default for f in Platform.__dataclass_fields__}
        mac = self.table(doc, "mac", "", required=False)
        self.check_keys(mac, {"base"}, "mac.")

        return Platform(
            name=name,
            model=model,
            cpu_type=cpu_type,
            cpu_mhz=mhz,
            sockets=sockets,
            cores_per_socket=cores,
            strands_per_core=strands,
            memory=ranges,
            hw_max_pagesize=hw_page,
            pci_buses=pci,
            nius=niu,
            hypervisor_version=self.get(
                fw, "hypervisor", "firmware.", self.string, dflt["hypervisor_version"]
            ),
            hypervisor_date=self.get(
                fw, "hypervisor_date", "firmware.", self.string, dflt["hypervisor_date"]
            ),
            obp_version=self.get(fw, "obp", "firmware.", self.string, dflt["obp_version"]),
            obp_date=self.get(fw, "obp_date", "firmware.", self.string, dflt["obp_date"]),
            firmware=self.get(fw, "release", "firmware.", self.string, dflt["firmware"]),
            mac_base=self.get(mac, "base", "mac.", self.mac, dflt["mac_base"]),
        )

    def memory_ranges(self, mem: dict[str, Any]) -> tuple[MemRange, ...]:
        items = self.array_of_tables(mem, "range", "memory.")
        if not items:
            raise self.fail("memory.range", "is missing: at least one [[memory.range]] is required")
        out: list[MemRange] = []
        for i, item in enumerate(items):
            prefix = f"memory.range[{i}]."
            self.check_keys(item, {"pa", "size", "reserved"}, prefix)
            pa = self.get(item, "pa", prefix, self.address)
            if pa % PAGE_SIZE:
                raise self.fail(f"{prefix}pa", f"must be aligned to 8K, got {pa:#x}")
            size = self.get(item, "size", prefix, self.size)
            reserved = self.get(item, "reserved", prefix, self.boolean, False)
            if out and pa < out[-1].end:
                raise self.fail(
                    f"{prefix}pa",
                    f"must not lie below the end of the previous range ({out[-1].end:#x}): ranges are sorted "
                    f"by PA and do not overlap, got {pa:#x}",
                )
            out.append(MemRange(pa=pa, size=size, reserved=reserved))
        if all(r.reserved for r in out):
            raise self.fail("memory.range", "has no usable range: every range is reserved")
        return tuple(out)

    def devices(self, doc: dict[str, Any], key: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for i, item in enumerate(self.array_of_tables(doc, key, "")):
            prefix = f"{key}[{i}]."
            self.check_keys(item, {"dev", "pseudonym"}, prefix)
            dev = self.get(item, "dev", prefix, self.string)
            alias = self.get(item, "pseudonym", prefix, self.string)
            if not re.fullmatch(r"[a-z]+@[0-9a-f]+", dev):
                raise self.fail(f"{prefix}dev", f"must look like '{key}@400', got {dev!r}")
            for k, v in (("dev", dev), ("pseudonym", alias)):
                if v in seen:
                    raise self.fail(f"{prefix}{k}", f"must be unique, got {v!r} twice")
                seen.add(v)
            out.append((dev, alias))
        return out
