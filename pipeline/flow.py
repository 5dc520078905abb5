"""`compute-flow`: TV-L1 flow of consecutive frames from a frame store into a sharded flow store, and ``FlowStore``.

Index convention: a video of N stored frames gets N - step flows; flow ``i`` maps frame ``i`` to frame
``i + step`` (OpenCV's direction: ``frame_i(x) ~ frame_{i+step}(x + flow_i(x))``), both 0-based. So a
stack of L flows starting at ``i`` covers frames ``i .. i + L*step``. A one-frame video gets zero flows.

A video's group ``videos/<video_id>`` holds one dataset ``flow`` of shape ``[N - step, H, W, 2]`` (channel 0 = x,
1 = y), one chunk per flow (Zstandard by default, an hdf5plugin filter; ``gzip`` and ``none`` need no plugin),
and attributes ``num_flows``, ``num_frames``, ``height``, ``width``, ``step``,
``bound`` and ``dtype``. Every flow's chunk carries a fletcher32 checksum, verified by HDF5 on every read (a damaged
flow raises StoreReadError naming the shard, the video and the flow). With ``dtype`` uint8 (the default) values
are quantised as the field does: clipped to
``[-bound, bound]`` and mapped linearly to 0..255 (see ``actrec.pipeline.flowio.quantize_flow``); with float16
they are pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

from actrec.errors import DeviceError, InputError, StoreError
from actrec.pipeline import launcher
from actrec.pipeline.flow_opencv import opencv_tvl1_flow, optflow
from actrec.pipeline.flow_spec import BACKENDS, COMPRESSIONS, DTYPES, codec_storage, require_codec
from actrec.pipeline.flowio import dequantize_flow, quantize_flow
from actrec.pipeline.frames import FrameStore, decode_jpeg
from actrec.pipeline.flow_batch import DriverLimits, Solver, flow_executor
from actrec.pipeline.stage import StageSummary, WorkItem, plan_shards, resolve_rank, run_stage, shard_count
from actrec.pipeline.store import META_FILE, Dataset, init_store, read_store_meta
from actrec.pipeline.store_checks import read_rows
from actrec.pipeline.store_reader import ShardedReader
from actrec.pipeline.tvl1 import TVL1Params, to_gray, tvl1_flow
from actrec.pipeline.tvl1.backend import default_kernels
from actrec.pipeline.tvl1.floor import bytes_per_pixel_pair
from actrec.wording import agrees, counted

KIND = "flow"
@dataclass(frozen=True)
class FlowOptions:
    """What flow is computed and how it is stored; ``params``, ``bound``, ``step`` and ``dtype`` go in the metadata."""

    params: TVL1Params = field(default_factory=TVL1Params)
    bound: float = 20.0  # quantisation range in pixels (mmaction2 passes 20; denseflow's own default is 32)
    step: int = 1  # flow i maps frame i to frame i + step
    dtype: str = "uint8"  # "uint8" (quantised, the field's convention) or "float16" (pixels, unquantised)
    backend: str = "torch"  # "torch" (batched solver, CPU or CUDA) or "opencv" (OpenCV's CPU TV-L1 in workers)
    device: str = "cpu"
    batch_pixels: int = 0  # frame pixels per solver call (pairs of one shape, several videos); 0: see batch_pixels()
    readers: int = 3  # threads reading and decoding frames ahead of the solver; see READER_RULE
    writers: int = 0  # 1: a writer thread; more: writer processes; 0: 4 on CUDA, else 1 (see WRITER_RULE)
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
    storage = codec_storage(options.compression)
    return Dataset(data, chunks=(1, *data.shape[1:]), compression=storage.get("compression"),
                   compression_opts=storage.get("compression_opts"))


def store_compression(out: str | Path) -> str:
    """The codec of the flow store at ``out`` if one was started there (so that a rerun resumes a store written
    with an earlier default, e.g. ``lz4``, without naming it), else the default ``FlowOptions.compression``."""
    if not (Path(out) / META_FILE).exists():
        return FlowOptions.compression
    return str(read_store_meta(out, KIND)["params"].get("compression", FlowOptions.compression))


def flow_attrs(num_frames: int, flow: np.ndarray, options: FlowOptions, hw: tuple[int, int]) -> dict[str, Any]:
    return {"num_flows": int(flow.shape[0]), "num_frames": num_frames, "height": hw[0], "width": hw[1],
            "step": options.step, "bound": options.bound, "dtype": options.dtype}


def flow_part(item: WorkItem, num_frames: int, flow: np.ndarray,
              options: FlowOptions) -> tuple[dict[str, Dataset], dict[str, Any], int]:
    """What ``stage.write_video`` writes for a video: its datasets, its attributes and its flow count."""
    return {"flow": encode_flow(flow, options)}, flow_attrs(num_frames, flow, options, flow.shape[1:3]), len(flow)


def _gray_frames(frames: FrameStore, video_id: str) -> np.ndarray:
    """All frames of a video as OpenCV's grayscale ``uint8[N, H, W]``, read the cheap way: the video's JPEG bytes
    in one HDF5 call (h5py serialises its calls; one instead of one per frame) and each frame decoded and converted
    BGR -> gray, identical to RGB -> gray of the RGB frame with one conversion less (bench_flow_reader.py). Checksums
    are verified; a damaged frame raises StoreReadError naming it (the video fails, the others go on)."""
    stored = frames.read_stored(video_id)
    if isinstance(stored, np.ndarray):  # raw RGB frames
        return to_gray(stored)
    place = frames.place(video_id)
    return np.stack([decode_jpeg(buf, place, i, cv2.COLOR_BGR2GRAY) for i, buf in enumerate(stored)])


def quantize_on_device(flow: torch.Tensor, bound: float) -> torch.Tensor:
    """``flowio.quantize_flow`` on the flow's own device, bit for bit (the same float32 operations, rounding half
    to even): the GPU sends 2 bytes per flow pixel instead of 8, and the CPU is spared the conversion."""
    scaled = (flow.clamp(-bound, bound) + bound) * (255.0 / (2.0 * bound))
    return torch.round(scaled).to(torch.uint8)


def _stored(flow: torch.Tensor, options: FlowOptions) -> np.ndarray:
    """Solver output (float32 pixels) in the stored dtype, as numpy: uint8 codes or float16, converted batch by
    batch, so a video waiting for its last pairs holds 2 or 4 bytes per pixel. A GPU's flow is quantised there; a
    CPU's by numpy, which takes a fifth of torch's CPU time for it (bench_flow_reader.py)."""
    if options.dtype == "float16":
        return flow.to(torch.float16).cpu().numpy()
    if flow.device.type == "cpu":
        return quantize_flow(flow.numpy(), options.bound)
    return quantize_on_device(flow, options.bound).cpu().numpy()


def flow_solver(options: FlowOptions, workers: int) -> Solver:
    """The batch solver of a backend, returning the stored dtype: our TV-L1 on ``options.device``, or OpenCV's in
    ``workers`` processes."""
    if options.backend == "opencv":
        optflow()  # here, not at the first batch
        return lambda img0, img1: _stored(opencv_tvl1_flow(img0, img1, options.params, workers=workers), options)
    device = torch.device(options.device)
    return lambda img0, img1: _stored(tvl1_flow(img0, img1, options.params, device=device), options)


GPU_MEMORY_SHARE = 0.8  # of the free device memory at start given to one batch (the rest: allocator slack)
CPU_PAIRS_PER_WORKER = 8  # 340x256 pairs per batch and worker on CPU: a batch every few seconds moves the bar
FIELD_PAIR_PIXELS = 340 * 256


def batch_pixels(options: FlowOptions, workers: int) -> int:
    """Frame pixels per solver call: ``options.batch_pixels``, else what fits in the GPU's free memory, else (CPU)
    ``CPU_PAIRS_PER_WORKER`` field-size pairs per worker (the CPU solvers gain nothing from larger batches)."""
    if options.batch_pixels:
        return options.batch_pixels
    device = torch.device(options.device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        per_pixel = bytes_per_pixel_pair(options.params, default_kernels(device))
        return int(free * GPU_MEMORY_SHARE) // per_pixel
    return CPU_PAIRS_PER_WORKER * max(1, workers) * FIELD_PAIR_PIXELS


# READER_RULE: readers = ceil(2 x pairs/s / step / gray frames per reader-second). One reader thread turns 1,560 to
# 1,920 stored 340x256 JPEG frames per CPU-second into gray (benchmarks/bench_flow_reader.py, RESULTS.md), and
# threads, not processes, because only 2-3% of a read holds h5py's lock (JPEG decoding and the gray conversion
# release the GIL). The GPU target of 2,000 pairs/s thus needs 2.1-2.6 readers with 2x headroom: 3 by default.


# WRITER_RULE: writers = ceil(2 x flows/s x CPU-seconds per written flow). Quantised on the GPU, a 340x256 flow
# cost 0.6-0.7 ms of CPU to compress with Blosc-LZ4 and write (bench_flow_reader.py); the default Zstandard level 3
# adds about 0.3 ms (RESULTS.md, flow store codecs), so 2,000 flows/s need about 3.6 writers with 2x headroom:
# 4 processes on CUDA. On the CPU one thread keeps up.
GPU_WRITERS = 4


def flow_limits(options: FlowOptions, workers: int) -> DriverLimits:
    """The driver's limits: the batch in pixels, the readers and a read-ahead of two videos beyond them, the
    writers. The CPU's default batch is reached by doubling from one pair per worker, so that the bar moves
    within a pair's time (a GPU solves a full batch in about a second; an explicit --batch-pixels is taken as
    it is)."""
    on_gpu = torch.device(options.device).type == "cuda"
    ramp = 0 if on_gpu or options.batch_pixels else max(1, workers if options.backend == "opencv" else 1)
    return DriverLimits(batch_pixels=batch_pixels(options, workers), first_batch=ramp, readers=options.readers,
                        window=options.readers + 2, writers=options.writers or (GPU_WRITERS if on_gpu else 1))


def resolve_device(gpu: bool, local_rank: int | None = None) -> str:
    """The device of this process: with --gpu ``cuda:LOCAL_RANK`` (torchrun's one GPU per process; under srun
    ``SLURM_LOCALID``, or the one GPU srun bound to the task: :mod:`.launcher`), else CPU.

    More local processes than visible GPUs is an error: two processes sharing one GPU would halve each one's
    memory and speed without a word."""
    if not gpu:
        return "cpu"
    if not torch.cuda.is_available():
        raise DeviceError("--gpu was given but CUDA is not available "
                          f"(torch {torch.__version__} sees no GPU); drop --gpu to compute on the CPU")
    local = launcher.local_rank() if local_rank is None else local_rank
    count = torch.cuda.device_count()
    index = launcher.device_index(local, count)
    if index is None:
        raise DeviceError(f"local rank {local} has no GPU of its own: {count} CUDA device(s) visible; start at most "
                          f"{count} processes per machine (torchrun --nproc-per-node {count}) or make more GPUs "
                          "visible (CUDA_VISIBLE_DEVICES)")
    return f"cuda:{index}"


def _check_options(options: FlowOptions) -> None:
    if options.backend not in BACKENDS:
        raise InputError(f"unknown flow backend {options.backend!r}; expected one of {', '.join(BACKENDS)}")
    if options.backend == "opencv" and torch.device(options.device).type != "cpu":
        raise InputError(f"the opencv backend computes on the CPU only, not on {options.device}: "
                         "use --backend torch with --gpu, or drop --gpu")
    if options.dtype not in DTYPES:
        raise InputError(f"unknown flow dtype {options.dtype!r}; expected one of {', '.join(DTYPES)}")
    if options.compression not in COMPRESSIONS:
        raise InputError(f"unknown flow compression {options.compression!r}; expected one of {', '.join(COMPRESSIONS)}")
    if options.step < 1 or options.bound <= 0 or min(options.batch_pixels, options.writers) < 0 or options.readers < 1:
        raise InputError("--step and --readers must be at least 1, --bound positive, --batch-pixels and --writers "
                         "not negative")


def compute_flow(frames_root: str | Path, out: str | Path, options: FlowOptions = FlowOptions(), *,
                 video_ids: Sequence[str] | None = None, workers: int = 1, videos_per_shard: int = 128,
                 rank: int | None = None, world_size: int | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> StageSummary:
    """Compute the flow of every video of a frame store (or of ``video_ids``) into the flow store at ``out``.

    ``workers``: OpenCV processes of the opencv backend (the torch backend solves in this process)."""
    _check_options(options)
    require_codec(options.compression, "compute-flow")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    frames = FrameStore(frames_root)
    ids = list(video_ids) if video_ids is not None else sorted(frames.video_ids)
    missing = [v for v in ids if v not in frames]
    if missing:
        raise InputError(f"{frames_root}: {counted(len(missing), 'video')} {agrees(len(missing), 'is', 'are')} not "
                         f"in the frame store, e.g. {missing[0]!r}")
    rank, world_size = resolve_rank(rank, world_size)
    layout = init_store(out, KIND, options.store_params(), shard_count(len(ids), videos_per_shard))
    items = plan_shards([(v, v) for v in ids], layout.num_shards, rank, world_size)
    execute = flow_executor(read=lambda item: _gray_frames(frames, item.video_id),
                            solve=flow_solver(options, workers),
                            prepare=partial(flow_part, options=options), layout=layout,
                            dtype=np.dtype(options.dtype),
                            step=options.step, limits=flow_limits(options, workers))
    return run_stage("compute-flow", layout, items, execute, rank=rank, world_size=world_size, unit="flows",
                     progress=progress, log=log,
                     work=lambda item: max(0, frames.num_frames(item.video_id) - options.step))


class FlowStore(ShardedReader):
    """Random access to stacks of consecutive flows of any video of a flow store; safe in DataLoader workers.

    Every read checks the flows' checksums; a damaged flow or shard raises StoreReadError naming the shard, the
    video and the flow."""

    entry = "flow"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root, KIND)
        require_codec(str(self.params.get("compression")), f"reading the flow store {self.root}")

    @property
    def bound(self) -> float:
        return float(self.params["bound"])

    def num_flows(self, video_id: str) -> int:
        return int(self.attr(video_id, "num_flows"))

    def read_stack(self, video_id: str, start: int, length: int, dequantize: bool = False) -> np.ndarray:
        """Flows ``start .. start+length-1`` of a video: ``[length, H, W, 2]`` as stored, or float32 pixels."""
        dset = self.dataset(video_id, "flow")
        if not (0 <= start and length >= 0 and start + length <= dset.shape[0]):
            raise StoreError(f"{self.root}: flows {start}..{start + length - 1} out of range for {video_id!r} "
                             f"({dset.shape[0]} flows)")
        data = read_rows(dset, start, start + length, self.place(video_id))
        if not dequantize:
            return data
        return dequantize_flow(data, self.bound) if data.dtype == np.uint8 else data.astype(np.float32)
