"""Frame extraction into a sharded HDF5 frame store, and ``FrameStore``, its random-access reader.

A video's group ``videos/<video_id>`` holds one dataset ``frames`` and attributes ``num_frames``, ``height``,
``width``, ``fps`` (of the stored frames), ``source_fps``, ``source_path``, ``source_width``, ``source_height``,
``rotation``, ``declared_frames``, ``decoded_frames``, ``encoding`` and ``partial``. With the default ``jpeg``
encoding, ``frames`` is a 1-D variable-length uint8 dataset: entry i is the JPEG file of frame i (baseline JPEG,
YCbCr 4:2:0, written by FFmpeg's MJPEG encoder exactly as ``ffmpeg -q:v Q img_%05d.jpg`` would; any JPEG reader
decodes it). With ``raw``, ``frames`` is ``uint8[T, H, W, 3]`` RGB, one gzip-compressed chunk
per frame. Frame indices are 0-based. Every entry carries a checksum (a JPEG's CRC-32 in the attribute ``crc32`` of
``frames``; raw frames in fletcher32 chunks), verified whenever a frame is read (``actrec.pipeline.store_checks``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from fractions import Fraction
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from actrec.data_manifests.manifest import ManifestRow, check_inside_root
from actrec.deps import LazyModule, require
from actrec.errors import InputError, StoreError
from actrec.pipeline.decode import DecodeError, DecodeResult, ResizeSpec, decode_frames
from actrec.pipeline.stage import (Outcome, StageSummary, WorkItem, io_failure, plan_shards, pool_executor,
                                   resolve_rank, run_stage, shard_count)
from actrec.pipeline.store import Dataset, StoreLayout, init_store, write_part
from actrec.pipeline.store_checks import EntryPlace, read_rows, read_vlen
from actrec.pipeline.store_reader import ShardedReader

KIND = "frames"
ENCODINGS = ("jpeg", "raw")
PARTIAL_POLICIES = ("keep", "fail")
# PyAV decodes and encodes frames; reading a frame store needs none (the GPU image has no PyAV)
av = LazyModule("av", "extract-frames (decoding videos)")
# A container may over-count by a frame or two (e.g. an edit list); fewer decoded frames than this is "partial".
_PARTIAL_TOLERANCE = 0.95


@dataclass(frozen=True)
class ExtractOptions:
    """How frames are decoded and stored; everything but ``threads`` is recorded in the store's metadata."""

    resize: ResizeSpec = ResizeSpec()
    fps: float | None = None  # resample to this frame rate; None keeps every decoded frame
    encoding: str = "jpeg"  # "jpeg" (smallest; chosen by benchmarks/bench_store.py) or "raw" (lossless)
    jpeg_qscale: int = 2  # FFmpeg's JPEG quantiser scale, 2 (best) .. 31; 2 is `ffmpeg -q:v 2`, ~40 dB PSNR
    partial: str = "keep"  # a video that decodes only partly: "keep" its frames with a warning, or "fail" it
    threads: int = 0  # FFmpeg decoding threads per worker (0 = automatic)

    def store_params(self) -> dict[str, Any]:
        params = asdict(self)
        params.pop("threads")
        params["resize"] = asdict(self.resize)
        return params


PIXEL_FORMATS = {"jpeg": "yuvj420p", "raw": "rgb24"}  # what the decoder hands each encoding


