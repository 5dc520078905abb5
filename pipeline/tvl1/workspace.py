"""The device buffers of the Triton TV-L1 solver, kept from batch to batch so that CUDA graphs can be replayed.

One :class:`Workspace` per device holds, for up to ``capacity`` pairs of up to ``max_plane`` floats per plane:

- ``state``: per pair two sets of the six iteration planes (u1, u2, p11, p12, p21, p22), ``(N, 2, 6, H, P)``;
- ``consts``: per pair the warp's constants (I1wx, I1wy, rho_c, grad_safe), ``(N, 4, H, P)``;
- ``parity``: per pair the set holding its u and the set holding its p, ``(N, 2)`` int32;
- ``active``: per pair whether it still iterates in the current warp, ``(N,)`` int32;
- ``pairs``: the list of the pairs a launch works on (-1 pads it to a power of two), int32;
- ``parts`` and ``err``: the per-tile and per-pair errors of the last iteration (of each iteration of a pass);
- ``count`` and ``scratch``: the iterations a pair replays, and the regions of the several-iterations kernel
  (:mod:`.triton_block`).

A pyramid level is a :class:`Level`: views of these buffers for ``n`` pairs of ``h x w`` with a row pitch of
``P = ceil(w / 4) * 4`` floats (16-byte aligned rows). The views of every level and batch size start at the same
addresses, so a CUDA graph captured on them stays valid for every later batch; the buffers grow (and the graphs
are dropped) only when a batch needs more than they hold.
"""

from __future__ import annotations

import torch

from actrec.pipeline.tvl1.graphs import padded_batch
from actrec.pipeline.tvl1.params import TVL1Params, _Consts


def pitch(w: int) -> int:
    """Row pitch in floats: the width rounded up to whole 16-byte vectors."""
    return -(-w // 4) * 4


class Workspace:
    """The solver's buffers on one device (see the module docstring); ``generation`` changes when they are
    reallocated, which invalidates graphs captured on the old ones."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.capacity = 0
        self.max_plane = 0
        self.max_tiles = 0
        self.max_scratch = 0
        self.generation = 0

    def reserve(self, n: int, plane: int, tiles: int, scratch: int = 0) -> None:
        """Make room for ``n`` pairs with ``plane`` floats per plane, ``tiles`` partial errors per pair and
        ``scratch`` floats of scratch."""
        if n <= self.capacity and plane <= self.max_plane and tiles <= self.max_tiles and scratch <= self.max_scratch:
            return
        self.capacity = max(n, self.capacity)
        self.max_plane = max(plane, self.max_plane)
        self.max_tiles = max(tiles, self.max_tiles)
        self.max_scratch = max(scratch, self.max_scratch)
        cap, dev = self.capacity, self.device
        # zeros: the padding columns of a plane hold finite values from the start (they are computed, never used)
        self.state = torch.zeros(cap * 12 * self.max_plane, device=dev)
        self.consts = torch.zeros(cap * 4 * self.max_plane, device=dev)
        self.parity = torch.zeros((cap, 2), dtype=torch.int32, device=dev)
        self.active = torch.zeros(cap, dtype=torch.int32, device=dev)
        self.pairs = torch.full((padded_batch(cap),), -1, dtype=torch.int32, device=dev)
        self.parts = torch.zeros(cap * self.max_tiles, dtype=torch.float64, device=dev)
        self.err = torch.zeros(cap, dtype=torch.float64, device=dev)
        self.count = torch.zeros(cap, dtype=torch.int32, device=dev)
        self.scratch = torch.zeros(self.max_scratch, device=dev)
        self.generation += 1

    def level(self, n: int, h: int, w: int, params: TVL1Params, tiles: int, scratch: int = 0) -> "Level":
        """The views of a level of ``n`` pairs of ``h x w`` (growing the buffers if needed)."""
        self.reserve(n, h * pitch(w), tiles, scratch)
        return Level(self, n, h, w, params, tiles)


class Level:
    """One pyramid level's views of a :class:`Workspace` and its scalars (OpenCV's float32 constants)."""

    def __init__(self, ws: Workspace, n: int, h: int, w: int, params: TVL1Params, tiles: int):
        self.ws, self.n, self.h, self.w, self.pitch, self.tiles = ws, n, h, w, pitch(w), tiles
        plane = h * self.pitch
        self.state = ws.state[:n * 12 * plane].view(n, 2, 6, h, self.pitch)
        self.consts = ws.consts[:n * 4 * plane].view(n, 4, h, self.pitch)
        self.parts = ws.parts[:n * tiles].view(n, tiles)
        c = _Consts(params, h, w)
        self.l_t, self.theta, self.taut, self.eps = c.l_t, c.theta, c.taut, c.scaled_eps

    def load_flow(self, u1: torch.Tensor, u2: torch.Tensor) -> None:
        """Start the level from the flow ``(n, h, w)`` and p = 0, in set 0 (all parities 0)."""
        w = self.w
        self.state[:, 0, 0, :, :w].copy_(u1)
        self.state[:, 0, 1, :, :w].copy_(u2)
        self.state[:, 0, 2:].zero_()
        self.ws.parity[:self.n].zero_()

    def flow(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current (u1, u2) of every pair, ``(n, h, w)`` each, from the set its parity names."""
        in_one = self.ws.parity[:self.n, 0].bool().view(-1, 1, 1)
        u = [torch.where(in_one, self.state[:, 1, c, :, :self.w], self.state[:, 0, c, :, :self.w]) for c in (0, 1)]
        return u[0], u[1]

    def list_pairs(self, rows: torch.Tensor, padded: int) -> None:
        """List ``rows`` (int, on the device) for the next launches, padded with -1 to ``padded`` entries."""
        m = rows.numel()
        self.ws.pairs[:m].copy_(rows)
        self.ws.pairs[m:padded].fill_(-1)
