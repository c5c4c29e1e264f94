"""Tests for scheduler.loader: the clock's config comes from a forked child, equal to an in-process load."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scheduler.config import load_config
from scheduler.errors import ConfigError
from scheduler.loader import load_config_isolated

CONFIG = """\
timezone: Europe/London
defaults:
  timeout: 15m
tasks:
  a:
    schedule: "0 9 * * MON-FRI"
    command: echo a
    env: {X: "1"}
  b:
    schedule: "0 9 * * MON-FRI"
    command: [echo, b]
    timezone: America/New_York
    cwd: jobs
  c:
    schedule: "H H * * *"
    command: echo c
"""


class TestIsolatedLoad:
    def test_same_config_as_in_process(self, tmp_path: Path) -> None:
        """The child's config equals what load_config gives, field for field."""
        path = tmp_path / "schedules.yaml"
        path.write_text(CONFIG)
        isolated = load_config_isolated(str(path))
        assert load_config(str(path)) == isolated
        assert str(tmp_path / "jobs") == isolated.tasks["b"].cwd
        direct = load_config(str(path))
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for name in ("a", "b", "c"):
            assert direct.tasks[name].schedule.fires(start, 3) == isolated.tasks[name].schedule.fires(
                start, 3
            )

    def test_errors_come_back_as_config_errors(self, tmp_path: Path) -> None:
        """Every problem the child finds is raised in the parent, unchanged."""
        path = tmp_path / "schedules.yaml"
        path.write_text("tasks:\n  a:\n    schedule: every fortnight\n    comand: x\n")
        with pytest.raises(ConfigError) as isolated:
            load_config_isolated(str(path))
        with pytest.raises(ConfigError) as direct:
            load_config(str(path))
        assert direct.value.problems == isolated.value.problems
        assert 2 == len(isolated.value.problems)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is the same error as in-process."""
        with pytest.raises(ConfigError, match="no such file"):
            load_config_isolated(str(tmp_path / "nope.yaml"))


class TestPickling:
    def test_round_trip_keeps_equality_and_sharing(self, tmp_path: Path) -> None:
        """Specs survive pickling equal, and tasks with the same expression still share its fields."""
        path = tmp_path / "schedules.yaml"
        path.write_text(CONFIG)
        config = load_config(str(path))
        copy = pickle.loads(pickle.dumps(config))
        assert config == copy
        assert copy.tasks["a"].schedule._fields is copy.tasks["b"].schedule._fields
        assert "America/New_York" == copy.tasks["b"].schedule.zone.key
