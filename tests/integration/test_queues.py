"""Tasks that enqueue jobs, end to end: the real clock, real brokers (Redis, RabbitMQ) and real workers
(Sidekiq from the distribution, RQ, Celery). Each job appends a line to a file when it runs, so that a test
sees that the job ran, with which arguments, and how many times."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ClockProcess, run_cli

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("SCHEDULER_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
AMQP_URL = os.environ.get("SCHEDULER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent / "workers"
WORKER_START_S = 30.0  # a Celery worker on a loaded machine takes a few seconds


def _unavailable(what: str, error: object) -> None:
    message = f"{what}: {error}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _unavailable(f"no Redis at {REDIS_URL} (set SCHEDULER_TEST_REDIS_URL)", exc)
    return REDIS_URL


@pytest.fixture(scope="session")
def amqp_url() -> str:
    kombu = pytest.importorskip("kombu")
    try:
        with kombu.Connection(AMQP_URL, connect_timeout=2) as connection:
            connection.connect()
    except Exception as exc:
        _unavailable("no RabbitMQ at 127.0.0.1:5672 (set SCHEDULER_TEST_AMQP_URL)", exc)
    return AMQP_URL


@pytest.fixture(scope="session")
def sidekiq() -> str:
    path = shutil.which("sidekiq")
    if path is None:
        _unavailable("no sidekiq command", "apt-get install ruby-sidekiq (.ci/run does)")
    assert path is not None
    return path


def new_queue() -> str:
    """A queue of the test's own, so that tests running side by side never take each other's jobs."""
    return f"t{uuid.uuid4().hex[:10]}"


class Workers:
    """Real workers in their own process groups, stopped at the end of the test."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str], ready: Callable[[str], bool]) -> None:
        log = self.out / f"worker-{len(self.procs)}.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, "OUT_DIR": str(self.out), "PYTHONPATH": str(ROOT), **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=WORKERS,
                start_new_session=True,
            )
        self.procs.append(proc)
        deadline = time.monotonic() + WORKER_START_S
        while not ready(log.read_text(errors="replace")):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker {argv[0]} did not start: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def sidekiq(self, command: str, redis_url: str, queue: str) -> None:
        self.start(
            [command, "-r", "./job.rb", "-q", queue, "-c", "5", "-t", "1"],
            {"REDIS_URL": redis_url},
            lambda log: "brpop" in log or "Starting processing" in log,  # fetching from its queues
        )

    def rq(self, redis_url: str, queue: str) -> None:
        self.start(
            [
                sys.executable,
                "-m",
                "rq.cli",
                "worker",
                "-u",
                redis_url,
                "-w",
                "rq.worker.SimpleWorker",
                queue,
            ],
            {},
            lambda log: "Listening on" in log or "*** Listening" in log,
        )

    def celery(self, broker_url: str, queue: str) -> None:
        self.start(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.integration.workers.pyjobs",
                "worker",
                "-Q",
                queue,
                "-P",
                "solo",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "info",
            ],
            {"BROKER_URL": broker_url},
            lambda log: "ready." in log,
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    out = tmp_path / "out"
    out.mkdir()
    started = Workers(out)
    yield started
    started.stop()


def records(out: Path, name: str) -> list[dict[str, Any]]:
    path = out / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_records(out: Path, name: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(found := records(out, name)) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(found)} of {count} {name} jobs ran; logs: {_worker_logs(out)}")
        time.sleep(0.1)
    return found


def _worker_logs(out: Path) -> str:
    return " | ".join(log.read_text(errors="replace")[-1500:] for log in sorted(out.glob("worker-*.log")))


def start_clock(tmp_path: Path, text: str, *args: str, env: dict[str, str] | None = None) -> ClockProcess:
    path = tmp_path / "schedules.yaml"
    path.write_text(text)
    clock = ClockProcess(path, *args, env=env)
    clock.wait_event("scheduler.started", timeout=30)
    return clock


