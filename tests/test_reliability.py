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


# -- access control --------------------------------------------------------------------------

TOKEN = "s3cret-token"
PROTECTED = (
    ("POST", "/tasks"),
    ("GET", "/tasks"),
    ("GET", "/tasks/1"),
    ("GET", "/tasks/1/result"),
    ("GET", "/tasks/1/events"),
    ("DELETE", "/tasks/1"),
    ("GET", "/task-types"),
    ("GET", "/events"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/tasks/999"),
    ("GET", "/nowhere"),
)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_token_is_required_everywhere_but_healthz(launch: Launch, how: str) -> None:
    server = launch("--token", TOKEN) if how == "flag" else launch(env={"WORKTASK_TOKEN": TOKEN})
    good = {"Authorization": f"Bearer {TOKEN}"}
    wrongs: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ]
    body = {"type": "reverse", "data": "abc"}
    for method, path in PROTECTED:
        for headers in wrongs:
            reply = server.request(method, path, body if method == "POST" else None, headers)
            assert_problem(reply, 401)
            assert reply.headers["www-authenticate"].startswith("Bearer"), (method, path)
            assert "x-worktask-instance" in reply.headers
    assert server.request("GET", "/tasks/1", headers=good).status == 404  # nothing was stored
    assert server.request("GET", "/healthz").status == 200
    assert server.request("GET", "/healthz", headers={"Authorization": "Bearer x"}).status == 200
    created = server.request("POST", "/tasks", body, good)
    assert created.status == 201, created
    assert created.json()["id"] == 1
    deadline = time.monotonic() + 10
    while server.request("GET", "/tasks/1", headers=good).json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for method, path in PROTECTED:
        if (method, path) in (("POST", "/tasks"), ("GET", "/events")):
            continue
        reply = server.request(method, path, None, good)
        assert reply.status != 401, (method, path, reply)
        if path not in ("/tasks/999", "/nowhere", "/tasks/1"):
            assert reply.status == 200 or method == "DELETE", (method, path, reply)
    assert server.request("GET", "/tasks/1/result", headers=good).json()["result"] == "cba"


def test_protected_mode_refuses_a_public_address_without_token(tmp_path: Path) -> None:
    started = time.monotonic()
    proc, _port, log = spawn(tmp_path, "--host", "0.0.0.0", "--delay-scale", "0")
    try:
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    took = time.monotonic() - started
    message = log.read_text()
    assert code != 0, message
    assert took < 5, took
    assert "--token" in message and "--insecure" in message, message
    assert "Traceback" not in message, message


@pytest.mark.parametrize("extra", [["--insecure"], ["--token", TOKEN]])
def test_protected_mode_allows_a_public_address_with_insecure_or_token(
    tmp_path: Path, extra: list[str]
) -> None:
    proc, port, log = spawn(tmp_path, "--host", "0.0.0.0", "--delay-scale", "0", *extra)
    server = Server(proc, port, log)
    try:
        wait_ready(server)  # connects through 127.0.0.1 only
        assert server.health()["status"] == "ok"
        assert server.stop() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# -- hostile and careless clients ------------------------------------------------------------


def open_idle(port: int, count: int, payload: bytes = b"") -> list[socket.socket]:
    """`count` connections that send `payload` (maybe nothing) and then nothing more."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=10)
        if payload:
            sock.sendall(payload)
        sockets.append(sock)
    return sockets


def abort(sock: socket.socket) -> None:
    """Close with a reset, as a killed client's kernel would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def timed(server: Server, method: str, path: str, body: Any = None) -> tuple[float, Reply]:
    started = time.perf_counter()
    reply = server.request(method, path, body, timeout=5)
    return time.perf_counter() - started, reply


def wait_fds(server: Server, at_most: int, timeout: float) -> tuple[int, float]:
    """Poll the server's open descriptors until there are at most `at_most`."""
    started = time.monotonic()
    while True:
        count = server.fds()
        took = time.monotonic() - started
        if count <= at_most or took > timeout:
            return count, took
        time.sleep(0.05)


HALF_REQUESTS = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # headers never end
    b"GET /tasks/1 HT",
    b'POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"type": 1, ',  # body short
)


