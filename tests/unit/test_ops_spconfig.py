"""SP configurations: save, select, remove; the SP's limits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ldoms.binding import factory_default
from ldoms.errors import (
    AlreadyExistsError,
    BusyError,
    NotFoundError,
    OpPrereqError,
    ResourceError,
    UsageError,
)
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.ops.base import OpContext, Request, lookup, run

CTX = OpContext(now=1000.0, random_seed=7)
BASE = factory_default(load_platform("t5240"), "host1", seed=1)


def ok(m: Machine, verb: str, *operands: str, ctx: OpContext = CTX) -> Machine:
    return run(m, Request(verb=verb, operands=operands), ctx).machine


def test_add_set_remove() -> None:
    assert (BASE.current_spconfig, BASE.next_spconfig) == ("factory-default", "factory-default")
    m = ok(BASE, "set-mem", "4G", "primary")  # saved with the pending delayed reconfiguration
    m = ok(m, "add-config", "initial")
    assert [c.name for c in m.spconfigs] == ["initial"]
    assert m.spconfigs[0].domains == m.domains and m.spconfigs[0].domains[0].pending is not None
    assert (m.current_spconfig, m.next_spconfig, m.spconfig_modified) == ("initial", "initial", False)
    m = ok(m, "add-spconfig", "second")
    m = ok(m, "set-config", "initial")
    assert (m.current_spconfig, m.next_spconfig) == ("second", "initial")
    m = ok(m, "set-spconfig", "factory-default")
    assert m.next_spconfig == "factory-default"
    m = ok(m, "set-spconfig", "initial")
    m = ok(m, "rm-config", "initial")  # the next-poweron one: the mark goes back to factory-default
    assert [c.name for c in m.spconfigs] == ["second"] and m.next_spconfig == "factory-default"
    m = ok(m, "remove-spconfig", "second")  # the current one: the running config is no longer saved
    assert m.spconfigs == () and m.current_spconfig == "factory-default" and m.spconfig_modified


def test_limits_and_errors() -> None:
    m = BASE
    for i in range(7):
        m = ok(m, "add-spconfig", f"c{i}")
    with pytest.raises(ResourceError, match="factory-default included"):
        ok(m, "add-spconfig", "c7")
    with pytest.raises(AlreadyExistsError, match="Configuration c0 already exists"):
        ok(m, "add-spconfig", "c0")
    with pytest.raises(AlreadyExistsError):
        ok(BASE, "add-spconfig", "factory-default")
    with pytest.raises(OpPrereqError, match="factory-default configuration cannot be removed"):
        ok(m, "remove-spconfig", "factory-default")
    with pytest.raises(NotFoundError, match="Configuration nosuch not found"):
        ok(m, "remove-spconfig", "nosuch")
    with pytest.raises(NotFoundError, match="Configuration nosuch not found"):
        ok(m, "set-spconfig", "nosuch")
    for bad in (("a" * 65,), (), ("a", "b"), ("1st",)):
        with pytest.raises(UsageError):
            ok(BASE, "add-spconfig", *bad)
    assert ok(BASE, "add-spconfig", "a" * 64).current_spconfig == "a" * 64
    with pytest.raises(BusyError, match="migration"):
        ok(BASE, "add-spconfig", "x", ctx=replace(CTX, migrating={"ldg1": "to host2"}))


def test_list_spconfig_grammar() -> None:
    r = run(BASE, Request(verb="ls-config"), CTX)
    assert r.machine is BASE and not lookup("list-spconfig").spec.mutates
    with pytest.raises(UsageError):
        run(BASE, Request(verb="list-spconfig", operands=("x",)), CTX)
    with pytest.raises(UsageError):
        run(BASE, Request(verb="list-spconfig", flags={"-r": True}), CTX)
