"""The server's entry point: read the settings, check them, and serve until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import resource
import secrets
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from types import FrameType

import uvicorn

from worktask import settings as settings_module
from worktask.api import create_app
from worktask.engine import Engine
from worktask.gateway import Gateway
from worktask.metrics import Metrics
from worktask.protocol import FastPathProtocol
from worktask.settings import Settings

log = logging.getLogger("worktask")
_SPARE_FILES = 64  # descriptors kept for logs, threads and the listening socket


def build(settings: Settings) -> tuple[Gateway, Engine]:
    """The engine and the ASGI application in front of it."""
    engine = Engine(settings)
    metrics = Metrics(engine)
    app = create_app(engine, metrics.render)
    instance = secrets.token_hex(8)
    app.state.instance = instance
    gateway = Gateway(
        app,
        engine,
        metrics,
        instance=instance,
        token=settings.token,
        max_body=settings.max_body_bytes,
    )
    return gateway, engine


class Server(uvicorn.Server):
    """uvicorn's server, which ends event streams on the first signal and exits 0."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.loop is not None and not self.engine.closing:
            log.info("stopping on signal %s", signal.Signals(sig).name)
            self.loop.call_soon_threadsafe(self.engine.stop_waiting)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after shutting down; a requested stop is a clean exit
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the exit status."""
    settings = settings_module.load(argv)
    _configure_logging(settings.log_level)
    refusal = _protected_mode(settings)
    if refusal:
        print(f"worktask-server: {refusal}", file=sys.stderr)
        return 2
    files = _raise_file_limit()
    gateway, engine = build(settings)
    protocol = functools.partial(
        FastPathProtocol,
        gateway=gateway,
        request_timeout=settings.timeout_request or 1e9,
        busy_app=gateway.busy,
    )
    config = uvicorn.Config(
        gateway,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol,  # type: ignore[arg-type]
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        limit_concurrency=min(settings.max_connections, files - _SPARE_FILES),
        timeout_keep_alive=settings.timeout_keep_alive,
        timeout_graceful_shutdown=1,
        server_header=False,
        proxy_headers=False,  # nothing stands in front: no proxy headers to trust or parse
        log_config=None,
    )
    server = Server(config, engine)
    log.info(
        "worktask listening on http://%s:%d (delay scale %g)",
        settings.host,
        settings.port,
        settings.delay_scale,
    )
    server.run()
    return 0 if server.started else 1


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _protected_mode(settings: Settings) -> str | None:
    """Why the server refuses to start, if it would be open to the network without a token."""
    if settings.token or settings.insecure or _is_loopback(settings.host):
        return None
    return (
        f"refusing to listen on {settings.host} without a token: anyone who can reach it could "
        "read every result. Set --token (or WORKTASK_TOKEN), or pass --insecure to allow it."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _raise_file_limit() -> int:
    """Allow as many open connections as the system lets this process have; the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


if __name__ == "__main__":
    sys.exit(main())
