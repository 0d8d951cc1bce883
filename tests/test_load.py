"""Load: 1,000 submissions from 25 concurrent keep-alive clients against the real server.

All are accepted, each is executed exactly once, in id order, with the right result, and
nothing answers 5xx.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
CLIENTS = 25
PER_CLIENT = 40  # 25 x 40 = 1,000 submissions


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def call(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    payload = None if body is None else json.dumps(body, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    conn.request(method, path, payload, headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else None


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    command = [sys.executable, "-m", "worktask.server", "--port", str(port)]
    command += ["--delay-scale", "0", "--max-queue", "5000", "--log-level", "warning"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WORKTASK_")}
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environ)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=1)
                if call(conn, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            assert proc.wait(5) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()


def unique_text(client: int, n: int) -> str:
    """Different for every submission, with Cyrillic and no combining characters."""
    return f"клиент {client:02d} задача {n:03d} · abc-{client * 1000 + n}"


def submit_concurrently(port: int) -> tuple[dict[int, str], list[str]]:
    """1,000 submissions from 25 threads, each on its own keep-alive connection."""
    sent: dict[int, str] = {}  # id -> data
    failures: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(CLIENTS)

    def client(number: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            ready.wait(10)
            for n in range(PER_CLIENT):
                data = unique_text(number, n)
                status, body = call(conn, "POST", "/tasks", {"type": "reverse", "data": data})
                with lock:
                    if status == 201 and body["id"] not in sent:
                        sent[body["id"]] = data
                    else:
                        failures.append(f"{status}: {body}")
        except Exception as error:
            with lock:
                failures.append(repr(error))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    return sent, failures


def wait_idle(conn: http.client.HTTPConnection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        health = call(conn, "GET", "/healthz")[1]
        if health["queued"] == 0 and health["running"] is None:
            return
        assert time.monotonic() < deadline, health
        time.sleep(0.02)


def check_executions(conn: http.client.HTTPConnection, sent: dict[int, str]) -> None:
    """Each task done once, one after the other in id order, with its own result."""
    previous_started = previous_finished = ""
    for task_id in range(1, len(sent) + 1):
        status, task = call(conn, "GET", f"/tasks/{task_id}")
        assert status == 200, task
        assert task["status"] == "done", task
        assert task["started_at"] >= task["created_at"], task
        assert task["started_at"] >= previous_started, (task_id, task, previous_started)
        assert task["started_at"] >= previous_finished, (task_id, task, previous_finished)
        assert task["finished_at"] >= task["started_at"], task
        previous_started, previous_finished = task["started_at"], task["finished_at"]
        status, answer = call(conn, "GET", f"/tasks/{task_id}/result")
        assert status == 200, answer
        assert answer == {"id": task_id, "result": sent[task_id][::-1]}
    listed = call(conn, "GET", f"/tasks?limit={len(sent)}")[1]
    assert [t["id"] for t in listed] == list(range(len(sent), 0, -1))


def check_metrics(conn: http.client.HTTPConnection, count: int) -> None:
    """The counters agree: `count` submitted and done, once each, and not one 5xx."""
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    text = response.read().decode()
    assert response.status == 200, text
    assert f'worktask_tasks_submitted_total{{type="reverse"}} {count}.0' in text
    assert f'worktask_tasks_finished_total{{status="done",type="reverse"}} {count}.0' in text
    finished = [line for line in text.splitlines() if line.startswith("worktask_tasks_finished")]
    assert len([line for line in finished if "_total" in line]) == 1, finished
    server_errors = [
        line
        for line in text.splitlines()
        if line.startswith("worktask_http_requests_total") and 'status="5' in line
    ]
    assert server_errors == [], server_errors


def test_1000_submissions_from_25_clients_run_once_each_in_order(port: int) -> None:
    started = time.monotonic()
    sent, failures = submit_concurrently(port)
    submitted = time.monotonic() - started
    assert failures == [], failures[:5]
    assert sorted(sent) == list(range(1, CLIENTS * PER_CLIENT + 1))  # all 201, ids 1..1000
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        wait_idle(conn, 20)
        executed = time.monotonic() - started
        check_executions(conn, sent)
        check_metrics(conn, len(sent))
    finally:
        conn.close()
    print(f"\n1,000 submissions by 25 clients in {submitted:.1f} s, executed in {executed:.1f} s")
    assert executed < 20
