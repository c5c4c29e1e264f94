"""The starter schedules file that `scheduler init` writes: two working tasks, each key explained.

Its tasks run on any fresh machine (echo, df); the store and ping lines are there, commented out, to be
turned on. tests/test_starter.py checks that it passes `scheduler check` and names the tasks it has.
"""

from __future__ import annotations

STARTER_TASKS = ("hello", "disk-report")
"""The tasks of STARTER_CONFIG, in order: the message after `init` suggests running the first."""

STARTER_CONFIG = """\
# The tasks the scheduler runs, and when. Written by `scheduler init`; validate it with `scheduler check`,
# see the coming fires with `scheduler list` and `scheduler next`, start the clock with `scheduler run`.

# The zone the schedules are read in: an IANA name such as Europe/London or America/New_York. Times
# written in it follow its daylight saving changes. A task may set its own `timezone:`.
timezone: UTC

# The run-history store: each run's times, status and output tail, for `scheduler history`, for the
# last runs in `scheduler list`, and for several clocks sharing the work. Without it nothing is kept.
# A relative SQLite path is relative to this file's folder; `scheduler run` creates the file. ${NAME} is
# read from the environment. --store or SCHEDULER_STORE_URL override this line.
# store: sqlite:///.scheduler/state.db
# store: ${DATABASE_URL}          # PostgreSQL: postgresql://user:password@host:5432/dbname

# Settings every task gets unless it sets its own (any task key but schedule and command).
defaults:
  timeout: 15m     # stop a run after this long: SIGTERM to its process group, SIGKILL 10s later
  overlap: skip    # a fire while the last run still goes: skip it (or allow: run both; replace: stop it)

tasks:
  # A task's name is its key: letters, digits, '-', '_' and '.'.
  hello:
    # When: a phrase (every 10 minutes, every hour, daily at 03:30) or cron, read in the zone above.
    schedule: every minute
    # What: a string runs through /bin/sh -c. The scheduler sets SCHEDULER_TASK, SCHEDULER_RUN_ID,
    # SCHEDULER_SCHEDULED_FOR (the fire instant, UTC) and SCHEDULER_TRIGGER for each run.
    command: echo "hello from $SCHEDULER_TASK, scheduled for $SCHEDULER_SCHEDULED_FOR"

  disk-report:
    # Cron: MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK, here 09:00 Monday to Friday.
    schedule: "0 9 * * MON-FRI"
    # A list runs the program directly, without a shell: no quoting to get wrong.
    command: [df, -h, /]
    timeout: 1m    # this task's own value wins over the default
    # A dead man's switch (Healthchecks.io, Cronitor): pinged as a run starts and ends (<url>/fail when
    # it failed), so that you hear when runs fail or stop coming.
    # ping_url: https://hc-ping.com/${HC_PING_KEY}/disk-report
    # retries: 2       # run a failed run again, up to twice
    # enabled: false   # keep the task here without scheduling it (`scheduler run-now` still runs it)
"""
"""A schedules file that `scheduler check` accepts, commented for a first-time user."""
