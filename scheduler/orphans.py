"""A clock that is SIGKILLed leaves no task running unseen: a guard outlives it and stops their groups.

PR_SET_PDEATHSIG would not do: posix_spawn cannot set it, a fork's child loses it, and it covers the
direct child only, not the process group a task leads. So the clock starts one small guard (a bare
`python -I -S` running this file, about 9 MiB resident, most of it shared) in a session of its own,
deaf to SIGINT, SIGTERM and SIGHUP, so that Ctrl-C or a signal to the clock's group does not take it
first; it has no parent-death signal, on purpose. Its stdin is the read end of a pipe whose write end
only the clock holds, close-on-exec, so that no task inherits it. The runner writes a line for each
process group it starts (`+PGID GRACE_MS`) and another when the run is done (`-PGID`), the moment from
which the runner itself no longer signals the group, as the pid may be reused. A clean exit writes `bye`
and the guard exits at once. End of file without `bye` means the clock died: the guard sends SIGTERM to
every group still registered, SIGKILL to each one still there after its task's kill_grace, and exits.

This module spawns and reaps its guard, and the guard signals only groups the runner registered; tasks
themselves are spawned, signalled and reaped by runner.py alone. A process that starts a session of its
own (setsid, a daemon) has left its task's group: neither the runner nor the guard can see it.

The guard imports nothing but os, signal, sys and time: run it with `python -I -S orphans.py CLOCK_PID`.
"""

from __future__ import annotations

import os
import signal
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing would add 1 MiB to the guard
if TYPE_CHECKING:
    from collections.abc import Callable

    from structlog.typing import FilteringBoundLogger

_BYE = b"bye"
_READ_BYTES = 64 * 1024
_REAP_WAIT_S = 1.0  # at a clean exit, how long the clock waits for the guard to exit
_MAX_BACKLOG_BYTES = 1024 * 1024  # unwritten lines kept while the pipe is full; past it the guard is lost
# After each read the guard lets lines pile up this long, so that a burst of runs wakes it once, not once per
# run, and its CPU stays with the tasks being spawned; a dead clock is noticed this much later at most.
_BATCH_S = 0.02
_POLL_FIRST_S = 0.005  # after the SIGTERMs, how soon the guard first looks for groups that are gone
_POLL_MAX_S = 0.1  # and at most how long it sleeps between two looks


class Guard:
    """Told of every process group the runner starts and of every run done; this default does nothing (for
    tests, and where no guard could start)."""

    def register(self, pgid: int, kill_grace_s: float) -> None:
        """A run now leads process group `pgid`; its task's kill_grace is `kill_grace_s`."""

    def release(self, pgid: int) -> None:
        """The run that leads `pgid` is done: its group must never be signalled again."""

    def close(self) -> None:
        """A clean exit: the guard leaves every group alone and is reaped."""


NO_GUARD = Guard()


class _GuardProcess(Guard):
    """The clock's end of the pipe to a running guard; writes never block, and a lost guard is logged once
    and then ignored, so the tasks still run."""

    def __init__(self, pid: int, fd: int, log: FilteringBoundLogger) -> None:
        self.pid = pid
        self._fd: int | None = fd
        self._log = log
        self._backlog = bytearray()  # lines the pipe had no room for yet

    def register(self, pgid: int, kill_grace_s: float) -> None:
        self._send(b"+%d %d\n" % (pgid, max(0, round(min(kill_grace_s, 1e9) * 1000))))

    def release(self, pgid: int) -> None:
        self._send(b"-%d\n" % pgid)

    def close(self) -> None:
        if self._fd is not None:
            self._send(_BYE + b"\n")
            deadline = time.monotonic() + _REAP_WAIT_S
            while self._backlog and self._fd is not None and time.monotonic() < deadline:
                time.sleep(0.001)  # the pipe was full: the guard drains it unless it is stopped
                self._send(b"")
            if self._backlog and self._fd is not None and self.pid:
                # Without its releases and its bye, the guard would signal groups that may be someone
                # else's by now.
                os.kill(self.pid, signal.SIGKILL)
            self._close_pipe()
        self._reap(_REAP_WAIT_S)

    def _send(self, line: bytes) -> None:
        if self._fd is None:
            return
        if self._backlog:
            self._backlog += line
            data: bytes | bytearray = self._backlog
        else:
            data = line
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:  # EPIPE: the guard is gone
            self._lost(str(exc))
            return
        if written == len(data):
            self._backlog.clear()
            return
        if not self._backlog:
            self._backlog += line
        del self._backlog[:written]
        if len(self._backlog) > _MAX_BACKLOG_BYTES:
            self._lost("it stopped reading")

    def _lost(self, why: str) -> None:
        self._close_pipe()
        self._backlog.clear()
        self._log.warning(
            "orphans.guard_lost",
            pid=self.pid,
            error=why,
            detail="tasks go on, but would outlive a clock that is killed",
        )
        self._reap(0.0)

    def _close_pipe(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _reap(self, wait_s: float) -> None:
        """Reap the guard if it exits within `wait_s`; otherwise let it be (it exits at EOF by itself)."""
        deadline = time.monotonic() + wait_s
        while self.pid:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid = self.pid  # reaped by someone else
            if pid:
                self.pid = 0
            elif time.monotonic() >= deadline:
                return
            else:
                time.sleep(0.001)


def start_guard(log: FilteringBoundLogger, *, script: str | None = None) -> Guard:
    """Start the guard and return the clock's end of it; when it cannot start, log
    orphans.guard_unavailable and return NO_GUARD, so that the clock runs without it."""
    program = sys.executable
    script = script or os.path.abspath(__file__)
    try:
        if not program or not os.path.isfile(script):
            raise FileNotFoundError(f"no Python or no {script} to run the guard with")
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
    except OSError as exc:
        log.warning("orphans.guard_unavailable", error=str(exc))
        return NO_GUARD
    try:
        # The clock's signal handlers ignore nothing, so the guard starts with the default dispositions;
        # being in a session of its own, no signal meant for the clock's group or terminal reaches it.
        pid = os.posix_spawn(
            program,
            [program, "-I", "-S", script, str(os.getpid())],
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read_end, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            ],
            setsid=True,
        )
    except OSError as exc:
        os.close(write_end)
        log.warning("orphans.guard_unavailable", error=str(exc))
        return NO_GUARD
    finally:
        os.close(read_end)  # the guard's copy only: a dead guard then makes writes fail with EPIPE
    os.set_blocking(write_end, False)
    return _GuardProcess(pid, write_end, log)


