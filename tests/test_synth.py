"""The synthetic dataset: real H.264 videos decoded back with PyAV, its manifest, pairing and resumability."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.manifest import read_manifest
from actrec.errors import ActrecError, InputError
from actrec.pipeline.synth import (APPEARANCE_ONLY, CLASSES, H264_ENCODERS, MOTION_ONLY, generate_synthetic_dataset,
                                   pick_h264_encoder, split_counts)
from actrec.pipeline.synth.classes import SceneParams
from actrec.pipeline.synth.nuisance import draw_nuisance, object_poses

OPTIONS = {"videos_per_class": 5, "frames": 12, "size": (112, 96), "fps": 25, "seed": 3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(out, **OPTIONS)
    return out


def _video(root: Path, name: str, index: int) -> Path:
    return root / "videos" / name / f"{name}_{index:04d}.mp4"


def _decode(path: Path) -> np.ndarray:
    """All frames of a video, uint8 [T, H, W, 3] RGB."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _motion(video: np.ndarray) -> dict[str, float]:
    """Mean Farneback flow of the moving pixels, after removing the camera shake (the median flow).

    Returns the mean velocity (vx, vy) and the rotation (curl) and expansion (div) about the moving pixels'
    centroid, in image axes (y down: positive curl is clockwise on screen), averaged over consecutive frame pairs.
    """
    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in video]
    yy, xx = np.mgrid[: gray[0].shape[0], : gray[0].shape[1]].astype(np.float32)
    stats = []
    for first, second in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(first, second, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        flow -= np.median(flow.reshape(-1, 2), axis=0)
        moving = np.hypot(flow[..., 0], flow[..., 1]) > 0.3
        vx, vy = flow[..., 0][moving], flow[..., 1][moving]
        rx, ry = xx[moving] - xx[moving].mean(), yy[moving] - yy[moving].mean()
        spread = np.mean(rx ** 2 + ry ** 2)
        stats.append((vx.mean(), vy.mean(), np.mean(rx * vy - ry * vx) / spread, np.mean(rx * vx + ry * vy) / spread))
    return dict(zip(("vx", "vy", "curl", "div"), np.mean(stats, axis=0)))


def test_videos_decode_with_requested_frames_size_and_codec(dataset: Path) -> None:
    paths = sorted((dataset / "videos").rglob("*.mp4"))
    assert len(paths) == len(CLASSES) * OPTIONS["videos_per_class"]
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
            assert stream.average_rate == OPTIONS["fps"]
        assert _decode(path).shape == (OPTIONS["frames"], 96, 112, 3)
    assert not list(dataset.rglob("*.part"))


def test_same_seed_gives_identical_videos_and_another_seed_different_ones(dataset: Path, tmp_path: Path) -> None:
    # Content depends on (seed, class, index) only, so a one-video-per-class run reproduces index 0.
    generate_synthetic_dataset(tmp_path / "same", **{**OPTIONS, "videos_per_class": 1})
    generate_synthetic_dataset(tmp_path / "other", **{**OPTIONS, "videos_per_class": 1, "seed": 4})
    for cls in CLASSES:
        reference = _decode(_video(dataset, cls.name, 0))
        np.testing.assert_array_equal(_decode(_video(tmp_path / "same", cls.name, 0)), reference)
        assert _video(tmp_path / "same", cls.name, 0).read_bytes() == _video(dataset, cls.name, 0).read_bytes()
        other = _decode(_video(tmp_path / "other", cls.name, 0))
        assert np.abs(other.astype(np.int16) - reference).mean() > 10


def test_manifest_is_stratified_per_class_and_split(dataset: Path) -> None:
    rows = read_manifest(dataset / "manifest.csv")
    names = [cls.name for cls in CLASSES]
    assert (dataset / "classes.txt").read_text(encoding="utf-8").splitlines() == names
    assert all(names[r.label] == r.label_name and Path(r.path).stem == r.video_id for r in rows)
    assert all((dataset / "videos" / r.path).is_file() for r in rows)
    per_class_split = Counter((r.label_name, r.split) for r in rows)
    for name in names:
        assert [per_class_split[name, split] for split in ("train", "val", "test")] == [3, 1, 1]
    # A video index falls in the same split for every class, so test nuisances never occur in training.
    split_of_index = {(r.video_id[-4:], r.split) for r in rows}
    assert len(split_of_index) == OPTIONS["videos_per_class"]


def test_split_counts_round_by_largest_remainder() -> None:
    assert split_counts(12, (0.6, 0.2, 0.2)) == [7, 3, 2]
    assert split_counts(10, (0.6, 0.2, 0.2)) == [6, 2, 2]
    assert split_counts(5, (1.0, 0.0, 0.0)) == [5, 0, 0]
    assert all(sum(split_counts(n, (0.7, 0.15, 0.15))) == n for n in range(1, 30))


@pytest.mark.parametrize(("negative", "positive", "statistic"), [
    ("move_left", "move_right", "vx"),
    ("move_up", "move_down", "vy"),
    ("rotate_ccw", "rotate_cw", "curl"),
    ("recede", "approach", "div"),
])
def test_motion_pair_looks_alike_but_moves_oppositely(dataset: Path, negative: str, positive: str,
                                                      statistic: str) -> None:
    threshold = {"vx": 0.3, "vy": 0.3, "curl": 0.004, "div": 0.002}[statistic]
    for index in range(OPTIONS["videos_per_class"]):
        neg, pos = _decode(_video(dataset, negative, index)), _decode(_video(dataset, positive, index))
        # The pair shows the same poses in reverse order: frame t of one looks like frame T-1-t of the other
        # (up to camera shake and noise), so the frames, taken as a set, cannot tell the two classes apart.
        reversed_pos = pos[::-1].astype(np.float32)
        np.testing.assert_allclose(neg.mean(axis=(1, 2)), reversed_pos.mean(axis=(1, 2)), atol=2)
        np.testing.assert_allclose(neg.std(axis=(1, 2)), reversed_pos.std(axis=(1, 2)), atol=2)
        assert _motion(neg)[statistic] < -threshold
        assert _motion(pos)[statistic] > threshold


def test_class_groups_split_the_classes_by_the_stream_that_can_tell_them_apart() -> None:
    assert MOTION_ONLY == ("move_left", "move_right", "move_up", "move_down", "rotate_cw", "rotate_ccw", "approach",
                           "recede")
    assert APPEARANCE_ONLY == ("shape_disc", "shape_star", "texture_stripes", "texture_checker")
    assert sorted(MOTION_ONLY + APPEARANCE_ONLY) == sorted(cls.name for cls in CLASSES)


@pytest.mark.parametrize(("first", "second"), [("shape_disc", "shape_star"), ("texture_stripes", "texture_checker")])
def test_appearance_pair_moves_alike_but_looks_different(dataset: Path, first: str, second: str) -> None:
    for index in range(OPTIONS["videos_per_class"]):
        a, b = _decode(_video(dataset, first, index)), _decode(_video(dataset, second, index))
        velocity_a = np.array([_motion(a)[k] for k in ("vx", "vy")])
        velocity_b = np.array([_motion(b)[k] for k in ("vx", "vy")])
        assert np.linalg.norm(velocity_a) > 0.3
        assert np.linalg.norm(velocity_a - velocity_b) < 0.25 * np.linalg.norm(velocity_a)
        gray_a, gray_b = (cv2.cvtColor(v[0], cv2.COLOR_RGB2GRAY).astype(np.int16) for v in (a, b))
        assert np.mean(np.abs(gray_a - gray_b) > 30) > 0.01  # the objects differ over part of the frame


@pytest.mark.parametrize("radius", [0.1, 0.18])
def test_orbit_circles_the_mid_clip_position_at_the_set_radius(radius: float) -> None:
    scene = SceneParams(orbit_radius=radius)
    nuisance = draw_nuisance(seed=2, index=3, frames=16, width=64, height=48, scene=scene)
    orbit = next(cls for cls in CLASSES if cls.name == "shape_disc").motion
    centres, _, _ = object_poses(orbit, nuisance, radius * 48, scene)
    distances = np.hypot(*(centres - np.asarray(nuisance.centre)).T)
    np.testing.assert_allclose(distances, radius * 48, rtol=1e-9)
    assert np.ptp(np.arctan2(*(centres - np.asarray(nuisance.centre)).T[::-1])) > 0.5  # it moves along the circle


def test_rerun_skips_existing_videos_and_refuses_other_options(tmp_path: Path) -> None:
    options = {"videos_per_class": 1, "frames": 4, "size": (32, 32), "seed": 1}
    first = generate_synthetic_dataset(tmp_path, **options)
    assert (first.written, first.skipped, first.classes) == (len(CLASSES), 0, len(CLASSES))
    kept = _video(tmp_path, "move_up", 0)
    kept_time = kept.stat().st_mtime_ns
    removed = _video(tmp_path, "recede", 0)
    removed.unlink()
    removed.with_name(f".{removed.name}.part").write_bytes(b"half a video")  # left by a killed run
    second = generate_synthetic_dataset(tmp_path, **options)
    assert (second.written, second.skipped) == (1, len(CLASSES) - 1)
    assert kept.stat().st_mtime_ns == kept_time
    assert _decode(removed).shape == (4, 32, 32, 3)
    assert not list(tmp_path.rglob("*.part"))
    with pytest.raises(InputError, match=r"synth\.json.*frames"):
        generate_synthetic_dataset(tmp_path, **{**options, "frames": 5})


@pytest.mark.parametrize(("options", "message"), [
    ({"size": (33, 32)}, "even"),
    ({"frames": 1}, "at least 2"),
    ({"split_fractions": (0.5, 0.2, 0.2)}, "summing to 1"),
])
def test_invalid_options_raise_input_error(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        generate_synthetic_dataset(tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_missing_h264_encoder_is_a_clear_error() -> None:
    assert pick_h264_encoder() in H264_ENCODERS
    with pytest.raises(ActrecError, match="no H.264 encoder.*no_such_encoder"):
        pick_h264_encoder(("no_such_encoder",))


def test_cli_writes_manifest(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["synth", "--out", str(tmp_path), "--videos-per-class", "2", "--frames", "3",
                                 "--size", "32x32", "--seed", "5", "--splits", "0.5,0,0.5", "--object-size", "0.5",
                                 "--orbit-radius", "0.1"])
    assert result.exit_code == 0, result.output
    assert f"wrote {2 * len(CLASSES)} videos" in result.output
    scene = json.loads((tmp_path / "synth.json").read_text())["scene"]
    assert (scene["object_size"], scene["orbit_radius"]) == (0.5, 0.1)
    rows = read_manifest(tmp_path / "manifest.csv")
    assert Counter(r.split for r in rows) == {"train": len(CLASSES), "test": len(CLASSES)}
    bad = runner.invoke(cli, ["synth", "--out", str(tmp_path), "--size", "32"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
