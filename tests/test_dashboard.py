"""Tests for scheduler.dashboard: what the pages and the API read, and the actions, against SQLite and
PostgreSQL alike (the store's own tests cover each read in depth; these cover what the dashboard makes of
them). No HTTP here: test_web.py covers that."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from scheduler.dashboard import (
    OVERVIEW_PAGE,
    STRIP_RUNS,
    Dashboard,
    Schedules,
    Stores,
    _Shared,
)
from scheduler.errors import ConfigError, ControlError, NoLiveClockError, StoreError, UnknownTaskError
from scheduler.loader import load_config
from scheduler.store import ClockInfo, RunRecord, Store, open_store
from tests.conftest import schema_url

CONFIG = """\
timezone: Europe/London
tasks:
  backup:
    schedule: "30 1 * * *"
    command: echo backup
    env: {TOKEN: s3cret}
  report:
    schedule: every 10 minutes
    command: [echo, report]
  sync:
    schedule: "*/5 * * * * *"
    command: echo sync
  old:
    schedule: daily at 03:30
    command: echo old
    enabled: false
"""
CLOCK = ClockInfo("clock.1:10:aaaaaa", "clock.1", 10, "0.1.0", "digest")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    schema: str = request.getfixturevalue("postgres_schema")
    return schema_url(request.getfixturevalue("postgres_url"), schema)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    """A store on the dashboard's database, written behind its back as a clock would."""
    store = open_store(url)
    yield store
    store.close()


@pytest.fixture
def make_dashboard(url: str, config_path: Path) -> Iterator[Callable[..., Dashboard]]:
    made: list[Stores] = []

    def make(now: datetime | None = None, shared_for_s: float = 0) -> Dashboard:
        """A dashboard on the test's store; by default each read goes to the store (nothing shared)."""
        stores = Stores(lambda: open_store(url), size=2)
        made.append(stores)
        schedules = Schedules(str(config_path), load_config)
        clock = (lambda: now) if now is not None else (lambda: datetime.now(UTC))
        return Dashboard(schedules, stores, log=structlog.get_logger(), now=clock, shared_for_s=shared_for_s)

    yield make
    for stores in made:
        stores.close()


@pytest.fixture
def dashboard(make_dashboard: Callable[..., Dashboard]) -> Dashboard:
    return make_dashboard()


def ran(
    store: Store,
    task: str,
    status: str = "succeeded",
    *,
    seconds_ago: float = 60,
    duration_s: float = 1.0,
    trigger: str = "schedule",
    output: str | None = None,
) -> RunRecord:
    """A finished run of `task` recorded in the store, started that long ago."""
    started = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    record = RunRecord(
        task=task,
        scheduled_for=started,
        trigger=trigger,
        run_id=uuid.uuid4().hex[:12],
        claimed_by=CLOCK.id,
        started_at=started,
        status=status,
        finished_at=started + timedelta(seconds=duration_s),
        exit_code=0 if status == "succeeded" else 1,
        duration_s=duration_s,
        output=output,
    )
    assert store.record(record)
    return record


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


