"""The world the core operation tests share: a t5240 whose primary was shrunk the LDoms way (set-mau 1,
set-vcpu 8, set-mem 4G, reboot), and `do`/`ok` to run a verb's words through `ldoms.ops.base.run`."""

from __future__ import annotations

from ldoms.binding import factory_default
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.ops.base import OpContext, OpResult, Request, lookup, run

CTX = OpContext(now=1000.0, random_seed=7)


def do(m: Machine, verb: str, *words: str, ctx: OpContext = CTX, **value_flags: str) -> OpResult:
    spec = lookup(verb).spec
    props, operands, flags = [], [], {f"-{k}": v for k, v in value_flags.items()}
    for w in words:
        key, sep, value = w.partition("=")
        if sep and key in spec.props:
            props.append((key, value))
        elif w.startswith("-") and len(w) == 2:
            flags[w] = True
        else:
            operands.append(w)
    return run(m, Request(verb=verb, flags=flags, props=tuple(props), operands=tuple(operands)), ctx)


def ok(m: Machine, verb: str, *words: str, ctx: OpContext = CTX, **value_flags: str) -> Machine:
    return do(m, verb, *words, ctx=ctx, **value_flags).machine


def shrunk() -> Machine:
    m = factory_default(load_platform("t5240"), "host1", seed=1)
    for verb, n in (("set-mau", "1"), ("set-vcpu", "8"), ("set-mem", "4G")):
        m = ok(m, verb, n, "primary")
    return ok(m, "stop", "primary")
