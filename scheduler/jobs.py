"""Jobs for the app's own workers: what a task with `enqueue` sends to Sidekiq, RQ or Celery. PURE.

No network, no clock, no imports of the app's code: the instant and the send time are parameters, the job
is named by a string (a Sidekiq class, an RQ dotted path, a Celery task name), and brokers.py sends what is
built here. Each job's id comes from (namespace, task, scheduled instant) alone, so that every clock, and
every retry of the same instant, gives the same id: a duplicate is recognisable downstream.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from scheduler.frozen import pickle_by_fields

Backend = Literal["sidekiq", "rq", "celery"]
BACKENDS: tuple[Backend, ...] = ("sidekiq", "rq", "celery")
# The queue a job goes to when the task names none: each backend's own default.
DEFAULT_QUEUES: Mapping[str, str] = {"sidekiq": "default", "rq": "default", "celery": "celery"}
SIDEKIQ_VERSIONS = (6, 7, 8)
# 6 and 7 write created_at/enqueued_at as float seconds, which 8 still reads; the Debian package is 6.4.
DEFAULT_SIDEKIQ_VERSION = 7
# The class Sidekiq runs an ActiveJob under; Sidekiq 7.3 and 8 keep this name as an alias of their own.
ACTIVE_JOB_WRAPPER = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
# uuid5's namespace for job ids: any fixed UUID works, as long as every version uses the same one.
_JOB_ID_NAMESPACE = uuid.UUID("6c1f0a3e-4b5d-5e8f-9a1b-2c3d4e5f6a7b")

JSON = Any  # a value that json.dumps takes as is: str, int, float, bool, None, lists and str-keyed dicts


@pickle_by_fields
@dataclass(frozen=True, slots=True)
class Enqueue:
    """A task's `enqueue` settings, validated (config.py). `url` is the broker's URL as written, with its
    `${NAME}` references left for the edge to fill in; `url_line` names its place in errors and is not
    compared. Options of other backends keep their defaults."""

    to: Backend
    broker: str
    url: str
    job: str
    args: tuple[JSON, ...] = ()
    kwargs: Mapping[str, JSON] = field(default_factory=dict)
    queue: str | None = None
    # Sidekiq
    retry: bool | int = True
    version: int = DEFAULT_SIDEKIQ_VERSION
    active_job: bool = False
    # RQ, in seconds
    job_timeout_s: float | None = None
    result_ttl_s: float | None = None
    failure_ttl_s: float | None = None
    ttl_s: float | None = None
    # Celery
    routing_key: str | None = None
    exchange: str | None = None
    priority: int | None = None
    expires_s: float | None = None  # None: the task's grace
    headers: Mapping[str, JSON] = field(default_factory=dict)
    url_line: int = field(default=0, compare=False)

    @property
    def queue_name(self) -> str:
        return self.queue or DEFAULT_QUEUES[self.to]

    def describe(self) -> str:
        """The target in a few words, for list and next: 'sidekiq ReportJob on default (redis)'."""
        return f"{self.to} {self.job} on {self.queue_name} ({self.broker})"


@dataclass(frozen=True, slots=True)
class Job:
    """One job ready to send: where to, under which id, and the backend's own fields (`payload`)."""

    to: Backend
    queue: str
    job_id: str
    payload: Mapping[str, Any]


def job_id(to: Backend, namespace: str, task: str, instant: datetime) -> str:
    """The job's id for this (namespace, task, instant): a Sidekiq jid (24 hex digits, as Sidekiq's own),
    else a UUID (RQ's job_id, Celery's task_id). Instants are compared in UTC."""
    value = _job_uuid(namespace, task, instant)
    return value.hex[:24] if to == "sidekiq" else str(value)


def _job_uuid(namespace: str, task: str, instant: datetime) -> uuid.UUID:
    return uuid.uuid5(_JOB_ID_NAMESPACE, f"{namespace}\0{task}\0{_iso(instant)}")


