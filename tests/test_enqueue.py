"""Tests for scheduler.enqueue: runs that hand a job to a broker, with a fake sender (no broker, no sleep)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog
from structlog.testing import capture_logs

from scheduler.config import TaskSpec
from scheduler.enqueue import EXIT_NOT_ENQUEUED, Enqueuer, check
from scheduler.errors import BrokerError, ConfigError
from scheduler.jobs import Enqueue, Job
from scheduler.runner import Run, RunResult
from scheduler.schedule import parse

INSTANT = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
WAIT_S = 10.0


def task(name: str = "t", url: str = "redis://:pw@h:6379/0", to: str = "sidekiq", **kwargs: Any) -> TaskSpec:
    enqueue = Enqueue(
        to=to, broker="redis", url=url, job="ReportJob" if to == "sidekiq" else "a.b", url_line=3
    )  # type: ignore[arg-type]
    return TaskSpec(
        name=name,
        schedule=parse("@daily", name=name, zone=ZoneInfo("UTC")),
        command=(),
        timezone="UTC",
        enqueue=enqueue,
        **kwargs,
    )


class FakeSender:
    """Answers in the broker's thread: fails while `down`, blocks while `stalled` is clear."""

    def __init__(self) -> None:
        self.batches: list[list[Job]] = []
        self.down: Exception | None = None
        self.stalled = threading.Event()
        self.stalled.set()

    def send(self, jobs: Sequence[Job]) -> list[str | None]:
        self.stalled.wait(WAIT_S)
        if self.down is not None:
            raise self.down
        self.batches.append(list(jobs))
        return [None] * len(jobs)

    def close(self) -> None:
        pass


