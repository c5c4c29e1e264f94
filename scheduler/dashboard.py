"""What the dashboard shows and does: schedules.yaml for the definitions, the store for everything else.

The dashboard is a process of its own that reads the same schedules file as the clocks (computing next fires
with the same pure code) and the store they write. It never slows a clock: every read is a short statement on
a connection of its own, each page's reads are one bounded call (STORE_DEADLINE_S), and its only writes are
the control plane's (pause, resume, run requests), one short transaction each. This module knows nothing of
HTTP: web.py turns requests into these calls and pages.py turns their answers into HTML.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from structlog.typing import FilteringBoundLogger

from scheduler.config import Config, TaskSpec
from scheduler.errors import ConfigError, NoLiveClockError, StoreError, UnknownTaskError
from scheduler.runs import iso_utc
from scheduler.schedule import Fire
from scheduler.store import RUN_STATUSES, Action, ClockRow, Override, RunPage, RunRecord, RunRequest, Store

_T = TypeVar("_T")

STORE_DEADLINE_S = 5.0
"""The longest one page waits for the store; then it says the store is not answering."""
STORE_CONNECTIONS = 1
"""Connections the dashboard keeps to the store: one read at a time, the others wait their turn (each is a
few milliseconds), so that however many browsers poll it the dashboard never keeps more than one database
process busy: on a machine shared with a clock, a core stays free for the clock's fires."""
SHARED_FOR_S = 1.0
"""What every task's row needs (last runs, pauses, runs going, clocks) is read once and shared by the pages
and API calls of the next second: twenty browsers polling cost the database what one does. An action clears
it, so that what it did shows at once."""
CONFIG_CHECK_S = 2.0
"""The schedules file is looked at (a stat) at most this often, and read again when it changed."""
OVERVIEW_PAGE = 100
"""Tasks per overview page: the search and the failing filter look at every task."""
STRIP_RUNS = 30
"""Runs in each task's strip on the overview."""
NEXT_FIRES = 10
"""Fires listed on a task's page."""
CHART_RUNS = 100
"""Runs in a task's duration chart."""
HISTORY_PAGE = 50
"""Runs per page of a task's history and of the recent runs, unless asked for another number."""
RECENT_ACTIONS = 20
"""Entries of a task's audit trail on its page."""
FAILING_STATUSES = ("failed", "timed_out", "killed", "lost")
"""A task whose last run ended so is failing."""
RUN_TRIGGERS = ("schedule", "catch_up", "manual", "retry")


class Stores:
    """A few connections to one store, each call on a thread of its own and bounded by a deadline.

    A store call may hang where no timeout of the driver reaches (a server stopped, not gone): the caller
    waits at most deadline_s, then gets a StoreError, and the connection stuck in that call is replaced by a
    new one (the stuck one is closed when its call ends, if ever). So a page never hangs on the store, and a
    store that stalls costs a few idle threads, not the dashboard.
    """

    def __init__(
        self,
        open_one: Callable[[], Store],
        size: int = STORE_CONNECTIONS,
        deadline_s: float = STORE_DEADLINE_S,
    ) -> None:
        self._open_one = open_one
        self._deadline_s = deadline_s
        self._free: queue.LifoQueue[Store] = queue.LifoQueue()
        self._all: list[Store] = []
        self._lock = threading.Lock()
        for _ in range(size):
            self._add()
        self.display_url = self._all[0].display_url
        self.kind = self._all[0].kind
        self.last_error: str | None = None

    def call(self, operation: Callable[[Store], _T]) -> _T:
        """operation(store) on a free connection, within the deadline (waiting for a connection included).
        A StoreError, raised or for the deadline, is remembered in last_error until a call succeeds."""
        started = time.monotonic()
        try:
            store = self._free.get(timeout=self._deadline_s)
        except queue.Empty:
            busy = StoreError(f"run-history store {self.display_url}: every connection is busy")
            raise self._failed(busy) from None
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(operation(store))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="dashboard-store", daemon=True).start()
        left = max(0.0, self._deadline_s - (time.monotonic() - started))
        try:
            result = future.result(left)
        except concurrent.futures.TimeoutError:
            future.add_done_callback(lambda _: store.close())
            self._forget(store)
            self._add()
            raise self._failed(
                StoreError(f"run-history store {self.display_url}: no answer within {self._deadline_s:g} s")
            ) from None
        except StoreError as exc:
            self._free.put(store)
            raise self._failed(exc) from None
        except BaseException:
            self._free.put(store)
            raise
        self._free.put(store)
        self.last_error = None
        return result

    def close(self) -> None:
        """Close every connection (a stuck one when its call ends)."""
        with self._lock:
            stores = list(self._all)
        for store in stores:
            try:
                store.close()
            except StoreError:
                pass

    def _add(self) -> None:
        store = self._open_one()
        with self._lock:
            self._all.append(store)
        self._free.put(store)

    def _forget(self, store: Store) -> None:
        with self._lock:
            self._all.remove(store)

    def _failed(self, exc: StoreError) -> StoreError:
        self.last_error = str(exc)
        return exc


