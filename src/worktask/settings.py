"""The server's settings: one object, read from flags and `WORKTASK_*` variables in one place."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Settings:
    """Every limit and option of the server, with its default."""

    host: str = "127.0.0.1"
    port: int = 5555
    delay_scale: float = 1.0  # multiplies the simulated durations; 0 runs tasks at once
    max_data_chars: int = 100_000
    max_result_chars: int = 1_000_000
    max_queue: int = 10_000  # queued tasks beyond which submissions get 503
    max_queue_mb: float = 128.0  # memory of queued data beyond which submissions get 503
    keep_finished: int = 10_000  # finished tasks kept, newest first
    result_ttl: float = 3600.0  # seconds a finished task is kept
    results_budget_mb: float = 256.0  # memory of kept finished tasks
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 16_000  # beyond this, new requests get 503
    timeout_keep_alive: int = 5  # seconds an idle connection is kept
    timeout_request: float = 10.0  # seconds for a request to arrive whole
    token: str | None = None
    insecure: bool = False
    log_level: str = "info"
    access_log: bool = False

    def scaled(self, seconds: float) -> float:
        """A task type's nominal duration under --delay-scale."""
        return seconds * self.delay_scale


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not 0 <= value < math.inf:  # also refuses nan
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: must be zero or more, and finite"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


_HELP = {
    "host": "address to listen on",
    "port": "port to listen on",
    "delay_scale": "multiply the simulated task durations (0 makes tasks instant)",
    "max_data_chars": "longest accepted task data, in characters",
    "max_result_chars": "largest result a task may produce, in characters",
    "max_queue": "queued tasks beyond which submissions are refused with 503",
    "max_queue_mb": "memory of queued data beyond which submissions are refused with 503",
    "keep_finished": "finished tasks kept, newest first",
    "result_ttl": "seconds a finished task and its result are kept",
    "results_budget_mb": "memory that kept finished tasks may use",
    "max_body_bytes": "largest accepted request body",
    "max_connections": "concurrent connections beyond which requests get 503",
    "timeout_keep_alive": "seconds an idle keep-alive connection is kept open",
    "timeout_request": "seconds a connection has to deliver a whole request",
    "token": "require 'Authorization: Bearer TOKEN' on every endpoint but /healthz",
    "insecure": "allow listening on a non-loopback address without --token",
    "log_level": "critical, error, warning, info or debug",
    "access_log": "log every request",
}


def parser() -> argparse.ArgumentParser:
    """The command-line parser; every flag defaults to its `WORKTASK_<FLAG>` variable."""
    result = argparse.ArgumentParser(
        prog="worktask-server",
        description="Run the worktask server: tasks execute one at a time, in order of arrival.",
        epilog="Every option can also be set as an environment variable WORKTASK_<OPTION>, "
        "for example WORKTASK_DELAY_SCALE=0.",
    )
    for field in fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            result.add_argument(flag, action="store_true", default=None, help=_HELP[field.name])
            continue
        kind: Callable[[str], Any] = {"int": int, "float": float}.get(str(field.type), str)
        if kind is not str:
            kind = _positive(kind)
        result.add_argument(
            flag,
            type=kind,
            default=None,
            metavar=field.name.upper(),
            help=f"{_HELP[field.name]} (default: {field.default})",
        )
    return result


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then `WORKTASK_*` variables, then the defaults."""
    environ = os.environ if environ is None else environ
    cli = parser()
    args = vars(cli.parse_args(argv))
    values: dict[str, Any] = {}
    for field in fields(Settings):
        value = args[field.name]
        if value is None:
            raw = environ.get("WORKTASK_" + field.name.upper())
            if raw is not None and raw != "":
                value = _from_env(cli, field.name, str(field.type), raw)
        if value is not None:
            values[field.name] = value
    return Settings(**values)


def _from_env(cli: argparse.ArgumentParser, name: str, kind: str, raw: str) -> Any:
    variable = "WORKTASK_" + name.upper()
    try:
        if kind == "bool":
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if kind in ("int", "float"):
            value = int(raw) if kind == "int" else float(raw)
            if not 0 <= value < math.inf:
                raise ValueError(raw)
            return value
    except ValueError:
        cli.error(f"{variable}: invalid value {raw!r}")
    return raw
