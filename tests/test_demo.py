"""`actrec demo` at a reduced size: every stage runs for real and the tables and files come out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from actrec.cli import cli
from actrec.demo import (CHAIN_ORDER, RUNS, DemoConfig, awf_check_line, awf_favours, data_commands, demo_commands,
                         model_commands, resume_started_training)
from actrec.data_manifests.manifest import read_manifest
from actrec.fusion.model import LateFusion
from actrec.pipeline.synth import CLASSES

CLASSES_IN_ORDER = tuple(cls.name for cls in CLASSES)


def test_demo_end_to_end_at_reduced_size(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(workdir), "--videos-per-class", "5",
                                      "--iterations", "4", "--cotlstm-iterations", "3", "--frames", "12",
                                      "--size", "32"])
    assert result.exit_code == 0, result.output
    for command in ("$ actrec synth", "$ actrec extract-frames", "$ actrec compute-flow", "$ actrec train stilt",
                    "--no-co-attention", "$ actrec train cotlstm", "$ actrec evaluate", "$ actrec fit-fusion"):
        assert command in result.output
    for title, rows in (("STILT ablation (Table 4 layout)", ["spatial stream", "temporal stream",
                                                              "two-stream (late average)",
                                                              "+ co-attention (late average)",
                                                              "+ co-attention + AWF"]),
                        ("STILT fusion methods (Table 5 layout)", ["late average", "early (linear SVM on features)",
                                                                   "AWF"]),
                        ("CoT-LSTM (Table II layout)", ["spatial", "temporal", "fusion (FC-2)"])):
        assert title in result.output
        assert all(row in result.output for row in rows)
    tested = sum(1 for row in read_manifest(workdir / "synth" / "manifest.csv") if row.split == "test")
    assert 0 < tested < 60 and f"Test top-1 on {tested} videos: one video is {100 / tested:.1f} points" in result.output
    check = re.search(r"AWF check \(STILT, fusion/stilt_weights.png\): RGB weight > 0.5 on (\d)/4 appearance-only "
                      r"classes \(goal >= 3\), flow weight > 0.5 on (\d)/8 motion-only classes \(goal >= 6\): "
                      r"(as designed|NOT as designed)", result.output)
    assert check, result.output
    saved = json.loads((workdir / "demo_results.json").read_text())
    top1, awf = saved["top1"], saved["awf"]
    assert (awf["appearance_rgb"], awf["motion_flow"]) == (int(check[1]), int(check[2]))
    assert check[3] == ("as designed" if awf["appearance_rgb"] >= 3 and awf["motion_flow"] >= 6 else "NOT as designed")
    assert len(top1) == 11 and all(0.0 <= v <= 100.0 for v in top1.values())
    for path in ("synth/manifest.csv", "frames/actrec_store.json", "flow/actrec_store.json",
                 "runs/stilt/checkpoint.pt", "runs/two-stream/metrics.csv", "runs/cotlstm/config.json",
                 "scores/stilt_train.npz", "scores/cotlstm_test.npz", "fusion/stilt.json", "fusion/stilt_weights.png",
                 "fusion/stilt_early.json"):
        assert (workdir / path).exists(), path
    assert list((workdir / "scores").glob("*.confusion.png"))


def test_awf_check_counts_classes_whose_weights_favour_their_stream() -> None:
    names = list(CLASSES_IN_ORDER)
    weights = np.full((12, 2), 0.5)  # (rgb, flow) per class; a tie favours neither
    weights[names.index("shape_star")] = weights[names.index("texture_checker")] = (0.75, 0.25)
    weights[names.index("texture_stripes")] = (0.25, 0.75)
    for name in ("move_left", "move_up", "rotate_cw", "approach", "recede", "move_down"):
        weights[names.index(name)] = (0.0, 1.0)
    fusion = LateFusion("awf", ["flow", "rgb"], names, weights[:, ::-1].copy())  # columns in the streams' order
    counts = awf_favours(fusion)
    assert counts == {"appearance_rgb": 2, "motion_flow": 6}
    assert awf_check_line(counts).endswith("NOT as designed")
    assert awf_check_line({"appearance_rgb": 3, "motion_flow": 6}).endswith(": as designed")


def test_rerun_resumes_a_started_training(tmp_path: Path) -> None:
    commands = [argv for argv in demo_commands(tmp_path, DemoConfig()) if argv[0] == "train"]
    assert all(resume_started_training(argv) == argv for argv in commands)
    (tmp_path / "runs" / "stilt").mkdir(parents=True)
    (tmp_path / "runs" / "stilt" / "checkpoint.pt").write_bytes(b"")
    resumed = [argv for argv in map(resume_started_training, commands) if argv[-1] == "--resume"]
    assert len(resumed) == 1 and resumed[0][resumed[0].index("--out") + 1] == str(tmp_path / "runs" / "stilt")


def test_model_chains_share_no_output_and_cover_every_run(tmp_path: Path) -> None:
    """The chains run side by side: together they are every model command, and no two write the same file."""
    assert sorted(CHAIN_ORDER) == sorted(RUNS)
    outputs = [argv[argv.index(flag) + 1] for run in RUNS for argv in model_commands(tmp_path, DemoConfig(), run)
               for flag in ("--out", "-o", "--plot") if flag in argv]
    assert len(outputs) == len(set(outputs))
    chained = [argv for run in RUNS for argv in model_commands(tmp_path, DemoConfig(), run)]
    assert chained == demo_commands(tmp_path, DemoConfig())[3:]


def test_data_commands_carry_the_configured_sizes_and_tvl1_settings(tmp_path: Path) -> None:
    """What DemoConfig sets reaches the commands: videos and splits to synth, the TV-L1 pyramid and stop to
    compute-flow (which the end-to-end test above then runs for real)."""
    config = DemoConfig(videos_per_class=7, splits=(0.6, 0.1, 0.3), nscales=2, warps=4, epsilon=0.03)
    synth, _, flow = data_commands(tmp_path, config)

    def value(argv: list[str], flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert (value(synth, "--videos-per-class"), value(synth, "--splits")) == ("7", "0.6,0.1,0.3")
    assert [value(flow, flag) for flag in ("--nscales", "--warps", "--epsilon")] == ["2", "4", "0.03"]


def test_train_commands_carry_the_configured_recipe(tmp_path: Path) -> None:
    """Every model is trained with DemoConfig's recipe: iterations and batch (CoT-LSTM its own), lr, dropout (0 by
    default) and the decoded-video cache."""
    config = DemoConfig(iterations=9, cotlstm_iterations=5, batch_size=3, cotlstm_batch_size=2, lr=0.002,
                        dropout=0.25, cache_mb=7)
    trains = {run: argv for run in RUNS for argv in model_commands(tmp_path, config, run) if argv[0] == "train"}
    assert len(trains) == len(RUNS)
    for run, argv in trains.items():
        flags = ("--iterations", "--batch-size", "--lr", "--dropout", "--cache-mb")
        assert [argv[argv.index(flag) + 1] for flag in flags] == (
            ["5", "2", "0.002", "0.25", "7"] if run == "cotlstm" else ["9", "3", "0.002", "0.25", "7"])
    assert DemoConfig().dropout == 0.0
