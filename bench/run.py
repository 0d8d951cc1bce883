"""`make bench`: every figure of the performance issue, beside a reference, in one table.

The real server runs as users run it (`python -m worktask.server`: one process, uvloop,
httptools, no access log) pinned to core 0; wrk and the Python clients run on core 1. Each
figure is the median of 3 runs. The table goes to stdout and, with the machine and the
versions, to `bench/results.json`, and in markdown to the README's Performance section.

Run: `make bench` (or `.venv/bin/python bench/run.py [--quick]`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http.client
import itertools
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import uvloop

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
SERVER_CORE, CLIENT_CORE = 0, 1
RUNS = 3
WRK_SECONDS = 5
CONNECTIONS = 64
DATA_100 = "x" * 100


# -- results ----------------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the table."""

    name: str
    unit: str
    target: str
    check: Callable[[float, float | None], bool] = field(repr=False)
    runs: list[float] = field(default_factory=list)
    reference_runs: list[float] = field(default_factory=list)
    reference_name: str = ""
    note: str = ""
    error: str = ""

    @property
    def value(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    @property
    def reference(self) -> float | None:
        return statistics.median(self.reference_runs) if self.reference_runs else None

    @property
    def ratio(self) -> float | None:
        value, reference = self.value, self.reference
        if value is None or not reference:
            return None
        return value / reference

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.check(self.value, self.ratio)

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.name,
            "unit": self.unit,
            "value": self.value,
            "reference": self.reference,
            "reference_is": self.reference_name,
            "ratio": self.ratio,
            "target": self.target,
            "pass": self.passed,
            "runs": self.runs,
            "reference_runs": self.reference_runs,
            "note": self.note,
            "error": self.error,
        }


def figures() -> dict[str, Figure]:
    ref_server = "reference server"
    py = "python -c pass"
    rows = [
        Figure(
            "get_rps",
            "req/s",
            "≥ 0.25 × ref and ≥ 15,000",
            lambda v, r: v >= 15_000 and (r or 0) >= 0.25,
            reference_name=ref_server,
        ),
        Figure("get_p99", "ms", "≤ 5 ms", lambda v, r: v <= 5, reference_name=ref_server),
        Figure(
            "post_rps",
            "req/s",
            "≥ 0.2 × ref and ≥ 10,000",
            lambda v, r: v >= 10_000 and (r or 0) >= 0.2,
            reference_name=ref_server,
        ),
        Figure(
            "final_event_p99_1",
            "ms",
            "≤ 5 ms",
            lambda v, r: v <= 5,
            reference_name=ref_server,
        ),
        Figure(
            "final_event_p99_1000",
            "ms",
            "≤ 50 ms",
            lambda v, r: v <= 50,
            reference_name=ref_server,
        ),
        Figure("cli_get", "ms", "≤ 5 × ref", lambda v, r: (r or 99) <= 5, reference_name=py),
        Figure("cli_batch", "ms", "≤ 6 × ref", lambda v, r: (r or 99) <= 6, reference_name=py),
        Figure("gap_p99", "ms", "≤ 1 ms", lambda v, r: v <= 1),
        Figure("submit_to_start_p99", "ms", "≤ 2 ms", lambda v, r: v <= 2),
        Figure(
            "rss_10k_streams", "MB", "≤ 250 MB", lambda v, r: v <= 250, reference_name=ref_server
        ),
        Figure("bytes_per_queued_task", "B", "≤ 600 B", lambda v, r: v <= 600),
    ]
    return {row.name: row for row in rows}


LABELS = {
    "get_rps": "GET /tasks/{id} while a task executes, 64 conns",
    "get_p99": "GET /tasks/{id} p99 latency",
    "post_rps": "POST /tasks, 64 conns",
    "final_event_p99_1": "task end → final event, 1 waiter, p99",
    "final_event_p99_1000": "task end → final event, 1,000 waiters, p99",
    "cli_get": "CLI `worktask get -i ID -s`, median wall",
    "cli_batch": "CLI `worktask call -c 1 -a x -p`, scale 0, median wall",
    "gap_p99": "gap task end → next start, 1,000 tasks, p99",
    "submit_to_start_p99": "submit → start on an idle server, p99",
    "rss_10k_streams": "server RSS with 10,000 open event streams",
    "bytes_per_queued_task": "memory per queued task (100-char data)",
}


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A server process pinned to the server's core, stopped on exit."""

    def __init__(self, argv: Sequence[str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CORE), *argv],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid  # taskset execs the program: same pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"{argv} exited: {err}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{argv} did not listen on port {port}")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


