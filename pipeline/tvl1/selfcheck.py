"""The Triton kernels check themselves on a device before they compute anything there, and step aside if wrong.

Why: a new GPU, driver or Triton version can fail to compile or launch the kernels, or (worse) compile them into
code that gives other numbers. Either would surface hours into a job, as a crash or as silently wrong flows. So
the first time a process runs the Triton kernel set on a device (:meth:`.backend._TritonKernels.runner`), it
solves one small built-in pair there (64x48, a smooth texture moved by a known sub-pixel shift; one pyramid
level, 2 warps with 2 median filterings of 3 iterations each: the Triton solver's warp, median, gradient and step
kernels all run) and the same pair with the plain-PyTorch kernels on the CPU, and compares the flows:

* Designed bit-identical (see :mod:`.triton_step`: no FMA contraction, IEEE division, a correctly rounded hypot,
  a batch-independent error sum), the flows may differ by at most ``TOLERANCE_PX`` (1e-3 px) in any pixel: room
  for a last-bit difference in a stopping decision, far below what a wrong kernel does (whole pixels, NaN).
  Whether the run was bit-identical is reported (``actrec check-gpu`` prints it).
* A compile or launch error, or flows outside the tolerance: one RuntimeWarning naming the cause and
  ACTREC_TVL1_KERNELS, and the plain-PyTorch kernels (eager) compute on that device for the rest of the process.
  Their flows are the CPU solver's within OpenCV's criterion (the TV-L1 package docstring), so a job goes on.
* Where the outer iterations replay as graphs (CUDA graphs on CUDA; the cache a test gives), the pair is solved
  a second time through them, which captures the process's first graph: a capture error or flows outside the tolerance
  give one warning naming ACTREC_TVL1_GRAPHS, and the kernels are launched directly on that device.

The check costs one small solve per device and process, plus the kernels' compilation, which their first use would
pay anyway (3 s under ``TRITON_INTERPRET=1`` on a shared 2-core CPU; not yet measured on a GPU).
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from actrec.pipeline.tvl1.params import TVL1Params

PAIR_SIZE = (48, 64)  # (H, W)
SHIFT = (1.25, -0.75)  # the pair's true motion (dx, dy) in pixels
PARAMS = TVL1Params(nscales=1, warps=2, outer_iterations=2, inner_iterations=3)
TOLERANCE_PX = 1e-3

# str(device) -> the last self-check there (for `actrec check-gpu` and tests)
reports: dict[str, "SelfCheck"] = {}


@dataclass
class Stage:
    """One comparison: ``passed``; ``cause`` (why not); ``max_diff`` px against the CPU (None: no flow);
    ``identical`` (bit for bit); ``seconds`` (compilation included)."""

    passed: bool
    cause: str = ""
    max_diff: float | None = None
    identical: bool = False
    seconds: float = 0.0


@dataclass
class SelfCheck:
    """The self-check of the Triton kernels on ``device``: direct launches, then graphs (None: not used there),
    and what runs there from now on (``"triton"``, ``"triton-direct"`` or ``"torch"``)."""

    device: str
    direct: Stage
    graphs: Stage | None
    chosen: str

    @property
    def passed(self) -> bool:
        return self.direct.passed and (self.graphs is None or self.graphs.passed)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "passed": self.passed, "chosen": self.chosen, "direct": asdict(self.direct),
                "graphs": None if self.graphs is None else asdict(self.graphs)}


def moving_texture(h: int, w: int, shift: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Two uint8 ``(h, w)`` frames: a smooth texture of sines and the same texture moved by ``shift`` (dx, dy)
    pixels, computed from the formula (no resampling), so a pair of known motion needs nothing but numpy."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)

    def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (128 + 45 * np.sin(0.35 * x + 0.12 * y) + 35 * np.cos(0.27 * y - 0.09 * x)
                + 25 * np.sin(0.021 * (x - 30) * (y - 20)))

    dx, dy = shift
    frames = texture(x, y), texture(x - dx, y - dy)  # frame 1 at x + d shows frame 0 at x
    return tuple(np.clip(np.rint(f), 0, 255).astype(np.uint8) for f in frames)


def builtin_pair() -> tuple[np.ndarray, np.ndarray]:
    """The self-check's pair: ``(1, 48, 64)`` uint8 frames moved by ``SHIFT``."""
    return tuple(f[None] for f in moving_texture(*PAIR_SIZE, SHIFT))


