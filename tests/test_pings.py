"""Tests for scheduler.pings against a real HTTP server on loopback that records requests, fails or hangs."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import pytest
import structlog
from structlog.testing import capture_logs

import scheduler
from scheduler.pings import _QUEUE_CAP, Pinger, display_url
from scheduler.runs import PING_BODY_BYTES

DEADLINE_S = 10.0
HANG = 0  # as a status: read the request, never answer it
SECRET = "s3cr3t-ping-key"
QUICK_S = 0.05
TASK = "nightly-report"  # what "returns at once" means for a call made on the event loop

Logs = list[MutableMapping[str, Any]]


class Received(NamedTuple):
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival


class PingServer:
    """A ThreadingHTTPServer on 127.0.0.1 that records each request on arrival and answers 200, or the
    status `statuses` gives its path (HANG: no answer until the test ends)."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.requests: list[Received] = []
        self._arrived = threading.Condition()
        self._release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._answer(self)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def wait_for(self, count: int) -> list[Received]:
        """The requests once at least `count` have arrived (failing after the deadline)."""
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.requests) >= count, DEADLINE_S)
            return list(self.requests)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        received = Received(
            handler.command, parts.path, parse_qs(parts.query), body, dict(handler.headers), time.monotonic()
        )
        with self._arrived:
            self.requests.append(received)
            self._arrived.notify_all()
        status = self.statuses.get(parts.path, 200)
        if status == HANG:
            self._release.wait(DEADLINE_S)
            return  # the connection closes without an answer
        handler.send_response(status)
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"OK")


@pytest.fixture
def server() -> Iterator[PingServer]:
    ping_server = PingServer()
    ping_server.start()
    yield ping_server
    ping_server.stop()


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Captured events; afterwards, none may hold a ping URL's path or the secret from the environment."""
    with capture_logs() as captured:
        yield captured
    for event in captured:
        text = repr(event)
        assert "/check" not in text, event
        assert SECRET not in text, event


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()


def make(**kwargs: Any) -> Pinger:
    options: dict[str, Any] = {"env": {}, "retry_delays": (0, 0)}
    options.update(kwargs)
    return Pinger(log=structlog.get_logger(), **options)


def ping_start(pinger: Pinger, url: str, run_id: str = "r1", **kwargs: Any) -> None:
    pinger.start(url, run_id, task=TASK, **kwargs)


def finish(pinger: Pinger, url: str, run_id: str = "r1", **kwargs: Any) -> None:
    options: dict[str, Any] = {
        "task": TASK,
        "success": True,
        "exit_code": 0,
        "use_exit_code": False,
        "output": "done\n",
    }
    options.update(kwargs)
    pinger.finish(url, run_id, **options)


def events(logs: Logs, name: str) -> Logs:
    return [e for e in logs if e["event"] == name]


