"""The Triton TV-L1 kernels against their PyTorch references, on the CPU under ``TRITON_INTERPRET=1``.

The interpreter must be switched on before any ``@triton.jit`` function is defined, which the rest of the suite
(importing torch and actrec first) cannot guarantee in its own process. So the checks run once, in a subprocess
that executes this file as a script with the variable set, and print one JSON object; each test asserts on its
part. Where the kernel performs the reference's float32 operations in the same order, the outputs must be
bit-identical; the per-pair error sum (float64) is checked to be independent of the batch and within 1e-12
(relative) of PyTorch's sum, whose order differs. The step kernel runs with small tiles (16 x 16, in sub-tiles of
8 rows) so that a 21 x 37 image has 2 x 3 tiles and every halo between tiles is exercised; several iterations per
pass run on 16 x 16 regions (8 x 8 kept). The whole Triton solver is tests/test_triton_solver.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from actrec.pipeline.tvl1.triton_step import _hypot

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package: reach the helper module
from interpreted import main, run_interpreted  # noqa: E402

HERE = Path(__file__).resolve().parent
CROP = (48, 80)  # (H, W) of the real crops: 2 x 2 tiles of the default 32 x 64
SMALL_TILES = dict(bh=16, bw=16, num_warps=4)  # 2 x 3 tiles of 21 x 37, each in 2 sub-tiles of 8 rows
SMALL_REGIONS = dict(bh=16, bw=16, num_warps=4, k=4)  # 4 iterations per pass: 8 x 8 output tiles, a halo of 4


# ---------------------------------------------------------------------------------------------------------------
# the checks (run in the subprocess)


def _real_crops(videos: Path) -> tuple[np.ndarray, np.ndarray]:
    """Three 80x48 grayscale pairs from real clips: an identical pair (stops at once) and two moving pairs."""
    sys.path.insert(0, str(HERE))
    from test_tvl1 import gray_frames

    h, w = CROP
    arm = gray_frames(videos / "kinetics_arm_wrestling.mp4", 60, 2)[:, 100:100 + h, 130:130 + w]
    skate = gray_frames(videos / "kinetics_skateboarding.mp4", 40, 2)[:, 120:120 + h, 140:140 + w]
    return np.stack([arm[0], arm[0], skate[0]]), np.stack([arm[0], arm[1], skate[1]])


def _iteration_state(img0: np.ndarray, img1: np.ndarray, warm: int):
    """A real iteration state: warp constants of the pairs at zero flow, then ``warm`` reference iterations."""
    from actrec.pipeline.tvl1.backend import get_kernels
    from actrec.pipeline.tvl1.iteration import _block2
    from actrec.pipeline.tvl1.ops import centered_gradient
    from actrec.pipeline.tvl1.params import TVL1Params, _Consts
    from actrec.pipeline.tvl1.solver import _warp_constants

    I0, I1 = torch.from_numpy(img0).float(), torch.from_numpy(img1).float()
    n, h, w = I0.shape
    gx, gy = centered_gradient(I1)
    zero = torch.zeros_like(I0)
    grid_x = torch.arange(w, dtype=torch.float32).expand(h, w)
    grid_y = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    wc = _warp_constants(I0, torch.stack([I1, gx, gy], 1), zero, zero, grid_x, grid_y, get_kernels("torch", False))
    c = _Consts(TVL1Params(), h, w)
    consts = (wc["I1wx"], wc["I1wy"], wc["rho_c"], wc["grad_safe"])
    scalars = (c.l_t, c.theta, c.taut, torch.tensor(c.scaled_eps, dtype=torch.float64))
    out = _block2(*([zero] * 6), *consts, torch.ones(n, dtype=torch.bool), *scalars, warm)
    return out[:6], consts, scalars


def _random_state(n: int, h: int, w: int):
    from actrec.pipeline.tvl1.params import TVL1Params, _Consts

    g = torch.Generator().manual_seed(0)

    def r(scale):
        return torch.randn(n, h, w, generator=g) * scale

    wx, wy = r(20.0), r(20.0)
    grad = wx * wx + wy * wy
    gs = torch.where(grad > 1e-7, grad, torch.full_like(grad, float("inf")))
    gs[0, :3, :3] = float("inf")  # OpenCV's zero-gradient branch
    consts = (wx, wy, r(30.0), gs)
    c = _Consts(TVL1Params(), h, w)
    scalars = (c.l_t, c.theta, c.taut, torch.tensor(c.scaled_eps, dtype=torch.float64))
    return (r(2.0), r(2.0), r(0.3), r(0.3), r(0.3), r(0.3)), consts, scalars


def _level(state, consts, active, config, dev: str = "cpu"):
    """A workspace level holding ``state`` in set 0 and ``consts``, ``active`` pairs flagged, every pair listed."""
    from actrec.pipeline.tvl1.params import TVL1Params
    from actrec.pipeline.tvl1.triton_block import scratch_floats
    from actrec.pipeline.tvl1.triton_step import tiles
    from actrec.pipeline.tvl1.workspace import Workspace

    n, h, w = state[0].shape
    scratch = scratch_floats(config) if config.k > 1 else 0
    level = Workspace(dev).level(n, h, w, TVL1Params(), tiles(h, w, config), scratch)
    level.load_flow(state[0].to(dev), state[1].to(dev))
    for i, t in enumerate(state[2:]):
        level.state[:, 0, 2 + i, :, :w] = t.to(dev)
    level.consts[:, 3] = float("inf")  # the padding columns as the warp kernel leaves them
    for i, t in enumerate(consts):
        level.consts[:, i, :, :w] = t.to(dev)
    level.ws.active[:n] = active.to(dev, torch.int32)
    level.list_pairs(torch.arange(n, dtype=torch.int32, device=dev), n)
    return level


def _read_state(level) -> tuple[torch.Tensor, ...]:
    """The six planes of every pair from the sets its parities name."""
    w = level.w
    pu = level.ws.parity[:level.n, 0].bool().view(-1, 1, 1)
    pp = level.ws.parity[:level.n, 1].bool().view(-1, 1, 1)
    out = []
    for c in range(6):
        sel = pu if c < 2 else pp
        out.append(torch.where(sel, level.state[:, 1, c, :, :w], level.state[:, 0, c, :, :w]).cpu())
    return tuple(out)


def _iterate(level, k: int, config) -> None:
    """``k`` iterations: one launch each, or (``config.k`` > 1) passes of up to ``config.k`` with their replays."""
    from actrec.pipeline.tvl1.triton_block import block_error_launch, block_launch
    from actrec.pipeline.tvl1.triton_level import passes
    from actrec.pipeline.tvl1.triton_step import launch, pair_error_launch, step_launch

    if config.k == 1:
        for _ in range(k):
            launch(step_launch(level, level.n, 0, config))
            launch(pair_error_launch(level, level.n, 0, config))
        return
    for iters in passes(k, config.k):
        for replay in (False, True):
            launch(block_launch(level, level.n, iters, 0, config, replay))
            launch(block_error_launch(level, level.n, iters, 0, config, replay))


def _compare_block(state, consts, scalars, active, dev: str = "cpu", tiles: dict = SMALL_TILES) -> bool:
    """Four and five fused iterations against as many reference iterations on the CPU: bit-identical state and
    stop flags? A pair frozen from the start or stopping during the block keeps its state; both parities end in
    either set. With several iterations per pass (``SMALL_REGIONS``): one pass of 4, then passes of 4 and 1; a
    pair that stops inside a pass is replayed."""
    from actrec.pipeline.tvl1.iteration import _block2
    from actrec.pipeline.tvl1.step_config import StepConfig

    config = StepConfig(**tiles)

    def equal(k: int) -> bool:
        ref = _block2(*state, *consts, active, *scalars, k)
        level = _level(state, consts, active, config, dev)
        _iterate(level, k, config)
        got = _read_state(level) + (level.ws.active[:level.n].bool().cpu(),)
        return all(torch.equal(a, b) for a, b in zip(ref, got))

    return equal(4) and equal(5)


def _error_sums(state, consts, scalars, dev: str = "cpu"):
    """Per-pair errors of one fused step for the batch and for each pair alone, and PyTorch's float64 sums."""
    from actrec.pipeline.tvl1.iteration import _step2
    from actrec.pipeline.tvl1.step_config import StepConfig

    config = StepConfig(**SMALL_TILES)
    n = state[0].shape[0]
    l_t, theta, taut, eps = scalars

    def step(rows):
        sub = [tuple(t[rows] for t in group) for group in (state, consts)]
        level = _level(*sub, torch.ones(len(rows), dtype=torch.bool), config, dev)
        _iterate(level, 1, config)
        return level.ws.err[:len(rows)].cpu()

    batch = step(list(range(n)))
    alone = torch.cat([step([i]) for i in range(n)])
    ref = _step2(*state, *consts, l_t, theta, taut)[-1]
    return batch, alone, ref


