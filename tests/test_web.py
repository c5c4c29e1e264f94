"""Tests for scheduler.web: routes, the JSON API and the security around them.

Most tests call WebApp.handle with a Request, on a real SQLite store written behind the dashboard's back as a
clock would; TestServer goes through a real socket. End to end, with real clocks on both stores:
tests/integration/test_web.py; in a real browser: tests/integration/test_browser.py.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import structlog

from scheduler import web
from scheduler.dashboard import Dashboard, Schedules, Stores
from scheduler.errors import WebError
from scheduler.loader import load_config
from scheduler.store import ClockInfo, RunRecord, Store, open_store
from scheduler.web import Credentials, Request, Response, WebApp, WebServer

CONFIG = """\
timezone: Europe/London
tasks:
  backup:
    schedule: daily at 01:30
    command: echo backup
  report:
    schedule: every 10 minutes
    command: [echo, report]
"""
CLOCK = ClockInfo("clock.1:10:aaaaaa", "clock.1", 10, "0.1.0", "digest")
TOKEN = "t" * 32
HOST = "127.0.0.1:8080"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    store = open_store(url)
    yield store
    store.close()


@pytest.fixture
def make_app(url: str, tmp_path: Path) -> Iterator[Any]:
    made: list[Stores] = []
    path = tmp_path / "schedules.yaml"
    path.write_text(CONFIG)

    def make(**options: Any) -> WebApp:
        stores = Stores(lambda: open_store(url), size=2)
        made.append(stores)
        dashboard = Dashboard(
            Schedules(str(path), load_config), stores, log=structlog.get_logger(), shared_for_s=0
        )
        return WebApp(dashboard, log=structlog.get_logger(), **options)

    yield make
    for stores in made:
        stores.close()


@pytest.fixture
def app(make_app: Any) -> WebApp:
    return make_app()


def call(
    app: WebApp,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    body: Any = None,
    token: str | None = None,
) -> Response:
    """One request, as a browser on this page would send it unless told otherwise (Host, and a form's
    token in the form and the cookie)."""
    sent = {"host": HOST, "accept": "text/html"}
    data = b""
    if form is not None:
        form = {"csrf": TOKEN, **form} if token is None else {**form, "csrf": token}
        data = urlencode(form).encode()
        sent |= {"content-type": "application/x-www-form-urlencoded", "cookie": f"scheduler_csrf={TOKEN}"}
    elif body is not None:
        data = json.dumps(body).encode()
        sent |= {"content-type": "application/json", "accept": "application/json"}
    sent |= {k.lower(): v for k, v in (headers or {}).items()}
    return app.handle(Request(method, target, sent, data, "127.0.0.1"))


def as_json(response: Response) -> Any:
    assert response.content_type == "application/json"
    return json.loads(response.body)


def header(response: Response, name: str) -> list[str]:
    return [v for k, v in response.headers if k.lower() == name.lower()]


def ran(
    store: Store, task: str, status: str = "succeeded", seconds_ago: float = 60, **fields: Any
) -> RunRecord:
    started = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    record = RunRecord(
        task,
        started,
        "schedule",
        uuid.uuid4().hex[:12],
        CLOCK.id,
        started,
        status,
        started + timedelta(seconds=1),
        0,
        None,
        1.0,
        fields.pop("output", None),
    )
    assert store.record(record)
    return record


class TestPages:
    @pytest.mark.parametrize("path", ["/", "/tasks/backup", "/runs", "/clocks", "/?q=rep&failing=1&page=1"])
    def test_served(self, app: WebApp, path: str) -> None:
        """Each page is HTML; each sets the form token's cookie when the browser has none."""
        response = call(app, "GET", path)
        assert (200, "text/html; charset=utf-8") == (response.status, response.content_type)
        assert response.body.startswith(b"<!doctype html>")
        [cookie] = header(response, "Set-Cookie")
        assert cookie.startswith("scheduler_csrf=")
        assert "SameSite=Strict" in cookie
        assert "HttpOnly" in cookie

    def test_token_kept(self, app: WebApp) -> None:
        """A browser with a token keeps it: the page's forms carry that one."""
        response = call(app, "GET", "/", headers={"cookie": f"scheduler_csrf={TOKEN}"})
        assert [] == header(response, "Set-Cookie")
        assert f'name="csrf" value="{TOKEN}"'.encode() in response.body

    @pytest.mark.parametrize(
        ("name", "content_type"),
        [
            ("dashboard.js", "text/javascript"),
            ("dashboard.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ],
    )
    def test_static(self, app: WebApp, name: str, content_type: str) -> None:
        """The script and the stylesheet are the package's own: nothing comes from the internet."""
        response = call(app, "GET", f"/static/{name}")
        assert 200 == response.status
        assert response.content_type.startswith(content_type)
        assert b"http://" not in response.body.replace(b"http://www.w3.org/2000/svg", b"")
        assert b"https://" not in response.body

    def test_unknown_task(self, app: WebApp) -> None:
        """A page saying so, 404, with a suggestion."""
        response = call(app, "GET", "/tasks/reprot")
        assert 404 == response.status
        assert b"did you mean &#x27;report&#x27;?" in response.body

    def test_unknown_path_is_escaped(self, app: WebApp) -> None:
        """404; the path shown as text."""
        response = call(app, "GET", "/<script>alert(1)</script>")
        assert 404 == response.status
        assert b"<script>alert" not in response.body
        assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in response.body

    @pytest.mark.parametrize(
        ("method", "path", "allow"),
        [("GET", "/api/tasks/backup/pause", "POST"), ("POST", "/api/tasks", "GET"), ("DELETE", "/", "GET")],
    )
    def test_wrong_method(self, app: WebApp, method: str, path: str, allow: str) -> None:
        """405 with Allow: a GET never changes anything, and actions are only POSTs."""
        response = call(app, method, path)
        assert 405 == response.status
        assert [allow] == header(response, "Allow")

    def test_bad_filter(self, app: WebApp) -> None:
        """400, naming the value."""
        response = call(app, "GET", "/tasks/backup?status=done")
        assert 400 == response.status
        assert b"status &#x27;done&#x27;" in response.body

    def test_store_not_answering(self, app: WebApp) -> None:
        """Pages still show the tasks, with a banner; the API says 503; /healthz says what it last saw."""
        app.dashboard.stores = Stores(lambda: open_store("sqlite:////proc/no/such/dir/s.db"), size=1)
        page = call(app, "GET", "/")
        assert 200 == page.status
        assert b"The store is not answering" in page.body
        assert b"backup" in page.body
        assert 503 == call(app, "GET", "/api/tasks").status
        assert {"status": "ok", "store": "unavailable"} == as_json(call(app, "GET", "/healthz"))


class TestSecurityHeaders:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/"),
            ("GET", "/static/dashboard.js"),
            ("GET", "/api/tasks"),
            ("GET", "/nope"),
            ("POST", "/"),
        ],
    )
    def test_every_answer(self, app: WebApp, method: str, path: str) -> None:
        """CSP without inline script or style, no framing, no sniffing: on pages, files, the API, errors."""
        response = call(app, method, path)
        headers = dict(response.headers)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "DENY" == headers["X-Frame-Options"]
        assert "nosniff" == headers["X-Content-Type-Options"]


