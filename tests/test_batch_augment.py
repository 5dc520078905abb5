"""Batched training augmentation (issue 27): the same draws as before, the same clips as the per-clip reference, and
the same batches whether the loader or the training device applies them."""

from __future__ import annotations

import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from actrec.data_manifests.manifest import read_manifest
from actrec.errors import DeviceError
from actrec.training.augment import (AugmentParams, Box, draw_tsn, draw_variation, flow_to_units, tsn_augment,
                                     variation_augment)
from actrec.training.batch import BatchBuffers, LoadedClip, collate_clips
from actrec.training.batch_augment import TOLERANCE, tsn_batch, variation_batch
from actrec.training.config import resolve_config
from actrec.training.datasets import ClipSource
from actrec.training.feed import augment_in_loader, train_loader

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)

PIPELINES = {"stilt": (draw_tsn, tsn_batch, tsn_augment), "cotlstm": (draw_variation, variation_batch,
                                                                      variation_augment)}

# The draws the loader made before issue 27 (recorded from its tsn_augment / variation_augment) for 256 x 340
# frames, the recipe's parameters and seed 0 at stream positions 0..5: (x, y, w, h) of the crop, flip; CoT-LSTM:
# angle, erased box or None, crop box, flip. Same draws, same clips: the demo's numbers do not move.
TSN_DRAWS = [((74, 0, 192, 168), True), ((29, 48, 224, 192), False), ((172, 0, 168, 168), True),
             ((29, 48, 224, 192), False), ((37, 24, 192, 224), True), ((74, 32, 192, 192), False)]
VARIATION_DRAWS = [(4.1089, (29, 187, 86, 27), (21, 30), False), (11.6922, None, (9, 26), False),
                   (-12.5753, (26, 20, 196, 83), (1, 10), True), (11.8492, None, (23, 10), True),
                   (11.4922, (7, 120, 115, 101), (5, 7), False), (-3.5359, None, (12, 13), True)]


def test_the_draws_are_those_of_the_loader_before_the_change():
    params = AugmentParams()
    for position, (box, flip) in enumerate(TSN_DRAWS):
        draw = draw_tsn(256, 340, params, np.random.default_rng([0, position]))
        assert (draw.region, draw.flip) == (Box(*box), flip)
    for position, (angle, erased, corner, flip) in enumerate(VARIATION_DRAWS):
        draw = draw_variation(256, 340, params, np.random.default_rng([0, position]))
        assert round(draw.angle, 4) == angle and draw.flip == flip
        assert draw.erase == (Box(*erased) if erased else None) and draw.crop == Box(*corner, 224, 224)


def _clips(model: str, params: AugmentParams, count: int, flow_dtype: np.dtype, size=(48, 64), n: int = 2,
           length: int = 3) -> list[tuple[np.ndarray, np.ndarray, np.random.Generator]]:
    """Random stored clips (RGB [n, H, W, 3] uint8, flow [n, L, H, W, 2]) and each clip's generator."""
    rng = np.random.default_rng(7)
    n = n if model == "stilt" else 1
    clips = []
    for position in range(count):
        rgb = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
        flow = (rng.integers(0, 256, (n, length, *size, 2), dtype=np.uint8) if flow_dtype == np.uint8
                else rng.normal(0, 5, (n, length, *size, 2)).astype(np.float16))
        clips.append((rgb, flow, np.random.default_rng([3, position])))
    return clips


def _loaded(model: str, rgb: np.ndarray, flow: np.ndarray, params: AugmentParams,
            rng: np.random.Generator) -> LoadedClip:
    """What the loader makes of a clip: the draws, and the region cut by slicing."""
    draw = PIPELINES[model][0](*rgb.shape[1:3], params, rng)
    if draw.region is not None:
        box = draw.region
        rgb, flow = rgb[:, box.y:box.y + box.h, box.x:box.x + box.w], flow[..., box.y:box.y + box.h,
                                                                            box.x:box.x + box.w, :]
    return LoadedClip(rgb, list(flow), draw, 0)


