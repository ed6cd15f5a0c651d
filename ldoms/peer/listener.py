"""The daemon's TLS server for peers: one accept thread, one thread per connection, bounded.

Theory of operation.  `PeerListener(home, "ADDR:PORT", handler)` binds at once (so a port in use is reported
by the constructor); `start()` runs the accept loop in a thread.  Each accepted connection takes a slot
until it has logged in (at most `max_connections` not yet logged in; over the limit the connection is closed
at once, before any TLS work, so a flood costs little) and gets its own thread, which:

1. runs the TLS handshake under `handshake_timeout`: a client that sends garbage fails at once, one that
   sends nothing is dropped when the timeout expires; neither delays any other connection;
2. identifies the client by its certificate, if it presented one: the client certificate is *requested*
   (CERT_OPTIONAL) and OpenSSL accepts it only if it is a pinned peer's certificate or chains to a trusted CA
   (`ldoms.peer.trust`); anything else fails the handshake, and the client sees a certificate alert;
3. sends the greeting frame, sets `io_timeout` and calls `handler(link)` with a `PeerLink` whose `identity`
   says who the client proved to be (None: no certificate; the handler then asks for a password);
4. closes the link when the handler returns or raises (an exception is logged, never propagated).

The login clock.  From the moment a connection is accepted, it has `login_timeout` seconds in all (the TLS
handshake, the greeting, and whatever the handler reads before the client has authenticated) until the
handler calls `link.logged_in()`.  The clock is not per read: a client that trickles a byte at a time cannot
extend it.  One watchdog thread cuts (shuts down) every connection whose clock runs out, as `close()` does,
so the blocked handler wakes up with a PeerClosed and the slot is free again.  With 8 slots and a 30 s
clock, clients that never authenticate can hold the port for at most 30 s at a time each.

The server's SSLContext is rebuilt when the home's TLS identity, peers or CA bundle change (checked by file
stamps at each connection), so `ldmd peer add` takes effect without restarting ldmd.

`close()` stops accepting, shuts down every live connection (through a duplicate of its socket, which is safe
while another thread is inside OpenSSL on it) so blocked handlers wake up with a PeerClosed, and joins every
thread.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ldoms.peer.errors import PeerConfigError, PeerError
from ldoms.peer.link import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_FRAME, GREETING, PeerIdentity, PeerLink
from ldoms.peer.target import parse_address
from ldoms.peer.tls import base_context, fingerprint, load_certificate, load_host_tls, subject_cn, tls_paths
from ldoms.peer.trust import ca_path, list_cas, load_peers, peers_path

log = logging.getLogger("ldmd.peer")

Handler = Callable[[PeerLink], None]


@dataclass(slots=True)
class _Conn:
    """One live connection: a duplicate of its socket (to cut it from another thread) and its login clock."""

    ctl: socket.socket
    client: str
    login_by: float | None  # monotonic deadline of the unauthenticated phase; None once logged in
    cut: bool = False  # the login clock ran out and the connection was shut down
    # The slot bounds connections that have not logged in: a logged-in one gives it back, so that a host
    # can receive more migrations at once than there are slots (the 9th used to be closed at once).
    holds_slot: bool = True


class _ServerTrust:
    """The server context and the pins it identifies clients by, rebuilt when their files change."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._stamp: tuple[object, ...] | None = None
        self._ctx: ssl.SSLContext | None = None
        self._pins: dict[str, str] = {}
        self._lock = threading.Lock()

    def _files_stamp(self) -> tuple[object, ...]:
        out: list[object] = []
        for p in (*tls_paths(self.home), peers_path(self.home), ca_path(self.home)):
            try:
                st = p.stat()
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def get(self) -> tuple[ssl.SSLContext, dict[str, str]]:
        with self._lock:
            stamp = self._files_stamp()
            if self._ctx is None or stamp != self._stamp:
                self._ctx, self._pins = self._build()
                self._stamp = stamp
            return self._ctx, self._pins

    def _build(self) -> tuple[ssl.SSLContext, dict[str, str]]:
        me = load_host_tls(self.home)
        ctx = base_context(server=True)
        ctx.load_cert_chain(me.cert_path, me.key_path)
        peers = load_peers(self.home)
        anchors = [c.certificate for c in list_cas(self.home)]
        anchors += [p.certificate for p in peers.values() if p.certificate is not None]
        ctx.verify_mode = ssl.CERT_OPTIONAL  # requested, never required: password-mode clients have none
        if anchors:
            ctx.load_verify_locations(cadata=b"".join(anchors))
        pins = {p.fingerprint: p.name for p in peers.values() if p.fingerprint is not None}
        return ctx, pins


