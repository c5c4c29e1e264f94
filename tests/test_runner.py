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

from scheduler import schedule
from scheduler.config import TaskSpec
from scheduler.runner import Run, RunResult, _LineSplitter, install_child_watcher, reap_orphans, start_run

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
    return await start_run(task, **kwargs)


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


class TestStop:
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

    def test_failed_start_is_done(self) -> None:
        """A run that could not start is done at once and ignores stop()."""
        rec = _Recorder()

        async def scenario() -> tuple[bool, int | None, RunResult]:
            run = await _start(_task(("/nonexistent/x",)), rec)
            run.stop()
            return run.done, run.pid, await run.wait()

        done, pid, result = _run(scenario())

        assert (True, None, "failed") == (done, pid, result.status)


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


class TestInstallChildWatcher:
    @pytest.mark.skipif(
        sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"),
        reason="pidfd child watcher only needed on Python 3.11 with pidfd support",
    )
    def test_no_thread_per_child(self) -> None:
        """With the pidfd watcher installed, concurrent children cost no threads."""
        previous = asyncio.get_child_watcher()
        rec = _Recorder()

        async def scenario() -> tuple[int, list[RunResult]]:
            install_child_watcher()
            install_child_watcher()
            runs = [await _start(_task("sleep 0.3"), rec, run_id=f"r{i}") for i in range(20)]
            threads = threading.active_count()
            return threads, [await run.wait() for run in runs]

        before = threading.active_count()
        try:
            during, results = _run(scenario())
        finally:
            asyncio.set_child_watcher(previous)

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
