"""The fused TV-L1 primal-dual iteration in Triton: one kernel pass per iteration for the listed pairs of a batch.

One program computes a tile of one pair: thresholding (v), the divergence of p, the primal update u, the forward
gradient of the new u, the dual update p, and the tile's share of the pair's error ``sum |u_new - u|^2``. The
forward gradient needs the new u one pixel right and one pixel down, which belong to the next tiles. The program
computes the new u once for its tile and once more for the row below and the column right of it (its halo, one
value per thread), stores both into the output buffer, waits for its threads at a barrier, and reads the
neighbours back (L1/L2): the primal is evaluated 1 + (BH + BW) / (BH BW) times per pixel, where the earlier kernel
evaluated it 3 times. A halo value it stores belongs to the neighbouring tile, whose program stores the same bits
(the same float operations on the same inputs), so the order of the two stores does not matter.

The state lives in the batch's :class:`~.workspace.Workspace`: per pair two sets of the six planes (u1, u2, p11,
p12, p21, p22) with a row pitch of a multiple of 4 floats (16-byte aligned rows: the tile's loads and stores are
128-bit), and per pair the set that holds its u and its p (``parity``). An iteration reads one set and writes the
other; the per-pair error kernel flips the pair's parity after it, so a pair that stopped is neither copied nor
touched again (no frozen-pair copies, no compaction copies: the batch is compacted by listing the pairs still
running, ``pairs``). The median filter writes u into the other set, which the first iteration after it reads
(``u_shift``). The grid is (tiles of a pair, listed pairs), so the tiles that share halos are consecutive
programs.

The PyTorch reference is :func:`actrec.pipeline.tvl1.iteration._step2` (and ``_block2``): the kernel performs the
same float32 operations in the same order, compiled with ``enable_fp_fusion=False`` so that no ``a * b + c`` is
contracted into an FMA (OpenCV's x86 build does not contract them either), IEEE division (``div_rn``), and a
correctly rounded hypot (computed in float64: the squares are exact there, the sum is rounded once, the square
root is IEEE, then one rounding to float32). Its outputs are bit-identical to the reference (tested under
``TRITON_INTERPRET=1``); the per-pair error sum is float64, summed per tile and then per pair in a fixed order
that depends only on the image size and the tile, never on the batch, so a pair's stopping decision never depends
on its batch mates. It can differ from PyTorch's own float64 sum in the last bits (another summation order), which
changes a stop only if the error lands within ~1e-12 (relative) of the threshold.

Memory traffic per pixel and iteration: 10 float32 reads (u1, u2, p11, p12, p21, p22, I1wx, I1wy, rho_c,
grad_safe) and 6 float32 writes, 64 bytes; the neighbours, the halo and the read-back are served by the caches.
The image size is a compile-time constant (one compiled kernel per pyramid level): plane offsets become
immediates and the masks constants; the tile is worked through 8 rows at a time (``SUB``), so that fewer values
are live at once, and the dual update reads the new u back from the cache rather than keep it across the barrier:
100-105 registers and no stack at every level under Triton 3.6 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import triton
import triton.language as tl

from actrec.pipeline.tvl1.step_config import StepConfig

SUM_BLOCK = 128  # partial sums per step of the per-pair reduction


@triton.jit
def _hypot(a, b):
    """Correctly rounded float32 hypot: exact float64 squares, one rounded sum, IEEE square root, one rounding."""
    a64 = a.to(tl.float64)
    b64 = b.to(tl.float64)
    return tl.sqrt(a64 * a64 + b64 * b64).to(tl.float32)


@triton.jit
def _primal(u_in, p_in, c_in, off, c_off, m, ml, mu, first_col, ROW: tl.constexpr, PL: tl.constexpr,
            CPL: tl.constexpr, l_t, theta):
    """The new (u1, u2) at offsets ``off`` of the u1 and p11 planes ``u_in``/``p_in`` (the others ``PL`` floats
    apart, rows ``ROW`` floats apart) and ``c_off`` of the I1wx plane ``c_in`` (the others ``CPL`` apart): OpenCV's
    estimateV, divergence, u = v + theta div p; and the old u. ``m`` masks the pixels computed (their masked-off
    values are never used), ``ml``/``mu`` those whose left/upper neighbour is inside the image (p = 0 outside),
    ``first_col`` the image's first column."""
    u1 = tl.load(u_in + off, mask=m)
    u2 = tl.load(u_in + PL + off, mask=m)
    wx = tl.load(c_in + c_off, mask=m)
    wy = tl.load(c_in + CPL + c_off, mask=m)
    rc = tl.load(c_in + 2 * CPL + c_off, mask=m)
    gs = tl.load(c_in + 3 * CPL + c_off, mask=m, other=1.0)
    rho = rc + (wx * u1 + wy * u2)
    fi = tl.minimum(tl.maximum(tl.div_rn(-rho, gs), -l_t), l_t)
    p11 = tl.load(p_in + off, mask=m)
    p12 = tl.load(p_in + PL + off, mask=m)
    p11l = tl.load(p_in + off - 1, mask=ml, other=0.0)
    p12u = tl.load(p_in + PL + off - ROW, mask=mu, other=0.0)
    # OpenCV's first column adds in the order (v1 + v2) - v2[y-1]; elsewhere (v1 - v1[x-1]) + (v2 - v2[y-1])
    div1 = tl.where(first_col, (p11 + p12) - p12u, (p11 - p11l) + (p12 - p12u))
    p21 = tl.load(p_in + 2 * PL + off, mask=m)
    p22 = tl.load(p_in + 3 * PL + off, mask=m)
    p21l = tl.load(p_in + 2 * PL + off - 1, mask=ml, other=0.0)
    p22u = tl.load(p_in + 3 * PL + off - ROW, mask=mu, other=0.0)
    div2 = tl.where(first_col, (p21 + p22) - p22u, (p21 - p21l) + (p22 - p22u))
    n1 = (u1 + fi * wx) + theta * div1
    n2 = (u2 + fi * wy) + theta * div2
    return n1, n2, u1, u2


