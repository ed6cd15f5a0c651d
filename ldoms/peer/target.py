"""Where `ldm migrate-domain ... host2` goes: the configured peers first, then DNS on the default port.

Resolution order (SPEC §2.5):
1. a peer whose name is `host2` (case-insensitive, as host names are);
2. a peer whose recorded address is `host2` (the admin typed the peer's IP address or DNS name): its pin
   applies; two such peers (different ports) make the target ambiguous;
3. otherwise `host2` itself, resolved by DNS when the link connects, on port 6482 (the LDoms manager's port);
   without a pin its certificate must chain to a trusted CA.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from ldoms.errors import UsageError
from ldoms.peer.trust import Peer, load_peers

DEFAULT_PORT = 6482


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of a link: what to connect to and how to check its certificate."""

    name: str  # what the admin called it (peer name or the target as typed)
    host: str  # IP address or DNS name
    port: int
    fingerprint: str | None = None  # the pin, if any
    certificate: bytes | None = None  # the pinned certificate (DER), if known
    configured: bool = False  # found in the peers

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        """How messages name it: `target host host2 (192.0.2.7:6482)`."""
        return f"target host {self.name} ({self.address})"


def parse_address(text: str, *, default_port: int | None = None, any_port: bool = False) -> tuple[str, int]:
    """'ADDR:PORT' or '[IPv6]:PORT' (the port optional when `default_port` is given) -> (addr, port).
    `any_port`: port 0 (a listener's "any free port") is allowed."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([^:\[\]\s]+)(?::(\d{1,5}))?", text.strip())
    bare_v6 = None
    if not m:
        try:  # a bare IPv6 address (no port possible)
            bare_v6 = str(ipaddress.IPv6Address(text.strip()))
        except ValueError:
            bare_v6 = None
        if bare_v6 is None or default_port is None:
            raise UsageError(f"invalid address '{text}': expected ADDR:PORT (IPv6 as [ADDR]:PORT)")
        return bare_v6, default_port
    host = m.group(1) or m.group(3)
    port_text = m.group(2) or m.group(4)
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(f"invalid address '{text}': '{host}' is not an IPv6 address") from None
    if port_text is None:
        if default_port is None:
            raise UsageError(f"invalid address '{text}': expected ADDR:PORT (the port is missing)")
        return host, default_port
    port = int(port_text)
    if not (0 if any_port else 1) <= port <= 65535:
        raise UsageError(f"invalid address '{text}': port {port} is not between 1 and 65535")
    return host, port


def _from_peer(peer: Peer) -> Endpoint:
    return Endpoint(
        name=peer.name,
        host=peer.host,
        port=peer.port,
        fingerprint=peer.fingerprint,
        certificate=peer.certificate,
        configured=True,
    )


def resolve_target(home: Path, target: str) -> Endpoint:
    """The endpoint for a target host as typed on the command line (a name or an IP address)."""
    text = target.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise UsageError("the target host is empty")
    peers = load_peers(home)
    for name, peer in peers.items():
        if name.lower() == text.lower():
            return _from_peer(peer)
    by_address = sorted((p for p in peers.values() if p.host.lower() == text.lower()), key=lambda p: p.name)
    if len(by_address) > 1:
        names = ", ".join(f"{p.name} ({p.address})" for p in by_address)
        raise UsageError(
            f"target host {text} is ambiguous: it is the address of peers {names}; use a peer name"
        )
    if by_address:
        return _from_peer(by_address[0])
    return Endpoint(name=text, host=text, port=DEFAULT_PORT)
