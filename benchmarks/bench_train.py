"""Benchmark training throughput: our loader and training loop against compute-only references, in one run.

Generated stores (JPEG frames, gzip'd uint8 flow, as ``extract-frames`` / ``compute-flow`` write them) feed:

  1. loader: clips/s of the training DataLoader alone (read, decode, augment, collate), ``--workers`` processes;
  2. train: ``actrec.training.trainer.train`` end to end (clips/s and the fraction of time waiting for data),
     against the reference: the same model and optimiser stepping on one batch already in memory (compute only).
     The ratio ours / reference is the share of the compute-bound speed that our data pipeline keeps;
  3. with ``--gpu`` (CUDA): STILT (ResNet-50 x 2, 3 segments, L = 10, 224 crops) with bf16 AMP and channels_last
     against a plain ResNet-50 trained on the same number of 224x224 images per step (2 x clips x segments), the
     ratio of images per second (goal: STILT >= 0.8x); and part 2 at full size (340x256 JPEG frames, 224 crops,
     ``--gpu-workers`` loader processes, 8 by default, the augmentation on the GPU: ``--augment-on auto``) reports
     the GPU busy fraction (1 - data wait; goal >= 90%).

    python benchmarks/bench_train.py                         # CPU, reduced STILT, 112 crops
    python benchmarks/bench_train.py --gpu                   # plus the GPU comparisons (8 loader workers)
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from actrec.data_manifests.manifest import ManifestRow, read_manifest, write_manifest
from actrec.models.resnet import resnet50
from actrec.pipeline.flow import FlowOptions, encode_flow
from actrec.pipeline.store import Dataset, init_store, seal_shard, write_part
from actrec.training.config import TrainConfig, resolve_config
from actrec.training.datasets import ClipSource
from actrec.training.models import MODEL_SPECS, build_model, to_channels_last
from actrec.training.feed import train_loader
from actrec.training.trainer import amp_dtype, autocast, train


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: int) -> np.ndarray:
    """Low-frequency random pictures (compress like video frames, unlike white noise), values in 0..1."""
    small = rng.random((shape[0], shape[1] // cell + 1, shape[2] // cell + 1, shape[3]), dtype=np.float32)
    return np.stack([cv2.resize(s, (shape[2], shape[1]), interpolation=cv2.INTER_CUBIC) for s in small]).reshape(shape)


def write_stores(root: Path, videos: int, frames: int, width: int, height: int, classes: int = 10) -> Path:
    """A frame store (JPEG), a uint8 flow store and a manifest under ``root``; returns the manifest."""
    rng = np.random.default_rng(0)
    frame_layout = init_store(root / "frames", "frames", {"encoding": "jpeg"}, num_shards=1)
    options = FlowOptions(compression="gzip")  # HDF5's own codec: no hdf5plugin needed (the GPU image has none)
    flow_layout = init_store(root / "flow", "flow", options.store_params(), num_shards=1)
    rows = []
    for v in range(videos):
        video_id = f"video_{v:03d}"
        rgb = (255 * smooth_noise(rng, (frames, height, width, 3), 16)).astype(np.uint8)
        jpegs = [np.frombuffer(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1], np.uint8) for f in rgb]
        write_part(frame_layout, 0, video_id, {"frames": Dataset(jpegs)},
                   {"num_frames": frames, "height": height, "width": width, "encoding": "jpeg"})
        flow = 8 * (smooth_noise(rng, (frames - 1, height, width, 2), 32) - 0.5)
        write_part(flow_layout, 0, video_id, {"flow": encode_flow(flow, options)},
                   {"num_flows": frames - 1, "num_frames": frames, "height": height, "width": width,
                    "bound": options.bound, "step": 1, "dtype": "uint8"})
        rows.append(ManifestRow(video_id, f"{video_id}.mp4", v % classes, f"class_{v % classes}", "train"))
    seal_shard(frame_layout, 0)
    seal_shard(flow_layout, 0)
    write_manifest(root / "manifest.csv", rows)
    return root / "manifest.csv"


def loader_rate(config: TrainConfig, batches: int) -> float:
    """Clips per second of the training DataLoader alone (after its first batch)."""
    source = ClipSource(config.frames, config.flow, read_manifest(config.manifest, [config.split]),
                        config.flow_length)
    loader = iter(train_loader(replace(config, iterations=batches + 1), source))
    next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * config.batch_size / (time.perf_counter() - start)


def train_rate(config: TrainConfig, run_dir: Path, gpu: bool) -> tuple[float, float, float]:
    """Our training loop end to end, over its ``log_every``-iteration windows after the first (start-up):
    (best window's clips/s, mean clips/s, mean data-wait fraction)."""
    train(config, run_dir, gpu=gpu, progress=False)
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))[1:]
    rates = [float(r["clips_per_s"]) for r in rows]
    return max(rates), float(np.mean(rates)), float(np.mean([float(r["data_wait"]) for r in rows]))


