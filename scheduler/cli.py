"""The command line: arguments, output formatting and exit codes. The only module that calls sys.exit."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click

from scheduler import __version__, clock, log, runner
from scheduler.config import DEFAULT_CONFIG_PATH, Config, TaskSpec, load_config, parse_duration, suggest
from scheduler.errors import ConfigError, SchedulerError, UnknownTaskError
from scheduler.loader import load_config_isolated
from scheduler.watch import FileWatcher

EXIT_USAGE = 2  # bad config, unknown task, bad arguments (click uses 2 as well)
_FD_LIMIT = 65_536
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug; the message asks for a report instead of showing a traceback

F = TypeVar("F", bound=Callable[..., Any])


def _config_option(func: F) -> F:
    return click.option(
        "-c",
        "--config",
        "config_path",
        default=DEFAULT_CONFIG_PATH,
        envvar="SCHEDULER_CONFIG",
        show_default=True,
        metavar="PATH",
        help="The schedules file (also SCHEDULER_CONFIG).",
    )(func)


def _log_options(func: F) -> F:
    func = click.option(
        "--log-level",
        type=click.Choice(log.LOG_LEVELS, case_sensitive=False),
        default="info",
        envvar="SCHEDULER_LOG_LEVEL",
        show_default=True,
        help="The lowest level logged (also SCHEDULER_LOG_LEVEL).",
    )(func)
    return click.option(
        "--log-format",
        type=click.Choice(log.LOG_FORMATS, case_sensitive=False),
        default="auto",
        envvar="SCHEDULER_LOG_FORMAT",
        show_default=True,
        help="auto is console on a terminal, logfmt otherwise (also SCHEDULER_LOG_FORMAT).",
    )(func)


def _load(config_path: str) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        _fail(exc)


def _fail(exc: SchedulerError) -> NoReturn:
    for line in str(exc).splitlines():
        click.echo(line, err=True)
    sys.exit(EXIT_USAGE)


def _task(config: Config, name: str) -> TaskSpec:
    if name in config.tasks:
        return config.tasks[name]
    _fail(UnknownTaskError(name, sorted(config.tasks), suggest(name, config.tasks)))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="scheduler", message="%(prog)s %(version)s")
def cli() -> None:
    """A cron-like clock: runs the tasks of schedules.yaml as subprocesses, on time."""


@cli.command()
@_config_option
@_log_options
@click.option(
    "--shutdown-grace",
    default="25s",
    show_default=True,
    metavar="DURATION",
    help="The longest a shutdown waits for running tasks before SIGKILL; each task's kill_grace "
    "may end its wait sooner (fits Heroku's 30 s).",
)
@click.option(
    "--no-watch", is_flag=True, help="Do not reload when the config file changes (SIGHUP still does)."
)
def run(
    config_path: str, log_format: log.LogFormat, log_level: str, shutdown_grace: str, no_watch: bool
) -> None:
    """Run the clock: fire every task on its schedule until SIGTERM or SIGINT."""
    try:
        grace_s = parse_duration(shutdown_grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shutdown-grace") from None
    config = _load(config_path)
    log.configure(log_format, log_level)
    watcher = None if no_watch else FileWatcher(config_path)
    _raise_fd_limit()

    async def main() -> None:
        the_clock = clock.Clock(
            config,
            start_run=runner.start_run,
            log=log.get_logger(),
            env=dict(os.environ),  # a snapshot: os.environ decodes every variable on each read
            reload_config=lambda: load_config_isolated(config_path),
            watcher=watcher,
            on_tick=runner.reap_orphans if os.getpid() == 1 else None,
            shutdown_grace_s=grace_s,
        )
        the_clock.install_signal_handlers()
        await the_clock.run()

    asyncio.run(main())


def _raise_fd_limit() -> None:
    """Each running task holds three descriptors (two pipes and a pidfd): lift the common soft limit of
    1,024 toward the hard limit, so that a thousand concurrent runs fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, _FD_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass  # keep the limit we have; runs past it fail with a clear error of their own


@cli.command("run-now")
@click.argument("task")
@_config_option
@_log_options
def run_now(task: str, config_path: str, log_format: log.LogFormat, log_level: str) -> None:
    """Run TASK once, now, in the foreground; exit with its status.

    The task's output passes straight through; the scheduler's own events go to stderr. SIGINT and SIGTERM
    are passed on to the task. Exit status: the task's; 124 on timeout; 128+N when killed by signal N.
    """
    spec = _task(_load(config_path), task)
    log.configure(log_format, log_level, stream=sys.stderr)
    sys.exit(asyncio.run(_run_now(spec)))


