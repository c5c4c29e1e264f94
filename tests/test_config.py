"""Tests for scheduler.config: schedules.yaml -> TaskSpecs, and errors naming file, line, task and value."""

from __future__ import annotations

import hashlib
import pickle
import signal
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from scheduler import config as config_module
from scheduler import schedule
from scheduler.config import (
    DEFAULT_GRACE_S,
    DEFAULT_HOOK_TIMEOUT_S,
    DEFAULT_KEEP_RUNS,
    DEFAULT_KILL_GRACE_S,
    DEFAULT_PING_TIMEOUT_S,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_DELAY_S,
    DEFAULT_RETRY_MAX_DELAY_S,
    DEFAULT_SHELL,
    Config,
    TaskSpec,
    expand_env,
    format_duration,
    parse_config,
    parse_duration,
    suggest,
)
from scheduler.errors import ConfigError, ScheduleError

BASE = "/srv/app"


def parse(text: str) -> Config:
    """Parse dedented YAML as schedules.yaml in /srv/app."""
    return parse_config(textwrap.dedent(text), "schedules.yaml", base_dir=BASE)


def problems(text: str) -> list[str]:
    """The problems that parsing dedented YAML reports."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def one_task(settings: str, name: str = "a") -> TaskSpec:
    """The spec of a single task whose settings (YAML lines at indent 0) follow schedule and command."""
    body = textwrap.indent(textwrap.dedent(settings), "    ")
    text = f'tasks:\n  {name}:\n    schedule: "*/10 * * * *"\n    command: run\n{body}'
    return parse_config(text, "schedules.yaml", base_dir=BASE).tasks[name]


def task_error(settings: str) -> str:
    """The single problem reported for a task whose extra settings start on line 5."""
    body = textwrap.indent(textwrap.dedent(settings), "    ")
    text = f'tasks:\n  a:\n    schedule: "*/10 * * * *"\n    command: run\n{body}'
    with pytest.raises(ConfigError) as info:
        parse_config(text, "schedules.yaml", base_dir=BASE)
    assert 1 == len(info.value.problems), info.value.problems
    return info.value.problems[0]


FULL = """\
timezone: Europe/London
defaults:
  timeout: 15m
  grace: 1m
  env: {SHARED: "1", LEVEL: info}
tasks:
  send-digest:
    schedule: "0 9 * * MON-FRI"
    command: python manage.py send_digest
  import-feed:
    schedule: every 10 minutes
    command: [bin/import, --since, 1h, 0755]
    timezone: America/New_York
    timeout: 5m
    overlap: replace
    grace: 5m
    jitter: 30s
    env: {FEED_URL: "https://example.com/feed", LEVEL: debug, RETRIES: 3, DRY: false}
    cwd: jobs
    shell: /bin/bash
    kill_grace: 20s
    enabled: false
