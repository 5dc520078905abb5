"""Several TV-L1 iterations per kernel pass: a tile held in an on-chip-sized scratch with a halo of k pixels.

Why: the one-pass kernel (:mod:`.triton_step`) reads and writes the whole state every iteration, 64 bytes per
pixel-iteration. A program that runs k iterations on its tile before writing it back moves those 64 bytes once per
k iterations. Every iteration shrinks the region whose values are exact by one pixel on each side (the divergence
looks left and up, the forward gradient right and down), so a program that outputs OH x OW pixels after k
iterations loads a region of (OH + 2k) x (OW + 2k) and computes all of it each iteration: the halo is computed
again by the neighbouring programs (``RH x RW`` regions, ``k = K``: (RH - 2K)(RW - 2K) / (RH RW) of the work is
kept).

How: Triton has no shared memory a kernel can address, so the region lives in a per-program scratch in global
memory (12 planes: the state twice, ping-pong), sized to stay in L1/L2: the grid is persistent (one program per
scratch slot, looping over the tiles of the listed pairs), so the scratch is reused and never reaches DRAM.
Each iteration computes the primal over the region from one scratch set into the other, waits at a barrier (the
new u of the right and lower neighbours belongs to other threads), computes the dual, and waits again; the
constants are read from the workspace (L1/L2 after the first iteration). The last iteration's output window goes
to the workspace's other set, exactly as one-pass iterations would have left it.

The stop rule stays exact: each iteration's per-tile error is recorded, and the per-pair kernel finds the first
iteration of the pass whose error fell to ``eps``. A pair that stopped inside the pass (before its last iteration)
is replayed from the pass's input (still in the set the pass read) for exactly that many iterations, by a second
launch of the same kernel that runs only such pairs; its result is the one OpenCV keeps. Bit-identical to the
reference under the interpreter (tests/test_triton_tvl1.py): the same float32 operations as the one-pass kernel,
on every pixel of the output window.
"""

from __future__ import annotations

import triton
import triton.language as tl

from actrec.pipeline.tvl1.step_config import StepConfig
from actrec.pipeline.tvl1.triton_step import SUM_BLOCK, _dual, _primal

SLOTS = 264  # persistent programs: 2 per SM of an H100/H200 (132 SMs), each with its scratch region


@triton.jit
def _region_copy(src, dst, src_off, dst_off, m, SRC_PL: tl.constexpr, DST_PL: tl.constexpr, PLANES: tl.constexpr):
    """``PLANES`` planes from ``src`` (``SRC_PL`` floats apart) to ``dst`` (``DST_PL`` apart) at the masked
    offsets."""
    for c in tl.static_range(PLANES):
        tl.store(dst + c * DST_PL + dst_off, tl.load(src + c * SRC_PL + src_off, mask=m), mask=m)


