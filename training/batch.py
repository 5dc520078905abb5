"""The loader's half of the training input pipeline: clips cut as uint8, collated into one uint8 batch.

A training clip leaves the loader as it was stored, uint8 (flow: uint8 codes, or float16 pixels for float16
stores), with its augmentation drawn but not applied (``augment.ClipDraw``); the loader only cuts STILT's crop out
of the frames by slicing. ``collate_clips`` copies the clips of a micro-batch into one flat buffer per stream,
clips of one size together, without padding, allocated where the batch travels: in shared memory in a worker
process (the DataLoader then passes it to the main process without a copy), in pinned memory in the main process
on a CUDA run (``torch.empty(pin_memory=True)``, from PyTorch's caching host allocator, which hands the same pinned
blocks out again once their copies to the device are done); batches of worker processes are pinned by the
DataLoader's pin thread, from the same allocator.
The training device then converts and augments the whole batch (``actrec.training.batch_augment``).

Compared with collating the augmented float32 clips (8 STILT clips of 3 x (3 + 20) channels at 224 px: 111 MB), a
batch is about 4.5x smaller (the uint8 multi-scale crops, 168 to 256 px a side: 25 MB on average), and no float
work is left to the loader's CPU.

A clip that cannot be read (``StoreError``: undecodable frame, checksum mismatch, unreadable shard) is returned as a
``BadSample`` instead, in worker processes too: nothing is raised there, the batch carries it to the main process,
whose bad-sample policy (``actrec.training.feed``) skips it or stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from actrec.training.augment import AugmentParams, ClipDraw

# (a batch fresh from the loader, the flow store's bound, params) -> float model inputs
BatchAugment = Callable[["ClipBatch", float, AugmentParams], tuple[Tensor, Tensor]]


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


@dataclass(frozen=True)
class ClipGroup:
    """Clips of one size (``height`` x ``width``), stored one after another in a batch's flat buffers."""

    members: tuple[int, ...]  # their places in the batch: their draws, labels and outputs
    height: int
    width: int


@dataclass
class ClipBatch:
    """A micro-batch of clips. Fresh from the loader (``augmented`` False): the clips' uint8 RGB and flow (uint8
    codes or float16 pixels) in two flat buffers, clip by clip in the order of ``groups`` (clips of one size
    together, no padding; ``group_views``), with their ``draws`` still to apply; augmented: the model's inputs,
    float32 RGB [B, n, 3, c, c] and flow [B, n, L, 2, c, c]. ``bad``: the clips of the micro-batch that could not
    be read (not in the tensors)."""

    rgb: Tensor
    flow: Tensor
    labels: Tensor
    frames: int = 0  # n: RGB frames (segments) per clip
    length: int = 0  # L: flows per stack
    groups: list[ClipGroup] = field(default_factory=list)
    draws: list[ClipDraw] = field(default_factory=list)
    bad: list[BadSample] = field(default_factory=list)
    augmented: bool = False
    slot: tuple[int, int] | None = None  # the loader buffers holding the data (``BatchBuffers``), until released
    in_use: Tensor | None = None  # the loader's table of buffers in use

    def __len__(self) -> int:
        return len(self.labels)

    def group_views(self) -> Iterator[tuple[ClipGroup, Tensor, Tensor]]:
        """Each group with its clips' RGB [g, n, h, w, 3] and flow [g, n, L, h, w, 2]: views of the buffers."""
        rgb_at = flow_at = 0
        for group in self.groups:
            shape = (len(group.members), self.frames, group.height, group.width)
            rgb_size, flow_size = math.prod(shape) * 3, math.prod(shape) * self.length * 2
            yield (group, self.rgb[rgb_at:rgb_at + rgb_size].view(*shape, 3),
                   self.flow[flow_at:flow_at + flow_size].view(*shape[:2], self.length, *shape[2:], 2))
            rgb_at, flow_at = rgb_at + rgb_size, flow_at + flow_size

    def pin_memory(self) -> "ClipBatch":
        """The batch in pinned memory (called by the DataLoader's pin thread); pinned tensors stay as they are.
        The loader's buffers are released: the data has been copied out."""
        pinned = replace(self, slot=None, in_use=None, **{name: tensor if tensor.is_pinned() else tensor.pin_memory()
                                                          for name, tensor in self.tensors().items()})
        self.release()
        return pinned

    def to(self, device: torch.device, non_blocking: bool = False) -> "ClipBatch":
        """The batch on ``device``; the loader's buffers, if any, are released by the returned batch."""
        moved = replace(self, **{name: tensor.to(device, non_blocking=non_blocking)
                                 for name, tensor in self.tensors().items()})
        self.slot = None  # released once, by ``moved``
        return moved

    def release(self) -> None:
        """Give the loader's buffers back for another batch (once the data has been copied out of them)."""
        if self.slot is not None and self.in_use is not None:
            self.in_use[self.slot] = 0
        self.slot = None

    def tensors(self) -> dict[str, Tensor]:
        return {"rgb": self.rgb, "flow": self.flow, "labels": self.labels}

    def augment(self, augment: BatchAugment, bound: float, params: AugmentParams) -> "ClipBatch":
        """The batch with its draws applied, on its device (a batch with no clip stays as it is)."""
        if self.augmented or not len(self):
            return self
        rgb, flow = augment(self, bound, params)
        self.release()
        return replace(self, rgb=rgb, flow=flow, augmented=True, slot=None, in_use=None)


