"""The real `scheduler run` with its stdout on a pipe nobody reads: tasks keep firing, and it still stops."""

from __future__ import annotations

import array
import fcntl
import json
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import SCHEDULER, wait_until

pytestmark = pytest.mark.integration

# A task that prints 2,000 lines a second fills a pipe's 64 KiB at once; another leaves a mark each second.
CONFIG = """\
tasks:
  chatty:
    schedule: every second
    command: for i in $(seq 2000); do echo "line $i of a task that talks a lot, every second"; done
  marker:
    schedule: every second
    command: echo x >> marker.txt
"""


class StalledClock:
    """`scheduler run` whose stdout is a pipe the test reads only when told to."""

    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "schedules.yaml").write_text(CONFIG)
        self.marker = tmp_path / "marker.txt"
        self.stderr = tmp_path / "stderr.txt"
        with self.stderr.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [*SCHEDULER, "run", "-c", "schedules.yaml", "--log-format", "json"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                cwd=tmp_path,
            )
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout
        self.lines: list[bytes] = []
        self._reader: threading.Thread | None = None

    def queued_bytes(self) -> int:
        """What waits in the stdout pipe, unread."""
        size = array.array("i", [0])
        fcntl.ioctl(self.stdout.fileno(), termios.FIONREAD, size)
        return size[0]

    def marks(self) -> int:
        return len(self.marker.read_text().splitlines()) if self.marker.exists() else 0

    def wait_stalled(self, quiet_s: float = 2.5, timeout: float = 20.0) -> int:
        """Until stdout is stalled: the pipe holds bytes and none came in for `quiet_s` (chatty writes every
        second). A full pipe may hold less than its 64 KiB when writes share pages. Returns what it holds."""
        deadline = time.monotonic() + timeout
        queued, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_queued = self.queued_bytes()
            if now_queued != queued:
                queued, since = now_queued, time.monotonic()
            elif queued > 0 and time.monotonic() - since >= quiet_s:
                return queued
            time.sleep(0.05)
        pytest.fail(self.failure("stdout never stalled"))

    def start_reading(self) -> None:
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.stdout), daemon=True)
        self._reader.start()

    def events(self) -> list[dict[str, object]]:
        events = []
        for raw in list(self.lines):
            try:
                events.append(json.loads(raw))
            except ValueError:
                continue
        return events

    def failure(self, what: str) -> str:
        stderr = self.stderr.read_text()[-2000:]
        return f"{what}; marks: {self.marks()}; unread: {self.queued_bytes()} bytes; stderr: {stderr}"


@pytest.fixture
def stalled(tmp_path: Path) -> Iterator[StalledClock]:
    clock = StalledClock(tmp_path)
    yield clock
    if clock.proc.poll() is None:
        clock.proc.kill()
    clock.proc.wait(10)
    clock.stdout.close()


class TestStalledStdout:
    def test_tasks_keep_firing_then_log_dropped(self, stalled: StalledClock) -> None:
        """With stdout stalled for seconds, a per-second task still runs every second; once stdout is read
        again, a log.dropped warning counts the lines that did not fit."""
        queued = stalled.wait_stalled()
        before = stalled.marks()
        assert wait_until(lambda: stalled.marks() >= before + 5, 15), stalled.failure("the clock stopped")
        assert queued == stalled.queued_bytes()  # still stalled all along

        stalled.start_reading()
        assert wait_until(lambda: any(e["event"] == "log.dropped" for e in stalled.events()), 15), (
            stalled.failure("no log.dropped")
        )
        dropped = next(e for e in stalled.events() if e["event"] == "log.dropped")
        assert "warning" == dropped["level"]
        assert isinstance(dropped["count"], int)
        assert dropped["count"] > 0
        stalled.proc.send_signal(signal.SIGTERM)
        assert 0 == stalled.proc.wait(15)

    def test_sigterm_while_stalled_exits(self, stalled: StalledClock) -> None:
        """SIGTERM ends the clock within seconds although nobody reads its stdout."""
        stalled.wait_stalled()
        sent = time.monotonic()
        stalled.proc.send_signal(signal.SIGTERM)
        try:
            status = stalled.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(stalled.failure("no exit 10 s after SIGTERM"))
        assert (0, True) == (status, time.monotonic() - sent < 5), stalled.failure("slow exit")
