"""The CLI end to end: run-now exit codes, check, next, list, and errors without tracebacks."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scheduler.store import ClockInfo, RunRecord, Store, open_store
from tests.integration.conftest import SCHEDULER, run_cli

pytestmark = pytest.mark.integration

CONFIG = """\
timezone: America/New_York
defaults:
  timeout: 10m
tasks:
  ok:
    schedule: "0 9 * * MON-FRI"
    command: echo "hello from $SCHEDULER_TASK $SCHEDULER_TRIGGER"
  fail:
    schedule: every 10 minutes
    command: exit 3
  slow:
    schedule: "30 2 * * *"
    command: sleep 30
    timeout: 1s
    kill_grace: 1s
  suicide:
    schedule: "@daily"
    command: kill -9 $$
  missing:
    schedule: "@hourly"
    command: [no-such-command-here]
  notexec:
    schedule: "@hourly"
    command: [./not-executable]
  utc-task:
    schedule: daily at 01:30
    command: "true"
    timezone: UTC
    enabled: false
"""


def message(result: subprocess.CompletedProcess[str]) -> str:
    """What a command said on stderr, its whitespace folded: an error may be wrapped over several lines."""
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "schedules.yaml").write_text(CONFIG)
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    return tmp_path


class TestRunNow:
    @pytest.mark.parametrize(
        ("task", "status"),
        [("ok", 0), ("fail", 3), ("slow", 124), ("suicide", 137), ("missing", 127), ("notexec", 126)],
    )
    def test_exit_status(self, project: Path, task: str, status: int) -> None:
        """run-now exits with the task's status, 124 on timeout, 128+N on signal, 127/126 for bad commands."""
        result = run_cli("run-now", task, "--log-format", "json", cwd=project)
        assert status == result.returncode, result.stderr
        events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
        finished = [e for e in events if e["event"] == "task.finished"]
        assert 1 == len(finished)
        assert "manual" == next((e["trigger"] for e in events if e["event"] == "task.started"), "manual")

    def test_output_passes_through(self, project: Path) -> None:
        """The task's output goes to stdout untouched; the events go to stderr."""
        result = run_cli("run-now", "ok", cwd=project)
        assert "hello from ok manual\n" == result.stdout
        assert "task.finished" in result.stderr

    def test_unknown_task(self, project: Path) -> None:
        """An unknown task is exit 2 with a did-you-mean and the names."""
        result = run_cli("run-now", "fial", cwd=project)
        assert 2 == result.returncode
        assert "unknown task 'fial' (did you mean 'fail'?)" in result.stderr
        assert "ok" in result.stderr
        assert "Traceback" not in result.stderr

    def test_sigterm_is_passed_on(self, project: Path, tmp_path: Path) -> None:
        """SIGTERM to run-now reaches the task, which may exit as it likes."""
        (project / "schedules.yaml").write_text(
            "tasks:\n  t:\n    schedule: '@daily'\n"
            "    command: trap 'echo caught; exit 5' TERM; sleep 30 & wait\n"
        )
        proc = subprocess.Popen(
            [*SCHEDULER, "run-now", "t"],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert 5 == proc.returncode, err
        assert "caught\n" == out


class TestCheck:
    def test_valid(self, project: Path) -> None:
        """check prints a one-line summary and exits 0."""
        result = run_cli("check", cwd=project)
        assert 0 == result.returncode
        assert "schedules.yaml: OK, 7 tasks (6 enabled)\n" == result.stdout

    def test_errors_name_the_line(self, tmp_path: Path) -> None:
        """check exits 2 with PATH:LINE:COL errors and no traceback."""
        path = tmp_path / "bad.yaml"
        path.write_text("tasks:\n  a:\n    schedule: every fortnight\n    comand: x\n")
        result = run_cli("check", "-c", str(path))
        assert 2 == result.returncode
        assert f"{path}:3:" in result.stderr
        assert f"{path}:4:" in result.stderr
        assert "did you mean 'command'" in result.stderr
        assert "Traceback" not in result.stderr

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is exit 2 naming its path."""
        result = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
        assert 2 == result.returncode
        assert str(tmp_path / "nope.yaml") in result.stderr

    def test_env_var_names_the_config(self, project: Path, tmp_path: Path) -> None:
        """SCHEDULER_CONFIG sets the config path."""
        result = run_cli(
            "check",
            cwd=tmp_path.parent,
            env={**os.environ, "SCHEDULER_CONFIG": str(project / "schedules.yaml")},
        )
        assert 0 == result.returncode

    def test_run_refuses_an_invalid_file(self, tmp_path: Path) -> None:
        """run exits 2 at once on an invalid file."""
        path = tmp_path / "bad.yaml"
        path.write_text("tasks:\n  a:\n    schedule: '0 0 30 2 *'\n    command: x\n")
        result = run_cli("run", "-c", str(path), timeout=20)
        assert 2 == result.returncode
        assert "never fires" in result.stderr


SEVERAL_PROBLEMS = """\
store: postgresql://app:${CHECK_TEST_PG_PASSWORD}@db/app
timezone: Europe/Londn
tasks:
  backup:
    schedule: every 7 minutes
    timezone: Mars/Base
    command: ./backup
    ping_url: https://hc-ping.com/${CHECK_TEST_HC_KEY}
    on_failure: curl -d "backup failed" ${CHECK_TEST_SLACK}
    env:
      TOKEN: "hunter2-${CHECK_TEST_TOKEN}"
  digest:
    schedule: every wekday at 9am
    command: ./digest
    overlap: skp
  report:
    schedule: twice a day at 9:15 and 17:30
    command: ./report
  standup:
    schedule: every monday and thursday at 13pm
    command: ./standup
"""


def without_test_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CHECK_TEST_", "SCHEDULER_"))}


def errors(stderr: str) -> list[str]:
    """Each error, unwrapped: the continuation lines of a wrapped error start with spaces."""
    out: list[str] = []
    for line in stderr.splitlines():
        if line.startswith(" ") and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


class TestCheckReportsEverything:
    def test_every_problem_with_its_line(self, tmp_path: Path) -> None:
        """check reports every problem of a file at once, each at its PATH:LINE:COL: a bad zone and the same
        task's schedule, unset variables in store, ping_url, a hook and env, unknown words, 12-hour times."""
        path = tmp_path / "schedules.yaml"
        path.write_text(SEVERAL_PROBLEMS)
        result = run_cli("check", "-c", str(path), env=without_test_variables())

        assert 2 == result.returncode
        assert "" == result.stdout
        found = errors(result.stderr)
        expected = [
            ("1:8", "store: environment variable CHECK_TEST_PG_PASSWORD is not set"),
            ("2:11", "timezone: unknown time zone 'Europe/Londn' (did you mean 'Europe/London'?)"),
            ("5:15", "task 'backup': schedule: 'every 7 minutes' cannot be exact in cron"),
            ("6:15", "task 'backup': timezone: unknown time zone 'Mars/Base'"),
            ("8:15", "task 'backup': ping_url: environment variable CHECK_TEST_HC_KEY is not set"),
            ("9:17", "task 'backup': on_failure: environment variable CHECK_TEST_SLACK is not set"),
            ("11:14", "task 'backup': env: TOKEN: environment variable CHECK_TEST_TOKEN is not set"),
            ("13:15", "task 'digest': schedule: unknown word 'wekday' in schedule 'every wekday at 9am'"),
            ("15:14", "task 'digest': overlap: expected one of skip, allow, replace, got 'skp'"),
            ("17:15", "task 'report': schedule: 'twice a day at 9:15 and 17:30': 09:15 and 17:30 cannot be"),
            ("20:15", "task 'standup': schedule: 'every monday and thursday at 13pm': 13pm is not a time"),
        ]
        assert len(expected) == len(found), result.stderr
        for (where, message), error in zip(expected, found, strict=True):
            assert error.startswith(f"{path}:{where}: {message}"), (where, result.stderr)
        assert "hunter2" not in result.stderr
        assert "Traceback" not in result.stderr

    def test_run_reports_the_same(self, tmp_path: Path) -> None:
        """run refuses the same file with the same problems: check says what run would."""
        path = tmp_path / "schedules.yaml"
        path.write_text(SEVERAL_PROBLEMS)
        check = run_cli("check", "-c", str(path), env=without_test_variables())
        run = run_cli("run", "-c", str(path), env=without_test_variables(), timeout=20)

        assert (2, check.stderr) == (run.returncode, run.stderr)
        assert "environment variable CHECK_TEST_HC_KEY is not set" in run.stderr

    def test_no_env(self, tmp_path: Path) -> None:
        """check --no-env leaves the environment out (for CI), and still reports everything else."""
        path = tmp_path / "schedules.yaml"
        path.write_text(SEVERAL_PROBLEMS)
        result = run_cli("check", "--no-env", "-c", str(path), env=without_test_variables())

        assert 2 == result.returncode
        assert "environment variable" not in result.stderr
        assert 7 == len(errors(result.stderr))

    def test_variables_set(self, tmp_path: Path) -> None:
        """With every variable set (and SCHEDULER_STORE_URL overriding the file's store), the file is OK."""
        path = tmp_path / "schedules.yaml"
        path.write_text(
            "store: ${CHECK_TEST_DATABASE_URL}\ntasks:\n  a:\n    schedule: every weekday at 9am\n"
            "    command: run\n    env: {TOKEN: '${CHECK_TEST_TOKEN}'}\n"
        )
        env = without_test_variables()
        unset = run_cli("check", "-c", str(path), env=env)
        set_env = {**env, "SCHEDULER_STORE_URL": "sqlite:///x.db", "CHECK_TEST_TOKEN": "t"}
        overridden = run_cli("check", "-c", str(path), env=set_env)

        assert 2 == unset.returncode
        assert [
            f"{path}:1:8: store: environment variable CHECK_TEST_DATABASE_URL is not set",
            f"{path}:6:18: task 'a': env: TOKEN: environment variable CHECK_TEST_TOKEN is not set",
        ] == errors(unset.stderr)
        assert (0, f"{path}: OK, 1 task (1 enabled)\n") == (overridden.returncode, overridden.stdout)

    def test_one_line_per_error_when_not_a_terminal(self, tmp_path: Path) -> None:
        """Piped or logged (not a terminal), each error stays on one line, for grep and problem matchers."""
        (tmp_path / "schedules.yaml").write_text(
            "tasks:\n  a:\n    schedule: every fortnight\n    command: run\n  b:\n    schedule: x\n"
        )
        result = run_cli("check", cwd=tmp_path)

        lines = result.stderr.splitlines()
        assert 2 == result.returncode
        assert 3 == len(lines), lines
        assert lines[0].startswith("schedules.yaml:3:15: task 'a': schedule: unknown word 'fortnight'")
        assert len(lines[0]) > 300

    @pytest.mark.parametrize("columns", [60, 100])
    def test_wraps_at_the_terminal_width(self, tmp_path: Path, columns: int) -> None:
        """On a terminal, a long error wraps at its width: PATH:LINE:COL: first, the rest indented by four
        spaces, no word broken, and a short quoted phrase kept whole."""
        path = tmp_path / "schedules.yaml"
        path.write_text("tasks:\n  a:\n    schedule: every fortnight\n    command: run\n")
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        try:
            proc = subprocess.run(
                [*SCHEDULER, "check", "-c", "schedules.yaml"],
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=terminal,
                timeout=60,
            )
            os.close(terminal)
            output = b""
            while True:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not chunk:
                    break
                output += chunk
        finally:
            os.close(controller)
        lines = output.decode().splitlines()

        assert 2 == proc.returncode
        assert lines[0].startswith("schedules.yaml:3:15: task 'a': schedule:")
        assert len(lines) > 3
        assert all(len(line) <= columns for line in lines), lines
        assert all(line.startswith("    ") and not line.startswith("     ") for line in lines[1:]), lines
        unwrapped = " ".join(line.strip() for line in lines)
        assert unwrapped.startswith("schedules.yaml:3:15: task 'a': schedule: unknown word 'fortnight'")
        assert "'every N seconds', 'every N minutes' (N divides 60)" in unwrapped
        assert "'twice a day at 9am and 9pm'" in unwrapped


class TestNext:
    def test_json_across_dst(self, project: Path) -> None:
        """next --json lists instants with offsets; 02:30 on spring-forward day runs at 03:00 EDT."""
        result = run_cli("next", "slow", "-n", "2", "--from", "2026-03-07T12:00:00Z", "--json", cwd=project)
        assert 0 == result.returncode, result.stderr
        assert [
            {
                "task": "slow",
                "schedule": "30 2 * * *",
                "timezone": "America/New_York",
                "next": ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
            }
        ] == json.loads(result.stdout)

    def test_text_marks_dst(self, project: Path) -> None:
        """The text form shows local and UTC times and marks a DST move."""
        result = run_cli("next", "slow", "-n", "1", "--from", "2026-03-07T12:00:00Z", cwd=project)
        assert "2026-03-08 07:00:00 UTC" in result.stdout
        assert "02:30 did not exist" in result.stdout

    def test_bad_from(self, project: Path) -> None:
        """A bad --from is exit 2 with a message."""
        result = run_cli("next", "--from", "yesterday", cwd=project)
        assert 2 == result.returncode
        assert "not an ISO 8601 instant" in result.stderr


class TestList:
    def test_table(self, project: Path) -> None:
        """list shows each task with its plain-words schedule, zone, overlap and timeout."""
        result = run_cli("list", cwd=project)
        assert 0 == result.returncode
        lines = result.stdout.splitlines()
        assert lines[0].split()[:3] == ["TASK", "SCHEDULE", "MEANING"]
        ok = next(line for line in lines if line.startswith("ok "))
        assert "at 09:00 on Monday through Friday" in ok
        assert "America/New_York" in ok
        assert "10m" in ok
        assert "disabled" in next(line for line in lines if line.startswith("utc-task"))


class TestMisc:
    def test_version(self) -> None:
        """--version prints the version."""
        from scheduler import __version__

        assert f"scheduler {__version__}\n" == run_cli("--version").stdout


class TestHistoryOutput:
    def test_output_tail_is_escaped_in_the_table_and_raw_in_json(self, tmp_path: Path) -> None:
        """history --output shows a run's control characters escaped, one table line per output line;
        --json keeps the output as it was."""
        from datetime import UTC, datetime

        from scheduler.store import RunRecord, open_store

        (tmp_path / "schedules.yaml").write_text(
            "store: sqlite:///state.db\ntasks:\n  loud:\n    schedule: '@daily'\n    command: 'true'\n"
        )
        output = "10%\r\x1b[2J\x1b[Hforged\nsecond\u2028line\x85\n"
        now = datetime.now(UTC)
        store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
        store.record(
            RunRecord(
                task="loud",
                scheduled_for=now,
                trigger="manual",
                run_id="0123456789ab",
                claimed_by="here:1",
                started_at=now,
                status="succeeded",
                finished_at=now,
                exit_code=0,
                duration_s=0.1,
                output=output,
            )
        )
        store.close()

        table = run_cli("history", "--output", cwd=tmp_path)
        assert 0 == table.returncode, table.stderr
        assert [
            "    | 10%\\r\\x1b[2J\\x1b[Hforged",
            "    | second\\u2028line\\x85",
        ] == table.stdout.split("\n")[2:4]
        assert "" == table.stdout.split("\n")[4]
        raw = json.loads(run_cli("history", "--output", "--json", cwd=tmp_path).stdout)
        assert output == raw[0]["output"]


T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
LA = {**os.environ, "TZ": "America/Los_Angeles"}  # a machine zone that must not show
STORED = """\
store: sqlite:///state.db
tasks:
  new-year:
    schedule: "0 0 1 1 *"
    command: "true"
    timezone: America/New_York
    timeout: 10m
  backup:
    schedule: "@daily"
    command: "true"
  idle:
    schedule: "@hourly"
    command: "true"
    enabled: false
"""


def ran(task: str, minutes: float, status: str = "succeeded", **fields: Any) -> RunRecord:
    """A run of `task` started `minutes` after T0 (or at the datetime given as started_at)."""
    started = fields.get("started_at", T0 + timedelta(minutes=minutes))
    values: dict[str, Any] = {
        "task": task,
        "scheduled_for": started,
        "trigger": "schedule",
        "run_id": os.urandom(6).hex(),
        "claimed_by": "clock.1:4:abcdef",
        "started_at": started,
        "status": status,
    }
    if status != "running":
        values |= {"finished_at": started + timedelta(seconds=2), "duration_s": 2.0, "exit_code": 0}
    return RunRecord(**{**values, **fields})


def seed(folder: Path, *records: RunRecord, config: str = STORED) -> Store:
    """A schedules file with a SQLite store holding these runs; the store, to add more."""
    (folder / "schedules.yaml").write_text(config)
    store = open_store(f"sqlite:///{folder / 'state.db'}")
    for record in records:
        assert store.record(record)
    return store


def table(stdout: str) -> dict[str, list[str]]:
    """A table's rows by their first cell (the header's by ''), cut where the header's columns start."""
    header, *rows = stdout.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    cells = [[line[a:b].strip() for a, b in bounds] for line in [header, *rows]]
    return {"": cells[0], **{row[0]: row for row in cells[1:]}}


class TestTimes:
    def test_next_labels_the_zone_and_utc(self, project: Path) -> None:
        """next: each fire in the task's zone with its abbreviation and offset, then in UTC, labelled."""
        result = run_cli("next", "slow", "-n", "2", "--from", "2026-03-07T12:00:00Z", cwd=project, env=LA)
        assert 0 == result.returncode, result.stderr
        header, dst, after = result.stdout.splitlines()
        assert "slow: 30 2 * * * (at 02:30), America/New_York" == header
        # The DST note's wording is schedule.py's; the times before it are what this test is about.
        assert dst.startswith("  Sun 2026-03-08 03:00:00-04:00 EDT  2026-03-08 07:00:00 UTC  DST: ")
        assert "  Mon 2026-03-09 02:30:00-04:00 EDT  2026-03-09 06:30:00 UTC" == after

    def test_next_utc(self, project: Path) -> None:
        """next --utc shows the fires in UTC only; with --json, as ISO 8601 in UTC."""
        args = ("next", "ok", "-n", "1", "--from", "2026-11-27T00:00:00Z", "--utc")
        text = run_cli(*args, cwd=project)
        assert "  Fri 2026-11-27 14:00:00 UTC" == text.stdout.splitlines()[1]
        out = json.loads(run_cli(*args, "--json", cwd=project).stdout)
        assert ["2026-11-27T14:00:00+00:00"] == out[0]["next"]

    def test_list_next_fire_in_the_task_zone_and_last_run_in_utc(self, tmp_path: Path) -> None:
        """list: NEXT FIRE in the task's zone, labelled; LAST RUN in UTC, labelled, whatever $TZ says;
        --utc puts NEXT FIRE in UTC too."""
        seed(tmp_path, ran("new-year", 0)).close()
        rows = table(run_cli("list", cwd=tmp_path, env=LA).stdout)
        assert re.fullmatch(r"\d{4}-01-01 00:00:00-05:00 EST", rows["new-year"][4])
        assert "2026-11-27 10:00:00 UTC" == rows["new-year"][rows[""].index("LAST RUN")]
        utc = table(run_cli("list", "--utc", cwd=tmp_path, env=LA).stdout)
        assert re.fullmatch(r"\d{4}-01-01 05:00:00 UTC", utc["new-year"][4])
        assert re.fullmatch(r"\d{4}-\d\d-\d\d 00:00:00 UTC", utc["backup"][4])

    def test_history_in_utc_whatever_tz_says(self, tmp_path: Path) -> None:
        """history: started and scheduled-for times in UTC, labelled, under any $TZ."""
        seed(tmp_path, ran("backup", 0)).close()
        result = run_cli("history", cwd=tmp_path, env=LA)
        assert 0 == result.returncode, result.stderr
        rows = table(result.stdout)
        assert "STARTED" == rows[""][0]
        [started] = [key for key in rows if key]
        scheduled_for = rows[started][rows[""].index("SCHEDULED FOR")]
        assert ("2026-11-27 10:00:00 UTC", "2026-11-27 10:00:00 UTC") == (started, scheduled_for)


class TestListJson:
    def test_without_a_store(self, project: Path) -> None:
        """list --json: one object per task, `task` first, in the documented keys; not running, no last run
        without a store; next in the task's zone (null when disabled), or in UTC with --utc."""
        result = run_cli("list", "--json", cwd=project)
        assert 0 == result.returncode, result.stderr
        out = json.loads(result.stdout)
        keys = ["task", "schedule", "description", "timezone", "enabled", "next", "overlap", "timeout_s"]
        assert [[*keys, "running", "last_run"]] * 7 == [list(task) for task in out]
        ok = out[0]
        assert {
            "task": "ok",
            "schedule": "0 9 * * MON-FRI",
            "description": "at 09:00 on Monday through Friday",
            "timezone": "America/New_York",
            "enabled": True,
            "overlap": "skip",
            "timeout_s": 600,
            "running": False,
            "last_run": None,
        } == {k: v for k, v in ok.items() if k != "next"}
        nxt = datetime.fromisoformat(ok["next"])
        assert (9, 0) == (nxt.hour, nxt.minute)
        assert nxt.utcoffset() in (timedelta(hours=-5), timedelta(hours=-4))
        disabled = next(task for task in out if task["task"] == "utc-task")
        assert (False, None) == (disabled["enabled"], disabled["next"])
        utc = json.loads(run_cli("list", "--json", "--utc", cwd=project).stdout)
        assert datetime.fromisoformat(utc[0]["next"]) == nxt
        assert utc[0]["next"].endswith("+00:00")

    def test_with_a_store(self, tmp_path: Path) -> None:
        """With a store: running is true for a task with a run going on a live clock; last_run is the
        newest run started by now (a claim made ahead is not), with its status, start and duration."""
        now = datetime.now(UTC).replace(microsecond=0)
        store = seed(tmp_path, ran("new-year", 0, "failed", exit_code=1))
        clock_id = "clock.1:4:abcdef"
        store.heartbeat(ClockInfo(clock_id, "clock.1", 4, "0", "digest"))
        going = ran("backup", 0, "running", started_at=now - timedelta(minutes=1))
        ahead = ran("backup", 0, "running", started_at=now + timedelta(minutes=5), trigger="manual")
        assert [True] == [c.won for c in store.claim([going])]
        assert store.record(ahead)
        store.close()
        result = run_cli("list", "--json", cwd=tmp_path)
        assert 0 == result.returncode, result.stderr
        by_task = {task["task"]: task for task in json.loads(result.stdout)}
        assert (
            False,
            {"status": "failed", "started_at": "2026-11-27T10:00:00+00:00", "duration_s": 2.0},
        ) == (
            by_task["new-year"]["running"],
            by_task["new-year"]["last_run"],
        )
        assert (
            True,
            {"status": "running", "started_at": going.started_at.isoformat(), "duration_s": None},
        ) == (
            by_task["backup"]["running"],
            by_task["backup"]["last_run"],
        )
        assert (False, None) == (by_task["idle"]["running"], by_task["idle"]["last_run"])

        rows = table(run_cli("list", cwd=tmp_path).stdout)
        assert ["RUNNING", "LAST RUN", "LAST STATUS"] == rows[""][-3:]
        assert ["no", "2026-11-27 10:00:00 UTC", "failed"] == rows["new-year"][-3:]
        assert ["yes", f"{going.started_at:%Y-%m-%d %H:%M:%S} UTC", "running"] == rows["backup"][-3:]
        assert ["no", "never", "-"] == rows["idle"][-3:]

    def test_text_without_a_store_has_no_store_columns(self, project: Path) -> None:
        """Without a store, the table has no RUNNING, LAST RUN or LAST STATUS columns."""
        rows = table(run_cli("list", cwd=project).stdout)
        assert ["TASK", "SCHEDULE", "MEANING", "ZONE", "NEXT FIRE", "OVERLAP", "TIMEOUT"] == rows[""]


class TestHistoryFilters:
    def test_status_and_since(self, tmp_path: Path) -> None:
        """--status keeps runs of those statuses (repeated or comma-separated); --since a duration back
        from now or an instant; together, both apply."""
        now = datetime.now(UTC)
        old_fail = ran("backup", 0, "failed", exit_code=1, started_at=now - timedelta(days=3))
        recent_fail = ran("backup", 0, "failed", exit_code=2, started_at=now - timedelta(hours=1))
        recent_ok = ran("backup", 0, started_at=now - timedelta(hours=2))
        timed_out = ran("new-year", 0, "timed_out", signal="SIGTERM", started_at=now - timedelta(hours=3))
        seed(tmp_path, old_fail, recent_fail, recent_ok, timed_out).close()

        def ids(*args: str) -> list[str]:
            result = run_cli("history", "--json", *args, cwd=tmp_path)
            assert 0 == result.returncode, result.stderr
            return [run["run_id"] for run in json.loads(result.stdout)]

        assert [recent_fail.run_id, old_fail.run_id] == ids("--status", "failed")
        assert [recent_fail.run_id] == ids("--status", "failed", "--since", "24h")
        assert [recent_fail.run_id, timed_out.run_id] == ids("--status", "failed,timed_out", "--since", "1d")
        assert [recent_fail.run_id, timed_out.run_id] == ids(
            "--status", "failed", "--status", "timed_out", "--since", "1d"
        )
        assert [recent_fail.run_id] == ids("backup", "--status", "failed", "-n", "1")
        since = (now - timedelta(hours=2, minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert [recent_fail.run_id, recent_ok.run_id] == ids("backup", "--since", since)
        empty = run_cli("history", "--status", "killed", "--since", "2026-11-30T00:00:00Z", cwd=tmp_path)
        assert 0 == empty.returncode
        assert (
            f"no killed runs since 2026-11-30 00:00:00 UTC recorded in sqlite:///{tmp_path / 'state.db'}\n"
            == empty.stdout
        )

    def test_bad_status_and_since(self, tmp_path: Path) -> None:
        """An unknown status is exit 2 with one message that suggests and lists the statuses; so is a
        --since that is neither a duration nor an instant."""
        seed(tmp_path).close()
        status = run_cli("history", "--status", "faild", cwd=tmp_path)
        assert (2, "") == (status.returncode, status.stdout)
        assert (
            "--status: unknown status 'faild' (did you mean 'failed'?); "
            "statuses: running, succeeded, enqueued, failed, timed_out, killed, skipped, lost"
        ) == message(status)
        since = run_cli("history", "--since", "yesterday", cwd=tmp_path)
        assert 2 == since.returncode
        assert (
            "--since: 'yesterday' is neither a duration back from now (24h, 7d, 30m) nor an ISO 8601 instant "
            "(2026-11-30T00:00:00Z)"
        ) == message(since)

    def test_attempt_shown(self, tmp_path: Path) -> None:
        """history shows each run's attempt: the ATTEMPT column and the JSON key attempt."""
        first = ran("backup", 0, "failed", exit_code=1)
        retry = ran("backup", 1, trigger="retry", attempt=2, scheduled_for=first.scheduled_for)
        seed(tmp_path, first, retry).close()
        rows = table(run_cli("history", cwd=tmp_path).stdout)
        assert "ATTEMPT" == rows[""][3]
        assert [("retry", "2"), ("schedule", "1")] == [(row[2], row[3]) for key, row in rows.items() if key]
        out = json.loads(run_cli("history", "--json", cwd=tmp_path).stdout)
        assert [2, 1] == [run["attempt"] for run in out]


class TestMissingStore:
    def test_history_and_list_refuse_a_missing_sqlite_file(self, tmp_path: Path) -> None:
        """history and list on a SQLite file that is not there: exit 2 naming the path, and no file (or
        folder) is created."""
        (tmp_path / "schedules.yaml").write_text(
            "store: sqlite:///typo/state.db\n" + CONFIG.split("\n", 1)[1]
        )
        missing = tmp_path / "nowhere" / "state.db"
        results = [
            run_cli("history", "--store", f"sqlite:///{missing}", cwd=tmp_path),
            run_cli("list", "--store", f"sqlite:///{missing}", cwd=tmp_path),
            run_cli("history", cwd=tmp_path),
            run_cli("list", "--json", cwd=tmp_path),
        ]
        assert [2, 2, 2, 2] == [r.returncode for r in results]
        typo = tmp_path / "typo" / "state.db"
        for result, path in zip(results, [missing, missing, typo, typo], strict=True):
            assert (
                f"run-history store sqlite:///{path}: no database file {path} (`scheduler run` creates it)"
            ) == message(result)
            assert "" == result.stdout
        assert not (tmp_path / "nowhere").exists()
        assert not (tmp_path / "typo").exists()

    def test_run_creates_it(self, tmp_path: Path, start_clock: Any) -> None:
        """`run` still creates the SQLite file (and its folder); list then reads it."""
        clock = start_clock("store: sqlite:///fresh/state.db\n" + CONFIG.split("\n", 1)[1])
        clock.wait_event("store.opened")
        assert 0 == clock.stop()
        assert (tmp_path / "fresh" / "state.db").is_file()
        listing = run_cli("list", cwd=tmp_path)
        assert (0, "") == (listing.returncode, listing.stderr)


class TestInit:
    def test_writes_a_file_that_checks(self, tmp_path: Path) -> None:
        """init writes schedules.yaml, which `check` accepts, and says what to do next."""
        result = run_cli("init", cwd=tmp_path)
        assert 0 == result.returncode, result.stderr
        assert [
            "Wrote schedules.yaml, with the example tasks hello and disk-report. Next:",
            "  scheduler check          validate it after each edit",
            "  scheduler list           see each task's next fire",
            "  scheduler run-now hello  run a task once, now",
            "  scheduler run            start the clock, in the foreground",
        ] == result.stdout.splitlines()
        text = (tmp_path / "schedules.yaml").read_text()
        assert "# store: sqlite:///.scheduler/state.db" in text
        assert "# ping_url: " in text
        check = run_cli("check", cwd=tmp_path)
        assert (0, "schedules.yaml: OK, 2 tasks (2 enabled)\n") == (check.returncode, check.stdout)
        now = run_cli("run-now", "hello", cwd=tmp_path)
        assert (0, "hello from hello, scheduled for ") == (now.returncode, now.stdout[:32])

    def test_a_path_of_its_own(self, tmp_path: Path) -> None:
        """init PATH writes there, and the next steps name it."""
        (tmp_path / "conf").mkdir()
        result = run_cli("init", "conf/my schedules.yaml", cwd=tmp_path)
        assert 0 == result.returncode, result.stderr
        assert "  scheduler check -c 'conf/my schedules.yaml'" in result.stdout
        assert 0 == run_cli("check", "-c", "conf/my schedules.yaml", cwd=tmp_path).returncode

    def test_never_overwrites(self, tmp_path: Path) -> None:
        """An existing file is left as it was (exit 2, and a message saying so); so is a missing folder."""
        (tmp_path / "schedules.yaml").write_text("mine\n")
        result = run_cli("init", cwd=tmp_path)
        assert (2, "") == (result.returncode, result.stdout)
        assert (
            "schedules.yaml: already exists; not overwriting it (move it away, or name another PATH)"
        ) == message(result)
        assert "mine\n" == (tmp_path / "schedules.yaml").read_text()
        nowhere = run_cli("init", "no/such/dir.yaml", cwd=tmp_path)
        assert 2 == nowhere.returncode
        assert "no/such/dir.yaml: cannot write: No such file or directory" == message(nowhere)


def complete(shell: str, words: str, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    """What the shell would be offered for the last of `words` (click's completion protocol)."""
    environ = {**os.environ, **(env or {}), "_SCHEDULER_COMPLETE": f"{shell}_complete"}
    if "SCHEDULER_CONFIG" not in (env or {}):
        environ.pop("SCHEDULER_CONFIG", None)
    parts = words.split(" ")
    # bash and zsh give the index of the word being completed; fish gives the word itself.
    cword = parts[-1] if shell == "fish" else str(len(parts) - 1)
    environ |= {"COMP_WORDS": words, "COMP_CWORD": cword}
    result = subprocess.run(
        SCHEDULER, capture_output=True, text=True, cwd=cwd, env=environ, timeout=60, stdin=subprocess.DEVNULL
    )
    assert (0, "") == (result.returncode, result.stderr)
    lines = [line for line in result.stdout.splitlines() if line]
    if shell == "bash":
        return [line.split(",", 1)[1] for line in lines]
    if shell == "zsh":
        return lines[1::3]  # type, value, help (_ for none)
    return [line.split("\t")[0].split(",", 1)[-1] for line in lines]


class TestCompletion:
    @pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
    def test_scripts(self, shell: str) -> None:
        """_SCHEDULER_COMPLETE=<shell>_source prints the shell's completion script."""
        env = {**os.environ, "_SCHEDULER_COMPLETE": f"{shell}_source"}
        result = subprocess.run(SCHEDULER, capture_output=True, text=True, env=env, timeout=60)
        assert 0 == result.returncode
        assert "_SCHEDULER_COMPLETE" in result.stdout

    @pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
    def test_task_names(self, project: Path, shell: str) -> None:
        """run-now, next and history complete the task names of schedules.yaml."""
        assert ["fail"] == complete(shell, "scheduler run-now fa", project)
        assert ["slow", "suicide"] == complete(shell, "scheduler history s", project)

    def test_config_from_the_command_line_then_the_environment(self, project: Path, tmp_path: Path) -> None:
        """-c/--config given so far names the file; else SCHEDULER_CONFIG; names already given to next are
        not offered again."""
        other = tmp_path / "other.yaml"
        other.write_text(
            "tasks:\n"
            "  alpha:\n    schedule: '@daily'\n    command: 'true'\n"
            "  beta:\n    schedule: '@daily'\n    command: 'true'\n"
        )
        assert ["alpha", "beta"] == complete("bash", f"scheduler run-now -c {other} ", project)
        assert ["alpha", "beta"] == complete("bash", f"scheduler history --config={other} ", project)
        assert ["beta"] == complete("bash", f"scheduler next -c {other} alpha ", project)
        assert ["alpha", "beta"] == complete(
            "bash", "scheduler run-now ", project, env={"SCHEDULER_CONFIG": str(other)}
        )

    def test_broken_config_completes_nothing(self, tmp_path: Path) -> None:
        """A missing or invalid config offers nothing, silently."""
        assert [] == complete("bash", "scheduler run-now ", tmp_path)
        (tmp_path / "schedules.yaml").write_text("tasks: [\n")
        assert [] == complete("bash", "scheduler run-now ", tmp_path)
        assert [] == complete("bash", "scheduler history --status faild ", tmp_path)

    def test_statuses(self, tmp_path: Path) -> None:
        """history --status completes the run statuses."""
        assert ["timed_out"] == complete("bash", "scheduler history --status ti", tmp_path)
