"""``actrec evaluate``: per-video scores of a trained model under the field's test protocol, and their report.

Protocol (TSN's, configurable): ``positions`` (25) uniformly spaced positions per video and either the centre crop
or 10 crops (4 corners + centre, and their mirror images). STILT attends over segments, so one STILT view is one
crop taken at all positions, which are its segments (25 segments instead of training's 3; the co-attention is
defined for any number); a CoT-LSTM view is one crop at one position. Softmax scores are averaged over a video's
views. Views go through the model ``chunk`` at a time, so 25 x 10 views never have to fit in memory at once. The
model runs as in training: on CUDA in its AMP mode and channels_last, on the CPU in full precision (channels_last for
the reduced models, as in training).

Outputs (``OUT`` is the score file's path without ``.npz``):

- ``OUT.npz``: streams ``rgb`` and ``flow`` (each stream's softmax), ``model_fused`` (STILT: the mean of the two
  streams' softmax; CoT-LSTM: the softmax of FC-2), video ids, labels and class names (``actrec.fusion.scores``),
  and with ``features`` each stream's head input averaged over views, for early fusion (STILT: the attended
  2048-d feature of each stream; CoT-LSTM: FC-1's output and the LSTM's last hidden state);
- ``OUT.per_class.csv``: videos and top-1 accuracy per class, for each stream, the model's fusion and ``--fusion``;
- ``OUT.confusion.png``: the confusion matrix of the model's fused prediction over the ``confusion_top`` most
  frequent classes, every other class grouped as "other" (the STILT paper's Fig. 5), rows normalised;
- the accuracies as TensorBoard scalars in the run folder's ``tensorboard/`` when it has one (``monitor.py``).

A video that cannot be read (a damaged frame or flow, a shard that cannot be opened: StoreError) is not scored: it
is listed in ``EvalResult.failures`` (one line naming the video, the entry and the shard) and the others are scored,
as ``predict`` does. The outputs are checked before any work: the score file's folder must be writable, and the
``--fusion`` file must be a valid fusion of this model's streams and classes.
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from actrec.data_manifests.manifest import read_manifest
from actrec.errors import InputError, StoreError
from actrec.fusion.model import EarlyFusion, Fusion, apply_fusion, load_fusion
from actrec.fusion.report import AccuracyRow, accuracy_row, format_table
from actrec.fusion.scores import ScoreSet, check_class_names, save_scores
from actrec.pipeline.flow import resolve_device
from actrec.training.augment import AugmentParams, Box, eval_frames, eval_view, view_boxes
from actrec.training.checkpoint import load_checkpoint
from actrec.training.config import PATH_FIELDS, TrainConfig, run_config
from actrec.training.datasets import ClipSource, EvalVideos
from actrec.training.models import MODEL_SPECS, STREAMS, ModelSpec, build_model, stream_logits, to_channels_last
from actrec.training.monitor import TENSORBOARD, log_evaluation
from actrec.training.trainer import autocast, inference_dtype
from actrec.wording import counted


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how; data paths default to those the model was trained with."""

    split: str = "test"  # manifest split scored ("train" gives fit-fusion's training scores)
    frames: str | None = None  # frame store (default: the training run's)
    flow: str | None = None  # flow store (default: the training run's)
    manifest: str | None = None  # manifest (default: the training run's)
    positions: int = 25  # uniformly spaced test positions per video (TSN: 25)
    ten_crop: bool = False  # 10 crops per position instead of the centre crop
    chunk: int = 10  # views per forward pass
    features: bool = False  # also store each stream's features (early fusion)
    fusion: str | None = None  # fusion JSON (fit-fusion) applied to the scores and reported
    confusion_top: int = 20  # classes shown in the confusion matrix (the rest is "other")
    workers: int = 2  # DataLoader processes reading and decoding videos
    gpu: bool = False  # run on cuda:LOCAL_RANK


@dataclass
class EvalResult:
    """The scores and the accuracy table (rows: streams, model fused, fusion), with the files written."""

    scores: ScoreSet
    rows: list[AccuracyRow]
    table: str
    files: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one line per video that could not be read (not scored)


