"""compute-flow into the flow store: index alignment, backends, batching, quantisation, faults and resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.manifest import ManifestRow
from actrec.errors import StoreError
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.flow import FlowOptions, FlowStore, compute_flow
from actrec.pipeline.flow_opencv import opencv_tvl1_flow
from actrec.pipeline.flowio import quantize_flow
from actrec.pipeline.frames import ExtractOptions, FrameStore, extract_frames
from actrec.pipeline.tvl1 import TVL1Params, to_gray

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
from kill_resume import kill_then_finish  # noqa: E402

SIZE = (64, 48)
# A light TV-L1 so that the torch backend runs quickly on a CPU in tests; the solver's parity with OpenCV at
# default parameters is tested in test_tvl1.py.
LIGHT = TVL1Params(nscales=2, warps=2, inner_iterations=10, outer_iterations=2)
CLIPS = {"ava": "ava_demo_6fps.mp4", "rot": "edge_cases/decord_rotation90_keyboard.mov"}


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("frames")
    rows = [ManifestRow(vid, rel, 0, "c", "train") for vid, rel in CLIPS.items()]
    extract_frames(rows, videos_dir, out, ExtractOptions(resize=ResizeSpec(*SIZE), fps=3.0), progress=False)
    return out


@pytest.fixture(scope="module")
def opencv_store(frames_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flow_cv")
    summary = compute_flow(frames_root, out, FlowOptions(params=LIGHT, backend="opencv"), workers=2, progress=False)
    assert summary.done == 2 and summary.failed == 0
    return out


def gray_frames(frames_root: Path, vid: str) -> np.ndarray:
    return np.stack([to_gray(f) for f in FrameStore(frames_root).read(vid)])


def test_flow_i_maps_frame_i_to_frame_i_plus_1(frames_root: Path, opencv_store: Path) -> None:
    flows, gray = FlowStore(opencv_store), gray_frames(frames_root, "ava")
    assert flows.num_flows("ava") == len(gray) - 1 == 28  # 57 frames at 6 fps resampled to 3 fps: 29 frames
    assert flows.attrs("ava")["num_frames"] == len(gray)
    for i in (0, 13, 27):
        expected = quantize_flow(opencv_tvl1_flow(gray[i], gray[i + 1], LIGHT).numpy()[0], 20.0)
        np.testing.assert_array_equal(flows.read_stack("ava", i, 1)[0], expected)


def test_torch_backend_matches_opencv_and_does_not_depend_on_batching(frames_root: Path, opencv_store: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTREC_TVL1_COMPILE", "0")  # compiled = eager bit for bit (test_tvl1.py); skip the warm-up
    small, large = tmp_path / "b3", tmp_path / "b64"
    pair = SIZE[0] * SIZE[1]
    compute_flow(frames_root, small, FlowOptions(params=LIGHT, batch_pixels=3 * pair), progress=False)
    compute_flow(frames_root, large, FlowOptions(params=LIGHT, batch_pixels=64 * pair), progress=False)
    reference = FlowStore(opencv_store)
    assert FlowStore(small).num_flows("rot") == 0  # 0.1 s of video at 3 fps: one frame
    for vid in ["ava"]:
        a = FlowStore(small).read_stack(vid, 0, FlowStore(small).num_flows(vid))
        b = FlowStore(large).read_stack(vid, 0, FlowStore(large).num_flows(vid))
        np.testing.assert_array_equal(a, b)  # per-pair stopping: a pair's flow ignores its batch mates
        ref = reference.read_stack(vid, 0, reference.num_flows(vid))
        assert np.mean(np.abs(a.astype(int) - ref.astype(int)) <= 1) > 0.95


def test_writer_processes_store_the_same_flows(frames_root: Path, opencv_store: Path, tmp_path: Path) -> None:
    summary = compute_flow(frames_root, tmp_path, FlowOptions(params=LIGHT, backend="opencv", writers=2),
                           progress=False)
    assert summary.done == 2 and summary.frames == 28
    assert _content(tmp_path) == _content(opencv_store)


def test_step_two_and_one_frame_video(tmp_path: Path, videos_dir: Path) -> None:
    frames = tmp_path / "frames"
    rows = [ManifestRow("ava", CLIPS["ava"], 0, "c", "train"), ManifestRow("rot", CLIPS["rot"], 0, "c", "train")]
    extract_frames(rows, videos_dir, frames, ExtractOptions(resize=ResizeSpec(32, 24), fps=1.0), progress=False)
    assert FrameStore(frames).num_frames("rot") == 1  # 3 frames at 30 fps: 0.1 s, one frame at 1 fps
    summary = compute_flow(frames, tmp_path / "flow", FlowOptions(params=LIGHT, step=2, backend="opencv"),
                           progress=False)
    assert summary.failed == 0 and summary.done == 2
    flows = FlowStore(tmp_path / "flow")
    assert flows.num_flows("rot") == 0 and flows.group("rot")["flow"].shape == (0, 24, 32, 2)
    assert flows.num_flows("ava") == FrameStore(frames).num_frames("ava") - 2
    gray = gray_frames(frames, "ava")
    expected = quantize_flow(opencv_tvl1_flow(gray[3], gray[5], LIGHT).numpy()[0], 20.0)
    np.testing.assert_array_equal(flows.read_stack("ava", 3, 1)[0], expected)


def test_quantised_store_round_trips_within_half_a_step(frames_root: Path, tmp_path: Path) -> None:
    options = FlowOptions(params=LIGHT, backend="opencv", bound=2.0)
    compute_flow(frames_root, tmp_path / "u8", options, progress=False)
    compute_flow(frames_root, tmp_path / "f16", FlowOptions(**{**options.__dict__, "dtype": "float16"}), progress=False)
    u8, f16 = FlowStore(tmp_path / "u8"), FlowStore(tmp_path / "f16")
    exact = f16.read_stack("ava", 0, 28, dequantize=True)
    restored = u8.read_stack("ava", 0, 28, dequantize=True)
    inside = np.abs(exact) < 2.0
    assert inside.mean() > 0.5
    half_step = 2.0 / 255 + 2e-3  # + float16 rounding of the reference
    assert np.abs(restored - exact)[inside].max() <= half_step
    assert np.all(np.abs(restored) <= 2.0 + 1e-6)


def test_reader_errors_and_dataloader_workers(opencv_store: Path) -> None:
    flows = FlowStore(opencv_store)
    with pytest.raises(StoreError, match="out of range"):
        flows.read_stack("ava", 20, 10)
    stacks = torch.utils.data.DataLoader([0, 5, 10, 15], batch_size=2, num_workers=2,
                                         multiprocessing_context="fork",
                                         collate_fn=lambda starts: [flows.read_stack("ava", s, 10) for s in starts])
    got = [stack for batch in stacks for stack in batch]
    for start, stack in zip([0, 5, 10, 15], got):
        np.testing.assert_array_equal(stack, flows.read_stack("ava", start, 10))


def test_corrupt_frames_fail_one_video_and_the_others_complete(frames_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "frames"
    for path in frames_root.iterdir():
        if path.is_file():
            (broken / path.name).parent.mkdir(exist_ok=True)
            (broken / path.name).write_bytes(path.read_bytes())
    shard = next(p for p in broken.glob("frames-*.h5") if "ava" in h5py.File(p, "r")["videos"])
    with h5py.File(shard, "a") as f:
        f["videos/ava/frames"][3] = np.frombuffer(b"not a jpeg", np.uint8)
    result = CliRunner().invoke(cli, ["compute-flow", "--frames", str(broken), "--out", str(tmp_path / "flow"),
                                      "--quiet", "--nscales", "2", "--warps", "1"])
    assert result.exit_code == 1
    assert f"failed: {shard}: video 'ava', frame 3: checksum mismatch" in result.output  # shard, video, index
    assert "1 done, 0 skipped (already finished), 1 failed" in result.output
    assert FlowStore(tmp_path / "flow").video_ids == ["rot"]


def test_gpu_without_cuda_is_exit_code_2(frames_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["compute-flow", "--frames", str(frames_root), "--out", str(tmp_path), "--gpu"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def _content(root: Path) -> dict[str, tuple[dict, bytes]]:
    flows = FlowStore(root)
    return {v: (flows.attrs(v), flows.group(v)["flow"][()].tobytes()) for v in flows.video_ids}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path, videos_dir: Path) -> None:
    frames = tmp_path / "frames"
    clips = sorted(videos_dir.glob("kinetics_*.mp4"))[:4]
    rows = [ManifestRow(p.stem, p.name, 0, "c", "train") for p in clips]
    extract_frames(rows, videos_dir, frames, ExtractOptions(resize=ResizeSpec(48, 36), fps=2.0), progress=False)
    cmd = [sys.executable, "-m", "actrec.cli", "compute-flow", "--frames", str(frames), "--workers", "2",
           "--videos-per-shard", "1", "--quiet", "--nscales", "3", "--warps", "2"]
    subprocess.run(cmd + ["--out", str(tmp_path / "reference")], check=True, capture_output=True)
    killed = tmp_path / "killed"
    final = kill_then_finish(cmd, killed, kills=3, seed=3, wait=(1.0, 4.0))
    assert final.returncode == 0, final.stderr
    assert _content(killed) == _content(tmp_path / "reference") and len(_content(killed)) == 4
