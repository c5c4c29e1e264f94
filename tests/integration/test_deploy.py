"""The deploy recipes in the repository work as written: the Dockerfile's command starts a clock whose
/healthz its HEALTHCHECK accepts, and the systemd unit is valid and starts a clock as systemd would."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import SCHEDULER

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG = "tasks:\n  tick:\n    schedule: every second\n    command: 'true'\n"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_dockerfile_is_slim_non_root_and_checks_health() -> None:
    instructions = _instructions(ROOT / "Dockerfile")
    (base,) = [args for word, args in instructions if word == "FROM"]
    assert re.fullmatch(r"python:3\.1\d-slim", base)
    users = [(i, args) for i, (word, args) in enumerate(instructions) if word == "USER"]
    cmd_index = next(i for i, (word, _) in enumerate(instructions) if word == "CMD")
    assert users
    assert users[-1][0] < cmd_index
    assert users[-1][1] not in ("root", "0")
    (health,) = [args for word, args in instructions if word == "HEALTHCHECK"]
    assert "/healthz" in health


def test_dockerfile_command_serves_the_healthz_its_healthcheck_reads(tmp_path: Path) -> None:
    """Run the image's CMD and HEALTHCHECK here (no Docker daemon needed), on a free port."""
    instructions = dict(_instructions(ROOT / "Dockerfile"))
    command: list[str] = json.loads(instructions["CMD"])
    health_args = instructions["HEALTHCHECK"].split("CMD", 1)[1].strip()
    health: list[str] = json.loads(health_args)
    assert command[:2] == ["scheduler", "run"]
    port = _free_port()
    command = [arg.replace("0.0.0.0:9464", f"127.0.0.1:{port}") for arg in command]
    health = [arg.replace("127.0.0.1:9464", f"127.0.0.1:{port}") for arg in health]
    assert any(str(port) in arg for arg in command)
    assert any(str(port) in arg for arg in health)
    (tmp_path / "schedules.yaml").write_text(CONFIG)
    clock = subprocess.Popen(
        [*SCHEDULER, *command[1:]], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            check = subprocess.run([sys.executable, *health[1:]], capture_output=True, timeout=10)
            if check.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert check.returncode == 0, check.stderr.decode()
        clock.send_signal(signal.SIGTERM)
        assert clock.wait(15) == 0
        # The image's shutdown grace fits `docker stop`'s 10 seconds.
        grace = command[command.index("--shutdown-grace") + 1]
        assert grace.endswith("s")
        assert float(grace[:-1]) < 10
    finally:
        if clock.poll() is None:
            clock.kill()
            clock.wait()


def _unit() -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in (ROOT / "deploy" / "scheduler.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys


def test_systemd_unit_is_valid(tmp_path: Path) -> None:
    unit = _unit()
    assert unit["Type"] == "notify"
    assert unit["KillMode"] == "mixed"
    assert "WatchdogSec" in unit
    # The clock's shutdown grace ends before systemd's SIGKILL.
    argv = shlex.split(unit["ExecStart"])
    grace = argv[argv.index("--shutdown-grace") + 1]
    assert float(grace.rstrip("s")) < float(unit["TimeoutStopSec"].rstrip("s"))
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")  # the checks above still ran
    text = (ROOT / "deploy" / "scheduler.service").read_text()
    text = text.replace("/usr/local/bin/scheduler", str(Path(sys.executable).parent / "scheduler"))
    text = text.replace("User=scheduler", "User=root").replace("Group=scheduler", "Group=root")
    text = text.replace("/srv/app", str(tmp_path))
    (tmp_path / "scheduler.service").write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / "scheduler.service")], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
