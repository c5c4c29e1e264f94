"""What the clock loop reports as it goes, to metrics, to pings and to systemd, with do-nothing defaults.

The loop calls these unconditionally; a clock without `--metrics-addr`, without pings or outside systemd
gets the null versions, so no call site checks whether a collaborator is there.
"""

from __future__ import annotations

from typing import Protocol


class MetricsSink(Protocol):
    """The series the loop feeds (metrics.Metrics)."""

    def heartbeat(self) -> None: ...
    def next_fire(self, task: str, at: float | None) -> None: ...
    def run_started(self, task: str) -> None: ...
    def run_finished(self, task: str, status: str, duration_s: float) -> None: ...
    def skipped(self, task: str, reason: str) -> None: ...
    def missed(self, task: str, count: int) -> None: ...
    def config_reloaded(self, result: str) -> None: ...
    def forget_task(self, task: str) -> None: ...
    def seed(self, task: str, *, last_run: float | None, last_success: float | None) -> None: ...


class PingSink(Protocol):
    """Dead man's switch pings (pings.Pinger): one when a run starts, one after its last attempt."""

    def start(self, url: str, run_id: str, *, task: str, timeout_s: float) -> None: ...

    def finish(
        self,
        url: str,
        run_id: str,
        *,
        task: str,
        success: bool,
        exit_code: int | None,
        use_exit_code: bool,
        output: str,
        timeout_s: float,
    ) -> None: ...


class NotifySink(Protocol):
    """The service manager (notify.Notifier): ready, stopping, and keep-alives from the loop's turns."""

    def ready(self, status: str) -> None: ...
    def stopping(self, status: str) -> None: ...
    def heartbeat(self) -> None: ...
    def due_in(self) -> float | None: ...
    def close(self) -> None: ...


class NoMetrics:
    """Metrics that go nowhere."""

    def heartbeat(self) -> None:
        pass

    def next_fire(self, task: str, at: float | None) -> None:
        pass

    def run_started(self, task: str) -> None:
        pass

    def run_finished(self, task: str, status: str, duration_s: float) -> None:
        pass

    def skipped(self, task: str, reason: str) -> None:
        pass

    def missed(self, task: str, count: int) -> None:
        pass

    def config_reloaded(self, result: str) -> None:
        pass

    def forget_task(self, task: str) -> None:
        pass

    def seed(self, task: str, *, last_run: float | None, last_success: float | None) -> None:
        pass


class NoPings:
    """Pings that are never sent."""

    def start(self, url: str, run_id: str, *, task: str, timeout_s: float) -> None:
        pass

    def finish(
        self,
        url: str,
        run_id: str,
        *,
        task: str,
        success: bool,
        exit_code: int | None,
        use_exit_code: bool,
        output: str,
        timeout_s: float,
    ) -> None:
        pass


class NoNotify:
    """No service manager to tell (NOTIFY_SOCKET unset)."""

    def ready(self, status: str) -> None:
        pass

    def stopping(self, status: str) -> None:
        pass

    def heartbeat(self) -> None:
        pass

    def due_in(self) -> float | None:
        return None

    def close(self) -> None:
        pass


NO_METRICS = NoMetrics()
NO_PINGS = NoPings()
NO_NOTIFY = NoNotify()
