"""CPU binding: strands, whole cores, MAUs (fresh binds and rebinds)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ldoms.binding import bind_domain, factory_default, free_strands, rebind_domain
from ldoms.errors import ResourceError
from ldoms.model.domain import Bindings, Domain, DomainConfig, DomainState
from ldoms.model.machine import Machine
from ldoms.model.platform import MemRange, Platform
from ldoms.units import G, M

HOST = "tiny1"


def tiny() -> Platform:
    """4 cores x 4 strands, one MAU per core, 4G with the first 64M reserved."""
    return Platform(
        name="tiny",
        model="Tiny",
        cpu_type="UltraSPARC T2 Plus",
        cpu_mhz=1415,
        sockets=1,
        cores_per_socket=4,
        strands_per_core=4,
        memory=(MemRange(pa=0, size=64 * M, reserved=True), MemRange(pa=64 * M, size=4 * G - 64 * M)),
        hw_max_pagesize=256 * M,
    )


def machine(primary_vcpus: int = 2, primary_mau: int = 0) -> Machine:
    """The tiny host with primary shrunk to `primary_vcpus` strands, 512M and `primary_mau` MAUs."""
    m = factory_default(tiny(), HOST, seed=1)
    p = m.control
    cfg = replace(p.config, vcpus=primary_vcpus, memory=512 * M, mau=primary_mau, io=())
    return m.with_domain(replace(p, config=cfg, bindings=rebind_domain(m, p, cfg)))


def guest(name: str = "ldg1", **kw: object) -> DomainConfig:
    kw.setdefault("memory", 64 * M)
    return DomainConfig(name=name, uuid=f"uuid-{name}", hostid=1, mac=2, **kw)  # type: ignore[arg-type]


def bound(m: Machine, cfg: DomainConfig, bindings: Bindings | None = None) -> Machine:
    b = bindings if bindings is not None else bind_domain(m, cfg)
    return m.with_domain(Domain(config=cfg, state=DomainState.BOUND, bindings=b))


def err(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(ResourceError) as e:
        fn(*args, **kw)  # type: ignore[operator]
    return str(e.value)


# ---------------------------------------------------------------- strands
def test_lowest_numbered_free_strands() -> None:
    m = machine(primary_vcpus=2)
    b = bind_domain(m, guest(vcpus=3))
    assert b.strands == (2, 3, 4)
    assert b.maus == ()


def test_not_enough_strands() -> None:
    m = machine(primary_vcpus=12)
    assert err(bind_domain, m, guest(vcpus=8)) == f"not enough free strands on {HOST}: need 8, have 4"


def test_no_vcpus() -> None:
    assert "LDom ldg1 has no virtual CPUs" in err(bind_domain, machine(), guest(vcpus=0))


def test_negative_mau() -> None:
    assert "LDom ldg1: invalid MAU count -1" in err(bind_domain, machine(), guest(vcpus=1, mau=-1))


def test_reserved_strands_are_held() -> None:
    m = machine(primary_vcpus=2)
    m = bound(m, guest("mig", vcpus=1), Bindings(strands=(4,), reserved_strands=(5, 6, 7)))
    assert free_strands(m) == (2, 3, *range(8, 16))
    assert bind_domain(m, guest(vcpus=4)).strands == (2, 3, 8, 9)


def test_bind_ignores_own_stale_bindings() -> None:
    m = machine(primary_vcpus=2)
    cfg = guest(vcpus=2)
    m = bound(m, cfg)  # ldg1 holds 2, 3
    assert bind_domain(m, cfg).strands == (2, 3)


# ---------------------------------------------------------------- MAUs
def test_mau_only_on_cores_with_strands() -> None:
    m = machine(primary_vcpus=2, primary_mau=1)  # primary: strands 0, 1 and MAU 0
    b = bind_domain(m, guest(vcpus=2, mau=1))
    assert b.maus == (1,)
    assert b.strands == (4, 5)  # on MAU 1's core, not the free strands 2, 3 of core 0


def test_mau_strands_pinned_then_lowest() -> None:
    m = machine(primary_vcpus=2, primary_mau=1)
    b = bind_domain(m, guest(vcpus=3, mau=2))
    assert b.maus == (1, 2)
    assert b.strands == (4, 5, 8)  # one strand on each MAU core, the rest packed on cores already used


def test_not_enough_maus() -> None:
    m = machine(primary_vcpus=12, primary_mau=3)
    assert err(bind_domain, m, guest(vcpus=4, mau=2)) == (
        f"not enough free MAUs on {HOST} for LDom ldg1: need 2, have 1"
    )


def test_maus_free_but_their_cores_full() -> None:
    m = machine(primary_vcpus=8, primary_mau=0)  # cores 0, 1 full; MAUs 0, 1 free but unusable
    msg = err(bind_domain, m, guest(vcpus=8, mau=3))
    assert msg.startswith(f"not enough free MAUs on cores with free strands on {HOST} for LDom ldg1: ")
    assert "need 3, " in msg
    assert "have 2 (a MAU is usable only with a strand of its core)" in msg


def test_more_maus_than_strands() -> None:
    msg = err(bind_domain, machine(), guest(vcpus=1, mau=2))
    assert msg.startswith("LDom ldg1: 2 MAUs need strands on 2 cores, but only 1 virtual CPUs are requested")


# ---------------------------------------------------------------- whole cores
def test_whole_cores_only_fully_free() -> None:
    m = machine(primary_vcpus=2)  # core 0 partly used
    b = bind_domain(m, guest(vcpus=2, whole_core=True))
    assert b.strands == tuple(range(4, 12))


def test_whole_cores_not_enough() -> None:
    m = machine(primary_vcpus=5)  # cores 0 and 1 partly used
    assert err(bind_domain, m, guest(vcpus=3, whole_core=True)) == (
        f"not enough free whole cores on {HOST}: need 3, have 2"
    )


def test_whole_cores_max_cores() -> None:
    msg = err(bind_domain, machine(), guest(vcpus=3, whole_core=True, max_cores=2))
    assert msg == "LDom ldg1: 3 whole cores requested, more than its max-cores constraint of 2"
    assert bind_domain(machine(), guest(vcpus=2, whole_core=True, max_cores=2)).strands == tuple(range(4, 12))


def test_whole_cores_prefer_cores_with_free_mau() -> None:
    m = machine(primary_vcpus=2)
    # MAU 1 is taken (by a domain on core 0), core 1 stays fully free.
    m = bound(m, guest("other", vcpus=1, mau=1), Bindings(strands=(0,), maus=(1,)))
    b = bind_domain(m, guest(vcpus=2, whole_core=True, mau=1))
    assert b.maus == (2,)
    assert b.strands == (4, 5, 6, 7, 8, 9, 10, 11)
    b = bind_domain(m, guest(vcpus=2, whole_core=True, mau=2))
    assert b.maus == (2, 3)
    assert b.strands == tuple(range(8, 16))


def test_whole_cores_mau_errors() -> None:
    m = machine(primary_vcpus=2)
    m = bound(m, guest("other", vcpus=1, mau=2), Bindings(strands=(2,), maus=(2, 3)))  # cores 1-3 free
    assert err(bind_domain, m, guest(vcpus=3, whole_core=True, mau=3)).startswith(
        f"not enough free MAUs on {HOST} for LDom ldg1: need 3, have 2"
    )
    assert err(bind_domain, m, guest(vcpus=1, whole_core=True, mau=2)).startswith(
        "LDom ldg1: 2 MAUs need strands on 2 cores, but only 1 whole cores are requested"
    )
    # MAU 1 is free only on a core that is not fully free.
    m = machine(primary_vcpus=6, primary_mau=0)
    m = bound(m, guest("other", vcpus=1, mau=2), Bindings(strands=(8,), maus=(2, 3)))
    assert err(bind_domain, m, guest(vcpus=1, whole_core=True, mau=1)).startswith(
        f"not enough free MAUs on free whole cores on {HOST} for LDom ldg1: need 1, have 0"
    )


# ---------------------------------------------------------------- rebind
def _active(m: Machine, cfg: DomainConfig) -> tuple[Machine, Domain]:
    d = Domain(config=cfg, state=DomainState.ACTIVE, bindings=bind_domain(m, cfg))
    return m.with_domain(d), d


def test_rebind_grow_keeps_and_prefers_own_cores() -> None:
    m = machine(primary_vcpus=2)
    m, d = _active(m, guest(vcpus=2))  # 2, 3
    m = bound(m, guest("ldg2", vcpus=2))  # 4, 5
    b = rebind_domain(m, d, replace(d.config, vcpus=5))
    assert b.strands == (2, 3, 6, 7, 8)


def test_rebind_grow_prefers_partly_used_core() -> None:
    m = machine(primary_vcpus=2)
    d = Domain(config=guest(vcpus=1), state=DomainState.BOUND, bindings=Bindings(strands=(9,)))
    m = m.with_domain(d)
    assert rebind_domain(m, d, replace(d.config, vcpus=3)).strands == (8, 9, 10)


def test_rebind_shrink_releases_highest() -> None:
    m = machine(primary_vcpus=2)
    m, d = _active(m, guest(vcpus=6))  # 2..7
    assert rebind_domain(m, d, replace(d.config, vcpus=3)).strands == (2, 3, 4)


def test_rebind_shrink_keeps_a_strand_on_mau_core() -> None:
    m = machine(primary_vcpus=2, primary_mau=1)
    m, d = _active(m, guest(vcpus=6, mau=1))
    assert d.bindings is not None and d.bindings.maus == (1,)
    assert d.bindings.strands == (2, 3, 4, 5, 6, 7)
    b = rebind_domain(m, d, replace(d.config, vcpus=2))
    assert b.strands == (2, 4) and b.maus == (1,)


def test_rebind_mau_changes() -> None:
    m = machine(primary_vcpus=2)
    m, d = _active(m, guest(vcpus=6, mau=2))
    assert d.bindings is not None and d.bindings.maus == (0, 1)
    assert rebind_domain(m, d, replace(d.config, mau=1)).maus == (0,)  # highest released
    b = rebind_domain(m, d, replace(d.config, mau=3))
    assert b.maus == (0, 1, 2)  # a new MAU needs a strand of its core
    assert len(b.strands) == 6 and 8 in b.strands


def test_rebind_whole_cores() -> None:
    m = machine(primary_vcpus=2)
    cfg = guest(vcpus=2, whole_core=True, mau=1)
    m, d = _active(m, cfg)
    assert d.bindings is not None and d.bindings.maus == (1,)
    grown = rebind_domain(m, d, replace(cfg, vcpus=3))
    assert grown.strands == tuple(range(4, 16)) and grown.maus == (1,)
    shrunk = rebind_domain(m, d, replace(cfg, vcpus=1))
    assert shrunk.strands == (4, 5, 6, 7) and shrunk.maus == (1,)
    more_mau = rebind_domain(m, d, replace(cfg, mau=2))
    assert more_mau.maus == (1, 2) and more_mau.strands == tuple(range(4, 12))


def test_rebind_whole_cores_keeps_mau_core_when_shrinking() -> None:
    m = machine(primary_vcpus=2)
    d = Domain(
        config=guest(vcpus=2, whole_core=True, mau=1),
        state=DomainState.BOUND,
        bindings=Bindings(strands=tuple(range(4, 12)), maus=(2,)),
    )
    m = m.with_domain(d)
    b = rebind_domain(m, d, replace(d.config, vcpus=1))
    assert b.strands == (8, 9, 10, 11) and b.maus == (2,)


def test_rebind_keeps_reserved_strands() -> None:
    m = machine(primary_vcpus=2)
    d = Domain(
        config=guest(vcpus=1),
        state=DomainState.ACTIVE,
        bindings=Bindings(strands=(4,), reserved_strands=(5, 6, 7)),
    )
    m = m.with_domain(d)
    b = rebind_domain(m, d, replace(d.config, vcpus=3))
    assert b.reserved_strands == (5, 6, 7)
    assert b.strands == (2, 3, 4)  # never its own reserved strands


def test_rebind_not_enough() -> None:
    m = machine(primary_vcpus=2)
    m, d = _active(m, guest(vcpus=2))
    assert err(rebind_domain, m, d, replace(d.config, vcpus=20)) == (
        f"not enough free strands on {HOST}: need 18, have 12"
    )


# ---------------------------------------------------------------- full cores (1.2 live-migration target)
def test_full_cores_reserve_the_rest_of_the_core() -> None:
    m = machine(primary_vcpus=2)  # core 0 partly used
    b = bind_domain(m, guest(vcpus=5), full_cores=True)
    assert b.strands == (4, 5, 6, 7, 8)
    assert b.reserved_strands == (9, 10, 11)
    m = bound(m, guest(vcpus=5), b)
    assert free_strands(m) == (2, 3, 12, 13, 14, 15)
    assert bind_domain(m, guest("ldg2", vcpus=4), full_cores=True).strands == (12, 13, 14, 15)


def test_full_cores_with_mau_and_errors() -> None:
    m = machine(primary_vcpus=2, primary_mau=1)
    b = bind_domain(m, guest(vcpus=1, mau=1), full_cores=True)
    assert (b.strands, b.maus, b.reserved_strands) == ((4,), (1,), (5, 6, 7))
    assert err(bind_domain, m, guest(vcpus=13), full_cores=True) == (
        f"not enough free whole cores on {HOST}: need 4, have 3"
    )
    # A whole-core domain is bound as usual: no reserved strands.
    assert bind_domain(m, guest(vcpus=1, whole_core=True), full_cores=True).reserved_strands == ()