@triton.jit
def _dual(p_in, p_out, u_new, off, m, mr, md, ROW: tl.constexpr, PL: tl.constexpr, taut):
    """One flow component's dual update (estimateDualVariables): the forward gradient of the new u (0 on the last
    column / row: ``mr``/``md`` mask the pixels whose right/lower neighbour is inside), p = (p + taut grad u) /
    (1 + taut |grad u|); ``u_new``: the component's new plane, read back at the pixel (from the cache: cheaper than
    keeping it in registers across the barrier) and at its right and lower neighbours; the component's two p planes
    are ``PL`` floats apart, rows ``ROW``."""
    n = tl.load(u_new + off, mask=m)
    r = tl.load(u_new + off + 1, mask=mr)
    d = tl.load(u_new + off + ROW, mask=md)
    ux = tl.where(mr, r - n, 0.0)
    uy = tl.where(md, d - n, 0.0)
    ng = 1.0 + taut * _hypot(ux, uy)
    pa = tl.load(p_in + off, mask=m)
    pb = tl.load(p_in + PL + off, mask=m)
    tl.store(p_out + off, tl.div_rn(pa + taut * ux, ng), mask=m)
    tl.store(p_out + PL + off, tl.div_rn(pb + taut * uy, ng), mask=m)


@triton.jit
def _step_kernel(state_ptr, const_ptr, pairs_ptr, act_ptr, par_ptr, part_ptr, l_t, theta, taut, u_shift,
                 H: tl.constexpr, W: tl.constexpr, P: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                 SUB: tl.constexpr, HALO: tl.constexpr):
    """One primal-dual iteration of one tile of a listed, active pair (``pairs`` entries < 0 pad the list)."""
    # grid: (tiles of a pair, listed pairs)
    TX: tl.constexpr = (W + BW - 1) // BW
    T: tl.constexpr = TX * ((H + BH - 1) // BH)
    HP: tl.constexpr = H * P
    tile = tl.program_id(0)
    pair = tl.load(pairs_ptr + tl.program_id(1))
    if pair >= 0:
        if tl.load(act_ptr + pair) != 0:
            pu = tl.load(par_ptr + 2 * pair) ^ u_shift  # the set holding u (the median's output after a median)
            pp = tl.load(par_ptr + 2 * pair + 1)  # the set holding p
            base = state_ptr + pair.to(tl.int64) * (12 * HP)
            u_in = base + pu * (6 * HP)
            u_out = base + (1 - pu) * (6 * HP)
            p_in = base + pp * (6 * HP) + 2 * HP
            p_out = base + (1 - pp) * (6 * HP) + 2 * HP
            c_in = const_ptr + pair.to(tl.int64) * (4 * HP)
            y0 = (tile // TX) * BH
            x0 = (tile % TX) * BW
            # the halo first: the row below the tile (first BW lanes) and the column right of it (next BH lanes)
            k = tl.arange(0, HALO)
            hy = tl.where(k < BW, y0 + BH, y0 + k - BW)
            hx = tl.where(k < BW, x0 + k, x0 + BW)
            hm = (k < BW + BH) & (hy < H) & (hx < W)
            hoff = hy * P + hx
            h1, h2, _, _ = _primal(u_in, p_in, c_in, hoff, hoff, hm, hm & (hx > 0), hm & (hy > 0), hx == 0, P, HP,
                                   HP, l_t, theta)
            tl.store(u_out + hoff, h1, mask=hm)
            tl.store(u_out + HP + hoff, h2, mask=hm)
            x = x0 + tl.arange(0, BW)[None, :]
            total = tl.full([], 0.0, tl.float64)
            for s in tl.static_range(BH // SUB):  # SUB rows at a time: fewer values live at once
                y = y0 + s * SUB + tl.arange(0, SUB)[:, None]
                m = (y < H) & (x < P)  # whole 4-float vectors: the padding columns [W, P) compute harmless values
                off = y * P + x
                n1, n2, u1, u2 = _primal(u_in, p_in, c_in, off, off, m, m & (x > 0), m & (y > 0), x == 0, P, HP, HP,
                                         l_t, theta)
                tl.store(u_out + off, n1, mask=m)
                tl.store(u_out + HP + off, n2, mask=m)
                e1 = n1 - u1
                e2 = n2 - u2
                err = tl.where(m & (x < W), (e1 * e1 + e2 * e2).to(tl.float64), 0.0)
                total += tl.sum(tl.sum(err, axis=1), axis=0)
            tl.store(part_ptr + pair.to(tl.int64) * T + tile, total)
            tl.debug_barrier()  # the tile's and the halo's new u are visible to all the program's threads
            for s in tl.static_range(BH // SUB):
                y = y0 + s * SUB + tl.arange(0, SUB)[:, None]
                m = (y < H) & (x < P)
                off = y * P + x
                mr = m & (x + 1 < W)
                md = m & (y + 1 < H)
                _dual(p_in, p_out, u_out, off, m, mr, md, P, HP, taut)
                _dual(p_in + 2 * HP, p_out + 2 * HP, u_out + HP, off, m, mr, md, P, HP, taut)


@triton.jit
def _pair_error_kernel(pairs_ptr, act_ptr, par_ptr, part_ptr, err_ptr, eps, u_shift, T: tl.constexpr,
                       BLOCK: tl.constexpr):
    """Per listed pair that ran the iteration: the sum of its ``T`` tile errors in a fixed order,
    ``active = error > eps``, and its parities flipped to the set the iteration wrote (u's not after a median,
    whose output set the iteration wrote back into)."""
    # grid: (listed pairs,)
    pair = tl.load(pairs_ptr + tl.program_id(0))
    if pair >= 0:
        if tl.load(act_ptr + pair) != 0:
            acc = tl.zeros([BLOCK], dtype=tl.float64)
            for start in tl.static_range(0, T, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                acc += tl.load(part_ptr + pair.to(tl.int64) * T + offs, mask=offs < T, other=0.0)
            err = tl.sum(acc, axis=0)
            tl.store(err_ptr + pair, err)
            tl.store(act_ptr + pair, (err > eps).to(tl.int32))
            tl.store(par_ptr + 2 * pair, tl.load(par_ptr + 2 * pair) ^ (1 - u_shift))
            tl.store(par_ptr + 2 * pair + 1, 1 - tl.load(par_ptr + 2 * pair + 1))


# ----------------------------------------------------------------------------------------------------------------
# launchers


GPU_BLOCKS = [False]  # set: the GPU's program sizes under the interpreter too (the static table's traces)


def program_block(items: int, gpu_block: int) -> int:
    """Items per program of an elementwise kernel: ``gpu_block`` on the GPU; under ``TRITON_INTERPRET=1``, where
    each program costs Python calls, one program per plane (up to 2^16 items) unless :data:`GPU_BLOCKS`."""
    import os

    if os.environ.get("TRITON_INTERPRET", "0") == "1" and not GPU_BLOCKS[0]:
        return min(triton.next_power_of_2(items), 1 << 16)
    return gpu_block


def tiles(h: int, w: int, config: StepConfig) -> int:
    """Partial errors of one pair: its tiles (times the iterations of a pass, for k > 1: (bh - 2k) x (bw - 2k)
    output tiles, :mod:`.triton_block`)."""
    if config.k > 1:
        return config.k * triton.cdiv(h, config.bh - 2 * config.k) * triton.cdiv(w, config.bw - 2 * config.k)
    return triton.cdiv(h, config.bh) * triton.cdiv(w, config.bw)


def step_launch(level, m: int, u_shift: int, config: StepConfig):
    """``(kernel, grid, args, kwargs)`` of one iteration of the first ``m`` listed pairs of ``level`` (a
    :class:`~.workspace.Level`)."""
    ws = level.ws
    grid = (triton.cdiv(level.h, config.bh) * triton.cdiv(level.w, config.bw), m)
    args = (level.state, level.consts, ws.pairs, ws.active, ws.parity, level.parts, level.l_t, level.theta,
            level.taut, u_shift)
    kwargs = {"H": level.h, "W": level.w, "P": level.pitch, "BH": config.bh, "BW": config.bw,
              "SUB": min(config.sub_rows, config.bh), "HALO": triton.next_power_of_2(config.bh + config.bw),
              "num_warps": config.num_warps,
              "maxnreg": config.max_registers, "enable_fp_fusion": False}
    return _step_kernel, grid, args, kwargs


def pair_error_launch(level, m: int, u_shift: int, config: StepConfig):
    """``(kernel, grid, args, kwargs)`` of the per-pair error sum after one iteration of ``step_launch``."""
    ws = level.ws
    args = (ws.pairs, ws.active, ws.parity, level.parts, ws.err, level.eps, u_shift)
    kwargs = {"T": tiles(level.h, level.w, config), "BLOCK": SUM_BLOCK, "enable_fp_fusion": False}
    return _pair_error_kernel, (m,), args, kwargs


def launch(spec) -> None:
    """Run a ``(kernel, grid, args, kwargs)`` launch."""
    fn, grid, args, kwargs = spec
    fn[grid](*args, **kwargs)