class TestHost:
    @pytest.mark.parametrize("host", ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "127.0.0.1"])
    def test_loopback_names(self, app: WebApp, host: str) -> None:
        """Bound to loopback, it answers to loopback names."""
        assert 200 == call(app, "GET", "/", headers={"Host": host}).status

    @pytest.mark.parametrize("host", ["evil.example:8080", "evil.example", "10.0.0.1:8080"])
    def test_other_names_refused(self, app: WebApp, host: str) -> None:
        """A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) reads nothing."""
        response = call(app, "GET", "/api/tasks", headers={"Host": host})
        assert 421 == response.status
        assert "localhost only" in as_json(response)["error"]

    def test_any_name_off_loopback(self, make_app: Any) -> None:
        """Bound elsewhere (with credentials), the Host is the proxy's business."""
        app = make_app(loopback=False)
        assert 200 == call(app, "GET", "/", headers={"Host": "scheduler.example.com"}).status


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class TestCredentials:
    @pytest.fixture
    def locked(self, make_app: Any) -> WebApp:
        return make_app(creds=Credentials("admin", "s3cret-pw"), loopback=False)

    @pytest.mark.parametrize("path", ["/", "/tasks/backup", "/api/tasks", "/static/dashboard.js", "/nope"])
    def test_required(self, locked: WebApp, path: str) -> None:
        """Every route but /healthz asks for them."""
        response = call(locked, "GET", path)
        assert 401 == response.status
        assert ['Basic realm="scheduler", charset="UTF-8"'] == header(response, "WWW-Authenticate")

    @pytest.mark.parametrize(
        "headers",
        [
            basic("admin", "wrong"),
            basic("root", "s3cret-pw"),
            basic("admin", "s3cret-pw-and-more"),
            {"Authorization": "Basic !!!"},
            {"Authorization": "Bearer s3cret-pw"},
            {"Authorization": "Basic " + base64.b64encode(b"admins3cret-pw").decode()},
        ],
    )
    def test_wrong(self, locked: WebApp, headers: dict[str, str]) -> None:
        """A wrong user, password or scheme, or garbage: 401."""
        assert 401 == call(locked, "GET", "/", headers=headers).status

    def test_right(self, locked: WebApp) -> None:
        """The page, naming the user."""
        response = call(locked, "GET", "/", headers=basic("admin", "s3cret-pw"))
        assert 200 == response.status
        assert b'<span class="user">admin</span>' in response.body

    def test_health_open(self, locked: WebApp) -> None:
        """A load balancer's health check needs no password (and learns nothing)."""
        assert {"status": "ok", "store": "ok"} == as_json(call(locked, "GET", "/healthz"))

    def test_actions_by_the_user(self, locked: WebApp, store: Store) -> None:
        """An action is recorded as the user's."""
        response = call(locked, "POST", "/api/tasks/backup/pause", headers=basic("admin", "s3cret-pw"))
        assert 200 == response.status
        assert "web:admin" == store.overrides()["backup"].by


