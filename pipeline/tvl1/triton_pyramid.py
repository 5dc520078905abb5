"""Triton kernels for the once-per-level steps of TV-L1: the linear resize of the image pyramid and of the flow
between levels (``cv::resize(INTER_LINEAR)`` as the IPP path of OpenCV's x86-64 wheels runs it), and the centred
gradient of I1 stacked with I1 for the warp.

References (plain PyTorch, in :mod:`.ops`): :func:`~actrec.pipeline.tvl1.ops.resize_linear` (``ipp=True``) and
:func:`~actrec.pipeline.tvl1.ops.centered_gradient`. The resize takes the reference's taps and float32 weights
(``ops._linear_taps``, a few hundred numbers per level) and computes each output pixel as the reference's two
passes do, ``a + w (b - a)`` with ``b - a`` in float32 and the rest in float64, rounded once to float32 (the
product of two float32 is exact in float64, so this is the reference's ``addcmul`` exactly), horizontal first:
bit-identical, in one pass of about 10 bytes per output pixel where the reference's index_select and float64
temporaries moved about 200. The flow's resize also multiplies by 1 / scale_step and writes into the next level's
workspace planes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from actrec.pipeline.tvl1.ops import _linear_taps
from actrec.pipeline.tvl1.triton_step import program_block

BLOCK = 256  # output pixels per program


@triton.jit
def _lerp(a, b, w):
    """IPP's ``a + w (b - a)``: the difference in float32, the rest in float64 (exact product), one rounding."""
    d = (b - a).to(tl.float64)
    return (a.to(tl.float64) + w.to(tl.float64) * d).to(tl.float32)


@triton.jit
def _resize_kernel(src_ptr, out_ptr, x0_ptr, x1_ptr, wx_ptr, y0_ptr, y1_ptr, wy_ptr, factor,
                   H: tl.constexpr, W: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr,
                   OUT_PAIR: tl.constexpr, OUT_PITCH: tl.constexpr, BLOCK: tl.constexpr):
    """One image of ``src`` ``(N, H, W)`` resized to ``OH x OW`` (rows of ``OUT_PITCH`` floats, images
    ``OUT_PAIR`` floats apart), times ``factor``."""
    # grid: (pixel blocks, images)
    n = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < OH * OW
    y = offs // OW
    x = offs % OW
    cx0 = tl.load(x0_ptr + x, mask=m, other=0)
    cx1 = tl.load(x1_ptr + x, mask=m, other=0)
    wx = tl.load(wx_ptr + x, mask=m, other=0.0)
    src = src_ptr + n * (H * W)
    ra = src + tl.load(y0_ptr + y, mask=m, other=0) * W
    rb = src + tl.load(y1_ptr + y, mask=m, other=0) * W
    ta = _lerp(tl.load(ra + cx0, mask=m, other=0.0), tl.load(ra + cx1, mask=m, other=0.0), wx)
    tb = _lerp(tl.load(rb + cx0, mask=m, other=0.0), tl.load(rb + cx1, mask=m, other=0.0), wx)
    out = _lerp(ta, tb, tl.load(wy_ptr + y, mask=m, other=0.0)) * factor
    tl.store(out_ptr + n * OUT_PAIR + y * OUT_PITCH + x, out, mask=m)


@triton.jit
def _gradient_kernel(img_ptr, out_ptr, H: tl.constexpr, W: tl.constexpr, BLOCK: tl.constexpr):
    """(I1, I1x, I1y) of one image of ``img`` ``(N, H, W)`` into ``out`` ``(N, 3, H, W)``: centred differences
    halved, one-sided on the border (OpenCV TV-L1's centeredGradient)."""
    # grid: (pixel blocks, images)
    n = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < H * W
    y = offs // W
    x = offs % W
    img = img_ptr + n * (H * W)
    v = tl.load(img + offs, mask=m, other=0.0)
    right = tl.load(img + y * W + tl.minimum(x + 1, W - 1), mask=m, other=0.0)
    left = tl.load(img + y * W + tl.maximum(x - 1, 0), mask=m, other=0.0)
    down = tl.load(img + tl.minimum(y + 1, H - 1) * W + x, mask=m, other=0.0)
    up = tl.load(img + tl.maximum(y - 1, 0) * W + x, mask=m, other=0.0)
    out = out_ptr + n * (3 * H * W)
    tl.store(out + offs, v, mask=m)
    tl.store(out + H * W + offs, 0.5 * (right - left), mask=m)
    tl.store(out + 2 * H * W + offs, 0.5 * (down - up), mask=m)


