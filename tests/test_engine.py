"""The engine on its own: order, one at a time, cancel, limits, eviction, waiting."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from worktask.engine import Engine, Task, TaskStatus
from worktask.exceptions import (
    InvalidTask,
    QueueFull,
    ResultNotReady,
    TaskAlreadyFinished,
    TaskExpired,
    TaskNotFound,
)
from worktask.settings import Settings


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(Settings(delay_scale=0))
    await engine.start()
    yield engine
    await engine.close()


async def make(settings: Settings) -> Engine:
    engine = Engine(settings)
    await engine.start()
    return engine


async def finished(engine: Engine, task: Task, timeout: float = 5.0) -> Task:
    """Wait, on the engine's own notifications, until the task is final."""
    async with asyncio.timeout(timeout):
        while not task.status.final:
            await engine.changed(task)
    return task


async def reaches(engine: Engine, task: Task, status: TaskStatus) -> None:
    async with asyncio.timeout(5):
        while task.status is not status:
            await engine.changed(task)


async def test_ids_increase_from_one(engine: Engine) -> None:
    ids = [(await engine.submit(1, str(n))).id for n in range(5)]
    assert ids == [1, 2, 3, 4, 5]


async def test_tasks_run_one_at_a_time_in_id_order() -> None:
    engine = await make(Settings(delay_scale=0.002))
    try:
        tasks = [await engine.submit((n % 3) + 1, f"задача {n}") for n in range(30)]
        await finished(engine, tasks[-1])
        for before, after in itertools.pairwise(tasks):
            assert before.finished_at is not None and after.started_at is not None
            assert after.started_at >= before.finished_at
        assert all(t.status is TaskStatus.DONE for t in tasks)
    finally:
        await engine.close()


async def test_result_is_repeatable(engine: Engine) -> None:
    task = await finished(engine, await engine.submit("reverse", "пример"))
    assert engine.result(task.id).result == "ремирп"
    assert engine.result(task.id).result == "ремирп"


async def test_duration_is_simulated() -> None:
    engine = await make(Settings(delay_scale=0.05))  # reverse: 2 s * 0.05 = 0.1 s
    try:
        task = await finished(engine, await engine.submit(1, "abc"))
        assert task.started_at is not None and task.finished_at is not None
        assert 0.09 <= task.finished_at - task.started_at < 0.5
    finally:
        await engine.close()


async def test_position_and_eta_while_queued() -> None:
    engine = await make(Settings(delay_scale=1))
    try:
        first = await engine.submit(3, "a")  # runs for 7 s
        second = await engine.submit(1, "b")
        third = await engine.submit(2, "c")
        await reaches(engine, first, TaskStatus.RUNNING)
        assert engine.snapshot(second).position == 1
        assert engine.snapshot(third).position == 2
        eta = engine.snapshot(third).eta_seconds
        assert eta is not None and 13.5 < eta <= 14.0  # 7 + 2 + 5, less the time elapsed
        running = engine.snapshot(first)
        assert running.progress is not None and 0 <= running.progress < 0.1
    finally:
        await engine.close()


async def test_cancel_queued_closes_the_gap() -> None:
    engine = await make(Settings(delay_scale=1))
    try:
        await reaches(engine, await engine.submit(3, "a"), TaskStatus.RUNNING)
        second, third, fourth = [await engine.submit(1, x) for x in "bcd"]
        engine.cancel(third.id)
        assert third.status is TaskStatus.CANCELLED
        assert engine.snapshot(second).position == 1
        assert engine.snapshot(fourth).position == 2
        assert engine.queue_depth == 2
    finally:
        await engine.close()


async def test_cancel_running_starts_the_next_at_once() -> None:
    engine = await make(Settings(delay_scale=1))
    try:
        first = await engine.submit(3, "a")
        second = await engine.submit(1, "b")
        await reaches(engine, first, TaskStatus.RUNNING)
        engine.cancel(first.id)
        assert first.status is TaskStatus.CANCELLED
        await reaches(engine, second, TaskStatus.RUNNING)
        assert second.started_at is not None and first.finished_at is not None
        assert second.started_at - first.finished_at < 0.05
    finally:
        await engine.close()


async def test_cancel_finished_is_refused(engine: Engine) -> None:
    task = await finished(engine, await engine.submit(1, "x"))
    with pytest.raises(TaskAlreadyFinished, match="already finished"):
        engine.cancel(task.id)


async def test_result_before_done_is_not_ready() -> None:
    engine = await make(Settings(delay_scale=1))
    try:
        await engine.submit(3, "a")
        queued = await engine.submit(1, "b")
        with pytest.raises(ResultNotReady, match="is queued"):
            engine.result(queued.id)
        engine.cancel(queued.id)
        with pytest.raises(ResultNotReady, match="was cancelled"):
            engine.result(queued.id)
    finally:
        await engine.close()


async def test_unknown_ids_are_not_found(engine: Engine) -> None:
    with pytest.raises(TaskNotFound, match="no task with id 1"):
        engine.get(1)


