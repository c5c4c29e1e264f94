"""Dead-man's-switch pings (Healthchecks.io and Cronitor conventions), sent without ever delaying the clock.

A run pings `<url>/start` when it starts, then `<url>` on success, `<url>/fail` on failure (or
`<url>/<exit code>`), each with `?rid=<run id>`. Every ping is queued and sent by a few daemon worker
threads, so a slow, hung or refusing ping server holds up neither a fire, nor another task's pings, nor
shutdown. A ping that cannot be sent is logged as `ping.failed` and never raised to the caller. Both
`ping.sent` (debug) and `ping.failed` name the task, the run and the ping's kind; only the scheme and host
of a ping URL are ever logged, since its path holds the check's secret.
"""

from __future__ import annotations

import http.client
import queue
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from structlog.typing import FilteringBoundLogger

import scheduler
from scheduler.config import ENV_REFERENCE, expand_env
from scheduler.errors import ConfigError
from scheduler.redact import host_only
from scheduler.runs import PING_BODY_BYTES, utf8_tail

DEFAULT_PING_TIMEOUT_S = 5.0
PING_RETRIES = 2  # after the first attempt
_WORKERS = 4  # daemon threads
_QUEUE_CAP = 1000  # pings waiting beyond this are dropped
# Before each retry: 1 s, then 2 s (one delay per retry).
_RETRY_DELAYS_S = tuple(float(2**i) for i in range(PING_RETRIES))
# A ping's answer is read (so the connection ends cleanly) but never used; this much at most.
_ANSWER_BYTES = 64 * 1024
_USER_AGENT = f"scheduler/{scheduler.__version__}"
_SCHEMES = ("http", "https")
_HIDDEN = "…"

_Kind = Literal["start", "success", "fail", "exit_code"]
_Send = Callable[[urllib.request.Request, float], int]


def display_url(url: str) -> str:
    """A ping URL safe to log: scheme and host only, the path (which holds the check's secret uuid or ping
    key) replaced by '…', e.g. 'https://hc-ping.com/…'. ${NAME} references are never expanded here.

    User info and the query are dropped too; a URL that is a lone ${NAME} reference is shown as written (a
    variable's name is no secret), and anything without a scheme and host as '…'.
    """
    if ENV_REFERENCE.fullmatch(url):
        return url
    try:
        urllib.parse.urlsplit(url)  # refuses what no HTTP client would take ('https://[::1/x')
    except ValueError:
        return _HIDDEN
    # Not urlsplit's netloc: a raw '?', '#' or '/' in a password would end it early and show the rest.
    shown = host_only(url)
    return _HIDDEN if shown is None else f"{shown}/{_HIDDEN}"


@dataclass(slots=True)
class _Ping:
    """One ping to send: `url` as configured (${NAME}s unexpanded), the path suffix its kind adds, and the
    task and run it is about."""

    kind: _Kind
    url: str
    suffix: str
    run_id: str
    task: str
    timeout_s: float
    body: bytes | None = None  # None: a GET
    after: list[_Ping] = field(default_factory=list)  # final pings parked until this start ping is done


