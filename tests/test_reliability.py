"""Reliability and security, end to end against the real server process (issue 3).

Bounded memory with honest answers, access control, hostile and careless clients, clean
shutdown, restarts and observability. Every test starts its own `worktask.server` on a free
port, talks to it over plain sockets or `http.client`, and reads its memory and file
descriptors from `/proc`. Every wait is a bounded poll.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
BIG_DATA = (CYRILLIC * 50)[:1413]  # the largest repeat the default limits admit: ~2 MB of result
PROBLEM = "application/problem+json"


# -- the live server -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    """A `worktask.server` subprocess on a free port."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def connect(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        conn: http.client.HTTPConnection | None = None,
    ) -> Reply:
        own = conn is None
        conn = conn or self.connect(timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            sent = dict(headers or {})
            if payload is not None:
                sent.setdefault("Content-Type", "application/json")
            conn.request(method, path, payload, sent)
            response = conn.getresponse()
            data = response.read()
            names = {k.lower(): v for k, v in response.getheaders()}
            return Reply(response.status, names, data)
        finally:
            if own:
                conn.close()

    def submit(self, type_: str | int, data: str, **kwargs: Any) -> Reply:
        return self.request("POST", "/tasks", {"type": type_, "data": data}, **kwargs)

    def health(self) -> dict[str, Any]:
        reply = self.request("GET", "/healthz")
        assert reply.status == 200, reply
        result: dict[str, Any] = reply.json()
        return result

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until nothing is queued or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if health["queued"] == 0 and health["running"] is None:
                return
            time.sleep(0.02)
        raise AssertionError(f"the server did not become idle within {timeout} s")

    def wait_status(self, task_id: int, wanted: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            reply = self.request("GET", f"/tasks/{task_id}")
            if reply.status == 200 and reply.json()["status"] == wanted:
                found: dict[str, Any] = reply.json()
                return found
            assert time.monotonic() < deadline, f"task {task_id} never {wanted}: {reply}"
            time.sleep(0.01)

    def proc_status(self, field: str) -> int:
        """A field of /proc/PID/status, in kB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def rss_mb(self) -> float:
        return self.proc_status("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return self.proc_status("VmHWM") / 1024

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def spawn(
    tmp: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port() if port is None else port
    log = tmp / f"server-{port}-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "worktask.server", "--port", str(port), *args]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WORKTASK_")}
    environ.update(env or {})
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environ)
    return proc, port, log


def wait_ready(server: Server, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"the server exited {server.proc.returncode}: {server.output()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if server.request("GET", "/healthz", timeout=1).status == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"the server did not answer /healthz within {timeout} s")


Launch = Callable[..., Server]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start servers (`launch("--max-queue", "3", delay_scale=1)`); all stop at teardown."""
    started: list[Server] = []

    def run(*args: str, delay_scale: float = 0, env: dict[str, str] | None = None) -> Server:
        flags = ["--delay-scale", str(delay_scale), "--log-level", "warning", *args]
        proc, port, log = spawn(tmp_path, *flags, env=env)
        server = Server(proc, port, log)
        started.append(server)
        wait_ready(server)
        return server

    yield run
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(5)


def assert_problem(reply: Reply, status: int, *words: str) -> dict[str, Any]:
    assert reply.status == status, reply
    assert reply.headers["content-type"].startswith(PROBLEM), reply.headers
    body: dict[str, Any] = reply.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["type"], str)
    for word in words:
        assert word in body["detail"], body
    return body


def hold_executor(server: Server, seconds_scale: float) -> int:
    """Submit a task that runs for a long time; returns its id once it is running."""
    reply = server.submit("repeat", "x")
    assert reply.status == 201, reply
    task_id: int = reply.json()["id"]
    server.wait_status(task_id, "running")
    return task_id


# -- bounded memory --------------------------------------------------------------------------


def test_full_queue_is_refused_with_503_and_retry_after_and_nothing_is_stored(
    launch: Launch,
) -> None:
    server = launch("--max-queue", "3", delay_scale=10)  # repeat runs 70 s, reverse 20 s
    running = hold_executor(server, 10)
    for expected in (2, 3, 4):
        reply = server.submit("reverse", f"queued {expected}")
        assert reply.status == 201, reply
        assert reply.json()["id"] == expected
    refused = server.submit("reverse", "one too many")
    body = assert_problem(refused, 503)
    retry = refused.headers.get("retry-after", "")
    assert retry.isdigit(), refused.headers
    # from the known durations: what is left of the running repeat (70 s) plus 3 x 20 s
    assert 60 <= int(retry) <= 131, retry
    assert body.get("retry_after") == int(retry)
    assert server.health()["queued"] == 3
    assert server.request("GET", "/tasks/5").status == 404  # nothing stored
    listed = server.request("GET", "/tasks").json()
    assert [t["id"] for t in listed] == [4, 3, 2, 1]
    for task_id in (running, 2, 3, 4):  # drain the queue
        assert server.request("DELETE", f"/tasks/{task_id}").status == 200
    server.wait_idle()
    accepted = server.submit("reverse", "after the drain")
    assert accepted.status == 201, accepted
    assert accepted.json()["id"] == 5  # the refused submission took no id


def test_queued_data_budget_is_refused_with_503(launch: Launch) -> None:
    server = launch("--max-queue-mb", "1", delay_scale=10)
    hold_executor(server, 10)
    chunk = CYRILLIC * (100_000 // len(CYRILLIC))  # ~200 kB in memory each
    statuses = [server.submit("reverse", chunk).status for _ in range(8)]
    assert statuses.count(201) >= 3, statuses
    assert 503 in statuses, statuses
    first_refused = statuses.index(503)
    assert set(statuses[first_refused:]) == {503}, statuses
    refused = server.submit("reverse", chunk)
    assert_problem(refused, 503, "MB")
    assert refused.headers.get("retry-after", "").isdigit()
    assert server.submit("reverse", "small").status == 201  # a small one still fits


def assert_expired(server: Server, task_id: int, finished_at: str | None = None) -> None:
    """Every endpoint answers 410 Gone for an evicted id, saying when and that it expired."""
    for method, path in (
        ("GET", f"/tasks/{task_id}"),
        ("GET", f"/tasks/{task_id}/result"),
        ("GET", f"/tasks/{task_id}/events"),
        ("DELETE", f"/tasks/{task_id}"),
    ):
        reply = server.request(method, path, timeout=5)
        body = assert_problem(reply, 410, "expired")
        if finished_at is not None:
            assert finished_at in body["detail"], (method, path, body)


def assert_never_issued(server: Server, task_id: int | str) -> None:
    for method, path in (
        ("GET", f"/tasks/{task_id}"),
        ("GET", f"/tasks/{task_id}/result"),
        ("GET", f"/tasks/{task_id}/events"),
        ("DELETE", f"/tasks/{task_id}"),
    ):
        reply = server.request(method, path, timeout=5)
        assert reply.status in (404, 422), (method, path, reply)
        assert reply.headers["content-type"].startswith(PROBLEM), (method, path, reply)
        if str(task_id).isdigit() and 0 < int(task_id) < 2**63:
            assert reply.status == 404, (method, path, reply)


def test_eviction_by_keep_finished_answers_410_and_never_issued_stays_404(
    launch: Launch,
) -> None:
    server = launch("--keep-finished", "2")
    for n in range(1, 5):
        assert server.submit("reverse", f"task {n}").json()["id"] == n
    server.wait_idle()
    assert_expired(server, 1)
    assert_expired(server, 2)
    for kept in (3, 4):
        assert server.request("GET", f"/tasks/{kept}").json()["status"] == "done"
        assert server.request("GET", f"/tasks/{kept}/result").json()["result"] == f"{kept} ksat"
    for never in (5, 999, 2**62):
        assert_never_issued(server, never)
    for bad in ("0", "-1", "abc", "1.5", "9" * 20):
        assert_never_issued(server, bad)


def test_eviction_by_result_ttl(launch: Launch) -> None:
    server = launch("--result-ttl", "0.5")
    assert server.submit("swap", "пример").json()["id"] == 1
    done = server.wait_status(1, "done")
    assert server.request("GET", "/tasks/1/result").json()["result"] == "рпмире"
    started = time.monotonic()
    deadline = started + 5  # the TTL plus the sweep period, with a margin
    while server.request("GET", "/tasks/1").status != 410:
        assert time.monotonic() < deadline, "task 1 outlived its TTL of 0.5 s by 4.5 s"
        time.sleep(0.05)
    assert_expired(server, 1, done["finished_at"])
    assert_never_issued(server, 2)


def test_eviction_by_results_budget(launch: Launch) -> None:
    # each repeat of 1,413 Cyrillic characters keeps ~2 MB of result: 5 MB holds two
    server = launch("--results-budget-mb", "5")
    for n in (1, 2, 3):
        assert server.submit("repeat", BIG_DATA).json()["id"] == n
    server.wait_idle()
    assert_expired(server, 1)
    for kept in (2, 3):
        result = server.request("GET", f"/tasks/{kept}/result").json()["result"]
        assert len(result) == 1413 * 1414 // 2
        assert result.startswith(BIG_DATA[0] + BIG_DATA[1] * 2 + BIG_DATA[2] * 3)
    assert_never_issued(server, 4)


def test_memory_stays_under_700_mb_with_300_large_results(launch: Launch) -> None:
    server = launch()  # the default limits
    baseline = server.rss_mb()
    started = time.monotonic()
    conn = server.connect(timeout=30)
    for n in range(1, 301):
        reply = server.submit("repeat", BIG_DATA, conn=conn)
        assert reply.status == 201, reply
        if n % 50 == 0:  # read some of the large results too, as clients would
            server.wait_status(n, "done", timeout=30)
            fetched = server.request("GET", f"/tasks/{n}/result", conn=conn)
            assert fetched.status == 200
            assert len(fetched.body) > 1_900_000
    conn.close()
    server.wait_idle(timeout=60)
    took = time.monotonic() - started
    rss, peak = server.rss_mb(), server.peak_rss_mb()
    print(f"\n300 repeat tasks: {took:.1f} s, RSS {baseline:.0f} -> {rss:.0f} MB, peak {peak:.0f}")
    assert peak < 700, f"peak RSS {peak:.0f} MB"
    assert rss < 700, f"RSS {rss:.0f} MB"
    assert server.request("GET", "/tasks/300/result").status == 200
    assert_expired(server, 1)  # the budget of 256 MB cannot hold 300 x 2 MB
