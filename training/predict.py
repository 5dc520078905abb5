"""`actrec predict`: classify new videos with a trained model, through the same stages as training data.

Each video is decoded into a temporary frame store with the training frame store's size and frame rate, its flow
is computed with the training flow store's TV-L1 parameters and bound (on the GPU when asked, else OpenCV's CPU
TV-L1), and ``evaluate`` scores it with the test-time protocol. Saved fusion weights (``fit-fusion``) are applied
when given; otherwise the model's own fused output is used.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.errors import InputError, StoreError
from actrec.fusion.model import apply_fusion, load_fusion
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.flow import FlowOptions, compute_flow
from actrec.pipeline.frames import ExtractOptions, extract_frames
from actrec.pipeline.store import read_store_meta
from actrec.pipeline.tvl1 import TVL1Params
from actrec.training.checkpoint import load_checkpoint
from actrec.training.evaluate import EvalOptions, evaluate


@dataclass(frozen=True)
class Prediction:
    """The top classes of one video, most probable first."""

    video: str
    classes: list[str]
    probabilities: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"video": self.video, "top": [{"class": c, "probability": p}
                                             for c, p in zip(self.classes, self.probabilities)]}


def _store_params(root: str, kind: str) -> dict[str, Any]:
    """The parameters a training store was written with, or {} when it is not reachable from here."""
    try:
        return read_store_meta(root, kind)["params"]
    except StoreError:
        return {}


def stage_options(config: dict[str, Any], gpu: bool) -> tuple[ExtractOptions, FlowOptions]:
    """Frame and flow options that reproduce the training stores (their recorded params), else the defaults."""
    frames = _store_params(config.get("frames", ""), "frames")
    flow = _store_params(config.get("flow", ""), "flow")
    extract = ExtractOptions(resize=ResizeSpec(**frames["resize"]), fps=frames.get("fps")) if frames else ExtractOptions()
    device = "cuda" if gpu else "cpu"
    flow_options = FlowOptions(params=TVL1Params(**flow["tvl1"]) if flow.get("tvl1") else TVL1Params(),
                               bound=flow.get("bound", 20.0), step=flow.get("step", 1),
                               backend="torch" if gpu else "opencv", device=device)
    return extract, flow_options


def top_k(scores: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[list[str], list[float]]]:
    """The k best classes and their probabilities for each row of a (N, C) probability matrix."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [([classes[j] for j in row], [float(scores[i, j]) for j in row]) for i, row in enumerate(order)]


def predict_videos(videos: Sequence[str | Path], checkpoint: str | Path, *, fusion: str | Path | None = None,
                   k: int = 5, gpu: bool = False, positions: int = 25, ten_crop: bool = True,
                   log: Callable[[str], None] = print) -> list[Prediction]:
    """Top-k classes of each video. An unreadable video or a checkpoint that does not fit raises InputError."""
    saved = load_checkpoint(checkpoint)
    extract, flow_options = stage_options(saved["config"], gpu)
    paths = [Path(v).resolve() for v in videos]
    rows = [ManifestRow(f"v{i:05d}_{p.stem}", str(p).lstrip("/"), -1, "", "test") for i, p in enumerate(paths)]
    with tempfile.TemporaryDirectory(prefix="actrec-predict-") as tmp:
        work = Path(tmp)
        frames = extract_frames(rows, "/", work / "frames", extract, progress=False, log=lambda _: None)
        if frames.failed:
            raise InputError(frames.failures[0].message)
        compute_flow(work / "frames", work / "flow", flow_options, progress=False, log=log)
        write_manifest(work / "manifest.csv", rows)
        options = EvalOptions(split="test", frames=str(work / "frames"), flow=str(work / "flow"),
                              manifest=str(work / "manifest.csv"), positions=positions, ten_crop=ten_crop,
                              workers=0, gpu=gpu)
        result = evaluate(checkpoint, work / "scores.npz", options, progress=False, log=lambda _: None)
    scores = result.scores
    probabilities = apply_fusion(load_fusion(fusion), scores) if fusion else scores.model_fused
    return [Prediction(str(video), names, probs)
            for video, (names, probs) in zip(videos, top_k(probabilities, scores.class_names, k))]
