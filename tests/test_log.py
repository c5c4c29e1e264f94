"""Tests for scheduler.log: the three formats, the fields every line carries, escaping, and the bounded
buffer between the loop and a reader that may stall."""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest
import structlog

from scheduler import log

DEADLINE_S = 30.0  # for waits on another thread: never reached unless the code under test is broken
# What must never reach a log line: C0 controls (but the final newline), DEL, C1, U+2028 and U+2029.
RAW_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    log.close()
    structlog.reset_defaults()


def emit(fmt: log.LogFormat, level: str = "info") -> str:
    out = io.StringIO()
    log.configure(fmt, level, stream=out)
    logger = log.get_logger(task="send-digest")
    logger.debug("task.debugging")
    logger.info("config.reloaded", added=["a", "b"], removed=[], changed=["c"])
    logger.warning("task.finished", status="failed", exit_code=3, signal=None)
    return out.getvalue()


class TestFormats:
    def test_json_lines_start_with_timestamp_level_event(self) -> None:
        """JSON lines carry timestamp (UTC ISO 8601), level and event first, then the fields."""
        lines = [json.loads(line) for line in emit("json").splitlines()]
        assert ["config.reloaded", "task.finished"] == [line["event"] for line in lines]
        assert ["timestamp", "level", "event"] == list(lines[0])[:3]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", lines[0]["timestamp"])
        assert {
            "level": "warning",
            "task": "send-digest",
            "status": "failed",
            "exit_code": 3,
            "signal": None,
        } == {k: lines[1][k] for k in ("level", "task", "status", "exit_code", "signal")}
        assert ["a", "b"] == lines[0]["added"]

    def test_logfmt(self) -> None:
        """logfmt puts timestamp, level and event first and joins lists with commas."""
        first, second = emit("logfmt").splitlines()
        assert re.match(
            r"timestamp=\S+Z level=info event=config\.reloaded task=send-digest added=a,b ", first
        )
        assert "exit_code=3" in second
        assert "level=warning" in second

    def test_console(self) -> None:
        """The console format is for people: the event name and the fields, no colours off a terminal."""
        text = emit("console")
        assert "config.reloaded" in text
        assert "\x1b[" not in text

    def test_level_filters(self) -> None:
        """--log-level debug shows debug events; info hides them."""
        assert "task.debugging" in emit("json", "debug")
        assert "task.debugging" not in emit("json", "info")


def keys_of(fmt: log.LogFormat, text: str) -> list[str]:
    """The field names of one rendered line, in the order shown (console: those after the event)."""
    if fmt == "json":
        return list(json.loads(text))
    return re.findall(r"(?:^| )([a-z_]+)=", text)


def render(fmt: log.LogFormat, **fields: object) -> str:
    out = io.StringIO()
    log.configure(fmt, stream=out)
    # Bound in the "wrong" order, and the fields passed in no particular order either.
    logger = log.get_logger(run_id="4a185e7a23c6").bind(task="backup")
    logger.warning("task.finished", **fields)
    return out.getvalue()


class TestOrder:
    FIELDS: ClassVar[dict[str, object]] = {
        "zeta": 1,
        "error": "boom",
        "duration_s": 1.5,
        "alpha": "a",
        "signal": "SIGTERM",
        "status": "killed",
    }
    EXPECTED: ClassVar[list[str]] = [
        "task",
        "run_id",
        "status",
        "signal",
        "duration_s",
        "alpha",
        "zeta",
        "error",
    ]

    @pytest.mark.parametrize("fmt", ["logfmt", "json"])
    def test_event_task_run_then_known_keys_then_others_by_name(self, fmt: log.LogFormat) -> None:
        """After timestamp, level and event: the task, the run id, the well-known fields in a fixed order,
        the others by name, and the long free text (error) last, whatever order they were given in."""
        assert ["timestamp", "level", "event", *self.EXPECTED] == keys_of(fmt, render(fmt, **self.FIELDS))

    def test_console_in_the_same_order(self) -> None:
        """The console shows the event, then the fields in the same order as logfmt (not sorted by name)."""
        text = render("console", **self.FIELDS)
        assert re.match(r"\S+Z \[warning\s*\] task\.finished\s+task=backup run_id=4a185e7a23c6 ", text)
        assert self.EXPECTED == keys_of("console", text)

    @pytest.mark.parametrize("fmt", ["console", "logfmt", "json"])
    def test_output_line_comes_last(self, fmt: log.LogFormat) -> None:
        """A task's output line comes after its stream and truncation flag."""
        out = io.StringIO()
        log.configure(fmt, stream=out)
        log.get_logger(task="t", run_id="r").info("task.output", line="x y", truncated=True, stream="stderr")
        assert ["task", "run_id", "stream", "truncated", "line"] == keys_of(fmt, out.getvalue())[-5:]


