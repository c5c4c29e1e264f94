"""Tests for scheduler.store, each behaviour against SQLite and PostgreSQL alike.

PostgreSQL is the server at $SCHEDULER_TEST_POSTGRES_URL (default postgresql://127.0.0.1/test); each test gets
a schema of its own, dropped afterwards. Without a server those tests skip, except on CI, where they fail.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from scheduler import store as store_module
from scheduler.config import DEFAULT_KEEP_RUNS
from scheduler.errors import ControlError, SchedulerError, StoreError, StoreMissingError
from scheduler.runs import STORE_TAIL_BYTES
from scheduler.store import (
    CLAIMED_TRIGGERS,
    RUN_STATUSES,
    Claim,
    ClockInfo,
    Override,
    Poll,
    RunRecord,
    Store,
    open_store,
    redact,
)
from tests.conftest import schema_url

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)

Raw = Callable[[str], list[tuple[Any, ...]]]


def run(
    task: str = "backup",
    minutes: int = 0,
    trigger: str = "schedule",
    *,
    started_minutes: int | None = None,
    **fields: Any,
) -> RunRecord:
    """A run of `task` scheduled `minutes` after T0 (started then too, unless told), with a new run id."""
    started = minutes if started_minutes is None else started_minutes
    return RunRecord(
        task=task,
        scheduled_for=T0 + timedelta(minutes=minutes),
        trigger=trigger,
        run_id=uuid.uuid4().hex[:12],
        claimed_by="clock.1:4242",
        started_at=T0 + timedelta(minutes=started),
        **fields,
    )


def won(store: Store, records: list[RunRecord]) -> list[bool]:
    """Per record, whether this store's claim won it."""
    return [claim.won for claim in store.claim(records)]


def finish(store: Store, record: RunRecord, **fields: Any) -> None:
    """Finish a run as succeeded a second after it started, unless told otherwise."""
    values: dict[str, Any] = {
        "finished_at": record.started_at + timedelta(seconds=1),
        "status": "succeeded",
        "exit_code": 0,
        "signal": None,
        "duration_s": 1.0,
        "output": None,
    }
    store.finish(record.run_id, **{**values, **fields})


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL of each kind, for an empty database of the test's own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    schema: str = request.getfixturevalue("postgres_schema")
    return schema_url(request.getfixturevalue("postgres_url"), schema)


@pytest.fixture
def make_store(url: str) -> Iterator[Callable[..., Store]]:
    """Opens stores on the test's database (as several clocks would), and closes them after the test."""
    stores: list[Store] = []

    def make(keep_runs: int = DEFAULT_KEEP_RUNS, namespace: str = "") -> Store:
        store = open_store(url, keep_runs=keep_runs, namespace=namespace)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., Store]) -> Store:
    """A store on the test's database."""
    return make_store()


@pytest.fixture
def raw(url: str) -> Raw:
    """Runs one SQL statement on the test's database behind the store's back."""
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")

        def run_sqlite(sql: str) -> list[tuple[Any, ...]]:
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()

        return run_sqlite
    import psycopg

    def run_postgres(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    return run_postgres


def schema_version(raw: Raw) -> int:
    [(version,)] = raw("SELECT version FROM scheduler_schema")
    return int(version)


class TestRunRecord:
    def test_to_json_keys(self) -> None:
        """The keys `history --json` prints, in order; output only when asked."""
        record = run()
        keys = [
            "task",
            "scheduled_for",
            "trigger",
            "attempt",
            "started_at",
            "finished_at",
            "status",
            "exit_code",
            "signal",
            "duration_s",
            "claimed_by",
            "run_id",
        ]
        assert keys == list(record.to_json())
        assert [*keys, "output"] == list(record.to_json(output=True))

    def test_to_json_values(self) -> None:
        """Datetimes become ISO 8601 strings in UTC, None stays None."""
        paris = timezone(timedelta(hours=1))
        record = RunRecord(
            task="backup",
            scheduled_for=datetime(2026, 11, 27, 11, 0, tzinfo=paris),
            trigger="catch_up",
            run_id="0123456789ab",
            claimed_by="web.1:7",
            started_at=datetime(2026, 11, 27, 10, 0, 0, 250000, tzinfo=UTC),
            status="killed",
            signal="SIGKILL",
            output="bye",
        )
        assert {
            "task": "backup",
            "scheduled_for": "2026-11-27T10:00:00+00:00",
            "trigger": "catch_up",
            "attempt": 1,
            "started_at": "2026-11-27T10:00:00.250000+00:00",
            "finished_at": None,
            "status": "killed",
            "exit_code": None,
            "signal": "SIGKILL",
            "duration_s": None,
            "claimed_by": "web.1:7",
            "run_id": "0123456789ab",
            "output": "bye",
        } == record.to_json(output=True)


class TestRedact:
    def test_password_hidden(self) -> None:
        """The password of a URL becomes ***."""
        assert "postgresql://app:***@db.example:5432/prod" == redact(
            "postgresql://app:s3cret@db.example:5432/prod"
        )

    def test_password_parameter_hidden(self) -> None:
        """So does a password given as a query parameter."""
        url = "postgresql://db.example/prod?user=app&password=s3cret&sslmode=require"
        assert "postgresql://db.example/prod?user=app&password=***&sslmode=require" == redact(url)

    def test_raw_at_sign_in_password(self) -> None:
        """A password with an unescaped '@' is hidden whole."""
        assert "postgres://app:***@db.example/prod" == redact("postgres://app:p@ss/w@db.example/prod")

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://app@db.example/prod",
            "postgresql:///prod",
            "sqlite:////var/lib/a:b@c.db",
            "sqlite:///x.db",
        ],
    )
    def test_no_password_unchanged(self, url: str) -> None:
        """A URL without a password is shown as it is."""
        assert url == redact(url)


