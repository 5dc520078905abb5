"""Adaptive weighted fusion (AWF): per-class stream weights by linear programming (STILT paper, eqs. 4-9).

For class y with weights W_y = [w_{y,1} .. w_{y,S}] the paper maximises (eq. 5)

    P_y - lambda M_y,   P_y = sum over training videos x of class y of W_y S_x Y_y           (eq. 6)
                        M_y = sum over training videos x of other classes of W_y S_x Y_y     (eq. 7)

where S_x (S, C) stacks the streams' softmax scores of video x (eq. 4) and Y_y picks column y, so both terms are
linear in W_y: the objective is c_y . W_y with c_{y,n} = P_{y,n} - lambda M_{y,n}. The paper leaves the feasible
set implicit, and without one the LP is unbounded; we use

    w_{y,n} >= w_min for every stream n,   sum_n w_{y,n} = 1,

a simplex (feasible when w_min * S <= 1). A linear objective over it is optimal at a vertex: every stream gets w_min
and the best stream of the class gets the rest (1 - (S - 1) w_min), unless coefficients tie. So w_min = 0 picks one
stream per class; w_min > 0 keeps every stream in the mix. lambda and w_min can be chosen by k-fold
cross-validation over the training scores. A test video is labelled by eq. 9 (``actrec.fusion.model.predict``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csr_array, eye, kron

from actrec.errors import ActrecError, InputError
from actrec.fusion.model import LateFusion, predict
from actrec.fusion.scores import FusionWarning, ScoreSet
from actrec.wording import agrees, counted


@dataclass(frozen=True)
class AwfParams:
    """AWF settings; ``None`` for ``lam`` means "choose by cross-validation"."""

    lam: float | None = None  # lambda of eq. 5: weight of M_y (other classes) against P_y; None = k-fold CV
    min_weight: float | None = None  # w_min, lower bound of every weight; None = 0, or chosen by CV when lam is None
    folds: int = 5  # k of the k-fold cross-validation over the training videos
    lambda_grid: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # lambda candidates for CV
    min_weight_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)  # w_min candidates for CV, as fractions of 1/S


def class_score_sums(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-stream, per-class score sums over the labelled videos, both (S, C) float64.

    ``own[n, y]`` sums stream n's class-y score over videos of class y; ``total[n, y]`` over all labelled videos.
    Videos labelled -1 are ignored. One gather and one bincount per stream, no loop over videos.
    """
    rows = np.flatnonzero(labels >= 0)
    y = labels[rows]
    # eq. 4: scores[:, x] is S_x (S, C); S_x Y_y is its column y, so each class sums only its own column
    own = np.stack([np.bincount(y, weights=stream[rows, y], minlength=num_classes) for stream in scores])
    if len(rows) == scores.shape[1]:
        total = scores.sum(axis=1, dtype=np.float64)
    else:
        total = np.stack([stream[rows].sum(axis=0, dtype=np.float64) for stream in scores])
    return own, total


def awf_objective(own: np.ndarray, total: np.ndarray, lam: float) -> np.ndarray:
    """Coefficients c (C, S) of the per-class objective c_y . W_y from the sums of ``class_score_sums``."""
    p = own.T  # eq. 6: P_y per stream, sum of S_x[n, y] over the m_y videos of class y
    m = (total - own).T  # eq. 7: M_y per stream, the same sum over the videos of every class k != y
    return p - lam * m  # eq. 5: maximise P_y - lambda M_y, linear in W_y


def check_min_weight(min_weight: float, num_streams: int) -> None:
    """InputError when no weights satisfy w >= w_min with sum(w) = 1 (i.e. w_min * S > 1) or w_min < 0."""
    if min_weight < 0 or min_weight * num_streams > 1 + 1e-12:
        raise InputError(f"min weight {min_weight} is infeasible with {num_streams} streams: "
                         f"need 0 <= w_min and w_min * S <= 1 (here {min_weight * num_streams:g})")


def solve_awf_lp(objective: np.ndarray, min_weight: float, class_names: list[str] | None = None) -> np.ndarray:
    """Maximise c_y . W_y over {W_y >= w_min, sum W_y = 1} for every class y; returns W (C, S).

    The classes' LPs are independent, so they are solved as one block-diagonal LP by HiGHS; if that fails, each
    class is solved alone to name the one that fails (ActrecError).
    """
    num_classes, num_streams = objective.shape
    check_min_weight(min_weight, num_streams)
    result = _linprog_blocks(objective, min_weight)
    if result.status == 0:
        return result.x.reshape(num_classes, num_streams)
    names = class_names or [str(y) for y in range(num_classes)]
    for y in range(num_classes):
        alone = _linprog_blocks(objective[y:y + 1], min_weight)
        if alone.status != 0:
            raise ActrecError(f"AWF linear program for class {y} ({names[y]}) failed: {alone.message}")
    raise ActrecError(f"AWF linear program over all {num_classes} classes failed: {result.message}")


def _linprog_blocks(objective: np.ndarray, min_weight: float):
    num_classes, num_streams = objective.shape
    sum_to_one = kron(eye(num_classes, format="csr"), csr_array(np.ones((1, num_streams))), format="csr")
    return linprog(-objective.ravel(), A_eq=sum_to_one, b_eq=np.ones(num_classes),  # linprog minimises
                   bounds=(min_weight, None), method="highs")


