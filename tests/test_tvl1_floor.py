"""Work counts, peak memory and the compile message of the TV-L1 solver, on the CPU and real frames."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from actrec.pipeline.tvl1 import TVL1Params, backend, floor, ops, solver, tvl1_flow

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared frame decoder
from test_tvl1 import gray_frames  # noqa: E402

FAST = TVL1Params(nscales=3, warps=2, outer_iterations=2, inner_iterations=6)


@pytest.fixture(scope="module")
def small_pairs(videos_dir: Path):
    """Real frames at 128x96: an identical pair and two moving pairs."""
    def small(clip, start):
        return np.stack([cv2.resize(f, (128, 96), interpolation=cv2.INTER_AREA)
                         for f in gray_frames(videos_dir / clip, start, 2)])

    arm, skate = small("kinetics_arm_wrestling.mp4", 60), small("kinetics_skateboarding.mp4", 40)
    return np.stack([arm[0], arm[0], skate[0]]), np.stack([arm[0], arm[1], skate[1]])


def test_iteration_counts_per_pair_and_level(small_pairs):
    img0, img1 = small_pairs
    steps, sizes = floor.iteration_counts(img0, img1, FAST, compile=False)
    assert sizes == ops.pyramid_sizes(96, 128, FAST.nscales, FAST.scale_step) and steps.shape == (3, len(sizes))
    # the identical pair stops after its first iteration in every warp of every level
    assert (steps[0] == FAST.warps).all()
    most = FAST.warps * FAST.outer_iterations * FAST.inner_iterations
    assert (steps[1:] > FAST.warps).all() and (steps <= most).all()
    # a pair's count does not depend on its batch mates
    alone, _ = floor.iteration_counts(img0[2:], img1[2:], FAST, compile=False)
    assert np.array_equal(alone[0], steps[2])
    pix = floor.pixel_iterations(steps, sizes)
    assert pix[0, -1] == FAST.warps * sizes[-1][0] * sizes[-1][1]


def test_counting_does_not_change_the_flow(small_pairs):
    img0, img1 = small_pairs
    flow = tvl1_flow(img0, img1, FAST, compile=False)
    counted = solver._run(img0, img1, FAST, None, None, False, None, None, None, True)[0]
    assert torch.equal(flow, counted)


def test_held_counts_follow_the_gpu_schedule(small_pairs):
    """On the GPU schedule a stopped pair stays in its batch to the end of the outer iteration: per level, its
    iterations run plus held fill whole outer iterations, the same stops as on the CPU schedule."""
    img0, img1 = small_pairs
    steps, _ = floor.iteration_counts(img0, img1, FAST, compile=False)
    gpu_steps, held, _ = floor.held_counts(img0, img1, FAST, compile=False)
    assert np.array_equal(gpu_steps, steps)
    assert ((steps + held) % FAST.inner_iterations == 0).all()
    # the identical pair stops after one iteration of each warp and is held for the rest of that outer iteration
    assert (held[0] == FAST.warps * (FAST.inner_iterations - 1)).all()


def test_floor_arithmetic():
    # 10 M pixel-iterations of 64 bytes at 4.3 TB/s
    assert floor.BYTES_PER_ITERATION == 64
    assert floor.floor_pairs_per_s(10e6) == pytest.approx(4.3e12 / (10e6 * 64))


def test_peak_tensor_bytes_counts_live_tensors():
    def work():
        a = torch.ones(1000)  # 4000 bytes
        b = torch.ones(2000)  # 8000 bytes, both alive
        del a
        c = torch.ones(500)
        return b.sum() + c.sum()

    assert floor.peak_tensor_bytes(work) == 12000


def test_bytes_per_pixel_pair_bounds_the_cuda_schedule(small_pairs, monkeypatch):
    """The measured peak of the CUDA schedule (whole batch, checks once per outer iteration) stays under what
    bytes_per_pixel_pair promises, so batches sized with it fit."""
    img0, img1 = small_pairs
    monkeypatch.setattr(solver, "solve_level", functools.partial(solver.solve_level, sync_inner=False))
    params = TVL1Params(warps=1, outer_iterations=2, inner_iterations=2)
    n, h, w = img0.shape
    peak = floor.peak_tensor_bytes(lambda: tvl1_flow(img0, img1, params, compile=False, chunk=n, kernels="torch"))
    assert peak / (n * h * w) <= floor.bytes_per_pixel_pair(params, "torch")


def test_remap_memory_has_no_int64_index_planes():
    g = torch.Generator().manual_seed(0)
    n, h, w = 2, 64, 80
    src = torch.rand(n, 3, h, w, generator=g) * 255
    mx = torch.arange(w, dtype=torch.float32) + torch.randn(n, h, w, generator=g) * 3
    my = torch.arange(h, dtype=torch.float32)[:, None] + torch.randn(n, h, w, generator=g) * 3
    peak = floor.peak_tensor_bytes(lambda: ops.remap_cubic(src, mx, my))
    assert peak / (n * h * w) < 140  # was 209 with a gather per tap over int64 indices


def test_compile_message_is_logged_once(monkeypatch):
    """The first call of a compiling kernel set says so through the log callback, once per process."""
    monkeypatch.setattr(backend._Announcer, "done", False)
    kernels = backend._Kernels(compiled=False)
    monkeypatch.setattr(kernels, "compiled", True)  # the eager functions stand in for compiled ones here
    lines: list[str] = []
    kernels.log = lines.append
    u = torch.zeros(1, 8, 8)
    kernels("median", u, 3, *map(tuple, ops._median_network(3)))
    kernels("median", u, 3, *map(tuple, ops._median_network(3)))
    assert lines == [backend.COMPILE_MESSAGE]