class TestOpenStore:
    @pytest.mark.parametrize(
        "url",
        [
            "mysql://app@db.example/prod",
            "state.db",
            "",
            "postgresql+psycopg://db.example/prod",
            "sqlite://host/state.db",
            "sqlite:///",
            "sqlite:///state.db?mode=ro",
        ],
    )
    def test_rejects_other_forms(self, url: str) -> None:
        """Anything else is refused, naming the URL and the forms that work."""
        with pytest.raises(
            StoreError, match=r"sqlite:///relative/path\.db, sqlite:////absolute/path\.db, postgres"
        ):
            open_store(url)

    def test_rejection_hides_password(self) -> None:
        """A refused URL is named without its password."""
        with pytest.raises(StoreError, match=r"'mysql://app:\*\*\*@db\.example/prod'") as caught:
            open_store("mysql://app:s3cret@db.example/prod")
        assert "s3cret" not in str(caught.value)

    def test_store_error_is_a_scheduler_error(self) -> None:
        """The CLI reports it like every other error: without a traceback."""
        assert issubclass(StoreError, SchedulerError)

    def test_in_memory_sqlite_refused(self) -> None:
        """A history that vanishes on reconnect is no history."""
        with pytest.raises(StoreError, match="name a file"):
            open_store("sqlite:///:memory:")

    def test_keep_runs_at_least_one(self) -> None:
        """Keeping no run at all would delete the claims."""
        with pytest.raises(ValueError, match="keep_runs"):
            open_store("sqlite:///state.db", keep_runs=0)

    def test_no_io(self, tmp_path: Path) -> None:
        """Opening parses only: nothing is created until the first call."""
        store = open_store(f"sqlite:///{tmp_path / 'sub' / 'state.db'}")
        assert ("sqlite", False) == (store.kind, (tmp_path / "sub").exists())

    def test_sqlite_relative_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """sqlite:///.scheduler/state.db is relative to the current directory at open; the folder is made."""
        monkeypatch.chdir(tmp_path)
        store = open_store("sqlite:///.scheduler/state.db")
        monkeypatch.chdir("/")
        try:
            assert [] == store.history()
        finally:
            store.close()
        assert (tmp_path / ".scheduler" / "state.db").is_file()

    def test_sqlite_absolute_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """sqlite:////absolute/path.db does not depend on the current directory."""
        monkeypatch.chdir("/")
        path = tmp_path / "var" / "state.db"
        store = open_store(f"sqlite:///{path}")
        try:
            store.connect()
        finally:
            store.close()
        assert path.is_file()

    def test_sqlite_display_url(self, tmp_path: Path) -> None:
        """A SQLite store is shown by the URL it was given."""
        url = f"sqlite:///{tmp_path / 'state.db'}"
        assert url == open_store(url).display_url

    @pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
    def test_postgres_schemes(self, scheme: str) -> None:
        """postgres:// (Heroku's DATABASE_URL) is taken as postgresql://."""
        pytest.importorskip("psycopg")
        store = open_store(f"{scheme}://app:s3cret@db.example/prod")
        assert ("postgresql", f"{scheme}://app:***@db.example/prod") == (store.kind, store.display_url)

    def test_postgres_parameters_merged(self) -> None:
        """The URL's parameters reach libpq; the store's options come first, so the user's win."""
        pytest.importorskip("psycopg")
        from psycopg.conninfo import conninfo_to_dict

        url = "postgresql://db.example/prod?sslmode=require&options=-csearch_path%3Dmine&application_name=web"
        params = conninfo_to_dict(open_store(url)._conninfo)  # type: ignore[attr-defined]
        assert {
            "host": "db.example",
            "dbname": "prod",
            "sslmode": "require",
            "options": "-c statement_timeout=2000 -c lock_timeout=2000 -csearch_path=mine",
            "application_name": "web",
            "connect_timeout": "2",
            "keepalives": "1",
            "keepalives_idle": "5",
            "keepalives_interval": "2",
            "keepalives_count": "3",
        } == params

    def test_postgres_defaults(self) -> None:
        """Without parameters, the store names itself and sets its timeouts."""
        pytest.importorskip("psycopg")
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(open_store("postgresql:///prod")._conninfo)  # type: ignore[attr-defined]
        assert ("scheduler", "-c statement_timeout=2000 -c lock_timeout=2000") == (
            params["application_name"],
            params["options"],
        )

    def test_postgres_bad_parameter(self) -> None:
        """A parameter libpq does not know is refused at once, without the password."""
        pytest.importorskip("psycopg")
        with pytest.raises(StoreError, match=r"app:\*\*\*@db\.example.*bogus") as caught:
            open_store("postgresql://app:s3cret@db.example/prod?bogus=1")
        assert "s3cret" not in str(caught.value)

    def test_psycopg_missing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without psycopg, a PostgreSQL URL says what to install."""
        monkeypatch.setitem(sys.modules, "psycopg", None)
        with pytest.raises(StoreError, match=r"needs psycopg: pip install 'scheduler\[postgres\]'"):
            open_store("postgresql://db.example/prod")

    def test_migrations_match(self) -> None:
        """Both backends know the same schema versions."""
        assert len(store_module._SQLITE_MIGRATIONS) == len(store_module._POSTGRES_MIGRATIONS)

    def test_claim_index_matches_triggers(self) -> None:
        """The unique index covers exactly the claimed triggers that the queries name."""
        [index] = [s for s in store_module._SQLITE_MIGRATIONS[0] if "scheduler_runs_claim" in s]
        assert index.endswith(f"WHERE {store_module._CLAIMED_SQL}")


class TestConnect:
    def test_creates_schema_once(self, make_store: Callable[..., Store], raw: Raw) -> None:
        """Connecting again, or from another store, changes nothing."""
        first, second = make_store(), make_store()
        first.connect()
        first.connect()
        second.connect()
        assert [(len(store_module._SQLITE_MIGRATIONS),)] == raw("SELECT version FROM scheduler_schema")

    def test_concurrent_connects(self, make_store: Callable[..., Store], raw: Raw) -> None:
        """Several clocks creating the schema at once all succeed, and it is created once."""
        stores = [make_store() for _ in range(4)]
        barrier = threading.Barrier(len(stores))

        def connect(store: Store) -> None:
            barrier.wait()
            store.connect()

        with ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(connect, stores))
        assert len(store_module._SQLITE_MIGRATIONS) == schema_version(raw)

    def test_connects_lazily(self, store: Store) -> None:
        """Any call connects first."""
        assert {} == store.last_runs()

    def test_upgrades_version_0(self, store: Store, raw: Raw) -> None:
        """A database at version 0 (a version table and nothing else) gets every migration."""
        raw("CREATE TABLE scheduler_schema (version INTEGER NOT NULL)")
        raw("INSERT INTO scheduler_schema (version) VALUES (0)")
        assert [True] == won(store, [run()])
        assert len(store_module._SQLITE_MIGRATIONS) == schema_version(raw)

    def test_upgrades_to_a_later_version(
        self, make_store: Callable[..., Store], raw: Raw, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A database of an older version gets the migrations it lacks, and keeps its runs."""
        old = make_store()
        old.claim([run()])
        old.close()
        migrations = type(old)._migrations
        added = ["ALTER TABLE scheduler_runs ADD COLUMN note TEXT"]
        monkeypatch.setattr(type(old), "_migrations", [*migrations, added])
        assert 1 == len(make_store().history())
        assert (len(migrations) + 1, [(None,)]) == (
            schema_version(raw),
            raw("SELECT note FROM scheduler_runs"),
        )

    def test_refuses_newer_version(self, make_store: Callable[..., Store], raw: Raw) -> None:
        """A database from a newer scheduler is left alone, every time it is tried."""
        make_store().connect()
        raw("UPDATE scheduler_schema SET version = 99")
        store = make_store()
        for _ in range(2):
            with pytest.raises(StoreError, match="schema version 99 was created by a newer scheduler"):
                store.history()
        assert 99 == schema_version(raw)

    def test_sqlite_unopenable(self, tmp_path: Path) -> None:
        """A path that cannot be a database file is a StoreError naming the URL."""
        url = f"sqlite:///{tmp_path}"
        with pytest.raises(StoreError, match=f"run-history store {url}: cannot connect"):
            open_store(url).connect()

    @pytest.mark.timing
    def test_postgres_dead_port(self) -> None:
        """Nothing listening: a StoreError within a few seconds, without the password."""
        pytest.importorskip("psycopg")
        store = open_store("postgresql://app:s3cret@127.0.0.1:1/test")
        start = time.monotonic()
        with pytest.raises(
            StoreError, match=r"postgresql://app:\*\*\*@127\.0\.0\.1:1/test: cannot connect"
        ) as caught:
            store.connect()
        assert time.monotonic() - start < 3 * store_module.CONNECT_TIMEOUT_S
        assert "s3cret" not in str(caught.value)

    def test_postgres_reconnects(self, postgres_schema: str, postgres_url: str) -> None:
        """A connection the server dropped fails one call, and the next call connects again."""
        import psycopg

        url = schema_url(postgres_url, postgres_schema)
        store = open_store(url)
        try:
            store.claim([run()])
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                    (postgres_schema,),
                )
            with pytest.raises(StoreError, match="cannot read the history"):
                store.history()
            assert 1 == len(store.history())
        finally:
            store.close()


