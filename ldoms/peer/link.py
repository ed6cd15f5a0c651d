"""The verified TLS link between two ldmds, cut into length-prefixed frames.

Theory of operation.

A frame is a 4-byte big-endian length followed by that many bytes.  The link does not look inside: the
migration wire module puts its own frames in them.  Both ends refuse a frame above `max_frame` bytes — the
sender before sending anything, the receiver as soon as the length is read (and the link is then closed: a
stream that lost its framing cannot be resynchronised).

Connecting (`connect_peer`), in this order, so that no byte of ours — above all no password — reaches a
server whose certificate was not verified:
1. resolve the target (`ldoms.peer.target`): a configured peer (with its pin) or DNS on port 6482;
2. TCP connect, then the TLS handshake (1.2 at least; 1.3 when both sides have it);
3. verify the server: by the peer's pin when there is one (the handshake accepts any certificate and we
   compare the SHA-256 fingerprint in constant time, so a mismatch shows expected vs actual), else by the CA
   bundle (OpenSSL checks the chain during the handshake; the host name too if `trust host-match` is on).
   With neither, the connection is refused and the message shows the server's fingerprint so the admin can
   check it out of band and pin it;
4. read the server's greeting frame.  The server sends it once it has accepted the link, so a server that
   refused our certificate (certificate mode) is detected here, in `connect_peer`, and not at the first
   frame of the protocol.  Until the greeting has arrived, the client has sent nothing but the handshake.

Timeouts are idle timeouts: every blocking socket call (connect, each handshake step, each read or write)
may take `timeout` seconds.  A timed-out link is closed (a frame may be half read).  On the target side the
listener adds one overall deadline for the unauthenticated phase (its login clock, `ldoms.peer.listener`),
which the handler stops with `logged_in()` once the client has authenticated.

A PeerLink is for one thread at a time: an OpenSSL connection must not be read and written concurrently.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ldoms.peer.errors import (
    FrameTooLarge,
    PeerCertificateMismatch,
    PeerCertificateRefused,
    PeerClosed,
    PeerClosedInHandshake,
    PeerConnectionRefused,
    PeerError,
    PeerProtocolError,
    PeerTimeout,
    PeerTlsError,
    PeerUnreachable,
    PeerUntrusted,
)
from ldoms.peer.target import Endpoint, resolve_target
from ldoms.peer.tls import base_context, fingerprint, load_host_tls
from ldoms.peer.trust import host_match, list_cas

LENGTH = struct.Struct("!I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024  # above the migration wire's 8 MiB payload cap plus its header
GREETING = b"LDoms-peer-link/1"
DEFAULT_CONNECT_TIMEOUT = 30.0  # SPEC §7.13
_CERT_ALERTS = ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED")


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who the other end proved to be with its certificate (certificate mode)."""

    name: str  # the peer's name when pinned, else the certificate's subject CN
    fingerprint: str
    via: str  # "pin" or "ca"


