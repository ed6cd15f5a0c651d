"""The host's TLS identity: an EC P-256 key and a certificate, kept in HOME/tls.

    HOME/tls/host.key   the private key, PKCS#8 PEM, mode 0600 (refused if group or others may read it)
    HOME/tls/host.crt   the certificate, PEM, mode 0600: self-signed on first use; an admin may install a
                        CA-issued one for the same key (`ldmd tls csr`, then `ldmd tls install FILE`)

The self-signed certificate names the host (subject CN and a DNS SAN) and its listen address (an IP or DNS
SAN).  It is valid for ten years: peers trust it by its *fingerprint* (SHA-256 of the DER certificate, shown
as colon-separated upper-case hex like `openssl x509 -fingerprint -sha256`), so its dates matter little.
It is kept when the host's listen address changes, so recorded pins stay valid; `ldmd tls renew` re-issues
it for the same key when the admin wants the names refreshed (peers must then record the new fingerprint).

The certificate is a leaf (basicConstraints CA:FALSE): peers load pinned certificates as trust anchors for
client-certificate checks, and a leaf cannot vouch for any other certificate.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ldoms.peer.errors import PeerConfigError
from ldoms.peer.files import atomic_write, config_lock, read_private

TLS_DIR = "tls"
KEY_NAME = "host.key"
CERT_NAME = "host.crt"
VALIDITY = datetime.timedelta(days=3650)
CLOCK_SKEW = datetime.timedelta(days=1)  # a peer whose clock lags a little still accepts a fresh certificate
_FP_HEX = re.compile(r"[0-9A-Fa-f]{64}")


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as colon-separated upper-case hex (`AB:CD:...`, 32 bytes)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def normalize_fingerprint(text: str) -> str:
    """An admin-typed SHA-256 fingerprint (any case; colons, spaces or none; an optional `sha256:`),
    in our form."""
    raw = text.strip()
    if raw.lower().startswith("sha256:") or raw.lower().startswith("sha256="):
        raw = raw[7:]
    digits = re.sub(r"[:\s]", "", raw)
    if not _FP_HEX.fullmatch(digits):
        raise PeerConfigError(
            f"invalid fingerprint '{text}': expected a SHA-256 fingerprint, 32 bytes in hex "
            "(e.g. the output of `ldmd tls show` on the peer)"
        )
    return fingerprint_from_hex(digits)


def fingerprint_from_hex(digits: str) -> str:
    return ":".join(digits[i : i + 2].upper() for i in range(0, 64, 2))


def load_certificate(data: bytes, *, what: str) -> x509.Certificate:
    """A certificate from PEM (the first one) or DER bytes."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise PeerConfigError(f"{what} is not a valid X.509 certificate: {e}") from e


def load_certificates(data: bytes, *, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (or the one of a DER file)."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except (ValueError, UnsupportedAlgorithm) as e:
        raise PeerConfigError(f"{what} is not a valid X.509 certificate or bundle: {e}") from e
    return certs


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def is_ca(cert: x509.Certificate) -> bool:
    """True when the certificate may sign others (CA:TRUE, or an X.509 v1 certificate: OpenSSL trusts
    a self-signed v1 certificate as a CA)."""
    if cert.version is x509.Version.v1:
        return True
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def subject_cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


@dataclass(frozen=True, slots=True)
class HostTls:
    """The host's identity as files (what `ssl` loads) and as the certificate's DER bytes."""

    cert_path: Path
    key_path: Path
    cert_der: bytes

    def fingerprint(self) -> str:
        return fingerprint(self.cert_der)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.cert_der)

    @property
    def cert_pem(self) -> str:
        return pem(self.certificate)


def tls_paths(home: Path) -> tuple[Path, Path]:
    d = home / TLS_DIR
    return d / CERT_NAME, d / KEY_NAME


def _san(host_name: str, listen_host: str) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(host_name)]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(listen_host)))
    except ValueError:
        if listen_host != host_name:
            names.append(x509.DNSName(listen_host))
    return x509.SubjectAlternativeName(names)


def _listen_host(listen: str) -> str:
    """The address part of 'ADDR:PORT' / '[V6]:PORT' (or a bare address)."""
    m = re.fullmatch(r"\[([^\]]+)\](?::\d+)?|([^:]+)(?::\d+)?|([0-9A-Fa-f:.]+)", listen.strip())
    if not m:
        raise PeerConfigError(f"invalid listen address '{listen}': expected ADDR:PORT")
    return m.group(1) or m.group(2) or m.group(3)


