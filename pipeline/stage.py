"""The resumable, fault-isolating loop shared by every per-video stage (extract-frames, compute-flow, imports).

A stage has a job list (video id, input); a video belongs to shard ``crc32(video_id) % num_shards`` (so adding
or removing videos never moves the others) and this rank owns the shards ``k % world_size == rank``. Finished videos are skipped, each remaining video is processed (by worker processes
or a GPU batch loop: the ``execute`` callable decides) into its own part file, and a shard is sealed as soon as
all its videos were attempted. One video's failure is recorded and never stops the others.
"""

from __future__ import annotations

import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, Union

from tqdm import tqdm

from actrec.errors import InputError, StoreError
from actrec.pipeline.diskspace import is_disk_full
from actrec.pipeline.launcher import launcher_rank
from actrec.pipeline.store import Dataset, StoreLayout, write_part
from actrec.pipeline.store_lock import writer_lock
from actrec.wording import counted


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


@dataclass(frozen=True)
class Progress:
    """Work done on a video that has not finished yet (e.g. the flows of one solved batch): moves the bar."""

    video_id: str
    units: int


def io_failure(item: WorkItem, exc: OSError, where: str) -> Outcome:
    """The outcome of an I/O error: ``disk_full`` (which stops the stage) or one failed video."""
    return Outcome(item.video_id, item.source, "disk_full" if is_disk_full(exc) else "failed",
                   message=f"{where}: {exc.strerror or exc}")


def write_video(layout: StoreLayout, item: WorkItem, datasets: dict[str, Dataset], attrs: dict[str, Any],
                units: int) -> Outcome:
    """Write a finished video's part file and say how it went (an I/O error is the video's failure, or a full
    disk). Module-level, so that writer processes can run it."""
    try:
        nbytes = write_part(layout, item.shard, item.video_id, datasets, attrs)
    except OSError as exc:
        return io_failure(item, exc, f"{layout.root}: {item.video_id}")
    return Outcome(item.video_id, item.source, "done", frames=units, nbytes=nbytes)


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
    frames: int = 0  # units written: those of finished videos
    processed: int = 0  # units computed, including those of videos an interruption left unfinished
    nbytes: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    failures: list[Outcome] = field(default_factory=list)
    report: Path | None = None
    rank: int = 0
    world_size: int = 1

    def line(self) -> str:
        rate = self.processed / self.elapsed if self.elapsed > 0 else 0.0
        where = f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        text = (f"{self.name}{where}: {self.done} done, {self.skipped} skipped (already finished), "
                f"{self.failed} failed, {self.warned} with warnings; "
                f"{counted(self.frames, self.unit.removesuffix('s'), self.unit)} ({format_rate(rate)} {self.unit}/s), "
                f"{self.nbytes / 1e6:.1f} MB written, {self.elapsed:.1f} s")
        if self.interrupted:
            text += "; interrupted: rerun the same command to resume"
        if self.report is not None and (self.failed or self.warned):
            text += f"; report: {self.report}"
        return text


def format_rate(rate: float) -> str:
    """A rate with three significant digits below 100 (0.0421, 3.75, 42.1) and none above (1234)."""
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the world size: explicit values, else RANK/WORLD_SIZE (torchrun), else
    SLURM_PROCID/SLURM_NTASKS (a task of srun), else 0 of 1 (see :mod:`.launcher`)."""
    launched_rank, launched_world = launcher_rank()
    rank = launched_rank if rank is None else rank
    world_size = launched_world if world_size is None else world_size
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


Executor = Callable[[list[WorkItem]], Iterator[Union[Outcome, Progress]]]


def pool_executor(work: Callable[..., Outcome], workers: int, *args: Any) -> Executor:
    """An executor running ``work(item, *args)`` for each item in ``workers`` processes (in-process when 1)."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")

    def execute(items: list[WorkItem]) -> Iterator[Outcome]:
        if workers == 1:
            return (work(item, *args) for item in items)
        from joblib import Parallel, delayed  # only a pool needs it (and it costs a fifth of a second to import)

        return Parallel(n_jobs=workers, return_as="generator_unordered")(delayed(work)(item, *args) for item in items)

    return execute


