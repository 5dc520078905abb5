"""``actrec verify-store``: read every entry of a frame or flow store, list the damaged videos and shards, and
(``--repair``) remove them so that a rerun of the writer computes them again.

A video is bad when one of its entries fails its checksum, cannot be decompressed or (JPEG frames stored before
checksums existed) cannot be decoded, or when its shard cannot be opened (its videos are then those of the shard's
video list). Entries of stores written before checksums carry none: they are read (and JPEGs decoded), which finds
what decompression and decoding find, and they are counted as unchecked. Shards are checked in parallel
(``workers`` processes), each one sequentially, so memory stays at one video's largest dataset block.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import h5py
from joblib import Parallel, delayed
from tqdm import tqdm

from actrec.errors import InputError, StoreError, StoreReadError
from actrec.pipeline.store import (META_FILE, VIDEOS, StoreLayout, drop_videos, list_shard, open_read,
                                   read_store_meta, read_video_list, video_list_path)
from actrec.pipeline.store_checks import (EntryPlace, count, damage_named, has_checksums, is_vlen, read_rows,
                                          read_vlen)
from actrec.pipeline.store_lock import store_lock

ENTRY = {"frames": "frame", "flow": "flow"}
BLOCK = 64  # array entries read per HDF5 call (64 flows at 340x256: 11 MB)


@dataclass
class ShardCheck:
    """What checking one shard found."""

    path: Path
    videos: list[str] = field(default_factory=list)  # every video of the shard (of its list, when unreadable)
    bad: dict[str, str] = field(default_factory=dict)  # video id -> the error naming shard, video and entry
    unreadable: str = ""  # why the shard cannot be opened; empty when it can
    unchecked: int = 0  # videos with a dataset written without checksums
    nbytes: int = 0


@dataclass
class VerifyReport:
    """The whole store's result, shard by shard."""

    root: Path
    kind: str
    shards: list[ShardCheck]
    parts: int  # finished videos waiting in .parts (not sealed, not checked)
    elapsed: float

    @property
    def bad_videos(self) -> int:
        return sum(len(s.bad) for s in self.shards)

    @property
    def damaged(self) -> bool:
        """Anything bad: a damaged video, or a shard that cannot be opened (even one whose videos are unknown)."""
        return any(s.bad or s.unreadable for s in self.shards)

    def line(self) -> str:
        videos = sum(len(s.videos) for s in self.shards)
        unreadable = [s for s in self.shards if s.unreadable]
        nbytes = sum(s.nbytes for s in self.shards)
        text = (f"verify-store: {self.kind} store {self.root}: {count(videos, 'video')} in "
                f"{count(len(self.shards), 'shard')}, {videos - self.bad_videos} good, {self.bad_videos} bad")
        if unreadable:
            text += (f"; {count(len(unreadable), 'unreadable shard')} (holding {sum(len(s.bad) for s in unreadable)} "
                     "of them")
            unknown = sum(not video_list_path(s.path).exists() for s in unreadable)
            text += f", and the unknown videos of {count(unknown, 'shard')} without a video list)" if unknown else ")"
        text += f"; {nbytes / 1e6:.1f} MB in {self.elapsed:.1f} s"
        unchecked = sum(s.unchecked for s in self.shards)
        if unchecked:
            text += (f"; {count(unchecked, 'video')} written without checksums (before actrec stored them): only "
                     "decompression and decoding were checked")
        if self.parts:
            text += f"; {count(self.parts, 'finished video')} unsealed in .parts (not checked: rerun the writer)"
        return text


def store_kind(root: str | Path) -> str:
    """The kind (``frames`` or ``flow``) of the store at ``root``, from its metadata."""
    path = Path(root) / META_FILE
    try:
        kind = json.loads(path.read_text()).get("kind")
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"{root}: not an actrec store ({META_FILE} unreadable: {exc})") from None
    if kind not in ENTRY:
        raise InputError(f"{path}: unknown store kind {kind!r}")
    read_store_meta(root, kind)  # the format version
    return kind