def solve(pyramid: Callable, device: torch.device) -> torch.Tensor:
    """The flow ``(1, H, W, 2)`` of the built-in pair solved on ``device`` by ``pyramid`` (``(I0, I1, params,
    flow0) -> flow``, as :meth:`.backend._TritonKernels.launch`), on the CPU."""
    img0, img1 = (torch.from_numpy(a).to(device=device, dtype=torch.float32) for a in builtin_pair())
    with torch.no_grad():
        return pyramid(img0, img1, PARAMS, None).cpu()


def torch_pyramid(I0: torch.Tensor, I1: torch.Tensor, params: TVL1Params,
                  flow0: torch.Tensor | None) -> torch.Tensor:
    """The coarse-to-fine solve with the plain-PyTorch kernels (eager): the reference, and the fallback of a
    device whose Triton kernels failed."""
    from actrec.pipeline.tvl1.backend import get_kernels
    from actrec.pipeline.tvl1.solver import _tvl1_pyramid

    return _tvl1_pyramid(I0, I1, params, flow0, get_kernels("torch", False))


@functools.lru_cache(maxsize=1)
def reference() -> torch.Tensor:
    """The built-in pair's flow from the plain-PyTorch kernels on the CPU (eager: no compilation)."""
    return solve(torch_pyramid, torch.device("cpu"))


def compare(run: Callable[[], torch.Tensor]) -> Stage:
    """Run a solve of the built-in pair and hold its flow to the CPU reference's."""
    start = time.perf_counter()
    try:
        flow = run()
    except Exception as exc:  # noqa: BLE001 - any compile or launch error is the finding, reported in one line
        return Stage(False, _one_line(exc), seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    ref = reference()
    if not torch.isfinite(flow).all():
        return Stage(False, "the flow has NaN or infinite values", seconds=seconds)
    diff = float((flow - ref).abs().max())
    identical = torch.equal(flow, ref)
    if diff > TOLERANCE_PX:
        return Stage(False, f"the flow differs from the CPU solver's by up to {diff:.3g} px (tolerance "
                            f"{TOLERANCE_PX:g})", diff, identical, seconds)
    return Stage(True, "", diff, identical, seconds)


def _one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"


def run_selfcheck(kset: Any, device: torch.device) -> tuple[SelfCheck, Callable]:
    """Check a Triton kernel set on ``device``; the report and the pyramid solver to use there."""
    direct_launch = functools.partial(kset.launch, graphs=False)
    direct = compare(lambda: solve(direct_launch, device))
    graphs = None
    if direct.passed and kset.uses_graphs(device):
        graphs = compare(lambda: solve(kset.launch, device))
    if not direct.passed:
        return SelfCheck(str(device), direct, graphs, "torch"), torch_pyramid
    if graphs is not None and not graphs.passed:
        return SelfCheck(str(device), direct, graphs, "triton-direct"), direct_launch
    return SelfCheck(str(device), direct, graphs, "triton"), kset.launch


def verify(kset: Any, device: torch.device) -> Callable:
    """The self-check of ``kset`` on ``device`` (the first use there): one warning if it fails; the runner."""
    report, runner = run_selfcheck(kset, device)
    reports[str(device)] = report
    if not report.direct.passed:
        warnings.warn(f"the Triton TV-L1 kernels failed their self-check on {device} ({report.direct.cause}); "
                      "the plain-PyTorch kernels compute instead (slower, same results within OpenCV's 0.1 px). "
                      "Set ACTREC_TVL1_KERNELS=torch to choose them without the check, and please report the "
                      "output of `actrec check-gpu`", RuntimeWarning, stacklevel=2)
    elif report.graphs is not None and not report.graphs.passed:
        warnings.warn(f"the CUDA graphs of the Triton TV-L1 kernels failed their self-check on {device} "
                      f"({report.graphs.cause}); the kernels are launched directly instead (slower on small "
                      "batches, same results). Set ACTREC_TVL1_GRAPHS=0 to do so without the check, or "
                      "ACTREC_TVL1_KERNELS=torch for the plain-PyTorch kernels", RuntimeWarning, stacklevel=2)
    return runner
