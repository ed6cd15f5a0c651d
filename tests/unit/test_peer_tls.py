"""The host's TLS identity: creation, reuse, fingerprints, CSR/installation, the context floor."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ldoms.peer import tls
from ldoms.peer.errors import PeerConfigError


def make_ca(name: str = "Test CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def sign_csr(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, csr_pem: str) -> x509.Certificate:
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    now = datetime.datetime.now(datetime.UTC)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.subject)
        .public_key(csr.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_fingerprint_is_sha256_colon_hex() -> None:
    fp = tls.fingerprint(b"abc")
    assert fp == ":".join(f"{b:02X}" for b in hashlib.sha256(b"abc").digest())
    assert len(fp) == 95


@pytest.mark.parametrize(
    "text",
    [
        "ab" * 32,
        ":".join(["AB"] * 32),
        "sha256:" + "Ab" * 32,
        "SHA256=" + ":".join(["ab"] * 32),
        "  " + " ".join(["ab"] * 32) + "\n",
    ],
)
def test_normalize_fingerprint_accepts_common_spellings(text: str) -> None:
    assert tls.normalize_fingerprint(text) == ":".join(["AB"] * 32)


@pytest.mark.parametrize("text", ["", "ab" * 31, "ab" * 33, "zz" * 32, "md5:" + "ab" * 32])
def test_normalize_fingerprint_refuses_garbage(text: str) -> None:
    with pytest.raises(PeerConfigError, match="expected a SHA-256 fingerprint, 32 bytes in hex"):
        tls.normalize_fingerprint(text)


def test_ensure_creates_private_key_and_certificate(tmp_path: Path) -> None:
    me = tls.ensure_host_tls(tmp_path, "host1", "192.0.2.7:6482")
    for p in (me.cert_path, me.key_path):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    cert = me.certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert tls.subject_cn(cert) == "host1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["host1"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    assert not tls.is_ca(cert)
    on_disk = x509.load_pem_x509_certificate(me.cert_path.read_bytes())
    assert me.fingerprint() == tls.fingerprint(on_disk.public_bytes(serialization.Encoding.DER))
    assert me.cert_pem.startswith("-----BEGIN CERTIFICATE-----")


def test_ensure_names_a_dns_listen_address_and_ipv6(tmp_path: Path) -> None:
    cert = tls.ensure_host_tls(tmp_path / "a", "host1", "h1.example:6482").certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["host1", "h1.example"]
    cert = tls.ensure_host_tls(tmp_path / "b", "host1", "[::1]:6482").certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]


def test_ensure_keeps_an_existing_identity(tmp_path: Path) -> None:
    first = tls.ensure_host_tls(tmp_path, "host1", "127.0.0.1:6482")
    again = tls.ensure_host_tls(tmp_path, "host1", "127.0.0.1:7000")  # listen changed: pins stay valid
    assert again.fingerprint() == first.fingerprint()
    assert tls.load_host_tls(tmp_path).fingerprint() == first.fingerprint()


def test_ensure_reissues_a_lost_certificate_for_the_same_key(tmp_path: Path) -> None:
    first = tls.ensure_host_tls(tmp_path, "host1", "127.0.0.1:6482")
    key = first.key_path.read_bytes()
    first.cert_path.unlink()
    again = tls.ensure_host_tls(tmp_path, "host1", "127.0.0.1:6482")
    assert again.key_path.read_bytes() == key
    assert again.fingerprint() != first.fingerprint()


def test_load_host_tls_missing(tmp_path: Path) -> None:
    with pytest.raises(PeerConfigError, match="holds no TLS identity yet"):
        tls.load_host_tls(tmp_path)


def test_load_refuses_a_readable_key(tmp_path: Path) -> None:
    me = tls.ensure_host_tls(tmp_path, "host1", "127.0.0.1:6482")
    me.key_path.chmod(0o644)
    with pytest.raises(
        PeerConfigError, match=r"TLS key .* must not be accessible by group or others \(mode 0644\)"
    ):
        tls.load_host_tls(tmp_path)


def test_load_refuses_garbage_and_foreign_files(tmp_path: Path) -> None:
    me = tls.ensure_host_tls(tmp_path, "host1", "127.0.0.1:6482")
    other = tls.ensure_host_tls(tmp_path / "other", "host2", "127.0.0.1:6482")
    me.cert_path.write_bytes(other.cert_path.read_bytes())
    with pytest.raises(PeerConfigError, match="does not belong to the key"):
        tls.load_host_tls(tmp_path)
    me.cert_path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(PeerConfigError, match=r"is not a valid X\.509 certificate"):
        tls.load_host_tls(tmp_path)
    me.key_path.write_bytes(b"not a key")
    with pytest.raises(PeerConfigError, match="is not a readable unencrypted PEM private key"):
        tls.load_host_tls(tmp_path)


def test_load_refuses_a_non_ec_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    me = tls.ensure_host_tls(tmp_path, "host1", "127.0.0.1:6482")
    key = ed25519.Ed25519PrivateKey.generate()
    me.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(PeerConfigError, match="is not an elliptic-curve key"):
        tls.load_host_tls(tmp_path)


def test_renew_keeps_key_changes_fingerprint(tmp_path: Path) -> None:
    first = tls.ensure_host_tls(tmp_path, "host1", "127.0.0.1:6482")
    renewed = tls.renew_host_certificate(tmp_path, "host1", "10.0.0.1:6482")
    assert renewed.fingerprint() != first.fingerprint()
    san = renewed.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    assert renewed.certificate.public_key() == first.certificate.public_key()


@pytest.mark.parametrize(
    "call",
    [
        lambda h: tls.renew_host_certificate(h, "host1", "127.0.0.1:1"),
        lambda h: tls.certificate_request(h, "host1", "127.0.0.1:1"),
        lambda h: tls.install_host_certificate(h, to_pem(make_ca()[1]), what="cert"),
    ],
)
def test_operations_needing_a_key_refuse_without_one(tmp_path: Path, call: object) -> None:
    with pytest.raises(PeerConfigError, match="holds no TLS key yet"):
        call(tmp_path)  # type: ignore[operator]


def test_csr_then_install_a_ca_signed_certificate(tmp_path: Path) -> None:
    tls.ensure_host_tls(tmp_path, "host1", "127.0.0.1:6482")
    csr = tls.certificate_request(tmp_path, "host1", "127.0.0.1:6482")
    assert csr.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    ca_key, ca = make_ca()
    leaf = sign_csr(ca_key, ca, csr)
    me = tls.install_host_certificate(tmp_path, to_pem(leaf) + to_pem(ca), what="signed.pem")
    assert me.fingerprint() == tls.fingerprint(leaf.public_bytes(serialization.Encoding.DER))
    assert tls.load_host_tls(tmp_path).fingerprint() == me.fingerprint()
    assert me.cert_path.read_bytes().count(b"BEGIN CERTIFICATE") == 2  # the chain is kept for the handshake


def test_install_refuses_foreign_and_ca_certificates(tmp_path: Path) -> None:
    tls.ensure_host_tls(tmp_path, "host1", "127.0.0.1:6482")
    other = tls.ensure_host_tls(tmp_path / "o", "host2", "127.0.0.1:6482")
    with pytest.raises(PeerConfigError, match="is not a certificate for this host's key"):
        tls.install_host_certificate(tmp_path, other.cert_path.read_bytes(), what="x.pem")
    # a CA certificate for our own key
    key = serialization.load_pem_private_key((tmp_path / "tls" / "host.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(5)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(PeerConfigError, match="is a CA certificate"):
        tls.install_host_certificate(tmp_path, to_pem(ca_cert), what="x.pem")
    with pytest.raises(PeerConfigError, match=r"not a valid X\.509 certificate or bundle"):
        tls.install_host_certificate(tmp_path, b"garbage", what="x.pem")


def test_load_certificate_pem_and_der() -> None:
    _, ca = make_ca()
    der = ca.public_bytes(serialization.Encoding.DER)
    assert tls.der(tls.load_certificate(der, what="x")) == der
    assert tls.der(tls.load_certificate(to_pem(ca), what="x")) == der
    assert [tls.der(c) for c in tls.load_certificates(der, what="x")] == [der]
    with pytest.raises(PeerConfigError, match=r"x is not a valid X\.509 certificate"):
        tls.load_certificate(b"\x30\x03junk", what="x")


def test_is_ca_and_subject_cn() -> None:
    _, ca = make_ca("My CA")
    assert tls.is_ca(ca)
    assert tls.subject_cn(ca) == "My CA"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "org")])
    now = datetime.datetime.now(datetime.UTC)
    bare = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(9)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert not tls.is_ca(bare)  # v3 without basicConstraints: not a CA
    assert tls.subject_cn(bare) == "O=org"


def test_invalid_listen_address(tmp_path: Path) -> None:
    with pytest.raises(PeerConfigError, match="invalid listen address"):
        tls.ensure_host_tls(tmp_path, "host1", "host:1:2:x")


def test_base_context_floor() -> None:
    for server in (False, True):
        ctx = tls.base_context(server=server)
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        ciphers = {c["name"] for c in ctx.get_ciphers()}
        assert all("CBC" not in c and "SHA1" not in c for c in ciphers if c.startswith("ECDHE"))
    assert tls.base_context(server=True).num_tickets == 0


def test_is_ca_treats_v1_certificates_as_cas() -> None:
    class V1:
        version = x509.Version.v1

    assert tls.is_ca(V1())  # type: ignore[arg-type]
