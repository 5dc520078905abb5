"""Prepare the inputs of benchmarks/device_check.sh here, where PyAV and opencv-contrib are installed.

The GPU machine we borrow has torch, triton, h5py, numpy and opencv-python-headless, but no PyAV and no
``cv2.optflow``. This decodes the real frames the CUDA tests and the benchmark use (the 20 parity pairs of
tests/test_tvl1.py and the small pairs) and computes OpenCV's TV-L1 flows for the 20 pairs, into one .npz that
the device check carries (git-ignored ``.device_check/``):

    .venv/bin/python benchmarks/prepare_device_check.py [--out .device_check/prepared.npz]

Keys: ``"<clip>:<start>:<count>"`` (uint8 frames, as tests/test_tvl1.py's ``gray_frames`` returns them) and
``opencv_flow`` (float32 ``(20, 256, 340, 2)``, OpenCV's default parameters).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

# (clip, first frame, frames) that the tests run on the device decode
SMALL = [("kinetics_arm_wrestling.mp4", 60, 2), ("kinetics_skateboarding.mp4", 40, 2)]


def prepare(videos: Path, out: Path) -> dict:
    from test_tvl1 import FIRST_FRAME, PAIRS_PER_CLIP, PARITY_CLIPS, gray_frames

    from actrec.pipeline.flow_opencv import opencv_tvl1_flow
    from actrec.pipeline.tvl1 import TVL1Params

    arrays: dict[str, np.ndarray] = {}
    img0, img1 = [], []
    for clip in PARITY_CLIPS:
        frames = gray_frames(videos / clip, FIRST_FRAME, PAIRS_PER_CLIP + 1)
        arrays[f"{clip}:{FIRST_FRAME}:{PAIRS_PER_CLIP + 1}"] = frames
        img0.extend(frames[:-1])
        img1.extend(frames[1:])
    for clip, start, count in SMALL:
        arrays[f"{clip}:{start}:{count}"] = gray_frames(videos / clip, start, count)
    arrays["img0"], arrays["img1"] = np.stack(img0), np.stack(img1)
    t = time.perf_counter()
    arrays["opencv_flow"] = opencv_tvl1_flow(arrays["img0"], arrays["img1"], TVL1Params(),
                                             workers=os.cpu_count() or 1).numpy()
    print(f"OpenCV flows of {len(img0)} pairs: {time.perf_counter() - t:.1f} s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)  # never a half-written file under the final name
    return arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("ACTREC_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(REPO / ".device_check" / "prepared.npz"))
    args = ap.parse_args()
    arrays = prepare(Path(args.data) / "videos", Path(args.out))
    size = sum(a.nbytes for a in arrays.values())
    print(f"wrote {args.out}: {len(arrays)} arrays, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
