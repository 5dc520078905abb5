"""Frame extraction speed and footprint: `actrec extract-frames` against the ffmpeg command line, in one run.

The reference is what mmaction2 users do: one ffmpeg process per video writing a folder of JPEG files at
340x256 (`-vf scale=340:256 -q:v 2`), N videos at a time on N cores. Ours runs with `--workers N` on the same
clips. Both outputs are counted in frames and bytes on disk.

    python benchmarks/bench_extract.py [--videos DIR] [--cores N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from actrec.data_manifests.build import scan_videos
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.frames import ExtractOptions, extract_frames


def clips(videos: Path) -> list[Path]:
    """The real clips (not the edge cases), repeated so that each run has enough work to time."""
    return sorted(p for p in videos.glob("*.*") if p.suffix in (".mp4", ".avi", ".mkv", ".webm"))


def run_ffmpeg(videos: list[Path], out: Path, cores: int) -> int:
    def one(i_video: tuple[int, Path]) -> None:
        folder = out / f"{i_video[0]:03d}_{i_video[1].stem}"
        folder.mkdir(parents=True)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-threads", "1", "-i", str(i_video[1]), "-vf",
                        "scale=340:256", "-q:v", "2", str(folder / "img_%05d.jpg")], check=True)

    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(one, enumerate(videos)))
    return sum(1 for _ in out.rglob("*.jpg"))


def run_ours(videos: list[Path], out: Path, cores: int) -> int:
    root = out / "links"
    root.mkdir(parents=True)
    for i, video in enumerate(videos):
        (root / f"{i:03d}_{video.name}").symlink_to(video)
    summary = extract_frames(scan_videos(root).rows, root, out / "store", ExtractOptions(ResizeSpec(340, 256)),
                             workers=cores, progress=False)
    assert summary.failed == 0
    return summary.frames


def footprint(folder: Path) -> tuple[int, int, int]:
    """(bytes in files, bytes allocated on disk, files) under a folder, links excluded."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    stats = [p.stat() for p in files]
    return sum(st.st_size for st in stats), sum(st.st_blocks * 512 for st in stats), len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/videos")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3, help="how many times each clip is processed")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg not found on PATH (apt-get install ffmpeg)")
    videos = clips(args.videos) * args.repeat
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"{platform.machine()}, {args.cores} cores, {len(videos)} videos; {version}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, runner in (("ffmpeg -> JPEG folders", run_ffmpeg), ("actrec extract-frames", run_ours)):
            out = Path(tmp) / name.split()[0]
            start = time.perf_counter()
            frames = runner(videos, out, args.cores)
            results[name] = (time.perf_counter() - start, *footprint(out), frames)
    print(f"{'tool':24s} {'frames':>7s} {'seconds':>8s} {'frames/s':>9s} {'MB':>8s} {'MB on disk':>11s} {'files':>7s}")
    for name, (seconds, nbytes, allocated, files, frames) in results.items():
        print(f"{name:24s} {frames:7d} {seconds:8.2f} {frames / seconds:9.0f} {nbytes / 1e6:8.1f} "
              f"{allocated / 1e6:11.1f} {files:7d}")
    (t_ff, b_ff, a_ff, _, f_ff), (t_us, b_us, a_us, _, f_us) = results.values()
    print(f"speed ratio (ours / ffmpeg, frames/s): {(f_us / t_us) / (f_ff / t_ff):.2f}x; footprint ratio "
          f"(ours / ffmpeg): {b_us / b_ff:.3f} in bytes, {a_us / a_ff:.3f} allocated on disk")


if __name__ == "__main__":
    main()
