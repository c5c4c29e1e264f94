"""The dashboard's HTML: each page a function of what dashboard.py read, rendered on the server.

Every value that comes from the file, the store or the request goes through h() (HTML escaping, quotes
included), so that a task printing `<script>` shows as text. No inline script and no inline style (the
Content-Security-Policy forbids both): behaviour is in static/dashboard.js, looks in static/dashboard.css,
and charts are SVG whose colours come from classes.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from urllib.parse import quote, urlencode

from scheduler.config import TaskSpec, format_duration
from scheduler.dashboard import (
    FAILING_STATUSES,
    RUN_TRIGGERS,
    STRIP_RUNS,
    ClocksPage,
    Overview,
    RunsPage,
    Situation,
    TaskPage,
    TaskRow,
)
from scheduler.redact import host_only, redact
from scheduler.store import RUN_STATUSES, Override, RunRecord

_MASK = "••••••"
_STRIP_BAR_W = 6
_STRIP_H = 24
_CHART_W = 600
_CHART_H = 120
_CHART_PAD = 28


@dataclass(frozen=True, slots=True)
class Chrome:
    """What the frame of every page needs besides the page's own data."""

    csrf: str  # the double-submit token, for the action forms
    read_only: bool
    version: str
    here: str  # the page's path and query, where a form sends the browser back
    notice: tuple[str, str] | None = None  # ("ok" | "error", text) of the last action
    user: str | None = None  # the HTTP Basic user, when there is one
    refresh_s: int = 5  # the page refreshes its content this often (dashboard.js)


def h(value: object) -> str:
    """Text as HTML: <, >, &, and both quotes escaped."""
    return html.escape(str(value), quote=True)


def task_url(name: str) -> str:
    return "/tasks/" + quote(name, safe="")


# Pages.


