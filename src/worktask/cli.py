"""The `worktask` command: submit tasks to a worktask server, follow them, fetch their results.

It only parses arguments and renders answers; `worktask.client` does the talking. Only the
standard library is imported at start-up (the command runs in shell loops), and `rich` only
when a live status line is drawn on a terminal.

Exit codes:
    0    ok
    1    server unreachable, server error, the server shut down while waiting, or stdout
         was closed early (as by `| head`), which is otherwise silent
    2    usage error, or input the server rejected (400, 413, 422)
    3    no such task (404), its record expired (410), or it was lost with a server restart
    4    result not ready yet, or --timeout elapsed
    5    task failed or was cancelled, or cancelling a task that already finished
    75   server busy (503): retry after the time the message gives
    77   token missing or refused (401)
    130  interrupted (Ctrl+C)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from worktask import __version__
from worktask.client import (
    DEFAULT_URL,
    AlreadyFinished,
    Client,
    Rejected,
    ResultNotReady,
    ServerBusy,
    TaskCancelled,
    TaskFailed,
    TaskInfo,
    TaskNotFound,
    TaskStatus,
    Unauthorized,
    WaitTimeout,
    WorktaskError,
)

EXIT_INTERRUPTED = 130

_EXIT_CODES: tuple[tuple[type[WorktaskError], int], ...] = (
    (Unauthorized, 77),
    (ServerBusy, 75),
    (Rejected, 2),
    (TaskNotFound, 3),
    (ResultNotReady, 4),
    (WaitTimeout, 4),
    (TaskFailed, 5),
    (TaskCancelled, 5),
    (AlreadyFinished, 5),
)

_EXIT_HELP = """\
exit codes:
  0    ok
  1    server unreachable, server error, or the server shut down while waiting
  2    usage error, or input the server rejected (400, 413, 422)
  3    no such task, its record expired, or it was lost with a server restart
  4    result not ready yet, or --timeout elapsed
  5    task failed or was cancelled, or cancelling a task that already finished
  75   server busy: retry after the time the message gives
  77   token missing or refused
  130  interrupted (Ctrl+C)"""

_EXAMPLES = """\
examples:
  python client.py call -c 3 -a 'example'     queue a task, print its id
  python client.py get -i 1 -s                print the status of task 1
  worktask call -c reverse -a 'пример' -p     queue, wait, print the result: ремирп
  worktask get -i 7 -v                        print the result of task 7
  id=$(worktask call -c 1 -a abc)             the id alone is printed on stdout
  worktask --json list --status queued        scripts read one JSON object"""


class _Interrupted(Exception):
    """Ctrl+C; the message says what became of the task."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: the command runs in shell loops."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, without its import of shutil (milliseconds) for the width."""

    def __init__(self, prog: str) -> None:
        try:
            width = os.get_terminal_size(sys.stdout.fileno()).columns - 2
        except (OSError, ValueError):
            width = 78
        super().__init__(prog, width=max(width, 40))


TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing

if TYPE_CHECKING:  # typing costs milliseconds at every start; annotations only need it here
    from typing import Any, NoReturn, Protocol

    class _Progress(Protocol):
        def __enter__(self) -> _Progress: ...

        def __exit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            traceback: TracebackType | None,
        ) -> None: ...

        def update(self, info: TaskInfo) -> None: ...


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command and return its exit code; failures are one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except _Interrupted as exc:
        return _interrupted(str(exc))
    except KeyboardInterrupt:
        return _interrupted("interrupted")
    except WorktaskError as exc:
        _fail(_explain(exc, args))
        return exit_code(exc)
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except Exception as exc:  # a bug; still one line, never a traceback
        _fail(f"unexpected error: {type(exc).__name__}: {exc}")
        return 1


def exit_code(error: WorktaskError) -> int:
    """The documented exit code of a client error."""
    return next((code for kind, code in _EXIT_CODES if isinstance(error, kind)), 1)


def build_parser() -> argparse.ArgumentParser:
    """The command line: global options, then one command."""
    parser = _Parser(
        prog="worktask",
        description="Submit tasks to a worktask server and fetch their status and results.",
        epilog=f"{_EXAMPLES}\n\n{_EXIT_HELP}",
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help=f"server URL (default: $WORKTASK_URL or {DEFAULT_URL})",
    )
    parser.add_argument("--token", help="bearer token (default: $WORKTASK_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--version", action="version", version=f"worktask {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_call(commands)
    _add_get(commands)
    _add_cancel(commands)
    _add_list(commands)
    _add_types(commands)
    return parser


def _command(
    commands: argparse._SubParsersAction[_Parser], name: str, summary: str, examples: str
) -> _Parser:
    command = commands.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"examples:\n{examples}\n\n{_EXIT_HELP}",
        formatter_class=_Formatter,
    )
    # Also after the command, where people type it; SUPPRESS keeps a global --json standing.
    command.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object"
    )
    return command


def _add_call(commands: argparse._SubParsersAction[_Parser]) -> None:
    call = _command(
        commands,
        "call",
        "queue a task; print its id, or with -p wait for it and print its result",
        "  python client.py call -c 3 -a 'example'\n"
        "  worktask call -c swap -a 'пример' -p          prints рпмире\n"
        "  result=$(worktask call -c 1 -a abc -p)        stdout carries only the result",
    )
    call.add_argument(
        "-c", "--code", required=True, type=_task_type, help="task type: 1, 2, 3 or its name"
    )
    call.add_argument("-a", "--arg", required=True, metavar="TEXT", help="the task's data")
    call.add_argument(
        "-p",
        "--packet",
        action="store_true",
        help="batch mode: wait for the task (status on stderr), then print its result",
    )
    call.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="with -p: give up waiting after this long (exit 4; the task stays on the server)",
    )
    call.set_defaults(handler=_call)


def _add_get(commands: argparse._SubParsersAction[_Parser]) -> None:
    get = _command(
        commands,
        "get",
        "print a task's status (-s) or its result (-v)",
        "  python client.py get -i 1 -s\n  worktask get -i 1 -v",
    )
    get.add_argument("-i", "--id", required=True, type=_task_id, help="the task's id")
    what = get.add_mutually_exclusive_group(required=True)
    what.add_argument("-s", "--status", action="store_true", help="print the status")
    what.add_argument("-v", "--value", action="store_true", help="print the result alone")
    get.set_defaults(handler=_get)


def _add_cancel(commands: argparse._SubParsersAction[_Parser]) -> None:
    cancel = _command(
        commands, "cancel", "cancel a queued or running task", "  worktask cancel -i 7"
    )
    cancel.add_argument("-i", "--id", required=True, type=_task_id, help="the task's id")
    cancel.set_defaults(handler=_cancel)


def _add_list(commands: argparse._SubParsersAction[_Parser]) -> None:
    tasks = _command(
        commands,
        "list",
        "list the tasks the server keeps, newest first",
        "  worktask list\n  worktask list --status queued --limit 5",
    )
    tasks.add_argument("--status", choices=[status.value for status in TaskStatus])
    tasks.add_argument("--limit", type=_task_id, default=20, help="at most this many (default 20)")
    tasks.set_defaults(handler=_list)


def _add_types(commands: argparse._SubParsersAction[_Parser]) -> None:
    types = _command(commands, "types", "list the task types the server runs", "  worktask types")
    types.set_defaults(handler=_types)


def _run(args: argparse.Namespace) -> int:
    url = args.server or os.environ.get("WORKTASK_URL") or DEFAULT_URL
    token = args.token or os.environ.get("WORKTASK_TOKEN") or None
    try:
        client = Client(url, token=token)
    except ValueError as exc:
        _fail(f"--server: {exc}")
        return 2
    with client:
        handler: Callable[[Client, argparse.Namespace], None] = args.handler
        handler(client, args)
    sys.stdout.flush()  # here, so that a closed pipe is reported inside main
    return 0


def _call(client: Client, args: argparse.Namespace) -> None:
    try:
        task = client.submit(args.code, args.arg)
    except KeyboardInterrupt:
        raise _Interrupted(
            "interrupted before the server answered; the task may have been queued "
            "(see 'worktask list')"
        ) from None
    if args.packet:
        _call_and_wait(client, args, task)
        return
    if args.json:
        _print_json(task.to_json())
        return
    _print(str(task.id))
    if sys.stderr.isatty():
        _note(f"task {task.id} queued; fetch its result with 'worktask get -i {task.id} -v'")


def _call_and_wait(client: Client, args: argparse.Namespace, task: TaskInfo) -> None:
    """Batch mode: status on stderr as it changes, then the result alone on stdout."""
    _note(f"task {task.id} queued")
    later = f"fetch its result later with 'worktask get -i {task.id} -v'"
    try:
        with _progress(task) as progress:
            final = client.wait(task.id, timeout=args.timeout, on_update=progress.update)
        result = _final_result(client, final)
    except KeyboardInterrupt:
        raise _Interrupted(f"interrupted; task {task.id} stays on the server: {later}") from None
    except WaitTimeout as exc:
        exc.message = f"{exc.message}; it stays on the server: {later}"
        raise
    if args.json:
        _print_json({"id": final.id, "result": result, "task": final.to_json()})
    else:
        _print(result)


def _final_result(client: Client, final: TaskInfo) -> str:
    if final.status is TaskStatus.FAILED:
        raise TaskFailed(f"task {final.id} failed: {final.error or 'no reason given'}", task=final)
    if final.status is TaskStatus.CANCELLED:
        raise TaskCancelled(f"task {final.id} was cancelled", task=final)
    return client.result(final.id)


def _get(client: Client, args: argparse.Namespace) -> None:
    if args.value:
        result = client.result(args.id)
        if args.json:
            _print_json({"id": args.id, "result": result})
        else:
            _print(result)
        return
    info = client.status(args.id)
    if args.json:
        _print_json(info.to_json())
    else:
        _print(_status_block(info))


def _cancel(client: Client, args: argparse.Namespace) -> None:
    info = client.cancel(args.id)
    if args.json:
        _print_json(info.to_json())
    else:
        _print(_summary(info))


def _list(client: Client, args: argparse.Namespace) -> None:
    tasks = client.list(args.status, args.limit)
    if args.json:
        _print_json({"tasks": [task.to_json() for task in tasks]})
    elif tasks:
        _print("\n".join(_row(task) for task in tasks))


def _types(client: Client, args: argparse.Namespace) -> None:
    types = client.types()
    if args.json:
        _print_json({"types": [kind.as_dict() for kind in types]})
        return
    for kind in types:
        _print(f"{kind.code}  {kind.name:<8}  {kind.duration_seconds:g} s  {kind.description}")


def _summary(info: TaskInfo) -> str:
    """One line, as batch mode prints on each change: `task 7: queued, position 2, eta 4.0 s`."""
    text = f"task {info.id}: {info.status.value}"
    if info.status is TaskStatus.QUEUED and info.position is not None:
        text += f", position {info.position}"
    if info.eta_seconds is not None and not info.finished:
        text += f", eta {info.eta_seconds:.1f} s"
    if info.status is TaskStatus.DONE:
        elapsed = info.elapsed_seconds
        text += f" in {elapsed if elapsed is not None else info.duration_seconds or 0:.2f} s"
    if info.status is TaskStatus.FAILED:
        text += f": {info.error or 'no reason given'}"
    return text


def _status_block(info: TaskInfo) -> str:
    """`get -s`: one `name  value` line per known field."""
    rows = {
        "task": str(info.id),
        "type": f"{info.type} (code {info.code})",
        "status": info.status.value,
        "position": _maybe(info.position, "{}"),
        "eta": _maybe(info.eta_seconds, "{:.1f} s"),
        "progress": _maybe(info.progress, "{:.0%}"),
        "created": _maybe(info.created_at, "{:%Y-%m-%d %H:%M:%S.%f} UTC"),
        "started": _maybe(info.started_at, "{:%Y-%m-%d %H:%M:%S.%f} UTC"),
        "finished": _maybe(info.finished_at, "{:%Y-%m-%d %H:%M:%S.%f} UTC"),
        "ran": _maybe(info.elapsed_seconds, "{:.2f} s"),
        "duration": _maybe(info.duration_seconds, "{:.2f} s"),
        "error": info.error,
        "data": info.data_preview,
    }
    return "\n".join(f"{name:<9} {value}" for name, value in rows.items() if value)


def _row(info: TaskInfo) -> str:
    """`list`: one line per task."""
    created = _maybe(info.created_at, "{:%H:%M:%S}") or "-"
    detail = _summary(info).partition(": ")[2].removeprefix(info.status.value).lstrip(", ")
    line = f"{info.id:>6}  {info.type:<8}  {info.status.value:<9}  {created}  {detail}"
    return f"{line.rstrip()}  {info.data_preview!r}"


def _maybe(value: object, template: str) -> str | None:
    return None if value is None else template.format(value)


def _progress(task: TaskInfo) -> _Progress:
    """A live line on a terminal; one plain line per change otherwise."""
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb" and _has_rich():
        return _LiveProgress(task)
    return _PlainProgress()


def _has_rich() -> bool:
    """Whether rich can be imported: `python client.py` runs with nothing but Python."""
    import importlib.util

    return importlib.util.find_spec("rich") is not None


class _PlainProgress:
    """One line on stderr per change of status or queue position."""

    def __init__(self) -> None:
        self._last: tuple[TaskStatus, int | None] | None = None

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def update(self, info: TaskInfo) -> None:
        """Print the task's state if it changed."""
        key = (info.status, info.position)
        if key != self._last:
            self._last = key
            _note(_summary(info))


