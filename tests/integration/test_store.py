"""The run-history store end to end: several clocks on one PostgreSQL store, catch-up, outages, history."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ClockProcess, run_cli

pytestmark = pytest.mark.integration

PER_SECOND = (
    'tasks:\n  tick:\n    schedule: "* * * * * *"\n    command: "echo tick $SCHEDULER_SCHEDULED_FOR"\n'
)


def at(text: object) -> datetime:
    return datetime.fromisoformat(str(text))


def started_instants(clocks: list[ClockProcess]) -> Counter[str]:
    return Counter(e["scheduled_for"] for c in clocks for e in c.named("task.started"))


def start_clocks(tmp_path: Path, text: str, store: str, count: int) -> list[ClockProcess]:
    path = tmp_path / "schedules.yaml"
    path.write_text(text)
    clocks = [ClockProcess(path, "--store", store, "--log-level", "debug") for _ in range(count)]
    for clock in clocks:
        clock.wait_event("scheduler.started")
    return clocks


def first_start(clocks: list[ClockProcess], count: int = 1, timeout: float = 20) -> dict[str, Any]:
    """Wait until one of the clocks has started `count` runs; its last, with `clock` set to that clock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for clock in clocks:
            started = clock.named("task.started")
            if len(started) >= count:
                return {**started[-1], "clock": clock}
        time.sleep(0.05)
    pytest.fail(f"no clock started {count} runs in {timeout} s")


def stop_all(clocks: list[ClockProcess]) -> None:
    for clock in clocks:
        if clock.proc.poll() is None:
            clock.signal(signal.SIGTERM)
    for clock in clocks:
        clock.stop()


class TestSeveralClocks:
    def test_three_clocks_run_each_instant_once(self, tmp_path: Path, postgres_store_url: str) -> None:
        """Three clocks on one per-second task for 12 s: every instant is started by exactly one of them."""
        clocks = start_clocks(tmp_path, PER_SECOND, postgres_store_url, 3)
        try:
            first = at(first_start(clocks)["scheduled_for"])
            time.sleep(12)
        finally:
            stop_all(clocks)
        counts = started_instants(clocks)
        window = sorted(i for i in counts if at(i) >= first)
        assert len(window) >= 11
        assert {1} == {counts[i] for i in window}, {i: n for i, n in counts.items() if n != 1}
        assert all(n == 1 for n in counts.values())
        # No gaps: consecutive seconds from the first to the last.
        seconds = [int(at(i).timestamp()) for i in window]
        assert list(range(seconds[0], seconds[-1] + 1)) == seconds
        # The others saw those instants as claimed elsewhere.
        lost = [e for c in clocks for e in c.named("task.skipped") if e["reason"] == "claimed_elsewhere"]
        assert len(lost) >= 2 * len(window) - 4
        history = run_cli(
            "history", "tick", "-n", "500", "--json", "--store", postgres_store_url, cwd=tmp_path
        )
        assert 0 == history.returncode, history.stderr
        runs = json.loads(history.stdout)
        # An instant claimed just as the clock was told to stop is recorded as skipped, not run.
        ran = [r for r in runs if r["status"] != "skipped"]
        assert sorted(counts) == sorted(r["scheduled_for"] for r in ran)
        assert {r["status"] for r in ran} <= {"succeeded", "killed"}  # killed: stopped at shutdown
        assert len(runs) - len(ran) <= len(clocks)
        by_pid = {c.proc.pid for c in clocks}
        assert {int(r["claimed_by"].split(":")[1]) for r in runs} <= by_pid

    def test_a_clock_killed_halfway_leaves_the_others_going(
        self, tmp_path: Path, postgres_store_url: str
    ) -> None:
        """kill -9 one of three clocks: the other two carry on, and no instant ever runs twice."""
        clocks = start_clocks(tmp_path, PER_SECOND, postgres_store_url, 3)
        try:
            first_start(clocks)
            time.sleep(5)
            # The clock that ran the latest instant: with overlap: skip it keeps the task while it lives.
            killed = max(
                clocks, key=lambda c: max((e["scheduled_for"] for e in c.named("task.started")), default="")
            )
            # Killed between runs: a clock that dies in the middle of a run holds a skip task until its
            # lease ends (30 s), since its run may be going still (the next test covers that).
            done = len(killed.named("task.finished"))
            killed.wait_event("task.finished", count=done + 1)
            time.sleep(0.25)  # for its end to reach the store (written in the background, in ms)
            killed.proc.kill()
            killed_at = time.time()
            time.sleep(6)
        finally:
            stop_all(clocks)
        survivors = [c for c in clocks if c is not killed]
        counts = started_instants(clocks)
        assert all(n == 1 for n in counts.values()), {i: n for i, n in counts.items() if n != 1}
        after = sorted(i for i in counts if at(i).timestamp() > killed_at + 0.5)
        assert len(after) >= 4
        assert {"tick"} == {e["task"] for c in survivors for e in c.named("task.started")}

    def test_a_clock_stopping_leaves_no_gap(self, tmp_path: Path, postgres_store_url: str) -> None:
        """One of two clocks is stopped (a deploy): the instants it had claimed ahead are given back and run
        by the other, so every second runs exactly once, with no gap."""
        clocks = start_clocks(tmp_path, PER_SECOND, postgres_store_url, 2)
        try:
            leader = clocks.index(first_start(clocks, count=3)["clock"])
            other = clocks[1 - leader]
            assert 0 == clocks[leader].stop()
            stopped = time.time()
            other.wait_for(
                lambda evs: any(at(e["scheduled_for"]).timestamp() > stopped + 3 for e in evs if "pid" in e)
            )
        finally:
            stop_all(clocks)
        counts = started_instants(clocks)
        assert all(n == 1 for n in counts.values()), {i: n for i, n in counts.items() if n != 1}
        seconds = sorted(int(at(i).timestamp()) for i in counts)
        assert list(range(seconds[0], seconds[-1] + 1)) == seconds

    def test_sqlite_refuses_a_second_clock(self, tmp_path: Path) -> None:
        """Two clocks on one SQLite file: the second refuses to start and says why."""
        store = f"sqlite:///{tmp_path / 'state.db'}"  # an absolute path: sqlite:////tmp/...
        (first,) = start_clocks(tmp_path, PER_SECOND, store, 1)
        try:
            second = run_cli("run", "--store", store, cwd=tmp_path, timeout=20)
        finally:
            stop_all([first])
        assert 2 == second.returncode
        assert "another clock" in second.stderr
        assert str(first.proc.pid) in second.stderr
        assert "PostgreSQL" in second.stderr
        assert "Traceback" not in second.stderr