def overview(view: Overview, chrome: Chrome) -> str:
    """/: every task (a page of them) with its schedule, next fire, last run, a strip of its newest runs,
    its pause and running state, and its actions; a search box and a failing filter."""
    now = view.situation.now
    live = view.situation.live_clocks
    search = (
        '<form class="toolbar" method="get" action="/" role="search">'
        f'<input type="search" name="q" value="{h(view.query)}" placeholder="Search tasks" '
        'aria-label="Search tasks" autocomplete="off">'
        f'<label class="check"><input type="checkbox" name="failing" value="1"'
        f"{' checked' if view.failing_only else ''}> failing only</label>"
        '<button type="submit">Search</button>'
        + (' <a href="/">clear</a>' if view.query or view.failing_only else "")
        + "</form>"
    )
    counts = (
        f'<p class="counts"><span>{view.total} task{_s(view.total)}</span>'
        f'<a href="/?failing=1" class="{"bad" if view.failing else ""}">{view.failing} failing</a>'
        f"<span>{view.paused} paused</span>"
        f'<a href="/clocks">{"?" if live is None else live} live clock{_s(live or 0)}</a></p>'
    )
    if view.rows:
        rows = "".join(_task_row(row, now, chrome, live) for row in view.rows)
        table = (
            '<table class="tasks"><thead><tr><th>Task</th><th>Schedule</th><th>Next fire</th>'
            f'<th>Last run</th><th>Last {STRIP_RUNS} runs</th><th><span class="sr">Actions</span></th>'
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    elif view.total:
        table = '<p class="empty">No task matches.</p>'
    else:
        table = '<p class="empty">No tasks in the schedules file.</p>'
    pager = _pager(view.page, view.pages, {"q": view.query, "failing": "1" if view.failing_only else ""})
    body = f"<h1>Tasks</h1>{search}{counts}{table}{pager}"
    return _frame("Tasks", "/", _banners(view.situation) + body, chrome, now)


def task_page(view: TaskPage, chrome: Chrome) -> str:
    """/tasks/{task}: the definition (secrets masked), its pause and actions, the next fires with their DST
    notes, a duration chart, the history (filtered, a page at a time) with each run's output, the audit."""
    row, spec, now = view.row, view.row.spec, view.situation.now
    badges = _badges(row, now)
    actions = _task_actions(row, chrome, view.situation.live_clocks, full=True)
    title = f'<h1 class="task-title"><span class="name">{h(spec.name)}</span>{badges}</h1>'
    state = h(_override_text(view.override, now))
    fires = "".join(
        f"<tr><td>{_local(f.at, spec.zone)}</td><td>{h(_rel(f.at, now))}</td>"
        f"<td><code>{h(_iso(f.at))}</code></td><td>{h(f.note) if f.note else ''}</td></tr>"
        for f in view.fires
    )
    fires_html = (
        '<table class="fires"><thead><tr><th>Local time</th><th>When</th><th>UTC</th><th>DST</th></tr>'
        f"</thead><tbody>{fires}</tbody></table>"
        if view.fires
        else '<p class="empty">Disabled: it does not fire (run now still runs it).</p>'
    )
    body = (
        title
        + (f'<p class="state">{state}</p>' if state else "")
        + actions
        + '<div class="columns"><section><h2>Definition</h2>'
        + _definition(spec, row.words)
        + "</section>"
        + f"<section><h2>Next {len(view.fires) or ''} fires</h2>{fires_html}</section></div>"
        + f"<section><h2>Durations</h2>{_chart(view.chart, spec.zone)}</section>"
        + f'<section id="history"><h2>History</h2>{_history_filter(view)}'
        + _runs_table(view.history.runs, now, zone=spec.zone, with_task=False)
        + _older(view.history.before, task_url(spec.name), {"status": view.status, "trigger": view.trigger})
        + "</section>"
        + _audit(view)
    )
    return _frame(spec.name, task_url(spec.name), _banners(view.situation) + body, chrome, now)


def runs_page(view: RunsPage, chrome: Chrome) -> str:
    """/runs: the newest runs of every task, a page at a time; failures first if asked."""
    now = view.situation.now
    form = (
        '<form class="toolbar" method="get" action="/runs">'
        + _select("status", "status", RUN_STATUSES, view.status)
        + _select("trigger", "trigger", RUN_TRIGGERS, view.trigger)
        + '<label class="check"><input type="checkbox" name="failures" value="first"'
        + (" checked" if view.failures_first else "")
        + "> failures first</label>"
        + '<button type="submit">Show</button></form>'
    )
    older = _older(
        view.next_before,
        "/runs",
        {
            "status": view.status,
            "trigger": view.trigger,
            "failures": "first" if view.failures_first else None,
        },
    )
    body = f"<h1>Runs</h1>{form}{_runs_table(view.runs, now, zone=None, with_task=True)}{older}"
    return _frame("Runs", "/runs", _banners(view.situation) + body, chrome, now)


def clocks_page(view: ClocksPage, chrome: Chrome) -> str:
    """/clocks: every clock the store remembers, its heartbeat's age, version and config digest (a live
    clock on another schedules file is flagged), and how the store answers."""
    now = view.situation.now
    rows = []
    for clock in view.clocks:
        age = (now - clock.heartbeat_at).total_seconds()
        differs = clock.id in view.differs
        digest = f"<code>{h(clock.config_digest[:12])}</code>" + (
            ' <span class="badge warn" title="not the schedules file this dashboard reads">'
            "other config</span>"
            if differs
            else ""
        )
        state = (
            '<span class="badge live">live</span>' if clock.alive else '<span class="badge gone">gone</span>'
        )
        rows.append(
            f'<tr class="{"" if clock.alive else "gone"}">'
            f'<td data-label="Clock"><code>{h(clock.id)}</code></td><td data-label="State">{state}</td>'
            f'<td data-label="Host">{h(clock.host)}</td><td data-label="PID">{clock.pid}</td>'
            f'<td data-label="Version">{h(clock.version)}</td>'
            f'<td data-label="Started">{_when(clock.started_at, now)}</td>'
            f'<td data-label="Heartbeat">{h(_span(max(age, 0.0)))} ago</td>'
            f'<td data-label="Config">{digest}</td></tr>'
        )
    table = (
        '<table class="clocks"><thead><tr><th>Clock</th><th>State</th><th>Host</th><th>PID</th>'
        "<th>Version</th><th>Started</th><th>Heartbeat</th><th>Config digest</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No clock has used this store yet.</p>'
    )
    mismatch = (
        '<p class="banner warn">Live clocks run another schedules file than this dashboard reads (a deploy '
        "half done?): what they fire may differ from what this page shows.</p>"
        if view.differs
        else ""
    )
    store = view.store
    answer = (
        f'<span class="badge live">answering</span> in {store.latency_ms:.0f} ms'
        if store.ok and store.latency_ms is not None
        else f'<span class="badge bad">not answering</span> {h(store.error or "")}'
    )
    store_html = (
        '<dl class="definition">'
        f"<dt>Store</dt><dd>{h(store.kind)} <code>{h(redact(store.url))}</code></dd>"
        f"<dt>Status</dt><dd>{answer}</dd>"
        f"<dt>This dashboard reads</dt><dd><code>{h(view.digest[:12])}</code></dd>"
        "</dl>"
    )
    body = f"<h1>Clocks</h1>{mismatch}{table}<section><h2>Store</h2>{store_html}</section>"
    return _frame("Clocks", "/clocks", _banners(view.situation) + body, chrome, now)


def error_page(status: int, message: str, chrome: Chrome, now: datetime) -> str:
    """A page for a request that failed: the status and what went wrong, escaped."""
    body = f'<h1>{status}</h1><p class="banner bad">{h(message)}</p><p><a href="/">All tasks</a></p>'
    return _frame(str(status), "", body, chrome, now)


# Parts.


def _frame(title: str, current: str, body: str, chrome: Chrome, now: datetime) -> str:
    current_mark = ' aria-current="page"'
    nav = "".join(
        f'<a href="{href}"{current_mark if href == current else ""}>{label}</a>'
        for href, label in (("/", "Tasks"), ("/runs", "Runs"), ("/clocks", "Clocks"))
    )
    mode = '<span class="badge mode">read-only</span>' if chrome.read_only else ""
    user = f'<span class="user">{h(chrome.user)}</span>' if chrome.user else ""
    notice = ""
    if chrome.notice is not None:
        kind, text = chrome.notice
        notice = f'<p class="banner {"bad" if kind == "error" else "ok"}">{h(text)}</p>'
    v = quote(chrome.version)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="csrf-token" content="{h(chrome.csrf)}">'
        f"<title>{h(title)} · scheduler</title>"
        f'<link rel="stylesheet" href="/static/dashboard.css?v={v}">'
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        f'<script src="/static/dashboard.js?v={v}" defer></script>'
        f'</head><body data-refresh="{chrome.refresh_s}">'
        f'<header class="top"><a class="brand" href="/">scheduler</a><nav>{nav}</nav>{mode}{user}</header>'
        f'<div id="notice" role="status" aria-live="polite">{notice}</div>'
        f'<main id="live" data-here="{h(chrome.here)}">{body}'
        f'<p class="updated">As of <time datetime="{h(_iso(now))}">{h(_utc(now))}</time></p></main>'
        f"<footer>scheduler {h(chrome.version)} · schedules.yaml is the source of truth: the dashboard only "
        "runs, pauses and resumes</footer></body></html>"
    )


