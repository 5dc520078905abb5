"""The demo's ablation ordering over several seeds: mean and spread of every table row, and how often each claim holds.

One seed of ``actrec demo`` tests on 48 videos (one video = 2.1 points), too few to tell a real effect from noise.
This script runs the demo (the real commands, as ``actrec demo`` does) once per seed, each seed drawing its own
synthetic dataset and training seeds, then reports per row the mean, sample standard deviation, minimum and maximum
of the test top-1; the demo's goals on the means (spatial >= 30%, temporal >= 55%, two-stream late average >= 10
points above the better stream) and on the AWF weights of every seed (RGB favoured on >= 3 of the 4 appearance-only
classes, flow on >= 6 of the 8 motion-only ones); and for each claim of the papers' ordering the number of seeds
where it holds, the mean difference and its spread:

  * spatial stream < two-stream late average, and temporal stream < two-stream late average;
  * + co-attention (late average) vs two-stream (late average): the co-attention effect, reported, not assumed;
  * + AWF >= late average on the same (co-attention) STILT;
  * CoT-LSTM fusion > each of its streams.

A seed whose ``demo_results.json`` already exists under ``--workdir`` (with the same sizes) is read back rather
than rerun, so the script resumes after an interruption and more seeds can be added later.

    python benchmarks/bench_demo_seeds.py --seeds 0-4 --workdir /tmp/demo_seeds

A larger test split reads the goals more precisely at the same training set: ``--videos-per-class 40 --splits
0.4,0,0.6`` keeps 16 training videos per class and tests on 24 (288 per seed instead of 48, about 2.4x less
spread from the test draw), for about twice the demo's time (twice the flow to compute).

    python benchmarks/bench_demo_seeds.py --seeds 0-2 --videos-per-class 40 --splits 0.4,0,0.6 --workdir /tmp/big
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from actrec.demo import AWF_GOAL, DemoConfig, run_demo

T4 = "STILT ablation (Table 4 layout)"
T5 = "STILT fusion methods (Table 5 layout)"
T2 = "CoT-LSTM (Table II layout)"


@dataclass(frozen=True)
class Claim:
    """``better`` minus ``worse`` is expected to be positive (strict) or non-negative."""

    text: str
    better: str
    worse: str
    strict: bool


CLAIMS = [
    Claim("two-stream > spatial", f"{T4} / two-stream (late average)", f"{T4} / spatial stream", True),
    Claim("two-stream > temporal", f"{T4} / two-stream (late average)", f"{T4} / temporal stream", True),
    Claim("+ co-attention > two-stream", f"{T4} / + co-attention (late average)", f"{T4} / two-stream (late average)",
          True),
    Claim("AWF >= late average", f"{T5} / AWF", f"{T5} / late average", False),
    Claim("early (SVM) >= late average", f"{T5} / early (linear SVM on features)", f"{T5} / late average", False),
    Claim("CoT-LSTM fusion > spatial", f"{T2} / fusion (FC-2)", f"{T2} / spatial", True),
    Claim("CoT-LSTM fusion > temporal", f"{T2} / fusion (FC-2)", f"{T2} / temporal", True),
]


def parse_splits(text: str) -> tuple[float, float, float]:
    """``"0.4,0,0.6"`` to the train, val and test fractions of ``DemoConfig.splits``."""
    parts = tuple(float(part) for part in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--splits takes train,val,test fractions, got {text!r}")
    return parts  # type: ignore[return-value]


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` or ``"0,3,7"`` (or a mix) to a sorted list of seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds.update(range(int(low), int(high or low) + 1))
    return sorted(seeds)


@dataclass(frozen=True)
class SeedRun:
    """One seed's demo: test top-1 by row, AWF class counts (``actrec.demo.awf_favours``) and wall seconds."""

    top1: dict[str, float]
    awf: dict[str, int]
    seconds: float


def seed_run(workdir: Path, config: DemoConfig) -> SeedRun:
    """Run the demo for one seed, or read back a finished run with the same sizes."""
    results = workdir / "demo_results.json"
    if results.exists():
        saved = json.loads(results.read_text())
        if saved["config"] == json.loads(json.dumps(asdict(config))) and "awf" in saved:
            return SeedRun(saved["top1"], saved["awf"], saved["seconds"])
    result = run_demo(workdir, config, echo=lambda line: None)
    return SeedRun(result.top1, result.awf, result.seconds)


