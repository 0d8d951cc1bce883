"""The client library against the real server process, and its error mapping against stubs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from conftest import ServerProcess, StartServer, free_port
from worktask.client import (
    AlreadyFinished,
    Client,
    ConnectError,
    Rejected,
    ResultNotReady,
    ServerBusy,
    ServerError,
    ServerShutdown,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskInfo,
    TaskLost,
    TaskNotFound,
    TaskStatus,
    Unauthorized,
    WaitTimeout,
    _events,
)

EXAMPLES = [
    (1, "пример", "ремирп"),
    ("reverse", "пример", "ремирп"),
    (2, "пример", "рпмире"),
    ("swap", "кот", "окт"),
    (3, "пример", "прриииммммееееерррррр"),
]


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url) as client:
        yield client


@pytest.mark.parametrize(("code", "data", "expected"), EXAMPLES)
def test_submit_wait_result_gives_the_transformation(
    client: Client, code: int | str, data: str, expected: str
) -> None:
    task = client.submit(code, data)
    final = client.wait(task.id, timeout=10)
    assert final.status is TaskStatus.DONE
    assert client.result(task.id) == expected


def test_submit_returns_the_new_task(client: Client) -> None:
    task = client.submit("reverse", "пример")
    assert task.id > 0
    assert (task.type, task.code, task.data_preview) == ("reverse", 1, "пример")
    assert isinstance(task.created_at, datetime)


def test_result_is_repeatable(client: Client) -> None:
    task = client.submit(2, "кот")
    client.wait(task.id, timeout=10)
    assert [client.result(task.id) for _ in range(3)] == ["окт"] * 3


def test_status_of_a_done_task_has_its_timestamps(client: Client) -> None:
    task = client.submit(1, "abc")
    client.wait(task.id, timeout=10)
    info = client.status(task.id)
    assert info.status is TaskStatus.DONE and info.finished
    assert info.started_at is not None and info.finished_at is not None
    assert info.position is None and info.elapsed_seconds is not None


def test_to_json_round_trips_the_status_object(client: Client) -> None:
    info = client.status(client.submit(1, "abc").id)
    assert TaskInfo.from_json(json.loads(json.dumps(info.to_json()))) == info


def test_list_is_newest_first_and_filters_by_status(client: Client) -> None:
    first, second = client.submit(1, "a"), client.submit(1, "b")
    client.wait(second.id, timeout=10)
    ids = [task.id for task in client.list(status="done", limit=50)]
    assert ids.index(second.id) < ids.index(first.id)
    assert len(client.list(limit=1)) == 1


def test_types_lists_the_three_task_types(client: Client) -> None:
    assert [(kind.code, kind.name) for kind in client.types()][:3] == [
        (1, "reverse"),
        (2, "swap"),
        (3, "repeat"),
    ]


def test_health_reports_the_instance_the_client_sees(client: Client) -> None:
    health = client.health()
    assert health["status"] == "ok"
    assert health["instance"] == client.instance


def test_unknown_id_raises_task_not_found(client: Client) -> None:
    with pytest.raises(TaskNotFound) as caught:
        client.status(999_999)
    assert type(caught.value) is TaskNotFound and caught.value.status_code == 404


def test_unknown_type_is_rejected_with_the_valid_types(client: Client) -> None:
    with pytest.raises(Rejected) as caught:
        client.submit(9, "x")
    assert caught.value.status_code == 422
    assert "reverse" in str(caught.value)


def test_cancelling_a_finished_task_raises_already_finished(client: Client) -> None:
    task = client.submit(1, "x")
    client.wait(task.id, timeout=10)
    with pytest.raises(AlreadyFinished) as caught:
        client.cancel(task.id)
    assert caught.value.task is not None and caught.value.task.status is TaskStatus.DONE


def test_wait_reports_each_change_and_the_result_follows_at_once(
    start_server: StartServer,
) -> None:
    server = start_server(scale=0.05)  # reverse takes 0.1 s
    with Client(server.url) as client:
        client.submit(3, "first")  # 0.35 s: ours surely waits in the queue first
        task = client.submit(1, "second")
        seen: list[TaskInfo] = []
        final = client.wait(task.id, timeout=10, on_update=seen.append)
        client.result(task.id)
        lag = datetime.now(UTC) - final.finished_at if final.finished_at else None
    assert seen[0].status is TaskStatus.QUEUED and seen[0].position == 1
    assert TaskStatus.RUNNING in [info.status for info in seen]
    assert final.status is TaskStatus.DONE and seen[-1] == final
    # Events, not polling: the result is in hand within milliseconds (margin for busy CI).
    assert lag is not None and lag.total_seconds() < 0.25


def test_unfinished_full_and_cancelled_tasks(start_server: StartServer) -> None:
    server = start_server("--max-queue", "1", scale=1)
    with Client(server.url) as client:
        running = client.submit(3, "x")  # runs for 7 s, leaving the queue empty
        queued = client.submit(3, "y")
        with pytest.raises(ServerBusy) as busy:
            client.submit(1, "z")
        assert busy.value.retry_after is not None and busy.value.retry_after > 0
        with pytest.raises(ResultNotReady) as not_ready:
            client.result(queued.id)
        assert not_ready.value.task is not None
        assert not_ready.value.task.status is TaskStatus.QUEUED
        assert client.cancel(queued.id).status is TaskStatus.CANCELLED
        with pytest.raises(TaskCancelled):
            client.result(queued.id)
        with pytest.raises(WaitTimeout) as timeout:
            client.wait(running.id, timeout=0.2)
        assert timeout.value.task is not None
        assert timeout.value.task.status is TaskStatus.RUNNING


def test_evicted_task_raises_task_expired(start_server: StartServer) -> None:
    server = start_server("--keep-finished", "1")
    with Client(server.url) as client:
        old = client.submit(1, "a")
        client.wait(old.id, timeout=10)
        client.wait(client.submit(1, "b").id, timeout=10)
        with pytest.raises(TaskExpired, match="expired"):
            client.result(old.id)


def test_token_is_required_and_checked(start_server: StartServer) -> None:
    server = start_server("--token", "s3cret")
    with Client(server.url) as anonymous:
        assert anonymous.health()["status"] == "ok"
        with pytest.raises(Unauthorized):
            anonymous.submit(1, "x")
    with Client(server.url, token="wrong") as wrong, pytest.raises(Unauthorized):
        wrong.list()
    with Client(server.url, token="s3cret") as client:
        assert client.wait(client.submit(1, "x").id, timeout=10).status is TaskStatus.DONE


def test_unreachable_server_raises_connect_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as client, pytest.raises(ConnectError) as caught:
        client.status(1)
    assert url in str(caught.value) and "worktask-server" in str(caught.value)


def test_a_restarted_server_loses_the_task_instead_of_showing_another(
    start_server: StartServer,
) -> None:
    first = start_server(scale=1)
    with Client(first.url) as client:
        task = client.submit(3, "mine")
        first.stop()
        second = start_server(port=first.port)
        with Client(second.url) as other:
            other.wait(other.submit(1, "someone else's").id, timeout=10)  # the same id, reused
        with pytest.raises(TaskLost, match="restarted"):
            client.result(task.id)
        with pytest.raises(TaskLost):
            client.wait(task.id, timeout=10)


def test_wait_raises_server_shutdown_when_the_server_stops(start_server: StartServer) -> None:
    server = start_server(scale=1)
    waiting = threading.Event()
    raised: list[BaseException] = []

    def wait() -> None:
        with Client(server.url) as client:
            task = client.submit(3, "x")
            try:
                client.wait(task.id, timeout=20, on_update=lambda info: waiting.set())
            except BaseException as exc:
                raised.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    assert waiting.wait(10)
    server.stop()
    thread.join(10)
    assert len(raised) == 1 and isinstance(raised[0], ServerShutdown)


def test_events_parser_skips_comments_and_joins_data_lines() -> None:
    stream = [b": keep-alive\n", b"event: status\n", b"data: {\n", b"data: }\n", b"\n"]
    stream += [b"data: plain\r\n", b"\r\n", b"event: shutdown\n", b"data:{}\n", b"\n"]
    assert list(_events(stream)) == [("status", "{\n}"), ("message", "plain"), ("shutdown", "{}")]


# -- the mapping of answers no real server gives on demand, against a stub ------------------

FAILED_TASK = {
    "id": 1,
    "type": "reverse",
    "code": 1,
    "status": "failed",
    "error": "boom",
    "created_at": "2026-12-03T16:35:20.123456Z",
}


class _Stub(BaseHTTPRequestHandler):
    """Canned answers by path; closes every connection after one answer, unannounced."""

    protocol_version = "HTTP/1.1"
    answers: ClassVar[dict[str, tuple[int, str, bytes]]] = {
        "/tasks/1/result": (
            409,
            "application/problem+json",
            json.dumps({"status": 409, "detail": "task 1 failed", "task": FAILED_TASK}).encode(),
        ),
        "/tasks/2": (500, "application/problem+json", b'{"detail": "bug"}'),
        "/tasks/3": (200, "text/html", b"<html>not a worktask server</html>"),
        "/healthz": (200, "application/json", b'{"status": "ok"}'),
    }

    def do_GET(self) -> None:
        status, kind, body = self.answers[self.path]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True  # as an idle keep-alive timeout would

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_result_of_a_failed_task_raises_task_failed(stub: str) -> None:
    with Client(stub) as client, pytest.raises(TaskFailed) as caught:
        client.result(1)
    assert caught.value.task is not None and caught.value.task.error == "boom"


def test_server_fault_raises_server_error(stub: str) -> None:
    with Client(stub) as client, pytest.raises(ServerError, match="500"):
        client.status(2)


def test_an_answer_that_is_not_json_raises_server_error(stub: str) -> None:
    with Client(stub) as client, pytest.raises(ServerError, match="unexpected answer"):
        client.status(3)


def test_a_dropped_keep_alive_connection_is_reopened_once(stub: str) -> None:
    with Client(stub) as client:
        assert [client.health()["status"] for _ in range(3)] == ["ok"] * 3