@triton.jit
def _hypot_kernel(a_ptr, b_ptr, o_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(o_ptr + offs, _hypot(tl.load(a_ptr + offs), tl.load(b_ptr + offs)))


def _hypot_equal(dev: str = "cpu") -> bool:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4096, generator=g) * torch.exp(torch.randn(4096, generator=g) * 8)
    b = torch.randn(4096, generator=g) * torch.exp(torch.randn(4096, generator=g) * 8)
    a[:4] = torch.tensor([0.0, -0.0, 3.0, 1e-38])  # the last one subnormal (torch.hypot's vector path differs)
    b[:4] = torch.tensor([0.0, 0.0, 4.0, 1e-38])
    out = torch.empty_like(a, device=dev)
    _hypot_kernel[(1,)](a.to(dev), b.to(dev), out, N=4096, enable_fp_fusion=False)
    exact = np.hypot(a.double().numpy(), b.double().numpy()).astype(np.float32)  # correctly rounded
    return bool(np.array_equal(out.cpu().numpy(), exact))


def _warp_checks(img0: np.ndarray, img1: np.ndarray, dev: str = "cpu") -> dict:
    """The warp-constant kernel against remap_cubic + _warp_constants, the median kernel against median_blur, the
    resize and gradient kernels against resize_linear and centered_gradient."""
    from actrec.pipeline.tvl1.backend import get_kernels, kernel_config
    from actrec.pipeline.tvl1.ops import centered_gradient, median_blur, resize_linear
    from actrec.pipeline.tvl1.solver import _warp_constants
    from actrec.pipeline.tvl1.triton_pyramid import gradient_stack, resize
    from actrec.pipeline.tvl1.triton_step import launch
    from actrec.pipeline.tvl1.triton_warp import median_launch, warp_launch

    g = torch.Generator().manual_seed(2)
    I0, I1 = torch.from_numpy(img0).float(), torch.from_numpy(img1).float()
    n, h, w = I1.shape
    u1, u2 = torch.randn(n, h, w, generator=g) * 3, torch.randn(n, h, w, generator=g) * 3
    u1[0, 0, 0], u2[1, 2, 2] = 1e9, -1e9  # far outside: 0, and no overflow
    u1[2, 5:10, 5:20] = 0.25  # ties for the median
    src = torch.stack([I1, *centered_gradient(I1)], 1)
    grid_x = torch.arange(w, dtype=torch.float32).expand(h, w)
    grid_y = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    ref = _warp_constants(I0, src, u1, u2, grid_x, grid_y, get_kernels("torch", False))
    zeros = [torch.zeros_like(u1)] * 4
    level = _level((u1, u2, *zeros), zeros, torch.ones(n, dtype=torch.bool), kernel_config(), dev)
    launch(warp_launch(level, gradient_stack(I1.to(dev)), I0.to(dev), n))
    got = [level.consts[:, i, :, :w].cpu() for i in range(4)]
    launch(median_launch(level, n, 5))
    medians = [level.state[:, 1, c, :, :w].cpu() for c in (0, 1)]
    small = (37, 61)  # pyramid-like sizes
    return {
        "warp_constants": all(torch.equal(ref[k], v) for k, v in zip(("I1wx", "I1wy", "rho_c", "grad_safe"), got)),
        "median_real_and_ties": torch.equal(median_blur(u1, 5), medians[0]) and torch.equal(median_blur(u2, 5),
                                                                                            medians[1]),
        "gradient": torch.equal(src, gradient_stack(I1.to(dev)).cpu()),
        "resize_down": torch.equal(resize_linear(I1, small, scale=0.8), resize(I1.to(dev), small, scale=0.8).cpu()),
        "resize_up": torch.equal(resize_linear(u1[:, :small[0], :small[1]], (h, w)),
                                 resize(u1[:, :small[0], :small[1]].contiguous().to(dev), (h, w)).cpu()),
    }


