"""The wheel and sdist as they would reach PyPI: the distribution name that is ours, the `scheduler` command,
the license as an SPDX expression, and nothing of the repository's own tooling inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from scheduler import __version__

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--quiet", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # No deprecation banner from the build backend (the license used to be a TOML table).
    assert "deprecated" not in result.stderr.lower(), result.stderr
    return out


def _wheel(dist: Path) -> zipfile.ZipFile:
    (wheel,) = dist.glob("*.whl")
    return zipfile.ZipFile(wheel)


def test_wheel_metadata_names_our_distribution(dist: Path) -> None:
    with _wheel(dist) as wheel:
        (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
        entry_points = wheel.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
    assert metadata["Name"] == "scheduler-clock"
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Summary"]
    assert "scheduler = scheduler.cli:main" in entry_points
    extras = metadata.get_all("Provides-Extra")
    assert "postgres" in extras
    assert metadata.get_payload().startswith("# scheduler")  # the README is the long description


def test_wheel_holds_the_package_and_nothing_else(dist: Path) -> None:
    with _wheel(dist) as wheel:
        tops = {name.split("/", 1)[0] for name in wheel.namelist()}
        names = set(wheel.namelist())
    assert tops == {"scheduler", f"scheduler_clock-{__version__}.dist-info"}
    assert "scheduler/py.typed" in names
    assert "scheduler/cli.py" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_sdist_carries_docs_tests_and_license(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for wanted in ("LICENSE", "README.md", "CHANGELOG.md", "schedules.example.yaml", "tests/conftest.py"):
        assert wanted in names
    assert any(name.startswith("docs/") for name in names)
