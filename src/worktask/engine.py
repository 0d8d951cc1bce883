"""The engine: the task store and the executor that runs one task at a time, in id order.

No HTTP here. The API calls `submit`, `get`, `result`, `cancel`, `tasks` and waits on
`changed`; the server starts the executor with `start` and stops it with `close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from worktask import tasktypes
from worktask.exceptions import (
    InvalidTask,
    QueueFull,
    ResultNotReady,
    TaskAlreadyFinished,
    TaskExpired,
    TaskNotFound,
)
from worktask.settings import Settings
from worktask.tasktypes import TaskType

log = logging.getLogger("worktask")

INLINE_CHARS = 2_000  # data up to this length is measured and transformed on the event loop
_TOMBSTONES = 100_000  # evicted ids whose finishing time is remembered for the 410 detail


class TaskStatus(StrEnum):
    """Where a task is in its life. The last three are final."""

    QUEUED = "queued"  # accepted, waiting for the tasks before it
    RUNNING = "running"  # executing now; exactly one task runs at any moment
    DONE = "done"  # finished; its result can be fetched as often as asked
    FAILED = "failed"  # the transformation raised; `error` says why
    CANCELLED = "cancelled"  # cancelled by a client before it finished

    @property
    def final(self) -> bool:
        return self in (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass(slots=True, eq=False)
class Task:
    """One task and everything known about it."""

    id: int
    type: TaskType
    data: str
    duration: float  # simulated seconds, already scaled
    created_at: float  # wall-clock epoch seconds
    status: TaskStatus = TaskStatus.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    result: str | None = None
    error: str | None = None
    ordinal: int = 0  # place in the queue's arrival order, for `position`
    ahead: float = 0.0  # seconds of queued work that arrived before it, for `eta`
    size: int = 0  # bytes of data and result, for the memory budgets
    waiter: asyncio.Future[None] | None = None  # made on the first wait, resolved on a change


@dataclass(slots=True)
class Snapshot:
    """A task's state as clients see it, at one moment."""

    task: Task
    position: int | None
    eta_seconds: float | None
    progress: float | None


@dataclass(slots=True)
class Counters:
    """Totals since start-up, by final status."""

    submitted: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    evicted: int = 0


Listener = Callable[[Task | None], None]  # None: the engine is stopping


