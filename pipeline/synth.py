"""A controlled synthetic action dataset, written as real H.264 MP4 videos plus an actrec manifest.

Why: a two-stream model should show on data we control that its spatial stream reads appearance and its temporal
stream reads motion. The classes are built so that neither stream alone can solve the task.

Classes (label order; ``classes.txt`` lists the names):

====  ================  ==================  =========================================================
label name              appearance          motion
====  ================  ==================  =========================================================
0     move_left         blob-textured box   translate left  (x decreases)
1     move_right        blob-textured box   translate right (x increases)
2     move_up           blob-textured box   translate up    (y decreases)
3     move_down         blob-textured box   translate down  (y increases)
4     rotate_cw         blob-textured box   spin clockwise as seen on screen
5     rotate_ccw        blob-textured box   spin anticlockwise
6     approach          blob-textured box   grow (the object comes nearer)
7     recede            blob-textured box   shrink (the object goes away)
8     shape_disc        blob-textured disc  orbit (circle around the frame centre)
9     shape_star        blob-textured star  orbit
10    texture_stripes   striped box         orbit
11    texture_checker   checkered box       orbit
====  ================  ==================  =========================================================

Classes 0-7 are four opposite motion pairs with one shared appearance: every pose is centred on mid-clip, so a
pair sweeps the same poses in opposite order and its frames, taken as a set, have the same distribution; only the
order (the motion) tells them apart. Classes 8-11 share one motion and differ only in shape or texture.

Nuisances make it non-trivial: a random smooth colour background, a random object texture and colours, a random
start offset, angle and size, a random base speed (``SceneParams.speed_px``) modulated by a sinusoid, camera jitter
(an AR(1) sub-pixel shake of the whole scene) and Gaussian pixel noise. Video ``i`` of every class draws the same
nuisances (from ``SeedSequence([seed, i, stream])``), so classes are paired: ``move_left_0003`` and
``move_right_0003`` differ only in direction, ``shape_disc_0003`` and ``shape_star_0003`` only in shape. Splits
are drawn per video index and shared by all classes, so they are stratified per class and the test videos'
nuisances never occur in training.

Defaults: 12 classes x 12 videos, 16 frames of 96x96 at 25 fps. TV-L1 dominates the demo pipeline and its cost
grows with the pixel count: OpenCV's CPU TV-L1 (default parameters) took 134 ms per 96x96 pair on the 2-core
development machine against about 215 ms at 112x112, so the 144 x 15 pairs take about 5 minutes. 96 is a multiple
of the 16-pixel H.264 macroblock (and even, as yuv420p needs), leaves a 3x3 map after a ResNet's stride 32, and
16 frames give 15 flows, enough for one 10-flow stack. Motion is 1-2.5 pixels per frame (rotation and zoom move the
object's edge by a similar amount), well within the +-20 px quantisation bound, and at the defaults the object
stays inside the frame.

Layout under ``out_dir``: ``videos/<class>/<class>_<iiii>.mp4``, ``manifest.csv`` (paths relative to ``videos/``,
video_id = file stem), ``classes.txt`` (one name per line, in label order) and ``synth.json`` (the options that fix
the video content, checked when a run is resumed).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import av
import cv2
import numpy as np
from tqdm import tqdm

from actrec.data_manifests.manifest import SPLITS, ManifestRow, write_manifest
from actrec.errors import ActrecError, InputError, StoreError

FORMAT_VERSION = 1
DEFAULT_VIDEOS_PER_CLASS = 12
DEFAULT_FRAMES = 16
DEFAULT_SIZE = (96, 96)  # (width, height)
DEFAULT_FPS = 25
DEFAULT_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test

# Random streams: every draw comes from SeedSequence([seed, video index, stream]), so a video's content depends only
# on (seed, class, index) and never on how many videos are generated.
_SCENE_STREAM, _TEXTURE_STREAM, _SPLIT_STREAM = 0, 1, 2

# H.264 encoders in order of preference, with options that keep the texture (and so the flow) sharp. x264's
# macroblock-tree rate control is off: with it, this libx264 build encoded the same frames to different bytes and
# pixels from run to run; without it the output is byte-identical for a given seed.
H264_ENCODERS: dict[str, dict[str, str]] = {
    "libx264": {"crf": "18", "preset": "medium", "x264-params": "mbtree=0"},
    "libopenh264": {"b": "2M"},
}


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


@dataclass(frozen=True)
class SynthSummary:
    """What a ``generate_synthetic_dataset`` run did."""

    out_dir: Path
    manifest: Path
    classes: int
    written: int  # videos encoded in this run
    skipped: int  # videos already present from an earlier run
    seconds: float

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        return (f"synth: wrote {self.written} videos ({self.skipped} already present), {self.classes} classes, "
                f"{self.seconds:.1f} s -> {self.manifest}")


# ----------------------------------------------------------------------------------------------------------------
# Appearance: masks and textures, pure functions of a side length (and a generator for the random parts).


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


# ----------------------------------------------------------------------------------------------------------------
# Nuisances and poses.


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


# ----------------------------------------------------------------------------------------------------------------
# Rendering: one warpAffine of the background and one of the sprite per frame.


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


# ----------------------------------------------------------------------------------------------------------------
# Encoding.


def pick_h264_encoder(candidates: Sequence[str] = tuple(H264_ENCODERS)) -> str:
    """The first H.264 encoder this PyAV build has, or ActrecError naming the ones tried."""
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
        except (av.codec.codec.UnknownCodecError, av.FFmpegError):
            continue
        return name
    raise ActrecError(f"PyAV ({av.__version__}) has no H.264 encoder (tried {', '.join(candidates)}); "
                      "install a PyAV build with libx264 or libopenh264")


def write_h264(path: Path, frames: np.ndarray, fps: int, encoder: str) -> None:
    """Encode RGB frames ``uint8 [T, H, W, 3]`` as yuv420p H.264 MP4 at ``path``, atomically.

    The file is written under a hidden ``.part`` name and renamed at the end, so a killed run never leaves a
    half-written video under its final name.
    """
    tmp = path.with_name(f".{path.name}.part")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(encoder, rate=fps, options=H264_ENCODERS.get(encoder, {}))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            for image in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode(None))
    except av.FFmpegError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"{path}: H.264 encoding with {encoder} failed ({exc})") from None
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------------------------
# Splits, options and the dataset.


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Videos per split for ``n`` videos: largest-remainder rounding of ``n * fraction`` (ties: earlier split)."""
    exact = [n * f for f in fractions]
    counts = [int(math.floor(x)) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(videos_per_class: int, fractions: Sequence[float], seed: int) -> list[str]:
    """Split name per video index, from a seeded permutation; shared by all classes (stratified per class)."""
    order = _generator(seed, 0, _SPLIT_STREAM).permutation(videos_per_class)
    names = [name for name, count in zip(SPLITS, split_counts(videos_per_class, fractions)) for _ in range(count)]
    splits = [""] * videos_per_class
    for index, name in zip(order, names):
        splits[int(index)] = name
    return splits


def _check_options(videos_per_class: int, frames: int, size: tuple[int, int], fps: int, seed: int,
                   split_fractions: Sequence[float]) -> None:
    width, height = size
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise InputError(f"size {width}x{height}: width and height must be even and at least 16 (yuv420p)")
    if frames < 2:
        raise InputError(f"frames {frames}: need at least 2 frames (flow needs pairs)")
    if videos_per_class < 1 or fps < 1 or seed < 0:
        raise InputError(f"videos_per_class {videos_per_class}, fps {fps}, seed {seed}: "
                         "expected videos_per_class >= 1, fps >= 1, seed >= 0")
    if len(split_fractions) != len(SPLITS) or min(split_fractions) < 0 or abs(sum(split_fractions) - 1) > 1e-6:
        raise InputError(f"split fractions {tuple(split_fractions)}: expected three non-negative fractions "
                         f"({', '.join(SPLITS)}) summing to 1")


def _content_options(frames: int, size: tuple[int, int], fps: int, seed: int, encoder: str,
                     scene: SceneParams) -> dict:
    """The options that fix every video's content: a resumed run must use the same ones."""
    return {"format_version": FORMAT_VERSION, "frames": frames, "width": size[0], "height": size[1], "fps": fps,
            "seed": seed, "encoder": encoder, "scene": json.loads(json.dumps(asdict(scene)))}


def _check_or_record_options(path: Path, options: dict) -> None:
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != options:
            changed = sorted(k for k in options.keys() | found.keys() if options.get(k) != found.get(k))
            raise InputError(f"{path}: existing videos were made with other options ({', '.join(changed)} differ); "
                             "rerun with the same options or use a new output folder")
        return
    path.write_text(json.dumps(options, indent=2) + "\n", encoding="utf-8")


def generate_synthetic_dataset(out_dir: str | Path, *, videos_per_class: int = DEFAULT_VIDEOS_PER_CLASS,
                               frames: int = DEFAULT_FRAMES, size: tuple[int, int] = DEFAULT_SIZE,
                               fps: int = DEFAULT_FPS, seed: int = 0,
                               split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
                               scene: SceneParams = SceneParams()) -> SynthSummary:
    """Write the synthetic dataset under ``out_dir`` (layout in the module docstring) and return a summary.

    ``size`` is (width, height). Resumable: videos already present are kept and skipped, provided
    ``synth.json`` shows they were made with the same content options.
    """
    start = time.perf_counter()
    _check_options(videos_per_class, frames, size, fps, seed, split_fractions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = pick_h264_encoder()
    _check_or_record_options(out_dir / "synth.json", _content_options(frames, size, fps, seed, encoder, scene))
    splits = assign_splits(videos_per_class, split_fractions, seed)
    rows, written = [], 0
    jobs = [(label, cls, index) for label, cls in enumerate(CLASSES) for index in range(videos_per_class)]
    for label, cls, index in tqdm(jobs, desc="synth", unit="video"):
        video_id = f"{cls.name}_{index:04d}"
        relative = f"{cls.name}/{video_id}.mp4"
        path = out_dir / "videos" / relative
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = render_video(cls, index, frames=frames, width=size[0], height=size[1], seed=seed, scene=scene)
            write_h264(path, pixels, fps, encoder)
            written += 1
        rows.append(ManifestRow(video_id, relative, label, cls.name, splits[index]))
    manifest = out_dir / "manifest.csv"
    write_manifest(manifest, rows)
    (out_dir / "classes.txt").write_text("".join(f"{cls.name}\n" for cls in CLASSES), encoding="utf-8")
    return SynthSummary(out_dir, manifest, len(CLASSES), written, len(jobs) - written, time.perf_counter() - start)
