"""Virtual disk verbs: add/remove-vds, add/set/remove-vdsdev, add/set/remove-vdisk."""

from __future__ import annotations

import pytest
from vio_world import apply, do, with_state, world  # tests/unit is on sys.path (rootdir import)

from ldoms.errors import (
    AlreadyExistsError,
    BusyError,
    LdmError,
    NotFoundError,
    OpPrereqError,
    StateError,
    UsageError,
)
from ldoms.model.domain import DomainState, Vdisk
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, Request, lookup, run
from ldoms.ops.common import DR_FIRST_NOTICE, DR_NOTICE

# ---------------------------------------------------------------- helpers


def served() -> Machine:
    return apply(world(), "add-vds primary-vds0 primary", "add-vdsdev /ldoms/disk1 vol1@primary-vds0")


# ---------------------------------------------------------------- grammar
@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("add-vdiskserver", "add-vds"),
        ("rm-vds", "remove-vds"),
        ("rm-vdiskserver", "remove-vds"),
        ("add-vdiskserverdevice", "add-vdsdev"),
        ("set-vdiskserverdevice", "set-vdsdev"),
        ("rm-vdsdev", "remove-vdsdev"),
        ("remove-vdiskserverdevice", "remove-vdsdev"),
        ("rm-vdisk", "remove-vdisk"),
    ],
)
def test_aliases(alias: str, canonical: str) -> None:
    assert lookup(alias).spec.name == canonical


@pytest.mark.parametrize(
    "line",
    [
        "add-vds primary-vds0",  # missing ldom
        "add-vds 0bad primary",  # name must start with a letter
        "add-vds -f primary-vds0 primary",  # no -f on add-vds
        "add-vdsdev /a vol1",  # no @service
        "add-vdsdev /a @primary-vds0",
        "add-vdsdev /a vol1@a@b",
        "add-vdsdev options=rw /a vol1@primary-vds0",
        "add-vdsdev mpgroup=9x /a vol1@primary-vds0",
        "add-vdsdev options=ro options=slice /a vol1@primary-vds0",
        "add-vdsdev bogus=1 /a vol1@primary-vds0",
        "set-vdsdev vol1@primary-vds0",  # nothing to set
        "add-vdisk timeout=-1 vdisk1 vol1@primary-vds0 ldg1",
        "add-vdisk id=x vdisk1 vol1@primary-vds0 ldg1",
        "add-vdisk vdisk1 vol1 ldg1",
        "set-vdisk vdisk1 ldg1",
        "set-vdisk volume=nothing vdisk1 ldg1",
        "remove-vdisk vdisk1",
    ],
)
def test_usage_errors(line: str) -> None:
    with pytest.raises(UsageError):
        do(served(), line)


def test_backend_with_whitespace_is_refused() -> None:
    r = Request(verb="add-vdsdev", operands=("/ldoms/my disk", "vol2@primary-vds0"))
    with pytest.raises(UsageError, match="letters, numbers or punctuation"):
        run(served(), r, OpContext(now=0.0))


# ---------------------------------------------------------------- vds
def test_add_vds_to_active_control_domain_is_immediate() -> None:
    res = do(world(), "add-vds primary-vds0 primary")
    primary = res.machine.domain("primary")
    assert [v.name for v in primary.config.vds] == ["primary-vds0"]
    assert primary.pending is None and res.messages == ()


def test_service_names_are_unique_on_the_host_across_kinds() -> None:
    m = apply(served(), "add-vcc port-range=5000-5100 primary-vcc0 primary")
    with pytest.raises(AlreadyExistsError, match="primary-vds0 already exists"):
        do(m, "add-vds primary-vds0 ldg1")
    with pytest.raises(AlreadyExistsError, match="primary-vcc0 already exists"):
        do(m, "add-vds primary-vcc0 primary")


def test_add_vds_to_missing_domain() -> None:
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        do(world(), "add-vds vds9 nosuch")


def test_add_vds_refused_on_migrating_owner() -> None:
    with pytest.raises(BusyError, match="ldg1 is being migrated"):
        do(world(), "add-vds vds1 ldg1", OpContext(now=0.0, migrating={"ldg1": "to host2"}))


def test_services_added_during_delayed_reconfig_survive_the_reboot() -> None:
    m = apply(served(), "add-vdisk vdisk9 vol1@primary-vds0 primary")  # starts a delayed reconfiguration
    assert m.domain("primary").pending is not None
    m = apply(m, "add-vds primary-vds1 primary")
    primary = m.domain("primary")
    assert [v.name for v in primary.config.vds] == ["primary-vds0", "primary-vds1"]
    assert primary.pending is not None
    assert [v.name for v in primary.pending.vds] == ["primary-vds0", "primary-vds1"]