def _banners(situation: Situation) -> str:
    out = []
    if situation.store_error is not None:
        out.append(
            f'<p class="banner bad">The store is not answering: {h(situation.store_error)}. '
            "Runs, pauses and clocks cannot be shown until it does.</p>"
        )
    elif situation.live_clocks == 0:
        out.append(
            '<p class="banner warn" id="no-clock">No live clock uses this store: nothing fires, and run now '
            "is off until a clock (<code>scheduler run</code>) starts.</p>"
        )
    if situation.config_error is not None:
        out.append(
            '<p class="banner warn">The schedules file changed and does not parse; this page shows its last '
            f'valid version.</p><pre class="problems">{h(situation.config_error)}</pre>'
        )
    return "".join(out)


def _task_row(row: TaskRow, now: datetime, chrome: Chrome, live: int | None) -> str:
    spec = row.spec
    return (
        f'<tr class="task{" failing" if row.failing else ""}" data-task="{h(spec.name)}">'
        f'<td class="name" data-label="Task"><a href="{h(task_url(spec.name))}">{h(spec.name)}</a>'
        f"{_badges(row, now)}</td>"
        f'<td class="schedule" data-label="Schedule"><span class="words">{h(row.words)}</span> '
        f'<code>{h(spec.schedule.text)}</code> <span class="zone">{h(spec.timezone)}</span></td>'
        f'<td class="next" data-label="Next fire">{_next(row, now)}</td>'
        f'<td class="last" data-label="Last run">{_last(row.last, now)}</td>'
        f'<td class="strip" data-label="Last {STRIP_RUNS}">{_strip(row.strip)}</td>'
        f'<td class="actions" data-label="">{_task_actions(row, chrome, live, full=False)}</td></tr>'
    )


