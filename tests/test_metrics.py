"""Tests for scheduler.metrics: series by a fake clock, parse_addr, and the HTTP server over a real socket."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from scheduler.metrics import (
    DEFAULT_METRICS_PORT,
    DURATION_BUCKETS,
    HEALTH_STALE_S,
    Metrics,
    MetricsServer,
    parse_addr,
)

T0 = 1_780_000_000.0  # a POSIX instant in 2026
HTTP_TIMEOUT_S = 5.0

Labels = tuple[tuple[str, str], ...]


class FakeNow:
    """A wall clock that only moves when told to."""

    def __init__(self, at: float = T0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def samples(metrics: Metrics) -> dict[tuple[str, Labels], float]:
    """Every sample of expose(), parsed back: (sample name, sorted labels) -> value."""
    text = metrics.expose().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    """One sample's value, None when the series is not exposed."""
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def series_of(metrics: Metrics, task: str) -> set[str]:
    """The names of the samples labelled with task (but the `_created` ones, which come and go with them)."""
    names = {name for name, labels in samples(metrics) if ("task", task) in labels}
    return {name for name in names if not name.endswith("_created")}


@pytest.fixture
def now() -> FakeNow:
    """The fake clock, at T0."""
    return FakeNow()


@pytest.fixture
def metrics(now: FakeNow) -> Metrics:
    """Metrics on the fake clock."""
    return Metrics(now=now)


class TestRuns:
    def test_started(self, metrics: Metrics, now: FakeNow) -> None:
        """A start counts as running and stamps the last run."""
        metrics.run_started("digest")
        assert 1.0 == value(metrics, "scheduler_running", task="digest")
        assert T0 == value(metrics, "scheduler_last_run_timestamp_seconds", task="digest")

    def test_overlapping_runs(self, metrics: Metrics) -> None:
        """Runs in progress are counted, and back to 0 (not removed) when they are all done."""
        metrics.run_started("digest")
        metrics.run_started("digest")
        running = [value(metrics, "scheduler_running", task="digest")]
        metrics.run_finished("digest", "succeeded", 1.0)
        running.append(value(metrics, "scheduler_running", task="digest"))
        metrics.run_finished("digest", "failed", 2.0)
        running.append(value(metrics, "scheduler_running", task="digest"))
        assert [2.0, 1.0, 0.0] == running

    def test_finished_succeeded(self, metrics: Metrics, now: FakeNow) -> None:
        """A success counts by status, observes its duration and stamps the last success at its end."""
        metrics.run_started("digest")
        now.at = T0 + 3
        metrics.run_finished("digest", "succeeded", 3.0)
        assert 1.0 == value(metrics, "scheduler_runs_total", task="digest", status="succeeded")
        assert 1.0 == value(metrics, "scheduler_run_duration_seconds_count", task="digest")
        assert 3.0 == value(metrics, "scheduler_run_duration_seconds_sum", task="digest")
        assert T0 + 3 == value(metrics, "scheduler_last_success_timestamp_seconds", task="digest")
        assert T0 == value(metrics, "scheduler_last_run_timestamp_seconds", task="digest")

    def test_finished_enqueued(self, metrics: Metrics, now: FakeNow) -> None:
        """A job enqueued counts as `enqueued`, and as a success for the last-success stamp."""
        metrics.run_started("report")
        now.at = T0 + 1
        metrics.run_finished("report", "enqueued", 0.002)
        assert 1.0 == value(metrics, "scheduler_runs_total", task="report", status="enqueued")
        assert T0 + 1 == value(metrics, "scheduler_last_success_timestamp_seconds", task="report")

    def test_finished_failed(self, metrics: Metrics) -> None:
        """A failure counts by its status and leaves the last success alone."""
        metrics.run_started("digest")
        metrics.run_finished("digest", "timed_out", 60.0)
        assert 1.0 == value(metrics, "scheduler_runs_total", task="digest", status="timed_out")
        assert None is value(metrics, "scheduler_runs_total", task="digest", status="succeeded")
        assert None is value(metrics, "scheduler_last_success_timestamp_seconds", task="digest")

    def test_counts_accumulate(self, metrics: Metrics) -> None:
        """Counts add up per task and status."""
        for status in ["succeeded", "failed", "succeeded"]:
            metrics.run_started("digest")
            metrics.run_finished("digest", status, 0.5)
        metrics.run_started("backup")
        metrics.run_finished("backup", "succeeded", 0.5)
        assert (2.0, 1.0, 1.0) == (
            value(metrics, "scheduler_runs_total", task="digest", status="succeeded"),
            value(metrics, "scheduler_runs_total", task="digest", status="failed"),
            value(metrics, "scheduler_runs_total", task="backup", status="succeeded"),
        )

    def test_finish_without_start(self, metrics: Metrics) -> None:
        """A finish with no start on record is not counted and never drives running below 0."""
        metrics.run_finished("digest", "succeeded", 1.0)
        assert set() == series_of(metrics, "digest")


