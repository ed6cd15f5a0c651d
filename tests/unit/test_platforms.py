"""Platform presets and the TOML platform format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ldoms.errors import PlatformError
from ldoms.model.platform import MemRange
from ldoms.model.platforms import list_presets, load_platform, platform_from_toml
from ldoms.units import G, K, M

SYS_RANGES = (
    MemRange(pa=0x0, size=512 * K, reserved=True),
    MemRange(pa=0x80000, size=1536 * K, reserved=True),
    MemRange(pa=0x200000, size=62 * M, reserved=True),
)

MINIMAL = """
model = "Test box"
[cpu]
type = "UltraSPARC T2 Plus"
mhz = 1415
sockets = 1
cores_per_socket = 2
strands_per_core = 4
[memory]
hw_max_pagesize = "256M"
[[memory.range]]
pa = 0x0
size = "64M"
reserved = true
[[memory.range]]
pa = "0x4000000"
size = 1073741824
"""


def expect(substring: str, fn: Callable[..., object], *args: str) -> PlatformError:
    """`fn(*args)` raises PlatformError whose message contains `substring` (plain text, not a regex)."""
    with pytest.raises(PlatformError) as e:
        fn(*args)
    assert substring in str(e.value)
    return e.value


def test_presets_listed() -> None:
    assert set(list_presets()) >= {"t5240", "t5140", "t4-1"}
    assert list_presets() == tuple(sorted(list_presets()))


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_is_consistent(name: str) -> None:
    p = load_platform(name)
    assert p.name == name
    assert p.memory[:3] == SYS_RANGES
    assert p.usable_memory[0].pa == 0x4000000
    assert len(p.maus) == len(p.cores) == p.sockets * p.cores_per_socket
    assert p.nstrands == len(p.cores) * p.strands_per_core
    assert all(b.dev.startswith("pci@") for b in p.pci_buses)


def test_t5240() -> None:
    p = load_platform("t5240")
    assert (p.model, p.cpu_type, p.cpu_mhz) == ("SPARC Enterprise T5240", "UltraSPARC T2 Plus", 1415)
    assert (p.sockets, p.cores_per_socket, p.strands_per_core, p.nstrands) == (2, 8, 8, 128)
    assert p.hw_max_pagesize == 256 * M
    assert p.total_memory == 32 * G
    assert [(b.dev, b.pseudonym) for b in p.pci_buses] == [("pci@400", "bus_a"), ("pci@500", "bus_b")]
    assert p.maus[1].cpuset == tuple(range(8, 16))
    assert p.cores[9].socket == 1
    assert (p.hypervisor_version, p.obp_version, p.firmware) == ("1.7.0", "4.30.0", "7.2.0")


def test_t5140_same_cpu_type_other_clock() -> None:
    a, b = load_platform("t5240"), load_platform("t5140")
    assert a.cpu_type == b.cpu_type and a.cpu_mhz != b.cpu_mhz
    assert (b.sockets, b.cores_per_socket, b.strands_per_core) == (2, 4, 8)


def test_t4_1() -> None:
    p = load_platform("t4-1")
    assert (p.cpu_type, p.cpu_mhz, p.nstrands) == ("SPARC T4", 2848, 64)
    assert p.hw_max_pagesize == 2 * G
    assert p.firmware.startswith("8.")
    assert p.nius


def test_load_from_path(tmp_path: Path) -> None:
    f = tmp_path / "mybox.toml"
    f.write_text(MINIMAL)
    p = load_platform(str(f))
    assert p.name == "mybox"
    assert p.usable_memory == (MemRange(pa=0x4000000, size=G),)
    assert p.pci_buses == () and p.nius == ()
    assert p.hypervisor_version == "1.7.0"  # firmware defaults
    assert p.mac_base == 0x00144FF80000


def test_optional_sections() -> None:
    text = (
        MINIMAL
        + """