@dataclass
class Engine:
    """The store of tasks and the executor that runs them one at a time."""

    settings: Settings = field(default_factory=Settings)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._tasks: dict[int, Task] = {}
        self._queue: deque[Task] = deque()
        self._finished: deque[Task] = deque()  # in the order they finished, for eviction
        self._tombstones: dict[int, float] = {}  # evicted id -> when it finished
        self._tombstone_order: deque[int] = deque()
        self._next_id = 1
        self._next_ordinal = 0
        self._next_ahead = 0.0
        self._head_ordinal = 0
        self._head_ahead = 0.0
        self._queued_bytes = 0
        self._kept_bytes = 0
        self._running: Task | None = None
        self._job: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._executor: asyncio.Task[None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._watched: set[Task] = set()  # queued tasks someone waits on: positions move
        self._listeners: list[Listener] = []
        self.counters = Counters()
        self.closing = False

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the executor on the running event loop."""
        self._wakeup = asyncio.Event()
        self._executor = asyncio.create_task(self._execute_forever(), name="worktask-executor")
        self._schedule_sweep()

    def stop_waiting(self) -> None:
        """Wake every waiter for the last time: the server is stopping."""
        self.closing = True
        for task in self._tasks.values():
            self._resolve(task)
        for listener in self._listeners:
            listener(None)

    async def close(self) -> None:
        """Stop executing and release every waiter."""
        self.stop_waiting()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._executor is not None:
            self._executor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._executor

    # -- queries ------------------------------------------------------------------------

    def get(self, task_id: int) -> Task:
        """The task with this id, or TaskNotFound / TaskExpired."""
        task = self._tasks.get(task_id)
        if task is not None:
            return task
        if 0 < task_id < self._next_id:
            finished = self._tombstones.get(task_id)
            when = "" if finished is None else f" at {rfc3339(finished)}"
            raise TaskExpired(
                f"task {task_id} finished{when} and its result expired: finished tasks are kept "
                f"for at most {self.settings.result_ttl:g} s, {self.settings.keep_finished} "
                f"tasks and {self.settings.results_budget_mb:g} MB"
            )
        raise TaskNotFound(f"no task with id {task_id}")

    def snapshot(self, task: Task) -> Snapshot:
        """The task's position, ETA and progress as of now."""
        if task.status is TaskStatus.QUEUED:
            position = task.ordinal - self._head_ordinal + 1
            eta = self._running_remaining() + task.ahead - self._head_ahead + task.duration
            return Snapshot(task, position, round(eta, 3), None)
        if task.status is TaskStatus.RUNNING:
            elapsed = self.clock() - (task.started_at or 0.0)
            progress = min(1.0, elapsed / task.duration) if task.duration > 0 else 0.0
            eta = max(0.0, task.duration - elapsed)
            return Snapshot(task, None, round(eta, 3), round(progress, 4))
        return Snapshot(task, None, None, None)

    def result(self, task_id: int) -> Task:
        """The task, if it is done; ResultNotReady otherwise."""
        task = self.get(task_id)
        if task.status is TaskStatus.DONE:
            return task
        reasons = {
            TaskStatus.QUEUED: "is queued; its result is not ready yet",
            TaskStatus.RUNNING: "is running; its result is not ready yet",
            TaskStatus.FAILED: f"failed and has no result: {task.error}",
            TaskStatus.CANCELLED: "was cancelled and has no result",
        }
        raise ResultNotReady(f"task {task_id} {reasons[task.status]}", task)

    def tasks(self, status: TaskStatus | None = None, limit: int = 100) -> list[Task]:
        """Tasks newest first, optionally only those in one status."""
        found: list[Task] = []
        for task in reversed(self._tasks.values()):
            if status is None or task.status is status:
                found.append(task)
                if len(found) >= limit:
                    break
        return found

    @property
    def running(self) -> Task | None:
        return self._running

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def queued(self, limit: int) -> list[Task]:
        """The first queued tasks, next to run first."""
        return list(itertools.islice(self._queue, limit))

    def recent(self, limit: int) -> list[Task]:
        """The tasks that finished last, newest first."""
        return list(itertools.islice(reversed(self._finished), limit))

    # -- commands -----------------------------------------------------------------------

    async def submit(self, type_: object, data: object) -> Task:
        """Validate and queue a task; InvalidTask or QueueFull if it cannot be accepted."""
        kind, text = self._validate(type_, data)
        if len(text) <= INLINE_CHARS:
            return self._accept(kind, text, kind.result_length(text))
        # segmenting a long text takes milliseconds: not on the event loop
        return self._accept(kind, text, await asyncio.to_thread(kind.result_length, text))

    def submit_now(self, type_: object, data: object) -> Task:
        """`submit` without awaiting, for data of at most INLINE_CHARS characters."""
        kind, text = self._validate(type_, data)
        if len(text) > INLINE_CHARS:
            raise ValueError(f"data over {INLINE_CHARS} characters needs `submit`")
        return self._accept(kind, text, kind.result_length(text))

    def _accept(self, kind: TaskType, data: str, result_length: int) -> Task:
        self._check_result(kind, data, result_length)
        size = sys.getsizeof(data)
        self._check_room(size)
        duration = self.settings.scaled(kind.duration)
        task = Task(self._next_id, kind, data, duration, self.clock(), size=size)
        task.ordinal, task.ahead = self._next_ordinal, self._next_ahead
        self._next_id += 1
        self._next_ordinal += 1
        self._next_ahead += duration
        self._queued_bytes += size
        self._tasks[task.id] = task
        self._queue.append(task)
        self.counters.submitted += 1
        log.info("task %d queued: %s, %d characters", task.id, kind.name, len(data))
        self._changed(task)
        if self._wakeup is not None:
            self._wakeup.set()
        return task

    def cancel(self, task_id: int) -> Task:
        """Cancel a queued or running task; TaskAlreadyFinished if it has finished."""
        task = self.get(task_id)
        if task.status.final:
            raise TaskAlreadyFinished(
                f"task {task_id} has already finished ({task.status.value})", task
            )
        if task.status is TaskStatus.QUEUED:
            self._unqueue(task)
            self._positions_moved()
        elif self._job is not None:
            self._job.cancel()  # the executor then starts the next task at once
        self._finish(task, TaskStatus.CANCELLED)
        return task

    def changed(self, task: Task) -> asyncio.Future[None]:
        """A future resolved at the task's next change (or when the engine closes)."""
        waiter = task.waiter
        if waiter is None:
            waiter = task.waiter = asyncio.get_running_loop().create_future()
            if task.status is TaskStatus.QUEUED:
                self._watched.add(task)
        if self.closing or task.status.final:
            self._resolve(task)
        return waiter

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(task)` on every change of any task, and `listener(None)` on stopping.

        Returns the function that stops the calls.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- validation and budgets -----------------------------------------------------------

    def _validate(self, type_: object, data: object) -> tuple[TaskType, str]:
        try:
            kind = tasktypes.lookup(type_)
        except tasktypes.UnknownTaskType as error:
            raise InvalidTask(str(error)) from error
        if not isinstance(data, str):
            raise InvalidTask(f"'data' must be a string, not {_json_type(data)}")
        limit = self.settings.max_data_chars
        if len(data) > limit:
            raise InvalidTask(f"'data' is {len(data)} characters long; the limit is {limit}")
        self._check_result(kind, data, len(data))  # no result is shorter than its data
        return kind, data

    def _check_result(self, kind: TaskType, data: str, length: int) -> None:
        limit = self.settings.max_result_chars
        if length > limit:
            raise InvalidTask(
                f"the result of {kind.name} on {len(data)} characters would be {length} "
                f"characters long, over the limit of {limit} (--max-result-chars)"
            )

    def _check_room(self, size: int) -> None:
        if len(self._queue) >= self.settings.max_queue:
            why = f"the queue is full ({len(self._queue)} queued, --max-queue)"
        elif self._queued_bytes + size > self.settings.max_queue_mb * 1_000_000:
            why = f"the queued data fills its budget of {self.settings.max_queue_mb:g} MB"
        else:
            return
        retry = max(1, round(self._backlog_seconds()))
        raise QueueFull(f"server busy: {why}; retry in {retry} s", retry)

    def _backlog_seconds(self) -> float:
        """Seconds until the whole queue has run, from the known durations."""
        return self._running_remaining() + self._next_ahead - self._head_ahead

    def _running_remaining(self) -> float:
        task = self._running
        if task is None or task.started_at is None:
            return 0.0
        return max(0.0, task.duration - (self.clock() - task.started_at))

    # -- execution -----------------------------------------------------------------------

    async def _execute_forever(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            task = self._queue.popleft()
            self._start(task)
            self._job = asyncio.create_task(self._execute(task))
            try:
                await asyncio.shield(self._job)
            except asyncio.CancelledError:
                if _cancelling():  # the engine is closing, not a client cancelling the task
                    self._job.cancel()
                    raise
            finally:
                self._running = None
                self._job = None

    def _start(self, task: Task) -> None:
        self._head_ordinal = task.ordinal + 1
        self._head_ahead = task.ahead + task.duration
        self._queued_bytes -= task.size
        self._watched.discard(task)
        task.status = TaskStatus.RUNNING
        task.started_at = self.clock()
        self._running = task
        log.info("task %d started: %s", task.id, task.type.name)
        self._changed(task)
        self._positions_moved()

    async def _execute(self, task: Task) -> None:
        assert task.started_at is not None
        try:
            if len(task.data) > INLINE_CHARS:
                result = await asyncio.to_thread(task.type.run, task.data)
            else:
                result = task.type.run(task.data)
        except Exception as error:  # a bug in a transformation fails the task, not the server
            log.exception("task %d failed", task.id)
            task.error = f"{type(error).__name__}: {error}"
            self._finish(task, TaskStatus.FAILED)
            return
        remaining = task.duration - (self.clock() - task.started_at)
        if remaining > 0:
            await asyncio.sleep(remaining)
        task.result = result
        self._finish(task, TaskStatus.DONE)

    def _unqueue(self, task: Task) -> None:
        """Take a task out of the middle of the queue and close the gap it leaves."""
        self._queue.remove(task)
        self._queued_bytes -= task.size
        self._watched.discard(task)
        for later in self._queue:
            if later.ordinal > task.ordinal:
                later.ordinal -= 1
                later.ahead -= task.duration
        self._next_ordinal -= 1
        self._next_ahead -= task.duration

    def _finish(self, task: Task, status: TaskStatus) -> None:
        if task is self._running:
            self._running = None  # at once, not when the executor next wakes
        task.status = status
        task.finished_at = self.clock()
        if status is not TaskStatus.DONE:
            task.result = None
        task.size = sys.getsizeof(task.data) + (
            sys.getsizeof(task.result) if task.result is not None else 0
        )
        took = task.finished_at - (task.started_at or task.finished_at)
        log.info("task %d %s after %.3f s", task.id, status.value, took)
        setattr(self.counters, status.value, getattr(self.counters, status.value) + 1)
        self._finished.append(task)
        self._kept_bytes += task.size
        self._changed(task)
        self._evict()

    # -- notification ---------------------------------------------------------------------

    def _changed(self, task: Task) -> None:
        self._resolve(task)
        for listener in self._listeners:
            listener(task)

    def _resolve(self, task: Task) -> None:
        waiter = task.waiter
        if waiter is not None:
            task.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _positions_moved(self) -> None:
        """Queued tasks that someone waits on have moved up: tell their waiters."""
        for task in list(self._watched):
            self._watched.discard(task)
            self._resolve(task)

    # -- eviction ------------------------------------------------------------------------

    def _evict(self) -> None:
        """Forget the oldest finished tasks beyond --keep-finished, TTL or memory budget."""
        limits = self.settings
        budget = limits.results_budget_mb * 1_000_000
        oldest_kept = self.clock() - limits.result_ttl
        finished = self._finished
        while finished and (
            len(finished) > limits.keep_finished
            or (self._kept_bytes > budget and len(finished) > 1)  # the newest can be fetched
            or (finished[0].finished_at or 0.0) < oldest_kept
        ):
            task = finished.popleft()
            self._kept_bytes -= task.size
            del self._tasks[task.id]
            self._tombstones[task.id] = task.finished_at or 0.0
            self._tombstone_order.append(task.id)
            if len(self._tombstone_order) > _TOMBSTONES:
                del self._tombstones[self._tombstone_order.popleft()]
            self.counters.evicted += 1

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        self._evict()
        self._schedule_sweep()


def rfc3339(moment: float | None) -> str | None:
    """`2026-12-03T16:35:20.123456Z`, or None."""
    if moment is None:
        return None
    seconds = int(moment)
    micros = round((moment - seconds) * 1_000_000)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "an array" if isinstance(value, list) else "an object")


def _cancelling() -> bool:
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0
