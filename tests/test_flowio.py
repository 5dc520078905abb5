"""Middlebury .flo I/O, the colour wheel, flow quantisation and image reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actrec.errors import InputError
from actrec.pipeline.flowio import (dequantize_flow, flow_to_color, quantize_flow, read_flo, read_gray_image,
                                    write_color_png, write_flo)


@pytest.mark.parametrize("bound", [20.0, 5.0, 0.75])
def test_quantisation_round_trip_within_half_a_step(bound):
    rng = np.random.default_rng(0)
    flow = rng.uniform(-bound, bound, (64, 80, 2)).astype(np.float32)
    flow[0, :3, 0] = [-bound, 0.0, bound]
    q = quantize_flow(flow, bound)
    assert q.dtype == np.uint8 and q.shape == flow.shape
    back = dequantize_flow(q, bound)
    assert back.dtype == np.float32
    assert np.abs(back - flow).max() <= bound / 255 * (1 + 1e-5)  # half a step of 2 * bound / 255


def test_quantisation_convention():
    assert quantize_flow(np.array([0.0]), 20.0)[0] == 128  # 127.5 -> 128: ~0 flow
    assert quantize_flow(np.array([-20.0, -100.0]), 20.0).tolist() == [0, 0]
    assert quantize_flow(np.array([20.0, 1e6]), 20.0).tolist() == [255, 255]
    assert quantize_flow(np.array([10.0]), 20.0)[0] == round(30 * 255 / 40)
    assert abs(float(dequantize_flow(np.array([128], np.uint8), 20.0)[0])) <= 20 / 255 * (1 + 1e-5)  # half a step


def test_flo_round_trip(tmp_path: Path):
    rng = np.random.default_rng(1)
    flow = rng.normal(0, 3, (37, 53, 2)).astype(np.float32)
    path = tmp_path / "x.flo"
    write_flo(path, flow)
    assert path.stat().st_size == 12 + 37 * 53 * 8
    raw = path.read_bytes()
    assert raw[:4] == b"PIEH" and np.frombuffer(raw[4:12], "<i4").tolist() == [53, 37]
    assert np.array_equal(read_flo(path), flow)


def test_reads_shared_ground_truth(shared_data: Path):
    gt = read_flo(shared_data / "flow_gt" / "flyingchairs_0000000" / "flow10.flo")
    assert gt.shape == (384, 512, 2) and gt.dtype == np.float32 and np.isfinite(gt).all()


def test_bad_flo_files_are_rejected(tmp_path: Path):
    good = tmp_path / "good.flo"
    write_flo(good, np.zeros((4, 5, 2), np.float32))
    data = good.read_bytes()
    bad_tag = tmp_path / "badtag.flo"
    bad_tag.write_bytes(b"XXXX" + data[4:])
    with pytest.raises(InputError, match="badtag.flo"):
        read_flo(bad_tag)
    short = tmp_path / "short.flo"
    short.write_bytes(data[:-4])
    with pytest.raises(InputError, match="short.flo"):
        read_flo(short)
    tiny = tmp_path / "tiny.flo"
    tiny.write_bytes(data[:6])
    with pytest.raises(InputError, match="tiny.flo"):
        read_flo(tiny)
    with pytest.raises(InputError, match="missing.flo"):
        read_flo(tmp_path / "missing.flo")
    with pytest.raises(InputError):
        write_flo(tmp_path / "w.flo", np.zeros((4, 5, 3), np.float32))


def test_flow_to_color_is_the_middlebury_wheel():
    flow = np.zeros((3, 4, 2), np.float32)
    flow[0, 0] = (1, 0)    # right
    flow[0, 1] = (0, 1)    # down
    flow[0, 2] = (-1, 0)   # left
    flow[0, 3] = (0, -1)   # up
    flow[1, 0] = (0.5, 0)  # half magnitude: paler
    img = flow_to_color(flow)
    assert img.dtype == np.uint8 and img.shape == (3, 4, 3)
    assert img[2, 0].tolist() == [255, 255, 255]  # zero flow is white
    # the Middlebury wheel (Baker et al.; flow_vis / flowToColor): right red, down yellow, left cyan-blue, up violet
    assert img[0, :4].tolist() == [[255, 0, 0], [255, 229, 0], [0, 209, 255], [88, 0, 255]]
    assert img[1, 0].tolist() == [255, 127, 127]  # half the maximum magnitude: half saturated
    capped = flow_to_color(flow * 4, max_magnitude=2.0)  # beyond the maximum: darkened x0.75
    assert capped[0, 0].tolist() == [191, 0, 0]


def test_write_color_png_and_read_gray(tmp_path: Path, shared_data: Path):
    frame = shared_data / "flow_gt" / "flyingchairs_0000000" / "frame10.png"
    gray = read_gray_image(frame)
    assert gray.dtype == np.uint8 and gray.shape == (384, 512)
    out = tmp_path / "f.png"
    write_color_png(out, np.ones((6, 7, 2), np.float32))
    assert read_gray_image(out).shape == (6, 7)
    with pytest.raises(InputError, match="nothere.png"):
        read_gray_image(tmp_path / "nothere.png")
