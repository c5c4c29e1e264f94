"""Tests for scheduler.starter: the file `scheduler init` writes is valid, and so is each line it offers."""

from __future__ import annotations

import re

import pytest

from scheduler.config import parse_config
from scheduler.starter import STARTER_CONFIG, STARTER_TASKS


class TestStarterConfig:
    def test_valid_with_its_tasks(self) -> None:
        """The starter file validates, with the tasks STARTER_TASKS names, all enabled, and no store."""
        config = parse_config(STARTER_CONFIG, "schedules.yaml")
        assert list(STARTER_TASKS) == list(config.tasks)
        assert all(spec.enabled for spec in config.tasks.values())
        assert config.store is None
        assert all(spec.ping_url is None for spec in config.tasks.values())

    @pytest.mark.parametrize(
        "key", ["store: sqlite", "store: ${DATABASE_URL}", "ping_url", "retries", "enabled"]
    )
    def test_each_commented_line_valid_once_uncommented(self, key: str) -> None:
        """Uncommenting one of the offered lines (store, ping, retries, enabled) keeps the file valid."""
        pattern = re.compile(rf"^(\s*)# ({re.escape(key)}.*)$", re.MULTILINE)
        text, count = pattern.subn(r"\1\2", STARTER_CONFIG)
        assert 1 == count
        config = parse_config(text, "schedules.yaml")
        assert list(STARTER_TASKS) == list(config.tasks)

    def test_store_line_uncommented(self) -> None:
        """The SQLite store line, uncommented, names a file beside the schedules file."""
        text = STARTER_CONFIG.replace("# store: sqlite", "store: sqlite")
        assert "sqlite:///.scheduler/state.db" == parse_config(text, "schedules.yaml").store

    def test_every_key_explained(self) -> None:
        """Every key set in the file has a comment on its line or on the lines just above it."""
        lines = STARTER_CONFIG.splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^\s*[a-z_]+:(\s|$)", line) and not line.strip().startswith("tasks:"):
                above = lines[i - 1].strip() if i else ""
                assert "#" in line or above.startswith("#"), f"no comment for: {line}"
