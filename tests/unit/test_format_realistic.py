"""Every listing on one realistic machine, compared with hand-checked golden files (tests/golden/real_*.txt).

The machine: a 4-core x 8-strand T2 with three `_sys_` ranges, two PCIe buses and an NIU;
- primary (active): strands 0-7, MAU 0, 1G at RA=PA, bus_a; serves primary-vds0 (vol1, and vol2 with
  `ro,slice,excl`), primary-vsw0 on nxge0 and primary-vcc0; two variables;
- ldg1 (active, Solaris running, 12.7 %, up 1d 2h 3m, being migrated to t5120-b, 63 %): strands 8-11,
  MAU 1, two mblocks, two vnets (one with VLANs), a vdisk on vol1, console 5000, a variable;
- ldg2 (bound): strands 16-19 plus reserved strands 20-23 (left over after a 1.2-style migration), MAU 2,
  two mblocks, a vnet, a vdisk on vol2 with a timeout, a named console group on port 5001;
- ldg3 (inactive): 2 vCPUs, 1G, a vnet, a vdisk, a variable.
Golden files are edited by hand; a change in output must be reviewed line by line, never regenerated.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ldoms.cli.format.devices import format_devices
from ldoms.cli.format.domains import OUTPUT_FORMATS, format_bindings, format_list
from ldoms.cli.format.services import format_services
from ldoms.model.domain import (
    Bindings,
    Domain,
    DomainConfig,
    DomainState,
    IoAssignment,
    MemBinding,
    MigrationRole,
    Vcc,
    Vcons,
    Vdisk,
    Vds,
    VdsVolume,
    Vnet,
    Vsw,
)
from ldoms.model.machine import Machine
from ldoms.model.platform import MemRange, Niu, PciBus, Platform
from ldoms.model.view import HostView, MigrationStatus
from ldoms.units import G, M, parse_mac

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
NOW = 1_700_000_000.0


def golden(name: str) -> str:
    return (GOLDEN / f"real_{name}.txt").read_text()


def _platform() -> Platform:
    return Platform(
        name="t5120",
        model="SPARC Enterprise T5120",
        cpu_type="UltraSPARC T2",
        cpu_mhz=1165,
        sockets=1,
        cores_per_socket=4,
        strands_per_core=8,
        memory=(
            MemRange(pa=0x0, size=512 * 1024, reserved=True),
            MemRange(pa=0x80000, size=1536 * 1024, reserved=True),
            MemRange(pa=0x200000, size=126 * M, reserved=True),
            MemRange(pa=0x8000000, size=8 * G - 128 * M),
        ),
        hw_max_pagesize=256 * M,
        pci_buses=(PciBus(dev="pci@400", pseudonym="bus_a"), PciBus(dev="pci@500", pseudonym="bus_b")),
        nius=(Niu(dev="niu@80", pseudonym="niu_0"),),
    )


def _cfg(name: str, mac: str, hostid: int, **kw: object) -> DomainConfig:
    return DomainConfig(name=name, uuid=f"uuid-{name}", hostid=hostid, mac=parse_mac(mac), **kw)  # type: ignore[arg-type]


def real_view() -> HostView:
    primary = Domain(
        config=_cfg(
            "primary",
            "00:14:4f:fa:00:01",
            0x84FA0001,
            vcpus=8,
            memory=G,
            mau=1,
            io=(IoAssignment(dev="pci@400"),),
            vds=(
                Vds(
                    name="primary-vds0",
                    volumes=(
                        VdsVolume(name="vol1", backend="/ldoms/ldg1/disk0.img"),
                        VdsVolume(name="vol2", backend="/dev/dsk/c1t1d0s2", options=("ro", "slice", "excl")),
                    ),
                ),
            ),
            vsw=(Vsw(name="primary-vsw0", mac=parse_mac("00:14:4f:fb:00:01"), net_dev="nxge0"),),
            vcc=(Vcc(name="primary-vcc0", port_min=5000, port_max=5100),),
            variables=(("auto-boot?", "true"), ("boot-device", "disk net")),
        ),
        state=DomainState.ACTIVE,
        bindings=Bindings(
            strands=tuple(range(8)),
            maus=(0,),
            io=("pci@400",),
            mblocks=(MemBinding(ra=0x8000000, pa=0x8000000, size=G),),
        ),
        started_at=NOW - (10 * 86400 + 4 * 3600 + 30),
        softstate="Solaris running",
    )
    ldg1 = Domain(
        config=_cfg(
            "ldg1",
            "00:14:4f:f8:01:00",
            0x84F80100,
            vcpus=4,
            memory=1536 * M,
            mau=1,
            vnets=(
                Vnet(name="vnet0", service="primary-vsw0", mac=parse_mac("00:14:4f:f8:01:01"), id=0),
                Vnet(
                    name="vnet1",
                    service="primary-vsw0",
                    mac=parse_mac("00:14:4f:f8:01:02"),
                    id=1,
                    pvid=2,
                    vids=(10, 20),
                ),
            ),
            vdisks=(Vdisk(name="vdisk0", volume="vol1", service="primary-vds0", id=0),),
            variables=(("boot-device", "vdisk0"),),
        ),
        state=DomainState.ACTIVE,
        bindings=Bindings(
            strands=(8, 9, 10, 11),
            maus=(1,),
            console_port=5000,
            console_service="primary-vcc0",
            mblocks=(
                MemBinding(ra=0x8000000, pa=0x48000000, size=512 * M),
                MemBinding(ra=0x28000000, pa=0x100000000, size=G),
            ),
        ),
        started_at=NOW - (86400 + 2 * 3600 + 3 * 60 + 7),
        softstate="Solaris running",
        migration=MigrationRole.SOURCE,
    )
    ldg2 = Domain(
        config=_cfg(
            "ldg2",
            "00:14:4f:f8:02:00",
            0x84F80200,
            vcpus=4,
            memory=512 * M,
            mau=1,
            vnets=(Vnet(name="vnet0", service="primary-vsw0", mac=parse_mac("00:14:4f:f8:02:01"), id=0),),
            vdisks=(Vdisk(name="data", volume="vol2", service="primary-vds0", id=0, timeout=30),),
            vcons=Vcons(group="ldg2-cons", service="primary-vcc0"),
        ),
        state=DomainState.BOUND,
        bindings=Bindings(
            strands=(16, 17, 18, 19),
            reserved_strands=(20, 21, 22, 23),
            maus=(2,),
            console_port=5001,
            console_service="primary-vcc0",
            mblocks=(
                MemBinding(ra=0x8000000, pa=0x68000000, size=256 * M),
                MemBinding(ra=0x18000000, pa=0x140000000, size=256 * M),
            ),
        ),
    )
    ldg3 = Domain(
        config=_cfg(
            "ldg3",
            "00:14:4f:f8:03:00",
            0x84F80300,
            vcpus=2,
            memory=G,
            vnets=(Vnet(name="vnet0", service="primary-vsw0", mac=parse_mac("00:14:4f:f8:03:01"), id=0),),
            vdisks=(Vdisk(name="vdisk0", volume="vol1", service="primary-vds0", id=0),),
            variables=(("auto-boot?", "false"),),
        ),
    )
    machine = Machine(host_name="t5120-a", platform=_platform(), domains=(primary, ldg1, ldg2, ldg3))
    migration = MigrationStatus(domain="ldg1", role="source", peer="t5120-b", progress=63)
    return HostView(machine=machine, now=NOW, util={"primary": 3.25, "ldg1": 12.7}, migrations=(migration,))


# ---------------------------------------------------------------- ldm list
def test_short() -> None:
    assert format_list(real_view(), []) == golden("list")


def test_short_parseable() -> None:
    assert format_list(real_view(), [], parseable=True) == golden("list_p")


def test_long_every_domain() -> None:
    assert format_list(real_view(), [], long=True) == golden("list_l")


def test_long_parseable_every_domain() -> None:
    assert format_list(real_view(), [], long=True, parseable=True) == golden("list_lp")


def test_extended_parseable_guest() -> None:
    assert format_list(real_view(), ["ldg1"], extended=True, parseable=True) == golden("list_ep_ldg1")


def test_extended_inactive() -> None:
    assert format_list(real_view(), ["ldg3"], extended=True) == golden("list_e_ldg3")


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
def test_each_output_format(fmt: str) -> None:
    names = ["primary", "ldg1", "ldg2", "ldg3"]
    human = format_list(real_view(), names, sections=[fmt])
    parse = format_list(real_view(), names, parseable=True, sections=[fmt])
    assert human == golden(f"list_o_{fmt}")
    assert parse == golden(f"list_o_{fmt}_p")


def test_output_formats_in_the_order_asked() -> None:
    out = format_list(real_view(), ["ldg1"], sections=["memory", "cpu", "memory"])
    assert out.index("MEMORY") < out.index("VCPU")
    assert out.count("MEMORY") == 1


# ---------------------------------------------------------------- list-bindings
def test_bindings() -> None:
    assert format_bindings(real_view(), []) == golden("bindings")


def test_bindings_parseable() -> None:
    assert format_bindings(real_view(), ["ldg2", "ldg3"], parseable=True) == golden("bindings_p")


# ---------------------------------------------------------------- list-devices
def test_devices_free() -> None:
    assert format_devices(real_view(), []) == golden("devices")


def test_devices_all() -> None:
    assert format_devices(real_view(), [], all=True) == golden("devices_a")


def test_devices_free_parseable() -> None:
    assert format_devices(real_view(), [], parseable=True) == golden("devices_p")


def test_devices_all_parseable() -> None:
    assert format_devices(real_view(), [], all=True, parseable=True) == golden("devices_ap")


def test_devices_class_aliases() -> None:
    v = real_view()
    assert format_devices(v, ["crypto"]) == format_devices(v, ["mau"])
    assert format_devices(v, ["memory"]) == format_devices(v, ["mem"])
    assert format_devices(v, ["io", "cpu"]) == format_devices(v, ["cpu", "io"])
    assert format_devices(v, ["cpu", "mau", "mem", "io"]) == format_devices(v, [])


# ---------------------------------------------------------------- list-services
def test_services() -> None:
    assert format_services(real_view(), []) == golden("services")


def test_services_parseable() -> None:
    assert format_services(real_view(), [], parseable=True) == golden("services_p")


def test_services_of_a_domain_without_services() -> None:
    assert format_services(real_view(), ["ldg1"]) == ""
    assert format_services(real_view(), ["ldg1"], parseable=True) == "VERSION 1.0\n"
