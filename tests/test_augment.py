"""Augmentation: flow-aware flips and rotations, TSN crops, erasing, and identical geometry for RGB and flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actrec.training.augment import (AugmentParams, Box, erase, erase_box, eval_frames, eval_view, flip_flow,
                                     flip_rgb, flow_to_units, multiscale_crop_box, rotate, rotate_flow, tsn_augment,
                                     variation_augment, view_boxes)


def _uniform_flow(u: float, v: float, size: int = 17) -> torch.Tensor:
    return torch.tensor([u, v], dtype=torch.float32)[:, None, None].expand(2, size, size).clone()


def test_flip_negates_flow_x_on_uint8_codes_around_127_5():
    codes = torch.randint(0, 256, (3, 2, 5, 7), dtype=torch.uint8)  # (L, 2, H, W)
    flipped = flip_flow(codes)
    assert flipped.dtype == torch.uint8
    assert torch.equal(flipped[:, 0], 255 - codes[:, 0].flip(-1))  # x mirrored around 127.5
    assert torch.equal(flipped[:, 1], codes[:, 1].flip(-1))  # y only moves with the grid
    units = flow_to_units(codes, bound=20.0)
    assert torch.allclose(flow_to_units(flipped, 20.0)[:, 0], -units[:, 0].flip(-1))


def test_flip_negates_flow_x_on_float():
    flow = torch.randn(4, 2, 6, 6)
    flipped = flip_flow(flow)
    assert torch.equal(flipped[:, 0], -flow[:, 0].flip(-1))
    assert torch.equal(flipped[:, 1], flow[:, 1].flip(-1))
    assert torch.equal(flip_flow(flipped), flow)
    assert torch.equal(flip_rgb(flip_rgb(flow)), flow)


def test_flow_units_agree_between_uint8_codes_and_float_pixels():
    pixels = torch.tensor([-20.0, -10.0, 0.0, 10.0, 20.0])
    codes = torch.round((pixels + 20) * 255 / 40).to(torch.uint8)  # the store's quantisation
    assert torch.allclose(flow_to_units(codes, 20.0), pixels / 20, atol=1 / 255)
    assert torch.allclose(flow_to_units(pixels.half(), 20.0), pixels / 20)


@pytest.mark.parametrize("angle, expected", [(90.0, (0.0, -1.0)), (-90.0, (0.0, 1.0)), (180.0, (-1.0, 0.0))])
def test_rotation_turns_flow_vectors(angle, expected):
    rotated = rotate_flow(_uniform_flow(1.0, 0.0), angle)
    centre = rotated[:, 6:11, 6:11]  # away from the zero-filled corners
    assert torch.allclose(centre[0], torch.full_like(centre[0], expected[0]), atol=1e-5)
    assert torch.allclose(centre[1], torch.full_like(centre[1], expected[1]), atol=1e-5)


def test_rotation_by_90_degrees_moves_content_anticlockwise_on_screen():
    image = torch.zeros(1, 9, 9)
    image[0, 4, 7] = 1.0  # right of the centre (x = 7, y = 4)
    turned = rotate(image, 90.0)
    y, x = divmod(int(turned[0].argmax()), 9)
    assert (x, y) == (4, 1)  # above the centre: anticlockwise with y pointing down
    flow = _uniform_flow(1.0, 0.0, size=9) * image  # a rightward vector at that pixel
    moved = rotate_flow(flow, 90.0)
    assert torch.allclose(moved[:, 1, 4], torch.tensor([0.0, -1.0]), atol=1e-5)


def test_multiscale_crop_boxes_use_tsn_scales_and_stay_inside():
    rng = np.random.default_rng(0)
    sides = {int(256 * s) for s in (1.0, 0.875, 0.75, 0.66)} - {int(256 * 0.875)} | {224}  # 224 snapped
    for _ in range(200):
        box = multiscale_crop_box(256, 340, (1.0, 0.875, 0.75, 0.66), 1, rng, 224)
        assert box.w in sides and box.h in sides
        assert 0 <= box.x and box.x + box.w <= 340 and 0 <= box.y and box.y + box.h <= 256
        order = sorted(sides, reverse=True)
        assert abs(order.index(box.w) - order.index(box.h)) <= 1  # aspect jitter of at most one scale step


def test_ten_crops_are_corners_centre_and_their_mirrors():
    views = view_boxes(256, 340, 224, ten_crop=True)
    assert len(views) == 10 and [flip for _, flip in views] == [False] * 5 + [True] * 5
    assert {(b.x, b.y) for b, _ in views} == {(0, 0), (116, 0), (0, 32), (116, 32), (58, 16)}
    assert view_boxes(256, 340, 224, ten_crop=False) == [(Box(58, 16, 224, 224), False)]


def test_erase_box_and_fill():
    rng = np.random.default_rng(1)
    boxes = [erase_box(40, 40, (0.02, 0.4), 0.3, rng) for _ in range(50)]
    assert all(b is not None and 0.01 * 1600 <= b.w * b.h <= 0.45 * 1600 for b in boxes)
    filled = erase(torch.ones(2, 2, 8, 8), Box(1, 2, 3, 4), [0.0, 5.0])
    assert filled[:, 0, 2:6, 1:4].eq(0).all() and filled[:, 1, 2:6, 1:4].eq(5).all()
    assert filled.sum() == 2 * (2 * 64 - 24) + 2 * 12 * 5


def _position_coded_sample(height: int = 48, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB whose red channel and flow whose y codes both hold the column index (so crops and flips can be read)."""
    columns = torch.arange(width, dtype=torch.uint8).expand(height, width)
    rgb = torch.stack([columns, torch.zeros_like(columns), torch.zeros_like(columns)])[None]  # (1, 3, H, W)
    flow = torch.stack([torch.full_like(columns, 200), columns])[None, None]  # (1, 1, 2, H, W), x code 200
    return rgb, flow


