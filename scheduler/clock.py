"""The clock loop: which task is due next, sleep toward it, dispatch, reload, shut down.

One asyncio loop holds every task's next fire in a heap; it sleeps toward the earliest in bounded steps
and re-reads the wall clock after each, so a suspend or a clock step is noticed within a step. Processes
are the runner's business; config parsing and fire times are the pure core's.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import heapq
import itertools
import random
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from structlog.typing import FilteringBoundLogger

from scheduler import __version__, hooks
from scheduler.config import Config, TaskSpec
from scheduler.errors import ConfigError
from scheduler.schedule import Schedule
from scheduler.store import RunRecord

if TYPE_CHECKING:
    from scheduler.metrics import Metrics
    from scheduler.pings import Pinger
    from scheduler.recorder import Recorder
    from scheduler.runner import Run, RunResult

_T = TypeVar("_T")

# The longest the loop sleeps before re-reading the wall clock and polling the config file.
MAX_SLEEP_S = 1.0
# The last stretch before a fire is slept with a blocking, nanosecond-precise sleep.
PRECISE_SLEEP_S = 0.002
DEFAULT_SHUTDOWN_GRACE_S = 25.0
# Counting the instants missed during a long pause stops here; the event then says `count_capped`.
MISSED_COUNT_CAP = 100_000
# When many tasks are due at once, the loop serves the running runs' I/O after this many starts.
_YIELD_EVERY_FIRES = 128
# While the config is parsed in a thread, the loop thread waits at most this long for the GIL.
_SWITCH_INTERVAL_S = 0.001
# After the final SIGKILL, how long shutdown waits for the runs to be reaped.
_REAP_WAIT_S = 5.0
# With a store, a fire is claimed this long before it is due, so that it starts on time all the same.
CLAIM_AHEAD_S = 1.0


class WallClock(Protocol):
    """Where the loop gets the time and how it waits; tests pass a fake one."""

    def now(self) -> datetime:
        """Aware UTC wall-clock time."""

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        """Wait `seconds`, or less if `wake` is set."""


class SystemClock:
    """The real wall clock and asyncio's timers, with a precise last stretch.

    asyncio's timers wake up to a millisecond late (epoll counts in milliseconds), so the loop sleeps to
    within PRECISE_SLEEP_S of the fire and finishes with a blocking nanosleep: it wakes about 0.1 ms
    after the instant, at the cost of holding the loop for at most PRECISE_SLEEP_S.
    """

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        if seconds <= PRECISE_SLEEP_S:
            time.sleep(max(seconds, 0.0))
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=seconds - PRECISE_SLEEP_S)
        except TimeoutError:
            pass


class ConfigWatcher(Protocol):
    """Tells the loop when the config file changed (watch.FileWatcher)."""

    def touched(self) -> bool:
        """Cheap enough for the loop: may the file have changed?"""

    def changed(self) -> bool:
        """Run off the loop: has the content really changed?"""


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
    ) -> Run: ...


@dataclass(slots=True)
class _Retry:
    """A failed run's next attempt, waiting out its delay; it keeps what the last attempt left, for the
    failure notices when the retries end without another attempt."""

    due: float
    instant: datetime
    attempt: int  # the attempt this retry will be (2 for the first retry)
    failed: Run
    result: RunResult


@dataclass(slots=True)
class _TaskState:
    spec: TaskSpec
    generation: int = 0
    last_instant: datetime | None = None  # the newest instant fired or given up on; never fired again
    runs: list[Run] = field(default_factory=list)
    retry: _Retry | None = None  # the pending retry, if any

    @property
    def busy(self) -> bool:
        return any(not run.done for run in self.runs)


@dataclass(slots=True)
class _Claim:
    """A fire's claim in the store, made ahead of it; `answer` is the store's: won, lost, or None (the
    store could not say)."""

    record: RunRecord
    due: float
    answer: asyncio.Future[bool | None]


class _Entry(NamedTuple):
    """A queued fire. Ordered as a tuple, by due time then by the unique seq (C-speed comparisons)."""

    due: float  # POSIX time of the fire, jitter included
    seq: int
    name: str
    instant: datetime
    generation: int


class Clock:
    """Fires the tasks of a Config until asked to stop."""

    def __init__(
        self,
        config: Config,
        *,
        start_run: StartRun,
        log: FilteringBoundLogger,
        env: Mapping[str, str],
        clock: WallClock | None = None,
        reload_config: Callable[[], Config] | None = None,
        watcher: ConfigWatcher | None = None,
        on_tick: Callable[[], None] | None = None,
        shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S,
        rng: random.Random | None = None,
        run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
        recorder: Recorder | None = None,
        metrics: Metrics | None = None,
        pinger: Pinger | None = None,
    ) -> None:
        self.config = config
        self._start_run = start_run
        self._log = log
        self._env = env
        self._clock = clock or SystemClock()
        self._reload_config = reload_config
        self._watcher = watcher
        self._on_tick = on_tick
        self._shutdown_grace_s = shutdown_grace_s
        self._rng = rng or random.Random()
        self._run_blocking = run_blocking or _run_in_thread
        self._recorder = recorder
        self._metrics = metrics
        self._pinger = pinger
        self._retry_heap: list[tuple[float, int, str]] = []  # (due, seq, task name) of pending retries
        self._to_claim: list[tuple[_TaskState, datetime]] = []
        self._claim_heap: list[_Entry] = []  # the fires not claimed yet, by due time
        self._claims: dict[tuple[str, datetime], _Claim] = {}  # claims of fires not due yet
        self._recorded: set[str] = set()  # run ids of the runs whose end goes to the store
        self._dispatch_ts = 0.0
        self._batch_fired = 0
        self._refresh_job: asyncio.Task[None] | None = None
        self._tasks: dict[str, _TaskState] = {}
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._runs: set[Run] = set()
        self._pending: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stop_signals: list[str] = []
        self._reload_requested = False

    # Requests from signal handlers (or tests): they only record and wake the loop.

    def request_stop(self, signame: str = "SIGTERM") -> None:
        self._stop_signals.append(signame)
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    @property
    def running_runs(self) -> set[Run]:
        return {run for run in self._runs if not run.done}

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop, SIGHUP reloads; the handlers only record the request."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    async def run(self) -> None:
        """Fire tasks until a stop is requested, then shut down within the grace."""
        history = await self._recorder.start(self._clock.now()) if self._recorder is not None else None
        now = self._clock.now()
        for spec in self.config.tasks.values():
            self._tasks[spec.name] = state = _TaskState(spec)
            self._schedule(state, now)
        _settle_memory()
        self._log.info(
            "scheduler.started", tasks=len(self._tasks), config=self.config.path, version=__version__
        )
        if history is not None:
            self._catch_up(history.claimed, now)
            if self._metrics is not None:
                for name in self._tasks:
                    last_run, last_success = history.last_run.get(name), history.last_success.get(name)
                    self._metrics.seed(
                        name,
                        last_run=last_run.timestamp() if last_run else None,
                        last_success=last_success.timestamp() if last_success else None,
                    )
        last_poll = now
        while not self._stop_signals:
            now = self._clock.now()
            if self._metrics is not None:
                self._metrics.heartbeat()
            await self._dispatch_due(now)
            if self._stop_signals:
                break
            if self._recorder is not None:
                self._claim_ahead(now)
            if self._reload_requested and self._refresh_job is None:
                self._reload_requested = False
                self._start_refresh("signal")
            if abs((now - last_poll).total_seconds()) >= MAX_SLEEP_S:
                last_poll = now
                if self._watcher is not None and self._refresh_job is None and self._watcher.touched():
                    self._start_refresh("file")
                if self._on_tick is not None:
                    self._on_tick()
            current = self._clock.now()
            # Wake for the next fire, or for the next poll of the config file, whichever is first.
            delay = MAX_SLEEP_S - abs((current - last_poll).total_seconds())
            if self._heap:
                delay = min(delay, self._heap[0].due - current.timestamp())
            if self._claim_heap:
                delay = min(delay, self._claim_heap[0].due - CLAIM_AHEAD_S - current.timestamp())
            if self._retry_heap:
                delay = min(delay, self._retry_heap[0][0] - current.timestamp())
            if delay > 0:
                await self._clock.sleep(delay, self._wake)
            self._wake.clear()
        await self._shutdown()

    # Scheduling

    def _schedule(self, state: _TaskState, now: datetime) -> None:
        """Queue the task's next fire after `now` and after anything it already fired."""
        spec = state.spec
        if not spec.enabled:
            return
        after = now if state.last_instant is None else max(now, state.last_instant)
        self._push(state, spec.schedule.next_fire(after).at)

    def _push(self, state: _TaskState, instant: datetime) -> None:
        jitter = self._rng.uniform(0, state.spec.jitter_s) if state.spec.jitter_s > 0 else 0.0
        entry = _Entry(
            instant.timestamp() + jitter, next(self._seq), state.spec.name, instant, state.generation
        )
        heapq.heappush(self._heap, entry)
        if self._recorder is not None:
            heapq.heappush(self._claim_heap, entry)
        if self._metrics is not None:
            self._metrics.next_fire(entry.name, instant.timestamp())

    async def _dispatch_due(self, now: datetime) -> None:
        now_ts = self._dispatch_ts = now.timestamp()
        self._batch_fired = 0
        while self._heap and self._heap[0].due <= now_ts and not self._stop_signals:
            entry = heapq.heappop(self._heap)
            state = self._tasks.get(entry.name)
            if state is None or state.generation != entry.generation:
                continue  # the task was removed or rescheduled by a reload
            if self._fire_due(state, entry, now):
                self._batch_fired += 1
                if self._batch_fired % _YIELD_EVERY_FIRES == 0:
                    await asyncio.sleep(0)  # with many tasks due at once, let the runs' I/O flow too
        if self._to_claim:
            batch, self._to_claim = self._to_claim, []
            self._track(self._claim_and_fire(batch, "schedule"))
        while self._retry_heap and self._retry_heap[0][0] <= now_ts and not self._stop_signals:
            _, _, name = heapq.heappop(self._retry_heap)
            self._retry_due(name, now_ts)

    def _yield_after_start(self) -> bool:
        """Whether the run about to start should give its child the CPU at once: the first of a batch of
        due runs (so that it starts on time) and the last (so that they all get going); not those in
        between, so that a burst is spawned without pausing for each child."""
        more_due = bool(self._heap) and self._heap[0].due <= self._dispatch_ts
        return self._batch_fired == 0 or not more_due

    def _fire_due(self, state: _TaskState, entry: _Entry, now: datetime) -> bool:
        """Run a due instant, or account for it as missed.

        Misfire policy: every instant the task missed (suspend, overload, a forward clock step) collapses
        into one run at the newest of them, if that one is no older than the task's grace; otherwise they
        are all skipped. Either way the skipped ones are logged as one `task.missed` event with their
        count, and none of them is ever run later: no storm of runs after a long pause.
        """
        spec = state.spec
        first = entry.instant
        newest, count, previous = first, 1, None
        upcoming = spec.schedule.next_fire(first).at
        while upcoming <= now and count < MISSED_COUNT_CAP:
            previous, newest = newest, upcoming
            count += 1
            upcoming = spec.schedule.next_fire(upcoming).at
        capped = upcoming <= now
        if capped:
            # Past the cap, jump straight to the first instant after now.
            upcoming = spec.schedule.next_fire(now).at
        late_s = now.timestamp() - (entry.due if count == 1 else newest.timestamp())
        state.last_instant = newest if not capped else now
        self._push(state, upcoming)
        if count > 1 and self._recorder is not None:
            self._release(spec.name, first)  # claimed ahead, then missed
        if late_s <= spec.grace_s and not capped:
            if count > 1:
                self._missed(spec.name, count - 1, first, previous or first, capped=False)
            if self._recorder is not None:
                return self._fire_claimed(state, newest)
            return self._fire(state, newest, "schedule")
        self._missed(spec.name, count, first, newest, capped=capped)
        return False

    def _missed(self, name: str, count: int, first: datetime, last: datetime, *, capped: bool) -> None:
        if self._metrics is not None:
            self._metrics.missed(name, count)
        extra: dict[str, Any] = {"count_capped": True} if capped else {}
        self._log.warning("task.missed", task=name, count=count, first=_iso(first), last=_iso(last), **extra)

    def _catch_up(self, claimed: Mapping[str, datetime], now: datetime) -> None:
        """Catch-up policy (a task with catch_up: true, like systemd's Persistent=true): when the newest
        instant any clock claimed for the task is followed by instants before now, none of which any clock
        ran, the task runs once, now, for the newest of them, with trigger catch_up. A task the store has
        never seen is not caught up. The claim is on that instant, so two clocks starting together catch
        up once."""
        due: list[tuple[_TaskState, datetime]] = []
        for name, last in claimed.items():
            state = self._tasks.get(name)
            if state is None or not state.spec.catch_up or not state.spec.enabled:
                continue
            missed = newest_missed(state.spec.schedule, last, now)
            if missed is not None:
                state.last_instant = max(missed, state.last_instant or missed)
                due.append((state, missed))
        if due:
            self._track(self._claim_and_fire(due, "catch_up"))

    def _claim_ahead(self, now: datetime) -> None:
        """Release the claims whose fire has passed unused (a reload changed or removed the task), then
        claim, in one batch, the fires due within CLAIM_AHEAD_S, so that the store's answer is there when
        they are due."""
        assert self._recorder is not None
        now_ts = now.timestamp()
        for key, claim in list(self._claims.items()):
            if claim.due <= now_ts:
                self._release(*key)
        horizon = now_ts + CLAIM_AHEAD_S
        batch: list[_Claim] = []
        while self._claim_heap and self._claim_heap[0].due <= horizon:
            entry = heapq.heappop(self._claim_heap)
            key = (entry.name, entry.instant)
            if not self._is_live(entry) or key in self._claims:
                continue
            # started_at: when it is to start.
            start = datetime.fromtimestamp(max(entry.due, now_ts), UTC)
            record = self._new_record(entry.name, entry.instant, "schedule", start)
            claim = _Claim(record, entry.due, asyncio.get_running_loop().create_future())
            self._claims[key] = claim
            batch.append(claim)
        if batch:
            self._track(self._ask(batch))

    async def _ask(self, batch: list[_Claim]) -> None:
        assert self._recorder is not None
        won: list[bool] | None = None
        try:
            won = await self._recorder.claim([claim.record for claim in batch])
        finally:
            for i, claim in enumerate(batch):
                if not claim.answer.done():
                    claim.answer.set_result(None if won is None else won[i])

    def _fire_claimed(self, state: _TaskState, instant: datetime) -> bool:
        """Fire a due instant by its claim: at once if the answer is in (True if a run started), else
        when it comes. An instant that was not claimed ahead, or whose claim ahead another clock won, is
        claimed (again) now with the rest of the batch: a clock that won it and then stopped before it was
        due gave it back, and this clock runs it instead."""
        claim = self._claims.pop((state.spec.name, instant), None)
        if claim is None or (claim.answer.done() and claim.answer.result() is False):
            self._to_claim.append((state, instant))
        elif claim.answer.done():
            return self._decide(state, instant, "schedule", claim.record, claim.answer.result())
        else:
            self._track(self._fire_when_answered(state, instant, claim))
        return False

    async def _fire_when_answered(self, state: _TaskState, instant: datetime, claim: _Claim) -> None:
        ours = await claim.answer
        if self._tasks.get(state.spec.name) is not state or self._stop_signals:
            if ours:
                self._give_back(claim.record.run_id)
            return
        if ours is False:
            await self._claim_and_fire([(state, instant)], "schedule")
            return
        self._decide(state, instant, "schedule", claim.record, ours, yield_cpu=True)

    def _release(self, name: str, instant: datetime) -> None:
        """Give up a claim made ahead that will not be used; a won one is given back to the store."""
        claim = self._claims.pop((name, instant), None)
        if claim is None:
            return
        run_id = claim.record.run_id

        def when_answered(answer: asyncio.Future[bool | None]) -> None:
            if answer.result():
                self._give_back(run_id)

        if claim.answer.done():
            when_answered(claim.answer)
        else:
            claim.answer.add_done_callback(when_answered)

    def _new_record(self, name: str, instant: datetime, trigger: str, started_at: datetime) -> RunRecord:
        """A run as this clock claims or records it, under a new run id."""
        assert self._recorder is not None
        return RunRecord(
            task=name,
            scheduled_for=instant,
            trigger=trigger,
            run_id=_new_run_id(),
            claimed_by=self._recorder.claimed_by,
            started_at=started_at,
        )

    def _give_back(self, run_id: str) -> None:
        """A won claim whose run will not start (this clock is stopping, or the task was removed): delete
        it, so that another clock, asking again when the instant is due, or a catch-up, can run it."""
        self._recorded.discard(run_id)
        if self._recorder is not None:
            self._recorder.released(run_id)

    async def _claim_and_fire(self, due: list[tuple[_TaskState, datetime]], trigger: str) -> None:
        """Claim instants that were not claimed ahead (a late fire, a catch-up) together, then decide each."""
        assert self._recorder is not None
        now = self._clock.now()
        records = [self._new_record(state.spec.name, instant, trigger, now) for state, instant in due]
        won = await self._recorder.claim(records)
        answers: Sequence[bool | None] = won if won is not None else [None] * len(due)
        last = max((i for i, ours in enumerate(answers) if ours is not False), default=-1)
        started = 0
        for i, ((state, instant), record, ours) in enumerate(zip(due, records, answers, strict=True)):
            if self._stop_signals or self._tasks.get(record.task) is not state:
                # Stopping, or the task was removed by a reload while the claim was out.
                if ours:
                    self._give_back(record.run_id)
                continue
            # As in a batch from the heap: the first and the last start give their child the CPU at once.
            if self._decide(state, instant, trigger, record, ours, yield_cpu=started == 0 or i == last):
                started += 1
                if started % _YIELD_EVERY_FIRES == 0:
                    await asyncio.sleep(0)

    def _decide(
        self,
        state: _TaskState,
        instant: datetime,
        trigger: str,
        record: RunRecord,
        ours: bool | None,
        yield_cpu: bool | None = None,
    ) -> bool:
        """Run a claimed instant or not, by the store's answer; True if a run started.

        Store policy: an instant another clock claimed is skipped here (task.skipped, reason
        claimed_elsewhere, at debug level). When the store is unavailable or did not answer within the
        claim timeout, a task with require_store is skipped (reason store_unavailable) and any other runs
        best-effort: at most once is then not guaranteed, as without a store; its run is recorded when the
        store is back. A clock that stops gives back what it claimed ahead (_give_back); one that dies
        cannot, and those fires do not run: at most once, not exactly once.
        """
        if ours is False:
            self._skipped(record.task, instant, "claimed_elsewhere", self._log.debug)
            return False
        if ours is None:
            if state.spec.require_store:
                self._skipped(record.task, instant, "store_unavailable", self._log.warning)
                return False
            assert self._recorder is not None
            self._recorder.started_unclaimed(record)
        self._recorded.add(record.run_id)
        return self._fire(state, instant, trigger, run_id=record.run_id, yield_cpu=yield_cpu)

    def _end_unrun(self, run_id: str) -> None:
        """A claimed instant that this clock decided not to run (overlap, a failure to start): say so."""
        self._recorded.discard(run_id)
        if self._recorder is not None:
            self._recorder.finished(
                run_id,
                finished_at=self._clock.now(),
                status="skipped",
                exit_code=None,
                signal=None,
                duration_s=None,
                output=None,
            )

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        job = asyncio.create_task(coro)
        self._pending.add(job)
        job.add_done_callback(self._job_done)

    def _skipped(self, name: str, instant: datetime, reason: str, log: Callable[..., Any]) -> None:
        log("task.skipped", task=name, scheduled_for=_iso(instant), reason=reason)
        if self._metrics is not None:
            self._metrics.skipped(name, reason)

    def _fire(
        self,
        state: _TaskState,
        instant: datetime,
        trigger: str,
        run_id: str | None = None,
        yield_cpu: bool | None = None,
        attempt: int = 1,
    ) -> bool:
        """Start a run, subject to the task's overlap policy.

        Overlap policy: `skip` logs `task.skipped` (reason `overlap`) and lets the running one finish;
        `allow` starts another; `replace` stops the running ones as a timeout would (SIGTERM, SIGKILL
        after kill_grace) and starts the new one at once. With several clocks, the policy holds within
        each clock: a run on another clock does not count.
        """
        spec = state.spec
        if state.busy:
            if spec.overlap == "skip":
                self._skipped(spec.name, instant, "overlap", self._log.info)
                if run_id is not None:
                    self._end_unrun(run_id)
                return False
            if spec.overlap == "replace":
                for run in state.runs:
                    if not run.done:
                        run.stop("killed")
        if trigger != "retry" and state.retry is not None:
            self._supersede_retry(state)
        try:
            run = self._start_run(
                spec,
                run_id=run_id or _new_run_id(),
                trigger=trigger,
                scheduled_for=instant,
                log=self._log.bind(attempt=attempt) if spec.retries else self._log,
                env=self._env,
                yield_cpu=self._yield_after_start() if yield_cpu is None else yield_cpu,
            )
        except Exception as exc:  # a bug: the runner turns every failure to start into a failed run
            self._log.error("scheduler.error", task=spec.name, error=f"{type(exc).__name__}: {exc}")
            if run_id is not None:
                self._end_unrun(run_id)
            return False
        state.runs.append(run)
        self._runs.add(run)
        if self._metrics is not None:
            self._metrics.run_started(spec.name)
        if spec.ping_url is not None and self._pinger is not None:
            self._pinger.start(spec.ping_url, run.run_id, timeout_s=spec.ping_timeout_s)
        self._track(self._forget_when_done(state, run, attempt))
        return True

    def _job_done(self, job: asyncio.Task[None]) -> None:
        """Forget a finished run's job; a bug inside it is logged as an event rather than lost."""
        self._pending.discard(job)
        self._log_bug(job)

    def _log_bug(self, job: asyncio.Task[None]) -> None:
        if not job.cancelled() and (exc := job.exception()) is not None:
            self._log.error("scheduler.error", error=f"{type(exc).__name__}: {exc}")

    async def _forget_when_done(self, state: _TaskState, run: Run, attempt: int) -> None:
        try:
            result = await run.wait()
        finally:
            state.runs.remove(run)
            self._runs.discard(run)
        if self._metrics is not None:
            self._metrics.run_finished(run.task.name, result.status, result.duration_s)
        if self._recorder is not None and run.run_id in self._recorded:
            self._recorded.discard(run.run_id)
            output = (run.output_tail or result.error) if run.task.store_output else None
            self._recorder.finished(
                run.run_id,
                finished_at=self._clock.now(),
                status=result.status,
                exit_code=result.exit_code,
                signal=result.signal,
                duration_s=result.duration_s,
                output=output,
            )
        if not self._stop_signals:
            self._after_run(state, run, result, attempt)

    # After a run: retries, pings, hooks

    def _after_run(self, state: _TaskState, run: Run, result: RunResult, attempt: int) -> None:
        """Retry a failed run, or send its final ping and run its hook.

        Retry policy: a run that did not succeed (failed, timed out, killed by `replace`) is run again
        while attempts remain (`retries`), after retry_delay × retry_backoff^(n-1), at most retry_max_delay;
        each attempt is a run of its own with trigger `retry`, under the overlap policy. A scheduled run of
        the task that starts meanwhile ends the retries, and so does shutdown (or removing the task).
        The final ping and on_success / on_failure come once, after the last attempt: not for attempts
        that will be retried, and not during shutdown, when runs are stopped rather than failing.
        """
        spec = run.task
        failed = result.status != "succeeded"
        if failed and attempt <= spec.retries and self._tasks.get(spec.name) is state:
            delay = min(spec.retry_delay_s * spec.retry_backoff ** (attempt - 1), spec.retry_max_delay_s)
            due = self._clock.now().timestamp() + delay
            state.retry = _Retry(due, run.scheduled_for, attempt + 1, run, result)
            heapq.heappush(self._retry_heap, (due, next(self._seq), spec.name))
            self._log.info(
                "task.retrying",
                task=spec.name,
                run_id=run.run_id,
                attempt=attempt + 1,
                delay_s=round(delay, 3),
            )
            self._wake.set()
            return
        self._final(run, result)

    def _final(self, run: Run, result: RunResult) -> None:
        """The end of a run's attempts: the final ping, and on_success or on_failure."""
        spec = run.task
        failed = result.status != "succeeded"
        output = run.output_tail or result.error or ""
        if spec.ping_url is not None and self._pinger is not None:
            self._pinger.finish(
                spec.ping_url,
                run.run_id,
                success=not failed,
                exit_code=result.exit_code,
                use_exit_code=spec.ping_exit_code,
                output=output,
                timeout_s=spec.ping_timeout_s,
            )
        hook = spec.on_failure if failed else spec.on_success
        if hook is not None:
            self._start_hook(run, result, hook, "on_failure" if failed else "on_success", output)

    def _retry_due(self, name: str, now_ts: float) -> None:
        state = self._tasks.get(name)
        retry = state.retry if state is not None else None
        if state is None or retry is None or retry.due > now_ts:
            return  # superseded by a scheduled run, or the task was removed
        state.retry = None
        run_id = None  # _fire makes one, unless the run is recorded under its own
        if self._recorder is not None:
            record = self._new_record(name, retry.instant, "retry", self._clock.now())
            run_id = record.run_id
            self._recorder.started_unclaimed(record)
            self._recorded.add(run_id)
        if not self._fire(
            state, retry.instant, "retry", run_id=run_id, yield_cpu=True, attempt=retry.attempt
        ):
            # Skipped for overlap (or a bug): the retries end here, as failed.
            self._final(retry.failed, retry.result)

    def _supersede_retry(self, state: _TaskState) -> None:
        """A scheduled run starts while a retry waits: the retries end, and the failure is reported."""
        retry, state.retry = state.retry, None
        if retry is not None:
            self._log.info("task.retry_cancelled", task=state.spec.name, run_id=retry.failed.run_id)
            self._final(retry.failed, retry.result)

    def _start_hook(
        self, run: Run, result: RunResult, hook: str | tuple[str, ...], which: str, output: str
    ) -> None:
        """Start on_success or on_failure (see hooks.py), tracked like a run so that a shutdown stops it. A
        hook's failure is logged as hook.failed, never retried, and never fails the task."""
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
            )
        except Exception as exc:  # a bug: the runner turns every failure to start into a failed run
            hooks.cleanup(path)
            self._log.error("scheduler.error", task=spec.name, error=f"{type(exc).__name__}: {exc}")
            return
        self._runs.add(hook_run)
        self._track(self._after_hook(hook_run, which, path))

    async def _after_hook(self, hook_run: Run, which: str, path: str) -> None:
        try:
            result = await hook_run.wait()
        finally:
            self._runs.discard(hook_run)
            hooks.cleanup(path)
        if result.status != "succeeded":
            self._log.warning(
                "hook.failed",
                task=hook_run.task.name,
                run_id=hook_run.run_id,
                hook=which,
                status=result.status,
                exit_code=result.exit_code,
                signal=result.signal,
                **({"error": result.error} if result.error else {}),
            )

    # Reload

    def _start_refresh(self, trigger: str) -> None:
        job = asyncio.create_task(self._refresh(trigger))
        self._refresh_job = job
        job.add_done_callback(self._refresh_done)

    def _refresh_done(self, job: asyncio.Task[None]) -> None:
        self._refresh_job = None
        self._log_bug(job)

    async def _refresh(self, trigger: str) -> None:
        """Reload the config if asked to (SIGHUP) or if the file's content changed.

        Reading, parsing and comparing run off the loop (through run_blocking, a thread; `scheduler run`
        parses in a forked child too), so that fires stay on time while a large file is reloaded; only
        the changes are applied on the loop.
        """
        if self._reload_config is None:
            return
        if trigger == "file" and not (self._watcher and await self._run_blocking(self._watcher.changed)):
            return
        current = {name: state.spec for name, state in self._tasks.items()}
        reload_config = self._reload_config
        try:
            new, diff = await self._run_blocking(lambda: _diff(current, reload_config()))
        except ConfigError as exc:
            self._log.error("config.invalid", error=str(exc), trigger=trigger)
            if self._metrics is not None:
                self._metrics.config_reloaded("failure")
            return
        if self._stop_signals:
            return
        self._apply(new, diff, trigger)
        await self._run_blocking(_trim_memory)

    def _apply(self, new: Config, diff: _Diff, trigger: str) -> None:
        """Swap in a new, valid config.

        Reload policy: unchanged tasks keep their queued fire; changed and added tasks are scheduled from
        now (never re-firing an instant already fired); running runs are never interrupted.
        """
        now = self._clock.now()
        tasks = self._tasks
        for name in diff.removed:
            tasks.pop(name).generation += 1
            if self._metrics is not None:
                self._metrics.forget_task(name)
        for name in diff.changed:
            state = tasks[name]
            state.spec = new.tasks[name]
            state.generation += 1
            self._schedule(state, now)
            if self._metrics is not None and not state.spec.enabled:
                self._metrics.next_fire(name, None)
        for name in diff.added:
            tasks[name] = state = _TaskState(new.tasks[name])
            self._schedule(state, now)
        self.config = new
        if self._metrics is not None:
            self._metrics.config_reloaded("success")
        # Entries of removed or rescheduled tasks are skipped lazily; rebuild when they dominate the heap.
        if len(self._heap) > 2 * len(tasks) + 64:
            self._heap = [e for e in self._heap if self._is_live(e)]
            heapq.heapify(self._heap)
        if len(self._claim_heap) > 2 * len(tasks) + 64:
            self._claim_heap = [e for e in self._claim_heap if self._is_live(e)]
            heapq.heapify(self._claim_heap)
        gc.freeze()
        self._log.info(
            "config.reloaded", added=diff.added, removed=diff.removed, changed=diff.changed, trigger=trigger
        )

    def _is_live(self, entry: _Entry) -> bool:
        state = self._tasks.get(entry.name)
        return state is not None and state.generation == entry.generation

    # Shutdown

    async def _shutdown(self) -> None:
        """Stop within the grace: start nothing new, SIGTERM every run, SIGKILL what is left.

        Shutdown policy: the first SIGTERM or SIGINT starts it; repeated SIGTERMs (Heroku sends them to
        every process, maybe more than once) do not cut the grace short; a second SIGINT (Ctrl-C twice)
        does, and kills what is left at once.
        """
        if self._refresh_job is not None:
            self._refresh_job.cancel()  # a reload still parsing in its thread is dropped
        for key in list(self._claims):
            self._release(*key)
        first = self._stop_signals[0]
        self._log.info("scheduler.stopping", signal=first, running=len(self.running_runs))
        deadline = asyncio.get_running_loop().time() + self._shutdown_grace_s
        for run in self.running_runs:
            run.stop("killed", kill_grace_s=min(run.task.kill_grace_s, self._shutdown_grace_s))
        seen = len(self._stop_signals)
        while self._pending or self.running_runs:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            jobs: set[asyncio.Future[Any]] = {waiter, *self._pending}
            await asyncio.wait(jobs, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            new_signals = self._stop_signals[seen:]
            seen = len(self._stop_signals)
            if "SIGINT" in new_signals:
                break
        for run in self.running_runs:
            run.kill()
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=_REAP_WAIT_S)
        if self._recorder is not None:
            await self._recorder.close()
        self._log.info("scheduler.stopped")


