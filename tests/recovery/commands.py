"""The random-kills campaign's commands and its model.

`choose(rng, machine)` picks the next `ldm` command line from the host's current state: domains ldg1..ldg5
(add/remove; vCPUs, memory and crypto units; vnets, vdisks, variables; bind/unbind/start/stop, with a bias
towards the next step of a guest's life so that guests do get running), services (vds, vdsdev, vsw), SP
configurations, and delayed reconfigurations of primary and its reboot.  Names sometimes miss, so refusals
are exercised too.

`predict(machine, argv)` is the model: the same request run by `ldoms.ops.base.run` on the machine ldmd
served before the command (ldmd's own code, without its effects, store and locks): the new machine, or the
refusal's message.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ldoms.cli.parse import parse_args
from ldoms.errors import LdmError
from ldoms.model.domain import Domain, DomainState
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, lookup, run

NAMES = ("ldg1", "ldg2", "ldg3", "ldg4", "ldg5")
MAX_ACTIVE = 3  # guest processes at once: each is a Python interpreter on a shared 2-core machine


SETUP: tuple[tuple[str, ...], ...] = (
    ("set-crypto", "1", "primary"),
    ("set-vcpu", "16", "primary"),
    ("set-memory", "4G", "primary"),
    ("stop-domain", "primary"),  # the control domain's reboot applies the delayed reconfiguration
    ("add-vcc", "port-range=5000-5100", "primary-vcc0", "primary"),
    ("add-vds", "primary-vds0", "primary"),
    ("add-vdsdev", "/var/img/vol1", "vol1@primary-vds0"),
    ("add-vdsdev", "/var/img/vol2", "vol2@primary-vds0"),
    ("add-vdsdev", "/var/img/vol3", "vol3@primary-vds0"),
    ("add-vsw", "net-dev=eth0", "primary-vsw0", "primary"),
)


# ------------------------------------------------------------------------------------------- commands
def guests_of(m: Machine, *states: DomainState) -> list[Domain]:
    return [d for d in m.domains if not d.config.is_control and (not states or d.state in states)]


def _pick(rng: random.Random, m: Machine, *states: DomainState) -> str:
    """A guest's name, mostly one in `states` (any guest, or a name from the pool, sometimes: refusals)."""
    preferred = [d.name for d in guests_of(m, *states)]
    if preferred and rng.random() < 0.85:
        return rng.choice(preferred)
    others = [d.name for d in guests_of(m)]
    return rng.choice(others) if others and rng.random() < 0.7 else rng.choice(NAMES)


def _domain_cmd(rng: random.Random, m: Machine) -> tuple[str, ...]:
    guests = guests_of(m)
    free = [n for n in NAMES if m.find(n) is None]
    if free and (len(guests) < 2 or rng.random() < 0.45):
        return ("add-domain", rng.choice(free))
    return ("remove-domain", _pick(rng, m, DomainState.INACTIVE))


def _lifecycle_cmd(rng: random.Random, m: Machine) -> tuple[str, ...]:
    active = guests_of(m, DomainState.ACTIVE)
    bound = guests_of(m, DomainState.BOUND)
    choices: list[tuple[str, ...]] = [
        ("bind-domain", _pick(rng, m, DomainState.INACTIVE)),
        ("unbind-domain", _pick(rng, m, DomainState.BOUND)),
        ("stop-domain", _pick(rng, m, DomainState.ACTIVE)),
    ]
    if len(active) < MAX_ACTIVE:
        choices.append(("start-domain", _pick(rng, m, DomainState.BOUND)))
        if bound and len(active) + len(bound) <= MAX_ACTIVE and rng.random() < 0.3:
            choices.append(("start-domain", "-a"))  # every bound guest: all of them start, or none
    if active and rng.random() < 0.2:
        choices.append(("stop-domain", "-a"))  # every active guest: committed at once, guests stopped after
    return rng.choice(choices)


def _progress_cmd(rng: random.Random, m: Machine) -> tuple[str, ...]:
    """The next step of a guest's life: vCPUs, memory, bind, start, stop or unbind (gets guests running)."""
    guests = guests_of(m)
    if not guests:
        return ("add-domain", rng.choice(NAMES))
    d = rng.choice(guests)
    active = len(guests_of(m, DomainState.ACTIVE))
    if d.state == DomainState.INACTIVE:
        if not d.config.vcpus:
            return ("add-vcpu", str(rng.randint(1, 4)), d.name)
        if not d.config.memory:
            return ("add-memory", rng.choice(("256M", "512M", "1G")), d.name)
        return ("bind-domain", d.name)
    if d.state == DomainState.BOUND:
        return (
            ("start-domain", d.name)
            if active < MAX_ACTIVE and rng.random() < 0.7
            else ("unbind-domain", d.name)
        )
    return ("stop-domain", d.name)


