"""Tests for scheduler.watch: changes are seen through renames and symlink swaps, with one stat per poll."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scheduler.watch import FileWatcher


def watch(path: Path) -> FileWatcher:
    return FileWatcher(str(path))


def noticed(watcher: FileWatcher) -> bool:
    """What the clock does each poll: a cheap stat (the reload then compares the content's digest)."""
    return watcher.touched()


class TestFileWatcher:
    def test_unchanged_file(self, tmp_path: Path) -> None:
        """No change, no report, and not even a read."""
        path = tmp_path / "schedules.yaml"
        path.write_text("a")
        watcher = watch(path)
        assert (False, False) == (watcher.touched(), noticed(watcher))

    def test_edit_in_place(self, tmp_path: Path) -> None:
        """A new content is reported once."""
        path = tmp_path / "schedules.yaml"
        path.write_text("a")
        watcher = watch(path)
        path.write_text("bb")
        assert [True, False] == [noticed(watcher), noticed(watcher)]

    def test_touch_is_seen_once(self, tmp_path: Path) -> None:
        """A new mtime is reported once (the reload's digest tells it is no change of content)."""
        path = tmp_path / "schedules.yaml"
        path.write_text("a")
        watcher = watch(path)
        os.utime(path, ns=(1, 1))
        assert [True, False] == [watcher.touched(), watcher.touched()]

    def test_atomic_save(self, tmp_path: Path) -> None:
        """An editor's write-then-rename is seen."""
        path = tmp_path / "schedules.yaml"
        path.write_text("a")
        watcher = watch(path)
        tmp = tmp_path / ".schedules.yaml.swp"
        tmp.write_text("b")
        os.replace(tmp, path)
        assert noticed(watcher) is True

    def test_configmap_symlink_swap(self, tmp_path: Path) -> None:
        """A Kubernetes ConfigMap update (the ..data symlink swapped to a new folder) is seen."""
        (tmp_path / "v1").mkdir()
        (tmp_path / "v1" / "schedules.yaml").write_text("a")
        (tmp_path / "..data").symlink_to("v1")
        path = tmp_path / "schedules.yaml"
        path.symlink_to("..data/schedules.yaml")
        watcher = watch(path)
        (tmp_path / "v2").mkdir()
        (tmp_path / "v2" / "schedules.yaml").write_text("b")
        (tmp_path / "..data_tmp").symlink_to("v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert noticed(watcher) is True

    def test_removed_then_restored(self, tmp_path: Path) -> None:
        """A file that disappears is a change (the reload then reports it), and so is its return."""
        path = tmp_path / "schedules.yaml"
        path.write_text("a")
        watcher = watch(path)
        path.unlink()
        assert noticed(watcher) is True
        path.write_text("a")
        assert noticed(watcher) is True

    @pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
    def test_touched_never_reads(self, tmp_path: Path, kind: str) -> None:
        """touched() only stats: a FIFO or /dev/zero swapped in is noticed without a read that would hang
        or fill memory."""
        path = tmp_path / "schedules.yaml"
        path.write_text("a")
        watcher = watch(path)
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")
        assert [True, False] == [watcher.touched(), watcher.touched()]
