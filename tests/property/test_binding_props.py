"""Property tests of the allocator: random add/bind/unbind/remove/rebind sequences on a small platform.

Invariants after every step: no strand, MAU, PA or console port is held twice; free + held covers exactly
the usable resources (nothing leaks after unbind); every block is congruent (control domain: RA = PA) and
lies in usable memory; bindings match constraints; a failed bind or rebind changes nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ldoms.binding import (
    GUEST_RA_BASE,
    MIN_MEMORY,
    bind_domain,
    factory_default,
    fit_blocks,
    free_maus,
    free_memory,
    free_strands,
    rebind_domain,
)
from ldoms.errors import ResourceError
from ldoms.model.domain import Domain, DomainConfig, DomainState, MemBinding, NamedMblock, Vcc
from ldoms.model.machine import Machine
from ldoms.model.platform import MemRange, Platform
from ldoms.units import G, M, round_up

H = 256 * M
NAMES = ("ldg1", "ldg2", "ldg3", "ldg4", "ldg5")


def small_platform() -> Platform:
    """4 cores x 4 strands; memory with a hole: [64M, 2G) and [3G, 3.5G) usable, H = 256M."""
    return Platform(
        name="small",
        model="Small",
        cpu_type="UltraSPARC T2 Plus",
        cpu_mhz=1415,
        sockets=1,
        cores_per_socket=4,
        strands_per_core=4,
        memory=(
            MemRange(pa=0, size=64 * M, reserved=True),
            MemRange(pa=64 * M, size=2 * G - 64 * M),
            MemRange(pa=3 * G, size=512 * M),
        ),
        hw_max_pagesize=H,
    )


memories = st.integers(min_value=1, max_value=200).map(lambda n: n * 4 * M)


class Allocator(RuleBasedStateMachine):
    machine: Machine

    @initialize()
    def start(self) -> None:
        m = factory_default(small_platform(), "prop", seed=0)
        p = m.control
        vcc = (Vcc(name="primary-vcc0", port_min=5000, port_max=5002),)
        cfg = replace(p.config, vcpus=2, mau=1, memory=256 * M, vcc=vcc)
        self.machine = m.with_domain(replace(p, config=cfg, bindings=rebind_domain(m, p, cfg)))

    # ---------------------------------------------------------------- helpers
    def _names(self, *states: DomainState) -> list[str]:
        return [d.name for d in self.machine.domains if d.state in states and not d.config.is_control]

    def _attempt_rebind(self, dom: Domain, cfg: DomainConfig) -> None:
        before = self.machine
        try:
            b = rebind_domain(before, dom, cfg)
        except ResourceError:
            event("rebind refused")
            assert self.machine is before and self.machine.domain(dom.name) == dom
            return
        event("rebind succeeded")
        self.machine = before.with_domain(replace(dom, config=cfg, bindings=b))

    # ---------------------------------------------------------------- rules
    @rule(
        name=st.sampled_from(NAMES),
        vcpus=st.integers(min_value=1, max_value=6),
        memory=memories,
        mau=st.integers(min_value=0, max_value=2),
        whole_core=st.booleans(),
        named=st.one_of(st.none(), st.integers(min_value=0, max_value=30)),
    )
    def add(self, name: str, vcpus: int, memory: int, mau: int, whole_core: bool, named: int | None) -> None:
        if self.machine.find(name) is not None:
            return
        if whole_core:
            vcpus = min(vcpus, 2)
        mblocks: tuple[NamedMblock, ...] = ()
        if named is not None:  # a named block somewhere in the first 2G (may well be taken)
            mblocks = (NamedMblock(pa=named * 64 * M, size=128 * M),)
            memory = 128 * M
        cfg = DomainConfig(
            name=name, uuid=f"u-{name}", hostid=1, mac=1, vcpus=vcpus, memory=memory, mau=mau,
            whole_core=whole_core, mblocks=mblocks,
        )  # fmt: skip
        self.machine = self.machine.with_domain(Domain(config=cfg))

    @precondition(lambda self: self._names(DomainState.INACTIVE))
    @rule(data=st.data(), full_cores=st.booleans())
    def bind(self, data: st.DataObject, full_cores: bool) -> None:
        name = data.draw(st.sampled_from(self._names(DomainState.INACTIVE)))
        dom = self.machine.domain(name)
        before = self.machine
        try:
            b = bind_domain(before, dom.config, full_cores=full_cores)
        except ResourceError:
            event("bind refused")
            assert self.machine is before
            return
        event("bind succeeded")
        if full_cores:  # reserved strands complete the cores of the used ones (until a reboot)
            plat = before.platform
            cores = {plat.core_of(s) for s in (*b.strands, *b.reserved_strands)}
            assert {plat.core_of(s) for s in b.strands} == cores
            assert len(b.strands) + len(b.reserved_strands) == len(cores) * plat.strands_per_core
        self.machine = before.with_domain(replace(dom, state=DomainState.BOUND, bindings=b))

    @precondition(lambda self: self._names(DomainState.BOUND))
    @rule(data=st.data())
    def start_domain(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self._names(DomainState.BOUND)))
        self.machine = self.machine.with_domain(replace(self.machine.domain(name), state=DomainState.ACTIVE))

    @precondition(lambda self: self._names(DomainState.BOUND, DomainState.ACTIVE))
    @rule(data=st.data())
    def unbind(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self._names(DomainState.BOUND, DomainState.ACTIVE)))
        d = self.machine.domain(name)
        self.machine = self.machine.with_domain(replace(d, state=DomainState.INACTIVE, bindings=None))

    @precondition(lambda self: self._names(DomainState.INACTIVE))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self._names(DomainState.INACTIVE)))
        self.machine = self.machine.without_domain(name)

    @precondition(lambda self: self._names(DomainState.BOUND, DomainState.ACTIVE))
    @rule(
        data=st.data(),
        dvcpus=st.integers(min_value=-3, max_value=3),
        memory=memories,
        mau=st.integers(min_value=0, max_value=2),
    )
    def rebind(self, data: st.DataObject, dvcpus: int, memory: int, mau: int) -> None:
        name = data.draw(st.sampled_from(self._names(DomainState.BOUND, DomainState.ACTIVE)))
        dom = self.machine.domain(name)
        cfg = dom.config
        new = replace(cfg, vcpus=max(1, cfg.vcpus + dvcpus), mau=mau)
        if not cfg.mblocks:
            new = replace(new, memory=memory)
        self._attempt_rebind(dom, new)

    @rule(vcpus=st.integers(min_value=1, max_value=8), memory=memories, mau=st.integers(0, 2))
    def rebind_primary(self, vcpus: int, memory: int, mau: int) -> None:
        p = self.machine.control
        self._attempt_rebind(p, replace(p.config, vcpus=vcpus, memory=memory, mau=mau))

    # ---------------------------------------------------------------- invariants
    def _holders(self) -> list[Domain]:
        return [d for d in self.machine.domains if d.state != DomainState.INACTIVE]

    @invariant()
    def nothing_shared_nothing_leaked(self) -> None:
        plat = self.machine.platform
        strands = [s for d in self._holders() for s in (*d.bindings.strands, *d.bindings.reserved_strands)]  # type: ignore[union-attr]
        maus = [u for d in self._holders() for u in d.bindings.maus]  # type: ignore[union-attr]
        assert len(strands) == len(set(strands))
        assert len(maus) == len(set(maus))
        free_s = free_strands(self.machine)
        assert set(free_s).isdisjoint(strands)
        assert sorted((*free_s, *strands)) == list(range(plat.nstrands))
        assert sorted((*free_maus(self.machine), *maus)) == [u.id for u in plat.maus]

        blocks = sorted((b for d in self._holders() for b in d.bindings.mblocks), key=lambda b: b.pa)  # type: ignore[union-attr]
        for a, b in itertools.pairwise(blocks):
            assert a.pa_end <= b.pa, f"blocks overlap: {a} {b}"
        usable = plat.usable_memory
        for b in blocks:
            assert any(r.pa <= b.pa and b.pa_end <= r.end for r in usable), f"block outside usable: {b}"
        free = free_memory(self.machine)
        assert sum(r.size for r in free) + sum(b.size for b in blocks) == sum(r.size for r in usable)

        ports = [(d.bindings.console_service, d.bindings.console_port) for d in self._holders()]  # type: ignore[union-attr]
        ports = [p for p in ports if p[1]]
        assert len(ports) == len(set(ports))
        assert all(5000 <= port <= 5002 for _, port in ports)

    @invariant()
    def bindings_match_constraints(self) -> None:
        plat = self.machine.platform
        for d in self._holders():
            b, cfg = d.bindings, d.config
            assert b is not None
            want = cfg.vcpus * plat.strands_per_core if cfg.whole_core else cfg.vcpus
            assert len(b.strands) == want
            assert len(b.maus) == cfg.mau
            assert {plat.maus[u].core for u in b.maus} <= {plat.core_of(s) for s in b.strands}
            if cfg.mblocks:
                asked = sorted((x.pa, x.size) for x in cfg.mblocks)
                assert sorted((x.pa, x.size) for x in b.mblocks) == asked
            else:
                assert b.memory == max(MIN_MEMORY, round_up(cfg.memory, 4 * M))
            for x in b.mblocks:
                if cfg.is_control:
                    assert x.ra == x.pa
                else:
                    assert x.pa % H == x.ra % H, f"block not congruent: {x}"
            if not cfg.is_control and not cfg.mblocks:
                ras = sorted(b.mblocks, key=lambda x: x.ra)
                assert ras[0].ra == GUEST_RA_BASE
                assert all(p.ra + p.size == q.ra for p, q in itertools.pairwise(ras))
            if cfg.whole_core:
                assert len({plat.core_of(s) for s in b.strands}) == cfg.vcpus


Allocator.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestAllocator = Allocator.TestCase


# ---------------------------------------------------------------- fit_blocks on its own
@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[MemRange], list[MemBinding], int | None]:
    unit = 64 * M
    free: list[MemRange] = []
    pa = draw(st.integers(0, 8)) * unit
    for _ in range(draw(st.integers(1, 5))):
        size = draw(st.integers(1, 24)) * unit
        free.append(MemRange(pa=pa, size=size))
        pa += size + draw(st.integers(1, 8)) * unit
    blocks: list[MemBinding] = []
    ra = GUEST_RA_BASE
    for _ in range(draw(st.integers(1, 3))):
        size = draw(st.integers(1, 16)) * unit
        blocks.append(MemBinding(ra=ra, pa=0, size=size))
        ra += size + draw(st.integers(0, 4)) * unit
    split = draw(st.sampled_from([None, 4 * M, 64 * M, H]))
    return free, blocks, split


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_fit_blocks_properties(layout: tuple[list[MemRange], list[MemBinding], int | None]) -> None:
    free, blocks, split = layout
    try:
        got = fit_blocks(free, blocks, H, split_pagesize=split)
    except ResourceError as e:
        assert str(e).startswith("Unable to bind ")
        return
    # RAs and sizes are kept: the pieces tile each source block exactly.
    for blk in blocks:
        pieces = sorted((p for p in got if blk.ra <= p.ra < blk.ra + blk.size), key=lambda p: p.ra)
        assert pieces[0].ra == blk.ra
        assert sum(p.size for p in pieces) == blk.size
        assert all(p.ra + p.size == q.ra for p, q in itertools.pairwise(pieces))
        if split is None:
            assert len(pieces) == 1
        else:
            assert all((p.ra + p.size) % split == 0 for p in pieces[:-1])
    # Congruent, inside free memory, disjoint.
    for p in got:
        assert p.pa % H == p.ra % H
        assert any(r.pa <= p.pa and p.pa_end <= r.end for r in free)
    ordered = sorted(got, key=lambda p: p.pa)
    assert all(a.pa_end <= b.pa for a, b in itertools.pairwise(ordered))
