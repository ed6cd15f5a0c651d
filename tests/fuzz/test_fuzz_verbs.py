"""Every verb's arguments, fuzzed in process: `parse_args` then `ops.base.run`, as ldm and ldmd run them.

Hypothesis builds command lines for each registered verb out of the verb's own flags, properties and
operand shapes mixed with foreign ones (unknown flags, known keys with hostile values: sizes, numbers, MACs,
names with odd characters, empty and huge values), and runs them on the machines of `conftest` (factory
default, a configured host with guests in every state, a delayed reconfiguration pending).  Whatever happens:

- only `LdmError`s escape; anything else is a bug;
- a refusal leaves the machine exactly as it was (`==` with a deep copy taken before);
- every error is one clear line (`conftest.bad_message_reason`); printed messages are one line each, except
  LDoms' documented delayed-reconfiguration notices;
- an accepted change keeps the binding invariants (no strand, MAU, PA range or console port held twice;
  blocks inside usable memory; guest blocks congruent, RA = PA for the control domain; bindings exactly for
  bound and active domains), survives the store's JSON round trip, and every listing of the new machine
  (human, `-l`, `-p`, `-x` read back with `constraints_from_xml`) is produced without error.

Listing verbs also run their formatter on the request, as `ldm` does after the daemon answers.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context

from ldoms import ops  # noqa: F401  (registers every verb)
from ldoms.cli.main import FORMATTERS
from ldoms.cli.parse import parse_args
from ldoms.errors import LdmError
from ldoms.model.codec import decode, to_json
from ldoms.model.domain import DomainState
from ldoms.model.machine import Machine
from ldoms.model.view import HostView
from ldoms.model.xmlio import constraints_from_xml, constraints_to_xml
from ldoms.ops.base import REGISTRY, Request, lookup, run
from ldoms.ops.common import DR_FIRST_NOTICE, DR_NOTICE
from tests.fuzz.conftest import CTX, MACHINES, assert_clear_error

VERBS = sorted(REGISTRY)

# ------------------------------------------------------------------------------------------- values
ODD_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from("\n\r\t\x00|=,@:;-"),
    max_size=12,
)
NAMES = st.sampled_from(
    [
        "primary", "ldg1", "ldg2", "ldg3", "ldg9", "new1", "PRIMARY", "primary ", " ldg1", "a" * 64, "a" * 65,
        "", "-", "1abc", "a b", "a\nb", "ldg1\n", "new1\n", "new1\r", "é", "a|b", "a=b", "<x/>", "%s", "{0}",
        "a\x00b", "a;b", "x" * 5000,
    ]
) | ODD_TEXT  # fmt: skip
NUMBERS = st.sampled_from(
    ["0", "1", "2", "8", "64", "128", "129", "-1", "+1", "1.5", "1e3", "0x10", "007", " 8", "8 ", "",
     "١", "٨", "99999999999999999999999999", "9" * 5000, "4294967296", "65535", "65536", "4094", "4095"]
) | st.integers(min_value=-(2**70), max_value=2**70).map(str)  # fmt: skip
SIZES = st.sampled_from(
    ["512M", "1G", "1g", "4K", "8K", "0", "0M", "1", "1.5G", "-1G", "1 G", "G", "1T", "1P", "256M", "3G",
     "999999999999G", "0x1000", "4M", "32G", "", "1GB", "1Gb", "١G", "9" * 5000 + "M"]
) | st.integers(min_value=0, max_value=2**64).map(lambda n: f"{n}M")  # fmt: skip
MACS = st.sampled_from(
    ["00:14:4f:f8:00:01", "00:14:4f:f8:00:00", "ff:ff:ff:ff:ff:ff", "0:0:0:0:0:0", "00:00:00:00:00:00",
     "zz:14:4f:f8:00:01", "00:14:4f:f8:00", "00-14-4f-f8-00-01", "001122334455", "01:00:5e:00:00:01", "auto",
     ""]
)  # fmt: skip
ADDRS = st.sampled_from(
    ["0x4000000", "0x0", "0x80000000", "0x100000000", "4000000", "0xg", "-0x10", "", "0x" + "f" * 40]
)
MBLOCKS = st.lists(st.builds(lambda a, s: f"{a}:{s}", ADDRS, SIZES) | ODD_TEXT, min_size=1, max_size=3).map(
    ",".join
)
ID_LISTS = st.lists(NUMBERS, max_size=4).map(",".join)
SERVICES = st.sampled_from(
    ["primary-vds0", "primary-vsw0", "primary-vcc0", "nosuch-vds", "vol1@primary-vds0", "vol2@primary-vds0",
     "vol4@primary-vds0", "vol9@primary-vds0", "vol1@", "@primary-vds0", "vol1@primary-vds0@x", "a@b",
     "/dev/dsk/c0t2d0s2", "/var/img9", "vnet1", "vdisk1", "vnet9", "pci@400", "pci@500", "bus_a", "pci@999",
     "initial", "factory-default", "migration", "reconf", "memdr", "cpu", "crypto", "mau", "memory", "io"]
)  # fmt: skip
VARIABLES = st.builds(
    lambda k, v: f"{k}={v}",
    st.sampled_from(["auto-boot?", "boot-device", "wl", "guest-workload", "x", "", "a b", "a\nb", "=", "é"]),
    st.sampled_from(["true", "false", "", "disk net", "a|b", "a\nb", "x" * 300, "=", "é"]) | ODD_TEXT,
)

PROP_VALUES: dict[str, st.SearchStrategy[str]] = {
    "mac-addr": MACS,
    "hostid": st.sampled_from(["0x1234", "0", "0xffffffff", "0x100000000", "zz", "", "-1", "80fe1234"]),
    "failure-policy": st.sampled_from(["ignore", "panic", "reset", "stop", "Panic", "", "explode"]),
    "master": st.lists(NAMES, max_size=5).map(",".join),
    "cpu-arch": st.sampled_from(["native", "generic", "migration-class1", "sparc64-class1", "", "x86"]),
    "mblock": MBLOCKS,
    "bypass": st.sampled_from(["on", "off", "", "yes", "ON"]),
    "port-range": st.builds(lambda a, b: f"{a}-{b}", NUMBERS, NUMBERS) | ODD_TEXT,
    "timeout": NUMBERS,
    "id": NUMBERS,
    "pvid": NUMBERS,
    "default-vlan-id": NUMBERS,
    "mtu": NUMBERS,
    "port": NUMBERS,
    "vid": ID_LISTS,
    "mode": st.sampled_from(["hybrid", "sc", "", "Hybrid", "xx"]),
    "linkprop": st.sampled_from(["phys-state", "", "xx"]),
    "net-dev": st.sampled_from(["e1000g0", "", "nxge1", "a b", "a\nb"]),
    "options": st.lists(st.sampled_from(["ro", "slice", "excl", "", "rw", "ro"]), max_size=4).map(",".join),
    "mpgroup": NAMES,
    "group": NAMES,
    "service": SERVICES,
    "volume": SERVICES,
    "vswitch": SERVICES,
}
FOREIGN_FLAGS = st.sampled_from(
    ["-z", "-x", "--bogus", "--", "-", "-ac", "-cf", "-fa", "--home", "-o", "-i", "-p"]
)


def xml_documents(machine: Machine) -> st.SearchStrategy[str]:
    """`-i` contents: real constraints documents of this machine's domains (some renamed, some mangled)."""
    docs = [constraints_to_xml([d.config]) for d in machine.domains]
    renamed = [
        constraints_to_xml([replace(d.config, name="new1", uuid="", mac=0, hostid=0)])
        for d in machine.domains
    ]
    whole = docs + renamed

    def mangle(doc: str, at: int, junk: str) -> str:
        i = at % (len(doc) + 1)
        return doc[:i] + junk + doc[i + len(junk) :]

    return st.sampled_from(whole) | st.builds(
        mangle, st.sampled_from(whole), st.integers(0, 10_000), ODD_TEXT
    )


