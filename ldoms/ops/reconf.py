"""Reconfiguration: how a change of constraints reaches a domain, and how a pending one is cancelled.

Theory of operation (LDoms 1.2 rules, SPEC §1.3-1.4).  A change to a domain's constraints (vCPUs, memory,
crypto units, I/O buses) takes effect according to the domain's state:

* **inactive**: only the constraints change; resources are found later, at bind time;
* **bound**: the domain is rebound at once with `rebind_domain`, all or nothing (a `ResourceError` leaves the
  machine unchanged);
* **active guest**: only what the guest OS can take on the fly.  vCPUs can (CPU dynamic reconfiguration,
  except after a 1.2-style migration, which disables CPU DR until the guest reboots).  Memory, crypto units
  and I/O buses cannot: 1.2 has no memory DR, crypto DR or I/O DR, so the request is refused and names the
  rule;
* **active control domain**: the change cannot reach a running OS, so it becomes a *delayed
  reconfiguration*: the new constraints are recorded as `pending` and applied when `primary` reboots
  (`ldm stop-domain primary`, see `lifecycle`).  The first one prints LDoms' "Initiating delayed reconfigure"
  notice, later ones the "Notice: ... in the process of a delayed reconfiguration".  vCPUs are the exception
  while nothing is pending: like a guest, the control domain takes them by CPU DR (LDoms prints the delayed
  notice only "after the first operation that cannot be performed dynamically"); once a delayed
  reconfiguration is pending every change to `primary` is deferred (SPEC §1.4).

A delayed change is validated at once against the resources the reboot will need (`rebind_domain` on the
current machine), so the reboot itself cannot fail on a reason the request could have seen.

`cancel-operation reconf` drops the pending constraints (refused once a `remove-*` of a virtual I/O device
was already carried out as a delayed reconfiguration, SPEC §1.4).  `cancel-operation migration` is the seam
for the migration engine: the operation validates and returns a `CancelMigration` effect that the daemon
hands to the engine; a source left in the *error* state is cleared here, in the model.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from ldoms import binding
from ldoms.errors import NotFoundError, OpPrereqError, StateError, UsageError
from ldoms.model.domain import Domain, DomainConfig, DomainState, MigrationRole
from ldoms.model.machine import Machine
from ldoms.ops.base import CancelMigration, OpContext, OpResult, Request, VerbSpec, register
from ldoms.ops.common import (
    check_name,
    delayed_update,
    effective_config,
    get_domain,
    is_delayed,
)

# The control domain takes vCPU changes by CPU DR while no delayed reconfiguration is pending (LDoms 1.2 on
# UltraSPARC T2: the delayed notice comes with "the first operation that cannot be performed dynamically").
# Set to False to make every change to the active control domain a delayed reconfiguration.
CONTROL_CPU_DR = True


class Resource(enum.StrEnum):
    CPU = "vcpu"
    MEMORY = "memory"
    CRYPTO = "crypto"
    IO = "io"
    IDENTITY = "identity"  # mac-addr, hostid, cpu-arch: part of the domain's MD


# What an active guest cannot change, and the feature 1.2 lacks (for the refusal message).
_NO_DR: dict[Resource, tuple[str, str]] = {
    Resource.MEMORY: ("memory", "memory dynamic reconfiguration"),
    Resource.CRYPTO: ("crypto units", "crypto unit dynamic reconfiguration"),
    Resource.IO: ("I/O devices", "I/O dynamic reconfiguration"),
    Resource.IDENTITY: ("MAC address, host ID and cpu-arch", "a way to change them in a running OS"),
}


@dataclass(frozen=True, slots=True)
class Change:
    machine: Machine
    messages: tuple[str, ...] = ()


def strands_of(config: DomainConfig, strands_per_core: int) -> int:
    """How many strands a configuration asks for (whole cores count all their strands)."""
    return config.vcpus * strands_per_core if config.whole_core else config.vcpus


def plan_change(machine: Machine, dom: Domain, new_config: DomainConfig, resource: Resource) -> Change:
    """The machine after giving `dom` the constraints `new_config`, by the state rules above.

    Raises (nothing changed) when the state forbids it or when the resources are not there.  Pure and
    deterministic: operations call it from `check_prereq` to validate and again from `execute` to build.
    """
    if dom.state == DomainState.INACTIVE:
        return Change(machine.with_domain(replace(dom, config=new_config)))
    if is_delayed(dom):
        dynamic_cpu = (
            resource == Resource.CPU
            and CONTROL_CPU_DR
            and not dom.delayed_reconfig
            and new_config.whole_core == dom.config.whole_core
        )
        if dynamic_cpu:
            return _rebind(machine, dom, new_config, resource)
        # Validate now what the reboot will do, so that the reboot cannot fail.
        binding.rebind_domain(machine, dom, new_config)
        new_machine, notices = delayed_update(machine, dom, new_config)
        return Change(new_machine, notices)
    if dom.state == DomainState.ACTIVE:
        if resource == Resource.CPU:
            if dom.cpu_dr_disabled:
                raise StateError(
                    f"The virtual CPUs of LDom {dom.name} cannot be changed: CPU dynamic reconfiguration is "
                    "disabled after its migration until the domain reboots"
                )
            return _rebind(machine, dom, new_config, resource)
        what, feature = _NO_DR[resource]
        raise StateError(
            f"The {what} of LDom {dom.name} cannot be changed while it is active: LDoms 1.2 has no "
            f"{feature} for guest domains; stop the domain first (ldm stop-domain {dom.name})"
        )
    return _rebind(machine, dom, new_config, resource)


def _rebind(machine: Machine, dom: Domain, new_config: DomainConfig, resource: Resource) -> Change:
    new_bindings = binding.rebind_domain(machine, dom, new_config)
    if resource == Resource.CPU and dom.bindings is not None:
        _check_maus_keep_strands(machine, dom, new_bindings.strands, new_bindings.maus)
    return Change(machine.with_domain(replace(dom, config=new_config, bindings=new_bindings)))


def _check_maus_keep_strands(
    machine: Machine, dom: Domain, strands: tuple[int, ...], maus: tuple[int, ...]
) -> None:
    """A CPU cannot leave a domain while the crypto unit of its core stays there (SPEC §1.2)."""
    old_maus = dom.bindings.maus if dom.bindings is not None else ()
    by_id = {m.id: m for m in machine.platform.maus}
    held = set(strands)
    for mau_id in old_maus:
        mau = by_id[mau_id]
        if mau_id not in maus or not held.intersection(mau.cpuset):
            raise OpPrereqError(
                f"Cannot remove the virtual CPUs of LDom {dom.name}: crypto unit {mau_id} "
                f"(cpuset {mau.cpuset}) would lose its last strand; a crypto unit needs a strand of its own "
                f"core, so remove crypto units first (ldm set-crypto)",
                code="crypto-strand",
            )


def check_crypto_strands(dom: Domain, new_config: DomainConfig, strands_per_core: int) -> None:
    """Refuse a vCPU removal that leaves fewer strands than the crypto units that must keep one each."""
    if dom.bindings is None or dom.state == DomainState.INACTIVE:
        return
    old = strands_of(effective_config(dom), strands_per_core)
    new = strands_of(new_config, strands_per_core)
    if new < old and new < new_config.mau:
        raise OpPrereqError(
            f"Cannot reduce LDom {dom.name} to {new} strand(s): its {new_config.mau} crypto unit(s) would "
            "lose their last strand; a crypto unit needs a strand of its own core, so remove crypto units "
            "first (ldm set-crypto)",
            code="crypto-strand",
        )


# ---------------------------------------------------------------- cancel-operation (migration | reconf) ldom
@dataclass(frozen=True, slots=True)
class CancelArgs:
    what: str  # "reconf" or "migration"
    ldom: str


def _cancel_reconf_check(dom: Domain) -> None:
    if dom.pending is None:
        raise StateError(f"No delayed reconfiguration in progress for LDom {dom.name}")
    if dom.pending_vio_removed:
        raise StateError(
            f"The delayed reconfiguration of LDom {dom.name} cannot be cancelled: a remove command already "
            "performed a delayed reconfiguration on virtual I/O devices; reboot the domain instead"
        )


def _cancel_reconf(machine: Machine, dom: Domain) -> OpResult:
    new = replace(dom, pending=None, pending_vio_removed=False)
    return OpResult(
        machine=machine.with_domain(new),
        messages=(f"Delayed reconfiguration of LDom {dom.name} cancelled",),
    )


@register
class CancelOperation:
    spec = VerbSpec(
        name="cancel-operation",
        aliases=("cancel-op",),
        min_operands=2,
        max_operands=2,
        usage="cancel-operation (migration | reconf) <ldom>",
    )

    def check_arguments(self, request: Request) -> CancelArgs:
        if len(request.operands) != 2:
            raise UsageError("Usage: ldm " + self.spec.usage)
        what, ldom = request.operands
        if what not in ("migration", "reconf"):
            raise UsageError(f"Invalid operation '{what}': cancel-operation takes 'migration' or 'reconf'")
        return CancelArgs(what=what, ldom=check_name(ldom))

    def check_prereq(self, machine: Machine, args: CancelArgs, ctx: OpContext) -> None:
        dom = get_domain(machine, args.ldom)
        if args.what == "reconf":
            _cancel_reconf_check(dom)
            return
        if dom.migration == MigrationRole.ERROR and args.ldom not in ctx.migrating:
            return  # recovery of a source left in the error state (SPEC §4.3)
        if args.ldom not in ctx.migrating:
            raise NotFoundError(f"No migration in progress for LDom {args.ldom}")
        if dom.migration == MigrationRole.TARGET:
            raise StateError(
                f"The migration of LDom {args.ldom} can only be cancelled on the source machine "
                f"({ctx.migrating[args.ldom]})"
            )

    def execute(self, machine: Machine, args: CancelArgs, ctx: OpContext) -> OpResult:
        dom = get_domain(machine, args.ldom)
        if args.what == "reconf":
            return _cancel_reconf(machine, dom)
        if args.ldom in ctx.migrating:
            # Seam: the migration engine (in the daemon) aborts the running migration; the model changes
            # when the engine commits the abort.
            return OpResult(machine=machine, effects=(CancelMigration(domain=args.ldom),))
        # A source left in the error state: this copy is the master again (SPEC §4.3).
        restored = machine.with_domain(replace(dom, migration=MigrationRole.NONE))
        return OpResult(
            machine=restored,
            messages=(f"Migration error state of LDom {args.ldom} cleared: this copy is the master",),
        )


@register
class RemoveReconf:
    """`remove-reconf ldom` (the XML action, 1.2) and its later spelling `cancel-reconf` (2.0)."""

    spec = VerbSpec(
        name="remove-reconf",
        aliases=("rm-reconf", "cancel-reconf"),
        min_operands=1,
        max_operands=1,
        usage="remove-reconf <ldom>",
    )

    def check_arguments(self, request: Request) -> CancelArgs:
        if len(request.operands) != 1:
            raise UsageError("Usage: ldm " + self.spec.usage)
        return CancelArgs(what="reconf", ldom=check_name(request.operands[0]))

    def check_prereq(self, machine: Machine, args: CancelArgs, ctx: OpContext) -> None:
        _cancel_reconf_check(get_domain(machine, args.ldom))

    def execute(self, machine: Machine, args: CancelArgs, ctx: OpContext) -> OpResult:
        return _cancel_reconf(machine, get_domain(machine, args.ldom))