def build(
    spec: Enqueue,
    *,
    task: str,
    namespace: str,
    run_id: str,
    trigger: str,
    scheduled_for: datetime,
    grace_s: float,
    now: datetime,
) -> Job:
    """The job a run of `task` sends for the instant `scheduled_for`, at `now`."""
    jid = job_id(spec.to, namespace, task, scheduled_for)
    meta = {"task": task, "run_id": run_id, "trigger": trigger, "scheduled_for": _iso(scheduled_for)}
    if spec.to == "sidekiq":
        payload = _sidekiq(spec, jid, str(_job_uuid(namespace, task, scheduled_for)), meta, now)
    elif spec.to == "rq":
        payload = _rq(spec, jid, meta)
    else:
        payload = _celery(spec, jid, meta, scheduled_for, grace_s)
    return Job(spec.to, spec.queue_name, jid, payload)


def _sidekiq(
    spec: Enqueue, jid: str, active_job_id: str, meta: Mapping[str, str], now: datetime
) -> dict[str, Any]:
    """Sidekiq's job hash, as its client pushes it (JSON on `queue:NAME`), with our fields beside its own:
    a worker ignores keys it does not know. With active_job, the hash wraps an ActiveJob as Rails'
    adapter does, so that `ReportJob < ApplicationJob` runs with its arguments."""
    stamp: float | int = now.timestamp()
    if spec.version >= 8:
        stamp = int(stamp * 1000)
    args: list[JSON] = list(spec.args)
    job: dict[str, Any] = {"class": spec.job, "args": args}
    if spec.active_job:
        job = {
            "class": ACTIVE_JOB_WRAPPER,
            "wrapped": spec.job,
            "args": [
                {
                    "job_class": spec.job,
                    "job_id": active_job_id,
                    "provider_job_id": jid,
                    "queue_name": spec.queue_name,
                    "priority": None,
                    "arguments": args,
                    "executions": 0,
                    "exception_executions": {},
                    "locale": "en",
                    "timezone": "UTC",
                    "enqueued_at": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "scheduled_at": None,
                }
            ],
        }
    return {
        **job,
        "queue": spec.queue_name,
        "retry": spec.retry,
        "jid": jid,
        "created_at": stamp,
        "enqueued_at": stamp,
        "scheduled_for": meta["scheduled_for"],
        "scheduler": dict(meta),
    }


def sidekiq_json(payload: Mapping[str, Any]) -> str:
    """The job hash as Sidekiq stores it: compact JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _rq(spec: Enqueue, jid: str, meta: Mapping[str, str]) -> dict[str, Any]:
    """RQ's Queue.enqueue_call keyword arguments: the function by its dotted path (RQ imports it in the
    worker, never here), whole seconds for its timeouts, our fields in the job's meta."""
    call: dict[str, Any] = {
        "func": spec.job,
        "args": list(spec.args),
        "kwargs": dict(spec.kwargs),
        "job_id": jid,
        "meta": {"scheduler": dict(meta), "scheduled_for": meta["scheduled_for"]},
        "description": f"{spec.job} (scheduler task {meta['task']}, {meta['scheduled_for']})",
    }
    for key, seconds in (
        ("timeout", spec.job_timeout_s),
        ("result_ttl", spec.result_ttl_s),
        ("failure_ttl", spec.failure_ttl_s),
        ("ttl", spec.ttl_s),
    ):
        if seconds is not None:
            call[key] = _whole_seconds(seconds)
    return call


def _celery(
    spec: Enqueue, jid: str, meta: Mapping[str, str], scheduled_for: datetime, grace_s: float
) -> dict[str, Any]:
    """Celery's send_task keyword arguments. The job expires `expires` (default: the task's grace) after
    its instant, so that a backlog of them is not run late; our fields go in the message's headers."""
    expires_s = spec.expires_s if spec.expires_s is not None else grace_s
    call: dict[str, Any] = {
        "name": spec.job,
        "args": list(spec.args),
        "kwargs": dict(spec.kwargs),
        "task_id": jid,
        "queue": spec.queue_name,
        "expires": scheduled_for.astimezone(UTC) + timedelta(seconds=expires_s),
        "headers": {**spec.headers, "scheduled_for": meta["scheduled_for"], "scheduler_task": meta["task"]},
    }
    for key, value in (
        ("routing_key", spec.routing_key),
        ("exchange", spec.exchange),
        ("priority", spec.priority),
    ):
        if value is not None:
            call[key] = value
    return call


def _whole_seconds(seconds: float) -> int:
    """RQ counts in whole seconds: round up, so that 0.5s is not 0 (which means 'never keep')."""
    whole = int(seconds)
    return whole + 1 if whole < seconds else whole


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()