class TestClaim:
    def test_wins_once(self, store: Store) -> None:
        """The first claim of an instant wins; claiming it again, under another run id, loses."""
        assert [True] == won(store, [run()])
        assert [False] == won(store, [run()])

    def test_other_store_loses(self, make_store: Callable[..., Store]) -> None:
        """Another clock's claim of the same instant loses, whatever its trigger."""
        assert [True] == won(make_store(), [run()])
        assert [False, False] == won(make_store(), [run(), run(trigger="catch_up")])

    def test_per_record_in_order(self, store: Store) -> None:
        """One answer per record, in the order given."""
        store.claim([run("a"), run("b")])
        assert [False, True, False, True] == won(store, [run("a"), run("c"), run("b"), run("a", 1)])

    def test_stored_as_given(self, store: Store) -> None:
        """A claimed run reads back equal, datetimes in UTC."""
        record = run()
        store.claim([record])
        [back] = store.history()
        assert (record, UTC, UTC) == (back, back.scheduled_for.tzinfo, back.started_at.tzinfo)

    def test_thousand_in_one_call(self, store: Store) -> None:
        """A catch-up of 1,000 instants is one call, and a second clock loses all of them."""
        assert [True] * 1000 == won(store, [run(minutes=i) for i in range(1000)])
        assert [False] * 1000 == won(store, [run(minutes=i) for i in range(1000)])

    def test_concurrent_claims(self, make_store: Callable[..., Store]) -> None:
        """Two clocks claim the same 200 instants at once, in batches in different orders: one winner each."""
        keys = [(task, minute) for task in ("a", "b") for minute in range(100)]
        stores = [make_store(), make_store()]
        for store in stores:
            store.connect()
        barrier = threading.Barrier(len(stores))

        def clock(seed: int) -> dict[tuple[str, int], bool]:
            order = keys[:]
            random.Random(seed).shuffle(order)
            wins: dict[tuple[str, int], bool] = {}
            barrier.wait()
            for start in range(0, len(order), 10):
                batch = order[start : start + 10]
                wins.update(zip(batch, won(stores[seed], [run(t, m) for t, m in batch]), strict=True))
            return wins

        with ThreadPoolExecutor(len(stores)) as pool:
            results = list(pool.map(clock, range(len(stores))))
        assert {key: 1 for key in keys} == {key: sum(result[key] for result in results) for key in keys}

    def test_only_claimed_triggers(self, store: Store) -> None:
        """A manual run is recorded, not claimed."""
        assert ("schedule", "catch_up") == CLAIMED_TRIGGERS
        with pytest.raises(ValueError, match="trigger 'manual' cannot be claimed"):
            store.claim([run(trigger="manual")])

    def test_naive_datetime(self, store: Store) -> None:
        """A datetime without a zone is a bug in the caller, not a time in UTC."""
        naive = RunRecord("backup", datetime(2026, 1, 1), "schedule", "0" * 12, "x:1", datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="naive datetime"):
            store.claim([naive])

    def test_nothing_to_claim(self, tmp_path: Path) -> None:
        """An empty claim answers without touching the database (here, one that cannot be opened)."""
        assert [] == won(open_store(f"sqlite:///{tmp_path}"), [])


class TestRecord:
    def test_manual_not_unique(self, store: Store) -> None:
        """Manual runs of the same instant are all kept."""
        assert [True, True] == [store.record(run(trigger="manual")), store.record(run(trigger="manual"))]
        assert 2 == len(store.history())

    def test_manual_does_not_claim(self, store: Store) -> None:
        """A manual run leaves the instant free for the schedule."""
        store.record(run(trigger="manual"))
        assert [True] == won(store, [run()])

    def test_conflicting_claim(self, store: Store) -> None:
        """A scheduled run recorded late loses to a claim of the same instant, and inserts nothing."""
        store.claim([run()])
        assert False is store.record(run(status="succeeded"))
        assert ["running"] == [r.status for r in store.history()]

    def test_same_run_twice(self, store: Store) -> None:
        """Writing the same run again (a retry) inserts nothing."""
        record = run(trigger="manual")
        assert [True, False] == [store.record(record), store.record(record)]

    def test_finished_run(self, store: Store) -> None:
        """A run fired while the store was down is recorded whole."""
        record = run(
            status="failed",
            finished_at=T0 + timedelta(seconds=3),
            exit_code=2,
            duration_s=2.5,
            output="boom",
        )
        assert True is store.record(record)
        assert [record] == store.history()


class TestLastSuccesses:
    def test_when_each_task_last_succeeded(self, store: Store) -> None:
        """Per task, the end of its newest successful run; failures and unfinished runs do not count."""
        ok, failed, later = run("a", 0), run("a", 10), run("b", 5)
        store.claim([ok, failed, later, run("c", 1)])
        finish(store, ok)
        finish(store, failed, status="failed", exit_code=1)
        finish(store, later)
        assert {
            "a": ok.started_at + timedelta(seconds=1),
            "b": later.started_at + timedelta(seconds=1),
        } == store.last_successes()


class TestRelease:
    def test_given_back_claim_can_be_claimed_again(self, make_store: Callable[..., Store]) -> None:
        """A released claim is gone: another clock's claim of that instant then wins."""
        first, second = make_store(), make_store()
        record = run()
        first.claim([record])
        assert [False] == won(second, [run()])
        first.release(record.run_id)
        assert ([], {}) == (first.history(), first.last_claimed())
        assert [True] == won(second, [run()])

    def test_a_run_that_started_is_never_released(self, store: Store) -> None:
        """Releasing a finished run, or an unknown run id, deletes nothing."""
        record = run()
        store.claim([record])
        finish(store, record)
        store.release(record.run_id)
        store.release("not-a-run-id")
        assert [record.run_id] == [r.run_id for r in store.history()]


class TestMarkLost:
    def test_postgres_marks_only_its_own_name(self, make_store: Callable[..., Store], url: str) -> None:
        """Runs left running under the starting clock's own name are lost; others' (maybe alive) are not,
        unless the store is SQLite with the single-clock lock held: then every running run is lost."""
        store = make_store()
        mine, theirs, done = run("a"), replace(run("b"), claimed_by="other:9"), run("c")
        store.claim([mine, theirs, done])
        finish(store, done)
        if url.startswith("sqlite"):
            store.lock_single_clock()
        assert (2 if url.startswith("sqlite") else 1) == store.mark_lost("clock.1:4242", T0)
        statuses = {r.task: r.status for r in store.history()}
        assert "lost" == statuses["a"]
        assert ("lost" if url.startswith("sqlite") else "running") == statuses["b"]
        assert "succeeded" == statuses["c"]

    def test_a_lost_run_that_finishes_gets_its_status(self, store: Store) -> None:
        """A run marked lost that finishes after all (a run-now still going) is recorded as it ended."""
        record = run("a", trigger="manual")
        store.record(record)
        store.mark_lost(record.claimed_by, T0)
        finish(store, record, status="failed", exit_code=1)
        assert ["failed"] == [r.status for r in store.history()]


class TestFinish:
    def test_sets_the_end(self, store: Store) -> None:
        """The end of a run replaces its running state."""
        record = run()
        store.claim([record])
        finish(store, record, status="killed", exit_code=None, signal="SIGKILL", duration_s=0.5, output="x")
        expected = replace(
            record,
            status="killed",
            finished_at=record.started_at + timedelta(seconds=1),
            signal="SIGKILL",
            duration_s=0.5,
            output="x",
        )
        assert [expected] == store.history()

    def test_unknown_run(self, store: Store) -> None:
        """Finishing a run the store never saw does nothing."""
        store.claim([run()])
        store.finish(
            "feedfacecafe",
            finished_at=T0,
            status="succeeded",
            exit_code=0,
            signal=None,
            duration_s=1.0,
            output=None,
        )
        assert ["running"] == [r.status for r in store.history()]

    def test_retention(self, make_store: Callable[..., Store]) -> None:
        """Each finish keeps its task's newest keep_runs runs; other tasks are untouched."""
        store = make_store(keep_runs=3)
        a_runs = [run("a", minute) for minute in range(5)]
        b_runs = [run("b", minute) for minute in range(5)]
        store.claim([*a_runs, *b_runs])
        for record in a_runs:
            finish(store, record)
        assert [r.run_id for r in reversed(a_runs[2:])] == [r.run_id for r in store.history("a")]
        assert 5 == len(store.history("b"))

    def test_retention_keeps_last_claim(self, make_store: Callable[..., Store]) -> None:
        """Manual runs crowding a task out keep its newest claim, so last_claimed still knows it."""
        store = make_store(keep_runs=2)
        claimed = run("a", 0)
        store.claim([claimed])
        manual = [run("a", minute, "manual") for minute in range(1, 5)]
        for record in manual:
            store.record(record)
            finish(store, record)
        kept = {r.run_id for r in store.history("a")}
        assert {claimed.run_id, manual[-1].run_id, manual[-2].run_id} == kept
        assert {"a": T0} == store.last_claimed()

    def test_output_tail(self, store: Store) -> None:
        """Long output keeps its end, at most STORE_TAIL_BYTES bytes, cut where a character starts."""
        record = run()
        store.claim([record])
        text = "€" * 2000 + "END"  # 6,003 bytes; the last 4,096 start inside a '€'
        finish(store, record, output=text)
        [back] = store.history()
        assert "€" * 1364 + "END" == back.output
        assert 4096 == STORE_TAIL_BYTES

    def test_output_nul(self, store: Store) -> None:
        """A NUL (PostgreSQL text cannot hold it) becomes U+FFFD on both backends."""
        record = run()
        store.claim([record])
        finish(store, record, output="a\x00b")
        assert ["a\ufffdb"] == [r.output for r in store.history()]

    def test_recorded_output_tail(self, store: Store) -> None:
        """A recorded run's output is cut the same way."""
        store.record(run(trigger="manual", output="x" * 5000 + "y"))
        [back] = store.history()
        assert "x" * 4095 + "y" == back.output


