"""Shared fixtures: the real server as a subprocess on a free port, and the CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any WORKTASK_* variable of the developer's shell."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("WORKTASK_")}
    env.update(extra)
    return env


class ServerProcess:
    """A running `python -m worktask.server`."""

    def __init__(self, port: int, args: tuple[str, ...], scale: float, log: Path) -> None:
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log = log
        command = [sys.executable, "-m", "worktask.server", "--port", str(port)]
        command += ["--delay-scale", str(scale), *args]
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=clean_env()
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            if _answers_healthz(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout} s: {self.output()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it lingers; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        """What the server logged."""
        return self.log.read_text(errors="replace")


def _answers_healthz(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class StartServer(Protocol):
    def __call__(
        self, *args: str, scale: float = 0.0, port: int | None = None
    ) -> ServerProcess: ...


class RunCli(Protocol):
    def __call__(
        self, *args: str, url: str | None = None, timeout: float = 20.0, **env: str
    ) -> subprocess.CompletedProcess[str]: ...


class _Servers:
    """Starts servers and stops every one of them at teardown."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[ServerProcess] = []

    def start(self, *args: str, scale: float = 0.0, port: int | None = None) -> ServerProcess:
        log = self.logs / f"server-{len(self.started)}.log"
        server = ServerProcess(port or free_port(), args, scale, log)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with instant tasks (--delay-scale 0), shared by a test module."""
    servers = _Servers(tmp_path_factory.mktemp("server"))
    try:
        yield servers.start()
    finally:
        servers.stop_all()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start servers with their own options, e.g. `start_server("--max-queue", "1", scale=1)`."""
    servers = _Servers(tmp_path)
    try:
        yield servers.start
    finally:
        servers.stop_all()


def cli_command(*args: str, url: str) -> list[str]:
    """The command line of the CLI against `url`."""
    return [sys.executable, "-m", "worktask", "--server", url, *args]


@pytest.fixture
def run_cli(server: ServerProcess) -> RunCli:
    """Run the CLI to completion against `server` (or `url=`); extra keywords are env vars."""

    def run(
        *args: str, url: str | None = None, timeout: float = 20.0, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli_command(*args, url=url or server.url),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(**env),
            stdin=subprocess.DEVNULL,
            check=False,
        )

    return run


def default_sigint() -> None:
    """In the child: Ctrl+C must raise even when the test runner ignores SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
