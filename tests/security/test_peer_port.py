"""The peer TLS port (`--listen`, default 6482): downgrades refused, what CA trust accepts, and how long an
unauthenticated client may hold one of its eight connection slots (SECURITY.md, "The peer port")."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ldoms.peer import trust
from ldoms.peer.errors import PeerError, PeerUntrusted
from ldoms.peer.link import GREETING, LENGTH, PeerLink, connect_peer
from ldoms.peer.listener import PeerListener
from tests.integration.conftest import LdmHost, wait_for
from tests.integration.test_migrate_e2e import environment, hooks_env
from tests.integration.test_peer_link import WAIT, Hosts, Recorder, ca_pem, ca_sign, make_ca, make_hosts, pin


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
CONNECT_S = 1.0  # the daemon's connect_s (its deadline for the unauthenticated phase), shortened for the test


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


def test_an_unauthenticated_peer_cannot_hold_a_slot_by_trickling(strict_ldmd: LdmHost) -> None:
    """connect_s bounds the whole unauthenticated phase (TLS handshake, Hello, Auth) from the accept, not each
    read: a client that trickles a byte at a time is cut when it runs out, and its slot is free again."""
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


# ------------------------------------------------------------------------------ the listener's login clock
LOGIN_S = 0.5  # the listener's login_timeout, shortened for the tests


def test_clients_that_never_log_in_free_their_slots(
    peer_hosts: Hosts, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Every slot held by a client that does not authenticate (here: one silent after TLS, one trickling) is
    freed when its login clock runs out: a full house of such clients keeps the port for LOGIN_S at most."""
    caplog.set_level(logging.INFO, logger="ldmd.peer")
    with PeerListener(
        peer_hosts.dst,
        "127.0.0.1:0",
        recorder,
        login_timeout=LOGIN_S,
        handshake_timeout=WAIT,
        max_connections=2,
    ) as lst:
        ctx = client_context()
        held = [
            ctx.wrap_socket(socket.create_connection(("127.0.0.1", lst.address[1]), timeout=WAIT))
            for _ in "ab"
        ]
        try:
            held[1].sendall(LENGTH.pack(64))  # a frame that trickles
            assert all(s.recv(4 + len(GREETING)) for s in held)
            deadline = time.monotonic() + 5 * LOGIN_S
            while not closed_by_server(held[0], LOGIN_S / 10):
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    held[1].sendall(b"x")
                assert time.monotonic() < deadline, "the login clock did not cut the silent client"
            assert closed_by_server(held[1], WAIT)
            wait_for("the slots to be freed", lambda: lst.active_connections == 0, WAIT)
        finally:
            for s in held:
                s.close()
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", lst.address[1]), timeout=WAIT)) as s:
            assert s.recv(4) == LENGTH.pack(len(GREETING))  # a new client is served again
    assert any("not authenticated within 0.5 s of connecting" in r.getMessage() for r in caplog.records)


def test_logging_in_stops_the_clock_and_a_late_login_is_refused(peer_hosts: Hosts) -> None:
    """`link.logged_in()` stops the clock: the link then outlives it.  Called after the clock ran out, it
    returns False (the link is being cut)."""
    answers: list[bool] = []
    cut = threading.Event()

    def handler(link: PeerLink) -> None:
        if link.recv_frame() == b"login":
            answers.append(link.logged_in())
            link.send_frame(b"in")
            link.send_frame(link.recv_frame())  # after the clock would have run out
            return
        with contextlib.suppress(PeerError):
            link.recv_frame()  # the clock cuts the link while we wait
        cut.set()
        answers.append(link.logged_in())

    with PeerListener(peer_hosts.dst, "127.0.0.1:0", handler, login_timeout=LOGIN_S) as lst:
        pin(peer_hosts, lst)
        with connect_peer(peer_hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
            link.send_frame(b"login")
            assert link.recv_frame() == b"in"
            threading.Event().wait(2 * LOGIN_S)  # outlive the login clock (the deadline under test)
            link.send_frame(b"still here")
            assert link.recv_frame() == b"still here"
        with connect_peer(peer_hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
            link.send_frame(b"hello")  # and never logs in
            assert cut.wait(WAIT)
    assert answers == [True, False]


def test_the_login_timeout_must_be_positive(peer_hosts: Hosts, recorder: Recorder) -> None:
    with pytest.raises(ValueError, match="login_timeout must be a positive number of seconds, not 0"):
        PeerListener(peer_hosts.dst, "127.0.0.1:0", recorder, login_timeout=0)
