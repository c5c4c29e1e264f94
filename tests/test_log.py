"""Tests for scheduler.log: the three formats and the fields every line carries."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pytest
import structlog

from scheduler import log


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
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
        import os

        read_fd, write_fd = os.pipe()
        stream = os.fdopen(write_fd, "w")
        log.configure("json", stream=stream)
        logger = log.get_logger()
        logger.info("before")
        os.close(read_fd)
        logger.info("task.started", task="a")
        logger.info("task.finished", task="a")
        stream.write("x")
        stream.flush()  # the dead pipe now points at /dev/null: no BrokenPipeError at exit either
        stream.close()
