"""Prometheus metrics and a health endpoint for `scheduler run --metrics-addr`.

Metrics records what the clock reports (runs, skips, misses, next fires, reloads, heartbeats) in a registry of
its own; MetricsServer serves it as /metrics and /healthz from a thread of its own, never from the clock's
event loop, so that /healthz still answers (503) when the loop is stuck. The record methods are called from
the loop's thread only; expose() and health() may be called from any thread.
"""

from __future__ import annotations

import json
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from scheduler import addr

DEFAULT_METRICS_PORT = 9464
# /healthz says 503 when the loop's heartbeat is older than this.
HEALTH_STALE_S = 10.0
# Run durations in seconds, 0.1 s to 1 h (+Inf above).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# generate_latest writes the classic text format, whatever newer format the library defaults to elsewhere.
_METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_HEALTH_CONTENT_TYPE = "application/json"
# How long close() may wait for the serving thread to notice the shutdown (serve_forever's poll interval).
_SHUTDOWN_POLL_S = 0.2
# A client that sends nothing for this long is dropped, so that slow clients cannot pile up threads.
_REQUEST_TIMEOUT_S = 10.0
# A run that did what it was for: its command succeeded, or its job reached its queue (enqueue.py).
_SUCCEEDED = ("succeeded", "enqueued")
_OK = HTTPStatus.OK.value
_UNAVAILABLE = HTTPStatus.SERVICE_UNAVAILABLE.value
# config_reloaded's results, exported at 0 from the start so that rate() and alerts see them before the first.
_RELOAD_RESULTS = ("success", "failure")

_M = TypeVar("_M", bound=MetricWrapperBase)


