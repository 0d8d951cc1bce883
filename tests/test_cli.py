"""The `worktask` command end to end: real server process, real CLI subprocesses."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from typing import IO

import pytest

from conftest import (
    ROOT,
    RunCli,
    ServerProcess,
    StartServer,
    clean_env,
    cli_command,
    default_sigint,
    free_port,
)
from worktask.client import Client, TaskStatus

TOKEN = "s3cret"
BATCH_EXAMPLES = [
    ("1", "пример", "ремирп"),
    ("2", "пример", "рпмире"),
    ("swap", "кот", "окт"),
    ("3", "пример", "прриииммммееееерррррр"),
]


class Lines:
    """A stream read line by line in a thread, so that a test can wait for a line with a bound."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first line matching `pattern`, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in {self.seen!r}")

    def rest(self, timeout: float = 5.0) -> str:
        """Everything until the stream closes."""
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def start_batch(url: str, *args: str) -> tuple[subprocess.Popen[str], Lines]:
    """`call ... -p` running in the background, its stderr read line by line."""
    proc = subprocess.Popen(
        cli_command("call", *args, "-p", url=url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        preexec_fn=default_sigint,
    )
    assert proc.stderr is not None
    return proc, Lines(proc.stderr)


def submit(url: str, code: int, data: str) -> int:
    with Client(url) as client:
        return client.submit(code, data).id


def finish(url: str, code: int, data: str) -> int:
    with Client(url) as client:
        task = client.submit(code, data)
        client.wait(task.id, timeout=10)
        return task.id


def test_call_prints_the_id_alone(run_cli: RunCli) -> None:
    done = run_cli("call", "-c", "3", "-a", "example")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\d+\n", done.stdout)
    assert done.stderr == ""  # the hint is for terminals only


def test_get_status_is_human_readable(run_cli: RunCli, server: ServerProcess) -> None:
    task_id = finish(server.url, 1, "пример")
    done = run_cli("get", "-i", str(task_id), "-s")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^status\s+done$", done.stdout, re.MULTILINE)
    assert re.search(r"^type\s+reverse", done.stdout, re.MULTILINE)
    assert "finished" in done.stdout


def test_get_value_prints_the_result_alone(run_cli: RunCli, server: ServerProcess) -> None:
    task_id = finish(server.url, 1, "пример")
    done = run_cli("get", "-i", str(task_id), "-v")
    assert (done.returncode, done.stdout, done.stderr) == (0, "ремирп\n", "")


@pytest.mark.parametrize(("code", "data", "expected"), BATCH_EXAMPLES)
def test_batch_mode_stdout_is_exactly_the_result(
    run_cli: RunCli, code: str, data: str, expected: str
) -> None:
    done = run_cli("call", "-c", code, "-a", data, "-p")
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n"


def test_batch_mode_reports_each_change_on_stderr(start_server: StartServer) -> None:
    server = start_server(scale=0.5)
    ahead = submit(server.url, 3, "ahead")  # 3.5 s, so that ours waits in the queue first
    proc, lines = start_batch(server.url, "-c", "1", "-a", "пример")  # 1 s
    task_id = lines.wait_for(r"^task (\d+) queued$")[1]
    lines.wait_for(rf"^task {task_id}: queued, position 1, eta \d+\.\d s$")
    with Client(server.url) as client:
        client.cancel(ahead)  # ours starts at once
    lines.wait_for(rf"^task {task_id}: running")
    lines.wait_for(rf"^task {task_id}: done in \d+\.\d\d s$")
    assert proc.wait(10) == 0
    assert proc.stdout is not None and proc.stdout.read() == "ремирп\n"


def test_ctrl_c_in_batch_mode_leaves_the_task_on_the_server(start_server: StartServer) -> None:
    server = start_server(scale=1)
    proc, lines = start_batch(server.url, "-c", "3", "-a", "пример")  # runs for 7 s
    task_id = int(lines.wait_for(r"^task (\d+) queued$")[1])
    lines.wait_for(rf"^task {task_id}: running")
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(5) == 130
    assert time.monotonic() - interrupted < 1.0
    stderr = lines.rest()
    assert f"worktask get -i {task_id} -v" in stderr
    assert "Traceback" not in stderr
    assert proc.stdout is not None and proc.stdout.read() == ""
    with Client(server.url) as client:
        assert client.status(task_id).status is TaskStatus.RUNNING


def test_server_shutdown_while_waiting_exits_1_with_nothing_on_stdout(
    start_server: StartServer,
) -> None:
    server = start_server(scale=1)
    proc, lines = start_batch(server.url, "-c", "3", "-a", "x")
    lines.wait_for(r"^task \d+: running")
    server.stop()
    assert proc.wait(5) == 1
    stderr = lines.rest()
    assert "shut down" in stderr and "Traceback" not in stderr
    assert proc.stdout is not None and proc.stdout.read() == ""


ON_A_TERMINAL = [
    pytest.param((), id="rich"),
    pytest.param(("-S", str(ROOT / "client.py")), id="no-site-packages"),
]


@pytest.mark.parametrize("python", ON_A_TERMINAL)
def test_batch_mode_draws_a_live_line_on_a_terminal(
    server: ServerProcess, python: tuple[str, ...]
) -> None:
    command = cli_command("call", "-c", "1", "-a", "пример", "-p", url=server.url)
    if python:  # `python -S client.py`: the checkout's shim, with neither rich nor anything else
        command[1:3] = python
    controller, terminal = os.openpty()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=clean_env(TERM="xterm"),
    )
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    stdout, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, drawn
    assert stdout == "ремирп\n".encode()
    assert b"Traceback" not in drawn and b"done in" in drawn


