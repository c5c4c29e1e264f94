"""The only module that spawns, signals and reaps processes, and streams their output into the log.

Every child starts a session of its own, so its process group holds the whole tree it starts: signals go to
that group with os.killpg, and ProcessLookupError means the group is already gone. Every child is reaped.

start_run spawns at once, on the calling loop, with os.posix_spawn (a vfork in glibc), or with
subprocess.Popen for a task with a cwd, which posix_spawn cannot set. The loop then watches a pidfd for
the exit and reads the pipes itself: one supervising task per run, and no thread, transport or task per
pipe. A guard (orphans.py) is told of each group, so that it stops them if the daemon is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from signal import SIGKILL, SIGTERM, Signals
from typing import Any, Literal

from structlog.typing import FilteringBoundLogger

from scheduler.config import TaskSpec
from scheduler.orphans import NO_GUARD, Guard
from scheduler.runs import RUN_TAIL_BYTES, RunKind, iso_utc

# `enqueued`: a task's job is in its broker (enqueue.py); it counts as a success.
RunStatus = Literal["succeeded", "failed", "timed_out", "killed", "enqueued"]

_MAX_LINE_BYTES = 8 * 1024  # a longer output line is cut here and logged with truncated=True
_YIELD_EVERY_LINES = 32  # a pipe lets the loop run other runs' timers after this many lines
_DRAIN_TIMEOUT_S = 1.0  # after the child exits, how long its pipes may stay open
_EXIT_TIMED_OUT = 124  # as timeout(1)
_EXIT_CANNOT_EXECUTE = 126  # as a POSIX shell
_EXIT_NOT_FOUND = 127  # as a POSIX shell
_READ_BYTES = 64 * 1024  # one read of a pipe: logged before the pipe is read again, so memory stays bounded
# What subprocess.Popen resets to the default in the child: Python ignores SIGPIPE and SIGXFSZ.
_RESTORE_SIGNALS = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, n))

_pidfd_works = hasattr(os, "pidfd_open")  # until the kernel says otherwise
_posix_spawn_works = hasattr(os, "posix_spawn")
_sealed_in_pid: int | None = None  # the process whose descriptors _use_posix_spawn made close-on-exec


@dataclass(frozen=True)
class RunResult:
    """How a run ended, as logged in task.finished; `scheduler run-now` exits with its shell_exit_status."""

    status: RunStatus
    exit_code: int | None
    signal: str | None
    duration_s: float
    error: str | None = None
    # 127 or 126 for a command that could not start; private, so that the public fields stay as logged.
    _not_started_status: int = field(default=_EXIT_CANNOT_EXECUTE, repr=False, kw_only=True)

    @property
    def ok(self) -> bool:
        """Whether the run did what it was for: its command succeeded, or its job was enqueued."""
        return self.status in ("succeeded", "enqueued")

    @property
    def shell_exit_status(self) -> int:
        """The status a shell would give: 0 succeeded, 124 timed out, 127 not found, 126 not executable,
        128+N died by signal N, else the exit code; a run stopped on purpose that still exited 0 gives
        128+SIGTERM, so that it never looks like a success."""
        if self.ok:
            return 0
        if self.status == "timed_out":
            return _EXIT_TIMED_OUT
        if self.error is not None:
            return self._not_started_status
        if self.signal is not None:
            return 128 + _signal_number(self.signal)
        if self.exit_code:
            return self.exit_code
        return 128 + SIGTERM


class Run:
    """One execution of a task, from spawn to reaping; start_run makes it, the caller waits or stops it."""

    def __init__(
        self,
        task: TaskSpec,
        *,
        run_id: str,
        trigger: str,
        scheduled_for: datetime,
        log: FilteringBoundLogger,
        guard: Guard = NO_GUARD,
        kind: RunKind = "task",
    ) -> None:
        self.task = task
        self.run_id = run_id
        self.trigger = trigger
        self.scheduled_for = scheduled_for
        self.kind: RunKind = kind
        self.pid: int | None = None
        self._log = log  # bound to the task and run id once the child is on its way
        self._guard = guard
        self._loop = asyncio.get_running_loop()
        self._result: asyncio.Future[RunResult] = self._loop.create_future()
        self._supervisor: asyncio.Task[None] | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._pipes: list[_Pipe] = []
        self._open_pipes = 0
        self._pipes_closed: asyncio.Future[None] = self._loop.create_future()
        self._leader_gone = False
        self._leader_exit: asyncio.Future[None] = self._loop.create_future()
        self._returncode = 0
        self._exited_at = 0.0
        self._stopped_as: RunStatus | None = None
        self._kill_at: float | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._timeout_timer: asyncio.TimerHandle | None = None
        self._killed = False
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0

    @property
    def output_tail(self) -> str:
        """The last RUN_TAIL_BYTES (or a little more) of the lines logged, stdout and stderr interleaved
        as read, one per line; empty when the output was not captured."""
        return b"\n".join(self._tail).decode("utf-8", errors="replace")

    @property
    def done(self) -> bool:
        """True once the run has finished and its end has been logged (task.finished, hook.finished)."""
        return self._result.done()

    def when_done(self, callback: Callable[[RunResult], None]) -> None:
        """Call `callback` with the result once the run has finished and its end has been logged."""
        self._result.add_done_callback(lambda result: callback(result.result()))

    async def wait(self) -> RunResult:
        """Wait until the run has finished and its end has been logged; cancelling a waiter leaves the run
        alone."""
        return await asyncio.shield(self._result)

    def stop(self, status: RunStatus = "killed", kill_grace_s: float | None = None) -> None:
        """End the run: SIGTERM to its process group now, SIGKILL to the group kill_grace_s later (default
        task.kill_grace_s), and the run finishes as `status` whatever its exit code.

        A second stop() keeps the first status and sends no second SIGTERM, but an earlier SIGKILL deadline
        wins. Once the leader has exited (the run is only draining its pipes) stop() SIGKILLs what is left
        of the group at once and the status stays what the exit code says.
        """
        if self.done:
            return
        if self._leader_gone:
            self.kill()
            return
        if self._stopped_as is None:
            self._stopped_as = status
            self.signal_group(SIGTERM)
        if self._killed:
            return
        grace = self.task.kill_grace_s if kill_grace_s is None else kill_grace_s
        kill_at = self._loop.time() + max(grace, 0.0)
        if self._kill_at is None or kill_at < self._kill_at:
            _cancel(self._kill_timer)
            self._kill_at = kill_at
            self._kill_timer = self._loop.call_at(kill_at, self.kill)

    def kill(self) -> None:
        """SIGKILL the run's process group now; the status stays the one stop() chose, else "killed"."""
        if self.done:
            return
        if self._stopped_as is None and not self._leader_gone:
            self._stopped_as = "killed"
        _cancel(self._kill_timer)
        self._killed = True
        self.signal_group(SIGKILL)

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the run's whole process group (run-now forwards Ctrl-C this way); no signal is
        sent once the run is done, since its group id may then belong to someone else."""
        if self.pid is None or self.done:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass  # the whole group has exited already

    def _start(self, env: Mapping[str, str], capture_output: bool, yield_cpu: bool) -> None:
        """Spawn the child now and tell the guard, and leave everything else (logging, the exit watch,
        timers, the supervisor) to a callback right after: the latency from the fire to the task's exec is
        what a clock is judged by, and when many tasks are due at once, each child's bookkeeping would
        otherwise hold up the next one's spawn. The pid is set at once, so stop() and kill() work from
        the start."""
        task = self.task
        argv = [task.shell, "-c", task.command] if isinstance(task.command, str) else list(task.command)
        scheduled_for = iso_utc(self.scheduled_for)
        child_env = {
            **env,
            **task.env,
            "SCHEDULER_TASK": task.name,
            "SCHEDULER_RUN_ID": self.run_id,
            "SCHEDULER_SCHEDULED_FOR": scheduled_for,
            "SCHEDULER_TRIGGER": self.trigger,
        }
        started = time.monotonic()
        try:
            pid, outputs = self._spawn(argv, child_env, capture_output)
            if yield_cpu:
                # The child is between vfork and the task's first instruction (in the dynamic loader,
                # say), usually on this CPU: let it get there before the loop does its bookkeeping.
                os.sched_yield()
        except (OSError, ValueError, IndexError) as exc:
            message, status = _start_failure(exc, task, argv)
            duration_s = _elapsed(started, time.monotonic())
            self._log = self._log.bind(task=task.name, run_id=self.run_id)
            self._finish(RunResult("failed", None, None, duration_s, message, _not_started_status=status))
            return
        self.pid = pid
        # The guard hears of the group at once: a clock killed a moment after this spawn still stops it.
        self._guard.register(pid, task.kill_grace_s)
        self._loop.call_soon(self._started, outputs, scheduled_for, started)

    def _started(self, outputs: list[tuple[str, int]], scheduled_for: str, started: float) -> None:
        """The bookkeeping of a spawned run, on the loop's next turn (after the rest of a burst)."""
        assert self.pid is not None
        pid, task = self.pid, self.task
        self._log = self._log.bind(task=task.name, run_id=self.run_id)
        self._pipes = [_Pipe(self, fd, stream) for stream, fd in outputs]
        self._open_pipes = len(self._pipes)
        if not self._pipes:
            self._pipes_closed.set_result(None)
        self._watch_exit(pid)
        if self.kind == "task":
            self._log.info("task.started", trigger=self.trigger, scheduled_for=scheduled_for, pid=pid)
        else:
            self._log.info("hook.started", pid=pid)  # the hook's name and its run are bound
        if task.timeout_s is not None and not self._leader_gone:
            self._timeout_timer = self._loop.call_later(
                max(task.timeout_s - (time.monotonic() - started), 0.0), self.stop, "timed_out"
            )
        self._supervisor = self._loop.create_task(self._supervise(started))

    def _spawn(
        self, argv: list[str], env: dict[str, str], capture_output: bool
    ) -> tuple[int, list[tuple[str, int]]]:
        """Start the child with stdin from /dev/null and, with capture_output, stdout and stderr on pipes;
        returns its pid and the read ends of the pipes, by stream."""
        write_ends: list[int] = []
        outputs: list[tuple[str, int]] = []
        try:
            if capture_output:
                for stream in ("stdout", "stderr"):
                    read_end, write_end = os.pipe2(os.O_CLOEXEC)
                    outputs.append((stream, read_end))
                    write_ends.append(write_end)
            if self.task.cwd is None and _use_posix_spawn():
                pid = _posix_spawn(argv, env, write_ends)
            else:
                self._popen = _popen(argv, env, self.task.cwd, write_ends)
                pid = self._popen.pid
        except BaseException:
            for _, read_end in outputs:
                os.close(read_end)
            raise
        finally:
            for write_end in write_ends:
                os.close(write_end)
        return pid, outputs

    def _watch_exit(self, pid: int) -> None:
        """Learn of the leader's exit through a pidfd on the loop; without pidfds (an old kernel, or no fd
        left), through a thread that waits for it, as asyncio itself would."""
        global _pidfd_works
        if _pidfd_works:
            try:
                self._pidfd = os.pidfd_open(pid)
            except OSError as exc:
                if exc.errno in (errno.ENOSYS, errno.EPERM):  # no pidfds here (EMFILE: just this once)
                    _pidfd_works = False
            else:
                self._loop.add_reader(self._pidfd, self._reap)
                return
        threading.Thread(target=_wait_in_thread, args=(self._loop, pid, self._exited), daemon=True).start()

    def _reap(self) -> None:
        """The pidfd says the leader has exited: reap it (at once, as it is a zombie now)."""
        assert self.pid is not None
        self._close_pidfd()
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            returncode = 255  # reaped by someone else: its status is lost, as asyncio says
        else:
            returncode = os.waitstatus_to_exitcode(status)
        self._exited(returncode)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _exited(self, returncode: int) -> None:
        if self._popen is not None:
            self._popen.returncode = returncode  # reaped here: Popen must not wait for it again
        self._returncode = returncode
        self._exited_at = time.monotonic()
        _cancel(self._timeout_timer)
        self._leader_gone = True
        _resolve(self._leader_exit)

    def _pipe_closed(self) -> None:
        self._open_pipes -= 1
        if self._open_pipes == 0:
            _resolve(self._pipes_closed)

    async def _supervise(self, started: float) -> None:
        """Wait for the child's exit and the end of its output, then finish the run.

        The run is over when the child has exited and its pipes are at EOF, but a background process that
        keeps them open gets only _DRAIN_TIMEOUT_S: then the pipes are closed and it is left running. In a
        stopped run, the leftovers of the group (say the worker under `sh -c`) keep the rest of the grace
        period, which ends early when they close the pipes; then the group is SIGKILLed.
        """
        try:
            await self._leader_exit
            if self._kill_at is not None and not self._killed:
                await _wait_for(self._pipes_closed, self._kill_at - self._loop.time())
                self.kill()
            await _wait_for(self._pipes_closed, _DRAIN_TIMEOUT_S)
            for pipe in self._pipes:
                pipe.close()  # what was read is still logged, and the last line without a newline
            await self._pipes_closed
        except BaseException as exc:
            # Cancelled with the loop, say, before anyone stopped the run: take the group down rather than
            # leave it running untracked.
            self.kill()
            self._close_pidfd()
            if self.pid is not None:
                self._guard.release(self.pid)  # SIGKILLed: the guard has nothing left to stop
            for pipe in self._pipes:
                pipe.abort()
            if isinstance(exc, Exception):
                self._result.set_exception(exc)
            else:
                self._result.cancel()
            raise
        returncode = self._returncode
        self._finish(
            RunResult(
                _final_status(self._stopped_as, returncode),
                returncode if returncode >= 0 else None,
                _signal_name(-returncode) if returncode < 0 else None,
                _elapsed(started, self._exited_at),
            )
        )

    def _log_line(self, stream: str, line: bytes, truncated: bool) -> None:
        self._keep_tail(line)
        text = line.decode("utf-8", errors="replace")
        fields: dict[str, object] = {"stream": stream, "line": text}
        if truncated:
            fields["truncated"] = True
        if self.kind == "task":
            self._log.info("task.output", **fields)
        else:
            self._log.info("hook.output", **fields)

    def _keep_tail(self, line: bytes) -> None:
        tail = self._tail
        tail.append(line)
        self._tail_bytes += len(line) + 1
        while len(tail) > 1 and self._tail_bytes - len(tail[0]) - 1 > RUN_TAIL_BYTES:
            self._tail_bytes -= len(tail.popleft()) + 1

    def _finish(self, result: RunResult) -> None:
        """Log task.finished or hook.finished (a warning unless the run succeeded; never task.env), or
        hook.failed for a hook that could not start, and release the waiters and the guard, which must no
        more signal the group than the run itself does once done."""
        _cancel(self._kill_timer)
        _cancel(self._timeout_timer)
        if self.pid is not None:
            self._guard.release(self.pid)
        fields: dict[str, object] = {
            "status": result.status,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "duration_s": result.duration_s,
        }
        if result.error is not None:
            fields["error"] = result.error
        log = self._log.info if result.status == "succeeded" else self._log.warning
        try:
            if self.kind == "task":
                log("task.finished", **fields)
            elif result.error is None:
                log("hook.finished", **fields)
            else:  # why it could not start, and nothing about a run that never was
                self._log.warning("hook.failed", error=result.error)
        finally:
            self._result.set_result(result)


