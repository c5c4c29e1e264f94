"""The command line: arguments, output formatting and exit codes. The only module that calls sys.exit."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import re
import resource
import shlex
import signal
import socket
import sys
import textwrap
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from click.shell_completion import CompletionItem

from scheduler import __version__, clock, enqueue, log, notify, orphans, runner
from scheduler.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    TaskSpec,
    expand_env,
    format_duration,
    parse_duration,
    suggest,
)
from scheduler.errors import (
    ConfigError,
    ControlError,
    SchedulerError,
    StoreError,
    StoreMissingError,
    UnknownTaskError,
)
from scheduler.loader import load_config, load_isolated
from scheduler.observe import NO_METRICS
from scheduler.runs import iso_utc, new_run_id
from scheduler.starter import STARTER_CONFIG, STARTER_TASKS
from scheduler.watch import FileWatcher

if TYPE_CHECKING:
    from scheduler.metrics import MetricsServer
    from scheduler.store import RunRecord, Store
    from scheduler.webchild import WebChild

EXIT_USAGE = 2  # bad config, unknown task, bad arguments (click uses 2 as well)
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the store named cannot be reached
_PING_FLUSH_S = 1.0  # at exit, pings still queued get this long
_LOG_FLUSH_S = 0.5  # at exit, log lines still queued get this long (a stalled reader never holds up exit)
_FD_LIMIT = 65_536
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug; the message asks for a report instead of showing a traceback
STORE_CALL_TIMEOUT_S = 5.0  # the longest run-now, list and history wait on the store, per call
# Errors are wrapped on a terminal only, at its width (this one when it does not say): piped or logged, each
# stays on one line, for grep, editors and CI problem matchers that read PATH:LINE:COL: message lines.
ERROR_WIDTH = 100
_MIN_ERROR_WIDTH = 40
_INDENT = "    "
_NBSP = "\u00a0"  # textwrap breaks at ASCII whitespace only
# A quoted phrase: its opening quote does not end a word (task's), its closing one does.
_QUOTED = re.compile(r"(?<![\w'\"])(?:'[^'\n]{1,30}'|\"[^\"\n]{1,30}\")(?!\w)")

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
        type=click.Path(),  # completes file names
        help="The schedules file (also SCHEDULER_CONFIG).",
    )(func)


def _utc_option(func: F) -> F:
    return click.option(
        "--utc", is_flag=True, help="Show the fire times in UTC rather than in each task's zone."
    )(func)


def _complete_tasks(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of a TASK argument: the task names of the config given by -c/--config on the
    command line so far, else SCHEDULER_CONFIG, else schedules.yaml. A config that cannot be read or is
    invalid completes nothing: completion never prints an error."""
    path = ctx.params.get("config_path") or DEFAULT_CONFIG_PATH  # click has applied the env var and default
    try:
        names = list(load_config(str(path)).tasks)
    except Exception:
        return []
    given = ctx.params.get(param.name or "") if param.nargs == -1 else ()
    taken = set(given or ())
    return [CompletionItem(name) for name in names if name.startswith(incomplete) and name not in taken]


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


def _open_store(config: Config, store_url: str | None, *, create: bool = True) -> Store | None:
    """The store named by --store (or SCHEDULER_STORE_URL), else by the file's `store:`, with ${VAR}s
    filled in from the environment; None when neither names one. create=False for the commands that only
    read: a SQLite file that is not there is then an error (StoreMissingError), not a new empty database."""
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

    return open_store(url, keep_runs=config.keep_runs, namespace=config.namespace, create=create)


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


def _load(
    config_path: str, env: Mapping[str, str] | None = None, *, store_overridden: bool = False
) -> Config:
    """The config, or exit 2 with every problem. With `env` (the commands that run tasks, and check), an
    unset variable that a `${NAME}` names is a problem too, and `env` values are filled in from it."""
    try:
        return load_config(config_path, env=env, store_overridden=store_overridden)
    except ConfigError as exc:
        _fail(exc)


def _fail(exc: SchedulerError) -> NoReturn:
    width = _error_width()
    for line in str(exc).splitlines():
        for part in _wrap_message(line, width) if width else [line]:
            click.echo(part, err=True)
    sys.exit(EXIT_USAGE)


