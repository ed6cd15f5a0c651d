"""PeerLink framing and error mapping, and connect_endpoint against in-process TLS servers on socketpairs
(no network: `socket.create_connection` is replaced by a socketpair whose other end a thread serves)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ldoms.peer import link as linkmod
from ldoms.peer.errors import (
    FrameTooLarge,
    PeerCertificateMismatch,
    PeerCertificateRefused,
    PeerClosed,
    PeerConnectionRefused,
    PeerError,
    PeerProtocolError,
    PeerTimeout,
    PeerTlsError,
    PeerUnreachable,
    PeerUntrusted,
)
from ldoms.peer.link import GREETING, LENGTH, PeerLink
from ldoms.peer.target import Endpoint
from ldoms.peer.tls import HostTls, base_context, ensure_host_tls


@pytest.fixture
def server_id(tmp_path: Path) -> HostTls:
    return ensure_host_tls(tmp_path / "server", "srv", "127.0.0.1:6482")


def server_context(me: HostTls) -> ssl.SSLContext:
    ctx = base_context(server=True)
    ctx.load_cert_chain(me.cert_path, me.key_path)
    return ctx


def client_context() -> ssl.SSLContext:
    ctx = base_context(server=False)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture
def pair(server_id: HostTls) -> Iterator[tuple[PeerLink, PeerLink]]:
    """(server link, client link) joined by TLS over a socketpair; frames capped at 1024 bytes."""
    a, b = socket.socketpair()
    out: dict[str, ssl.SSLSocket] = {}
    t = threading.Thread(
        target=lambda: out.setdefault("s", server_context(server_id).wrap_socket(a, server_side=True))
    )
    t.start()
    c = client_context().wrap_socket(b)
    t.join(10)
    s_link = PeerLink(out["s"], where="peer test", max_frame=1024)
    c_link = PeerLink(c, where="target host srv (x:1)", max_frame=1024)
    for lk in (s_link, c_link):
        lk.settimeout(10)
    yield s_link, c_link
    s_link.close()
    c_link.close()


# ---------------------------------------------------------------------- frames
def test_frames_round_trip(pair: tuple[PeerLink, PeerLink], server_id: HostTls) -> None:
    server, client = pair
    for data in (b"", b"x", bytes(range(256)) * 4):
        client.send_frame(data)
        assert server.recv_frame() == data
    server.send_frame(b"back")
    assert client.recv_frame() == b"back"
    assert client.peer_fingerprint == server_id.fingerprint()
    assert server.peer_fingerprint is None  # the client presented no certificate
    assert client.tls_version == "TLSv1.3"
    assert client.gettimeout() == 10


def test_large_frames_round_trip(server_id: HostTls) -> None:
    a, b = socket.socketpair()
    out: dict[str, ssl.SSLSocket] = {}
    t = threading.Thread(
        target=lambda: out.setdefault("s", server_context(server_id).wrap_socket(a, server_side=True))
    )
    t.start()
    client = PeerLink(client_context().wrap_socket(b), where="c")
    t.join(10)
    server = PeerLink(out["s"], where="s")
    data = os.urandom(300_000)
    sender = threading.Thread(target=client.send_frame, args=(data,))
    sender.start()
    assert server.recv_frame() == data
    sender.join(10)
    client.close()
    server.close()


def test_send_above_the_limit_sends_nothing(pair: tuple[PeerLink, PeerLink]) -> None:
    server, client = pair
    with pytest.raises(FrameTooLarge) as e:
        client.send_frame(b"x" * 1025)
    assert str(e.value) == (
        "frame of 1025 bytes for target host srv (x:1) is above the link's limit of 1024 bytes; "
        "nothing was sent"
    )
    client.send_frame(b"still fine")
    assert server.recv_frame() == b"still fine"


def test_announced_frame_above_the_limit_closes_the_link(pair: tuple[PeerLink, PeerLink]) -> None:
    server, client = pair
    client._live().sendall(LENGTH.pack(1025))  # a lying header, no body
    with pytest.raises(
        FrameTooLarge, match="peer test announced a frame of 1025 bytes, above the link's limit"
    ):
        server.recv_frame()
    assert server.closed
    with pytest.raises(PeerClosed, match="the link to peer test is closed"):
        server.recv_frame()


def test_close_at_a_frame_boundary(pair: tuple[PeerLink, PeerLink]) -> None:
    server, client = pair
    client.close()
    with pytest.raises(PeerClosed, match=r"^peer test closed the connection"):
        server.recv_frame()


def test_close_in_the_middle_of_a_frame(pair: tuple[PeerLink, PeerLink]) -> None:
    server, client = pair
    client._live().sendall(LENGTH.pack(10) + b"ab")
    client.close()
    with pytest.raises(PeerClosed, match=r"in the middle of a frame \(2 of 10 bytes received\)"):
        server.recv_frame()


def test_read_timeout_closes_the_link(pair: tuple[PeerLink, PeerLink]) -> None:
    server, _ = pair
    server.settimeout(0.05)
    with pytest.raises(
        PeerTimeout, match=r"Timed out after 0.05 s waiting for a frame from peer test; the link"
    ):
        server.recv_frame()
    assert server.closed


def test_tls_garbage_is_a_tls_error(pair: tuple[PeerLink, PeerLink]) -> None:
    server, client = pair
    os.write(client._live().fileno(), b"\x17\x03\x03\x00\x10" + b"garbage-garbage!")  # a record nobody sealed
    with pytest.raises(PeerTlsError, match="TLS failure on the link with peer test"):
        server.recv_frame()
    assert server.closed


class FakeSock:
    """Enough of an SSLSocket to drive PeerLink's error mapping."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.closed = False

    def getpeercert(self, binary_form: bool = False) -> None:
        return None

    def version(self) -> str:
        return "TLSv1.3"

    def gettimeout(self) -> float:
        return 1.0

    def recv_into(self, buf: memoryview) -> int:
        raise self.exc

    def sendall(self, data: bytes) -> None:
        raise self.exc

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("exc", "cls", "text"),
    [
        (
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            PeerClosed,
            "connection reset by peer",
        ),
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), PeerClosed, "closed the connection (broken pipe)"),
        (ssl.SSLEOFError(8, "EOF occurred"), PeerClosed, "closed the connection"),
        (OSError(errno.EIO, "Input/output error"), PeerClosed, "failed: input/output error"),
        (TimeoutError(), PeerTimeout, "Timed out after 1 s"),
    ],
)
def test_io_error_mapping(exc: BaseException, cls: type[PeerError], text: str) -> None:
    for op in (lambda lk: lk.recv_frame(), lambda lk: lk.send_frame(b"x")):
        sock = FakeSock(exc)
        lk = PeerLink(sock, where="peer p")  # type: ignore[arg-type]
        with pytest.raises(cls, match=text.replace("(", r"\(").replace(")", r"\)")):
            op(lk)
        assert sock.closed and lk.closed


