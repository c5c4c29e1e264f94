"""Tests for scheduler.claims alone: the at-most-once logic with a fake host and a fake ledger, no loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from scheduler.claims import CLAIM_AHEAD_S, Claims, Unclaimed, newest_missed
from scheduler.config import TaskSpec
from scheduler.recorder import History
from scheduler.runner import RunResult
from scheduler.schedule import parse
from scheduler.state import Fire, TaskState
from scheduler.store import Claim, Override, RunRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(name: str = "t", schedule: str = "* * * * * *", **kwargs: Any) -> TaskSpec:
    zone = ZoneInfo("UTC")
    return TaskSpec(
        name=name, schedule=parse(schedule, name=name, zone=zone), command="true", timezone="UTC", **kwargs
    )


class FakeLedger:
    """Implements claims.Ledger over a dict; `answers` scripts what claim() says, `gate` holds it back."""

    claimed_by = "here:1"

    def __init__(self) -> None:
        self.claimed: dict[tuple[str, datetime], str] = {}
        self.claims: list[list[RunRecord]] = []
        self.unclaimed: list[RunRecord] = []
        self.finished_runs: dict[str, dict[str, Any]] = {}
        self.released_ids: list[str] = []
        self.down = False
        self.gate: asyncio.Event | None = None
        self.history: History | None = History({}, {}, {})
        self.overlaps: list[dict[str, str]] = []
        self.aheads: list[bool] = []
        self.running_elsewhere: dict[str, str] = {}  # task -> the other clock running it
        self.digests: list[str] = []

    async def start(self, now: datetime) -> History | None:
        return self.history

    async def claim_runs(
        self, records: Sequence[RunRecord], overlap: Mapping[str, str] | None = None, *, ahead: bool = False
    ) -> list[Claim] | None:
        self.claims.append(list(records))
        self.aheads.append(ahead)
        self.overlaps.append(dict(overlap or {}))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            return None
        answers = []
        for record in records:
            key = (record.task, record.scheduled_for)
            elsewhere = self.running_elsewhere.get(record.task)
            policy = (overlap or {}).get(record.task)
            if elsewhere and policy == "skip" and ahead:
                answers.append(Claim(False, elsewhere))  # left unclaimed, asked again when due
                continue
            won = key not in self.claimed and not (elsewhere and policy == "skip")
            answers.append(Claim(won, elsewhere if policy and key not in self.claimed else None))
            self.claimed.setdefault(key, record.run_id)
        return answers

    def config_changed(self, digest: str) -> None:
        self.digests.append(digest)

    def started_unclaimed(self, record: RunRecord) -> None:
        self.unclaimed.append(record)

    def finished(self, run_id: str, **fields: Any) -> None:
        self.finished_runs[run_id] = fields

    def released(self, run_id: str) -> None:
        self.released_ids.append(run_id)
        for key, holder in list(self.claimed.items()):
            if holder == run_id:
                del self.claimed[key]

    async def close(self) -> None:
        pass


@dataclass
class Started:
    task: str
    instant: datetime
    trigger: str
    run_id: str | None
    yield_cpu: bool | None


class FakeHost:
    """Implements claims.Host: records starts and skips, runs tracked jobs on the running loop."""

    def __init__(self, tasks: Mapping[str, TaskState]) -> None:
        self.tasks = dict(tasks)
        self.t = T0
        self.stop_requested = False
        self.started: list[Started] = []
        self.skips: list[tuple[str, datetime, str]] = []
        self.skip_fields: list[dict[str, Any]] = []
        self.jobs: list[asyncio.Task[None]] = []
        self.pauses: set[str] = set()  # the tasks a pause holds back

    @property
    def stopping(self) -> bool:
        return self.stop_requested

    def paused(self, name: str, at: datetime) -> bool:
        return name in self.pauses

    def now(self) -> datetime:
        return self.t

    def task(self, name: str) -> TaskState | None:
        return self.tasks.get(name)

    def is_current(self, state: TaskState) -> bool:
        return self.tasks.get(state.spec.name) is state

    def is_live(self, fire: Fire) -> bool:
        state = self.tasks.get(fire.name)
        return state is not None and state.generation == fire.generation

    def start(
        self,
        state: TaskState,
        instant: datetime,
        trigger: str,
        *,
        run_id: str | None = None,
        yield_cpu: bool | None = None,
        attempt: int = 1,
        requested_by: str | None = None,
    ) -> bool:
        self.started.append(Started(state.spec.name, instant, trigger, run_id, yield_cpu))
        return True

    def skipped(self, name: str, instant: datetime, reason: str, log: Any, **fields: Any) -> None:
        self.skips.append((name, instant, reason))
        self.skip_fields.append(fields)

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        self.jobs.append(asyncio.get_running_loop().create_task(coro))

    async def settle(self) -> None:
        while pending := [job for job in self.jobs if not job.done()]:
            await asyncio.wait(pending)


def _noop(*args: Any, **kwargs: Any) -> None:
    pass


def setup(*specs: TaskSpec) -> tuple[Claims, FakeHost, FakeLedger, dict[str, TaskState]]:
    states = {s.name: TaskState(s) for s in specs}
    host = FakeHost(states)
    ledger = FakeLedger()
    return Claims(ledger, host, debug=_noop, info=_noop, warn=_noop), host, ledger, states


def fire_of(state: TaskState, instant: datetime, seq: int = 0) -> Fire:
    return Fire(instant.timestamp(), seq, state.spec.name, instant, state.generation)


@dataclass
class FakeRun:
    task: TaskSpec
    run_id: str
    output_tail: str = "the output"


class TestClaimAhead:
    def test_claimed_ahead_then_started_with_the_claims_run_id(self) -> None:
        """A fire due within CLAIM_AHEAD_S is claimed at once; when due, it starts under that claim."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec())
            due = T0 + timedelta(seconds=CLAIM_AHEAD_S / 2)
            claims.queued(fire_of(states["t"], due))
            assert due.timestamp() - CLAIM_AHEAD_S == claims.wake_at()
            claims.ahead(T0)
            await host.settle()
            assert 1 == len(ledger.claims)
            assert claims.fire(states["t"], due) is True
            (started,) = host.started
            assert (due, "schedule", ledger.claimed[("t", due)]) == (
                started.instant,
                started.trigger,
                started.run_id,
            )

        asyncio.run(main())

    def test_fires_beyond_the_horizon_wait(self) -> None:
        """A fire due later than CLAIM_AHEAD_S from now is not claimed yet."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec())
            claims.queued(fire_of(states["t"], T0 + timedelta(seconds=CLAIM_AHEAD_S + 1)))
            claims.ahead(T0)
            await host.settle()
            assert [] == ledger.claims

        asyncio.run(main())

    def test_one_batch_for_the_fires_of_one_second(self) -> None:
        """Many fires due within the horizon are claimed in a single call."""

        async def main() -> None:
            specs = [spec(f"t{i}") for i in range(50)]
            claims, host, ledger, states = setup(*specs)
            for i, s in enumerate(specs):
                claims.queued(fire_of(states[s.name], T0 + timedelta(milliseconds=500), seq=i))
            claims.ahead(T0)
            await host.settle()
            assert [50] == [len(batch) for batch in ledger.claims]

        asyncio.run(main())


class TestDecide:
    def test_lost_ahead_is_asked_again_when_due(self) -> None:
        """A claim another clock won ahead is asked again at the instant: if it was given back, it runs."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec())
            due = T0 + timedelta(milliseconds=500)
            ledger.claimed[("t", due)] = "other-clock-run"
            claims.queued(fire_of(states["t"], due))
            claims.ahead(T0)
            await host.settle()
            del ledger.claimed[("t", due)]  # the other clock stopped and gave it back
            assert claims.fire(states["t"], due) is False
            claims.end_of_batch()
            await host.settle()
            assert [("t", due)] == [(s.task, s.instant) for s in host.started]
            assert 2 == len(ledger.claims)

        asyncio.run(main())

    def test_claimed_elsewhere_is_skipped(self) -> None:
        """An instant another clock holds at the instant is skipped with reason claimed_elsewhere."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec())
            due = T0 + timedelta(milliseconds=500)
            ledger.claimed[("t", due)] = "other"
            claims.fire(states["t"], due)
            claims.end_of_batch()
            await host.settle()
            assert ([], [("t", due, "claimed_elsewhere")]) == (host.started, host.skips)

        asyncio.run(main())

    def test_answer_still_out_at_the_instant_starts_when_it_comes(self) -> None:
        """When the store has not answered by the instant, the run starts as soon as it does."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec())
            due = T0 + timedelta(milliseconds=500)
            ledger.gate = asyncio.Event()
            claims.queued(fire_of(states["t"], due))
            claims.ahead(T0)
            assert claims.fire(states["t"], due) is False
            await asyncio.sleep(0)
            assert [] == host.started
            ledger.gate.set()
            await host.settle()
            assert [True] == [s.yield_cpu for s in host.started]

        asyncio.run(main())

    def test_store_down_runs_unclaimed_unless_required(self) -> None:
        """No answer: an ordinary task runs and is recorded later; a require_store task is skipped."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec("free"), spec("strict", require_store=True))
            ledger.down = True
            due = T0 + timedelta(milliseconds=500)
            for i, name in enumerate(("free", "strict")):
                claims.queued(fire_of(states[name], due, seq=i))
            claims.ahead(T0)
            await host.settle()
            claims.fire(states["free"], due)
            claims.fire(states["strict"], due)
            assert ["free"] == [s.task for s in host.started]
            assert [("strict", due, "store_unavailable")] == host.skips
            assert ["free"] == [r.task for r in ledger.unclaimed]

        asyncio.run(main())


class TestOverlapAcrossClocks:
    def test_skip_and_replace_policies_go_with_the_claim(self) -> None:
        """The claim batch carries the tasks' skip and replace policies; allow needs no check."""

        async def main() -> None:
            claims, host, ledger, states = setup(
                spec("s", overlap="skip"), spec("r", overlap="replace"), spec("a", overlap="allow")
            )
            due = T0 + timedelta(milliseconds=500)
            for i, name in enumerate(("s", "r", "a")):
                claims.queued(fire_of(states[name], due, seq=i))
            claims.ahead(T0)
            await host.settle()
            assert [{"s": "skip", "r": "replace"}] == ledger.overlaps

        asyncio.run(main())

    def test_skip_while_another_clock_still_runs_it(self) -> None:
        """A skip task running on another live clock when claimed ahead is asked for again when due; still
        running then, it is skipped (reason overlap, naming that clock)."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec("s", overlap="skip"))
            ledger.running_elsewhere["s"] = "web.1:4:abc"
            due = T0 + timedelta(milliseconds=500)
            claims.queued(fire_of(states["s"], due))
            claims.ahead(T0)
            await host.settle()
            assert claims.fire(states["s"], due) is False
            claims.end_of_batch()
            await host.settle()
            assert ([], [("s", due, "overlap")]) == (host.started, host.skips)
            assert [{"running_on": "web.1:4:abc"}] == host.skip_fields
            assert [True, False] == ledger.aheads

        asyncio.run(main())

    def test_a_run_elsewhere_that_ended_by_the_instant_does_not_skip(self) -> None:
        """Another clock's run going when the instant was claimed ahead, but over when it is due: the
        instant runs here (a short per-second task shared by clocks is never skipped for overlap)."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec("s", overlap="skip"))
            ledger.running_elsewhere["s"] = "web.1:4:abc"
            due = T0 + timedelta(milliseconds=500)
            claims.queued(fire_of(states["s"], due))
            claims.ahead(T0)
            await host.settle()
            del ledger.running_elsewhere["s"]
            claims.fire(states["s"], due)
            claims.end_of_batch()
            await host.settle()
            assert ([("s", due)], []) == ([(s.task, s.instant) for s in host.started], host.skips)

        asyncio.run(main())

    def test_replace_runs_here(self) -> None:
        """A replace task running on another clock runs here (the store asks the other to stop)."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec("r", overlap="replace"))
            ledger.running_elsewhere["r"] = "web.1:4:abc"
            due = T0 + timedelta(milliseconds=500)
            claims.queued(fire_of(states["r"], due))
            claims.ahead(T0)
            await host.settle()
            assert claims.fire(states["r"], due) is True

        asyncio.run(main())


class TestGiveBack:
    def test_stop_gives_back_what_was_won_ahead(self) -> None:
        """A stopping clock deletes the claims it won for fires not due yet."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec())
            due = T0 + timedelta(milliseconds=500)
            claims.queued(fire_of(states["t"], due))
            claims.ahead(T0)
            await host.settle()
            run_id = ledger.claimed[("t", due)]
            claims.stop()
            assert ([run_id], {}) == (ledger.released_ids, ledger.claimed)

        asyncio.run(main())

    def test_a_claim_answered_after_the_stop_is_given_back(self) -> None:
        """A claim still out at the stop is given back when the answer comes, if it was won."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec())
            ledger.gate = asyncio.Event()
            claims.queued(fire_of(states["t"], T0 + timedelta(milliseconds=500)))
            claims.ahead(T0)
            claims.stop()
            ledger.gate.set()
            await host.settle()
            assert 1 == len(ledger.released_ids)
            assert {} == ledger.claimed

        asyncio.run(main())

    def test_missed_instant_gives_back_its_claim(self) -> None:
        """A fire claimed ahead and then missed (a suspend) is given back, never left held."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec())
            due = T0 + timedelta(milliseconds=500)
            claims.queued(fire_of(states["t"], due))
            claims.ahead(T0)
            await host.settle()
            claims.missed("t", due)
            assert 1 == len(ledger.released_ids)

        asyncio.run(main())

    def test_removed_task_gives_back_its_late_claim(self) -> None:
        """A task removed by a reload while its claim was out does not start; its claim is given back."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec())
            ledger.gate = asyncio.Event()
            due = T0 + timedelta(milliseconds=500)
            claims.fire(states["t"], due)
            claims.end_of_batch()
            del host.tasks["t"]
            ledger.gate.set()
            await host.settle()
            assert ([], 1) == (host.started, len(ledger.released_ids))

        asyncio.run(main())


class TestRecording:
    def test_end_recorded_with_output_only_when_stored(self) -> None:
        """A claimed run's end is written; store_output: false writes no output."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec("kept"), spec("secret", store_output=False))
            due = T0 + timedelta(milliseconds=500)
            for i, name in enumerate(("kept", "secret")):
                claims.queued(fire_of(states[name], due, seq=i))
            claims.ahead(T0)
            await host.settle()
            result = RunResult("succeeded", 0, None, 0.5)
            for started in [claims.fire(states[n], due) and host.started[-1] for n in ("kept", "secret")]:
                assert started
                claims.finished(FakeRun(states[started.task].spec, started.run_id or ""), result)  # type: ignore[arg-type]
            outputs = {r: f["output"] for r, f in ledger.finished_runs.items()}
            assert ["the output", None] == [outputs[s.run_id or ""] for s in host.started]

        asyncio.run(main())

    def test_unrecorded_runs_are_not_written(self) -> None:
        """A run this gate did not record (no claim, no unclaimed start) leaves no write."""

        async def main() -> None:
            claims, _, ledger, states = setup(spec())
            claims.finished(FakeRun(states["t"].spec, "abc"), RunResult("failed", 1, None, 0.1))  # type: ignore[arg-type]
            claims.not_run("abc")
            assert {} == ledger.finished_runs

        asyncio.run(main())