class _LiveProgress:
    """A live line drawn with rich: position and ETA while queued, a bar while running."""

    def __init__(self, task: TaskInfo) -> None:
        from rich.console import Console  # lazily: rich costs more to import than we start in
        from rich.live import Live

        self._info = task
        self._seen = time.monotonic()  # when `_info` arrived, to count its ETA down
        self._console = Console(stderr=True)
        self._live = Live(
            console=self._console,
            get_renderable=self._render,
            refresh_per_second=12,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> _LiveProgress:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._live.stop()
        if exc_type is None:
            _note(_summary(self._info))

    def update(self, info: TaskInfo) -> None:
        """Show the task's new state."""
        self._info, self._seen = info, time.monotonic()
        self._live.refresh()

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table

        info = self._info
        left = None
        if info.eta_seconds is not None:
            left = max(info.eta_seconds - (time.monotonic() - self._seen), 0.0)
        line = Table.grid(padding=(0, 1))
        if info.status is TaskStatus.RUNNING and info.duration_seconds:
            total = info.duration_seconds
            done = total - left if left is not None else total * (info.progress or 0.0)
            line.add_row(
                f"task {info.id} running",
                ProgressBar(total=total, completed=done, width=30),
                f"{done:.1f}/{total:.1f} s",
            )
            return line
        text = f"task {info.id} {info.status.value}"
        if info.position is not None:
            text += f", position {info.position}"
        if left is not None:
            text += f", eta {left:.1f} s"
        line.add_row(Spinner("dots"), text)
        return line


def _task_type(text: str) -> int | str:
    """A type code such as `1`, or a name such as `reverse`; the server knows which exist."""
    text = text.strip()
    return int(text) if text.isdigit() else text


def _task_id(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _explain(error: WorktaskError, args: argparse.Namespace) -> str:
    """The one line that tells the user what went wrong and what to do."""
    if isinstance(error, Unauthorized):
        if args.token or os.environ.get("WORKTASK_TOKEN"):
            return "the server refused the token (from --token or WORKTASK_TOKEN)"
        return "the server requires a token: pass --token or set WORKTASK_TOKEN"
    if isinstance(error, ServerBusy) and "retry" not in error.message.lower():
        when = f"in {error.retry_after} s" if error.retry_after is not None else "later"
        return f"the server is busy ({error.message}); retry {when}"
    return error.message


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


def _print_json(data: object) -> None:
    _print(json.dumps(data, ensure_ascii=False))


def _note(text: str) -> None:
    """A line for the human on stderr; stdout stays for what scripts read."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except OSError:
        pass  # nobody is listening; the exit code still tells


def _fail(message: str) -> None:
    _note("worktask: " + " ".join(message.split()))  # one line, whatever the server sent


def _interrupted(message: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not print a traceback
    _fail(message)
    return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the exit flush does not fail too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
