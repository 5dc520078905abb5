"""Triton kernels for the once-per-warp and once-per-outer-iteration steps of TV-L1: the warp constants (OpenCV 5's
``cv::remap(INTER_CUBIC, BORDER_CONSTANT)`` of I1 and its gradients, then ``rho_c`` and ``|grad I1w|^2``) and the
median filter of the flow (``cv::medianBlur`` 3x3 / 5x5 on float32, replicated border).

References (plain PyTorch): :func:`~actrec.pipeline.tvl1.ops.remap_cubic` with
:func:`~actrec.pipeline.tvl1.solver._warp_constants`, and :func:`~actrec.pipeline.tvl1.ops.median_blur`. The warp
kernel evaluates the same Keys weights and the same constants with the same float32 operations in the same order
(FMA contraction off), so it is bit-identical to the reference; it reads the 16 taps directly with masked loads
(no index tensors) and writes the four constants straight into the workspace, where the eager version ran about
ten PyTorch operations per warp. The median kernel runs the reference's comparator networks: each thread takes a
strip of ``STRIP`` pixels of a row, sorts the ``STRIP + K - 1`` columns of their windows once (shared by the
windows that contain them) and runs the pruned selection network of each window, all in registers (the same
comparisons as the reference, so the same value).

Both work on the listed pairs of a :class:`~.workspace.Level` and read u from the set its parity names; the median
writes the other set (the next iteration reads it: ``u_shift``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from actrec.pipeline.tvl1.ops import _median_network
from actrec.pipeline.tvl1.params import _FLT_EPSILON
from actrec.pipeline.tvl1.triton_step import program_block

WARP_BLOCK = 256  # output pixels per program
MEDIAN_STRIPS = 128  # strips per program
STRIP = 4  # pixels of a row per thread of the median


@triton.jit
def _cubic(t):
    """Keys cubic (a = -0.75) weights of the taps at -1, 0, 1, 2 for fractions t in [0, 1), as in ops._cubic_weights."""
    t2 = t * t
    t3 = t2 * t
    w0 = (-0.75 * t3 + 1.5 * t2) - 0.75 * t
    w1 = (1.25 * t3 - 2.25 * t2) + 1.0
    w2 = (-1.25 * t3 + 1.5 * t2) + 0.75 * t
    w3 = 0.75 * t3 - 0.75 * t2
    return w0, w1, w2, w3


@triton.jit
def _tap_row(src, iy, ix, H: tl.constexpr, W: tl.constexpr, cx0, cx1, cx2, cx3, m):
    """One row of 4 taps at row ``iy`` (0 outside the image), weighted by cx in OpenCV's order."""
    my = m & (iy >= 0) & (iy < H)
    p = src + iy * W
    v0 = tl.load(p + ix, mask=my & (ix >= 0) & (ix < W), other=0.0)
    v1 = tl.load(p + ix + 1, mask=my & (ix + 1 >= 0) & (ix + 1 < W), other=0.0)
    v2 = tl.load(p + ix + 2, mask=my & (ix + 2 >= 0) & (ix + 2 < W), other=0.0)
    v3 = tl.load(p + ix + 3, mask=my & (ix + 3 >= 0) & (ix + 3 < W), other=0.0)
    return ((v0 * cx0 + v1 * cx1) + v2 * cx2) + v3 * cx3


@triton.jit
def _remap(src, iy, ix, H: tl.constexpr, W: tl.constexpr, cx0, cx1, cx2, cx3, cy0, cy1, cy2, cy3, m):
    """The cubic sample of one channel: four rows of taps, weighted by cy in OpenCV's order."""
    total = _tap_row(src, iy, ix, H, W, cx0, cx1, cx2, cx3, m) * cy0
    total = total + _tap_row(src, iy + 1, ix, H, W, cx0, cx1, cx2, cx3, m) * cy1
    total = total + _tap_row(src, iy + 2, ix, H, W, cx0, cx1, cx2, cx3, m) * cy2
    return total + _tap_row(src, iy + 3, ix, H, W, cx0, cx1, cx2, cx3, m) * cy3


