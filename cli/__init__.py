"""The `actrec` command line: thin Click commands that parse options and call library functions.

Layout: :mod:`.group` (the group and its error handling), :mod:`.options` (options shared by the stage commands),
then one module per family of commands: :mod:`.data` (synth, make-manifest, extract-frames, export-rawframes,
import-rawframes), :mod:`.flow` (compute-flow, flow-pair), :mod:`.training` (train), :mod:`.evaluation` (evaluate,
predict), :mod:`.fusion` (fit-fusion), :mod:`.store` (verify-store), :mod:`.gpu` (check-gpu) and :mod:`.demo`.
Importing them registers their commands on the group; each imports its libraries (torch, PyAV, OpenCV, ...) when it
runs, so that ``--help`` and the data commands start at once.
"""

from __future__ import annotations

from actrec.cli import data, demo, evaluation, flow, fusion, gpu, store, training  # noqa: F401  (they register the commands)
from actrec.cli.group import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Console entry point."""
    cli(prog_name="actrec")