def _badges(row: TaskRow, now: datetime) -> str:
    out = []
    if row.pause is not None:
        out.append(f'<span class="badge paused" title="{h(_override_text(row.pause, now))}">paused</span>')
    if row.running:
        out.append(
            f'<span class="badge running" title="since {h(_utc(row.running[0].started_at))}">'
            f'<span class="dot"></span>running{_count(len(row.running))}</span>'
        )
    if not row.spec.enabled:
        out.append('<span class="badge gone">disabled</span>')
    if row.failing:
        out.append('<span class="badge bad">failing</span>')
    return "".join(out)


def _next(row: TaskRow, now: datetime) -> str:
    if row.next is None:
        return '<span class="muted">disabled</span>'
    at = row.next.at
    note = f'<small class="dst">DST: {h(row.next.note)}</small>' if row.next.note else ""
    skipped = (
        '<small class="muted">skipped: paused</small>'
        if row.pause is not None and row.pause.holds(at)
        else ""
    )
    return (
        f'<time datetime="{h(_iso(at))}" title="{h(_utc(at))}">{h(_rel(at, now))}</time>'
        f"<small>{_local(at, row.spec.zone)}</small>{note}{skipped}"
    )


def _last(run: RunRecord | None, now: datetime) -> str:
    if run is None:
        return '<span class="muted">never</span>'
    duration = f' <span class="dur">{h(_dur(run.duration_s))}</span>' if run.duration_s is not None else ""
    return f"{_status(run.status)} {_when(run.started_at, now)}{duration}"


def _strip(runs: Sequence[RunRecord]) -> str:
    """The newest runs as bars, oldest on the left: colour by status, height by duration (relative to the
    longest shown; a bar is never less than 3 px high, so that a quick run still shows)."""
    if not runs:
        return '<span class="muted">no runs</span>'
    shown = list(reversed(runs[:STRIP_RUNS]))
    longest = max((r.duration_s or 0.0 for r in shown), default=0.0) or 1.0
    bars = []
    for i, run in enumerate(shown):
        height = 3 + round((_STRIP_H - 3) * (run.duration_s or 0.0) / longest)
        tip = f"{run.status} · {_utc(run.started_at)}" + (
            f" · {_dur(run.duration_s)}" if run.duration_s is not None else ""
        )
        bars.append(
            f'<rect class="s-{h(run.status)}" x="{i * _STRIP_BAR_W}" y="{_STRIP_H - height}" '
            f'width="{_STRIP_BAR_W - 1}" height="{height}"><title>{h(tip)}</title></rect>'
        )
    width = STRIP_RUNS * _STRIP_BAR_W
    return (
        f'<svg class="strip" viewBox="0 0 {width} {_STRIP_H}" width="{width}" height="{_STRIP_H}" '
        f'role="img" aria-label="last {len(shown)} runs">{"".join(bars)}</svg>'
    )


def _task_actions(row: TaskRow, chrome: Chrome, live: int | None, *, full: bool) -> str:
    if chrome.read_only:
        return ""
    url = task_url(row.spec.name)
    no_clock = live == 0
    run_title = "no live clock would run it" if no_clock else "run its command once, now, on a live clock"
    run = _action_form(
        f"{url}/run",
        "Run now",
        chrome,
        disabled=no_clock,
        title=run_title,
        css="run",
    )
    if row.pause is not None:
        pause = _action_form(f"{url}/resume", "Resume", chrome, css="resume")
    elif full:
        pause = (
            f'<form class="action pause-form" method="post" action="/api{h(url)}/pause">'
            f"{_hidden(chrome)}"
            '<label>for <input name="for" size="6" placeholder="e.g. 2h" aria-label="Pause for"></label>'
            '<label>reason <input name="reason" size="24" maxlength="1000" aria-label="Reason"></label>'
            '<button type="submit" class="pause">Pause</button></form>'
        )
    else:
        pause = _action_form(f"{url}/pause", "Pause", chrome, css="pause", title="pause until resumed")
    return f'<div class="buttons">{run}{pause}</div>'


