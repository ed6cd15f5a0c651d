"""Peers (name -> address, port, pin) and trusted CAs in the home."""

from __future__ import annotations

import datetime
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ldoms.errors import AlreadyExistsError, NotFoundError
from ldoms.peer import trust
from ldoms.peer.errors import PeerConfigError
from ldoms.peer.files import atomic_write
from ldoms.peer.tls import ensure_host_tls, fingerprint


def cert(*, ca: bool, cn: str = "x") -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


FP = ":".join(["AB"] * 32)


def test_make_peer_by_fingerprint() -> None:
    p = trust.make_peer("host2", "192.0.2.7", 6482, fingerprint_text="ab" * 32)
    assert p == trust.Peer(name="host2", host="192.0.2.7", port=6482, fingerprint=FP)
    assert p.address == "192.0.2.7:6482"
    assert trust.Peer(name="v6", host="::1", port=1).address == "[::1]:1"


def test_make_peer_by_certificate_computes_the_pin() -> None:
    c = cert(ca=False)
    p = trust.make_peer("host2", "h2", 1, certificate=pem(c))
    assert p.certificate == der(c)
    assert p.fingerprint == fingerprint(der(c))
    both = trust.make_peer("host2", "h2", 1, certificate=der(c), fingerprint_text=fingerprint(der(c)).lower())
    assert both == p


def test_make_peer_refusals() -> None:
    with pytest.raises(PeerConfigError, match="invalid peer name 'bad name'"):
        trust.make_peer("bad name", "h", 1)
    c = cert(ca=False)
    with pytest.raises(
        PeerConfigError, match=r"does not match the fingerprint given: expected AB:AB.*, the certif"
    ):
        trust.make_peer("host2", "h", 1, certificate=pem(c), fingerprint_text=FP)
    with pytest.raises(PeerConfigError, match="is a CA certificate: pin the peer's own certificate"):
        trust.make_peer("host2", "h", 1, certificate=pem(cert(ca=True)))
    with pytest.raises(PeerConfigError, match="expected a SHA-256 fingerprint"):
        trust.make_peer("host2", "h", 1, fingerprint_text="nope")


def test_add_list_remove_peers(tmp_path: Path) -> None:
    assert trust.list_peers(tmp_path) == []
    c = cert(ca=False)
    b = trust.make_peer("b-host", "192.0.2.8", 7000, certificate=pem(c))
    a = trust.make_peer("a-host", "a.example", 6482, fingerprint_text=FP)
    n = trust.make_peer("n-host", "192.0.2.9", 6482)
    for p in (b, a, n):
        trust.add_peer(tmp_path, p)
    assert trust.list_peers(tmp_path) == [a, b, n]
    path = trust.peers_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = tomllib.loads(path.read_text())
    assert doc["peers"]["a-host"] == {"address": "a.example", "port": 6482, "fingerprint": FP}
    assert doc["peers"]["b-host"]["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    with pytest.raises(AlreadyExistsError, match="Peer a-host already exists"):
        trust.add_peer(tmp_path, a)
    trust.remove_peer(tmp_path, "a-host")
    assert [p.name for p in trust.list_peers(tmp_path)] == ["b-host", "n-host"]
    with pytest.raises(NotFoundError, match="Peer a-host not found"):
        trust.remove_peer(tmp_path, "a-host")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("[peers]\nx = 1\n", "peer x is not a table"),
        ("[peers.x]\nport = 1\n", "peer x has no address"),
        ('[peers.x]\naddress = "h"\nport = 0\n', "port 0 is not between 1 and 65535"),
        ('[peers.x]\naddress = "h"\nport = true\n', "port True is not between"),
        ('[peers.x]\naddress = "h"\nport = 1\nfingerprint = 5\n', "fingerprint is not a string"),
        ('[peers.x]\naddress = "h"\nport = 1\nfingerprint = "zz"\n', "invalid fingerprint"),
        ('[peers.x]\naddress = "h"\nport = 1\ncertificate = 5\n', "certificate is not a PEM string"),
        ('[peers.x]\naddress = "h"\nport = 1\ncertificate = "x"\n', "not a valid X.509"),
        ('peers = "x"\n', r"\[peers\] is not a table"),
    ],
)
def test_malformed_peers_file(tmp_path: Path, body: str, match: str) -> None:
    atomic_write(trust.peers_path(tmp_path), body.encode())
    with pytest.raises(PeerConfigError, match=match):
        trust.load_peers(tmp_path)


