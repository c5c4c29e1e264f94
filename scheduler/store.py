"""The run-history store: records every run, and lets several clocks claim each scheduled instant once.

Two backends behind one interface. SQLite (stdlib) serves one clock on one machine; PostgreSQL (psycopg 3,
imported only for a postgresql:// URL) serves any number of clocks, which race for each (task, instant) with
`INSERT ... ON CONFLICT DO NOTHING`: the database's unique index, not the clocks, decides who runs it.

Each clock holds a lease: a row in scheduler_clocks that it renews every HEARTBEAT_S. A clock not heard from
for DEAD_AFTER_S is dead, and the next heartbeat of a live clock tidies up after it. Every row belongs to a
namespace, so that several apps can share one database without meeting.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from scheduler.config import DEFAULT_KEEP_RUNS
from scheduler.errors import ControlError, StoreError, StoreMissingError
from scheduler.redact import redact, secrets
from scheduler.runs import STORE_TAIL_BYTES, iso_utc, utf8_tail

if TYPE_CHECKING:
    import sqlite3

    from psycopg import Connection

CLAIMED_TRIGGERS = ("schedule", "catch_up")
"""Triggers whose (task, scheduled_for) is unique, so that exactly one clock runs each instant."""
RUN_STATUSES = ("running", "succeeded", "enqueued", "failed", "timed_out", "killed", "skipped", "lost")
"""Every status a recorded run can have: running until it ends; skipped for a claimed instant not run
(overlap across clocks); lost when its clock died before it could record the end."""
CONNECT_TIMEOUT_S = 2.0
"""No call waits on the database much longer than this: connect, lock and statement timeouts."""
HEARTBEAT_S = 5.0
"""A clock renews its lease (its row's heartbeat_at) this often."""
DEAD_AFTER_S = 30.0
"""A clock whose lease is older than this is dead: its runs are marked lost and no longer count as running."""
CLOCK_KEEP_S = 7 * 24 * 3600.0
"""Rows of clocks stopped or dead for longer than this are deleted."""
OVERLAP_POLICIES = ("skip", "replace")
"""The overlap policies claim() enforces across clocks; `allow` needs nothing."""
REQUEST_TTL_S = 300.0
"""A run request no live clock has claimed this long after it was made expires (state `expired`): no clock
runs its task, or none runs at all. A clock that starts later does not run it."""
REQUESTS_PER_POLL = 100
"""The most run requests one poll claims; the rest wait for the next poll."""
REQUEST_KEEP_S = CLOCK_KEEP_S
"""Run requests that were started, expired or lost are deleted this long after they were made."""
ACTION_KEEP_S = 90 * 24 * 3600.0
"""The audit trail (pauses, resumes, run requests) keeps this long."""
PAGE_MAX = 1000
"""The most rows one read for a dashboard returns (runs(), requests(), actions())."""
REQUEST_STATES = ("pending", "claimed", "started", "expired", "lost")
"""A run request's life: pending until a clock claims it, started once its run is, expired when no clock
claimed it within REQUEST_TTL_S, lost when its clock died (or stopped with writes it could not make) between
the claim and the start."""

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
_PRIVATE_FILE = 0o600
_PRIVATE_DIR = 0o700
# SQLite's current time in the stored form ('2026-11-27T10:00:00.000000+00:00'); {} takes a modifier.
_SQLITE_NOW = "strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'{})"
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
    "attempt",
)
_DATETIME_COLUMNS = (1, 5, 7)
_COLUMN_LIST = ", ".join(_COLUMNS)
_INDEXES = [
    "CREATE UNIQUE INDEX scheduler_runs_claim ON scheduler_runs (task, scheduled_for)"
    " WHERE trigger IN ('schedule', 'catch_up')",
    "CREATE INDEX scheduler_runs_task_started ON scheduler_runs (task, started_at)",
    "CREATE UNIQUE INDEX scheduler_runs_run_id ON scheduler_runs (run_id)",
]


def _leases(timestamp: str) -> list[str]:
    """Migration 2, for a backend's timestamp type: namespaces (in the claim key), leases, stop requests."""
    return [
        # '' is the namespace of every row written before namespaces existed.
        "ALTER TABLE scheduler_runs ADD COLUMN namespace TEXT NOT NULL DEFAULT ''",
        # Set on a run that a clock must stop (overlap: replace on another clock); cleared when it is told.
        f"ALTER TABLE scheduler_runs ADD COLUMN stop_requested_at {timestamp}",
        "DROP INDEX scheduler_runs_claim",
        "CREATE UNIQUE INDEX scheduler_runs_claim ON scheduler_runs (namespace, task, scheduled_for)"
        " WHERE trigger IN ('schedule', 'catch_up')",
        "DROP INDEX scheduler_runs_task_started",
        "CREATE INDEX scheduler_runs_task_started ON scheduler_runs (namespace, task, started_at)",
        # Few rows are running: the heartbeat's and the overlap check's lookups stay cheap however long
        # the history.
        "CREATE INDEX scheduler_runs_running ON scheduler_runs (namespace, claimed_by)"
        " WHERE status = 'running'",
        f"""CREATE TABLE scheduler_clocks (
            namespace TEXT NOT NULL,
            id TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            version TEXT NOT NULL,
            config_digest TEXT NOT NULL,
            started_at {timestamp} NOT NULL,
            heartbeat_at {timestamp} NOT NULL,
            stopped_at {timestamp},
            PRIMARY KEY (namespace, id)
        )""",
    ]


# Migration 3: a run's attempt (1, then 2 for the first retry...); every row written before it was a first.
_ATTEMPT = ["ALTER TABLE scheduler_runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1"]


