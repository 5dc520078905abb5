"""The step kernel's launch configuration, apart from the kernels so that choosing one does not import Triton."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepConfig:
    """Tile of the step kernel: ``bh`` rows x ``bw`` columns, ``num_warps`` warps per program (at 32 x 64 and 4
    warps each thread computes 16 pixels, 4 per sub-tile of 8 rows), and the registers per thread ptxas must fit it
    in (``max_registers``: 128 keeps 16 warps resident per SM; the compiled code is checked to need no stack); the
    one-pass kernel works through its tile ``sub_rows`` rows at a time, so that fewer values are live at once.
    ``k`` > 1: k iterations per pass (:mod:`.triton_block`) on regions of ``bh x bw`` whose outer k rows and
    columns on each side are the halo. benchmarks/bench_kernels_static.py compares the candidates."""

    bh: int = 32
    bw: int = 64
    num_warps: int = 4
    max_registers: int = 128
    k: int = 1
    sub_rows: int = 8
