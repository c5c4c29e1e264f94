"""What a run is called and what it leaves behind: its id, its instants as text, the tail of its output.

One place for the sizes and the cut, which the runner (what a run keeps), the store (its output column) and
the pings (a final ping's body) used to define each in its own way.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from typing import Literal

RunKind = Literal["task", "hook"]
"""What a run is: a task's run, or an on_success / on_failure hook that follows one. It names the run's
events (task.started, hook.started, ...): a hook's are never a task's, so that an alert on
`event=task.finished status=failed` never fires for a hook."""

RUN_TAIL_BYTES = 10 * 1024
"""A run keeps at least the last this many bytes of the lines it logged (Run.output_tail): the most that any
of the copies below takes."""
PING_BODY_BYTES = 10 * 1024
"""A final ping's body: the end of the output."""
STORE_TAIL_BYTES = 4096
"""The run history's output column."""


# Run ids come from a generator seeded from the OS (anew in a forked child), not from uuid4: uuid4 reads the
# OS's random source on every call, a system call per run that a burst of runs pays on the way to its spawns.
# 48 random bits each, as 12 hex digits of uuid4 gave.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_run_id() -> str:
    """A run's id: 12 hex digits, random."""
    return f"{_ids.getrandbits(48):012x}"


def iso_utc(at: datetime) -> str:
    """An aware instant as ISO 8601 in UTC, as every event and the store's JSON give it."""
    return at.astimezone(UTC).isoformat()


def utf8_tail(text: str, limit: int) -> bytes:
    """The last `limit` bytes of `text` as UTF-8, starting where a character starts (a character the cut
    would split is left out; undecodable characters are replaced). Only the last `limit` characters are
    encoded: no character is shorter than a byte."""
    data = text[-limit:].encode("utf-8", errors="replace")[-limit:]
    start = 0
    while start < len(data) and data[start] & 0xC0 == 0x80:  # a continuation byte: mid-character
        start += 1
    return data[start:]