class TestCrossSite:
    def pause(self, app: WebApp, **kwargs: Any) -> Response:
        return call(app, "POST", "/api/tasks/backup/pause", **kwargs)

    @pytest.mark.parametrize("site", ["cross-site", "same-site"])
    def test_fetch_metadata(self, app: WebApp, store: Store, site: str) -> None:
        """A browser saying the request comes from another site: 403, and nothing changes."""
        response = self.pause(app, form={}, headers={"Sec-Fetch-Site": site})
        assert 403 == response.status
        assert {} == store.overrides()

    @pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999"])
    def test_origin(self, app: WebApp, store: Store, origin: str) -> None:
        """Another origin, even with the right token (a cookie another port set): 403."""
        response = self.pause(app, form={}, headers={"Origin": origin})
        assert 403 == response.status
        assert {} == store.overrides()

    @pytest.mark.parametrize("token", ["", "x" * 32])
    def test_form_without_the_token(self, app: WebApp, store: Store, token: str) -> None:
        """A form without the cookie's token (an old browser that sends neither Origin nor Sec-Fetch-Site):
        403."""
        response = self.pause(app, form={}, token=token)
        assert 403 == response.status
        assert "token" in as_json(response)["error"]
        assert {} == store.overrides()

    def test_plain_text_without_the_token(self, app: WebApp, store: Store) -> None:
        """A text/plain POST (which another site can send without asking): the token is required too."""
        response = call(
            app, "POST", "/api/tasks/backup/pause", headers={"content-type": "text/plain"}, body=None
        )
        assert 403 == response.status
        assert {} == store.overrides()

    def test_form_from_the_page(self, app: WebApp, store: Store) -> None:
        """The page's own form: done, and the browser is sent back with a notice shown once."""
        response = self.pause(
            app,
            form={"next": "/tasks/backup?x=1", "reason": "db move"},
            headers={"Origin": f"http://{HOST}", "Sec-Fetch-Site": "same-origin"},
        )
        assert 303 == response.status
        assert ["/tasks/backup?x=1"] == header(response, "Location")
        assert store.overrides()["backup"].paused
        [cookie] = header(response, "Set-Cookie")
        notice = cookie.split(";")[0].split("=", 1)[1]
        page = call(app, "GET", "/tasks/backup", headers={"cookie": f"scheduler_notice={notice}"})
        assert b"backup: paused until resumed" in page.body
        assert any("scheduler_notice=;" in c and "Max-Age=0" in c for c in header(page, "Set-Cookie"))

    def test_script_from_the_page(self, app: WebApp, store: Store) -> None:
        """dashboard.js: the token in a header, JSON back."""
        response = self.pause(
            app,
            form={},
            token="",
            headers={"X-CSRF-Token": TOKEN, "Accept": "application/json", "Sec-Fetch-Site": "same-origin"},
        )
        assert 200 == response.status
        assert as_json(response)["paused"]

    def test_script_elsewhere(self, app: WebApp, store: Store) -> None:
        """curl or a script (no browser headers, no form): JSON or no body, no token needed."""
        assert 200 == call(app, "POST", "/api/tasks/backup/pause", body={"reason": "ci"}).status
        assert 200 == call(app, "POST", "/api/tasks/backup/resume").status

    @pytest.mark.parametrize("back", ["//evil.example/", "/\\evil.example", "http://evil.example/", "tasks"])
    def test_no_redirect_elsewhere(self, app: WebApp, back: str) -> None:
        """`next` must be a path of this dashboard."""
        response = self.pause(app, form={"next": back})
        assert ["/"] == header(response, "Location")


