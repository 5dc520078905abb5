"""Training input pipeline: clips/s per loader core at full size, ours against mmaction2's JPEG-folder pipeline.

Data (real clips, full size): the five 340x256 Kinetics clips of ``../shared/data/videos`` (280-300 frames each)
go through ``extract_frames`` into a JPEG frame store; their flow is OpenCV's Farneback flow of the same frames
(quantised with bound 20 and stored with the default codec, zstd), a stand-in for TV-L1 that would take hours here:
on three of these clips TV-L1 flows compress to 21-41 KB and Farneback's to 14-56 KB (zstd-3, per 340x256 flow).
``export_rawframes`` writes the same frames and flows as mmaction2 folders (``img_00001.jpg``, ``flow_x_00001.jpg``,
``flow_y_00001.jpg``, JPEG quality 95), the reference's input.

- **Ours**: ``actrec.training.feed.train_loader``, the training DataLoader of ``actrec train``, with the recipe's
  sampling and augmentation, as ``--augment-on gpu`` runs it: the loader's uint8 batches, then (with CUDA) their
  copy to the GPU and the batch augmentation there, the batch as it reaches the model. Without a GPU the timing
  stops at the loader's batches, what the GPU would receive (the augmentation costs the GPU, not a loader core).
  Also timed: ``--augment-on cpu``, the same augmentation in the loader processes.
- **Reference**: the same sampling and the same random draws (crop boxes, flips, angles, erased boxes) on the
  rawframe folders, written as mmaction2's default CPU pipeline does it (SampleFrames, RawFrameDecode,
  MultiScaleCrop, Resize, Flip, Normalize, FormatShape): ``cv2.imdecode`` of each file, the crop as a uint8 view,
  ``cv2.resize``, ``cv2.flip`` (flow x inverted), normalised into a preallocated float32 clip, batches stacked by
  the DataLoader's default collate.

STILT: 3 segments of 1 RGB frame + 10 flows, 224 crops (TSN multi-scale crop), batch 8. CoT-LSTM: 1 RGB frame + 10
flows, resize to 256x256, rotation, erasing, 224 crop, flip, batch 8. Each pipeline is timed with 1 and 2 loader
worker processes, alternately, several rounds (the best round counts: on a shared machine the other load only
slows a round down); per core = clips/s / workers. The JSON's headline figures are those of the first worker count
(one worker: one loader core); the GPU consumption estimate gives the loader cores an H100 needs at our rate.

    python benchmarks/bench_loader.py --json loader.json
    python benchmarks/bench_loader.py --codec lz4          # our flow store re-encoded with another codec
    python benchmarks/bench_loader.py --profile stilt      # cProfile of our STILT loader in one process
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from actrec.data_manifests.manifest import ManifestRow, read_manifest, write_manifest
from actrec.models.cotnet import cotnet101
from actrec.models.resnet import resnet50
from actrec.pipeline.flow import COMPRESSIONS, FlowOptions, FlowStore, encode_flow, flow_attrs
from actrec.pipeline.frames import ExtractOptions, FrameStore, extract_frames
from actrec.pipeline.rawframes import MMACTION2, export_rawframes
from actrec.pipeline.store import META_FILE, init_store, seal_shard, write_part
from actrec.training.augment import (IMAGENET_MEAN, IMAGENET_STD, AugmentParams, erase_box, multiscale_crop_box,
                                     random_crop_box, rotation_matrix)
from actrec.training.batch import ClipBatch
from actrec.training.config import TrainConfig, resolve_config
from actrec.training.datasets import ClipSource, rgb_index, segment_starts, stack_indices
from actrec.training.distributed import StreamBatchSampler
from actrec.training.feed import augment_params, train_loader
from actrec.training.models import MODEL_SPECS

SHARED_VIDEOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "videos"
CLIPS = ("kinetics_arm_wrestling", "kinetics_pool_cleaning", "kinetics_clean_and_jerk", "kinetics_skateboarding",
         "kinetics_tai_chi")
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
# GPU consumption, an estimate (not measured here): an H100 trains a ResNet-50 at about 3,000 images/s in bf16; a
# STILT clip is 6 backbone passes (3 segments x 2 streams) -> ~500 clips/s
H100_RESNET50_IMAGES_PER_S = 3000.0
BACKBONES = {"stilt": "resnet50", "cotlstm": "cotnet101"}
BACKBONE_PASSES = {"stilt": 6, "cotlstm": 11}  # STILT: 3 segments x 2 streams; CoT-LSTM: 1 RGB frame + 10 flows


# --- data ---

def write_real_stores(root: Path) -> Path:
    """Frame store, flow store, manifest and rawframe folders of the real clips under ``root``; returns the
    manifest."""
    rows = [ManifestRow(name, f"{name}.mp4", i, name, "train") for i, name in enumerate(CLIPS)]
    write_manifest(root / "manifest.csv", rows)
    extract_frames(rows, SHARED_VIDEOS, root / "frames", ExtractOptions(), progress=False, log=lambda line: None)
    frames = FrameStore(root / "frames")
    options = FlowOptions()
    layout = init_store(root / "flow", "flow", options.store_params(), num_shards=1)
    for row in rows:
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames.read(row.video_id)]
        flow = np.stack([cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(gray, gray[1:])])
        write_part(layout, 0, row.video_id, {"flow": encode_flow(flow, options)},
                   flow_attrs(len(gray), flow, options, flow.shape[1:3]))
    seal_shard(layout, 0)
    export_rawframes(root / "frames", root / "rawframes", root / "flow", progress=False, log=lambda line: None)
    return root / "manifest.csv"


def flow_store(root: Path, codec: str) -> Path:
    """The flow store of the codec (another than the default: the default store's flows, re-encoded, made once)."""
    if codec == FlowOptions.compression:
        return root / "flow"
    out = root / f"flow_{codec}"
    if not (out / META_FILE).exists():
        source = FlowStore(root / "flow")
        options = FlowOptions(compression=codec)
        layout = init_store(out, "flow", options.store_params(), num_shards=1)
        for video_id in source.video_ids:
            write_part(layout, 0, video_id, {"flow": encode_flow(source.read_stack(video_id, 0, source.num_flows(
                video_id)), options)}, source.attrs(video_id))
        seal_shard(layout, 0)
    return out


def bytes_per_flow(store_root: Path) -> int:
    """Compressed bytes per stored flow (all shards over all flows)."""
    store = FlowStore(store_root)
    flows = sum(store.num_flows(video_id) for video_id in store.video_ids)
    return sum(path.stat().st_size for path in store.layout.shard_paths()) // flows


# --- the reference: mmaction2's CPU pipeline on rawframe folders ---

RGB_MEAN = np.array([255 * m for m in IMAGENET_MEAN], np.float32)
RGB_SCALE = np.array([1 / (255 * s) for s in IMAGENET_STD], np.float32)
FLOW_MEAN, FLOW_SCALE = 128.0, 1 / 128.0  # mmaction2's flow normalisation


def imread(path: Path, flags: int) -> np.ndarray:
    """mmaction2's RawFrameDecode: the file's bytes, then cv2.imdecode (BGR -> RGB for colour frames)."""
    image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), flags)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if flags == cv2.IMREAD_COLOR else image


