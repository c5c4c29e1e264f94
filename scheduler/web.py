"""`scheduler web`: the dashboard's HTTP side. Routes, the JSON API, and the security around them.

WebApp turns a Request into a Response and knows nothing of sockets, so that the tests can call it directly;
WebServer serves it from threads (http.server.ThreadingHTTPServer, as /metrics is served), never from a
clock's loop: the dashboard is a process of its own.

Security, in the order a request meets it:
- Host: bound to loopback, only a loopback Host header is answered, so that a web page whose name resolves
  to 127.0.0.1 (DNS rebinding) cannot read the dashboard or act through it.
- Credentials: with SCHEDULER_WEB_PASSWORD set, every route but /healthz needs HTTP Basic, the user and the
  password compared in constant time. Bound to anything but loopback, the dashboard does not start without
  one (check_exposure).
- Cross-site requests: every state change is a POST, refused when the browser says it comes from another
  site (Sec-Fetch-Site), or from another origin (Origin), and, when it is a form (the only kind of POST
  another site can make a browser send without asking), when its token does not match the cookie's
  (double submit). A GET changes nothing.
- --read-only: no action is shown, and every POST is answered 403.
- Every answer says Content-Security-Policy (no inline script, nothing from elsewhere), X-Frame-Options DENY
  and nosniff; every value from the file, the store or the request is escaped in the pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from structlog.typing import FilteringBoundLogger

from scheduler import __version__, addr, pages
from scheduler.config import parse_duration
from scheduler.dashboard import HISTORY_PAGE, Dashboard, Schedules, Stores
from scheduler.errors import ControlError, NoLiveClockError, StoreError, UnknownTaskError, WebError
from scheduler.runs import iso_utc
from scheduler.store import PAGE_MAX, Store

DEFAULT_PORT = 8080
DEFAULT_USER = "admin"
PASSWORD_ENV = "SCHEDULER_WEB_PASSWORD"
USER_ENV = "SCHEDULER_WEB_USER"
MAX_BODY_BYTES = 64 * 1024
"""A POST's body beyond this is refused (413): the API takes a few short fields."""
MAX_CONNECTIONS = 64
"""Connections served at once; more are answered 503 at once, so that a flood cannot pile up threads."""
REQUEST_TIMEOUT_S = 10.0
"""A client that sends nothing for this long is dropped."""
REFRESH_S = 5
"""The pages refresh their content this often (dashboard.js)."""

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = (
    ("Content-Security-Policy", _CSP),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
_CSRF_COOKIE = "scheduler_csrf"
_NOTICE_COOKIE = "scheduler_notice"
# The content types a page on another site can POST from a form (or fetch without asking first): such a
# request must carry the token.
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
_STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"
_TASK = r"(?P<task>[^/]+)"
_ACTIONS = ("run", "pause", "resume")


@dataclass(frozen=True, slots=True)
class Credentials:
    """HTTP Basic credentials the dashboard asks for."""

    user: str
    password: str = field(repr=False)

    def match(self, header: str | None) -> str | None:
        """The user, when the Authorization header holds these credentials; else None. Both parts are
        compared in constant time (as digests, so that their lengths do not show either)."""
        if not header or header[:6].lower() != "basic ":
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, colon, password = decoded.partition(":")
        if not colon:
            return None
        same_user = hmac.compare_digest(_digest(user), _digest(self.user))
        same_password = hmac.compare_digest(_digest(password), _digest(self.password))
        return user if same_user and same_password else None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def listen_address(option: str | None, env: Mapping[str, str]) -> tuple[str, int]:
    """Where to listen: --addr if given; else 0.0.0.0:$PORT when $PORT is set (Heroku's web dynos); else
    127.0.0.1:8080. Bad input: WebError."""
    if option:
        try:
            return addr.parse_addr(option, what="--addr", example_port=DEFAULT_PORT)
        except ValueError as exc:
            raise WebError(str(exc)) from None
    port = env.get("PORT", "").strip()
    if port:
        if not port.isdigit() or int(port) > addr.MAX_PORT:
            raise WebError(f"$PORT {port!r}: not a port number (0..{addr.MAX_PORT})")
        return "0.0.0.0", int(port)
    return addr.DEFAULT_HOST, DEFAULT_PORT


def credentials(env: Mapping[str, str]) -> Credentials | None:
    """The credentials from SCHEDULER_WEB_PASSWORD and SCHEDULER_WEB_USER (default admin); None without a
    password."""
    password = env.get(PASSWORD_ENV, "")
    if not password:
        return None
    return Credentials(env.get(USER_ENV, "") or DEFAULT_USER, password)


def check_exposure(host: str, port: int, creds: Credentials | None) -> None:
    """Refuse (WebError) to listen beyond this machine without a password: whoever reaches the port could
    run and pause tasks, and read their output."""
    if creds is None and not addr.is_loopback(host):
        raise WebError(
            f"refusing to serve the dashboard on {host}:{port} without a password: anyone who reaches it "
            f"could run and pause tasks and read their output. Set {PASSWORD_ENV} (HTTP Basic; the user is "
            f"{USER_ENV}, default {DEFAULT_USER}), or listen on 127.0.0.1"
        )


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str  # the path and query as sent
    headers: Mapping[str, str]  # by lower-case name
    body: bytes = b""
    client: str = ""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters, the first value of each."""
        return {k: v[0] for k, v in parse_qs(urlsplit(self.target).query, keep_blank_values=True).items()}

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def cookie(self, name: str) -> str | None:
        raw = self.header("Cookie")
        if not raw:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None
        morsel = jar.get(name)
        return None if morsel is None else morsel.value


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = _JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    cache: str = "no-store"


class _Refused(Exception):
    """A request turned down before it reached a handler: the status and why."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


class WebApp:
    """The dashboard's routes. `handle` never raises: an error becomes its status and a message (a bug, 500,
    is logged as web.error without its traceback reaching anyone)."""

    def __init__(
        self,
        dashboard: Dashboard,
        *,
        log: FilteringBoundLogger,
        creds: Credentials | None = None,
        read_only: bool = False,
        loopback: bool = True,
        refresh_s: int = REFRESH_S,
    ) -> None:
        self.dashboard = dashboard
        self._log = log
        self._creds = creds
        self.read_only = read_only
        self._loopback = loopback
        self._refresh_s = refresh_s
        self._static = {name: _static_file(name) for name in _STATIC}
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
            ("GET", re.compile(r"/"), self._overview),
            ("GET", re.compile(rf"/tasks/{_TASK}"), self._task),
            ("GET", re.compile(r"/runs"), self._runs),
            ("GET", re.compile(r"/clocks"), self._clocks),
            ("GET", re.compile(r"/static/(?P<name>[a-z.]+)"), self._static_file),
            ("GET", re.compile(r"/healthz"), self._health),
            ("GET", re.compile(r"/api/tasks"), self._api_tasks),
            ("GET", re.compile(rf"/api/tasks/{_TASK}/runs"), self._api_task_runs),
            ("GET", re.compile(r"/api/runs"), self._api_runs),
            ("GET", re.compile(r"/api/clocks"), self._api_clocks),
            ("POST", re.compile(rf"/api/tasks/{_TASK}/(?P<action>run|pause|resume)"), self._api_action),
        ]

    def handle(self, request: Request) -> Response:
        """The answer to one request, security headers and all."""
        try:
            response = self._dispatch(request)
        except _Refused as refused:
            response = self._error(request, refused.status, str(refused))
            response.headers.extend(refused.headers)
        except UnknownTaskError as exc:
            response = self._error(request, 404, str(exc))
        except ValueError as exc:  # a bad filter, cursor or limit
            response = self._error(request, 400, str(exc))
        except StoreError as exc:
            response = self._error(request, 503, str(exc))
        except Exception as exc:  # a bug: say so, log it, never show a traceback
            self._log.error("web.error", path=request.path, error=f"{type(exc).__name__}: {exc}")
            if os.environ.get("SCHEDULER_DEBUG"):
                traceback.print_exc()
            response = self._error(request, 500, "internal error: see the dashboard's log")
        response.headers.extend(_SECURITY_HEADERS)
        return response

    # Security.

    def _dispatch(self, request: Request) -> Response:
        self._check_host(request)
        method = "GET" if request.method == "HEAD" else request.method
        path = request.path
        if path == "/healthz" and method == "GET":
            return self._health(request)
        user = self._authenticate(request)
        allowed = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            if method == "POST":
                self._check_post(request)
                return handler(request, user=user, **params)
            return handler(request, **params)
        if allowed:
            raise _Refused(
                405, f"{request.method} is not allowed here", [("Allow", ", ".join(sorted(set(allowed))))]
            )
        raise _Refused(404, f"no page at {path}")

    def _check_host(self, request: Request) -> None:
        """Bound to loopback: answer only requests addressed to a loopback name (DNS rebinding)."""
        if not self._loopback:
            return
        host = request.header("Host")
        if host is None:
            return  # HTTP/1.0 without Host: not a browser's request
        name = urlsplit(f"//{host}").hostname or ""
        if not addr.is_loopback(name):
            raise _Refused(421, f"this dashboard answers on localhost only, not as {host}")

    def _authenticate(self, request: Request) -> str | None:
        if self._creds is None:
            return None
        user = self._creds.match(request.header("Authorization"))
        if user is None:
            raise _Refused(
                401,
                "credentials required",
                [("WWW-Authenticate", 'Basic realm="scheduler", charset="UTF-8"')],
            )
        return user

    def _check_post(self, request: Request) -> None:
        """Refuse a POST that another site made a browser send, or any POST when read-only."""
        if self.read_only:
            raise _Refused(403, "this dashboard is read-only: actions are off")
        site = request.header("Sec-Fetch-Site")
        if site is not None and site.lower() not in ("same-origin", "none"):
            raise _Refused(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
        origin = request.header("Origin")
        if origin is not None:
            host = (request.header("Host") or "").lower()
            if origin == "null" or urlsplit(origin).netloc.lower() != host:
                raise _Refused(403, f"cross-origin request refused (Origin: {origin})")
        content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type in _FORM_TYPES:
            cookie = request.cookie(_CSRF_COOKIE) or ""
            token = request.header("X-CSRF-Token") or _form(request).get("csrf", "")
            if not cookie or not hmac.compare_digest(cookie.encode(), token.encode()):
                raise _Refused(
                    403, "cross-site request refused: the form's token does not match (reload the page)"
                )

    # Pages.

    def _overview(self, request: Request) -> Response:
        q = request.query
        view = self.dashboard.overview(
            query=q.get("q", "")[:200],
            failing_only=q.get("failing") == "1",
            page=_int(q.get("page"), 1, 1, 10**6),
        )
        return self._page(request, pages.overview, view)

    def _task(self, request: Request, task: str) -> Response:
        q = request.query
        view = self.dashboard.task(
            task,
            status=q.get("status") or None,
            trigger=q.get("trigger") or None,
            before=q.get("before") or None,
            limit=_int(q.get("limit"), HISTORY_PAGE, 1, PAGE_MAX),
        )
        return self._page(request, pages.task_page, view)

    def _runs(self, request: Request) -> Response:
        q = request.query
        view = self.dashboard.recent(
            status=q.get("status") or None,
            trigger=q.get("trigger") or None,
            before=q.get("before") or None,
            failures_first=q.get("failures") == "first",
        )
        return self._page(request, pages.runs_page, view)

    def _clocks(self, request: Request) -> Response:
        return self._page(request, pages.clocks_page, self.dashboard.clocks())

    def _page(self, request: Request, render: Callable[[Any, pages.Chrome], str], view: Any) -> Response:
        chrome, headers = self._chrome(request)
        return Response(200, render(view, chrome).encode(), _HTML, headers)

    def _chrome(self, request: Request) -> tuple[pages.Chrome, list[tuple[str, str]]]:
        """The frame's data, and the cookies to set: the CSRF token when the browser has none yet, and the
        removal of the notice shown."""
        headers: list[tuple[str, str]] = []
        token = request.cookie(_CSRF_COOKIE)
        if not token or not re.fullmatch(r"[A-Za-z0-9_-]{20,100}", token):
            token = secrets.token_urlsafe(24)
            headers.append(("Set-Cookie", _cookie(request, _CSRF_COOKIE, token)))
        notice = None
        raw = request.cookie(_NOTICE_COOKIE)
        if raw:
            kind, _, text = unquote(raw).partition(":")
            notice = (kind, text[:500])
            headers.append(("Set-Cookie", _cookie(request, _NOTICE_COOKIE, "", max_age=0)))
        user = self._creds.user if self._creds is not None else None
        chrome = pages.Chrome(
            token, self.read_only, __version__, request.target, notice, user, self._refresh_s
        )
        return chrome, headers

    def _static_file(self, request: Request, name: str) -> Response:
        found = self._static.get(name)
        if found is None:
            raise _Refused(404, f"no file {name}")
        return Response(200, found, _STATIC[name], cache="private, max-age=3600")

    def _health(self, request: Request) -> Response:
        """200 while the dashboard serves; the store's state as last seen, without asking it."""
        error = self.dashboard.stores.last_error
        return _json(200, {"status": "ok", "store": "ok" if error is None else "unavailable"})

    # The API.

    def _api_tasks(self, request: Request) -> Response:
        return _json(200, [row.to_json() for row in self.dashboard.tasks()])

    def _api_task_runs(self, request: Request, task: str) -> Response:
        return self._api_page(request, task, f"/api/tasks/{quote(task, safe='')}/runs")

    def _api_runs(self, request: Request) -> Response:
        return self._api_page(request, None, "/api/runs")

    def _api_page(self, request: Request, task: str | None, path: str) -> Response:
        """A page of runs with the keys of `history --json`, newest first; the next page's URL in a Link
        header (rel="next"), absent on the last page."""
        q = request.query
        limit = _int(q.get("limit"), HISTORY_PAGE, 1, PAGE_MAX)
        page = self.dashboard.runs(
            task,
            status=q.get("status") or None,
            trigger=q.get("trigger") or None,
            before=q.get("before") or None,
            limit=limit,
        )
        output = q.get("output") in ("1", "true")
        response = _json(200, [run.to_json(output=output) for run in page.runs])
        if page.before is not None:
            kept = {k: v for k, v in q.items() if k != "before" and v}
            query = "&".join(f"{k}={quote(v, safe='')}" for k, v in {**kept, "before": page.before}.items())
            response.headers.append(("Link", f'<{path}?{query}>; rel="next"'))
        return response

    def _api_clocks(self, request: Request) -> Response:
        return _json(
            200,
            [
                {
                    "id": c.id,
                    "host": c.host,
                    "pid": c.pid,
                    "version": c.version,
                    "started_at": iso_utc(c.started_at),
                    "heartbeat_at": iso_utc(c.heartbeat_at),
                    "alive": c.alive,
                    "config_digest": c.config_digest,
                }
                for c in self.dashboard.clock_rows()
            ],
        )

    def _api_action(self, request: Request, *, user: str | None, task: str, action: str) -> Response:
        """POST /api/tasks/{task}/run|pause|resume. A browser's form gets a redirect back (303) with a notice;
        anyone else, JSON."""
        by = f"web:{user}" if user is not None else "web:local"
        fields = {**request.query, **_form(request)}
        status, body = self._act(action, task, by, fields)
        if _wants_redirect(request):
            ok = status < 400
            text = str(body.get("message") if ok else body.get("error"))
            back = _local_path(fields.get("next"))
            notice = quote(f"{'ok' if ok else 'error'}:{text}", safe="")
            headers = [
                ("Location", back),
                ("Set-Cookie", _cookie(request, _NOTICE_COOKIE, notice, max_age=60)),
            ]
            return Response(303, b"", "text/plain; charset=utf-8", headers)
        return _json(status, body)

    def _act(
        self, action: str, task: str, by: str, fields: Mapping[str, str]
    ) -> tuple[int, dict[str, object]]:
        try:
            if action == "run":
                request_id = self.dashboard.run_now(task, by=by)
                message = (
                    f"{task}: run requested (request {request_id}); a live clock starts it within a second"
                )
                return 202, {"task": task, "request_id": request_id, "requested_by": by, "message": message}
            if action == "pause":
                until, reason = self._pause_fields(fields)
                override = self.dashboard.pause(task, by=by, until=until, reason=reason)
                until_text = f"until {iso_utc(override.until)}" if override.until else "until resumed"
                return 200, {
                    "task": task,
                    "paused": True,
                    "until": None if override.until is None else iso_utc(override.until),
                    "reason": override.reason,
                    "by": by,
                    "message": f"{task}: paused {until_text}; its fires are skipped",
                }
            held = self.dashboard.resume(task, by=by)
            message = f"{task}: resumed" if held else f"{task}: was not paused"
            return 200, {"task": task, "paused": False, "was_paused": held, "by": by, "message": message}
        except UnknownTaskError as exc:
            return 404, {"error": str(exc)}
        except NoLiveClockError as exc:
            return 409, {"error": str(exc)}
        except (ControlError, ValueError) as exc:
            return 400, {"error": str(exc)}
        except StoreError as exc:
            return 503, {"error": str(exc)}

    def _pause_fields(self, fields: Mapping[str, str]) -> tuple[datetime | None, str]:
        """`for` (a duration, e.g. 2h) or `until` (ISO 8601; UTC without an offset), and `reason`."""
        duration, until_text = fields.get("for", "").strip(), fields.get("until", "").strip()
        if duration and until_text:
            raise ValueError("give `for` or `until`, not both")
        now = datetime.now(UTC)
        until = None
        if duration:
            try:
                until = now + timedelta(seconds=parse_duration(duration))
            except ValueError as exc:
                raise ValueError(f"for: {exc}") from None
        elif until_text:
            try:
                until = datetime.fromisoformat(until_text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"until '{until_text}': not an ISO 8601 instant (e.g. 2026-12-01T09:00:00Z)"
                ) from None
            if until.tzinfo is None:
                until = until.replace(tzinfo=UTC)
            if until <= now:
                raise ValueError(f"until '{until_text}': that is not in the future")
        return until, fields.get("reason", "").strip()

    def _error(self, request: Request, status: int, message: str) -> Response:
        if request.path.startswith("/api/") or request.path == "/healthz" or not _wants_html(request):
            return _json(status, {"error": message})
        try:
            chrome, headers = self._chrome(request)
        except Exception:
            chrome, headers = pages.Chrome("", True, __version__, "/"), []
        body = pages.error_page(status, message, chrome, datetime.now(UTC))
        return Response(status, body.encode(), _HTML, headers)


def _form(request: Request) -> dict[str, str]:
    """A POST's fields, from a form or a JSON object (strings only); {} without a body."""
    if not request.body:
        return {}
    content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
    if content_type == _JSON:
        try:
            data = json.loads(request.body)
        except ValueError:
            raise _Refused(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise _Refused(400, "the body must be a JSON object")
        return {str(k): str(v) for k, v in data.items() if isinstance(v, str | int | float)}
    if content_type == "application/x-www-form-urlencoded":
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(400, "the form is not UTF-8") from None
        return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}
    raise _Refused(415, f"send a form or JSON, not {content_type or 'an untyped body'}")


def _wants_redirect(request: Request) -> bool:
    """A browser's form without script posts a form and accepts HTML: send it back where it came from."""
    content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
    accept = request.header("Accept") or ""
    return content_type == "application/x-www-form-urlencoded" and _JSON not in accept


def _wants_html(request: Request) -> bool:
    accept = request.header("Accept") or ""
    return "text/html" in accept or not accept or "*/*" in accept


def _local_path(value: str | None) -> str:
    """A path on this dashboard to send the browser back to; never another site ('//evil', '/\\evil')."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith(("//", "/\\"))
        or any(c in value for c in "\r\n")
    ):
        return "/"
    return value


def _cookie(request: Request, name: str, value: str, *, max_age: int | None = None) -> str:
    parts = [f"{name}={value}", "Path=/", "SameSite=Strict", "HttpOnly"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if (request.header("X-Forwarded-Proto") or "").lower() == "https":
        parts.append("Secure")
    return "; ".join(parts)


def _int(text: str | None, default: int, least: int, most: int) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or not least <= int(text) <= most:
        raise _Refused(400, f"'{text}': give a whole number from {least} to {most}")
    return int(text)


def _json(status: int, body: object) -> Response:
    return Response(status, json.dumps(body).encode(), _JSON)


def _static_file(name: str) -> bytes:
    return resources.files("scheduler").joinpath("static", name).read_bytes()


class WebServer:
    """Serves a WebApp from daemon threads (one per connection, at most MAX_CONNECTIONS), on a socket of
    its own or one handed over (scheduler run --web binds it, so that a port in use fails the clock's start
    and the dashboard can restart on it)."""

    def __init__(self, app: WebApp, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        """Bind at once (OSError, such as address in use, propagates), unless given a bound socket."""
        self.app = app
        self._server = _Server(app, host, port, sock)
        bound = self._server.socket.getsockname()
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.address
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def serve_forever(self) -> None:
        """Serve until shutdown() (from another thread)."""
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        """Serve from a daemon thread (the tests)."""
        self._thread = threading.Thread(target=self.serve_forever, name="dashboard", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._server.shutdown()

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(2)
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, app: WebApp, host: str, port: int, sock: socket.socket | None) -> None:
        self.app = app
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        if sock is None:
            self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            super().__init__((host, port), _Handler)
        else:
            self.address_family = sock.family
            super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = sock

    def server_bind(self) -> None:
        # No reverse DNS lookup of our own name (HTTPServer.server_bind's getfqdn), which can stall start-up.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exception(), ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"  # keep-alive: a polling page reuses its connection
    server_version = "scheduler"
    sys_version = ""

    def _serve(self) -> None:
        length_text = self.headers.get("Content-Length")
        body = b""
        if length_text:
            if not length_text.isdigit():
                self._raw(400, b'{"error": "bad Content-Length"}')
                return
            length = int(length_text)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                self._raw(413, b'{"error": "the body is too large"}')
                return
            body = self.rfile.read(length)
        elif self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._raw(411, b'{"error": "send a Content-Length"}')
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(self.command, self.path, headers, body, str(self.client_address[0]))
        response = self.server.app.handle(request)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", response.cache)
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _raw(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", _JSON)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per request would drown the log; actions are logged as web.action


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (OSError, such as address in use, propagates), to hand to serve()."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_Server.request_queue_size)
    except BaseException:
        sock.close()
        raise
    return sock


class Serving:
    """A dashboard being served: run_until_signalled() serves until SIGTERM or SIGINT."""

    def __init__(self, server: WebServer, stores: Stores, log: FilteringBoundLogger) -> None:
        self.server = server
        self._stores = stores
        self._log = log
        self._should_exit = False

    def run_until_signalled(self) -> None:
        """Serve from a thread; the signal handlers only record, and this loop notices within 0.2 s."""

        def handle_exit(signum: int, frame: object) -> None:
            self._should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handle_exit)
        self.server.start()
        while not self._should_exit:
            time.sleep(0.2)
        self.server.close()
        self._stores.close()
        self._log.info("web.stopped")


def serve(
    config_path: str,
    open_store: Callable[[], Store],
    host: str,
    port: int,
    *,
    log: FilteringBoundLogger,
    sock: socket.socket | None = None,
    creds: Credentials | None = None,
    read_only: bool = False,
) -> Serving:
    """Set the dashboard up on host:port (or the socket handed over), ready to serve: the schedules file
    loaded (ConfigError propagates), the store's connections opened lazily (one is tried now, bounded: a
    store that does not answer is logged, and the pages say so until it does)."""
    from scheduler.loader import load_config

    schedules = Schedules(config_path, load_config)
    stores = Stores(open_store)
    dashboard = Dashboard(schedules, stores, log=log)
    app = WebApp(dashboard, log=log, creds=creds, read_only=read_only, loopback=addr.is_loopback(host))
    server = WebServer(app, host, port, sock=sock)
    try:
        stores.call(lambda store: store.connect())
    except StoreError as exc:
        log.warning("store.unavailable", store=stores.display_url, error=str(exc))
    log.info(
        "web.serving",
        url=server.url,
        store=stores.display_url,
        read_only=read_only,
        auth=creds is not None,
    )
    return Serving(server, stores, log)