"""


class TestParseConfig:
    def test_full_file(self) -> None:
        """Every key lands in its TaskSpec field, with defaults applied and env merged."""
        config = parse(FULL)
        digest, feed = config.tasks["send-digest"], config.tasks["import-feed"]

        assert ["send-digest", "import-feed"] == list(config.tasks)
        assert ("schedules.yaml", "Europe/London") == (config.path, config.timezone)
        assert "python manage.py send_digest" == digest.command
        assert "Europe/London" == digest.timezone
        assert ZoneInfo("Europe/London") == digest.zone
        assert (900.0, 60.0, 0.0) == (digest.timeout_s, digest.grace_s, digest.jitter_s)
        assert {"SHARED": "1", "LEVEL": "info"} == digest.env
        assert (None, DEFAULT_SHELL, DEFAULT_KILL_GRACE_S) == (digest.cwd, digest.shell, digest.kill_grace_s)
        assert ("skip", True, 7) == (digest.overlap, digest.enabled, digest.line)
        assert "0 9 * * MON-FRI" == digest.schedule.text

        assert ("bin/import", "--since", "1h", "0755") == feed.command
        assert "America/New_York" == feed.timezone
        assert ZoneInfo("America/New_York") == feed.schedule.zone
        assert (300.0, 300.0, 30.0, 20.0) == (feed.timeout_s, feed.grace_s, feed.jitter_s, feed.kill_grace_s)
        assert "replace" == feed.overlap
        assert {
            "SHARED": "1",
            "LEVEL": "debug",
            "FEED_URL": "https://example.com/feed",
            "RETRIES": "3",
            "DRY": "false",
        } == feed.env
        assert ("/srv/app/jobs", "/bin/bash", False, 10) == (feed.cwd, feed.shell, feed.enabled, feed.line)

    def test_minimal_task_defaults(self) -> None:
        """A task with only schedule and command gets the documented defaults, in UTC."""
        config = parse("""
            tasks:
              a:
                schedule: "*/10 * * * *"
                command: run
        """)
        task = config.tasks["a"]

        assert "UTC" == config.timezone
        assert "UTC" == task.timezone
        assert (None, DEFAULT_GRACE_S, 0.0) == (task.timeout_s, task.grace_s, task.jitter_s)
        assert ({}, None, True) == (task.env, task.cwd, task.enabled)

    def test_top_level_timezone_applies(self) -> None:
        """The top-level timezone is every task's zone unless the task or defaults set one."""
        config = parse("""
            timezone: Asia/Tokyo
            tasks:
              a: {schedule: "0 9 * * *", command: run}
              b: {schedule: "0 9 * * *", command: run, timezone: UTC}
        """)

        assert ("Asia/Tokyo", "UTC") == (config.tasks["a"].timezone, config.tasks["b"].timezone)
        assert ZoneInfo("Asia/Tokyo") == config.tasks["a"].schedule.zone

    def test_defaults_timezone_beats_top_level(self) -> None:
        """A timezone in defaults overrides the top-level one."""
        config = parse("""
            timezone: Asia/Tokyo
            defaults: {timezone: Europe/Paris}
            tasks:
              a: {schedule: "0 9 * * *", command: run}
        """)

        assert ("Asia/Tokyo", "Europe/Paris") == (config.timezone, config.tasks["a"].timezone)

    def test_empty_tasks(self) -> None:
        """`tasks: {}` is a valid file with no tasks."""
        assert {} == parse("tasks: {}\n").tasks

    def test_same_text_parses_equal(self) -> None:
        """Two parses of the same text give equal specs; `line` is not compared."""
        shifted = "# a comment that moves every line down\n" + FULL

        assert parse(FULL) == parse(FULL)
        assert parse(FULL).tasks == parse(shifted).tasks
        assert 8 == parse(shifted).tasks["send-digest"].line

    def test_changed_setting_not_equal(self) -> None:
        """A changed setting makes the specs differ, so a reload touches the task."""
        assert one_task("timeout: 1m") != one_task("timeout: 2m")

    def test_default_timeout_overridden_to_none(self) -> None:
        """`timeout: null`, `none` or an unquoted `off` in a task cancel a default timeout."""
        for value in ("null", "none", "off", "Off", "false"):
            config = parse(f"""
                defaults: {{timeout: 1h}}
                tasks:
                  a: {{schedule: "0 9 * * *", command: run, timeout: {value}}}
            """)
            assert None is config.tasks["a"].timeout_s, value

    def test_cwd(self) -> None:
        """A relative cwd joins the config's folder; an absolute one stays as written."""
        assert "/srv/app/jobs/x" == one_task("cwd: jobs/x").cwd
        assert "/srv/app" == one_task("cwd: .").cwd
        assert "/var/tmp" == one_task("cwd: /var/tmp").cwd

    def test_cwd_defaults_to_folder_of_path(self) -> None:
        """Without base_dir, relative cwds resolve against the folder of `path`."""
        text = 'tasks:\n  a: {schedule: "0 9 * * *", command: run, cwd: jobs}\n'

        assert "/etc/clock/jobs" == parse_config(text, "/etc/clock/schedules.yaml").tasks["a"].cwd
        assert Path("jobs").absolute() == Path(parse_config(text, "schedules.yaml").tasks["a"].cwd or "")

    def test_env_value_conversions(self) -> None:
        """Env numbers keep their written text; booleans become true/false."""
        env = one_task("env: {A: 3, B: 1.50, C: 0755, D: yes, E: false, F: '', G: 12:30}").env

        assert {"A": "3", "B": "1.50", "C": "0755", "D": "true", "E": "false", "F": "", "G": "12:30"} == env

    def test_string_command_is_stripped(self) -> None:
        """A block-scalar command loses its trailing newline."""
        config = parse(
            "tasks:\n  a:\n    schedule: '0 9 * * *'\n    command: |\n      echo one\n      echo two\n"
        )

        assert "echo one\necho two" == config.tasks["a"].command

    def test_merge_keys(self) -> None:
        """YAML `<<` merge keys work, and the task's own keys win over merged ones."""
        config = parse("""
            tasks:
              a: &base
                schedule: "0 9 * * *"
                command: run
                timeout: 5m
              b:
                <<: *base
                timeout: 1m
        """)

        assert ("run", 60.0) == (config.tasks["b"].command, config.tasks["b"].timeout_s)

    def test_schedule_gets_name_and_zone(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """schedule.parse receives the schedule text, the task's name and its zone."""
        calls: list[tuple[str, str, ZoneInfo]] = []
        real = schedule.parse

        def spy(text: str, *, name: str, zone: ZoneInfo) -> schedule.Schedule:
            calls.append((text, name, zone))
            return real(text, name=name, zone=zone)

        monkeypatch.setattr(schedule, "parse", spy)
        parse("tasks:\n  job-1: {schedule: '0 9 * * *', command: run, timezone: Asia/Tokyo}\n")

        assert [("0 9 * * *", "job-1", ZoneInfo("Asia/Tokyo"))] == calls


class TestErrors:
    def test_unknown_task_key(self) -> None:
        """An unknown task key names file, line, column and task, with a did-you-mean."""
        with pytest.raises(
            ConfigError,
            match=r"schedules\.yaml:5:5: task 'a': unknown key 'comand' \(did you mean 'command'\?\)",
        ):
            parse_config(
                "tasks:\n  a:\n    schedule: '0 9 * * *'\n    command: run\n    comand: x\n", "schedules.yaml"
            )

    def test_misspelt_required_key_reported_once(self) -> None:
        """A misspelt `comand` is one problem, not also "missing command"."""
        expected = "schedules.yaml:5:5: task 'a': unknown key 'comand' (did you mean 'command'?)"
        assert [expected] == problems("""
            tasks:
              a:
                schedule: "0 9 * * *"
                comand: run
        """)

    def test_missing_required_keys(self) -> None:
        """A task without schedule or command says which, on the task's line."""
        assert [
            "schedules.yaml:3:3: task 'a': missing required key 'schedule'",
            "schedules.yaml:3:3: task 'a': missing required key 'command'",
        ] == problems("""
            tasks:
              a:
                timeout: 5m
        """)

    def test_unknown_top_level_key(self) -> None:
        """An unknown top-level key gets a did-you-mean."""
        with pytest.raises(
            ConfigError, match=r"schedules\.yaml:2:1: unknown key 'task' \(did you mean 'tasks'\?\)"
        ):
            parse("""
                task: {}
                tasks: {}
            """)

    def test_task_at_top_level(self) -> None:
        """A task written at the top level is pointed at `tasks:`."""
        with pytest.raises(ConfigError, match=r":2:1: unknown key 'digest' \(tasks go under 'tasks:'\)"):
            parse("""
                digest: {schedule: "0 9 * * *", command: run}
                tasks: {}
            """)

    def test_unknown_defaults_key(self) -> None:
        """An unknown defaults key gets a did-you-mean."""
        with pytest.raises(
            ConfigError, match=r":3:3: defaults: unknown key 'timout' \(did you mean 'timeout'\?\)"
        ):
            parse("""
                defaults:
                  timout: 5m
                tasks: {}
            """)

    def test_defaults_cannot_hold_schedule_or_command(self) -> None:
        """schedule and command have no defaults."""
        with pytest.raises(ConfigError, match=r":3:3: defaults: 'command' cannot have a default"):
            parse("""
                defaults:
                  command: run
                tasks: {}
            """)

    def test_bad_default_reported_once(self) -> None:
        """A bad value in defaults is one problem, under defaults, not one per task."""
        assert [
            "schedules.yaml:2:19: defaults: grace: expected a duration like 90s, 10m, 1h30m or a number of "
            "seconds, got 'soon'"
        ] == problems("""
            defaults: {grace: soon}
            tasks:
              a: {schedule: "0 9 * * *", command: run}
              b: {schedule: "0 9 * * *", command: run}
        """)

    def test_duplicate_task(self) -> None:
        """A task defined twice is an error naming the first line."""
        with pytest.raises(ConfigError, match=r":5:3: duplicate task 'a' \(first defined on line 3\)$"):
            parse("""
                tasks:
                  a: {schedule: "0 9 * * *", command: run}
                  b: {schedule: "0 9 * * *", command: run}
                  a: {schedule: "0 10 * * *", command: run}
            """)

    def test_duplicate_key_in_task(self) -> None:
        """A key repeated inside a task is an error."""
        assert (
            "schedules.yaml:6:5: task 'a': duplicate key 'timeout' (first defined on line 5)"
            == task_error("timeout: 5m\ntimeout: 10m")
        )

    def test_duplicate_top_level_and_env_keys(self) -> None:
        """Duplicates are found at the top level and inside env too."""
        assert [
            "schedules.yaml:3:1: duplicate key 'timezone' (first defined on line 2)",
            "schedules.yaml:5:56: task 'a': env: duplicate variable 'A' (first defined on line 5)",
        ] == problems("""
            timezone: UTC
            timezone: UTC
            tasks:
              a: {schedule: "0 9 * * *", command: run, env: {A: x, A: y}}
        """)

    def test_duplicate_task_body_still_checked(self) -> None:
        """The second definition of a duplicated task is still validated."""
        found = problems("""
            tasks:
              a: {schedule: "0 9 * * *", command: run}
              a: {schedule: "0 9 * * *", command: run, timeout: soon}
        """)

        assert 2 == len(found)
        assert "task 'a': timeout:" in found[1]

    def test_sexagesimal_schedule(self) -> None:
        """An unquoted 12:30 is explained as YAML 1.1's base-60 number."""
        with pytest.raises(
            ConfigError,
            match=r"schedules\.yaml:3:15: task 'a': schedule: expected .*, got the number 750: "
            r"YAML 1\.1 reads an unquoted 12:30 as a base-60 number; quote it",
        ):
            parse("tasks:\n  a:\n    schedule: 12:30\n    command: run\n")

    def test_sexagesimal_duration(self) -> None:
        """An unquoted 1:30 as a duration is explained, not silently read as 90 seconds."""
        assert task_error("timeout: 1:30").endswith(
            "task 'a': timeout: expected a duration like 90s, 10m, 1h30m or a number of seconds, "
            "got the number 90: YAML 1.1 reads an unquoted 1:30 as a base-60 number; quote it"
        )

    def test_boolean_where_string_expected(self) -> None:
        """An unquoted yes/on where text is expected gets a hint to quote it."""
        assert (
            "schedules.yaml:5:12: task 'a': shell: expected a shell path like /bin/bash, "
            "got the boolean true: YAML 1.1 reads an unquoted on as a boolean; quote it"
        ) == task_error("shell: on")

    def test_star_schedule(self) -> None:
        """An unquoted schedule starting with '*' is a syntax error with a quoting hint."""
        with pytest.raises(
            ConfigError,
            match=r"schedules\.yaml:3:\d+: YAML syntax error: .*alias.*; "
            r"quote schedules that start with '\*', e\.g\. schedule: \"\* \* \* \* \*\"",
        ):
            parse("tasks:\n  a:\n    schedule: * * * * *\n    command: run\n")

    def test_star_slash_schedule(self) -> None:
        """`*/5 ...` unquoted gets the same hint."""
        with pytest.raises(
            ConfigError, match=r":3:\d+: YAML syntax error: .*quote schedules that start with '\*'"
        ):
            parse("tasks:\n  a:\n    schedule: */5 * * * *\n    command: run\n")

    def test_at_schedule(self) -> None:
        """An unquoted @daily gets a quoting hint."""
        with pytest.raises(ConfigError, match=r":3:15: YAML syntax error: .*'@'.*schedule: \"@daily\""):
            parse("tasks:\n  a:\n    schedule: @daily\n    command: run\n")

    def test_syntax_error_line(self) -> None:
        """Other YAML syntax errors carry the line of the problem."""
        with pytest.raises(
            ConfigError, match=r"schedules\.yaml:4:2: YAML syntax error: (did not find )?expected ',' or '\]'"
        ):
            parse("tasks:\n  a: [1, 2\n\nb: 3\n")

    def test_python_tag_is_rejected(self, tmp_path: Path) -> None:
        """A !!python tag is an error on its line, and nothing runs."""
        marker = tmp_path / "pwned"
        text = (
            'tasks:\n  a:\n    schedule: "0 9 * * *"\n'
            f'    command: !!python/object/apply:os.system ["touch {marker}"]\n'
        )

        with pytest.raises(
            ConfigError,
            match=r"schedules\.yaml:4:14: task 'a': command: "
            r"unsupported YAML tag '!!python/object/apply:os\.system'",
        ):
            parse_config(text, "schedules.yaml")
        assert not marker.exists()

    def test_python_tag_anywhere(self, tmp_path: Path) -> None:
        """A !!python tag is rejected wherever it is, even under an unknown key or as the whole document."""
        marker = tmp_path / "pwned"
        for text in (
            f'tasks: {{}}\nextra: !!python/object/apply:os.system ["touch {marker}"]\n',
            f'!!python/object/apply:os.system ["touch {marker}"]\n',
            f'tasks:\n  !!python/object/apply:os.system ["touch {marker}"]: x\n',
        ):
            with pytest.raises(ConfigError, match=r"unsupported YAML tag '!!python/object/apply:os\.system'"):
                parse_config(text, "schedules.yaml")
        assert not marker.exists()

    def test_schedule_error_wrapped(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A ScheduleError becomes a problem at the schedule value's line and column."""

        def reject(text: str, *, name: str, zone: ZoneInfo) -> schedule.Schedule:
            raise ScheduleError(f"bad field in {text!r}")

        monkeypatch.setattr(schedule, "parse", reject)

        with pytest.raises(
            ConfigError, match=r"^schedules\.yaml:4:15: task 'b': schedule: bad field in 'nope'$"
        ):
            parse("""
                tasks:
                  b:
                    schedule: nope
                    command: run
            """)

    def test_empty_schedule(self) -> None:
        """schedule.parse's own error for an empty schedule is wrapped with the line."""
        with pytest.raises(ConfigError, match=r"^schedules\.yaml:3:15: task 'a': schedule: .*empty"):
            parse("tasks:\n  a:\n    schedule: ''\n    command: run\n")

    def test_empty_file(self) -> None:
        """An empty file (or only comments) is a clear error."""
        for text in ("", "# nothing here\n", "---\n"):
            with pytest.raises(ConfigError, match=r"^schedules\.yaml:1:1: the file is empty"):
                parse(text)

    def test_top_level_not_mapping(self) -> None:
        """A top level that is not a mapping says what it got."""
        with pytest.raises(ConfigError, match=r"^schedules\.yaml:1:1: expected a mapping .*, got a list$"):
            parse("- a\n- b\n")

    def test_missing_tasks(self) -> None:
        """A file without `tasks` is an error."""
        with pytest.raises(ConfigError, match=r"missing required key 'tasks'"):
            parse("timezone: UTC\n")

    def test_tasks_not_mapping(self) -> None:
        """`tasks` as a list or left empty is an error that mentions `tasks: {}`."""
        with pytest.raises(
            ConfigError, match=r":1:8: tasks: expected a mapping .*tasks: \{\} for none.*, got a list"
        ):
            parse("tasks: [a, b]\n")
        with pytest.raises(ConfigError, match=r"got nothing \(the value is empty\)"):
            parse("tasks:\n")

    def test_task_not_mapping(self) -> None:
        """A task whose value is not a mapping names the task."""
        with pytest.raises(ConfigError, match=r":2:6: task 'a': expected a mapping of settings.*, got 'run'"):
            parse("tasks:\n  a: run\n")

    def test_bad_task_name(self) -> None:
        """Task names are letters, digits, '-', '_' and '.'."""
        for name in ("has space", "-leading", "semi;colon", "ünï"):
            with pytest.raises(ConfigError, match=rf":2:3: task '{name}': invalid task name"):
                parse(f'tasks:\n  "{name}": {{schedule: "0 9 * * *", command: run}}\n')

    def test_good_task_names(self) -> None:
        """Names with digits, dots, dashes and underscores are fine."""
        config = parse("""
            tasks:
              a.b-c_d9: {schedule: "0 9 * * *", command: run}
              42: {schedule: "0 9 * * *", command: x}
        """)

        assert ["a.b-c_d9", "42"] == list(config.tasks)

    def test_bad_timezone(self) -> None:
        """An unknown zone is named, with a did-you-mean."""
        with pytest.raises(
            ConfigError,
            match=r"^schedules\.yaml:1:11: timezone: unknown time zone 'Europe/Londn' "
            r"\(did you mean 'Europe/London'\?\)$",
        ):
            parse("timezone: Europe/Londn\ntasks: {}\n")

    def test_bad_task_timezone(self) -> None:
        """A task's bad zone names the task; odd keys like a folder or a path are errors too."""
        assert "schedules.yaml:5:15: task 'a': timezone: unknown time zone 'Mars/Olympus'" == task_error(
            "timezone: Mars/Olympus"
        )
        for zone in ("America", "../etc/passwd", "/etc/localtime", "''"):
            assert "unknown time zone" in task_error(f"timezone: {zone}")

    def test_bad_task_timezone_does_not_hide_the_schedule(self) -> None:
        """A task with an unknown zone still has its schedule checked: both problems, each at its place."""
        assert [
            "schedules.yaml:4:15: task 'a': schedule: 'every 7 minutes' cannot be exact in cron: 60 is not a "
            "multiple of 7, so */7 starts again at :00 every hour (…, :49, :56, then :00: a 4-minute gap); "
            "use 'every 6 minutes' or 'every 10 minutes', or write \"*/7 * * * *\" if that gap is fine",
            "schedules.yaml:6:15: task 'a': timezone: unknown time zone 'Europe/Londn' "
            "(did you mean 'Europe/London'?)",
        ] == problems("""
            tasks:
              a:
                schedule: every 7 minutes
                command: run
                timezone: Europe/Londn
        """)

    def test_bad_top_level_or_default_timezone_does_not_hide_schedules(self) -> None:
        """An unknown zone at the top level or in defaults, which every task relies on, hides no schedule."""
        found = problems("""
            timezone: Mars/Base
            defaults:
              timezone: Mars/Olympus
            tasks:
              a:
                schedule: every fortnight
                command: run
              b:
                schedule: "0 25 * * *"
                command: run
        """)

        assert [2, 4, 7, 10] == [int(problem.split(":")[1]) for problem in found]
        assert "schedules.yaml:2:11: timezone: unknown time zone 'Mars/Base'" == found[0]
        assert "schedules.yaml:4:13: defaults: timezone: unknown time zone 'Mars/Olympus'" == found[1]
        assert found[2].startswith("schedules.yaml:7:15: task 'a': schedule: unknown word 'fortnight'")
        assert (
            "schedules.yaml:10:15: task 'b': schedule: '0 25 * * *': bad hour field '25' (values 0-23)"
            == found[3]
        )

    @pytest.mark.parametrize(
        ("setting", "message"),
        [
            (
                "timeout: soon",
                "timeout: expected a duration like 90s, 10m, 1h30m or a number of seconds, got 'soon'",
            ),
            ("timeout: 0", "timeout: must be more than 0 (write none for no timeout)"),
            ("timeout: -5", "timeout: must not be negative, got the number -5"),
            (
                "timeout: yes",
                "timeout: expected a duration like 90s, 10m, 1h30m or a number of seconds, "
                "got the boolean true",
            ),
            ("kill_grace: 0s", "kill_grace: must be more than 0"),
            ("grace: -1m", "grace: must not be negative, got '-1m'"),
            (
                "jitter: null",
                "jitter: expected a duration like 90s, 10m, 1h30m or a number of seconds, got null",
            ),
            (
                "overlap: skipp",
                "overlap: expected one of skip, allow, replace, got 'skipp' (did you mean 'skip'?)",
            ),
            ("enabled: maybe", "enabled: expected true or false, got 'maybe'"),
            ("env: [A, B]", "env: expected a mapping of variable names to values, got a list"),
            (
                "env: {1A: x}",
                "env: invalid variable name '1A': use letters, digits and '_', not starting with a digit",
            ),
            (
                "env: {A: ~}",
                "env: A: expected a string, number or boolean, got null (write '' for an empty value)",
            ),
            ("env: {A: [1]}", "env: A: expected a string, number or boolean, got a list"),
            (
                "cwd: ~/jobs",
                "cwd: '~/jobs': '~' is not expanded; write an absolute path or one relative to the",
            ),
            ("cwd: ''", "cwd: expected a folder path, got an empty string"),
            ("shell: 5", "shell: expected a shell path like /bin/bash, got the number 5"),
            ("timezone: 3", "timezone: expected an IANA time zone name like Europe/London, got the number 3"),
        ],
    )
    def test_bad_setting(self, setting: str, message: str) -> None:
        """Each bad setting names the task, the key, the value and the line."""
        problem = task_error(setting)

        assert problem.startswith("schedules.yaml:5:")
        assert message in problem

    @pytest.mark.parametrize(
        ("command", "message"),
        [
            ("''", "command: the command is empty"),
            ("'   '", "command: the command is empty"),
            ("[]", "command: the list is empty; give the program, then its arguments"),
            ("['', x]", "command[0]: the program name is empty"),
            ("[ls, yes]", "command[1]: expected a string or a number, got the boolean true: YAML 1.1 reads"),
            ("[ls, null]", "command[1]: expected a string or a number, got null"),
            ("[ls, [a]]", "command[1]: expected a string or a number, got a list"),
            ("{a: b}", "command: expected a string (run through the shell) or a list of arguments"),
            (
                "5",
                "command: expected a string (run through the shell) or a list of arguments (run directly)",
            ),
        ],
    )
    def test_bad_command(self, command: str, message: str) -> None:
        """Bad commands say what is wrong, at the command's line."""
        with pytest.raises(ConfigError, match=r"^schedules\.yaml:4:\d+: task 'a': ") as info:
            parse(f"tasks:\n  a:\n    schedule: '0 9 * * *'\n    command: {command}\n")
        assert message in str(info.value)

    def test_bad_date_value(self) -> None:
        """A date-like value that is no date (2024-02-30) is a problem, not a crash."""
        assert "task 'a': env: D: cannot read the value (day is out of range for month)" in task_error(
            "env: {D: 2024-02-30}"
        )

    def test_errors_collected_and_ordered(self) -> None:
        """Every problem is reported in one ConfigError, ordered by line."""
        found = problems("""
            tasks:
              b:
                schedule: "0 9 * * *"
                command: run
                timeout: soon
              a:
                schedule: "0 9 * * *"
                command: run
                overlap: never
                jitter: -1
            timezone: Nowhere/Special
        """)

        assert [6, 10, 11, 12] == [int(problem.split(":")[1]) for problem in found]
        assert "task 'b': timeout" in found[0]
        assert "Nowhere/Special" in found[3]

    def test_control_character(self) -> None:
        """A control character in the text is a located syntax error, not a crash."""
        with pytest.raises(ConfigError, match=r"^schedules\.yaml:2:4: YAML syntax error: .*#x0001"):
            parse("tasks: {}\nx: \x01\n")

    def test_several_documents(self) -> None:
        """More than one YAML document is an error."""
        with pytest.raises(ConfigError, match=r":2:1: YAML syntax error: expected a single document"):
            parse("tasks: {}\n---\ntasks: {}\n")

    def test_deep_nesting(self) -> None:
        """Absurdly deep nesting is a problem, not a RecursionError."""
        with pytest.raises(ConfigError, match=r"nested too deeply|YAML syntax error"):
            parse("tasks: " + "[" * 600)

    def test_recursive_merge(self) -> None:
        """A mapping that merges itself does not loop forever."""
        config = parse("tasks:\n  a: &a\n    <<: *a\n    schedule: '0 9 * * *'\n    command: run\n")

        assert "run" == config.tasks["a"].command


@pytest.fixture(params=["libyaml", "pure"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each syntax hint holds for libyaml and for PyYAML's pure-Python parser, whose messages differ."""
    if request.param == "pure":
        monkeypatch.setattr(config_module, "_Loader", yaml.SafeLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("libyaml is not installed")
    return str(request.param)


class TestSyntaxHints:
    @pytest.mark.parametrize(
        ("text", "where", "hint"),
        [
            (
                "tasks:\n  a:\n    schedule: '@daily'\n    command: echo a: b\n",
                "4:20",
                "the value of 'command' contains ': ', which YAML reads as another key; quote the whole "
                'value, e.g. command: "..."',
            ),
            (
                "tasks:\n  a:\n    schedule: every day at 9: 00\n    command: run\n",
                "3:29",
                "the value of 'schedule' contains ': '",
            ),
            (
                "tasks:\n  a:\n    command: [echo, a: b]\n    schedule: x: y\n",
                "4:16",
                "the value of 'schedule' contains ': '",
            ),
            (
                "tasks:\n  a:\n    schedule x\n    command: run\n",
                "4:12",
                "line 3 has no 'key: value' (a ':' then a space), so YAML reads line 4 as more of its text",
            ),
            (
                "tasks:\n  a:\n    command:run\n    schedule: '@daily'\n",
                "4:13",
                "line 3 has no 'key: value'",
            ),
            (
                "tasks:\n  a:\n    schedule: every hour\n      command: run\n",
                "4:14",
                "line 4 is indented more than line 3: keys of one mapping line up",
            ),
            (
                "tasks:\n  a:\n    schedule: '@daily'\n      command: run\n",
                "4:7",
                "this line's indentation does not match the lines above",
            ),
            (
                "tasks:\n  a:\n\tschedule: '@daily'\n",
                "3:1",
                "YAML does not allow tabs for indentation: indent with spaces",
            ),
            (
                'tasks:\n  a:\n    schedule: "@daily\n    command: run\n',
                "5:1",
                "a quoted value is never closed: add its closing quote",
            ),
            (
                "tasks:\n  a:\n    command: 'it's'\n",
                "3:18",
                "text follows a closing quote: quote the whole value (inside '...' write '' for a '",
            ),
            (
                'tasks:\n  a:\n    command: "echo" hi\n',
                "3:21",
                "text follows a closing quote",
            ),
            (
                "tasks:\n  a:\n    schedule: '@daily'\n   command: run\n",
                "4:4",
                "this line's indentation does not match the lines above",
            ),
            (
                "tasks:\n  a:\n    command: `date`\n",
                "3:14",
                "YAML cannot start a plain value with '`': quote the value",
            ),
            (
                "tasks:\n  a:\n    command: - run\n",
                "3:14",
                "a list item ('- ') starts a line of its own, under its key",
            ),
            (
                "tasks:\n  a:\n    command: [echo, hi\n    schedule: '@daily'\n",
                "4:13",
                "the '[' on line 3 is never closed with ']'",
            ),
            (
                "tasks:\n  a:\n    command: | echo\n",
                "3:16",
                "'|' and '>' start a block of text on the lines below",
            ),
        ],
    )
    def test_hint(self, loader: str, text: str, where: str, hint: str) -> None:
        """A common YAML mistake gets a hint saying what to do, at the line and column of the problem."""
        found = problems(text)
        assert 1 == len(found), found
        assert found[0].startswith(f"schedules.yaml:{where}: YAML syntax error: ")
        assert f"; {hint}" in found[0]

    def test_hint_never_shows_the_value(self, loader: str) -> None:
        """The hint names the key, never the value, which may be a secret."""
        found = problems("tasks:\n  a:\n    command: curl -u admin:hunter2 https://x: y\n")
        assert "hunter2" not in found[0]
        assert "the value of 'command' contains ': '" in found[0]

    def test_no_hint_for_others(self, loader: str) -> None:
        """A syntax error without a known cause keeps the parser's message alone."""
        found = problems("tasks: {}\n---\ntasks: {}\n")
        assert ";" not in found[0]


STORE_FORMS = (
    "expected a store URL starting with sqlite://, postgresql:// or postgres://, "
    "or an environment variable reference like ${DATABASE_URL}"
)
KEEP_RUNS_FORM = "expected a whole number of runs to keep per task, from 1 to 1000000"


def top_error(setting: str) -> str:
    """The single problem reported for a top-level setting on line 1, above `tasks: {}`."""
    with pytest.raises(ConfigError) as info:
        parse_config(f"{setting}\ntasks: {{}}\n", "schedules.yaml", base_dir=BASE)
    assert 1 == len(info.value.problems), info.value.problems
    return info.value.problems[0]


class TestStore:
    @pytest.mark.parametrize(
        "url",
        [
            "sqlite:///.scheduler/state.db",
            "sqlite:////var/lib/clock/state.db",
            "postgresql://user:pw@host/db",
            "postgres://host:5432/db",
            "${DATABASE_URL}",
            "postgresql://u:${PGPASS}@h/db",
            "${SCHEME}://${HOST}/db",
            "'${_lower_9}'",
        ],
    )
    def test_accepted(self, url: str) -> None:
        """Each accepted form is kept as written."""
        assert url.strip("'") == parse(f"store: {url}\ntasks: {{}}\n").store

    def test_value_and_line(self) -> None:
        """The URL and the 1-based line of its value land in the Config."""
        config = parse("""
            timezone: UTC
            store:
              sqlite:///.scheduler/state.db
            tasks: {}
        """)

        assert ("sqlite:///.scheduler/state.db", 4) == (config.store, config.store_line)

    def test_absent(self) -> None:
        """Without `store`, the Config has no store and no store line."""
        config = parse("tasks: {}\n")

        assert (None, None) == (config.store, config.store_line)

    def test_environment_not_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A `${NAME}` reference stays raw even when the variable is set: the caller expands it."""
        monkeypatch.setenv("DATABASE_URL", "sqlite:///elsewhere.db")

        assert "${DATABASE_URL}" == parse("store: ${DATABASE_URL}\ntasks: {}\n").store

    def test_line_not_compared(self) -> None:
        """A store that only moved to another line compares equal; another URL does not."""
        text = "store: sqlite:///a.db\ntasks: {}\n"
        shifted = parse("# moved down\n" + text)

        assert parse(text) == shifted
        assert 2 == shifted.store_line
        assert parse(text) != parse("store: sqlite:///b.db\ntasks: {}\n")

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            ("5", "the number 5"),
            ("null", "null"),
            ("''", "an empty string"),
            ("'  '", "an empty string"),
            ("{url: x}", "a mapping"),
            ("[sqlite:///a.db]", "a list"),
            ("yes", "the boolean true: YAML 1.1 reads an unquoted yes as a boolean; quote it"),
        ],
    )
    def test_not_a_string(self, value: str, shown: str) -> None:
        """Anything but a non-empty string is an error naming the line, the key and the value."""
        assert f"schedules.yaml:1:8: store: {STORE_FORMS}, got {shown}" == top_error(f"store: {value}")

    def test_empty_value(self) -> None:
        """`store:` with nothing after it says the value is empty."""
        assert f"schedules.yaml:1:7: store: {STORE_FORMS}, got nothing (the value is empty)" == top_error(
            "store:"
        )

    @pytest.mark.parametrize(
        "url", ["mysql://h/db", "./state.db", "state.db", "SQLITE:///a.db", "postgresql+psycopg://h/db"]
    )
    def test_bad_scheme(self, url: str) -> None:
        """Without a `${`, the URL must start with one of the three schemes, which the error lists."""
        assert f"schedules.yaml:1:8: store: {STORE_FORMS}, got {url!r}" == top_error(f"store: {url}")

    def test_dollar_without_braces(self) -> None:
        """`$DATABASE_URL` is not a reference: the error suggests `${DATABASE_URL}`."""
        assert (
            f"schedules.yaml:1:8: store: {STORE_FORMS}, got '$DATABASE_URL' "
            "(did you mean '${DATABASE_URL}'?)"
        ) == top_error("store: $DATABASE_URL")

    @pytest.mark.parametrize(
        "url", ["${DATABASE_URL", "postgresql://u:${PGPASS@h/db", "${A}${B", "postgresql://h/${"]
    )
    def test_unclosed_reference(self, url: str) -> None:
        """A `${` without its `}` is an error naming the line, not the value: it may hold a password."""
        assert "schedules.yaml:1:8: store: unclosed '${'; write ${NAME}" == top_error(f"store: {url}")

    @pytest.mark.parametrize(
        ("url", "reference"),
        [
            ("${1x}", "${1x}"),
            ("${}", "${}"),
            ("${DATABASE-URL}", "${DATABASE-URL}"),
            ("${A:-postgresql://u:secret@h/db}", "${...}"),
            ("postgresql://${USER}@${2HOST}/db", "${2HOST}"),
        ],
    )
    def test_invalid_reference(self, url: str, reference: str) -> None:
        """A reference must be `${NAME}`, NAME being letters, digits and '_', not starting with a digit."""
        assert (
            f"schedules.yaml:1:8: store: invalid variable reference {reference!r}: "
            "write ${NAME}, with letters, digits and '_', not starting with a digit"
        ) == top_error(f"store: {url}")

    def test_error_names_its_line(self) -> None:
        """A bad store further down the file is reported at its own line and column."""
        expected = "schedules.yaml:4:10: store: unclosed '${'; write ${NAME}"

        assert [expected] == problems("""
            timezone: UTC

            store:   ${DATABASE_URL
            tasks: {}
        """)

    def test_misspelt_key(self) -> None:
        """A near miss of `store` at the top level gets a did-you-mean."""
        assert "schedules.yaml:1:1: unknown key 'stor' (did you mean 'store'?)" == top_error("stor: x")

    def test_not_a_task_key(self) -> None:
        """`store` in a task or in defaults is pointed back at the top level."""
        hint = "unknown key 'store' ('store' is a top-level setting, not a task's)"

        assert f"schedules.yaml:5:5: task 'a': {hint}" == task_error("store: sqlite:///a.db")
        assert [f"schedules.yaml:3:3: defaults: {hint}"] == problems("""
            defaults:
              store: sqlite:///a.db
            tasks: {}
        """)


class TestKeepRuns:
    def test_default(self) -> None:
        """Without `keep_runs`, the store keeps DEFAULT_KEEP_RUNS runs per task."""
        assert 200 == DEFAULT_KEEP_RUNS
        assert DEFAULT_KEEP_RUNS == parse("tasks: {}\n").keep_runs

    @pytest.mark.parametrize(
        ("value", "runs"), [("1", 1), ("50", 50), ("1000000", 1_000_000), ("1_000", 1000)]
    )
    def test_accepted(self, value: str, runs: int) -> None:
        """A whole number from 1 to 1,000,000 is kept."""
        assert runs == parse(f"keep_runs: {value}\ntasks: {{}}\n").keep_runs

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            ("0", "the number 0"),
            ("-1", "the number -1"),
            ("1000001", "the number 1000001"),
            ("yes", "the boolean true"),
            ("true", "the boolean true"),
            ('"10"', "'10' (write it without quotes)"),
            ("ten", "'ten'"),
            ("10.5", "the number 10.5"),
            ("200.0", "the number 200.0"),
            ("null", "null"),
            ("[10]", "a list"),
        ],
    )
    def test_rejected(self, value: str, shown: str) -> None:
        """Anything but a whole number in range is an error naming the line, the key and the value."""
        assert f"schedules.yaml:1:12: keep_runs: {KEEP_RUNS_FORM}, got {shown}" == top_error(
            f"keep_runs: {value}"
        )

    @pytest.mark.parametrize(("value", "number"), [("010", 8), ("0x10", 16), ("0b11", 3), ("1:30", 90)])
    def test_yaml_11_integers(self, value: str, number: int) -> None:
        """Octal, hex, binary and base-60 spellings are explained rather than silently read."""
        assert (
            f"schedules.yaml:1:12: keep_runs: {KEEP_RUNS_FORM}, got {value}, which YAML 1.1 reads as the "
            f"number {number}; write it in decimal digits"
        ) == top_error(f"keep_runs: {value}")

    def test_empty_value(self) -> None:
        """`keep_runs:` with nothing after it says the value is empty."""
        assert (
            f"schedules.yaml:1:11: keep_runs: {KEEP_RUNS_FORM}, got nothing (the value is empty)"
            == top_error("keep_runs:")
        )

    def test_misspelt_key(self) -> None:
        """A near miss of `keep_runs` at the top level gets a did-you-mean."""
        assert "schedules.yaml:1:1: unknown key 'keep_run' (did you mean 'keep_runs'?)" == top_error(
            "keep_run: 5"
        )

    def test_not_a_task_key(self) -> None:
        """`keep_runs` is for the whole store: in a task it is pointed back at the top level."""
        assert (
            "schedules.yaml:5:5: task 'a': unknown key 'keep_runs' ('keep_runs' is a top-level setting, "
            "not a task's)"
        ) == task_error("keep_runs: 5")


STORE_TASK_KEYS = ("catch_up", "require_store", "store_output")


class TestStoreTaskKeys:
    def test_defaults(self) -> None:
        """A task without the keys gets catch_up false, require_store false, store_output true."""
        task = one_task("")

        assert (False, False, True) == (task.catch_up, task.require_store, task.store_output)

    def test_set_in_task(self) -> None:
        """Each key lands in its TaskSpec field."""
        task = one_task("catch_up: true\nrequire_store: true\nstore_output: false")

        assert (True, True, False) == (task.catch_up, task.require_store, task.store_output)

    def test_defaults_apply_and_task_overrides(self) -> None:
        """Values under `defaults` apply to every task; a task's own value wins."""
        config = parse("""
            defaults:
              catch_up: true
              require_store: true
              store_output: false
            tasks:
              a: {schedule: "0 9 * * *", command: run}
              b: {schedule: "0 9 * * *", command: run, catch_up: false, store_output: true}
        """)
        a, b = config.tasks["a"], config.tasks["b"]

        assert (True, True, False) == (a.catch_up, a.require_store, a.store_output)
        assert (False, True, True) == (b.catch_up, b.require_store, b.store_output)

    def test_no_store_is_not_an_error(self) -> None:
        """catch_up and require_store without a top-level store parse: the store may come from the CLI."""
        config = parse("""
            tasks:
              a: {schedule: "0 9 * * *", command: run, catch_up: true, require_store: true}
        """)

        assert None is config.store
        assert (True, True) == (config.tasks["a"].catch_up, config.tasks["a"].require_store)

    def test_changed_setting_not_equal(self) -> None:
        """Changing one of the keys makes the specs differ, so a reload touches the task."""
        for key in STORE_TASK_KEYS:
            assert one_task(f"{key}: true") != one_task(f"{key}: false"), key

    @pytest.mark.parametrize("key", STORE_TASK_KEYS)
    @pytest.mark.parametrize(
        ("value", "shown"),
        [("maybe", "'maybe'"), ("1", "the number 1"), ("null", "null"), ('"no"', "'no'"), ("[x]", "a list")],
    )
    def test_rejected(self, key: str, value: str, shown: str) -> None:
        """Anything but a boolean is an error naming the line, the task, the key and the value."""
        assert f"schedules.yaml:5:{len(key) + 7}: task 'a': {key}: expected true or false, got {shown}" == (
            task_error(f"{key}: {value}")
        )

    @pytest.mark.parametrize("key", STORE_TASK_KEYS)
    def test_bad_default_reported_once(self, key: str) -> None:
        """A bad value under defaults is one problem, under defaults, not one per task."""
        task = '{schedule: "0 9 * * *", command: run}'
        found = problems(f"defaults: {{{key}: x}}\ntasks:\n  a: {task}\n  b: {task}\n")

        assert [
            f"schedules.yaml:1:{len(key) + 14}: defaults: {key}: expected true or false, got 'x'"
        ] == found

    def test_misspelt_key(self) -> None:
        """A near miss gets a did-you-mean, in a task and in defaults."""
        assert "task 'a': unknown key 'catchup' (did you mean 'catch_up'?)" in task_error("catchup: true")
        assert [
            "schedules.yaml:1:12: defaults: unknown key 'store_outputs' (did you mean 'store_output'?)"
        ] == problems("defaults: {store_outputs: false}\ntasks: {}\n")

    def test_at_top_level(self) -> None:
        """A task key at the top level is pointed at a task or `defaults:`."""
        assert (
            "schedules.yaml:1:1: unknown key 'require_store' "
            "(a task setting: set it in a task, or under 'defaults:' for every task)"
        ) == top_error("require_store: true")


PING_URL_FORMS = "expected an http:// or https:// URL, or an environment variable reference like ${PING_URL}"


class TestPing:
    def test_defaults(self) -> None:
        """A task without the keys has no ping URL, bare pings and a 5 s ping timeout."""
        task = one_task("")

        assert 5.0 == DEFAULT_PING_TIMEOUT_S
        assert (None, False, DEFAULT_PING_TIMEOUT_S) == (
            task.ping_url,
            task.ping_exit_code,
            task.ping_timeout_s,
        )

    @pytest.mark.parametrize(
        "url",
        [
            "https://hc-ping.com/${HC_PING_KEY}/backup",
            "https://hc-ping.com/5f6b1c2e-8f0a-4c2b-9d3e-1a2b3c4d5e6f",
            "http://localhost:8000/ping/abc",
            "https://cronitor.link/p/${CRONITOR_KEY}/backup",
            "${PING_URL}",
            "${PING_BASE}/backup",
            "${SCHEME}://hc-ping.com/x",
            "https://${HOST}/${KEY}",
        ],
    )
    def test_accepted(self, url: str) -> None:
        """An http(s) URL, or one whose scheme or whole text comes from a reference, is kept as written."""
        assert url == one_task(f"ping_url: {url}").ping_url

    def test_set_in_task(self) -> None:
        """Each key lands in its TaskSpec field."""
        task = one_task("ping_url: https://hc-ping.com/x\nping_exit_code: true\nping_timeout: 2s")

        assert ("https://hc-ping.com/x", True, 2.0) == (
            task.ping_url,
            task.ping_exit_code,
            task.ping_timeout_s,
        )

    def test_defaults_apply_and_task_overrides(self) -> None:
        """Values under `defaults` apply to every task; a task's own value wins."""
        config = parse("""
            defaults:
              ping_url: https://hc-ping.com/${HC_PING_KEY}/shared
              ping_exit_code: true
              ping_timeout: 10s
            tasks:
              a: {schedule: "0 9 * * *", command: run}
              b: {schedule: "0 9 * * *", command: run, ping_url: "https://hc-ping.com/b", ping_timeout: 1m}
        """)
        a, b = config.tasks["a"], config.tasks["b"]

        assert ("https://hc-ping.com/${HC_PING_KEY}/shared", True, 10.0) == (
            a.ping_url,
            a.ping_exit_code,
            a.ping_timeout_s,
        )
        assert ("https://hc-ping.com/b", True, 60.0) == (b.ping_url, b.ping_exit_code, b.ping_timeout_s)

    def test_exit_code_and_timeout_without_url(self) -> None:
        """ping_exit_code and ping_timeout without a ping_url parse: they may come from defaults."""
        task = one_task("ping_exit_code: true\nping_timeout: 3s")

        assert (None, True, 3.0) == (task.ping_url, task.ping_exit_code, task.ping_timeout_s)

    def test_environment_not_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A `${NAME}` reference stays raw even when the variable is set: the caller expands it."""
        monkeypatch.setenv("HC_PING_KEY", "secret")

        assert (
            "https://hc-ping.com/${HC_PING_KEY}/a"
            == one_task("ping_url: https://hc-ping.com/${HC_PING_KEY}/a").ping_url
        )

    def test_changed_setting_not_equal(self) -> None:
        """Changing a ping key makes the specs differ, so a reload touches the task."""
        assert one_task("ping_url: https://a.example") != one_task("ping_url: https://b.example")
        assert one_task("ping_exit_code: true") != one_task("ping_exit_code: false")
        assert one_task("ping_timeout: 1s") != one_task("ping_timeout: 2s")

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            ("5", "the number 5"),
            ("''", "an empty string"),
            ("'  '", "an empty string"),
            ("null", "null"),
            ("[https://a.example]", "a list"),
            ("{url: x}", "a mapping"),
            ("yes", "the boolean true: YAML 1.1 reads an unquoted yes as a boolean; quote it"),
        ],
    )
    def test_not_a_string(self, value: str, shown: str) -> None:
        """Anything but a non-empty string is an error naming the line, the task and the value."""
        assert f"schedules.yaml:5:15: task 'a': ping_url: {PING_URL_FORMS}, got {shown}" == task_error(
            f"ping_url: {value}"
        )

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("ftp://x", "'ftp://x'"),
            ("ftp://hc-ping.com/secret-key", "'ftp://hc-ping.com/…'"),
            ("hc-ping.com/abc", "'hc-ping.com/…'"),
            ("hc-ping.com/${KEY}", "'hc-ping.com/…'"),
            ("ftp://${HOST}/x", "'ftp://${HOST}/…'"),
            ("ftp://user:secret@h/x", "'ftp://user:***@h/…'"),
            ("mailto:a@b.example", "text that is not a URL (not shown: it may hold a password)"),
        ],
    )
    def test_bad_scheme(self, url: str, shown: str) -> None:
        """The text before any `${` must be, or begin, http:// or https://. The error shows the scheme and
        the host only: a ping URL's path is its check's key."""
        assert f"schedules.yaml:5:15: task 'a': ping_url: {PING_URL_FORMS}, got {shown}" == task_error(
            f"ping_url: {url}"
        )

    def test_dollar_without_braces(self) -> None:
        """`$PING_URL` is not a reference: the error suggests `${PING_URL}`."""
        assert (
            f"schedules.yaml:5:15: task 'a': ping_url: {PING_URL_FORMS}, got '$PING_URL' "
            "(did you mean '${PING_URL}'?)"
        ) == task_error("ping_url: $PING_URL")

    @pytest.mark.parametrize("url", ["https://hc-ping.com/${KEY", "${PING_URL", "https://h/${A}/${"])
    def test_unclosed_reference(self, url: str) -> None:
        """A `${` without its `}` is an error naming the line and the task, not the URL: it holds a key."""
        assert "schedules.yaml:5:15: task 'a': ping_url: unclosed '${'; write ${NAME}" == (
            task_error(f"ping_url: {url}")
        )

    @pytest.mark.parametrize(
        ("url", "reference"),
        [("https://hc-ping.com/${1KEY}", "${1KEY}"), ("${}", "${}"), ("https://h/${A:-x}", "${...}")],
    )
    def test_invalid_reference(self, url: str, reference: str) -> None:
        """A reference must be `${NAME}`, as in `store`."""
        assert (
            f"schedules.yaml:5:15: task 'a': ping_url: invalid variable reference {reference!r}: "
            "write ${NAME}, with letters, digits and '_', not starting with a digit"
        ) == task_error(f"ping_url: {url}")

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("0", "must be more than 0"),
            ("0s", "must be more than 0"),
            ("61s", "must be at most 60s, got '61s'"),
            ("61", "must be at most 60s, got the number 61"),
            ("2m", "must be at most 60s, got '2m'"),
            ("-1s", "must not be negative, got '-1s'"),
            ("soon", "expected a duration like 90s, 10m, 1h30m or a number of seconds, got 'soon'"),
        ],
    )
    def test_bad_ping_timeout(self, value: str, message: str) -> None:
        """ping_timeout is a duration above 0 and at most 60 s."""
        assert f"schedules.yaml:5:19: task 'a': ping_timeout: {message}" == task_error(
            f"ping_timeout: {value}"
        )

    def test_ping_timeout_of_a_minute(self) -> None:
        """Exactly 60 s is allowed."""
        assert 60.0 == one_task("ping_timeout: 1m").ping_timeout_s

    def test_bad_exit_code_flag(self) -> None:
        """ping_exit_code is a boolean."""
        assert "schedules.yaml:5:21: task 'a': ping_exit_code: expected true or false, got 'sometimes'" == (
            task_error("ping_exit_code: sometimes")
        )

    def test_bad_default_reported_once(self) -> None:
        """A bad ping_url under defaults is one problem, under defaults, not one per task."""
        task = '{schedule: "0 9 * * *", command: run}'

        assert [f"schedules.yaml:1:22: defaults: ping_url: {PING_URL_FORMS}, got 'ftp://x'"] == problems(
            f"defaults: {{ping_url: ftp://x}}\ntasks:\n  a: {task}\n  b: {task}\n"
        )

    @pytest.mark.parametrize(
        ("key", "guess"),
        [("pingurl", "ping_url"), ("healthcheck_url", "ping_url"), ("ping_timout", "ping_timeout")],
    )
    def test_misspelt_key(self, key: str, guess: str) -> None:
        """A near miss, or another tool's name for the key, gets a did-you-mean."""
        assert f"schedules.yaml:5:5: task 'a': unknown key {key!r} (did you mean {guess!r}?)" == task_error(
            f"{key}: x"
        )


def with_env(text: str, env: dict[str, str], *, store_overridden: bool = False) -> Config:
    """Parse dedented YAML as `run` does: ${NAME} references checked against `env`."""
    return parse_config(
        textwrap.dedent(text), "schedules.yaml", base_dir=BASE, env=env, store_overridden=store_overridden
    )


def env_problems(text: str, env: dict[str, str], *, store_overridden: bool = False) -> list[str]:
    """The problems that parsing dedented YAML against `env` reports."""
    with pytest.raises(ConfigError) as info:
        with_env(text, env, store_overridden=store_overridden)
    return info.value.problems


EVERYWHERE = """\
store: postgresql://app:${PG_PASSWORD}@db/app
defaults:
  env: {REGION: "${AWS_REGION}"}
  on_failure: curl -fsS -d "$SCHEDULER_TASK failed" ${SLACK_WEBHOOK}
tasks:
  backup:
    schedule: every weekday at 9am
    command: run
    ping_url: https://hc-ping.com/${HC_PING_KEY}/backup
    env:
      TOKEN: "s3cr3t-${API_TOKEN}"
    on_success: echo done ${DONE_MESSAGE}
  report:
    schedule: daily at 6pm
    command: run
"""


class TestEnvironmentReferences:
    def test_unset_variables_reported_with_their_lines(self) -> None:
        """With an environment, every unset ${NAME} is a problem at its line: store, ping_url, env values,
        a task's hook, and a hook from defaults once, naming the tasks that use it."""
        assert [
            "schedules.yaml:1:8: store: environment variable PG_PASSWORD is not set",
            "schedules.yaml:3:17: defaults: env: REGION: environment variable AWS_REGION is not set",
            "schedules.yaml:4:15: defaults: on_failure: environment variable SLACK_WEBHOOK is not set "
            "(for tasks 'backup' and 'report')",
            "schedules.yaml:9:15: task 'backup': ping_url: environment variable HC_PING_KEY is not set",
            "schedules.yaml:11:14: task 'backup': env: TOKEN: environment variable API_TOKEN is not set",
            "schedules.yaml:12:17: task 'backup': on_success: environment variable DONE_MESSAGE is not set",
        ] == env_problems(EVERYWHERE, {})

    def test_empty_is_not_set(self) -> None:
        """An empty variable is reported too: a task must not run with an empty value in its place."""
        found = env_problems(EVERYWHERE, {"HC_PING_KEY": "", "API_TOKEN": ""})
        assert (
            "schedules.yaml:9:15: task 'backup': ping_url: environment variable HC_PING_KEY is empty" in found
        )
        assert (
            "schedules.yaml:11:14: task 'backup': env: TOKEN: environment variable API_TOKEN is empty"
            in found
        )

    def test_values_never_shown(self) -> None:
        """A problem names the variable, never the text around it or the environment's values."""
        env = {"AWS_REGION": "hunter2-region"}
        for problem in env_problems(EVERYWHERE, env):
            assert "s3cr3t" not in problem
            assert "hunter2" not in problem
            assert "app:" not in problem

    def test_all_set(self) -> None:
        """With every variable set, env values are filled in; store and ping_url stay as written, for the
        edges to fill in, and hooks are the shell's."""
        env = {
            **dict.fromkeys(["PG_PASSWORD", "SLACK_WEBHOOK", "HC_PING_KEY", "DONE_MESSAGE"], "x"),
            **{"AWS_REGION": "eu-west-1", "API_TOKEN": "abc"},
        }
        config = with_env(EVERYWHERE, env)
        backup = config.tasks["backup"]

        assert {"REGION": "eu-west-1", "TOKEN": "s3cr3t-abc"} == dict(backup.env)
        assert "postgresql://app:${PG_PASSWORD}@db/app" == config.store
        assert "https://hc-ping.com/${HC_PING_KEY}/backup" == backup.ping_url
        assert "echo done ${DONE_MESSAGE}" == backup.on_success

    def test_literal_dollar_brace_in_env_value(self) -> None:
        """$${ in an env value is a literal ${, and is not checked."""
        task = with_env(
            'tasks:\n  a:\n    schedule: "@daily"\n    command: run\n'
            '    env: {T: "$${NOT_SET} in ${HOME}"}\n',
            {"HOME": "/home/app"},
        ).tasks["a"]
        assert {"T": "${NOT_SET} in /home/app"} == dict(task.env)

    def test_invalid_reference_in_env_value(self) -> None:
        """A ${ that opens no ${NAME} in an env value is an error, with the way to write a literal ${."""
        assert (
            "schedules.yaml:6:10: task 'a': env: T: invalid variable reference '${1X}': write ${NAME}, with "
            "letters, digits and '_', not starting with a digit (or $${ for a literal ${)"
        ) == task_error('env:\n  T: "${1X}"')
        assert "'${...}'" in task_error('env:\n  T: "${A:-secret}"')

    def test_without_an_environment(self) -> None:
        """Without an environment (list, next), references are checked for form only and kept as written."""
        config = parse(EVERYWHERE)
        assert {"REGION": "${AWS_REGION}", "TOKEN": "s3cr3t-${API_TOKEN}"} == dict(config.tasks["backup"].env)

    def test_store_overridden(self) -> None:
        """When the command line names the store, the file's store is not checked."""
        found = env_problems(EVERYWHERE, {}, store_overridden=True)
        assert not [problem for problem in found if "store" in problem]
        assert 5 == len(found)

    @pytest.mark.parametrize(
        "hook",
        [
            "echo ${TASK_SETTING} ${DEFAULT_SETTING}",
            "echo ${SCHEDULER_TASK} ${SCHEDULER_RUN_ID} ${SCHEDULER_STATUS} ${SCHEDULER_EXIT_CODE}",
            "echo ${SCHEDULER_DURATION_S} ${SCHEDULER_OUTPUT_FILE} ${SCHEDULER_TRIGGER}",
            "echo ${SCHEDULER_SCHEDULED_FOR} ${PWD} ${PPID} ${RANDOM}",
            "for f in a b; do echo ${f}; done",
            "read -r first rest < $SCHEDULER_OUTPUT_FILE; echo ${first} ${rest}",
            "msg=$(date); echo ${msg}",
            "echo $NOT_CHECKED_WITHOUT_BRACES ${WITH_DEFAULT:-x}",
        ],
    )
    def test_hook_names_that_need_no_environment(self, hook: str) -> None:
        """A hook's ${NAME} is fine when the task's env, the hook's own variables or the shell sets it; and
        $NAME without braces, or with a default, is left to the shell."""
        text = (
            "defaults:\n  env: {DEFAULT_SETTING: x}\ntasks:\n  a:\n    schedule: '@daily'\n    command: run\n"
            f"    env: {{TASK_SETTING: y}}\n    on_failure: {hook!r}\n"
        )
        assert "run" == with_env(text, {}).tasks["a"].command

    def test_list_hook_not_checked(self) -> None:
        """A hook written as a list runs without a shell, so its ${NAME} is passed as written, unchecked."""
        task = with_env(
            "tasks:\n  a:\n    schedule: '@daily'\n    command: run\n    on_failure: [notify, '${X}']\n", {}
        ).tasks["a"]
        assert ("notify", "${X}") == task.on_failure

    def test_hook_from_defaults_overridden(self) -> None:
        """A task that sets its own hook does not inherit the defaults' unset variable."""
        text = EVERYWHERE.replace("    on_success:", "    on_failure: 'true'\n    on_success:")
        found = env_problems(text, {})
        assert (
            "schedules.yaml:4:15: defaults: on_failure: environment variable SLACK_WEBHOOK is not set "
            "(for task 'report')"
        ) in found

    def test_many_tasks_share_one_problem(self) -> None:
        """A hook from defaults that many tasks lack is one problem, listing a few of them."""
        tasks = "".join(f"  t{i}:\n    schedule: '@daily'\n    command: run\n" for i in range(6))
        found = env_problems(f"defaults:\n  on_success: echo ${{NOPE}}\ntasks:\n{tasks}", {})
        assert [
            "schedules.yaml:2:15: defaults: on_success: environment variable NOPE is not set "
            "(for tasks 't0', 't1', 't2' and 3 more)"
        ] == found

    def test_hook_variables_are_the_hooks(self) -> None:
        """The SCHEDULER_* names a hook may use are those hooks.py and the runner give it."""
        from scheduler import hooks
        from scheduler.runner import RunResult

        task = one_task("on_failure: 'true'")
        result = RunResult(status="failed", exit_code=1, signal=None, duration_s=1.0, error="")
        spec, path = hooks.prepare(task, "true", result, "")
        hooks.cleanup(path)
        added = {name for name in spec.env if name.startswith("SCHEDULER_")}
        runs = {"SCHEDULER_TASK", "SCHEDULER_RUN_ID", "SCHEDULER_SCHEDULED_FOR", "SCHEDULER_TRIGGER"}
        assert added | runs == config_module._HOOK_VARIABLES


class TestHooks:
    def test_defaults(self) -> None:
        """A task without the keys has no hooks and a 60 s hook timeout."""
        task = one_task("")

        assert 60.0 == DEFAULT_HOOK_TIMEOUT_S
        assert (None, None, DEFAULT_HOOK_TIMEOUT_S) == (task.on_failure, task.on_success, task.hook_timeout_s)

    def test_string_and_list(self) -> None:
        """A hook is a shell string (stripped) or an argument list with numbers as written, like `command`."""
        task = one_task(
            'on_failure: |\n  echo "failed: $SCHEDULER_STATUS" >&2\non_success: [notify, --code, 0755]\n'
            "hook_timeout: 2m"
        )

        assert 'echo "failed: $SCHEDULER_STATUS" >&2' == task.on_failure
        assert ("notify", "--code", "0755") == task.on_success
        assert 120.0 == task.hook_timeout_s

    def test_defaults_apply_and_task_overrides(self) -> None:
        """Values under `defaults` apply to every task; a task's own value wins."""
        config = parse("""
            defaults:
              on_failure: [alert, --task, "$SCHEDULER_TASK"]
              hook_timeout: 30s
            tasks:
              a: {schedule: "0 9 * * *", command: run}
              b: {schedule: "0 9 * * *", command: run, on_failure: echo b, on_success: echo ok,
                  hook_timeout: 5s}
        """)
        a, b = config.tasks["a"], config.tasks["b"]

        assert (("alert", "--task", "$SCHEDULER_TASK"), None, 30.0) == (
            a.on_failure,
            a.on_success,
            a.hook_timeout_s,
        )
        assert ("echo b", "echo ok", 5.0) == (b.on_failure, b.on_success, b.hook_timeout_s)

    def test_changed_setting_not_equal(self) -> None:
        """Changing a hook makes the specs differ, so a reload touches the task."""
        assert one_task("on_failure: echo a") != one_task("on_failure: echo b")
        assert one_task("on_success: [a]") != one_task("on_success: a")
        assert one_task("hook_timeout: 1s") != one_task("hook_timeout: 2s")

    @pytest.mark.parametrize("key", ["on_failure", "on_success"])
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (
                "{a: b}",
                "expected a string (run through the shell) or a list of arguments (run directly), "
                "got a mapping",
            ),
            ("[]", "the list is empty; give the program, then its arguments"),
            ("''", "the command is empty"),
            (
                "5",
                "expected a string (run through the shell) or a list of arguments (run directly), "
                "got the number 5",
            ),
            (
                "null",
                "expected a string (run through the shell) or a list of arguments (run directly), got null",
            ),
        ],
    )
    def test_rejected(self, key: str, value: str, message: str) -> None:
        """A bad hook is an error naming the line, the task, the key and the value, as for `command`."""
        assert f"schedules.yaml:5:{len(key) + 7}: task 'a': {key}: {message}" == task_error(f"{key}: {value}")

    @pytest.mark.parametrize(
        ("value", "message", "column"),
        [
            ("['', x]", "on_failure[0]: the program name is empty", 18),
            ("[ls, null]", "on_failure[1]: expected a string or a number, got null", 22),
        ],
    )
    def test_bad_argument(self, value: str, message: str, column: int) -> None:
        """A bad list item is reported at the item, with its index."""
        assert f"schedules.yaml:5:{column}: task 'a': {message}" == task_error(f"on_failure: {value}")

    @pytest.mark.parametrize(
        ("value", "message"),
        [("0", "must be more than 0"), ("-1s", "must not be negative, got '-1s'")],
    )
    def test_bad_hook_timeout(self, value: str, message: str) -> None:
        """hook_timeout is a duration above 0."""
        assert f"schedules.yaml:5:19: task 'a': hook_timeout: {message}" == task_error(
            f"hook_timeout: {value}"
        )

    @pytest.mark.parametrize(("key", "guess"), [("on_error", "on_failure"), ("on_succes", "on_success")])
    def test_misspelt_key(self, key: str, guess: str) -> None:
        """A near miss, or another tool's name for the key, gets a did-you-mean, in a task and in defaults."""
        assert f"schedules.yaml:5:5: task 'a': unknown key {key!r} (did you mean {guess!r}?)" == task_error(
            f"{key}: x"
        )
        assert [f"schedules.yaml:1:12: defaults: unknown key {key!r} (did you mean {guess!r}?)"] == problems(
            f"defaults: {{{key}: x}}\ntasks: {{}}\n"
        )


RETRIES_FORM = "expected a whole number of retries after a failed run, from 0 to 100"
BACKOFF_FORM = "expected a number from 1 to 100 to multiply the delay by after each retry (1: the same delay)"


class TestRetries:
    def test_defaults(self) -> None:
        """A task without the keys is not retried; the delays default to 30 s, doubling, at most 10 min."""
        task = one_task("")

        assert (0, 30.0, 2.0, 600.0) == (
            DEFAULT_RETRIES,
            DEFAULT_RETRY_DELAY_S,
            DEFAULT_RETRY_BACKOFF,
            DEFAULT_RETRY_MAX_DELAY_S,
        )
        assert (0, 30.0, 2.0, 600.0) == (
            task.retries,
            task.retry_delay_s,
            task.retry_backoff,
            task.retry_max_delay_s,
        )

    def test_set_in_task(self) -> None:
        """Each key lands in its TaskSpec field."""
        task = one_task("retries: 3\nretry_delay: 1m\nretry_backoff: 1.5\nretry_max_delay: 1h")

        assert (3, 60.0, 1.5, 3600.0) == (
            task.retries,
            task.retry_delay_s,
            task.retry_backoff,
            task.retry_max_delay_s,
        )

    @pytest.mark.parametrize(("value", "retries"), [("0", 0), ("1", 1), ("100", 100)])
    def test_retries_accepted(self, value: str, retries: int) -> None:
        """retries is a whole number from 0 to 100."""
        assert retries == one_task(f"retries: {value}").retries

    def test_zero_delay(self) -> None:
        """retry_delay 0 retries at once."""
        assert 0.0 == one_task("retries: 1\nretry_delay: 0").retry_delay_s

    @pytest.mark.parametrize(("value", "factor"), [("1", 1.0), ("1.5", 1.5), ("3", 3.0), ("100", 100.0)])
    def test_backoff_accepted(self, value: str, factor: float) -> None:
        """retry_backoff is an int or a float from 1 to 100, kept as a float."""
        backoff = one_task(f"retry_backoff: {value}").retry_backoff

        assert factor == backoff
        assert float is type(backoff)

    def test_defaults_apply_and_task_overrides(self) -> None:
        """Values under `defaults` apply to every task; a task's own value wins."""
        config = parse("""
            defaults:
              retries: 2
              retry_delay: 10s
              retry_backoff: 3
              retry_max_delay: 5m
            tasks:
              a: {schedule: "0 9 * * *", command: run}
              b: {schedule: "0 9 * * *", command: run, retries: 0, retry_backoff: 1}
        """)
        a, b = config.tasks["a"], config.tasks["b"]

        assert (2, 10.0, 3.0, 300.0) == (a.retries, a.retry_delay_s, a.retry_backoff, a.retry_max_delay_s)
        assert (0, 10.0, 1.0, 300.0) == (b.retries, b.retry_delay_s, b.retry_backoff, b.retry_max_delay_s)

    def test_changed_setting_not_equal(self) -> None:
        """Changing a retry key makes the specs differ, so a reload touches the task."""
        for first, second in (
            ("retries: 1", "retries: 2"),
            ("retry_delay: 1s", "retry_delay: 2s"),
            ("retry_backoff: 1", "retry_backoff: 2"),
            ("retry_max_delay: 1h", "retry_max_delay: 2h"),
        ):
            assert one_task(first) != one_task(second), first

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            ("-1", "the number -1"),
            ("101", "the number 101"),
            ("1.5", "the number 1.5"),
            ("true", "the boolean true"),
            ('"3"', "'3' (write it without quotes)"),
            ("three", "'three'"),
            ("null", "null"),
            ("[3]", "a list"),
        ],
    )
    def test_retries_rejected(self, value: str, shown: str) -> None:
        """Anything but a whole number from 0 to 100 is an error naming the line, the task and the value."""
        assert f"schedules.yaml:5:14: task 'a': retries: {RETRIES_FORM}, got {shown}" == task_error(
            f"retries: {value}"
        )

    @pytest.mark.parametrize(("value", "number"), [("010", 8), ("0x3", 3), ("1:30", 90)])
    def test_retries_yaml_11_integers(self, value: str, number: int) -> None:
        """Octal, hex and base-60 spellings are explained rather than silently read, as for keep_runs."""
        assert (
            f"schedules.yaml:5:14: task 'a': retries: {RETRIES_FORM}, got {value}, which YAML 1.1 reads as "
            f"the number {number}; write it in decimal digits"
        ) == task_error(f"retries: {value}")

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            ("0.5", "the number 0.5"),
            ("0", "the number 0"),
            ("101", "the number 101"),
            ('"2"', "'2' (write it without quotes)"),
            ("'1.5'", "'1.5' (write it without quotes)"),
            ("true", "the boolean true"),
            ("double", "'double'"),
            ("null", "null"),
            (".nan", "the number nan"),
        ],
    )
    def test_backoff_rejected(self, value: str, shown: str) -> None:
        """Anything but a number from 1 to 100 is an error naming the line, the task and the value."""
        assert f"schedules.yaml:5:20: task 'a': retry_backoff: {BACKOFF_FORM}, got {shown}" == task_error(
            f"retry_backoff: {value}"
        )

    @pytest.mark.parametrize(
        ("setting", "message"),
        [
            ("retry_delay: -1s", "5:18: task 'a': retry_delay: must not be negative, got '-1s'"),
            (
                "retry_delay: soon",
                "5:18: task 'a': retry_delay: expected a duration like 90s, 10m, 1h30m or a number of "
                "seconds, got 'soon'",
            ),
            ("retry_max_delay: 0", "5:22: task 'a': retry_max_delay: must be more than 0"),
            (
                "retry_max_delay: -5",
                "5:22: task 'a': retry_max_delay: must not be negative, got the number -5",
            ),
        ],
    )
    def test_bad_delay(self, setting: str, message: str) -> None:
        """retry_delay is a duration of 0 or more; retry_max_delay one above 0."""
        assert f"schedules.yaml:{message}" == task_error(setting)

    def test_max_delay_shorter_than_delay(self) -> None:
        """A task that retries with retry_max_delay below retry_delay is an error at its retry_max_delay."""
        assert "schedules.yaml:6:22: task 'a': retry_max_delay (5s) is shorter than retry_delay (30s)" == (
            task_error("retries: 2\nretry_max_delay: 5s")
        )

    def test_delay_longer_than_default_max(self) -> None:
        """A retry_delay above the default retry_max_delay is reported at the retry_delay."""
        assert "schedules.yaml:6:18: task 'a': retry_max_delay (10m) is shorter than retry_delay (15m)" == (
            task_error("retries: 1\nretry_delay: 15m")
        )

    def test_equal_delays(self) -> None:
        """retry_max_delay equal to retry_delay is fine: every retry waits the same."""
        task = one_task("retries: 1\nretry_delay: 1m\nretry_max_delay: 60s")

        assert (60.0, 60.0) == (task.retry_delay_s, task.retry_max_delay_s)

    def test_delays_unchecked_without_retries(self) -> None:
        """Without retries the two delays are unused, so their order is not checked."""
        task = one_task("retry_delay: 1h\nretry_max_delay: 5s")

        assert (0, 3600.0, 5.0) == (task.retries, task.retry_delay_s, task.retry_max_delay_s)

    def test_delays_from_defaults(self) -> None:
        """Once defaults apply, each task that retries is checked: at its own retry setting, else its name."""
        assert [
            "schedules.yaml:7:3: task 'b': retry_max_delay (5s) is shorter than retry_delay (30s)",
            "schedules.yaml:8:53: task 'c': retry_max_delay (5s) is shorter than retry_delay (30s)",
            "schedules.yaml:9:61: task 'd': retry_max_delay (1s) is shorter than retry_delay (30s)",
        ] == problems("""
            defaults:
              retries: 1
              retry_max_delay: 5s
            tasks:
              a: {schedule: "0 9 * * *", command: run, retries: 0}
              b: {schedule: "0 9 * * *", command: run}
              c: {schedule: "0 9 * * *", command: run, retries: 3}
              d: {schedule: "0 9 * * *", command: run, retry_max_delay: 1s}
        """)

    def test_bad_delay_reported_once(self) -> None:
        """An invalid retry_delay is its own problem only, not also an order problem."""
        assert "schedules.yaml:6:18: task 'a': retry_delay: must not be negative, got '-1m'" == task_error(
            "retries: 2\nretry_delay: -1m\nretry_max_delay: 5s"
        )

    @pytest.mark.parametrize(
        ("key", "guess"),
        [
            ("retry", "retries"),
            ("retry_count", "retries"),
            ("backoff", "retry_backoff"),
            ("max_delay", "retry_max_delay"),
        ],
    )
    def test_misspelt_key(self, key: str, guess: str) -> None:
        """A near miss, or another tool's name for the key, gets a did-you-mean."""
        assert f"schedules.yaml:5:5: task 'a': unknown key {key!r} (did you mean {guess!r}?)" == task_error(
            f"{key}: 1"
        )

    @pytest.mark.parametrize("key", ["retries", "retry_delay", "ping_url", "on_failure", "hook_timeout"])
    def test_at_top_level(self, key: str) -> None:
        """A new task key at the top level is pointed at a task or `defaults:`."""
        assert (
            f"schedules.yaml:1:1: unknown key {key!r} "
            "(a task setting: set it in a task, or under 'defaults:' for every task)"
        ) == top_error(f"{key}: 1")


