"""Helpers shared by the virtual I/O operations (`vio_disk`, `vio_net`, `vio_console`).

Theory of operation.  Virtual I/O has two sides:

- *services* (vds with its volumes, vsw, vcc) live in the configuration of the domain that provides them.  A
  service change is immediate, even on the active control domain; when the control domain has a delayed
  reconfiguration pending, the change is applied to both its current and its pending constraints so that the
  reboot that commits the pending ones does not lose it (`update_owner`).
- *client devices* (vdisk, vnet, vcons) live in the configuration of the domain that uses them.  On the
  active control domain a change to them is a delayed reconfiguration (`apply_device_change`); on a guest it
  is immediate whatever the state (virtual I/O dynamic reconfiguration), with the exceptions the individual
  verbs enforce.

Lookups read every domain's current *and* pending constraints, so a service or device added under a delayed
reconfiguration is seen at once, and one removed under it still counts as a user until the reboot.  Service
names are unique on the host across the three kinds, so a client names a service without its domain.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from ldoms.binding import allocate_mac
from ldoms.binding import macs_in_use as all_macs
from ldoms.errors import AlreadyExistsError, NotFoundError, OpPrereqError, UsageError
from ldoms.model.domain import Domain, DomainConfig, DomainState, Vcc, Vds, Vsw
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, Request, VerbSpec
from ldoms.ops.common import (
    check_grammar,
    check_not_migrating,
    check_other_domain_reconfig,
    delayed_update,
    effective_config,
    is_delayed,
)
from ldoms.units import format_mac, parse_mac

Service = Vds | Vsw | Vcc
KIND_LABEL = {"vds": "Virtual disk server", "vsw": "Virtual switch", "vcc": "Virtual console concentrator"}

MTU_MIN, MTU_MAX = 1500, 16000
VLAN_MIN, VLAN_MAX = 1, 4094
PORT_MIN, PORT_MAX = 1, 65535

# Backends and net-dev names: "letters, numbers, or punctuation" (1.3 Admin Guide, Entering Names in the CLI).
# Printable ASCII without spaces and without '|', the separator of `-p` output (which must read back).
_DEVICE_RE = re.compile(r"^[!-{}~]+$")


# ---------------------------------------------------------------- request parsing
def check_request(request: Request, spec: VerbSpec) -> dict[str, str]:
    """The verb's grammar (flags, property keys, operand count); returns the properties as a dict, refusing a
    property given twice (LDoms takes each once)."""
    check_grammar(request, spec)
    out: dict[str, str] = {}
    for key, value in request.props:
        if key in out:
            raise UsageError(f"Property '{key}' given more than once. Usage: ldm {spec.usage}")
        out[key] = value
    return out


def nothing_to_set(usage: str, what: str = "") -> UsageError:
    hint = f": give {what}" if what else ""
    return UsageError(f"Nothing to set{hint}. Usage: ldm {usage}")


def force_flag(request: Request) -> bool:
    return bool(request.flags.get("-f", False))


def parse_mtu(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,20}", text.strip()):
        raise UsageError(f"Invalid mtu '{text}': expected a whole number between {MTU_MIN} and {MTU_MAX}")
    mtu = int(text)
    if not MTU_MIN <= mtu <= MTU_MAX:
        raise UsageError(f"Invalid mtu {mtu}: the MTU must be between {MTU_MIN} and {MTU_MAX}")
    return mtu


def parse_vlan(text: str, what: str) -> int:
    if not re.fullmatch(r"[0-9]{1,20}", text.strip()):
        raise UsageError(
            f"Invalid {what} '{text}': a VLAN id is a whole number between {VLAN_MIN} and {VLAN_MAX}"
        )
    vid = int(text)
    if not VLAN_MIN <= vid <= VLAN_MAX:
        raise UsageError(f"Invalid {what} {vid}: a VLAN id must be between {VLAN_MIN} and {VLAN_MAX}")
    return vid


def parse_vid_list(text: str) -> tuple[int, ...]:
    """'vid=10,20,30' -> (10, 20, 30); duplicates dropped, order kept.  An empty value is the empty list."""
    if text.strip() == "":
        return ()
    out: list[int] = []
    for part in text.split(","):
        vid = parse_vlan(part, "vid")
        if vid not in out:
            out.append(vid)
    return tuple(out)


def parse_device_id(text: str, what: str) -> int:
    if not re.fullmatch(r"[0-9]{1,20}", text.strip()):
        raise UsageError(f"Invalid {what} '{text}': expected a whole number (0 or more)")
    return int(text)


def parse_mac_prop(text: str) -> int:
    return parse_mac(text.strip())


def parse_linkprop(text: str) -> str:
    if text not in ("", "phys-state"):
        raise UsageError(f"Invalid linkprop '{text}': the only link property is phys-state")
    return text


def check_device_name(text: str, what: str) -> str:
    if not _DEVICE_RE.fullmatch(text):  # not `match`: `$` lets a trailing newline through
        raise UsageError(
            f"Invalid {what} '{text}': it must contain only letters, numbers or punctuation other than '|'"
        )
    return text


def split_at(text: str, what: str) -> tuple[str, str]:
    """'vol1@primary-vds0' -> ('vol1', 'primary-vds0')."""
    left, sep, right = text.partition("@")
    if not sep or not left or not right or "@" in right:
        raise UsageError(f"Invalid {what} '{text}': expected volume-name@service-name")
    return left, right


# ---------------------------------------------------------------- services
def configs(dom: Domain) -> Iterator[DomainConfig]:
    """The domain's current constraints, then its pending ones (delayed reconfiguration) if any."""
    yield dom.config
    if dom.pending is not None:
        yield dom.pending


