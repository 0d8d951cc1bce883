"""A client for the worktask server, for programs; only the standard library is used.

    from worktask.client import Client

    with Client("http://127.0.0.1:5555") as client:
        task = client.submit("reverse", "пример")
        final = client.wait(task.id, timeout=30)
        print(client.result(task.id))  # ремирп

Every failure is a `WorktaskError`; the tree below is the whole hierarchy:

    WorktaskError
    ├── ConnectError            the server cannot be reached
    ├── ServerError             5xx, or an answer the client does not understand
    │   └── ServerShutdown      the server shut down while the client waited
    ├── Unauthorized            401: the token is missing or refused
    ├── Rejected                400, 413, 422: the server refused the input; see `detail`
    ├── ServerBusy              503: the queue is full; see `retry_after`
    ├── TaskNotFound            404: no task with this id
    │   ├── TaskExpired         410: the task finished and its record expired
    │   └── TaskLost            the server restarted since it accepted the task
    ├── ResultNotReady          409: the task is still queued or running
    ├── TaskFailed              409: the task failed, so it has no result
    ├── TaskCancelled           409: the task was cancelled, so it has no result
    ├── AlreadyFinished         409: cancelling a task that already finished
    └── WaitTimeout             `wait` gave up before the task finished

Errors that concern one task carry its last known state as `task` when the server sent it.
"""

from __future__ import annotations

import builtins
import http.client
import json
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from urllib.parse import urlencode, urlsplit

from worktask import __version__

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing

if TYPE_CHECKING:  # typing costs milliseconds at every start of the command
    from typing import Any

__all__ = [
    "DEFAULT_URL",
    "AlreadyFinished",
    "Client",
    "ConnectError",
    "Rejected",
    "ResultNotReady",
    "ServerBusy",
    "ServerError",
    "ServerShutdown",
    "TaskCancelled",
    "TaskExpired",
    "TaskFailed",
    "TaskInfo",
    "TaskLost",
    "TaskNotFound",
    "TaskStatus",
    "TaskType",
    "Unauthorized",
    "WaitTimeout",
    "WorktaskError",
]

DEFAULT_URL = "http://127.0.0.1:5555"
INSTANCE_HEADER = "X-Worktask-Instance"


class TaskStatus(StrEnum):
    """Where a task is in its life; the last three are final."""

    QUEUED = "queued"  # accepted, waiting for the tasks before it
    RUNNING = "running"  # executing now; the server runs one task at a time
    DONE = "done"  # finished; the result can be fetched as often as asked
    FAILED = "failed"  # the task raised; `error` says why
    CANCELLED = "cancelled"  # a client cancelled it before it finished

    @property
    def final(self) -> bool:
        """Whether the task can no longer change."""
        return self in (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED)


class _Record:
    """A record with equality, a repr and `as_dict` over its `__slots__`.

    Not a dataclass: `dataclasses` imports `inspect`, which costs the command milliseconds
    at every start.
    """

    __slots__: tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]  # records compare by value

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def as_dict(self) -> dict[str, Any]:
        """The fields by name."""
        return {name: getattr(self, name) for name in self.__slots__}


