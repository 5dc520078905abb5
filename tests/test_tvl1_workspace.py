"""The Triton solver's workspace and launch layout (:mod:`actrec.pipeline.tvl1.workspace`), on the CPU.

Rows start on 16-byte boundaries (so that the step kernel's tile loads and stores are 128-bit; the compiled code
is checked in tests/test_kernels_compile.py), a pair's tiles are consecutive programs of the step kernel's grid,
and every level and batch size views the same buffers, which is what lets a CUDA graph outlive its batch.
"""

from __future__ import annotations

import pytest
import torch

from actrec.pipeline.tvl1 import TVL1Params, pyramid_sizes
from actrec.pipeline.tvl1.backend import kernel_config
from actrec.pipeline.tvl1.triton_step import step_launch, tiles
from actrec.pipeline.tvl1.workspace import Workspace, pitch


def test_rows_are_16_byte_aligned_at_every_level():
    ws = Workspace("cpu")
    for h, w in pyramid_sizes(256, 340, 5, 0.8) + [(21, 37)]:
        level = ws.level(3, h, w, TVL1Params(), tiles(h, w, kernel_config()))
        assert level.pitch % 4 == 0 and 0 <= level.pitch - w < 4
        for plane in (level.state[2, 1, 5], level.consts[1, 3]):
            assert plane.stride(-2) * 4 % 16 == 0 and plane.data_ptr() % 16 == 0
    assert [pitch(w) for w in (340, 272, 218, 174, 139)] == [340, 272, 220, 176, 140]


def test_a_pairs_tiles_are_consecutive_programs():
    """grid axis 0 (launched fastest) runs one pair's tiles in row-major order, axis 1 the listed pairs: tiles
    that share a halo run side by side, where the old (pairs, rows, columns) grid ran them a batch apart."""
    config = kernel_config()
    level = Workspace("cpu").level(5, 256, 340, TVL1Params(), tiles(256, 340, config))
    _, grid, _, kwargs = step_launch(level, 5, 0, config)
    assert grid == (tiles(256, 340, config), 5)
    assert grid[0] == -(-256 // kwargs["BH"]) * -(-340 // kwargs["BW"])


def test_every_level_and_batch_views_the_same_buffers():
    ws = Workspace("cpu")
    sizes = pyramid_sizes(256, 340, 5, 0.8)
    ws.reserve(8, 256 * pitch(340), tiles(256, 340, kernel_config()))
    first = ws.generation
    starts = {(n, h, w): ws.level(n, h, w, TVL1Params(), tiles(h, w, kernel_config())).state.data_ptr()
              for n in (1, 5, 8) for h, w in sizes}
    assert len(set(starts.values())) == 1 and ws.generation == first
    ws.level(9, 256, 340, TVL1Params(), tiles(256, 340, kernel_config()))  # more pairs: the buffers grow
    assert ws.generation == first + 1


def test_a_level_starts_from_the_flow_and_reads_it_back_by_parity():
    g = torch.Generator().manual_seed(0)
    u1, u2 = torch.randn(2, 7, 9, generator=g), torch.randn(2, 7, 9, generator=g)
    level = Workspace("cpu").level(2, 7, 9, TVL1Params(), 1)
    level.load_flow(u1, u2)
    assert all(torch.equal(a, b) for a, b in zip(level.flow(), (u1, u2)))
    level.state[1, 1, :2, :, :9] = -level.state[1, 0, :2, :, :9]  # pair 1's u in the other set
    level.ws.parity[1, 0] = 1
    got = level.flow()
    assert torch.equal(got[0][0], u1[0]) and torch.equal(got[0][1], -u1[1]) and torch.equal(got[1][1], -u2[1])


def test_the_table_recommends_the_configuration_and_an_env_selects_the_other(monkeypatch):
    from actrec.errors import InputError
    from actrec.pipeline.tvl1.backend import PASSES_CONFIG, default_kernels

    assert kernel_config().k == 1 and (kernel_config().bh, kernel_config().bw) == (32, 64)
    monkeypatch.setenv("ACTREC_TVL1_PASS_ITERATIONS", "4")
    assert kernel_config() == PASSES_CONFIG
    monkeypatch.setenv("ACTREC_TVL1_PASS_ITERATIONS", "3")
    with pytest.raises(InputError, match="1 or 4"):
        kernel_config()
    monkeypatch.setenv("ACTREC_TVL1_KERNELS", "torch")  # plain PyTorch, even on CUDA
    assert default_kernels(torch.device("cuda")) == "torch"