@dataclass(frozen=True, slots=True)
class ServiceRef:
    kind: str  # "vds", "vsw" or "vcc"
    owner: Domain
    service: Service


def find_service(machine: Machine, name: str) -> ServiceRef | None:
    """Any service called `name`, whatever its kind (the pending constraints win, as they are the newest)."""
    for dom in machine.domains:
        cfg = effective_config(dom)
        for kind in ("vds", "vsw", "vcc"):
            for svc in getattr(cfg, kind):
                if svc.name == name:
                    return ServiceRef(kind, dom, svc)
    return None


def get_service(machine: Machine, kind: str, name: str) -> ServiceRef:
    ref = find_service(machine, name)
    if ref is None or ref.kind != kind:
        raise NotFoundError(f"{KIND_LABEL[kind]} {name} does not exist")
    return ref


def check_service_name_free(machine: Machine, name: str) -> None:
    ref = find_service(machine, name)
    if ref is not None:
        raise AlreadyExistsError(
            f"Service {name} already exists ({KIND_LABEL[ref.kind].lower()} in LDom {ref.owner.name}): "
            "service names must be unique on the host"
        )


def update_owner(machine: Machine, owner: Domain, change: Callable[[DomainConfig], DomainConfig]) -> Machine:
    """Apply a service change to the owner's current and pending constraints (services are immediate)."""
    pending = change(owner.pending) if owner.pending is not None else None
    return machine.with_domain(replace(owner, config=change(owner.config), pending=pending))


def replace_service(cfg: DomainConfig, kind: str, new: Service) -> DomainConfig:
    svcs = tuple(new if s.name == new.name else s for s in getattr(cfg, kind))
    return replace(cfg, **{kind: svcs})


def drop_service(cfg: DomainConfig, kind: str, name: str) -> DomainConfig:
    return replace(cfg, **{kind: tuple(s for s in getattr(cfg, kind) if s.name != name)})


def add_service(cfg: DomainConfig, kind: str, new: Service) -> DomainConfig:
    return replace(cfg, **{kind: (*getattr(cfg, kind), new)})


def check_service_owner(machine: Machine, owner: Domain, ctx: OpContext) -> None:
    """A service change touches the owner's machine description."""
    check_not_migrating(owner.name, ctx)
    check_other_domain_reconfig(machine, owner.name)


# ---------------------------------------------------------------- users of services
@dataclass(frozen=True, slots=True)
class User:
    domain: Domain
    device: str  # "vdisk vdisk1", "vnet vnet1", "console"

    def describe(self) -> str:
        return f"{self.device} in LDom {self.domain.name}"


def _dedupe(users: list[User]) -> tuple[User, ...]:
    seen: set[tuple[str, str]] = set()
    out: list[User] = []
    for u in users:
        key = (u.domain.name, u.device)
        if key not in seen:
            seen.add(key)
            out.append(u)
    return tuple(out)


