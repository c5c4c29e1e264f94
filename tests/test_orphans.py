"""Tests for scheduler.orphans: the pipe protocol, the guard's stopping policy on a fake clock, and a real
guard process stopping real process groups (each awaited with a deadline)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scheduler import orphans, runner
from scheduler.orphans import NO_GUARD, Guard, _GuardProcess, _Registry, _terminate, start_guard
from tests.procs import group_alive
from tests.test_runner import _Recorder, _run, _start, _task, _until

DEADLINE_S = 10.0


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not before the deadline: {what}")
        time.sleep(0.01)


def _ignores(pid: int, signum: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


class TestRegistry:
    def test_register_and_release(self) -> None:
        """A registered group is kept with its grace in seconds until it is released."""
        registry = _Registry()

        registry.feed(b"+100 10000\n+200 1500\n-100\n")

        assert {200: 1.5} == registry.groups
        assert not registry.bye

    def test_lines_span_reads(self) -> None:
        """A line cut between two reads is applied once it is complete."""
        registry = _Registry()

        registry.feed(b"+12")
        assert {} == registry.groups
        registry.feed(b"34 250\n-")
        assert {1234: 0.25} == registry.groups
        registry.feed(b"1234\nby")
        assert ({}, False) == (registry.groups, registry.bye)
        registry.feed(b"e\n")

        assert registry.bye

    def test_nonsense_and_own_groups_ignored(self) -> None:
        """Malformed lines, group 0 (the guard's own) and 1 (init) are never registered."""
        registry = _Registry()

        registry.feed(b"+0 100\n+1 100\n+x 1\n+5\nhello\n-\n+7 100\n")

        assert {7: 0.1} == registry.groups

    def test_nothing_after_bye(self) -> None:
        """bye ends the conversation: lines after it are not applied."""
        registry = _Registry()

        registry.feed(b"+7 100\nbye\n-7\n")

        assert ({7: 0.1}, True) == (registry.groups, registry.bye)

    def test_what_the_clock_writes(self, tmp_path: Path) -> None:
        """register, release and close write the lines the registry reads, in order."""
        out = tmp_path / "pipe.bin"
        copier = tmp_path / "copier.py"
        copier.write_text(
            f"import shutil, sys\nshutil.copyfileobj(sys.stdin.buffer, open({str(out)!r}, 'wb'))\n"
        )
        guard = start_guard(_Recorder().log, script=str(copier))
        assert isinstance(guard, _GuardProcess)

        guard.register(4321, 2.5)
        guard.register(99, 0.0)
        guard.release(4321)
        guard.close()

        assert 0 == guard.pid  # reaped
        assert b"+4321 2500\n+99 0\n-4321\nbye\n" == out.read_bytes()
        registry = _Registry()
        registry.feed(out.read_bytes())
        assert ({99: 0.0}, True) == (registry.groups, registry.bye)


class _FakeGroups:
    """killpg and the time for _terminate: each group dies at a set moment (None: never by itself)."""

    def __init__(self, die_at: dict[int, float | None]) -> None:
        self.now = 0.0
        self.die_at = dict(die_at)
        self.sent: list[tuple[float, int, int]] = []

    def killpg(self, pgid: int, signum: int) -> None:
        dies = self.die_at.get(pgid, 0.0)
        if dies is not None and self.now >= dies:
            raise ProcessLookupError
        if signum:
            self.sent.append((self.now, pgid, signum))
        if signum == signal.SIGKILL:
            self.die_at[pgid] = self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += max(seconds, 0.001)


class TestTerminate:
    def test_term_then_kill_after_each_grace(self) -> None:
        """Every group gets SIGTERM at once; one still there after its own grace gets SIGKILL then."""
        fake = _FakeGroups({10: 0.5, 20: None, 30: None})

        counts = _terminate(
            {10: 5.0, 20: 1.0, 30: 3.0}, killpg=fake.killpg, monotonic=lambda: fake.now, sleep=fake.sleep
        )

        assert (3, 2) == counts
        terms = [(at, pgid) for at, pgid, signum in fake.sent if signum == signal.SIGTERM]
        kills = [(round(at, 2), pgid) for at, pgid, signum in fake.sent if signum == signal.SIGKILL]
        assert [(0.0, 10), (0.0, 20), (0.0, 30)] == terms
        assert [(1.0, 20), (3.0, 30)] == kills

    def test_gone_groups_never_signalled_again(self) -> None:
        """A group gone before SIGTERM, or found gone later, gets nothing more (its id may be reused)."""
        fake = _FakeGroups({10: 0.0, 20: 0.2})

        counts = _terminate(
            {10: 1.0, 20: 1.0}, killpg=fake.killpg, monotonic=lambda: fake.now, sleep=fake.sleep
        )

        assert (1, 0) == counts
        assert [(0.0, 20, signal.SIGTERM)] == fake.sent
        assert fake.now < 0.5  # it looked often, and left as soon as the last group was gone

    def test_zero_grace_kills_at_once(self) -> None:
        """kill_grace 0: SIGTERM and SIGKILL back to back."""
        fake = _FakeGroups({10: None})

        counts = _terminate({10: 0.0}, killpg=fake.killpg, monotonic=lambda: fake.now, sleep=fake.sleep)

        assert (1, 1) == counts
        assert [(0.0, 10, signal.SIGTERM), (0.0, 10, signal.SIGKILL)] == fake.sent

    def test_not_ours(self) -> None:
        """A group that is not ours to signal any more (PermissionError) counts as gone."""

        def killpg(pgid: int, signum: int) -> None:
            raise PermissionError

        assert (0, 0) == _terminate({10: 1.0}, killpg=killpg)


class _ToldGuard(Guard):
    def __init__(self) -> None:
        self.told: list[tuple[object, ...]] = []

    def register(self, pgid: int, kill_grace_s: float) -> None:
        self.told.append(("register", pgid, kill_grace_s))

    def release(self, pgid: int) -> None:
        self.told.append(("release", pgid))


class TestRunnerTellsTheGuard:
    @pytest.mark.parametrize("path", ["posix_spawn", "popen"])
    def test_register_at_spawn_release_when_done(self, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """The group is registered with the task's kill_grace as it is spawned, and released once done."""
        if path == "popen":
            monkeypatch.setattr(runner, "_posix_spawn_works", False)
        guard = _ToldGuard()
        rec = _Recorder()

        async def scenario() -> tuple[list[tuple[object, ...]], int | None]:
            run = await _start(_task("echo hi", kill_grace_s=3.5), rec, guard=guard)
            registered = list(guard.told)
            await run.wait()
            return registered, run.pid

        registered, pid = _run(scenario())

        assert [("register", pid, 3.5)] == registered
        assert [("register", pid, 3.5), ("release", pid)] == guard.told

    def test_failed_start_tells_nothing(self) -> None:
        """A command that could not start has no group to register."""
        guard = _ToldGuard()

        async def scenario() -> None:
            await (await _start(_task(("/nonexistent/x",)), _Recorder(), guard=guard)).wait()

        _run(scenario())

        assert [] == guard.told

    def test_loop_shutdown_releases(self) -> None:
        """A run SIGKILLed because its loop shut down is released too."""
        guard = _ToldGuard()
        rec = _Recorder()

        async def scenario() -> int | None:
            run = await _start(_task("echo ready; sleep 30"), rec, guard=guard)
            await _until(lambda: "ready" in rec.lines())
            return run.pid

        pid = asyncio.run(scenario())
        assert pid is not None
        try:
            os.waitpid(pid, 0)  # SIGKILLed by the run, never reaped as its loop is gone
        except ChildProcessError:
            pass

        assert [("register", pid, 10.0), ("release", pid)] == guard.told


class TestNoGuard:
    def test_does_nothing(self) -> None:
        """The default guard takes every call and does nothing."""
        NO_GUARD.register(12345, 1.0)
        NO_GUARD.release(12345)
        NO_GUARD.close()


@pytest.fixture
def groups() -> Iterator[list[int]]:
    """Process groups the test started; whatever is left of them is SIGKILLed at the end."""
    started: list[int] = []
    yield started
    for pgid in started:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_group(tmp_path: Path, groups: list[int], script: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A shell in a session of its own running `script`, once it has said it is ready (its traps set)."""
    ready = tmp_path / f"ready.{len(groups)}"
    proc = subprocess.Popen(
        ["sh", "-c", f'{script}\necho ready > "{ready}"\nsleep 300 & wait'],
        start_new_session=True,
        cwd=tmp_path,
    )
    groups.append(proc.pid)
    _wait(ready.exists, "the task is ready")
    return proc, ready


_TRAP_TERM = 'trap "echo TERM > mark.$$; exit 0" TERM'


class TestGuardProcess:
    def test_clock_gone_terminates_groups(self, tmp_path: Path, groups: list[int]) -> None:
        """End of file without bye: the registered group gets SIGTERM (its trap runs) and is gone."""
        rec = _Recorder()
        guard = start_guard(rec.log)
        assert isinstance(guard, _GuardProcess)
        proc, _ = _start_group(tmp_path, groups, _TRAP_TERM)
        guard.register(proc.pid, 5.0)

        guard._close_pipe()  # as when the clock dies

        _wait(lambda: proc.poll() is not None, "the task exits")
        assert 0 == proc.returncode
        assert "TERM\n" == (tmp_path / f"mark.{proc.pid}").read_text()
        _wait(lambda: not group_alive(proc.pid), "the whole group is gone")
        guard._reap(DEADLINE_S)
        assert 0 == guard.pid
        assert [] == rec.events

    def test_bye_leaves_groups_alone(self, tmp_path: Path, groups: list[int]) -> None:
        """A clean exit: the guard exits at once, is reaped, and signals nothing."""
        guard = start_guard(_Recorder().log)
        assert isinstance(guard, _GuardProcess)
        proc, _ = _start_group(tmp_path, groups, _TRAP_TERM)
        guard.register(proc.pid, 5.0)

        guard.close()

        assert 0 == guard.pid
        assert proc.poll() is None
        assert not (tmp_path / f"mark.{proc.pid}").exists()

    def test_released_group_left_alone(self, tmp_path: Path, groups: list[int]) -> None:
        """A group released before the clock died is not signalled: its id may be someone else's now."""
        guard = start_guard(_Recorder().log)
        assert isinstance(guard, _GuardProcess)
        proc, _ = _start_group(tmp_path, groups, _TRAP_TERM)
        guard.register(proc.pid, 5.0)
        guard.release(proc.pid)

        guard._close_pipe()
        guard._reap(DEADLINE_S)  # it exits once it has read everything

        assert 0 == guard.pid
        assert proc.poll() is None
        assert not (tmp_path / f"mark.{proc.pid}").exists()

    @pytest.mark.timing
    def test_sigterm_ignored_then_sigkill(self, tmp_path: Path, groups: list[int]) -> None:
        """A group that ignores SIGTERM is SIGKILLed once its grace has passed, not before."""
        guard = start_guard(_Recorder().log)
        assert isinstance(guard, _GuardProcess)
        proc, _ = _start_group(tmp_path, groups, 'trap "" TERM')
        guard.register(proc.pid, 0.5)

        closed = time.monotonic()
        guard._close_pipe()

        _wait(lambda: proc.poll() is not None, "the task is killed")
        assert time.monotonic() - closed >= 0.5
        assert -signal.SIGKILL == proc.returncode
        _wait(lambda: not group_alive(proc.pid), "the whole group is gone")

    def test_guard_deaf_to_clock_signals(self, tmp_path: Path, groups: list[int]) -> None:
        """SIGINT, SIGTERM and SIGHUP do not stop the guard: it still acts when the clock dies."""
        guard = start_guard(_Recorder().log)
        assert isinstance(guard, _GuardProcess)
        proc, _ = _start_group(tmp_path, groups, _TRAP_TERM)
        guard.register(proc.pid, 5.0)
        assert guard.pid == os.getsid(guard.pid)  # a session of its own: no signal to the clock's group
        _wait(lambda: all(_ignores(guard.pid, s) for s in (signal.SIGINT, signal.SIGTERM)), "guard ready")
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(guard.pid, signum)

        guard._close_pipe()

        _wait(lambda: proc.poll() is not None, "the task exits")
        assert "TERM\n" == (tmp_path / f"mark.{proc.pid}").read_text()
        guard._reap(DEADLINE_S)

    def test_lost_guard_logged_once(self, tmp_path: Path, groups: list[int]) -> None:
        """A guard that dies: one orphans.guard_lost warning, it is reaped, and later calls do nothing."""
        rec = _Recorder()
        guard = start_guard(rec.log)
        assert isinstance(guard, _GuardProcess)
        pid = guard.pid
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: _state(pid) == "Z", "the guard is dead")

        guard.register(12345, 1.0)
        guard.release(12345)
        guard.close()

        [lost] = rec.named("orphans.guard_lost")
        assert ("warning", pid) == (lost["level"], lost["pid"])
        assert 0 == guard.pid

    def test_full_pipe_keeps_lines_in_order(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Writes never block: what the pipe has no room for waits, in order; too much means lost."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        rec = _Recorder()
        guard = _GuardProcess(0, write_end, rec.log)  # no process: the test reads the pipe itself
        registry = _Registry()

        def drain() -> None:
            try:
                while True:
                    registry.feed(os.read(read_end, 65536))
            except BlockingIOError:
                pass

        try:
            last = 100
            while not guard._backlog:
                last += 1
                guard.register(last, 1.0)
            guard.register(last + 1, 1.0)
            drain()
            assert set(range(101, last)) == registry.groups.keys()
            guard.release(101)  # the backlog goes first
            drain()

            assert set(range(102, last + 2)) == registry.groups.keys()
            assert [] == rec.events

            monkeypatch.setattr(orphans, "_MAX_BACKLOG_BYTES", 10)
            while not rec.events:
                guard.register(101, 1.0)
            [lost] = rec.named("orphans.guard_lost")
            assert "it stopped reading" == lost["error"]
        finally:
            guard._close_pipe()
            os.close(read_end)

    def test_unavailable(self, tmp_path: Path) -> None:
        """No guard script: orphans.guard_unavailable, and the do-nothing guard."""
        rec = _Recorder()

        guard = start_guard(rec.log, script=str(tmp_path / "missing.py"))

        assert NO_GUARD is guard
        assert ["orphans.guard_unavailable"] == [e["event"] for e in rec.events]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
