"""`compute-flow`: TV-L1 flow of consecutive frames from a frame store into a sharded flow store, and ``FlowStore``.

Index convention: a video of N stored frames gets N - step flows; flow ``i`` maps frame ``i`` to frame
``i + step`` (OpenCV's direction: ``frame_i(x) ~ frame_{i+step}(x + flow_i(x))``), both 0-based. So a
stack of L flows starting at ``i`` covers frames ``i .. i + L*step``. A one-frame video gets zero flows.

A video's group ``videos/<video_id>`` holds one dataset ``flow`` of shape ``[N - step, H, W, 2]`` (channel 0 = x,
1 = y), one chunk per flow (Blosc-LZ4 by default: readers need ``import hdf5plugin``; ``gzip`` on request),
and attributes ``num_flows``, ``num_frames``, ``height``, ``width``, ``step``,
``bound`` and ``dtype``. With ``dtype`` uint8 (the default) values are quantised as the field does: clipped to
``[-bound, bound]`` and mapped linearly to 0..255 (see ``actrec.pipeline.flowio.quantize_flow``); with float16
they are pixels.
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import hdf5plugin
import numpy as np
import torch

from actrec.errors import DeviceError, InputError, StoreError
from actrec.pipeline.flow_opencv import opencv_tvl1_flow
from actrec.pipeline.flowio import dequantize_flow, quantize_flow
from actrec.pipeline.frames import FrameStore
from actrec.pipeline.stage import (Outcome, StageSummary, WorkItem, io_failure, plan_shards, pool_executor,
                                   resolve_rank, run_stage, shard_count)
from actrec.pipeline.store import Dataset, ShardedReader, StoreLayout, init_store, write_part
from actrec.pipeline.tvl1 import TVL1Params, to_gray, tvl1_flow

KIND = "flow"
BACKENDS = ("torch", "opencv")
DTYPES = ("uint8", "float16")
# HDF5 storage of a flow chunk (all lossless; the name is recorded in the store), measured by
# benchmarks/bench_flowstore.py against mmaction2's JPEG folders (bytes, random 10-flow stack reads):
# zstd (Zstandard level 9, the default) 1.9x the bytes, 2.4-2.6x the reads; lz4hc (Blosc2 LZ4HC-9) 2.4x, 4.0x;
# lz4 (Blosc LZ4, the default before) 3.4x, 3.7-4.0x; gzip 2.3x, 0.8x but readable by any HDF5 reader.
COMPRESSIONS = {
    "zstd": dict(hdf5plugin.Zstd(clevel=9)),
    "lz4hc": dict(hdf5plugin.Blosc2(cname="lz4hc", clevel=9, filters=hdf5plugin.Blosc2.NOFILTER)),
    "lz4": dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
    "gzip": {"compression": "gzip", "compression_opts": 1},
    "none": {},
}


@dataclass(frozen=True)
class FlowOptions:
    """What flow is computed and how it is stored; ``params``, ``bound``, ``step`` and ``dtype`` go in the metadata."""

    params: TVL1Params = field(default_factory=TVL1Params)
    bound: float = 20.0  # quantisation range in pixels (mmaction2 passes 20; denseflow's own default is 32)
    step: int = 1  # flow i maps frame i to frame i + step
    dtype: str = "uint8"  # "uint8" (quantised, the field's convention) or "float16" (pixels, unquantised)
    backend: str = "torch"  # "torch" (batched solver, CPU or CUDA) or "opencv" (OpenCV's CPU TV-L1 in workers)
    device: str = "cpu"
    batch_size: int = 64  # frame pairs per solver call (torch backend); pairs of several videos share a batch
    compression: str = "zstd"  # one of COMPRESSIONS

    def store_params(self) -> dict[str, Any]:
        return {"tvl1": asdict(self.params), "bound": self.bound, "step": self.step, "dtype": self.dtype,
                "compression": self.compression}


def encode_flow(flow: np.ndarray, options: FlowOptions) -> Dataset:
    """The ``flow`` dataset of a video from its flows ``[F, H, W, 2]``: float32 pixels, or uint8 codes kept as
    they are (already quantised, e.g. imported rawframes)."""
    if flow.dtype == np.uint8:
        data = flow
    else:
        data = quantize_flow(flow, options.bound) if options.dtype == "uint8" else flow.astype(np.float16)
    if not data.shape[0]:
        return Dataset(data)
    storage = COMPRESSIONS[options.compression]
    return Dataset(data, chunks=(1, *data.shape[1:]), compression=storage.get("compression"),
                   compression_opts=storage.get("compression_opts"))


def flow_attrs(num_frames: int, flow: np.ndarray, options: FlowOptions, hw: tuple[int, int]) -> dict[str, Any]:
    return {"num_flows": int(flow.shape[0]), "num_frames": num_frames, "height": hw[0], "width": hw[1],
            "step": options.step, "bound": options.bound, "dtype": options.dtype}


def _write_video(layout: StoreLayout, item: WorkItem, num_frames: int, flow: np.ndarray, options: FlowOptions,
                 hw: tuple[int, int]) -> Outcome:
    try:
        nbytes = write_part(layout, item.shard, item.video_id, {"flow": encode_flow(flow, options)},
                            flow_attrs(num_frames, flow, options, hw))
    except OSError as exc:
        return io_failure(item, exc, f"{layout.root}: {item.video_id}")
    return Outcome(item.video_id, item.source, "done", frames=int(flow.shape[0]), nbytes=nbytes)


def _gray_frames(frames: FrameStore, video_id: str) -> np.ndarray:
    """All frames of a video as OpenCV's grayscale ``uint8[N, H, W]``."""
    return np.stack([to_gray(rgb) for rgb in frames.read(video_id)])


