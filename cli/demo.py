"""The ``demo`` command: the whole pipeline on a generated dataset, ending with the ablation tables."""

from __future__ import annotations

import click

from actrec.cli.group import cli
from actrec.demo import DemoConfig, run_demo


@cli.command("demo", epilog="""\b
Examples:
  actrec demo                                   # about 4.5 minutes on 2 CPU cores
  actrec demo --workdir /tmp/demo --seed 1 --iterations 900
\b
Runs synth, extract-frames, compute-flow, train (STILT without and with co-attention, CoT-LSTM), evaluate and
fit-fusion as real commands in WORKDIR, then prints the ablation tables (STILT Tables 4 and 5, CoT-LSTM Table II
layouts) and where the files and plots are.""")
@click.option("--workdir", type=click.Path(file_okay=False), default="demo_workdir", show_default=True,
              help="Folder for every file the demo writes (rerunning resumes the finished stages).")
@click.option("--videos-per-class", type=click.IntRange(min=5), default=DemoConfig.videos_per_class,
              show_default=True, help="Synthetic videos per class (12 classes; half for training, half for testing).")
@click.option("--iterations", type=click.IntRange(min=1), default=DemoConfig.iterations, show_default=True,
              help="Training iterations of each STILT (two-stream and co-attention).")
@click.option("--cotlstm-iterations", type=click.IntRange(min=1), default=DemoConfig.cotlstm_iterations,
              show_default=True, help="Training iterations of CoT-LSTM.")
@click.option("--frames", type=click.IntRange(min=12), default=DemoConfig.frames, show_default=True,
              help="Frames per synthetic video (at least 12: stacks of 10 flows).")
@click.option("--size", type=click.IntRange(min=32), default=DemoConfig.size, show_default=True,
              help="Frame size (square); the network input is 7/8 of it.")
@click.option("--seed", type=click.IntRange(min=0), default=DemoConfig.seed, show_default=True,
              help="Seed of the data and of training.")
def demo_cmd(workdir: str, videos_per_class: int, iterations: int, cotlstm_iterations: int, frames: int, size: int,
             seed: int) -> None:
    """The whole pipeline on a generated dataset on the CPU, ending with the papers' ablation tables."""
    config = DemoConfig(videos_per_class=videos_per_class, iterations=iterations,
                        cotlstm_iterations=cotlstm_iterations, frames=frames, size=size, crop=size * 7 // 8, seed=seed)
    run_demo(workdir, config, echo=click.echo)
