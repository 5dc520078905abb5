"""The Triton TV-L1 kernels against their PyTorch references, on the CPU under ``TRITON_INTERPRET=1``.

The interpreter must be switched on before any ``@triton.jit`` function is defined, which the rest of the suite
(importing torch and actrec first) cannot guarantee in its own process. So the checks run once, in a subprocess
that executes this file as a script with the variable set, and print one JSON object; each test asserts on its
part. Where the kernel performs the reference's float32 operations in the same order, the outputs must be
bit-identical; the per-pair error sum (float64) is checked to be independent of the batch and within 1e-12
(relative) of PyTorch's sum, whose order differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from actrec.pipeline.tvl1.triton_step import _hypot

HERE = Path(__file__).resolve().parent
CROP = (48, 64)  # (H, W) of the real crops: one tile per image under the interpreter


# ---------------------------------------------------------------------------------------------------------------
# the checks (run in the subprocess)


def _real_crops(videos: Path) -> tuple[np.ndarray, np.ndarray]:
    """Three 64x48 grayscale pairs from real clips: an identical pair (stops at once) and two moving pairs."""
    sys.path.insert(0, str(HERE))
    from test_tvl1 import gray_frames

    arm = gray_frames(videos / "kinetics_arm_wrestling.mp4", 60, 2)[:, 100:100 + CROP[0], 140:140 + CROP[1]]
    skate = gray_frames(videos / "kinetics_skateboarding.mp4", 40, 2)[:, 120:120 + CROP[0], 150:150 + CROP[1]]
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
    g = torch.Generator().manual_seed(0)

    def r(scale):
        return torch.randn(n, h, w, generator=g) * scale

    wx, wy = r(20.0), r(20.0)
    grad = wx * wx + wy * wy
    gs = torch.where(grad > 1e-7, grad, torch.full_like(grad, float("inf")))
    gs[0, :3, :3] = float("inf")  # OpenCV's zero-gradient branch
    consts = (wx, wy, r(30.0), gs)
    scalars = (0.045, 0.3, 0.8333333, torch.tensor(0.01 * 0.01 * h * w, dtype=torch.float64))
    return (r(2.0), r(2.0), r(0.3), r(0.3), r(0.3), r(0.3)), consts, scalars


def _to(tensors, dev: str):
    return tuple(t.to(dev) if isinstance(t, torch.Tensor) else t for t in tensors)


def _compare_block(state, consts, scalars, active, dev: str = "cpu") -> bool:
    """Four and five fused iterations on ``dev`` against as many reference iterations on the CPU: bit-identical?
    A pair frozen from the start or during the block is copied twice and then left alone (double buffer); an even
    and an odd count end in either buffer."""
    from actrec.pipeline.tvl1 import triton_step
    from actrec.pipeline.tvl1.iteration import _block2

    def equal(k: int) -> bool:
        ref = _block2(*state, *consts, active, *scalars, k)
        got = triton_step.block2(*_to(state, dev), *_to(consts, dev), active.to(dev), *_to(scalars, dev), k)
        return all(torch.equal(a, b.cpu()) for a, b in zip(ref, got))

    return equal(4) and equal(5)


def _error_sums(state, consts, scalars, dev: str = "cpu"):
    """Per-pair errors of one fused step for the batch and for each pair alone, and PyTorch's float64 sums."""
    from actrec.pipeline.tvl1 import triton_step
    from actrec.pipeline.tvl1.iteration import _step2

    n = state[0].shape[0]
    l_t, theta, taut, eps = scalars

    def step(rows):
        sub = tuple(t[rows].contiguous().to(dev) for t in state)
        out = tuple(torch.empty_like(t) for t in sub)
        return triton_step.fused_step(sub, out, *(t[rows].contiguous().to(dev) for t in consts),
                                      torch.ones(len(rows), dtype=torch.bool, device=dev),
                                      torch.zeros(len(rows), dtype=torch.int32, device=dev), l_t, theta, taut,
                                      eps.reshape(1).to(dev)).cpu()

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
    out = out.cpu()
    exact = np.hypot(a.double().numpy(), b.double().numpy()).astype(np.float32)  # correctly rounded
    return bool(np.array_equal(out.numpy(), exact))


