"""Shared fixtures: where the real test data lives (../shared/data beside the checkout)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The real clips, flow ground truth and split files; ACTREC_SHARED_DATA overrides the default location."""
    return Path(os.environ.get("ACTREC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        raise FileNotFoundError(f"shared test data not found at {path}; set ACTREC_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def videos_dir(shared_data: Path) -> Path:
    return shared_data / "videos"


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """An empty folder on a read-only file system: a tmpfs mounted read-only (chmod does not stop root)."""
    sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the helper module
    from mounts import tmpfs

    with tmpfs(tmp_path / "read_only", "ro,size=64k", "a read-only tmpfs") as folder:
        yield folder