def normalize_into(out: np.ndarray, image: np.ndarray, mean: np.ndarray | float, scale: np.ndarray | float) -> None:
    """(image - mean) * scale as float32 into ``out``: (C, H, W) from uint8 HWC, or (H, W) from HW."""
    if image.ndim == 3:
        image, mean, scale = image.transpose(2, 0, 1), np.reshape(mean, (-1, 1, 1)), np.reshape(scale, (-1, 1, 1))
    np.subtract(image, mean, out=out, dtype=np.float32)
    np.multiply(out, scale, out=out)


class ReferenceClips(Dataset):
    """mmaction2-style training clips from rawframe folders, with the same draws as ours (same rng sequence)."""

    def __init__(self, root: Path, source: ClipSource, config: TrainConfig) -> None:
        self.root, self.source, self.config = root, source, config
        self.params = AugmentParams(crop=config.crop, resize=config.resize, scales=config.scales,
                                    max_distort=config.max_distort, rotation=config.rotation,
                                    erase_prob=config.erase_prob, flip=config.flip)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
        index, position = item
        rng = np.random.default_rng([self.config.seed, position])
        starts = segment_starts(self.source.num_positions(index), self.config.segments, rng)
        row = self.source.rows[index]
        folder = self.root / row.video_id
        num_flows, length = self.source.num_flows(index), self.config.flow_length
        rgb = [imread(folder / MMACTION2.name(MMACTION2.rgb_prefix, rgb_index(int(s), length, num_flows)),
                      cv2.IMREAD_COLOR) for s in starts]
        flows = [[(imread(folder / MMACTION2.name(MMACTION2.flow_x_prefix, int(i)), cv2.IMREAD_GRAYSCALE),
                   imread(folder / MMACTION2.name(MMACTION2.flow_y_prefix, int(i)), cv2.IMREAD_GRAYSCALE))
                  for i in stack_indices(int(s), length, num_flows)] for s in starts]
        augment = tsn_reference if self.config.model == "stilt" else variation_reference
        out_rgb, out_flow = augment(rgb, flows, self.params, rng)
        return out_rgb, out_flow, row.label


