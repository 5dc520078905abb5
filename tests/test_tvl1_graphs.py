"""The graph cache of the Triton solver (:mod:`actrec.pipeline.tvl1.graphs`), checked on the CPU.

A CUDA graph is captured once and replayed; :func:`eager_capture` has the same contract on any device. Here: the
cache's bookkeeping (a no-op capture, replays with the real inputs, the count bound), and the number of captures
per batch over a real job's sequence of outer iterations (level sizes and the number of pairs still running, as
per-pair stopping shrinks them), recorded from the solver on real frames. The Triton solver's results with the
cache are checked bit for bit under the interpreter in tests/test_triton_tvl1.py, and with real CUDA graphs in its
CUDA test (benchmarks/device_check.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from actrec.pipeline.tvl1 import TVL1Params, solver
from actrec.pipeline.tvl1.backend import get_kernels, kernel_config
from actrec.pipeline.tvl1.graphs import GraphCache, eager_capture, graphs_enabled, padded_batch
from actrec.pipeline.tvl1.triton_level import graph_key

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared frame decoder
from test_tvl1 import gray_frames  # noqa: E402

SIZE = (96, 72)  # (W, H): real frames scaled down, 5 pyramid levels like 340x256


def test_padded_batch_is_the_next_power_of_two():
    assert [padded_batch(n) for n in (1, 2, 3, 4, 5, 8, 9, 1000)] == [1, 2, 4, 4, 8, 8, 16, 1024]


def test_a_capture_is_a_no_op_and_a_replay_uses_the_real_inputs():
    log: list[str] = []
    inputs = {"pairs": "real"}
    cache = GraphCache(eager_capture)

    def block():
        log.append(inputs["pairs"])

    def noop():
        inputs["pairs"] = "none"

    def prepare():
        inputs["pairs"] = "real"

    cache.run(("level", 4), block, noop, prepare)
    cache.run(("level", 4), block, noop, prepare)
    assert log == ["none", "real", "real"]  # the capture's call saw no pairs; each replay the real ones
    assert cache.captures == 1


def test_the_cache_is_bounded_by_count():
    cache = GraphCache(eager_capture, max_graphs=2)
    for key in (1, 2, 3, 1):
        cache.run((key,), lambda: None, lambda: None, lambda: None)
    assert cache.captures == 4 and len(cache.cache) == 2  # 1 was dropped before it came back


class _Recorder:
    """The CPU solver's kernel set, recording the (level, pairs) of each outer iteration (at its median of u1)."""

    name = "torch"
    max_block = 3

    def __init__(self):
        self.base = get_kernels("torch", False)
        self.outer: list[tuple[int, int, int]] = []
        self._u2_next = False

    def __call__(self, name: str, *args):
        if name == "median":
            if not self._u2_next:
                n, h, w = args[0].shape
                self.outer.append((h, w, n))
            self._u2_next = not self._u2_next
        return self.base(name, *args)


def _job_sequence(img0: np.ndarray, img1: np.ndarray, params: TVL1Params) -> list[tuple[int, int, int]]:
    """(H, W, pairs listed) of every outer iteration of a batch, on the GPU's schedule (one host check per outer
    iteration), with OpenCV's default parameters."""
    rec = _Recorder()
    I0, I1 = torch.from_numpy(img0).float(), torch.from_numpy(img1).float()
    solver._tvl1_pyramid(I0, I1, params, None, rec, sync_inner=False)
    return rec.outer


@pytest.fixture(scope="module")
def batches(videos_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three batches of four consecutive real frame pairs, one clip each, scaled down to 96x72."""
    out = []
    for clip, start in (("kinetics_skateboarding.mp4", 30), ("kinetics_pool_cleaning.mp4", 30),
                        ("kinetics_arm_wrestling.mp4", 60)):
        frames = np.stack([cv2.resize(f, SIZE, interpolation=cv2.INTER_AREA)
                           for f in gray_frames(videos_dir / clip, start, 5)])
        out.append((frames[:-1], frames[1:]))
    return out


def test_steady_state_captures_nothing(batches):
    """Over a real job's outer iterations (5 levels, lists shrinking as pairs stop) a graph is captured the first
    time its (level, padded list length) comes up and never again: the cache holds every graph a job can need (no
    buffers, so no byte bound to thrash), so captures per batch fall to zero once the lengths have all come up
    (here: a batch that repeats the first one's sequence)."""
    torch.set_num_threads(1)
    params = TVL1Params()
    cache = GraphCache(eager_capture)
    sequences = [_job_sequence(img0, img1, params) for img0, img1 in batches]
    keys, per_batch = set(), []
    for sequence in sequences + sequences[:1]:
        assert len({(h, w) for h, w, _ in sequence}) == 5 and any(n < 4 for _, _, n in sequence)
        before = cache.captures
        for h, w, n in sequence:
            key = graph_key(h, w, n, params, kernel_config())
            keys.add(key)
            cache.run(key, lambda: None, lambda: None, lambda: None)
        per_batch.append(cache.captures - before)
    assert cache.captures == len(keys) <= 5 * 3, per_batch  # 5 levels x list lengths 1, 2, 4; no recapture
    assert per_batch[0] >= 5 and per_batch[-1] == 0, per_batch


def test_graphs_only_on_cuda_and_can_be_turned_off(monkeypatch):
    assert not graphs_enabled(torch.device("cpu"))
    assert graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("ACTREC_TVL1_GRAPHS", "0")
    assert not graphs_enabled(torch.device("cuda"))
