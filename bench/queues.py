"""Queues, side by side: a per-second job from our clock and from each backend's own scheduler, on one Redis.

For each pair below, a job is due every second; the figures are "scheduled instant -> job visible in Redis"
and "scheduled instant -> job started by a worker", p50 and p99, plus the instants missed (never pushed) and
pushed twice:

    ours (sidekiq)  vs  sidekiq-cron (the distribution's, polling at its fastest: every 1 s)
    ours (rq)       vs  RQ's own cron (`rq cron`, a 6-field "* * * * * *")
    ours (celery)   vs  Celery beat (an interval of 1 s, rounded to whole seconds), both on Redis

and "burst": BURST jobs due in the same second (our clock, Sidekiq's format), instant -> the last of them in
Redis, worst of the bursts.

Every time is read from outside the schedulers: Redis's MONITOR stamps each push with the server's clock
(this machine's), and each job appends its start time to a file. A push counts for the whole second before
it: each scheduler here pushes after its instant, and less than a second late, or not at all (counted as
missed). Celery beat's interval drifts instead of keeping to the second, so its figure flatters it.

usage: python bench/queues.py [--seconds N] [--only NAME] [--burst N]   (BENCH_KEEP=DIR keeps the logs)
Needs Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/12, a database this script FLUSHES), sidekiq
and sidekiq-cron (Debian: ruby-sidekiq, ruby-sidekiq-cron), and the [redis,celery] extras.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "queue_peers"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
WARMUP_TIMEOUT_S = 60.0
_NOTIFY_SLACK_S = 0.05


@dataclass
class Push:
    at: float
    key: str


@dataclass
class Pushes:
    """Every LPUSH/RPUSH in the bench's database, stamped as Redis announces it (keyspace notifications,
    which, unlike MONITOR, also tell of the pushes inside a MULTI, as Sidekiq's Ruby client sends them).
    The server's notify-keyspace-events setting is changed while the bench runs, and restored after."""

    url: str
    pushes: list[Push] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Pushes:
        # Kept: a client collected closes its pool, the subscription's connection with it.
        self._client = client = redis.Redis.from_url(self.url, socket_timeout=None, decode_responses=True)
        db = client.connection_pool.connection_kwargs.get("db", 0)
        self._saved = client.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
        client.config_set("notify-keyspace-events", "Kl")
        self._pubsub = client.pubsub()
        self._pubsub.psubscribe(f"__keyspace@{db}__:*")
        self._prefix = len(f"__keyspace@{db}__:")
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._pubsub.get_message(timeout=0.5)
                if (
                    message is not None
                    and message["type"] == "pmessage"
                    and message["data"] in ("lpush", "rpush")
                ):
                    self.pushes.append(Push(time.time(), message["channel"][self._prefix :]))
        except Exception as exc:
            if not self._stop.is_set():
                print(f"bench: lost the push notifications: {exc!r}", file=sys.stderr)

    def on(self, key: str, start: float, end: float) -> list[float]:
        return sorted(p.at for p in list(self.pushes) if p.key == key and start <= p.at < end)

    def stop(self) -> None:
        self._stop.set()
        try:
            self._client.config_set("notify-keyspace-events", self._saved)
        except Exception:
            pass


@dataclass
class System:
    name: str
    start: Callable[[str, Path, Path], list[subprocess.Popen[bytes]]]  # (queue, out file, folder) -> procs
    kind: str  # where its jobs go: sidekiq, rq or celery

    def key(self, queue: str) -> str:
        """The Redis list a job is pushed onto."""
        return {"sidekiq": f"queue:{queue}", "rq": f"rq:queue:{queue}", "celery": queue}[self.kind]


def _spawn(argv: list[str], env: dict[str, str], folder: Path, name: str) -> subprocess.Popen[bytes]:
    log = open(folder / f"{name}.log", "ab")  # noqa: SIM115 - the process keeps it
    return subprocess.Popen(
        argv,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=folder,
        start_new_session=True,
    )


