"""Options and helpers shared by the commands: workers and ranks, number lists, and the stage summaries."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

import click

if TYPE_CHECKING:  # the stages import their libraries when they run, not when the command line starts
    from actrec.pipeline.stage import StageSummary


def parallel_options(func: Callable) -> Callable:
    """Options shared by every per-video stage: worker processes, multi-node ranks, progress display."""
    options = [
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Worker processes on this machine."),
        click.option("--rank", type=click.IntRange(min=0), default=None,
                     help="This process's rank (default: $RANK as set by torchrun, else $SLURM_PROCID in an srun "
                          "task, else 0)."),
        click.option("--world-size", type=click.IntRange(min=1), default=None,
                     help="Number of processes sharing the job (default: $WORLD_SIZE, else $SLURM_NTASKS in an "
                          "srun task, else 1)."),
        click.option("--quiet", is_flag=True, help="No progress bar (the summary is still printed)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def parse_numbers(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """Callback turning ``0.6,0.2,0.2`` into a tuple of floats (an unset option stays None); the library checks
    their count and range."""
    if value is None:
        return None
    try:
        return tuple(float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.6,0.2,0.2, got {value!r}") from None


def finish_stages(*summaries: StageSummary) -> None:
    """Print each stage's summary; exit non-zero when a video failed (1) or a run was interrupted (130)."""
    for summary in summaries:
        click.echo(summary.line())
    if any(s.interrupted for s in summaries):
        sys.exit(130)
    if any(s.failed for s in summaries):
        sys.exit(1)
