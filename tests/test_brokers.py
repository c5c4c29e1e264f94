"""Tests for scheduler.brokers with a fake sender: batching in the broker's thread, deadlines, errors."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence

import pytest

from scheduler.brokers import Broker, Unreachable, require
from scheduler.errors import BrokerError
from scheduler.jobs import Job

URL = "redis://:hunter2@cache.example:6379/0"
WAIT_S = 10.0  # the most a test waits for the broker's thread; it answers in microseconds


def job(name: str) -> Job:
    return Job("sidekiq", "default", name, {"class": "X", "args": []})


class FakeSender:
    """Records each batch; the first send may block until released, or raise."""

    def __init__(self, error: Exception | None = None, refuse: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.error = error
        self.refuse = refuse
        self.closed = False

    def send(self, jobs: Sequence[Job]) -> list[str | None]:
        self.entered.set()
        self.release.wait(WAIT_S)
        if self.error is not None:
            raise self.error
        self.batches.append([j.job_id for j in jobs])
        return [f"refused {j.job_id}" if j.job_id == self.refuse else None for j in jobs]

    def close(self) -> None:
        self.closed = True


def far() -> float:
    return time.monotonic() + WAIT_S


class TestBroker:
    def test_batches_waiting_go_in_one_send(self) -> None:
        """What is submitted while the thread is busy is sent together, each batch answered alone."""
        sender = FakeSender()
        sender.release.clear()
        broker = Broker(URL, "redis", opener=lambda url, kind: sender)
        first = broker.submit([job("a")], far())
        assert sender.entered.wait(WAIT_S)
        second = broker.submit([job("b"), job("c")], far())
        third = broker.submit([job("d")], far())
        sender.release.set()
        assert [None] == first.result(WAIT_S)
        assert [None, None] == second.result(WAIT_S)
        assert [None] == third.result(WAIT_S)
        assert [["a"], ["b", "c", "d"]] == sender.batches
        broker.close()

    def test_a_job_refused_alone(self) -> None:
        """A job the broker refuses fails alone; the others of its batch are sent."""
        sender = FakeSender(refuse="b")
        broker = Broker(URL, "redis", opener=lambda url, kind: sender)
        assert [None, "refused b"] == broker.submit([job("a"), job("b")], far()).result(WAIT_S)

    def test_a_batch_past_its_deadline_is_not_sent(self) -> None:
        """The loop gave up on it already: sending it late would only make a surprise."""
        sender = FakeSender()
        broker = Broker(URL, "redis", opener=lambda url, kind: sender)
        late = broker.submit([job("late")], time.monotonic() - 1)
        with pytest.raises(Unreachable, match="its time was up"):
            late.result(WAIT_S)
        assert [] == sender.batches

    def test_a_driver_error_is_an_outage_without_the_password(self) -> None:
        """Connection errors become Unreachable, with the URL and its password scrubbed; the connection is
        dropped, and the next batch opens a new one."""
        opened: list[FakeSender] = []

        def opener(url: str, kind: str) -> FakeSender:
            sender = FakeSender(ConnectionError(f"cannot reach {URL} (auth hunter2)") if not opened else None)
            opened.append(sender)
            return sender

        broker = Broker(URL, "redis", opener=opener)
        with pytest.raises(Unreachable) as info:
            broker.submit([job("a")], far()).result(WAIT_S)
        assert "ConnectionError: cannot reach redis://:***@cache.example:6379/0 (auth ***)" == str(info.value)
        assert opened[0].closed
        assert [None] == broker.submit([job("b")], far()).result(WAIT_S)
        assert 2 == len(opened)

    def test_a_missing_driver_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the driver, the error says which extra to install."""
        monkeypatch.setitem(sys.modules, "celery", None)
        with pytest.raises(BrokerError, match=r"pip install 'scheduler-clock\[celery\]'"):
            require("celery")
        monkeypatch.setitem(sys.modules, "rq", None)
        with pytest.raises(
            BrokerError, match=r"needs the rq package: pip install 'scheduler-clock\[redis\]'"
        ):
            require("rq")