class TestReadOnly:
    @pytest.mark.parametrize("action", ["run", "pause", "resume"])
    def test_actions_refused(self, make_app: Any, store: Store, action: str) -> None:
        """403, and nothing written."""
        app = make_app(read_only=True)
        store.heartbeat(CLOCK)
        response = call(app, "POST", f"/api/tasks/backup/{action}")
        assert 403 == response.status
        assert "read-only" in as_json(response)["error"]
        assert [] == store.actions()

    def test_no_action_shown(self, make_app: Any) -> None:
        """No form posts anywhere."""
        app = make_app(read_only=True)
        for path in ("/", "/tasks/backup", "/runs", "/clocks"):
            assert b'method="post"' not in call(app, "GET", path).body


class TestApi:
    def test_tasks(self, app: WebApp, store: Store) -> None:
        """A list of objects with the documented keys."""
        ran(store, "report", "failed")
        tasks = as_json(call(app, "GET", "/api/tasks"))
        assert ["backup", "report"] == [t["task"] for t in tasks]
        assert {"task", "schedule", "timezone", "paused", "running", "next", "last_run"} == set(tasks[1])
        assert ["failed", 1.0] == [tasks[1]["last_run"]["status"], tasks[1]["last_run"]["duration_s"]]
        assert None is tasks[0]["last_run"]

    def test_runs_as_history_json(self, app: WebApp, store: Store) -> None:
        """The keys of `history --json`, newest first, a page at a time; the next page in a Link header."""
        records = [ran(store, "report", seconds_ago=100 - i, output="out") for i in range(3)]
        first = call(app, "GET", "/api/tasks/report/runs?limit=2")
        runs = as_json(first)
        assert [r.run_id for r in records[::-1][:2]] == [r["run_id"] for r in runs]
        assert list(records[0].to_json()) == list(runs[0])
        [link] = header(first, "Link")
        assert link.startswith("</api/tasks/report/runs?limit=2&before=")
        assert link.endswith('>; rel="next"')
        second = call(app, "GET", link[1:].split(">")[0])
        assert [records[0].run_id] == [r["run_id"] for r in as_json(second)]
        assert [] == header(second, "Link")
        with_output = as_json(call(app, "GET", "/api/tasks/report/runs?limit=1&output=1"))
        assert "out" == with_output[0]["output"]

    def test_runs_filtered(self, app: WebApp, store: Store) -> None:
        """By status and trigger."""
        ran(store, "report", "succeeded")
        failed = ran(store, "report", "failed")
        runs = as_json(call(app, "GET", "/api/tasks/report/runs?status=failed&trigger=schedule"))
        assert [failed.run_id] == [r["run_id"] for r in runs]

    @pytest.mark.parametrize(
        ("query", "message"),
        [
            ("status=done", "status 'done'"),
            ("trigger=DROP%20TABLE", "trigger 'DROP TABLE'"),
            ("limit=0", "from 1 to 1000"),
            ("limit=abc", "from 1 to 1000"),
            ("before=yesterday", "before 'yesterday'"),
        ],
    )
    def test_runs_bad_query(self, app: WebApp, query: str, message: str) -> None:
        """400, naming the value."""
        response = call(app, "GET", f"/api/tasks/report/runs?{query}")
        assert 400 == response.status
        assert message in as_json(response)["error"]

    def test_unknown_task(self, app: WebApp) -> None:
        """404 for its runs and for every action."""
        assert 404 == call(app, "GET", "/api/tasks/nope/runs").status
        for action in ("run", "pause", "resume"):
            assert 404 == call(app, "POST", f"/api/tasks/nope/{action}").status

    def test_clocks(self, app: WebApp, store: Store) -> None:
        """id, host, pid, version, started_at, heartbeat_at, alive, config_digest."""
        store.heartbeat(CLOCK)
        [clock] = as_json(call(app, "GET", "/api/clocks"))
        keys = ["id", "host", "pid", "version", "started_at", "heartbeat_at", "alive", "config_digest"]
        assert keys == list(clock)
        assert [CLOCK.id, True, "digest"] == [clock["id"], clock["alive"], clock["config_digest"]]

    def test_run_without_a_live_clock(self, app: WebApp, store: Store) -> None:
        """409: nothing would run it, so nothing is asked."""
        response = call(app, "POST", "/api/tasks/report/run")
        assert 409 == response.status
        assert "no live clock" in as_json(response)["error"]
        assert [] == store.requests()

    def test_run(self, app: WebApp, store: Store) -> None:
        """202 with the request's id; the request names who asked."""
        store.heartbeat(CLOCK)
        response = call(app, "POST", "/api/tasks/report/run")
        assert 202 == response.status
        body = as_json(response)
        [request] = store.requests()
        assert (request.id, "web:local", "report") == (body["request_id"], request.requested_by, request.task)

    def test_pause_for(self, app: WebApp, store: Store) -> None:
        """`for` a duration: until that long from now; with a reason."""
        before = datetime.now(UTC)
        body = as_json(call(app, "POST", "/api/tasks/report/pause", body={"for": "2h", "reason": "deploy"}))
        until = datetime.fromisoformat(body["until"])
        assert before + timedelta(hours=2) <= until <= datetime.now(UTC) + timedelta(hours=2)
        assert (True, "deploy", "web:local") == (body["paused"], body["reason"], body["by"])
        assert store.overrides()["report"].until == until

    def test_pause_until_in_the_query(self, app: WebApp, store: Store) -> None:
        """`until` as ISO 8601 (UTC without an offset), also from the query string."""
        until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0, tzinfo=None)
        response = call(app, "POST", f"/api/tasks/report/pause?until={quote(until.isoformat())}")
        assert until.replace(tzinfo=UTC) == store.overrides()["report"].until
        assert 200 == response.status

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"for": "2h", "until": "2030-01-01T00:00:00Z"}, "not both"),
            ({"for": "soon"}, "for:"),
            ({"until": "tomorrow"}, "not an ISO 8601 instant"),
            ({"until": "2001-01-01T00:00:00Z"}, "not in the future"),
            ({"reason": "x" * 2000}, "reason"),
        ],
    )
    def test_pause_bad_fields(self, app: WebApp, store: Store, fields: dict[str, str], message: str) -> None:
        """400, naming the problem; nothing paused."""
        response = call(app, "POST", "/api/tasks/report/pause", body=fields)
        assert 400 == response.status
        assert message in as_json(response)["error"]
        assert {} == {k: v for k, v in store.overrides().items() if v.paused}

    def test_resume(self, app: WebApp, store: Store) -> None:
        """200, saying whether it was paused."""
        store.pause("report", by="ops")
        assert as_json(call(app, "POST", "/api/tasks/report/resume"))["was_paused"]
        assert not as_json(call(app, "POST", "/api/tasks/report/resume"))["was_paused"]

    @pytest.mark.parametrize(
        ("content_type", "body", "status"),
        [
            ("application/json", b"[1]", 400),
            ("application/json", b"{", 400),
            ("application/xml", b"<x/>", 415),
        ],
    )
    def test_bad_bodies(self, app: WebApp, content_type: str, body: bytes, status: int) -> None:
        """A body that is not a JSON object or a form."""
        request = Request(
            "POST", "/api/tasks/report/pause", {"host": HOST, "content-type": content_type}, body
        )
        assert status == app.handle(request).status


