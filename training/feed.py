"""The training loop's input: the DataLoader over the training clips, the move to the device, the augmentation.

Where the augmentation runs (``--augment-on``): ``gpu`` on the training GPU, after the uint8 batch is copied there
(the loader processes only read, decode and cut); ``cpu`` in the loader processes, which then hand over float
batches (the CPU-only setting, and a choice for GPUs with cores to spare); ``auto`` (the default): the GPU when
training on one. The same batched functions (``actrec.training.batch_augment``) run in both places, on the same
draws, so the clips are the same up to the devices' floating-point differences.

Unreadable clips follow the bad-sample policy (``actrec.training.bad_samples``): the loader hands them over as
``BadSample`` records and ``TrainFeed`` counts, lists and skips them or raises, in the main process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from actrec.errors import DeviceError, StoreError
from actrec.training.augment import AugmentParams
from actrec.training.bad_samples import BadSampleLedger, listing_path
from actrec.training.batch import BadSample, BatchAugment, BatchBuffers, ClipBatch, LoadedClip, collate_clips
from actrec.training.config import TrainConfig
from actrec.training.datasets import ClipSource, TrainClips
from actrec.training.distributed import DistContext, StreamBatchSampler, quiet_worker, worker_batches
from actrec.training.models import MODEL_SPECS

PREFETCH = 4  # batches each loader worker prepares ahead


def augment_params(config: TrainConfig) -> AugmentParams:
    """The augmentation settings of a training config."""
    return AugmentParams(crop=config.crop, resize=config.resize, scales=config.scales,
                         max_distort=config.max_distort, rotation=config.rotation, erase_prob=config.erase_prob,
                         flip=config.flip)


def augment_in_loader(augment_on: str, device: torch.device) -> bool:
    """Whether the loader processes augment (on the CPU) rather than the training device after the copy."""
    if augment_on == "gpu" and device.type != "cuda":
        raise DeviceError("--augment-on gpu needs training on a GPU (--gpu); use --augment-on cpu or auto")
    return augment_on == "cpu" or (augment_on == "auto" and device.type != "cuda")


@dataclass(frozen=True)
class LoaderCollate:
    """The DataLoader's collate function: one uint8 ``ClipBatch`` in the loader's reused buffers, augmented here if
    ``augment`` is given."""

    augment: BatchAugment | None
    bound: float
    params: AugmentParams
    buffers: BatchBuffers

    def __call__(self, items: list[LoadedClip | BadSample]) -> ClipBatch:
        batch = collate_clips(items, self.buffers)
        return batch.augment(self.augment, self.bound, self.params) if self.augment is not None else batch


def train_loader(config: TrainConfig, source: ClipSource, *, rank: int = 0, world_size: int = 1, start: int = 0,
                 pin_memory: bool = False, augment: bool = True) -> DataLoader:
    """This process's micro-batches (``ClipBatch``) for iterations ``start`` .. ``config.iterations`` - 1: augmented
    in the loader (``augment``), or uint8 with their draws, for the device."""
    spec = MODEL_SPECS[config.model]
    params = augment_params(config)
    dataset = TrainClips(source, config.segments, spec.draw, params, config.seed)
    sampler = StreamBatchSampler(len(source), config.batch_size, config.seed, rank=rank, world_size=world_size,
                                 accumulate=config.accumulate, start=start, stop=config.iterations)
    prefetch = PREFETCH if config.workers else None
    buffers = BatchBuffers(config.workers, (prefetch or 0) + 2, pin=pin_memory and not augment and not config.workers)
    collate = LoaderCollate(spec.augment if augment else None, source.bound, params, buffers)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=config.workers, collate_fn=collate,
                      pin_memory=pin_memory, worker_init_fn=quiet_worker, prefetch_factor=prefetch,
                      generator=torch.Generator())  # its own generator: starting it leaves the global one alone


class TrainFeed:
    """The micro-batches of one training process from iteration ``start`` on: ``next()`` gives (RGB, flow, labels)
    augmented on the training device, in the dataset layout (``datasets.py``), or None when every clip of the
    micro-batch was unreadable and skipped (a single process then skips the micro-batch). Use it in a ``with``
    block around the whole loop: leaving it stops the loader's worker processes, after an error too, and an error
    raised in a worker comes out as its own one-line message (``distributed.worker_batches``)."""

    def __init__(self, config: TrainConfig, source: ClipSource, ctx: DistContext, start: int, run_dir: Path,
                 log: Callable[[str], None]) -> None:
        self.config, self.ctx = config, ctx
        self.augment, self.params, self.bound = MODEL_SPECS[config.model].augment, augment_params(config), source.bound
        self.ledger = BadSampleLedger(listing_path(run_dir, ctx.rank), config.on_bad_sample,
                                      config.bad_sample_budget, start, config.per_process_batch(ctx.world_size)
                                      * config.accumulate, log)
        self._micro_batches = start * config.accumulate
        self._loader = train_loader(config, source, rank=ctx.rank, world_size=ctx.world_size, start=start,
                                    pin_memory=ctx.device.type == "cuda",
                                    augment=augment_in_loader(config.augment_on, ctx.device))
        self._workers = contextlib.ExitStack()

    def __iter__(self) -> "TrainFeed":
        return self

    def __next__(self) -> tuple[Tensor, Tensor, Tensor] | None:
        batch = next(self._batches)
        iteration = self._micro_batches // self.config.accumulate + 1
        self._micro_batches += 1
        self.ledger.record(batch.bad, len(batch) + len(batch.bad), iteration)
        if not len(batch):
            if self.ctx.distributed:  # every process must take part in the iteration's gradient all-reduce
                raise StoreError(f"all {len(batch.bad)} clips of a micro-batch at iteration {iteration} were "
                                 f"unreadable (listed in {self.ledger.path}); the first: {batch.bad[0].error}")
            return None
        batch = batch.to(self.ctx.device, non_blocking=True).augment(self.augment, self.bound, self.params)
        return batch.rgb, batch.flow, batch.labels

    @property
    def skipped(self) -> int:
        """Clips this process skipped so far (``distributed.log_across`` sums them over the processes)."""
        return self.ledger.skipped

    def __enter__(self) -> "TrainFeed":
        self._batches = self._workers.enter_context(worker_batches(self._loader))
        return self

    def __exit__(self, *exc: object) -> bool:
        return self._workers.__exit__(*exc)
