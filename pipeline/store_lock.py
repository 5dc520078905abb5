"""Advisory locks that keep two processes from writing the same part of a store at once.

A stage's writer holds, for its whole run, an exclusive lock on ``ROOT/.lock.rankR`` (its rank's shards) and a
shared lock on ``ROOT/.lock`` (the store). ``actrec verify-store --repair``, which rewrites any shard, takes
``ROOT/.lock`` exclusively. A second writer of the same rank, or a repair during a write, stops at once with one
line naming the holder: "another process (pid N on host H) is writing rank R of this store".

The locks are ``flock`` locks, which the kernel drops when their process ends however it ends (``kill -9``
included), so a lock left by a dead process is simply taken over; the lock file's content (pid, host, rank, start
time) only serves the message. On a file system without locks (ENOLCK, EOPNOTSUPP: some Lustre or NFS mounts)
the run goes on unlocked after one warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

from actrec.errors import StoreError

STORE_LOCK = ".lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def rank_lock_path(root: Path, rank: int) -> Path:
    return root / f"{STORE_LOCK}.rank{rank}"


@contextlib.contextmanager
def writer_lock(root: str | Path, rank: int, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the locks of a writer of ``rank`` while the block runs; StoreError when another process holds them."""
    root = Path(root)
    with contextlib.ExitStack() as held:
        store = held.enter_context(_locked(root / STORE_LOCK, fcntl.LOCK_SH, rank, log))
        if store is None:
            raise StoreError(f"{root}: {_holder_line(root)}; wait for it to finish")
        mine = held.enter_context(_locked(rank_lock_path(root, rank), fcntl.LOCK_EX, rank, log))
        if mine is None:
            raise StoreError(f"{root}: {_describe(rank_lock_path(root, rank), rank)}; wait for it to finish, or "
                             "stop it, before running this again")
        yield


@contextlib.contextmanager
def store_lock(root: str | Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the whole store exclusively (no writer of any rank at work) while the block runs."""
    root = Path(root)
    with _locked(root / STORE_LOCK, fcntl.LOCK_EX, None, log) as got:
        if got is None:
            raise StoreError(f"{root}: {_holder_line(root)}; repair the store once it has finished")
        yield


@contextlib.contextmanager
def _locked(path: Path, mode: int, rank: int | None, log: Callable[[str], None]) -> Iterator[int | None]:
    """The open lock file descriptor, locked (without waiting) in ``mode``; None when another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{path.parent}: cannot write in this store ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise StoreError(f"{path}: cannot lock ({exc.strerror or exc})") from None
            log(f"warning: {path.parent}: this file system has no file locks ({exc.strerror}); nothing stops a "
                "second process from writing the same store")
        if rank is not None:
            _record(fd, rank)
        yield fd
    finally:
        os.close(fd)


def _record(fd: int, rank: int) -> None:
    """Write who holds a rank lock into its file (read only for the message a second writer gets)."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "rank": rank,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, the message lacks the pid
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)


def _describe(path: Path, rank: int) -> str:
    """"another process (pid N on host H) is writing rank R of this store", from the lock file's record."""
    try:
        info = json.loads(path.read_text())
        who = f"pid {info['pid']} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        who = "pid unknown"
    return f"another process ({who}) is writing rank {rank} of this store"


def _holder_line(root: Path) -> str:
    """Who holds the store: the first rank whose lock is taken, or a repair."""
    for path in sorted(root.glob(f"{STORE_LOCK}.rank*")):
        if _is_held(path):
            return _describe(path, int(path.name.rsplit("rank", 1)[1]))
    return "another process is repairing or writing this store"


def _is_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
