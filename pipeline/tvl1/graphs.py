"""Outer iterations of the Triton solver replayed as CUDA graphs: the launch overhead of small batches removed.

Why: an outer iteration is ``2 * inner + 1`` Triton launches (the median, then per inner iteration the fused step
and the per-pair error sum), each costing the host some microseconds in Python. A large batch keeps the GPU busy
far longer than that, so the host runs ahead and launches cost nothing. But per-pair stopping leaves small batches
behind (the tail of a batch after its early pairs have stopped, the coarse levels, a last partial batch), where an
iteration moves less than the host spends launching it. A CUDA graph replays a whole outer iteration with one host
call.

How: the solver's state lives in a persistent :class:`~.workspace.Workspace`, and a launch works on a list of pairs
(``pairs``, padded with -1 to a power of two). So a graph needs no input or output copies at all: it is captured
once per (level, padded list length, parameters) on the workspace's buffers and replayed for every later batch,
whatever its pairs. The cache holds graphs, not buffers (a graph of ~61 kernel nodes is small), bounded by count:
a job's graphs (5 levels x one per power of two up to the batch) all stay, so a steady state captures nothing
(tested over a realistic sequence of batches with :func:`eager_capture`, which has a graph's contract on any
device). A capture runs its block once on the side stream first (compiling the kernels outside the capture, as
PyTorch's ``torch.cuda.graphs`` asks): the list is filled with -1 for the warm-up and the capture, which makes the
block a no-op, and with the real pairs before each replay.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable

import torch

Capture = Callable[[Callable[[], None]], Callable[[], None]]

MAX_GRAPHS = 256  # a job at 340x256 with batches of up to 1,024 pairs needs 5 levels x 11 list lengths


def cuda_capture(fn: Callable[[], None]) -> Callable[[], None]:
    """Capture ``fn`` (which must only launch kernels on tensors that outlive the graph) as a CUDA graph after one
    warm-up call on a side stream; returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def eager_capture(fn: Callable[[], None]) -> Callable[[], None]:
    """A stand-in for :func:`cuda_capture` on any device: one call at capture time (as the warm-up), and a replay
    that calls ``fn`` again. Lets the CPU tests check the bookkeeping (keys, no-op capture, captures per batch)."""
    fn()
    return fn


def graphs_enabled(device: torch.device) -> bool:
    """CUDA graphs for the outer iterations on CUDA, unless env ACTREC_TVL1_GRAPHS=0."""
    env = os.environ.get("ACTREC_TVL1_GRAPHS", "").strip().lower()
    return device.type == "cuda" and env not in ("0", "false", "no", "off")


def padded_batch(n: int) -> int:
    """The list length a graph is captured for: ``n`` rounded up to a power of two."""
    return 1 << max(0, n - 1).bit_length()


class GraphCache:
    """Captured blocks by key, least recently used dropped beyond ``max_graphs``; ``captures`` counts the captures
    (tests and benchmarks read it)."""

    def __init__(self, capture: Capture = cuda_capture, max_graphs: int = MAX_GRAPHS):
        self.capture = capture
        self.max_graphs = max_graphs
        self.cache: OrderedDict[tuple, Callable[[], None]] = OrderedDict()
        self.captures = 0

    def clear(self) -> None:
        """Drop every graph (their buffers were reallocated)."""
        self.cache.clear()

    def run(self, key: tuple, block: Callable[[], None], make_noop: Callable[[], None],
            prepare: Callable[[], None]) -> None:
        """Replay the graph of ``key``, capturing ``block`` first if there is none: ``make_noop`` turns the block
        into a no-op (for the warm-up and the capture), ``prepare`` sets its real inputs before each replay."""
        replay = self.cache.get(key)
        if replay is None:
            make_noop()
            replay = self.capture(block)
            self.captures += 1
            self.cache[key] = replay
            while len(self.cache) > self.max_graphs:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        prepare()
        replay()
