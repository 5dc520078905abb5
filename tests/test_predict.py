"""`actrec predict` on real clips with a reduced model trained in the test; bad clips are isolated."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

import pytest
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.flow import FlowOptions, compute_flow
from actrec.pipeline.frames import ExtractOptions, extract_frames
from actrec.pipeline.synth import pick_h264_encoder, write_h264
from actrec.pipeline.tvl1 import TVL1Params

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)

LIGHT = TVL1Params(nscales=2, warps=1, inner_iterations=10, outer_iterations=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("predict")
    rows = [ManifestRow("tai_chi", "kinetics_tai_chi.mp4", 0, "tai chi", "train"),
            ManifestRow("skate", "kinetics_skateboarding.mp4", 1, "skateboarding", "train"),
            ManifestRow("wrestle", "kinetics_arm_wrestling.mp4", 2, "arm wrestling", "train")]
    write_manifest(root / "manifest.csv", rows)
    extract_frames(rows, videos_dir, root / "frames", ExtractOptions(resize=ResizeSpec(48, 36), fps=2.0),
                   progress=False)
    compute_flow(root / "frames", root / "flow", FlowOptions(params=LIGHT, backend="opencv"), progress=False)
    result = CliRunner().invoke(cli, ["train", "stilt", "--frames", str(root / "frames"), "--flow", str(root / "flow"),
                                      "--manifest", str(root / "manifest.csv"), "--out", str(root / "run"),
                                      "--reduced", "--crop", "32", "--resize", "36", "--segments", "2",
                                      "--flow-length", "3", "--batch-size", "3", "--iterations", "3",
                                      "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    return root / "run" / "checkpoint.pt"


def test_predict_returns_k_classes_with_probabilities(checkpoint: Path, videos_dir: Path) -> None:
    clip = videos_dir / "kinetics_clean_and_jerk.mp4"
    result = CliRunner().invoke(cli, ["predict", str(clip), "--checkpoint", str(checkpoint), "--topk", "3",
                                      "--positions", "3", "--crops", "center", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["score_kind"] == "probability" and document["failures"] == []
    (prediction,) = document["predictions"]
    assert prediction["video"] == str(clip)
    names = [t["class"] for t in prediction["top"]]
    scores = [t["score"] for t in prediction["top"]]
    assert sorted(names) == ["arm wrestling", "skateboarding", "tai chi"]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-5)  # all 3 classes
    text = CliRunner().invoke(cli, ["predict", str(clip), "--checkpoint", str(checkpoint), "--topk", "2",
                                    "--positions", "2", "--crops", "center", "--quiet"])
    assert text.exit_code == 0 and text.output.count("  1. ") == 1 and "  2. " in text.output
    assert text.output.startswith("scores: probabilities of the model's own fusion of its streams (they sum to 1")


def test_predict_errors(checkpoint: Path, videos_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    result = CliRunner().invoke(cli, ["predict", str(broken), "--checkpoint", str(checkpoint)])
    assert result.exit_code == 1 and "broken.mp4: not a readable video" in result.output
    foreign = tmp_path / "foreign.pt"
    import torch
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    result = CliRunner().invoke(cli, ["predict", str(videos_dir / "kinetics_tai_chi.mp4"), "--checkpoint",
                                      str(foreign)])
    assert result.exit_code == 1 and "not an actrec training checkpoint" in result.output


def test_bad_clips_are_reported_by_their_path_while_good_clips_are_predicted(checkpoint: Path, videos_dir: Path,
                                                                             tmp_path: Path) -> None:
    good = videos_dir / "kinetics_clean_and_jerk.mp4"
    corrupted = videos_dir / "edge_cases" / "decord_corrupted.mp4"  # decodes partly: kept, with a warning
    png = tmp_path / "picture.avi"  # a PNG renamed .avi
    cv2.imwrite(str(tmp_path / "picture.png"), np.full((36, 48, 3), 90, np.uint8))
    shutil.move(tmp_path / "picture.png", png)
    one_frame = tmp_path / "one_frame.mp4"  # one frame at the training rate: no flow
    write_h264(one_frame, np.full((1, 36, 48, 3), 120, np.uint8), fps=8, encoder=pick_h264_encoder())
    text = tmp_path / "text.mp4"
    text.write_text("not a video\n" * 20)
    args = [str(good), str(png), str(one_frame), str(corrupted), str(text)]
    result = CliRunner().invoke(cli, ["predict", *args, "--checkpoint", str(checkpoint), "--topk", "1",
                                      "--positions", "2", "--crops", "center", "--json", "--quiet"])
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert [p["video"] for p in document["predictions"]] == [str(good), str(corrupted)]
    failures = {f["video"]: f["reason"] for f in document["failures"]}  # issue 28.5: failures in the JSON too
    assert list(failures) == [str(png), str(text), str(one_frame)]
    assert failures[str(png)].startswith("not a video but a single PNG image")
    assert failures[str(text)].startswith("not a readable video")
    assert failures[str(one_frame)].startswith("too short for flow")
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert failed == [f"failed: {video}: {reason}" for video, reason in failures.items()]
    assert "actrec-predict-" not in result.stderr  # no temporary folder's path
    assert f"warning: {corrupted}: partial video" in result.stderr


def _not_called(*args, **kwargs):
    raise AssertionError("a video was decoded before the options were checked")


def test_gpu_without_cuda_is_one_line_and_exit_2_before_any_work(checkpoint: Path, videos_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 28.2: as compute-flow, train and evaluate, not a traceback after decoding the videos."""
    import torch

    from actrec.training import predict as predict_mod

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(predict_mod, "extract_frames", _not_called)
    result = CliRunner().invoke(cli, ["predict", str(videos_dir / "kinetics_tai_chi.mp4"), "--checkpoint",
                                      str(checkpoint), "--gpu"])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [result.output.strip()]
    assert result.output.startswith("error: --gpu was given but CUDA is not available")


