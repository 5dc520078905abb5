"""The demo's ablation ordering over several seeds: mean and spread of every table row, and how often each claim holds.

One seed of ``actrec demo`` tests on 24 videos (one video = 4.2 points), too few to tell a real effect from noise.
This script runs the demo (the real commands, as ``actrec demo`` does) once per seed, each seed drawing its own
synthetic dataset and training seeds, then reports per row the mean, sample standard deviation, minimum and maximum
of the test top-1, and for each claim of the papers' ordering the number of seeds where it holds and the mean
difference:

  * spatial stream < two-stream late average, and temporal stream < two-stream late average;
  * + co-attention (late average) vs two-stream (late average): the co-attention effect, reported, not assumed;
  * + AWF >= late average on the same (co-attention) STILT;
  * CoT-LSTM fusion > each of its streams.

A seed whose ``demo_results.json`` already exists under ``--workdir`` (with the same sizes) is read back rather
than rerun, so the script resumes after an interruption and more seeds can be added later.

    python benchmarks/bench_demo_seeds.py --seeds 0-4 --workdir /tmp/demo_seeds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from actrec.demo import DemoConfig, run_demo

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


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` or ``"0,3,7"`` (or a mix) to a sorted list of seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds.update(range(int(low), int(high or low) + 1))
    return sorted(seeds)


def seed_top1(workdir: Path, config: DemoConfig) -> tuple[dict[str, float], float]:
    """Test top-1 by row and the demo's seconds for one seed; reuses a finished run with the same sizes."""
    results = workdir / "demo_results.json"
    if results.exists():
        saved = json.loads(results.read_text())
        if saved["config"] == json.loads(json.dumps(asdict(config))):
            return saved["top1"], saved["seconds"]
    result = run_demo(workdir, config, echo=lambda line: None)
    return result.top1, result.seconds


def row_statistics(values: list[float]) -> str:
    """``mean | std | min | max`` cells (sample std; 0 for one seed)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} | {spread:.1f} | {min(values):.1f} | {max(values):.1f}"


def claim_line(claim: Claim, runs: list[dict[str, float]]) -> str:
    """One markdown row: the claim, seeds where it holds, mean and range of the difference in points."""
    diffs = [run[claim.better] - run[claim.worse] for run in runs]
    holds = sum(d > 0 if claim.strict else d >= 0 for d in diffs)
    return (f"| {claim.text} | {holds}/{len(diffs)} | {statistics.mean(diffs):+.1f} | "
            f"{min(diffs):+.1f} .. {max(diffs):+.1f} |")


def report(seeds: list[int], runs: list[dict[str, float]], seconds: list[float], config: DemoConfig) -> str:
    """The markdown tables for RESULTS.md."""
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}. "
             f"Date: {datetime.date.today()}. Seeds {seeds}; sizes {asdict(config) | {'seed': 'per run'}}. "
             f"Demo time per seed: mean {statistics.mean(seconds):.0f} s (min {min(seconds):.0f}, "
             f"max {max(seconds):.0f}).", "",
             "| row (test top-1, %) | mean | std | min | max | per seed |", "|---|---|---|---|---|---|"]
    for name in runs[0]:
        values = [run[name] for run in runs]
        lines.append(f"| {name} | {row_statistics(values)} | {' '.join(f'{v:.1f}' for v in values)} |")
    lines += ["", "| claim | seeds where it holds | mean difference (points) | range |", "|---|---|---|---|"]
    lines += [claim_line(claim, runs) for claim in CLAIMS]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,2,5")
    parser.add_argument("--workdir", type=Path, default=Path("demo_seeds"), help="one demo folder per seed under it")
    parser.add_argument("--videos-per-class", type=int, default=DemoConfig.videos_per_class)
    parser.add_argument("--iterations", type=int, default=DemoConfig.iterations)
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    runs, seconds = [], []
    for seed in seeds:
        config = DemoConfig(videos_per_class=args.videos_per_class, iterations=args.iterations, seed=seed)
        start = time.perf_counter()
        top1, took = seed_top1(args.workdir / f"seed_{seed}", config)
        runs.append(top1)
        seconds.append(took)
        print(f"seed {seed}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print(report(seeds, runs, seconds, DemoConfig(videos_per_class=args.videos_per_class,
                                                  iterations=args.iterations)))


if __name__ == "__main__":
    main()
