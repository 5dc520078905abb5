"""``actrec verify-store``: check every entry of a frame or flow store against its checksum, list what is damaged,
and optionally remove it so that a rerun of the writer computes it again."""

from __future__ import annotations

import sys

import click

from actrec.cli.group import cli


@cli.command("verify-store", epilog="""\b
Examples:
  actrec verify-store frames/
  actrec verify-store flow/ --workers 8
  actrec verify-store flow/ --repair; actrec compute-flow --frames frames/ --out flow/ --gpu   # redo what it removed
\b
Prints one line per damaged video ("bad: SHARD: video 'ID', flow 17: checksum mismatch ...") and per shard that
cannot be opened, then a summary; the exit code is 1 when anything is bad (with --repair too: the removed videos
are missing until the writer's rerun). --repair deletes the unreadable shards and rewrites the shards holding
damaged videos without them (no writer may be running: it waits for none and stops with a message); rerunning the
command that wrote the store computes those videos again.""")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--repair", is_flag=True,
              help="Remove the unreadable shards and the damaged videos, so that a rerun of the writer redoes them.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes checking shards in parallel.")
@click.option("--quiet", is_flag=True, help="No progress bar (the bad videos and the summary are still printed).")
def verify_store_cmd(store: str, repair: bool, workers: int, quiet: bool) -> None:
    """Verify every frame or flow of a store against its checksum; list (and with --repair remove) damaged ones."""
    from actrec.pipeline.store_verify import repair_store, verify_store

    report = verify_store(store, workers=workers, progress=not quiet, log=click.echo)
    click.echo(report.line())
    if repair and report.damaged:
        click.echo(repair_store(report, log=lambda line: click.echo(line, err=True)).line(report.kind))
    if report.damaged:
        sys.exit(1)