@contextlib.contextmanager
def real_server(**options: Any) -> Iterator[Process]:
    """The real server as users run it, with these `--options`."""
    port = free_port()
    argv = [PYTHON, "-m", "worktask.server", "--port", str(port), "--log-level", "warning"]
    for name, value in options.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    server = Process(argv, port)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def reference_server(replies_file: str) -> Iterator[Process]:
    port = free_port()
    server = Process([PYTHON, str(BENCH / "reference.py"), str(port), replies_file], port)
    try:
        yield server
    finally:
        server.stop()


# -- HTTP helpers --------------------------------------------------------------------------------


def call(server: Process, method: str, path: str, body: Any = None) -> Any:
    """One request on a fresh connection; the decoded JSON answer."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"content-type": "application/json"}
        conn.request(method, path, payload, headers)
        response = conn.getresponse()
        data = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return json.loads(data) if data else None
    finally:
        conn.close()


def raw_exchange(port: int, request: bytes, until: Callable[[bytes], bool]) -> bytes:
    """Send raw bytes; read until `until(received)` holds."""
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(request)
        received = b""
        while not until(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def complete_response(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    return match is not None and len(body) >= int(match.group(1))


def epoch(rfc3339: str) -> float:
    return datetime.datetime.fromisoformat(rfc3339).timestamp()


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- capture: the real server's bytes, for the reference ----------------------------------------


def capture(replies_file: str) -> None:
    """Record the real server's responses (GET, POST, events) for the reference server."""
    with real_server(delay_scale=0.05) as server:
        body = b'{"type":1,"data":"hello world"}'
        post = raw_exchange(
            server.port,
            b"POST /tasks HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body),
            complete_response,
        )
        time.sleep(0.01)  # running now: the GET figure is measured on a running task
        get = raw_exchange(
            server.port, b"GET /tasks/1 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n", complete_response
        )
        events = raw_exchange(
            server.port,
            b"GET /tasks/1/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
            lambda data: data.endswith(b"0\r\n\r\n") and b'"status":"done"' in data,
        )
    head, _, chunks = events.partition(b"\r\n\r\n")
    pieces = re.findall(rb"[0-9a-f]+\r\n.*?\r\n(?=[0-9a-f]+\r\n)", chunks, re.DOTALL)
    first, final = pieces[0], pieces[-1]
    match = re.search(rb'"finished_at":"([^"]+)"', final)
    assert match is not None and b'"status":"running"' in first, events
    replies = {
        "get": get,
        "post": post,
        "events_head": head + b"\r\n\r\n",
        "event_first": first,
        "event_final": final,
        "finished_at": match.group(1),
    }
    with open(replies_file, "w", encoding="utf-8") as file:
        json.dump({k: v.decode("latin-1") for k, v in replies.items()}, file)