def _awf_file(path: Path, class_names: list[str]) -> Path:
    """A fusion file with a different weight pair per class, as AWF fits them (rows on the simplex)."""
    from actrec.fusion.model import LateFusion, save_fusion

    weights = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]])[:len(class_names)]
    save_fusion(path, LateFusion("awf", ["rgb", "flow"], class_names, weights, {"lambda": 0.3}))
    return path


def test_awf_scores_are_called_fused_scores_not_probabilities(checkpoint: Path, videos_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 28.3: per-class weights (STILT eq. 9) give scores that do not sum to 1 over the classes: the text,
    the JSON and its key say fused score, and the values are eq. 9 of the model's stream probabilities."""
    from actrec.training import predict as predict_mod

    classes = ["tai chi", "skateboarding", "arm wrestling"]
    fusion = _awf_file(tmp_path / "fusion.json", classes)
    streams = []
    evaluate = predict_mod.evaluate

    def keeping_the_stream_scores(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        streams.append(result.scores.scores[:, 0])  # (S, C) of the one video
        return result

    monkeypatch.setattr(predict_mod, "evaluate", keeping_the_stream_scores)
    args = ["predict", str(videos_dir / "kinetics_clean_and_jerk.mp4"), "--checkpoint", str(checkpoint),
            "--fusion", str(fusion), "--topk", "3", "--positions", "2", "--crops", "center", "--quiet"]
    document = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout)
    assert document["score_kind"] == "awf fused score"
    top = document["predictions"][0]["top"]
    assert all(set(entry) == {"class", "score"} for entry in top)
    weights = {"tai chi": (0.9, 0.1), "skateboarding": (0.2, 0.8), "arm wrestling": (0.5, 0.5)}
    by_hand = {c: weights[c][0] * streams[0][0, i] + weights[c][1] * streams[0][1, i] for i, c in enumerate(classes)}
    assert {t["class"]: t["score"] for t in top} == pytest.approx(by_hand, abs=1e-6)
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert text.output.startswith("scores: AWF fused scores (STILT eq. 9)") and "not probabilities" in text.output
    assert text.output.count("  1. ") == 1 and "  3. " in text.output


def test_a_fusion_file_for_other_classes_is_named_before_any_work(checkpoint: Path, videos_dir: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 29.8: the one-line error names the fusion file (and the checkpoint it does not fit)."""
    from actrec.training import predict as predict_mod

    monkeypatch.setattr(predict_mod, "extract_frames", _not_called)
    clip = str(videos_dir / "kinetics_tai_chi.mp4")
    four = _awf_file(tmp_path / "four.json", ["tai chi", "skateboarding", "arm wrestling", "juggling"])
    result = CliRunner().invoke(cli, ["predict", clip, "--checkpoint", str(checkpoint), "--fusion", str(four)])
    assert result.exit_code == 1
    assert result.output == f"error: {checkpoint}: 3 classes but {four} has 4\n"
    renamed = _awf_file(tmp_path / "renamed.json", ["tai chi", "skating", "arm wrestling"])
    result = CliRunner().invoke(cli, ["predict", clip, "--checkpoint", str(checkpoint), "--fusion", str(renamed)])
    assert result.exit_code == 1
    assert result.output == (f"error: {checkpoint} against {renamed}: class 1 is named 'skateboarding', "
                             "expected 'skating'\n")


def test_failures_are_named_as_given_and_each_stage_shows_a_bar(checkpoint: Path, videos_dir: Path,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 28.5: a relative path stays relative in the messages and the JSON; predict is not silent while it
    decodes, computes flow and scores."""
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "notes.mp4").write_text("meeting notes, not a video\n")
    (tmp_path / "pred" / "wrestling.mp4").symlink_to(videos_dir / "kinetics_arm_wrestling.mp4")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["predict", "pred/wrestling.mp4", "pred/notes.mp4", "--checkpoint",
                                      str(checkpoint), "--topk", "1", "--positions", "2", "--crops", "center",
                                      "--json"])
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert [p["video"] for p in document["predictions"]] == ["pred/wrestling.mp4"]
    assert [f["video"] for f in document["failures"]] == ["pred/notes.mp4"]
    assert document["failures"][0]["reason"].startswith("not a readable video")
    assert "failed: pred/notes.mp4: not a readable video" in result.stderr
    assert str(tmp_path) not in result.stderr + result.stdout
    bars = {s.split(":")[0] for s in re.split(r"[\r\n]", result.stderr) if "%|" in s or "it/s" in s}
    assert {"extract-frames", "compute-flow", "evaluate test"} <= bars, result.stderr
