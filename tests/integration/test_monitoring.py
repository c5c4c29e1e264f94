"""Knowing when a task failed, end to end: /metrics and /healthz, pings to a local server, hooks, retries."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration


def at(text: object) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class _PingServer:
    """Records every request; `hang` makes it accept and never answer."""

    def __init__(self, hang: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.hang = hang
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                path, _, query = self.path.partition("?")
                server.requests.append({"method": self.command, "path": path, "query": query, "body": body})
                if server.hang:
                    server.release.wait(30)
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def ping_server() -> Iterator[_PingServer]:
    server = _PingServer()
    yield server
    server.close()


class TestMetrics:
    def test_scrape_and_health(self, start_clock: Any) -> None:
        """/metrics parses and counts runs by status; /healthz is 200 with a JSON body while the loop runs."""
        port = free_port()
        clock = start_clock(
            "tasks:\n"
            '  ok:\n    schedule: "* * * * * *"\n    command: "true"\n'
            '  bad:\n    schedule: "* * * * * *"\n    command: "exit 2"\n',
            "--metrics-addr",
            str(port),
        )
        clock.wait_event("task.finished", task="bad", count=2)
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert 200 == status
        values = samples(body.decode())
        assert values[("scheduler_runs_total", frozenset({("task", "ok"), ("status", "succeeded")}))] >= 2
        assert values[("scheduler_runs_total", frozenset({("task", "bad"), ("status", "failed")}))] >= 2
        assert values[("scheduler_run_duration_seconds_count", frozenset({("task", "ok")}))] >= 2
        assert values[("scheduler_next_fire_timestamp_seconds", frozenset({("task", "ok")}))] > 0
        assert ("scheduler_last_success_timestamp_seconds", frozenset({("task", "bad")})) not in values
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert 200 == status
        assert "ok" == json.loads(body)["status"]
        serving = clock.named("metrics.serving")[0]
        assert f"http://127.0.0.1:{port}/metrics" == serving["url"]
        clock.stop()

    def test_address_in_use_is_a_clear_error(self, tmp_path: Path) -> None:
        """A port already taken: exit 2 with a message, no traceback."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            (tmp_path / "schedules.yaml").write_text("tasks: {}\n")
            result = run_cli("run", "--metrics-addr", f"127.0.0.1:{port}", cwd=tmp_path, timeout=20)
        assert 2 == result.returncode
        assert "cannot listen" in result.stderr
        assert "Traceback" not in result.stderr


class TestPings:
    def test_start_and_final_pings_with_rid_and_output(
        self, start_clock: Any, ping_server: _PingServer
    ) -> None:
        """Each run pings <url>/start, then <url> (or <url>/fail) with ?rid= and its output as the body."""
        clock = start_clock(
            "tasks:\n"
            f'  good:\n    schedule: "* * * * * *"\n    command: "echo all fine"\n'
            f"    ping_url: {ping_server.url}/good\n"
            f'  bad:\n    schedule: "* * * * * *"\n    command: "echo broken; exit 3"\n'
            f"    ping_url: {ping_server.url}/bad\n    ping_exit_code: true\n"
        )
        clock.wait_event("task.finished", task="bad", count=2)
        clock.stop()
        runs = {e["run_id"]: e["task"] for e in clock.named("task.started")}
        by_run: dict[str, list[dict[str, Any]]] = {}
        for request in ping_server.requests:
            rid = dict(pair.split("=") for pair in request["query"].split("&"))["rid"]
            by_run.setdefault(rid, []).append(request)
        finished = {e["run_id"] for e in clock.named("task.finished")}
        for run_id in finished:
            requests = by_run[run_id]
            name = runs[run_id]
            assert [("GET", f"/{name}/start")] == [(r["method"], r["path"]) for r in requests[:1]]
            final = requests[1]
            if name == "good":
                assert ("POST", "/good", "all fine") == (final["method"], final["path"], final["body"])
            else:
                assert ("POST", "/bad/3", "broken") == (final["method"], final["path"], final["body"])

    @pytest.mark.timing
    @pytest.mark.parametrize("kind", ["hangs", "refuses"])
    def test_a_bad_ping_server_does_not_delay_fires(self, start_clock: Any, kind: str) -> None:
        """A ping server that hangs or refuses: the per-second task still starts on the second."""
        server = _PingServer(hang=True) if kind == "hangs" else None
        url = server.url if server else f"http://127.0.0.1:{free_port()}"
        try:
            clock = start_clock(
                f'tasks:\n  tick:\n    schedule: "* * * * * *"\n    command: "true"\n    ping_url: {url}/x\n'
                "    ping_timeout: 2s\n"
            )
            started = clock.wait_event("task.started", count=4, timeout=20)[:4]
            clock.stop()
        finally:
            if server:
                server.close()
        lateness = [(at(e["timestamp"]) - at(e["scheduled_for"])).total_seconds() for e in started]
        assert all(late < 0.05 for late in lateness), lateness
        # A refused ping fails within its retries; a hung one is still being waited for at the stop.
        given_up = clock.named("ping.failed") + clock.named("ping.unsent")
        assert given_up
        assert "/x" not in json.dumps(given_up)
        failed = clock.named("ping.failed")
        assert all(e["task"] == "tick" and e["run_id"] and e["kind"] for e in failed), failed


