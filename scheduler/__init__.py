"""scheduler: a cron-like clock daemon that runs schedules.yaml's tasks as subprocesses, on time."""

__version__ = "0.1.0"