class Metrics:
    """The scheduler's Prometheus metrics, in a CollectorRegistry of their own (never the global default)."""

    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self.registry = CollectorRegistry()
        registry = self.registry
        self._running = Gauge("scheduler_running", "Runs in progress.", ["task"], registry=registry)
        self._last_run = Gauge(
            "scheduler_last_run_timestamp_seconds", "When a run last started.", ["task"], registry=registry
        )
        self._last_success = Gauge(
            "scheduler_last_success_timestamp_seconds",
            "When a run last finished with status succeeded.",
            ["task"],
            registry=registry,
        )
        self._runs = Counter(
            "scheduler_runs_total", "Runs finished, by status.", ["task", "status"], registry=registry
        )
        self._duration = Histogram(
            "scheduler_run_duration_seconds",
            "How long runs took, start to end.",
            ["task"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._skipped = Counter(
            "scheduler_skipped_total", "Fires not run, by reason.", ["task", "reason"], registry=registry
        )
        self._missed = Counter(
            "scheduler_missed_total",
            "Fire instants passed while the clock was not running.",
            ["task"],
            registry=registry,
        )
        self._next_fire = Gauge(
            "scheduler_next_fire_timestamp_seconds", "When the task fires next.", ["task"], registry=registry
        )
        self._reloads = Counter(
            "scheduler_config_reloads_total", "Config reloads, by result.", ["result"], registry=registry
        )
        for result in _RELOAD_RESULTS:
            self._reloads.labels(result)
        self._heartbeat = Gauge(
            "scheduler_heartbeat_timestamp_seconds",
            "When the clock's loop last reported in.",
            registry=registry,
        )
        self._heartbeat_at: float | None = None
        # Which series exist per task, for forget_task (prometheus_client cannot list a metric's children).
        self._series: dict[str, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}
        self._in_flight: dict[str, int] = {}

    def run_started(self, task: str) -> None:
        """A run of task started now."""
        self._in_flight[task] = self._in_flight.get(task, 0) + 1
        self._child(self._running, task).set(self._in_flight[task])
        self._child(self._last_run, task).set(self._now())

    def run_finished(self, task: str, status: str, duration_s: float) -> None:
        """A run of task ended now with status (succeeded, failed, timed_out, killed) after duration_s.

        A finish with no start on record is not counted: its task was forgotten (removed by a reload) while
        the run went on, and the task's series must not come back once they are gone.
        """
        in_flight = self._in_flight.get(task, 0)
        if in_flight == 0:
            return
        self._in_flight[task] = in_flight - 1
        self._child(self._running, task).set(in_flight - 1)
        self._child(self._runs, task, status).inc()
        self._child(self._duration, task).observe(duration_s)
        if status in _SUCCEEDED:
            self._child(self._last_success, task).set(self._now())

    def seed(self, task: str, *, last_run: float | None, last_success: float | None) -> None:
        """Start the last-run and last-success gauges from the run history (a store), so that after a
        restart an alert such as "no success in 26 hours" still sees the old success instead of no data."""
        if last_run is not None:
            self._child(self._last_run, task).set(last_run)
        if last_success is not None:
            self._child(self._last_success, task).set(last_success)

    def skipped(self, task: str, reason: str) -> None:
        """A fire of task was not run, for reason (overlap, store, ...)."""
        self._child(self._skipped, task, reason).inc()

    def missed(self, task: str, count: int) -> None:
        """count fire instants of task passed while the clock was not running."""
        self._child(self._missed, task).inc(count)

    def next_fire(self, task: str, at: float | None) -> None:
        """task fires next at `at` (POSIX seconds); None, when it has no next fire, removes the series."""
        if at is not None:
            self._child(self._next_fire, task).set(at)
            return
        self._remove(self._next_fire, (task,))
        self._series.get(task, set()).discard((self._next_fire, (task,)))

    def config_reloaded(self, result: str) -> None:
        """A config reload ended with result "success" or "failure"."""
        self._reloads.labels(result).inc()

    def heartbeat(self) -> None:
        """The loop is alive now; /healthz goes stale HEALTH_STALE_S after the last heartbeat."""
        at = self._now()
        self._heartbeat.set(at)
        self._heartbeat_at = at

    def forget_task(self, task: str) -> None:
        """Remove every series of task (removed by a reload); other tasks' series stay as they were."""
        for metric, labels in self._series.pop(task, set()):
            self._remove(metric, labels)
        self._in_flight.pop(task, None)

    def expose(self) -> bytes:
        """Every metric, in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)

    def health(self) -> tuple[int, dict[str, object]]:
        """(HTTP status, JSON body): 200 "ok" when the last heartbeat is at most HEALTH_STALE_S old, else 503
        "stuck"; 503 "starting" (age null) before the first heartbeat."""
        beat = self._heartbeat_at
        if beat is None:
            return _UNAVAILABLE, {"status": "starting", "heartbeat_age_s": None}
        # A wall clock stepped back makes the age negative: the loop did beat, so that counts as fresh.
        age = max(0.0, self._now() - beat)
        body: dict[str, object] = {"heartbeat_age_s": round(age, 3)}
        if age > HEALTH_STALE_S:
            return _UNAVAILABLE, {"status": "stuck", **body}
        return _OK, {"status": "ok", **body}

    def _child(self, metric: _M, task: str, *more: str) -> _M:
        labels = (task, *more)
        self._series.setdefault(task, set()).add((metric, labels))
        return metric.labels(*labels)

    @staticmethod
    def _remove(metric: MetricWrapperBase, labels: tuple[str, ...]) -> None:
        try:
            metric.remove(*labels)
        except KeyError:
            pass  # never created, or already removed


def parse_addr(text: str) -> tuple[str, int]:
    """--metrics-addr: '9464' or ':9464' -> ('127.0.0.1', 9464); see scheduler.addr.parse_addr."""
    return addr.parse_addr(text, what="metrics address", example_port=DEFAULT_METRICS_PORT)


class MetricsServer:
    """Serves GET /metrics (text/plain; version=0.0.4) and GET /healthz (application/json) from a daemon
    thread (http.server.ThreadingHTTPServer, daemon_threads=True), never from the clock's event loop, so
    /healthz answers even when the loop is stuck. Other paths: 404; other methods: 405. No request logging
    to stderr (override log_message)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        """Bind host:port at once (OSError, such as address in use, propagates) and start serving."""
        self.metrics = metrics
        self._server = _Server(metrics, host, port)
        bound = self._server.socket.getsockname()
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._closed = False
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name="scheduler-metrics",
            daemon=True,
        )
        try:
            self._thread.start()
        except BaseException:
            self._server.server_close()
            raise

    def close(self) -> None:
        """Stop serving and free the port; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(_SHUTDOWN_POLL_S * 5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A restart right after a stop must not fail on the old socket's TIME_WAIT; a live listener still refuses.
    allow_reuse_address = True

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        # The family follows the host, so that [::1] and :: bind IPv6 (the class default is IPv4 only).
        self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn, a reverse DNS lookup that can stall start-up for
        # seconds where DNS is slow; the name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-response is not worth a traceback on stderr; anything else is a bug.
        if not isinstance(sys.exception(), ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._reply(HTTPStatus.OK, _METRICS_CONTENT_TYPE, self.server.metrics.expose())
        elif path == "/healthz":
            status, body = self.server.metrics.health()
            self._reply(status, _HEALTH_CONTENT_TYPE, json.dumps(body).encode())
        else:
            self.send_error(HTTPStatus.NOT_FOUND, explain="try /metrics or /healthz")

    def _not_allowed(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the clock's own log says what matters; a line per scrape would drown it
