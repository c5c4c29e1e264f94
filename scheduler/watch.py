"""Notice when the config file may have changed on disk, through atomic saves and symlink swaps."""

from __future__ import annotations

import os


class FileWatcher:
    """Polls one file's metadata, one stat per poll.

    It re-resolves the path on every poll, so an editor's atomic save (write a temporary file, rename it
    over the old one) and a Kubernetes ConfigMap swap (the `..data` symlink of the file's folder is
    replaced) are both seen. It never reads the file: whether the content really changed is for the
    reload to tell, by comparing `loader.Loaded.digest` with the last one, so that a `touch` does not
    cause a reload.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stat = self._stat_key()

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