class TestSeed:
    def test_gauges_start_from_the_history(self, metrics: Metrics) -> None:
        """Seeded last-run and last-success times are exported until a run moves them on."""
        metrics.seed("digest", last_run=T0 - 60, last_success=T0 - 3600)
        metrics.seed("new", last_run=None, last_success=None)
        assert T0 - 60 == value(metrics, "scheduler_last_run_timestamp_seconds", task="digest")
        assert T0 - 3600 == value(metrics, "scheduler_last_success_timestamp_seconds", task="digest")
        assert value(metrics, "scheduler_last_success_timestamp_seconds", task="new") is None
        metrics.run_started("digest")
        metrics.run_finished("digest", "succeeded", 1.0)
        assert T0 == value(metrics, "scheduler_last_success_timestamp_seconds", task="digest")


class TestDurationBuckets:
    def test_bounds(self, metrics: Metrics) -> None:
        """The buckets span 0.1 s to 1 h, then +Inf."""
        metrics.run_started("digest")
        metrics.run_finished("digest", "succeeded", 1.0)
        bounds = [
            float(dict(labels)["le"])
            for name, labels in samples(metrics)
            if name == "scheduler_run_duration_seconds_bucket"
        ]
        assert [*DURATION_BUCKETS, float("inf")] == bounds
        assert (0.1, 3600) == (DURATION_BUCKETS[0], DURATION_BUCKETS[-1])

    def test_observations(self, metrics: Metrics) -> None:
        """A run lands in every bucket at or above its duration; one over an hour only in +Inf."""
        for duration_s in [0.05, 0.1, 7.0, 4000.0]:
            metrics.run_started("digest")
            metrics.run_finished("digest", "succeeded", duration_s)

        def bucket(le: str) -> float | None:
            return value(metrics, "scheduler_run_duration_seconds_bucket", task="digest", le=le)

        assert [2.0, 2.0, 3.0, 3.0, 4.0] == [
            bucket("0.1"),
            bucket("5.0"),
            bucket("10.0"),
            bucket("3600.0"),
            bucket("+Inf"),
        ]
        assert 4.0 == value(metrics, "scheduler_run_duration_seconds_count", task="digest")
        assert 4007.15 == pytest.approx(value(metrics, "scheduler_run_duration_seconds_sum", task="digest"))


class TestSkippedAndMissed:
    def test_skipped(self, metrics: Metrics) -> None:
        """Skips count per task and reason."""
        metrics.skipped("digest", "overlap")
        metrics.skipped("digest", "overlap")
        metrics.skipped("digest", "store")
        assert (2.0, 1.0) == (
            value(metrics, "scheduler_skipped_total", task="digest", reason="overlap"),
            value(metrics, "scheduler_skipped_total", task="digest", reason="store"),
        )

    def test_missed(self, metrics: Metrics) -> None:
        """Missed instants add up by their count."""
        metrics.missed("digest", 3)
        metrics.missed("digest", 2)
        assert 5.0 == value(metrics, "scheduler_missed_total", task="digest")


class TestNextFire:
    def test_set_and_move(self, metrics: Metrics) -> None:
        """The gauge holds the latest next fire."""
        metrics.next_fire("digest", T0 + 60)
        metrics.next_fire("digest", T0 + 120)
        assert T0 + 120 == value(metrics, "scheduler_next_fire_timestamp_seconds", task="digest")

    def test_none_removes(self, metrics: Metrics) -> None:
        """None removes the series (no next fire), and again is harmless."""
        metrics.next_fire("digest", T0 + 60)
        metrics.next_fire("digest", None)
        metrics.next_fire("digest", None)
        assert None is value(metrics, "scheduler_next_fire_timestamp_seconds", task="digest")

    def test_none_keeps_other_series(self, metrics: Metrics) -> None:
        """Removing the next fire leaves the task's other series, and forget_task still works after."""
        metrics.next_fire("digest", T0 + 60)
        metrics.skipped("digest", "overlap")
        metrics.next_fire("digest", None)
        assert {"scheduler_skipped_total"} == series_of(metrics, "digest")
        metrics.forget_task("digest")
        assert set() == series_of(metrics, "digest")


