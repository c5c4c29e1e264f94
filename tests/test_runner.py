"""Tests for scheduler.runner: real processes, each awaited with a deadline."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
import structlog

from scheduler import runner, schedule
from scheduler.config import TaskSpec
from scheduler.runner import Run, RunResult, _LineSplitter, reap_orphans, start_run
from scheduler.runs import RUN_TAIL_BYTES

T = TypeVar("T")

SCHEDULED_FOR = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
TEST_DEADLINE_S = 15.0


def _task(command: str | tuple[str, ...], **overrides: Any) -> TaskSpec:
    zone = ZoneInfo("UTC")
    return TaskSpec(
        name="t",
        schedule=schedule.parse("* * * * *", name="t", zone=zone),
        command=command,
        timezone="UTC",
        **overrides,
    )


class _Recorder:
    """A structlog logger that keeps every event dict (with its level) and prints nothing."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.log = structlog.wrap_logger(
            structlog.ReturnLogger(),
            processors=[self._record],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        )

    def _record(self, _logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
        self.events.append({**event_dict, "level": method_name})
        raise structlog.DropEvent

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    def lines(self, stream: str | None = None) -> list[str]:
        return [e["line"] for e in self.named("task.output") if stream in (None, e["stream"])]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a test coroutine on a fresh loop, failing instead of hanging when it overruns."""
    return asyncio.run(asyncio.wait_for(coro, TEST_DEADLINE_S))


async def _start(task: TaskSpec, rec: _Recorder, **overrides: Any) -> Run:
    kwargs: dict[str, Any] = {
        "run_id": "r1",
        "trigger": "schedule",
        "scheduled_for": SCHEDULED_FOR,
        "log": rec.log,
        "env": dict(os.environ),
    }
    kwargs.update(overrides)
    return start_run(task, **kwargs)


async def _execute(task: TaskSpec, rec: _Recorder, **overrides: Any) -> RunResult:
    run = await _start(task, rec, **overrides)
    return await run.wait()


async def _until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


def _is_dead(pid: int) -> bool:
    """True when `pid` no longer runs: gone from /proc, or a zombie nobody reaped yet."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] == "Z"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture(params=["posix_spawn", "popen", "waiter_thread"])
def spawner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way to start a child (posix_spawn, or Popen as for a task with a cwd) and to learn of its exit
    (a pidfd on the loop, or a thread when the kernel has no pidfds)."""
    if request.param == "popen":
        monkeypatch.setattr(runner, "_posix_spawn_works", False)
    elif request.param == "waiter_thread":
        monkeypatch.setattr(runner, "_pidfd_works", False)
    return str(request.param)


@pytest.mark.usefixtures("spawner")
class TestStartRun:
    def test_success_sees_environment(self) -> None:
        """The child sees env, task.env and the SCHEDULER_* variables; started and finished are logged."""
        rec = _Recorder()
        task = _task(
            'printf "%s|%s|%s|%s|%s|%s\\n" "$SCHEDULER_TASK" "$SCHEDULER_RUN_ID" '
            '"$SCHEDULER_SCHEDULED_FOR" "$SCHEDULER_TRIGGER" "$GREETING" "$BASE_VAR"',
            env={"GREETING": "hello"},
        )
        paris = datetime(2026, 11, 27, 10, 0, tzinfo=ZoneInfo("Europe/Paris"))
        env = {**os.environ, "BASE_VAR": "base", "GREETING": "overridden"}

        result = _run(_execute(task, rec, trigger="run-now", scheduled_for=paris, env=env))

        assert RunResult("succeeded", 0, None, result.duration_s) == result
        assert 0 == result.shell_exit_status
        assert ["t|r1|2026-11-27T09:00:00+00:00|run-now|hello|base"] == rec.lines("stdout")
        [started] = rec.named("task.started")
        assert {"event", "level", "task", "run_id", "trigger", "scheduled_for", "pid"} == set(started)
        assert ("info", "t", "r1", "run-now") == (
            started["level"],
            started["task"],
            started["run_id"],
            started["trigger"],
        )
        assert "2026-11-27T09:00:00+00:00" == started["scheduled_for"]
        assert isinstance(started["pid"], int)
        [finished] = rec.named("task.finished")
        assert {
            "event": "task.finished",
            "level": "info",
            "task": "t",
            "run_id": "r1",
            "status": "succeeded",
            "exit_code": 0,
            "signal": None,
            "duration_s": result.duration_s,
        } == finished
        assert ["task.started", "task.output", "task.finished"] == [e["event"] for e in rec.events]

    def test_task_env_values_never_logged(self) -> None:
        """The values of task.env appear in no event."""
        rec = _Recorder()

        _run(_execute(_task("true", env={"API_TOKEN": "s3cr3t-value"}), rec))

        assert "s3cr3t-value" not in repr(rec.events)

    def test_failing_exit_code(self) -> None:
        """A non-zero exit is "failed" with its exit code, logged as a warning."""
        rec = _Recorder()

        result = _run(_execute(_task("exit 3"), rec))

        assert ("failed", 3, None, None) == (result.status, result.exit_code, result.signal, result.error)
        assert 3 == result.shell_exit_status
        [finished] = rec.named("task.finished")
        assert ("warning", "failed", 3) == (finished["level"], finished["status"], finished["exit_code"])
        assert "error" not in finished

    def test_argv_runs_without_shell(self) -> None:
        """A tuple command is exec'd as argv: no word splitting, no expansion."""
        rec = _Recorder()

        result = _run(_execute(_task(("printf", "%s\\n", "a b  $HOME;*")), rec))

        assert "succeeded" == result.status
        assert ["a b  $HOME;*"] == rec.lines()

    def test_argv_command_not_found(self) -> None:
        """An argv program that does not exist fails at once with 127 and an error, without task.started."""
        rec = _Recorder()

        result = _run(_execute(_task(("/nonexistent/bin/x", "arg")), rec))

        assert ("failed", None, None) == (result.status, result.exit_code, result.signal)
        assert "command not found: /nonexistent/bin/x" == result.error
        assert 127 == result.shell_exit_status
        assert [] == rec.named("task.started")
        [finished] = rec.named("task.finished")
        assert ("warning", "failed", None, "command not found: /nonexistent/bin/x") == (
            finished["level"],
            finished["status"],
            finished["exit_code"],
            finished["error"],
        )

    def test_relative_argv_resolved_in_cwd(self, tmp_path: Path) -> None:
        """A relative program path is looked up from task.cwd, and reported as given when missing."""
        rec = _Recorder()

        result = _run(_execute(_task(("bin/x",), cwd=str(tmp_path)), rec))

        assert "command not found: bin/x" == result.error
        assert 127 == result.shell_exit_status

    def test_shell_command_not_found(self) -> None:
        """A str command that does not exist gets 127 from the shell itself."""
        rec = _Recorder()

        result = _run(_execute(_task("definitely-not-a-command-4f2a"), rec))

        assert ("failed", 127, None) == (result.status, result.exit_code, result.error)
        assert 127 == result.shell_exit_status
        assert 1 == len(rec.named("task.started"))

    def test_argv_not_executable(self, tmp_path: Path) -> None:
        """An argv program without the execute bit fails with 126 and an error."""
        script = tmp_path / "script"
        script.write_text("#!/bin/sh\necho hi\n")
        rec = _Recorder()

        result = _run(_execute(_task((str(script),)), rec))

        assert ("failed", None) == (result.status, result.exit_code)
        assert f"command not executable: {script} (Permission denied)" == result.error
        assert 126 == result.shell_exit_status

    def test_shell_not_executable(self, tmp_path: Path) -> None:
        """A str command naming a non-executable file gets 126 from the shell itself."""
        (tmp_path / "script").write_text("#!/bin/sh\necho hi\n")
        rec = _Recorder()

        result = _run(_execute(_task("./script", cwd=str(tmp_path)), rec))

        assert ("failed", 126, None) == (result.status, result.exit_code, result.error)
        assert 126 == result.shell_exit_status

    def test_missing_cwd(self, tmp_path: Path) -> None:
        """A missing working directory fails with 127 and an error naming the directory and the command."""
        missing = tmp_path / "gone"
        rec = _Recorder()

        result = _run(_execute(_task("echo hi", cwd=str(missing)), rec))

        assert ("failed", None) == (result.status, result.exit_code)
        assert f"working directory not found: {missing} (command: echo hi)" == result.error
        assert 127 == result.shell_exit_status

    def test_runs_in_cwd_with_stdin_from_dev_null(self, tmp_path: Path) -> None:
        """The child runs in task.cwd and reads /dev/null."""
        rec = _Recorder()

        _run(_execute(_task("pwd; readlink /proc/self/fd/0", cwd=str(tmp_path)), rec))

        assert [str(tmp_path), "/dev/null"] == rec.lines()

    def test_own_process_group(self) -> None:
        """Each run leads a session and process group of its own."""
        rec = _Recorder()

        async def scenario() -> tuple[int, int, int]:
            run = await _start(_task("sleep 5"), rec)
            assert run.pid is not None
            ids = (run.pid, os.getpgid(run.pid), os.getsid(run.pid))
            run.kill()
            await run.wait()
            return ids

        pid, pgid, sid = _run(scenario())

        assert (pid, pid) == (pgid, sid)
        assert os.getpgid(0) != pgid

    def test_died_by_signal(self) -> None:
        """A child killed by a signal (not by stop) is "killed" with the signal's name and 128+N."""
        rec = _Recorder()

        result = _run(_execute(_task("kill -USR1 $$"), rec))

        assert ("killed", None, "SIGUSR1") == (result.status, result.exit_code, result.signal)
        assert 128 + signal.SIGUSR1 == result.shell_exit_status
        [finished] = rec.named("task.finished")
        assert ("warning", "SIGUSR1", None) == (finished["level"], finished["signal"], finished["exit_code"])

    @pytest.mark.timing
    def test_background_process_holding_stdout(self) -> None:
        """A background process that keeps stdout open delays the end of the run by about a second only."""
        rec = _Recorder()

        async def scenario() -> tuple[RunResult, float, int]:
            run = await _start(_task("sleep 30 & echo started"), rec)
            assert run.pid is not None
            begun = time.monotonic()
            try:
                result = await run.wait()
            finally:
                _kill_group(run.pid)
            return result, time.monotonic() - begun, run.pid

        result, elapsed, _ = _run(scenario())

        assert ("succeeded", 0) == (result.status, result.exit_code)
        assert ["started"] == rec.lines()
        assert elapsed < 2.0
        assert result.duration_s < 1.0

    def test_last_line_logged_when_pipes_are_closed_on_the_child(self) -> None:
        """A last line without newline is logged when the drain time is over, as it would be at EOF."""
        rec = _Recorder()

        async def scenario() -> RunResult:
            run = await _start(_task("sleep 30 & printf partial"), rec)
            assert run.pid is not None
            try:
                return await run.wait()
            finally:
                _kill_group(run.pid)

        result = _run(scenario())

        assert ("succeeded", ["partial"]) == (result.status, rec.lines())


class TestHookRuns:
    """A hook (kind="hook") is spawned like a task, but its events are hook.*, never task.*."""

    def test_a_failing_hook_logs_hook_events_only(self) -> None:
        """hook.started (the pid), hook.output and hook.finished with the run's id and the hook's name,
        and no task.started, task.output or task.finished that an alert on failed tasks would see."""
        rec = _Recorder()
        log = rec.log.bind(hook="on_failure")

        result = _run(
            _execute(_task("echo alerting; exit 4"), rec, trigger="on_failure", log=log, kind="hook")
        )

        assert ("failed", 4) == (result.status, result.exit_code)
        assert ["hook.started", "hook.output", "hook.finished"] == [e["event"] for e in rec.events]
        started, output, finished = rec.events
        assert {"event", "level", "task", "run_id", "hook", "pid"} == set(started)
        assert ("t", "r1", "on_failure") == (started["task"], started["run_id"], started["hook"])
        assert ("stdout", "alerting", "on_failure") == (output["stream"], output["line"], output["hook"])
        assert {
            "event": "hook.finished",
            "level": "warning",
            "task": "t",
            "run_id": "r1",
            "hook": "on_failure",
            "status": "failed",
            "exit_code": 4,
            "signal": None,
            "duration_s": result.duration_s,
        } == finished

    def test_a_hook_that_succeeds(self) -> None:
        """A hook that exits 0 ends with hook.finished, status succeeded, at level info."""
        rec = _Recorder()

        _run(_execute(_task("true"), rec, log=rec.log.bind(hook="on_success"), kind="hook"))

        [finished] = rec.named("hook.finished")
        assert ("info", "succeeded", "on_success") == (
            finished["level"],
            finished["status"],
            finished["hook"],
        )

    @pytest.mark.usefixtures("spawner")
    def test_a_hook_that_cannot_start_is_hook_failed(self) -> None:
        """A hook whose command cannot start logs hook.failed with the error, and nothing else."""
        rec = _Recorder()

        result = _run(
            _execute(
                _task(("/nonexistent/bin/alert",)), rec, log=rec.log.bind(hook="on_failure"), kind="hook"
            )
        )

        assert "failed" == result.status
        assert [
            {
                "event": "hook.failed",
                "level": "warning",
                "task": "t",
                "run_id": "r1",
                "hook": "on_failure",
                "error": "command not found: /nonexistent/bin/alert",
            }
        ] == rec.events


@pytest.mark.usefixtures("spawner")
class TestOutput:
    def test_streams_tagged(self) -> None:
        """Each line is one task.output event tagged with its stream."""
        rec = _Recorder()

        _run(_execute(_task("echo out1; echo err1 >&2; echo out2"), rec))

        assert ["out1", "out2"] == rec.lines("stdout")
        assert ["err1"] == rec.lines("stderr")
        for event in rec.named("task.output"):
            assert {"event", "level", "task", "run_id", "stream", "line"} == set(event)
            assert "info" == event["level"]

    def test_crlf_and_last_line_without_newline(self) -> None:
        """A trailing "\\r" is stripped, empty lines kept, and a last line without newline logged at EOF."""
        rec = _Recorder()

        _run(_execute(_task("printf 'a\\r\\n\\nb'"), rec))

        assert ["a", "", "b"] == rec.lines()

    def test_long_line_truncated(self) -> None:
        """A line over 8 KiB is cut to 8 KiB with truncated=True; the next line is intact."""
        rec = _Recorder()

        _run(_execute(_task("head -c 10000 /dev/zero | tr '\\0' a; echo; echo next"), rec))

        events = rec.named("task.output")
        assert ["a" * 8192, "next"] == [e["line"] for e in events]
        assert True is events[0]["truncated"]
        assert "truncated" not in events[1]

    def test_truncation_boundary(self) -> None:
        """Exactly 8 KiB is not cut, even before "\\r\\n"; one byte more is."""
        rec = _Recorder()
        code = "import sys; sys.stdout.write('a'*8192 + '\\n' + 'b'*8192 + '\\r\\n' + 'c'*8193 + '\\n')"

        _run(_execute(_task((sys.executable, "-c", code)), rec))

        events = rec.named("task.output")
        assert ["a" * 8192, "b" * 8192, "c" * 8192] == [e["line"] for e in events]
        assert [False, False, True] == [e.get("truncated", False) for e in events]

    def test_invalid_utf8_replaced(self) -> None:
        """Bytes that are not UTF-8 become U+FFFD."""
        rec = _Recorder()

        _run(_execute(_task("printf '\\377ok\\n'"), rec))

        assert ["\ufffdok"] == rec.lines()

    @pytest.mark.timing
    def test_60_mb_line_keeps_memory_bounded(self) -> None:
        """60 MB without a newline gives one truncated line, and the daemon's RSS stays flat."""
        rec = _Recorder()
        before_kib = _rss_kib()

        async def scenario() -> tuple[RunResult, int]:
            run = await _start(_task("head -c 60000000 /dev/zero | tr '\\0' a"), rec)
            peak_kib = before_kib
            while not run.done:
                peak_kib = max(peak_kib, _rss_kib())
                await asyncio.sleep(0.01)
            return await run.wait(), peak_kib

        result, peak_kib = _run(scenario())

        assert "succeeded" == result.status
        events = rec.named("task.output")
        assert [("a" * 8192, True)] == [(e["line"], e["truncated"]) for e in events]
        assert peak_kib - before_kib < 20 * 1024
        assert _rss_kib() - before_kib < 20 * 1024

    @pytest.mark.timing
    def test_flood_does_not_starve_loop(self) -> None:
        """While one task floods its output, other timers on the loop still fire on time."""
        rec = _Recorder()

        async def scenario() -> float:
            run = await _start(_task("seq 1 50000"), rec)
            loop = asyncio.get_running_loop()
            worst_lag = 0.0
            while not run.done:
                asked = loop.time()
                await asyncio.sleep(0.005)
                worst_lag = max(worst_lag, loop.time() - asked - 0.005)
            await run.wait()
            return worst_lag

        worst_lag = _run(scenario())

        lines = rec.lines()
        assert (50000, "1", "50000") == (len(lines), lines[0], lines[-1])
        assert worst_lag < 0.2

    def test_no_capture_passes_output_through(self, capfd: pytest.CaptureFixture[str]) -> None:
        """Without capture_output the child writes to the daemon's own stdout and stderr, unlogged."""
        rec = _Recorder()

        result = _run(_execute(_task("echo to-stdout; echo to-stderr >&2"), rec, capture_output=False))

        assert "succeeded" == result.status
        assert [] == rec.named("task.output")
        captured = capfd.readouterr()
        assert ("to-stdout\n", "to-stderr\n") == (captured.out, captured.err)

    def test_output_tail_keeps_the_last_lines(self) -> None:
        """output_tail holds the last 4 KiB or a little more of the lines, whole lines."""

        async def main() -> str:
            run = await _start(_task("seq 1 5000; echo last"), _Recorder())
            await run.wait()
            return run.output_tail

        tail = _run(main())

        lines = tail.split("\n")
        assert "last" == lines[-1]
        assert [str(n) for n in range(int(lines[0]), 5001)] == lines[:-1]
        assert RUN_TAIL_BYTES <= len(tail.encode()) < RUN_TAIL_BYTES + 10

    def test_output_tail_of_a_short_output_is_all_of_it(self) -> None:
        """A short output is kept whole, stderr too; without capture there is no tail."""

        async def main(capture: bool) -> str:
            run = await _start(_task("echo a; sleep 0.1; echo b >&2"), _Recorder(), capture_output=capture)
            await run.wait()
            return run.output_tail

        assert "a\nb" == _run(main(True))
        assert "" == _run(main(False))


class TestLineSplitter:
    def test_chunking_does_not_matter(self) -> None:
        """Feeding one byte at a time gives the same lines as feeding everything at once."""
        data = b"x" * 9000 + b"\nshort\r\n" + b"y" * 8193 + b"\n" + b"z" * 8192 + b"\r\ntail"

        def split(chunks: list[bytes]) -> list[tuple[bytes, bool]]:
            splitter = _LineSplitter()
            out = [line for chunk in chunks for line in splitter.feed(chunk)]
            return out + list(splitter.close())

        whole = split([data])

        assert [
            (b"x" * 8192, True),
            (b"short", False),
            (b"y" * 8192, True),
            (b"z" * 8192, False),
            (b"tail", False),
        ] == whole
        assert whole == split([data[i : i + 1] for i in range(len(data))])


@pytest.mark.usefixtures("spawner")
class TestStop:
    @pytest.mark.timing
    def test_timeout_kills_grandchildren(self, tmp_path: Path) -> None:
        """On timeout the whole group gets SIGTERM, grandchildren included, and the run is "timed_out"."""
        pid_file = tmp_path / "grandchild.pid"
        rec = _Recorder()
        task = _task(f"sleep 30 & echo $! > {pid_file}; sleep 30", timeout_s=0.5, kill_grace_s=1.0)

        async def scenario() -> tuple[RunResult, float]:
            begun = time.monotonic()
            result = await _execute(task, rec)
            grandchild = int(pid_file.read_text())
            await _until(lambda: _is_dead(grandchild), timeout_s=2.0)
            return result, time.monotonic() - begun

        result, elapsed = _run(scenario())

        assert ("timed_out", None, "SIGTERM") == (result.status, result.exit_code, result.signal)
        assert 124 == result.shell_exit_status
        assert 0.5 <= result.duration_s < 1.5
        assert elapsed < 3.0
        [finished] = rec.named("task.finished")
        assert ("warning", "timed_out", "SIGTERM") == (
            finished["level"],
            finished["status"],
            finished["signal"],
        )

    @pytest.mark.timing
    def test_sigkill_after_grace_when_sigterm_ignored(self) -> None:
        """A group that ignores SIGTERM is SIGKILLed kill_grace_s after stop() and ends as "killed"."""
        rec = _Recorder()
        task = _task("trap '' TERM; echo ready; while :; do sleep 0.05; done", kill_grace_s=0.3)

        async def scenario() -> tuple[RunResult, float]:
            run = await _start(task, rec)
            await _until(lambda: "ready" in rec.lines())
            stopped = time.monotonic()
            run.stop()
            return await run.wait(), time.monotonic() - stopped

        result, elapsed = _run(scenario())

        assert ("killed", None, "SIGKILL") == (result.status, result.exit_code, result.signal)
        assert 128 + signal.SIGKILL == result.shell_exit_status
        assert 0.3 <= elapsed < 2.0

    @pytest.mark.timing
    def test_second_stop_keeps_status_and_shortens_grace(self) -> None:
        """A second stop() keeps the first status and may only bring the SIGKILL forward."""
        rec = _Recorder()
        task = _task("trap '' TERM; echo ready; while :; do sleep 0.05; done", kill_grace_s=30.0)

        async def scenario() -> tuple[RunResult, float]:
            run = await _start(task, rec)
            await _until(lambda: "ready" in rec.lines())
            stopped = time.monotonic()
            run.stop("timed_out")
            run.stop("killed", kill_grace_s=0.2)
            run.stop("killed", kill_grace_s=10.0)
            return await run.wait(), time.monotonic() - stopped

        result, elapsed = _run(scenario())

        assert ("timed_out", "SIGKILL") == (result.status, result.signal)
        assert 0.2 <= elapsed < 2.0

    def test_stopped_status_whatever_the_exit_code(self) -> None:
        """A stopped run whose child exits 0 on SIGTERM is still "killed", and never exits 0 in a shell."""
        rec = _Recorder()
        task = _task("trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done")

        async def scenario() -> RunResult:
            run = await _start(task, rec)
            await _until(lambda: "ready" in rec.lines())
            run.stop()
            return await run.wait()

        result = _run(scenario())

        assert ("killed", 0, None) == (result.status, result.exit_code, result.signal)
        assert 128 + signal.SIGTERM == result.shell_exit_status

    @pytest.mark.timing
    def test_leftovers_keep_the_grace_period(self, tmp_path: Path) -> None:
        """When `sh` dies on SIGTERM, the worker under it still gets to clean up and log before SIGKILL."""
        worker = tmp_path / "worker.py"
        worker.write_text(
            "import signal, sys, time\n"
            "def on_term(signum, frame):\n"
            "    time.sleep(0.3)\n"
            "    print('cleaned up', flush=True)\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, on_term)\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    time.sleep(0.05)\n"
        )
        rec = _Recorder()
        task = _task(f"'{sys.executable}' '{worker}'; true", kill_grace_s=5.0)

        async def scenario() -> tuple[RunResult, float]:
            run = await _start(task, rec)
            await _until(lambda: "ready" in rec.lines())
            stopped = time.monotonic()
            run.stop()
            return await run.wait(), time.monotonic() - stopped

        result, elapsed = _run(scenario())

        assert ["ready", "cleaned up"] == rec.lines()
        assert ("killed", "SIGTERM") == (result.status, result.signal)
        assert 0.3 <= elapsed < 2.0

    def test_signal_group_forwards(self) -> None:
        """signal_group() delivers an arbitrary signal to the whole of the run's group."""
        rec = _Recorder()
        task = _task("trap 'echo got-usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done")

        async def scenario() -> RunResult:
            run = await _start(task, rec)
            await _until(lambda: "ready" in rec.lines())
            run.signal_group(signal.SIGUSR1)
            return await run.wait()

        result = _run(scenario())

        assert ("failed", 3) == (result.status, result.exit_code)
        # The shell's `sleep` child got SIGUSR1 too (the shell may say so on stderr).
        assert ["ready", "got-usr1"] == rec.lines("stdout")

    def test_finished_run_ignores_stop_kill_and_signals(self) -> None:
        """After the run has finished, stop(), kill() and signal_group() do nothing."""
        rec = _Recorder()

        async def scenario() -> tuple[RunResult, RunResult, bool]:
            run = await _start(_task("true"), rec)
            first = await run.wait()
            run.stop()
            run.kill()
            run.signal_group(signal.SIGTERM)
            return first, await run.wait(), run.done

        first, second, done = _run(scenario())

        assert first is second
        assert ("succeeded", True) == (second.status, done)
        assert 1 == len(rec.named("task.finished"))

    def test_loop_shutdown_kills_the_group(self, tmp_path: Path) -> None:
        """A run still going when its loop shuts down has its whole group SIGKILLed, not left untracked."""
        pid_file = tmp_path / "background.pid"
        rec = _Recorder()

        async def scenario() -> int:
            run = await _start(_task(f"sleep 30 & echo $! > {pid_file}; echo ready; sleep 30"), rec)
            await _until(lambda: "ready" in rec.lines())
            assert run.pid is not None
            return run.pid

        pid = _run(scenario())
        background = int(pid_file.read_text())
        try:
            deadline = time.monotonic() + 5.0
            while not (_is_dead(pid) and _is_dead(background)) and time.monotonic() < deadline:
                time.sleep(0.01)
            dead = (_is_dead(pid), _is_dead(background))
        finally:
            _kill_group(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # reaped by the run's waiter thread

        assert (True, True) == dead

    def test_failed_start_is_done(self) -> None:
        """A run that could not start is done at once and ignores stop()."""
        rec = _Recorder()

        async def scenario() -> tuple[bool, int | None, RunResult]:
            run = await _start(_task(("/nonexistent/x",)), rec)
            run.stop()
            return run.done, run.pid, await run.wait()

        done, pid, result = _run(scenario())

        assert (True, None, "failed") == (done, pid, result.status)


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


# Prints the descriptors the child has open besides 0, 1 and 2.
_LIST_FDS = (
    "import os\n"
    "names = os.listdir('/proc/self/fd')\n"
    "print(sorted(fd for fd in map(int, names) if fd > 2 and os.path.exists(f'/proc/self/fd/{fd}')))\n"
)


@pytest.mark.usefixtures("spawner")
class TestSpawn:
    def test_program_looked_up_in_task_path(self, tmp_path: Path) -> None:
        """A bare program name is looked up in the child's PATH (task.env's), not in the daemon's."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        program = bin_dir / "hello-4f2a"
        program.write_text("#!/bin/sh\necho hello from $0\n")
        program.chmod(0o755)
        rec = _Recorder()

        result = _run(_execute(_task(("hello-4f2a",), env={"PATH": f"{tmp_path / 'none'}:{bin_dir}"}), rec))

        assert "succeeded" == result.status
        assert [f"hello from {program}"] == rec.lines()

    def test_lookup_passes_over_a_program_that_cannot_run(self, tmp_path: Path) -> None:
        """A program without the execute bit early in PATH is passed over for an executable one later."""
        first, second = tmp_path / "a", tmp_path / "b"
        for directory, mode in ((first, 0o644), (second, 0o755)):
            directory.mkdir()
            (directory / "prog").write_text(f"#!/bin/sh\necho {directory.name}\n")
            (directory / "prog").chmod(mode)
        rec = _Recorder()

        result = _run(_execute(_task(("prog",), env={"PATH": f"{first}:{second}"}), rec))

        assert ("succeeded", ["b"]) == (result.status, rec.lines())

    def test_lookup_reports_a_program_that_cannot_run(self, tmp_path: Path) -> None:
        """When the only program found has no execute bit, the run fails with 126, as a shell would."""
        (tmp_path / "prog").write_text("#!/bin/sh\necho hi\n")
        rec = _Recorder()

        result = _run(_execute(_task(("prog",), env={"PATH": str(tmp_path)}), rec))

        assert ("command not executable: prog (Permission denied)", 126) == (
            result.error,
            result.shell_exit_status,
        )

    def test_lookup_not_found(self, tmp_path: Path) -> None:
        """A bare program name found nowhere in PATH fails with 127."""
        rec = _Recorder()

        result = _run(_execute(_task(("prog-4f2a",), env={"PATH": str(tmp_path)}), rec))

        assert ("command not found: prog-4f2a", 127) == (result.error, result.shell_exit_status)

    def test_exec_format_error(self, tmp_path: Path) -> None:
        """An executable file that is neither a binary nor a script fails with 126 and the reason."""
        program = tmp_path / "garbage"
        program.write_bytes(b"\x00\x01\x02\x03 not a program\n")
        program.chmod(0o755)
        rec = _Recorder()

        result = _run(_execute(_task((str(program),)), rec))

        assert (f"command not executable: {program} (Exec format error)", 126) == (
            result.error,
            result.shell_exit_status,
        )

    def test_shell_not_found(self) -> None:
        """A str command whose shell does not exist fails with 127, naming the shell."""
        rec = _Recorder()

        result = _run(_execute(_task("echo hi", shell="/nonexistent/sh"), rec))

        assert ("shell not found: /nonexistent/sh", 127) == (result.error, result.shell_exit_status)
        assert [] == rec.named("task.started")

    def test_signal_dispositions_as_popen(self) -> None:
        """The child blocks and ignores the signals a child of subprocess.Popen would: Python's ignored
        SIGPIPE and SIGXFSZ are back to the default. (glibc's posix_spawn leaves its two internal signals,
        32 and 33, ignored; glibc takes them back in any program that uses them.)"""
        command = ("grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status")
        expected = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
        rec = _Recorder()

        _run(_execute(_task(command), rec))

        glibc_internal = (1 << 31) | (1 << 32)
        masks = [
            (name, int(value, 16) & ~glibc_internal) for name, value in (s.split(":\t") for s in rec.lines())
        ]
        # The test's own process may have inherited those two ignored (make does this): compare without them.
        expected_masks = [
            (name, int(value, 16) & ~glibc_internal) for name, value in (s.split(":\t") for s in expected)
        ]
        assert expected_masks == masks
        assert 0 == dict(masks)["SigIgn"] & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1))

    def test_no_descriptor_of_the_daemon_leaks_into_children(self) -> None:
        """A child gets stdin, stdout and stderr only: not the pipes or pidfd of another run, nor any other
        descriptor of the daemon."""
        rec = _Recorder()

        async def scenario() -> RunResult:
            other = await _start(_task("sleep 5"), rec, run_id="other")
            try:
                return await _execute(_task((sys.executable, "-c", _LIST_FDS)), rec)
            finally:
                other.kill()
                await other.wait()

        result = _run(scenario())

        assert ("succeeded", ["[]"]) == (result.status, rec.lines())

    def test_no_descriptor_left_open(self, tmp_path: Path) -> None:
        """Runs of every kind (output, failure to start, timeout, stop, a background process holding the
        pipes, no capture) leave the daemon with the descriptors it had."""
        rec = _Recorder()
        tasks = [
            _task("echo out; echo err >&2"),
            _task("pwd", cwd=str(tmp_path)),
            _task(("/nonexistent/x",)),
            _task("echo hi", cwd=str(tmp_path / "missing")),
            _task("sleep 5", timeout_s=0.05, kill_grace_s=0.1),
            _task("sleep 30 & echo started"),
            _task("seq 1 1000"),
        ]

        async def scenario() -> list[RunResult]:
            results = [await _execute(task, rec) for task in tasks]
            results.append(await _execute(_task("true"), rec, capture_output=False))
            stopped = await _start(_task("echo ready; sleep 5"), rec)
            await _until(lambda: "ready" in rec.lines())
            stopped.stop(kill_grace_s=0.1)
            results.append(await stopped.wait())
            return results

        before = _open_fds()
        try:
            results = _run(scenario())
        finally:
            for event in rec.named("task.started"):
                _kill_group(event["pid"])

        assert before == _open_fds()
        assert ["succeeded", "succeeded", "failed", "failed", "timed_out", "succeeded"] == [
            r.status for r in results[:6]
        ]


# Runs in a child Python given an inheritable descriptor, as a daemon may inherit one from whoever started it.
_INHERITED_SCRIPT = """
import asyncio, os, sys
from datetime import UTC, datetime
import structlog
from scheduler import runner, schedule
from scheduler.config import TaskSpec
from zoneinfo import ZoneInfo

inherited = int(sys.argv[1])
assert os.get_inheritable(inherited)
task = TaskSpec(
    name="t",
    schedule=schedule.parse("* * * * *", name="t", zone=ZoneInfo("UTC")),
    command=(sys.executable, "-c", sys.argv[2]),
    timezone="UTC",
)

async def main():
    run = runner.start_run(
        task, run_id="r", trigger="schedule", scheduled_for=datetime.now(UTC),
        log=structlog.wrap_logger(structlog.ReturnLogger()),
        env=dict(os.environ), capture_output=False,
    )
    return await run.wait()

print(asyncio.run(main()).status, flush=True)
"""


class TestInheritedDescriptors:
    def test_not_passed_on(self) -> None:
        """A descriptor the daemon inherited without close-on-exec does not reach the tasks."""
        read_end, write_end = os.pipe()
        try:
            done = subprocess.run(
                [sys.executable, "-c", _INHERITED_SCRIPT, str(write_end), _LIST_FDS],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
                pass_fds=(write_end,),
            )
        finally:
            os.close(read_end)
            os.close(write_end)

        assert ("[]\nsucceeded\n", "") == (done.stdout, done.stderr)


class TestRunResult:
    @pytest.mark.parametrize(
        ("result", "expected"),
        [
            (RunResult("succeeded", 0, None, 0.1), 0),
            (RunResult("failed", 3, None, 0.1), 3),
            (RunResult("timed_out", None, "SIGTERM", 0.1), 124),
            (RunResult("timed_out", 0, None, 0.1), 124),
            (RunResult("killed", None, "SIGKILL", 0.1), 137),
            (RunResult("killed", None, "SIGINT", 0.1), 130),
            (RunResult("killed", None, "SIG40", 0.1), 168),
            (RunResult("killed", 0, None, 0.1), 143),
            (RunResult("killed", 2, None, 0.1), 2),
            (RunResult("failed", None, None, 0.0, "cannot start command x: Argument list too long"), 126),
        ],
    )
    def test_shell_exit_status(self, result: RunResult, expected: int) -> None:
        """shell_exit_status follows the shell: 124 timeout, 128+N signal, 126/127 cannot start."""
        assert expected == result.shell_exit_status


class TestThreads:
    def test_no_thread_per_child(self) -> None:
        """Concurrent runs cost no threads: exits are watched through pidfds on the loop."""
        rec = _Recorder()

        async def scenario() -> tuple[int, list[RunResult]]:
            runs = [await _start(_task("sleep 0.3"), rec, run_id=f"r{i}") for i in range(20)]
            threads = threading.active_count()
            return threads, [await run.wait() for run in runs]

        before = threading.active_count()
        during, results = _run(scenario())

        assert before == during
        assert ["succeeded"] * 20 == [r.status for r in results]


# Runs in a child Python made a subreaper, so that orphans come to it as they would to a PID 1 scheduler.
_REAP_SCRIPT = """
import ctypes, subprocess, time
from pathlib import Path
from scheduler.runner import reap_orphans

PR_SET_CHILD_SUBREAPER = 36
assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

def state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"

run = subprocess.Popen(["sh", "-c", "sleep 0.1 & echo $!"], stdout=subprocess.PIPE, start_new_session=True)
orphan = int(run.stdout.readline())
run.stdout.close()
run.wait()
leader = subprocess.Popen(["true"], start_new_session=True)
own = subprocess.Popen(["true"])
deadline = time.monotonic() + 5
while {state(orphan), state(leader.pid), state(own.pid)} != {"Z"}:
    assert time.monotonic() < deadline, "children did not exit"
    time.sleep(0.01)
reap_orphans()
print(state(orphan), state(leader.pid), state(own.pid), leader.wait(), own.wait())
"""


class TestReapOrphans:
    def test_reaps_only_orphans(self) -> None:
        """Orphaned zombies are reaped; a run leader's and an own-session child's are left to their owners."""
        done = subprocess.run(
            [sys.executable, "-c", _REAP_SCRIPT], capture_output=True, text=True, timeout=10, check=False
        )

        assert ("gone Z Z 0 0\n", "") == (done.stdout, done.stderr)

    def test_no_children_is_a_no_op(self) -> None:
        """Without zombie children it returns at once."""
        reap_orphans()
