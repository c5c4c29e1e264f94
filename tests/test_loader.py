"""Tests for scheduler.loader: bounded reading of regular files only, and reloads in a forked child that
never block the loop and never outlive a cancellation."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import signal
import socket
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from scheduler import loader
from scheduler.errors import ConfigError
from scheduler.loader import (
    MAX_CONFIG_BYTES,
    Loaded,
    load_config,
    load_isolated,
    read_config_file,
)

T = TypeVar("T")
DEADLINE_S = 30.0

CONFIG = """\
timezone: Europe/London
defaults:
  timeout: 15m
tasks:
  a:
    schedule: "0 9 * * MON-FRI"
    command: echo a
    env: {X: "1"}
  b:
    schedule: "0 9 * * MON-FRI"
    command: [echo, b]
    timezone: America/New_York
    cwd: jobs
  c:
    schedule: "H H * * *"
    command: echo c
"""


ENV_CONFIG = """\
tasks:
  a:
    schedule: every weekday at 9am
    command: run
    ping_url: https://hc-ping.com/${HC_KEY}
    env: {TOKEN: "${API_TOKEN}"}
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine under a deadline, so that a hang fails the test instead of stalling it."""
    return asyncio.run(asyncio.wait_for(coro, DEADLINE_S))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def blocked_child(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Make the child block (reading a pipe nobody writes to) instead of loading; yields the forked pids."""
    block_read, block_write = os.pipe()
    pids: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    def hang(path: str, *_: object) -> Loaded:
        os.read(block_read, 1)
        raise AssertionError("unreachable")

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(loader, "_load_with_digest", hang)
    yield pids
    os.close(block_read)
    os.close(block_write)


def is_gone(pid: int) -> bool:
    """True when `pid` is neither running nor a zombie waiting to be reaped."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


class TestReadConfigFile:
    def test_regular_file(self, config_file: Path) -> None:
        """A regular file's bytes, all of them."""
        assert CONFIG.encode() == read_config_file(str(config_file))

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is one problem naming the path."""
        path = tmp_path / "nope.yaml"
        with pytest.raises(ConfigError, match=rf"^{path}: no such file$") as info:
            read_config_file(str(path))
        assert 1 == len(info.value.problems)

    def test_directory(self, tmp_path: Path) -> None:
        """A directory is refused, named as such."""
        with pytest.raises(ConfigError, match=rf"^{tmp_path}: not a regular file \(a directory\)$"):
            read_config_file(str(tmp_path))

    def test_fifo_does_not_block(self, tmp_path: Path) -> None:
        """A FIFO with no writer is refused at once; a blocking open would wait for a writer forever."""
        path = tmp_path / "schedules.yaml"
        os.mkfifo(path)
        with pytest.raises(ConfigError, match=rf"^{path}: not a regular file \(a FIFO\)$"):
            read_config_file(str(path))

    def test_dev_zero(self) -> None:
        """/dev/zero, which never ends, is refused without reading."""
        with pytest.raises(ConfigError, match=r"^/dev/zero: not a regular file \(a character device\)$"):
            read_config_file("/dev/zero")

    def test_socket(self, tmp_path: Path) -> None:
        """A Unix socket, which open() cannot open at all, is named as a socket."""
        path = tmp_path / "s.yaml"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            with pytest.raises(ConfigError, match=rf"^{path}: not a regular file \(a socket\)$"):
                read_config_file(str(path))

    def test_symlink_to_regular_file(self, tmp_path: Path, config_file: Path) -> None:
        """A symlink is followed (ConfigMaps are symlinks): only what it points at must be regular."""
        link = tmp_path / "link.yaml"
        link.symlink_to(config_file)
        assert CONFIG.encode() == read_config_file(str(link))

    def test_too_large(self, tmp_path: Path) -> None:
        """One byte over the cap is refused, naming the cap."""
        path = tmp_path / "big.yaml"
        path.write_bytes(b"#" * 1025)
        with pytest.raises(ConfigError, match=rf"^{path}: the file is larger than 1024 bytes"):
            read_config_file(str(path), max_bytes=1024)

    def test_exactly_the_cap(self, tmp_path: Path) -> None:
        """A file of exactly the cap is read whole."""
        path = tmp_path / "big.yaml"
        path.write_bytes(b"#" * 1024)
        assert 1024 == len(read_config_file(str(path), max_bytes=1024))

    def test_default_cap(self) -> None:
        """The cap is 64 MiB."""
        assert 64 * 1024 * 1024 == MAX_CONFIG_BYTES

    def test_file_growing_while_read(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A file that grows while it is read (its size at open is small) is still caught at the cap."""
        path = tmp_path / "growing.yaml"
        path.write_bytes(b"#" * 10)
        real_read = os.read

        def read_and_grow(fd: int, count: int) -> bytes:
            with path.open("ab") as grow:
                grow.write(b"#" * 100)
            return real_read(fd, min(count, 16))

        monkeypatch.setattr(os, "read", read_and_grow)
        with pytest.raises(ConfigError, match="larger than 1024 bytes"):
            read_config_file(str(path), max_bytes=1024)


