"""structlog set-up: one line per event, to stdout, as console, logfmt or JSON.

Every line carries `timestamp` (ISO 8601, UTC), `level` and `event`. The events and their fields are a
public contract, listed in the README.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

LogFormat = Literal["auto", "console", "logfmt", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "console", "logfmt", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
_FIRST_KEYS = ("timestamp", "level", "event")


def resolve_format(fmt: LogFormat, stream: TextIO) -> LogFormat:
    """`auto` is console on a terminal and logfmt otherwise (Heroku's convention)."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "logfmt"


def _first_keys(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level and event first, so every format reads the same way."""
    ordered: dict[str, Any] = {k: event_dict.pop(k) for k in _FIRST_KEYS if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _lists_for_logfmt(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """logfmt has no lists: render them as comma-separated values (e.g. config.reloaded's names)."""
    for key, value in event_dict.items():
        if isinstance(value, list | tuple):
            event_dict[key] = ",".join(str(v) for v in value)
    return event_dict


class _Writer:
    """Writes each rendered event as one flushed line. If the reader of the stream goes away (a closed pipe),
    logging stops quietly: the clock must keep firing tasks even when nobody reads its log."""

    def __init__(self, stream: TextIO) -> None:
        self._stream: TextIO | None = stream

    def msg(self, message: str) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(message + "\n")
            self._stream.flush()
        except (BrokenPipeError, ValueError):
            self._detach()

    def _detach(self) -> None:
        """Point the dead stream at /dev/null, so that the interpreter's final flush does not fail either."""
        stream, self._stream = self._stream, None
        try:
            if stream is not None:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
        except (OSError, ValueError):
            pass

    debug = info = warning = warn = error = critical = exception = msg


def configure(fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None) -> LogFormat:
    """Configure structlog for the whole process; returns the format actually used."""
    out = stream if stream is not None else sys.stdout
    chosen = resolve_format(fmt, out)
    processors: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _first_keys,
    ]
    if chosen == "json":
        processors.append(structlog.processors.JSONRenderer())
    elif chosen == "logfmt":
        processors.append(_lists_for_logfmt)
        processors.append(structlog.processors.LogfmtRenderer(bool_as_flag=False))
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=resolve_format("auto", out) == "console"))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *_args: _Writer(out),
        cache_logger_on_first_use=False,
    )
    return chosen


def get_logger(**context: Any) -> FilteringBoundLogger:
    """A logger with `context` bound to every event."""
    return cast(FilteringBoundLogger, structlog.get_logger().bind(**context))