@triton.jit
def _block_kernel(state_ptr, const_ptr, scratch_ptr, pairs_ptr, act_ptr, par_ptr, count_ptr, part_ptr, items,
                  iters, l_t, theta, taut, u_shift, H: tl.constexpr, W: tl.constexpr, P: tl.constexpr,
                  RH: tl.constexpr, RW: tl.constexpr, K: tl.constexpr, REPLAY: tl.constexpr):
    """``iters`` (at most ``K``) iterations of every active listed pair (``REPLAY``: ``count[pair]`` iterations of
    the pairs with a count), tile by tile; each iteration's tile errors into ``part`` ``(N, K, T)``."""
    # grid: (scratch slots,), each looping over (listed pair, tile) items, a pair's tiles consecutively
    OH: tl.constexpr = RH - 2 * K
    OW: tl.constexpr = RW - 2 * K
    TX: tl.constexpr = (W + OW - 1) // OW
    T: tl.constexpr = TX * ((H + OH - 1) // OH)
    HP: tl.constexpr = H * P
    RS: tl.constexpr = RH * RW  # a scratch plane
    ly = tl.arange(0, RH)[:, None]
    lx = tl.arange(0, RW)[None, :]
    loc = ly * RW + lx  # a region pixel in the scratch
    rloc = ly * P + lx  # and in the workspace, from the region's corner
    window = (ly >= K) & (ly < K + OH) & (lx >= K) & (lx < K + OW)
    scratch = scratch_ptr + tl.program_id(0).to(tl.int64) * (12 * RS)
    for item in range(tl.program_id(0), items, tl.num_programs(0)):
        pair = tl.load(pairs_ptr + item // T)
        tile = item % T
        n_it = 0
        if pair >= 0:
            if REPLAY:
                n_it = tl.load(count_ptr + pair)
            elif tl.load(act_ptr + pair) != 0:
                n_it = iters
        if n_it > 0:
            y0 = (tile // TX) * OH - K  # the region's corner in the image
            x0 = (tile % TX) * OW - K
            y = y0 + ly
            x = x0 + lx
            inside = (y >= 0) & (y < H) & (x >= 0) & (x < P)
            corner = pair.to(tl.int64) * (12 * HP) + (y0 * P + x0)
            pu = tl.load(par_ptr + 2 * pair) ^ u_shift
            pp = tl.load(par_ptr + 2 * pair + 1)
            _region_copy(state_ptr + corner + pu * (6 * HP), scratch, rloc, loc, inside, HP, RS, 2)
            _region_copy(state_ptr + corner + pp * (6 * HP) + 2 * HP, scratch + 2 * RS, rloc, loc, inside, HP, RS, 4)
            c_in = const_ptr + pair.to(tl.int64) * (4 * HP) + (y0 * P + x0)
            tl.debug_barrier()
            for it in tl.static_range(K):  # unrolled: the sets' offsets are constants
                if it < n_it:
                    src = scratch + (it % 2) * (6 * RS)
                    dst = scratch + ((it + 1) % 2) * (6 * RS)
                    ml = inside & (x > 0) & (lx > 0)  # the left neighbour: inside the image and the region
                    mu = inside & (y > 0) & (ly > 0)
                    n1, n2, u1, u2 = _primal(src, src + 2 * RS, c_in, loc, rloc, inside, ml, mu, x == 0, RW, RS, HP,
                                             l_t, theta)
                    tl.store(dst + loc, n1, mask=inside)
                    tl.store(dst + RS + loc, n2, mask=inside)
                    e1 = n1 - u1
                    e2 = n2 - u2
                    err = tl.where(window & inside & (x < W), (e1 * e1 + e2 * e2).to(tl.float64), 0.0)
                    tl.store(part_ptr + (pair.to(tl.int64) * K + it) * T + tile,
                             tl.sum(tl.sum(err, axis=1), axis=0))
                    tl.debug_barrier()  # the new u of the right and lower neighbours
                    mr = inside & (x + 1 < W) & (lx + 1 < RW)
                    md = inside & (y + 1 < H) & (ly + 1 < RH)
                    _dual(src + 2 * RS, dst + 2 * RS, dst, loc, inside, mr, md, RW, RS, taut)
                    _dual(src + 4 * RS, dst + 4 * RS, dst + RS, loc, inside, mr, md, RW, RS, taut)
                    tl.debug_barrier()  # the iteration's writes before the next one reads them
            final = scratch + (n_it % 2) * (6 * RS)
            out = window & inside
            _region_copy(final, state_ptr + corner + (1 - pu) * (6 * HP), loc, rloc, out, RS, HP, 2)
            _region_copy(final + 2 * RS, state_ptr + corner + (1 - pp) * (6 * HP) + 2 * HP, loc, rloc, out, RS, HP,
                         4)
            tl.debug_barrier()  # the scratch is free for the next item


@triton.jit
def _block_error_kernel(pairs_ptr, act_ptr, par_ptr, count_ptr, part_ptr, err_ptr, eps, iters, u_shift,
                        T: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr, REPLAY: tl.constexpr):
    """Per listed pair that ran the pass: its error after each iteration (tile sums in a fixed order) and the first
    that fell to ``eps``. Stopped at the pass's last iteration, or not at all: parities flipped to the set the pass
    wrote, ``active`` cleared if it stopped. Stopped earlier: nothing kept, ``count`` = the iterations to replay.
    After the replay (``REPLAY``): parities flipped, stopped, count cleared."""
    # grid: (listed pairs,)
    pair = tl.load(pairs_ptr + tl.program_id(0))
    if pair >= 0:
        n_it = 0
        if REPLAY:
            n_it = tl.load(count_ptr + pair)
        elif tl.load(act_ptr + pair) != 0:
            n_it = iters
        if n_it > 0:
            stop = n_it  # iterations kept
            last = tl.full([], 0.0, tl.float64)
            for it in tl.static_range(K):
                if it < n_it:
                    acc = tl.zeros([BLOCK], dtype=tl.float64)
                    for start in tl.static_range(0, T, BLOCK):
                        offs = start + tl.arange(0, BLOCK)
                        acc += tl.load(part_ptr + (pair.to(tl.int64) * K + it) * T + offs, mask=offs < T,
                                       other=0.0)
                    e = tl.sum(acc, axis=0)
                    if stop == n_it:
                        last = e
                        if e <= eps:
                            stop = it + 1
            tl.store(err_ptr + pair, last)
            if stop == n_it or REPLAY:
                tl.store(par_ptr + 2 * pair, tl.load(par_ptr + 2 * pair) ^ (1 - u_shift))
                tl.store(par_ptr + 2 * pair + 1, 1 - tl.load(par_ptr + 2 * pair + 1))
                tl.store(act_ptr + pair, (last > eps).to(tl.int32))
                tl.store(count_ptr + pair, 0)
            else:
                tl.store(count_ptr + pair, stop)


# ----------------------------------------------------------------------------------------------------------------
# launchers


def block_tiles(h: int, w: int, config: StepConfig) -> int:
    """Output tiles of one pair: (bh - 2k) x (bw - 2k) each."""
    return triton.cdiv(h, config.bh - 2 * config.k) * triton.cdiv(w, config.bw - 2 * config.k)


def scratch_floats(config: StepConfig) -> int:
    """The scratch of all slots: 12 planes of a region each."""
    return SLOTS * 12 * config.bh * config.bw


def block_launch(level, m: int, iters: int, u_shift: int, config: StepConfig, replay: bool):
    """``(kernel, grid, args, kwargs)`` of a pass of ``iters`` iterations over the first ``m`` listed pairs
    (``replay``: the pairs whose count is set, each for its count)."""
    ws = level.ws
    items = m * block_tiles(level.h, level.w, config)
    args = (level.state, level.consts, ws.scratch, ws.pairs, ws.active, ws.parity, ws.count, level.parts, items,
            iters, level.l_t, level.theta, level.taut, u_shift)
    kwargs = {"H": level.h, "W": level.w, "P": level.pitch, "RH": config.bh, "RW": config.bw, "K": config.k,
              "REPLAY": replay, "num_warps": config.num_warps, "maxnreg": config.max_registers,
              "enable_fp_fusion": False}
    return _block_kernel, (min(items, SLOTS),), args, kwargs


def block_error_launch(level, m: int, iters: int, u_shift: int, config: StepConfig, replay: bool):
    """``(kernel, grid, args, kwargs)`` of the per-pair stop decision after :func:`block_launch`."""
    ws = level.ws
    args = (ws.pairs, ws.active, ws.parity, ws.count, level.parts, ws.err, level.eps, iters, u_shift)
    kwargs = {"T": block_tiles(level.h, level.w, config), "K": config.k, "BLOCK": SUM_BLOCK, "REPLAY": replay,
              "enable_fp_fusion": False}
    return _block_error_kernel, (m,), args, kwargs