def self_signed(key: ec.EllipticCurvePrivateKey, host_name: str, listen: str) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ldoms"),
            x509.NameAttribute(NameOID.COMMON_NAME, host_name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(host_name, _listen_host(listen)), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    data = read_private(path, what="TLS key")
    if data is None:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise PeerConfigError(f"TLS key {path} is not a readable unencrypted PEM private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PeerConfigError(f"TLS key {path} is not an elliptic-curve key")
    return key


def _load(home: Path) -> tuple[ec.EllipticCurvePrivateKey | None, x509.Certificate | None]:
    cert_path, key_path = tls_paths(home)
    key = _load_key(key_path)
    data = read_private(cert_path, what="TLS certificate")
    cert = None if data is None else load_certificate(data, what=f"TLS certificate {cert_path}")
    if key is not None and cert is not None and not _same_key(cert, key):
        raise PeerConfigError(f"TLS certificate {cert_path} does not belong to the key {key_path}")
    return key, cert


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _identity(home: Path, cert: x509.Certificate) -> HostTls:
    cert_path, key_path = tls_paths(home)
    return HostTls(cert_path=cert_path, key_path=key_path, cert_der=der(cert))


def load_host_tls(home: Path) -> HostTls:
    """The host's identity; refused (naming the fix) when it has not been created yet."""
    key, cert = _load(home)
    if key is None or cert is None:
        raise PeerConfigError(
            f"home {home} holds no TLS identity yet (tls/host.key and tls/host.crt): ldmd creates it when "
            "it starts"
        )
    return _identity(home, cert)


def ensure_host_tls(home: Path, host_name: str, listen: str) -> HostTls:
    """The host's identity, created on first use: a new P-256 key and a self-signed certificate naming
    `host_name` and the listen address.  An existing identity is kept as it is (pins stay valid)."""
    with config_lock(home):
        key, cert = _load(home)
        if key is not None and cert is not None:
            return _identity(home, cert)
        (home / TLS_DIR).mkdir(mode=0o700, exist_ok=True)
        cert_path, key_path = tls_paths(home)
        if key is None:  # a certificate without its key is useless: start again
            key = ec.generate_private_key(ec.SECP256R1())
            atomic_write(key_path, _key_pem(key))
        cert = self_signed(key, host_name, listen)
        atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return _identity(home, cert)


def renew_host_certificate(home: Path, host_name: str, listen: str) -> HostTls:
    """A fresh self-signed certificate for the existing key (new names and dates; a new fingerprint)."""
    with config_lock(home):
        key, _ = _load(home)
        if key is None:
            raise PeerConfigError(f"home {home} holds no TLS key yet: ldmd creates it when it starts")
        cert = self_signed(key, host_name, listen)
        atomic_write(tls_paths(home)[0], cert.public_bytes(serialization.Encoding.PEM))
        return _identity(home, cert)


def certificate_request(home: Path, host_name: str, listen: str) -> str:
    """A PEM certificate signing request for the host's key, for a CA to sign (CA trust mode)."""
    key, _ = _load(home)
    if key is None:
        raise PeerConfigError(f"home {home} holds no TLS key yet: ldmd creates it when it starts")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_name)]))
        .add_extension(_san(host_name, _listen_host(listen)), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def install_host_certificate(home: Path, data: bytes, *, what: str) -> HostTls:
    """Replace the host's certificate by `data` (PEM or DER; a PEM chain is kept whole, leaf first), which
    must be a leaf certificate for the host's own key."""
    certs = load_certificates(data, what=what)
    leaf = certs[0]
    with config_lock(home):
        key, _ = _load(home)
        if key is None:
            raise PeerConfigError(f"home {home} holds no TLS key yet: ldmd creates it when it starts")
        if not _same_key(leaf, key):
            raise PeerConfigError(f"{what} is not a certificate for this host's key ({tls_paths(home)[1]})")
        if is_ca(leaf):
            raise PeerConfigError(f"{what} is a CA certificate: a host certificate must be a leaf (CA:FALSE)")
        chain = "".join(pem(c) for c in certs).encode("ascii")
        atomic_write(tls_paths(home)[0], chain)
        return _identity(home, leaf)


def base_context(*, server: bool) -> ssl.SSLContext:
    """An SSLContext with our floor: TLS 1.2 at least (1.3 is preferred by the negotiation), AEAD suites
    with forward secrecy only, no renegotiation, no session resumption (a link is long-lived and rare)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # TLS 1.2 only; the 1.3 suites are all AEAD
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    if server:
        ctx.num_tickets = 0
    return ctx