class TaskInfo(_Record):
    """A task's state as the server reported it."""

    __slots__ = (  # noqa: RUF023 - the status object's order, kept by as_dict and repr
        "id",
        "type",
        "code",
        "status",
        "position",
        "eta_seconds",
        "progress",
        "created_at",
        "started_at",
        "finished_at",
        "duration_seconds",
        "error",
        "data_preview",
    )

    def __init__(
        self,
        *,
        id: int,
        type: str,
        code: int,
        status: TaskStatus,
        position: int | None = None,  # only while queued; 1 runs next
        eta_seconds: float | None = None,  # seconds until it finishes, while queued or running
        progress: float | None = None,  # 0..1, while running
        created_at: datetime | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        duration_seconds: float | None = None,  # the simulated duration of this task
        error: str | None = None,
        data_preview: str = "",
    ) -> None:
        self.id = id
        self.type = type
        self.code = code
        self.status = status
        self.position = position
        self.eta_seconds = eta_seconds
        self.progress = progress
        self.created_at = created_at
        self.started_at = started_at
        self.finished_at = finished_at
        self.duration_seconds = duration_seconds
        self.error = error
        self.data_preview = data_preview

    @classmethod
    def from_json(cls, data: Any) -> TaskInfo:
        """Build from a status object; unknown fields are ignored for forward compatibility."""
        return cls(
            id=int(data["id"]),
            type=str(data["type"]),
            code=int(data["code"]),
            status=TaskStatus(data["status"]),
            position=data.get("position"),
            eta_seconds=data.get("eta_seconds"),
            progress=data.get("progress"),
            created_at=_timestamp(data.get("created_at")),
            started_at=_timestamp(data.get("started_at")),
            finished_at=_timestamp(data.get("finished_at")),
            duration_seconds=data.get("duration_seconds"),
            error=data.get("error"),
            data_preview=str(data.get("data_preview", "")),
        )

    def to_json(self) -> dict[str, Any]:
        """The status object, as the server sends it."""
        data = self.as_dict()
        data["status"] = self.status.value
        for name in ("created_at", "started_at", "finished_at"):
            data[name] = _rfc3339(data[name])
        return data

    @property
    def finished(self) -> bool:
        """Whether the task reached a final state."""
        return self.status.final

    @property
    def elapsed_seconds(self) -> float | None:
        """How long it ran, from the server's timestamps, once it finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class TaskType(_Record):
    """A kind of task the server can run."""

    __slots__ = ("code", "name", "description", "duration_seconds")  # noqa: RUF023 - as served

    def __init__(
        self, *, code: int, name: str, description: str = "", duration_seconds: float = 0.0
    ) -> None:
        self.code = code
        self.name = name
        self.description = description
        self.duration_seconds = duration_seconds  # as this server runs it, after --delay-scale

    @classmethod
    def from_json(cls, data: Any) -> TaskType:
        """Build from an entry of `GET /task-types`."""
        return cls(
            code=int(data["code"]),
            name=str(data["name"]),
            description=str(data.get("description", "")),
            duration_seconds=float(data.get("duration_seconds", 0.0)),
        )


class WorktaskError(Exception):
    """Base class of every error the client raises."""

    def __init__(
        self, message: str, *, status_code: int | None = None, task: TaskInfo | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code  # the HTTP status, when the server answered
        self.task = task  # the task's last known state, when known


class ConnectError(WorktaskError):
    """The server cannot be reached."""


class ServerError(WorktaskError):
    """The server failed, or sent an answer the client does not understand."""


class ServerShutdown(ServerError):
    """The server shut down while the client was waiting on a task."""


class Unauthorized(WorktaskError):
    """The server wants a token, and none was sent or it was refused."""


class Rejected(WorktaskError):
    """The server refused the input as malformed, too large or invalid."""


class ServerBusy(WorktaskError):
    """The server's queue is full; retry after `retry_after` seconds."""

    def __init__(self, message: str, *, status_code: int, retry_after: int | None) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class TaskNotFound(WorktaskError):
    """The server has no task with this id."""


class TaskExpired(TaskNotFound):
    """The task finished long enough ago that the server evicted it and its result."""


class TaskLost(TaskNotFound):
    """The server restarted since it accepted the task, so the id now means another task."""


class ResultNotReady(WorktaskError):
    """The task is still queued or running."""


class TaskFailed(WorktaskError):
    """The task failed, so it has no result."""


class TaskCancelled(WorktaskError):
    """The task was cancelled, so it has no result."""


class AlreadyFinished(WorktaskError):
    """The task cannot be cancelled: it already finished."""


class WaitTimeout(WorktaskError):
    """The task did not finish within the time `wait` was given."""


class _StreamDropped(Exception):
    """The events stream ended before the task did; `wait` reconnects once."""


