"""compute-flow's driver in bounded memory: read-ahead window, frames released once written, prompt solver
errors, batches bounded by pixels per frame shape, CUDA out-of-memory retried in halves; device checks.

The solver (``tvl1_flow``) and the frame reads are replaced by fakes, so these run in seconds; the real solver's
output through the same driver is checked against OpenCV in test_flow_store.py.
"""

from __future__ import annotations

import errno
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from actrec.cli import cli
from actrec.errors import DeviceError, StoreError
from actrec.pipeline import flow as flow_mod, stage as stage_mod
from actrec.pipeline.flow import FlowOptions, FlowStore, compute_flow, quantize_on_device, resolve_device
from actrec.pipeline.flowio import quantize_flow, read_flo

FRAMES = 5  # frames per fake video: 4 pairs


class Tracked(np.ndarray):
    """A gray-frame array whose lifetime the tests follow through weak references."""


class FakeFrames:
    """A frame store of ``count`` videos of ``FRAMES`` frames; video ``big`` (if any) has larger frames."""

    count = 0
    big: str | None = None

    def __init__(self, root: str | Path) -> None:
        self.video_ids = [f"v{i:03d}" for i in range(self.count)]

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.video_ids

    def num_frames(self, video_id: str) -> int:
        return FRAMES


class Reads:
    """The fake ``_gray_frames``: frame ``k`` of video ``vNNN`` is filled with ``NNN + 10 k`` (mod 256)."""

    def __init__(self) -> None:
        self.done = 0
        self.live: list[weakref.ref] = []

    def __call__(self, frames: FakeFrames, video_id: str) -> np.ndarray:
        self.done += 1
        side = 16 if video_id == FakeFrames.big else 8
        values = (int(video_id[1:]) + 10 * np.arange(FRAMES)) % 256
        gray = np.broadcast_to(values[:, None, None], (FRAMES, side, side)).astype(np.uint8).view(Tracked)
        self.live.append(weakref.ref(gray))
        return gray

    def alive(self) -> int:
        return sum(ref() is not None for ref in self.live)


def fake_solver(calls: list[tuple[int, tuple[int, int]]], fits: int | None = None):
    """A ``tvl1_flow`` whose flow is (first frame's value, second frame's value) / 16 per pixel; it records each
    call's (pairs, shape) and raises CUDA out-of-memory above ``fits`` pixels of pairs."""

    def tvl1_flow(img0, img1, params, device=None):
        calls.append((len(img0), img0.shape[1:]))
        if fits is not None and img0.size > fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.from_numpy(np.stack([img0, img1], axis=-1).astype(np.float32) / 16)

    return tvl1_flow


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Reads:
    reads = Reads()
    monkeypatch.setattr(flow_mod, "FrameStore", FakeFrames)
    monkeypatch.setattr(flow_mod, "_gray_frames", reads)
    monkeypatch.setattr(FakeFrames, "big", None)
    return reads


def test_reads_stay_a_few_videos_ahead_and_frames_go_once_written(fakes: Reads, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeFrames, "count", 200)
    monkeypatch.setattr(flow_mod, "tvl1_flow", fake_solver([]))
    alive_at_write: list[int] = []
    prepare = flow_mod.flow_part

    def counting_prepare(*args, **kwargs):
        alive_at_write.append(fakes.alive())
        return prepare(*args, **kwargs)

    monkeypatch.setattr(flow_mod, "flow_part", counting_prepare)
    summary = compute_flow("frames", tmp_path, FlowOptions(batch_pixels=8 * 64), progress=False)
    assert summary.done == 200 and summary.frames == 200 * (FRAMES - 1)
    # 3 readers, a window of 5 videos, at most 3 videos in a batch of 8 pairs: never the whole rank
    assert max(alive_at_write[150:]) <= 10, alive_at_write[150:]
    assert fakes.alive() == 0