@triton.jit
def _warp_kernel(src_ptr, i0_ptr, state_ptr, const_ptr, pairs_ptr, par_ptr, H: tl.constexpr, W: tl.constexpr,
                 P: tl.constexpr, BLOCK: tl.constexpr, FLT_EPS: tl.constexpr):
    """A listed pair's warp constants: I1 and its gradients (``src`` ``(N, 3, H, W)``) sampled at the flow (cubic, 0
    outside), then I1wx, I1wy, rho_c = ((I1w - I1wx u1) - I1wy u2) - I0 and grad_safe (|grad I1w|^2, +inf where it is
    <= FLT_EPSILON) into the workspace (padding columns: 0, 0, 0, +inf)."""
    # grid: (pixel blocks of a pitched plane, listed pairs)
    HP: tl.constexpr = H * P
    pair = tl.load(pairs_ptr + tl.program_id(1))
    if pair >= 0:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        y = offs // P
        x = offs % P
        inside = offs < HP
        m = inside & (x < W)
        u_in = state_ptr + pair.to(tl.int64) * (12 * HP) + tl.load(par_ptr + 2 * pair) * (6 * HP)
        u1 = tl.load(u_in + offs, mask=m, other=0.0)
        u2 = tl.load(u_in + HP + offs, mask=m, other=0.0)
        lim = 4194304.0  # 2^22: far outside any image, keeps the int conversion defined for wild flows
        fx = tl.minimum(tl.maximum(x.to(tl.float32) + u1, -lim), lim)  # buildFlowMap: x + u1
        fy = tl.minimum(tl.maximum(y.to(tl.float32) + u2, -lim), lim)
        x0 = tl.floor(fx)
        y0 = tl.floor(fy)
        cx0, cx1, cx2, cx3 = _cubic(fx - x0)
        cy0, cy1, cy2, cy3 = _cubic(fy - y0)
        ix = x0.to(tl.int32) - 1  # first tap
        iy = y0.to(tl.int32) - 1
        src = src_ptr + pair.to(tl.int64) * (3 * H * W)
        I1w = _remap(src, iy, ix, H, W, cx0, cx1, cx2, cx3, cy0, cy1, cy2, cy3, m)
        I1wx = _remap(src + H * W, iy, ix, H, W, cx0, cx1, cx2, cx3, cy0, cy1, cy2, cy3, m)
        I1wy = _remap(src + 2 * H * W, iy, ix, H, W, cx0, cx1, cx2, cx3, cy0, cy1, cy2, cy3, m)
        I0 = tl.load(i0_ptr + pair.to(tl.int64) * (H * W) + y * W + x, mask=m, other=0.0)
        grad = I1wx * I1wx + I1wy * I1wy
        c_out = const_ptr + pair.to(tl.int64) * (4 * HP)
        tl.store(c_out + offs, I1wx, mask=inside)
        tl.store(c_out + HP + offs, I1wy, mask=inside)
        tl.store(c_out + 2 * HP + offs, ((I1w - I1wx * u1) - I1wy * u2) - I0, mask=inside)
        tl.store(c_out + 3 * HP + offs, tl.where(grad > FLT_EPS, grad, float("inf")), mask=inside)


@triton.jit
def _compare(w, i: tl.constexpr, j: tl.constexpr, need_min: tl.constexpr, need_max: tl.constexpr):
    """One comparator of a network on the wires ``w`` (a tuple): wire i gets the min, wire j the max (each only
    where a later comparator or the result needs it)."""
    lo = tl.minimum(w[i], w[j])
    hi = tl.maximum(w[i], w[j])
    if need_min:
        w = w[:i] + (lo,) + w[i + 1:]
    if need_max:
        w = w[:j] + (hi,) + w[j + 1:]
    return w


