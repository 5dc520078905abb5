"""The Triton TV-L1 solver: OpenCV's ``calc`` (pyramid) and ``procOneScale`` (levels) on a
:class:`~.workspace.Workspace`, every per-pixel step a Triton kernel.

Per level: the gradient of I1 (:mod:`.triton_pyramid`), then ``warps`` times the warp constants (:mod:`.triton_warp`)
and up to ``outer_iterations`` outer iterations, each the median of u1 and u2 followed by ``inner_iterations``
fused iterations (:mod:`.triton_step`). A pair stops on its own, as in OpenCV, when an iteration's update falls to
``epsilon^2 H W``: the per-pair error kernel clears its flag and the kernels skip it from then on. Once per outer
iteration the host lists the pairs still running (one synchronisation), and the next outer iteration runs over that
list: no state is moved. Each outer iteration (``2 * inner + 1`` launches) replays as one CUDA graph captured on
the workspace (:mod:`.graphs`), keyed by the level and the list's length rounded up to a power of two, so the
graphs of the first batch serve every later one.

The result is bit-identical to the PyTorch solver on the CPU (tested under ``TRITON_INTERPRET=1``): the same
float32 operations in the same order in every kernel, and per-pair stopping that does not depend on the batch.
"""

from __future__ import annotations

import torch

from actrec.pipeline.tvl1.graphs import GraphCache, padded_batch
from actrec.pipeline.tvl1.ops import pyramid_sizes
from actrec.pipeline.tvl1.params import TVL1Params, _Consts, _f32
from actrec.pipeline.tvl1.triton_pyramid import gradient_stack, resize, resize_launch, resize_taps
from actrec.pipeline.tvl1.step_config import StepConfig
from actrec.pipeline.tvl1.triton_block import block_error_launch, block_launch, scratch_floats
from actrec.pipeline.tvl1.triton_step import launch, pair_error_launch, step_launch, tiles
from actrec.pipeline.tvl1.triton_warp import median_launch, warp_launch
from actrec.pipeline.tvl1.workspace import Level, Workspace, pitch


def supported(params: TVL1Params) -> bool:
    """Parameters the Triton solver runs: no illumination term (gamma = 0, OpenCV's default) and a median of 3, 5 or
    none (others run the PyTorch kernels)."""
    return params.gamma == 0 and params.median_filtering in (-1, 0, 1, 3, 5)


def graph_key(h: int, w: int, listed: int, params: TVL1Params, config: StepConfig) -> tuple:
    """The graph of an outer iteration over ``listed`` pairs of a level of ``h x w``: what its launches depend on
    (the level's size, the list padded to a power of two, the scalars, the iteration count, the median, the tile);
    never the batch or its pairs, whose data stays in the workspace."""
    c = _Consts(params, h, w)
    return (h, w, padded_batch(listed), c.l_t, c.theta, c.taut, c.scaled_eps, params.inner_iterations,
            params.median_filtering, config)