class TestCatchUp:
    def test_newest_missed_instant_runs_once_as_catch_up(self) -> None:
        """At open, a catch_up task whose instants passed unclaimed runs once, for the newest of them."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec("daily", "0 3 * * *", catch_up=True))
            ledger.history = History({"daily": T0 + timedelta(hours=3)}, {}, {})
            now = T0 + timedelta(days=3, hours=5)
            await claims.open(now, states)
            await host.settle()
            assert [("daily", T0 + timedelta(days=3, hours=3), "catch_up")] == [
                (s.task, s.instant, s.trigger) for s in host.started
            ]

        asyncio.run(main())

    def test_no_catch_up_without_the_option(self) -> None:
        """Without catch_up: true nothing runs at open."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec("daily", "0 3 * * *"))
            ledger.history = History({"daily": T0 + timedelta(hours=3)}, {}, {})
            await claims.open(T0 + timedelta(days=3), states)
            await host.settle()
            assert [] == host.started

        asyncio.run(main())


class TestPaused:
    def test_paused_fires_are_not_claimed_ahead(self) -> None:
        """A fire a pause holds back is not claimed ahead: the store never hears of it."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec("held"), spec("free"))
            host.pauses.add("held")
            due = T0 + timedelta(milliseconds=500)
            claims.queued(fire_of(states["held"], due, seq=0))
            claims.queued(fire_of(states["free"], due, seq=1))
            claims.ahead(T0)
            await host.settle()
            assert [["free"]] == [[r.task for r in batch] for batch in ledger.claims]

        asyncio.run(main())

    def test_a_claim_won_before_the_pause_is_recorded_skipped(self) -> None:
        """A claim won ahead, before the clock heard of the pause: held back, it is recorded as skipped so
        that no other clock runs the instant; nothing starts."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec())
            due = T0 + timedelta(milliseconds=500)
            claims.queued(fire_of(states["t"], due))
            claims.ahead(T0)
            await host.settle()
            claims.held(states["t"], due)
            run_id = ledger.claimed[("t", due)]
            assert "skipped" == ledger.finished_runs[run_id]["status"]
            assert ([], []) == (host.started, ledger.released_ids)

        asyncio.run(main())

    def test_a_claim_answered_later_is_recorded_skipped_when_won(self) -> None:
        """A claim still out when its instant is held back is recorded skipped once answered, if won; a lost
        one is left to the clock that holds it."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec("won"), spec("lost"))
            due = T0 + timedelta(milliseconds=500)
            ledger.claimed[("lost", due)] = "other-clock-run"
            ledger.gate = asyncio.Event()
            claims.queued(fire_of(states["won"], due, seq=0))
            claims.queued(fire_of(states["lost"], due, seq=1))
            claims.ahead(T0)
            claims.held(states["won"], due)
            claims.held(states["lost"], due)
            ledger.gate.set()
            await host.settle()
            assert {ledger.claimed[("won", due)]: "skipped"} == {
                run_id: fields["status"] for run_id, fields in ledger.finished_runs.items()
            }

        asyncio.run(main())

    def test_catch_up_tasks_record_what_a_pause_held_back(self) -> None:
        """A catch_up task's instant held back unclaimed is recorded as skipped (so that a catch-up after a
        restart never runs it); another task's leaves nothing."""

        async def main() -> None:
            claims, _, ledger, states = setup(spec("daily", "0 3 * * *", catch_up=True), spec("plain"))
            claims.held(states["daily"], T0)
            claims.held(states["plain"], T0)
            assert [("daily", T0, "schedule", "skipped")] == [
                (r.task, r.scheduled_for, r.trigger, r.status) for r in ledger.unclaimed
            ]
            assert ledger.unclaimed[0].finished_at is not None
            assert [] == ledger.claims

        asyncio.run(main())

    def test_no_catch_up_while_paused(self) -> None:
        """At open, a catch_up task a pause holds now is not caught up: task.skipped, reason paused."""

        async def main() -> None:
            claims, host, ledger, states = setup(spec("daily", "0 3 * * *", catch_up=True))
            now = T0 + timedelta(days=3, hours=5)
            pause = Override("daily", True, now + timedelta(hours=1), "", "ops", T0)
            ledger.history = History({"daily": T0 + timedelta(hours=3)}, {}, {}, {"daily": pause})
            await claims.open(now, states)
            await host.settle()
            assert [] == host.started
            assert [("daily", T0 + timedelta(days=3, hours=3), "paused")] == host.skips

        asyncio.run(main())


