"""Sharded HDF5 stores: many videos per file, written crash-safely, read lazily from any process.

Layout of a store folder (frames and flow stores alike; ``KIND`` is ``frames`` or ``flow``)::

    actrec_store.json            kind, format_version and the parameters the store was written with
    KIND-00000.h5 ...            sealed shards; a video lives in shard crc32(video_id) % num_shards
    .parts/KIND-00007/<id>.h5    finished videos of shards not sealed yet (one file per video)
    failures.rankR.tsv           the last run's failed and partial videos of rank R

Inside every HDF5 file (shard or part): root attributes ``actrec_kind`` and ``format_version``, and one group
``videos/<video_id>`` per video holding the kind's datasets and the video's attributes.

Crash safety: every file is written under a ``.tmp`` name and renamed into place, so a reader or a rerun never
sees a half-written file. A video is finished once its part exists; a shard is sealed by copying its parts
(and the shard's earlier content, if any) into a new file that replaces the old one atomically. Shard k belongs
to rank ``k % world_size``, so no two processes ever write the same file.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

from actrec.deps import require
from actrec.errors import StoreError
from actrec.pipeline.diskspace import check_free_space, store_io_error

FORMAT_VERSION = 1
META_FILE = "actrec_store.json"
VIDEOS = "videos"
_TMP = ".tmp"
# A reader keeps at most this many shards open (least recently used closed first), so that a DataLoader worker's
# descriptors and memory stay flat however many shards a store has (Kinetics: ~1,900 per store).
MAX_OPEN_SHARDS = 16
# HDF5's chunk cache per open dataset: 1 MiB holds a few flow chunks (a 340x256 flow is 174 KB); set explicitly so
# that the bound does not depend on the HDF5 build. Slots: a prime well above the chunks that fit.
CHUNK_CACHE = dict(rdcc_nbytes=1 << 20, rdcc_nslots=521, rdcc_w0=0.75)


@dataclass(frozen=True)
class Dataset:
    """One array to store for a video, with its HDF5 storage options (chunks, compression) made explicit."""

    data: Any  # np.ndarray, or a sequence of 1-D uint8 arrays for variable-length bytes (e.g. JPEG)
    chunks: tuple[int, ...] | None = None
    compression: str | None = None
    compression_opts: Any = None
    shuffle: bool = False


@dataclass(frozen=True)
class StoreLayout:
    """Paths of a store of one kind."""

    root: Path
    kind: str
    num_shards: int

    def shard_path(self, shard: int) -> Path:
        return self.root / f"{self.kind}-{shard:05d}.h5"

    def parts_dir(self, shard: int) -> Path:
        return self.root / ".parts" / f"{self.kind}-{shard:05d}"

    def part_path(self, shard: int, video_id: str) -> Path:
        return self.parts_dir(shard) / f"{video_id}.h5"

    def shard_paths(self) -> list[Path]:
        return sorted(self.root.glob(f"{self.kind}-[0-9][0-9][0-9][0-9][0-9].h5"))

    def prepare(self, shards: Iterable[int]) -> dict[int, set[str]]:
        """Stage sink: delete a killed run's temporary files, return the finished videos per shard."""
        shards = list(shards)
        clean_partial_files(self, shards)
        return finished_videos(self, shards)

    def seal(self, shard: int) -> None:
        """Stage sink: merge the shard's parts into its sealed file."""
        seal_shard(self, shard)


def init_store(root: str | Path, kind: str, params: Mapping[str, Any], num_shards: int) -> StoreLayout:
    """Create the store folder, or check that an existing one was written by this format with the same params.

    ``num_shards`` is fixed when the store is created; a rerun keeps the stored value.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind, "format_version": FORMAT_VERSION, "num_shards": num_shards, "params": dict(params)}
    meta_path = root / META_FILE
    if meta_path.exists():
        old = read_store_meta(root, kind)
        if old["params"] != meta["params"]:
            diff = {k: (old["params"].get(k), v) for k, v in meta["params"].items() if old["params"].get(k) != v}
            raise StoreError(f"{root}: store was written with other parameters "
                             + ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
                             + "; use another output folder or the same options")
        return StoreLayout(root, kind, int(old["num_shards"]))
    _atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
    return StoreLayout(root, kind, num_shards)


def read_store_meta(root: str | Path, kind: str) -> dict[str, Any]:
    """The store's metadata; a missing, foreign or incompatible store raises StoreError naming the problem."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise StoreError(f"{root}: not an actrec {kind} store ({META_FILE} not found)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable store metadata ({exc})") from None
    if meta.get("kind") != kind:
        raise StoreError(f"{root}: this is a {meta.get('kind')!r} store, expected a {kind!r} store")
    _check_version(path, meta.get("format_version"))
    return meta