@dataclass(frozen=True, slots=True)
class _Diff:
    added: list[str]
    removed: list[str]
    changed: list[str]


def _diff(current: Mapping[str, TaskSpec], new: Config) -> tuple[Config, _Diff]:
    """What a reload changes: names added, removed, and changed (any setting differs)."""
    added = sorted(set(new.tasks) - set(current))
    removed = sorted(set(current) - set(new.tasks))
    changed = sorted(n for n in set(new.tasks) & set(current) if new.tasks[n] != current[n])
    return new, _Diff(added, removed, changed)


async def _run_in_thread(func: Callable[[], _T]) -> _T:
    """Run blocking work (reading and parsing the config) in a thread. While it runs, the interpreter
    switches threads every millisecond instead of every five, so the loop gets the GIL back promptly
    when a fire is due."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, _SWITCH_INTERVAL_S))
    try:
        return await asyncio.to_thread(func)
    finally:
        sys.setswitchinterval(previous)


def _trim_memory() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


def _settle_memory() -> None:
    """After the first load (a reload does the same in two steps, freezing on the loop and trimming off
    it): move the config's long-lived objects out of the cycle collector's sight (with
    100,000 tasks a full collection would otherwise stall the loop, and every fire, for tens of ms), and
    hand the memory the YAML parse used back to the system (glibc keeps freed memory otherwise)."""
    gc.freeze()  # the parse leaves no cyclic garbage (config.py builds none): no collection needed first
    _trim_memory()


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to trim
    return trim


_malloc_trim = _load_malloc_trim()


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def newest_missed(schedule: Schedule, last: datetime, now: datetime) -> datetime | None:
    """The newest instant of `schedule` after `last` and no later than `now`, or None if there is none.

    The search starts a second before now and looks twice as far back each time, so a clock that was down
    for a year costs a few dozen next_fire calls, not one per missed instant."""
    if schedule.next_fire(last).at > now:
        return None
    back = 1.0
    while True:
        start = max(last, now - timedelta(seconds=back))
        found = schedule.next_fire(start).at
        if found <= now:
            break
        back *= 2
    while (following := schedule.next_fire(found).at) <= now:
        found = following
    return found
