"""`constraints_from_xml` on hostile, malformed and invalid documents: each fails with a `UsageError` that
names the problem, quickly (no entity is expanded, nothing is fetched, nothing deep is built)."""

from __future__ import annotations

import pytest

from ldoms.errors import UsageError
from ldoms.model.domain import DomainConfig, Vcons
from ldoms.model.xmlio import XML_MAX_BYTES, XML_MAX_DEPTH, constraints_from_xml, constraints_to_xml
from ldoms.units import G


def doc(ldom_body: str, *, data_attrs: str = ' version="2.0"') -> str:
    return (
        '<?xml version="1.0"?>\n<LDM_interface version="1.0">\n'
        f"<data{data_attrs}>\n<ldom>\n{ldom_body}\n</ldom>\n</data>\n</LDM_interface>\n"
    )


INFO = "<ldom_info><ldom_name>ldg1</ldom_name></ldom_info>"


def fails(text: str | bytes, *fragments: str) -> str:
    with pytest.raises(UsageError) as e:
        constraints_from_xml(text)
    for f in fragments:
        assert f in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------------------------------------ hostile
BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + "".join(
        f' <!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">\n'
        for i in range(1, 10)
    )
    + "]>\n"
    + doc(f"{INFO}<var><name>x</name><value>&lol9;</value></var>").split("\n", 1)[1]
)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (BILLION_LAUGHS, "DTDForbidden"),
        (
            '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            f"<LDM_interface><data><ldom>{INFO}<var><name>x</name><value>&xxe;</value></var></ldom></data>"
            "</LDM_interface>",
            "DTDForbidden",
        ),
        ('<!DOCTYPE LDM_interface SYSTEM "http://127.0.0.1:9/evil.dtd"><LDM_interface/>', "DTDForbidden"),
        ('<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p">%p;]><LDM_interface/>', "DTDForbidden"),
        ("<LDM_interface><data><ldom>&undefined;</ldom></data></LDM_interface>", "undefined entity"),
    ],
)
def test_entities_dtds_and_external_references_are_refused(text: str, fragment: str) -> None:
    msg = fails(text, fragment)
    assert "/etc/passwd" not in msg.replace("file:///etc/passwd", "")
    assert "root:" not in msg


@pytest.mark.timeout(20)
def test_deep_nesting_stops_at_the_depth_limit() -> None:
    n = 100_000  # 700 KB: under the size cap, so the depth check is what stops it
    fails("<a>" * n + "</a>" * n, f"deeper than {XML_MAX_DEPTH} levels")


@pytest.mark.timeout(20)
def test_deep_nesting_inside_a_valid_shape() -> None:
    fails(doc(INFO + "<cpu><number>" + "<x>" * 50 + "</x>" * 50 + "</number></cpu>"), "deeper than")


@pytest.mark.timeout(20)
def test_oversized_document_is_refused_before_parsing() -> None:
    body = INFO + "<var><name>x</name><value>" + "a" * XML_MAX_BYTES + "</value></var>"
    fails(doc(body), "bytes, more than the 1048576 allowed")
    fails(doc(body).encode(), "more than the 1048576 allowed")


@pytest.mark.timeout(20)
def test_long_element_names_are_cut_in_messages() -> None:
    msg = fails(doc(INFO + f"<{'x' * 100_000}/>"), "unknown element <xxxxxxxx")
    assert len(msg) < 200
    long_name = "l" * 100_000
    msg = fails(
        doc(f"<ldom_info><ldom_name>{long_name}</ldom_name></ldom_info><cpu/><cpu/>"), "more than one <cpu>"
    )
    assert len(msg) < 200
    msg = fails(doc(f"<ldom_info><ldom_name>{long_name}</ldom_name></ldom_info>"), "Invalid LDom name 'lll")
    assert len(msg) < 300


@pytest.mark.timeout(20)
def test_many_repeated_elements_fail_fast() -> None:
    # Half a megabyte of <cpu/>: refused as repeated, without quadratic work.
    fails(doc(INFO + "<cpu/>" * 80_000), "more than one <cpu>")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not well-formed"),
        ("hello, world", "not well-formed"),
        ('{"ldom": "ldg1"}', "not well-formed"),
        ("<LDM_interface><data></LDM_interface>", "not well-formed"),
        ("<LDM_interface/><LDM_interface/>", "junk after document element"),
        ("\x00\x01", "not well-formed"),
        ("<foo/>", "root element is <foo>, expected <LDM_interface>"),
        ('<x:LDM_interface xmlns:x="urn:x"/>', "root element is <{urn:x}LDM_interface>"),
    ],
)
def test_not_a_constraints_document(text: str, fragment: str) -> None:
    fails(text, "Invalid constraints XML", fragment)