def _error_width() -> int | None:
    """The width to wrap errors at: the terminal's when stderr is one, else None (one line per error)."""
    try:
        if not sys.stderr.isatty():
            return None
    except (OSError, ValueError):  # closed, or replaced by something without a descriptor
        return None
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return max(columns, _MIN_ERROR_WIDTH) if columns else ERROR_WIDTH


def _wrap_message(message: str, width: int) -> list[str]:
    """One error as lines of at most `width` columns, continuation lines indented: PATH:LINE:COL: stays
    first, so that `grep ^schedules.yaml:` still finds every error. A word longer than the width (a long
    path, say) is not broken, and a quoted phrase ('every 5 minutes') is kept on one line if it fits."""
    protected = _QUOTED.sub(lambda m: m[0].replace(" ", _NBSP), message)
    lines = textwrap.wrap(
        protected, width, subsequent_indent=_INDENT, break_long_words=False, break_on_hyphens=False
    )
    return [line.replace(_NBSP, " ") for line in lines] or [message]


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
@click.option(
    "--web",
    "web_addr",
    envvar="SCHEDULER_RUN_WEB",
    metavar="[HOST:]PORT",
    help="Also serve the dashboard there (`scheduler web`), as a child process that the clock supervises "
    "(also SCHEDULER_RUN_WEB). Needs a store. Off by default.",
)
def run(
    config_path: str,
    log_format: log.LogFormat,
    log_level: str,
    shutdown_grace: str,
    no_watch: bool,
    store_url: str | None,
    metrics_addr: str | None,
    web_addr: str | None,
) -> None:
    """Run the clock: fire every task on its schedule until SIGTERM or SIGINT.

    With a store, every run is recorded and each scheduled instant is claimed before it runs, so that
    several clocks sharing a PostgreSQL store run it once. The environment is read once, here: a `${NAME}`
    in the file that names an unset or empty variable stops the start (exit 2) and, later, a reload.
    """
    try:
        grace_s = parse_duration(shutdown_grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shutdown-grace") from None
    env = dict(os.environ)  # a snapshot: os.environ decodes every variable on each read
    config = _load(config_path, env, store_overridden=bool(store_url))
    enqueue.check(config, env)
    metrics_server = _serve_metrics(metrics_addr) if metrics_addr else None
    store = _open_store(config, store_url)
    web_socket = _bind_web(web_addr, store) if web_addr else None
    if store is not None:
        store.lock_single_clock()  # SQLite: refuse a second clock on the same file
    resolved_format = log.configure(log_format, log_level)
    logger = log.get_logger()
    web_child = None
    if web_socket is not None:
        web_child = _start_web_child(web_socket, config_path, store_url, resolved_format, log_level, logger)
    if metrics_server is not None:
        host, port = metrics_server.address
        logger.info("metrics.serving", url=f"http://{host}:{port}/metrics")
    if store is None:
        needing = sorted(n for n, t in config.tasks.items() if t.catch_up or t.require_store)
        if needing:
            logger.warning("store.missing", tasks=needing, detail="catch_up and require_store need a store")
    watcher = None if no_watch else FileWatcher(config_path)
    _raise_fd_limit()
    # systemd's NOTIFY_SOCKET and watchdog variables are the clock's: they are kept from its tasks.
    task_env = dict(env)
    notifier = notify.from_env(task_env, log=logger)

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
            env=task_env,
            load=lambda: load_isolated(config_path, env=env, store_overridden=bool(store_url)),
            watcher=watcher,
            on_tick=runner.reap_orphans if os.getpid() == 1 else None,
            shutdown_grace_s=grace_s,
            recorder=recorder,
            metrics=metrics_server.metrics if metrics_server is not None else NO_METRICS,
            pinger=pinger,
            notifier=notifier,
            control=recorder,
        )
        the_clock.install_signal_handlers()
        await the_clock.run()
        the_clock.ignore_late_signals()

    from scheduler.pings import Pinger  # urllib and ssl: only for the clock

    pinger = Pinger(log=logger, env=env)
    # As PID 1, the clock cannot be SIGKILLed from inside its container, and its death kills everything.
    guard = orphans.start_guard(logger) if os.getpid() != 1 else orphans.NO_GUARD
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
        if web_child is not None:
            web_child.close()
        enqueuer.close()
        guard.close()
        notifier.close()
        pinger.close(timeout_s=_PING_FLUSH_S)
        if metrics_server is not None:
            metrics_server.close()
    # Only now: nothing but the final flush of the log (main's, at most _LOG_FLUSH_S) is left before exit.
    logger.info("scheduler.stopped")


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