def test_a_solver_error_surfaces_without_reading_the_rest(fakes: Reads, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeFrames, "count", 400)

    def broken(img0, img1, params, device=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(flow_mod, "tvl1_flow", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        compute_flow("frames", tmp_path, FlowOptions(batch_pixels=8 * 64), progress=False)
    assert fakes.done <= 8  # the read-ahead window, not the 400 videos of the rank


def test_batches_hold_one_frame_shape_within_the_pixel_budget(fakes: Reads, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeFrames, "count", 6)
    monkeypatch.setattr(FakeFrames, "big", "v002")
    calls: list = []
    monkeypatch.setattr(flow_mod, "tvl1_flow", fake_solver(calls))
    summary = compute_flow("frames", tmp_path, FlowOptions(batch_pixels=6 * 64, dtype="float16"), progress=False)
    assert summary.done == 6
    assert sorted(calls) == sorted([(6, (8, 8))] * 3 + [(2, (8, 8))] + [(1, (16, 16))] * 4)
    flows = FlowStore(tmp_path)
    for video in flows.video_ids:  # every pair's flow went to its own video and index
        first = (int(video[1:]) + 10 * np.arange(FRAMES - 1)) % 256
        got = flows.read_stack(video, 0, FRAMES - 1, dequantize=True)
        np.testing.assert_allclose(got[:, 0, 0, 0], first / 16, atol=0.05)
        np.testing.assert_allclose(got[:, 0, 0, 1], (first + 10) % 256 / 16, atol=0.05)


def test_out_of_memory_retries_in_halves_and_one_pair_too_big_fails_only_its_video(
        fakes: Reads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeFrames, "count", 5)
    monkeypatch.setattr(FakeFrames, "big", "v003")
    calls: list = []
    monkeypatch.setattr(flow_mod, "tvl1_flow", fake_solver(calls, fits=2 * 64))
    summary = compute_flow("frames", tmp_path, FlowOptions(batch_pixels=8 * 64, dtype="float16"), progress=False,
                           log=lambda _: None)
    assert summary.done == 4 and summary.failed == 1
    assert summary.failures[0].video_id == "v003"
    assert "one 16x16 frame pair (256 pixels) does not fit in the GPU's memory" in summary.failures[0].message
    assert [n for n, _ in calls[:7]] == [8, 4, 2, 2, 4, 2, 2]  # 8 pairs -> halves -> quarters
    assert max(n for n, shape in calls[7:] if shape == (8, 8)) == 2  # later batches keep the size that fitted
    assert sorted(FlowStore(tmp_path).video_ids) == ["v000", "v001", "v002", "v004"]


def test_cli_reports_the_pair_that_does_not_fit(fakes: Reads, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeFrames, "count", 3)
    monkeypatch.setattr(FakeFrames, "big", "v001")
    monkeypatch.setattr(flow_mod, "tvl1_flow", fake_solver([], fits=64))
    result = CliRunner().invoke(cli, ["compute-flow", "--frames", str(tmp_path), "--out", str(tmp_path / "flow"),
                                      "--backend", "torch", "--batch-pixels", "512", "--quiet"])
    assert result.exit_code == 1
    assert "failed: v001: one 16x16 frame pair (256 pixels) does not fit in the GPU's memory" in result.output
    assert "2 done, 0 skipped (already finished), 1 failed" in result.output


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_each_local_rank_gets_its_own_gpu_and_an_extra_process_is_an_error(two_gpus: None,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device(True) == "cuda:1"
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(DeviceError, match=r"local rank 2 has no GPU of its own: 2 CUDA device\(s\) visible"):
        resolve_device(True)
    assert resolve_device(False) == "cpu"


def test_gpu_with_the_opencv_backend_is_an_error(two_gpus: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["compute-flow", "--frames", str(tmp_path), "--out", str(tmp_path / "flow"),
                                      "--gpu", "--backend", "opencv"])
    assert result.exit_code == 1
    assert "error: the opencv backend computes on the CPU only, not on cuda:0" in result.output
    assert not (tmp_path / "flow").exists()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("bound", [20.0, 2.0, 7.3])
def test_quantising_on_the_solver_device_equals_the_stored_convention(device: str, bound: float,
                                                                    shared_data: Path) -> None:
    real = read_flo(next((shared_data / "flow_gt").rglob("*.flo"))).ravel()
    codes = np.arange(256)
    half = ((codes + 0.5) * (2 * bound / 255) - bound).astype(np.float32)  # exactly between two codes
    flow = np.concatenate([real, half, np.nextafter(half, np.float32(np.inf)), np.nextafter(half, np.float32(-np.inf)),
                           np.float32([-1e6, 1e6, 0.0])])
    on_device = quantize_on_device(torch.from_numpy(flow).to(device), bound).cpu().numpy()
    np.testing.assert_array_equal(on_device, quantize_flow(flow, bound))


def test_a_full_disk_stops_the_stage_with_the_finished_videos_kept(fakes: Reads, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeFrames, "count", 6)
    monkeypatch.setattr(flow_mod, "tvl1_flow", fake_solver([]))
    write = stage_mod.write_part
    written: list[str] = []

    def fills_up(layout, shard, video_id, *args):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(video_id)
        return write(layout, shard, video_id, *args)

    monkeypatch.setattr(stage_mod, "write_part", fills_up)
    with pytest.raises(StoreError, match="disk full while writing v002; the store is intact"):
        compute_flow("frames", tmp_path, FlowOptions(batch_pixels=4 * 64), progress=False)
    assert fakes.done <= 8
    assert sorted(part.stem for part in tmp_path.glob(".parts/*/*.h5")) == written == ["v000", "v001"]
