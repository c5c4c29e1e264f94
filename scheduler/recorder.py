"""The clock's side of the run-history store: claims with a bound, writes that never hold up a fire, outages.

Every call to the store runs in one worker thread of its own, one at a time, so the loop never blocks on the
database: a claim is awaited for at most CLAIM_TIMEOUT_S, and writes are queued and forgotten. When a call
fails or overruns, the store counts as unavailable: `store.unavailable` is logged once, claims answer
"unknown" at once (the clock then fires best-effort, or skips a `require_store` task), writes wait in a
bounded queue, and a reconnect is tried with exponential backoff until it succeeds; `store.recovered` then
says how long the outage lasted, and the queued writes are flushed in order.

While started, the recorder renews the clock's lease every HEARTBEAT_S from that same thread; each heartbeat
also tidies up after dead clocks (`store.lost_runs`), brings the runs another clock asked this one to stop
(`on_stop_requested`), and warns when the live clocks run different configs (`config.mismatch`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from structlog.typing import FilteringBoundLogger

from scheduler import __version__
from scheduler.errors import StoreError
from scheduler.store import HEARTBEAT_S, Beat, Claim, ClockInfo, Override, Poll, RunRecord, Store

_T = TypeVar("_T")

# The longest a fire waits for its claim before the clock decides without the store.
CLAIM_TIMEOUT_S = 1.0
# The longest any other call may take before the store counts as unavailable.
CALL_TIMEOUT_S = 5.0
# Reconnect attempts start this far apart and double up to the cap.
RECONNECT_FIRST_S = 1.0
RECONNECT_MAX_S = 30.0
# Writes kept while the store is down; past this the oldest are dropped (and counted in store.recovered).
PENDING_WRITES_CAP = 10_000
# At shutdown, queued writes get this long to reach the store.
FLUSH_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class History:
    """What a starting clock reads from the store, per task."""

    claimed: dict[str, datetime]  # the newest instant any clock claimed: for catch-up
    last_run: dict[str, datetime]  # when the newest run started: for the metrics
    last_success: dict[str, datetime]  # when the newest successful run ended: for the metrics
    overrides: dict[str, Override] = field(default_factory=dict)  # the pauses, before the first fire


def clock_identity() -> str:
    """Who claims a run, as stored in claimed_by: the Heroku dyno name (or the host name), the pid, and a
    random token, since a restarted dyno often gets the same name and pid: 'clock.1:4:5f0c2a'."""
    return f"{host_name()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def host_name() -> str:
    """The machine a clock or a command runs on, as the store names it: the Heroku dyno, else the host."""
    return os.environ.get("DYNO") or socket.gethostname()


def _ignore_stops(run_ids: list[str]) -> None:
    """The default on_stop_requested: no runs to stop."""


class Recorder:
    """Claims instants and records runs in a Store, without ever stalling the clock on it."""

    def __init__(
        self,
        store: Store,
        *,
        log: FilteringBoundLogger,
        config_digest: str,
        claimed_by: str | None = None,
        on_stop_requested: Callable[[list[str]], None] = _ignore_stops,
        heartbeat_s: float = HEARTBEAT_S,
        claim_timeout_s: float = CLAIM_TIMEOUT_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
        reconnect_first_s: float = RECONNECT_FIRST_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        pending_cap: int = PENDING_WRITES_CAP,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.claimed_by = claimed_by or clock_identity()
        self._info = ClockInfo(self.claimed_by, host_name(), os.getpid(), __version__, config_digest)
        self._on_stop_requested = on_stop_requested
        self._heartbeat_s = heartbeat_s
        self._heartbeat_job: asyncio.Task[None] | None = None
        self._mismatch: frozenset[tuple[str, str]] = frozenset()
        self._log = log.bind(store=store.display_url)
        self._claim_timeout_s = claim_timeout_s
        self._call_timeout_s = call_timeout_s
        self._reconnect_first_s = reconnect_first_s
        self._reconnect_max_s = reconnect_max_s
        self._sleep = sleep
        self._worker = _Worker()
        # Writes waiting for the store's thread, in order: insert a run fired without a claim, give back a
        # claim, or record the end of a run.
        self._pending: deque[Callable[[Store], object]] = deque(maxlen=pending_cap)
        self._dropped = 0
        self._available = True
        self._down_since = 0.0
        self._reconnect_job: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return self._available

    async def start(self, now: datetime) -> History | None:
        """Connect (creating or upgrading the schema), register this clock, mark the runs a dead clock of
        the same name left `running` as lost, and read what the clock starts from; None when the store
        cannot be reached (then the outage has begun). The heartbeat runs from here until close()."""
        self._heartbeat_job = asyncio.get_running_loop().create_task(self._heartbeats())
        try:
            lost, beat, history = await self._call(lambda: self._connect_and_read(now), self._call_timeout_s)
        except StoreError as exc:
            self._went_down(exc)
            return None
        if lost:
            self._log.warning("store.lost_runs", runs=lost, clock=self.claimed_by)
        self._beaten(beat)
        return history

    def _connect_and_read(self, now: datetime) -> tuple[int, Beat, History]:
        self.store.connect()
        lost = self.store.mark_lost(self.claimed_by, now)
        beat = self.store.heartbeat(self._info)
        last_runs = {task: record.started_at for task, record in self.store.last_runs().items()}
        history = History(
            self.store.last_claimed(), last_runs, self.store.last_successes(), self.store.overrides()
        )
        return lost, beat, history

    async def claim_runs(
        self, records: Sequence[RunRecord], overlap: Mapping[str, str] | None = None, *, ahead: bool = False
    ) -> list[Claim] | None:
        """The store's answer for each instant (Store.claim: won, and the clock an overlap was found on);
        None when the store is unavailable or did not answer within the claim timeout (an answer that
        arrives later is not waited for). `overlap` maps tasks to `skip` or `replace`, to hold those
        policies across clocks; `ahead` for a claim made before the instant is due (see Store.claim)."""
        if not self._available:
            return None
        try:
            return await self._call(
                lambda: self.store.claim(records, overlap, ahead=ahead), self._claim_timeout_s
            )
        except StoreError as exc:
            self._went_down(exc)
            return None

    async def poll(self, tasks: Container[str] | None) -> Poll | None:
        """The control plane as the store has it for this clock (Store.poll: the pauses, the run requests it
        holds, claiming those pending for `tasks`); None when the store is unavailable or did not answer
        within the claim timeout, so that a poll under way never holds up a shutdown for longer."""
        if not self._available:
            return None
        try:
            return await self._call(lambda: self.store.poll(self.claimed_by, tasks), self._claim_timeout_s)
        except StoreError as exc:
            self._went_down(exc)
            return None

    def request_started(self, request_id: int, run_id: str) -> None:
        """Note that a run request this clock holds started as `run_id`; written in the background."""
        self._queue(lambda store: store.request_started(request_id, run_id))

    def request_released(self, request_id: int) -> None:
        """Give back a run request this clock holds and will not start; written in the background."""
        self._queue(lambda store: store.release_request(request_id, self.claimed_by))

    def config_changed(self, digest: str) -> None:
        """Note the config this clock now runs (after a reload); the next heartbeat tells the store."""
        self._info = replace(self._info, config_digest=digest)

    def started_unclaimed(self, record: RunRecord) -> None:
        """Note a run that started without a claim (the store was down): it is inserted when it can be."""
        self._queue(lambda store: store.record(record))

    def finished(self, run_id: str, **fields: Any) -> None:
        """Note the end of a run (finish's keyword arguments); written in the background."""
        self._queue(lambda store: store.finish(run_id, **fields))

    def released(self, run_id: str) -> None:
        """Give back a claim whose run will not start; written in the background."""
        self._queue(lambda store: store.release(run_id))

    async def close(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Give the queued writes up to timeout_s to reach the store, note the clean stop (so that nothing
        of this clock is taken for lost) and, when every write reached the store (so every start of a run
        request is noted), give back the run requests it holds; then let go of the store."""
        if self._heartbeat_job is not None:
            self._heartbeat_job.cancel()
        if self._reconnect_job is not None:
            self._reconnect_job.cancel()
        deadline = time.monotonic() + timeout_s
        if self._writing is not None:
            await asyncio.wait({self._writing}, timeout=timeout_s)
        if self._available and self._pending:
            remaining = max(deadline - time.monotonic(), 0.01)
            try:
                await self._call(self._flush, remaining)
            except StoreError:
                pass
        if self._pending:
            self._log.warning("store.unwritten", runs=len(self._pending))
        if self._available:
            remaining = max(deadline - time.monotonic(), 0.01)
            try:
                # Decided on the store's thread, after every write queued before it has landed or failed.
                await self._call(
                    lambda: self.store.stop_clock(self.claimed_by, release_requests=not self._pending),
                    remaining,
                )
            except StoreError:
                pass  # the lease runs out instead
        self._worker.submit(self.store.close)
        self._worker.stop()

    # Inside

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            if not self._available:
                continue  # the reconnect job has the store; the next heartbeat after it renews the lease
            try:
                beat = await self._call(lambda: self.store.heartbeat(self._info), self._call_timeout_s)
            except StoreError as exc:
                self._went_down(exc)
                continue
            self._beaten(beat)

    def _beaten(self, beat: Beat) -> None:
        """Act on a heartbeat's answer, on the event loop."""
        for clock, (runs, released) in beat.lost.items():
            self._log.warning("store.lost_runs", runs=runs, released=released, clock=clock)
        if beat.stop:
            self._on_stop_requested(beat.stop)
        digests = frozenset((row.id, row.config_digest) for row in beat.clocks)
        if len({digest for _, digest in digests}) > 1:
            if digests != self._mismatch:
                self._log.warning("config.mismatch", clocks=dict(sorted(digests)))
            self._mismatch = digests
        else:
            self._mismatch = frozenset()

    def _queue(self, write: Callable[[Store], object]) -> None:
        if len(self._pending) == self._pending.maxlen:
            self._dropped += 1
        self._pending.append(write)
        if self._available and self._writing is None:
            self._writing = asyncio.get_running_loop().create_task(self._write_pending())

    async def _write_pending(self) -> None:
        try:
            await self._call(self._flush, self._call_timeout_s)
        except StoreError as exc:
            self._went_down(exc)
        finally:
            self._writing = None
        if self._available and self._pending:
            self._writing = asyncio.get_running_loop().create_task(self._write_pending())

    def _flush(self) -> int:
        """In the store's thread: write the queued writes in order; each leaves the queue once written."""
        written = 0
        while self._pending:
            write = self._pending.popleft()
            try:
                write(self.store)
            except BaseException:
                self._pending.appendleft(write)
                raise
            written += 1
        return written

    async def _call(self, func: Callable[[], _T], timeout_s: float) -> _T:
        future = asyncio.wrap_future(self._worker.submit(func))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise StoreError(f"no answer from the store within {timeout_s:g} s") from None
        except StoreError:
            raise
        except Exception as exc:  # a driver error the store did not wrap: still an outage, not a crash
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def _went_down(self, exc: StoreError) -> None:
        if not self._available:
            return
        self._available = False
        self._down_since = time.monotonic()
        self._log.error("store.unavailable", error=str(exc), retry_in_s=self._reconnect_first_s)
        self._reconnect_job = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Try again with exponential backoff until the store answers, then flush what waited."""
        delay = self._reconnect_first_s
        while True:
            await self._sleep(delay)
            try:
                flushed = await self._call(self._reconnect_and_flush, self._call_timeout_s)
            except StoreError:
                delay = min(delay * 2, self._reconnect_max_s)
                continue
            break
        self._available = True
        self._reconnect_job = None
        extra: dict[str, Any] = {"dropped": self._dropped} if self._dropped else {}
        self._dropped = 0
        self._log.info(
            "store.recovered", down_s=round(time.monotonic() - self._down_since, 3), written=flushed, **extra
        )

    def _reconnect_and_flush(self) -> int:
        # No close() first: a failed call has closed the connection already, and close() would also let go
        # of the SQLite single-clock lock.
        self.store.connect()
        return self._flush()


class _Worker:
    """One daemon thread that runs the store's calls in order. A daemon, so that a call stuck on a dead
    network cannot hold up the process's exit (a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._serve, name="store", daemon=True)
        self._thread.start()

    def submit(self, func: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._calls.put((func, future))
        return future

    def stop(self) -> None:
        """Stop after the calls already submitted."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            func, future = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(func())
            except BaseException as exc:
                future.set_exception(exc)