class TestLastClaimed:
    def test_newest_claim_per_task(self, store: Store) -> None:
        """Per task, its newest claimed instant, whatever became of the run; manual runs do not count."""
        done = run("a", 10, "catch_up")
        store.claim([run("a", 0), done, run("b", 5)])
        finish(store, done, status="failed", exit_code=1)
        store.record(run("a", 20, "manual"))
        store.record(run("c", 30, "manual"))
        claimed = store.last_claimed()
        assert {"a": T0 + timedelta(minutes=10), "b": T0 + timedelta(minutes=5)} == claimed
        assert {UTC} == {at.tzinfo for at in claimed.values()}

    def test_empty(self, store: Store) -> None:
        """A new database has no claims."""
        assert {} == store.last_claimed()


class TestHistory:
    def test_newest_started_first(self, store: Store) -> None:
        """Ordered by start, not by schedule or by insertion."""
        late, early, middle = run("a", 0, started_minutes=9), run("b", 1), run("a", 2, started_minutes=5)
        store.claim([late, early, middle])
        assert [late.run_id, middle.run_id, early.run_id] == [r.run_id for r in store.history()]

    def test_ties_newest_inserted_first(self, store: Store) -> None:
        """Runs that started at the same moment come newest inserted first."""
        first, second = run("a", 0), run("b", 0)
        store.claim([first])
        store.claim([second])
        assert [second.run_id, first.run_id] == [r.run_id for r in store.history()]

    def test_limit_and_task(self, store: Store) -> None:
        """limit caps the count; a task name filters."""
        store.claim([run(task, minute) for task in ("a", "b") for minute in range(5)])
        assert (10, 3, 0) == (len(store.history()), len(store.history(limit=3)), len(store.history(limit=0)))
        assert [T0 + timedelta(minutes=m) for m in (4, 3)] == [r.scheduled_for for r in store.history("b", 2)]
        assert {"b"} == {r.task for r in store.history("b")}

    def test_unknown_task(self, store: Store) -> None:
        """A task without runs has an empty history."""
        store.claim([run("a")])
        assert [] == store.history("nope")

    def test_by_status(self, store: Store) -> None:
        """statuses keeps the runs with one of them; an empty list keeps none."""
        ok, bad, slow, going = run("a", 0), run("a", 1), run("b", 2), run("b", 3)
        store.claim([ok, bad, slow, going])
        finish(store, ok)
        finish(store, bad, status="failed", exit_code=1)
        finish(store, slow, status="timed_out", exit_code=None, signal="SIGTERM")
        assert [bad.run_id] == [r.run_id for r in store.history(statuses=["failed"])]
        assert [slow.run_id, bad.run_id] == [
            r.run_id for r in store.history(statuses=["failed", "timed_out"])
        ]
        assert [going.run_id] == [r.run_id for r in store.history("b", statuses=["running"])]
        assert [] == store.history(statuses=[])

    def test_unknown_status(self, store: Store) -> None:
        """A status no run can have is a ValueError naming the known ones."""
        with pytest.raises(ValueError, match="unknown run status 'faild': use running, succeeded, enqueued"):
            store.history(statuses=["faild"])

    def test_since(self, store: Store) -> None:
        """since keeps the runs started at or after it, whatever the zone it is given in."""
        records = [run("a", minutes) for minutes in range(4)]
        store.claim(records)
        since = (T0 + timedelta(minutes=2)).astimezone(timezone(timedelta(hours=-5)))
        assert [r.run_id for r in records[:1:-1]] == [r.run_id for r in store.history(since=since)]
        assert [records[3].run_id] == [
            r.run_id for r in store.history(since=since, limit=1, statuses=["running"])
        ]


class TestAttempt:
    def test_claimed_and_recorded_runs_keep_it(self, store: Store) -> None:
        """A run's attempt is stored as given, claimed or recorded; 1 unless told."""
        first, retry = run("a", 0), replace(run("a", 0, "retry", started_minutes=1), attempt=3)
        store.claim([first])
        store.record(retry)
        finish(store, retry, status="failed", exit_code=1)
        assert [(retry.run_id, 3, "failed"), (first.run_id, 1, "running")] == [
            (r.run_id, r.attempt, r.status) for r in store.history()
        ]

    def test_skipped_claim_keeps_it(self, make_store: Callable[..., Store]) -> None:
        """A claim taken as skipped (overlap across clocks) keeps its attempt too."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        b.heartbeat(clock(B))
        a.claim([started("t", A)])
        skipped = replace(run("t", 1), claimed_by=B, attempt=2)
        b.claim([skipped], {"t": "skip"})
        [row] = [r for r in b.history() if r.run_id == skipped.run_id]
        assert ("skipped", 2) == (row.status, row.attempt)


class TestRunStatuses:
    def test_every_status_written_is_known(self) -> None:
        """The statuses a run can end with, and the store's own, are all in RUN_STATUSES."""
        from typing import get_args

        from scheduler.runner import RunStatus

        assert {"running", "skipped", "lost", *get_args(RunStatus)} == set(RUN_STATUSES)


class TestLastRuns:
    def test_newest_per_task(self, store: Store) -> None:
        """Each task's newest run, by start."""
        a_new, b_only = run("a", 0, started_minutes=7), run("b", 3)
        store.claim([a_new, run("a", 5), b_only])
        store.record(run("a", 1, "manual", started_minutes=6))
        assert {"a": a_new, "b": b_only} == store.last_runs()

    def test_before_leaves_out_later_starts(self, store: Store) -> None:
        """With before, a task's newest run started by then: a claim made ahead is not its last run."""
        done, ahead, only_ahead = run("a", 0), run("a", 1), run("b", 1)
        store.claim([done, ahead, only_ahead])
        assert {"a": done} == store.last_runs(before=T0 + timedelta(seconds=30))

    def test_empty(self, store: Store) -> None:
        """A new database has no runs."""
        assert {} == store.last_runs()


class TestLockSingleClock:
    def test_second_clock_refused(self, tmp_path: Path) -> None:
        """A second clock on the same SQLite file is refused, told why and what to use instead."""
        url = f"sqlite:///{tmp_path / 'state.db'}"
        first, second = open_store(url), open_store(url)
        try:
            first.lock_single_clock()
            first.lock_single_clock()
            message = (
                rf"another clock \(pid {os.getpid()}\) uses this SQLite file .*; "
                r"SQLite is for one clock on one machine: to run several clocks, use PostgreSQL"
            )
            with pytest.raises(StoreError, match=message):
                second.lock_single_clock()
            assert f"{os.getpid()}\n" == (tmp_path / "state.db.lock").read_text()
        finally:
            first.close()
            second.close()

    def test_free_after_close(self, tmp_path: Path) -> None:
        """Closing the store lets the next clock in."""
        url = f"sqlite:///{tmp_path / 'state.db'}"
        first, second = open_store(url), open_store(url)
        first.lock_single_clock()
        first.close()
        try:
            second.lock_single_clock()
        finally:
            second.close()

    def test_postgres_no_lock(self, postgres_url: str) -> None:
        """PostgreSQL takes any number of clocks."""
        first, second = open_store(postgres_url), open_store(postgres_url)
        first.lock_single_clock()
        second.lock_single_clock()
        first.close()
        second.close()


def clock(clock_id: str, digest: str = "abc") -> ClockInfo:
    return ClockInfo(clock_id, clock_id.split(":")[0], int(clock_id.split(":")[1]), "0.1.0", digest)


A, B = "a.1:10:aaaaaa", "b.1:20:bbbbbb"
LONG_AGO = "2000-01-01T00:00:00.000000+00:00"


