"""What a training run shows while it runs and leaves in its folder: metrics.csv, TensorBoard events, a loss plot.

- ``metrics.csv``: one row per log iteration (``METRIC_COLUMNS``); a resumed run drops the rows after its
  checkpoint's iteration and appends.
- ``tensorboard/``: the same values as TensorBoard scalars (``train/loss``, ``train/lr``, ``train/clips_per_s``,
  ``train/data_wait``) when the optional ``tensorboard`` package is installed (``pip install actrec[tensorboard]``);
  a resumed run purges the events after its checkpoint. ``evaluate`` adds its accuracies there
  (``eval/SPLIT/ROW/top1`` ...) at the checkpoint's iteration. View with ``tensorboard --logdir RUN``.
- ``loss.png``: the training loss (and the learning rate) against the iteration, drawn from metrics.csv at the end
  of every run, also an interrupted one; matplotlib only.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from actrec.errors import OutputError
from actrec.fusion.report import AccuracyRow

METRICS = "metrics.csv"
TENSORBOARD = "tensorboard"
LOSS_PLOT = "loss.png"


@dataclass(frozen=True)
class MetricsRow:
    """One log iteration's values (loss: mean over the global batch; data_wait: fraction of the window's time)."""

    iteration: int
    loss: float
    lr: float
    clips_per_s: float
    data_wait: float
    elapsed_s: float
    bad_samples: int = 0  # unreadable training clips skipped so far (train --on-bad-sample skip)

    def cells(self) -> list[str]:
        return [str(self.iteration), f"{self.loss:.6g}", f"{self.lr:.6g}", f"{self.clips_per_s:.2f}",
                f"{self.data_wait:.3f}", f"{self.elapsed_s:.1f}", str(self.bad_samples)]


METRIC_COLUMNS = tuple(MetricsRow.__dataclass_fields__)
SCALARS = ("loss", "lr", "clips_per_s", "data_wait")  # the TensorBoard scalars, under train/


def summary_writer(log_dir: Path, purge_step: int | None = None) -> Any | None:
    """A TensorBoard ``SummaryWriter`` on ``log_dir``, or None when the tensorboard package is not installed.

    Imported here, not at module level: importing TensorBoard takes seconds, and only a run that logs needs it.
    ``purge_step`` drops events at and after that step (those of a run resumed from an earlier checkpoint).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra is absent: metrics.csv and loss.png only
        return None
    wait_past_newest_event_file(log_dir)
    return SummaryWriter(str(log_dir), purge_step=purge_step)


_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def wait_past_newest_event_file(log_dir: Path, clock=time.time, sleep=time.sleep) -> None:
    """Return once the clock's whole second is past the creation second of ``log_dir``'s newest event file.

    Why: TensorBoard reads a folder's event files in name order, and a name is ``events.out.tfevents.<second>.
    <host>.<pid>.<n>`` with ``n`` a per-process counter; two writers created in the same second (a run resumed at
    once, as tests do) would be ordered by ``n`` compared as text, ``.10`` before ``.9``, and a resumed run's purge
    would then drop the wrong events. Waits at most about a second, and only in that case."""
    stamps = [int(m[1]) for p in (log_dir.iterdir() if log_dir.is_dir() else ()) if (m := _EVENT_FILE.match(p.name))]
    if not stamps:
        return
    deadline = clock() + 1.5  # a newest file stamped in the future (clock set back) is not waited for longer
    while int(clock()) <= max(stamps) and clock() < deadline:
        sleep(0.05)