DOMAINS = st.sampled_from(["primary", "ldg1", "ldg2", "ldg3", "ldg9", "new1"]) | NAMES
# The shape of each verb's operands, one letter per operand ('*' repeats the one before, zero or more times):
# D domain, N number, S size, V volume@service, C service name, B bus, F spconfig name, R var=value,
# K variable name, I interface (vnet/vdisk) name, P backend path, O cancel-operation kind, L device class.
SHAPES = {
    "add-crypto": "ND", "add-domain": "D*", "add-io": "BD", "add-memory": "SD", "add-spconfig": "F",
    "add-variable": "RR*D", "add-vcc": "CD", "add-vcpu": "ND", "add-vdisk": "IVD", "add-vds": "CD",
    "add-vdsdev": "PV", "add-vnet": "ICD", "add-vsw": "CD", "bind-domain": "D", "cancel-operation": "OD",
    "list-bindings": "D*", "list-constraints": "D*", "list-devices": "L*", "list-domain": "D*",
    "list-services": "D*", "list-spconfig": "", "list-variable": "K*D", "remove-crypto": "ND",
    "remove-domain": "DD*", "remove-io": "BD", "remove-memory": "SD", "remove-reconf": "D",
    "remove-spconfig": "F", "remove-variable": "KK*D", "remove-vcc": "C", "remove-vcpu": "ND",
    "remove-vdisk": "ID", "remove-vds": "C", "remove-vdsdev": "V", "remove-vnet": "ID", "remove-vsw": "C",
    "set-crypto": "ND", "set-domain": "D", "set-memory": "SD", "set-spconfig": "F", "set-variable": "RR*D",
    "set-vcc": "C", "set-vcons": "D", "set-vcpu": "ND", "set-vdisk": "ID", "set-vdsdev": "V",
    "set-vnet": "ID",
    "set-vsw": "C", "start-domain": "DD*", "stop-domain": "DD*", "unbind-domain": "D",
}  # fmt: skip