def evaluate(checkpoint: str | Path, output: str | Path, options: EvalOptions = EvalOptions(), *,
             progress: bool = True, log: Callable[[str], None] = print) -> EvalResult:
    """Score every video of ``options.split`` with the checkpoint's model; write the score file and report.

    Videos that cannot be read are listed in the result's ``failures`` and left out of the scores; StoreError
    when none could be read."""
    output = Path(output)
    check_output(output)
    fusion = load_fusion(options.fusion) if options.fusion else None
    saved = load_checkpoint(checkpoint)
    config = run_config(saved["config"], checkpoint, [name for name in PATH_FIELDS if not getattr(options, name)])
    classes = list(saved["class_names"])
    device = torch.device(resolve_device(options.gpu))
    model = _load_model(config, saved, len(classes), device, str(checkpoint))
    if fusion is not None:
        check_fusion(fusion, str(options.fusion), classes, model, options.features)
    rows = [r for r in read_manifest(options.manifest or config.manifest) if r.split == options.split]
    if not rows:
        raise InputError(f"{options.manifest or config.manifest}: no video in split {options.split!r}")
    too_high = [r.video_id for r in rows if r.label >= len(classes)]
    if too_high:
        raise InputError(f"{options.manifest or config.manifest}: label of {too_high[0]!r} is beyond the model's "
                         f"{len(classes)} classes")
    source = ClipSource(options.frames or config.frames, options.flow or config.flow, rows, config.flow_length)
    scorer = _Scorer(model, MODEL_SPECS[config.model], config, options, device)
    loader = DataLoader(_ReadableVideos(EvalVideos(source, options.positions)), batch_size=None,
                        num_workers=options.workers)
    scored, failures = [], []
    for rgb, flow, index, failure in tqdm(loader, desc=f"evaluate {options.split}", unit="video",
                                          disable=not progress):
        if failure:
            failures.append(failure)
            continue
        scorer.add_video(rgb, flow, source.bound)
        scored.append(rows[index])
    if not scored:
        raise StoreError(f"evaluate: none of the {len(rows)} videos of split {options.split!r} could be read "
                         f"(first: {failures[0]})")
    scores = scorer.score_set([r.video_id for r in scored], np.array([r.label for r in scored]), classes)
    save_scores(output, scores)
    result = _report(scores, options, output, fusion)
    result.files.insert(0, output)
    result.failures = failures
    run_dir = Path(checkpoint).parent
    if log_evaluation(run_dir, int(saved["iteration"]), options.split, result.rows):
        log(f"evaluate: accuracies added to {run_dir / TENSORBOARD} at iteration {saved['iteration']}")
    return result


def check_output(output: Path) -> None:
    """Before any work: the score file ends in .npz and its folder exists (or can be made) and is writable."""
    if output.suffix != ".npz":
        raise InputError(f"{output}: the score file must end in .npz")
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"{folder}: cannot write the score file here ({exc.strerror or exc}); choose another -o") \
            from None


def check_fusion(fusion: Fusion, source: str, classes: list[str], model: nn.Module, features: bool) -> None:
    """Before any work: the fusion was fitted on this model's streams and classes (and, for early fusion, on
    features of this model's sizes, which evaluate then has to store)."""
    if fusion.stream_names != list(STREAMS):
        raise InputError(f"{source}: fusion of streams {fusion.stream_names}, but the model's are {list(STREAMS)}")
    if len(fusion.class_names) != len(classes):
        raise InputError(f"{source}: fusion of {len(fusion.class_names)} classes, but the model has {len(classes)}")
    check_class_names(classes, fusion.class_names, source)
    if isinstance(fusion, EarlyFusion):
        if not features:
            raise InputError(f"{source}: early fusion needs the streams' features: add --features")
        dims = [_input_features(head) for head in (model.spatial_head, model.temporal_head)]
        if None not in dims and dims != fusion.feature_dims:
            raise InputError(f"{source}: early fusion of features of sizes {fusion.feature_dims}, but this model's "
                             f"are {dims}")


def _input_features(head: nn.Module) -> int | None:
    """The feature size a stream head takes (its first linear layer's input), None when it has no linear layer."""
    first = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    return None if first is None else first.in_features


