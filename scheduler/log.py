"""structlog set-up: one line per event, to stdout, as console, logfmt or JSON.

Every line carries `timestamp` (ISO 8601, UTC), `level` and `event`. The events and their fields are a
public contract, listed in the README. Every format puts the fields in one order (`_KEY_ORDER`): the event,
the task and the run first, so that a line reads the same way whatever the call site bound or passed. A
None is JSON's null; console and logfmt leave the field out, so that no line ever shows Python's `None`.

Lines are rendered on the caller's thread and written by a daemon thread, through a bounded buffer: a log
reader that stops reading (a blocking log driver, a stuck shipper, Ctrl-S) never blocks the clock's loop.
"""

from __future__ import annotations

import logging
import os
import re
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

LogFormat = Literal["auto", "console", "logfmt", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "console", "logfmt", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
BUFFER_LINES = 10_000  # lines waiting for a slow reader; past this (or BUFFER_BYTES), new lines are dropped
# The writer waits this long after the first line of a quiet spell, so that a burst is written in one go.
_GATHER_S = 0.002
BUFFER_BYTES = 4 * 1024 * 1024
_FIRST_KEYS = ("timestamp", "level", "event")
# The order of the fields, in every format: the line's own three, then who it is about, then the well-known
# fields in the order a reader wants them; any other field follows by name, and the long free text
# (an error, a task's output line) comes last, so that the short fields before it line up.
_KEY_ORDER = (
    *_FIRST_KEYS,
    "task",
    "run_id",
    "hook",
    "attempt",
    "kind",
    "store",
    "url",
    "trigger",
    "scheduled_for",
    "pid",
    "stream",
    "truncated",
    "status",
    "exit_code",
    "signal",
    "duration_s",
    "reason",
)
_LAST_KEYS = ("error", "detail", "line")
_PLACED = frozenset((*_KEY_ORDER, *_LAST_KEYS))
_WRITE_BYTES = 64 * 1024  # lines are joined into writes of about this size (a pipe's buffer)

# C0 controls (CR and LF included), DEL, C1 controls, and the Unicode line and paragraph separators: any of
# them in a value could start a forged line or move a terminal's cursor.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every control character (C0, DEL, C1, U+2028, U+2029) as a backslash escape: `\\r`,
    `\\x1b`, `\\u2028`. Other characters, backslashes included, are left as they are."""
    if _CONTROLS.search(text) is None:
        return text
    return _CONTROLS.sub(_escape_one, text)


def resolve_format(fmt: LogFormat, stream: TextIO) -> LogFormat:
    """`auto` is console on a terminal and logfmt otherwise (Heroku's convention)."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "logfmt"


def _ordered_keys(event_dict: EventDict) -> list[str]:
    """The keys in _KEY_ORDER, then the others by name, then _LAST_KEYS."""
    keys = [k for k in _KEY_ORDER if k in event_dict]
    if len(keys) < len(event_dict):
        keys += sorted(k for k in event_dict if k not in _PLACED)
        keys += [k for k in _LAST_KEYS if k in event_dict]
    return keys


def _in_order(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """The fields in their order (JSON: a None stays a null)."""
    return {k: event_dict[k] for k in _ordered_keys(event_dict)}


def _in_order_without_none(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """The fields in their order, for console and logfmt: a field whose value is None is left out, and a
    None inside a list or a mapping becomes an empty string."""
    ordered: dict[str, Any] = {}
    for key in _ordered_keys(event_dict):
        value = event_dict[key]
        if value is None:
            continue
        ordered[key] = _without_none(value) if isinstance(value, list | tuple | dict) else value
    return ordered


def _without_none(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [("" if v is None else _without_none(v)) for v in value]
    if isinstance(value, dict):
        return {k: ("" if v is None else _without_none(v)) for k, v in value.items()}
    return value


def _logfmt_text(value: Any) -> str:
    """A value as logfmt shows it: booleans in lower case, lists comma-separated, mappings as
    comma-separated `key=value`, and a None (inside a list, say) empty."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_logfmt_text(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={_logfmt_text(v)}" for k, v in value.items())
    return str(value)


def _logfmt(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> str:
    """`key=value` pairs (see _logfmt_text). A value with a space, `=`, `"` or a control character is
    quoted, with `\\`, `"` and the controls escaped: a value cannot end the line."""
    pairs = []
    for key, value in event_dict.items():
        text = _logfmt_text(value)
        if " " in text or "=" in text or '"' in text or _CONTROLS.search(text) is not None:
            text = '"' + escape_controls(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
        pairs.append(f"{escape_controls(str(key))}={text}")
    return " ".join(pairs)


class _Escaped:
    """A string shown by the console renderer through repr(), which escapes every control character."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return repr(self.text)


def _escape_for_console(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Keys, the event and the timestamp are printed as they are: escape their controls. Other strings
    with a control are shown quoted and escaped, as the renderer shows every value that is not a string."""
    texts = [*event_dict, *[value for value in event_dict.values() if isinstance(value, str)]]
    if _CONTROLS.search(" ".join(texts)) is None:
        return event_dict  # the common case, in one search
    escaped: dict[str, Any] = {}
    for key, value in event_dict.items():
        if isinstance(value, str) and _CONTROLS.search(value) is not None:
            value = escape_controls(value) if key in _FIRST_KEYS else _Escaped(value)
        escaped[escape_controls(key)] = value
    return escaped


class LineBuffer:
    """A bounded queue of rendered lines, written by a daemon thread with `write` (e.g. to a descriptor).

    Buffer policy: `put` never blocks and never waits on the reader. When `max_lines` lines or `max_bytes`
    bytes wait (the one being written included), a new line is dropped and counted; the writer writes
    `notice(count)` where the lines went missing, once the lines before them got through. A write that
    fails (a closed pipe) calls `on_broken` once and ends the writer: later lines are dropped quietly.
    """

    def __init__(
        self,
        write: Callable[[memoryview], int],
        notice: Callable[[int], bytes],
        *,
        on_broken: Callable[[], None] = lambda: None,
        max_lines: int = BUFFER_LINES,
        max_bytes: int = BUFFER_BYTES,
    ) -> None:
        self._write = write
        self._notice = notice
        self._on_broken = on_broken
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        self._queue: deque[bytes | _Gap] = deque()
        self._lines = 0  # waiting or being written
        self._bytes = 0
        self._writing = False
        self._closed = False
        self._broken = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> tuple[int, int]:
        """Lines and bytes waiting or being written."""
        with self._lock:
            return self._lines, self._bytes

    def put(self, line: bytes) -> None:
        """Queue one line (newline included), or count it as dropped when the buffer is full."""
        with self._lock:
            if self._closed:
                return
            queue = self._queue
            if self._lines >= self._max_lines or self._bytes + len(line) > self._max_bytes:
                if queue and isinstance(queue[-1], _Gap):
                    queue[-1].count += 1
                    return
                queue.append(_Gap())
            else:
                self._lines += 1
                self._bytes += len(line)
                queue.append(line)
            if len(queue) == 1:
                self._wake.notify()

    def flush(self, timeout_s: float) -> bool:
        """Wait at most `timeout_s` for every queued line to be written; False if some still wait (or the
        writer stopped on a broken stream)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._queue or self._writing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._drained.wait(remaining)
            return not self._broken

    def close(self) -> None:
        """Accept no more lines; the writer ends once it has written those queued."""
        with self._lock:
            self._closed = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    if self._closed:
                        self._drained.notify_all()
                        return
                    self._wake.wait()
                if len(self._queue) == 1 and not self._closed:
                    # Woken by the first line of what may be a burst (a hundred task.started at one
                    # instant): let the rest come before writing, rather than waking and taking the
                    # interpreter's lock from the loop for every line.
                    self._lock.release()
                    try:
                        time.sleep(_GATHER_S)
                    finally:
                        self._lock.acquire()
                batch, self._queue = self._queue, deque()
                if len(batch) > 1 and isinstance(batch[-1], _Gap):
                    # Lines still being dropped go on counting in this gap, for one notice per stall.
                    self._queue.append(batch.pop())
                self._writing = True
            lines = [item for item in batch if isinstance(item, bytes)]
            ok = self._write_batch(batch)
            if not ok:
                self._on_broken()
            with self._lock:
                self._writing = False
                self._lines -= len(lines)
                self._bytes -= sum(len(line) for line in lines)
                if not ok:
                    self._closed = self._broken = True
                    self._queue.clear()
                    self._lines = self._bytes = 0
                self._drained.notify_all()
            if not ok:
                return

    def _write_batch(self, batch: deque[bytes | _Gap]) -> bool:
        chunk: list[bytes] = []
        size = 0
        for item in batch:
            if isinstance(item, bytes):
                chunk.append(item)
                size += len(item)
                if size < _WRITE_BYTES:
                    continue
            if not self._write_all(b"".join(chunk)):
                return False
            chunk, size = [], 0
            if isinstance(item, _Gap) and not self._write_all(self._notice(item.count)):
                return False
        return self._write_all(b"".join(chunk))

    def _write_all(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                view = view[self._write(view) :]
            except OSError:
                return False
        return True


class _Gap:
    """Where lines were dropped in the queue, and how many."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 1


def _fd_write(fd: int) -> Callable[[memoryview], int]:
    def write(data: memoryview) -> int:
        while True:
            try:
                return os.write(fd, data)
            except BlockingIOError:  # someone made the shared descriptor non-blocking: wait until writable
                select.select([], [fd], [])

    return write


def _point_at_devnull(fd: int) -> None:
    """Point the dead descriptor at /dev/null, so that the interpreter's final flush does not fail either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass


class _Writer:
    """structlog's logger: hands each rendered line to the buffer, or, for a stream without a descriptor
    (an io.StringIO in tests), writes it at once."""

    def __init__(self, stream: TextIO, buffer: LineBuffer | None) -> None:
        self._stream = stream
        self._buffer = buffer
        self._encoding = getattr(stream, "encoding", None) or "utf-8"

    def msg(self, message: str) -> None:
        if self._buffer is not None:
            self._buffer.put((message + "\n").encode(self._encoding, "backslashreplace"))
        else:
            self._stream.write(message + "\n")

    debug = info = warning = warn = error = critical = exception = msg


_buffer: LineBuffer | None = None


def configure(fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None) -> LogFormat:
    """Configure structlog for the whole process; returns the format actually used."""
    global _buffer
    out = stream if stream is not None else sys.stdout
    chosen = resolve_format(fmt, out)
    processors: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    if chosen == "json":
        # json.dumps escapes every non-ASCII character (U+2028 and U+2029 too) and every control.
        processors += [_in_order, structlog.processors.JSONRenderer()]
    elif chosen == "logfmt":
        processors += [_in_order_without_none, _logfmt]
    else:
        colors = resolve_format("auto", out) == "console"
        processors += [
            _in_order_without_none,
            _escape_for_console,
            structlog.dev.ConsoleRenderer(colors=colors, sort_keys=False),
        ]
    threshold = logging.getLevelNamesMapping()[level.upper()]
    close()
    _buffer = _open_buffer(out, processors, notify=threshold <= logging.WARNING)
    writer = _Writer(out, _buffer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_args: writer,
        cache_logger_on_first_use=False,
    )
    return chosen


def _open_buffer(out: TextIO, processors: list[Processor], notify: bool) -> LineBuffer | None:
    """A buffer writing to the stream's descriptor, or None if it has none. Lines go to the descriptor,
    never through the stream's own buffer: the interpreter's flush at exit has nothing to write, so it
    cannot hang on a stalled reader."""
    try:
        fd = out.fileno()
        out.flush()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    encoding = getattr(out, "encoding", None) or "utf-8"

    def notice(count: int) -> bytes:
        if not notify:
            return b""
        event_dict: Any = {"event": "log.dropped", "count": count}
        for processor in processors:
            event_dict = processor(None, "warning", event_dict)
        return (cast(str, event_dict) + "\n").encode(encoding, "backslashreplace")

    return LineBuffer(
        _fd_write(fd),
        notice,
        on_broken=lambda: _point_at_devnull(fd),
        max_lines=BUFFER_LINES,
        max_bytes=BUFFER_BYTES,
    )


def flush(timeout_s: float) -> bool:
    """Wait at most `timeout_s` for the queued lines to be written (call it before exit); False if some
    could not be: the reader is stalled or gone."""
    return _buffer.flush(timeout_s) if _buffer is not None else True


def close() -> None:
    """Stop the writer once it has written what is queued (without waiting); later events are dropped."""
    global _buffer
    if _buffer is not None:
        _buffer.close()
        _buffer = None


def get_logger(**context: Any) -> FilteringBoundLogger:
    """A logger with `context` bound to every event."""
    return cast(FilteringBoundLogger, structlog.get_logger().bind(**context))
