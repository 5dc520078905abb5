"""The train and evaluate commands end to end (CliRunner), with fit-fusion on their scores and a stop by SIGTERM."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from actrec.cli import cli
from actrec.fusion.scores import load_scores
from actrec.training.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)


def _options(data: fx.TinyData, model: str, **changes: object) -> list[str]:
    values = fx.tiny_overrides(data, model, **changes)
    values.pop("reduced")
    return ["--reduced", "--quiet", *(f"--{key.replace('_', '-')}={value}" for key, value in values.items())]


def _invoke(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_train_resume_evaluate_and_fit_fusion(tmp_path):
    data = fx.learnable_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    run = tmp_path / "run"
    out = _invoke("train", "stilt", "--out", run, *_options(data, "stilt", iterations=2, workers=1)).output
    assert "train: iterations 0 -> 2" in out and (run / "config.json").is_file()
    out = _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 3, "--quiet").output
    assert "iterations 2 -> 3" in out
    checkpoint = run / "checkpoint.pt"
    evaluate = ["evaluate", "--checkpoint", checkpoint, "--positions", 2, "--crops", "center", "--workers", 0,
                "--quiet"]
    for split in ("train", "test"):
        out = _invoke(*evaluate, "--split", split, "-o", tmp_path / f"{split}.npz").output
        assert "top-1" in out and "model fused" in out
    assert len(load_scores(tmp_path / "train.npz").video_ids) == 6
    out = _invoke("fit-fusion", "--train-scores", tmp_path / "train.npz", "--test-scores", tmp_path / "test.npz",
                  "--lambda", "0.5", "-o", tmp_path / "fusion.json").output
    assert "AWF" in out
    out = _invoke(*evaluate, "-o", tmp_path / "fused.npz", "--fusion", tmp_path / "fusion.json").output
    assert "fusion (awf)" in out
    with (tmp_path / "fused.per_class.csv").open() as f:
        assert "fusion (awf)" in next(csv.reader(f))


def test_cotlstm_train_and_evaluate_report_fc2_as_the_models_fusion(tmp_path):
    data = fx.learnable_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    _invoke("train", "cotlstm", "--out", tmp_path / "run", *_options(data, "cotlstm", iterations=2))
    _invoke("evaluate", "--checkpoint", tmp_path / "run" / "checkpoint.pt", "-o", tmp_path / "test.npz",
            "--positions", 2, "--crops", "center", "--workers", 0, "--features", "--quiet")
    scores = load_scores(tmp_path / "test.npz")
    assert scores.scores.shape == (2, 3, 3) and np.allclose(scores.model_fused.sum(1), 1, atol=1e-5)
    assert not np.allclose(scores.model_fused, scores.scores.mean(0))  # FC-2, not the average of the streams
    assert scores.features["rgb"].shape == (3, 64) and scores.features["flow"].shape == (3, 32)  # FC-1, LSTM


def test_foreign_checkpoint_and_missing_data_options_are_reported(tmp_path):
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(tmp_path / "foreign.pt"), "-o",
                                      str(tmp_path / "x.npz")])
    assert result.exit_code == 1 and "foreign.pt: not a readable PyTorch checkpoint" in result.output
    result = CliRunner().invoke(cli, ["train", "stilt", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "--frames" in result.output


def test_sigterm_stops_with_a_checkpoint_that_resumes(tmp_path):
    data = fx.learnable_dataset(tmp_path / "data", train_per_class=2, test_per_class=0)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "actrec.cli", "train", "stilt", "--out", str(run),
               *_options(data, "stilt", iterations=100_000)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted: continue with --resume" in stdout
    stopped = load_checkpoint(run / "checkpoint.pt")["iteration"]
    assert stopped >= 2 and not (run / "checkpoint.pt.tmp").exists()
    _invoke("train", "stilt", "--out", run, "--resume", "--iterations", stopped + 1, "--quiet")
    with metrics.open() as f:
        assert [int(row["iteration"]) for row in csv.DictReader(f)] == list(range(1, stopped + 2))


def test_pretrained_refuses_a_training_checkpoint_and_a_missing_file_in_one_line(tmp_path):
    data = fx.learnable_dataset(tmp_path / "data", train_per_class=2, test_per_class=0)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    _invoke("train", "stilt", "--out", tmp_path / "run", *_options(data, "stilt", iterations=1))
    result = CliRunner().invoke(cli, ["train", "stilt", "--out", str(tmp_path / "again"), *_options(data, "stilt"),
                                      "--pretrained", str(checkpoint)])
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: {checkpoint} is an actrec training checkpoint, not backbone weights; "
                                     "continue its run with train --resume, or score it with evaluate --checkpoint")
    result = CliRunner().invoke(cli, ["train", "stilt", "--out", str(tmp_path / "again"), *_options(data, "stilt"),
                                      "--pretrained", str(tmp_path / "absent.pth")])
    assert result.exit_code == 2 and "expected 'imagenet' or a weights file" in result.output
