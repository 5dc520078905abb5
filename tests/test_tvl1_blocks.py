"""TV-L1's building blocks in PyTorch against the OpenCV functions they reproduce: pyramid sizes, bilinear resize,
bicubic remap, median blur and the gray conversion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from actrec.pipeline import tvl1 as T
from actrec.pipeline.tvl1 import ops, to_gray


def test_pyramid_sizes_follow_opencv():
    assert T.pyramid_sizes(256, 340, 5, 0.8) == [(256, 340), (205, 272), (164, 218), (131, 174), (105, 139)]
    assert T.pyramid_sizes(40, 30, 5, 0.5) == [(40, 30)]  # 20x15: under 16 pixels, dropped as OpenCV does
    assert T.pyramid_sizes(40, 40, 5, 0.5) == [(40, 40), (20, 20)]
    assert T.pyramid_sizes(205, 255, 2, 0.5) == [(205, 255), (102, 128)]  # round half to even, as cvRound


def test_resize_matches_cv_resize():
    rng = np.random.default_rng(0)
    img = (rng.random((256, 340)) * 255).astype(np.float32)
    ref = cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    out = T.resize_linear(torch.from_numpy(img)[None], ref.shape, scale=0.8)[0].numpy()
    assert np.abs(out - ref).max() < 1e-4
    up_ref = cv2.resize(ref, (340, 256), interpolation=cv2.INTER_LINEAR)
    up = T.resize_linear(torch.from_numpy(ref)[None], (256, 340))[0].numpy()
    assert np.abs(up - up_ref).max() < 1e-4


def test_remap_cubic_matches_cv_remap():
    rng = np.random.default_rng(1)
    h, w = 64, 80
    img = (rng.random((h, w)) * 255).astype(np.float32)
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx = (xx + rng.normal(0, 3, (h, w))).astype(np.float32)  # includes samples outside the image
    my = (yy + rng.normal(0, 3, (h, w))).astype(np.float32)
    ref = cv2.remap(img, mx, my, cv2.INTER_CUBIC)
    out = T.remap_cubic(torch.from_numpy(img)[None, None], torch.from_numpy(mx)[None], torch.from_numpy(my)[None])
    assert np.abs(out[0, 0].numpy() - ref).max() < 1e-3


@pytest.mark.parametrize("ksize", [3, 5])
def test_median_blur_is_cv_median_blur(ksize):
    rng = np.random.default_rng(2)
    u = rng.normal(size=(2, 37, 53)).astype(np.float32)
    u[:, 10:20, 10:30] = 0.25  # ties
    ref = np.stack([cv2.medianBlur(x, ksize) for x in u])
    assert np.array_equal(T.median_blur(torch.from_numpy(u), ksize).numpy(), ref)
    assert np.array_equal(ops._median_sort(torch.from_numpy(u), ksize).numpy(), ref)  # the path for ksize > 5


def test_to_gray_matches_cv_cvtcolor():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (2, 31, 45, 3), dtype=np.uint8)
    ref = np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in rgb])
    assert np.array_equal(to_gray(rgb), ref)
    assert np.array_equal(to_gray(torch.from_numpy(rgb)).numpy(), ref)
