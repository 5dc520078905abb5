"""TV-L1 parity: our PyTorch solver against OpenCV's DualTVL1OpticalFlow on every real pair set of the shared data.

For each set, both implementations at default parameters (OpenCV: ``cv2.optflow.DualTVL1OpticalFlow_create()``,
a fresh object per pair; ours: ``tvl1_flow(img0, img1, TVL1Params())``) on the same grayscale pairs. Per pair and
per set: the fraction of pixels whose flows are within 0.1 px of each other (end-point distance), the mean and the
max of that distance; on the flow ground-truth pairs also the mean end-point error (EPE) of each against the truth.

Which pairs:
- clips: ``--pairs-per-clip`` (default 3) consecutive-frame pairs per clip, evenly spaced (starting at 1/4, 1/2 and
  3/4 of the clip), decoded and resized to 340x256 as ``extract-frames`` stores them by default (``compute-flow``
  takes the stored frames as they are), converted to gray as OpenCV does. The frames come from
  ``tests/test_tvl1.py``'s ``gray_frames`` (area resize in OpenCV; extract-frames resizes with FFmpeg's area filter
  and stores JPEG, so the frames differ from a store's by that much; both implementations see the same frames);
- "Kinetics test pairs": the 20 pairs of the parity test in ``tests/test_tvl1.py`` (5 clips x 4 pairs from frame 30);
- flow ground truth: the 5 pairs of ``flow_gt/`` at their own size (Sintel 1024x436, FlyingChairs 512x384), read
  as the test reads them.

    .venv/bin/python benchmarks/bench_parity.py [--pairs-per-clip 3] [--threads 1] [--sets kinetics,ava,...]

It prints one line per pair as it goes, then a Markdown table per set for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from actrec.pipeline.tvl1 import TVL1Params, tvl1_flow  # noqa: E402

# Real clips of ../shared/data/videos by set (the derived VP9 copy of tai chi and the edge cases are left out).
CLIP_SETS = {
    "kinetics": ("kinetics_arm_wrestling.mp4", "kinetics_clean_and_jerk.mp4", "kinetics_pool_cleaning.mp4",
                 "kinetics_skateboarding.mp4", "kinetics_tai_chi.mp4", "kinetics_flipping_pancake.mkv"),
    "ucf101": ("ucf101_ApplyEyeMakeup_xvid.avi",),
    "activitynet": ("activitynet_v_GGSY1Qvo990.mp4", "activitynet_v_ZNVhz7ctTq0.mp4"),
    "ava": ("ava_demo_6fps.mp4",),
    "ntu": ("ntu_S001C001P001R001A001_drink_water_1080p_h264.avi",),
}
SET_NAMES = ("flyingchairs", "sintel", "ava", "ucf101", "activitynet", "ntu", "kinetics", "kinetics-test")


@dataclass
class PairSet:
    """Pairs of one set: names, grayscale first and second frames, and ground truth where there is one."""

    name: str
    pairs: list[str]
    img0: list[np.ndarray]
    img1: list[np.ndarray]
    gt: list[np.ndarray] | None = None


def count_frames(path: Path) -> int:
    """Frames of a clip, counted by decoding (container headers can be 0 or wrong)."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def evenly_spaced_starts(num_frames: int, pairs: int) -> list[int]:
    """First frames of ``pairs`` consecutive pairs at k / (pairs + 1) of the clip, k = 1 .. pairs."""
    return [round(k * (num_frames - 2) / (pairs + 1)) for k in range(1, pairs + 1)]


def clip_set(name: str, videos: Path, clips, pairs_per_clip: int) -> PairSet:
    from test_tvl1 import gray_frames

    out = PairSet(name, [], [], [])
    for clip in clips:
        frames = gray_frames(videos / clip, 0, count_frames(videos / clip))
        for s in evenly_spaced_starts(len(frames), pairs_per_clip):
            out.pairs.append(f"{clip} {s}->{s + 1}")
            out.img0.append(frames[s])
            out.img1.append(frames[s + 1])
    return out


def kinetics_test_set(videos: Path) -> PairSet:
    """The 20 pairs of tests/test_tvl1.py's parity test, chosen by that module's constants."""
    from test_tvl1 import FIRST_FRAME, PAIRS_PER_CLIP, PARITY_CLIPS, gray_frames

    out = PairSet("kinetics-test", [], [], [])
    for clip in PARITY_CLIPS:
        frames = gray_frames(videos / clip, FIRST_FRAME, PAIRS_PER_CLIP + 1)
        for i in range(PAIRS_PER_CLIP):
            out.pairs.append(f"{clip} {FIRST_FRAME + i}->{FIRST_FRAME + i + 1}")
            out.img0.append(frames[i])
            out.img1.append(frames[i + 1])
    return out


