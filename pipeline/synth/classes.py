"""The dataset's classes (the motion and appearance of each) and the scene constants of every video."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Motion:
    """How the object's pose follows the progress ``p`` (pixels travelled): each term is zero or a unit sign."""

    translate: tuple[float, float] = (0.0, 0.0)  # (x, y) direction of straight motion, image axes (y down)
    spin: float = 0.0  # +1 anticlockwise on screen, -1 clockwise
    zoom: float = 0.0  # +1 grows (approach), -1 shrinks (recede)
    orbit: float = 0.0  # +1 circles the frame centre


@dataclass(frozen=True)
class Appearance:
    """The object's look: keys into ``SHAPES`` (alpha mask) and ``TEXTURES`` (colour pattern)."""

    shape: str = "box"
    texture: str = "blobs"


@dataclass(frozen=True)
class SynthClass:
    """One class of the dataset: its name, motion and appearance."""

    name: str
    motion: Motion
    appearance: Appearance = Appearance()


_ORBIT = Motion(orbit=1.0)

CLASSES: tuple[SynthClass, ...] = (
    SynthClass("move_left", Motion(translate=(-1.0, 0.0))),
    SynthClass("move_right", Motion(translate=(1.0, 0.0))),
    SynthClass("move_up", Motion(translate=(0.0, -1.0))),
    SynthClass("move_down", Motion(translate=(0.0, 1.0))),
    SynthClass("rotate_cw", Motion(spin=-1.0)),
    SynthClass("rotate_ccw", Motion(spin=1.0)),
    SynthClass("approach", Motion(zoom=1.0)),
    SynthClass("recede", Motion(zoom=-1.0)),
    SynthClass("shape_disc", _ORBIT, Appearance(shape="disc")),
    SynthClass("shape_star", _ORBIT, Appearance(shape="star")),
    SynthClass("texture_stripes", _ORBIT, Appearance(texture="stripes")),
    SynthClass("texture_checker", _ORBIT, Appearance(texture="checker")),
)
# The classes a stream is built to read: motion-only classes share one appearance (only the temporal stream can tell
# them apart), appearance-only classes share one motion (only the spatial stream can).
MOTION_ONLY: tuple[str, ...] = tuple(c.name for c in CLASSES if c.appearance == Appearance())
APPEARANCE_ONLY: tuple[str, ...] = tuple(c.name for c in CLASSES if c.motion == _ORBIT)


@dataclass(frozen=True)
class SceneParams:
    """Scene constants; lengths in pixels (fractions are of the frame's short side)."""

    object_size: float = 0.3  # side of the object's sprite, fraction of the short side
    orbit_radius: float = 0.18  # radius of the orbit motion, fraction of the short side
    speed_px: tuple[float, float] = (1.0, 2.5)  # base speed range, pixels per frame
    speed_wobble: float = 0.5  # maximum relative amplitude of the sinusoidal speed modulation
    spin_deg_per_px: float = 3.5  # rotation per pixel of progress (an edge 16 px from the centre moves ~1 px/px)
    zoom_per_px: float = 0.025  # change of log-scale per pixel of progress
    start_offset_px: float = 6.0  # maximum random offset of the mid-clip position from the frame centre
    size_jitter: float = 0.1  # maximum relative random change of the object's size
    jitter_px: float = 0.35  # standard deviation of the camera shake's innovation, pixels
    jitter_memory: float = 0.85  # AR(1) coefficient of the camera shake
    noise_std: float = 6.0  # Gaussian pixel noise on the 0..255 scale
    background_cell_px: int = 12  # size of the background's colour blobs