def opencv_video(item: WorkItem, layout: StoreLayout, frames: FrameStore, options: FlowOptions,
                 cv_threads: int) -> Outcome:
    """One video with OpenCV's TV-L1 (the ``opencv`` backend), run inside a worker process with ``cv_threads``
    OpenCV threads (1 when several workers share the cores, -1 for OpenCV's default)."""
    cv2.setNumThreads(cv_threads)
    try:
        gray = _gray_frames(frames, item.video_id)
    except StoreError as exc:
        return Outcome(item.video_id, item.source, "failed", message=str(exc))
    pairs = len(gray) - options.step
    flow = (opencv_tvl1_flow(gray[:pairs], gray[options.step:], options.params).numpy() if pairs > 0
            else np.zeros((0, *gray.shape[1:], 2), np.float32))
    return _write_video(layout, item, len(gray), flow, options, gray.shape[1:])


@dataclass
class _Job:
    """A video whose pairs are being solved: its frames and the flows filled in so far."""

    item: WorkItem
    gray: np.ndarray
    flow: np.ndarray
    missing: int


def batched_executor(layout: StoreLayout, frames: FrameStore, options: FlowOptions,
                     prefetch: int = 4) -> Callable[[list[WorkItem]], Iterator[Outcome]]:
    """Executor for the torch backend: pairs of several videos fill each batch; reading and writing overlap compute.

    Videos are read by a thread pool ahead of the solver; finished videos are written by another thread.
    """
    device = torch.device(options.device)

    def execute(items: list[WorkItem]) -> Iterator[Outcome]:
        with ThreadPoolExecutor(prefetch) as readers, ThreadPoolExecutor(1) as writer:
            loads = [readers.submit(_gray_frames, frames, it.video_id) for it in items]
            queues: dict[tuple[int, int], list[tuple[_Job, int]]] = defaultdict(list)
            writes: list[Future] = []
            for item, load in zip(items, loads):
                try:
                    gray = load.result()
                except StoreError as exc:
                    yield Outcome(item.video_id, item.source, "failed", message=str(exc))
                    continue
                pairs = max(0, len(gray) - options.step)
                job = _Job(item, gray, np.zeros((pairs, *gray.shape[1:], 2), np.float32), pairs)
                if pairs == 0:
                    writes.append(writer.submit(_write_video, layout, item, len(gray), job.flow, options,
                                                gray.shape[1:]))
                queue = queues[gray.shape[1:]]
                queue.extend((job, i) for i in range(pairs))
                while len(queue) >= options.batch_size:
                    writes += _solve(queue[:options.batch_size], options, device, layout, writer)
                    del queue[:options.batch_size]
                yield from _drain(writes, block=False)
            for queue in queues.values():
                if queue:
                    writes += _solve(queue, options, device, layout, writer)
            yield from _drain(writes, block=True)

    return execute