class Client:
    """A connection to one worktask server, kept alive between requests."""

    def __init__(
        self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 10.0
    ) -> None:
        parts = urlsplit(base_url if "://" in base_url else "http://" + base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.instance: str | None = None  # the server instance id last seen
        self._parts = parts
        self._prefix = parts.path.rstrip("/")
        self._instances: dict[int, str] = {}  # task id -> instance that first reported it
        self._conn = self._connection(timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        self._conn.close()

    def submit(self, type: int | str, data: str) -> TaskInfo:
        """Queue a task of `type` (code or name) on `data`."""
        body = json.dumps({"type": type, "data": data}, ensure_ascii=False).encode()
        info = TaskInfo.from_json(self._request("POST", "/tasks", body=body))
        if self.instance is not None:
            self._instances[info.id] = self.instance
        return info

    def status(self, task_id: int) -> TaskInfo:
        """The task's current state."""
        return TaskInfo.from_json(self._request("GET", f"/tasks/{task_id}", task_id=task_id))

    def result(self, task_id: int) -> str:
        """The result of a done task, as often as asked."""
        answer = self._request("GET", f"/tasks/{task_id}/result", task_id=task_id)
        return str(answer["result"])

    def cancel(self, task_id: int) -> TaskInfo:
        """Cancel a queued or running task."""
        return TaskInfo.from_json(self._request("DELETE", f"/tasks/{task_id}", task_id=task_id))

    def types(self) -> builtins.list[TaskType]:
        """The task types the server runs."""
        return [TaskType.from_json(item) for item in self._request("GET", "/task-types")]

    def health(self) -> dict[str, Any]:
        """The server's health: instance id, version, queue depth and the running task."""
        return dict(self._request("GET", "/healthz"))

    def wait(
        self,
        task_id: int,
        *,
        timeout: float | None = None,
        on_update: Callable[[TaskInfo], None] | None = None,
    ) -> TaskInfo:
        """Follow the task's events until it finishes and return its final state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: TaskInfo | None = None
        for attempt in range(2):
            try:
                for info in self._follow(task_id, deadline, timeout):
                    last = info
                    if on_update is not None:
                        on_update(info)
                    if info.finished:
                        return info
            except _StreamDropped:
                if attempt:
                    break
            except WorktaskError as exc:
                exc.task = exc.task or last
                raise
        raise ServerError(
            f"the events stream of task {task_id} ended twice before the task finished", task=last
        )

    def list(
        self, status: TaskStatus | str | None = None, limit: int = 100
    ) -> builtins.list[TaskInfo]:
        """Tasks the server still keeps, newest first, optionally of one status."""
        query: dict[str, str | int] = {"limit": limit}
        if status is not None:
            query["status"] = TaskStatus(status).value
        items = self._request("GET", "/tasks?" + urlencode(query))
        return [TaskInfo.from_json(item) for item in items]

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        kind = (
            http.client.HTTPSConnection
            if self._parts.scheme == "https"
            else http.client.HTTPConnection
        )
        return kind(self._parts.hostname or "", self._parts.port, timeout=timeout)

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": f"worktask/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _request(
        self, method: str, path: str, *, body: bytes | None = None, task_id: int | None = None
    ) -> Any:
        """Send one request on the kept-alive connection and return the decoded JSON answer."""
        headers = self._headers()
        if body is not None:
            headers["Content-Type"] = "application/json"
        response, answer = self._exchange(method, self._prefix + path, body, headers, task_id)
        if response.status >= 300:
            raise _http_error(response, answer, method)
        return answer

    def _exchange(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        task_id: int | None,
    ) -> tuple[http.client.HTTPResponse, Any]:
        for attempt in range(2):
            reused = self._conn.sock is not None
            try:
                self._open(self._conn, reused)
                self._conn.request(method, path, body, headers)
                response = self._conn.getresponse()
                content = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._conn.close()
                # The server may close an idle kept-alive connection just as we reuse it.
                if reused and not attempt:
                    continue
                raise _transport_error(exc, self.base_url, self.timeout) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._conn.close()
                raise _transport_error(exc, self.base_url, self.timeout) from exc
            except BaseException:
                self._conn.close()  # a half-read answer would poison the next request
                raise
            self._check_instance(response, task_id)
            return response, _decode(response, content)
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(self, conn: http.client.HTTPConnection, reused: bool) -> None:
        """Connect unless already connected; a failure here means the server is unreachable."""
        if reused:
            return
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise _transport_error(exc, self.base_url, conn.timeout, connecting=True) from exc

    def _check_instance(self, response: http.client.HTTPResponse, task_id: int | None) -> None:
        instance = response.getheader(INSTANCE_HEADER)
        if instance is None:
            return
        self.instance = instance
        if task_id is None:
            return
        known = self._instances.get(task_id)
        if known is None:
            if response.status < 300 or response.status == 409:
                self._instances[task_id] = instance
        elif known != instance:
            raise TaskLost(f"task {task_id} was lost: the server restarted")

    def _follow(
        self, task_id: int, deadline: float | None, timeout: float | None
    ) -> Iterator[TaskInfo]:
        """Yield the task's states from one events stream; raise `_StreamDropped` if it breaks."""
        conn = self._connection(_remaining(deadline, self.timeout))
        try:
            response = self._open_stream(conn, task_id, deadline, timeout)
            lines = _lines(response, conn, deadline)
            for event, data in _events(lines):
                if event == "shutdown":
                    raise ServerShutdown(_shutdown_message(data, self.base_url))
                if event == "status":
                    yield TaskInfo.from_json(json.loads(data))
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            if _expired(deadline):
                raise _wait_timeout(task_id, timeout) from exc
            if isinstance(exc, ValueError | KeyError):
                raise ServerError(f"unexpected event from the server: {exc}") from exc
            raise _StreamDropped from exc
        finally:
            conn.close()
        raise _StreamDropped

    def _open_stream(
        self,
        conn: http.client.HTTPConnection,
        task_id: int,
        deadline: float | None,
        timeout: float | None,
    ) -> http.client.HTTPResponse:
        try:
            self._open(conn, reused=False)
        except ConnectError as exc:
            if _expired(deadline):
                raise _wait_timeout(task_id, timeout) from exc
            raise
        path = f"{self._prefix}/tasks/{task_id}/events"
        conn.request("GET", path, headers=self._headers("text/event-stream"))
        response = conn.getresponse()
        self._check_instance(response, task_id)
        if response.status >= 300:
            raise _http_error(response, _decode(response, response.read()), "GET")
        return response


def _lines(
    response: http.client.HTTPResponse, conn: http.client.HTTPConnection, deadline: float | None
) -> Iterator[bytes]:
    """The stream's lines, each read within what is left of the deadline."""
    while True:
        if conn.sock is not None:
            conn.sock.settimeout(_remaining(deadline, None))
        line = response.readline()
        if not line:
            return
        yield line


def _events(lines: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """Parse Server-Sent Events into (event, data) pairs; comments are keep-alives."""
    event, data = "message", builtins.list[str]()
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)


def _transport_error(
    exc: BaseException, url: str, timeout: float | None, *, connecting: bool = False
) -> WorktaskError:
    """Map a low-level error talking to the server to the public error that explains it."""
    if connecting:
        if isinstance(exc, socket.gaierror):
            reason = f"unknown host: {exc.strerror}"
        elif isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:g} s" if timeout else "timed out"
        else:
            reason = (exc.strerror or str(exc)).lower() if isinstance(exc, OSError) else str(exc)
        return ConnectError(
            f"cannot reach the server at {url} ({reason}); "
            "start it with 'worktask-server' or 'make serve'"
        )
    if isinstance(exc, TimeoutError):
        return ServerError(f"the server at {url} did not answer within {timeout:g} s")
    if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError):
        return ServerError(f"the server at {url} closed the connection without answering")
    return ServerError(f"talking to the server at {url} failed: {exc}")