def ago(seconds: float) -> str:
    """A moment this long before now, as both backends store it."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="microseconds")


def started(task: str, by: str, minutes: int = 0) -> RunRecord:
    """A claimed run of `task` by the clock `by`, started: it is `running` in the store."""
    return replace(run(task, minutes), claimed_by=by)


class TestClocks:
    def test_registered_by_heartbeat(self, store: Store) -> None:
        """A clock's first heartbeat registers it; clocks() lists it alive, with what it said of itself."""
        beat = store.heartbeat(clock(A))
        [row] = store.clocks()
        assert (A, "a.1", 10, "0.1.0", "abc", True) == (
            row.id,
            row.host,
            row.pid,
            row.version,
            row.config_digest,
            row.alive,
        )
        assert row.started_at <= row.heartbeat_at
        assert [A] == [c.id for c in beat.clocks]
        assert ([], {}) == (beat.stop, beat.lost)

    def test_digest_follows_the_heartbeat(self, store: Store) -> None:
        """A later heartbeat carries the new digest; started_at stays."""
        store.heartbeat(clock(A))
        first = store.clocks()[0]
        store.heartbeat(clock(A, "def"))
        [row] = store.clocks()
        assert ("def", first.started_at) == (row.config_digest, row.started_at)

    def test_clean_stop(self, make_store: Callable[..., Store]) -> None:
        """A stopped clock is not alive, and its runs are never marked lost by the others."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        a.claim([started("t", A)])
        a.stop_clock(A)
        beat = b.heartbeat(clock(B))
        assert {} == beat.lost
        assert {A: False, B: True} == {c.id: c.alive for c in b.clocks()}
        assert ["running"] == [r.status for r in b.history("t")]

    def test_dead_clock_runs_lost_and_claims_released(
        self, make_store: Callable[..., Store], raw: Raw
    ) -> None:
        """A clock not heard from for DEAD_AFTER_S is dead: at a live clock's heartbeat its running runs
        become lost, and its claims for instants due after it was last heard from are deleted, so that
        another clock can claim them."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        now = datetime.now(UTC)
        going = replace(started("t", A, 0), started_at=now - timedelta(minutes=5))
        ahead = replace(started("t", A, 1), started_at=now)
        a.claim([going, ahead])
        raw(f"UPDATE scheduler_clocks SET heartbeat_at = '{ago(60)}'")
        beat = b.heartbeat(clock(B))
        assert {A: (1, 1)} == beat.lost
        assert [(going.run_id, "lost")] == [(r.run_id, r.status) for r in b.history("t")]
        assert [True] == won(b, [replace(ahead, run_id="0" * 12, claimed_by=B)])
        assert {} == b.heartbeat(clock(B)).lost  # once
        assert {A: False, B: True} == {c.id: c.alive for c in b.clocks()}

    def test_a_live_clock_is_left_alone(self, make_store: Callable[..., Store]) -> None:
        """Another clock's runs stay running while its lease runs."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        a.claim([started("t", A)])
        assert {} == b.heartbeat(clock(B)).lost
        assert ["running"] == [r.status for r in b.history()]

    def test_old_clocks_pruned(self, store: Store, raw: Raw) -> None:
        """Clocks stopped or dead for over 7 days are forgotten."""
        store.heartbeat(clock(A))
        store.stop_clock(A)
        raw(f"UPDATE scheduler_clocks SET stopped_at = '{LONG_AGO}'")
        store.heartbeat(clock(B))
        assert [B] == [c.id for c in store.clocks()]

    def test_same_name_restarted_marked_at_once(self, make_store: Callable[..., Store], url: str) -> None:
        """The fast path: a clock starting under the name (host and pid) of one that left runs running
        marks them lost at once, whatever their token; a longer pid with the same digits is another."""
        store = make_store()
        same = replace(run("a"), claimed_by="web.1:42:old000")
        older = replace(run("b"), claimed_by="web.1:42")
        other = replace(run("c"), claimed_by="web.1:421:xyz000")
        store.claim([same])
        store.claim([older])
        store.claim([other])
        assert 2 == store.mark_lost("web.1:42:new000", T0)
        assert {"a": "lost", "b": "lost", "c": "running"} == {r.task: r.status for r in store.history()}


class TestRunning:
    def test_only_runs_going_on_live_clocks(self, make_store: Callable[..., Store], raw: Raw) -> None:
        """running(): started, not ended, on a live clock; not ended runs, claims ahead, runs of a stopped
        or dead clock, or of no clock at all (run-now)."""
        a, b, c = make_store(), make_store(), make_store()
        now = datetime.now(UTC)
        for store, clock_id in ((a, A), (b, B), (c, "c.1:30:cccccc")):
            store.heartbeat(clock(clock_id))
        going = replace(started("t", A), started_at=now - timedelta(minutes=1))
        ended = replace(started("u", A), started_at=now - timedelta(minutes=2))
        ahead = replace(started("v", A), started_at=now + timedelta(minutes=5))
        stopped = replace(started("w", B), started_at=now - timedelta(minutes=1))
        dead = replace(started("x", "c.1:30:cccccc"), started_at=now - timedelta(minutes=1))
        manual = replace(run("y", 0, "manual"), claimed_by="here:99:abcdef", started_at=now)
        a.claim([going, ended, ahead])
        finish(a, ended)
        b.claim([stopped])
        b.stop_clock(B)
        c.claim([dead])
        raw(f"UPDATE scheduler_clocks SET heartbeat_at = '{ago(60)}' WHERE id = 'c.1:30:cccccc'")
        a.record(manual)
        assert [going.run_id] == [r.run_id for r in a.running()]
        assert ([going.run_id], []) == ([r.run_id for r in a.running("t")], a.running("w"))

    def test_empty(self, store: Store) -> None:
        """A new database has nothing running."""
        assert [] == store.running()


class TestOverlapAcrossClocks:
    def test_skip_takes_the_instant_as_skipped(self, make_store: Callable[..., Store]) -> None:
        """skip: while another live clock runs the task, the instant is taken (no clock runs it) and
        recorded as skipped, and the answer names that clock."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        b.heartbeat(clock(B))
        a.claim([started("t", A, 0)])
        nxt = started("t", B, 1)
        assert [Claim(False, A)] == b.claim([nxt], {"t": "skip"})
        assert [Claim(False)] == a.claim([replace(nxt, run_id="1" * 12, claimed_by=A)], {"t": "skip"})
        assert ["skipped", "running"] == [r.status for r in b.history("t")]

    def test_skip_claimed_ahead_leaves_the_instant_free(self, make_store: Callable[..., Store]) -> None:
        """Claimed ahead, a skip instant that another clock's run overlaps for now is not taken: the answer
        names the clock, and a claim when due (the run has ended) wins it."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        b.heartbeat(clock(B))
        first = started("t", A, 0)
        a.claim([first])
        nxt = started("t", B, 1)
        assert [Claim(False, A)] == b.claim([nxt], {"t": "skip"}, ahead=True)
        assert ["running"] == [r.status for r in b.history("t")]
        a.finish(
            first.run_id,
            finished_at=T0,
            status="succeeded",
            exit_code=0,
            signal=None,
            duration_s=1,
            output=None,
        )
        assert [Claim(True)] == b.claim([nxt], {"t": "skip"})

    def test_skip_ignores_dead_and_own_runs(self, make_store: Callable[..., Store], raw: Raw) -> None:
        """The claimer's own runs are its own business, and a dead clock's runs do not count."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        b.heartbeat(clock(B))
        b.claim([started("t", B, 0)])
        assert [Claim(True)] == b.claim([started("t", B, 1)], {"t": "skip"})
        a.claim([started("u", A, 0)])
        raw(f"UPDATE scheduler_clocks SET heartbeat_at = '{LONG_AGO}' WHERE id = '{A}'")
        assert [Claim(True)] == b.claim([started("u", B, 1)], {"u": "skip"})

    def test_allow_unchanged(self, make_store: Callable[..., Store]) -> None:
        """Tasks not named in overlap are claimed as before."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        b.heartbeat(clock(B))
        a.claim([started("t", A, 0)])
        assert [Claim(True)] == b.claim([started("t", B, 1)], {"other": "skip"})

    def test_replace_asks_the_other_clock_to_stop(self, make_store: Callable[..., Store]) -> None:
        """replace: the claimer wins, and the other clock's next heartbeat returns the runs to stop, once."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        b.heartbeat(clock(B))
        old = started("t", A, 0)
        a.claim([old])
        assert [Claim(True, A)] == b.claim([started("t", B, 1)], {"t": "replace"})
        assert [] == b.heartbeat(clock(B)).stop
        assert [old.run_id] == a.heartbeat(clock(A)).stop
        assert [] == a.heartbeat(clock(A)).stop

    def test_concurrent_skip_claims_one_winner(self, make_store: Callable[..., Store]) -> None:
        """Two clocks claiming the same instants together, with overlap checks: each instant is taken once."""
        stores = [make_store() for _ in range(2)]
        ids = [A, B]
        for s, i in zip(stores, ids, strict=True):
            s.heartbeat(clock(i))
        barrier = threading.Barrier(2)

        def claim(n: int) -> list[bool]:
            barrier.wait()
            records = [started(f"t{m}", ids[n], m) for m in range(50)]
            return won(stores[n], records) if n else [c.won for c in stores[n].claim(records, {"t1": "skip"})]

        with ThreadPoolExecutor(2) as pool:
            first, second = pool.map(claim, range(2))
        assert [1] * 50 == [x + y for x, y in zip(first, second, strict=True)]

    def test_unknown_policy(self, store: Store) -> None:
        """Only skip, replace and allow are policies."""
        with pytest.raises(ValueError, match="unknown overlap policy 'sometimes'"):
            store.claim([run()], {"backup": "sometimes"})


