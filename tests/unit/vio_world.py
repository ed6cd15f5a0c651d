"""The small world the virtual I/O operation tests share: a factory-default t5240 with inactive guests, and
`req`/`do`/`apply` to run command lines through `ldoms.ops.base.run`."""

from __future__ import annotations

from dataclasses import replace

from ldoms.binding import factory_default
from ldoms.model.domain import Bindings, Domain, DomainConfig, DomainState
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.ops.base import OpContext, OpResult, Request, run
from ldoms.units import G


def world(*guests: str) -> Machine:
    m = factory_default(load_platform("t5240"), "host1", seed=1)
    for i, name in enumerate(guests or ("ldg1", "ldg2")):
        cfg = DomainConfig(
            name=name, uuid=f"uuid-{name}", hostid=0x100 + i, mac=0x00144FAA0000 + i, vcpus=8, memory=1 * G
        )
        m = m.with_domain(Domain(config=cfg))
    return m


def req(line: str) -> Request:
    """'add-vdsdev options=ro /a vol@vds' -> Request: '-x' flags, 'k=v' props, the rest operands."""
    verb, *words = line.split()
    flags = {w: True for w in words if w.startswith("-")}
    props = tuple(tuple(w.split("=", 1)) for w in words if "=" in w and not w.startswith("-"))
    operands = tuple(w for w in words if not w.startswith("-") and "=" not in w)
    return Request(verb=verb, flags=flags, props=props, operands=operands)  # type: ignore[arg-type]


def do(m: Machine, line: str, ctx: OpContext | None = None) -> OpResult:
    return run(m, req(line), ctx or OpContext(now=0.0))


def apply(m: Machine, *lines: str) -> Machine:
    for line in lines:
        m = do(m, line).machine
    return m


def with_state(m: Machine, name: str, state: DomainState) -> Machine:
    d = m.domain(name)
    bindings = None if state == DomainState.INACTIVE else Bindings(strands=(60, 61))
    return m.with_domain(replace(d, state=state, bindings=bindings))
