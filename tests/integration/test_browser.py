"""The dashboard in a real browser: the distribution's Chromium, headless, driven by Playwright.

One clock (`scheduler run --web`, SQLite) and one browser serve the whole module. Run now from the page and
the run shows; pause from the page and the clock skips; a cross-site POST is refused; credentials are required
off loopback; a task printing <script> shows it as text. The pages' screenshots are taken here too: with
SCHEDULER_SCREENSHOTS=1 they are written to docs/screenshots/ (for the README), else to a temporary folder.

Chromium is /usr/bin/chromium (apt-get install chromium; .ci/run installs it): without it, or without
Playwright, these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from scheduler.store import ClockInfo, RunRecord, open_store
from tests.integration.conftest import ClockProcess, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("SCHEDULER_TEST_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
CONFIG = f"""\
timezone: Europe/London
store: sqlite:///state.db
tasks:
  heartbeat:
    schedule: "* * * * * *"
    command: echo tick
  send-digest:
    schedule: "0 9 * * MON-FRI"
    command: echo "sending the morning digest"
    env: {{SMTP_PASSWORD: hunter2}}
  import-orders:
    schedule: "H * * * *"
    command: [sh, -c, "sleep 0.2; echo imported 42 orders"]
    timezone: America/New_York
  nightly-report:
    schedule: daily at 02:00
    command: ./bin/report
    ping_url: https://hc-ping.com/secret-ping-key/nightly-report
  html-report:
    schedule: "@daily"
    command: printf '%s\\n' '{SCRIPT}'
"""
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The schedules file, and a store holding a day of history, as screenshots want it."""
    folder = tmp_path_factory.mktemp("browser")
    (folder / "schedules.yaml").write_text(CONFIG)
    store = open_store(f"sqlite:///{folder / 'state.db'}")
    now = datetime.now(UTC)
    history = {"import-orders": (60, 9.0), "send-digest": (1440, 1.5), "nightly-report": (1440, 40.0)}
    for task, (every_min, typical_s) in history.items():
        for i in range(40, 0, -1):
            start = now - timedelta(minutes=every_min * i)
            failed = i in (3, 17) if task == "nightly-report" else i == 7
            duration = typical_s * (0.6 + (i * 37 % 10) / 10) * (2.5 if failed else 1)
            store.record(
                RunRecord(
                    task,
                    start,
                    "schedule",
                    uuid.uuid4().hex[:12],
                    "clock.1:4:5f0c2a",
                    start,
                    "failed" if failed else "succeeded",
                    start + timedelta(seconds=duration),
                    1 if failed else 0,
                    None,
                    duration,
                    "connection refused\n" if failed else "done\n",
                )
            )
    store.close()
    return folder


@pytest.fixture(scope="module")
def clock(project: Path) -> Iterator[ClockProcess]:
    clock = ClockProcess(project / "schedules.yaml", "--web", "127.0.0.1:0")
    clock.wait_event("scheduler.started")
    yield clock
    if clock.proc.poll() is None:
        clock.stop()


@pytest.fixture(scope="module")
def base(clock: ClockProcess) -> str:
    [serving] = clock.wait_event("web.serving", timeout=20)
    return str(serving["url"]).rstrip("/")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def api(base: str, path: str, method: str = "GET") -> Any:
    req = urllib.request.Request(f"{base}{path}", method=method)
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def paused(base: str, task: str) -> bool:
    return bool(next(t for t in api(base, "/api/tasks") if t["task"] == task)["paused"])


