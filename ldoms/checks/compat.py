"""Platform compatibility facts used by the CPU and firmware rules (SPEC §2.6, §3.1 "Other later
restrictions"): CPU families and generations, `cpu-arch` migration classes, firmware versions and minimums.

Pure helpers returning plain values; the rules in `ldoms.checks.cpu` and `ldoms.checks.source` turn them into
`CheckFailure`s.
"""

from __future__ import annotations

import re

from ldoms.checks.facts import MigrationMode
from ldoms.model.platform import Platform

# cpu-arch values (SPEC §2.6).
CPU_ARCH_CLASSES = ("native", "generic", "migration-class1", "sparc64-class1")

_FAMILIES: tuple[tuple[str, str, int], ...] = (
    # (pattern on the lower-cased CPU type, family, generation)
    (r"sparc64", "sparc64", 0),  # Fujitsu M10 (SPARC64 X, X+, XII): their own lineage
    (r"ultrasparc[ -]?t2 ?(plus|\+)", "t2+", 2),
    (r"ultrasparc[ -]?t2", "t2", 2),
    (r"ultrasparc[ -]?t1", "t1", 1),
    (r"\bt3\b", "t3", 3),
    (r"\bt4\b", "t4", 4),
    (r"\b(t5|m5|m6)\b", "t5", 5),
    (r"\b(t7|m7|s7)\b", "t7", 7),
    (r"\b(t8|m8)\b", "t8", 8),
)


def cpu_family(cpu_type: str) -> tuple[str, int]:
    """('t2+', 2) for "UltraSPARC T2 Plus"; ('', -1) for a type this table does not know."""
    t = cpu_type.lower()
    for pattern, family, gen in _FAMILIES:
        if re.search(pattern, t):
            return family, gen
    return "", -1


def cross_cpu_problem(cpu_arch: str, source: str, target: str) -> str:
    """Why a live migration between CPU types `source` and `target` is impossible under `cpu_arch`
    (3.x rules), or "" when it is allowed."""
    if cpu_arch not in CPU_ARCH_CLASSES:
        return f"unknown cpu-arch '{cpu_arch}' (known: {', '.join(CPU_ARCH_CLASSES)})"
    sfam, sgen = cpu_family(source)
    tfam, tgen = cpu_family(target)
    if cpu_arch == "native":
        if source != target:
            return "cpu-arch=native needs the same processor type on both machines"
        return ""
    if cpu_arch == "sparc64-class1":
        if sfam != "sparc64" or tfam != "sparc64":
            return "cpu-arch=sparc64-class1 migrates only between Fujitsu M10 (SPARC64) machines"
        return ""
    if cpu_arch == "migration-class1":
        if not (sgen >= 4 and tgen >= 4):
            return "cpu-arch=migration-class1 needs SPARC T4 or later on both machines"
        return ""
    # generic: any pair, except the documented gap between UltraSPARC T2/T2+/T3 and SPARC T5 or later.
    old, new = (sgen, tgen) if sgen <= tgen else (tgen, sgen)
    if 2 <= old <= 3 and new >= 5:
        return "live migration between UltraSPARC T2/T2+/T3 and SPARC T5 or later is not supported"
    return ""


# ---------------------------------------------------------------- firmware
def firmware_key(version: str) -> tuple[tuple[int, str], ...]:
    """'8.2.2.c' -> ((8, ''), (2, ''), (2, ''), (-1, 'c')): compares releases part by part."""
    out: list[tuple[int, str]] = []
    for part in version.strip().lower().split("."):
        m = re.match(r"(\d*)(.*)", part)
        assert m is not None  # the pattern matches any string
        num, rest = m.groups()
        out.append((int(num) if num else -1, rest))
    return tuple(out)


def firmware_major(version: str) -> int | None:
    """7 for '7.4.5'; None for a Fujitsu XCP release or an unparseable string."""
    m = re.match(r"\s*(\d+)\.", version)
    return int(m.group(1)) if m else None


def xcp_release(version: str) -> int | None:
    """2210 for 'XCP2210' (Fujitsu M10 firmware)."""
    m = re.fullmatch(r"\s*xcp\s*(\d+)\s*", version.lower())
    return int(m.group(1)) if m else None


_MIN_FIRMWARE: dict[MigrationMode, dict[str, str]] = {
    # 1.3 release notes: 7.2.x on UltraSPARC T2/T2 Plus; used for 1.2 as well.
    MigrationMode.V1_2: {"t2": "7.2.0", "t2+": "7.2.0"},
    MigrationMode.V1_3: {"t2": "7.2.0", "t2+": "7.2.0"},
    # 3.x: T2/T2+ 7.4.5; T3/T4 8.2.2.c; T5 and later, and M10: any.
    MigrationMode.V3: {"t2": "7.4.5", "t2+": "7.4.5", "t3": "8.2.2.c", "t4": "8.2.2.c"},
}


def firmware_minimum_failure(
    platform: Platform, host: str, mode: MigrationMode
) -> tuple[str, str, str] | None:
    """(message, observed, required) when `platform`'s firmware is older than migration needs."""
    family, _ = cpu_family(platform.cpu_type)
    minimum = _MIN_FIRMWARE[mode].get(family)
    if minimum is None or firmware_key(platform.firmware) >= firmware_key(minimum):
        return None
    return (
        f"System firmware {platform.firmware} on {host} does not support domain migration: "
        f"{platform.cpu_type} machines need at least {minimum}",
        platform.firmware,
        f">= {minimum}",
    )


# Firmware from which a domain uses features older firmware lacks (SPEC §2.6, 3.x).
FEATURE_FIRMWARE = "8.4"
FEATURE_XCP = 2210


def firmware_downgrade(source: str, target: str) -> bool:
    """True when migrating from firmware >= 8.4 (or XCP2210) to an older release."""
    sx, tx = xcp_release(source), xcp_release(target)
    if sx is not None and tx is not None:
        return sx >= FEATURE_XCP > tx
    if sx is None and tx is None:
        s, t, f = firmware_key(source), firmware_key(target), firmware_key(FEATURE_FIRMWARE)
        return s >= f > t
    return False
