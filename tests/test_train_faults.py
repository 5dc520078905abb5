"""Training ends on an error within seconds, with one line and exit code 1, DataLoader workers and all.

Each fault is real and hits a running ``actrec train`` process started with 0, 1 and 4 loader workers: undecodable
JPEG frames in the store (raised in a worker), the run folder moved away under the running job (raised in the main
loop, writing metrics.csv), the disk filling up between two checkpoints (raised in the checkpoint write; on a small
tmpfs, which needs root and a container that allows mounts, else skipped), and a worker killed with SIGKILL (what the
kernel's OOM killer does). Before the fix, every fault with workers hung forever: the error's traceback kept the
DataLoader iterator alive until Python's exit handlers, where multiprocessing ends daemonic workers with SIGTERM,
which the workers ignore (quiet_worker), and then joins them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from actrec.cli import cli
from actrec.errors import OutputError
from actrec.pipeline.frames import FrameStore
from actrec.pipeline.store import Dataset, init_store, seal_shard, write_part
from actrec.training.checkpoint import checkpoint_bytes, load_checkpoint, save_checkpoint
from actrec.training.config import TrainConfig, resolve_config, save_config
from actrec.training.trainer import train

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)

START_TIMEOUT = 300  # s: start-up on a shared, loaded machine; a hang is forever
EXIT_TIMEOUT = 60  # s from the fault to the exit (it takes 1-3 s); a hang is forever


def mount_tmpfs(folder: Path, size: str) -> None:
    """Mount a tmpfs of ``size`` on ``folder``, or skip the test saying why (as tests/test_disk_full.py does)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command on this machine: cannot make a small file system")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and a container that allows it): {mounted.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    mount_tmpfs(folder, "64m")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill_disk(folder: Path, leave: int) -> Path:
    """A file taking all but ``leave`` bytes of ``folder``'s file system."""
    filler = folder / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(shutil.disk_usage(folder).free - leave, 0))
    return filler


def jpeg_dataset(root: Path, *, corrupt: bool) -> fx.TinyData:
    """The learnable tiny dataset with JPEG frames; ``corrupt``: every stored frame then overwritten in the sealed
    shard with bytes that are no JPEG (so any skip budget is exceeded at once)."""
    data = fx.learnable_dataset(root, train_per_class=2, test_per_class=0)
    with FrameStore(data.frames) as store:
        videos = {video_id: store.read(video_id) for video_id in store.video_ids}
    shutil.rmtree(data.frames)
    layout = init_store(data.frames, "frames", {"encoding": "jpeg"}, num_shards=1)
    for video_id, frames in videos.items():
        encoded = [cv2.imencode(".jpg", np.ascontiguousarray(f[..., ::-1]))[1].ravel() for f in frames]
        write_part(layout, 0, video_id, {"frames": Dataset(encoded)},
                   {"num_frames": len(frames), "height": frames.shape[1], "width": frames.shape[2], "fps": 25.0,
                    "encoding": "jpeg"})
    seal_shard(layout, 0)
    if corrupt:
        with h5py.File(layout.shard_path(0), "r+") as f:
            for group in f["videos"].values():
                for i in range(group["frames"].shape[0]):
                    group["frames"][i] = np.frombuffer(b"no JPEG here " * 5, dtype=np.uint8)
    return data


def train_command(data: fx.TinyData, run: Path, workers: int, **changes: object) -> list[str]:
    values = {**fx.tiny_overrides(data, workers=workers, iterations=100_000, warmup_iters=0), **changes}
    values.pop("reduced")
    return [sys.executable, "-m", "actrec.cli", "train", "stilt", "--out", str(run), "--reduced", "--quiet",
            *(f"--{key.replace('_', '-')}={value}" for key, value in values.items())]


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        assert process.poll() is None, f"training ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {START_TIMEOUT} s"
        time.sleep(0.1)


