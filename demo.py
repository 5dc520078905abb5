"""`actrec demo`: the whole pipeline on a generated dataset on the CPU, ending with the papers' ablation tables.

It runs the real commands (``synth``, ``extract-frames``, ``compute-flow``, then for each model ``train``,
``evaluate`` and ``fit-fusion``, the models side by side) in a work folder, each printed as the command line a user
would type, and then reports:

* STILT Table 4 layout (test top-1): spatial stream, temporal stream, two-stream late average (a STILT trained
  without co-attention), + co-attention (the STILT with it, late average), + AWF (its streams fused by the
  per-class weights fit-fusion learnt on the training scores);
* STILT Table 5 layout, on the co-attention STILT: late average, early fusion (linear SVM on the features), AWF;
* CoT-LSTM, second paper Table II layout: spatial, temporal and fusion (FC-2) columns.

The synthetic dataset separates motion-only classes (a spatial stream cannot tell them apart) from appearance-only
classes (a temporal stream cannot), so each stream alone falls short and fusion should help. Sizes are reduced
(small frames, reduced backbones, few iterations, a light test protocol) so that it finishes in minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from actrec.errors import ActrecError
from actrec.fusion.model import LateFusion, apply_fusion, load_fusion
from actrec.fusion.report import AccuracyRow, accuracy_row, format_table
from actrec.fusion.scores import ScoreSet, load_scores
from actrec.pipeline.synth import APPEARANCE_ONLY, MOTION_ONLY


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run; the defaults finish in a few minutes on 2 CPU cores."""

    # 16 training videos per class: the spatial stream learns the 4 appearance-only classes from them (+6.9 points
    # of late average over the better stream at 8, over 3 seeds). 16 test videos per class: at 4, the 16 test
    # videos of the appearance classes, where the streams differ, spread a seed's gain from +2 to +19 points
    videos_per_class: int = 32  # x 12 synthetic classes
    splits: tuple[float, float, float] = (0.5, 0.0, 0.5)  # train, val, test: 16 and 16 per class (no val is used)
    frames: int = 16  # per video (15 flows: enough for stacks of 10)
    size: int = 64  # frames are size x size
    object_size: float = 0.45  # of the frame side: 29 px at 64, where shapes and textures stay legible
    # TV-L1: OpenCV's 5 levels x 5 warps and stop 0.01 are sized for 340x256 frames; at 64x64 with motion of at
    # most a few pixels per frame, 3 levels (down to 41 px) x 3 warps and stop 0.05 give flows within 0.08 px of the
    # default's (mean, half the 0.157 px step of the uint8 store) in an eighth of the time (bench_demo_flow.py)
    nscales: int = 3
    warps: int = 3
    epsilon: float = 0.05
    crop: int = 56  # network input
    iterations: int = 600  # each STILT (two-stream and co-attention)
    # 16 clips a STILT step: a clip's 3 segments come from one video, and the demo's short videos make them nearly
    # the same frames, so a batch of 8 clips shows the spatial stream 8 pictures; with 16 it learns the appearance
    # classes sooner (the two-stream STILT on 288 test videos, seeds 0-2: spatial 31.0% and late average +13.5 over
    # the better stream, against 28.0% and +11.3 at 8; RESULTS.md, "Demo"), paid for by the faster CPU step
    # (channels_last and the decoded-video cache) and by a shorter CoT-LSTM run (one picture per clip; its step
    # costs about twice STILT's; at 300 x 8 clips its fusion fell below its temporal stream)
    batch_size: int = 16
    cotlstm_iterations: int = 450
    cotlstm_batch_size: int = 8
    lr: float = 1e-3  # the from-scratch recipe of reduced models: AdamW, warmup, cosine decay
    # No dropout before the classifiers (the papers' heads take 0.5): on the reduced heads' 64 units it slowed the
    # spatial streams' fit so much that at 2 of 5 seeds the co-attention STILT's had not learnt the shape classes on
    # its own training videos, and AWF, fitted on those, rightly gave them to flow. Without it every stream fits and
    # tests better and the AWF check holds at every seed; the late average's gain over the better stream is +8.8
    # instead of +10.8, as the temporal stream gains too (RESULTS.md, "Demo")
    dropout: float = 0.0
    positions: int = 5  # test positions per video (centre crop); the field's protocol is 25 x 10 crops
    cache_mb: int = 256  # decoded training videos kept in memory by each training (the demo's take about 60 MB)
    seed: int = 0
    workers: int = 2  # processes for extraction and flow


