"""Every Triton kernel of the TV-L1 solver, with the launch the GPU solver makes of it at one pyramid level, and the
per-pixel PyTorch (eager) work around them: what the static table and the CI compile test go through.

:func:`level_launches` returns, for one pair at a level of ``h x w``, each kernel launch (the kernel, its grid, its
arguments on the CPU, its constexprs and options) with how often the solver runs it (``per``: every inner
iteration, every outer iteration, every warp, once per level) and how many image pixels and inner iterations one
launch covers. ``benchmarks/bench_kernels_static.py`` compiles each for sm_90a (:mod:`.compiled`), traces its
memory footprint under the interpreter (:func:`trace_bytes`) and multiplies by the counted work of real pairs;
tests/test_kernels_compile.py compiles each in CI. :data:`KERNELS` names every ``@triton.jit`` kernel, so a new one
cannot be left out of the table silently (the CI test checks the modules against it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

KERNEL_MODULES = ("actrec.pipeline.tvl1.triton_step", "actrec.pipeline.tvl1.triton_warp")


@dataclass(frozen=True)
class Launch:
    """One kernel launch of the solver for one pair at one level.

    ``role``: ``"step"`` for a kernel that performs inner iterations (``iterations`` per launch), ``"side"`` for the
    rest. ``per``: ``"iteration"`` (every inner iteration of an active pair), ``"outer"`` (every outer iteration),
    ``"warp"`` or ``"level"``; ``times``: launches per such event (the median runs for u1 and u2). ``held_bytes``:
    bytes per pixel a stopped pair still in its batch costs in each of its first ``held_copies`` iterations frozen
    per warp (the frozen-pair copies of the one-pass kernel)."""

    name: str
    role: str
    fn: object
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict
    pixels: int
    tile_pixels: int
    per: str
    iterations: int = 1
    times: int = 1
    held_bytes: int = 0
    held_copies: int = 0

    @property
    def programs(self) -> int:
        total = 1
        for g in self.grid:
            total *= g
        return total


@dataclass(frozen=True)
class Eager:
    """Per-pixel work the solver does with PyTorch operations (not a Triton kernel): ``run`` performs it once on
    CPU tensors of the level's size, so that its bytes can be counted (:func:`eager_bytes`)."""

    name: str
    run: Callable[[], object] = field(repr=False)
    pixels: int
    per: str
    times: int = 1


def _tensors(h: int, w: int, n: int, k: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((n, h, w), generator=g) for _ in range(k)]


def level_launches(h: int, w: int, n: int = 1) -> list[Launch]:
    """The Triton launches of one level of ``h x w`` for ``n`` pairs, with realistic inputs (random state, a flow of
    a few pixels, so that the remap's taps fall where real ones do)."""
    import triton

    from actrec.pipeline.tvl1 import triton_step, triton_warp

    bh, bw = triton_step.BLOCK_H, triton_step.BLOCK_W
    step_grid = (n, triton.cdiv(h, bh), triton.cdiv(w, bw))
    tiles = step_grid[1] * step_grid[2]
    state = _tensors(h, w, n, 16)
    active = torch.ones(n, dtype=torch.bool)
    frozen = torch.zeros(n, dtype=torch.int32)
    parts = torch.zeros((n, tiles), dtype=torch.float64)
    fp = {"enable_fp_fusion": False}
    step = Launch("step", "step", triton_step._step_kernel, step_grid,
                  (*state, active, frozen, parts, h, w, 0.045, 0.3, 0.8333333),
                  {"BH": bh, "BW": bw, **fp}, n * h * w, bh * bw, "iteration", held_bytes=48,
                  held_copies=2)
    err = torch.zeros(n, dtype=torch.float64)
    eps = torch.full((1,), 0.01 * h * w, dtype=torch.float64)
    pair_error = Launch("pair_error", "side", triton_step._pair_error_kernel, (n,),
                        (parts, active, frozen, err, eps, tiles), {"BLOCK": triton_step.SUM_BLOCK, **fp},
                        n * h * w, h * w, "iteration")
    g = torch.Generator().manual_seed(1)
    src = torch.rand((n, 3, h, w), generator=g) * 255
    mx = torch.arange(w, dtype=torch.float32) + (torch.rand((n, h, w), generator=g) - 0.5) * 4
    my = torch.arange(h, dtype=torch.float32)[:, None] + (torch.rand((n, h, w), generator=g) - 0.5) * 4
    block = triton_warp.REMAP_BLOCK
    remap = Launch("remap", "side", triton_warp._remap_kernel, (n, triton.cdiv(h * w, block)),
                   (src, mx, my, torch.empty_like(src), h, w), {"C": 3, "BLOCK": block, **fp}, n * h * w, block,
                   "warp")
    mblock = triton_warp.MEDIAN_BLOCK
    median = Launch("median", "side", triton_warp._median_kernel, (n, triton.cdiv(h * w, mblock)),
                    (state[0], torch.empty_like(state[0]), h, w), {"K": 5, "WIN": 32, "LOG": 5, "BLOCK": mblock},
                    n * h * w, mblock, "outer", times=2)
    return [step, pair_error, remap, median]


