"""Optical-flow files and pictures: Middlebury ``.flo`` I/O, the Middlebury colour wheel and uint8 quantisation.

* ``.flo`` (Middlebury): float32 tag 202021.25 ("PIEH"), int32 width, int32 height, then H*W interleaved
  (u, v) float32 values, row by row, little-endian.
* Colour coding: the colour wheel of Baker et al. ("A Database and Evaluation Methodology for Optical Flow"),
  as in the Middlebury ``flowToColor``/``computeColor`` code: hue = direction, saturation = magnitude.
* Quantisation (the two-stream / TSN convention for storing flow as 8-bit images): clip to [-bound, bound] and map
  linearly to 0..255, ``q = round((f + bound) * 255 / (2 * bound))``. Zero flow maps to 127.5, stored as 128
  (round half to even), so 128 means ~0 flow; 0 means <= -bound and 255 means >= +bound. One step is
  ``2 * bound / 255`` pixels and :func:`dequantize_flow` is off by at most half a step (``bound / 255``) for values
  inside the bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actrec.errors import InputError

__all__ = ["FLO_TAG", "write_flo", "read_flo", "flow_to_color", "quantize_flow", "dequantize_flow"]

FLO_TAG = np.float32(202021.25)
_UNKNOWN_FLOW = 1e9


def _as_numpy(flow) -> np.ndarray:
    if hasattr(flow, "detach"):  # torch tensor
        flow = flow.detach().cpu().numpy()
    return np.asarray(flow)


def write_flo(path, flow_hw2) -> None:
    """Write one flow field ``(H, W, 2)`` (channel 0 = x) as a Middlebury ``.flo`` file."""
    flow = _as_numpy(flow_hw2)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f"write_flo expects a (H, W, 2) flow, got shape {flow.shape} for {path}")
    h, w = flow.shape[:2]
    with open(path, "wb") as f:
        np.array([FLO_TAG], "<f4").tofile(f)  # 202021.25 = b"PIEH"
        np.array([w, h], "<i4").tofile(f)
        np.ascontiguousarray(flow, dtype="<f4").tofile(f)


def read_flo(path) -> np.ndarray:
    """Read a Middlebury ``.flo`` file into float32 ``(H, W, 2)``; a bad tag or size raises InputError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read flow file {path}: {exc.strerror or exc}") from exc
    if len(data) < 12:
        raise InputError(f"{path}: not a .flo file (only {len(data)} bytes, the header alone is 12)")
    tag = np.frombuffer(data, "<f4", 1, 0)[0]
    if tag != FLO_TAG:
        raise InputError(f"{path}: not a .flo file (tag {tag!r}, expected {FLO_TAG})")
    w, h = (int(v) for v in np.frombuffer(data, "<i4", 2, 4))
    if w <= 0 or h <= 0 or w > 1_000_000 or h > 1_000_000:
        raise InputError(f"{path}: bad .flo size {w}x{h}")
    expected = 12 + 8 * w * h
    if len(data) != expected:
        raise InputError(f"{path}: .flo file of {w}x{h} should be {expected} bytes, found {len(data)}")
    return np.frombuffer(data, "<f4", 2 * w * h, 12).reshape(h, w, 2).astype(np.float32)


# Segments of the wheel: (hues, channel held at 255, channel that ramps, whether it ramps up). R=0, G=1, B=2.
_WHEEL_SEGMENTS = ((15, 0, 1, True), (6, 1, 0, False), (4, 1, 2, True), (11, 2, 1, False), (13, 2, 0, True),
                   (6, 0, 2, False))


def _color_wheel() -> np.ndarray:
    """The 55-colour Middlebury wheel (RY 15, YG 6, GC 4, CB 11, BM 13, MR 6), values 0..255, float64."""
    blocks = []
    for length, full, ramp, rising in _WHEEL_SEGMENTS:
        step = np.floor(255 * np.arange(length) / length)
        block = np.zeros((length, 3))
        block[:, full] = 255
        block[:, ramp] = step if rising else 255 - step
        blocks.append(block)
    return np.concatenate(blocks)


def flow_to_color(flow_hw2, max_magnitude: float | None = None) -> np.ndarray:
    """Middlebury colour coding of a flow ``(H, W, 2)`` as uint8 RGB ``(H, W, 3)``.

    The magnitude is divided by ``max_magnitude`` (default: the largest finite magnitude in the field), so full
    saturation = that magnitude; larger vectors are darkened (x 0.75), as in the Middlebury code. Unknown
    (|value| > 1e9) or non-finite vectors are black.
    """
    flow = _as_numpy(flow_hw2).astype(np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f"flow_to_color expects a (H, W, 2) flow, got shape {flow.shape}")
    u, v = flow[..., 0].copy(), flow[..., 1].copy()
    unknown = ~np.isfinite(u) | ~np.isfinite(v) | (np.abs(u) > _UNKNOWN_FLOW) | (np.abs(v) > _UNKNOWN_FLOW)
    u[unknown] = 0
    v[unknown] = 0
    rad = np.sqrt(u * u + v * v)
    if max_magnitude is None:
        max_magnitude = float(rad.max()) if rad.size else 0.0
    if max_magnitude <= 0:
        max_magnitude = 1.0
    u /= max_magnitude
    v /= max_magnitude
    rad = np.sqrt(u * u + v * v)
    wheel = _color_wheel()
    ncols = wheel.shape[0]
    a = np.arctan2(-v, -u) / np.pi
    fk = (a + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % ncols
    f = fk - k0
    img = np.zeros(u.shape + (3,), np.uint8)
    for i in range(3):
        col = (1 - f) * wheel[k0, i] / 255.0 + f * wheel[k1, i] / 255.0
        inside = rad <= 1
        col[inside] = 1 - rad[inside] * (1 - col[inside])
        col[~inside] *= 0.75
        img[..., i] = np.floor(255 * col).astype(np.uint8)
    img[unknown] = 0
    return img


def quantize_flow(flow, bound: float = 20.0) -> np.ndarray:
    """Flow (any shape) -> uint8: clip to [-bound, bound], ``round((f + bound) * 255 / (2 * bound))``.

    128 is ~0 flow (127.5 rounds half to even); 0 and 255 are the clipped extremes.
    """
    if not bound > 0:
        raise InputError(f"quantisation bound must be > 0, got {bound}")
    scaled = (np.clip(_as_numpy(flow), -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.rint(scaled).astype(np.uint8)


def dequantize_flow(q, bound: float = 20.0) -> np.ndarray:
    """uint8 -> float32 flow, the inverse of :func:`quantize_flow`: ``q * 2 * bound / 255 - bound``."""
    if not bound > 0:
        raise InputError(f"quantisation bound must be > 0, got {bound}")
    return _as_numpy(q).astype(np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def read_gray_image(path) -> np.ndarray:
    """Read an image file (any format ``cv2.imread`` reads) as uint8 grayscale, converting colour the way OpenCV
    does (``IMREAD_COLOR`` then ``COLOR_BGR2GRAY``); an unreadable file raises InputError naming it."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read image {path} (not an image format OpenCV can decode)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


def write_color_png(path, flow_hw2, max_magnitude: float | None = None) -> None:
    """Write :func:`flow_to_color` of a flow as an image file (PNG recommended)."""
    import cv2

    rgb = flow_to_color(flow_hw2, max_magnitude)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise InputError(f"cannot write image {path} (unknown extension or unwritable folder)")
