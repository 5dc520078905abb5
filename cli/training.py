"""The ``train`` command: STILT or CoT-LSTM on a frame store and a flow store."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from actrec.cli.group import cli
from actrec.cli.options import parse_numbers
from actrec.data_manifests.manifest import SPLITS as _SPLITS
from actrec.training.config import AMP_MODES as _AMP_MODES, AUGMENT_PLACES as _AUGMENT_PLACES
from actrec.training.config import BAD_SAMPLE_POLICIES as _BAD_SAMPLE_POLICIES, MODELS as _MODELS
from actrec.training.config import OPTIMIZERS as _OPTIMIZERS, SCHEDULES as _SCHEDULES


def _check_pretrained(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value == "imagenet" or Path(value).is_file():
        return value
    raise click.BadParameter(f"expected 'imagenet' or a weights file, got {value!r} (no such file)")


@cli.command("train", epilog="""\b
Examples:
  actrec train stilt --frames frames/ --flow flow/ --manifest ucf101_s1.csv --out runs/stilt_s1 \\
      --gpu --workers 8 --pretrained imagenet
  actrec train stilt --frames frames/ --flow flow/ --manifest hmdb51_s1.csv --out runs/stilt_h1 \\
      --gpu --lr-step 5000
  actrec train cotlstm --frames frames/ --flow flow/ --manifest ucf101_s1.csv --out runs/cot_s1 --gpu
  torchrun --nproc-per-node 4 -m actrec.cli train stilt --frames frames/ --flow flow/ \\
      --manifest ucf101_s1.csv --out runs/stilt_s1 --gpu --accumulate 2
  actrec train stilt --out runs/stilt_s1 --resume --gpu
\b
CPU demo with a reduced model and small crops (the from-scratch recipe: AdamW, warmup, cosine):
  actrec train stilt --frames data/frames --flow data/flow --manifest data/synth/manifest.csv \\
      --out runs/demo --reduced --crop 64 --resize 72 --batch-size 8 --iterations 300
