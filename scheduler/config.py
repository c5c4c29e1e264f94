"""schedules.yaml text -> validated, frozen task specs. Errors carry PATH:LINE:COL.

Pure: no clock, no processes, no files (loader.py reads them). Parsing works on PyYAML's
composed node tree rather than on loaded dicts, because only nodes know their line and column and only they
show duplicate keys (`yaml.safe_load` silently keeps the last one). Every problem found is collected and
raised together in one `ConfigError`, so that a user fixes them all in one pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import math
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, get_args
from zoneinfo import ZoneInfo

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from scheduler import schedule as schedule_module
from scheduler.errors import ConfigError, ScheduleError
from scheduler.frozen import pickle_by_fields, without_cycle_collection
from scheduler.jobs import BACKENDS, SIDEKIQ_VERSIONS, Enqueue
from scheduler.schedule import Schedule

Overlap = Literal["skip", "allow", "replace"]

DEFAULT_CONFIG_PATH = "schedules.yaml"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_OVERLAP: Overlap = "skip"
DEFAULT_GRACE_S = 300.0
DEFAULT_JITTER_S = 0.0
DEFAULT_KILL_GRACE_S = 10.0
DEFAULT_SHELL = "/bin/sh"
DEFAULT_KEEP_RUNS = 200
MAX_KEEP_RUNS = 1_000_000
DEFAULT_PING_TIMEOUT_S = 5.0
# A ping that takes longer than a minute is a dead monitoring service: the run's own result matters more.
MAX_PING_TIMEOUT_S = 60.0
DEFAULT_HOOK_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 0
MAX_RETRIES = 100
DEFAULT_RETRY_DELAY_S = 30.0
DEFAULT_RETRY_BACKOFF = 2.0
MAX_RETRY_BACKOFF = 100.0
DEFAULT_RETRY_MAX_DELAY_S = 600.0
# Longer durations are almost certainly typos, and they would overflow datetime arithmetic in the clock.
MAX_DURATION_S = 366 * 86400.0
# The most mapping entries and list items a parse walks, each alias and `<<` merge counted once per use: a
# few hundred bytes of nested aliases could otherwise stand for billions. The 100,000-task benchmark file
# walks 500,000 (a task, its two settings, its command's two arguments); at about 15 us each, the limit
# bounds a parse to half a minute.
MAX_CONFIG_NODES = 2_000_000


@pickle_by_fields
@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task, fully resolved: defaults applied, schedule parsed, cwd made absolute.

    Two specs compare equal when a reload need not touch the task; `line` is not compared.
    """

    name: str
    schedule: Schedule
    command: str | tuple[str, ...]  # () for a task that enqueues a job instead
    timezone: str
    timeout_s: float | None = None
    overlap: Overlap = DEFAULT_OVERLAP
    grace_s: float = DEFAULT_GRACE_S
    jitter_s: float = DEFAULT_JITTER_S
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    shell: str = DEFAULT_SHELL
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    enabled: bool = True
    # The run-history store's settings. They are valid without a top-level `store`: the command line may
    # give one, so only the CLI can tell whether a task that relies on a store has none.
    catch_up: bool = False  # at start, run once if the store shows a fire missed while no clock ran
    require_store: bool = False  # skip fires while the store is unreachable, rather than risk a double run
    store_output: bool = True  # keep each run's output tail in the store
    # A dead-man's-switch base URL (Healthchecks.io / Cronitor style), pinged as a run starts and ends.
    # Kept as written: its `${NAME}` references are for the caller to expand, like `Config.store`.
    ping_url: str | None = None
    ping_exit_code: bool = False  # ping <url>/<exit code> rather than <url> or <url>/fail
    ping_timeout_s: float = DEFAULT_PING_TIMEOUT_S
    # Commands run after a run ends, like `command`: a shell string or an argument tuple.
    on_failure: str | tuple[str, ...] | None = None
    on_success: str | tuple[str, ...] | None = None
    hook_timeout_s: float = DEFAULT_HOOK_TIMEOUT_S
    # A failed run is retried up to `retries` times, the delay growing by `retry_backoff` up to its maximum.
    retries: int = DEFAULT_RETRIES
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_max_delay_s: float = DEFAULT_RETRY_MAX_DELAY_S
    # A job for the app's own workers (Sidekiq, RQ, Celery), sent instead of running a command.
    enqueue: Enqueue | None = None
    line: int = field(default=0, compare=False)

    @property
    def zone(self) -> ZoneInfo:
        return self.schedule.zone


