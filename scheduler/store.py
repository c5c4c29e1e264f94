"""The run-history store: records every run, and lets several clocks claim each scheduled instant once.

Two backends behind one interface. SQLite (stdlib) serves one clock on one machine; PostgreSQL (psycopg 3,
imported only for a postgresql:// URL) serves any number of clocks, which race for each (task, instant) with
`INSERT ... ON CONFLICT DO NOTHING`: the database's unique index, not the clocks, decides who runs it.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from scheduler.config import DEFAULT_KEEP_RUNS
from scheduler.errors import StoreError

if TYPE_CHECKING:
    import sqlite3

    from psycopg import Connection

OUTPUT_TAIL_BYTES = 4096
"""The output column holds at most this many bytes of UTF-8: the end of the text, where errors are."""
CLAIMED_TRIGGERS = ("schedule", "catch_up")
"""Triggers whose (task, scheduled_for) is unique, so that exactly one clock runs each instant."""
CONNECT_TIMEOUT_S = 2.0
"""No call waits on the database much longer than this: connect, lock and statement timeouts."""

_T = TypeVar("_T")

_ACCEPTED_URLS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgresql://user:password@host:5432/dbname or postgres://..."
)
_PSYCOPG_MISSING = "the PostgreSQL store needs psycopg: pip install 'scheduler[postgres]'"
# Any fixed number works, as long as every scheduler version uses the same one: it only serializes migrators.
_MIGRATION_LOCK_KEY = 0x5C4ED
_TIMEOUT_MS = int(CONNECT_TIMEOUT_S * 1000)
_WAL_RETRY_S = 0.01
# Our options come first so that an `options` in the user's URL overrides them (PostgreSQL: last -c wins).
_PG_OPTIONS = f"-c statement_timeout={_TIMEOUT_MS} -c lock_timeout={_TIMEOUT_MS}"
# Defaults for libpq keywords the URL does not set. TCP keepalives notice a vanished server or network in
# about 5 + 2 * 3 = 11 s instead of the kernel's two hours.
_PG_DEFAULTS = {
    "connect_timeout": str(math.ceil(CONNECT_TIMEOUT_S)),  # libpq: whole seconds
    "application_name": "scheduler",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
}
_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)")

# The claim key's predicate, as the queries use it. The partial unique index spells it out as it was when
# created: changing CLAIMED_TRIGGERS needs a migration that recreates the index.
_CLAIMED_SQL = "trigger IN ({})".format(", ".join(f"'{t}'" for t in CLAIMED_TRIGGERS))
# In RunRecord's field order, so that a row is RunRecord(*row) once its datetimes are converted.
_COLUMNS = (
    "task",
    "scheduled_for",
    "trigger",
    "run_id",
    "claimed_by",
    "started_at",
    "status",
    "finished_at",
    "exit_code",
    "signal",
    "duration_s",
    "output",
)
_DATETIME_COLUMNS = (1, 5, 7)
_COLUMN_LIST = ", ".join(_COLUMNS)
_INDEXES = [
    "CREATE UNIQUE INDEX scheduler_runs_claim ON scheduler_runs (task, scheduled_for)"
    " WHERE trigger IN ('schedule', 'catch_up')",
    "CREATE INDEX scheduler_runs_task_started ON scheduler_runs (task, started_at)",
    "CREATE UNIQUE INDEX scheduler_runs_run_id ON scheduler_runs (run_id)",
]

# Migration N (counting from 1) takes a database from schema version N-1 to N. Append, never edit: a database
# records the version it is at. Both backends have the same number of migrations with the same meaning.
_SQLITE_MIGRATIONS: list[list[str]] = [
    [
        # Datetimes are fixed-width ISO text in UTC ('2026-11-27T10:00:00.000000+00:00'): they sort as text.
        """CREATE TABLE scheduler_runs (
            id INTEGER PRIMARY KEY,
            task TEXT NOT NULL,
            scheduled_for TEXT NOT NULL,
            trigger TEXT NOT NULL,
            run_id TEXT NOT NULL,
            claimed_by TEXT NOT NULL,
            started_at TEXT NOT NULL,
            status TEXT NOT NULL,
            finished_at TEXT,
            exit_code INTEGER,
            signal TEXT,
            duration_s REAL,
            output TEXT
        )""",
        *_INDEXES,
    ],
]
_POSTGRES_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE scheduler_runs (
            id BIGSERIAL PRIMARY KEY,
            task TEXT NOT NULL,
            scheduled_for TIMESTAMPTZ NOT NULL,
            trigger TEXT NOT NULL,
            run_id TEXT NOT NULL,
            claimed_by TEXT NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            status TEXT NOT NULL,
            finished_at TIMESTAMPTZ,
            exit_code INTEGER,
            signal TEXT,
            duration_s DOUBLE PRECISION,
            output TEXT
        )""",
        *_INDEXES,
    ],
]

