"""Claims: with a store, each scheduled instant is claimed before it runs, so that several clocks run it once.

The loop hands each due instant to a gate. Without a store (`Unclaimed`) the gate starts it at once. With one
(`Claims`), the gate claims each fire CLAIM_AHEAD_S before it is due, in one batch with the other fires of
that second, so that the store's answer is in when the instant comes and a store costs a fire no latency.
The gate also records the start and end of the runs it claimed, gives back what it will not run, and catches
up missed instants at start. It never touches processes: it asks its host (the loop) to start a run.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from scheduler.runs import new_run_id
from scheduler.schedule import Schedule
from scheduler.state import Fire, Host, LogMethod, TaskState
from scheduler.store import Claim, Override, RunRecord

if TYPE_CHECKING:
    from scheduler.recorder import History
    from scheduler.runner import Run, RunResult

# With a store, a fire is claimed this long before it is due, so that it starts on time all the same.
CLAIM_AHEAD_S = 1.0
# When many claimed instants start at once, the loop serves the running runs' I/O after this many starts.
YIELD_EVERY_FIRES = 128


class Ledger(Protocol):
    """The clock's side of the store (recorder.Recorder): claims with a bound, writes in the background."""

    claimed_by: str

    async def start(self, now: datetime) -> History | None: ...

    async def claim_runs(
        self, records: Sequence[RunRecord], overlap: Mapping[str, str] | None = None, *, ahead: bool = False
    ) -> list[Claim] | None: ...

    def config_changed(self, digest: str) -> None: ...
    def started_unclaimed(self, record: RunRecord) -> None: ...
    def finished(self, run_id: str, **fields: Any) -> None: ...
    def released(self, run_id: str) -> None: ...
    async def close(self) -> None: ...


class Gate(Protocol):
    """How the loop's fires reach a start: through claims with a store, directly without one."""

    async def open(self, now: datetime, tasks: Mapping[str, TaskState]) -> History | None:
        """Before the first fire: what the store knows (None without one), and catch-ups started."""

    def queued(self, fire: Fire) -> None:
        """A fire was queued."""

    def wake_at(self) -> float | None:
        """When the loop must wake next for the gate (to claim ahead), as POSIX time."""

    def ahead(self, now: datetime) -> None:
        """Prepare the fires due soon (claim them)."""

    def fire(self, state: TaskState, instant: datetime) -> bool:
        """Run a due instant, now or when the store answers; True if a run started now."""

    def end_of_batch(self) -> None:
        """The loop has handed over every instant due now."""

    def missed(self, name: str, instant: datetime) -> None:
        """A fire will not run: it was missed."""

    def held(self, state: TaskState, instant: datetime) -> None:
        """A fire will not run: a pause holds it back."""

    def unclaimed(self, name: str, instant: datetime, trigger: str, attempt: int = 1) -> str | None:
        """A run about to start without a claim (a retry, its attempt): its run id if it is recorded."""

    def finished(self, run: Run, result: RunResult) -> None:
        """A run (that this gate may have recorded) ended."""

    def not_run(self, run_id: str) -> None:
        """A recorded instant did not start after all (overlap, a failure to start)."""

    def config_changed(self, digest: str) -> None:
        """A reload swapped in the config with this digest (published in the clock registry)."""

    def stop(self) -> None:
        """The clock is stopping: give back what was claimed ahead."""

    async def close(self) -> None:
        """Let go of the store, its queued writes given a bounded time."""


class Unclaimed:
    """The gate without a store: every due instant starts at once, and nothing is recorded."""

    def __init__(self, host: Host) -> None:
        self._host = host

    async def open(self, now: datetime, tasks: Mapping[str, TaskState]) -> History | None:
        return None

    def queued(self, fire: Fire) -> None:
        pass

    def wake_at(self) -> float | None:
        return None

    def ahead(self, now: datetime) -> None:
        pass

    def fire(self, state: TaskState, instant: datetime) -> bool:
        return self._host.start(state, instant, "schedule")

    def end_of_batch(self) -> None:
        pass

    def missed(self, name: str, instant: datetime) -> None:
        pass

    def held(self, state: TaskState, instant: datetime) -> None:
        pass

    def unclaimed(self, name: str, instant: datetime, trigger: str, attempt: int = 1) -> str | None:
        return None

    def finished(self, run: Run, result: RunResult) -> None:
        pass

    def not_run(self, run_id: str) -> None:
        pass

    def config_changed(self, digest: str) -> None:
        pass

    def stop(self) -> None:
        pass

    async def close(self) -> None:
        pass