class TestNamespace:
    def test_apps_never_meet(self, make_store: Callable[..., Store]) -> None:
        """Two apps on one database claim the same task's instants each, and see only their own runs and
        clocks."""
        one, two = make_store(namespace="one"), make_store(namespace="two")
        record = run("cleanup")
        assert [True] == won(one, [record])
        assert [True] == won(two, [replace(record, run_id="2" * 12)])
        one.heartbeat(clock(A))
        two.heartbeat(clock(B))
        assert [A] == [c.id for c in one.clocks()]
        assert [record.run_id] == [r.run_id for r in one.history()]
        assert ["2" * 12] == [r.run_id for r in two.last_runs().values()]
        assert 1 == two.mark_lost(f"{record.claimed_by}:000000", T0)  # its own run only
        assert ["running"] == [r.status for r in one.history()]

    def test_default_namespace_keeps_todays_rows(self, make_store: Callable[..., Store]) -> None:
        """'' is the namespace of the rows written before namespaces: a store without one sees them."""
        record = run()
        make_store().claim([record])
        assert [record.run_id] == [r.run_id for r in make_store().history()]
        assert [] == make_store(namespace="other").history()


def drop_control_plane(raw: Raw) -> None:
    """Take a database back to before the control plane's migration (its tables and index)."""
    for table in ("overrides", "requests", "actions"):
        raw(f"DROP TABLE scheduler_{table}")
    raw("DROP INDEX scheduler_runs_started")


class TestUpgrade:
    def test_version_1_database_upgraded_in_place(self, make_store: Callable[..., Store], raw: Raw) -> None:
        """A database at schema version 1 (before leases) keeps its runs, in the '' namespace."""
        old = make_store()
        old.connect()
        record = run()
        old.claim([record])
        old.close()
        drop_control_plane(raw)
        raw("DROP TABLE scheduler_clocks")
        for index in ("claim", "task_started", "running"):
            raw(f"DROP INDEX scheduler_runs_{index}")
        for column in ("namespace", "stop_requested_at", "attempt"):
            raw(f"ALTER TABLE scheduler_runs DROP COLUMN {column}")
        for statement in store_module._INDEXES[:2]:
            raw(statement)
        raw("UPDATE scheduler_schema SET version = 1")
        store = make_store()
        assert [record.run_id] == [r.run_id for r in store.history()]
        assert [False] == won(store, [replace(record, run_id="3" * 12)])
        assert len(store_module._SQLITE_MIGRATIONS) == schema_version(raw)

    def test_database_before_attempts_gets_them(self, make_store: Callable[..., Store], raw: Raw) -> None:
        """A database at the schema version before attempts keeps its runs, each taken as a first attempt."""
        old = make_store()
        record = run()
        old.claim([record])
        old.close()
        before = store_module._SQLITE_MIGRATIONS.index(store_module._ATTEMPT)
        drop_control_plane(raw)
        raw("ALTER TABLE scheduler_runs DROP COLUMN attempt")
        raw(f"UPDATE scheduler_schema SET version = {before}")
        store = make_store()
        assert [(record.run_id, 1)] == [(r.run_id, r.attempt) for r in store.history()]
        assert len(store_module._SQLITE_MIGRATIONS) == schema_version(raw)

    def test_database_before_the_control_plane_gets_it(
        self, make_store: Callable[..., Store], raw: Raw
    ) -> None:
        """A database at the schema version before pauses and run requests keeps its runs and clocks, and
        takes pauses and requests once upgraded."""
        old = make_store()
        old.heartbeat(clock(A))
        record = run()
        old.claim([record])
        old.close()
        drop_control_plane(raw)
        raw(f"UPDATE scheduler_schema SET version = {len(store_module._SQLITE_MIGRATIONS) - 1}")
        store = make_store()
        assert [record.run_id] == [r.run_id for r in store.history()]
        assert [A] == [c.id for c in store.clocks()]
        store.pause("backup", by="ops")
        assert 1 == store.request_run("backup", by="ops")
        assert len(store_module._SQLITE_MIGRATIONS) == schema_version(raw)


class TestPrivacy:
    def test_sqlite_files_private_whatever_the_umask(self, tmp_path: Path) -> None:
        """The database, its -wal and -shm files and the lock file are 0600, under umask 022."""
        old = os.umask(0o022)
        try:
            store = open_store(f"sqlite:///{tmp_path / 'private' / 'state.db'}")
            store.lock_single_clock()
            store.claim([run()])
            names = ["state.db", "state.db-wal", "state.db-shm", "state.db.lock"]
            modes = {name: (tmp_path / "private" / name).stat().st_mode & 0o777 for name in names}
            store.close()
        finally:
            os.umask(old)
        assert {name: 0o600 for name in names} == modes

    def test_existing_file_tightened(self, tmp_path: Path) -> None:
        """A database file an older version left readable by all is made private."""
        path = tmp_path / "state.db"
        path.touch(0o644)
        os.chmod(path, 0o644)
        store = open_store(f"sqlite:///{path}")
        store.connect()
        store.close()
        assert 0o600 == path.stat().st_mode & 0o777

    def test_readers_do_not_create_the_file(self, tmp_path: Path) -> None:
        """create=False: a missing SQLite file (or folder) is a StoreMissingError naming the path, and
        nothing is created; an existing file opens as usual."""
        path = tmp_path / "typo" / "state.db"
        store = open_store(f"sqlite:///{path}", create=False)
        for _ in range(2):
            with pytest.raises(StoreMissingError, match=f"no database file {path} "):
                store.history()
        assert not (tmp_path / "typo").exists()
        open_store(f"sqlite:///{path}").connect()
        assert [] == store.history()
        store.close()

    @pytest.mark.parametrize("how", ["deleted", "replaced"])
    def test_file_deleted_under_the_clock(self, tmp_path: Path, how: str) -> None:
        """A database file deleted or replaced under an open store is noticed at the heartbeat (StoreError),
        and the next call opens the file at the path again: no write goes to a deleted inode."""
        path = tmp_path / "state.db"
        store = open_store(f"sqlite:///{path}")
        store.heartbeat(clock(A))
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        if how == "replaced":
            sqlite3.connect(path).close()
        with pytest.raises(StoreError, match=f"the database file was {how}"):
            store.heartbeat(clock(A))
        record = run()
        assert [True] == won(store, [record])
        store.close()
        assert [record.run_id] == [r.run_id for r in open_store(f"sqlite:///{path}").history()]


def soon(hours: float = 1) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


class TestOverride:
    def test_holds_until_its_end(self) -> None:
        """A pause holds back instants before its `until`, not that instant or later ones."""
        pause = Override("t", True, T0, "", "ops", T0 - timedelta(hours=1))
        assert pause.holds(T0 - timedelta(microseconds=1))
        assert not pause.holds(T0)
        assert not pause.holds(T0 + timedelta(days=1))

    def test_open_ended_and_resumed(self) -> None:
        """Without `until` a pause holds for ever; a resumed task's row holds nothing."""
        assert Override("t", True, None, "", "ops", T0).holds(T0 + timedelta(days=3650))
        assert not Override("t", False, None, "", "ops", T0).holds(T0)

    def test_to_json(self) -> None:
        """What `list --json` and a dashboard show of a pause."""
        assert {
            "paused": True,
            "until": "2026-11-27T10:00:00+00:00",
            "reason": "disk full",
            "by": "ops",
            "at": "2026-11-27T09:00:00+00:00",
        } == Override("t", True, T0, "disk full", "ops", T0 - timedelta(hours=1)).to_json()