def test_service_on_guest_refused_during_control_delayed_reconfig() -> None:
    m = apply(served(), "add-vdisk vdisk9 vol1@primary-vds0 primary")
    with pytest.raises(BusyError, match="delayed reconfiguration"):
        do(m, "add-vds ldg1-vds0 ldg1")


def test_remove_vds() -> None:
    m = apply(served(), "remove-vds primary-vds0")
    assert m.domain("primary").config.vds == ()


def test_remove_missing_vds() -> None:
    with pytest.raises(NotFoundError, match="nosuch does not exist"):
        do(served(), "rm-vds nosuch")


def test_remove_vds_names_its_users_and_f_spares_bound_ones() -> None:
    m = apply(served(), "add-vdisk vdisk1 vol1@primary-vds0 ldg1")
    with pytest.raises(OpPrereqError, match="primary-vds0 is attached to vdisk vdisk1 in LDom ldg1"):
        do(m, "rm-vds primary-vds0")
    forced = apply(m, "rm-vds -f primary-vds0")
    assert forced.domain("primary").config.vds == ()
    assert forced.domain("ldg1").config.vdisks[0].name == "vdisk1"  # dangling: fails at bind
    bound = with_state(m, "ldg1", DomainState.BOUND)
    with pytest.raises(OpPrereqError, match="bound or active"):
        do(bound, "rm-vds -f primary-vds0")


# ---------------------------------------------------------------- vdsdev
def test_add_vdsdev_with_options_and_mpgroup() -> None:
    m = apply(served(), "add-vdsdev options=excl,ro,slice mpgroup=mp1 /dev/dsk/c0t1d0s2 vol2@primary-vds0")
    vol = m.domain("primary").config.vds[0].volumes[1]
    assert (vol.name, vol.backend, vol.options, vol.mpgroup) == (
        "vol2",
        "/dev/dsk/c0t1d0s2",
        ("ro", "slice", "excl"),
        "mp1",
    )


def test_add_vdsdev_duplicate_volume_already_exists() -> None:
    with pytest.raises(AlreadyExistsError, match="vol1@primary-vds0 already exists"):
        do(served(), "add-vdsdev /ldoms/other vol1@primary-vds0")


def test_add_vdsdev_to_missing_vds() -> None:
    with pytest.raises(NotFoundError, match="Virtual disk server nosuch does not exist"):
        do(served(), "add-vdsdev /a vol1@nosuch")


def test_add_vdsdev_to_a_vsw_is_not_a_vds() -> None:
    m = apply(served(), "add-vsw primary-vsw0 primary")
    with pytest.raises(NotFoundError, match="Virtual disk server primary-vsw0 does not exist"):
        do(m, "add-vdsdev /a vol1@primary-vsw0")


def test_backend_exported_twice_but_not_exclusively() -> None:
    m = apply(served(), "add-vdsdev /ldoms/disk1 vol1b@primary-vds0")  # allowed (1.3 guide)
    assert len(m.domain("primary").config.vds[0].volumes) == 2
    with pytest.raises(OpPrereqError, match="cannot use the excl option"):
        do(m, "add-vdsdev options=excl /ldoms/disk1 vol1c@primary-vds0")
    forced = apply(m, "add-vdsdev -f options=excl /ldoms/disk1 vol1c@primary-vds0")
    assert len(forced.domain("primary").config.vds[0].volumes) == 3
    excl = apply(world(), "add-vds primary-vds0 primary", "add-vdsdev options=excl /dev/x v1@primary-vds0")
    with pytest.raises(OpPrereqError, match="already exported as v1@primary-vds0"):
        do(excl, "add-vdsdev /dev/x v2@primary-vds0")


def test_set_vdsdev_changes_and_clears() -> None:
    m = apply(served(), "set-vdsdev options=ro,slice mpgroup=mp vol1@primary-vds0")
    vol = m.domain("primary").config.vds[0].volumes[0]
    assert (vol.options, vol.mpgroup) == (("ro", "slice"), "mp")
    m = apply(m, "set-vdsdev options= vol1@primary-vds0")
    vol = m.domain("primary").config.vds[0].volumes[0]
    assert (vol.options, vol.mpgroup) == ((), "mp")
    m = apply(m, "set-vdsdev mpgroup= vol1@primary-vds0")
    assert m.domain("primary").config.vds[0].volumes[0].mpgroup == ""


def test_set_vdsdev_errors() -> None:
    with pytest.raises(NotFoundError, match="vol9@primary-vds0 does not exist"):
        do(served(), "set-vdsdev options=ro vol9@primary-vds0")
    m = apply(served(), "add-vdsdev /ldoms/disk1 vol1b@primary-vds0")
    with pytest.raises(OpPrereqError, match="cannot use the excl option"):
        do(m, "set-vdsdev options=excl vol1@primary-vds0")