def _action_form(
    url: str, label: str, chrome: Chrome, *, disabled: bool = False, title: str = "", css: str = ""
) -> str:
    tip = f' title="{h(title)}"' if title else ""
    return (
        f'<form class="action" method="post" action="/api{h(url)}">{_hidden(chrome)}'
        f'<button type="submit" class="{css}"{" disabled" if disabled else ""}{tip}>{h(label)}</button>'
        "</form>"
    )


def _hidden(chrome: Chrome) -> str:
    return (
        f'<input type="hidden" name="csrf" value="{h(chrome.csrf)}">'
        f'<input type="hidden" name="next" value="{h(chrome.here)}">'
    )


def _override_text(override: Override | None, now: datetime) -> str:
    if override is None:
        return ""
    if override.holds(now):
        until = (
            f" until {_utc(override.until)} ({_rel(override.until, now)})"
            if override.until
            else " until resumed"
        )
        reason = f": {override.reason}" if override.reason else ""
        return f"Paused by {override.by} {_rel(override.at, now)}{until}{reason}. Overrides schedules.yaml."
    if override.paused:
        return f"A pause by {override.by} ran out {_rel(override.until, now) if override.until else ''}."
    return f"Resumed by {override.by} {_rel(override.at, now)}."


def _definition(spec: TaskSpec, words: str) -> str:
    """The task as schedules.yaml defines it: env values and the secret part of a ping URL masked."""
    items: list[tuple[str, str]] = [
        ("Schedule", f"<code>{h(spec.schedule.text)}</code> · {h(words)}"),
        ("Zone", h(spec.timezone)),
        (
            "Command",
            _command(spec.command)
            + (f" <small>via {h(spec.shell)}</small>" if isinstance(spec.command, str) else ""),
        ),
        ("Enabled", "yes" if spec.enabled else "no: only run now runs it"),
        ("Timeout", h(format_duration(spec.timeout_s)) if spec.timeout_s is not None else "none"),
        ("Overlap", h(spec.overlap)),
        ("Grace", h(format_duration(spec.grace_s))),
    ]
    if spec.jitter_s:
        items.append(("Jitter", h(format_duration(spec.jitter_s))))
    if spec.cwd:
        items.append(("Working directory", f"<code>{h(spec.cwd)}</code>"))
    if spec.env:
        env = "".join(f"<li><code>{h(key)}</code> = {_MASK}</li>" for key in sorted(spec.env))
        items.append(("Environment", f'<ul class="env">{env}</ul>'))
    if spec.retries:
        items.append(
            (
                "Retries",
                h(
                    f"{spec.retries}, after {format_duration(spec.retry_delay_s)} ×{spec.retry_backoff:g} "
                    f"up to {format_duration(spec.retry_max_delay_s)}"
                ),
            )
        )
    if spec.on_failure is not None:
        items.append(("On failure", _command(spec.on_failure)))
    if spec.on_success is not None:
        items.append(("On success", _command(spec.on_success)))
    if spec.ping_url:
        items.append(("Ping", f"<code>{h(host_only(spec.ping_url) or '')}/{_MASK}</code>"))
    flags = [name for name, on in (("catch_up", spec.catch_up), ("require_store", spec.require_store)) if on]
    if flags:
        items.append(("Store", h(", ".join(flags))))
    if not spec.store_output:
        items.append(("Output", "not kept (store_output: false)"))
    if spec.line:
        items.append(("Defined at", f"line {spec.line}"))
    return '<dl class="definition">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _command(command: str | tuple[str, ...]) -> str:
    if isinstance(command, str):
        return f"<code>{h(command)}</code>"
    return "<code>[" + ", ".join(h(part) for part in command) + "]</code>"


