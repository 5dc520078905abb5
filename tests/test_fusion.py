"""Fusion: the AWF linear program (STILT eqs. 4-9), the baselines, and score and fusion files (bad input and the
`fit-fusion` command line: tests/test_fusion_inputs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.fusion.awf import (AwfParams, awf_objective, class_score_sums, cross_validate, fit_awf,
                               fold_assignment, solve_awf_lp)
from actrec.fusion.baselines import SvmParams, fit_average, fit_early, fit_global, simplex_grid
from actrec.fusion.model import apply_fusion, fuse_scores, load_fusion, predict, save_fusion
from actrec.fusion.report import accuracy_row
from actrec.fusion.scores import ScoreSet, load_scores, save_scores

NUM_CLASSES = 10


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def two_group_scores(seed: int, per_class: int, prefix: str = "v", feature_dim: int = 0) -> ScoreSet:
    """Stream "rgb" is right on classes 0-4 and "flow" on 5-9; the other stream confidently confuses the class
    with another class of the same group. Optional features: class means plus noise, per stream."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    n = len(labels)
    logits = rng.normal(size=(2, n, NUM_CLASSES))
    group_start = np.where(labels < 5, 0, 5)
    confused = group_start + (labels - group_start + rng.integers(1, 5, size=n)) % 5  # another class, same group
    right_stream = (labels >= 5).astype(int)
    logits[right_stream, np.arange(n), labels] += 3.0
    logits[1 - right_stream, np.arange(n), confused] += 4.0
    scores = softmax(logits)
    features = {}
    if feature_dim:
        means = np.random.default_rng(100).normal(size=(2, NUM_CLASSES, feature_dim)) * 3.0  # same for every seed
        features = {name: (means[s, labels] + rng.normal(size=(n, feature_dim))).astype(np.float32)
                    for s, name in enumerate(("rgb", "flow"))}
    return ScoreSet([f"{prefix}{i:04d}" for i in range(n)], labels, [f"class{c}" for c in range(NUM_CLASSES)],
                    ["rgb", "flow"], scores, model_fused=scores.mean(axis=0), features=features)


def random_scores(seed: int, num_streams: int, num_videos: int, num_classes: int) -> ScoreSet:
    rng = np.random.default_rng(seed)
    labels = np.arange(num_videos) % num_classes
    scores = softmax(rng.normal(size=(num_streams, num_videos, num_classes)) * 2)
    return ScoreSet([f"r{i}" for i in range(num_videos)], labels, [f"c{c}" for c in range(num_classes)],
                    [f"s{n}" for n in range(num_streams)], scores)


def objective_by_loops(scores: np.ndarray, labels: np.ndarray, lam: float) -> np.ndarray:
    """Eqs. 5-7 transcribed literally: loops over classes y and videos x; returns c (C, S)."""
    num_streams, _, num_classes = scores.shape
    c = np.zeros((num_classes, num_streams))
    for y in range(num_classes):
        for x, label in enumerate(labels):
            sign = 1.0 if label == y else -lam  # P_y for videos of class y, -lambda M_y for the others
            c[y] += sign * scores[:, x, y]
    return c


