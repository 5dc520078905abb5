"""AWF fit time at Kinetics scale (400 classes x 2 streams x 240,000 training videos), side by side with references.

Scores are generated Dirichlet-like: per stream and video, Gamma(0.1) draws plus a boost of the true class (right
with probability 0.55-0.65), normalised to sum to 1. One run measures:

Quick steps report the best of 3 runs (the machine may be shared), slow ones a single run.

- AWF fit with a fixed lambda: per-class sums (vectorised) + one block LP over all classes (HiGHS);
- references for its two parts: the sums by a Python loop over videos (eqs. 6-7 literally, one numpy add per
  video) and the LP as one linprog call per class;
- the late-average and global-weight baselines (fit + predict on the training scores), and AWF with lambda auto
  (5-fold CV over the default 7 x 4 grid).

    python benchmarks/bench_fusion.py [--classes 400] [--streams 2] [--videos 240000]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from typing import Callable

import numpy as np
from scipy.optimize import linprog

from actrec.fusion.awf import AwfParams, awf_objective, class_score_sums, fit_awf, solve_awf_lp
from actrec.fusion.baselines import fit_average, fit_global
from actrec.fusion.model import predict
from actrec.fusion.scores import ScoreSet

CHUNK = 20_000  # videos generated at a time, to bound float64 temporaries


def dirichlet_like_scores(num_streams: int, num_videos: int, num_classes: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (S, N, C) float32 summing to 1 per video and labels (N,): Gamma(0.1) noise + a true-class boost."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num_videos)
    scores = np.empty((num_streams, num_videos, num_classes), dtype=np.float32)
    for n in range(num_streams):
        accuracy = 0.55 + 0.1 * n
        for start in range(0, num_videos, CHUNK):
            rows = np.arange(start, min(start + CHUNK, num_videos))
            block = rng.standard_gamma(0.1, size=(len(rows), num_classes), dtype=np.float32)
            hit = rng.random(len(rows)) < accuracy
            block[np.arange(len(rows)), labels[rows]] += np.where(hit, 2.0, 0.2).astype(np.float32)
            scores[n, rows] = block / block.sum(axis=1, keepdims=True)
    return scores, labels


def sums_by_video_loop(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference for class_score_sums: eqs. 6-7 as written, one pass per video."""
    own = np.zeros((scores.shape[0], num_classes))
    total = np.zeros((scores.shape[0], num_classes))
    for x, y in enumerate(labels):
        own[:, y] += scores[:, x, y]
        total += scores[:, x]
    return own, total


def lp_per_class(objective: np.ndarray, min_weight: float) -> np.ndarray:
    """Reference for solve_awf_lp: one linprog call per class."""
    num_streams = objective.shape[1]
    return np.stack([linprog(-c, A_eq=np.ones((1, num_streams)), b_eq=[1.0], bounds=(min_weight, None),
                             method="highs").x for c in objective])


def timed(label: str, function: Callable[[], object], repeats: int = 3) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (the machine is shared) and the last result."""
    elapsed = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        elapsed = min(elapsed, time.perf_counter() - start)
    print(f"{label:<50} {elapsed:9.3f} s  (best of {repeats})")
    return elapsed, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--videos", type=int, default=240_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {datetime.date.today()}")
    print(f"{args.classes} classes x {args.streams} streams x {args.videos} training videos")

    start = time.perf_counter()
    scores, labels = dirichlet_like_scores(args.streams, args.videos, args.classes, args.seed)
    print(f"generated scores ({scores.nbytes / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s")
    train = ScoreSet([str(i) for i in range(args.videos)], labels, [""] * args.classes,
                     [f"s{n}" for n in range(args.streams)], scores)

    t_awf, awf = timed("AWF fit, lambda 1, w_min 0 (sums + block LP)", lambda: fit_awf(train, AwfParams(lam=1.0)))
    t_sums, (own, total) = timed("  per-class sums, vectorised (ours)", lambda: class_score_sums(scores, labels,
                                                                                                  args.classes))
    t_loop, (own_ref, total_ref) = timed("  per-class sums, loop over videos (reference)",
                                         lambda: sums_by_video_loop(scores, labels, args.classes), repeats=1)
    assert np.allclose(own, own_ref) and np.allclose(total, total_ref, rtol=1e-5)
    objective = awf_objective(own, total, 1.0)
    t_block, weights = timed("  LP, one block LP for all classes (ours)", lambda: solve_awf_lp(objective, 0.0))
    t_each, weights_ref = timed("  LP, one linprog per class (reference)", lambda: lp_per_class(objective, 0.0),
                                repeats=1)
    assert np.allclose(weights, weights_ref)
    t_avg, average = timed("late average fit", lambda: fit_average(train))
    t_avg_pred, _ = timed("late average predict (training scores)", lambda: predict(average.weights, scores))
    t_awf_pred, _ = timed("AWF predict by eq. 9 (training scores)", lambda: predict(awf.weights, scores))
    t_global, _ = timed("global weights fit (0.05 grid, training top-1)", lambda: fit_global(train), repeats=1)
    t_cv, auto = timed("AWF fit, lambda auto (5-fold CV, 28 grid points)", lambda: fit_awf(train, AwfParams()),
                       repeats=1)
    print(f"  chose lambda {auto.info['lambda']}, w_min {auto.info['min_weight']}")

    print(f"ratio sums: loop / vectorised = {t_loop / t_sums:.1f}x")
    print(f"ratio LP: per-class / block = {t_each / t_block:.1f}x")
    print(f"ratio AWF fit / late-average fit+predict = {t_awf / (t_avg + t_avg_pred):.1f}x")
    print(f"ratio AWF fit+predict / late-average fit+predict = {(t_awf + t_awf_pred) / (t_avg + t_avg_pred):.1f}x")
    print(f"AWF lambda auto / fixed lambda = {t_cv / t_awf:.1f}x; global grid / AWF fit = {t_global / t_awf:.1f}x")


if __name__ == "__main__":
    main()
