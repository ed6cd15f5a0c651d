"""ldm's grammar: VerbSpec-driven parsing into a Request (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ldoms.cli.parse import parse_args, synopsis
from ldoms.errors import UsageError
from ldoms.ops.base import VerbSpec

LIST = VerbSpec(
    name="list-domain",
    aliases=("ls", "list"),
    flags=("-e", "-l", "-p"),
    value_flags=("-o",),
    usage="list-domain [-e] [-l] [-o format] [-p] [ldom...]",
    mutates=False,
)
ADD_VNET = VerbSpec(
    name="add-vnet",
    props=("mac-addr", "mode", "pvid"),
    min_operands=3,
    max_operands=3,
    usage="add-vnet [mac-addr=num] [mode=hybrid] [pvid=port-vlan-id] if-name vswitch-name ldom",
)
SET_VAR = VerbSpec(name="set-variable", min_operands=1, usage="set-variable var-name=[value]... ldom")
ADD_DOM = VerbSpec(name="add-domain", value_flags=("-i",), props=("mac-addr",), usage="add-domain -i file")
MIGRATE = VerbSpec(
    name="migrate-domain", flags=("-n", "--auto-adj"), value_flags=("-p", "--password-file"), min_operands=2
)


def test_plain_flags_and_operands() -> None:
    r = parse_args(LIST, ["-l", "-p", "ldg1", "ldg2"])
    assert r.verb == "list-domain"
    assert r.flags == {"-l": True, "-p": True}
    assert r.operands == ("ldg1", "ldg2") and r.props == ()


def test_combined_boolean_flags() -> None:
    assert parse_args(LIST, ["-lpe"]).flags == {"-l": True, "-p": True, "-e": True}


@pytest.mark.parametrize(
    "argv", [["-o", "cpu,memory"], ["-ocpu,memory"], ["-po", "cpu,memory"], ["-pocpu,memory"]]
)
def test_value_flag_forms(argv: list[str]) -> None:
    r = parse_args(LIST, argv)
    assert r.flags["-o"] == "cpu,memory"


def test_options_may_follow_operands() -> None:
    r = parse_args(LIST, ["ldg1", "-l"])
    assert r.flags == {"-l": True} and r.operands == ("ldg1",)


def test_double_dash_ends_options() -> None:
    r = parse_args(LIST, ["-l", "--", "-p"])
    assert r.flags == {"-l": True} and r.operands == ("-p",)


def test_single_dash_is_an_operand() -> None:
    assert parse_args(LIST, ["-"]).operands == ("-",)


def test_known_props_and_other_key_values() -> None:
    r = parse_args(ADD_VNET, ["mac-addr=0:14:4f:1:2:3", "vnet1", "pvid=3", "primary-vsw0", "ldg1"])
    assert r.props == (("mac-addr", "0:14:4f:1:2:3"), ("pvid", "3"))
    assert r.operands == ("vnet1", "primary-vsw0", "ldg1")


def test_set_variable_pairs_are_operands() -> None:
    r = parse_args(SET_VAR, ["auto-boot?=false", "boot-device=disk net", "ldg1"])
    assert r.props == ()
    assert r.operands == ("auto-boot?=false", "boot-device=disk net", "ldg1")


def test_empty_prop_value_is_kept() -> None:
    assert parse_args(ADD_VNET, ["mode=", "a", "b", "c"]).props == (("mode", ""),)


def test_file_flag_keeps_the_name_for_the_cli_to_read() -> None:
    assert parse_args(ADD_DOM, ["-i", "ldg1.xml"]).flags == {"-i": "ldg1.xml"}


def test_long_options() -> None:
    r = parse_args(MIGRATE, ["--auto-adj", "--password-file=/p", "ldg1", "h2"])
    assert r.flags == {"--auto-adj": True, "--password-file": "/p"}
    r = parse_args(MIGRATE, ["--password-file", "/p", "-n", "-p", "pw", "ldg1", "h2"])
    assert r.flags == {"--password-file": "/p", "-n": True, "-p": "pw"}


@pytest.mark.parametrize(
    ("spec", "argv", "problem"),
    [
        (LIST, ["-z"], "Unknown option -z"),
        (LIST, ["-lz"], "Unknown option -z"),
        (LIST, ["--long"], "Unknown option --long"),
        (LIST, ["-o"], "Option -o requires a value"),
        (LIST, ["-lo"], "Option -o requires a value"),
        (LIST, ["-o", "cpu", "-o", "memory"], "Option -o given more than once"),
        (MIGRATE, ["--auto-adj=yes", "a", "b"], "Option --auto-adj takes no value"),
        (ADD_VNET, ["vnet1", "ldg1"], "Missing operands: expected at least 3 operands, got 2"),
        (SET_VAR, [], "Missing operands: expected at least 1 operand, got 0"),
        (
            ADD_VNET,
            ["a", "b", "c", "d", "e"],
            "Too many operands: expected at most 3, got 5 (unexpected: d e)",
        ),
        (ADD_VNET, ["vid=3", "a", "b", "c"], "Too many operands"),  # vid is not a prop of this verb
    ],
)
def test_usage_errors_name_the_problem_and_the_usage(spec: VerbSpec, argv: list[str], problem: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_args(spec, argv)
    assert info.value.exit_code == 2
    assert info.value.message.startswith(problem)
    assert info.value.message.endswith(f". Usage: ldm {synopsis(spec)}")
    assert "\n" not in info.value.message


def test_synopsis_is_built_when_the_spec_has_none() -> None:
    spec = VerbSpec(name="frob", flags=("-a",), value_flags=("-o",), props=("k",), max_operands=1)
    assert synopsis(spec) == "frob [-a] [-o value] [k=value] operand"
    assert synopsis(VerbSpec(name="x", max_operands=0)) == "x"
    assert synopsis(VerbSpec(name="y")) == "y operand..."


words = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@given(st.lists(words, max_size=8))
def test_any_argv_gives_a_request_or_a_usage_error(argv: list[str]) -> None:
    try:
        r = parse_args(LIST, argv)
    except UsageError as e:
        assert e.message.endswith(f"Usage: ldm {LIST.usage}")
        return
    assert set(r.flags) <= {"-e", "-l", "-p", "-o"}
    # Every word is accounted for: flags, the -o value, props, operands.
    assert len(r.operands) <= len(argv)