@pytest.mark.parametrize(
    ("type_", "data", "message"),
    [
        (9, "x", r"unknown task type 9; valid types: 1 \(reverse\), 2 \(swap\), 3 \(repeat\)"),
        ("nope", "x", "unknown task type 'nope'"),
        (True, "x", "unknown task type True"),
        (1, 5, "'data' must be a string, not a number"),
        (1, None, "'data' must be a string, not null"),
        (1, ["a"], "'data' must be a string, not an array"),
    ],
)
async def test_invalid_submissions_change_nothing(
    engine: Engine, type_: object, data: object, message: str
) -> None:
    with pytest.raises(InvalidTask, match=message):
        await engine.submit(type_, data)
    assert (await engine.submit(1, "ok")).id == 1


async def test_data_and_result_limits() -> None:
    engine = await make(Settings(delay_scale=0, max_data_chars=10))
    try:
        with pytest.raises(InvalidTask, match="11 characters long; the limit is 10"):
            await engine.submit(1, "x" * 11)
    finally:
        await engine.close()
    engine = await make(Settings(delay_scale=0))
    try:
        await engine.submit(3, "я" * 1413)  # 998,991 characters of result
        with pytest.raises(InvalidTask, match="over the limit of 1000000"):
            await engine.submit(3, "я" * 1414)
    finally:
        await engine.close()


async def test_full_queue_refuses_with_retry_after() -> None:
    engine = await make(Settings(delay_scale=1, max_queue=2))
    try:
        await reaches(engine, await engine.submit(3, "running"), TaskStatus.RUNNING)
        await engine.submit(1, "a")
        await engine.submit(2, "b")
        with pytest.raises(QueueFull, match="server busy") as refused:
            await engine.submit(1, "c")
        assert 13 <= refused.value.retry_after <= 14  # 7 + 2 + 5 s of known work
        assert engine.counters.submitted == 3
    finally:
        await engine.close()


async def test_keep_finished_evicts_the_oldest() -> None:
    engine = await make(Settings(delay_scale=0, keep_finished=2))
    try:
        tasks = [await engine.submit(1, str(n)) for n in range(3)]
        await finished(engine, tasks[-1])
        with pytest.raises(TaskExpired, match=r"task 1 finished at .* and its result expired"):
            engine.get(1)
        assert engine.result(3).result == "2"
        with pytest.raises(TaskNotFound):
            engine.get(4)
    finally:
        await engine.close()


async def test_results_budget_evicts() -> None:
    engine = await make(Settings(delay_scale=0, results_budget_mb=0.01))  # 10 kB
    try:
        tasks = [await engine.submit(1, "ж" * 2000) for _ in range(4)]  # ~8 kB each, data + result
        await finished(engine, tasks[-1])
        with pytest.raises(TaskExpired):
            engine.get(1)
        assert engine.get(4).status is TaskStatus.DONE
    finally:
        await engine.close()


async def test_result_ttl_evicts() -> None:
    now = [1000.0]
    engine = Engine(Settings(delay_scale=0, result_ttl=60), clock=lambda: now[0])
    await engine.start()
    try:
        task = await finished(engine, await engine.submit(1, "x"))
        now[0] += 61
        await engine.submit(1, "y")  # anything that finishes sweeps; so does a timer every second
        await finished(engine, engine.get(2))
        with pytest.raises(TaskExpired):
            engine.get(task.id)
    finally:
        await engine.close()


async def test_waiters_see_every_state(engine: Engine) -> None:
    task = await engine.submit(1, "abc")
    seen = [task.status]
    while not task.status.final:
        await engine.changed(task)
        seen.append(task.status)
    assert seen[0] is TaskStatus.QUEUED and seen[-1] is TaskStatus.DONE


async def test_close_wakes_waiters() -> None:
    engine = await make(Settings(delay_scale=1))
    task = await engine.submit(3, "a")
    waiter = engine.changed(task)
    await asyncio.sleep(0)
    waiter = engine.changed(task)
    await engine.close()
    assert waiter.done() and engine.closing


async def test_a_failing_transformation_fails_the_task_only(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worktask import tasktypes

    def broken(text: str) -> str:
        raise RuntimeError("boom")

    kind = tasktypes.BY_CODE[1]
    monkeypatch.setattr(
        tasktypes,
        "BY_CODE",
        {
            **tasktypes.BY_CODE,
            1: type(kind)(
                kind.code, kind.name, kind.description, kind.duration, broken, kind.result_length
            ),
        },
    )
    task = await finished(engine, await engine.submit(1, "x"))
    assert task.status is TaskStatus.FAILED and task.error == "RuntimeError: boom"
    with pytest.raises(ResultNotReady, match="failed and has no result: RuntimeError: boom"):
        engine.result(task.id)
    monkeypatch.undo()
    assert (await finished(engine, await engine.submit(1, "ok"))).status is TaskStatus.DONE
