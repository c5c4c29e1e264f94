"""One exception tree for everything the scheduler reports to a user."""

from __future__ import annotations

from collections.abc import Sequence


class SchedulerError(Exception):
    """Base of every error the scheduler raises on purpose; the CLI prints it without a traceback."""


class ScheduleError(SchedulerError):
    """A schedule expression cannot be parsed or never fires. The message names the bad value only;
    config.py adds the file, line and task."""


class ConfigError(SchedulerError):
    """schedules.yaml is missing, unreadable or invalid.

    Holds every problem found, each already formatted as ``PATH:LINE:COL: message`` (column optional),
    so that a user fixes them all in one pass.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UnknownTaskError(SchedulerError):
    """A command named a task that the config file does not define."""

    def __init__(self, name: str, known: Sequence[str], suggestion: str | None) -> None:
        self.name = name
        self.known = list(known)
        self.suggestion = suggestion
        hint = f" (did you mean '{suggestion}'?)" if suggestion else ""
        names = ", ".join(self.known) if self.known else "none"
        super().__init__(f"unknown task '{name}'{hint}; tasks: {names}")


class StoreError(SchedulerError):
    """The run-history database is unreachable, unreadable or refused a write, or its URL is wrong.

    The message names the store by its redacted URL (store.redact), so it is safe to log: never a password.
    """


class StoreMissingError(StoreError):
    """A command that only reads the run history named a SQLite file that does not exist (a mistyped path
    would otherwise create a new, empty database)."""


class ControlError(SchedulerError):
    """A pause, resume or run request that cannot be made as asked (a pause ending in the past, a reason too
    long...). The message names the task and the bad value."""


class NoLiveClockError(ControlError):
    """A run was asked for while no live clock uses the store: nothing would run it, so it is not asked."""


class WebError(SchedulerError):
    """The dashboard cannot start as asked: an address it may not listen on without a password, or a bad
    one."""


class BrokerError(SchedulerError):
    """A job could not be handed to its broker (Redis for Sidekiq and RQ, RabbitMQ or Redis for Celery): the
    broker's URL is wrong, its driver is not installed, or it cannot be reached. The message names the broker
    by its redacted URL, never a password."""
