"""Flow files and flow encodings: Middlebury ``.flo``, the colour-wheel picture, and the field's uint8 quantisation.

Quantisation (the TSN/mmaction2/denseflow convention): a flow value ``f`` in pixels is clipped to ``[-bound, bound]``
and mapped linearly to ``q = round((f + bound) * 255 / (2 * bound))`` in 0..255; zero flow is 127.5, stored as 128.
Dequantisation is the inverse map, exact to half a step (``bound / 255``) inside the bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actrec.errors import InputError

FLO_TAG = np.float32(202021.25)


def quantize_flow(flow: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """uint8 codes of a float flow array (any shape)."""
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.rint(scaled).astype(np.uint8)


def dequantize_flow(codes: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """Float32 pixels of uint8 flow codes (any shape)."""
    return codes.astype(np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def write_flo(path: str | Path, flow: np.ndarray) -> None:
    """Write a ``(H, W, 2)`` flow as a Middlebury .flo file (tag 202021.25, int32 W, H, then u, v interleaved)."""
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f"{path}: flow must have shape (H, W, 2), got {flow.shape}")
    with open(path, "wb") as f:
        f.write(FLO_TAG.tobytes())
        f.write(np.array([flow.shape[1], flow.shape[0]], dtype=np.int32).tobytes())
        f.write(np.ascontiguousarray(flow).tobytes())


def read_flo(path: str | Path) -> np.ndarray:
    """Read a Middlebury .flo file as float32 ``(H, W, 2)``; a wrong tag or size raises InputError naming the file."""
    data = Path(path).read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], np.float32)[0] != FLO_TAG:
        raise InputError(f"{path}: not a Middlebury .flo file (bad tag)")
    width, height = (int(v) for v in np.frombuffer(data[4:12], np.int32))
    if width <= 0 or height <= 0 or len(data) != 12 + width * height * 8:
        raise InputError(f"{path}: .flo header says {width}x{height} but the file holds {len(data) - 12} bytes of flow")
    return np.frombuffer(data[12:], np.float32).reshape(height, width, 2).copy()


def _colour_wheel() -> np.ndarray:
    """The Middlebury colour wheel: 55 hues (red-yellow-green-cyan-blue-magenta) as float RGB in 0..255."""
    segments = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)), (4, (0, 255, 0), (0, 255, 255)),
                (11, (0, 255, 255), (0, 0, 255)), (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]
    rows = [np.array(a) + (np.array(b) - np.array(a)) * (i / n) for n, a, b in segments for i in range(n)]
    return np.stack(rows).astype(np.float64)


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """uint8 RGB picture of a ``(H, W, 2)`` flow: hue is direction, saturation is magnitude (normalised by
    ``max_magnitude``, default the largest magnitude in the flow)."""
    u, v = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    magnitude = np.hypot(u, v)
    scale = max_magnitude if max_magnitude is not None else max(float(magnitude.max()), 1e-9)
    wheel = _colour_wheel()
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (len(wheel) - 1)  # 0 .. n-1 around the wheel
    k0 = np.floor(position).astype(int)
    k1 = (k0 + 1) % len(wheel)
    frac = (position - k0)[..., None]
    colour = ((1 - frac) * wheel[k0] + frac * wheel[k1]) / 255.0
    radius = np.clip(magnitude / scale, 0, 1)[..., None]
    colour = 1 - radius * (1 - colour)  # saturation grows with magnitude; zero flow is white
    return np.rint(colour * 255).astype(np.uint8)
