"""Read the config file, boundedly, and load it for a reload in a forked child process.

Any kind of file can sit at the config path: a FIFO (a read would wait for a writer forever), /dev/zero (it
never ends), a socket, a directory, a file that grows while it is read. So every load opens the path
without blocking, refuses anything but a regular file, and reads at most `MAX_CONFIG_BYTES`.

A reload's parse would otherwise run on the clock's own interpreter: it would hold the GIL against the
event loop for as long as it takes (fires late by up to that much), and leave its peak memory behind (the
YAML node tree is several times the size of the result, and the allocator keeps arenas that a few
long-lived objects still pin). So `load_isolated` forks: the child reads, hashes and validates the file and
sends the result back through a pipe, pickled; the loop reads the pipe as it fills and only unpickles. A
crash, a runaway file or a hang in the child cannot take the clock down with it. The first load, before
the clock starts, is in-process (`load_config`): it is faster, and config.py lets each task's nodes go as
soon as the task is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import hashlib
import os
import pickle
import signal
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from scheduler.config import Config, parse_config
from scheduler.errors import ConfigError
from scheduler.frozen import without_cycle_collection

MAX_CONFIG_BYTES = 64 * 1024 * 1024
# A parse of the 100,000-task benchmark file takes about 10 s on a slow machine: a child still busy after
# ten times that is stuck (a file on a hung network mount, a bug) and is killed.
DEFAULT_LOAD_TIMEOUT_S = 120.0

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 1 << 20
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


@dataclass(frozen=True, slots=True)
class Loaded:
    """The outcome of one `load_isolated`.

    `digest` is the hex SHA-256 of the bytes read (None when the file could not be read at all), so that a
    caller can skip a reload whose content did not change; `config` is the valid config, else None and
    `problems` holds every problem found, each ``PATH:LINE:COL: message``.
    """

    digest: str | None
    config: Config | None
    problems: tuple[str, ...] = ()


def read_config_file(path: str, *, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of the regular file at `path`, at most `max_bytes` of them.

    Never blocks on a FIFO or a device and never reads more than `max_bytes` + 1 bytes, even from a file
    that grows meanwhile. Anything else raises ConfigError with one problem naming the path and the reason.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except OSError as error:
        if error.errno == errno.ENXIO:  # a socket, or a device with no driver behind it
            raise ConfigError([f"{path}: not a regular file ({_kind_at(path)})"]) from None
        raise ConfigError([f"{path}: cannot read the file: {error.strerror or error}"]) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError([f"{path}: not a regular file ({_kind(mode)})"])
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise ConfigError(
                [f"{path}: the file is larger than {_size(max_bytes)}, the most a config may be"]
            )
        return b"".join(chunks)
    except OSError as error:
        raise ConfigError([f"{path}: cannot read the file: {error.strerror or error}"]) from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")


def _kind_at(path: str) -> str:
    try:
        return _kind(os.stat(path).st_mode)
    except OSError:
        return "an unknown kind of file"


def _size(count: int) -> str:
    return f"{count // (1 << 20)} MiB" if count >= 1 << 20 and count % (1 << 20) == 0 else f"{count} bytes"


def load_config(path: str, *, env: Mapping[str, str] | None = None, store_overridden: bool = False) -> Config:
    """Read (bounded, as `read_config_file`) and validate the config file at `path`, in this process.

    Every problem raises `ConfigError`: one naming the path and the reason when the file cannot be read or
    is not UTF-8, else every problem found in it. With `env`, the `${NAME}` references are checked against
    it and `env` values filled in from it (see `parse_config`).
    """
    return parse_config(read_config_file(path), path, env=env, store_overridden=store_overridden)


def _load_with_digest(path: str, env: Mapping[str, str] | None, store_overridden: bool) -> Loaded:
    """What the child computes: the file's digest as soon as it is read, then the config or the problems."""
    try:
        data = read_config_file(path)
    except ConfigError as exc:
        return Loaded(None, None, tuple(exc.problems))
    try:
        # Hashes the bytes once, into Config.digest.
        config = parse_config(data, path, env=env, store_overridden=store_overridden)
    except ConfigError as exc:
        return Loaded(hashlib.sha256(data).hexdigest(), None, tuple(exc.problems))
    return Loaded(config.digest, config, ())