def test_1500_silent_connections_do_not_stop_others_being_served(launch: Launch) -> None:
    server = launch()
    baseline = server.fds()
    hostile = open_idle(server.port, 1_500)
    for payload in HALF_REQUESTS:
        hostile += open_idle(server.port, 100, payload)
    try:
        deadline = time.monotonic() + 10  # until the server has accepted them all
        while server.fds() < baseline + 1_790 and time.monotonic() < deadline:
            time.sleep(0.05)
        held = server.fds()
        assert held >= baseline + 1_790, (baseline, held)
        timings = []
        for n in range(20):
            took, reply = timed(server, "GET", "/healthz")
            assert reply.status == 200
            timings.append(took)
            took, reply = timed(server, "POST", "/tasks", {"type": "reverse", "data": f"t{n}"})
            assert reply.status == 201, reply
            timings.append(took)
        timings.sort()
        print(
            f"\n1,800 hostile connections, fds {baseline} -> {held}: answers in "
            f"median {timings[20] * 1000:.1f} ms, max {timings[-1] * 1000:.1f} ms"
        )
        assert timings[20] < 0.05, timings
        assert timings[-1] < 0.1, timings
    finally:
        for sock in hostile:
            sock.close()


def test_silent_and_incomplete_connections_are_closed_after_timeout_request(
    launch: Launch,
) -> None:
    server = launch("--timeout-request", "1")
    baseline = server.fds()
    hostile = open_idle(server.port, 300)
    for payload in HALF_REQUESTS:
        hostile += open_idle(server.port, 50, payload)
    slow = [sock for sock in hostile]
    try:
        started = time.monotonic()
        for sock in slow:
            sock.settimeout(max(0.1, started + 4 - time.monotonic()))
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                data = b""
            except TimeoutError:
                pytest.fail(
                    f"a silent connection was still open after {time.monotonic() - started:.1f} s"
                )
            assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        took = time.monotonic() - started
        count, _ = wait_fds(server, baseline + 5, 3)
        print(f"\n450 silent connections closed within {took:.1f} s; fds {baseline} -> {count}")
        assert count <= baseline + 5, (baseline, count)
        _, reply = timed(server, "GET", "/healthz")
        assert reply.status == 200
    finally:
        for sock in hostile:
            sock.close()


