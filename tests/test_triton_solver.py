"""The whole Triton TV-L1 solver against the CPU's PyTorch solver, on the CPU under ``TRITON_INTERPRET=1``.

As in tests/test_triton_tvl1.py (the kernels one by one), the checks run once in a subprocess that executes this
file with the interpreter switched on and prints one JSON object; each test asserts on its part. On three real
80x48 crops (an identical pair and two moving ones): the default configuration and 4 iterations per pass, bit for
bit against the CPU solver; the outer iterations replayed through the graph cache (``eager_capture``); no state
moved and no plane-sized PyTorch work inside a level; the peak memory within what batches are sized with.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package: reach the helper modules
from interpreted import main, run_interpreted  # noqa: E402
from test_triton_tvl1 import _real_crops  # noqa: E402  the same real crops as the kernels' checks


# ---------------------------------------------------------------------------------------------------------------
# the checks (run in the subprocess)


def _passes_solver_check(img0: np.ndarray, img1: np.ndarray) -> bool:
    """The whole solver with 4 iterations per pass on 32 x 64 regions (2 x 2 output tiles of 24 x 56 per crop)
    against the CPU solver, with 3 inner iterations (one pass) and 6 (passes of 4 and 2)."""
    from actrec.pipeline.tvl1 import backend, solver
    from actrec.pipeline.tvl1.params import TVL1Params

    config = backend.PASSES_CONFIG
    equal = True
    for inner in (3, 6):
        params = TVL1Params(nscales=2, warps=1, outer_iterations=2, inner_iterations=inner)
        cpu = solver.tvl1_flow(img0, img1, params, kernels="torch", compile=False)
        backend._kernels_cache[("triton", None)] = backend._TritonKernels(config=config)
        try:
            equal &= torch.equal(cpu, solver.tvl1_flow(img0, img1, params, kernels="triton", chunk=len(img0)))
        finally:
            del backend._kernels_cache[("triton", None)]
    return equal


def _solver_check(img0: np.ndarray, img1: np.ndarray) -> dict:
    """The whole Triton solver against the CPU's PyTorch solver, directly and with its outer iterations replayed
    through the graph cache (``eager_capture``: a CUDA graph's contract on the CPU); the next batch replays the
    first one's graphs (tests/test_tvl1_graphs.py replays a real job's sequence of levels and list sizes)."""
    from actrec.pipeline.tvl1 import backend, solver
    from actrec.pipeline.tvl1.graphs import GraphCache, eager_capture
    from actrec.pipeline.tvl1.params import TVL1Params

    params = TVL1Params(nscales=2, warps=1, outer_iterations=2, inner_iterations=3)
    cpu = solver.tvl1_flow(img0, img1, params, kernels="torch", compile=False)
    tri = solver.tvl1_flow(img0, img1, params, kernels="triton", chunk=len(img0))
    graphs = GraphCache(eager_capture)
    backend._kernels_cache[("triton", None)] = backend._TritonKernels(graphs=graphs)
    try:
        replayed = solver.tvl1_flow(img0, img1, params, kernels="triton", chunk=len(img0))
        first = graphs.captures
        again = solver.tvl1_flow(img0, img1, params, kernels="triton", chunk=len(img0))
    finally:
        del backend._kernels_cache[("triton", None)]
    return {"solver_equal": torch.equal(cpu, tri), "solver_moving": float(cpu[1:].abs().max()),
            "solver_identical_zero": int(torch.count_nonzero(tri[0])),
            "graphed_solver_equal": torch.equal(cpu, replayed) and torch.equal(cpu, again),
            "graphed_captures": [first, graphs.captures - first]}


def _plane_ops_in_levels(img0: np.ndarray, img1: np.ndarray) -> list[str]:
    """The PyTorch operations with a plane-sized result while the Triton solver solves its levels (warps, outer
    iterations, compactions), the interpreter's own copies of a kernel's arguments left out: all the per-pixel
    work is in Triton kernels and no state is moved, so only allocations are expected."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime.interpreter import InterpretedFunction

    from actrec.pipeline.tvl1.params import TVL1Params
    from actrec.pipeline.tvl1.triton_level import TritonSolver

    in_kernel = [False]

    class Record(TorchDispatchMode):
        def __init__(self, plane: int):
            super().__init__()
            self.plane, self.ops = plane, set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else [out]
            if not in_kernel[0] and any(isinstance(t, torch.Tensor) and t.numel() >= self.plane for t in outs):
                self.ops.add(str(func))
            return out

    run = InterpretedFunction.run

    def kernel_run(self, *args, **kwargs):
        in_kernel[0] = True
        try:
            return run(self, *args, **kwargs)
        finally:
            in_kernel[0] = False

    solver = TritonSolver(torch.device("cpu"))
    solve = solver.solve
    found: set = set()

    def recorded(level, I0, I1, params):
        with Record(level.h * level.w) as rec:
            solve(level, I0, I1, params)
        found.update(rec.ops)

    solver.solve = recorded
    InterpretedFunction.run = kernel_run
    try:
        params = TVL1Params(nscales=2, warps=2, outer_iterations=2, inner_iterations=2, epsilon=0.05)
        solver.pyramid(torch.from_numpy(img0).float(), torch.from_numpy(img1).float(), params, None)
    finally:
        InterpretedFunction.run = run
    return sorted(found)