class TestNone:
    FIELDS: ClassVar[dict[str, object]] = {
        "status": "killed",
        "exit_code": None,
        "signal": None,
        "added": ["a", None],
        "clocks": {"web.1:4:5f0c2a": None, "web.2:9:c0ffee": "abc"},
    }

    @pytest.mark.parametrize("fmt", ["console", "logfmt", "json"])
    def test_no_python_none_in_any_format(self, fmt: log.LogFormat) -> None:
        """A None, at the top or inside a list or a mapping, never shows as Python's `None`."""
        text = render(fmt, **self.FIELDS)
        assert "None" not in text

    @pytest.mark.parametrize("fmt", ["console", "logfmt"])
    def test_console_and_logfmt_leave_a_none_field_out(self, fmt: log.LogFormat) -> None:
        """A field whose value is None is left out of console and logfmt lines."""
        keys = keys_of(fmt, render(fmt, **self.FIELDS))
        assert ("exit_code" in keys, "signal" in keys, "status" in keys) == (False, False, True)

    def test_json_keeps_null(self) -> None:
        """JSON shows a None as null, inside lists and mappings too."""
        line = json.loads(render("json", **self.FIELDS))
        assert (None, None, ["a", None]) == (line["exit_code"], line["signal"], line["added"])
        assert {"web.1:4:5f0c2a": None, "web.2:9:c0ffee": "abc"} == line["clocks"]

    def test_logfmt_mappings_and_lists(self) -> None:
        """logfmt shows a mapping as comma-separated key=value (quoted, for its `=`), a list
        comma-separated, and a None inside either as nothing."""
        text = render("logfmt", **self.FIELDS)
        assert ' added=a, clocks="web.1:4:5f0c2a=,web.2:9:c0ffee=abc"' in text


class TestAuto:
    def test_auto_is_logfmt_off_a_terminal(self) -> None:
        """auto picks logfmt for a pipe (Heroku's convention)."""
        assert "logfmt" == log.resolve_format("auto", io.StringIO())

    def test_auto_is_console_on_a_terminal(self) -> None:
        """auto picks console on a terminal."""

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

        assert "console" == log.resolve_format("auto", Tty())

    def test_explicit_format_wins(self) -> None:
        """An explicit format is used as given."""
        assert "json" == log.resolve_format("json", io.StringIO())


class TestClosedStream:
    def test_a_closed_pipe_does_not_break_logging(self) -> None:
        """When the log's reader goes away, events are dropped and the caller carries on."""
        read_fd, write_fd = os.pipe()
        stream = os.fdopen(write_fd, "w")
        log.configure("json", stream=stream)
        logger = log.get_logger()
        logger.info("before")
        os.close(read_fd)
        logger.info("task.started", task="a")
        logger.info("task.finished", task="a")
        assert False is log.flush(DEADLINE_S)
        stream.write("x")
        stream.flush()  # the dead pipe now points at /dev/null: no BrokenPipeError at exit either
        stream.close()


HOSTILE = [
    pytest.param("ok\rlevel=error event=task.finished", id="CR"),
    pytest.param("ok\ntimestamp=2026-01-01T00:00:00Z level=error event=task.finished", id="LF"),
    pytest.param("\x1b[2J\x1b[H", id="ESC"),
    pytest.param("a\u2028b\u2029c", id="U+2028"),
    pytest.param("a\x85b\x9bc", id="C1"),
    pytest.param("a\x00b\x7fc\x0bd\x0ce\x1cf", id="C0-DEL"),
]


def emit_output(fmt: log.LogFormat, line: str) -> str:
    out = io.StringIO()
    log.configure(fmt, stream=out)
    log.get_logger(task="t").info("task.output", stream="stdout", line=line)
    return out.getvalue()


