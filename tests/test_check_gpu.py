"""``actrec check-gpu``: exit 2 without a GPU, and its checks, table and exit codes run on the CPU (dry-run sizes).

The Triton rows run under ``TRITON_INTERPRET=1`` in the device check's dry run (tests/test_device_check.py); here,
without the interpreter, they report themselves skipped and the PyTorch checks run for real.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from actrec import gpucheck
from actrec.cli import cli
from actrec.pipeline.tvl1 import solver

CPU = ["check-gpu", "--device", "cpu", "--tiny"]


@pytest.fixture(autouse=True)
def no_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["check-gpu"])
    assert result.exit_code == 2
    assert result.output.startswith("error: no CUDA GPU is visible (torch ") and result.output.count("\n") == 1


def test_the_checks_run_on_the_cpu_and_print_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, CPU)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"torch: {torch.__version__}" in lines and "device: cpu" in lines
    rows = [line for line in lines if line.startswith("| ") and "| check |" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| triton self-check", "| tv-l1 triton 64x48",
                                                     "| tv-l1 torch 64x48", "| stilt reduced bf16, batch 2"]
    assert "skipped: Triton runs on CUDA" in rows[0] and "skipped" in rows[1]
    assert "| pass | " in rows[2] and "pairs/s (batch 2" in rows[2] and "against the true motion" in rows[2]
    assert "| pass | " in rows[3] and "clips/s" in rows[3]


def test_json_holds_the_environment_and_every_check() -> None:
    result = CliRunner().invoke(cli, [*CPU, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["passed"] and report["environment"]["torch"] == torch.__version__
    torch_row = report["checks"][2]
    assert torch_row["pairs_per_s"] > 0 and torch_row["motion_error_px"] < 1.0  # the true motion is recovered


def test_a_failing_check_is_marked_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    real = solver.tvl1_flow
    monkeypatch.setattr(solver, "tvl1_flow", lambda *a, **k: real(*a, **k) * float("nan"))  # a broken solver
    result = CliRunner().invoke(cli, CPU)
    assert result.exit_code == 1
    (row,) = [line for line in result.output.splitlines() if line.startswith("| tv-l1 torch")]
    assert "| FAIL | " in row and "mean error nan px" in row


def test_generated_pairs_move_by_their_true_shift() -> None:
    sizes = gpucheck.CheckSizes(pairs=4)
    img0, img1, shifts = gpucheck.generated_pairs(sizes)
    assert img0.shape == (4, 256, 340) and img0.dtype == np.uint8
    assert np.allclose(np.hypot(*shifts.T), 1.5)
    assert not np.array_equal(img0, img1)
