"""The only module that spawns, signals and reaps processes, and streams their output into the log.

Every child starts a session of its own, so its process group holds the whole tree it starts: signals go to
that group with os.killpg, and ProcessLookupError means the group is already gone. Every child is reaped.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from signal import SIGKILL, SIGTERM, Signals
from typing import Literal, cast

from structlog.typing import FilteringBoundLogger

from scheduler.config import TaskSpec

RunStatus = Literal["succeeded", "failed", "timed_out", "killed"]

_MAX_LINE_BYTES = 8 * 1024  # a longer output line is cut here and logged with truncated=True
_PAUSE_READING_BYTES = 64 * 1024  # stop reading a pipe while this much output waits to be logged
_YIELD_EVERY_LINES = 32  # a pump lets the loop run other runs' timers after this many lines
_DRAIN_TIMEOUT_S = 1.0  # after the child exits, how long its pipes may stay open
_EXIT_TIMED_OUT = 124  # as timeout(1)
_EXIT_CANNOT_EXECUTE = 126  # as a POSIX shell
_EXIT_NOT_FOUND = 127  # as a POSIX shell


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
    def shell_exit_status(self) -> int:
        """The status a shell would give: 0 succeeded, 124 timed out, 127 not found, 126 not executable,
        128+N died by signal N, else the exit code; a run stopped on purpose that still exited 0 gives
        128+SIGTERM, so that it never looks like a success."""
        if self.status == "succeeded":
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
    ) -> None:
        self.task = task
        self.run_id = run_id
        self.trigger = trigger
        self.scheduled_for = scheduled_for
        self.pid: int | None = None
        self._log = log.bind(task=task.name, run_id=run_id)
        self._loop = asyncio.get_running_loop()
        self._result: asyncio.Future[RunResult] = self._loop.create_future()
        self._supervisor: asyncio.Task[None] | None = None
        self._leader_gone = asyncio.Event()
        self._returncode = 0
        self._exited_at = 0.0
        self._stopped_as: RunStatus | None = None
        self._kill_at: float | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._timeout_timer: asyncio.TimerHandle | None = None
        self._killed = False

    @property
    def done(self) -> bool:
        """True once the run has finished and task.finished has been logged."""
        return self._result.done()

    async def wait(self) -> RunResult:
        """Wait until the run has finished and task.finished has been logged; cancelling a waiter leaves
        the run alone."""
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
        if self._leader_gone.is_set():
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
        if self._stopped_as is None and not self._leader_gone.is_set():
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

    async def _start(self, env: Mapping[str, str], capture_output: bool) -> None:
        task = self.task
        argv = [task.shell, "-c", task.command] if isinstance(task.command, str) else list(task.command)
        scheduled_for = _iso_utc(self.scheduled_for)
        child_env = {
            **env,
            **task.env,
            "SCHEDULER_TASK": task.name,
            "SCHEDULER_RUN_ID": self.run_id,
            "SCHEDULER_SCHEDULED_FOR": scheduled_for,
            "SCHEDULER_TRIGGER": self.trigger,
        }
        output = subprocess.PIPE if capture_output else None
        protocol = _ChildProtocol(capture_output, on_exit=self._leader_exited)
        started = time.monotonic()
        try:
            transport, _ = await self._loop.subprocess_exec(
                lambda: protocol,
                argv[0],
                *argv[1:],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                cwd=task.cwd,
                env=child_env,
                start_new_session=True,
            )
        except (OSError, ValueError, IndexError) as exc:
            message, status = _start_failure(exc, task, argv)
            duration_s = _elapsed(started, time.monotonic())
            self._finish(RunResult("failed", None, None, duration_s, message, _not_started_status=status))
            return
        self.pid = transport.get_pid()
        self._log.info("task.started", trigger=self.trigger, scheduled_for=scheduled_for, pid=self.pid)
        if task.timeout_s is not None and not self._leader_gone.is_set():
            self._timeout_timer = self._loop.call_later(task.timeout_s, self.stop, "timed_out")
        self._supervisor = self._loop.create_task(self._supervise(transport, protocol, started))

    def _leader_exited(self, returncode: int) -> None:
        self._returncode = returncode
        self._exited_at = time.monotonic()
        _cancel(self._timeout_timer)
        self._leader_gone.set()

    async def _supervise(
        self, transport: asyncio.SubprocessTransport, protocol: _ChildProtocol, started: float
    ) -> None:
        """Wait for the child's exit and the end of its output, then finish the run.

        The run is over when the child has exited and its pipes are at EOF, but a background process that
        keeps them open gets only _DRAIN_TIMEOUT_S: then the pipes are closed and it is left running. In a
        stopped run, the leftovers of the group (say the worker under `sh -c`) keep the rest of the grace
        period, which ends early when they close the pipes; then the group is SIGKILLed.
        """
        pumps = [self._loop.create_task(self._pump(protocol, fd)) for fd in protocol.outputs]
        try:
            await self._leader_gone.wait()
            if self._kill_at is not None and not self._killed:
                await _wait_for(protocol.pipes_closed, self._kill_at - self._loop.time())
                self.kill()
            await _wait_for(protocol.pipes_closed, _DRAIN_TIMEOUT_S)
            transport.close()
            await asyncio.gather(*pumps)
        except BaseException as exc:
            # Cancelled with the loop, say, before anyone stopped the run: take the group down rather than
            # leave it running untracked.
            self.kill()
            transport.close()
            for pump in pumps:
                pump.cancel()
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

    async def _pump(self, protocol: _ChildProtocol, fd: int) -> None:
        """Log one pipe's output as task.output events, a line each; yield to the loop every few dozen
        lines so that a flood from one task cannot delay other runs' timers."""
        output = protocol.outputs[fd]
        lines = _LineSplitter()
        logged = 0
        while (chunk := await output.chunks.get()) is not None:
            for line, truncated in lines.feed(chunk):
                self._log_line(output.stream, line, truncated)
                logged += 1
                if logged % _YIELD_EVERY_LINES == 0:
                    await asyncio.sleep(0)
            protocol.consumed(fd, len(chunk))
        for line, truncated in lines.close():
            self._log_line(output.stream, line, truncated)

    def _log_line(self, stream: str, line: bytes, truncated: bool) -> None:
        text = line.decode("utf-8", errors="replace")
        if truncated:
            self._log.info("task.output", stream=stream, line=text, truncated=True)
        else:
            self._log.info("task.output", stream=stream, line=text)

    def _finish(self, result: RunResult) -> None:
        """Log task.finished (a warning unless the run succeeded; never task.env) and release the waiters."""
        _cancel(self._kill_timer)
        _cancel(self._timeout_timer)
        fields: dict[str, object] = {
            "status": result.status,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "duration_s": result.duration_s,
        }
        if result.error is not None:
            fields["error"] = result.error
        try:
            if result.status == "succeeded":
                self._log.info("task.finished", **fields)
            else:
                self._log.warning("task.finished", **fields)
        finally:
            self._result.set_result(result)


