"""Domains: what was asked for (constraints, `DomainConfig`, the part that travels in a migration) and what
is held while bound or active (`Bindings`).  Pure data with small derived helpers; all changes are made by
building new values (`dataclasses.replace`) in `ldoms.ops`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

CONTROL_DOMAIN = "primary"


class DomainState(enum.StrEnum):
    INACTIVE = "inactive"
    BOUND = "bound"
    ACTIVE = "active"


class MigrationRole(enum.StrEnum):
    NONE = ""
    SOURCE = "source"
    TARGET = "target"
    ERROR = "error"


# -------------------------------------------------------- virtual services (owned by a service domain)
@dataclass(frozen=True, slots=True, kw_only=True)
class VdsVolume:
    name: str
    backend: str  # path of the exported file/device
    options: tuple[str, ...] = ()  # subset of ("ro", "slice", "excl"), in that order
    mpgroup: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Vds:
    name: str
    volumes: tuple[VdsVolume, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Vsw:
    name: str
    mac: int
    net_dev: str = ""
    default_vlan_id: int = 1
    pvid: int = 1
    vids: tuple[int, ...] = ()
    mode: str = ""  # "" or "sc"
    mtu: int = 1500
    id: int = 0  # device switch@<id>
    linkprop: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Vcc:
    name: str
    port_min: int
    port_max: int


# ---------------------------------------------------------------- guest devices (clients of services)
@dataclass(frozen=True, slots=True, kw_only=True)
class Vnet:
    name: str
    service: str  # vsw name
    mac: int
    hybrid: bool = False
    pvid: int = 1
    vids: tuple[int, ...] = ()
    mtu: int = 1500
    id: int = 0  # device network@<id>
    linkprop: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Vdisk:
    name: str
    volume: str
    service: str  # vds name
    timeout: int = 0
    id: int = 0  # device disk@<id>


@dataclass(frozen=True, slots=True, kw_only=True)
class Vcons:
    group: str = ""  # console group; default the domain name
    service: str = ""  # vcc name; default any vcc of the control domain
    port: int = 0  # requested port; 0 = any free port


@dataclass(frozen=True, slots=True, kw_only=True)
class NamedMblock:
    """A memory block asked for by physical address (`mblock=PA:size`)."""

    pa: int
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class IoAssignment:
    dev: str  # "pci@400"
    bypass: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainConfig:
    """Constraints: everything that defines a domain and travels with it."""

    name: str
    uuid: str
    hostid: int
    mac: int
    vcpus: int = 0  # strands; with whole_core, the number of whole cores
    whole_core: bool = False
    max_cores: int = 0  # 0 = unlimited
    memory: int = 0  # bytes; with named mblocks, their sum
    mblocks: tuple[NamedMblock, ...] = ()
    mau: int = 0
    io: tuple[IoAssignment, ...] = ()
    vnets: tuple[Vnet, ...] = ()
    vdisks: tuple[Vdisk, ...] = ()
    vcons: Vcons | None = None
    vds: tuple[Vds, ...] = ()
    vsw: tuple[Vsw, ...] = ()
    vcc: tuple[Vcc, ...] = ()
    variables: tuple[tuple[str, str], ...] = ()
    cpu_arch: str = "native"
    failure_policy: str = "ignore"
    master: tuple[str, ...] = ()

    @property
    def is_control(self) -> bool:
        return self.name == CONTROL_DOMAIN

    @property
    def provides_services(self) -> bool:
        return bool(self.vds or self.vsw or self.vcc)

    def variable(self, name: str) -> str | None:
        for k, v in self.variables:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemBinding:
    ra: int
    pa: int
    size: int

    @property
    def pa_end(self) -> int:
        return self.pa + self.size


@dataclass(frozen=True, slots=True, kw_only=True)
class Bindings:
    strands: tuple[int, ...] = ()
    # Strands of partly used cores held back after a 1.2-style migration until the domain reboots.
    reserved_strands: tuple[int, ...] = ()
    mblocks: tuple[MemBinding, ...] = ()
    maus: tuple[int, ...] = ()
    console_port: int = 0  # 0 = none (control domain: SP)
    console_service: str = ""
    io: tuple[str, ...] = ()

    @property
    def memory(self) -> int:
        return sum(b.size for b in self.mblocks)


@dataclass(frozen=True, slots=True, kw_only=True)
class Domain:
    config: DomainConfig
    state: DomainState = DomainState.INACTIVE
    bindings: Bindings | None = None
    # Delayed reconfiguration (control domain only): constraints that take effect at the next reboot.
    pending: DomainConfig | None = None
    # Set when a remove-* already did a delayed reconfiguration on virtual I/O: cancel is then refused.
    pending_vio_removed: bool = False
    started_at: float = 0.0  # wall-clock time the domain became active (0 when not active)
    softstate: str = ""
    migration: MigrationRole = MigrationRole.NONE
    cpu_dr_disabled: bool = False  # after a 1.2-style migration, until reboot
    guest_pid: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def delayed_reconfig(self) -> bool:
        return self.pending is not None
