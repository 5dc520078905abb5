"""compute-flow's driver: frame pairs of several videos solved in batches bounded by pixels, in bounded memory.

Videos are read by a few reader threads at most ``window`` videos ahead of the solver; each video's pairs join
the queue of its frame shape (pairs of one shape batch together) and a queue is solved whenever it holds a
batch's worth of pixels. A video's frames are dropped as soon as its last pair is solved and its flow once it is
written, so memory stays flat however many videos a rank owns. A batch that runs out of CUDA memory is retried
in halves (and later batches are kept to the size that fitted); a single pair that still does not fit fails only
its video. A solver error stops the stage promptly: queued reads are cancelled, not run.

The driver knows nothing of flow stores: ``read``, ``solve`` and ``prepare`` (what to write) are given by
:mod:`actrec.pipeline.flow`; ``stage.write_video`` writes, in a writer thread or in writer processes.
"""

from __future__ import annotations

from collections import deque
import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Union

import numpy as np
import torch

from actrec.errors import StoreError
from actrec.pipeline.stage import Outcome, Progress, WorkItem, write_video
from actrec.pipeline.store import Dataset, StoreLayout

Reader = Callable[[WorkItem], np.ndarray]  # a video's grayscale frames, uint8 [N, H, W]
Solver = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (img0, img1) uint8 [B, H, W] -> stored [B, H, W, 2]
# (item, frames, flow [N - step, H, W, 2]) -> what stage.write_video writes: datasets, attributes, units
Preparer = Callable[[WorkItem, int, np.ndarray], tuple[dict[str, Dataset], dict[str, Any], int]]
Event = Union[Outcome, Progress]


@dataclass(frozen=True)
class DriverLimits:
    """How much the driver holds: pixels per solver call, reader threads, videos read ahead, writes queued."""

    batch_pixels: int  # frame pixels (H x W) of all pairs of one solver call; at least one pair always
    first_batch: int = 0  # pairs of the first solver call, doubled at every call up to batch_pixels; 0: no ramp
    readers: int = 3  # reader threads (JPEG decoding releases the GIL; see benchmarks/bench_flow_reader.py)
    window: int = 5  # videos read ahead of the solver
    writers: int = 1  # one writer thread, or that many writer processes (see _writer_pool)


@dataclass
class _Video:
    """A video whose pairs are being solved."""

    item: WorkItem
    frames: int  # N
    gray: np.ndarray | None  # uint8 [N, H, W]; dropped once every pair is solved
    flow: np.ndarray  # [N - step, H, W, 2] in the stored dtype, filled batch by batch
    missing: int  # pairs not solved yet
    failed: bool = False


Pair = tuple[_Video, int]  # a video and the index of its pair (frames i and i + step)