# ------------------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("<LDM_interface><cmd/></LDM_interface>", "unknown element <cmd> in <LDM_interface>"),
        ("<LDM_interface><data><domain/></data></LDM_interface>", "unknown element <domain> in <data>"),
        (doc(INFO + "<vcpu><number>1</number></vcpu>"), "unknown element <vcpu> in <ldom> of LDom ldg1"),
        (doc(INFO + "<mblock/>"), "unknown element <mblock> in <ldom> of LDom ldg1"),
        (doc(INFO + "<cpu><count>1</count></cpu>"), "unknown element <count> in LDom ldg1: <cpu>"),
        (doc(INFO + "<cpu><number><x/></number></cpu>"), "unknown element <x> in LDom ldg1: <cpu><number>"),
        (doc(INFO + "<memory><sizes>1G</sizes></memory>"), "unknown element <sizes> in LDom ldg1: <memory>"),
        (
            doc(INFO + "<memory><size><x/></size></memory>"),
            "unknown element <x> in LDom ldg1: <memory><size>",
        ),
        (
            doc(INFO + "<memory><size>1G</size><size>2G</size></memory>"),
            "<memory><size> is given more than once",
        ),
        (doc(INFO + "<memory><mblock><pa>0x0</pa></mblock></memory>"), "<mblock><size> is missing"),
        (doc(INFO.replace("ldom_name>", "name>")), "unknown element <name> in <ldom_info>"),
        (doc("<cpu/>"), "<ldom> number 1 has no <ldom_info><ldom_name>"),
        (doc(INFO + INFO), "<ldom> number 1 has more than one <ldom_info>"),
        (doc("<ldom_info><ldom_name> </ldom_name></ldom_info>"), "<ldom_info><ldom_name> is missing"),
        (doc(INFO + "<cpu/><cpu/>"), "<ldom> of LDom ldg1 has more than one <cpu>"),
        (
            doc(INFO + "<cpu><number>1</number><number>2</number></cpu>"),
            "<cpu><number> is given more than once",
        ),
        (doc(INFO + "<network><vnet_name>v</vnet_name></network>"), "<network><service_name> is missing"),
        (doc(INFO + "<cpu>8</cpu>"), "<cpu>: unexpected text '8'"),
        (doc(INFO + "<cpu><number>8</number>eight</cpu>"), "unexpected text 'eight' after <number>"),
        (doc(INFO, data_attrs=' version="3.0"'), '<data version="3.0"> is not supported'),
        (
            doc(
                INFO + "<vds_volume><vol_name>v</vol_name><service_name>nope</service_name>"
                "<block_dev>/d</block_dev></vds_volume>"
            ),
            "LDom ldg1: <vds_volume> v: vds nope is not defined in this <ldom>",
        ),
    ],
)
def test_structure_errors_name_the_element(text: str, fragment: str) -> None:
    fails(text, fragment)


# ----------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("<memory><size>lots</size></memory>", "LDom ldg1: <memory><size>: invalid size 'lots'"),
        ("<memory><size>" + "9" * 40 + "</size></memory>", "<memory><size>: invalid size"),
        (
            "<memory><mblock><pa>xyz</pa><size>1G</size></mblock></memory>",
            "<memory><mblock><pa>: invalid hexadecimal",
        ),
        (
            "<memory><mblock><pa>0x0</pa><size>big</size></mblock></memory>",
            "<memory><mblock><size>: invalid size 'big'",
        ),
        ("<cpu><number>eight</number></cpu>", "<cpu><number>: invalid number 'eight'"),
        ("<cpu><number>-1</number></cpu>", "<cpu><number>: invalid number '-1'"),
        ("<cpu><number>" + "9" * 5000 + "</number></cpu>", "<cpu><number>: invalid number"),
        ("<cpu><wcore>2</wcore><max-cores>many</max-cores></cpu>", "<cpu><max-cores>: invalid number 'many'"),
        ("<mau><number>x</number></mau>", "<mau><number>: invalid number 'x'"),
        (
            "<network><vnet_name>v</vnet_name><service_name>s</service_name><mac_address>zz</mac_address></network>",
            "<network><mac_address>: invalid MAC address 'zz'",
        ),
        (
            "<network><vnet_name>v</vnet_name><service_name>s</service_name><vid>1,x</vid></network>",
            "<network><vid>: invalid VLAN id list '1,x'",
        ),
        (
            "<network><vnet_name>v</vnet_name><service_name>s</service_name><mode>turbo</mode></network>",
            "<network><mode>: invalid value 'turbo': expected nothing or hybrid",
        ),
        (
            "<physio_device><name>pci@780</name><bypass>maybe</bypass></physio_device>",
            "<physio_device><bypass>: invalid value 'maybe'",
        ),
        (
            "<vds><service_name>vds0</service_name></vds><vds_volume><vol_name>v</vol_name>"
            "<service_name>vds0</service_name><block_dev>/d</block_dev><vol_opts>rw</vol_opts></vds_volume>",
            "<vds_volume><vol_opts>: invalid options 'rw'",
        ),
        (
            "<vds><service_name>vds0</service_name></vds><vds_volume><vol_name>v</vol_name>"
            "<service_name>vds0</service_name><block_dev>/d</block_dev><vol_opts>ro,ro</vol_opts></vds_volume>",
            "invalid options 'ro,ro'",
        ),
        (
            "<vcc><service_name>c</service_name><min_port>a</min_port><max_port>1</max_port></vcc>",
            "<vcc><min_port>: invalid number 'a'",
        ),
        ("<console><port>none</port></console>", "<console><port>: invalid number 'none'"),
    ],
)
def test_value_errors_name_the_element_and_the_value(body: str, fragment: str) -> None:
    fails(doc(INFO + body), fragment)


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        ("<hostid>0xzz</hostid>", "<ldom_info><hostid>: invalid hexadecimal number '0xzz'"),
        ("<hostid>0x" + "f" * 40 + "</hostid>", "<ldom_info><hostid>: invalid hexadecimal number"),
        ("<mac_address>1:2:3</mac_address>", "<ldom_info><mac_address>: invalid MAC address '1:2:3'"),
        ("<failure-policy>explode</failure-policy>", "invalid failure-policy 'explode'"),
        ("<cpu-arch>x86</cpu-arch>", "invalid cpu-arch 'x86'"),
        ("<uuid>not-a-uuid</uuid>", "invalid uuid 'not-a-uuid'"),
        ("<master>a,b,c,d,e</master>", "5 master domains given: at most 4"),
        ("<master>ldg1</master>", "LDom ldg1 cannot be its own master"),
    ],
)
def test_domain_level_values(info: str, fragment: str) -> None:
    fails(doc(f"<ldom_info><ldom_name>ldg1</ldom_name>{info}</ldom_info>"), fragment)


