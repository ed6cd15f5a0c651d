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

At least one memory range must be usable (not reserved).  Device names and pseudonyms must be unique (across
`pci` and `niu`).

Hostile files fail fast with a `PlatformError`, never a hang or a traceback: a file is read only if it is a
regular file of at most `PLATFORM_MAX_BYTES`; counts and sizes are bounded by what a SPARC machine can have
(`MAX_*` below: a platform of 10^9 strands would otherwise be built strand by strand); strings hold no control
characters (they are printed in listings, one record per line); and messages show values one line long.
"""

from __future__ import annotations

import datetime
import importlib.resources
import os
import re
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldoms.errors import LdmError, PlatformError, one_line
from ldoms.model.platform import MAC_POOL_SIZE, MemRange, Niu, PciBus, Platform
from ldoms.units import PAGE_SIZE, G, parse_addr, parse_mac, parse_size

_PRESET_PACKAGE = "ldoms.model"
_PRESET_DIR = "platforms"

# Bounds of a believable SPARC machine (the largest, an M6-32, has 32 sockets x 12 cores x 8 strands).
PLATFORM_MAX_BYTES = 1024 * 1024
MAX_SOCKETS = 64
MAX_CORES_PER_SOCKET = 64
MAX_STRANDS_PER_CORE = 16
MAX_STRANDS = 8192
MAX_MHZ = 100_000
MAX_RANGES = 1024
MAX_DEVICES = 256
MAX_PAGESIZE = 16 * G
ADDRESS_LIMIT = 1 << 64  # physical addresses are 64-bit
_LOW_40 = (1 << 40) - 1  # a MAC without its first octet (whose lowest bit marks multicast)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_PSEUDONYM = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def list_presets() -> tuple[str, ...]:
    """The names of the shipped presets, sorted."""
    root = importlib.resources.files(_PRESET_PACKAGE).joinpath(_PRESET_DIR)
    return tuple(sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml")))


def load_platform(name_or_path: str) -> Platform:
    """A preset by name (`t5240`), or a TOML file by path (anything containing `/` or ending in `.toml`)."""
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        text = _read_file(path, name_or_path)
        return platform_from_toml(text, path.stem, source=path.name)
    presets = list_presets()
    if name_or_path not in presets:
        raise PlatformError(
            f"unknown platform '{one_line(name_or_path)}': expected one of {', '.join(presets)} "
            "or a path to a .toml file"
        )
    res = importlib.resources.files(_PRESET_PACKAGE).joinpath(_PRESET_DIR, f"{name_or_path}.toml")
    return platform_from_toml(res.read_text(encoding="utf-8"), name_or_path)


def _read_file(path: Path, shown: str) -> str:
    """The text of a platform file: a regular file (not a FIFO, which would block, nor /dev/zero, which never
    ends) of at most PLATFORM_MAX_BYTES, in UTF-8."""
    where = f"platform file {one_line(shown)}"
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer (regular files ignore it).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PlatformError(f"{where}: cannot be read: it is not a regular file")
            data = f.read(PLATFORM_MAX_BYTES + 1)
    except OSError as e:
        raise PlatformError(f"{where}: cannot be read: {e.strerror or e}") from e
    if len(data) > PLATFORM_MAX_BYTES:
        raise PlatformError(f"{where}: is larger than {PLATFORM_MAX_BYTES} bytes: not a platform description")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PlatformError(f"{where}: is not UTF-8 text (invalid byte at offset {e.start})") from None


def platform_from_toml(text: str, name: str, *, source: str | None = None) -> Platform:
    """Parse and validate a platform description; `name` becomes `Platform.name`, `source` (default
    `<name>.toml`) names the file in error messages."""
    p = _Parser(source or f"{name}.toml")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PlatformError(one_line(f"platform file {p.source}: not valid TOML: {e}")) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise PlatformError(
            f"platform file {one_line(p.source)}: not valid TOML: arrays or tables nest too deeply"
        ) from None
    return p.platform(doc, name)


def _show(value: Any) -> str:
    """A TOML value for a message: one line, cut short, dates as written, tables and arrays by kind."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"an array of {len(value)} values" if len(repr(value)) > 60 else repr(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    return repr(value)