@pytest.mark.parametrize("flow_dtype", [np.uint8, np.float16])
@pytest.mark.parametrize("model", PIPELINES)
def test_a_batch_on_the_cpu_equals_the_per_clip_reference_with_the_same_draws(model, flow_dtype):
    params = AugmentParams(crop=32, resize=40)
    clips = _clips(model, params, 8, flow_dtype)
    batch = collate_clips([_loaded(model, rgb, flow, params, np.random.default_rng([3, i]))
                           for i, (rgb, flow, _) in enumerate(clips)])
    assert batch.rgb.dtype == torch.uint8 and batch.flow.dtype == torch.from_numpy(clips[0][1]).dtype
    if model == "stilt":
        assert len(batch.groups) > 1  # clips of several crop sizes share the batch
    rgb, flow = PIPELINES[model][1](batch, 20.0, params)
    for b, (clip_rgb, clip_flow, rng) in enumerate(clips):
        ref_rgb, ref_flow = PIPELINES[model][2](torch.from_numpy(clip_rgb).permute(0, 3, 1, 2),
                                                torch.from_numpy(clip_flow).permute(0, 1, 4, 2, 3), 20.0, params, rng)
        assert rgb[b].shape == ref_rgb.shape and flow[b].shape == ref_flow.shape
        assert (rgb[b] - ref_rgb).abs().max() <= TOLERANCE and (flow[b] - ref_flow).abs().max() <= TOLERANCE


