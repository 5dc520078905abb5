"""``benchmarks/device_check.sh --dry-run``: every step of the GPU check runs on the CPU with only the GPU image's
packages (av, hdf5plugin and cv2.optflow hidden by benchmarks/gpu_image/sitecustomize.py), from inputs that
``prepare_device_check.py --tiny`` made with the full install, as the device run's are made."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ("check_gpu", "tvl1_cuda_tests", "model_tests", "tvl1_throughput", "bench_train", "tvl1_compile")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("device_check")
    prepared = subprocess.run([sys.executable, str(REPO / "benchmarks" / "prepare_device_check.py"), "--tiny",
                               "--data", str(shared_data), "--out", str(root / "tiny.npz")],
                              capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(root / "out"), DATA=str(root / "tiny.npz"))
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dry run: av, hdf5plugin and cv2.optflow hidden" in proc.stdout
    return root / "out"


def test_every_step_runs_and_passes(dry_run: Path) -> None:
    summary = (dry_run / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == list(STEPS)
    assert all(re.match(r"\w+: exit 0, \d+ s$", line) for line in summary), summary
    limits = [int(n) for n in re.findall(r"^step \w+ (\d+) ", (REPO / "benchmarks" / "device_check.sh").read_text(),
                                         re.M)]
    assert len(limits) == len(STEPS) and sum(limits) <= 7 * 60


def test_each_step_left_its_rows(dry_run: Path) -> None:
    check = (dry_run / "check_gpu.log").read_text()
    assert len(re.findall(r"^\| .* \| pass \| ", check, re.M)) == 4  # self-check, two kernel sets, training
    assert "direct: bit-identical to the CPU; runs as triton" in check
    for step in ("tvl1_cuda_tests", "model_tests"):
        assert re.search(r"\d+ passed, \d+ skipped", (dry_run / f"{step}.log").read_text())
    rows = (dry_run / "tvl1_table.md").read_text().splitlines()[2:]
    paths = ["| triton", "| triton-k4", "| triton-direct", "| eager", "| compile"]
    assert [row.split(" | ")[0] for row in rows] == paths
    assert "ours / reference" in (dry_run / "bench_train.log").read_text()