def encode_frames(frames: Iterable[av.VideoFrame], encoding: str, jpeg_qscale: int = 2) -> Dataset:
    """The ``frames`` dataset of a video from its decoded frames (in ``PIXEL_FORMATS[encoding]``)."""
    if encoding == "jpeg":
        return Dataset(list(_mjpeg(frames, jpeg_qscale)))
    if encoding == "raw":
        stack = np.stack([f.to_ndarray() for f in frames])  # (T, H, W, 3)
        return Dataset(stack, chunks=(1, *stack.shape[1:]), compression="gzip", compression_opts=1)
    raise InputError(f"unknown frame encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


def _mjpeg(frames: Iterable[av.VideoFrame], qscale: int) -> Iterator[np.ndarray]:
    """JPEG files of yuvj420p frames, from FFmpeg's MJPEG encoder at a fixed quantiser scale."""
    encoder = None
    for i, frame in enumerate(frames):
        if encoder is None:
            encoder = av.CodecContext.create("mjpeg", "w")
            encoder.width, encoder.height, encoder.pix_fmt = frame.width, frame.height, "yuvj420p"
            encoder.time_base = Fraction(1, 25)
            encoder.flags |= av.codec.context.Flags.qscale
            encoder.options = {"qmin": str(qscale), "qmax": str(qscale)}
            encoder.thread_count = 1
        frame.pts, frame.time_base = i, encoder.time_base
        (packet,) = encoder.encode(frame)
        yield np.frombuffer(bytes(packet), dtype=np.uint8)


def decode_jpeg(buf: np.ndarray, place: EntryPlace | None = None, index: int | None = None,
                code: int = cv2.COLOR_BGR2RGB) -> np.ndarray:
    """RGB ``uint8[H, W, 3]`` (or another conversion ``code`` of OpenCV's BGR) from the JPEG bytes of one stored
    frame; a failure names ``place`` and ``index`` when given."""
    bgr = cv2.imdecode(np.asarray(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        if place is None:
            raise StoreError("stored JPEG frame cannot be decoded")
        raise place.error(index, "stored JPEG cannot be decoded")
    return cv2.cvtColor(bgr, code)


def extract_video(item: WorkItem, layout: StoreLayout, options: ExtractOptions) -> Outcome:
    """Decode one video and write it as a part file. Never raises for a bad video: the outcome says what failed."""
    path = Path(item.source)
    result = DecodeResult()
    try:
        frames = decode_frames(path, options.resize, options.fps, options.threads, result,
                               PIXEL_FORMATS[options.encoding])
        encoded = encode_frames(_remember_size(frames, result), options.encoding, options.jpeg_qscale)
        warning = _partial_warning(path, result)
        if warning and options.partial == "fail":
            return Outcome(item.video_id, item.source, "failed", message=f"{warning} (--partial fail)")
        attrs = _video_attrs(path, len(encoded.data), result, options, partial=bool(warning))
        nbytes = write_part(layout, item.shard, item.video_id, {"frames": encoded}, attrs)
    except DecodeError as exc:
        return Outcome(item.video_id, item.source, "failed", message=str(exc))
    except OSError as exc:
        return io_failure(item, exc, str(path))
    except Exception as exc:  # noqa: BLE001 - one video's unexpected error must not stop the job; it is reported
        return Outcome(item.video_id, item.source, "failed", message=f"{path}: {type(exc).__name__}: {exc}")
    return Outcome(item.video_id, item.source, "done", frames=len(encoded.data), nbytes=nbytes, message=warning)


def _remember_size(frames: Iterator[av.VideoFrame], result: DecodeResult) -> Iterator[av.VideoFrame]:
    for frame in frames:
        result.output_size = (frame.width, frame.height)
        yield frame


def _partial_warning(path: Path, result: DecodeResult) -> str:
    if result.error:
        return f"{path}: partial video, {result.error}"
    declared = result.info.declared_frames if result.info else 0
    if declared and result.decoded_frames < _PARTIAL_TOLERANCE * declared:
        return (f"{path}: partial video, decoded {result.decoded_frames} of the {declared} frames "
                "the container declares (truncated file?)")
    return ""


def _video_attrs(path: Path, num_frames: int, result: DecodeResult, options: ExtractOptions,
                 partial: bool) -> dict[str, Any]:
    info = result.info
    assert info is not None and result.output_size is not None  # decoding raised before the first frame otherwise
    width, height = result.output_size
    return {"num_frames": num_frames, "height": height, "width": width,
            "fps": float(options.fps or info.source_fps), "source_fps": info.source_fps,
            "source_path": str(path), "source_width": info.source_width, "source_height": info.source_height,
            "rotation": info.rotation, "declared_frames": info.declared_frames,
            "decoded_frames": result.decoded_frames, "encoding": options.encoding, "partial": partial}


def extract_frames(rows: Sequence[ManifestRow], video_root: str | Path, out: str | Path,
                   options: ExtractOptions = ExtractOptions(), *, workers: int = 1, videos_per_shard: int = 128,
                   rank: int | None = None, world_size: int | None = None, progress: bool = True,
                   allow_outside_root: bool = False, log: Callable[[str], None] = print) -> StageSummary:
    """Extract the frames of the manifest rows (paths relative to ``video_root``) into the store at ``out``.

    Resumable (finished videos are skipped), crash-safe, and split across ranks by shard. Manifest paths that
    leave ``video_root`` are refused unless ``allow_outside_root`` (``check_inside_root``).
    """
    check_inside_root(rows, video_root, allow_outside_root, log)
    if options.encoding not in ENCODINGS:
        raise InputError(f"unknown frame encoding {options.encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if options.partial not in PARTIAL_POLICIES:
        raise InputError(f"unknown partial policy {options.partial!r}; expected keep or fail")
    require("av", "extract-frames (decoding videos)")  # here, not once per video in the workers
    rank, world_size = resolve_rank(rank, world_size)
    layout = init_store(out, KIND, options.store_params(), shard_count(len(rows), videos_per_shard))
    root = Path(video_root)
    items = plan_shards([(r.video_id, str(root / r.path)) for r in rows], layout.num_shards, rank, world_size)
    if options.threads == 0:
        options = ExtractOptions(**{**options.__dict__, "threads": max(1, (os.cpu_count() or 1) // workers)})
    return run_stage("extract-frames", layout, items, pool_executor(extract_video, workers, layout, options),
                     rank=rank, world_size=world_size, progress=progress, log=log)


class FrameStore(ShardedReader):
    """Random access to the RGB frames of any video of a frame store; safe to use in DataLoader workers.

    Every read checks the frames' checksums; a damaged frame or shard raises StoreReadError naming the shard, the
    video and the frame."""

    entry = "frame"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root, KIND)

    def num_frames(self, video_id: str) -> int:
        return int(self.attr(video_id, "num_frames"))

    def read_stored(self, video_id: str, indices: Sequence[int] | None = None) -> list[np.ndarray] | np.ndarray:
        """The frames as stored, checksums verified: JPEG bytes (a list) or raw RGB ``uint8[T, H, W, 3]``; all
        frames (in one HDF5 call) when ``indices`` is None."""
        dset = self.dataset(video_id, "frames")
        place = self.place(video_id)
        n = dset.shape[0]
        if indices is not None and any(not 0 <= int(i) < n for i in indices):
            raise StoreError(f"{self.root}: frame index out of range for {video_id!r} ({n} frames): "
                             f"{[int(i) for i in indices]}")
        if dset.dtype != np.uint8:
            return read_vlen(dset, indices, place)
        if indices is None:
            return read_rows(dset, 0, n, place)
        return np.stack([read_rows(dset, int(i), int(i) + 1, place)[0] for i in indices])

    def read(self, video_id: str, indices: Sequence[int] | None = None) -> np.ndarray:
        """RGB frames ``uint8[len(indices), H, W, 3]`` of a video (all frames when ``indices`` is None)."""
        stored = self.read_stored(video_id, indices)
        if isinstance(stored, np.ndarray):  # raw encoding
            return stored
        place = self.place(video_id)
        idx = range(len(stored)) if indices is None else indices
        return np.stack([decode_jpeg(buf, place, int(i)) for i, buf in zip(idx, stored)])
