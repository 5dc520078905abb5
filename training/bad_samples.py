"""The training bad-sample policy (``actrec train --on-bad-sample skip|fail``, issue 29 item 3).

A training clip that cannot be read (``StoreError`` in the loader: an undecodable frame, a checksum mismatch, a shard
that cannot be opened; the message names the video, the entry and the shard) reaches the main process as a
``BadSample`` and is, under

- ``skip`` (the default): left out of its micro-batch, listed in the run folder (``bad_samples.csv``: iteration,
  stream position, video, error; ``bad_samples.rankR.csv`` for the other processes of a torchrun job), counted in
  ``metrics.csv`` (``bad_samples``, over all processes) and reported on one line. Skipping is fatal once more than
  ``bad_sample_budget`` (0.1%) of the clips this process has read so far were skipped, and more than ``GRACE`` of
  them: a store that went bad ends the run within a few iterations, while one damaged video among thousands costs
  only its own clips, also when it happens to come up early;
- ``fail``: the end of the run, with that message.

A resumed run keeps the listing's rows up to its checkpoint and drops the later ones, whose iterations it redoes,
so the counts go on exactly.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

from actrec.errors import StoreError
from actrec.training.batch import BadSample

LISTING = "bad_samples.csv"
COLUMNS = ("iteration", "position", "video_id", "error")
GRACE = 10  # skipped clips tolerated whatever the fraction


def listing_path(run_dir: Path, rank: int) -> Path:
    """The listing of one process's skipped clips."""
    return run_dir / (LISTING if rank == 0 else f"bad_samples.rank{rank}.csv")


class BadSampleLedger:
    """One training process's skipped clips: the policy, the budget, the listing."""

    def __init__(self, path: Path, policy: str, budget: float, start_iteration: int, clips_per_iteration: int,
                 log: Callable[[str], None]) -> None:
        self.path, self.policy, self.budget, self.log = path, policy, budget, log
        self.skipped = _keep_rows_until(path, start_iteration)
        self.seen = start_iteration * clips_per_iteration

    def record(self, bad: Sequence[BadSample], clips: int, iteration: int) -> None:
        """Account for a micro-batch of ``clips`` clips of (1-based) ``iteration``, ``bad`` of them unreadable;
        StoreError under ``fail`` or past the budget."""
        self.seen += clips
        for sample in bad:
            where = f"a training clip of video {sample.video_id!r} (stream position {sample.position})"
            if self.policy == "fail":
                raise StoreError(f"{sample.error} [{where}; --on-bad-sample skip would skip it]")
            self._append([iteration, sample.position, sample.video_id, sample.error])
            self.skipped += 1
            self.log(f"warning: skipped {where} at iteration {iteration}: {sample.error}")
        if bad and self.skipped > max(GRACE, self.budget * self.seen):
            raise StoreError(f"{self.skipped} of the {self.seen} training clips read so far could not be read, more "
                             f"than the budget ({self.budget:.2%}, --bad-sample-budget); they are listed in "
                             f"{self.path}; the last: {bad[-1].error}")

    def _append(self, row: list) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(COLUMNS)
            writer.writerow(row)


def read_listing(path: Path) -> list[dict[str, str]]:
    """The rows of a listing (none when there is none)."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _keep_rows_until(path: Path, iteration: int) -> int:
    """Drop the rows after ``iteration`` (of a run that went on past its checkpoint); the number kept."""
    rows = read_listing(path)
    kept = [row for row in rows if int(row["iteration"]) <= iteration]
    if len(kept) < len(rows):
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        tmp.replace(path)
    return len(kept)
