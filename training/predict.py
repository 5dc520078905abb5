"""`actrec predict`: classify new videos with a trained model, through the same stages as training data.

Each video is decoded into a temporary frame store with the training frame store's size and frame rate, its flow
is computed with the training flow store's TV-L1 parameters and bound (on the GPU when asked, else OpenCV's CPU
TV-L1), and ``evaluate`` scores it with the test-time protocol; each stage shows its progress bar. Saved fusion
weights (``fit-fusion``) are applied when given; otherwise the model's own fused output is used. What the scores
are depends on that choice (``SCORE_KINDS``): probabilities only where they are. A video that cannot be decoded, or
is too short for flow, is reported under the path it was given and the other videos are still predicted (as the
other stages isolate a bad video). ``--gpu`` without CUDA and a fusion file that does not fit the checkpoint stop
before any work.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.errors import StoreError
from actrec.fusion.model import Fusion, apply_fusion, check_fusion_fits, load_fusion
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.flow import FlowOptions, FlowStore, compute_flow, resolve_device
from actrec.pipeline.frames import ExtractOptions, extract_frames
from actrec.pipeline.stage import Outcome
from actrec.pipeline.store import read_store_meta
from actrec.pipeline.tvl1 import TVL1Params
from actrec.training.checkpoint import load_checkpoint
from actrec.training.evaluate import EvalOptions, evaluate
from actrec.training.models import STREAMS


@dataclass(frozen=True)
class ScoreKind:
    """What predict's scores are: a short name (the JSON's ``score_kind``) and a sentence for the text output."""

    name: str
    meaning: str


PROBABILITY = ScoreKind("probability", "probabilities of the model's own fusion of its streams (they sum to 1 over "
                                       "all classes)")
# Scores under a fusion file, by its method. AWF weighs the streams differently for every class (STILT eq. 9), so
# its scores do not sum to 1 over the classes; they are shown as they are, the numbers the prediction ranks, and
# never rescaled into something that would look like a calibrated probability.
SCORE_KINDS = {
    "awf": ScoreKind("awf fused score", "AWF fused scores (STILT eq. 9): for each class, the mean of the streams' "
                                        "probabilities of that class under that class's weights; each lies in 0..1, "
                                        "but they do not sum to 1 over the classes: not probabilities"),
    "average": ScoreKind("probability", "probabilities: the average of the streams' probabilities (they sum to 1 "
                                        "over all classes)"),
    "global": ScoreKind("probability", "probabilities: the streams' probabilities under one weight per stream "
                                       "(they sum to 1 over all classes)"),
    "early": ScoreKind("svm score", "early-fusion SVM scores (a linear classifier's margins: unbounded, they rank "
                                    "the classes and are not probabilities)"),
}


def score_kind(fusion: Fusion | None) -> ScoreKind:
    """What the scores of a prediction under ``fusion`` (None: the model's own fusion) are."""
    return PROBABILITY if fusion is None else SCORE_KINDS[fusion.method]


@dataclass(frozen=True)
class Prediction:
    """The top classes of one video, best first, with their scores (see ``score_kind``)."""

    video: str
    classes: list[str]
    scores: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"video": self.video, "top": [{"class": c, "score": s} for c, s in zip(self.classes, self.scores)]}


@dataclass(frozen=True)
class Failure:
    """A video that could not be predicted: the path as given, and why."""

    video: str
    reason: str

    def line(self) -> str:
        return f"{self.video}: {self.reason}"


@dataclass
class PredictRun:
    """The predictions of the videos that could be scored, the videos that could not, and what the scores are."""

    predictions: list[Prediction]
    failures: list[Failure]
    kind: ScoreKind

    def as_dict(self) -> dict[str, Any]:
        """The --json document."""
        return {"score_kind": self.kind.name, "predictions": [p.as_dict() for p in self.predictions],
                "failures": [{"video": f.video, "reason": f.reason} for f in self.failures]}


def _store_params(root: str, kind: str) -> dict[str, Any]:
    """The parameters a training store was written with, or {} when it is not reachable from here."""
    try:
        return read_store_meta(root, kind)["params"]
    except StoreError:
        return {}


def stage_options(config: dict[str, Any], device: str) -> tuple[ExtractOptions, FlowOptions]:
    """Frame and flow options that reproduce the training stores (their recorded params), else the defaults."""
    frames = _store_params(config.get("frames", ""), "frames")
    flow = _store_params(config.get("flow", ""), "flow")
    extract = ExtractOptions(resize=ResizeSpec(**frames["resize"]), fps=frames.get("fps")) if frames else ExtractOptions()
    on_gpu = device != "cpu"
    flow_options = FlowOptions(params=TVL1Params(**flow["tvl1"]) if flow.get("tvl1") else TVL1Params(),
                               bound=flow.get("bound", 20.0), step=flow.get("step", 1),
                               backend="torch" if on_gpu else "opencv", device=device)
    return extract, flow_options


