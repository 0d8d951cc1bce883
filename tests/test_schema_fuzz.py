"""Fuzz the whole API with schemathesis against the live server's own `/openapi.json`.

Every operation gets generated requests, valid and invalid; every answer must not be a 5xx,
and must match the documented status codes, content types, headers and body schemas.
Bounded and reproducible: a fixed number of examples per operation, derandomized.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

HOST = "127.0.0.1"
EXAMPLES = 50  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def start(tmp: Any, *extra: str) -> tuple[subprocess.Popen[bytes], int, Any]:
    port = free_port()
    command = [sys.executable, "-m", "worktask.server", "--port", str(port)]
    command += ["--delay-scale", "0", "--log-level", "warning", *extra]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WORKTASK_")}
    log = tmp.mktemp("fuzz") / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environ)
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if get(port, "/healthz")[0] == 200:
                return proc, port, log
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], log: Any) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[:5000]


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with instant tasks that forgets all but the 5 newest finished (so 410 occurs)."""
    proc, port, log = start(tmp_path_factory, "--keep-finished", "5")
    try:
        for n in range(10):  # ids 1..10: 1..5 evicted (410), 6..10 done
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("POST", "/tasks", json.dumps({"type": 1 + n % 3, "data": f"fuzz {n}"}))
            assert conn.getresponse().status == 201
            conn.close()
        yield f"http://{HOST}:{port}"
    finally:
        stop(proc, log)


@pytest.fixture(scope="module")
def api_schema(live_url: str) -> Any:
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json", timeout=10)
    schema.config.generation.update(max_examples=EXAMPLES, deterministic=True)
    return schema


TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def locked_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The schema of a server with --token, for requests that do not carry it."""
    proc, port, log = start(tmp_path_factory, "--token", TOKEN)
    try:
        url = f"http://{HOST}:{port}/openapi.json"
        schema = schemathesis.openapi.from_url(url, headers={"Authorization": f"Bearer {TOKEN}"})
        yield schema
    finally:
        stop(proc, log)


SEEN: Counter[tuple[str, int]] = Counter()  # (operation, status) answered during the fuzz


# Every documented operation; GET /events never ends (a dashboard stream) and is checked
# on its own below.
OPERATIONS = [
    ("POST", "/tasks"),
    ("GET", "/tasks"),
    ("GET", "/tasks/{task_id}"),
    ("GET", "/tasks/{task_id}/result"),
    ("GET", "/tasks/{task_id}/events"),
    ("DELETE", "/tasks/{task_id}"),
    ("GET", "/task-types"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
]
STREAMS = [("GET", "/events")]


def test_every_documented_operation_is_fuzzed(api_schema: Any) -> None:
    documented = {
        (method.upper(), path)
        for path, item in api_schema.raw_schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert documented == set(OPERATIONS) | set(STREAMS)


WITH_INPUTS = {("POST", "/tasks"), ("GET", "/tasks")} | {
    (m, p) for m, p in OPERATIONS if "{task_id}" in p
}  # the others take no input, so nothing negative can be generated for them
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}", marks=marks)
    for method, path in OPERATIONS
    for mode, marks in (
        (GenerationMode.POSITIVE, ()),
        (GenerationMode.NEGATIVE, ()),
    )
    if mode is GenerationMode.POSITIVE or (method, path) in WITH_INPUTS
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_operation_answers_as_documented(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(checks=CHECKS, timeout=10)
        SEEN[(f"{method} {path}", response.status_code)] += 1

    fuzz()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_without_the_token_operations_answer_401_as_documented(
    locked_schema: Any, method: str, path: str
) -> None:
    operation = locked_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    @settings(
        max_examples=5,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(checks=CHECKS, timeout=10)
        assert response.status_code == (200 if path == "/healthz" else 401)

    fuzz()


def test_the_fuzz_reached_the_interesting_answers() -> None:
    """The fuzz above met every kind of answer, not only 404s."""
    if not SEEN:
        pytest.skip("run with the fuzz tests above")
    codes = {code for _, code in SEEN}
    assert {200, 201, 400, 404, 410, 422} <= codes, sorted(SEEN.items())


@pytest.fixture(scope="module")
def slow_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server with one task running, one queued and one cancelled (tasks take 10x longer)."""
    proc, port, log = start(tmp_path_factory, "--delay-scale", "10")
    try:
        for n in range(3):
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("POST", "/tasks", json.dumps({"type": "repeat", "data": f"slow {n}"}))
            assert conn.getresponse().status == 201
            conn.close()
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        conn.request("DELETE", "/tasks/3")
        assert conn.getresponse().status == 200
        conn.close()
        yield schemathesis.openapi.from_url(f"http://{HOST}:{port}/openapi.json")
    finally:
        stop(proc, log)


