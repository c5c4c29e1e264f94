"""Load the config for a reload in a forked child process.

A reload's parse would otherwise run on the clock's own interpreter: it would hold the GIL against the
event loop for as long as it takes (fires late by up to that much), and leave its peak memory behind (the
YAML node tree is several times the size of the result, and the allocator keeps arenas that a few
long-lived objects still pin). So the clock forks: the child reads and validates the file and sends the
finished `Config` back through a pipe, pickled; the clock only unpickles it. A crash or a runaway file in
the child cannot take the clock down with it. The first load, before the clock starts, is in-process: it
is faster, and config.py lets each task's nodes go as soon as the task is built.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import warnings

from scheduler.config import Config, load_config
from scheduler.errors import ConfigError
from scheduler.frozen import without_cycle_collection

_PROTOCOL = pickle.HIGHEST_PROTOCOL


def load_config_isolated(path: str) -> Config:
    """`load_config(path)`, run in a forked child; raises ConfigError exactly as it would.

    Falls back to loading in-process where fork is not available.
    """
    if not hasattr(os, "fork"):
        return load_config(path)
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads (a reload runs in one). The child
        # only parses and writes to its pipe, then leaves with os._exit: it takes no lock that another
        # thread could hold (stdout, logging), and the interpreter resets the import lock after a fork.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(path, write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        code = os.waitstatus_to_exitcode(status)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise ConfigError([f"{path}: the process that reads the file {how}"])
    with without_cycle_collection():
        kind, payload = pickle.loads(data)
    if kind == "error":
        raise ConfigError(payload)
    return payload  # type: ignore[no-any-return]


def _child(path: str, write_fd: int) -> None:
    try:
        # The clock's signal handlers would forward signals to its loop through the inherited wakeup fd:
        # this child takes the default actions instead.
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        try:
            result: tuple[str, object] = ("ok", load_config(path))
        except ConfigError as exc:
            result = ("error", exc.problems)
        except BaseException as exc:  # a bug: report it as a problem with the file rather than hang
            result = (
                "error",
                [f"{path}: internal error while reading the file: {type(exc).__name__}: {exc}"],
            )
        gc.disable()  # this process exits next: never collect
        data = pickle.dumps(result, protocol=_PROTOCOL)
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os._exit(0)
