"""A full disk, for real: stores written to a small tmpfs stop with one line and resume once there is room.

h5py 3.16 with HDF5 2.0 crashes (segmentation fault) closing a file after ENOSPC in a compressed chunk write, so the
stores check the free space before each part is written and before each shard is sealed. The test mounts a tmpfs
of 512 KB (it needs root and a container that allows mounts; otherwise it is skipped and says why), fills it with
real clips, then grows it with ``mount -o remount`` and checks that the rerun finishes the job without redoing
the finished videos. The patched-ENOSPC test of tests/test_extract.py covers the error raised by a write itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.pipeline.flow import FlowStore
from actrec.pipeline.frames import FrameStore

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the helper module
from mounts import mount_tmpfs, tmpfs  # noqa: E402

CLIPS = ["ava_demo_6fps.mp4", "ucf101_ApplyEyeMakeup_xvid.avi", "kinetics_tai_chi.mp4"]


def _mount(folder: Path, size: str, remount: bool = False) -> subprocess.CompletedProcess:
    return mount_tmpfs(folder, f"remount,size={size}" if remount else f"size={size}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "size=512k", "a 512 KB tmpfs") as folder:
        yield folder


def _finished(root: Path, kind: str) -> int:
    """Videos a rerun will skip: sealed in a shard or waiting as a part."""
    with (FrameStore if kind == "frames" else FlowStore)(root) as store:
        return len(store.video_ids) + len(list(root.glob(f".parts/{kind}-*/*.h5")))


def _error_line(output: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith("error: ")]
    return line


def _stops_then_resumes(small_disk: Path, args: list[str], out: Path, kind: str, finished_before: range,
                        check_intact: Callable[[], None] = lambda: None, expected: str = "") -> None:
    """Run a stage on the small disk: it stops with exit 1 and one line naming ``out`` (with ``expected``), having
    finished a number of videos in ``finished_before`` and left a readable store (``check_intact``); grown to
    16 MB, the rerun finishes every clip and skips the videos the first run finished."""
    full = CliRunner().invoke(cli, args)
    assert full.exit_code == 1, full.output
    line = _error_line(full.output)
    assert f"{out}" in line and "disk full" in line and "store is intact" in line
    assert expected in line, line
    finished = _finished(out, kind)
    assert finished in finished_before
    check_intact()
    assert _mount(small_disk, "16m", remount=True).returncode == 0
    rerun = CliRunner().invoke(cli, args)
    assert rerun.exit_code == 0, rerun.output
    assert f"{len(CLIPS) - finished} done, {finished} skipped" in rerun.output
    with (FrameStore if kind == "frames" else FlowStore)(out) as store:
        assert sorted(store.video_ids) == sorted(Path(c).stem for c in CLIPS)


def test_a_full_disk_stops_each_stage_with_one_line_and_the_rerun_finishes(small_disk: Path, videos_dir: Path,
                                                                           tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, [ManifestRow(Path(c).stem, c, 0, "c", "train") for c in CLIPS])
    frames = small_disk / "frames"
    extract = ["extract-frames", "--manifest", str(manifest), "--video-root", str(videos_dir), "--out", str(frames),
               "--size", "48x36", "--fps", "6", "--videos-per-shard", "1", "--quiet"]

    def frames_read() -> None:
        with FrameStore(frames) as store:
            assert all(store.read(v, [0]).shape == (1, 36, 48, 3) for v in store.video_ids)

    # the last video may be finished but not sealed
    _stops_then_resumes(small_disk, extract, frames, "frames", range(1, len(CLIPS) + 1), frames_read, "MB left")

    flow = small_disk / "flow"
    used_kb = shutil.disk_usage(small_disk).used // 1024
    assert _mount(small_disk, f"{used_kb + 350}k", remount=True).returncode == 0  # 350 KB left for the flow
    compute = ["compute-flow", "--frames", str(frames), "--out", str(flow), "--backend", "opencv",
               "--videos-per-shard", "1", "--nscales", "1", "--warps", "1", "--quiet"]
    _stops_then_resumes(small_disk, compute, flow, "flow", range(len(CLIPS)))