class TestCatchUp:
    def test_missed_instants_run_once_after_a_stop(self, tmp_path: Path) -> None:
        """A catch_up task missed while no clock ran runs once at start, for the newest missed instant."""
        store = f"sqlite:///{tmp_path / 'state.db'}"
        text = PER_SECOND + "    catch_up: true\n"
        (clock,) = start_clocks(tmp_path, text, store, 1)
        clock.wait_event("task.finished")
        stop_all([clock])
        stopped = time.time()
        time.sleep(2.5)
        (again,) = start_clocks(tmp_path, text, store, 1)
        try:
            caught = again.wait_event("task.started", trigger="catch_up")
            again.wait_event("task.started", trigger="schedule")
        finally:
            stop_all([again])
        assert 1 == len(caught)
        started = again.named("scheduler.started")[0]
        instant = at(caught[0]["scheduled_for"]).timestamp()
        assert stopped < instant <= at(started["timestamp"]).timestamp()
        assert caught[0] is again.named("task.started")[0]


class TestLostRuns:
    def test_runs_of_a_killed_clock_are_marked_lost(self, tmp_path: Path) -> None:
        """kill -9 a SQLite clock during a run: the next clock marks that run lost, and history says so."""
        store = f"sqlite:///{tmp_path / 'state.db'}"
        text = 'tasks:\n  slow:\n    schedule: "* * * * * *"\n    command: "sleep 30"\n'
        (clock,) = start_clocks(tmp_path, text, store, 1)
        started = clock.wait_event("task.started")[0]
        clock.proc.kill()
        clock.proc.wait(10)
        os.killpg(started["pid"], signal.SIGKILL)  # the orphaned run: nobody else will
        run_id = started["run_id"]
        (again,) = start_clocks(tmp_path, text, store, 1)
        stop_all([again])
        # That run, and maybe the next second's fire, claimed ahead and never started.
        assert again.named("store.lost_runs")[0]["runs"] in (1, 2)
        runs = json.loads(run_cli("history", "--json", "--store", store, cwd=tmp_path).stdout)
        assert "lost" == next(r["status"] for r in runs if r["run_id"] == run_id)