def _chart(runs: Sequence[RunRecord], zone: tzinfo) -> str:
    """Durations of the newest runs as bars, oldest on the left, coloured by status, with the median as a
    line: a slow drift or a sudden jump shows at a glance."""
    if not runs:
        return '<p class="empty">No finished runs yet.</p>'
    shown = list(reversed(runs))
    durations = [r.duration_s or 0.0 for r in shown]
    top = max(durations) or 1.0
    inner_h = _CHART_H - 18
    step = (_CHART_W - _CHART_PAD) / max(len(shown), 20)
    bars = []
    for i, (run, seconds) in enumerate(zip(shown, durations, strict=True)):
        height = max(1.0, inner_h * seconds / top)
        tip = f"{run.status} · {_local(run.started_at, zone)} · {_dur(seconds)}"
        bars.append(
            f'<rect class="s-{h(run.status)}" x="{_CHART_PAD + i * step:.1f}" y="{inner_h - height + 4:.1f}" '
            f'width="{max(step - 1, 1):.1f}" height="{height:.1f}"><title>{tip}</title></rect>'
        )
    median = statistics.median(durations)
    y = inner_h - inner_h * median / top + 4
    return (
        f'<svg class="chart" viewBox="0 0 {_CHART_W} {_CHART_H}" role="img" '
        f'aria-label="durations of the last {len(shown)} runs">'
        f'<text class="axis" x="0" y="12">{h(_dur(top))}</text>'
        f'<text class="axis" x="0" y="{inner_h + 4}">0</text>'
        f'<line class="axis" x1="{_CHART_PAD - 2}" y1="{inner_h + 4}" x2="{_CHART_W}" y2="{inner_h + 4}"/>'
        + "".join(bars)
        + f'<line class="median" x1="{_CHART_PAD - 2}" y1="{y:.1f}" x2="{_CHART_W}" y2="{y:.1f}">'
        f"<title>median {h(_dur(median))}</title></line>"
        f'<text class="axis" x="{_CHART_PAD}" y="{_CHART_H - 2}">median {h(_dur(median))} · '
        f"{len(shown)} runs, oldest on the left</text></svg>"
    )


def _history_filter(view: TaskPage) -> str:
    return (
        f'<form class="toolbar" method="get" action="{h(task_url(view.row.spec.name))}#history">'
        + _select("status", "status", RUN_STATUSES, view.status)
        + _select("trigger", "trigger", RUN_TRIGGERS, view.trigger)
        + '<button type="submit">Filter</button>'
        + (
            f' <a href="{h(task_url(view.row.spec.name))}#history">all runs</a>'
            if view.status or view.trigger or view.before
            else ""
        )
        + "</form>"
    )


def _select(name: str, label: str, choices: Iterable[str], chosen: str | None) -> str:
    options = f'<option value="">any {h(label)}</option>' + "".join(
        f'<option value="{h(c)}"{" selected" if c == chosen else ""}>{h(c)}</option>' for c in choices
    )
    return f'<select name="{h(name)}" aria-label="{h(label)}">{options}</select>'


