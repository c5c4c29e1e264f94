"""Tasks that enqueue a job: the loop's side of sending jobs to the app's own workers.

A task with `enqueue` runs as an EnqueueRun, a Run without a process, so that everything the loop does with
runs holds for it unchanged: the claim (each instant once across clocks), overlap, retries, pings, hooks,
history and metrics. Its work is one job handed to a broker (brokers.py, off the loop): the jobs started in
one turn of the loop go to each broker together, and each run ends `enqueued` once its broker has the job, or
`failed` when the broker refused it, could not be reached, or did not answer within the task's `timeout`
(DEFAULT_TIMEOUT_S when it has none). An outage of a broker is logged once, when it begins and when it ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from structlog.typing import FilteringBoundLogger

from scheduler.brokers import Broker, Sender, Unreachable, open_sender, require
from scheduler.config import Config, TaskSpec, expand_env
from scheduler.errors import BrokerError, ConfigError
from scheduler.followups import StartRun
from scheduler.jobs import Enqueue, Job, build
from scheduler.redact import redact
from scheduler.runner import Run, RunResult
from scheduler.runs import RunKind, iso_utc

# How long an enqueue may take, from the fire to the broker's answer, when the task sets no timeout.
DEFAULT_TIMEOUT_S = 5.0
# run-now's exit status when the job could not be enqueued: EX_UNAVAILABLE, as for an unreachable store.
EXIT_NOT_ENQUEUED = 69
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_KINDS = {"sidekiq": "redis", "rq": "redis", "celery": "celery"}
_DRIVERS = {"sidekiq": ("redis",), "rq": ("redis", "rq"), "celery": ("celery",)}


class EnqueueRun(Run):
    """One enqueue of a task's job: a Run with no process (pid stays None), which ends when the broker has
    answered. A job handed to a broker cannot be called back: stop() leaves it to end within its timeout,
    and kill() ends the run at once without knowing whether the job got there."""

    def __init__(
        self,
        task: TaskSpec,
        *,
        run_id: str,
        trigger: str,
        scheduled_for: datetime,
        log: FilteringBoundLogger,
        job: Job,
        broker: str,
    ) -> None:
        super().__init__(task, run_id=run_id, trigger=trigger, scheduled_for=scheduled_for, log=log)
        self.job = job
        self.broker = broker
        self._log = log.bind(task=task.name, run_id=run_id)
        self._began = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._broker_key: tuple[str, str] | None = None

    @property
    def job_id(self) -> str:
        return self.job.job_id

    def stop(self, status: Any = "killed", kill_grace_s: float | None = None) -> None:
        """Nothing to signal: the enqueue ends within its timeout (shutdown waits for it)."""

    def kill(self) -> None:
        self.failed("stopped before the broker answered: the job may or may not have been enqueued")

    def signal_group(self, signum: int) -> None:
        pass

    def enqueued(self) -> None:
        """The broker has the job: log task.enqueued and end the run as `enqueued`."""
        if self.done:
            return
        self._keep_tail(f"{self.job.to} job {self.job.job_id} enqueued on {self.job.queue}".encode())
        self._log.info("task.enqueued", duration_s=self._elapsed(), **self._fields())
        self._end(RunResult("enqueued", None, None, self._elapsed()))

    def failed(self, error: str) -> None:
        """The job did not reach the broker (as far as the clock knows): log task.enqueue_failed, end the
        run as `failed` with the reason."""
        if self.done:
            return
        self._log.warning("task.enqueue_failed", error=error, duration_s=self._elapsed(), **self._fields())
        result = RunResult(
            "failed", None, None, self._elapsed(), error, _not_started_status=EXIT_NOT_ENQUEUED
        )
        self._end(result)

    def _fields(self) -> dict[str, Any]:
        spec = self.task.enqueue
        assert spec is not None
        return {
            "trigger": self.trigger,
            "scheduled_for": iso_utc(self.scheduled_for),
            "to": spec.to,
            "queue": spec.queue_name,
            "job_id": self.job_id,
            "broker": self.broker,
        }

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._began, 6)

    def _end(self, result: RunResult) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._result.set_result(result)


def check(config: Config, env: Mapping[str, str]) -> None:
    """Before a clock or run-now starts: every task's broker URL can be filled in from `env` and fits its
    backend, and the drivers are installed. Raises BrokerError (or ConfigError for an unset variable)
    naming the place, rather than failing each fire."""
    for spec in config.tasks.values():
        if spec.enqueue is not None:
            for module in _DRIVERS[spec.enqueue.to]:
                require(module)
            broker_url(spec.enqueue, env, config.path)


def broker_url(spec: Enqueue, env: Mapping[str, str], config_path: str) -> str:
    """The broker's URL with its variables filled in; BrokerError when it does not fit the backend."""
    where = f"{config_path}:{spec.url_line}: brokers: {spec.broker}"
    url = expand_env(spec.url, env, where)
    scheme = url.partition("://")[0].lower()
    if _KINDS[spec.to] == "redis" and scheme not in _REDIS_SCHEMES:
        raise BrokerError(
            f"{where}: {spec.to} reads its jobs from Redis, but the URL is {redact(url)!r} "
            "(expected redis://, rediss:// or unix://)"
        )
    return url


