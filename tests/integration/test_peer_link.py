"""The peer link end to end on 127.0.0.1 (free ports): a PeerListener in a target home, clients from a
source home.  Pins, CAs, certificate mode, hostile clients, limits, and a clean close."""

from __future__ import annotations

import datetime
import logging
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ldoms.peer import credentials, tls, trust
from ldoms.peer.credentials import ScryptParams
from ldoms.peer.errors import (
    AuthenticationFailed,
    FrameTooLarge,
    PeerCertificateMismatch,
    PeerCertificateRefused,
    PeerClosed,
    PeerConfigError,
    PeerConnectionRefused,
    PeerError,
    PeerUntrusted,
)
from ldoms.peer.link import LENGTH, PeerIdentity, PeerLink, connect_peer
from ldoms.peer.listener import PeerListener
from tests.integration.conftest import wait_for

WAIT = 10.0  # a deadline for things that happen at once; never reached when the code is right


@dataclass
class Recorder:
    """A handler that records what each connection sent (frames, identity) and echoes frames back."""

    echo: bool = True
    frames: list[bytes] = field(default_factory=list)
    identities: list[PeerIdentity | None] = field(default_factory=list)
    endings: list[str] = field(default_factory=list)
    done: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, link: PeerLink) -> None:
        with self.lock:
            self.identities.append(link.identity)
        try:
            while True:
                data = link.recv_frame()
                with self.lock:
                    self.frames.append(data)
                if self.echo:
                    link.send_frame(data)
        except PeerError as e:
            with self.lock:
                self.endings.append(type(e).__name__)
        finally:
            self.done.release()

    def wait_done(self, n: int = 1) -> None:
        for _ in range(n):
            assert self.done.acquire(timeout=WAIT), "a connection handler did not finish"


@dataclass
class Hosts:
    src: Path
    dst: Path
    src_id: tls.HostTls
    dst_id: tls.HostTls


def make_hosts(tmp_path: Path) -> Hosts:
    """Two homes with TLS identities (also used by tests/security)."""
    src, dst = tmp_path / "hosta", tmp_path / "hostb"
    return Hosts(
        src=src,
        dst=dst,
        src_id=tls.ensure_host_tls(src, "hosta", "127.0.0.1:6482"),
        dst_id=tls.ensure_host_tls(dst, "hostb", "127.0.0.1:6482"),
    )


@pytest.fixture
def hosts(tmp_path: Path) -> Hosts:
    return make_hosts(tmp_path)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def listener(hosts: Hosts, recorder: Recorder) -> Iterator[PeerListener]:
    with PeerListener(hosts.dst, "127.0.0.1:0", recorder, handshake_timeout=WAIT) as lst:
        yield lst


def pin(hosts: Hosts, lst: PeerListener, fp: str | None = None) -> None:
    """Record hostb (the listener) in hosta's peers, pinned to `fp` (default: its real fingerprint)."""
    peer = trust.make_peer(
        "hostb", "127.0.0.1", lst.address[1], fingerprint_text=fp or hosts.dst_id.fingerprint()
    )
    trust.add_peer(hosts.src, peer)


def make_ca(cn: str = "Test CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def ca_sign(
    home: Path, name: str, listen: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
) -> None:
    """Have the CA sign the host's key (CSR -> certificate) and install the result."""
    ca_key, ca_cert = ca
    csr = x509.load_pem_x509_csr(tls.certificate_request(home, name, listen).encode())
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls.install_host_certificate(home, leaf.public_bytes(serialization.Encoding.PEM), what="signed")