class TestSidekiq:
    def test_the_worker_runs_each_job_with_its_arguments(
        self, tmp_path: Path, redis_url: str, sidekiq: str, workers: Workers
    ) -> None:
        """A per-second task reaches a Sidekiq 6.4 worker: its class, its arguments, one run per instant;
        an ActiveJob-wrapped one arrives as Rails' adapter sends it."""
        queue = new_queue()
        workers.sidekiq(sidekiq, redis_url, queue)
        clock = start_clock(
            tmp_path,
            f"""
brokers:
  redis: ${{TEST_REDIS}}
tasks:
  nightly-report:
    schedule: every second
    enqueue: {{to: sidekiq, job: ReportJob, args: [42, "eu", {{deep: [1, 2.5, null, true]}}], queue: {queue}}}
  active:
    schedule: every second
    enqueue: {{to: sidekiq, job: ReportJob, active_job: true, args: [7], queue: {queue}, retry: 3}}
""",
            env={"TEST_REDIS": redis_url},
        )
        enqueued = clock.wait_event("task.enqueued", count=2, task="nightly-report")[:2]
        clock.wait_event("task.enqueued", task="active")
        assert 0 == clock.stop()
        plain = {e["job_id"]: e for e in clock.named("task.enqueued") if e["task"] == "nightly-report"}
        ran = wait_records(workers.out, "ReportJob", len(plain))
        assert sorted(plain) == sorted(r["jid"] for r in ran)
        assert all(r["args"] == [42, "eu", {"deep": [1, 2.5, None, True]}] for r in ran)
        first = enqueued[0]
        fields = (first["to"], first["queue"], first["broker"], first["trigger"])
        assert ("sidekiq", queue, "redis", "schedule") == fields
        assert re.fullmatch(r"[0-9a-f]{24}", first["job_id"])
        wrapped = wait_records(workers.out, "ActiveJob", 1)[0]["job_data"]
        assert ("ReportJob", [7], queue) == (
            wrapped["job_class"],
            wrapped["arguments"],
            wrapped["queue_name"],
        )


class TestRQ:
    def test_the_worker_runs_the_function_and_run_now_prints_the_job_id(
        self, tmp_path: Path, redis_url: str, workers: Workers
    ) -> None:
        """RQ runs the function named by its dotted path (never imported by the clock) with args, kwargs
        and the instant in its meta; run-now enqueues too, prints the job id, and history records both."""
        queue = new_queue()
        workers.rq(redis_url, queue)
        text = f"""
store: sqlite:///state.db
brokers:
  redis: {redis_url}
tasks:
  report:
    schedule: every second
    enqueue:
      to: rq
      job: tests.integration.workers.pyjobs.report
      args: [1, "a"]
      kwargs: {{region: eu}}
      queue: {queue}
      job_timeout: 30s
      result_ttl: 1m
"""
        clock = start_clock(tmp_path, text)
        event = clock.wait_event("task.enqueued")[0]
        assert 0 == clock.stop()
        scheduled = {e["job_id"]: e["scheduled_for"] for e in clock.named("task.enqueued")}
        ran = {r["job_id"]: r for r in wait_records(workers.out, "rq", len(scheduled))}
        assert set(scheduled) <= set(ran)
        job = ran[event["job_id"]]
        assert ([1, "a"], {"region": "eu"}) == (job["args"], job["kwargs"])
        assert event["scheduled_for"] == job["meta"]["scheduled_for"]
        assert str(uuid.UUID(event["job_id"])) == event["job_id"]

        now = run_cli("run-now", "report", "-c", str(tmp_path / "schedules.yaml"), cwd=tmp_path)
        assert 0 == now.returncode, now.stderr
        manual_id = now.stdout.strip()
        assert manual_id not in scheduled
        assert "trigger=manual" in now.stderr or '"trigger": "manual"' in now.stderr
        wait_records(workers.out, "rq", len(scheduled) + 1)
        assert manual_id in {r["job_id"] for r in records(workers.out, "rq")}

        history = run_cli("history", "report", "--json", "--output", cwd=tmp_path)
        rows = json.loads(history.stdout)
        assert {"enqueued"} == {row["status"] for row in rows}
        assert {"manual", "schedule"} == {row["trigger"] for row in rows}
        manual = next(row for row in rows if row["trigger"] == "manual")
        assert manual_id in manual["output"]


