"""Shared fixtures: where the real test data lives (../shared/data beside the checkout)."""

from __future__ import annotations

import os
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
