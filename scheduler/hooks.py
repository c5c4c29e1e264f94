"""Hooks: the on_success / on_failure command a task runs once its last attempt has ended.

A hook is run like a task of its own (the runner spawns it, under its own timeout), with the run's
environment plus what it needs to report on the run: SCHEDULER_STATUS, SCHEDULER_EXIT_CODE,
SCHEDULER_DURATION_S and SCHEDULER_OUTPUT_FILE, a private temporary file holding the run's output tail.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from typing import TYPE_CHECKING

from scheduler.config import TaskSpec

if TYPE_CHECKING:
    from scheduler.runner import RunResult


def prepare(
    task: TaskSpec, hook: str | tuple[str, ...], result: RunResult, output: str
) -> tuple[TaskSpec, str]:
    """The hook as a task to start, and the path of its output file (remove it with `cleanup` once the hook
    has ended). Raises OSError when the file cannot be written."""
    fd, path = tempfile.mkstemp(prefix=f"scheduler-{task.name}-", suffix=".out")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(f"{output}\n" if output else "")  # lines, each ending in a newline
    except OSError:
        cleanup(path)
        raise
    env = {
        **task.env,
        "SCHEDULER_STATUS": result.status,
        "SCHEDULER_EXIT_CODE": "" if result.exit_code is None else str(result.exit_code),
        "SCHEDULER_DURATION_S": f"{result.duration_s:.3f}",
        "SCHEDULER_OUTPUT_FILE": path,
    }
    # A task that enqueues a job still runs its hooks as commands.
    return replace(task, command=hook, enqueue=None, timeout_s=task.hook_timeout_s, env=env), path


def cleanup(path: str) -> None:
    """Remove a hook's output file; one already gone is fine."""
    try:
        os.unlink(path)
    except OSError:
        pass
