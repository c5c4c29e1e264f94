"""Tests for scheduler.clock with a fake wall clock and fake runs: no processes, no real sleeping."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import Awaitable, Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog
from structlog.testing import capture_logs

from scheduler.clock import ClockLoop
from scheduler.config import Config, TaskSpec
from scheduler.control import ControlLedger
from scheduler.errors import ConfigError
from scheduler.loader import Loaded
from scheduler.observe import NO_METRICS, NO_NOTIFY, NO_PINGS
from scheduler.recorder import History
from scheduler.runner import RunResult
from scheduler.schedule import parse
from scheduler.store import Claim, Override, Poll, RunRecord, RunRequest

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def task(name: str, schedule: str, **kwargs: Any) -> TaskSpec:
    zone = ZoneInfo("UTC")
    return TaskSpec(
        name=name, schedule=parse(schedule, name=name, zone=zone), command="true", timezone="UTC", **kwargs
    )


def config(*tasks: TaskSpec) -> Config:
    return Config(path="schedules.yaml", timezone="UTC", tasks={t.name: t for t in tasks})


@dataclass(eq=False)
class FakeRun:
    task: TaskSpec
    scheduled_for: datetime
    trigger: str
    started: datetime
    ends: datetime | None  # None: runs until stopped
    run_id: str = ""
    output_tail: str = "out"
    status: str = "succeeded"
    seen_output_file: str | None = None  # a hook's SCHEDULER_OUTPUT_FILE content, read at its start
    ignores_term: bool = False
    log: Any = None  # the logger the run's events go to
    stopped_with: str | None = None
    killed: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    def when_done(self, callback: Callable[[RunResult], None]) -> None:
        async def waiter() -> None:
            callback(await self.wait())

        self.waiters.add(asyncio.get_running_loop().create_task(waiter()))

    async def wait(self) -> RunResult:
        await self.finished.wait()
        status = self.stopped_with or self.status
        return RunResult(status, 0 if status == "succeeded" else 1, None, 0.5)  # type: ignore[arg-type]

    def stop(self, status: str = "killed", kill_grace_s: float | None = None) -> None:
        self.stopped_with = status
        if not self.ignores_term:
            self.finished.set()

    def kill(self) -> None:
        self.killed = True
        self.finished.set()


class FakeWatcher:
    """A config file that may have changed at every poll (the loaded digest decides whether it did)."""

    def touched(self) -> bool:
        return True


class FakeLoader:
    """The loop's `load`: what `make` returns, loaded under the digests given in turn (else a new one each
    time); a ConfigError from `make` comes back as an invalid file."""

    def __init__(self, make: Callable[[], Config], digests: Iterator[str] | None = None) -> None:
        self.make = make
        self.digests = digests
        self.count = 0

    async def __call__(self) -> Loaded:
        self.count += 1
        digest = next(self.digests) if self.digests is not None else f"v{self.count}"
        try:
            return Loaded(digest, self.make())
        except ConfigError as exc:
            return Loaded(digest, None, tuple(exc.problems))


class FakeTime:
    """Moves time only when the loop sleeps; runs scripted actions at their instants."""

    def __init__(self, start: datetime, until: datetime) -> None:
        self.t = start
        self.until = until
        self.actions: list[tuple[datetime, Callable[[], object]]] = []
        self.runs: list[FakeRun] = []
        self.durations: dict[str, float | None] = {}
        self.statuses: dict[str, list[str]] = {}  # per task, the status of each run in turn (then success)
        self.hooks: list[FakeRun] = []
        self.yields: list[bool] = []
        self.clock: ClockLoop | None = None

    def now(self) -> datetime:
        return self.t

    def reload(self) -> None:
        """SIGHUP, as an action."""
        if self.clock is not None:
            self.clock.request_reload()

    def at(self, when: datetime, action: Callable[[], object]) -> None:
        self.actions.append((when, action))
        self.actions.sort(key=lambda a: a[0])

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        for _ in range(3):
            await asyncio.sleep(0)  # let started runs register
        target = self.t + max(timedelta(seconds=seconds), timedelta(microseconds=1))
        if self.actions and self.actions[0][0] <= target:
            when, action = self.actions.pop(0)
            self.t = max(self.t, when)
            action()
        else:
            self.t = target
        for run in [*self.runs, *self.hooks]:
            if run.ends is not None and run.ends <= self.t:
                run.finished.set()
        if self.t >= self.until and self.clock is not None:
            self.clock.request_stop("SIGTERM")

    def step_to(self, when: datetime) -> Callable[[], None]:
        def action() -> None:
            self.t = when

        return action

    def start_run(
        self,
        spec: TaskSpec,
        *,
        run_id: str,
        trigger: str,
        scheduled_for: datetime,
        log: Any,
        env: Mapping[str, str],
        yield_cpu: bool,
        kind: str = "task",
    ) -> FakeRun:
        self.yields.append(yield_cpu)
        duration = self.durations.get(spec.name, 0.5)
        ends = None if duration is None else self.t + timedelta(seconds=duration)
        run = FakeRun(spec, scheduled_for, trigger, self.t, ends, run_id=run_id, log=log)
        if kind == "hook":
            with open(spec.env["SCHEDULER_OUTPUT_FILE"]) as f:
                run.seen_output_file = f.read()
            self.hooks.append(run)
            return run
        statuses = self.statuses.get(spec.name)
        if statuses:
            run.status = statuses.pop(0)
        self.runs.append(run)
        return run


async def inline(func: Callable[[], Any]) -> Any:
    """Run the clock's blocking work (config reloads) at once, so fake time decides when it lands."""
    return func()


def drive(
    cfg: Config,
    fake: FakeTime,
    *,
    reload_config: Callable[[], Config] | None = None,
    load: Callable[[], Awaitable[Loaded]] | None = None,
    watcher: Any = None,
    recorder: Any = None,
    metrics: Any = None,
    pinger: Any = None,
    notifier: Any = None,
    control: ControlLedger | None = None,
) -> list[dict[str, Any]]:
    """Run the clock on the fake until `fake.until`; return the logged events."""

    async def main() -> None:
        clock = ClockLoop(
            cfg,
            start_run=fake.start_run,  # type: ignore[arg-type]
            log=structlog.get_logger(),
            env={},
            time_source=fake,
            load=load or (FakeLoader(reload_config) if reload_config is not None else None),
            watcher=watcher,
            rng=random.Random(7),
            shutdown_grace_s=5,
            run_blocking=inline,
            recorder=recorder,
            metrics=metrics or NO_METRICS,
            pinger=pinger or NO_PINGS,
            notifier=notifier or NO_NOTIFY,
            control=control,
        )
        fake.clock = clock
        await clock.run()

    with capture_logs() as logs:
        asyncio.run(main())
    return [dict(e) for e in logs]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def ran(fake: FakeTime) -> set[str]:
    return {r.run_id for r in fake.runs}