def ca_pem(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> bytes:
    return ca[1].public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------------- pins
def test_pinned_target_with_password_login(hosts: Hosts, listener: PeerListener) -> None:
    """The whole intended use: pinned link, then a password checked by the target's handler."""
    credentials.add_user(hosts.dst, "alice", "s3cret", params=ScryptParams(n=16, r=1, p=1))
    results: list[str] = []

    def login(link: PeerLink) -> None:
        user, password = link.recv_frame().decode().split(":", 1)
        try:
            credentials.authenticate(hosts.dst, user, password, host_name="hostb")
            link.send_frame(b"ok")
        except AuthenticationFailed as e:
            link.send_frame(str(e).encode())
        results.append(user)

    with PeerListener(hosts.dst, "127.0.0.1:0", login) as lst:
        pin(hosts, lst)
        for creds, answer in [
            (b"alice:s3cret", b"ok"),
            (b"alice:nope", b"Authentication failed for user alice on target host hostb: wrong password"),
            (b"bob:s3cret", b"Authentication failed for user bob on target host hostb: unknown user"),
        ]:
            with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
                assert link.peer_fingerprint == hosts.dst_id.fingerprint()
                assert link.tls_version == "TLSv1.3"
                link.send_frame(creds)
                assert link.recv_frame() == answer
    assert results == ["alice", "alice", "bob"]


def test_frames_both_ways(hosts: Hosts, listener: PeerListener, recorder: Recorder) -> None:
    pin(hosts, listener)
    with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
        for data in (b"hello", b"", b"\x00" * 70_000):
            link.send_frame(data)
            assert link.recv_frame() == data
    recorder.wait_done()
    assert recorder.identities == [None]  # password mode: no client certificate
    assert recorder.endings == ["PeerClosed"]


def test_wrong_pin_is_refused_before_anything_is_sent(
    hosts: Hosts, listener: PeerListener, recorder: Recorder
) -> None:
    wrong = ":".join(["5A"] * 32)
    pin(hosts, listener, wrong)
    with pytest.raises(PeerCertificateMismatch) as e:
        connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
    assert (e.value.expected, e.value.actual) == (wrong, hosts.dst_id.fingerprint())
    assert f"target host hostb (127.0.0.1:{listener.address[1]})" in str(e.value)
    recorder.wait_done()
    assert recorder.frames == []  # the server never received a frame, so never a password
    assert recorder.endings == ["PeerClosed"]


def test_unpinned_target_without_ca_is_refused(
    hosts: Hosts, listener: PeerListener, recorder: Recorder
) -> None:
    trust.add_peer(hosts.src, trust.make_peer("hostb", "127.0.0.1", listener.address[1]))
    with pytest.raises(PeerUntrusted) as e:
        connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
    assert e.value.actual == hosts.dst_id.fingerprint()
    recorder.wait_done()
    assert recorder.frames == []


# ---------------------------------------------------------------------- CA trust
def test_ca_signed_target(hosts: Hosts, listener: PeerListener) -> None:
    ca = make_ca()
    ca_sign(hosts.dst, "hostb", "127.0.0.1:6482", ca)
    trust.add_ca(hosts.src, ca_pem(ca), what="ca.pem")
    trust.add_peer(hosts.src, trust.make_peer("hostb", "127.0.0.1", listener.address[1]))  # no pin
    with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
        link.send_frame(b"via CA")
        assert link.recv_frame() == b"via CA"
    trust.set_host_match(hosts.src, True)  # the certificate names 127.0.0.1: still accepted
    with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
        link.send_frame(b"x")
        assert link.recv_frame() == b"x"


def test_ca_mode_refusals(hosts: Hosts, listener: PeerListener, recorder: Recorder) -> None:
    ca = make_ca()
    ca_sign(hosts.dst, "hostb", "127.0.0.1:6482", ca)
    trust.add_ca(hosts.src, ca_pem(make_ca("Other CA")), what="other.pem")
    trust.add_peer(hosts.src, trust.make_peer("hostb", "127.0.0.1", listener.address[1]))
    with pytest.raises(
        PeerUntrusted, match=r"Certificate of target host hostb \(127.0.0.1:\d+\) is not trusted"
    ):
        connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
    # trusted CA, but host-match on and the target reached by a name its certificate does not carry
    trust.add_ca(hosts.src, ca_pem(ca), what="ca.pem")
    trust.set_host_match(hosts.src, True)
    trust.remove_peer(hosts.src, "hostb")
    trust.add_peer(hosts.src, trust.make_peer("hostb", "localhost", listener.address[1]))
    with pytest.raises(PeerUntrusted, match="mismatch"):
        connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
    assert recorder.frames == []


def test_a_pin_beats_a_ca(hosts: Hosts, listener: PeerListener) -> None:
    ca = make_ca()
    ca_sign(hosts.dst, "hostb", "127.0.0.1:6482", ca)
    trust.add_ca(hosts.src, ca_pem(ca), what="ca.pem")
    pin(hosts, listener, ":".join(["01"] * 32))  # CA-valid, but the admin pinned something else
    with pytest.raises(PeerCertificateMismatch):
        connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)