def start_run(
    task: TaskSpec,
    *,
    run_id: str,
    trigger: str,
    scheduled_for: datetime,
    log: FilteringBoundLogger,
    env: Mapping[str, str],
    capture_output: bool = True,
    yield_cpu: bool = True,
    guard: Guard = NO_GUARD,
    kind: RunKind = "task",
) -> Run:
    """Spawn `task` now, before returning its Run (call it on the running loop); a command that cannot
    start gives a run already finished as "failed" with `error` set (and no task.started), never an
    exception.

    A str command runs as `[task.shell, "-c", command]`, a tuple as argv, in task.cwd, in a new session,
    with stdin from /dev/null and the environment `env` + task.env + SCHEDULER_TASK, SCHEDULER_RUN_ID,
    SCHEDULER_SCHEDULED_FOR (aware `scheduled_for` in UTC, ISO 8601) and SCHEDULER_TRIGGER. With
    capture_output, stdout and stderr are logged line by line; without it they are the daemon's own.
    A task with timeout_s is stopped as "timed_out" that many seconds after the spawn. With yield_cpu,
    the daemon gives up the CPU right after the spawn, so that the child gets to run first; a caller
    starting a burst of runs passes False for all but the last, so as not to pause for each child.
    `guard` is told of the run's process group from the spawn until the run is done, so that the group
    gets SIGTERM if the daemon is killed (see orphans.py). `kind` names its events: task.started,
    task.output and task.finished, or for a hook hook.started (with only the pid), hook.output,
    hook.finished, and hook.failed instead of hook.finished when its command could not start.
    """
    run = Run(
        task, run_id=run_id, trigger=trigger, scheduled_for=scheduled_for, log=log, guard=guard, kind=kind
    )
    run._start(env, capture_output, yield_cpu)
    return run


