"""Domain variables: add, set, remove, list."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ldoms.binding import factory_default
from ldoms.errors import AlreadyExistsError, BusyError, NotFoundError, UsageError
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.ops.base import OpContext, Request, lookup, run

CTX = OpContext(now=1000.0, random_seed=7)


def ok(m: Machine, verb: str, *operands: str, ctx: OpContext = CTX, props: tuple = ()) -> Machine:
    return run(m, Request(verb=verb, operands=operands, props=props), ctx).machine


BASE = ok(factory_default(load_platform("t5240"), "host1", seed=1), "add-domain", "ldg1")


def variables(m: Machine, name: str = "ldg1") -> dict[str, str]:
    return dict(m.domain(name).config.variables)


def test_set_add_remove() -> None:
    m = ok(BASE, "set-var", "auto-boot?=false", "boot-device=/virtual-devices@100/disk@0:a", "ldg1")
    assert variables(m) == {"auto-boot?": "false", "boot-device": "/virtual-devices@100/disk@0:a"}
    m = ok(m, "set-variable", "auto-boot?=true", "ldg1")
    assert variables(m)["auto-boot?"] == "true"
    m = ok(m, "add-var", "nvramrc=", "ldg1", props=(("use-nvramrc?", "true"),))  # as props, as from the CLI
    assert variables(m)["nvramrc"] == "" and variables(m)["use-nvramrc?"] == "true"
    m = ok(m, "set-var", "a=1=2", "a=3", "ldg1")  # value keeps '='; the last assignment wins
    assert variables(m)["a"] == "3"
    m = ok(m, "rm-var", "auto-boot?", "nvramrc", "ldg1")
    assert set(variables(m)) == {"boot-device", "use-nvramrc?", "a"}


def test_variables_on_active_and_delayed_control_domain() -> None:
    m = ok(BASE, "set-mem", "4G", "primary")
    m = ok(m, "set-var", "auto-boot?=false", "primary")
    p = m.control
    assert p.config.variable("auto-boot?") == "false" == p.pending.variable("auto-boot?")
    m = ok(m, "rm-var", "auto-boot?", "primary")
    assert m.control.pending.variable("auto-boot?") is None


def test_errors() -> None:
    m = ok(BASE, "set-var", "x=1", "ldg1")
    with pytest.raises(AlreadyExistsError, match="Variable x already exists"):
        ok(m, "add-variable", "x=2", "ldg1")
    with pytest.raises(NotFoundError, match="Variable y not found"):
        ok(m, "remove-variable", "y", "ldg1")
    with pytest.raises(NotFoundError, match="LDom ldg2 not found"):
        ok(m, "set-var", "x=1", "ldg2")
    for verb, ops in (
        ("set-var", ("ldg1",)),
        ("set-var", ("novalue", "ldg1")),
        ("set-var", ("=1", "ldg1")),
        ("set-var", ("a b=1", "ldg1")),
        ("set-var", ("a=x|y", "ldg1")),
        ("rm-var", ("ldg1",)),
        ("set-var", ()),
    ):
        with pytest.raises(UsageError):
            ok(m, verb, *ops)
    with pytest.raises(UsageError):
        run(m, Request(verb="set-var", operands=("x=1", "ldg1"), flags={"-f": True}), CTX)
    with pytest.raises(BusyError):
        ok(m, "set-var", "x=2", "ldg1", ctx=replace(CTX, migrating={"ldg1": "to host2"}))
    dr = ok(m, "set-mem", "4G", "primary")
    with pytest.raises(BusyError, match="delayed reconfiguration"):
        ok(dr, "set-var", "x=2", "ldg1")


def test_list_variable_grammar() -> None:
    m = ok(BASE, "set-var", "x=1", "ldg1")
    assert run(m, Request(verb="ls-var", operands=("ldg1",)), CTX).machine is m
    args = lookup("list-variable").check_arguments(Request(verb="list-variable", operands=("x", "x", "ldg1")))
    assert args.names == ("x",) and args.ldom == "ldg1"
    assert not lookup("ls-var").spec.mutates
    with pytest.raises(NotFoundError, match="Variable y not found"):
        run(m, Request(verb="list-var", operands=("y", "ldg1")), CTX)
    with pytest.raises(NotFoundError, match="LDom ldg9 not found"):
        run(m, Request(verb="list-variable", operands=("ldg9",)), CTX)
    with pytest.raises(UsageError):
        run(m, Request(verb="list-variable"), CTX)