@triton.jit
def _network(w, NET: tl.constexpr):
    """Apply the comparators ``NET`` ((i, j, need_min, need_max), ...) in order."""
    for c in tl.static_range(len(NET)):
        w = _compare(w, NET[c][0], NET[c][1], NET[c][2], NET[c][3])
    return w


@triton.jit
def _median_kernel(state_ptr, pairs_ptr, par_ptr, H: tl.constexpr, W: tl.constexpr, P: tl.constexpr,
                   K: tl.constexpr, COLNET: tl.constexpr, NET: tl.constexpr, STRIP: tl.constexpr,
                   BLOCK: tl.constexpr):
    """The K x K median (replicated border) of a listed pair's u plane into the other set: each lane takes
    ``STRIP`` pixels of a row."""
    # grid: (strip blocks, listed pairs, flow components)
    HP: tl.constexpr = H * P
    SX: tl.constexpr = (W + STRIP - 1) // STRIP  # strips per row
    pair = tl.load(pairs_ptr + tl.program_id(1))
    if pair >= 0:
        s = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = s < H * SX
        y = s // SX
        x0 = (s % SX) * STRIP
        pu = tl.load(par_ptr + 2 * pair)
        base = state_ptr + pair.to(tl.int64) * (12 * HP) + tl.program_id(2) * HP
        src = base + pu * (6 * HP)
        dst = base + (1 - pu) * (6 * HP)
        cols = ()
        for c in tl.static_range(STRIP + K - 1):  # every column of the strip's windows, sorted once
            xx = tl.minimum(tl.maximum(x0 + (c - K // 2), 0), W - 1)
            col = ()
            for i in tl.static_range(K):
                yy = tl.minimum(tl.maximum(y + (i - K // 2), 0), H - 1)
                col = col + (tl.load(src + yy * P + xx, mask=m),)
            cols = cols + (_network(col, COLNET),)
        for p in tl.static_range(STRIP):
            wires = ()
            for c in tl.static_range(K):
                wires = wires + cols[p + c]
            med = _network(wires, NET)[(K * K) // 2]
            tl.store(dst + y * P + x0 + p, med, mask=m & (x0 + p < W))


# ----------------------------------------------------------------------------------------------------------------
# launchers


def warp_launch(level, src, I0, m: int):
    """``(kernel, grid, args, kwargs)`` of the warp constants of the first ``m`` listed pairs of ``level``, from
    ``src`` = (I1, I1x, I1y) ``(n, 3, h, w)`` and ``I0`` ``(n, h, w)``."""
    ws = level.ws
    block = program_block(level.h * level.pitch, WARP_BLOCK)
    grid = (triton.cdiv(level.h * level.pitch, block), m)
    args = (src, I0, level.state, level.consts, ws.pairs, ws.parity)
    kwargs = {"H": level.h, "W": level.w, "P": level.pitch, "BLOCK": block, "FLT_EPS": _FLT_EPSILON,
              "enable_fp_fusion": False}
    return _warp_kernel, grid, args, kwargs


def median_networks(ksize: int) -> tuple[tuple, tuple]:
    """The reference's column network and pruned selection network for ``ksize`` (3 or 5), as constexpr tuples."""
    col_net, net = _median_network(ksize)
    return tuple((i, j, True, True) for i, j in col_net), tuple(tuple(c) for c in net)


def median_launch(level, m: int, ksize: int):
    """``(kernel, grid, args, kwargs)`` of the ``ksize`` median of u1 and u2 of the first ``m`` listed pairs."""
    ws = level.ws
    col_net, net = median_networks(ksize)
    strips = level.h * triton.cdiv(level.w, STRIP)
    block = program_block(strips, MEDIAN_STRIPS)
    grid = (triton.cdiv(strips, block), m, 2)
    kwargs = {"H": level.h, "W": level.w, "P": level.pitch, "K": ksize, "COLNET": col_net, "NET": net,
              "STRIP": STRIP, "BLOCK": block}
    return _median_kernel, grid, (level.state, ws.pairs, ws.parity), kwargs
