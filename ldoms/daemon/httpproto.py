"""uvicorn's HTTP/1.1 protocol with a deadline on the request head.

uvicorn times out idle keep-alive connections but not a client that connects and never finishes its request
headers (a slow-loris client).  With a concurrency cap, a few dozen of those would lock every `ldm` out.  This
protocol closes a connection that has not delivered a complete request head within `HEAD_TIMEOUT_S`; the cap
itself (in `main`) is set high enough that ordinary bursts of `ldm` commands never reach it.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0


class HeadTimeoutProtocol(H11Protocol):
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self._head_timer is not None:
            # A request head arrived: from here on uvicorn's own body and keep-alive handling applies.
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()