def _warp_checks(img0: np.ndarray, img1: np.ndarray, dev: str = "cpu") -> dict:
    from actrec.pipeline.tvl1.ops import centered_gradient, median_blur, remap_cubic
    from actrec.pipeline.tvl1.triton_warp import median_blur_triton, remap_cubic_triton

    g = torch.Generator().manual_seed(2)
    I1 = torch.from_numpy(img1).float()
    n, h, w = I1.shape
    src = torch.stack([I1, *centered_gradient(I1)], 1)
    u1, u2 = torch.randn(n, h, w, generator=g) * 3, torch.randn(n, h, w, generator=g) * 3
    u1[0, 0, 0], u2[1, 2, 2] = 1e9, -1e9  # far outside: 0, and no overflow
    mx = torch.arange(w, dtype=torch.float32) + u1
    my = torch.arange(h, dtype=torch.float32)[:, None] + u2
    rand_src = torch.rand(n, 3, h, w, generator=g) * 255
    u = torch.randn(n, h, w, generator=g)
    u[:, 5:10, 5:20] = 0.25  # ties
    def remap(s):
        return remap_cubic_triton(s.to(dev), mx.to(dev), my.to(dev)).cpu()

    def median(x, k):
        return median_blur_triton(x.to(dev), k).cpu()

    return {
        "remap_real": torch.equal(remap_cubic(src, mx, my), remap(src)),
        "remap_random": torch.equal(remap_cubic(rand_src, mx, my), remap(rand_src)),
        "median_random": all(torch.equal(median_blur(u, k), median(u, k)) for k in (3, 5)),
        "median_real": torch.equal(median_blur(src[:, 1], 5), median(src[:, 1], 5)),
    }


def _solver_check(img0: np.ndarray, img1: np.ndarray) -> dict:
    """The whole solver with the Triton kernels and the CUDA schedule against the CPU's PyTorch solver."""
    import functools

    from actrec.pipeline.tvl1 import solver
    from actrec.pipeline.tvl1.params import TVL1Params

    params = TVL1Params(nscales=2, warps=1, outer_iterations=2, inner_iterations=3)
    cpu = solver.tvl1_flow(img0, img1, params, kernels="torch", compile=False)
    solver.solve_level = functools.partial(solver.solve_level, sync_inner=False)  # one host check per outer iteration
    tri = solver.tvl1_flow(img0, img1, params, kernels="triton", chunk=len(img0))
    return {"solver_equal": torch.equal(cpu, tri), "solver_moving": float(cpu[1:].abs().max()),
            "solver_identical_zero": int(torch.count_nonzero(tri[0])),
            **_graphed_solver_check(img0, img1, params, cpu)}


def _graphed_solver_check(img0: np.ndarray, img1: np.ndarray, params, cpu: torch.Tensor) -> dict:
    """The Triton solver with its blocks replayed through the graph runner (``eager_capture``: a CUDA graph's
    static-buffer contract on the CPU) against the CPU solver."""
    from actrec.pipeline.tvl1 import backend, solver, triton_step
    from actrec.pipeline.tvl1.graphs import GraphedBlocks, eager_capture

    graphs = GraphedBlocks(triton_step.block2, eager_capture)
    backend._kernels_cache[("triton", None)] = backend._TritonKernels(graphs=graphs)
    try:
        tri = solver.tvl1_flow(img0, img1, params, kernels="triton", chunk=len(img0))
    finally:
        del backend._kernels_cache[("triton", None)]
    return {"graphed_solver_equal": torch.equal(cpu, tri), "graphed_captures": graphs.captures}


