"""Prometheus metrics: tasks by type and status, the queue, and HTTP requests by route."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from worktask.engine import Engine, Task, TaskStatus

_TASK_BUCKETS = (0.01, 0.1, 0.5, 1, 2, 3, 5, 7, 10, 15, 30, 60)
_HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30)

# Route labels are these templates, so that ids never multiply the series.
_ROUTES = {
    "tasks": "/tasks",
    "task-types": "/task-types",
    "healthz": "/healthz",
    "metrics": "/metrics",
    "events": "/events",
    "openapi.json": "/openapi.json",
    "docs": "/docs",
    "redoc": "/redoc",
    "": "/",
    "ui": "/ui",
}
_TASK_ROUTES = {"": "/tasks/{id}", "result": "/tasks/{id}/result", "events": "/tasks/{id}/events"}


def route_of(path: str) -> str:
    """The route template a path belongs to, or `other`."""
    parts = path.strip("/").split("/")
    if parts[0] == "tasks" and len(parts) > 1:
        return _TASK_ROUTES.get(parts[2] if len(parts) == 3 else "", "other")
    return _ROUTES.get(parts[0], "other") if len(parts) == 1 or parts[0] == "ui" else "other"


class Metrics:
    """The server's metrics, in a registry of their own."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.engine = engine
        self.submitted = Counter(
            "worktask_tasks_submitted", "Tasks accepted", ["type"], registry=self.registry
        )
        self.finished = Counter(
            "worktask_tasks_finished",
            "Tasks that reached a final status",
            ["type", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "worktask_task_duration_seconds",
            "Execution time of finished tasks",
            ["type"],
            buckets=_TASK_BUCKETS,
            registry=self.registry,
        )
        queue = Gauge("worktask_queue_depth", "Tasks waiting to run", registry=self.registry)
        queue.set_function(lambda: engine.queue_depth)
        age = Gauge(
            "worktask_running_task_age_seconds",
            "Seconds the running task has been running (0 when idle)",
            registry=self.registry,
        )
        age.set_function(self._running_age)
        self.requests = Counter(
            "worktask_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "worktask_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of its stream, for event streams)",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, ...], MetricWrapperBase] = {}
        engine.listen(self._task_changed)

    def observe_request(self, path: str, method: str, status: int, started: float) -> None:
        """Count one answered request and its latency."""
        route = route_of(path)
        key = (route, method, str(status))
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self.requests.labels(*key)
        counter.inc()  # type: ignore[attr-defined]
        histogram = self._children.get((route,))
        if histogram is None:
            histogram = self._children[(route,)] = self.latency.labels(route)
        histogram.observe(time.perf_counter() - started)  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _running_age(self) -> float:
        task = self.engine.running
        if task is None or task.started_at is None:
            return 0.0
        return max(0.0, self.engine.clock() - task.started_at)

    def _task_changed(self, task: Task | None) -> None:
        if task is None:
            return
        if task.status is TaskStatus.QUEUED:
            self.submitted.labels(task.type.name).inc()
        elif task.status.final:
            self.finished.labels(task.type.name, task.status.value).inc()
            if task.started_at is not None and task.finished_at is not None:
                self.duration.labels(task.type.name).observe(task.finished_at - task.started_at)
