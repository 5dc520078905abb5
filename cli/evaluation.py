"""Commands that apply a trained model: ``evaluate`` (scores and accuracy of a split) and ``predict``."""

from __future__ import annotations

import json
import sys

import click

from actrec.cli.group import cli
from actrec.data_manifests.manifest import SPLITS as _SPLITS


@cli.command("evaluate", epilog="""\b
Examples:
  actrec evaluate --checkpoint runs/stilt_s1/checkpoint.pt --split test -o scores/stilt_s1_test.npz --gpu
  actrec evaluate --checkpoint runs/stilt_s1/checkpoint.pt --split train -o scores/stilt_s1_train.npz \\
      --crops center --gpu
  actrec fit-fusion --train-scores scores/stilt_s1_train.npz --test-scores scores/stilt_s1_test.npz -o fusion.json
  actrec evaluate --checkpoint runs/stilt_s1/checkpoint.pt -o scores/stilt_s1_test.npz --fusion fusion.json
\b
Writes OUT.npz (per-stream softmax scores rgb and flow, the model's own fusion, ids, labels), OUT.per_class.csv
and OUT.confusion.png, and prints top-1, top-5 and mean class accuracy per stream. -o's folder and --fusion are
checked before any work. A video that cannot be read (damaged frame or flow, unreadable shard) is reported
("failed: SHARD: video 'ID', frame 17: ...") and the others are scored; the exit code is then 1.""")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="checkpoint.pt of a training run (its config gives the model and the default data).")
@click.option("--split", type=click.Choice(_SPLITS), default="test", show_default=True,
              help="Manifest split to score (train: the scores fit-fusion learns from).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Score file to write (.npz); the CSV and PNG are written beside it.")
@click.option("--frames", help="Frame store [default: the training run's].")
@click.option("--flow", help="Flow store [default: the training run's].")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), help="Manifest [default: the run's].")
@click.option("--positions", type=click.IntRange(min=1), default=25, show_default=True,
              help="Uniformly spaced test positions per video.")
@click.option("--crops", type=click.Choice(["ten", "center"]), default="ten", show_default=True,
              help="10 crops (4 corners, centre and their mirror images) or the centre crop per position.")
@click.option("--chunk", type=click.IntRange(min=1), default=10, show_default=True,
              help="Views per forward pass (lower it when memory runs out).")
@click.option("--features", is_flag=True, help="Also store each stream's features (for early fusion).")
@click.option("--fusion", type=click.Path(exists=True, dir_okay=False),
              help="Fusion JSON from fit-fusion: apply it and report its accuracy too.")
@click.option("--confusion-top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Most frequent classes shown in the confusion matrix; the rest is grouped as 'other'.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader processes reading the stores.")
@click.option("--gpu", is_flag=True, help="Evaluate on cuda:LOCAL_RANK.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate_cmd(checkpoint: str, split: str, output: str, frames: str | None, flow: str | None,
                 manifest: str | None, positions: int, crops: str, chunk: int, features: bool, fusion: str | None,
                 confusion_top: int, workers: int, gpu: bool, quiet: bool) -> None:
    """Score every video of a split with a trained model (TSN's 25-position test protocol) and report accuracy."""
    from actrec.training.evaluate import EvalOptions, evaluate

    options = EvalOptions(split=split, frames=frames, flow=flow, manifest=manifest, positions=positions,
                          ten_crop=crops == "ten", chunk=chunk, features=features, fusion=fusion,
                          confusion_top=confusion_top, workers=workers, gpu=gpu)
    result = evaluate(checkpoint, output, options, progress=not quiet)
    click.echo(result.table)
    click.echo("wrote " + ", ".join(map(str, result.files)))
    for line in result.failures:
        click.echo(f"failed: {line}", err=True)
    if result.failures:
        click.echo(f"evaluate: {len(result.failures)} videos could not be read and are not in the scores", err=True)
        sys.exit(1)


@cli.command("predict", epilog="""\b
Examples:
  actrec predict clip.mp4 --checkpoint runs/stilt_s1/checkpoint.pt --fusion fusion.json --topk 5
  actrec predict a.mp4 b.avi --checkpoint runs/cot_s1/checkpoint.pt --gpu --json > predictions.json
\b
Frames and flow are computed as for the training stores (their recorded size, fps, TV-L1 parameters and bound),
each stage with its progress bar on stderr. The first line says what the scores are: probabilities for the
model's own fusion (and fusion files of method average or global), AWF fused scores or SVM scores otherwise.
A video that cannot be decoded or is too short for flow is reported ("failed: FILE: reason", and under
"failures" in --json) and the others are still predicted; the exit code is then 1.""")
@click.argument("videos", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="checkpoint.pt of a training run.")
@click.option("--fusion", type=click.Path(exists=True, dir_okay=False),
              help="Fusion JSON from fit-fusion [default: the model's own fused output].")
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True, help="Classes to print per video.")
@click.option("--positions", type=click.IntRange(min=1), default=25, show_default=True,
              help="Uniformly spaced test positions per video.")
@click.option("--crops", type=click.Choice(["ten", "center"]), default="ten", show_default=True,
              help="10 crops or the centre crop per position.")
@click.option("--gpu", is_flag=True, help="Flow and model on CUDA; an error (exit 2) without CUDA.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document instead of text: score_kind, predictions, failures.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def predict_cmd(videos: tuple[str, ...], checkpoint: str, fusion: str | None, topk: int, positions: int, crops: str,
                gpu: bool, as_json: bool, quiet: bool) -> None:
    """Classify videos with a trained model: decode, TV-L1 flow, test-time protocol, optional fusion weights."""
    from actrec.training.predict import predict_videos

    run = predict_videos(videos, checkpoint, fusion=fusion, k=topk, gpu=gpu, positions=positions,
                         ten_crop=crops == "ten", progress=not quiet, log=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(run.as_dict(), indent=2))
    else:
        click.echo(f"scores: {run.kind.meaning}")
        for p in run.predictions:
            click.echo(p.video)
            for rank, (name, score) in enumerate(zip(p.classes, p.scores), start=1):
                click.echo(f"  {rank}. {name:30s} {score:.3f}")
    for failure in run.failures:
        click.echo(f"failed: {failure.line()}", err=True)
    if run.failures:
        sys.exit(1)