def fired(fake: FakeTime, name: str | None = None) -> list[datetime]:
    return [r.scheduled_for for r in fake.runs if name is None or r.task.name == name]


class TestFiring:
    def test_per_second_each_instant_once(self) -> None:
        """A per-second task fires at every second, once, at that second."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=10, milliseconds=500))
        logs = drive(config(task("tick", "* * * * * *", overlap="allow")), fake)
        assert [T0 + timedelta(seconds=s) for s in range(1, 11)] == fired(fake)
        assert all(r.started == r.scheduled_for for r in fake.runs)
        assert ["scheduler.started", "scheduler.stopping"] == [
            e["event"] for e in logs if e["event"].startswith("scheduler.")
        ]
        assert 1 == events(logs, "scheduler.started")[0]["tasks"]

    def test_only_the_first_and_last_of_a_burst_yield_the_cpu(self) -> None:
        """Runs due together start back to back; the first and the last let the new children run."""
        fake = FakeTime(T0, T0 + timedelta(seconds=1, milliseconds=500))
        drive(config(*(task(f"t{i}", "* * * * * *") for i in range(4))), fake)
        assert [True, False, False, True] == fake.yields

    def test_disabled_task_never_fires(self) -> None:
        """enabled: false keeps a task out of the schedule."""
        fake = FakeTime(T0, T0 + timedelta(seconds=5))
        drive(config(task("off", "* * * * * *", enabled=False), task("on", "*/2 * * * * *")), fake)
        assert [] == fired(fake, "off")
        assert [T0 + timedelta(seconds=s) for s in (2, 4)] == fired(fake, "on")

    def test_jitter_delays_within_bound(self) -> None:
        """Jitter delays the start by less than `jitter`, and scheduled_for stays the instant."""
        fake = FakeTime(T0, T0 + timedelta(minutes=5, seconds=30))
        drive(config(task("j", "* * * * *", jitter_s=20.0)), fake)
        assert [T0 + timedelta(minutes=m) for m in range(1, 6)] == fired(fake)
        delays = [(r.started - r.scheduled_for).total_seconds() for r in fake.runs]
        assert all(0 <= d < 20 for d in delays)
        assert len(set(delays)) > 1

    def test_a_failing_start_is_logged_and_the_clock_goes_on(self) -> None:
        """A bug while starting a run becomes a scheduler.error event; later fires still happen."""
        fake = FakeTime(T0, T0 + timedelta(seconds=3, milliseconds=500))
        start = fake.start_run
        calls: list[int] = []

        def flaky(spec: TaskSpec, **kwargs: Any) -> FakeRun:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return start(spec, **kwargs)

        fake.start_run = flaky  # type: ignore[method-assign]
        logs = drive(config(task("t", "* * * * * *")), fake)
        assert ["RuntimeError: boom"] == [e["error"] for e in events(logs, "scheduler.error")]
        assert [T0 + timedelta(seconds=s) for s in (2, 3)] == fired(fake)


class TestMissedFires:
    def test_suspend_collapses_into_one_run(self) -> None:
        """After a 1 h suspend, a per-minute task runs once for the newest instant and reports the rest."""
        fake = FakeTime(T0 + timedelta(seconds=30), T0 + timedelta(hours=1, minutes=1, seconds=30))
        fake.at(T0 + timedelta(minutes=1, seconds=10), fake.step_to(T0 + timedelta(hours=1, seconds=20)))
        logs = drive(config(task("m", "* * * * *")), fake)
        assert [
            T0 + timedelta(minutes=1),
            T0 + timedelta(hours=1),
            T0 + timedelta(hours=1, minutes=1),
        ] == fired(fake)
        (missed,) = events(logs, "task.missed")
        assert 58 == missed["count"]
        assert (T0 + timedelta(minutes=2)).isoformat() == missed["first"]
        assert (T0 + timedelta(minutes=59)).isoformat() == missed["last"]

    def test_older_than_grace_is_skipped(self) -> None:
        """A daily instant missed by more than the grace does not run; it is logged as missed."""
        spec = task("daily", "0 0 * * *", grace_s=300.0)
        fake = FakeTime(T0 + timedelta(hours=23, minutes=59), T0 + timedelta(days=1, hours=1))
        fake.at(
            T0 + timedelta(hours=23, minutes=59, seconds=30), fake.step_to(T0 + timedelta(days=1, minutes=10))
        )
        logs = drive(config(spec), fake)
        assert [] == fired(fake)
        (missed,) = events(logs, "task.missed")
        assert 1 == missed["count"]
        assert (T0 + timedelta(days=1)).isoformat() == missed["first"] == missed["last"]

    def test_late_within_grace_runs(self) -> None:
        """An instant missed by less than the grace still runs, for that instant."""
        spec = task("daily", "0 0 * * *", grace_s=300.0)
        fake = FakeTime(T0 + timedelta(hours=23, minutes=59), T0 + timedelta(days=1, hours=1))
        fake.at(
            T0 + timedelta(hours=23, minutes=59, seconds=30), fake.step_to(T0 + timedelta(days=1, minutes=4))
        )
        logs = drive(config(spec), fake)
        assert [T0 + timedelta(days=1)] == fired(fake)
        assert [] == events(logs, "task.missed")

    def test_clock_stepping_back_never_refires(self) -> None:
        """When the wall clock steps back, instants already fired are not fired again."""
        fake = FakeTime(T0 + timedelta(seconds=30), T0 + timedelta(minutes=8, seconds=30))
        fake.at(T0 + timedelta(minutes=5, seconds=30), fake.step_to(T0 + timedelta(minutes=2, seconds=30)))
        drive(config(task("m", "* * * * *")), fake)
        got = fired(fake)
        assert len(got) == len(set(got))
        assert [T0 + timedelta(minutes=m) for m in (1, 2, 3, 4, 5, 6, 7, 8)] == got


class TestOverlap:
    def test_skip_logs_and_lets_it_finish(self) -> None:
        """overlap: skip starts nothing while a run is going and logs task.skipped."""
        fake = FakeTime(T0, T0 + timedelta(seconds=6, milliseconds=500))
        fake.durations["slow"] = 2.5
        logs = drive(config(task("slow", "* * * * * *", overlap="skip")), fake)
        assert [T0 + timedelta(seconds=s) for s in (1, 4)] == fired(fake)
        skipped = events(logs, "task.skipped")
        assert [(T0 + timedelta(seconds=s)).isoformat() for s in (2, 3, 5, 6)] == [
            e["scheduled_for"] for e in skipped
        ]
        assert {"overlap"} == {e["reason"] for e in skipped}

    def test_allow_runs_side_by_side(self) -> None:
        """overlap: allow starts every instant even while others run."""
        fake = FakeTime(T0, T0 + timedelta(seconds=4, milliseconds=500))
        fake.durations["slow"] = 10
        drive(config(task("slow", "* * * * * *", overlap="allow")), fake)
        assert 4 == len(fired(fake))

    def test_replace_stops_the_running_one(self) -> None:
        """overlap: replace stops the running run as a timeout would, then starts the new one."""
        fake = FakeTime(T0, T0 + timedelta(seconds=3, milliseconds=500))
        fake.durations["slow"] = None
        drive(config(task("slow", "* * * * * *", overlap="replace")), fake)
        assert 3 == len(fake.runs)
        assert ["killed", "killed", "killed"] == [r.stopped_with for r in fake.runs]


class TestReload:
    def test_reload_reports_and_reschedules(self) -> None:
        """A valid reload reports added, removed and changed names, and the new schedule takes over."""
        old = config(task("keep", "*/2 * * * * *"), task("gone", "* * * * * *"), task("edit", "* * * * * *"))
        new = config(
            task("keep", "*/2 * * * * *"), task("edit", "*/5 * * * * *"), task("fresh", "*/3 * * * * *")
        )
        fake = FakeTime(T0, T0 + timedelta(seconds=10, milliseconds=500))
        fake.at(T0 + timedelta(seconds=2, milliseconds=500), fake.reload)
        logs = drive(old, fake, reload_config=lambda: new)
        (reloaded,) = events(logs, "config.reloaded")
        assert (["fresh"], ["gone"], ["edit"]) == (
            reloaded["added"],
            reloaded["removed"],
            reloaded["changed"],
        )
        assert [T0 + timedelta(seconds=s) for s in (1, 2)] == fired(fake, "gone")
        assert [T0 + timedelta(seconds=s) for s in (1, 2, 5, 10)] == fired(fake, "edit")
        assert [T0 + timedelta(seconds=s) for s in (3, 6, 9)] == fired(fake, "fresh")
        assert [T0 + timedelta(seconds=s) for s in (2, 4, 6, 8, 10)] == fired(fake, "keep")

    def test_invalid_reload_keeps_the_old_schedule(self) -> None:
        """An invalid file is reported as config.invalid and the old tasks keep firing."""

        def broken() -> Config:
            raise ConfigError(["schedules.yaml:3:5: task 'x': unknown key 'comand'"])

        fake = FakeTime(T0, T0 + timedelta(seconds=4, milliseconds=500))
        fake.at(T0 + timedelta(seconds=1, milliseconds=500), fake.reload)
        logs = drive(config(task("a", "* * * * * *")), fake, reload_config=broken)
        (invalid,) = events(logs, "config.invalid")
        assert "unknown key 'comand'" in invalid["error"]
        assert 4 == len(fired(fake, "a"))

    def test_file_change_reloads(self) -> None:
        """A changed file is reloaded on the next poll, with trigger=file; an unchanged one is not."""
        new = config(task("a", "*/2 * * * * *"))
        fake = FakeTime(T0, T0 + timedelta(seconds=6, milliseconds=500))
        logs = drive(
            config(task("a", "* * * * * *")),
            fake,
            load=FakeLoader(lambda: new, iter(["", "", "v2"])),
            watcher=FakeWatcher(),
        )
        (reloaded,) = events(logs, "config.reloaded")
        assert ("file", ["a"]) == (reloaded["trigger"], reloaded["changed"])
        assert [T0 + timedelta(seconds=s) for s in (1, 2, 3, 4, 6)] == fired(fake, "a")

    def test_unchanged_task_keeps_its_fire(self) -> None:
        """Reloading an identical file changes nothing and keeps jittered fire times."""
        cfg = config(task("a", "* * * * *", jitter_s=30.0))
        fake = FakeTime(T0, T0 + timedelta(minutes=3))
        fake.at(T0 + timedelta(seconds=50), fake.reload)
        logs = drive(cfg, fake, reload_config=lambda: replace(cfg))
        (reloaded,) = events(logs, "config.reloaded")
        assert ([], [], []) == (reloaded["added"], reloaded["removed"], reloaded["changed"])
        assert [T0 + timedelta(minutes=m) for m in (1, 2)] == fired(fake)


class TestReloadDigest:
    def test_a_touch_is_not_a_reload_but_sighup_is(self) -> None:
        """On a file change with the running digest nothing happens; SIGHUP reloads all the same."""
        fake = FakeTime(T0, T0 + timedelta(seconds=3, milliseconds=500))
        fake.at(T0 + timedelta(seconds=2, milliseconds=500), fake.reload)
        cfg = config(task("a", "* * * * * *"))
        loader = FakeLoader(lambda: cfg, iter(["", "", "", "", ""]))
        logs = drive(cfg, fake, load=loader, watcher=FakeWatcher())
        assert loader.count >= 3
        assert ["signal"] == [e["trigger"] for e in events(logs, "config.reloaded")]

    def test_the_new_digest_goes_to_the_registry(self) -> None:
        """A reload tells the store which config this clock now runs."""
        fake = FakeTime(T0, T0 + timedelta(seconds=2, milliseconds=500))
        fake.at(T0 + timedelta(seconds=1, milliseconds=500), fake.reload)
        recorder = FakeRecorder()
        new = replace(config(task("a", "*/2 * * * * *")), digest="d2")
        drive(config(task("a", "* * * * * *")), fake, recorder=recorder, load=FakeLoader(lambda: new))
        assert ["d2"] == recorder.digests

    def test_stop_during_a_reload_does_not_wait_for_it(self) -> None:
        """A reload that never finishes (a parse stuck on a slow file) is cancelled at the stop."""
        cancelled = []

        async def stuck() -> Loaded:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            raise AssertionError("unreachable")

        fake = FakeTime(T0, T0 + timedelta(seconds=2, milliseconds=500))
        fake.at(T0 + timedelta(seconds=1, milliseconds=500), fake.reload)
        logs = drive(config(task("a", "* * * * * *")), fake, load=stuck)
        assert [True] == cancelled
        assert "scheduler.stopping" == [e["event"] for e in logs if e["event"].startswith("scheduler.")][-1]


class TestShutdown:
    def test_stop_terminates_running_runs(self) -> None:
        """On stop, every running run is stopped and the clock says stopping (the CLI says stopped)."""
        fake = FakeTime(T0, T0 + timedelta(seconds=2, milliseconds=500))
        fake.durations["long"] = None
        logs = drive(config(task("long", "* * * * * *", overlap="allow")), fake)
        assert 2 == len(fake.runs)
        assert all(r.stopped_with == "killed" and r.done for r in fake.runs)
        stopping = events(logs, "scheduler.stopping")[0]
        assert 2 == stopping["running"]
        assert "scheduler.stopping" == [e["event"] for e in logs if e["event"].startswith("scheduler.")][-1]


class FakeRecorder:
    """The Recorder's interface over a dict of claimed instants; `down` makes the store unavailable."""

    claimed_by = "here:1"

    def __init__(
        self,
        claimed: dict[tuple[str, datetime], str] | None = None,
        down: bool = False,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.now = now
        self.claimed = claimed if claimed is not None else {}  # (task, instant) -> claimed_by
        self.down = down
        self.unclaimed: list[RunRecord] = []
        self.finished_runs: dict[str, dict[str, Any]] = {}
        self.triggers: dict[str, str] = {}
        self.run_ids: dict[tuple[str, datetime], str] = {}  # the winning claim's
        self.released_ids: list[str] = []
        self.claimed_at: dict[tuple[str, datetime], datetime] = {}
        self.closed = False
        self.race: dict[tuple[str, datetime], str] = {}  # claimed by another clock just after start()
        self.last_run: dict[str, datetime] = {}
        self.last_success: dict[str, datetime] = {}
        self.digests: list[str] = []
        self.overrides: dict[str, Override] = {}

    async def start(self, now: datetime) -> History | None:
        if self.down:
            return None
        newest: dict[str, datetime] = {}
        for name, instant in self.claimed:
            newest[name] = max(instant, newest.get(name, instant))
        self.claimed.update(self.race)
        return History(newest, self.last_run, self.last_success, self.overrides)

    async def claim_runs(
        self, records: Sequence[RunRecord], overlap: Mapping[str, str] | None = None, *, ahead: bool = False
    ) -> list[Claim] | None:
        won = await self.claim(records)
        return None if won is None else [Claim(w) for w in won]

    def config_changed(self, digest: str) -> None:
        self.digests.append(digest)

    async def claim(self, records: Sequence[RunRecord]) -> list[bool] | None:
        if self.down:
            return None
        won = []
        for r in records:
            key = (r.task, r.scheduled_for)
            won.append(key not in self.claimed)
            self.claimed.setdefault(key, r.claimed_by)
            self.triggers[r.run_id] = r.trigger
            if won[-1]:
                self.run_ids[key] = r.run_id
            if self.now is not None:
                self.claimed_at[key] = self.now()
        return won

    def started_unclaimed(self, record: RunRecord) -> None:
        self.unclaimed.append(record)

    def finished(self, run_id: str, **fields: Any) -> None:
        self.finished_runs[run_id] = fields

    def released(self, run_id: str) -> None:
        self.released_ids.append(run_id)
        key = next(k for k, r in self.run_ids.items() if r == run_id)
        del self.claimed[key], self.run_ids[key]

    async def close(self) -> None:
        self.closed = True


class TestStore:
    def test_each_instant_claimed_and_its_end_recorded(self) -> None:
        """With a store, every instant is claimed before it runs and each run's end is recorded."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=3, milliseconds=500))
        recorder = FakeRecorder(now=fake.now)
        drive(config(task("tick", "* * * * * *")), fake, recorder=recorder)
        instants = [T0 + timedelta(seconds=s) for s in (1, 2, 3)]
        assert instants == fired(fake)
        assert all(r.started == r.scheduled_for for r in fake.runs)
        # Each claimed a second or less ahead; 4 s was claimed too, and given back at the stop.
        assert {("tick", i): "here:1" for i in instants} == recorder.claimed
        assert [T0 + timedelta(seconds=s) for s in (1, 2, 3, 4)] == sorted(i for _, i in recorder.claimed_at)
        assert all(0 < (i - at).total_seconds() <= 1 for (_, i), at in recorder.claimed_at.items())
        assert 1 == len(recorder.released_ids)
        ends = recorder.finished_runs
        assert {r.run_id: ("succeeded", "out") for r in fake.runs} == {
            k: (f["status"], f["output"]) for k, f in ends.items()
        }
        assert recorder.closed

    def test_a_changed_task_keeps_its_claim(self) -> None:
        """A reload changes a task whose next fire was claimed already: that fire runs, by that claim."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=3, milliseconds=500))
        fake.at(T0 + timedelta(seconds=1, milliseconds=500), fake.reload)
        logs = drive(
            config(task("tick", "* * * * * *")),
            fake,
            reload_config=lambda: config(task("tick", "* * * * * *", timeout_s=5.0)),
            recorder=FakeRecorder(),
        )
        assert [T0 + timedelta(seconds=s) for s in (1, 2, 3)] == fired(fake)
        assert [None, 5.0, 5.0] == [r.task.timeout_s for r in fake.runs]
        assert [] == events(logs, "task.skipped")

    def test_claims_of_a_removed_task_are_given_up(self) -> None:
        """A task removed by a reload after its next fire was claimed: that claim is recorded as skipped."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=4, milliseconds=500))
        recorder = FakeRecorder(now=fake.now)
        fake.at(T0 + timedelta(seconds=1, milliseconds=500), fake.reload)
        drive(
            config(task("gone", "* * * * * *"), task("kept", "*/10 * * * * *")),
            fake,
            reload_config=lambda: config(task("kept", "*/10 * * * * *")),
            recorder=recorder,
        )
        assert [T0 + timedelta(seconds=1)] == fired(fake, "gone")
        # 2 s was claimed ahead before the reload, then given back: claimable again by anyone.
        assert ("gone", T0 + timedelta(seconds=2)) in recorder.claimed_at
        assert [T0 + timedelta(seconds=1)] == [i for (name, i) in recorder.claimed if name == "gone"]
        assert 1 == len(recorder.released_ids)

    def test_a_claim_lost_ahead_is_asked_again_when_due(self) -> None:
        """An instant another clock won ahead but gave back (it stopped) is claimed and run here when due;
        one it keeps is skipped here, logged once."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=3, milliseconds=500))
        other = {("tick", T0 + timedelta(seconds=s)): "there:2" for s in (2, 3)}
        recorder = FakeRecorder(other)
        fake.at(
            T0 + timedelta(seconds=1, milliseconds=500),
            lambda: other.pop(("tick", T0 + timedelta(seconds=2))),
        )
        logs = drive(config(task("tick", "* * * * * *")), fake, recorder=recorder)
        assert [T0 + timedelta(seconds=s) for s in (1, 2)] == fired(fake)
        skipped = events(logs, "task.skipped")
        assert [(T0 + timedelta(seconds=3)).isoformat()] == [e["scheduled_for"] for e in skipped]

    def test_a_claimed_burst_yields_the_cpu_first_and_last(self) -> None:
        """Runs claimed together start back to back; the first and the last let the new children run."""
        fake = FakeTime(T0, T0 + timedelta(seconds=1, milliseconds=500))
        drive(config(*(task(f"t{i}", "* * * * * *") for i in range(4))), fake, recorder=FakeRecorder())
        assert [True, False, False, True] == fake.yields

    def test_instants_claimed_elsewhere_do_not_run(self) -> None:
        """An instant another clock claimed is skipped here; the others run."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=4, milliseconds=500))
        other = {("tick", T0 + timedelta(seconds=s)): "there:2" for s in (2, 3)}
        logs = drive(config(task("tick", "* * * * * *")), fake, recorder=FakeRecorder(other))
        assert [T0 + timedelta(seconds=s) for s in (1, 4)] == fired(fake)
        assert ["claimed_elsewhere"] * 2 == [e["reason"] for e in events(logs, "task.skipped")]

    def test_store_down_runs_best_effort_unless_required(self) -> None:
        """With the store down, a task runs unclaimed (recorded later), but require_store skips it."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=2, milliseconds=500))
        recorder = FakeRecorder(down=True)
        cfg = config(task("loose", "* * * * * *"), task("strict", "* * * * * *", require_store=True))
        logs = drive(cfg, fake, recorder=recorder)
        assert [T0 + timedelta(seconds=s) for s in (1, 2)] == fired(fake, "loose")
        assert [] == fired(fake, "strict")
        assert [r.run_id for r in fake.runs] == [r.run_id for r in recorder.unclaimed]
        assert set(recorder.finished_runs) == {r.run_id for r in fake.runs}
        skipped = events(logs, "task.skipped")
        assert [("strict", "store_unavailable")] * 2 == [(e["task"], e["reason"]) for e in skipped]

    def test_overlap_skip_marks_the_claim_skipped(self) -> None:
        """A claimed instant skipped for overlap is recorded as skipped, not left running."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=2, milliseconds=500))
        fake.durations["slow"] = None
        recorder = FakeRecorder()
        drive(config(task("slow", "* * * * * *", overlap="skip")), fake, recorder=recorder)
        statuses = sorted(f["status"] for f in recorder.finished_runs.values())
        # 1 s ran until the stop; 2 s was skipped for overlap; 3 s, claimed ahead, was given back at the stop.
        assert ["killed", "skipped"] == statuses
        assert 1 == len(recorder.released_ids)

    def test_store_output_false_keeps_no_output(self) -> None:
        """store_output: false records the end of a run without its output."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=1, milliseconds=700))
        recorder = FakeRecorder()
        drive(config(task("quiet", "* * * * * *", store_output=False)), fake, recorder=recorder)
        (run,) = fake.runs
        assert ("succeeded", None) == tuple(
            recorder.finished_runs[run.run_id][k] for k in ("status", "output")
        )


class FakeControl:
    """Implements control.ControlLedger over the fake time, as Store.poll answers: the overrides set from
    given moments on, and the run requests made by given moments, held by this clock until it notes their
    start or gives them back (with `redeliver`, even after: as when the note is slow to land)."""

    def __init__(self, fake: FakeTime, *, redeliver: bool = False) -> None:
        self.fake = fake
        self.redeliver = redeliver
        self.pauses: list[tuple[datetime, dict[str, Override]]] = []  # (from when, the overrides)
        self.requests: list[tuple[datetime, RunRequest]] = []  # (made by when, the request)
        self.started: dict[int, str] = {}  # request id -> run id
        self.released: list[int] = []
        self.polls: list[tuple[datetime, bool]] = []  # when, and whether the clock could claim

    def pause(self, since: datetime, name: str, *, by: str = "ann", until: datetime | None = None) -> None:
        self.pauses.append((since, {name: Override(name, True, until, "disk full", by, since)}))

    def resume(self, since: datetime, name: str, *, by: str = "bob") -> None:
        self.pauses.append((since, {name: Override(name, False, None, "", by, since)}))

    async def poll(self, tasks: Container[str] | None) -> Poll | None:
        now = self.fake.now()
        self.polls.append((now, tasks is not None))
        overrides = next((o for since, o in reversed(self.pauses) if since <= now), {})
        done = set(self.released) | (set() if self.redeliver else set(self.started))
        held = [r for made, r in self.requests if made <= now and r.id not in done and tasks is not None]
        return Poll(overrides, held, [])

    def request_started(self, request_id: int, run_id: str) -> None:
        self.started[request_id] = run_id

    def request_released(self, request_id: int) -> None:
        self.released.append(request_id)


def at_s(*values: float) -> list[datetime]:
    """These many seconds after T0."""
    return [T0 + timedelta(seconds=v) for v in values]


class TestControl:
    def test_a_pause_skips_fires_until_resumed(self) -> None:
        """A pause seen at a poll skips the task's fires (task.skipped, reason paused), logged once as
        task.paused with who, why and until; a resume seen at a later poll lets it fire again
        (task.resumed). The clock sees each within a poll, about a second; the store hears of no skipped
        instant."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=10, milliseconds=500))
        control = FakeControl(fake)
        control.pause(T0 + timedelta(seconds=2, milliseconds=500), "tick")
        control.resume(T0 + timedelta(seconds=6, milliseconds=500), "tick")
        recorder = FakeRecorder(now=fake.now)
        logs = drive(config(task("tick", "* * * * * *")), fake, recorder=recorder, control=control)
        skipped = [datetime.fromisoformat(e["scheduled_for"]) for e in events(logs, "task.skipped")]
        assert {"paused"} == {e["reason"] for e in events(logs, "task.skipped")}
        assert at_s(*range(1, 11)) == sorted(fired(fake) + skipped)
        first = int((skipped[0] - T0).total_seconds())
        assert at_s(*range(first, first + len(skipped))) == skipped  # one stretch
        assert 3 <= first <= 4  # paused at 2.5 s, seen at the next poll
        assert at_s(7)[0] <= skipped[-1] < at_s(8)[0]  # resumed at 6.5 s, seen at the next poll
        assert [("tick", "ann", "disk full", None)] == [
            (e["task"], e["by"], e["reason"], e["until"]) for e in events(logs, "task.paused")
        ]
        assert [("tick", "bob", False)] == [
            (e["task"], e["by"], e["expired"]) for e in events(logs, "task.resumed")
        ]
        # At most the one instant claimed ahead before the pause was seen reached the store: as skipped.
        held_claims = [i for (_, i) in recorder.claimed if i in skipped]
        assert len(held_claims) <= 1
        assert len(held_claims) == sum(f["status"] == "skipped" for f in recorder.finished_runs.values())

    def test_a_pause_with_until_ends_by_itself(self) -> None:
        """A pause with `until` holds the instants before it and none after, whatever the polls say; the
        clock logs task.resumed (expired) when it passes."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=8, milliseconds=500))
        control = FakeControl(fake)
        recorder = FakeRecorder()
        recorder.overrides = {"tick": Override("tick", True, at_s(5)[0], "", "ann", T0)}
        control.pauses.append((T0, recorder.overrides))
        logs = drive(config(task("tick", "* * * * * *")), fake, recorder=recorder, control=control)
        assert at_s(5, 6, 7, 8) == fired(fake)
        assert [(at_s(5)[0].isoformat(), "ann")] == [
            (e["until"], e["by"]) for e in events(logs, "task.paused")
        ]
        assert [(None, True)] == [(e["by"], e["expired"]) for e in events(logs, "task.resumed")]

    def test_a_pause_in_the_store_holds_from_the_start(self) -> None:
        """A clock starting while its task is paused (a restart, a deploy) logs task.paused before
        scheduler.started and never fires it."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=3, milliseconds=500))
        control = FakeControl(fake)
        recorder = FakeRecorder()
        recorder.overrides = {"tick": Override("tick", True, None, "deploy", "ann", T0)}
        control.pauses.append((T0, recorder.overrides))
        logs = drive(config(task("tick", "* * * * * *")), fake, recorder=recorder, control=control)
        assert [] == fired(fake)
        names = [e["event"] for e in logs]
        assert names.index("task.paused") < names.index("scheduler.started")
        assert 1 == names.count("task.paused")
        assert ({}, 3) == (recorder.claimed, len(events(logs, "task.skipped")))

    def test_a_run_request_starts_a_manual_run(self) -> None:
        """A request the clock won starts within a poll as a run with trigger manual, recorded, naming who
        asked on its events, and noted as started with its run id. As with run-now, overlap does not apply:
        it starts beside the run going, which goes on."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=4, milliseconds=500))
        fake.durations["slow"] = None
        control = FakeControl(fake)
        control.requests.append(
            (T0 + timedelta(seconds=2, milliseconds=200), RunRequest(7, "slow", "ann", T0, "claimed"))
        )
        recorder = FakeRecorder()
        drive(config(task("slow", "* * * * * *", overlap="skip")), fake, recorder=recorder, control=control)
        scheduled, manual = fake.runs
        assert ("schedule", "manual") == (scheduled.trigger, manual.trigger)
        assert (
            T0 + timedelta(seconds=2, milliseconds=200)
            <= manual.started
            <= T0 + timedelta(seconds=3, milliseconds=300)
        )
        assert (manual.started, "killed") == (manual.scheduled_for, scheduled.stopped_with)
        assert {7: manual.run_id} == control.started
        assert [("manual", manual.run_id)] == [(r.trigger, r.run_id) for r in recorder.unclaimed]
        with capture_logs() as logs:
            manual.log.info("probe")
        assert "ann" == logs[0]["requested_by"]

    def test_a_request_starts_once_however_often_it_comes(self) -> None:
        """A request the store hands over again (its start not noted yet) starts one run only."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=5, milliseconds=500))
        control = FakeControl(fake, redeliver=True)
        control.requests.append((T0, RunRequest(7, "t", "ann", T0, "claimed")))
        drive(config(task("t", "@daily")), fake, recorder=FakeRecorder(), control=control)
        assert len(control.polls) >= 3
        assert ["manual"] == [r.trigger for r in fake.runs]

    def test_a_request_for_a_task_gone_is_given_back(self) -> None:
        """A request for a task the clock no longer has (a reload removed it after the poll's claim) is
        given back for another clock."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=2, milliseconds=500))
        control = FakeControl(fake)
        control.requests.append((T0, RunRequest(7, "gone", "ann", T0, "claimed")))
        drive(config(task("t", "@daily")), fake, recorder=FakeRecorder(), control=control)
        assert ([], [7], {}) == (fake.runs, control.released, control.started)

    def test_a_stopping_clock_claims_nothing(self) -> None:
        """Polls ask to claim while the clock runs; none is made once it stops."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=3, milliseconds=500))
        control = FakeControl(fake)
        drive(config(task("t", "@daily")), fake, recorder=FakeRecorder(), control=control)
        assert len(control.polls) >= 2
        assert all(could_claim for _, could_claim in control.polls)
        assert all(at <= fake.until for at, _ in control.polls)


class TestCatchUp:
    def test_missed_instants_run_once_now(self) -> None:
        """A daily task whose 03:00 passed while no clock ran runs once at start, for that instant."""
        start = T0 + timedelta(days=3, hours=5)
        fake = FakeTime(start, start + timedelta(seconds=2))
        recorder = FakeRecorder({("daily", T0 + timedelta(hours=3)): "old:1"})
        drive(config(task("daily", "0 3 * * *", catch_up=True)), fake, recorder=recorder)
        (run,) = fake.runs
        assert (T0 + timedelta(days=3, hours=3), "catch_up", start) == (
            run.scheduled_for,
            run.trigger,
            run.started,
        )
        assert "catch_up" == recorder.triggers[run.run_id]

    def test_no_catch_up_without_the_option_or_a_record_or_a_miss(self) -> None:
        """No catch-up for a task without catch_up, a task never run, or one whose last instant ran."""
        start = T0 + timedelta(days=3, hours=5)
        fake = FakeTime(start, start + timedelta(seconds=2))
        recorder = FakeRecorder(
            {
                ("plain", T0 + timedelta(hours=3)): "old:1",
                ("current", T0 + timedelta(days=3, hours=3)): "old:1",
            }
        )
        cfg = config(
            task("plain", "0 3 * * *"),
            task("current", "0 3 * * *", catch_up=True),
            task("new", "0 3 * * *", catch_up=True),
        )
        drive(cfg, fake, recorder=recorder)
        assert [] == fake.runs

    def test_catch_up_claimed_by_another_clock_runs_once(self) -> None:
        """When another clock catches up first (claims the missed instant), this one does not."""
        start = T0 + timedelta(days=1, hours=5)
        fake = FakeTime(start, start + timedelta(seconds=2))
        recorder = FakeRecorder({("daily", T0 + timedelta(hours=3)): "old:1"})
        recorder.race = {("daily", T0 + timedelta(days=1, hours=3)): "other:2"}
        drive(config(task("daily", "0 3 * * *", catch_up=True)), fake, recorder=recorder)
        assert [] == fake.runs


class FakePinger:
    def __init__(self) -> None:
        self.pings: list[tuple[str, str, str]] = []  # (kind, url, run_id)
        self.tasks: list[str] = []

    def start(self, url: str, run_id: str, *, task: str, timeout_s: float) -> None:
        self.pings.append(("start", url, run_id))
        self.tasks.append(task)

    def finish(self, url: str, run_id: str, *, task: str, success: bool, **kwargs: Any) -> None:
        self.pings.append(("success" if success else "fail", url, run_id))
        self.tasks.append(task)


class Recording:
    """Any method call is recorded as (name, args)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.kwargs: dict[str, list[tuple[Any, dict[str, Any]]]] = {}

    def __getattr__(self, name: str) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args))
            if kwargs:
                self.kwargs.setdefault(name, []).append((args[0] if len(args) == 1 else args, kwargs))

        return record

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]