class _ReadableVideos(Dataset):
    """``EvalVideos`` whose items carry a failure line instead of raising when a video cannot be read, so that one
    damaged video costs only itself, in DataLoader workers too: (rgb, flow, index, "") or (None, None, index, line)."""

    def __init__(self, videos: EvalVideos) -> None:
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[Tensor | None, Tensor | None, int, str]:
        try:
            rgb, flow, _ = self.videos[index]
        except StoreError as exc:
            return None, None, index, str(exc)
        return rgb, flow, index, ""


def _load_model(config: TrainConfig, saved: dict, num_classes: int, device: torch.device, source: str) -> nn.Module:
    """The checkpoint's model on ``device`` in eval mode, in the memory format training used there."""
    model = build_model(config, num_classes)
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise InputError(f"{source}: weights do not fit the model its config describes ({exc})") from None
    return to_channels_last(model.to(device), device, config.reduced).eval()


class _Scorer:
    """Runs the views of each video through the model and sums their softmax scores (and features)."""

    def __init__(self, model: nn.Module, spec: ModelSpec, config: TrainConfig, options: EvalOptions,
                 device: torch.device) -> None:
        self.model, self.spec, self.options, self.device = model, spec, options, device
        self.params = AugmentParams(crop=config.crop, resize=config.resize)
        self.amp = inference_dtype(config.amp, device)  # full precision on the CPU, whatever training used
        self.sums: list[list[Tensor]] = []  # per video: rgb, flow, fused (and features)
        self._features: dict[str, Tensor] = {}
        if options.features:
            for stream, head in zip(STREAMS, (model.spatial_head, model.temporal_head)):
                head.register_forward_pre_hook(self._keep_input(stream))

    def _keep_input(self, stream: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            self._features[stream] = inputs[0].float()
        return hook

    def views(self, num_positions: int, height: int, width: int) -> list[tuple[slice, Box, bool]]:
        """(positions, box, flip) of every view: STILT one per crop over all positions, CoT-LSTM one per
        (position, crop)."""
        crops = view_boxes(height, width, self.params.crop, self.options.ten_crop)
        if self.spec.single_position:
            return [(slice(p, p + 1), box, flip) for p in range(num_positions) for box, flip in crops]
        return [(slice(0, num_positions), box, flip) for box, flip in crops]

    @torch.inference_mode()
    def add_video(self, rgb: Tensor, flow: Tensor, bound: float) -> None:
        """Score one video: rgb uint8 [P, 3, H, W], flow [P, L, 2, H, W] as stored."""
        rgb, flow = eval_frames(rgb.to(self.device), flow.to(self.device), bound, self.params,
                                self.spec.square_test_frames)
        views = self.views(len(rgb), *rgb.shape[-2:])
        totals: list[Tensor] = []
        for first in range(0, len(views), self.options.chunk):
            pairs = [eval_view(rgb[where], flow[where], box, flip) for where, box, flip in
                     views[first:first + self.options.chunk]]
            batch_rgb = torch.stack([p[0] for p in pairs])  # (V, n, 3, c, c)
            batch_flow = torch.stack([p[1] for p in pairs])  # (V, n, L, 2, c, c)
            with autocast(self.device, self.amp):
                output = self.model(*self.spec.inputs(batch_rgb, batch_flow))
            parts = [logits.float().softmax(1) for logits in stream_logits(output)] + [self.spec.fused(output)]
            parts += [self._features[s] for s in STREAMS if self.options.features]
            sums = [part.sum(0) for part in parts]
            totals = sums if not totals else [a + b for a, b in zip(totals, sums)]
        self.sums.append([(t / len(views)).cpu() for t in totals])

    def score_set(self, video_ids: list[str], labels: np.ndarray, classes: list[str]) -> ScoreSet:
        columns = [torch.stack(column).numpy() for column in zip(*self.sums)]
        features = dict(zip(STREAMS, columns[3:])) if self.options.features else {}
        return ScoreSet(video_ids=video_ids, labels=labels.astype(np.int64), class_names=classes,
                        stream_names=list(STREAMS), scores=np.stack(columns[:2]), model_fused=columns[2],
                        features=features)


def _report(scores: ScoreSet, options: EvalOptions, output: Path, fusion: Fusion | None) -> EvalResult:
    """Accuracy rows and table; the per-class CSV and confusion PNG when some video is labelled."""
    predictions = {name: scores.scores[n] for n, name in enumerate(scores.stream_names)}
    predictions["model fused"] = scores.model_fused
    if fusion is not None:
        predictions[f"fusion ({fusion.method})"] = apply_fusion(fusion, scores, str(options.fusion))
    labelled = scores.labels >= 0
    classes = counted(scores.num_classes, "class", "classes")
    title = f"{options.split}: {counted(len(scores.video_ids), 'video')}, {classes}, accuracy in %"
    if not labelled.any():
        return EvalResult(scores, [], f"{title}\nno labelled video: accuracy not measured")
    rows = [accuracy_row(name, matrix, scores.labels) for name, matrix in predictions.items()]
    stem = output.with_suffix("")
    per_class, confusion = Path(f"{stem}.per_class.csv"), Path(f"{stem}.confusion.png")
    write_per_class(per_class, scores, predictions)
    top, matrix = grouped_confusion(scores.labels[labelled], scores.model_fused[labelled].argmax(1),
                                    scores.num_classes, options.confusion_top)
    names = [scores.class_names[c] or str(c) for c in top] + (["other"] if len(matrix) > len(top) else [])
    plot_confusion(confusion, matrix, names, f"{options.split}: model fused")
    return EvalResult(scores, rows, format_table(rows, title), [per_class, confusion])


def per_class_accuracy(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy (%) per class over labelled videos; NaN for a class without videos."""
    rows = labels >= 0
    hits = np.bincount(labels[rows], weights=scores[rows].argmax(1) == labels[rows], minlength=num_classes)
    counts = np.bincount(labels[rows], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, 100 * hits / counts, np.nan)


def write_per_class(path: Path, scores: ScoreSet, predictions: dict[str, np.ndarray]) -> None:
    """CSV: class, name, videos, then the top-1 accuracy (%) of each prediction source."""
    counts = np.bincount(scores.labels[scores.labels >= 0], minlength=scores.num_classes)
    accuracy = {name: per_class_accuracy(scores.labels, matrix, scores.num_classes)
                for name, matrix in predictions.items()}
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "name", "videos", *accuracy])
        for c in range(scores.num_classes):
            writer.writerow([c, scores.class_names[c], int(counts[c]),
                             *("" if np.isnan(a[c]) else f"{a[c]:.2f}" for a in accuracy.values())])


def grouped_confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int,
                      top: int) -> tuple[list[int], np.ndarray]:
    """The ``top`` most frequent true classes (ties: lower index) and the row-normalised confusion matrix over
    them plus, when other classes occur, a last "other" row/column gathering every remaining class."""
    counts = np.bincount(labels, minlength=num_classes)
    chosen = [int(c) for c in np.argsort(-counts, kind="stable")[:top] if counts[c] > 0]
    has_other = bool(np.isin(np.concatenate([labels, predicted]), chosen, invert=True).any())
    group = np.full(num_classes, len(chosen), dtype=np.int64)  # class -> row/column; "other" is the last
    group[chosen] = np.arange(len(chosen))
    size = len(chosen) + int(has_other)
    matrix = np.zeros((size, size))
    np.add.at(matrix, (group[labels], group[predicted]), 1)
    totals = matrix.sum(axis=1, keepdims=True)
    return chosen, np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def plot_confusion(path: Path, matrix: np.ndarray, names: list[str], title: str) -> None:
    """Save a row-normalised confusion matrix as a PNG (true class down, predicted class across)."""
    size = len(names)
    figure = Figure(figsize=(3 + 0.35 * size, 2.5 + 0.35 * size), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
    axes.set_xticks(range(size), names, rotation=90, fontsize=7)
    axes.set_yticks(range(size), names, fontsize=7)
    axes.set(xlabel="predicted class", ylabel="true class", title=title)
    figure.colorbar(image, ax=axes, fraction=0.046, label="fraction of the true class")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
