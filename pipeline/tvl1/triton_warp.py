"""Triton kernels for the once-per-warp and once-per-outer-iteration steps of TV-L1: the cubic remap of I1 and its
gradients (OpenCV 5's ``cv::remap(INTER_CUBIC, BORDER_CONSTANT)``) and the median filter of the flow
(``cv::medianBlur`` 3x3 / 5x5 on float32, replicated border).

References (plain PyTorch, in :mod:`.ops`): :func:`~actrec.pipeline.tvl1.ops.remap_cubic` and
:func:`~actrec.pipeline.tvl1.ops.median_blur`. The remap kernel evaluates the same Keys weights with the same
float32 operations in the same order (FMA contraction off), so it is bit-identical to the reference; it reads
the 16 taps directly with masked loads instead of gathering from a zero-padded copy, so it needs no index
tensors at all. The median kernel sorts each window with a bitonic network instead of the reference's pruned
selection network; the median of the same values is the same value (an exact selection either way).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from actrec.errors import InputError
from actrec.pipeline.tvl1.triton_step import _interpreting

REMAP_BLOCK = 256  # output pixels per program
MEDIAN_BLOCK = 128  # output pixels per program


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
def _tap_row(src_ptr, row_base, iy, ix, H, W, cx0, cx1, cx2, cx3, m):
    """One row of 4 taps at row ``iy`` (0 outside the image), weighted by cx in OpenCV's order."""
    my = m & (iy >= 0) & (iy < H)
    p = src_ptr + row_base + iy.to(tl.int64) * W
    v0 = tl.load(p + ix, mask=my & (ix >= 0) & (ix < W), other=0.0)
    v1 = tl.load(p + ix + 1, mask=my & (ix + 1 >= 0) & (ix + 1 < W), other=0.0)
    v2 = tl.load(p + ix + 2, mask=my & (ix + 2 >= 0) & (ix + 2 < W), other=0.0)
    v3 = tl.load(p + ix + 3, mask=my & (ix + 3 >= 0) & (ix + 3 < W), other=0.0)
    return ((v0 * cx0 + v1 * cx1) + v2 * cx2) + v3 * cx3


@triton.jit
def _remap_kernel(src_ptr, mx_ptr, my_ptr, out_ptr, H, W, C: tl.constexpr, BLOCK: tl.constexpr):
    """C channels of one pair sampled at the maps: out(y, x) = src(my(y, x), mx(y, x)), cubic, 0 outside."""
    # grid: (pairs, pixel blocks)
    pid_n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    hw = H * W
    m = offs < hw
    map_base = pid_n.to(tl.int64) * hw
    lim = 4194304.0  # 2^22: far outside any image, keeps the int conversion defined for wild flows
    fx = tl.minimum(tl.maximum(tl.load(mx_ptr + map_base + offs, mask=m, other=0.0), -lim), lim)
    fy = tl.minimum(tl.maximum(tl.load(my_ptr + map_base + offs, mask=m, other=0.0), -lim), lim)
    x0 = tl.floor(fx)
    y0 = tl.floor(fy)
    cx0, cx1, cx2, cx3 = _cubic(fx - x0)
    cy0, cy1, cy2, cy3 = _cubic(fy - y0)
    ix = x0.to(tl.int32) - 1  # first tap
    iy = y0.to(tl.int32) - 1
    for c in tl.static_range(C):
        base = (pid_n.to(tl.int64) * C + c) * hw
        total = _tap_row(src_ptr, base, iy, ix, H, W, cx0, cx1, cx2, cx3, m) * cy0
        total = total + _tap_row(src_ptr, base, iy + 1, ix, H, W, cx0, cx1, cx2, cx3, m) * cy1
        total = total + _tap_row(src_ptr, base, iy + 2, ix, H, W, cx0, cx1, cx2, cx3, m) * cy2
        total = total + _tap_row(src_ptr, base, iy + 3, ix, H, W, cx0, cx1, cx2, cx3, m) * cy3
        tl.store(out_ptr + base + offs, total, mask=m)


