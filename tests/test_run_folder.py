"""A run folder: checkpoints with a SHA-256, paths that work from any directory, true summary figures (CliRunner).

- Issue 29 item 2: a checkpoint with flipped bytes is refused in one line naming it; one without a checksum file
  (written before) still loads; a write stopped between its two renames still loads and is settled.
- Issue 28 item 1: config.json holds absolute paths; evaluate and --resume work from another directory, --resume
  accepts the same paths typed differently; a missing path says it came from the run's config (and, for runs saved
  with relative paths, that it was looked up in the current directory).
- Issue 28 items 6 and 7: the last loss of a finished or early-stopped run, elapsed_s continuing on resume, and the
  warning for a run shorter than its warmup.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from actrec.cli import cli
from actrec.training.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> fx.TinyData:
    return fx.learnable_dataset(tmp_path_factory.mktemp("tiny"), train_per_class=2, test_per_class=1)


def _options(data: fx.TinyData, *, paths: bool = True, **changes: object) -> list[str]:
    """Training options of a tiny CPU run on ``data`` (no warmup unless changed), with its paths or without."""
    values = fx.tiny_overrides(data, **{"warmup_iters": 0, **changes})
    values.pop("reduced")
    if not paths:
        for name in ("frames", "flow", "manifest"):
            values.pop(name)
    return ["--reduced", "--quiet", *(f"--{key.replace('_', '-')}={value}" for key, value in values.items())]


def _invoke(*args: object, code: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _one_error(output: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in output
    return line


def _evaluate(checkpoint: Path, out: Path) -> list[object]:
    return ["evaluate", "--checkpoint", checkpoint, "-o", out, "--positions", 2, "--crops", "center", "--workers", 0,
            "--quiet"]


# Issue 29 item 2: checkpoints carry a SHA-256

def test_a_checkpoint_with_flipped_bytes_is_refused_in_one_line_naming_it(data, tmp_path):
    run = tmp_path / "run"
    _invoke("train", "stilt", "--out", run, *_options(data, iterations=1))
    checkpoint = run / "checkpoint.pt"
    content = bytearray(checkpoint.read_bytes())
    assert (run / "checkpoint.pt.sha256").read_text() == f"{hashlib.sha256(content).hexdigest()}  checkpoint.pt\n"
    middle = len(content) // 2
    content[middle:middle + 8] = bytes(255 - b for b in content[middle:middle + 8])
    checkpoint.write_bytes(content)
    expected = (f"error: {checkpoint}: corrupt checkpoint: its SHA-256 does not match checkpoint.pt.sha256 (changed "
                "on disk or in a copy after it was written); use an intact copy of the run folder")
    resumed = _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 2, "--quiet", code=1)
    assert _one_error(resumed.output) == expected
    evaluated = _invoke(*_evaluate(checkpoint, tmp_path / "scores.npz"), code=1)
    assert _one_error(evaluated.output) == expected


def test_a_checkpoint_without_a_checksum_file_still_loads_and_gets_one(data, tmp_path):
    run = tmp_path / "run"
    _invoke("train", "stilt", "--out", run, *_options(data, iterations=1))
    (run / "checkpoint.pt.sha256").unlink()  # as checkpoints written before checksums existed
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 1
    assert "iterations 1 -> 2" in _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 2).output
    assert (run / "checkpoint.pt.sha256").read_text().startswith(
        hashlib.sha256((run / "checkpoint.pt").read_bytes()).hexdigest())


def test_a_write_stopped_between_its_two_renames_loads_and_is_settled_at_the_next_start(data, tmp_path):
    run = tmp_path / "run"
    sums = run / "checkpoint.pt.sha256"
    _invoke("train", "stilt", "--out", run, *_options(data, iterations=1))
    old = sums.read_text()
    _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 2)
    sums.rename(run / "checkpoint.pt.sha256.tmp")  # the new checkpoint is in place, its checksum not yet
    sums.write_text(old)
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 2
    _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 3)
    assert not list(run.glob("*.tmp"))
    assert sums.read_text().startswith(hashlib.sha256((run / "checkpoint.pt").read_bytes()).hexdigest())


# Issue 28 item 1: run folders work from any directory

def test_a_run_folder_works_from_another_directory(data, tmp_path, monkeypatch):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    typed = {name: os.path.relpath(getattr(data, name), start) for name in ("frames", "flow", "manifest")}
    _invoke("train", "stilt", "--out", "runs/stilt", *_options(data, paths=False, iterations=1),
            *(f"--{name}={path}" for name, path in typed.items()))
    saved = json.loads((start / "runs/stilt/config.json").read_text())
    assert {name: saved[name] for name in typed} == {name: str(getattr(data, name).resolve()) for name in typed}

    monkeypatch.chdir(elsewhere)
    run = "../start/runs/stilt"
    assert "top-1" in _invoke(*_evaluate(Path(run, "checkpoint.pt"), Path("test.npz"))).output
    assert "iterations 1 -> 2" in _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 2).output
    same = [f"--{name}={getattr(data, name)}" for name in typed]  # absolute now, relative to another folder before
    assert "iterations 2 -> 3" in _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 3, *same).output
    other = _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 4, f"--frames={data.flow}", code=1)
    assert "these settings differ from it: frames " in _one_error(other.output)


def test_a_missing_path_of_a_runs_config_says_where_it_came_from(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _invoke("train", "stilt", "--out", run, *_options(data, iterations=1))
    manifest = tmp_path / "moved.csv"
    data.manifest.rename(manifest)
    try:
        result = _invoke(*_evaluate(run / "checkpoint.pt", tmp_path / "x.npz"), code=1)
        assert _one_error(result.output) == (f"error: {data.manifest}: manifest not found (the path comes from the "
                                             f"run's config, {run / 'config.json'})")
        result = _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 2, code=1)
        assert _one_error(result.output) == (f"error: {data.manifest}: manifest not found (the path comes from the "
                                             f"run's config, {run / 'config.json'})")
    finally:
        manifest.rename(data.manifest)


def test_an_old_run_with_relative_paths_resolves_them_from_the_current_directory(data, tmp_path, monkeypatch):
    """Runs saved before paths were stored absolute hold them as typed, relative to where they were started."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere" / "deeper"
    start.mkdir()
    elsewhere.mkdir(parents=True)
    run = start / "run"
    _invoke("train", "stilt", "--out", run, *_options(data, iterations=1))
    typed = {name: os.path.relpath(getattr(data, name), start) for name in ("frames", "flow", "manifest")}
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["config"].update(typed)
    del checkpoint["elapsed"]
    torch.save(checkpoint, run / "checkpoint.pt")  # as an older actrec wrote it: relative paths, no checksum
    (run / "checkpoint.pt.sha256").unlink()
    (run / "config.json").write_text(json.dumps(checkpoint["config"]))

    monkeypatch.chdir(elsewhere)
    result = _invoke(*_evaluate(run / "checkpoint.pt", tmp_path / "x.npz"), code=1)
    assert _one_error(result.output) == (
        f"error: {typed['manifest']}: manifest not found (the path comes from the run's config, {run / 'config.json'}"
        f", relative to the directory the run was started in; looked up in the current one, {elsewhere}: run from "
        "that directory)")
    monkeypatch.chdir(start)
    assert "top-1" in _invoke(*_evaluate(run / "checkpoint.pt", tmp_path / "x.npz")).output
    assert "iterations 1 -> 2" in _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 2).output
    saved = json.loads((run / "config.json").read_text())  # resumed once: now absolute
    assert saved["manifest"] == str(data.manifest.resolve())