class Enqueuer:
    """Starts every run of the clock: an EnqueueRun for a task with `enqueue`, the command runner's
    start_run (`commands`) for the others; it is the loop's StartRun."""

    def __init__(
        self,
        *,
        commands: StartRun,
        log: FilteringBoundLogger,
        env: Mapping[str, str],
        config_path: str,
        namespace: str = "",
        now: Callable[[], datetime] | None = None,
        opener: Callable[[str, str], Sender] = open_sender,
    ) -> None:
        self._commands = commands
        self._log = log
        self._env = env
        self._config_path = config_path
        self._namespace = namespace
        self._now = now or (lambda: datetime.now(UTC))
        self._opener = opener
        self._brokers: dict[tuple[str, str], Broker] = {}
        self._pending: dict[tuple[str, str], list[EnqueueRun]] = {}
        self._flush_soon: asyncio.Handle | None = None
        self._down: dict[str, tuple[float, Broker]] = {}  # broker name -> (when its outage began, broker)

    def __call__(
        self,
        task: TaskSpec,
        *,
        run_id: str,
        trigger: str,
        scheduled_for: datetime,
        log: FilteringBoundLogger,
        env: Mapping[str, str],
        yield_cpu: bool,
        kind: RunKind = "task",
    ) -> Run:
        if task.enqueue is None or kind == "hook":
            return self._commands(
                task,
                run_id=run_id,
                trigger=trigger,
                scheduled_for=scheduled_for,
                log=log,
                env=env,
                yield_cpu=yield_cpu,
                kind=kind,
            )
        return self.start(
            task, run_id=run_id, trigger=trigger, scheduled_for=scheduled_for, log=log, send_now=yield_cpu
        )

    def start(
        self,
        task: TaskSpec,
        *,
        run_id: str,
        trigger: str,
        scheduled_for: datetime,
        log: FilteringBoundLogger,
        send_now: bool = True,
    ) -> EnqueueRun:
        """Build the task's job and queue it for its broker, which gets it with the others started in this
        turn of the loop, on the loop's next turn; with `send_now` (the loop's first and last start of a
        burst), at once, and the broker's thread gets the interpreter right away: the latency from the
        fire to the job in its queue is what a clock is judged by."""
        spec = task.enqueue
        assert spec is not None
        job = build(
            spec,
            task=task.name,
            namespace=self._namespace,
            run_id=run_id,
            trigger=trigger,
            scheduled_for=scheduled_for,
            grace_s=task.grace_s,
            now=self._now(),
        )
        run = EnqueueRun(
            task,
            run_id=run_id,
            trigger=trigger,
            scheduled_for=scheduled_for,
            log=log,
            job=job,
            broker=spec.broker,
        )
        try:
            key = (self._url(spec), _KINDS[spec.to])
        except (BrokerError, ConfigError) as exc:
            run.failed(str(exc))
            return run
        run._broker_key = key
        loop = asyncio.get_running_loop()
        timeout_s = task.timeout_s if task.timeout_s is not None else DEFAULT_TIMEOUT_S
        run._timer = loop.call_later(timeout_s, self._timed_out, run, timeout_s)
        self._pending.setdefault(key, []).append(run)
        if send_now:
            if self._flush_soon is not None:
                self._flush_soon.cancel()
            self._flush()
            time.sleep(0)  # let go of the GIL: the broker's thread is waiting for it
        elif self._flush_soon is None:
            self._flush_soon = loop.call_soon(self._flush)
        return run

    def close(self) -> None:
        """Let the brokers' threads end once their batches are sent (they are daemons: nothing waits)."""
        for broker in self._brokers.values():
            broker.close()
        self._brokers.clear()

    # Inside

    def _url(self, spec: Enqueue) -> str:
        return broker_url(spec, self._env, self._config_path)

    def _flush(self) -> None:
        self._flush_soon = None
        pending, self._pending = self._pending, {}
        loop = asyncio.get_running_loop()
        for key, runs in pending.items():
            runs = [run for run in runs if not run.done]
            if not runs:
                continue
            broker = self._brokers.get(key)
            if broker is None:
                broker = self._brokers[key] = Broker(*key, opener=self._opener)
            deadline = time.monotonic() + max(
                run.task.timeout_s if run.task.timeout_s is not None else DEFAULT_TIMEOUT_S for run in runs
            )
            future = broker.submit([run.job for run in runs], deadline)
            future.add_done_callback(functools.partial(_call_soon, loop, self._answered, runs, broker))

    def _answered(
        self, runs: list[EnqueueRun], broker: Broker, future: concurrent.futures.Future[list[str | None]]
    ) -> None:
        name = runs[0].broker
        try:
            outcomes = future.result()
        except Unreachable as exc:
            self._went_down(name, broker, str(exc))
            for run in runs:
                run.failed(str(exc))
            return
        except BrokerError as exc:
            for run in runs:
                run.failed(str(exc))
            return
        self._came_back(name)
        for run, outcome in zip(runs, outcomes, strict=True):
            if outcome is None:
                run.enqueued()
            else:
                run.failed(outcome)

    def _timed_out(self, run: EnqueueRun, timeout_s: float) -> None:
        run._timer = None
        if run.done:
            return
        error = f"no answer from the broker within {timeout_s:g} s"
        broker = self._brokers.get(run._broker_key) if run._broker_key is not None else None
        if broker is not None:
            self._went_down(run.broker, broker, error)
        run.failed(error)

    def _went_down(self, name: str, broker: Broker, error: str) -> None:
        """An outage begins: logged once, until a job gets through again."""
        if name in self._down:
            return
        self._down[name] = (time.monotonic(), broker)
        self._log.error("broker.unavailable", broker=name, url=broker.display_url, error=error)

    def _came_back(self, name: str) -> None:
        down = self._down.pop(name, None)
        if down is not None:
            since, broker = down
            self._log.info(
                "broker.recovered",
                broker=name,
                url=broker.display_url,
                down_s=round(time.monotonic() - since, 3),
            )


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """From a broker's thread: hand its answer to the loop (gone at exit: nobody waits any more)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


__all__ = ["DEFAULT_TIMEOUT_S", "EXIT_NOT_ENQUEUED", "EnqueueRun", "Enqueuer", "Sender"]