def _bind_web(addr: str, store: Store | None) -> socket.socket:
    """run --web: check what `scheduler web` would refuse (no store, no password off loopback) and bind its
    socket now, so that the clock does not start when its page cannot."""
    from scheduler import web

    if store is None:
        raise click.UsageError(_NO_STORE_FOR_WEB)
    try:
        host, port = web.listen_address(addr, {})
        web.check_exposure(host, port, web.credentials(os.environ))
    except SchedulerError as exc:
        raise click.BadParameter(str(exc), param_hint="--web") from None
    try:
        return web.bind(host, port)
    except OSError as exc:
        raise click.UsageError(f"--web {addr}: cannot listen: {exc.strerror or exc}") from None


def _start_web_child(
    sock: socket.socket,
    config_path: str,
    store_url: str | None,
    log_format: str,
    log_level: str,
    logger: Any,
) -> WebChild:
    from scheduler.webchild import WebChild

    argv = [sys.executable, "-m", "scheduler", "web", "-c", os.path.abspath(config_path)]
    argv += ["--log-format", log_format, "--log-level", log_level]
    argv += ["--listen-fd", str(sock.fileno()), "--exit-with-parent", str(os.getpid())]
    env = dict(os.environ)
    if store_url:
        env["SCHEDULER_STORE_URL"] = store_url  # not in argv, where `ps` would show its password
    child = WebChild(argv, sock, log=logger, env=env)
    child.start()
    return child


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
@click.argument("task", shell_complete=_complete_tasks)
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
    config = _load(config_path, os.environ, store_overridden=bool(store_url))
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


_NO_STORE_FOR_WEB = (
    "the dashboard needs a store (it shows runs, clocks and pauses, and acts through the store): add a line "
    "such as `store: sqlite:///.scheduler/state.db` to the schedules file, or pass --store URL"
)


@cli.command()
@_config_option
@_log_options
@_store_option
@click.option(
    "--addr",
    "addr",
    envvar="SCHEDULER_WEB_ADDR",
    metavar="[HOST:]PORT",
    help="Listen there (also SCHEDULER_WEB_ADDR). Default 127.0.0.1:8080, or 0.0.0.0:$PORT when $PORT is "
    "set (Heroku). Off loopback it needs SCHEDULER_WEB_PASSWORD.",
)
@click.option(
    "--read-only",
    is_flag=True,
    envvar="SCHEDULER_WEB_READ_ONLY",
    help="Show, never act: no run, pause or resume (they answer 403).",
)
@click.option("--listen-fd", type=int, hidden=True)
@click.option("--exit-with-parent", type=int, hidden=True)
def web(
    config_path: str,
    log_format: log.LogFormat,
    log_level: str,
    store_url: str | None,
    addr: str | None,
    read_only: bool,
    listen_fd: int | None,
    exit_with_parent: int | None,
) -> None:
    """Serve the dashboard: tasks, runs and clocks, with run now, pause and resume.

    It reads the schedules file for the definitions and the store for everything else, in a process of its
    own (it never slows a clock). HTTP Basic credentials come from SCHEDULER_WEB_PASSWORD (and
    SCHEDULER_WEB_USER, default admin); without a password it listens on loopback only.
    """
    if exit_with_parent is not None:
        from scheduler.webchild import die_with_parent

        die_with_parent(exit_with_parent)
    config = _load(config_path)
    from scheduler import web as web_module

    if _open_store(config, store_url) is None:
        raise click.UsageError(_NO_STORE_FOR_WEB)
    host, port = web_module.listen_address(addr, os.environ)
    creds = web_module.credentials(os.environ)
    web_module.check_exposure(host, port, creds)
    log.configure(log_format, log_level)
    logger = log.get_logger()
    sock = socket.socket(fileno=listen_fd) if listen_fd is not None else None

    def open_one() -> Store:
        store = _open_store(config, store_url)
        assert store is not None  # checked above
        return store

    try:
        server = web_module.serve(
            config_path,
            open_one,
            host,
            port,
            sock=sock,
            creds=creds,
            read_only=read_only,
            log=logger,
        )
    except OSError as exc:
        raise click.UsageError(f"--addr {host}:{port}: cannot listen: {exc.strerror or exc}") from None
    server.run_until_signalled()


