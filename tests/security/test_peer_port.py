"""The peer TLS port (`--listen`, default 6482): downgrades refused, what CA trust accepts, and how long an
unauthenticated client may hold one of its eight connection slots (SECURITY.md, "The peer port")."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ldoms.peer import trust
from ldoms.peer.errors import PeerUntrusted
from ldoms.peer.link import GREETING, LENGTH, connect_peer
from ldoms.peer.listener import PeerListener
from tests.integration.conftest import LdmHost
from tests.integration.test_migrate_e2e import environment, hooks_env
from tests.integration.test_peer_link import WAIT, Hosts, Recorder, ca_pem, ca_sign, make_ca, make_hosts


@pytest.fixture
def peer_hosts(tmp_path: Path) -> Hosts:
    """Two homes with TLS identities (named apart from the integration suite's `hosts` fixture)."""
    return make_hosts(tmp_path)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def listener(peer_hosts: Hosts, recorder: Recorder) -> Iterator[PeerListener]:
    with PeerListener(peer_hosts.dst, "127.0.0.1:0", recorder, handshake_timeout=WAIT) as lst:
        yield lst


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_a_client_offering_only_non_aead_suites_is_refused(listener: PeerListener) -> None:
    """No downgrade to CBC/SHA-1 suites (TLS 1.2 with AES-GCM or ChaCha20-Poly1305 and ECDHE is the floor;
    below TLS 1.2 is refused too: tests/integration/test_peer_link.py::test_tls12_client_is_accepted)."""
    ctx = client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256")
    raw = socket.create_connection(("127.0.0.1", listener.address[1]), timeout=WAIT)
    with pytest.raises(ssl.SSLError, match=r"(?i)handshake|no shared cipher|alert"), ctx.wrap_socket(raw):
        pass
    raw.close()
    ok = client_context()
    ok.maximum_version = ssl.TLSVersion.TLSv1_2
    ok.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")  # the same client with an AEAD suite gets in
    with ok.wrap_socket(socket.create_connection(("127.0.0.1", listener.address[1]), timeout=WAIT)) as s:
        assert s.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
        assert s.recv(4) == LENGTH.pack(len(GREETING))


def test_ca_mode_without_host_match_trusts_any_certificate_of_the_ca(
    peer_hosts: Hosts, listener: PeerListener, recorder: Recorder
) -> None:
    """Known limit, the LDoms default (`ldmd/tls_host_match` false): with no pin, a target is trusted when
    its certificate chains to a trusted CA, whatever host it names.  Whoever holds any certificate of that
    CA can stand in for an unpinned target; `ldmd trust host-match on` (or a pin) closes it."""
    hosts = peer_hosts
    ca = make_ca()
    ca_sign(hosts.dst, "somebody-else", "192.0.2.99:6482", ca)  # names neither hostb nor 127.0.0.1
    trust.add_ca(hosts.src, ca_pem(ca), what="ca.pem")
    trust.add_peer(hosts.src, trust.make_peer("hostb", "127.0.0.1", listener.address[1]))  # no pin
    with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
        link.send_frame(b"a password would go here")
        assert link.recv_frame() == b"a password would go here"
    trust.set_host_match(hosts.src, True)
    with pytest.raises(PeerUntrusted, match=r"mismatch|not trusted"):
        connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
    assert recorder.frames == [b"a password would go here"]  # nothing reached it the second time


# ------------------------------------------------------------------------------ unauthenticated clients
CONNECT_S = 1.0  # the daemon's connect_s (its pre-authentication read deadline), shortened for the test


@pytest.fixture
def strict_ldmd(hosts: Callable[..., LdmHost]) -> LdmHost:
    h = hosts("target")
    with environment(**hooks_env(policy={"connect_s": CONNECT_S})):
        h.start_ldmd()
    return h


@contextlib.contextmanager
def greeted(h: LdmHost) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to the daemon's peer port (no certificate, no pin: nothing to prove to get here)
    that has read the greeting."""
    raw = socket.create_connection(("127.0.0.1", h.port), timeout=WAIT)
    with client_context().wrap_socket(raw) as s:
        assert s.recv(4) == LENGTH.pack(len(GREETING)) and s.recv(len(GREETING)) == GREETING
        yield s


def closed_by_server(s: ssl.SSLSocket, wait: float) -> bool:
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except (ssl.SSLError, ConnectionError):
        return True


def test_a_silent_unauthenticated_peer_is_dropped_after_the_connect_deadline(strict_ldmd: LdmHost) -> None:
    with greeted(strict_ldmd) as s:
        assert closed_by_server(s, WAIT)  # after connect_s (1 s here, 30 s by default): the slot is free


@pytest.mark.xfail(
    strict=True,
    reason="known gap: the pre-authentication deadline (connect_s) is per read, not overall; a client that "
    "trickles a byte at a time keeps one of the 8 peer slots without ever authenticating (8 such clients "
    "lock every migration out)",
)
def test_an_unauthenticated_peer_cannot_hold_a_slot_by_trickling(strict_ldmd: LdmHost) -> None:
    with greeted(strict_ldmd) as s:
        s.sendall(LENGTH.pack(4096))  # a Hello frame that never ends
        deadline = time.monotonic() + 5 * CONNECT_S
        while time.monotonic() < deadline:
            try:
                s.sendall(b"x")
            except (ssl.SSLError, ConnectionError):
                return  # the server let go: the claim holds
            if closed_by_server(s, CONNECT_S / 10):
                return
        pytest.fail(f"still connected after {5 * CONNECT_S:g} s without authenticating")