@dataclass(slots=True)
class _Claim:
    """A fire's claim in the store, made ahead of it; `answer` is the store's (store.Claim), or None when
    the store could not say."""

    record: RunRecord
    due: float
    answer: asyncio.Future[Claim | None]


class Claims:
    """The gate with a store: claim ahead, decide by the answer, record, give back, catch up."""

    def __init__(
        self, ledger: Ledger, host: Host, *, debug: LogMethod, info: LogMethod, warn: LogMethod
    ) -> None:
        self._ledger = ledger
        self._host = host
        self._debug = debug
        self._info = info
        self._warn = warn
        self._heap: list[Fire] = []  # the fires not claimed yet, by due time
        self._claims: dict[tuple[str, datetime], _Claim] = {}  # claims of fires not due yet
        self._recorded: set[str] = set()  # run ids of the runs whose end goes to the store
        self._to_claim: list[tuple[TaskState, datetime]] = []  # due now, not (or no longer) claimed

    async def open(self, now: datetime, tasks: Mapping[str, TaskState]) -> History | None:
        history = await self._ledger.start(now)
        if history is not None:
            self._catch_up(tasks, history.claimed, now, history.overrides)
        return history

    def queued(self, fire: Fire) -> None:
        heapq.heappush(self._heap, fire)

    def wake_at(self) -> float | None:
        return self._heap[0].due - CLAIM_AHEAD_S if self._heap else None

    def compact(self) -> None:
        """Drop the queued fires of removed or rescheduled tasks, when they dominate the heap."""
        self._heap = [fire for fire in self._heap if self._host.is_live(fire)]
        heapq.heapify(self._heap)

    @property
    def queued_count(self) -> int:
        return len(self._heap)

    def ahead(self, now: datetime) -> None:
        """Release the claims whose fire has passed unused (a reload changed or removed the task), then
        claim, in one batch, the fires due within CLAIM_AHEAD_S, so that the store's answer is there when
        they are due."""
        now_ts = now.timestamp()
        for key, claim in list(self._claims.items()):
            if claim.due <= now_ts:
                self._release(*key)
        horizon = now_ts + CLAIM_AHEAD_S
        batch: list[_Claim] = []
        loop = asyncio.get_running_loop()
        while self._heap and self._heap[0].due <= horizon:
            fire = heapq.heappop(self._heap)
            key = (fire.name, fire.instant)
            if (
                not self._host.is_live(fire)
                or key in self._claims
                or self._host.paused(fire.name, fire.instant)
            ):
                continue  # stale, claimed already, or held back by a pause (then nothing is claimed)
            # started_at: when it is to start.
            start = datetime.fromtimestamp(max(fire.due, now_ts), UTC)
            record = self._record(fire.name, fire.instant, "schedule", start)
            claim = _Claim(record, fire.due, loop.create_future())
            self._claims[key] = claim
            batch.append(claim)
        if batch:
            self._host.track(self._ask(batch))

    async def _ask(self, batch: list[_Claim]) -> None:
        answers: list[Claim] | None = None
        try:
            records = [claim.record for claim in batch]
            answers = await self._ledger.claim_runs(records, self._overlap(records), ahead=True)
        finally:
            for i, claim in enumerate(batch):
                if not claim.answer.done():
                    claim.answer.set_result(None if answers is None else answers[i])

    def _overlap(self, records: Sequence[RunRecord]) -> dict[str, str]:
        """The overlap policies the store checks across clocks inside the claim: skip and replace."""
        policies: dict[str, str] = {}
        for record in records:
            state = self._host.task(record.task)
            if state is not None and state.spec.overlap != "allow":
                policies[record.task] = state.spec.overlap
        return policies

    def fire(self, state: TaskState, instant: datetime) -> bool:
        """Fire a due instant by its claim: at once if the answer is in (True if a run started), else
        when it comes. An instant that was not claimed ahead, or whose claim ahead another clock won, is
        claimed (again) now with the rest of the batch: a clock that won it and then stopped before it was
        due gave it back, and this clock runs it instead. So is an instant left unclaimed ahead because
        another clock's run of the task was going then: it may have ended by now."""
        claim = self._claims.pop((state.spec.name, instant), None)
        if claim is None or (claim.answer.done() and _not_held(claim.answer.result())):
            self._to_claim.append((state, instant))
        elif claim.answer.done():
            return self._decide(state, instant, "schedule", claim.record, claim.answer.result())
        else:
            self._host.track(self._fire_when_answered(state, instant, claim))
        return False

    def end_of_batch(self) -> None:
        if self._to_claim:
            batch, self._to_claim = self._to_claim, []
            self._host.track(self._claim_and_fire(batch, "schedule"))

    def missed(self, name: str, instant: datetime) -> None:
        self._release(name, instant)  # claimed ahead, then missed

    def held(self, state: TaskState, instant: datetime) -> None:
        """A pause holds back a due instant. A claim this clock won for it ahead, before it heard of the
        pause, is recorded as skipped (so that no other clock runs it either); a `catch_up` task's instant
        is recorded as skipped even unclaimed, so that a catch-up after a restart never runs what a pause
        held back. Other instants held back leave nothing in the store."""
        name = state.spec.name
        claim = self._claims.pop((name, instant), None)
        if claim is None:
            if state.spec.catch_up:
                now = self._host.now()
                record = self._record(name, instant, "schedule", now)
                self._ledger.started_unclaimed(replace(record, status="skipped", finished_at=now))
            return
        run_id = claim.record.run_id

        def when_answered(answer: asyncio.Future[Claim | None]) -> None:
            result = answer.result()
            if result is not None and result.won:
                self._recorded.add(run_id)
                self.not_run(run_id)

        if claim.answer.done():
            when_answered(claim.answer)
        else:
            claim.answer.add_done_callback(when_answered)

    def unclaimed(self, name: str, instant: datetime, trigger: str, attempt: int = 1) -> str | None:
        record = self._record(name, instant, trigger, self._host.now(), attempt)
        self._ledger.started_unclaimed(record)
        self._recorded.add(record.run_id)
        return record.run_id

    def finished(self, run: Run, result: RunResult) -> None:
        self._write_end(
            run.run_id,
            status=result.status,
            exit_code=result.exit_code,
            signal=result.signal,
            duration_s=result.duration_s,
            output=(run.output_tail or result.error) if run.task.store_output else None,
        )

    def config_changed(self, digest: str) -> None:
        self._ledger.config_changed(digest)

    def not_run(self, run_id: str) -> None:
        self._write_end(run_id, status="skipped", exit_code=None, signal=None, duration_s=None, output=None)

    def stop(self) -> None:
        for key in list(self._claims):
            self._release(*key)

    async def close(self) -> None:
        await self._ledger.close()

    # Inside

    async def _fire_when_answered(self, state: TaskState, instant: datetime, claim: _Claim) -> None:
        answer = await claim.answer
        if not self._host.is_current(state) or self._host.stopping:
            if answer is not None and answer.won:
                self._give_back(claim.record.run_id)
            return
        if _not_held(answer):
            await self._claim_and_fire([(state, instant)], "schedule")
            return
        self._decide(state, instant, "schedule", claim.record, answer, yield_cpu=True)

    def _write_end(self, run_id: str, **fields: Any) -> None:
        """Record how a run this clock recorded ended (finish's keyword arguments); others are not ours."""
        if run_id in self._recorded:
            self._recorded.discard(run_id)
            self._ledger.finished(run_id, finished_at=self._host.now(), **fields)

    def _release(self, name: str, instant: datetime) -> None:
        """Give up a claim made ahead that will not be used; a won one is given back to the store."""
        claim = self._claims.pop((name, instant), None)
        if claim is None:
            return
        run_id = claim.record.run_id

        def when_answered(answer: asyncio.Future[Claim | None]) -> None:
            result = answer.result()
            if result is not None and result.won:
                self._give_back(run_id)

        if claim.answer.done():
            when_answered(claim.answer)
        else:
            claim.answer.add_done_callback(when_answered)

    def _record(
        self, name: str, instant: datetime, trigger: str, started_at: datetime, attempt: int = 1
    ) -> RunRecord:
        """A run as this clock claims or records it, under a new run id."""
        return RunRecord(
            task=name,
            scheduled_for=instant,
            trigger=trigger,
            run_id=new_run_id(),
            claimed_by=self._ledger.claimed_by,
            started_at=started_at,
            attempt=attempt,
        )

    def _give_back(self, run_id: str) -> None:
        """A won claim whose run will not start (this clock is stopping, or the task was removed): delete
        it, so that another clock, asking again when the instant is due, or a catch-up, can run it."""
        self._recorded.discard(run_id)
        self._ledger.released(run_id)

    def _catch_up(
        self,
        tasks: Mapping[str, TaskState],
        claimed: Mapping[str, datetime],
        now: datetime,
        overrides: Mapping[str, Override],
    ) -> None:
        """Catch-up policy (a task with catch_up: true, like systemd's Persistent=true): when the newest
        instant any clock claimed for the task is followed by instants before now, none of which any clock
        ran, the task runs once, now, for the newest of them, with trigger catch_up. A task the store has
        never seen is not caught up, nor one paused now (task.skipped, reason paused). The claim is on that
        instant, so two clocks starting together catch up once."""
        due: list[tuple[TaskState, datetime]] = []
        for name, last in claimed.items():
            state = tasks.get(name)
            if state is None or not state.spec.catch_up or not state.spec.enabled:
                continue
            missed = newest_missed(state.spec.schedule, last, now)
            override = overrides.get(name)
            if missed is not None and override is not None and override.holds(now):
                self._host.skipped(name, missed, "paused", self._info)
            elif missed is not None:
                state.last_instant = max(missed, state.last_instant or missed)
                due.append((state, missed))
        if due:
            self._host.track(self._claim_and_fire(due, "catch_up"))

    async def _claim_and_fire(self, due: list[tuple[TaskState, datetime]], trigger: str) -> None:
        """Claim instants that were not claimed ahead (a late fire, a catch-up) together, then decide each."""
        now = self._host.now()
        records = [self._record(state.spec.name, instant, trigger, now) for state, instant in due]
        claimed = await self._ledger.claim_runs(records, self._overlap(records))
        answers: Sequence[Claim | None] = claimed if claimed is not None else [None] * len(due)
        last = max((i for i, answer in enumerate(answers) if answer is None or answer.won), default=-1)
        started = 0
        for i, ((state, instant), record, answer) in enumerate(zip(due, records, answers, strict=True)):
            if self._host.stopping or not self._host.is_current(state):
                # Stopping, or the task was removed by a reload while the claim was out.
                if answer is not None and answer.won:
                    self._give_back(record.run_id)
                continue
            # As in a batch from the heap: the first and the last start give their child the CPU at once.
            if self._decide(state, instant, trigger, record, answer, yield_cpu=started == 0 or i == last):
                started += 1
                if started % YIELD_EVERY_FIRES == 0:
                    await asyncio.sleep(0)

    def _decide(
        self,
        state: TaskState,
        instant: datetime,
        trigger: str,
        record: RunRecord,
        answer: Claim | None,
        yield_cpu: bool | None = None,
    ) -> bool:
        """Run a claimed instant or not, by the store's answer; True if a run started.

        Store policy: an instant another clock claimed is skipped here (task.skipped, reason
        claimed_elsewhere, at debug level). When the store is unavailable or did not answer within the
        claim timeout, a task with require_store is skipped (reason store_unavailable) and any other runs
        best-effort: at most once is then not guaranteed, as without a store; its run is recorded when the
        store is back. A clock that stops gives back what it claimed ahead (_give_back); one that dies
        cannot, and those fires do not run: at most once, not exactly once.

        Overlap across clocks: for a `skip` task, the store takes the instant but records it skipped while a
        live clock has a run of the task going (task.skipped, reason overlap, running_on that clock); for
        `replace`, this clock runs it and the store asks the other clock to stop its run, which it hears at
        its next heartbeat.
        """
        if answer is not None and not answer.won:
            if answer.running_on is not None:
                self._host.skipped(record.task, instant, "overlap", self._info, running_on=answer.running_on)
            else:
                self._host.skipped(record.task, instant, "claimed_elsewhere", self._debug)
            return False
        if answer is None:
            if state.spec.require_store:
                self._host.skipped(record.task, instant, "store_unavailable", self._warn)
                return False
            self._ledger.started_unclaimed(record)
        self._recorded.add(record.run_id)
        return self._host.start(state, instant, trigger, run_id=record.run_id, yield_cpu=yield_cpu)


def _not_held(answer: Claim | None) -> bool:
    """An answer to a claim ahead that leaves the instant to be asked for again when due: another clock
    holds it (it may give it back), or another clock's run of the task was going (it may have ended)."""
    return answer is not None and not answer.won


def newest_missed(schedule: Schedule, last: datetime, now: datetime) -> datetime | None:
    """The newest instant of `schedule` after `last` and no later than `now`, or None if there is none.

    The search starts a second before now and looks twice as far back each time, so a clock that was down
    for a year costs a few dozen next_fire calls, not one per missed instant."""
    if schedule.next_fire(last).at > now:
        return None
    back = 1.0
    while True:
        start = max(last, now - timedelta(seconds=back))
        found = schedule.next_fire(start).at
        if found <= now:
            break
        back *= 2
    while (following := schedule.next_fire(found).at) <= now:
        found = following
    return found
