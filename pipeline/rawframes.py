"""Interoperability with mmaction2 / TSN rawframe folders: export our stores to them, import them into stores.

The rawframe layout is one folder per video holding ``img_00001.jpg ...`` (RGB frames) and ``flow_x_00001.jpg``,
``flow_y_00001.jpg ...`` (flow x and y as quantised uint8 grayscale JPEGs), 1-indexed: ``img_00001`` is our
frame 0 and ``flow_x_00001`` our flow 0 (frame 0 -> frame 1). mmaction2's own test data names flow ``x_00001.jpg``;
denseflow writes ``flow_x_00001.jpg``; some tools number from 0. Import detects and reports the naming.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from actrec.data_manifests.manifest import ManifestRow
from actrec.errors import InputError, StoreError
from actrec.pipeline.flow import KIND as FLOW_KIND, FlowOptions, FlowStore, encode_flow, flow_attrs
from actrec.pipeline.flowio import quantize_flow
from actrec.pipeline.frames import KIND as FRAMES_KIND, FrameStore
from actrec.pipeline.stage import (Outcome, StageSummary, WorkItem, io_failure, plan_shards, pool_executor,
                                   resolve_rank, run_stage, shard_count)
from actrec.pipeline.store import Dataset, StoreLayout, init_store, write_part

_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<index>\d+)\.(?P<ext>jpg|jpeg|png)$", re.IGNORECASE)
_TMP = ".tmp"


@dataclass(frozen=True)
class Naming:
    """How a rawframe folder names its files: ``{prefix}{index:0{digits}d}{ext}``, indices from ``start``."""

    rgb_prefix: str = "img_"
    flow_x_prefix: str = "flow_x_"
    flow_y_prefix: str = "flow_y_"
    start: int = 1
    digits: int = 5
    ext: str = ".jpg"

    def name(self, prefix: str, index: int) -> str:
        """File name of our 0-based ``index`` for a prefix."""
        return f"{prefix}{index + self.start:0{self.digits}d}{self.ext}"

    def describe(self) -> str:
        return (f"{self.rgb_prefix}/{self.flow_x_prefix}/{self.flow_y_prefix} files, {self.start}-indexed, "
                f"{self.digits} digits, {self.ext}")


MMACTION2 = Naming()


def detect_naming(folder: Path) -> Naming:
    """The naming of one video folder, from its file names (RGB prefix ``img``/``image``/``frame``; flow prefixes
    containing x and y)."""
    groups: dict[str, list[tuple[int, str, str]]] = {}
    for path in folder.iterdir():
        match = _NUMBERED.match(path.name)
        if match:
            groups.setdefault(match["prefix"], []).append((int(match["index"]), match["index"], match["ext"]))
    rgb = [p for p in groups if p.rstrip("_-").lower().endswith(("img", "image", "frame"))]
    flow_x = [p for p in groups if p.rstrip("_-").lower().endswith("x")]
    flow_y = [p for p in groups if p.rstrip("_-").lower().endswith("y")]
    if len(rgb) != 1 or len(flow_x) > 1 or len(flow_y) > 1 or len(flow_x) != len(flow_y):
        raise InputError(f"{folder}: cannot tell the rawframe naming from prefixes {sorted(groups)} "
                         "(expected img_ and optionally flow_x_/flow_y_ or x_/y_)")
    first = min(groups[rgb[0]])
    return Naming(rgb[0], flow_x[0] if flow_x else "", flow_y[0] if flow_y else "", start=0 if first[0] == 0 else 1,
                  digits=len(first[1]), ext="." + first[2].lower())


def _indexed(folder: Path, naming: Naming, prefix: str) -> list[Path]:
    """The numbered files of one prefix in our order; a gap in the numbering is an error naming the file."""
    files = sorted((int(m["index"]), p) for p in folder.iterdir()
                   if (m := _NUMBERED.match(p.name)) and m["prefix"] == prefix)
    for expected, (index, path) in enumerate(files, start=naming.start):
        if index != expected:
            raise InputError(f"{folder}: {prefix} files skip from index {expected - 1} to {index} ({path.name})")
    return [p for _, p in files]


class FolderSink:
    """Stage sink for an output tree with one folder per video, each written under ``<id>.tmp`` and renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def prepare(self, shards: Sequence[int], log: Callable[[str], None]) -> dict[int, set[str]]:
        for tmp in self.root.glob(f"*{_TMP}"):
            shutil.rmtree(tmp, ignore_errors=True)
        finished = {p.name for p in self.root.iterdir() if p.is_dir()}
        return {shard: finished for shard in shards}

    def seal(self, shard: int) -> None:
        """Nothing to merge: every video folder is final once renamed."""