def mostly(plausible: list[str], hostile: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Plausible values three times out of four."""
    p = st.sampled_from(plausible)
    return st.one_of(p, p, p, hostile)


KINDS: dict[str, st.SearchStrategy[str]] = {
    "D": mostly(["primary", "ldg1", "ldg2", "ldg3", "new1"], DOMAINS),
    "N": mostly(["0", "1", "2", "4", "8", "16"], NUMBERS),
    "S": mostly(["256M", "512M", "1G", "2G", "4M", "8G"], SIZES),
    "V": mostly(
        ["vol1@primary-vds0", "vol2@primary-vds0", "vol4@primary-vds0", "vol5@primary-vds0"], SERVICES
    ),
    "C": mostly(
        ["primary-vds0", "primary-vsw0", "primary-vcc0", "new-vds1", "new-vsw1", "new-vcc1"], SERVICES
    ),
    "B": st.sampled_from(["pci@400", "pci@500", "bus_a", "pci@999", "", "pci@"]),
    "F": st.sampled_from(["initial", "factory-default", "cfg2", "", "a/b", "x" * 80]) | NAMES,
    "R": mostly(["auto-boot?=true", "boot-device=disk net", "x="], VARIABLES),
    "K": st.sampled_from(["auto-boot?", "boot-device", "nosuch", "", "a=b"]),
    "I": st.sampled_from(["vnet1", "vdisk1", "vnet2", "vdisk2", "vnet9"]) | NAMES,
    "P": st.sampled_from(["/dev/dsk/c0t2d0s2", "/var/img1", "/dev/dsk/c0t1d0s2", "", "rel/path", "a|b"]),
    "O": st.sampled_from(["migration", "reconf", "memdr", "bogus", ""]),
    "L": st.sampled_from(["cpu", "crypto", "mau", "memory", "mem", "io", "disk"]),
}


@st.composite
def well_formed(draw: st.DrawFn, verb: str, machine: Machine) -> list[str]:
    """A command line in the verb's grammar (flags, a few properties, operands of the right kinds) whose
    values are drawn from plausible and hostile ones alike: these reach `check_prereq` and `execute`."""
    spec = lookup(verb).spec
    words: list[str] = []
    for flag in spec.flags:
        if draw(st.booleans()):
            words.append(flag)
    for flag in spec.value_flags:
        if draw(st.integers(0, 3)) == 0:
            words += [flag, draw(xml_documents(machine) if flag == "-i" else st.sampled_from(LIST_OUTPUTS))]
    for key in draw(st.lists(st.sampled_from(spec.props), max_size=2, unique=True)) if spec.props else []:
        words.append(f"{key}={draw(PROP_VALUES.get(key, ODD_TEXT))}")
    shape = SHAPES.get(spec.name, "")
    for i, kind in enumerate(shape):
        if kind == "*":
            words += draw(st.lists(KINDS[shape[i - 1]], max_size=2))
        else:
            words.append(draw(KINDS[kind]))
    return words


LIST_OUTPUTS = ["cpu", "memory,network", "status", "console,disk,domain", "cpu,", "", "bogus", "disk,disk"]


def argvs(verb: str, machine: Machine) -> st.SearchStrategy[list[str]]:
    # Mostly well-formed lines (they reach the state checks and execute), some word salad.
    return st.one_of(well_formed(verb, machine), well_formed(verb, machine), any_words(verb, machine))


@st.composite
def any_words(draw: st.DrawFn, verb: str, machine: Machine) -> list[str]:
    """Words of every kind in any order: mostly refused by the grammar or the argument checks."""
    spec = lookup(verb).spec
    word_kinds: list[st.SearchStrategy[list[str]]] = [
        NAMES.map(lambda w: [w]),
        NUMBERS.map(lambda w: [w]),
        SIZES.map(lambda w: [w]),
        SERVICES.map(lambda w: [w]),
        VARIABLES.map(lambda w: [w]),
        FOREIGN_FLAGS.map(lambda w: [w]),
        ODD_TEXT.map(lambda w: [w]),
    ]
    if spec.flags:
        word_kinds.append(st.sampled_from(spec.flags).map(lambda w: [w]))
    if spec.props:
        word_kinds.append(
            st.sampled_from(spec.props).flatmap(
                lambda k: PROP_VALUES.get(k, ODD_TEXT).map(lambda v: [f"{k}={v}"])
            )
        )
        word_kinds.append(st.sampled_from(spec.props).map(lambda k: [k]))  # a key without '='
    for flag in spec.value_flags:
        value = xml_documents(machine) if flag == "-i" else st.sampled_from(LIST_OUTPUTS) | ODD_TEXT
        word_kinds.append(value.map(lambda v, f=flag: [f, v]))
    words = draw(st.lists(st.one_of(word_kinds), max_size=6))
    return [w for group in words for w in group]


# ------------------------------------------------------------------------------------------- invariants
def check_invariants(m: Machine) -> None:
    plat = m.platform
    holders = [d for d in m.domains if d.state != DomainState.INACTIVE]
    for d in m.domains:
        assert (d.bindings is not None) == (d.state != DomainState.INACTIVE), f"{d.name}: bindings vs state"
    strands = [s for d in holders for s in (*d.bindings.strands, *d.bindings.reserved_strands)]  # type: ignore[union-attr]
    assert len(strands) == len(set(strands)), "a strand is held twice"
    assert set(strands) <= set(range(plat.nstrands))
    maus = [u for d in holders for u in d.bindings.maus]  # type: ignore[union-attr]
    assert len(maus) == len(set(maus)), "a MAU is held twice"
    for d in holders:
        b = d.bindings
        assert b is not None
        cores = {plat.core_of(s) for s in b.strands}
        assert {plat.maus[u].core for u in b.maus} <= cores, f"{d.name}: a MAU without a strand of its core"
        h = plat.hw_max_pagesize
        for x in b.mblocks:
            assert x.size > 0
            if d.config.is_control:
                assert x.ra == x.pa, f"{d.name}: control domain block with RA != PA: {x}"
            else:
                assert x.pa % h == x.ra % h, f"{d.name}: block not congruent: {x}"
    blocks = sorted((x for d in holders for x in d.bindings.mblocks), key=lambda x: x.pa)  # type: ignore[union-attr]
    for a, b2 in itertools.pairwise(blocks):
        assert a.pa_end <= b2.pa, f"PA ranges overlap: {a} {b2}"
    for x in blocks:
        assert any(r.pa <= x.pa and x.pa_end <= r.end for r in plat.usable_memory), (
            f"block outside memory: {x}"
        )
    ports = [
        (d.bindings.console_service, d.bindings.console_port) for d in holders if d.bindings.console_port
    ]  # type: ignore[union-attr]
    assert len(ports) == len(set(ports)), "a console port is held twice"
    names = [d.name for d in m.domains]
    assert len(names) == len(set(names))


def check_listable(m: Machine) -> None:
    """Everything ldm can print about the machine is produced, and `-x` reads back."""
    view = HostView(machine=m, now=CTX.now + 60)
    for verb, flags in (
        ("list-domain", {}), ("list-domain", {"-l": True}), ("list-domain", {"-l": True, "-p": True}),
        ("list-domain", {"-e": True}), ("list-bindings", {}), ("list-bindings", {"-p": True}),
        ("list-constraints", {}), ("list-constraints", {"-p": True}), ("list-devices", {"-a": True}),
        ("list-devices", {"-p": True}), ("list-services", {}), ("list-services", {"-p": True}),
        ("list-spconfig", {}),
    ):  # fmt: skip
        FORMATTERS[verb](view, Request(verb=verb, flags=flags))
    xml = FORMATTERS["list-constraints"](view, Request(verb="list-constraints", flags={"-x": True}))
    back = constraints_from_xml(xml)
    assert [c.name for c in back] == [d.name for d in m.domains]


def note(what: str) -> None:
    """A Hypothesis event (shown by --hypothesis-show-statistics) when running under Hypothesis."""
    if currently_in_test_context():
        event(what)


def check_messages(messages: tuple[str, ...]) -> None:
    for msg in messages:
        assert isinstance(msg, str)
        if msg in (DR_FIRST_NOTICE, DR_NOTICE):
            continue
        assert_clear_error(msg)


def attempt(machine: Machine, verb: str, argv: list[str]) -> None:
    """One fuzzed command line, parsed by the verb's grammar and run: the contract of the module docstring.
    Listing verbs are also formatted, as ldm does with the daemon's view."""
    op = lookup(verb)
    try:
        request = parse_args(op.spec, argv)
    except LdmError as e:
        note("refused by the grammar")
        assert_clear_error(e.message)
        return
    run_request(machine, request, format_listing=not op.spec.mutates)


def run_request(machine: Machine, request: Request, *, format_listing: bool = False) -> None:
    before = copy.deepcopy(machine)
    try:
        result = run(machine, request, CTX)
        if format_listing:
            FORMATTERS[lookup(request.verb).spec.name](HostView(machine=machine, now=CTX.now), request)
    except LdmError as e:
        note(f"refused: {type(e).__name__}")
        assert_clear_error(e.message)
        assert machine == before, f"{request} was refused but changed the machine"
        return
    assert machine == before, "an operation changed its input machine"
    note("accepted")
    check_messages(result.messages)
    if result.machine is machine:
        return
    check_invariants(result.machine)
    assert decode(Machine, to_json(result.machine)) == result.machine, "the store cannot round-trip it"
    check_listable(result.machine)


# --------------------------------------------------------------------------------------- API-shaped requests
@st.composite
def api_requests(draw: st.DrawFn, machine: Machine) -> Request:
    """What the local API accepts and no ldm sends: a fuzzed command line as ldm would parse it, then given a
    flag whose value is `true` where a string is expected (or the reverse), a property of another verb, an
    alias or a mangled verb name."""
    verb = draw(st.sampled_from(VERBS))
    spec = lookup(verb).spec
    argv = draw(argvs(verb, machine))
    try:
        req = parse_args(spec, argv)
    except LdmError:
        req = Request(verb=verb, operands=tuple(argv))
    twist = draw(st.sampled_from(["none", "none", "flag-type", "foreign-prop", "alias", "unknown-verb"]))
    if twist == "flag-type":
        flag = draw(st.sampled_from([*spec.flags, *spec.value_flags, "-i", "-o", "-x"]))
        value = draw(st.booleans() | st.sampled_from(["", "x", "<a/>", "cpu"]))
        req = replace(req, flags={**req.flags, flag: value})
    elif twist == "foreign-prop":
        req = replace(req, props=(*req.props, (draw(st.sampled_from(["mblock", "mac-addr", "x", ""])), "1")))
    elif twist == "alias" and spec.aliases:
        req = replace(req, verb=draw(st.sampled_from(spec.aliases)))
    elif twist == "unknown-verb":
        mangled = [verb.upper(), verb + " ", "list domain", "\x00", "é" * 64]
        req = replace(req, verb=draw(st.sampled_from(mangled)))
    return req


# ------------------------------------------------------------------------------------------- the tests
def fuzz_verb(verb: str, machine_name: str, examples: int) -> None:
    machine = MACHINES[machine_name]()

    @settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
    )
    @given(argv=argvs(verb, machine))
    def fuzz(argv: list[str]) -> None:
        attempt(machine, verb, argv)

    fuzz()


def fuzz_requests(machine_name: str, examples: int) -> None:
    machine = MACHINES[machine_name]()

    @settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
    )
    @given(request=api_requests(machine))
    def fuzz(request: Request) -> None:
        run_request(machine, request)

    fuzz()


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("machine_name", sorted(MACHINES))
def test_verb_arguments(verb: str, machine_name: str) -> None:
    fuzz_verb(verb, machine_name, examples=25)


@pytest.mark.parametrize("machine_name", sorted(MACHINES))
def test_requests_as_the_api_takes_them(machine_name: str) -> None:
    fuzz_requests(machine_name, examples=300)


@pytest.mark.slow
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("machine_name", sorted(MACHINES))
def test_verb_arguments_long(verb: str, machine_name: str) -> None:
    fuzz_verb(verb, machine_name, examples=400)


@pytest.mark.slow
@pytest.mark.parametrize("machine_name", sorted(MACHINES))
def test_requests_as_the_api_takes_them_long(machine_name: str) -> None:
    fuzz_requests(machine_name, examples=5000)


def test_the_machines_are_sound() -> None:
    for make in MACHINES.values():
        m = make()
        check_invariants(m)
        check_listable(m)
