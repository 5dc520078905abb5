"""``ShardedReader``: random access to the videos of a store across its sealed shards, from any process.

A shard that cannot be opened costs only its own videos: the reader lists them from the shard's video list
(``KIND-00000.videos.txt``), keeps them in the store (``in``, ``video_ids``) and raises StoreReadError naming the
shard and the video when one of them is read, so that a loader can skip them and read every other video. In a store
written before video lists, a video whose shard (``crc32(id) % num_shards``) cannot be opened is treated the same
way: it may be in it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from actrec.errors import StoreError
from actrec.pipeline.store import (MAX_OPEN_SHARDS, VIDEOS, StoreLayout, list_shard, open_read, read_store_meta,
                                   read_video_list)
from actrec.pipeline.store_checks import EntryPlace, damage_named


class ShardedReader:
    """Random access to the videos of a store, across all its sealed shards, without any global lock.

    The index (video id -> shard) is built on first use; HDF5 handles are opened lazily, at most
    ``MAX_OPEN_SHARDS`` at a time per thread, and re-opened after a fork, so one reader object can be handed to
    DataLoader worker processes and shared by reader threads (each thread closes only its own handles, never one
    that another thread is reading from). A group returned by :meth:`group` is valid until its shard is closed,
    i.e. until the same thread opened ``MAX_OPEN_SHARDS`` other shards after it: use it right away, do not keep it.
    """

    entry = "entry"  # what one element of the kind's dataset is called in messages ("frame", "flow")

    def __init__(self, root: str | Path, kind: str) -> None:
        self.root = Path(root)
        self.kind = kind
        self.meta = read_store_meta(self.root, kind)
        self.layout = StoreLayout(self.root, kind, int(self.meta["num_shards"]))
        self._index: dict[str, Path] | None = None
        self._broken: dict[Path, str] = {}  # shard that cannot be opened -> why
        self._unlisted: set[Path] = set()  # those of them without a video list
        self._forget_handles()

    def _forget_handles(self) -> None:
        """Start with no open handle (a new, unpickled or forked reader; after close)."""
        self._pid = os.getpid()
        self._local = threading.local()  # .handles: this thread's LRU of open shards, least recently used first
        self._caches: list[OrderedDict[Path, h5py.File]] = []  # every thread's LRU, for close()
        self._caches_lock = threading.Lock()

    def _thread_handles(self) -> OrderedDict[Path, h5py.File]:
        if os.getpid() != self._pid:  # forked into a worker: never share HDF5 handles across processes
            self._forget_handles()
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = OrderedDict()
            with self._caches_lock:
                self._caches.append(handles)
        return handles

    @property
    def open_shards(self) -> int:
        """How many shard files this reader holds open, over all threads."""
        with self._caches_lock:
            return sum(len(handles) for handles in self._caches)

    @property
    def params(self) -> dict[str, Any]:
        return self.meta["params"]

    @property
    def index(self) -> dict[str, Path]:
        """Video id -> shard file, for every video of every shard (of a shard that cannot be opened: those its
        video list names)."""
        if self._index is None:
            index: dict[str, Path] = {}
            for path in self.layout.shard_paths():
                try:
                    ids = list_shard(path)
                except StoreError as exc:
                    self._broken[path] = str(exc).removeprefix(f"{path}: ")
                    listed = read_video_list(path)
                    if listed is None:
                        self._unlisted.add(path)
                    ids = listed or []
                index.update(dict.fromkeys(ids, path))
            self._index = index
        return self._index

    @property
    def broken_shards(self) -> dict[Path, str]:
        """The shards that cannot be opened, with the reason."""
        _ = self.index
        return dict(self._broken)

    @property
    def video_ids(self) -> list[str]:
        return list(self.index)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.index or self._maybe_in_broken(video_id) is not None

    def __len__(self) -> int:
        return len(self.index)

    def _maybe_in_broken(self, video_id: str) -> Path | None:
        """The shard a video not in the index would be in, when that shard cannot be opened and lists nothing."""
        _ = self.index
        path = self.layout.shard_path(self.layout.shard_of(video_id))
        return path if path in self._unlisted else None

    def group(self, video_id: str) -> h5py.Group:
        """The HDF5 group of a video (datasets and attributes); StoreReadError naming the shard when it cannot be
        read."""
        path = self.index.get(video_id) or self._maybe_in_broken(video_id)
        if path is None:
            raise StoreError(f"{self.root}: video {video_id!r} is not in this {self.kind} store")
        place = self.place(video_id)
        if path in self._broken:
            raise place.error(None, f"its shard cannot be opened ({self._broken[path]}); `actrec verify-store "
                                    f"{self.root} --repair` removes the shard, a rerun of the writer rebuilds it")
        try:
            handle = self._handle(path)
        except StoreError as exc:
            raise place.error(None, str(exc)) from None
        with damage_named(place):
            return handle[VIDEOS][video_id]

    def dataset(self, video_id: str, name: str) -> h5py.Dataset:
        """A dataset of a video; StoreReadError naming shard and video when its header cannot be read."""
        group = self.group(video_id)
        with damage_named(self.place(video_id)):
            return group[name]

    def attr(self, video_id: str, key: str) -> Any:
        """One attribute of a video; StoreReadError naming shard and video when it cannot be read."""
        group = self.group(video_id)
        with damage_named(self.place(video_id)):
            return _plain(group.attrs[key])

    def place(self, video_id: str) -> EntryPlace:
        """Where a video's entries are, for error messages."""
        path = self.index.get(video_id) or self.layout.shard_path(self.layout.shard_of(video_id))
        return EntryPlace(str(path), video_id, self.entry)

    def attrs(self, video_id: str) -> dict[str, Any]:
        group = self.group(video_id)
        with damage_named(self.place(video_id)):
            return {k: _plain(v) for k, v in group.attrs.items()}

    def _handle(self, path: Path) -> h5py.File:
        """The open shard, from this thread's small LRU of handles (at most ``MAX_OPEN_SHARDS``)."""
        handles = self._thread_handles()
        handle = handles.get(path)
        if handle is not None and handle.id.valid:
            handles.move_to_end(path)
            return handle
        while len(handles) >= MAX_OPEN_SHARDS:
            handles.popitem(last=False)[1].close()
        handles[path] = handle = open_read(path)
        return handle

    def close(self) -> None:
        """Close every shard this reader opened, in any thread (call it once the threads are done reading)."""
        with self._caches_lock:
            caches = self._caches
        for handles in caches:
            for handle in handles.values():
                handle.close()
        self._forget_handles()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_local", "_caches", "_caches_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._forget_handles()

    def __enter__(self) -> "ShardedReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