def compute_rate(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor,
                 loss_fn, steps: int, device: torch.device, amp: torch.dtype | None, windows: int = 3) -> float:
    """Training steps per second of ``model`` on one batch kept in memory (no data loading): the best of
    ``windows`` windows of ``steps`` steps, after one warm-up step."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with autocast(device, amp):
            loss = loss_fn(model(*inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    _sync(device)
    best = 0.0
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        best = max(best, steps / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(config: TrainConfig, classes: int, device: torch.device) -> tuple[tuple, torch.Tensor]:
    """A training batch of the dataset layout, turned into the model's inputs, on ``device``."""
    n, L, c, b = config.segments, config.flow_length, config.crop, config.batch_size
    rgb, flow = torch.randn(b, n, 3, c, c), torch.randn(b, n, L, 2, c, c)
    inputs = tuple(t.to(device) for t in MODEL_SPECS[config.model].inputs(rgb, flow))
    return inputs, torch.randint(classes, (b,), device=device)


def reference_rate(config: TrainConfig, classes: int, device: torch.device) -> float:
    """The compute-only reference for ``config``: clips per second."""
    torch.manual_seed(0)
    model = to_channels_last(build_model(config, classes), device, config.reduced)
    inputs, labels = synthetic_batch(config, classes, device)
    steps = compute_rate(model, inputs, labels, MODEL_SPECS[config.model].loss, 5, device,
                         amp_dtype(config.amp, device))
    return steps * config.batch_size


def gpu_comparison(config: TrainConfig, classes: int) -> tuple[float, float]:
    """Images/s of full-size STILT (AMP) and of a plain ResNet-50 on as many 224x224 images per step."""
    device = torch.device("cuda")
    amp = amp_dtype("bf16", device)
    stilt = reference_rate(config, classes, device) * 2 * config.segments  # clips/s -> images/s
    images = 2 * config.segments * config.batch_size
    plain = to_channels_last(resnet50(num_classes=classes), device, reduced=False)
    x = torch.randn(images, 3, config.crop, config.crop, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(classes, (images,), device=device)
    steps = compute_rate(plain, (x,), labels, torch.nn.functional.cross_entropy, 5, device, amp)
    return stilt, steps * images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes")
    parser.add_argument("--iterations", type=int, default=30, help="training iterations per measured run")
    parser.add_argument("--gpu", action="store_true", help="also run the CUDA comparisons")
    parser.add_argument("--gpu-workers", type=int, default=8, help="DataLoader processes of the full-size GPU run")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--tiny", action="store_true",
                        help="dry-run sizes for the CPU part (6 videos of 12 frames at 48x40, 32 px crops, batch 2)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    videos, frames, width, height, crop, batch = (6, 12, 48, 40, 32, 2) if args.tiny else (24, 24, 150, 112, 112, 8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cpu_manifest = write_stores(root / "cpu", videos=videos, frames=frames, width=width, height=height)
        base = dict(frames=str(root / "cpu" / "frames"), flow=str(root / "cpu" / "flow"),
                    manifest=str(cpu_manifest), reduced=True, crop=crop, resize=crop, batch_size=batch,
                    iterations=args.iterations, workers=args.workers, log_every=5, checkpoint_every=10**6)
        config = resolve_config("stilt", overrides=base)
        print(f"CPU, reduced STILT (width 8, 3 segments, L=10, {crop}x{crop} crops from {width}x{height} JPEG frames), "
              f"batch {batch}, {args.workers} loader workers, {torch.get_num_threads()} torch threads")
        print(f"  loader alone: {loader_rate(config, 10):.1f} clips/s")
        best, mean, wait = train_rate(config, root / "run_cpu", gpu=False)
        reference = reference_rate(config, 10, torch.device("cpu"))
        print(f"  train (ours, end to end): best 5-iteration window {best:.1f} clips/s (mean {mean:.1f}), "
              f"data wait {100 * wait:.1f}% of the time")
        print(f"  reference (same steps, batch in memory, best 5-step window): {reference:.1f} clips/s; "
              f"ours / reference = {best / reference:.2f}x")
        if not args.gpu:
            return
        if not torch.cuda.is_available():
            print("--gpu: CUDA is not available, GPU comparisons skipped")
            return
        full = resolve_config("stilt", overrides={**base, "reduced": False, "crop": 224, "resize": 256,
                                                  "batch_size": 32, "amp": "bf16"})
        stilt, plain = gpu_comparison(full, 101)
        print(f"GPU {torch.cuda.get_device_name()}: STILT bf16 {stilt:.0f} images/s, plain ResNet-50 bf16 "
              f"{plain:.0f} images/s; STILT / ResNet-50 = {stilt / plain:.2f}x (goal >= 0.8)")
        gpu_manifest = write_stores(root / "gpu", videos=64, frames=40, width=340, height=256)
        gpu_config = resolve_config("stilt", overrides={**base, "frames": str(root / "gpu" / "frames"),
                                                        "flow": str(root / "gpu" / "flow"),
                                                        "manifest": str(gpu_manifest), "reduced": False, "crop": 224,
                                                        "resize": 256, "batch_size": 32, "amp": "bf16",
                                                        "workers": args.gpu_workers})
        _, clips, wait = train_rate(gpu_config, root / "run_gpu", gpu=True)
        print(f"  train (ours, end to end, 340x256 JPEG, {args.gpu_workers} loader workers, augmentation on the "
              f"GPU): {clips:.1f} clips/s, GPU busy {100 * (1 - wait):.1f}% (goal >= 90%)")


if __name__ == "__main__":
    main()
