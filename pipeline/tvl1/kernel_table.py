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

KERNEL_MODULES = ("actrec.pipeline.tvl1.triton_step", "actrec.pipeline.tvl1.triton_block",
                  "actrec.pipeline.tvl1.triton_warp", "actrec.pipeline.tvl1.triton_pyramid")


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
    scratch: tuple[str, ...] = ()
    items: int = 0  # work items of a persistent kernel (its programs loop over them); 0: one per program

    @property
    def programs(self) -> int:
        total = 1
        for g in self.grid:
            total *= g
        return total

    @property
    def work_items(self) -> int:
        return self.items or self.programs


@dataclass(frozen=True)
class Eager:
    """Per-pixel work the solver does with PyTorch operations (not a Triton kernel): ``run`` performs it once on
    CPU tensors of the level's size, so that its bytes can be counted (:func:`eager_bytes`)."""

    name: str
    run: Callable[[], object] = field(repr=False)
    pixels: int
    per: str
    times: int = 1


def _random_level(h: int, w: int, n: int, config):
    """A workspace level of ``n`` pairs of ``h x w`` on the CPU holding a realistic state (random u, p and constants,
    every pair listed and active), and its I0, I1 and (I1, I1x, I1y)."""
    from actrec.pipeline.tvl1.params import TVL1Params
    from actrec.pipeline.tvl1.triton_block import scratch_floats
    from actrec.pipeline.tvl1.triton_step import tiles
    from actrec.pipeline.tvl1.workspace import Workspace

    g = torch.Generator().manual_seed(0)
    scratch = scratch_floats(config) if config.k > 1 else 0
    level = Workspace("cpu").level(n, h, w, TVL1Params(), tiles(h, w, config), scratch)
    level.state.copy_(torch.randn(level.state.shape, generator=g))
    consts = torch.randn(level.consts.shape, generator=g) * 20
    consts[:, 3] = consts[:, 0] ** 2 + consts[:, 1] ** 2
    level.consts.copy_(consts)
    level.ws.active[:n].fill_(1)
    level.list_pairs(torch.arange(n, dtype=torch.int32), n)
    images = torch.rand((n, 2, h, w), generator=g) * 255
    return level, images[:, 0].contiguous(), images[:, 1].contiguous()


def level_launches(h: int, w: int, n: int = 1, config=None, finer: tuple[int, int] | None = None,
                   coarser: tuple[int, int] | None = None, medians: tuple[int, ...] = (5,)) -> list[Launch]:
    """The Triton launches of one level of ``h x w`` for ``n`` pairs (``finer``, ``coarser``: the neighbouring
    levels' sizes, None at the ends, for the pyramid's and the flow's resizes to this level; ``medians``: the
    window sizes, 5 being OpenCV's default and 3 its other choice on float data), with realistic inputs
    (random state, a flow of a few pixels, so that the remap's taps fall where real ones do) and the GPU's
    program sizes (also under the interpreter, so that traced per-program footprints are the GPU's)."""
    from actrec.pipeline.tvl1 import triton_step
    from actrec.pipeline.tvl1.backend import kernel_config

    config = config or kernel_config()
    triton_step.GPU_BLOCKS[0] = True
    try:
        return _launches(h, w, n, config, finer, coarser, medians)
    finally:
        triton_step.GPU_BLOCKS[0] = False


def _launches(h, w, n, config, finer, coarser, medians) -> list[Launch]:
    from actrec.pipeline.tvl1 import triton_pyramid, triton_warp

    level, I0, I1 = _random_level(h, w, n, config)
    pix = n * h * w
    level.state[:, 0, :2] = (torch.rand(level.state[:, 0, :2].shape) - 0.5) * 4  # flows of up to 2 px
    out = _step_launches(level, config)
    for k in medians:
        fn, grid, args, kwargs = triton_warp.median_launch(level, n, k)
        out.append(Launch("median" if k == 5 else f"median{k}", "side", fn, grid, args, kwargs, 2 * pix,
                          kwargs["BLOCK"] * triton_warp.STRIP, "outer"))
    src = triton_pyramid.gradient_stack(I1) if _interpreting() else torch.zeros((n, 3, h, w))
    fn, grid, args, kwargs = triton_warp.warp_launch(level, src, I0, n)
    out.append(Launch("warp", "side", fn, grid, args, kwargs, pix, kwargs["BLOCK"], "warp"))
    fn, grid, args, kwargs = triton_pyramid.gradient_launch(I1, torch.empty((n, 3, h, w)))
    out.append(Launch("gradient", "side", fn, grid, args, kwargs, pix, kwargs["BLOCK"], "level"))
    for name, size, scale, target in (("pyramid", finer, 0.8, None), ("upsample", coarser, None, level)):
        if size is None:
            continue
        big = torch.rand((n, *size))
        taps = triton_pyramid.resize_taps(*size, (h, w), scale, "cpu")
        dst, pair, pitch = ((torch.empty((n, h, w)), h * w, w) if target is None
                            else (level.state[:, 0, 0], 12 * h * level.pitch, level.pitch))
        fn, grid, args, kwargs = triton_pyramid.resize_launch(big, dst, (h, w), taps, 1.0, pair, pitch)
        out.append(Launch(name, "side", fn, grid, args, kwargs, pix, kwargs["BLOCK"], "level", times=2))
    return out


