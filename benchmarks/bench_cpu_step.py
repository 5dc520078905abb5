"""Benchmark the CPU training step of the reduced models (the demo's): memory format and decoded-video cache.

Each measurement runs ours and the plain setting side by side in one run and prints the ratio:

  1. compute (one batch kept in memory, no data loading): a training step of the reduced two-stream STILT and of
     the reduced CoT-LSTM at the demo's sizes (56x56 crops, 3 segments, L = 10), NCHW against channels_last, which
     ``actrec.training.models.to_channels_last`` picks for reduced models on the CPU; and a paper-sized ResNet-50
     step (4 images, 112x112) both ways, which is why that rule leaves paper-sized models alone on the CPU;
  2. end to end: ``train`` of the demo's two-stream STILT on generated 64x64 stores (JPEG frames, uint8 flow), the
     decoded-video cache off (``--cache-mb 0``) against on (256 MB): clips/s and the share of time waiting for data.

    python benchmarks/bench_cpu_step.py              # one torch thread, as each demo training has on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from actrec.models.resnet import resnet50
from actrec.training.config import resolve_config
from actrec.training.models import MODEL_SPECS, build_model
from bench_train import compute_rate, synthetic_batch, train_rate, write_stores

CLASSES = 12


def step_rates(model: torch.nn.Module, inputs: tuple, labels: torch.Tensor, loss_fn) -> tuple[float, float]:
    """Training steps per second of ``model`` on one batch, NCHW then channels_last (same weights and batch)."""
    cpu = torch.device("cpu")
    plain = compute_rate(model, inputs, labels, loss_fn, 10, cpu, None)
    fast = compute_rate(model.to(memory_format=torch.channels_last), inputs, labels, loss_fn, 10, cpu, None)
    return plain, fast


def compute_comparisons(batch: int) -> None:
    """Part 1: the reduced models' step and the paper-sized ResNet-50's, NCHW against channels_last."""
    for model_name, co_attention in (("stilt", False), ("cotlstm", True)):
        config = resolve_config(model_name, overrides={"reduced": True, "crop": 56, "resize": 64,
                                                       "batch_size": batch, "co_attention": co_attention,
                                                       "frames": "-", "flow": "-", "manifest": "-"})  # no data read
        torch.manual_seed(0)
        inputs, labels = synthetic_batch(config, CLASSES, torch.device("cpu"))
        plain, fast = step_rates(build_model(config, CLASSES), inputs, labels, MODEL_SPECS[model_name].loss)
        print(f"  reduced {model_name} step, batch {batch} at 56 px: NCHW {1000 / plain:.0f} ms, channels_last "
              f"{1000 / fast:.0f} ms; speed-up {fast / plain:.2f}x")
    torch.manual_seed(0)
    x, labels = torch.randn(4, 3, 112, 112), torch.randint(CLASSES, (4,))
    plain, fast = step_rates(resnet50(num_classes=CLASSES), (x,), labels, torch.nn.functional.cross_entropy)
    print(f"  paper-sized ResNet-50 step, 4 images at 112 px: NCHW {1000 / plain:.0f} ms, channels_last "
          f"{1000 / fast:.0f} ms; speed-up {fast / plain:.2f}x")


def cache_comparison(root: Path, batch: int, iterations: int) -> None:
    """Part 2: the demo's two-stream STILT trained end to end with the decoded-video cache off and on."""
    manifest = write_stores(root, videos=96, frames=16, width=64, height=64)
    base = dict(frames=str(root / "frames"), flow=str(root / "flow"), manifest=str(manifest), reduced=True,
                crop=56, resize=64, batch_size=batch, iterations=iterations, workers=0, log_every=10,
                checkpoint_every=10**6, co_attention=False, flip=False)
    rates = {}
    for cache_mb in (0, 256):
        config = resolve_config("stilt", overrides={**base, "cache_mb": cache_mb})
        _, mean, wait = train_rate(config, root / f"run_cache_{cache_mb}", gpu=False)
        rates[cache_mb] = mean
        print(f"  train, --cache-mb {cache_mb}: {mean:.1f} clips/s, data wait {100 * wait:.0f}% of the time")
    print(f"  cache on / off = {rates[256] / rates[0]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=16, help="clips per step (the demo's)")
    parser.add_argument("--iterations", type=int, default=120, help="training iterations per end-to-end run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {torch.get_num_threads()} torch thread(s); compute only (one batch in memory):")
    compute_comparisons(args.batch)
    print(f"End to end (96 generated videos, 16 frames of 64x64, batch {args.batch}, {args.iterations} iterations):")
    with tempfile.TemporaryDirectory() as tmp:
        cache_comparison(Path(tmp), args.batch, args.iterations)


if __name__ == "__main__":
    main()
