"""The fused TV-L1 primal-dual iteration in Triton: one kernel pass per iteration for a batch of pairs.

One program computes a tile of one pair: thresholding (v), the divergence of p, the primal update u, the forward
gradient of the new u, the dual update p, and the tile's share of the pair's error ``sum |u_new - u|^2``. The
forward gradient needs the new u one pixel right and one pixel down, which belong to neighbouring tiles: the
kernel recomputes them from the old state (halo recomputation), so one pass reads the old state and writes the
new one (double buffered), with no synchronisation between programs.

The PyTorch reference is :func:`actrec.pipeline.tvl1.iteration._step2` (and ``_block2``): the kernel performs the
same float32 operations in the same order, compiled with ``enable_fp_fusion=False`` so that no ``a * b + c`` is
contracted into an FMA (OpenCV's x86 build does not contract them either), IEEE division (``div_rn``), and a
correctly rounded hypot (computed in float64: the squares are exact there, the sum is rounded once, the square
root is IEEE, then one rounding to float32). Its outputs are bit-identical to the reference (tested under
``TRITON_INTERPRET=1``); the per-pair error sum is float64, summed per tile and then per pair in a fixed order
that depends only on the image size, never on the batch, so a pair's stopping decision never depends on its
batch mates. It can differ from PyTorch's own float64 sum in the last bits (another summation order), which
changes a stop only if the error lands within ~1e-12 (relative) of the threshold.

Memory traffic per pixel and iteration: 10 float32 reads (u1, u2, p11, p12, p21, p22, I1wx, I1wy, rho_c,
grad_safe) and 6 float32 writes: 64 bytes (see :mod:`.floor`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_H = 16  # tile rows (GPU); the interpreter uses one tile per small image
BLOCK_W = 64  # tile columns
SUM_BLOCK = 128  # partial sums per step of the per-pair reduction


@triton.jit
def _primal(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, wx_ptr, wy_ptr, rc_ptr, gs_ptr,
            base, y, x, H, W, l_t, theta, m):
    """The new (u1, u2) at pixels (y, x) of the pair starting at ``base`` (OpenCV's estimateV, divergence,
    u = v + theta div p), with the old u; ``m`` masks pixels inside the image."""
    off = base + y * W + x
    u1 = tl.load(u1_ptr + off, mask=m, other=0.0)
    u2 = tl.load(u2_ptr + off, mask=m, other=0.0)
    wx = tl.load(wx_ptr + off, mask=m, other=0.0)
    wy = tl.load(wy_ptr + off, mask=m, other=0.0)
    rc = tl.load(rc_ptr + off, mask=m, other=0.0)
    gs = tl.load(gs_ptr + off, mask=m, other=1.0)
    rho = rc + (wx * u1 + wy * u2)
    fi = tl.minimum(tl.maximum(tl.div_rn(-rho, gs), -l_t), l_t)
    ml = m & (x > 0)  # left neighbour inside (p = 0 outside)
    mu = m & (y > 0)  # upper neighbour inside
    first_col = x == 0
    p11 = tl.load(p11_ptr + off, mask=m, other=0.0)
    p12 = tl.load(p12_ptr + off, mask=m, other=0.0)
    p11l = tl.load(p11_ptr + off - 1, mask=ml, other=0.0)
    p12u = tl.load(p12_ptr + off - W, mask=mu, other=0.0)
    # OpenCV's first column adds in the order (v1 + v2) - v2[y-1]; elsewhere (v1 - v1[x-1]) + (v2 - v2[y-1])
    div1 = tl.where(first_col, (p11 + p12) - p12u, (p11 - p11l) + (p12 - p12u))
    p21 = tl.load(p21_ptr + off, mask=m, other=0.0)
    p22 = tl.load(p22_ptr + off, mask=m, other=0.0)
    p21l = tl.load(p21_ptr + off - 1, mask=ml, other=0.0)
    p22u = tl.load(p22_ptr + off - W, mask=mu, other=0.0)
    div2 = tl.where(first_col, (p21 + p22) - p22u, (p21 - p21l) + (p22 - p22u))
    n1 = (u1 + fi * wx) + theta * div1
    n2 = (u2 + fi * wy) + theta * div2
    return n1, n2, u1, u2, p11, p12, p21, p22


@triton.jit
def _hypot(a, b):
    """Correctly rounded float32 hypot: exact float64 squares, one rounded sum, IEEE square root, one rounding."""
    a64 = a.to(tl.float64)
    b64 = b.to(tl.float64)
    return tl.sqrt(a64 * a64 + b64 * b64).to(tl.float32)


@triton.jit
def _copy_state(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, o1_ptr, o2_ptr, q11_ptr, q12_ptr, q21_ptr,
                q22_ptr, off, m):
    """A frozen pair's tile, copied from the old state to the new buffers."""
    tl.store(o1_ptr + off, tl.load(u1_ptr + off, mask=m), mask=m)
    tl.store(o2_ptr + off, tl.load(u2_ptr + off, mask=m), mask=m)
    tl.store(q11_ptr + off, tl.load(p11_ptr + off, mask=m), mask=m)
    tl.store(q12_ptr + off, tl.load(p12_ptr + off, mask=m), mask=m)
    tl.store(q21_ptr + off, tl.load(p21_ptr + off, mask=m), mask=m)
    tl.store(q22_ptr + off, tl.load(p22_ptr + off, mask=m), mask=m)