class PeerListener:
    def __init__(
        self,
        home: Path,
        listen_addr: str | tuple[str, int],
        handler: Handler,
        *,
        handshake_timeout: float = 10.0,
        login_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        io_timeout: float | None = 120.0,
        max_connections: int = 8,
        max_frame: int = DEFAULT_MAX_FRAME,
        backlog: int = 16,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if not login_timeout > 0:
            raise ValueError(f"login_timeout must be a positive number of seconds, not {login_timeout}")
        self.home = home
        self.handler = handler
        self.handshake_timeout = handshake_timeout
        self.login_timeout = login_timeout
        self.io_timeout = io_timeout
        self.max_frame = max_frame
        self._trust = _ServerTrust(home)
        self._trust.get()  # a missing or broken TLS identity is reported now, not at the first peer
        host, port = (
            parse_address(listen_addr, any_port=True) if isinstance(listen_addr, str) else listen_addr
        )
        self._sock = _bind(host, port, backlog)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Condition()  # also wakes the watchdog when a connection comes or goes
        self._conns: dict[threading.Thread, _Conn] = {}
        self._closing = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> PeerListener:
        if self._accept_thread is None:
            self._accept_thread = threading.Thread(
                target=self._accept_loop, name=f"peer-accept-{self.address[1]}", daemon=True
            )
            self._accept_thread.start()
            self._watchdog = threading.Thread(
                target=self._watch_logins, name=f"peer-login-clock-{self.address[1]}", daemon=True
            )
            self._watchdog.start()
            log.info("listening for peers on %s:%d", *self.address)
        return self

    def __enter__(self) -> PeerListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, cut live connections, join every thread (waiting at most `timeout` for each)."""
        if self._closing.is_set():
            return
        self._closing.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        with self._lock:
            self._lock.notify_all()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        if self._watchdog is not None:
            self._watchdog.join(timeout)
        self._sock.close()
        with self._lock:
            conns = list(self._conns.items())
        for _, conn in conns:
            with contextlib.suppress(OSError):
                conn.ctl.shutdown(socket.SHUT_RDWR)
        for thread, _ in conns:
            thread.join(timeout)
            if thread.is_alive():
                log.error("peer connection thread %s did not end within %g s", thread.name, timeout)
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------ accepting
    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._closing.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._sock and not self._closing.is_set():
                        self._accept_one()

    def _accept_one(self) -> None:
        try:
            raw, addr = self._sock.accept()
        except OSError as e:  # e.g. EMFILE, ECONNABORTED: this one is lost, the listener goes on
            log.warning("accepting a peer connection failed: %s", e)
            return
        client = _format(addr)
        if not self._slots.acquire(blocking=False):
            log.warning("peer connection from %s refused: already at the limit of connections", client)
            raw.close()
            return
        try:
            ctl = raw.dup()
            conn = _Conn(ctl=ctl, client=client, login_by=time.monotonic() + self.login_timeout)
            thread = threading.Thread(
                target=self._serve, args=(raw, conn), name=f"peer-{client}", daemon=True
            )
            with self._lock:
                self._conns[thread] = conn
                self._lock.notify_all()
            thread.start()
        except BaseException:
            self._slots.release()
            raw.close()
            raise

    # ------------------------------------------------------------------ the login clock
    def _watch_logins(self) -> None:
        """Cut every connection whose login clock ran out (see the module docstring)."""
        with self._lock:
            while not self._closing.is_set():
                now = time.monotonic()
                pending = [c for c in self._conns.values() if c.login_by is not None]
                for conn in pending:
                    if conn.login_by is not None and conn.login_by <= now:
                        conn.login_by, conn.cut = None, True
                        log.warning(
                            "peer connection from %s dropped: not authenticated within %g s of connecting",
                            conn.client,
                            self.login_timeout,
                        )
                        with contextlib.suppress(OSError):
                            conn.ctl.shutdown(socket.SHUT_RDWR)
                due = [c.login_by for c in pending if c.login_by is not None]
                self._lock.wait(min(due) - now if due else None)

    def _logged_in(self, conn: _Conn) -> bool:
        """Stop `conn`'s login clock; False when it had already run out (the connection is cut)."""
        with self._lock:
            conn.login_by = None
            if not conn.cut and conn.holds_slot:
                conn.holds_slot = False
                self._slots.release()
            return not conn.cut

    # ------------------------------------------------------------------ one connection
    def _serve(self, raw: socket.socket, conn: _Conn) -> None:
        link: PeerLink | None = None
        client = conn.client
        try:
            link = self._handshake(raw, conn)
            if link is not None:
                self._run_handler(link, client)
        finally:
            if link is not None:
                link.close()
            else:
                raw.close()
            with self._lock:
                self._conns.pop(threading.current_thread(), None)
                self._lock.notify_all()
                release, conn.holds_slot = conn.holds_slot, False
            conn.ctl.close()
            if release:
                self._slots.release()

    def _handshake(self, raw: socket.socket, conn: _Conn) -> PeerLink | None:
        client = conn.client
        where = f"peer {client}"
        try:
            ctx, pins = self._trust.get()
        except (PeerConfigError, ssl.SSLError, OSError) as e:
            log.error("peer connection from %s refused: the TLS configuration is broken: %s", client, e)
            return None
        raw.settimeout(self.handshake_timeout)
        with contextlib.suppress(OSError):  # no Nagle delay on the answers (see link._tcp_connect)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except (OSError, ssl.SSLError) as e:
            log.info("peer connection from %s dropped: %s", client, e)
            return None
        try:
            sock.do_handshake()
        except TimeoutError:
            log.info(
                "peer connection from %s dropped: no TLS handshake in %g s", client, self.handshake_timeout
            )
            sock.close()
            return None
        except (OSError, ssl.SSLError) as e:
            log.info("peer connection from %s dropped: TLS handshake failed: %s", client, e)
            sock.close()
            return None
        identity = _identify(sock, pins)
        if identity is not None:
            where = f"peer {identity.name} ({client})"
        link = PeerLink(
            sock,
            where=where,
            max_frame=self.max_frame,
            identity=identity,
            on_login=lambda: self._logged_in(conn),
        )
        try:
            link.send_frame(GREETING)
        except PeerError as e:
            log.info("peer connection from %s dropped before the greeting: %s", client, e)
            return None
        link.settimeout(self.io_timeout)
        who = (
            "no client certificate"
            if identity is None
            else f"certificate of {identity.name} by {identity.via}"
        )
        log.info("peer link from %s (%s, %s)", client, link.tls_version, who)
        return link

    def _run_handler(self, link: PeerLink, client: str) -> None:
        try:
            self.handler(link)
        except PeerError as e:
            log.info("peer link from %s ended: %s", client, e)
        except Exception:
            log.exception("peer link handler for %s failed", client)


def _identify(sock: ssl.SSLSocket, pins: dict[str, str]) -> PeerIdentity | None:
    """Who a client is, by the certificate OpenSSL already verified (None if it presented none)."""
    der = sock.getpeercert(binary_form=True)
    if der is None:
        return None
    fp = fingerprint(der)
    if fp in pins:
        return PeerIdentity(name=pins[fp], fingerprint=fp, via="pin")
    # Not a pinned certificate, yet verified: it chains to a trusted CA (pinned ones are leaves, see trust.py)
    cert = load_certificate(der, what="client certificate")
    return PeerIdentity(name=subject_cn(cert), fingerprint=fp, via="ca")


def _format(addr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = infos[0][0]
        return socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as e:
        raise PeerConfigError(
            f"cannot listen for peers on {host}:{port}: {(e.strerror or str(e)).lower()}"
        ) from None
