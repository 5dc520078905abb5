"""Training augmentation of whole batches on the training device: the half of the input pipeline after the loader.

The loader (``actrec.training.batch``) draws each clip's augmentation (``ClipDraw``), cuts STILT's crop out of the
stored frames by slicing, and hands over uint8 batches (``ClipBatch``): each group of clips of one size as RGB
``[g, n, h, w, 3]`` and flow ``[g, n, L, h, w, 2]`` (uint8 codes or float16 pixels), channels last as stored. Here,
batched per group, on whatever device the tensors are on (the GPU, or the CPU with ``--augment-on
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

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from actrec.training.augment import (ERASED_RGB, AugmentParams, crop, flow_to_units, normalize_rgb, resize,
                                     rotation_matrix, rotation_theta, to_device)
from actrec.training.batch import ClipBatch

TOLERANCE = 1e-5  # max absolute difference from the per-clip reference on the CPU (normalised RGB; flow units)


def tsn_batch(batch: ClipBatch, bound: float, params: AugmentParams) -> tuple[Tensor, Tensor]:
    """STILT: each clip's crop (already cut by the loader), flipped if drawn, resized to ``params.crop``."""
    size = (params.crop, params.crop)
    out_rgb, out_flow = _outputs(batch, size)
    for members, clip_rgb, clip_flow in _groups(batch, bound):
        _mirror(clip_rgb, clip_flow, [batch.draws[m].flip for m in members])  # before the resize, as the reference
        out_rgb[members] = normalize_rgb(resize(clip_rgb, size))
        out_flow[members] = resize(clip_flow, size)
    return out_rgb, out_flow


def variation_batch(batch: ClipBatch, bound: float, params: AugmentParams) -> tuple[Tensor, Tensor]:
    """CoT-LSTM's data variation: resize to the ``params.resize`` square, rotate, erase, crop, flip, normalise."""
    square = (params.resize, params.resize)
    square_rgb, square_flow = _outputs(batch, square)
    for members, clip_rgb, clip_flow in _groups(batch, bound):
        square_rgb[members] = resize(clip_rgb, square)
        square_flow[members] = resize(clip_flow, square)
    draws = batch.draws
    angles = [draw.angle for draw in draws]
    square_rgb, square_flow = rotate_batch(square_rgb, angles), rotate_flow_batch(square_flow, angles)
    fill = to_device(torch.tensor(ERASED_RGB)[:, None, None], square_rgb.device)
    for b, draw in enumerate(draws):
        if draw.erase is not None:
            crop(square_rgb[b], draw.erase)[:] = fill
            crop(square_flow[b], draw.erase)[:] = 0.0  # zero motion
    out_rgb = torch.stack([crop(square_rgb[b], draw.crop) for b, draw in enumerate(draws)])
    out_flow = torch.stack([crop(square_flow[b], draw.crop) for b, draw in enumerate(draws)])
    _mirror(out_rgb, out_flow, [draw.flip for draw in draws])
    return normalize_rgb(out_rgb), out_flow


def rotate_batch(images: Tensor, angles: Sequence[float]) -> Tensor:
    """Rotate float Tensor[B, ..., H, W] about the centre, clip b by ``angles[b]`` degrees (zero fill outside); one
    sampling grid per clip serves all its frames and channels."""
    batch, height, width = images.shape[0], *images.shape[-2:]
    flat = images.reshape(batch, -1, height, width)  # (B, frames x channels, H, W)
    theta = to_device(torch.stack([rotation_theta(angle, height, width) for angle in angles]), images.device)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(images.shape)


def rotate_flow_batch(flow: Tensor, angles: Sequence[float]) -> Tensor:
    """Rotate float flow Tensor[B, ..., 2, H, W]: each clip's grid and its (u, v) vectors by its angle."""
    turned = rotate_batch(flow, angles)
    matrices = to_device(torch.stack([rotation_matrix(angle) for angle in angles]), flow.device)  # (B, 2, 2)
    return torch.einsum("bij,b...jhw->b...ihw", matrices, turned)


def _outputs(batch: ClipBatch, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Empty float32 RGB [B, n, 3, *size] and flow [B, n, L, 2, *size] on the batch's device."""
    clips, device = len(batch), batch.rgb.device
    return (torch.empty((clips, batch.frames, 3, *size), device=device),
            torch.empty((clips, batch.frames, batch.length, 2, *size), device=device))


def _groups(batch: ClipBatch, bound: float) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Each group of clips of one size: (their places in the batch, RGB float [g, n, 3, h, w] in 0..255, flow
    [g, n, L, 2, h, w] in units), channels first and contiguous."""
    for group, rgb, flow in batch.group_views():
        members = to_device(torch.tensor(group.members), rgb.device)
        yield (members, rgb.permute(0, 1, 4, 2, 3).to(torch.float32, memory_format=torch.contiguous_format),
               flow_to_units(flow.permute(0, 1, 2, 5, 3, 4), bound))


def _mirror(rgb: Tensor, flow: Tensor, flips: Sequence[bool]) -> None:
    """Mirror the flipped clips of float RGB [g, ..., W] and flow [g, ..., 2, H, W] in place, negating flow x."""
    chosen = [b for b, flip in enumerate(flips) if flip]
    if not chosen:
        return
    index = to_device(torch.tensor(chosen), rgb.device)
    sign = to_device(torch.tensor([-1.0, 1.0])[:, None, None], flow.device)  # x -> -x, y unchanged
    rgb[index] = rgb[index].flip(-1)
    flow[index] = flow[index].flip(-1) * sign
