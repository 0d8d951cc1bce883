"""The HTTP protocol: uvicorn's httptools protocol, with a deadline for each request.

uvicorn closes idle keep-alive connections, but not one that never sends a request, nor
one that sends half of it: a few thousand of those would hold the server's connections
and file descriptors forever. Here every request must arrive whole within a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Closes a connection whose next request has not fully arrived within `request_timeout`.

    Beyond the connection limit, requests go to `busy_app`, which answers with a problem
    document rather than uvicorn's plain-text 503.
    """

    def __init__(
        self,
        *args: Any,
        request_timeout: float = 10.0,
        busy_app: Callable[..., Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = request_timeout
        self.deadline: asyncio.TimerHandle | None = None
        self.busy_app = busy_app
        self.connection_limit, self.limit_concurrency = self.limit_concurrency, None

    def on_headers_complete(self) -> None:
        limit = self.connection_limit
        if limit is None or (len(self.connections) < limit and len(self.tasks) < limit):
            super().on_headers_complete()
            return
        app, self.app = self.app, cast(ASGI3Application, self.busy_app)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_started:
            self.transport.close()  # half a request will not be finished: the reader is told
            return
        super().shutdown()

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
