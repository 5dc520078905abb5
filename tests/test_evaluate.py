"""evaluate: the score file round-trips, its scores follow the test protocol, and accuracies match hand counts."""

from __future__ import annotations

import csv
import re
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.manifest import read_manifest
from actrec.errors import InputError
from actrec.fusion.model import EarlyFusion, LateFusion, save_fusion
from actrec.fusion.scores import load_scores
from actrec.training.augment import AugmentParams, eval_frames, eval_view, view_boxes
from actrec.training import evaluate as evaluate_module, trainer
from actrec.training.checkpoint import load_checkpoint, save_checkpoint
from actrec.training.config import TrainConfig, apply_overrides, resolve_config
from actrec.training.datasets import ClipSource, EvalVideos
from actrec.training.evaluate import EvalOptions, evaluate, grouped_confusion
from actrec.training.models import build_model
from actrec.training.trainer import train

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = fx.learnable_dataset(root, train_per_class=2, test_per_class=2)
    train(resolve_config("stilt", overrides=fx.tiny_overrides(data, iterations=3)), root / "run", progress=False)
    return root / "run" / "checkpoint.pt", data


def test_score_file_round_trips_and_accuracy_matches_a_hand_count(run, tmp_path):
    checkpoint, data = run
    options = EvalOptions(positions=3, ten_crop=False, features=True, workers=0)
    result = evaluate(checkpoint, tmp_path / "test.npz", options, progress=False)
    scores = load_scores(tmp_path / "test.npz")
    rows = [r for r in read_manifest(data.manifest) if r.split == "test"]
    assert scores.video_ids == [r.video_id for r in rows] and scores.labels.tolist() == [r.label for r in rows]
    assert scores.stream_names == ["rgb", "flow"] and scores.class_names == ["class_0", "class_1", "class_2"]
    assert scores.scores.shape == (2, 6, 3) and np.allclose(scores.scores.sum(-1), 1, atol=1e-5)
    assert np.allclose(scores.model_fused, scores.scores.mean(0), atol=1e-6)  # STILT: mean of the two softmax
    assert scores.features["rgb"].shape == scores.features["flow"].shape == (6, 256)  # 32 x width
    by_name = {row.name: row for row in result.rows}
    for name, matrix in [("rgb", scores.scores[0]), ("flow", scores.scores[1]), ("model fused", scores.model_fused)]:
        hits = [int(np.argmax(matrix[i]) == scores.labels[i]) for i in range(6)]
        assert by_name[name].top1 == pytest.approx(100 * sum(hits) / 6)
        per_class = [100 * sum(h for h, y in zip(hits, scores.labels) if y == c) / 2 for c in range(3)]
        assert by_name[name].mean_class == pytest.approx(sum(per_class) / 3)
        assert by_name[name].top5 == 100.0  # 3 classes
    with (tmp_path / "test.per_class.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [int(row["videos"]) for row in table] == [2, 2, 2]
    assert (tmp_path / "test.confusion.png").stat().st_size > 1000
    assert "model fused" in result.table


def test_scores_are_the_mean_softmax_over_the_protocols_views(run, tmp_path):
    checkpoint, data = run
    ten = evaluate(checkpoint, tmp_path / "ten.npz", EvalOptions(positions=2, ten_crop=True, chunk=3, workers=0),
                   progress=False).scores
    saved = load_checkpoint(checkpoint)
    config = apply_overrides(TrainConfig(), saved["config"], "test")
    model = build_model(config, 3)
    model.load_state_dict(saved["model"])
    model.eval()
    rows = [r for r in read_manifest(data.manifest) if r.split == "test"]
    source = ClipSource(data.frames, data.flow, rows, config.flow_length)
    rgb, flow, _ = EvalVideos(source, 2)[0]
    rgb, flow = eval_frames(rgb, flow, source.bound, AugmentParams(crop=32, resize=36), square=False)
    views = [eval_view(rgb, flow, box, flip) for box, flip in view_boxes(36, 36, 32, ten_crop=True)]
    with torch.no_grad():
        output = model(torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views]).flatten(2, 3))
    expected = output.spatial_logits.softmax(1).mean(0)  # 10 views, each attending over the 2 positions
    assert np.allclose(ten.scores[0, 0], expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_a_run_trained_with_amp_is_scored_in_full_precision_on_the_cpu(run, tmp_path, amp):
    checkpoint, _ = run
    saved = load_checkpoint(checkpoint)  # trained with amp auto: full precision on the CPU
    saved["config"] = {**saved["config"], "amp": amp}  # as if trained on GPUs with --amp fp16 / bf16
    (tmp_path / "gpu_run").mkdir()
    save_checkpoint(tmp_path / "gpu_run" / "checkpoint.pt", saved)
    options = EvalOptions(positions=2, ten_crop=False, workers=0)
    as_trained = evaluate(tmp_path / "gpu_run" / "checkpoint.pt", tmp_path / "amp.npz", options, progress=False)
    full = evaluate(checkpoint, tmp_path / "full.npz", options, progress=False)
    assert np.array_equal(as_trained.scores.scores, full.scores.scores)
    assert np.array_equal(as_trained.scores.model_fused, full.scores.model_fused)


def test_evaluation_prepares_the_model_like_training(run, tmp_path, monkeypatch):
    """evaluate puts the model in training's memory format by training's rule (channels_last for a reduced model,
    on the CPU too), and the format changes the scores by float rounding only."""
    checkpoint, _ = run
    assert evaluate_module.to_channels_last is trainer.to_channels_last  # the one rule of both
    prepared = []

    def recorded(model: torch.nn.Module, device: torch.device, reduced: bool) -> torch.nn.Module:
        prepared.append(trainer.to_channels_last(model, device, reduced))
        return prepared[-1]

    options = EvalOptions(positions=2, ten_crop=False, workers=0)
    monkeypatch.setattr(evaluate_module, "to_channels_last", recorded)
    channels_last = evaluate(checkpoint, tmp_path / "channels_last.npz", options, progress=False).scores
    assert len(prepared) == 1 and not prepared[0].training
    assert prepared[0].temporal_backbone.layer1[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(evaluate_module, "to_channels_last", lambda model, device, reduced: model)
    contiguous = evaluate(checkpoint, tmp_path / "contiguous.npz", options, progress=False).scores
    assert np.allclose(channels_last.scores, contiguous.scores, atol=1e-5)


def test_grouped_confusion_keeps_the_most_frequent_classes_and_an_other_group():
    labels = np.array([0, 0, 0, 1, 1, 2, 3])
    predicted = np.array([0, 0, 1, 1, 3, 2, 0])
    top, matrix = grouped_confusion(labels, predicted, num_classes=4, top=2)
    assert top == [0, 1]
    expected = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=float)  # classes 2 and 3 form "other"
    assert np.allclose(matrix, expected / expected.sum(1, keepdims=True))
    top, matrix = grouped_confusion(labels, predicted, num_classes=4, top=10)
    assert top == [0, 1, 2, 3] and matrix.shape == (4, 4)


def _damage_flow(data, video_id: str, flow_index: int, out: Path) -> Path:
    """A copy of the run's flow store with 8 bytes flipped in the middle of one flow of one video."""
    shutil.copytree(data.flow, out)
    shard = next(out.glob("flow-*.h5"))
    with h5py.File(shard, "r") as f:
        info = f[f"videos/{video_id}/flow"].id.get_chunk_info(flow_index)
    raw = bytearray(shard.read_bytes())
    middle = info.byte_offset + info.size // 2
    raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
    shard.write_bytes(bytes(raw))
    return shard


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_video_is_listed_and_every_other_video_is_scored(run, tmp_path, workers):
    checkpoint, data = run
    shard = _damage_flow(data, "c1_v3", 2, tmp_path / "flow")
    output = tmp_path / "scores.npz"
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(checkpoint), "-o", str(output), "--flow",
                                      str(tmp_path / "flow"), "--positions", "2", "--crops", "center", "--workers",
                                      str(workers), "--quiet"])
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("failed: ")]
    assert failed == [f"failed: {shard}: video 'c1_v3', flow 2: checksum mismatch (Fletcher-32): the shard is damaged"]
    assert "evaluate: 1 videos could not be read and are not in the scores" in result.output
    scores = load_scores(output)
    expected = [r.video_id for r in read_manifest(data.manifest) if r.split == "test" and r.video_id != "c1_v3"]
    assert scores.video_ids == expected and scores.scores.shape == (2, 5, 3)