def _step_launches(level, config) -> list[Launch]:
    """The launches of the iterations: the one-pass kernel and its per-pair error sum, or (``config.k`` > 1) a
    pass of k iterations, its per-pair stop decision, and the replay of the pairs that stopped inside it."""
    from actrec.pipeline.tvl1 import triton_block, triton_step

    n, h, w = level.n, level.h, level.w
    pix = n * h * w
    if config.k == 1:
        return [Launch("step", "step", *triton_step.step_launch(level, n, 0, config), pix, config.bh * config.bw,
                       "iteration"),
                Launch("pair_error", "side", *triton_step.pair_error_launch(level, n, 0, config), pix, h * w,
                       "iteration")]
    k = config.k
    kept = (config.bh - 2 * k) * (config.bw - 2 * k)
    items = n * triton_block.block_tiles(h, w, config)
    return [Launch("block", "step", *triton_block.block_launch(level, n, k, 0, config, False), pix, kept, "pass",
                   iterations=k, scratch=("scratch_ptr",), items=items),
            Launch("block_error", "side", *triton_block.block_error_launch(level, n, k, 0, config, False), pix,
                   h * w, "pass", iterations=k),
            Launch("block_replay", "side", *triton_block.block_launch(level, n, k, 0, config, True), pix, kept,
                   "replay", iterations=k, scratch=("scratch_ptr",), items=items),
            Launch("block_replay_error", "side", *triton_block.block_error_launch(level, n, k, 0, config, True),
                   pix, h * w, "replay", iterations=k)]


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def level_eager(h: int, w: int, finer: tuple[int, int] | None, coarser: tuple[int, int] | None,
                n: int = 1) -> list[Eager]:
    """The solver's per-pixel PyTorch work at a level of ``h x w`` (``finer``, ``coarser``: the neighbouring
    levels' sizes): starting the level (p = 0 and the parities), reading its flow out, and listing the running
    pairs once per outer iteration (the compaction: a few bytes per pair)."""
    from actrec.pipeline.tvl1.backend import kernel_config

    level, _, _ = _random_level(h, w, n, kernel_config())
    pix = n * h * w

    def start():
        level.state[:, 0, 2:].zero_()
        level.ws.parity[:n].zero_()

    def compaction():
        rows = level.ws.active[:n].nonzero().flatten().to(torch.int32)
        level.list_pairs(rows, n)

    if coarser is None:  # the coarsest level starts from zero flow (the others from the upsample kernel)
        zero = torch.zeros((n, h, w))
        start_level = Eager("level_start", lambda: level.load_flow(zero, zero), pix, "level")
    else:
        start_level = Eager("level_start", start, pix, "level")
    return [start_level, Eager("flow_out", level.flow, pix, "level"), Eager("compaction", compaction, pix, "outer")]


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
    """Global memory a launch touches, from the addresses of its loads and stores (interpreter trace), each
    address counted once over the whole grid: ``loaded`` the addresses first touched by a load (what must come
    from DRAM when the caches serve every reuse: halos, neighbours, and values the launch itself wrote and reads
    back), ``stored`` the addresses stored; ``program_loaded`` counts every program's loaded addresses once per
    program (the traffic between L2 and the SMs when only a program's own reuses hit its L1)."""

    loaded: int = 0
    stored: int = 0
    program_loaded: int = 0
    scratch: int = 0  # bytes of every load and store to a scratch argument (on chip by design)
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


def _footprint(events, launch: Launch) -> Footprint:
    import numpy as np

    ranges = [(i, t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
              for i, t in enumerate(launch.args) if isinstance(t, torch.Tensor)]
    fp = Footprint()
    scratch = [(lo, hi) for i, lo, hi in ranges if launch.fn.arg_names[i] in launch.scratch]
    for lo, hi in scratch:  # on chip by design: reported apart from the DRAM counts
        fp.scratch += sum(int(((a >= lo) & (a < hi)).sum()) * s for _, _, a, s in events)
    events = [(p, k, a[~np.any([(a >= lo) & (a < hi) for lo, hi in scratch], axis=0)] if scratch else a, s)
              for p, k, a, s in events]
    events = [e for e in events if len(e[2])]
    if not events:
        return fp
    addr = np.concatenate([a for _, _, a, _ in events])  # in the order the program ran them
    size = np.concatenate([np.full(len(a), s, dtype=np.int64) for _, _, a, s in events])
    store = np.concatenate([np.full(len(a), k == "store") for _, k, a, _ in events])
    prog = np.concatenate([np.full(len(a), p, dtype=np.int64) for p, _, a, _ in events])
    uniq, first = np.unique(addr, return_index=True)
    first_load = ~store[first]
    fp.loaded = int(size[first][first_load].sum())
    stored_addr, stored_first = np.unique(addr[store], return_index=True)
    fp.stored = int(size[store][stored_first].sum())
    for i, lo, hi in ranges:
        name = launch.fn.arg_names[i]
        inside = (uniq >= lo) & (uniq < hi)
        if (inside & first_load).any():
            fp.by_argument[f"load {name}"] = int(size[first][inside & first_load].sum())
        inside = (stored_addr >= lo) & (stored_addr < hi)
        if inside.any():
            fp.by_argument[f"store {name}"] = int(size[store][stored_first][inside].sum())
    loads = ~store
    pairs = np.unique(np.stack([prog[loads], addr[loads].astype(np.int64)]), axis=1, return_index=True)[1]
    fp.program_loaded = int(size[loads][pairs].sum())
    return fp
