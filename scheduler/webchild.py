"""`scheduler run --web`: the dashboard as a supervised child process of the clock.

The clock binds the dashboard's socket itself (so that a port in use fails its start, exit 2) and hands it
to a `scheduler web` child, which serves from it. The child runs at the lowest CPU priority, so
that however hard the page is used the clock's fires come first. When the child dies, it is started again
after 1 s, then 2, 4, ... up to 30 s (back to 1 s once one has lived a minute); a child that exits with
status 2 (a usage error, such as an invalid file) is not started again. It is stopped with the clock, and
dies with it even when the clock is killed with SIGKILL (Linux's parent-death signal).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from structlog.typing import FilteringBoundLogger

RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
"""A child that lived this long was healthy: the next restart waits RESTART_FIRST_S again."""
STOP_GRACE_S = 2.0
"""At the clock's stop, the child gets this long after SIGTERM before SIGKILL."""
NICENESS = 19
"""Added to the child's CPU niceness (at most 19, the lowest priority): the clock's fires come before the
page's renders, however hard the page is used."""
EXIT_USAGE = 2

_PR_SET_PDEATHSIG = 1


class WebChild:
    """Starts `argv` (a `scheduler web` command) with the listening socket passed on, and keeps it going
    until close()."""

    def __init__(
        self,
        argv: Sequence[str],
        sock: socket.socket,
        *,
        log: FilteringBoundLogger,
        env: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._argv = list(argv)
        self._sock = sock
        self._log = log
        self._env = dict(env) if env is not None else None
        self._monotonic = monotonic
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="web-child", daemon=True)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return None if proc is None else proc.pid

    def start(self) -> None:
        self._thread.start()

    def close(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the child (SIGTERM, then SIGKILL after grace_s) and the supervision; close the socket."""
        self._closing.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        self._thread.join(grace_s + 1)
        self._sock.close()

    def _supervise(self) -> None:
        delay = RESTART_FIRST_S
        while not self._closing.is_set():
            started = self._monotonic()
            try:
                proc = self._spawn()
            except OSError as exc:
                self._log.error("web.exited", status=None, error=str(exc), restart_in_s=delay)
            else:
                status = proc.wait()
                if self._closing.is_set():
                    return
                if status == EXIT_USAGE:
                    self._log.error("web.exited", status=status, restart_in_s=None)
                    return
                if self._monotonic() - started >= HEALTHY_AFTER_S:
                    delay = RESTART_FIRST_S
                self._log.warning("web.exited", status=status, restart_in_s=delay)
            if self._closing.wait(delay):
                return
            delay = min(delay * 2, RESTART_MAX_S)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._closing.is_set():
                raise OSError("stopping")
            proc = subprocess.Popen(
                self._argv,
                pass_fds=(self._sock.fileno(),),
                stdin=subprocess.DEVNULL,
                env=self._env,
                start_new_session=True,  # a Ctrl-C at the terminal goes to the clock, which stops the child
            )
            self._proc = proc
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS))
        except OSError:
            pass  # it runs at the clock's priority; nothing else changes
        return proc


def die_with_parent(parent: int) -> None:
    """In the child: be killed (SIGTERM) when the clock that started it dies, however it dies; exit at once
    if it already has. Linux only (prctl); elsewhere the clock's own stop is what stops the child."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)