def test_semantic_errors_from_validation() -> None:
    fails(doc("<ldom_info><ldom_name>1bad</ldom_name></ldom_info>"), "Invalid LDom name '1bad'")
    two = (
        '<LDM_interface><data version="2.0"><ldom>'
        + INFO
        + "</ldom><ldom>"
        + INFO
        + "</ldom></data></LDM_interface>"
    )
    fails(two, "LDom ldg1 is defined more than once")
    fails(
        doc(INFO + "<memory><size>1G</size><mblock><pa>0x0</pa><size>512M</size></mblock></memory>"),
        "memory size 1G is not the sum of its named memory blocks (512M)",
    )


# ------------------------------------------------------------------------------------------ what is accepted
def test_defaults_and_lenient_input() -> None:
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<!-- saved with ldm list-constraints -x -->\n'
        '<LDM_interface version="1.0"><data>\n<ldom>\n'
        "  <ldom_info>\n    <ldom_name>\n      ldg1\n    </ldom_name>\n"
        "    <hostid>84faed88</hostid>\n  </ldom_info>\n"
        "  <cpu><number> 4 </number></cpu>\n  <memory><size>1073741824</size></memory>\n"
        "  <console/>\n</ldom>\n</data></LDM_interface>"
    )
    (c,) = constraints_from_xml(text)
    assert c == DomainConfig(
        name="ldg1", uuid="", hostid=0x84FAED88, mac=0, vcpus=4, memory=1 * G, vcons=Vcons()
    )


def test_bytes_with_an_encoding_declaration() -> None:
    text = doc(INFO + "<var><name>greeting</name><value>grüß dich</value></var>").replace(
        '<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>'
    )
    (c,) = constraints_from_xml(text.encode("utf-16"))
    assert c.variables == (("greeting", "grüß dich"),)


def test_a_str_ignores_its_declared_encoding() -> None:
    text = doc(INFO).replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
    assert [c.name for c in constraints_from_xml(text)] == ["ldg1"]


@pytest.mark.parametrize(
    "text",
    [
        "<LDM_interface>\ud800</LDM_interface>",
        b'<?xml version="1.0" encoding="no-such-encoding"?><LDM_interface/>',
    ],
)
def test_undecodable_text(text: str | bytes) -> None:
    fails(text, "Invalid constraints XML: the text cannot be decoded")


def test_memory_size_defaults_to_the_named_blocks() -> None:
    (c,) = constraints_from_xml(
        doc(INFO + "<memory><mblock><pa>0x8000000</pa><size>256M</size></mblock></memory>")
    )
    assert c.memory == 256 * 1024 * 1024 and c.mblocks[0].pa == 0x8000000


def test_whole_core_and_unlimited_max_cores() -> None:
    (c,) = constraints_from_xml(
        doc(INFO + "<cpu><number>16</number><wcore>2</wcore><max-cores>unlimited</max-cores></cpu>")
    )
    assert (c.vcpus, c.whole_core, c.max_cores) == (2, True, 0)


def test_special_characters_survive() -> None:
    value = " <&>\"' \r\n\t]]> &amp; "
    c = DomainConfig(name="ldg1", uuid="", hostid=0, mac=0, variables=(("x", value), ("empty", "")))
    assert constraints_from_xml(constraints_to_xml([c])) == [c]


def test_writer_refuses_what_xml_cannot_carry() -> None:
    c = DomainConfig(name="ldg1", uuid="", hostid=0, mac=0, variables=(("x", "a\x01b"),))
    with pytest.raises(UsageError, match="U\\+0001, which XML cannot carry"):
        constraints_to_xml([c])