\b
Defaults are the paper's recipe for MODEL (SGD, step decay: for ImageNet-initialised backbones), or with --reduced
the from-scratch recipe (AdamW lr 0.001, weight decay 0.05, 20 warmup iterations, cosine decay); --config JSON and
then the options override them. The run folder gets config.json, checkpoint.pt and its checkpoint.pt.sha256 (every
--checkpoint-every iterations, on SIGTERM/SIGINT, at the end), metrics.csv, loss.png, bad_samples.csv when
unreadable clips were skipped and, with TensorBoard installed, tensorboard/. Exit code 130 after a stop by signal:
rerun with --resume; 1 after an error (one line; a full disk keeps the last checkpoint).""")
@click.argument("model", type=click.Choice(_MODELS))
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder (config.json, checkpoint.pt, metrics.csv, loss.png, tensorboard/).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON object setting any training-config fields; options given here override it.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out exactly; only --iterations, --workers, --cache-mb, --checkpoint-every, "
                   "--log-every, --augment-on, --on-bad-sample and --bad-sample-budget may change.")
@click.option("--frames", help="Frame store folder.")
@click.option("--flow", help="Flow store folder computed from that frame store.")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), help="Manifest CSV (labels and splits).")
@click.option("--split", type=click.Choice(_SPLITS), help="Manifest split to train on [default: train].")
@click.option("--iterations", type=click.IntRange(min=1), help="Total iterations [STILT 50000, CoT-LSTM 500].")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Global batch: per-process batch x processes x --accumulate [STILT 128, CoT-LSTM 64].")
@click.option("--accumulate", type=click.IntRange(min=1), help="Micro-batches accumulated per iteration [1].")
@click.option("--optimizer", type=click.Choice(_OPTIMIZERS),
              help="sgd (the papers', with momentum) or adamw (decay on weights only) [sgd; --reduced: adamw].")
@click.option("--schedule", type=click.Choice(_SCHEDULES),
              help="lr schedule after the warmup: step (x0.1 every --lr-step) or cosine (to 0 at the last "
                   "iteration) [step; --reduced: cosine].")
@click.option("--warmup-iters", type=click.IntRange(min=0),
              help="Iterations of linear lr warmup before the schedule [0; --reduced: 20].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Initial learning rate [0.001].")
@click.option("--lr-step", type=click.IntRange(min=1),
              help="Step schedule: multiply the lr by 0.1 every N iterations [STILT 10000 (HMDB51 in the paper: "
                   "5000), CoT-LSTM 450].")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="Weight decay [0.0005; --reduced: 0.05].")
@click.option("--momentum", type=click.FloatRange(0, 1), help="SGD momentum [0.9].")
@click.option("--segments", type=click.IntRange(min=1), help="STILT: TSN segments per training clip [3].")
@click.option("--flow-length", type=click.IntRange(min=1),
              help="Flow frames per stack (STILT L) or sequence (CoT-LSTM t) [10].")
@click.option("--crop", type=click.IntRange(min=1), help="Network input size [224].")
@click.option("--resize", type=click.IntRange(min=1),
              help="CoT-LSTM: square size before rotation and crop; STILT testing: short side [256].")
@click.option("--scales", callback=parse_numbers, metavar="S1,S2,...",
              help="STILT: TSN multi-scale crop sizes, fractions of the frames' short side; the single scale "
                   "crop / short side (0.875 for --crop 56 on 64x64 frames) takes crops without rescaling "
                   "[1,0.875,0.75,0.66].")
@click.option("--flip/--no-flip", default=None,
              help="Random horizontal flips in training; --no-flip when mirroring changes the class (e.g. moving "
                   "left vs right) [on].")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Dropout before classifiers [0.5].")
@click.option("--amp", type=click.Choice(_AMP_MODES),
              help="Mixed precision: auto = bf16 on CUDA, off on CPU; fp16 uses a GradScaler [auto].")
@click.option("--pretrained", callback=_check_pretrained, metavar="imagenet|FILE",
              help="ImageNet weights loaded into both backbones, the flow stream's first conv by cross-modality "
                   "init: 'imagenet' (STILT: torchvision's ResNet-50, downloaded once into the torch hub cache) or "
                   "a file (e.g. JDAI-CV's CoTNet-101 for CoT-LSTM); what was loaded is printed.")
@click.option("--co-attention/--no-co-attention", default=None,
              help="STILT: --no-co-attention averages the segments instead (the paper's Two-stream ablation) [on].")
@click.option("--reduced/--full-size", default=None, help="CPU-sized backbones for tests and demos [full size].")
@click.option("--width", type=click.IntRange(min=1), help="Stem width of --reduced backbones [8].")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of weights, data order and augmentation [0].")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader processes per training process [4].")
@click.option("--cache-mb", type=click.IntRange(min=0),
              help="Keep decoded videos in memory, up to this many MB per loader process: for small datasets "
                   "trained for many epochs (the demo); the clips are the same either way [0: off].")
@click.option("--augment-on", type=click.Choice(_AUGMENT_PLACES),
              help="Where the training augmentation runs: gpu (the loader ships uint8 crops; resize, flips, rotation, "
                   "erasing and normalisation run batched on the GPU), cpu (in the loader processes), auto (the GPU "
                   "with --gpu) [auto].")
@click.option("--on-bad-sample", type=click.Choice(_BAD_SAMPLE_POLICIES),
              help="A training clip that cannot be read (corrupt frame or flow, unreadable shard): skip it (listed "
                   "in bad_samples.csv, counted in metrics.csv) within --bad-sample-budget, or fail [skip].")
@click.option("--bad-sample-budget", type=click.FloatRange(0, 1, max_open=True), metavar="FRACTION",
              help="With --on-bad-sample skip: stop once more than this fraction of the clips read (and more than "
                   "10) were skipped [0.001].")
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="Iterations between checkpoints [1000].")
@click.option("--log-every", type=click.IntRange(min=1), help="Iterations between metrics rows [10].")
@click.option("--gpu", is_flag=True, help="Train on cuda:LOCAL_RANK (one GPU per torchrun process).")
@click.option("--quiet", is_flag=True, help="No progress bar (the summary is still printed).")
def train_cmd(model: str, run_dir: str, config_file: str | None, resume: bool, gpu: bool, quiet: bool,
              **overrides) -> None:
    """Train STILT or CoT-LSTM on a frame store and a flow store (single process, or every process of torchrun)."""
    from actrec.training.config import resolve_config
    from actrec.training.trainer import resume_config, train

    if resume and config_file:
        raise click.UsageError("--config cannot be combined with --resume (the run's saved config is used)")
    config = (resume_config(run_dir, {**overrides, "model": model}) if resume
              else resolve_config(model, config_file, overrides))
    summary = train(config, run_dir, resume=resume, gpu=gpu, progress=not quiet,
                    log=lambda line: click.echo(line, err=True))
    if summary.rank == 0:
        click.echo(summary.line())
    if summary.interrupted:
        sys.exit(130)