class TestPickling:
    def test_round_trip_keeps_store_settings(self) -> None:
        """A pickled Config keeps store, store_line, keep_runs and each task's store keys."""
        config = parse("""
            store: postgresql://u:${PGPASS}@h/db
            keep_runs: 25
            defaults: {catch_up: true}
            tasks:
              a: {schedule: "0 9 * * *", command: run, require_store: true, store_output: false}
        """)

        copy = pickle.loads(pickle.dumps(config))

        assert config == copy
        assert ("postgresql://u:${PGPASS}@h/db", 2, 25) == (copy.store, copy.store_line, copy.keep_runs)
        task = copy.tasks["a"]
        assert (True, True, False, 6) == (task.catch_up, task.require_store, task.store_output, task.line)

    def test_round_trip_keeps_ping_hook_and_retry_settings(self) -> None:
        """A pickled Config keeps each task's ping, hook and retry keys, from the task and from defaults."""
        config = parse("""
            defaults: {ping_url: "https://hc-ping.com/${HC_PING_KEY}/x", retries: 2, hook_timeout: 90s}
            tasks:
              a:
                schedule: "0 9 * * *"
                command: run
                ping_exit_code: true
                ping_timeout: 7s
                on_failure: [alert, a]
                on_success: echo ok
                retry_delay: 1m
                retry_backoff: 1.5
                retry_max_delay: 2h
        """)

        copy = pickle.loads(pickle.dumps(config))

        assert config == copy
        task = copy.tasks["a"]
        assert ("https://hc-ping.com/${HC_PING_KEY}/x", True, 7.0) == (
            task.ping_url,
            task.ping_exit_code,
            task.ping_timeout_s,
        )
        assert (("alert", "a"), "echo ok", 90.0) == (task.on_failure, task.on_success, task.hook_timeout_s)
        assert (2, 60.0, 1.5, 7200.0) == (
            task.retries,
            task.retry_delay_s,
            task.retry_backoff,
            task.retry_max_delay_s,
        )
        assert 4 == task.line