def export_video(item: WorkItem, out: Path, frames: FrameStore, flows: FlowStore | None, quality: int) -> Outcome:
    """Write one video's rawframe folder (frames as stored JPEGs, flow as quantised grayscale JPEGs); the outcome
    counts its frames and the bytes of its files."""
    tmp = out / f"{item.video_id}{_TMP}"
    try:
        tmp.mkdir()
        stored = frames.read_stored(item.video_id)  # checksums verified
        count = len(stored)
        nbytes = 0
        for i, data in enumerate(stored):
            nbytes += (tmp / MMACTION2.name(MMACTION2.rgb_prefix, i)).write_bytes(
                bytes(data) if data.ndim == 1 else _jpeg(cv2.cvtColor(data, cv2.COLOR_RGB2BGR), quality))
        if flows is not None:
            flow = flows.read_stack(item.video_id, 0, flows.num_flows(item.video_id))
            quantised = flow if flow.dtype == np.uint8 else quantize_flow(flow.astype(np.float32), flows.bound)
            for i, pair in enumerate(quantised):
                for channel, prefix in enumerate((MMACTION2.flow_x_prefix, MMACTION2.flow_y_prefix)):
                    nbytes += (tmp / MMACTION2.name(prefix, i)).write_bytes(_jpeg(pair[..., channel], quality))
        tmp.rename(out / item.video_id)
    except StoreError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return Outcome(item.video_id, item.source, "failed", message=str(exc))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return io_failure(item, exc, f"{out}: {item.video_id}")
    return Outcome(item.video_id, item.source, "done", frames=int(count), nbytes=nbytes)


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("JPEG encoding failed")
    return buf.tobytes()


def export_rawframes(frames_root: str | Path, out: str | Path, flow_root: str | Path | None = None,
                     rows: Sequence[ManifestRow] | None = None, *, quality: int = 95, workers: int = 1,
                     rank: int | None = None, world_size: int | None = None, progress: bool = True,
                     log: Callable[[str], None] = print) -> StageSummary:
    """Export stores to mmaction2 rawframes under ``out`` plus, for manifest rows, one annotation file per split
    (``<split>_rawframes.txt`` with ``<video> <num_frames> <label>`` and ``<split>_rawframes_flow.txt`` with the
    flow counts), as mmaction2's ``RawframeDataset`` reads them."""
    frames = FrameStore(frames_root)
    flows = FlowStore(flow_root) if flow_root is not None else None
    ids = [r.video_id for r in rows] if rows is not None else sorted(frames.video_ids)
    for vid in ids:
        if vid not in frames or (flows is not None and vid not in flows):
            raise InputError(f"video {vid!r} is missing from the frame or flow store")
    rank, world_size = resolve_rank(rank, world_size)
    items = plan_shards([(v, v) for v in ids], world_size, rank, world_size)
    sink = FolderSink(Path(out))
    summary = run_stage("export-rawframes", sink, items, pool_executor(export_video, workers, sink.root, frames,
                                                                       flows, quality),
                        rank=rank, world_size=world_size, progress=progress, log=log)
    if rows is not None:
        write_annotations(Path(out), rows, frames, flows)
    return summary


def write_annotations(out: Path, rows: Sequence[ManifestRow], frames: FrameStore, flows: FlowStore | None) -> None:
    """mmaction2 rawframe annotation files, one per split (and modality)."""
    for split in sorted({r.split for r in rows}):
        chosen = [r for r in rows if r.split == split]
        _write_lines(out / f"{split}_rawframes.txt", [f"{r.video_id} {frames.num_frames(r.video_id)} {r.label}"
                                                      for r in chosen])
        if flows is not None:
            _write_lines(out / f"{split}_rawframes_flow.txt",
                         [f"{r.video_id} {flows.num_flows(r.video_id)} {r.label}" for r in chosen])


def _write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + _TMP)
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)


def import_frames_video(item: WorkItem, layout: StoreLayout, naming: Naming) -> Outcome:
    """Store one folder's RGB files as they are (their JPEG/PNG bytes; nothing is re-encoded)."""
    folder = Path(item.source)
    try:
        files = _indexed(folder, naming, naming.rgb_prefix)
        if not files:
            raise InputError(f"{folder}: no {naming.rgb_prefix} files")
        first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise InputError(f"{files[0]}: not a readable image")
        data = [np.fromfile(p, dtype=np.uint8) for p in files]
        attrs = {"num_frames": len(files), "height": first.shape[0], "width": first.shape[1], "fps": 0.0,
                 "source_fps": 0.0, "source_path": str(folder), "source_width": first.shape[1],
                 "source_height": first.shape[0], "rotation": 0, "declared_frames": len(files),
                 "decoded_frames": len(files), "encoding": naming.ext.lstrip("."), "partial": False}
        nbytes = write_part(layout, item.shard, item.video_id, {"frames": Dataset(data)}, attrs)
    except InputError as exc:
        return Outcome(item.video_id, item.source, "failed", message=str(exc))
    except OSError as exc:
        return io_failure(item, exc, str(folder))
    return Outcome(item.video_id, item.source, "done", frames=len(files), nbytes=nbytes)