@triton.jit
def _step_kernel(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, wx_ptr, wy_ptr, rc_ptr, gs_ptr,
                 o1_ptr, o2_ptr, q11_ptr, q12_ptr, q21_ptr, q22_ptr, act_ptr, frz_ptr, part_ptr,
                 H, W, l_t, theta, taut, BH: tl.constexpr, BW: tl.constexpr):
    """One primal-dual iteration of one tile. A frozen pair (``act`` false) copies its state unchanged for its
    first two iterations frozen (``frz`` counts them), after which both buffers of the double buffer hold it and
    the pair costs no memory traffic at all."""
    # grid: (pairs, row tiles, column tiles)
    pid_n = tl.program_id(0)
    pid_y = tl.program_id(1)
    pid_x = tl.program_id(2)
    n_tiles = tl.num_programs(1) * tl.num_programs(2)
    tile = pid_y * tl.num_programs(2) + pid_x
    y = pid_y * BH + tl.arange(0, BH)[:, None]
    x = pid_x * BW + tl.arange(0, BW)[None, :]
    m = (y < H) & (x < W)
    base = pid_n.to(tl.int64) * H * W
    off = base + y * W + x
    active = tl.load(act_ptr + pid_n)
    if active:
        n1, n2, u1, u2, p11, p12, p21, p22 = _primal(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, wx_ptr,
                                                     wy_ptr, rc_ptr, gs_ptr, base, y, x, H, W, l_t, theta, m)
        mr = m & (x + 1 < W)
        r1, r2, _, _, _, _, _, _ = _primal(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, wx_ptr, wy_ptr,
                                           rc_ptr, gs_ptr, base, y, x + 1, H, W, l_t, theta, mr)
        md = m & (y + 1 < H)
        d1, d2, _, _, _, _, _, _ = _primal(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, wx_ptr, wy_ptr,
                                           rc_ptr, gs_ptr, base, y + 1, x, H, W, l_t, theta, md)
        e1 = n1 - u1
        e2 = n2 - u2
        err = tl.where(m, (e1 * e1 + e2 * e2).to(tl.float64), 0.0)
        tl.store(part_ptr + pid_n.to(tl.int64) * n_tiles + tile, tl.sum(tl.sum(err, axis=1), axis=0))
        # forward gradients of the new u: 0 on the last column / row
        ux1 = tl.where(mr, r1 - n1, 0.0)
        uy1 = tl.where(md, d1 - n1, 0.0)
        ux2 = tl.where(mr, r2 - n2, 0.0)
        uy2 = tl.where(md, d2 - n2, 0.0)
        ng1 = 1.0 + taut * _hypot(ux1, uy1)
        ng2 = 1.0 + taut * _hypot(ux2, uy2)
        tl.store(o1_ptr + off, n1, mask=m)
        tl.store(o2_ptr + off, n2, mask=m)
        tl.store(q11_ptr + off, tl.div_rn(p11 + taut * ux1, ng1), mask=m)
        tl.store(q12_ptr + off, tl.div_rn(p12 + taut * uy1, ng1), mask=m)
        tl.store(q21_ptr + off, tl.div_rn(p21 + taut * ux2, ng2), mask=m)
        tl.store(q22_ptr + off, tl.div_rn(p22 + taut * uy2, ng2), mask=m)
    else:
        tl.store(part_ptr + pid_n.to(tl.int64) * n_tiles + tile, 0.0)
        if tl.load(frz_ptr + pid_n) < 2:
            _copy_state(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, o1_ptr, o2_ptr, q11_ptr, q12_ptr,
                        q21_ptr, q22_ptr, off, m)