class TestEscaping:
    def test_escape_controls(self) -> None:
        """Controls become backslash escapes; backslashes and other characters are left alone."""
        assert "ok\\rX\\n\\t\\x1b[2J\\x00\\x7f\\x85\\u2028\\u2029 é \\\\" == log.escape_controls(
            "ok\rX\n\t\x1b[2J\x00\x7f\x85\u2028\u2029 é \\\\"
        )

    @pytest.mark.parametrize("fmt", ["logfmt", "console", "json"])
    @pytest.mark.parametrize("line", HOSTILE)
    def test_a_value_cannot_forge_a_line(self, fmt: log.LogFormat, line: str) -> None:
        """A task's output line stays inside its event's line: no raw control, nothing that splits it."""
        text = emit_output(fmt, line)
        assert text.endswith("\n")
        assert 1 == len(text.splitlines())  # splitlines breaks at CR, LF, U+2028, \x85, \x0b, \x1c...
        assert None is RAW_CONTROLS.search(text[:-1])

    @pytest.mark.parametrize("line", HOSTILE)
    def test_json_keeps_the_value(self, line: str) -> None:
        """JSON escapes the controls and U+2028/U+2029 itself, and the value reads back unchanged."""
        assert line == json.loads(emit_output("json", line))["line"]

    def test_logfmt_quotes_and_escapes(self) -> None:
        """logfmt quotes a value with a control, and escapes it as a backslash sequence."""
        text = emit_output("logfmt", "ok\rlevel=error event=task.finished")
        assert text.rstrip("\n").endswith(' line="ok\\rlevel=error event=task.finished"')
        assert text.rstrip("\n").endswith(' line="\\x1b[2J"') is False
        assert emit_output("logfmt", "\x1b[2J").rstrip("\n").endswith(' line="\\x1b[2J"')

    def test_logfmt_escapes_backslashes_in_quoted_values(self) -> None:
        """In a quoted logfmt value a backslash is doubled, so an escape cannot be faked by the value."""
        assert emit_output("logfmt", 'a\\r "b"').rstrip("\n").endswith(' line="a\\\\r \\"b\\""')

    def test_console_shows_the_escapes(self) -> None:
        """The console format shows a value with controls quoted, with Python's escapes."""
        assert "line='\\x1b[2J'" in emit_output("console", "\x1b[2J")

    @pytest.mark.parametrize("fmt", ["logfmt", "console"])
    def test_keys_are_escaped(self, fmt: log.LogFormat) -> None:
        """Keys are escaped too."""
        out = io.StringIO()
        log.configure(fmt, stream=out)
        log.get_logger().info("x", **{"k\x1b[2J\n": "v"})
        text = out.getvalue()
        assert "k\\x1b[2J\\n=v" in text
        assert None is RAW_CONTROLS.search(text[:-1])


class StalledReader:
    """A write that blocks until released, as a pipe nobody reads; keeps what got through."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.written = bytearray()
        self.error: OSError | None = None

    def write(self, data: memoryview) -> int:
        self.entered.set()
        if not self.released.wait(DEADLINE_S):
            raise AssertionError("the writer was never released")
        if self.error is not None:
            raise self.error
        self.written += data
        return len(data)

    def release(self) -> None:
        self.released.set()


def notice(count: int) -> bytes:
    return f"dropped {count}\n".encode()


def stalled_buffer(reader: StalledReader, **limits: int) -> log.LineBuffer:
    """A buffer whose writer is stuck in the write of a first line, b"0\\n"."""
    buffer = log.LineBuffer(reader.write, notice, **limits)
    buffer.put(b"0\n")
    assert reader.entered.wait(DEADLINE_S)
    return buffer


class TestLineBuffer:
    def test_writes_lines_in_order(self) -> None:
        """Lines are written in the order they were put, and flush waits for them."""
        reader = StalledReader()
        reader.release()
        buffer = log.LineBuffer(reader.write, notice)
        for i in range(100):
            buffer.put(f"{i}\n".encode())
        assert True is buffer.flush(DEADLINE_S)
        assert "".join(f"{i}\n" for i in range(100)).encode() == reader.written
        assert (0, 0) == buffer.pending

    def test_writes_a_long_backlog_in_pieces(self) -> None:
        """A backlog is written in pieces of about 64 KiB, not joined into one copy of the whole buffer."""
        reader = StalledReader()
        sizes: list[int] = []

        def write(data: memoryview) -> int:
            sizes.append(len(data))
            return reader.write(data)

        buffer = log.LineBuffer(write, notice)
        buffer.put(b"0\n")
        assert reader.entered.wait(DEADLINE_S)
        for _ in range(1_000):
            buffer.put(b"x" * 999 + b"\n")
        reader.release()
        assert True is buffer.flush(DEADLINE_S)
        assert 2 + 1_000 * 1_000 == len(reader.written)
        assert max(sizes) < 64 * 1024 + 1_000

    def test_full_by_lines_drops_then_notes_the_gap_once(self) -> None:
        """Past max_lines, lines are dropped; once the reader is back, one notice with their count is
        written where they went missing, and the lines after it follow."""
        reader = StalledReader()
        buffer = stalled_buffer(reader, max_lines=3)
        for line in (b"1\n", b"2\n", b"3\n", b"4\n", b"5\n"):
            buffer.put(line)  # returns at once although the writer is stuck
        assert (3, 6) == buffer.pending
        reader.release()
        assert True is buffer.flush(DEADLINE_S)
        buffer.put(b"6\n")
        assert True is buffer.flush(DEADLINE_S)
        assert b"0\n1\n2\ndropped 3\n6\n" == reader.written

    def test_full_by_bytes(self) -> None:
        """Past max_bytes a line is dropped; a shorter one that fits is still taken."""
        reader = StalledReader()
        buffer = stalled_buffer(reader, max_bytes=6)
        buffer.put(b"12345\n")  # 2 + 6 bytes: too many
        buffer.put(b"123\n")  # 2 + 4: fits
        assert (2, 6) == buffer.pending
        reader.release()
        assert True is buffer.flush(DEADLINE_S)
        assert b"0\ndropped 1\n123\n" == reader.written

    def test_memory_stays_bounded(self) -> None:
        """However many lines come while the reader is stalled, what waits stays within the bounds, and
        one notice counts every line dropped."""
        reader = StalledReader()
        buffer = stalled_buffer(reader, max_lines=1_000, max_bytes=1_000_000)
        line = b"x" * 99 + b"\n"
        for _ in range(100_000):
            buffer.put(line)
        assert (1_000, 1 + 2 + 999 * 100) == (buffer.pending[0], buffer.pending[1] + 1)
        reader.release()
        assert True is buffer.flush(DEADLINE_S)
        assert [b"dropped 99001"] == [x for x in bytes(reader.written).splitlines() if x.startswith(b"d")]

    def test_flush_gives_up_at_its_deadline(self) -> None:
        """flush returns False, without waiting longer than asked, while the reader is stalled."""
        reader = StalledReader()
        buffer = stalled_buffer(reader)
        assert False is buffer.flush(0.01)
        reader.release()
        assert True is buffer.flush(DEADLINE_S)

    def test_a_broken_stream_stops_the_writer_quietly(self) -> None:
        """A write that fails calls on_broken once; later lines are dropped without a write."""
        reader = StalledReader()
        reader.error = BrokenPipeError()
        broken: list[bool] = []
        buffer = log.LineBuffer(reader.write, notice, on_broken=lambda: broken.append(True))
        buffer.put(b"0\n")
        reader.release()
        assert False is buffer.flush(DEADLINE_S)
        buffer.put(b"1\n")
        assert False is buffer.flush(DEADLINE_S)
        assert ([True], b"", (0, 0)) == (broken, bytes(reader.written), buffer.pending)

    def test_close_writes_what_is_queued(self) -> None:
        """close takes no more lines, and the writer ends after writing those queued."""
        reader = StalledReader()
        buffer = stalled_buffer(reader)
        buffer.put(b"1\n")
        buffer.close()
        buffer.put(b"2\n")
        reader.release()
        assert True is buffer.flush(DEADLINE_S)
        assert b"0\n1\n" == reader.written


def in_thread(work: Callable[[], None]) -> None:
    """Run `work` in a thread and fail if it has not returned by the deadline (it blocked)."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), "logging blocked on a stalled reader"


