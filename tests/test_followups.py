"""Tests for scheduler.followups alone: the retry policy, retries, the final ping and hooks, with fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog
from structlog.testing import capture_logs

from scheduler import hooks as hook_files
from scheduler.config import TaskSpec
from scheduler.followups import FollowUps, RetryPolicy
from scheduler.runner import RunResult
from scheduler.schedule import parse
from scheduler.state import Fire, TaskState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAILED = RunResult("failed", 1, None, 0.2)
SUCCEEDED = RunResult("succeeded", 0, None, 0.2)


def spec(name: str = "t", **kwargs: Any) -> TaskSpec:
    zone = ZoneInfo("UTC")
    return TaskSpec(
        name=name, schedule=parse("0 * * * *", name=name, zone=zone), command="true", timezone="UTC", **kwargs
    )


@dataclass(eq=False)
class FakeRun:
    task: TaskSpec
    run_id: str
    scheduled_for: datetime = T0
    output_tail: str = "the output"
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    result: RunResult = SUCCEEDED

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    async def wait(self) -> RunResult:
        await self.finished.wait()
        return self.result


class FakeHost:
    """Implements claims.Host for follow-ups: starts are recorded and succeed unless `refuse`."""

    def __init__(self) -> None:
        self.t = T0
        self.started: list[tuple[str, str, str | None, int]] = []
        self.refuse = False
        self.jobs: list[asyncio.Task[None]] = []
        self.pauses: set[str] = set()  # the tasks a pause holds back
        self.skips: list[tuple[str, str]] = []

    @property
    def stopping(self) -> bool:
        return False

    def paused(self, name: str, at: datetime) -> bool:
        return name in self.pauses

    def now(self) -> datetime:
        return self.t

    def is_current(self, state: TaskState) -> bool:
        return True

    def is_live(self, fire: Fire) -> bool:
        return True

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
        self.started.append((state.spec.name, trigger, run_id, attempt))
        return not self.refuse

    def task(self, name: str) -> TaskState | None:
        return None

    def skipped(self, name: str, instant: datetime, reason: str, log: Any, **fields: Any) -> None:
        self.skips.append((name, reason))

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        self.jobs.append(asyncio.get_running_loop().create_task(coro))


class FakePinger:
    def __init__(self) -> None:
        self.finishes: list[dict[str, Any]] = []

    def start(self, url: str, run_id: str, *, task: str, timeout_s: float) -> None:
        pass

    def finish(
        self,
        url: str,
        run_id: str,
        *,
        task: str,
        success: bool,
        exit_code: int | None,
        use_exit_code: bool,
        output: str,
        timeout_s: float,
    ) -> None:
        self.finishes.append({"task": task, "run_id": run_id, "success": success, "output": output})


def followups(
    states: Mapping[str, TaskState],
    host: FakeHost,
    pinger: FakePinger,
    hooks: list[Any] | None = None,
    *,
    starts: list[dict[str, Any]] | None = None,
    hook_result: RunResult = SUCCEEDED,
) -> FollowUps:
    def start_run(task: TaskSpec, **kwargs: Any) -> FakeRun:
        run = FakeRun(task, kwargs["run_id"], result=hook_result)
        if hooks is not None:
            hooks.append((kwargs["trigger"], task.command))
        if starts is not None:
            starts.append(kwargs)
        run.finished.set()
        return run

    return FollowUps(
        host,
        tasks=states,
        start_run=start_run,  # type: ignore[arg-type]
        runs=set(),
        env={},
        log=structlog.get_logger(),
        pinger=pinger,
        unclaimed=lambda name, instant, trigger, attempt: f"rec-{name}",
        wake=lambda: None,
    )


class TestRetryPolicy:
    @pytest.mark.parametrize(("attempt", "expected"), [(1, 10.0), (2, 30.0), (3, 60.0), (4, 60.0), (5, None)])
    def test_delay_grows_by_backoff_up_to_the_cap(self, attempt: int, expected: float | None) -> None:
        """delay × backoff^(attempt-1), capped; None once the retries are used up."""
        policy = RetryPolicy(retries=4, delay_s=10.0, backoff=3.0, max_delay_s=60.0)
        assert expected == policy.delay_after(attempt)

    def test_no_retries_means_no_delay(self) -> None:
        """A task without retries never waits for another attempt."""
        assert RetryPolicy.of(spec()).delay_after(1) is None


class TestFollowUps:
    def test_failure_schedules_a_retry_that_starts_when_due(self) -> None:
        """A failed run with retries left is retried after its delay, as a recorded `retry` attempt."""

        async def main() -> None:
            states = {"t": TaskState(spec(retries=1, retry_delay_s=5.0))}
            host, pinger = FakeHost(), FakePinger()
            f = followups(states, host, pinger)
            with capture_logs() as logs:
                f.run_ended(states["t"], FakeRun(states["t"].spec, "r1"), FAILED, 1)  # type: ignore[arg-type]
            assert [5.0] == [e["delay_s"] for e in logs if e["event"] == "task.retrying"]
            assert (T0 + timedelta(seconds=5)).timestamp() == f.wake_at()
            f.due((T0 + timedelta(seconds=4)).timestamp())
            assert [] == host.started
            f.due((T0 + timedelta(seconds=5)).timestamp())
            assert [("t", "retry", "rec-t", 2)] == host.started
            assert [] == pinger.finishes

        asyncio.run(main())

    def test_last_attempt_pings_and_hooks_once(self) -> None:
        """With no attempt left: one final failure ping and on_failure."""

        async def main() -> None:
            states = {"t": TaskState(spec(ping_url="https://hc/x", on_failure="alert"))}
            host, pinger = FakeHost(), FakePinger()
            hooks: list[tuple[str, object]] = []
            f = followups(states, host, pinger, hooks)
            f.run_ended(states["t"], FakeRun(states["t"].spec, "r1"), FAILED, 1)  # type: ignore[arg-type]
            await asyncio.gather(*host.jobs)
            assert [
                {"task": "t", "run_id": "r1", "success": False, "output": "the output"}
            ] == pinger.finishes
            assert [("on_failure", "alert")] == hooks

        asyncio.run(main())

    def test_store_output_false_keeps_output_out_of_the_ping(self) -> None:
        """store_output: false: the ping body is empty."""

        async def main() -> None:
            states = {"t": TaskState(spec(ping_url="https://hc/x", store_output=False))}
            host, pinger = FakeHost(), FakePinger()
            f = followups(states, host, pinger)
            f.run_ended(states["t"], FakeRun(states["t"].spec, "r1"), SUCCEEDED, 1)  # type: ignore[arg-type]
            assert [""] == [p["output"] for p in pinger.finishes]

        asyncio.run(main())

    def test_superseded_retry_reports_the_failure(self) -> None:
        """A scheduled run starting while a retry waits ends the retries and sends the failure ping."""

        async def main() -> None:
            states = {"t": TaskState(spec(retries=2, ping_url="https://hc/x"))}
            host, pinger = FakeHost(), FakePinger()
            f = followups(states, host, pinger)
            f.run_ended(states["t"], FakeRun(states["t"].spec, "r1"), FAILED, 1)  # type: ignore[arg-type]
            f.supersede(states["t"])
            f.due((T0 + timedelta(hours=1)).timestamp())
            assert ([], [False]) == (host.started, [p["success"] for p in pinger.finishes])

        asyncio.run(main())

    def test_a_skipped_retry_ends_the_retries_as_failed(self) -> None:
        """A retry the overlap policy refuses is the last attempt: the failure is reported."""

        async def main() -> None:
            states = {"t": TaskState(spec(retries=3, retry_delay_s=1.0, ping_url="https://hc/x"))}
            host, pinger = FakeHost(), FakePinger()
            host.refuse = True
            f = followups(states, host, pinger)
            f.run_ended(states["t"], FakeRun(states["t"].spec, "r1"), FAILED, 1)  # type: ignore[arg-type]
            f.due((T0 + timedelta(seconds=1)).timestamp())
            assert 1 == len(host.started)
            assert [False] == [p["success"] for p in pinger.finishes]

        asyncio.run(main())

    def test_a_pause_ends_the_retries_as_failed(self) -> None:
        """A retry due while a pause holds the task does not start: task.skipped (paused), and the failure
        is reported as for the last attempt."""

        async def main() -> None:
            states = {"t": TaskState(spec(retries=3, retry_delay_s=1.0, ping_url="https://hc/x"))}
            host, pinger = FakeHost(), FakePinger()
            f = followups(states, host, pinger)
            f.run_ended(states["t"], FakeRun(states["t"].spec, "r1"), FAILED, 1)  # type: ignore[arg-type]
            host.pauses.add("t")
            f.due((T0 + timedelta(seconds=1)).timestamp())
            assert ([], [("t", "paused")]) == (host.started, host.skips)
            assert [False] == [p["success"] for p in pinger.finishes]
            assert f.wake_at() is None

        asyncio.run(main())


class TestHooks:
    def test_a_hook_is_started_as_a_hook_of_the_run(self) -> None:
        """The hook is started as kind "hook", with the run's id and a log bound to the hook's name, so that
        its events are hook.started / hook.finished of that run, not a task run's."""

        async def main() -> None:
            states = {"t": TaskState(spec(on_failure="alert"))}
            host = FakeHost()
            starts: list[dict[str, Any]] = []
            f = followups(states, host, FakePinger(), starts=starts)
            with capture_logs() as logs:
                f.run_ended(states["t"], FakeRun(states["t"].spec, "r1"), FAILED, 1)  # type: ignore[arg-type]
                await asyncio.gather(*host.jobs)
                starts[0]["log"].info("hook.started")
            assert [("hook", "r1", "on_failure")] == [(s["kind"], s["run_id"], s["trigger"]) for s in starts]
            assert [{"event": "hook.started", "log_level": "info", "hook": "on_failure"}] == logs

        asyncio.run(main())

    def test_a_failing_hook_is_reported_once_by_the_runner(self) -> None:
        """A hook that ran and failed is the runner's hook.finished: the follow-ups add no event of their
        own (no second report, and never a task.finished)."""

        async def main() -> None:
            states = {"t": TaskState(spec(on_success="alert"))}
            host = FakeHost()
            f = followups(states, host, FakePinger(), hook_result=RunResult("failed", 9, None, 0.1))
            with capture_logs() as logs:
                f.run_ended(states["t"], FakeRun(states["t"].spec, "r1"), SUCCEEDED, 1)  # type: ignore[arg-type]
                await asyncio.gather(*host.jobs)
            assert [] == logs

        asyncio.run(main())

    def test_a_hook_whose_output_file_cannot_be_written_is_hook_failed(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the hook cannot even be prepared, hook.failed names the task, the run, the hook and why."""

        def prepare(*args: Any) -> Any:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(hook_files, "prepare", prepare)

        async def main() -> None:
            states = {"t": TaskState(spec(on_failure="alert"))}
            host = FakeHost()
            starts: list[dict[str, Any]] = []
            f = followups(states, host, FakePinger(), starts=starts)
            with capture_logs() as logs:
                f.run_ended(states["t"], FakeRun(states["t"].spec, "r1"), FAILED, 1)  # type: ignore[arg-type]
            assert [] == starts
            assert [
                {
                    "event": "hook.failed",
                    "log_level": "warning",
                    "task": "t",
                    "run_id": "r1",
                    "hook": "on_failure",
                    "error": "[Errno 28] No space left on device",
                }
            ] == logs

        asyncio.run(main())


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()
