"""The HTTP API in-process: every answer's status, shape and message, good input and bad."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from worktask.engine import Engine
from worktask.server import build
from worktask.settings import Settings

Factory = Callable[..., Awaitable[httpx.AsyncClient]]
VALID_TYPES = "valid types: 1 (reverse), 2 (swap), 3 (repeat)"


@pytest.fixture
async def make_client() -> AsyncIterator[Factory]:
    engines: list[Engine] = []
    clients: list[httpx.AsyncClient] = []

    async def make(**settings: Any) -> httpx.AsyncClient:
        gateway, engine = build(Settings(**{"delay_scale": 0, **settings}))
        await engine.start()
        engines.append(engine)
        transport = httpx.ASGITransport(app=gateway)
        client = httpx.AsyncClient(transport=transport, base_url="http://worktask")
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
    for engine in engines:
        await engine.close()


@pytest.fixture
async def client(make_client: Factory) -> httpx.AsyncClient:
    return await make_client()


async def done(client: httpx.AsyncClient, task_id: int) -> dict[str, Any]:
    """The task's status once final, waiting on its event stream."""
    response = await client.get(f"/tasks/{task_id}/events")
    last = [line for line in response.text.splitlines() if line.startswith("data: ")][-1]
    status: dict[str, Any] = json.loads(last[6:])
    return status


async def running(client: httpx.AsyncClient, task_id: int) -> None:
    """Wait until the task runs (the in-process transport cannot stream events)."""
    async with asyncio.timeout(5):
        while (await client.get(f"/tasks/{task_id}")).json()["status"] != "running":
            await asyncio.sleep(0.001)


def assert_problem(response: httpx.Response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert detail in body["detail"], body["detail"]


async def test_submit_answers_201_with_location_and_status(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks", json={"type": 1, "data": "пример"})
    assert response.status_code == 201
    assert response.headers["location"] == "/tasks/1"
    body = response.json()
    assert body["id"] == 1 and body["type"] == "reverse" and body["code"] == 1
    assert body["status"] in ("queued", "running", "done")
    assert body["created_at"].endswith("Z") and len(body["created_at"]) == 27
    second = await client.post("/tasks", json={"type": "swap", "data": "кот"})
    assert second.json()["id"] == 2


@pytest.mark.parametrize(
    ("code", "data", "expected"),
    [(1, "пример", "ремирп"), (2, "пример", "рпмире"), (2, "кот", "окт"),
     (3, "пример", "прриииммммееееерррррр")],
)  # fmt: skip
async def test_results_of_the_specification(
    client: httpx.AsyncClient, code: int, data: str, expected: str
) -> None:
    task_id = (await client.post("/tasks", json={"type": code, "data": data})).json()["id"]
    assert (await done(client, task_id))["status"] == "done"
    for _ in range(2):  # as often as asked
        response = await client.get(f"/tasks/{task_id}/result")
        assert response.status_code == 200
        assert response.json() == {"id": task_id, "result": expected}


@pytest.mark.parametrize("type_", [9, 0, "nope", True, 1.5, None, [1]])
async def test_unknown_type_lists_valid_types(client: httpx.AsyncClient, type_: object) -> None:
    response = await client.post("/tasks", json={"type": type_, "data": "x"})
    assert_problem(response, 422, VALID_TYPES)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"data": "x"}, "'type' is required; " + VALID_TYPES),
        ({"type": 1}, "'data' is required"),
        ({"type": 1, "data": 5}, "'data' must be a string, not a number"),
        ({"type": 1, "data": None}, "'data' must be a string, not null"),
        ({"type": 1, "data": {"a": 1}}, "'data' must be a string, not an object"),
        ({"type": 1, "data": "x", "dta": "y"}, "unknown fields: dta"),
        ([1, "x"], "the body must be a JSON object"),
        ("text", "the body must be a JSON object"),
    ],
)
async def test_malformed_tasks_are_422(
    client: httpx.AsyncClient, body: object, detail: str
) -> None:
    assert_problem(await client.post("/tasks", json=body), 422, detail)
    assert (await client.get("/tasks")).json() == []  # nothing stored


