"""`validate_config`: the rules a domain definition read from outside must follow, each with a message that
names the domain, the object, the value and the rule."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ldoms.errors import UsageError
from ldoms.model.constraints_check import shorten_quoted, validate_config, validate_configs
from ldoms.model.domain import (
    DomainConfig,
    IoAssignment,
    NamedMblock,
    Vcc,
    Vcons,
    Vdisk,
    Vds,
    VdsVolume,
    Vnet,
    Vsw,
)

BASE = DomainConfig(name="ldg1", uuid="", hostid=0, mac=0)
VOL = VdsVolume(name="vol0", backend="/d")
VSW = Vsw(name="vsw0", mac=0)
VNET = Vnet(name="vnet0", service="vsw0", mac=0)
VDISK = Vdisk(name="vdisk0", volume="vol0", service="vds0")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"name": "1ldg"}, "Invalid LDom name '1ldg': a name starts with a letter"),
        ({"name": "l" * 65}, "(at most 64 characters)"),
        ({"name": "ldg1\n"}, "Invalid LDom name 'ldg1\n'"),
        ({"uuid": "1234"}, "LDom ldg1: invalid uuid '1234'"),
        (
            {"hostid": 1 << 32},
            "LDom ldg1: Invalid hostid 4294967296: must be between 0 and 4294967295",
        ),
        ({"mac": 1 << 48}, "LDom ldg1: Invalid MAC address 281474976710656"),
        ({"vcpus": -1}, "LDom ldg1: invalid vcpu count -1: must not be negative"),
        ({"memory": -1}, "invalid memory size -1"),
        (
            {"memory": 1024, "mblocks": (NamedMblock(pa=0, size=2048),)},
            "memory size 1K is not the sum of its",
        ),
        ({"memory": 0, "mblocks": (NamedMblock(pa=0, size=0),)}, "LDom ldg1: invalid memory block 0x0:0"),
        ({"failure_policy": "explode"}, "invalid failure-policy 'explode': expected one of ignore, panic"),
        ({"cpu_arch": "x86"}, "invalid cpu-arch 'x86'"),
        ({"master": ("a", "b", "c", "d", "e")}, "5 master domains given: at most 4 are allowed"),
        ({"master": ("ldg1",)}, "LDom ldg1 cannot be its own master"),
        ({"master": ("a", "a")}, "LDom ldg1: master domain a is defined more than once"),
        ({"master": ("2a",)}, "Invalid master LDom name '2a'"),
        ({"io": (IoAssignment(dev=""),)}, "LDom ldg1: Invalid I/O device: it cannot be empty"),
        ({"io": (IoAssignment(dev="pci@780 "),)}, "leading or trailing spaces are not allowed"),
        ({"io": (IoAssignment(dev="pci|780"),)}, "control characters, '|'"),
        ({"io": (IoAssignment(dev="pci\x00"),)}, "LDom ldg1: Invalid I/O device 'pci\\x00'"),
        ({"io": (IoAssignment(dev="p"), IoAssignment(dev="p"))}, "I/O device p is defined more than once"),
        ({"vds": (Vds(name="-x"),)}, "Invalid vds name '-x'"),
        (
            {"vds": (Vds(name="v", volumes=(replace(VOL, name="a b"),)),)},
            "Invalid volume name in vds v 'a b'",
        ),
        (
            {"vds": (Vds(name="v", volumes=(replace(VOL, backend="/a\nb"),)),)},
            "Invalid backend of volume vol0@v",
        ),
        (
            {"vds": (Vds(name="v", volumes=(replace(VOL, options=("slice", "ro")),)),)},
            "Invalid options 'slice,ro'",
        ),
        (
            {"vds": (Vds(name="v", volumes=(replace(VOL, mpgroup="m p"),)),)},
            "Invalid mpgroup of volume vol0@v",
        ),
        (
            {"vds": (Vds(name="v", volumes=(VOL, VOL)),)},
            "LDom ldg1: vds v: volume vol0 is defined more than once",
        ),
        ({"vds": (Vds(name="v"), Vds(name="v"))}, "LDom ldg1: vds v is defined more than once"),
        ({"vsw": (replace(VSW, name="v w"),)}, "Invalid vsw name 'v w'"),
        ({"vsw": (replace(VSW, mac=-1),)}, "Invalid MAC address of vsw vsw0 -1"),
        ({"vsw": (replace(VSW, net_dev=" e1000g0"),)}, "Invalid net-dev of vsw vsw0"),
        (
            {"vsw": (replace(VSW, default_vlan_id=0),)},
            "Invalid default-vlan-id of vsw vsw0 0: must be between 1",
        ),
        ({"vsw": (replace(VSW, pvid=4095),)}, "Invalid pvid of vsw vsw0 4095"),
        ({"vsw": (replace(VSW, vids=(1, 0)),)}, "Invalid vid of vsw vsw0 0"),
        ({"vsw": (replace(VSW, mtu=1499),)}, "Invalid mtu of vsw vsw0 1499: must be between 1500 and 16000"),
        ({"vsw": (replace(VSW, id=-1),)}, "Invalid id of vsw vsw0 -1"),
        (
            {"vsw": (replace(VSW, mode="routed"),)},
            "Invalid mode 'routed' for vsw vsw0: expected sc or nothing",
        ),
        ({"vsw": (replace(VSW, linkprop="up"),)}, "Invalid linkprop 'up' for vsw vsw0"),
        ({"vsw": (VSW, VSW)}, "LDom ldg1: vsw vsw0 is defined more than once"),
        ({"vcc": (Vcc(name="c", port_min=5100, port_max=5000),)}, "Invalid port-range end of vcc c 5000"),
        (
            {"vcc": (Vcc(name="c", port_min=70000, port_max=70000),)},
            "Invalid port-range start of vcc c 70000",
        ),
        ({"vcc": (Vcc(name="c c", port_min=1, port_max=2),)}, "Invalid vcc name 'c c'"),
        ({"vcc": (Vcc(name="c", port_min=1, port_max=2),) * 2}, "vcc c is defined more than once"),
        ({"vnets": (replace(VNET, name="n@1"),)}, "Invalid vnet name 'n@1'"),
        ({"vnets": (replace(VNET, service=""),)}, "Invalid vsw name of vnet vnet0 ''"),
        ({"vnets": (replace(VNET, mac=1 << 48),)}, "Invalid MAC address of vnet vnet0"),
        ({"vnets": (replace(VNET, pvid=0),)}, "Invalid pvid of vnet vnet0 0"),
        ({"vnets": (replace(VNET, mtu=16001),)}, "Invalid mtu of vnet vnet0 16001"),
        ({"vnets": (replace(VNET, id=-2),)}, "Invalid id of vnet vnet0 -2"),
        ({"vnets": (replace(VNET, linkprop="x"),)}, "Invalid linkprop 'x' for vnet vnet0"),
        ({"vnets": (VNET, VNET)}, "LDom ldg1: vnet vnet0 is defined more than once"),
        ({"vdisks": (replace(VDISK, name="d d"),)}, "Invalid vdisk name 'd d'"),
        ({"vdisks": (replace(VDISK, volume="v@x"),)}, "Invalid volume name of vdisk vdisk0 'v@x'"),
        ({"vdisks": (replace(VDISK, service=""),)}, "Invalid vds name of vdisk vdisk0 ''"),
        ({"vdisks": (replace(VDISK, timeout=-1),)}, "Invalid timeout of vdisk vdisk0 -1"),
        ({"vdisks": (replace(VDISK, id=-1),)}, "Invalid id of vdisk vdisk0 -1"),
        ({"vdisks": (VDISK, VDISK)}, "vdisk vdisk0 is defined more than once"),
        ({"vcons": Vcons(group="g g")}, "LDom ldg1: Invalid console group 'g g'"),
        ({"vcons": Vcons(service="s s")}, "LDom ldg1: Invalid vcc name of the console 's s'"),
        ({"vcons": Vcons(port=65536)}, "LDom ldg1: Invalid console port 65536"),
        ({"variables": (("a b", "1"),)}, "LDom ldg1: invalid variable name 'a b'"),
        ({"variables": (("", "1"),)}, "invalid variable name ''"),
        ({"variables": (("a\x01", "1"),)}, "invalid variable name 'a\\x01'"),
        ({"variables": (("a", "\x02"),)}, "LDom ldg1: variable a: the value contains the character U+0002"),
        ({"variables": (("a", "1"), ("a", "2"))}, "LDom ldg1: variable a is defined more than once"),
    ],
)
def test_rules(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UsageError) as e:
        validate_config(replace(BASE, **changes))
    assert fragment in str(e.value)
    assert str(e.value).startswith("LDom " if "name" not in changes else "Invalid LDom name")


def test_a_full_valid_definition_passes() -> None:
    validate_config(
        replace(
            BASE,
            uuid="C2C3D93B-A3F9-60F6-A45E-F35D55C05FB6",
            hostid=0xFFFFFFFF,
            mac=(1 << 48) - 1,
            memory=2048,
            mblocks=(NamedMblock(pa=0, size=1024), NamedMblock(pa=4096, size=1024)),
            master=("a", "b", "c", "d"),
            io=(IoAssignment(dev="pci@780"),),
            vds=(Vds(name="vds0", volumes=(replace(VOL, options=("ro", "excl"), mpgroup="mp"),)),),
            vsw=(
                replace(VSW, net_dev="e1000g0", vids=(1, 4094), mtu=16000, mode="sc", linkprop="phys-state"),
            ),
            vcc=(Vcc(name="vcc0", port_min=5000, port_max=5000),),
            vnets=(VNET,),
            vdisks=(VDISK,),
            vcons=Vcons(group="g", service="vcc0", port=5000),
            variables=(("nvramrc", "devalias a\n/b\t<&>"), ("use-nvramrc?", "")),
            failure_policy="stop",
            cpu_arch="sparc64-class1",
        )
    )


def test_domain_names_are_unique_across_a_document() -> None:
    with pytest.raises(UsageError, match="LDom ldg1 is defined more than once"):
        validate_configs([BASE, BASE])
    validate_configs([BASE, replace(BASE, name="ldg2")])


def test_shorten_quoted() -> None:
    assert shorten_quoted("value 'short' ok") == "value 'short' ok"
    long = "x" * 500
    out = shorten_quoted(f"invalid size '{long}': expected a size")
    assert out == f"invalid size '{'x' * 57}...': expected a size"
