"""The gateway: the ASGI layer in front of the application.

It does, for every request, what no route should repeat: the instance header, the bearer
token, the body size limit. It also serves the hottest routes, `GET /tasks/{id}` and
`POST /tasks`, straight from `worktask.api`'s framework-free functions, since routing and
response objects cost more than the work itself there.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any, cast

from worktask import api
from worktask.engine import Engine
from worktask.exceptions import EngineError
from worktask.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


INSTANCE_HEADER = b"x-worktask-instance"
_OPEN_PATHS = ("/healthz",)  # answered without a token
_OPEN_PREFIXES = ("/ui/", "/static-offline-docs/")  # the pages' static files carry no data


class BodyTooLarge(Exception):
    """The request body exceeds the limit."""


class Gateway:
    """Wraps the application with the checks and fast paths every request goes through."""

    def __init__(
        self,
        app: ASGIApp,
        engine: Engine,
        metrics: Metrics,
        *,
        instance: str,
        token: str | None,
        max_body: int,
    ) -> None:
        self.app = app
        self.engine = engine
        self.metrics = metrics
        self.instance = instance.encode()
        self.token = None if token is None else ("Bearer " + token).encode()
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        if self.token is None or self._authorized(scope, path):
            # the fast paths answer with headers that already carry the instance
            if method == "GET" and path.startswith("/tasks/"):
                slash = path.find("/", 7)
                if slash < 0:
                    status = await self._status(path[7:], send)
                    self.metrics.observe_request(path, method, status, started)
                    return
                if path.endswith("/events") and slash == len(path) - 7:
                    status = await self._events(path[7:slash], receive, send)
                    self.metrics.observe_request(path, method, status, started)
                    return
            if method == "POST" and path == "/tasks":
                status = await self._submit(scope, receive, send)
                self.metrics.observe_request(path, method, status, started)
                return
        status = 500  # unless a response starts

        async def stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (INSTANCE_HEADER, self.instance)]
            await send(message)

        try:
            await self._dispatch(scope, receive, stamped)
        finally:
            self.metrics.observe_request(path, method, status, started)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if self.token is not None and not self._authorized(scope, path):
            await _reply(send, _unauthorized())
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                await _reply(send, _too_large(self.max_body))
                return
        await self.app(scope, receive, send)

    async def busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The answer to a request beyond the connection limit."""
        reply = api.problem(503, "Server busy", "too many connections; retry in a second")
        reply.headers = (("retry-after", "1"), ("connection", "close"))
        await self._answer(send, reply)

    # -- fast paths ------------------------------------------------------------------------

    async def _status(self, text: str, send: Send) -> int:
        try:
            reply = api.get_task(self.engine, api.parse_id(text))
        except (EngineError, api.BadRequest) as error:
            reply = api.error_reply(self.engine, error)
        return await self._answer(send, reply)

    async def _events(self, text: str, receive: Receive, send: Send) -> int:
        """`api.task_events` as a stream, without a framework response around it: a waiter
        then costs a coroutine and a task watching for the client leaving, no more."""
        try:
            task = self.engine.get(api.parse_id(text))
        except (EngineError, api.BadRequest) as error:
            return await self._answer(send, api.error_reply(self.engine, error))
        headers = [*_EVENT_HEADERS, (INSTANCE_HEADER, self.instance)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        streaming = asyncio.current_task()
        assert streaming is not None
        gone = asyncio.get_running_loop().create_task(_until_disconnect(receive))
        gone.add_done_callback(lambda _: finished or streaming.cancel())
        finished = False
        chunks = cast(AsyncGenerator[bytes, None], api.task_events(self.engine, task))
        try:
            async for chunk in chunks:
                # the stream's last event and its end go out in one write: nothing can change
                # between the generator's yield and this check
                more = chunk is api.KEEPALIVE or not (task.status.final or self.engine.closing)
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    break
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finished = True
        except asyncio.CancelledError:
            if not gone.done() or gone.cancelled():
                raise  # the server is stopping, not the client leaving
            streaming.uncancel()
        finally:
            finished = True
            gone.cancel()
            await chunks.aclose()
        return 200

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> int:
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                raise BodyTooLarge
            body = await self._read_body(receive)
            reply = await api.submit(self.engine, body)
        except (EngineError, api.BadRequest) as error:
            reply = api.error_reply(self.engine, error)
        except BodyTooLarge:
            reply = _too_large(self.max_body)
        return await self._answer(send, reply)

    async def _answer(self, send: Send, reply: api.Reply) -> int:
        """Send `reply` with the instance header (no wrapper adds it here); its status."""
        await _reply(send, reply, (INSTANCE_HEADER, self.instance))
        return reply.status

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise api.BadRequest(400, "Incomplete request", "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # -- plumbing --------------------------------------------------------------------------

    def _authorized(self, scope: Scope, path: str) -> bool:
        if path in _OPEN_PATHS or path == "/" or path.startswith(_OPEN_PREFIXES):
            return True
        assert self.token is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self.token)
        return False


async def _reply(send: Send, reply: api.Reply, *extra: tuple[bytes, bytes]) -> None:
    headers = [content_type(reply.content_type), (b"content-length", b"%d" % len(reply.body))]
    headers += extra
    headers += [(name.encode(), value.encode()) for name, value in reply.headers]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


_EVENT_HEADERS = (
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
)


def _content_type(media_type: str) -> tuple[bytes, bytes]:
    return (b"content-type", media_type.encode())


def content_type(media_type: str) -> tuple[bytes, bytes]:
    """The content-type header, made once for the usual types."""
    return CONTENT_TYPES.get(media_type) or _content_type(media_type)


CONTENT_TYPES = {kind: _content_type(kind) for kind in (api.JSON, api.PROBLEM)}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _unauthorized() -> api.Reply:
    reply = api.problem(
        401, "Unauthorized", "this server needs 'Authorization: Bearer <token>' (--token)"
    )
    reply.headers = (("www-authenticate", 'Bearer realm="worktask"'),)
    return reply


def _too_large(limit: int) -> api.Reply:
    return api.problem(413, "Request too large", f"the body exceeds the limit of {limit} bytes")
