"""The HTTP API: validate the request, call the engine, shape the answer.

Every error is an RFC 9457 problem (`application/problem+json`). The routes that clients
call most (`GET /tasks/{id}`, `POST /tasks`, `GET /tasks/{id}/events`) are plain functions
from the request to a `Reply` or a stream, so that the protocol (`worktask.protocol`) and the
gateway (`worktask.gateway`) can answer them before the framework; their FastAPI routes here
call the same functions, and describe them in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import pathlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from worktask import __version__, schemas, tasktypes
from worktask.engine import Engine, Task, TaskStatus, rfc3339
from worktask.exceptions import EngineError, QueueFull, TaskStateError

JSON = "application/json"
PROBLEM = "application/problem+json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_ID = 2**63 - 1
KEEPALIVE_SECONDS = 10.0  # a comment on idle streams, so that vanished clients are noticed
PREVIEW_CHARS = 80
_CHUNK = 64 * 1024  # large results are sent in pieces, so that slow readers hold little
_BACKLOG = 1_000  # changes held for a slow reader of /events before it gets a snapshot
_OVERVIEW_QUEUED = 200
_OVERVIEW_RECENT = 50


@dataclass(slots=True)
class Reply:
    """An answer as bytes, before any framework wraps it."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


class BadRequest(Exception):
    """The request itself is malformed (not an engine error): 400, 413 or 422."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


# -- shaping ------------------------------------------------------------------------------


# A task's timestamps never change once set, and the same tasks are asked about again and
# again: formatting each moment once saves a tenth of a status request.
_stamp = functools.lru_cache(maxsize=4096)(rfc3339)


def status_object(engine: Engine, task: Task) -> dict[str, Any]:
    """The status object of a task, as every endpoint shows it."""
    snap = engine.snapshot(task)
    return {
        "id": task.id,
        "type": task.type.name,
        "code": task.type.code,
        "status": task.status.value,
        "position": snap.position,
        "eta_seconds": snap.eta_seconds,
        "progress": snap.progress,
        "created_at": _stamp(task.created_at),
        "started_at": _stamp(task.started_at),
        "finished_at": _stamp(task.finished_at),
        "duration_seconds": task.duration,
        "error": task.error,
        "data_preview": task.data[:PREVIEW_CHARS],
    }


def problem(status: int, title: str, detail: str, **extra: Any) -> Reply:
    """An RFC 9457 problem document."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return Reply(status, orjson.dumps(body), PROBLEM)


def engine_problem(engine: Engine, error: EngineError) -> Reply:
    """The problem for an error the engine raised, with what the client needs to act on it."""
    if isinstance(error, TaskStateError):
        task = status_object(engine, error.task)
        return problem(error.status_code, error.title, error.detail, task=task)
    reply = problem(error.status_code, error.title, error.detail)
    if isinstance(error, QueueFull):
        reply = problem(error.status_code, error.title, error.detail, retry_after=error.retry_after)
        reply.headers = (("retry-after", str(error.retry_after)),)
    return reply


def error_reply(engine: Engine, error: EngineError | BadRequest) -> Reply:
    """The problem for an error a request caused, from the engine or from its own shape."""
    if isinstance(error, EngineError):
        return engine_problem(engine, error)
    return problem(error.status, error.title, error.detail)


def to_response(reply: Reply) -> Response:
    return Response(reply.body, reply.status, dict(reply.headers), reply.content_type)


# -- the hot routes, framework-free ------------------------------------------------------


