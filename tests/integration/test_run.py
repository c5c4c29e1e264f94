"""`scheduler run` end to end: real clock, real processes, assertions on its JSON events."""

from __future__ import annotations

import itertools
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.conftest import pid_alive, rss_kib, wait_until

pytestmark = pytest.mark.integration


def at(event: dict[str, object], key: str) -> datetime:
    return datetime.fromisoformat(str(event[key]).replace("Z", "+00:00"))


class TestFiring:
    @pytest.mark.timing
    def test_per_second_task_fires_on_the_second(self, start_clock) -> None:
        """A per-second task starts every second, each within a fraction of its instant."""
        clock = start_clock('tasks:\n  tick:\n    schedule: "* * * * * *"\n    command: "true"\n')
        started = clock.wait_event("task.started", count=5, timeout=20)[:5]
        instants = [at(e, "scheduled_for") for e in started]
        assert all(i.microsecond == 0 for i in instants)
        assert [1.0] * 4 == [(b - a).total_seconds() for a, b in itertools.pairwise(instants)]
        lateness = [(at(e, "timestamp") - at(e, "scheduled_for")).total_seconds() for e in started]
        assert all(0 <= late < 0.5 for late in lateness), lateness
        assert {"tick"} == {e["task"] for e in started}
        assert all(isinstance(e["pid"], int) for e in started)
        finished = clock.wait_event("task.finished", count=5)
        assert {"succeeded"} == {e["status"] for e in finished[:5]}
        assert 0 == clock.stop()
        assert "scheduler.stopped" == clock.events[-1]["event"]

    def test_output_lines_and_env(self, start_clock) -> None:
        """Each output line is one task.output event; the child sees its SCHEDULER_* variables."""
        clock = start_clock(
            "tasks:\n  say:\n    schedule: every second\n"
            '    command: echo "$SCHEDULER_TASK $SCHEDULER_TRIGGER $GREETING"; echo oops >&2\n'
            "    env: {GREETING: hello}\n"
        )
        out = clock.wait_event("task.output", stream="stdout")[0]
        assert "say schedule hello" == out["line"]
        err = clock.wait_event("task.output", stream="stderr")[0]
        assert "oops" == err["line"]
        assert not any("hello" in str(e.get("env", "")) for e in clock.events)

    def test_150_tasks_due_in_the_same_second(self, start_clock) -> None:
        """150 tasks due at one instant all start and finish: none is lost."""
        tasks = "".join(
            f'  t{i:03d}:\n    schedule: "*/5 * * * * *"\n    command: "true"\n' for i in range(150)
        )
        clock = start_clock("tasks:\n" + tasks)
        first = clock.wait_event("task.started", count=150, timeout=20)
        instant = first[0]["scheduled_for"]
        same = [e for e in clock.named("task.started") if e["scheduled_for"] == instant]
        assert 150 == len({e["task"] for e in same})
        finished = clock.wait_event("task.finished", count=150, timeout=20)
        assert 150 == len({e["task"] for e in finished if e["status"] == "succeeded"})
        assert [] == clock.named("task.missed")


class TestOverlap:
    def test_skip(self, start_clock) -> None:
        """overlap: skip logs task.skipped while the previous run is still going."""
        clock = start_clock("tasks:\n  slow:\n    schedule: every second\n    command: sleep 2.5\n")
        skipped = clock.wait_event("task.skipped", count=2)
        assert {("slow", "overlap")} == {(e["task"], e["reason"]) for e in skipped}
        assert 1 == len(clock.named("task.started")) or clock.named("task.finished")

    def test_replace(self, start_clock) -> None:
        """overlap: replace kills the running run and starts the next."""
        clock = start_clock(
            "tasks:\n  slow:\n    schedule: every second\n    command: sleep 30\n"
            "    overlap: replace\n    kill_grace: 1s\n"
        )
        finished = clock.wait_event("task.finished", status="killed", count=2)
        assert all(e["task"] == "slow" for e in finished)
        assert len(clock.named("task.started")) >= 3

    def test_allow(self, start_clock) -> None:
        """overlap: allow runs instances side by side."""
        clock = start_clock(
            "tasks:\n  slow:\n    schedule: every second\n    command: sleep 3\n    overlap: allow\n"
        )
        clock.wait_event("task.started", count=3)
        assert [] == clock.named("task.finished")
        assert [] == clock.named("task.skipped")


