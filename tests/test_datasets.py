"""Datasets: TSN sampling, frame/flow index alignment and clamping on real stores, and the data order."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from actrec.data_manifests.manifest import ManifestRow, read_manifest, write_manifest
from actrec.errors import InputError
from actrec.pipeline.flow import FlowOptions, compute_flow
from actrec.training.augment import AugmentParams, draw_tsn, flow_to_units
from actrec.training.batch import collate_clips
from actrec.training.batch_augment import tsn_batch
from actrec.training.datasets import (ClipSource, DecodedVideos, EvalVideos, TrainClips, read_spans, rgb_index,
                                      segment_starts, stack_indices)
from actrec.training.distributed import StreamBatchSampler

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)


def test_training_segments_fall_one_in_each_equal_part():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        starts = segment_starts(30, 3, rng)
        assert [s // 10 for s in starts] == [0, 1, 2]
        seen.update(starts.tolist())
    assert seen == set(range(30))  # every position can be drawn


def test_test_positions_are_uniformly_spaced_centres():
    assert segment_starts(30, 3, None).tolist() == [5, 15, 25]
    starts = segment_starts(100, 25, None)
    assert starts.tolist() == [2 + 4 * k for k in range(25)]
    assert segment_starts(3, 25, None).min() == 0 and segment_starts(3, 25, None).max() == 2  # short: repeats
    assert segment_starts(1, 3, np.random.default_rng(0)).tolist() == [0, 0, 0]


def test_stack_indices_clamp_to_the_last_flow_and_the_rgb_frame_is_the_stacks_middle():
    assert stack_indices(2, 4, 10).tolist() == [2, 3, 4, 5]
    assert stack_indices(0, 5, 3).tolist() == [0, 1, 2, 2, 2]
    assert rgb_index(2, 4, 10) == 4 and rgb_index(6, 10, 15) == 11  # flows 6..15 span frames 6..16
    assert rgb_index(0, 10, 3) == 3  # a short video: its last frame (flow 2 maps frame 2 to frame 3)


def test_overlapping_or_touching_stacks_are_read_as_one_span():
    assert read_spans([7, 0, 5], 4, 11) == [(0, 4, [0]), (5, 11, [5, 7])]  # 0..3 apart; 5..8 and 7..10 overlap
    assert read_spans([0, 4], 4, 20) == [(0, 8, [0, 4])]  # 0..3 and 4..7 touch
    assert read_spans([0, 0, 0], 10, 3) == [(0, 3, [0])]  # a short video: one clamped stack, read once


def test_position_i_pairs_flows_i_to_i_plus_l_minus_1_with_their_middle_frame(tmp_path):
    data = fx.indexed_dataset(tmp_path, {"long": 12, "short": 3})
    source = ClipSource(data.frames, data.flow, read_manifest(data.manifest), flow_length=4)
    long, short = (source.rows.index(next(r for r in source.rows if r.video_id == v)) for v in ("long", "short"))
    assert source.num_positions(long) == 11 - 4 + 1  # 12 frames -> 11 flows -> starts 0..7
    rgb, flow = source.read(long, [0, 5, 7])
    assert rgb.shape == (3, 3, 8, 8) and flow.shape == (3, 4, 2, 8, 8)
    assert rgb[:, :, 0, 0].tolist() == [[2] * 3, [7] * 3, [9] * 3]  # RGB frame i + L // 2 at position i
    pixels = (flow.float() * 40 / 255 - 20)[:, :, :, 0, 0]  # dequantised flow, flow i is (i, -i)
    for row, start in zip(pixels, (0, 5, 7)):
        assert torch.allclose(row[:, 0], torch.arange(start, start + 4).float(), atol=0.1)
        assert torch.allclose(row[:, 1], -torch.arange(start, start + 4).float(), atol=0.1)
    assert source.num_positions(short) == 1  # 3 frames -> 2 flows, fewer than L = 4
    rgb, flow = source.read(short, [0])
    x = (flow.float() * 40 / 255 - 20)[0, :, 0, 0, 0]
    assert rgb[0, 0, 0, 0] == 2 and torch.allclose(x, torch.tensor([0.0, 1.0, 1.0, 1.0]), atol=0.1)  # clamped


def test_clips_and_eval_videos_have_the_documented_layout(tmp_path):
    data = fx.indexed_dataset(tmp_path, {"a": 20})
    source = ClipSource(data.frames, data.flow, read_manifest(data.manifest), flow_length=3)
    params = AugmentParams(crop=8, resize=8, scales=(1.0,))
    clips = TrainClips(source, 4, draw_tsn, params, seed=0)
    clip = clips[(0, 17)]  # uint8, channels last, cut to its crop
    assert clip.rgb.dtype == np.uint8 and clip.rgb.shape == (4, 8, 8, 3) and clip.label == 0
    assert len(clip.stacks) == 4 and all(s.shape == (3, 8, 8, 2) and s.dtype == np.uint8 for s in clip.stacks)
    again = clips[(0, 17)]
    assert again.draw == clip.draw and np.array_equal(again.rgb, clip.rgb)  # the stream position fixes the draws
    batch = collate_clips([clip, again])
    rgb, flow = tsn_batch(batch, source.bound, params)
    assert rgb.shape == (2, 4, 3, 8, 8) and flow.shape == (2, 4, 3, 2, 8, 8)  # the models' layout
    rgb, flow, index = EvalVideos(source, 5)[0]
    assert rgb.dtype == torch.uint8 and rgb.shape == (5, 3, 8, 8) and flow.shape == (5, 3, 2, 8, 8)
    assert rgb[:, 0, 0, 0].tolist() == (segment_starts(19 - 3 + 1, 5, None) + 3 // 2).tolist()


def test_cached_videos_give_the_same_clips_as_the_stores(tmp_path):
    """With the decoded-video cache on, every read (long and clamped short videos, any positions, again after the
    video is cached) equals the store's, bit for bit; each video is read from the stores once."""
    data = fx.indexed_dataset(tmp_path, {"long": 12, "short": 3})
    rows = read_manifest(data.manifest)
    plain = ClipSource(data.frames, data.flow, rows, flow_length=4)
    cached = ClipSource(data.frames, data.flow, rows, flow_length=4, cache_mb=1)
    reads = []
    whole_reads = cached.frames.read

    def counted(video_id, indices=None):
        reads.append(video_id)
        return whole_reads(video_id, indices)

    cached.frames.read = counted
    position = {row.video_id: index for index, row in enumerate(rows)}
    for video_id, starts in [("long", [0, 5, 7]), ("short", [0]), ("long", [7, 2, 2]), ("short", [0, 0]),
                             ("long", [1])]:
        index = position[video_id]
        for expected, actual in zip(plain.read(index, starts), cached.read(index, starts)):
            assert expected.dtype == actual.dtype and torch.equal(expected, actual)
    assert sorted(reads) == ["long", "short"] and cached.cache.size == sum(
        a.nbytes for video in ("long", "short") for a in cached.cache.get(video))