def awf_weights(own: np.ndarray, total: np.ndarray, counts: np.ndarray, lam: float, min_weight: float,
                class_names: list[str] | None = None) -> np.ndarray:
    """AWF weights (C, S) from class score sums; classes with no training video (``counts`` 0) get equal weights."""
    weights = solve_awf_lp(awf_objective(own, total, lam), min_weight, class_names)
    weights[counts == 0] = 1.0 / own.shape[0]
    return weights


def fold_assignment(labels: np.ndarray, folds: int) -> np.ndarray:
    """Fold index per video (-1 when unlabelled): each class split into ``folds`` contiguous blocks in file order.

    Contiguous blocks keep neighbouring clips (often cut from the same long video) in the same fold.
    """
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    counts = np.searchsorted(sorted_labels, sorted_labels, side="right") - starts
    assignment = np.empty(len(labels), dtype=np.int64)
    assignment[order] = (np.arange(len(labels)) - starts) * folds // counts
    assignment[labels < 0] = -1
    return assignment


def cross_validate(scores: np.ndarray, labels: np.ndarray, candidates: list[tuple[float, float]], folds: int,
                   class_names: list[str] | None = None) -> np.ndarray:
    """Held-out top-1 accuracy of AWF for each (lambda, w_min) candidate by k-fold CV over labelled videos.

    Sums over the training folds are the full sums minus the held-out fold's, so the scores are read once.
    """
    num_classes = scores.shape[2]
    fold = fold_assignment(labels, folds)
    own_all, total_all = class_score_sums(scores, labels, num_classes)
    counts_all = np.bincount(labels[labels >= 0], minlength=num_classes)
    correct = np.zeros(len(candidates), dtype=np.int64)
    for f in range(folds):
        held = fold == f
        held_scores, held_labels = scores[:, held], labels[held]
        own_f, total_f = class_score_sums(held_scores, held_labels, num_classes)
        counts = counts_all - np.bincount(held_labels, minlength=num_classes)
        for i, (lam, min_weight) in enumerate(candidates):
            weights = awf_weights(own_all - own_f, total_all - total_f, counts, lam, min_weight, class_names)
            correct[i] += int((predict(weights, held_scores) == held_labels).sum())
    return correct / counts_all.sum()


def fit_awf(train: ScoreSet, params: AwfParams = AwfParams(), source: str = "training scores") -> LateFusion:
    """Fit AWF weights on training scores; lambda (and w_min unless given) by k-fold CV when ``params.lam`` is None.

    Classes with no training video get equal weights and a FusionWarning. InputError for no labelled video,
    an infeasible w_min, or fewer labelled videos than folds.
    """
    num_classes = train.num_classes
    labelled = train.labels >= 0
    if not labelled.any():
        raise InputError(f"{source}: no labelled video; AWF needs training labels")
    if params.lam is None:
        lam, min_weight, info = _choose_by_cv(train, params, source)
    else:
        if params.lam < 0:
            raise InputError(f"lambda must be >= 0, found {params.lam}")
        lam, min_weight = params.lam, params.min_weight or 0.0
        info = {"chosen_by": "given"}
    own, total = class_score_sums(train.scores, train.labels, num_classes)
    counts = np.bincount(train.labels[labelled], minlength=num_classes)
    empty = [name or str(y) for y, name in enumerate(train.class_names) if counts[y] == 0]
    if empty:
        n = len(empty)
        warnings.warn(f"{source}: {counted(n, 'class', 'classes')} {agrees(n, 'has', 'have')} no training video "
                      f"and {agrees(n, 'gets', 'get')} equal weights: {', '.join(empty)}", FusionWarning, stacklevel=2)
    weights = awf_weights(own, total, counts, lam, min_weight, train.class_names)
    info.update({"lambda": lam, "min_weight": min_weight, "equal_weight_classes": empty})
    return LateFusion("awf", list(train.stream_names), list(train.class_names), weights, info)


def _choose_by_cv(train: ScoreSet, params: AwfParams, source: str) -> tuple[float, float, dict]:
    num_streams = len(train.stream_names)
    if params.min_weight is not None:
        check_min_weight(params.min_weight, num_streams)
        min_weights = [params.min_weight]
    else:
        min_weights = [f / num_streams for f in params.min_weight_fractions]
    labelled = int((train.labels >= 0).sum())
    if labelled < 2:
        raise InputError(f"{source}: choosing lambda by cross-validation needs at least 2 labelled videos, found "
                         f"{labelled}: give --lambda a value")
    if not 2 <= params.folds <= labelled:
        raise InputError(f"{source}: {params.folds} folds but {labelled} labelled videos: use --folds between 2 "
                         f"and {labelled}")
    candidates = [(lam, w) for lam in params.lambda_grid for w in min_weights]
    accuracy = cross_validate(train.scores, train.labels, candidates, params.folds, train.class_names)
    best = int(np.argmax(accuracy))  # first of the best in grid order: ties go to the smaller lambda, then w_min
    lam, min_weight = candidates[best]
    cv = [{"lambda": c[0], "min_weight": c[1], "top1": float(a)} for c, a in zip(candidates, accuracy)]
    return lam, min_weight, {"chosen_by": f"{params.folds}-fold cross-validation", "cv": cv}
