"""Sizes and addresses, parsed and formatted only at the edges.

Inside the program sizes and addresses are plain `int` bytes.  LDoms prints a size with the largest unit
among G, M, K that divides it exactly (`5632M`, `1536K`), and addresses as unpadded lowercase hex.
"""

from __future__ import annotations

import re

from ldoms.errors import UsageError

K = 1024
M = 1024 * K
G = 1024 * M
PAGE_SIZE = 8 * K  # SPARC's base page

_UNITS = {"": 1, "B": 1, "K": K, "M": M, "G": G, "T": 1024 * G}
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([KMGT]?)B?\s*$", re.IGNORECASE)
_MAC_RE = re.compile(r"^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$")


def parse_size(text: str, *, what: str = "size") -> int:
    """'512M' -> 536870912.  No unit means bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"Invalid {what} '{text}': expected a number with an optional unit K, M or G")
    if len(m.group(1)) > 20:  # beyond any memory size (and int() refuses over 4300 digits)
        raise UsageError(f"Invalid {what} '{text}': the number is too large")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def format_size(nbytes: int) -> str:
    """1073741824 -> '1G', 5905580032 -> '5632M', 512 -> '512'."""
    if nbytes == 0:
        return "0"
    for unit, mult in (("G", G), ("M", M), ("K", K)):
        if nbytes % mult == 0:
            return f"{nbytes // mult}{unit}"
    return str(nbytes)


def parse_addr(text: str, *, what: str = "address") -> int:
    """'0x4000000' or '4000000' (the named-resource example omits 0x) -> int."""
    t = text.strip().lower()
    if t.startswith("0x"):
        t = t[2:]
    if not t or not re.fullmatch(r"[0-9a-f]+", t):
        raise UsageError(f"Invalid {what} '{text}': expected a hexadecimal address")
    return int(t, 16)


def format_addr(addr: int) -> str:
    return f"{addr:#x}"


def parse_mac(text: str) -> int:
    if not _MAC_RE.fullmatch(text):  # not `match`: `$` lets a trailing newline through
        raise UsageError(f"Invalid MAC address '{text}': expected six colon-separated octets")
    return int("".join(f"{int(p, 16):02x}" for p in text.split(":")), 16)


def format_mac(mac: int) -> str:
    return ":".join(f"{(mac >> s) & 0xFF:02x}" for s in range(40, -1, -8))


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def format_uptime(seconds: int) -> str:
    """'3d 21h 7m'; leading zero units dropped; under a minute, seconds ('0s')."""
    if seconds < 60:
        return f"{max(seconds, 0)}s"
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes = rem // 60
    parts: list[str] = []
    if days:
        parts.append(f"{days}d")
    if days or hours:
        parts.append(f"{hours}h")
    parts.append(f"{minutes}m")
    return " ".join(parts)


def format_util(util: float) -> str:
    """Human UTIL: one decimal below 10, none at 10 or above; the caller right-aligns."""
    if util < 10:
        return f"{util:.1f}%"
    return f"{round(util):d}%"
