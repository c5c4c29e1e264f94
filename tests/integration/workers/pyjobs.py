"""Jobs for the RQ and Celery workers the integration tests start: each run appends one JSON line to
$OUT_DIR/<name>.jsonl, so that a test sees that the job ran, with what, and how many times."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

app = Celery("pyjobs", broker=os.environ.get("BROKER_URL", "memory://"))


def _record(name: str, fields: dict[str, Any]) -> None:
    with open(os.path.join(os.environ["OUT_DIR"], f"{name}.jsonl"), "a") as out:
        out.write(json.dumps({**fields, "started_at": time.time()}) + "\n")


def report(*args: Any, **kwargs: Any) -> None:
    """An RQ job, enqueued by its dotted path: tests.integration.workers.pyjobs.report."""
    from rq import get_current_job

    job = get_current_job()
    assert job is not None
    _record("rq", {"job_id": job.id, "args": list(args), "kwargs": kwargs, "meta": job.meta})


@app.task(name="app.report", bind=True)
def celery_report(self: Any, *args: Any, **kwargs: Any) -> None:
    """A Celery task, sent by name."""
    request = self.request
    _record(
        "celery",
        {
            "task_id": request.id,
            "args": list(args),
            "kwargs": kwargs,
            "scheduled_for": getattr(request, "scheduled_for", None),
            "expires": str(request.expires) if request.expires else None,
        },
    )
