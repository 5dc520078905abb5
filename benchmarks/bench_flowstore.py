"""Flow store codecs: bytes and random 10-flow stack reads of lossless codecs against mmaction2's JPEG folders.

Real clips are extracted at 340x256, their TV-L1 flow (OpenCV backend, default parameters) is stored, then exported
with `actrec export-rawframes` to `flow_x_00001.jpg`-style folders (JPEG quality 95, lossy). The same uint8 flow codes
are then written with each candidate codec: HDF5 filters (one chunk per flow, as `compute-flow` writes them) from
h5py and hdf5plugin (Zstandard levels, Blosc and Blosc2 with their shuffles, LZ4, Bitshuffle), and lossless images
stored as encoded bytes per flow (PNG of x beside y, WebP lossless of (x, y, 0)). Each read fetches L=10
consecutive flows (x and y) at a random position of a random video, as a training loader does; every codec is
checked to give back the stored codes exactly. The goal (issue 14): at most 2x the JPEG folders' bytes with at
least 3x their read rate.

    python benchmarks/bench_flowstore.py [--videos DIR] [--fps 4] [--reads 500] [--work DIR] [--clips A.mp4 ...]

``--work`` keeps the frames, flow and JPEG folders between runs (the stages resume, so a rerun only measures).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import h5py
import hdf5plugin
import numpy as np

from actrec.data_manifests.manifest import ManifestRow
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.flow import FlowOptions, FlowStore, compute_flow
from actrec.pipeline.frames import ExtractOptions, extract_frames
from actrec.pipeline.rawframes import MMACTION2, export_rawframes

CLIPS = ["kinetics_arm_wrestling.mp4", "kinetics_skateboarding.mp4", "kinetics_tai_chi.mp4",
         "ucf101_ApplyEyeMakeup_xvid.avi", "activitynet_v_GGSY1Qvo990.mp4", "activitynet_v_ZNVhz7ctTq0.mp4"]
L = 10

HDF5_CODECS = {
    "HDF5 uncompressed": {},
    "HDF5 gzip-1": {"compression": "gzip", "compression_opts": 1},
    "HDF5 gzip-6": {"compression": "gzip", "compression_opts": 6},
    "HDF5 Blosc-LZ4 + shuffle": dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
    "HDF5 Blosc-Zstd-5 + bitshuffle": dict(hdf5plugin.Blosc("zstd", 5, hdf5plugin.Blosc.BITSHUFFLE)),
    "HDF5 Blosc-Zstd-5": dict(hdf5plugin.Blosc("zstd", 5, hdf5plugin.Blosc.NOSHUFFLE)),
    "HDF5 Blosc-Zstd-9": dict(hdf5plugin.Blosc("zstd", 9, hdf5plugin.Blosc.NOSHUFFLE)),
    "HDF5 Blosc2-Zstd-5": dict(hdf5plugin.Blosc2("zstd", 5, hdf5plugin.Blosc2.NOFILTER)),
    "HDF5 Blosc2-Zstd-5 + bitshuffle": dict(hdf5plugin.Blosc2("zstd", 5, hdf5plugin.Blosc2.BITSHUFFLE)),
    "HDF5 Blosc2-Zstd-5 + delta": dict(hdf5plugin.Blosc2("zstd", 5, hdf5plugin.Blosc2.DELTA)),
    "HDF5 Blosc2-LZ4HC-9": dict(hdf5plugin.Blosc2("lz4hc", 9, hdf5plugin.Blosc2.NOFILTER)),
    "HDF5 LZ4": dict(hdf5plugin.LZ4()),
    "HDF5 Bitshuffle + Zstd-3": dict(hdf5plugin.Bitshuffle(cname="zstd", clevel=3)),
    "HDF5 Zstd-1": dict(hdf5plugin.Zstd(clevel=1)),
    "HDF5 Zstd-3": dict(hdf5plugin.Zstd(clevel=3)),
    "HDF5 Zstd-9": dict(hdf5plugin.Zstd(clevel=9)),
    "HDF5 Zstd-12": dict(hdf5plugin.Zstd(clevel=12)),
    "HDF5 Zstd-19": dict(hdf5plugin.Zstd(clevel=19)),
}


def png_encode(flow: np.ndarray) -> np.ndarray:
    return cv2.imencode(".png", np.concatenate([flow[..., 0], flow[..., 1]], axis=1),
                        [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].ravel()


def png_decode(buf: np.ndarray) -> np.ndarray:
    side_by_side = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.stack(np.split(side_by_side, 2, axis=1), axis=-1)


def webp_encode(flow: np.ndarray) -> np.ndarray:
    bgr = np.dstack([flow, np.zeros(flow.shape[:2], np.uint8)])
    return cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].ravel()  # quality > 100: lossless


def webp_decode(buf: np.ndarray) -> np.ndarray:
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., :2]


IMAGE_CODECS: dict[str, tuple[Callable, Callable]] = {
    "PNG per flow (bytes in HDF5)": (png_encode, png_decode),
    "WebP lossless per flow (bytes in HDF5)": (webp_encode, webp_decode),
}


def read_jpeg_stack(folder: Path, start: int) -> np.ndarray:
    """L flows from a rawframe folder as uint8 [L, H, W, 2], the way mmaction2 decodes them (one file per image)."""
    return np.stack([np.stack([cv2.imread(str(folder / MMACTION2.name(prefix, i)), cv2.IMREAD_GRAYSCALE)
                               for prefix in (MMACTION2.flow_x_prefix, MMACTION2.flow_y_prefix)], axis=-1)
                     for i in range(start, start + L)])


def write_hdf5(path: Path, flows: dict[str, np.ndarray], options: dict) -> None:
    """The uint8 flows in one HDF5 file with an HDF5 filter, one chunk per flow."""
    with h5py.File(path, "w") as f:
        for vid, data in flows.items():
            f.create_dataset(vid, data=data, chunks=(1, *data.shape[1:]), **options)


def write_images(path: Path, flows: dict[str, np.ndarray], encode: Callable) -> None:
    """The uint8 flows as one encoded image per flow, a variable-length byte dataset per video."""
    with h5py.File(path, "w") as f:
        for vid, data in flows.items():
            items = np.empty(len(data), dtype=object)
            items[:] = [encode(flow) for flow in data]
            f.create_dataset(vid, data=items, dtype=h5py.vlen_dtype(np.uint8))


def time_reads(read: Callable[[str, int], np.ndarray], picks: list[tuple[str, int]]) -> float:
    start = time.perf_counter()
    for vid, s in picks:
        read(vid, s)
    return len(picks) / (time.perf_counter() - start)


def disk_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_blocks * 512 for p in paths if p.is_file())


def prepare(videos: Path, root: Path, clips: list[str], fps: float) -> None:
    """Frames, flow and JPEG folders of the clips under ``root`` (each stage resumes what is already there)."""
    rows = [ManifestRow(Path(c).stem, c, 0, "c", "train") for c in clips]
    extract_frames(rows, videos, root / "frames", ExtractOptions(ResizeSpec(340, 256), fps=fps), workers=2,
                   progress=False)
    compute_flow(root / "frames", root / "flow", FlowOptions(backend="opencv", compression="none"),
                 video_ids=[r.video_id for r in rows], workers=2, progress=False)
    export_rawframes(root / "frames", root / "raw", root / "flow", rows, workers=2, progress=False)


def measure(root: Path, videos: list[str], reads: int) -> tuple[list[tuple[str, float, int, float, bool]], int]:
    """(codec, stacks/s, bytes, write seconds, lossless) of the JPEG folders and of every codec; the flow count."""
    with FlowStore(root / "flow") as store:
        flows = {v: store.read_stack(v, 0, store.num_flows(v)) for v in videos}
    rng = random.Random(0)
    picks = [(v, rng.randrange(len(flows[v]) - L + 1)) for v in rng.choices(sorted(flows), k=reads)]
    jpeg_bytes = disk_bytes([p for p in (root / "raw").rglob("flow_*.jpg")])
    rows = [("mmaction2 JPEG folders (lossy, quality 95)",
             time_reads(lambda v, s: read_jpeg_stack(root / "raw" / v, s), picks), jpeg_bytes, float("nan"), False)]
    for name, options in HDF5_CODECS.items():
        rows.append(_measure_codec(root / "codec.h5", name, flows, picks, lambda p: write_hdf5(p, flows, options),
                                   lambda f, v, s: f[v][s:s + L], lambda f, v: f[v][()]))
    for name, (encode, decode) in IMAGE_CODECS.items():
        rows.append(_measure_codec(root / "codec.h5", name, flows, picks, lambda p: write_images(p, flows, encode),
                                   lambda f, v, s: np.stack([decode(b) for b in f[v][s:s + L]]),
                                   lambda f, v: np.stack([decode(b) for b in f[v][()]])))
    return rows, sum(len(data) for data in flows.values())


def _measure_codec(path: Path, name: str, flows: dict[str, np.ndarray], picks: list[tuple[str, int]],
                   write: Callable[[Path], None], read: Callable, read_all: Callable) -> tuple:
    start = time.perf_counter()
    write(path)
    seconds = time.perf_counter() - start
    with h5py.File(path, "r") as f:
        rate = time_reads(lambda v, s: read(f, v, s), picks)
        lossless = all(np.array_equal(read_all(f, v), data) for v, data in flows.items())
    size = path.stat().st_size
    path.unlink()
    return name, rate, size, seconds, lossless


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/videos")
    parser.add_argument("--fps", type=float, default=4.0, help="frame rate the clips are resampled to")
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--clips", nargs="+", default=CLIPS, help="clips of --videos to use")
    parser.add_argument("--work", type=Path, help="keep frames, flow and JPEG folders here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        prepare(args.videos, root, args.clips, args.fps)
        rows, flows = measure(root, [Path(c).stem for c in args.clips], args.reads)
    jpeg_rate, jpeg_bytes = rows[0][1], rows[0][2]
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}; {len(args.clips)} clips, "
          f"{flows} flows at 340x256, {args.reads} random stacks of {L}")
    print(f"{'codec':42s} {'stacks/s':>9s} {'x JPEG':>7s} {'MB':>7s} {'x JPEG':>7s} {'write s':>8s} lossless  goal")
    for name, rate, size, seconds, lossless in rows:
        goal = lossless and size <= 2 * jpeg_bytes and rate >= 3 * jpeg_rate
        print(f"{name:42s} {rate:9.1f} {rate / jpeg_rate:6.2f}x {size / 1e6:7.2f} {size / jpeg_bytes:6.2f}x "
              f"{seconds:8.2f} {'yes' if lossless else 'no':8s}  {'met' if goal else ''}")


if __name__ == "__main__":
    main()