def test_remove_vdsdev() -> None:
    m = apply(served(), "rm-vdsdev vol1@primary-vds0")
    assert m.domain("primary").config.vds[0].volumes == ()


def test_remove_missing_vdsdev_does_not_exist() -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        do(served(), "rm-vdsdev vol9@primary-vds0")
    with pytest.raises(NotFoundError, match="does not exist"):
        do(served(), "rm-vdsdev vol1@nosuch")


def test_remove_vdsdev_in_use_is_attached() -> None:
    m = apply(served(), "add-vdisk vdisk1 vol1@primary-vds0 ldg1")
    with pytest.raises(
        OpPrereqError, match="vol1@primary-vds0 is attached to vdisk vdisk1 in LDom ldg1"
    ) as e:
        do(m, "rm-vdsdev vol1@primary-vds0")
    assert e.value.code == "in-use"
    forced = apply(m, "rm-vdsdev -f vol1@primary-vds0")  # ldg1 is inactive
    assert forced.domain("primary").config.vds[0].volumes == ()
    active = with_state(m, "ldg1", DomainState.ACTIVE)
    with pytest.raises(
        OpPrereqError, match="is attached to vdisk vdisk1 in LDom ldg1, which is bound or active"
    ):
        do(active, "rm-vdsdev -f vol1@primary-vds0")


def test_remove_vdsdev_used_by_migrating_domain() -> None:
    m = apply(served(), "add-vdisk vdisk1 vol1@primary-vds0 ldg1")
    with pytest.raises(BusyError, match="ldg1 is being migrated"):
        do(m, "rm-vdsdev -f vol1@primary-vds0", OpContext(now=0.0, migrating={"ldg1": "to host2"}))


# ---------------------------------------------------------------- vdisk
def test_add_vdisk_to_inactive_guest_allocates_lowest_free_id() -> None:
    m = apply(
        served(),
        "add-vdsdev /ldoms/disk2 vol2@primary-vds0",
        "add-vdsdev /ldoms/disk3 vol3@primary-vds0",
        "add-vdisk id=1 vdisk1 vol1@primary-vds0 ldg1",
        "add-vdisk timeout=30 vdisk2 vol2@primary-vds0 ldg1",
        "add-vdisk vdisk3 vol3@primary-vds0 ldg1",
    )
    disks = m.domain("ldg1").config.vdisks
    assert disks == (
        Vdisk(name="vdisk1", volume="vol1", service="primary-vds0", timeout=0, id=1),
        Vdisk(name="vdisk2", volume="vol2", service="primary-vds0", timeout=30, id=0),
        Vdisk(name="vdisk3", volume="vol3", service="primary-vds0", timeout=0, id=2),
    )


def test_add_vdisk_errors() -> None:
    m = apply(
        served(), "add-vdsdev /ldoms/disk2 vol2@primary-vds0", "add-vdisk vdisk1 vol1@primary-vds0 ldg1"
    )
    with pytest.raises(AlreadyExistsError, match="Vdisk vdisk1 already exists in LDom ldg1"):
        do(m, "add-vdisk vdisk1 vol2@primary-vds0 ldg1")
    with pytest.raises(NotFoundError, match="vol9@primary-vds0 does not exist"):
        do(m, "add-vdisk vdisk2 vol9@primary-vds0 ldg1")
    with pytest.raises(NotFoundError, match="Virtual disk server vds9 does not exist"):
        do(m, "add-vdisk vdisk2 vol2@vds9 ldg1")
    with pytest.raises(OpPrereqError, match="already attached to vdisk vdisk1 in LDom ldg1"):
        do(m, "add-vdisk vdisk1 vol1@primary-vds0 ldg2")
    with pytest.raises(AlreadyExistsError, match=r"disk@0 already exists in LDom ldg1 \(vdisk vdisk1\)"):
        do(m, "add-vdisk id=0 vdisk2 vol2@primary-vds0 ldg1")
    with pytest.raises(NotFoundError, match="LDom ldg9 not found"):
        do(m, "add-vdisk vdisk2 vol2@primary-vds0 ldg9")


def test_add_vdisk_to_active_guest_is_dynamic() -> None:
    m = with_state(served(), "ldg1", DomainState.ACTIVE)
    res = do(m, "add-vdisk vdisk1 vol1@primary-vds0 ldg1")
    ldg1 = res.machine.domain("ldg1")
    assert ldg1.config.vdisks[0].name == "vdisk1" and ldg1.pending is None and res.messages == ()


