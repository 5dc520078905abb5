"""The Triton kernels' self-check at first use on a device (:mod:`actrec.pipeline.tvl1.selfcheck`), on the CPU.

Each failure is injected into a fresh Triton kernel set run under ``TRITON_INTERPRET=1`` (in a subprocess: the
interpreter is chosen when Triton is imported): a launch error, flows that differ, a graph capture error and a graph
whose replay differs (``eager_capture`` stands in for CUDA graphs). The solver then runs through the kernel set as
a job would, and must give the CPU solver's flows, with exactly one warning naming the cause and the variable.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package: reach the helper module
from interpreted import main, run_interpreted  # noqa: E402


def _scenario(name: str) -> dict:
    """Solve a pair through a fresh Triton kernel set with the failure ``name`` injected, twice; what happened."""
    from actrec.pipeline.tvl1 import backend, selfcheck, solver
    from actrec.pipeline.tvl1.graphs import GraphCache, eager_capture
    from actrec.pipeline.tvl1.params import TVL1Params

    def failing_capture(fn):
        raise RuntimeError("injected capture failure")

    def idle_capture(fn):  # a graph whose replays give other numbers than the direct launches: they do nothing
        fn()
        return lambda: None

    capture = {"capture_error": failing_capture, "capture_differs": idle_capture,
               "graphs_pass": eager_capture}.get(name)
    kset = backend._TritonKernels(graphs=GraphCache(capture) if capture else None)
    launch = kset.launch

    def broken(*args, graphs: bool = True):
        if name == "launch_error":
            raise RuntimeError("injected launch failure\nsecond line")
        flow = launch(*args, graphs=graphs)
        return flow + 0.5 if name == "result_differs" else flow

    kset.launch = broken
    img0, img1 = (a.repeat(2, 0) for a in selfcheck.builtin_pair())
    params = TVL1Params(nscales=2, warps=1, outer_iterations=2, inner_iterations=3)
    cpu = solver.tvl1_flow(img0, img1, params, kernels="torch", compile=False)
    backend._kernels_cache[("triton", None)] = kset
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flows = [solver.tvl1_flow(img0, img1, params, kernels="triton"),  # the first use: the self-check
                 solver.tvl1_flow(img0[:1], img1[:1], params, kernels="triton")]  # no second check, no warning
    del backend._kernels_cache[("triton", None)]
    report = selfcheck.reports["cpu"]
    return {"report": report.as_dict(), "warnings": [str(w.message) for w in caught
                                                     if issubclass(w.category, RuntimeWarning)],
            "equal_cpu": all(torch.equal(f, cpu[:len(f)]) for f in flows), "moving": float(cpu.abs().max())}


SCENARIOS = ("pass", "launch_error", "result_differs", "graphs_pass", "capture_error", "capture_differs")


@pytest.fixture(scope="module")
def outcomes() -> dict:
    return run_interpreted(__file__)


def test_kernels_that_pass_run_with_no_warning_and_give_the_cpu_flows(outcomes: dict) -> None:
    for name in ("pass", "graphs_pass"):
        found = outcomes[name]
        assert found["warnings"] == [] and found["equal_cpu"] and found["moving"] > 0.5
        assert found["report"]["passed"] and found["report"]["chosen"] == "triton"
        assert found["report"]["direct"]["identical"]  # the design: bit for bit
    assert outcomes["pass"]["report"]["graphs"] is None  # no graphs on the CPU unless a runner is given
    assert outcomes["graphs_pass"]["report"]["graphs"]["identical"]


@pytest.mark.parametrize("name, cause", [("launch_error", "RuntimeError: injected launch failure"),
                                         ("result_differs", "the flow differs from the CPU solver's by up to")])
def test_a_failing_kernel_hands_over_to_pytorch_with_one_warning(outcomes: dict, name: str, cause: str) -> None:
    found = outcomes[name]
    assert found["report"]["chosen"] == "torch" and not found["report"]["passed"]
    assert found["equal_cpu"]  # the fallback's flows are the CPU solver's
    (warning,) = found["warnings"]  # one warning for two solves
    assert cause in warning and "second line" not in warning
    assert "ACTREC_TVL1_KERNELS" in warning and "self-check on cpu" in warning


@pytest.mark.parametrize("name, cause", [("capture_error", "RuntimeError: injected capture failure"),
                                         ("capture_differs", "differs from the CPU solver's")])
def test_a_failing_graph_falls_back_to_direct_launches(outcomes: dict, name: str, cause: str) -> None:
    found = outcomes[name]
    report = found["report"]
    assert report["chosen"] == "triton-direct" and report["direct"]["passed"] and not report["graphs"]["passed"]
    assert found["equal_cpu"]
    (warning,) = found["warnings"]
    assert cause in warning and "ACTREC_TVL1_GRAPHS" in warning and "ACTREC_TVL1_KERNELS" in warning


if __name__ == "__main__":
    main(lambda: {name: _scenario(name) for name in SCENARIOS})