class TestUnclaimed:
    def test_fires_start_at_once_and_nothing_is_recorded(self) -> None:
        """Without a store, a due instant starts at once and the gate never wakes the loop."""
        states = {"t": TaskState(spec())}
        host = FakeHost(states)
        gate = Unclaimed(host)
        assert gate.fire(states["t"], T0) is True
        assert (None, None) == (gate.wake_at(), gate.unclaimed("t", T0, "retry"))
        gate.held(states["t"], T0)
        assert [("t", "schedule", None)] == [(s.task, s.trigger, s.run_id) for s in host.started]


class TestNewestMissed:
    @pytest.mark.parametrize(
        ("schedule", "last", "now", "expected"),
        [
            ("0 * * * *", T0, T0 + timedelta(days=400, minutes=30), T0 + timedelta(days=400)),
            ("0 3 * * *", T0 + timedelta(hours=3), T0 + timedelta(hours=20), None),
            ("* * * * * *", T0, T0 + timedelta(seconds=5), T0 + timedelta(seconds=5)),
        ],
    )
    def test_newest_instant_after_last_not_after_now(
        self, schedule: str, last: datetime, now: datetime, expected: datetime | None
    ) -> None:
        """The newest instant after `last` and not after `now`, or None."""
        assert expected == newest_missed(parse(schedule, name="s", zone=ZoneInfo("UTC")), last, now)
