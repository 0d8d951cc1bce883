"""The dashboard at `/`, driven in Debian's Chromium (`/usr/bin/chromium`) through playwright.

Every test starts a real server process and waits on conditions of the page, never on sleeps.
Without Chromium these tests skip, unless WORKTASK_REQUIRE_BROWSER=1 (as in CI) makes them fail.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect, sync_playwright

from conftest import ServerProcess, StartServer, clean_env, cli_command
from worktask.tasktypes import repeat, reverse, swap

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

CHROMIUM = Path("/usr/bin/chromium")
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
XSS = "<img src=x onerror=alert(1)>"
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM}: `apt-get install chromium` to run the browser tests"
        if os.environ.get("WORKTASK_REQUIRE_BROWSER") == "1":
            pytest.fail(f"WORKTASK_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Watched:
    """What the page did besides rendering: dialogs (alert), CSP violations, script errors."""

    def __init__(self, page: Page) -> None:
        self.dialogs: list[str] = []
        self.problems: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.problems.append(message.text)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watched = Watched(page)
    page.watched = watched  # type: ignore[attr-defined]
    yield page
    context.close()
    assert watched.dialogs == [], "the page opened a dialog: user data ran as code"
    assert watched.problems == []


def open_dashboard(page: Page, server: ServerProcess) -> None:
    page.goto(server.url + "/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    page.evaluate("window.notReloaded = true")


def still_same_page(page: Page) -> bool:
    return bool(page.evaluate("window.notReloaded === true"))


def post(server: ServerProcess, body: dict[str, Any], token: str | None = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request("POST", "/tasks", json.dumps(body), headers)
    reply = connection.getresponse()
    payload = json.loads(reply.read())
    connection.close()
    return reply.status, payload


def submit_from_form(page: Page, code: int, data: str) -> None:
    page.select_option("#task-type", str(code))
    page.fill("#task-data", data)
    page.press("#task-data", "Enter")


def recent_row(page: Page, task_id: int) -> Any:
    return page.locator("#recent-body tr").filter(has_text=f"#{task_id}")


def fill_width(page: Page) -> float:
    return float(page.evaluate("document.getElementById('running-fill').offsetWidth"))


def test_form_task_goes_queued_running_done_without_reload(
    start_server: StartServer, page: Page
) -> None:
    server = start_server(scale=0.5)  # swap 2.5 s
    open_dashboard(page, server)
    submit_from_form(page, 2, "first, to keep the runner busy")
    expect(page.locator("#running-data")).to_have_text("first, to keep the runner busy")
    submit_from_form(page, 2, "hello world")

    queued = page.locator("#queue-body tr").filter(has_text="hello world")
    expect(queued).to_be_visible()
    expect(queued).to_contain_text("swap")
    expect(queued.locator(".position")).to_have_text("1")
    expect(queued.locator(".eta")).to_contain_text("in ")
    expect(page.locator("#task-data")).to_have_value("")  # cleared, ready for the next one

    expect(page.locator("#running-data")).to_have_text("hello world")
    expect(queued).to_have_count(0)
    start = fill_width(page)
    page.wait_for_function(
        "w => document.getElementById('running-fill').offsetWidth > w + 20", arg=start
    )
    assert int(page.get_attribute("#running-progress", "aria-valuenow") or 0) > 0

    row = recent_row(page, 2)
    expect(row).to_contain_text("done")
    expect(row.locator(".result-preview")).to_have_text(swap("hello world"))
    expect(page.locator("#running-empty")).to_be_visible()
    expect(page.locator("#count-done")).to_have_text("2")
    expect(page.locator("#timeline-bars .bar")).to_have_count(2)
    assert still_same_page(page)


def test_task_from_the_cli_appears_live_and_its_long_result_opens_whole(
    start_server: StartServer, page: Page
) -> None:
    server = start_server(scale=0.2)  # repeat 1.4 s
    open_dashboard(page, server)
    text = "from the command line"
    cli = subprocess.run(
        cli_command("--json", "call", "-c", "3", "-a", text, url=server.url),
        capture_output=True,
        text=True,
        timeout=20,
        env=clean_env(),
        check=True,
    )
    task_id = json.loads(cli.stdout)["id"]

    expect(page.locator("#running-data")).to_have_text(text)
    row = recent_row(page, task_id)
    expect(row).to_contain_text("done")
    expect(row.locator(".result-preview")).to_contain_text("…")  # cut in the list
    row.get_by_role("button", name=f"Show or copy the full result of task {task_id}").click()
    expect(page.locator("#result-dialog")).to_be_visible()
    expect(page.locator("#result-text")).to_have_value(repeat(text))
    page.get_by_role("button", name="Close").click()
    expect(page.locator("#result-dialog")).to_be_hidden()
    assert still_same_page(page)


def test_cancel_queued_and_running_tasks_from_the_page(
    start_server: StartServer, page: Page
) -> None:
    server = start_server(scale=1)
    post(server, {"type": "repeat", "data": "long one"})
    post(server, {"type": "reverse", "data": "waiting"})
    open_dashboard(page, server)
    expect(page.locator("#running-data")).to_have_text("long one")
    expect(page.locator("#queue-body tr")).to_have_count(1)

    page.get_by_role("button", name="Cancel task 2 (reverse)").click()
    expect(recent_row(page, 2)).to_contain_text("cancelled")
    expect(page.locator("#queue-empty")).to_be_visible()

    page.get_by_role("button", name="Cancel running task 1 (repeat)").click()
    expect(recent_row(page, 1)).to_contain_text("cancelled")
    expect(page.locator("#running-empty")).to_be_visible()
    expect(page.locator("#count-cancelled")).to_have_text("2")
    expect(page.locator("#timeline-bars .bar.cancelled")).to_have_count(1)  # #2 never ran


def test_user_data_is_shown_as_text_never_run(start_server: StartServer, page: Page) -> None:
    server = start_server(scale=0.5)  # reverse 1 s
    open_dashboard(page, server)
    submit_from_form(page, 1, XSS)
    expect(page.locator("#running-data")).to_have_text(XSS)
    row = recent_row(page, 1)
    expect(row.locator(".preview")).to_have_text(XSS)
    expect(row.locator(".result-preview")).to_have_text(reverse(XSS))
    assert page.locator("img").count() == 0
    # The fixture then checks that no dialog (alert) opened and that CSP blocked nothing.


def test_rejected_submissions_show_the_servers_detail(
    start_server: StartServer, page: Page
) -> None:
    server = start_server("--max-data-chars", "10", "--max-queue", "1", scale=1)
    open_dashboard(page, server)
    status, problem = post(server, {"type": 1, "data": "x" * 11})
    assert status == 422
    page.select_option("#task-type", "1")
    page.fill("#task-data", "x" * 11)
    page.get_by_role("button", name="Submit").click()
    error = page.locator("#submit-error")
    expect(error).to_have_text(problem["detail"])
    expect(page.locator("#task-data")).to_have_value("x" * 11)  # kept, to be corrected

    submit_from_form(page, 3, "fits")  # runs
    expect(page.locator("#running-data")).to_have_text("fits")
    expect(error).to_be_hidden()
    submit_from_form(page, 3, "queued")  # fills the queue
    expect(page.locator("#queue-body tr")).to_have_count(1)
    submit_from_form(page, 3, "too many")
    expect(error).to_be_visible()
    status, problem = post(server, {"type": 3, "data": "too many"})
    assert status == 503
    expect(error).to_contain_text(problem["detail"])
    expect(error).to_contain_text("retry after")


def test_token_is_asked_once_and_sent_everywhere(start_server: StartServer, page: Page) -> None:
    server = start_server("--token", "s3cret", scale=0)
    page.goto(server.url + "/")
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    page.get_by_role("textbox", name="Token").fill("wrong")
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#token-message")).to_contain_text("refused")
    page.get_by_role("textbox", name="Token").fill("s3cret")
    page.get_by_role("button", name="Use token").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(page.locator("#task-type option")).to_have_count(3)

    submit_from_form(page, 1, "abc")
    expect(recent_row(page, 1).locator(".result-preview")).to_have_text("cba")
    assert page.evaluate("sessionStorage.getItem('worktask.token')") == "s3cret"

    page.reload()  # kept for the browser session: not asked again
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(recent_row(page, 1)).to_contain_text("done")
    expect(dialog).to_be_hidden()


def test_reconnects_when_the_server_comes_back(start_server: StartServer, page: Page) -> None:
    first = start_server(scale=0)
    open_dashboard(page, first)
    first.stop()
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("#connection")).to_contain_text("reconnecting")
    second = start_server(scale=0, port=first.port)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    post(second, {"type": 1, "data": "after"})
    expect(recent_row(page, 1)).to_contain_text("retfa")
    assert still_same_page(page)