async def _run_now(spec: TaskSpec) -> int:
    loop = asyncio.get_running_loop()

    def forward(signum: int) -> None:
        started.signal_group(signum)

    # Installed before the spawn, so that no signal is lost; asyncio calls handlers from the loop, which
    # runs only once start_run (synchronous) has returned and `started` is bound.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        loop.add_signal_handler(sig, forward, sig)
    started = runner.start_run(
        spec,
        run_id=uuid.uuid4().hex[:12],
        trigger="manual",
        scheduled_for=datetime.now(UTC),
        log=log.get_logger(),
        env=os.environ,
        capture_output=False,
    )
    result = await started.wait()
    return result.shell_exit_status


@cli.command("next")
@click.argument("tasks", nargs=-1)
@_config_option
@click.option(
    "-n", "count", default=5, show_default=True, type=click.IntRange(1, 10_000), help="Fires per task."
)
@click.option(
    "--from", "start", metavar="ISO8601", help="Show fires strictly after this instant (default: now)."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def next_(tasks: Sequence[str], config_path: str, count: int, start: str | None, as_json: bool) -> None:
    """Show the next fire instants of each task (or of TASKS), in its zone and in UTC."""
    config = _load(config_path)
    after = _parse_instant(start) if start else datetime.now(UTC)
    specs = [_task(config, name) for name in tasks] if tasks else list(config.tasks.values())
    if as_json:
        out = [
            {
                "task": spec.name,
                "schedule": spec.schedule.text,
                "timezone": spec.timezone,
                "next": [f.at.astimezone(spec.zone).isoformat() for f in spec.schedule.fires(after, count)],
            }
            for spec in specs
        ]
        click.echo(json.dumps(out, indent=2))
        return
    for i, spec in enumerate(specs):
        if i:
            click.echo()
        state = "" if spec.enabled else "  [disabled]"
        click.echo(f"{spec.name}: {spec.schedule.text} ({spec.schedule.describe()}), {spec.timezone}{state}")
        for fire in spec.schedule.fires(after, count):
            local = fire.at.astimezone(spec.zone)
            line = f"  {local:%a %Y-%m-%d %H:%M:%S %Z}  {fire.at:%Y-%m-%dT%H:%M:%SZ}"
            click.echo(line + (f"  DST: {fire.note}" if fire.note else ""))


def _parse_instant(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"'{text}' is not an ISO 8601 instant (e.g. 2026-03-08T06:00:00Z)", param_hint="--from"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@cli.command("list")
@_config_option
def list_(config_path: str) -> None:
    """Show a table of the tasks: schedule in plain words, zone, next fire, overlap and timeout."""
    config = _load(config_path)
    now = datetime.now(UTC)
    rows = [("TASK", "SCHEDULE", "MEANING", "ZONE", "NEXT FIRE", "OVERLAP", "TIMEOUT")]
    for spec in config.tasks.values():
        if spec.enabled:
            nxt = spec.schedule.next_fire(now).at.astimezone(spec.zone)
            next_text = f"{nxt:%Y-%m-%d %H:%M:%S %Z}"
        else:
            next_text = "disabled"
        timeout = format_duration(spec.timeout_s) if spec.timeout_s is not None else "none"
        rows.append(
            (
                spec.name,
                spec.schedule.text,
                spec.schedule.describe(),
                spec.timezone,
                next_text,
                spec.overlap,
                timeout,
            )
        )
    for line in _table(rows):
        click.echo(line)


@cli.command()
@_config_option
def check(config_path: str) -> None:
    """Validate the config file: exit 0 with a summary, or 2 with every error."""
    config = _load(config_path)
    enabled = sum(1 for spec in config.tasks.values() if spec.enabled)
    total = len(config.tasks)
    click.echo(f"{config.path}: OK, {total} task{'s' if total != 1 else ''} ({enabled} enabled)")


def _table(rows: Iterable[Sequence[str]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def format_duration(seconds: float) -> str:
    """90 -> '1m30s', 5400 -> '1h30m', 0.5 -> '0.5s'."""
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:g}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


def main() -> None:
    """Entry point: run the CLI; errors become messages and exit codes, never tracebacks."""
    try:
        cli(prog_name="scheduler")
    except SchedulerError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: say so briefly, keep the traceback for those who ask
        if os.environ.get("SCHEDULER_DEBUG"):
            traceback.print_exc()
        click.echo(f"scheduler: internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("Set SCHEDULER_DEBUG=1 to see the traceback, and please report it.", err=True)
        sys.exit(EXIT_INTERNAL)
