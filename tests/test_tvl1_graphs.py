"""CUDA-graph replay of the inner iterations (:mod:`actrec.pipeline.tvl1.graphs`), checked on the CPU.

A CUDA graph has static inputs and outputs that every replay rewrites; :func:`eager_capture` has the same contract
on any device, so these tests check the bookkeeping the CUDA path depends on (padding, static copies, outputs that
a later replay must not overwrite, the cache) with the PyTorch reference iteration on real frames. The same runner
around the Triton kernels is checked under the interpreter in tests/test_triton_tvl1.py, and with real CUDA graphs
in its CUDA test (benchmarks/device_check.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actrec.pipeline.tvl1 import TVL1Params, solver
from actrec.pipeline.tvl1.backend import get_kernels
from actrec.pipeline.tvl1.graphs import GraphedBlocks, eager_capture, graphs_enabled, padded_batch
from actrec.pipeline.tvl1.iteration import _block2

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
from test_triton_tvl1 import _iteration_state  # noqa: E402
from test_tvl1 import gray_frames  # noqa: E402

CROP = (40, 56)  # (H, W)


@pytest.fixture(scope="module")
def pairs(videos_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Five real grayscale crop pairs (two clips, moving), so pairs stop after different numbers of iterations."""
    arm = gray_frames(videos_dir / "kinetics_arm_wrestling.mp4", 60, 4)
    skate = gray_frames(videos_dir / "kinetics_skateboarding.mp4", 40, 3)
    h, w = CROP
    img0 = [arm[0, 100:100 + h, 140:140 + w], arm[1, 100:100 + h, 140:140 + w], arm[2, 90:90 + h, 120:120 + w],
            skate[0, 120:120 + h, 150:150 + w], skate[1, 110:110 + h, 160:160 + w]]
    img1 = [arm[1, 100:100 + h, 140:140 + w], arm[2, 100:100 + h, 140:140 + w], arm[3, 90:90 + h, 120:120 + w],
            skate[1, 120:120 + h, 150:150 + w], skate[2, 110:110 + h, 160:160 + w]]
    return np.stack(img0), np.stack(img1)


def _state(img0: np.ndarray, img1: np.ndarray):
    """A real iteration state: the warp constants at zero flow and four reference iterations from zero."""
    return _iteration_state(img0, img1, warm=4)


def _equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_padded_batch_is_the_next_power_of_two():
    assert [padded_batch(n) for n in (1, 2, 3, 4, 5, 8, 9, 1000)] == [1, 2, 4, 4, 8, 8, 16, 1024]


def test_replay_equals_the_direct_block_and_shares_graphs(pairs):
    state, consts, scalars = _state(*pairs)
    graphed = GraphedBlocks(_block2, eager_capture)
    active = torch.tensor([True, False, True, True, True])
    for rows in ([0, 1, 2, 3, 4], [0, 1, 2], [1, 2, 3, 4], [3]):  # padded to 8, 4, 4, 1
        sub = tuple(t[rows] for t in state + consts)
        direct = _block2(*sub, active[rows], *scalars, 3)
        assert _equal(graphed(*sub, active[rows], *scalars, 3), direct), rows
    assert graphed.captures == 3  # the batches of 3 and 4 pairs replay one graph


def test_a_later_replay_leaves_earlier_outputs_alone(pairs):
    state, consts, scalars = _state(*pairs)
    graphed = GraphedBlocks(_block2, eager_capture)
    on = torch.ones(3, dtype=torch.bool)
    first = graphed(*(t[:3] for t in state + consts), on, *scalars, 2)
    kept = tuple(t.clone() for t in first)
    second = graphed(*(t[2:] for t in state + consts), on, *scalars, 2)  # same graph, other pairs
    assert graphed.captures == 1
    assert _equal(first, kept)
    assert not torch.equal(first[0], second[0])


def test_large_batches_run_directly_and_the_cache_is_bounded(pairs):
    state, consts, scalars = _state(*pairs)
    n, h, w = state[0].shape
    on = torch.ones(n, dtype=torch.bool)
    graphed = GraphedBlocks(_block2, eager_capture, max_pixels=4 * h * w)
    assert _equal(graphed(*state, *consts, on, *scalars, 1), _block2(*state, *consts, on, *scalars, 1))
    assert graphed.captures == 0  # 5 pairs pad to 8 > 4 pairs' pixels
    one_graph = GraphedBlocks(_block2, eager_capture)
    one_graph(*(t[:1] for t in state + consts), on[:1], *scalars, 1)
    bounded = GraphedBlocks(_block2, eager_capture, max_bytes=one_graph.cache.popitem()[1].nbytes * 2)
    for k in (1, 2, 3, 4):
        bounded(*(t[:1] for t in state + consts), on[:1], *scalars, k)
    assert bounded.captures == 4 and len(bounded.cache) == 2


class _GraphedTorchKernels:
    """The CPU solver's kernel set with ``block2`` run through a graph runner."""

    name = "torch"

    def __init__(self, graphs: GraphedBlocks):
        self.base = get_kernels("torch", False)
        self.graphs = graphs

    def __call__(self, name: str, *args):
        return self.graphs(*args) if name == "block2" else self.base(name, *args)


def test_whole_solver_with_replayed_blocks_is_bit_identical(pairs):
    """Per-pair stopping shrinks the batch after each block (5, then fewer pairs): every padded size replays its
    own graph, and the flow is the direct solver's, bit for bit."""
    I0, I1 = (torch.from_numpy(a).float() for a in pairs)
    params = TVL1Params(nscales=2, warps=2, outer_iterations=3, inner_iterations=6, epsilon=0.05)
    direct = solver._tvl1_pyramid(I0, I1, params, None, get_kernels("torch", False))
    graphs = GraphedBlocks(_block2, eager_capture)
    replayed = solver._tvl1_pyramid(I0, I1, params, None, _GraphedTorchKernels(graphs))
    assert torch.equal(direct, replayed)
    assert float(direct.abs().max()) > 0.1
    assert graphs.captures >= 3  # two levels and batches that shrank


def test_graphs_only_on_cuda_and_can_be_turned_off(monkeypatch):
    assert not graphs_enabled(torch.device("cpu"))
    assert graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("ACTREC_TVL1_GRAPHS", "0")
    assert not graphs_enabled(torch.device("cuda"))
