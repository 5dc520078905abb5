"""Augmentation and test-time views, applied identically to the RGB frames and the flow stacks of one sample.

Tensors are channels-first with any leading dimensions: RGB ``[..., 3, H, W]``, flow ``[..., 2, H, W]`` (channel
0 = x, 1 = y, as stored). A training clip's random parameters are drawn once, as a ``ClipDraw``, from a
``numpy.random.Generator`` (one per clip, seeded by the data order, so a resumed or distributed run sees the same
augmentation); the geometry is applied with torch. Training applies the draws to whole batches on the training
device (``actrec.training.batch_augment``); ``tsn_augment`` and ``variation_augment`` here apply them to one clip,
as the loader did before, and are the reference the batched functions are tested against. Test-time views
(``eval_frames``, ``eval_view``) are cut here, one video at a time.

Conventions:

- **Flow scale.** Flow enters the network as ``flow / bound``, in [-1, 1]: uint8 codes become ``(q - 127.5) /
  127.5`` (the exact centre of the code range; equal to the dequantised pixels divided by the store's bound), and
  float16 stores are divided by their bound. RGB is scaled to 0..1 and normalised by the ImageNet mean and std.
- **Horizontal flip** (on by default, as in both papers; ``flip=False`` for classes that a mirror image turns into
  each other, such as moving left and moving right) mirrors the grid and negates x. On uint8 codes (STILT's path: flipped before conversion)
  x becomes ``255 - x``, the mirror around 127.5, so a code maps to the code of -x; on float flow x becomes -x.
- **Rotation** (CoT-LSTM) turns the grid and the flow vectors. Image axes are x right, y down; a positive angle
  turns the picture anticlockwise as seen on screen (OpenCV's ``getRotationMatrix2D`` convention), and a vector
  ``(u, v)`` becomes ``(cos a * u + sin a * v, -sin a * u + cos a * v)``: at +90 degrees a rightward flow (1, 0)
  becomes the upward (0, -1). Pixels rotated in from outside are black (RGB) and zero flow.
- **Resizing** interpolates flow like an image and leaves its values unchanged (TSN and mmaction2 do the same, so
  our inputs match theirs), although a resize by s strictly scales displacements by s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASED_RGB = tuple(255.0 * m for m in IMAGENET_MEAN)  # random erasing fills with the mean: 0 once normalised
FLOW_CODE_CENTRE = 127.5  # zero flow on the uint8 scale: q = (f + bound) * 255 / (2 bound) at f = 0
TEN_CROP_GRID = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2))  # 4 corners and the centre, in quarters of the margin
# TSN's "more fixed crops": the five above plus the edge midpoints and the quarter points
MULTISCALE_GRID = TEN_CROP_GRID + ((0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))


@dataclass(frozen=True)
class Box:
    """A crop or erase rectangle in pixels: top-left (x, y), width w, height h."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation settings (see ``TrainConfig`` for where each default comes from)."""

    crop: int = 224  # output size (square)
    resize: int = 256  # CoT-LSTM: square size before rotation and crop; STILT test: short side
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)  # TSN multi-scale crop sizes, fractions of the short side
    max_distort: int = 1  # width and height scale indices may differ by this much (aspect jitter)
    rotation: float = 15.0  # maximum absolute rotation in degrees
    flip: bool = True  # random horizontal flips (off when classes differ by left/right direction or turning sense)
    erase_prob: float = 0.5  # probability of erasing one rectangle
    erase_area: tuple[float, float] = (0.02, 0.4)  # erased fraction of the frame (Zhong et al.)
    erase_aspect: float = 0.3  # erased aspect ratio in [erase_aspect, 1 / erase_aspect] (Zhong et al.)


# --- parameter sampling (pure, numpy) ---

