"""Nuisances and poses: the random draws of one video index, shared by every class, and the object's pose per frame."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from actrec.pipeline.synth.classes import Motion, SceneParams


# Random streams: every draw comes from SeedSequence([seed, video index, stream]), so a video's content depends only
# on (seed, class, index) and never on how many videos are generated.
_SCENE_STREAM, _TEXTURE_STREAM, _SPLIT_STREAM = 0, 1, 2


@dataclass(frozen=True)
class Nuisance:
    """The random draws of one video index, shared by every class (so classes differ only in their factor)."""

    background: np.ndarray = field(repr=False)  # float32 [H + 2m, W + 2m, 3], m = margin
    progress: np.ndarray = field(repr=False)  # float64 [T], pixels travelled before each frame
    centre: tuple[float, float]  # mid-clip object position (x, y)
    angle_deg: float  # initial rotation
    scale: float  # size factor at mid-clip
    orbit_phase: float  # initial angle on the orbit, radians
    shake: np.ndarray = field(repr=False)  # float64 [T, 2], camera offset (x, y) per frame
    noise: np.ndarray = field(repr=False)  # float32 [T, H, W, 3]


def _generator(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def _margin(scene: SceneParams) -> int:
    """Border around the background canvas, wide enough that the camera shake never shows its edge."""
    return int(math.ceil(6 * scene.jitter_px / math.sqrt(1 - scene.jitter_memory ** 2))) + 1


def _background(rng: np.random.Generator, width: int, height: int, scene: SceneParams) -> np.ndarray:
    """Smooth random light and dark blobs in a random tint plus a fine grain (something for the flow to lock on).

    Less saturated and coarser than the object's textures, so the object stays visible on every background.
    """
    cells = rng.uniform(60, 190, (height // scene.background_cell_px + 2, width // scene.background_cell_px + 2))
    smooth = cv2.resize(cells.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    tint = rng.uniform(-35, 35, 3).astype(np.float32)
    grain = cv2.GaussianBlur(rng.normal(0, 14, (height, width, 3)).astype(np.float32), (0, 0), 0.8)
    return np.clip(smooth[..., None] + tint + grain, 0, 255)


def _shake(rng: np.random.Generator, frames: int, scene: SceneParams) -> np.ndarray:
    """Camera offsets ``[T, 2]``: a stationary AR(1) process, started from its stationary distribution."""
    innovations = rng.normal(0, scene.jitter_px, (frames, 2))
    offsets = np.empty((frames, 2))
    offsets[0] = innovations[0] / math.sqrt(1 - scene.jitter_memory ** 2)
    for t in range(1, frames):
        offsets[t] = scene.jitter_memory * offsets[t - 1] + innovations[t]
    return offsets


def _progress(rng: np.random.Generator, frames: int, scene: SceneParams) -> np.ndarray:
    """Pixels travelled before each frame: a random base speed times ``1 + a sin(2 pi t / period + phase)``."""
    speed = rng.uniform(*scene.speed_px)
    wobble = rng.uniform(0, scene.speed_wobble)
    period = rng.uniform(8, 24)
    phase = rng.uniform(0, 2 * np.pi)
    steps = speed * (1 + wobble * np.sin(2 * np.pi * np.arange(frames - 1) / period + phase))
    return np.concatenate([[0.0], np.cumsum(steps)])


def draw_nuisance(seed: int, index: int, *, frames: int, width: int, height: int,
                  scene: SceneParams = SceneParams()) -> Nuisance:
    """The random scene of video ``index``; deterministic in (seed, index) and independent of the class."""
    rng = _generator(seed, index, _SCENE_STREAM)
    margin = _margin(scene)
    return Nuisance(
        background=_background(rng, width + 2 * margin, height + 2 * margin, scene),
        progress=_progress(rng, frames, scene),
        centre=(width / 2 + rng.uniform(-1, 1) * scene.start_offset_px,
                height / 2 + rng.uniform(-1, 1) * scene.start_offset_px),
        angle_deg=rng.uniform(0, 360),
        scale=1 + rng.uniform(-1, 1) * scene.size_jitter,
        orbit_phase=rng.uniform(0, 2 * np.pi),
        shake=_shake(rng, frames, scene),
        noise=rng.normal(0, scene.noise_std, (frames, height, width, 3)).astype(np.float32),
    )


def object_poses(motion: Motion, nuisance: Nuisance, orbit_radius: float,
                 scene: SceneParams = SceneParams()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame object centre ``[T, 2]`` (x, y), angle ``[T]`` (degrees, anticlockwise) and scale ``[T]``.

    Translation, spin and zoom are centred on mid-clip, so opposite motions sweep the same poses in reverse order.
    """
    p = nuisance.progress
    centred = p - p[-1] / 2
    orbit_angle = nuisance.orbit_phase + p / orbit_radius
    orbit = orbit_radius * np.stack([np.cos(orbit_angle), np.sin(orbit_angle)], axis=1)
    centre = np.asarray(nuisance.centre) + np.outer(centred, motion.translate) + motion.orbit * orbit
    angle = nuisance.angle_deg + motion.spin * scene.spin_deg_per_px * centred
    scale = nuisance.scale * np.exp(motion.zoom * scene.zoom_per_px * centred)
    return centre, angle, scale