def _median3_check(dev: str = "cpu") -> bool:
    """The 3x3 median (the other size OpenCV takes on float data) against median_blur."""
    from actrec.pipeline.tvl1.backend import kernel_config
    from actrec.pipeline.tvl1.ops import median_blur
    from actrec.pipeline.tvl1.triton_step import launch
    from actrec.pipeline.tvl1.triton_warp import median_launch

    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, 19, 23, generator=g)
    zeros = [torch.zeros_like(u)] * 4
    level = _level((u, u, *zeros), zeros, torch.ones(2, dtype=torch.bool), kernel_config(), dev)
    launch(median_launch(level, 2, 3))
    return torch.equal(median_blur(u, 3), level.state[:, 1, 0, :, :23].cpu())


def run_checks(videos: Path) -> dict:
    import time

    t = [time.perf_counter()]
    img0, img1 = _real_crops(videos)
    results = {"hypot": _hypot_equal()}
    t.append(time.perf_counter())
    state, consts, scalars = _random_state(3, 21, 37)
    results["step_random"] = _compare_block(state, consts, scalars, torch.tensor([True, False, True]))
    results["passes_random"] = _compare_block(state, consts, scalars, torch.tensor([True, False, True]),
                                              tiles=SMALL_REGIONS)
    t.append(time.perf_counter())
    state, consts, scalars = _iteration_state(img0[:, :21, :37], img1[:, :21, :37], warm=4)
    results["step_real"] = _compare_block(state, consts, scalars, torch.ones(3, dtype=torch.bool))
    t.append(time.perf_counter())
    results["passes_real"] = _compare_block(state, consts, scalars, torch.ones(3, dtype=torch.bool),
                                            tiles=SMALL_REGIONS)
    batch, alone, ref = _error_sums(state, consts, scalars)
    results["error_batch_equal"] = torch.equal(batch, alone)
    results["error_rel_diff"] = float(((batch - ref).abs() / ref.clamp_min(1e-300)).max())
    t.append(time.perf_counter())
    results.update(_warp_checks(img0, img1))
    results["median3"] = _median3_check()
    t.append(time.perf_counter())
    results["seconds"] = [round(b - a, 2) for a, b in zip(t, t[1:])]
    return results