@dataclass(frozen=True)
class DemoResult:
    """The printed tables, their top-1 numbers by row name, and where the files are."""

    text: str
    top1: dict[str, float]
    awf: dict[str, int]  # classes whose AWF weights favour the stream built for them (``awf_favours``)
    workdir: Path
    seconds: float


RUNS = {"two-stream": ("stilt", ["--no-co-attention"]), "stilt": ("stilt", []), "cotlstm": ("cotlstm", [])}


def data_commands(workdir: Path, config: DemoConfig) -> list[list[str]]:
    """The data stages of the demo, run in this order: synth, extract-frames, compute-flow."""
    w = str(workdir)
    size = f"{config.size}x{config.size}"
    return [
        ["synth", "--out", f"{w}/synth", "--videos-per-class", str(config.videos_per_class), "--frames",
         str(config.frames), "--size", size, "--seed", str(config.seed), "--splits",
         ",".join(map(str, config.splits)), "--object-size", str(config.object_size)],
        ["extract-frames", "--manifest", f"{w}/synth/manifest.csv", "--video-root", f"{w}/synth/videos", "--out",
         f"{w}/frames", "--size", size, "--workers", str(config.workers), "--quiet"],
        ["compute-flow", "--frames", f"{w}/frames", "--out", f"{w}/flow", "--workers", str(config.workers),
         "--nscales", str(config.nscales), "--warps", str(config.warps), "--epsilon", str(config.epsilon),
         "--quiet"],
    ]


def model_commands(workdir: Path, config: DemoConfig, run: str) -> list[list[str]]:
    """One model's chain, run in this order: train, evaluate (train and test split), fit-fusion. The chains of
    the models share no file, so they can run side by side."""
    w = str(workdir)
    model, extra = RUNS[run]
    commands = [["train", model, "--frames", f"{w}/frames", "--flow", f"{w}/flow", "--manifest",
                 f"{w}/synth/manifest.csv", "--out", f"{w}/runs/{run}", "--reduced", "--crop", str(config.crop),
                 "--resize", str(config.size), "--batch-size",
                 str(config.cotlstm_batch_size if model == "cotlstm" else config.batch_size), "--iterations",
                 str(config.cotlstm_iterations if model == "cotlstm" else config.iterations), "--lr", str(config.lr),
                 "--dropout", str(config.dropout), "--no-flip", "--seed", str(config.seed), "--workers", "0",
                 "--cache-mb", str(config.cache_mb), "--quiet", *extra]]
    for split in ("train", "test"):
        commands.append(["evaluate", "--checkpoint", f"{w}/runs/{run}/checkpoint.pt", "--split", split, "-o",
                         f"{w}/scores/{run}_{split}.npz", "--positions", str(config.positions), "--crops",
                         "center", "--features", "--workers", "0", "--quiet"])
    scores = ["--train-scores", f"{w}/scores/{run}_train.npz", "--test-scores", f"{w}/scores/{run}_test.npz"]
    commands.append(["fit-fusion", *scores, "--method", "all", "-o", f"{w}/fusion/{run}.json", "--plot",
                     f"{w}/fusion/{run}_weights.png"])
    if run == "stilt":
        commands.append(["fit-fusion", *scores, "--method", "early", "-o", f"{w}/fusion/{run}_early.json"])
    return commands


def demo_commands(workdir: Path, config: DemoConfig) -> list[list[str]]:
    """Every command line of the demo (arguments of ``actrec``): the data stages, then each model's chain."""
    return [*data_commands(workdir, config), *(argv for run in RUNS for argv in model_commands(workdir, config, run))]