def _solve(batch: list[tuple[_Job, int]], options: FlowOptions, device: torch.device, layout: StoreLayout,
           writer: ThreadPoolExecutor) -> list[Future]:
    """Solve one batch of pairs; submit the writes of the videos it completes."""
    img0 = np.stack([job.gray[i] for job, i in batch])
    img1 = np.stack([job.gray[i + options.step] for job, i in batch])
    flow = tvl1_flow(img0, img1, options.params, device=device).cpu().numpy()
    done = []
    for (job, i), f in zip(batch, flow):
        job.flow[i] = f
        job.missing -= 1
        if job.missing == 0:
            done.append(writer.submit(_write_video, layout, job.item, len(job.gray), job.flow, options,
                                      job.gray.shape[1:]))
    return done


def _drain(writes: list[Future], block: bool) -> Iterator[Outcome]:
    while writes and (block or writes[0].done()):
        yield writes.pop(0).result()


def resolve_device(gpu: bool, local_rank: int | None = None) -> str:
    """The device of this process: ``cuda:LOCAL_RANK`` with --gpu (torchrun's one GPU per process), else CPU."""
    if not gpu:
        return "cpu"
    if not torch.cuda.is_available():
        raise DeviceError("--gpu was given but CUDA is not available "
                          f"(torch {torch.__version__} sees no GPU); drop --gpu to compute on the CPU")
    local = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    return f"cuda:{local % torch.cuda.device_count()}"


def compute_flow(frames_root: str | Path, out: str | Path, options: FlowOptions = FlowOptions(), *,
                 video_ids: Sequence[str] | None = None, workers: int = 1, videos_per_shard: int = 128,
                 rank: int | None = None, world_size: int | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> StageSummary:
    """Compute the flow of every video of a frame store (or of ``video_ids``) into the flow store at ``out``."""
    if options.backend not in BACKENDS:
        raise InputError(f"unknown flow backend {options.backend!r}; expected one of {', '.join(BACKENDS)}")
    if options.dtype not in DTYPES:
        raise InputError(f"unknown flow dtype {options.dtype!r}; expected one of {', '.join(DTYPES)}")
    if options.compression not in COMPRESSIONS:
        raise InputError(f"unknown flow compression {options.compression!r}; expected one of {', '.join(COMPRESSIONS)}")
    if options.step < 1 or options.bound <= 0 or options.batch_size < 1:
        raise InputError("--step and --batch-size must be at least 1 and --bound positive")
    frames = FrameStore(frames_root)
    ids = list(video_ids) if video_ids is not None else sorted(frames.video_ids)
    missing = [v for v in ids if v not in frames]
    if missing:
        raise InputError(f"{frames_root}: {len(missing)} videos are not in the frame store, e.g. {missing[0]!r}")
    rank, world_size = resolve_rank(rank, world_size)
    layout = init_store(out, KIND, options.store_params(), shard_count(len(ids), videos_per_shard))
    items = plan_shards([(v, v) for v in ids], layout.num_shards, rank, world_size)
    cv_threads = 1 if workers > 1 else -1
    execute = (pool_executor(opencv_video, workers, layout, frames, options, cv_threads)
               if options.backend == "opencv" else batched_executor(layout, frames, options))
    return run_stage("compute-flow", layout, items, execute, rank=rank, unit="flows", progress=progress, log=log)


class FlowStore(ShardedReader):
    """Random access to stacks of consecutive flows of any video of a flow store; safe in DataLoader workers."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(root, KIND)

    @property
    def bound(self) -> float:
        return float(self.params["bound"])

    def num_flows(self, video_id: str) -> int:
        return int(self.group(video_id).attrs["num_flows"])

    def read_stack(self, video_id: str, start: int, length: int, dequantize: bool = False) -> np.ndarray:
        """Flows ``start .. start+length-1`` of a video: ``[length, H, W, 2]`` as stored, or float32 pixels."""
        dset = self.group(video_id)["flow"]
        if not (0 <= start and length >= 0 and start + length <= dset.shape[0]):
            raise StoreError(f"{self.root}: flows {start}..{start + length - 1} out of range for {video_id!r} "
                             f"({dset.shape[0]} flows)")
        data = dset[start:start + length]
        if not dequantize:
            return data
        return dequantize_flow(data, self.bound) if data.dtype == np.uint8 else data.astype(np.float32)
