"""Notice when the config file changes on disk: by content, through atomic saves and symlink swaps."""

from __future__ import annotations

import hashlib
import os


class FileWatcher:
    """Polls one file for a change of content.

    It re-resolves the path on every poll, so an editor's atomic save (write a temporary file, rename it
    over the old one) and a Kubernetes ConfigMap swap (the `..data` symlink of the file's folder is
    replaced) are both seen. A cheap stat decides whether to read; a hash of the bytes decides whether
    the content really changed, so a `touch` does not cause a reload.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stat = self._stat_key()
        self._digest = self._read_digest()

    def _stat_key(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _read_digest(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return hashlib.sha256(f.read()).digest()
        except OSError:
            return None

    def touched(self) -> bool:
        """Cheap (one stat): True when the file may have changed since the last look."""
        key = self._stat_key()
        if key == self._stat:
            return False
        self._stat = key
        return True

    def changed(self) -> bool:
        """Reads the file: True once per change of its content (a file that disappears counts)."""
        digest = self._read_digest()
        if digest == self._digest:
            return False
        self._digest = digest
        return True