def metrics_rows(run: Path) -> int:
    path = run / "metrics.csv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def run_until_fault(command: list[str], inject: Callable[[subprocess.Popen], None] | None,
                    timeout: float = EXIT_TIMEOUT) -> str:
    """Start ``command`` in its own process group and call ``inject`` while it runs (None: the fault is in the data
    already); return its error line, having checked that it exited within ``timeout`` s of the fault with exit code
    1, one error line and no traceback, and left no process of the job."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        if inject is not None:
            inject(process)
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"training still runs {timeout} s after the fault: it hangs")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
            left = True
        except ProcessLookupError:
            left = False
    assert not left, "processes of the job (loader workers) were still running"
    assert process.returncode == 1, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr and "Caught" not in stderr, stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("workers", [0, 1, 4])
def test_an_undecodable_frame_in_the_store_ends_training_with_one_line(tmp_path, workers):
    data = jpeg_dataset(tmp_path / "data", corrupt=True)
    line = run_until_fault(train_command(data, tmp_path / "run", workers), None, START_TIMEOUT + EXIT_TIMEOUT)
    assert "JPEG" in line or "frame" in line, line


@pytest.mark.parametrize("workers", [0, 1, 4])
def test_the_run_folder_moved_away_ends_training_within_seconds(tmp_path, workers):
    data = jpeg_dataset(tmp_path / "data", corrupt=False)
    run = tmp_path / "run"

    def move_the_run_folder(process: subprocess.Popen) -> None:
        wait_for(lambda: metrics_rows(run) >= 2, process, "metrics rows")
        run.rename(tmp_path / "moved")

    line = run_until_fault(train_command(data, run, workers, log_every=1), move_the_run_folder)
    assert line.startswith(f"error: {run / 'metrics.csv'}: cannot write the metrics of iteration ") and \
        "No such file or directory" in line, line


@pytest.mark.parametrize("workers", [0, 1, 4])
def test_a_disk_filling_up_at_a_checkpoint_ends_training_with_one_line(tmp_path, small_disk, workers):
    data = jpeg_dataset(tmp_path / "data", corrupt=False)
    run = small_disk / "run"

    def fill_after_a_checkpoint(process: subprocess.Popen) -> None:
        wait_for(lambda: (run / "checkpoint.pt.sha256").exists(), process, "checkpoint")
        os.killpg(process.pid, signal.SIGSTOP)  # no write of the job races the filler (one may be half done)
        fill_disk(small_disk, leave=64 << 10)  # room for metrics rows, none for a checkpoint
        os.killpg(process.pid, signal.SIGCONT)

    line = run_until_fault(train_command(data, run, workers, checkpoint_every=1, log_every=1),
                                    fill_after_a_checkpoint)
    assert line.startswith(f"error: {run / 'checkpoint.pt'}: disk full: a checkpoint needs ") and \
        f"MB left in {run}; the checkpoint of iteration " in line and "is kept" in line, line
    assert not list(run.glob("*.tmp"))
    kept = int(line.split("the checkpoint of iteration ")[1].split()[0])
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == kept  # intact, its SHA-256 checked


def test_an_error_in_one_process_of_a_torchrun_job_ends_the_job(tmp_path):
    """The failing process leaves the process group without the closing barrier (the others may be anywhere in
    the loop); the others fail in their next collective and torchrun ends the job."""
    data = jpeg_dataset(tmp_path / "data", corrupt=True)
    command = train_command(data, tmp_path / "run", 1)
    command[1:3] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "actrec.cli"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, stderr = process.communicate(timeout=START_TIMEOUT + EXIT_TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1 and re.search(r"^error: .*(JPEG|frame)", stderr, re.MULTILINE), stderr[-3000:]


def test_a_killed_worker_ends_training_with_one_line(tmp_path):
    data = jpeg_dataset(tmp_path / "data", corrupt=False)
    run = tmp_path / "run"

    def kill_a_worker(process: subprocess.Popen) -> None:
        wait_for(lambda: metrics_rows(run) >= 1, process, "metrics rows")
        workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(workers[0]), signal.SIGKILL)  # as the OOM killer does

    line = run_until_fault(train_command(data, run, 4, log_every=1), kill_a_worker)
    assert line.startswith("error: DataLoader worker (pid") and "a data loader process died" in line, line


def test_a_resume_on_a_still_full_disk_stops_in_one_line_and_leaves_no_partial_file(tmp_path, small_disk):
    data = fx.learnable_dataset(tmp_path / "data", train_per_class=2, test_per_class=0)
    run = small_disk / "run"
    options = [f"--{key.replace('_', '-')}={value}" for key, value in
               fx.tiny_overrides(data, iterations=1, warmup_iters=0).items() if key != "reduced"]
    assert CliRunner().invoke(cli, ["train", "stilt", "--out", str(run), "--reduced", "--quiet", *options]).exit_code == 0
    config = (run / "config.json").read_text()
    partial = run / "checkpoint.pt.tmp"  # what a write stopped by a kill leaves
    partial.write_bytes((run / "checkpoint.pt").read_bytes()[:2_000_000])
    filler = fill_disk(small_disk, leave=64 << 10)
    resume = ["train", "stilt", "--out", str(run), "--resume", "--iterations", "3", "--quiet"]

    result = CliRunner().invoke(cli, resume)
    assert result.exit_code == 1
    assert f"note: removed {partial} (2.0 MB), left by an interrupted checkpoint write" in result.output
    line = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(line) == 1 and re.fullmatch(
        rf"error: {re.escape(str(run / 'checkpoint.pt'))}: disk full: a checkpoint needs \d+\.\d MB, \d+\.\d MB left "
        rf"in {re.escape(str(run))}; nothing was trained: free some space and continue with --resume", line[0]), line
    assert not list(run.glob("*.tmp")) and (run / "config.json").read_text() == config
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 1

    fill_disk(small_disk, leave=0)  # not even config.json fits: its write fails and leaves no .tmp
    with pytest.raises(OutputError, match=rf"^{re.escape(str(run / 'config.json'))}: cannot be written \(disk full; "):
        save_config(run / "config.json", TrainConfig())
    assert not list(run.glob("*.tmp")) and (run / "config.json").read_text() == config

    filler.unlink()
    result = CliRunner().invoke(cli, resume)
    assert result.exit_code == 0 and "iterations 1 -> 3" in result.output, result.output
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 3


def test_a_checkpoint_write_that_fills_the_disk_removes_its_partial_file_and_keeps_the_previous_one(tmp_path,
                                                                                                  small_disk):
    """The space check passes (names are not counted in its estimate: they are small, except here) and the write
    itself hits the full disk."""
    data = fx.learnable_dataset(tmp_path / "data", train_per_class=2, test_per_class=0)
    config = resolve_config("stilt", overrides=fx.tiny_overrides(data, iterations=1, warmup_iters=0))
    train(config, tmp_path / "run", progress=False)
    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    path = small_disk / "checkpoint.pt"
    save_checkpoint(path, payload)
    fill_disk(small_disk, leave=checkpoint_bytes(payload) + (1 << 20))
    too_big = {**payload, "class_names": [f"{i:04d}" + "x" * 1000 for i in range(3000)]}  # 3 MB not estimated
    with pytest.raises(OutputError) as error:
        save_checkpoint(path, too_big)
    assert re.fullmatch(rf"{re.escape(str(path))}: disk full: a checkpoint needs \d+\.\d MB, \d+\.\d MB left in "
                        rf"{re.escape(str(small_disk))}", str(error.value))
    assert sorted(p.name for p in small_disk.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256", "filler"]
    assert load_checkpoint(path)["class_names"] == payload["class_names"]  # the previous one, its SHA-256 checked