def passes(inner: int, k: int) -> list[int]:
    """The iterations of each pass of at most ``k`` that make up ``inner`` (30 by 4: seven of 4, one of 2)."""
    return [k] * (inner // k) + ([inner % k] if inner % k else [])


class TritonSolver:
    """The pyramid and levels on one device's workspace; ``graphs`` replays the outer iterations when
    ``use_graphs`` (else, or without a cache: direct launches)."""

    def __init__(self, device: torch.device, config: StepConfig = StepConfig(), graphs: GraphCache | None = None):
        self.ws = Workspace(device)
        self.config = config
        self.graphs = graphs
        self.use_graphs = graphs is not None
        self._scratch = scratch_floats(config) if config.k > 1 else 0
        self._generation = self.ws.generation  # of the buffers the cached graphs were captured on

    def pyramid(self, I0: torch.Tensor, I1: torch.Tensor, params: TVL1Params,
                flow0: torch.Tensor | None) -> torch.Tensor:
        """:func:`actrec.pipeline.tvl1.solver._tvl1_pyramid` for ``I0``, ``I1`` float32 ``(N, H, W)``: the flow
        ``(N, H, W, 2)``."""
        n, h, w = I0.shape
        sizes = pyramid_sizes(h, w, params.nscales, params.scale_step)
        self.ws.reserve(n, h * pitch(w), tiles(h, w, self.config), self._scratch)  # the finest level: no growth

        step = params.scale_step
        I0s, I1s = [I0.contiguous()], [I1.contiguous()]
        for s in range(1, len(sizes)):
            I0s.append(resize(I0s[-1], sizes[s], scale=step))
            I1s.append(resize(I1s[-1], sizes[s], scale=step))
        if flow0 is not None:
            u1, u2 = flow0[..., 0].contiguous(), flow0[..., 1].contiguous()
            for s in range(1, len(sizes)):
                u1 = resize(u1, sizes[s], scale=step) * _f32(step)
                u2 = resize(u2, sizes[s], scale=step) * _f32(step)
        else:
            u1 = torch.zeros((n,) + sizes[-1], device=I0.device)
            u2 = torch.zeros_like(u1)
        up = _f32(1.0 / step)
        for s in range(len(sizes) - 1, -1, -1):
            level = self.ws.level(n, *sizes[s], params, tiles(*sizes[s], self.config), self._scratch)
            if s == len(sizes) - 1:
                level.load_flow(u1, u2)
            else:
                self._upsample(level, u1, u2, up)
            self.solve(level, I0s[s], I1s[s], params)
            u1, u2 = level.flow()
        return torch.stack([u1, u2], dim=-1)

    def _upsample(self, level: Level, u1: torch.Tensor, u2: torch.Tensor, up: float) -> None:
        """Start ``level`` from the coarser flow resized to it times ``up`` (into set 0) and p = 0."""
        taps = resize_taps(*u1.shape[1:], (level.h, level.w), None, u1.device)
        pair, pitch = 12 * level.h * level.pitch, level.pitch
        for c, u in enumerate((u1, u2)):
            fn, grid, args, kwargs = resize_launch(u, level.state[:, 0, c], (level.h, level.w), taps, up, pair, pitch)
            fn[grid](*args, **kwargs)
        level.state[:, 0, 2:].zero_()
        level.ws.parity[:level.n].zero_()

    def solve(self, level: Level, I0: torch.Tensor, I1: torch.Tensor, params: TVL1Params) -> None:
        """OpenCV's ``procOneScale`` for the level's pairs, whose flow is in the workspace (parities name its set)."""
        ws, n = self.ws, level.n
        src = gradient_stack(I1)
        everyone = torch.arange(n, dtype=torch.int32, device=ws.device)
        for _warp in range(params.warps):
            level.list_pairs(everyone, n)
            launch(warp_launch(level, src, I0.contiguous(), n))
            ws.active[:n].fill_(1)
            rows = everyone
            for outer in range(params.outer_iterations):
                if outer > 0:  # one host check per outer iteration: list the pairs still running
                    rows = ws.active[:n].nonzero().flatten().to(torch.int32)
                    if rows.numel() == 0:
                        break
                self._outer(level, rows, params)

    def _outer(self, level: Level, rows: torch.Tensor, params: TVL1Params) -> None:
        """One outer iteration of the pairs ``rows``: the median of u1 and u2, then the inner iterations."""
        ksize = params.median_filtering
        median = ksize in (3, 5)
        padded = padded_batch(rows.numel())

        def block():
            if median:
                launch(median_launch(level, padded, ksize))
            if self.config.k == 1:
                for i in range(params.inner_iterations):
                    shift = int(median and i == 0)  # the first iteration reads the median's output set
                    launch(step_launch(level, padded, shift, self.config))
                    launch(pair_error_launch(level, padded, shift, self.config))
                return
            for i, iters in enumerate(passes(params.inner_iterations, self.config.k)):
                shift = int(median and i == 0)
                for replay in (False, True):  # the pass, then the pairs that stopped inside it, replayed
                    launch(block_launch(level, padded, iters, shift, self.config, replay))
                    launch(block_error_launch(level, padded, iters, shift, self.config, replay))

        def list_rows():
            level.list_pairs(rows, padded)

        if self.graphs is None or not self.use_graphs:
            list_rows()
            block()
            return
        if self._generation != self.ws.generation:
            self.graphs.clear()
            self._generation = self.ws.generation
        key = graph_key(level.h, level.w, rows.numel(), params, self.config)
        self.graphs.run(key, block, lambda: self.ws.pairs[:padded].fill_(-1), list_rows)