async def load_isolated(
    path: str,
    *,
    timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    store_overridden: bool = False,
) -> Loaded:
    """Read, hash and validate the config file at `path` in a forked child, without blocking the loop.

    Problems with the file come back in `Loaded.problems`, never as an exception; with `env`, an unset
    variable that a `${NAME}` names is one of them, as for `load_config`. A child that is still
    busy after `timeout_s`, or that dies, is a problem too. Cancellation policy: if the awaiting task is
    cancelled (the clock shuts down during a reload), the child is killed and reaped at once and
    CancelledError propagates: a shutdown never waits for a parse. Loads in-process where fork is missing.
    """
    if not hasattr(os, "fork"):
        return _load_with_digest(path, env, store_overridden)
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process that has threads (the pinger's, the metrics
            # server's). The child only parses and writes to its pipe, then leaves with os._exit: it takes
            # no lock that another thread could hold (stdout, logging), and the interpreter resets the
            # import lock after a fork.
            warnings.simplefilter("ignore", DeprecationWarning)
            parent = os.getpid()
            pid = os.fork()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(path, write_fd, parent, env, store_overridden)
    os.close(write_fd)
    reaped = False
    try:
        os.set_blocking(read_fd, False)
        try:
            data = await asyncio.wait_for(_read_all(loop, read_fd), timeout_s)
        except TimeoutError:
            _kill(pid)
            await _reap(loop, pid)
            reaped = True
            return Loaded(None, None, (f"{path}: reading the file took longer than {timeout_s:g}s; gave up",))
        status = await _reap(loop, pid)
        reaped = True
    finally:
        os.close(read_fd)
        if not reaped:  # cancelled, or a bug: the child must not outlive this call
            _kill(pid)
            _reap_now(pid)
    if not data:
        code = os.waitstatus_to_exitcode(status)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return Loaded(None, None, (f"{path}: the process that reads the file {how}",))
    with without_cycle_collection():
        loaded: Loaded = pickle.loads(data)
    return loaded


async def _read_all(loop: asyncio.AbstractEventLoop, fd: int) -> bytes:
    """Everything written to the pipe `fd` (non-blocking) until its end, read as it becomes readable."""
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            while True:
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
        except BlockingIOError:
            return  # drained for now: wait for more
        except OSError as error:
            if not done.done():
                done.set_exception(error)
            return
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def _reap(loop: asyncio.AbstractEventLoop, pid: int) -> int:
    """The child's wait status, waiting for its exit on the loop: through a pidfd, else by polling."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = -1
    if pidfd >= 0:
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return _reap_now(pid)
    delay = 0.001
    while True:
        found, status = os.waitpid(pid, os.WNOHANG)
        if found:
            return status
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _reap_now(pid: int) -> int:
    """Wait for a child that has exited or was just SIGKILLed: a matter of microseconds."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0  # reaped elsewhere


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG(SIGKILL) where Linux's prctl is there; elsewhere nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)


def _child(
    path: str, write_fd: int, parent: int, env: Mapping[str, str] | None, store_overridden: bool
) -> None:
    try:
        # The clock's signal handlers would forward signals to its loop through the inherited wakeup fd:
        # this child takes the default actions instead.
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        # A clock killed mid-reload takes this child with it: it holds the clock's end of the orphan
        # guard's pipe (orphans.py), which must reach end-of-file when the clock dies.
        _die_with_parent(parent)
        try:
            result = _load_with_digest(path, env, store_overridden)
        except BaseException as exc:  # a bug: report it as a problem with the file rather than hang
            problem = f"{path}: internal error while reading the file: {type(exc).__name__}: {exc}"
            result = Loaded(None, None, (problem,))
        gc.disable()  # this process exits next: never collect
        data = pickle.dumps(result, protocol=_PROTOCOL)
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os._exit(0)