def parse_id(text: str) -> int:
    """A task id from a path segment; anything but a positive 64-bit integer is 404."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_ID:
        raise BadRequest(
            404, "Task not found", f"no task with id {text!r}: ids are integers from 1"
        )
    value = int(text)
    if value < 1:
        raise BadRequest(404, "Task not found", f"no task with id {value}: ids start at 1")
    return value


def get_task(engine: Engine, task_id: int) -> Reply:
    return Reply(200, orjson.dumps(status_object(engine, engine.get(task_id))))


async def submit(engine: Engine, body: bytes) -> Reply:
    fields = _task_fields(body)
    return _created(engine, await engine.submit(fields.get("type"), fields.get("data")))


def submit_now(engine: Engine, body: bytes) -> Reply:
    """`submit` without awaiting, for a body of at most INLINE_CHARS bytes."""
    fields = _task_fields(body)
    return _created(engine, engine.submit_now(fields.get("type"), fields.get("data")))


def _created(engine: Engine, task: Task) -> Reply:
    location = f"/tasks/{task.id}"
    return Reply(201, orjson.dumps(status_object(engine, task)), JSON, (("location", location),))


def _task_fields(body: bytes) -> dict[str, Any]:
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(400, "Malformed JSON", f"the body is not valid JSON: {error}") from error
    if not isinstance(fields, dict):
        raise BadRequest(422, "Invalid task", 'the body must be a JSON object: {"type", "data"}')
    unknown = sorted(set(fields) - {"type", "data"})
    if unknown:
        raise BadRequest(422, "Invalid task", f"unknown fields: {', '.join(unknown)}")
    if "type" not in fields:
        valid = tasktypes.describe_types()
        raise BadRequest(422, "Invalid task", f"'type' is required; valid types: {valid}")
    if "data" not in fields:
        raise BadRequest(422, "Invalid task", "'data' is required: the string to transform")
    return fields


# -- event streams -------------------------------------------------------------------------


def sse(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


SHUTDOWN_EVENT = sse("shutdown", b'{"detail":"the server is shutting down"}')
KEEPALIVE = b": keep-alive\n\n"


async def task_events(engine: Engine, task: Task) -> AsyncIterator[bytes]:
    """The task's status now, then at each change, until it is final or the server stops."""
    while True:
        waiter = engine.changed(task)  # before yielding, so that no change is missed
        if engine.closing:
            yield SHUTDOWN_EVENT
            return
        yield sse("status", orjson.dumps(status_object(engine, task)))
        if task.status.final:
            return
        while not waiter.done():
            try:
                await asyncio.wait_for(asyncio.shield(waiter), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield KEEPALIVE


async def all_events(engine: Engine) -> AsyncIterator[bytes]:
    """A snapshot of the server, then an event per task change, until the server stops."""
    changes: asyncio.Queue[Task | None] = asyncio.Queue(_BACKLOG)

    def listener(task: Task | None) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a slow reader gets a fresh snapshot
            changes.put_nowait(task)

    stop = engine.listen(listener)
    try:
        yield sse("snapshot", orjson.dumps(overview(engine)))
        while not engine.closing:
            if changes.full():
                _drain(changes)
                yield sse("snapshot", orjson.dumps(overview(engine)))
            try:
                task = await asyncio.wait_for(changes.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if task is not None:
                body = {"task": status_object(engine, task), "counters": counters(engine)}
                yield sse("task", orjson.dumps(body))
        yield SHUTDOWN_EVENT
    finally:
        stop()


def _drain(changes: asyncio.Queue[Task | None]) -> None:
    while not changes.empty():
        changes.get_nowait()


def overview(engine: Engine) -> dict[str, Any]:
    """What a dashboard shows: the queue's head, the running task, the latest finished."""
    running = engine.running
    return {
        "now": rfc3339(engine.clock()),
        "types": list(type_objects(engine)),
        "counters": counters(engine),
        "queued": [status_object(engine, t) for t in engine.queued(_OVERVIEW_QUEUED)],
        "running": None if running is None else status_object(engine, running),
        "recent": [status_object(engine, t) for t in engine.recent(_OVERVIEW_RECENT)],
    }


def counters(engine: Engine) -> dict[str, int]:
    totals = engine.counters
    return {
        "queued": engine.queue_depth,
        "running": 0 if engine.running is None else 1,
        "submitted": totals.submitted,
        "done": totals.done,
        "failed": totals.failed,
        "cancelled": totals.cancelled,
    }


async def result_chunks(body: bytes) -> AsyncIterator[bytes]:
    view = memoryview(body)
    for start in range(0, len(view), _CHUNK):
        yield bytes(view[start : start + _CHUNK])


def event_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)


# -- the application -----------------------------------------------------------------------

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The id returned when submitted")]


def create_app(engine: Engine, render_metrics: Callable[[], bytes] | None = None) -> FastAPI:
    """The FastAPI application serving `engine`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        yield
        await engine.close()

    app = FastAPIOffline(  # the docs' scripts ship with it: /docs works with no internet
        title="worktask",
        version=__version__,
        summary="Tasks run one at a time, in order of arrival; clients ask for status and result.",
        lifespan=lifespan,
        default_response_class=Response,
    )
    _add_error_handlers(app, engine)
    _add_task_routes(app, engine)
    _add_info_routes(app, engine)
    if render_metrics is not None:
        _add_metrics(app, render_metrics)
    _add_dashboard(app)
    app.openapi = lambda: schemas.openapi(app)  # type: ignore[method-assign]
    return app


def _add_error_handlers(app: FastAPI, engine: Engine) -> None:
    @app.exception_handler(EngineError)
    async def engine_error(request: Request, error: EngineError) -> Response:
        return to_response(engine_problem(engine, error))

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, error: BadRequest) -> Response:
        return to_response(error_reply(engine, error))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        for problem_ in error.errors():
            if tuple(problem_.get("loc", ()))[:1] == ("path",):  # as the fast path answers
                detail = f"no task with id {problem_.get('input')!r}: ids are integers from 1"
                return to_response(problem(404, "Task not found", detail))
        detail = "; ".join(_describe(e) for e in error.errors())
        return to_response(problem(422, "Invalid request", detail))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        title = _TITLES.get(error.status_code, "Error")
        detail = str(error.detail) if error.detail else title
        reply = problem(error.status_code, title, detail)
        return Response(reply.body, reply.status, error.headers, PROBLEM)

    @app.exception_handler(Exception)
    async def crash(request: Request, error: Exception) -> Response:
        return to_response(problem(500, "Internal error", "the server failed; see its log"))


_TITLES = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized"}


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "path"))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg"))


def _add_task_routes(app: FastAPI, engine: Engine) -> None:
    @app.post("/tasks", status_code=201, tags=["tasks"], **schemas.SUBMIT)
    async def submit_task(request: Request) -> Response:
        """Queue a task; answers at once with its id and status."""
        return to_response(await submit(engine, await request.body()))

    @app.get("/tasks/{task_id}", tags=["tasks"], **schemas.STATUS)
    async def task_status(task_id: TaskId) -> Response:
        """The task's status, position, ETA and progress."""
        return to_response(get_task(engine, task_id))

    @app.get("/tasks/{task_id}/result", tags=["tasks"], **schemas.RESULT)
    async def task_result(task_id: TaskId) -> Response:
        """The task's result, as often as asked, once it is done."""
        task = engine.result(task_id)
        body = orjson.dumps({"id": task.id, "result": task.result})
        if len(body) <= _CHUNK:
            return Response(body, 200, media_type=JSON)
        headers = {"content-length": str(len(body))}
        return StreamingResponse(result_chunks(body), 200, headers, media_type=JSON)

    @app.get("/tasks/{task_id}/events", tags=["tasks"], **schemas.EVENTS)
    async def task_events_stream(task_id: TaskId) -> StreamingResponse:
        """Server-sent events: the status now, one per change, ending after the final state."""
        return event_stream(task_events(engine, engine.get(task_id)))

    @app.delete("/tasks/{task_id}", tags=["tasks"], **schemas.CANCEL)
    async def cancel_task(task_id: TaskId) -> Response:
        """Cancel a queued or running task."""
        return to_response(Reply(200, orjson.dumps(status_object(engine, engine.cancel(task_id)))))

    @app.get("/tasks", tags=["tasks"], **schemas.LIST)
    async def list_tasks(
        status: Annotated[TaskStatus | None, Query(description="only tasks in this state")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 100,
    ) -> Response:
        """Tasks, newest first."""
        found = engine.tasks(status, limit)
        return to_response(Reply(200, orjson.dumps([status_object(engine, t) for t in found])))


def _add_info_routes(app: FastAPI, engine: Engine) -> None:
    @app.get("/task-types", tags=["info"], **schemas.TYPES)
    async def task_types() -> Response:
        """The task types this server runs."""
        return to_response(Reply(200, orjson.dumps(list(type_objects(engine)))))

    @app.get("/events", tags=["info"], **schemas.ALL_EVENTS)
    async def events() -> StreamingResponse:
        """Server-sent events of every task change, after a snapshot; for dashboards."""
        return event_stream(all_events(engine))

    @app.get("/healthz", tags=["info"], **schemas.HEALTH)
    async def health(request: Request) -> Response:
        """Liveness, the instance id, queue depth and the running task; needs no token."""
        running = engine.running
        body = {
            "status": "ok",
            "version": __version__,
            "instance": request.app.state.instance,
            "queued": engine.queue_depth,
            "running": None if running is None else status_object(engine, running),
        }
        return to_response(Reply(200, orjson.dumps(body)))


def _add_metrics(app: FastAPI, render: Callable[[], bytes]) -> None:
    @app.get("/metrics", tags=["info"], **schemas.METRICS)
    async def metrics() -> Response:
        """Prometheus metrics: tasks by type and status, queue depth, HTTP requests."""
        return Response(render(), 200, media_type=METRICS_TYPE)


STATIC = pathlib.Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class DashboardFiles(StaticFiles):
    """The dashboard's files, with a strict Content-Security-Policy."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(SECURITY_HEADERS)
        return response


def _add_dashboard(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def dashboard() -> Response:
        return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)

    app.mount("/ui", DashboardFiles(directory=STATIC, check_dir=False), name="ui")


def type_objects(engine: Engine) -> Iterable[dict[str, Any]]:
    """The task types, with their durations under this server's --delay-scale."""
    for kind in tasktypes.TASK_TYPES:
        yield {
            "code": kind.code,
            "name": kind.name,
            "description": kind.description,
            "duration_seconds": engine.settings.scaled(kind.duration),
        }
