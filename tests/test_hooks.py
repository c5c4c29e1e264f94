"""Tests for scheduler.hooks: what a hook is given to report on a run."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from scheduler import hooks
from scheduler.config import TaskSpec
from scheduler.runner import RunResult
from scheduler.schedule import parse


def task(**overrides: object) -> TaskSpec:
    return TaskSpec(
        name="backup",
        schedule=parse("@daily", name="backup", zone=ZoneInfo("UTC")),
        command="./backup",
        timezone="UTC",
        **overrides,  # type: ignore[arg-type]
    )


class TestPrepare:
    def test_the_hook_is_the_task_with_its_own_command_timeout_and_env(self) -> None:
        """The hook runs its own command under hook_timeout, with the task's env plus the run's report."""
        spec = task(env={"REGION": "eu"}, timeout_s=3600.0, hook_timeout_s=30.0, cwd="/srv")
        result = RunResult("timed_out", None, "SIGTERM", 12.3456)
        hook, path = hooks.prepare(spec, ("notify", "--loud"), result, "line 1\nline 2")
        try:
            assert (("notify", "--loud"), 30.0, "/srv") == (hook.command, hook.timeout_s, hook.cwd)
            assert {
                "REGION": "eu",
                "SCHEDULER_STATUS": "timed_out",
                "SCHEDULER_EXIT_CODE": "",
                "SCHEDULER_DURATION_S": "12.346",
                "SCHEDULER_OUTPUT_FILE": path,
            } == dict(hook.env)
            assert "line 1\nline 2\n" == Path(path).read_text()
            assert 0o600 == stat.S_IMODE(os.stat(path).st_mode)
        finally:
            hooks.cleanup(path)
        assert not os.path.exists(path)

    def test_exit_code_and_empty_output(self) -> None:
        """An exit code is given as digits; no output gives an empty file."""
        hook, path = hooks.prepare(task(), "notify", RunResult("failed", 3, None, 0.5), "")
        try:
            assert "3" == hook.env["SCHEDULER_EXIT_CODE"]
            assert "" == Path(path).read_text()
        finally:
            hooks.cleanup(path)

    def test_cleanup_of_a_missing_file_is_fine(self, tmp_path: Path) -> None:
        """Removing an output file that is already gone raises nothing."""
        hooks.cleanup(str(tmp_path / "gone.out"))

    def test_unwritable_temp_dir_raises(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """When the output file cannot be made, OSError reaches the caller (which logs hook.failed)."""
        monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "missing"))
        with pytest.raises(FileNotFoundError):
            hooks.prepare(task(), "notify", RunResult("failed", 1, None, 0.5), "x")

    def test_a_task_that_enqueues_runs_its_hook_as_a_command(self) -> None:
        """The hook of an `enqueue` task is a command: it does not send the job again."""
        from scheduler.jobs import Enqueue

        spec = task(enqueue=Enqueue(to="rq", broker="redis", url="redis://h", job="a.b"))
        hook, path = hooks.prepare(spec, "notify", RunResult("enqueued", None, None, 0.01), "")
        hooks.cleanup(path)
        assert ("notify", None) == (hook.command, hook.enqueue)
