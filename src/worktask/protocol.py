"""The HTTP protocol: uvicorn's httptools protocol, with a deadline for each request.

uvicorn closes idle keep-alive connections, but not one that never sends a request, nor
one that sends half of it: a few thousand of those would hold the server's connections
and file descriptors forever. Here every request must arrive whole within a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from worktask import api
from worktask.exceptions import EngineError
from worktask.gateway import INSTANCE_HEADER, Gateway, content_type


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


class FastPathProtocol(GuardedHttpToolsProtocol):
    """The protocol that answers `GET /tasks/{id}` itself, in one write, without ASGI.

    The status request is the one clients repeat most; through ASGI, half its time went to
    uvicorn's two writes (head, then body) and the request cycle around them. Everything else
    (and this path with a token, a body, a pipelined request before it, a slow reader or past
    the connection limit) goes through uvicorn and the gateway as before.
    """

    def __init__(self, *args: Any, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.fast_id: str | None = None

    def on_headers_complete(self) -> None:
        self.fast_id = None
        url = self.url
        if (
            self.gateway.token is None
            and url.startswith(b"/tasks/")
            and url.find(b"/", 7) < 0
            and url.find(b"?", 7) < 0
            and url.find(b"%", 7) < 0
            and self.parser.get_method() == b"GET"
            and (self.cycle is None or self.cycle.response_complete)
            and (self.connection_limit is None or len(self.connections) < self.connection_limit)
            and not self.flow.write_paused  # a reader that lags gets uvicorn's flow control
            and not any(name in _BODY_HEADERS for name, _ in self.headers)
        ):
            self.fast_id = url[7:].decode("latin-1")
            return
        # a fast answer earlier in the same read armed the keep-alive timer: not for this one
        self._unset_keepalive_if_required()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        text = self.fast_id
        if text is None:
            super().on_message_complete()
            return
        self._disarm()
        self.fast_id = None
        started = time.perf_counter()
        gateway = self.gateway
        try:
            reply = api.get_task(gateway.engine, api.parse_id(text))
        except EngineError as error:
            reply = api.engine_problem(gateway.engine, error)
        except api.BadRequest as error:
            reply = api.problem(error.status, error.title, error.detail)
        keep_alive = self.parser.should_keep_alive()
        head = [_STATUS_LINES.get(reply.status) or b"HTTP/1.1 %d \r\n" % reply.status]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: ",
            content_type(reply.content_type)[1],
            b"\r\ncontent-length: %d\r\n" % len(reply.body),
            INSTANCE_HEADER,
            b": ",
            gateway.instance,
            b"\r\n" if keep_alive else b"\r\nconnection: close\r\n",
            b"\r\n",
            reply.body,
        ]
        self.transport.write(b"".join(head))
        gateway.metrics.observe_request("/tasks/{id}", "GET", reply.status, started)
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()


_BODY_HEADERS = (b"content-length", b"transfer-encoding")
_STATUS_LINES = {
    200: b"HTTP/1.1 200 OK\r\n",
    404: b"HTTP/1.1 404 Not Found\r\n",
    410: b"HTTP/1.1 410 Gone\r\n",
}
