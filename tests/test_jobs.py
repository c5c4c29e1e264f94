"""Tests for scheduler.jobs: job ids and each backend's job, built without a broker."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

from scheduler.jobs import ACTIVE_JOB_WRAPPER, Enqueue, build, job_id, sidekiq_json

INSTANT = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
NOW = INSTANT + timedelta(milliseconds=1.5)


def enqueue(to: str, **kwargs: object) -> Enqueue:
    return Enqueue(to=to, broker="b", url="redis://h", job=kwargs.pop("job", "ReportJob"), **kwargs)  # type: ignore[arg-type]


def make(spec: Enqueue, instant: datetime = INSTANT, grace_s: float = 300.0) -> dict[str, object]:
    job = build(
        spec,
        task="nightly",
        namespace="",
        run_id="abc",
        trigger="schedule",
        scheduled_for=instant,
        grace_s=grace_s,
        now=NOW,
    )
    return {"job_id": job.job_id, "queue": job.queue, **job.payload}


class TestJobId:
    def test_same_task_and_instant_same_id(self) -> None:
        """Every clock and every retry of an instant name its job alike, in any zone."""
        paris = INSTANT.astimezone(timezone(timedelta(hours=1)))
        assert job_id("rq", "", "nightly", INSTANT) == job_id("rq", "", "nightly", paris)

    def test_task_instant_and_namespace_each_change_it(self) -> None:
        """Ids differ by task, by instant and by namespace."""
        ids = {
            job_id("celery", "", "nightly", INSTANT),
            job_id("celery", "", "other", INSTANT),
            job_id("celery", "", "nightly", INSTANT + timedelta(seconds=1)),
            job_id("celery", "billing", "nightly", INSTANT),
        }
        assert 4 == len(ids)

    def test_forms(self) -> None:
        """A Sidekiq jid is 24 hex digits, as Sidekiq's own; RQ and Celery get a UUID (version 5)."""
        assert re.fullmatch(r"[0-9a-f]{24}", job_id("sidekiq", "", "t", INSTANT))
        assert 5 == uuid.UUID(job_id("rq", "", "t", INSTANT)).version
        assert job_id("rq", "", "t", INSTANT) == job_id("celery", "", "t", INSTANT)


class TestSidekiq:
    def test_the_job_hash(self) -> None:
        """Class, args, queue, retry, jid, float-second stamps (Sidekiq 6 and 7), and the instant."""
        job = make(enqueue("sidekiq", args=(42, "eu"), queue="critical", retry=3))
        assert {
            "job_id": job["jid"],
            "queue": "critical",
            "class": "ReportJob",
            "args": [42, "eu"],
            "retry": 3,
            "jid": job["jid"],
            "created_at": NOW.timestamp(),
            "enqueued_at": NOW.timestamp(),
            "scheduled_for": "2026-03-01T03:00:00+00:00",
            "scheduler": {
                "task": "nightly",
                "run_id": "abc",
                "trigger": "schedule",
                "scheduled_for": "2026-03-01T03:00:00+00:00",
            },
        } == job

    def test_sidekiq_8_counts_milliseconds(self) -> None:
        """Sidekiq 8 writes created_at and enqueued_at as integer milliseconds."""
        job = make(enqueue("sidekiq", version=8))
        assert (int(NOW.timestamp() * 1000), int) == (job["created_at"], type(job["enqueued_at"]))

    def test_active_job_wrapping(self) -> None:
        """As Rails' adapter: the wrapper class, the job class as `wrapped`, ActiveJob's data as the arg."""
        job = make(enqueue("sidekiq", job="Reports::Nightly", args=(1,), active_job=True))
        assert (ACTIVE_JOB_WRAPPER, "Reports::Nightly") == (job["class"], job["wrapped"])
        (data,) = job["args"]  # type: ignore[misc]
        assert ("Reports::Nightly", [1], "default", 0) == (
            data["job_class"],
            data["arguments"],
            data["queue_name"],
            data["executions"],
        )
        assert 5 == uuid.UUID(data["job_id"]).version
        assert "2026-03-01T03:00:00.001500Z" == data["enqueued_at"]

    def test_stored_as_compact_json(self) -> None:
        """The hash is stored as Sidekiq stores it: compact JSON, unicode kept."""
        text = sidekiq_json({"class": "X", "args": ["é"]})
        assert '{"class":"X","args":["é"]}' == text
        assert {"class": "X", "args": ["é"]} == json.loads(text)


class TestRQ:
    def test_enqueue_call_arguments(self) -> None:
        """The function by its dotted path, whole seconds (rounded up), the instant in the meta."""
        job = make(
            enqueue(
                "rq", job="app.jobs.report", args=(1,), kwargs={"a": 2}, job_timeout_s=1.5, result_ttl_s=0
            )
        )
        assert ("app.jobs.report", [1], {"a": 2}, 2, 0) == (
            job["func"],
            job["args"],
            job["kwargs"],
            job["timeout"],
            job["result_ttl"],
        )
        assert "ttl" not in job
        assert "failure_ttl" not in job
        assert 5 == uuid.UUID(str(job["job_id"])).version
        assert "2026-03-01T03:00:00+00:00" == job["meta"]["scheduled_for"]  # type: ignore[index]
        assert "default" == job["queue"]


class TestCelery:
    def test_send_task_arguments(self) -> None:
        """By name, under the job id, expiring a grace after the instant, the instant in a header."""
        job = make(enqueue("celery", job="app.report", args=(3,), headers={"h": 1}, priority=5), grace_s=60)
        assert ("app.report", [3], "celery", 5) == (job["name"], job["args"], job["queue"], job["priority"])
        assert job["task_id"] == job["job_id"]
        assert INSTANT + timedelta(seconds=60) == job["expires"]
        assert {"h": 1, "scheduled_for": "2026-03-01T03:00:00+00:00", "scheduler_task": "nightly"} == job[
            "headers"
        ]
        assert "routing_key" not in job

    def test_expires_overrides_the_grace(self) -> None:
        """`expires`, when set, counts from the instant instead of the grace."""
        job = make(enqueue("celery", job="x", expires_s=10.0, routing_key="rk"))
        assert (INSTANT + timedelta(seconds=10), "rk") == (job["expires"], job["routing_key"])