# -- wrk ----------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") is None:
        sys.exit("bench: wrk is missing and apt-get is not available: install wrk")
    print("bench: installing wrk with apt-get", file=sys.stderr)
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        subprocess.run(install, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        sys.exit("bench: could not install wrk")
    return found


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str, seconds: int, script: str | None = None, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """(requests per second, p99 latency in ms) of one wrk run on the client core."""
    argv = ["taskset", "-c", str(CLIENT_CORE), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s"]
    argv += ["--latency", "--timeout", "5s"]
    if script:
        argv += ["-s", script]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return rps, float(p99.group(1)) * _UNITS[p99.group(2)]


def bench_get(rows: dict[str, Figure], reference: Process) -> None:
    rows[
        "get_rps"
    ].note = (
        f"wrk -t1 -c{CONNECTIONS}, {WRK_SECONDS} s per run, on a running task (--delay-scale 100)"
    )
    rows["get_p99"].note = "the same wrk runs"
    with real_server(delay_scale=100) as server:
        task = call(server, "POST", "/tasks", {"type": 3, "data": "hello world"})
        url = f"{server.url}/tasks/{task['id']}"
        wrk(url, 1)  # warm-up
        for _ in range(RUNS):
            rps, p99 = wrk(url, WRK_SECONDS)
            rows["get_rps"].runs.append(rps)
            rows["get_p99"].runs.append(p99)
            ref_rps, ref_p99 = wrk(f"{reference.url}/tasks/1", WRK_SECONDS)
            rows["get_rps"].reference_runs.append(ref_rps)
            rows["get_p99"].reference_runs.append(ref_p99)
        assert call(server, "GET", f"/tasks/{task['id']}")["status"] == "running"


def bench_post(rows: dict[str, Figure], reference: Process) -> None:
    script = str(BENCH / "post.lua")
    options = {"delay_scale": 0, "max_queue": 1_000_000, "keep_finished": 1000}
    rows["post_rps"].note = "--delay-scale 0 (tasks run at once), --keep-finished 1000"
    with real_server(**options) as server:
        wrk(f"{server.url}/tasks", 1, script)
        for _ in range(RUNS):
            rps, _p99 = wrk(f"{server.url}/tasks", WRK_SECONDS, script)
            rows["post_rps"].runs.append(rps)
            ref_rps, _ = wrk(f"{reference.url}/tasks", WRK_SECONDS, script)
            rows["post_rps"].reference_runs.append(ref_rps)


# -- event streams ------------------------------------------------------------------------------


class Stream(asyncio.Protocol):
    """A client of `GET /tasks/{id}/events` noting when the first and the final event arrive."""

    def __init__(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.request = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode()
        self.first: asyncio.Future[float] = loop.create_future()
        self.final: asyncio.Future[float] = loop.create_future()
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        if not self.first.done() and b"\n\n" in self.buffer:
            self.first.set_result(now)
        if not self.final.done() and b'"finished_at":"' in self.buffer:
            self.final.set_result(now)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.first, self.final):
            if not future.done():
                future.set_exception(ConnectionError("stream closed"))
                future.exception()  # nobody may be waiting: no "never retrieved" warning

    def latency_ms(self) -> float:
        """Final event received minus the task's finished_at."""
        match = re.search(rb'"finished_at":"([^"]+)"', self.buffer)
        assert match is not None
        return (self.final.result() - epoch(match.group(1).decode())) * 1000


async def open_streams(port: int, path: str, count: int, batch: int = 250) -> list[Stream]:
    """`count` event streams on `path`, each having received its first event."""
    loop = asyncio.get_running_loop()
    streams: list[Stream] = []

    async def one() -> Stream:
        stream = Stream(path)
        await loop.create_connection(lambda: stream, "127.0.0.1", port)
        await asyncio.wait_for(stream.first, 30)
        return stream

    for start in range(0, count, batch):
        streams += await asyncio.gather(*(one() for _ in range(min(batch, count - start))))
    return streams


async def post_async(port: int, path: str, body: bytes = b"") -> bytes:
    """One POST on a fresh connection; the response's body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    answer = await reader.readexactly(int(length.group(1))) if length else b""
    writer.close()
    return answer


async def final_event_1(server: Process, samples: int) -> float:
    """p99 of (final event received − finished_at), one waiter, one task at a time."""
    latencies: list[float] = []
    while len(latencies) < samples:
        answer = await post_async(server.port, "/tasks", b'{"type":3,"data":"hello"}')
        task_id = int(re.search(rb'"id":(\d+)', answer).group(1))  # type: ignore[union-attr]
        (stream,) = await open_streams(server.port, f"/tasks/{task_id}/events", 1)
        await asyncio.wait_for(stream.final, 30)
        if b'"finished_at":"' not in stream.buffer.split(b"\n\n")[0]:  # waited for the end
            latencies.append(stream.latency_ms())
    return percentile(latencies, 99)


async def final_event_1_reference(reference: Process, samples: int) -> float:
    latencies: list[float] = []
    for _ in range(samples):
        (stream,) = await open_streams(reference.port, "/tasks/1/events", 1)
        await asyncio.sleep(0.005)
        await post_async(reference.port, "/finish")
        await asyncio.wait_for(stream.final, 30)
        latencies.append(stream.latency_ms())
    return percentile(latencies, 99)


async def final_event_many(server: Process, waiters: int) -> float:
    """p99 over `waiters` clients waiting on one task: the blocker before it is cancelled
    once all of them are connected, so that the task starts and ends while they wait."""
    blocker = call(server, "POST", "/tasks", {"type": 3, "data": "blocker"})
    task = call(server, "POST", "/tasks", {"type": 1, "data": "hello"})
    streams = await open_streams(server.port, f"/tasks/{task['id']}/events", waiters)
    call(server, "DELETE", f"/tasks/{blocker['id']}")
    await asyncio.wait_for(asyncio.gather(*(s.final for s in streams)), 60)
    return percentile([s.latency_ms() for s in streams], 99)


async def final_event_many_reference(reference: Process, waiters: int) -> float:
    streams = await open_streams(reference.port, "/tasks/1/events", waiters)
    await asyncio.sleep(0.2)
    await post_async(reference.port, "/finish")
    await asyncio.wait_for(asyncio.gather(*(s.final for s in streams)), 60)
    return percentile([s.latency_ms() for s in streams], 99)


def bench_final_event(rows: dict[str, Figure], reference: Process, samples: int) -> None:
    one, many = rows["final_event_p99_1"], rows["final_event_p99_1000"]
    one.note = f"{samples} tasks of 70 ms per run (--delay-scale 0.01)"
    many.note = "1 task of 0.5 s per run (--delay-scale 0.5), clients on one asyncio loop"
    with real_server(delay_scale=0.01) as server:
        for _ in range(RUNS):
            one.runs.append(uvloop.run(final_event_1(server, samples)))
            one.reference_runs.append(uvloop.run(final_event_1_reference(reference, samples)))
    with real_server(delay_scale=0.5) as server:
        for _ in range(RUNS):
            many.runs.append(uvloop.run(final_event_many(server, 1000)))
            many.reference_runs.append(uvloop.run(final_event_many_reference(reference, 1000)))


def bench_rss(rows: dict[str, Figure], replies_file: str, streams: int) -> None:
    """RSS of the server holding `streams` event streams on a queued task."""
    row = rows["rss_10k_streams"]
    row.note = f"{streams} streams on a queued task, fresh server per run"

    async def hold(server: Process, path: str) -> float:
        opened = await open_streams(server.port, path, streams, batch=500)
        await asyncio.sleep(0.5)
        rss = server.rss_mb()
        for stream in opened:
            if stream.transport is not None:
                stream.transport.close()
        return rss

    for _ in range(RUNS):
        with real_server(delay_scale=100) as server:
            call(server, "POST", "/tasks", {"type": 3, "data": "blocker"})
            task = call(server, "POST", "/tasks", {"type": 1, "data": "hello"})
            row.runs.append(uvloop.run(hold(server, f"/tasks/{task['id']}/events")))
        with reference_server(replies_file) as reference:
            row.reference_runs.append(uvloop.run(hold(reference, "/tasks/1/events")))


def bench_queued_memory(rows: dict[str, Figure]) -> None:
    """RSS delta per queued task, tasks of 100 characters behind a long-running task."""
    row = rows["bytes_per_queued_task"]
    script = str(BENCH / "post.lua")
    env = {"BENCH_DATA": DATA_100}
    counts = []
    for _ in range(RUNS):
        with real_server(delay_scale=100, max_queue=1_000_000) as server:
            call(server, "POST", "/tasks", {"type": 3, "data": "blocker"})
            wrk(f"{server.url}/tasks", 1, script, env)  # warm-up: connections, allocator
            before_tasks = call(server, "GET", "/healthz")["queued"]
            before = server.rss_mb()
            wrk(f"{server.url}/tasks", 3, script, env)
            time.sleep(0.2)
            after = server.rss_mb()
            count = call(server, "GET", "/healthz")["queued"] - before_tasks
            counts.append(count)
            row.runs.append((after - before) * 1024 * 1024 / count)
    row.note = f"RSS delta over {min(counts):,}–{max(counts):,} queued tasks per run"


# -- the executor: gap and submit-to-start ------------------------------------------------------


async def submit_many(port: int, count: int, connections: int = 8) -> list[int]:
    body = b'{"type":1,"data":"hello"}'
    request = b"POST /tasks HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    request += b"content-length: %d\r\n\r\n%s" % (len(body), body)
    ids: list[int] = []

    async def worker(share: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(share):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            answer = await reader.readexactly(length)
            ids.append(int(re.search(rb'"id":(\d+)', answer).group(1)))  # type: ignore[union-attr]
        writer.close()

    shares = [count // connections + (i < count % connections) for i in range(connections)]
    await asyncio.gather(*(worker(share) for share in shares))
    return sorted(ids)


def fetch_all(server: Process, ids: Sequence[int]) -> list[dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    found = []
    for task_id in ids:
        conn.request("GET", f"/tasks/{task_id}")
        found.append(json.loads(conn.getresponse().read()))
    conn.close()
    return found


def wait_done(server: Process, task_id: int) -> None:
    deadline = time.monotonic() + 60
    while call(server, "GET", f"/tasks/{task_id}")["status"] != "done":
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} did not finish")
        time.sleep(0.05)


def bench_gap(rows: dict[str, Figure], count: int) -> None:
    row = rows["gap_p99"]
    row.note = f"{count} tasks of 2 ms (--delay-scale 0.001) submitted on 8 connections"
    with real_server(delay_scale=0.001) as server:
        for _ in range(RUNS):
            ids = uvloop.run(submit_many(server.port, count))
            wait_done(server, ids[-1])
            tasks = fetch_all(server, ids)
            gaps = [
                (epoch(later["started_at"]) - epoch(earlier["finished_at"])) * 1000
                for earlier, later in itertools.pairwise(tasks)
            ]
            row.runs.append(percentile(gaps, 99))


def bench_submit_to_start(rows: dict[str, Figure], samples: int) -> None:
    row = rows["submit_to_start_p99"]
    row.note = f"{samples} tasks one at a time, --delay-scale 0"
    with real_server(delay_scale=0) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for _ in range(RUNS):
            waits = []
            for _ in range(samples):
                conn.request("POST", "/tasks", '{"type":1,"data":"hello"}')
                task = json.loads(conn.getresponse().read())
                time.sleep(0.003)  # done by now: the server is idle again
                conn.request("GET", f"/tasks/{task['id']}")
                task = json.loads(conn.getresponse().read())
                assert task["status"] == "done", task
                waits.append((epoch(task["started_at"]) - epoch(task["created_at"])) * 1000)
            row.runs.append(percentile(waits, 99))
        conn.close()


# -- the CLI ------------------------------------------------------------------------------------


def wall_ms(argv: Sequence[str], repeat: int) -> float:
    """Median wall time of `argv`, stdout a pipe (not a terminal)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_cli(rows: dict[str, Figure], repeat: int) -> None:
    cli = str(Path(PYTHON).parent / "worktask")
    probe = subprocess.run([cli, "--help"], capture_output=True)
    if probe.returncode != 0:
        for name in ("cli_get", "cli_batch"):
            rows[name].error = "the CLI is not there yet (worktask --help failed)"
        return
    empty = [PYTHON, "-c", "pass"]
    with real_server(delay_scale=0) as server:
        task = call(server, "POST", "/tasks", {"type": 1, "data": "hello"})
        wait_done(server, task["id"])
        get = [cli, "--server", server.url, "get", "-i", str(task["id"]), "-s"]
        batch = [cli, "--server", server.url, "call", "-c", "1", "-a", "x", "-p"]
        wall_ms(get, 2)  # warm the page cache
        for _ in range(RUNS):
            base = wall_ms(empty, repeat)
            for name, argv in (("cli_get", get), ("cli_batch", batch)):
                rows[name].runs.append(wall_ms(argv, repeat))
                rows[name].reference_runs.append(base)
    rows["cli_get"].note = f"median of {repeat} runs each, same interpreter"
    rows["cli_batch"].note = f"--delay-scale 0, stdout a pipe, median of {repeat} runs each"


# -- report -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version()}
    for package in ("worktask", "uvicorn", "starlette", "fastapi", "uvloop", "httptools", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    versions["wrk"] = wrk_version[1] if len(wrk_version) > 1 else "unknown"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "versions": versions,
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "req/s" or unit == "B" or value >= 1000:
        text = f"{value:,.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def table_rows(rows: dict[str, Figure]) -> list[list[str]]:
    out = []
    for row in rows.values():
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[row.passed]
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f} ×"
        out.append(
            [
                LABELS[row.name],
                fmt(row.value, row.unit),
                fmt(row.reference, row.unit),
                ratio,
                row.target,
                verdict,
            ]
        )
    return out


HEADER = ["figure", "value", "reference", "ratio", "target", "result"]


def print_table(rows: dict[str, Figure]) -> None:
    body = table_rows(rows)
    widths = [max(len(line[i]) for line in [HEADER, *body]) for i in range(len(HEADER))]
    for line in [HEADER, ["-" * w for w in widths], *body]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    for row in rows.values():
        if row.error:
            print(f"{row.name}: {row.error}")


def markdown(rows: dict[str, Figure], info: dict[str, Any]) -> str:
    versions = info["versions"]
    lines = [
        "## Performance",
        "",
        "`make bench` starts the server as users run it (one process, uvloop, httptools, no "
        "access log; `--log-level warning`, since the lifecycle log writes lines per task) "
        "pinned to one core, drives it from the other core with `wrk` and small "
        "asyncio clients, and prints every figure as the median of 3 runs beside a reference "
        "measured in the same run: a ~50-line HTTP/1.1 server on asyncio's Protocol with "
        "httptools and uvloop, answering with the same bytes (`bench/reference.py`), or "
        "`python -c pass` for the CLI. The ratios are what carry over between machines.",
        "",
        f"Last run: {info['date']}, commit {info['commit']}, {info['cores']} cores "
        f"({info['cpu']}), Linux {info['kernel']}, Python {versions['python']}, "
        f"uvicorn {versions.get('uvicorn')}, starlette {versions.get('starlette')}, "
        f"fastapi {versions.get('fastapi')}, uvloop {versions.get('uvloop')}, "
        f"httptools {versions.get('httptools')}, wrk {versions.get('wrk')}.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(line) + " |" for line in table_rows(rows)]
    notes = [f"- {LABELS[r.name]}: {r.note}" for r in rows.values() if r.note]
    lines += ["", "How each figure is taken:", "", *notes, ""]
    return "\n".join(lines)


README = BENCH.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def update_readme(section: str) -> None:
    """Put the table of this run between the README's bench markers."""
    text = README.read_text()
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        README.write_text(f"{before}{START}\n{section}{END}{after}")


def guarded(rows: dict[str, Figure], names: Sequence[str], step: Callable[[], None]) -> None:
    started = time.monotonic()
    try:
        step()
    except Exception as error:  # one broken figure must not hide the others
        for name in names:
            rows[name].error = f"{type(error).__name__}: {error}"
            print(f"bench: {name} failed: {error}", file=sys.stderr)
    print(f"bench: {', '.join(names)} in {time.monotonic() - started:.0f} s", file=sys.stderr)


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated groups: get,post,events,cli,gap,rss,mem")
    args = parser.parse_args()
    ensure_wrk()
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs taskset and at least 2 cores")
    os.sched_setaffinity(0, {CLIENT_CORE})
    raise_file_limit()
    streams = min(10_000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100)
    rows = figures()
    only = set(args.only.split(",")) if args.only else None
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        replies = os.path.join(tmp, "replies.json")
        capture(replies)
        with reference_server(replies) as reference:
            steps: list[tuple[str, list[str], Callable[[], None]]] = [
                ("get", ["get_rps", "get_p99"], lambda: bench_get(rows, reference)),
                ("post", ["post_rps"], lambda: bench_post(rows, reference)),
                (
                    "events",
                    ["final_event_p99_1", "final_event_p99_1000"],
                    lambda: bench_final_event(rows, reference, 100),
                ),
                ("cli", ["cli_get", "cli_batch"], lambda: bench_cli(rows, 15)),
                ("gap", ["gap_p99"], lambda: bench_gap(rows, 1000)),
                ("gap", ["submit_to_start_p99"], lambda: bench_submit_to_start(rows, 200)),
            ]
            for group, names, step in steps:
                if only is None or group in only:
                    guarded(rows, names, step)
        if only is None or "rss" in only:
            guarded(rows, ["rss_10k_streams"], lambda: bench_rss(rows, replies, streams))
        if only is None or "mem" in only:
            guarded(rows, ["bytes_per_queued_task"], lambda: bench_queued_memory(rows))
    info = machine()
    info["bench_seconds"] = round(time.monotonic() - started)
    print()
    print_table(rows)
    print(f"\n{info['cores']} cores ({info['cpu']}), {info['versions']}, {info['bench_seconds']} s")
    if only is None:
        results = {"machine": info, "figures": [row.as_dict() for row in rows.values()]}
        (BENCH / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        update_readme(markdown(rows, info))
    return 1 if any(row.error for row in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
