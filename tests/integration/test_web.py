"""The dashboard end to end: `scheduler web` and `scheduler run --web` as real processes, their JSON API
against real clocks on SQLite and PostgreSQL, and what they refuse to start without."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ClockProcess, pid_alive, run_cli, wait_until

pytestmark = pytest.mark.integration

TASKS = (
    "tasks:\n"
    '  tick:\n    schedule: "* * * * * *"\n    command: "true"\n'
    "  other:\n    schedule: '@daily'\n    command: echo 'from the page <b>'\n"
)
# A run request is taken at a clock's next poll (about a second), on a loaded machine.
STARTED_WITHIN_S = 5.0


def request(
    url: str, method: str = "GET", body: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON or text) of one request; error statuses included."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=data, method=method, headers={**sent, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            status, got, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, got, raw = error.code, dict(error.headers), error.read()
    text = raw.decode()
    return status, got, json.loads(text) if got.get("Content-Type") == "application/json" else text


def served_at(clock: ClockProcess) -> str:
    """The dashboard's URL, as its web.serving event gives it."""
    [serving] = clock.wait_event("web.serving", timeout=20)
    return str(serving["url"]).rstrip("/")


class WebProcess(ClockProcess):
    """A running `scheduler web`: its events, like a clock's."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(config, *args, env=env, command="web")


@pytest.fixture
def start_web(tmp_path: Path) -> Iterator[Callable[..., WebProcess]]:
    """Start `scheduler web` on the test's schedules.yaml; stopped (and killed if need be) at the end."""
    started: list[WebProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WebProcess:
        web = WebProcess(tmp_path / "schedules.yaml", *args, env=env)
        started.append(web)
        return web

    yield start
    for web in started:
        if web.proc.poll() is None:
            web.proc.kill()
            web.proc.wait(10)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("postgres_store_url"))


def manual_runs(base: str, task: str) -> list[dict[str, Any]]:
    status, _, runs = request(f"{base}/api/tasks/{task}/runs?trigger=manual&output=1")
    assert 200 == status
    return list(runs)


class TestAgainstRealClocks:
    @pytest.mark.timing
    def test_api_run_pause_resume(self, start_clock: Callable[..., ClockProcess], store_url: str) -> None:
        """`run --web` on each store: the API lists the tasks and the clock; a run asked for starts on the
        clock within seconds as trigger manual, naming who asked; a pause makes the clock skip; a resume
        lets it fire again; every action is logged with who did it."""
        clock = start_clock(TASKS, "--store", store_url, "--web", "127.0.0.1:0")
        base = served_at(clock)
        status, _, tasks = request(f"{base}/api/tasks")
        assert 200 == status
        assert ["tick", "other"] == [t["task"] for t in tasks]
        status, _, [row] = request(f"{base}/api/clocks")
        assert (200, True, clock.proc.pid) == (status, row["alive"], row["pid"])

        asked = time.monotonic()
        status, _, body = request(f"{base}/api/tasks/other/run", "POST")
        assert (202, "web:local") == (status, body["requested_by"])
        [started] = clock.wait_event("task.started", task="other", timeout=STARTED_WITHIN_S + 5)
        assert time.monotonic() - asked < STARTED_WITHIN_S
        assert ("manual", "web:local") == (started["trigger"], started["requested_by"])
        clock.wait_event("task.finished", task="other")
        assert wait_until(lambda: [r["status"] for r in manual_runs(base, "other")] == ["succeeded"])
        assert "from the page <b>" == manual_runs(base, "other")[0]["output"]

        status, _, body = request(f"{base}/api/tasks/tick/pause", "POST", {"reason": "test", "for": "1h"})
        assert (200, True) == (status, body["paused"])
        clock.wait_event("task.skipped", task="tick", reason="paused", timeout=10)
        [tick] = [t for t in request(f"{base}/api/tasks")[2] if t["task"] == "tick"]
        assert tick["paused"]
        status, _, body = request(f"{base}/api/tasks/tick/resume", "POST")
        assert (200, True) == (status, body["was_paused"])
        clock.wait_event("task.resumed", task="tick", timeout=10)
        starts = len(clock.named("task.started"))
        clock.wait_event("task.started", task="tick", count=starts, timeout=10)
        assert [("run", "other"), ("pause", "tick"), ("resume", "tick")] == [
            (e["action"], e["task"]) for e in clock.named("web.action")
        ]
        assert 0 == clock.stop()

    def test_separate_process_on_postgresql(
        self,
        start_clock: Callable[..., ClockProcess],
        start_web: Callable[..., WebProcess],
        postgres_store_url: str,
    ) -> None:
        """The Heroku shape: `scheduler web` in a process of its own beside the clock, both on the same
        database; the web process asks, the clock runs."""
        clock = start_clock(TASKS, "--store", postgres_store_url)
        web = start_web("--addr", "127.0.0.1:0", env={"SCHEDULER_STORE_URL": postgres_store_url})
        base = served_at(web)
        assert 202 == request(f"{base}/api/tasks/other/run", "POST")[0]
        clock.wait_event("task.started", task="other", trigger="manual", timeout=STARTED_WITHIN_S + 5)
        assert wait_until(lambda: len(manual_runs(base, "other")) == 1)
        web.proc.send_signal(signal.SIGTERM)
        assert 0 == web.proc.wait(10)
        assert web.named("web.stopped")

    def test_no_live_clock(self, start_web: Callable[..., WebProcess], tmp_path: Path) -> None:
        """With no clock on the store, run now is refused (409) instead of pretending; the page says so."""
        (tmp_path / "schedules.yaml").write_text(f"store: sqlite:///{tmp_path / 'state.db'}\n{TASKS}")
        base = served_at(start_web("--addr", "127.0.0.1:0"))
        status, _, body = request(f"{base}/api/tasks/other/run", "POST")
        assert 409 == status
        assert "no live clock" in body["error"]
        assert "No live clock uses this store" in request(f"{base}/")[2]