def _runs_table(runs: Sequence[RunRecord], now: datetime, *, zone: tzinfo | None, with_task: bool) -> str:
    if not runs:
        return '<p class="empty">No runs.</p>'
    head = "<th>Task</th>" if with_task else ""
    rows = []
    for run in runs:
        ended = run.signal or ("" if run.exit_code is None else str(run.exit_code))
        started = _local(run.started_at, zone) if zone is not None else h(_utc(run.started_at))
        task = (
            f'<td data-label="Task"><a href="{h(task_url(run.task))}">{h(run.task)}</a></td>'
            if with_task
            else ""
        )
        output = (
            f'<details data-run="{h(run.run_id)}"><summary>output</summary>'
            f'<pre class="output">{h(run.output)}</pre></details>'
            if run.output
            else '<span class="muted">none</span>'
        )
        rows.append(
            f'<tr class="run{" failing" if run.status in FAILING_STATUSES else ""}">{task}'
            f'<td data-label="Started"><span title="{h(_rel(run.started_at, now))}">{started}</span></td>'
            f'<td data-label="Trigger">{h(run.trigger)}</td>'
            f'<td data-label="Status">{_status(run.status)}</td>'
            f'<td data-label="Exit">{h(ended)}</td>'
            f'<td data-label="Duration">{h(_dur(run.duration_s)) if run.duration_s is not None else ""}</td>'
            f'<td data-label="Clock"><code>{h(run.claimed_by)}</code></td>'
            f'<td data-label="Output" class="out">{output}</td></tr>'
        )
    return (
        f'<table class="runs"><thead><tr>{head}<th>Started</th><th>Trigger</th><th>Status</th><th>Exit</th>'
        f"<th>Duration</th><th>Clock</th><th>Output</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _older(before: str | None, path: str, params: dict[str, str | None]) -> str:
    kept = {k: v for k, v in params.items() if v}
    newest = f'<a href="{h(path + ("?" + urlencode(kept) if kept else ""))}">newest</a>'
    if before is None:
        return f'<p class="pager">{newest}</p>'
    older = h(path + "?" + urlencode({**kept, "before": before}))
    return f'<p class="pager">{newest} <a href="{older}" rel="next">older runs →</a></p>'


def _pager(page: int, pages: int, params: dict[str, str]) -> str:
    if pages <= 1:
        return ""
    kept = {k: v for k, v in params.items() if v}
    links = []
    if page > 1:
        links.append(f'<a href="/?{h(urlencode({**kept, "page": page - 1}))}" rel="prev">← previous</a>')
    links.append(f"<span>page {page} of {pages}</span>")
    if page < pages:
        links.append(f'<a href="/?{h(urlencode({**kept, "page": page + 1}))}" rel="next">next →</a>')
    return f'<p class="pager">{" ".join(links)}</p>'


def _audit(view: TaskPage) -> str:
    items = [
        f"<li>{_when(action.at, view.situation.now)} <strong>{h(action.action)}</strong> by {h(action.by)}"
        + (f" · {h(action.detail)}" if action.detail else "")
        + "</li>"
        for action in view.actions
    ]
    requests = [
        f"<li>request {request.id} by {h(request.requested_by)} "
        f"{_when(request.requested_at, view.situation.now)}: "
        f'<span class="req-{h(request.state)}">{h(request.state)}</span>'
        + (f" on <code>{h(request.claimed_by)}</code>" if request.claimed_by else "")
        + "</li>"
        for request in view.requests
    ]
    out = ""
    if items:
        out += f'<section><h2>Audit</h2><ul class="audit">{"".join(items)}</ul></section>'
    if requests:
        out += f'<section><h2>Run requests</h2><ul class="audit">{"".join(requests)}</ul></section>'
    return out


def _status(status: str) -> str:
    known = status if status in RUN_STATUSES else "other"
    return f'<span class="status s-{known}">{h(status)}</span>'


def _when(at: datetime, now: datetime) -> str:
    return f'<time datetime="{h(_iso(at))}" title="{h(_utc(at))}">{h(_rel(at, now))}</time>'


def _rel(at: datetime | None, now: datetime) -> str:
    """'in 4 min', '12 s ago', 'now'."""
    if at is None:
        return ""
    seconds = (at - now).total_seconds()
    if abs(seconds) < 1:
        return "now"
    text = _span(abs(seconds))
    return f"in {text}" if seconds > 0 else f"{text} ago"


def _span(seconds: float) -> str:
    """A coarse span for people: '12 s', '4 min', '3 h 5 min', '2 d 4 h'."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        hours, minutes = divmod(s // 60, 60)
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(s // 3600, 24)
    return f"{days} d" + (f" {hours} h" if hours else "")


def _dur(seconds: float | None) -> str:
    """A run's duration: '420 ms', '4.20 s', '12.3 s', '3 min 2 s', '1 h 5 min'."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    return f"{total // 3600} h {total % 3600 // 60} min"


def _local(at: datetime, zone: tzinfo) -> str:
    return h(f"{at.astimezone(zone):%Y-%m-%d %H:%M:%S %Z}")


def _utc(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _count(count: int) -> str:
    return f" ×{count}" if count > 1 else ""


def _s(count: int) -> str:
    return "" if count == 1 else "s"