class TestPause:
    def test_every_store_sees_the_pause(self, make_store: Callable[..., Store]) -> None:
        """A pause written by one process (a CLI) is what another (a clock) reads, with who, why and until."""
        cli, clock_store = make_store(), make_store()
        until = soon()
        written = cli.pause("backup", by="ann@laptop", until=until, reason="disk full")
        cli.close()
        assert {"backup": written} == clock_store.overrides()
        assert (True, until, "disk full", "ann@laptop") == (
            written.paused,
            written.until,
            written.reason,
            written.by,
        )
        assert written.holds(datetime.now(UTC))

    def test_pausing_again_replaces_the_pause(self, store: Store) -> None:
        """The newest pause of a task is its pause: a later one without `until` holds for ever."""
        store.pause("backup", by="ann", until=soon(), reason="first")
        store.pause("backup", by="bob")
        [pause] = store.overrides().values()
        assert (None, "", "bob") == (pause.until, pause.reason, pause.by)

    def test_until_must_be_ahead(self, store: Store) -> None:
        """A pause that would end before now is refused, naming the task and the instant; nothing is
        written."""
        until = datetime.now(UTC) - timedelta(minutes=1)
        with pytest.raises(
            ControlError,
            match=re.escape(f"task 'backup': cannot pause until {until.isoformat()}: that is not after now"),
        ):
            store.pause("backup", by="ann", until=until)
        assert {} == store.overrides()
        assert [] == store.actions()

    def test_naive_until(self, store: Store) -> None:
        """`until` must be aware."""
        with pytest.raises(ValueError, match="naive datetime"):
            store.pause("backup", by="ann", until=datetime(2030, 1, 1))

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"task": "", "by": "ann"}, "task must not be empty, got ''"),
            ({"task": "backup", "by": "  "}, "by must not be empty, got '  '"),
            (
                {"task": "backup", "by": "ann", "reason": "x" * 1001},
                "reason is 1001 characters long, over 1000",
            ),
            ({"task": "backup", "by": "a\x00b"}, r"by 'a\\x00b' holds a NUL character"),
        ],
    )
    def test_bad_text(self, store: Store, fields: dict[str, Any], message: str) -> None:
        """Names and reasons are checked before anything is written; the error names the value."""
        with pytest.raises(ControlError, match=message):
            store.pause(**fields)

    def test_resume(self, make_store: Callable[..., Store]) -> None:
        """resume() ends the pause for everyone and says whether one held; the row then names who resumed."""
        a, b = make_store(), make_store()
        a.pause("backup", by="ann")
        assert b.resume("backup", by="bob")
        [row] = a.overrides().values()
        assert (False, "bob") == (row.paused, row.by)
        assert not row.holds(datetime.now(UTC))
        assert not b.resume("backup", by="bob")
        assert not b.resume("never-paused", by="bob")

    def test_resume_after_the_pause_ran_out(self, store: Store, raw: Raw) -> None:
        """A pause past its `until` holds nothing any more: resuming it says so."""
        store.pause("backup", by="ann", until=soon())
        raw("UPDATE scheduler_overrides SET until_at = changed_at")
        [row] = store.overrides().values()
        assert not row.holds(datetime.now(UTC))
        assert not store.resume("backup", by="bob")

    def test_audit_trail(self, store: Store) -> None:
        """Every pause, resume and run request is in the audit trail, newest first, with who and what;
        `before` pages through it and `task` filters it."""
        until = soon()
        store.pause("backup", by="ann", until=until, reason="disk full")
        store.resume("backup", by="bob")
        store.resume("backup", by="bob")
        request_id = store.request_run("report", by="cat")
        store.pause("report", by="cat")
        actions = store.actions()
        assert [
            ("cat", "pause", "report", ""),
            ("cat", "run", "report", f"request {request_id}"),
            ("bob", "resume", "backup", "was not paused"),
            ("bob", "resume", "backup", ""),
            ("ann", "pause", "backup", f"until {until.isoformat()}; reason: disk full"),
        ] == [(a.by, a.action, a.task, a.detail) for a in actions]
        assert actions == sorted(actions, key=lambda a: a.id, reverse=True)
        assert actions[2:4] == store.actions(limit=2, before=actions[1].id)
        assert ["resume", "resume", "pause"] == [a.action for a in store.actions("backup")]
        assert all(a.at <= datetime.now(UTC) for a in actions)

    def test_namespaces_apart(self, make_store: Callable[..., Store]) -> None:
        """A pause, a request and the audit trail belong to their namespace."""
        billing, shop = make_store(namespace="billing"), make_store(namespace="shop")
        billing.pause("backup", by="ann")
        billing.request_run("backup", by="ann")
        assert ({}, [], []) == (shop.overrides(), shop.requests(), shop.actions())
        assert [] == shop.poll(A, {"backup"}).requests
        assert ["backup"] == list(billing.overrides())


