"""The command line: arguments, output formatting and exit codes. The only module that calls sys.exit."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from scheduler import __version__, clock, enqueue, log, orphans, runner
from scheduler.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    TaskSpec,
    expand_env,
    format_duration,
    parse_duration,
    suggest,
)
from scheduler.errors import ConfigError, SchedulerError, StoreError, UnknownTaskError
from scheduler.loader import load_config, load_isolated
from scheduler.observe import NO_METRICS
from scheduler.runs import new_run_id
from scheduler.watch import FileWatcher

if TYPE_CHECKING:
    from scheduler.metrics import MetricsServer
    from scheduler.store import RunRecord, Store

EXIT_USAGE = 2  # bad config, unknown task, bad arguments (click uses 2 as well)
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the store named cannot be reached
_PING_FLUSH_S = 1.0  # at exit, pings still queued get this long
_LOG_FLUSH_S = 0.5  # at exit, log lines still queued get this long (a stalled reader never holds up exit)
_FD_LIMIT = 65_536
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug; the message asks for a report instead of showing a traceback
STORE_CALL_TIMEOUT_S = 5.0  # the longest run-now, list and history wait on the store, per call

F = TypeVar("F", bound=Callable[..., Any])
_T = TypeVar("_T")


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


def _store_option(func: F) -> F:
    return click.option(
        "--store",
        "store_url",
        envvar="SCHEDULER_STORE_URL",
        metavar="URL",
        help="The run-history store, overriding the file's `store:` (also SCHEDULER_STORE_URL): "
        "sqlite:///PATH or postgresql://...",
    )(func)


_SQLITE_RELATIVE = "sqlite:///"


def _open_store(config: Config, store_url: str | None) -> Store | None:
    """The store named by --store (or SCHEDULER_STORE_URL), else by the file's `store:`, with ${VAR}s
    filled in from the environment; None when neither names one."""
    if store_url:
        where = "--store"
        url = store_url
    elif config.store:
        where = f"{config.path}:{config.store_line}: store" if config.store_line else f"{config.path}: store"
        url = config.store
    else:
        return None
    url = expand_env(url, os.environ, where)
    if not store_url and url.startswith(_SQLITE_RELATIVE) and not url.startswith(_SQLITE_RELATIVE + "/"):
        # A relative SQLite path in the file is relative to the file's folder, as a task's cwd is.
        folder = os.path.dirname(os.path.abspath(config.path))
        url = _SQLITE_RELATIVE + os.path.join(folder, url[len(_SQLITE_RELATIVE) :])
    from scheduler.store import open_store  # sqlite3, maybe psycopg: only with a store

    return open_store(url, keep_runs=config.keep_runs, namespace=config.namespace)


def _bounded(store: Store, call: Callable[[Store], _T], timeout_s: float = STORE_CALL_TIMEOUT_S) -> _T:
    """call(store), given at most timeout_s: a server that stalls (stopped, not gone) answers nothing, not
    even an error, and TCP keepalives do not notice. The call runs in a daemon thread, which a stuck call
    leaves behind without holding up the exit; after a StoreError for a timeout, the store must not be
    used again."""
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(call(store))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="store", daemon=True).start()
    try:
        return future.result(timeout_s)
    except concurrent.futures.TimeoutError:
        raise StoreError(f"run-history store {store.display_url}: no answer within {timeout_s:g} s") from None


def _close(store: Store) -> None:
    """Close the store, given at most the usual bound (closing may write to a stalled server)."""
    try:
        _bounded(store, lambda s: s.close())
    except StoreError:
        pass


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
@_store_option
@click.option(
    "--metrics-addr",
    envvar="SCHEDULER_METRICS_ADDR",
    metavar="[HOST:]PORT",
    help="Serve Prometheus /metrics and /healthz there (also SCHEDULER_METRICS_ADDR); a bare port binds "
    "127.0.0.1. Off by default.",
)
def run(
    config_path: str,
    log_format: log.LogFormat,
    log_level: str,
    shutdown_grace: str,
    no_watch: bool,
    store_url: str | None,
    metrics_addr: str | None,
) -> None:
    """Run the clock: fire every task on its schedule until SIGTERM or SIGINT.

    With a store, every run is recorded and each scheduled instant is claimed before it runs, so that
    several clocks sharing a PostgreSQL store run it once.
    """
    try:
        grace_s = parse_duration(shutdown_grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shutdown-grace") from None
    config = _load(config_path)
    enqueue.check(config, os.environ)
    metrics_server = _serve_metrics(metrics_addr) if metrics_addr else None
    store = _open_store(config, store_url)
    if store is not None:
        store.lock_single_clock()  # SQLite: refuse a second clock on the same file
    log.configure(log_format, log_level)
    logger = log.get_logger()
    if metrics_server is not None:
        host, port = metrics_server.address
        logger.info("metrics.serving", url=f"http://{host}:{port}/metrics")
    if store is None:
        needing = sorted(n for n, t in config.tasks.items() if t.catch_up or t.require_store)
        if needing:
            logger.warning("store.missing", tasks=needing, detail="catch_up and require_store need a store")
    watcher = None if no_watch else FileWatcher(config_path)
    _raise_fd_limit()

    async def main() -> None:
        recorder = None
        if store is not None:
            from scheduler.recorder import Recorder

            recorder = Recorder(
                store,
                log=logger,
                config_digest=config.digest,
                on_stop_requested=lambda run_ids: the_clock.stop_replaced(run_ids),
            )
            logger.info("store.opened", kind=store.kind, claimed_by=recorder.claimed_by)

        the_clock = clock.ClockLoop(
            config,
            start_run=enqueuer,
            log=logger,
            env=env,
            load=lambda: load_isolated(config_path),
            watcher=watcher,
            on_tick=runner.reap_orphans if os.getpid() == 1 else None,
            shutdown_grace_s=grace_s,
            recorder=recorder,
            metrics=metrics_server.metrics if metrics_server is not None else NO_METRICS,
            pinger=pinger,
        )
        the_clock.install_signal_handlers()
        await the_clock.run()
        _after_stop(asyncio.get_running_loop())

    from scheduler.pings import Pinger  # urllib and ssl: only for the clock

    pinger = Pinger(log=logger, env=dict(os.environ))
    # As PID 1, the clock cannot be SIGKILLed from inside its container, and its death kills everything.
    guard = orphans.start_guard(logger) if os.getpid() != 1 else orphans.NO_GUARD
    env = dict(os.environ)  # a snapshot: os.environ decodes every variable on each read
    # Tasks with `enqueue` send a job to their broker; the others run their command.
    enqueuer = enqueue.Enqueuer(
        commands=functools.partial(runner.start_run, guard=guard),
        log=logger,
        env=env,
        config_path=config.path,
        namespace=config.namespace,
    )
    try:
        asyncio.run(main())
    finally:
        enqueuer.close()
        guard.close()
        pinger.close(timeout_s=_PING_FLUSH_S)
        if metrics_server is not None:
            metrics_server.close()
    # Only now: nothing but the final flush of the log (main's, at most _LOG_FLUSH_S) is left before exit.
    logger.info("scheduler.stopped")


def _after_stop(loop: asyncio.AbstractEventLoop) -> None:
    """Once the clock has stopped, a repeated SIGTERM or SIGHUP (Heroku and `timeout` send SIGTERM twice) is
    ignored. Left to asyncio, one would either find the loop's self-pipe closed (asyncio closes it before it
    lets go of the signals: "Exception ignored ... signal wakeup fd" on stderr) or, once the loop is gone,
    kill the process in its final flush, before `scheduler.stopped`."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _serve_metrics(addr: str) -> MetricsServer:
    from scheduler.metrics import Metrics, MetricsServer, parse_addr  # prometheus-client: only when asked

    try:
        host, port = parse_addr(addr)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metrics-addr") from None
    try:
        return MetricsServer(Metrics(), host, port)
    except OSError as exc:
        raise click.UsageError(f"--metrics-addr {addr}: cannot listen: {exc.strerror or exc}") from None


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
@_store_option
def run_now(
    task: str, config_path: str, log_format: log.LogFormat, log_level: str, store_url: str | None
) -> None:
    """Run TASK once, now, in the foreground; exit with its status.

    The task's output passes straight through; the scheduler's own events go to stderr. SIGINT and SIGTERM
    are passed on to the task. Exit status: the task's; 124 on timeout; 128+N when killed by signal N.
    With a store, the run is recorded with trigger manual, best effort: a store that cannot be reached, or
    does not answer within 5 s, is logged as store.unavailable and does not stop the run or change its
    exit status.
    """
    config = _load(config_path)
    spec = _task(config, task)
    if spec.enqueue is not None:
        enqueue.check(config, os.environ)
    store = _open_store(config, store_url)
    log.configure(log_format, log_level, stream=sys.stderr)
    logger = log.get_logger()
    run_id = new_run_id()
    from scheduler.recorder import clock_identity
    from scheduler.store import RunRecord

    now = datetime.now(UTC)
    record = RunRecord(
        task=spec.name,
        scheduled_for=now,
        trigger="manual",
        run_id=run_id,
        claimed_by=clock_identity(),
        started_at=now,
    )
    if store is not None:
        store = _store_call(store, logger, lambda s: s.record(record))
    output: str | None = None
    if spec.enqueue is not None:
        result, output = asyncio.run(_enqueue_now(config, spec, run_id, record.scheduled_for))
    else:
        result = asyncio.run(_run_now(spec, run_id, record.scheduled_for))
    if store is not None:
        store = _store_call(
            store,
            logger,
            lambda s: s.finish(
                run_id,
                finished_at=datetime.now(UTC),
                status=result.status,
                exit_code=result.exit_code,
                signal=result.signal,
                duration_s=result.duration_s,
                output=(output or result.error) if spec.store_output else None,
            ),
        )
        if store is not None:
            _close(store)
    sys.exit(result.shell_exit_status)


