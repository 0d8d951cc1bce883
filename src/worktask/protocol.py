"""The HTTP protocol: uvicorn's httptools protocol, with a deadline for each request.

uvicorn closes idle keep-alive connections, but not one that never sends a request, nor
one that sends half of it: a few thousand of those would hold the server's connections
and file descriptors forever. Here every request must arrive whole within a deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Closes a connection whose next request has not fully arrived within `request_timeout`."""

    def __init__(self, *args: Any, request_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = request_timeout
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection has its own deadline

    def _arm(self) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expired(self) -> None:
        self.deadline = None
        cycle = self.cycle
        # A request that arrived whole is being answered (a stream, say): leave it be.
        answering = cycle is not None and not cycle.response_complete and not cycle.more_body
        if not answering and not self.transport.is_closing():
            self.transport.close()