def _check_version(path: Path, version: Any) -> None:
    if version != FORMAT_VERSION:
        raise StoreError(f"{path}: store format version {version} is not supported by this actrec "
                         f"(it reads version {FORMAT_VERSION}); re-extract or use a matching actrec version")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}{_TMP}")
    tmp.write_text(text)
    tmp.replace(path)


def _new_file(path: Path, kind: str) -> h5py.File:
    f = h5py.File(path, "w", libver="latest")
    f.attrs["actrec_kind"] = kind
    f.attrs["format_version"] = FORMAT_VERSION
    f.create_group(VIDEOS)
    return f


def _stored_size(datasets: Mapping[str, Dataset]) -> int:
    """An upper bound of the bytes a part's datasets take: uncompressed arrays, vlen items with their heap entry."""
    return sum(ds.data.nbytes if isinstance(ds.data, np.ndarray) else sum(len(item) + 32 for item in ds.data)
               for ds in datasets.values())


def write_part(layout: StoreLayout, shard: int, video_id: str, datasets: Mapping[str, Dataset],
               attrs: Mapping[str, Any]) -> int:
    """Write one finished video as its own part file (atomically); return the bytes written.

    A file system without room for it raises NotEnoughSpace (an ENOSPC OSError) before anything is written."""
    final = layout.part_path(shard, video_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(final.parent, _stored_size(datasets), f"video {video_id}")
    tmp = final.with_name(final.name + _TMP)
    try:
        with _new_file(tmp, layout.kind) as f:
            group = f[VIDEOS].create_group(video_id)
            for name, ds in datasets.items():
                _create_dataset(group, name, ds)
            for key, value in attrs.items():
                group.attrs[key] = value
        tmp.replace(final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final.stat().st_size


def _create_dataset(group: h5py.Group, name: str, ds: Dataset) -> None:
    if isinstance(ds.compression, int):  # an HDF5 filter plugin's id (Zstd, Blosc): hdf5plugin registers it
        require("hdf5plugin", f"writing {name} with HDF5 filter {ds.compression}")
    options = dict(chunks=ds.chunks, compression=ds.compression, compression_opts=ds.compression_opts,
                   shuffle=ds.shuffle or None)
    if isinstance(ds.data, np.ndarray):
        group.create_dataset(name, data=ds.data, **options)
        return
    items = np.empty(len(ds.data), dtype=object)
    items[:] = list(ds.data)
    group.create_dataset(name, data=items, dtype=h5py.vlen_dtype(np.uint8), **options)


def clean_partial_files(layout: StoreLayout, shards: Iterable[int]) -> int:
    """Delete leftover ``.tmp`` files of the given shards (from a killed run); return how many."""
    removed = 0
    for shard in shards:
        for tmp in [*layout.parts_dir(shard).glob(f"*{_TMP}"), *layout.root.glob(
                f"{layout.shard_path(shard).name}*{_TMP}")]:
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def finished_videos(layout: StoreLayout, shards: Iterable[int]) -> dict[int, set[str]]:
    """Per shard, the videos already finished: in the sealed shard or as a complete part file."""
    out: dict[int, set[str]] = {}
    for shard in shards:
        done = set(_shard_video_ids(layout.shard_path(shard)))
        done.update(p.stem for p in layout.parts_dir(shard).glob("*.h5"))
        out[shard] = done
    return out


def _shard_video_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    with _open_read(path) as f:
        return list(f[VIDEOS].keys())


def _open_read(path: Path) -> h5py.File:
    """Open a shard or part for reading. HDF5's default file locking is kept (best effort: ignored where the file
    system has none), so that a plain ``h5py.File(path, "r")`` of the same file in the same process is compatible."""
    _register_filter_plugins()
    try:
        f = h5py.File(path, "r", **CHUNK_CACHE)
    except OSError as exc:
        raise StoreError(f"{path}: unreadable HDF5 file ({exc})") from None
    _check_version(path, f.attrs.get("format_version"))
    return f


def _register_filter_plugins() -> None:
    """Register hdf5plugin's filters (Zstd, Blosc: the flow stores' default codecs) with HDF5 when the package is
    installed. Without it, stores written with HDF5's own codecs (gzip, none) read as usual; ``FlowStore`` says
    which package a store of plugin codecs needs."""
    with contextlib.suppress(ImportError):
        import hdf5plugin  # noqa: F401


def seal_shard(layout: StoreLayout, shard: int) -> int:
    """Merge a shard's parts into its sealed file, videos sorted by id; return the number of videos added.

    The new shard is written beside the old one and renamed over it, so readers always see a complete file.
    A part that cannot be read (e.g. cut short by a power loss) is dropped so that its video is redone.
    """
    parts = {p.stem: p for p in layout.parts_dir(shard).glob("*.h5")}
    if not parts:
        return 0
    final = layout.shard_path(shard)
    tmp = final.with_name(final.name + _TMP)
    added = 0
    try:
        needed = sum(p.stat().st_size for p in parts.values()) + (final.stat().st_size if final.exists() else 0)
        check_free_space(layout.root, needed, f"sealing {final.name}")
        old = _open_read(final) if final.exists() else None
        try:
            with _new_file(tmp, layout.kind) as out:
                out.attrs["shard"] = shard
                for video_id in sorted(set(parts) | set(old[VIDEOS] if old is not None else ())):
                    if old is not None and video_id in old[VIDEOS]:
                        out.copy(old[VIDEOS][video_id], out[VIDEOS], name=video_id)
                    elif video_id in parts:
                        added += _copy_part(parts[video_id], out, video_id)
        finally:
            if old is not None:
                old.close()
        _fsync(tmp)
        tmp.replace(final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise store_io_error(final, exc) from None
    for part in parts.values():
        part.unlink(missing_ok=True)
    _remove_empty(layout.parts_dir(shard))
    return added


def _copy_part(part: Path, out: h5py.File, video_id: str) -> int:
    try:
        with _open_read(part) as src:
            out.copy(src[VIDEOS][video_id], out[VIDEOS], name=video_id)
        return 1
    except (StoreError, KeyError):
        return 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_empty(folder: Path) -> None:
    """Remove a shard's parts folder and ``.parts`` when empty; a folder still holding files stays."""
    with contextlib.suppress(OSError):
        folder.rmdir()
        folder.parent.rmdir()


class ShardedReader:
    """Random access to the videos of a store, across all its sealed shards, without any global lock.

    The index (video id -> shard) is built on first use; HDF5 handles are opened lazily, at most
    ``MAX_OPEN_SHARDS`` at a time per thread, and re-opened after a fork, so one reader object can be handed to
    DataLoader worker processes and shared by reader threads (each thread closes only its own handles, never one
    that another thread is reading from). A group returned by :meth:`group` is valid until its shard is closed,
    i.e. until the same thread opened ``MAX_OPEN_SHARDS`` other shards after it: use it right away, do not keep it.
    """

    def __init__(self, root: str | Path, kind: str) -> None:
        self.root = Path(root)
        self.kind = kind
        self.meta = read_store_meta(self.root, kind)
        self.layout = StoreLayout(self.root, kind, int(self.meta["num_shards"]))
        self._index: dict[str, Path] | None = None
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
        if self._index is None:
            self._index = {vid: path for path in self.layout.shard_paths() for vid in _shard_video_ids(path)}
        return self._index

    @property
    def video_ids(self) -> list[str]:
        return list(self.index)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.index

    def __len__(self) -> int:
        return len(self.index)

    def group(self, video_id: str) -> h5py.Group:
        """The HDF5 group of a video (datasets and attributes)."""
        try:
            path = self.index[video_id]
        except KeyError:
            raise StoreError(f"{self.root}: video {video_id!r} is not in this {self.kind} store") from None
        return self._handle(path)[VIDEOS][video_id]

    def attrs(self, video_id: str) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self.group(video_id).attrs.items()}

    def _handle(self, path: Path) -> h5py.File:
        """The open shard, from this thread's small LRU of handles (at most ``MAX_OPEN_SHARDS``)."""
        handles = self._thread_handles()
        handle = handles.get(path)
        if handle is not None and handle.id.valid:
            handles.move_to_end(path)
            return handle
        while len(handles) >= MAX_OPEN_SHARDS:
            handles.popitem(last=False)[1].close()
        handles[path] = handle = _open_read(path)
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