def import_flow_video(item: WorkItem, layout: StoreLayout, naming: Naming, options: FlowOptions) -> Outcome:
    """Store one folder's quantised flow x/y images as a uint8 flow dataset."""
    folder = Path(item.source)
    try:
        xs = _indexed(folder, naming, naming.flow_x_prefix)
        ys = _indexed(folder, naming, naming.flow_y_prefix)
        if len(xs) != len(ys):
            raise InputError(f"{folder}: {len(xs)} {naming.flow_x_prefix} files but {len(ys)} {naming.flow_y_prefix}")
        rgb = _indexed(folder, naming, naming.rgb_prefix)
        flow = (np.stack([np.stack([_gray(x), _gray(y)], axis=-1) for x, y in zip(xs, ys)]) if xs
                else np.zeros((0, *_gray(rgb[0]).shape, 2), np.uint8))  # (F, H, W, 2)
        nbytes = write_part(layout, item.shard, item.video_id, {"flow": encode_flow(flow, options)},
                            flow_attrs(len(rgb), flow, options, flow.shape[1:3]))
    except InputError as exc:
        return Outcome(item.video_id, item.source, "failed", message=str(exc))
    except OSError as exc:
        return io_failure(item, exc, str(folder))
    return Outcome(item.video_id, item.source, "done", frames=len(flow), nbytes=nbytes,
                   message=_flow_count_warning(folder, len(rgb), len(flow)))


def _flow_count_warning(folder: Path, frames: int, flows: int) -> str:
    """A warning when a folder's flow count is not its frame count less one (N frames give N-1 flows): a folder
    cut short, or written by a tool with another convention. The flows are kept as they are, flow i taken to map
    frame i to frame i+1."""
    if not frames or flows == frames - 1:
        return ""
    kept = f"kept as flows 0..{flows - 1}, flow i from frame i to frame i+1" if flows else "no flow to keep"
    return f"{folder}: {frames} frames should give {frames - 1} flows, found {flows} ({kept})"


def _gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise InputError(f"{path}: not a readable image")
    return image


def import_rawframes(src: str | Path, frames_out: str | Path, flow_out: str | Path | None = None, *,
                     naming: Naming | None = None, bound: float = 20.0, videos_per_shard: int = 128,
                     workers: int = 1, rank: int | None = None, world_size: int | None = None,
                     progress: bool = True, log: Callable[[str], None] = print) -> list[StageSummary]:
    """Build a frame store (and a flow store) from a folder of rawframe folders, one per video (or from one video
    folder: then its name is the video id).

    ``naming`` defaults to what the first video folder shows (reported through ``log``); ``bound`` is the
    quantisation bound the flow JPEGs were written with (mmaction2 and denseflow-through-mmaction2 use 20).
    """
    root = Path(src)
    if not root.is_dir():
        raise InputError(f"{root}: rawframe folder not found")
    numbered = any(_NUMBERED.match(p.name) for p in root.iterdir())
    folders = [root] if numbered else sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"{root}: no video folders (or numbered image files) found")
    naming = naming or detect_naming(folders[0])
    log(f"import-rawframes: {root}: {naming.describe()}")
    rank, world_size = resolve_rank(rank, world_size)
    entries = [(p.name, str(p)) for p in folders]
    num_shards = shard_count(len(entries), videos_per_shard)
    params = {"imported_from": "rawframes", "naming": naming.describe()}
    layout = init_store(frames_out, FRAMES_KIND, params, num_shards)
    items = plan_shards(entries, layout.num_shards, rank, world_size)
    summaries = [run_stage("import-frames", layout, items, pool_executor(import_frames_video, workers, layout, naming),
                           rank=rank, world_size=world_size, progress=progress, log=log)]
    if flow_out is not None:
        if not naming.flow_x_prefix:
            raise InputError(f"{folders[0]}: no flow files (x_/y_ or flow_x_/flow_y_) to import")
        options = FlowOptions(bound=bound)
        flow_layout = init_store(flow_out, FLOW_KIND, {**params, "bound": bound, "step": 1, "dtype": "uint8",
                                                       "compression": options.compression}, num_shards)
        items = plan_shards(entries, flow_layout.num_shards, rank, world_size)
        summaries.append(run_stage("import-flow", flow_layout, items,
                                   pool_executor(import_flow_video, workers, flow_layout, naming, options),
                                   rank=rank, world_size=world_size, unit="flows", progress=progress, log=log))
    return summaries