class TestRunRequests:
    def test_one_clock_claims_a_request(self, make_store: Callable[..., Store]) -> None:
        """A pending request is claimed by the first clock that polls and knows the task; another clock's
        poll gets nothing."""
        web, a, b = make_store(), make_store(), make_store()
        a.heartbeat(clock(A))
        b.heartbeat(clock(B))
        request_id = web.request_run("backup", by="ann")
        [pending] = web.requests()
        assert (request_id, "backup", "ann", "pending", None) == (
            pending.id,
            pending.task,
            pending.requested_by,
            pending.state,
            pending.claimed_by,
        )
        [held] = a.poll(A, {"backup", "other"}).requests
        assert [] == b.poll(B, {"backup"}).requests
        assert (request_id, "claimed", A) == (held.id, held.state, held.claimed_by)
        assert held.claimed_at is not None
        assert held.claimed_at >= pending.requested_at
        assert [held] == web.requests(state="claimed")

    def test_unknown_task_stays_pending(self, store: Store) -> None:
        """A clock that does not know the task leaves its request for another clock; a stopping clock
        (tasks None) claims nothing."""
        store.heartbeat(clock(A))
        store.request_run("new-task", by="ann")
        assert [] == store.poll(A, {"backup"}).requests
        assert [] == store.poll(A, None).requests
        assert ["pending"] == [r.state for r in store.requests()]

    def test_held_until_started(self, store: Store) -> None:
        """A clock's poll answers the requests it holds until it notes their start, so that an answer lost
        to a timeout is not a request lost; started, the request names its run."""
        store.heartbeat(clock(A))
        request_id = store.request_run("backup", by="ann")
        assert [request_id] == [r.id for r in store.poll(A, {"backup"}).requests]
        assert [request_id] == [r.id for r in store.poll(A, {"backup"}).requests]
        store.request_started(request_id, "0123456789ab")
        assert [] == store.poll(A, {"backup"}).requests
        [done] = store.requests()
        assert ("started", "0123456789ab", A) == (done.state, done.run_id, done.claimed_by)

    def test_oldest_first_and_bounded(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        """A poll claims the oldest requests first, at most REQUESTS_PER_POLL."""
        monkeypatch.setattr(store_module, "REQUESTS_PER_POLL", 2)
        store.heartbeat(clock(A))
        ids = [store.request_run("backup", by="ann") for _ in range(3)]
        assert ids[:2] == [r.id for r in store.poll(A, {"backup"}).requests]
        store.request_started(ids[0], "0" * 12)
        store.request_started(ids[1], "1" * 12)
        assert ids[2:] == [r.id for r in store.poll(A, {"backup"}).requests]

    def test_expired_once(self, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
        """A request no clock claimed within REQUEST_TTL_S expires, reported by the one poll that expired it;
        it is never claimed afterwards."""
        a, b = make_store(), make_store()
        request_id = a.request_run("unknown", by="ann")
        assert [] == a.poll(A, {"backup"}).expired
        monkeypatch.setattr(store_module, "REQUEST_TTL_S", 0.0)
        [expired] = a.poll(A, {"backup"}).expired
        assert (request_id, "expired", "unknown") == (expired.id, expired.state, expired.task)
        assert Poll({}, [], []) == b.poll(B, {"unknown"})
        assert ["expired"] == [r.state for r in a.requests()]

    def test_only_a_clock_with_a_lease_claims(self, make_store: Callable[..., Store]) -> None:
        """A clock no heartbeat registered (the store was down at its start), or one that stopped, claims
        nothing: a live clock would take the requests it held for lost."""
        a, b = make_store(), make_store()
        a.request_run("backup", by="ann")
        assert [] == a.poll(A, {"backup"}).requests
        b.heartbeat(clock(B))
        b.stop_clock(B)
        assert [] == b.poll(B, {"backup"}).requests
        a.heartbeat(clock(A))
        assert ["backup"] == [r.task for r in a.poll(A, {"backup"}).requests]

    def test_stopping_clock_gives_its_requests_back(self, make_store: Callable[..., Store]) -> None:
        """A clock that stops with every start noted gives back what it holds: another clock claims it."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        b.heartbeat(clock(B))
        request_id = a.request_run("backup", by="ann")
        a.poll(A, {"backup"})
        a.stop_clock(A, release_requests=True)
        assert [request_id] == [r.id for r in b.poll(B, {"backup"}).requests]

    def test_a_dead_clocks_requests_are_lost(self, make_store: Callable[..., Store], raw: Raw) -> None:
        """A request held by a clock that died (or stopped without giving it back) is marked lost at a live
        clock's heartbeat, never run by another; a run its clock did start still gets noted."""
        a, b = make_store(), make_store()
        a.heartbeat(clock(A))
        request_id = a.request_run("backup", by="ann")
        a.poll(A, {"backup"})
        b.heartbeat(clock(B))
        assert ["claimed"] == [r.state for r in b.requests()]
        raw(f"UPDATE scheduler_clocks SET heartbeat_at = '{ago(60)}' WHERE id = '{A}'")
        b.heartbeat(clock(B))
        assert ["lost"] == [r.state for r in b.requests()]
        assert [] == b.poll(B, {"backup"}).requests
        a.request_started(request_id, "0123456789ab")
        assert ["started"] == [r.state for r in b.requests()]

    def test_concurrent_polls_claim_each_request_once(self, make_store: Callable[..., Store]) -> None:
        """Four clocks polling at once, over and over, while requests keep coming: each request is claimed by
        exactly one of them."""
        web = make_store()
        clocks = [f"c.{i}:{i}:cccccc" for i in range(4)]
        stores = [make_store() for _ in clocks]
        for store, clock_id in zip(stores, clocks, strict=True):
            store.heartbeat(clock(clock_id))
        made: list[int] = []
        done = threading.Event()

        def request() -> None:
            for _ in range(40):
                made.append(web.request_run("backup", by="ann"))
            done.set()

        def poll(store: Store, clock_id: str) -> list[int]:
            won: list[int] = []
            while True:
                finished = done.is_set()
                for held in store.poll(clock_id, {"backup"}).requests:
                    won.append(held.id)
                    store.request_started(held.id, uuid.uuid4().hex[:12])
                if finished:
                    return won

        with ThreadPoolExecutor(len(stores) + 1) as pool:
            pollers = [
                pool.submit(poll, store, clock_id) for store, clock_id in zip(stores, clocks, strict=True)
            ]
            pool.submit(request).result()
            claimed = [request_id for poller in pollers for request_id in poller.result()]
        assert sorted(made) == sorted(claimed)
        assert 40 == len(set(claimed))
        assert {"started"} == {r.state for r in web.requests(limit=100)}

    def test_pages(self, store: Store) -> None:
        """requests() pages newest first with `before`, and filters by task and state."""
        ids = [store.request_run(task, by="ann") for task in ("a", "b", "a")]
        assert ids[::-1] == [r.id for r in store.requests()]
        assert [ids[0]] == [r.id for r in store.requests(before=ids[1])]
        assert [ids[2], ids[0]] == [r.id for r in store.requests("a", state="pending")]
        with pytest.raises(ValueError, match="unknown request state 'done'"):
            store.requests(state="done")

    def test_validated(self, store: Store) -> None:
        """A request needs a task and someone asking."""
        with pytest.raises(ControlError, match="by must not be empty"):
            store.request_run("backup", by="")


class TestDashboardReads:
    def test_runs_page_without_gaps_or_repeats(self, store: Store) -> None:
        """runs() pages newest first; runs that start meanwhile neither shift nor repeat the later pages,
        and runs started at the same instant are paged by insertion."""
        records = [run(minutes=m) for m in range(5)]
        records += [run(minutes=10, trigger="manual"), run(minutes=10, trigger="manual")]
        for record in records:
            store.record(record)
        first = store.runs(limit=3)
        store.record(run(minutes=20))
        second = store.runs(limit=3, before=first.before)
        third = store.runs(limit=3, before=second.before)
        seen = [r.run_id for page in (first, second, third) for r in page.runs]
        assert [r.run_id for r in records[::-1]] == seen
        assert third.before is None
        assert [r.run_id for r in store.history(limit=8)][1:] == seen

    def test_runs_filtered(self, store: Store) -> None:
        """By task, status and trigger, together."""
        failed = run("a", 1)
        store.claim([failed])
        finish(store, failed, status="failed", exit_code=1)
        store.record(replace(run("a", 2, "manual"), status="failed"))
        store.claim([run("a", 3), run("b", 4)])
        assert [failed.run_id] == [
            r.run_id for r in store.runs("a", status="failed", trigger="schedule").runs
        ]
        assert ["b"] == [
            r.task for r in store.runs(status="running", trigger="schedule").runs if r.task == "b"
        ]
        assert 2 == len(store.runs("a", status="failed").runs)

    def test_runs_bad_arguments(self, store: Store) -> None:
        """A cursor runs() did not make, and a limit out of bounds, are refused, naming them."""
        with pytest.raises(
            ValueError, match=re.escape("before 'yesterday': not a RunPage.before from runs()")
        ):
            store.runs(before="yesterday")
        with pytest.raises(ValueError, match="limit must be from 1 to 1000, not 0"):
            store.runs(limit=0)
        with pytest.raises(ValueError, match="unknown run status 'done': use running, succeeded"):
            store.runs(status="done")


class TestLatestRuns:
    def test_newest_per_task(self, store: Store) -> None:
        """Each named task's newest runs, newest first (by start, then insertion), at most per_task."""
        a = [run("a", m) for m in range(4)]
        twin = run("a", 9, "manual", started_minutes=3)
        store.claim([*a, run("b", 1)])
        store.record(twin)
        latest = store.latest_runs(["a", "b"], 3)
        assert [twin.run_id, a[3].run_id, a[2].run_id] == [r.run_id for r in latest["a"]]
        assert ["b"] == [r.task for r in latest["b"]]
        assert {"a": [twin]} == {
            k: [replace(r, output=None) for r in v] for k, v in store.latest_runs(["a"]).items()
        }

    def test_without_output(self, store: Store) -> None:
        """The output stays in the database: a strip of runs needs none of it."""
        record = run("a")
        store.claim([record])
        finish(store, record, output="x" * 4000)
        [latest] = store.latest_runs(["a"])["a"]
        assert (None, "succeeded", 1.0) == (latest.output, latest.status, latest.duration_s)

    def test_only_tasks_named_and_with_runs(self, make_store: Callable[..., Store]) -> None:
        """Tasks not named, tasks without runs, and other namespaces' runs are left out."""
        mine, theirs = make_store(namespace="mine"), make_store(namespace="theirs")
        mine.claim([run("a"), run("b")])
        theirs.claim([run("c")])
        assert ["a"] == list(mine.latest_runs(["a", "c", "never"]))
        assert {} == mine.latest_runs([])

    def test_bounds(self, store: Store) -> None:
        """per_task from 1 to PAGE_MAX."""
        with pytest.raises(ValueError, match="per_task must be from 1 to 1000, not 0"):
            store.latest_runs(["a"], 0)

    def test_claims_ahead_left_out(self, store: Store) -> None:
        """A claim made ahead, for an instant still to come, is not a task's last run."""
        done = run("a", started_minutes=0)
        ahead = replace(run("a", 1), started_at=datetime.now(UTC) + timedelta(seconds=30))
        store.claim([done, ahead])
        assert [done.run_id] == [r.run_id for r in store.latest_runs(["a"], 5)["a"]]