# ----------------------------------------------------------------------------------------------------------------
# launchers


def resize_taps(h: int, w: int, out_hw: tuple[int, int], scale: float | None, device) -> tuple[torch.Tensor, ...]:
    """The reference's (x0, x1, wx1, y0, y1, wy1) for resizing ``h x w`` to ``out_hw`` (``scale``: as
    :func:`~actrec.pipeline.tvl1.ops.resize_linear`), int32 / float32 on ``device``."""
    oh, ow = out_hw
    sx, sy = (1.0 / scale, 1.0 / scale) if scale is not None else (1.0 / (ow / w), 1.0 / (oh / h))
    x0, x1, _, wx1 = _linear_taps(ow, w, sx, True, True)
    y0, y1, _, wy1 = _linear_taps(oh, h, sy, True, True)
    return tuple(torch.from_numpy(a.astype("int32") if a.dtype.kind == "i" else a).to(device)
                 for a in (x0, x1, wx1, y0, y1, wy1))


def resize_launch(src: torch.Tensor, out: torch.Tensor, out_hw: tuple[int, int], taps, factor: float,
                  out_pair: int, out_pitch: int):
    """``(kernel, grid, args, kwargs)`` resizing ``src`` ``(N, H, W)`` into ``out`` (images ``out_pair`` floats
    apart, rows ``out_pitch`` floats apart)."""
    n, h, w = src.shape
    oh, ow = out_hw
    block = program_block(oh * ow, BLOCK)
    kwargs = {"H": h, "W": w, "OH": oh, "OW": ow, "OUT_PAIR": out_pair, "OUT_PITCH": out_pitch, "BLOCK": block,
              "enable_fp_fusion": False}
    return _resize_kernel, (triton.cdiv(oh * ow, block), n), (src, out, *taps, factor), kwargs


def resize(src: torch.Tensor, out_hw: tuple[int, int], scale: float | None = None) -> torch.Tensor:
    """:func:`~actrec.pipeline.tvl1.ops.resize_linear` (IPP path) of ``src`` ``(N, H, W)`` in one kernel."""
    n, h, w = src.shape
    out = torch.empty((n, *out_hw), device=src.device)
    taps = resize_taps(h, w, out_hw, scale, src.device)
    fn, grid, args, kwargs = resize_launch(src.contiguous(), out, out_hw, taps, 1.0, out_hw[0] * out_hw[1],
                                           out_hw[1])
    fn[grid](*args, **kwargs)
    return out


def gradient_launch(img: torch.Tensor, out: torch.Tensor):
    """``(kernel, grid, args, kwargs)`` of (I1, I1x, I1y) of ``img`` ``(N, H, W)`` into ``out`` ``(N, 3, H, W)``."""
    n, h, w = img.shape
    block = program_block(h * w, BLOCK)
    return _gradient_kernel, (triton.cdiv(h * w, block), n), (img, out), {"H": h, "W": w, "BLOCK": block}


def gradient_stack(img: torch.Tensor) -> torch.Tensor:
    """``torch.stack([img, *centered_gradient(img)], 1)`` in one kernel."""
    out = torch.empty((img.shape[0], 3, *img.shape[1:]), device=img.device)
    fn, grid, args, kwargs = gradient_launch(img.contiguous(), out)
    fn[grid](*args, **kwargs)
    return out
