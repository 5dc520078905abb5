"""Processes, devices and the data order of a training run, single-process or under torchrun (DDP).

Launch with ``torchrun --nproc-per-node G [--nnodes N ...] -m actrec.cli train ...``: every process reads RANK,
WORLD_SIZE and LOCAL_RANK, uses ``cuda:LOCAL_RANK`` with --gpu (NCCL) or the CPU (gloo). Or with Slurm's
``srun --ntasks-per-node G actrec train ...``: SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID stand for them, and
MASTER_ADDR/MASTER_PORT are derived from the step's node list and the job id unless set
(:mod:`actrec.pipeline.launcher`).

Data order: one endless stream of epochs, epoch e being a permutation of the videos seeded by (seed, e). Iteration k
consumes stream positions k*B .. (k+1)*B - 1 (B = the global batch), dealt out interleaved over W processes x A
accumulation steps: micro-batch a of rank r takes every (W*A)-th position from a*W + r. The order is a pure function
of the iteration, so a resumed run continues exactly where it stopped, and W processes with A = 1 see the same
micro-batches as one process with A = W.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from actrec.errors import ActrecError
from actrec.pipeline.flow import resolve_device
from actrec.pipeline.launcher import rendezvous
from actrec.pipeline.stage import resolve_rank


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(gpu: bool) -> DistContext:
    """Join the torchrun or srun job (if its world size is above 1) with NCCL on GPUs or gloo on CPUs; pick this
    process's device."""
    rank, world_size = resolve_rank()
    device = torch.device(resolve_device(gpu))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        os.environ.update(rendezvous())  # srun sets no MASTER_ADDR/MASTER_PORT: task 0's host, a port per job
        if device.type == "cuda":  # NCCL bound to this process's GPU (barrier() then knows the device)
            dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device)
        else:
            dist.init_process_group("gloo", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, device)


def close_distributed(ctx: DistContext, failed: bool = False) -> None:
    """Leave the process group: after a last barrier, so that no rank exits while another still communicates, or at
    once when this process ``failed`` (the others may be anywhere in the loop, and a barrier would wait for them
    forever; they fail in their next collective when this process is gone, and torchrun ends the job)."""
    if ctx.distributed and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def log_across(loss: torch.Tensor, stop: bool, skipped: int, ctx: DistContext) -> tuple[float, bool, int]:
    """(mean of ``loss`` over all processes, whether any process was asked to stop, the unreadable clips all
    processes skipped so far), in one all-reduce.

    The only host synchronisation of a training iteration, so the trainer calls it on log iterations only; under
    DDP a stop request is therefore acted on at the next log iteration, by every process at once.
    """
    if not ctx.distributed:
        return float(loss.item()), stop, skipped
    tensor = torch.cat([loss.detach().to(torch.float64).reshape(1),
                        torch.tensor([float(stop), float(skipped)], dtype=torch.float64, device=loss.device)])
    dist.all_reduce(tensor)
    total, stops, skips = tensor.tolist()
    return total / ctx.world_size, stops > 0, int(skips)


def gather_objects(value: Any, ctx: DistContext) -> list[Any]:
    """``value`` of every process, in rank order (plain Python/tensor objects; e.g. RNG states)."""
    if not ctx.distributed:
        return [value]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered


class StreamBatchSampler(Sampler[list[tuple[int, int]]]):
    """This process's micro-batches of (video index, stream position) for iterations ``start`` .. ``stop`` - 1
    (the order in the module docstring); ``accumulate`` micro-batches per iteration."""

    def __init__(self, num_videos: int, batch_size: int, seed: int, *, rank: int, world_size: int,
                 accumulate: int, start: int, stop: int) -> None:
        self.num_videos = num_videos
        self.batch_size = batch_size
        self.seed = seed
        self.shards = world_size * accumulate
        self.first_shard = rank
        self.world_size = world_size
        self.accumulate = accumulate
        self.start = start
        self.stop = stop
        self._epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.accumulate

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.stop):
            positions = range(iteration * self.batch_size, (iteration + 1) * self.batch_size)
            for step in range(self.accumulate):
                shard = step * self.world_size + self.first_shard
                yield [(self.video_at(p), p) for p in positions[shard::self.shards]]

    def video_at(self, position: int) -> int:
        """The video at a stream position."""
        epoch, offset = divmod(position, self.num_videos)
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_videos)
            self._epoch = epoch
        return int(self._order[offset])


def quiet_worker(worker_id: int) -> None:
    """DataLoader worker init: leave SIGINT/SIGTERM to the main process, which finishes the iteration, checkpoints
    and stops the workers (Ctrl-C and ``scancel`` signal every process of a job, and a worker killed mid-iteration
    would cost the checkpoint). The main process must therefore stop its workers itself on every way out of the
    loop: ``worker_batches``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_WORKER_DIED = "DataLoader worker (pid"  # how torch's errors for a worker that died (killed, crashed) begin


@contextlib.contextmanager
def worker_batches(loader: DataLoader) -> Iterator[Iterator]:
    """The iterator of ``loader``, whose worker processes are stopped when the block ends, by an error too; an
    ActrecError raised in a worker comes out with its own one-line message, and a worker's death as one line.

    Why explicitly: the traceback of an error raised in the block holds the iterator, so its own cleanup (when
    garbage-collected) would come only after Python's exit handlers; multiprocessing's handler ends daemonic workers
    with SIGTERM, which ``quiet_worker`` ignores, and then joins them: the process would never exit.
    """
    batches = iter(loader)
    try:
        yield batches
    except ActrecError as exc:
        raise worker_error(exc) from None
    except RuntimeError as exc:
        if not str(exc).startswith(_WORKER_DIED):
            raise
        raise ActrecError(f"{str(exc).rstrip('.')}: a data loader process died (killed for memory? lower --workers "
                          "or --cache-mb)") from None
    finally:
        stop_workers(batches)


def stop_workers(batches: Iterator) -> None:
    """Stop the worker processes of a DataLoader iterator now (dropping the reference is not enough after an error
    raised by the iterator: the traceback's frames still hold it)."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # what the iterator's __del__ calls; none without workers
    if shutdown is not None:
        shutdown()


def worker_error(exc: ActrecError) -> ActrecError:
    """An ActrecError re-raised by the DataLoader from a worker ("Caught X in DataLoader worker process N." and the
    worker's traceback) as one of the same type with the worker's own message; any other error as it is."""
    text = str(exc)
    name = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    if not (text.startswith(f"Caught {type(exc).__name__} in DataLoader worker process") and name in text):
        return exc
    return type(exc)(text.rpartition(name)[2].strip())