def test_unreachable_server_is_one_line_naming_the_url(run_cli: RunCli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli("get", "-i", "1", "-s", url=url)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert url in done.stderr and "worktask-server" in done.stderr


def test_unknown_type_exits_2_listing_the_valid_types(run_cli: RunCli) -> None:
    done = run_cli("call", "-c", "9", "-a", "x")
    assert done.returncode == 2
    assert "reverse" in done.stderr and "swap" in done.stderr and "repeat" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    "args",
    [("get", "-i", "1"), ("get", "-i", "1", "-s", "-v"), ("get", "-i", "x", "-s"), ("call",)],
)
def test_usage_errors_exit_2_in_one_line(run_cli: RunCli, args: tuple[str, ...]) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--help" in done.stderr


def test_unknown_id_exits_3(run_cli: RunCli) -> None:
    done = run_cli("get", "-i", "999999", "-v")
    assert (done.returncode, done.stdout) == (3, "")
    assert "999999" in done.stderr


def test_expired_task_exits_3_saying_expired(start_server: StartServer, run_cli: RunCli) -> None:
    server = start_server("--keep-finished", "1")
    old = finish(server.url, 1, "a")
    finish(server.url, 1, "b")
    done = run_cli("get", "-i", str(old), "-s", url=server.url)
    assert done.returncode == 3
    assert "expired" in done.stderr


def test_unfinished_busy_and_cancelled_tasks_exit_4_75_and_5(
    start_server: StartServer, run_cli: RunCli
) -> None:
    server = start_server("--max-queue", "1", scale=1)
    submit(server.url, 3, "running")  # holds the executor for 7 s
    queued = str(submit(server.url, 3, "queued"))
    not_ready = run_cli("get", "-i", queued, "-v", url=server.url)
    assert (not_ready.returncode, not_ready.stdout) == (4, "")
    busy = run_cli("call", "-c", "1", "-a", "x", url=server.url)
    assert busy.returncode == 75
    assert re.search(r"busy.*retry in \d+ s", busy.stderr)
    assert run_cli("cancel", "-i", queued, url=server.url).returncode == 0
    cancelled = run_cli("get", "-i", queued, "-v", url=server.url)
    assert cancelled.returncode == 5 and "cancelled" in cancelled.stderr
    again = run_cli("cancel", "-i", queued, url=server.url)
    assert again.returncode == 5