def test_decoded_video_cache_keeps_the_most_recent_videos_within_its_bytes():
    def video(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(nbytes - 10, np.uint8), np.zeros(10, np.uint8)

    cache = DecodedVideos(capacity=250)
    for name in "abc":
        cache.put(name, video(100))  # a is dropped to make room for c
    assert cache.get("a") is None and cache.get("b") is not None and cache.size == 200
    cache.put("d", video(100))  # b was used last, so c goes
    assert cache.get("c") is None and cache.get("b") is not None and cache.get("d") is not None
    big = video(300)
    assert cache.put("e", big) is big and cache.get("e") is None and cache.size == 200  # never kept: over capacity
    off = DecodedVideos(capacity=0)
    off.put("a", video(20))
    assert off.get("a") is None and off.size == 0


def test_missing_video_is_reported(tmp_path):
    data = fx.indexed_dataset(tmp_path, {"a": 5})
    rows = read_manifest(data.manifest)
    stranger = rows[0].__class__("ghost", "ghost.mp4", 0, "only", "train")
    with pytest.raises(InputError, match="ghost"):
        ClipSource(data.frames, data.flow, [*rows, stranger], flow_length=2)


def _order(world_size: int, accumulate: int, start: int = 0, stop: int = 6, rank: int = 0) -> list:
    sampler = StreamBatchSampler(7, 4, seed=3, rank=rank, world_size=world_size, accumulate=accumulate,
                                 start=start, stop=stop)
    return list(sampler)


def test_data_order_is_shared_by_processes_accumulation_and_resume():
    single = _order(1, 2)
    ranks = [_order(2, 1, rank=r) for r in (0, 1)]
    assert single[0::2] == ranks[0] and single[1::2] == ranks[1]  # 2 processes == 1 process x 2 micro-batches
    assert _order(1, 2, start=3) == single[6:]  # a resumed run continues the same stream
    positions = [p for batch in _order(1, 1, stop=7) for _, p in batch]
    assert positions == list(range(28))
    videos = [v for batch in _order(1, 1, stop=7) for v, _ in batch]
    for epoch in range(4):
        assert sorted(videos[7 * epoch:7 * epoch + 7]) == list(range(7))  # each epoch is a permutation
    assert videos[:7] != videos[7:14]  # reshuffled every epoch


def test_alignment_holds_for_flow_computed_by_the_flow_stage(tmp_path):
    """Frames still for 4 frames, then sliding right 2 px per frame: TV-L1 flows 0-2 are ~0, flows 3+ are ~(2, 0),
    so the stack at position 2 must read (0, 2, 2) in x."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (40, 80, 3)).astype(np.uint8), (0, 0), 2.0)
    offsets = [0, 0, 0, 0, 2, 4, 6, 8]
    frames = np.stack([texture[4:36, 20 - o:52 - o] for o in offsets])  # content moves right by o
    fx.write_frame_store(tmp_path / "frames", {"slide": frames})
    summary = compute_flow(tmp_path / "frames", tmp_path / "flow", FlowOptions(backend="opencv"), progress=False, log=lambda _: None)
    assert summary.done == 1
    write_manifest(tmp_path / "m.csv", [ManifestRow("slide", "slide.mp4", 0, "only", "train")])
    source = ClipSource(tmp_path / "frames", tmp_path / "flow", read_manifest(tmp_path / "m.csv"), flow_length=3)
    rgb, flow = source.read(0, [2])
    assert torch.equal(rgb[0].permute(1, 2, 0), torch.from_numpy(frames[2]))
    x = flow_to_units(flow, source.bound)[0, :, 0, 8:24, 8:24].mean(dim=(1, 2)) * source.bound  # pixels
    assert x.tolist() == pytest.approx([0.0, 2.0, 2.0], abs=0.3)