def brute_force_weights(objective: np.ndarray, min_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Best value and weights per class over a 0.01 simplex grid restricted to w >= w_min."""
    grid = simplex_grid(objective.shape[1], 100)
    grid = grid[(grid >= min_weight - 1e-9).all(axis=1)]
    values = objective @ grid.T  # (C, G)
    return values.max(axis=1), grid[values.argmax(axis=1)]


# --- the linear program -------------------------------------------------------------------------------------------

def test_lp_hand_example() -> None:
    # 3 videos, 2 classes, 2 streams; labels 0, 0, 1.
    scores = np.array([[[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]],   # stream 0
                       [[0.7, 0.3], [0.8, 0.2], [0.5, 0.5]]],  # stream 1
                      dtype=np.float32)
    labels = np.array([0, 0, 1])
    own, total = class_score_sums(scores, labels, 2)
    # class 0: P = (0.9+0.6, 0.7+0.8) = (1.5, 1.5), M = (0.3, 0.5); class 1: P = (0.7, 0.5), M = (0.5, 0.5)
    objective = awf_objective(own, total, lam=1.0)
    np.testing.assert_allclose(objective, [[1.2, 1.0], [0.2, 0.0]], atol=1e-6)
    np.testing.assert_allclose(solve_awf_lp(objective, 0.0), [[1, 0], [1, 0]], atol=1e-9)
    np.testing.assert_allclose(solve_awf_lp(objective, 0.2), [[0.8, 0.2], [0.8, 0.2]], atol=1e-9)
    # lambda 0: class 0 ties (1.5 vs 1.5), class 1 prefers stream 0 (0.7 vs 0.5)
    assert solve_awf_lp(awf_objective(own, total, 0.0), 0.0)[1].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("num_streams, min_weight, lam", [(2, 0.0, 1.0), (2, 0.3, 0.5), (3, 0.0, 2.0),
                                                          (3, 0.1, 0.3), (3, 0.25, 1.0)])
def test_lp_agrees_with_brute_force(num_streams: int, min_weight: float, lam: float) -> None:
    s = random_scores(seed=num_streams, num_streams=num_streams, num_videos=40, num_classes=6)
    own, total = class_score_sums(s.scores, s.labels, 6)
    objective = awf_objective(own, total, lam)
    np.testing.assert_allclose(objective, objective_by_loops(s.scores, s.labels, lam), rtol=1e-5, atol=1e-5)
    weights = solve_awf_lp(objective, min_weight)
    assert np.allclose(weights.sum(axis=1), 1) and (weights >= min_weight - 1e-9).all()
    best_value, best_weights = brute_force_weights(objective, min_weight)
    np.testing.assert_allclose((objective * weights).sum(axis=1), best_value, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(weights, best_weights, atol=1e-7)  # unique optimum: random scores have no ties


def test_permuting_classes_permutes_weights() -> None:
    s = random_scores(seed=7, num_streams=3, num_videos=60, num_classes=6)
    perm = np.array([3, 0, 5, 1, 4, 2])  # new class j is old class perm[j]
    inverse = np.argsort(perm)
    permuted = ScoreSet(s.video_ids, inverse[s.labels], [s.class_names[p] for p in perm], s.stream_names,
                        s.scores[:, :, perm])
    for params in (AwfParams(lam=1.0), AwfParams(lam=0.3, min_weight=0.2)):
        np.testing.assert_allclose(fit_awf(permuted, params).weights, fit_awf(s, params).weights[perm], atol=1e-9)


def test_awf_picks_the_right_stream_and_beats_late_average() -> None:
    train, test = two_group_scores(seed=1, per_class=30), two_group_scores(seed=2, per_class=30)
    weights = fit_awf(train, AwfParams(lam=1.0, min_weight=0.0)).weights
    assert weights.argmax(axis=1).tolist() == [0] * 5 + [1] * 5
    awf_accuracy = (predict(weights, test.scores) == test.labels).mean()
    average_accuracy = (predict(fit_average(train).weights, test.scores) == test.labels).mean()
    assert awf_accuracy > 0.9 and awf_accuracy > average_accuracy + 0.3


def test_eq9_prediction_by_hand() -> None:
    weights = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])  # W_y per class
    scores = np.array([[[0.5, 0.3, 0.2]], [[0.1, 0.6, 0.3]]], dtype=np.float32)  # one video, S_t (2, 3)
    # W_0 S_t Y_0 = 0.9*0.5 + 0.1*0.1 = 0.46; class 1: 0.2*0.3 + 0.8*0.6 = 0.54; class 2: 0.25
    np.testing.assert_allclose(fuse_scores(weights, scores), [[0.46, 0.54, 0.25]], atol=1e-6)
    assert predict(weights, scores).tolist() == [1]


# --- choosing lambda and w_min --------------------------------------------------------------------------------------

def test_folds_are_contiguous_per_class_and_skip_unlabelled() -> None:
    labels = np.array([0, 1, 0, 0, 1, 0, -1, 1, 0, 1])
    # class 0 (5 videos) splits 3 + 2, class 1 (4 videos) 2 + 2, in file order
    assert fold_assignment(labels, 2).tolist() == [0, 0, 0, 0, 0, 1, -1, 1, 1, 1]


def test_cross_validation_matches_explicit_refits() -> None:
    s = random_scores(seed=3, num_streams=2, num_videos=90, num_classes=5)
    candidates = [(0.0, 0.0), (1.0, 0.0), (1.0, 0.25)]
    accuracy = cross_validate(s.scores, s.labels, candidates, folds=3)
    fold = fold_assignment(s.labels, 3)
    for (lam, min_weight), measured in zip(candidates, accuracy):
        correct = 0
        for f in range(3):
            keep = fold != f
            part = ScoreSet([v for v, k in zip(s.video_ids, keep) if k], s.labels[keep], s.class_names,
                            s.stream_names, s.scores[:, keep])
            weights = fit_awf(part, AwfParams(lam=lam, min_weight=min_weight)).weights
            correct += (predict(weights, s.scores[:, ~keep]) == s.labels[~keep]).sum()
        assert measured == pytest.approx(correct / len(s.labels))


def test_lambda_auto_picks_the_best_grid_point_deterministically() -> None:
    s = random_scores(seed=5, num_streams=2, num_videos=120, num_classes=6)
    params = AwfParams(folds=4)
    first, second = fit_awf(s, params), fit_awf(s, params)
    cv = first.info["cv"]
    assert len(cv) == len(params.lambda_grid) * len(params.min_weight_fractions)
    best = max(cv, key=lambda c: c["top1"])  # max returns the first of equal maxima: grid order
    assert (first.info["lambda"], first.info["min_weight"]) == (best["lambda"], best["min_weight"])
    assert first.info["lambda"] in params.lambda_grid
    assert first.info == second.info and np.array_equal(first.weights, second.weights)
    fixed_w = fit_awf(s, AwfParams(folds=4, min_weight=0.1))
    assert {c["min_weight"] for c in fixed_w.info["cv"]} == {0.1}


# --- baselines ----------------------------------------------------------------------------------------------------

def test_simplex_grid_enumerates_every_point() -> None:
    grid = simplex_grid(3, 4)
    assert grid.shape == (15, 3) and np.allclose(grid.sum(axis=1), 1)
    assert len({tuple(np.round(w * 4).astype(int)) for w in grid}) == 15


def test_global_weights_find_the_better_stream() -> None:
    s = two_group_scores(seed=4, per_class=20)
    s.scores[1] = s.scores[1, :, ::-1]  # flow now useless: one global weight should drop it
    fusion = fit_global(s, step=0.1)
    assert fusion.weights.shape == (NUM_CLASSES, 2) and np.allclose(fusion.weights, fusion.weights[0])
    assert fusion.weights[0, 0] > 0.5


def test_early_fusion_svm_beats_chance_deterministically() -> None:
    train, test = two_group_scores(1, 30, feature_dim=6), two_group_scores(2, 30, feature_dim=6)
    params = SvmParams(epochs=20, batch_size=100, lr=0.05)
    fusion = fit_early(train, params)
    accuracy = (apply_fusion(fusion, test).argmax(axis=1) == test.labels).mean()
    assert accuracy > 0.8  # chance is 0.1
    assert np.array_equal(fit_early(train, params).weight, fusion.weight)


def test_accuracy_row_counts_top1_top5_and_mean_class() -> None:
    scores = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.5, 0.4, 0.1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    row = accuracy_row("x", scores, np.array([0, 1, 0]))
    # video 0 right; video 1 (class 1) ranked 2nd; video 2 (class 0) ranked 6th
    assert (row.top1, row.top5) == pytest.approx((100 / 3, 200 / 3))
    assert row.mean_class == pytest.approx(100 * (0.5 + 0.0) / 2)


# --- files --------------------------------------------------------------------------------------------------------

def test_score_file_round_trip(tmp_path: Path) -> None:
    s = two_group_scores(seed=0, per_class=3, feature_dim=4)
    save_scores(tmp_path / "s.npz", s)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert str(z["format"]) == "actrec-scores" and int(z["format_version"]) == 1
    back = load_scores(tmp_path / "s.npz")
    assert (back.video_ids, back.class_names, back.stream_names) == (s.video_ids, s.class_names, s.stream_names)
    assert np.array_equal(back.labels, s.labels) and back.labels.dtype == np.int64
    assert np.array_equal(back.scores, s.scores) and back.scores.dtype == np.float32
    assert np.array_equal(back.model_fused, s.model_fused)
    assert back.features.keys() == s.features.keys()
    assert all(np.array_equal(back.features[k], s.features[k]) for k in s.features)


def test_npy_import_with_id_list_and_manifest(tmp_path: Path) -> None:
    s = two_group_scores(seed=0, per_class=2)
    np.save(tmp_path / "rgb.npy", s.scores[0])
    np.save(tmp_path / "flow.npy", s.scores[1])
    (tmp_path / "ids.txt").write_text("\n".join(s.video_ids) + "\n")
    rows = [ManifestRow(v, f"{v}.avi", int(y), f"class{y}", "train") for v, y in zip(s.video_ids, s.labels)]
    write_manifest(tmp_path / "m.csv", reversed(rows))  # order differs: labels are looked up by id
    back = load_scores([tmp_path / "rgb.npy", tmp_path / "flow.npy"], tmp_path / "ids.txt", tmp_path / "m.csv")
    assert back.stream_names == ["rgb", "flow"] and back.class_names == s.class_names
    assert np.array_equal(back.labels, s.labels) and np.array_equal(back.scores, s.scores)
    np.save(tmp_path / "both.npy", s.scores)
    np.save(tmp_path / "labels.npy", s.labels)
    stacked = load_scores(tmp_path / "both.npy", tmp_path / "ids.txt", tmp_path / "labels.npy", ["a", "b"])
    assert stacked.stream_names == ["a", "b"] and stacked.class_names == [""] * NUM_CLASSES
    unlabelled = load_scores(tmp_path / "both.npy", tmp_path / "ids.txt")
    assert stacked.labels.tolist() == s.labels.tolist() and (unlabelled.labels == -1).all()


def test_fusion_json_round_trip_and_apply(tmp_path: Path) -> None:
    train = two_group_scores(seed=1, per_class=10, feature_dim=3)
    for fusion in (fit_awf(train, AwfParams(lam=1.0, min_weight=0.1)), fit_early(train, SvmParams(epochs=2))):
        save_fusion(tmp_path / "f.json", fusion)
        back = load_fusion(tmp_path / "f.json")
        assert (back.method, back.stream_names, back.class_names) == (fusion.method, train.stream_names,
                                                                      train.class_names)
        np.testing.assert_allclose(apply_fusion(back, train), apply_fusion(fusion, train), rtol=1e-6)