class TestActions:
    def test_run_now_and_see_the_run(self, page: Page, base: str, clock: ClockProcess) -> None:
        """Run now on a task's page: a notice, then the run in its history (trigger manual) without a
        reload, as the clock starts it within about a second."""
        from playwright.sync_api import expect

        page.goto(f"{base}/tasks/send-digest")
        page.get_by_role("button", name="Run now").click()
        expect(page.locator("#notice")).to_contain_text("send-digest: run requested")
        row = page.locator("table.runs tbody tr").filter(has_text="manual")
        expect(row.first).to_contain_text("succeeded", timeout=TIMEOUT_MS)
        [started] = clock.wait_event("task.started", task="send-digest", trigger="manual")
        assert "web:local" == started["requested_by"]

    def test_pause_and_see_the_clock_skip(self, page: Page, base: str, clock: ClockProcess) -> None:
        """Pause from the page with a reason: the badge shows it, the clock skips the task's fires; resume
        from the page: the badge goes and the task fires again."""
        from playwright.sync_api import expect

        page.goto(f"{base}/tasks/heartbeat")
        page.get_by_label("Reason").fill("maintenance <window>")
        page.get_by_role("button", name="Pause").click()
        expect(page.locator("h1 .badge.paused")).to_be_visible()
        expect(page.locator("p.state")).to_contain_text("maintenance <window>")
        clock.wait_event("task.skipped", task="heartbeat", reason="paused", timeout=10)
        page.get_by_role("button", name="Resume").click()
        expect(page.locator("h1 .badge.paused")).to_have_count(0)
        clock.wait_event("task.resumed", task="heartbeat", timeout=10)
        fired = len([e for e in clock.named("task.started") if e["task"] == "heartbeat"])
        clock.wait_event("task.started", task="heartbeat", count=fired + 1, timeout=10)

    def test_overview_actions(self, page: Page, base: str) -> None:
        """Pause and resume from the overview's row, the search box and the failing filter."""
        from playwright.sync_api import expect

        page.goto(base)
        row = page.locator("tr.task", has=page.locator("a", has_text="import-orders"))
        row.get_by_role("button", name="Pause").click()
        expect(row.locator(".badge.paused")).to_be_visible()
        assert paused(base, "import-orders")
        row.get_by_role("button", name="Resume").click()
        expect(row.locator(".badge.paused")).to_have_count(0)
        assert not paused(base, "import-orders")
        page.get_by_label("Search tasks").fill("digest")
        page.get_by_role("button", name="Search").click()
        expect(page.locator("tr.task")).to_have_count(1)
        page.goto(f"{base}/?failing=1")
        expect(page.locator("tr.task")).to_have_count(0)


class TestSecurity:
    def test_cross_site_post_refused(self, browser: Browser, base: str) -> None:
        """A page on another origin that makes the browser POST to the dashboard (a form, and a no-cors
        fetch), in a browser that has the dashboard's cookie: refused, nothing paused."""
        evil = _EvilSite(f"{base}/api/tasks/heartbeat/pause")
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(base)  # the browser now holds the dashboard's CSRF cookie
            with page.expect_response(lambda r: r.url.endswith("/pause")) as posted:
                page.goto(f"{evil.url}/form")
            assert 403 == posted.value.status
            assert "cross-site request refused" in page.content()
            page.goto(f"{evil.url}/fetch")
            page.wait_for_function("window.__done === true")
            assert not paused(base, "heartbeat")
        finally:
            context.close()
            evil.close()

    def test_credentials_required_off_loopback(
        self, browser: Browser, project: Path, start_web_process: Callable[..., ClockProcess]
    ) -> None:
        """Listening on every interface with a password: the browser gets 401 without credentials, the
        page with them."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        web = start_web_process(
            "--addr", f"0.0.0.0:{port}", env={"SCHEDULER_WEB_PASSWORD": "pw-123", "SCHEDULER_WEB_USER": "ops"}
        )
        web.wait_event("web.serving", timeout=20)
        url = f"http://127.0.0.1:{port}/"
        from playwright.sync_api import Error

        anonymous = browser.new_context()
        statuses: list[int] = []
        stranger = anonymous.new_page()
        stranger.on("response", lambda response: statuses.append(response.status))
        with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            stranger.goto(url)  # headless Chromium has no one to ask: it gives up on the 401
        assert [401] == statuses
        anonymous.close()
        known = browser.new_context(http_credentials={"username": "ops", "password": "pw-123"})
        page = known.new_page()
        response = page.goto(url)
        assert response is not None
        assert 200 == response.status
        assert "ops" == page.locator("header .user").inner_text()
        known.close()

    def test_script_output_is_inert(self, page: Page, base: str, clock: ClockProcess) -> None:
        """A task printing <script> and an <img onerror>: its output shows them as text, and neither runs."""
        from playwright.sync_api import expect

        api(base, "/api/tasks/html-report/run", "POST")
        clock.wait_event("task.finished", task="html-report", timeout=10)
        assert wait_until(lambda: bool(api(base, "/api/tasks/html-report/runs")))
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        page.goto(f"{base}/tasks/html-report")
        page.locator("details summary").first.click()
        expect(page.locator("pre.output").first).to_have_text(SCRIPT + "\n")
        page.wait_for_timeout(300)
        assert None is page.evaluate("window.__pwned")
        assert [] == dialogs
        assert 0 == page.locator("pre.output script, pre.output img").count()

    def test_no_secret_on_any_page(self, page: Page, base: str) -> None:
        """An env value and a ping URL's key appear nowhere."""
        for path in ("/", "/tasks/send-digest", "/tasks/nightly-report", "/runs", "/clocks"):
            page.goto(base + path)
            text = page.content()
            assert "hunter2" not in text
            assert "secret-ping-key" not in text


