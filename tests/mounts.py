"""Small real file systems for tests: a tmpfs mounted on a test's folder (full disks, read-only stores).

Mounting needs root and a container that allows it; elsewhere the test is skipped and says why."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


def mount_tmpfs(folder: Path, options: str) -> subprocess.CompletedProcess:
    """``mount -t tmpfs -o OPTIONS tmpfs FOLDER`` (``remount,size=...`` resizes a mounted one)."""
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True)


@contextlib.contextmanager
def tmpfs(folder: Path, options: str, what: str) -> Iterator[Path]:
    """``folder`` (created) with a tmpfs mounted on it for the block; skips the test where that is impossible."""
    folder.mkdir(exist_ok=True)
    try:
        mounted = mount_tmpfs(folder, options)
    except FileNotFoundError:
        pytest.skip(f"no mount command on this machine: cannot make {what}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount {what} here (needs root and a container that allows it): "
                    f"{mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)
