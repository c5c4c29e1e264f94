"""Benchmarks, side by side in one run: the floor (C), APScheduler 3, and our `scheduler run`.

Every latency is "scheduled instant -> task process running", measured from outside the scheduler: the
task is a probe (probe.c) that appends its own CLOCK_REALTIME start time to a file. Prints one table and
writes the same figures as JSON under bench/results/. Figures, not pass/fail: see the README's Performance.

usage: python bench/run.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEDULER = [sys.executable, "-m", "scheduler"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# Processes under test


@dataclass
class Proc:
    """A clock process whose stdout lines are collected by a thread, with their arrival times."""

    argv: list[str]
    cwd: Path
    started_ns: int = 0
    lines: list[tuple[int, str]] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> Proc:
        self.started_ns = time.time_ns()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append((time.time_ns(), raw.decode(errors="replace")))
                self._cond.notify_all()

    def wait_line(self, needle: str, timeout: float, after: int = 0) -> int | None:
        """The arrival time (ns) of the first line at index >= `after` containing `needle`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, line in self.lines[after:]:
                    if needle in line:
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.1))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_s(self) -> float:
        """CPU time used so far by all threads: from schedstat (nanoseconds) where the kernel has it,
        else from stat (clock ticks of 10 ms, too coarse for an idle process)."""
        try:
            total = 0
            for thread in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{thread}/schedstat") as f:
                    total += int(f.read().split()[0])
            return total / 1e9
        except (OSError, ValueError, IndexError):
            pass
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return math.nan

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def read_starts(path: Path) -> list[int]:
    if not path.exists():
        return []
    return sorted(int(line) for line in path.read_text().split())


