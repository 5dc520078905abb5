"""Benchmark the flow reads of a clip: ``ClipSource`` (overlapping stacks read as one span) against the reference,
one ``FlowStore.read_stack`` call per stack (what ``ClipSource`` did before), in one run on the same stores.

Generated stores (JPEG frames, zstd uint8 flow, as ``extract-frames`` / ``compute-flow`` write them; see
``bench_train.write_stores``) with short videos (the demo's 16 frames: STILT's 3 training stacks of 10 flows out of
15 overlap) and long ones (UCF101's mean is about 186 frames: training stacks rarely overlap, so nothing should
change), read as STILT trains (3 segments) and as it tests (25 positions: heavy overlap at every length).

    python benchmarks/bench_clip_reads.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from actrec.data_manifests.manifest import read_manifest
from actrec.training.datasets import ClipSource, segment_starts, stack_indices
from bench_train import write_stores

FLOW_LENGTH = 10


def per_stack_reads(source: ClipSource, index: int, starts: list[int]) -> list[np.ndarray]:
    """The reference: every stack read on its own."""
    video_id, num_flows = source.rows[index].video_id, source.num_flows(index)
    stacks = []
    for start in starts:
        available = min(FLOW_LENGTH, num_flows - start)
        stacks.append(source.flow.read_stack(video_id, start, available)[stack_indices(0, FLOW_LENGTH, available)])
    return stacks


def ms_per_clip(read, clips: list[tuple[int, list[int]]]) -> float:
    """Milliseconds per clip of ``read(video index, starts)`` over ``clips``."""
    start = time.perf_counter()
    for index, starts in clips:
        read(index, starts)
    return 1000 * (time.perf_counter() - start) / len(clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300, help="clips per measurement")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| videos | read as | positions per clip | per stack (ms/clip) | spans (ms/clip) | ratio |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for frames in (16, 186):
            root = Path(tmp) / f"f{frames}"
            manifest = write_stores(root, videos=12, frames=frames, width=args.size, height=args.size)
            source = ClipSource(root / "frames", root / "flow", read_manifest(manifest), FLOW_LENGTH)
            for mode, segments in (("training", 3), ("test", 25)):
                clips = []
                for _ in range(args.clips):
                    index = int(rng.integers(len(source)))
                    positions = source.num_positions(index)
                    chosen = segment_starts(positions, segments, rng if mode == "training" else None)
                    clips.append((index, [int(s) for s in chosen]))
                for index, starts in clips[:20]:  # the same stacks both ways
                    spans = source.read_stacks(source.rows[index].video_id, starts, source.num_flows(index))
                    assert all(np.array_equal(a, b) for a, b in zip(spans, per_stack_reads(source, index, starts)))
                timings = {}
                for _ in range(2):  # interleaved, the best of two each
                    for name, read in (("stack", lambda i, s: per_stack_reads(source, i, s)),
                                       ("span", lambda i, s: source.read_stacks(source.rows[i].video_id, s,
                                                                            source.num_flows(i)))):
                        timings[name] = min(timings.get(name, np.inf), ms_per_clip(read, clips))
                print(f"| {frames} frames, {args.size}x{args.size} | {mode} | {segments} | {timings['stack']:.2f} | "
                      f"{timings['span']:.2f} | {timings['stack'] / timings['span']:.2f}x |")


if __name__ == "__main__":
    main()
