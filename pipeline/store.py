"""Sharded HDF5 stores: many videos per file, written crash-safely, read lazily from any process.

Layout of a store folder (frames and flow stores alike; ``KIND`` is ``frames`` or ``flow``)::

    actrec_store.json            kind, format_version and the parameters the store was written with
    KIND-00000.h5 ...            sealed shards; a video lives in shard crc32(video_id) % num_shards
    KIND-00000.videos.txt ...    each shard's video ids, one per line: what a shard held if it cannot be opened
    .parts/KIND-00007/<id>.h5    finished videos of shards not sealed yet (one file per video)
    failures.rankR.tsv           the last run's failed and partial videos of rank R
    .lock, .lock.rankR           the writers' advisory locks (``actrec.pipeline.store_lock``)

Inside every HDF5 file (shard or part): root attributes ``actrec_kind`` and ``format_version``, and one group
``videos/<video_id>`` per video holding the kind's datasets and the video's attributes. Every entry carries a
checksum, verified on read (``actrec.pipeline.store_checks``).

Crash safety: every file is written under a ``.tmp`` name and renamed into place, so a reader or a rerun never
sees a half-written file. A video is finished once its part exists; a shard is sealed by copying its parts
(and the shard's earlier content, if any) into a new file that replaces the old one atomically. Shard k belongs
to rank ``k % world_size``, so no two processes ever write the same file, and a rank's writer holds the store's lock
for that rank (``actrec.pipeline.store_lock``), so no two runs write the same rank at once.

Damage: a shard that cannot be opened costs only its own videos. Readers report them by name (its video list
tells which they are), a writer's rerun computes them again and replaces the shard, and ``actrec verify-store
--repair`` removes damaged videos and shards (``actrec.pipeline.store_verify``).
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import h5py
import numpy as np

from actrec.deps import require
from actrec.errors import StoreError
from actrec.pipeline.diskspace import check_free_space, fsync_path, is_disk_full, store_io_error
from actrec.pipeline.store_checks import CRC_ATTR, HDF5_ERRORS, array_checksum_options, count, crc32_of, one_line

FORMAT_VERSION = 1
META_FILE = "actrec_store.json"
VIDEOS = "videos"
VIDEO_LIST = ".videos.txt"
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

    def shard_of(self, video_id: str) -> int:
        """The shard a video belongs to, whether or not it was written."""
        return zlib.crc32(video_id.encode("utf-8")) % self.num_shards

    def prepare(self, shards: Iterable[int], log: Callable[[str], None] = print) -> dict[int, set[str]]:
        """Stage sink: delete a killed run's temporary files, return the finished videos per shard (none for a shard
        that cannot be opened, which is reported through ``log`` and rebuilt)."""
        shards = list(shards)
        clean_partial_files(self, shards)
        return finished_videos(self, shards, log)

    def seal(self, shard: int) -> None:
        """Stage sink: merge the shard's parts into its sealed file."""
        seal_shard(self, shard)


def init_store(root: str | Path, kind: str, params: Mapping[str, Any], num_shards: int) -> StoreLayout:
    """Create the store folder, or check that an existing one was written by this format with the same params.

    ``num_shards`` is fixed when the store is created; a rerun keeps the stored value.
    """
    root = Path(root)
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
    try:
        root.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
    except OSError as exc:
        raise StoreError(f"{root}: cannot create a {kind} store here ({exc.strerror or exc})") from None
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
    """One dataset with a checksum per entry: fletcher32 chunks for an array, a CRC-32 attribute for vlen bytes."""
    if isinstance(ds.compression, int):  # an HDF5 filter plugin's id (Zstd, Blosc): hdf5plugin registers it
        require("hdf5plugin", f"writing {name} with HDF5 filter {ds.compression}")
    options = dict(compression=ds.compression, compression_opts=ds.compression_opts, shuffle=ds.shuffle or None)
    if isinstance(ds.data, np.ndarray):
        group.create_dataset(name, data=ds.data, **options, **array_checksum_options(ds.data, ds.chunks))
        return
    items = np.empty(len(ds.data), dtype=object)
    items[:] = list(ds.data)
    dset = group.create_dataset(name, data=items, dtype=h5py.vlen_dtype(np.uint8), chunks=ds.chunks, **options)
    dset.attrs[CRC_ATTR] = crc32_of(ds.data)


def clean_partial_files(layout: StoreLayout, shards: Iterable[int]) -> int:
    """Delete leftover ``.tmp`` files of the given shards (from a killed run); return how many."""
    removed = 0
    for shard in shards:
        for tmp in [*layout.parts_dir(shard).glob(f"*{_TMP}"), *layout.root.glob(
                f"{layout.shard_path(shard).name}*{_TMP}")]:
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def finished_videos(layout: StoreLayout, shards: Iterable[int],
                    log: Callable[[str], None] = print) -> dict[int, set[str]]:
    """Per shard, the videos already finished: in the sealed shard or as a complete part file. A sealed shard that
    cannot be opened holds none (its videos are done again and the shard replaced when sealed), said through
    ``log`` with the count of videos its list names."""
    out: dict[int, set[str]] = {}
    for shard in shards:
        path = layout.shard_path(shard)
        try:
            done = set(list_shard(path))
        except StoreError as exc:
            held = read_video_list(path)
            log(f"warning: {exc}; its {'videos' if held is None else count(len(held), 'video')} will be written "
                "again and the shard replaced")
            done = set()
        done.update(p.stem for p in layout.parts_dir(shard).glob("*.h5"))
        out[shard] = done
    return out