class BatchBuffers:
    """The flat batch buffers of a loader process, reused from batch to batch: ``collate_clips`` writes into them.

    Fresh memory costs a page fault per 4 KB on first touch, about two thirds of a collate's time (25 MB per 8
    STILT clips). Each process keeps ``slots`` buffer pairs (RGB, flow), and a table shared with the main process
    says which are in use: a loader process takes a free one and sends the batch in it (shared memory from a worker
    process, which the DataLoader passes without a copy); the main process frees it once the data has been copied
    out (``ClipBatch.release``: by the pin thread after pinning, or after the augmentation). With every slot in use
    (batches held longer) a fresh buffer is allocated, so a buffer in use is never written. ``pin``: fresh pinned
    buffers instead (a CUDA run without workers; PyTorch's caching host allocator reuses them once their copies to
    the device are done)."""

    def __init__(self, workers: int, slots: int, pin: bool = False) -> None:
        self.in_use = torch.zeros(max(workers, 1), slots, dtype=torch.uint8)
        if workers:
            self.in_use.share_memory_()  # before the workers start: they and the main process share it
        self.pin = pin
        self._slots: list[tuple[Tensor, Tensor] | None] = [None] * slots  # this process's buffers

    def take(self, rgb_numel: int, flow_numel: int, flow_dtype: torch.dtype) -> tuple[Tensor, Tensor,
                                                                                        tuple[int, int] | None]:
        """Flat RGB (uint8) and flow buffers of these sizes and the slot they hold (None: fresh, not reused)."""
        worker = get_worker_info()
        if self.pin:
            return fresh_tensor(rgb_numel, torch.uint8, True), fresh_tensor(flow_numel, flow_dtype, True), None
        row = worker.id if worker is not None else 0
        free = [s for s in range(len(self._slots)) if not self.in_use[row, s]]
        if not free:
            return fresh_tensor(rgb_numel, torch.uint8), fresh_tensor(flow_numel, flow_dtype), None
        slot = free[0]
        held = self._slots[slot]
        if held is None or held[0].numel() < rgb_numel or held[1].numel() < flow_numel or held[1].dtype != flow_dtype:
            held = self._slots[slot] = (fresh_tensor(rgb_numel * 3 // 2, torch.uint8),  # room for larger crops
                                        fresh_tensor(flow_numel * 3 // 2, flow_dtype))
        self.in_use[row, slot] = 1
        return held[0][:rgb_numel], held[1][:flow_numel], (row, slot)


def collate_clips(items: Sequence[LoadedClip | BadSample], buffers: "BatchBuffers | None" = None) -> ClipBatch:
    """One uint8 batch of the readable clips, in ``buffers`` (fresh ones when None)."""
    clips = [item for item in items if isinstance(item, LoadedClip)]
    bad = [item for item in items if isinstance(item, BadSample)]
    labels = torch.tensor([clip.label for clip in clips], dtype=torch.int64)
    if not clips:
        empty = torch.empty(0, dtype=torch.uint8)
        return ClipBatch(empty, empty, labels, bad=bad)
    by_size: dict[tuple[int, int], list[int]] = {}
    for b, clip in enumerate(clips):
        by_size.setdefault(clip.rgb.shape[1:3], []).append(b)
    frames, length = len(clips[0].rgb), len(clips[0].stacks[0])
    pixels = frames * sum(h * w * len(members) for (h, w), members in by_size.items())
    flow_dtype = torch.from_numpy(clips[0].stacks[0][:0]).dtype  # uint8 codes or float16 pixels, as stored
    if buffers is None:
        rgb, flow, slot = fresh_tensor(pixels * 3, torch.uint8), fresh_tensor(pixels * length * 2, flow_dtype), None
    else:
        rgb, flow, slot = buffers.take(pixels * 3, pixels * length * 2, flow_dtype)
    batch = ClipBatch(rgb, flow, labels, frames, length, [ClipGroup(tuple(m), h, w) for (h, w), m in by_size.items()],
                      [clip.draw for clip in clips], bad, slot=slot,
                      in_use=buffers.in_use if buffers is not None and slot is not None else None)
    for group, rgb, flow in batch.group_views():
        rgb_np, flow_np = rgb.numpy(), flow.numpy()
        for slot, b in enumerate(group.members):
            rgb_np[slot] = clips[b].rgb
            for i, stack in enumerate(clips[b].stacks):
                flow_np[slot, i] = stack
    return batch


def fresh_tensor(numel: int, dtype: torch.dtype, pin: bool = False) -> Tensor:
    """An uninitialised flat buffer where a batch travels: shared memory in a DataLoader worker, pinned memory if
    asked, else ordinary memory."""
    if get_worker_info() is not None:
        storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)  # as default_collate does
        return torch.empty(0, dtype=dtype).new(storage)
    return torch.empty(numel, dtype=dtype, pin_memory=pin)
