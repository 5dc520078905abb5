"""TV-L1 parameters with OpenCV's names and defaults, and the float32 constants derived from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from actrec.errors import InputError

_FLT_EPSILON = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class TVL1Params:
    """Parameters of the TV-L1 solver, with OpenCV's names and defaults.

    Symbols are those of Zach/Pock/Bischof and of the IPOL paper (Sanchez et al. 2013):

    * ``tau`` (tau): time step of the numerical scheme (the dual update steps by tau / theta).
    * ``lambda_`` (lambda): weight of the L1 data term against the TV regulariser; smaller = smoother flow.
    * ``theta`` (theta): coupling between the flow u and the auxiliary variable v (the quadratic relaxation
      ``1/(2 theta) |u - v|^2``); small theta = tighter coupling.
    * ``nscales`` (N_scales): number of pyramid levels (fewer when a level would fall below 16 pixels).
    * ``warps`` (N_warps): number of re-linearisations (warps of I1 by the current flow) per level.
    * ``epsilon`` (epsilon): stopping threshold; a warp stops when ``sum |u^{k+1} - u^k|^2 <= epsilon^2 H W``.
    * ``inner_iterations``: primal-dual iterations between two median filterings.
    * ``outer_iterations``: median filterings (each followed by ``inner_iterations`` iterations) per warp.
    * ``scale_step`` (eta): downscaling factor between pyramid levels (0 < eta < 1).
    * ``gamma`` (gamma): weight of the illumination term u3 of Chambolle-Pock's brightness-varying model;
      0 disables it (OpenCV's default).
    * ``median_filtering``: median window size applied to the flow at each outer iteration; 1 or less
      disables it. OpenCV accepts only 3 or 5 on float data; this implementation also takes larger odd sizes
      (with a slower sort-based median).
    * ``use_initial_flow``: start from the given flow instead of zero (it is downscaled to the coarsest level
      as OpenCV does; finer levels are always initialised from the coarser solution).
    """

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5
    use_initial_flow: bool = False

    def __post_init__(self) -> None:
        for name in ("tau", "lambda_", "theta", "epsilon", "scale_step", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"TV-L1 parameter {name} must be a finite number, got {value!r}")
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations", "median_filtering"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise InputError(f"TV-L1 parameter {name} must be an integer, got {value!r}")
        if self.tau <= 0 or self.lambda_ <= 0 or self.theta <= 0:
            raise InputError("TV-L1 parameters tau, lambda and theta must be > 0")
        if self.epsilon < 0:
            raise InputError(f"TV-L1 parameter epsilon must be >= 0, got {self.epsilon}")
        if self.nscales < 1 or self.warps < 1 or self.inner_iterations < 1 or self.outer_iterations < 1:
            raise InputError("TV-L1 parameters nscales, warps, inner_iterations and outer_iterations must be >= 1")
        if not 0 < self.scale_step < 1:
            raise InputError(f"TV-L1 parameter scale_step must be in (0, 1), got {self.scale_step}")
        if self.median_filtering > 1 and self.median_filtering % 2 == 0:
            raise InputError(f"TV-L1 parameter median_filtering must be odd (or <= 1 to disable), got {self.median_filtering}")

    def opencv_args(self) -> dict:
        """Keyword arguments for ``cv2.optflow.DualTVL1OpticalFlow_create``."""
        return dict(
            tau=float(self.tau), lambda_=float(self.lambda_), theta=float(self.theta), nscales=int(self.nscales),
            warps=int(self.warps), epsilon=float(self.epsilon), innnerIterations=int(self.inner_iterations),
            outerIterations=int(self.outer_iterations), scaleStep=float(self.scale_step), gamma=float(self.gamma),
            medianFiltering=int(self.median_filtering), useInitialFlow=bool(self.use_initial_flow),
        )

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _f32(x: float) -> float:
    """The float32 value OpenCV's ``static_cast<float>`` gives, as a Python float."""
    return float(np.float32(x))


class _Consts:
    """Per-level scalars, rounded to float32 exactly where OpenCV rounds them."""

    def __init__(self, params: TVL1Params, h: int, w: int):
        self.l_t = _f32(params.lambda_ * params.theta)
        self.taut = _f32(params.tau / params.theta)
        self.theta = _f32(params.theta)
        self.gamma = _f32(params.gamma)
        self.use_gamma = params.gamma != 0
        self.scaled_eps = _f32(params.epsilon * params.epsilon * h * w)
