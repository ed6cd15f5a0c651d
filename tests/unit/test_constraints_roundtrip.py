"""Round trips over generated domain definitions: what `list-constraints -x` prints, `add-domain -i` reads
back unchanged, and the same for the `-p` form (whose one-line records print a variable's newlines as
spaces, so the `-p` strategy keeps CR and LF out of variable values)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ldoms.cli.format.constraints import format_constraints
from ldoms.model.constraints_check import CPU_ARCHS, FAILURE_POLICIES, VOL_OPTIONS, validate_configs
from ldoms.model.domain import (
    DomainConfig,
    IoAssignment,
    NamedMblock,
    Vcc,
    Vcons,
    Vdisk,
    Vds,
    VdsVolume,
    Vnet,
    Vsw,
)
from ldoms.model.parseable import constraints_from_parseable
from ldoms.model.xmlio import constraints_from_xml, constraints_to_xml

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[A-Za-z][A-Za-z0-9_+#.:;~()-]{0,15}", fullmatch=True)
# Free single-line text (paths, device names): anything XML can carry but control characters and '|', with
# no surrounding spaces.  Includes spaces, '=', '@' and XML's special characters.
_text_chars = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="|\ufffe\uffff")
paths = st.text(_text_chars, min_size=1, max_size=20).filter(lambda s: s == s.strip())
macs = st.integers(0, (1 << 48) - 1)
vlan = st.integers(1, 4094)
vlans = st.lists(vlan, max_size=3).map(tuple)
mtus = st.integers(1500, 16000)
small = st.integers(0, 4096)
linkprops = st.sampled_from(["", "phys-state"])
# Variable values: any text XML 1.0 can carry, with spaces, tabs, CR, LF and <&>"' made likely.
_value_chars = st.one_of(
    st.sampled_from(list(" \t\r\n<&>\"'=|;")),
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
)
xml_values = st.text(_value_chars, max_size=30)
p_values = st.text(_value_chars.filter(lambda ch: ch not in "\r\n"), max_size=30)
var_names = st.from_regex(r"[A-Za-z0-9?_.@#-]{1,16}", fullmatch=True)


def unique(items: st.SearchStrategy, key: object, max_size: int = 3) -> st.SearchStrategy:
    return st.lists(items, max_size=max_size, unique_by=key).map(tuple)  # type: ignore[arg-type]


vds_volumes = st.builds(
    VdsVolume,
    name=names,
    backend=paths,
    options=st.sets(st.sampled_from(VOL_OPTIONS)).map(lambda s: tuple(o for o in VOL_OPTIONS if o in s)),
    mpgroup=st.one_of(st.just(""), names),
)
vdses = st.builds(Vds, name=names, volumes=unique(vds_volumes, lambda v: v.name))
vsws = st.builds(
    Vsw,
    name=names,
    mac=macs,
    net_dev=st.one_of(st.just(""), paths),
    default_vlan_id=vlan,
    pvid=vlan,
    vids=vlans,
    mode=st.sampled_from(["", "sc"]),
    mtu=mtus,
    id=small,
    linkprop=linkprops,
)
vccs = st.integers(0, 65535).flatmap(
    lambda lo: st.builds(Vcc, name=names, port_min=st.just(lo), port_max=st.integers(lo, 65535))
)
vnets = st.builds(
    Vnet,
    name=names,
    service=names,
    mac=macs,
    hybrid=st.booleans(),
    pvid=vlan,
    vids=vlans,
    mtu=mtus,
    id=small,
    linkprop=linkprops,
)
vdisks = st.builds(Vdisk, name=names, volume=names, service=names, timeout=small, id=small)
vconses = st.one_of(
    st.none(),
    st.builds(
        Vcons,
        group=st.one_of(st.just(""), names),
        service=st.one_of(st.just(""), names),
        port=st.integers(0, 65535),
    ),
)
sizes = st.integers(1, 1 << 40)
mblocks = st.lists(st.builds(NamedMblock, pa=st.integers(0, 1 << 44), size=sizes), max_size=3).map(tuple)
ios = unique(st.builds(IoAssignment, dev=paths, bypass=st.booleans()), lambda i: i.dev)


@st.composite
def domain_configs(draw: st.DrawFn, values: st.SearchStrategy[str] = xml_values) -> DomainConfig:
    name = draw(names)
    blocks = draw(mblocks)
    memory = sum(b.size for b in blocks) if blocks else draw(st.integers(0, 1 << 42))
    return DomainConfig(
        name=name,
        uuid=draw(st.one_of(st.just(""), st.uuids().map(str))),
        hostid=draw(st.integers(0, 0xFFFFFFFF)),
        mac=draw(macs),
        vcpus=draw(st.integers(0, 1024)),
        whole_core=draw(st.booleans()),
        max_cores=draw(st.integers(0, 64)),
        memory=memory,
        mblocks=blocks,
        mau=draw(st.integers(0, 16)),
        io=draw(ios),
        vnets=draw(unique(vnets, lambda v: v.name)),
        vdisks=draw(unique(vdisks, lambda v: v.name)),
        vcons=draw(vconses),
        vds=draw(unique(vdses, lambda v: v.name, 2)),
        vsw=draw(unique(vsws, lambda v: v.name, 2)),
        vcc=draw(unique(vccs, lambda v: v.name, 2)),
        variables=draw(unique(st.tuples(var_names, values), lambda kv: kv[0], 4)),
        cpu_arch=draw(st.sampled_from(CPU_ARCHS)),
        failure_policy=draw(st.sampled_from(FAILURE_POLICIES)),
        master=draw(st.lists(names.filter(lambda m: m != name), max_size=4, unique=True).map(tuple)),
    )


def domain_lists(values: st.SearchStrategy[str]) -> st.SearchStrategy[list[DomainConfig]]:
    return st.lists(domain_configs(values), max_size=3, unique_by=lambda c: c.name)


@SETTINGS
@given(domain_lists(xml_values))
def test_generated_definitions_are_valid(domains: list[DomainConfig]) -> None:
    validate_configs(domains)  # the strategies stay inside the rules the readers enforce


@SETTINGS
@given(domain_lists(xml_values))
def test_xml_round_trip(domains: list[DomainConfig]) -> None:
    assert constraints_from_xml(constraints_to_xml(domains)) == domains


@SETTINGS
@given(domain_lists(p_values))
def test_parseable_round_trip(domains: list[DomainConfig]) -> None:
    assert constraints_from_parseable(format_constraints(domains, parseable=True)) == domains


@SETTINGS
@given(domain_configs(xml_values))
def test_parseable_prints_newlines_as_spaces(domain: DomainConfig) -> None:
    expected = replace(
        domain,
        variables=tuple((k, v.replace("\r", " ").replace("\n", " ")) for k, v in domain.variables),
    )
    assert constraints_from_parseable(format_constraints([domain], parseable=True)) == [expected]


@SETTINGS
@given(domain_lists(xml_values))
def test_human_form_never_fails(domains: list[DomainConfig]) -> None:
    out = format_constraints(domains, parseable=False)
    for d in domains:
        assert f"DOMAIN\n{d.name}\n" in out
