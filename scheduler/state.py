"""What the clock loop shares with the policies it wires (claims.py, followups.py): each task's state, each
queued fire, a pending retry, and what those policies may ask of the loop (Host)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from scheduler.config import TaskSpec

if TYPE_CHECKING:
    from scheduler.runner import Run, RunResult

LogMethod = Callable[..., Any]


class Fire(NamedTuple):
    """A queued fire. Ordered as a tuple, by due time then by the unique seq (C-speed comparisons)."""

    due: float  # POSIX time of the fire, jitter included
    seq: int
    name: str
    instant: datetime
    generation: int


@dataclass(slots=True)
class TaskState:
    """One task as the loop runs it: its spec, which reload generation its queued fires belong to, the
    newest instant it fired, its runs going and its pending retry."""

    spec: TaskSpec
    generation: int = 0
    last_instant: datetime | None = None  # the newest instant fired or given up on; never fired again
    runs: list[Run] = field(default_factory=list)
    retry: PendingRetry | None = None

    @property
    def busy(self) -> bool:
        return any(not run.done for run in self.runs)


@dataclass(slots=True)
class PendingRetry:
    """A failed run's next attempt, waiting out its delay; it keeps what the last attempt left, for the
    failure notices when the retries end without another attempt."""

    due: float
    instant: datetime
    attempt: int  # the attempt this retry will be (2 for the first retry)
    failed: Run
    result: RunResult


class Host(Protocol):
    """What a gate needs from the loop."""

    @property
    def stopping(self) -> bool:
        """True once a stop was requested: nothing new starts."""

    def now(self) -> datetime: ...

    def task(self, name: str) -> TaskState | None:
        """The task of that name as the loop runs it now, if any."""

    def is_current(self, state: TaskState) -> bool:
        """Whether `state` is still the task's (a reload may have removed or replaced it)."""

    def is_live(self, fire: Fire) -> bool:
        """Whether a queued fire still belongs to its task's current schedule."""

    def paused(self, name: str, at: datetime) -> bool:
        """Whether a pause holds back what of this task is due at `at` (control.Control.paused)."""

    def start(
        self,
        state: TaskState,
        instant: datetime,
        trigger: str,
        *,
        run_id: str | None = None,
        yield_cpu: bool | None = None,
        attempt: int = 1,
        requested_by: str | None = None,
    ) -> bool:
        """Start a run under the task's overlap policy (a manual one whatever it is); True if one started."""

    def skipped(self, name: str, instant: datetime, reason: str, log: LogMethod, **fields: Any) -> None: ...

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a job the shutdown waits for."""