# Issue 28 items 6 and 7: summary figures and the warmup warning

def test_resuming_a_finished_run_prints_its_last_loss_and_elapsed_s_continues(data, tmp_path):
    run = tmp_path / "run"
    _invoke("train", "stilt", "--out", run, *_options(data, iterations=2))
    first = _metrics(run)
    finished = _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 2).output
    assert f"train: iterations 2 -> 2, last loss {float(first[-1]['loss']):.4f}, " in finished
    assert "nan" not in finished
    assert load_checkpoint(run / "checkpoint.pt")["elapsed"] >= float(first[-1]["elapsed_s"]) - 0.05  # csv: 0.1 s
    _rewrite_checkpoint(run, elapsed=1000.0)  # as after a first session of 1000 s
    _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 4)
    assert [float(row["elapsed_s"]) >= 1000 for row in _metrics(run)] == [False, False, True, True]


def test_elapsed_s_of_a_checkpoint_without_it_continues_from_metrics(data, tmp_path):
    run = tmp_path / "run"
    _invoke("train", "stilt", "--out", run, *_options(data, iterations=2))
    _rewrite_checkpoint(run, elapsed=None)  # as checkpoints written before "elapsed" was saved
    rows = _metrics(run)
    rows[-1]["elapsed_s"] = "500.0"  # as after a first session of 500 s
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _invoke("train", "stilt", "--out", run, "--resume", "--iterations", 3)
    assert float(_metrics(run)[2]["elapsed_s"]) >= 500


def _rewrite_checkpoint(run: Path, elapsed: float | None) -> None:
    """Set or drop ``elapsed`` in the run's checkpoint, written as before checksums (no .sha256)."""
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint.pop("elapsed")
    torch.save(checkpoint if elapsed is None else {**checkpoint, "elapsed": elapsed}, run / "checkpoint.pt")
    (run / "checkpoint.pt.sha256").unlink()


def test_a_run_stopped_before_its_first_metrics_row_prints_a_true_loss(data, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "actrec.cli", "train", "stilt", "--out", str(run),
               *_options(data, iterations=100_000, log_every=1000, checkpoint_every=1)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not (run / "checkpoint.pt.sha256").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert not (run / "metrics.csv").exists()
    match = re.search(r"iterations 0 -> (\d+), last loss (\S+),", stdout)
    assert match and int(match[1]) >= 1 and math.isfinite(float(match[2])), stdout


def test_a_run_shorter_than_its_warmup_is_warned_about_in_one_line(data, tmp_path):
    result = _invoke("train", "stilt", "--out", tmp_path / "run", *_options(data, iterations=1, warmup_iters=5))
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --iterations 1 is not more than the 5 warmup iterations: the whole run warms up "
                        "(lr 0.004 of 0.02 at the end) and the cosine schedule never starts; lower --warmup-iters "
                        "or raise --iterations"]
    result = _invoke("train", "stilt", "--out", tmp_path / "again", *_options(data, iterations=2, warmup_iters=1))
    assert "warning:" not in result.output
