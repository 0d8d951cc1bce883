"""The errors the engine raises when a client asks for something it cannot have.

    EngineError
    ├── InvalidTask            422: unknown type, data not a string, data or result too long
    ├── QueueFull              503: the queue is at --max-queue or its memory budget
    ├── TaskNotFound           404: an id that was never issued
    ├── TaskExpired            410: an id whose record was evicted after it finished
    ├── ResultNotReady         409: the result of a task that is not done
    └── TaskAlreadyFinished    409: cancelling a task that has already finished

The HTTP layer turns each into an RFC 9457 problem with the status shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worktask.engine import Task


class EngineError(Exception):
    """Base class of every error a client can cause."""

    status_code = 500
    title = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidTask(EngineError):
    """The submission cannot be accepted as it is."""

    status_code = 422
    title = "Invalid task"


class QueueFull(EngineError):
    """The queue is full; the client may retry after `retry_after` seconds."""

    status_code = 503
    title = "Queue full"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class TaskNotFound(EngineError):
    """No task with this id was ever issued by this server."""

    status_code = 404
    title = "Task not found"


class TaskExpired(EngineError):
    """The task finished and its record, with its result, was evicted."""

    status_code = 410
    title = "Task expired"


class TaskStateError(EngineError):
    """The task is in the wrong state for the request; carries the task."""

    status_code = 409

    def __init__(self, detail: str, task: Task) -> None:
        super().__init__(detail)
        self.task = task


class ResultNotReady(TaskStateError):
    """The task has no result: it is still queued or running, or it failed or was cancelled."""

    title = "Result not available"


class TaskAlreadyFinished(TaskStateError):
    """A finished task cannot be cancelled."""

    title = "Task already finished"
