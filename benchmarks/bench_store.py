"""Choose the frame store encoding: bytes on disk and random-read speed of each candidate, on the real clips.

Candidates: JPEG bytes per frame from FFmpeg's MJPEG encoder (qscale 2 and 4, as `ffmpeg -q:v`) or from libjpeg
through OpenCV (quality 95, the usual cv2.imwrite setting), and raw uint8 frames chunked one per frame with gzip-1,
lzf or no compression. Write speed covers encoding and the HDF5 write (not decoding the video). Reads imitate training: random (video, frame) pairs, decoded to RGB arrays.

    python benchmarks/bench_store.py [--videos DIR] [--reads 2000]
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time
from pathlib import Path

import av
import cv2
import h5py
import numpy as np

from actrec.pipeline.decode import ResizeSpec, decode_frames
from actrec.pipeline.frames import decode_jpeg, encode_frames
from actrec.pipeline.store import Dataset, StoreLayout, write_part

CLIPS = ["kinetics_arm_wrestling.mp4", "kinetics_pool_cleaning.mp4", "kinetics_skateboarding.mp4",
         "ucf101_ApplyEyeMakeup_xvid.avi", "activitynet_v_ZNVhz7ctTq0.mp4"]


def _raw(compression: str | None):
    def encode(frames: list[av.VideoFrame]) -> Dataset:
        stack = np.stack([f.to_ndarray() for f in frames])
        return Dataset(stack, chunks=(1, *stack.shape[1:]), compression=compression)
    return encode


def _mjpeg(qscale: int):
    return lambda frames: encode_frames([f.reformat(format="yuvj420p") for f in frames], "jpeg", qscale)


def _libjpeg(frames: list[av.VideoFrame]) -> Dataset:
    return Dataset([cv2.imencode(".jpg", f.to_ndarray(format="bgr24"), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].ravel()
                    for f in frames])


CANDIDATES = {
    "jpeg mjpeg q2": _mjpeg(2),
    "jpeg mjpeg q4": _mjpeg(4),
    "jpeg libjpeg q95": _libjpeg,
    "raw gzip-1": lambda frames: encode_frames(frames, "raw"),
    "raw lzf": _raw("lzf"),
    "raw uncompressed": _raw(None),
}


def read_speed(paths: dict[str, Path], lengths: dict[str, int], reads: int) -> float:
    rng = random.Random(0)
    picks = [(vid, rng.randrange(lengths[vid])) for vid in rng.choices(sorted(paths), k=reads)]
    files = {vid: h5py.File(p, "r") for vid, p in paths.items()}
    start = time.perf_counter()
    for vid, i in picks:
        data = files[vid]["videos"][vid]["frames"][i]
        frame = data if data.ndim == 3 else decode_jpeg(data)
        assert frame.ndim == 3
    elapsed = time.perf_counter() - start
    for f in files.values():
        f.close()
    return reads / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/videos")
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    decoded = {Path(c).stem: list(decode_frames(args.videos / c, ResizeSpec(340, 256))) for c in CLIPS}
    total_frames = sum(len(f) for f in decoded.values())
    raw_bytes = total_frames * 340 * 256 * 3
    print(f"{platform.processor() or platform.machine()}, {len(CLIPS)} clips, {total_frames} frames at 340x256")
    print(f"{'encoding':18s} {'MB':>8s} {'KB/frame':>9s} {'vs raw':>7s} {'write fr/s':>11s} {'random read fr/s':>17s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, encode in CANDIDATES.items():
            layout = StoreLayout(Path(tmp) / name.replace(" ", "_"), "frames", 1)
            start = time.perf_counter()
            sizes = {vid: write_part(layout, 0, vid, {"frames": encode(frames)}, {})
                     for vid, frames in decoded.items()}
            write_fps = total_frames / (time.perf_counter() - start)
            paths = {vid: layout.part_path(0, vid) for vid in decoded}
            rps = read_speed(paths, {v: len(f) for v, f in decoded.items()}, args.reads)
            size = sum(sizes.values())
            print(f"{name:18s} {size / 1e6:8.1f} {size / total_frames / 1e3:9.1f} {size / raw_bytes:7.3f} "
                  f"{write_fps:11.0f} {rps:17.0f}")


if __name__ == "__main__":
    main()
