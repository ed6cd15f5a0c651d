"""OS profiles and guest conditions from domain variables."""

from __future__ import annotations

import pytest

from ldoms.checks.facts import GuestConditions, GuestProfile
from ldoms.errors import UsageError
from ldoms.hv.profile import check_variables, guest_profile, guest_softstate
from ldoms.units import M


def test_default_is_a_live_migration_capable_os_with_every_dr_and_split() -> None:
    profile, conditions = guest_profile({})
    assert profile == GuestProfile(
        os_name="Solaris 11.3",
        live_migration=True,
        latest_migration=True,
        cpu_dr=True,
        crypto_dr=True,
        mem_split=True,
    )
    assert conditions == GuestConditions()


def test_legacy_has_cpu_dr_but_no_live_migration() -> None:
    profile, _ = guest_profile({"ldoms-os": "legacy"})
    assert (profile.live_migration, profile.cpu_dr, profile.crypto_dr, profile.latest_migration) == (
        False,
        True,
        False,
        False,
    )


@pytest.mark.parametrize(
    ("os", "name", "live", "crypto_dr", "latest", "split"),
    [
        ("solaris10-10/08", "Solaris 10 10/08", False, False, False, False),
        ("solaris10-5/09", "Solaris 10 5/09", True, False, False, False),
        ("solaris10-10/09", "Solaris 10 10/09", True, True, False, False),
        ("Solaris10-9/10", "Solaris 10 9/10", True, True, False, False),
        ("solaris10-1/13", "Solaris 10 1/13", True, True, True, False),
        ("solaris11", "Solaris 11", True, True, False, False),
        ("solaris11.1", "Solaris 11.1", True, True, True, False),
        ("solaris11.4", "Solaris 11.4", True, True, True, True),
    ],
)
def test_releases(os: str, name: str, live: bool, crypto_dr: bool, latest: bool, split: bool) -> None:
    p, _ = guest_profile({"ldoms-os": os})
    assert (p.os_name, p.live_migration, p.crypto_dr, p.latest_migration, p.mem_split) == (
        name,
        live,
        crypto_dr,
        latest,
        split,
    )


def test_overrides_and_conditions() -> None:
    profile, conditions = guest_profile(
        {
            "ldoms-os": "solaris10-10/09",
            "ldoms-cpu-dr": "off",
            "ldoms-crypto-dr": "OFF",
            "ldoms-mem-split": "on",
            "ldoms-effective-max-pagesize": "4M",
            "ldoms-bound-processes": "2",
            "ldoms-processor-sets": "1",
        }
    )
    assert (profile.cpu_dr, profile.crypto_dr, profile.mem_split) == (False, False, True)
    assert profile.effective_max_pagesize == 4 * M
    assert conditions == GuestConditions(bound_processes=2, processor_sets=1)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"ldoms-os": "windows"},
            "Invalid value 'windows' for variable ldoms-os: expected legacy, solaris10-M/YY",
        ),
        ({"ldoms-os": "solaris10-2/11"}, "Invalid value 'solaris10-2/11' for variable ldoms-os"),
        ({"ldoms-os": "solaris11.9"}, "Invalid value 'solaris11.9' for variable ldoms-os"),
        ({"ldoms-cpu-dr": "maybe"}, "Invalid value 'maybe' for variable ldoms-cpu-dr: expected on or off"),
        ({"ldoms-crypto-dr": ""}, "Invalid value '' for variable ldoms-crypto-dr"),
        ({"ldoms-mem-split": "2"}, "Invalid value '2' for variable ldoms-mem-split"),
        (
            {"ldoms-bound-processes": "-1"},
            "Invalid value '-1' for variable ldoms-bound-processes: expected a count",
        ),
        ({"ldoms-processor-sets": "many"}, "Invalid value 'many' for variable ldoms-processor-sets"),
        (
            {"ldoms-effective-max-pagesize": "3M"},
            "Invalid value '3M' for variable ldoms-effective-max-pagesize",
        ),
        (
            {"ldoms-effective-max-pagesize": "4K"},
            "Invalid value '4K' for variable ldoms-effective-max-pagesize",
        ),
        (
            {"ldoms-effective-max-pagesize": "big"},
            "Invalid value 'big' for variable ldoms-effective-max-pagesize",
        ),
    ],
)
def test_bad_values_name_the_variable_and_value(variables: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        guest_profile(variables)
    with pytest.raises(UsageError, match=message):
        check_variables(variables)


def test_softstate() -> None:
    assert guest_softstate({}) == "Solaris running"
    assert guest_softstate({"ldoms-softstate": "OpenBoot Running"}) == "OpenBoot Running"
    for bad in ("", "a|b", "x" * 65, "tab\there"):
        with pytest.raises(UsageError, match="for variable ldoms-softstate: expected printable text"):
            guest_softstate({"ldoms-softstate": bad})


def test_check_variables_covers_the_workload_too() -> None:
    check_variables({"ldoms-workload": "ledger", "ldoms-os": "legacy", "unrelated": "x"})
    with pytest.raises(UsageError, match="variable ldoms-workload"):
        check_variables({"ldoms-workload": "bogus"})
    with pytest.raises(UsageError, match="variable ldoms-softstate"):
        check_variables({"ldoms-softstate": "a|b"})