class _Registry:
    """The guard's view of the pipe: the groups registered and not yet released, with their grace."""

    def __init__(self) -> None:
        self.groups: dict[int, float] = {}
        self.bye = False
        self._partial = b""

    def feed(self, data: bytes) -> None:
        """Apply every complete line in `data` (a line may span two reads); a line that makes no sense is
        ignored rather than risk signalling the wrong group."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            try:
                if line.startswith(b"+"):
                    pgid, grace_ms = line[1:].split(b" ")
                    if int(pgid) > 1:  # never process group 0 (ours) nor 1 (init)
                        self.groups[int(pgid)] = int(grace_ms) / 1000
                elif line.startswith(b"-"):
                    self.groups.pop(int(line[1:]), None)
                elif line == _BYE:
                    self.bye = True
                    return
            except ValueError:
                pass


def _terminate(
    groups: dict[int, float],
    *,
    killpg: Callable[[int, int], None] = os.killpg,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, int]:
    """SIGTERM every group, then SIGKILL each one still there when its grace has passed; returns how many
    groups got SIGTERM and how many SIGKILL.

    A group found gone is never signalled again, and the guard looks often (every 5 to 100 ms) so that
    the group id has no time to be reused; ProcessLookupError means gone, and so does PermissionError (a
    task that changed its user is no longer ours to stop).
    """
    started = monotonic()
    deadlines: dict[int, float] = {}
    for pgid, grace_s in groups.items():
        if _signal(killpg, pgid, signal.SIGTERM):
            deadlines[pgid] = started + grace_s
    termed, killed = len(deadlines), 0
    pause = _POLL_FIRST_S
    while deadlines:
        now = monotonic()
        for pgid, deadline in list(deadlines.items()):
            if now >= deadline:
                killed += _signal(killpg, pgid, signal.SIGKILL)
                del deadlines[pgid]
            elif not _signal(killpg, pgid, 0):
                del deadlines[pgid]
        if deadlines:
            sleep(max(0.0, min(pause, min(deadlines.values()) - monotonic())))
            pause = min(pause * 2, _POLL_MAX_S)
    return termed, killed


def _signal(killpg: Callable[[int, int], None], pgid: int, signum: int) -> bool:
    """Send `signum` to the group; False when the group is gone (or no longer ours)."""
    try:
        killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _serve(fd: int, clock_pid: str) -> None:
    """The guard's life: read the pipe until `bye` (exit) or end of file (the clock died: stop its tasks)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # whatever the clock inherited without close-on-exec
    registry = _Registry()
    while not registry.bye:
        try:
            data = os.read(fd, _READ_BYTES)
        except InterruptedError:
            continue
        if not data:
            break
        registry.feed(data)
        time.sleep(_BATCH_S)
    if registry.bye or not registry.groups:
        return
    count = len(registry.groups)
    _say(f"clock {clock_pid} is gone: SIGTERM to its {count} running task group(s)")
    _, killed = _terminate(registry.groups)
    if killed:
        _say(f"SIGKILL to {killed} task group(s) still there after their kill_grace")


def _say(message: str) -> None:
    try:
        os.write(2, f"scheduler orphans guard: {message}\n".encode())
    except OSError:
        pass  # nobody is listening any more


if __name__ == "__main__":
    _serve(0, sys.argv[1] if len(sys.argv) > 1 else "?")
