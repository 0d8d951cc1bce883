"""Save docs/dashboard.png: the dashboard with tasks in every state.

    .venv/bin/python docs/screenshot.py [--width 1280] [--out docs/dashboard.png] [--dark]

Starts a real server on a free port, submits tasks over HTTP, cancels two, and photographs the
page in Debian's Chromium (/usr/bin/chromium) through playwright.
"""

from __future__ import annotations

import argparse
import http.client
import json
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any

from playwright.sync_api import sync_playwright

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    payload = None if body is None else json.dumps(body)
    connection.request(method, path, payload, {"Content-Type": "application/json"})
    reply = connection.getresponse()
    return json.loads(reply.read())


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--width", type=int, default=1280)
    options.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    options.add_argument("--dark", action="store_true")
    args = options.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "worktask.server", "--port", str(port), "--delay-scale", "1"],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                call(port, "GET", "/healthz")
                break
            except OSError:
                time.sleep(0.05)
        words = ["hello world", "пример", "кот", "<img src=x onerror=alert(1)>", "abcdef"]
        for code, data in zip([1, 2, 1, 3, 1], words, strict=True):
            call(port, "POST", "/tasks", {"type": code, "data": data})
        time.sleep(2.5)
        call(port, "DELETE", "/tasks/2")  # cancelled while running
        time.sleep(2.5)
        for code, data in [(2, "queued one"), (3, "queued two"), (1, "queued three")]:
            call(port, "POST", "/tasks", {"type": code, "data": data})
        call(port, "DELETE", "/tasks/8")  # cancelled while queued
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            page = browser.new_page(
                viewport={"width": args.width, "height": 900},
                color_scheme="dark" if args.dark else "light",
            )
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#connection[data-state=live]")
            page.wait_for_selector("#recent-body .result-preview")
            page.wait_for_timeout(400)  # let the progress bar move a little
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(5)
    print(args.out)


if __name__ == "__main__":
    main()
