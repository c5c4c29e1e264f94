"""The dashboard's speed: server time of its pages and API on a big store, and a clock's latency while the
dashboard is hammered. Figures, not pass/fail; `make bench` runs it after bench/run.py.

1. Server time: 10,000 tasks and 1,000,000 runs (100 a task, a few failing, 100 tasks paused, one live
   clock), on SQLite and on PostgreSQL. Each request is handled by the dashboard's WebApp in this process,
   without a socket (the time a server spends, which is what the goals are about), `--repeat` times after
   one warm-up; the cold first request is shown too.
2. Latency under load: `scheduler run --web` with a per-second probe task (bench/probe.c notes the instant
   it runs) among 1,000 other tasks, on a store with their history. First the clock alone with its idle
   dashboard, then while 20 clients (a load process at nice 10, as clients on other machines would not
   share the clock's CPU) fetch the overview, a task page and the JSON API as fast as they can. Side by
   side: the tick's lateness both ways, and what the dashboard served.

usage: python bench/web.py [--quick] [--only server|load] [--store sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from scheduler.dashboard import Dashboard, Schedules, Stores  # noqa: E402
from scheduler.loader import load_config  # noqa: E402
from scheduler.store import ClockInfo, open_store  # noqa: E402
from scheduler.web import Request, WebApp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import postgres_schema  # noqa: E402

SCHEDULER = [sys.executable, "-m", "scheduler"]
SCHEDULES = ("every minute", "*/10 * * * *", "H * * * *", "0 9 * * MON-FRI", "daily at 03:30", "H H * * 0")
# The load test's other tasks must not fire while it measures (a burst of spawns would make the tick late
# whatever the dashboard does): once a year.
QUIET = ("0 0 1 1 *", "30 4 1 1 *")
FAILING_EVERY = 37  # one task in this many ended its last run failed
CLIENTS = 20


def config_text(tasks: int, extra: str = "", schedules: tuple[str, ...] = SCHEDULES) -> str:
    lines = ["timezone: Europe/London", "tasks:", extra] if extra else ["timezone: Europe/London", "tasks:"]
    for i in range(tasks):
        lines.append(f'  task-{i:05d}:\n    schedule: "{schedules[i % len(schedules)]}"\n    command: "true"')
    return "\n".join(lines) + "\n"


def rows(tasks: int, per_task: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    """Every run, oldest first: (task, scheduled_for, started_at, status, finished_at, exit_code,
    duration_s, output, run_id) with datetimes as ISO text."""
    rng = random.Random(7)
    n = 0
    for k in range(per_task, 0, -1):
        for i in range(tasks):
            at = now - timedelta(minutes=10 * k, seconds=i % 600)
            failed = (k == 1 and i % FAILING_EVERY == 0) or rng.random() < 0.02
            duration = round(rng.uniform(0.05, 30.0), 3)
            n += 1
            yield (
                f"task-{i:05d}",
                at,
                at,
                "failed" if failed else "succeeded",
                at + timedelta(seconds=duration),
                1 if failed else 0,
                duration,
                "error: connection refused\n" if failed else f"done {n}\n",
                f"{n:012x}",
            )


def fill(url: str, tasks: int, per_task: int) -> float:
    """Create the schema through the store, then bulk-load the runs behind its back; seconds taken."""
    started = time.monotonic()
    store = open_store(url)
    store.connect()
    now = datetime.now(UTC)
    columns = (
        "namespace, task, scheduled_for, trigger, run_id, claimed_by, started_at, status, finished_at, "
        "exit_code, duration_s, output"
    )
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:
            conn.executemany(
                f"INSERT INTO scheduler_runs ({columns}) "
                "VALUES ('', ?, ?, 'schedule', ?, 'bench:1:aaaaaa', ?, ?, ?, ?, ?, ?)",
                (
                    (
                        t,
                        s.isoformat(timespec="microseconds"),
                        rid,
                        st.isoformat(timespec="microseconds"),
                        status,
                        f.isoformat(timespec="microseconds"),
                        code,
                        d,
                        out,
                    )
                    for t, s, st, status, f, code, d, out, rid in rows(tasks, per_task, now)
                ),
            )
        conn.execute("ANALYZE")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            copy_columns = columns.replace("namespace, ", "")
            with (
                conn.cursor() as cursor,
                cursor.copy(f"COPY scheduler_runs ({copy_columns}) FROM STDIN") as copy,
            ):
                for t, s, st, status, f, code, d, out, rid in rows(tasks, per_task, now):
                    copy.write_row((t, s, "schedule", rid, "bench:1:aaaaaa", st, status, f, code, d, out))
            conn.execute("ANALYZE scheduler_runs")
    for i in range(0, tasks, tasks // 100 or 1):
        store.pause(f"task-{i:05d}", by="bench", reason="benchmark")
    store.heartbeat(ClockInfo("bench:1:aaaaaa", "bench", 1, "0.1.0", "digest"))
    store.close()
    return time.monotonic() - started


def postgres_url(suffix: str = "") -> contextlib.AbstractContextManager[str | None]:
    """A store URL on a schema of this benchmark's own, or None without PostgreSQL (bench/run.py's)."""
    return postgres_schema(f"scheduler_webbench_{suffix}" if suffix else "scheduler_webbench")


@contextmanager
def store_for_load(kind: str, work: Path) -> Iterator[str | None]:
    """An empty store of its own for the load test."""
    if kind == "sqlite":
        yield f"sqlite:///{work / 'load.db'}"
        return
    with postgres_url(suffix="load") as url:
        yield url


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan, "n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"p50": statistics.median(ordered), "p99": p99, "max": ordered[-1], "n": len(ordered)}


def server_times(url: str, config: Path, repeat: int) -> dict[str, dict[str, float]]:
    """Per request: the cold first time and the p50/p99 of `repeat` more, in ms, through WebApp.handle."""
    import structlog

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    stores = Stores(lambda: open_store(url))
    # Nothing shared between requests (shared_for_s=0): each reads the store, as the first of a second does.
    board = Dashboard(Schedules(str(config), load_config), stores, log=structlog.get_logger(), shared_for_s=0)
    app = WebApp(board, log=structlog.get_logger())
    middle = "task-05000"
    last = app.dashboard.stores.call(lambda s: s.runs(middle, limit=60)).before
    requests = {
        "overview /": "/",
        "overview, search": "/?q=task-09",
        "overview, failing": "/?failing=1",
        "overview, page 50": "/?page=50",
        "task page": f"/tasks/{middle}",
        "task page, failed": f"/tasks/{middle}?status=failed",
        "task page, older": f"/tasks/{middle}?before={last}",
        "runs (all tasks)": "/runs",
        "clocks": "/clocks",
        "GET /api/tasks": "/api/tasks",
        "GET /api/tasks/T/runs": f"/api/tasks/{middle}/runs",
        "GET /api/clocks": "/api/clocks",
    }
    results: dict[str, dict[str, float]] = {}
    headers = {"host": "127.0.0.1:8080", "accept": "text/html"}
    for name, path in requests.items():
        times = []
        for _ in range(repeat + 1):
            started = time.perf_counter()
            response = app.handle(Request("GET", path, headers))
            times.append((time.perf_counter() - started) * 1000)
            assert response.status == 200, (path, response.status, response.body[:300])
        results[name] = {"cold": times[0], **summary(times[1:]), "bytes": len(response.body)}
    stores.close()
    return results


# Latency under load


def probe(work: Path) -> Path:
    binary = work / "probe"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(HERE / "probe.c")], check=True)
    return binary


def hammer(port: int, paths: list[str], seconds: float, results: Any) -> None:
    """One load process: CLIENTS threads, each on a keep-alive connection, fetching paths in turn."""
    os.nice(10)
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        i = k
        while time.monotonic() < stop:
            path = paths[i % len(paths)]
            i += 1
            started = time.perf_counter()
            try:
                conn.request("GET", path, headers={"Accept": "text/html"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if ok:
                mine.append((time.perf_counter() - started) * 1000)
            else:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put({"latencies": latencies, "errors": errors[0], "seconds": seconds})


def wait_starts(path: Path, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        starts = sorted(int(x) for x in path.read_text().split()) if path.exists() else []
        if len(starts) >= count:
            return starts
        time.sleep(0.05)
    return sorted(int(x) for x in path.read_text().split()) if path.exists() else []


def under_load(url: str, work: Path, fires: int, others: int) -> dict[str, Any]:
    """The tick's lateness with the dashboard idle, then hammered; and what the dashboard served."""
    binary = probe(work)
    config = work / "load.yaml"
    results: dict[str, Any] = {}
    for phase in ("idle", "hammered"):
        out = work / f"starts-{phase}.txt"
        tick = f'  tick:\n    schedule: "* * * * * *"\n    command: ["{binary}", "{out}"]'
        config.write_text(config_text(others, tick, QUIET))
        port = free_port()
        clock = subprocess.Popen(
            [
                *SCHEDULER,
                "run",
                "-c",
                str(config),
                "--store",
                url,
                "--web",
                f"127.0.0.1:{port}",
                "--no-watch",
                "--log-format",
                "json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            cwd=work,
        )
        try:
            wait_starts(out, 3, 60)  # started, and a couple of fires behind it
            wait_http(port)
            load = None
            queue: Any = multiprocessing.Queue()
            if phase == "hammered":
                paths = ["/", "/api/tasks", "/tasks/task-00010", "/?failing=1", "/api/tasks/task-00500/runs"]
                load = multiprocessing.Process(target=hammer, args=(port, paths, fires + 3.0, queue))
                load.start()
                time.sleep(2)
            first = len(wait_starts(out, 0, 0))
            starts = wait_starts(out, first + fires, fires + 15)[first : first + fires]
            late = [(ns % 1_000_000_000) / 1e6 for ns in starts]
            results[phase] = {"tick": summary(late), "late_ms": sorted(round(x, 2) for x in late)}
            if load is not None:
                served = queue.get(timeout=fires + 60)
                load.join(30)
                results[phase]["dashboard"] = {
                    **summary(served["latencies"]),
                    "rps": len(served["latencies"]) / served["seconds"],
                    "errors": served["errors"],
                }
        finally:
            clock.send_signal(signal.SIGTERM)
            try:
                clock.wait(30)
            except subprocess.TimeoutExpired:
                clock.kill()
    return results


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no dashboard on port {port}")


# Output


def fmt(value: float, unit: str = "ms") -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, fewer fires")
    parser.add_argument("--only", choices=["server", "load"])
    parser.add_argument("--store", choices=["sqlite", "postgresql"], action="append")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs-per-task", type=int, default=100)
    args = parser.parse_args()
    kinds = args.store or ["sqlite", "postgresql"]
    repeat = 5 if args.quick else 20
    fires = 20 if args.quick else 60
    work = Path(tempfile.mkdtemp(prefix="scheduler-webbench-"))
    report: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "tasks": args.tasks,
        "runs": args.tasks * args.runs_per_task,
    }
    try:
        with postgres_url() as pg:
            urls = {"sqlite": f"sqlite:///{work / 'big.db'}", "postgresql": pg}
            if args.only in (None, "server"):
                config = work / "big.yaml"
                config.write_text(config_text(args.tasks))
                print(
                    f"Server time, {args.tasks:,} tasks and {args.tasks * args.runs_per_task:,} runs "
                    f"(ms; p50 and p99 of {repeat}, after a cold first request):",
                    flush=True,
                )
                for kind in kinds:
                    if urls[kind] is None:
                        continue
                    loaded = fill(str(urls[kind]), args.tasks, args.runs_per_task)
                    print(f"  {kind}: filled in {loaded:.0f} s", flush=True)
                    report[f"server_{kind}"] = server_times(str(urls[kind]), config, repeat)
                names = list(next(v for k, v in report.items() if k.startswith("server_")))
                header = f"  {'request':<24}" + "".join(
                    f"{k + ' p50':>16}{'p99':>10}{'cold':>10}" for k in kinds
                )
                print(header)
                for name in names:
                    line = f"  {name:<24}"
                    for kind in kinds:
                        figures = report.get(f"server_{kind}", {}).get(name)
                        if figures is None:
                            line += f"{'n/a':>16}{'':>10}{'':>10}"
                        else:
                            p50, p99, cold = (fmt(figures[k]) for k in ("p50", "p99", "cold"))
                            line += f"{p50:>16}{p99:>10}{cold:>10}"
                    print(line, flush=True)
            if args.only in (None, "load"):
                print(
                    f"\nA per-second task's lateness (ms after its second), {fires} fires, 1,000 other "
                    f"tasks, the dashboard idle vs {CLIENTS} clients hammering it:",
                    flush=True,
                )
                for kind in kinds:
                    with store_for_load(kind, work) as url:
                        if url is None:
                            continue
                        fill(url, 1000, 50)
                        figures = under_load(url, work, fires, 1000)
                    report[f"load_{kind}"] = figures
                    idle, busy = figures["idle"]["tick"], figures["hammered"]["tick"]
                    served = figures["hammered"]["dashboard"]
                    print(
                        f"  {kind:<10} tick p50 {fmt(idle['p50'])} -> {fmt(busy['p50'])}, "
                        f"p99 {fmt(idle['p99'])} -> {fmt(busy['p99'])}, max {fmt(idle['max'])} -> "
                        f"{fmt(busy['max'])}; dashboard served {served['rps']:.0f} req/s, p50 "
                        f"{fmt(served['p50'])}, p99 {fmt(served['p99'])}, {served['errors']} errors",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = HERE / "results" / "web-latest.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
