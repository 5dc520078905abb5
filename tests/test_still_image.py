"""A still image under a video extension is refused as not a video, not stored as a 1-frame video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from actrec.data_manifests.manifest import ManifestRow
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.frames import ExtractOptions, FrameStore, extract_frames


def test_png_and_jpeg_renamed_as_videos_fail_with_one_line(tmp_path: Path, videos_dir: Path) -> None:
    picture = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    for name, ext in (("png.avi", ".png"), ("jpeg.mp4", ".jpg")):
        (tmp_path / name).write_bytes(cv2.imencode(ext, picture)[1].tobytes())
    (tmp_path / "real.mp4").symlink_to(videos_dir / "ava_demo_6fps.mp4")
    rows = [ManifestRow(Path(n).stem, n, 0, "c", "train") for n in ("png.avi", "jpeg.mp4", "real.mp4")]
    summary = extract_frames(rows, tmp_path, tmp_path / "store", ExtractOptions(ResizeSpec(32, 24)), progress=False,
                             log=lambda _: None)
    messages = sorted(f.message for f in summary.failures)
    assert messages == [f"{tmp_path / 'jpeg.mp4'}: not a video but a single JPEG image (whatever its extension); "
                        "give a video file",
                        f"{tmp_path / 'png.avi'}: not a video but a single PNG image (whatever its extension); "
                        "give a video file"]
    assert FrameStore(tmp_path / "store").video_ids == ["real"]