def _store_call(store: Store, logger: Any, call: Callable[[Store], object]) -> Store | None:
    """Make one write for run-now, within the bound; a store that fails or does not answer is logged and
    let go of (None)."""
    try:
        _bounded(store, call)
    except StoreError as exc:
        logger.warning("store.unavailable", store=store.display_url, error=str(exc))
        return None
    return store


async def _enqueue_now(
    config: Config, spec: TaskSpec, run_id: str, scheduled_for: datetime
) -> tuple[runner.RunResult, str]:
    """Enqueue the task's job now, with trigger manual; print its id on stdout once the broker has it."""
    enqueuer = enqueue.Enqueuer(
        commands=runner.start_run,
        log=log.get_logger(),
        env=os.environ,
        config_path=config.path,
        namespace=config.namespace,
    )
    try:
        started = enqueuer.start(
            spec, run_id=run_id, trigger="manual", scheduled_for=scheduled_for, log=log.get_logger()
        )
        result = await started.wait()
    finally:
        enqueuer.close()
    if result.ok:
        click.echo(started.job_id)
    return result, started.output_tail


async def _run_now(spec: TaskSpec, run_id: str, scheduled_for: datetime) -> runner.RunResult:
    loop = asyncio.get_running_loop()

    def forward(signum: int) -> None:
        started.signal_group(signum)

    # Installed before the spawn, so that no signal is lost; asyncio calls handlers from the loop, which
    # runs only once start_run (synchronous) has returned and `started` is bound.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        loop.add_signal_handler(sig, forward, sig)
    guard = orphans.start_guard(log.get_logger()) if os.getpid() != 1 else orphans.NO_GUARD
    try:
        started = runner.start_run(
            spec,
            run_id=run_id,
            trigger="manual",
            scheduled_for=scheduled_for,
            log=log.get_logger(),
            env=os.environ,
            capture_output=False,
            guard=guard,
        )
        return await started.wait()
    finally:
        guard.close()


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
                **({"enqueue": spec.enqueue.describe()} if spec.enqueue is not None else {}),
            }
            for spec in specs
        ]
        click.echo(json.dumps(out, indent=2))
        return
    for i, spec in enumerate(specs):
        if i:
            click.echo()
        state = "" if spec.enabled else "  [disabled]"
        target = f", enqueues {spec.enqueue.describe()}" if spec.enqueue is not None else ""
        click.echo(
            f"{spec.name}: {spec.schedule.text} ({spec.schedule.describe()}), {spec.timezone}{target}{state}"
        )
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
@_store_option
def list_(config_path: str, store_url: str | None) -> None:
    """Show a table of the tasks: schedule in plain words, zone, next fire, overlap and timeout; with a
    store, also each task's last run and its status."""
    config = _load(config_path)
    now = datetime.now(UTC)
    last = _last_runs(config, store_url)
    rows: list[tuple[str, ...]] = [("TASK", "SCHEDULE", "MEANING", "ZONE", "NEXT FIRE", "OVERLAP", "TIMEOUT")]
    # What each task starts, only when some enqueue a job: a file of commands keeps its table as it was.
    targets = any(spec.enqueue is not None for spec in config.tasks.values())
    if targets:
        rows[0] += ("RUNS",)
    if last is not None:
        rows[0] += ("LAST RUN", "LAST STATUS")
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
        if targets:
            rows[-1] += (spec.enqueue.describe() if spec.enqueue is not None else "command",)
        if last is not None:
            record = last.get(spec.name)
            rows[-1] += (_local_time(record.started_at), record.status) if record else ("never", "-")
    for line in _table(rows):
        click.echo(line)