[[pci]]
dev = "pci@400"
pseudonym = "bus_a"
[[niu]]
dev = "niu@80"
pseudonym = "niu_0"
[firmware]
hypervisor = "9.9.9"
release = "8.0.0"
[mac]
base = "00:14:4f:fc:00:00"
"""
    )
    p = platform_from_toml(text, "x")
    assert p.pci_buses[0].pseudonym == "bus_a" and p.nius[0].dev == "niu@80"
    assert (p.hypervisor_version, p.firmware, p.obp_version) == ("9.9.9", "8.0.0", "4.30.0")
    assert p.mac_base == 0x00144FFC0000


def test_bad_value_names_key_and_value() -> None:
    text = MINIMAL.replace("mhz = 1415", 'mhz = "fast"')
    with pytest.raises(PlatformError) as e:
        platform_from_toml(text, "x")
    assert str(e.value) == "platform file x.toml: key 'cpu.mhz' must be a positive integer, got 'fast'"


def test_missing_file() -> None:
    expect("platform file /nonexistent/x.toml: cannot be read", load_platform, "/nonexistent/x.toml")


def test_unknown_preset() -> None:
    err = expect("unknown platform 't9999': expected one of ", load_platform, "t9999")
    assert "t5240" in str(err)


def test_file_name_in_errors(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text(MINIMAL.replace("sockets = 1", "sockets = 0"))
    err = expect("key 'cpu.sockets' must be a positive integer, got 0", load_platform, str(f))
    assert str(err).startswith("platform file broken.toml: ")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('model = "Test box"', "", "key 'model' is missing"),
        ('model = "Test box"', "model = 3", "key 'model' must be a non-empty string, got 3"),
        ('model = "Test box"', 'model = "x"\ncolour = "red"', "key 'colour' is unknown"),
        ("mhz = 1415", "mhz = 1415\nghz = 1", "key 'cpu.ghz' is unknown"),
        ("mhz = 1415", "mhz = true", "key 'cpu.mhz' must be a positive integer, got True"),
        ("mhz = 1415", "", "key 'cpu.mhz' is missing"),
        ('hw_max_pagesize = "256M"', 'hw_max_pagesize = "100M"', "must be a power of two"),
        ('hw_max_pagesize = "256M"', 'hw_max_pagesize = "big"', "'memory.hw_max_pagesize' must be a size"),
        ('hw_max_pagesize = "256M"', "hw_max_pagesize = 100", "must be a positive multiple of 8K, got 100"),
        ('hw_max_pagesize = "256M"', "hw_max_pagesize = [1]", "'memory.hw_max_pagesize' must be a size"),
        ('hw_max_pagesize = "256M"', "hw_max_pagesize = true", "'memory.hw_max_pagesize' must be a size"),
        ('hw_max_pagesize = "256M"', "hw_max_pagesize = -8192", "'memory.hw_max_pagesize' must be a size"),
        ('size = "64M"', 'size = "64M"\nowner = "me"', "key 'memory.range[0].owner' is unknown"),
        ('size = "64M"', 'size = "1000"', "key 'memory.range[0].size' must be a positive multiple of 8K"),
        ('pa = "0x4000000"', 'pa = "zz"', "key 'memory.range[1].pa' must be an address"),
        ('pa = "0x4000000"', "pa = 0x4000001", "key 'memory.range[1].pa' must be aligned to 8K"),
        ('pa = "0x4000000"', "pa = 0x2000000", "key 'memory.range[1].pa' must not lie below the end"),
        ("reserved = true", 'reserved = "yes"', "key 'memory.range[0].reserved' must be true or false"),
        ('model = "Test box"', 'model = "x"\nfirmware = 1', "key 'firmware' must be a table, got 1"),
    ],
)
def test_malformed(old: str, new: str, message: str) -> None:
    assert old in MINIMAL
    expect(message, platform_from_toml, MINIMAL.replace(old, new, 1), "x")


def test_missing_tables() -> None:
    no_cpu = MINIMAL.split("[cpu]")[0] + "[memory]" + MINIMAL.split("[memory]")[1]
    expect("key 'cpu' is missing", platform_from_toml, no_cpu, "x")
    expect("key 'memory' is missing", platform_from_toml, MINIMAL.split("[memory]")[0], "x")
    no_ranges = MINIMAL.split("[[memory.range]]")[0]
    expect("key 'memory.range' is missing: at least one", platform_from_toml, no_ranges, "x")


def test_every_range_reserved() -> None:
    text = MINIMAL.replace("size = 1073741824", "size = 1073741824\nreserved = true")
    expect("key 'memory.range' has no usable range", platform_from_toml, text, "x")


def test_range_must_be_array_of_tables() -> None:
    text = MINIMAL.split("[[memory.range]]")[0] + "range = 5\n"
    expect("key 'memory.range' must be an array of tables", platform_from_toml, text, "x")


def test_not_toml() -> None:
    expect("platform file x.toml: not valid TOML", platform_from_toml, "model = = 3", "x")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[[pci]]\ndev = "bus400"\npseudonym = "bus_a"', "key 'pci[0].dev' must look like 'pci@400'"),
        ('[[pci]]\ndev = "pci@400"', "key 'pci[0].pseudonym' is missing"),
        (
            '[[pci]]\ndev = "pci@400"\npseudonym = "a"\n[[pci]]\ndev = "pci@400"\npseudonym = "b"',
            "key 'pci[1].dev' must be unique, got 'pci@400' twice",
        ),
        ('[[niu]]\ndev = "niu@80"\npseudonym = "n"\nspeed = 10', "key 'niu[0].speed' is unknown"),
        ('[firmware]\nbios = "1"', "key 'firmware.bios' is unknown"),
        ("[firmware]\nobp = 4", "key 'firmware.obp' must be a non-empty string"),
        ('[mac]\nbase = "00:14"', "key 'mac.base' must be a MAC address"),
        ("[mac]\nbase = 5", "key 'mac.base' must be a MAC address string"),
    ],
)
def test_malformed_optional_sections(extra: str, message: str) -> None:
    expect(message, platform_from_toml, MINIMAL + "\n" + extra + "\n", "x")