def _control(timestamp: str, serial: str, boolean: str) -> list[str]:
    """Migration 4, for a backend's types: the control plane (pauses, run requests, the audit trail), and an
    index for the newest runs across tasks (a dashboard's first page)."""
    return [
        # One row per task ever paused or resumed: its latest state, kept after a resume to say who did it.
        f"""CREATE TABLE scheduler_overrides (
            namespace TEXT NOT NULL,
            task TEXT NOT NULL,
            paused {boolean} NOT NULL,
            until_at {timestamp},
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            changed_at {timestamp} NOT NULL,
            PRIMARY KEY (namespace, task)
        )""",
        f"""CREATE TABLE scheduler_requests (
            id {serial},
            namespace TEXT NOT NULL,
            task TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            requested_at {timestamp} NOT NULL,
            state TEXT NOT NULL,
            claimed_by TEXT,
            claimed_at {timestamp},
            run_id TEXT
        )""",
        "CREATE INDEX scheduler_requests_state ON scheduler_requests (namespace, state, id)",
        "CREATE INDEX scheduler_requests_task ON scheduler_requests (namespace, task, id)",
        f"""CREATE TABLE scheduler_actions (
            id {serial},
            namespace TEXT NOT NULL,
            acted_at {timestamp} NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            task TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX scheduler_actions_task ON scheduler_actions (namespace, task, id)",
        "CREATE INDEX scheduler_actions_at ON scheduler_actions (namespace, acted_at)",
        "CREATE INDEX scheduler_runs_started ON scheduler_runs (namespace, started_at)",
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
    _leases("TEXT"),
    _ATTEMPT,
    # AUTOINCREMENT: an id is never used twice, even once the newest rows are deleted (a dashboard links it).
    _control("TEXT", "INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER"),
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
    _leases("TIMESTAMPTZ"),
    _ATTEMPT,
    _control("TIMESTAMPTZ", "BIGSERIAL PRIMARY KEY", "BOOLEAN"),
]

# A claim renews its clock's lease too: the clock was heard from. Parameters: namespace, clock id.
_SQL_RENEW = (
    "UPDATE scheduler_clocks SET heartbeat_at = {now} WHERE namespace = ? AND id = ? AND stopped_at IS NULL"
)
# Every statement is scoped to one namespace: its first parameter, unless told otherwise. {now} and
# {dead_before} are the backend's SQL for the database's current time, and that time less DEAD_AFTER_S: the
# database's clock, not the clocks' own, decides which leases have run out.
_SQL_INSERT = (
    f"INSERT INTO scheduler_runs (namespace, {_COLUMN_LIST}) VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})"
)
# No conflict target: besides the claim key, a run_id already there (a retried record()) inserts nothing.
_SQL_INSERT_ONE = f"{_SQL_INSERT} ON CONFLICT DO NOTHING"
# A clock is live while its lease runs and it has not stopped.
_SQL_LIVE = "(stopped_at IS NULL AND heartbeat_at > {dead_before})"
# The runs that other live clocks have going or claimed, of the tasks given; the overlap check of a claim.
# `going`: the run's clock was heard from at or after the run was to start, so it did start (a claim made
# ahead for an instant not reached yet, or one its clock died before reaching, is not going).
_SQL_BUSY = """
    SELECT run.id, run.task, run.claimed_by, run.started_at <= clock.heartbeat_at AS going, run.started_at
    FROM scheduler_runs AS run
    JOIN scheduler_clocks AS clock ON clock.namespace = run.namespace AND clock.id = run.claimed_by
    WHERE run.namespace = ? AND run.status = 'running' AND run.finished_at IS NULL AND run.claimed_by <> ?
    AND clock.stopped_at IS NULL AND clock.heartbeat_at > {dead_before}
"""
# One statement for a whole batch, overlap check included, so that a claim costs one round trip. Rows go in
# in key order so that two clocks claiming overlapping batches wait for each other instead of deadlocking.
# A `skip` instant that another live clock's run overlaps is still inserted (so no other clock runs it), as
# skipped, or, claimed ahead (`skip_ahead`), left alone to be asked again when due; a `replace` instant that
# this clock won asks the other clocks to stop their runs of the task.
# Parameters: the 13 columns and the overlaps as arrays, the namespace, the claimer, the namespace again.
_SQL_CLAIM_BATCH = f"""
    WITH batch AS (
        SELECT * FROM unnest(
            ?::text[], ?::timestamptz[], ?::text[], ?::text[], ?::text[], ?::timestamptz[],
            ?::text[], ?::timestamptz[], ?::integer[], ?::text[], ?::double precision[], ?::text[],
            ?::integer[], ?::text[]
        ) AS batch ({_COLUMN_LIST}, overlap)
    ),
    busy AS (
        {_SQL_BUSY} AND run.task IN (SELECT task FROM batch WHERE overlap <> 'allow')
    ),
    inserted AS (
        INSERT INTO scheduler_runs (namespace, {_COLUMN_LIST})
        SELECT ?, task, scheduled_for, trigger, run_id, claimed_by, started_at,
            CASE WHEN skipped THEN 'skipped' ELSE status END,
            CASE WHEN skipped THEN started_at ELSE finished_at END,
            exit_code, signal, duration_s, output, attempt
        FROM (
            SELECT batch.*,
                overlap = 'skip' AND EXISTS (SELECT 1 FROM busy WHERE busy.task = batch.task AND busy.going)
                AS skipped
            FROM batch
            WHERE NOT (overlap = 'skip_ahead' AND EXISTS (SELECT 1 FROM busy WHERE busy.task = batch.task))
        ) AS decided
        ORDER BY task, scheduled_for
        ON CONFLICT DO NOTHING
        RETURNING run_id, task
    ),
    stopping AS (
        UPDATE scheduler_runs SET stop_requested_at = {{now}}
        WHERE id IN (
            SELECT busy.id FROM busy
            JOIN inserted ON inserted.task = busy.task
            JOIN batch ON batch.run_id = inserted.run_id
            WHERE batch.overlap = 'replace' AND busy.going AND busy.started_at < batch.scheduled_for
        )
    ),
    beat AS (
        {_SQL_RENEW}
    )
    SELECT batch.run_id, inserted.run_id IS NOT NULL,
        (
            SELECT MIN(busy.claimed_by) FROM busy
            WHERE busy.task = batch.task AND (busy.going OR batch.overlap = 'skip_ahead')
        )
    FROM batch LEFT JOIN inserted ON inserted.run_id = batch.run_id
"""
# No RETURNING, here or in SQLite elsewhere: it needs SQLite 3.35, newer than some systems' Python links.
_SQL_TASK_OF_RUN = "SELECT task FROM scheduler_runs WHERE namespace = ? AND run_id = ?"
# Only a claim that never started: a run that did start keeps its row whatever happens.
_SQL_RELEASE = """
    DELETE FROM scheduler_runs
    WHERE namespace = ? AND run_id = ? AND status = 'running' AND finished_at IS NULL
"""
_SQL_LOST = """
    UPDATE scheduler_runs SET status = 'lost', finished_at = ?
    WHERE namespace = ? AND status = 'running' AND finished_at IS NULL
"""
_SQL_FINISH = """
    UPDATE scheduler_runs
    SET finished_at = ?, status = ?, exit_code = ?, signal = ?, duration_s = ?, output = ?,
        stop_requested_at = NULL
    WHERE namespace = ? AND run_id = ?
"""
# Parameters: the namespace and the task, three times, and keep_runs.
_SQL_RETENTION = f"""
    DELETE FROM scheduler_runs WHERE namespace = ? AND task = ?
    AND id NOT IN (
        SELECT id FROM scheduler_runs WHERE namespace = ? AND task = ?
        ORDER BY started_at DESC, id DESC LIMIT ?
    )
    AND id NOT IN (
        SELECT id FROM scheduler_runs WHERE namespace = ? AND task = ? AND {_CLAIMED_SQL}
        ORDER BY scheduled_for DESC LIMIT 1
    )
"""
_SQL_LAST_SUCCESSES = """
    SELECT task, MAX(finished_at) FROM scheduler_runs
    WHERE namespace = ? AND status IN ('succeeded', 'enqueued') AND finished_at IS NOT NULL GROUP BY task
"""
_SQL_LAST_CLAIMED = f"""
    SELECT task, MAX(scheduled_for) FROM scheduler_runs WHERE namespace = ? AND {_CLAIMED_SQL} GROUP BY task
"""
_SQL_HISTORY = f"""
    SELECT {_COLUMN_LIST} FROM scheduler_runs WHERE namespace = ? {{where}}
    ORDER BY started_at DESC, id DESC LIMIT ?
"""
# {before} is empty, or a bound on started_at (claims made ahead start in the future).
_SQL_LAST_RUNS = f"""
    SELECT {_COLUMN_LIST} FROM scheduler_runs AS run WHERE namespace = ? AND id = (
        SELECT id FROM scheduler_runs
        WHERE namespace = run.namespace AND task = run.task {{before}}
        ORDER BY started_at DESC, id DESC LIMIT 1
    ) ORDER BY task
"""
# Runs going now: started (not a claim made ahead), not finished, on a live clock. run-now's runs are not
# among them: run-now holds no lease.
_SQL_RUNNING = """
    SELECT {columns} FROM scheduler_runs AS run
    JOIN scheduler_clocks AS clock ON clock.namespace = run.namespace AND clock.id = run.claimed_by
    WHERE run.namespace = ? AND run.status = 'running' AND run.finished_at IS NULL AND run.started_at <= {now}
    AND clock.stopped_at IS NULL AND clock.heartbeat_at > {dead_before} {where}
    ORDER BY run.task, run.started_at, run.id
""".replace("{columns}", ", ".join(f"run.{column}" for column in _COLUMNS))
# Clocks. Parameters of the upsert: namespace, id, host, pid, version, config_digest.
_SQL_CLOCK_BEAT = """
    INSERT INTO scheduler_clocks
        (namespace, id, host, pid, version, config_digest, started_at, heartbeat_at, stopped_at)
    VALUES (?, ?, ?, ?, ?, ?, {now}, {now}, NULL)
    ON CONFLICT (namespace, id) DO UPDATE
    SET config_digest = excluded.config_digest, heartbeat_at = excluded.heartbeat_at, stopped_at = NULL
"""
_SQL_CLOCK_STOP = "UPDATE scheduler_clocks SET stopped_at = {now} WHERE namespace = ? AND id = ?"
# Dead clocks that still have runs `running`, with when they were last heard from.
_SQL_DEAD_CLOCKS = """
    SELECT id, heartbeat_at FROM scheduler_clocks AS clock
    WHERE namespace = ? AND id <> ? AND stopped_at IS NULL AND heartbeat_at <= {dead_before}
    AND EXISTS (
        SELECT 1 FROM scheduler_runs AS run
        WHERE run.namespace = clock.namespace AND run.claimed_by = clock.id AND run.status = 'running'
    )
    ORDER BY id
"""
# A dead clock's claims for instants due after it was last heard from: made ahead, and taken as never
# started. Parameters: namespace, clock id, its heartbeat_at.
_SQL_DEAD_CLAIMS = f"""
    DELETE FROM scheduler_runs
    WHERE namespace = ? AND claimed_by = ? AND status = 'running' AND finished_at IS NULL AND started_at > ?
    AND {_CLAIMED_SQL}
"""
_SQL_PRUNE_CLOCKS = """
    DELETE FROM scheduler_clocks
    WHERE namespace = ? AND COALESCE(stopped_at, heartbeat_at) < {forgotten_before}
"""
_SQL_STOP_REQUESTS = """
    SELECT run_id FROM scheduler_runs
    WHERE namespace = ? AND claimed_by = ? AND status = 'running' AND stop_requested_at IS NOT NULL
    ORDER BY run_id
"""
_SQL_STOP_TOLD = """
    UPDATE scheduler_runs SET stop_requested_at = NULL
    WHERE namespace = ? AND claimed_by = ? AND stop_requested_at IS NOT NULL
"""
_SQL_CLOCKS = """
    SELECT id, host, pid, version, started_at, heartbeat_at, config_digest, {live}
    FROM scheduler_clocks WHERE namespace = ? ORDER BY started_at, id
"""

# The control plane. A pause or a resume replaces the task's override. Parameters: namespace, task, paused,
# until_at, reason, actor, changed_at.
_SQL_SET_OVERRIDE = """
    INSERT INTO scheduler_overrides (namespace, task, paused, until_at, reason, actor, changed_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (namespace, task) DO UPDATE
    SET paused = excluded.paused, until_at = excluded.until_at, reason = excluded.reason,
        actor = excluded.actor, changed_at = excluded.changed_at
"""
_SQL_OVERRIDES = """
    SELECT task, paused, until_at, reason, actor, changed_at FROM scheduler_overrides
    WHERE namespace = ? {where} ORDER BY task
"""
# Parameters: namespace, acted_at, actor, action, task, detail.
_SQL_ACTION = """
    INSERT INTO scheduler_actions (namespace, acted_at, actor, action, task, detail) VALUES (?, ?, ?, ?, ?, ?)
"""
_SQL_ACTIONS = """
    SELECT id, acted_at, actor, action, task, detail FROM scheduler_actions
    WHERE namespace = ? {where} ORDER BY id DESC LIMIT ?
"""
_REQUEST_COLUMNS = "id, task, requested_by, requested_at, state, claimed_by, claimed_at, run_id"
_SQL_REQUEST = """
    INSERT INTO scheduler_requests (namespace, task, requested_by, requested_at, state)
    VALUES (?, ?, ?, ?, 'pending')
"""
_SQL_REQUESTS = f"""
    SELECT {_REQUEST_COLUMNS} FROM scheduler_requests WHERE namespace = ? {{where}} ORDER BY id DESC LIMIT ?
"""
# A poll's statements. {lock} is PostgreSQL's FOR UPDATE SKIP LOCKED (SQLite's BEGIN IMMEDIATE already
# serializes writers): a row another clock is deciding on is left to it, and no poll ever waits for another,
# so that none can deadlock. Locked rows are re-checked after the lock, so each one changes state once.
_SQL_STALE_REQUESTS = f"""
    SELECT {_REQUEST_COLUMNS} FROM scheduler_requests
    WHERE namespace = ? AND state = 'pending' AND requested_at <= {{expired_before}} ORDER BY id {{lock}}
"""
_SQL_PENDING_REQUESTS = (
    "SELECT id, task FROM scheduler_requests WHERE namespace = ? AND state = 'pending' ORDER BY id"
)
_SQL_LOCK_REQUESTS = """
    SELECT id FROM scheduler_requests WHERE namespace = ? AND state = 'pending' AND id IN ({ids})
    ORDER BY id {lock}
"""
_SQL_SET_REQUEST = "UPDATE scheduler_requests SET {set} WHERE namespace = ? AND id IN ({ids})"
# The requests a clock holds: claimed, and neither started nor given back yet. Parameters: namespace, clock.
_SQL_HELD_REQUESTS = f"""
    SELECT {_REQUEST_COLUMNS} FROM scheduler_requests
    WHERE namespace = ? AND claimed_by = ? AND state = 'claimed' ORDER BY id
"""
# A run that started after its clock was taken for dead (its request marked lost) is still its run.
_SQL_REQUEST_STARTED = """
    UPDATE scheduler_requests SET state = 'started', run_id = ?
    WHERE namespace = ? AND id = ? AND state IN ('claimed', 'lost')
"""
_SQL_RELEASE_REQUESTS = """
    UPDATE scheduler_requests SET state = 'pending', claimed_by = NULL, claimed_at = NULL
    WHERE namespace = ? AND claimed_by = ? AND state = 'claimed'
"""
# Requests claimed by a clock that is no longer live and never started: they may have started a moment before
# the clock died (its write lost), so they are not handed to another clock. Parameters: namespace.
_SQL_LOST_REQUESTS = f"""
    UPDATE scheduler_requests SET state = 'lost'
    WHERE namespace = ? AND state = 'claimed' AND NOT EXISTS (
        SELECT 1 FROM scheduler_clocks AS clock
        WHERE clock.namespace = scheduler_requests.namespace AND clock.id = scheduler_requests.claimed_by
        AND {_SQL_LIVE}
    )
"""
_SQL_PRUNE_REQUESTS = """
    DELETE FROM scheduler_requests
    WHERE namespace = ? AND state NOT IN ('pending', 'claimed') AND requested_at < {requests_forgotten_before}
"""
_SQL_PRUNE_ACTIONS = (
    "DELETE FROM scheduler_actions WHERE namespace = ? AND acted_at < {actions_forgotten_before}"
)
# Runs for a dashboard: newest first, a page at a time (keyset: started_at, then id, both descending).
_SQL_RUNS_PAGE = f"""
    SELECT id, {_COLUMN_LIST} FROM scheduler_runs WHERE namespace = ? {{where}}
    ORDER BY started_at DESC, id DESC LIMIT ?
"""
# The newest runs of each task named, without their output: an index probe per task, however long the
# history. Both backends take the names as one parameter; {limit} is the number per task.
_LATEST_COLUMNS = ", ".join("NULL" if column == "output" else f"run.{column}" for column in _COLUMNS)
_SQLITE_LATEST = f"""
    SELECT run.id, {_LATEST_COLUMNS} FROM json_each(?) AS named
    JOIN scheduler_runs AS run ON run.id IN (
        SELECT id FROM scheduler_runs WHERE namespace = ? AND task = named.value AND started_at <= {{now}}
        ORDER BY started_at DESC, id DESC LIMIT ?
    )
"""
_POSTGRES_LATEST = f"""
    SELECT run.* FROM unnest(?::text[]) AS named (task) CROSS JOIN LATERAL (
        SELECT id, {_LATEST_COLUMNS.replace("run.", "")} FROM scheduler_runs AS run
        WHERE namespace = ? AND task = named.task AND started_at <= {{now}}
        ORDER BY started_at DESC, id DESC LIMIT ?
    ) AS run
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """The store's answer to one claimed instant.

    won: this clock runs it. running_on: with `skip`, the live clock whose run of the task overlaps (the
    instant was taken and recorded as skipped, so won is False); with `replace`, the clock asked to stop its
    run (won is True). None otherwise: won False alone means another clock claimed the instant.
    """

    won: bool
    running_on: str | None = None


@dataclass(frozen=True, slots=True)
class ClockInfo:
    """What a clock says of itself in the store. `id`, unique per process, is the claimed_by of its runs."""

    id: str
    host: str
    pid: int
    version: str
    config_digest: str


@dataclass(frozen=True, slots=True)
class ClockRow:
    """A clock as the store knows it: for the dashboard, and for the config digest check."""

    id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    alive: bool  # heard from within DEAD_AFTER_S and not stopped
    config_digest: str


@dataclass(frozen=True, slots=True)
class Beat:
    """What a heartbeat found: the runs this clock must stop, what it tidied up after dead clocks, and the
    live clocks (this one included)."""

    stop: list[str]  # run ids
    lost: dict[str, tuple[int, int]]  # dead clock id -> (runs marked lost, claims deleted)
    clocks: list[ClockRow]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a task, as the store keeps it. Datetimes are aware, in UTC."""

    task: str
    scheduled_for: datetime
    trigger: str  # "schedule", "catch_up", "manual", ...
    run_id: str  # the clock's 12-hex run id
    claimed_by: str  # the clock that ran it, e.g. "myhost:1234"
    started_at: datetime
    status: str = "running"  # one of RUN_STATUSES
    finished_at: datetime | None = None
    exit_code: int | None = None
    signal: str | None = None  # e.g. "SIGKILL"
    duration_s: float | None = None
    output: str | None = None  # the tail of the output, at most STORE_TAIL_BYTES bytes of UTF-8
    attempt: int = 1  # 1 for a run, 2 for its first retry, ...

    def to_json(self, *, output: bool = False) -> dict[str, object]:
        """The run for `--json` output: datetimes as ISO 8601 UTC strings; the output only when asked."""
        data: dict[str, object] = {
            "task": self.task,
            "scheduled_for": _iso(self.scheduled_for),
            "trigger": self.trigger,
            "attempt": self.attempt,
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


@dataclass(frozen=True, slots=True)
class Override:
    """A task's pause as the store keeps it: paused until `until` (None: until resumed), why, by whom and
    when (`at`, the database's time) it was set. A resumed task keeps its row, not paused, naming who
    resumed it. Datetimes are aware, in UTC."""

    task: str
    paused: bool
    until: datetime | None
    reason: str
    by: str
    at: datetime

    def holds(self, at: datetime) -> bool:
        """Whether the pause holds back what is due at `at` (a fire's instant): paused, and `at` before
        `until` if there is one. So a pause ends by itself at `until`, whoever looks."""
        return self.paused and (self.until is None or at < self.until)

    def to_json(self) -> dict[str, object]:
        """The override for `--json` output (`scheduler list --json`, a dashboard): instants as ISO 8601
        strings in UTC, the task left to the caller's key."""
        return {
            "paused": self.paused,
            "until": _iso(self.until),
            "reason": self.reason,
            "by": self.by,
            "at": _iso(self.at),
        }


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A request to run a task once, now (request_run()), and what became of it: `state` is one of
    REQUEST_STATES; claimed_by and claimed_at name the clock that took it, run_id its run once started."""

    id: int
    task: str
    requested_by: str
    requested_at: datetime
    state: str
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class Action:
    """One entry of the audit trail: who (`by`) did what (`action`: pause, resume or run) to which task, when,
    and in words the rest (`detail`: the pause's end and reason, the run request's id)."""

    id: int
    at: datetime
    by: str
    action: str
    task: str
    detail: str


@dataclass(frozen=True, slots=True)
class RunPage:
    """A page of runs, newest first; `before` is what to pass to runs() for the next (older) page, None on
    the last one."""

    runs: list[RunRecord]
    before: str | None


@dataclass(frozen=True, slots=True)
class Poll:
    """What a clock's poll found: every override by task, the run requests the clock holds (claimed by it,
    neither started nor given back yet), oldest first, and those the poll expired."""

    overrides: dict[str, Override]
    requests: list[RunRequest]
    expired: list[RunRequest]


def open_store(
    url: str, *, keep_runs: int = DEFAULT_KEEP_RUNS, namespace: str = "", create: bool = True
) -> Store:
    """A store for this URL, not connected yet: parsing only, no I/O.

    sqlite:///relative/path.db is relative to the current directory (resolved now, so a later chdir does
    not move it). postgres:// is Heroku's spelling of postgresql://. A PostgreSQL URL's query parameters
    (sslmode, options, ...) are passed to libpq. `namespace` keeps the runs and clocks of apps that share
    one database apart: each sees and claims only its own. The default, '', holds the rows written before
    namespaces existed. With create=False (readers: `history`, `list`) a SQLite file that does not exist is
    not created: connecting raises StoreMissingError, naming the path.
    """
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be at least 1, not {keep_runs}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        return _SQLiteStore(url, _sqlite_path(url, rest), keep_runs, namespace, create=create)
    if sep and scheme in ("postgresql", "postgres"):
        return _PostgresStore(url, f"postgresql://{rest}", keep_runs, namespace)
    raise StoreError(f"unsupported store URL '{redact(url)}': use {_ACCEPTED_URLS}")


class Store(ABC):
    """The run history of one database, connected lazily.

    Every method may be called from a worker thread, one call at a time. A database error closes the
    connection and raises StoreError; the next call connects again.
    """

    kind: str
    _migrations: list[list[str]]

    def __init__(self, url: str, keep_runs: int, namespace: str) -> None:
        self.display_url = redact(url)
        self.keep_runs = keep_runs
        self.namespace = namespace
        self._secrets = secrets(url)
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

    def claim(
        self, records: Sequence[RunRecord], overlap: Mapping[str, str] | None = None, *, ahead: bool = False
    ) -> list[Claim]:
        """Insert these scheduled runs in one transaction; per record, in order, whether this call won the
        instant (inserted it) or another clock (or an earlier call) had claimed it.

        Only triggers in CLAIMED_TRIGGERS can be claimed. Exactly one of several concurrent claimers of a
        (task, scheduled_for) wins: the unique index decides.

        Overlap policy across clocks: `overlap` maps a task to `skip` or `replace` (tasks not named allow
        overlap). When a live clock other than the claimer (records' claimed_by) has a run of the task
        `running`, a `skip` instant is still taken, so that no other clock runs it, but recorded as skipped
        and not won; a `replace` instant is won as usual and the other clock is asked to stop its run (its
        next heartbeat says so). Either way the answer names that clock. In PostgreSQL the check is made in
        the claim's own statement.

        `ahead`: the claim is made before the instant is due (a second, by the clock), when a run that will
        have ended by then may still be going: a `skip` instant that another clock's run overlaps is then
        left unclaimed, and answered not won with running_on, to be claimed again (without `ahead`) when due.
        """
        policies = dict(overlap or {})
        for task, policy in policies.items():
            if policy not in (*OVERLAP_POLICIES, "allow"):
                raise ValueError(f"task '{task}': unknown overlap policy '{policy}'")
        for record in records:
            if record.trigger not in CLAIMED_TRIGGERS:
                raise ValueError(f"run {record.run_id}: trigger '{record.trigger}' cannot be claimed")
        if not records:
            return []
        claimers = {record.claimed_by for record in records}
        if policies and len(claimers) > 1:
            raise ValueError(f"overlap is checked for one claimer at a time, not {sorted(claimers)}")
        rows = [_row(record, self._to_db) for record in records]
        overlaps = [policies.get(record.task, "allow") for record in records]
        if ahead:
            overlaps = ["skip_ahead" if policy == "skip" else policy for policy in overlaps]
        claimer = records[0].claimed_by
        return self._call("claim runs", lambda: self._claim(rows, overlaps, claimer))

    def record(self, record: RunRecord) -> bool:
        """Insert a run that was not claimed beforehand (manual, or fired while the store was down), maybe
        finished already. False if it conflicts with a claimed (task, scheduled_for) or with its run_id:
        then nothing is inserted."""
        row = (self.namespace, *_row(record, self._to_db))

        def insert() -> bool:
            with self._transaction():
                return self._update(_SQL_INSERT_ONE, row) == 1

        return self._call("record a run", insert)

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
        ns = self.namespace
        params = (self._to_db(finished_at), status, exit_code, signal, duration_s, _tail(output), ns, run_id)

        def finish() -> None:
            with self._transaction():
                for (task,) in self._query(_SQL_TASK_OF_RUN, (ns, run_id)):
                    self._query(_SQL_FINISH, params)
                    self._query(_SQL_RETENTION, (ns, task, ns, task, self.keep_runs, ns, task))

        self._call("finish a run", finish)

    def release(self, run_id: str) -> None:
        """Give back a claim whose run never started (its clock stopped first, or the task was removed), so
        that another clock, or a catch-up, may claim that instant. Unknown run_id: nothing happens."""
        self._call("release a claim", lambda: self._query(_SQL_RELEASE, (self.namespace, run_id)))

    def mark_lost(self, claimed_by: str, at: datetime) -> int:
        """At a clock's start, mark as `lost` the runs still `running` that no living clock can finish: in
        SQLite, whose clock holds the single-clock lock, all of them; in PostgreSQL, those of clocks with
        the starting clock's name, the host (or dyno) and pid that start its claimed_by, since a restarted
        Heroku dyno often gets the same name and pid. Other dead clocks' runs wait for their lease to run
        out (heartbeat()). A run that does finish later (a run-now still going) gets its real status back.
        Returns how many."""
        params: tuple[object, ...]
        if self._owns_all_runs():
            sql, params = _SQL_LOST, (self._to_db(at), self.namespace)
        else:
            name = _clock_name(claimed_by)
            prefix = f"{name}:"
            sql = f"{_SQL_LOST} AND (claimed_by = ? OR substr(claimed_by, 1, ?) = ?)"
            params = (self._to_db(at), self.namespace, name, len(prefix), prefix)
        return self._call("mark lost runs", lambda: self._update(sql, params))

    def heartbeat(self, clock: ClockInfo) -> Beat:
        """Renew this clock's lease (registering it the first time, or again after an outage), and tidy up
        after dead ones, in one transaction.

        Lease policy: a clock not heard from (heartbeat or claim) for DEAD_AFTER_S is dead. Its claims for
        instants due after it was last heard from are deleted, as made ahead and never started, and its
        other runs still `running` are marked `lost`; a dead clock that comes back gets its runs' real
        statuses as they finish, and its lease back at its next heartbeat. Rows of clocks stopped or dead
        for CLOCK_KEEP_S are deleted.

        Run requests that a clock no longer live had claimed and not started are marked `lost`, never handed
        to another clock (the run may have started, its note lost with the clock). Requests done for over
        REQUEST_KEEP_S, and audit entries older than ACTION_KEEP_S, are deleted.
        """
        self._check_file()
        ns = self.namespace
        beat_params = (ns, clock.id, clock.host, clock.pid, clock.version, clock.config_digest)

        def beat() -> Beat:
            with self._transaction():
                self._query(self._sql(_SQL_CLOCK_BEAT), beat_params)
                lost: dict[str, tuple[int, int]] = {}
                for dead, last_heard in self._query(self._sql(_SQL_DEAD_CLOCKS), (ns, clock.id)):
                    deleted = self._update(_SQL_DEAD_CLAIMS, (ns, dead, last_heard))
                    marked = self._update(f"{_SQL_LOST} AND claimed_by = ?", (self._db_now(), ns, dead))
                    if deleted or marked:
                        lost[dead] = (marked, deleted)
                self._query(self._sql(_SQL_PRUNE_CLOCKS), (ns,))
                self._query(self._sql(_SQL_LOST_REQUESTS), (ns,))
                self._query(self._sql(_SQL_PRUNE_REQUESTS), (ns,))
                self._query(self._sql(_SQL_PRUNE_ACTIONS), (ns,))
                stop = [run_id for (run_id,) in self._query(_SQL_STOP_REQUESTS, (ns, clock.id))]
                if stop:
                    self._query(_SQL_STOP_TOLD, (ns, clock.id))
                clocks = [row for row in self._clocks() if row.alive]
            return Beat(stop, lost, clocks)

        return self._call("renew the clock's lease", beat)

    def stop_clock(self, clock_id: str, *, release_requests: bool = False) -> None:
        """Note a clean stop: the clock's lease ends now, and nothing of it is marked lost. With
        release_requests (every start it made is noted already), the run requests it holds go back to
        pending, for another clock."""
        ns = self.namespace

        def stop() -> None:
            with self._transaction():
                self._query(self._sql(_SQL_CLOCK_STOP), (ns, clock_id))
                if release_requests:
                    self._query(_SQL_RELEASE_REQUESTS, (ns, clock_id))

        self._call("note the clock's stop", stop)

    def clocks(self) -> list[ClockRow]:
        """Every clock of this namespace still remembered, live or not, oldest first."""
        return self._call("read the clocks", self._clocks)

    def last_claimed(self) -> dict[str, datetime]:
        """Per task, the newest scheduled_for it was claimed for (any status; manual runs do not count)."""
        rows = self._call("read the last claims", lambda: self._query(_SQL_LAST_CLAIMED, (self.namespace,)))
        return {task: self._from_db(at) for task, at in rows}

    def last_successes(self) -> dict[str, datetime]:
        """Per task, when its newest successful run (among those kept) ended."""
        rows = self._call(
            "read the last successes", lambda: self._query(_SQL_LAST_SUCCESSES, (self.namespace,))
        )
        return {task: self._from_db(at) for task, at in rows}

    def history(
        self,
        task: str | None = None,
        limit: int = 20,
        *,
        statuses: Sequence[str] | None = None,
        since: datetime | None = None,
    ) -> list[RunRecord]:
        """The newest runs first (by started_at, then insertion), of one task or of all; only those with one
        of `statuses` if given, and only those started at or after `since` if given."""
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        where: list[str] = []
        params: list[object] = [self.namespace]
        if task is not None:
            where.append("AND task = ?")
            params.append(task)
        if statuses is not None:
            unknown = sorted(set(statuses) - set(RUN_STATUSES))
            if unknown:
                raise ValueError(f"unknown run status {unknown[0]!r}: use {', '.join(RUN_STATUSES)}")
            if not statuses:
                return []
            where.append(f"AND status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if since is not None:
            where.append("AND started_at >= ?")
            params.append(self._to_db(since))
        params.append(limit)
        sql = _SQL_HISTORY.format(where=" ".join(where))
        rows = self._call("read the history", lambda: self._query(sql, params))
        return [self._record(row) for row in rows]

    def last_runs(self, *, before: datetime | None = None) -> dict[str, RunRecord]:
        """Per task, its newest run (as history() orders them), by task name; with `before`, its newest run
        that started by then (leaving out the claims made ahead for an instant still to come)."""
        params: tuple[object, ...]
        if before is None:
            sql, params = _SQL_LAST_RUNS.format(before=""), (self.namespace,)
        else:
            sql, params = (
                _SQL_LAST_RUNS.format(before="AND started_at <= ?"),
                (self.namespace, self._to_db(before)),
            )
        rows = self._call("read the last runs", lambda: self._query(sql, params))
        return {record.task: record for record in map(self._record, rows)}

    def running(self, task: str | None = None) -> list[RunRecord]:
        """The runs going now, of one task or all, by task: started, not finished, on a live clock (one heard
        from within DEAD_AFTER_S that has not stopped); run-now's runs are not among them: run-now holds no
        lease."""
        where, params = ("", ()) if task is None else ("AND run.task = ?", (task,))
        sql = self._sql(_SQL_RUNNING.replace("{where}", where))
        rows = self._call("read the running runs", lambda: self._query(sql, (self.namespace, *params)))
        return [self._record(row) for row in rows]

    # The control plane: pauses, run requests and the audit trail of both, for the CLI and a dashboard. Each
    # call is one short transaction, bounded like every call (CONNECT_TIMEOUT_S for each statement).

    def pause(self, task: str, *, by: str, until: datetime | None = None, reason: str = "") -> Override:
        """Pause `task` for every clock of this namespace until resume(), or until `until` (aware, after the
        database's now): its scheduled fires are skipped from each clock's next poll, about a second. Pausing
        a paused task replaces its pause. Written to the audit trail in the same transaction."""
        _check_text("task", task, _NAME_MAX)
        _check_text("by", by, _NAME_MAX)
        _check_text("reason", reason, _REASON_MAX, empty=True)
        ns = self.namespace

        def write() -> Override:
            with self._transaction():
                now_db = self._db_now()
                now = self._from_db(now_db)
                if until is not None and _utc(until) <= now:
                    raise ControlError(
                        f"task '{task}': cannot pause until {iso_utc(until)}: that is not after now "
                        f"({iso_utc(now)})"
                    )
                until_db = None if until is None else self._to_db(until)
                self._query(_SQL_SET_OVERRIDE, (ns, task, True, until_db, reason, by, now_db))
                detail = "; ".join(
                    part
                    for part in (
                        f"until {iso_utc(until)}" if until else "",
                        f"reason: {reason}" if reason else "",
                    )
                    if part
                )
                self._query(_SQL_ACTION, (ns, now_db, by, "pause", task, detail))
                return Override(task, True, None if until is None else _utc(until), reason, by, now)

        return self._call("pause a task", write)

    def resume(self, task: str, *, by: str) -> bool:
        """End `task`'s pause, for every clock of this namespace from its next poll; whether a pause held it
        (False: it was not paused, or its pause had run out). Written to the audit trail either way."""
        _check_text("task", task, _NAME_MAX)
        _check_text("by", by, _NAME_MAX)
        ns = self.namespace

        def write() -> bool:
            with self._transaction():
                now_db = self._db_now()
                now = self._from_db(now_db)
                before = self._overrides("AND task = ?", (task,)).get(task)
                held = before is not None and before.holds(now)
                self._query(_SQL_SET_OVERRIDE, (ns, task, False, None, "", by, now_db))
                self._query(_SQL_ACTION, (ns, now_db, by, "resume", task, "" if held else "was not paused"))
                return held

        return self._call("resume a task", write)

    def overrides(self) -> dict[str, Override]:
        """Every task's override, by task name: paused ones, and resumed ones (not paused) naming who resumed
        them. Whether a pause holds now is `Override.holds(now)`: a pause past its `until` keeps its row."""
        return self._call("read the pauses", self._overrides)

    def request_run(self, task: str, *, by: str) -> int:
        """Ask for one run of `task`, now; returns the request's id. At its next poll (about a second) a live
        clock that knows the task claims the request, exactly one of them, and starts the run (trigger
        manual); one that no clock claims within REQUEST_TTL_S expires. Written to the audit trail in the
        same transaction."""
        _check_text("task", task, _NAME_MAX)
        _check_text("by", by, _NAME_MAX)
        ns = self.namespace

        def write() -> int:
            with self._transaction():
                now_db = self._db_now()
                request_id = self._insert(_SQL_REQUEST, (ns, task, by, now_db))
                self._query(_SQL_ACTION, (ns, now_db, by, "run", task, f"request {request_id}"))
                return request_id

        return self._call("request a run", write)

    def requests(
        self, task: str | None = None, *, state: str | None = None, limit: int = 50, before: int | None = None
    ) -> list[RunRequest]:
        """Run requests, newest first: of one task or all, in one of REQUEST_STATES or any; with `before` (a
        request id), only older ones, for the next page."""
        _check_limit(limit)
        if state is not None and state not in REQUEST_STATES:
            raise ValueError(f"unknown request state '{state}': use one of {', '.join(REQUEST_STATES)}")
        where, params = _filters(task=task, state=state)
        if before is not None:
            where, params = f"{where} AND id < ?", [*params, before]
        sql = _SQL_REQUESTS.replace("{where}", where)
        rows = self._call("read the run requests", lambda: self._query(sql, (self.namespace, *params, limit)))
        return [self._request(row) for row in rows]

    def actions(self, task: str | None = None, *, limit: int = 50, before: int | None = None) -> list[Action]:
        """The audit trail (pauses, resumes, run requests), newest first, of one task or all; with `before`
        (an action id), only older entries, for the next page."""
        _check_limit(limit)
        where, params = _filters(task=task)
        if before is not None:
            where, params = f"{where} AND id < ?", [*params, before]
        sql = _SQL_ACTIONS.replace("{where}", where)
        rows = self._call("read the audit trail", lambda: self._query(sql, (self.namespace, *params, limit)))
        return [
            Action(int(action_id), self._from_db(at), actor, action, task, detail)
            for action_id, at, actor, action, task, detail in rows
        ]

    def runs(
        self,
        task: str | None = None,
        *,
        status: str | None = None,
        trigger: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> RunPage:
        """Runs newest first (by started_at, then insertion, as history()), of one task or all, with one
        status and one trigger or any, `limit` at most. `before` is the previous page's RunPage.before: the
        pages neither skip nor repeat a run however many runs start meanwhile."""
        _check_limit(limit)
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}: use {', '.join(RUN_STATUSES)}")
        where, params = _filters(task=task, status=status, trigger=trigger)
        if before is not None:
            started_at, run_key = _parse_cursor(before)
            at = self._to_db(started_at)
            where = f"{where} AND (started_at < ? OR (started_at = ? AND id < ?))"
            params = [*params, at, at, run_key]
        sql = _SQL_RUNS_PAGE.replace("{where}", where)
        rows = self._call("read the runs", lambda: self._query(sql, (self.namespace, *params, limit + 1)))
        records = [self._record(row[1:]) for row in rows[:limit]]
        more = len(rows) > limit
        return RunPage(records, _cursor(records[-1].started_at, int(rows[limit - 1][0])) if more else None)

    def latest_runs(self, tasks: Sequence[str], per_task: int = 1) -> dict[str, list[RunRecord]]:
        """The newest `per_task` runs of each task named (as history() orders them, newest first), without
        their output: a dashboard's last-run column and strips of recent runs. Claims made ahead, for an
        instant still to come, are left out, and so are tasks without runs. One statement, an index probe per
        task, whatever the history's length."""
        if not 1 <= per_task <= PAGE_MAX:
            raise ValueError(f"per_task must be from 1 to {PAGE_MAX}, not {per_task}")
        names = sorted(set(tasks))
        if not names:
            return {}
        rows = self._call("read the latest runs", lambda: self._latest(names, per_task))
        if per_task == 1:
            return {record.task: [record] for record in (self._record(row[1:]) for row in rows)}
        latest: dict[str, list[tuple[datetime, int, RunRecord]]] = {}
        for row in rows:
            record = self._record(row[1:])
            latest.setdefault(record.task, []).append((record.started_at, int(row[0]), record))
        return {
            task: [record for _, _, record in sorted(runs, key=lambda run: run[:2], reverse=True)]
            for task, runs in latest.items()
        }

    def poll(self, clock_id: str, tasks: Container[str] | None) -> Poll:
        """A clock's look at the control plane, about once a second, in one short transaction: renew its
        lease, read the overrides, expire the requests pending for over REQUEST_TTL_S, and, unless `tasks` is
        None (a stopping clock) or the clock holds no lease (no heartbeat registered it, or it stopped),
        claim up to REQUESTS_PER_POLL pending requests for the tasks it knows.

        Exactly one clock claims each request: a request changes from pending only under its row's lock
        (PostgreSQL: FOR UPDATE SKIP LOCKED, so that no poll waits for another; SQLite: the write lock). The
        answer's requests are all those the clock holds, those of earlier polls included until it says it
        started them (request_started) or gives them back (stop_clock), so that an answer lost to a
        timeout is not a request lost."""
        ns = self.namespace

        def poll() -> Poll:
            with self._transaction():
                # A clock that has no lease (not registered yet after an outage at start, or stopped) claims
                # nothing: a live clock's heartbeat would take its requests for lost.
                live = self._update(self._sql(_SQL_RENEW), (ns, clock_id)) == 1
                overrides = self._overrides()
                stale = [self._request(row) for row in self._query(self._sql(_SQL_STALE_REQUESTS), (ns,))]
                if stale:
                    self._set_requests("state = 'expired'", (), [request.id for request in stale])
                expired = [replace(request, state="expired") for request in stale]
                if tasks is not None and live:
                    wanted = [
                        request_id
                        for request_id, task in self._query(_SQL_PENDING_REQUESTS, (ns,))
                        if task in tasks
                    ][:REQUESTS_PER_POLL]
                    if wanted:
                        ids = ", ".join("?" * len(wanted))
                        sql = self._sql(_SQL_LOCK_REQUESTS.replace("{ids}", ids))
                        locked = [request_id for (request_id,) in self._query(sql, (ns, *wanted))]
                        if locked:
                            claim = "state = 'claimed', claimed_by = ?, claimed_at = {now}"
                            self._set_requests(self._sql(claim), (clock_id,), locked)
                held = [self._request(row) for row in self._query(_SQL_HELD_REQUESTS, (ns, clock_id))]
            return Poll(overrides, held, expired)

        return self._call("poll the control plane", poll)

    def request_started(self, request_id: int, run_id: str) -> None:
        """Note that the clock holding this request started its run, `run_id`."""
        self._call(
            "note a requested run",
            lambda: self._query(_SQL_REQUEST_STARTED, (run_id, self.namespace, request_id)),
        )

    def release_request(self, request_id: int, clock_id: str) -> None:
        """Give back a request this clock holds and will not start (a reload removed its task): it is pending
        again, for another clock."""
        sql = f"{_SQL_RELEASE_REQUESTS} AND id = ?"
        self._call(
            "give back a run request", lambda: self._query(sql, (self.namespace, clock_id, request_id))
        )

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

    def _clocks(self) -> list[ClockRow]:
        rows = self._query(self._sql(_SQL_CLOCKS.replace("{live}", _SQL_LIVE)), (self.namespace,))
        return [
            ClockRow(
                id=clock_id,
                host=host,
                pid=int(pid),
                version=version,
                started_at=self._from_db(started_at),
                heartbeat_at=self._from_db(heartbeat_at),
                alive=bool(alive),
                config_digest=digest,
            )
            for clock_id, host, pid, version, started_at, heartbeat_at, digest, alive in rows
        ]

    def _overrides(self, where: str = "", params: Sequence[object] = ()) -> dict[str, Override]:
        rows = self._query(_SQL_OVERRIDES.replace("{where}", where), (self.namespace, *params))
        return {
            task: Override(
                task,
                bool(paused),
                None if until is None else self._from_db(until),
                reason,
                actor,
                self._from_db(at),
            )
            for task, paused, until, reason, actor, at in rows
        }

    def _request(self, row: Sequence[Any]) -> RunRequest:
        request_id, task, requested_by, requested_at, state, claimed_by, claimed_at, run_id = row
        return RunRequest(
            int(request_id),
            task,
            requested_by,
            self._from_db(requested_at),
            state,
            claimed_by,
            None if claimed_at is None else self._from_db(claimed_at),
            run_id,
        )

    def _set_requests(self, assignments: str, params: Sequence[object], ids: Sequence[int]) -> None:
        sql = _SQL_SET_REQUEST.replace("{set}", assignments).replace("{ids}", ", ".join("?" * len(ids)))
        self._query(sql, (*params, self.namespace, *ids))

    def _sql(self, sql: str) -> str:
        """The statement with the backend's {now}, {dead_before}, {lock} and the other cut-offs filled in."""
        return sql.format(
            now=self._now_sql,
            dead_before=self._ago(DEAD_AFTER_S),
            forgotten_before=self._ago(CLOCK_KEEP_S),
            expired_before=self._ago(REQUEST_TTL_S),
            requests_forgotten_before=self._ago(REQUEST_KEEP_S),
            actions_forgotten_before=self._ago(ACTION_KEEP_S),
            lock=self._lock_rows,
        )

    def _db_now(self) -> object:
        """The database's current time, as a parameter."""
        return self._query(f"SELECT {self._now_sql}")[0][0]

    def _check_file(self) -> None:  # noqa: B027 - most backends have no file to check
        """Raise StoreError if the database under the open connection is gone (SQLite's file deleted)."""

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

    @abstractmethod
    def _insert(self, sql: str, params: Sequence[object]) -> int:
        """Run one INSERT of one row into a table with an `id` key; the new row's id."""

    @abstractmethod
    def _latest(self, tasks: list[str], per_task: int) -> list[tuple[Any, ...]]:
        """latest_runs()'s rows: the row id, then the columns, the output NULL."""

    def _owns_all_runs(self) -> bool:
        """Whether this store's clock is the only one (so that any run still `running` is lost)."""
        return False

    def _claim(self, rows: list[tuple[object, ...]], overlaps: list[str], claimer: str) -> list[Claim]:
        """Insert rows (in _COLUMNS order) under their overlap policies, skipping conflicts, in one
        transaction: a statement per row, which costs nothing in-process (SQLite). PostgreSQL does it all
        in one statement."""
        ns = self.namespace
        answers: list[Claim] = []
        with self._transaction():
            busy: dict[str, list[tuple[int, str, bool, object]]] = {}
            checked = sorted(
                {str(row[0]) for row, policy in zip(rows, overlaps, strict=True) if policy != "allow"}
            )
            for task in checked:
                sql = self._sql(_SQL_BUSY) + " AND run.task = ? ORDER BY run.claimed_by"
                busy[task] = [
                    (run_id, clock, bool(going), started)
                    for run_id, _, clock, going, started in self._query(sql, (ns, claimer, task))
                ]
            for row, policy in zip(rows, overlaps, strict=True):
                claimed = busy.get(str(row[0]), [])
                if policy == "skip_ahead" and claimed:
                    answers.append(Claim(False, claimed[0][1]))  # asked again when due
                    continue
                others = [(run_id, clock) for run_id, clock, going, started in claimed if going]
                stop = [run_id for run_id, _, going, started in claimed if going and started < row[1]]  # type: ignore[operator]
                running_on = others[0][1] if others else None
                skipped = policy == "skip" and running_on is not None
                if skipped:
                    row = (*row[:6], "skipped", row[5], *row[8:])
                if self._update(_SQL_INSERT_ONE, (ns, *row)) != 1:
                    answers.append(Claim(False))
                    continue
                if policy == "replace":
                    for run_id in stop:
                        self._query(
                            self._sql("UPDATE scheduler_runs SET stop_requested_at = {now} WHERE id = ?"),
                            (run_id,),
                        )
                answers.append(Claim(not skipped, running_on if policy != "allow" else None))
            self._query(self._sql(_SQL_RENEW), (ns, claimer))
        return answers

    _now_sql: str
    """The backend's SQL for the database's current time, in its stored form."""
    _lock_rows: str
    """What a SELECT ends with to lock its rows for the transaction, skipping rows another holds."""

    @abstractmethod
    def _ago(self, seconds: float) -> str:
        """The backend's SQL for the database's current time less this many seconds."""

    @abstractmethod
    def _to_db(self, at: datetime) -> object: ...

    @abstractmethod
    def _from_db(self, value: Any) -> datetime: ...


class _SQLiteStore(Store):
    """One database file: one clock on one machine (lock_single_clock makes sure of it)."""

    kind = "sqlite"
    _migrations = _SQLITE_MIGRATIONS

    _now_sql = _SQLITE_NOW.format("")
    _lock_rows = ""  # BEGIN IMMEDIATE holds the database's write lock: writers are serialized already

    def __init__(self, url: str, path: str, keep_runs: int, namespace: str, *, create: bool = True) -> None:
        super().__init__(url, keep_runs, namespace)
        self.path = path
        self.create = create
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file the connection opened
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
            os.makedirs(os.path.dirname(lock_path), mode=_PRIVATE_DIR, exist_ok=True)
            # O_CLOEXEC: a task's child process must not inherit the lock and hold it after the clock died.
            fd = _open_private(lock_path, os.O_RDWR | os.O_CLOEXEC)
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

        if not self.create and not os.path.exists(self.path):
            raise StoreMissingError(
                f"run-history store {self.display_url}: no database file {self.path} "
                "(`scheduler run` creates it)"
            )
        os.makedirs(os.path.dirname(self.path), mode=_PRIVATE_DIR, exist_ok=True)
        # The history holds task output: the file is created (or tightened) to 0600 before SQLite opens it,
        # whatever the umask. SQLite gives the -wal and -shm files the database file's mode.
        os.close(_open_private(self.path, os.O_RDWR | os.O_CLOEXEC))
        for suffix in ("-wal", "-shm"):
            _tighten(self.path + suffix)
        # isolation_level=None: no implicit transactions; _transaction() says BEGIN IMMEDIATE itself, which
        # takes the write lock up front (waiting up to the busy timeout) instead of failing on an upgrade.
        self._conn = sqlite3.connect(
            self.path, timeout=CONNECT_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        _use_wal(self._conn)
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a claim costs no fsync on the way to
        # a fire. A power cut may lose the last claims (never corrupt the file); a process crash loses none.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._file_id = _file_id(self.path)
        for suffix in ("-wal", "-shm"):
            _tighten(self.path + suffix)

    def _check_file(self) -> None:
        """A database file deleted (or replaced) under the clock would take its writes into an inode that
        nobody reads: give the connection up, so that the next connect() opens (or creates) the file at the
        path again, and say so."""
        if self._conn is None or self._file_id is None:
            return
        try:
            current: tuple[int, int] | None = _file_id(self.path)
        except FileNotFoundError:
            current = None
        except OSError:
            return  # cannot tell: the next statement's error, if any, says more
        if current == self._file_id:
            return
        self._drop()
        what = "deleted" if current is None else "replaced"
        raise StoreError(f"run-history store {self.display_url}: the database file was {what}; reopening it")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._file_id = None
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

    def _insert(self, sql: str, params: Sequence[object]) -> int:
        row_id = self._connection().execute(sql, params).lastrowid
        assert row_id is not None
        return row_id

    def _latest(self, tasks: list[str], per_task: int) -> list[tuple[Any, ...]]:
        return self._query(self._sql(_SQLITE_LATEST), (json.dumps(tasks), self.namespace, per_task))

    def _owns_all_runs(self) -> bool:
        return self._lock_fd is not None

    def _ago(self, seconds: float) -> str:
        return _SQLITE_NOW.format(f", '-{seconds:f} seconds'")

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

    _now_sql = "now()"
    _lock_rows = "FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, conninfo: str, keep_runs: int, namespace: str) -> None:
        super().__init__(url, keep_runs, namespace)
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

    def _insert(self, sql: str, params: Sequence[object]) -> int:
        return int(self._query(f"{sql.rstrip()} RETURNING id", params)[0][0])

    def _claim(self, rows: list[tuple[object, ...]], overlaps: list[str], claimer: str) -> list[Claim]:
        columns: list[object] = [list(column) for column in zip(*rows, strict=True)]
        params = [*columns, overlaps, self.namespace, claimer, self.namespace, self.namespace, claimer]
        answers = {
            run_id: (inserted, busy)
            for run_id, inserted, busy in self._query(self._sql(_SQL_CLAIM_BATCH), params)
        }
        claims = []
        for row, policy in zip(rows, overlaps, strict=True):
            inserted, running_on = answers.get(row[3], (False, None))
            if policy == "allow":
                running_on = None
            if not inserted:
                # Another clock holds the instant, or (claimed ahead) a run elsewhere overlaps it for now.
                claims.append(Claim(False, running_on if policy == "skip_ahead" else None))
            else:
                claims.append(Claim(policy != "skip" or running_on is None, running_on))
        return claims

    def _latest(self, tasks: list[str], per_task: int) -> list[tuple[Any, ...]]:
        return self._query(self._sql(_POSTGRES_LATEST), (tasks, self.namespace, per_task))

    def _ago(self, seconds: float) -> str:
        return f"(now() - interval '{seconds:f} seconds')"

    def _to_db(self, at: datetime) -> object:
        return _utc(at)

    def _from_db(self, value: Any) -> datetime:
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    def _connection(self) -> Connection[tuple[Any, ...]]:
        assert self._conn is not None, "connect() first"
        return self._conn


def _open_private(path: str, flags: int) -> int:
    """Open (creating) a file that only its owner may read: 0600 whatever the umask, and an existing file
    with wider permissions (from an older version) is tightened."""
    fd = os.open(path, flags | os.O_CREAT, _PRIVATE_FILE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, _PRIVATE_FILE)
    except OSError:
        pass  # not ours to change (another user's file): it keeps its mode
    return fd


def _tighten(path: str) -> None:
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, _PRIVATE_FILE)
    except OSError:
        pass  # absent, or not ours


def _file_id(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


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
        record.attempt,
    )


def _clock_name(claimed_by: str) -> str:
    """'host:pid' of a claimed_by 'host:pid:token' (or of an older 'host:pid')."""
    return ":".join(claimed_by.split(":")[:2])


def _tail(output: str | None) -> str | None:
    """The last STORE_TAIL_BYTES bytes of the output as UTF-8, cut where a character starts.

    NUL characters become U+FFFD: PostgreSQL text cannot hold them, and both backends keep the same text.
    """
    if output is None:
        return None
    return utf8_tail(output.replace("\x00", "\ufffd"), STORE_TAIL_BYTES).decode("utf-8")


def _utc(at: datetime) -> datetime:
    if at.utcoffset() is None:
        raise ValueError(f"naive datetime {at.isoformat()}: the store takes aware datetimes")
    return at.astimezone(UTC)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else iso_utc(at)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


_NAME_MAX = 200
_REASON_MAX = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _check_text(what: str, value: str, limit: int, *, empty: bool = False) -> None:
    """A task name, an actor or a reason as the control plane keeps it: text, not blank (unless `empty`),
    at most `limit` characters, no NUL (PostgreSQL text cannot hold one)."""
    if not empty and not value.strip():
        raise ControlError(f"{what} must not be empty, got {value!r}")
    if len(value) > limit:
        raise ControlError(f"{what} is {len(value)} characters long, over {limit}: {value[:40]!r}...")
    if "\x00" in value:
        raise ControlError(f"{what} {value[:40]!r} holds a NUL character")


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= PAGE_MAX:
        raise ValueError(f"limit must be from 1 to {PAGE_MAX}, not {limit}")


def _filters(prefix: str = "", **columns: str | None) -> tuple[str, list[object]]:
    """' AND column = ?' for each column given a value, and those values."""
    given = {column: value for column, value in columns.items() if value is not None}
    return "".join(f" AND {prefix}{column} = ?" for column in given), list(given.values())


def _cursor(started_at: datetime, row_id: int) -> str:
    """A page's key, as runs() takes it back: microseconds since the epoch and the row's id, URL-safe."""
    return f"{(started_at - _EPOCH) // _MICROSECOND}.{row_id}"


def _parse_cursor(text: str) -> tuple[datetime, int]:
    micros, dot, row_id = text.partition(".")
    if not dot or not micros.lstrip("-").isdigit() or not row_id.isdigit():
        raise ValueError(f"before '{text}': not a RunPage.before from runs()")
    return _EPOCH + int(micros) * _MICROSECOND, int(row_id)