async def start_run(
    task: TaskSpec,
    *,
    run_id: str,
    trigger: str,
    scheduled_for: datetime,
    log: FilteringBoundLogger,
    env: Mapping[str, str],
    capture_output: bool = True,
) -> Run:
    """Spawn `task` now and return its Run; a command that cannot start gives a run already finished as
    "failed" with `error` set (and no task.started), never an exception.

    A str command runs as `[task.shell, "-c", command]`, a tuple as argv, in task.cwd, in a new session,
    with stdin from /dev/null and the environment `env` + task.env + SCHEDULER_TASK, SCHEDULER_RUN_ID,
    SCHEDULER_SCHEDULED_FOR (aware `scheduled_for` in UTC, ISO 8601) and SCHEDULER_TRIGGER. With
    capture_output, stdout and stderr are logged line by line; without it they are the daemon's own.
    A task with timeout_s is stopped as "timed_out" that many seconds after the spawn.
    """
    run = Run(task, run_id=run_id, trigger=trigger, scheduled_for=scheduled_for, log=log)
    await run._start(env, capture_output)
    return run


def install_child_watcher() -> None:
    """On Python 3.11 with a pidfd-capable kernel, make asyncio reap children through pidfds on the event
    loop instead of with one thread per child, so that 1,000 concurrent runs cost no threads.

    Call it from a coroutine on the main thread's loop before the first start_run. asyncio keeps the
    watcher in its (process-wide) policy and re-attaches it to each new main-thread loop. On Python 3.12+
    it does nothing, since asyncio already watches pidfds there.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # a kernel older than 5.3: keep asyncio's threaded watcher
    loop = asyncio.get_running_loop()
    watcher = asyncio.get_child_watcher()
    if isinstance(watcher, asyncio.PidfdChildWatcher):
        if not watcher.is_active():
            watcher.attach_loop(loop)
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)


def reap_orphans() -> None:
    """Reap the zombies of orphaned grandchildren, which the kernel hands to the scheduler when it runs as
    PID 1 (a container without an init) or as a subreaper; the clock calls it about once a second.

    Only zombies from another session are reaped: a run's leader leads a session of its own and asyncio
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


class _Output:
    """Chunks that one pipe delivered and its pump has not logged yet; None marks EOF."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.pending_bytes = 0
        self.paused = False


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Collects one child's output and exit for its Run. A pipe stops being read while its output waits to
    be logged, so memory stays bounded whatever the child writes."""

    def __init__(self, capture_output: bool, *, on_exit: Callable[[int], None]) -> None:
        self.outputs = {1: _Output("stdout"), 2: _Output("stderr")} if capture_output else {}
        self.pipes_closed = asyncio.Event()
        if not self.outputs:
            self.pipes_closed.set()
        self._open_pipes = len(self.outputs)
        self._on_exit = on_exit
        self._transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.SubprocessTransport, transport)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        output = self.outputs[fd]
        output.chunks.put_nowait(data)
        output.pending_bytes += len(data)
        if output.pending_bytes > _PAUSE_READING_BYTES and not output.paused:
            output.paused = True
            self._pipe(fd).pause_reading()

    def consumed(self, fd: int, size: int) -> None:
        """The pump has logged `size` bytes of pipe `fd`: read again once the backlog is small."""
        output = self.outputs[fd]
        output.pending_bytes -= size
        if output.paused and output.pending_bytes <= _PAUSE_READING_BYTES // 2:
            output.paused = False
            self._pipe(fd).resume_reading()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.outputs[fd].chunks.put_nowait(None)
        self._open_pipes -= 1
        if self._open_pipes == 0:
            self.pipes_closed.set()

    def process_exited(self) -> None:
        assert self._transport is not None
        returncode = self._transport.get_returncode()
        assert returncode is not None
        self._on_exit(returncode)

    def _pipe(self, fd: int) -> asyncio.ReadTransport:
        assert self._transport is not None
        return cast(asyncio.ReadTransport, self._transport.get_pipe_transport(fd))


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


def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _elapsed(start: float, end: float) -> float:
    return round(end - start, 3)


def _cancel(handle: asyncio.TimerHandle | None) -> None:
    if handle is not None:
        handle.cancel()


async def _wait_for(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until `event` is set or `timeout_s` has passed, whichever comes first."""
    try:
        await asyncio.wait_for(event.wait(), max(timeout_s, 0.0))
    except TimeoutError:
        pass
