"""The work TV-L1 does, counted on any device, and the memory-bound floor it implies on a GPU.

The solver's time on a GPU is set by the inner iterations: every other step (median, warp, resize) runs at most
once per outer iteration, 30 times less often. :func:`iteration_counts` runs the solver and counts, per pair and
pyramid level, the inner iterations the pair ran before it stopped (OpenCV's per-pair rule; the flow is the
solver's usual result). Multiplied by the level's pixels that is the pair's pixel-iterations; each fused
iteration must move :data:`BYTES_PER_ITERATION` bytes per pixel (its reads and writes, halos served by cache), so
``bandwidth / (pixel-iterations x bytes)`` bounds the pairs per second from above (:func:`floor_pairs_per_s`).

:func:`bytes_per_pixel_pair` gives the device memory one pair needs per pixel of its finest level at the solver's
peak, measured (:func:`peak_tensor_bytes`) for each kernel set; callers size batches by pixels with it.
"""

from __future__ import annotations

import math
import weakref
from typing import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from actrec.pipeline.tvl1.ops import pyramid_sizes
from actrec.pipeline.tvl1.params import TVL1Params

# One fused iteration per pixel: reads u1, u2, p11, p12, p21, p22, I1wx, I1wy, rho_c, grad_safe and writes u1, u2,
# p11, p12, p21, p22, all float32 (the neighbours' values come from the same rows, served by L1/L2).
BYTES_PER_ITERATION = (10 + 6) * 4

H200_COPY_BANDWIDTH = 4.3e12  # bytes/s, device-to-device copy measured on the H200 we can borrow


def iteration_counts(img0, img1, params: TVL1Params = TVL1Params(), *, device=None, kernels: str | None = None,
                     compile: bool | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Inner iterations each pair ran per pyramid level, after per-pair stopping.

    Returns ``(steps, sizes)``: ``steps`` int64 ``(N, levels)`` (finest level first) and the levels' ``(H, W)``.
    The count is exact (the solver runs blocks of one iteration while counting); the flow is unchanged.
    """
    steps, _, sizes = _counts(img0, img1, params, device, kernels, compile, None)
    return steps, sizes


def held_counts(img0, img1, params: TVL1Params = TVL1Params(), *, device=None, kernels: str | None = None,
                compile: bool | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """``(steps, held, sizes)`` on the GPU's schedule (one host check per outer iteration): ``steps`` and
    ``sizes`` as :func:`iteration_counts` (the same stops), ``held`` ``(N, levels)`` the inner iterations each
    pair stayed in its batch after it had stopped, until the next check dropped it. The kernels still visit such
    a pair, and return at once (the first kernels copied its state, 48 bytes per pixel, in each of these
    iterations)."""
    return _counts(img0, img1, params, device, kernels, compile, False)


def _counts(img0, img1, params: TVL1Params, device, kernels, compile, sync_inner):
    from actrec.pipeline.tvl1.solver import _run

    _, steps, held = _run(img0, img1, params, None, device, compile, None, kernels, None, True, sync_inner)
    shape = np.shape(img0)
    sizes = pyramid_sizes(shape[-2], shape[-1], params.nscales, params.scale_step)
    return steps.cpu().numpy(), held.cpu().numpy(), sizes


def pixel_iterations(steps: np.ndarray, sizes: list[tuple[int, int]]) -> np.ndarray:
    """``(N, levels)`` pixel-iterations: the iterations per level times the level's pixels."""
    pixels = np.array([h * w for h, w in sizes], dtype=np.int64)
    return steps * pixels[None, :]


def floor_pairs_per_s(pixel_iterations_per_pair: float, bandwidth: float = H200_COPY_BANDWIDTH,
                      bytes_per_iteration: int = BYTES_PER_ITERATION) -> float:
    """The memory-bound ceiling on pairs/s of a one-pass-per-iteration solver: bandwidth over bytes per pair."""
    return bandwidth / (pixel_iterations_per_pair * bytes_per_iteration)


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created inside the mode that are still alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, list] = {}  # storage data_ptr -> [nbytes, live tensors]
        self.live = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.refs.get(ptr)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.live -= entry[0]
                del self.refs[ptr]

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0:
            return
        entry = self.refs.get(ptr)
        if entry is None:
            entry = self.refs[ptr] = [storage.nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(t, self._release, ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensors allocated by ``fn`` and alive at once (PyTorch's own temporaries inside one
    operation excepted). Works on the CPU, so a GPU schedule's memory can be measured where no GPU is."""
    mode = _LiveBytes()
    with mode:
        result = fn()
    del result
    return mode.peak


# Peak bytes per pixel (of the finest level) per pair, measured with peak_tensor_bytes on the CUDA schedule, default
# pyramid, 2 real-sized pairs (benchmarks/bench_flow.py --memory; benchmarks/RESULTS.md): PyTorch kernels 240 at
# 340x256 (280 before the remap's int32 rewrite), Triton kernels 101 at 340x256 under TRITON_INTERPRET=1 (the
# workspace: two sets of the state and the constants, 64 bytes; 152 at 128x96 before it).
_MEASURED_BYTES_PER_PIXEL_PAIR = {"torch": 240, "triton": 101}
_HEADROOM = 1.1  # the CUDA caching allocator rounds blocks up and fragments; not measured on a GPU


def bytes_per_pixel_pair(params: TVL1Params = TVL1Params(), kernels: str = "triton") -> int:
    """Device memory the solver needs per pixel per pair at its peak, for sizing batches by pixels: a batch of N
    pairs of H x W needs about ``N * H * W * bytes_per_pixel_pair(params, kernels)`` bytes. The measured peak
    plus 10% headroom; the gamma term (not OpenCV's default) adds its three planes (u3, p31, p32) and their copies."""
    extra = 3 * 4 * 3 if params.gamma != 0 else 0
    return math.ceil(_MEASURED_BYTES_PER_PIXEL_PAIR[kernels] * _HEADROOM) + extra
