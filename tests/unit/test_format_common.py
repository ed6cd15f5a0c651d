"""Unit tests of the listing helpers: flags, columns, summary values, version profiles, every error path."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ldoms.cli.format.common import (
    LIST_HEADER,
    cols,
    cons_text,
    domain_record,
    flags_long,
    flags_short,
    memory_bytes,
    parseable_version,
    short_row,
    state_text,
    uptime_seconds,
    util_parseable,
    vcpu_count,
)
from ldoms.cli.format.devices import format_devices
from ldoms.cli.format.domains import format_bindings, format_list
from ldoms.cli.format.misc import format_spconfig, format_variables, format_version, format_version_view
from ldoms.cli.format.services import format_services
from ldoms.errors import NotFoundError, UsageError
from ldoms.model.domain import (
    Bindings,
    Domain,
    DomainConfig,
    DomainState,
    MemBinding,
    MigrationRole,
    NamedMblock,
    Vcc,
    Vcons,
    Vds,
    Vnet,
    Vsw,
)
from ldoms.model.machine import Machine, SpConfig
from ldoms.model.platform import MemRange, Platform
from ldoms.model.view import HostView, MigrationStatus
from ldoms.units import G, M

NOW = 1_000_000.0


def _platform() -> Platform:
    return Platform(
        name="t",
        model="T5120",
        cpu_type="UltraSPARC T2",
        cpu_mhz=1165,
        sockets=1,
        cores_per_socket=4,
        strands_per_core=8,
        memory=(MemRange(pa=0, size=128 * M, reserved=True), MemRange(pa=128 * M, size=4 * G)),
        hw_max_pagesize=256 * M,
        hypervisor_version="1.9.1",
        hypervisor_date="2010/05/18 12:00",
        obp_version="4.31.4",
        obp_date="2010/05/13 09:11",
    )


def _cfg(name: str = "ldg1", **kw: object) -> DomainConfig:
    return DomainConfig(name=name, uuid="u", hostid=0x1234, mac=0x00144FF80001, **kw)  # type: ignore[arg-type]


def _bindings(**kw: object) -> Bindings:
    kw.setdefault("strands", (8, 9))
    kw.setdefault("mblocks", (MemBinding(ra=0x8000000, pa=0x48000000, size=G),))
    return Bindings(**kw)  # type: ignore[arg-type]


def _view(*domains: Domain, **kw: object) -> HostView:
    m = Machine(host_name="h", platform=_platform(), domains=domains)
    return HostView(machine=m, now=NOW, **kw)  # type: ignore[arg-type]


SERVICES = {"vcc": (Vcc(name="primary-vcc0", port_min=5000, port_max=5100),)}


# ---------------------------------------------------------------- flags
def test_flags_always_six_columns() -> None:
    assert flags_short(Domain(config=_cfg())) == "------"
    assert flags_long(Domain(config=_cfg())) == ""


def test_flags_control_service_domain() -> None:
    dom = Domain(
        config=_cfg("primary", **SERVICES),
        state=DomainState.ACTIVE,
        bindings=_bindings(),
        softstate="Solaris running",
    )
    assert flags_short(dom) == "-n-cv-"
    assert flags_long(dom) == "normal,control,vio-service"


def test_flags_transition_when_guest_not_running_solaris() -> None:
    dom = Domain(config=_cfg(), state=DomainState.ACTIVE, bindings=_bindings(), softstate="OpenBoot Running")
    assert flags_short(dom) == "-t----"
    assert flags_long(dom) == "transition"


def test_flags_active_without_softstate_is_normal() -> None:
    dom = Domain(config=_cfg(), state=DomainState.ACTIVE, bindings=_bindings())
    assert flags_short(dom) == "-n----"


def test_flags_delayed_reconfiguration() -> None:
    dom = Domain(
        config=_cfg("primary"), state=DomainState.ACTIVE, bindings=_bindings(), pending=_cfg("primary")
    )
    assert flags_short(dom) == "-ndc--"
    assert flags_long(dom) == "normal,delayed-reconfig,control"


@pytest.mark.parametrize(
    ("role", "letter", "word"),
    [
        (MigrationRole.SOURCE, "s", "source"),
        (MigrationRole.TARGET, "t", "target"),
        (MigrationRole.ERROR, "e", "error"),
    ],
)
def test_flags_migration_column(role: MigrationRole, letter: str, word: str) -> None:
    dom = Domain(config=_cfg(), state=DomainState.BOUND, bindings=_bindings(), migration=role)
    assert flags_short(dom) == "-----" + letter
    assert flags_long(dom) == word


# ---------------------------------------------------------------- columns and summary values
def test_cols_pads_and_keeps_a_space_after_long_values() -> None:
    assert cols(("ab", 5), last="x") == "ab   x"
    assert cols(("abcdefgh", 5), last="x") == "abcdefgh x"
    assert cols(("ab", 5), last="", indent="  ") == "  ab"


def test_short_row_widths_match_header() -> None:
    dom = Domain(
        config=_cfg(),
        state=DomainState.ACTIVE,
        bindings=_bindings(console_port=5000),
        started_at=NOW - 59,
        softstate="Solaris running",
    )
    row = short_row(_view(dom, util={"ldg1": 100.0}), dom)
    assert row == "ldg1             active     -n----  5000    2     1G       100%  59s"
    for title in ("STATE", "FLAGS", "CONS", "VCPU", "MEMORY"):
        assert row[LIST_HEADER.index(title) - 1] == " "


def test_suspended_source_state() -> None:
    dom = Domain(
        config=_cfg(), state=DomainState.ACTIVE, bindings=_bindings(), migration=MigrationRole.SOURCE
    )
    running = MigrationStatus(domain="ldg1", role="source", peer="h2", progress=90)
    assert state_text(_view(dom, migrations=(running,)), dom) == "active"
    final = replace(running, suspended=True)
    v = _view(dom, migrations=(final,))
    assert state_text(v, dom) == "suspended"
    assert short_row(v, dom).startswith("ldg1             suspended  -n---s")
    assert "|state=suspended|" in domain_record(v, dom, long=False)


def test_target_shell_counts_from_constraints_and_blank_console() -> None:
    # SPEC 7.18: VCPU and MEMORY from the constraints, CONS blank until a console is allocated, UTIL blank.
    cfg = _cfg(vcpus=2, whole_core=True, memory=2 * G)
    dom = Domain(config=cfg, state=DomainState.BOUND, bindings=Bindings(), migration=MigrationRole.TARGET)
    v = _view(dom)
    assert vcpu_count(v.machine, dom) == 16  # two whole cores of eight strands
    assert memory_bytes(dom) == 2 * G
    assert cons_text(v, dom) == ""
    assert short_row(v, dom) == "ldg1             bound      -----t          16    2G"


def test_inactive_memory_from_named_mblocks() -> None:
    blocks = (NamedMblock(pa=0x100000000, size=G), NamedMblock(pa=0x200000000, size=G))
    dom = Domain(config=_cfg(mblocks=blocks))
    assert memory_bytes(dom) == 2 * G


def test_inactive_domain_holds_nothing_even_with_stale_bindings() -> None:
    dom = Domain(config=_cfg(vcpus=3, memory=G), bindings=_bindings(console_port=5005))
    v = _view(dom)
    assert vcpu_count(v.machine, dom) == 3
    assert cons_text(v, dom) == ""


def test_uptime_unknown_start_is_zero_and_never_negative() -> None:
    dom = Domain(config=_cfg(), state=DomainState.ACTIVE, bindings=_bindings())
    assert uptime_seconds(_view(dom), dom) == 0
    later = replace(dom, started_at=NOW + 30)
    assert uptime_seconds(_view(later), later) == 0
    assert uptime_seconds(_view(dom), replace(dom, state=DomainState.BOUND)) is None


def test_util_parseable_is_a_bare_number() -> None:
    assert util_parseable(None) == ""
    assert util_parseable(0.6) == "0.6"
    assert util_parseable(29.4) == "29"


@pytest.mark.parametrize(
    ("version", "line", "cons"),
    [
        ("1.2", "VERSION 1.0", "SP"),
        ("1.3", "VERSION 1.4", "SP"),
        ("2.1", "VERSION 1.5", "SP"),
        ("3.2", "VERSION 1.6", "UART"),
        ("odd", "VERSION 1.0", "SP"),
    ],
)
def test_version_profiles(version: str, line: str, cons: str) -> None:
    primary = Domain(config=_cfg("primary"), state=DomainState.ACTIVE, bindings=_bindings())
    v = _view(primary, ldm_version=version)
    assert parseable_version(v) == line
    assert cons_text(v, primary) == cons


# ---------------------------------------------------------------- error paths
def test_list_unknown_domain() -> None:
    v = _view(Domain(config=_cfg()))
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        format_list(v, ["ldg1", "nosuch"])
    with pytest.raises(NotFoundError, match="not found"):
        format_bindings(v, ["nosuch"])
    with pytest.raises(NotFoundError, match="not found"):
        format_services(v, ["nosuch"])


def test_list_invalid_output_format() -> None:
    with pytest.raises(UsageError, match=r"Invalid output format 'resmgmt'.*console, cpu, crypto"):
        format_list(_view(Domain(config=_cfg())), [], sections=["cpu", "resmgmt"])


def test_devices_invalid_class() -> None:
    with pytest.raises(UsageError, match=r"Invalid device class 'disk': expected cpu, crypto"):
        format_devices(_view(), ["cpu", "disk"])


def test_list_variable_errors() -> None:
    v = _view(Domain(config=_cfg(variables=(("auto-boot?", "false"),))))
    with pytest.raises(NotFoundError, match="Variable boot-device not found in LDom ldg1"):
        format_variables(v, "ldg1", ["auto-boot?", "boot-device"])
    with pytest.raises(NotFoundError, match="LDom ldg9 not found"):
        format_variables(v, "ldg9", [])


# ---------------------------------------------------------------- small listings
def test_list_variable_all_and_pending() -> None:
    dom = Domain(config=_cfg(variables=(("a", "1"), ("b", "two words"))))
    assert format_variables(_view(dom), "ldg1", []) == "a=1\nb=two words\n"
    assert format_variables(_view(dom), "ldg1", ["b", "a"]) == "b=two words\na=1\n"
    # During a delayed reconfiguration the newest values are those pending.
    pend = replace(dom, pending=_cfg(variables=(("a", "9"),)))
    assert format_variables(_view(pend), "ldg1", ["a"]) == "a=9\n"


def _machine(current: str, next_: str, modified: bool) -> Machine:
    saved = (SpConfig(name="cfg1"), SpConfig(name="cfg2"))
    return Machine(
        host_name="h",
        platform=_platform(),
        spconfigs=saved,
        current_spconfig=current,
        next_spconfig=next_,
        spconfig_modified=modified,
    )


def test_spconfig_markers() -> None:
    assert format_spconfig(_machine("factory-default", "factory-default", False)) == (
        "factory-default [current]\ncfg1\ncfg2\n"
    )
    assert format_spconfig(_machine("cfg1", "cfg1", False)) == "factory-default\ncfg1 [current]\ncfg2\n"
    # After a change of the running configuration, [current] becomes [next poweron].
    assert format_spconfig(_machine("cfg1", "cfg1", True)) == "factory-default\ncfg1 [next poweron]\ncfg2\n"
    # set-spconfig chose another configuration for the next power-on.
    both = "factory-default\ncfg1 [current]\ncfg2 [next poweron]\n"
    assert format_spconfig(_machine("cfg1", "cfg2", False)) == both
    assert format_spconfig(_machine("cfg1", "cfg2", True)) == "factory-default\ncfg1\ncfg2 [next poweron]\n"


def test_version_from_platform_and_view() -> None:
    out = format_version(_platform(), ldm_version="1.3")
    assert "Logical Domain Manager (v 1.3)\n" in out
    assert "   Hypervisor  v. 1.9.1.    @(#)Hypervisor 1.9.1. 2010/05/18 12:00\n" in out
    assert "   OpenBoot    v. 4.31.4.   @(#)OBP 4.31.4. 2010/05/13 09:11\n" in out
    assert format_version_view(_view(ldm_version="1.3")) == out


# ---------------------------------------------------------------- listing shapes
def test_empty_machine_listings() -> None:
    v = _view()
    assert format_list(v, []) == LIST_HEADER + "\n"
    assert format_list(v, [], parseable=True) == "VERSION 1.0\n"
    assert format_list(v, [], long=True) == ""
    assert format_services(v, []) == ""


def test_control_domain_console_in_parseable_long_listing() -> None:
    primary = Domain(config=_cfg("primary", **SERVICES), state=DomainState.ACTIVE, bindings=_bindings())
    out = format_list(_view(primary, ldm_version="3.2"), [], long=True, parseable=True)
    assert out.splitlines()[-1] == "VCONS|type=UART"
    assert "VCONS" not in format_list(_view(primary), [], long=True)


def test_guest_console_before_allocation() -> None:
    dom = Domain(
        config=_cfg(vcons=Vcons(group="grp", service="primary-vcc0")),
        state=DomainState.BOUND,
        bindings=_bindings(),
        migration=MigrationRole.TARGET,
    )
    out = format_list(_view(dom), [], long=True)
    assert out.endswith(
        "VCONS\n    NAME             SERVICE                     PORT\n    grp              primary-vcc0\n"
    )
    assert format_list(_view(dom), [], long=True, parseable=True).endswith(
        "VCONS|group=grp|service=primary-vcc0|port=\n"
    )


def test_vnet_on_unknown_switch_has_no_owner_and_no_vsw_peer() -> None:
    dom = Domain(
        config=_cfg(vnets=(Vnet(name="vnet0", service="gone-vsw", mac=0x00144FF80002),)),
        state=DomainState.BOUND,
        bindings=_bindings(),
    )
    out = format_list(_view(dom), [], long=True)
    assert "    vnet0            gone-vsw                  network@0  00:14:4f:f8:00:02\n" in out
    assert "PEER" not in out


def test_vds_without_volumes_and_vsw_mode() -> None:
    primary = Domain(
        config=_cfg(
            "primary",
            vds=(Vds(name="primary-vds0"),),
            vsw=(Vsw(name="vsw0", mac=0x00144FFB0001, mode="sc", id=3),),
        ),
        state=DomainState.ACTIVE,
        bindings=_bindings(),
    )
    out = format_services(_view(primary), [])
    assert "    primary-vds0\n" in out
    assert "    vsw0             00:14:4f:fb:00:01           switch@3  sc\n" in out
    assert "VSW|name=vsw0|mac-addr=00:14:4f:fb:00:01|net-dev=|dev=switch@3|mode=sc\n" in format_services(
        _view(primary), [], parseable=True
    )


def test_devices_with_nothing_free_omits_sections() -> None:
    platform = _platform()
    everything = Bindings(
        strands=tuple(range(32)),
        maus=(0, 1, 2, 3),
        mblocks=(MemBinding(ra=128 * M, pa=128 * M, size=4 * G),),
    )
    primary = Domain(config=_cfg("primary"), state=DomainState.ACTIVE, bindings=everything)
    v = HostView(machine=Machine(host_name="h", platform=platform, domains=(primary,)), now=NOW)
    assert format_devices(v, []) == ""
    assert format_devices(v, [], parseable=True) == "VERSION 1.0\n"
    head = "MEMORY\n    PA                   SIZE            BOUND\n"
    assert format_devices(v, ["mem"], all=True).startswith(head)