class _Parser:
    """Validating reader of one document: every accessor names the dotted key in its errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> PlatformError:
        # Keys can be any quoted TOML string and sources any file name: one_line keeps the message one line.
        return PlatformError(one_line(f"platform file {self.source}: key '{key}' {problem}"))

    def table(self, doc: dict[str, Any], key: str, prefix: str, *, required: bool) -> dict[str, Any]:
        full = f"{prefix}{key}"
        if key not in doc:
            if required:
                raise self.fail(full, "is missing")
            return {}
        value = doc[key]
        if not isinstance(value, dict):
            raise self.fail(full, f"must be a table, got {_show(value)}")
        return value

    def array_of_tables(self, doc: dict[str, Any], key: str, prefix: str) -> list[dict[str, Any]]:
        full = f"{prefix}{key}"
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(full, f"must be an array of tables ([[{full}]]), got {_show(value)}")
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
            raise self.fail(key, f"must be a non-empty string, got {_show(value)}")
        if _CONTROL.search(value) or len(value) > 256:
            raise self.fail(key, f"must be one line of at most 256 characters, got {_show(value)}")
        return value

    def positive_int(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail(key, f"must be a positive integer, got {_show(value)}")
        return value

    def bounded(self, maximum: int) -> Callable[[str, Any], int]:
        """A positive integer of at most `maximum`."""

        def conv(key: str, value: Any) -> int:
            n = self.positive_int(key, value)
            if n > maximum:
                raise self.fail(key, f"must be at most {maximum}, got {n}")
            return n

        return conv

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {_show(value)}")
        return value

    def size(self, key: str, value: Any) -> int:
        n = self._number(key, value, parse_size, "a size (bytes, or a string like '512K', '62M', '32G')")
        if n <= 0 or n % PAGE_SIZE:
            raise self.fail(key, f"must be a positive multiple of 8K, got {_show(value)}")
        if n >= ADDRESS_LIMIT:
            raise self.fail(key, f"must be less than 2^64 bytes, got {_show(value)}")
        return n

    def address(self, key: str, value: Any) -> int:
        return self._number(
            key, value, parse_addr, "an address (an integer, or a hex string like '0x4000000')"
        )

    def mac(self, key: str, value: Any) -> int:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a MAC address string like '00:14:4f:f8:00:00', got {_show(value)}")
        try:
            mac = parse_mac(value)
        except LdmError as e:
            raise self.fail(key, f"must be a MAC address like '00:14:4f:f8:00:00', got {_show(value)}") from e
        if mac >> 40 & 1:
            raise self.fail(key, f"must be a unicast MAC address (first octet even), got {_show(value)}")
        if (mac & _LOW_40) + MAC_POOL_SIZE > _LOW_40 + 1:  # the pool would spill into multicast addresses
            raise self.fail(
                key,
                f"must leave room for the {MAC_POOL_SIZE} unicast addresses of the pool, got {_show(value)}",
            )
        return mac

    def _number(self, key: str, value: Any, parse: Callable[[str], int], what: str) -> int:
        if isinstance(value, bool):
            raise self.fail(key, f"must be {what}, got {_show(value)}")
        if isinstance(value, int):
            if value < 0:
                raise self.fail(key, f"must be {what}, got {_show(value)}")
            return value
        if isinstance(value, str):
            try:
                return parse(value)
            except LdmError as e:
                raise self.fail(key, f"must be {what}, got {_show(value)}") from e
        raise self.fail(key, f"must be {what}, got {_show(value)}")

    # ---------------------------------------------------------------- the document
    def platform(self, doc: dict[str, Any], name: str) -> Platform:
        self.check_keys(doc, {"model", "cpu", "memory", "pci", "niu", "firmware", "mac"}, "")
        model = self.get(doc, "model", "", self.string)

        cpu = self.table(doc, "cpu", "", required=True)
        self.check_keys(cpu, {"type", "mhz", "sockets", "cores_per_socket", "strands_per_core"}, "cpu.")
        cpu_type = self.get(cpu, "type", "cpu.", self.string)
        mhz = self.get(cpu, "mhz", "cpu.", self.bounded(MAX_MHZ))
        sockets = self.get(cpu, "sockets", "cpu.", self.bounded(MAX_SOCKETS))
        cores = self.get(cpu, "cores_per_socket", "cpu.", self.bounded(MAX_CORES_PER_SOCKET))
        strands = self.get(cpu, "strands_per_core", "cpu.", self.bounded(MAX_STRANDS_PER_CORE))
        if sockets * cores * strands > MAX_STRANDS:
            raise self.fail(
                "cpu",
                f"describes {sockets} x {cores} x {strands} = {sockets * cores * strands} strands, more than "
                f"the {MAX_STRANDS} allowed",
            )

        mem = self.table(doc, "memory", "", required=True)
        self.check_keys(mem, {"hw_max_pagesize", "range"}, "memory.")
        hw_page = self.get(mem, "hw_max_pagesize", "memory.", self.size)
        if hw_page & (hw_page - 1) or hw_page > MAX_PAGESIZE:
            raise self.fail(
                "memory.hw_max_pagesize",
                f"must be a power of two of at most 16G, got {_show(mem['hw_max_pagesize'])}",
            )
        ranges = self.memory_ranges(mem)

        seen: set[str] = (
            set()
        )  # device names and pseudonyms: unique across buses and NIUs (add-io takes both)
        pci = tuple(PciBus(dev=d, pseudonym=a) for d, a in self.devices(doc, "pci", seen))
        niu = tuple(Niu(dev=d, pseudonym=a) for d, a in self.devices(doc, "niu", seen))

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
        if len(items) > MAX_RANGES:
            raise self.fail("memory.range", f"has {len(items)} ranges, more than the {MAX_RANGES} allowed")
        out: list[MemRange] = []
        for i, item in enumerate(items):
            prefix = f"memory.range[{i}]."
            self.check_keys(item, {"pa", "size", "reserved"}, prefix)
            pa = self.get(item, "pa", prefix, self.address)
            if pa % PAGE_SIZE:
                raise self.fail(f"{prefix}pa", f"must be aligned to 8K, got {pa:#x}")
            size = self.get(item, "size", prefix, self.size)
            reserved = self.get(item, "reserved", prefix, self.boolean, False)
            if pa + size > ADDRESS_LIMIT:
                raise self.fail(
                    f"{prefix}size", f"takes the range past the 64-bit address space: {pa:#x} + {size:#x}"
                )
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

    def devices(self, doc: dict[str, Any], key: str, seen: set[str]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        items = self.array_of_tables(doc, key, "")
        if len(items) > MAX_DEVICES:
            raise self.fail(key, f"lists {len(items)} devices, more than the {MAX_DEVICES} allowed")
        for i, item in enumerate(items):
            prefix = f"{key}[{i}]."
            self.check_keys(item, {"dev", "pseudonym"}, prefix)
            dev = self.get(item, "dev", prefix, self.string)
            alias = self.get(item, "pseudonym", prefix, self.string)
            if not re.fullmatch(r"[a-z]+@[0-9a-f]{1,16}", dev):
                raise self.fail(f"{prefix}dev", f"must look like '{key}@400', got {_show(dev)}")
            if not _PSEUDONYM.fullmatch(alias):
                raise self.fail(
                    f"{prefix}pseudonym",
                    f"must be a name (a letter, then letters, digits, '_', '.' or '-'), got {_show(alias)}",
                )
            for k, v in (("dev", dev), ("pseudonym", alias)):
                if v in seen:
                    raise self.fail(f"{prefix}{k}", f"must be unique, got {_show(v)} twice")
                seen.add(v)
            out.append((dev, alias))
        return out
