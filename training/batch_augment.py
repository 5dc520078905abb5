"""Training augmentation of whole batches on the training device: the half of the input pipeline after the loader.

The loader (``actrec.training.batch``) draws each clip's augmentation (``ClipDraw``), cuts STILT's crop out of the
stored frames by slicing, and hands over uint8 batches: RGB ``[B, n, H, W, 3]`` and flow ``[B, n, L, H, W, 2]``
(uint8 codes or float16 pixels), channels last as stored, each clip in the top-left ``sizes[b]`` of its slot (crops
differ in size). Here, batched, on whatever device the tensors are on (the GPU, or the CPU with ``--augment-on
cpu``): the conversion to float, the flow's unit conversion, flips (negating flow x), the resize, CoT-LSTM's
rotation, erasing and crop, and the normalisation, giving the dataset layout the models take (``datasets.py``):
float32 RGB ``[B, n, 3, c, c]`` normalised and flow ``[B, n, L, 2, c, c]`` in units of the bound.

Equivalence with the per-clip reference (``augment.tsn_augment``, ``augment.variation_augment``, the loader's
pipeline before issue 27): the same draws give the same crops, flips and flow signs, and the same operations run in
the same order on the same values (the flip moves before the float conversion, where it is exact, and flow x is
negated on units instead of mirrored around code 127.5, also exact). On the CPU the results equal the reference
within ``TOLERANCE``; measured, they are equal bit for bit for both models, uint8 and float16 flow, at 48x64 and
340x256 (tests/test_batch_augment.py); the tolerance leaves room for kernels that pick another vector path for
another batch shape. On a GPU the kernels differ from the CPU's, as they do for the network itself.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from actrec.training.augment import (ERASED_RGB, AugmentParams, ClipDraw, crop, flow_to_units, normalize_rgb,
                                     resize, rotation_matrix, rotation_theta)

TOLERANCE = 1e-5  # max absolute difference from the per-clip reference on the CPU (normalised RGB; flow units)


def tsn_batch(rgb: Tensor, flow: Tensor, sizes: Sequence[tuple[int, int]], draws: Sequence[ClipDraw], bound: float,
              params: AugmentParams) -> tuple[Tensor, Tensor]:
    """STILT: each clip's crop (already cut by the loader), flipped if drawn, resized to ``params.crop``."""
    size = (params.crop, params.crop)
    out_rgb, out_flow = _outputs(rgb, flow, size)
    for members, (clip_rgb, clip_flow) in _groups(rgb, flow, sizes, bound):
        _mirror(clip_rgb, clip_flow, [draws[m].flip for m in members])  # before the resize, as the reference
        index = torch.tensor(members, device=rgb.device)
        out_rgb[index] = normalize_rgb(resize(clip_rgb, size))
        out_flow[index] = resize(clip_flow, size)
    return out_rgb, out_flow


def variation_batch(rgb: Tensor, flow: Tensor, sizes: Sequence[tuple[int, int]], draws: Sequence[ClipDraw],
                    bound: float, params: AugmentParams) -> tuple[Tensor, Tensor]:
    """CoT-LSTM's data variation: resize to the ``params.resize`` square, rotate, erase, crop, flip, normalise."""
    square = (params.resize, params.resize)
    square_rgb, square_flow = _outputs(rgb, flow, square)
    for members, (clip_rgb, clip_flow) in _groups(rgb, flow, sizes, bound):
        index = torch.tensor(members, device=rgb.device)
        square_rgb[index] = resize(clip_rgb, square)
        square_flow[index] = resize(clip_flow, square)
    angles = [draw.angle for draw in draws]
    square_rgb, square_flow = rotate_batch(square_rgb, angles), rotate_flow_batch(square_flow, angles)
    for b, draw in enumerate(draws):
        if draw.erase is not None:
            box = draw.erase
            crop(square_rgb[b], box)[:] = torch.tensor(ERASED_RGB, device=rgb.device)[:, None, None]
            crop(square_flow[b], box)[:] = 0.0  # zero motion
    out_rgb = torch.stack([crop(square_rgb[b], draw.crop) for b, draw in enumerate(draws)])
    out_flow = torch.stack([crop(square_flow[b], draw.crop) for b, draw in enumerate(draws)])
    _mirror(out_rgb, out_flow, [draw.flip for draw in draws])
    return normalize_rgb(out_rgb), out_flow


def rotate_batch(images: Tensor, angles: Sequence[float]) -> Tensor:
    """Rotate float Tensor[B, ..., H, W] about the centre, clip b by ``angles[b]`` degrees (zero fill outside); one
    sampling grid per clip serves all its frames and channels."""
    batch, height, width = images.shape[0], *images.shape[-2:]
    flat = images.reshape(batch, -1, height, width)  # (B, frames x channels, H, W)
    theta = torch.stack([rotation_theta(angle, height, width) for angle in angles]).to(images.device)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(images.shape)


def rotate_flow_batch(flow: Tensor, angles: Sequence[float]) -> Tensor:
    """Rotate float flow Tensor[B, ..., 2, H, W]: each clip's grid and its (u, v) vectors by its angle."""
    turned = rotate_batch(flow, angles)
    matrices = torch.stack([rotation_matrix(angle) for angle in angles]).to(flow.device, flow.dtype)  # (B, 2, 2)
    return torch.einsum("bij,b...jhw->b...ihw", matrices, turned)


def _outputs(rgb: Tensor, flow: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Empty float32 RGB [B, n, 3, *size] and flow [B, n, L, 2, *size] on the batch's device."""
    return (torch.empty((*rgb.shape[:2], 3, *size), device=rgb.device),
            torch.empty((*flow.shape[:3], 2, *size), device=flow.device))


def _groups(rgb: Tensor, flow: Tensor, sizes: Sequence[tuple[int, int]],
            bound: float) -> list[tuple[list[int], tuple[Tensor, Tensor]]]:
    """The clips grouped by size: (members, (RGB float [g, n, 3, h, w] in 0..255, flow [g, n, L, 2, h, w] in
    units)), channels first and contiguous, cut from the top-left of their slots."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for b, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(b)
    groups = []
    for (height, width), members in by_size.items():
        index = torch.tensor(members, device=rgb.device)
        clip_rgb = rgb[index, :, :height, :width].permute(0, 1, 4, 2, 3)  # (g, n, 3, h, w)
        clip_flow = flow[index, :, :, :height, :width].permute(0, 1, 2, 5, 3, 4)  # (g, n, L, 2, h, w)
        groups.append((members, (clip_rgb.to(torch.float32, memory_format=torch.contiguous_format),
                                 flow_to_units(clip_flow, bound))))
    return groups


def _mirror(rgb: Tensor, flow: Tensor, flips: Sequence[bool]) -> None:
    """Mirror the flipped clips of float RGB [g, ..., W] and flow [g, ..., 2, H, W] in place, negating flow x."""
    chosen = [b for b, flip in enumerate(flips) if flip]
    if not chosen:
        return
    index = torch.tensor(chosen, device=rgb.device)
    sign = torch.tensor([-1.0, 1.0], device=flow.device)[:, None, None]  # x -> -x, y unchanged
    rgb[index] = rgb[index].flip(-1)
    flow[index] = flow[index].flip(-1) * sign
