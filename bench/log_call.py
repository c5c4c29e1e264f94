"""Micro-benchmark of one log call, as the clock makes ~200 of them per burst of 100 tasks.

Logs `task.output` and `task.finished` events to /dev/null in each format, in bursts, and prints the CPU
time per call in microseconds: the best and the median burst on the caller's thread (what the loop pays),
and the median for the whole process (the writer thread included). Before the bounded buffer, the caller
wrote each line itself; after it, a daemon thread does.

usage: python bench/log_call.py [--bursts 200] [--burst 200] [--log F]

--log measures another copy of scheduler/log.py, say the previous one:
  git show HEAD~1:scheduler/log.py > /tmp/old_log.py && python bench/log_call.py --log /tmp/old_log.py
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from scheduler import log  # noqa: E402


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("old_log", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _calls(logger: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    def output() -> None:
        logger.info("task.output", stream="stdout", line="tick from heartbeat, scheduled for 20:26:50")

    def finished() -> None:
        logger.info("task.finished", status="succeeded", exit_code=0, signal=None, duration_s=0.006)

    return output, finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--bursts", type=int, default=200)
    parser.add_argument("--burst", type=int, default=200, help="calls in a row, as in a burst of fires")
    parser.add_argument("--log", help="another copy of scheduler/log.py to measure")
    args = parser.parse_args()
    module = _load(args.log) if args.log else log
    flush = getattr(module, "flush", lambda _timeout_s: True)
    devnull = open(os.devnull, "w")  # noqa: SIM115 (kept open for the whole run)
    print(f"CPU µs per call, {args.bursts} bursts of {args.burst}: best, median (caller), median (process)")
    print(f"{'format':8} {'task.output':>18} {'task.finished':>18}")
    for fmt in ("json", "logfmt", "console"):
        module.configure(fmt, "info", stream=devnull)
        cells = []
        for call in _calls(module.get_logger(task="send-digest", run_id="2749db31960b")):
            caller, total = [], []
            for _ in range(args.bursts):
                thread0, process0 = time.thread_time(), time.process_time()
                for _ in range(args.burst):
                    call()
                caller.append((time.thread_time() - thread0) / args.burst * 1e6)
                flush(5.0)  # between bursts, as the loop sleeps until the next fire
                total.append((time.process_time() - process0) / args.burst * 1e6)
            cells.append(f"{min(caller):.1f} {statistics.median(caller):.1f} {statistics.median(total):.1f}")
        print(f"{fmt:8} {cells[0]:>18} {cells[1]:>18}")


if __name__ == "__main__":
    main()
