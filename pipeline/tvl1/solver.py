"""The batched TV-L1 driver: OpenCV's coarse-to-fine ``calc`` and per-level ``procOneScale`` for N pairs at once,
running whichever kernel set :mod:`.backend` provides (PyTorch eager/compiled, or Triton)."""

from __future__ import annotations

import os

import numpy as np
import torch

from actrec.errors import DeviceError, InputError
from actrec.pipeline.tvl1.backend import Log, _default_compile, default_kernels, get_kernels
from actrec.pipeline.tvl1.iteration import _STATE2, _STATE3, _WARP_CONSTS
from actrec.pipeline.tvl1.ops import _median_network, _median_sort, centered_gradient, pyramid_sizes, resize_linear
from actrec.pipeline.tvl1.params import _FLT_EPSILON, TVL1Params, _Consts, _f32


def _warp_constants(I0, src, u1, u2, grid_x, grid_y, kernels) -> dict:
    """Warp I1 and its gradients by the current flow (buildFlowMap + remap) and compute |grad I1w|^2, rho_c."""
    warped = kernels("remap", src, grid_x + u1, grid_y + u2)
    I1w, I1wx, I1wy = warped.unbind(1)
    grad = I1wx * I1wx + I1wy * I1wy
    rho_c = ((I1w - I1wx * u1) - I1wy * u2) - I0
    grad_safe = torch.where(grad > _FLT_EPSILON, grad, torch.full_like(grad, float("inf")))
    # fresh dense tensors (a slice of the stacked result keeps the stride of the stack, which would make
    # torch.compile specialise on it)
    return {"I1wx": I1wx.clone(memory_format=torch.contiguous_format),
            "I1wy": I1wy.clone(memory_format=torch.contiguous_format), "rho_c": rho_c, "grad_safe": grad_safe}


def _take(d: dict, idx: torch.Tensor | None) -> dict:
    return dict(d) if idx is None else {k: v.index_select(0, idx) for k, v in d.items()}


def _put(full: dict, sub: dict, idx: torch.Tensor | None) -> None:
    for k, v in sub.items():
        full[k] = v if idx is None else full[k].index_copy(0, idx, v)


