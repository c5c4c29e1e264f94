"""What follows a run's end: a retry after a delay, or the final ping and the on_success / on_failure hook."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from structlog.typing import FilteringBoundLogger

from scheduler import hooks
from scheduler.config import TaskSpec
from scheduler.observe import PingSink
from scheduler.runs import RunKind
from scheduler.state import Host, PendingRetry, TaskState

if TYPE_CHECKING:
    from scheduler.runner import Run, RunResult


class StartRun(Protocol):
    """The runner's start_run, injectable so the loop can be tested without processes."""

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
        kind: RunKind = ...,
    ) -> Run: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A task's retries: how many, and how long to wait before each."""

    retries: int
    delay_s: float
    backoff: float
    max_delay_s: float

    @classmethod
    def of(cls, spec: TaskSpec) -> RetryPolicy:
        return cls(spec.retries, spec.retry_delay_s, spec.retry_backoff, spec.retry_max_delay_s)

    def delay_after(self, attempt: int) -> float | None:
        """How long to wait after attempt `attempt` (1 for the first run) failed before the next one, or
        None when no attempt remains: retry_delay × retry_backoff^(attempt-1), at most retry_max_delay."""
        if attempt > self.retries:
            return None
        return min(self.delay_s * self.backoff ** (attempt - 1), self.max_delay_s)


class FollowUps:
    """Retries, the final ping and the hooks of the loop's runs."""

    def __init__(
        self,
        host: Host,
        *,
        tasks: Mapping[str, TaskState],
        start_run: StartRun,
        runs: set[Run],
        env: Mapping[str, str],
        log: FilteringBoundLogger,
        pinger: PingSink,
        unclaimed: Callable[[str, datetime, str, int], str | None],
        wake: Callable[[], None],
    ) -> None:
        self._host = host
        self._tasks = tasks
        self._start_run = start_run
        self._runs = runs
        self._env = env
        self._log = log
        self._pinger = pinger
        self._unclaimed = unclaimed
        self._wake = wake
        self._heap: list[tuple[float, int, str]] = []  # (due, seq, task name) of pending retries
        self._seq = itertools.count()

    def wake_at(self) -> float | None:
        """When the next retry is due (POSIX time), if any."""
        return self._heap[0][0] if self._heap else None

    def run_ended(self, state: TaskState, run: Run, result: RunResult, attempt: int) -> None:
        """Retry a failed run, or send its final ping and run its hook.

        Retry policy: a run that did not succeed (failed, timed out, killed by `replace`) is run again
        while attempts remain (`retries`), after RetryPolicy.delay_after; each attempt is a run of its own
        with trigger `retry`, under the overlap policy. A scheduled run of the task that starts meanwhile
        ends the retries, and so do a pause holding the task when a retry is due, shutdown (the loop stops
        calling this) and removing the task.
        The final ping and on_success / on_failure come once, after the last attempt: not for attempts
        that will be retried, and not during shutdown, when runs are stopped rather than failing.
        """
        spec = run.task
        delay = RetryPolicy.of(spec).delay_after(attempt) if not result.ok else None
        if delay is not None and self._tasks.get(spec.name) is state:
            due = self._host.now().timestamp() + delay
            state.retry = PendingRetry(due, run.scheduled_for, attempt + 1, run, result)
            heapq.heappush(self._heap, (due, next(self._seq), spec.name))
            self._log.info(
                "task.retrying",
                task=spec.name,
                run_id=run.run_id,
                attempt=attempt + 1,
                delay_s=round(delay, 3),
            )
            self._wake()
            return
        self._final(run, result)

    def due(self, now_ts: float) -> None:
        """Start the retries due by now_ts."""
        while self._heap and self._heap[0][0] <= now_ts and not self._host.stopping:
            _, _, name = heapq.heappop(self._heap)
            self._retry(name, now_ts)

    def supersede(self, state: TaskState) -> None:
        """A scheduled run starts while a retry waits: the retries end, and the failure is reported."""
        retry, state.retry = state.retry, None
        if retry is not None:
            self._log.info("task.retry_cancelled", task=state.spec.name, run_id=retry.failed.run_id)
            self._final(retry.failed, retry.result)

    def _retry(self, name: str, now_ts: float) -> None:
        state = self._tasks.get(name)
        retry = state.retry if state is not None else None
        if state is None or retry is None or retry.due > now_ts:
            return  # superseded by a scheduled run, or the task was removed
        state.retry = None
        if self._host.paused(name, self._host.now()):
            # A pause holds retries back too: the retries end here, as failed.
            self._host.skipped(name, retry.instant, "paused", self._log.info)
            self._final(retry.failed, retry.result)
            return
        run_id = self._unclaimed(name, retry.instant, "retry", retry.attempt)
        if not self._host.start(
            state, retry.instant, "retry", run_id=run_id, yield_cpu=True, attempt=retry.attempt
        ):
            # Skipped for overlap (or a bug): the retries end here, as failed.
            self._final(retry.failed, retry.result)

    def _final(self, run: Run, result: RunResult) -> None:
        """The end of a run's attempts: the final ping, and on_success or on_failure."""
        spec = run.task
        failed = not result.ok
        output = run.output_tail or result.error or ""
        if spec.ping_url is not None:
            self._pinger.finish(
                spec.ping_url,
                run.run_id,
                task=spec.name,
                success=not failed,
                exit_code=result.exit_code,
                use_exit_code=spec.ping_exit_code,
                # store_output: false keeps the output out of every copy that leaves the process.
                output=output if spec.store_output else "",
                timeout_s=spec.ping_timeout_s,
            )
        hook = spec.on_failure if failed else spec.on_success
        if hook is not None:
            self._start_hook(run, result, hook, "on_failure" if failed else "on_success", output)

    def _start_hook(
        self, run: Run, result: RunResult, hook: str | tuple[str, ...], which: str, output: str
    ) -> None:
        """Start on_success or on_failure (see hooks.py), tracked like a run so that a shutdown stops it.

        A hook is not a task run: its events are hook.started, hook.output and hook.finished, with the task
        and the run id of the run it follows and `hook`, or hook.failed alone when it could not start; it
        is never counted in the metrics or recorded in the store, never retried, and never fails the task.
        """
        spec = run.task
        try:
            hook_spec, path = hooks.prepare(spec, hook, result, output)
        except OSError as exc:
            self._log.warning("hook.failed", task=spec.name, run_id=run.run_id, hook=which, error=str(exc))
            return
        try:
            hook_run = self._start_run(
                hook_spec,
                run_id=run.run_id,
                trigger=which,
                scheduled_for=run.scheduled_for,
                log=self._log.bind(hook=which),
                env=self._env,
                yield_cpu=False,
                kind="hook",
            )
        except Exception as exc:  # a bug: the runner turns every failure to start into a failed run
            hooks.cleanup(path)
            self._log.error("scheduler.error", task=spec.name, error=f"{type(exc).__name__}: {exc}")
            return
        self._runs.add(hook_run)
        self._host.track(self._after_hook(hook_run, path))

    async def _after_hook(self, hook_run: Run, path: str) -> None:
        """Forget a hook once it has ended (the runner logged hook.finished or hook.failed)."""
        try:
            await hook_run.wait()
        finally:
            self._runs.discard(hook_run)
            hooks.cleanup(path)