class Pinger:
    """Sends pings in the background: each call queues one and returns at once, and never raises.

    Policy: each ping is tried once and then once after each of `retry_delays` (waited out in its worker
    thread); a status >= 400, a timeout or a connection error is a failed attempt, and after the last one a
    single `ping.failed` is logged. A run's final ping waits until its start ping succeeded or was given up
    (so the check measures the run's duration); the run is forgotten once its start ping is done. At most
    _QUEUE_CAP pings wait; more are dropped with `ping.failed` (error "queue full").
    """

    def __init__(
        self,
        *,
        log: FilteringBoundLogger,
        env: Mapping[str, str],
        workers: int = _WORKERS,
        retry_delays: Sequence[float] = _RETRY_DELAYS_S,
        send: _Send | None = None,
    ) -> None:
        """env: the variables ${NAME} in a ping URL is filled from (the clock passes its environment
        snapshot). send: performs one HTTP request with a timeout and returns the status code, raising on
        network errors (default: urllib.request.urlopen, reading and discarding the response); tests inject
        a fake. retry_delays: the seconds waited before each retry, one retry each."""
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._log = log
        self._env = env
        self._retry_delays = tuple(retry_delays)
        self._send: _Send = send if send is not None else _urlopen
        self._jobs: queue.SimpleQueue[_Ping | None] = queue.SimpleQueue()
        self._lock = threading.Condition()
        self._waiting = 0  # queued, or parked behind a start ping: what _QUEUE_CAP bounds
        self._outstanding = 0  # waiting or being sent: what close() waits for
        self._starts: dict[str, _Ping] = {}  # run id -> its start ping, until that is done
        self._closed = False
        self._stopping = threading.Event()  # cuts retry delays short at close
        self._threads = [
            threading.Thread(target=self._serve, name=f"ping-{n + 1}", daemon=True) for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def start(self, url: str, run_id: str, *, task: str, timeout_s: float = DEFAULT_PING_TIMEOUT_S) -> None:
        """GET <url>/start?rid=<run_id>, in the background, for a run of `task`."""
        try:
            ping = _Ping("start", url, "/start", run_id, task, timeout_s)
            with self._lock:
                if self._admit(ping):
                    self._starts.setdefault(run_id, ping)
                    self._jobs.put(ping)
        except Exception as exc:
            self._failed(_Ping("start", url, "", run_id, task, timeout_s), 0, _describe(exc))

    def finish(
        self,
        url: str,
        run_id: str,
        *,
        task: str,
        success: bool,
        exit_code: int | None,
        use_exit_code: bool,
        output: str,
        timeout_s: float = DEFAULT_PING_TIMEOUT_S,
    ) -> None:
        """In the background, after that run's start ping is done or given up: POST to <url> (success) or
        <url>/fail (failure), or with use_exit_code to <url>/<exit_code> (exit_code None, e.g. killed by a
        signal or timed out: use /fail), always with ?rid=<run_id>, the body being the last PING_BODY_BYTES of
        `output` (text/plain; charset=utf-8)."""
        kind: _Kind
        if use_exit_code and exit_code is not None:
            kind, suffix = "exit_code", f"/{exit_code}"
        elif use_exit_code or not success:
            kind, suffix = "fail", "/fail"
        else:
            kind, suffix = "success", ""
        try:
            ping = _Ping(kind, url, suffix, run_id, task, timeout_s, utf8_tail(output, PING_BODY_BYTES))
            with self._lock:
                if self._admit(ping):
                    start = self._starts.get(run_id)
                    if start is not None:
                        start.after.append(ping)
                    else:
                        self._jobs.put(ping)
        except Exception as exc:
            self._failed(_Ping(kind, url, suffix, run_id, task, timeout_s), 0, _describe(exc))

    def close(self, timeout_s: float) -> None:
        """Wait up to timeout_s for queued pings, then give up on the rest (daemon threads; never blocks
        longer).

        Pings given up on (still waiting, or in flight to a slow server) are counted in one `ping.unsent`;
        a ping asked for after close is dropped with `ping.failed` (error "closed").
        """
        try:
            with self._lock:
                if self._closed:
                    return
                self._lock.wait_for(lambda: self._outstanding == 0, max(timeout_s, 0.0))
                self._closed = True
                unsent = self._outstanding
            self._stopping.set()
            for _ in self._threads:
                self._jobs.put(None)
            if unsent:
                self._log.warning("ping.unsent", pings=unsent)
        except Exception:
            pass  # closing must never stop the clock's shutdown

    # Inside

    def _admit(self, ping: _Ping) -> bool:
        """Under the lock: count `ping` in, or log why it is dropped."""
        if self._closed:
            self._failed(ping, 0, "closed")
            return False
        if self._waiting >= _QUEUE_CAP:
            self._failed(ping, 0, "queue full")
            return False
        self._waiting += 1
        self._outstanding += 1
        return True

    def _serve(self) -> None:
        """A worker thread: send queued pings until close()."""
        while (ping := self._jobs.get()) is not None:
            with self._lock:
                self._waiting -= 1
            self._handle(ping)

    def _handle(self, ping: _Ping) -> None:
        """Send `ping` (unless closing), then the final pings that waited for it, in this thread."""
        try:
            if not self._stopping.is_set():
                self._send_with_retries(ping)
        except Exception as exc:
            self._failed(ping, 0, _describe(exc))
        finally:
            after: list[_Ping] = []
            with self._lock:
                if ping.kind == "start" and self._starts.get(ping.run_id) is ping:
                    del self._starts[ping.run_id]
                    after = ping.after
                    self._waiting -= len(after)
                self._outstanding -= 1
                self._lock.notify_all()
        for final in after:
            self._handle(final)

    def _send_with_retries(self, ping: _Ping) -> None:
        try:
            url = self._url(ping)
        except ConfigError as exc:
            self._failed(ping, 0, str(exc))
            return
        except ValueError as exc:
            self._failed(ping, 0, str(exc))
            return
        headers = {"User-Agent": _USER_AGENT}
        if ping.body is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        attempts = 0
        for delay in (None, *self._retry_delays):
            if delay is not None and self._stopping.wait(delay):
                return  # closing: counted in ping.unsent
            attempts += 1
            began = time.monotonic()
            try:
                request = urllib.request.Request(url, data=ping.body, headers=headers, method=_method(ping))
                status = self._send(request, ping.timeout_s)
            except Exception as exc:
                error = _describe(exc)
            else:
                if status < 400:
                    self._log.debug(
                        "ping.sent",
                        task=ping.task,
                        run_id=ping.run_id,
                        kind=ping.kind,
                        url=display_url(ping.url),
                        attempts=attempts,
                        status=status,
                        duration_s=round(time.monotonic() - began, 3),
                    )
                    return
                error = f"HTTP {status}"
            if self._stopping.is_set():
                return
        self._failed(ping, attempts, error)

    def _url(self, ping: _Ping) -> str:
        """The URL to request: ${NAME}s filled from env, the kind's suffix after the path (less any trailing
        '/'), and rid added to the query as written. Raises ConfigError for an unset or empty variable and
        ValueError for a URL that is not an http(s) one."""
        url = expand_env(ping.url, self._env, "")
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError:
            raise ValueError("not a valid URL") from None  # urllib's message may quote the URL
        if parts.scheme.lower() not in _SCHEMES or not parts.netloc:
            raise ValueError("not an http(s) URL")
        kept = [item for item in parts.query.split("&") if item and item.partition("=")[0] != "rid"]
        query = "&".join([*kept, urllib.parse.urlencode({"rid": ping.run_id})])
        return urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, parts.path.rstrip("/") + ping.suffix, query, "")
        )

    def _failed(self, ping: _Ping, attempts: int, error: str) -> None:
        try:
            self._log.warning(
                "ping.failed",
                task=ping.task,
                run_id=ping.run_id,
                kind=ping.kind,
                url=display_url(ping.url),
                attempts=attempts,
                error=error,
            )
        except Exception:
            pass  # a broken log must not take a worker thread (or the caller) down with it


def _method(ping: _Ping) -> str:
    return "GET" if ping.body is None else "POST"


def _urlopen(request: urllib.request.Request, timeout_s: float) -> int:
    """Send `request` and return its status, reading and discarding the answer. The timeout bounds each
    socket operation (connect, each read), as urllib's does."""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(_ANSWER_BYTES)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def _describe(exc: BaseException) -> str:
    """A short reason for a failed attempt that never holds the URL (urllib's own messages may)."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without an answer"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