def fill_pipe(fd: int) -> None:
    """Fill the pipe, as a reader that stopped reading leaves it, with lines of "x"."""
    os.set_blocking(fd, False)
    try:
        while True:
            os.write(fd, b"x" * 4095 + b"\n")  # at most PIPE_BUF: written whole or not at all
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)


class TestStalledPipe:
    @pytest.mark.parametrize(
        ("fmt", "dropped"),
        [
            ("json", lambda line: json.loads(line)["count"] if '"log.dropped"' in line else None),
            (
                "logfmt",
                lambda line: int(m[1]) if (m := re.search(r"event=log\.dropped count=(\d+)", line)) else None,
            ),
            (
                "console",
                lambda line: int(m[1]) if (m := re.search(r"log\.dropped .*count=(\d+)", line)) else None,
            ),
        ],
    )
    def test_a_pipe_nobody_reads(
        self, monkeypatch: pytest.MonkeyPatch, fmt: log.LogFormat, dropped: Callable[[str], int | None]
    ) -> None:
        """With a real pipe nobody reads, log calls return; once it is read, the lines that fitted come
        out, then one warning log.dropped with the count of the others."""
        monkeypatch.setattr(log, "BUFFER_LINES", 50)
        read_fd, write_fd = os.pipe()
        fill_pipe(write_fd)
        stream = os.fdopen(write_fd, "w")
        log.configure(fmt, stream=stream)
        logger = log.get_logger(task="chatty")
        total = 2_000
        in_thread(lambda: [logger.info("task.output", line=f"{i:04} " + "x" * 1_000) for i in range(total)])
        assert False is log.flush(0.01)

        with os.fdopen(read_fd, "rb") as reading:
            chunks: list[bytes] = []
            reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: reading.read1(), b"")))
            reader.start()
            assert True is log.flush(DEADLINE_S)
            log.close()
            stream.close()
            reader.join(DEADLINE_S)
        lines = b"".join(chunks).decode().splitlines()
        notices = [count for count in map(dropped, lines) if count is not None]
        written = [line for line in lines if "task.output" in line]
        assert [total - 50] == notices  # 50 lines waited, the first of them in a write
        assert total == len(written) + notices[0]
        assert all("warning" in line for line in lines if "log.dropped" in line)
