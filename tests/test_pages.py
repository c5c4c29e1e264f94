"""Tests for scheduler.pages: the HTML of each page from views built by hand (no store, no HTTP).

What matters most here is what must never reach a page: a task's output or a pause's reason as markup, an env
value, a ping URL's token, a store's password, an inline script or style."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from scheduler import pages
from scheduler.config import parse_config
from scheduler.dashboard import ClocksPage, Overview, RunsPage, Situation, StoreStatus, TaskPage, TaskRow
from scheduler.store import Action, ClockRow, Override, RunPage, RunRecord

NOW = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
CONFIG = parse_config(
    """\
timezone: Europe/London
tasks:
  backup:
    schedule: "30 1 * * *"
    command: ./bin/backup --all
    env: {DB_PASSWORD: hunter2-secret}
    ping_url: https://hc-ping.com/ping-token-123/backup
  report:
    schedule: every 10 minutes
    command: [echo, report]
""",
    "schedules.yaml",
)
BACKUP, REPORT = CONFIG.tasks["backup"], CONFIG.tasks["report"]
CHROME = pages.Chrome(csrf="tok" * 10, read_only=False, version="0.1.0", here="/")
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def run(
    task: str = "backup",
    status: str = "succeeded",
    minutes_ago: int = 5,
    duration_s: float = 2.0,
    **fields: object,
) -> RunRecord:
    at = NOW - timedelta(minutes=minutes_ago)
    values: dict[str, object] = {
        "task": task,
        "scheduled_for": at,
        "trigger": "schedule",
        "run_id": f"{minutes_ago:012x}",
        "claimed_by": "clock.1:4:abcdef",
        "started_at": at,
        "status": status,
        "finished_at": at + timedelta(seconds=duration_s),
        "exit_code": 0,
        "duration_s": duration_s,
        **fields,
    }
    return RunRecord(**values)  # type: ignore[arg-type]


def row(spec: object = BACKUP, **fields: object) -> TaskRow:
    values: dict[str, object] = {
        "spec": spec,
        "words": "at 01:30",
        "next": BACKUP.schedule.next_fire(NOW),
        "last": None,
        "pause": None,
        **fields,
    }
    return TaskRow(**values)  # type: ignore[arg-type]


def overview(*rows: TaskRow, live: int | None = 1, query: str = "") -> Overview:
    return Overview(Situation(NOW, live), list(rows), len(rows), len(rows), 0, 0, 1, 1, query, False)


def task_page(task_row: TaskRow, history: list[RunRecord], override: Override | None = None) -> TaskPage:
    fires = task_row.spec.schedule.fires(NOW, 10)
    actions = [Action(1, NOW, EVIL, "pause", task_row.name, EVIL)]
    return TaskPage(
        Situation(NOW, 1),
        task_row,
        fires,
        history,
        RunPage(history, "123.4"),
        None,
        None,
        None,
        override,
        actions,
        [],
    )


def all_pages(chrome: pages.Chrome = CHROME) -> list[str]:
    """Every page, with hostile text wherever text from outside can go."""
    bad_run = run(output=EVIL, signal=None, claimed_by=EVIL)
    paused = Override("backup", True, None, EVIL, EVIL, NOW)
    rows = [row(last=bad_run, strip=(bad_run,), pause=paused), row(REPORT, words="every 10 minutes")]
    clock = ClockRow(EVIL, EVIL, 4, EVIL, NOW, NOW, True, EVIL)
    store = StoreStatus("postgresql", "postgresql://app:pg-pass-999@db/x", False, None, EVIL)
    return [
        pages.overview(overview(*rows, query=EVIL), chrome),
        pages.task_page(task_page(rows[0], [bad_run], paused), chrome),
        pages.runs_page(
            RunsPage(Situation(NOW, 1, EVIL, EVIL), [bad_run], "1.2", None, None, None, True), chrome
        ),
        pages.clocks_page(ClocksPage(Situation(NOW, 1), [clock], "d" * 64, frozenset({EVIL}), store), chrome),
        pages.error_page(404, EVIL, chrome, NOW),
    ]


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every start tag of the page with its attributes, as a browser parses them."""
    found: list[tuple[str, dict[str, str | None]]] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, dict(attrs)))

    Parser().feed(page)
    return found


class TestNothingHostileReachesThePage:
    @pytest.mark.parametrize("index", range(5), ids=["overview", "task", "runs", "clocks", "error"])
    def test_outside_text_is_escaped(self, index: int) -> None:
        """Output, reasons, names, clock ids, a search: shown as text, never as markup."""
        page = all_pages()[index]
        assert "<script>alert" not in page
        assert "<img src=x" not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page

    @pytest.mark.parametrize("index", range(5), ids=["overview", "task", "runs", "clocks", "error"])
    def test_no_inline_script_or_style(self, index: int) -> None:
        """The Content-Security-Policy forbids them: every script has a src, no element has a style or an
        event handler attribute."""
        tags = _tags(all_pages()[index])
        assert [{"src": "/static/dashboard.js?v=0.1.0", "defer": None}] == [
            a for t, a in tags if t == "script"
        ]
        assert [] == [(t, a) for t, a in tags if any(k == "style" or k.startswith("on") for k in a)]

    def test_secrets_masked(self) -> None:
        """An env value, a ping URL's token and a store's password appear on no page."""
        text = "".join(all_pages())
        for secret in ("hunter2-secret", "ping-token-123", "pg-pass-999"):
            assert secret not in text
        assert "DB_PASSWORD" in text  # the name shows, its value does not
        assert "https://hc-ping.com/" in text


