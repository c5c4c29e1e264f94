"""Shutdown is bounded in every state (a reload, a stalled store), and `scheduler.stopped` comes last."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import ClockProcess
from tests.integration.test_store import _stalling

pytestmark = pytest.mark.integration

TICK = 'tasks:\n  tick:\n    schedule: "* * * * * *"\n    command: "true"\n'
# With no run going, SIGTERM ends the process within this (README: Signals, reload and shutdown).
EXIT_BOUND_S = 4.0


def big_config(tasks: int) -> str:
    lines = ["tasks:"]
    for i in range(tasks):
        lines += [f"  t{i}:", '    schedule: "0 3 * * *"', '    command: "true"']
    return "\n".join(lines) + "\n"


def stop_timed(clock: ClockProcess) -> float:
    began = time.monotonic()
    clock.signal(signal.SIGTERM)
    assert 0 == clock.stop(timeout=30)
    return time.monotonic() - began


class TestBoundedShutdown:
    def test_sigterm_during_a_long_reload(
        self, start_clock: Callable[..., ClockProcess], tmp_path: Path
    ) -> None:
        """A reload parsing a file that takes many seconds is cancelled at SIGTERM: its child is killed,
        the clock exits at once, and scheduler.stopped is its last event."""
        clock = start_clock(TICK)
        clock.wait_event("task.finished")
        (tmp_path / "schedules.yaml").write_text(big_config(150_000))
        clock.signal(signal.SIGHUP)
        time.sleep(1.0)  # the parse is under way (it takes far longer than this)
        assert not clock.named("config.reloaded")
        elapsed = stop_timed(clock)
        assert elapsed < EXIT_BOUND_S
        assert "scheduler.stopped" == clock.events[-1]["event"]
        assert not clock.named("config.reloaded")

    def test_sigterm_while_the_store_stalls(self, tmp_path: Path, postgres_store_url: str) -> None:
        """A store that stops answering (TCP up, nothing back) does not hold up the exit."""
        proxy, url = _stalling(postgres_store_url, b"scheduler_runs")
        path = tmp_path / "schedules.yaml"
        path.write_text(TICK)
        clock = ClockProcess(path, "--store", url)
        try:
            clock.wait_event("scheduler.started", timeout=20)
            assert proxy.stalled.wait(10)
            clock.wait_event("store.unavailable", timeout=10)
            elapsed = stop_timed(clock)
        finally:
            if clock.proc.poll() is None:
                clock.proc.kill()
            proxy.close()
        assert elapsed < EXIT_BOUND_S
        assert "scheduler.stopped" == clock.events[-1]["event"]


def test_sigterms_after_the_shutdown_do_not_kill_the_exit(start_clock: Callable[..., ClockProcess]) -> None:
    """Heroku may send SIGTERM more than once. One that comes after the loop has closed, while the exit
    flushes (here: a ping to a server that never answers, held for the ping flush bound), is ignored: the
    process still exits 0 and `scheduler.stopped` is its last event."""
    import socket

    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)  # connections complete in the backlog and are never answered
    port = blackhole.getsockname()[1]
    try:
        clock = start_clock(
            "tasks:\n  tick:\n    schedule: '* * * * * *'\n    command: 'true'\n"
            f"    ping_url: http://127.0.0.1:{port}/ping\n    ping_timeout: 30s\n"
        )
        clock.wait_event("task.finished", timeout=10)
        clock.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while clock.proc.poll() is None and time.monotonic() < deadline:
            try:
                clock.signal(signal.SIGTERM)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        assert 0 == clock.stop(timeout=15)
        assert clock.events[-1]["event"] == "scheduler.stopped"
    finally:
        blackhole.close()


class TestRepeatedSigterm:
    def test_sigterms_all_through_the_shutdown(self, start_clock: Callable[..., ClockProcess]) -> None:
        """SIGTERM after SIGTERM (Heroku and `timeout` send more than one) until the process is gone: it
        still exits 0 after `scheduler.stopped`, and nothing is printed about the signal wakeup fd."""
        clock = start_clock(TICK)
        deadline = time.monotonic() + EXIT_BOUND_S
        while clock.proc.poll() is None and time.monotonic() < deadline:
            try:
                clock.signal(signal.SIGTERM)
            except ProcessLookupError:
                break
            time.sleep(0.001)
        assert 0 == clock.stop(timeout=30)
        assert "scheduler.stopped" == clock.events[-1]["event"]
        assert clock.proc.stderr is not None
        assert "wakeup fd" not in clock.proc.stderr.read().decode() + "".join(clock.other)
