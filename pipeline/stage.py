"""The resumable, fault-isolating loop shared by every per-video stage (extract-frames, compute-flow, imports).

A stage has a job list (video id, input); a video belongs to shard ``crc32(video_id) % num_shards`` (so adding
or removing videos never moves the others) and this rank owns the shards ``k % world_size == rank``. Finished videos are skipped, each remaining video is processed (by worker processes
or a GPU batch loop: the ``execute`` callable decides) into its own part file, and a shard is sealed as soon as
all its videos were attempted. One video's failure is recorded and never stops the others.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from joblib import Parallel, delayed
from tqdm import tqdm

from actrec.errors import InputError, StoreError
from actrec.pipeline.store import is_disk_full


@dataclass(frozen=True)
class WorkItem:
    """One video of a stage: its id, its input (a video path, or the id in an upstream store) and its shard."""

    video_id: str
    source: str
    shard: int


@dataclass(frozen=True)
class Outcome:
    """What happened to one video. ``status`` is ``done``, ``failed`` or ``disk_full`` (which stops the stage)."""

    video_id: str
    source: str
    status: str
    frames: int = 0
    nbytes: int = 0
    message: str = ""  # the failure reason, or a warning for a video kept despite a problem (e.g. partial decode)


def io_failure(item: WorkItem, exc: OSError, where: str) -> Outcome:
    """The outcome of an I/O error: ``disk_full`` (which stops the stage) or one failed video."""
    return Outcome(item.video_id, item.source, "disk_full" if is_disk_full(exc) else "failed",
                   message=f"{where}: {exc.strerror or exc}")


@dataclass
class StageSummary:
    """Counts and totals of one run of a stage, printed at its end."""

    name: str
    unit: str = "frames"  # what ``frames`` counts for this stage (frames, flows)
    planned: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    warned: int = 0
    frames: int = 0
    nbytes: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    failures: list[Outcome] = field(default_factory=list)
    report: Path | None = None

    def line(self) -> str:
        rate = self.frames / self.elapsed if self.elapsed > 0 else 0.0
        text = (f"{self.name}: {self.done} done, {self.skipped} skipped (already finished), {self.failed} failed, "
                f"{self.warned} with warnings; {self.frames} {self.unit} ({rate:.0f}/s), "
                f"{self.nbytes / 1e6:.1f} MB written, {self.elapsed:.1f} s")
        if self.interrupted:
            text += "; interrupted: rerun the same command to resume"
        if self.report is not None and (self.failed or self.warned):
            text += f"; report: {self.report}"
        return text


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the world size: explicit values, else RANK/WORLD_SIZE (torchrun), else 0 of 1."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is not within world size {world_size}")
    return rank, world_size


def shard_count(num_videos: int, videos_per_shard: int) -> int:
    """How many shards a new store gets for a job of ``num_videos`` videos."""
    if videos_per_shard < 1:
        raise InputError(f"videos per shard must be at least 1, got {videos_per_shard}")
    return max(1, -(-num_videos // videos_per_shard))


def plan_shards(entries: Sequence[tuple[str, str]], num_shards: int, rank: int, world_size: int) -> list[WorkItem]:
    """This rank's share of the job: the entries (video id, source) whose shard this rank owns, in job order."""
    items = [WorkItem(vid, src, zlib.crc32(vid.encode("utf-8")) % num_shards) for vid, src in entries]
    return [it for it in items if it.shard % world_size == rank]


Executor = Callable[[list[WorkItem]], Iterator[Outcome]]


def pool_executor(work: Callable[..., Outcome], workers: int, *args: Any) -> Executor:
    """An executor running ``work(item, *args)`` for each item in ``workers`` processes (in-process when 1)."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")

    def execute(items: list[WorkItem]) -> Iterator[Outcome]:
        if workers == 1:
            return (work(item, *args) for item in items)
        return Parallel(n_jobs=workers, return_as="generator_unordered")(delayed(work)(item, *args) for item in items)

    return execute


class Sink(Protocol):
    """Where a stage's results go: a store (``StoreLayout``) or a plain folder tree."""

    root: Path

    def prepare(self, shards: Sequence[int]) -> dict[int, set[str]]:
        """Remove what a killed run left half-written; return the finished videos of each shard."""

    def seal(self, shard: int) -> None:
        """Make a shard whose videos were all attempted final."""


def run_stage(name: str, sink: Sink, items: list[WorkItem], execute: Executor, *, rank: int = 0,
              unit: str = "frames", progress: bool = True, log: Callable[[str], None] = print) -> StageSummary:
    """Run ``execute`` on the unfinished items, sealing shards as they complete; return the summary.

    ``log`` receives one line per failed or warned video as it happens. Ctrl-C stops cleanly: finished videos
    stay finished and the rerun resumes. A full disk stops the stage with a StoreError, the store intact.
    """
    start = time.perf_counter()
    summary = StageSummary(name=name, unit=unit, planned=len(items))
    shards = sorted({it.shard for it in items})
    done = sink.prepare(shards)
    todo = [it for it in items if it.video_id not in done[it.shard]]
    summary.skipped = len(items) - len(todo)
    shard_of = {it.video_id: it.shard for it in todo}
    remaining = {s: sum(1 for it in todo if it.shard == s) for s in shards}
    for shard in shards:  # shards finished by a killed run but not sealed yet
        if remaining[shard] == 0:
            sink.seal(shard)
    report = _FailureReport(sink.root / f"failures.rank{rank}.tsv")
    summary.report = report.path
    bar = tqdm(total=len(todo), desc=name, unit="video", disable=not progress, dynamic_ncols=True, smoothing=0.05)
    try:
        for outcome in execute(todo):
            if outcome.status == "disk_full":
                raise StoreError(f"{sink.root}: disk full while writing {outcome.video_id}; the store is intact "
                                 "(finished videos are kept): free some space and rerun the same command")
            _account(summary, outcome, report, log)
            shard = shard_of[outcome.video_id]
            remaining[shard] -= 1
            if remaining[shard] == 0:
                sink.seal(shard)
            bar.update(1)
            rate = summary.frames / max(bar.format_dict["elapsed"], 1e-9)
            bar.set_postfix({f"{unit}/s": f"{rate:.0f}", "failed": summary.failed}, refresh=False)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        report.close()
        summary.elapsed = time.perf_counter() - start
    return summary


def _account(summary: StageSummary, outcome: Outcome, report: "_FailureReport", log: Callable[[str], None]) -> None:
    if outcome.status == "done":
        summary.done += 1
        summary.frames += outcome.frames
        summary.nbytes += outcome.nbytes
        if outcome.message:
            summary.warned += 1
            report.add("warning", outcome)
            log(f"warning: {outcome.message}")
    else:
        summary.failed += 1
        summary.failures.append(outcome)
        report.add("failed", outcome)
        log(f"failed: {outcome.message}")


class _FailureReport:
    """The failures/warnings file of this run, one TSV line per video, written as they happen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None
        path.unlink(missing_ok=True)  # the report describes the last run only

    def add(self, kind: str, outcome: Outcome) -> None:
        if self._file is None:
            self._file = self.path.open("w", encoding="utf-8")
            self._file.write("status\tvideo_id\tsource\treason\n")
        reason = outcome.message.replace("\t", " ").replace("\n", " ")
        self._file.write(f"{kind}\t{outcome.video_id}\t{outcome.source}\t{reason}\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