class TestListening:
    def test_default(self) -> None:
        """127.0.0.1:8080."""
        assert ("127.0.0.1", 8080) == web.listen_address(None, {})

    def test_heroku_port(self) -> None:
        """$PORT: every interface, as Heroku's router needs."""
        assert ("0.0.0.0", 5123) == web.listen_address(None, {"PORT": "5123"})

    def test_addr_wins(self) -> None:
        """--addr over $PORT."""
        assert ("127.0.0.1", 9000) == web.listen_address("9000", {"PORT": "5123"})

    @pytest.mark.parametrize(("addr", "env"), [("http://x:1", {}), (None, {"PORT": "web"})])
    def test_bad(self, addr: str | None, env: dict[str, str]) -> None:
        """A URL for an address, a $PORT that is no port: errors naming them."""
        with pytest.raises(WebError, match=r"--addr|PORT"):
            web.listen_address(addr, env)

    def test_credentials(self) -> None:
        """From the environment; the user defaults to admin; no password, no credentials."""
        assert Credentials("admin", "pw") == web.credentials({"SCHEDULER_WEB_PASSWORD": "pw"})
        assert Credentials("ops", "pw") == web.credentials(
            {"SCHEDULER_WEB_PASSWORD": "pw", "SCHEDULER_WEB_USER": "ops"}
        )
        assert None is web.credentials({"SCHEDULER_WEB_USER": "ops"})
        assert "pw" not in repr(Credentials("admin", "pw"))

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "scheduler.internal"])
    def test_exposed_needs_a_password(self, host: str) -> None:
        """Off loopback without credentials: refused, saying what to do."""
        with pytest.raises(WebError, match=r"without a password.*SCHEDULER_WEB_PASSWORD"):
            web.check_exposure(host, 8080, None)
        web.check_exposure(host, 8080, Credentials("admin", "pw"))

    def test_loopback_needs_none(self) -> None:
        """Only this machine reaches it: no password needed."""
        web.check_exposure("127.0.0.1", 8080, None)