def _blocks(inner: int, max_block: int = 3) -> list[int]:
    """Split the inner iterations into blocks run per call: the largest divisor of ``inner`` up to ``max_block``
    when that is at least half of it (one compiled variant), else ``max_block``-sized blocks and a remainder."""
    best = max(d for d in range(1, min(inner, max_block) + 1) if inner % d == 0)
    if best * 2 >= min(inner, max_block):
        return [best] * (inner // best)
    return [max_block] * (inner // max_block) + [inner % max_block]


def solve_level(
    I0: torch.Tensor,
    I1: torch.Tensor,
    u1: torch.Tensor,
    u2: torch.Tensor,
    u3: torch.Tensor | None,
    params: TVL1Params,
    *,
    sync_inner: bool | None = None,
    kernels=None,
    steps: torch.Tensor | None = None,
    held: torch.Tensor | None = None,
):
    """OpenCV's ``procOneScale`` for a batch: refine the flow (u1, u2[, u3]) ``(N, H, W)`` on one pyramid level.

    Per warp: warp I1 by the flow, then up to ``outer_iterations`` x (median filter, ``inner_iterations``
    primal-dual steps), each pair stopping on its own when its update falls under ``epsilon^2 H W``. Pairs that
    stopped are frozen on the device and dropped from the batch at the next host check: after every block of
    iterations when ``sync_inner`` (default on CPU, where a check costs nothing), else once per outer iteration
    (default on CUDA). ``steps`` ``(N,)`` int64, if given, is incremented by the inner iterations each pair
    ran before it stopped (blocks of one iteration then, so the count is exact; the flow does not change), and
    ``held`` ``(N,)``, if given, by the iterations a stopped pair stayed in the working batch until the next host
    check dropped it (on the GPU, iterations whose kernels still visit the pair).
    """
    n, h, w = I0.shape
    dev = I0.device
    c = _Consts(params, h, w)
    if sync_inner is None:
        sync_inner = dev.type != "cuda"
    if kernels is None:
        kernels = get_kernels(default_kernels(dev), _default_compile(dev))
    I1x, I1y = centered_gradient(I1)
    src = torch.stack([I1, I1x, I1y], 1)
    del I1x, I1y  # only the stacked copy lives on: the peak memory is counted per pixel
    grid_x = torch.arange(w, device=dev, dtype=torch.float32).expand(h, w)
    grid_y = torch.arange(h, device=dev, dtype=torch.float32)[:, None].expand(h, w)
    names = _STATE3 if c.use_gamma else _STATE2
    state = {"u1": u1, "u2": u2}
    if c.use_gamma:
        state["u3"] = u3 if u3 is not None else torch.zeros_like(u1)
    for k in names:
        if k.startswith("p"):
            state[k] = torch.zeros_like(u1)
    eps = torch.tensor(c.scaled_eps, dtype=torch.float64, device=dev)
    scalars = (c.l_t, c.theta, c.taut, c.gamma) if c.use_gamma else (c.l_t, c.theta, c.taut)
    block = "block3" if c.use_gamma else "block2"
    ksize = params.median_filtering
    if 1 < ksize <= 5:
        col_net, net = _median_network(ksize)
        col_net, net = tuple(col_net), tuple(net)
    blocks = [1] * params.inner_iterations if steps is not None else _blocks(params.inner_iterations,
                                                                             getattr(kernels, "max_block", 3))

    for _warp in range(params.warps):
        wconst = _warp_constants(I0, src, state["u1"], state["u2"], grid_x, grid_y, kernels)
        idx = None  # rows of `state` in the working batch `sub` (None: all, no copies)
        sub, wsub = dict(state), dict(wconst)
        active = torch.ones(n, dtype=torch.bool, device=dev)

        def compact():
            nonlocal idx, sub, wsub, active
            keep = active.nonzero().flatten()
            _put(state, sub, idx)
            idx = keep if idx is None else idx.index_select(0, keep)
            sub, wsub = _take(state, idx), _take(wconst, idx)
            active = torch.ones(keep.numel(), dtype=torch.bool, device=dev)
            return keep.numel()

        remaining = n
        for _outer in range(params.outer_iterations):
            if not sync_inner and int(active.sum()) < active.numel():  # one host sync per outer iteration
                remaining = compact()
            if remaining == 0:
                break
            if ksize > 5:  # medianBlur of u1 and u2 at the start of every outer iteration
                sub["u1"], sub["u2"] = _median_sort(sub["u1"], ksize), _median_sort(sub["u2"], ksize)
            elif ksize > 1:
                sub["u1"] = kernels("median", sub["u1"], ksize, col_net, net)
                sub["u2"] = kernels("median", sub["u2"], ksize, col_net, net)
            for k in blocks:
                if steps is not None:
                    rows = torch.arange(n, device=dev) if idx is None else idx
                    steps.index_add_(0, rows, active.long())
                    if held is not None:
                        held.index_add_(0, rows, (~active).long())
                out = kernels(block, *(sub[name] for name in names), *(wsub[name] for name in _WARP_CONSTS),
                              active, *scalars, eps, k)
                sub = dict(zip(names, out[:-1]))
                active = out[-1]
                if sync_inner and int(active.sum()) < active.numel():
                    remaining = compact()
                    if remaining == 0:
                        break
            if remaining == 0:
                break
        _put(state, sub, idx)
    return state["u1"], state["u2"], state.get("u3")


# ----------------------------------------------------------------------------------------------------------------
# public entry point


_CPU_CHUNK = 4  # pairs per solver call on CPU: ~7 MB of state per 340x256 pair, so 4 pairs stay near the L3 cache


def _as_batch(img, name: str) -> torch.Tensor:
    if isinstance(img, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(img))
    elif isinstance(img, torch.Tensor):
        t = img
    else:
        raise InputError(f"{name} must be a numpy array or a torch tensor, got {type(img).__name__}")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise InputError(f"{name} must be grayscale (H, W) or (N, H, W), got shape {tuple(t.shape)}; "
                         "convert colour frames with cv2.cvtColor(..., cv2.COLOR_RGB2GRAY) first")
    if t.dtype == torch.uint8:
        return t.to(torch.float32)
    if t.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return t.to(torch.float32) * 255.0  # Mat::convertTo(CV_32F, 255.0), as OpenCV does for float input
    raise InputError(f"{name} must be uint8 or floating point, got {t.dtype}")


def _resolve_device(device, img0) -> torch.device:
    if device is None:
        return img0.device if isinstance(img0, torch.Tensor) else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available (torch {torch.__version__})")
    return dev


def tvl1_flow(
    img0,
    img1,
    params: TVL1Params = TVL1Params(),
    *,
    initial_flow=None,
    device=None,
    compile: bool | None = None,
    chunk: int | None = None,
    kernels: str | None = None,
    log: Log | None = None,
) -> torch.Tensor:
    """TV-L1 optical flow from ``img0`` to ``img1`` for N pairs at once, as ``cv2.optflow.DualTVL1OpticalFlow``.

    ``img0``/``img1``: grayscale ``(H, W)`` or ``(N, H, W)``, numpy or torch, uint8 (0..255) or float in [0, 1]
    (float input is scaled by 255, as OpenCV does). Convert colour with ``cv2.cvtColor(rgb, COLOR_RGB2GRAY)`` or
    :func:`to_gray`. ``initial_flow`` ``(H, W, 2)`` / ``(N, H, W, 2)`` is used with
    ``params.use_initial_flow=True`` (and required then). ``device``: where to compute (default: the device of
    ``img0`` when it is a tensor, else CPU). ``kernels``: ``"triton"`` (fused Triton kernels, the default on
    CUDA) or ``"torch"`` (plain PyTorch, the default elsewhere); env ACTREC_TVL1_KERNELS overrides the default.
    ``compile``: fuse the PyTorch iteration with ``torch.compile`` (default: on for CPU, off for CUDA; env
    ACTREC_TVL1_COMPILE=0/1 overrides the default); the result does not depend on it.
    ``chunk``: pairs solved together (default: all on CUDA; 4 on CPU, where a batch whose working set outgrows the
    caches runs slower per pair than a few pairs at a time); the result does not depend on it either.
    ``log``: receives one line when kernels are compiled for the first time in the process (default: stderr).

    Returns float32 ``(N, H, W, 2)`` on ``device``: per pixel of img0 the displacement (dx, dy) in pixels to its
    match in img1 (channel 0 = x), OpenCV's convention.
    """
    return _run(img0, img1, params, initial_flow, device, compile, chunk, kernels, log, None)[0]


def _run(img0, img1, params: TVL1Params, initial_flow, device, compile, chunk, kernels, log,
         count_steps: bool | None, sync_inner: bool | None = None):
    """:func:`tvl1_flow` returning ``(flow, steps, held)``; when ``count_steps``, ``steps`` ``(N, levels)`` int64
    inner iterations per pair and level (finest first) and ``held`` the iterations stopped pairs stayed in their
    batch (:func:`solve_level`; ``sync_inner`` chooses the host-check schedule, default the device's), else
    None."""
    dev = _resolve_device(device, img0)
    I0 = _as_batch(img0, "img0").to(dev)
    I1 = _as_batch(img1, "img1").to(dev)
    if I0.shape != I1.shape:
        raise InputError(f"img0 and img1 differ in shape: {tuple(I0.shape)} vs {tuple(I1.shape)}")
    n, h, w = I0.shape
    if h < 3 or w < 3:
        raise InputError(f"images must be at least 3x3 pixels, got {h}x{w}")
    flow0 = _initial_flow(initial_flow, params, n, h, w, dev)
    kset = get_kernels(kernels or default_kernels(dev), _default_compile(dev) if compile is None else bool(compile),
                       log)
    if kset.name == "triton" and dev.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise DeviceError(f"kernels='triton' runs on CUDA (or on the CPU under TRITON_INTERPRET=1), not on {dev}")
    if chunk is None:
        chunk = _CPU_CHUNK if dev.type == "cpu" else n
    chunk = max(1, int(chunk))
    levels = len(pyramid_sizes(h, w, params.nscales, params.scale_step))
    steps = torch.zeros((n, levels), dtype=torch.int64, device=dev) if count_steps else None
    held = torch.zeros_like(steps) if count_steps else None
    with torch.no_grad():
        parts = [_tvl1_pyramid(I0[i:i + chunk], I1[i:i + chunk], params,
                               None if flow0 is None else flow0[i:i + chunk], kset,
                               None if steps is None else steps[i:i + chunk],
                               None if held is None else held[i:i + chunk], sync_inner)
                 for i in range(0, n, chunk)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), steps, held


def _initial_flow(initial_flow, params: TVL1Params, n: int, h: int, w: int, dev) -> torch.Tensor | None:
    if not params.use_initial_flow:
        if initial_flow is not None:
            raise InputError("initial_flow given but params.use_initial_flow is False")
        return None
    if initial_flow is None:
        raise InputError("params.use_initial_flow is set but no initial_flow was given")
    f0 = initial_flow if isinstance(initial_flow, torch.Tensor) else torch.from_numpy(np.asarray(initial_flow))
    f0 = f0.to(device=dev, dtype=torch.float32)
    if f0.ndim == 3:
        f0 = f0.unsqueeze(0).expand(n, h, w, 2)
    if tuple(f0.shape) != (n, h, w, 2):
        raise InputError(f"initial_flow must have shape ({h}, {w}, 2) or ({n}, {h}, {w}, 2), got {tuple(f0.shape)}")
    return f0


def _tvl1_pyramid(I0: torch.Tensor, I1: torch.Tensor, params: TVL1Params, flow0: torch.Tensor | None,
                  kernels, steps: torch.Tensor | None = None, held: torch.Tensor | None = None,
                  sync_inner: bool | None = None) -> torch.Tensor:
    """Coarse-to-fine driver (OpenCV's ``calc``): build the pyramids, solve each level, upsample the flow.
    ``steps`` and ``held`` ``(N, levels)``: the counts of :func:`solve_level` per pair and level are added to them
    when given. A kernel set with its own pyramid (the Triton solver) runs it when it supports ``params`` and
    nothing is counted."""
    if steps is None and getattr(kernels, "supports", lambda _: False)(params):
        return kernels.pyramid(I0, I1, params, flow0)  # the Triton solver: every level on its workspace
    n, h, w = I0.shape
    sizes = pyramid_sizes(h, w, params.nscales, params.scale_step)
    step = params.scale_step
    I0s, I1s = [I0], [I1]
    for s in range(1, len(sizes)):
        I0s.append(resize_linear(I0s[-1], sizes[s], scale=step))
        I1s.append(resize_linear(I1s[-1], sizes[s], scale=step))
    if flow0 is not None:
        u1 = flow0[..., 0].contiguous()
        u2 = flow0[..., 1].contiguous()
        down = _f32(step)
        for s in range(1, len(sizes)):
            u1 = resize_linear(u1, sizes[s], scale=step) * down
            u2 = resize_linear(u2, sizes[s], scale=step) * down
    else:
        u1 = torch.zeros((n,) + sizes[-1], device=I0.device, dtype=torch.float32)
        u2 = torch.zeros_like(u1)
    u3 = torch.zeros_like(u1) if params.gamma != 0 else None
    up = _f32(1.0 / step)
    for s in range(len(sizes) - 1, -1, -1):
        u1, u2, u3 = solve_level(I0s[s], I1s[s], u1, u2, u3, params, kernels=kernels, sync_inner=sync_inner,
                                 steps=None if steps is None else steps[:, s],
                                 held=None if held is None else held[:, s])
        if s == 0:
            break
        u1 = resize_linear(u1, sizes[s - 1]) * up
        u2 = resize_linear(u2, sizes[s - 1]) * up
        if u3 is not None:
            u3 = resize_linear(u3, sizes[s - 1])
    return torch.stack([u1, u2], dim=-1)
