"""Two writers on one store, for real: separate processes. The second stops at once with one line naming the
first (pid and host), a lock left by a process killed with SIGKILL is taken over, and a repair waits for no
writer."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.pipeline.frames import FrameStore
from actrec.pipeline.store_lock import rank_lock_path

CLIPS = ["kinetics_tai_chi.mp4", "kinetics_skateboarding.mp4", "kinetics_clean_and_jerk.mp4",
         "kinetics_pool_cleaning.mp4", "kinetics_arm_wrestling.mp4", "activitynet_v_ZNVhz7ctTq0.mp4",
         "activitynet_v_GGSY1Qvo990.mp4", "kinetics_flipping_pancake.mkv"]
HOLD = """
import sys, time
from actrec.pipeline.store_lock import writer_lock
with writer_lock(sys.argv[1], int(sys.argv[2])):
    print("locked", flush=True)
    time.sleep(600)
"""


def actrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "actrec.cli", *args]


@pytest.fixture
def job(tmp_path: Path, videos_dir: Path) -> list[str]:
    """extract-frames of eight real clips (2,600 frames) at 340x256: many seconds of work in one process."""
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, [ManifestRow(Path(c).stem, c, 0, "c", "train") for c in CLIPS])
    return ["extract-frames", "--manifest", str(manifest), "--video-root", str(videos_dir), "--out",
            str(tmp_path / "frames"), "--videos-per-shard", "2", "--quiet"]


SMALL = ["--size", "64x48", "--fps", "3"]


def hold_lock(root: Path, rank: int) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(rank)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_a_second_writer_of_a_rank_stops_with_one_line_naming_the_first_and_a_dead_ones_lock_is_taken_over(
        job: list[str], tmp_path: Path) -> None:
    root = tmp_path / "frames"
    root.mkdir()
    holder = hold_lock(root, 0)
    try:
        second = subprocess.run(actrec(*job, *SMALL), capture_output=True, text=True, timeout=300)
        assert second.returncode == 1
        assert error_lines(second) == [
            f"error: {root}: another process (pid {holder.pid} on host {socket.gethostname()}) is writing rank 0 of "
            "this store; wait for it to finish, or stop it, before running this again"]
        other_rank = subprocess.run(actrec(*job, *SMALL, "--rank", "1", "--world-size", "2"), capture_output=True,
                                    text=True, timeout=300)
        assert other_rank.returncode == 0, other_rank.stderr  # rank 1's shards are another writer's business
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads(rank_lock_path(root, 0).read_text())["pid"] == holder.pid  # the dead process's record stays
    rerun = subprocess.run(actrec(*job, *SMALL), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr  # its lock died with it: taken over
    assert json.loads(rank_lock_path(root, 0).read_text())["pid"] != holder.pid
    with FrameStore(root) as store:
        assert len(store.video_ids) == len(CLIPS)

    flow = tmp_path / "flow"  # compute-flow takes the same lock
    flow.mkdir()
    holder = hold_lock(flow, 0)
    try:
        second = subprocess.run(actrec("compute-flow", "--frames", str(root), "--out", str(flow), "--backend",
                                       "opencv", "--quiet"), capture_output=True, text=True, timeout=300)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert second.returncode == 1 and error_lines(second) == [
        f"error: {flow}: another process (pid {holder.pid} on host {socket.gethostname()}) is writing rank 0 of "
        "this store; wait for it to finish, or stop it, before running this again"]
    assert not list(flow.glob("flow-*.h5")) and not (flow / ".parts").exists()


def test_two_extract_frames_runs_at_once_one_works_the_other_stops(job: list[str], tmp_path: Path) -> None:
    root = tmp_path / "frames"
    first = subprocess.Popen(actrec(*job), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (rank_lock_path(root, 0).exists() and rank_lock_path(root, 0).read_text()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = subprocess.run(actrec(*job), capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first run ended before the second started: make the job longer"
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert f"{len(CLIPS)} done, 0 skipped" in out
    assert second.returncode == 1
    assert error_lines(second) == [f"error: {root}: another process (pid {first.pid} on host "
                                   f"{socket.gethostname()}) is writing rank 0 of this store; wait for it to "
                                   "finish, or stop it, before running this again"]
    with FrameStore(root) as store:
        assert len(store.video_ids) == len(CLIPS)


def test_verify_store_repair_refuses_while_a_writer_works(tmp_path: Path, videos_dir: Path) -> None:
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, [ManifestRow("ava", "ava_demo_6fps.mp4", 0, "c", "train")])
    root = tmp_path / "frames"
    done = subprocess.run(actrec("extract-frames", "--manifest", str(manifest), "--video-root", str(videos_dir),
                                 "--out", str(root), "--size", "64x48", "--quiet"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shard = next(root.glob("frames-*.h5"))
    data = bytearray(shard.read_bytes())
    data[50:58] = bytes(b ^ 0xFF for b in data[50:58])
    shard.write_bytes(bytes(data))
    holder = hold_lock(root, 3)
    try:
        repair = subprocess.run(actrec("verify-store", str(root), "--repair", "--quiet"), capture_output=True,
                                text=True, timeout=300)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert repair.returncode == 1 and shard.exists()
    assert error_lines(repair)[-1] == (f"error: {root}: another process (pid {holder.pid} on host "
                                       f"{socket.gethostname()}) is writing rank 3 of this store; repair the store "
                                       "once it has finished")
    repair = subprocess.run(actrec("verify-store", str(root), "--repair", "--quiet"), capture_output=True, text=True,
                            timeout=300)
    assert repair.returncode == 1 and not shard.exists(), repair.stdout + repair.stderr