def test_a_slow_request_is_not_cut_while_it_is_answered(launch: Launch) -> None:
    """The request deadline is for arriving requests; a long event stream stays open."""
    server = launch("--timeout-request", "1", delay_scale=1)
    assert server.submit("reverse", "abc").status == 201  # runs 2 s: longer than the deadline
    sock = socket.create_connection((HOST, server.port), timeout=5)
    sock.sendall(b"GET /tasks/1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    received = read_until(sock, b'"status":"done"', timeout=5)
    sock.close()
    assert b'"status":"done"' in received, received


def read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    """Read until `marker` has arrived, the peer closes, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    received = b""
    while marker not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        received += chunk
    return received


def test_too_many_connections_get_a_clear_503_not_a_hang(launch: Launch) -> None:
    server = launch("--max-connections", "50")
    hostile = open_idle(server.port, 60)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            took, reply = timed(server, "GET", "/healthz")
            if reply.status == 503:
                break
            time.sleep(0.05)
        assert reply.status == 503, reply
        assert took < 0.5
        assert reply.headers["content-type"].startswith(PROBLEM), reply
        assert "retry-after" in reply.headers, reply.headers
    finally:
        for sock in hostile:
            sock.close()
    deadline = time.monotonic() + 5
    while server.request("GET", "/healthz").status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_vanished_event_stream_clients_leave_no_descriptors(launch: Launch) -> None:
    server = launch(delay_scale=10)
    hold_executor(server, 10)
    assert server.submit("reverse", "waited on").json()["id"] == 2
    baseline = server.fds()
    streams = []
    for _ in range(200):
        sock = socket.create_connection((HOST, server.port), timeout=5)
        sock.sendall(b"GET /tasks/2/events HTTP/1.1\r\nHost: x\r\n\r\n")
        streams.append(sock)
    for sock in streams:
        assert b"event: status" in read_until(sock, b"event: status", 5)
    during = server.fds()
    assert during >= baseline + 190, (baseline, during)
    for sock in streams:
        abort(sock)
    after, took = wait_fds(server, baseline + 3, 12)
    print(f"\n200 event streams: fds {baseline} -> {during} -> {after} within {took:.1f} s")
    assert after <= baseline + 3, (baseline, during, after)
    # and clients killed in the middle of a request body
    partial = open_idle(server.port, 100, HALF_REQUESTS[2])
    time.sleep(0.2)
    for sock in partial:
        abort(sock)
    after, took = wait_fds(server, baseline + 3, 12)
    assert after <= baseline + 3, (baseline, after)
    assert server.health()["queued"] == 1  # the half-sent submissions stored nothing
    assert server.request("GET", "/tasks/3").status == 404


def test_slow_readers_of_a_large_result_do_not_grow_memory_without_bound(
    launch: Launch,
) -> None:
    server = launch()
    assert server.submit("repeat", BIG_DATA).status == 201
    server.wait_idle()
    size = len(server.request("GET", "/tasks/1/result").body)
    time.sleep(0.2)
    before = server.rss_mb()
    readers = []
    for _ in range(50):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((HOST, server.port))
        sock.sendall(b"GET /tasks/1/result HTTP/1.1\r\nHost: x\r\n\r\n")
        readers.append(sock)
    try:
        time.sleep(1.0)
        during = server.rss_mb()
        took, reply = timed(server, "GET", "/healthz")
        assert reply.status == 200 and took < 0.1
        for sock in readers[:5]:  # they are being answered, just slowly read
            assert read_until(sock, b"\r\n\r\n", 2).startswith(b"HTTP/1.1 200")
    finally:
        for sock in readers:
            abort(sock)
    growth = during - before
    print(f"\n50 slow readers of a {size / 1e6:.1f} MB result: RSS {before:.0f} -> {during:.0f} MB")
    # measured: ~5-10 MB; 50 buffered copies of the result would be 100 MB
    assert growth < 40, f"RSS grew by {growth:.0f} MB"
    after, _ = wait_fds(server, 20, 5)
    assert after <= 20, after


# -- shutdown and restarts -------------------------------------------------------------------


def open_stream(server: Server, task_id: int) -> socket.socket:
    """An events stream whose first status event has arrived."""
    sock = socket.create_connection((HOST, server.port), timeout=5)
    sock.sendall(f"GET /tasks/{task_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    first = read_until(sock, b"event: status", 5)
    assert first.startswith(b"HTTP/1.1 200") and b"event: status" in first, first
    return sock


def read_to_end(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything until the peer closes or the chunked body ends; and whether it did end."""
    deadline = time.monotonic() + timeout
    received = b""
    while not received.endswith(b"0\r\n\r\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return received, False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_ends_every_stream_with_a_shutdown_event_and_exits_0_within_2_s(
    launch: Launch, sig: signal.Signals
) -> None:
    server = launch(delay_scale=10)
    running = hold_executor(server, 10)  # in the middle of a running task
    for n in range(5):
        assert server.submit("reverse", f"queued {n}").status == 201
    # 20 clients: on the running task and on queued ones; plus an idle keep-alive connection
    streams = [open_stream(server, running if n % 4 == 0 else 2 + n % 5) for n in range(20)]
    idle = server.connect()
    assert server.request("GET", "/healthz", conn=idle).status == 200
    started = time.monotonic()
    server.proc.send_signal(sig)
    for sock in streams:
        rest, ended = read_to_end(sock, 3)
        assert ended, rest
        assert b"event: shutdown" in rest, rest
        assert rest.rstrip().endswith(b"0"), rest  # the chunked stream was ended properly
        sock.close()
    code = server.proc.wait(timeout=5)
    took = time.monotonic() - started
    idle.close()
    log = server.output()
    assert code == 0, log
    assert took < 2, f"exited after {took:.2f} s"
    assert "Traceback" not in log, log


def test_signal_with_requests_half_sent_still_exits_0_quietly_within_2_s(launch: Launch) -> None:
    server = launch(delay_scale=10)
    hold_executor(server, 10)
    hostile = open_idle(server.port, 50)
    for payload in HALF_REQUESTS:
        hostile += open_idle(server.port, 20, payload)
    time.sleep(0.3)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=5)
    took = time.monotonic() - started
    for sock in hostile:
        sock.close()
    log = server.output()
    assert code == 0, log
    assert took < 2, f"exited after {took:.2f} s"
    assert "Traceback" not in log, log[:3000]


def test_ids_restart_at_1_and_the_instance_changes(tmp_path: Path) -> None:
    port = free_port()
    seen: list[tuple[str, str]] = []
    for _ in range(2):
        proc, _, log = spawn(tmp_path, "--delay-scale", "0", port=port)
        server = Server(proc, port, log)
        try:
            wait_ready(server)
            created = server.submit("reverse", "abc")
            assert created.status == 201
            assert created.json()["id"] == 1
            header = created.headers["x-worktask-instance"]
            health = server.request("GET", "/healthz")
            assert health.headers["x-worktask-instance"] == header
            assert health.json()["instance"] == header
            missing = server.request("GET", "/tasks/7")
            assert missing.headers["x-worktask-instance"] == header  # on errors too
            seen.append((header, health.json()["instance"]))
            assert server.stop() == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert seen[0][0] != seen[1][0]
    assert len(seen[0][0]) >= 8


# -- observability ---------------------------------------------------------------------------


