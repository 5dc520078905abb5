"""Benchmark the CoT local aggregation and the models: ours (shifted views) against the unfold formulation.

Three parts, each configuration in a fresh process so that its peak resident memory (ru_maxrss) is its own:
  1. the aggregation alone, forward + backward, at the four CoTNet stage shapes (batch 8, 224x224 input);
  2. CoTNet-50/101 forward + backward at batch 8, 224x224, with our aggregation and with the unfold one
     (the worker process swaps `actrec.models.cotnet.local_aggregate` for `local_aggregate_unfold`);
  3. the reduced STILT and CoT-LSTM forward + backward at 112x112, batch 2 (ours only: no reference exists).
Peak memory is the growth of the process's peak RSS over its RSS once the model and inputs exist (parameters and
inputs excluded; activations, saved tensors and gradients included).

    python benchmarks/bench_models.py                  # everything (about 10 minutes on 2 cores)
    python benchmarks/bench_models.py --parts 1 3      # skip the full networks
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import torch

from actrec.models import cotlstm_loss, cotlstm_reduced, cotnet, stilt_loss, stilt_reduced

STAGES = ((64, 56), (128, 28), (256, 14), (512, 7))  # CoT layer width and map size per stage at 224x224
AGGREGATIONS = {"ours": cotnet.local_aggregate, "unfold": cotnet.local_aggregate_unfold}


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _measure(step: Callable[[], None], iterations: int) -> tuple[float, float]:
    """One warm-up, then `iterations` timed runs: (fastest seconds, peak RSS growth over the RSS before them, MiB).
    The fastest run is the one least disturbed by other processes on a shared machine."""
    before = _rss_mib()
    step()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return min(times), max(peak - before, 0.0)


def aggregation_worker(variant: str, channels: int, size: int, batch: int, iterations: int) -> tuple[float, float]:
    torch.manual_seed(0)
    value = torch.randn(batch, channels, size, size, requires_grad=True)
    weights = torch.randn(batch, channels // cotnet.SHARE, 9, size, size, requires_grad=True)
    aggregate = AGGREGATIONS[variant]

    def step() -> None:
        aggregate(value, weights, 3).sum().backward()

    return _measure(step, iterations)


def network_worker(variant: str, depth: int, batch: int, size: int, iterations: int) -> tuple[float, float]:
    cotnet.local_aggregate = AGGREGATIONS[variant]  # this worker process only
    torch.manual_seed(0)
    model = (cotnet.cotnet50 if depth == 50 else cotnet.cotnet101)()
    images = torch.randn(batch, 3, size, size)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(images).sum().backward()

    return _measure(step, iterations)


def two_stream_worker(name: str, iterations: int) -> tuple[float, float]:
    torch.manual_seed(0)
    labels = torch.tensor([0, 1])
    if name == "stilt":
        model, loss_fn = stilt_reduced(num_classes=101), stilt_loss
        inputs = (torch.randn(2, 3, 3, 112, 112), torch.randn(2, 3, 20, 112, 112))
    else:
        model, loss_fn = cotlstm_reduced(num_classes=101), cotlstm_loss
        inputs = (torch.randn(2, 3, 112, 112), torch.randn(2, 10, 2, 112, 112))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(*inputs), labels).backward()

    return _measure(step, iterations)


def _isolated(threads: int, worker: Callable[..., tuple[float, float]], *args: object) -> tuple[float, float]:
    """Run one measurement in a fresh process with `threads` intra-op threads."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        return pool.submit(worker, *args).result()


def _side_by_side(
    label: str, threads: int, rounds: int, worker: Callable[..., tuple[float, float]], *args: object
) -> None:
    """Alternate ours and unfold for `rounds` rounds (fresh processes); keep each one's fastest time."""
    results: dict[str, list[tuple[float, float]]] = {"ours": [], "unfold": []}
    for _ in range(rounds):
        for variant in results:
            results[variant].append(_isolated(threads, worker, variant, *args))
    (ours_time, ours_mem), (ref_time, ref_mem) = (min(runs) for runs in results.values())
    print(
        f"{label:<28} ours {ours_time * 1e3:9.1f} ms {ours_mem:8.0f} MiB | unfold {ref_time * 1e3:9.1f} ms "
        f"{ref_mem:8.0f} MiB | time ratio unfold/ours {ref_time / ours_time:5.2f}, memory ratio "
        f"{ref_mem / max(ours_mem, 1.0):5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3], help="which parts to run (1, 2, 3)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of parts 1 and 2")
    parser.add_argument("--size", type=int, default=224, help="input size of part 2")
    parser.add_argument("--iterations", type=int, default=3, help="timed runs per process (fastest kept)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating ours/unfold processes per configuration")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="intra-op threads (1 is steadier when shared)"
    )
    args = parser.parse_args()
    common = (args.threads, args.rounds)
    print(f"torch {torch.__version__}, {args.threads} threads, CUDA available: {torch.cuda.is_available()}")
    print("load average at start (1, 5, 15 min): " + ", ".join(f"{load:.1f}" for load in os.getloadavg()))
    if 1 in args.parts:
        print(f"-- CoT local aggregation, forward + backward, batch {args.batch}")
        for channels, size in STAGES:
            label = f"C={channels} {size}x{size}"
            _side_by_side(label, *common, aggregation_worker, channels, size, args.batch, args.iterations)
    if 2 in args.parts:
        print(f"-- CoTNet forward + backward, batch {args.batch}, {args.size}x{args.size}")
        for depth in (50, 101):
            _side_by_side(f"CoTNet-{depth}", *common, network_worker, depth, args.batch, args.size, args.iterations)
    if 3 in args.parts:
        print("-- reduced two-stream models, forward + backward, batch 2, 112x112")
        for name in ("stilt", "cotlstm"):
            seconds, memory = _isolated(args.threads, two_stream_worker, name, args.iterations)
            print(f"{name:<28} ours {seconds * 1e3:9.1f} ms {memory:8.0f} MiB")


if __name__ == "__main__":
    main()