def _position_coded(height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One stored clip whose red channel and flow y codes hold the column index, and flow x the code 200."""
    columns = np.broadcast_to(np.arange(width, dtype=np.uint8), (height, width))
    rgb = np.stack([columns, np.zeros_like(columns), np.zeros_like(columns)], axis=-1)[None]  # (1, H, W, 3)
    flow = np.stack([np.full_like(columns, 200), columns], axis=-1)[None, None]  # (1, 1, H, W, 2)
    return rgb, flow


def test_batched_clips_show_their_drawn_crops_and_flips_with_flow_x_negated_when_flipped():
    params = AugmentParams(crop=32, resize=40, scales=(1.0, 0.75))
    rgb, flow = _position_coded()
    loaded = [_loaded("stilt", rgb, flow[0], params, np.random.default_rng([1, i])) for i in range(12)]
    batch = collate_clips(loaded)
    out_rgb, out_flow = tsn_batch(batch, 20.0, params)
    columns = (out_rgb[:, 0, 0] * 0.229 + 0.485) * 255  # red, ImageNet normalisation undone: source column
    assert {clip.draw.flip for clip in loaded} == {False, True}
    for b, clip in enumerate(loaded):
        box, flip = clip.draw.region, clip.draw.flip
        first, last = float(columns[b, :, 0].mean()), float(columns[b, :, -1].mean())
        left, right = (last, first) if flip else (first, last)
        assert abs(left - box.x) < box.w / 32 and abs(right - (box.x + box.w - 1)) < box.w / 32  # the crop, mirrored
        column_from_flow = out_flow[b, 0, 0, 1] * 127.5 + 127.5  # flow y codes moved with the same geometry
        assert torch.allclose(columns[b], column_from_flow, atol=1e-3)
        x = out_flow[b, 0, 0, 0]
        assert torch.allclose(x, torch.full_like(x, (-72.5 if flip else 72.5) / 127.5))  # flipped: x negated


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fx.learnable_dataset(tmp_path_factory.mktemp("tiny"), train_per_class=3, test_per_class=0, size=40)


@pytest.mark.parametrize("model", PIPELINES)
def test_the_loader_and_the_device_make_the_same_batches_with_any_number_of_workers(data, model):
    """Augmented in the loader (--augment-on cpu) or after it (the device path, run on the CPU here), in 0 or 2
    worker processes, the loader's buffers released as each batch comes (and reused) or all held to the end (and
    never overwritten): the same tensors."""
    rows = read_manifest(data.manifest, ["train"])
    source = ClipSource(data.frames, data.flow, rows, 3)
    config = resolve_config(model, overrides=fx.tiny_overrides(data, model, iterations=16))
    augment = _device_augment(model, source, config)
    reference = list(train_loader(config, source))
    assert len(reference) == 16 and all(b.augmented for b in reference)
    assert reference[0].rgb.shape == (4, 2 if model == "stilt" else 1, 3, 32, 32)
    for workers in (0, 2):
        loader = partial(train_loader, replace(config, workers=workers), source)
        slots, released = [], []
        for batch in loader(augment=False):
            slots.append(batch.slot)
            released.append(batch.augment(*augment))  # frees the buffers for the next batches
        held = list(loader(augment=False))  # all held until the loader is done
        assert all(slot is not None for slot in slots) and len(set(slots)) < len(slots)  # buffers were reused
        if workers:
            assert any(batch.slot is None for batch in held)  # no free buffer: fresh ones, none overwritten
        for batches in (list(loader(augment=True)), released, [batch.augment(*augment) for batch in held]):
            for got, want in zip(batches, reference, strict=True):
                assert torch.equal(got.rgb, want.rgb) and torch.equal(got.flow, want.flow)
                assert torch.equal(got.labels, want.labels)


def _device_augment(model: str, source: ClipSource, config) -> tuple:
    from actrec.training.feed import augment_params
    return PIPELINES[model][1], source.bound, augment_params(config)


def test_augment_on_auto_follows_the_training_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert augment_in_loader("auto", cpu) and augment_in_loader("cpu", cpu) and augment_in_loader("cpu", cuda)
    assert not augment_in_loader("auto", cuda) and not augment_in_loader("gpu", cuda)
    with pytest.raises(DeviceError, match="--gpu"):
        augment_in_loader("gpu", cpu)


def test_flow_units_are_the_same_from_any_layout():
    codes = torch.randint(0, 256, (2, 3, 5, 7, 2), dtype=torch.uint8)
    assert torch.equal(flow_to_units(codes.permute(0, 1, 4, 2, 3), 20.0),
                       (codes.permute(0, 1, 4, 2, 3).float() - 127.5) / 127.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", PIPELINES)
def test_a_batch_on_the_gpu_matches_the_cpu(model):
    params = AugmentParams(crop=32, resize=40)
    clips = _clips(model, params, 8, np.uint8)
    batch = collate_clips([_loaded(model, rgb, flow, params, rng) for rgb, flow, rng in clips],
                          BatchBuffers(0, 1, pin=True))
    assert batch.rgb.is_pinned()
    cpu = batch.augment(PIPELINES[model][1], 20.0, params)
    gpu = batch.to(torch.device("cuda"), non_blocking=True).augment(PIPELINES[model][1], 20.0, params)
    assert torch.allclose(gpu.rgb.cpu(), cpu.rgb, atol=1e-3) and torch.allclose(gpu.flow.cpu(), cpu.flow, atol=1e-3)


def test_train_command_takes_augment_on_and_refuses_gpu_without_a_gpu(data, tmp_path):
    from click.testing import CliRunner

    from actrec.cli import cli

    options = ["--frames", data.frames, "--flow", data.flow, "--manifest", data.manifest, "--reduced", "--crop", 32,
               "--resize", 36, "--segments", 2, "--flow-length", 3, "--batch-size", 4, "--workers", 0, "--quiet"]
    done = CliRunner().invoke(cli, [str(a) for a in ["train", "stilt", "--out", tmp_path / "cpu", *options,
                                                     "--iterations", 1, "--augment-on", "cpu"]])
    assert done.exit_code == 0, done.output
    refused = CliRunner().invoke(cli, [str(a) for a in ["train", "stilt", "--out", tmp_path / "gpu", *options,
                                                        "--iterations", 1, "--augment-on", "gpu"]])
    assert refused.exit_code == 2 and "--augment-on gpu needs training on a GPU" in refused.output