_SQL_INSERT = f"INSERT INTO scheduler_runs ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(_COLUMNS))})"
# No conflict target: besides the claim key, a run_id already there (a retried record()) inserts nothing.
_SQL_INSERT_ONE = f"{_SQL_INSERT} ON CONFLICT DO NOTHING"
# One statement for a whole batch. Rows go in in key order so that two clocks claiming overlapping batches
# wait for each other instead of deadlocking.
_SQL_INSERT_BATCH = f"""
    INSERT INTO scheduler_runs ({_COLUMN_LIST})
    SELECT {_COLUMN_LIST} FROM unnest(
        ?::text[], ?::timestamptz[], ?::text[], ?::text[], ?::text[], ?::timestamptz[],
        ?::text[], ?::timestamptz[], ?::integer[], ?::text[], ?::double precision[], ?::text[]
    ) AS batch ({_COLUMN_LIST})
    ORDER BY task, scheduled_for
    ON CONFLICT DO NOTHING
    RETURNING run_id
"""
# No RETURNING, here or in SQLite elsewhere: it needs SQLite 3.35, newer than some systems' Python links.
_SQL_TASK_OF_RUN = "SELECT task FROM scheduler_runs WHERE run_id = ?"
# Only a claim that never started: a run that did start keeps its row whatever happens.
_SQL_RELEASE = "DELETE FROM scheduler_runs WHERE run_id = ? AND status = 'running' AND finished_at IS NULL"
_SQL_LOST = """
    UPDATE scheduler_runs SET status = 'lost', finished_at = ?
    WHERE status = 'running' AND finished_at IS NULL
"""
_SQL_FINISH = """
    UPDATE scheduler_runs
    SET finished_at = ?, status = ?, exit_code = ?, signal = ?, duration_s = ?, output = ?
    WHERE run_id = ?
"""
_SQL_RETENTION = f"""
    DELETE FROM scheduler_runs WHERE task = ?
    AND id NOT IN (SELECT id FROM scheduler_runs WHERE task = ? ORDER BY started_at DESC, id DESC LIMIT ?)
    AND id NOT IN (
        SELECT id FROM scheduler_runs WHERE task = ? AND {_CLAIMED_SQL} ORDER BY scheduled_for DESC LIMIT 1
    )
"""
_SQL_LAST_SUCCESSES = (
    "SELECT task, MAX(finished_at) FROM scheduler_runs WHERE status = 'succeeded' AND finished_at IS NOT NULL"
    " GROUP BY task"
)
_SQL_LAST_CLAIMED = f"SELECT task, MAX(scheduled_for) FROM scheduler_runs WHERE {_CLAIMED_SQL} GROUP BY task"
_SQL_HISTORY = (
    f"SELECT {_COLUMN_LIST} FROM scheduler_runs {{where}} ORDER BY started_at DESC, id DESC LIMIT ?"
)
_SQL_LAST_RUNS = f"""
    SELECT {_COLUMN_LIST} FROM scheduler_runs AS run WHERE id = (
        SELECT id FROM scheduler_runs WHERE task = run.task ORDER BY started_at DESC, id DESC LIMIT 1
    ) ORDER BY task
"""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a task, as the store keeps it. Datetimes are aware, in UTC."""

    task: str
    scheduled_for: datetime
    trigger: str  # "schedule", "catch_up", "manual", ...
    run_id: str  # the clock's 12-hex run id
    claimed_by: str  # the clock that ran it, e.g. "myhost:1234"
    started_at: datetime
    status: str = "running"  # running | succeeded | failed | timed_out | killed | skipped
    finished_at: datetime | None = None
    exit_code: int | None = None
    signal: str | None = None  # e.g. "SIGKILL"
    duration_s: float | None = None
    output: str | None = None  # the tail of the output, at most OUTPUT_TAIL_BYTES bytes of UTF-8

    def to_json(self, *, output: bool = False) -> dict[str, object]:
        """The run for `--json` output: datetimes as ISO 8601 UTC strings; the output only when asked."""
        data: dict[str, object] = {
            "task": self.task,
            "scheduled_for": _iso(self.scheduled_for),
            "trigger": self.trigger,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "status": self.status,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "duration_s": self.duration_s,
            "claimed_by": self.claimed_by,
            "run_id": self.run_id,
        }
        if output:
            data["output"] = self.output
        return data


def open_store(url: str, *, keep_runs: int = DEFAULT_KEEP_RUNS) -> Store:
    """A store for this URL, not connected yet: parsing only, no I/O.

    sqlite:///relative/path.db is relative to the current directory (resolved now, so a later chdir does
    not move it). postgres:// is Heroku's spelling of postgresql://. A PostgreSQL URL's query parameters
    (sslmode, options, ...) are passed to libpq.
    """
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be at least 1, not {keep_runs}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        return _SQLiteStore(url, _sqlite_path(url, rest), keep_runs)
    if sep and scheme in ("postgresql", "postgres"):
        return _PostgresStore(url, f"postgresql://{rest}", keep_runs)
    raise StoreError(f"unsupported store URL '{redact(url)}': use {_ACCEPTED_URLS}")


def redact(url: str) -> str:
    """The URL with any password replaced by '***' (postgresql://user:***@host/db): safe to log."""
    scheme, sep, rest = url.partition("://")
    # A SQLite URL's path may hold ':' and '@'; only a (wrong) sqlite://user:pw@host/... has user info.
    if sep and not (scheme.lower() == "sqlite" and rest.startswith("/")):
        before_query, qsep, query = rest.partition("?")
        # The last '@' ends the user info, even if a careless password holds a raw '@' or '/'.
        userinfo, at, hostpath = before_query.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.partition(":")[0]
            url = f"{scheme}{sep}{user}:***@{hostpath}{qsep}{query}"
    return _PASSWORD_PARAM.sub(r"\1***", url)


class Store(ABC):
    """The run history of one database, connected lazily.

    Every method may be called from a worker thread, one call at a time. A database error closes the
    connection and raises StoreError; the next call connects again.
    """

    kind: str
    _migrations: list[list[str]]

    def __init__(self, url: str, keep_runs: int) -> None:
        self.display_url = redact(url)
        self.keep_runs = keep_runs
        self._secrets = _secrets(url)
        self._errors: tuple[type[Exception], ...] = ()

    def connect(self) -> None:
        """Open the connection if it is not open, and create or upgrade the schema.

        Idempotent and safe when several processes do it at once: migrations run in one transaction, one
        migrator at a time. A database created by a newer scheduler is refused, never downgraded.
        """
        if self._connected():
            return
        try:
            self._open()
            self._migrate()
        except StoreError:
            self._drop()
            raise
        except self._errors as exc:
            self._drop()
            raise self._error("connect", exc) from exc

    def claim(self, records: Sequence[RunRecord]) -> list[bool]:
        """Insert these scheduled runs in one transaction; per record, in order: True if this call inserted
        it and so won the claim, False if another clock (or an earlier call) had claimed that instant.

        Only triggers in CLAIMED_TRIGGERS can be claimed. Exactly one of several concurrent claimers of a
        (task, scheduled_for) gets True: the unique index decides.
        """
        for record in records:
            if record.trigger not in CLAIMED_TRIGGERS:
                raise ValueError(f"run {record.run_id}: trigger '{record.trigger}' cannot be claimed")
        if not records:
            return []
        rows = [_row(record, self._to_db) for record in records]
        return self._call("claim runs", lambda: self._insert(rows))

    def record(self, record: RunRecord) -> bool:
        """Insert a run that was not claimed beforehand (manual, or fired while the store was down), maybe
        finished already. False if it conflicts with a claimed (task, scheduled_for) or with its run_id:
        then nothing is inserted."""
        rows = [_row(record, self._to_db)]
        return self._call("record a run", lambda: self._insert(rows))[0]

    def finish(
        self,
        run_id: str,
        *,
        finished_at: datetime,
        status: str,
        exit_code: int | None,
        signal: str | None,
        duration_s: float | None,
        output: str | None,
    ) -> None:
        """Record the end of the run with this run_id (unknown: nothing happens), then apply retention.

        Retention keeps a task's newest keep_runs runs by started_at, and always its newest claimed run,
        which last_claimed() needs and which keeps that instant from being claimed again.
        """
        params = (self._to_db(finished_at), status, exit_code, signal, duration_s, _tail(output), run_id)

        def finish() -> None:
            with self._transaction():
                for (task,) in self._query(_SQL_TASK_OF_RUN, (run_id,)):
                    self._query(_SQL_FINISH, params)
                    self._query(_SQL_RETENTION, (task, task, self.keep_runs, task))

        self._call("finish a run", finish)

    def release(self, run_id: str) -> None:
        """Give back a claim whose run never started (its clock stopped first, or the task was removed), so
        that another clock, or a catch-up, may claim that instant. Unknown run_id: nothing happens."""
        self._call("release a claim", lambda: self._query(_SQL_RELEASE, (run_id,)))

    def mark_lost(self, claimed_by: str, at: datetime) -> int:
        """Mark as `lost` the runs still `running` that no living clock can finish: in SQLite, whose clock
        holds the single-clock lock, all of them; in PostgreSQL, those claimed under `claimed_by`, the
        starting clock's own name (a restarted Heroku dyno often gets the same name and pid). A run that
        does finish later (a run-now still going) gets its real status back. Returns how many."""
        params: tuple[object, ...]
        if self._owns_all_runs():
            sql, params = _SQL_LOST, (self._to_db(at),)
        else:
            sql, params = f"{_SQL_LOST} AND claimed_by = ?", (self._to_db(at), claimed_by)
        return self._call("mark lost runs", lambda: self._update(sql, params))

    def last_claimed(self) -> dict[str, datetime]:
        """Per task, the newest scheduled_for it was claimed for (any status; manual runs do not count)."""
        rows = self._call("read the last claims", lambda: self._query(_SQL_LAST_CLAIMED))
        return {task: self._from_db(at) for task, at in rows}

    def last_successes(self) -> dict[str, datetime]:
        """Per task, when its newest successful run (among those kept) ended."""
        rows = self._call("read the last successes", lambda: self._query(_SQL_LAST_SUCCESSES))
        return {task: self._from_db(at) for task, at in rows}

    def history(self, task: str | None = None, limit: int = 20) -> list[RunRecord]:
        """The newest runs first (by started_at, then insertion), of one task or of all."""
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        params: tuple[object, ...]
        if task is None:
            sql, params = _SQL_HISTORY.format(where=""), (limit,)
        else:
            sql, params = _SQL_HISTORY.format(where="WHERE task = ?"), (task, limit)
        rows = self._call("read the history", lambda: self._query(sql, params))
        return [self._record(row) for row in rows]

    def last_runs(self) -> dict[str, RunRecord]:
        """Per task, its newest run (as history() orders them), by task name."""
        rows = self._call("read the last runs", lambda: self._query(_SQL_LAST_RUNS))
        return {record.task: record for record in map(self._record, rows)}

    @abstractmethod
    def lock_single_clock(self) -> None:
        """Make sure no other clock uses this store, where the backend cannot arbitrate clocks itself.

        Call it once before the clock starts; the lock is held until close().
        """

    def close(self) -> None:
        """Close the connection (a later call reconnects) and release any lock; idempotent."""
        self._drop()

    def _call(self, action: str, operation: Callable[[], _T]) -> _T:
        self.connect()
        try:
            return operation()
        except self._errors as exc:
            self._drop()
            raise self._error(action, exc) from exc

    def _error(self, action: str, exc: Exception) -> StoreError:
        # One line, for the log: libpq adds hints on lines of their own.
        detail = " ".join(str(exc).split()) or type(exc).__name__
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return StoreError(f"run-history store {self.display_url}: cannot {action}: {detail}")

    def _migrate(self) -> None:
        with self._transaction():
            self._lock_migrations()
            self._query("CREATE TABLE IF NOT EXISTS scheduler_schema (version INTEGER NOT NULL)")
            version = self._query("SELECT MAX(version) FROM scheduler_schema")[0][0]
            if version is None:
                self._query("INSERT INTO scheduler_schema (version) VALUES (0)")
                version = 0
            known = len(self._migrations)
            if version > known:
                raise StoreError(
                    f"run-history store {self.display_url}: schema version {version} was created by a newer "
                    f"scheduler (this one knows up to version {known}); upgrade scheduler"
                )
            for statements in self._migrations[version:]:
                for statement in statements:
                    self._query(statement)
            if version < known:
                self._query("UPDATE scheduler_schema SET version = ?", (known,))

    def _record(self, row: Sequence[Any]) -> RunRecord:
        values = list(row)
        for i in _DATETIME_COLUMNS:
            values[i] = None if values[i] is None else self._from_db(values[i])
        return RunRecord(*values)

    @abstractmethod
    def _connected(self) -> bool: ...

    @abstractmethod
    def _open(self) -> None:
        """Connect; on failure leave whatever was opened for _drop()."""

    @abstractmethod
    def _drop(self) -> None:
        """Close the connection, ignoring errors: it may be broken already."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]:
        """Commit the statements run inside, or roll them back on an exception."""

    @abstractmethod
    def _lock_migrations(self) -> None:
        """Inside the migration's transaction: wait until no other process migrates."""

    @abstractmethod
    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one statement written with '?' placeholders; its rows, if it returns any."""

    @abstractmethod
    def _update(self, sql: str, params: Sequence[object]) -> int:
        """Run one statement that changes rows (autocommitted); how many it changed."""

    def _owns_all_runs(self) -> bool:
        """Whether this store's clock is the only one (so that any run still `running` is lost)."""
        return False

    @abstractmethod
    def _insert(self, rows: list[tuple[object, ...]]) -> list[bool]:
        """Insert rows (in _COLUMNS order), skipping conflicts; per row, whether it was inserted."""

    @abstractmethod
    def _to_db(self, at: datetime) -> object: ...

    @abstractmethod
    def _from_db(self, value: Any) -> datetime: ...


class _SQLiteStore(Store):
    """One database file: one clock on one machine (lock_single_clock makes sure of it)."""

    kind = "sqlite"
    _migrations = _SQLITE_MIGRATIONS

    def __init__(self, url: str, path: str, keep_runs: int) -> None:
        super().__init__(url, keep_runs)
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        import sqlite3  # here, not at the top: the clock imports this module, most clocks have no store

        self._errors = (sqlite3.Error, OSError)

    def lock_single_clock(self) -> None:
        """Hold an exclusive flock on '<db path>.lock' until close(), or fail at once if another clock does.

        Claims would keep two clocks on one machine apart, but SQLite's locking does not reach across
        machines (a shared network file system breaks it), so SQLite is kept to one clock and a second one is
        refused at start: several clocks need PostgreSQL. The lock file holds its pid, for the message.
        """
        if self._lock_fd is not None:
            return
        lock_path = f"{self.path}.lock"
        try:
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)
            # O_CLOEXEC: a task's child process must not inherit the lock and hold it after the clock died.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"run-history store {self.display_url}: cannot open {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StoreError(
                f"run-history store {self.display_url}: another clock{holder} uses this SQLite file "
                f"(it holds {lock_path}); SQLite is for one clock on one machine: "
                "to run several clocks, use PostgreSQL (postgresql://...)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"run-history store {self.display_url}: cannot lock {lock_path}: {exc}") from exc
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid only improves the other clock's message; the lock is what counts

    def close(self) -> None:
        super().close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _connected(self) -> bool:
        return self._conn is not None

    def _open(self) -> None:
        import sqlite3

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # isolation_level=None: no implicit transactions; _transaction() says BEGIN IMMEDIATE itself, which
        # takes the write lock up front (waiting up to the busy timeout) instead of failing on an upgrade.
        self._conn = sqlite3.connect(
            self.path, timeout=CONNECT_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        _use_wal(self._conn)
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a claim costs no fsync on the way to
        # a fire. A power cut may lose the last claims (never corrupt the file); a process crash loses none.
        self._conn.execute("PRAGMA synchronous=NORMAL")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except self._errors:
                pass

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except self._errors:
                pass  # the caller drops the connection; closing it rolls back
            raise
        conn.execute("COMMIT")

    def _lock_migrations(self) -> None:
        pass  # BEGIN IMMEDIATE already holds the database's write lock

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._connection().execute(sql, params).fetchall()

    def _update(self, sql: str, params: Sequence[object]) -> int:
        return self._connection().execute(sql, params).rowcount

    def _owns_all_runs(self) -> bool:
        return self._lock_fd is not None

    def _insert(self, rows: list[tuple[object, ...]]) -> list[bool]:
        # One statement per row, but in-process and in one transaction: no round trips to save here.
        conn = self._connection()
        with self._transaction():
            return [conn.execute(_SQL_INSERT_ONE, row).rowcount == 1 for row in rows]

    def _to_db(self, at: datetime) -> object:
        return _utc(at).isoformat(timespec="microseconds")

    def _from_db(self, value: Any) -> datetime:
        return datetime.fromisoformat(value).astimezone(UTC)

    def _connection(self) -> sqlite3.Connection:
        assert self._conn is not None, "connect() first"
        return self._conn


class _PostgresStore(Store):
    """A PostgreSQL database: any number of clocks on any number of machines."""

    kind = "postgresql"
    _migrations = _POSTGRES_MIGRATIONS

    def __init__(self, url: str, conninfo: str, keep_runs: int) -> None:
        super().__init__(url, keep_runs)
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict, make_conninfo
        except ImportError as exc:
            raise StoreError(_PSYCOPG_MISSING) from exc
        self._errors = (psycopg.Error,)
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise self._error("parse its URL", exc) from exc
        for key, value in _PG_DEFAULTS.items():
            params.setdefault(key, value)
        params["options"] = f"{_PG_OPTIONS} {params.get('options') or ''}".strip()
        self._conninfo = make_conninfo("", **params)
        self._conn: Connection[tuple[Any, ...]] | None = None

    def lock_single_clock(self) -> None:
        """Nothing to do: PostgreSQL arbitrates any number of clocks through claim()."""

    def _connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def _open(self) -> None:
        import psycopg

        self._drop()
        # autocommit: a read is its own transaction, and the connection never idles inside one. No prepared
        # statements: a few cheap statements gain nothing, and PgBouncer's transaction mode breaks them.
        self._conn = psycopg.connect(self._conninfo, autocommit=True, prepare_threshold=None)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass  # closing a broken connection may fail; it is gone either way

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._connection().transaction():
            yield

    def _lock_migrations(self) -> None:
        # Released at commit. CREATE TABLE IF NOT EXISTS alone is not safe against a concurrent creator.
        self._query("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK_KEY,))

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        cursor = self._connection().execute(sql.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description is not None else []

    def _update(self, sql: str, params: Sequence[object]) -> int:
        return self._connection().execute(sql.replace("?", "%s"), params).rowcount

    def _insert(self, rows: list[tuple[object, ...]]) -> list[bool]:
        columns = [list(column) for column in zip(*rows, strict=True)]
        with self._transaction():
            inserted = {run_id for (run_id,) in self._query(_SQL_INSERT_BATCH, columns)}
        return [row[3] in inserted for row in rows]

    def _to_db(self, at: datetime) -> object:
        return _utc(at)

    def _from_db(self, value: Any) -> datetime:
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    def _connection(self) -> Connection[tuple[Any, ...]]:
        assert self._conn is not None, "connect() first"
        return self._conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL, so that readers (`scheduler history`) and the clock never block each other.

    The switch needs an exclusive lock, and SQLite answers "database is locked" at once, without its busy
    timeout, when connections that created the file together all try it: so it is retried for a while.
    """
    import sqlite3

    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone() == ("wal",):
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(_WAL_RETRY_S)


def _sqlite_path(url: str, rest: str) -> str:
    if not rest.startswith("/") or "?" in rest:
        raise StoreError(
            f"unsupported store URL '{redact(url)}': a SQLite URL has no host and no query; "
            f"use {_ACCEPTED_URLS}"
        )
    path = rest[1:]
    if not path or path.endswith("/"):
        raise StoreError(f"store URL '{url}' names no SQLite file; use {_ACCEPTED_URLS}")
    if path == ":memory:":
        raise StoreError(f"store URL '{url}': the run history must outlive a reconnect; name a file")
    return os.path.abspath(path)


def _secrets(url: str) -> list[str]:
    """The password in a URL, as written and percent-decoded, to scrub from driver messages."""
    found = [match.group(2).strip("'") for match in _PASSWORD_PARAM.finditer(url)]
    _, sep, rest = url.partition("://")
    if sep:
        userinfo, at, _ = rest.partition("?")[0].rpartition("@")
        if at and ":" in userinfo:
            found.append(userinfo.partition(":")[2])
    return sorted({variant for secret in found for variant in (secret, unquote(secret)) if variant}, key=len)[
        ::-1
    ]


def _row(record: RunRecord, to_db: Callable[[datetime], object]) -> tuple[object, ...]:
    return (
        record.task,
        to_db(record.scheduled_for),
        record.trigger,
        record.run_id,
        record.claimed_by,
        to_db(record.started_at),
        record.status,
        None if record.finished_at is None else to_db(record.finished_at),
        record.exit_code,
        record.signal,
        record.duration_s,
        _tail(record.output),
    )


def _tail(output: str | None) -> str | None:
    """The last OUTPUT_TAIL_BYTES bytes of the output as UTF-8, cut where a character starts.

    NUL characters become U+FFFD: PostgreSQL text cannot hold them, and both backends keep the same text.
    """
    if output is None:
        return None
    data = output.replace("\x00", "\ufffd").encode("utf-8", "replace")
    # Only the first character can be cut in the middle; "ignore" drops its continuation bytes.
    return data[-OUTPUT_TAIL_BYTES:].decode("utf-8", "ignore")


def _utc(at: datetime) -> datetime:
    if at.utcoffset() is None:
        raise ValueError(f"naive datetime {at.isoformat()}: the store takes aware datetimes")
    return at.astimezone(UTC)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""