class TestTimeout:
    def test_timeout_kills_the_whole_group(self, start_clock, tmp_path: Path) -> None:
        """On timeout the task's grandchildren die too, and the run is timed_out."""
        pidfile = tmp_path / "grandchild.pid"
        clock = start_clock(
            "tasks:\n  hang:\n    schedule: every 5 seconds\n"
            f"    command: sleep 60 & echo $! > {pidfile}; sleep 60\n"
            "    timeout: 1s\n    kill_grace: 1s\n"
        )
        finished = clock.wait_event("task.finished", timeout=20)[0]
        assert ("timed_out", "SIGTERM") == (finished["status"], finished["signal"])
        grandchild = int(pidfile.read_text())
        assert wait_until(lambda: not pid_alive(grandchild), 5)


class TestShutdown:
    def test_sigterm_waits_for_a_task_that_exits_on_term(self, start_clock, tmp_path: Path) -> None:
        """SIGTERM reaches the running task, the clock waits for it, logs it, and exits 0."""
        marker = tmp_path / "got-term"
        clock = start_clock(
            "tasks:\n  polite:\n    schedule: every second\n"
            f"    command: trap 'echo bye > {marker}; exit 0' TERM; sleep 30 & wait\n"
        )
        clock.wait_event("task.started")
        time.sleep(0.3)  # let the shell install its trap
        clock.signal(signal.SIGTERM)
        assert 0 == clock.proc.wait(20)
        clock.stop()
        names = [e["event"] for e in clock.events]
        assert (
            names.index("scheduler.stopping")
            < names.index("task.finished")
            < names.index("scheduler.stopped")
        )
        assert "bye\n" == marker.read_text()
        assert [] == [
            e
            for e in clock.named("task.started")
            if at(e, "timestamp") > at(clock.named("scheduler.stopping")[0], "timestamp")
        ]

    @pytest.mark.timing
    def test_task_ignoring_term_is_killed_within_grace(self, start_clock) -> None:
        """A task ignoring SIGTERM is SIGKILLed when the grace ends; a repeated SIGTERM changes nothing."""
        clock = start_clock(
            "tasks:\n  stubborn:\n    schedule: every second\n"
            "    command: trap '' TERM; while :; do sleep 0.1; done\n    kill_grace: 60s\n",
            "--shutdown-grace",
            "2s",
        )
        clock.wait_event("task.started")
        time.sleep(0.3)
        began = time.monotonic()
        clock.signal(signal.SIGTERM)
        time.sleep(0.5)
        clock.signal(signal.SIGTERM)  # Heroku may send it again
        assert 0 == clock.proc.wait(20)
        elapsed = time.monotonic() - began
        clock.stop()
        assert 1.8 <= elapsed < 6, elapsed
        finished = clock.named("task.finished")
        assert [("killed", "SIGKILL")] == [(e["status"], e["signal"]) for e in finished]

    @pytest.mark.timing
    def test_second_sigint_cuts_the_grace_short(self, start_clock) -> None:
        """A second Ctrl-C kills what is left at once."""
        clock = start_clock(
            "tasks:\n  stubborn:\n    schedule: every second\n"
            "    command: trap '' TERM INT; while :; do sleep 0.1; done\n",
            "--shutdown-grace",
            "20s",
        )
        clock.wait_event("task.started")
        time.sleep(0.3)
        began = time.monotonic()
        clock.signal(signal.SIGINT)
        clock.wait_event("scheduler.stopping")
        clock.signal(signal.SIGINT)
        assert 0 == clock.proc.wait(20)
        assert time.monotonic() - began < 5