class TestOverview:
    def test_every_task_with_its_state(self, dashboard: Dashboard, store: Store) -> None:
        """Every task of the file in its order, with its words, next fire, last run and strip."""
        store.heartbeat(CLOCK)
        ran(store, "backup", seconds_ago=120)
        last = ran(store, "backup", "failed", seconds_ago=60)
        view = dashboard.overview()
        assert ["backup", "report", "sync", "old"] == [row.name for row in view.rows]
        backup, report, _, old = view.rows
        assert "at 01:30" == backup.words
        assert last.run_id == backup.last.run_id if backup.last else None
        assert ["failed", "succeeded"] == [r.status for r in backup.strip]
        assert backup.failing
        assert not report.failing
        assert report.last is None
        assert report.strip == ()
        assert old.next is None
        assert report.next is not None
        assert report.next.at > view.situation.now
        assert (4, 4, 1, 0, 1) == (
            view.total,
            view.matched,
            view.failing,
            view.paused,
            view.situation.live_clocks,
        )

    def test_search(self, dashboard: Dashboard) -> None:
        """By name, schedule as written, or schedule in words, any case."""
        assert ["report"] == [r.name for r in dashboard.overview(query="REP").rows]
        assert ["old"] == [r.name for r in dashboard.overview(query="daily at").rows]
        assert ["backup"] == [r.name for r in dashboard.overview(query="at 01:30").rows]
        assert [] == dashboard.overview(query="nothing like it").rows

    def test_failing_only(self, dashboard: Dashboard, store: Store) -> None:
        """Tasks whose last run failed, timed out, was killed or lost; a later success clears it."""
        ran(store, "backup", "timed_out", seconds_ago=60)
        ran(store, "report", "failed", seconds_ago=60)
        ran(store, "report", "succeeded", seconds_ago=30)
        ran(store, "sync", "skipped", seconds_ago=30)
        view = dashboard.overview(failing_only=True)
        assert ["backup"] == [r.name for r in view.rows]
        assert (1, 4) == (view.matched, view.total)

    def test_strip_holds_the_newest_runs(self, dashboard: Dashboard, store: Store) -> None:
        """At most STRIP_RUNS, newest first."""
        records = [ran(store, "sync", seconds_ago=100 - i) for i in range(STRIP_RUNS + 5)]
        [sync] = [r for r in dashboard.overview().rows if r.name == "sync"]
        assert [r.run_id for r in reversed(records[-STRIP_RUNS:])] == [r.run_id for r in sync.strip]

    def test_paused_and_running(self, dashboard: Dashboard, store: Store) -> None:
        """A pause that holds shows, one that ran out does not; a run going on a live clock shows."""
        store.heartbeat(CLOCK)
        store.pause("backup", by="ops", reason="migrating")
        store.pause("report", by="ops", until=datetime.now(UTC) + timedelta(hours=1))
        at = datetime.now(UTC) - timedelta(seconds=1)  # started by the database's clock too
        going = RunRecord("sync", at, "schedule", "0123456789ab", CLOCK.id, at)
        store.claim([going])
        view = dashboard.overview()
        rows = {row.name: row for row in view.rows}
        assert rows["backup"].pause is not None
        assert rows["backup"].pause.reason == "migrating"
        assert rows["report"].pause is not None
        assert ["0123456789ab"] == [r.run_id for r in rows["sync"].running]
        assert 2 == view.paused

    def test_pause_that_ran_out(self, make_dashboard: Callable[..., Dashboard], store: Store) -> None:
        """A pause past its `until` no longer shows as paused."""
        store.pause("report", by="ops", until=datetime.now(UTC) + timedelta(minutes=1))
        later = make_dashboard(now=datetime.now(UTC) + timedelta(minutes=2))
        [report] = [r for r in later.overview().rows if r.name == "report"]
        assert report.pause is None

    def test_pages(self, tmp_path: Path, url: str) -> None:
        """OVERVIEW_PAGE tasks a page; a page past the last shows the last."""
        path = tmp_path / "many.yaml"
        path.write_text(
            "tasks:\n"
            + "".join(f"  t{i:04d}: {{schedule: every minute, command: 'true'}}\n" for i in range(250))
        )
        stores = Stores(lambda: open_store(url), size=1)
        board = Dashboard(
            Schedules(str(path), load_config), stores, log=structlog.get_logger(), shared_for_s=0
        )
        try:
            first, third, beyond = board.overview(), board.overview(page=3), board.overview(page=99)
        finally:
            stores.close()
        assert (OVERVIEW_PAGE, 1, 3) == (len(first.rows), first.page, first.pages)
        assert ["t0200", 50] == [third.rows[0].name, len(third.rows)]
        assert 3 == beyond.page

    def test_without_the_store(self, make_dashboard: Callable[..., Dashboard], store: Store) -> None:
        """A store that fails: the tasks and their next fires still show, and the situation says why the
        rest does not."""
        board = make_dashboard()
        broken = Stores(lambda: open_store("sqlite:////proc/no/such/dir/state.db"), size=1)
        board.stores = broken
        view = board.overview()
        assert 4 == len(view.rows)
        assert view.rows[0].next is not None
        assert view.rows[0].last is None
        assert view.situation.store_error is not None
        assert "state.db" in view.situation.store_error
        assert view.situation.live_clocks is None
        assert broken.last_error == view.situation.store_error


