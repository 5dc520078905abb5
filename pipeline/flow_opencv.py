"""TV-L1 optical flow with OpenCV's own CPU implementation (``cv2.optflow.DualTVL1OpticalFlow``).

The accuracy reference for :mod:`actrec.pipeline.tvl1` and the ``--backend opencv`` CPU backend. Same input and
output conventions as :func:`actrec.pipeline.tvl1.tvl1_flow`; pairs are spread over ``workers`` processes
(joblib, loky), each running OpenCV single-threaded so that ``workers`` processes use ``workers`` cores.
"""

from __future__ import annotations

import numpy as np
import torch

from actrec.deps import require
from actrec.errors import InputError
from actrec.pipeline.tvl1 import TVL1Params

__all__ = ["opencv_tvl1_flow", "opencv_tvl1_pair", "optflow"]


def optflow():
    """OpenCV's contrib module ``cv2.optflow`` (opencv-contrib-python; opencv-python has no TV-L1), or
    MissingDependency naming the package."""
    return require("cv2.optflow", "the opencv TV-L1 backend (--backend opencv)", package="opencv-contrib-python")


def _to_numpy_batch(img, name: str) -> np.ndarray:
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"{name} must be grayscale (H, W) or (N, H, W), got shape {arr.shape}; "
                         "convert colour frames with cv2.cvtColor(..., cv2.COLOR_RGB2GRAY) first")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        return np.ascontiguousarray(arr, dtype=np.float32)  # OpenCV scales float input by 255 itself
    raise InputError(f"{name} must be uint8 or floating point, got {arr.dtype}")


def _create(params: TVL1Params):
    # positional: the Python binding spells the inner-iterations keyword "innnerIterations"
    return optflow().DualTVL1OpticalFlow_create(
        float(params.tau), float(params.lambda_), float(params.theta), int(params.nscales), int(params.warps),
        float(params.epsilon), int(params.inner_iterations), int(params.outer_iterations),
        float(params.scale_step), float(params.gamma), int(params.median_filtering), bool(params.use_initial_flow),
    )


def opencv_tvl1_pair(img0: np.ndarray, img1: np.ndarray, params: TVL1Params, initial_flow=None) -> np.ndarray:
    """One pair with OpenCV, in this process; returns float32 ``(H, W, 2)``.

    A fresh solver object per pair: OpenCV's object lowers its own ``nscales`` when a pyramid level gets too
    small, which would otherwise leak into the next (possibly larger) pair.
    """
    solver = _create(params)
    if params.use_initial_flow:
        flow = np.ascontiguousarray(initial_flow, dtype=np.float32).copy()
    else:
        flow = None
    return solver.calc(img0, img1, flow)


def _run_chunk(img0s, img1s, params, flows0, threads: int):
    import cv2

    cv2.setNumThreads(threads)
    out = []
    for i in range(len(img0s)):
        out.append(opencv_tvl1_pair(img0s[i], img1s[i], params, None if flows0 is None else flows0[i]))
    return out


def opencv_tvl1_flow(img0, img1, params: TVL1Params = TVL1Params(), workers: int = 1, *, initial_flow=None) -> torch.Tensor:
    """TV-L1 flow of N pairs with OpenCV; returns float32 ``(N, H, W, 2)`` (a CPU tensor), channel 0 = x.

    ``workers`` > 1 spreads the pairs over that many processes (joblib/loky), each running OpenCV with one thread;
    ``workers`` = 1 runs here with OpenCV's default threading.
    """
    a = _to_numpy_batch(img0, "img0")
    b = _to_numpy_batch(img1, "img1")
    if a.shape != b.shape:
        raise InputError(f"img0 and img1 differ in shape: {a.shape} vs {b.shape}")
    if a.dtype != b.dtype:
        raise InputError(f"img0 and img1 differ in dtype: {a.dtype} vs {b.dtype}")
    n = a.shape[0]
    flows0 = None
    if params.use_initial_flow:
        if initial_flow is None:
            raise InputError("params.use_initial_flow is set but no initial_flow was given")
        f0 = np.asarray(initial_flow.detach().cpu() if isinstance(initial_flow, torch.Tensor) else initial_flow,
                        dtype=np.float32)
        flows0 = np.broadcast_to(f0, (n,) + a.shape[1:] + (2,)) if f0.ndim == 3 else f0
    elif initial_flow is not None:
        raise InputError("initial_flow given but params.use_initial_flow is False")
    workers = max(1, min(int(workers), n))
    if workers == 1:
        flows = [opencv_tvl1_pair(a[i], b[i], params, None if flows0 is None else flows0[i]) for i in range(n)]
    else:
        from joblib import Parallel, delayed

        bounds = np.linspace(0, n, workers + 1).astype(int)
        chunks = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        results = Parallel(n_jobs=len(chunks), backend="loky")(
            delayed(_run_chunk)(a[lo:hi], b[lo:hi], params, None if flows0 is None else flows0[lo:hi], 1)
            for lo, hi in chunks
        )
        flows = [f for part in results for f in part]
    return torch.from_numpy(np.stack(flows).astype(np.float32, copy=False))