class TestCelery:
    @pytest.mark.parametrize("broker", ["rabbitmq", "redis"])
    def test_the_worker_runs_the_task_sent_by_name(
        self, tmp_path: Path, broker: str, request: pytest.FixtureRequest, workers: Workers
    ) -> None:
        """send_task by name, over RabbitMQ and over Redis: the worker runs it under the deterministic id,
        with the instant in a header and an expiry one grace after the instant."""
        url = request.getfixturevalue("amqp_url" if broker == "rabbitmq" else "redis_url")
        queue = new_queue()
        workers.celery(url, queue)
        clock = start_clock(
            tmp_path,
            f"""
brokers:
  {broker}: {url}
tasks:
  report:
    schedule: every second
    grace: 30s
    enqueue: {{to: celery, job: app.report, args: [3], kwargs: {{k: v}}, queue: {queue}, priority: 5}}
""",
        )
        event = clock.wait_event("task.enqueued")[0]
        assert 0 == clock.stop()
        count = len(clock.named("task.enqueued"))
        ran = {r["task_id"]: r for r in wait_records(workers.out, "celery", count, timeout=30)}
        job = ran[event["job_id"]]
        assert ([3], {"k": "v"}, event["scheduled_for"]) == (job["args"], job["kwargs"], job["scheduled_for"])
        expires = datetime.fromisoformat(job["expires"])
        assert 30 == (expires - datetime.fromisoformat(event["scheduled_for"])).total_seconds()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _RedisServer:
    """A Redis of the test's own, with a password, to take down and bring back."""

    def __init__(self, tmp_path: Path, password: str) -> None:
        self.port = _free_port()
        self.dir = tmp_path
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--requirepass", self.password, "--dir", str(self.dir)]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


class TestOutage:
    def test_a_broker_down_at_start_and_cut_mid_run(self, tmp_path: Path) -> None:
        """The broker is down at start, comes up, is cut and comes back: each outage is logged once (no
        password in any line), failed enqueues are retried, and a command task fires on time throughout."""
        if shutil.which("redis-server") is None:
            _unavailable("no redis-server command", "apt-get install redis-server")
        pytest.importorskip("redis")
        server = _RedisServer(tmp_path, "s3cr3t-pw")
        text = f"""
brokers:
  redis: redis://:{server.password}@127.0.0.1:{server.port}/0
tasks:
  tick:
    schedule: every second
    command: "true"
  push:
    schedule: every second
    retries: 1
    retry_delay: 0
    enqueue: {{to: sidekiq, job: ReportJob, queue: outage}}
"""
        clock = start_clock(tmp_path, text)
        try:
            clock.wait_event("task.enqueue_failed", count=2)
            clock.wait_event("task.retrying")
            server.start()
            clock.wait_event("broker.recovered")
            clock.wait_event("task.enqueued", count=2)
            server.kill()
            clock.wait_event("broker.unavailable", count=2)
            clock.wait_event("task.enqueue_failed", count=len(clock.named("task.enqueue_failed")) + 2)
            server.start()
            clock.wait_event("broker.recovered", count=2)
            enqueued = len(clock.named("task.enqueued"))
            clock.wait_event("task.enqueued", count=enqueued + 2)
            assert 0 == clock.stop()
        finally:
            server.kill()
        assert 2 == len(clock.named("broker.unavailable"))
        assert 2 == len(clock.named("broker.recovered"))
        everything = json.dumps(clock.events) + "".join(clock.other)
        assert server.password not in everything
        assert "***" in clock.named("broker.unavailable")[0]["url"]
        lateness = [
            (
                datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
                - datetime.fromisoformat(e["scheduled_for"])
            )
            for e in clock.named("task.started")
            if e["task"] == "tick"
        ]
        assert len(lateness) >= 5
        assert max(late.total_seconds() for late in lateness) < 0.5