class TestOverview:
    def test_columns(self) -> None:
        """Schedule in words and as written, zone, next fire relative and absolute, last run, strip."""
        last = run(status="failed", duration_s=3.5)
        page = pages.overview(overview(row(last=last, strip=(last, run(minutes_ago=10)))), CHROME)
        assert "at 01:30" in page
        assert "<code>30 1 * * *</code>" in page
        assert "Europe/London" in page
        assert "in 12 h 30 min" in page  # 01:30 BST on the 25th is 00:30 UTC
        assert "2026-10-25 01:30:00 BST" in page
        assert '<span class="status s-failed">failed</span>' in page
        assert "3.50 s" in page
        assert 2 == page.count('<rect class="s-')
        assert 'class="badge bad">failing' in page

    def test_strip_height_by_duration(self) -> None:
        """The longest run shown is a full bar, a quick one a short one; oldest on the left."""
        strip = (run(duration_s=10.0, minutes_ago=1), run(duration_s=0.0, minutes_ago=2))
        svg = pages.overview(overview(row(strip=strip)), CHROME)
        heights = [
            int(h)
            for h in re.findall(r'<rect class="s-succeeded" x="\d+" y="\d+" width="5" height="(\d+)"', svg)
        ]
        assert [3, 24] == heights

    def test_paused_running_and_actions(self) -> None:
        """A pause shows as a badge naming who and why, and offers resume; running shows; run now posts."""
        paused = Override("backup", True, None, "db move", "web:ana", NOW)
        going = run(status="running", duration_s=0, minutes_ago=0)
        page = pages.overview(overview(row(pause=paused, running=(going,))), CHROME)
        assert 'class="badge paused"' in page
        assert "Paused by web:ana" in page
        assert "db move" in page
        assert "skipped: paused" in page
        assert 'action="/api/tasks/backup/resume"' in page
        assert 'action="/api/tasks/backup/run"' in page
        assert 'action="/api/tasks/backup/pause"' not in page
        assert "running" in page
        assert f'name="csrf" value="{CHROME.csrf}"' in page

    def test_no_live_clock(self) -> None:
        """The page says so, and run now is off instead of pretending."""
        page = pages.overview(overview(row(), live=0), CHROME)
        assert 'id="no-clock"' in page
        assert re.search(
            r'<button type="submit" class="run" disabled title="no live clock would run it">', page
        )

    def test_read_only(self) -> None:
        """No action anywhere: no POST form, no button but the search's."""
        chrome = pages.Chrome(csrf="t" * 30, read_only=True, version="0.1.0", here="/")
        for page in all_pages(chrome):
            assert 'method="post"' not in page
            assert "Run now" not in page
        assert "read-only" in all_pages(chrome)[0]


class TestTaskPage:
    def test_definition_fires_and_history(self) -> None:
        """The command, the next 10 fires with the DST note of the night the clocks go back, the history
        with each run's output behind a disclosure, the next page's link."""
        history = [run(output="done\n", exit_code=0), run(status="timed_out", minutes_ago=60, exit_code=None)]
        page = pages.task_page(task_page(row(), history), CHROME)
        assert "<code>./bin/backup --all</code>" in page
        assert "first of two 01:30s (DST ended)" in page
        assert 10 == page.count("<tr><td>2026-")
        assert '<pre class="output">done\n</pre>' in page
        assert 'href="/tasks/backup?before=123.4" rel="next"' in page
        assert '<svg class="chart"' in page
        assert 'name="for"' in page
        assert 'name="reason"' in page

    def test_override_says_it_overrides_the_file(self) -> None:
        """A pause is shown as overriding schedules.yaml; a resume names who resumed."""
        paused = Override("backup", True, None, "", "web:ana", NOW - timedelta(minutes=3))
        page = pages.task_page(task_page(row(pause=paused), [], paused), CHROME)
        assert "Paused by web:ana 3 min ago until resumed. Overrides schedules.yaml." in page
        resumed = Override("backup", False, None, "", "web:bob", NOW - timedelta(minutes=1))
        page = pages.task_page(task_page(row(), [], resumed), CHROME)
        assert "Resumed by web:bob 1 min ago." in page


class TestFormats:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(0.0042, "4 ms"), (4.2, "4.20 s"), (42.0, "42.0 s"), (182.0, "3 min 2 s"), (3900.0, "1 h 5 min")],
    )
    def test_durations(self, seconds: float, text: str) -> None:
        """Milliseconds to hours, as people read them."""
        assert text == pages._dur(seconds)

    @pytest.mark.parametrize(
        ("delta", "text"),
        [
            (0.4, "now"),
            (12, "in 12 s"),
            (-240, "4 min ago"),
            (3 * 3600 + 300, "in 3 h 5 min"),
            (-90000, "1 d 1 h ago"),
        ],
    )
    def test_relative(self, delta: float, text: str) -> None:
        """Relative to the page's time."""
        assert text == pages._rel(NOW + timedelta(seconds=delta), NOW)