@cli.command("next")
@click.argument("tasks", nargs=-1, shell_complete=_complete_tasks)
@_config_option
@click.option(
    "-n", "count", default=5, show_default=True, type=click.IntRange(1, 10_000), help="Fires per task."
)
@click.option(
    "--from", "start", metavar="ISO8601", help="Show fires strictly after this instant (default: now)."
)
@_utc_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def next_(
    tasks: Sequence[str], config_path: str, count: int, start: str | None, utc: bool, as_json: bool
) -> None:
    """Show the next fire instants of each task (or of TASKS), in its zone and in UTC (--utc: in UTC only)."""
    config = _load(config_path)
    after = _parse_instant(start, "--from") if start else datetime.now(UTC)
    specs = [_task(config, name) for name in tasks] if tasks else list(config.tasks.values())
    if as_json:
        out = [
            {
                "task": spec.name,
                "schedule": spec.schedule.text,
                "timezone": spec.timezone,
                "next": [_iso_in(f.at, UTC if utc else spec.zone) for f in spec.schedule.fires(after, count)],
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
            zone = UTC if utc else spec.zone
            line = f"  {fire.at.astimezone(zone):%a} {_zone_time(fire.at, zone)}"
            if not utc:
                line += f"  {_utc_time(fire.at)}"
            click.echo(line + (f"  DST: {fire.note}" if fire.note else ""))


def _parse_instant(text: str, option: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"'{text}' is not an ISO 8601 instant (e.g. 2026-03-08T06:00:00Z)", param_hint=option
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


# Times as every command prints them. Schedule times (next fires) are in the task's zone, labelled with its
# abbreviation and offset; run times (when a run started, what it was scheduled for) are in UTC, labelled
# UTC, whatever $TZ says: the clock ignores $TZ, so the machine's zone would only mislead.


def _utc_time(at: datetime) -> str:
    """'2026-11-27 09:00:00 UTC'."""
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _zone_time(at: datetime, zone: tzinfo) -> str:
    """'2026-11-27 16:00:00-05:00 EST' in the zone: the offset as in ISO 8601, then the abbreviation, if the
    zone has one that is not only its offset ('... 01:00:00+03:00'); '... UTC' for UTC."""
    local = at.astimezone(zone)
    offset = local.utcoffset() or timedelta(0)
    name = local.tzname() or ""
    if not offset and name in ("UTC", "Z", "+00", ""):
        return _utc_time(at)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    numeric = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{local:%Y-%m-%d %H:%M:%S}{numeric}" + (f" {name}" if name[:1].isalpha() else "")


def _iso_in(at: datetime, zone: tzinfo) -> str:
    return at.astimezone(zone).isoformat()


@cli.command("list")
@_config_option
@_store_option
@_utc_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per task.")
def list_(config_path: str, store_url: str | None, utc: bool, as_json: bool) -> None:
    """Show a table of the tasks: schedule in plain words, zone, next fire (in the task's zone; --utc: in
    UTC), overlap and timeout; with a store, also whether each task is running now, and its last run (UTC)
    and status."""
    config = _load(config_path)
    now = datetime.now(UTC)
    seen = _store_view(config, store_url, now)
    specs = list(config.tasks.values())
    nexts = {spec.name: spec.schedule.next_fire(now).at if spec.enabled else None for spec in specs}
    if as_json:
        click.echo(json.dumps([_list_json(spec, nexts[spec.name], seen, utc) for spec in specs], indent=2))
        return
    rows: list[tuple[str, ...]] = [("TASK", "SCHEDULE", "MEANING", "ZONE", "NEXT FIRE", "OVERLAP", "TIMEOUT")]
    # What each task starts, only when some enqueue a job: a file of commands keeps its table as it was.
    targets = any(spec.enqueue is not None for spec in specs)
    if targets:
        rows[0] += ("RUNS",)
    if seen is not None:
        rows[0] += ("RUNNING", "LAST RUN", "LAST STATUS")
    for spec in specs:
        nxt = nexts[spec.name]
        next_text = "disabled" if nxt is None else _zone_time(nxt, UTC if utc else spec.zone)
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
        if seen is not None:
            last, running = seen
            record = last.get(spec.name)
            rows[-1] += (
                "yes" if spec.name in running else "no",
                _utc_time(record.started_at) if record else "never",
                record.status if record else "-",
            )
    for line in _table(rows):
        click.echo(line)


def _list_json(
    spec: TaskSpec,
    nxt: datetime | None,
    seen: tuple[dict[str, RunRecord], set[str]] | None,
    utc: bool,
) -> dict[str, object]:
    last, running = seen if seen is not None else ({}, set())
    record = last.get(spec.name)
    return {
        "task": spec.name,
        "schedule": spec.schedule.text,
        "description": spec.schedule.describe(),
        "timezone": spec.timezone,
        "enabled": spec.enabled,
        "next": None if nxt is None else _iso_in(nxt, UTC if utc else spec.zone),
        "overlap": spec.overlap,
        "timeout_s": _number(spec.timeout_s),
        "running": spec.name in running,
        "last_run": None
        if record is None
        else {
            "status": record.status,
            "started_at": iso_utc(record.started_at),
            "duration_s": record.duration_s,
        },
    }


def _number(value: float | None) -> float | int | None:
    """A whole number of seconds as an int in JSON (600, not 600.0)."""
    return int(value) if value is not None and value.is_integer() else value


def _store_view(
    config: Config, store_url: str | None, now: datetime
) -> tuple[dict[str, RunRecord], set[str]] | None:
    """Each task's newest run started by now, and the tasks running now; None without a store. A store
    that cannot be reached is a warning, not a failure; a SQLite file that is not there is an error."""
    store = _open_store(config, store_url, create=False)
    if store is None:
        return None
    try:
        last, running = _bounded(store, lambda s: (s.last_runs(before=now), s.running()))
    except StoreMissingError as exc:
        _fail(exc)
    except StoreError as exc:
        click.echo(f"warning: no last runs: {exc}", err=True)
        return None
    _close(store)
    return last, {record.task for record in running}


@cli.command()
@click.argument("task", required=False, shell_complete=_complete_tasks)
@_config_option
@_store_option
@click.option(
    "-n", "limit", default=20, show_default=True, type=click.IntRange(1, 100_000), help="How many runs."
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    callback=lambda ctx, param, value: _check_statuses(value),
    shell_complete=lambda ctx, param, incomplete: [
        CompletionItem(s) for s in _run_statuses() if s.startswith(incomplete)
    ],
    help="Only runs with this status (repeat it, or separate with commas): running, succeeded, failed, "
    "timed_out, killed, skipped, lost.",
)
@click.option(
    "--since",
    metavar="DURATION|ISO8601",
    help="Only runs started since then: a duration back from now (24h, 7d, 30m) or an instant "
    "(2026-11-30T00:00:00Z; without an offset, UTC).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--output", "with_output", is_flag=True, help="Show each run's output tail.")
def history(
    task: str | None,
    config_path: str,
    store_url: str | None,
    limit: int,
    statuses: tuple[str, ...],
    since: str | None,
    as_json: bool,
    with_output: bool,
) -> None:
    """Show the newest runs first (of TASK, or of every task), from the store.

    Columns: start, task, trigger, attempt (2 for a run's first retry), status, exit code or signal,
    duration, the instant it was scheduled for, and the clock that ran it. Times are in UTC. Exit status
    69 when the store cannot be reached; 2 when it names a SQLite file that does not exist.
    """
    config = _load(config_path)
    since_at = _parse_since(since, datetime.now(UTC)) if since else None
    store = _open_store(config, store_url, create=False)
    if store is None:
        raise click.UsageError(
            f"no store: add a line such as `store: sqlite:///.scheduler/state.db` to {config.path}, "
            "or pass --store URL"
        )
    try:
        records = _bounded(store, lambda s: s.history(task, limit, statuses=statuses or None, since=since_at))
    except StoreMissingError as exc:
        _fail(exc)
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
        which = f" {' or '.join(statuses)}" if statuses else ""
        of = f" of {task}" if task else ""
        when = f" since {_utc_time(since_at)}" if since_at else ""
        click.echo(f"no{which} runs{of}{when} recorded in {store.display_url}")
        return
    rows = [("STARTED", "TASK", "TRIGGER", "ATTEMPT", "STATUS", "EXIT", "DURATION", "SCHEDULED FOR", "CLOCK")]
    for r in records:
        ended = r.signal or ("" if r.exit_code is None else str(r.exit_code))
        duration = "" if r.duration_s is None else _run_duration(r.duration_s)
        rows.append(
            (
                _utc_time(r.started_at),
                r.task,
                r.trigger,
                str(r.attempt),
                r.status,
                ended,
                duration,
                _utc_time(r.scheduled_for),
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


def _run_statuses() -> tuple[str, ...]:
    from scheduler.store import RUN_STATUSES  # the store module only for the commands that use it

    return RUN_STATUSES


def _check_statuses(values: Sequence[str]) -> tuple[str, ...]:
    """--status values, split at commas, each one a known status: else a one-line error listing them."""
    known = _run_statuses()
    statuses: list[str] = []
    for value in values:
        for status in filter(None, (part.strip() for part in value.split(","))):
            if status not in known:
                guess = suggest(status, known)
                hint = f" (did you mean '{guess}'?)" if guess else ""
                raise SchedulerError(
                    f"--status: unknown status '{status}'{hint}; statuses: {', '.join(known)}"
                )
            if status not in statuses:
                statuses.append(status)
    return tuple(statuses)


def _parse_since(text: str, now: datetime) -> datetime:
    """--since: a duration back from now (24h), or an instant (2026-11-30T00:00:00Z, UTC without offset)."""
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        return _parse_instant(text, "--since")
    except click.BadParameter:
        raise SchedulerError(
            f"--since: '{text}' is neither a duration back from now (24h, 7d, 30m) nor an ISO 8601 instant "
            "(2026-11-30T00:00:00Z)"
        ) from None


def _run_duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(round(seconds))


@cli.command()
@click.argument("path", default=DEFAULT_CONFIG_PATH, required=False, type=click.Path())
def init(path: str) -> None:
    """Write a starter schedules file at PATH (default schedules.yaml): two example tasks, every key
    explained, the store and ping lines commented out. An existing file is never overwritten (exit 2)."""
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(STARTER_CONFIG)
    except FileExistsError:
        _fail(
            SchedulerError(f"{path}: already exists; not overwriting it (move it away, or name another PATH)")
        )
    except OSError as exc:
        _fail(SchedulerError(f"{path}: cannot write: {exc.strerror or exc}"))
    # The commands shown must read this file: name it unless it is the one they read by default.
    named = path == DEFAULT_CONFIG_PATH and not os.environ.get("SCHEDULER_CONFIG")
    config = "" if named else f" -c {shlex.quote(path)}"
    width = len(f"scheduler run-now {STARTER_TASKS[0]}{config}")
    click.echo(f"Wrote {path}, with the example tasks {' and '.join(STARTER_TASKS)}. Next:")
    for command, what in (
        (f"scheduler check{config}", "validate it after each edit"),
        (f"scheduler list{config}", "see each task's next fire"),
        (f"scheduler run-now {STARTER_TASKS[0]}{config}", "run a task once, now"),
        (f"scheduler run{config}", "start the clock, in the foreground"),
    ):
        click.echo(f"  {command.ljust(width)}  {what}")


@cli.command()
@click.argument("task")
@click.option("--for", "duration", metavar="DURATION", help="End the pause after this long (90m, 2h, 1d).")
@click.option(
    "--until", "until_text", metavar="ISO8601", help="End the pause at this instant (UTC without an offset)."
)
@click.option("--reason", default="", metavar="TEXT", help="Why, for the logs and the audit trail.")
@click.option(
    "--by", metavar="NAME", help="Who pauses it, for the logs and the audit trail (default: $USER@host)."
)
@_config_option
@_store_option
def pause(
    task: str,
    duration: str | None,
    until_text: str | None,
    reason: str,
    by: str | None,
    config_path: str,
    store_url: str | None,
) -> None:
    """Pause TASK on every clock sharing the store, until `scheduler resume` (or --for / --until).

    The clocks skip its scheduled fires from their next look at the store, about a second (task.skipped,
    reason paused); the pause outlives restarts and deploys. Runs going are left alone, and run requests
    still start. Exit status 69 when the store cannot be reached.
    """
    config = _load(config_path)
    spec = _task(config, task)
    if duration is not None and until_text is not None:
        raise click.UsageError("give --for or --until, not both")
    until = None
    if until_text is not None:
        until = _parse_instant(until_text, "--until")
    elif duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--for") from None
        if seconds <= 0:
            raise click.BadParameter(f"'{duration}': a pause lasts longer than 0", param_hint="--for")
        until = datetime.now(UTC) + timedelta(seconds=seconds)
    store = _control_store(config, store_url, "pause")
    actor = by or _actor()
    override = _control_call(store, lambda s: s.pause(spec.name, by=actor, until=until, reason=reason))
    end = "until resumed" if override.until is None else f"until {_zone_time(override.until, spec.zone)}"
    click.echo(f"paused {spec.name} {end}, by {override.by}" + (f": {reason}" if reason else ""))


@cli.command()
@click.argument("task")
@click.option(
    "--by", metavar="NAME", help="Who resumes it, for the logs and the audit trail (default: $USER@host)."
)
@_config_option
@_store_option
def resume(task: str, by: str | None, config_path: str, store_url: str | None) -> None:
    """Resume TASK on every clock sharing the store: it fires again from their next look at the store,
    about a second. Exit status 69 when the store cannot be reached."""
    config = _load(config_path)
    spec = _task(config, task)
    store = _control_store(config, store_url, "resume")
    actor = by or _actor()
    held = _control_call(store, lambda s: s.resume(spec.name, by=actor))
    click.echo(f"resumed {spec.name}, by {actor}" if held else f"{spec.name} was not paused")


def _control_store(config: Config, store_url: str | None, command: str) -> Store:
    """The store pause and resume write to; without one, a usage error (exit 2) that says how to add one.
    A SQLite file that is not there is refused too (exit 2): a pause in a new database no clock reads (a
    mistyped path) would do nothing, silently."""
    store = _open_store(config, store_url, create=False)
    if store is None:
        raise click.UsageError(
            f"{command} needs a store shared with the clocks: add a line such as "
            f"`store: sqlite:///.scheduler/state.db` to {config.path}, or pass --store URL"
        )
    return store


def _control_call(store: Store, call: Callable[[Store], _T]) -> _T:
    """One bounded call for pause or resume: an unreachable store exits 69; a refused value, or a SQLite
    file that is not there, exits 2."""
    try:
        result = _bounded(store, call)
    except (ControlError, StoreMissingError) as exc:
        _fail(exc)
    except StoreError as exc:
        click.echo(f"scheduler: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    _close(store)
    return result


def _actor() -> str:
    """Who acts, as the audit trail names them: the user (or uid) and the host (or Heroku dyno)."""
    from scheduler.recorder import host_name

    user = os.environ.get("USER") or os.environ.get("LOGNAME") or f"uid{os.getuid()}"
    return f"{user}@{host_name()}"


@cli.command()
@_config_option
@click.option(
    "--no-env",
    is_flag=True,
    help="Do not check ${NAME} references against this environment (in CI, say, where the variables "
    "the clock will have are not set).",
)
def check(config_path: str, no_env: bool) -> None:
    """Validate the config file: exit 0 with a summary, or 2 with every error.

    A ${NAME} in store, ping_url, an env value or a string hook must name a variable set in this
    environment, as `run` requires (the file's store is not checked when SCHEDULER_STORE_URL overrides it).
    """
    env = None if no_env else os.environ
    config = _load(config_path, env, store_overridden=bool(os.environ.get("SCHEDULER_STORE_URL")))
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