@pytest.mark.parametrize("augment", [tsn_augment, variation_augment])
def test_augmentation_applies_the_same_geometry_to_rgb_and_flow(augment):
    rgb, flow = _position_coded_sample()
    params = AugmentParams(crop=32, resize=40, rotation=0.0, erase_prob=0.0)
    x_signs = set()
    for seed in range(12):
        out_rgb, out_flow = augment(rgb, flow, 20.0, params, np.random.default_rng(seed))
        assert out_rgb.shape == (1, 3, 32, 32) and out_flow.shape == (1, 1, 2, 32, 32)
        red = out_rgb[0, 0] * 0.229 + 0.485  # undo the ImageNet normalisation: column / 255
        column_from_flow = (out_flow[0, 0, 1] * 127.5 + 127.5) / 255
        assert torch.allclose(red, column_from_flow, atol=2e-3)  # same crop, scale and flip
        flipped = bool(red[:, 0].mean() > red[:, -1].mean())
        assert torch.allclose(out_flow[0, 0, 0], torch.full((32, 32), -72.5 / 127.5 if flipped else 72.5 / 127.5))
        x_signs.add(flipped)
    assert x_signs == {False, True}  # both mirrored and unmirrored samples occurred


def test_eval_frames_and_views():
    rgb, flow = _position_coded_sample(height=40, width=60)
    params = AugmentParams(crop=32, resize=36)
    frames_rgb, frames_flow = eval_frames(rgb, flow, 20.0, params, square=False)
    assert frames_rgb.shape[-2:] == (36, 54)  # short side to `resize`, aspect kept
    square_rgb, _ = eval_frames(rgb, flow, 20.0, params, square=True)
    assert square_rgb.shape[-2:] == (36, 36)
    for box, flip in view_boxes(36, 54, 32, ten_crop=True):
        view_rgb, view_flow = eval_view(frames_rgb, frames_flow, box, flip)
        assert view_rgb.shape == (1, 3, 32, 32) and view_flow.shape == (1, 1, 2, 32, 32)
        assert (float(view_flow[0, 0, 0].mean()) < 0) == flip