DURATION_KEYS = (
    "timeout",
    "grace",
    "jitter",
    "kill_grace",
    "ping_timeout",
    "hook_timeout",
    "retry_delay",
    "retry_max_delay",
)
NUMBER_KEYS = ("retries", "retry_backoff")
# Spellings YAML 1.1 reads as numbers that are not the decimal the user probably meant.
MISREAD_NUMBERS = [("010", 8), ("0_10", 8), ("0x10", 16), ("0b10", 2), ("0x3", 3), ("0b11", 3)]


class TestNumericForms:
    @pytest.mark.parametrize("key", DURATION_KEYS + NUMBER_KEYS)
    @pytest.mark.parametrize(("value", "number"), MISREAD_NUMBERS)
    def test_octal_hex_binary_are_errors(self, key: str, value: str, number: int) -> None:
        """No numeric setting silently reads 010 as 8, 0x10 as 16 or 0b10 as 2: the error says how YAML 1.1
        read it and asks for decimal digits."""
        error = task_error(f"{key}: {value}")
        assert error.startswith(f"schedules.yaml:5:{len(key) + 7}: task 'a': {key}: expected "), error
        assert error.endswith(
            f", got {value}, which YAML 1.1 reads as the number {number}; write it in decimal digits"
        ), error

    @pytest.mark.parametrize("key", DURATION_KEYS + NUMBER_KEYS)
    @pytest.mark.parametrize("value", ["1:30", "1:30.5", "-1:30"])
    def test_sexagesimal_is_an_error(self, key: str, value: str) -> None:
        """Base-60 (1:30 is 90 in YAML 1.1) is an error for every numeric setting."""
        error = task_error(f"{key}: {value}")
        assert f"task 'a': {key}: expected " in error
        assert "base-60" in error or "decimal digits" in error, error

    @pytest.mark.parametrize("key", DURATION_KEYS + NUMBER_KEYS)
    @pytest.mark.parametrize("value", ["0o10", "0O10", "1e3", "0x1p3", "0b"])
    def test_other_radix_text_is_an_error(self, key: str, value: str) -> None:
        """YAML 1.2's 0o10 and other number-like text is not a number, and is reported as the text."""
        assert f"task 'a': {key}: expected " in task_error(f"{key}: {value}")

    @pytest.mark.parametrize(("value", "number"), MISREAD_NUMBERS)
    def test_in_defaults(self, value: str, number: int) -> None:
        """A default is checked the same way."""
        assert [
            "schedules.yaml:3:12: defaults: timeout: expected a duration like 90s, 10m, 1h30m or a number "
            f"of seconds, got {value}, which YAML 1.1 reads as the number {number}; write it in decimal "
            "digits"
        ] == problems(f"""
            defaults:
              timeout: {value}
            tasks: {{}}
        """)

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("10", 10.0),
            ("+10", 10.0),
            ("0", 0.0),
            ("1_000", 1000.0),
            ("010.5", 10.5),
            ("0.5", 0.5),
            ("'010'", 10.0),
        ],
    )
    def test_decimal_forms_still_read(self, value: str, seconds: float) -> None:
        """Decimal digits, with a fraction or `_` separators, and quoted digits, read as written."""
        assert seconds == one_task(f"grace: {value}").grace_s


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail with TimeoutError if the block takes longer than `seconds` (a runaway parse, not a hang)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"took longer than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def merge_bomb(levels: int) -> str:
    """Each task merges the one before twice: 2**levels expansions if each merge is expanded every time."""
    lines = ["tasks:", '  t0: &t0 {schedule: "@daily", command: run}']
    lines += [f"  t{i}: &t{i} {{<<: [*t{i - 1}, *t{i - 1}]}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


class TestExpansionLimits:
    def test_merge_bomb_loads_fast(self) -> None:
        """A 760-byte file whose merges double at each of 25 levels loads at once: each merge is expanded once
        (it took minutes when every reference expanded it again)."""
        text = merge_bomb(25)
        assert len(text) < 800
        with deadline(5.0):
            config = parse_config(text, "schedules.yaml", base_dir=BASE)
        assert 25 == len(config.tasks)
        assert "run" == config.tasks["t24"].command

    def test_too_many_nodes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A file that expands past the limit is one more problem, at the place where it crossed it, and
        the parse stops there."""
        monkeypatch.setattr(config_module, "MAX_CONFIG_NODES", 50)
        text = "tasks:\n" + "".join(
            f'  t{i}: {{schedule: "@daily", command: run, env: &e{i} {{A: "1", B: "2"}}}}\n'
            for i in range(20)
        )
        found = problems(text)
        assert [
            "schedules.yaml:7:47: the file expands to more than 50 mapping entries and list items, counting "
            "every use of an alias or a '<<' merge (the limit); use fewer of them"
        ] == found

    def test_aliased_mapping_counts_each_use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A mapping used through an alias in many tasks counts once per use, not once."""
        monkeypatch.setattr(config_module, "MAX_CONFIG_NODES", 1000)
        env = "{" + ", ".join(f"V{i}: x" for i in range(100)) + "}"
        text = f'tasks:\n  t0: {{schedule: "@daily", command: run, env: &e {env}}}\n' + "".join(
            f'  t{i}: {{schedule: "@daily", command: run, env: *e}}\n' for i in range(1, 20)
        )
        assert "the file expands to more than 1,000" in problems(text)[-1]

    def test_limit_fits_the_benchmark(self) -> None:
        """The 100,000-task benchmark file (a task, 2 settings, a 2-item command each) fits 4 times over."""
        assert 4 * 100_000 * 5 <= config_module.MAX_CONFIG_NODES


SECRET = "hunter2"


class TestSecretsNeverEchoed:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("mysql://user:hunter2@h/db", "'mysql://user:***@h/db'"),
            ("mysql://h/db?password=hunter2", "'mysql://h/db?***'"),
            ("user:hunter2@h/db", "text that is not a URL (not shown: it may hold a password)"),
        ],
    )
    def test_store_password(self, url: str, shown: str) -> None:
        """A store URL in an error has its password (and its query) replaced by ***."""
        error = top_error(f"store: {url}")
        assert f"schedules.yaml:1:8: store: {STORE_FORMS}, got {shown}" == error
        assert SECRET not in error

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://u:hunter2@h/${DB",
            "postgresql://u:hunter2@h/${1DB}",
            "${DB:-postgresql://u:hunter2@h/db}",
            "postgresql://u:hunter2\\0@h/db",
        ],
    )
    def test_store_reference_and_nul_errors(self, url: str) -> None:
        """Reference and NUL errors in a store URL do not show the URL."""
        assert SECRET not in top_error(f'store: "{url}"')

    @pytest.mark.parametrize(
        "url",
        ["ftp://hc-ping.com/hunter2", "https://hc-ping.com/hunter2/${K", "https://hc-ping.com/hunter2\\0"],
    )
    def test_ping_url_key(self, url: str) -> None:
        """A ping URL's path is its check's key: errors never show it."""
        assert SECRET not in task_error(f'ping_url: "{url}"')

    @pytest.mark.parametrize(
        "value",
        ['"hunter2\\0"', "2024-02-30", "2024-01-01"],
    )
    def test_env_values(self, value: str) -> None:
        """An env value's error says what is wrong, never the value."""
        error = task_error(f"env: {{TOKEN: {value}}}")
        assert error.startswith("schedules.yaml:5:18: task 'a': env: TOKEN: "), error
        for shown in ("hunter2", "2024"):
            assert shown not in error

    def test_command_argument(self) -> None:
        """A NUL in a command's argument is reported without the argument, which may be a password."""
        assert "schedules.yaml:5:26: task 'a': on_failure[1]: the argument contains a NUL character" == (
            task_error('on_failure: [notify, "hunter2\\0"]')
        )