def verify_store(root: str | Path, *, workers: int = 1, progress: bool = True,
                 log: Callable[[str], None] = print) -> VerifyReport:
    """Check every entry of every sealed shard; ``log`` gets one line per bad shard and per bad video."""
    root = Path(root)
    kind = store_kind(root)
    layout = StoreLayout(root, kind, int(read_store_meta(root, kind)["num_shards"]))
    paths = layout.shard_paths()
    start = time.perf_counter()
    sizes = {p: p.stat().st_size for p in paths}
    bar = tqdm(total=sum(sizes.values()), desc="verify-store", unit="B", unit_scale=True, disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    checks = []
    try:
        for check in _run(paths, kind, workers):
            checks.append(check)
            bar.update(sizes[check.path])
            for line in _problem_lines(check):
                _write(bar, line, log)
    finally:
        bar.close()
    parts = len(list(root.glob(f".parts/{kind}-*/*.h5")))
    return VerifyReport(root, kind, sorted(checks, key=lambda c: c.path), parts, time.perf_counter() - start)


def _write(bar: tqdm, line: str, log: Callable[[str], None]) -> None:
    """``log`` a line without breaking the bar's line."""
    if bar.disable:
        log(line)
        return
    with tqdm.external_write_mode(file=bar.fp):
        log(line)


def _run(paths: list[Path], kind: str, workers: int) -> Iterator[ShardCheck]:
    if workers <= 1:
        return (check_shard(p, kind) for p in paths)
    return Parallel(n_jobs=workers, return_as="generator_unordered")(delayed(check_shard)(p, kind) for p in paths)


def _problem_lines(check: ShardCheck) -> list[str]:
    if check.unreadable:
        held = (f"it held {count(len(check.videos), 'video')} (its video list)" if video_list_path(check.path).exists()
                else "which videos it held is unknown (no video list: written by an earlier actrec)")
        return [f"bad shard: {check.unreadable}; {held}"] + [f"bad: {message}" for message in check.bad.values()]
    return [f"bad: {message}" for message in check.bad.values()]


def check_shard(path: Path, kind: str) -> ShardCheck:
    """Read every entry of every video of one shard, checksums verified."""
    check = ShardCheck(path, nbytes=path.stat().st_size)
    try:
        check.videos = list_shard(path)
        f = open_read(path)
    except StoreError as exc:
        return _unreadable(check, str(exc))
    with f:
        for video_id in check.videos:
            place = EntryPlace(str(path), video_id, ENTRY[kind])
            try:
                check.unchecked += not _check_video(f, place, kind)
            except StoreReadError as exc:
                check.bad[video_id] = str(exc)
    return check


def _unreadable(check: ShardCheck, reason: str) -> ShardCheck:
    check.unreadable = reason
    check.videos = read_video_list(check.path) or []
    check.bad = {vid: f"{check.path}: video {vid!r}: in the unreadable shard" for vid in check.videos}
    return check


def _check_video(f: h5py.File, place: EntryPlace, kind: str) -> bool:
    """Read every dataset of a video (StoreReadError at the first bad entry); True when all carry checksums."""
    with damage_named(place):
        group = f[VIDEOS][place.video_id]
        datasets = [group[name] for name in group if isinstance(group[name], h5py.Dataset)]
    checked = True
    for dset in datasets:
        checked &= has_checksums(dset)
        if is_vlen(dset.dtype):
            items = read_vlen(dset, None, place)
            if kind == "frames" and not has_checksums(dset):
                _decode_all(items, place)
        else:
            for first in range(0, dset.shape[0] if dset.ndim else 0, BLOCK):
                read_rows(dset, first, min(first + BLOCK, dset.shape[0]), place)
    return checked


def _decode_all(items: list, place: EntryPlace) -> None:
    """Decode JPEG frames that carry no checksum: the only check they allow."""
    from actrec.pipeline.frames import decode_jpeg

    for i, buf in enumerate(items):
        decode_jpeg(buf, place, i)


@dataclass
class RepairResult:
    removed_shards: list[Path]
    removed_videos: int

    def line(self, kind: str) -> str:
        writer = "extract-frames" if kind == "frames" else "compute-flow"
        return (f"repair: removed {count(len(self.removed_shards), 'unreadable shard')} and "
                f"{count(self.removed_videos, 'damaged video')} in all; rerun the command that wrote this store ({writer} or import-rawframes) to compute "
                "them again")


def repair_store(report: VerifyReport, log: Callable[[str], None] = print) -> RepairResult:
    """Remove what ``report`` found bad, holding the store's lock (no writer may be at work): unreadable shards
    (and their lists) are deleted, shards with damaged videos rewritten without them. Nothing else changes."""
    layout = StoreLayout(report.root, report.kind, int(read_store_meta(report.root, report.kind)["num_shards"]))
    result = RepairResult([], 0)
    with store_lock(report.root, log):
        for check in report.shards:
            if check.unreadable and _still_unreadable(check.path):
                check.path.unlink(missing_ok=True)
                video_list_path(check.path).unlink(missing_ok=True)
                result.removed_shards.append(check.path)
            elif check.bad and not check.unreadable:
                drop_videos(layout, int(check.path.stem.rsplit("-", 1)[1]), set(check.bad))
            else:
                continue
            result.removed_videos += len(check.bad)
    return result


def _still_unreadable(path: Path) -> bool:
    """Whether a shard found unreadable still is (a writer may have rebuilt it since the check)."""
    try:
        list_shard(path)
    except StoreError:
        return True
    return False
