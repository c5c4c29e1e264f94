"""The real `scheduler run` under a stand-in for systemd: NOTIFY_SOCKET points at a datagram socket the test
binds, and the test reads READY=1, WATCHDOG=1 and STOPPING=1 from it."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import SCHEDULER

pytestmark = pytest.mark.integration
UNIT = Path(__file__).resolve().parent.parent.parent / "deploy" / "scheduler.service"

# A task that says whether it sees the clock's systemd variables (it must not).
CONFIG = """\
tasks:
  tick:
    schedule: every second
    command: echo "socket=${NOTIFY_SOCKET:-unset} usec=${WATCHDOG_USEC:-unset} pid=${WATCHDOG_PID:-unset}"
"""


class FakeSystemd:
    """A datagram socket where systemd's would be; a thread keeps every message with its arrival time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []  # (time.time() on arrival, datagram)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.time(), data.decode()))
                self._cond.notify_all()

    def first_lines(self) -> list[str]:
        with self._cond:
            return [message.partition("\n")[0] for _, message in self.messages]

    def wait_for(self, first_line: str, count: int = 1, timeout: float = 15.0) -> list[tuple[float, str]]:
        """The messages starting with `first_line`, once there are `count` of them."""

        def matching() -> list[tuple[float, str]]:
            return [(at, m) for at, m in self.messages if m.partition("\n")[0] == first_line]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= count, timeout):
                pytest.fail(f"timed out waiting for {count} x {first_line}; got {self.messages}")
            return matching()

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    with tempfile.TemporaryDirectory(prefix="notify-") as folder:  # a socket's path must fit in 108 bytes
        fake = FakeSystemd(str(Path(folder) / "notify.sock"))
        yield fake
        fake.close()


@pytest.fixture(autouse=True)
def _no_inherited_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test may itself run under systemd: its variables must not reach the clock under test."""
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(key, raising=False)


def at(text: object) -> float:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


class TestNotify:
    def test_ready_watchdog_and_stopping(self, start_clock: Any, systemd: FakeSystemd) -> None:
        """READY=1 once, after scheduler.started; WATCHDOG=1 again and again while it runs; STOPPING=1
        after SIGTERM, and nothing after it; the tasks never see the variables."""
        clock = start_clock(CONFIG, env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "1000000"})
        ((ready_at, ready),) = systemd.wait_for("READY=1")
        (started,) = clock.named("scheduler.started")
        assert ready_at >= at(started["timestamp"])
        assert f"READY=1\nSTATUS=1 task from {clock.config}" == ready
        systemd.wait_for("WATCHDOG=1", count=4)
        clock.wait_event("task.output", task="tick")
        clock.signal(signal.SIGTERM)
        ((stopping_at, stopping),) = systemd.wait_for("STOPPING=1")
        clock.wait_event("scheduler.stopped")
        assert 0 == clock.proc.wait(30)  # not clock.stop(): a second SIGTERM is not what this is about
        (stopping_event,) = clock.named("scheduler.stopping")
        assert stopping_at >= at(stopping_event["timestamp"])
        assert stopping.startswith("STOPPING=1\nSTATUS=stopping on SIGTERM")
        lines = systemd.first_lines()
        assert "READY=1" == lines[0]
        assert "STOPPING=1" == lines[-1]
        assert {"WATCHDOG=1"} == set(lines[1:-1])
        seen = {e["line"] for e in clock.named("task.output")}
        assert {"socket=unset usec=unset pid=unset"} == seen

    def test_no_keepalives_for_another_process(self, start_clock: Any, systemd: FakeSystemd) -> None:
        """With WATCHDOG_PID naming another process, READY=1 and STOPPING=1 only: no WATCHDOG=1."""
        clock = start_clock(
            CONFIG, env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}
        )
        systemd.wait_for("READY=1")
        clock.wait_event("task.finished", task="tick", count=2)  # more than the 0.2 s keep-alive interval
        assert 0 == clock.stop()
        systemd.wait_for("STOPPING=1")
        assert ["READY=1", "STOPPING=1"] == systemd.first_lines()

    @pytest.mark.timing
    def test_keepalives_come_within_the_watchdog_time(self, start_clock: Any, systemd: FakeSystemd) -> None:
        """Every WATCHDOG=1 comes within WATCHDOG_USEC of the one before (systemd's limit), although the
        loop has nothing else to wake for more than once a second."""
        clock = start_clock(
            "tasks:\n  later:\n    schedule: '@yearly'\n    command: 'true'\n",
            env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "600000"},
        )
        keepalives = systemd.wait_for("WATCHDOG=1", count=12)
        clock.stop()
        gaps = [b - a for (a, _), (b, _) in itertools.pairwise(keepalives)]
        assert max(gaps) < 0.6, gaps


def _unit_settings() -> dict[str, list[str]]:
    """The [Service] settings of deploy/scheduler.service, each key with its values in order."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


class TestDeployUnit:
    def test_the_units_command_speaks_the_protocol(self, tmp_path: Path, systemd: FakeSystemd) -> None:
        """deploy/scheduler.service's ExecStart and Environment=, run as systemd would (its notify socket,
        WATCHDOG_USEC from WatchdogSec=): READY=1, a first WATCHDOG=1, and STOPPING=1 on SIGTERM, then a
        clean exit well within TimeoutStopSec."""
        settings = _unit_settings()
        assert ["notify"] == settings["Type"]
        (exec_start,) = settings["ExecStart"]
        argv = shlex.split(exec_start)
        config = tmp_path / "schedules.yaml"
        config.write_text(CONFIG)
        argv = [*SCHEDULER, *(str(config) if arg == "/srv/app/schedules.yaml" else arg for arg in argv[1:])]
        (watchdog,) = settings["WatchdogSec"]
        env = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        for assignment in settings.get("Environment", []):
            name, _, value = assignment.partition("=")
            env[name] = value
        env.update(NOTIFY_SOCKET=systemd.path, WATCHDOG_USEC=str(int(watchdog.removesuffix("s")) * 1_000_000))
        clock = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            systemd.wait_for("READY=1")
            systemd.wait_for("WATCHDOG=1")
            began = time.monotonic()
            clock.send_signal(signal.SIGTERM)
            systemd.wait_for("STOPPING=1")
            assert 0 == clock.wait(30)
            (timeout_stop,) = settings["TimeoutStopSec"]
            assert time.monotonic() - began < float(timeout_stop.removesuffix("s"))
        finally:
            if clock.poll() is None:
                clock.kill()
                clock.wait()
        assert ["READY=1", "WATCHDOG=1", "STOPPING=1"] == systemd.first_lines()
        assert clock.stdout is not None
        events = [json.loads(line)["event"] for line in clock.stdout.read().splitlines()]  # the unit's JSON
        assert ("scheduler.started", "scheduler.stopped") == (events[0], events[-1])