def test_hand_edited_pins_are_checked(tmp_path: Path) -> None:
    c = cert(ca=False)
    body = {"address": "h", "port": 1, "fingerprint": FP, "certificate": pem(c).decode()}
    from ldoms.peer.files import toml_dumps

    atomic_write(trust.peers_path(tmp_path), toml_dumps({"peers": {"x": body}}).encode())
    with pytest.raises(PeerConfigError, match="the certificate does not match the fingerprint"):
        trust.load_peers(tmp_path)
    body = {"address": "h", "port": 1, "certificate": pem(cert(ca=True)).decode()}
    atomic_write(trust.peers_path(tmp_path), toml_dumps({"peers": {"x": body}}).encode())
    with pytest.raises(PeerConfigError, match="is a CA certificate; pin the peer's own"):
        trust.load_peers(tmp_path)


def test_host_match_setting(tmp_path: Path) -> None:
    assert trust.host_match(tmp_path) is False
    trust.add_peer(tmp_path, trust.make_peer("p", "h", 1))
    trust.set_host_match(tmp_path, True)
    assert trust.host_match(tmp_path) is True
    text = trust.peers_path(tmp_path).read_text()
    assert text.index("[trust]") < text.index("[peers.p]")
    assert [p.name for p in trust.list_peers(tmp_path)] == ["p"]
    atomic_write(trust.peers_path(tmp_path), b'[trust]\nhost_match = "yes"\n')
    with pytest.raises(PeerConfigError, match=r"trust\.host_match is not true or false"):
        trust.host_match(tmp_path)


def test_ca_bundle(tmp_path: Path) -> None:
    assert trust.list_cas(tmp_path) == []
    one, two = cert(ca=True, cn="CA one"), cert(ca=True, cn="CA two")
    added = trust.add_ca(tmp_path, pem(one) + pem(two), what="bundle.pem")
    assert [c.subject for c in added] == ["CA one", "CA two"]
    assert trust.add_ca(tmp_path, der(one), what="one.der") == []  # already trusted
    assert [c.fingerprint for c in trust.list_cas(tmp_path)] == [fingerprint(der(one)), fingerprint(der(two))]
    assert stat.S_IMODE(trust.ca_path(tmp_path).stat().st_mode) == 0o600
    gone = trust.remove_ca(tmp_path, fingerprint(der(one)).replace(":", "").lower())
    assert gone.subject == "CA one"
    assert [c.subject for c in trust.list_cas(tmp_path)] == ["CA two"]
    with pytest.raises(NotFoundError, match=r"Trusted CA with fingerprint .* not found"):
        trust.remove_ca(tmp_path, fingerprint(der(one)))


def test_add_ca_refuses_a_leaf(tmp_path: Path) -> None:
    leaf = ensure_host_tls(tmp_path, "h1", "127.0.0.1:1")
    with pytest.raises(PeerConfigError, match=r"h1 is not a CA certificate .* pin a host's own certificate"):
        trust.add_ca(tmp_path, leaf.cert_pem.encode(), what="leaf.pem")
    assert trust.list_cas(tmp_path) == []


def test_check_peer_name() -> None:
    assert trust.check_peer_name("host-2.example") == "host-2.example"
    for bad in ("-x", "a_b", "", "a" * 64):
        with pytest.raises(PeerConfigError, match="invalid peer name"):
            trust.check_peer_name(bad)
