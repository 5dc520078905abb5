"""Accuracy of fused scores (top-1, top-5, mean class accuracy), the comparison table, and the weight plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actrec.fusion.model import LateFusion
from actrec.fusion.scores import PathLike

MAX_TICK_LABELS = 60  # above this many classes the plot drops the class names from the x axis


@dataclass(frozen=True)
class AccuracyRow:
    """One line of the table: a stream or method and its accuracies in percent."""

    name: str
    top1: float
    top5: float
    mean_class: float


def true_class_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of the true class per video (N,), breaking ties like ``argmax`` (lower index first)."""
    true = scores[np.arange(len(labels)), labels][:, None]
    before = np.arange(scores.shape[1])[None, :] < labels[:, None]
    return ((scores > true) | ((scores == true) & before)).sum(axis=1)


def accuracy_row(name: str, scores: np.ndarray, labels: np.ndarray) -> AccuracyRow:
    """Top-1, top-5 and mean per-class top-1 (over classes with a video) of scores (N, C), labelled rows only."""
    rows = labels >= 0
    rank, y = true_class_rank(scores[rows], labels[rows]), labels[rows]
    hit = rank == 0
    per_class = np.bincount(y, weights=hit) / np.maximum(np.bincount(y), 1)
    present = np.bincount(y) > 0
    return AccuracyRow(name, 100 * hit.mean(), 100 * (rank < 5).mean(), 100 * per_class[present].mean())


def format_table(rows: list[AccuracyRow], title: str) -> str:
    """A fixed-width text table: one row per stream or method, columns top-1, top-5, mean class (%)."""
    width = max(len("method"), *(len(r.name) for r in rows))
    lines = [title, f"{'method':<{width}}  {'top-1':>6}  {'top-5':>6}  {'mean class':>10}"]
    lines += [f"{r.name:<{width}}  {r.top1:6.2f}  {r.top5:6.2f}  {r.mean_class:10.2f}" for r in rows]
    return "\n".join(lines)


def plot_weights(path: PathLike, fusion: LateFusion) -> None:
    """Save stacked bars of the per-class stream weights, classes sorted by the second (temporal) stream's weight."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib only where a picture is drawn
    from matplotlib.figure import Figure

    sort_stream = min(1, len(fusion.stream_names) - 1)
    order = np.argsort(fusion.weights[:, sort_stream], kind="stable")
    weights = fusion.weights[order]
    num_classes = len(order)
    figure = Figure(figsize=(min(4 + 0.15 * num_classes, 40), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bottom = np.zeros(num_classes)
    for n, stream in enumerate(fusion.stream_names):
        axes.bar(np.arange(num_classes), weights[:, n], bottom=bottom, width=1.0, label=stream)
        bottom += weights[:, n]
    if num_classes <= MAX_TICK_LABELS:
        names = [fusion.class_names[y] or str(y) for y in order]
        axes.set_xticks(np.arange(num_classes), names, rotation=90, fontsize=7)
    axes.set(xlim=(-0.5, num_classes - 0.5), ylim=(0, 1), ylabel="weight",
             xlabel=f"class (sorted by {fusion.stream_names[sort_stream]} weight)",
             title=f"{fusion.method} per-class stream weights")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