def _clock(
    to: str, job: str, queue: str, folder: Path, tasks: int = 1, schedule: str = "every second"
) -> Any:
    lines = ["brokers:", f"  redis: {REDIS_URL}", "tasks:"]
    for i in range(tasks):
        lines += [
            f"  t{i}:",
            f'    schedule: "{schedule}"',
            f"    enqueue: {{to: {to}, job: {job}, queue: {queue}}}",
        ]
    (folder / "schedules.yaml").write_text("\n".join(lines) + "\n")
    argv = [sys.executable, "-m", "scheduler", "run", "-c", "schedules.yaml", "--log-level", "warning"]
    return _spawn(argv, {}, folder, "clock")


def _sidekiq(queue: str, out: Path, folder: Path, cron: bool) -> subprocess.Popen[bytes]:
    env = {"REDIS_URL": REDIS_URL, "BENCH_OUT": str(out), **({"CRON_QUEUE": queue} if cron else {})}
    argv = ["sidekiq", "-r", str(PEERS / "jobs.rb"), "-q", queue, "-c", "5", "-t", "1"]
    return _spawn(argv, env, folder, "sidekiq")


def _rq_worker(queue: str, out: Path, folder: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "rq.cli", "worker", "-u", REDIS_URL, "-w", "rq.worker.SimpleWorker", queue]
    return _spawn(argv, {"BENCH_OUT": str(out)}, folder, "rq")


def _celery(queue: str, out: Path, folder: Path, *command: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "celery", "-A", "bench.queue_peers.app", *command]
    env = {"BENCH_OUT": str(out), "BENCH_QUEUE": queue, "BENCH_REDIS_URL": REDIS_URL}
    return _spawn(argv, env, folder, command[0])


def _celery_worker(queue: str, out: Path, folder: Path) -> subprocess.Popen[bytes]:
    return _celery(
        queue, out, folder, "worker", "-Q", queue, "-P", "solo", "--without-gossip", "--without-mingle"
    )


SYSTEMS = [
    System(
        "ours (sidekiq)",
        lambda q, o, f: [_sidekiq(q, o, f, False), _clock("sidekiq", "BenchJob", q, f)],
        "sidekiq",
    ),
    System("sidekiq-cron 1 s poll", lambda q, o, f: [_sidekiq(q, o, f, True)], "sidekiq"),
    System(
        "ours (rq)",
        lambda q, o, f: [_rq_worker(q, o, f), _clock("rq", "bench.queue_peers.app.job", q, f)],
        "rq",
    ),
    System(
        "rq cron",
        lambda q, o, f: [
            _rq_worker(q, o, f),
            _spawn(
                [sys.executable, "-m", "rq.cli", "cron", "-u", REDIS_URL, "bench.queue_peers.app"],
                {"RQ_CRON": "1", "BENCH_QUEUE": q, "BENCH_OUT": str(o)},
                f,
                "rq-cron",
            ),
        ],
        "rq",
    ),
    System(
        "ours (celery)",
        lambda q, o, f: [_celery_worker(q, o, f), _clock("celery", "bench.job", q, f)],
        "celery",
    ),
    System(
        "celery beat",
        lambda q, o, f: [_celery_worker(q, o, f), _celery(q, o, f, "beat", "-s", str(f / "beat"))],
        "celery",
    ),
]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _started(out: Path) -> dict[str, float]:
    if not out.exists():
        return {}
    found: dict[str, float] = {}
    for line in out.read_text().splitlines():
        if line.endswith("}"):
            record = json.loads(line)
            found.setdefault(record["id"], record["started"])
    return found


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def measure(system: System, seconds: int, monitor: Pushes, folder: Path) -> dict[str, Any]:
    """Start the system, wait for its first job to run, then measure `seconds` whole seconds."""
    queue = "bench" + re.sub(r"\W", "", system.name)[:20]
    out = folder / f"{queue}.jsonl"
    out.unlink(missing_ok=True)
    procs = system.start(queue, out, folder)
    try:
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        while not _started(out):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                return {"system": system.name, "error": "no job ran: see " + str(folder)}
            time.sleep(0.2)
        window_start = math.ceil(time.time()) + 1
        window_end = window_start + seconds
        time.sleep(max(window_end - time.time() + 2.0, 0))  # and two seconds for the workers to catch up
    finally:
        _stop(procs)
    started = sorted(_started(out).values())
    pushes = monitor.on(system.key(queue), window_start, window_end)
    instants: dict[int, int] = {}
    visible: list[float] = []
    for at in pushes:
        instant = math.floor(at)
        instants[instant] = instants.get(instant, 0) + 1
        visible.append(at - instant)
    run: list[float] = []
    for at in started:  # a job's instant: the whole second before the last push that came before it
        # A push is stamped when its notification arrives, which may be after the worker took the job.
        before = [p for p in pushes if p <= at + _NOTIFY_SLACK_S]
        if before and at - before[-1] < 1.0:
            run.append(at - math.floor(before[-1]))
    return {
        "system": system.name,
        "jobs": len(visible),
        "visible_p50_ms": _ms(_quantile(visible, 0.5)),
        "visible_p99_ms": _ms(_quantile(visible, 0.99)),
        "started_p50_ms": _ms(_quantile(run, 0.5)),
        "started_p99_ms": _ms(_quantile(run, 0.99)),
        "missed": seconds - len(instants),
        "twice": sum(count - 1 for count in instants.values()),
    }