class TestNamespace:
    def test_default(self) -> None:
        """No namespace is the empty string."""
        assert "" == parse("tasks: {}\n").namespace

    @pytest.mark.parametrize("name", ["billing", "app_2", "2fa", "a" * 40])
    def test_valid(self, name: str) -> None:
        """Lowercase letters, digits and '_', starting with a letter or digit, up to 40 characters."""
        assert name == parse(f"namespace: {name}\ntasks: {{}}\n").namespace

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            ("Billing", "'Billing'"),
            ("_app", "'_app'"),
            ("my-app", "'my-app'"),
            ("a" * 41, repr("a" * 41)),
            ("''", "an empty string"),
            ("5", "the number 5"),
            ("[a]", "a list"),
        ],
    )
    def test_invalid(self, value: str, shown: str) -> None:
        """Anything else is an error naming the line, the key and the value."""
        assert (
            "schedules.yaml:1:12: namespace: expected up to 40 lowercase letters, digits and '_', starting "
            f"with a letter or digit, like billing, got {shown}"
        ) == top_error(f"namespace: {value}")

    def test_compared_and_pickled(self) -> None:
        """The namespace takes part in equality and survives pickling."""
        config = parse("namespace: billing\ntasks: {}\n")
        assert config != parse("tasks: {}\n")
        assert "billing" == pickle.loads(pickle.dumps(config)).namespace

    def test_misspelt(self) -> None:
        """A near miss of `namespace` gets a did-you-mean."""
        assert "schedules.yaml:1:1: unknown key 'namespce' (did you mean 'namespace'?)" == top_error(
            "namespce: x"
        )


