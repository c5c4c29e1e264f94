"""Tests for scheduler.recorder with an in-memory store that can fail or hang on demand."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import structlog
from structlog.testing import capture_logs

from scheduler.errors import StoreError
from scheduler.recorder import History, Recorder, clock_identity
from scheduler.store import Beat, Claim, ClockInfo, ClockRow, Override, Poll, RunRecord, RunRequest

T = TypeVar("T")
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
DEADLINE_S = 10.0


class MemoryStore:
    """The Store methods the recorder calls, over lists; `failing` raises, `gate` (when cleared) hangs."""

    kind = "memory"
    display_url = "memory://"

    def __init__(self) -> None:
        self.failing = False
        self.gate = threading.Event()
        self.gate.set()
        self.claimed: set[tuple[str, datetime]] = set()
        self.writes: list[tuple[str, str]] = []  # (kind, run_id) in the order they reached the store
        self.connects = 0
        self.calls = 0
        self.lost = 0
        self.beats: list[ClockInfo] = []
        self.stopped: list[str] = []
        self.next_beat = Beat([], {}, [])  # what the next heartbeat answers (then an empty one)
        self.overlaps: list[Any] = []
        self.pauses: dict[str, Override] = {}
        self.requests: list[RunRequest] = []  # what the next poll answers
        self.polls: list[tuple[str, Any]] = []  # (clock id, tasks) of each poll
        self.released_requests: list[str] = []  # the clocks whose requests stop_clock gave back

    def _enter(self) -> None:
        self.calls += 1
        self.gate.wait(DEADLINE_S)
        if self.failing:
            raise StoreError("connection refused")

    def connect(self) -> None:
        self._enter()
        self.connects += 1

    def close(self) -> None:
        pass

    def mark_lost(self, claimed_by: str, at: datetime) -> int:
        self._enter()
        return self.lost

    def last_runs(self) -> dict[str, RunRecord]:
        self._enter()
        return {"t": record("r0")}

    def last_successes(self) -> dict[str, datetime]:
        self._enter()
        return {"t": T0 - timedelta(days=1)}

    def last_claimed(self) -> dict[str, datetime]:
        self._enter()
        return {task: instant for task, instant in sorted(self.claimed)}

    def claim(self, records: Sequence[RunRecord], overlap: Any = None, *, ahead: bool = False) -> list[Claim]:
        self._enter()
        self.overlaps.append(overlap)
        won = []
        for r in records:
            key = (r.task, r.scheduled_for)
            won.append(Claim(key not in self.claimed))
            self.claimed.add(key)
        return won

    def heartbeat(self, clock: ClockInfo) -> Beat:
        self._enter()
        self.beats.append(clock)
        beat, self.next_beat = self.next_beat, Beat([], {}, [])
        return beat

    def stop_clock(self, clock_id: str, *, release_requests: bool = False) -> None:
        self._enter()
        self.stopped.append(clock_id)
        if release_requests:
            self.released_requests.append(clock_id)

    def overrides(self) -> dict[str, Override]:
        self._enter()
        return dict(self.pauses)

    def poll(self, clock_id: str, tasks: Any) -> Poll:
        self._enter()
        self.polls.append((clock_id, tasks))
        return Poll(dict(self.pauses), list(self.requests), [])

    def request_started(self, request_id: int, run_id: str) -> None:
        self._enter()
        self.writes.append(("request_started", f"{request_id}:{run_id}"))

    def release_request(self, request_id: int, clock_id: str) -> None:
        self._enter()
        self.writes.append(("release_request", f"{request_id}:{clock_id}"))

    def record(self, record: RunRecord) -> bool:
        self._enter()
        self.writes.append(("record", record.run_id))
        return True

    def finish(self, run_id: str, **fields: Any) -> None:
        self._enter()
        self.writes.append(("finish", run_id))

    def release(self, run_id: str) -> None:
        self._enter()
        self.writes.append(("release", run_id))


def record(run_id: str, second: int = 0) -> RunRecord:
    return RunRecord(
        task="t",
        scheduled_for=T0 + timedelta(seconds=second),
        trigger="schedule",
        run_id=run_id,
        claimed_by="here:1",
        started_at=T0,
    )


def end(recorder: Recorder, run_id: str) -> None:
    recorder.finished(
        run_id, finished_at=T0, status="succeeded", exit_code=0, signal=None, duration_s=0.1, output=None
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, DEADLINE_S))


def make(store: MemoryStore, **kwargs: Any) -> Recorder:
    options: dict[str, Any] = {"claim_timeout_s": 0.2, "call_timeout_s": 0.5, "reconnect_first_s": 0.01}
    options.update(kwargs)
    return Recorder(
        store,  # type: ignore[arg-type]
        log=structlog.get_logger(),
        claimed_by="here:1",
        config_digest="abc",
        **options,
    )


async def won(recorder: Recorder, records: Sequence[RunRecord]) -> list[bool] | None:
    """Whether the recorder's clock won each instant (claim_runs' answers, without overlap checks)."""
    answers = await recorder.claim_runs(records)
    return None if answers is None else [answer.won for answer in answers]


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


class TestClaims:
    def test_claims_and_writes_reach_the_store(self) -> None:
        """A claim returns the store's answer; ends and give-backs are written in the background, in order."""
        store = MemoryStore()

        async def main() -> tuple[list[bool] | None, list[bool] | None]:
            recorder = make(store)
            first = await won(recorder, [record("a", 1), record("b", 2)])
            again = await won(recorder, [record("c", 1)])
            end(recorder, "a")
            recorder.released("b")
            await recorder.close()
            return first, again

        assert ([True, True], [False]) == run(main())
        assert [("finish", "a"), ("release", "b")] == store.writes

    def test_start_reads_the_newest_claims(self) -> None:
        """start connects, reports runs a dead clock left running, and returns the newest claims per task."""
        store = MemoryStore()
        store.lost = 2
        store.claimed = {("t", T0), ("t", T0 + timedelta(hours=1))}

        async def main() -> History | None:
            recorder = make(store)
            got = await recorder.start(T0)
            await recorder.close()
            return got

        store.pauses = {"t": PAUSE}
        with capture_logs() as logs:
            expected = History(
                {"t": T0 + timedelta(hours=1)}, {"t": T0}, {"t": T0 - timedelta(days=1)}, {"t": PAUSE}
            )
            assert expected == run(main())
        assert 1 == store.connects
        assert [2] == [e["runs"] for e in events(logs, "store.lost_runs")]

    def test_a_slow_store_is_not_waited_for(self) -> None:
        """A claim the store does not answer within the claim timeout gives None: the clock decides alone."""
        store = MemoryStore()
        store.gate.clear()

        async def main() -> tuple[list[bool] | None, bool]:
            recorder = make(store)
            got = await won(recorder, [record("a")])
            available = recorder.available
            store.gate.set()
            await recorder.close()
            return got, available

        with capture_logs() as logs:
            assert (None, False) == run(main())
        assert 1 == len(events(logs, "store.unavailable"))
        assert "no answer from the store within 0.2 s" == events(logs, "store.unavailable")[0]["error"]