class Schedules:
    """schedules.yaml as the dashboard sees it: read at start, and again (in the background) when the file
    changes. A change that does not parse keeps the last valid version, with the problem in `error`. Also
    caches what the pages ask of each task again and again: its schedule in words and its next fire."""

    def __init__(
        self,
        path: str,
        load: Callable[[str], Config],
        *,
        check_every_s: float = CONFIG_CHECK_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load the file now: a ConfigError propagates (the dashboard does not start on an invalid file)."""
        self.path = path
        self._load = load
        self._check_every_s = check_every_s
        self._monotonic = monotonic
        self._stamp = self._file_stamp()
        self.config = load(path)
        self.error: str | None = None
        self._checked = monotonic()
        self._reloading = threading.Lock()
        self._words: dict[str, tuple[TaskSpec, str]] = {}
        self._next: dict[str, tuple[TaskSpec, Fire | None]] = {}

    def current(self) -> Config:
        """The config to show now; at most every check_every_s, a look at the file, and a reload in the
        background when it changed (the caller gets the version it had until the reload is done)."""
        now = self._monotonic()
        if now - self._checked >= self._check_every_s:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp and self._reloading.acquire(blocking=False):
                threading.Thread(
                    target=self._reload, args=(stamp,), name="dashboard-config", daemon=True
                ).start()
        return self.config

    def reload_now(self) -> None:
        """Read the file again at once (tests, and a change the stat could not see)."""
        with self._reloading:
            self._reload_locked(self._file_stamp())

    def words(self, spec: TaskSpec) -> str:
        """The task's schedule in plain words."""
        cached = self._words.get(spec.name)
        if cached is not None and cached[0].schedule == spec.schedule:
            return cached[1]
        words = spec.schedule.describe()
        self._words[spec.name] = (spec, words)
        return words

    def next_fire(self, spec: TaskSpec, now: datetime) -> Fire | None:
        """The task's next fire after `now`, None when it is disabled; computed again only once it passed."""
        if not spec.enabled:
            return None
        cached = self._next.get(spec.name)
        if cached is not None and cached[0] == spec and cached[1] is not None and cached[1].at > now:
            return cached[1]
        fire = spec.schedule.next_fire(now)
        self._next[spec.name] = (spec, fire)
        return fire

    def _reload(self, stamp: tuple[int, int, int] | None) -> None:
        try:
            self._reload_locked(stamp)
        finally:
            self._reloading.release()

    def _reload_locked(self, stamp: tuple[int, int, int] | None) -> None:
        try:
            config = self._load(self.path)
        except ConfigError as exc:
            self.error = str(exc)
        else:
            self.config = config
            self.error = None
            self._words = {name: words for name, words in self._words.items() if name in config.tasks}
            self._next = {name: fire for name, fire in self._next.items() if name in config.tasks}
        self._stamp = stamp

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task as the overview and the API show it."""

    spec: TaskSpec
    words: str  # the schedule in plain words
    next: Fire | None  # None when the task is disabled
    last: RunRecord | None  # its newest run, without output
    pause: Override | None  # the pause that holds now, if any
    running: tuple[RunRecord, ...] = ()  # its runs going now, on live clocks
    strip: tuple[RunRecord, ...] = ()  # its newest runs, newest first (the overview's page only)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def failing(self) -> bool:
        return self.last is not None and self.last.status in FAILING_STATUSES

    def to_json(self) -> dict[str, object]:
        """GET /api/tasks: one object per task."""
        last = self.last
        return {
            "task": self.spec.name,
            "schedule": self.spec.schedule.text,
            "timezone": self.spec.timezone,
            "paused": self.pause is not None,
            "running": bool(self.running),
            "next": None if self.next is None else self.next.at.astimezone(self.spec.zone).isoformat(),
            "last_run": None
            if last is None
            else {
                "status": last.status,
                "started_at": iso_utc(last.started_at),
                "duration_s": last.duration_s,
            },
        }


@dataclass(frozen=True, slots=True)
class Situation:
    """What every page says at its top: the time it was made, how many clocks are live, and what is wrong."""

    now: datetime
    live_clocks: int | None  # None: the store could not tell
    config_error: str | None = None  # the schedules file changed and does not parse
    store_error: str | None = None  # the store could not be read: the page shows what it can without it


@dataclass(frozen=True, slots=True)
class Overview:
    situation: Situation
    rows: list[TaskRow]  # this page's tasks
    total: int  # tasks in the file
    matched: int  # tasks the search and the filter keep
    failing: int  # tasks failing, of all
    paused: int  # tasks paused, of all
    page: int  # 1-based
    pages: int
    query: str
    failing_only: bool


@dataclass(frozen=True, slots=True)
class TaskPage:
    situation: Situation
    row: TaskRow
    fires: list[Fire]
    chart: list[RunRecord]  # newest first
    history: RunPage
    status: str | None
    trigger: str | None
    before: str | None
    override: Override | None  # as stored: a resumed task keeps who resumed it
    actions: list[Action]
    requests: list[RunRequest]


@dataclass(frozen=True, slots=True)
class RunsPage:
    situation: Situation
    runs: list[RunRecord]
    next_before: str | None
    status: str | None
    trigger: str | None
    before: str | None
    failures_first: bool


@dataclass(frozen=True, slots=True)
class StoreStatus:
    kind: str
    url: str  # without its password
    ok: bool
    latency_ms: float | None
    error: str | None


@dataclass(frozen=True, slots=True)
class ClocksPage:
    situation: Situation
    clocks: list[ClockRow]
    digest: str  # of the schedules file the dashboard reads
    differs: frozenset[str]  # ids of live clocks whose config digest is not the dashboard's
    store: StoreStatus


class _Shared:
    """Values that the requests of a moment share (for fresh_s), each fetched once however many ask at once.
    A fetch that fails fails for the callers that were waiting on it too (a store that does not answer
    costs them one deadline, not one each, in turn); a caller that comes later tries again."""

    _MAX_ENTRIES = 64

    def __init__(self, fresh_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._fresh_s = fresh_s
        self._monotonic = monotonic
        self._entries: dict[object, tuple[float, Any]] = {}
        self._locks: dict[object, threading.Lock] = {}
        self._failures: dict[object, tuple[float, BaseException]] = {}
        self._guard = threading.Lock()

    def get(self, key: object, fetch: Callable[[], _T]) -> _T:
        if self._fresh_s <= 0:
            return fetch()
        hit = self._fresh(key)
        if hit is not None:
            return hit[1]  # type: ignore[no-any-return]
        arrived = self._monotonic()
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one fetch per key at a time: the others wait for its answer
            hit = self._fresh(key)
            if hit is not None:
                return hit[1]  # type: ignore[no-any-return]
            failed = self._failures.get(key)
            if failed is not None and failed[0] >= arrived:
                raise failed[1]
            started = self._monotonic()
            try:
                value = fetch()
            except BaseException as exc:
                self._failures[key] = (self._monotonic(), exc)
                raise
            with self._guard:
                if len(self._entries) >= self._MAX_ENTRIES:
                    self._entries.clear()
                self._entries[key] = (started, value)
            return value

    def clear(self) -> None:
        with self._guard:
            self._entries.clear()

    def _fresh(self, key: object) -> tuple[float, Any] | None:
        hit = self._entries.get(key)
        if hit is not None and self._monotonic() - hit[0] < self._fresh_s:
            return hit
        return None


@dataclass(frozen=True, slots=True)
class _Reads:
    """The store's side of a page, read in one bounded call."""

    clocks: list[ClockRow] = field(default_factory=list)
    overrides: dict[str, Override] = field(default_factory=dict)
    running: list[RunRecord] = field(default_factory=list)
    last: dict[str, list[RunRecord]] = field(default_factory=dict)
    strips: dict[str, list[RunRecord]] = field(default_factory=dict)
    extra: Any = None


class Dashboard:
    """The dashboard's reads and actions, for web.py's handlers (and the tests)."""

    def __init__(
        self,
        schedules: Schedules,
        stores: Stores,
        *,
        log: FilteringBoundLogger,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        shared_for_s: float = SHARED_FOR_S,
    ) -> None:
        """shared_for_s: how long the reads every task's row needs are shared (0: each request reads)."""
        self.schedules = schedules
        self.stores = stores
        self._log = log
        self._now = now
        self._shared = _Shared(shared_for_s)

    # Reads.

    def overview(self, *, query: str = "", failing_only: bool = False, page: int = 1) -> Overview:
        """Every task of the file, searched (name, schedule as written or in words) and filtered, a page at
        a time; the page's tasks with a strip of their newest runs. Without the store, the tasks and their
        next fires still show, and the situation says why nothing else does."""
        config = self.schedules.current()
        now = self._now()
        specs = list(config.tasks.values())
        needle = query.strip().lower()
        if needle:
            specs = [
                s
                for s in specs
                if needle in f"{s.name}\n{s.schedule.text}\n{self.schedules.words(s)}".lower()
            ]

        try:
            reads = self._every_task(list(config.tasks))
        except StoreError as exc:
            reads, situation = _Reads(), Situation(now, None, self.schedules.error, str(exc))
        else:
            situation = Situation(now, sum(1 for c in reads.clocks if c.alive), self.schedules.error)
        last = {task: runs[0] for task, runs in reads.last.items()}
        kept = [s for s in specs if not failing_only or _failing(last.get(s.name))]
        pages = max(1, -(-len(kept) // OVERVIEW_PAGE))
        page = min(max(page, 1), pages)
        shown = tuple(spec.name for spec in _page_of(kept, page, OVERVIEW_PAGE))
        if shown and situation.store_error is None:
            try:
                strips = self._shared.get(
                    ("strips", shown), lambda: self.stores.call(lambda s: s.latest_runs(shown, STRIP_RUNS))
                )
            except StoreError as exc:
                situation = Situation(now, None, self.schedules.error, str(exc))
            else:
                reads = replace(reads, strips=strips)
        rows = [self._row(spec, now, reads, last) for spec in _page_of(kept, page, OVERVIEW_PAGE)]
        failing = sum(1 for name in config.tasks if _failing(last.get(name)))
        paused = sum(1 for name in config.tasks if _holding(reads.overrides.get(name), now))
        return Overview(
            situation, rows, len(config.tasks), len(kept), failing, paused, page, pages, query, failing_only
        )

    def tasks(self) -> list[TaskRow]:
        """Every task with its next fire, last run, pause and running state (GET /api/tasks). A StoreError
        propagates: the API says 503 rather than half an answer."""
        config = self.schedules.current()
        now = self._now()
        reads = self._every_task(list(config.tasks))
        last = {task: runs[0] for task, runs in reads.last.items()}
        return [self._row(spec, now, reads, last) for spec in config.tasks.values()]

    def task(
        self,
        name: str,
        *,
        status: str | None = None,
        trigger: str | None = None,
        before: str | None = None,
        limit: int = HISTORY_PAGE,
    ) -> TaskPage:
        """One task: its definition, next fires with their DST notes, a chart of its newest runs' durations,
        a page of its history (filtered, keyset-paginated), its pause and its audit trail."""
        spec = self.spec(name)
        now = self._now()
        check_filters(status, trigger)

        def read(store: Store) -> _Reads:
            history = store.runs(name, status=status, trigger=trigger, limit=limit, before=before)
            if status is None and trigger is None and before is None and limit >= CHART_RUNS:
                chart = history.runs[:CHART_RUNS]
            else:
                chart = store.runs(name, limit=CHART_RUNS).runs
            return _Reads(
                clocks=store.clocks(),
                overrides=store.overrides(),
                running=store.running(name),
                last={name: chart[:1]} if chart else {},
                extra=(
                    history,
                    chart,
                    store.actions(name, limit=RECENT_ACTIONS),
                    store.requests(name, limit=10),
                ),
            )

        reads, situation = self._read(read, now)
        history, chart, actions, requests = reads.extra or (RunPage([], None), [], [], [])
        last = {task: runs[0] for task, runs in reads.last.items()}
        return TaskPage(
            situation,
            self._row(spec, now, reads, last),
            spec.schedule.fires(now, NEXT_FIRES) if spec.enabled else [],
            [run for run in chart if run.duration_s is not None],
            history,
            status,
            trigger,
            before,
            reads.overrides.get(name),
            actions,
            requests,
        )

    def runs(
        self,
        task: str | None = None,
        *,
        status: str | None = None,
        trigger: str | None = None,
        before: str | None = None,
        limit: int = HISTORY_PAGE,
    ) -> RunPage:
        """A page of runs, newest first, of one task (which must be in the file) or of all (the API)."""
        if task is not None:
            self.spec(task)
        check_filters(status, trigger)
        return self.stores.call(
            lambda store: store.runs(task, status=status, trigger=trigger, limit=limit, before=before)
        )

    def recent(
        self,
        *,
        status: str | None = None,
        trigger: str | None = None,
        before: str | None = None,
        failures_first: bool = False,
    ) -> RunsPage:
        """The newest runs across tasks, a page at a time; with failures_first, each page's failures above
        its other runs (each group newest first)."""
        now = self._now()
        check_filters(status, trigger)

        def read(store: Store) -> _Reads:
            page = store.runs(status=status, trigger=trigger, limit=HISTORY_PAGE, before=before)
            return _Reads(clocks=store.clocks(), extra=page)

        reads, situation = self._read(read, now)
        page = reads.extra or RunPage([], None)
        runs = list(page.runs)
        if failures_first:
            runs.sort(
                key=lambda run: run.status not in FAILING_STATUSES
            )  # stable: newest first in each group
        return RunsPage(situation, runs, page.before, status, trigger, before, failures_first)

    def clocks(self) -> ClocksPage:
        """Every clock the store remembers, live or not, which of the live ones run another schedules file
        than the dashboard reads, and how the store answers."""
        now = self._now()
        digest = self.schedules.current().digest
        started = time.monotonic()
        reads, situation = self._read(lambda store: _Reads(clocks=store.clocks()), now)
        latency = None if situation.store_error else (time.monotonic() - started) * 1000
        differs = frozenset(c.id for c in reads.clocks if c.alive and c.config_digest != digest)
        status = StoreStatus(
            self.stores.kind,
            self.stores.display_url,
            situation.store_error is None,
            latency,
            situation.store_error,
        )
        return ClocksPage(situation, reads.clocks, digest, differs, status)

    def clock_rows(self) -> list[ClockRow]:
        """Every clock the store remembers (GET /api/clocks)."""
        return self.stores.call(lambda store: store.clocks())

    def spec(self, name: str) -> TaskSpec:
        """The task of the file with this name; UnknownTaskError (with a suggestion) otherwise."""
        config = self.schedules.current()
        spec = config.tasks.get(name)
        if spec is None:
            from scheduler.config import suggest

            raise UnknownTaskError(name, sorted(config.tasks)[:20], suggest(name, config.tasks))
        return spec

    # Actions: each is one short write to the store, with its entry in the audit trail, and an event.

    def run_now(self, name: str, *, by: str) -> int:
        """Ask the live clocks to run the task once, now (its configured command, trigger manual); the
        request's id. Refused (NoLiveClockError) when no clock is live: nothing would run it."""
        spec = self.spec(name)

        def request(store: Store) -> int:
            if not any(clock.alive for clock in store.clocks()):
                raise NoLiveClockError(
                    f"task '{spec.name}': no live clock would run it; start `scheduler run` on this store"
                )
            return store.request_run(spec.name, by=by)

        request_id = self.stores.call(request)
        self._shared.clear()
        self._log.info("web.action", action="run", task=spec.name, by=by, request_id=request_id)
        return request_id

    def pause(self, name: str, *, by: str, until: datetime | None = None, reason: str = "") -> Override:
        """Pause the task for every clock until resumed, or until `until`."""
        spec = self.spec(name)
        override = self.stores.call(lambda store: store.pause(spec.name, by=by, until=until, reason=reason))
        self._shared.clear()
        self._log.info(
            "web.action",
            action="pause",
            task=spec.name,
            by=by,
            until=None if until is None else iso_utc(until),
            reason=reason,
        )
        return override

    def resume(self, name: str, *, by: str) -> bool:
        """End the task's pause; whether a pause held it."""
        spec = self.spec(name)
        held = self.stores.call(lambda store: store.resume(spec.name, by=by))
        self._shared.clear()
        self._log.info("web.action", action="resume", task=spec.name, by=by, was_paused=held)
        return held

    # Helpers.

    def _every_task(self, names: list[str]) -> _Reads:
        """What every task's row needs, shared by the requests of the next SHARED_FOR_S."""

        def read(store: Store) -> _Reads:
            return _Reads(store.clocks(), store.overrides(), store.running(), store.latest_runs(names))

        return self._shared.get(("every task", tuple(names)), lambda: self.stores.call(read))

    def _read(self, operation: Callable[[Store], _Reads], now: datetime) -> tuple[_Reads, Situation]:
        """The page's reads, or none and the store's error: pages show what they can without the store."""
        error = self.schedules.error
        try:
            reads = self.stores.call(operation)
        except StoreError as exc:
            return _Reads(), Situation(now, None, error, str(exc))
        live = sum(1 for clock in reads.clocks if clock.alive)
        return reads, Situation(now, live, error)

    def _row(self, spec: TaskSpec, now: datetime, reads: _Reads, last: dict[str, RunRecord]) -> TaskRow:
        override = reads.overrides.get(spec.name)
        return TaskRow(
            spec,
            self.schedules.words(spec),
            self.schedules.next_fire(spec, now),
            last.get(spec.name),
            override if _holding(override, now) else None,
            tuple(run for run in reads.running if run.task == spec.name),
            tuple(reads.strips.get(spec.name, ())),
        )


def check_filters(status: str | None, trigger: str | None) -> None:
    """A status filter must name a status; a trigger, look like one (new triggers may come)."""
    if status is not None and status not in RUN_STATUSES:
        raise ValueError(f"status '{status}': use one of {', '.join(RUN_STATUSES)}")
    if trigger is not None and not (trigger.replace("_", "").isalpha() and trigger.islower()):
        raise ValueError(f"trigger '{trigger}': use one of {', '.join(RUN_TRIGGERS)}")


def _failing(last: RunRecord | list[RunRecord] | None) -> bool:
    if isinstance(last, list):
        last = last[0] if last else None
    return last is not None and last.status in FAILING_STATUSES


def _holding(override: Override | None, now: datetime) -> bool:
    return override is not None and override.holds(now)


def _page_of(items: Sequence[_T], page: int, size: int) -> list[_T]:
    pages = max(1, -(-len(items) // size))
    page = min(max(page, 1), pages)
    return list(items[(page - 1) * size : page * size])