class PairBatcher:
    """Queues of pairs per frame shape, solved in batches of at most ``batch_pixels`` pixels.

    With ``first_batch``, the first batch holds that many pairs and each later one twice the last, until the
    pixel budget: a CPU solves a pair in seconds, so a first batch of a full budget (32 pairs of 170x128 frames)
    would keep the progress bar at 0 for minutes; the ramp moves it after one pair per worker and costs nothing,
    as the CPU solvers gain nothing from larger batches.

    ``add`` queues a video; ``ready``, ``flush_oldest`` and ``flush_all`` solve batches one at a time and yield,
    per batch, what happened: ``Progress`` per video, finished ``_Video`` objects (to write) and failed ``Outcome``
    objects; so the caller reports each batch before the next one is solved.
    """

    def __init__(self, solve: Solver, step: int, batch_pixels: int, first_batch: int = 0) -> None:
        self.solve, self.step = solve, step
        self.batch_pixels = batch_pixels
        self.ramp = first_batch  # pairs allowed in the next batch while ramping up; 0 once ramped (or no ramp)
        self.queues: dict[tuple[int, int], list[Pair]] = {}
        self.held: dict[str, _Video] = {}  # read videos with pairs still to solve, oldest first
        self.held_pixels = 0

    def capacity(self, shape: tuple[int, int]) -> int:
        """Pairs of this frame shape in the next batch."""
        pairs = max(1, self.batch_pixels // (shape[0] * shape[1]))
        return min(pairs, self.ramp) if self.ramp else pairs

    def add(self, item: WorkItem, gray: np.ndarray, dtype: np.dtype) -> list:
        """Queue a video's pairs; a video without pairs is finished at once (returned)."""
        pairs = max(0, len(gray) - self.step)
        video = _Video(item, len(gray), gray, np.zeros((pairs, *gray.shape[1:], 2), dtype), pairs)
        if pairs == 0:
            video.gray = None
            return [video]
        self.held[item.video_id] = video
        self.held_pixels += gray.size
        shape = gray.shape[1:]
        queue = self.queues.setdefault(shape, [])
        queue.extend((video, i) for i in range(pairs))
        return []

    def ready(self) -> Iterator[list]:
        """Solve the full batches."""
        for shape, queue in list(self.queues.items()):
            yield from self._batches(queue, shape, partial=False)

    def flush_oldest(self) -> Iterator[list]:
        """Solve the partial batch that holds the oldest video, so that its frames can go."""
        shape = next(iter(self.held.values())).gray.shape[1:]
        yield from self._batches(self.queues.pop(shape, []), shape, partial=True)

    def flush_all(self) -> Iterator[list]:
        for shape in list(self.queues):
            yield from self._batches(self.queues.pop(shape), shape, partial=True)

    def _batches(self, queue: list[Pair], shape: tuple[int, int], partial: bool) -> Iterator[list]:
        """Solve the queue's full batches, and its last partial one too when ``partial``."""
        while queue and (partial or len(queue) >= self.capacity(shape)):
            batch = queue[:self.capacity(shape)]
            del queue[:len(batch)]
            yield self._solve(batch)

    def _solve(self, batch: list[Pair]) -> list:
        """Solve a batch, in halves after a CUDA out-of-memory; one pair that does not fit fails its video."""
        batch = [(video, i) for video, i in batch if not video.failed]
        if not batch:
            return []
        img0 = np.stack([video.gray[i] for video, i in batch])
        img1 = np.stack([video.gray[i + self.step] for video, i in batch])
        try:
            flow = self.solve(img0, img1)
        except torch.cuda.OutOfMemoryError:
            del img0, img1
            torch.cuda.empty_cache()
            pair_pixels = batch[0][0].gray[0].size
            if len(batch) == 1:
                return [self._fail(batch[0][0], pair_pixels)]
            half = len(batch) // 2
            self.batch_pixels = min(self.batch_pixels, half * pair_pixels)  # later batches: the size that may fit
            return self._solve(batch[:half]) + self._solve(batch[half:])
        return self._store(batch, flow)

    def _store(self, batch: list[Pair], flow: np.ndarray) -> list:
        self.ramp *= 2
        if self.ramp >= self.batch_pixels:  # no batch holds more pairs than pixels: the ramp is over
            self.ramp = 0
        solved: dict[str, int] = {}
        finished = []
        for (video, i), pair_flow in zip(batch, flow):
            video.flow[i] = pair_flow
            video.missing -= 1
            solved[video.item.video_id] = solved.get(video.item.video_id, 0) + 1
            if video.missing == 0:
                self._release(video)
                finished.append(video)
        return [Progress(vid, n) for vid, n in solved.items()] + finished

    def _fail(self, video: _Video, pair_pixels: int) -> Outcome:
        h, w = video.gray.shape[1:]
        video.failed = True
        self._release(video)
        return Outcome(video.item.video_id, video.item.source, "failed",
                       message=f"{video.item.source}: one {w}x{h} frame pair ({pair_pixels} pixels) does not fit "
                               "in the GPU's memory even alone (CUDA out of memory); compute this video on a GPU "
                               "with more memory, or on the CPU with --backend opencv")

    def _release(self, video: _Video) -> None:
        if self.held.pop(video.item.video_id, None) is not None:
            self.held_pixels -= video.gray.size
        video.gray = None


def flow_executor(read: Reader, solve: Solver, prepare: Preparer, layout: StoreLayout, dtype: np.dtype, step: int,
                  limits: DriverLimits) -> Callable[[list[WorkItem]], Iterator[Event]]:
    """The stage executor: reads ahead, batches, solves in this thread, and writes in a writer thread or
    processes."""

    def execute(items: list[WorkItem]) -> Iterator[Event]:
        batcher = PairBatcher(solve, step, limits.batch_pixels, limits.first_batch)
        pending = iter(items)
        reads: deque[tuple[WorkItem, Future]] = deque()
        writes: deque[Future] = deque()
        queued = 2 * limits.writers + 2  # finished videos waiting to be written, each holding its flow
        with ThreadPoolExecutor(limits.readers) as readers, _writer_pool(limits.writers) as writer:

            def report(batches: Iterable[list]) -> Iterator[Event]:
                for events in batches:  # each batch's events before the next batch is solved
                    yield from _dispatch(events, writes, writer, prepare, layout, queued)

            try:
                _refill(reads, pending, readers, read, limits.window)
                while reads:
                    item, load = reads.popleft()
                    _refill(reads, pending, readers, read, limits.window)
                    try:
                        gray = load.result()
                    except StoreError as exc:
                        yield Outcome(item.video_id, item.source, "failed", message=str(exc))
                        continue
                    del load
                    yield from report([batcher.add(item, gray, dtype)])
                    del gray
                    yield from report(batcher.ready())
                    while batcher.held_pixels > _hold_pixels(batcher.batch_pixels) and len(batcher.held) > 1:
                        yield from report(batcher.flush_oldest())
                yield from report(batcher.flush_all())
                yield from _dispatch([], writes, writer, prepare, layout, 0)
            except KeyboardInterrupt:
                yield from _finished_writes(writes)
                raise
            finally:
                for _, load in reads:  # an error or Ctrl-C: drop the queued reads instead of running them
                    load.cancel()

    return execute


def _finished_writes(writes: deque[Future]) -> Iterator[Outcome]:
    """After Ctrl-C, the outcomes of the videos already handed to the writer, which finishes them anyway (the
    pool waits for its queued writes): the summary then counts every video the store holds, and the rerun skips
    the same ones. A write the interruption broke (a writer process stopped by the same Ctrl-C) is left out: the
    rerun removes what it left and redoes its video. A second Ctrl-C ends the wait."""
    for write in writes:
        if write.exception() is None:
            yield write.result()


def _hold_pixels(batch_pixels: int) -> int:
    """Frame pixels of the held videos (read, with pairs queued) above which the oldest one's partial batch is
    solved at once: twice a batch, and at least 64 M pixels (64 MB of gray frames), so that pairs of several
    frame shapes still fill their batches. Only a rank with many frame shapes ever reaches it."""
    return max(2 * batch_pixels, 1 << 26)


def _refill(reads: deque, pending: Iterator[WorkItem], readers: ThreadPoolExecutor, read: Reader,
            window: int) -> None:
    while len(reads) < window:
        item = next(pending, None)
        if item is None:
            return
        reads.append((item, readers.submit(read, item)))


def _writer_pool(writers: int) -> Executor:
    """One writer thread, or ``writers`` spawned processes. All HDF5 calls of a process queue behind h5py's one
    lock, and writing a compressed flow costs about as much CPU as reading a frame (bench_flow_reader.py: 0.6-0.7
    ms), so one writer tops out near 1,500 flows/s: the GPU's rate needs processes of their own."""
    if writers == 1:
        return ThreadPoolExecutor(1)
    return ProcessPoolExecutor(writers, mp_context=multiprocessing.get_context("spawn"))


def _dispatch(events: list, writes: deque, writer: Executor, prepare: Preparer, layout: StoreLayout,
              max_queued: int) -> Iterator[Event]:
    """Yield progress and failures; hand finished videos to the writer, keeping at most ``max_queued`` queued."""
    for event in events:
        if isinstance(event, _Video):
            writes.append(writer.submit(write_video, layout, event.item, *prepare(event.item, event.frames,
                                                                                  event.flow)))
        else:
            yield event
    while writes and (writes[0].done() or len(writes) > max_queued):
        yield writes.popleft().result()