class TestConfigReloaded:
    def test_results_start_at_zero(self, metrics: Metrics) -> None:
        """Both results are exported at 0 before any reload, so alerts see them from the start."""
        assert (0.0, 0.0) == (
            value(metrics, "scheduler_config_reloads_total", result="success"),
            value(metrics, "scheduler_config_reloads_total", result="failure"),
        )

    def test_counts(self, metrics: Metrics) -> None:
        """Reloads count by result."""
        metrics.config_reloaded("success")
        metrics.config_reloaded("failure")
        metrics.config_reloaded("failure")
        assert (1.0, 2.0) == (
            value(metrics, "scheduler_config_reloads_total", result="success"),
            value(metrics, "scheduler_config_reloads_total", result="failure"),
        )


class TestHeartbeat:
    def test_gauge(self, metrics: Metrics, now: FakeNow) -> None:
        """The gauge holds the last heartbeat."""
        metrics.heartbeat()
        now.at = T0 + 1
        metrics.heartbeat()
        assert T0 + 1 == value(metrics, "scheduler_heartbeat_timestamp_seconds")


class TestForgetTask:
    def fill(self, metrics: Metrics, task: str) -> None:
        """One of every per-task series, and a run still in progress."""
        metrics.run_started(task)
        metrics.run_finished(task, "succeeded", 1.0)
        metrics.run_started(task)
        metrics.run_finished(task, "failed", 1.0)
        metrics.run_started(task)
        metrics.skipped(task, "overlap")
        metrics.missed(task, 2)
        metrics.next_fire(task, T0 + 60)

    def test_removes_every_series(self, metrics: Metrics) -> None:
        """Every series labelled with the task is gone."""
        self.fill(metrics, "digest")
        assert {
            "scheduler_running",
            "scheduler_last_run_timestamp_seconds",
            "scheduler_last_success_timestamp_seconds",
            "scheduler_runs_total",
            "scheduler_run_duration_seconds_bucket",
            "scheduler_run_duration_seconds_count",
            "scheduler_run_duration_seconds_sum",
            "scheduler_skipped_total",
            "scheduler_missed_total",
            "scheduler_next_fire_timestamp_seconds",
        } == series_of(metrics, "digest")
        metrics.forget_task("digest")
        assert set() == series_of(metrics, "digest")

    def test_keeps_other_tasks(self, metrics: Metrics) -> None:
        """Other tasks' series and the reload counts keep their values."""
        self.fill(metrics, "digest")
        self.fill(metrics, "backup")
        metrics.config_reloaded("success")
        before = {key: v for key, v in samples(metrics).items() if ("task", "digest") not in key[1]}
        metrics.forget_task("digest")
        assert before == samples(metrics)

    def test_unknown_task(self, metrics: Metrics) -> None:
        """Forgetting a task never seen (or twice) is harmless."""
        metrics.forget_task("digest")
        self.fill(metrics, "digest")
        metrics.forget_task("digest")
        metrics.forget_task("digest")
        assert set() == series_of(metrics, "digest")

    def test_late_finish_not_counted(self, metrics: Metrics) -> None:
        """A run that ends after its task was forgotten brings no series back."""
        self.fill(metrics, "digest")
        metrics.forget_task("digest")
        metrics.run_finished("digest", "succeeded", 1.0)
        assert set() == series_of(metrics, "digest")

    def test_task_comes_back(self, metrics: Metrics) -> None:
        """A task added again starts its counts from zero."""
        self.fill(metrics, "digest")
        metrics.forget_task("digest")
        metrics.run_started("digest")
        metrics.run_finished("digest", "succeeded", 1.0)
        assert (1.0, 0.0, None) == (
            value(metrics, "scheduler_runs_total", task="digest", status="succeeded"),
            value(metrics, "scheduler_running", task="digest"),
            value(metrics, "scheduler_runs_total", task="digest", status="failed"),
        )


class TestRegistry:
    def test_instances_apart(self) -> None:
        """Two Metrics never share series, and the global default registry stays untouched."""
        first, second = Metrics(), Metrics()
        first.missed("digest", 1)
        assert None is value(second, "scheduler_missed_total", task="digest")
        assert None is REGISTRY.get_sample_value("scheduler_missed_total", {"task": "digest"})


