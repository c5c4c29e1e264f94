"""Tests for scheduler.webchild: the dashboard as a supervised child, with a stand-in child (a few lines of
Python) instead of `scheduler web`. End to end with the real commands: tests/integration/test_web.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from scheduler import webchild
from scheduler.webchild import WebChild
from tests.integration.conftest import pid_alive, wait_until


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webchild, "RESTART_FIRST_S", 0.05)


def child(script: str, pids: Path) -> list[str]:
    """A stand-in child: notes its pid in `pids`, then runs `script`."""
    prelude = f"import os, signal, socket, sys, time\nopen({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
    return [sys.executable, "-c", prelude + script]


def started(pids: Path, count: int, timeout: float = 10) -> list[int]:
    assert wait_until(lambda: pids.exists() and len(pids.read_text().split()) >= count, timeout)
    return [int(p) for p in pids.read_text().split()]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


class TestWebChild:
    def test_restarted_when_it_dies(self, sock: socket.socket, tmp_path: Path) -> None:
        """A child that exits is started again, the wait growing; each exit is logged."""
        pids = tmp_path / "pids"
        with capture_logs() as logs:
            supervisor = WebChild(child("sys.exit(3)", pids), sock, log=structlog.get_logger())
            supervisor.start()
            started(pids, 3)
            supervisor.close()
        exits = events(logs, "web.exited")
        assert len(exits) >= 2
        assert [3, 3] == [e["status"] for e in exits[:2]]
        assert [0.05, 0.1] == [e["restart_in_s"] for e in exits[:2]]

    def test_usage_error_not_restarted(self, sock: socket.socket, tmp_path: Path) -> None:
        """Exit status 2 (an invalid file, say) would fail again: not started again."""
        pids = tmp_path / "pids"
        with capture_logs() as logs:
            supervisor = WebChild(child("sys.exit(2)", pids), sock, log=structlog.get_logger())
            supervisor.start()
            started(pids, 1)
            assert wait_until(lambda: bool(events(logs, "web.exited")))
            time.sleep(0.3)
            supervisor.close()
        assert 1 == len(pids.read_text().split())
        assert [{"status": 2, "restart_in_s": None}] == [
            {k: e[k] for k in ("status", "restart_in_s")} for e in events(logs, "web.exited")
        ]

    def test_stopped_with_the_clock(self, sock: socket.socket, tmp_path: Path) -> None:
        """close(): SIGTERM, then SIGKILL for a child that ignores it; not started again."""
        pids = tmp_path / "pids"
        script = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"
        supervisor = WebChild(child(script, pids), sock, log=structlog.get_logger())
        supervisor.start()
        [pid] = started(pids, 1)
        time.sleep(0.2)  # the child's handler is set
        begun = time.monotonic()
        supervisor.close(grace_s=0.3)
        assert time.monotonic() - begun < 3
        assert not pid_alive(pid)
        time.sleep(0.2)
        assert 1 == len(pids.read_text().split())

    def test_serves_the_socket_at_lower_priority(self, sock: socket.socket, tmp_path: Path) -> None:
        """The child accepts on the socket it was handed, and runs nicer than the clock."""
        pids = tmp_path / "pids"
        fd = sock.fileno()
        script = (
            f"s = socket.socket(fileno={fd})\nc, _ = s.accept()\nc.sendall(b'hi')\nc.close()\ntime.sleep(60)"
        )
        supervisor = WebChild(child(script, pids), sock, log=structlog.get_logger())
        supervisor.start()
        try:
            [pid] = started(pids, 1)
            with socket.create_connection(sock.getsockname(), timeout=5) as conn:
                assert b"hi" == conn.recv(2)
            ours = os.getpriority(os.PRIO_PROCESS, 0)
            assert min(19, ours + webchild.NICENESS) == os.getpriority(os.PRIO_PROCESS, pid)
        finally:
            supervisor.close()

    def test_dies_with_its_parent(self, tmp_path: Path) -> None:
        """die_with_parent: a parent killed with SIGKILL takes the child with it."""
        pids = tmp_path / "pids"
        inner = (
            "from scheduler.webchild import die_with_parent\n"
            "die_with_parent(os.getppid())\n"
            f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
            "time.sleep(60)\n"
        )
        outer = (
            "import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', 'import os, time\\n' + {inner!r}])\n"
            "time.sleep(60)\n"
        )
        parent = subprocess.Popen([sys.executable, "-c", outer], cwd=Path(__file__).parent.parent)
        try:
            [pid] = started(pids, 1)
            parent.send_signal(signal.SIGKILL)
            parent.wait(5)
            assert wait_until(lambda: not pid_alive(pid), 5)
        finally:
            if parent.poll() is None:
                parent.kill()