def once_soon(lead_s: int = 3) -> str:
    """A 6-field cron that fires once, lead_s seconds from now (UTC)."""
    when = datetime.now(UTC) + timedelta(seconds=lead_s)
    return f"{when.second} {when.minute} {when.hour} {when.day} {when.month} *"


class TestHooksAndRetries:
    def test_retries_with_backoff_then_on_failure_once(self, start_clock: Any, tmp_path: Path) -> None:
        """A failing run is retried after 1 s and then 2 s, each attempt a run of its own with trigger retry
        and an attempt field; on_failure runs once, after the last, with the run's status, exit code,
        duration and output file."""
        report = tmp_path / "hook.txt"
        clock = start_clock(
            "timezone: UTC\n"
            "tasks:\n"
            f'  flaky:\n    schedule: "{once_soon()}"\n    command: "echo try $SCHEDULER_TRIGGER; exit 4"\n'
            "    retries: 2\n    retry_delay: 1s\n    retry_backoff: 2\n"
            "    on_failure: >-\n"
            '      echo "$SCHEDULER_STATUS $SCHEDULER_EXIT_CODE $SCHEDULER_TRIGGER $SCHEDULER_TASK"'
            f" > {report};"
            f' cat "$SCHEDULER_OUTPUT_FILE" >> {report}; echo "$SCHEDULER_DURATION_S" >> {report}\n'
        )
        clock.wait_event("hook.finished", hook="on_failure", timeout=20)
        clock.stop()
        started = clock.named("task.started")
        assert [("schedule", 1), ("retry", 2), ("retry", 3)] == [
            (e["trigger"], e["attempt"]) for e in started
        ]
        assert 1 == len({e["scheduled_for"] for e in started})
        retrying = clock.named("task.retrying")
        assert [(2, 1.0), (3, 2.0)] == [(e["attempt"], e["delay_s"]) for e in retrying]
        ends = [at(e["timestamp"]) for e in clock.named("task.finished")]
        gaps = [(at(s["timestamp"]) - end).total_seconds() for s, end in zip(started[1:], ends, strict=False)]
        assert 0.95 < gaps[0] < 1.3, gaps
        assert 1.95 < gaps[1] < 2.3, gaps
        (hook_started,) = clock.named("hook.started")
        assert ("flaky", started[-1]["run_id"], "on_failure") == (
            hook_started["task"],
            hook_started["run_id"],
            hook_started["hook"],
        )
        lines = report.read_text().splitlines()
        assert "failed 4 on_failure flaky" == lines[0]
        assert "try retry" == lines[1]
        assert float(lines[2]) >= 0

    def test_on_success_and_a_failing_hook(self, start_clock: Any) -> None:
        """on_success runs after a success; a hook that fails is logged as hook.started, hook.output and
        hook.finished with status failed, never as a task's events: an alert on task.finished with status
        failed does not fire, and the run's status stands."""
        clock = start_clock(
            "timezone: UTC\n"
            "tasks:\n"
            f'  fine:\n    schedule: "{once_soon()}"\n    command: "true"\n'
            '    on_success: "echo hooked $SCHEDULER_STATUS; exit 9"\n'
        )
        finished = clock.wait_event("hook.finished", timeout=20)[0]
        clock.stop()
        (run,) = clock.named("task.started")
        assert {
            "level": "warning",
            "task": "fine",
            "run_id": run["run_id"],
            "hook": "on_success",
            "status": "failed",
            "exit_code": 9,
            "signal": None,
        } == {k: finished[k] for k in ("level", "task", "run_id", "hook", "status", "exit_code", "signal")}
        assert finished["duration_s"] >= 0
        (started,) = clock.named("hook.started")
        assert (run["run_id"], "on_success") == (started["run_id"], started["hook"])
        assert ["hooked succeeded"] == [e["line"] for e in clock.named("hook.output")]
        assert [] == clock.named("task.output")
        assert ["succeeded"] == [e["status"] for e in clock.named("task.finished")]
        assert [] == [e for e in clock.events if e["event"].startswith("task.") and "hook" in e]
        assert [] == clock.named("hook.failed")

    def test_a_hook_that_cannot_start(self, start_clock: Any) -> None:
        """A hook whose command cannot start: hook.failed with the error, and no hook.finished."""
        clock = start_clock(
            "timezone: UTC\n"
            "tasks:\n"
            f'  broken:\n    schedule: "{once_soon()}"\n    command: "exit 1"\n'
            "    on_failure: [/nonexistent/bin/alert]\n"
        )
        failed = clock.wait_event("hook.failed", timeout=20)[0]
        clock.stop()
        (run,) = clock.named("task.started")
        assert ("broken", run["run_id"], "on_failure", "command not found: /nonexistent/bin/alert") == (
            failed["task"],
            failed["run_id"],
            failed["hook"],
            failed["error"],
        )
        assert ([], []) == (clock.named("hook.started"), clock.named("hook.finished"))