@triton.jit
def _sort_rows(v, B: tl.constexpr, WIN: tl.constexpr, LOG: tl.constexpr):
    """Sort each row of ``v`` ``[B, WIN]`` (WIN = 2^LOG) ascending with Batcher's bitonic network: at each stage
    the partners ``d`` apart are split off as a last axis of 2, compared and joined back. (``tl.sort`` does the
    same, but the interpreter runs it element by element, which makes the CPU tests impractical.)"""
    for kk in tl.static_range(1, LOG + 1):  # merge blocks of 2^kk
        for dd in tl.static_range(kk - 1, -1, -1):  # partners 2^dd apart
            G: tl.constexpr = WIN >> (dd + 1)
            D: tl.constexpr = 1 << dd
            a, b = tl.split(tl.permute(tl.reshape(v, [B, G, 2, D]), (0, 1, 3, 2)))
            asc = ((tl.arange(0, G)[None, :, None] * (2 * D)) & (1 << kk)) == 0  # direction of this block
            lo = tl.minimum(a, b)
            hi = tl.maximum(a, b)
            pair = tl.join(tl.where(asc, lo, hi), tl.where(asc, hi, lo))
            v = tl.reshape(tl.permute(pair, (0, 1, 3, 2)), [B, WIN])
    return v


@triton.jit
def _median_kernel(u_ptr, out_ptr, H, W, K: tl.constexpr, WIN: tl.constexpr, LOG: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Median of the K x K window (replicated border) around each pixel of one pair's plane."""
    # grid: (pairs, pixel blocks)
    pid_n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    hw = H * W
    m = offs < hw
    y = (offs // W)[:, None]
    x = (offs % W)[:, None]
    j = tl.arange(0, WIN)[None, :]  # window slot; slots >= K*K are padding (+inf, sorted last)
    yy = tl.minimum(tl.maximum(y + j // K - K // 2, 0), H - 1)
    xx = tl.minimum(tl.maximum(x + j % K - K // 2, 0), W - 1)
    base = pid_n.to(tl.int64) * hw
    v = tl.load(u_ptr + base + yy * W + xx, mask=m[:, None] & (j < K * K), other=float("inf"))
    s = _sort_rows(v, BLOCK, WIN, LOG)
    med = tl.max(tl.where(j == (K * K) // 2, s, -float("inf")), axis=1)
    tl.store(out_ptr + base + offs, med, mask=m)


# ----------------------------------------------------------------------------------------------------------------
# launchers


def _pixels_per_program(hw: int, gpu_block: int) -> int:
    """``gpu_block`` on the GPU; under the interpreter, where each program costs a Python call, one program per
    small image (up to 4096 pixels)."""
    return min(triton.next_power_of_2(hw), 4096) if _interpreting() else gpu_block


def remap_cubic_triton(src: torch.Tensor, map_x: torch.Tensor, map_y: torch.Tensor) -> torch.Tensor:
    """:func:`~actrec.pipeline.tvl1.ops.remap_cubic` in one kernel: ``src`` float32 ``(N, C, H, W)`` sampled at
    the absolute source coordinates ``map_x``/``map_y`` ``(N, H', W')``, OpenCV's cubic, 0 outside."""
    n, c, h, w = src.shape
    oh, ow = map_x.shape[-2:]
    if (oh, ow) != (h, w):
        raise InputError(f"the Triton remap keeps the size: maps {(oh, ow)} for a {(h, w)} image")
    out = torch.empty_like(src)
    block = _pixels_per_program(h * w, REMAP_BLOCK)
    grid = (n, triton.cdiv(h * w, block))
    _remap_kernel[grid](src.contiguous(), map_x.expand(n, h, w).contiguous(), map_y.expand(n, h, w).contiguous(),
                        out, h, w, C=c, BLOCK=block, enable_fp_fusion=False)
    return out


def median_blur_triton(u: torch.Tensor, ksize: int, *_network) -> torch.Tensor:
    """``cv::medianBlur(u, ksize)`` (3 or 5) of float32 ``(N, H, W)``; extra arguments (the PyTorch version's
    comparator network) are accepted and unused, so the kernel sets share one call signature."""
    n, h, w = u.shape
    out = torch.empty_like(u)
    block = _pixels_per_program(h * w, MEDIAN_BLOCK)
    grid = (n, triton.cdiv(h * w, block))
    win = triton.next_power_of_2(ksize * ksize)
    _median_kernel[grid](u.contiguous(), out, h, w, K=ksize, WIN=win, LOG=win.bit_length() - 1, BLOCK=block)
    return out