class TestOutage:
    def test_outage_logged_once_and_writes_flushed_on_recovery(self) -> None:
        """One store.unavailable per outage; claims answer None at once; queued writes land on recovery."""
        store = MemoryStore()
        store.failing = True

        async def main() -> list[list[bool] | None]:
            recorder = make(store)
            answers = [await won(recorder, [record("a", 1)])]
            calls = store.calls
            answers.append(await won(recorder, [record("b", 2)]))
            assert calls == store.calls or store.connects == 0  # only reconnects reach the store now
            recorder.started_unclaimed(record("b", 2))
            end(recorder, "b")
            store.failing = False
            await until(lambda: recorder.available)
            answers.append(await won(recorder, [record("c", 3)]))
            await recorder.close()
            return answers

        with capture_logs() as logs:
            assert [None, None, [True]] == run(main())
        assert 1 == len(events(logs, "store.unavailable"))
        (recovered,) = events(logs, "store.recovered")
        assert 2 == recovered["written"]
        assert "memory://" == recovered["store"]
        assert [("record", "b"), ("finish", "b")] == store.writes

    def test_reconnect_backs_off(self) -> None:
        """Reconnect attempts come twice as far apart each time, up to the cap."""
        store = MemoryStore()
        store.failing = True
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)
            store.failing = len(delays) < 6
            await asyncio.sleep(0)

        async def main() -> None:
            recorder = make(store, reconnect_first_s=0.5, reconnect_max_s=3.0, sleep=sleep)
            await won(recorder, [record("a")])
            await until(lambda: recorder.available)
            await recorder.close()

        run(main())
        assert [0.5, 1.0, 2.0, 3.0, 3.0, 3.0] == delays

    def test_writes_beyond_the_cap_are_dropped_and_counted(self) -> None:
        """While the store is down, only the newest writes are kept; the recovery says how many were lost."""
        store = MemoryStore()
        store.failing = True

        async def main() -> None:
            recorder = make(store, pending_cap=3)
            await won(recorder, [record("a")])
            for n in range(5):
                end(recorder, f"r{n}")
            store.failing = False
            await until(lambda: recorder.available)
            await recorder.close()

        with capture_logs() as logs:
            run(main())
        (recovered,) = events(logs, "store.recovered")
        assert (3, 2) == (recovered["written"], recovered["dropped"])
        assert [("finish", f"r{n}") for n in (2, 3, 4)] == store.writes

    def test_close_reports_what_could_not_be_written(self) -> None:
        """At close, writes still waiting for a store that is down are counted in store.unwritten."""
        store = MemoryStore()
        store.failing = True

        async def main() -> None:
            recorder = make(store, reconnect_first_s=60)
            await won(recorder, [record("a")])
            end(recorder, "a")
            await recorder.close(timeout_s=0.05)

        with capture_logs() as logs:
            run(main())
        assert [1] == [e["runs"] for e in events(logs, "store.unwritten")]