def tsn_reference(rgb: list[np.ndarray], flows: list[list[tuple[np.ndarray, np.ndarray]]], params: AugmentParams,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """MultiScaleCrop -> Resize -> Flip -> Normalize -> FormatShape: float32 (n, 3, c, c), (n, L, 2, c, c)."""
    height, width = rgb[0].shape[:2]
    box = multiscale_crop_box(height, width, params.scales, params.max_distort, rng, params.crop)
    flip = rng.random() < 0.5 and params.flip
    size = (params.crop, params.crop)
    out_rgb = np.empty((len(rgb), 3, *size), np.float32)
    out_flow = np.empty((len(flows), len(flows[0]), 2, *size), np.float32)

    def view(image: np.ndarray) -> np.ndarray:
        small = cv2.resize(image[box.y:box.y + box.h, box.x:box.x + box.w], size, interpolation=cv2.INTER_LINEAR)
        return cv2.flip(small, 1) if flip else small

    for i, image in enumerate(rgb):
        normalize_into(out_rgb[i], view(image), RGB_MEAN, RGB_SCALE)
    for i, stack in enumerate(flows):
        for j, (x, y) in enumerate(stack):
            x = view(x)
            normalize_into(out_flow[i, j, 0], 255 - x if flip else x, FLOW_MEAN, FLOW_SCALE)  # mmcv.iminvert
            normalize_into(out_flow[i, j, 1], view(y), FLOW_MEAN, FLOW_SCALE)
    return out_rgb, out_flow


def variation_reference(rgb: list[np.ndarray], flows: list[list[tuple[np.ndarray, np.ndarray]]],
                        params: AugmentParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CoT-LSTM's data variation with cv2: resize, rotate (flow vectors too), erase, crop, flip, normalise."""
    square = (params.resize, params.resize)
    angle = float(rng.uniform(-params.rotation, params.rotation))
    erased = erase_box(*square, params.erase_area, params.erase_aspect, rng) if rng.random() < params.erase_prob \
        else None
    box = random_crop_box(*square, params.crop, rng)
    flip = rng.random() < 0.5 and params.flip
    turn = cv2.getRotationMatrix2D((params.resize / 2, params.resize / 2), angle, 1.0)
    matrix = rotation_matrix(angle).numpy()

    def geometry(image: np.ndarray, fill: float | tuple) -> np.ndarray:
        image = cv2.warpAffine(cv2.resize(image, square, interpolation=cv2.INTER_LINEAR), turn, square,
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if erased is not None:
            image[erased.y:erased.y + erased.h, erased.x:erased.x + erased.w] = fill
        image = image[box.y:box.y + box.h, box.x:box.x + box.w]
        return cv2.flip(image, 1) if flip else image

    size = (params.crop, params.crop)
    out_rgb = np.empty((len(rgb), 3, *size), np.float32)
    out_flow = np.empty((len(flows), len(flows[0]), 2, *size), np.float32)
    for i, image in enumerate(rgb):
        normalize_into(out_rgb[i], geometry(image, tuple(RGB_MEAN.tolist())), RGB_MEAN, RGB_SCALE)
    for i, stack in enumerate(flows):
        for j, (x, y) in enumerate(stack):
            units = (np.dstack([x, y]).astype(np.float32) - FLOW_MEAN) * FLOW_SCALE  # vectors turn: float first
            units = geometry(units, 0.0)
            turned = units @ matrix.T  # (u, v) -> matrix @ (u, v)
            out_flow[i, j, 0] = -turned[..., 0] if flip else turned[..., 0]
            out_flow[i, j, 1] = turned[..., 1]
    return out_rgb, out_flow


def reference_loader(root: Path, source: ClipSource, config: TrainConfig) -> DataLoader:
    sampler = StreamBatchSampler(len(source), config.batch_size, config.seed, rank=0, world_size=1, accumulate=1,
                                 start=0, stop=config.iterations)
    return DataLoader(ReferenceClips(root / "rawframes", source, config), batch_sampler=sampler,
                      num_workers=config.workers, prefetch_factor=4 if config.workers else None)


# --- ours ---

def our_batches(source: ClipSource, config: TrainConfig, augment_in_loader: bool,
                device: torch.device | None) -> Iterator[ClipBatch]:
    """Our batches as they reach the model: ``feed.train_loader``'s, augmented in the loader (``--augment-on
    cpu``), or uint8 and, with a ``device``, copied there and augmented there (the GPU path); without a device the
    GPU path stops at the loader's uint8 batches, what the GPU would receive (the rest runs on the GPU, not on a
    loader core)."""
    spec, params = MODEL_SPECS[config.model], augment_params(config)
    pin = device is not None and device.type == "cuda"
    for batch in train_loader(config, source, pin_memory=pin, augment=augment_in_loader):
        if device is not None:
            batch = batch.to(device, non_blocking=True).augment(spec.augment, source.bound, params)
        batch.release()  # without a device: what the pin thread does once it has copied the batch out
        yield batch


# --- timing ---

def clips_per_s(batches: Iterator, count: int, batch_size: int, device: torch.device | None) -> float:
    """Clips per second over ``count`` batches, after the first (start-up: worker processes, first reads)."""
    next(batches)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return count * batch_size / (time.perf_counter() - start)


def make_config(root: Path, model: str, workers: int, batches: int, codec: str) -> TrainConfig:
    """The recipe of ``model`` at full size (224 crops; STILT 3 segments, CoT-LSTM 1; L = 10), batch 8."""
    return resolve_config(model, overrides=dict(frames=str(root / "frames"), flow=str(flow_store(root, codec)),
                                                manifest=str(root / "manifest.csv"), batch_size=8, workers=workers,
                                                iterations=batches + 1))


def compare(root: Path, model: str, workers: int, batches: int, rounds: int, device: torch.device | None,
            codec: str) -> dict[str, float]:
    """Clips/s per loader core of each pipeline: the best of ``rounds`` rounds, the pipelines taking turns."""
    config = make_config(root, model, workers, batches, codec)
    source = ClipSource(config.frames, config.flow, read_manifest(config.manifest, [config.split]),
                        config.flow_length)
    pipelines = {
        "ours": lambda: our_batches(source, config, False, device),
        "ours_augment_on_cpu": lambda: our_batches(source, config, True, None),
        "jpeg_folders": lambda: iter(reference_loader(root, source, config)),
    }
    best = dict.fromkeys(pipelines, 0.0)
    for _ in range(rounds):
        for name, make in pipelines.items():
            rate = clips_per_s(make(), batches, config.batch_size, device if name == "ours" else None)
            best[name] = max(best[name], rate / max(workers, 1))
    return best


def gpu_clips_per_s(model: str) -> tuple[float, str]:
    """The clips/s one H100 would train, an estimate: ~3,000 ResNet-50 images/s in bf16, scaled by the multiply-adds
    of the model's backbone against ResNet-50's (counted here by torch's FlopCounterMode at 224 x 224), divided by
    the backbone passes of a clip. Also the derivation, as text."""
    macs = {name: backbone_macs(name) for name in {"resnet50", BACKBONES[model]}}
    per_image = H100_RESNET50_IMAGES_PER_S * macs["resnet50"] / macs[BACKBONES[model]]
    rate = per_image / BACKBONE_PASSES[model]
    text = (f"H100 ~{H100_RESNET50_IMAGES_PER_S:.0f} ResNet-50 images/s (bf16)"
            + (f" x {macs['resnet50'] / 1e9:.2f} / {macs[BACKBONES[model]] / 1e9:.2f} GMACs ({BACKBONES[model]})"
               if BACKBONES[model] != "resnet50" else "")
            + f" / {BACKBONE_PASSES[model]} backbone passes per clip = ~{rate:.0f} clips/s")
    return rate, text


def backbone_macs(name: str) -> float:
    """Multiply-adds of one 224 x 224 image through a backbone (counted on the meta device: no computation)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = {"resnet50": resnet50, "cotnet101": cotnet101}[name]().eval()
        image = torch.empty(1, 3, 224, 224)
    with FlopCounterMode(display=False) as counter:
        model(image)
    return counter.get_total_flops() / 2


def profile(root: Path, model: str, clips: int, codec: str) -> None:
    """cProfile of our GPU path's loader in this process (no workers)."""
    config = make_config(root, model, 0, clips // 8, codec)
    source = ClipSource(config.frames, config.flow, read_manifest(config.manifest, [config.split]),
                        config.flow_length)
    batches = our_batches(source, config, False, None)
    next(batches)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(clips // 8 - 1):
        next(batches)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader worker processes")
    parser.add_argument("--batches", type=int, default=12, help="timed batches of 8 clips per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the pipelines taking turns; the best counts")
    parser.add_argument("--models", nargs="+", default=["stilt", "cotlstm"], choices=["stilt", "cotlstm"])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--data", type=Path, help="keep the stores here (made once) instead of a temporary folder")
    parser.add_argument("--profile", choices=["stilt", "cotlstm"], help="only cProfile our loader in one process")
    parser.add_argument("--codec", default=FlowOptions.compression, choices=sorted(COMPRESSIONS),
                        help="our flow store's codec (the same flows re-encoded) [the default, zstd]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cuda") if torch.cuda.is_available() else None
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp)
        if not (root / "manifest.csv").exists():
            root.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            write_real_stores(root)
            print(f"stores and rawframes of {len(CLIPS)} real clips written in {time.perf_counter() - start:.0f} s")
        print(f"flow store (Farneback flow of the real clips, {args.codec}): "
              f"{bytes_per_flow(flow_store(root, args.codec))} bytes per 340x256 flow")
        if args.profile:
            profile(root, args.profile, 64, args.codec)
            return
        ours = (f"the loader, then the copy and the augmentation on {torch.cuda.get_device_name()}" if device else
                "the loader alone (no GPU here: its uint8 batches are what the GPU receives)")
        print(f"ours: {ours}; load average at the start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        results = {model: measure(root, model, args.workers, args.batches, args.rounds, device, args.codec)
                   for model in args.models}
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")


def measure(root: Path, model: str, workers: list[int], batches: int, rounds: int, device: torch.device | None,
            codec: str) -> dict[str, object]:
    """One model's rates at each worker count, printed; the JSON entry (headline: one worker, one core)."""
    per_workers = {}
    for count in workers:
        rates = per_workers[str(count)] = compare(root, model, count, batches, rounds, device, codec)
        print(f"{model}, {count} worker{'s' if count > 1 else ''}: clips/s per loader core: ours "
              f"{rates['ours']:.1f} (--augment-on cpu {rates['ours_augment_on_cpu']:.1f}), JPEG folders "
              f"{rates['jpeg_folders']:.1f}; ours / JPEG folders {rates['ours'] / rates['jpeg_folders']:.2f}x",
              flush=True)
    headline = per_workers[str(workers[0])]
    gpu_rate, derivation = gpu_clips_per_s(model)
    cores = gpu_rate / headline["ours"]
    print(f"  GPU consumption (estimate): {derivation}; at our rate that needs {cores:.1f} loader cores per H100 "
          f"(the JPEG-folder pipeline: {gpu_rate / headline['jpeg_folders']:.1f})")
    return {"ours_clips_per_s_per_core": headline["ours"],
            "jpeg_folders_clips_per_s_per_core": headline["jpeg_folders"],
            "ours_augment_on_cpu_clips_per_s_per_core": headline["ours_augment_on_cpu"],
            "ratio": headline["ours"] / headline["jpeg_folders"], "workers": workers[0],
            "per_workers": per_workers, "gpu_clips_per_s_estimate": gpu_rate, "gpu_estimate": derivation,
            "loader_cores_per_h100": cores, "ours_on": "gpu" if device else "loader only (no GPU)",
            "flow_codec": codec}


if __name__ == "__main__":
    main()
