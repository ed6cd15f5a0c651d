"""Hostile platform files: `load_platform` / `platform_from_toml`, and `ldmd --platform FILE`.

A platform file is either accepted as a machine ldmd can serve (built at once: factory default with every
strand, MAU and usable range given to primary, listable) or refused with one `PlatformError` line that names
the file and the offending key.  Hypothesis mutates a valid document structurally (a key dropped, a value
replaced by one of another type or an absurd size, an unknown key added) and writes it back as TOML; fixed
cases cover what structure cannot express (not TOML at all, deep nesting, invalid UTF-8, a FIFO, /dev/zero,
a file too large).  End to end, an ldmd given a bad platform exits non-zero with one line on stderr and
leaves the home in a state a later good start accepts.
"""

from __future__ import annotations

import datetime
import itertools
import math
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from ldoms.binding import factory_default
from ldoms.errors import PlatformError, UsageError
from ldoms.model.platform import Platform
from ldoms.model.platforms import (
    MAX_STRANDS,
    PLATFORM_MAX_BYTES,
    load_platform,
    platform_from_toml,
)
from ldoms.units import PAGE_SIZE
from tests.conftest import Reaper
from tests.fuzz.conftest import assert_clear_error
from tests.integration.conftest import LDMD, LdmHost

BASE: dict[str, Any] = {
    "model": "Fuzz box",
    "cpu": {
        "type": "UltraSPARC T2 Plus",
        "mhz": 1415,
        "sockets": 1,
        "cores_per_socket": 2,
        "strands_per_core": 4,
    },
    "memory": {
        "hw_max_pagesize": "256M",
        "range": [{"pa": 0, "size": "64M", "reserved": True}, {"pa": "0x4000000", "size": "1G"}],
    },
    "pci": [{"dev": "pci@400", "pseudonym": "bus_a"}],
    "niu": [{"dev": "niu@80", "pseudonym": "niu_0"}],
    "firmware": {"hypervisor": "1.7.0", "release": "7.2.0"},
    "mac": {"base": "00:14:4f:f8:00:00"},
}