@pytest.mark.parametrize("raw", [b"{", b"", b'{"type": 1, "data": "\xff"}', b"nan"])
async def test_malformed_json_is_400(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/tasks", content=raw, headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "the body is not valid JSON")


async def test_data_too_long_is_422(make_client: Factory) -> None:
    client = await make_client(max_data_chars=5)
    response = await client.post("/tasks", json={"type": 1, "data": "абвгде"})
    assert_problem(response, 422, "'data' is 6 characters long; the limit is 5")


async def test_result_too_long_is_422_at_submission(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks", json={"type": 3, "data": "я" * 1414})
    assert_problem(response, 422, "would be 1000405 characters long, over the limit of 1000000")
    ok = await client.post("/tasks", json={"type": 3, "data": "я" * 1413})
    assert ok.status_code == 201


async def test_body_over_one_mib_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"type": 1, "data": "' + b"x" * (1024 * 1024) + b'"}'
    response = await client.post("/tasks", content=body)
    assert_problem(response, 413, "exceeds the limit of 1048576 bytes")


async def test_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    response = await client.post("/tasks", content=chunks())
    assert_problem(response, 413, "exceeds the limit")


@pytest.mark.parametrize("bad", ["abc", "-1", "0", "1.5", "9" * 20, "%20", "١"])
@pytest.mark.parametrize("suffix", ["", "/result", "/events"])
async def test_bad_ids_are_404(client: httpx.AsyncClient, bad: str, suffix: str) -> None:
    assert_problem(await client.get(f"/tasks/{bad}{suffix}"), 404, "no task with id")
    assert_problem(await client.delete(f"/tasks/{bad}"), 404, "no task with id")


async def test_never_issued_id_is_404(client: httpx.AsyncClient) -> None:
    for path in ("/tasks/7", "/tasks/7/result", "/tasks/7/events"):
        assert_problem(await client.get(path), 404, "no task with id 7")
    assert_problem(await client.delete("/tasks/7"), 404, "no task with id 7")


async def test_result_before_done_is_409_with_status(make_client: Factory) -> None:
    client = await make_client(delay_scale=1)
    await client.post("/tasks", json={"type": 3, "data": "a"})
    await running(client, 1)
    await client.post("/tasks", json={"type": 1, "data": "b"})
    response = await client.get("/tasks/2/result")
    assert_problem(response, 409, "task 2 is queued; its result is not ready yet")
    task = response.json()["task"]
    assert task["status"] == "queued" and task["position"] == 1
    assert 8.5 < task["eta_seconds"] <= 9.0  # 7 s of the running task, then its own 2 s


async def test_status_while_running_has_progress_and_eta(make_client: Factory) -> None:
    client = await make_client(delay_scale=1)
    await client.post("/tasks", json={"type": 1, "data": "a"})
    await running(client, 1)
    await asyncio.sleep(0.05)
    body = (await client.get("/tasks/1")).json()
    assert body["status"] == "running" and body["position"] is None
    assert 0 < body["progress"] < 0.5 and 1.0 < body["eta_seconds"] < 2.0
    assert body["started_at"] is not None and body["finished_at"] is None


async def test_cancel_then_cancel_again(make_client: Factory) -> None:
    client = await make_client(delay_scale=1)
    await client.post("/tasks", json={"type": 3, "data": "a"})
    response = await client.delete("/tasks/1")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert_problem(await client.delete("/tasks/1"), 409, "task 1 has already finished (cancelled)")
    assert_problem(await client.get("/tasks/1/result"), 409, "was cancelled and has no result")


async def test_list_is_newest_first_and_filters(client: httpx.AsyncClient) -> None:
    for n in range(3):
        await client.post("/tasks", json={"type": 1, "data": str(n)})
    await done(client, 3)
    assert [t["id"] for t in (await client.get("/tasks")).json()] == [3, 2, 1]
    assert [t["id"] for t in (await client.get("/tasks?limit=2")).json()] == [3, 2]
    assert len((await client.get("/tasks?status=done")).json()) == 3
    assert (await client.get("/tasks?status=queued")).json() == []
    assert_problem(await client.get("/tasks?status=nope"), 422, "status")
    assert_problem(await client.get("/tasks?limit=0"), 422, "limit")
    assert_problem(await client.get("/tasks?limit=1001"), 422, "limit")


async def test_task_types(client: httpx.AsyncClient) -> None:
    types = (await client.get("/task-types")).json()
    assert [(t["code"], t["name"]) for t in types] == [(1, "reverse"), (2, "swap"), (3, "repeat")]


async def test_events_of_a_finished_task_end_after_one_event(client: httpx.AsyncClient) -> None:
    await client.post("/tasks", json={"type": 1, "data": "abc"})
    await done(client, 1)
    response = await client.get("/tasks/1/events")
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.count("event: status") == 1 and '"status":"done"' in response.text


async def test_queue_full_is_503_with_retry_after(make_client: Factory) -> None:
    client = await make_client(delay_scale=1, max_queue=1)
    await client.post("/tasks", json={"type": 3, "data": "a"})
    await running(client, 1)
    assert (await client.post("/tasks", json={"type": 1, "data": "b"})).status_code == 201
    response = await client.post("/tasks", json={"type": 1, "data": "c"})
    assert_problem(response, 503, "server busy")
    assert response.headers["retry-after"] == str(response.json()["retry_after"])
    assert 8 <= int(response.headers["retry-after"]) <= 9


async def test_token_is_required_except_for_health(make_client: Factory) -> None:
    client = await make_client(token="s3cret")
    for method, path in [("GET", "/tasks/1"), ("POST", "/tasks"), ("GET", "/tasks"),
                         ("GET", "/task-types"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                         ("DELETE", "/tasks/1"), ("GET", "/events")]:  # fmt: skip
        response = await client.request(method, path, json={"type": 1, "data": "x"})
        assert_problem(response, 401, "Authorization: Bearer")
        assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.request(method, path, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
    assert (await client.get("/healthz")).status_code == 200
    authorized = {"authorization": "Bearer s3cret"}
    response = await client.post("/tasks", json={"type": 1, "data": "x"}, headers=authorized)
    assert response.status_code == 201


async def test_every_answer_names_the_instance(client: httpx.AsyncClient) -> None:
    instance = (await client.get("/healthz")).json()["instance"]
    for path in ("/healthz", "/tasks/1", "/tasks", "/nope"):
        assert (await client.get(path)).headers["x-worktask-instance"] == instance


async def test_unknown_routes_and_methods_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nope"), 404, "Not Found")
    assert_problem(await client.put("/tasks"), 405, "Method Not Allowed")


async def test_health_shows_queue_and_running(make_client: Factory) -> None:
    client = await make_client(delay_scale=1)
    await client.post("/tasks", json={"type": 3, "data": "a"})
    await running(client, 1)
    await client.post("/tasks", json={"type": 1, "data": "b"})
    body = (await client.get("/healthz")).json()
    assert body["status"] == "ok" and body["queued"] == 1 and body["running"]["id"] == 1


async def test_openapi_documents_every_route_and_problem(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    by_id = ("", "/result", "/events")
    expected = ["/tasks", *(f"/tasks/{{task_id}}{s}" for s in by_id)]
    for path in [*expected, "/task-types", "/healthz", "/metrics", "/events"]:
        assert path in paths, path
    assert "Problem" in document["components"]["schemas"]
    result = paths["/tasks/{task_id}/result"]["get"]["responses"]
    assert {"200", "404", "409", "410"} <= set(result)
    assert (
        "text/event-stream"
        in paths["/tasks/{task_id}/events"]["get"]["responses"]["200"]["content"]
    )
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text  # works with no internet
    assert (await client.get("/static-offline-docs/swagger-ui-bundle.js")).status_code == 200


async def test_dashboard_is_served_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    policy = response.headers.get("content-security-policy", "")
    if response.status_code == 200:
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