class TestLoadConfig:
    def test_reads_file(self, tmp_path: Path) -> None:
        """A file on disk parses, with cwd relative to its folder, its path and its digest in the Config."""
        path = tmp_path / "schedules.yaml"
        text = 'tasks:\n  a: {schedule: "0 9 * * *", command: run, cwd: jobs}\n'
        path.write_text(text, encoding="utf-8")

        config = load_config(str(path))

        assert str(path) == config.path
        assert str(tmp_path / "jobs") == config.tasks["a"].cwd
        assert sha256(text.encode()) == config.digest

    def test_errors_name_the_path(self, tmp_path: Path) -> None:
        """Problems in a file on disk start with its path."""
        path = tmp_path / "clock.yaml"
        path.write_text("tasks:\n  a: {schedule: '0 9 * * *'}\n", encoding="utf-8")

        with pytest.raises(ConfigError, match=rf"^{path}:2:3: task 'a': missing required key 'command'$"):
            load_config(str(path))

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 names the path, the line and the byte."""
        path = tmp_path / "latin1.yaml"
        path.write_bytes("tasks: {}\n# caf\u00e9\n".encode("latin-1"))

        with pytest.raises(ConfigError, match=rf"^{path}:2:6: not UTF-8 text \(byte 0xe9\)"):
            load_config(str(path))

    def test_environment(self, tmp_path: Path) -> None:
        """With the environment, env values are filled in from it, and an unset variable is a problem at its
        line, as for every other problem."""
        path = tmp_path / "schedules.yaml"
        path.write_text(ENV_CONFIG)

        config = load_config(str(path), env={"API_TOKEN": "abc", "HC_KEY": "k"})
        assert {"TOKEN": "abc"} == dict(config.tasks["a"].env)
        with pytest.raises(ConfigError) as info:
            load_config(str(path), env={"API_TOKEN": "abc"})
        assert [
            f"{path}:5:15: task 'a': ping_url: environment variable HC_KEY is not set"
        ] == info.value.problems

    def test_store_overridden(self, tmp_path: Path) -> None:
        """When the command line names another store, the file's store variable may be unset."""
        path = tmp_path / "schedules.yaml"
        path.write_text("store: ${DATABASE_URL}\ntasks: {}\n")
        with pytest.raises(ConfigError, match=r":1:8: store: environment variable DATABASE_URL is not set$"):
            load_config(str(path), env={})
        assert "${DATABASE_URL}" == load_config(str(path), env={}, store_overridden=True).store

    def test_fifo(self, tmp_path: Path) -> None:
        """The CLI's in-process load refuses a FIFO too, without blocking."""
        path = tmp_path / "schedules.yaml"
        os.mkfifo(path)
        with pytest.raises(ConfigError, match=r"not a regular file \(a FIFO\)"):
            load_config(str(path))