class PeerLink:
    """A connected, verified TLS link: `send_frame(bytes)`, `recv_frame() -> bytes`, `close()`."""

    def __init__(
        self,
        sock: ssl.SSLSocket,
        *,
        where: str,
        max_frame: int = DEFAULT_MAX_FRAME,
        identity: PeerIdentity | None = None,
        on_login: Callable[[], bool] | None = None,
    ) -> None:
        self._sock: ssl.SSLSocket | None = sock
        self.where = where
        self.max_frame = max_frame
        self.identity = identity  # target side: the client's certificate identity, if it presented one
        self._on_login = on_login  # target side: stops the listener's login clock
        self._login_in_time = True
        der = sock.getpeercert(binary_form=True)
        self.peer_fingerprint: str | None = None if der is None else fingerprint(der)
        self.tls_version: str = sock.version() or "?"

    # ------------------------------------------------------------------ plumbing
    @property
    def closed(self) -> bool:
        return self._sock is None

    @property
    def local_address(self) -> tuple[str, int] | None:
        """(address, port) of this end, or None once closed (the migration data plane listens there)."""
        return self._address("getsockname")

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """(address, port) of the other end, or None once closed."""
        return self._address("getpeername")

    def _address(self, which: str) -> tuple[str, int] | None:
        sock = self._sock
        if sock is None:
            return None
        try:
            addr = getattr(sock, which)()
        except OSError:
            return None
        return str(addr[0]), int(addr[1])

    def fileno(self) -> int:
        """The socket's descriptor, to wait for readability (see `pending` for bytes TLS already holds)."""
        return self._live().fileno()

    def pending(self) -> int:
        """Decrypted bytes TLS holds that a read returns without touching the network."""
        return self._live().pending()

    def interrupt(self) -> None:
        """Wake a thread blocked reading this link, from another thread: the TCP socket under TLS is shut
        down (the TLS state is not touched), so the blocked read fails as a closed link."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def logged_in(self) -> bool:
        """Target side: the client has authenticated, so the listener's login clock stops.  False when the
        clock had already run out: the listener is cutting the link, and the next read or write fails."""
        hook, self._on_login = self._on_login, None
        if hook is not None:
            self._login_in_time = hook()
        return self._login_in_time

    def settimeout(self, timeout: float | None) -> None:
        """Seconds each read or write may wait (None: forever)."""
        self._live().settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._live().gettimeout()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> PeerLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> ssl.SSLSocket:
        if self._sock is None:
            raise PeerClosed(f"the link to {self.where} is closed", where=self.where)
        return self._sock

    @contextlib.contextmanager
    def _io(self, doing: str) -> Iterator[ssl.SSLSocket]:
        """Map socket and TLS errors to our classes; any failure leaves the link closed."""
        sock = self._live()
        timeout = sock.gettimeout()
        try:
            yield sock
        except PeerError:
            self.close()
            raise
        except TimeoutError:
            self.close()
            raise PeerTimeout(
                f"Timed out after {timeout:g} s {doing} {self.where}; the link is closed", where=self.where
            ) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as e:
            self.close()
            raise PeerClosed(f"{self.where} closed the connection ({_why(e)})", where=self.where) from e
        except ssl.SSLError as e:
            self.close()
            raise PeerTlsError(
                f"TLS failure on the link with {self.where}: {_why(e)}", where=self.where
            ) from e
        except OSError as e:
            self.close()
            raise PeerClosed(f"the link with {self.where} failed: {_why(e)}", where=self.where) from e

    # ------------------------------------------------------------------ frames
    def send_frame(self, data: bytes) -> None:
        if len(data) > self.max_frame:
            raise FrameTooLarge(
                f"frame of {len(data)} bytes for {self.where} is above the link's limit of {self.max_frame} "
                "bytes; nothing was sent",
                where=self.where,
            )
        with self._io("sending to") as sock:
            header = LENGTH.pack(len(data))
            if len(data) < 65536:
                sock.sendall(header + data)
            else:  # no copy of a large frame just to prepend 4 bytes
                sock.sendall(header)
                sock.sendall(data)

    def recv_frame(self) -> bytes:
        with self._io("waiting for a frame from") as sock:
            header = _recv_exact(sock, LENGTH.size, self.where, at_boundary=True)
            (n,) = LENGTH.unpack(header)
            if n > self.max_frame:
                raise FrameTooLarge(
                    f"{self.where} announced a frame of {n} bytes, above the link's limit of "
                    f"{self.max_frame} bytes; the link is closed",
                    where=self.where,
                )
            return _recv_exact(sock, n, self.where, at_boundary=False)


def _recv_exact(sock: ssl.SSLSocket, n: int, where: str, *, at_boundary: bool) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            if at_boundary and got == 0:
                raise PeerClosed(f"{where} closed the connection", where=where)
            raise PeerClosed(
                f"{where} closed the connection in the middle of a frame ({got} of {n} bytes received)",
                where=where,
            )
        got += k
    return bytes(buf)


def _why(e: BaseException) -> str:
    reason = getattr(e, "reason", None)  # set by OpenSSL errors only
    if isinstance(e, ssl.SSLError) and isinstance(reason, str) and reason:
        return reason.lower().replace("_", " ")
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


# ---------------------------------------------------------------------- client side
def client_context(home: Path, endpoint: Endpoint, *, certificate_mode: bool) -> tuple[ssl.SSLContext, str]:
    """The context for connecting to `endpoint`, and how its certificate is verified: "pin", "ca" or ""
    (no way: the connection is refused after the handshake)."""
    ctx = base_context(server=False)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    by = ""
    if endpoint.fingerprint is not None:
        by = "pin"  # checked by us after the handshake; a pin beats any CA
    else:
        cas = list_cas(home)
        if cas:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=b"".join(c.certificate for c in cas))
            ctx.check_hostname = host_match(home)
            by = "ca"
    if certificate_mode:
        me = load_host_tls(home)
        ctx.load_cert_chain(me.cert_path, me.key_path)
    return ctx, by


def _tcp_connect(endpoint: Endpoint, timeout: float) -> socket.socket:
    where = endpoint.label
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        # Small messages go out at once: Nagle would hold the second of two back-to-back ones (Progress,
        # then Suspend) until the peer's delayed ACK, 40 ms, in the middle of the guest's pause.
        with contextlib.suppress(OSError):  # not TCP (a test's socketpair): nothing to tune
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except socket.gaierror as e:
        raise PeerUnreachable(
            f"Failed to establish connection with ldmd on {where}: cannot resolve host name {endpoint.host} "
            f"({e.strerror}); record it with `ldmd peer add {endpoint.name} ADDR:PORT`",
            where=where,
        ) from None
    except ConnectionRefusedError:
        raise PeerConnectionRefused(
            f"Failed to establish connection with ldmd on {where}: connection refused (is ldmd running "
            f"there, listening for peers on port {endpoint.port}?)",
            where=where,
        ) from None
    except TimeoutError:
        raise PeerTimeout(
            f"Failed to establish connection with ldmd on {where}: timed out after {timeout:g} s connecting",
            where=where,
        ) from None
    except OSError as e:
        what = {errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH: "network unreachable"}.get(
            e.errno or 0, (e.strerror or str(e)).lower()
        )
        raise PeerUnreachable(
            f"Failed to establish connection with ldmd on {where}: {what}", where=where
        ) from e


def _handshake_error(
    e: BaseException, endpoint: Endpoint, *, certificate_mode: bool, timeout: float, doing: str
) -> PeerError:
    where = endpoint.label
    if isinstance(e, ssl.SSLCertVerificationError):
        return PeerUntrusted(
            f"Certificate of {where} is not trusted: {e.verify_message} (checked against the CAs of this "
            f"host: `ldmd trust list`). Run `ldmd tls show` on {endpoint.name} to see its fingerprint, and "
            f"pin it with `ldmd peer add {endpoint.name} {endpoint.address} --fingerprint FP` if it is the "
            "right one",
            where=where,
        )
    if isinstance(e, TimeoutError):
        return PeerTimeout(f"Timed out after {timeout:g} s {doing} with {where}", where=where)
    if (
        isinstance(e, ssl.SSLError)
        and certificate_mode
        and any(a in str(getattr(e, "reason", "")) for a in _CERT_ALERTS)
    ):
        return PeerCertificateRefused(
            f"{where[0].upper()}{where[1:]} refused this host's certificate ({_why(e)}): on {endpoint.name}, "
            "record this host with `ldmd peer add NAME ADDR:PORT --cert FILE` (FILE from `ldmd tls show "
            "--pem` here), or have this host's certificate signed by a CA it trusts",
            where=where,
        )
    if isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionError):
        closed = PeerClosedInHandshake if doing == "in the TLS handshake" else PeerClosed
        return closed(
            f"{where[0].upper()}{where[1:]} closed the connection {doing} ({_why(e)}); it may be at its "
            "connection limit, or not an ldmd peer port",
            where=where,
        )
    if isinstance(e, ssl.SSLError):
        return PeerTlsError(f"TLS failure {doing} with {where}: {_why(e)}", where=where)
    return PeerClosed(f"the connection with {where} failed {doing}: {_why(e)}", where=where)


def connect_endpoint(
    home: Path,
    endpoint: Endpoint,
    *,
    certificate_mode: bool,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_frame: int = DEFAULT_MAX_FRAME,
    busy_retry_s: float = 0.0,
) -> PeerLink:
    """A verified link to `endpoint` (see the module docstring for the order of checks).  For `busy_retry_s`
    seconds, a connection the target closes during the TLS handshake (a listener at its limit of connections
    not yet logged in does that: many migrations towards one host at once) is tried again after a growing,
    jittered pause."""
    give_up = time.monotonic() + busy_retry_s
    pause = 0.05
    while True:
        try:
            return _connect_once(home, endpoint, certificate_mode=certificate_mode, timeout=timeout,
                                 max_frame=max_frame)  # fmt: skip
        except PeerClosedInHandshake:
            if time.monotonic() + pause > give_up:
                raise
        time.sleep(pause * random.uniform(0.5, 1.5))  # jitter: a burst of sources does not retry in step
        pause = min(2 * pause, 1.0)


def _connect_once(
    home: Path, endpoint: Endpoint, *, certificate_mode: bool, timeout: float, max_frame: int
) -> PeerLink:
    where = endpoint.label
    ctx, by = client_context(home, endpoint, certificate_mode=certificate_mode)
    raw = _tcp_connect(endpoint, timeout)
    try:
        sock = ctx.wrap_socket(raw, server_hostname=endpoint.host, do_handshake_on_connect=False)
    except (ssl.SSLError, ValueError) as e:
        raw.close()
        raise PeerTlsError(f"TLS set-up for {where} failed: {e}", where=where) from e
    try:
        try:
            sock.do_handshake()
        except (OSError, ssl.SSLError) as e:
            raise _handshake_error(
                e, endpoint, certificate_mode=certificate_mode, timeout=timeout, doing="in the TLS handshake"
            ) from e
        der = sock.getpeercert(binary_form=True)
        if der is None:  # cannot happen with a certificate-based suite; refuse rather than assume
            raise PeerUntrusted(f"{where} presented no certificate", where=where)
        actual = fingerprint(der)
        if by == "pin":
            expected = endpoint.fingerprint or ""
            if not hmac.compare_digest(actual.encode(), expected.encode()):
                raise PeerCertificateMismatch(
                    f"Certificate of {where} does not match its pin: expected {expected}, got {actual}. "
                    f"Nothing was sent. If {endpoint.name} was given a new certificate, check it there with "
                    f"`ldmd tls show` and record it again (`ldmd peer remove {endpoint.name}`, then `ldmd "
                    "peer add`)",
                    where=where,
                    expected=expected,
                    actual=actual,
                )
        elif by == "":
            raise PeerUntrusted(
                f"Certificate of {where} is not trusted: no pin is recorded for it and no CA is trusted; its "
                f"fingerprint is {actual}. Nothing was sent. Check it on {endpoint.name} with `ldmd tls "
                f"show`, then pin it with `ldmd peer add {endpoint.name} {endpoint.address} "
                f"--fingerprint {actual}`",
                where=where,
                actual=actual,
            )
    except BaseException:
        sock.close()
        raise
    link = PeerLink(sock, where=where, max_frame=max(max_frame, 64))  # a greeting fits whatever the limit
    try:
        greeting = link.recv_frame()
    except (PeerClosed, PeerTlsError) as e:
        # A refusal of our certificate (TLS 1.3: after our side of the handshake) shows up here as an alert.
        if isinstance(e.__cause__, OSError):
            raise _handshake_error(
                e.__cause__,
                endpoint,
                certificate_mode=certificate_mode,
                timeout=timeout,
                doing="before the greeting",
            ) from e
        raise
    if greeting != GREETING:
        link.close()
        raise PeerProtocolError(
            f"{where} is not an ldmd peer link: it greeted with {greeting[:40]!r}", where=where
        )
    link.max_frame = max_frame
    return link


def connect_peer(
    home: Path,
    target: str,
    *,
    certificate_mode: bool,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_frame: int = DEFAULT_MAX_FRAME,
    busy_retry_s: float = 0.0,
) -> PeerLink:
    """A verified link to the ldmd of `target` (a peer name, or a host name/IP on port 6482).
    `certificate_mode`: present this host's certificate (`migrate-domain -c`); `busy_retry_s`: see
    `connect_endpoint`."""
    return connect_endpoint(
        home,
        resolve_target(home, target),
        certificate_mode=certificate_mode,
        timeout=timeout,
        max_frame=max_frame,
        busy_retry_s=busy_retry_s,
    )


def fetch_certificate(host: str, port: int, *, timeout: float = 5.0, name: str | None = None) -> bytes:
    """The DER certificate a server presents (nothing verified, nothing sent): for `ldmd peer add`, which
    checks it against the fingerprint the admin typed."""
    endpoint = Endpoint(name=name or host, host=host, port=port)
    ctx = base_context(server=False)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = _tcp_connect(endpoint, timeout)
    with ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False) as sock:
        try:
            sock.do_handshake()
        except (OSError, ssl.SSLError) as e:
            raise _handshake_error(
                e, endpoint, certificate_mode=False, timeout=timeout, doing="in the TLS handshake"
            ) from e
        der = sock.getpeercert(binary_form=True)
    if der is None:
        raise PeerUntrusted(f"{endpoint.label} presented no certificate", where=endpoint.label)
    return der


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_FRAME",
    "GREETING",
    "PeerIdentity",
    "PeerLink",
    "connect_endpoint",
    "connect_peer",
    "fetch_certificate",
]
