"""The clock loop: which task is due next, sleep toward it, dispatch, reload, shut down.

One asyncio loop holds every task's next fire in a heap; it sleeps toward the earliest in bounded steps
and re-reads the wall clock after each, so a suspend or a clock step is noticed within a step. The loop only
wires the policies that live in modules of their own: claims.py decides whether a due instant runs (the
store), followups.py what follows a run (retries, pings, hooks), runner.py starts processes, and the pure
core (config.py, schedule.py) says what fires when.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import heapq
import itertools
import random
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from structlog.typing import FilteringBoundLogger

from scheduler import __version__
from scheduler.claims import YIELD_EVERY_FIRES, Claims, Gate, Ledger, Unclaimed
from scheduler.config import Config, TaskSpec
from scheduler.control import Control, ControlLedger, NoControl
from scheduler.followups import FollowUps, StartRun
from scheduler.loader import Loaded
from scheduler.observe import NO_METRICS, NO_NOTIFY, NO_PINGS, MetricsSink, NotifySink, PingSink
from scheduler.runs import iso_utc, new_run_id
from scheduler.state import Fire, LogMethod, TaskState

if TYPE_CHECKING:
    from scheduler.recorder import History
    from scheduler.runner import Run, RunResult

__all__ = ["ClockLoop", "StartRun", "SystemTime", "TimeSource"]

_T = TypeVar("_T")

# The longest the loop sleeps before re-reading the wall clock and polling the config file.
MAX_SLEEP_S = 1.0
# The last stretch before a fire is slept with a blocking, nanosecond-precise sleep.
PRECISE_SLEEP_S = 0.002
DEFAULT_SHUTDOWN_GRACE_S = 25.0
# Counting the instants missed during a long pause stops here; the event then says `count_capped`.
MISSED_COUNT_CAP = 100_000
# A schedule's instants are whole seconds: two are never closer than this.
_MIN_SPACING_S = 1.0
# While the config is parsed in a thread, the loop thread waits at most this long for the GIL.
_SWITCH_INTERVAL_S = 0.001
# After the final SIGKILL, how long shutdown waits for the runs to be reaped.
_REAP_WAIT_S = 5.0


class TimeSource(Protocol):
    """Where the loop gets the time and how it waits; tests pass a fake one."""

    def now(self) -> datetime:
        """Aware UTC wall-clock time."""

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        """Wait `seconds`, or less if `wake` is set."""


class SystemTime:
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
    """Tells the loop when the config file may have changed (watch.FileWatcher)."""

    def touched(self) -> bool:
        """Cheap enough for the loop (one stat): may the file have changed?"""


class ClockLoop:
    """Fires the tasks of a Config until asked to stop."""

    def __init__(
        self,
        config: Config,
        *,
        start_run: StartRun,
        log: FilteringBoundLogger,
        env: Mapping[str, str],
        time_source: TimeSource | None = None,
        load: Callable[[], Awaitable[Loaded]] | None = None,
        watcher: ConfigWatcher | None = None,
        on_tick: Callable[[], None] | None = None,
        shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S,
        rng: random.Random | None = None,
        run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
        recorder: Ledger | None = None,
        metrics: MetricsSink = NO_METRICS,
        pinger: PingSink = NO_PINGS,
        notifier: NotifySink = NO_NOTIFY,
        control: ControlLedger | None = None,
    ) -> None:
        self.config = config
        self._start_run = start_run
        self._log = log
        self._env = env
        self._time = time_source or SystemTime()
        self._load = load
        self._digest: str | None = config.digest
        self._watcher = watcher
        self._on_tick = on_tick
        self._shutdown_grace_s = shutdown_grace_s
        self._rng = rng or random.Random()
        self._run_blocking = run_blocking or _run_in_thread
        self._metrics = metrics
        self._pinger = pinger
        self._notifier = notifier
        self._tasks: dict[str, TaskState] = {}
        self._heap: list[Fire] = []
        self._seq = itertools.count()
        self._runs: set[Run] = set()
        self._pending: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stop_signals: list[str] = []
        self._reload_requested = False
        self._refresh_job: asyncio.Task[None] | None = None
        self._dispatch_ts = 0.0
        self._batch_fired = 0
        self._claims: Claims | None = None
        self._gate: Gate
        if recorder is not None:
            self._gate = self._claims = Claims(
                recorder, self, debug=log.debug, info=log.info, warn=log.warning
            )
        else:
            self._gate = Unclaimed(self)
        self._followups = FollowUps(
            self,
            tasks=self._tasks,
            start_run=start_run,
            runs=self._runs,
            env=env,
            log=log,
            pinger=pinger,
            unclaimed=self._gate.unclaimed,
            wake=self._wake.set,
        )
        self._control: Control | NoControl = NoControl()
        if control is not None:
            # config.tasks, not self._tasks: the poll reads it on the store's thread, and a reload replaces
            # the config whole rather than changing it.
            self._control = Control(
                control, self, tasks=lambda: self.config.tasks, unclaimed=self._gate.unclaimed, log=log
            )

    # Requests from signal handlers (or tests): they only record and wake the loop.

    def request_stop(self, signame: str = "SIGTERM") -> None:
        self._stop_signals.append(signame)
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def stop_replaced(self, run_ids: Sequence[str]) -> None:
        """Another clock started a run of an `overlap: replace` task: stop these runs of ours, as replace
        does within one clock."""
        wanted = set(run_ids)
        for run in self.running_runs:
            if run.run_id in wanted:
                self._log.info("task.replaced", task=run.task.name, run_id=run.run_id)
                run.stop("killed")

    @property
    def running_runs(self) -> set[Run]:
        return {run for run in self._runs if not run.done}

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop, SIGHUP reloads; the handlers only record the request."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def ignore_late_signals(self) -> None:
        """Once the shutdown is over, what is left before exit is bounded (flushes): a SIGTERM, SIGINT or
        SIGHUP now (Heroku sends SIGTERM more than once) is ignored, rather than killing the process before
        `scheduler.stopped` or printing a KeyboardInterrupt. Removing asyncio's handlers first keeps the
        loop's close from putting the default actions back."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)

    async def run(self) -> None:
        """Fire tasks until a stop is requested, then shut down within the grace."""
        now = self._time.now()
        for spec in self.config.tasks.values():
            self._tasks[spec.name] = TaskState(spec)
        history = await self._gate.open(now, self._tasks)
        if history is not None:
            self._control.seed(history.overrides)
        now = self._time.now()
        for state in self._tasks.values():
            self._schedule(state, now)
        _settle_memory()
        self._log.info(
            "scheduler.started", tasks=len(self._tasks), config=self.config.path, version=__version__
        )
        if history is not None:
            self._seed_metrics(history)
        self._notifier.ready(f"{_count(len(self._tasks), 'task')} from {self.config.path}")
        last_poll = now
        while not self._stop_signals:
            now = self._time.now()
            self._metrics.heartbeat()
            self._notifier.heartbeat()  # from the loop itself: a stuck loop stops systemd's keep-alives
            await self._dispatch_due(now)
            if self._stop_signals:
                break
            self._gate.ahead(now)
            if self._reload_requested and self._refresh_job is None:
                self._reload_requested = False
                self._start_refresh("signal")
            if abs((now - last_poll).total_seconds()) >= MAX_SLEEP_S:
                last_poll = now
                if self._watcher is not None and self._refresh_job is None and self._watcher.touched():
                    self._start_refresh("file")
                if self._on_tick is not None:
                    self._on_tick()
                self._control.tick()
            current = self._time.now().timestamp()
            # Wake for the next fire, claim or retry, or for the next poll of the config file.
            delay = MAX_SLEEP_S - abs(current - last_poll.timestamp())
            for wake_at in (
                self._heap[0].due if self._heap else None,
                self._gate.wake_at(),
                self._followups.wake_at(),
            ):
                if wake_at is not None:
                    delay = min(delay, wake_at - current)
            keepalive = self._notifier.due_in()
            if keepalive is not None:
                delay = min(delay, keepalive)
            if delay > 0:
                await self._time.sleep(delay, self._wake)
            self._wake.clear()
        await self._shutdown()

    def _seed_metrics(self, history: History) -> None:
        for name in self._tasks:
            last_run, last_success = history.last_run.get(name), history.last_success.get(name)
            self._metrics.seed(
                name,
                last_run=last_run.timestamp() if last_run else None,
                last_success=last_success.timestamp() if last_success else None,
            )

    # What the gate and the follow-ups ask of the loop (claims.Host)

    @property
    def stopping(self) -> bool:
        return bool(self._stop_signals)

    def now(self) -> datetime:
        return self._time.now()

    def task(self, name: str) -> TaskState | None:
        return self._tasks.get(name)

    def is_current(self, state: TaskState) -> bool:
        return self._tasks.get(state.spec.name) is state

    def is_live(self, fire: Fire) -> bool:
        state = self._tasks.get(fire.name)
        return state is not None and state.generation == fire.generation

    def paused(self, name: str, at: datetime) -> bool:
        return self._control.paused(name, at)

    def skipped(self, name: str, instant: datetime, reason: str, log: LogMethod, **fields: Any) -> None:
        log("task.skipped", task=name, scheduled_for=iso_utc(instant), reason=reason, **fields)
        self._metrics.skipped(name, reason)

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        job = asyncio.create_task(coro)
        self._pending.add(job)
        job.add_done_callback(self._job_done)

    def start(
        self,
        state: TaskState,
        instant: datetime,
        trigger: str,
        *,
        run_id: str | None = None,
        yield_cpu: bool | None = None,
        attempt: int = 1,
        requested_by: str | None = None,
    ) -> bool:
        """Start a run, subject to the task's overlap policy.

        Overlap policy: `skip` logs `task.skipped` (reason `overlap`) and lets the running one finish;
        `allow` starts another; `replace` stops the running ones as a timeout would (SIGTERM, SIGKILL
        after kill_grace) and starts the new one at once. Across clocks sharing a store, the claim applies
        the same policies (Claims._decide), and stop_replaced stops this clock's run that another replaced.
        A manual run (a run request, see Control._start) starts whatever the policy, as run-now does.
        """
        spec = state.spec
        if state.busy and trigger != "manual":
            if spec.overlap == "skip":
                self.skipped(spec.name, instant, "overlap", self._log.info)
                if run_id is not None:
                    self._gate.not_run(run_id)
                return False
            if spec.overlap == "replace":
                for run in state.runs:
                    if not run.done:
                        run.stop("killed")
        if trigger != "retry" and state.retry is not None:
            self._followups.supersede(state)
        try:
            run = self._start_run(
                spec,
                run_id=run_id or new_run_id(),
                trigger=trigger,
                scheduled_for=instant,
                log=self._run_log(spec, attempt, requested_by),
                env=self._env,
                yield_cpu=self._yield_after_start() if yield_cpu is None else yield_cpu,
            )
        except Exception as exc:  # a bug: the runner turns every failure to start into a failed run
            self._log.error("scheduler.error", task=spec.name, error=f"{type(exc).__name__}: {exc}")
            if run_id is not None:
                self._gate.not_run(run_id)
            return False
        state.runs.append(run)
        self._runs.add(run)
        self._metrics.run_started(spec.name)
        if spec.ping_url is not None:
            self._pinger.start(spec.ping_url, run.run_id, task=spec.name, timeout_s=spec.ping_timeout_s)
        # A callback, not a task per run: a burst of starts creates nothing more on the way to its spawns.
        run.when_done(functools.partial(self._run_ended, state, run, attempt))
        return True

    def _run_log(self, spec: TaskSpec, attempt: int, requested_by: str | None) -> FilteringBoundLogger:
        """The logger of a run's events: with its attempt when the task retries, and with who asked for it
        when it was requested (task.started then names them)."""
        log = self._log.bind(attempt=attempt) if spec.retries else self._log
        return log if requested_by is None else log.bind(requested_by=requested_by)

    # Scheduling

    def _schedule(self, state: TaskState, now: datetime) -> None:
        """Queue the task's next fire after `now` and after anything it already fired."""
        spec = state.spec
        if not spec.enabled:
            return
        after = now if state.last_instant is None else max(now, state.last_instant)
        self._push(state, spec.schedule.next_fire(after).at)

    def _push(self, state: TaskState, instant: datetime) -> None:
        jitter = self._rng.uniform(0, state.spec.jitter_s) if state.spec.jitter_s > 0 else 0.0
        fire = Fire(instant.timestamp() + jitter, next(self._seq), state.spec.name, instant, state.generation)
        heapq.heappush(self._heap, fire)
        self._gate.queued(fire)
        self._metrics.next_fire(fire.name, instant.timestamp())

    async def _dispatch_due(self, now: datetime) -> None:
        now_ts = self._dispatch_ts = now.timestamp()
        self._batch_fired = 0
        heap = self._heap
        # A burst of starts allocates a few objects per run: the cycle collector waits until they are all
        # spawned (a generation-1 pass took 3 ms here, in the middle of a burst).
        collecting = len(heap) > 1 and heap[1].due <= now_ts and gc.isenabled()
        if collecting:
            gc.disable()
        try:
            # self._heap, not `heap`: a reload applied while the loop yields may rebuild it.
            while self._heap and self._heap[0].due <= now_ts and not self._stop_signals:
                fire = heapq.heappop(self._heap)
                state = self._tasks.get(fire.name)
                if state is None or state.generation != fire.generation:
                    continue  # the task was removed or rescheduled by a reload
                if self._fire_due(state, fire, now):
                    self._batch_fired += 1
                    if self._batch_fired % YIELD_EVERY_FIRES == 0:
                        await asyncio.sleep(0)  # with many tasks due at once, let the runs' I/O flow too
        finally:
            if collecting:
                gc.enable()
        self._gate.end_of_batch()
        self._followups.due(now_ts)

    def _yield_after_start(self) -> bool:
        """Whether the run about to start should give its child the CPU at once: the first of a batch of
        due runs (so that it starts on time) and the last (so that they all get going); not those in
        between, so that a burst is spawned without pausing for each child."""
        more_due = bool(self._heap) and self._heap[0].due <= self._dispatch_ts
        return self._batch_fired == 0 or not more_due

    def _fire_due(self, state: TaskState, fire: Fire, now: datetime) -> bool:
        """Run a due instant, or account for it as missed.

        Misfire policy: every instant the task missed (suspend, overload, a forward clock step) collapses
        into one run at the newest of them, if that one is no older than the task's grace; otherwise they
        are all skipped. Either way the skipped ones are logged as one `task.missed` event with their
        count, and none of them is ever run later: no storm of runs after a long pause.
        """
        spec = state.spec
        first = fire.instant
        now_ts = now.timestamp()
        if now_ts - first.timestamp() < _MIN_SPACING_S and now_ts - fire.due <= spec.grace_s:
            # On time, the common case: no other instant can have passed (a schedule's instants are at
            # least a second apart), so the run starts first and the next fire is worked out after it.
            state.last_instant = first
            started = self._fire(state, first)
            self._push(state, spec.schedule.next_fire(first).at)
            return started
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
        late_s = now.timestamp() - (fire.due if count == 1 else newest.timestamp())
        state.last_instant = newest if not capped else now
        self._push(state, upcoming)
        if count > 1:
            self._gate.missed(spec.name, first)
        if late_s <= spec.grace_s and not capped:
            if count > 1:
                self._missed(spec.name, count - 1, first, previous or first, capped=False)
            return self._fire(state, newest)
        self._missed(spec.name, count, first, newest, capped=capped)
        return False

    def _fire(self, state: TaskState, instant: datetime) -> bool:
        """Hand a due instant to the gate, unless a pause holds it back (Control.paused): then it is skipped
        (task.skipped, reason paused) and the gate lets go of it."""
        if self._control.paused(state.spec.name, instant):
            self.skipped(state.spec.name, instant, "paused", self._log.info)
            self._gate.held(state, instant)
            return False
        return self._gate.fire(state, instant)

    def _missed(self, name: str, count: int, first: datetime, last: datetime, *, capped: bool) -> None:
        self._metrics.missed(name, count)
        extra: dict[str, Any] = {"count_capped": True} if capped else {}
        self._log.warning(
            "task.missed", task=name, count=count, first=iso_utc(first), last=iso_utc(last), **extra
        )

    def _job_done(self, job: asyncio.Task[None]) -> None:
        """Forget a finished run's job; a bug inside it is logged as an event rather than lost."""
        self._pending.discard(job)
        self._log_bug(job)

    def _log_bug(self, job: asyncio.Task[None]) -> None:
        if not job.cancelled() and (exc := job.exception()) is not None:
            self._log.error("scheduler.error", error=f"{type(exc).__name__}: {exc}")

    def _run_ended(self, state: TaskState, run: Run, attempt: int, result: RunResult) -> None:
        """A run has finished (its task.finished is logged): forget it, record it, and follow it up."""
        try:
            state.runs.remove(run)
            self._runs.discard(run)
            self._metrics.run_finished(run.task.name, result.status, result.duration_s)
            self._gate.finished(run, result)
            if not self._stop_signals:
                self._followups.run_ended(state, run, result, attempt)
        except Exception as exc:  # a bug: an event, not a traceback from the loop's callback
            self._log.error("scheduler.error", task=run.task.name, error=f"{type(exc).__name__}: {exc}")
        finally:
            if self._stop_signals:
                self._wake.set()  # the shutdown waits for the runs to end

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

        The file is read, hashed and parsed in a forked child (loader.load_isolated): never on the loop,
        never in the clock's memory, and a stop cancels it (the child is killed). A file whose digest is
        the one running is left alone when the trigger is a change on disk (a `touch`); SIGHUP always
        applies. Comparing with the running tasks runs off the loop; only the changes are applied on it.
        """
        if self._load is None:
            return
        loaded = await self._load()
        if trigger == "file" and loaded.digest == self._digest:
            return
        self._digest = loaded.digest
        if loaded.config is None:
            self._log.error("config.invalid", error="\n".join(loaded.problems), trigger=trigger)
            self._metrics.config_reloaded("failure")
            return
        current = {name: state.spec for name, state in self._tasks.items()}
        new = loaded.config
        diff = await self._run_blocking(lambda: _diff(current, new))
        if self._stop_signals:
            return
        self._apply(new, diff, trigger)
        await self._run_blocking(_trim_memory)

    def _apply(self, new: Config, diff: _Diff, trigger: str) -> None:
        """Swap in a new, valid config.

        Reload policy: unchanged tasks keep their queued fire; changed and added tasks are scheduled from
        now (never re-firing an instant already fired); running runs are never interrupted.
        """
        now = self._time.now()
        tasks = self._tasks
        for name in diff.removed:
            tasks.pop(name).generation += 1
            self._metrics.forget_task(name)
        for name in diff.changed:
            state = tasks[name]
            state.spec = new.tasks[name]
            state.generation += 1
            self._schedule(state, now)
            if not state.spec.enabled:
                self._metrics.next_fire(name, None)
        for name in diff.added:
            tasks[name] = state = TaskState(new.tasks[name])
            self._schedule(state, now)
        self.config = new
        self._gate.config_changed(new.digest)
        self._metrics.config_reloaded("success")
        # Entries of removed or rescheduled tasks are skipped lazily; rebuild when they dominate the heap.
        if len(self._heap) > 2 * len(tasks) + 64:
            self._heap = [fire for fire in self._heap if self.is_live(fire)]
            heapq.heapify(self._heap)
        if self._claims is not None and self._claims.queued_count > 2 * len(tasks) + 64:
            self._claims.compact()
        gc.freeze()
        self._log.info(
            "config.reloaded", added=diff.added, removed=diff.removed, changed=diff.changed, trigger=trigger
        )

    # Shutdown

    async def _shutdown(self) -> None:
        """Stop within the grace: start nothing new, SIGTERM every run, SIGKILL what is left.

        Shutdown policy: the first SIGTERM or SIGINT starts it; repeated SIGTERMs (Heroku sends them to
        every process, maybe more than once) do not cut the grace short; a second SIGINT (Ctrl-C twice)
        does, and kills what is left at once. Nothing else is waited for without a bound: a reload still
        parsing is cancelled (its child is killed), the store's queued writes get recorder.FLUSH_TIMEOUT_S.
        The caller logs `scheduler.stopped` once the rest (pings, the log) is flushed, just before exit.
        """
        if self._refresh_job is not None:
            self._refresh_job.cancel()
        self._gate.stop()
        first = self._stop_signals[0]
        self._log.info("scheduler.stopping", signal=first, running=len(self.running_runs))
        self._notifier.stopping(f"stopping on {first}, {_count(len(self.running_runs), 'run')} to end")
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
        reaped = {asyncio.ensure_future(run.wait()) for run in self.running_runs}
        if reaped or self._pending:
            await asyncio.wait({*reaped, *self._pending}, timeout=_REAP_WAIT_S)
        for still in reaped:
            still.cancel()
        await self._gate.close()


@dataclass(frozen=True, slots=True)
class _Diff:
    added: list[str]
    removed: list[str]
    changed: list[str]


def _diff(current: Mapping[str, TaskSpec], new: Config) -> _Diff:
    """What a reload changes: names added, removed, and changed (any setting differs)."""
    added = sorted(set(new.tasks) - set(current))
    removed = sorted(set(current) - set(new.tasks))
    changed = sorted(n for n in set(new.tasks) & set(current) if new.tasks[n] != current[n])
    return _Diff(added, removed, changed)


async def _run_in_thread(func: Callable[[], _T]) -> _T:
    """Run blocking work (comparing a reloaded config with the running one, trimming memory) in a daemon
    thread of its own. Not asyncio's default executor: asyncio.run joins its threads at exit, so a stop would
    wait for the work. While it runs, the interpreter switches threads every millisecond instead of every
    five, so the loop gets the GIL back promptly when a fire is due."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        result: _T | None = None
        error: BaseException | None = None
        try:
            result = func()
        except BaseException as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, _SWITCH_INTERVAL_S))
    try:
        threading.Thread(target=work, name="blocking", daemon=True).start()
        return await future
    finally:
        sys.setswitchinterval(previous)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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
