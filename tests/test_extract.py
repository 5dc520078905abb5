"""extract-frames on the real clips: frame counts, sizes, rotation, fps, bad inputs, ranks, SIGKILL resume."""

from __future__ import annotations

import errno
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.build import scan_videos
from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.errors import StoreError
from actrec.pipeline import frames as frames_mod
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.frames import ExtractOptions, FrameStore, extract_frames

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
from kill_resume import kill_then_finish  # noqa: E402

SIZE = (170, 128)
OPTIONS = ExtractOptions(resize=ResizeSpec(*SIZE))


def pyav_frame_count(path: Path) -> int:
    """Frames PyAV decodes before the end of the stream or the first decoding error."""
    n = 0
    with av.open(str(path)) as container:
        try:
            for _ in container.decode(video=0):
                n += 1
        except av.FFmpegError:
            return n  # a corrupt stream ends here
    return n


def rows_for(paths: list[Path], root: Path) -> list[ManifestRow]:
    return [ManifestRow(p.stem, p.relative_to(root).as_posix(), 0, "c", "train") for p in paths]


@pytest.fixture(scope="module")
def all_clips(videos_dir: Path) -> list[Path]:
    return sorted(p for p in videos_dir.rglob("*") if p.is_file() and p.suffix in (".mp4", ".avi", ".mkv", ".webm",
                                                                                     ".mov"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, all_clips: list[Path], videos_dir: Path):
    out = tmp_path_factory.mktemp("frames")
    logs: list[str] = []
    summary = extract_frames(rows_for(all_clips, videos_dir), videos_dir, out, OPTIONS, workers=2,
                             videos_per_shard=4, progress=False, log=logs.append)
    return out, summary, logs


def test_every_real_clip_extracts_all_decodable_frames_at_the_requested_size(store, all_clips) -> None:
    out, summary, _ = store
    assert summary.failed == 0 and summary.done == len(all_clips) >= 15
    fs = FrameStore(out)
    for clip in all_clips:
        attrs = fs.attrs(clip.stem)
        assert attrs["num_frames"] == pyav_frame_count(clip), clip.name
        assert (attrs["width"], attrs["height"]) == SIZE
        assert attrs["source_path"] == str(clip)
        frame = fs.read(clip.stem, [attrs["num_frames"] - 1])
        assert frame.shape == (1, SIZE[1], SIZE[0], 3) and frame.dtype == np.uint8
    mkv = fs.attrs("kinetics_flipping_pancake")  # Matroska declares no frame count: counted by decoding
    assert (mkv["declared_frames"], mkv["num_frames"]) == (0, 310)
    assert fs.attrs("activitynet_v_GGSY1Qvo990")["source_fps"] == pytest.approx(19.62, abs=0.01)
    assert fs.attrs("ntu_S001C001P001R001A001_drink_water_1080p_h264")["source_width"] == 1920


def test_partial_videos_are_kept_with_a_warning(store) -> None:
    out, summary, logs = store
    fs = FrameStore(out)
    assert summary.warned == 2
    assert fs.attrs("decord_corrupted")["partial"] and fs.num_frames("decord_corrupted") == 28
    truncated = "derived_ucf101_ApplyEyeMakeup_truncated50pct"
    assert fs.attrs(truncated)["partial"] and fs.num_frames(truncated) == 77
    assert not fs.attrs("kinetics_tai_chi")["partial"]
    assert any("decord_corrupted.mp4: partial video, decoding stopped after 28 frames" in line for line in logs)
    assert any("decoded 77 of the 164 frames" in line for line in logs)
    report = (out / "failures.rank0.tsv").read_text().splitlines()
    assert report[0].split("\t") == ["run", "status", "video_id", "source", "reason"] and len(report) == 3


def test_frames_match_a_direct_decode(store, videos_dir: Path) -> None:
    out, _, _ = store
    with av.open(str(videos_dir / "kinetics_tai_chi.mp4")) as c:
        direct = [f.reformat(width=SIZE[0], height=SIZE[1], format="rgb24", interpolation="AREA").to_ndarray()
                  for i, f in zip(range(40), c.decode(video=0))]
    stored = FrameStore(out).read("kinetics_tai_chi", [0, 17, 39])
    for got, want in zip(stored, [direct[0], direct[17], direct[39]]):
        mse = np.mean((got.astype(float) - want) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 36  # JPEG at qscale 2 loses little


def test_reader_random_access_and_dataloader_workers(store) -> None:
    out, _, _ = store
    fs = FrameStore(out)
    every = fs.read("ava_demo_6fps")
    assert every.shape[0] == 57
    np.testing.assert_array_equal(fs.read("ava_demo_6fps", [50, 3, 3]), every[[50, 3, 3]])
    with pytest.raises(StoreError, match="out of range"):
        fs.read("ava_demo_6fps", [57])
    with pytest.raises(StoreError, match="'nope' is not in this frames store"):
        fs.read("nope", [0])

    class Clips(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.from_numpy(fs.read("kinetics_tai_chi", [i * 10])[0])

    loader = torch.utils.data.DataLoader(Clips(), batch_size=2, num_workers=2, multiprocessing_context="fork")
    batches = torch.cat(list(loader))
    np.testing.assert_array_equal(batches.numpy(), fs.read("kinetics_tai_chi", [0, 10, 20, 30]))


def test_rotation_metadata_is_applied(tmp_path: Path, videos_dir: Path) -> None:
    clip = videos_dir / "edge_cases" / "decord_rotation90_keyboard.mov"
    opts = ExtractOptions(resize=ResizeSpec(None, None, short_side=64), encoding="raw")
    extract_frames(rows_for([clip], videos_dir), videos_dir, tmp_path, opts, progress=False)
    fs = FrameStore(tmp_path)
    stored = fs.read(clip.stem)
    assert fs.attrs(clip.stem)["rotation"] == 270
    assert stored.shape == (3, 114, 64, 3)  # coded 568x320 landscape, displayed portrait; 568*64/320 -> 114
    with av.open(str(clip)) as c:
        coded = next(c.decode(video=0)).to_ndarray(format="rgb24")
    expected = np.rot90(cv2.resize(coded, (114, 64), interpolation=cv2.INTER_AREA), k=3)  # 90 degrees clockwise
    assert np.abs(stored[0].astype(int) - expected.astype(int)).mean() < 3.0  # swscale vs OpenCV area filters
    assert np.abs(stored[0].astype(int) - np.rot90(expected, 2).astype(int)).mean() > 20  # not rotated the other way


def test_fps_resampling(tmp_path: Path, videos_dir: Path) -> None:
    clips = [videos_dir / "kinetics_tai_chi.mp4", videos_dir / "ava_demo_6fps.mp4"]
    opts = ExtractOptions(resize=ResizeSpec(64, 48), fps=12.0)
    extract_frames(rows_for(clips, videos_dir), videos_dir, tmp_path, opts, progress=False)
    fs = FrameStore(tmp_path)
    assert fs.attrs("kinetics_tai_chi")["fps"] == 12.0
    assert fs.num_frames("kinetics_tai_chi") == 121  # 300 frames at 29.97 fps span 10.0 s
    ava = fs.read("ava_demo_6fps")
    assert ava.shape[0] == 114  # 57 frames at 6 fps upsampled to 12: each shown twice
    np.testing.assert_array_equal(ava[0], ava[1])


def _write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(10):
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _write_video_of_garbage_packets(path: Path) -> None:
    """A well-formed container whose video packets decode to nothing."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            packet = av.Packet(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 25)
            out.mux(packet)


def test_bad_inputs_fail_one_line_each_while_good_videos_complete(tmp_path: Path, videos_dir: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    good = videos_dir / "kinetics_tai_chi.mp4"
    (root / "good.mp4").write_bytes(good.read_bytes())
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 50)
    (root / "truncated.mp4").write_bytes(good.read_bytes()[:40000])
    _write_audio_only(root / "audio.m4a")
    _write_video_of_garbage_packets(root / "noframes.mp4")
    names = ["good.mp4", "empty.mp4", "text.mp4", "truncated.mp4", "audio.m4a", "noframes.mp4", "missing.mp4"]
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, [ManifestRow(Path(n).stem, n, 0, "c", "train") for n in names])
    result = CliRunner().invoke(cli, ["extract-frames", "--manifest", str(manifest), "--video-root", str(root),
                                      "--out", str(tmp_path / "store"), "--size", "64x48", "--quiet"])
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("failed: ")]
    reasons = {Path(line.split(": ")[1]).name: line for line in failed}
    assert set(reasons) == set(names) - {"good.mp4"}
    assert "empty file (0 bytes)" in reasons["empty.mp4"]
    assert "not a readable video" in reasons["text.mp4"]
    assert "no video stream" in reasons["audio.m4a"]
    assert "no decodable video frame" in reasons["noframes.mp4"]
    assert "file not found" in reasons["missing.mp4"]
    assert "1 done, 0 skipped (already finished), 6 failed" in result.output
    assert FrameStore(tmp_path / "store").video_ids == ["good"]
    report = (tmp_path / "store" / "failures.rank0.tsv").read_text().splitlines()
    assert len(report) == 7 and all(line.split("\t")[1] == "failed" for line in report[1:])


def test_partial_fail_policy(tmp_path: Path, videos_dir: Path) -> None:
    clip = videos_dir / "edge_cases" / "decord_corrupted.mp4"
    opts = ExtractOptions(resize=ResizeSpec(64, 48), partial="fail")
    summary = extract_frames(rows_for([clip], videos_dir), videos_dir, tmp_path, opts, progress=False,
                             log=lambda _: None)
    assert summary.failed == 1 and "--partial fail" in summary.failures[0].message


def test_ranks_own_disjoint_shards_and_readers_see_all(tmp_path: Path, videos_dir: Path) -> None:
    clips = sorted(videos_dir.glob("kinetics_*.mp4"))
    opts = ExtractOptions(resize=ResizeSpec(32, 24))

    def run(rank: int) -> set[int]:
        extract_frames(rows_for(clips, videos_dir), videos_dir, tmp_path, opts, videos_per_shard=1, rank=rank,
                       world_size=2, progress=False)
        return {int(p.stem.split("-")[1]) for p in tmp_path.glob("frames-*.h5")}

    odd = run(1)
    assert odd and all(k % 2 == 1 for k in odd)
    both = run(0)
    assert both - odd and all(k % 2 == 0 for k in both - odd)
    assert sorted(FrameStore(tmp_path).video_ids) == sorted(c.stem for c in clips)


def test_incompatible_store_version_is_a_clear_error(tmp_path: Path, videos_dir: Path) -> None:
    extract_frames(rows_for([videos_dir / "ava_demo_6fps.mp4"], videos_dir), videos_dir, tmp_path,
                   ExtractOptions(resize=ResizeSpec(32, 24)), progress=False)
    shard = next(tmp_path.glob("frames-*.h5"))
    with h5py.File(shard, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(StoreError, match="format version 99 is not supported"):
        FrameStore(tmp_path).read("ava_demo_6fps", [0])
    with pytest.raises(StoreError, match="not an actrec frames store"):
        FrameStore(tmp_path / "nowhere")


def test_full_disk_stops_with_a_clear_error_and_an_intact_store(tmp_path: Path, videos_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clips = [videos_dir / "ava_demo_6fps.mp4", videos_dir / "kinetics_tai_chi.mp4"]
    opts = ExtractOptions(resize=ResizeSpec(32, 24))
    extract_frames(rows_for(clips[:1], videos_dir), videos_dir, tmp_path, opts, videos_per_shard=1, progress=False)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(frames_mod, "write_part", no_space)
    with pytest.raises(StoreError, match="disk full while writing kinetics_tai_chi; the store is intact"):
        extract_frames(rows_for(clips, videos_dir), videos_dir, tmp_path, opts, videos_per_shard=1, progress=False)
    assert FrameStore(tmp_path).num_frames("ava_demo_6fps") == 57


def _store_content(root: Path) -> dict[str, tuple[dict, list[bytes]]]:
    fs = FrameStore(root)
    return {vid: (fs.attrs(vid), [bytes(b) for b in fs.group(vid)["frames"][()]]) for vid in fs.video_ids}


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path: Path, videos_dir: Path) -> None:
    clips = [p for p in sorted(videos_dir.glob("*.*")) if p.stat().st_size < 1_400_000]
    root = tmp_path / "videos"
    root.mkdir()
    for clip in clips:
        (root / clip.name).symlink_to(clip)
    cmd = [sys.executable, "-m", "actrec.cli", "extract-frames", "--video-root", str(root), "--size", "96x72",
           "--workers", "2", "--videos-per-shard", "3", "--quiet"]
    reference = tmp_path / "reference"
    subprocess.run(cmd + ["--out", str(reference)], check=True, capture_output=True)
    killed = tmp_path / "killed"

    def nothing_half_written_is_visible() -> None:
        if (killed / "actrec_store.json").exists():
            FrameStore(killed).video_ids  # every visible shard opens

    final = kill_then_finish(cmd, killed, kills=4, seed=7, wait=(0.8, 3.0), after_kill=nothing_half_written_is_visible)
    assert final.returncode == 0, final.stderr
    assert not list(killed.rglob("*.tmp"))
    assert _store_content(killed) == _store_content(reference)
    assert len(_store_content(reference)) == len(clips)