def _resource_cmd(rng: random.Random, m: Machine) -> tuple[str, ...]:
    mode = rng.choice(("add", "set", "remove"))
    what = rng.choice(("vcpu", "memory", "crypto"))
    name = _pick(rng, m)
    if what == "vcpu":
        n = str(rng.randint(1, 4))
    elif what == "memory":
        n = rng.choice(("256M", "512M", "1G"))
    else:
        n = str(rng.randint(0 if mode == "set" else 1, 1))
    return (f"{mode}-{what}", n, name)


def _vio_cmd(rng: random.Random, m: Machine) -> tuple[str, ...]:
    name = _pick(rng, m)
    k = rng.randint(0, 1)
    return rng.choice(
        (
            ("add-vnet", f"vnet{k}", rng.choice(("primary-vsw0", "primary-vsw1")), name),
            ("remove-vnet", f"vnet{k}", name),
            ("add-vdisk", f"vdisk{k}", f"vol{rng.randint(1, 4)}@primary-vds0", name),
            ("remove-vdisk", f"vdisk{k}", name),
            ("add-vdsdev", "/var/img/vol4", "vol4@primary-vds0"),
            ("remove-vdsdev", "vol4@primary-vds0"),
            ("add-vsw", "net-dev=eth1", "primary-vsw1", "primary"),
            ("remove-vsw", "primary-vsw1"),
            ("add-vds", "primary-vds1", "primary"),
            ("remove-vds", "primary-vds1"),
        )
    )


def _variable_cmd(rng: random.Random, m: Machine) -> tuple[str, ...]:
    name = _pick(rng, m) if rng.random() < 0.8 else "primary"
    return rng.choice(
        (
            ("set-variable", f"auto-boot?={rng.choice(('true', 'false'))}", name),
            ("add-variable", "boot-device=disk", name),
            ("remove-variable", "boot-device", name),
        )
    )


def _spconfig_cmd(rng: random.Random, m: Machine) -> tuple[str, ...]:
    cfg = rng.choice(("cfg1", "cfg2"))
    return rng.choice(
        (
            ("add-spconfig", cfg),
            ("set-spconfig", rng.choice((cfg, "factory-default"))),
            ("remove-spconfig", cfg),
        )
    )


def _primary_cmd(rng: random.Random, m: Machine) -> tuple[str, ...]:
    return rng.choice(
        (
            ("set-vcpu", rng.choice(("8", "16", "24")), "primary"),
            ("set-memory", rng.choice(("4G", "5G", "6G")), "primary"),
            ("set-crypto", rng.choice(("1", "2")), "primary"),
            ("stop-domain", "primary"),
        )
    )


END_RECONF = (("stop-domain", "primary"), ("stop-domain", "primary"), ("remove-reconf", "primary"))

KINDS: tuple[tuple[Callable[[random.Random, Machine], tuple[str, ...]], int], ...] = (
    (_domain_cmd, 12),
    (_progress_cmd, 24),
    (_lifecycle_cmd, 10),
    (_resource_cmd, 20),
    (_vio_cmd, 16),
    (_variable_cmd, 7),
    (_spconfig_cmd, 6),
    (_primary_cmd, 9),
)


def choose(rng: random.Random, m: Machine) -> tuple[str, ...]:
    if m.control.pending is not None and rng.random() < 0.4:
        # Primary's delayed reconfiguration refuses changes to other domains: end it soon (reboot, cancel).
        return rng.choice(END_RECONF)
    gens, weights = zip(*KINDS, strict=True)
    return rng.choices(gens, weights)[0](rng, m)


# ------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True, slots=True)
class Prediction:
    machine: Machine | None  # None: refused
    error: str = ""


def predict(pre: Machine, argv: tuple[str, ...]) -> Prediction:
    try:
        request = parse_args(lookup(argv[0]).spec, list(argv[1:]))
        return Prediction(run(pre, request, OpContext(now=time.time())).machine)
    except LdmError as e:
        return Prediction(None, e.message)


def touched(argv: tuple[str, ...], pre: Machine) -> set[str]:
    """Guests whose guest process the command may start or stop."""
    if not argv or argv[0] not in ("start-domain", "stop-domain"):
        return set()
    if "-a" in argv:
        return {d.name for d in guests_of(pre)}
    return set(argv[1:])
