"""`constraints_from_parseable` on malformed `ldm list-constraints -p` text: every error names the line."""

from __future__ import annotations

import pytest

from ldoms.errors import UsageError
from ldoms.model.domain import IoAssignment, NamedMblock, Vdisk
from ldoms.model.parseable import constraints_from_parseable

HEAD = "VERSION 1.0\nDOMAIN|name=ldg1\n"


def fails(text: str, *fragments: str) -> None:
    with pytest.raises(UsageError) as e:
        constraints_from_parseable(text)
    for f in fragments:
        assert f in str(e.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the first line must be 'VERSION 1.0', not ''"),
        ("DOMAIN|name=ldg1\n", "the first line must be 'VERSION 1.0', not 'DOMAIN|name=ldg1'"),
        ("VERSION one\n", "not 'VERSION one'"),
        (
            "VERSION 1.0\nVCPU|count=1\n",
            "line 2 ('VCPU|count=1'): a record must follow a DOMAIN|name= record",
        ),
        ("VERSION 1.0\n|vol=x\n", "line 2 ('|vol=x'): a '|key=value' row must follow"),
        (HEAD + "VCPU|count=1\n|x=1\n", "line 4 ('|x=1'): a '|key=value' row must follow"),
        (HEAD + "NETWORK|name=x\n", "line 3 ('NETWORK|name=x'): unknown record 'NETWORK'"),
        ("VERSION 1.0\nDOMAIN\n", "line 2 ('DOMAIN'): 'name=' is missing or empty"),
        (
            HEAD + "VCPU|count=1|cores=2\n",
            "line 3 ('VCPU|count=1|cores=2'): unknown key 'cores' in a VCPU record",
        ),
        (HEAD + "VCPU|count=1|count=2\n", "'count=' is given more than once"),
        (HEAD + "VCPU|count\n", "'count' is not a key=value pair"),
        (
            HEAD + "VCPU|count=1\nCORE|count=1\n",
            "line 4 ('CORE|count=1'): LDom ldg1 has more than one CORE record",
        ),
        (HEAD + "MEMORY|size=1\nMEMORY|size=1\n", "LDom ldg1 has more than one MEMORY record"),
        (HEAD + "VCPU|count=x\n", "invalid count 'x': expected a whole number"),
        (HEAD + "MEMORY|size=lots\n", "invalid size 'lots': expected a number of bytes"),
        (HEAD + "MEMORY|size=" + "9" * 30 + "\n", "invalid size '999"),
        (HEAD + "MEMORY|size=1\n|pa=zz|size=1\n", "line 4 ('|pa=zz|size=1'): invalid pa 'zz'"),
        (HEAD + "MEMORY|size=1\n|pa=0x" + "f" * 30 + "|size=1\n", "invalid pa '0xfff"),
        (HEAD + "HOSTID|hostid=\n", "'hostid=' is missing or empty"),
        (HEAD + "MAC|mac-addr=00:11\n", "invalid mac-addr '00:11': expected six colon-separated octets"),
        (HEAD + "VNET|name=v|dev=net@0|service=s\n", "invalid dev 'net@0': expected network@<number>"),
        (
            HEAD + "VNET|name=v|dev=network@0|service=s|vid=1;2\n",
            "invalid vid '1;2': expected comma-separated",
        ),
        (
            HEAD + "VNET|name=v|dev=network@0|service=s|mode=fast\n",
            "invalid mode 'fast': expected nothing or hybrid",
        ),
        (HEAD + "VSW|name=v|dev=switch@x\n", "invalid dev 'switch@x': expected switch@<number>"),
        (HEAD + "VCC|name=c|port-range=5000\n", "invalid port-range '5000': expected <min>-<max>"),
        (HEAD + "VDISK|name=d|vol=vol0\n", "invalid vol 'vol0': expected <volume>@<vds>"),
        (HEAD + "VDISK|name=d|vol=@vds\n", "invalid vol '@vds'"),
        (
            HEAD + "VDS|name=vds0\n|vol=v|opts=rw|dev=/d\n",
            "invalid opts 'rw': expected a subset of ro,slice,excl",
        ),
        (HEAD + "VDS|name=vds0\n|vol=v|opts=ro,ro|dev=/d\n", "invalid opts 'ro,ro'"),
        (HEAD + "VDS|name=vds0\n|vol=v|opts=\n", "'dev=' is missing or empty"),
        (HEAD + "IO\n|dev=pci@780|alias=|bypass=yes\n", "invalid bypass 'yes'"),
        (HEAD + "VARIABLES\n|novalue\n", "line 4 ('|novalue'): a variable row must be '|name=value'"),
        (HEAD + "CONTROL|failure-policy=explode\n", "LDom ldg1: invalid failure-policy 'explode'"),
        (HEAD + "DOMAIN|name=ldg1\n", "LDom ldg1 is defined more than once"),
        (HEAD + "VARIABLES\n|a b=1\n", "invalid variable name 'a b'"),
        (HEAD + "VNET|name=v|dev=network@0|service=s\n" * 2, "LDom ldg1: vnet v is defined more than once"),
    ],
)
def test_errors_name_the_line(text: str, fragment: str) -> None:
    fails(text, "Invalid parseable constraints" if "VERSION" not in fragment else "", fragment)


def test_long_lines_are_shortened_in_messages() -> None:
    with pytest.raises(UsageError) as e:
        constraints_from_parseable(HEAD + "VCPU|count=x" + "|" + "y" * 200 + "\n")
    assert "...'" in str(e.value) and len(str(e.value)) < 300


def test_lenient_input() -> None:
    text = (
        "VERSION 1.4\n\nDOMAIN|name=ldg1\nMEMORY|size=512M\n|pa=0x0|size=512M\n"
        "IO\n|dev=pci@780|alias=bus_a\n|dev=pci@7c0|bypass=off\n"
        "VDISK|name=d|vol=v@vds0\nVARIABLES\n|nvramrc=a=b|c\n|empty=\n"
    )
    (c,) = constraints_from_parseable(text)  # no trailing newline needed, blank lines skipped
    assert c.memory == 512 * 1024 * 1024
    assert c.mblocks == (NamedMblock(pa=0, size=512 * 1024 * 1024),)
    assert c.io == (IoAssignment(dev="pci@780"), IoAssignment(dev="pci@7c0"))
    assert c.vdisks == (Vdisk(name="d", volume="v", service="vds0"),)
    assert c.variables == (("nvramrc", "a=b|c"), ("empty", ""))
    assert (c.uuid, c.hostid, c.mac, c.vcpus, c.vcons) == ("", 0, 0, 0, None)


def test_crlf_line_ends() -> None:
    (c,) = constraints_from_parseable("VERSION 1.0\r\nDOMAIN|name=ldg1\r\nVARIABLES\r\n|a=b \r\n")
    assert c.variables == (("a", "b "),)
