"""Random 10-flow stack reads: our FlowStore against mmaction2-style JPEG folders holding the same flows, in one run.

Real clips are extracted at 340x256, their TV-L1 flow (OpenCV backend, default parameters) is stored, then exported
with `actrec export-rawframes` to `flow_x_00001.jpg`-style folders. Each read fetches L=10 consecutive flows (x and
y) at a random position of a random video, as a training loader does. Also reported: bytes on disk of both, and
the error the JPEG round trip adds to the uint8 flow codes.

    python benchmarks/bench_flowstore.py [--videos DIR] [--fps 4] [--reads 500]
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time
from pathlib import Path

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
         "ucf101_ApplyEyeMakeup_xvid.avi"]
L = 10


def read_jpeg_stack(folder: Path, start: int) -> np.ndarray:
    """L flows from a rawframe folder as uint8 [L, H, W, 2], the way mmaction2 decodes them (one file per image)."""
    return np.stack([np.stack([cv2.imread(str(folder / MMACTION2.name(prefix, i)), cv2.IMREAD_GRAYSCALE)
                               for prefix in (MMACTION2.flow_x_prefix, MMACTION2.flow_y_prefix)], axis=-1)
                     for i in range(start, start + L)])


def write_variant(path: Path, flows: dict[str, np.ndarray], options: dict) -> None:
    """The same uint8 flows in one HDF5 file with other storage options (one chunk per flow)."""
    with h5py.File(path, "w") as f:
        for vid, data in flows.items():
            f.create_dataset(vid, data=data, chunks=(1, *data.shape[1:]), **options)


def time_reads(read, picks: list[tuple[str, int]]) -> float:
    start = time.perf_counter()
    for vid, s in picks:
        read(vid, s)
    return len(picks) / (time.perf_counter() - start)


VARIANTS = {
    "HDF5 uncompressed": {},
    "HDF5 lzf": {"compression": "lzf"},
    "HDF5 gzip-1": {"compression": "gzip", "compression_opts": 1},
    "HDF5 shuffle+lzf": {"compression": "lzf", "shuffle": True},
    "HDF5 blosc-lz4 (hdf5plugin)": dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
}


def disk_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_blocks * 512 for p in paths if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/videos")
    parser.add_argument("--fps", type=float, default=4.0, help="frame rate the clips are resampled to")
    parser.add_argument("--reads", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [ManifestRow(Path(c).stem, c, 0, "c", "train") for c in CLIPS]
        extract_frames(rows, args.videos, root / "frames", ExtractOptions(ResizeSpec(340, 256), fps=args.fps),
                       workers=2, progress=False)
        compute_flow(root / "frames", root / "flow", FlowOptions(backend="opencv"), workers=2, progress=False)
        export_rawframes(root / "frames", root / "raw", root / "flow", workers=2, progress=False)
        store = FlowStore(root / "flow")
        counts = {v: store.num_flows(v) for v in store.video_ids}
        rng = random.Random(0)
        picks = [(v, rng.randrange(counts[v] - L + 1)) for v in rng.choices(sorted(counts), k=args.reads)]
        timings = {"FlowStore (as configured)": time_reads(lambda v, s: store.read_stack(v, s, L), picks),
                   "JPEG folders": time_reads(lambda v, s: read_jpeg_stack(root / "raw" / v, s), picks)}
        flows = {v: store.read_stack(v, 0, n) for v, n in counts.items()}
        sizes = {}
        for name, options in VARIANTS.items():
            path = root / f"{name.split()[1]}.h5"
            write_variant(path, flows, options)
            with h5py.File(path, "r") as f:
                timings[name] = time_reads(lambda v, s: f[v][s:s + L], picks)
            sizes[name] = path.stat().st_size
        errors = np.concatenate([(store.read_stack(v, 0, L).astype(int) - read_jpeg_stack(root / "raw" / v, 0)).ravel()
                                 for v, n in counts.items() if n >= L])
        ours = disk_bytes(list((root / "flow").glob("flow-*.h5")))
        jpegs = disk_bytes([p for p in (root / "raw").rglob("flow_*.jpg")])
        print(f"{platform.machine()}, {len(counts)} videos, {sum(counts.values())} flows at 340x256, "
              f"{args.reads} random stacks of {L}")
        for name, rate in timings.items():
            print(f"{name:30s} {rate:9.1f} stacks/s")
        for name in VARIANTS:
            print(f"  {name:30s} {timings[name] / timings['JPEG folders']:5.2f}x JPEG folders, {sizes[name] / 1e6:6.1f} MB")
        ratio = timings["FlowStore (as configured)"] / timings["JPEG folders"]
        print(f"read ratio (FlowStore as configured / JPEG folders): {ratio:.2f}x")
        print(f"on disk: FlowStore {ours / 1e6:.1f} MB, JPEG folders {jpegs / 1e6:.1f} MB")
        print(f"JPEG round trip error on the first {L} flows of each video (uint8 codes): mean {np.abs(errors).mean():.3f},"
              f" max {np.abs(errors).max()} (1 code = {2 * 20 / 255:.3f} px at bound 20)")


if __name__ == "__main__":
    main()