def test_outputs_are_checked_before_any_video_is_scored(run, tmp_path, monkeypatch):
    checkpoint, _ = run

    def never(*args, **kwargs):
        raise AssertionError("a video was scored before the outputs were checked")

    monkeypatch.setattr(evaluate_module._Scorer, "add_video", never)
    classes = ["class_0", "class_1", "class_2"]
    fusions = {"truncated": "not a readable fusion JSON", "classes": "fusion of 4 classes, but the model has 3",
               "streams": "fusion of streams ['rgb', 'depth']", "early": "early fusion needs the streams' features",
               "early_sizes": "early fusion of features of sizes [100, 100], but this model's are [256, 256]"}
    for name, problem in fusions.items():
        path = tmp_path / f"{name}.json"
        if name.startswith("early"):
            size = 100 if name == "early_sizes" else 256  # the reduced STILT's heads take 32 x width = 256
            save_fusion(path, EarlyFusion(["rgb", "flow"], classes, [size, size], np.zeros(2 * size, np.float32),
                                          np.ones(2 * size, np.float32), np.zeros((3, 2 * size), np.float32),
                                          np.zeros(3, np.float32)))
        else:
            streams = ["rgb", "depth"] if name == "streams" else ["rgb", "flow"]
            names = classes + ["class_3"] if name == "classes" else classes
            save_fusion(path, LateFusion("average", streams, names, np.full((len(names), 2), 0.5)))
        if name == "truncated":
            path.write_text(path.read_text()[:40])
        with pytest.raises(InputError, match=re.escape(problem)) as caught:
            evaluate(checkpoint, tmp_path / "s.npz", EvalOptions(fusion=str(path), workers=0,
                                                                 features=name == "early_sizes"), progress=False)
        assert str(path) in str(caught.value)


def test_a_read_only_output_folder_is_refused_before_any_work(run, read_only_dir, monkeypatch):
    checkpoint, _ = run
    monkeypatch.setattr(evaluate_module, "load_checkpoint", lambda *a: pytest.fail("work began"))
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(checkpoint), "-o",
                                      str(read_only_dir / "scores.npz"), "--quiet"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [f"error: {read_only_dir}: cannot write the score file here (Read-only "
                                          "file system); choose another -o"]
