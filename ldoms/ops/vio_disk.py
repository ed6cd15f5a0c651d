"""Virtual disk verbs: the disk service (vds), its volumes (vdsdev) and the guests' virtual disks (vdisk).

    ldm add-vds service-name ldom                      ldm remove-vds [-f] service-name
    ldm add-vdsdev [-f] [options={ro,slice,excl}] [mpgroup=mpgroup] backend volume-name@service-name
    ldm set-vdsdev [options=[{ro,slice,excl}]] [mpgroup=[mpgroup]] volume-name@service-name
    ldm remove-vdsdev [-f] volume-name@service-name
    ldm add-vdisk [timeout=seconds] [id=disk-id] disk-name volume-name@service-name ldom
    ldm set-vdisk [timeout=seconds] [volume=volume-name@service-name] disk-name ldom
    ldm remove-vdisk [-f] disk-name ldom

Rules (see `vio_common` for the service/device split and the delayed-reconfiguration handling):

- volume names are unique within their vds (`already exists`); a volume backs at most one vdisk on the host
  (export the backend again under another volume name to give it to a second vdisk);
- a backend may be exported several times (1.3 guide), but not when one of the exports asks for `excl`,
  since an exclusive open would make the other exports fail at bind; `add-vdsdev -f` (the 2.x meaning of
  the flag) exports it anyway;
- a vdisk must name an existing volume@vds when it is added or re-pointed; the backend itself is opened
  only when the guest is bound;
- `remove-vdsdev`/`remove-vds` refuse while vdisks use the volume (`is attached`); `-f` removes it from
  under inactive domains only (their vdisk then fails at bind), never from under a bound or active one;
- `remove-vdisk -f` is accepted for compatibility: the removal of a vdisk never depends on the guest here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ldoms.errors import AlreadyExistsError, NotFoundError, OpPrereqError, UsageError
from ldoms.model.domain import Domain, DomainConfig, Vdisk, Vds, VdsVolume
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import check_name, effective_config
from ldoms.ops.vio_common import (
    add_service,
    apply_device_change,
    check_device_domain,
    check_device_name,
    check_removable,
    check_request,
    check_service_name_free,
    check_service_owner,
    drop_service,
    force_flag,
    get_service,
    lowest_free_id,
    nothing_to_set,
    parse_device_id,
    replace_service,
    split_at,
    update_owner,
    vdisk_users,
)

VOLUME_OPTIONS = ("ro", "slice", "excl")
VolumeChange = Callable[[tuple[VdsVolume, ...]], tuple[VdsVolume, ...]]


def parse_options(text: str) -> tuple[str, ...]:
    """'slice,ro' -> ('ro', 'slice'): any subset of ro, slice, excl, kept in that canonical order."""
    if text.strip() == "":
        return ()
    given = [p.strip() for p in text.split(",")]
    for opt in given:
        if opt not in VOLUME_OPTIONS:
            raise UsageError(f"Invalid option '{opt}' in options={text}: the options are ro, slice and excl")
    return tuple(o for o in VOLUME_OPTIONS if o in given)


def _volume(vds: Vds, name: str) -> VdsVolume | None:
    for vol in vds.volumes:
        if vol.name == name:
            return vol
    return None


def _get_volume(machine: Machine, volume: str, service: str) -> tuple[Vds, VdsVolume]:
    vds = get_service(machine, "vds", service).service
    assert isinstance(vds, Vds)
    vol = _volume(vds, volume)
    if vol is None:
        raise NotFoundError(f"Volume {volume}@{service} does not exist")
    return vds, vol


def _with_volumes(cfg: DomainConfig, service: str, change: VolumeChange) -> DomainConfig:
    """Rewrite the volume list of one vds in `cfg` (by name: current and pending constraints hold copies)."""
    for vds in cfg.vds:
        if vds.name == service:
            return replace_service(cfg, "vds", replace(vds, volumes=change(vds.volumes)))
    return cfg


def _change_volumes(machine: Machine, owner: Domain, service: str, change: VolumeChange) -> Machine:
    return update_owner(machine, owner, lambda c: _with_volumes(c, service, change))


def _check_volume_free(machine: Machine, volume: str, service: str, *, domain: str, disk: str) -> None:
    """A volume backs at most one vdisk on the host."""
    others = [
        u
        for u in vdisk_users(machine, service, volume)
        if not (u.domain.name == domain and u.device == f"vdisk {disk}")
    ]
    if others:
        raise OpPrereqError(
            f"Volume {volume}@{service} is already attached to {others[0].describe()}: a volume backs only "
            "one vdisk (export the backend again under another volume name)",
            code="in-use",
        )


# ---------------------------------------------------------------- vds
@dataclass(frozen=True, slots=True)
class VdsArgs:
    name: str
    ldom: str = ""
    force: bool = False


@register
class AddVds:
    spec = VerbSpec(
        name="add-vds",
        aliases=("add-vdiskserver",),
        min_operands=2,
        max_operands=2,
        usage="add-vds service-name ldom",
    )

    def check_arguments(self, request: Request) -> VdsArgs:
        check_request(request, self.spec)
        name, ldom = request.operands
        return VdsArgs(check_name(name, "service name"), ldom)

    def check_prereq(self, machine: Machine, args: VdsArgs, ctx: OpContext) -> None:
        owner = machine.domain(args.ldom)
        check_service_owner(machine, owner, ctx)
        check_service_name_free(machine, args.name)

    def execute(self, machine: Machine, args: VdsArgs, ctx: OpContext) -> OpResult:
        owner = machine.domain(args.ldom)
        vds = Vds(name=args.name)
        return OpResult(machine=update_owner(machine, owner, lambda c: add_service(c, "vds", vds)))


@register
class RemoveVds:
    spec = VerbSpec(
        name="remove-vds",
        aliases=("rm-vds", "remove-vdiskserver", "rm-vdiskserver"),
        flags=("-f",),
        min_operands=1,
        max_operands=1,
        usage="remove-vds [-f] service-name",
    )

    def check_arguments(self, request: Request) -> VdsArgs:
        check_request(request, self.spec)
        return VdsArgs(request.operands[0], force=force_flag(request))

    def check_prereq(self, machine: Machine, args: VdsArgs, ctx: OpContext) -> None:
        ref = get_service(machine, "vds", args.name)
        check_service_owner(machine, ref.owner, ctx)
        check_removable(f"Virtual disk server {args.name}", vdisk_users(machine, args.name), args.force, ctx)

    def execute(self, machine: Machine, args: VdsArgs, ctx: OpContext) -> OpResult:
        ref = get_service(machine, "vds", args.name)
        return OpResult(machine=update_owner(machine, ref.owner, lambda c: drop_service(c, "vds", args.name)))


# ---------------------------------------------------------------- vdsdev
@dataclass(frozen=True, slots=True)
class VdsdevArgs:
    volume: str
    service: str
    backend: str = ""
    options: tuple[str, ...] | None = None  # None = not given (set-vdsdev)
    mpgroup: str | None = None
    force: bool = False


def _check_multiple_export(machine: Machine, args: VdsdevArgs, options: tuple[str, ...]) -> None:
    """A backend exported more than once cannot be opened exclusively by any of its exports."""
    if args.force:
        return
    for dom in machine.domains:
        for vds in effective_config(dom).vds:
            for vol in vds.volumes:
                if vol.backend != args.backend or (vds.name == args.service and vol.name == args.volume):
                    continue
                if "excl" in options or "excl" in vol.options:
                    raise OpPrereqError(
                        f"Backend {args.backend} is already exported as {vol.name}@{vds.name}: a backend "
                        "exported more than once cannot use the excl option (use -f to export it anyway)",
                        code="in-use",
                    )


@register
class AddVdsdev:
    spec = VerbSpec(
        name="add-vdsdev",
        aliases=("add-vdiskserverdevice",),
        flags=("-f",),
        props=("options", "mpgroup"),
        min_operands=2,
        max_operands=2,
        usage="add-vdsdev [-f] [options={ro,slice,excl}] [mpgroup=mpgroup] backend volume-name@service-name",
    )

    def check_arguments(self, request: Request) -> VdsdevArgs:
        props = check_request(request, self.spec)
        backend, target = request.operands
        volume, service = split_at(target, "volume")
        mpgroup = props.get("mpgroup", "")
        return VdsdevArgs(
            volume=check_name(volume, "volume name"),
            service=service,
            backend=check_device_name(backend, "backend"),
            options=parse_options(props.get("options", "")),
            mpgroup=check_name(mpgroup, "mpgroup name") if mpgroup else "",
            force=force_flag(request),
        )

    def check_prereq(self, machine: Machine, args: VdsdevArgs, ctx: OpContext) -> None:
        ref = get_service(machine, "vds", args.service)
        check_service_owner(machine, ref.owner, ctx)
        assert isinstance(ref.service, Vds)
        if _volume(ref.service, args.volume) is not None:
            raise AlreadyExistsError(f"Volume {args.volume}@{args.service} already exists")
        _check_multiple_export(machine, args, args.options or ())

    def execute(self, machine: Machine, args: VdsdevArgs, ctx: OpContext) -> OpResult:
        ref = get_service(machine, "vds", args.service)
        vol = VdsVolume(
            name=args.volume, backend=args.backend, options=args.options or (), mpgroup=args.mpgroup or ""
        )

        def change(vols: tuple[VdsVolume, ...]) -> tuple[VdsVolume, ...]:
            return (*vols, vol)

        return OpResult(machine=_change_volumes(machine, ref.owner, args.service, change))


@register
class SetVdsdev:
    spec = VerbSpec(
        name="set-vdsdev",
        aliases=("set-vdiskserverdevice",),
        props=("options", "mpgroup"),
        min_operands=1,
        max_operands=1,
        usage="set-vdsdev [options=[{ro,slice,excl}]] [mpgroup=[mpgroup]] volume-name@service-name",
    )

    def check_arguments(self, request: Request) -> VdsdevArgs:
        props = check_request(request, self.spec)
        if not props:
            raise nothing_to_set(self.spec.usage, "options= and/or mpgroup=")
        volume, service = split_at(request.operands[0], "volume")
        mpgroup = props.get("mpgroup")
        return VdsdevArgs(
            volume=volume,
            service=service,
            options=parse_options(props["options"]) if "options" in props else None,
            mpgroup=check_name(mpgroup, "mpgroup name") if mpgroup else mpgroup,
        )

    def check_prereq(self, machine: Machine, args: VdsdevArgs, ctx: OpContext) -> None:
        _, vol = _get_volume(machine, args.volume, args.service)
        check_service_owner(machine, get_service(machine, "vds", args.service).owner, ctx)
        if args.options is not None and "excl" in args.options:
            _check_multiple_export(machine, replace(args, backend=vol.backend), args.options)

    def execute(self, machine: Machine, args: VdsdevArgs, ctx: OpContext) -> OpResult:
        ref = get_service(machine, "vds", args.service)

        def change(vols: tuple[VdsVolume, ...]) -> tuple[VdsVolume, ...]:
            out = []
            for v in vols:
                if v.name == args.volume:
                    if args.options is not None:
                        v = replace(v, options=args.options)
                    if args.mpgroup is not None:
                        v = replace(v, mpgroup=args.mpgroup)
                out.append(v)
            return tuple(out)

        return OpResult(machine=_change_volumes(machine, ref.owner, args.service, change))


@register
class RemoveVdsdev:
    spec = VerbSpec(
        name="remove-vdsdev",
        aliases=("rm-vdsdev", "remove-vdiskserverdevice", "rm-vdiskserverdevice"),
        flags=("-f",),
        min_operands=1,
        max_operands=1,
        usage="remove-vdsdev [-f] volume-name@service-name",
    )

    def check_arguments(self, request: Request) -> VdsdevArgs:
        check_request(request, self.spec)
        volume, service = split_at(request.operands[0], "volume")
        return VdsdevArgs(volume=volume, service=service, force=force_flag(request))

    def check_prereq(self, machine: Machine, args: VdsdevArgs, ctx: OpContext) -> None:
        _get_volume(machine, args.volume, args.service)
        check_service_owner(machine, get_service(machine, "vds", args.service).owner, ctx)
        users = vdisk_users(machine, args.service, args.volume)
        check_removable(f"Volume {args.volume}@{args.service}", users, args.force, ctx)

    def execute(self, machine: Machine, args: VdsdevArgs, ctx: OpContext) -> OpResult:
        ref = get_service(machine, "vds", args.service)

        def change(vols: tuple[VdsVolume, ...]) -> tuple[VdsVolume, ...]:
            return tuple(v for v in vols if v.name != args.volume)

        return OpResult(machine=_change_volumes(machine, ref.owner, args.service, change))


# ---------------------------------------------------------------- vdisk
@dataclass(frozen=True, slots=True)
class VdiskArgs:
    name: str
    ldom: str
    volume: str | None = None  # None = not given (set-vdisk)
    service: str | None = None
    timeout: int | None = None
    id: int | None = None
    force: bool = False


def _find_vdisk(cfg: DomainConfig, name: str) -> Vdisk | None:
    for vd in cfg.vdisks:
        if vd.name == name:
            return vd
    return None


@register
class AddVdisk:
    spec = VerbSpec(
        name="add-vdisk",
        props=("timeout", "id"),
        min_operands=3,
        max_operands=3,
        usage="add-vdisk [timeout=seconds] [id=disk-id] disk-name volume-name@service-name ldom",
    )

    def check_arguments(self, request: Request) -> VdiskArgs:
        props = check_request(request, self.spec)
        name, target, ldom = request.operands
        volume, service = split_at(target, "volume")
        return VdiskArgs(
            name=check_name(name, "disk name"),
            ldom=ldom,
            volume=volume,
            service=service,
            timeout=parse_device_id(props["timeout"], "timeout") if "timeout" in props else 0,
            id=parse_device_id(props["id"], "disk id") if "id" in props else None,
        )

    def check_prereq(self, machine: Machine, args: VdiskArgs, ctx: OpContext) -> None:
        dom = machine.domain(args.ldom)
        check_device_domain(machine, dom, ctx)
        cfg = effective_config(dom)
        if _find_vdisk(cfg, args.name) is not None:
            raise AlreadyExistsError(f"Vdisk {args.name} already exists in LDom {args.ldom}")
        assert args.volume is not None and args.service is not None
        _get_volume(machine, args.volume, args.service)
        _check_volume_free(machine, args.volume, args.service, domain=args.ldom, disk=args.name)
        if args.id is not None:
            for vd in cfg.vdisks:
                if vd.id == args.id:
                    raise AlreadyExistsError(
                        f"Device disk@{args.id} already exists in LDom {args.ldom} (vdisk {vd.name})"
                    )

    def execute(self, machine: Machine, args: VdiskArgs, ctx: OpContext) -> OpResult:
        dom = machine.domain(args.ldom)
        cfg = effective_config(dom)
        disk_id = args.id if args.id is not None else lowest_free_id({vd.id for vd in cfg.vdisks})
        assert args.volume is not None and args.service is not None
        vd = Vdisk(
            name=args.name, volume=args.volume, service=args.service, timeout=args.timeout or 0, id=disk_id
        )
        new, notices = apply_device_change(machine, dom, replace(cfg, vdisks=(*cfg.vdisks, vd)))
        return OpResult(machine=new, messages=notices)


@register
class SetVdisk:
    spec = VerbSpec(
        name="set-vdisk",
        props=("timeout", "volume"),
        min_operands=2,
        max_operands=2,
        usage="set-vdisk [timeout=seconds] [volume=volume-name@service-name] disk-name ldom",
    )

    def check_arguments(self, request: Request) -> VdiskArgs:
        props = check_request(request, self.spec)
        if not props:
            raise nothing_to_set(self.spec.usage, "timeout= and/or volume=")
        name, ldom = request.operands
        volume = service = None
        if "volume" in props:
            volume, service = split_at(props["volume"], "volume")
        return VdiskArgs(
            name=name,
            ldom=ldom,
            volume=volume,
            service=service,
            timeout=parse_device_id(props["timeout"], "timeout") if "timeout" in props else None,
        )

    def check_prereq(self, machine: Machine, args: VdiskArgs, ctx: OpContext) -> None:
        dom = machine.domain(args.ldom)
        if _find_vdisk(effective_config(dom), args.name) is None:
            raise NotFoundError(f"Vdisk {args.name} does not exist in LDom {args.ldom}")
        check_device_domain(machine, dom, ctx)
        if args.volume is not None and args.service is not None:
            _get_volume(machine, args.volume, args.service)
            _check_volume_free(machine, args.volume, args.service, domain=args.ldom, disk=args.name)

    def execute(self, machine: Machine, args: VdiskArgs, ctx: OpContext) -> OpResult:
        dom = machine.domain(args.ldom)
        cfg = effective_config(dom)
        out = []
        for vd in cfg.vdisks:
            if vd.name == args.name:
                if args.timeout is not None:
                    vd = replace(vd, timeout=args.timeout)
                if args.volume is not None and args.service is not None:
                    vd = replace(vd, volume=args.volume, service=args.service)
            out.append(vd)
        new, notices = apply_device_change(machine, dom, replace(cfg, vdisks=tuple(out)))
        return OpResult(machine=new, messages=notices)


@register
class RemoveVdisk:
    spec = VerbSpec(
        name="remove-vdisk",
        aliases=("rm-vdisk",),
        flags=("-f",),
        min_operands=2,
        max_operands=2,
        usage="remove-vdisk [-f] disk-name ldom",
    )

    def check_arguments(self, request: Request) -> VdiskArgs:
        check_request(request, self.spec)
        name, ldom = request.operands
        return VdiskArgs(name=name, ldom=ldom, force=force_flag(request))

    def check_prereq(self, machine: Machine, args: VdiskArgs, ctx: OpContext) -> None:
        dom = machine.domain(args.ldom)
        if _find_vdisk(effective_config(dom), args.name) is None:
            raise NotFoundError(f"Vdisk {args.name} does not exist in LDom {args.ldom}")
        check_device_domain(machine, dom, ctx)

    def execute(self, machine: Machine, args: VdiskArgs, ctx: OpContext) -> OpResult:
        dom = machine.domain(args.ldom)
        cfg = effective_config(dom)
        new_cfg = replace(cfg, vdisks=tuple(vd for vd in cfg.vdisks if vd.name != args.name))
        new, notices = apply_device_change(machine, dom, new_cfg, removed=True)
        return OpResult(machine=new, messages=notices)
