"""vCPU, memory, crypto and I/O verbs: arithmetic, state rules, and every refusal."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ops_world import CTX, shrunk  # tests/unit is on sys.path (rootdir import)

from ldoms.errors import (
    AlreadyExistsError,
    BusyError,
    NotFoundError,
    OpPrereqError,
    ResourceError,
    StateError,
    UsageError,
)
from ldoms.model.domain import DomainState, NamedMblock
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, lookup, run
from ldoms.ops.common import DR_FIRST_NOTICE
from ldoms.units import G, M

MIGRATING = replace(CTX, migrating={"ldg1": "to host2"})


def do(m: Machine, verb: str, *words: str, ctx: OpContext = CTX) -> OpResult:
    spec = lookup(verb).spec
    props, operands, flags = [], [], {}
    for w in words:
        key, sep, value = w.partition("=")
        if sep and key in spec.props:
            props.append((key, value))
        elif w.startswith("-") and len(w) == 2:
            flags[w] = True
        else:
            operands.append(w)
    return run(m, Request(verb=verb, flags=flags, props=tuple(props), operands=tuple(operands)), ctx)


def ok(m: Machine, verb: str, *words: str, ctx: OpContext = CTX) -> Machine:
    return do(m, verb, *words, ctx=ctx).machine


BASE = shrunk()


def guest(state: DomainState, *, vcpus: str = "8", mem: str = "2G") -> Machine:
    m = ok(BASE, "add-domain", "ldg1")
    m = ok(m, "set-vcpu", vcpus, "ldg1")
    m = ok(m, "set-mem", mem, "ldg1")
    if state != DomainState.INACTIVE:
        m = ok(m, "bind", "ldg1")
    if state == DomainState.ACTIVE:
        m = ok(m, "start", "ldg1")
    return m


# ---------------------------------------------------------------- vCPUs
def test_vcpu_arithmetic_on_inactive_changes_constraints_only() -> None:
    m = guest(DomainState.INACTIVE)
    m = ok(m, "add-vcpu", "4", "ldg1")
    assert m.domain("ldg1").config.vcpus == 12 and m.domain("ldg1").bindings is None
    m = ok(m, "rm-vcpu", "10", "ldg1")
    assert m.domain("ldg1").config.vcpus == 2
    m = ok(m, "set-vcpu", "-c", "2", "ldg1")
    cfg = m.domain("ldg1").config
    assert cfg.whole_core and cfg.vcpus == 2


def test_vcpu_on_bound_rebinds() -> None:
    m = ok(guest(DomainState.BOUND), "add-vcpu", "8", "ldg1")
    assert len(m.domain("ldg1").bindings.strands) == 16
    m = ok(m, "remove-vcpu", "12", "ldg1")
    assert len(m.domain("ldg1").bindings.strands) == 4


def test_vcpu_on_active_guest_is_cpu_dr() -> None:
    r = do(guest(DomainState.ACTIVE), "set-vcpu", "3", "ldg1")
    d = r.machine.domain("ldg1")
    assert d.state == DomainState.ACTIVE and len(d.bindings.strands) == 3 and r.messages == ()


def test_vcpu_refusals() -> None:
    active = guest(DomainState.ACTIVE)
    with pytest.raises(StateError, match="CPU dynamic reconfiguration is disabled"):
        m = active.with_domain(replace(active.domain("ldg1"), cpu_dr_disabled=True))
        do(m, "add-vcpu", "1", "ldg1")
    with pytest.raises(StateError, match=r"whole-core constraint .* only while it is inactive"):
        do(guest(DomainState.BOUND), "set-vcpu", "-c", "1", "ldg1")
    with pytest.raises(OpPrereqError, match="does not have the whole-core constraint"):
        do(guest(DomainState.INACTIVE), "add-vcpu", "-c", "1", "ldg1")
    wc = ok(guest(DomainState.INACTIVE), "set-vcpu", "-c", "1", "ldg1")
    with pytest.raises(OpPrereqError, match="has the whole-core constraint"):
        do(wc, "add-vcpu", "1", "ldg1")
    with pytest.raises(OpPrereqError, match="needs at least one"):
        do(active, "rm-vcpu", "8", "ldg1")
    with pytest.raises(ResourceError, match="only 128"):
        do(active, "set-vcpu", "129", "ldg1")
    with pytest.raises(ResourceError, match="only 16"):
        do(guest(DomainState.INACTIVE), "set-vcpu", "-c", "17", "ldg1")
    with pytest.raises(ResourceError):
        do(active, "add-vcpu", "120", "ldg1")  # primary holds 8 strands: only 112 are free
    for bad in ("0", "-1", "x", "1.5"):
        with pytest.raises(UsageError):
            do(active, "add-vcpu", bad, "ldg1")
    with pytest.raises(UsageError):
        do(active, "add-vcpu", "1")
    with pytest.raises(UsageError):
        do(active, "add-vcpu", "1", "ldg1", "extra")
    with pytest.raises(UsageError):
        do(active, "add-vcpu", "-z", "1", "ldg1")
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        do(active, "add-vcpu", "1", "nosuch")
    with pytest.raises(BusyError, match="being migrated"):
        do(active, "add-vcpu", "1", "ldg1", ctx=MIGRATING)


def test_vcpu_removal_keeps_mau_strands() -> None:
    m = ok(guest(DomainState.INACTIVE, vcpus="16"), "set-crypto", "2", "ldg1")
    m = ok(m, "bind", "ldg1")
    assert len(m.domain("ldg1").bindings.maus) == 2
    with pytest.raises(OpPrereqError, match="crypto unit"):
        do(m, "set-vcpu", "1", "ldg1")
    m = ok(m, "set-vcpu", "2", "ldg1")  # one strand on each MAU's core is enough
    d = m.domain("ldg1")
    cores = {s // 8 for s in d.bindings.strands}
    assert len(d.bindings.strands) == 2 and cores == {m.platform.maus[i].core for i in d.bindings.maus}


# ---------------------------------------------------------------- memory
def test_memory_sizes() -> None:
    m = guest(DomainState.INACTIVE)
    assert ok(m, "add-mem", "1G", "ldg1").domain("ldg1").config.memory == 3 * G
    assert ok(m, "add-memory", "1", "G", "ldg1").domain("ldg1").config.memory == 3 * G  # "size [unit]"
    assert ok(m, "rm-mem", "1G", "ldg1").domain("ldg1").config.memory == 1 * G
    assert ok(m, "set-mem", "1000M", "ldg1").domain("ldg1").config.memory == 1000 * M
    assert ok(m, "set-mem", "1001M", "ldg1").domain("ldg1").config.memory == 1004 * M  # rounded up to 4M
    r = do(ok(m, "add-domain", "ldg2"), "add-mem", "1M", "ldg2")
    assert r.machine.domain("ldg2").config.memory == 12 * M and "12M minimum" in r.messages[0]


def test_memory_on_bound_rebinds_and_active_guest_refuses() -> None:
    m = ok(guest(DomainState.BOUND), "add-mem", "1G", "ldg1")
    assert m.domain("ldg1").bindings.memory == 3 * G
    with pytest.raises(StateError, match=r"no memory dynamic reconfiguration.*stop the domain first"):
        do(guest(DomainState.ACTIVE), "add-mem", "1G", "ldg1")


def test_memory_refusals() -> None:
    m = guest(DomainState.INACTIVE)
    with pytest.raises(OpPrereqError, match="it has 2G"):
        do(m, "rm-mem", "3G", "ldg1")
    with pytest.raises(OpPrereqError, match="below the 12M minimum"):
        do(m, "rm-mem", "2040M", "ldg1")
    with pytest.raises(ResourceError, match="usable"):
        do(m, "set-mem", "64G", "ldg1")
    with pytest.raises(ResourceError):
        do(guest(DomainState.BOUND), "add-mem", "30G", "ldg1")
    for bad in (("0", "ldg1"), ("lots", "ldg1"), ("1G",), ("1", "G", "x", "ldg1")):
        with pytest.raises(UsageError):
            do(m, "set-mem", *bad)
    with pytest.raises(BusyError):
        do(m, "set-mem", "1G", "ldg1", ctx=MIGRATING)


def test_named_memory_blocks() -> None:
    m = ok(BASE, "add-domain", "ldg1")
    m = ok(m, "add-mem", "mblock=0x200000000:1G,0x300000000:256M", "ldg1")
    cfg = m.domain("ldg1").config
    assert cfg.memory == 1 * G + 256 * M
    assert cfg.mblocks == (NamedMblock(pa=0x200000000, size=G), NamedMblock(pa=0x300000000, size=256 * M))
    m = ok(m, "rm-mem", "mblock=0x300000000:256M", "ldg1")
    assert m.domain("ldg1").config.mblocks == (NamedMblock(pa=0x200000000, size=G),)
    m = ok(m, "set-vcpu", "1", "ldg1")
    m = ok(m, "bind", "ldg1")
    assert m.domain("ldg1").bindings.mblocks[0].pa == 0x200000000
    # set-memory with a size turns named blocks back into a size constraint.
    m2 = ok(guest(DomainState.INACTIVE), "set-mem", "mblock=0x200000000:1G", "ldg1")
    m2 = ok(m2, "set-mem", "1G", "ldg1")
    assert m2.domain("ldg1").config.mblocks == () and m2.domain("ldg1").config.memory == G


def test_named_memory_block_refusals() -> None:
    m = ok(ok(BASE, "add-domain", "ldg1"), "add-mem", "mblock=0x200000000:1G", "ldg1")
    with pytest.raises(UsageError, match="overlap"):
        do(m, "add-mem", "mblock=0x220000000:1G", "ldg1")
    with pytest.raises(UsageError, match="overlap"):
        do(m, "set-mem", "mblock=0x200000000:1G,0x210000000:4M", "ldg1")
    with pytest.raises(UsageError, match="multiples of 4M"):
        do(m, "add-mem", "mblock=0x400001000:1G", "ldg1")
    with pytest.raises(UsageError, match="PA-start:size"):
        do(m, "add-mem", "mblock=0x400000000", "ldg1")
    with pytest.raises(UsageError):
        do(m, "add-mem", "mblock=0x400000000:1G", "1G", "ldg1")
    with pytest.raises(NotFoundError, match="not found in LDom ldg1"):
        do(m, "rm-mem", "mblock=0x400000000:1G", "ldg1")
    with pytest.raises(OpPrereqError, match="every memory block"):
        do(m, "rm-mem", "mblock=0x200000000:1G", "ldg1")
    with pytest.raises(OpPrereqError, match="below the 12M minimum"):
        do(m, "set-mem", "mblock=0x200000000:4M", "ldg1")
    with pytest.raises(OpPrereqError, match="named memory blocks"):
        do(m, "add-mem", "1G", "ldg1")
    with pytest.raises(OpPrereqError, match="memory size constraint"):
        do(guest(DomainState.INACTIVE), "add-mem", "mblock=0x200000000:1G", "ldg1")


# ---------------------------------------------------------------- crypto
def test_crypto_by_state() -> None:
    m = ok(guest(DomainState.INACTIVE), "add-crypto", "2", "ldg1")
    assert m.domain("ldg1").config.mau == 2
    m = ok(m, "rm-mau", "1", "ldg1")
    assert m.domain("ldg1").config.mau == 1
    b = ok(guest(DomainState.BOUND), "set-mau", "1", "ldg1")
    assert len(b.domain("ldg1").bindings.maus) == 1
    assert ok(b, "set-crypto", "0", "ldg1").domain("ldg1").bindings.maus == ()
    with pytest.raises(StateError, match="crypto unit dynamic reconfiguration"):
        do(guest(DomainState.ACTIVE), "add-crypto", "1", "ldg1")
    r = do(BASE, "set-crypto", "2", "primary")
    assert r.messages == (DR_FIRST_NOTICE,) and r.machine.control.pending.mau == 2


def test_crypto_refusals() -> None:
    m = guest(DomainState.INACTIVE)
    with pytest.raises(OpPrereqError, match="it has 0"):
        do(m, "rm-crypto", "1", "ldg1")
    with pytest.raises(ResourceError, match="only 16"):
        do(m, "set-crypto", "17", "ldg1")
    with pytest.raises(ResourceError):
        do(guest(DomainState.BOUND, vcpus="2"), "set-crypto", "3", "ldg1")  # 2 strands: 2 cores at most
    with pytest.raises(UsageError):
        do(m, "add-crypto", "0", "ldg1")
    with pytest.raises(UsageError):
        do(m, "add-crypto", "one", "ldg1")
    with pytest.raises(NotFoundError):
        do(m, "add-crypto", "1", "ldg9")


# ---------------------------------------------------------------- I/O
def test_io_moves_a_bus_from_primary_to_a_guest() -> None:
    r = do(BASE, "rm-io", "bus_b", "primary")
    assert r.messages == (DR_FIRST_NOTICE,)
    m = ok(r.machine, "stop", "primary")  # reboot: primary lets go of pci@500
    assert [a.dev for a in m.control.config.io] == ["pci@400"] and m.control.bindings.io == ("pci@400",)
    m = ok(m, "add-domain", "ldg1")
    m = ok(m, "add-io", "bypass=on", "pci@500", "ldg1")
    io = m.domain("ldg1").config.io
    assert io[0].dev == "pci@500" and io[0].bypass
    m = ok(m, "set-vcpu", "1", "ldg1")
    m = ok(m, "set-mem", "1G", "ldg1")
    m = ok(m, "bind", "ldg1")
    assert m.domain("ldg1").bindings.io == ("pci@500",)
    m = ok(m, "start", "ldg1")
    with pytest.raises(StateError, match="I/O dynamic reconfiguration"):
        do(m, "rm-io", "bus_b", "ldg1")
    m = ok(m, "stop", "ldg1")
    m = ok(m, "rm-io", "bus_b", "ldg1")  # bound: rebinds without the bus
    assert m.domain("ldg1").bindings.io == ()


def test_io_refusals() -> None:
    m = ok(BASE, "add-domain", "ldg1")
    with pytest.raises(AlreadyExistsError, match="already assigned to LDom primary"):
        do(m, "add-io", "bus_a", "ldg1")
    with pytest.raises(NotFoundError, match="I/O device pci@999 not found"):
        do(m, "add-io", "pci@999", "ldg1")
    with pytest.raises(NotFoundError, match="is not assigned to LDom ldg1"):
        do(m, "rm-io", "bus_a", "ldg1")
    with pytest.raises(UsageError, match="bypass"):
        do(m, "add-io", "bypass=off", "bus_a", "ldg1")
    with pytest.raises(UsageError):
        do(m, "add-io", "bus_a")