class TestFormatDuration:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0, "0s"),
            (0.5, "0.5s"),
            (45, "45s"),
            (90, "1m30s"),
            (90.5, "1m30.5s"),
            (3600, "1h"),
            (5400, "1h30m"),
            (86400, "1d"),
            (90061, "1d1h1m1s"),
            (600.0, "10m"),
        ],
    )
    def test_forms(self, seconds: float, text: str) -> None:
        """Largest units first, each at most once, a fraction kept in the seconds."""
        assert text == format_duration(seconds)

    @pytest.mark.parametrize("seconds", [0.25, 59.5, 61, 3599.5, 86399, 90061, 31_622_400])
    def test_round_trip(self, seconds: float) -> None:
        """parse_duration reads back what format_duration writes."""
        assert seconds == parse_duration(format_duration(seconds))


class TestExpandEnv:
    def test_fills_references(self) -> None:
        """Each ${NAME} is replaced by its variable; other text stays."""
        assert "postgresql://u:pw@h/db" == expand_env(
            "postgresql://u:${PW}@${H}/db", {"PW": "pw", "H": "h"}, "x"
        )

    @pytest.mark.parametrize("env", [{}, {"PW": ""}])
    def test_unset_or_empty(self, env: dict[str, str]) -> None:
        """An unset or empty variable is a ConfigError naming the place and the variable, not the text."""
        with pytest.raises(ConfigError) as info:
            expand_env("postgresql://u:${PW}@h/db", env, "schedules.yaml:4: store")
        assert ["schedules.yaml:4: store: environment variable PW is not set"] == info.value.problems

    def test_no_place(self) -> None:
        """Without a place, the message is the variable alone."""
        with pytest.raises(ConfigError, match=r"^environment variable KEY is not set$"):
            expand_env("https://hc-ping.com/${KEY}", {}, "")