def level_eager(h: int, w: int, finer: tuple[int, int] | None, coarser: tuple[int, int] | None,
                n: int = 1) -> list[Eager]:
    """The solver's per-pixel PyTorch work at a level of ``h x w`` (``finer``, ``coarser``: the neighbouring
    levels' sizes, None at the ends): the pyramid's resizes of I0 and I1 from the finer level, the upsampling of
    the flow from the coarser one, the centred gradient of I1, the per-warp constants and the compaction of the
    batch."""
    from actrec.pipeline.tvl1 import solver
    from actrec.pipeline.tvl1.ops import centered_gradient, resize_linear

    I0, I1, u1, u2 = _tensors(h, w, n, 4)
    pix = n * h * w
    steps = [Eager("gradient", lambda: torch.stack([I1, *centered_gradient(I1)], 1), pix, "level")]
    if finer is not None:
        big = _tensors(*finer, n, 1)[0]
        steps.append(Eager("pyramid", lambda: resize_linear(big, (h, w), scale=0.8), pix, "level", times=2))
    if coarser is not None:
        small = _tensors(*coarser, n, 1)[0]
        steps.append(Eager("upsample", lambda: resize_linear(small, (h, w)) * 1.25, pix, "level", times=2))
    warped = torch.stack(_tensors(h, w, n, 3, seed=2), 1)
    gx = torch.arange(w, dtype=torch.float32).expand(h, w)
    gy = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    steps.append(Eager("warp_constants", lambda: solver._warp_constants(I0, None, u1, u2, gx, gy,
                                                                         lambda *a: warped), pix, "warp"))
    state = dict(zip(("u1", "u2", "p11", "p12", "p21", "p22"), _tensors(h, w, 2 * n, 6)))
    consts = dict(zip(("I1wx", "I1wy", "rho_c", "grad_safe"), _tensors(h, w, 2 * n, 4)))
    keep = torch.arange(2 * n - 1)  # a batch of 2n pairs loses one: every pair's share of one compaction

    def compact():
        solver._put(state, {k: v[keep] for k, v in state.items()}, keep)
        return solver._take(state, keep), solver._take(consts, keep)

    steps.append(Eager("compaction", compact, 2 * pix, "compaction"))
    return steps


def eager_bytes(fn: Callable[[], object]) -> int:
    """Bytes the ATen operations of ``fn`` read and write: the storage bytes of each operation's tensor inputs and
    outputs (an elementwise operation's traffic; views cost nothing)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.is_view or func in (torch.ops.aten.detach.default,):
                return out
            flat = [*args, *(kwargs or {}).values()]
            flat += list(out) if isinstance(out, (tuple, list)) else [out]
            for t in flat:
                for x in (t if isinstance(t, (tuple, list)) else (t,)):
                    if isinstance(x, torch.Tensor) and x.numel() > 1:
                        self.total += x.numel() * x.element_size()
            return out

    with _Count() as counter:
        fn()
    return counter.total


@dataclass
class Footprint:
    """Global memory a launch touches, from the addresses of its loads and stores (interpreter trace): ``loaded`` and
    ``stored`` count each address once over the whole grid (the DRAM traffic when the caches serve every reuse, e.g.
    halos and neighbours), ``program_loaded`` once per program (the traffic between L2 and the SMs when only a
    program's own reuses hit its L1)."""

    loaded: int = 0
    stored: int = 0
    program_loaded: int = 0
    by_argument: dict = field(default_factory=dict)


def trace_bytes(launch: Launch) -> Footprint:
    """Run ``launch`` under ``TRITON_INTERPRET=1`` (which must be set before the kernels were defined) and count the
    bytes of the distinct addresses its loads and stores touch (masked-off lanes excluded)."""
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    events: list[tuple[int, str, np.ndarray, int]] = []  # (program, "load"/"store", addresses, element bytes)
    program = [0]

    def record(kind, ptrs, mask):
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        addr = np.asarray(ptrs.data).ravel()
        sel = np.broadcast_to(np.asarray(mask.data), np.shape(ptrs.data)).ravel()
        events.append((program[0], kind, addr[sel].astype(np.uint64), size))

    original = (builder.create_masked_load, builder.create_masked_store, builder.set_grid_idx)

    def load(ptrs, mask, *rest):
        record("load", ptrs, mask)
        return original[0](ptrs, mask, *rest)

    def store(ptrs, value, mask, *rest):
        record("store", ptrs, mask)
        return original[1](ptrs, value, mask, *rest)

    def grid_idx(x, y, z):
        program[0] += 1
        return original[2](x, y, z)

    builder.create_masked_load, builder.create_masked_store, builder.set_grid_idx = load, store, grid_idx
    try:
        launch.fn[launch.grid](*launch.args, **launch.kwargs)
    finally:
        builder.create_masked_load, builder.create_masked_store, builder.set_grid_idx = original
    return _footprint(events, launch)


def _unique_bytes(chunks) -> tuple:
    """Distinct addresses of ``chunks`` ([(addresses, element bytes)]) and the bytes of each."""
    import numpy as np

    addr = np.concatenate([a for a, _ in chunks])
    size = np.concatenate([np.full(len(a), s, dtype=np.int64) for a, s in chunks])
    uniq, first = np.unique(addr, return_index=True)
    return uniq, size[first]


def _footprint(events, launch: Launch) -> Footprint:
    ranges = [(i, t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
              for i, t in enumerate(launch.args) if isinstance(t, torch.Tensor)]
    fp = Footprint()
    for kind in ("load", "store"):
        chunks = [(a, s) for _, k, a, s in events if k == kind]
        if not chunks:
            continue
        uniq, size = _unique_bytes(chunks)
        setattr(fp, "loaded" if kind == "load" else "stored", int(size.sum()))
        for i, lo, hi in ranges:
            inside = (uniq >= lo) & (uniq < hi)
            if inside.any():
                fp.by_argument[f"{kind} {launch.fn.arg_names[i]}"] = int(size[inside].sum())
    programs: dict[int, list] = {}
    for prog, kind, a, s in events:
        if kind == "load":
            programs.setdefault(prog, []).append((a, s))
    fp.program_loaded = sum(int(_unique_bytes(chunks)[1].sum()) for chunks in programs.values())
    return fp