def test_vdisk_on_control_domain_is_delayed_reconfiguration() -> None:
    m = apply(served(), "add-vdsdev /ldoms/disk2 vol2@primary-vds0")
    first = do(m, "add-vdisk vdisk1 vol1@primary-vds0 primary")
    primary = first.machine.domain("primary")
    assert first.messages == (DR_FIRST_NOTICE,)
    assert primary.config.vdisks == () and primary.pending is not None
    assert [d.name for d in primary.pending.vdisks] == ["vdisk1"]
    assert not primary.pending_vio_removed
    second = do(first.machine, "add-vdisk vdisk2 vol2@primary-vds0 primary")
    assert second.messages == (DR_NOTICE,)
    assert [d.id for d in second.machine.domain("primary").pending.vdisks] == [0, 1]  # type: ignore[union-attr]
    removed = do(second.machine, "rm-vdisk vdisk1 primary")
    primary = removed.machine.domain("primary")
    assert removed.messages == (DR_NOTICE,)
    assert [d.name for d in primary.pending.vdisks] == ["vdisk2"]  # type: ignore[union-attr]
    assert primary.pending_vio_removed


def test_vdisk_on_guest_refused_during_control_delayed_reconfig() -> None:
    m = apply(
        served(), "add-vdsdev /ldoms/disk2 vol2@primary-vds0", "add-vdisk vdisk1 vol1@primary-vds0 primary"
    )
    with pytest.raises(BusyError, match="configuration changes for LDom ldg1 are disabled"):
        do(m, "add-vdisk vdisk2 vol2@primary-vds0 ldg1")


def test_vdisk_refused_on_migrating_domain() -> None:
    with pytest.raises(BusyError, match="being migrated"):
        do(served(), "add-vdisk vdisk1 vol1@primary-vds0 ldg1", OpContext(now=0.0, migrating={"ldg1": "x"}))


def test_set_vdisk() -> None:
    m = apply(
        served(),
        "add-vdsdev /ldoms/disk2 vol2@primary-vds0",
        "add-vdisk vdisk1 vol1@primary-vds0 ldg1",
        "set-vdisk timeout=10 volume=vol2@primary-vds0 vdisk1 ldg1",
    )
    vd = m.domain("ldg1").config.vdisks[0]
    assert (vd.timeout, vd.volume, vd.service, vd.id) == (10, "vol2", "primary-vds0", 0)
    m = apply(m, "set-vdisk volume=vol2@primary-vds0 vdisk1 ldg1")  # re-pointing to itself is fine


def test_set_vdisk_errors() -> None:
    m = apply(
        served(),
        "add-vdsdev /ldoms/disk2 vol2@primary-vds0",
        "add-vdisk vdisk1 vol1@primary-vds0 ldg1",
        "add-vdisk vdisk2 vol2@primary-vds0 ldg2",
    )
    with pytest.raises(NotFoundError, match="Vdisk vdisk9 does not exist in LDom ldg1"):
        do(m, "set-vdisk timeout=1 vdisk9 ldg1")
    with pytest.raises(NotFoundError, match="vol9@primary-vds0 does not exist"):
        do(m, "set-vdisk volume=vol9@primary-vds0 vdisk1 ldg1")
    with pytest.raises(OpPrereqError, match="already attached to vdisk vdisk2 in LDom ldg2"):
        do(m, "set-vdisk volume=vol2@primary-vds0 vdisk1 ldg1")


def test_remove_vdisk_from_guest() -> None:
    m = apply(served(), "add-vdisk vdisk1 vol1@primary-vds0 ldg1")
    for line in ("rm-vdisk vdisk1 ldg1", "remove-vdisk -f vdisk1 ldg1"):
        res = do(m, line)
        ldg1 = res.machine.domain("ldg1")
        assert ldg1.config.vdisks == () and not ldg1.pending_vio_removed
    active = with_state(m, "ldg1", DomainState.ACTIVE)
    assert apply(active, "rm-vdisk vdisk1 ldg1").domain("ldg1").config.vdisks == ()


def test_remove_missing_vdisk() -> None:
    with pytest.raises(NotFoundError, match="Vdisk vdisk1 does not exist in LDom ldg1"):
        do(served(), "rm-vdisk vdisk1 ldg1")


def test_errors_leave_the_machine_unchanged() -> None:
    m = served()
    with pytest.raises(LdmError):
        do(m, "add-vdisk vdisk1 vol9@primary-vds0 ldg1")
    assert m.domain("ldg1").config.vdisks == ()


def test_state_error_is_not_raised_for_bound_guest_vdisk() -> None:
    m = with_state(served(), "ldg1", DomainState.BOUND)
    try:
        apply(m, "add-vdisk vdisk1 vol1@primary-vds0 ldg1")
    except StateError as e:  # pragma: no cover - documents the rule
        pytest.fail(f"virtual I/O DR should accept a bound guest: {e}")
