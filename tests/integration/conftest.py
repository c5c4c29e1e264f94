"""Start the real `scheduler` command and wait on its JSON events with deadlines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SCHEDULER = [sys.executable, "-m", "scheduler"]
Event = dict[str, Any]


class ClockProcess:
    """A running `scheduler run`, its events collected by a reader thread."""

    def __init__(
        self, config: Path, *args: str, env: dict[str, str] | None = None, command: str = "run"
    ) -> None:
        self.config = config
        self.events: list[Event] = []
        self.other: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [*SCHEDULER, command, "-c", str(config), "--log-format", "json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=config.parent,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                with self._cond:
                    self.other.append(raw.decode(errors="replace"))
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[Event]], bool], timeout: float = 15.0, what: str = "condition"
    ) -> list[Event]:
        """Wait until `predicate(events)` holds; fail with the events seen so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    if predicate(self.events):
                        break
                    stderr = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
                    pytest.fail(
                        f"timed out waiting for {what}; events: {self.events[-30:]}; stderr: {stderr}"
                    )
                self._cond.wait(min(remaining, 0.2))
            return list(self.events)

    def wait_event(self, name: str, timeout: float = 15.0, count: int = 1, **fields: Any) -> list[Event]:
        """Wait for `count` events named `name` whose fields match; return them."""

        def matching(events: list[Event]) -> list[Event]:
            return [e for e in events if e["event"] == name and all(e.get(k) == v for k, v in fields.items())]

        self.wait_for(lambda evs: len(matching(evs)) >= count, timeout, f"{count} x {name} {fields}")
        return matching(self.events)

    def named(self, name: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e["event"] == name]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)


@pytest.fixture
def start_clock(tmp_path: Path) -> Iterator[Callable[..., ClockProcess]]:
    """Start `scheduler run` on a config text; every clock is stopped (and killed if need be) at the end."""
    clocks: list[ClockProcess] = []

    def start(config_text: str, *args: str, env: dict[str, str] | None = None) -> ClockProcess:
        path = tmp_path / "schedules.yaml"
        path.write_text(config_text)
        clock = ClockProcess(path, *args, env=env)
        clocks.append(clock)
        clock.wait_event("scheduler.started")
        return clock

    yield start
    for clock in clocks:
        if clock.proc.poll() is None:
            clock.proc.kill()
            clock.proc.wait(10)


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 60.0, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SCHEDULER, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