class TestHealth:
    def test_starting(self, metrics: Metrics) -> None:
        """Before the first heartbeat: 503 starting."""
        assert (503, {"status": "starting", "heartbeat_age_s": None}) == metrics.health()

    def test_ok(self, metrics: Metrics, now: FakeNow) -> None:
        """A heartbeat up to HEALTH_STALE_S old: 200 ok, with its age."""
        metrics.heartbeat()
        now.at = T0 + 0.4
        assert (200, {"status": "ok", "heartbeat_age_s": 0.4}) == metrics.health()
        now.at = T0 + HEALTH_STALE_S
        assert (200, {"status": "ok", "heartbeat_age_s": HEALTH_STALE_S}) == metrics.health()

    def test_stuck(self, metrics: Metrics, now: FakeNow) -> None:
        """An older heartbeat: 503 stuck, until the next one."""
        metrics.heartbeat()
        now.at = T0 + 12.3
        assert (503, {"status": "stuck", "heartbeat_age_s": 12.3}) == metrics.health()
        metrics.heartbeat()
        assert (200, {"status": "ok", "heartbeat_age_s": 0.0}) == metrics.health()

    def test_clock_stepped_back(self, metrics: Metrics, now: FakeNow) -> None:
        """A wall clock set back after a heartbeat counts as a fresh heartbeat, never a negative age."""
        metrics.heartbeat()
        now.at = T0 - 3600
        assert (200, {"status": "ok", "heartbeat_age_s": 0.0}) == metrics.health()


class TestParseAddr:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("9464", ("127.0.0.1", 9464)),
            (":9464", ("127.0.0.1", 9464)),
            (" :9464 ", ("127.0.0.1", 9464)),
            ("0", ("127.0.0.1", 0)),
            ("65535", ("127.0.0.1", 65535)),
            ("0.0.0.0:9464", ("0.0.0.0", 9464)),
            ("127.0.0.1:9464", ("127.0.0.1", 9464)),
            ("[::1]:9464", ("::1", 9464)),
            ("[::]:0", ("::", 0)),
            ("localhost:9464", ("localhost", 9464)),
            ("metrics.internal:9464", ("metrics.internal", 9464)),
        ],
    )
    def test_good(self, text: str, expected: tuple[str, int]) -> None:
        """Loopback unless the address names a host; IPv6 in brackets."""
        assert expected == parse_addr(text)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "port must be 0..65535 \\(0 picks a free port\\)"),
            (":", "port must be 0..65535"),
            ("localhost", "port must be 0..65535"),
            ("localhost:", "port must be 0..65535"),
            ("65536", "port must be 0..65535"),
            ("-1", "port must be 0..65535"),
            ("+9464", "port must be 0..65535"),
            ("94_64", "port must be 0..65535"),
            ("0x10", "port must be 0..65535"),
            ("127.0.0.1:99999", "port must be 0..65535"),
            ("[::1]", "port must be 0..65535"),
            ("[::1]:", "port must be 0..65535"),
            ("::1:9464", "put an IPv6 address in brackets, as in \\[::1\\]:9464"),
            ("::1", "put an IPv6 address in brackets"),
            ("[::1", "write an IPv6 address as in \\[::1\\]:9464"),
            ("[::1]9464", "write an IPv6 address as in"),
            ("[localhost]:9464", "'localhost' is not an IPv6 address"),
            ("[]:9464", "'' is not an IPv6 address"),
            ("my host:9464", "'my host' is not a host name or address"),
            ("http://localhost:9464", "give host:port, not a URL"),
        ],
    )
    def test_bad(self, text: str, message: str) -> None:
        """Bad input is a ValueError that quotes it and says what is wrong."""
        with pytest.raises(ValueError, match=re.escape(f"metrics address {text!r}: ") + message):
            parse_addr(text)

    def test_default_port_in_message(self) -> None:
        """The port message shows the forms that work."""
        with pytest.raises(ValueError, match=f"as in {DEFAULT_METRICS_PORT}, :{DEFAULT_METRICS_PORT}"):
            parse_addr("metrics")