def list_shard(path: Path) -> list[str]:
    """The video ids of a sealed shard (none when it does not exist); StoreError naming the shard when it cannot be
    opened or listed (e.g. a damaged header)."""
    if not path.exists():
        return []
    with open_read(path) as f:
        try:
            return list(f[VIDEOS].keys())
        except HDF5_ERRORS as exc:
            raise StoreError(f"{path}: shard cannot be read ({one_line(exc)})") from None


def open_read(path: Path) -> h5py.File:
    """Open a shard or part for reading. HDF5's default file locking is kept (best effort: ignored where the file
    system has none), so that a plain ``h5py.File(path, "r")`` of the same file in the same process is compatible."""
    _register_filter_plugins()
    try:
        f = h5py.File(path, "r", **CHUNK_CACHE)
    except HDF5_ERRORS as exc:
        raise StoreError(f"{path}: shard cannot be opened ({one_line(exc)})") from None
    try:
        version = f.attrs.get("format_version")
    except HDF5_ERRORS as exc:
        f.close()
        raise StoreError(f"{path}: shard cannot be read ({one_line(exc)})") from None
    try:
        _check_version(path, version)
    except StoreError:
        f.close()
        raise
    return f


def _register_filter_plugins() -> None:
    """Register hdf5plugin's filters (Zstd, Blosc: the flow stores' default codecs) with HDF5 when the package is
    installed. Without it, stores written with HDF5's own codecs (gzip, none) read as usual; ``FlowStore`` says
    which package a store of plugin codecs needs."""
    with contextlib.suppress(ImportError):
        import hdf5plugin  # noqa: F401


def video_list_path(shard_path: Path) -> Path:
    """The file beside a shard that lists its video ids."""
    return shard_path.with_name(shard_path.stem + VIDEO_LIST)


def write_video_list(shard_path: Path, video_ids: Iterable[str]) -> None:
    """Write a shard's video list (atomically)."""
    _atomic_write_text(video_list_path(shard_path), "".join(f"{v}\n" for v in sorted(video_ids)))


def read_video_list(shard_path: Path) -> list[str] | None:
    """The video ids a shard's list names; None when it has no readable list (a store written before lists)."""
    try:
        return video_list_path(shard_path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None


def seal_shard(layout: StoreLayout, shard: int) -> int:
    """Merge a shard's parts into its sealed file, videos sorted by id; return the number of videos added.

    The new shard is written beside the old one and renamed over it, so readers always see a complete file.
    A part that cannot be read (e.g. cut short by a power loss) is dropped so that its video is redone.
    """
    parts = {p.stem: p for p in layout.parts_dir(shard).glob("*.h5")}
    if not parts:
        return 0
    added = _rewrite_shard(layout, shard, parts, drop=set())
    for part in parts.values():
        part.unlink(missing_ok=True)
    _remove_empty(layout.parts_dir(shard))
    return added


def drop_videos(layout: StoreLayout, shard: int, video_ids: set[str]) -> None:
    """Rewrite a sealed shard without ``video_ids`` (damaged videos), so that the writer's rerun redoes them."""
    _rewrite_shard(layout, shard, {}, drop=video_ids)


def _rewrite_shard(layout: StoreLayout, shard: int, parts: dict[str, Path], drop: set[str]) -> int:
    """Write a shard's new version (its readable old videos but ``drop``, plus ``parts``) beside it, then rename it
    over the old one; return the videos added from parts. The video list names every video of the old and the new
    shard while the rename happens, and exactly the new ones after."""
    final = layout.shard_path(shard)
    tmp = final.with_name(final.name + _TMP)
    try:
        needed = sum(p.stat().st_size for p in parts.values()) + (final.stat().st_size if final.exists() else 0)
        check_free_space(layout.root, needed, f"writing {final.name}")
        old, old_ids = _readable_shard(final)
        try:
            with _new_file(tmp, layout.kind) as out:
                out.attrs["shard"] = shard
                kept = {vid for vid in old_ids if vid not in drop and _copy_group(old, vid, out)}
                added = {vid for vid in sorted(set(parts) - kept) if _copy_part(parts[vid], out, vid)}
        finally:
            if old is not None:
                old.close()
        fsync_path(tmp)
        write_video_list(final, set(old_ids) | kept | added)
        tmp.replace(final)
        write_video_list(final, kept | added)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise store_io_error(final, exc) from None
    return len(added)


def _readable_shard(path: Path) -> tuple[h5py.File | None, list[str]]:
    """A sealed shard to merge into its new version, and its video ids; (None, []) when there is none or it cannot
    be read (its videos were done again: ``finished_videos`` counted none of them)."""
    try:
        ids = list_shard(path)
        return (open_read(path) if path.exists() else None), ids
    except StoreError:
        return None, []


def _copy_group(src: h5py.File, video_id: str, out: h5py.File) -> bool:
    """Copy one video's group into ``out``; False when it cannot be read (it is left out, so a rerun redoes it).
    A write error (e.g. a full disk) is raised."""
    try:
        out.copy(src[VIDEOS][video_id], out[VIDEOS], name=video_id)
        return True
    except HDF5_ERRORS as exc:
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise
        if video_id in out[VIDEOS]:
            del out[VIDEOS][video_id]
        return False


def _copy_part(part: Path, out: h5py.File, video_id: str) -> bool:
    """Copy a finished video's part into ``out``; False for a part that cannot be read (its video is redone)."""
    try:
        with open_read(part) as src:
            return _copy_group(src, video_id, out)
    except StoreError:
        return False


def _remove_empty(folder: Path) -> None:
    """Remove a shard's parts folder and ``.parts`` when empty; a folder still holding files stays."""
    with contextlib.suppress(OSError):
        folder.rmdir()
        folder.parent.rmdir()
