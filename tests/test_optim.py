"""The two training recipes: the lr schedules against hand-computed values, and which parameters AdamW decays."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from actrec.cli import cli
from actrec.training.config import FROM_SCRATCH, TrainConfig, recipe
from actrec.training.optim import build_optimizer, build_scheduler, lr_factor

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)


def test_step_schedule_is_the_papers_tenfold_decay() -> None:
    factors = [lr_factor(i, schedule="step", iterations=30, warmup=0, step=10, gamma=0.1) for i in (0, 9, 10, 25)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_warmup_then_cosine_reaches_zero_at_the_last_iteration() -> None:
    def factor(i: int) -> float:
        return lr_factor(i, schedule="cosine", iterations=104, warmup=4, step=1, gamma=0.1)

    assert [factor(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factor(54) == pytest.approx(0.5)  # half-way through the 100 iterations after the warmup
    assert factor(4 + 25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert factor(104) == pytest.approx(0.0) and factor(200) == pytest.approx(0.0)


def test_scheduler_sets_the_lr_of_each_iteration_and_resumes_from_its_state() -> None:
    config = TrainConfig(optimizer="adamw", schedule="cosine", warmup_iters=2, iterations=10, lr=0.01)
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.01 * lr_factor(i, schedule="cosine", iterations=10, warmup=2, step=1, gamma=0.1) for i in range(6)]
    assert seen == pytest.approx(expected)
    resumed = build_optimizer(model, config)
    resumed_scheduler = build_scheduler(resumed, config)
    resumed.load_state_dict(optimizer.state_dict())
    resumed_scheduler.load_state_dict(scheduler.state_dict())
    assert resumed.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


def test_adamw_decays_weights_only_and_sgd_decays_everything() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW)
    decay = {group["weight_decay"]: [p.ndim for p in group["params"]] for group in adamw.param_groups}
    assert decay == {0.05: [4], 0.0: [1, 1, 1]}  # conv weight; conv bias, BN weight and bias
    sgd = build_optimizer(model, TrainConfig())
    assert isinstance(sgd, torch.optim.SGD)
    assert [(g["weight_decay"], g["momentum"], len(g["params"])) for g in sgd.param_groups] == [(5e-4, 0.9, 4)]


def test_reduced_models_start_from_the_from_scratch_recipe() -> None:
    assert (recipe("stilt").optimizer, recipe("stilt").schedule) == ("sgd", "step")
    scratch = recipe("cotlstm", reduced=True)
    assert scratch.reduced and {key: getattr(scratch, key) for key in FROM_SCRATCH} == FROM_SCRATCH
    assert scratch.batch_size == 64  # the rest stays the paper's


def test_train_command_takes_the_recipe_options(tmp_path: Path) -> None:
    data = fx.learnable_dataset(tmp_path / "data", train_per_class=1, test_per_class=0)
    common = ["--frames", data.frames, "--flow", data.flow, "--manifest", data.manifest, "--reduced", "--crop", 32,
              "--resize", 36, "--segments", 2, "--flow-length", 3, "--batch-size", 3, "--iterations", 1,
              "--workers", 0, "--quiet"]
    runs = {"scratch": [], "sgd": ["--optimizer", "sgd", "--schedule", "step", "--warmup-iters", 0, "--lr", 0.02,
                                   "--weight-decay", 1e-4, "--no-flip", "--scales", "1,0.5"]}
    for name, options in runs.items():
        result = CliRunner().invoke(cli, [str(a) for a in ["train", "stilt", "--out", tmp_path / name, *common,
                                                            *options]])
        assert result.exit_code == 0, result.output
    scratch, sgd = (json.loads((tmp_path / name / "config.json").read_text()) for name in runs)
    assert {key: scratch[key] for key in FROM_SCRATCH} == FROM_SCRATCH and scratch["flip"] is True
    assert scratch["scales"] == [1.0, 0.875, 0.75, 0.66]
    assert (sgd["optimizer"], sgd["schedule"], sgd["warmup_iters"], sgd["lr"], sgd["weight_decay"], sgd["flip"]) == (
        "sgd", "step", 0, 0.02, 1e-4, False)
    assert sgd["scales"] == [1.0, 0.5]
    bad = CliRunner().invoke(cli, [str(a) for a in ["train", "stilt", "--out", tmp_path / "bad", *common,
                                                     "--scales", "1,big"]])
    assert bad.exit_code == 2 and "expected comma-separated numbers" in bad.output
