"""The ``check-gpu`` command: the environment of a GPU machine and whether our GPU paths work there (gpucheck)."""

from __future__ import annotations

import json
import sys

import click

from actrec.cli.group import cli
from actrec.errors import DeviceError


@cli.command("check-gpu", epilog="""\b
Examples:
  actrec check-gpu                 # paste its output into a bug report
  actrec check-gpu --json > gpu.json
\b
Prints torch, CUDA, driver, GPU name and memory, Triton, cuDNN and free memory, then one table line per check as it
ends: the Triton kernels' self-check against the CPU solver, TV-L1 pairs/s of each kernel set on generated 340x256
pairs, and bf16 training steps of full-size STILT (batch 8). Exit code 0: all passed; 1: a check failed; 2: no GPU.""")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (environment and checks) instead.")
@click.option("--seconds", type=click.FloatRange(min=0), default=None,
              help="Seconds of TV-L1 throughput per kernel set [default: 20].")
@click.option("--device", default="cuda", hidden=True, help="Where the checks run: cuda, or cpu for a dry run.")
@click.option("--tiny", is_flag=True, hidden=True, help="Dry-run sizes (64x48 pairs, reduced STILT, 32 px).")
def check_gpu_cmd(as_json: bool, seconds: float | None, device: str, tiny: bool) -> None:
    """Check this machine's GPU: environment, Triton self-check, TV-L1 throughput, STILT bf16 training steps."""
    from dataclasses import replace

    import torch

    from actrec.gpucheck import TABLE_HEAD, TINY, CheckSizes, check_gpu, environment, environment_text

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"no CUDA GPU is visible (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                          "nothing to check")
    sizes = TINY if tiny else CheckSizes()
    if seconds is not None:
        sizes = replace(sizes, seconds=seconds)
    log = lambda line: click.echo(line, err=True)  # noqa: E731
    if as_json:
        report = check_gpu(dev, sizes, log=log)
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(environment_text(environment(dev)) + "\n\n" + TABLE_HEAD)
        report = check_gpu(dev, sizes, log=log, on_row=lambda row: click.echo(row.line()))
    sys.exit(0 if report.passed else 1)
