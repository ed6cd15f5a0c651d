"""One deterministic test per bug the fuzzers found in the operations, the CLI grammar and the model (the
platform file bugs have theirs in `test_fuzz_platform`'s fixed cases)."""

from __future__ import annotations

import pytest

from ldoms.cli.parse import parse_args
from ldoms.errors import MAX_MESSAGE, LdmError, UsageError, one_line
from ldoms.model.machine import Machine
from ldoms.model.xmlio import constraints_from_xml, constraints_to_xml
from ldoms.ops.base import Request, lookup, run
from ldoms.units import parse_mac, parse_size
from tests.fuzz.conftest import CTX, assert_clear_error, configured, factory, ldm


def refused(machine: Machine, *argv: str) -> LdmError:
    with pytest.raises(LdmError) as e:
        ldm(machine, *argv)
    assert_clear_error(e.value.message)
    return e.value


# ------------------------------------------------------------------------------------------- one line
def test_one_line_escapes_and_cuts() -> None:
    assert one_line("LDom a\nb\x00c\ud800 not found") == "LDom a\\nb\\x00c\\ud800 not found"
    assert one_line("tab\there, nel\x85, ls\u2028") == "tab\\there, nel\\x85, ls\\u2028"
    cut = one_line("LDom " + "x" * 5000 + " not found")
    assert cut == "LDom " + "x" * 100 + "... not found"
    assert len(one_line("a " * 100_000)) == MAX_MESSAGE
    assert one_line("Usage: ldm add-vcpu [-c] number ldom") == "Usage: ldm add-vcpu [-c] number ldom"


def test_refusals_quoting_control_characters_stay_one_line() -> None:
    e = refused(factory(), "add-domain", "a\nb")
    assert "Invalid LDom name 'a\\nb'" in e.message
    e = refused(factory(), "list", "ldg\x1b[31m")
    assert "'ldg\\x1b[31m'" in e.message
    with pytest.raises(UsageError) as u:
        run(factory(), Request(verb="nosuch\nverb"), CTX)
    assert u.value.message == "Unknown command: nosuch\\nverb"
    with pytest.raises(UsageError) as u:
        lookup("\x1f")
    assert u.value.message == "Unknown command: \\x1f"


def test_grammar_errors_quoting_control_characters_stay_one_line() -> None:
    spec = lookup("add-vcpu").spec
    for argv in (["-\x1f"], ["8", "ldg1", "\x1f"], ["--a\nb"]):
        with pytest.raises(UsageError) as e:
            parse_args(spec, argv)
        assert_clear_error(e.value.message)


def test_megabyte_operands_are_cut_in_messages() -> None:
    e = refused(factory(), "list", "a" * 1_000_000)
    assert len(e.message) < 400 and "aaaa..." in e.message


# ----------------------------------------------------------------------------------------- trailing newlines
@pytest.mark.parametrize(
    "argv",
    [
        ("add-domain", "new1\n"),
        ("set-var", "auto-boot?\n=true", "ldg1"),
        ("add-vdsdev", "/var/img9\n", "vol9@primary-vds0"),
        ("set-vsw", "net-dev=e1000g1\n", "primary-vsw0"),
    ],
)
def test_a_trailing_newline_is_not_part_of_a_valid_name(argv: tuple[str, ...]) -> None:
    """`re.match` with `$` accepts a trailing newline: such names were created and broke every listing."""
    refused(configured(), *argv)


def test_mac_with_trailing_newline() -> None:
    with pytest.raises(UsageError):
        parse_mac("00:14:4f:f8:00:01\n")


# ------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "argv",
    [
        ("set-vcpu", "٨", "ldg3"),  # Arabic-Indic eight: int() takes it, LDoms would not
        ("set-mem", "١G", "ldg3"),
        ("set-vcpu", "9" * 5000, "ldg3"),  # int() refuses more than 4300 digits with a ValueError
        ("set-mem", "9" * 5000 + "M", "ldg3"),
        ("set-crypto", "9" * 30, "ldg3"),
        ("add-vnet", "mtu=" + "9" * 5000, "vnet9", "primary-vsw0", "ldg3"),
        ("add-vnet", "pvid=" + "9" * 5000, "vnet9", "primary-vsw0", "ldg3"),
        ("add-vnet", "id=" + "9" * 5000, "vnet9", "primary-vsw0", "ldg3"),
        ("add-vcc", "port-range=5000-" + "9" * 5000, "vcc9", "primary"),
        ("set-vcons", "port=" + "9" * 5000, "ldg3"),
    ],
)
def test_numbers_are_ascii_and_bounded(argv: tuple[str, ...]) -> None:
    e = refused(configured(), *argv)
    assert isinstance(e, UsageError)


def test_sizes_of_many_digits() -> None:
    with pytest.raises(UsageError) as e:
        parse_size("9" * 5000 + "G")
    assert "the number is too large" in e.value.message
    with pytest.raises(UsageError):
        parse_size("٤G")


def test_xml_numbers_are_ascii() -> None:
    doc = constraints_to_xml([configured().domain("ldg3").config]).replace(
        "<number>8</number>", "<number>٨</number>"
    )
    with pytest.raises(UsageError) as e:
        constraints_from_xml(doc)
    assert_clear_error(e.value.message)


# --------------------------------------------------------------------------------------- what must read back
@pytest.mark.parametrize("value", ["a\x1fb", "a\rb", "\ud800", "x\x00"])
def test_variable_values_that_no_constraints_document_can_carry(value: str) -> None:
    """Accepted, they made `list-constraints -x` (and so a migration) of the domain fail later."""
    e = refused(configured(), "set-var", f"boot-device={value}", "ldg3")
    assert "variable boot-device" in e.message


@pytest.mark.parametrize("name", ["a\x00", "a\x7f", "\x1b"])
def test_variable_names_with_control_characters(name: str) -> None:
    refused(configured(), "set-var", f"{name}=1", "ldg3")


def test_the_variable_name_is_checked_before_its_value() -> None:
    e = refused(configured(), "set-var", "=\x1f", "ldg3")
    assert e.message.startswith("Invalid variable name ''")


def test_backend_with_the_parseable_separator() -> None:
    """A '|' in a backend broke `list-constraints -p`, whose reader refused it."""
    e = refused(configured(), "add-vdsdev", "/var/a|b", "vol9@primary-vds0")
    assert "other than '|'" in e.message


def test_xml_messages_quoting_control_characters_stay_one_line() -> None:
    doc = constraints_to_xml([configured().domain("ldg3").config]).replace(
        "<size>1G</size>", "<size>\x7f\x90</size>"
    )
    with pytest.raises(UsageError) as e:
        constraints_from_xml(doc)
    assert_clear_error(e.value.message)
    assert "'\\x7f\\x90'" in e.value.message