@pickle_by_fields
@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated schedules.yaml.

    `store` is the run-history store's URL exactly as written: `${NAME}` references are left for the caller
    to expand (this module never reads the environment). `store_line` is its line, so that a caller can name
    the place when a variable is unset; like `TaskSpec.line`, it is not compared. `namespace` keeps apps
    that share one store apart. `digest` is the hex SHA-256 of the file's bytes (of the text's UTF-8 when
    parsed from text), for a caller to tell a changed file from a touched one; it is not compared either.
    """

    path: str
    timezone: str
    tasks: Mapping[str, TaskSpec]
    store: str | None = None
    store_line: int | None = field(default=None, compare=False)
    keep_runs: int = DEFAULT_KEEP_RUNS
    namespace: str = ""
    digest: str = field(default="", compare=False)
    # Broker URLs by name, as written (`${NAME}` left for the edge, as `store`); tasks name them in `enqueue`.
    brokers: Mapping[str, str] = field(default_factory=dict)


def parse_config(
    text: str | bytes,
    path: str,
    *,
    base_dir: str | None = None,
    env: Mapping[str, str] | None = None,
    store_overridden: bool = False,
) -> Config:
    """Validate schedules.yaml `text` (or the file's raw bytes, which must be UTF-8) into a `Config`.

    `path` only names the file in messages. Relative `cwd`s are joined onto `base_dir`, by default the folder
    of `path`, made absolute. Raises `ConfigError` listing every problem as ``PATH:LINE:COL: message``,
    ordered by line.

    `env` is the environment the config will run with. Without it, `${NAME}` references are only checked
    for form. With it, each reference in `store` (unless `store_overridden`: the command line names another
    store), `ping_url`, `env` values and string `on_success` / `on_failure` hooks must name a variable that
    is set and not empty, or it is a problem at its line; and `env` values are filled in (`$${` is a literal
    `${`). `store` and `ping_url` stay as written, for the edges to fill in; hooks are left to the shell.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    digest = hashlib.sha256(data).hexdigest()
    if isinstance(text, bytes):
        text = _decode(text, path)
    base = Path(base_dir) if base_dir is not None else Path(path).parent
    with without_cycle_collection():
        config = _Parser(text, path, base.absolute(), env, store_overridden=store_overridden).parse()
    return dataclasses.replace(config, digest=digest)


def _decode(data: bytes, path: str) -> str:
    """The file's bytes as text; not UTF-8 is one problem naming the line, the column and the byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        byte = data[error.start]
        raise ConfigError(
            [f"{path}:{line}:{column}: not UTF-8 text (byte 0x{byte:02x}); save it as UTF-8"]
        ) from None


def expand_env(text: str, env: Mapping[str, str], where: str) -> str:
    """`text` with each `${NAME}` replaced by `env[NAME]`. An unset or empty variable raises ConfigError
    naming `where` (the place the text came from, e.g. "schedules.yaml:4: store") and the variable, never
    the text: it may hold a password."""

    def fill(match: re.Match[str]) -> str:
        value = env.get(match.group(1))
        if not value:
            prefix = f"{where}: " if where else ""
            raise ConfigError([f"{prefix}environment variable {match.group(1)} is not set"])
        return value

    return ENV_REFERENCE.sub(fill, text)


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `word` for a "did you mean" hint, or None when nothing is close.

    Case is ignored (a choice that differs only in case wins); otherwise difflib's ratio must reach 0.6.
    """
    by_folded: dict[str, str] = {}
    for choice in choices:
        by_folded.setdefault(choice.casefold(), choice)
    folded = word.casefold()
    if folded in by_folded:
        return by_folded[folded]
    matches = difflib.get_close_matches(folded, list(by_folded), n=1, cutoff=0.6)
    return by_folded[matches[0]] if matches else None


_DURATION_FORMS = "a duration like 90s, 10m, 1h30m or a number of seconds"
# Units largest first: a duration names each at most once, in this order ("1h30m", not "30m1h").
_UNITS: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("d", 86400.0, ("d", "day", "days")),
    ("h", 3600.0, ("h", "hr", "hrs", "hour", "hours")),
    ("m", 60.0, ("m", "min", "mins", "minute", "minutes")),
    ("s", 1.0, ("s", "sec", "secs", "second", "seconds")),
    ("ms", 0.001, ("ms", "msec", "msecs", "millisecond", "milliseconds")),
)
_UNIT_RANK = {alias: rank for rank, (_, _, aliases) in enumerate(_UNITS) for alias in aliases}
_DURATION_PART = re.compile(
    r"(\d+(?:\.\d+)?|\.\d+)\s*(" + "|".join(sorted(_UNIT_RANK, key=len, reverse=True)) + r")(?![a-z])\s*",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def parse_duration(value: object) -> float:
    """Seconds in a duration: "90s", "10m", "1h30m", "1h 30m", "500ms", "1d", or a number of seconds.

    Units are d, h, m, s and ms (long forms like "minutes" too), each at most once, largest first. A bare
    number (int, float or numeric string) counts seconds. Raises ValueError, naming the accepted forms, for
    anything else, including booleans, negative and non-finite values and more than a year.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_FORMS}, got {_describe(value)}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    elif isinstance(value, str):
        if value.strip().startswith("-"):
            raise ValueError(f"must not be negative, got {_describe(value)}")
        parsed = _duration_seconds(value)
        if parsed is None:
            raise ValueError(f"expected {_DURATION_FORMS}, got {_describe(value)}")
        seconds = parsed
    else:
        raise ValueError(f"expected {_DURATION_FORMS}, got {_describe(value)}")
    if math.isnan(seconds):
        raise ValueError(f"expected {_DURATION_FORMS}, got {_describe(value)}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {_describe(value)}")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"must be at most 366d, got {_describe(value)}")
    return seconds


def _duration_seconds(text: str) -> float | None:
    """The seconds in a duration string, or None when it is not one."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    total, position, last_rank = 0.0, 0, -1
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            return None
        rank = _UNIT_RANK[match[2].lower()]
        if rank <= last_rank:
            return None
        total += float(match[1]) * _UNITS[rank][1]
        position, last_rank = match.end(), rank
    return total if position else None


_TOP_KEYS = ("timezone", "store", "keep_runs", "namespace", "defaults", "tasks", "brokers")
# Names other tools give these keys, too far from ours for difflib to suggest them.
_KEY_SYNONYMS = {
    "retry_count": "retries",
    "on_error": "on_failure",
    "healthcheck": "ping_url",
    "healthcheck_url": "ping_url",
    "heartbeat_url": "ping_url",
}
_OVERLAPS: tuple[str, ...] = get_args(Overlap)
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_PLAIN_REFERENCE = re.compile(r"\$\{[^:@/?#]{0,40}\}")  # a reference with no URL or default in it
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_]{0,39}")
_NAMESPACE_FORM = "up to 40 lowercase letters, digits and '_', starting with a letter or digit, like billing"
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A `${NAME}` reference in `store`, `ping_url`, an `env` value or a hook. This module checks them against
# the environment it is given and fills in `env` values; the edges fill in the others (the CLI the store,
# the pinger ping URLs, the shell a hook).
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# In an `env` value, `$${` is a literal `${`.
_ENV_VALUE_PART = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# What a hook's shell has besides the clock's environment and the task's `env`: the variables the runner and
# hooks.py set for a hook, and those the shell sets itself.
_HOOK_VARIABLES = frozenset(
    {
        *("SCHEDULER_TASK", "SCHEDULER_RUN_ID", "SCHEDULER_SCHEDULED_FOR", "SCHEDULER_TRIGGER"),
        *("SCHEDULER_STATUS", "SCHEDULER_EXIT_CODE", "SCHEDULER_DURATION_S", "SCHEDULER_OUTPUT_FILE"),
    }
)
_SHELL_VARIABLES = frozenset(
    {
        "PWD",
        "OLDPWD",
        "PPID",
        "IFS",
        "OPTIND",
        "OPTARG",
        "LINENO",
        "RANDOM",
        "SECONDS",
        "REPLY",
        "UID",
        "EUID",
    }
)
# Names a shell command sets itself: `NAME=...`, `for NAME in`, `read [-r] NAME...`.
_SHELL_ASSIGNMENT = re.compile(
    r"(?:^|[\s;&|(`])([A-Za-z_][A-Za-z0-9_]*)\+?=|\bfor\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\b"
    r"|\bread\b((?:\s+-[A-Za-z]+)*(?:\s+[A-Za-z_][A-Za-z0-9_]*)+)"
)
_STORE_SCHEMES = ("sqlite://", "postgresql://", "postgres://")
_STORE_FORMS = (
    "a store URL starting with sqlite://, postgresql:// or postgres://, "
    "or an environment variable reference like ${DATABASE_URL}"
)
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_BROKER_SCHEMES = (*_REDIS_SCHEMES, "amqp", "amqps", "pyamqp")
_BROKER_FORMS = (
    "a broker URL starting with redis://, rediss://, unix://, amqp:// or amqps://, "
    "or an environment variable reference like ${REDIS_URL}"
)
# What each backend's `job` names: a Ruby class, a Python dotted path (module and function), a task name.
_JOB_NAMES = {
    "sidekiq": re.compile(r"[A-Z][A-Za-z0-9_]*(?:::[A-Z][A-Za-z0-9_]*)*"),
    "rq": re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+"),
    "celery": re.compile(r"\S(?:.*\S)?"),
}
_JOB_FORMS = {
    "sidekiq": "a Ruby class name like ReportJob or Reports::NightlyJob",
    "rq": "a function's dotted path like app.tasks.nightly_report",
    "celery": "a Celery task name like app.tasks.nightly_report",
}
MAX_SIDEKIQ_RETRY = 10_000
_SIDEKIQ_RETRY_FORM = f"true, false or a whole number of retries from 0 to {MAX_SIDEKIQ_RETRY}"
_SIDEKIQ_VERSION_FORM = "the Sidekiq version the workers run: " + ", ".join(map(str, SIDEKIQ_VERSIONS))
_PRIORITY_FORM = "a whole number from 0 to 255"
_KEEP_RUNS_FORM = f"a whole number of runs to keep per task, from 1 to {MAX_KEEP_RUNS}"
_PING_SCHEMES = ("http://", "https://")
_PING_URL_FORMS = "an http:// or https:// URL, or an environment variable reference like ${PING_URL}"
_RETRIES_FORM = f"a whole number of retries after a failed run, from 0 to {MAX_RETRIES}"
_RETRY_BACKOFF_FORM = (
    f"a number from 1 to {MAX_RETRY_BACKOFF:g} to multiply the delay by after each retry (1: the same delay)"
)
# The decimal spellings of an int; YAML 1.1 also reads 010 (octal 8), 0x10, 0b10 and 1:30 (base 60) as ints.
_DECIMAL = re.compile(r"\+?(?:0|[1-9][0-9_]*)")
_YAML_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _YAML_TAG + "merge"
# libyaml parses a 10,000-task file about 10x faster than the pure-Python parser; both are safe loaders.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN = (True, False)


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """The safe loader, remembering the implicit tag of each plain scalar it has resolved: keys such as
    `schedule` and `command` recur in every task, and PyYAML's resolver is pure Python."""

    _tags: ClassVar[dict[str, str]] = {}

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode and implicit == _PLAIN and isinstance(value, str):
            tag = self._tags.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(self._tags) < _TAG_CACHE_SIZE:
                    self._tags[value] = tag
            return tag
        return str(super().resolve(kind, value, implicit))


_TAG_CACHE_SIZE = 4096

# Tags SafeLoader can construct; any other (e.g. !!python/object) is reported, never constructed.
_SAFE_TAGS = frozenset(tag for tag in yaml.SafeLoader.yaml_constructors if tag is not None)
# Characters that YAML cannot start a plain value with, and that cron-style schedules often start with.
_QUOTE_HINTS = {
    "*": "quote schedules that start with '*', e.g. schedule: \"* * * * *\"",
    "@": "quote schedules that start with '@', e.g. schedule: \"@daily\"",
}


# Characters that cannot start a plain value, with no better hint than quoting.
_PLAIN_STARTS = frozenset("`%")
# A key simple enough to show in a hint.
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def _shell_assigned(command: str) -> set[str]:
    """The variables a shell command sets itself (`NAME=`, `for NAME in`, `read NAME`), roughly: a hook's
    `${NAME}` for one of them needs no environment variable."""
    names: set[str] = set()
    for assigned, loop, read in _SHELL_ASSIGNMENT.findall(command):
        names.update(filter(None, (assigned, loop)))
        names.update(word for word in read.split() if not word.startswith("-"))
    return names


def _some_tasks(names: list[str]) -> str:
    """'task 'a'', 'tasks 'a' and 'b'', 'tasks 'a', 'b', 'c' and 4 more'."""
    shown = [_quote(name) for name in names[:3]]
    if len(names) > 3:
        return f"tasks {', '.join(shown)} and {len(names) - 3} more"
    if len(names) == 1:
        return f"task {shown[0]}"
    return f"tasks {', '.join(shown[:-1])} and {shown[-1]}"


def _before_and_at(lines: list[str], mark: Mark) -> tuple[str, str]:
    """The text of `mark`'s line before it, and the character at it ("" past the end)."""
    line = lines[mark.line] if mark.line < len(lines) else ""
    return line[: mark.column], line[mark.column : mark.column + 1]


@functools.cache
def _zone_names() -> tuple[str, ...]:
    """Every IANA key on this machine; slow (it lists files), so only computed for a did-you-mean."""
    return tuple(sorted(zoneinfo.available_timezones()))


@dataclass(frozen=True)
class _Shape:
    """Stands in for a list or mapping node where a scalar was expected; such nodes are never constructed."""

    description: str


_A_LIST = _Shape("a list")
_A_MAPPING = _Shape("a mapping")