class TestTasks:
    def test_json_keys(self, dashboard: Dashboard, store: Store) -> None:
        """GET /api/tasks: task, schedule, timezone, paused, running, next (in the task's zone), last_run."""
        last = ran(store, "report", "failed", duration_s=2.5)
        store.pause("report", by="ops")
        rows = {row.name: row.to_json() for row in dashboard.tasks()}
        report = rows["report"]
        assert ["task", "schedule", "timezone", "paused", "running", "next", "last_run"] == list(report)
        assert ("report", "every 10 minutes", "Europe/London", True, False) == (
            report["task"],
            report["schedule"],
            report["timezone"],
            report["paused"],
            report["running"],
        )
        assert datetime.fromisoformat(str(report["next"])) > datetime.now(UTC)
        assert {"status": "failed", "started_at": last.started_at.isoformat(), "duration_s": 2.5} == report[
            "last_run"
        ]
        assert None is rows["old"]["next"]
        assert None is rows["sync"]["last_run"]

    def test_store_error_propagates(self, dashboard: Dashboard) -> None:
        """The API says 503 rather than half an answer: the StoreError reaches the caller."""
        dashboard.stores = Stores(lambda: open_store("sqlite:////proc/no/such/dir/state.db"), size=1)
        with pytest.raises(StoreError):
            dashboard.tasks()


class TestTaskPage:
    def test_definition_fires_and_history(
        self, make_dashboard: Callable[..., Dashboard], store: Store
    ) -> None:
        """The next 10 fires with their DST notes (the clocks go back in London on 25 October 2026: 01:30
        happens twice, and a fixed-time task runs at the first), the chart, the history."""
        board = make_dashboard(now=datetime(2026, 10, 23, 12, 0, tzinfo=UTC))
        records = [ran(store, "backup", seconds_ago=300 - i, duration_s=i) for i in range(3)]
        page = board.task("backup")
        assert 10 == len(page.fires)
        notes = [f.note for f in page.fires if f.note]
        assert ["first of two 01:30s (DST ended)"] == notes
        assert [r.run_id for r in reversed(records)] == [r.run_id for r in page.history.runs]
        assert [2.0, 1.0, 0.0] == [r.duration_s for r in page.chart]
        assert page.row.spec.env == {"TOKEN": "s3cret"}  # the page masks it: test_pages.py

    def test_filters_and_pages(self, dashboard: Dashboard, store: Store) -> None:
        """Filtered by status and trigger; keyset pages that join up."""
        failed = [ran(store, "report", "failed", seconds_ago=100 - i) for i in range(3)]
        ran(store, "report", "succeeded", seconds_ago=10)
        manual = ran(store, "report", "failed", seconds_ago=5, trigger="manual")
        first = dashboard.task("report", status="failed", trigger="schedule", limit=2)
        assert [failed[2].run_id, failed[1].run_id] == [r.run_id for r in first.history.runs]
        second = dashboard.task(
            "report", status="failed", trigger="schedule", limit=2, before=first.history.before
        )
        assert [failed[0].run_id] == [r.run_id for r in second.history.runs]
        assert second.history.before is None
        assert [manual.run_id] == [r.run_id for r in dashboard.task("report", trigger="manual").history.runs]

    def test_audit_and_requests(self, dashboard: Dashboard, store: Store) -> None:
        """The task's audit trail and run requests, newest first."""
        store.pause("sync", by="ana", reason="noisy")
        store.resume("sync", by="bob")
        store.request_run("sync", by="cid")
        page = dashboard.task("sync")
        assert [("run", "cid"), ("resume", "bob"), ("pause", "ana")] == [
            (a.action, a.by) for a in page.actions
        ]
        assert ["cid"] == [r.requested_by for r in page.requests]
        assert page.override is not None
        assert not page.override.paused
        assert page.row.pause is None

    def test_unknown_task(self, dashboard: Dashboard) -> None:
        """A name not in the file, with a suggestion."""
        message = "unknown task 'reprot' (did you mean 'report'?)"
        with pytest.raises(UnknownTaskError, match=re.escape(message)):
            dashboard.task("reprot")

    @pytest.mark.parametrize(("status", "trigger"), [("done", None), (None, "Cron!")])
    def test_bad_filters(self, dashboard: Dashboard, status: str | None, trigger: str | None) -> None:
        """A status that is none, a trigger that cannot be one."""
        with pytest.raises(ValueError, match=r"status 'done'|trigger 'Cron!'"):
            dashboard.task("report", status=status, trigger=trigger)


class TestRecent:
    def test_failures_first(self, dashboard: Dashboard, store: Store) -> None:
        """Across tasks, newest first; with failures_first each page's failures above the rest."""
        a = ran(store, "backup", seconds_ago=50)
        b = ran(store, "report", "failed", seconds_ago=40)
        c = ran(store, "sync", seconds_ago=30)
        d = ran(store, "sync", "killed", seconds_ago=20)
        ids = [r.run_id for r in dashboard.recent().runs]
        assert [d.run_id, c.run_id, b.run_id, a.run_id] == ids
        ids = [r.run_id for r in dashboard.recent(failures_first=True).runs]
        assert [d.run_id, b.run_id, c.run_id, a.run_id] == ids
        assert [b.run_id] == [r.run_id for r in dashboard.recent(status="failed").runs]


