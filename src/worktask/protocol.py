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
from worktask.engine import INLINE_CHARS
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
    """The protocol that answers `GET /tasks/{id}` and `POST /tasks` itself, in one write.

    These are the requests clients repeat most; through ASGI, half their time went to
    uvicorn's two writes (head, then body) and the request cycle around them. Everything else
    goes through uvicorn and the gateway as before, and so do these with a token, a pipelined
    request before them, a slow reader, past the connection limit, or (for a submission) a
    body that is long, chunked or waits for 100-continue.
    """

    def __init__(self, *args: Any, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.fast: Callable[[], api.Reply] | None = None  # answers the request being read
        self.fast_route = ""  # its route and method, for the metrics
        self.method = "GET"
        self.fast_body = bytearray()

    def on_headers_complete(self) -> None:
        self.fast = self._fast_answer() if self._may_answer() else None
        if self.fast is None:
            # a fast answer earlier in the same read armed the keep-alive timer: not for this one
            self._unset_keepalive_if_required()
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.fast is None:
            super().on_body(body)
        else:
            self.fast_body += body

    def on_message_complete(self) -> None:
        answer = self.fast
        if answer is None:
            super().on_message_complete()
            return
        self._disarm()
        self.fast = None
        started = time.perf_counter()
        try:
            reply = answer()
        except (EngineError, api.BadRequest) as error:
            reply = api.error_reply(self.gateway.engine, error)
        self._write(reply)
        self.gateway.metrics.observe_request(self.fast_route, self.method, reply.status, started)
        self.on_response_complete()

    def _may_answer(self) -> bool:
        return (
            self.gateway.token is None
            and (self.cycle is None or self.cycle.response_complete)
            and (self.connection_limit is None or len(self.connections) < self.connection_limit)
            and not self.flow.write_paused  # a reader that lags gets uvicorn's flow control
        )

    def _fast_answer(self) -> Callable[[], api.Reply] | None:
        """The function that will answer this request, if it is one answered here."""
        url, engine = self.url, self.gateway.engine
        self.method = self.parser.get_method().decode("ascii")
        if self.method == "GET" and url.startswith(b"/tasks/") and _plain(url, 7):
            if any(name in _BODY_HEADERS for name, _ in self.headers):
                return None
            task_id = url[7:].decode("ascii")
            self.fast_route = "/tasks/{id}"
            return lambda: api.get_task(engine, api.parse_id(task_id))
        if self.method == "POST" and url == b"/tasks" and self._short_body():
            self.fast_route = "/tasks"
            self.fast_body = bytearray()
            return lambda: api.submit_now(engine, bytes(self.fast_body))
        return None

    def _short_body(self) -> bool:
        """A body of known length short enough to be submitted without awaiting."""
        length = None
        for name, value in self.headers:
            if name in (b"transfer-encoding", b"expect"):
                return False
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
        return length is not None and length <= INLINE_CHARS  # characters <= UTF-8 bytes

    def _write(self, reply: api.Reply) -> None:
        keep_alive = self.parser.should_keep_alive()
        head = [_STATUS_LINES.get(reply.status) or b"HTTP/1.1 %d \r\n" % reply.status]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        for header, text in reply.headers:
            head += [header.encode(), b": ", text.encode(), b"\r\n"]
        head += [
            b"content-type: ",
            content_type(reply.content_type)[1],
            b"\r\ncontent-length: %d\r\n" % len(reply.body),
            INSTANCE_HEADER,
            b": ",
            self.gateway.instance,
            b"\r\n" if keep_alive else b"\r\nconnection: close\r\n",
            b"\r\n",
            reply.body,
        ]
        self.transport.write(b"".join(head))
        if not keep_alive:
            self.transport.close()


def _plain(url: bytes, start: int) -> bool:
    """No further path segment, query or escape after `start`."""
    return all(url.find(mark, start) < 0 for mark in (b"/", b"?", b"%"))


_BODY_HEADERS = (b"content-length", b"transfer-encoding")
_STATUS_LINES = {
    200: b"HTTP/1.1 200 OK\r\n",
    201: b"HTTP/1.1 201 Created\r\n",
    400: b"HTTP/1.1 400 Bad Request\r\n",
    404: b"HTTP/1.1 404 Not Found\r\n",
    410: b"HTTP/1.1 410 Gone\r\n",
    422: b"HTTP/1.1 422 Unprocessable Content\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
}