class _Invalid(Exception):
    """The value at hand is invalid and its problem is already recorded: go on with the next key."""


class _TooLarge(Exception):
    """The file expands past MAX_CONFIG_NODES (reported): stop the whole parse."""


def _quote(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    match = suggest(word, choices)
    return f" (did you mean {_quote(match)}?)" if match else ""


def _suggest_key(key: str, choices: tuple[str, ...]) -> str | None:
    """`suggest` for a misspelt key, knowing the names other tools use for some of ours."""
    synonym = _KEY_SYNONYMS.get(key.casefold())
    return synonym if synonym in choices else suggest(key, choices)


def _top_only_hint(key: str) -> str:
    """For a top-level setting written in a task or in defaults."""
    return f" ({key!r} is a top-level setting, not a task's)" if key in ("store", "keep_runs") else ""


def _shown_url(value: str, *, keep_path: bool) -> str:
    """A URL as an error may show it: the password (and any query) as ***, and with `keep_path` false
    nothing after the host. A value that is `$NAME` is shown with a hint; other text is not shown at all."""
    hint = _braces_hint(value)
    if hint:
        return _quote(value) + hint
    scheme, separator, rest = value.partition("://")
    if not separator or not _URL_SCHEME.fullmatch(scheme):
        if ":" in value or "@" in value:
            return "text that is not a URL (not shown: it may hold a password)"
        host, slash, path = value.partition("/")  # no scheme, no password: a path, or a host and a path
        return _quote(value if keep_path else host + ("/…" if path else slash))
    end = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"{userinfo}@{host}"
    if not keep_path:
        return _quote(f"{scheme}://{netloc}" + ("/…" if tail.strip("/") else tail))
    path, question, _query = tail.partition("?")
    return _quote(f"{scheme}://{netloc}{path}" + ("?***" if question else ""))


def _scheme(url: str) -> str | None:
    """A URL's scheme, lowercased; None when a `${NAME}` reference stands before it (known only at start)."""
    scheme, separator, _ = url.partition("://")
    if "${" in scheme:
        return None
    return scheme.lower() if separator else ""


def _braces_hint(value: str) -> str:
    """For a whole value written `$NAME`, which is not a reference: suggest `${NAME}`."""
    if value.startswith("$") and _ENV_NAME.fullmatch(value[1:]):
        return f" (did you mean {_quote('${' + value[1:] + '}')}?)"
    return ""


def format_duration(seconds: float) -> str:
    """A duration as a user would write it, which `parse_duration` reads back: 90 -> '1m30s',
    5400 -> '1h30m', 86400 -> '1d', 0.5 -> '0.5s', 90.5 -> '1m30.5s'."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{count}{unit}" for count, unit in zip((days, hours, minutes), "dhm", strict=True) if count]
    fraction = seconds - whole
    if secs or fraction:
        parts.append(f"{round(secs + fraction, 6):g}s")
    return "".join(parts) or "0s"


def _describe(value: object) -> str:
    """A value as a message shows it: 'text', the number 5, the boolean true, null, a list."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, _Shape):
        return value.description
    if isinstance(value, date):
        return f"the date {value.isoformat()}"
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict | set):
        return "a mapping"
    return f"a {type(value).__name__}"


def _describe_node(value: object, node: Node) -> str:
    """`_describe`, plus a hint when YAML 1.1 turned unquoted text into something else."""
    if not isinstance(node, ScalarNode) or node.style not in (None, ""):  # libyaml marks plain as ""
        return _describe(value)
    raw = str(node.value)
    if value is None and not raw:
        return "nothing (the value is empty)"
    hint = ""
    if isinstance(value, bool):
        hint = f"YAML 1.1 reads an unquoted {raw} as a boolean; quote it"
    elif isinstance(value, int | float) and ":" in raw:
        hint = f"YAML 1.1 reads an unquoted {raw} as a base-60 number; quote it"
    elif isinstance(value, int | float) and raw != str(value):
        hint = f"YAML 1.1 reads an unquoted {raw} as a number; quote it"
    elif isinstance(value, date):
        hint = f"YAML reads an unquoted {raw} as a date; quote it"
    return f"{_describe(value)}: {hint}" if hint else _describe(value)


