"""The control plane end to end: `scheduler pause` / `resume` against real clocks, and run requests taken by
exactly one of several clocks on one PostgreSQL store."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from scheduler.store import open_store
from tests.integration.conftest import ClockProcess, Event, run_cli

pytestmark = pytest.mark.integration

TICK = (
    "store: sqlite:///state.db\n"
    "tasks:\n"
    '  tick:\n    schedule: "* * * * * *"\n    command: "true"\n'
    "  other:\n    schedule: '@daily'\n    command: 'true'\n"
)
# How long a clock may take to act on a pause or a request: a poll a second, plus a loaded machine.
SEEN_WITHIN_S = 2.5


def at(event: Event) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def instant(event: Event) -> float:
    return datetime.fromisoformat(event["scheduled_for"]).timestamp()


def cli(tmp_path: Path, *args: str, user: str = "tester") -> tuple[int, str, str]:
    result = run_cli(*args, cwd=tmp_path, env={**os.environ, "USER": user})
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


def with_store(tmp_path: Path) -> Path:
    """A project with TICK and its SQLite store created, as a clock that ran once leaves it."""
    (tmp_path / "schedules.yaml").write_text(TICK)
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    store.connect()
    store.close()
    return tmp_path


def paused_skips(clock: ClockProcess) -> list[Event]:
    return [e for e in clock.named("task.skipped") if e["reason"] == "paused"]


class TestPauseAndResume:
    @pytest.mark.timing
    def test_pause_then_resume_from_the_cli(
        self, start_clock: Callable[..., ClockProcess], tmp_path: Path
    ) -> None:
        """`scheduler pause` stops a running clock's fires within about a second (task.paused, then
        task.skipped reason paused, and no start); `scheduler resume` lets it fire again."""
        clock = start_clock(TICK)
        clock.wait_event("task.started", task="tick")
        status, out, _ = cli(tmp_path, "pause", "tick", "--reason", "disk full")
        paused_at = time.time()
        assert 0 == status
        assert out.startswith("paused tick until resumed, by tester@")
        [seen] = clock.wait_event("task.paused", task="tick", reason="disk full")
        assert seen["by"].startswith("tester@")
        assert seen["until"] is None
        assert at(seen) - paused_at < SEEN_WITHIN_S
        clock.wait_for(lambda evs: len([e for e in evs if e.get("reason") == "paused"]) >= 3, what="3 skips")
        skips = paused_skips(clock)
        starts = [e for e in clock.named("task.started") if e["task"] == "tick"]
        assert max(map(instant, starts)) < min(map(instant, skips))
        assert instant(skips[0]) < paused_at + SEEN_WITHIN_S

        status, out, _ = cli(tmp_path, "resume", "tick", user="bob")
        resumed_at = time.time()
        assert (0, f"resumed tick, by bob@{seen['by'].split('@', 1)[1]}\n") == (status, out)
        [back] = clock.wait_event("task.resumed", task="tick", expired=False)
        assert back["by"].startswith("bob@")
        again = clock.wait_event("task.started", task="tick", count=len(starts) + 1)[-1]
        assert at(again) - resumed_at < SEEN_WITHIN_S + 1
        assert instant(again) > max(map(instant, paused_skips(clock)))
        clock.stop()
        assert all(e["task"] == "tick" for e in paused_skips(clock))

    def test_a_pause_survives_a_restart(
        self, start_clock: Callable[..., ClockProcess], tmp_path: Path
    ) -> None:
        """A pause lives in the store: a clock started after it (a restart, a deploy) says so before its
        first fire and never starts the task; a pause for a while (--for) then ends by itself."""
        first = start_clock(TICK)
        assert 0 == cli(tmp_path, "pause", "tick", "--for", "6s", "--reason", "deploy")[0]
        first.wait_event("task.paused", task="tick")
        assert 0 == first.stop()
        clock = start_clock(TICK)
        names = [e["event"] for e in clock.events]
        assert names.index("task.paused") < names.index("scheduler.started")
        [held] = clock.named("task.paused")
        assert ("tick", "deploy") == (held["task"], held["reason"])
        until = datetime.fromisoformat(held["until"]).timestamp()
        clock.wait_event("task.skipped", reason="paused")
        [ended] = clock.wait_event("task.resumed", task="tick", timeout=15, expired=True)
        assert ended["by"] is None
        assert at(ended) >= until
        clock.wait_event("task.started", task="tick")
        clock.stop()
        assert all(instant(e) < until for e in paused_skips(clock))
        assert all(instant(e) >= until for e in clock.named("task.started"))


class TestCommands:
    def test_pause_and_resume_need_a_store(self, tmp_path: Path) -> None:
        """Without a store both exit 2 and say how to add one."""
        (tmp_path / "schedules.yaml").write_text(
            "tasks:\n  a:\n    schedule: '@daily'\n    command: 'true'\n"
        )
        for command in ("pause", "resume"):
            status, _, err = cli(tmp_path, command, "a")
            assert 2 == status
            assert f"{command} needs a store shared with the clocks" in err

    def test_a_store_file_that_is_not_there(self, tmp_path: Path) -> None:
        """A SQLite file that does not exist (a mistyped path) is refused, exit 2 naming it, and not created:
        a pause there would reach no clock."""
        (tmp_path / "schedules.yaml").write_text(TICK)
        status, _, err = cli(tmp_path, "pause", "tick")
        assert 2 == status
        assert f"no database file {tmp_path / 'state.db'}" in err
        assert not (tmp_path / "state.db").exists()

    def test_bad_arguments(self, tmp_path: Path) -> None:
        """An unknown task, --for with --until, a pause ending in the past or lasting nothing: exit 2, with
        the value named; nothing is written."""
        with_store(tmp_path)
        unknown = cli(tmp_path, "pause", "tik")
        assert (2, True) == (unknown[0], "unknown task 'tik' (did you mean 'tick'?)" in unknown[2])
        both = cli(tmp_path, "pause", "tick", "--for", "1h", "--until", "2030-01-01T00:00:00Z")
        assert (2, True) == (both[0], "give --for or --until, not both" in both[2])
        past = cli(tmp_path, "pause", "tick", "--until", "2020-01-01T00:00:00Z")
        assert 2 == past[0]
        assert "task 'tick': cannot pause until 2020-01-01T00:00:00+00:00: that is not after now" in past[2]
        zero = cli(tmp_path, "pause", "tick", "--for", "0")
        assert (2, True) == (zero[0], "'0': a pause lasts longer than 0" in zero[2])
        garbled = cli(tmp_path, "pause", "tick", "--until", "tomorrow")
        assert (2, True) == (garbled[0], "'tomorrow' is not an ISO 8601 instant" in garbled[2])
        store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
        assert ({}, []) == (store.overrides(), store.actions())
        store.close()

    def test_until_and_the_audit_trail(self, tmp_path: Path) -> None:
        """--until pauses to that instant, shown in the task's zone; resuming a task that is not paused says
        so; both are in the audit trail, with who did them."""
        with_store(tmp_path)
        status, out, _ = cli(tmp_path, "pause", "tick", "--until", "2099-01-01T12:00:00+01:00", "--by", "ann")
        assert (0, "paused tick until 2099-01-01 11:00:00 UTC, by ann\n") == (status, out)
        assert (0, "other was not paused\n") == cli(tmp_path, "resume", "other", user="bob")[:2]
        store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
        actions = [(a.by.split("@")[0], a.action, a.task, a.detail) for a in store.actions()]
        store.close()
        assert [
            ("bob", "resume", "other", "was not paused"),
            ("ann", "pause", "tick", "until 2099-01-01T11:00:00+00:00"),
        ] == actions

    def test_an_unreachable_store_exits_69(self, tmp_path: Path) -> None:
        """A store that cannot be reached: exit 69, the password hidden."""
        (tmp_path / "schedules.yaml").write_text(TICK)
        status, _, err = cli(tmp_path, "pause", "tick", "--store", "postgresql://u:sekrit@127.0.0.1:1/db")
        assert 69 == status
        assert "postgresql://u:***@127.0.0.1:1/db" in err
        assert "sekrit" not in err


class TestRunRequests:
    def test_each_request_runs_once_on_three_clocks(self, tmp_path: Path, postgres_store_url: str) -> None:
        """Three clocks on one PostgreSQL store, requests made as a dashboard would: each starts exactly once,
        within a couple of seconds, as a manual run naming who asked; the request names its run."""
        path = tmp_path / "schedules.yaml"
        path.write_text("tasks:\n  report:\n    schedule: '@yearly'\n    command: 'echo report'\n")
        clocks = [ClockProcess(path, "--store", postgres_store_url) for _ in range(3)]
        web = open_store(postgres_store_url)
        try:
            for clock in clocks:
                clock.wait_event("scheduler.started")
            asked = time.time()
            ids = [web.request_run("report", by="ann@web") for _ in range(6)]

            def started() -> list[Event]:
                return [e for c in clocks for e in c.named("task.started") if e["trigger"] == "manual"]

            deadline = time.monotonic() + 15
            while len(started()) < len(ids) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(2.5)  # for a second start of any request, which must not come
            requests = web.requests()
        finally:
            for clock in clocks:
                clock.stop()
            web.close()
        runs = started()
        assert len(ids) == len(runs)
        assert {"ann@web"} == {e["requested_by"] for e in runs}
        assert max(at(e) for e in runs) - asked < SEEN_WITHIN_S + 2
        assert {"started"} == {r.state for r in requests}
        assert sorted(ids) == sorted(r.id for r in requests)
        assert Counter(e["run_id"] for e in runs) == Counter(r.run_id for r in requests)
        by_clock = Counter(r.claimed_by for r in requests)
        assert set(by_clock) <= {e["claimed_by"] for c in clocks for e in c.named("store.opened")}
