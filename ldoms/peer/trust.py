"""Whom this host trusts: its peers (name -> address, port and pin) and the CAs it accepts.

    HOME/peers.toml   written by `ldmd peer add|remove` and `ldmd trust host-match`, mode 0600:

        [trust]
        host_match = false            # CA mode: also match the target's name/IP against its certificate

        [peers.host2]
        address = "192.0.2.7"         # an IP address or a DNS name
        port = 6482
        fingerprint = "AB:CD:...:EF"  # the pin: SHA-256 of the peer's certificate (optional)
        certificate = '''             # the pinned certificate itself, when known (optional)
        -----BEGIN CERTIFICATE-----
        ...'''

    HOME/tls/ca.pem   the CA bundle (`ldmd trust add-ca|remove-ca`), PEM, mode 0600

Pins and CAs are used both ways:
- as a source, a target's certificate is accepted when it matches the target's pin or, for a target without a
  pin, when it chains to a trusted CA (see `ldoms.peer.link`);
- as a target, a source presenting a certificate (certificate mode) is accepted when that certificate is a
  pinned peer's, or chains to a trusted CA.  OpenSSL checks client certificates itself, so it needs the
  certificate and not only its fingerprint: `peer add --cert FILE` records it, and `peer add --fingerprint`
  records it too when the peer is reachable (the fetched certificate must match the fingerprint).
A pinned certificate must be a leaf (CA:FALSE): pinned certificates are trust anchors for client checks, and
a pinned CA would let anything it signed in.

Readers take no lock (files are replaced atomically); writers hold the home's configuration lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldoms.errors import AlreadyExistsError, NotFoundError
from ldoms.peer.errors import PeerConfigError
from ldoms.peer.files import atomic_write, config_lock, read_private, read_toml, toml_dumps
from ldoms.peer.tls import (
    TLS_DIR,
    der,
    fingerprint,
    is_ca,
    load_certificate,
    load_certificates,
    normalize_fingerprint,
    pem,
    subject_cn,
)

PEERS_NAME = "peers.toml"
CA_NAME = "ca.pem"
_HEADER = (
    "Peers of this ldoms host and the trust settings of its peer link.\n"
    "Written by `ldmd peer ...` and `ldmd trust ...`; hand edits are read at the next connection."
)
_NAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    host: str
    port: int
    fingerprint: str | None = None
    certificate: bytes | None = None  # DER

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TrustedCa:
    fingerprint: str
    subject: str
    certificate: bytes  # DER


def check_peer_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise PeerConfigError(
            f"invalid peer name '{name}': a host name holds letters, digits, '-' and '.' only"
        )
    return name


def peers_path(home: Path) -> Path:
    return home / PEERS_NAME


def ca_path(home: Path) -> Path:
    return home / TLS_DIR / CA_NAME


def _doc(home: Path) -> dict[str, Any]:
    return read_toml(peers_path(home), what="peer configuration")


def _peer(path: Path, name: str, body: Any) -> Peer:
    where = f"peer configuration {path}: peer {name}"
    if not isinstance(body, dict):
        raise PeerConfigError(f"{where} is not a table")
    host, port = body.get("address"), body.get("port")
    if not isinstance(host, str) or not host:
        raise PeerConfigError(f"{where} has no address")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise PeerConfigError(f"{where}: port {port!r} is not between 1 and 65535")
    fp = body.get("fingerprint")
    if fp is not None:
        if not isinstance(fp, str):
            raise PeerConfigError(f"{where}: fingerprint is not a string")
        fp = normalize_fingerprint(fp)
    cert = body.get("certificate")
    cert_der = None
    if cert is not None:
        if not isinstance(cert, str):
            raise PeerConfigError(f"{where}: certificate is not a PEM string")
        loaded = load_certificate(cert.encode("ascii", "replace"), what=f"{where}: certificate")
        if is_ca(loaded):  # it would vouch for every certificate it signed (see the module docstring)
            raise PeerConfigError(f"{where}: the certificate is a CA certificate; pin the peer's own")
        cert_der = der(loaded)
        if fp is not None and fingerprint(cert_der) != fp:
            raise PeerConfigError(f"{where}: the certificate does not match the fingerprint")
        fp = fingerprint(cert_der)
    return Peer(name=name, host=host, port=port, fingerprint=fp, certificate=cert_der)


def load_peers(home: Path) -> dict[str, Peer]:
    """Every configured peer, by name."""
    doc = _doc(home)
    table = doc.get("peers", {})
    if not isinstance(table, dict):
        raise PeerConfigError(f"peer configuration {peers_path(home)}: [peers] is not a table")
    return {name: _peer(peers_path(home), name, body) for name, body in table.items()}


def list_peers(home: Path) -> list[Peer]:
    return sorted(load_peers(home).values(), key=lambda p: p.name)


def _peer_body(peer: Peer) -> dict[str, Any]:
    body: dict[str, Any] = {"address": peer.host, "port": peer.port}
    if peer.fingerprint is not None:
        body["fingerprint"] = peer.fingerprint
    if peer.certificate is not None:
        body["certificate"] = pem(load_certificate(peer.certificate, what="certificate"))
    return body


def _write(home: Path, doc: dict[str, Any]) -> None:
    atomic_write(peers_path(home), toml_dumps(doc, header=_HEADER).encode("utf-8"))


def make_peer(
    name: str, host: str, port: int, *, fingerprint_text: str | None = None, certificate: bytes | None = None
) -> Peer:
    """A validated Peer: the certificate (PEM or DER) must be a leaf and agree with the fingerprint."""
    check_peer_name(name)
    fp = None if fingerprint_text is None else normalize_fingerprint(fingerprint_text)
    cert_der = None
    if certificate is not None:
        cert = load_certificate(certificate, what=f"certificate of peer {name}")
        if is_ca(cert):
            raise PeerConfigError(
                f"certificate of peer {name} ({subject_cn(cert)}) is a CA certificate: pin the peer's own "
                "certificate, or trust the CA with `ldmd trust add-ca FILE`"
            )
        cert_der = der(cert)
        actual = fingerprint(cert_der)
        if fp is not None and fp != actual:
            raise PeerConfigError(
                f"certificate of peer {name} does not match the fingerprint given: expected {fp}, the "
                f"certificate's is {actual}"
            )
        fp = actual
    return Peer(name=name, host=host, port=port, fingerprint=fp, certificate=cert_der)


def add_peer(home: Path, peer: Peer) -> None:
    """Record a new peer; an existing name is refused (remove it first)."""
    with config_lock(home):
        doc = _doc(home)
        table = doc.setdefault("peers", {})
        if peer.name in table:
            raise AlreadyExistsError(f"Peer {peer.name} already exists: remove it first to change it")
        table[peer.name] = _peer_body(peer)
        _write(home, doc)


def remove_peer(home: Path, name: str) -> None:
    with config_lock(home):
        doc = _doc(home)
        table = doc.get("peers", {})
        if name not in table:
            raise NotFoundError(f"Peer {name} not found")
        del table[name]
        _write(home, doc)


def host_match(home: Path) -> bool:
    value = _doc(home).get("trust", {}).get("host_match", False)
    if not isinstance(value, bool):
        raise PeerConfigError(f"peer configuration {peers_path(home)}: trust.host_match is not true or false")
    return value


def set_host_match(home: Path, value: bool) -> None:
    with config_lock(home):
        doc = _doc(home)
        trust = doc.get("trust", {})
        trust["host_match"] = value
        # keep [trust] first in the file: it reads as the file's settings
        _write(home, {"trust": trust, **{k: v for k, v in doc.items() if k != "trust"}})


def list_cas(home: Path) -> list[TrustedCa]:
    data = read_private(ca_path(home), what="CA bundle")
    if not data:
        return []
    certs = load_certificates(data, what=f"CA bundle {ca_path(home)}")
    return [
        TrustedCa(fingerprint=fingerprint(der(c)), subject=subject_cn(c), certificate=der(c)) for c in certs
    ]


def _write_cas(home: Path, cas: list[TrustedCa]) -> None:
    (home / TLS_DIR).mkdir(mode=0o700, exist_ok=True)
    text = "".join(pem(load_certificate(c.certificate, what="CA")) for c in cas)
    atomic_write(ca_path(home), text.encode("ascii"))


def add_ca(home: Path, data: bytes, *, what: str) -> list[TrustedCa]:
    """Trust every CA certificate of a PEM bundle (or one DER file); returns those newly added."""
    certs = load_certificates(data, what=what)
    for c in certs:
        if not is_ca(c):
            raise PeerConfigError(
                f"{what}: {subject_cn(c)} is not a CA certificate (basicConstraints CA:TRUE): "
                "pin a host's own certificate with `ldmd peer add NAME ADDR:PORT --cert FILE`"
            )
    with config_lock(home):
        cas = list_cas(home)
        known = {c.fingerprint for c in cas}
        added = []
        for c in certs:
            ca = TrustedCa(fingerprint=fingerprint(der(c)), subject=subject_cn(c), certificate=der(c))
            if ca.fingerprint not in known:
                known.add(ca.fingerprint)
                added.append(ca)
        if added:
            _write_cas(home, cas + added)
        return added


def remove_ca(home: Path, fingerprint_text: str) -> TrustedCa:
    fp = normalize_fingerprint(fingerprint_text)
    with config_lock(home):
        cas = list_cas(home)
        gone = [c for c in cas if c.fingerprint == fp]
        if not gone:
            raise NotFoundError(f"Trusted CA with fingerprint {fp} not found")
        _write_cas(home, [c for c in cas if c.fingerprint != fp])
        return gone[0]