def _http_error(response: http.client.HTTPResponse, answer: Any, method: str) -> WorktaskError:
    """Map an HTTP error answer, an RFC 9457 problem, to the public error that explains it."""
    status = response.status
    problem = answer if isinstance(answer, dict) else {}
    message = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
    simple: dict[int, type[WorktaskError]] = {
        400: Rejected,
        413: Rejected,
        422: Rejected,
        401: Unauthorized,
        404: TaskNotFound,
    }
    if status in simple:
        return simple[status](message, status_code=status)
    if status == 410:
        if "expired" not in message.lower():
            message += " (expired)"
        return TaskExpired(message, status_code=status)
    if status == 409:
        return _conflict(problem, message, method)
    if status == 503:
        retry_after = _retry_after(problem.get("retry_after"), response.getheader("Retry-After"))
        return ServerBusy(message, status_code=status, retry_after=retry_after)
    return ServerError(f"the server answered {status}: {message}", status_code=status)


def _conflict(problem: dict[str, Any], message: str, method: str) -> WorktaskError:
    """A 409 names the task's state, which decides what went wrong."""
    try:
        task = TaskInfo.from_json(problem["task"])
    except (KeyError, TypeError, ValueError):
        return ServerError(f"the server answered 409 without the task: {message}", status_code=409)
    kind: type[WorktaskError] = {
        TaskStatus.QUEUED: ResultNotReady,
        TaskStatus.RUNNING: ResultNotReady,
        TaskStatus.FAILED: TaskFailed,
        TaskStatus.CANCELLED: TaskCancelled,
    }.get(task.status, ServerError)
    if method == "DELETE":
        kind = AlreadyFinished
    return kind(message, status_code=409, task=task)


def _retry_after(field: object, header: str | None) -> int | None:
    """Seconds to wait, from the problem's field or else the header (seconds form only)."""
    if isinstance(field, int | float):
        return int(field)
    return int(header) if header and header.strip().isdigit() else None


def _decode(response: http.client.HTTPResponse, content: bytes) -> Any:
    """The JSON body of an answer; anything else means we are not talking to a worktask server."""
    kind = response.getheader("Content-Type", "")
    if "json" in kind:
        try:
            return json.loads(content)
        except ValueError as exc:
            if response.status < 300:
                raise ServerError(f"the server sent invalid JSON: {exc}") from exc
    if response.status >= 300:  # a proxy's or a plain-text error: its status still says what
        return {"detail": content.decode(errors="replace").strip()[:200] or None}
    raise ServerError(
        f"unexpected answer from the server ({response.status}, {kind or 'no content type'})",
        status_code=response.status,
    )


def _shutdown_message(data: str, url: str) -> str:
    try:
        detail = json.loads(data).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return f"the server at {url} shut down" + (f": {detail}" if detail else "")


def _wait_timeout(task_id: int, timeout: float | None) -> WaitTimeout:
    return WaitTimeout(f"task {task_id} did not finish within {timeout or 0:g} s")


def _remaining(deadline: float | None, cap: float | None) -> float | None:
    """Seconds left before `deadline`, at most `cap`; None means wait forever."""
    if deadline is None:
        return cap
    left = max(deadline - time.monotonic(), 0.001)
    return left if cap is None else min(left, cap)


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline - 0.01


def _timestamp(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")
