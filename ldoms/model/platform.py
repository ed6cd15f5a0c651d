"""The hardware a host owns: CPU strands grouped in cores, crypto units tied to cores, physical memory as PA
ranges (some reserved by firmware as `_sys_`), PCIe buses and NIUs.  Pure data; presets and TOML loading live
in `ldoms.model.platforms`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The automatic MAC pool starts at `Platform.mac_base` and holds this many addresses (00:14:4f:f8:00:00 -
# 00:14:4f:fb:ff:ff on Sun machines); a platform file's base must leave room for all of it.
MAC_POOL_SIZE = 0x40000


@dataclass(frozen=True, slots=True, kw_only=True)
class Core:
    id: int
    socket: int
    strands: tuple[int, ...]  # physical strand IDs (PIDs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Mau:
    """A crypto unit; usable only by a domain that holds strands of its core."""

    id: int
    core: int
    cpuset: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemRange:
    """A physical address range.  `reserved` ranges belong to the hypervisor/firmware (`_sys_`)."""

    pa: int
    size: int
    reserved: bool = False

    @property
    def end(self) -> int:
        return self.pa + self.size


@dataclass(frozen=True, slots=True, kw_only=True)
class PciBus:
    dev: str  # "pci@400"
    pseudonym: str  # "bus_a"


@dataclass(frozen=True, slots=True, kw_only=True)
class Niu:
    dev: str  # "niu@80"
    pseudonym: str  # "niu_0"


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    name: str  # preset name or file stem, e.g. "t5240"
    model: str  # "SPARC Enterprise T5240"
    cpu_type: str  # "UltraSPARC T2 Plus"
    cpu_mhz: int
    sockets: int
    cores_per_socket: int
    strands_per_core: int
    memory: tuple[MemRange, ...]  # sorted by PA, covering all physical memory, reserved ones included
    hw_max_pagesize: int  # hardware largest page size (256M on T2-class machines)
    pci_buses: tuple[PciBus, ...] = ()
    nius: tuple[Niu, ...] = ()
    hypervisor_version: str = "1.7.0"
    hypervisor_date: str = "2008/11/19 10:20"
    obp_version: str = "4.30.0"
    obp_date: str = "2008/11/18 13:44"
    firmware: str = "7.2.0"  # system firmware release, used by migration compatibility rules
    mac_base: int = 0x00144FF80000  # base of the automatic MAC pool (Sun's 00:14:4f prefix)
    cores: tuple[Core, ...] = field(default=())
    maus: tuple[Mau, ...] = field(default=())

    def __post_init__(self) -> None:
        # Derived topology: strand IDs are dense, core-major, as on sun4v (core c has strands c*n .. c*n+n-1).
        if not self.cores:
            n = self.strands_per_core
            cores = tuple(
                Core(id=c, socket=c // self.cores_per_socket, strands=tuple(range(c * n, c * n + n)))
                for c in range(self.sockets * self.cores_per_socket)
            )
            object.__setattr__(self, "cores", cores)
        if not self.maus:
            maus = tuple(Mau(id=c.id, core=c.id, cpuset=c.strands) for c in self.cores)
            object.__setattr__(self, "maus", maus)

    @property
    def nstrands(self) -> int:
        return len(self.cores) * self.strands_per_core

    def core_of(self, strand: int) -> int:
        return strand // self.strands_per_core

    @property
    def usable_memory(self) -> tuple[MemRange, ...]:
        return tuple(r for r in self.memory if not r.reserved)

    @property
    def total_memory(self) -> int:
        return sum(r.size for r in self.memory)