class FakeCommands:
    """The command runner's start_run, recording what it was asked to start."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def __call__(self, task: TaskSpec, **kwargs: Any) -> Run:
        self.started.append(task.name)
        return None  # type: ignore[return-value]


def enqueuer(sender: FakeSender, env: Mapping[str, str] | None = None, commands: Any = None) -> Enqueuer:
    return Enqueuer(
        commands=commands or FakeCommands(),
        log=structlog.get_logger(),
        env=env or {},
        config_path="schedules.yaml",
        now=lambda: INSTANT,
        opener=lambda url, kind: sender,
    )


def start(e: Enqueuer, spec: TaskSpec, run_id: str = "r1", trigger: str = "schedule") -> Run:
    return e(
        spec,
        run_id=run_id,
        trigger=trigger,
        scheduled_for=INSTANT,
        log=structlog.get_logger(),
        env={},
        yield_cpu=False,
    )


async def results(runs: Sequence[Run]) -> list[RunResult]:
    return await asyncio.wait_for(asyncio.gather(*(run.wait() for run in runs)), WAIT_S)


class TestEnqueuer:
    def test_runs_started_together_go_in_one_batch(self) -> None:
        """Many due at once reach the broker in one batch; each run ends `enqueued` (a success) and logs
        task.enqueued with its job id."""
        sender = FakeSender()

        async def main() -> list[RunResult]:
            e = enqueuer(sender)
            runs = [start(e, task(f"t{i}"), run_id=f"r{i}") for i in range(3)]
            try:
                return await results(runs)
            finally:
                e.close()

        with capture_logs() as logs:
            outcome = asyncio.run(main())
        assert [("enqueued", True, 0)] * 3 == [(r.status, r.ok, r.shell_exit_status) for r in outcome]
        assert [["t0", "t1", "t2"]] == [[j.payload["scheduler"]["task"] for j in b] for b in sender.batches]
        enqueued = [entry for entry in logs if entry["event"] == "task.enqueued"]
        assert {"t0", "t1", "t2"} == {entry["task"] for entry in enqueued}
        first = enqueued[0]
        assert ("sidekiq", "default", "redis", "2026-03-01T03:00:00+00:00", "schedule") == (
            first["to"],
            first["queue"],
            first["broker"],
            first["scheduled_for"],
            first["trigger"],
        )
        assert sender.batches[0][0].job_id == first["job_id"]

    def test_an_outage_is_logged_once_and_its_end_once(self) -> None:
        """Every run during an outage fails (task.enqueue_failed, with the reason); broker.unavailable comes
        once, broker.recovered once when a job gets through again."""
        sender = FakeSender()
        sender.down = ConnectionError("Connection refused")

        async def main() -> list[RunResult]:
            e = enqueuer(sender)
            try:
                failed = await results([start(e, task(), run_id="a")])
                failed += await results([start(e, task(), run_id="b")])
                sender.down = None
                return failed + await results([start(e, task(), run_id="c")])
            finally:
                e.close()

        with capture_logs() as logs:
            outcome = asyncio.run(main())
        assert ["failed", "failed", "enqueued"] == [r.status for r in outcome]
        assert EXIT_NOT_ENQUEUED == outcome[0].shell_exit_status
        assert "ConnectionError: Connection refused" == outcome[0].error
        events = [e["event"] for e in logs if e["event"].startswith(("broker.", "task."))]
        assert [
            "broker.unavailable",
            "task.enqueue_failed",
            "task.enqueue_failed",
            "broker.recovered",
            "task.enqueued",
        ] == events
        down = next(e for e in logs if e["event"] == "broker.unavailable")
        assert ("redis", "redis://:***@h:6379/0") == (down["broker"], down["url"])

    def test_a_broker_that_does_not_answer_fails_the_run_at_its_timeout(self) -> None:
        """A stalled broker ends the run as failed when the task's timeout is up; the loop goes on."""
        sender = FakeSender()
        sender.stalled.clear()

        async def main() -> RunResult:
            e = enqueuer(sender)
            try:
                (result,) = await results([start(e, task(timeout_s=0.01))])
                return result
            finally:
                sender.stalled.set()
                e.close()

        with capture_logs() as logs:
            result = asyncio.run(main())
        assert ("failed", "no answer from the broker within 0.01 s") == (result.status, result.error)
        assert ["broker.unavailable"] == [e["event"] for e in logs if e["event"].startswith("broker.")]

    def test_an_unset_variable_fails_the_run_naming_the_place(self) -> None:
        """A broker URL whose variable is unset fails each run with the file, line and broker."""
        sender = FakeSender()

        async def main() -> RunResult:
            e = enqueuer(sender)
            (result,) = await results([start(e, task(url="${REDIS_URL}"))])
            return result

        with capture_logs():
            result = asyncio.run(main())
        assert "schedules.yaml:3: brokers: redis: environment variable REDIS_URL is not set" == result.error

    def test_command_tasks_go_to_the_runner(self) -> None:
        """A task without `enqueue` is started by the command runner, unchanged."""
        commands = FakeCommands()

        async def main() -> None:
            e = enqueuer(FakeSender(), commands=commands)
            plain = TaskSpec(
                name="cmd",
                schedule=parse("@daily", name="cmd", zone=ZoneInfo("UTC")),
                command="true",
                timezone="UTC",
            )
            start(e, plain)

        asyncio.run(main())
        assert ["cmd"] == commands.started


class TestCheck:
    def test_the_url_must_fit_the_backend(self) -> None:
        """At start: a variable that fills in a non-Redis URL for Sidekiq is an error naming the place."""
        from scheduler.config import Config

        spec = task(url="${BROKER}")
        config = Config(path="schedules.yaml", timezone="UTC", tasks={"t": spec})
        with pytest.raises(
            BrokerError, match=r"schedules.yaml:3: brokers: redis: sidekiq reads its jobs from Redis"
        ):
            check(config, {"BROKER": "amqp://u:secret@h//"})
        with pytest.raises(ConfigError, match="BROKER is not set"):
            check(config, {})
        check(config, {"BROKER": "redis://h"})
