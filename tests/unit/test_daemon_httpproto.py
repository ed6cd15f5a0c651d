"""The request-head deadline that keeps slow-loris clients from holding ldmd's connection slots."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from ldoms.daemon import httpproto


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(httpproto, "HEAD_TIMEOUT_S", 0.3)
    path = tmp_path / "s.sock"
    config = uvicorn.Config(
        app, uds=str(path), http=httpproto.HeadTimeoutProtocol, log_config=None, lifespan="off"
    )
    srv = uvicorn.Server(config)
    srv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started
    yield path
    srv.should_exit = True
    t.join(10)


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def test_a_client_that_never_finishes_its_head_is_closed(server: Path) -> None:
    with connect(server) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
        assert s.recv(100) == b""  # closed by the server, well before the 5 s socket timeout


def test_a_complete_request_is_served_after_the_deadline_would_have_passed(server: Path) -> None:
    with connect(server) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)  # past the head deadline: the request already arrived, so it does not apply
        assert s.recv(1000).startswith(b"HTTP/1.1 200")