def vdisk_users(machine: Machine, vds: str, volume: str | None = None) -> tuple[User, ...]:
    """Vdisks backed by the vds (or by one of its volumes), in current or pending constraints."""
    users = [
        User(dom, f"vdisk {vd.name}")
        for dom in machine.domains
        for cfg in configs(dom)
        for vd in cfg.vdisks
        if vd.service == vds and (volume is None or vd.volume == volume)
    ]
    return _dedupe(users)


def vnet_users(machine: Machine, vsw: str) -> tuple[User, ...]:
    users = [
        User(dom, f"vnet {vn.name}")
        for dom in machine.domains
        for cfg in configs(dom)
        for vn in cfg.vnets
        if vn.service == vsw
    ]
    return _dedupe(users)


def console_users(machine: Machine, vcc: str) -> tuple[User, ...]:
    """Domains that ask for this vcc by name, or hold a console port from it."""
    users = [
        User(dom, "console")
        for dom in machine.domains
        if any(cfg.vcons is not None and cfg.vcons.service == vcc for cfg in configs(dom))
        or (dom.bindings is not None and dom.bindings.console_service == vcc)
    ]
    return _dedupe(users)


def check_removable(what: str, users: tuple[User, ...], force: bool, ctx: OpContext) -> None:
    """Refuse to remove a service or volume that devices still use.

    `-f` removes it from under users whose domain is inactive (their devices then fail at bind, as a missing
    service does); it never pulls a backend, switch or console from a bound or active domain, and never
    touches a domain being migrated.
    """
    for u in users:
        check_not_migrating(u.domain.name, ctx)
    if not users:
        return
    names = ", ".join(u.describe() for u in users)
    if not force:
        raise OpPrereqError(f"{what} is attached to {names}: remove those first, or use -f", code="in-use")
    live = [u for u in users if u.domain.state != DomainState.INACTIVE or u.domain.bindings is not None]
    if live:
        busy = ", ".join(u.describe() for u in live)
        raise OpPrereqError(
            f"{what} is attached to {busy}, which is bound or active: -f cannot remove it from under a "
            "bound or active domain (stop and unbind it first)",
            code="in-use",
        )


# ---------------------------------------------------------------- MAC addresses and device ids
def macs_in_use(machine: Machine, *, exclude: int | None = None) -> set[int]:
    """Every MAC on the host: domains, vnets and vsws, in current and pending constraints."""
    out = all_macs(machine)
    if exclude is not None:
        out.discard(exclude)
    return out


def mac_owner(machine: Machine, mac: int) -> str:
    for dom in machine.domains:
        for cfg in configs(dom):
            if cfg.mac == mac:
                return f"LDom {dom.name}"
            for v in cfg.vnets:
                if v.mac == mac:
                    return f"vnet {v.name} in LDom {dom.name}"
            for s in cfg.vsw:
                if s.mac == mac:
                    return f"virtual switch {s.name} in LDom {dom.name}"
    return "another device"


def check_mac_free(machine: Machine, mac: int, *, exclude: int | None = None) -> None:
    if mac in macs_in_use(machine, exclude=exclude):
        raise AlreadyExistsError(
            f"MAC address {format_mac(mac)} already exists: it is used by {mac_owner(machine, mac)} "
            "(MAC addresses must be unique on the host)"
        )


def new_mac(machine: Machine) -> int:
    """A free automatic MAC, unique over every domain's current and pending constraints."""
    return allocate_mac(machine)


def lowest_free_id(used: set[int]) -> int:
    n = 0
    while n in used:
        n += 1
    return n


# ---------------------------------------------------------------- client-device changes
def check_device_domain(machine: Machine, dom: Domain, ctx: OpContext) -> None:
    """A vdisk/vnet/vcons change touches this domain's machine description."""
    check_not_migrating(dom.name, ctx)
    check_other_domain_reconfig(machine, dom.name)


def apply_device_change(
    machine: Machine, dom: Domain, new_cfg: DomainConfig, *, removed: bool = False
) -> tuple[Machine, tuple[str, ...]]:
    """Commit a client-device change: delayed on the active control domain, immediate elsewhere.

    A removal done as a delayed reconfiguration marks the domain so that `cancel-operation reconf` is refused
    (SPEC 1.4)."""
    if is_delayed(dom):
        out, notices = delayed_update(machine, dom, new_cfg)
        if removed:
            out = out.with_domain(replace(out.domain(dom.name), pending_vio_removed=True))
        return out, notices
    return machine.with_domain(replace(dom, config=new_cfg)), ()