def run_checks(videos: Path) -> dict:
    import time

    t = [time.perf_counter()]
    img0, img1 = _real_crops(videos)
    results = {"hypot": _hypot_equal()}
    t.append(time.perf_counter())
    state, consts, scalars = _random_state(3, 21, 37)
    results["step_random"] = _compare_block(state, consts, scalars, torch.tensor([True, False, True]))
    t.append(time.perf_counter())
    state, consts, scalars = _iteration_state(img0, img1, warm=4)
    results["step_real"] = _compare_block(state, consts, scalars, torch.ones(3, dtype=torch.bool))
    t.append(time.perf_counter())
    batch, alone, ref = _error_sums(state, consts, scalars)
    results["error_batch_equal"] = torch.equal(batch, alone)
    results["error_rel_diff"] = float(((batch - ref).abs() / ref.clamp_min(1e-300)).max())
    t.append(time.perf_counter())
    results.update(_warp_checks(img0, img1))
    t.append(time.perf_counter())
    results.update(_solver_check(img0, img1))
    t.append(time.perf_counter())
    results["seconds"] = [round(b - a, 2) for a, b in zip(t, t[1:])]
    return results


# ---------------------------------------------------------------------------------------------------------------
# the tests (pytest process)


@pytest.fixture(scope="module")
def checks(videos_dir: Path) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, __file__, str(videos_dir)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hypot_is_correctly_rounded(checks):
    assert checks["hypot"]


def test_fused_step_equals_reference(checks):
    assert checks["step_random"] and checks["step_real"]


def test_error_sum_does_not_depend_on_batch(checks):
    assert checks["error_batch_equal"]
    assert checks["error_rel_diff"] < 1e-12


def test_remap_equals_reference(checks):
    assert checks["remap_real"] and checks["remap_random"]


def test_median_equals_reference(checks):
    assert checks["median_random"] and checks["median_real"]


def test_triton_solver_equals_cpu_solver_on_real_crops(checks):
    assert checks["solver_equal"]
    assert checks["solver_moving"] > 0.1 and checks["solver_identical_zero"] == 0


def test_triton_solver_with_replayed_blocks_equals_cpu_solver(checks):
    assert checks["graphed_solver_equal"] and checks["graphed_captures"] >= 2  # one graph per level at least


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_kernels_on_cuda_equal_cpu_references(videos_dir: Path):
    """On a GPU: FMA contraction off, IEEE division and float64 square root make each kernel bit-identical to
    the PyTorch reference on the CPU, and the per-pair error sum independent of the batch."""
    img0, img1 = _real_crops(videos_dir)
    found = {"hypot": _hypot_equal("cuda")}
    state, consts, scalars = _random_state(3, 21, 37)
    found["step_random"] = _compare_block(state, consts, scalars, torch.tensor([True, False, True]), "cuda")
    state, consts, scalars = _iteration_state(img0, img1, warm=4)
    found["step_real"] = _compare_block(state, consts, scalars, torch.ones(3, dtype=torch.bool), "cuda")
    batch, alone, ref = _error_sums(state, consts, scalars, "cuda")
    found["error_batch_equal"] = torch.equal(batch, alone)
    found.update(_warp_checks(img0, img1, "cuda"))
    assert all(found.values()), found


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_graph_replay_equals_direct_launches(videos_dir: Path, monkeypatch):
    """On a GPU: the solver with its small batches replayed as CUDA graphs (the default) gives the flow of
    direct launches (ACTREC_TVL1_GRAPHS=0), bit for bit, at OpenCV's default parameters."""
    from actrec.pipeline.tvl1 import backend, solver
    from actrec.pipeline.tvl1.params import TVL1Params

    img0, img1 = _real_crops(videos_dir)
    graphed = solver.tvl1_flow(img0, img1, TVL1Params(), device="cuda")
    captures = backend.get_kernels("triton", False)._cuda_graphs.captures
    monkeypatch.setenv("ACTREC_TVL1_GRAPHS", "0")
    direct = solver.tvl1_flow(img0, img1, TVL1Params(), device="cuda")
    assert captures > 0
    assert torch.equal(graphed, direct)


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    print(json.dumps(run_checks(Path(sys.argv[1]))))