class RunMonitor:
    """Writes a run's metrics rows (CSV and TensorBoard) and, on ``close``, its loss plot. Rank 0 only."""

    def __init__(self, run_dir: Path, start_iteration: int) -> None:
        self.run_dir = run_dir
        kept = truncate_metrics(run_dir / METRICS, start_iteration)
        self.last_row: MetricsRow | None = kept[-1] if kept else None  # where a resumed run's figures continue from
        self.writer = summary_writer(run_dir / TENSORBOARD, purge_step=start_iteration + 1 if start_iteration
                                     else None)
        self._excepthook = threading.excepthook
        threading.excepthook = self._events_error_later

    def _events_error_later(self, args: Any) -> None:
        """Leave out the traceback that Python prints when TensorBoard's writer thread fails (full disk, folder
        gone): the thread keeps the error and the next ``log`` or ``close`` raises it, as one line."""
        if type(args.thread).__name__ != "_AsyncWriterThread":
            self._excepthook(args)

    def log(self, row: MetricsRow) -> None:
        """Append ``row`` to metrics.csv and the events; OutputError (one line) when the run folder cannot take it."""
        path = self.run_dir / METRICS
        new = not path.exists()
        try:
            with path.open("a", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(METRIC_COLUMNS)
                writer.writerow(row.cells())
            if self.writer is not None:
                for name in SCALARS:
                    self.writer.add_scalar(f"train/{name}", getattr(row, name), row.iteration)
        except OSError as exc:
            raise OutputError(f"{exc.filename or path}: cannot write the metrics of iteration {row.iteration} "
                              f"({exc.strerror or exc})") from None

    def close(self) -> None:
        """Flush the events and draw ``loss.png`` from every row of metrics.csv."""
        threading.excepthook = self._excepthook
        try:
            if self.writer is not None:
                self.writer.close()
            plot_loss(self.run_dir / METRICS, self.run_dir / LOSS_PLOT)
        except OSError as exc:
            raise OutputError(f"{exc.filename or self.run_dir}: cannot write the events or loss plot "
                              f"({exc.strerror or exc}); the checkpoint is saved") from None

    def abandon(self) -> None:
        """Flush the events of a run that stops on an error, ignoring a failure to (the error already reported
        matters more; the run folder may be full or gone)."""
        threading.excepthook = self._excepthook
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()


@contextlib.contextmanager
def closed_on_error(bar: Any, monitor: RunMonitor | None) -> Iterator[None]:
    """Close the progress bar and abandon ``monitor`` when the block raises, then let the error go on."""
    try:
        yield
    except BaseException:
        bar.close()
        if monitor is not None:
            monitor.abandon()
        raise


def read_metrics(path: Path) -> list[MetricsRow]:
    """The rows of a metrics.csv (none when it does not exist yet)."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [MetricsRow(int(r["iteration"]), *(float(r[c]) for c in METRIC_COLUMNS[1:-1]),
                           int(r.get("bad_samples") or 0)) for r in csv.DictReader(f)]  # absent before issue 29


def truncate_metrics(path: Path, iteration: int) -> list[MetricsRow]:
    """Drop metrics rows after ``iteration`` (left by a run that went on past its last checkpoint); return the rest."""
    rows = read_metrics(path)
    kept = [row for row in rows if row.iteration <= iteration]
    if len(kept) < len(rows):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(METRIC_COLUMNS)
            writer.writerows(row.cells() for row in kept)
    return kept


def plot_loss(metrics: Path, out: Path) -> None:
    """The training loss (top) and learning rate (bottom) against the iteration, as a PNG; nothing without rows."""
    rows = read_metrics(metrics)
    if not rows:
        return
    iterations, loss, lr = zip(*((r.iteration, r.loss, r.lr) for r in rows))
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot(iterations, loss, marker="." if len(rows) < 50 else None)
    top.set(ylabel="training loss", title=f"{out.parent.name}: {len(rows)} log points")
    top.grid(alpha=0.3)
    bottom.plot(iterations, lr, color="tab:orange", drawstyle="steps-post")
    bottom.set(xlabel="iteration", ylabel="lr")
    bottom.grid(alpha=0.3)
    figure.savefig(out, dpi=100)


def log_evaluation(run_dir: Path, iteration: int, split: str, rows: Sequence[AccuracyRow]) -> bool:
    """Add an evaluation's accuracies to the run's TensorBoard events at ``iteration``; False (nothing written)
    when nothing is labelled, the run has no writable TensorBoard folder or tensorboard is not installed."""
    folder = run_dir / TENSORBOARD
    if not rows or not folder.is_dir() or not os.access(folder, os.W_OK):
        return False
    writer = summary_writer(folder)
    if writer is None:
        return False
    with writer:
        for row in rows:
            name, *values = astuple(row)
            tag = re.sub(r"[^\w.-]+", "_", name).strip("_")  # "fusion (awf)" -> fusion_awf
            for metric, value in zip(("top1", "top5", "mean_class"), values):
                writer.add_scalar(f"eval/{split}/{tag}/{metric}", value, iteration)
    return True