def ground_truth_set(name: str, shared: Path) -> PairSet:
    from test_tvl1 import gt_pairs

    out = PairSet(name, [], [], [], [])
    for pair, a, b, gt in gt_pairs(shared):
        if pair.startswith(name):
            out.pairs.append(pair)
            out.img0.append(a)
            out.img1.append(b)
            out.gt.append(gt)
    return out


def load_set(name: str, shared: Path, pairs_per_clip: int) -> PairSet:
    if name == "kinetics-test":
        return kinetics_test_set(shared / "videos")
    if name in CLIP_SETS:
        return clip_set(name, shared / "videos", CLIP_SETS[name], pairs_per_clip)
    return ground_truth_set(name, shared)


def opencv_flow(img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
    """OpenCV's TV-L1 at its own defaults, a fresh solver per pair."""
    import cv2

    return cv2.optflow.DualTVL1OpticalFlow_create().calc(img0, img1, None)


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel end-point distance between two (H, W, 2) flows."""
    return np.sqrt(((a - b) ** 2).sum(-1))


@dataclass
class PairResult:
    pair: str
    within: float  # fraction of pixels within 0.1 px of OpenCV
    mean: float
    max: float
    epe_opencv: float | None = None
    epe_ours: float | None = None


def measure_set(ps: PairSet) -> tuple[list[PairResult], float, float]:
    """Both implementations on every pair of ``ps``; returns the results and each one's seconds."""
    t = time.perf_counter()
    ref = [opencv_flow(a, b) for a, b in zip(ps.img0, ps.img1)]
    t_cv = time.perf_counter() - t
    t = time.perf_counter()
    ours = tvl1_flow(np.stack(ps.img0), np.stack(ps.img1), TVL1Params()).numpy()
    t_ours = time.perf_counter() - t
    results = []
    for i, name in enumerate(ps.pairs):
        d = distance(ours[i], ref[i])
        r = PairResult(name, float((d < 0.1).mean()), float(d.mean()), float(d.max()))
        if ps.gt is not None:
            r.epe_opencv = float(distance(ref[i], ps.gt[i]).mean())
            r.epe_ours = float(distance(ours[i], ps.gt[i]).mean())
        print(f"  {name}: {100 * r.within:.2f}% within 0.1 px, mean {r.mean:.4f} px, max {r.max:.2f} px"
              + (f", EPE opencv {r.epe_opencv:.4f} ours {r.epe_ours:.4f}" if r.epe_opencv is not None else ""),
              flush=True)
        results.append(r)
    return results, t_cv, t_ours


def set_row(name: str, size: str, results: list[PairResult]) -> str:
    """One Markdown row: pairs, % within 0.1 px (all pixels, worst pair), mean and max distance."""
    within = np.array([r.within for r in results])
    return (f"| {name} | {len(results)} | {size} | {100 * within.mean():.2f}% | {100 * within.min():.2f}% | "
            f"{np.mean([r.mean for r in results]):.4f} | {max(r.max for r in results):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs-per-clip", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for ours (1: steady on a shared "
                                                          "machine, see tests/test_tvl1.py)")
    ap.add_argument("--sets", default=",".join(SET_NAMES), help=f"comma-separated subset of {','.join(SET_NAMES)}")
    ap.add_argument("--data", default=os.environ.get("ACTREC_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    args = ap.parse_args()
    import cv2

    torch.set_num_threads(args.threads)
    shared = Path(args.data)
    names = [s for s in args.sets.split(",") if s]
    unknown = set(names) - set(SET_NAMES)
    if unknown:
        ap.error(f"unknown sets {sorted(unknown)}; choose from {','.join(SET_NAMES)}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"OpenCV {cv2.__version__}, {args.threads} torch thread(s); load avg at start "
          f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    start = time.perf_counter()
    rows, gt_rows = [], []
    for name in names:
        ps = load_set(name, shared, args.pairs_per_clip)
        h, w = ps.img0[0].shape
        print(f"{name}: {len(ps.pairs)} pairs {w}x{h}", flush=True)
        results, t_cv, t_ours = measure_set(ps)
        print(f"  opencv {t_cv:.1f} s, ours {t_ours:.1f} s (the first call of a size includes compiling)", flush=True)
        rows.append(set_row(name, f"{w}x{h}", results))
        print(f"  {rows[-1]}", flush=True)
        gt_rows += [f"| {r.pair} | {100 * r.within:.2f}% | {r.mean:.4f} | {r.max:.2f} | {r.epe_opencv:.4f} | "
                    f"{r.epe_ours:.4f} |" for r in results if r.epe_opencv is not None]
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load avg at end "
          f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| set | pairs | size | within 0.1 px (all pixels) | worst pair | mean distance (px) | max distance (px) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if gt_rows:
        print("\n| ground-truth pair | within 0.1 px | mean distance (px) | max distance (px) | OpenCV EPE "
              "| ours EPE |")
        print("|---|---|---|---|---|---|")
        print("\n".join(gt_rows))


if __name__ == "__main__":
    main()