def request(server: MetricsServer, path: str, method: str = "GET") -> tuple[int, Message, bytes]:
    """(status, headers, body) of one real request, error statuses included; never hangs."""
    host, port = server.address
    req = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def get(server: MetricsServer, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one real request."""
    status, headers, body = request(server, path, method)
    return status, headers["Content-Type"], body


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    """A server for the fixture's metrics on a free loopback port, closed after the test."""
    server = MetricsServer(metrics, "127.0.0.1", 0)
    yield server
    server.close()


class TestMetricsServer:
    def test_address(self, metrics: Metrics, server: MetricsServer) -> None:
        """A free port was picked and is reported, next to the metrics served."""
        assert "127.0.0.1" == server.address[0]
        assert 0 < server.address[1]
        assert metrics is server.metrics

    def test_metrics(self, metrics: Metrics, server: MetricsServer) -> None:
        """/metrics serves the text format, and it parses."""
        metrics.missed("digest", 4)
        status, content_type, body = get(server, "/metrics")
        families = {family.name: family for family in text_string_to_metric_families(body.decode())}
        assert (200, "text/plain; version=0.0.4; charset=utf-8") == (status, content_type)
        assert [4.0] == [s.value for s in families["scheduler_missed"].samples if s.name.endswith("_total")]

    def test_query_string(self, server: MetricsServer) -> None:
        """A query string does not change the path."""
        assert 200 == get(server, "/metrics?name[]=scheduler_running")[0]

    def test_healthz(self, metrics: Metrics, now: FakeNow, server: MetricsServer) -> None:
        """/healthz is 503 starting, 200 ok after a heartbeat, and 503 stuck once the heartbeat is stale."""
        replies = [get(server, "/healthz")]
        metrics.heartbeat()
        replies.append(get(server, "/healthz"))
        now.at = T0 + HEALTH_STALE_S + 1
        replies.append(get(server, "/healthz"))
        assert [
            (503, "application/json", {"status": "starting", "heartbeat_age_s": None}),
            (200, "application/json", {"status": "ok", "heartbeat_age_s": 0.0}),
            (503, "application/json", {"status": "stuck", "heartbeat_age_s": HEALTH_STALE_S + 1}),
        ] == [(status, content_type, json.loads(body)) for status, content_type, body in replies]

    def test_answers_while_loop_blocked(self, metrics: Metrics, now: FakeNow, server: MetricsServer) -> None:
        """/healthz answers from its own thread while the event loop is blocked (by the request itself)."""
        metrics.heartbeat()
        now.at = T0 + HEALTH_STALE_S + 1

        async def blocking_call_on_loop() -> int:
            return get(server, "/healthz")[0]

        assert 503 == asyncio.run(blocking_call_on_loop())

    def test_unknown_path(self, server: MetricsServer) -> None:
        """Other paths are 404."""
        assert 404 == get(server, "/")[0]
        assert 404 == get(server, "/metrics/x")[0]

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
    def test_other_methods(self, server: MetricsServer, method: str) -> None:
        """Other methods are 405, on any path."""
        assert 405 == get(server, "/metrics", method)[0]
        assert 405 == get(server, "/nowhere", method)[0]

    def test_allow_header(self, server: MetricsServer) -> None:
        """A 405 says which method is allowed."""
        status, headers, _ = request(server, "/metrics", "POST")
        assert (405, "GET") == (status, headers["Allow"])

    def test_no_request_log(self, server: MetricsServer, capfd: pytest.CaptureFixture[str]) -> None:
        """Requests, including errors, write nothing to stderr."""
        get(server, "/metrics")
        get(server, "/nowhere")
        get(server, "/metrics", "POST")
        assert "" == capfd.readouterr().err

    def test_close_frees_port(self, metrics: Metrics) -> None:
        """After close() nothing listens, a second close() does nothing, and the port can be bound again."""
        server = MetricsServer(metrics, "127.0.0.1", 0)
        get(server, "/metrics")
        server.close()
        server.close()
        with pytest.raises(ConnectionRefusedError), socket.create_connection(server.address, timeout=1):
            pass
        again = MetricsServer(metrics, *server.address)
        try:
            assert 200 == get(again, "/metrics")[0]
        finally:
            again.close()

    def test_address_in_use(self, metrics: Metrics, server: MetricsServer) -> None:
        """A port already listened on is an OSError at once."""
        with pytest.raises(OSError, match="in use"):
            MetricsServer(metrics, *server.address)

    def test_ipv6(self, metrics: Metrics) -> None:
        """An IPv6 host binds an IPv6 socket."""
        if not socket.has_ipv6:
            pytest.skip("no IPv6 in this Python")
        try:
            server = MetricsServer(metrics, "::1", 0)
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        try:
            host, port = server.address
            assert "::1" == host
            with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=HTTP_TIMEOUT_S) as response:
                assert 200 == response.status
        finally:
            server.close()
