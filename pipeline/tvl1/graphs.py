"""Blocks of fused inner iterations replayed as CUDA graphs: the launch overhead of small batches removed.

Why: an inner iteration is two Triton launches (the fused step and the per-pair error sum), each costing the host
some microseconds in Python. A large batch keeps the GPU busy far longer than that (1,024 pairs at 340x256 move
5.7 GB per iteration, 1.3 ms on an H200), so the host runs ahead and launches cost nothing. But per-pair stopping
leaves small batches behind: the tail of a batch after its early pairs have stopped, the coarse pyramid levels, a
last partial batch. There an iteration moves less than the host spends launching it, and the GPU waits. A CUDA
graph replays a whole block of ``k`` iterations (``2k`` launches) with one host call.

How: one graph per (padded batch, H, W, k, scalars). The batch is padded up to a power of two with frozen pairs
(a frozen pair copies its state, :func:`.triton_step.block2`), so the shrinking tails of every batch of a job reuse
a handful of graphs. Before a replay the inputs are copied into the graph's static buffers; after it the outputs
are cloned out, so nothing the solver keeps can be overwritten by a later replay of the same graph. The replay
runs the very kernels the direct call runs on the same values, so its result is bit-identical (tested on the CPU
with :func:`eager_capture`, which has a graph's static-buffer semantics). Graphs are used only up to
``max_pixels`` (batch x H x W), where launches rather than bytes bound an iteration, and kept in an LRU cache
bounded in bytes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable

import torch

Tensors = tuple[torch.Tensor, ...]
Capture = Callable[[Callable[[], Tensors]], tuple[Callable[[], None], Tensors]]

# 2^21 pixels: one fused iteration moves 64 B per pixel, 134 MB here, about 31 us at the H200's 4.3 TB/s, the
# same order as the host's two Python launches per iteration; above it the GPU time hides the launches.
MAX_PIXELS = 1 << 21
MAX_BYTES = 1 << 30  # all cached graphs' static buffers together (each <= ~90 B per padded pixel)
_BYTES_PER_PIXEL = 4 * (10 + 6 * 2)  # static inputs (6 state + 4 constants) and the block's two output buffer sets


def cuda_capture(fn: Callable[[], Tensors]) -> tuple[Callable[[], None], Tensors]:
    """Capture ``fn`` (which must only launch kernels on tensors it was built around) as a CUDA graph.

    One warm-up call on a side stream first compiles the Triton kernels outside the capture, as PyTorch's
    ``torch.cuda.graphs`` documentation asks; returns ``(replay, outputs)``, the outputs being the static
    tensors every replay rewrites."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph.replay, outputs


def eager_capture(fn: Callable[[], Tensors]) -> tuple[Callable[[], None], Tensors]:
    """A stand-in for :func:`cuda_capture` on any device: a replay calls ``fn`` again and copies its results into
    the first call's outputs, which is a graph's contract (static outputs, rewritten by every replay). Lets the
    CPU tests check the bookkeeping of :class:`GraphedBlocks` that the CUDA path relies on."""
    outputs = fn()

    def replay() -> None:
        for static, fresh in zip(outputs, fn()):
            static.copy_(fresh)

    return replay, outputs


def graphs_enabled(device: torch.device) -> bool:
    """CUDA graphs for the inner iterations on CUDA, unless env ACTREC_TVL1_GRAPHS=0."""
    env = os.environ.get("ACTREC_TVL1_GRAPHS", "").strip().lower()
    return device.type == "cuda" and env not in ("0", "false", "no", "off")


def padded_batch(n: int) -> int:
    """The batch a graph is captured for: ``n`` rounded up to a power of two."""
    return 1 << max(0, n - 1).bit_length()


class _Graph:
    """One captured block: its static inputs, its replay, and its static outputs."""

    def __init__(self, block: Callable, capture: Capture, n: int, h: int, w: int, device: torch.device,
                 scalars: tuple[float, float, float], k: int):
        self.state = tuple(torch.zeros((n, h, w), device=device) for _ in range(6))
        self.consts = tuple(torch.zeros((n, h, w), device=device) for _ in range(4))
        self.active = torch.zeros(n, dtype=torch.bool, device=device)
        self.eps = torch.zeros(1, dtype=torch.float64, device=device)
        self.replay, self.outputs = capture(
            lambda: block(*self.state, *self.consts, self.active, *scalars, self.eps, k))
        self.nbytes = _BYTES_PER_PIXEL * n * h * w

    def run(self, state: Tensors, consts: Tensors, active: torch.Tensor, eps: torch.Tensor) -> Tensors:
        n = active.numel()
        for static, value in zip(self.state + self.consts, state + consts):
            static[:n].copy_(value)
        self.active.zero_()  # padding pairs stay frozen
        self.active[:n].copy_(active)
        self.eps.copy_(eps.reshape(1))
        self.replay()
        return tuple(out[:n].clone() for out in self.outputs)


class GraphedBlocks:
    """``block`` (the signature of :func:`.triton_step.block2`) with small batches replayed as CUDA graphs.

    ``capture`` builds a graph (:func:`cuda_capture`; :func:`eager_capture` in tests); batches above
    ``max_pixels`` are passed to ``block`` directly; captured graphs are kept up to ``max_bytes`` (least
    recently used dropped first)."""

    def __init__(self, block: Callable, capture: Capture = cuda_capture, max_pixels: int = MAX_PIXELS,
                 max_bytes: int = MAX_BYTES):
        self.block = block
        self.capture = capture
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.cache: OrderedDict[tuple, _Graph] = OrderedDict()
        self.captures = 0  # graphs built so far (tests and benchmarks read it)

    def __call__(self, u1, u2, p11, p12, p21, p22, I1wx, I1wy, rho_c, grad_safe, active, l_t: float, theta: float,
                 taut: float, eps: torch.Tensor, k: int):
        n, h, w = u1.shape
        padded = padded_batch(n)
        if padded * h * w > self.max_pixels:
            return self.block(u1, u2, p11, p12, p21, p22, I1wx, I1wy, rho_c, grad_safe, active, l_t, theta, taut,
                              eps, k)
        graph = self._graph((padded, h, w, str(u1.device), float(l_t), float(theta), float(taut), int(k)))
        return graph.run((u1, u2, p11, p12, p21, p22), (I1wx, I1wy, rho_c, grad_safe), active, eps)

    def _graph(self, key: tuple) -> _Graph:
        graph = self.cache.get(key)
        if graph is not None:
            self.cache.move_to_end(key)
            return graph
        n, h, w, device, l_t, theta, taut, k = key
        graph = _Graph(self.block, self.capture, n, h, w, torch.device(device), (l_t, theta, taut), k)
        self.captures += 1
        self.cache[key] = graph
        while sum(g.nbytes for g in self.cache.values()) > self.max_bytes and len(self.cache) > 1:
            self.cache.popitem(last=False)
        return graph
