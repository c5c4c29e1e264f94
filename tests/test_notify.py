"""Tests for scheduler.notify against real unix datagram sockets, as systemd's NOTIFY_SOCKET is."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from scheduler import notify
from scheduler.observe import NO_NOTIFY

DEADLINE_S = 10.0  # never reached unless a send blocks


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Listener:
    """A datagram socket bound where systemd's would be; reads what has arrived, without waiting."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)

    def received(self) -> list[str]:
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a socket's path must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="notify-") as path:
        yield Path(path)


@pytest.fixture
def listener(short_dir: Path) -> Iterator[Listener]:
    bound = Listener(str(short_dir / "notify.sock"))
    yield bound
    bound.close()


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()


def notifier(address: str, *, usec: str | None = None, clock: FakeMonotonic | None = None) -> Any:
    env = {"NOTIFY_SOCKET": address}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    return notify.from_env(env, log=structlog.get_logger(), monotonic=clock or FakeMonotonic())


class TestFromEnv:
    def test_no_socket_means_nothing_at_all(self) -> None:
        """Without NOTIFY_SOCKET (or with it empty) there is nothing to tell: the do-nothing notifier."""
        assert NO_NOTIFY is notify.from_env({}, log=structlog.get_logger())
        assert NO_NOTIFY is notify.from_env({"NOTIFY_SOCKET": ""}, log=structlog.get_logger())

    def test_the_variables_are_taken_out_of_the_tasks_environment(self, listener: Listener) -> None:
        """NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are removed from the environment tasks get;
        everything else stays."""
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1", "A": "b"}
        notify.from_env(env, log=structlog.get_logger()).close()
        assert {"A": "b"} == env
        env = {"WATCHDOG_USEC": "1000000", "A": "b"}
        notify.from_env(env, log=structlog.get_logger())
        assert {"A": "b"} == env

    @pytest.mark.parametrize(
        ("usec", "pid", "expected"),
        [
            ("4000000", None, 2.0),
            ("4000000", "4242", 2.0),
            ("4000000", "1", None),
            ("0", None, None),
            ("", None, None),
            ("soon", None, None),
            ("²", None, None),
        ],
    )
    def test_watchdog_when_usec_is_set_for_this_process(
        self, listener: Listener, usec: str, pid: str | None, expected: float | None
    ) -> None:
        """Keep-alives every half of WATCHDOG_USEC, if WATCHDOG_PID is unset or this process."""
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": usec}
        if pid is not None:
            env["WATCHDOG_PID"] = pid
        clock = FakeMonotonic()
        sent = notify.from_env(env, log=structlog.get_logger(), pid=4242, monotonic=clock)
        sent.heartbeat()
        assert expected == sent.due_in()
        assert (["WATCHDOG=1"] if expected else []) == listener.received()


class TestMessages:
    def test_ready_and_stopping_with_a_status(self, listener: Listener) -> None:
        """READY=1 and STOPPING=1 go out as one datagram each, with the status on a line of its own."""
        sent = notifier(listener.address)
        sent.ready("5 tasks from schedules.yaml")
        sent.stopping("stopping on SIGTERM,\n2 runs to end")
        assert [
            "READY=1\nSTATUS=5 tasks from schedules.yaml",
            "STOPPING=1\nSTATUS=stopping on SIGTERM, 2 runs to end",
        ] == listener.received()

    def test_a_status_that_is_not_utf8(self, listener: Listener) -> None:
        """A config path that is not UTF-8 (a surrogate escape) is sent with a replacement character."""
        notifier(listener.address).ready("1 task from /srv/caf\udce9.yaml")
        assert ["READY=1\nSTATUS=1 task from /srv/caf?.yaml"] == listener.received()

    def test_abstract_namespace(self) -> None:
        """`@name` is a socket in Linux's abstract namespace."""
        bound = Listener(f"@scheduler-test-{uuid.uuid4().hex}")
        try:
            notifier(bound.address).ready("ok")
            assert ["READY=1\nSTATUS=ok"] == bound.received()
        finally:
            bound.close()

    def test_keepalive_every_half_of_the_watchdog_time(self, listener: Listener) -> None:
        """The first heartbeat sends WATCHDOG=1; later ones only once half of WATCHDOG_USEC has passed,
        and due_in says when the loop must turn for the next."""
        clock = FakeMonotonic()
        sent = notifier(listener.address, usec="3000000", clock=clock)
        assert 0.0 == sent.due_in()
        sent.heartbeat()
        clock.t += 1.0
        sent.heartbeat()
        assert (["WATCHDOG=1"], 0.5) == (listener.received(), sent.due_in())
        clock.t += 0.49  # the loop's sleep ends a little early: close enough
        sent.heartbeat()
        sent.heartbeat()
        assert (["WATCHDOG=1"], 1.5) == (listener.received(), sent.due_in())

    def test_no_watchdog_no_keepalives(self, listener: Listener) -> None:
        """Without WATCHDOG_USEC a heartbeat sends nothing, and the loop need not wake for it."""
        sent = notifier(listener.address)
        sent.heartbeat()
        assert ([], None) == (listener.received(), sent.due_in())


def in_thread(work: Any) -> None:
    """Run `work` in a thread and fail if it has not returned by the deadline (it blocked)."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), "a notify message blocked"


class TestFailures:
    def test_nobody_listening_is_logged_once(self, short_dir: Path) -> None:
        """A socket nobody is bound to: nothing raises, one notify.failed; once a message got through,
        a new failure is logged again."""
        path = str(short_dir / "gone.sock")
        clock = FakeMonotonic()
        with capture_logs() as logs:
            sent = notifier(path, usec="2000000", clock=clock)
            sent.ready("ok")
            for _ in range(5):
                clock.t += 1
                sent.heartbeat()
            bound = Listener(path)
            clock.t += 1
            sent.heartbeat()
            bound.close()
            os.unlink(path)
            sent.stopping("bye")
        assert [
            {
                "event": "notify.failed",
                "log_level": "warning",
                "socket": path,
                "message": "READY=1",
                "error": "No such file or directory",
            },
            {
                "event": "notify.failed",
                "log_level": "warning",
                "socket": path,
                "message": "STOPPING=1",
                "error": "No such file or directory",
            },
        ] == logs

    def test_a_full_socket_never_blocks(self, listener: Listener) -> None:
        """A service manager that stops reading: sends return at once, dropped, and one notify.failed."""
        clock = FakeMonotonic()
        sent = notifier(listener.address, usec="2000000", clock=clock)

        def flood() -> None:
            for _ in range(5_000):
                clock.t += 1
                sent.heartbeat()

        with capture_logs() as logs:
            in_thread(flood)
        assert [("notify.failed", "WATCHDOG=1", "Resource temporarily unavailable")] == [
            (e["event"], e["message"], e["error"]) for e in logs
        ]
        assert 0 < len(listener.received()) < 5_000

    @pytest.mark.parametrize("address", ["notify.sock", "vsock:2:1234"])
    def test_an_address_it_cannot_use(self, address: str) -> None:
        """An address that is neither an absolute path nor @name: logged once, then nothing is sent."""
        with capture_logs() as logs:
            sent = notifier(address, usec="2000000")
            sent.ready("ok")
            sent.heartbeat()
            sent.stopping("bye")
        assert [("notify.failed", address, "not an absolute path or an @abstract name")] == [
            (e["event"], e["socket"], e["error"]) for e in logs
        ]
        assert None is sent.due_in()
