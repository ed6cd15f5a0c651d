"""bind_domain and rebind_domain: every resource class together, all or none.

Both are pure: they compute a `Bindings` value or raise `ResourceError`; the caller stores it.  Whatever the
machine records for a domain of the same name is ignored when computing what is free, so binding a domain
never competes with itself.

Console decision: a guest gets a console port when some vcc exists (the one its vcons names, else the
first vcc of the control domain, else any vcc with a free port).  When no vcc exists at all the domain is
bound without a console (port 0, shown blank), as LDoms does; the console is then unusable until the domain
is rebound with a vcc present.  The control domain's console is always the SP (port 0).
"""

from __future__ import annotations

from ldoms.binding.cpu import choose_cpu
from ldoms.binding.held import holdings
from ldoms.binding.memory import bind_memory
from ldoms.errors import ResourceError
from ldoms.model.domain import Bindings, Domain, DomainConfig, DomainState, Vcc
from ldoms.model.machine import Machine


def bind_domain(machine: Machine, config: DomainConfig, *, full_cores: bool = False) -> Bindings:
    """A fresh bind of `config` (an inactive domain): strands, MAUs, memory, I/O buses, console port.

    `full_cores=True` (the target of a 1.2-style live migration): whole cores, the lowest fully free ones,
    with the strands beyond `config.vcpus` in `reserved_strands` until the domain reboots."""
    cpu = choose_cpu(machine, config, full_cores=full_cores)
    mblocks = bind_memory(machine, config)
    io = _bind_io(machine, config)
    service, port = _bind_console(machine, config)
    return Bindings(
        strands=cpu.strands,
        reserved_strands=cpu.reserved,
        mblocks=mblocks,
        maus=cpu.maus,
        console_port=port,
        console_service=service,
        io=io,
    )


def rebind_domain(machine: Machine, domain: Domain, new_config: DomainConfig) -> Bindings:
    """`domain` (bound or active) changed to `new_config`, keeping what it holds where possible.

    Growing adds strands / memory; shrinking releases the highest-numbered strands, the highest-numbered
    MAUs and the highest-RA memory (the control domain thus keeps its lowest-PA memory).  Reserved strands
    are kept.  Also used for the control domain's reboot after a delayed reconfiguration."""
    old = domain.bindings
    if old is None or domain.state == DomainState.INACTIVE:
        return bind_domain(machine, new_config)
    cpu = choose_cpu(
        machine,
        new_config,
        held_strands=old.strands,
        held_maus=old.maus,
        reserved=old.reserved_strands,
    )
    mblocks = bind_memory(machine, new_config, old.mblocks)
    io = _bind_io(machine, new_config)
    if _console_still_fits(machine, new_config, old):
        service, port = old.console_service, old.console_port
    else:
        service, port = _bind_console(machine, new_config)
    return Bindings(
        strands=cpu.strands,
        reserved_strands=old.reserved_strands,
        mblocks=mblocks,
        maus=cpu.maus,
        console_port=port,
        console_service=service,
        io=io,
    )


# ---------------------------------------------------------------- I/O
def _bind_io(machine: Machine, config: DomainConfig) -> tuple[str, ...]:
    buses = {b.dev: b for b in machine.platform.pci_buses}
    held = holdings(machine, exclude=config.name).io
    out: list[str] = []
    for io in config.io:
        bus = buses.get(io.dev)
        if bus is None:
            known = ", ".join(buses) or "none"
            raise ResourceError(
                f"I/O bus {io.dev} of LDom {config.name} does not exist on platform {machine.platform.name} "
                f"(buses: {known})"
            )
        if io.dev in held:
            raise ResourceError(
                f"I/O bus {io.dev} ({bus.pseudonym}) is not free: it is bound to LDom {held[io.dev]}"
            )
        if io.dev not in out:
            out.append(io.dev)
    return tuple(out)


# ---------------------------------------------------------------- console
def _vccs(machine: Machine) -> list[Vcc]:
    """Every vcc on the host: the control domain's first, then the others' in domain order."""
    ordered = sorted(machine.domains, key=lambda d: not d.config.is_control)
    return [v for d in ordered for v in d.config.vcc]


def _console_still_fits(machine: Machine, config: DomainConfig, old: Bindings) -> bool:
    if config.is_control or not old.console_port:
        return config.is_control
    want = config.vcons
    if want is not None and want.service and want.service != old.console_service:
        return False
    if want is not None and want.port and want.port != old.console_port:
        return False
    vcc = next((v for v in _vccs(machine) if v.name == old.console_service), None)
    return vcc is not None and vcc.port_min <= old.console_port <= vcc.port_max


def _bind_console(machine: Machine, config: DomainConfig) -> tuple[str, int]:
    """(vcc name, port), or ("", 0) for the control domain and when the host has no vcc."""
    if config.is_control:
        return "", 0
    vccs = _vccs(machine)
    taken = holdings(machine, exclude=config.name).console
    want = config.vcons
    if want is not None and want.service:
        vcc = next((v for v in vccs if v.name == want.service), None)
        if vcc is None:
            raise ResourceError(f"console service {want.service} of LDom {config.name} not found")
        candidates = [vcc]
    else:
        candidates = vccs
    if not candidates:
        return "", 0
    if want is not None and want.port:
        vcc = candidates[0]
        if not vcc.port_min <= want.port <= vcc.port_max:
            raise ResourceError(
                f"console port {want.port} of LDom {config.name} is outside the port range "
                f"{vcc.port_min}-{vcc.port_max} of {vcc.name}"
            )
        holder = taken.get((vcc.name, want.port))
        if holder is not None:
            raise ResourceError(f"console port {want.port} of {vcc.name} is already used by LDom {holder}")
        return vcc.name, want.port
    for vcc in candidates:
        for port in range(vcc.port_min, vcc.port_max + 1):
            if (vcc.name, port) not in taken:
                return vcc.name, port
    first = candidates[0]
    raise ResourceError(
        f"no free console port for LDom {config.name}: every port of {first.name} "
        f"({first.port_min}-{first.port_max}) is in use"
        + (" and so are the other vccs'" if len(candidates) > 1 else "")
    )
