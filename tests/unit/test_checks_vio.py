"""Virtual I/O rules: vds services and volumes, vdsdev options, vsw, vcc ports, console group, MACs, NIU."""

from __future__ import annotations

from dataclasses import replace

from test_checks_scenario import GUEST, VNET_MAC, World, other_domain

from ldoms.checks import Code, Severity
from ldoms.checks import vio as rules
from ldoms.model.domain import Bindings, DomainState, Vcc, Vcons, Vnet, Vsw
from ldoms.model.platform import Niu


def msgs(it: object) -> list[str]:
    return [f.message for f in it]  # type: ignore[attr-defined]


def test_vdisks_pass() -> None:
    assert list(rules.check_vdisks(*World().facts())) == []


def test_vds_service_missing() -> None:
    w = World()
    w.tgt_services = replace(w.tgt_services, vds=w.tgt_services.vds[:1])
    out = list(rules.check_vdisks(*w.facts()))
    assert msgs(out) == [
        "Service aux-vds0 not found on dt212-239: vdisk vdisk3 of LDom ldg1 needs volume vol3@aux-vds0"
    ]
    assert out[0].code == Code.VDS_SERVICE


def test_vdisk_volume_missing() -> None:
    w = World()
    first = w.tgt_services.vds[0]
    w.tgt_services = replace(
        w.tgt_services, vds=(replace(first, volumes=first.volumes[:1]), *w.tgt_services.vds[1:])
    )
    out = list(rules.check_vdisks(*w.facts()))
    assert msgs(out) == [
        "Volume vol2@primary-vds0 does not exist on dt212-239: vdisk vdisk2 of LDom ldg1 needs the same "
        "volume and service names on the target"
    ]
    assert out[0].code == Code.VDISK_VOLUME


def _edit_volume(w: World, name: str, **changes: object) -> None:
    vds = []
    for s in w.tgt_services.vds:
        vols = tuple(replace(v, **changes) if v.name == name else v for v in s.volumes)  # type: ignore[arg-type]
        vds.append(replace(s, volumes=vols))
    w.tgt_services = replace(w.tgt_services, vds=tuple(vds))


def test_vdsdev_options_differ() -> None:
    w = World()
    _edit_volume(w, "vol3", options=("ro", "excl"))
    out = list(rules.check_vdsdev_options(*w.facts()))
    assert msgs(out) == [
        "Volume vol3@aux-vds0 has options=ro,excl mpgroup=none on dt212-239 but options=excl mpgroup=none on "
        "src-host: an active migration needs equal vdsdev options and mpgroup"
    ]
    assert out[0].code == Code.VDSDEV_OPTIONS


def test_vdsdev_mpgroup_differs() -> None:
    w = World()
    _edit_volume(w, "vol2", mpgroup="")
    assert msgs(rules.check_vdsdev_options(*w.facts())) == [
        "Volume vol2@primary-vds0 has options=none mpgroup=none on dt212-239 but options=none mpgroup=mp1 on "
        "src-host: an active migration needs equal vdsdev options and mpgroup"
    ]


def test_vdsdev_options_pass_and_missing_volume_left_to_vdisks_rule() -> None:
    assert list(rules.check_vdsdev_options(*World().facts())) == []
    w = World()
    w.tgt_services = replace(w.tgt_services, vds=())
    assert list(rules.check_vdsdev_options(*w.facts())) == []


def test_vsw() -> None:
    assert list(rules.check_vsw(*World().facts())) == []
    w = World()
    w.tgt_services = replace(w.tgt_services, vsw=(Vsw(name="switch-x", mac=0x0003BA000102),))
    out = list(rules.check_vsw(*w.facts()))
    assert msgs(out) == [
        "Virtual switch primary-vsw0 not found on dt212-239: vnet vnet1 of LDom ldg1 needs a vsw with the "
        "same name on the target"
    ]
    assert out[0].code == Code.VSW


def test_vcc_missing() -> None:
    w = World()
    w.tgt_services = replace(w.tgt_services, vcc=())
    out = list(rules.check_vcc(*w.facts()))
    assert msgs(out) == [
        "No virtual console concentrator on dt212-239: LDom ldg1 needs a vcc with a free port"
    ]
    assert out[0].code == Code.VCC_PORT


