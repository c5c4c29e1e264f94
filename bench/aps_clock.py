"""APScheduler 3 as its documentation shows a clock process: a BlockingScheduler whose cron jobs each
spawn the probe. Prints "ready" once the scheduler has started, then blocks until SIGTERM.

usage: aps_clock.py PROBE OUTFILE per-second
       aps_clock.py PROBE OUTFILE burst EPOCH COUNT
       aps_clock.py PROBE OUTFILE steady COUNT STEP_S
       aps_clock.py PROBE OUTFILE idle COUNT SEED
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from datetime import UTC, datetime

from apscheduler.events import EVENT_SCHEDULER_STARTED
from apscheduler.schedulers.blocking import BlockingScheduler


def main() -> None:
    probe, outfile, mode, *rest = sys.argv[1:]

    def spawn_probe() -> None:
        subprocess.run([probe, outfile], check=False)

    scheduler = BlockingScheduler(timezone="UTC")
    if mode == "per-second":
        scheduler.add_job(spawn_probe, "cron", second="*")
    elif mode == "burst":
        at = datetime.fromtimestamp(int(rest[0]), UTC)
        for _ in range(int(rest[1])):
            scheduler.add_job(
                spawn_probe,
                "cron",
                second=at.second,
                minute=at.minute,
                hour=at.hour,
                day=at.day,
                month=at.month,
            )
    elif mode == "steady":
        for _ in range(int(rest[0])):
            scheduler.add_job(spawn_probe, "cron", second=f"*/{int(rest[1])}")
    elif mode == "idle":
        rng = random.Random(int(rest[1]))
        month = datetime.now(UTC).month
        for _ in range(int(rest[0])):
            other = rng.choice([m for m in range(1, 13) if m != month])
            scheduler.add_job(
                spawn_probe,
                "cron",
                minute=rng.randrange(60),
                hour=rng.randrange(24),
                day=rng.randint(1, 28),
                month=other,
            )
    else:
        raise SystemExit(f"unknown mode {mode}")

    def ready(_event: object) -> None:
        print("ready", flush=True)

    scheduler.add_listener(ready, EVENT_SCHEDULER_STARTED)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.shutdown(wait=False))
    scheduler.start()


if __name__ == "__main__":
    main()