def multiscale_crop_box(height: int, width: int, scales: Sequence[float], max_distort: int,
                        rng: np.random.Generator, size: int) -> Box:
    """TSN's multi-scale crop: side lengths from ``scales`` x the short side (within 3 px of ``size`` snapped
    to it), width and height drawn up to ``max_distort`` scales apart, placed at one of 13 fixed offsets."""
    base = min(height, width)
    sides = [size if abs(int(base * s) - size) < 3 else int(base * s) for s in scales]
    pairs = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[rng.integers(len(pairs))]
    gx, gy = MULTISCALE_GRID[rng.integers(len(MULTISCALE_GRID))]
    return Box(gx * ((width - crop_w) // 4), gy * ((height - crop_h) // 4), crop_w, crop_h)


def random_crop_box(height: int, width: int, size: int, rng: np.random.Generator) -> Box:
    """A ``size`` x ``size`` crop at a uniformly random position."""
    return Box(int(rng.integers(width - size + 1)), int(rng.integers(height - size + 1)), size, size)


def view_boxes(height: int, width: int, size: int, ten_crop: bool) -> list[tuple[Box, bool]]:
    """Test-time crops as (box, flip): the centre crop, or the 10 crops (4 corners + centre, then their flips)."""
    grid = TEN_CROP_GRID if ten_crop else ((2, 2),)
    boxes = [Box(gx * ((width - size) // 4), gy * ((height - size) // 4), size, size) for gx, gy in grid]
    return [(box, False) for box in boxes] + ([(box, True) for box in boxes] if ten_crop else [])


def erase_box(height: int, width: int, area: tuple[float, float], aspect: float, rng: np.random.Generator,
              attempts: int = 10) -> Box | None:
    """Random erasing's rectangle (area fraction and log-uniform aspect ratio); None if no draw fits."""
    for _ in range(attempts):
        target = rng.uniform(*area) * height * width
        ratio = math.exp(rng.uniform(math.log(aspect), -math.log(aspect)))
        h, w = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < h < height and 0 < w < width:
            return Box(int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1)), w, h)
    return None


def short_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) with the short side scaled to ``side``, keeping the aspect ratio."""
    scale = side / min(height, width)
    return max(side, round(height * scale)), max(side, round(width * scale))


@dataclass(frozen=True)
class ClipDraw:
    """One training clip's augmentation, drawn once from the clip's generator and shared by its RGB and flow.

    ``region`` is cut out of the stored frames by the loader, as uint8 (STILT's multi-scale crop; None: the whole
    frame, for CoT-LSTM, whose crop comes after the resize and rotation); the rest is applied to the batch.
    """

    region: Box | None = None
    flip: bool = False
    angle: float = 0.0  # CoT-LSTM: rotation in degrees
    erase: Box | None = None  # CoT-LSTM: erased rectangle of the resized square, or none
    crop: Box | None = None  # CoT-LSTM: the crop of the resized, rotated square


def draw_tsn(height: int, width: int, params: AugmentParams, rng: np.random.Generator) -> ClipDraw:
    """STILT's draws for frames of ``height`` x ``width``: one multi-scale crop and one coin-flip per clip."""
    region = multiscale_crop_box(height, width, params.scales, params.max_distort, rng, params.crop)
    flip = bool(rng.random() < 0.5) and params.flip  # drawn either way: the draws do not depend on ``flip``
    return ClipDraw(region=region, flip=flip)


def draw_variation(height: int, width: int, params: AugmentParams, rng: np.random.Generator) -> ClipDraw:
    """CoT-LSTM's draws (section III.C), in the order they are applied: rotation angle, erased rectangle (with
    probability ``erase_prob``), crop of the ``resize`` square, flip. Frames of any size are resized to the square
    first, so ``height`` and ``width`` do not matter."""
    square = (params.resize, params.resize)
    angle = float(rng.uniform(-params.rotation, params.rotation))
    erased = erase_box(*square, params.erase_area, params.erase_aspect, rng) if rng.random() < params.erase_prob \
        else None
    box = random_crop_box(*square, params.crop, rng)
    flip = bool(rng.random() < 0.5) and params.flip
    return ClipDraw(flip=flip, angle=angle, erase=erased, crop=box)


# --- geometry (torch, any device) ---

def crop(images: Tensor, box: Box) -> Tensor:
    """Tensor[..., C, H, W] -> Tensor[..., C, box.h, box.w] (a view)."""
    return images[..., box.y:box.y + box.h, box.x:box.x + box.w]


def resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (antialiased) resize of float Tensor[..., C, H, W] to (height, width); a no-op at that size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    flat = images.reshape(-1, *images.shape[-3:])  # (N, C, H, W)
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*images.shape[:-2], *size)


def flip_rgb(rgb: Tensor) -> Tensor:
    """Mirror left-right."""
    return torch.flip(rgb, dims=(-1,))


def flip_flow(flow: Tensor) -> Tensor:
    """Mirror left-right and negate x: uint8 codes x -> 255 - x (mirror around 127.5), float x -> -x."""
    flipped = torch.flip(flow, dims=(-1,))
    x = flipped[..., 0:1, :, :]
    negated = 255 - x if flow.dtype == torch.uint8 else -x
    return torch.cat([negated, flipped[..., 1:2, :, :]], dim=-3)


def rotation_matrix(angle: float) -> Tensor:
    """2x2 map of pixel offsets (x right, y down) turning the picture by ``angle`` degrees anticlockwise on screen."""
    a = math.radians(angle)
    return torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float32)


def rotation_theta(angle: float, height: int, width: int) -> Tensor:
    """``F.affine_grid``'s 2x3 matrix that turns a ``height`` x ``width`` picture by ``angle`` degrees about its
    centre: the inverse rotation (output pixel -> source pixel) in grid_sample's [-1, 1] coordinates per axis."""
    inverse = rotation_matrix(angle).T
    half = torch.tensor([width / 2, height / 2])
    theta = torch.zeros(2, 3)
    theta[:, :2] = inverse * half[None, :] / half[:, None]
    return theta


def rotate(images: Tensor, angle: float) -> Tensor:
    """Rotate float Tensor[..., C, H, W] about the centre by ``angle`` degrees (zero fill outside)."""
    height, width = images.shape[-2:]
    flat = images.reshape(-1, *images.shape[-3:])  # (N, C, H, W)
    theta = rotation_theta(angle, height, width)[None].expand(len(flat), 2, 3).to(images.device)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(images.shape)