class TestSupervisedChild:
    def test_killed_child_comes_back(self, start_clock: Callable[..., ClockProcess], tmp_path: Path) -> None:
        """The dashboard dies: the clock starts it again on the same port; the clock's fires go on."""
        clock = start_clock(TASKS, "--store", f"sqlite:///{tmp_path / 'state.db'}", "--web", "127.0.0.1:0")
        base = served_at(clock)
        [serving] = clock.named("web.serving")
        child = _child_pid(clock.proc.pid)
        os.kill(child, signal.SIGKILL)
        clock.wait_event("web.exited", status=-9)
        clock.wait_event("web.serving", count=2, timeout=20)
        assert 200 == request(f"{base}/healthz")[0]
        assert serving["url"] == clock.named("web.serving")[-1]["url"]
        assert 0 == clock.stop()
        assert not pid_alive(_child_pid(clock.proc.pid, default=-1))

    def test_dies_with_the_clock(self, start_clock: Callable[..., ClockProcess], tmp_path: Path) -> None:
        """A clock killed with SIGKILL takes its dashboard with it."""
        clock = start_clock(TASKS, "--store", f"sqlite:///{tmp_path / 'state.db'}", "--web", "127.0.0.1:0")
        served_at(clock)
        child = _child_pid(clock.proc.pid)
        clock.proc.kill()
        clock.proc.wait(10)
        assert wait_until(lambda: not pid_alive(child), 10)

    def test_read_only(self, start_web: Callable[..., WebProcess], tmp_path: Path) -> None:
        """--read-only: actions answer 403."""
        (tmp_path / "schedules.yaml").write_text(f"store: sqlite:///{tmp_path / 'state.db'}\n{TASKS}")
        base = served_at(start_web("--addr", "127.0.0.1:0", "--read-only"))
        assert 403 == request(f"{base}/api/tasks/tick/pause", "POST")[0]


def _child_pid(parent: int, default: int | None = None) -> int:
    """The pid of the `scheduler web` child of `parent`."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == parent and b"web" in cmdline:
            return int(name)
    if default is not None:
        return default
    raise AssertionError(f"no dashboard child of {parent}")


class TestRefusals:
    def cli(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        result = run_cli(*args, cwd=tmp_path, env={**os.environ, **(env or {})}, timeout=30)
        assert "Traceback" not in result.stderr
        return result.returncode, result.stderr

    def test_no_store(self, tmp_path: Path) -> None:
        """`web` and `run --web` without a store: exit 2, saying how to add one."""
        (tmp_path / "schedules.yaml").write_text(TASKS)
        for args in (("web",), ("run", "--web", "127.0.0.1:0")):
            status, err = self.cli(tmp_path, *args)
            assert 2 == status
            assert "the dashboard needs a store" in err

    @pytest.mark.parametrize("args", [("web", "--addr", "0.0.0.0:0"), ("run", "--web", "0.0.0.0:0")])
    def test_exposed_without_a_password(self, tmp_path: Path, args: tuple[str, ...]) -> None:
        """Off loopback without SCHEDULER_WEB_PASSWORD: exit 2, a clear message, nothing served."""
        (tmp_path / "schedules.yaml").write_text(f"store: sqlite:///{tmp_path / 'state.db'}\n{TASKS}")
        env = {k: v for k, v in os.environ.items() if k != "SCHEDULER_WEB_PASSWORD"}
        result = run_cli(*args, cwd=tmp_path, env=env, timeout=30)
        assert 2 == result.returncode
        assert "refusing to serve the dashboard on 0.0.0.0:0 without a password" in " ".join(
            result.stderr.split()
        )

    def test_heroku_port_with_credentials(self, start_web: Callable[..., WebProcess], tmp_path: Path) -> None:
        """$PORT: every interface, credentials required on every page, /healthz open."""
        (tmp_path / "schedules.yaml").write_text(f"store: sqlite:///{tmp_path / 'state.db'}\n{TASKS}")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {"PORT": str(port), "SCHEDULER_WEB_PASSWORD": "pw-123", "SCHEDULER_WEB_USER": "ops"}
        web = start_web(env=env)
        served_at(web)
        [serving] = web.named("web.serving")
        assert serving["auth"] is True
        base = f"http://127.0.0.1:{port}"
        assert 401 == request(f"{base}/api/tasks")[0]
        auth = {"Authorization": "Basic " + base64.b64encode(b"ops:pw-123").decode()}
        assert 200 == request(f"{base}/api/tasks", headers=auth)[0]
        assert 200 == request(f"{base}/healthz")[0]

    def test_port_in_use(self, tmp_path: Path) -> None:
        """`run --web` on a port in use: exit 2 before the clock starts."""
        (tmp_path / "schedules.yaml").write_text(f"store: sqlite:///{tmp_path / 'state.db'}\n{TASKS}")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            status, err = self.cli(tmp_path, "run", "--web", f"127.0.0.1:{port}")
        assert 2 == status
        assert "cannot listen" in err
