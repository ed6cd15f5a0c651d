"""The peer port's slots bound the connections that have not logged in, not the migrations under way.

Found by tests/load/test_three_hosts.py: a connection kept its slot for its whole life, so a host receiving
more than 8 migrations at once closed the 9th connection at once ("closed the connection in the TLS
handshake ... it may be at its connection limit").  A logged-in connection now gives its slot back, and a
source whose connection is closed that way tries again for a while (a burst of migrations started at once
can still find 8 others logging in)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ldoms.peer.errors import PeerClosed, PeerClosedInHandshake, PeerError
from ldoms.peer.link import PeerLink, connect_peer
from ldoms.peer.listener import PeerListener
from tests.integration.conftest import wait_for
from tests.integration.test_peer_link import WAIT, make_hosts, pin


def handler(link: PeerLink) -> None:
    """Log the client in when it says so, then hold the link until the client goes."""
    try:
        if link.recv_frame() == b"login":
            link.logged_in()
            link.send_frame(b"in")
        link.recv_frame()
    except PeerError:
        pass


def test_logged_in_connections_give_their_slot_back(tmp_path: Path) -> None:
    hosts = make_hosts(tmp_path)
    with PeerListener(hosts.dst, "127.0.0.1:0", handler, handshake_timeout=WAIT, max_connections=1) as lst:
        pin(hosts, lst)
        links = []
        try:
            for _ in range(3):  # more at once than there are slots, each logged in
                link = connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
                links.append(link)
                link.send_frame(b"login")
                assert link.recv_frame() == b"in"
            assert lst.active_connections == 3
            links.append(connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT))
            # that one has not logged in: it holds the only slot, and the next connection is refused
            with pytest.raises(PeerClosed, match="closed the connection in the TLS handshake"):
                connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
        finally:
            for link in links:
                link.close()


def test_a_source_tries_again_while_the_target_is_at_its_limit(tmp_path: Path) -> None:
    """A connection closed in the TLS handshake (the target at its limit of connections not logged in) is
    tried again for `busy_retry_s`; without it, it fails at once (test_logged_in_connections_...)."""
    hosts = make_hosts(tmp_path)
    with PeerListener(hosts.dst, "127.0.0.1:0", handler, handshake_timeout=0.5, max_connections=1) as lst:
        pin(hosts, lst)
        with socket.create_connection(("127.0.0.1", lst.address[1]), timeout=WAIT):  # holds the slot 0.5 s
            wait_for("the silent client to hold the slot", lambda: lst.active_connections == 1, WAIT)
            with pytest.raises(PeerClosedInHandshake, match="closed the connection in the TLS handshake"):
                connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT)
            link = connect_peer(hosts.src, "hostb", certificate_mode=False, timeout=WAIT, busy_retry_s=WAIT)
        with link:
            link.send_frame(b"login")
            assert link.recv_frame() == b"in"
