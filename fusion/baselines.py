"""Baseline fusions on the same scores as AWF (the rows of STILT Table 5, plus the field's usual global weights).

- ``average``: late average of the streams' softmax scores (equal weights for every class).
- ``global``: one weight per stream shared by all classes, chosen by grid search over the simplex
  (step 0.05 by default) for training top-1 accuracy, as mmaction2 (1:1) and TSN (1:1.5) fix by hand; a single
  stream gets weight 1.
- ``early``: a linear SVM on the standardised, concatenated per-stream features, with the Crammer-Singer multiclass
  hinge loss max(0, 1 + max_{j != y} s_j - s_y) plus an L2 penalty, trained full-batch or by minibatches with Adam
  in torch on the CPU, deterministic for a seed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from actrec.errors import InputError
from actrec.fusion.model import EarlyFusion, LateFusion, concat_features, fuse_scores
from actrec.fusion.scores import ScoreSet


@dataclass(frozen=True)
class SvmParams:
    """Training settings of the early-fusion linear SVM."""

    epochs: int = 50  # passes over the labelled training videos
    batch_size: int = 256  # minibatch size; >= the number of videos means full batch
    lr: float = 0.01  # Adam learning rate
    weight_decay: float = 1e-4  # L2 penalty (weight_decay / 2) ||W||^2 on the weights, not the bias
    seed: int = 0  # seeds the minibatch order (weights start at zero)


def fit_average(train: ScoreSet) -> LateFusion:
    """Late average: every stream weighs 1/S for every class (nothing is learned)."""
    num_streams = len(train.stream_names)
    weights = np.full((train.num_classes, num_streams), 1.0 / num_streams)
    return LateFusion("average", list(train.stream_names), list(train.class_names), weights, {})


def simplex_grid(num_streams: int, steps: int) -> np.ndarray:
    """Every weight vector (G, S) with entries k / steps (k integer >= 0) summing to 1, in lexicographic order.

    By stars and bars: each choice of S - 1 bar positions among steps + S - 1 slots is one composition of steps.
    One stream has one point, weight 1.
    """
    slots = steps + num_streams - 1
    choices = list(itertools.combinations(range(slots), num_streams - 1))
    bars = np.array(choices, dtype=np.int64).reshape(len(choices), num_streams - 1)
    edges = np.concatenate([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), slots)], axis=1)
    return (np.diff(edges, axis=1) - 1) / steps


def fit_global(train: ScoreSet, step: float = 0.05, source: str = "training scores") -> LateFusion:
    """One weight per stream for all classes: the simplex-grid point with the best training top-1.

    Ties go to the point nearest equal weights, then to the first in grid order.
    """
    rows = np.flatnonzero(train.labels >= 0)
    if len(rows) == 0:
        raise InputError(f"{source}: no labelled video; global weights need training labels")
    num_streams = len(train.stream_names)
    grid = simplex_grid(num_streams, max(1, round(1 / step)))
    scores, labels = train.scores[:, rows], train.labels[rows]
    correct = np.array([(fuse_scores(np.broadcast_to(w, (train.num_classes, num_streams)), scores).argmax(1)
                         == labels).sum() for w in grid])
    spread = np.linalg.norm(grid - 1.0 / num_streams, axis=1)
    best = np.lexsort((np.arange(len(grid)), spread, -correct))[0]
    weights = np.tile(grid[best], (train.num_classes, 1))
    info = {"grid_step": 1 / max(1, round(1 / step)), "train_top1": float(correct[best] / len(rows))}
    return LateFusion("global", list(train.stream_names), list(train.class_names), weights, info)


def multiclass_hinge(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Crammer-Singer hinge loss, mean over the batch: max(0, 1 + max_{j != y} s_j - s_y); scores Tensor[B, C]."""
    true = scores.gather(1, labels[:, None])  # (B, 1)
    others = scores.scatter(1, labels[:, None], float("-inf"))  # (B, C) with the true class masked out
    return torch.relu(1.0 + others.max(dim=1, keepdim=True).values - true).mean()


def fit_early(train: ScoreSet, params: SvmParams = SvmParams(), source: str = "training scores") -> EarlyFusion:
    """Early fusion: a linear SVM on standardised concatenated features of the labelled training videos."""
    rows = np.flatnonzero(train.labels >= 0)
    if len(rows) == 0:
        raise InputError(f"{source}: no labelled video; early fusion needs training labels")
    features = concat_features(train, source)[rows]
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    std[std < 1e-6] = 1.0  # constant features: centre only
    x = torch.from_numpy(((features - mean) / std).astype(np.float32))
    y = torch.from_numpy(train.labels[rows])
    weight = torch.zeros(train.num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(train.num_classes, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=params.lr)
    generator = torch.Generator().manual_seed(params.seed)
    for _ in range(params.epochs):
        for batch in torch.randperm(len(x), generator=generator).split(params.batch_size):
            optimiser.zero_grad()
            loss = multiclass_hinge(x[batch] @ weight.T + bias, y[batch]) + 0.5 * params.weight_decay * (
                weight ** 2).sum()
            loss.backward()
            optimiser.step()
    dims = [train.features[n].shape[1] for n in train.stream_names]
    info = {"loss": "crammer-singer hinge", "epochs": params.epochs, "batch_size": params.batch_size,
            "lr": params.lr, "weight_decay": params.weight_decay, "seed": params.seed}
    return EarlyFusion(list(train.stream_names), list(train.class_names), dims, mean.astype(np.float32),
                       std.astype(np.float32), weight.detach().numpy().copy(), bias.detach().numpy().copy(), info)