# ------------------------------------------------------------------------------------------- a TOML writer
def _toml_str(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, datetime.date | datetime.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_str(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    """Every top-level key as `"key" = value`, tables and arrays of tables inline: valid TOML for any doc."""
    return "".join(f"{_toml_str(k)} = {toml_value(v)}\n" for k, v in doc.items())


def test_the_writer_round_trips_the_base_document() -> None:
    import tomllib

    assert tomllib.loads(to_toml(BASE)) == BASE
    p = platform_from_toml(to_toml(BASE), "fuzz")
    assert (p.nstrands, len(p.pci_buses), len(p.nius)) == (8, 1, 1)


# ------------------------------------------------------------------------------------------- mutations
HOSTILE_SCALARS: list[Any] = [
    0, -1, 1, 3, 10**9, 2**63 - 1, 2**64, -(2**63), True, False, 1.5, math.inf, math.nan, "", " ", "0",
    "-64M", "64M", "1G", "0x0", "0x4000000", "16G", "32G", "100M", "8K", "1T", "99999999999G", "fast", "a\nb",
    "pci@400", "bus_a", "niu@80", "00:14:4f:f8:00:00", "01:00:5e:00:00:00", "ff:ff:ff:ff:ff:ff", "x" * 300,
    [], [1], [{}], {}, {"pa": 0},
    datetime.datetime(1979, 5, 27, 7, 32), datetime.date(2008, 11, 19), datetime.time(10, 20),
]  # fmt: skip
HOSTILE_VALUES = st.one_of(
    st.sampled_from(HOSTILE_SCALARS),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
)
KEYS = st.sampled_from(
    ["model", "type", "mhz", "sockets", "cores_per_socket", "strands_per_core", "hw_max_pagesize", "range",
     "pa", "size", "reserved", "dev", "pseudonym", "hypervisor", "release", "base", "colour", "", "a\nb", "é"]
)  # fmt: skip


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the document a mutation can touch."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path[:-1]:
        doc = doc[p]
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    import copy

    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(doc)))
        parent = _parent(doc, where)
        action = draw(st.sampled_from(["replace", "replace", "drop", "add", "append"]))
        # Drawn values are copied: a later mutation must not change a value the strategy holds (a shared
        # constant altered in place made Hypothesis replay differently: FlakyStrategyDefinition).
        if action == "replace":
            parent[where[-1]] = copy.deepcopy(draw(HOSTILE_VALUES))
        elif action == "drop":
            del parent[where[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(KEYS)] = copy.deepcopy(draw(HOSTILE_VALUES))
        elif action == "append" and isinstance(parent, list):
            parent.append(copy.deepcopy(draw(st.sampled_from(parent))) if parent else {})
        if not paths(doc):
            break
    return doc


def check_accepted(p: Platform) -> None:
    """An accepted platform is a machine ldmd can build at once."""
    assert 0 < p.nstrands <= MAX_STRANDS
    assert p.hw_max_pagesize >= PAGE_SIZE and p.hw_max_pagesize & (p.hw_max_pagesize - 1) == 0
    assert p.usable_memory
    assert all(a.end <= b.pa for a, b in itertools.pairwise(p.memory))
    names = [b.dev for b in p.pci_buses] + [n.dev for n in p.nius]
    aliases = [b.pseudonym for b in p.pci_buses] + [n.pseudonym for n in p.nius]
    assert len(set(names + aliases)) == len(names) + len(aliases)
    m = factory_default(p, "fuzz", seed=0)
    assert len(m.control.bindings.strands) == p.nstrands  # type: ignore[union-attr]


def check_refusal(e: PlatformError, source: str) -> None:
    assert_clear_error(e.message)
    assert e.message.startswith(f"platform file {source}: "), e.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(doc=mutated())
def test_mutated_documents(doc: dict[str, Any]) -> None:
    accepted_or_refused_by_key(doc)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(doc=mutated())
def test_mutated_documents_long(doc: dict[str, Any]) -> None:
    accepted_or_refused_by_key(doc)


def accepted_or_refused_by_key(doc: dict[str, Any]) -> None:
    try:
        p = platform_from_toml(to_toml(doc), "fuzz")
    except PlatformError as e:
        check_refusal(e, "fuzz.toml")
        assert "key '" in e.message, f"the refusal names no key: {e.message}"
        return
    check_accepted(p)


@settings(max_examples=100, deadline=None, database=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    try:
        check_accepted(platform_from_toml(text, "fuzz"))
    except PlatformError as e:
        check_refusal(e, "fuzz.toml")


# ------------------------------------------------------------------------------------------- fixed cases
def _with(**changes: Any) -> str:
    import copy

    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        keys = dotted.split("__")
        parent = doc
        for k in keys[:-1]:
            parent = parent[int(k)] if isinstance(parent, list) else parent[k]
        last: Any = int(keys[-1]) if isinstance(parent, list) else keys[-1]
        if value is None:
            del parent[last]
        else:
            parent[last] = value
    return to_toml(doc)


RANGE2 = {"pa": "0x20000000", "size": "1G"}  # overlaps [0x4000000, 0x44000000)
RANGES = BASE["memory"]["range"]
MANY = [{"pa": i * 8192, "size": "8K"} for i in range(2000)]
# name -> (document, what the refusal must say; "" = a limit case that must be accepted)
CASES: dict[str, tuple[str, str]] = {
    "zero cores": (
        _with(cpu__cores_per_socket=0),
        "'cpu.cores_per_socket' must be a positive integer, got 0",
    ),
    "10^9 strands": (_with(cpu__strands_per_core=10**9), "'cpu.strands_per_core' must be at most 16"),
    "too many strands": (_with(cpu__sockets=64, cpu__cores_per_socket=64), "more than the 8192 allowed"),
    "absurd clock": (_with(cpu__mhz=2**62), "'cpu.mhz' must be at most 100000"),
    "negative size": (_with(memory__range__1__size=-(2**30)), "'memory.range[1].size' must be a size"),
    "negative size text": (_with(memory__range__1__size="-1G"), "'memory.range[1].size' must be a size"),
    "size past 2^64": (_with(memory__range__1__size=f"{2**64}G"), "'memory.range[1].size' must be less than"),
    "range past 2^64": (_with(memory__range__1__pa="0xfffffffffff00000"), "'memory.range[1].size' takes the"),
    "overlapping ranges": (_with(memory__range=[*RANGES, RANGE2]), "'memory.range[2].pa' must not lie below"),
    "too many ranges": (_with(memory__range=MANY), "'memory.range' has 2000 ranges, more than the 1024"),
    "page size too large": (_with(memory__hw_max_pagesize="1T"), "must be a power of two of at most 16G"),
    "missing cpu": (_with(cpu=None), "key 'cpu' is missing"),
    "missing sockets": (_with(cpu__sockets=None), "key 'cpu.sockets' is missing"),
    "a table wanted": (_with(cpu=5), "key 'cpu' must be a table, got 5"),
    "a date": (_with(cpu__mhz=datetime.date(2008, 11, 19)), "must be a positive integer, got 2008-11-19"),
    "an array": (_with(model=[1, 2]), "key 'model' must be a non-empty string, got [1, 2]"),
    "an inline table": (_with(model={"a": 1}), "key 'model' must be a non-empty string, got a table"),
    "control character": (
        _with(model="a\nb"),
        "'model' must be one line of at most 256 characters, got 'a\\nb'",
    ),
    "huge string": (_with(cpu__type="x" * 100_000), "'cpu.type' must be one line of at most 256 characters"),
    "newline in a key": (_with(**{"a\nb": 1}), "key 'a\\nb' is unknown"),
    "separator in a pseudonym": (_with(pci__0__pseudonym="bus|a"), "'pci[0].pseudonym' must be a name"),
    "pseudonym of a bus and a NIU": (_with(niu__0__pseudonym="bus_a"), "'niu[0].pseudonym' must be unique"),
    "multicast MAC base": (_with(mac__base="01:00:5e:00:00:00"), "'mac.base' must be a unicast MAC address"),
    "MAC pool past the end": (_with(mac__base="fe:ff:ff:ff:ff:ff"), "'mac.base' must leave room"),
    "MAC pool at the end": (_with(mac__base="00:ff:ff:fc:00:00"), ""),
    "not TOML": ("model = = 3", "not valid TOML"),
    "deep arrays": ("a = " + "[" * 5000 + "]" * 5000, "not valid TOML: arrays or tables nest too deeply"),
    "deep inline tables": ("a = " + "{b = " * 3000 + "1" + "}" * 3000, "not valid TOML"),
}


@pytest.mark.parametrize(("text", "expected"), list(CASES.values()), ids=list(CASES))
def test_fixed_cases(text: str, expected: str) -> None:
    if not expected:  # a limit case that must be accepted
        check_accepted(platform_from_toml(text, "good"))
        return
    with pytest.raises(PlatformError) as e:
        platform_from_toml(text, "bad")
    check_refusal(e.value, "bad.toml")
    assert expected in e.value.message


def _fifo(tmp: Path) -> str:
    os.mkfifo(tmp / "fifo.toml")
    return str(tmp / "fifo.toml")


def _write(name: str, data: bytes) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        (tmp / name).write_bytes(data)
        return str(tmp / name)

    return make


FILES: list[tuple[str, Callable[[Path], str], str]] = [
    ("missing", lambda tmp: str(tmp / "missing.toml"), "cannot be read: No such file or directory"),
    ("directory", lambda tmp: str(tmp) + "/", "cannot be read: Is a directory"),
    ("fifo", _fifo, "cannot be read: it is not a regular file"),
    ("dev-zero", lambda tmp: "/dev/zero", "cannot be read: it is not a regular file"),
    (
        "not utf-8",
        _write("latin1.toml", b'model = "\xe9t\xe9"\n'),
        "is not UTF-8 text (invalid byte at offset 9)",
    ),
    ("too large", _write("big.toml", b"#" * (PLATFORM_MAX_BYTES + 1)), "is larger than 1048576 bytes"),
    ("binary", _write("bin.toml", bytes(range(256))), "is not UTF-8 text"),
]


@pytest.mark.parametrize(("make", "expected"), [(m, e) for _, m, e in FILES], ids=[f[0] for f in FILES])
def test_unreadable_files(tmp_path: Path, make: Callable[[Path], str], expected: str) -> None:
    path = make(tmp_path)
    with pytest.raises(PlatformError) as e:
        load_platform(path)
    assert_clear_error(e.value.message)
    assert expected in e.value.message and e.value.message.startswith("platform file ")


def test_unknown_preset_with_control_characters() -> None:
    with pytest.raises(PlatformError) as e:
        load_platform("t5240\n")
    assert_clear_error(e.value.message)
    assert "unknown platform 't5240\\n'" in e.value.message


# ------------------------------------------------------------------------------------------- ldmd --platform
BAD_FOR_LDMD = [
    ("malformed", b"model = = 3\n", "not valid TOML"),
    ("absurd", _with(cpu__strands_per_core=10**9).encode(), "key 'cpu.strands_per_core' must be at most 16"),
    ("overlap", _with(memory__range=[*BASE["memory"]["range"], RANGE2]).encode(), "must not lie below"),
    ("not utf-8", b"\xff\xfe", "is not UTF-8 text"),
]


def test_ldmd_refuses_bad_platforms_and_a_good_start_follows(tmp_path: Path, reaper: Reaper) -> None:
    home = reaper.watch(tmp_path / "h1")
    for name, data, expected in BAD_FOR_LDMD:
        bad = tmp_path / f"{name}.toml"
        bad.write_bytes(data)
        r = subprocess.run(
            [LDMD, "--home", str(home), "--platform", str(bad), "--name", "h1", "--listen", "127.0.0.1:1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode != 0, f"{name}: ldmd accepted a bad platform"
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("ldmd: platform file "), (name, r.stderr)
        assert expected in r.stderr and "Traceback" not in r.stderr, (name, r.stderr)
        assert not (home / "ldmd.sock").exists()
    good = tmp_path / "good.toml"
    good.write_text(to_toml(BASE))
    h = LdmHost(home, "h1", str(good))
    h.start_ldmd()
    try:
        out = h.ldm("ls", "-p").stdout
        assert "DOMAIN|name=primary|state=active" in out and "|ncpu=8|" in out
    finally:
        assert h.term() == 0


@pytest.mark.parametrize("which", ["name", "listen"])
def test_ldmd_host_name_and_listen_address_refuse_a_trailing_newline(which: str) -> None:
    from ldoms.daemon.main import check_host_name, parse_listen

    with pytest.raises(UsageError):
        if which == "name":
            check_host_name("h1\n")
        else:
            parse_listen("host\n:80")