class Sink(Protocol):
    """Where a stage's results go: a store (``StoreLayout``) or a plain folder tree."""

    root: Path

    def prepare(self, shards: Sequence[int], log: Callable[[str], None]) -> dict[int, set[str]]:
        """Remove what a killed run left half-written; return the finished videos of each shard (``log`` takes a
        warning line, e.g. about a damaged shard to rebuild)."""

    def seal(self, shard: int) -> None:
        """Make a shard whose videos were all attempted final."""


def run_stage(name: str, sink: Sink, items: list[WorkItem], execute: Executor, *, rank: int = 0,
              world_size: int = 1, unit: str = "frames", work: Callable[[WorkItem], int] | None = None,
              progress: bool = True, log: Callable[[str], None] = print) -> StageSummary:
    """Run ``execute`` on the unfinished items, sealing shards as they complete; return the summary.

    The bar counts videos, or, with ``work`` (the units a video will produce, e.g. its flows), those units: its
    rate and ETA are then in ``unit`` and it moves with every ``Progress`` the executor yields, not only when a
    video ends. ``log`` receives one line per failed or warned video as it happens, written through the bar so
    that it never lands on the bar's line. Ctrl-C stops cleanly: finished videos stay finished and the rerun
    resumes. A full disk stops the stage with a StoreError, the store intact. The run holds the sink's writer lock
    for ``rank`` (``store_lock.writer_lock``): a second process writing the same rank stops with a StoreError.
    """
    with writer_lock(sink.root, rank, log):
        return _run_locked(name, sink, items, execute, rank=rank, world_size=world_size, unit=unit, work=work,
                           progress=progress, log=log)


def _run_locked(name: str, sink: Sink, items: list[WorkItem], execute: Executor, *, rank: int, world_size: int,
                unit: str, work: Callable[[WorkItem], int] | None, progress: bool,
                log: Callable[[str], None]) -> StageSummary:
    start = time.perf_counter()
    summary = StageSummary(name=name, unit=unit, planned=len(items), rank=rank, world_size=world_size)
    shards = sorted({it.shard for it in items})
    done = sink.prepare(shards, log)
    todo = [it for it in items if it.video_id not in done[it.shard]]
    summary.skipped = len(items) - len(todo)
    shard_of = {it.video_id: it.shard for it in todo}
    remaining = {s: sum(1 for it in todo if it.shard == s) for s in shards}
    for shard in shards:  # shards finished by a killed run but not sealed yet
        if remaining[shard] == 0:
            sink.seal(shard)
    cost = {it.video_id: work(it) for it in sorted(todo, key=lambda it: it.shard)} if work else {}
    report = _FailureReport(sink.root / f"failures.rank{rank}.tsv")
    summary.report = report.path
    bar = _StageBar(name, len(todo), cost, unit, progress and bool(todo))  # nothing to do: no bar at all

    def handle(event: Outcome | Progress) -> None:
        if isinstance(event, Progress):
            summary.processed += event.units
            bar.advance(event.video_id, event.units)
            return
        if event.status == "disk_full":
            raise StoreError(f"{sink.root}: disk full while writing {event.video_id}; the store is intact "
                             "(finished videos are kept): free some space and rerun the same command "
                             f"[{event.message}]")
        _account(summary, event, report, bar.write(log))
        summary.processed += bar.finish(event)
        shard = shard_of[event.video_id]
        remaining[shard] -= 1
        if remaining[shard] == 0:
            sink.seal(shard)

    events = execute(todo)
    try:
        for event in events:
            handle(event)
    except KeyboardInterrupt:
        summary.interrupted = True
        try:
            for event in _after_interrupt(events):
                handle(event)
        except KeyboardInterrupt:  # a second Ctrl-C: stop collecting
            pass
    finally:
        bar.close()
        report.close()
        summary.elapsed = time.perf_counter() - start
    return summary


