"""Prepare the inputs of benchmarks/device_check.sh here, where PyAV and opencv-contrib are installed.

The GPU machine we borrow has torch, triton, h5py, numpy and opencv-python-headless, but no PyAV and no
``cv2.optflow``. This decodes the real frames the CUDA tests and the benchmark use (the 20 parity pairs of
tests/test_tvl1.py and the small pairs) and computes OpenCV's TV-L1 flows for the 20 pairs, into one compressed
.npz that the device check carries (git-ignored ``.device_check/``):

    .venv/bin/python benchmarks/prepare_device_check.py           # .device_check/prepared.npz, 28.1 MiB
    .venv/bin/python benchmarks/prepare_device_check.py --tiny    # .device_check/tiny.npz, for --dry-run

Keys: ``"<clip>:<start>:<count>"`` (uint8 frames, as tests/test_tvl1.py's ``gray_frames`` returns them), ``img0``
and ``img1`` (the parity pairs, uint8 ``(N, H, W)``), ``opencv_flow`` (float32 ``(N, H, W, 2)``, OpenCV's flows
of them), ``cpu_flow`` (our CPU solver's, which the CUDA parity test also compares with) and ``params`` (the TV-L1
parameters of those flows, JSON). ``--tiny`` makes the same from 64x48 crops of
the first 4 pairs with light parameters (``TINY_PARAMS``): what the dry run solves on the CPU in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

# (clip, first frame, frames) that the tests run on the device decode
SMALL = [("kinetics_arm_wrestling.mp4", 60, 2), ("kinetics_skateboarding.mp4", 40, 2)]
TINY_CROP = (slice(100, 148), slice(140, 204))  # 64x48, a moving part of every parity clip
TINY_PAIRS = 4
TINY_PARAMS = dict(nscales=2, warps=1, outer_iterations=1, inner_iterations=3)


def prepare(videos: Path, out: Path, tiny: bool = False) -> dict:
    from test_tvl1 import FIRST_FRAME, PAIRS_PER_CLIP, PARITY_CLIPS, gray_frames

    from actrec.pipeline.flow_opencv import opencv_tvl1_flow
    from actrec.pipeline.tvl1 import TVL1Params, tvl1_flow

    arrays: dict[str, np.ndarray] = {}
    img0, img1 = [], []
    for clip in PARITY_CLIPS:
        frames = gray_frames(videos / clip, FIRST_FRAME, PAIRS_PER_CLIP + 1)
        if not tiny:  # the parity tests' frames (the dry run skips the CUDA tests: it needs only the pairs)
            arrays[f"{clip}:{FIRST_FRAME}:{PAIRS_PER_CLIP + 1}"] = frames
        img0.extend(frames[:-1])
        img1.extend(frames[1:])
    for clip, start, count in SMALL:
        arrays[f"{clip}:{start}:{count}"] = gray_frames(videos / clip, start, count)
    params = TVL1Params(**TINY_PARAMS) if tiny else TVL1Params()
    a, b = np.stack(img0), np.stack(img1)
    if tiny:
        a, b = a[:TINY_PAIRS][(slice(None), *TINY_CROP)], b[:TINY_PAIRS][(slice(None), *TINY_CROP)]
    arrays["img0"], arrays["img1"] = np.ascontiguousarray(a), np.ascontiguousarray(b)
    t = time.perf_counter()
    workers = 1 if tiny else os.cpu_count() or 1  # 4 tiny pairs take less than starting worker processes
    arrays["opencv_flow"] = opencv_tvl1_flow(arrays["img0"], arrays["img1"], params, workers=workers).numpy()
    arrays["params"] = np.array(json.dumps(asdict(params)))
    print(f"OpenCV flows of {len(a)} pairs: {time.perf_counter() - t:.1f} s", flush=True)
    if not tiny:  # the CPU solver's flows, which the CUDA parity test compares with: not computed on the GPU's time
        t = time.perf_counter()
        arrays["cpu_flow"] = tvl1_flow(arrays["img0"], arrays["img1"], params).numpy()
        print(f"our CPU flows of {len(a)} pairs: {time.perf_counter() - t:.1f} s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)  # never a half-written file under the final name
    return arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("ACTREC_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--tiny", action="store_true", help="64x48 crops of 4 pairs, light parameters (the dry run's)")
    ap.add_argument("--out", default=None,
                    help="output .npz [default: .device_check/prepared.npz, with --tiny .device_check/tiny.npz]")
    args = ap.parse_args()
    out = Path(args.out or REPO / ".device_check" / ("tiny.npz" if args.tiny else "prepared.npz"))
    arrays = prepare(Path(args.data) / "videos", out, args.tiny)
    print(f"wrote {out}: {len(arrays)} arrays, {out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