def _last_runs(config: Config, store_url: str | None) -> dict[str, RunRecord] | None:
    """Each task's newest run, or None without a store; an unreachable store is a warning, not a failure."""
    store = _open_store(config, store_url)
    if store is None:
        return None
    try:
        last = _bounded(store, lambda s: s.last_runs())
    except StoreError as exc:
        click.echo(f"warning: no last runs: {exc}", err=True)
        return None
    _close(store)
    return last


@cli.command()
@click.argument("task", required=False)
@_config_option
@_store_option
@click.option(
    "-n", "limit", default=20, show_default=True, type=click.IntRange(1, 100_000), help="How many runs."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--output", "with_output", is_flag=True, help="Show each run's output tail.")
def history(
    task: str | None, config_path: str, store_url: str | None, limit: int, as_json: bool, with_output: bool
) -> None:
    """Show the newest runs first (of TASK, or of every task), from the store.

    Columns: start (local time), task, trigger, status, exit code or signal, duration, the instant it was
    scheduled for (UTC) and the clock that ran it. Exit status 69 when the store cannot be reached.
    """
    config = _load(config_path)
    store = _open_store(config, store_url)
    if store is None:
        raise click.UsageError(
            f"no store: add a line such as `store: sqlite:///.scheduler/state.db` to {config.path}, "
            "or pass --store URL"
        )
    try:
        records = _bounded(store, lambda s: s.history(task, limit))
    except StoreError as exc:
        click.echo(f"scheduler: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    _close(store)
    if task is not None and not records and task not in config.tasks:
        _task(config, task)  # an unknown name with no history: say so, with a suggestion
    if as_json:
        click.echo(json.dumps([r.to_json(output=with_output) for r in records], indent=2))
        return
    if not records:
        click.echo(f"no runs recorded{f' of {task}' if task else ''} in {store.display_url}")
        return
    rows = [("STARTED", "TASK", "TRIGGER", "STATUS", "EXIT", "DURATION", "SCHEDULED FOR (UTC)", "CLOCK")]
    for r in records:
        ended = r.signal or ("" if r.exit_code is None else str(r.exit_code))
        duration = "" if r.duration_s is None else _run_duration(r.duration_s)
        rows.append(
            (
                _local_time(r.started_at),
                r.task,
                r.trigger,
                r.status,
                ended,
                duration,
                f"{r.scheduled_for:%Y-%m-%d %H:%M:%S}",
                r.claimed_by,
            )
        )
    lines = _table(rows)
    click.echo(lines[0])
    for line, r in zip(lines[1:], records, strict=True):
        click.echo(line)
        if with_output and r.output:
            # A run's output is the task's, not ours: its controls (ESC, CR...) are shown, not obeyed.
            for out in r.output.removesuffix("\n").split("\n"):
                click.echo(f"    | {log.escape_controls(out)}")


def _run_duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(round(seconds))


def _local_time(at: datetime) -> str:
    return f"{at.astimezone():%Y-%m-%d %H:%M:%S}"


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
    finally:
        log.flush(_LOG_FLUSH_S)
