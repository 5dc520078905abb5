"""Fitted fusions, how they turn per-stream scores into one class score, and their JSON files.

A score-level fusion (AWF and the late baselines) is a weight matrix W of shape (C, S): row y holds the weights
``W_y`` of the S streams for class y, and the fused score of class y is ``W_y S_t Y_y`` (STILT eq. 9). Early fusion
is a linear classifier on the standardised, concatenated per-stream features.

JSON format (``format`` = ``"actrec-fusion"``, ``format_version`` = 1): ``method``, ``stream_names``,
``class_names``, ``info`` (method parameters: lambda, w_min, CV results...), and either ``weights`` (C rows of S
floats, in class and stream order) or, for ``early``, ``feature_dims`` (D per stream), ``feature_mean``,
``feature_std`` (D floats), ``classifier_weight`` (C rows of D floats) and ``classifier_bias`` (C floats).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from actrec.errors import InputError
from actrec.fusion.scores import PathLike, ScoreSet, check_class_names

FORMAT = "actrec-fusion"
FORMAT_VERSION = 1
LATE_METHODS = ("awf", "average", "global")


@dataclass(frozen=True, eq=False)
class LateFusion:
    """Score-level fusion: per-class stream weights ``weights`` (C, S), each row on the simplex, applied by eq. 9."""

    method: str
    stream_names: list[str]
    class_names: list[str]
    weights: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class EarlyFusion:
    """Feature-level fusion: scores = ((f - mean) / std) @ weight.T + bias on features concatenated in stream order."""

    stream_names: list[str]
    class_names: list[str]
    feature_dims: list[int]
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    method: str = "early"


Fusion = LateFusion | EarlyFusion


def fuse_scores(weights: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Fused class scores (N, C) from per-class weights (C, S) and stacked stream scores (S, N, C).

    Entry (x, y) of the result is W_y S_t Y_y of eq. 9 for test video x.
    """
    fused = np.zeros(scores.shape[1:], dtype=np.float32)
    for n in range(scores.shape[0]):  # eq. 8: scores[:, x] is S_t (S, C) of test video x
        fused += scores[n] * weights[:, n].astype(np.float32)  # eq. 9: sum over streams of w_{y,n} S_{t,n}[y]
    return fused


