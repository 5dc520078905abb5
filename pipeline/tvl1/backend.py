"""The kernel sets the TV-L1 driver runs: plain PyTorch (eager or fused by ``torch.compile``) or Triton.

A kernel set is called by name with the same arguments whichever it is: ``"block2"``/``"block3"`` (``k`` inner
iterations of the pairs flagged active), ``"median"`` (the 5x5 or 3x3 median of a flow component) and ``"remap"``
(the cubic warp of I1 and its gradients). The driver (:mod:`.solver`) does not know which set runs.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable

import torch

from actrec.errors import InputError
from actrec.pipeline.tvl1.graphs import GraphCache, cuda_capture, graphs_enabled
from actrec.pipeline.tvl1.iteration import _block2, _block3
from actrec.pipeline.tvl1.ops import _median_apply, remap_cubic
from actrec.pipeline.tvl1.step_config import StepConfig

Log = Callable[[str], None]

COMPILE_MESSAGE = "compiling the TV-L1 kernels, once per process (~30-60 s)"


def _stderr_log(line: str) -> None:
    """Default log: one line on stderr (stdout stays clean for piped results)."""
    print(line, file=sys.stderr, flush=True)


class _Announcer:
    """Says :data:`COMPILE_MESSAGE` through ``log`` the first time a compiling kernel set runs in this process."""

    done = False

    @classmethod
    def once(cls, log: Log | None) -> None:
        if not cls.done:
            cls.done = True
            (log or _stderr_log)(COMPILE_MESSAGE)


class _Kernels:
    """The tensor functions of the solver, eager or compiled with ``torch.compile`` (inductor).

    Compiling fuses the ~70 elementwise/stencil operations of an iteration into a few loops, which is what makes
    the CPU solver competitive with OpenCV's C++ (see benchmarks/RESULTS.md). It needs a C++ compiler at run
    time and some tens of seconds of compilation per process (less with inductor's on-disk cache); if compiling
    fails the eager functions are used, with a warning. Results are the same either way: float32 in the same
    operation order, and inductor builds without FMA contraction or fast-math.
    """

    name = "torch"
    max_block = 3  # inner iterations per call: torch.compile unrolls them, so few keep compilation short

    def __init__(self, compiled: bool):
        self.compiled = compiled
        self.log: Log | None = None
        self._eager = {"block2": _block2, "block3": _block3, "median": _median_apply, "remap": remap_cubic}
        if compiled:  # not the remap: its indirect loads run faster in eager ATen than in inductor's C++
            self._fns = {k: (torch.compile(f, dynamic=True) if k != "remap" else f) for k, f in self._eager.items()}
        else:
            self._fns = dict(self._eager)

    def __call__(self, name: str, *args):
        if not self.compiled:
            return self._fns[name](*args)
        _Announcer.once(self.log)
        for a in args:
            if isinstance(a, torch.Tensor) and a.ndim >= 1:
                # batch size as an unbacked size: a batch that shrinks to 1 pair reuses the same compiled code
                torch._dynamo.decorators.mark_unbacked(a, 0)
        try:
            return self._fns[name](*args)
        except Exception as exc:  # no or broken C++ compiler: fall back for the rest of the process
            warnings.warn(f"torch.compile of the TV-L1 kernels failed ({type(exc).__name__}: {exc}); using eager mode",
                          RuntimeWarning, stacklevel=2)
            self.compiled = False
            self._fns = dict(self._eager)
            return self._fns[name](*args)


class _TritonKernels:
    """The Triton solver (:mod:`.triton_level`) behind the kernel-set interface.

    The driver hands it whole pyramids (:meth:`pyramid`) for the parameters it supports (:func:`.triton_level.
    supported`: gamma = 0, a median of 3, 5 or none); for the others (the illumination term, larger medians) it
    runs the plain PyTorch functions by name like :class:`_Kernels`. On CUDA each outer iteration replays as a
    CUDA graph (:mod:`.graphs`; env ACTREC_TVL1_GRAPHS=0 turns that off). Under ``TRITON_INTERPRET=1`` the kernels
    run on the CPU through numpy (tests); ``graphs`` replaces the CUDA graph cache there. ``config``: the step
    kernel's tile, :func:`kernel_config` by default. The first pyramid on a device runs the self-check
    (:mod:`.selfcheck`), which may hand that device to direct launches or to the plain-PyTorch kernels.
    """

    name = "triton"
    max_block = 3

    def __init__(self, graphs: GraphCache | None = None, config: StepConfig | None = None):
        self.log: Log | None = None
        self._eager = {"block2": _block2, "block3": _block3, "median": _median_apply, "remap": remap_cubic}
        self._graphs = graphs
        self._config = config
        self._solvers: dict = {}
        self._runners: dict[torch.device, Callable] = {}  # per device: what the self-check chose

    def supports(self, params) -> bool:
        from actrec.pipeline.tvl1.triton_level import supported

        return supported(params)

    def pyramid(self, I0: torch.Tensor, I1: torch.Tensor, params, flow0: torch.Tensor | None) -> torch.Tensor:
        """The whole coarse-to-fine solve of ``I0``, ``I1`` ``(N, H, W)`` by what the self-check chose there."""
        return self.runner(I0.device)(I0, I1, params, flow0)

    def runner(self, device: torch.device) -> Callable:
        """What solves pyramids on ``device`` (``(I0, I1, params, flow0) -> flow``), chosen by the self-check on
        the first call there."""
        run = self._runners.get(device)
        if run is None:
            from actrec.pipeline.tvl1 import selfcheck

            run = self._runners[device] = selfcheck.verify(self, device)
        return run

    def uses_graphs(self, device: torch.device) -> bool:
        """Whether the outer iterations replay as graphs on ``device``."""
        return self._graphs is not None or graphs_enabled(device)

    def launch(self, I0: torch.Tensor, I1: torch.Tensor, params, flow0: torch.Tensor | None,
               graphs: bool = True) -> torch.Tensor:
        """The Triton solver's pyramid without the self-check: one solver (workspace and graph cache) per device
        and configuration; ``graphs=False``: direct launches only."""
        from actrec.pipeline.tvl1.triton_level import TritonSolver

        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            _Announcer.once(self.log)
        dev = I0.device
        config = self._config or kernel_config()
        solver = self._solvers.get((dev, config))
        if solver is None:
            cache = self._graphs or (GraphCache(cuda_capture) if dev.type == "cuda" else None)
            solver = self._solvers[(dev, config)] = TritonSolver(dev, config, cache)
        solver.use_graphs = graphs and self.uses_graphs(dev)
        return solver.pyramid(I0, I1, params, flow0)

    def __call__(self, name: str, *args):
        return self._eager[name](*args)


PASSES_CONFIG = StepConfig(bh=32, bw=64, num_warps=16, max_registers=128, k=4)  # 24 x 56 pixels kept per region


def kernel_config() -> StepConfig:
    """The iterations' configuration that benchmarks/bench_kernels_static.py recommends (``--configs``; the table in
    benchmarks/RESULTS.md): one pass per iteration on 32 x 64 tiles, 4 warps, 128 registers at most. Among the
    candidates that need no stack within 128 registers under the GPU image's Triton 3.6 and keep their scratch on
    chip it has one of the best H200 rooflines (every one-pass tile is memory-bound alike) and the best issue bound.
    Env ACTREC_TVL1_PASS_ITERATIONS=4 selects 4 iterations per pass on 32 x 64 regions (:data:`PASSES_CONFIG`, the
    best such candidate with several iterations per pass), so that a GPU check can measure both
    (benchmarks/device_check.py's ``triton-k4`` path)."""
    env = os.environ.get("ACTREC_TVL1_PASS_ITERATIONS", "").strip()
    if env not in ("", "1", "4"):
        raise InputError(f"ACTREC_TVL1_PASS_ITERATIONS must be 1 or 4, got {env!r}")
    return PASSES_CONFIG if env == "4" else StepConfig(bh=32, bw=64, num_warps=4, max_registers=128)


_kernels_cache: dict = {}


def _default_compile(device: torch.device) -> bool:
    """Compile by default on CPU; eager on CUDA (where Triton is the default). ACTREC_TVL1_COMPILE=0/1 overrides."""
    env = os.environ.get("ACTREC_TVL1_COMPILE", "").strip().lower()
    if env:
        return env not in ("0", "false", "no", "off")
    return device.type == "cpu"


def default_kernels(device: torch.device) -> str:
    """``"triton"`` on CUDA, ``"torch"`` elsewhere; env ACTREC_TVL1_KERNELS=torch|triton overrides."""
    env = os.environ.get("ACTREC_TVL1_KERNELS", "").strip().lower()
    if env:
        return env
    return "triton" if device.type == "cuda" else "torch"


def get_kernels(kernels: str, compiled: bool, log: Log | None = None):
    """The (cached, one per process) kernel set named ``kernels`` (``"torch"`` or ``"triton"``)."""
    if kernels not in ("torch", "triton"):
        raise InputError(f"kernels must be 'torch' or 'triton', got {kernels!r}")
    key = (kernels, compiled if kernels == "torch" else None)
    k = _kernels_cache.get(key)
    if k is None:
        k = _kernels_cache[key] = _Kernels(compiled) if kernels == "torch" else _TritonKernels()
    k.log = log
    return k