class TestLoadIsolated:
    def test_same_config_as_in_process(self, config_file: Path) -> None:
        """The child's config equals what load_config gives, field for field, digest included."""
        loaded = run(load_isolated(str(config_file)))
        direct = load_config(str(config_file))
        assert (sha256(CONFIG.encode()), direct, ()) == (loaded.digest, loaded.config, loaded.problems)
        assert loaded.config is not None
        assert direct.digest == loaded.config.digest
        assert str(config_file.parent / "jobs") == loaded.config.tasks["b"].cwd
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for name in ("a", "b", "c"):
            assert direct.tasks[name].schedule.fires(start, 3) == loaded.config.tasks[name].schedule.fires(
                start, 3
            )

    def test_invalid_file_has_digest_and_problems(self, tmp_path: Path) -> None:
        """Every problem the child finds comes back unchanged, with the digest of what it read."""
        path = tmp_path / "schedules.yaml"
        text = "tasks:\n  a:\n    schedule: every fortnight\n    comand: x\n"
        path.write_text(text)
        loaded = run(load_isolated(str(path)))
        with pytest.raises(ConfigError) as direct:
            load_config(str(path))
        assert (sha256(text.encode()), None) == (loaded.digest, loaded.config)
        assert tuple(direct.value.problems) == loaded.problems
        assert 2 == len(loaded.problems)

    def test_environment(self, tmp_path: Path) -> None:
        """A reload checks the file against the environment it is given, as the first load does: an unset
        variable is a problem, and set ones fill in the env values."""
        path = tmp_path / "schedules.yaml"
        path.write_text(ENV_CONFIG)

        unset = run(load_isolated(str(path), env={"API_TOKEN": "abc"}))
        filled = run(load_isolated(str(path), env={"API_TOKEN": "abc", "HC_KEY": "k"}))

        assert (None, (f"{path}:5:15: task 'a': ping_url: environment variable HC_KEY is not set",)) == (
            unset.config,
            unset.problems,
        )
        assert filled.config is not None
        assert {"TOKEN": "abc"} == dict(filled.config.tasks["a"].env)
        assert sha256(ENV_CONFIG.encode()) == unset.digest == filled.digest

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file has no digest, and the same problem as in-process."""
        loaded = run(load_isolated(str(tmp_path / "nope.yaml")))
        assert (None, None, (f"{tmp_path / 'nope.yaml'}: no such file",)) == (
            loaded.digest,
            loaded.config,
            loaded.problems,
        )

    @pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
    def test_special_files(self, tmp_path: Path, kind: str) -> None:
        """A FIFO or /dev/zero at the path is a problem, never a hang or a memory blow-up."""
        if kind == "fifo":
            path = str(tmp_path / "schedules.yaml")
            os.mkfifo(path)
        else:
            path = "/dev/zero"
        loaded = run(load_isolated(path))
        assert (None, None) == (loaded.digest, loaded.config)
        assert 1 == len(loaded.problems)
        assert "not a regular file" in loaded.problems[0]

    def test_timeout_kills_the_child(self, config_file: Path, blocked_child: list[int]) -> None:
        """A child still busy after timeout_s is killed and reaped, and the timeout is the problem."""
        loaded = run(load_isolated(str(config_file), timeout_s=0.05))
        assert (None, None) == (loaded.digest, loaded.config)
        assert (f"{config_file}: reading the file took longer than 0.05s; gave up",) == loaded.problems
        assert [True] == [is_gone(pid) for pid in blocked_child]

    def test_cancel_kills_and_reaps_the_child(self, config_file: Path, blocked_child: list[int]) -> None:
        """Cancelling the awaiting task (a shutdown) kills and reaps the child and re-raises at once."""

        async def main() -> None:
            job = asyncio.create_task(load_isolated(str(config_file)))
            while not blocked_child:
                await asyncio.sleep(0)  # the loop keeps running while the child works
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job

        open_fds = len(os.listdir("/proc/self/fd"))
        run(main())
        assert [True] == [is_gone(pid) for pid in blocked_child]
        assert open_fds == len(os.listdir("/proc/self/fd"))

    def test_child_killed(self, config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A child that dies without answering is a problem naming how it died."""

        def die(path: str, *_: object) -> Loaded:
            os.kill(os.getpid(), signal.SIGKILL)
            raise AssertionError("unreachable")

        monkeypatch.setattr(loader, "_load_with_digest", die)
        loaded = run(load_isolated(str(config_file)))
        assert (f"{config_file}: the process that reads the file was killed by signal 9",) == loaded.problems

    def test_reap_without_pidfd(self, config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without pidfds (an old kernel), the child is reaped by polling waitpid on the loop."""

        def no_pidfd(pid: int) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
        loaded = run(load_isolated(str(config_file)))
        assert loaded.config is not None


class TestPickling:
    def test_round_trip_keeps_equality_and_sharing(self, config_file: Path) -> None:
        """Specs survive pickling equal, and tasks with the same expression still share its fields."""
        config = load_config(str(config_file))
        copy = pickle.loads(pickle.dumps(Loaded(config.digest, config)))
        assert config == copy.config
        assert copy.config is not None
        assert config.digest == copy.config.digest
        assert copy.config.tasks["a"].schedule._fields is copy.config.tasks["b"].schedule._fields
        assert "America/New_York" == copy.config.tasks["b"].schedule.zone.key
