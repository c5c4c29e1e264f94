"""Notice when the config file may have changed on disk, through atomic saves and symlink swaps."""

from __future__ import annotations

import hashlib
import os

from scheduler.errors import ConfigError
from scheduler.loader import read_config_file


class FileWatcher:
    """Polls one file's metadata, one stat per poll.

    It re-resolves the path on every poll, so an editor's atomic save (write a temporary file, rename it
    over the old one) and a Kubernetes ConfigMap swap (the `..data` symlink of the file's folder is
    replaced) are both seen. It never reads the file: whether the content really changed is for the
    reload to tell, by comparing `loader.Loaded.digest` with the last one, so that a `touch` does not
    cause a reload.
    """

    def __init__(self, path: str, digest: str | None = None) -> None:
        """`digest`: the content's when last loaded (`Config.digest`), for the transitional `changed`."""
        self.path = path
        self._stat = self._stat_key()
        self._digest = digest

    def _stat_key(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def touched(self) -> bool:
        """Cheap (one stat): True when the file may have changed since the last look."""
        key = self._stat_key()
        if key == self._stat:
            return False
        self._stat = key
        return True

    def changed(self) -> bool:
        """Transitional, until the clock compares `Loaded.digest` itself: reads the file (bounded, like
        every load) and says whether its digest differs from the last one seen."""
        try:
            digest: str | None = hashlib.sha256(read_config_file(self.path)).hexdigest()
        except ConfigError:
            digest = None
        if digest == self._digest:
            return False
        self._digest = digest
        return True
