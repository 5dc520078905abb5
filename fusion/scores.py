"""Per-stream score files: the input of every fusion method.

The actrec format is one ``.npz`` (loadable with ``np.load(allow_pickle=False)``) holding named arrays:

- ``format`` = ``"actrec-scores"`` and ``format_version`` = 1 (0-d arrays);
- ``video_ids`` (N,) unicode, ``labels`` (N,) int64 with -1 for unknown, ``class_names`` (C,) unicode (``""`` where
  unknown), ``stream_names`` (S,) unicode;
- ``scores`` (S, N, C) float32: per-stream softmax probabilities;
- optional ``model_fused`` (N, C) float32: the model's own fused output;
- optional ``features.<stream>`` (N, D) float32: per-stream features for early fusion.

Score matrices from other toolkits are plain ``.npy`` arrays, (N, C) for one stream or (S, N, C) for several, read
with a video-id list (one id per line) and labels from an actrec manifest CSV or an int ``.npy``.

Scores are probabilities: every row must sum to 1 within ``ROW_SUM_TOLERANCE`` (loose enough for float16 files,
tight enough to refuse logits or scaled scores). Logits from another toolkit (e.g. mmaction2's
``average_clips='score'``) are read with ``logits=True``, which applies a softmax to each row first.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from actrec.data_manifests.manifest import class_names as manifest_class_names
from actrec.data_manifests.manifest import read_manifest
from actrec.errors import InputError

FORMAT = "actrec-scores"
FORMAT_VERSION = 1
STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
ROW_SUM_TOLERANCE = 1e-2
PathLike = str | Path


class FusionWarning(UserWarning):
    """Fusion went on with a fallback the user should know about (a class with no training video, shared ids)."""


@dataclass(frozen=True, eq=False)
class ScoreSet:
    """Per-stream class scores for N videos: the training or test side of a fusion.

    ``scores`` is float32 (S, N, C): ``scores[n, x, y]`` is stream n's softmax probability of class y for video x.
    ``labels`` is int64 (N,), -1 where unknown. ``model_fused`` is the model's own fused output (N, C), if any;
    ``features`` maps a stream name to its (N, D) float32 features, used by early fusion.
    """

    video_ids: list[str]
    labels: np.ndarray
    class_names: list[str]
    stream_names: list[str]
    scores: np.ndarray
    model_fused: np.ndarray | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class ScoreSource:
    """Where a ScoreSet comes from: the arguments of ``load_scores``, kept together for the CLI."""

    paths: tuple[PathLike, ...]
    video_ids: PathLike | None = None  # id list for .npy inputs, one id per line
    labels: PathLike | None = None  # manifest .csv or labels .npy for .npy inputs
    stream_names: tuple[str, ...] | None = None  # names of the stacked .npy streams
    logits: bool = False  # the .npy scores are logits: softmax them

    @property
    def name(self) -> str:
        """How messages name this source."""
        return ", ".join(map(str, self.paths))

    def load(self) -> ScoreSet:
        return load_scores(self.paths, self.video_ids, self.labels, self.stream_names, self.logits)


def validate_scores(s: ScoreSet, source: str) -> None:
    """Check shapes, ids, labels and values; raise InputError naming ``source`` and the first problem found."""
    if s.scores.ndim != 3:
        raise InputError(f"{source}: scores must be (streams, videos, classes), found shape {s.scores.shape}")
    num_streams, num_videos, num_classes = s.scores.shape
    _expect(source, "stream names", len(s.stream_names), num_streams)
    _expect(source, "video ids", len(s.video_ids), num_videos)
    _expect(source, "labels", len(s.labels), num_videos)
    _expect(source, "class names", len(s.class_names), num_classes)
    bad_names = [n for n in s.stream_names if not STREAM_NAME.match(n)]
    if bad_names or len(set(s.stream_names)) != num_streams:
        raise InputError(f"{source}: stream names must be unique and made of letters, digits, '_' or '-', "
                         f"found {s.stream_names}")
    _check_unique_ids(source, s.video_ids)
    if len(s.labels) and (s.labels.min() < -1 or s.labels.max() >= num_classes):
        raise InputError(f"{source}: labels must lie in -1..{num_classes - 1}, "
                         f"found {s.labels.min()}..{s.labels.max()}")
    for name, matrix in zip(s.stream_names, s.scores):
        _check_probabilities(source, f"stream {name!r}", matrix)
    if s.model_fused is not None:
        _expect(source, "model_fused rows x classes", s.model_fused.shape, (num_videos, num_classes))
        _check_probabilities(source, "model_fused", s.model_fused)
    for name, feats in s.features.items():
        if name not in s.stream_names:
            raise InputError(f"{source}: features for unknown stream {name!r} (streams: {s.stream_names})")
        if feats.ndim != 2 or feats.shape[0] != num_videos:
            raise InputError(f"{source}: features of stream {name!r} must be ({num_videos}, D), found {feats.shape}")
        if not np.isfinite(feats).all():
            raise InputError(f"{source}: features of stream {name!r} contain NaN or infinite values")


def _expect(source: str, what: str, found: object, expected: object) -> None:
    if found != expected:
        raise InputError(f"{source}: {what} disagree with the score matrix: expected {expected}, found {found}")


def _check_unique_ids(source: str, video_ids: Sequence[str]) -> None:
    counts = Counter(video_ids)
    if len(counts) != len(video_ids):
        duplicate = next(v for v, n in counts.items() if n > 1)
        raise InputError(f"{source}: duplicate video id {duplicate!r}")


def _check_probabilities(source: str, what: str, matrix: np.ndarray) -> None:
    if not np.isfinite(matrix).all():
        raise InputError(f"{source}: {what} contains NaN or infinite scores")
    hint = "expected softmax probabilities (for logits from another toolkit, pass --logits)"
    if matrix.size and matrix.min() < 0:
        raise InputError(f"{source}: {what} contains negative scores (min {matrix.min():.4g}); {hint}")
    sums = matrix.sum(axis=1, dtype=np.float64)
    off = np.flatnonzero(np.abs(sums - 1) > ROW_SUM_TOLERANCE)
    if off.size:
        raise InputError(f"{source}: {what}: {off.size} of {len(sums)} rows do not sum to 1 (row {off[0]} sums to "
                         f"{sums[off[0]]:.6g}); {hint}")


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (classes), computed stably in float64, returned as float32."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def check_compatible(train: ScoreSet, test: ScoreSet, train_source: str, test_source: str) -> None:
    """Train and test must share stream names (in order) and the class count; raise InputError otherwise."""
    if train.stream_names != test.stream_names:
        raise InputError(f"{test_source}: streams {test.stream_names} differ from {train_source}'s "
                         f"{train.stream_names}")
    if train.num_classes != test.num_classes:
        raise InputError(f"{test_source}: {test.num_classes} classes but {train_source} has {train.num_classes}")
    check_class_names(train.class_names, test.class_names, test_source)
    shared = set(train.video_ids) & set(test.video_ids)
    if shared:
        warnings.warn(f"{test_source}: {len(shared)} video ids also appear in {train_source}, "
                      f"e.g. {min(shared)!r}", FusionWarning, stacklevel=2)


def check_class_names(expected: Sequence[str], found: Sequence[str], source: str) -> None:
    """Class names must agree wherever both sides know them (``""`` means unknown)."""
    for index, (a, b) in enumerate(zip(expected, found)):
        if a and b and a != b:
            raise InputError(f"{source}: class {index} is named {b!r}, expected {a!r}")


def save_scores(path: PathLike, s: ScoreSet) -> None:
    """Write a ScoreSet as an actrec ``.npz`` (validated first; written atomically via a temporary file)."""
    path = Path(path)
    validate_scores(s, str(path))
    arrays = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION),
        "video_ids": np.array(s.video_ids, dtype=np.str_),
        "labels": np.asarray(s.labels, dtype=np.int64),
        "class_names": np.array(s.class_names, dtype=np.str_),
        "stream_names": np.array(s.stream_names, dtype=np.str_),
        "scores": np.asarray(s.scores, dtype=np.float32),
    }
    if s.model_fused is not None:
        arrays["model_fused"] = np.asarray(s.model_fused, dtype=np.float32)
    for name, feats in s.features.items():
        arrays[f"features.{name}"] = np.asarray(feats, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_scores(path: PathLike | Sequence[PathLike], video_ids_path: PathLike | None = None,
                labels_path: PathLike | None = None, stream_names: Sequence[str] | None = None,
                logits: bool = False) -> ScoreSet:
    """Read an actrec ``.npz``, or one or more ``.npy`` score matrices stacked as streams.

    ``.npy`` inputs need ``video_ids_path`` (one id per line) and may take ``labels_path``: an actrec manifest CSV
    (labels and class names looked up by video id) or an int ``.npy`` of labels; without it labels are -1.
    ``stream_names`` renames the stacked streams (default: the file stem, suffixed ``_i`` for (S, N, C) files).
    ``logits``: the ``.npy`` matrices hold logits, turned into probabilities by a softmax per row.
    """
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise InputError("no score file given")
    if all(p.suffix == ".npz" for p in paths):
        if len(paths) > 1 or video_ids_path or labels_path or stream_names or logits:
            raise InputError(f"{paths[0]}: an actrec .npz carries its own streams, ids, labels and probabilities; "
                             "give exactly one and no id list, labels, stream names or --logits")
        return _load_npz(paths[0])
    if not all(p.suffix == ".npy" for p in paths):
        raise InputError(f"{', '.join(map(str, paths))}: expected one actrec .npz or one or more .npy matrices")
    return _load_npy(paths, video_ids_path, labels_path, stream_names, logits)


def _load_npz(path: Path) -> ScoreSet:
    if not path.is_file():
        raise InputError(f"{path}: score file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz ({exc})") from None
    if str(arrays.get("format", "")) != FORMAT:
        raise InputError(f"{path}: not an actrec score file (format {arrays.get('format')!s}, expected {FORMAT})")
    if int(arrays.get("format_version", -1)) != FORMAT_VERSION:
        raise InputError(f"{path}: score format version {arrays.get('format_version')} is not {FORMAT_VERSION}")
    missing = {"video_ids", "labels", "class_names", "stream_names", "scores"} - arrays.keys()
    if missing:
        raise InputError(f"{path}: missing arrays {sorted(missing)}")
    s = ScoreSet(
        video_ids=[str(v) for v in arrays["video_ids"]],
        labels=arrays["labels"].astype(np.int64),
        class_names=[str(c) for c in arrays["class_names"]],
        stream_names=[str(n) for n in arrays["stream_names"]],
        scores=arrays["scores"].astype(np.float32, copy=False),
        model_fused=arrays["model_fused"].astype(np.float32) if "model_fused" in arrays else None,
        features={key.removeprefix("features."): value.astype(np.float32, copy=False)
                  for key, value in arrays.items() if key.startswith("features.")},
    )
    validate_scores(s, str(path))
    return s


def _load_npy(paths: list[Path], video_ids_path: PathLike | None, labels_path: PathLike | None,
              stream_names: Sequence[str] | None, logits: bool) -> ScoreSet:
    if video_ids_path is None:
        raise InputError(f"{paths[0]}: a .npy score matrix needs a video-id list (one id per line)")
    video_ids = _read_id_list(Path(video_ids_path))
    matrices, default_names = [], []
    for path in paths:
        stack = _read_score_matrix(path)
        if stack.shape[1] != len(video_ids):
            raise InputError(f"{path}: {stack.shape[1]} rows but {video_ids_path} lists {len(video_ids)} video ids")
        if matrices and stack.shape[2] != matrices[0].shape[2]:
            raise InputError(f"{path}: {stack.shape[2]} classes but {paths[0]} has {matrices[0].shape[2]}")
        matrices.append(stack)
        default_names += [path.stem] if len(stack) == 1 else [f"{path.stem}_{i}" for i in range(len(stack))]
    scores = np.concatenate(matrices).astype(np.float32, copy=False)
    if logits:
        if not np.isfinite(scores).all():
            raise InputError(f"{', '.join(map(str, paths))}: logits contain NaN or infinite values")
        scores = softmax_rows(scores)
    names = list(stream_names) if stream_names is not None else default_names
    source = ", ".join(map(str, paths))
    if len(names) != len(scores):
        raise InputError(f"{source}: {len(names)} stream names given for {len(scores)} streams")
    labels, classes = _read_labels(labels_path, video_ids, scores.shape[2])
    s = ScoreSet(video_ids=video_ids, labels=labels, class_names=classes, stream_names=names, scores=scores)
    validate_scores(s, source)
    return s


def _read_score_matrix(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: score file not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy ({exc})") from None
    if array.ndim not in (2, 3) or not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{path}: expected a float (N, C) or (S, N, C) score matrix, "
                         f"found {array.dtype} {array.shape}")
    return array[None] if array.ndim == 2 else array


def _read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: video-id list not found")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    _check_unique_ids(str(path), ids)
    return ids


def _read_labels(path: PathLike | None, video_ids: list[str], num_classes: int) -> tuple[np.ndarray, list[str]]:
    """Labels (-1 where unknown) and class names (``""`` where unknown) from a manifest CSV or a labels .npy."""
    unknown_names = [""] * num_classes
    if path is None:
        return np.full(len(video_ids), -1, dtype=np.int64), unknown_names
    path = Path(path)
    if path.suffix == ".csv":
        rows = {row.video_id: row for row in read_manifest(path)}
        missing = [v for v in video_ids if v not in rows]
        if missing:
            raise InputError(f"{path}: {len(missing)} video ids are not in the manifest, e.g. {missing[0]!r}")
        labels = np.array([rows[v].label for v in video_ids], dtype=np.int64)
        names = manifest_class_names(list(rows.values()))
        if len(names) > num_classes:
            raise InputError(f"{path}: manifest has {len(names)} classes but the scores have {num_classes}")
        return labels, names + unknown_names[len(names):]
    if path.suffix != ".npy" or not path.is_file():
        raise InputError(f"{path}: labels must be an existing manifest .csv or int .npy")
    labels = np.load(path, allow_pickle=False)
    if labels.shape != (len(video_ids),) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: expected {len(video_ids)} integer labels, found {labels.dtype} {labels.shape}")
    return labels.astype(np.int64), unknown_names