# ---------------------------------------------------------------------- certificate mode
def test_certificate_mode_accepted_by_pin(hosts: Hosts, listener: PeerListener, recorder: Recorder) -> None:
    pin(hosts, listener)
    # hostb learns hosta's certificate while it is serving: the server context is rebuilt
    trust.add_peer(hosts.dst, trust.make_peer("hosta", "127.0.0.1", 6482, certificate=hosts.src_id.cert_der))
    with connect_peer(hosts.src, "hostb", certificate_mode=True, timeout=WAIT) as link:
        link.send_frame(b"no password")
        assert link.recv_frame() == b"no password"
    recorder.wait_done()
    assert recorder.identities == [
        PeerIdentity(name="hosta", fingerprint=hosts.src_id.fingerprint(), via="pin")
    ]
    credentials.authenticate_certificate(recorder.identities[0], host_name="hostb")


def test_certificate_mode_accepted_by_ca(hosts: Hosts, listener: PeerListener, recorder: Recorder) -> None:
    ca = make_ca()
    ca_sign(hosts.src, "hosta", "127.0.0.1:6482", ca)
    trust.add_ca(hosts.dst, ca_pem(ca), what="ca.pem")
    pin(hosts, listener)
    with connect_peer(hosts.src, "hostb", certificate_mode=True, timeout=WAIT) as link:
        link.send_frame(b"hi")
        assert link.recv_frame() == b"hi"
    recorder.wait_done()
    [identity] = recorder.identities
    assert identity is not None and (identity.name, identity.via) == ("hosta", "ca")


def test_certificate_mode_refused(hosts: Hosts, listener: PeerListener, recorder: Recorder) -> None:
    pin(hosts, listener)
    # hostb knows hosta by fingerprint only: OpenSSL needs the certificate, so it is refused (documented)
    trust.add_peer(
        hosts.dst, trust.make_peer("hosta", "127.0.0.1", 6482, fingerprint_text=hosts.src_id.fingerprint())
    )
    with pytest.raises(PeerCertificateRefused) as e:
        connect_peer(hosts.src, "hostb", certificate_mode=True, timeout=WAIT)
    assert str(e.value).startswith(f"Target host hostb (127.0.0.1:{listener.address[1]}) refused this host's")
    # a certificate signed by a CA hostb does not trust is refused too
    ca_sign(hosts.src, "hosta", "127.0.0.1:6482", make_ca())
    with pytest.raises(PeerCertificateRefused):
        connect_peer(hosts.src, "hostb", certificate_mode=True, timeout=WAIT)
    assert recorder.identities == []  # the handler never ran


# ---------------------------------------------------------------------- hostile clients and limits
def test_garbage_and_silent_clients_do_not_block_a_good_one(
    hosts: Hosts, listener: PeerListener, recorder: Recorder
) -> None:
    pin(hosts, listener)
    addr = ("127.0.0.1", listener.address[1])
    silent = socket.create_connection(addr, timeout=WAIT)
    garbage = socket.create_connection(addr, timeout=WAIT)
    try:
        garbage.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
        assert dropped(garbage)  # at once (a TLS alert, then EOF or a reset), not after a timeout
        # the listener's handshake timeout is WAIT: this would fail if the silent client held things up
        with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
            link.send_frame(b"good")
            assert link.recv_frame() == b"good"
    finally:
        silent.close()
        garbage.close()