def refused_url() -> str:
    """A URL on a loopback port that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/check"


class TestPaths:
    def test_start_then_success(self, server: PingServer, logs: Logs) -> None:
        """A start GET to /check/start, then a success POST to /check with the output, both with the rid."""
        pinger = make()
        ping_start(pinger, f"{server.url}/check", "r1")
        finish(pinger, f"{server.url}/check", output="all good\n")
        pinger.close(DEADLINE_S)
        start, success = server.requests
        assert ("GET", "/check/start", {"rid": ["r1"]}, b"") == start[:4]
        assert ("POST", "/check", {"rid": ["r1"]}, b"all good\n") == success[:4]
        assert "text/plain; charset=utf-8" == success.headers["Content-Type"]
        assert {f"scheduler/{scheduler.__version__}"} == {r.headers["User-Agent"] for r in server.requests}
        assert [] == [e for e in logs if e["log_level"] != "debug"]

    def test_failure(self, server: PingServer, logs: Logs) -> None:
        """A failed run pings /check/fail."""
        pinger = make()
        finish(pinger, f"{server.url}/check", success=False, exit_code=1)
        pinger.close(DEADLINE_S)
        assert ["/check/fail"] == server.paths()

    def test_exit_code(self, server: PingServer, logs: Logs) -> None:
        """With use_exit_code the exit code is the path, success or not; with none (a signal) it is /fail."""
        pinger = make()
        finish(pinger, f"{server.url}/check", "r1", success=False, exit_code=3, use_exit_code=True)
        server.wait_for(1)
        finish(pinger, f"{server.url}/check", "r2", success=True, exit_code=0, use_exit_code=True)
        server.wait_for(2)
        finish(pinger, f"{server.url}/check", "r3", success=False, exit_code=None, use_exit_code=True)
        pinger.close(DEADLINE_S)
        assert ["/check/3", "/check/0", "/check/fail"] == server.paths()
        assert [["r1"], ["r2"], ["r3"]] == [r.query["rid"] for r in server.requests]

    def test_trailing_slash(self, server: PingServer, logs: Logs) -> None:
        """A trailing '/' on the base is dropped before the suffix is added."""
        pinger = make()
        ping_start(pinger, f"{server.url}/check/", "r1")
        finish(pinger, f"{server.url}/check/")
        pinger.close(DEADLINE_S)
        assert ["/check/start", "/check"] == server.paths()

    def test_query_on_the_base(self, server: PingServer, logs: Logs) -> None:
        """A query on the base is kept, and rid is added to it (replacing any rid already there)."""
        pinger = make()
        ping_start(pinger, f"{server.url}/check?create=1&rid=old", "r 1")
        pinger.close(DEADLINE_S)
        (start,) = server.requests
        assert ("/check/start", {"create": ["1"], "rid": ["r 1"]}) == (start.path, start.query)


class TestEvents:
    def test_sent_and_failed_name_the_task_run_and_kind(self, server: PingServer, logs: Logs) -> None:
        """ping.sent and ping.failed say which task, which run and which ping they are about."""
        server.statuses["/check/fail"] = 500
        pinger = make()
        pinger.start(f"{server.url}/check", "r1", task="backup")
        pinger.finish(
            f"{server.url}/check",
            "r1",
            task="backup",
            success=False,
            exit_code=1,
            use_exit_code=False,
            output="",
        )
        pinger.close(DEADLINE_S)
        assert [("ping.sent", "backup", "r1", "start"), ("ping.failed", "backup", "r1", "fail")] == [
            (e["event"], e["task"], e["run_id"], e["kind"]) for e in logs
        ]

    def test_a_ping_dropped_at_once_names_the_task(self, logs: Logs) -> None:
        """A ping refused before any attempt (after close) still names its task."""
        pinger = make()
        pinger.close(DEADLINE_S)
        pinger.finish(
            "https://hc-ping.com/check",
            "r2",
            task="report",
            success=True,
            exit_code=0,
            use_exit_code=False,
            output="",
        )
        assert [("report", "r2", "success", "closed")] == [
            (e["task"], e["run_id"], e["kind"], e["error"]) for e in events(logs, "ping.failed")
        ]


class TestBody:
    def test_short_output_is_sent_whole(self, server: PingServer, logs: Logs) -> None:
        """Output under the limit is the body as it is, UTF-8 encoded."""
        pinger = make()
        finish(pinger, f"{server.url}/check", output="café ☕\n")
        pinger.close(DEADLINE_S)
        assert "café ☕\n".encode() == server.requests[0].body

    def test_long_output_keeps_the_last_10_kib_whole_characters(self, server: PingServer, logs: Logs) -> None:
        """Only the last PING_BODY_BYTES are sent, less the partial character the cut would start with."""
        output = "head\n" + "€" * 4000  # 3 bytes each: the 10 KiB cut falls inside a character
        pinger = make()
        finish(pinger, f"{server.url}/check", output=output)
        pinger.close(DEADLINE_S)
        body = server.requests[0].body
        assert 10 * 1024 == PING_BODY_BYTES
        assert "€" * (PING_BODY_BYTES // 3) == body.decode("utf-8")


class TestEnvironment:
    def test_reference_filled_from_env(self, server: PingServer, logs: Logs) -> None:
        """${HC_PING_KEY} is filled from the env mapping when the ping is sent; the key is never logged."""
        server.statuses[f"/{SECRET}/check/start"] = 500
        pinger = make(env={"HC_PING_KEY": SECRET})
        ping_start(pinger, server.url + "/${HC_PING_KEY}/check", "r1")
        finish(pinger, server.url + "/${HC_PING_KEY}/check")
        pinger.close(DEADLINE_S)
        assert [f"/{SECRET}/check/start"] * 3 + [f"/{SECRET}/check"] == server.paths()
        (failed,) = events(logs, "ping.failed")
        assert f"{server.url}/…" == failed["url"]

    @pytest.mark.parametrize("env", [{}, {"HC_PING_KEY": ""}])
    def test_unset_variable(self, env: dict[str, str], server: PingServer, logs: Logs) -> None:
        """An unset or empty variable: no request, one ping.failed that names the variable."""
        pinger = make(env=env)
        ping_start(pinger, server.url + "/${HC_PING_KEY}/check", "r1")
        pinger.close(DEADLINE_S)
        assert [] == server.requests
        (failed,) = events(logs, "ping.failed")
        assert "environment variable HC_PING_KEY is not set" == failed["error"]
        assert (0, "start", "r1") == (failed["attempts"], failed["kind"], failed["run_id"])


class TestFailures:
    def test_server_error_retried_then_reported(self, server: PingServer, logs: Logs) -> None:
        """A 500 is tried again after each retry delay, then reported once with the number of attempts."""
        server.statuses["/check/start"] = 500
        pinger = make()
        ping_start(pinger, f"{server.url}/check", "r1")
        pinger.close(DEADLINE_S)
        assert ["/check/start"] * 3 == server.paths()
        (failed,) = events(logs, "ping.failed")
        assert {
            "event": "ping.failed",
            "log_level": "warning",
            "task": TASK,
            "kind": "start",
            "run_id": "r1",
            "url": f"{server.url}/…",
            "attempts": 3,
            "error": "HTTP 500",
        } == failed

    @pytest.mark.timing
    def test_hung_server_never_holds_up_the_caller(self, server: PingServer, logs: Logs) -> None:
        """Against a server that never answers, start() and finish() return at once; each ping times out."""
        server.statuses.update({"/check/start": HANG, "/check/fail": HANG})
        pinger = make(retry_delays=())
        began = time.monotonic()
        ping_start(pinger, f"{server.url}/check", "r1", timeout_s=0.2)
        started = time.monotonic()
        finish(pinger, f"{server.url}/check", success=False, exit_code=1, timeout_s=0.2)
        finished = time.monotonic()
        pinger.close(DEADLINE_S)
        assert started - began < QUICK_S
        assert finished - started < QUICK_S
        assert [("start", 1, "timed out"), ("fail", 1, "timed out")] == [
            (e["kind"], e["attempts"], e["error"]) for e in events(logs, "ping.failed")
        ]

    def test_refused_connection(self, logs: Logs) -> None:
        """A port nobody listens on: every attempt is refused, then one ping.failed."""
        pinger = make()
        ping_start(pinger, refused_url(), "r1")
        pinger.close(DEADLINE_S)
        (failed,) = events(logs, "ping.failed")
        assert (3, "connection refused") == (failed["attempts"], failed["error"])

    def test_unexpected_error_in_send_is_logged(self, logs: Logs) -> None:
        """An error the sender did not expect is a failed attempt, named by its type only."""

        def send(request: urllib.request.Request, timeout_s: float) -> int:
            raise RuntimeError(f"boom at {request.full_url}")

        pinger = make(send=send)
        ping_start(pinger, "https://hc-ping.com/check", "r1")
        pinger.close(DEADLINE_S)
        (failed,) = events(logs, "ping.failed")
        assert (3, "RuntimeError") == (failed["attempts"], failed["error"])

    def test_not_an_http_url(self, logs: Logs) -> None:
        """A URL that is not http(s) is never requested."""
        pinger = make(send=lambda request, timeout_s: pytest.fail("no request expected"))
        ping_start(pinger, "file:///etc/check", "r1")
        pinger.close(DEADLINE_S)
        (failed,) = events(logs, "ping.failed")
        assert (0, "not an http(s) URL") == (failed["attempts"], failed["error"])


class TestOrdering:
    def test_final_ping_waits_for_a_start_ping_that_hangs(self, server: PingServer, logs: Logs) -> None:
        """The final ping leaves only once the start ping is given up, though other workers are idle."""
        server.statuses["/check/start"] = HANG
        pinger = make(retry_delays=())
        ping_start(pinger, f"{server.url}/check", "r1", timeout_s=0.2)
        finish(pinger, f"{server.url}/check")
        pinger.close(DEADLINE_S)
        start, success = server.requests
        assert ["/check/start", "/check"] == [start.path, success.path]
        # The start's 0.2 s timeout runs from before the server saw its request: allow for that lag.
        assert success.at - start.at >= 0.15
        assert ["start"] == [e["kind"] for e in events(logs, "ping.failed")]

    def test_other_runs_are_not_held_up(self, server: PingServer, logs: Logs) -> None:
        """While one run's start ping hangs, another run's pings go out."""
        server.statuses["/slow/start"] = HANG
        pinger = make(retry_delays=())
        ping_start(pinger, f"{server.url}/slow", "r1", timeout_s=DEADLINE_S)
        server.wait_for(1)
        ping_start(pinger, f"{server.url}/check", "r2")
        finish(pinger, f"{server.url}/check", "r2")
        assert ["/slow/start", "/check/start", "/check"] == [r.path for r in server.wait_for(3)]
        pinger.close(0)


class TestClose:
    @pytest.mark.timing
    def test_close_returns_within_its_timeout(self, server: PingServer, logs: Logs) -> None:
        """With every worker stuck on a hung server, close() gives up at its timeout and counts the rest."""
        server.statuses["/check/start"] = HANG
        pinger = make(workers=2)
        for n in range(5):
            ping_start(pinger, f"{server.url}/check", f"r{n}", timeout_s=DEADLINE_S)
        server.wait_for(2)
        began = time.monotonic()
        pinger.close(0.1)
        assert time.monotonic() - began < 0.1 + QUICK_S
        assert [5] == [e["pings"] for e in events(logs, "ping.unsent")]

    def test_pings_after_close_are_dropped(self, logs: Logs) -> None:
        """A ping asked for after close() is not sent, and says so."""
        pinger = make(send=lambda request, timeout_s: pytest.fail("no request expected"))
        pinger.close(DEADLINE_S)
        ping_start(pinger, "https://hc-ping.com/check", "r1")
        (failed,) = events(logs, "ping.failed")
        assert ("start", "closed") == (failed["kind"], failed["error"])


class TestQueue:
    def test_pings_beyond_the_cap_are_dropped(self, server: PingServer, logs: Logs) -> None:
        """Once _QUEUE_CAP pings wait, more are dropped with ping.failed "queue full"."""
        server.statuses["/check/start"] = HANG
        pinger = make(workers=1)
        ping_start(pinger, f"{server.url}/check", "busy", timeout_s=DEADLINE_S)
        server.wait_for(1)
        for n in range(_QUEUE_CAP + 1):
            ping_start(pinger, f"{server.url}/check", f"r{n}")
        finish(pinger, f"{server.url}/check", "r0")  # parked behind r0's start, yet still a waiting ping
        pinger.close(0)
        assert [(f"r{_QUEUE_CAP}", "queue full"), ("r0", "queue full")] == [
            (e["run_id"], e["error"]) for e in events(logs, "ping.failed")
        ]
        assert [_QUEUE_CAP + 1] == [e["pings"] for e in events(logs, "ping.unsent")]


class TestDisplayUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("https://hc-ping.com/0f3c3f3a-58b2-4a43-9a2e-1b0a4f1c6f7e", "https://hc-ping.com/…"),
            ("https://hc-ping.com/${HC_PING_KEY}/backup", "https://hc-ping.com/…"),
            ("https://cronitor.link/p/key/job?state=run", "https://cronitor.link/…"),
            ("https://user:pw@hc.example.com:8000/ping/x/", "https://hc.example.com:8000/…"),
            ("https://${HC_HOST}/ping/x", "https://${HC_HOST}/…"),
            ("https://hc-ping.com", "https://hc-ping.com/…"),
            ("${HC_PING_URL}", "${HC_PING_URL}"),
            ("hc-ping.com/secret", "…"),
            ("https://[::1/secret", "…"),
            ("https://user:p#w@hc.example.com/ping/x", "https://hc.example.com/…"),
            ("https://user:pa?ss@hc.example.com/ping/x", "https://hc.example.com/…"),
            ("https://user:a/b@hc.example.com/ping/x", "https://hc.example.com/…"),
            ("https://user:p@ss@hc.example.com/ping/x", "https://hc.example.com/…"),
        ],
    )
    def test_only_scheme_and_host(self, url: str, expected: str) -> None:
        """Only the scheme and host are shown; the path, query and user info never are."""
        assert expected == display_url(url)
