"""The brokers' edge: sends the jobs jobs.py builds to Redis (Sidekiq, RQ) or through Celery, off the loop.

Each broker connection has a daemon thread of its own, so that a broker that is down or slow holds up
nothing but its own jobs: the loop submits a batch and is answered through a future. The thread takes every
batch waiting when it wakes and sends them together (one Redis pipeline, one Celery producer), and drops the
jobs whose deadline passed while they waited: the loop has given up on them already. The drivers (redis, rq,
celery) are imported only for a broker that needs them, and never at all by the clock's pure core.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from scheduler.errors import BrokerError
from scheduler.jobs import Job, sidekiq_json
from scheduler.redact import redact, secrets

# The longest one connection attempt, or one read or write on a connection, may take in the broker's thread.
SOCKET_TIMEOUT_S = 5.0

_EXTRAS = {"redis": "redis", "rq": "redis", "celery": "celery"}


class Sender(Protocol):
    """Sends batches of jobs over one connection; used from one thread at a time."""

    def send(self, jobs: Sequence[Job]) -> list[str | None]:
        """Send the jobs together: per job, None once it is in the broker, or why it was refused. Raises
        when the broker cannot be reached (then none of them was sent, as far as anyone can tell)."""

    def close(self) -> None: ...


def require(module: str) -> None:
    """Import a driver now (at start, not on the first fire), or raise BrokerError naming the extra to
    install."""
    try:
        __import__(module)
    except ImportError:
        extra = _EXTRAS[module]
        raise BrokerError(
            f"sending jobs to {'Sidekiq or RQ' if extra == 'redis' else 'Celery'} needs the {module} "
            f"package: pip install 'scheduler-clock[{extra}]'"
        ) from None


def open_sender(url: str, kind: str) -> Sender:
    """A sender for `kind` ("redis" for Sidekiq and RQ jobs, "celery") over the broker at `url` (with its
    variables filled in); connects on its first send."""
    if kind == "celery":
        require("celery")
        return _CelerySender(url)
    require("redis")
    return _RedisSender(url)


class _RedisSender:
    """Sidekiq's and RQ's jobs, written as their own clients write them, one pipeline per batch."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            retry_on_timeout=False,
        )

    def send(self, jobs: Sequence[Job]) -> list[str | None]:
        pipe = self._client.pipeline(transaction=False)
        outcomes: list[str | None] = []
        queues: dict[str, Any] = {}
        for job in jobs:
            try:
                if job.to == "sidekiq":
                    pipe.sadd("queues", job.queue)
                    pipe.lpush(f"queue:{job.queue}", sidekiq_json(job.payload))
                else:
                    rq_queue = queues.get(job.queue)
                    if rq_queue is None:
                        rq_queue = queues[job.queue] = _rq_queue(job.queue, self._client)
                    rq_queue.enqueue_call(**job.payload, pipeline=pipe)
                outcomes.append(None)
            except (ValueError, TypeError) as exc:  # refused before anything was sent: this job only
                outcomes.append(f"{type(exc).__name__}: {exc}")
        pipe.execute()
        return outcomes

    def close(self) -> None:
        self._client.close()


def _rq_queue(name: str, connection: Any) -> Any:
    require("rq")
    from rq import Queue

    return Queue(name, connection=connection)


class _CelerySender:
    """Celery's jobs by name (send_task), so that nothing imports the app's tasks; messages in Celery's
    protocol 2, over AMQP with publisher confirms (sent means the broker has it) or over Redis."""

    def __init__(self, url: str) -> None:
        from celery import Celery

        self._app = Celery("scheduler", broker=url, set_as_current=False)
        self._app.conf.update(
            broker_connection_timeout=SOCKET_TIMEOUT_S,
            broker_connection_retry=False,
            broker_connection_retry_on_startup=False,
            broker_connection_max_retries=0,
            broker_transport_options={
                "confirm_publish": True,
                "socket_timeout": SOCKET_TIMEOUT_S,
                "socket_connect_timeout": SOCKET_TIMEOUT_S,
                "max_retries": 0,
            },
            broker_heartbeat=0,
            task_create_missing_queues=True,
        )

    def send(self, jobs: Sequence[Job]) -> list[str | None]:
        outcomes: list[str | None] = []
        with self._app.producer_or_acquire() as producer:
            for job in jobs:
                self._app.send_task(**job.payload, producer=producer, retry=False)
                outcomes.append(None)
        return outcomes

    def close(self) -> None:
        self._app.close()


class Unreachable(BrokerError):
    """The broker could not be reached, or did not answer: an outage, not a fault of the job."""


class Broker:
    """One broker connection and its thread: submit() hands a batch over, its future tells how it went."""

    def __init__(self, url: str, kind: str, *, opener: Callable[[str, str], Sender] = open_sender) -> None:
        self.display_url = redact(url)
        self._url = url
        self._kind = kind
        self._secrets = [s for s in [url, *secrets(url)] if s]
        self._opener = opener
        self._sender: Sender | None = None
        self._calls: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"broker-{kind}", daemon=True)
        self._thread.start()

    def submit(self, jobs: Sequence[Job], deadline: float) -> concurrent.futures.Future[list[str | None]]:
        """Send `jobs` before `deadline` (time.monotonic()), or not at all. The future gives each job's
        outcome (see Sender.send), or raises Unreachable."""
        future: concurrent.futures.Future[list[str | None]] = concurrent.futures.Future()
        self._calls.put(_Batch(list(jobs), deadline, future))
        return future

    def close(self) -> None:
        """Stop the thread after the batches already submitted."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (first := self._calls.get()) is not None:
            batches = [first]
            stopping = False
            while True:  # everything waiting goes in one pipeline
                try:
                    more = self._calls.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batches.append(more)
            self._send(batches)
            if stopping:
                break
        if self._sender is not None:
            try:
                self._sender.close()
            except Exception:
                pass

    def _send(self, batches: list[_Batch]) -> None:
        now = time.monotonic()
        live = [b for b in batches if b.deadline > now and b.future.set_running_or_notify_cancel()]
        for batch in batches:
            if batch not in live and not batch.future.done():
                batch.future.set_exception(
                    Unreachable("not sent: its time was up before the broker was free")
                )
        if not live:
            return
        jobs = [job for batch in live for job in batch.jobs]
        try:
            if self._sender is None:
                self._sender = self._opener(self._url, self._kind)
            outcomes = self._sender.send(jobs)
        except BrokerError as exc:
            for batch in live:
                batch.future.set_exception(exc)
            return
        except Exception as exc:  # the driver's own errors: connection refused, reset, timed out...
            self._drop_sender()
            error = Unreachable(self._scrub(f"{type(exc).__name__}: {exc}"))
            for batch in live:
                batch.future.set_exception(error)
            return
        start = 0
        for batch in live:
            end = start + len(batch.jobs)
            batch.future.set_result([None if o is None else self._scrub(o) for o in outcomes[start:end]])
            start = end

    def _drop_sender(self) -> None:
        """After a failure, start the next batch on a new connection."""
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                sender.close()
            except Exception:
                pass

    def _scrub(self, message: str) -> str:
        """A driver's message without the URL's credentials (a driver may quote the URL or its password)."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            message = message.replace(secret, self.display_url if secret == self._url else "***")
        return message


class _Batch:
    __slots__ = ("deadline", "future", "jobs")

    def __init__(
        self, jobs: list[Job], deadline: float, future: concurrent.futures.Future[list[str | None]]
    ) -> None:
        self.jobs = jobs
        self.deadline = deadline
        self.future = future