def goal_lines(runs: list[SeedRun]) -> list[str]:
    """Markdown rows: each goal of the demo, the measured value and whether it is met."""
    def mean(row: str) -> float:
        return statistics.mean(run.top1[f"{T4} / {row}"] for run in runs)

    spatial, temporal, late = mean("spatial stream"), mean("temporal stream"), mean("two-stream (late average)")
    goals = [("spatial stream, mean test top-1 >= 30%", f"{spatial:.1f}", spatial >= 30),
             ("temporal stream, mean test top-1 >= 55%", f"{temporal:.1f}", temporal >= 55),
             ("two-stream late average >= better stream + 10 points", f"{late - max(spatial, temporal):+.1f}",
              late - max(spatial, temporal) >= 10)]
    for key, goal in AWF_GOAL.items():
        counts = [run.awf[key] for run in runs]
        goals.append((f"AWF (STILT) {key.replace('_', ' favours ')} on >= {goal} classes, every seed",
                      " ".join(map(str, counts)), min(counts) >= goal))
    return ["| goal | measured | met |", "|---|---|---|"] + [f"| {text} | {value} | {'yes' if ok else 'no'} |"
                                                          for text, value, ok in goals]


def row_statistics(values: list[float]) -> str:
    """``mean | std | min | max`` cells (sample std; 0 for one seed)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} | {spread:.1f} | {min(values):.1f} | {max(values):.1f}"


def claim_line(claim: Claim, runs: list[dict[str, float]]) -> str:
    """One markdown row: the claim, seeds where it holds, mean, std and range of the difference in points."""
    diffs = [run[claim.better] - run[claim.worse] for run in runs]
    holds = sum(d > 0 if claim.strict else d >= 0 for d in diffs)
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return (f"| {claim.text} | {holds}/{len(diffs)} | {statistics.mean(diffs):+.1f} | {spread:.1f} | "
            f"{min(diffs):+.1f} .. {max(diffs):+.1f} |")


def report(seeds: list[int], runs: list[SeedRun], config: DemoConfig) -> str:
    """The markdown tables for RESULTS.md."""
    seconds = [run.seconds for run in runs]
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}. "
             f"Date: {datetime.date.today()}. Seeds {seeds}; sizes {asdict(config) | {'seed': 'per run'}}. "
             f"Demo wall time per seed: mean {statistics.mean(seconds):.0f} s (min {min(seconds):.0f}, "
             f"max {max(seconds):.0f}).", "",
             "| row (test top-1, %) | mean | std | min | max | per seed |", "|---|---|---|---|---|---|"]
    for name in runs[0].top1:
        values = [run.top1[name] for run in runs]
        lines.append(f"| {name} | {row_statistics(values)} | {' '.join(f'{v:.1f}' for v in values)} |")
    lines += ["", *goal_lines(runs)]
    lines += ["", "| claim | seeds where it holds | mean difference (points) | std | range |", "|---|---|---|---|---|"]
    lines += [claim_line(claim, [run.top1 for run in runs]) for claim in CLAIMS]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,2,5")
    parser.add_argument("--workdir", type=Path, default=Path("demo_seeds"), help="one demo folder per seed under it")
    parser.add_argument("--videos-per-class", type=int, default=DemoConfig.videos_per_class)
    parser.add_argument("--iterations", type=int, default=DemoConfig.iterations, help="of each STILT")
    parser.add_argument("--cotlstm-iterations", type=int, default=DemoConfig.cotlstm_iterations)
    parser.add_argument("--splits", type=parse_splits, default=DemoConfig.splits,
                        help="train,val,test fractions of each class's videos, e.g. 0.4,0,0.6")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    sizes = DemoConfig(videos_per_class=args.videos_per_class, iterations=args.iterations,
                       cotlstm_iterations=args.cotlstm_iterations, splits=args.splits)
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        runs.append(seed_run(args.workdir / f"seed_{seed}", replace(sizes, seed=seed)))
        print(f"seed {seed}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print(report(seeds, runs, sizes))


if __name__ == "__main__":
    main()
