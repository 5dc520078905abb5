"""The loader's half of the training input pipeline: clips cut as uint8, collated into one uint8 batch.

A training clip leaves the loader as it was stored, uint8 (flow: uint8 codes, or float16 pixels for float16
stores), with its augmentation drawn but not applied (``augment.ClipDraw``); the loader only cuts STILT's crop out
of the frames by slicing. ``collate_clips`` copies the clips of a micro-batch into one batch tensor per stream,
allocated where the batch travels: in shared memory in a worker process (the DataLoader then passes it to the main
process without a copy), in pinned memory in the main process on a CUDA run (``torch.empty(pin_memory=True)``,
from PyTorch's caching host allocator, which hands the same pinned blocks out again once their copies to the
device are done); batches of worker processes are pinned by the DataLoader's pin thread, from the same allocator.
The training device then converts and augments the whole batch (``actrec.training.batch_augment``).

Compared with collating float32 clips (8 STILT clips at 224 px: 300 MB), a batch is 4-8x smaller (8 clips of
crops up to 256 x 256 px: 36 MB), and no float work is left to the loader's CPU.

A clip that cannot be read (``StoreError``: undecodable frame, checksum mismatch, unreadable shard) is returned as a
``BadSample`` instead, in worker processes too: nothing is raised there, the batch carries it to the main process,
whose bad-sample policy (``actrec.training.feed``) skips it or stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from actrec.training.augment import AugmentParams, ClipDraw

# (uint8 RGB [B, n, H, W, 3], flow [B, n, L, H, W, 2], clip sizes, draws, bound, params) -> float model inputs
BatchAugment = Callable[[Tensor, Tensor, Sequence[tuple[int, int]], Sequence[ClipDraw], float, AugmentParams],
                        tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class BadSample:
    """A training clip that could not be read, and why (the StoreError's message names the file and entry)."""

    video_id: str
    position: int  # the clip's stream position (``distributed.StreamBatchSampler``)
    error: str


@dataclass(frozen=True)
class LoadedClip:
    """One clip as read, cut to its draw's region: RGB uint8 [n, h, w, 3] and n flow stacks [L, h, w, 2]."""

    rgb: np.ndarray
    stacks: list[np.ndarray]
    draw: ClipDraw
    label: int


@dataclass
class ClipBatch:
    """A micro-batch of clips. Fresh from the loader (``augmented`` False): uint8 RGB [B, n, H, W, 3] and flow
    [B, n, L, H, W, 2], clip b in the top-left ``sizes[b]`` of its slot, with its ``draws[b]`` still to apply;
    augmented: the model's inputs, float32 RGB [B, n, 3, c, c] and flow [B, n, L, 2, c, c]. ``bad``: the clips of
    the micro-batch that could not be read (not in the tensors)."""

    rgb: Tensor
    flow: Tensor
    labels: Tensor
    sizes: list[tuple[int, int]] = field(default_factory=list)
    draws: list[ClipDraw] = field(default_factory=list)
    bad: list[BadSample] = field(default_factory=list)
    augmented: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def pin_memory(self) -> "ClipBatch":
        """The batch in pinned memory (called by the DataLoader's pin thread); pinned tensors stay as they are."""
        return replace(self, **{name: tensor if tensor.is_pinned() else tensor.pin_memory()
                                for name, tensor in self.tensors().items()})

    def to(self, device: torch.device, non_blocking: bool = False) -> "ClipBatch":
        return replace(self, **{name: tensor.to(device, non_blocking=non_blocking)
                                for name, tensor in self.tensors().items()})

    def tensors(self) -> dict[str, Tensor]:
        return {"rgb": self.rgb, "flow": self.flow, "labels": self.labels}

    def augment(self, augment: BatchAugment, bound: float, params: AugmentParams) -> "ClipBatch":
        """The batch with its draws applied, on its device (a batch with no clip stays as it is)."""
        if self.augmented or not len(self):
            return self
        rgb, flow = augment(self.rgb, self.flow, self.sizes, self.draws, bound, params)
        return replace(self, rgb=rgb, flow=flow, augmented=True)


def collate_clips(items: Sequence[LoadedClip | BadSample], pin: bool = False) -> ClipBatch:
    """One uint8 batch of the readable clips (``pin``: in pinned memory, for a CUDA run without workers)."""
    clips = [item for item in items if isinstance(item, LoadedClip)]
    bad = [item for item in items if isinstance(item, BadSample)]
    if not clips:
        empty = torch.empty(0, dtype=torch.uint8)
        return ClipBatch(empty, empty, torch.empty(0, dtype=torch.int64), bad=bad)
    sizes = [clip.rgb.shape[1:3] for clip in clips]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    first = clips[0]
    rgb = _batch_tensor((len(clips), len(first.rgb), height, width, 3), torch.uint8, pin)
    flow_dtype = torch.from_numpy(first.stacks[0][:0]).dtype  # uint8 codes or float16 pixels, as stored
    flow = _batch_tensor((len(clips), len(first.stacks), len(first.stacks[0]), height, width, 2), flow_dtype, pin)
    rgb_np, flow_np = rgb.numpy(), flow.numpy()
    for b, (clip, (h, w)) in enumerate(zip(clips, sizes)):
        rgb_np[b, :, :h, :w] = clip.rgb
        for i, stack in enumerate(clip.stacks):
            flow_np[b, i, :, :h, :w] = stack
    labels = torch.tensor([clip.label for clip in clips], dtype=torch.int64)
    return ClipBatch(rgb, flow, labels, [tuple(s) for s in sizes], [clip.draw for clip in clips], bad)


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> Tensor:
    """An uninitialised batch tensor where it will travel: shared memory in a DataLoader worker, pinned memory if
    asked, else ordinary memory."""
    if get_worker_info() is not None:
        storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))  # as default_collate
        return torch.empty(0, dtype=dtype).new(storage).resize_(shape)
    return torch.empty(shape, dtype=dtype, pin_memory=pin)