PAUSE = Override("t", True, None, "disk full", "ann", T0)


class TestControl:
    def test_poll_asks_for_this_clock_and_its_tasks(self) -> None:
        """poll() hands the store this clock's id and the tasks it knows, and returns the store's answer."""
        store = MemoryStore()
        store.pauses = {"t": PAUSE}
        request = RunRequest(7, "t", "ann", T0, "claimed", "here:1", T0)
        store.requests = [request]
        tasks = {"t": object()}

        async def main() -> Poll | None:
            recorder = make(store)
            got = await recorder.poll(tasks)
            await recorder.close()
            return got

        assert Poll({"t": PAUSE}, [request], []) == run(main())
        assert [("here:1", tasks)] == store.polls

    def test_poll_while_the_store_is_down(self) -> None:
        """A poll that fails starts the outage and answers None; during the outage no poll reaches the
        store."""
        store = MemoryStore()
        store.failing = True

        async def main() -> list[Poll | None]:
            recorder = make(store, reconnect_first_s=60)
            answers = [await recorder.poll(None)]
            calls = store.calls
            answers.append(await recorder.poll(None))
            assert calls == store.calls
            await recorder.close(timeout_s=0.05)
            return answers

        with capture_logs() as logs:
            assert [None, None] == run(main())
        assert 1 == len(events(logs, "store.unavailable"))

    def test_request_notes_are_written_in_order(self) -> None:
        """Starts and give-backs of run requests are written in the background, in order, with the ends of
        runs."""
        store = MemoryStore()

        async def main() -> None:
            recorder = make(store)
            recorder.request_started(7, "r7")
            end(recorder, "r7")
            recorder.request_released(8)
            await recorder.close()

        run(main())
        assert [
            ("request_started", "7:r7"),
            ("finish", "r7"),
            ("release_request", "8:here:1"),
        ] == store.writes

    def test_close_gives_requests_back_only_when_every_write_landed(self) -> None:
        """A clean stop gives back the run requests the clock holds; not when writes (maybe the note of a
        request's start) could not reach the store: then the requests stay with it, to be marked lost."""
        landed, stuck = MemoryStore(), MemoryStore()

        async def main(store: MemoryStore) -> None:
            recorder = make(store, reconnect_first_s=60)
            await recorder.start(T0)
            store.failing = store is stuck
            recorder.request_started(7, "r7")
            await recorder.close(timeout_s=0.2)

        run(main(landed))
        run(main(stuck))
        assert (["here:1"], ["here:1"]) == (landed.released_requests, landed.stopped)
        assert ([], []) == (stuck.released_requests, stuck.stopped)


