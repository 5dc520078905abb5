"""`actrec predict` on real clips with a reduced model trained in the test; bad clips are isolated."""

from __future__ import annotations

import json
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
    result = CliRunner().invoke(cli, ["predict", str(clip), "--checkpoint", str(checkpoint), "--topk", "2",
                                      "--positions", "3", "--crops", "center", "--json"])
    assert result.exit_code == 0, result.output
    (prediction,) = json.loads(result.output[result.output.index("["):])
    assert prediction["video"] == str(clip)
    names = [t["class"] for t in prediction["top"]]
    probabilities = [t["probability"] for t in prediction["top"]]
    assert len(names) == 2 and set(names) <= {"tai chi", "skateboarding", "arm wrestling"}
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    text = CliRunner().invoke(cli, ["predict", str(clip), "--checkpoint", str(checkpoint), "--topk", "3",
                                    "--positions", "2", "--crops", "center"])
    assert text.exit_code == 0 and text.output.count("  1. ") == 1 and "  3. " in text.output


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
                                      "--positions", "2", "--crops", "center", "--json"])
    assert result.exit_code == 1, result.output
    predicted = [p["video"] for p in json.loads(result.stdout)]
    assert predicted == [str(good), str(corrupted)]
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 3
    assert f"{png}: not a video but a single PNG image" in failed[0]
    assert f"failed: {one_frame}: too short for flow" in failed[2]
    assert f"{text}: not a readable video" in failed[1]
    assert "actrec-predict-" not in result.stderr  # no temporary folder's path
    assert f"warning: {corrupted}: partial video" in result.stderr