class TestSeveralClocks:
    def test_three_clocks_enqueue_each_instant_once(
        self, tmp_path: Path, postgres_store_url: str, redis_url: str, sidekiq: str, workers: Workers
    ) -> None:
        """Three clocks on one PostgreSQL store, a per-second task for 20 s: each instant is enqueued
        once (the claim decides), and the worker runs each once."""
        queue = new_queue()
        workers.sidekiq(sidekiq, redis_url, queue)
        path = tmp_path / "schedules.yaml"
        path.write_text(
            f"""
brokers:
  redis: {redis_url}
tasks:
  report:
    schedule: every second
    enqueue: {{to: sidekiq, job: ReportJob, queue: {queue}}}
"""
        )
        clocks = [ClockProcess(path, "--store", postgres_store_url) for _ in range(3)]
        try:
            for clock in clocks:
                clock.wait_event("scheduler.started", timeout=30)
            time.sleep(20)
        finally:
            for clock in clocks:
                clock.stop()
        enqueued = [e for clock in clocks for e in clock.named("task.enqueued")]
        instants = Counter(e["scheduled_for"] for e in enqueued)
        assert len(instants) >= 18
        assert {1} == set(instants.values())
        ran = wait_records(workers.out, "ReportJob", len(enqueued))
        assert Counter(e["job_id"] for e in enqueued) == Counter(r["jid"] for r in ran)


class TestCommands:
    TEXT = """
brokers:
  redis: ${UNSET_FOR_LIST}
tasks:
  report:
    schedule: "0 3 * * *"
    enqueue: {to: sidekiq, job: ReportJob, queue: critical}
  backup:
    schedule: "0 4 * * *"
    command: "true"
"""

    def test_list_and_next_show_what_each_task_starts(self, tmp_path: Path) -> None:
        """list gains a RUNS column when some task enqueues; next names the target. Neither needs the
        broker, nor its variable."""
        (tmp_path / "schedules.yaml").write_text(self.TEXT)
        listed = run_cli("list", cwd=tmp_path)
        assert 0 == listed.returncode, listed.stderr
        header, report, backup = listed.stdout.splitlines()
        assert header.split()[-1] == "RUNS"
        assert report.endswith("sidekiq ReportJob on critical (redis)")
        assert backup.endswith("command")
        upcoming = run_cli("next", "report", "-n", "1", cwd=tmp_path)
        assert "report: 0 3 * * *" in upcoming.stdout
        assert "enqueues sidekiq ReportJob on critical (redis)" in upcoming.stdout
        as_json = json.loads(run_cli("next", "--json", "-n", "1", cwd=tmp_path).stdout)
        assert {"report": "sidekiq ReportJob on critical (redis)", "backup": None} == {
            entry["task"]: entry.get("enqueue") for entry in as_json
        }

    def test_run_and_run_now_name_an_unset_broker_variable(self, tmp_path: Path) -> None:
        """The clock refuses to start (exit 2) when a broker's variable is unset, naming the line."""
        (tmp_path / "schedules.yaml").write_text(self.TEXT)
        for argv in (["run"], ["run-now", "report"]):
            result = run_cli(*argv, cwd=tmp_path, timeout=30)
            assert 2 == result.returncode
            assert "schedules.yaml:3: brokers: redis: environment variable UNSET_FOR_LIST is not set" in (
                result.stderr
            )
            assert "Traceback" not in result.stderr
