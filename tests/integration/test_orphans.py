"""A clock or run-now that is SIGKILLed: the guard SIGTERMs its tasks, and SIGKILLs them after their grace."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import SCHEDULER, ClockProcess, pid_alive, wait_until
from tests.procs import group_alive

pytestmark = pytest.mark.integration

_TRAP_TERM = "trap 'echo TERM > {mark}; exit 0' TERM"


def _children(pid: int) -> list[tuple[int, str]]:
    """The pids and command lines of `pid`'s children."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if ppid == pid:
                found.append((int(name), cmdline))
    return found


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Process groups and pids a test saw; whatever is left of them is SIGKILLed at the end."""
    seen: list[int] = []
    yield seen
    for pid in seen:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class _Task:
    """A task script that writes its pid to `ready` once its traps are set, and TERM to `mark` on SIGTERM
    (unless it ignores SIGTERM); its group id is known once it is ready."""

    def __init__(self, tmp_path: Path, trap: str = _TRAP_TERM, before: str = "") -> None:
        self.ready = tmp_path / "ready"
        self.mark = tmp_path / "mark"
        script = tmp_path / "task.sh"
        script.write_text(
            f"{trap.format(mark=self.mark)}\n{before}\necho $$ > {self.ready}\nsleep 300 & wait\n"
        )
        self.command = f"sh {script}"

    def wait_ready(self, leftovers: list[int], clock: ClockProcess | None = None) -> int:
        """The task's group, once the task is ready and, given its clock, the clock has logged its start
        (the guard hears of a group right after its spawn, which a loaded machine may delay past the
        task's own first steps)."""
        assert wait_until(lambda: self.ready.exists() and self.ready.read_text().endswith("\n"), 15)
        pgid = os.getpgid(int(self.ready.read_text()))
        leftovers.append(pgid)
        if clock is not None:
            clock.wait_event("task.started", pid=pgid)
        return pgid


@pytest.mark.parametrize("cwd", [False, True], ids=["posix_spawn", "popen_for_cwd"])
def test_killed_clock_terminates_running_task(
    start_clock, tmp_path: Path, leftovers: list[int], cwd: bool
) -> None:
    """SIGKILL to the clock: its running task's group gets SIGTERM (on either spawn path) and is gone."""
    task = _Task(tmp_path)
    clock = start_clock(
        f"tasks:\n  long:\n    schedule: every second\n    command: {task.command}\n"
        + (f"    cwd: {tmp_path}\n" if cwd else "")
    )
    pgid = task.wait_ready(leftovers, clock)

    clock.proc.kill()
    clock.proc.wait(10)

    assert wait_until(lambda: task.mark.exists(), 10), "the task got no SIGTERM"
    assert "TERM\n" == task.mark.read_text()
    assert wait_until(lambda: not group_alive(pgid), 10)


def test_task_ignoring_sigterm_is_killed_after_its_grace(
    start_clock, tmp_path: Path, leftovers: list[int]
) -> None:
    """A task that ignores SIGTERM is SIGKILLed once its kill_grace has passed after the clock died."""
    task = _Task(tmp_path, trap="trap '' TERM")
    clock = start_clock(
        f"tasks:\n  stubborn:\n    schedule: every second\n    command: {task.command}\n    kill_grace: 1s\n"
    )
    pgid = task.wait_ready(leftovers, clock)

    clock.proc.kill()
    killed = time.monotonic()
    clock.proc.wait(10)

    assert wait_until(lambda: not group_alive(pgid), 15)
    assert time.monotonic() - killed >= 1.0


def test_grandchild_in_its_own_session_survives(start_clock, tmp_path: Path, leftovers: list[int]) -> None:
    """A grandchild that called setsid has left the task's group: it outlives the clock (documented)."""
    pidfile = tmp_path / "grandchild"
    task = _Task(tmp_path, before=f"setsid sleep 300 & echo $! > {pidfile}")
    clock = start_clock(f"tasks:\n  daemonizes:\n    schedule: every second\n    command: {task.command}\n")
    pgid = task.wait_ready(leftovers, clock)
    grandchild = int(pidfile.read_text())
    leftovers.append(grandchild)
    assert wait_until(lambda: os.getsid(grandchild) == grandchild, 10)

    clock.proc.kill()
    clock.proc.wait(10)

    assert wait_until(lambda: not group_alive(pgid), 10)
    assert "TERM\n" == task.mark.read_text()
    assert pid_alive(grandchild)


def test_clean_stop_reaps_the_guard(start_clock, tmp_path: Path, leftovers: list[int]) -> None:
    """SIGTERM to the clock: it stops its tasks itself, says bye, and the guard exits and is reaped."""
    task = _Task(tmp_path)
    clock = start_clock(f"tasks:\n  long:\n    schedule: every second\n    command: {task.command}\n")
    task.wait_ready(leftovers)
    [(guard, cmdline)] = [c for c in _children(clock.proc.pid) if "orphans.py" in c[1]]
    leftovers.append(guard)
    assert f"-I -S {Path(__file__).parents[2] / 'scheduler' / 'orphans.py'}" in cmdline
    assert guard == os.getsid(guard)

    assert 0 == clock.stop()

    assert not os.path.exists(f"/proc/{guard}")  # exited and reaped
    assert "TERM\n" == task.mark.read_text()
    assert clock.proc.stderr is not None
    assert "orphans guard" not in clock.proc.stderr.read().decode()


def test_killed_run_now_terminates_its_task(tmp_path: Path, leftovers: list[int]) -> None:
    """SIGKILL to run-now: its task gets SIGTERM too."""
    task = _Task(tmp_path)
    (tmp_path / "schedules.yaml").write_text(
        f"tasks:\n  long:\n    schedule: '@daily'\n    command: {task.command}\n"
    )
    events = tmp_path / "events.log"
    with events.open("wb") as err:
        proc = subprocess.Popen(
            [*SCHEDULER, "run-now", "long", "--log-format", "json"],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        pgid = task.wait_ready(leftovers)
        # As for the clock: run-now has told the guard once it logs the start.
        assert wait_until(lambda: b'"task.started"' in events.read_bytes(), 15)

        proc.kill()
        proc.wait(10)

        assert wait_until(lambda: task.mark.exists(), 10), "the task got no SIGTERM"
        assert wait_until(lambda: not group_alive(pgid), 10)
    finally:
        proc.kill()
        proc.wait(10)
