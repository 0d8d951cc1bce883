"""The server process itself: real durations, its log, its options and how it stops."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from conftest import ROOT, StartServer, clean_env, free_port


def call(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_final(url: str, task_id: int) -> dict[str, Any]:
    """The final status, read from the task's event stream."""
    with urllib.request.urlopen(f"{url}/tasks/{task_id}/events", timeout=20) as stream:
        lines = [line for line in stream.read().decode().splitlines() if line.startswith("data:")]
    final: dict[str, Any] = json.loads(lines[-1][5:])
    return final


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_reverse_really_takes_two_seconds(start_server: StartServer) -> None:
    server = start_server(scale=1.0)
    task = call(f"{server.url}/tasks", "POST", {"type": 1, "data": "пример"})
    final = wait_final(server.url, task["id"])
    took = seconds(final["finished_at"]) - seconds(final["started_at"])
    assert 1.99 <= took < 2.3, took
    assert call(f"{server.url}/tasks/{task['id']}/result")["result"] == "ремирп"


def test_log_has_a_line_per_lifecycle_event(start_server: StartServer) -> None:
    server = start_server(scale=1.0)
    first = call(f"{server.url}/tasks", "POST", {"type": 3, "data": "a"})
    second = call(f"{server.url}/tasks", "POST", {"type": 1, "data": "b"})
    call(f"{server.url}/tasks/{first['id']}", "DELETE")
    call(f"{server.url}/tasks/{second['id']}", "DELETE")
    assert server.stop() == 0
    log = server.output()
    for line in (
        "task 1 queued: repeat, 1 characters",
        "task 1 started: repeat",
        "task 1 cancelled after",
        "task 2 queued: reverse",
    ):
        assert line in log, log
    assert "Traceback" not in log


def test_options_come_from_the_environment() -> None:
    port = free_port()
    command = [sys.executable, "-m", "worktask.server", "--port", str(port)]
    env = clean_env(WORKTASK_DELAY_SCALE="0", WORKTASK_MAX_DATA_CHARS="3")
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                types = call(f"{url}/task-types")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        assert [t["duration_seconds"] for t in types] == [0, 0, 0]
        request = urllib.request.Request(
            f"{url}/tasks", json.dumps({"type": 1, "data": "abcd"}).encode(), method="POST"
        )
        try:
            urllib.request.urlopen(request, timeout=5)
        except urllib.error.HTTPError as error:
            assert error.code == 422
            assert "the limit is 3" in json.load(error)["detail"]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0


def test_bad_option_is_a_usage_error() -> None:
    cases: list[tuple[list[str], dict[str, str]]] = [
        (["--port", "x"], {}),
        (["--delay-scale", "nan"], {}),
        (["--max-queue", "-1"], {}),
        ([], {"WORKTASK_DELAY_SCALE": "fast"}),
        ([], {"WORKTASK_RESULT_TTL": "inf"}),
    ]
    for args, env in cases:
        result = subprocess.run(
            [sys.executable, "-m", "worktask.server", *args],
            env=clean_env(**env),
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "invalid" in result.stderr


def test_server_py_runs_from_the_checkout() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0
    assert "--delay-scale" in result.stdout and "WORKTASK_" in result.stdout


def test_sigterm_mid_task_exits_zero_within_two_seconds(start_server: StartServer) -> None:
    server = start_server(scale=1.0)
    call(f"{server.url}/tasks", "POST", {"type": 3, "data": "долго"})
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 2.0


def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_status_request_with_a_body_or_http_1_0_is_answered(start_server: StartServer) -> None:
    server = start_server()
    with_body = exchange(
        server.port,
        b"GET /tasks/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    assert with_body.startswith(b"HTTP/1.1 404 ") and b"no task with id 1" in with_body
    old = exchange(server.port, b"GET /tasks/1 HTTP/1.0\r\n\r\n")
    assert b" 404 " in old.split(b"\r\n")[0] and b"application/problem+json" in old


def test_submissions_of_every_shape_are_answered_alike(start_server: StartServer) -> None:
    server = start_server(scale=1.0)
    short = json.dumps({"type": 1, "data": "abc"}).encode()
    long = json.dumps({"type": 1, "data": "я" * 3000}).encode()
    head = b"POST /tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(short), short)
    answers = [
        exchange(server.port, head + b"Content-Length: %d\r\n\r\n%s" % (len(short), short)),
        exchange(server.port, head + b"Content-Length: %d\r\n\r\n%s" % (len(long), long)),
        exchange(server.port, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked),
        exchange(server.port, head + b"Content-Length: 3\r\n\r\n{{{"),
        exchange(server.port, head + b'Content-Length: 21\r\n\r\n{"type":9,"data":"x"}'),
    ]
    firsts = [answer.split(b"\r\n")[0] for answer in answers]
    assert firsts[:3] == [b"HTTP/1.1 201 Created"] * 3
    assert [b"location: /tasks/%d" % n in answers[n - 1] for n in (1, 2, 3)] == [True] * 3
    assert firsts[3].startswith(b"HTTP/1.1 400 ") and b"not valid JSON" in answers[3]
    assert firsts[4].startswith(b"HTTP/1.1 422 ") and b"valid types" in answers[4]
    assert all(b"x-worktask-instance: " in answer for answer in answers)
