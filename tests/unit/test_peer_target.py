"""Target-host resolution and address parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ldoms.errors import UsageError
from ldoms.peer import target, trust

FP = ":".join(["CD"] * 32)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.7:6482", ("192.0.2.7", 6482)),
        ("host2.example:1", ("host2.example", 1)),
        ("[::1]:9000", ("::1", 9000)),
        (" host2:65535 ", ("host2", 65535)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert target.parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("host2", ("host2", 6482)), ("[::1]", ("::1", 6482)), ("fe80::1", ("fe80::1", 6482))],
)
def test_parse_address_default_port(text: str, expected: tuple[str, int]) -> None:
    assert target.parse_address(text, default_port=6482) == expected


@pytest.mark.parametrize(
    ("text", "kw", "match"),
    [
        ("host2", {}, "the port is missing"),
        ("host2:0", {}, "port 0 is not between 1 and 65535"),
        ("host2:70000", {}, "port 70000 is not between"),
        ("[zz]:1", {}, "expected ADDR:PORT"),
        ("[1.2.3.4]:1", {}, "is not an IPv6 address"),
        ("a b:1", {}, "expected ADDR:PORT"),
        ("::1", {}, "expected ADDR:PORT"),
        ("", {"default_port": 1}, "expected ADDR:PORT"),
    ],
)
def test_parse_address_refusals(text: str, kw: dict[str, int], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        target.parse_address(text, **kw)


def test_parse_address_any_port_for_listeners() -> None:
    assert target.parse_address("127.0.0.1:0", any_port=True) == ("127.0.0.1", 0)


def test_resolve_prefers_configured_peers(tmp_path: Path) -> None:
    trust.add_peer(tmp_path, trust.make_peer("host2", "192.0.2.7", 7000, fingerprint_text=FP))
    ep = target.resolve_target(tmp_path, "HOST2")
    assert (ep.name, ep.host, ep.port, ep.fingerprint, ep.configured) == (
        "host2",
        "192.0.2.7",
        7000,
        FP,
        True,
    )
    assert ep.label == "target host host2 (192.0.2.7:7000)"


def test_resolve_by_a_peer_address_keeps_its_pin(tmp_path: Path) -> None:
    trust.add_peer(tmp_path, trust.make_peer("host2", "192.0.2.7", 7000, fingerprint_text=FP))
    ep = target.resolve_target(tmp_path, "192.0.2.7")
    assert (ep.name, ep.port, ep.fingerprint) == ("host2", 7000, FP)


def test_resolve_falls_back_to_dns_on_the_default_port(tmp_path: Path) -> None:
    ep = target.resolve_target(tmp_path, "host3.example")
    assert (ep.name, ep.host, ep.port, ep.fingerprint, ep.configured) == (
        "host3.example",
        "host3.example",
        6482,
        None,
        False,
    )
    v6 = target.resolve_target(tmp_path, "[2001:db8::1]")
    assert (v6.host, v6.address) == ("2001:db8::1", "[2001:db8::1]:6482")


def test_resolve_refusals(tmp_path: Path) -> None:
    trust.add_peer(tmp_path, trust.make_peer("a", "192.0.2.7", 7000))
    trust.add_peer(tmp_path, trust.make_peer("b", "192.0.2.7", 7001))
    with pytest.raises(
        UsageError, match=r"192.0.2.7 is ambiguous: .* a \(192.0.2.7:7000\), b \(192.0.2.7:7001\)"
    ):
        target.resolve_target(tmp_path, "192.0.2.7")
    with pytest.raises(UsageError, match="the target host is empty"):
        target.resolve_target(tmp_path, " ")
