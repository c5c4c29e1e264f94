"""Tests for scheduler.clock with a fake wall clock and fake runs: no processes, no real sleeping."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog
from structlog.testing import capture_logs

from scheduler.clock import Clock
from scheduler.config import Config, TaskSpec
from scheduler.errors import ConfigError
from scheduler.schedule import parse

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
    ignores_term: bool = False
    stopped_with: str | None = None
    killed: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    async def wait(self) -> None:
        await self.finished.wait()

    def stop(self, status: str = "killed", kill_grace_s: float | None = None) -> None:
        self.stopped_with = status
        if not self.ignores_term:
            self.finished.set()

    def kill(self) -> None:
        self.killed = True
        self.finished.set()


class FakeWatcher:
    """A config file whose content changes when `changes` says so; every poll looks at it."""

    def __init__(self, changes: Iterator[bool]) -> None:
        self.changes = changes

    def touched(self) -> bool:
        return True

    def changed(self) -> bool:
        return next(self.changes, False)


class FakeClock:
    """Moves time only when the loop sleeps; runs scripted actions at their instants."""

    def __init__(self, start: datetime, until: datetime) -> None:
        self.t = start
        self.until = until
        self.actions: list[tuple[datetime, Callable[[], None]]] = []
        self.runs: list[FakeRun] = []
        self.durations: dict[str, float | None] = {}
        self.yields: list[bool] = []
        self.clock: Clock | None = None

    def now(self) -> datetime:
        return self.t

    def at(self, when: datetime, action: Callable[[], None]) -> None:
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
        for run in self.runs:
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
    ) -> FakeRun:
        self.yields.append(yield_cpu)
        duration = self.durations.get(spec.name, 0.5)
        ends = None if duration is None else self.t + timedelta(seconds=duration)
        run = FakeRun(spec, scheduled_for, trigger, self.t, ends)
        self.runs.append(run)
        return run


async def inline(func: Callable[[], Any]) -> Any:
    """Run the clock's blocking work (config reloads) at once, so fake time decides when it lands."""
    return func()


def drive(
    cfg: Config,
    fake: FakeClock,
    *,
    reload_config: Callable[[], Config] | None = None,
    watcher: Any = None,
) -> list[dict[str, Any]]:
    """Run the clock on the fake until `fake.until`; return the logged events."""

    async def main() -> None:
        clock = Clock(
            cfg,
            start_run=fake.start_run,  # type: ignore[arg-type]
            log=structlog.get_logger(),
            env={},
            clock=fake,
            reload_config=reload_config,
            watcher=watcher,
            rng=random.Random(7),
            shutdown_grace_s=5,
            run_blocking=inline,
        )
        fake.clock = clock
        await clock.run()

    with capture_logs() as logs:
        asyncio.run(main())
    return logs


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def fired(fake: FakeClock, name: str | None = None) -> list[datetime]:
    return [r.scheduled_for for r in fake.runs if name is None or r.task.name == name]


class TestFiring:
    def test_per_second_each_instant_once(self) -> None:
        """A per-second task fires at every second, once, at that second."""
        fake = FakeClock(T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=10, milliseconds=500))
        logs = drive(config(task("tick", "* * * * * *", overlap="allow")), fake)
        assert [T0 + timedelta(seconds=s) for s in range(1, 11)] == fired(fake)
        assert all(r.started == r.scheduled_for for r in fake.runs)
        assert ["scheduler.started", "scheduler.stopping", "scheduler.stopped"] == [
            e["event"] for e in logs if e["event"].startswith("scheduler.")
        ]
        assert 1 == events(logs, "scheduler.started")[0]["tasks"]

    def test_only_the_first_and_last_of_a_burst_yield_the_cpu(self) -> None:
        """Runs due together start back to back; the first and the last let the new children run."""
        fake = FakeClock(T0, T0 + timedelta(seconds=1, milliseconds=500))
        drive(config(*(task(f"t{i}", "* * * * * *") for i in range(4))), fake)
        assert [True, False, False, True] == fake.yields

    def test_disabled_task_never_fires(self) -> None:
        """enabled: false keeps a task out of the schedule."""
        fake = FakeClock(T0, T0 + timedelta(seconds=5))
        drive(config(task("off", "* * * * * *", enabled=False), task("on", "*/2 * * * * *")), fake)
        assert [] == fired(fake, "off")
        assert [T0 + timedelta(seconds=s) for s in (2, 4)] == fired(fake, "on")

    def test_jitter_delays_within_bound(self) -> None:
        """Jitter delays the start by less than `jitter`, and scheduled_for stays the instant."""
        fake = FakeClock(T0, T0 + timedelta(minutes=5, seconds=30))
        drive(config(task("j", "* * * * *", jitter_s=20.0)), fake)
        assert [T0 + timedelta(minutes=m) for m in range(1, 6)] == fired(fake)
        delays = [(r.started - r.scheduled_for).total_seconds() for r in fake.runs]
        assert all(0 <= d < 20 for d in delays)
        assert len(set(delays)) > 1

    def test_a_failing_start_is_logged_and_the_clock_goes_on(self) -> None:
        """A bug while starting a run becomes a scheduler.error event; later fires still happen."""
        fake = FakeClock(T0, T0 + timedelta(seconds=3, milliseconds=500))
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
        fake = FakeClock(T0 + timedelta(seconds=30), T0 + timedelta(hours=1, minutes=1, seconds=30))
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
        fake = FakeClock(T0 + timedelta(hours=23, minutes=59), T0 + timedelta(days=1, hours=1))
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
        fake = FakeClock(T0 + timedelta(hours=23, minutes=59), T0 + timedelta(days=1, hours=1))
        fake.at(
            T0 + timedelta(hours=23, minutes=59, seconds=30), fake.step_to(T0 + timedelta(days=1, minutes=4))
        )
        logs = drive(config(spec), fake)
        assert [T0 + timedelta(days=1)] == fired(fake)
        assert [] == events(logs, "task.missed")

    def test_clock_stepping_back_never_refires(self) -> None:
        """When the wall clock steps back, instants already fired are not fired again."""
        fake = FakeClock(T0 + timedelta(seconds=30), T0 + timedelta(minutes=8, seconds=30))
        fake.at(T0 + timedelta(minutes=5, seconds=30), fake.step_to(T0 + timedelta(minutes=2, seconds=30)))
        drive(config(task("m", "* * * * *")), fake)
        got = fired(fake)
        assert len(got) == len(set(got))
        assert [T0 + timedelta(minutes=m) for m in (1, 2, 3, 4, 5, 6, 7, 8)] == got