# ---------------------------------------------------------------------------------------------------------------
# the tests (pytest process)


@pytest.fixture(scope="module")
def checks(videos_dir: Path) -> dict:
    return run_interpreted(__file__, str(videos_dir))


def test_hypot_is_correctly_rounded(checks):
    assert checks["hypot"]


def test_fused_step_equals_reference(checks):
    assert checks["step_random"] and checks["step_real"]


def test_several_iterations_per_pass_equal_reference(checks):
    """k = 4 iterations per pass, bit-identical to as many reference iterations; the identical real pair stops
    after its first iteration, inside the pass, and is replayed from the pass's input for that one iteration."""
    assert checks["passes_random"] and checks["passes_real"]


def test_error_sum_does_not_depend_on_batch(checks):
    assert checks["error_batch_equal"]
    assert checks["error_rel_diff"] < 1e-12


def test_warp_constants_equal_reference(checks):
    assert checks["warp_constants"]


def test_median_equals_reference(checks):
    assert checks["median_real_and_ties"] and checks["median3"]


def test_pyramid_kernels_equal_reference(checks):
    assert checks["gradient"] and checks["resize_down"] and checks["resize_up"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_kernels_on_cuda_equal_cpu_references(videos_dir: Path):
    """On a GPU: FMA contraction off, IEEE division and float64 square root make each kernel bit-identical to
    the PyTorch reference on the CPU, and the per-pair error sum independent of the batch."""
    img0, img1 = _real_crops(videos_dir)
    found = {"hypot": _hypot_equal("cuda")}
    state, consts, scalars = _random_state(3, 21, 37)
    found["step_random"] = _compare_block(state, consts, scalars, torch.tensor([True, False, True]), "cuda")
    found["passes_random"] = _compare_block(state, consts, scalars, torch.tensor([True, False, True]), "cuda",
                                            SMALL_REGIONS)
    state, consts, scalars = _iteration_state(img0[:, :21, :37], img1[:, :21, :37], warm=4)
    found["step_real"] = _compare_block(state, consts, scalars, torch.ones(3, dtype=torch.bool), "cuda")
    found["passes_real"] = _compare_block(state, consts, scalars, torch.ones(3, dtype=torch.bool), "cuda",
                                          SMALL_REGIONS)
    batch, alone, ref = _error_sums(state, consts, scalars, "cuda")
    found["error_batch_equal"] = torch.equal(batch, alone)
    found.update(_warp_checks(img0, img1, "cuda"))
    found["median3"] = _median3_check("cuda")
    assert all(found.values()), found


if __name__ == "__main__":
    main(lambda: run_checks(Path(sys.argv[1])))