def _after_interrupt(events: Iterator[Outcome | Progress]) -> Iterator[Outcome | Progress]:
    """What an executor still reports after Ctrl-C: the outcomes of the videos it had already handed on (e.g. to
    a writer, which finishes them), so that the summary counts every video the store now holds. Ctrl-C is
    thrown into a generator that was waiting at a ``yield``; one that the Ctrl-C stopped has already reported
    them before re-raising it, and ``throw`` then raises at once."""
    throw = getattr(events, "throw", None)
    if throw is None:
        return
    try:
        event = throw(KeyboardInterrupt())
        while True:
            yield event
            event = next(events)
    except (KeyboardInterrupt, StopIteration):
        return


class _StageBar:
    """The stage's progress bar over videos, or over work units when each video's ``cost`` is known.

    A work-unit bar redraws at every event: a solved batch reports its videos' units in one burst and the next
    batch takes seconds to minutes, so a bar that skipped the burst's last event (tqdm's 0.1 s redraw interval)
    would show a stale count until then and jump at the end."""

    def __init__(self, name: str, videos: int, cost: dict[str, int], unit: str, enabled: bool) -> None:
        self.cost = cost
        self.reported: dict[str, int] = {}
        self.videos, self.done, self.failed = videos, 0, 0
        self.unit = unit
        total = sum(cost.values()) if cost else videos
        every_event = {"mininterval": 0, "miniters": 1} if cost else {}
        self.bar = tqdm(total=total, desc=name, unit=unit.rstrip("s") if cost else "video", disable=not enabled,
                        dynamic_ncols=True, smoothing=0.05, file=sys.stderr, **every_event)
        self.units = 0  # units of finished videos, for the video-counting bar's rate

    def advance(self, video_id: str, units: int) -> None:
        """``units`` more of ``video_id`` are done."""
        self.reported[video_id] = self.reported.get(video_id, 0) + units
        self._update(units)

    def finish(self, outcome: Outcome) -> int:
        """A video ended: move the bar by what it had not reported yet; return the units it computed unreported."""
        self.done += outcome.status == "done"
        self.failed += outcome.status != "done"
        reported = self.reported.pop(outcome.video_id, 0)
        if not self.cost:
            self.units += outcome.frames
            self._update(1)
            return outcome.frames
        self._update(max(0, self.cost.get(outcome.video_id, 0) - reported))
        return max(0, outcome.frames - reported)

    def _update(self, n: int) -> None:
        if self.cost:
            postfix = {"videos": f"{self.done + self.failed}/{self.videos}", "failed": self.failed}
        else:
            rate = self.units / max(self.bar.format_dict["elapsed"], 1e-9)
            postfix = {f"{self.unit}/s": format_rate(rate), "failed": self.failed}
        self.bar.set_postfix(postfix, refresh=False)
        if self.bar.n + n >= self.bar.total:  # the last step is drawn once, by close()
            self.bar.n += n
        else:
            self.bar.update(n)

    def write(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` writing through the bar: the bar is cleared, the line printed, and the bar drawn again."""
        if self.bar.disable:
            return log

        def through_bar(line: str) -> None:
            with tqdm.external_write_mode(file=self.bar.fp):
                log(line)
        return through_bar

    def close(self) -> None:
        self.bar.close()


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


REPORT_HEADER = "run\tstatus\tvideo_id\tsource\treason\n"


class _FailureReport:
    """The failures/warnings file of a rank: one TSV line per video, appended as they happen, every run's lines
    kept and stamped with the run's start time (UTC), so that a rerun never loses an earlier run's warnings."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._file: Any = None

    def add(self, kind: str, outcome: Outcome) -> None:
        if self._file is None:
            self._file = _open_report(self.path)
        reason = outcome.message.replace("\t", " ").replace("\n", " ")
        self._file.write(f"{self.run}\t{kind}\t{outcome.video_id}\t{outcome.source}\t{reason}\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _open_report(path: Path) -> Any:
    """The report opened for appending, with the header written first in a new file; a report of the earlier
    four-column layout (no run column) gets ``-`` as its lines' run."""
    old = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
    if old and old[0] != REPORT_HEADER:
        path.write_text(REPORT_HEADER + "".join(f"-\t{line}" for line in old[1:]), encoding="utf-8")
    file = path.open("a", encoding="utf-8")
    if not old:
        file.write(REPORT_HEADER)
    return file
