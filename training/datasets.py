"""Datasets over a frame store, a flow store and a manifest split: training clips and whole test videos.

Index alignment (the flow store's convention, ``actrec.pipeline.flow``): a video of N frames has F = N - step flows
and flow i maps frame i to frame i + step. A *position* i is the flow stack i .. i + L - 1 and the RGB frame at its
middle, i + L // 2 (``rgb_index``), so the frame shows the scene half-way through the motion the stack describes.
(Pairing the stack with its first frame instead would let the spatial stream see only frames 0 .. F - L, the start
of every video, where an object's position tells its direction of motion: a leak of motion into the appearance
stream, measured on the demo's classes in benchmarks/RESULTS.md.) The valid positions are 0 .. F - L. A video with
fewer than L flows has the single position 0 and its stack is clamped: flow indices past the last flow repeat the
last flow (``stack_indices``), and its RGB frame is clamped to frame F, the last frame a flow reaches. A video with
no flow at all is an error.

Sampling (TSN): the valid positions are split into n equal parts; training takes a random position in each part,
testing the centre of each part (``segment_starts``). STILT draws n = ``segments`` positions per training clip; CoT-LSTM
one. At test time both take ``positions`` (25) uniformly spaced positions of every video.

Layout: a model sees RGB ``[n, 3, H, W]`` and flow ``[n, L, 2, H, W]`` per clip (x then y for each flow, in time
order), as test items (``EvalVideos``) hold them. Training clips leave the loader channels last, as stored, and
uint8 (``actrec.training.batch``), and reach that layout after the batch augmentation. STILT's 2L-channel stacks
are that flow tensor flattened over (L, 2): channels x1, y1, x2, y2, ... interleaved, the TSN/mmaction2 order
(``actrec.training.models``).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from actrec.data_manifests.manifest import ManifestRow
from actrec.errors import InputError, StoreError
from actrec.pipeline.flow import FlowStore
from actrec.pipeline.frames import FrameStore
from actrec.training.augment import AugmentParams, ClipDraw
from actrec.training.batch import BadSample, LoadedClip
from actrec.wording import agrees, counted

Draw = Callable[[int, int, AugmentParams, np.random.Generator], ClipDraw]  # (height, width, params, rng) -> draws


def segment_starts(num_positions: int, segments: int, rng: np.random.Generator | None) -> np.ndarray:
    """TSN sparse sampling of ``segments`` positions in 0 .. num_positions - 1: the range is cut into equal parts
    and each part gives a uniformly random position (training, ``rng`` given) or its centre (test, ``rng`` None).
    With fewer positions than segments, positions repeat."""
    edges = np.arange(segments + 1) * (num_positions / segments)
    if rng is None:
        return np.minimum(((edges[:-1] + edges[1:]) / 2).astype(np.int64), num_positions - 1)
    low = np.floor(edges[:-1]).astype(np.int64)
    high = np.maximum(np.floor(edges[1:]).astype(np.int64), low + 1)
    return rng.integers(low, high)  # high is exclusive and at most num_positions


def rgb_index(start: int, length: int, num_flows: int) -> int:
    """The RGB frame of the position at ``start``: the middle of its stack's L flows, at most frame F (the target
    of the last flow, which every video has)."""
    return min(start + length // 2, num_flows)


def stack_indices(start: int, length: int, num_flows: int) -> np.ndarray:
    """Flow indices of the stack at ``start``: start .. start + length - 1, clamped to the last flow."""
    return np.minimum(start + np.arange(length), num_flows - 1)


class DecodedVideos:
    """A least-recently-used store of whole decoded videos (frames and flows as stored), at most ``capacity`` bytes.

    For small datasets trained for many epochs (the demo reads each of its 192 training videos about 25 times), it
    saves the store reads and JPEG decoding of every clip after a video's first; at dataset scale a video comes back
    too rarely for it to help, so it is off (capacity 0) unless asked for. Memory stays within the capacity however
    large the store; every DataLoader process holds its own.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._videos: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, video_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The video's (frames, flows), now the most recently used, or None."""
        if video_id in self._videos:
            self._videos.move_to_end(video_id)
        return self._videos.get(video_id)

    def put(self, video_id: str, arrays: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Keep a video (unless it alone exceeds the capacity), dropping the least recently used to make room;
        returns ``arrays``."""
        nbytes = sum(a.nbytes for a in arrays)
        if nbytes <= self.capacity:
            while self.size + nbytes > self.capacity:
                self.size -= sum(a.nbytes for a in self._videos.popitem(last=False)[1])
            self._videos[video_id] = arrays
            self.size += nbytes
        return arrays


class ClipSource:
    """Reads RGB frames and flow stacks of the videos of a manifest split from a frame store and a flow store.

    Safe to hand to DataLoader workers (the stores reopen their files after a fork).
    """

    def __init__(self, frames_root: str | Path, flow_root: str | Path, rows: Sequence[ManifestRow],
                 flow_length: int, cache_mb: int = 0) -> None:
        self.frames = FrameStore(frames_root)
        self.flow = FlowStore(flow_root)
        self.rows = list(rows)
        self.flow_length = flow_length
        self.cache = DecodedVideos(cache_mb * 2**20)
        self._num_flows: dict[int, int] = {}  # per video, read once (an HDF5 group and attribute lookup each)
        for store, root in ((self.frames, frames_root), (self.flow, flow_root)):
            missing = [r.video_id for r in self.rows if r.video_id not in store]
            if missing:
                raise InputError(f"{root}: {len(missing)} of the {counted(len(self.rows), 'video')} of the manifest "
                                 f"split {agrees(len(missing), 'is', 'are')} not in this store, e.g. {missing[0]!r}")

    @property
    def bound(self) -> float:
        return self.flow.bound

    def __len__(self) -> int:
        return len(self.rows)

    def num_flows(self, index: int) -> int:
        """Flows of a video; a video with none raises StoreError (it cannot make a clip)."""
        count = self._num_flows.get(index)
        if count is None:
            video_id = self.rows[index].video_id
            count = self.flow.num_flows(video_id)
            if count < 1:
                raise StoreError(f"{self.flow.root}: video {video_id!r} has no flow (fewer than two frames)")
            self._num_flows[index] = count
        return count

    def num_positions(self, index: int) -> int:
        """Valid stack starts 0 .. F - L (at least one: short videos use clamped stacks)."""
        return max(self.num_flows(index) - self.flow_length + 1, 1)

    def read(self, index: int, starts: Sequence[int]) -> tuple[Tensor, Tensor]:
        """uint8 RGB Tensor[P, 3, H, W] (each stack's middle frame, ``rgb_index``) and flow Tensor[P, L, 2, H, W]
        (uint8 codes or float16 pixels, as stored) of the stacks starting at ``starts``."""
        rgb, stacks = self.read_arrays(index, starts)
        rgb_t = torch.from_numpy(rgb).permute(0, 3, 1, 2)  # (P, 3, H, W)
        flow_t = torch.from_numpy(np.stack(stacks)).permute(0, 1, 4, 2, 3)  # (P, L, 2, H, W)
        return rgb_t.contiguous(), flow_t.contiguous()

    def read_arrays(self, index: int, starts: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        """As stored, channels last: RGB uint8 [P, H, W, 3] (each stack's middle frame) and the P flow stacks
        [L, H, W, 2] (uint8 codes or float16 pixels) starting at ``starts``."""
        video_id = self.rows[index].video_id
        num_flows = self.num_flows(index)
        frame_indices = [rgb_index(int(s), self.flow_length, num_flows) for s in starts]
        whole = self._whole_video(video_id, num_flows)
        if whole is None:
            rgb = self.frames.read(video_id, frame_indices)  # (P, H, W, 3)
            stacks = self.read_stacks(video_id, [int(s) for s in starts], num_flows)  # each (L, H, W, 2)
        else:
            rgb = whole[0][frame_indices]
            stacks = [stack_of(whole[1], int(s), self.flow_length) for s in starts]
        if rgb.shape[1:3] != stacks[0].shape[1:3]:
            raise StoreError(f"{self.flow.root}: flow of {video_id!r} is {stacks[0].shape[2]}x{stacks[0].shape[1]} "
                             f"but its frames are {rgb.shape[2]}x{rgb.shape[1]}; recompute the flow from these frames")
        return rgb, stacks

    def _whole_video(self, video_id: str, num_flows: int) -> tuple[np.ndarray, np.ndarray] | None:
        """All frames and flows of a video, as stored, from the cache (read whole on a miss); None when the cache
        is off."""
        if not self.cache.capacity:
            return None
        return self.cache.get(video_id) or self.cache.put(
            video_id, (self.frames.read(video_id), self.flow.read_stack(video_id, 0, num_flows)))

    def read_stacks(self, video_id: str, starts: list[int], num_flows: int) -> list[np.ndarray]:
        """Flow Arrays [L, H, W, 2] (as stored) of the stacks at ``starts``, each read as part of one span of
        overlapping stacks (``read_spans``)."""
        stacks: dict[int, np.ndarray] = {}
        for first, stop, members in read_spans(starts, self.flow_length, num_flows):
            data = self.flow.read_stack(video_id, first, stop - first)  # (stop - first, H, W, 2)
            for start in members:
                stacks[start] = stack_of(data, start - first, self.flow_length)
        return [stacks[start] for start in starts]


def stack_of(flows: np.ndarray, start: int, length: int) -> np.ndarray:
    """The stack at ``start`` of consecutive ``flows`` (clamped to the last): a view where no flow repeats."""
    if start + length <= len(flows):
        return flows[start:start + length]
    return flows[stack_indices(start, length, len(flows))]


def read_spans(starts: Sequence[int], length: int, num_flows: int) -> list[tuple[int, int, list[int]]]:
    """Flow ranges ``[first, stop)`` that cover the stacks at ``starts`` (each clamped to the last flow), stacks that
    overlap or touch merged into one range, with the starts each covers. Short videos and test-time positions put
    many stacks over the same flows: read once per span, a flow is decompressed once, not once per stack."""
    spans: list[tuple[int, int, list[int]]] = []
    for start in sorted(set(starts)):
        stop = min(start + length, num_flows)
        if spans and start <= spans[-1][1]:
            first, last_stop, members = spans[-1]
            spans[-1] = (first, max(last_stop, stop), [*members, start])
        else:
            spans.append((start, stop, [start]))
    return spans


class TrainClips(Dataset):
    """Training clips: item ``(video index, stream position)`` -> ``LoadedClip`` (uint8, cut to the draw's region:
    RGB [n, h, w, 3], n flow stacks [L, h, w, 2], the draw, the label), or a ``BadSample`` if the clip cannot be read.

    The stream position (see ``actrec.training.distributed.StreamBatchSampler``) seeds the clip's random numbers
    (positions first, then the augmentation's draws), so a clip's positions and augmentation do not depend on
    workers, processes or restarts. The draws are applied to whole batches later (``batch_augment``).
    """

    def __init__(self, source: ClipSource, segments: int, draw: Draw, params: AugmentParams, seed: int) -> None:
        self.source = source
        self.segments = segments
        self.draw = draw
        self.params = params
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> LoadedClip | BadSample:
        index, position = item
        try:
            return self.clip(index, position)
        except StoreError as exc:  # this clip only; the bad-sample policy decides in the main process
            return BadSample(self.source.rows[index].video_id, position, str(exc))

    def clip(self, index: int, position: int) -> LoadedClip:
        """The clip, or StoreError."""
        rng = np.random.default_rng([self.seed, position])
        starts = segment_starts(self.source.num_positions(index), self.segments, rng)
        rgb, stacks = self.source.read_arrays(index, starts)
        draw = self.draw(*rgb.shape[1:3], self.params, rng)
        if draw.region is not None:  # cut by slicing, uint8
            rows = slice(draw.region.y, draw.region.y + draw.region.h)
            columns = slice(draw.region.x, draw.region.x + draw.region.w)
            rgb, stacks = rgb[:, rows, columns], [stack[:, rows, columns] for stack in stacks]
        return LoadedClip(rgb, stacks, draw, self.source.rows[index].label)


class EvalVideos(Dataset):
    """Whole videos for testing: item ``index`` -> (uint8 RGB [P, 3, H, W], stored flow [P, L, 2, H, W], index)
    at ``positions`` uniformly spaced positions; views are cut from them by ``actrec.training.evaluate``."""

    def __init__(self, source: ClipSource, positions: int) -> None:
        self.source = source
        self.positions = positions

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        starts = segment_starts(self.source.num_positions(index), self.positions, None)
        rgb, flow = self.source.read(index, starts)
        return rgb, flow, index