def test_healthz_reports_instance_queue_and_running_task(launch: Launch) -> None:
    server = launch(delay_scale=10)
    idle = server.health()
    assert idle["status"] == "ok"
    assert idle["queued"] == 0 and idle["running"] is None
    assert isinstance(idle["instance"], str) and idle["instance"]
    running = hold_executor(server, 10)
    server.submit("reverse", "one")
    server.submit("swap", "two")
    busy = server.health()
    assert busy["instance"] == idle["instance"]
    assert busy["queued"] == 2
    assert busy["running"]["id"] == running
    assert busy["running"]["status"] == "running"
    assert 0 <= busy["running"]["progress"] <= 1


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Server) -> tuple[dict[str, str], Samples]:
    """The metric families (name -> type) and every sample of /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    reply = server.request("GET", "/metrics")
    assert reply.status == 200, reply
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    families: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        families[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    return sum(
        v for (n, found), v in samples.items() if n == name and set(labels.items()) <= set(found)
    )


def test_metrics_expose_the_families_and_count_tasks_and_requests(launch: Launch) -> None:
    server = launch(delay_scale=10)
    families, _ = scrape(server)
    assert families == families | {
        "worktask_tasks_submitted": "counter",
        "worktask_tasks_finished": "counter",
        "worktask_queue_depth": "gauge",
        "worktask_running_task_age_seconds": "gauge",
        "worktask_task_duration_seconds": "histogram",
        "worktask_http_requests": "counter",
        "worktask_http_request_duration_seconds": "histogram",
    }, families
    running = hold_executor(server, 10)
    server.submit("swap", "queued")
    time.sleep(0.3)
    _, during = scrape(server)
    assert value(during, "worktask_tasks_submitted_total", type="repeat") == 1
    assert value(during, "worktask_tasks_submitted_total", type="swap") == 1
    assert value(during, "worktask_queue_depth") == 1
    assert value(during, "worktask_running_task_age_seconds") >= 0.2
    server.request("DELETE", f"/tasks/{running}")
    server.request("DELETE", "/tasks/2")
    for n in range(3):
        server.request("GET", f"/tasks/{100 + n}")  # 404s, under one route label
    _, after = scrape(server)
    assert value(after, "worktask_tasks_finished_total", type="repeat", status="cancelled") == 1
    assert value(after, "worktask_tasks_finished_total", type="swap", status="cancelled") == 1
    assert value(after, "worktask_queue_depth") == 0
    assert value(after, "worktask_running_task_age_seconds") == 0
    assert value(after, "worktask_task_duration_seconds_count") >= 1
    assert value(after, "worktask_http_requests_total", route="/tasks/{id}", status="404") == 3
    assert value(after, "worktask_http_requests_total", route="/tasks", status="201") == 2
    assert value(after, "worktask_http_requests_total", route="/metrics", status="200") >= 2
    assert value(after, "worktask_http_request_duration_seconds_count", route="/tasks/{id}") >= 3
    routes = {dict(labels).get("route") for name, labels in after if "http" in name}
    assert not any(r and any(c.isdigit() for c in r) for r in routes), routes  # no ids in labels


# -- the client against a stopping or restarted server (issue 3's client side) -------------


def cli(port: int, *args: str, **popen: Any) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "worktask", "--server", f"http://{HOST}:{port}", *args]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WORKTASK_")}
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        **popen,
    )


def test_waiting_cli_exits_1_with_one_clear_line_when_the_server_stops(launch: Launch) -> None:
    server = launch(delay_scale=10)
    hold_executor(server, 10)
    clients = [cli(server.port, "call", "-c", "1", "-a", f"text {n}", "-p") for n in range(3)]
    deadline = time.monotonic() + 10  # until every client waits on its stream
    while server.health()["queued"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    for client in clients:
        stdout, stderr = client.communicate(timeout=10)
        assert client.returncode == 1, (client.returncode, stdout, stderr)
        assert stdout == "", stdout
        assert "Traceback" not in stderr, stderr
        assert "shut" in stderr.lower(), stderr
    assert server.proc.wait(5) == 0


def test_client_says_the_task_was_lost_when_the_server_restarted(tmp_path: Path) -> None:
    from worktask.client import Client, TaskLost

    port = free_port()
    proc, _, log = spawn(tmp_path, "--delay-scale", "0", port=port)
    first = Server(proc, port, log)
    wait_ready(first)
    client = Client(f"http://{HOST}:{port}", timeout=5)
    try:
        assert client.submit("reverse", "mine").id == 1
        assert first.stop() == 0
        proc, _, log = spawn(tmp_path, "--delay-scale", "0", port=port)
        second = Server(proc, port, log)
        try:
            wait_ready(second)
            assert second.submit("reverse", "somebody else's").json()["id"] == 1
            with pytest.raises(TaskLost, match="restart"):
                client.result(1)
            with pytest.raises(TaskLost):
                client.status(1)
        finally:
            second.stop()
    finally:
        client.close()
        if first.proc.poll() is None:
            first.proc.kill()