def _misread_number(node: Node, value: object) -> bool:
    """Whether YAML 1.1 read `value` from digits that are not decimal: 010 (octal 8), 0_10, 0x10, 0b10,
    1:30 (base 60, 90). Every numeric setting is checked with this, so none reads them silently."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    raw = str(node.value).strip()
    return ":" in raw or (isinstance(value, int) and not _DECIMAL.fullmatch(raw.lstrip("-")))


def _tag_problem(node: Node) -> str:
    tag = str(node.tag)
    shown = "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag
    return f"unsupported YAML tag {shown!r}: only plain values are allowed"


class _Parser:
    """One parse of one file: walks the node tree, collecting problems as (line, column, message)."""

    def __init__(
        self,
        text: str,
        path: str,
        base_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        store_overridden: bool = False,
    ) -> None:
        self.text = text
        self.path = path
        self.base_dir = base_dir
        self.env = env
        self.store_overridden = store_overridden
        self.default_nodes: dict[str, Node] = {}
        # The variable names of each `env` mapping by its place ("defaults: env"), valid values or not.
        self.env_names: dict[str, set[str]] = {}
        # Variables a hook set in defaults references and some tasks leave unset: (node, key, message) by
        # place, with the tasks; reported once each, after the tasks.
        self.hook_gaps: dict[tuple[int, str, str], tuple[Node, list[str]]] = {}
        self.problems: list[tuple[int, int, str]] = []
        self.loader: yaml.SafeLoader | yaml.CSafeLoader | None = None
        # Nodes whose tag SafeLoader cannot construct, by id; reported in context when met, else at the end.
        self.bad_nodes: dict[int, Node] = {}
        self.reported_bad: set[int] = set()
        # The (key, key node, value node)s of each mapping merged with `<<`, by id (the node is kept alive).
        self.expanded: dict[int, tuple[Node, list[tuple[str, Node, Node]]]] = {}
        self.walked = 0  # mapping entries and list items walked so far, each alias and merge once per use
        # The top-level `brokers`: name -> (URL as written, its line); None while invalid (already reported).
        self.brokers: dict[str, tuple[str, int]] | None = {}
        self.bad_brokers: set[str] = set()

    # -- reporting ----------------------------------------------------------------------------------------

    def report(self, at: Node | Mark, message: str) -> None:
        mark = at.start_mark if isinstance(at, Node) else at
        self.problems.append((mark.line + 1, mark.column + 1, message))

    def fail(self, at: Node | Mark, message: str) -> NoReturn:
        self.report(at, message)
        raise _Invalid

    def count(self, node: Node, walked: int) -> None:
        """Count `walked` more entries or items; past MAX_CONFIG_NODES, report at `node` and stop parsing."""
        self.walked += walked
        if self.walked > MAX_CONFIG_NODES:
            self.report(
                node,
                f"the file expands to more than {MAX_CONFIG_NODES:,} mapping entries and list items, "
                "counting every use of an alias or a '<<' merge (the limit); use fewer of them",
            )
            raise _TooLarge

    def check_safe(self, node: Node, where: str) -> None:
        """Report and raise `_Invalid` if `node` carries a tag that SafeLoader will not construct."""
        if id(node) in self.bad_nodes:
            self.reported_bad.add(id(node))
            prefix = f"{where}: " if where else ""
            self.fail(node, prefix + _tag_problem(node))

    # -- the document -------------------------------------------------------------------------------------

    def parse(self) -> Config:
        try:
            config = self._document()
        except _TooLarge:
            config = None
        finally:
            self.expanded.clear()
            if self.loader is not None:
                self.loader.dispose()
        for node_id, node in self.bad_nodes.items():
            if node_id not in self.reported_bad:
                self.report(node, _tag_problem(node))
        if self.problems or config is None:
            ordered = sorted(dict.fromkeys(self.problems), key=lambda problem: problem[:2])
            raise ConfigError(
                [f"{self.path}:{line}:{column}: {message}" for line, column, message in ordered]
            )
        return config

    def _document(self) -> Config | None:
        root = self._compose()
        if root is None:
            return None
        self._check_tags(root)
        try:
            self.check_safe(root, "")
        except _Invalid:
            return None
        if not isinstance(root, MappingNode):
            self.report(
                root, f"expected a mapping with a 'tasks' key at the top level, got {self._shape(root)}"
            )
            return None
        top_zone: str | None = DEFAULT_TIMEZONE
        defaults: dict[str, Any] = {}
        failed_defaults: set[str] = set()
        tasks_nodes: list[Node] = []
        store: str | None = None
        store_line: int | None = None
        keep_runs = DEFAULT_KEEP_RUNS
        namespace = ""
        for key, key_node, value_node in self._items(root, "", "key"):
            if key == "timezone":
                try:
                    top_zone = self._timezone(value_node, "timezone")
                except _Invalid:
                    top_zone = None
            elif key == "store":
                try:
                    store, store_line = self._store(value_node, "store"), value_node.start_mark.line + 1
                except _Invalid:
                    pass
            elif key == "keep_runs":
                try:
                    keep_runs = self._keep_runs(value_node, "keep_runs")
                except _Invalid:
                    pass
            elif key == "namespace":
                try:
                    namespace = self._namespace(value_node, "namespace")
                except _Invalid:
                    pass
            elif key == "defaults":
                defaults, failed_defaults = self._defaults(value_node)
            elif key == "brokers":
                self.brokers = self._brokers(value_node)
            elif key == "tasks":
                tasks_nodes.append(value_node)
            else:
                self._unknown_top_key(key, key_node, value_node)
        if not tasks_nodes:
            self.report(root, "missing required key 'tasks' (a mapping of task names to their settings)")
            return None
        # A task's zone: its own, else the defaults', else the top level's (None: that one is invalid).
        task_zone = None if "timezone" in failed_defaults else defaults.get("timezone", top_zone)
        # More than one only when 'tasks' is duplicated, already an error: check them all anyway.
        tasks: dict[str, TaskSpec] | None = None
        for tasks_node in tasks_nodes:
            tasks = self._tasks(tasks_node, defaults, failed_defaults, task_zone)
        for (_, key, message), (node, names) in self.hook_gaps.items():
            self.report(node, f"defaults: {key}: {message} (for {_some_tasks(names)})")
        if tasks is None:
            return None
        return Config(
            path=self.path,
            timezone=top_zone or DEFAULT_TIMEZONE,
            tasks=tasks,
            store=store,
            store_line=store_line,
            keep_runs=keep_runs,
            namespace=namespace,
            brokers={name: url for name, (url, _) in (self.brokers or {}).items()},
        )

    def _compose(self) -> Node | None:
        """The document's node tree; None (with the problem recorded) on a syntax error or an empty file."""
        try:
            self.loader = _Loader(self.text)
            root: Node | None = self.loader.get_single_node()
        except yaml.MarkedYAMLError as error:
            self._syntax_error(error)
            return None
        except ReaderError as error:
            line = self.text.count("\n", 0, error.position) + 1
            column = error.position - (self.text.rfind("\n", 0, error.position) + 1) + 1
            self.problems.append(
                (line, column, f"YAML syntax error: character #x{error.character:04x}: {error.reason}")
            )
            return None
        except yaml.YAMLError as error:
            self.problems.append((1, 1, f"YAML syntax error: {error}"))
            return None
        except RecursionError:
            self.problems.append((1, 1, "YAML syntax error: the document is nested too deeply"))
            return None
        if root is None or (isinstance(root, ScalarNode) and root.tag == _YAML_TAG + "null"):
            self.problems.append((1, 1, "the file is empty; expected a mapping with a 'tasks' key"))
            return None
        return root

    def _syntax_error(self, error: yaml.MarkedYAMLError) -> None:
        mark = error.problem_mark or error.context_mark
        message = f"YAML syntax error: {error.problem or error.context}"
        if error.problem and error.context and not error.context.startswith("while"):
            # "expected a single document in the stream, but found another document"
            message = f"YAML syntax error: {error.context}, {error.problem}"
        elif error.problem and error.context and error.context_mark is not None:
            where = f"line {error.context_mark.line + 1}, column {error.context_mark.column + 1}"
            message += f" ({error.context} at {where})"
        hint = self._syntax_hint(error)
        if hint:
            message += f"; {hint}"
        if mark is None:
            self.problems.append((1, 1, message))
        else:
            self.report(mark, message)

    def _syntax_hint(self, error: yaml.MarkedYAMLError) -> str:
        """What to do about a YAML syntax error, for the mistakes people make most; "" for the others. The
        hints name keys and lines, never a value (it may be a secret). PyYAML's and libyaml's messages differ:
        both are matched."""
        problem, context = error.problem or "", error.context or ""
        lines = self.text.split("\n")
        for hint_mark in (error.context_mark, error.problem_mark):
            if hint_mark is not None:
                char = _before_and_at(lines, hint_mark)[1]
                if char in _QUOTE_HINTS:
                    return _QUOTE_HINTS[char]
        mark = error.problem_mark
        if mark is None:
            return ""
        before, char = _before_and_at(lines, mark)
        if char == "\t":
            if before.strip():
                return "YAML does not allow a tab here: use a space"
            return "YAML does not allow tabs for indentation: indent with spaces"
        if "cannot start any token" in problem and char in _PLAIN_STARTS:
            return f"YAML cannot start a plain value with {char!r}: quote the value"
        if problem.startswith("mapping values are not allowed"):
            return self._colon_hint(lines, mark.line, before)
        if "quoted scalar" in context and "end of stream" in problem:
            return "a quoted value is never closed: add its closing quote (or quote it with the other kind)"
        if before.rstrip().endswith(("'", '"')) and "expected" in problem:
            return (
                "text follows a closing quote: quote the whole value (inside '...' write '' for a ', "
                'inside "..." write \\" for a ")'
            )
        if "sequence entries are not allowed" in problem:
            return (
                "a list item ('- ') starts a line of its own, under its key; quote the value if '-' is text"
            )
        if context.startswith("while parsing a flow") and error.context_mark is not None:
            opened = _before_and_at(lines, error.context_mark)[1]
            closing = {"[": "]", "{": "}"}.get(opened, "")
            where = f"line {error.context_mark.line + 1}"
            return (
                f"the {opened!r} on {where} is never closed with {closing!r}; quote the value if it is text"
            )
        if "block scalar" in context:
            return "'|' and '>' start a block of text on the lines below; quote the value if it is text"
        if "expected" in problem and not before.strip():
            return "this line's indentation does not match the lines above: keys of one mapping line up"
        return ""

    def _colon_hint(self, lines: list[str], index: int, before: str) -> str:
        """For 'mapping values are not allowed here': a ': ' inside a plain value, or a line that YAML read
        as more of the line above."""
        key, separator, _ = before.partition(": ")
        key = key.strip().removeprefix("- ").strip()
        if separator:
            if _SIMPLE_KEY.fullmatch(key):
                return (
                    f"the value of {key!r} contains ': ', which YAML reads as another key; quote the whole "
                    f'value, e.g. {key}: "..."'
                )
            return "a value contains ': ', which YAML reads as another key; quote the whole value"
        above = next((i for i in range(index - 1, -1, -1) if lines[i].strip()), None)
        if above is None:
            return ""
        previous = lines[above]
        if ": " not in previous and not previous.rstrip().endswith(":"):
            return (
                f"line {above + 1} has no 'key: value' (a ':' then a space), so YAML reads line {index + 1} "
                f"as more of its text"
            )
        if len(lines[index]) - len(lines[index].lstrip()) > len(previous) - len(previous.lstrip()):
            return f"line {index + 1} is indented more than line {above + 1}: keys of one mapping line up"
        return ""

    def _check_tags(self, root: Node) -> None:
        """Find every node whose tag SafeLoader cannot construct (e.g. !!python/object), anywhere."""
        if "!" not in self.text and "<<" not in self.text:
            return  # only an explicit tag or a misplaced merge key can carry such a tag: skip the walk
        seen: set[int] = set()
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, is_key = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.tag not in _SAFE_TAGS and not (is_key and node.tag == _MERGE_TAG):
                self.bad_nodes[id(node)] = node
            elif isinstance(node, SequenceNode):
                stack.extend((item, False) for item in reversed(node.value))
            elif isinstance(node, MappingNode):
                for key_node, value_node in reversed(node.value):
                    stack.extend([(value_node, False), (key_node, True)])

    def _unknown_top_key(self, key: str, key_node: Node, value_node: Node) -> None:
        hint = _did_you_mean(key, _TOP_KEYS)
        if not hint and key in _DEFAULTS_KEYS:
            hint = " (a task setting: set it in a task, or under 'defaults:' for every task)"
        if not hint and isinstance(value_node, MappingNode):
            names = {str(k.value) for k, _ in value_node.value if isinstance(k, ScalarNode)}
            if names & set(_REQUIRED_KEYS):
                hint = " (tasks go under 'tasks:')"
        self.report(key_node, f"unknown key {_quote(key)}{hint}")

    # -- mappings -----------------------------------------------------------------------------------------

    def _items(
        self, node: MappingNode, where: str, noun: str, seen: frozenset[int] = frozenset()
    ) -> list[tuple[str, Node, Node]]:
        """A mapping's (key, key node, value node)s with `<<` merges applied.

        A duplicate key is reported but still returned, so that its value gets checked too. As in YAML's
        merge-key convention, the mapping's own keys win over merged ones without complaint.
        """
        prefix = f"{where}: " if where else ""
        own: list[tuple[str, Node, Node]] = []
        first_lines: dict[str, int] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                for source in self._merge_sources(value_node, where):
                    if id(source) in seen:
                        continue
                    # Each merged mapping is expanded once: aliases to mappings that merge the one before
                    # twice would otherwise cost 2**depth (a 600-byte file, a minute).
                    expanded = self.expanded.get(id(source))
                    if expanded is None:
                        expanded = (source, self._items(source, where, noun, seen | {id(node)}))
                        self.expanded[id(source)] = expanded
                    for key, source_key, source_value in expanded[1]:
                        merged.setdefault(key, (source_key, source_value))
                continue
            try:
                self.check_safe(key_node, where)
            except _Invalid:
                continue
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, f"{prefix}expected a plain text key, got {self._shape(key_node)}")
                continue
            key = str(key_node.value)
            if key in first_lines:
                message = f"duplicate {noun} {_quote(key)} (first defined on line {first_lines[key]})"
                self.report(key_node, prefix + message)
            else:
                first_lines[key] = key_node.start_mark.line + 1
            own.append((key, key_node, value_node))
        items = [(key, *nodes) for key, nodes in merged.items() if key not in first_lines]
        self.count(node, len(items) + len(own))
        return items + own

    def _merge_sources(self, node: Node, where: str) -> list[MappingNode]:
        """The mappings a `<<` key merges: one mapping or a list of them."""
        prefix = f"{where}: " if where else ""
        try:
            self.check_safe(node, f"{prefix}<<")
        except _Invalid:
            return []
        if isinstance(node, MappingNode):
            return [node]
        if isinstance(node, SequenceNode) and all(isinstance(item, MappingNode) for item in node.value):
            return list(node.value)
        self.report(node, f"{prefix}<<: expected a mapping or a list of mappings to merge")
        return []

    def _mapping(self, node: Node, where: str, expected: str) -> MappingNode:
        self.check_safe(node, where)
        if isinstance(node, MappingNode):
            return node
        self.fail(node, f"{where}: expected {expected}, got {self._shape(node)}")

    # -- defaults and tasks -------------------------------------------------------------------------------

    def _defaults(self, node: Node) -> tuple[dict[str, Any], set[str]]:
        """The defaults' parsed values by TaskSpec field name, and the keys whose value was invalid."""
        values: dict[str, Any] = {}
        failed: set[str] = set()
        try:
            mapping = self._mapping(node, "defaults", "a mapping of task settings")
        except _Invalid:
            return values, set(_DEFAULTS_KEYS)
        for key, key_node, value_node in self._items(mapping, "defaults", "key"):
            if key in _REQUIRED_KEYS:
                self.report(key_node, f"defaults: {key!r} cannot have a default; set it in each task")
            elif key not in _DEFAULTS_KEYS:
                guess = _suggest_key(key, _DEFAULTS_KEYS)
                hint = f" (did you mean {_quote(guess)}?)" if guess else _top_only_hint(key)
                self.report(key_node, f"defaults: unknown key {_quote(key)}{hint}")
            else:
                self.default_nodes[key] = value_node
                try:
                    values[key] = self._setting(key, value_node, f"defaults: {key}")
                except _Invalid:
                    failed.add(key)
        return values, failed

    def _tasks(
        self, node: Node, defaults: dict[str, Any], failed_defaults: set[str], zone: str | None
    ) -> dict[str, TaskSpec] | None:
        try:
            mapping = self._mapping(
                node, "tasks", "a mapping of task names to their settings (tasks: {} for none)"
            )
        except _Invalid:
            return None
        tasks: dict[str, TaskSpec] = {}
        items: list[tuple[str, Node, Node] | None] = list(self._items(mapping, "", "task"))
        # Let each task's nodes go once it is built, so that the specs reuse their memory: the parse's
        # peak (the whole node tree plus all the specs) would otherwise stay as the clock's footprint.
        mapping.value = []
        for index, item in enumerate(items):
            assert item is not None
            items[index] = None
            name, key_node, value_node = item
            task = self._task(name, key_node, value_node, defaults, failed_defaults, zone)
            del item, key_node, value_node
            if task is not None:
                tasks[name] = task
        return tasks

    def _task(
        self,
        name: str,
        key_node: Node,
        node: Node,
        defaults: dict[str, Any],
        failed_defaults: set[str],
        default_zone: str | None,
    ) -> TaskSpec | None:
        """One task's spec, or None when any of its settings (or a default it relies on) is invalid."""
        where = f"task {_quote(name)}"
        valid = True
        if not _TASK_NAME.fullmatch(name):
            self.report(
                key_node,
                f"{where}: invalid task name: "
                "use letters, digits, '-', '_' and '.', starting with a letter or digit",
            )
            valid = False
        try:
            mapping = self._mapping(node, where, "a mapping of settings like schedule and command")
        except _Invalid:
            return None
        values: dict[str, Any] = {}
        value_nodes: dict[str, Node] = {}
        suggested: set[str] = set()
        for key, setting_key_node, value_node in self._items(mapping, where, "key"):
            if key not in _TASK_KEYS:
                guess = _suggest_key(key, _TASK_KEYS)
                hint = f" (did you mean {_quote(guess)}?)" if guess else _top_only_hint(key)
                self.report(setting_key_node, f"{where}: unknown key {_quote(key)}{hint}")
                suggested.add(guess or "")
                valid = False
                continue
            value_nodes[key] = value_node
            try:
                values[key] = self._setting(key, value_node, f"{where}: {key}")
            except _Invalid:
                valid = False
        for key in _REQUIRED_KEYS:
            if key not in value_nodes and key not in _ACTIONS:
                # A misspelt 'comand' is reported once, as an unknown key with its suggestion.
                if key not in suggested:
                    self.report(key_node, f"{where}: missing required key {key!r}")
                valid = False
        if not self._one_action(where, key_node, value_nodes, suggested):
            valid = False
        if not self._retry_delays_agree(where, key_node, values, value_nodes, defaults, failed_defaults):
            valid = False
        if not self._hooks_have_their_variables(name, values, value_nodes, defaults):
            valid = False
        # The schedule is checked whenever its text is known, even if other settings are bad. With an unknown
        # zone (already reported) it is read in UTC: no schedule error depends on the zone.
        zone = values.get("timezone") if "timezone" in value_nodes else default_zone
        if "schedule" not in values:
            return None
        try:
            schedule = schedule_module.parse(values["schedule"], name=name, zone=ZoneInfo(zone or "UTC"))
        except (ScheduleError, ValueError) as error:
            self.report(value_nodes["schedule"], f"{where}: schedule: {error}")
            return None
        if not valid or zone is None or failed_defaults - values.keys():
            return None
        settings = {**defaults, **values, "env": {**defaults.get("env", {}), **values.get("env", {})}}
        del settings["schedule"]
        settings["timezone"] = zone
        settings.setdefault("command", ())
        fields = {_SETTINGS[key].field: value for key, value in settings.items()}
        return TaskSpec(name=name, schedule=schedule, line=key_node.start_mark.line + 1, **fields)

    def _hooks_have_their_variables(
        self, name: str, values: dict[str, Any], value_nodes: dict[str, Node], defaults: dict[str, Any]
    ) -> bool:
        """False, with the problems reported, when a string hook's `${NAME}` names a variable that neither
        the environment (set, not empty), nor the task's `env`, nor the hook's SCHEDULER_* variables, nor
        the shell itself gives it. Only `${NAME}` with braces is checked: a shell variable written `$NAME`
        is left alone. A hook from defaults is reported once, at its line, with the tasks that lack it."""
        own_env = self.env_names.pop(f"task {_quote(name)}: env", set()) if "env" in value_nodes else set()
        if self.env is None:
            return True
        ok = True
        for key in ("on_success", "on_failure"):
            hook = values[key] if key in values else None if key in value_nodes else defaults.get(key)
            if not isinstance(hook, str) or "${" not in hook:
                continue
            known = {*self.env_names.get("defaults: env", ()), *own_env, *_HOOK_VARIABLES, *_SHELL_VARIABLES}
            for message in self._unset(hook, known | _shell_assigned(hook)):
                ok = False
                if key in value_nodes:
                    self.report(value_nodes[key], f"task {_quote(name)}: {key}: {message}")
                else:
                    node = self.default_nodes[key]
                    self.hook_gaps.setdefault((id(node), key, message), (node, []))[1].append(name)
        return ok

    def _unset(self, text: str, known: Iterable[str] = ()) -> list[str]:
        """A message for each `${NAME}` in `text` (not in `known`) that the environment leaves unset or
        empty; none without an environment. Only the name is shown: the value may be a secret."""
        if self.env is None:
            return []
        skip = set(known)
        messages = []
        for name in dict.fromkeys(ENV_REFERENCE.findall(text)):
            value = self.env.get(name)
            if name not in skip and not value:
                messages.append(f"environment variable {name} is {'empty' if value == '' else 'not set'}")
        return messages

    def _check_set(self, node: Node, where: str, text: str) -> None:
        """Report each `${NAME}` in `text` that the environment leaves unset or empty, and if there is one,
        raise _Invalid."""
        messages = self._unset(text)
        for message in messages:
            self.report(node, f"{where}: {message}")
        if messages:
            raise _Invalid

    def _retry_delays_agree(
        self,
        where: str,
        key_node: Node,
        values: dict[str, Any],
        value_nodes: dict[str, Node],
        defaults: dict[str, Any],
        failed_defaults: set[str],
    ) -> bool:
        """False, with the problem reported, when a task that retries has a retry_max_delay shorter than its
        retry_delay. Checked per task once defaults apply: either may come from defaults, and retries may
        be off for some tasks. Reported at the task's own setting if it has one, else at its name."""
        effective: dict[str, Any] = {}
        for key in ("retries", "retry_delay", "retry_max_delay"):
            if key in values:
                effective[key] = values[key]
            elif key in value_nodes or key in failed_defaults:
                return True  # an invalid value, already reported
            else:
                effective[key] = defaults.get(key, _SETTINGS[key].default)
        delay, most = effective["retry_delay"], effective["retry_max_delay"]
        if effective["retries"] == 0 or most >= delay:
            return True
        own = [
            value_nodes[key] for key in ("retry_max_delay", "retry_delay", "retries") if key in value_nodes
        ]
        self.report(
            own[0] if own else key_node,
            f"{where}: retry_max_delay ({format_duration(most)}) is shorter than retry_delay "
            f"({format_duration(delay)})",
        )
        return False

    def _one_action(
        self, where: str, key_node: Node, value_nodes: dict[str, Node], suggested: set[str]
    ) -> bool:
        """A task has `command` or `enqueue`: exactly one. False, with the problem reported, otherwise."""
        given = [key for key in _ACTIONS if key in value_nodes]
        if len(given) > 1:
            self.report(
                value_nodes["enqueue"], f"{where}: a task has either 'command' or 'enqueue', not both"
            )
            return False
        if not given:
            if not suggested & set(_ACTIONS):  # a misspelt one was reported with its suggestion
                # Worded as before `enqueue` existed: `command` is what most tasks lack.
                self.report(key_node, f"{where}: missing required key 'command'")
            return False
        return True

    def _setting(self, key: str, node: Node, where: str) -> Any:
        """The parsed value of one task setting (schedule is returned as text: it needs the zone)."""
        return _SETTINGS[key].parse(self, node, where)

    def _boolean(self, node: Node, where: str) -> bool:
        value = self._value(node, where)
        if isinstance(value, bool):
            return value
        self.fail(node, f"{where}: expected true or false, got {_describe(value)}")

    # -- values -------------------------------------------------------------------------------------------

    def _value(self, node: Node, where: str, *, secret: bool = False) -> object:
        """A scalar node's Python value, or a `_Shape` for a list or mapping node. A `secret` value is never
        shown in an error."""
        self.check_safe(node, where)
        if isinstance(node, SequenceNode):
            return _A_LIST
        if isinstance(node, MappingNode):
            return _A_MAPPING
        assert self.loader is not None
        try:
            value = self.loader.construct_object(node, deep=True)
            # The loader memoizes by node, which would keep every node alive to the end of the parse.
            self.loader.constructed_objects.pop(node, None)
            return value
        except (yaml.YAMLError, ValueError, OverflowError) as error:
            # e.g. an unquoted 2024-02-30 matches YAML's date pattern but is no date.
            prefix = f"{where}: " if where else ""
            shown = "the value" if secret else _quote(str(node.value))
            self.fail(node, f"{prefix}cannot read {shown} ({error}); quote it")

    def _shape(self, node: Node) -> str:
        try:
            return _describe_node(self._value(node, ""), node)
        except _Invalid:
            return "an invalid value"

    def _string(self, node: Node, where: str, expected: str, *, hints: bool = True) -> str:
        value = self._value(node, where)
        if isinstance(value, str):
            return value
        shown = _describe_node(value, node) if hints else _describe(value)
        self.fail(node, f"{where}: expected {expected}, got {shown}")

    def _os_string(self, node: Node, where: str, expected: str, *, secret: bool = False) -> str:
        """A non-empty string that goes to the OS as a path, so has no NUL character. A `secret` one is
        never shown."""
        value = self._string(node, where, expected)
        if not value.strip():
            self.fail(node, f"{where}: expected {expected}, got an empty string")
        if "\0" in value:
            self.fail(node, f"{where}: {'the value' if secret else _quote(value)} contains a NUL character")
        return value

    def _store(self, node: Node, where: str) -> str:
        """The store URL as written; `${NAME}` references are checked for form, never expanded. Errors show
        it with its password as *** (its query too), as it may hold one."""
        value = self._url(node, where, _STORE_FORMS)
        if "${" not in value and not value.startswith(_STORE_SCHEMES):
            self.fail(node, f"{where}: expected {_STORE_FORMS}, got {_shown_url(value, keep_path=True)}")
        if not self.store_overridden:
            self._check_set(node, where, value)
        return value

    def _brokers(self, node: Node) -> dict[str, tuple[str, int]] | None:
        """The top-level `brokers`: name -> (URL as written, its line). A broker whose URL is invalid is
        left out (its problem reported) and remembered, so that the tasks naming it add no problem of their
        own; None when `brokers` is no mapping at all."""
        try:
            mapping = self._mapping(
                node, "brokers", "a mapping of broker names to URLs, like redis: ${REDIS_URL}"
            )
        except _Invalid:
            return None
        brokers: dict[str, tuple[str, int]] = {}
        for name, key_node, value_node in self._items(mapping, "brokers", "broker"):
            try:
                if not _TASK_NAME.fullmatch(name):
                    self.fail(
                        key_node,
                        f"brokers: invalid broker name {_quote(name)}: "
                        "use letters, digits, '-', '_' and '.', starting with a letter or digit",
                    )
                url = self._url(value_node, f"brokers: {name}", _BROKER_FORMS)
                scheme = _scheme(url)
                if scheme is not None and scheme not in _BROKER_SCHEMES:
                    shown = _shown_url(url, keep_path=True)
                    self.fail(value_node, f"brokers: {name}: expected {_BROKER_FORMS}, got {shown}")
                brokers[name] = (url, value_node.start_mark.line + 1)
            except _Invalid:
                self.bad_brokers.add(name)
        return brokers

    def _enqueue(self, node: Node, where: str) -> Enqueue:
        """A task's `enqueue` mapping: `to` first, since the other keys' meaning depends on it; then the
        broker, named or the only one there is; then the options of that backend, each from the table."""
        mapping = self._mapping(
            node, where, "a mapping with 'to' and 'job', like {to: sidekiq, job: ReportJob}"
        )
        items = self._items(mapping, where, "key")
        to_nodes = [value_node for key, _, value_node in items if key == "to"]
        to: str | None = None
        valid = True
        if not to_nodes:
            self.report(mapping, f"{where}: missing required key 'to' (one of {', '.join(BACKENDS)})")
            valid = False
        else:
            try:
                to = self._choice(to_nodes[0], f"{where}: to", BACKENDS)
            except _Invalid:
                valid = False
        values: dict[str, Any] = {}
        given: dict[str, Node] = {}
        for key, key_node, value_node in items:
            if key == "to":
                continue
            setting = _ENQUEUE_BY_KEY.get(key)
            if setting is None:
                self.report(
                    key_node, f"{where}: unknown key {_quote(key)}{_did_you_mean(key, _ENQUEUE_KEYS)}"
                )
                valid = False
                continue
            given[key] = value_node
            if to is not None and to not in setting.backends:
                owners = " and ".join(setting.backends)
                self.report(key_node, f"{where}: {key!r} is an option of {owners}, not of {to}")
                valid = False
                continue
            try:
                values[setting.field] = setting.parse(self, value_node, f"{where}: {key}")
            except _Invalid:
                valid = False
        if "job" not in given:
            self.report(
                mapping, f"{where}: missing required key 'job' ({_JOB_FORMS.get(to or '', 'the job')})"
            )
            valid = False
        elif to is not None and "job" in values and not _JOB_NAMES[to].fullmatch(values["job"]):
            self.report(given["job"], f"{where}: job: expected {_JOB_FORMS[to]}, got {_quote(values['job'])}")
            valid = False
        broker = self._task_broker(mapping, given.get("broker"), values.get("broker"), to, where)
        if not valid or broker is None or to is None:
            raise _Invalid
        name, (url, line) = broker
        values.update(broker=name, url=url, url_line=line)
        return Enqueue(to=to, **values)  # type: ignore[arg-type]

    def _task_broker(
        self, mapping: Node, node: Node | None, name: str | None, to: str | None, where: str
    ) -> tuple[str, tuple[str, int]] | None:
        """The broker an `enqueue` names, or the only one; None with the problem reported (or already
        reported, when the broker itself is invalid)."""
        if self.brokers is None or (name is None and node is not None):
            return None  # `brokers` is invalid, or the task's `broker` value is: both reported
        known = self.brokers
        if name is None:
            names = sorted({*known, *self.bad_brokers})
            if len(names) == 1:
                name = names[0]
            elif not names:
                self.report(
                    mapping,
                    f"{where}: no broker to send to: add a top-level 'brokers:' mapping, "
                    "like brokers: {redis: ${REDIS_URL}}",
                )
                return None
            else:
                self.report(mapping, f"{where}: which broker? add broker: with one of {', '.join(names)}")
                return None
        if name in self.bad_brokers:
            return None
        if name not in known:
            assert node is not None
            hint = _did_you_mean(name, known)
            listed = ", ".join(sorted(known)) or "none"
            self.report(node, f"{where}: broker: unknown broker {_quote(name)}{hint}; brokers: {listed}")
            return None
        url, line = known[name]
        scheme = _scheme(url)
        if to in ("sidekiq", "rq") and scheme is not None and scheme not in _REDIS_SCHEMES:
            self.report(
                node or mapping,
                f"{where}: broker {name!r} is {scheme}://, but {to} reads its jobs from Redis "
                "(redis://, rediss:// or unix://)",
            )
            return None
        return name, (url, line)

    def _choice(self, node: Node, where: str, choices: tuple[str, ...]) -> str:
        expected = "one of " + ", ".join(choices)
        value = self._string(node, where, expected, hints=False)
        if value not in choices:
            self.fail(
                node, f"{where}: expected {expected}, got {_quote(value)}{_did_you_mean(value, choices)}"
            )
        return value

    def _name(self, node: Node, where: str) -> str:
        """A queue, routing key or exchange name: a non-empty string without NUL or surrounding blanks."""
        value = self._string(node, where, "a name")
        if not value.strip() or value != value.strip() or "\0" in value:
            self.fail(node, f"{where}: expected a name, got {_quote(value)}")
        return value

    def _sidekiq_retry(self, node: Node, where: str) -> bool | int:
        value = self._value(node, where)
        if isinstance(value, bool):
            return value
        return int(self._number(node, where, _SIDEKIQ_RETRY_FORM, 0, MAX_SIDEKIQ_RETRY, whole=True))

    def _json(self, node: Node, where: str) -> Any:
        """A value sent as JSON (a job's arguments, a header): strings, numbers, booleans, null, lists and
        mappings of them. Arguments may be secrets: errors say what is wrong, never the value."""
        self.check_safe(node, where)
        if isinstance(node, SequenceNode):
            self.count(node, len(node.value))
            return [self._json(item, f"{where}[{index}]") for index, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            return {
                key: self._json(value, f"{where}: {key}") for key, _, value in self._items(node, where, "key")
            }
        value = self._value(node, where, secret=True)
        if _misread_number(node, value):
            self._not_decimal(node, value, where, "a number in decimal digits")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(node, f"{where}: JSON has no {value}; quote it to send a string")
        if value is None or isinstance(value, str | int | float):
            return value
        if isinstance(value, date):
            self.fail(
                node, f"{where}: a date: YAML reads an unquoted date as one, and JSON has none; quote it"
            )
        self.fail(
            node,
            f"{where}: expected a string, number, boolean, null, list or mapping, got {_describe(value)}",
        )

    def _json_list(self, node: Node, where: str) -> tuple[Any, ...]:
        if not isinstance(node, SequenceNode):
            self.check_safe(node, where)
            self.fail(
                node, f'{where}: expected a list of arguments, like [42, "eu"], got {self._shape(node)}'
            )
        return tuple(self._json(node, where))

    def _json_mapping(self, node: Node, where: str) -> dict[str, Any]:
        mapping = self._mapping(node, where, "a mapping of names to values")
        result: dict[str, Any] = self._json(mapping, where)
        return result

    def _ping_url(self, node: Node, where: str) -> str:
        """The ping URL as written. Only its text before the first `${` is checked for a scheme, so that a
        reference may supply the whole URL (`${PING_URL}`) or its scheme. Errors show its scheme and host
        only: the path holds the check's key."""
        value = self._url(node, where, _PING_URL_FORMS)
        before = value.partition("${")[0]
        if not any(before.startswith(scheme) or scheme.startswith(before) for scheme in _PING_SCHEMES):
            self.fail(node, f"{where}: expected {_PING_URL_FORMS}, got {_shown_url(value, keep_path=False)}")
        self._check_set(node, where, value)
        return value

    def _url(self, node: Node, where: str, expected: str) -> str:
        """A non-empty string without NUL whose `${NAME}` references are well formed; never expanded."""
        value = self._os_string(node, where, expected, secret=True)
        if "${" in value:
            self._check_references(value, node, where)
        return value

    def _check_references(self, value: str, node: Node, where: str, *, escape: str = "") -> None:
        """Each `${` in `value` must open a `${NAME}` reference: no defaults, no nesting. The value may hold
        a secret: errors show the reference only, and not even that if it holds more than a name might.
        `escape` is added to the message, to say how to write a literal `${` where there is a way."""
        start = value.find("${")
        while start != -1:
            end = value.find("}", start + 2)
            if end == -1:
                self.fail(node, f"{where}: unclosed '${{'; write ${{NAME}}")
            if not _ENV_NAME.fullmatch(value[start + 2 : end]):
                written = value[start : end + 1]
                reference = _quote(written) if _PLAIN_REFERENCE.fullmatch(written) else "'${...}'"
                self.fail(
                    node,
                    f"{where}: invalid variable reference {reference}: "
                    f"write ${{NAME}}, with letters, digits and '_', not starting with a digit{escape}",
                )
            start = value.find("${", end + 1)

    def _namespace(self, node: Node, where: str) -> str:
        value = self._string(node, where, _NAMESPACE_FORM)
        if not value:
            self.fail(node, f"{where}: expected {_NAMESPACE_FORM}, got an empty string")
        if not _NAMESPACE.fullmatch(value):
            self.fail(node, f"{where}: expected {_NAMESPACE_FORM}, got {_quote(value)}")
        return value

    def _keep_runs(self, node: Node, where: str) -> int:
        return int(self._number(node, where, _KEEP_RUNS_FORM, 1, MAX_KEEP_RUNS, whole=True))

    def _number(
        self, node: Node, where: str, expected: str, least: float, most: float, *, whole: bool
    ) -> int | float:
        """A number from `least` to `most` (an int if `whole`), never a bool or a numeric string."""
        value = self._value(node, where)
        if isinstance(value, str) and (_DECIMAL if whole else _NUMBER).fullmatch(value.strip()):
            hint = " (write it without quotes)"
            self.fail(node, f"{where}: expected {expected}, got {_quote(value)}{hint}")
        if _misread_number(node, value):
            self._not_decimal(node, value, where, expected)
        if not isinstance(value, int if whole else int | float) or isinstance(value, bool):
            # No quoting hint for an unquoted yes: quoted, it is no number either.
            shown = _describe_node(value, node) if value is None else _describe(value)
            self.fail(node, f"{where}: expected {expected}, got {shown}")
        if not least <= value <= most:
            self.fail(node, f"{where}: expected {expected}, got {_describe(value)}")
        return value

    def _not_decimal(self, node: Node, value: object, where: str, expected: str) -> NoReturn:
        """A number YAML 1.1 read from octal, hex, binary or base-60 digits: a quoting hint would not help
        (quoted, 010 is still no decimal), so say how it was read and ask for decimal digits."""
        raw = str(node.value).strip()
        self.fail(
            node,
            f"{where}: expected {expected}, got {raw}, which YAML 1.1 reads as the number {value}; "
            "write it in decimal digits",
        )

    def _timezone(self, node: Node, where: str) -> str:
        key = self._string(node, where, "an IANA time zone name like Europe/London")
        try:
            ZoneInfo(key)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            self.fail(node, f"{where}: unknown time zone {_quote(key)}{_did_you_mean(key, _zone_names())}")
        return key

    def _duration(
        self, node: Node, where: str, *, positive: bool, allow_none: bool, most: float = MAX_DURATION_S
    ) -> float | None:
        value = self._value(node, where)
        if allow_none and (
            value is None
            or value is False
            or (isinstance(value, str) and value.strip().lower() in ("none", "off"))
        ):
            return None
        if isinstance(value, int | float) and not isinstance(value, bool) and ":" in str(node.value):
            self.fail(node, f"{where}: expected {_DURATION_FORMS}, got {_describe_node(value, node)}")
        if _misread_number(node, value):
            self._not_decimal(node, value, where, _DURATION_FORMS)
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            self.fail(node, f"{where}: {error}")
        if positive and seconds == 0:
            hint = " (write none for no timeout)" if allow_none else ""
            self.fail(node, f"{where}: must be more than 0{hint}")
        if seconds > most:
            self.fail(node, f"{where}: must be at most {most:g}s, got {_describe(value)}")
        return seconds

    def _overlap(self, node: Node, where: str) -> str:
        return self._choice(node, where, _OVERLAPS)

    def _command(self, node: Node, where: str) -> str | tuple[str, ...]:
        """A string (run through the shell) or a non-empty list of arguments (run directly)."""
        self.check_safe(node, where)
        if isinstance(node, SequenceNode):
            if not node.value:
                self.fail(node, f"{where}: the list is empty; give the program, then its arguments")
            self.count(node, len(node.value))
            args: list[str] = []
            valid = True
            for index, item in enumerate(node.value):
                try:
                    args.append(self._argument(item, f"{where}[{index}]"))
                except _Invalid:
                    valid = False
            if not valid:
                raise _Invalid
            if not args[0].strip():
                self.fail(node.value[0], f"{where}[0]: the program name is empty")
            return tuple(args)
        value = self._value(node, where)
        if not isinstance(value, str):
            expected = "a string (run through the shell) or a list of arguments (run directly)"
            self.fail(node, f"{where}: expected {expected}, got {_describe_node(value, node)}")
        if not value.strip():
            self.fail(node, f"{where}: the command is empty")
        if "\0" in value:
            self.fail(node, f"{where}: the command contains a NUL character")
        return value.strip()

    def _argument(self, node: Node, where: str) -> str:
        value = self._value(node, where)
        if isinstance(value, int | float) and not isinstance(value, bool):
            # The text as written: an unquoted 0755 stays "0755", not YAML 1.1's octal 493.
            return str(node.value)
        if not isinstance(value, str):
            self.fail(node, f"{where}: expected a string or a number, got {_describe_node(value, node)}")
        if "\0" in value:
            self.fail(node, f"{where}: the argument contains a NUL character")  # it may be a password
        return value

    def _env(self, node: Node, where: str) -> dict[str, str]:
        mapping = self._mapping(node, where, "a mapping of variable names to values")
        env: dict[str, str] = {}
        valid = True
        items = self._items(mapping, where, "variable")
        self.env_names[where] = {name for name, _, _ in items}
        for name, key_node, value_node in items:
            try:
                if not _ENV_NAME.fullmatch(name):
                    self.fail(
                        key_node,
                        f"{where}: invalid variable name {_quote(name)}: "
                        "use letters, digits and '_', not starting with a digit",
                    )
                env[name] = self._env_value(value_node, f"{where}: {name}")
            except _Invalid:
                valid = False
        if not valid:
            raise _Invalid
        return env

    def _env_value(self, node: Node, where: str) -> str:
        """A variable's value. It may be a secret: errors say what is wrong, never what the value is."""
        value = self._value(node, where, secret=True)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            # The text as written: an unquoted 0755 stays "0755", not YAML 1.1's octal 493.
            return str(node.value)
        if not isinstance(value, str):
            if value is None:
                shown = _describe_node(value, node) + " (write '' for an empty value)"
            elif isinstance(value, date):
                shown = "a date: YAML reads an unquoted date as one; quote it"
            else:
                shown = _describe(value)  # a list, a mapping or binary data
            self.fail(node, f"{where}: expected a string, number or boolean, got {shown}")
        if "\0" in value:
            self.fail(node, f"{where}: the value contains a NUL character")
        if "${" in value:
            # ${NAME} is filled in from the environment; $${ is a literal ${.
            unescaped = value.replace("$${", "")
            self._check_references(unescaped, node, where, escape=" (or $${ for a literal ${)")
            if self.env is not None:
                self._check_set(node, where, unescaped)
                env = self.env
                value = _ENV_VALUE_PART.sub(lambda m: env[m[1]] if m[1] else "${", value)
        return value

    def _cwd(self, node: Node, where: str) -> str:
        value = self._os_string(node, where, "a folder path")
        if value.startswith("~"):
            self.fail(
                node,
                f"{where}: {_quote(value)}: '~' is not expanded; "
                "write an absolute path or one relative to the config file's folder",
            )
        folder = Path(value)
        return str(folder if folder.is_absolute() else self.base_dir / folder)


_Parse = Callable[[_Parser, Node, str], Any]


@dataclass(frozen=True, slots=True)
class _Setting:
    """One task key: the TaskSpec field it sets, how its value is parsed, and (from TaskSpec) its default."""

    key: str
    field: str
    parse: _Parse
    required: bool = False

    @property
    def default(self) -> Any:
        spec_field = _SPEC_FIELDS[self.field]
        if spec_field.default_factory is not dataclasses.MISSING:
            return spec_field.default_factory()
        return spec_field.default


def _duration_setting(*, positive: bool, allow_none: bool = False, most: float = MAX_DURATION_S) -> _Parse:
    return lambda parser, node, where: parser._duration(
        node, where, positive=positive, allow_none=allow_none, most=most
    )


_SPEC_FIELDS = {spec_field.name: spec_field for spec_field in dataclasses.fields(TaskSpec)}
_SCHEDULE_FORM = "a schedule like \"0 9 * * MON-FRI\" or 'every 10 minutes'"
# Every task key, in the order the README lists them. Adding a setting: a TaskSpec field, and a line here.
_TASK_SETTINGS = (
    _Setting("schedule", "schedule", lambda p, n, w: p._string(n, w, _SCHEDULE_FORM), required=True),
    _Setting("command", "command", _Parser._command, required=True),
    _Setting("timezone", "timezone", _Parser._timezone),
    _Setting("timeout", "timeout_s", _duration_setting(positive=True, allow_none=True)),
    _Setting("overlap", "overlap", _Parser._overlap),
    _Setting("grace", "grace_s", _duration_setting(positive=False)),
    _Setting("jitter", "jitter_s", _duration_setting(positive=False)),
    _Setting("env", "env", _Parser._env),
    _Setting("cwd", "cwd", _Parser._cwd),
    _Setting("shell", "shell", lambda p, n, w: p._os_string(n, w, "a shell path like /bin/bash")),
    _Setting("kill_grace", "kill_grace_s", _duration_setting(positive=True)),
    _Setting("enabled", "enabled", _Parser._boolean),
    _Setting("catch_up", "catch_up", _Parser._boolean),
    _Setting("require_store", "require_store", _Parser._boolean),
    _Setting("store_output", "store_output", _Parser._boolean),
    _Setting("ping_url", "ping_url", _Parser._ping_url),
    _Setting("ping_exit_code", "ping_exit_code", _Parser._boolean),
    _Setting("ping_timeout", "ping_timeout_s", _duration_setting(positive=True, most=MAX_PING_TIMEOUT_S)),
    _Setting("on_failure", "on_failure", _Parser._command),
    _Setting("on_success", "on_success", _Parser._command),
    _Setting("hook_timeout", "hook_timeout_s", _duration_setting(positive=True)),
    _Setting(
        "retries", "retries", lambda p, n, w: p._number(n, w, _RETRIES_FORM, 0, MAX_RETRIES, whole=True)
    ),
    _Setting("retry_delay", "retry_delay_s", _duration_setting(positive=False)),
    _Setting(
        "retry_backoff",
        "retry_backoff",
        lambda p, n, w: float(p._number(n, w, _RETRY_BACKOFF_FORM, 1, MAX_RETRY_BACKOFF, whole=False)),
    ),
    _Setting("retry_max_delay", "retry_max_delay_s", _duration_setting(positive=True)),
    # Required in the sense that defaults cannot set it: a task has it or `command` (_ACTIONS).
    _Setting("enqueue", "enqueue", _Parser._enqueue, required=True),
)
_SETTINGS = {setting.key: setting for setting in _TASK_SETTINGS}


@dataclass(frozen=True, slots=True)
class _EnqueueSetting:
    """One key of a task's `enqueue`: the Enqueue field it sets, how it is parsed, and the backends that
    take it (any other backend's task naming it is an error, not an option silently ignored)."""

    key: str
    field: str
    parse: _Parse
    backends: tuple[str, ...] = BACKENDS


_JSON_VALUE: _Parse = _Parser._json
# Every key of `enqueue` but `to`, in the order the docs list them.
_ENQUEUE_SETTINGS = (
    _EnqueueSetting(
        "broker", "broker", lambda p, n, w: p._string(n, w, "the name of a broker under brokers:")
    ),
    _EnqueueSetting("job", "job", lambda p, n, w: p._string(n, w, "the job's name")),
    _EnqueueSetting("args", "args", _Parser._json_list),
    _EnqueueSetting("kwargs", "kwargs", _Parser._json_mapping, ("rq", "celery")),
    _EnqueueSetting("queue", "queue", _Parser._name),
    _EnqueueSetting("retry", "retry", _Parser._sidekiq_retry, ("sidekiq",)),
    _EnqueueSetting(
        "version",
        "version",
        lambda p, n, w: int(p._number(n, w, _SIDEKIQ_VERSION_FORM, 6, 8, whole=True)),
        ("sidekiq",),
    ),
    _EnqueueSetting("active_job", "active_job", _Parser._boolean, ("sidekiq",)),
    _EnqueueSetting("job_timeout", "job_timeout_s", _duration_setting(positive=True), ("rq",)),
    _EnqueueSetting("result_ttl", "result_ttl_s", _duration_setting(positive=False), ("rq",)),
    _EnqueueSetting("failure_ttl", "failure_ttl_s", _duration_setting(positive=True), ("rq",)),
    _EnqueueSetting("ttl", "ttl_s", _duration_setting(positive=True), ("rq",)),
    _EnqueueSetting("routing_key", "routing_key", _Parser._name, ("celery",)),
    _EnqueueSetting("exchange", "exchange", _Parser._name, ("celery",)),
    _EnqueueSetting(
        "priority",
        "priority",
        lambda p, n, w: int(p._number(n, w, _PRIORITY_FORM, 0, 255, whole=True)),
        ("celery",),
    ),
    _EnqueueSetting("expires", "expires_s", _duration_setting(positive=True), ("celery",)),
    _EnqueueSetting("headers", "headers", _Parser._json_mapping, ("celery",)),
)
_ENQUEUE_BY_KEY = {setting.key: setting for setting in _ENQUEUE_SETTINGS}
_ENQUEUE_KEYS = ("to", *_ENQUEUE_BY_KEY)
_TASK_KEYS = tuple(_SETTINGS)
_REQUIRED_KEYS = tuple(setting.key for setting in _TASK_SETTINGS if setting.required)
# What a task does: exactly one of these.
_ACTIONS = ("command", "enqueue")
_DEFAULTS_KEYS = tuple(setting.key for setting in _TASK_SETTINGS if not setting.required)