class _Proxy:
    """A TCP proxy to PostgreSQL that the test can cut (refusing and dropping connections) and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up = True
        self.conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.up = False
        with self._lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.server.close()


def _via(url: str, port: int) -> str:
    """The postgres URL with its host and port replaced by the proxy's."""
    scheme, rest = url.split("://", 1)
    hostpart, _, tail = rest.partition("/")
    userinfo = hostpart.rsplit("@", 1)[0] + "@" if "@" in hostpart else ""
    return f"{scheme}://{userinfo}127.0.0.1:{port}/{tail}"


class TestOutage:
    def test_store_going_away_and_coming_back(self, tmp_path: Path, postgres_store_url: str) -> None:
        """The store going away is logged once, fires go on best-effort (require_store ones skip), and
        when it comes back it is logged and the runs of the outage are recorded."""
        host_port = postgres_store_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        host, _, port = host_port.partition(":")
        proxy = _Proxy((host or "127.0.0.1", int(port or 5432)))
        text = (
            PER_SECOND
            + '  strict:\n    schedule: "* * * * * *"\n    command: "true"\n    require_store: true\n'
        )
        (clock,) = start_clocks(tmp_path, text, _via(postgres_store_url, proxy.port), 1)
        try:
            clock.wait_event("task.finished", task="tick", count=2)
            proxy.cut()
            down = clock.wait_event("store.unavailable", timeout=10)[0]
            cut_at = at(down["timestamp"])
            clock.wait_event("task.skipped", reason="store_unavailable", task="strict", count=2, timeout=10)
            ticks = len(clock.named("task.started"))
            clock.wait_event("task.started", task="tick", count=ticks + 2)
            strict = len([e for e in clock.named("task.started") if e["task"] == "strict"])
            proxy.restore()
            recovered = clock.wait_event("store.recovered", timeout=40)[0]
            clock.wait_event("task.started", task="strict", count=strict + 1)
        finally:
            stop_all([clock])
            proxy.close()
        assert 1 == len(clock.named("store.unavailable"))
        assert recovered["written"] >= 2
        assert "password" not in json.dumps(clock.events)
        during = [
            e["scheduled_for"]
            for e in clock.named("task.started")
            if e["task"] == "tick" and cut_at < at(e["timestamp"]) < at(recovered["timestamp"])
        ]
        assert len(during) >= 2
        history = run_cli(
            "history", "tick", "-n", "500", "--json", "--store", postgres_store_url, cwd=tmp_path
        )
        assert 0 == history.returncode, history.stderr
        recorded = {r["scheduled_for"] for r in json.loads(history.stdout)}
        assert {at(i) for i in during} <= {at(i) for i in recorded}

    def test_dead_store_at_start_does_not_stop_the_clock(self, tmp_path: Path) -> None:
        """A store that cannot be reached at start: store.unavailable, and the task still runs."""
        (clock,) = start_clocks(tmp_path, PER_SECOND, "postgresql://u:sekrit@127.0.0.1:1/nothing", 1)
        try:
            clock.wait_event("task.finished", count=2)
        finally:
            stop_all([clock])
        (down,) = clock.named("store.unavailable")
        assert "sekrit" not in json.dumps(clock.events)
        assert "postgresql://u:***@127.0.0.1:1/nothing" == down["store"]