def dropped(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (EOF or reset); a socket timeout (WAIT) fails the test."""
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def test_silent_client_is_dropped_after_the_handshake_timeout(hosts: Hosts, recorder: Recorder) -> None:
    with PeerListener(hosts.dst, "127.0.0.1:0", recorder, handshake_timeout=0.2) as lst:
        with socket.create_connection(("127.0.0.1", lst.address[1]), timeout=WAIT) as silent:
            assert dropped(silent)  # when the server's handshake timeout expired
        wait_for("the slot to be released", lambda: lst.active_connections == 0, WAIT)
    assert recorder.identities == []


def test_connection_limit(hosts: Hosts, recorder: Recorder) -> None:
    with PeerListener(hosts.dst, "127.0.0.1:0", recorder, handshake_timeout=0.5, max_connections=1) as lst:
        pin(hosts, lst)
        silent = socket.create_connection(("127.0.0.1", lst.address[1]), timeout=WAIT)
        wait_for("the silent client to hold the slot", lambda: lst.active_connections == 1, WAIT)
        with pytest.raises(PeerClosed, match="closed the connection in the TLS handshake"):
            connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
        assert dropped(silent)  # after 0.5 s
        silent.close()

        def good_connects() -> bool:
            try:
                with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
                    link.send_frame(b"in")
                    return link.recv_frame() == b"in"
            except PeerClosed:
                return False

        wait_for("a client to get the freed slot", good_connects, WAIT)


def test_oversized_frame_is_refused(hosts: Hosts, recorder: Recorder) -> None:
    with PeerListener(hosts.dst, "127.0.0.1:0", recorder, max_frame=1024) as lst:
        pin(hosts, lst)
        with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT, max_frame=4096) as link:
            link.send_frame(b"x" * 1024)
            assert link.recv_frame() == b"x" * 1024
            link.send_frame(b"y" * 1025)  # within our limit, above the target's
            with pytest.raises(PeerClosed):
                link.recv_frame()
        recorder.wait_done()
        assert recorder.endings == ["FrameTooLarge"]
        with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT, max_frame=16) as link:
            with pytest.raises(FrameTooLarge, match="above the link's limit of 16 bytes; nothing was sent"):
                link.send_frame(b"z" * 17)
            link.send_frame(b"still usable")
            assert link.recv_frame() == b"still usable"


def test_a_failing_handler_does_not_stop_the_listener(hosts: Hosts) -> None:
    calls: list[int] = []

    def handler(link: PeerLink) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        link.send_frame(b"second")

    with PeerListener(hosts.dst, "127.0.0.1:0", handler) as lst:
        pin(hosts, lst)
        with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
            with pytest.raises(PeerClosed):
                link.recv_frame()
        with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
            assert link.recv_frame() == b"second"


def test_handler_errors_are_contained(hosts: Hosts, caplog: pytest.LogCaptureFixture) -> None:
    ended = threading.Event()

    def handler(link: PeerLink) -> None:
        try:
            link.recv_frame()  # the client closes: PeerClosed escapes the handler
        finally:
            ended.set()

    caplog.set_level(logging.INFO, logger="ldmd.peer")
    with PeerListener(hosts.dst, "127.0.0.1:0", handler) as lst:
        pin(hosts, lst)
        connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT).close()
        assert ended.wait(WAIT)
        wait_for("the link to be closed", lambda: lst.active_connections == 0, WAIT)
    assert any(
        r.getMessage().startswith("peer link from 127.0.0.1:") and "ended: peer " in r.getMessage()
        for r in caplog.records
    )


def test_close_gives_up_on_a_stuck_handler(hosts: Hosts, caplog: pytest.LogCaptureFixture) -> None:
    entered, release = threading.Event(), threading.Event()

    def stuck(link: PeerLink) -> None:
        entered.set()
        release.wait(WAIT)  # not on the socket: closing the link does not wake it

    lst = PeerListener(hosts.dst, "127.0.0.1:0", stuck).start()
    pin(hosts, lst)
    link = connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
    try:
        assert entered.wait(WAIT)
        lst.close(timeout=0.05)
        assert any("did not end within 0.05 s" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        link.close()
    wait_for("the stuck thread to end", lambda: lst.active_connections == 0, WAIT)


def test_close_cuts_live_links_and_joins(hosts: Hosts, recorder: Recorder) -> None:
    lst = PeerListener(hosts.dst, "127.0.0.1:0", recorder).start()
    pin(hosts, lst)
    link = connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
    link.send_frame(b"a")
    assert link.recv_frame() == b"a"  # the handler is now blocked in recv_frame
    before = {t.name for t in threading.enumerate()}
    assert any(n.startswith("peer-") for n in before)
    lst.close()
    recorder.wait_done()
    assert recorder.endings == ["PeerClosed"]
    assert not any(t.name.startswith("peer-") and t.is_alive() for t in threading.enumerate())
    lst.close()  # idempotent
    link.close()
    with pytest.raises(PeerConnectionRefused, match="connection refused"):
        connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)


def test_listener_setup_errors(hosts: Hosts, tmp_path: Path, recorder: Recorder) -> None:
    with pytest.raises(PeerConfigError, match="holds no TLS identity yet"):
        PeerListener(tmp_path / "empty", "127.0.0.1:0", recorder)
    with PeerListener(hosts.dst, "127.0.0.1:0", recorder) as lst:
        port = lst.address[1]
        with pytest.raises(
            PeerConfigError, match=f"cannot listen for peers on 127.0.0.1:{port}: address already"
        ):
            PeerListener(hosts.dst, ("127.0.0.1", port), recorder)
    with pytest.raises(ValueError, match="max_connections must be at least 1"):
        PeerListener(hosts.dst, "127.0.0.1:0", recorder, max_connections=0)


def test_broken_configuration_refuses_connections_not_the_listener(
    hosts: Hosts, listener: PeerListener
) -> None:
    pin(hosts, listener)
    (hosts.dst / "peers.toml").write_text("garbage = = 1\n")
    (hosts.dst / "peers.toml").chmod(0o600)
    with pytest.raises(PeerClosed):
        connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
    (hosts.dst / "peers.toml").unlink()
    with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
        link.send_frame(b"back")
        assert link.recv_frame() == b"back"


def test_tls12_client_is_accepted(hosts: Hosts, listener: PeerListener) -> None:
    """TLS 1.2 is the floor, not excluded: an older peer still links (and 1.1 does not)."""
    for version, ok in ((ssl.TLSVersion.TLSv1_2, True), (ssl.TLSVersion.TLSv1_1, False)):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = version
        if not ok:
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        raw = socket.create_connection(("127.0.0.1", listener.address[1]), timeout=WAIT)
        if ok:
            with ctx.wrap_socket(raw) as s:
                assert s.version() == "TLSv1.2"
                head = s.recv(4)
                assert LENGTH.unpack(head)[0] == len(b"LDoms-peer-link/1")
        else:
            with pytest.raises(ssl.SSLError), ctx.wrap_socket(raw):
                pass
            raw.close()


def test_both_ends_send_small_messages_without_delay(hosts: Hosts) -> None:
    """TCP_NODELAY on both ends of the control link: two small messages back to back (Progress, then
    Suspend) must not wait for the peer's delayed ACK in the middle of a guest's pause."""
    seen: list[int] = []

    def handler(link: PeerLink) -> None:
        seen.append(link._live().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        link.send_frame(b"ok")

    with PeerListener(hosts.dst, "127.0.0.1:0", handler, handshake_timeout=WAIT) as lst:
        pin(hosts, lst)
        with connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT) as link:
            assert link._live().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert link.recv_frame() == b"ok"
    assert len(seen) == 1 and seen[0] != 0