class TestOverlap:
    def test_skip_logs_and_lets_it_finish(self) -> None:
        """overlap: skip starts nothing while a run is going and logs task.skipped."""
        fake = FakeClock(T0, T0 + timedelta(seconds=6, milliseconds=500))
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
        fake = FakeClock(T0, T0 + timedelta(seconds=4, milliseconds=500))
        fake.durations["slow"] = 10
        drive(config(task("slow", "* * * * * *", overlap="allow")), fake)
        assert 4 == len(fired(fake))

    def test_replace_stops_the_running_one(self) -> None:
        """overlap: replace stops the running run as a timeout would, then starts the new one."""
        fake = FakeClock(T0, T0 + timedelta(seconds=3, milliseconds=500))
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
        fake = FakeClock(T0, T0 + timedelta(seconds=10, milliseconds=500))
        fake.at(
            T0 + timedelta(seconds=2, milliseconds=500), lambda: fake.clock and fake.clock.request_reload()
        )
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

        fake = FakeClock(T0, T0 + timedelta(seconds=4, milliseconds=500))
        fake.at(
            T0 + timedelta(seconds=1, milliseconds=500), lambda: fake.clock and fake.clock.request_reload()
        )
        logs = drive(config(task("a", "* * * * * *")), fake, reload_config=broken)
        (invalid,) = events(logs, "config.invalid")
        assert "unknown key 'comand'" in invalid["error"]
        assert 4 == len(fired(fake, "a"))

    def test_file_change_reloads(self) -> None:
        """A changed file is reloaded on the next poll, with trigger=file; an unchanged one is not."""
        changes = iter([False, False, True])
        new = config(task("a", "*/2 * * * * *"))
        fake = FakeClock(T0, T0 + timedelta(seconds=6, milliseconds=500))
        logs = drive(
            config(task("a", "* * * * * *")),
            fake,
            reload_config=lambda: new,
            watcher=FakeWatcher(changes),
        )
        (reloaded,) = events(logs, "config.reloaded")
        assert ("file", ["a"]) == (reloaded["trigger"], reloaded["changed"])
        assert [T0 + timedelta(seconds=s) for s in (1, 2, 3, 4, 6)] == fired(fake, "a")

    def test_unchanged_task_keeps_its_fire(self) -> None:
        """Reloading an identical file changes nothing and keeps jittered fire times."""
        cfg = config(task("a", "* * * * *", jitter_s=30.0))
        fake = FakeClock(T0, T0 + timedelta(minutes=3))
        fake.at(T0 + timedelta(seconds=50), lambda: fake.clock and fake.clock.request_reload())
        logs = drive(cfg, fake, reload_config=lambda: replace(cfg))
        (reloaded,) = events(logs, "config.reloaded")
        assert ([], [], []) == (reloaded["added"], reloaded["removed"], reloaded["changed"])
        assert [T0 + timedelta(minutes=m) for m in (1, 2)] == fired(fake)


class TestShutdown:
    def test_stop_terminates_running_runs(self) -> None:
        """On stop, every running run is stopped and the clock says stopping then stopped."""
        fake = FakeClock(T0, T0 + timedelta(seconds=2, milliseconds=500))
        fake.durations["long"] = None
        logs = drive(config(task("long", "* * * * * *", overlap="allow")), fake)
        assert 2 == len(fake.runs)
        assert all(r.stopped_with == "killed" and r.done for r in fake.runs)
        stopping = events(logs, "scheduler.stopping")[0]
        assert 2 == stopping["running"]
        assert "scheduler.stopped" == logs[-1]["event"]


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()