class TestReload:
    def test_file_edit_with_a_broken_file_between(self, start_clock) -> None:
        """An invalid edit is reported and ignored; the next valid edit is applied; SIGHUP reloads too."""
        clock = start_clock('tasks:\n  a:\n    schedule: "* * * * * *"\n    command: "true"\n')
        clock.wait_event("task.started", task="a")
        clock.config.write_text('tasks:\n  a:\n    schedule: "* * * * * *"\n    comand: "true"\n')
        invalid = clock.wait_event("config.invalid", timeout=5)[0]
        assert "unknown key 'comand'" in invalid["error"]
        assert ":4:" in invalid["error"]
        seen = len(clock.named("task.started"))
        clock.wait_event("task.started", task="a", count=seen + 1)  # the old schedule keeps firing
        # An atomic save: write elsewhere, rename over.
        tmp = clock.config.with_suffix(".tmp")
        tmp.write_text(
            'tasks:\n  a:\n    schedule: "* * * * * *"\n    command: "true"\n'
            '  b:\n    schedule: "* * * * * *"\n    command: "true"\n'
        )
        os.replace(tmp, clock.config)
        reloaded = clock.wait_event("config.reloaded", timeout=5)[0]
        assert (["b"], [], []) == (reloaded["added"], reloaded["removed"], reloaded["changed"])
        clock.wait_event("task.started", task="b")
        clock.signal(signal.SIGHUP)
        clock.wait_event("config.reloaded", count=2)
        assert 0 == clock.stop()


class TestEnvironment:
    def test_env_values_filled_in_and_a_reload_checked(self, start_clock) -> None:
        """${NAME} in an env value is filled in from the clock's environment; a reload naming an unset
        variable is refused at its line, and the old config keeps firing."""
        config = (
            'tasks:\n  a:\n    schedule: every second\n    command: echo "token=$TOKEN"\n'
            "    env: {TOKEN: '${RUN_TEST_TOKEN}-x'}\n"
        )
        clock = start_clock(config, env={"RUN_TEST_TOKEN": "abc"})
        assert "token=abc-x" == clock.wait_event("task.output", task="a")[0]["line"]
        clock.config.write_text(config.replace("RUN_TEST_TOKEN", "RUN_TEST_UNSET"))
        invalid = clock.wait_event("config.invalid", timeout=5)[0]
        assert (
            ":5:18: task 'a': env: TOKEN: environment variable RUN_TEST_UNSET is not set" in invalid["error"]
        )
        seen = len(clock.named("task.output"))
        outputs = clock.wait_event("task.output", task="a", count=seen + 1)
        assert "token=abc-x" == outputs[-1]["line"]
        assert 0 == clock.stop()


class TestOutputFlood:
    def test_huge_line_keeps_memory_bounded(self, start_clock) -> None:
        """60 MB without a newline becomes one cut line, and the clock's memory does not grow with it."""
        clock = start_clock(
            "tasks:\n  flood:\n    schedule: every 5 seconds\n"
            "    command: head -c 60000000 /dev/zero | tr '\\0' a\n"
            '  tick:\n    schedule: "* * * * * *"\n    command: "true"\n'
        )
        before = rss_kib(clock.proc.pid)
        out = clock.wait_event("task.output", task="flood", timeout=20)[0]
        clock.wait_event("task.finished", task="flood", timeout=30)
        after = rss_kib(clock.proc.pid)
        assert out["truncated"] is True
        assert 8192 == len(out["line"])
        assert 1 == len([e for e in clock.named("task.output") if e["task"] == "flood"])
        assert after - before < 30_000, (before, after)

    @pytest.mark.timing
    def test_flood_of_lines_does_not_delay_other_tasks(self, start_clock) -> None:
        """A task printing 200,000 lines does not hold up a per-second task."""
        clock = start_clock(
            "tasks:\n  chatty:\n    schedule: every 5 seconds\n    command: seq 1 200000\n"
            '  tick:\n    schedule: "* * * * * *"\n    command: "true"\n'
        )
        clock.wait_event("task.started", task="chatty", timeout=20)
        seen = len([e for e in clock.named("task.started") if e["task"] == "tick"])
        # The test's reader parses every line: behind a flood it may see the ticks late (the log buffer
        # can even drop one), so it waits longer; how late each tick started is what is asserted.
        ticks = clock.wait_event("task.started", task="tick", count=seen + 3, timeout=40)
        recent = ticks[-3:]
        late = [(at(e, "timestamp") - at(e, "scheduled_for")).total_seconds() for e in recent]
        assert all(x < 0.5 for x in late), late
