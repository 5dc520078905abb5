"""Tiny frame/flow stores and manifests for the training tests, written with the store API in well under a second.

Imported by the training test modules through ``load_fixtures()`` (pytest runs with --import-mode=importlib and
``tests/`` is not a package). The learnable problem: each class has its own colour (appearance) and its own uniform
motion direction (flow), plus noise, so both streams can learn it in a few iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.pipeline.flowio import quantize_flow
from actrec.pipeline.store import Dataset, init_store, seal_shard, write_part

BOUND = 20.0
CLASS_COLOURS = ((220, 40, 40), (40, 200, 60), (50, 70, 230), (200, 200, 40))
CLASS_MOTIONS = ((4.0, 0.0), (-4.0, 0.0), (0.0, 4.0), (0.0, -4.0))  # pixels per frame (x, y)


@dataclass(frozen=True)
class TinyData:
    """Paths of a generated dataset."""

    frames: Path
    flow: Path
    manifest: Path
    num_classes: int


def write_frame_store(root: Path, videos: dict[str, np.ndarray]) -> Path:
    """A raw-encoded frame store of uint8 RGB videos (N, H, W, 3)."""
    layout = init_store(root, "frames", {"encoding": "raw"}, num_shards=1)
    for video_id, frames in videos.items():
        attrs = {"num_frames": len(frames), "height": frames.shape[1], "width": frames.shape[2], "fps": 25.0,
                 "encoding": "raw"}
        write_part(layout, 0, video_id, {"frames": Dataset(frames, chunks=(1, *frames.shape[1:]))}, attrs)
    seal_shard(layout, 0)
    return root


def write_flow_store(root: Path, flows: dict[str, np.ndarray], bound: float = BOUND) -> Path:
    """A uint8 flow store of float flows (F, H, W, 2) in pixels, quantised with ``bound``."""
    layout = init_store(root, "flow", {"bound": bound, "step": 1, "dtype": "uint8"}, num_shards=1)
    for video_id, flow in flows.items():
        attrs = {"num_flows": len(flow), "num_frames": len(flow) + 1, "height": flow.shape[1],
                 "width": flow.shape[2], "step": 1, "bound": bound, "dtype": "uint8"}
        write_part(layout, 0, video_id, {"flow": Dataset(quantize_flow(flow, bound))}, attrs)
    seal_shard(layout, 0)
    return root


def learnable_dataset(root: Path, *, classes: int = 3, train_per_class: int = 4, test_per_class: int = 2,
                      frames: int = 8, size: int = 40, seed: int = 0) -> TinyData:
    """Videos whose class shows both in colour and in motion direction; train and test splits."""
    rng = np.random.default_rng(seed)
    videos, flows, rows = {}, {}, []
    for label in range(classes):
        for index in range(train_per_class + test_per_class):
            video_id = f"c{label}_v{index}"
            colour = np.array(CLASS_COLOURS[label], dtype=np.float32)
            noise = rng.normal(0, 12, size=(frames, size, size, 3))
            videos[video_id] = np.clip(colour + noise, 0, 255).astype(np.uint8)
            motion = np.array(CLASS_MOTIONS[label], dtype=np.float32)
            flows[video_id] = (motion + rng.normal(0, 0.5, size=(frames - 1, size, size, 2))).astype(np.float32)
            split = "train" if index < train_per_class else "test"
            rows.append(ManifestRow(video_id, f"{video_id}.mp4", label, f"class_{label}", split))
    manifest = root / "manifest.csv"
    write_manifest(manifest, rows)
    return TinyData(write_frame_store(root / "frames", videos), write_flow_store(root / "flow", flows), manifest,
                    classes)


def indexed_dataset(root: Path, num_frames: dict[str, int], size: int = 8) -> TinyData:
    """Videos whose frame i is filled with the value i and whose flow i is the uniform field (i, -i) pixels,
    for checking index alignment; every video in the train split, class 0."""
    videos = {vid: np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], size * size * 3).reshape(
        n, size, size, 3) for vid, n in num_frames.items()}
    flows = {vid: np.stack([np.full((size, size, 2), (i, -i), np.float32) for i in range(n - 1)])
             for vid, n in num_frames.items()}
    manifest = root / "manifest.csv"
    write_manifest(manifest, [ManifestRow(vid, f"{vid}.mp4", 0, "only", "train") for vid in num_frames])
    return TinyData(write_frame_store(root / "frames", videos), write_flow_store(root / "flow", flows), manifest, 1)


def tiny_overrides(data: TinyData, model: str = "stilt", **changes: object) -> dict:
    """TrainConfig overrides for a CPU test run: reduced model, 32-px crops, short stacks, tiny batches."""
    values = dict(frames=str(data.frames), flow=str(data.flow), manifest=str(data.manifest), reduced=True, width=8,
                  crop=32, resize=36, segments=2 if model == "stilt" else 1, flow_length=3, batch_size=4,
                  iterations=4, lr=0.02, lr_step=1000, workers=0, log_every=1, checkpoint_every=1000, dropout=0.0)
    values.update(changes)
    return values


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run a module's tiny test models on one intra-op thread, then restore the count (autouse in every module that
    imports it). They gain nothing from a second thread, and on a shared machine its spin-waiting made them up to
    20x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