class TestClocks:
    def test_other_config_flagged(self, dashboard: Dashboard, store: Store) -> None:
        """A live clock on another schedules file than the dashboard reads is flagged; a dead one is not."""
        digest = dashboard.schedules.config.digest
        same = replace(CLOCK, config_digest=digest)
        other = ClockInfo("clock.2:20:bbbbbb", "clock.2", 20, "0.1.0", "0" * 64)
        store.heartbeat(same)
        store.heartbeat(other)
        page = dashboard.clocks()
        assert {same.id, other.id} == {c.id for c in page.clocks}
        assert frozenset({other.id}) == page.differs
        assert page.store.ok
        assert page.store.latency_ms is not None
        store.stop_clock(other.id)
        assert frozenset() == dashboard.clocks().differs


class TestActions:
    def test_run_now_needs_a_live_clock(self, dashboard: Dashboard, store: Store) -> None:
        """With no live clock, nothing would run it: refused, and nothing is asked."""
        with pytest.raises(NoLiveClockError, match="task 'report': no live clock would run it"):
            dashboard.run_now("report", by="web:admin")
        assert [] == store.requests()

    def test_run_now(self, dashboard: Dashboard, store: Store) -> None:
        """A request for one run, by whom, in the audit trail and as an event."""
        store.heartbeat(CLOCK)
        with capture_logs() as logs:
            request_id = dashboard.run_now("report", by="web:admin")
        [request] = store.requests()
        assert (request_id, "report", "web:admin", "pending") == (
            request.id,
            request.task,
            request.requested_by,
            request.state,
        )
        [event] = events(logs, "web.action")
        assert {
            "action": "run",
            "task": "report",
            "by": "web:admin",
            "request_id": request_id,
        }.items() <= event.items()

    def test_pause_and_resume(self, dashboard: Dashboard, store: Store) -> None:
        """Through the store, for every clock; each logged with who did it."""
        until = datetime.now(UTC) + timedelta(hours=2)
        with capture_logs() as logs:
            override = dashboard.pause("backup", by="web:ana", until=until, reason="db move")
            held = dashboard.resume("backup", by="web:bob")
            again = dashboard.resume("backup", by="web:bob")
        assert (True, "db move", "web:ana") == (override.paused, override.reason, override.by)
        assert (True, False) == (held, again)
        assert not store.overrides()["backup"].paused
        assert [("pause", "web:ana"), ("resume", "web:bob"), ("resume", "web:bob")] == [
            (e["action"], e["by"]) for e in events(logs, "web.action")
        ]

    def test_pause_in_the_past(self, dashboard: Dashboard) -> None:
        """The store refuses a pause that would end before it starts."""
        with pytest.raises(ControlError, match="not after now"):
            dashboard.pause("backup", by="web:ana", until=datetime.now(UTC) - timedelta(minutes=1))

    @pytest.mark.parametrize("action", ["run_now", "pause", "resume"])
    def test_unknown_task(self, dashboard: Dashboard, store: Store, action: str) -> None:
        """Only tasks of the file: nothing is written for another name."""
        with pytest.raises(UnknownTaskError):
            getattr(dashboard, action)("nope", by="web:ana")
        assert [] == store.actions()


class TestStores:
    def test_deadline(self, tmp_path: Path) -> None:
        """A call that does not answer in time is a StoreError at the deadline; the stuck connection is
        replaced, so that the next call is served."""
        gate = threading.Event()
        stores = Stores(lambda: open_store(f"sqlite:///{tmp_path / 's.db'}"), size=1, deadline_s=0.3)
        started = time.monotonic()
        with pytest.raises(StoreError, match=re.escape("no answer within 0.3 s")):
            stores.call(lambda store: gate.wait(10))
        assert time.monotonic() - started < 2
        assert stores.last_error is not None
        assert [] == stores.call(lambda store: store.clocks())
        assert stores.last_error is None
        gate.set()
        stores.close()

    def test_waits_its_turn(self, tmp_path: Path) -> None:
        """Every connection taken: the next call waits for one to come back, within its deadline."""
        gate = threading.Event()
        stores = Stores(lambda: open_store(f"sqlite:///{tmp_path / 's.db'}"), size=1, deadline_s=2)
        holder = threading.Thread(target=lambda: stores.call(lambda s: gate.wait(0.2)))
        holder.start()
        time.sleep(0.05)
        assert [] == stores.call(lambda store: store.clocks())
        holder.join()
        stores.close()

    def test_errors_pass_through(self, tmp_path: Path) -> None:
        """A caller's error (a bad cursor) reaches it as it was, and the connection goes back."""
        stores = Stores(lambda: open_store(f"sqlite:///{tmp_path / 's.db'}"), size=1)
        with pytest.raises(ValueError, match="before 'x'"):
            stores.call(lambda store: store.runs(before="x"))
        assert [] == stores.call(lambda store: store.runs().runs)
        stores.close()


