"""Appearance: masks and textures, pure functions of a side length (and a generator for the random parts)."""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from actrec.pipeline.synth.classes import Appearance


def _box_mask(side: int) -> np.ndarray:
    mask = np.zeros((side, side), np.float32)
    mask[1:-1, 1:-1] = 1.0
    return mask


def _disc_mask(side: int) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    centre = (side - 1) / 2.0
    radius = side / 2.0 - 1.0
    return np.clip(radius + 0.5 - np.hypot(xx - centre, yy - centre), 0.0, 1.0)  # one-pixel anti-aliased rim


def _star_mask(side: int, points: int = 5, inner: float = 0.5) -> np.ndarray:
    angles = np.pi * np.arange(2 * points) / points - np.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner) * (side / 2.0 - 1.0)
    shift = 4  # sub-pixel vertex precision of cv2.fillPoly
    vertices = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1) + (side - 1) / 2.0
    mask = np.zeros((side, side), np.uint8)
    cv2.fillPoly(mask, [np.round(vertices * (1 << shift)).astype(np.int32)], 255, cv2.LINE_AA, shift)
    return mask.astype(np.float32) / 255.0


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark and a bright random colour, so every pattern keeps a strong contrast."""
    return rng.uniform(0, 110, 3).astype(np.float32), rng.uniform(145, 255, 3).astype(np.float32)


def _blend(dark: np.ndarray, bright: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return dark + (bright - dark) * weight[..., None]


def _blobs_texture(rng: np.random.Generator, side: int) -> np.ndarray:
    cells = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
    return np.clip(cv2.resize(cells, (side, side), interpolation=cv2.INTER_CUBIC), 0, 255)


def _stripes_texture(rng: np.random.Generator, side: int) -> np.ndarray:
    dark, bright = _two_colours(rng)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    period = side / rng.uniform(3.0, 4.0)
    wave = np.sin(2 * np.pi * (xx + yy * rng.uniform(-0.3, 0.3)) / period + rng.uniform(0, 2 * np.pi))
    return _blend(dark, bright, np.clip(0.5 + 2.0 * wave, 0.0, 1.0))  # steep sinusoid: crisp, anti-aliased edges


def _checker_texture(rng: np.random.Generator, side: int) -> np.ndarray:
    dark, bright = _two_colours(rng)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    period = side / rng.uniform(3.0, 4.0)
    phase = rng.uniform(0, 2 * np.pi, 2)
    wave = np.sin(2 * np.pi * xx / period + phase[0]) * np.sin(2 * np.pi * yy / period + phase[1])
    return _blend(dark, bright, np.clip(0.5 + 2.0 * wave, 0.0, 1.0))


SHAPES: dict[str, Callable[[int], np.ndarray]] = {"box": _box_mask, "disc": _disc_mask, "star": _star_mask}
TEXTURES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "blobs": _blobs_texture, "stripes": _stripes_texture, "checker": _checker_texture}


def make_sprite(appearance: Appearance, rng: np.random.Generator, side: int) -> np.ndarray:
    """The object as a premultiplied RGBA float32 sprite ``[side, side, 4]`` (colour * alpha, alpha in 0..1)."""
    alpha = SHAPES[appearance.shape](side)
    colour = TEXTURES[appearance.texture](rng, side)
    return np.concatenate([colour * alpha[..., None], alpha[..., None]], axis=2).astype(np.float32)