def test_vcc_all_ports_taken() -> None:
    w = World()
    w.tgt_services = replace(w.tgt_services, vcc=(Vcc(name="primary-vcc0", port_min=5000, port_max=5000),))
    holder = replace(
        other_domain("ldg7", 0x00144FF80300),
        state=DomainState.BOUND,
        bindings=Bindings(console_port=5000, console_service="primary-vcc0"),
    )
    w.tgt_domains.append(holder)
    assert msgs(rules.check_vcc(*w.facts())) == [
        "No free console port on dt212-239 (primary-vcc0 5000-5000 all in use): LDom ldg1 needs a vcc with a "
        "free port"
    ]
    w.tgt_services = replace(w.tgt_services, vcc=(Vcc(name="primary-vcc0", port_min=5000, port_max=5001),))
    assert list(rules.check_vcc(*w.facts())) == []


def test_console_group_clash() -> None:
    w = World()
    w.tgt_domains.append(other_domain("ldg9", 0x00144FF80200, vcons=Vcons(group=GUEST)))
    out = list(rules.check_console_group(*w.facts()))
    assert msgs(out) == [
        "Console group ldg1 is already used by LDom ldg9 on dt212-239: the migrated domain's console group "
        "is its name"
    ]
    assert out[0].code == Code.CONSOLE_GROUP
    # migrating under another name avoids the clash
    w.target_name = "ldg2"
    assert list(rules.check_console_group(*w.facts())) == []


def test_console_group_default_is_the_domain_name() -> None:
    w = World()
    w.target_name = "ldg9"
    w.tgt_domains.append(other_domain("ldg8", 0x00144FF80200, vcons=Vcons(group="ldg9")))
    assert [f.code for f in rules.check_console_group(*w.facts())] == [Code.CONSOLE_GROUP]
    assert list(rules.check_console_group(*World().facts())) == []


def test_mac_collisions_with_domain_vnet_and_vsw() -> None:
    w = World()
    w.tgt_domains.append(other_domain("ldg8", VNET_MAC))
    w.tgt_domains.append(
        other_domain(
            "ldg7", 0x00144FF80300, vnets=(Vnet(name="net0", service="primary-vsw0", mac=0x00144FF80000),)
        )
    )
    out = list(rules.check_mac_collisions(*w.facts()))
    assert msgs(out) == [
        "MAC address 00:14:4f:f8:00:00 of LDom ldg1 is already used by vnet net0 of LDom ldg7 on dt212-239",
        "MAC address 00:14:4f:f8:00:01 of vnet vnet1 of LDom ldg1 is already used by LDom ldg8 on dt212-239",
    ]
    w = World()
    w.tgt_services = replace(w.tgt_services, vsw=(Vsw(name="primary-vsw0", mac=VNET_MAC),))
    assert msgs(rules.check_mac_collisions(*w.facts())) == [
        "MAC address 00:14:4f:f8:00:01 of vnet vnet1 of LDom ldg1 is already used by vsw primary-vsw0 of "
        "LDom primary on dt212-239"
    ]
    assert list(rules.check_mac_collisions(*World().facts())) == []


def test_niu_hybrid_is_only_a_warning() -> None:
    w = World()
    vnets = (replace(w.guest.config.vnets[0], hybrid=True),)
    w.guest = replace(w.guest, config=replace(w.guest.config, vnets=vnets))
    out = list(rules.check_niu_hybrid(*w.facts()))
    assert [(f.message, f.severity) for f in out] == [
        (
            "vnet vnet1 of LDom ldg1 asks for NIU hybrid I/O but dt212-239 has no NIU: the constraint is "
            "kept but not fulfilled",
            Severity.WARNING,
        )
    ]
    w.tgt_platform = replace(w.tgt_platform, nius=(Niu(dev="niu@80", pseudonym="niu_0"),))
    assert list(rules.check_niu_hybrid(*w.facts())) == []
    assert list(rules.check_niu_hybrid(*World().facts())) == []