def reap_orphans() -> None:
    """Reap the zombies of orphaned grandchildren, which the kernel hands to the scheduler when it runs as
    PID 1 (a container without an init) or as a subreaper; the clock calls it about once a second.

    Only zombies from another session are reaped: a run's leader leads a session of its own and its Run
    reaps it, and a child in the scheduler's own session belongs to whoever spawned it. So an orphan that
    started a session of its own stays a zombie: telling it from a run's leader would take global state.
    """
    try:
        if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return  # no zombie children at all: skip the /proc scan
    except ChildProcessError:
        return  # no children at all
    me, my_session = os.getpid(), os.getsid(0)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        state, ppid, session = fields[0], int(fields[1]), int(fields[3])
        if state != "Z" or ppid != me or session in (pid, my_session):
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # reaped meanwhile


class _Pipe:
    """One output pipe of a run, read on the loop and logged line by line.

    A chunk that was read is logged before the pipe is read again, so memory stays bounded whatever the
    child writes; after _YIELD_EVERY_LINES lines the rest of the chunk waits for the next loop iteration, so
    that a flood from one task cannot delay other runs' timers.
    """

    def __init__(self, run: Run, fd: int, stream: str) -> None:
        self._run = run
        self._loop = run._loop
        self._fd: int | None = fd
        self.stream = stream
        self._splitter = _LineSplitter()
        self._lines: Iterator[tuple[bytes, bool]] | None = None  # what is left of the chunk being logged
        self._later: asyncio.Handle | None = None
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._read)
        self._reading = True

    def close(self) -> None:
        """Stop reading (at EOF, or when the drain time is over); what was read is still logged, and then
        the last line if it had no newline."""
        if self._fd is None:
            return
        self._pause()
        os.close(self._fd)
        self._fd = None
        if self._lines is None:
            self._flush()

    def abort(self) -> None:
        """Stop reading and logging at once."""
        self._lines = None
        _cancel(self._later)
        if self._fd is not None:
            self._pause()
            os.close(self._fd)
            self._fd = None

    def _read(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, _READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO and the like: as good as EOF
        if not data:
            self.close()
            return
        self._lines = self._splitter.feed(data)
        self._log_lines()

    def _log_lines(self) -> None:
        self._later = None
        if self._lines is None:
            return  # aborted meanwhile
        for logged, (line, truncated) in enumerate(self._lines, 1):
            self._run._log_line(self.stream, line, truncated)
            if logged == _YIELD_EVERY_LINES:
                self._pause()
                self._later = self._loop.call_soon(self._log_lines)
                return
        self._lines = None
        if self._fd is None:
            self._flush()
        elif not self._reading:
            self._loop.add_reader(self._fd, self._read)
            self._reading = True

    def _flush(self) -> None:
        for line, truncated in self._splitter.close():
            self._run._log_line(self.stream, line, truncated)
        self._run._pipe_closed()

    def _pause(self) -> None:
        if self._reading:
            assert self._fd is not None
            self._loop.remove_reader(self._fd)
            self._reading = False


class _LineSplitter:
    """Bytes in, lines out (without "\\n" or a trailing "\\r"), flagged when cut at _MAX_LINE_BYTES.

    It holds at most one line's first _MAX_LINE_BYTES + 1 bytes: a longer line is emitted as soon as it is
    known to be too long, and the rest of it, up to the next newline, is dropped.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._dropping = False  # inside a line that was already cut and emitted

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            if not self._dropping:
                # One byte over the limit is kept: it may be the "\r" of a "\r\n".
                room = _MAX_LINE_BYTES + 1 - len(self._pending)
                self._pending += data[start : min(end, start + room)]
                if end - start > room:
                    yield bytes(self._pending[:_MAX_LINE_BYTES]), True
                    self._pending.clear()
                    self._dropping = True
            if newline < 0:
                return
            if not self._dropping:
                yield self._take()
            self._dropping = False
            start = newline + 1

    def close(self) -> Iterator[tuple[bytes, bool]]:
        """The last line, when the output did not end with a newline."""
        if self._pending and not self._dropping:
            yield self._take()

    def _take(self) -> tuple[bytes, bool]:
        line = bytes(self._pending)
        self._pending.clear()
        line = line.removesuffix(b"\r")
        if len(line) > _MAX_LINE_BYTES:
            return line[:_MAX_LINE_BYTES], True
        return line, False


def _final_status(stopped_as: RunStatus | None, returncode: int) -> RunStatus:
    """A stopped run ends as stop() said, whatever its exit code; otherwise exit 0 is "succeeded", death by
    a signal "killed" and any other exit "failed"."""
    if stopped_as is not None:
        return stopped_as
    if returncode == 0:
        return "succeeded"
    if returncode < 0:
        return "killed"
    return "failed"


def _start_failure(exc: Exception, task: TaskSpec, argv: list[str]) -> tuple[str, int]:
    """Why the child could not start, naming the program (and the cwd when that is at fault), with the
    status a shell would give: 127 for not found, 126 for anything else."""
    shown = task.command if isinstance(task.command, str) else shlex.join(task.command)
    if isinstance(exc, OSError) and task.cwd is not None and exc.filename == task.cwd:
        if isinstance(exc, FileNotFoundError):
            return f"working directory not found: {task.cwd} (command: {shown})", _EXIT_NOT_FOUND
        return (
            f"cannot enter working directory {task.cwd}: {exc.strerror} (command: {shown})",
            _EXIT_CANNOT_EXECUTE,
        )
    what = "shell" if isinstance(task.command, str) else "command"
    program = argv[0] if argv else "(empty)"
    if isinstance(exc, FileNotFoundError):
        return f"{what} not found: {program}", _EXIT_NOT_FOUND
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == errno.ENOEXEC):
        return f"{what} not executable: {program} ({exc.strerror})", _EXIT_CANNOT_EXECUTE
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"cannot start {what} {program}: {reason}", _EXIT_CANNOT_EXECUTE


def _signal_name(signum: int) -> str:
    try:
        return Signals(signum).name
    except ValueError:
        return f"SIG{signum}"  # a real-time signal without a name of its own


def _signal_number(name: str) -> int:
    try:
        return Signals[name].value
    except KeyError:
        return int(name.removeprefix("SIG"))


def _elapsed(start: float, end: float) -> float:
    return round(end - start, 3)


def _cancel(handle: asyncio.Handle | None) -> None:
    if handle is not None:
        handle.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled waiter has let go of it
        future.set_result(None)


async def _wait_for(future: asyncio.Future[None], timeout_s: float) -> None:
    """Wait until `future` is done or `timeout_s` has passed, whichever comes first; never cancels it."""
    if not future.done() and timeout_s > 0:
        await asyncio.wait((future,), timeout=timeout_s)


def _use_posix_spawn() -> bool:
    """posix_spawn, unlike Popen, closes no descriptor in the child: it relies on every descriptor of the
    daemon being close-on-exec, as Python opens them (PEP 446). Once per process, those it inherited
    without the flag get it; without /proc to list them, every run goes through Popen."""
    global _posix_spawn_works, _sealed_in_pid
    if _posix_spawn_works and _sealed_in_pid != os.getpid():
        try:
            names = os.listdir("/proc/self/fd")
        except OSError:
            _posix_spawn_works = False
            return False
        for name in names:
            if int(name) > 2:
                try:
                    os.set_inheritable(int(name), False)
                except OSError:
                    pass  # the listing's own descriptor, closed by now
        _sealed_in_pid = os.getpid()
    return _posix_spawn_works


def _posix_spawn(argv: list[str], env: dict[str, str], write_ends: list[int]) -> int:
    """Spawn argv in a new session, stdin from /dev/null and, when given, stdout and stderr on the write
    ends. A bare program name is looked up in the child's PATH, and fails as Popen's lookup would."""
    actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    for target, write_end in enumerate(write_ends, 1):
        actions.append((os.POSIX_SPAWN_DUP2, write_end, target))
    program = argv[0]
    if "/" in program:
        return os.posix_spawn(
            program, argv, env, file_actions=actions, setsid=True, setsigdef=_RESTORE_SIGNALS
        )
    first_error: OSError | None = None
    for directory in os.get_exec_path(env):
        candidate = os.path.join(directory, program)
        try:
            os.stat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue  # exec would say the same: save a spawn
        except OSError:
            pass  # let exec say what is wrong
        try:
            return os.posix_spawn(
                candidate, argv, env, file_actions=actions, setsid=True, setsigdef=_RESTORE_SIGNALS
            )
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            first_error = first_error or exc  # as execvpe: the first error other than "not there" wins
    if first_error is not None:
        raise first_error
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _popen(
    argv: list[str], env: dict[str, str], cwd: str | None, write_ends: list[int]
) -> subprocess.Popen[bytes]:
    """Spawn as _posix_spawn does, in `cwd`; the run reaps the child itself."""
    stdout, stderr = write_ends if write_ends else (None, None)
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


def _wait_in_thread(loop: asyncio.AbstractEventLoop, pid: int, exited: Callable[[int], None]) -> None:
    """Without a pidfd: block a thread in waitpid, then hand the exit code to the loop."""
    try:
        _, status = os.waitpid(pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        returncode = 255
    try:
        loop.call_soon_threadsafe(exited, returncode)
    except RuntimeError:
        pass  # the loop is closed
