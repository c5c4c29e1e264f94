"""Micro-benchmark of the runner alone: "start_run called -> task process running", with no clock around it.

The task is the probe (probe.c), which appends its own CLOCK_REALTIME start time to a file. Two figures:
- one at a time: each start_run is awaited, then its run, before the next; the latency is the probe's
  time minus the time just before start_run (median, p90, p99);
- back to back: N start_runs in a row, one loop iteration apart as the clock fires tasks due at once,
  without waiting for the runs; the total is from the first call to the last probe's start, also per run.

usage: python bench/spawn_micro.py [--runs 300] [--burst 1000] [--gap S] [--cwd] [--guard] [--probe PATH]
                                  [--runner F]

--gap idles before each one-at-a-time run, as the daemon does between fires (caches go cold); --runner
measures another copy of scheduler/runner.py, say the previous one; --guard tells a real orphans guard of
every run, as `scheduler run` does:
  git show HEAD~1:scheduler/runner.py > /tmp/old.py && python bench/spawn_micro.py --runner /tmp/old.py
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from scheduler import log, orphans, runner, schedule  # noqa: E402
from scheduler.config import TaskSpec  # noqa: E402


def _task(probe: Path, out: Path, **overrides: object) -> TaskSpec:
    zone = ZoneInfo("UTC")
    return TaskSpec(
        name="probe",
        schedule=schedule.parse("* * * * *", name="probe", zone=zone),
        command=(str(probe), str(out)),
        timezone="UTC",
        **overrides,  # type: ignore[arg-type]
    )


_extra: dict[str, object] = {}  # more keyword arguments for start_run: the guard, with --guard


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def _one_at_a_time(
    task: TaskSpec, out: Path, count: int, env: dict[str, str], gap_s: float = 0.0
) -> list[float]:
    befores = []
    for i in range(count):
        if gap_s:
            await asyncio.sleep(gap_s)  # let the caches go cold, as in the daemon between fires
        before = time.time_ns()
        run = runner.start_run(
            task,
            run_id=f"r{i}",
            trigger="schedule",
            scheduled_for=datetime.now(UTC),
            log=log.get_logger(),
            env=env,
            **_extra,
        )
        befores.append(before)
        await run.wait()
    starts = [int(line) for line in out.read_text().split()]
    assert len(starts) == count, (len(starts), count)
    return [(start - before) / 1e6 for start, before in zip(starts, befores, strict=True)]


async def _back_to_back(task: TaskSpec, out: Path, count: int, env: dict[str, str]) -> tuple[float, float]:
    began = time.time_ns()
    runs = []
    for i in range(count):
        runs.append(
            runner.start_run(
                task,
                run_id=f"b{i}",
                trigger="schedule",
                scheduled_for=datetime.now(UTC),
                log=log.get_logger(),
                env=env,
                **_extra,
            )
        )
        await asyncio.sleep(0)  # as the clock does between two due tasks
    returned = time.time_ns()
    results = [await run.wait() for run in runs]
    assert all(r.status == "succeeded" for r in results), {r.status for r in results}
    starts = sorted(int(line) for line in out.read_text().split())
    assert len(starts) == count, (len(starts), count)
    return (starts[-1] - began) / 1e6, (returned - began) / 1e6


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--probe", type=Path, default=None, help="a compiled probe (default: build one)")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds idle before each one-at-a-time run")
    parser.add_argument("--runner", type=Path, default=None, help="another copy of runner.py to measure")
    parser.add_argument("--cwd", action="store_true", help="give the task a cwd (the fallback path)")
    parser.add_argument("--guard", action="store_true", help="tell an orphans guard of every run")
    args = parser.parse_args()
    if args.runner is not None:
        global runner
        spec = importlib.util.spec_from_file_location("runner_under_test", args.runner)
        assert spec is not None
        assert spec.loader is not None
        runner = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(runner)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    with open(os.devnull, "w") as sink, tempfile.TemporaryDirectory(prefix="spawn-micro-") as tmp:
        work = Path(tmp)
        probe = args.probe
        if probe is None:
            probe = work / "probe"
            cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
            subprocess.run([cc, "-O2", "-o", str(probe), str(HERE / "probe.c")], check=True)
        log.configure("json", "info", stream=sink)
        env = dict(os.environ)
        extra = {"cwd": tmp} if args.cwd else {}

        async def scenario() -> tuple[list[float], tuple[float, float], int]:
            # Warm up: imports, caches, the first fork.
            await _one_at_a_time(_task(probe, work / "warm.txt", **extra), work / "warm.txt", 20, env)
            fds = _fd_count()
            one = work / "one.txt"
            single = await _one_at_a_time(_task(probe, one, **extra), one, args.runs, env, args.gap)
            burst = await _back_to_back(
                _task(probe, work / "burst.txt", **extra), work / "burst.txt", args.burst, env
            )
            return single, burst, _fd_count() - fds

        guard = orphans.start_guard(log.get_logger()) if args.guard else orphans.NO_GUARD
        if args.guard:
            _extra["guard"] = guard
        try:
            single, (burst_total, burst_returned), leaked = asyncio.run(scenario())
        finally:
            guard.close()
    ordered = sorted(single)
    print(
        f"one at a time, {len(single)} runs: p50 {statistics.median(ordered):.3f} ms, "
        f"p90 {_percentile(ordered, 0.9):.3f} ms, p99 {_percentile(ordered, 0.99):.3f} ms, "
        f"min {ordered[0]:.3f} ms"
    )
    print(
        f"back to back, {args.burst} runs: last start after {burst_total:.1f} ms "
        f"({burst_total / args.burst:.3f} ms per run); start_run loop returned after {burst_returned:.1f} ms"
    )
    print(f"descriptors left open after all runs: {leaked}")


if __name__ == "__main__":
    main()