class TestClockIdentity:
    def test_dyno_name_pid_and_token(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """On Heroku the dyno's name identifies the clock, with the pid and a token of its own, since a
        restarted dyno often gets the same name and pid."""
        monkeypatch.setenv("DYNO", "clock.2")
        name, pid, token = clock_identity().split(":")
        assert "clock.2" == name
        assert pid.isdigit()
        assert 6 == len(token)
        assert clock_identity() != clock_identity()


def clock_row(clock_id: str, digest: str) -> ClockRow:
    return ClockRow(clock_id, "h", 1, "0.1", T0, T0, True, digest)


class TestHeartbeat:
    def test_start_registers_and_close_notes_the_stop(self) -> None:
        """start() renews the lease at once (registering the clock with its digest); close() says it
        stopped cleanly."""
        store = MemoryStore()

        async def main() -> None:
            recorder = make(store)
            await recorder.start(T0)
            await recorder.close()

        run(main())
        assert [("here:1", "abc")] == [(info.id, info.config_digest) for info in store.beats]
        assert ["here:1"] == store.stopped

    def test_beats_while_started_with_the_new_digest(self) -> None:
        """The lease is renewed every heartbeat_s, with the digest config_changed() gave."""
        store = MemoryStore()

        async def main() -> None:
            recorder = make(store, heartbeat_s=0.01)
            await recorder.start(T0)
            recorder.config_changed("def")
            await until(lambda: len(store.beats) >= 3)
            await recorder.close()

        run(main())
        assert "abc" == store.beats[0].config_digest
        assert "def" == store.beats[-1].config_digest

    def test_dead_clocks_runs_are_logged(self) -> None:
        """What a heartbeat tidied up after a dead clock is logged as store.lost_runs, naming it."""
        store = MemoryStore()
        store.next_beat = Beat([], {"web.1:7:aaaaaa": (2, 1)}, [])

        async def main() -> None:
            recorder = make(store)
            await recorder.start(T0)
            await recorder.close()

        with capture_logs() as logs:
            run(main())
        assert [{"runs": 2, "released": 1, "clock": "web.1:7:aaaaaa"}] == [
            {k: e[k] for k in ("runs", "released", "clock")} for e in events(logs, "store.lost_runs")
        ]

    def test_stop_requests_reach_the_callback_on_the_loop(self) -> None:
        """Runs another clock asked this one to stop are handed to on_stop_requested, on the event loop."""
        store = MemoryStore()
        store.next_beat = Beat(["r1", "r2"], {}, [])
        got: list[tuple[list[str], bool]] = []

        def on_stop(run_ids: list[str]) -> None:
            got.append((run_ids, threading.current_thread() is threading.main_thread()))

        async def main() -> None:
            recorder = make(store, on_stop_requested=on_stop)
            await recorder.start(T0)
            await recorder.close()

        run(main())
        assert [(["r1", "r2"], True)] == got

    def test_config_mismatch_warned_once_per_change(self) -> None:
        """Live clocks with different digests: config.mismatch once, again only when the set changes."""
        store = MemoryStore()
        mixed = [clock_row("a:1:x", "abc"), clock_row("b:2:y", "old")]
        answers = [
            Beat([], {}, mixed),
            Beat([], {}, mixed),
            Beat([], {}, [*mixed, clock_row("c:3:z", "old")]),
            Beat([], {}, [clock_row("a:1:x", "abc")]),
            Beat([], {}, mixed),
        ]

        async def main() -> None:
            recorder = make(store, heartbeat_s=0.01)
            store.next_beat = answers.pop(0)
            await recorder.start(T0)
            while answers:
                store.next_beat = answers.pop(0)
                await until(lambda: store.next_beat.clocks == [])
            await recorder.close()

        with capture_logs() as logs:
            run(main())
        mismatches = events(logs, "config.mismatch")
        assert ["warning"] * 3 == [e["log_level"] for e in mismatches]
        assert {"a:1:x": "abc", "b:2:y": "old"} == mismatches[0]["clocks"]
        assert 3 == len(mismatches[1]["clocks"])

    def test_claim_runs_passes_the_overlap(self) -> None:
        """claim_runs gives the store the overlap policies and returns its answers as they are."""
        store = MemoryStore()

        async def main() -> list[Claim] | None:
            recorder = make(store)
            got = await recorder.claim_runs([record("a")], {"t": "skip"})
            await recorder.close()
            return got

        assert [Claim(True)] == run(main())
        assert [{"t": "skip"}] == store.overlaps


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()