def seconds(fake: FakeTime, name: str | None = None) -> list[float]:
    """When each run started, in seconds after T0."""
    return [(r.started - T0).total_seconds() for r in fake.runs if name is None or r.task.name == name]


class TestRetries:
    def test_failed_runs_retried_with_backoff_until_success(self) -> None:
        """Two failures then a success: retried after 10 s and then 20 s, one final success ping and hook."""
        fake = FakeTime(T0 - timedelta(seconds=1), T0 + timedelta(minutes=2))
        fake.statuses["flaky"] = ["failed", "timed_out"]
        pinger = FakePinger()
        spec = task(
            "flaky", "0 * * * *", retries=3, retry_delay_s=10.0, ping_url="https://hc/x", on_success="ok"
        )
        logs = drive(config(spec), fake, pinger=pinger)
        # The fake notices each end at its next step, a second after the start: delays count from there.
        assert [0.0, 11.0, 32.0] == seconds(fake)
        assert ["schedule", "retry", "retry"] == [r.trigger for r in fake.runs]
        assert [T0] * 3 == fired(fake)
        assert [2, 3] == [e["attempt"] for e in events(logs, "task.retrying")]
        assert [10.0, 20.0] == [e["delay_s"] for e in events(logs, "task.retrying")]
        final = [(kind, run_id) for kind, _, run_id in pinger.pings if kind != "start"]
        assert [("success", fake.runs[2].run_id)] == final
        assert 3 == len([p for p in pinger.pings if p[0] == "start"])
        assert ["flaky"] * 4 == pinger.tasks
        assert [("on_success", "ok")] == [(h.trigger, h.task.command) for h in fake.hooks]

    def test_retries_recorded_with_their_attempt(self) -> None:
        """With a store, each retry is recorded as a run of its own: trigger retry, and its attempt."""
        fake = FakeTime(T0 - timedelta(seconds=1), T0 + timedelta(minutes=2))
        fake.statuses["flaky"] = ["failed", "failed"]
        recorder = FakeRecorder(now=fake.now)
        drive(config(task("flaky", "0 * * * *", retries=3, retry_delay_s=10.0)), fake, recorder=recorder)
        assert [("retry", 2), ("retry", 3)] == [(r.trigger, r.attempt) for r in recorder.unclaimed]
        assert [fake.runs[1].run_id, fake.runs[2].run_id] == [r.run_id for r in recorder.unclaimed]

    def test_last_failure_reported_once(self) -> None:
        """Every attempt fails: on_failure and the fail ping come once, after the last; delays are capped."""
        fake = FakeTime(T0 - timedelta(seconds=1), T0 + timedelta(minutes=5))
        fake.statuses["bad"] = ["failed"] * 5
        pinger = FakePinger()
        spec = task(
            "bad",
            "0 * * * *",
            retries=3,
            retry_delay_s=30.0,
            retry_backoff=3.0,
            retry_max_delay_s=60.0,
            ping_url="https://hc/x",
            on_failure="alert",
        )
        logs = drive(config(spec), fake, pinger=pinger)
        assert [30.0, 60.0, 60.0] == [e["delay_s"] for e in events(logs, "task.retrying")]
        assert 4 == len(fake.runs)
        assert [("fail", fake.runs[-1].run_id)] == [(k, r) for k, _, r in pinger.pings if k != "start"]
        (hook,) = fake.hooks
        assert ("on_failure", "alert", "failed") == (
            hook.trigger,
            hook.task.command,
            hook.task.env["SCHEDULER_STATUS"],
        )
        assert "1" == hook.task.env["SCHEDULER_EXIT_CODE"]
        assert "out\n" == hook.seen_output_file
        assert not os.path.exists(hook.task.env["SCHEDULER_OUTPUT_FILE"])

    def test_a_newer_scheduled_run_ends_the_retries(self) -> None:
        """A scheduled run that starts while a retry waits cancels it, and the failure is reported then."""
        fake = FakeTime(T0 + timedelta(seconds=30), T0 + timedelta(minutes=2, seconds=30))
        fake.statuses["m"] = ["failed"]
        spec = task("m", "* * * * *", retries=2, retry_delay_s=300.0, on_failure="alert")
        logs = drive(config(spec), fake)
        assert ["schedule", "schedule"] == [r.trigger for r in fake.runs]
        assert 1 == len(events(logs, "task.retry_cancelled"))
        assert ["on_failure"] == [h.trigger for h in fake.hooks]

    def test_no_retries_hooks_or_pings_at_shutdown(self) -> None:
        """Runs stopped by the shutdown are not retried, pinged as failed, or followed by on_failure."""
        fake = FakeTime(T0 - timedelta(seconds=1), T0 + timedelta(seconds=2))
        fake.durations["long"] = None
        pinger = FakePinger()
        spec = task("long", "0 * * * *", retries=2, ping_url="https://hc/x", on_failure="alert")
        logs = drive(config(spec), fake, pinger=pinger)
        assert ["start"] == [k for k, _, _ in pinger.pings]
        assert ([], []) == (fake.hooks, events(logs, "task.retrying"))