def top_k(scores: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[list[str], list[float]]]:
    """The k best classes and their scores for each row of a (N, C) score matrix."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [([classes[j] for j in row], [float(scores[i, j]) for j in row]) for i, row in enumerate(order)]


class _Inputs:
    """The videos as given, under the ids of the temporary stores, and how to name them in messages."""

    def __init__(self, videos: Sequence[str | Path]) -> None:
        self.given = {f"v{i:05d}_{Path(v).stem}": str(v) for i, v in enumerate(videos)}
        self.absolute = {vid: str(Path(v).absolute()) for vid, v in self.given.items()}

    def rows(self) -> list[ManifestRow]:
        """Manifest rows relative to ``/``, so that relative and absolute inputs alike decode from one root."""
        return [ManifestRow(vid, path.lstrip("/"), -1, "", "test") for vid, path in self.absolute.items()]

    def as_given(self, video_id: str, message: str) -> str:
        """A stage's message about a video, naming it by the path the user gave instead of the absolute one."""
        return message.replace(self.absolute[video_id], self.given[video_id])

    def failure(self, outcome: Outcome) -> Failure:
        given = self.given[outcome.video_id]
        reason = self.as_given(outcome.video_id, outcome.message)
        return Failure(given, reason.removeprefix(f"{given}: "))

    def unread(self, video_id: str, lines: Sequence[str]) -> Failure:
        """A video whose stored frames or flow could not be read back for scoring, with evaluate's line about it."""
        reason = next((line for line in lines if video_id in line), "its stored frames or flow could not be read")
        return Failure(self.given[video_id], reason)

    def warning(self, line: str) -> str:
        """A stage's warning line with the video's absolute path replaced by the given one."""
        for video_id, absolute in self.absolute.items():
            if absolute in line:
                return self.as_given(video_id, line)
        return line


def predict_videos(videos: Sequence[str | Path], checkpoint: str | Path, *, fusion: str | Path | None = None,
                   k: int = 5, gpu: bool = False, positions: int = 25, ten_crop: bool = True, progress: bool = False,
                   log: Callable[[str], None] = print) -> PredictRun:
    """Top-k classes of each video. A video that cannot be decoded or is too short for flow is reported in
    ``failures`` under the path it was given and never costs the others. ``--gpu`` without CUDA (DeviceError), a
    checkpoint that does not fit and a fusion file whose streams or classes differ from the checkpoint's
    (InputError naming both files) stop before any video is decoded. ``progress`` shows each stage's bar."""
    device = resolve_device(gpu)
    saved = load_checkpoint(checkpoint)
    fused_by = load_fusion(fusion) if fusion else None
    if fused_by is not None:
        check_fusion_fits(fused_by, STREAMS, list(saved["class_names"]), str(checkpoint), str(fusion))
    extract, flow_options = stage_options(saved["config"], device)
    inputs = _Inputs(videos)
    rows = inputs.rows()
    failures: list[Failure] = []
    with tempfile.TemporaryDirectory(prefix="actrec-predict-") as tmp:
        work = Path(tmp)
        frames = extract_frames(rows, "/", work / "frames", extract, progress=progress,
                                log=lambda line: log(inputs.warning(line)) if line.startswith("warning") else None)
        failures += [inputs.failure(f) for f in frames.failures]
        good = [r for r in rows if r.video_id not in {f.video_id for f in frames.failures}]
        flow = compute_flow(work / "frames", work / "flow", flow_options, video_ids=[r.video_id for r in good],
                            progress=progress, log=lambda _: None) if good else None
        unscored = _without_flow(good, work / "flow", flow.failures if flow else [])
        failures += [Failure(inputs.given[vid], reason) for vid, reason in unscored.items()]
        good = [r for r in good if r.video_id not in unscored]
        if not good:
            return PredictRun([], failures, score_kind(fused_by))
        write_manifest(work / "manifest.csv", good)
        options = EvalOptions(split="test", frames=str(work / "frames"), flow=str(work / "flow"),
                              manifest=str(work / "manifest.csv"), positions=positions, ten_crop=ten_crop,
                              workers=0, gpu=gpu)
        result = evaluate(checkpoint, work / "scores.npz", options, progress=progress, log=lambda _: None)
    scores = result.scores
    failures += [inputs.unread(video_id, result.failures)
                 for video_id in [r.video_id for r in good] if video_id not in set(scores.video_ids)]
    fused = apply_fusion(fused_by, scores, str(checkpoint)) if fused_by is not None else scores.model_fused
    predictions = [Prediction(inputs.given[video_id], names, values)
                   for video_id, (names, values) in zip(scores.video_ids, top_k(fused, scores.class_names, k))]
    return PredictRun(predictions, failures, score_kind(fused_by))


def _without_flow(rows: Sequence[ManifestRow], flow_root: Path, flow_failures: Sequence[Outcome]) -> dict[str, str]:
    """The videos that got no flow (failed, or fewer than two frames), with the reason."""
    out = {f.video_id: f"flow failed ({f.message})" for f in flow_failures}
    if not rows:
        return out
    with FlowStore(flow_root) as store:
        for row in rows:
            if row.video_id not in out and store.num_flows(row.video_id) < 1:
                out[row.video_id] = ("too short for flow (one frame after decoding at the training frame rate; "
                                     "two are needed)")
    return out