class TestDigest:
    def test_digest_of_bytes(self) -> None:
        """Config.digest is the hex SHA-256 of the file's bytes, whether given as bytes or as text."""
        data = b'tasks:\n  a: {schedule: "0 9 * * *", command: run}\n'
        expected = hashlib.sha256(data).hexdigest()
        assert expected == parse_config(data, "schedules.yaml").digest
        assert expected == parse_config(data.decode(), "schedules.yaml").digest

    def test_digest_not_compared(self) -> None:
        """Two files that differ only in a comment give equal configs, with different digests."""
        one, two = parse("tasks: {}\n"), parse("# a comment\ntasks: {}\n")
        assert (True, False) == (one == two, one.digest == two.digest)

    def test_bytes_not_utf8(self) -> None:
        """Bytes that are not UTF-8 name the line, the column and the byte."""
        with pytest.raises(ConfigError, match=r"^schedules\.yaml:2:6: not UTF-8 text \(byte 0xe9\)"):
            parse_config("tasks: {}\n# caf\u00e9\n".encode("latin-1"), "schedules.yaml")


class TestParseDuration:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            (90, 90.0),
            (90.0, 90.0),
            (1.5, 1.5),
            (0, 0.0),
            ("90", 90.0),
            ("90s", 90.0),
            ("10m", 600.0),
            ("1h30m", 5400.0),
            ("1h 30m", 5400.0),
            ("2h", 7200.0),
            ("1d", 86400.0),
            ("500ms", 0.5),
            ("1m30s", 90.0),
            ("1.5h", 5400.0),
            (" 5 min ", 300.0),
            ("2 hours", 7200.0),
            ("10 seconds", 10.0),
            ("1H", 3600.0),
            ("0s", 0.0),
        ],
    )
    def test_accepted(self, value: object, seconds: float) -> None:
        """Accepted forms give their number of seconds."""
        assert seconds == parse_duration(value)

    @pytest.mark.parametrize(
        "value",
        [True, False, None, "", "soon", "10x", "m", "1h30", "30m1h", "1m1m", "1 h 30", "1,5h", [1], {"a": 1}],
    )
    def test_rejected(self, value: object) -> None:
        """Garbage, booleans and misordered units are rejected with the accepted forms."""
        with pytest.raises(
            ValueError, match=r"expected a duration like 90s, 10m, 1h30m or a number of seconds"
        ):
            parse_duration(value)

    @pytest.mark.parametrize("value", [-1, -0.5, "-5m", " -1"])
    def test_negative(self, value: object) -> None:
        """Negative durations are rejected as such."""
        with pytest.raises(ValueError, match=r"must not be negative"):
            parse_duration(value)

    @pytest.mark.parametrize("value", [float("inf"), float("nan"), 10**400, "367d", "9" * 400])
    def test_too_large(self, value: object) -> None:
        """Infinite, NaN and over-a-year durations are rejected."""
        with pytest.raises(ValueError, match=r"must be at most 366d|expected a duration"):
            parse_duration(value)


