"""Rendering: one warpAffine of the background and one of the sprite per frame."""

from __future__ import annotations

import cv2
import numpy as np

from actrec.pipeline.synth.appearance import make_sprite
from actrec.pipeline.synth.classes import SceneParams, SynthClass
from actrec.pipeline.synth.nuisance import _TEXTURE_STREAM, _generator, _margin, draw_nuisance, object_poses


def _composite(background: np.ndarray, sprite: np.ndarray, matrix: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Lay the premultiplied sprite, warped by ``matrix``, over the background, add the noise, round to uint8."""
    height, width = background.shape[:2]
    layer = cv2.warpAffine(sprite, matrix, (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    frame = background * (1 - layer[..., 3:]) + layer[..., :3] + noise
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def render_video(cls: SynthClass, index: int, *, frames: int, width: int, height: int, seed: int,
                 scene: SceneParams = SceneParams()) -> np.ndarray:
    """Frames ``uint8 [T, H, W, 3]`` (RGB) of video ``index`` of class ``cls``; a pure function of its arguments."""
    nuisance = draw_nuisance(seed, index, frames=frames, width=width, height=height, scene=scene)
    short = min(width, height)
    side = max(8, int(round(scene.object_size * short)))
    texture_rng = _generator(seed, index, _TEXTURE_STREAM)
    sprite = make_sprite(cls.appearance, texture_rng, side)
    centres, angles, scales = object_poses(cls.motion, nuisance, scene.orbit_radius * short, scene)
    margin = _margin(scene)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        shake = nuisance.shake[t]
        camera = np.float32([[1, 0, shake[0] - margin], [0, 1, shake[1] - margin]])
        background = cv2.warpAffine(nuisance.background, camera, (width, height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT)
        pose = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), float(angles[t]), float(scales[t]))
        pose[:, 2] += centres[t] + shake - (side - 1) / 2
        out[t] = _composite(background, sprite, pose, nuisance.noise[t])
    return out