class TestServer:
    @pytest.fixture
    def server(self, app: WebApp) -> Iterator[WebServer]:
        server = WebServer(app, "127.0.0.1", 0)
        server.start()
        yield server
        server.close()

    def connect(self, server: WebServer) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(*server.address, timeout=5)

    def test_keep_alive(self, server: WebServer) -> None:
        """A polling page reuses its connection."""
        conn = self.connect(server)
        for _ in range(3):
            conn.request("GET", "/api/tasks")
            response = conn.getresponse()
            assert 200 == response.status
            response.read()
        conn.close()

    def test_head(self, server: WebServer) -> None:
        """HEAD: the headers of a GET, no body."""
        conn = self.connect(server)
        conn.request("HEAD", "/")
        response = conn.getresponse()
        assert (200, b"") == (response.status, response.read())
        assert int(response.getheader("Content-Length") or 0) > 0
        conn.close()

    def test_body_too_large(self, server: WebServer) -> None:
        """413, without reading it."""
        conn = self.connect(server)
        conn.request("POST", "/api/tasks/report/pause", body=b"x" * (web.MAX_BODY_BYTES + 1))
        assert 413 == conn.getresponse().status
        conn.close()

    def test_too_many_connections(self, app: WebApp, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past MAX_CONNECTIONS at once, 503 at once: a flood cannot pile up threads."""
        monkeypatch.setattr(web, "MAX_CONNECTIONS", 2)
        server = WebServer(app, "127.0.0.1", 0)
        server.start()
        idle = [socket.create_connection(server.address) for _ in range(2)]
        try:
            conn = self.connect(server)
            conn.request("GET", "/healthz")
            assert 503 == conn.getresponse().status
        finally:
            for sock in idle:
                sock.close()
            server.close()

    def test_address_in_use(self, app: WebApp, server: WebServer) -> None:
        """Binding a port in use raises OSError (the CLI says so, exit 2)."""
        with pytest.raises(OSError, match="in use"):
            WebServer(app, "127.0.0.1", server.address[1])

    def test_handed_socket(self, app: WebApp) -> None:
        """Serves from a socket bound by someone else (scheduler run --web)."""
        sock = web.bind("127.0.0.1", 0)
        server = WebServer(app, "127.0.0.1", 0, sock=sock)
        server.start()
        try:
            assert sock.getsockname()[1] == server.address[1]
            conn = self.connect(server)
            conn.request("GET", "/healthz")
            assert 200 == conn.getresponse().status
        finally:
            server.close()
