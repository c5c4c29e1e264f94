"""What the clock loop knows of each task and of each queued fire, shared with claims and follow-ups."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from scheduler.config import TaskSpec

if TYPE_CHECKING:
    from scheduler.followups import PendingRetry
    from scheduler.runner import Run


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
