"""systemd's notify protocol (sd_notify(3)) for `Type=notify` units, without libsystemd.

READY=1 once the schedule is loaded and the clock is about to wait for its first fire, STOPPING=1 when the
shutdown starts, each with a STATUS= line for `systemctl status`, and, when the unit sets WatchdogSec=,
WATCHDOG=1 every half of WATCHDOG_USEC from the loop's own heartbeat: a loop that is stuck stops the
keep-alives, and systemd restarts the clock.

Each message is one datagram to $NOTIFY_SOCKET (an absolute path, or `@name` in the abstract namespace),
sent without blocking. A socket that is missing, refuses or is full drops the message: the first failure is
logged as `notify.failed`, later ones only once a message got through in between, and nothing here ever
raises to the loop. Without NOTIFY_SOCKET no socket is opened and nothing is sent.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, MutableMapping

from structlog.typing import FilteringBoundLogger

from scheduler.observe import NO_NOTIFY, NotifySink

# What systemd hands its service; taken out of the environment the tasks get, as sd_notify's
# unset_environment does, so that a task never speaks to the clock's service manager in its name.
ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# A keep-alive this close to due is sent at once: the loop's sleep ends a little early (clock.SystemTime),
# and an early WATCHDOG=1 costs nothing, where waiting for the exact instant costs the loop another turn.
_EARLY_S = 0.05


def from_env(
    env: MutableMapping[str, str],
    *,
    log: FilteringBoundLogger,
    pid: int | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> NotifySink:
    """A Notifier for $NOTIFY_SOCKET, or NO_NOTIFY when it is unset or empty. The variables of ENV_KEYS are
    taken out of `env` (the copy of the environment the tasks will get) either way.

    The watchdog keep-alive is sent when WATCHDOG_USEC is a positive number of microseconds and WATCHDOG_PID
    is unset or `pid` (default: this process), as sd_watchdog_enabled(3) decides.
    """
    address, usec, for_pid = (env.pop(key, "") for key in ENV_KEYS)
    if not address:
        return NO_NOTIFY
    ours = not for_pid or for_pid == str(os.getpid() if pid is None else pid)
    watchdog_s = int(usec) / 1_000_000 if ours and usec.isascii() and usec.isdigit() and int(usec) else None
    return Notifier(address, watchdog_s=watchdog_s, log=log, monotonic=monotonic)


class Notifier:
    """Sends the notify messages to one socket; every method returns at once and never raises."""

    def __init__(
        self,
        address: str,
        *,
        watchdog_s: float | None,
        log: FilteringBoundLogger,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """address: NOTIFY_SOCKET as given. watchdog_s: WATCHDOG_USEC in seconds, or None for no
        keep-alives; one is sent every half of it."""
        self._shown = address
        self._log = log
        self._monotonic = monotonic
        self._interval_s = watchdog_s / 2 if watchdog_s is not None else None
        self._early_s = min(_EARLY_S, self._interval_s / 10) if self._interval_s is not None else 0.0
        self._last_keepalive: float | None = None
        self._failing = False
        self._sock: socket.socket | None = None
        self._address = ""
        if address.startswith("@"):
            self._address = "\0" + address[1:]  # Linux's abstract namespace
        elif address.startswith("/"):
            self._address = address
        else:
            self._failed("", "not an absolute path or an @abstract name")
            self._interval_s = None  # nothing will be sent: the loop need not wake for it
            return
        try:
            # Close-on-exec, as Python opens every descriptor: no task inherits it.
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        except OSError as exc:
            self._failed("", exc.strerror or str(exc))
            self._sock = None
            self._interval_s = None

    def ready(self, status: str) -> None:
        """The schedule is loaded: READY=1, with `status` as STATUS=."""
        self._send("READY=1", status)

    def stopping(self, status: str) -> None:
        """The shutdown has begun: STOPPING=1, with `status` as STATUS=."""
        self._send("STOPPING=1", status)

    def heartbeat(self) -> None:
        """The loop turned: WATCHDOG=1 if half the watchdog time has passed since the last one."""
        if self._interval_s is None:
            return
        now = self._monotonic()
        if self._last_keepalive is None or now >= self._last_keepalive + self._interval_s - self._early_s:
            self._last_keepalive = now
            self._send("WATCHDOG=1")

    def due_in(self) -> float | None:
        """Seconds until the next WATCHDOG=1 is due (the loop wakes for it), or None without a watchdog."""
        if self._interval_s is None:
            return None
        if self._last_keepalive is None:
            return 0.0
        return max(self._last_keepalive + self._interval_s - self._monotonic(), 0.0)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str, status: str | None = None) -> None:
        if self._sock is None:
            return
        if status is not None:
            # One line per assignment: a newline in the text would end STATUS= and start another variable.
            message += "\nSTATUS=" + " ".join(status.split())
        try:
            # A path that is not UTF-8 (in STATUS=) is sent with replacement characters, never refused.
            self._sock.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as exc:  # BlockingIOError too: a full socket is not waited for
            if not self._failing:
                self._failed(message.partition("\n")[0], exc.strerror or type(exc).__name__)
            self._failing = True
        else:
            self._failing = False

    def _failed(self, message: str, error: str) -> None:
        try:
            fields = {"message": message} if message else {}
            self._log.warning("notify.failed", socket=self._shown, error=error, **fields)
        except Exception:
            pass  # a broken log must not stop the clock either