def test_timeout_in_batch_mode_exits_4_and_says_how_to_fetch(
    start_server: StartServer, run_cli: RunCli
) -> None:
    server = start_server(scale=1)
    done = run_cli("call", "-c", "3", "-a", "x", "-p", "--timeout", "0.2", url=server.url)
    assert done.returncode == 4
    assert re.search(r"worktask get -i \d+ -v", done.stderr)


def test_token_missing_or_refused_exits_77(start_server: StartServer, run_cli: RunCli) -> None:
    server = start_server("--token", TOKEN)
    missing = run_cli("list", url=server.url)
    assert missing.returncode == 77 and "WORKTASK_TOKEN" in missing.stderr
    refused = run_cli("--token", "wrong", "list", url=server.url)
    assert refused.returncode == 77 and "refused" in refused.stderr
    accepted = run_cli(
        "call", "-c", "1", "-a", "abc", "-p", url=server.url, WORKTASK_TOKEN="s3cret"
    )
    assert (accepted.returncode, accepted.stdout) == (0, "cba\n")


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("call", "-c", "1", "-a", "abc"), "id"),
        (("call", "-c", "1", "-a", "abc", "-p"), "result"),
        (("list",), "tasks"),
        (("types",), "types"),
    ],
)
def test_json_mode_prints_one_object(run_cli: RunCli, args: tuple[str, ...], key: str) -> None:
    done = run_cli("--json", *args)
    assert done.returncode == 0, done.stderr
    assert key in json.loads(done.stdout)


def test_json_mode_get_and_cancel(run_cli: RunCli, server: ServerProcess) -> None:
    task_id = str(finish(server.url, 2, "кот"))
    status = json.loads(run_cli("--json", "get", "-i", task_id, "-s").stdout)
    assert status["status"] == "done" and status["id"] == int(task_id)
    assert json.loads(run_cli("get", "-i", task_id, "-v", "--json").stdout)["result"] == "окт"


def test_root_client_py_runs_with_nothing_installed() -> None:
    done = subprocess.run(
        [sys.executable, "-S", "client.py", "--help"],  # -S: no site-packages at all
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "python client.py call -c 3 -a 'example'" in done.stdout
    assert "python client.py get -i 1 -s" in done.stdout
    assert "130" in done.stdout  # the exit codes are documented


@pytest.mark.parametrize("command", ["call", "get", "cancel", "list", "types"])
def test_every_command_has_help(run_cli: RunCli, command: str) -> None:
    done = run_cli(command, "--help")
    assert done.returncode == 0 and "examples:" in done.stdout


def test_version(run_cli: RunCli) -> None:
    assert run_cli("--version").stdout.startswith("worktask ")


def test_a_closed_stdout_pipe_is_quiet(server: ServerProcess) -> None:
    for _ in range(3):
        finish(server.url, 1, "x")
    reader, writer = os.pipe()
    os.close(reader)  # like `worktask list | head -0`, deterministically
    try:
        done = subprocess.run(
            cli_command("list", url=server.url),
            stdout=writer,
            stderr=subprocess.PIPE,
            env=clean_env(),
            timeout=20,
            check=False,
        )
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (1, b"")


def test_start_up_imports_neither_rich_nor_server_modules() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *cli_command("get", "-i", "1", "-s", url=url)[1:]],
        capture_output=True,
        text=True,
        timeout=20,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 1
    imported = set(re.findall(r"\|\s+(\S+)$", done.stderr, re.MULTILINE))
    assert "worktask.cli" in imported
    forbidden = {"rich", "fastapi", "starlette", "orjson", "regex", "httpx", "uvicorn"}
    forbidden |= {"worktask.engine", "worktask.api", "worktask.server", "worktask.settings"}
    assert not imported & forbidden
