"""Scale: 1,000 and then 10,000 tiny generated videos through every stage, to see how time and memory grow.

Each video is an 8-frame 32x24 H.264 clip of a textured square moving in one of 4 directions (one class per
direction, a class-per-folder tree). The stages run as the user runs them, each in its own process:
``make-manifest folder``, ``extract-frames``, ``compute-flow --backend opencv`` (with a one-scale, one-warp
TV-L1 unless ``--full-tvl1``: what grows with the videos is the stage's own work, TV-L1's cost per pair is
measured by bench_flow.py) and the training loader
(``actrec.training.feed.train_loader``: every video read once through 2 DataLoader workers). Per stage: time
per video, peak resident memory of the stage's process tree, and the time of a rerun when everything is already
done (a resume must take seconds, not redo work). Then the growth from the first size to the last: the goal is
time linear in the videos (per-video time flat) and memory flat.

    python benchmarks/bench_scale.py [--sizes 1000 10000] [--work DIR] [--workers 2] [--full-tvl1]

Generated videos are kept in ``--work`` (default: a folder in /tmp) and reused by a later run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actrec.pipeline.synth import pick_h264_encoder, write_h264

FRAMES, WIDTH, HEIGHT = 8, 32, 24
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
LIGHT_TVL1 = ["--nscales", "1", "--warps", "1", "--inner-iterations", "5", "--outer-iterations", "1"]

LOADER = """
import sys, torch
from actrec.data_manifests.manifest import read_manifest
from actrec.training.config import TrainConfig
from actrec.training.datasets import ClipSource
from actrec.training.feed import train_loader
torch.set_num_threads(1)
rows = read_manifest(sys.argv[3])
config = TrainConfig(frames=sys.argv[1], flow=sys.argv[2], segments=2, flow_length=5, crop=16, resize=24,
                     scales=(1.0,), batch_size=16, iterations=len(rows) // 16, workers=2)
seen = sum(len(batch) for batch in train_loader(config, ClipSource(sys.argv[1], sys.argv[2], rows, 5)))
print(f"loader: {seen} clips")
"""


def render(direction: tuple[int, int], seed: int) -> np.ndarray:
    """RGB ``uint8[FRAMES, HEIGHT, WIDTH, 3]``: a random texture square moving ``direction`` px per frame."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    square = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    frames = np.repeat(background[None], FRAMES, axis=0)
    for t in range(FRAMES):
        x, y = 11 + direction[0] * (t - FRAMES // 2), 7 + direction[1] * (t - FRAMES // 2)
        frames[t, y:y + 10, x:x + 10] = square
    return frames


def generate(root: Path, count: int) -> float:
    """Write ``count`` videos under ``root/<direction>/`` (those already there are kept); return seconds spent."""
    start = time.perf_counter()
    encoder = pick_h264_encoder()
    names = list(DIRECTIONS)
    for i in range(count):
        name = names[i % len(names)]
        path = root / name / f"{name}_{i:06d}.mp4"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_h264(path, render(DIRECTIONS[name], i), fps=8, encoder=encoder)
    return time.perf_counter() - start


@dataclass
class Run:
    seconds: float
    peak_mb: float


def run(args: list[str]) -> Run:
    """Run a command; its wall time and the peak resident memory of its process tree (wait4's ru_maxrss)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(args[:4])} failed:\n{output[-3000:]}")
    return Run(seconds, usage.ru_maxrss / 1024)


def stages(work: Path, videos: Path, workers: int, tvl1: list[str]) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "actrec.cli"]
    manifest, frames, flow = work / "manifest.csv", work / "frames", work / "flow"
    return {
        "make-manifest": [*cli, "make-manifest", "folder", "--video-root", str(videos), "-o", str(manifest)],
        "extract-frames": [*cli, "extract-frames", "--manifest", str(manifest), "--video-root", str(videos),
                           "--out", str(frames), "--size", f"{WIDTH}x{HEIGHT}", "--workers", str(workers),
                           "--quiet"],
        "compute-flow": [*cli, "compute-flow", "--frames", str(frames), "--out", str(flow), "--backend", "opencv",
                         "--workers", str(workers), "--quiet", *tvl1],
        "loader": [sys.executable, "-c", LOADER, str(frames), str(flow), str(manifest)],
    }


def measure(size: int, root: Path, workers: int, tvl1: list[str]) -> dict[str, tuple[Run, Run | None]]:
    """Every stage on ``size`` videos, then again (the rerun) on the finished outputs."""
    videos = root / f"videos{size}"
    print(f"{size} videos: generated in {generate(videos, size):.0f} s", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f"scale{size}-", dir=root))
    results = {}
    for name, args in stages(work, videos, workers, tvl1).items():
        first = run(args)
        again = run(args) if name != "loader" else None  # the loader has nothing to resume
        results[name] = (first, again)
        print(f"  {name:15s} {first.seconds / size * 1e3:7.2f} ms/video  peak {first.peak_mb:6.0f} MB  "
              f"rerun {again.seconds if again else float('nan'):6.1f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "actrec_bench_scale")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full-tvl1", action="store_true", help="TV-L1 with OpenCV's default parameters")
    args = parser.parse_args()
    tvl1 = [] if args.full_tvl1 else LIGHT_TVL1
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}, "
          f"{FRAMES} frames {WIDTH}x{HEIGHT} per video, --workers {args.workers}, TV-L1 {' '.join(tvl1) or 'defaults'}",
          flush=True)
    startup = run([sys.executable, "-m", "actrec.cli", "--help"])
    print(f"process start (python -m actrec.cli --help): {startup.seconds:.1f} s, {startup.peak_mb:.0f} MB; "
          "every stage and rerun below includes it once", flush=True)
    results = {size: measure(size, args.work, args.workers, tvl1) for size in args.sizes}
    print(f"load average at the end {os.getloadavg()}")
    if len(results) > 1:
        small, big = min(results), max(results)
        print(f"growth {small} -> {big} videos (x{big / small:.0f}); 1.0 = per-video time or memory flat")
        for name in results[small]:
            (a, ra), (b, rb) = results[small][name], results[big][name]
            rerun = f", rerun x{rb.seconds / ra.seconds:.1f}" if ra and rb else ""
            print(f"  {name:15s} time per video x{(b.seconds / big) / (a.seconds / small):.2f}, "
                  f"peak memory x{b.peak_mb / a.peak_mb:.2f}{rerun}")


if __name__ == "__main__":
    main()
