"""The OpenAPI description of what the routes really answer: shapes, problems, streams."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_STATUSES = ["queued", "running", "done", "failed", "cancelled"]
_TIME = {"type": ["string", "null"], "format": "date-time"}
_NUMBER_OR_NULL = {"type": ["number", "null"]}

COMPONENTS: dict[str, Any] = {
    "Task": {
        "type": "object",
        "required": ["id", "type", "code", "status", "created_at"],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "type": {"type": "string", "enum": ["reverse", "swap", "repeat"]},
            "code": {"type": "integer", "enum": [1, 2, 3]},
            "status": {
                "type": "string",
                "enum": ["queued", "running", "done", "failed", "cancelled"],
            },
            "position": {"type": ["integer", "null"], "description": "1 = runs next; queued only"},
            "eta_seconds": {**_NUMBER_OR_NULL, "description": "seconds until it finishes"},
            "progress": {**_NUMBER_OR_NULL, "minimum": 0, "maximum": 1},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": _TIME,
            "finished_at": _TIME,
            "duration_seconds": {"type": "number", "description": "simulated duration"},
            "error": {"type": ["string", "null"]},
            "data_preview": {"type": "string", "description": "the first 80 characters of data"},
        },
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "task": {"$ref": "#/components/schemas/Task"},
            "retry_after": {"type": "integer"},
        },
    },
    "NewTask": {
        "type": "object",
        "required": ["type", "data"],
        "additionalProperties": False,
        "properties": {
            "type": {
                "description": "a task type's code or name",
                "oneOf": [
                    {"type": "integer", "enum": [1, 2, 3]},
                    {"type": "string", "enum": ["reverse", "swap", "repeat"]},
                ],
            },
            "data": {"type": "string", "description": "the string to transform"},
        },
        "example": {"type": "reverse", "data": "пример"},
    },
    "Result": {
        "type": "object",
        "required": ["id", "result"],
        "properties": {"id": {"type": "integer"}, "result": {"type": "string"}},
    },
    "TaskType": {
        "type": "object",
        "required": ["code", "name", "description", "duration_seconds"],
        "properties": {
            "code": {"type": "integer"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "duration_seconds": {"type": "number"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "instance", "queued", "running"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "version": {"type": "string"},
            "instance": {"type": "string", "description": "changes at every server start"},
            "queued": {"type": "integer"},
            "running": {"oneOf": [{"$ref": "#/components/schemas/Task"}, {"type": "null"}]},
        },
    },
}


def _events(*names: str) -> dict[str, Any]:
    """A text/event-stream whose events (OpenAPI 3.1: the schema of each event) are named."""
    event = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": list(names)},
            "data": {"type": "string", "contentMediaType": "application/json"},
        },
    }
    return {"text/event-stream": {"schema": event}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if headers:
        answer["headers"] = headers
    return answer


_UNAUTHORIZED = _problem(
    "Missing or wrong bearer token (only when the server has --token)",
    {"WWW-Authenticate": {"schema": {"type": "string"}}},
)
_BUSY = _problem(
    "Too many connections, or the queue is full",
    {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
)
_COMMON = {"401": _UNAUTHORIZED, "503": _BUSY}
_BY_ID = {
    **_COMMON,
    "404": _problem("No task with this id was ever issued"),
    "410": _problem("The task finished and its record expired"),
    "422": _problem("The id is not a positive integer"),
}


def _route(responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"responses": responses, **extra}


SUBMIT = _route(
    {
        "201": {
            **_json("Task", "Queued"),
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        "400": _problem("The body is not valid JSON"),
        "413": _problem("The body is larger than 1 MiB"),
        "422": _problem("Unknown type, data missing or too long, result would be too long"),
        **_COMMON,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("NewTask")}},
        }
    },
)
STATUS = _route({"200": _json("Task", "The task's status"), **_BY_ID})
RESULT = _route(
    {
        "200": _json("Result", "The result"),
        "409": _problem("Not done: queued, running, failed or cancelled; `task` tells which"),
        **_BY_ID,
    }
)
EVENTS = _route(
    {
        "200": {
            "description": "Server-sent events. `event: status` carries a Task; the "
            "stream ends after a final status. `event: shutdown` ends it when the server stops.",
            "content": _events("status", "shutdown"),
        },
        **_BY_ID,
    }
)
ALL_EVENTS = _route(
    {
        "200": {
            "description": "Server-sent events for dashboards. First `event: snapshot` with "
            "`now` (the server's clock), `types`, `counters`, `queued` (the first 200), "
            "`running` and `recent` (the last 50 finished); then `event: task` with `task` "
            "(a Task) and `counters` at every change; `event: shutdown` when the server "
            "stops. A reader too slow to keep up gets a new snapshot instead of the changes "
            "it missed.",
            "content": _events("snapshot", "task", "shutdown"),
        },
        **_COMMON,
    }
)
CANCEL = _route(
    {
        "200": _json("Task", "Cancelled"),
        "409": _problem("The task has already finished"),
        **_BY_ID,
    }
)
LIST = _route(
    {
        "200": {
            "description": "Tasks, newest first",
            "content": {"application/json": {"schema": {"type": "array", "items": _ref("Task")}}},
        },
        "422": _problem("Unknown status or limit out of range"),
        **_COMMON,
    }
)
TYPES = _route(
    {
        "200": {
            "description": "The task types",
            "content": {
                "application/json": {"schema": {"type": "array", "items": _ref("TaskType")}}
            },
        },
        **_COMMON,
    }
)
METRICS = _route(
    {
        "200": {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **_COMMON,
    }
)
HEALTH = _route({"200": _json("Health", "The server is up"), "503": _BUSY})


def openapi(app: FastAPI) -> dict[str, Any]:
    """The document FastAPI builds, with the shared schemas added and its own 422 removed."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas.update(COMPONENTS)
        app.openapi_schema = document
    return app.openapi_schema
