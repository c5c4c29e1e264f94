"""Pauses and run requests: what the store's control plane asks of a clock, and how the clock obeys.

The CLI (`scheduler pause`, `resume`) and a dashboard write pauses and run requests into the store; every
clock polls them about once a second, from its store thread (recorder.Recorder.poll), never on the loop.
`Control` keeps the pauses it last heard of, answers per fire whether a pause holds it back, logs
`task.paused` / `task.resumed` when it sees a pause begin or end, and starts the run requests its clock won.
Without a store (`NoControl`) nothing is paused and nothing is requested.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from datetime import datetime
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from scheduler.runs import iso_utc, new_run_id
from scheduler.state import Host
from scheduler.store import Override, Poll, RunRequest


class ControlLedger(Protocol):
    """The clock's side of the control plane in the store (recorder.Recorder)."""

    async def poll(self, tasks: Container[str] | None) -> Poll | None:
        """The pauses and this clock's run requests, claiming those pending for `tasks` (None: claim
        nothing); None when the store could not say."""

    def request_started(self, request_id: int, run_id: str) -> None: ...
    def request_released(self, request_id: int) -> None: ...


class NoControl:
    """Without a store: nothing is paused, nothing is requested."""

    def seed(self, overrides: Mapping[str, Override]) -> None:
        pass

    def tick(self) -> None:
        pass

    def paused(self, name: str, at: datetime) -> bool:
        return False


class Control:
    """Pauses and run requests, as the clock's polls of the store bring them."""

    def __init__(
        self,
        ledger: ControlLedger,
        host: Host,
        *,
        tasks: Callable[[], Container[str]],
        unclaimed: Callable[[str, datetime, str], str | None],
        log: FilteringBoundLogger,
    ) -> None:
        self._ledger = ledger
        self._host = host
        self._tasks = tasks  # the names the clock knows, read on the store's thread: an immutable mapping
        self._unclaimed = unclaimed
        self._log = log
        self._overrides: Mapping[str, Override] = {}
        self._announced: dict[str, Override] = {}  # per known task, the pause last logged as holding it
        self._handled: set[int] = set()  # requests started or given back, until the store stops holding them
        self._polling = False

    def seed(self, overrides: Mapping[str, Override]) -> None:
        """The pauses as the clock starts: those holding are logged (task.paused) before the first fire."""
        self._overrides = overrides
        self._announce(self._host.now())

    def tick(self) -> None:
        """About once a second, on the loop: note the pauses that ran out, and poll the store unless a poll
        is still out (a stopping clock claims no more requests)."""
        self._announce(self._host.now())
        if self._polling or self._host.stopping:
            return
        self._polling = True
        self._host.track(self._poll())

    def paused(self, name: str, at: datetime) -> bool:
        """Whether a pause holds back what of this task is due at `at` (Override.holds). When the store
        cannot be reached, the pauses last heard of go on holding, and those with an `until` still end."""
        override = self._overrides.get(name)
        return override is not None and override.holds(at)

    async def _poll(self) -> None:
        try:
            poll = await self._ledger.poll(None if self._host.stopping else self._tasks())
        finally:
            self._polling = False
        if poll is None:
            return
        self._overrides = poll.overrides
        self._announce(self._host.now())
        for request in poll.expired:
            self._log.warning(
                "request.expired",
                task=request.task,
                request_id=request.id,
                requested_by=request.requested_by,
                requested_at=iso_utc(request.requested_at),
            )
        held = {request.id for request in poll.requests}
        self._handled &= held
        for request in poll.requests:
            if request.id not in self._handled:
                self._handled.add(request.id)
                self._start(request)

    def _start(self, request: RunRequest) -> None:
        """Start a run request this clock won, at once, as a run with trigger manual and requested_by.

        Manual run policy, as `scheduler run-now`: the run starts whatever the task's overlap policy (a run
        going is left alone, and counts for the fires that follow), `enabled: false` or a pause; it is
        recorded (never claimed), and pings, hooks and retries follow it as any run of the clock. A request
        whose task a reload removed meanwhile, or that comes while the clock stops, is given back.
        """
        state = self._host.task(request.task)
        if state is None or self._host.stopping:
            self._ledger.request_released(request.id)
            return
        now = self._host.now()
        run_id = self._unclaimed(request.task, now, "manual") or new_run_id()
        self._ledger.request_started(request.id, run_id)
        self._host.start(
            state, now, "manual", run_id=run_id, yield_cpu=True, requested_by=request.requested_by
        )

    def _announce(self, now: datetime) -> None:
        """Log each known task's pause as it begins (task.paused), changes, or ends (task.resumed: `by` who
        resumed it, or `expired` when its `until` passed)."""
        for name in {*self._overrides, *self._announced}:
            if self._host.task(name) is None:
                self._announced.pop(name, None)
                continue
            override = self._overrides.get(name)
            holding = override if override is not None and override.holds(now) else None
            if holding == self._announced.get(name):
                continue
            if holding is not None:
                self._announced[name] = holding
                until = None if holding.until is None else iso_utc(holding.until)
                self._log.info("task.paused", task=name, by=holding.by, reason=holding.reason, until=until)
                continue
            del self._announced[name]
            expired = override is not None and override.paused
            by = override.by if override is not None and not expired else None
            self._log.info("task.resumed", task=name, by=by, expired=expired)
