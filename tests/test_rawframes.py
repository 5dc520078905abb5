"""mmaction2 rawframes in and out: the shared mmaction2 sample, export naming, and the export-import round trip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.flow import FlowOptions, FlowStore, compute_flow
from actrec.pipeline.frames import ExtractOptions, FrameStore, extract_frames
from actrec.pipeline.rawframes import detect_naming, import_rawframes
from actrec.pipeline.tvl1 import TVL1Params

LIGHT = TVL1Params(nscales=2, warps=2, inner_iterations=10, outer_iterations=2)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> tuple[Path, Path, list[ManifestRow]]:
    root = tmp_path_factory.mktemp("stores")
    rows = [ManifestRow("tai_chi", "kinetics_tai_chi.mp4", 3, "tai chi", "train"),
            ManifestRow("ucf", "ucf101_ApplyEyeMakeup_xvid.avi", 0, "apply eye makeup", "test")]
    extract_frames(rows, videos_dir, root / "frames", ExtractOptions(resize=ResizeSpec(96, 72), fps=4.0),
                   progress=False)
    compute_flow(root / "frames", root / "flow", FlowOptions(params=LIGHT, backend="opencv"), progress=False)
    return root / "frames", root / "flow", rows


def test_import_of_the_shared_mmaction2_sample(tmp_path: Path, videos_dir: Path) -> None:
    sample = videos_dir / "rawframes_mmaction2"
    naming = detect_naming(sample)
    assert (naming.rgb_prefix, naming.flow_x_prefix, naming.flow_y_prefix, naming.start) == ("img_", "x_", "y_", 1)
    logs: list[str] = []
    summaries = import_rawframes(sample, tmp_path / "frames", tmp_path / "flow", progress=False, log=logs.append)
    assert [s.done for s in summaries] == [1, 1] and "img_/x_/y_ files, 1-indexed, 5 digits, .jpg" in logs[0]
    frames, flows = FrameStore(tmp_path / "frames"), FlowStore(tmp_path / "flow")
    assert frames.num_frames("rawframes_mmaction2") == 10 and flows.num_flows("rawframes_mmaction2") == 5
    assert frames.read("rawframes_mmaction2", [9]).shape == (1, 240, 320, 3)
    stored = bytes(frames.group("rawframes_mmaction2")["frames"][0])
    assert stored == (sample / "img_00001.jpg").read_bytes()  # stored as they are, not re-encoded
    x3 = cv2.imread(str(sample / "x_00003.jpg"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(flows.read_stack("rawframes_mmaction2", 2, 1)[0, ..., 0], x3)
    assert flows.bound == 20.0


def test_export_writes_what_mmaction2_expects(stores, tmp_path: Path) -> None:
    frames_root, flow_root, rows = stores
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, rows)
    out = tmp_path / "raw"
    result = CliRunner().invoke(cli, ["export-rawframes", "--frames", str(frames_root), "--flow", str(flow_root),
                                      "--out", str(out), "--manifest", str(manifest), "--quiet", "--workers", "2"])
    assert result.exit_code == 0, result.output
    frames, flows = FrameStore(frames_root), FlowStore(flow_root)
    for row in rows:
        n, f = frames.num_frames(row.video_id), flows.num_flows(row.video_id)
        names = sorted(p.name for p in (out / row.video_id).iterdir())
        assert names == sorted([f"img_{i:05d}.jpg" for i in range(1, n + 1)]
                               + [f"flow_{c}_{i:05d}.jpg" for c in "xy" for i in range(1, f + 1)])
        x = cv2.imread(str(out / row.video_id / "flow_x_00001.jpg"), cv2.IMREAD_UNCHANGED)
        assert x.dtype == np.uint8 and x.shape == (72, 96)  # single-channel uint8, as mmaction2 reads flow
    assert (out / "train_rawframes.txt").read_text() == f"tai_chi {frames.num_frames('tai_chi')} 3\n"
    assert (out / "test_rawframes_flow.txt").read_text() == f"ucf {flows.num_flows('ucf')} 0\n"
    again = CliRunner().invoke(cli, ["export-rawframes", "--frames", str(frames_root), "--out", str(out), "--quiet"])
    assert "0 done, 2 skipped" in again.output


def test_export_then_import_round_trips(stores, tmp_path: Path) -> None:
    frames_root, flow_root, _ = stores
    CliRunner().invoke(cli, ["export-rawframes", "--frames", str(frames_root), "--flow", str(flow_root),
                             "--out", str(tmp_path / "raw"), "--quiet"])
    result = CliRunner().invoke(cli, ["import-rawframes", "--src", str(tmp_path / "raw"), "--frames-out",
                                      str(tmp_path / "frames"), "--flow-out", str(tmp_path / "flow"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "img_/flow_x_/flow_y_ files, 1-indexed" in result.output
    original, restored = FrameStore(frames_root), FrameStore(tmp_path / "frames")
    for vid in original.video_ids:
        np.testing.assert_array_equal(original.read(vid), restored.read(vid))  # JPEG bytes travel unchanged
        a = FlowStore(flow_root).read_stack(vid, 0, FlowStore(flow_root).num_flows(vid)).astype(int)
        b = FlowStore(tmp_path / "flow").read_stack(vid, 0, FlowStore(flow_root).num_flows(vid)).astype(int)
        error = np.abs(a - b)
        assert error.mean() < 0.5 and error.max() <= 8  # JPEG q95 on the uint8 flow codes (see README)


def _write_gray(path: Path, value: int) -> None:
    cv2.imwrite(str(path), np.full((24, 32), value, np.uint8))


def test_zero_indexed_tsn_naming_and_gaps(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for video, indices in (("a", range(3)), ("b", [0, 2])):
        (src / video).mkdir(parents=True)
        for i in indices:
            cv2.imwrite(str(src / video / f"img_{i:05d}.jpg"), np.full((24, 32, 3), 40 * i, np.uint8))
            _write_gray(src / video / f"flow_x_{i:05d}.jpg", 128)
            _write_gray(src / video / f"flow_y_{i:05d}.jpg", 130)
    logs: list[str] = []
    frames_summary, flow_summary = import_rawframes(src, tmp_path / "frames", tmp_path / "flow", progress=False,
                                                    log=logs.append)
    assert "0-indexed" in logs[0]
    assert frames_summary.done == 1 and frames_summary.failed == 1
    assert "img_ files skip from index 0 to 2 (img_00002.jpg)" in frames_summary.failures[0].message
    assert FrameStore(tmp_path / "frames").num_frames("a") == 3
    assert FlowStore(tmp_path / "flow").read_stack("a", 0, 3).shape == (3, 24, 32, 2)


def test_the_mmaction2_sample_imports_with_a_flow_count_warning(tmp_path: Path, videos_dir: Path) -> None:
    """Issue 28.7: its 10 frames come with 5 flows, where 10 frames give 9."""
    sample = videos_dir / "rawframes_mmaction2"
    result = CliRunner().invoke(cli, ["import-rawframes", "--src", str(sample), "--frames-out",
                                      str(tmp_path / "frames"), "--flow-out", str(tmp_path / "flow"), "--quiet"])
    assert result.exit_code == 0, result.output
    warning = (f"warning: {sample}: 10 frames should give 9 flows, found 5 (kept as flows 0..4, flow i from frame "
               "i to frame i+1)")
    assert warning in result.output.splitlines()
    assert "import-frames: 1 done, 0 skipped (already finished), 0 failed, 0 with warnings; 10 frames" in result.output
    assert "import-flow: 1 done, 0 skipped (already finished), 0 failed, 1 with warnings; 5 flows" in result.output
    assert FlowStore(tmp_path / "flow").num_flows("rawframes_mmaction2") == 5


def test_export_reports_the_bytes_it_wrote(stores, tmp_path: Path) -> None:
    """Issue 28.6: the summary's MB are the bytes of the files written (it said 0.0 MB for 3.0 MB)."""
    frames_root, flow_root, _ = stores
    result = CliRunner().invoke(cli, ["export-rawframes", "--frames", str(frames_root), "--flow", str(flow_root),
                                      "--out", str(tmp_path / "raw"), "--quiet"])
    assert result.exit_code == 0, result.output
    on_disk = sum(p.stat().st_size for p in (tmp_path / "raw").rglob("*.jpg"))
    assert on_disk > 100_000 and f", {on_disk / 1e6:.1f} MB written" in result.output