def rotate_flow(flow: Tensor, angle: float) -> Tensor:
    """Rotate a float flow field Tensor[..., 2, H, W]: the grid and each (u, v) vector by the same rotation."""
    turned = rotate(flow, angle)
    matrix = rotation_matrix(angle).to(flow.device, flow.dtype)
    return torch.einsum("ij,...jhw->...ihw", matrix, turned)


def erase(images: Tensor, box: Box, value: Sequence[float]) -> Tensor:
    """A copy of float Tensor[..., C, H, W] with the box set to ``value`` (one number per channel)."""
    out = images.clone()
    fill = torch.tensor(value, dtype=images.dtype, device=images.device)[:, None, None]
    out[..., box.y:box.y + box.h, box.x:box.x + box.w] = fill
    return out


# --- value scaling ---

def flow_to_units(flow: Tensor, bound: float) -> Tensor:
    """Flow as float32 in units of the bound: uint8 codes (q - 127.5) / 127.5, float pixels f / bound."""
    units = flow.to(torch.float32, memory_format=torch.contiguous_format, copy=True)  # one float copy, then in place
    if flow.dtype == torch.uint8:
        return units.sub_(FLOW_CODE_CENTRE).div_(FLOW_CODE_CENTRE)
    return units.div_(bound)


def normalize_rgb(rgb: Tensor) -> Tensor:
    """RGB Tensor[..., 3, H, W] in 0..255 -> float32 normalised by the ImageNet mean and std."""
    mean = to_device(torch.tensor(IMAGENET_MEAN)[:, None, None], rgb.device)
    std = to_device(torch.tensor(IMAGENET_STD)[:, None, None], rgb.device)
    return (rgb.float() / 255.0 - mean) / std


def to_device(values: Tensor, device: torch.device) -> Tensor:
    """A small CPU tensor (a few parameters) on ``device`` without waiting for the device's queued work: a blocking
    copy to a GPU (``torch.tensor(..., device=...)``) would wait for every kernel before it, and the host could not
    run ahead of the GPU."""
    return values.to(device, non_blocking=True)


# --- pipelines ---

def tsn_augment(rgb: Tensor, flow: Tensor, bound: float, params: AugmentParams,
                rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """STILT training, one clip (the reference of ``batch_augment.tsn_batch``): ``draw_tsn``'s crop and flip,
    resized to ``params.crop``.

    uint8 rgb Tensor[..., 3, H, W] and flow Tensor[..., 2, H, W] (uint8 codes or float16 pixels) ->
    normalised RGB and flow in units of the bound, both float32 [..., crop, crop].
    """
    draw = draw_tsn(*rgb.shape[-2:], params, rng)
    rgb, flow = crop(rgb, draw.region), crop(flow, draw.region)
    if draw.flip:
        rgb, flow = flip_rgb(rgb), flip_flow(flow)  # on the uint8 codes: 255 - x
    size = (params.crop, params.crop)
    return normalize_rgb(resize(rgb.float(), size)), resize(flow_to_units(flow, bound), size)


def variation_augment(rgb: Tensor, flow: Tensor, bound: float, params: AugmentParams,
                      rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """CoT-LSTM's data-variation strategy (section III.C), one clip (the reference of
    ``batch_augment.variation_batch``): resize to ``resize`` x ``resize``, random rotation, random erasing, random
    ``crop`` x ``crop`` crop, horizontal flip; same parameters for RGB and flow (``draw_variation``)."""
    draw = draw_variation(*rgb.shape[-2:], params, rng)
    square = (params.resize, params.resize)
    rgb, flow = resize(rgb.float(), square), resize(flow_to_units(flow, bound), square)
    rgb, flow = rotate(rgb, draw.angle), rotate_flow(flow, draw.angle)
    if draw.erase is not None:
        rgb = erase(rgb, draw.erase, ERASED_RGB)  # normalises to 0
        flow = erase(flow, draw.erase, [0.0, 0.0])  # zero motion
    rgb, flow = crop(rgb, draw.crop), crop(flow, draw.crop)
    if draw.flip:
        rgb, flow = flip_rgb(rgb), flip_flow(flow)
    return normalize_rgb(rgb), flow


def eval_frames(rgb: Tensor, flow: Tensor, bound: float, params: AugmentParams,
                square: bool) -> tuple[Tensor, Tensor]:
    """The frames test views are cut from: RGB in 0..255 and flow in units, resized to ``resize`` x ``resize``
    (``square``, CoT-LSTM's training geometry) or with the short side at ``resize`` (TSN's test scaling)."""
    height, width = rgb.shape[-2:]
    size = (params.resize, params.resize) if square else short_side_size(height, width, params.resize)
    return resize(rgb.float(), size), resize(flow_to_units(flow, bound), size)


def eval_view(rgb: Tensor, flow: Tensor, box: Box, flip: bool) -> tuple[Tensor, Tensor]:
    """One test view of frames from ``eval_frames``: the crop, mirrored if asked, RGB normalised."""
    rgb, flow = crop(rgb, box), crop(flow, box)
    if flip:
        rgb, flow = flip_rgb(rgb), flip_flow(flow)
    return normalize_rgb(rgb), flow
