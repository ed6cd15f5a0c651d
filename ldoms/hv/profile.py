"""A guest's OS profile (what its OS supports for migration) and conditions, chosen by domain variables.

    ldoms-os=NAME                   the guest OS (default solaris11.3):
                                      legacy          an OS without live migration (1.2 rules; CPU DR yes)
                                      solaris10-M/YY  a Solaris 10 update 8/07 .. 1/13, e.g. solaris10-10/09
                                      solaris11, solaris11.1 .. solaris11.4
    ldoms-cpu-dr=on|off             override: CPU dynamic reconfiguration
    ldoms-crypto-dr=on|off          override: crypto-unit dynamic reconfiguration
    ldoms-mem-split=on|off          override: memory blocks may be split during a migration
    ldoms-effective-max-pagesize=SIZE   the largest page the OS uses (default: the hardware's)
    ldoms-bound-processes=N         processes bound to CPUs in the guest (they make a CPU-DR removal fail)
    ldoms-processor-sets=N          processor sets in the guest (likewise)
    ldoms-softstate=TEXT            what the OS reports (default `Solaris running`; e.g. `OpenBoot Running`)

What each release supports (SPEC §2.6, §3.1): live migration of a running guest from Solaris 10 5/09 (the
LDoms 1.2 level; 3.x documents 9/10 for *live* as opposed to suspended-during-copy migration: the 3.x checks
judge that, not the profile); crypto DR from 10/09; the latest migration functionality (no shrink to one
strand, no whole cores) from 10 1/13 and 11.1; memory-block splitting from 11.3.  Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ldoms.checks.facts import OS_RUNNING_SOFTSTATE, GuestConditions, GuestProfile
from ldoms.errors import UsageError
from ldoms.units import PAGE_SIZE, parse_size

OS_VARIABLE = "ldoms-os"
CPU_DR_VARIABLE = "ldoms-cpu-dr"
CRYPTO_DR_VARIABLE = "ldoms-crypto-dr"
MEM_SPLIT_VARIABLE = "ldoms-mem-split"
PAGESIZE_VARIABLE = "ldoms-effective-max-pagesize"
BOUND_PROCESSES_VARIABLE = "ldoms-bound-processes"
PROCESSOR_SETS_VARIABLE = "ldoms-processor-sets"
SOFTSTATE_VARIABLE = "ldoms-softstate"
PROFILE_VARIABLES = (
    OS_VARIABLE,
    CPU_DR_VARIABLE,
    CRYPTO_DR_VARIABLE,
    MEM_SPLIT_VARIABLE,
    PAGESIZE_VARIABLE,
    BOUND_PROCESSES_VARIABLE,
    PROCESSOR_SETS_VARIABLE,
    SOFTSTATE_VARIABLE,
)

DEFAULT_OS = "solaris11.3"

# Solaris 10 updates in release order; index comparisons decide the features.
S10_UPDATES = ("8/07", "5/08", "10/08", "5/09", "10/09", "9/10", "8/11", "1/13")
_S10_LIVE = S10_UPDATES.index("5/09")
_S10_CRYPTO_DR = S10_UPDATES.index("10/09")
_S10_LATEST = S10_UPDATES.index("1/13")
S11_RELEASES = ("", ".1", ".2", ".3", ".4")  # solaris11, solaris11.1, ...
_ON = dict.fromkeys(("on", "yes", "true", "1"), True) | dict.fromkeys(("off", "no", "false", "0"), False)
_MAX_SOFTSTATE = 64


@dataclass(frozen=True, slots=True)
class _Release:
    os_name: str
    live: bool
    crypto_dr: bool
    latest: bool
    split: bool


def _release(text: str) -> _Release:
    t = text.strip().lower()
    if t == "legacy":
        return _Release("a legacy OS", live=False, crypto_dr=False, latest=False, split=False)
    m = re.fullmatch(r"solaris ?10[-_ ](\d{1,2}/\d{2})", t)
    if m and m.group(1) in S10_UPDATES:
        i = S10_UPDATES.index(m.group(1))
        return _Release(
            f"Solaris 10 {m.group(1)}",
            live=i >= _S10_LIVE,
            crypto_dr=i >= _S10_CRYPTO_DR,
            latest=i >= _S10_LATEST,
            split=False,
        )
    m = re.fullmatch(r"solaris ?11(\.\d)?", t)
    if m and (m.group(1) or "") in S11_RELEASES:
        minor = int((m.group(1) or ".0")[1:])
        return _Release(
            f"Solaris 11{m.group(1) or ''}", live=True, crypto_dr=True, latest=minor >= 1, split=minor >= 3
        )
    raise UsageError(
        f"Invalid value '{text}' for variable {OS_VARIABLE}: expected legacy, solaris10-M/YY (one of "
        f"{', '.join(S10_UPDATES)}) or solaris11, solaris11.1 .. solaris11.4"
    )


def _flag(variables: Mapping[str, str], name: str) -> bool | None:
    text = variables.get(name)
    if text is None:
        return None
    value = _ON.get(text.strip().lower())
    if value is None:
        raise UsageError(f"Invalid value '{text}' for variable {name}: expected on or off")
    return value


def _count(variables: Mapping[str, str], name: str) -> int:
    text = variables.get(name)
    if text is None:
        return 0
    if not text.strip().isdigit():
        raise UsageError(f"Invalid value '{text}' for variable {name}: expected a count 0 or more")
    return int(text)


def _pagesize(variables: Mapping[str, str]) -> int:
    text = variables.get(PAGESIZE_VARIABLE)
    if text is None:
        return 0
    try:
        size = parse_size(text)
    except UsageError:
        size = -1
    if size < PAGE_SIZE or size & (size - 1):
        raise UsageError(
            f"Invalid value '{text}' for variable {PAGESIZE_VARIABLE}: expected a power-of-two page size "
            f"of at least {PAGE_SIZE // 1024}K, such as 256M"
        )
    return size


def guest_profile(variables: Mapping[str, str]) -> tuple[GuestProfile, GuestConditions]:
    """The OS profile and conditions the variables describe (raises UsageError naming the variable)."""
    rel = _release(variables.get(OS_VARIABLE, DEFAULT_OS))
    profile = GuestProfile(
        os_name=rel.os_name,
        live_migration=rel.live,
        latest_migration=rel.latest,
        cpu_dr=True,  # every Solaris 10 and 11 release has CPU DR
        crypto_dr=rel.crypto_dr,
        mem_split=rel.split,
        effective_max_pagesize=_pagesize(variables),
    )
    for name, field in ((CPU_DR_VARIABLE, "cpu_dr"), (CRYPTO_DR_VARIABLE, "crypto_dr"),
                        (MEM_SPLIT_VARIABLE, "mem_split")):  # fmt: skip
        value = _flag(variables, name)
        if value is not None:
            profile = replace(profile, **{field: value})
    conditions = GuestConditions(
        bound_processes=_count(variables, BOUND_PROCESSES_VARIABLE),
        processor_sets=_count(variables, PROCESSOR_SETS_VARIABLE),
    )
    return profile, conditions


def guest_softstate(variables: Mapping[str, str]) -> str:
    """The softstate the guest reports (`ldm list -l` SOFTSTATE): `Solaris running` unless set."""
    text = variables.get(SOFTSTATE_VARIABLE)
    if text is None:
        return OS_RUNNING_SOFTSTATE
    state = text.strip()
    # '|' separates fields in `ldm list -p`; a control character would break every listing.
    if not state or len(state) > _MAX_SOFTSTATE or "|" in state or not state.isprintable():
        raise UsageError(
            f"Invalid value '{text}' for variable {SOFTSTATE_VARIABLE}: expected printable text of 1 to "
            f"{_MAX_SOFTSTATE} characters without '|', such as 'OpenBoot Running'"
        )
    return state


def check_variables(variables: Mapping[str, str]) -> None:
    """Validate every guest variable (profile and workload) as the guest will read them: for
    `ldm set-variable` and `ldm start-domain` to refuse a bad value before a guest fails on it."""
    from ldoms.hv.workload import parse_workload  # the workload module pulls in numpy: only when needed

    guest_profile(variables)
    guest_softstate(variables)
    parse_workload(variables)