def wait_starts(path: Path, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        starts = read_starts(path)
        if len(starts) >= count:
            return starts
        time.sleep(0.05)
    return read_starts(path)


# The three systems


class Bench:
    def __init__(self, work: Path, probe: Path, floor: Path, quick: bool) -> None:
        self.work = work
        self.probe = probe
        self.floor = floor
        self.quick = quick
        self._n = 0

    def out(self) -> Path:
        self._n += 1
        return self.work / f"starts-{self._n}.txt"

    def ours(self, tasks: dict[str, str], *extra: str) -> tuple[Proc, Path]:
        """Our clock on a generated schedules.yaml; `tasks` maps names to schedules; each runs the probe."""
        out = self.out()
        config = self.work / f"schedules-{self._n}.yaml"
        config.write_text(_yaml(tasks, [str(self.probe), str(out)]))
        argv = [*SCHEDULER, "run", "-c", str(config), "--log-format", "json", "--no-watch", *extra]
        return Proc(argv, self.work), out

    def aps(self, mode: str, *args: str) -> tuple[Proc, Path]:
        out = self.out()
        argv = [sys.executable, str(HERE / "aps_clock.py"), str(self.probe), str(out), mode, *args]
        return Proc(argv, self.work), out


def _yaml(tasks: dict[str, str], command: list[str]) -> str:
    lines = ["tasks:"]
    cmd = json.dumps(command)
    for name, schedule in tasks.items():
        lines += [f"  {name}:", f'    schedule: "{schedule}"', f"    command: {cmd}"]
    return "\n".join(lines) + "\n"


def latencies_per_second(starts: list[int], fires: int) -> list[float]:
    """ms from the whole second each start belongs to (all are well under a second late)."""
    return [(ns % 1_000_000_000) / 1e6 for ns in starts[:fires]]


def per_second(bench: Bench, fires: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    # The floor
    out = bench.out()
    first = int(time.time()) + 2
    subprocess.run([str(bench.floor), str(bench.probe), str(out), str(first), str(fires), "1"], check=True)
    results["floor"] = _summary(latencies_per_second(read_starts(out), fires))
    # APScheduler and ours: start, wait until ready, take the next `fires` starts.
    for name, (proc, out) in {
        "apscheduler": bench.aps("per-second"),
        "ours": bench.ours({"tick": "* * * * * *"}),
    }.items():
        with running(proc):
            proc.wait_line("ready" if name == "apscheduler" else "scheduler.started", 60)
            starts = wait_starts(out, fires + 1, fires + 10)
        results[name] = _summary(latencies_per_second(starts[1 : fires + 1], fires))
    return results


@contextmanager
def postgres_schema(name: str = "scheduler_bench") -> Iterator[str | None]:
    """A store URL on a schema of the benchmark's own (`name` and the pid; dropped afterwards), or None
    without PostgreSQL."""
    base = os.environ.get("SCHEDULER_BENCH_POSTGRES_URL", "postgresql://127.0.0.1/test")
    try:
        import psycopg

        admin = psycopg.connect(base, autocommit=True, connect_timeout=2)
    except Exception as exc:  # no driver, no server: the PostgreSQL rows say n/a
        print(f"  (no PostgreSQL at {base}: {exc})", flush=True)
        yield None
        return
    schema = f"{name}_{os.getpid()}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


def with_store(bench: Bench, fires: int, burst_count: int) -> dict[str, dict[str, float]]:
    """Ours with a store: every fire waits for its claim. A per-second task, and a burst claimed at once."""
    results: dict[str, dict[str, float]] = {}
    with postgres_schema() as pg:
        stores = {"sqlite": f"sqlite:///{bench.work / 'state.db'}", "postgresql": pg}
        for kind, url in stores.items():
            if url is None:
                continue
            proc, out = bench.ours({"tick": "* * * * * *"}, "--store", url)
            with running(proc):
                proc.wait_line("scheduler.started", 60)
                starts = wait_starts(out, fires + 1, fires + 10)
            results[f"per_second_{kind}"] = _summary(latencies_per_second(starts[1 : fires + 1], fires))
            at = int(time.time()) + 8
            when = datetime.fromtimestamp(at, UTC)
            cron = f"{when.second} {when.minute} {when.hour} {when.day} {when.month} *"
            proc, out = bench.ours({f"t{i:05d}": cron for i in range(burst_count)}, "--store", url)
            with running(proc):
                proc.wait_line("scheduler.started", 8)
                starts = wait_starts(out, burst_count, at - time.time() + 15)
            results[f"burst_{kind}"] = _burst_summary(starts, at, burst_count)
    return results


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan, "n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"p50": statistics.median(ordered), "p99": p99, "max": ordered[-1], "n": len(ordered)}


def burst(bench: Bench, count: int, repeats: int = 1) -> dict[str, dict[str, float]]:
    """`count` tasks due at the same instant: ms to the first and to the last start, and how many started;
    with `repeats`, each system runs that many times and the run with the median last start is kept (a
    burst saturates both cores, so single runs vary by tens of percent)."""
    runs = [_burst_once(bench, count) for _ in range(repeats)]
    results: dict[str, dict[str, float]] = {}
    for name in runs[0]:
        ordered = sorted((run[name] for run in runs), key=lambda r: (math.isnan(r["last"]), r["last"]))
        results[name] = dict(ordered[(len(ordered) - 1) // 2], runs=len(ordered))
    return results


def _burst_once(bench: Bench, count: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    lead = 6 if count <= 100 else 8
    # The floor
    out = bench.out()
    at = int(time.time()) + 2
    subprocess.run([str(bench.floor), str(bench.probe), str(out), str(at), "1", str(count)], check=True)
    results["floor"] = _burst_summary(read_starts(out), at, count)
    for name in ("apscheduler", "ours"):
        at = int(time.time()) + lead
        when = datetime.fromtimestamp(at, UTC)
        cron = f"{when.second} {when.minute} {when.hour} {when.day} {when.month} *"
        if name == "apscheduler":
            proc, out = bench.aps("burst", str(at), str(count))
        else:
            proc, out = bench.ours({f"t{i:05d}": cron for i in range(count)})
        with running(proc):
            ready = proc.wait_line("ready" if name == "apscheduler" else "scheduler.started", lead)
            starts = wait_starts(out, count, at - time.time() + 15)
        if ready is None or ready > at * 1_000_000_000:
            results[name] = {"first": math.nan, "last": math.nan, "started": 0, "note": "not ready in time"}
        else:
            results[name] = _burst_summary(starts, at, count)
    return results


def steady(bench: Bench, count: int, step_s: int, bursts: int) -> dict[str, dict[str, float]]:
    """`count` tasks due together every `step_s` seconds, in a clock that has been running: per burst, ms
    from the instant to the last start; the median and the worst over `bursts` bursts (the first burst
    after start is left out: `burst` measures that one)."""
    results: dict[str, dict[str, float]] = {}
    out = bench.out()
    first = (int(time.time()) // step_s + 2) * step_s
    subprocess.run(
        [str(bench.floor), str(bench.probe), str(out), str(first), str(bursts), str(count), str(step_s)],
        check=True,
    )
    results["floor"] = _steady_summary(read_starts(out), count, step_s)
    for name in ("apscheduler", "ours"):
        if name == "apscheduler":
            proc, out = bench.aps("steady", str(count), str(step_s))
        else:
            proc, out = bench.ours({f"t{i:05d}": f"*/{step_s} * * * * *" for i in range(count)})
        with running(proc):
            proc.wait_line("ready" if name == "apscheduler" else "scheduler.started", 60)
            starts = wait_starts(out, count * (bursts + 1), step_s * (bursts + 1) + 15)
        # Drop the first burst after the start, and any burst cut short by the stop.
        by_burst = _group_bursts(starts, step_s)[1 : bursts + 1]
        results[name] = _steady_summary([ns for burst in by_burst for ns in burst], count, step_s)
    return results


def _group_bursts(starts: list[int], step_s: int) -> list[list[int]]:
    """Starts grouped by the instant they belong to (the multiple of step_s at or before each)."""
    groups: dict[int, list[int]] = {}
    for ns in starts:
        groups.setdefault(ns // 1_000_000_000 // step_s, []).append(ns)
    return [groups[k] for k in sorted(groups)]


def _steady_summary(starts: list[int], count: int, step_s: int) -> dict[str, float]:
    lasts = [
        (max(burst) - (max(burst) // 1_000_000_000 // step_s) * step_s * 1_000_000_000) / 1e6
        for burst in _group_bursts(starts, step_s)
        if len(burst) >= count
    ]
    if not lasts:
        return {"median_last": math.nan, "max_last": math.nan, "bursts": 0}
    return {"median_last": statistics.median(lasts), "max_last": max(lasts), "bursts": len(lasts)}


def _burst_summary(starts: list[int], at: int, count: int) -> dict[str, float]:
    if not starts:
        return {"first": math.nan, "last": math.nan, "started": 0}
    base = at * 1_000_000_000
    return {"first": (starts[0] - base) / 1e6, "last": (starts[-1] - base) / 1e6, "started": len(starts)}


def idle(bench: Bench, count: int, idle_s: float, ready_runs: int = 1) -> dict[str, dict[str, float]]:
    """`count` tasks none due soon: seconds to ready (the median of `ready_runs` starts: on a shared VM
    single starts vary by a quarter), CPU ms over `idle_s` idle seconds, resident MB."""
    results: dict[str, dict[str, float]] = {}
    rng = random.Random(count)
    month = datetime.now(UTC).month
    tasks = {}
    for i in range(count):
        other = rng.choice([m for m in range(1, 13) if m != month])
        tasks[f"task-{i:06d}"] = f"{rng.randrange(60)} {rng.randrange(24)} {rng.randint(1, 28)} {other} *"
    for name, (proc, _out) in {
        "apscheduler": bench.aps("idle", str(count), str(count)),
        "ours": bench.ours(tasks),
    }.items():
        needle = "ready" if name == "apscheduler" else "scheduler.started"
        readies: list[float] = []
        for _ in range(ready_runs - 1):
            with running(again := Proc(proc.argv, proc.cwd)):
                at = again.wait_line(needle, 300)
                readies.append((at - again.started_ns) / 1e9 if at is not None else math.nan)
        with running(proc):
            ready = proc.wait_line(needle, 300)
            if ready is None:
                results[name] = {"ready_s": math.nan, "idle_cpu_ms": math.nan, "rss_mb": math.nan}
                continue
            readies.append((ready - proc.started_ns) / 1e9)
            time.sleep(1)
            cpu0 = proc.cpu_s()
            time.sleep(idle_s)
            cpu1 = proc.cpu_s()
            results[name] = {
                "ready_s": statistics.median(readies),
                "idle_cpu_ms": (cpu1 - cpu0) * 1000 * 10 / idle_s,
                "rss_mb": proc.rss_mb(),
            }
    return results


def tick_among(bench: Bench, count: int, fires: int) -> dict[str, float]:
    """A per-second task's latency in a clock that also holds `count` idle tasks: per-fire work must not
    grow with the number of tasks."""
    tasks = {f"task-{i:06d}": f"{i % 60} {i % 24} {1 + i % 28} * *" for i in range(count)}
    tasks["tick"] = "* * * * * *"
    proc, out = bench.ours(tasks)
    with running(proc):
        proc.wait_line("scheduler.started", 120)
        starts = wait_starts(out, fires + 1, fires + 10)
    return _summary(latencies_per_second(starts[1 : fires + 1], fires))


def reload(bench: Bench, count: int) -> dict[str, float]:
    """SIGHUP -> config.reloaded on a `count`-task file (1% of the tasks changed), and the latency of a
    per-second task while it happens."""
    tasks = {f"task-{i:06d}": f"{i % 60} {i % 24} {1 + i % 28} * *" for i in range(count)}
    tasks["tick"] = "* * * * * *"
    proc, out = bench.ours(tasks)
    config = Path(proc.argv[proc.argv.index("-c") + 1])
    with running(proc):
        proc.wait_line("scheduler.started", 60)
        wait_starts(out, 2, 10)
        changed = {
            name: (f"{(i + 7) % 60} 3 * * *" if i % 100 == 0 else s)
            for i, (name, s) in enumerate(tasks.items())
        }
        config.write_text(_yaml(changed, [str(bench.probe), str(out)]))
        time.sleep(
            1.0 - time.time() % 1 + 0.7
        )  # 0.3 s before a tick, so that the tick falls inside the reload
        seen = len(proc.lines)
        sent = time.time_ns()
        proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        done = proc.wait_line("config.reloaded", 60, after=seen)
        time.sleep(1.5)
        during = [
            ns for ns in read_starts(out) if sent - 1_000_000_000 <= ns <= (done or sent) + 1_000_000_000
        ]
    reload_s = (done - sent) / 1e9 if done else math.nan
    lat = latencies_per_second(during, len(during))
    return {"reload_s": reload_s, "tick_max_ms_during_reload": max(lat) if lat else math.nan}


def next_json(bench: Bench, count: int) -> float:
    tasks = {f"task-{i:06d}": f"{i % 60} {i % 24} * * {i % 7}" for i in range(count)}
    config = bench.work / "next.yaml"
    config.write_text(_yaml(tasks, ["true"]))
    began = time.perf_counter()
    result = subprocess.run(
        [*SCHEDULER, "next", "--json", "-c", str(config)], capture_output=True, check=True
    )
    elapsed = time.perf_counter() - began
    assert len(json.loads(result.stdout)) == count
    return elapsed


# Report


def fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}{unit}" if abs(value) < 100 else f"{value:.0f}{unit}"
    return f"{value}{unit}"


def ratio(ours: Any, theirs: Any) -> str:
    try:
        if theirs in (0, None) or math.isnan(theirs) or math.isnan(ours):
            return "n/a"
        return f"{ours / theirs:.2f}"
    except TypeError:
        return "n/a"


def table(rows: list[tuple[str, Any, Any, Any, str]]) -> str:
    header = ("figure", "floor", "APScheduler", "ours", "ours ÷ APScheduler")
    cells = [header] + [
        (
            figure,
            fmt(floor, unit),
            fmt(aps, unit),
            fmt(ours, unit),
            ratio(ours, aps) if aps is not None else "n/a",
        )
        for figure, floor, aps, ours, unit in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(5)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def build(work: Path) -> tuple[Path, Path]:
    cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
    probe, floor = work / "probe", work / "floor"
    for src, exe in ((HERE / "probe.c", probe), (HERE / "floor.c", floor)):
        subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
    return probe, floor


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer fires and tasks, for a smoke run")
    parser.add_argument(
        "--only",
        choices=("per-second", "burst", "steady"),
        help="run one measurement and print its figures as JSON (for iterating on one figure)",
    )
    args = parser.parse_args()
    quick = args.quick
    if args.only:
        with tempfile.TemporaryDirectory(prefix="scheduler-bench-") as tmp:
            probe, floor = build(Path(tmp))
            bench = Bench(Path(tmp), probe, floor, quick)
            only = {
                "per-second": lambda: per_second(bench, 5 if quick else 20),
                "burst": lambda: burst(bench, 100, repeats=1 if quick else 5),
                "steady": lambda: steady(bench, 100, 2, 4 if quick else 10),
            }[args.only]
            print(json.dumps(only(), indent=2))
        return
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="scheduler-bench-") as tmp:
        work = Path(tmp)
        probe, floor = build(work)
        bench = Bench(work, probe, floor, quick)
        fires = 5 if quick else 20

        def step(what: str) -> None:
            print(f"[{time.monotonic() - began:6.1f}s] {what}", flush=True)

        step("per-second task")
        ps = per_second(bench, fires)
        step("100 due at once")
        b100 = burst(bench, 100, repeats=1 if quick else 5)
        step("100 due together every 2 s, steady")
        st100 = steady(bench, 100, 2, 4 if quick else 10)
        step("1,000 due at once")
        b1000 = burst(bench, 100 if quick else 1000, repeats=1 if quick else 3)
        idle_s = 2.0 if quick else 10.0
        step("10,000 idle tasks")
        i10k = idle(bench, 1000 if quick else 10_000, idle_s, ready_runs=1 if quick else 5)
        step("100,000 idle tasks")
        i100k = idle(bench, 2000 if quick else 100_000, idle_s)
        step("per-second task among 100,000 tasks")
        among = tick_among(bench, 2000 if quick else 100_000, fires)
        step("reload of 10,000 tasks")
        rl = reload(bench, 1000 if quick else 10_000)
        step("next --json over 10,000 tasks")
        nj = next_json(bench, 1000 if quick else 10_000)
        step("with a store (SQLite, PostgreSQL)")
        stored = with_store(bench, fires, 100 if quick else 1000)
    results = {
        "machine": machine(),
        "quick": quick,
        "per_second_ms": ps,
        "burst_100_ms": b100,
        "burst_1000_ms": b1000,
        "steady_100_every_2s_ms": st100,
        "idle_10k": i10k,
        "idle_100k": i100k,
        "tick_among_100k_ms": among,
        "reload_10k": rl,
        "next_json_10k_s": nj,
        "with_store": stored,
        "bench_s": time.monotonic() - began,
    }
    rows: list[tuple[str, Any, Any, Any, str]] = [
        (
            f"per-second task, {fires} fires: p50",
            ps["floor"]["p50"],
            ps["apscheduler"]["p50"],
            ps["ours"]["p50"],
            " ms",
        ),
        ("per-second task: p99", ps["floor"]["p99"], ps["apscheduler"]["p99"], ps["ours"]["p99"], " ms"),
        ("per-second task: max", ps["floor"]["max"], ps["apscheduler"]["max"], ps["ours"]["max"], " ms"),
    ]
    for label, b in (("100", b100), ("1,000" if not quick else "100 (quick)", b1000)):
        runs = int(b["ours"].get("runs", 1))
        if runs > 1:
            label += f" (median of {runs} runs)"
        rows += [
            (
                f"{label} due at once: first start",
                b["floor"]["first"],
                b["apscheduler"]["first"],
                b["ours"]["first"],
                " ms",
            ),
            (
                f"{label} due at once: last start",
                b["floor"]["last"],
                b["apscheduler"]["last"],
                b["ours"]["last"],
                " ms",
            ),
            (
                f"{label} due at once: started",
                b["floor"]["started"],
                b["apscheduler"]["started"],
                b["ours"]["started"],
                "",
            ),
        ]
    rows += [
        (
            f"100 due every 2 s, steady: last start, median of {int(st100['ours']['bursts'])} bursts",
            st100["floor"]["median_last"],
            st100["apscheduler"]["median_last"],
            st100["ours"]["median_last"],
            " ms",
        ),
        (
            "100 due every 2 s, steady: last start, worst burst",
            st100["floor"]["max_last"],
            st100["apscheduler"]["max_last"],
            st100["ours"]["max_last"],
            " ms",
        ),
    ]
    for label, i, runs in (("10,000", i10k, 5), ("100,000", i100k, 1)):
        if quick:
            label += " (quick: fewer)"
        ready_label = f"{label} tasks: ready" + (
            f" (median of {runs} starts)" if runs > 1 and not quick else ""
        )
        rows += [
            (ready_label, None, i["apscheduler"]["ready_s"], i["ours"]["ready_s"], " s"),
            (
                f"{label} tasks: CPU per 10 idle s",
                None,
                i["apscheduler"]["idle_cpu_ms"],
                i["ours"]["idle_cpu_ms"],
                " ms",
            ),
            (f"{label} tasks: resident", None, i["apscheduler"]["rss_mb"], i["ours"]["rss_mb"], " MB"),
        ]
    rows += [
        ("per-second task among 100,000 tasks: p50", None, None, among["p50"], " ms"),
        ("per-second task among 100,000 tasks: max", None, None, among["max"], " ms"),
        ("reload of 10,000 tasks (SIGHUP -> config.reloaded)", None, None, rl["reload_s"], " s"),
        ("per-second task during that reload: max", None, None, rl["tick_max_ms_during_reload"], " ms"),
        ("`scheduler next --json`, 10,000 tasks", None, None, nj, " s"),
    ]
    burst_label = "100 (quick)" if quick else "1,000"
    for kind, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        tick = stored.get(f"per_second_{kind}", {})
        many = stored.get(f"burst_{kind}", {})
        rows += [
            (f"with a {name} store: per-second task p50", None, None, tick.get("p50"), " ms"),
            (f"with a {name} store: per-second task p99", None, None, tick.get("p99"), " ms"),
            (
                f"with a {name} store: {burst_label} due at once, last start",
                None,
                None,
                many.get("last"),
                " ms",
            ),
        ]
    print()
    print(table(rows))
    print()
    m = results["machine"]
    print(f"{m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, Linux {m['kernel']}")
    print(f"the benchmark took {results['bench_s']:.0f} s")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (out_dir / f"{stamp}.json", out_dir / "latest.json"):
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_dir / 'latest.json'}")


if __name__ == "__main__":
    main()
