"""`actrec predict`: classify new videos with a trained model, through the same stages as training data.

Each video is decoded into a temporary frame store with the training frame store's size and frame rate, its flow
is computed with the training flow store's TV-L1 parameters and bound (on the GPU when asked, else OpenCV's CPU
TV-L1), and ``evaluate`` scores it with the test-time protocol. Saved fusion weights (``fit-fusion``) are applied
when given; otherwise the model's own fused output is used. A video that cannot be decoded, or is too short for
flow, is reported under its own path and the other videos are still predicted (as the other stages isolate a bad
video).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.errors import StoreError
from actrec.fusion.model import apply_fusion, load_fusion
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.flow import FlowOptions, FlowStore, compute_flow
from actrec.pipeline.frames import ExtractOptions, extract_frames
from actrec.pipeline.stage import Outcome
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


@dataclass
class PredictRun:
    """The predictions of the videos that could be scored, and one line per video that could not."""

    predictions: list[Prediction]
    failures: list[str]


def predict_videos(videos: Sequence[str | Path], checkpoint: str | Path, *, fusion: str | Path | None = None,
                   k: int = 5, gpu: bool = False, positions: int = 25, ten_crop: bool = True,
                   log: Callable[[str], None] = print) -> PredictRun:
    """Top-k classes of each video. A video that cannot be decoded or is too short for flow is reported in
    ``failures`` under its own path and never costs the others; a checkpoint that does not fit raises InputError."""
    saved = load_checkpoint(checkpoint)
    extract, flow_options = stage_options(saved["config"], gpu)
    inputs = {f"v{i:05d}_{Path(v).stem}": str(v) for i, v in enumerate(videos)}
    rows = [ManifestRow(vid, str(Path(v).absolute()).lstrip("/"), -1, "", "test") for vid, v in inputs.items()]
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="actrec-predict-") as tmp:
        work = Path(tmp)
        frames = extract_frames(rows, "/", work / "frames", extract, progress=False,
                                log=lambda line: log(line) if line.startswith("warning") else None)
        failures += [f.message for f in frames.failures]
        good = [r for r in rows if r.video_id not in {f.video_id for f in frames.failures}]
        flow = compute_flow(work / "frames", work / "flow", flow_options, video_ids=[r.video_id for r in good],
                            progress=False, log=lambda _: None) if good else None
        unscored = _without_flow(good, work / "flow", inputs, flow.failures if flow else [])
        failures += unscored.values()
        good = [r for r in good if r.video_id not in unscored]
        if not good:
            return PredictRun([], failures)
        write_manifest(work / "manifest.csv", good)
        options = EvalOptions(split="test", frames=str(work / "frames"), flow=str(work / "flow"),
                              manifest=str(work / "manifest.csv"), positions=positions, ten_crop=ten_crop,
                              workers=0, gpu=gpu)
        result = evaluate(checkpoint, work / "scores.npz", options, progress=False, log=lambda _: None)
    scores = result.scores
    failures += result.failures
    probabilities = apply_fusion(load_fusion(fusion), scores) if fusion else scores.model_fused
    predictions = [Prediction(inputs[video_id], names, probs)
                   for video_id, (names, probs) in zip(scores.video_ids, top_k(probabilities, scores.class_names, k))]
    return PredictRun(predictions, failures)


def _without_flow(rows: Sequence[ManifestRow], flow_root: Path, inputs: dict[str, str],
                  flow_failures: Sequence[Outcome]) -> dict[str, str]:
    """The videos that got no flow (failed, or fewer than two frames), with a line naming the input file."""
    out = {f.video_id: f"{inputs[f.video_id]}: flow failed ({f.message})" for f in flow_failures}
    if not rows:
        return out
    with FlowStore(flow_root) as store:
        for row in rows:
            if row.video_id not in out and store.num_flows(row.video_id) < 1:
                out[row.video_id] = (f"{inputs[row.video_id]}: too short for flow (one frame after decoding at "
                                     "the training frame rate; two are needed)")
    return out