class TestLooks:
    def test_phone(self, browser: Browser, base: str, screenshots: Path) -> None:
        """On a phone's width each task is a card, and nothing overflows sideways."""
        context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        page = context.new_page()
        page.goto(base)
        assert "none" == page.locator("table.tasks thead").evaluate("e => getComputedStyle(e).display")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(screenshots / "phone.png"))
        context.close()

    def test_screenshots(self, page: Page, base: str, project: Path, screenshots: Path) -> None:
        """Each page, as the README shows it: with a task paused, and a second clock on an older file."""
        api(base, "/api/tasks/import-orders/pause?for=2h&reason=supplier%20API%20down", "POST")
        store = open_store(f"sqlite:///{project / 'state.db'}")
        old = ClockInfo("clock.2:4:9e1b7d", "clock.2", 4, "0.1.0", "9e1b7d" + "0" * 58)
        store.heartbeat(old)
        try:
            for name, path, full in (
                ("overview", "/", True),
                ("task", "/tasks/nightly-report?limit=8", True),
                ("runs", "/runs?failures=first", False),
                ("clocks", "/clocks", True),
            ):
                page.goto(base + path)
                page.screenshot(path=str(screenshots / f"{name}.png"), full_page=full)
                assert (screenshots / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        finally:
            store.stop_clock(old.id)
            store.close()
            api(base, "/api/tasks/import-orders/resume", "POST")


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the screenshots go: docs/screenshots/ with SCHEDULER_SCREENSHOTS=1, else a temporary folder."""
    if os.environ.get("SCHEDULER_SCREENSHOTS") == "1":
        folder = ROOT / "docs" / "screenshots"
        folder.mkdir(exist_ok=True)
        yield folder
        return
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def start_web_process(project: Path) -> Iterator[Callable[..., ClockProcess]]:
    """Start `scheduler web` on the module's project; stopped at the end of the test."""
    started: list[ClockProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ClockProcess:
        web = ClockProcess(project / "schedules.yaml", *args, env=env, command="web")
        started.append(web)
        return web

    yield start
    for web in started:
        web.stop(10)


class _EvilSite:
    """Another origin, whose pages make the browser POST to `target`: a form that submits itself, and a
    fetch without CORS (the kinds of request a browser sends cross-site without asking first)."""

    def __init__(self, target: str) -> None:
        pages = {
            "/form": (
                f'<form id="f" method="post" action="{target}"><input name="reason" value="csrf"></form>'
                '<script>document.getElementById("f").submit()</script>'
            ),
            "/fetch": (
                f'<script>fetch("{target}", {{method: "POST", mode: "no-cors", body: "reason=csrf", '
                'headers: {"Content-Type": "text/plain"}, credentials: "include"})'
                ".finally(() => { window.__done = true; })</script>"
            ),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path, "").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