class TestHistory:
    def test_history_and_list_show_the_runs(self, tmp_path: Path) -> None:
        """run-now records a manual run; history shows it as a table and as JSON; list gains its columns."""
        (tmp_path / "schedules.yaml").write_text(
            "store: sqlite:///state.db\n"
            "tasks:\n"
            "  hello:\n    schedule: '@daily'\n    command: echo hello there\n"
            "  fails:\n    schedule: '@daily'\n    command: echo bad; exit 3\n"
            "  quiet:\n    schedule: '@daily'\n    command: 'true'\n"
        )
        assert 0 == run_cli("run-now", "hello", cwd=tmp_path).returncode
        assert 3 == run_cli("run-now", "fails", cwd=tmp_path).returncode
        assert (tmp_path / "state.db").exists()

        table = run_cli("history", cwd=tmp_path)
        assert 0 == table.returncode, table.stderr
        header, *rows = table.stdout.splitlines()
        assert header.split()[:5] == ["STARTED", "TASK", "TRIGGER", "ATTEMPT", "STATUS"]
        assert ["fails", "hello"] == [row.split()[3] for row in rows]
        assert ["UTC", "fails", "manual", "1", "failed", "3"] == rows[0].split()[2:8]

        out = json.loads(run_cli("history", "fails", "--json", cwd=tmp_path).stdout)
        assert 1 == len(out)
        keys = {"task", "scheduled_for", "trigger", "started_at", "finished_at", "status", "exit_code"}
        keys |= {"signal", "duration_s", "claimed_by"}
        assert keys <= set(out[0])
        assert ("fails", "manual", "failed", 3) == (
            out[0]["task"],
            out[0]["trigger"],
            out[0]["status"],
            out[0]["exit_code"],
        )

        listing = run_cli("list", cwd=tmp_path).stdout.splitlines()
        assert ["LAST RUN", "LAST STATUS"] == re.split(r"\s{2,}", listing[0])[-2:]
        by_task = {line.split()[0]: line for line in listing[1:]}
        assert by_task["fails"].endswith("failed")
        assert by_task["hello"].endswith("succeeded")
        assert ["never", "-"] == by_task["quiet"].split()[-2:]

    def test_retries_recorded_with_their_attempt(self, tmp_path: Path, start_clock: Any) -> None:
        """A clock with a store records each retry as a run of its own, for the failed run's instant, with
        its attempt; history shows it."""
        clock = start_clock(
            "store: sqlite:///state.db\n"
            "tasks:\n"
            "  flaky:\n    schedule: '*/2 * * * * *'\n    command: exit 1\n"
            "    retries: 1\n    retry_delay: 200ms\n"
        )
        clock.wait_event("task.finished", attempt=2)
        assert 0 == clock.stop()
        result = run_cli("history", "--json", "-n", "1000", cwd=tmp_path)
        assert 0 == result.returncode, result.stderr
        runs = json.loads(result.stdout)
        retries = [r for r in runs if r["trigger"] == "retry"]
        firsts = {r["scheduled_for"]: r for r in runs if r["trigger"] == "schedule"}
        assert retries
        assert {("failed", 2)} == {(r["status"], r["attempt"]) for r in retries}
        assert {1} == {r["attempt"] for r in firsts.values()}
        assert all(r["scheduled_for"] in firsts for r in retries)

    def test_history_errors(self, tmp_path: Path) -> None:
        """No store, an unset variable, an unknown task: clear messages, no traceback."""
        (tmp_path / "schedules.yaml").write_text(
            "tasks:\n  a:\n    schedule: '@daily'\n    command: 'true'\n"
        )
        none = run_cli("history", cwd=tmp_path)
        assert 2 == none.returncode
        assert "no store" in none.stderr

        (tmp_path / "schedules.yaml").write_text(
            "store: ${NO_SUCH_DATABASE_URL}\ntasks:\n  a:\n    schedule: '@daily'\n    command: 'true'\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "NO_SUCH_DATABASE_URL"}
        unset = run_cli("history", cwd=tmp_path, env=env)
        assert 2 == unset.returncode
        assert "schedules.yaml:1: store: environment variable NO_SUCH_DATABASE_URL is not set" in unset.stderr

        (tmp_path / "s.db").touch()  # an empty file is an empty database; a missing one is an error
        unknown = run_cli("history", "b", "--store", "sqlite:///s.db", cwd=tmp_path)
        assert 2 == unknown.returncode
        assert "unknown task 'b'" in unknown.stderr
        for result in (none, unset, unknown):
            assert "Traceback" not in result.stderr


class _Stalling(_Proxy):
    """A proxy that, once the client sends `marker`, forwards nothing more either way: a server stopped
    with SIGSTOP, whose TCP stays up while nothing answers."""

    def __init__(self, target: tuple[str, int], marker: bytes) -> None:
        self.marker = marker
        self.stalled = threading.Event()
        super().__init__(target)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.marker in data:
                    self.stalled.set()
                if self.stalled.is_set():
                    continue  # swallowed: no answer, no error
                dst.sendall(data)
        except OSError:
            pass


def _stalling(postgres_store_url: str, marker: bytes) -> tuple[_Stalling, str]:
    host_port = postgres_store_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = host_port.partition(":")
    proxy = _Stalling((host or "127.0.0.1", int(port or 5432)), marker)
    return proxy, _via(postgres_store_url, proxy.port)


class _Silent:
    """A TCP listener that accepts connections and never answers: a stalled server from the first byte."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"postgresql://u:pa?ss@127.0.0.1:{self.server.getsockname()[1]}/db"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        for conn in self.conns:
            conn.close()


STALL_DEADLINE_S = 20.0  # the bound is 5 s per call; generous for a loaded machine
TASKS = "tasks:\n  fails:\n    schedule: '@daily'\n    command: 'sleep 0.2; exit 3'\n"


class TestStalledStore:
    def test_silent_server(self, tmp_path: Path) -> None:
        """A server that never answers: history exits 69, list shows the tasks, run-now exits with the
        task's status; all quickly, and the password never shows."""
        (tmp_path / "schedules.yaml").write_text(TASKS)
        silent = _Silent()
        try:
            began = time.monotonic()
            history = run_cli("history", "--store", silent.url, cwd=tmp_path, timeout=60)
            listing = run_cli("list", "--store", silent.url, cwd=tmp_path, timeout=60)
            manual = run_cli("run-now", "fails", "--store", silent.url, cwd=tmp_path, timeout=60)
            elapsed = time.monotonic() - began
        finally:
            silent.close()
        assert (69, 0, 3) == (history.returncode, listing.returncode, manual.returncode)
        assert elapsed < 3 * STALL_DEADLINE_S
        assert "fails" in listing.stdout
        assert "store.unavailable" in manual.stderr
        for result in (history, listing, manual):
            assert "pa?ss" not in result.stdout + result.stderr
            assert "Traceback" not in result.stderr

    def test_history_against_a_server_that_stalls(self, tmp_path: Path, postgres_store_url: str) -> None:
        """A server that stops answering once connected (SIGSTOP): history gives up within the bound and
        exits 69 with a clear message."""
        (tmp_path / "schedules.yaml").write_text(TASKS)
        proxy, url = _stalling(postgres_store_url, b"ORDER BY started_at DESC")
        try:
            began = time.monotonic()
            result = run_cli("history", "--store", url, cwd=tmp_path, timeout=60)
            elapsed = time.monotonic() - began
        finally:
            proxy.close()
        assert proxy.stalled.is_set()
        assert 69 == result.returncode, result.stderr
        assert "no answer within 5 s" in result.stderr
        assert elapsed < STALL_DEADLINE_S

    def test_run_now_when_the_server_stalls_after_the_start(
        self, tmp_path: Path, postgres_store_url: str
    ) -> None:
        """run-now whose store stalls once the task has started still exits with the task's status, with
        a store.unavailable warning: the record is best effort."""
        (tmp_path / "schedules.yaml").write_text(TASKS)
        proxy, url = _stalling(postgres_store_url, b"SET finished_at")
        try:
            began = time.monotonic()
            result = run_cli("run-now", "fails", "--store", url, cwd=tmp_path, timeout=60)
            elapsed = time.monotonic() - began
        finally:
            proxy.close()
        assert proxy.stalled.is_set()
        assert 3 == result.returncode, result.stderr
        assert "store.unavailable" in result.stderr
        assert elapsed < STALL_DEADLINE_S


# A run that outlives its clock's SIGTERM for a few seconds (SIGTERM ignored, as by a careless task).
STUBBORN = (
    'tasks:\n  long:\n    schedule: "* * * * * *"\n    overlap: skip\n    kill_grace: 20s\n'
    "    command: \"trap '' TERM; sleep 4\"\n"
)


class TestLeases:
    def test_overlap_skip_holds_across_clocks(self, tmp_path: Path, postgres_store_url: str) -> None:
        """The clock running a skip task is stopped while its run goes on: the other clock skips the task
        (reason overlap, naming that clock) until the run ends, then runs it; no two runs ever overlap."""
        clocks = start_clocks(tmp_path, STUBBORN, postgres_store_url, 2)
        try:
            leader = first_start(clocks)["clock"]
            other = clocks[1 - clocks.index(leader)]
            leader_id = leader.wait_event("store.opened")[0]["claimed_by"]
            leader.signal(signal.SIGTERM)
            skip = other.wait_event("task.skipped", reason="overlap", timeout=10)[0]
            assert leader_id == skip["running_on"]
            other.wait_event("task.started", timeout=15)
            assert 0 == leader.stop()
        finally:
            stop_all(clocks)
        history = run_cli(
            "history", "long", "-n", "500", "--json", "--store", postgres_store_url, cwd=tmp_path
        )
        assert 0 == history.returncode, history.stderr
        runs = sorted(
            (r for r in json.loads(history.stdout) if r["status"] != "skipped"), key=lambda r: r["started_at"]
        )
        assert len(runs) >= 2
        for before, after in itertools.pairwise(runs):
            assert before["finished_at"] is not None
            assert at(before["finished_at"]) <= at(after["started_at"]), (before, after)

    def test_a_dead_clocks_runs_are_lost_and_its_task_runs_elsewhere(
        self, tmp_path: Path, postgres_store_url: str
    ) -> None:
        """kill -9 the clock running a long overlap: skip task: within the 30 s lease another clock marks
        its run lost (store.lost_runs naming it) and runs the task itself."""
        text = 'tasks:\n  long:\n    schedule: "* * * * * *"\n    command: "sleep 300"\n'
        clocks = start_clocks(tmp_path, text, postgres_store_url, 2)
        try:
            runner = None
            deadline = time.monotonic() + 20
            while runner is None and time.monotonic() < deadline:
                runner = next((c for c in clocks if c.named("task.started")), None)
                time.sleep(0.1)
            assert runner is not None
            other = clocks[1] if runner is clocks[0] else clocks[0]
            dead_id = runner.wait_event("store.opened")[0]["claimed_by"]
            runner.proc.kill()
            killed = time.monotonic()
            (lost,) = other.wait_event("store.lost_runs", timeout=50, clock=dead_id)
            assert lost["runs"] >= 1
            other.wait_event("task.started", timeout=15)
            assert time.monotonic() - killed < 50
        finally:
            stop_all(clocks)
        history = run_cli(
            "history", "long", "-n", "1000", "--json", "--store", postgres_store_url, cwd=tmp_path
        )
        statuses = [r["status"] for r in json.loads(history.stdout) if r["claimed_by"] == dead_id]
        assert "lost" in statuses
        assert "running" not in statuses

    def test_clocks_on_different_configs_warn(self, tmp_path: Path, postgres_store_url: str) -> None:
        """Two live clocks on one store running different schedules files (a deploy half done): each logs
        config.mismatch naming both clocks and their config digests."""
        clocks = []
        try:
            for name, schedule in (("a", "0 3 * * *"), ("b", "0 4 * * *")):
                folder = tmp_path / name
                folder.mkdir()
                path = folder / "schedules.yaml"
                path.write_text(f'tasks:\n  nightly:\n    schedule: "{schedule}"\n    command: "true"\n')
                clock = ClockProcess(path, "--store", postgres_store_url)
                clock.wait_event("scheduler.started", timeout=20)
                clocks.append(clock)
            ids = {c.wait_event("store.opened")[0]["claimed_by"] for c in clocks}
            for clock in clocks:
                (mismatch,) = clock.wait_event("config.mismatch", timeout=20)[:1]
                assert ids == set(mismatch["clocks"])
                assert 2 == len(set(mismatch["clocks"].values()))
        finally:
            stop_all(clocks)

    def test_sqlite_file_deleted_under_the_clock(self, tmp_path: Path) -> None:
        """The SQLite file is deleted while the clock runs: the clock notices at its heartbeat
        (store.unavailable), recreates it (store.recovered, 0600), and records the next runs there."""
        path = tmp_path / "schedules.yaml"
        path.write_text(PER_SECOND)
        db = tmp_path / "state.db"
        clock = ClockProcess(path, "--store", f"sqlite:///{db}")
        try:
            clock.wait_event("task.finished", timeout=20)
            db.unlink()
            clock.wait_event("store.unavailable", timeout=15)
            clock.wait_event("store.recovered", timeout=15)
            recovered = len(clock.named("task.finished"))
            clock.wait_event("task.finished", count=recovered + 2, timeout=10)
        finally:
            clock.stop()
        assert 0o600 == db.stat().st_mode & 0o777
        history = run_cli("history", "tick", "--json", "--store", f"sqlite:///{db}", cwd=tmp_path)
        assert 0 == history.returncode, history.stderr
        assert len(json.loads(history.stdout)) >= 2
