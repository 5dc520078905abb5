"""A full disk seen before a store write, and told apart from other write errors after one.

Why before: h5py 3.16 with HDF5 2.0 crashes (segmentation fault) closing a file after ENOSPC in a compressed chunk
write, so the stores check the free space before each part is written and each shard sealed, and stop with one
line naming the folder, the space needed and the space left; the store stays intact and a rerun resumes it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from actrec.errors import StoreError

# Free space kept in hand beyond a file's estimated size: HDF5 metadata, the vlen heap, other small writes.
_SPACE_RESERVE = 256 << 10


class NotEnoughSpace(OSError):
    """The file system of a store has less free space than the next file needs (an ENOSPC raised before writing)."""

    def __init__(self, folder: Path, needed: int, free: int, what: str) -> None:
        super().__init__(errno.ENOSPC, f"disk full: {what} needs {needed / 1e6:.1f} MB, {free / 1e6:.1f} MB left "
                                       f"in {folder}")


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise NotEnoughSpace unless ``folder``'s file system has ``needed`` bytes (plus a small reserve) free."""
    free = shutil.disk_usage(folder).free
    if free < needed + _SPACE_RESERVE:
        raise NotEnoughSpace(folder, needed + _SPACE_RESERVE, free, what)


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError a full disk raises (h5py wraps it, so the message is checked too)."""
    return isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or "No space left" in str(exc))


def store_io_error(path: Path, exc: OSError) -> StoreError:
    """The one-line error for a failed write of ``path``: a full disk says the store is intact and how to resume."""
    if exc.errno == errno.ENOSPC:
        reason = exc.strerror if isinstance(exc, NotEnoughSpace) else "disk full"
        return StoreError(f"{path}: {reason}; the store is intact (finished videos are kept), "
                          "free some space and rerun the same command to resume")
    return StoreError(f"{path}: write failed ({exc.strerror or exc})")


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (its renames), to the disk, so that a crash keeps what was written."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