def resume_started_training(argv: list[str]) -> list[str]:
    """A ``train`` command whose run folder already holds a checkpoint continues it (``--resume``; a finished run
    stays as it is), so that a rerun of the demo resumes every stage."""
    if argv[0] == "train" and (Path(argv[argv.index("--out") + 1]) / "checkpoint.pt").exists():
        return [*argv, "--resume"]
    return argv


def run_command(argv: list[str]) -> None:
    """Run one ``actrec`` command in this process, as the console script would; a non-zero exit is an error."""
    from actrec.cli import cli  # the CLI imports this module for the demo command

    try:
        cli.main(args=argv, prog_name="actrec", standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise ActrecError(f"demo step failed (exit {exc.code}): actrec {' '.join(argv)}") from None


def run_logged(argv: list[str]) -> list[str]:
    """Run one command (resuming a started training) and return what the demo prints for it: the command line,
    its output, and its time. The output is captured so that a chain run in another process prints in one piece."""
    argv = resume_started_training(argv)
    step = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        run_command(argv)
    return [f"\n$ actrec {' '.join(argv)}", *out.getvalue().rstrip("\n").splitlines(),
            f"[{argv[0]}: {time.perf_counter() - step:.1f} s]"]


def run_chain(commands: list[list[str]], threads: int) -> list[str]:
    """Run one model's chain with ``threads`` torch threads; the lines to print."""
    import torch  # here, not at the top: the command line imports this module for the demo command's options

    torch.set_num_threads(threads)
    return [line for argv in commands for line in run_logged(argv)]


# The order the chains start in (all at once, one process each).
CHAIN_ORDER = ("cotlstm", "two-stream", "stilt")


def run_models(workdir: Path, config: DemoConfig, echo: Callable[[str], None]) -> None:
    """The three models' chains side by side, one process each (joblib), each with its share of the cores (one
    thread on 2 cores: two small trainings with one thread each finish sooner than one after the other with two
    threads each, which the tiny convolutions of the reduced models barely use). Three processes on 2 cores share
    them until the first chain ends, then the other two have a core each: the models take about the sum of the
    chains' times over 2, where 2 processes left a core idle while the third chain waited for one. A chain's lines
    are printed when it ends."""
    jobs = len(RUNS)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    echo(f"\nTraining, evaluating and fusing {len(RUNS)} models ({', '.join(CHAIN_ORDER)}) in {jobs} "
         f"processes, {threads} thread{'s' if threads > 1 else ''} each; each model's commands are printed when it "
         "is done.")
    from joblib import Parallel, delayed

    chains = (delayed(run_chain)(model_commands(workdir, config, run), threads) for run in CHAIN_ORDER)
    for lines in Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(chains):
        for line in lines:
            echo(line)


def run_demo(workdir: str | Path, config: DemoConfig = DemoConfig(),
             echo: Callable[[str], None] = print) -> DemoResult:
    """Run every demo command, then print and return the ablation tables."""
    start = time.perf_counter()
    workdir = Path(workdir)
    for subdir in ("scores", "fusion"):
        (workdir / subdir).mkdir(parents=True, exist_ok=True)
    for argv in data_commands(workdir, config):
        for line in run_logged(argv):
            echo(line)
    run_models(workdir, config, echo)
    rows = ablation_rows(workdir)
    awf = awf_favours(load_fusion(workdir / "fusion" / "stilt.json"))
    seconds = time.perf_counter() - start
    text = "\n\n".join(format_table(table, title) for title, table in rows.items())
    text += "\n\n" + awf_check_line(awf)
    text += "\n\n" + noise_note(len(load_scores(workdir / "scores" / "stilt_test.npz").video_ids))
    text += (f"\n\nFiles under {workdir}: synth/ (videos, manifest.csv), frames/, flow/, runs/<model>/ (config, "
             f"checkpoint, metrics.csv), scores/*.npz (+ .per_class.csv, .confusion.png), fusion/*.json and "
             f"fusion/*_weights.png. Demo time {seconds:.0f} s.")
    echo("\n" + text)
    top1 = {f"{title} / {row.name}": row.top1 for title, table in rows.items() for row in table}
    (workdir / "demo_results.json").write_text(json.dumps({"config": asdict(config), "top1": top1, "awf": awf,
                                                           "seconds": seconds}, indent=2))
    return DemoResult(text, top1, awf, workdir, seconds)


def awf_favours(fusion: LateFusion) -> dict[str, int]:
    """How many appearance-only classes have an RGB weight above 0.5, and motion-only classes a flow weight above
    0.5, in per-class weights fitted on streams named ``rgb`` and ``flow``."""
    weights = dict(zip(fusion.class_names, fusion.weights[:, [fusion.stream_names.index(s) for s in ("rgb", "flow")]]))
    return {"appearance_rgb": sum(int(weights[name][0] > 0.5) for name in APPEARANCE_ONLY),
            "motion_flow": sum(int(weights[name][1] > 0.5) for name in MOTION_ONLY)}


AWF_GOAL = {"appearance_rgb": 3, "motion_flow": 6}  # of the 4 appearance-only and the 8 motion-only classes


def awf_check_line(awf: dict[str, int]) -> str:
    """One line: do the co-attention STILT's AWF weights favour the stream each class was built for?"""
    holds = all(awf[key] >= goal for key, goal in AWF_GOAL.items())
    return (f"AWF check (STILT, fusion/stilt_weights.png): RGB weight > 0.5 on {awf['appearance_rgb']}/"
            f"{len(APPEARANCE_ONLY)} appearance-only classes (goal >= {AWF_GOAL['appearance_rgb']}), flow weight > 0.5 "
            f"on {awf['motion_flow']}/{len(MOTION_ONLY)} motion-only classes (goal >= {AWF_GOAL['motion_flow']}): "
            f"{'as designed' if holds else 'NOT as designed'}")


def noise_note(test_videos: int) -> str:
    """How much one seed's table can say: the value of one test video, and where the seed study is."""
    return (f"Test top-1 on {test_videos} videos: one video is {100 / test_videos:.1f} points, so one seed cannot "
            f"settle a difference of a few points; benchmarks/bench_demo_seeds.py runs several seeds (results in "
            f"benchmarks/RESULTS.md).")


def _late_average(scores: ScoreSet) -> np.ndarray:
    return scores.scores.mean(axis=0)


def _fused(workdir: Path, run: str, scores: ScoreSet) -> np.ndarray:
    return apply_fusion(load_fusion(workdir / "fusion" / f"{run}.json"), scores)


def ablation_rows(workdir: Path) -> dict[str, list[AccuracyRow]]:
    """The three tables, as accuracy rows on the test split, from the score files and fusion weights."""
    test = {run: load_scores(workdir / "scores" / f"{run}_test.npz") for run in RUNS}
    labels = test["stilt"].labels
    base, stilt, cot = test["two-stream"], test["stilt"], test["cotlstm"]
    return {
        "STILT ablation (Table 4 layout)": [
            accuracy_row("spatial stream", base.scores[0], labels),
            accuracy_row("temporal stream", base.scores[1], labels),
            accuracy_row("two-stream (late average)", _late_average(base), labels),
            accuracy_row("+ co-attention (late average)", _late_average(stilt), labels),
            accuracy_row("+ co-attention + AWF", _fused(workdir, "stilt", stilt), labels),
        ],
        "STILT fusion methods (Table 5 layout)": [
            accuracy_row("late average", _late_average(stilt), labels),
            accuracy_row("early (linear SVM on features)", _fused(workdir, "stilt_early", stilt), labels),
            accuracy_row("AWF", _fused(workdir, "stilt", stilt), labels),
        ],
        "CoT-LSTM (Table II layout)": [
            accuracy_row("spatial", cot.scores[0], cot.labels),
            accuracy_row("temporal", cot.scores[1], cot.labels),
            accuracy_row("fusion (FC-2)", cot.model_fused, cot.labels),
        ],
    }