class TestSchedules:
    def test_reload_when_the_file_changes(self, config_path: Path) -> None:
        """A changed file is read again in the background; until then the old version is shown."""
        ticks = iter(range(0, 10_000, 5))
        schedules = Schedules(str(config_path), load_config, check_every_s=2, monotonic=lambda: next(ticks))
        assert 4 == len(schedules.current().tasks)
        config_path.write_text(CONFIG + "  new:\n    schedule: every minute\n    command: 'true'\n")
        deadline = time.monotonic() + 5
        while "new" not in schedules.current().tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "new" in schedules.config.tasks
        assert schedules.error is None

    def test_invalid_change_keeps_the_last_valid(self, config_path: Path) -> None:
        """A change that does not parse: the last valid version stays, with the problem to show."""
        schedules = Schedules(str(config_path), load_config)
        config_path.write_text("tasks: [")
        schedules.reload_now()
        assert 4 == len(schedules.config.tasks)
        assert schedules.error is not None
        assert "schedules.yaml" in schedules.error

    def test_invalid_at_start(self, tmp_path: Path) -> None:
        """The dashboard does not start on an invalid file."""
        path = tmp_path / "bad.yaml"
        path.write_text("tasks: {x: {schedule: nope, command: 'true'}}")
        with pytest.raises(ConfigError):
            Schedules(str(path), load_config)

    def test_next_fire_cached_until_it_passes(self, config_path: Path) -> None:
        """The next fire is worked out again only once it has passed; a disabled task has none."""
        schedules = Schedules(str(config_path), load_config)
        report = schedules.config.tasks["report"]
        t0 = datetime(2026, 12, 1, 9, 1, tzinfo=UTC)
        first = schedules.next_fire(report, t0)
        assert first is not None
        assert first.at == datetime(2026, 12, 1, 9, 10, tzinfo=UTC)
        assert first is schedules.next_fire(report, t0 + timedelta(minutes=5))
        second = schedules.next_fire(report, t0 + timedelta(minutes=9))
        assert second is not None
        assert second.at == datetime(2026, 12, 1, 9, 20, tzinfo=UTC)
        assert None is schedules.next_fire(schedules.config.tasks["old"], t0)


class TestShared:
    def test_reads_shared_for_a_moment(self, make_dashboard: Callable[..., Dashboard], store: Store) -> None:
        """Within SHARED_FOR_S the overview and the API share one read of every task's state; an action
        clears it, so that what it did shows at once."""
        board = make_dashboard(shared_for_s=60)
        calls = []
        real_call = board.stores.call

        def counting(operation: Callable[[Store], Any]) -> Any:
            calls.append(operation)
            return real_call(operation)

        board.stores.call = counting  # type: ignore[method-assign]
        board.overview()
        first = len(calls)
        ran(store, "report", "failed")
        board.overview()
        board.tasks()
        assert first == len(calls)
        assert [] == [r for r in board.tasks() if r.last is not None]
        board.pause("report", by="web:ana")
        rows = {r.name: r for r in board.tasks()}
        assert rows["report"].pause is not None
        assert rows["report"].last is not None

    def test_waiters_share_a_failure(self) -> None:
        """A fetch that fails fails those waiting on it too, at once; a later caller tries again."""
        shared = _Shared(60)
        gate = threading.Event()
        fetches = []

        def failing() -> None:
            fetches.append(1)
            gate.wait(5)
            raise StoreError("no answer")

        errors: list[BaseException] = []

        def ask() -> None:
            try:
                shared.get("k", failing)
            except StoreError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=ask) for _ in range(5)]
        for thread in threads:
            thread.start()
        time.sleep(0.1)
        gate.set()
        for thread in threads:
            thread.join(5)
        assert (1, 5) == (len(fetches), len(errors))
        assert 7 == shared.get("k", lambda: 7)