_BURST_JOBS = {"sidekiq": "BenchJob", "rq": "bench.queue_peers.app.job", "celery": "bench.job"}


def burst(to: str, count: int, bursts: int, monitor: Pushes, folder: Path) -> dict[str, Any]:
    """`count` tasks due every 5 s, our clock: instant -> the last of their jobs in Redis."""
    queue = f"benchburst{to}"
    proc = _clock(to, _BURST_JOBS[to], queue, folder, tasks=count, schedule="every 5 seconds")
    try:
        time.sleep(3)  # a thousand-task file loads in well under a second; then wait for whole bursts
        first = math.ceil(time.time() / 5) * 5 + 5
        last = first + 5 * (bursts - 1)
        time.sleep(max(last - time.time() + 2.0, 0))
    finally:
        _stop([proc])
    worst = 0.0
    complete = 0
    for instant in range(first, last + 1, 5):
        key = {"sidekiq": f"queue:{queue}", "rq": f"rq:queue:{queue}"}.get(to, queue)
        got = monitor.on(key, instant, instant + 5)
        if len(got) >= count:
            complete += 1
            worst = max(worst, sorted(got)[count - 1] - instant)
    return {
        "system": f"ours ({to}): {count} at once",
        "bursts": bursts,
        "complete": complete,
        "last_in_redis_ms": _ms(worst),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=30, help="seconds measured per system (default 30)")
    parser.add_argument("--only", help="run only the systems whose name contains this (e.g. rq, burst)")
    parser.add_argument(
        "--burst", type=int, default=1000, help="jobs due at once in the burst (default 1000)"
    )
    args = parser.parse_args()
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-queues-") as tmp:
        folder = Path(os.environ.get("BENCH_KEEP", tmp))
        monitor = Pushes(REDIS_URL).start()
        try:
            for system in SYSTEMS:
                if args.only and args.only not in system.name:
                    continue
                print(f"measuring {system.name} for {args.seconds} s...", file=sys.stderr, flush=True)
                results.append(measure(system, args.seconds, monitor, folder))
                client.flushdb()
            for to in ("sidekiq", "rq", "celery"):
                if not args.only or args.only in f"burst {to}":
                    print(f"measuring a burst of {args.burst} ({to})...", file=sys.stderr, flush=True)
                    results.append(burst(to, args.burst, 3, monitor, folder))
                    client.flushdb()
        finally:
            monitor.stop()
            client.flushdb()
    _print(results)
    target = HERE / "results" / "queues.json"
    target.write_text(
        json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}, indent=2)
        + "\n"
    )


def _print(results: list[dict[str, Any]]) -> None:
    columns = [
        "system",
        "jobs",
        "visible_p50_ms",
        "visible_p99_ms",
        "started_p50_ms",
        "started_p99_ms",
        "missed",
        "twice",
    ]
    print("  ".join(f"{c:>22}" if i else f"{c:<28}" for i, c in enumerate(columns)))
    for row in results:
        if "bursts" in row:
            print(
                f"{row['system']:<28}  last of each burst in Redis: worst {row['last_in_redis_ms']} ms "
                f"({row['complete']} of {row['bursts']} bursts complete)"
            )
            continue
        if "error" in row:
            print(f"{row['system']:<28}  {row['error']}")
            continue
        print("  ".join(f"{row.get(c)!s:>22}" if i else f"{row[c]:<28}" for i, c in enumerate(columns)))


if __name__ == "__main__":
    main()