@triton.jit
def _pair_error_kernel(part_ptr, act_ptr, frz_ptr, err_ptr, eps_ptr, T, BLOCK: tl.constexpr):
    """Per pair: the sum of its ``T`` tile errors in a fixed order, ``active &= error > eps``, and one more
    iteration frozen for a pair that was frozen during this one."""
    # grid: (pairs,)
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, T, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + pid.to(tl.int64) * T + offs, mask=offs < T, other=0.0)
    err = tl.sum(acc, axis=0)
    tl.store(err_ptr + pid, err)
    active = tl.load(act_ptr + pid)
    tl.store(act_ptr + pid, active & (err > tl.load(eps_ptr)))
    tl.store(frz_ptr + pid, tl.load(frz_ptr + pid) + (active == 0).to(tl.int32))


# ----------------------------------------------------------------------------------------------------------------
# launchers


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _tiles(h: int, w: int) -> tuple[int, int]:
    """Tile (rows, columns): fixed on the GPU; under the interpreter one tile covers a small image (each program
    costs a Python call there). The error sum's order depends on these and on (h, w) only, never on the batch."""
    if _interpreting():
        return triton.next_power_of_2(h), triton.next_power_of_2(w)
    return BLOCK_H, BLOCK_W


def fused_step(state: tuple[torch.Tensor, ...], out: tuple[torch.Tensor, ...], I1wx: torch.Tensor,
               I1wy: torch.Tensor, rho_c: torch.Tensor, grad_safe: torch.Tensor, active: torch.Tensor,
               frozen: torch.Tensor, l_t: float, theta: float, taut: float, eps: torch.Tensor) -> torch.Tensor:
    """One iteration of ``state`` = (u1, u2, p11, p12, p21, p22), each float32 ``(N, H, W)`` contiguous, into
    ``out`` (same shapes, distinct memory). Pairs with ``active`` false ((N,) bool) are copied unchanged while
    ``frozen`` ((N,) int32, iterations frozen so far, updated in place) is below 2, and left alone after, when
    ``out`` already holds their state (double buffering: the caller alternates two buffer sets from the start).
    ``active`` is updated in place to ``active & (error > eps)``. Returns the per-pair error (N,) float64 (0 for
    frozen pairs)."""
    n, h, w = state[0].shape
    bh, bw = _tiles(h, w)
    grid = (n, triton.cdiv(h, bh), triton.cdiv(w, bw))
    parts = torch.empty((n, grid[1] * grid[2]), dtype=torch.float64, device=state[0].device)
    _step_kernel[grid](*state, I1wx, I1wy, rho_c, grad_safe, *out, active, frozen, parts, h, w, l_t, theta, taut,
                       BH=bh, BW=bw, enable_fp_fusion=False)
    err = torch.empty(n, dtype=torch.float64, device=state[0].device)
    _pair_error_kernel[(n,)](parts, active, frozen, err, eps, parts.shape[1], BLOCK=SUM_BLOCK, enable_fp_fusion=False)
    return err


def block2(u1, u2, p11, p12, p21, p22, I1wx, I1wy, rho_c, grad_safe, active, l_t: float, theta: float,
           taut: float, eps: torch.Tensor, k: int):
    """``k`` fused iterations; the same contract as :func:`actrec.pipeline.tvl1.iteration._block2` (its
    reference): frozen pairs keep their state, the returned mask drops pairs whose error fell to ``<= eps``.
    Inputs are never written (the iterations alternate between two fresh sets of buffers)."""
    state = tuple(t.contiguous() for t in (u1, u2, p11, p12, p21, p22))
    consts = tuple(t.contiguous() for t in (I1wx, I1wy, rho_c, grad_safe))
    active = active.clone()
    frozen = torch.zeros(active.shape, dtype=torch.int32, device=active.device)
    eps = eps.reshape(1).to(torch.float64)
    buffers = [tuple(torch.empty_like(t) for t in state) for _ in range(min(k, 2))]
    for i in range(k):
        out = buffers[i % 2]
        fused_step(state, out, *consts, active, frozen, l_t, theta, taut, eps)
        state = out
    return (*state, active)
