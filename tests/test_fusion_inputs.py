"""Fusion on bad input (score sets, .npy files, fusion files, infeasible or failing LPs) and the `fit-fusion`
command line; the linear program, baselines and files themselves are in tests/test_fusion.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.optimize import OptimizeResult

from actrec.cli import cli
from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.errors import ActrecError, InputError
from actrec.fusion import awf as awf_module
from actrec.fusion.awf import AwfParams, awf_objective, class_score_sums, fit_awf
from actrec.fusion.baselines import fit_average, fit_early, simplex_grid
from actrec.fusion.fit import FitOptions, fit_fusion
from actrec.fusion.model import apply_fusion, load_fusion
from actrec.fusion.scores import FusionWarning, ScoreSet, load_scores, save_scores

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helpers
from test_fusion import NUM_CLASSES, random_scores, two_group_scores  # noqa: E402


# --- bad input ----------------------------------------------------------------------------------------------------

def _with(s: ScoreSet, **changes) -> ScoreSet:
    return ScoreSet(**{**s.__dict__, **changes})


def _nan_scores(s: ScoreSet) -> ScoreSet:
    scores = s.scores.copy()
    scores[1, 2, 3] = np.nan
    return _with(s, scores=scores)


BASE = two_group_scores(seed=0, per_class=2)
BAD_SCORE_SETS = {
    "NaN or infinite": _nan_scores(BASE),
    "negative scores": _with(BASE, scores=BASE.scores - 0.5),
    "video ids disagree": _with(BASE, video_ids=BASE.video_ids[:-1]),
    "class names disagree": _with(BASE, class_names=BASE.class_names[:-1]),
    "duplicate video id": _with(BASE, video_ids=[BASE.video_ids[0]] * len(BASE.video_ids)),
    "labels must lie in -1..9": _with(BASE, labels=BASE.labels + 1),
    "model_fused": _with(BASE, model_fused=BASE.scores[0, :, :-1]),
}


@pytest.mark.parametrize("problem", BAD_SCORE_SETS)
def test_bad_score_set_is_rejected_naming_file_and_problem(tmp_path: Path, problem: str) -> None:
    with pytest.raises(InputError, match=problem) as caught:
        save_scores(tmp_path / "bad.npz", BAD_SCORE_SETS[problem])
    assert str(tmp_path / "bad.npz") in str(caught.value)


def test_bad_npy_inputs_are_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", BASE.scores[0])
    np.save(tmp_path / "b.npy", BASE.scores[1, :, :-1])
    (tmp_path / "ids.txt").write_text("\n".join(BASE.video_ids[:-1]))
    (tmp_path / "all.txt").write_text("\n".join(BASE.video_ids))
    with pytest.raises(InputError, match=r"a\.npy: 20 rows but .*ids\.txt lists 19 video ids"):
        load_scores(tmp_path / "a.npy", tmp_path / "ids.txt")
    with pytest.raises(InputError, match=r"b\.npy: 9 classes but .*a\.npy has 10"):
        load_scores([tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "all.txt")
    with pytest.raises(InputError, match="needs a video-id list"):
        load_scores(tmp_path / "a.npy")
    write_manifest(tmp_path / "m.csv", [ManifestRow("other", "o.avi", 0, "x", "test")])
    with pytest.raises(InputError, match="20 video ids are not in the manifest"):
        load_scores(tmp_path / "a.npy", tmp_path / "all.txt", tmp_path / "m.csv")
    np.savez(tmp_path / "foreign.npz", scores=BASE.scores)
    with pytest.raises(InputError, match="not an actrec score file"):
        load_scores(tmp_path / "foreign.npz")


def test_train_and_test_must_agree() -> None:
    fewer_classes = random_scores(0, 2, 20, 9)
    with pytest.raises(InputError, match="9 classes but training scores has 10"):
        fit_fusion(BASE, _with(fewer_classes, stream_names=["rgb", "flow"]))
    with pytest.raises(InputError, match=r"streams \['s0', 's1'\] differ"):
        fit_fusion(BASE, random_scores(0, 2, 20, NUM_CLASSES))
    with pytest.raises(InputError, match="no labelled video; the accuracy table needs test labels"):
        fit_fusion(BASE, _with(two_group_scores(1, 2, "t"), labels=np.full(20, -1)))
    with pytest.warns(FusionWarning, match="20 video ids also appear in training scores"):
        fit_fusion(BASE, BASE, FitOptions(method="average"))


def test_fusion_file_must_match_the_scores(tmp_path: Path) -> None:
    fusion = fit_average(BASE)
    with pytest.raises(InputError, match="streams .* differ from the fusion's"):
        apply_fusion(fusion, random_scores(0, 2, 20, NUM_CLASSES))
    with pytest.raises(InputError, match="9 classes but the fusion has 10"):
        apply_fusion(fusion, _with(random_scores(0, 2, 20, 9), stream_names=["rgb", "flow"]))
    with pytest.raises(InputError, match="class 0 is named 'walk', expected 'class0'"):
        apply_fusion(fusion, _with(BASE, class_names=["walk"] + BASE.class_names[1:]))
    with pytest.raises(InputError, match="early fusion needs features for every stream"):
        fit_early(BASE)
    (tmp_path / "x.json").write_text('{"format": "something-else"}')
    with pytest.raises(InputError, match="not an actrec fusion file"):
        load_fusion(tmp_path / "x.json")


def test_infeasible_min_weight_is_rejected_before_solving() -> None:
    with pytest.raises(InputError, match=r"min weight 0\.6 is infeasible with 2 streams"):
        fit_awf(BASE, AwfParams(lam=1.0, min_weight=0.6))


def test_linprog_failure_names_the_class(monkeypatch: pytest.MonkeyPatch) -> None:
    own, total = class_score_sums(BASE.scores, BASE.labels, NUM_CLASSES)
    failing = -awf_objective(own, total, 1.0)[3]
    real_linprog = awf_module.linprog

    def linprog_failing_on_class_3(c, **kwargs):
        if len(c) > 2 or np.allclose(c, failing):
            return OptimizeResult(status=4, message="numerical difficulties")
        return real_linprog(c, **kwargs)

    monkeypatch.setattr(awf_module, "linprog", linprog_failing_on_class_3)
    with pytest.raises(ActrecError, match=r"class 3 \(class3\) failed: numerical difficulties"):
        fit_awf(BASE, AwfParams(lam=1.0))


def test_class_without_training_video_gets_equal_weights() -> None:
    s = two_group_scores(seed=1, per_class=5)
    keep = s.labels != 7
    part = ScoreSet([v for v, k in zip(s.video_ids, keep) if k], s.labels[keep], s.class_names, s.stream_names,
                    s.scores[:, keep])
    with pytest.warns(FusionWarning, match="1 class has no training video and gets equal weights: class7"):
        fusion = fit_awf(part, AwfParams(lam=1.0))
    assert fusion.weights[7].tolist() == [0.5, 0.5] and fusion.info["equal_weight_classes"] == ["class7"]


# --- command line -------------------------------------------------------------------------------------------------

def test_cli_fit_fusion_end_to_end(tmp_path: Path) -> None:
    save_scores(tmp_path / "train.npz", two_group_scores(1, 20, "a", feature_dim=6))
    save_scores(tmp_path / "test.npz", two_group_scores(2, 20, "b", feature_dim=6))
    result = CliRunner().invoke(cli, ["fit-fusion", "--train-scores", str(tmp_path / "train.npz"),
                                      "--test-scores", str(tmp_path / "test.npz"), "--method", "all",
                                      "--folds", "3", "-o", str(tmp_path / "out" / "fusion.json"),
                                      "--plot", str(tmp_path / "weights.png")])
    assert result.exit_code == 0, result.output
    for row in ("rgb", "flow", "model fused", "late average", "global weights", "early (linear SVM)", "AWF"):
        assert row in result.output
    assert "top-1" in result.output and "mean class" in result.output
    doc = json.loads((tmp_path / "out" / "fusion.json").read_text())
    assert doc["method"] == "awf" and doc["stream_names"] == ["rgb", "flow"] and len(doc["weights"]) == NUM_CLASSES
    assert {"lambda", "min_weight", "cv"} <= doc["info"].keys()
    assert (tmp_path / "weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_fit_fusion_from_npy_with_fixed_lambda(tmp_path: Path) -> None:
    for side, seed in (("train", 1), ("test", 2)):
        s = two_group_scores(seed, 10, side)
        for n, name in enumerate(s.stream_names):
            np.save(tmp_path / f"{side}_{name}.npy", s.scores[n])
        (tmp_path / f"{side}_ids.txt").write_text("\n".join(s.video_ids))
        np.save(tmp_path / f"{side}_labels.npy", s.labels)

    def side_args(side: str, files: str) -> list[str]:
        return [f"--{side}-scores", str(tmp_path / f"{files}_rgb.npy"), f"--{side}-scores",
                str(tmp_path / f"{files}_flow.npy"), f"--{side}-ids", str(tmp_path / f"{files}_ids.txt"),
                f"--{side}-labels", str(tmp_path / f"{files}_labels.npy")]

    options = ["fit-fusion", "--stream-names", "rgb,flow", "--lambda", "1", "-o", str(tmp_path / "f.json")]
    args = options + side_args("train", "train") + side_args("test", "test")
    result = CliRunner().invoke(cli, args + ["--min-weight", "0.1"])
    assert result.exit_code == 0, result.output
    fusion = load_fusion(tmp_path / "f.json")
    assert fusion.info["lambda"] == 1.0 and fusion.weights.min() == pytest.approx(0.1)
    assert "AWF (lambda=1, w_min=0.1)" in result.output
    bad = CliRunner().invoke(cli, args + ["--min-weight", "0.7"])
    assert bad.exit_code == 1 and "error: " in bad.output and "infeasible" in bad.output
    same = CliRunner().invoke(cli, options + side_args("train", "train") + side_args("test", "train"))
    assert same.exit_code == 0 and "warning: " in same.output and "100 video ids also appear in" in same.output
    negative = CliRunner().invoke(cli, args + ["--lambda", "-1"])
    assert negative.exit_code == 2 and "lambda must be a finite number >= 0" in negative.output


def single_stream(s: ScoreSet) -> ScoreSet:
    return ScoreSet(s.video_ids, s.labels, s.class_names, ["rgb"], s.scores[:1])


@pytest.mark.parametrize("method", ["global", "all"])
def test_cli_fit_fusion_single_stream(tmp_path: Path, method: str) -> None:
    """One stream: global weights and every late fusion give it weight 1, so each row repeats the stream's."""
    save_scores(tmp_path / "train.npz", single_stream(two_group_scores(1, 10, "a")))
    save_scores(tmp_path / "test.npz", single_stream(two_group_scores(2, 10, "b")))
    result = CliRunner().invoke(cli, ["fit-fusion", "--train-scores", str(tmp_path / "train.npz"), "--test-scores",
                                      str(tmp_path / "test.npz"), "--method", method, "--folds", "2",
                                      "-o", str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    stream = next(line for line in lines if line.startswith("rgb "))
    fused = [line for line in lines if line.startswith(("global weights", "late average", "AWF"))]
    assert len(fused) == (3 if method == "all" else 1)
    assert any(line.startswith("global weights (rgb 1.00)") for line in fused)
    assert all(line.split()[-3:] == stream.split()[-3:] for line in fused)
    fusion = load_fusion(tmp_path / "f.json")
    assert fusion.method == ("awf" if method == "all" else "global") and fusion.weights.tolist() == [[1.0]] * 10
    if method == "all":
        assert "early: skipped" in result.output


def test_simplex_grid_of_one_stream_is_weight_one() -> None:
    assert simplex_grid(1, 20).tolist() == [[1.0]]


def test_cli_folds_beyond_the_labelled_videos_says_which_folds_to_use(tmp_path: Path) -> None:
    """Issue 28.7: "5 folds need 2..4 (the labelled videos)" becomes an instruction."""
    train = two_group_scores(1, 2, "a")
    labels = np.full(len(train.labels), -1)
    labels[:4] = train.labels[:4]
    save_scores(tmp_path / "train.npz", _with(train, labels=labels))
    save_scores(tmp_path / "test.npz", two_group_scores(2, 2, "b"))
    args = ["fit-fusion", "--train-scores", str(tmp_path / "train.npz"), "--test-scores", str(tmp_path / "test.npz"),
            "-o", str(tmp_path / "fusion.json")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (f"error: {tmp_path / 'train.npz'}: 5 folds but 4 labelled "
                                                      "videos: use --folds between 2 and 4")
    labels[1:] = -1
    save_scores(tmp_path / "train.npz", _with(train, labels=labels))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].endswith(
        "choosing lambda by cross-validation needs at least 2 labelled videos, found 1: give --lambda a value")


def test_scores_that_are_not_probabilities_are_refused_and_logits_are_converted(tmp_path: Path) -> None:
    """Scores x 1e6 (or any rows not summing to 1) are refused naming the file and the row; --logits softmaxes .npy
    logits, giving the fusion their probabilities give."""
    for side, seed in (("train", 1), ("test", 2)):
        s = two_group_scores(seed, 10, side)
        np.save(tmp_path / f"{side}_probs.npy", s.scores)  # (S, N, C)
        np.save(tmp_path / f"{side}_scaled.npy", s.scores * 1e6)
        np.save(tmp_path / f"{side}_logits.npy", np.log(s.scores) + 7.5)  # softmax gives back the probabilities
        (tmp_path / f"{side}_ids.txt").write_text("\n".join(s.video_ids))
        np.save(tmp_path / f"{side}_labels.npy", s.labels)

    def fit(kind: str, *extra: str) -> tuple:
        args = ["fit-fusion", "--stream-names", "rgb,flow", "--lambda", "1", "-o", str(tmp_path / f"{kind}.json"),
                *extra]
        for side in ("train", "test"):
            args += [f"--{side}-scores", str(tmp_path / f"{side}_{kind}.npy"), f"--{side}-ids",
                     str(tmp_path / f"{side}_ids.txt"), f"--{side}-labels", str(tmp_path / f"{side}_labels.npy")]
        return CliRunner().invoke(cli, args)

    scaled = fit("scaled")
    assert scaled.exit_code == 1
    (line,) = [line for line in scaled.output.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: {tmp_path / 'train_scaled.npy'}: stream 'rgb': 100 of 100 rows do not sum to 1 "
                           "(row 0 sums to ")
    assert line.endswith("expected softmax probabilities (for logits from another toolkit, pass --logits)")
    assert fit("logits").exit_code == 1  # logits are not probabilities either
    probabilities, logits = fit("probs"), fit("logits", "--logits")
    assert probabilities.exit_code == 0 and logits.exit_code == 0, logits.output
    np.testing.assert_allclose(load_fusion(tmp_path / "logits.json").weights,
                               load_fusion(tmp_path / "probs.json").weights, atol=1e-6)
    save_scores(tmp_path / "train.npz", two_group_scores(1, 10, "a"))
    with pytest.raises(InputError, match="no id list, labels, stream names or --logits"):
        load_scores(tmp_path / "train.npz", logits=True)