class TestMetrics:
    def test_what_the_clock_reports(self) -> None:
        """Starts, ends, skips, misses, next fires, heartbeats and reloads reach the metrics."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=3, milliseconds=500))
        fake.durations["slow"] = 1.5
        metrics = Recording()
        fake.at(T0 + timedelta(seconds=2, milliseconds=500), fake.reload)
        drive(
            config(task("slow", "* * * * * *"), task("gone", "0 0 1 1 *")),
            fake,
            metrics=metrics,
            reload_config=lambda: config(task("slow", "* * * * * *")),
        )
        assert [("slow",), ("slow",)] == metrics.named("run_started")
        assert [("slow", "succeeded", 0.5), ("slow", "killed", 0.5)] == metrics.named("run_finished")
        assert [("slow", "overlap")] == metrics.named("skipped")
        assert [("success",)] == metrics.named("config_reloaded")
        assert [("gone",)] == metrics.named("forget_task")
        assert ("gone", datetime(2027, 1, 1, tzinfo=UTC).timestamp()) in metrics.named("next_fire")
        assert len(metrics.named("heartbeat")) >= 3

    def test_hooks_are_not_counted_as_runs(self) -> None:
        """A hook that follows a run, failing or not, is neither a run started nor a run finished."""
        fake = FakeTime(T0 - timedelta(seconds=1), T0 + timedelta(seconds=5))
        fake.statuses["bad"] = ["failed"]
        metrics = Recording()
        drive(config(task("bad", "0 * * * *", on_failure="alert")), fake, metrics=metrics)
        assert ["on_failure"] == [h.trigger for h in fake.hooks]
        assert [("bad",)] == metrics.named("run_started")
        assert [("bad", "failed", 0.5)] == metrics.named("run_finished")

    def test_last_run_and_success_come_from_the_store(self) -> None:
        """With a store, the last-run and last-success gauges start from the history, not from nothing."""
        fake = FakeTime(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=1))
        recorder = FakeRecorder()
        recorder.last_run = {"daily": T0 - timedelta(hours=2)}
        recorder.last_success = {"daily": T0 - timedelta(days=1)}
        metrics = Recording()
        drive(
            config(task("daily", "@daily"), task("new", "@daily")), fake, recorder=recorder, metrics=metrics
        )
        assert metrics.kwargs["seed"] == [
            (
                "daily",
                {
                    "last_run": (T0 - timedelta(hours=2)).timestamp(),
                    "last_success": (T0 - timedelta(days=1)).timestamp(),
                },
            ),
            ("new", {"last_run": None, "last_success": None}),
        ]


class FakeNotifier:
    """systemd, in fake time: each message is logged as an event (so its place among the clock's events
    shows), and a keep-alive is asked for every `every` seconds."""

    def __init__(self, fake: FakeTime, every: float) -> None:
        self.fake = fake
        self.every = every
        self.keepalives: list[datetime] = []

    def ready(self, status: str) -> None:
        structlog.get_logger().info("systemd", message="READY=1", status=status)

    def stopping(self, status: str) -> None:
        structlog.get_logger().info("systemd", message="STOPPING=1", status=status)

    def heartbeat(self) -> None:
        if self.due_in() == 0:
            self.keepalives.append(self.fake.t)
            structlog.get_logger().info("systemd", message="WATCHDOG=1")

    def due_in(self) -> float:
        if not self.keepalives:
            return 0.0
        return max((self.keepalives[-1] - self.fake.t).total_seconds() + self.every, 0.0)

    def close(self) -> None:
        pass


class TestNotify:
    def test_ready_keepalives_from_the_loop_then_stopping(self) -> None:
        """READY=1 right after scheduler.started; WATCHDOG=1 from the loop's turns, which come at least as
        often as the watchdog asks although nothing is due; STOPPING=1 when the shutdown starts."""
        fake = FakeTime(T0, T0 + timedelta(seconds=5))
        notifier = FakeNotifier(fake, every=0.3)
        logs = drive(config(task("daily", "@daily"), task("b", "@daily")), fake, notifier=notifier)
        said = [(e["event"], e.get("message")) for e in logs]
        assert [("scheduler.started", None), ("systemd", "READY=1")] == said[:2]
        assert ("systemd", "STOPPING=1") == said[-1]
        assert ("scheduler.stopping", None) == said[-2]
        assert {"WATCHDOG=1"} == {m for _, m in said[2:-2]}
        assert "2 tasks from schedules.yaml" == logs[1]["status"]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(notifier.keepalives)]
        assert len(gaps) >= 15
        assert max(gaps) <= 0.3 + 1e-6, gaps


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()
