"""The demo's TV-L1 settings against OpenCV's defaults, on the demo's frames (as rendered), in one process.

At 64x64 with motion of at most a few pixels per frame, OpenCV's defaults (5 pyramid levels x 5 warps, stop 0.01,
sized for 340x256 video) do work that does not change the flow. The demo uses fewer levels and warps and a looser
stop; this script measures what that saves and what it costs: milliseconds per pair for both (same pairs, same
process, one thread), their ratio, and the mean absolute difference of the flows (pixels), to be read against the
0.157 px step of the uint8 flow store (bound 20).

    python benchmarks/bench_demo_flow.py --pairs 30
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from actrec.demo import DemoConfig
from actrec.pipeline.synth import CLASSES
from actrec.pipeline.synth.classes import SceneParams
from actrec.pipeline.synth.render import render_video

STORE_STEP = 2 * 20.0 / 255  # pixels between two uint8 flow levels at bound 20


def demo_pairs(count: int, config: DemoConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Gray frame pairs (frames 5 and 6) of ``count`` demo videos, one class after another."""
    scene = SceneParams(object_size=config.object_size)
    pairs = []
    for index in range(count):
        video = render_video(CLASSES[index % len(CLASSES)], index, frames=config.frames, width=config.size,
                             height=config.size, seed=config.seed, scene=scene)
        gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in video[5:7]]
        pairs.append((gray[0], gray[1]))
    return pairs


def solve(pairs: list[tuple[np.ndarray, np.ndarray]], **settings: float) -> tuple[float, list[np.ndarray]]:
    """Milliseconds per pair and the flows of OpenCV's TV-L1 with ``settings`` (OpenCV's names)."""
    solver = cv2.optflow.DualTVL1OpticalFlow_create(**settings)
    start = time.perf_counter()
    flows = [solver.calc(a, b, None) for a, b in pairs]
    return 1e3 * (time.perf_counter() - start) / len(pairs), flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    config = DemoConfig()
    pairs = demo_pairs(args.pairs, config)
    default_ms, reference = solve(pairs)
    demo_ms, flows = solve(pairs, nscales=config.nscales, warps=config.warps, epsilon=config.epsilon)
    difference = float(np.mean([np.abs(flow - ref).mean() for flow, ref in zip(flows, reference)]))
    print(f"{len(pairs)} pairs at {config.size}x{config.size}, one thread")
    print(f"OpenCV defaults (5 levels x 5 warps, stop 0.01): {default_ms:.1f} ms/pair")
    print(f"demo ({config.nscales} levels x {config.warps} warps, stop {config.epsilon}): {demo_ms:.1f} ms/pair")
    print(f"ratio default / demo: {default_ms / demo_ms:.2f}x; mean |flow difference| {difference:.3f} px "
          f"({difference / STORE_STEP:.2f} of the uint8 store's step)")


if __name__ == "__main__":
    main()
