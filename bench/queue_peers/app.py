"""The Python side of bench/queues.py: an RQ job and a Celery task that record when they started, RQ's own
cron schedule (`rq cron bench.queue_peers.app`) and Celery beat's (`celery -A bench.queue_peers.app beat`)."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import schedule

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))
app.conf.beat_schedule = {
    # Every second, rounded to whole seconds (relative), as close to "on the second" as beat gets.
    "bench": {"task": "bench.job", "schedule": schedule(timedelta(seconds=1), relative=True)},
}
app.conf.task_default_queue = QUEUE
app.conf.beat_max_loop_interval = 1


def _record(job_id: str) -> None:
    with open(os.environ["BENCH_OUT"], "a") as out:
        out.write(json.dumps({"id": job_id, "started": time.time()}) + "\n")


def job(*args: Any) -> None:
    """The RQ job."""
    from rq import get_current_job

    current = get_current_job()
    assert current is not None
    _record(current.id)


@app.task(name="bench.job", bind=True)
def celery_job(self: Any, *args: Any) -> None:
    _record(self.request.id)


if os.environ.get("RQ_CRON"):  # loaded by `rq cron`
    from rq import cron

    cron.register(job, queue_name=QUEUE, cron="* * * * * *")