def _peak_per_pixel(img0: np.ndarray, img1: np.ndarray) -> dict:
    """The Triton solver's peak tensor bytes per pixel per pair (a fresh workspace, counted inside the call)
    against what batches are sized with."""
    from actrec.pipeline.tvl1 import backend, floor, solver
    from actrec.pipeline.tvl1.params import TVL1Params

    params = TVL1Params(warps=1, outer_iterations=2, inner_iterations=2)
    n, h, w = img0.shape
    backend._kernels_cache.pop(("triton", None), None)  # a fresh workspace, allocated inside the count
    peak = floor.peak_tensor_bytes(lambda: solver.tvl1_flow(img0, img1, params, kernels="triton", chunk=n))
    return {"peak_per_pixel": peak / (n * h * w), "sized_per_pixel": floor.bytes_per_pixel_pair(params, "triton")}


def run_checks(videos: Path) -> dict:
    img0, img1 = _real_crops(videos)
    results = _solver_check(img0, img1)
    results["passes_solver_equal"] = _passes_solver_check(img0, img1)
    results["plane_ops_in_levels"] = _plane_ops_in_levels(img0, img1)
    results.update(_peak_per_pixel(img0, img1))
    return results


# ---------------------------------------------------------------------------------------------------------------
# the tests (pytest process)


@pytest.fixture(scope="module")
def checks(videos_dir: Path) -> dict:
    return run_interpreted(__file__, str(videos_dir))


def test_triton_solver_equals_cpu_solver_on_real_crops(checks):
    assert checks["solver_equal"]
    assert checks["solver_moving"] > 0.1 and checks["solver_identical_zero"] == 0


def test_triton_solver_with_replayed_outer_iterations_equals_cpu_solver(checks):
    """Graphs are captured by the first batch (2 levels, shrinking lists) and reused by the next: none captured."""
    assert checks["graphed_solver_equal"]
    first, second = checks["graphed_captures"]
    assert first >= 2 and second == 0


def test_batches_sized_by_bytes_per_pixel_pair_fit(checks):
    assert checks["peak_per_pixel"] <= checks["sized_per_pixel"]


def test_levels_move_no_state_and_run_no_eager_pixel_work(checks):
    """Compaction lists the running pairs (no index_select / index_copy of state planes) and the warp constants,
    medians and iterations are Triton kernels: a level's only plane-sized PyTorch operation is an allocation."""
    assert checks["plane_ops_in_levels"] == ["aten.empty.memory_format"], checks["plane_ops_in_levels"]


def test_several_iterations_per_pass_give_the_cpu_solver_flows(checks):
    """The whole solver with 4 iterations per pass, one pass and passes of 4 and 2."""
    assert checks["passes_solver_equal"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_graph_replay_equals_direct_launches(videos_dir: Path, monkeypatch):
    """On a GPU: the solver with its outer iterations replayed as CUDA graphs (the default) gives the flow of
    direct launches (ACTREC_TVL1_GRAPHS=0), bit for bit, at OpenCV's default parameters."""
    from actrec.pipeline.tvl1 import backend, solver
    from actrec.pipeline.tvl1.params import TVL1Params

    img0, img1 = _real_crops(videos_dir)
    graphed = solver.tvl1_flow(img0, img1, TVL1Params(), device="cuda")
    captures = next(iter(backend.get_kernels("triton", False)._solvers.values())).graphs.captures
    monkeypatch.setenv("ACTREC_TVL1_GRAPHS", "0")
    direct = solver.tvl1_flow(img0, img1, TVL1Params(), device="cuda")
    assert captures > 0
    assert torch.equal(graphed, direct)


if __name__ == "__main__":
    main(lambda: run_checks(Path(sys.argv[1])))
