"""OpenCV-exact building blocks of TV-L1 in plain PyTorch: colour conversion, pyramid resize, cubic remap,
median filter and finite differences. Each reproduces the OpenCV function it is named after (see the package
docstring); these are also the references the Triton kernels are tested against."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from actrec.errors import InputError



def to_gray(rgb):
    """RGB -> gray exactly as ``cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)``.

    numpy input (``(H, W, 3)`` or ``(N, H, W, 3)`` uint8) is converted by cv2 itself and returns uint8 numpy.
    A torch tensor is converted on its device by a bit-exact replica of OpenCV's uint8 fixed-point formula
    ``(9798 R + 19235 G + 3735 B + 16384) >> 15``
    (OpenCV 5's coefficients, checked over all 2^24 colours; OpenCV 4 used 14-bit ones) and returns a uint8 tensor ``(H, W)`` / ``(N, H, W)``.
    """
    if isinstance(rgb, torch.Tensor):
        if rgb.dtype != torch.uint8 or rgb.ndim not in (3, 4) or rgb.shape[-1] != 3:
            raise InputError(f"to_gray expects uint8 (..., H, W, 3) RGB, got {tuple(rgb.shape)} {rgb.dtype}")
        x = rgb.to(torch.int32)
        y = (x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + (1 << 14)) >> 15
        return y.to(torch.uint8)
    import cv2

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise InputError(f"to_gray expects uint8 (..., H, W, 3) RGB, got {arr.shape} {arr.dtype}")
    if arr.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)
    return np.stack([cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY) for a in arr])


# ----------------------------------------------------------------------------------------------------------------
# pyramid: cv::resize INTER_LINEAR on float32


def _cv_round(x: float) -> int:
    """cvRound / saturate_cast<int>(double): round half to even."""
    return int(round(x))


def pyramid_sizes(height: int, width: int, nscales: int, scale_step: float) -> list[tuple[int, int]]:
    """The (H, W) of each level OpenCV's TV-L1 uses, finest first; levels under 16 pixels are dropped."""
    sizes = [(int(height), int(width))]
    for _ in range(1, nscales):
        h, w = sizes[-1]
        nh, nw = _cv_round(h * scale_step), _cv_round(w * scale_step)
        if nw < 16 or nh < 16:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_taps(dst_len: int, src_len: int, scale: float, ipp: bool, clamp_weights: bool):
    """Source indices and float32 weights of INTER_LINEAR along one axis (OpenCV's ``scale_x = 1/inv_scale_x``).

    ``ipp=False``: OpenCV's own code: position rounded to float32, ``fx -= floor(fx)`` in float32; along x
    (``clamp_weights``) out-of-range taps move to the edge with weights (1, 0), along y the weights stay and the
    row indices are clamped. ``ipp=True``: Intel IPP's resize (what OpenCV's x86-64 wheels call for float
    images): position and fraction in double precision, rounded once to float32.
    """
    d = np.arange(dst_len, dtype=np.float64)
    if ipp:
        pos = (d + 0.5) * scale - 0.5
        s = np.floor(pos)
        f = pos - s
    else:
        pos = ((d + 0.5) * scale - 0.5).astype(np.float32)
        s = np.floor(pos)
        f = (pos - s.astype(np.float32)).astype(np.float32).astype(np.float64)
    s = s.astype(np.int64)
    if clamp_weights:
        f[(s < 0) | (s >= src_len - 1)] = 0.0
    i0 = np.clip(s, 0, src_len - 1)
    i1 = np.clip(s + 1, 0, src_len - 1)
    w1 = f.astype(np.float32)
    w0 = (1.0 - f).astype(np.float32) if ipp else (np.float32(1.0) - w1).astype(np.float32)
    return i0, i1, w0, w1


def _lerp_fma(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``fma(w, b - a, a)`` in float32 (the fused multiply-add emulated in float64, rounded once)."""
    return torch.addcmul(a.double(), w.double(), (b - a).double()).float()


def resize_linear(img: torch.Tensor, out_hw: tuple[int, int], scale: float | None = None, *, ipp: bool = True) -> torch.Tensor:
    """``cv::resize(img, INTER_LINEAR)`` of float32 ``(..., H, W)`` to ``out_hw``; horizontal pass first.

    ``scale`` given: OpenCV's ``resize(src, Size(), scale, scale)``, whose pixel map uses ``1/scale`` (not the
    ratio of the rounded sizes); ``None``: ``resize(src, dsize)``, whose map uses ``src/dst``.
    ``ipp=True`` (default) reproduces the Intel IPP path that the opencv-python x86-64 wheels take for float32
    images: ``a + w (b - a)`` with one rounding (FMA) and double-precision weights, bit-exact in tests;
    ``ipp=False`` reproduces OpenCV's own C++ path (``a w0 + b w1``, float32 weights), for builds without IPP.
    """
    h, w = img.shape[-2:]
    oh, ow = out_hw
    if scale is not None:
        sx = sy = 1.0 / scale
    else:
        sx, sy = 1.0 / (ow / w), 1.0 / (oh / h)
    dev = img.device
    x0, x1, wx0, wx1 = (torch.from_numpy(a).to(dev) for a in _linear_taps(ow, w, sx, ipp, True))
    y0, y1, wy0, wy1 = (torch.from_numpy(a).to(dev) for a in _linear_taps(oh, h, sy, ipp, ipp))
    if ipp:
        tmp = _lerp_fma(img.index_select(-1, x0), img.index_select(-1, x1), wx1)
        return _lerp_fma(tmp.index_select(-2, y0), tmp.index_select(-2, y1), wy1[:, None])
    tmp = img.index_select(-1, x0) * wx0 + img.index_select(-1, x1) * wx1
    return tmp.index_select(-2, y0) * wy0[:, None] + tmp.index_select(-2, y1) * wy1[:, None]


# ----------------------------------------------------------------------------------------------------------------
# cv::remap INTER_CUBIC, BORDER_CONSTANT 0


def _cubic_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """Keys cubic weights (a = -0.75) of the taps at offsets -1, 0, 1, 2 for fractions t in [0, 1), float32,
    as polynomials in t (the float32 form closest to ``cv2.remap`` among those tried)."""
    t2 = t * t
    t3 = t2 * t
    return [(-0.75 * t3 + 1.5 * t2) - 0.75 * t, (1.25 * t3 - 2.25 * t2) + 1.0,
            (-1.25 * t3 + 1.5 * t2) + 0.75 * t, 0.75 * t3 - 0.75 * t2]


def remap_cubic(src: torch.Tensor, map_x: torch.Tensor, map_y: torch.Tensor) -> torch.Tensor:
    """``cv::remap(src, map_x, map_y, INTER_CUBIC, BORDER_CONSTANT, 0)`` for float32 ``src (N, C, H, W)``.

    Maps are ``(N, H', W')`` float32 absolute source coordinates (pixel centres at integers). The 4x4 Keys cubic
    (a = -0.75) weights are evaluated at the exact fractional position and taps outside the image count as 0
    (a sample fully outside gives 0). That is what OpenCV 5 does for float maps: it hands them to Intel IPP's
    ``ippiRemap`` (OpenCV 4's own ``remapBicubic`` rounded positions to 1/32 pixel instead). IPP's exact
    arithmetic is not public: this agrees with ``cv2.remap`` bit for bit on about half of the outputs and
    within a few float32 ulps on the rest (an FMA-emulating variant gained ~0.3% parity on the hardest pairs
    for twice the cost, so plain float32 it is).
    """
    n, c, h, w = src.shape
    oh, ow = map_x.shape[-2:]
    lim = float(1 << 22)  # far outside any image; keeps the int conversion defined for wild flows
    fx = map_x.clamp(-lim, lim).expand(n, oh, ow)
    fy = map_y.clamp(-lim, lim).expand(n, oh, ow)
    x0 = torch.floor(fx)
    y0 = torch.floor(fy)
    cx = [k.reshape(-1, 1) for k in _cubic_weights(fx - x0)]
    cy = [k.reshape(-1, 1) for k in _cubic_weights(fy - y0)]
    # zero-padded source, one row of c values per pixel: any tap outside [0, W) x [0, H) is clamped onto the
    # zero border. Indices are int32 (int64 only past 2^31 padded pixels) and made one tap at a time, so the
    # remap's peak is a few planes per pixel, not the 16 int64 index planes a gather per tap would hold.
    pw, plane = w + 2, (h + 2) * (w + 2)
    flat = F.pad(src, (1, 1, 1, 1)).permute(0, 2, 3, 1).reshape(n * plane, c)
    itype = torch.int32 if n * plane < 2**31 else torch.int64
    ix = x0.to(itype).sub_(1)  # first tap
    iy = y0.to(itype).sub_(1)
    del fx, fy, x0, y0
    first = (torch.arange(n, device=src.device, dtype=itype) * plane).view(n, 1, 1)
    total = None
    for ky in range(4):
        rows = (iy + ky).clamp_(-1, h).add_(1).mul_(pw).add_(first)
        row = None
        for kx in range(4):
            idx = (ix + kx).clamp_(-1, w).add_(1).add_(rows).reshape(-1)
            val = flat.index_select(0, idx) * cx[kx]
            row = val if row is None else row + val
        row = row * cy[ky]
        total = row if total is None else total + row
    return total.view(n, oh, ow, c).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# median filter (cv::medianBlur on float32: exact median, BORDER_REPLICATE)


def _batcher_network(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort comparators for n (a power of 2) wires."""
    comps = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        comps.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return comps


def _sort_network(m: int) -> list[tuple[int, int]]:
    """A sorting network for m wires (Batcher on the next power of 2, comparators on padding wires dropped)."""
    n = 1
    while n < m:
        n *= 2
    return [(i, j) for i, j in _batcher_network(n) if j < m]


_median_net_cache: dict = {}


def _median_network(k: int):
    """Comparators that leave the median of a k x k window on wire (k*k)//2, given that each column (k values,
    wires ``k*c .. k*c+k-1``) arrives sorted. Built from Batcher's network by dropping every comparator that never
    swaps on any 0/1 input with sorted columns (exact by the 0-1 principle) and every comparator whose outputs the
    median does not depend on. Returns (column sorting network, [(i, j, need_min, need_max)])."""
    if k in _median_net_cache:
        return _median_net_cache[k]
    import itertools

    m = k * k
    n = 1
    while n < m:
        n *= 2
    cols = []
    for zeros in itertools.product(range(k + 1), repeat=k):
        row = []
        for z in zeros:
            row += [0] * z + [1] * (k - z)
        cols.append(row + [1] * (n - m))
    X = np.array(cols, dtype=np.int8)
    kept = []
    for i, j in _batcher_network(n):
        if (X[:, i] > X[:, j]).any():
            kept.append((i, j))
            lo, hi = np.minimum(X[:, i], X[:, j]), np.maximum(X[:, i], X[:, j])
            X[:, i], X[:, j] = lo, hi
    need = {m // 2}
    net = []
    for i, j in reversed(kept):
        a, b = i in need, j in need
        if a or b:
            net.append((i, j, a, b))
            need.update((i, j))
    net.reverse()
    assert max(max(i, j) for i, j, _, _ in net) < m  # padding wires (+inf) never take part
    _median_net_cache[k] = (_sort_network(k), net)
    return _median_net_cache[k]


def median_blur(u: torch.Tensor, ksize: int) -> torch.Tensor:
    """``cv::medianBlur(u, ksize)`` on float32 ``(N, H, W)``: exact median of the window, replicated border.

    Done with min/max comparator networks (each column of the window sorted once and shared by the k windows
    that contain it, then a pruned selection network), which is exact and much faster than sorting.
    """
    if ksize > 5:
        return _median_sort(u, ksize)
    col_net, net = _median_network(ksize)
    return _median_apply(u, ksize, tuple(col_net), tuple(net))


def _median_sort(u: torch.Tensor, ksize: int) -> torch.Tensor:
    """Median by sorting each window (any odd ksize; the networks above are built for 3 and 5)."""
    n, h, w = u.shape
    r = ksize // 2
    padded = F.pad(u.unsqueeze(1), (r, r, r, r), mode="replicate").squeeze(1)
    win = padded.unfold(1, ksize, 1).unfold(2, ksize, 1).reshape(n, h, w, ksize * ksize)
    return win.median(dim=-1).values


def _median_apply(u: torch.Tensor, ksize: int, col_net: tuple, net: tuple) -> torch.Tensor:
    n, h, w = u.shape
    r = ksize // 2
    padded = F.pad(u.unsqueeze(1), (r, r, r, r), mode="replicate").squeeze(1)
    col = [padded[:, i:i + h, :] for i in range(ksize)]  # vertical neighbours, (N, H, W + 2r)
    for i, j in col_net:
        col[i], col[j] = torch.minimum(col[i], col[j]), torch.maximum(col[i], col[j])
    wires = [col[rank][:, :, c:c + w] for c in range(ksize) for rank in range(ksize)]
    for i, j, need_min, need_max in net:
        a, b = wires[i], wires[j]
        if need_min:
            wires[i] = torch.minimum(a, b)
        if need_max:
            wires[j] = torch.maximum(a, b)
    return wires[(ksize * ksize) // 2]


# ----------------------------------------------------------------------------------------------------------------
# finite differences


def centered_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV TV-L1's centredGradient: 0.5 (f[x+1] - f[x-1]) inside, 0.5 (one-sided difference) on the border."""
    dx = torch.empty_like(img)
    dy = torch.empty_like(img)
    dx[..., :, 1:-1] = 0.5 * (img[..., :, 2:] - img[..., :, :-2])
    dx[..., :, 0] = 0.5 * (img[..., :, 1] - img[..., :, 0])
    dx[..., :, -1] = 0.5 * (img[..., :, -1] - img[..., :, -2])
    dy[..., 1:-1, :] = 0.5 * (img[..., 2:, :] - img[..., :-2, :])
    dy[..., 0, :] = 0.5 * (img[..., 1, :] - img[..., 0, :])
    dy[..., -1, :] = 0.5 * (img[..., -1, :] - img[..., -2, :])
    return dx, dy



def divergence(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """OpenCV TV-L1's divergence: backward differences with v = 0 outside (first row/column), in OpenCV's
    operation order. Functional (no in-place writes), so ``torch.compile`` can fuse it."""
    left = F.pad(v1[..., :, :-1], (1, 0))
    top = F.pad(v2[..., :-1, :], (0, 0, 1, 0))
    d = (v1 - left) + (v2 - top)
    # first column, rows >= 1: OpenCV adds in the order (v1 + v2) - v2[y-1]
    c0 = (v1[..., 1:, :1] + v2[..., 1:, :1]) - v2[..., :-1, :1]
    c0 = F.pad(c0, (0, 0, 1, 0))
    col = torch.arange(d.shape[-1], device=d.device) == 0
    row = torch.arange(d.shape[-2], device=d.device)[:, None] > 0
    return torch.where(col & row, c0, d)


def forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV TV-L1's forwardGradient: forward differences, 0 on the last column (x) and the last row (y)."""
    ux = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    uy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return ux, uy