class TestSuggest:
    def test_close_match(self) -> None:
        """A near miss suggests the closest choice."""
        assert "command" == suggest("comand", ["schedule", "command", "cwd"])

    def test_case_only(self) -> None:
        """A choice differing only in case wins."""
        assert "Europe/London" == suggest("europe/london", ["Europe/Lisbon", "Europe/London"])

    def test_no_match(self) -> None:
        """Nothing close gives None."""
        assert None is suggest("xyzzy", ["schedule", "command"])

    def test_empty_choices(self) -> None:
        """No choices gives None."""
        assert None is suggest("anything", [])

    def test_accepts_any_iterable(self) -> None:
        """Choices may be a generator, e.g. over task names."""
        assert "send-digest" == suggest("send-digset", (name for name in ["import-feed", "send-digest"]))


class TestGarbage:
    def test_parsing_leaves_no_reference_cycles(self) -> None:
        """The clock freezes the loaded config without a collection first: a parse must create no cycles."""
        import gc

        text = "timezone: Europe/London\ntasks:\n" + "".join(
            f"  t{i}:\n    schedule: '*/5 * * * *'\n    command: [echo, '{i}']\n    env: {{A: '1'}}\n"
            for i in range(50)
        )
        gc.collect()
        gc.disable()
        try:
            parse_config(text, "schedules.yaml")
            assert 0 == gc.collect()
        finally:
            gc.enable()


ENQUEUE_HEAD = """\
brokers:
  redis: ${REDIS_URL}
  rabbit: amqp://guest:guest@127.0.0.1:5672//
tasks:
  a:
    schedule: "0 3 * * *"
"""


def enqueue_task(lines: str) -> TaskSpec:
    """Task 'a' of a file with a redis and a rabbit broker, its `enqueue` mapping given as YAML lines."""
    body = textwrap.indent(textwrap.dedent(lines), "      ")
    return parse(ENQUEUE_HEAD + "    enqueue:\n" + body).tasks["a"]


def enqueue_problems(lines: str) -> list[str]:
    body = textwrap.indent(textwrap.dedent(lines), "      ")
    return problems(ENQUEUE_HEAD + "    enqueue:\n" + body)


class TestEnqueue:
    def test_a_sidekiq_job_with_every_key(self) -> None:
        """The issue's example parses into an Enqueue naming the broker's URL as written."""
        task = enqueue_task("""
            to: sidekiq
            broker: redis
            job: ReportJob
            args: [42, "eu", {deep: [1, null]}]
            queue: critical
            retry: 5
            version: 8
            active_job: true
        """)
        assert () == task.command
        assert task.enqueue is not None
        assert ("sidekiq", "redis", "${REDIS_URL}", "ReportJob") == (
            task.enqueue.to,
            task.enqueue.broker,
            task.enqueue.url,
            task.enqueue.job,
        )
        assert (42, "eu", {"deep": [1, None]}) == task.enqueue.args
        assert ("critical", 5, 8, True) == (
            task.enqueue.queue,
            task.enqueue.retry,
            task.enqueue.version,
            task.enqueue.active_job,
        )
        assert 2 == task.enqueue.url_line

    def test_rq_and_celery_options(self) -> None:
        """Each backend's own options, durations in seconds; the queue defaults to the backend's own."""
        rq = enqueue_task("""
            {to: rq, broker: redis, job: app.jobs.report, kwargs: {a: 1}, job_timeout: 10m, result_ttl: 0,
             failure_ttl: 1d, ttl: 90}
        """).enqueue
        assert rq is not None
        assert ("default", {"a": 1}, 600, 0, 86400, 90) == (
            rq.queue_name,
            rq.kwargs,
            rq.job_timeout_s,
            rq.result_ttl_s,
            rq.failure_ttl_s,
            rq.ttl_s,
        )
        celery = enqueue_task("""
            {to: celery, broker: rabbit, job: app.report, routing_key: rk, exchange: ex, priority: 9,
             expires: 5m, headers: {h: [1]}}
        """).enqueue
        assert celery is not None
        assert ("celery", "rk", "ex", 9, 300, {"h": [1]}) == (
            celery.queue_name,
            celery.routing_key,
            celery.exchange,
            celery.priority,
            celery.expires_s,
            celery.headers,
        )

    def test_the_only_broker_need_not_be_named(self) -> None:
        """With one broker, `broker` may be left out."""
        config = parse("""
            brokers: {redis: "redis://127.0.0.1:6379/0"}
            tasks:
              a: {schedule: "@daily", enqueue: {to: rq, job: app.report}}
        """)
        assert {"redis": "redis://127.0.0.1:6379/0"} == config.brokers
        enqueue = config.tasks["a"].enqueue
        assert enqueue is not None
        assert "redis" == enqueue.broker

    def test_command_or_enqueue_exactly_one(self) -> None:
        """A task with both is an error at `enqueue`; one with neither misses `command`."""
        assert [
            "schedules.yaml:4:50: task 'a': a task has either 'command' or 'enqueue', not both",
            "schedules.yaml:5:3: task 'b': missing required key 'command'",
        ] == problems("""
            brokers: {redis: "redis://h"}
            tasks:
              a: {schedule: "@daily", command: run, enqueue: {to: rq, job: a.b}}
              b: {schedule: "@daily"}
        """)

    def test_enqueue_cannot_be_a_default(self) -> None:
        """Each task names its own job."""
        assert ["schedules.yaml:3:3: defaults: 'enqueue' cannot have a default; set it in each task"] == (
            problems("""
                defaults:
                  enqueue: {to: rq, job: a.b}
                tasks: {}
            """)
        )

    @pytest.mark.parametrize(
        ("lines", "message"),
        [
            ("{job: X, broker: redis}", "enqueue: missing required key 'to' (one of sidekiq, rq, celery)"),
            (
                "{to: sidekik, job: X, broker: redis}",
                "enqueue: to: expected one of sidekiq, rq, celery, got 'sidekik'",
            ),
            ("{to: sidekiq, broker: redis}", "enqueue: missing required key 'job' (a Ruby class name"),
            (
                "{to: sidekiq, job: report_job, broker: redis}",
                "enqueue: job: expected a Ruby class name like ReportJob",
            ),
            ("{to: rq, job: report, broker: redis}", "enqueue: job: expected a function's dotted path"),
            (
                "{to: sidekiq, job: X, broker: redis, kwargs: {a: 1}}",
                "enqueue: 'kwargs' is an option of rq and celery",
            ),
            (
                "{to: rq, job: a.b, broker: redis, retry: 3}",
                "enqueue: 'retry' is an option of sidekiq, not of rq",
            ),
            (
                "{to: rq, job: a.b, broker: redis, jobtimeout: 3}",
                "enqueue: unknown key 'jobtimeout' (did you mean 'job_timeout'?)",
            ),
            (
                "{to: sidekiq, job: X, broker: redi}",
                "enqueue: broker: unknown broker 'redi' (did you mean 'redis'?)",
            ),
            (
                "{to: rq, job: a.b, broker: rabbit}",
                "broker 'rabbit' is amqp://, but rq reads its jobs from Redis",
            ),
            ("{to: sidekiq, job: X}", "enqueue: which broker? add broker: with one of rabbit, redis"),
            (
                "{to: sidekiq, job: X, broker: redis, version: 5}",
                "enqueue: version: expected the Sidekiq version",
            ),
            (
                "{to: celery, job: x, broker: rabbit, priority: 300}",
                "priority: expected a whole number from 0",
            ),
            (
                "{to: rq, job: a.b, broker: redis, args: {a: 1}}",
                "enqueue: args: expected a list of arguments",
            ),
            ("{to: rq, job: a.b, broker: redis, args: [2024-01-01]}", "args[0]: a date: YAML reads"),
            ("{to: rq, job: a.b, broker: redis, args: [.nan]}", "args[0]: JSON has no nan"),
            ("{to: rq, job: a.b, broker: redis, queue: ''}", "enqueue: queue: expected a name, got ''"),
            (
                "{to: rq, job: a.b, broker: redis, job_timeout: 0}",
                "enqueue: job_timeout: must be more than 0",
            ),
        ],
    )
    def test_errors_name_the_place_and_the_value(self, lines: str, message: str) -> None:
        """Each problem names the file, line and column, the task and the key."""
        (problem,) = enqueue_problems(lines)
        assert problem.startswith("schedules.yaml:8:")
        assert f"task 'a': {message}" in problem or message in problem

    def test_brokers_are_validated(self) -> None:
        """Broker URLs: a known scheme or a variable reference; the password is never shown."""
        assert [
            "schedules.yaml:3:6: brokers: a: expected a broker URL starting with redis://, rediss://, "
            "unix://, amqp:// or amqps://, or an environment variable reference like ${REDIS_URL}, "
            "got 'http://user:***@host/x'",
            "schedules.yaml:4:3: brokers: invalid broker name 'b c': use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit",
        ] == problems("""
            brokers:
              a: http://user:secret@host/x
              b c: redis://h
            tasks: {}
        """)

    def test_no_broker_at_all(self) -> None:
        """An enqueue task in a file without brokers says what to add."""
        assert [
            "schedules.yaml:3:36: task 'a': enqueue: no broker to send to: add a top-level 'brokers:' "
            "mapping, like brokers: {redis: ${REDIS_URL}}"
        ] == problems("""
            tasks:
              a: {schedule: "@daily", enqueue: {to: rq, job: a.b}}
        """)

    def test_a_changed_broker_url_changes_the_task(self) -> None:
        """A reload sees a task whose broker moved as changed."""
        first = parse(
            'brokers: {r: "redis://a"}\ntasks: {a: {schedule: "@daily", enqueue: {to: rq, job: a.b}}}'
        )
        second = parse(
            'brokers: {r: "redis://b"}\ntasks: {a: {schedule: "@daily", enqueue: {to: rq, job: a.b}}}'
        )
        assert first.tasks["a"] != second.tasks["a"]

    def test_an_enqueue_task_pickles(self) -> None:
        """The reload's child hands the config over pickled."""
        task = enqueue_task("{to: celery, broker: rabbit, job: x, args: [1, {a: 2}], headers: {h: 1}}")
        assert task == pickle.loads(pickle.dumps(task))