def predict(weights: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Predicted class per video (N,): the y maximising W_y S_t Y_y (eq. 9)."""
    return fuse_scores(weights, scores).argmax(axis=1)  # eq. 9: argmax over classes


def concat_features(s: ScoreSet, source: str) -> np.ndarray:
    """Per-stream features concatenated in stream order (N, sum D); InputError when a stream has none."""
    missing = [n for n in s.stream_names if n not in s.features]
    if missing:
        raise InputError(f"{source}: early fusion needs features for every stream; none for {missing}")
    return np.concatenate([s.features[n] for n in s.stream_names], axis=1)


def early_scores(fusion: EarlyFusion, features: np.ndarray) -> np.ndarray:
    """Linear-classifier class scores (N, C) for concatenated raw features (N, D)."""
    standardised = (features - fusion.mean) / fusion.std
    return (standardised @ fusion.weight.T + fusion.bias).astype(np.float32)


def check_fusion_fits(fusion: Fusion, stream_names: Sequence[str], class_names: Sequence[str], source: str,
                      fusion_source: str = "the fusion") -> None:
    """InputError unless scores of these streams and classes (from ``source``) can be fused by ``fusion`` (read
    from ``fusion_source``): the same streams in the same order, the same class count, and the same class names
    wherever both sides know them. Checked before any work where the classes are known in advance (predict)."""
    if list(stream_names) != fusion.stream_names:
        raise InputError(f"{source}: streams {list(stream_names)} differ from {fusion_source}'s "
                         f"{fusion.stream_names}")
    if len(class_names) != len(fusion.class_names):
        raise InputError(f"{source}: {len(class_names)} classes but {fusion_source} has {len(fusion.class_names)}")
    check_class_names(fusion.class_names, class_names, f"{source} against {fusion_source}")


def apply_fusion(fusion: Fusion, scores: ScoreSet, source: str = "scores") -> np.ndarray:
    """Fused class scores (N, C) of ``scores`` under a fitted fusion, after checking streams and classes match."""
    check_fusion_fits(fusion, scores.stream_names, scores.class_names, source)
    if isinstance(fusion, LateFusion):
        return fuse_scores(fusion.weights, scores.scores)
    features = concat_features(scores, source)
    if features.shape[1] != fusion.mean.shape[0]:
        raise InputError(f"{source}: features have {features.shape[1]} dimensions, the fusion expects "
                         f"{fusion.mean.shape[0]} ({dict(zip(fusion.stream_names, fusion.feature_dims))})")
    return early_scores(fusion, features)


def save_fusion(path: PathLike, fusion: Fusion) -> None:
    """Write a fitted fusion as JSON (format above)."""
    doc: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "method": fusion.method,
                           "stream_names": fusion.stream_names, "class_names": fusion.class_names,
                           "info": fusion.info}
    if isinstance(fusion, LateFusion):
        doc["weights"] = fusion.weights.tolist()
    else:
        doc.update(feature_dims=fusion.feature_dims, feature_mean=fusion.mean.tolist(),
                   feature_std=fusion.std.tolist(), classifier_weight=fusion.weight.tolist(),
                   classifier_bias=fusion.bias.tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_to_json(doc) + "\n", encoding="utf-8")


def _to_json(value: Any, indent: int = 0) -> str:
    """JSON with one line per dict key and per row of a list of rows (weights, CV results); the rest inline."""
    pad = " " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(key)}: {_to_json(item, indent + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and value and all(isinstance(item, (list, dict)) for item in value):
        return "[\n" + ",\n".join(pad + json.dumps(item) for item in value) + "\n" + " " * indent + "]"
    return json.dumps(value)


def load_fusion(path: PathLike) -> Fusion:
    """Read a fusion JSON written by ``save_fusion``; InputError naming the file when it is not one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable fusion JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: not an actrec fusion file (expected format {FORMAT} version {FORMAT_VERSION})")
    try:
        common = dict(stream_names=list(doc["stream_names"]), class_names=list(doc["class_names"]),
                      info=dict(doc.get("info", {})))
        if doc["method"] in LATE_METHODS:
            fusion: Fusion = LateFusion(method=doc["method"], weights=np.array(doc["weights"], dtype=np.float64),
                                        **common)
        elif doc["method"] == "early":
            fusion = EarlyFusion(feature_dims=[int(d) for d in doc["feature_dims"]],
                                 mean=np.array(doc["feature_mean"], dtype=np.float32),
                                 std=np.array(doc["feature_std"], dtype=np.float32),
                                 weight=np.array(doc["classifier_weight"], dtype=np.float32),
                                 bias=np.array(doc["classifier_bias"], dtype=np.float32), **common)
        else:
            raise InputError(f"{path}: unknown fusion method {doc['method']!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: malformed fusion file ({type(exc).__name__}: {exc})") from None
    _check_shapes(path, fusion)
    return fusion


def _check_shapes(path: Path, fusion: Fusion) -> None:
    num_classes, num_streams = len(fusion.class_names), len(fusion.stream_names)
    if isinstance(fusion, LateFusion):
        if fusion.weights.shape != (num_classes, num_streams):
            raise InputError(f"{path}: weights must be {num_classes} classes x {num_streams} streams, "
                             f"found {fusion.weights.shape}")
        return
    dims = sum(fusion.feature_dims)
    if (len(fusion.feature_dims) != num_streams or fusion.mean.shape != (dims,) or fusion.std.shape != (dims,)
            or fusion.weight.shape != (num_classes, dims) or fusion.bias.shape != (num_classes,)):
        raise InputError(f"{path}: early-fusion classifier shapes disagree with {num_classes} classes and "
                         f"feature dims {fusion.feature_dims}")