BY_ID = [pytest.param(m, p, id=f"{m} {p}") for m, p in OPERATIONS if "{task_id}" in p]


@pytest.mark.parametrize(("method", "path"), BY_ID)
def test_answers_about_tasks_in_every_state_are_documented(
    live_url: str, api_schema: Any, slow_schema: Any, method: str, path: str
) -> None:
    """The fuzz rarely hits an existing id: ask about each state on purpose."""
    conn = http.client.HTTPConnection(HOST, int(live_url.rsplit(":", 1)[1]), timeout=5)
    conn.request("POST", "/tasks", json.dumps({"type": "swap", "data": "fresh"}))
    done = json.loads(conn.getresponse().read())["id"]
    conn.close()
    time.sleep(0.1)
    asked = [(api_schema, 1), (api_schema, done)]  # evicted (410), done
    if (method, path) != ("GET", "/tasks/{task_id}/events"):  # these would wait for the end
        asked += [
            (slow_schema, 1),
            (slow_schema, 2),
            (slow_schema, 3),
        ]  # running, queued, cancelled
    if method == "DELETE":
        asked.reverse()  # cancel the done and evicted ones last
    codes = []
    for schema, task_id in asked:
        case = schema[path][method].Case(path_parameters={"task_id": task_id})
        codes.append(case.call_and_validate(checks=CHECKS, timeout=10).status_code)
    assert 410 in codes and (200 in codes or 409 in codes), codes


def test_the_dashboard_stream_is_documented_and_starts_with_a_snapshot(
    live_url: str, api_schema: Any
) -> None:
    document = api_schema.raw_schema
    documented = document["paths"]["/events"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in documented
    port = int(live_url.rsplit(":", 1)[1])
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        deadline = time.monotonic() + 5
        while b"\n\n" not in received.partition(b"\r\n\r\n")[2] and time.monotonic() < deadline:
            received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"content-type: text/event-stream" in head.lower(), head
    assert b"event: snapshot" in body, body[:500]


def test_the_document_tells_the_truth_about_problems(api_schema: Any) -> None:
    """The documented errors: problem bodies for 401/404/409/410/413/422/503."""
    paths = api_schema.raw_schema["paths"]
    expected = {
        ("post", "/tasks"): {"201", "400", "401", "413", "422", "503"},
        ("get", "/tasks/{task_id}"): {"200", "401", "404", "410", "503"},
        ("get", "/tasks/{task_id}/result"): {"200", "401", "404", "409", "410", "503"},
        ("get", "/tasks/{task_id}/events"): {"200", "401", "404", "410", "503"},
        ("delete", "/tasks/{task_id}"): {"200", "401", "404", "409", "410", "503"},
    }
    for (method, path), codes in expected.items():
        responses = paths[path][method]["responses"]
        assert codes <= set(responses), (method, path, sorted(responses))
        for code in codes - {"200", "201"}:
            assert "application/problem+json" in responses[code]["content"], (method, path, code)
    busy = paths["/tasks"]["post"]["responses"]["503"]
    assert "Retry-After" in busy.get("headers", {}), busy


def test_the_status_filter_documents_the_statuses(api_schema: Any) -> None:
    parameters = api_schema.raw_schema["paths"]["/tasks"]["get"]["parameters"]
    status = next(p for p in parameters if p["name"] == "status")
    text = json.dumps(status["schema"])
    if "$ref" in text:
        name = text.split("#/components/schemas/")[1].split('"')[0]
        text = json.dumps(api_schema.raw_schema["components"]["schemas"][name])
    for word in ("queued", "running", "done", "failed", "cancelled"):
        assert word in text, text
    assert '"object"' not in text, text