def test_context_manager_closes() -> None:
    sock = FakeSock(OSError())
    with PeerLink(sock, where="p") as lk:  # type: ignore[arg-type]
        assert not lk.closed
    assert sock.closed
    lk.close()  # idempotent


# ---------------------------------------------------------------------- connecting
def fake_network(
    monkeypatch: pytest.MonkeyPatch, serve: Callable[[socket.socket], None]
) -> list[threading.Thread]:
    """Make create_connection return a socketpair end whose other end `serve` runs in a thread."""
    threads: list[threading.Thread] = []

    def create_connection(addr: tuple[str, int], timeout: float | None = None) -> socket.socket:
        a, b = socket.socketpair()
        b.settimeout(timeout)
        t = threading.Thread(target=serve, args=(a,), daemon=True)
        t.start()
        threads.append(t)
        return b

    monkeypatch.setattr(linkmod.socket, "create_connection", create_connection)
    return threads


def tls_server(
    me: HostTls, after: Callable[[ssl.SSLSocket], None], ctx: ssl.SSLContext | None = None
) -> Callable[[socket.socket], None]:
    def serve(raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            with (ctx or server_context(me)).wrap_socket(raw, server_side=True) as s:
                after(s)
        except (OSError, ssl.SSLError):
            pass

    return serve


def greet(s: ssl.SSLSocket) -> None:
    s.sendall(LENGTH.pack(len(GREETING)) + GREETING)
    s.recv(1)  # until the client goes


def endpoint(fp: str | None) -> Endpoint:
    return Endpoint(name="srv", host="192.0.2.7", port=6482, fingerprint=fp, configured=fp is not None)


def test_connect_with_the_right_pin(
    tmp_path: Path, server_id: HostTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_network(monkeypatch, tls_server(server_id, greet))
    with linkmod.connect_endpoint(
        tmp_path, endpoint(server_id.fingerprint()), certificate_mode=False, timeout=10
    ) as lk:
        assert lk.peer_fingerprint == server_id.fingerprint()
        assert lk.where == "target host srv (192.0.2.7:6482)"


def test_connect_with_a_wrong_pin_sends_nothing(
    tmp_path: Path, server_id: HostTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[bytes] = []

    def record(s: ssl.SSLSocket) -> None:
        s.sendall(LENGTH.pack(len(GREETING)) + GREETING)
        while chunk := s.recv(4096):
            received.append(chunk)

    threads = fake_network(monkeypatch, tls_server(server_id, record))
    wrong = ":".join(["00"] * 32)
    with pytest.raises(PeerCertificateMismatch) as e:
        linkmod.connect_endpoint(tmp_path, endpoint(wrong), certificate_mode=False, timeout=10)
    threads[0].join(10)
    assert received == []
    assert e.value.expected == wrong and e.value.actual == server_id.fingerprint()
    assert f"expected {wrong}, got {server_id.fingerprint()}. Nothing was sent." in str(e.value)


def test_connect_without_pin_or_ca_shows_the_fingerprint(
    tmp_path: Path, server_id: HostTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_network(monkeypatch, tls_server(server_id, greet))
    with pytest.raises(PeerUntrusted) as e:
        linkmod.connect_endpoint(tmp_path, endpoint(None), certificate_mode=False, timeout=10)
    fp = server_id.fingerprint()
    assert e.value.actual == fp
    assert "no pin is recorded for it and no CA is trusted" in str(e.value)
    assert f"`ldmd peer add srv 192.0.2.7:6482 --fingerprint {fp}`" in str(e.value)


def test_connect_to_something_else_than_ldmd(
    tmp_path: Path, server_id: HostTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_network(monkeypatch, tls_server(server_id, lambda s: s.sendall(LENGTH.pack(5) + b"HTTP/")))
    with pytest.raises(PeerProtocolError, match=r"is not an ldmd peer link: it greeted with b'HTTP/'"):
        linkmod.connect_endpoint(
            tmp_path, endpoint(server_id.fingerprint()), certificate_mode=False, timeout=10
        )


def test_server_closing_before_the_greeting(
    tmp_path: Path, server_id: HostTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_network(monkeypatch, tls_server(server_id, lambda s: None))
    with pytest.raises(PeerClosed, match="closed the connection"):
        linkmod.connect_endpoint(
            tmp_path, endpoint(server_id.fingerprint()), certificate_mode=False, timeout=10
        )


def test_no_common_protocol_version(
    tmp_path: Path, server_id: HostTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = server_context(server_id)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    fake_network(monkeypatch, tls_server(server_id, greet, ctx))
    monkeypatch.setattr(
        linkmod,
        "base_context",
        lambda *, server: _capped(base_context(server=server)),
    )
    with pytest.raises(PeerTlsError, match=r"TLS failure in the TLS handshake with target host srv .*: "):
        linkmod.connect_endpoint(
            tmp_path, endpoint(server_id.fingerprint()), certificate_mode=False, timeout=10
        )


def _capped(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def test_handshake_timeout(tmp_path: Path, server_id: HostTls, monkeypatch: pytest.MonkeyPatch) -> None:
    done = threading.Event()

    def silent(raw: socket.socket) -> None:
        done.wait(10)
        raw.close()

    fake_network(monkeypatch, silent)
    try:
        with pytest.raises(
            PeerTimeout, match=r"Timed out after 0.05 s in the TLS handshake with target host srv"
        ):
            linkmod.connect_endpoint(
                tmp_path, endpoint(server_id.fingerprint()), certificate_mode=False, timeout=0.05
            )
    finally:
        done.set()


def test_certificate_mode_needs_our_identity(tmp_path: Path, server_id: HostTls) -> None:
    from ldoms.peer.errors import PeerConfigError

    with pytest.raises(PeerConfigError, match="holds no TLS identity yet"):
        linkmod.connect_endpoint(tmp_path / "empty", endpoint(server_id.fingerprint()), certificate_mode=True)


@pytest.mark.parametrize(
    ("exc", "cls", "text"),
    [
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            PeerUnreachable,
            "cannot resolve host name",
        ),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), PeerConnectionRefused, "connection refused"),
        (TimeoutError(), PeerTimeout, "timed out after 3 s connecting"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), PeerUnreachable, ": host unreachable"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), PeerUnreachable, ": network unreachable"),
        (OSError(errno.EACCES, "Permission denied"), PeerUnreachable, ": permission denied"),
    ],
)
def test_tcp_connect_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: OSError, cls: type[PeerError], text: str
) -> None:
    def fail(addr: tuple[str, int], timeout: float | None = None) -> socket.socket:
        raise exc

    monkeypatch.setattr(linkmod.socket, "create_connection", fail)
    with pytest.raises(cls) as e:
        linkmod.connect_endpoint(tmp_path, endpoint(None), certificate_mode=False, timeout=3)
    assert str(e.value).startswith(
        "Failed to establish connection with ldmd on target host srv (192.0.2.7:6482): "
    )
    assert text in str(e.value)
    assert e.value.where == "target host srv (192.0.2.7:6482)"


def _ssl_error(reason: str) -> ssl.SSLError:
    e = ssl.SSLError(1, reason)
    e.reason = reason
    return e


def test_handshake_error_mapping() -> None:
    ep = endpoint(None)
    v = ssl.SSLCertVerificationError(1, "verify failed")
    v.verify_message = "unable to get local issuer certificate"
    e = linkmod._handshake_error(v, ep, certificate_mode=False, timeout=1, doing="in the TLS handshake")
    assert isinstance(e, PeerUntrusted) and "not trusted: unable to get local issuer certificate" in str(e)
    alert = _ssl_error("TLSV1_ALERT_UNKNOWN_CA")
    e = linkmod._handshake_error(alert, ep, certificate_mode=True, timeout=1, doing="x")
    assert isinstance(e, PeerCertificateRefused)
    assert str(e).startswith(
        "Target host srv (192.0.2.7:6482) refused this host's certificate (tlsv1 alert unknown ca)"
    )
    e = linkmod._handshake_error(alert, ep, certificate_mode=False, timeout=1, doing="x")
    assert isinstance(e, PeerTlsError)
    e = linkmod._handshake_error(ValueError("odd"), ep, certificate_mode=False, timeout=1, doing="x")
    assert isinstance(e, PeerClosed) and "failed x: odd" in str(e)


def test_fetch_certificate(server_id: HostTls, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_network(monkeypatch, tls_server(server_id, greet))
    assert linkmod.fetch_certificate("192.0.2.7", 6482, timeout=10) == server_id.cert_der


def test_fetch_certificate_handshake_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def ssh(raw: socket.socket) -> None:
        raw.recv(4096)  # the ClientHello
        raw.sendall(b"SSH-2.0-OpenSSH\r\n")
        with contextlib.suppress(OSError):
            raw.recv(1)  # until the client gives up (EOF or a reset)
        raw.close()

    fake_network(monkeypatch, ssh)
    with pytest.raises(PeerTlsError, match=r"TLS failure in the TLS handshake with target host 192\.0\.2\.7"):
        linkmod.fetch_certificate("192.0.2.7", 22, timeout=10)
