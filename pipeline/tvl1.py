"""TV-L1 optical flow in pure PyTorch, reproducing OpenCV's CPU ``cv2.optflow.DualTVL1OpticalFlow``.

The method is the duality-based TV-L1 scheme of Zach, Pock and Bischof ("A Duality Based Approach for Realtime
TV-L1 Optical Flow", DAGM 2007) as described by Sanchez, Meinhardt-Llopis and Facciolo (IPOL 2013) and implemented
by OpenCV (``modules/optflow/src/tvl1flow.cpp`` in opencv_contrib). Every detail that changes the result follows
that implementation, as run by the opencv-contrib-python 5.0 wheels (x86-64, with Intel IPP):

* input: ``uint8`` images are used as they are (0..255); float images are multiplied by 255, as
  ``Mat::convertTo(..., 255.0)`` does, so float input is expected in [0, 1];
* pyramid: level s is ``cv::resize(level s-1, Size(), s, s, INTER_LINEAR)`` (cascaded): size ``round(size * s)``
  (half to even), pixel-centre map ``src = (dst + 0.5) / s - 0.5`` (``1/s``, not the ratio of the rounded sizes);
  levels narrower or lower than 16 pixels are dropped. For float32 images the wheels run IPP's linear resize,
  which this reproduces bit for bit in tests (``a + w (b - a)`` with one rounding, double-precision weights);
  OpenCV's own C++ path is available as ``resize_linear(..., ipp=False)``;
* per level: centred differences of I1 (halved one-sided differences on the border), then ``warps`` times: warp
  I1 and its gradients with ``cv::remap(INTER_CUBIC, BORDER_CONSTANT 0)`` (OpenCV 5 / IPP: Keys cubic a = -0.75
  at the exact position, zero outside; OpenCV 4 rounded positions to 1/32 pixel), then up to
  ``outer_iterations`` x (``medianBlur`` 5x5 of u1 and u2 with replicated border, ``inner_iterations``
  primal-dual steps). A step: thresholding (v), divergence of p (backward differences, p = 0 outside),
  u = v + theta div p, forward differences of u (0 on the last row/column), p = (p + tau/theta grad u) /
  (1 + tau/theta |grad u|) with a correctly rounded hypot. A warp stops as soon as
  ``sum |u_new - u_old|^2 <= epsilon^2 H W`` after a step;
* between levels: ``cv::resize(u, finer size, INTER_LINEAR)``, then ``u *= 1 / scale_step``; p restarts at 0.

Batching: :func:`tvl1_flow` solves N pairs of one size together. The stopping rule is per pair: a pair whose warp
has converged is frozen on the device (``torch.where``) while the others go on, and is dropped from the batch at
the next host check (after every block of 3 steps on CPU, where a check costs nothing; once per outer iteration
on CUDA). A pair's result therefore does not depend on the batch it is in (tested bit for bit).

Arithmetic is float32 in OpenCV's operation order, so each building block matches OpenCV to the last bit or to a
few ulps (IPP's cubic remap and OpenCV's sequential float error sum cannot be reproduced exactly). The TV-L1
iteration amplifies such differences on some real pairs: OpenCV against itself with IPP switched off moves up to
20% of a pair's pixels by more than 0.1 px. Measured parity with OpenCV is in benchmarks/RESULTS.md.

Speed: on CPU the iteration is fused with ``torch.compile`` (inductor) by default; it needs a C++ compiler and
compiles once per process (tens of seconds, cached on disk), falling back to eager mode with a warning.
Colour input: convert RGB frames with ``cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)`` (or :func:`to_gray`) first, as
OpenCV's users do; this module takes grayscale only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from actrec.errors import DeviceError, InputError

__all__ = [
    "TVL1Params",
    "tvl1_flow",
    "to_gray",
    "pyramid_sizes",
    "resize_linear",
    "remap_cubic",
    "median_blur",
    "centered_gradient",
    "forward_gradient",
    "divergence",
    "solve_level",
]

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


# ----------------------------------------------------------------------------------------------------------------
# colour conversion


def to_gray(rgb):
    """RGB -> gray exactly as ``cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)``.

    numpy input (``(H, W, 3)`` or ``(N, H, W, 3)`` uint8) is converted by cv2 itself and returns uint8 numpy.
    A torch tensor is converted on its device by a bit-exact replica of OpenCV's uint8 fixed-point formula
    ``(9798 R + 19235 G + 3735 B + 16384) >> 15``
    (OpenCV 5's coefficients, checked over all 2^24 colours; OpenCV 4 used 14-bit ones) and returns a uint8 tensor ``(H, W)`` / ``(N, H, W)``.
    """
    if isinstance(rgb, torch.Tensor):
        if rgb.dtype != torch.uint8 or rgb.ndim not in (3, 4) or rgb.shape[-1] != 3:
            raise InputError(f"to_gray expects uint8 (..., H, W, 3) RGB, got {tuple(rgb.shape)} {rgb.dtype}")
        x = rgb.to(torch.int32)
        y = (x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + (1 << 14)) >> 15
        return y.to(torch.uint8)
    import cv2

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise InputError(f"to_gray expects uint8 (..., H, W, 3) RGB, got {arr.shape} {arr.dtype}")
    if arr.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)
    return np.stack([cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY) for a in arr])


# ----------------------------------------------------------------------------------------------------------------
# pyramid: cv::resize INTER_LINEAR on float32


def _cv_round(x: float) -> int:
    """cvRound / saturate_cast<int>(double): round half to even."""
    return int(round(x))


def pyramid_sizes(height: int, width: int, nscales: int, scale_step: float) -> list[tuple[int, int]]:
    """The (H, W) of each level OpenCV's TV-L1 uses, finest first; levels under 16 pixels are dropped."""
    sizes = [(int(height), int(width))]
    for _ in range(1, nscales):
        h, w = sizes[-1]
        nh, nw = _cv_round(h * scale_step), _cv_round(w * scale_step)
        if nw < 16 or nh < 16:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_taps(dst_len: int, src_len: int, scale: float, ipp: bool, clamp_weights: bool):
    """Source indices and float32 weights of INTER_LINEAR along one axis (OpenCV's ``scale_x = 1/inv_scale_x``).

    ``ipp=False``: OpenCV's own code: position rounded to float32, ``fx -= floor(fx)`` in float32; along x
    (``clamp_weights``) out-of-range taps move to the edge with weights (1, 0), along y the weights stay and the
    row indices are clamped. ``ipp=True``: Intel IPP's resize (what OpenCV's x86-64 wheels call for float
    images): position and fraction in double precision, rounded once to float32.
    """
    d = np.arange(dst_len, dtype=np.float64)
    if ipp:
        pos = (d + 0.5) * scale - 0.5
        s = np.floor(pos)
        f = pos - s
    else:
        pos = ((d + 0.5) * scale - 0.5).astype(np.float32)
        s = np.floor(pos)
        f = (pos - s.astype(np.float32)).astype(np.float32).astype(np.float64)
    s = s.astype(np.int64)
    if clamp_weights:
        f[(s < 0) | (s >= src_len - 1)] = 0.0
    i0 = np.clip(s, 0, src_len - 1)
    i1 = np.clip(s + 1, 0, src_len - 1)
    w1 = f.astype(np.float32)
    w0 = (1.0 - f).astype(np.float32) if ipp else (np.float32(1.0) - w1).astype(np.float32)
    return i0, i1, w0, w1


def _lerp_fma(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``fma(w, b - a, a)`` in float32 (the fused multiply-add emulated in float64, rounded once)."""
    return torch.addcmul(a.double(), w.double(), (b - a).double()).float()


def resize_linear(img: torch.Tensor, out_hw: tuple[int, int], scale: float | None = None, *, ipp: bool = True) -> torch.Tensor:
    """``cv::resize(img, INTER_LINEAR)`` of float32 ``(..., H, W)`` to ``out_hw``; horizontal pass first.

    ``scale`` given: OpenCV's ``resize(src, Size(), scale, scale)``, whose pixel map uses ``1/scale`` (not the
    ratio of the rounded sizes); ``None``: ``resize(src, dsize)``, whose map uses ``src/dst``.
    ``ipp=True`` (default) reproduces the Intel IPP path that the opencv-python x86-64 wheels take for float32
    images: ``a + w (b - a)`` with one rounding (FMA) and double-precision weights, bit-exact in tests;
    ``ipp=False`` reproduces OpenCV's own C++ path (``a w0 + b w1``, float32 weights), for builds without IPP.
    """
    h, w = img.shape[-2:]
    oh, ow = out_hw
    if scale is not None:
        sx = sy = 1.0 / scale
    else:
        sx, sy = 1.0 / (ow / w), 1.0 / (oh / h)
    dev = img.device
    x0, x1, wx0, wx1 = (torch.from_numpy(a).to(dev) for a in _linear_taps(ow, w, sx, ipp, True))
    y0, y1, wy0, wy1 = (torch.from_numpy(a).to(dev) for a in _linear_taps(oh, h, sy, ipp, ipp))
    if ipp:
        tmp = _lerp_fma(img.index_select(-1, x0), img.index_select(-1, x1), wx1)
        return _lerp_fma(tmp.index_select(-2, y0), tmp.index_select(-2, y1), wy1[:, None])
    tmp = img.index_select(-1, x0) * wx0 + img.index_select(-1, x1) * wx1
    return tmp.index_select(-2, y0) * wy0[:, None] + tmp.index_select(-2, y1) * wy1[:, None]


# ----------------------------------------------------------------------------------------------------------------
# cv::remap INTER_CUBIC, BORDER_CONSTANT 0


def _cubic_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """Keys cubic weights (a = -0.75) of the taps at offsets -1, 0, 1, 2 for fractions t in [0, 1), float32,
    as polynomials in t (the float32 form closest to ``cv2.remap`` among those tried)."""
    t2 = t * t
    t3 = t2 * t
    return [(-0.75 * t3 + 1.5 * t2) - 0.75 * t, (1.25 * t3 - 2.25 * t2) + 1.0,
            (-1.25 * t3 + 1.5 * t2) + 0.75 * t, 0.75 * t3 - 0.75 * t2]


def remap_cubic(src: torch.Tensor, map_x: torch.Tensor, map_y: torch.Tensor) -> torch.Tensor:
    """``cv::remap(src, map_x, map_y, INTER_CUBIC, BORDER_CONSTANT, 0)`` for float32 ``src (N, C, H, W)``.

    Maps are ``(N, H', W')`` float32 absolute source coordinates (pixel centres at integers). The 4x4 Keys cubic
    (a = -0.75) weights are evaluated at the exact fractional position and taps outside the image count as 0
    (a sample fully outside gives 0). That is what OpenCV 5 does for float maps: it hands them to Intel IPP's
    ``ippiRemap`` (OpenCV 4's own ``remapBicubic`` rounded positions to 1/32 pixel instead). IPP's exact
    arithmetic is not public: this agrees with ``cv2.remap`` bit for bit on about half of the outputs and
    within a few float32 ulps on the rest (an FMA-emulating variant gained ~0.3% parity on the hardest pairs
    for twice the cost, so plain float32 it is).
    """
    n, c, h, w = src.shape
    oh, ow = map_x.shape[-2:]
    lim = float(1 << 22)  # far outside any image; keeps the int conversion defined for wild flows
    fx = map_x.clamp(-lim, lim)
    fy = map_y.clamp(-lim, lim)
    x0 = torch.floor(fx)
    y0 = torch.floor(fy)
    cx = [k.unsqueeze(1) for k in _cubic_weights(fx - x0)]
    cy = [k.unsqueeze(1) for k in _cubic_weights(fy - y0)]
    ix = x0.to(torch.int64) - 1  # first tap
    iy = y0.to(torch.int64) - 1
    # zero-padded source: any tap outside [0, W) x [0, H) is clamped onto the zero border
    pw = w + 2
    padded = F.pad(src, (1, 1, 1, 1)).reshape(n, c, (h + 2) * pw)
    xs = [(ix + k).clamp_(-1, w).add_(1) for k in range(4)]
    ys = [(iy + k).clamp_(-1, h).add_(1).mul_(pw) for k in range(4)]
    total = None
    for ky in range(4):
        row = None
        for kx in range(4):
            idx = (ys[ky] + xs[kx]).reshape(n, 1, oh * ow).expand(n, c, oh * ow)
            val = torch.gather(padded, 2, idx).reshape(n, c, oh, ow) * cx[kx]
            row = val if row is None else row + val
        row = row * cy[ky]
        total = row if total is None else total + row
    return total


# ----------------------------------------------------------------------------------------------------------------
# median filter (cv::medianBlur on float32: exact median, BORDER_REPLICATE)


def _batcher_network(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort comparators for n (a power of 2) wires."""
    comps = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        comps.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return comps


def _sort_network(m: int) -> list[tuple[int, int]]:
    """A sorting network for m wires (Batcher on the next power of 2, comparators on padding wires dropped)."""
    n = 1
    while n < m:
        n *= 2
    return [(i, j) for i, j in _batcher_network(n) if j < m]


_median_net_cache: dict = {}


def _median_network(k: int):
    """Comparators that leave the median of a k x k window on wire (k*k)//2, given that each column (k values,
    wires ``k*c .. k*c+k-1``) arrives sorted. Built from Batcher's network by dropping every comparator that never
    swaps on any 0/1 input with sorted columns (exact by the 0-1 principle) and every comparator whose outputs the
    median does not depend on. Returns (column sorting network, [(i, j, need_min, need_max)])."""
    if k in _median_net_cache:
        return _median_net_cache[k]
    import itertools

    m = k * k
    n = 1
    while n < m:
        n *= 2
    cols = []
    for zeros in itertools.product(range(k + 1), repeat=k):
        row = []
        for z in zeros:
            row += [0] * z + [1] * (k - z)
        cols.append(row + [1] * (n - m))
    X = np.array(cols, dtype=np.int8)
    kept = []
    for i, j in _batcher_network(n):
        if (X[:, i] > X[:, j]).any():
            kept.append((i, j))
            lo, hi = np.minimum(X[:, i], X[:, j]), np.maximum(X[:, i], X[:, j])
            X[:, i], X[:, j] = lo, hi
    need = {m // 2}
    net = []
    for i, j in reversed(kept):
        a, b = i in need, j in need
        if a or b:
            net.append((i, j, a, b))
            need.update((i, j))
    net.reverse()
    assert max(max(i, j) for i, j, _, _ in net) < m  # padding wires (+inf) never take part
    _median_net_cache[k] = (_sort_network(k), net)
    return _median_net_cache[k]


def median_blur(u: torch.Tensor, ksize: int) -> torch.Tensor:
    """``cv::medianBlur(u, ksize)`` on float32 ``(N, H, W)``: exact median of the window, replicated border.

    Done with min/max comparator networks (each column of the window sorted once and shared by the k windows
    that contain it, then a pruned selection network), which is exact and much faster than sorting.
    """
    if ksize > 5:
        return _median_sort(u, ksize)
    col_net, net = _median_network(ksize)
    return _median_apply(u, ksize, tuple(col_net), tuple(net))


def _median_sort(u: torch.Tensor, ksize: int) -> torch.Tensor:
    """Median by sorting each window (any odd ksize; the networks above are built for 3 and 5)."""
    n, h, w = u.shape
    r = ksize // 2
    padded = F.pad(u.unsqueeze(1), (r, r, r, r), mode="replicate").squeeze(1)
    win = padded.unfold(1, ksize, 1).unfold(2, ksize, 1).reshape(n, h, w, ksize * ksize)
    return win.median(dim=-1).values


def _median_apply(u: torch.Tensor, ksize: int, col_net: tuple, net: tuple) -> torch.Tensor:
    n, h, w = u.shape
    r = ksize // 2
    padded = F.pad(u.unsqueeze(1), (r, r, r, r), mode="replicate").squeeze(1)
    col = [padded[:, i:i + h, :] for i in range(ksize)]  # vertical neighbours, (N, H, W + 2r)
    for i, j in col_net:
        col[i], col[j] = torch.minimum(col[i], col[j]), torch.maximum(col[i], col[j])
    wires = [col[rank][:, :, c:c + w] for c in range(ksize) for rank in range(ksize)]
    for i, j, need_min, need_max in net:
        a, b = wires[i], wires[j]
        if need_min:
            wires[i] = torch.minimum(a, b)
        if need_max:
            wires[j] = torch.maximum(a, b)
    return wires[(ksize * ksize) // 2]


# ----------------------------------------------------------------------------------------------------------------
# finite differences


def centered_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV TV-L1's centredGradient: 0.5 (f[x+1] - f[x-1]) inside, 0.5 (one-sided difference) on the border."""
    dx = torch.empty_like(img)
    dy = torch.empty_like(img)
    dx[..., :, 1:-1] = 0.5 * (img[..., :, 2:] - img[..., :, :-2])
    dx[..., :, 0] = 0.5 * (img[..., :, 1] - img[..., :, 0])
    dx[..., :, -1] = 0.5 * (img[..., :, -1] - img[..., :, -2])
    dy[..., 1:-1, :] = 0.5 * (img[..., 2:, :] - img[..., :-2, :])
    dy[..., 0, :] = 0.5 * (img[..., 1, :] - img[..., 0, :])
    dy[..., -1, :] = 0.5 * (img[..., -1, :] - img[..., -2, :])
    return dx, dy


# ----------------------------------------------------------------------------------------------------------------
# one pyramid level


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


def divergence(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """OpenCV TV-L1's divergence: backward differences with v = 0 outside (first row/column), in OpenCV's
    operation order. Functional (no in-place writes), so ``torch.compile`` can fuse it."""
    left = F.pad(v1[..., :, :-1], (1, 0))
    top = F.pad(v2[..., :-1, :], (0, 0, 1, 0))
    d = (v1 - left) + (v2 - top)
    # first column, rows >= 1: OpenCV adds in the order (v1 + v2) - v2[y-1]
    c0 = (v1[..., 1:, :1] + v2[..., 1:, :1]) - v2[..., :-1, :1]
    c0 = F.pad(c0, (0, 0, 1, 0))
    col = torch.arange(d.shape[-1], device=d.device) == 0
    row = torch.arange(d.shape[-2], device=d.device)[:, None] > 0
    return torch.where(col & row, c0, d)


def forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV TV-L1's forwardGradient: forward differences, 0 on the last column (x) and the last row (y)."""
    ux = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    uy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return ux, uy


def _dual_f(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, taut: float):
    """estimateDualVariables for one flow component: p = (p + taut grad u) / (1 + taut |grad u|)."""
    ux, uy = forward_gradient(u)
    ng = 1.0 + taut * torch.hypot(ux, uy)  # correctly rounded, like the hypot OpenCV calls
    return (px + taut * ux) / ng, (py + taut * uy) / ng


def _step2(u1, u2, p11, p12, p21, p22, I1wx, I1wy, rho_c, grad_safe, l_t: float, theta: float, taut: float):
    """One primal-dual iteration for flows without the gamma term; returns the new (u1, u2, p..) and the per-pair
    error ``sum |u_new - u|^2`` (float64). Pure tensor code, so it can be fused by ``torch.compile``.

    estimateV's three branches (+l_t I1w', -l_t I1w', -rho/|grad|^2 I1w') are one clamp of -rho/|grad|^2 to
    [-l_t, l_t]; ``grad_safe`` is +inf where |grad|^2 <= FLT_EPSILON, which gives OpenCV's 0 there.
    """
    rho = rho_c + (I1wx * u1 + I1wy * u2)
    fi = torch.clamp((-rho) / grad_safe, -l_t, l_t)
    n1 = (u1 + fi * I1wx) + theta * divergence(p11, p12)
    n2 = (u2 + fi * I1wy) + theta * divergence(p21, p22)
    d1 = n1 - u1
    d2 = n2 - u2
    err = (d1 * d1 + d2 * d2).to(torch.float64).sum(dim=(1, 2))
    q11, q12 = _dual_f(n1, p11, p12, taut)
    q21, q22 = _dual_f(n2, p21, p22, taut)
    return n1, n2, q11, q12, q21, q22, err


def _step3(u1, u2, u3, p11, p12, p21, p22, p31, p32, I1wx, I1wy, rho_c, grad_safe,
           l_t: float, theta: float, taut: float, gamma: float):
    """:func:`_step2` with OpenCV's illumination term u3 (gamma != 0)."""
    rho = (rho_c + (I1wx * u1 + I1wy * u2)) + gamma * u3
    fi = torch.clamp((-rho) / grad_safe, -l_t, l_t)
    n1 = (u1 + fi * I1wx) + theta * divergence(p11, p12)
    n2 = (u2 + fi * I1wy) + theta * divergence(p21, p22)
    n3 = (u3 + fi * gamma) + theta * divergence(p31, p32)
    d1 = n1 - u1
    d2 = n2 - u2
    d3 = n3 - u3
    err = ((d1 * d1 + d2 * d2) + d3 * d3).to(torch.float64).sum(dim=(1, 2))
    q11, q12 = _dual_f(n1, p11, p12, taut)
    q21, q22 = _dual_f(n2, p21, p22, taut)
    q31, q32 = _dual_f(n3, p31, p32, taut)
    return n1, n2, n3, q11, q12, q21, q22, q31, q32, err


def _block2(u1, u2, p11, p12, p21, p22, I1wx, I1wy, rho_c, grad_safe, active, l_t: float, theta: float, taut: float,
            eps, k: int):
    """``k`` inner iterations (:func:`_step2`) of the pairs flagged in ``active`` ((N,) bool).

    A pair whose error ``sum |u_new - u|^2`` drops to ``<= eps`` after an iteration keeps that iteration's result
    and is frozen for the rest (OpenCV leaves the warp there); frozen pairs do not change. Returns the state and the
    updated mask. Several iterations per call keep the Python/dispatch overhead of compiled code low.
    """
    st = (u1, u2, p11, p12, p21, p22)
    for _ in range(k):
        out = _step2(*st, I1wx, I1wy, rho_c, grad_safe, l_t, theta, taut)
        m = active.view(-1, 1, 1)
        st = tuple(torch.where(m, a, b) for a, b in zip(out[:-1], st))
        active = active & (out[-1] > eps)
    return (*st, active)


def _block3(u1, u2, u3, p11, p12, p21, p22, p31, p32, I1wx, I1wy, rho_c, grad_safe, active,
            l_t: float, theta: float, taut: float, gamma: float, eps, k: int):
    """:func:`_block2` with the illumination term (gamma != 0)."""
    st = (u1, u2, u3, p11, p12, p21, p22, p31, p32)
    for _ in range(k):
        out = _step3(*st, I1wx, I1wy, rho_c, grad_safe, l_t, theta, taut, gamma)
        m = active.view(-1, 1, 1)
        st = tuple(torch.where(m, a, b) for a, b in zip(out[:-1], st))
        active = active & (out[-1] > eps)
    return (*st, active)


_STATE2 = ("u1", "u2", "p11", "p12", "p21", "p22")
_STATE3 = ("u1", "u2", "u3", "p11", "p12", "p21", "p22", "p31", "p32")
_WARP_CONSTS = ("I1wx", "I1wy", "rho_c", "grad_safe")


def _warp_constants(I0, src, u1, u2, grid_x, grid_y, kernels) -> dict:
    """Warp I1 and its gradients by the current flow (buildFlowMap + remap) and compute |grad I1w|^2, rho_c."""
    warped = kernels("remap", src, grid_x + u1, grid_y + u2)
    I1w, I1wx, I1wy = warped.unbind(1)
    grad = I1wx * I1wx + I1wy * I1wy
    rho_c = ((I1w - I1wx * u1) - I1wy * u2) - I0
    grad_safe = torch.where(grad > _FLT_EPSILON, grad, torch.full_like(grad, float("inf")))
    # fresh dense tensors (a slice of the stacked result keeps the stride of the stack, which would make
    # torch.compile specialise on it)
    return {"I1wx": I1wx.clone(memory_format=torch.contiguous_format),
            "I1wy": I1wy.clone(memory_format=torch.contiguous_format), "rho_c": rho_c, "grad_safe": grad_safe}


def _take(d: dict, idx: torch.Tensor | None) -> dict:
    return dict(d) if idx is None else {k: v.index_select(0, idx) for k, v in d.items()}


def _put(full: dict, sub: dict, idx: torch.Tensor | None) -> None:
    for k, v in sub.items():
        full[k] = v if idx is None else full[k].index_copy(0, idx, v)


class _Kernels:
    """The tensor functions of the solver, eager or compiled with ``torch.compile`` (inductor).

    Compiling fuses the ~70 elementwise/stencil operations of an iteration into a few loops, which is what makes
    the CPU solver competitive with OpenCV's C++ (see benchmarks/RESULTS.md). It needs a C++ compiler at run
    time and some tens of seconds of compilation per process (less with inductor's on-disk cache); if compiling
    fails the eager functions are used, with a warning. Results are the same either way: float32 in the same
    operation order, and inductor builds without FMA contraction or fast-math.
    """

    def __init__(self, compiled: bool):
        self.compiled = compiled
        self._eager = {"block2": _block2, "block3": _block3, "median": _median_apply, "remap": remap_cubic}
        if compiled:  # not the remap: its indirect loads run faster in eager ATen than in inductor's C++
            self._fns = {k: (torch.compile(f, dynamic=True) if k != "remap" else f) for k, f in self._eager.items()}
        else:
            self._fns = dict(self._eager)

    def __call__(self, name: str, *args):
        if not self.compiled:
            return self._fns[name](*args)
        for a in args:
            if isinstance(a, torch.Tensor) and a.ndim >= 1:
                # batch size as an unbacked size: a batch that shrinks to 1 pair reuses the same compiled code
                torch._dynamo.decorators.mark_unbacked(a, 0)
        try:
            return self._fns[name](*args)
        except Exception as exc:  # no or broken C++ compiler: fall back for the rest of the process
            import warnings

            warnings.warn(f"torch.compile of the TV-L1 kernels failed ({type(exc).__name__}: {exc}); using eager mode",
                          RuntimeWarning, stacklevel=2)
            self.compiled = False
            self._fns = dict(self._eager)
            return self._fns[name](*args)


_kernels_cache: dict = {}


def _default_compile(device: torch.device) -> bool:
    """Compile by default on CPU; eager on CUDA (not measured here). ACTREC_TVL1_COMPILE=0/1 overrides."""
    import os

    env = os.environ.get("ACTREC_TVL1_COMPILE", "").strip().lower()
    if env:
        return env not in ("0", "false", "no", "off")
    return device.type == "cpu"


def _get_kernels(compiled: bool) -> _Kernels:
    k = _kernels_cache.get(compiled)
    if k is None:
        k = _kernels_cache[compiled] = _Kernels(compiled)
    return k


def _blocks(inner: int, max_block: int = 3) -> list[int]:
    """Split the inner iterations into blocks run per call: the largest divisor of ``inner`` up to ``max_block``
    when that is at least half of it (one compiled variant), else ``max_block``-sized blocks and a remainder."""
    best = max(d for d in range(1, min(inner, max_block) + 1) if inner % d == 0)
    if best * 2 >= min(inner, max_block):
        return [best] * (inner // best)
    return [max_block] * (inner // max_block) + [inner % max_block]


def solve_level(
    I0: torch.Tensor,
    I1: torch.Tensor,
    u1: torch.Tensor,
    u2: torch.Tensor,
    u3: torch.Tensor | None,
    params: TVL1Params,
    *,
    sync_inner: bool | None = None,
    kernels: _Kernels | None = None,
):
    """OpenCV's ``procOneScale`` for a batch: refine the flow (u1, u2[, u3]) ``(N, H, W)`` on one pyramid level.

    Per warp: warp I1 by the flow, then up to ``outer_iterations`` x (median filter, ``inner_iterations``
    primal-dual steps), each pair stopping on its own when its update falls under ``epsilon^2 H W``. Pairs that
    stopped are frozen on the device and dropped from the batch at the next host check: after every block of
    iterations when ``sync_inner`` (default on CPU, where a check costs nothing), else once per outer iteration
    (default on CUDA).
    """
    n, h, w = I0.shape
    dev = I0.device
    c = _Consts(params, h, w)
    if sync_inner is None:
        sync_inner = dev.type != "cuda"
    if kernels is None:
        kernels = _get_kernels(_default_compile(dev))
    I1x, I1y = centered_gradient(I1)
    src = torch.stack([I1, I1x, I1y], 1)
    grid_x = torch.arange(w, device=dev, dtype=torch.float32).expand(h, w)
    grid_y = torch.arange(h, device=dev, dtype=torch.float32)[:, None].expand(h, w)
    names = _STATE3 if c.use_gamma else _STATE2
    state = {"u1": u1, "u2": u2}
    if c.use_gamma:
        state["u3"] = u3 if u3 is not None else torch.zeros_like(u1)
    for k in names:
        if k.startswith("p"):
            state[k] = torch.zeros_like(u1)
    eps = torch.tensor(c.scaled_eps, dtype=torch.float64, device=dev)
    scalars = (c.l_t, c.theta, c.taut, c.gamma) if c.use_gamma else (c.l_t, c.theta, c.taut)
    block = "block3" if c.use_gamma else "block2"
    ksize = params.median_filtering
    if 1 < ksize <= 5:
        col_net, net = _median_network(ksize)
        col_net, net = tuple(col_net), tuple(net)
    blocks = _blocks(params.inner_iterations)

    for _warp in range(params.warps):
        wconst = _warp_constants(I0, src, state["u1"], state["u2"], grid_x, grid_y, kernels)
        idx = None  # rows of `state` in the working batch `sub` (None: all, no copies)
        sub, wsub = dict(state), dict(wconst)
        active = torch.ones(n, dtype=torch.bool, device=dev)

        def compact():
            nonlocal idx, sub, wsub, active
            keep = active.nonzero().flatten()
            _put(state, sub, idx)
            idx = keep if idx is None else idx.index_select(0, keep)
            sub, wsub = _take(state, idx), _take(wconst, idx)
            active = torch.ones(keep.numel(), dtype=torch.bool, device=dev)
            return keep.numel()

        remaining = n
        for _outer in range(params.outer_iterations):
            if not sync_inner and int(active.sum()) < active.numel():  # one host sync per outer iteration
                remaining = compact()
            if remaining == 0:
                break
            if ksize > 5:  # medianBlur of u1 and u2 at the start of every outer iteration
                sub["u1"], sub["u2"] = _median_sort(sub["u1"], ksize), _median_sort(sub["u2"], ksize)
            elif ksize > 1:
                sub["u1"] = kernels("median", sub["u1"], ksize, col_net, net)
                sub["u2"] = kernels("median", sub["u2"], ksize, col_net, net)
            for k in blocks:
                out = kernels(block, *(sub[name] for name in names), *(wsub[name] for name in _WARP_CONSTS),
                              active, *scalars, eps, k)
                sub = dict(zip(names, out[:-1]))
                active = out[-1]
                if sync_inner and int(active.sum()) < active.numel():
                    remaining = compact()
                    if remaining == 0:
                        break
            if remaining == 0:
                break
        _put(state, sub, idx)
    return state["u1"], state["u2"], state.get("u3")


# ----------------------------------------------------------------------------------------------------------------
# public entry point


_CPU_CHUNK = 4  # pairs per solver call on CPU: ~7 MB of state per 340x256 pair, so 4 pairs stay near the L3 cache


def _as_batch(img, name: str) -> torch.Tensor:
    if isinstance(img, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(img))
    elif isinstance(img, torch.Tensor):
        t = img
    else:
        raise InputError(f"{name} must be a numpy array or a torch tensor, got {type(img).__name__}")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise InputError(f"{name} must be grayscale (H, W) or (N, H, W), got shape {tuple(t.shape)}; "
                         "convert colour frames with cv2.cvtColor(..., cv2.COLOR_RGB2GRAY) first")
    if t.dtype == torch.uint8:
        return t.to(torch.float32)
    if t.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return t.to(torch.float32) * 255.0  # Mat::convertTo(CV_32F, 255.0), as OpenCV does for float input
    raise InputError(f"{name} must be uint8 or floating point, got {t.dtype}")


def _resolve_device(device, img0) -> torch.device:
    if device is None:
        return img0.device if isinstance(img0, torch.Tensor) else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available (torch {torch.__version__})")
    return dev


def tvl1_flow(
    img0,
    img1,
    params: TVL1Params = TVL1Params(),
    *,
    initial_flow=None,
    device=None,
    compile: bool | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """TV-L1 optical flow from ``img0`` to ``img1`` for N pairs at once, as ``cv2.optflow.DualTVL1OpticalFlow``.

    ``img0``/``img1``: grayscale ``(H, W)`` or ``(N, H, W)``, numpy or torch, uint8 (0..255) or float in [0, 1]
    (float input is scaled by 255, as OpenCV does). Convert colour with ``cv2.cvtColor(rgb, COLOR_RGB2GRAY)`` or
    :func:`to_gray`. ``initial_flow`` ``(H, W, 2)`` / ``(N, H, W, 2)`` is used with
    ``params.use_initial_flow=True`` (and required then). ``device``: where to compute (default: the device of
    ``img0`` when it is a tensor, else CPU). ``compile``: fuse the iteration with ``torch.compile`` (default: on
    for CPU, off for CUDA; env ACTREC_TVL1_COMPILE=0/1 overrides the default); the result does not depend on it.
    ``chunk``: pairs solved together (default: all on CUDA; 4 on CPU, where a batch whose working set outgrows the
    caches runs slower per pair than a few pairs at a time); the result does not depend on it either.

    Returns float32 ``(N, H, W, 2)`` on ``device``: per pixel of img0 the displacement (dx, dy) in pixels to its
    match in img1 (channel 0 = x), OpenCV's convention.
    """
    dev = _resolve_device(device, img0)
    I0 = _as_batch(img0, "img0").to(dev)
    I1 = _as_batch(img1, "img1").to(dev)
    if I0.shape != I1.shape:
        raise InputError(f"img0 and img1 differ in shape: {tuple(I0.shape)} vs {tuple(I1.shape)}")
    n, h, w = I0.shape
    if h < 3 or w < 3:
        raise InputError(f"images must be at least 3x3 pixels, got {h}x{w}")
    if params.use_initial_flow:
        if initial_flow is None:
            raise InputError("params.use_initial_flow is set but no initial_flow was given")
        f0 = initial_flow if isinstance(initial_flow, torch.Tensor) else torch.from_numpy(np.asarray(initial_flow))
        f0 = f0.to(device=dev, dtype=torch.float32)
        if f0.ndim == 3:
            f0 = f0.unsqueeze(0).expand(n, h, w, 2)
        if tuple(f0.shape) != (n, h, w, 2):
            raise InputError(f"initial_flow must have shape ({h}, {w}, 2) or ({n}, {h}, {w}, 2), got {tuple(f0.shape)}")
    elif initial_flow is not None:
        raise InputError("initial_flow given but params.use_initial_flow is False")
    kernels = _get_kernels(_default_compile(dev) if compile is None else bool(compile))
    if chunk is None:
        chunk = _CPU_CHUNK if dev.type == "cpu" else n
    chunk = max(1, int(chunk))
    flow0 = f0 if params.use_initial_flow else None
    with torch.no_grad():
        if n <= chunk:
            return _tvl1_pyramid(I0, I1, params, flow0, kernels)
        return torch.cat([_tvl1_pyramid(I0[i:i + chunk], I1[i:i + chunk], params,
                                        None if flow0 is None else flow0[i:i + chunk], kernels)
                          for i in range(0, n, chunk)])


def _tvl1_pyramid(I0: torch.Tensor, I1: torch.Tensor, params: TVL1Params, flow0: torch.Tensor | None,
                  kernels: _Kernels) -> torch.Tensor:
    """Coarse-to-fine driver (OpenCV's ``calc``): build the pyramids, solve each level, upsample the flow."""
    n, h, w = I0.shape
    sizes = pyramid_sizes(h, w, params.nscales, params.scale_step)
    step = params.scale_step
    I0s, I1s = [I0], [I1]
    for s in range(1, len(sizes)):
        I0s.append(resize_linear(I0s[-1], sizes[s], scale=step))
        I1s.append(resize_linear(I1s[-1], sizes[s], scale=step))
    if flow0 is not None:
        u1 = flow0[..., 0].contiguous()
        u2 = flow0[..., 1].contiguous()
        down = _f32(step)
        for s in range(1, len(sizes)):
            u1 = resize_linear(u1, sizes[s], scale=step) * down
            u2 = resize_linear(u2, sizes[s], scale=step) * down
    else:
        u1 = torch.zeros((n,) + sizes[-1], device=I0.device, dtype=torch.float32)
        u2 = torch.zeros_like(u1)
    u3 = torch.zeros_like(u1) if params.gamma != 0 else None
    up = _f32(1.0 / step)
    for s in range(len(sizes) - 1, -1, -1):
        u1, u2, u3 = solve_level(I0s[s], I1s[s], u1, u2, u3, params, kernels=kernels)
        if s == 0:
            break
        u1 = resize_linear(u1, sizes[s - 1]) * up
        u2 = resize_linear(u2, sizes[s - 1]) * up
        if u3 is not None:
            u3 = resize_linear(u3, sizes[s - 1])
    return torch.stack([u1, u2], dim=-1)
