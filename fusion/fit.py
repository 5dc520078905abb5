"""Fit fusion methods on training scores, compare them on test scores, and write the chosen one (``fit-fusion``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from actrec.errors import InputError
from actrec.fusion.awf import AwfParams, fit_awf
from actrec.fusion.baselines import SvmParams, fit_average, fit_early, fit_global
from actrec.fusion.model import Fusion, LateFusion, apply_fusion, save_fusion
from actrec.fusion.report import AccuracyRow, accuracy_row, format_table, plot_weights
from actrec.fusion.scores import PathLike, ScoreSet, ScoreSource, check_compatible

METHODS = ("average", "global", "early", "awf")  # table order: baselines first, AWF last (paper Table 5)


@dataclass(frozen=True)
class FitOptions:
    """What ``fit_fusion`` fits and how."""

    method: str = "awf"  # one of METHODS, or "all"; with "all" the AWF fusion is the one written
    awf: AwfParams = field(default_factory=AwfParams)  # lambda, w_min, CV folds and grids
    global_step: float = 0.05  # grid step of the global-weight baseline
    svm: SvmParams = field(default_factory=SvmParams)  # early-fusion SVM training


@dataclass(frozen=True)
class FitResult:
    """The fusion to write, the accuracy table rows (streams, model fused, methods) and notes on skipped rows."""

    fusion: Fusion
    rows: list[AccuracyRow]
    notes: list[str]
    table: str


def fit_fusion(train: ScoreSet, test: ScoreSet, options: FitOptions = FitOptions(),
               train_source: str = "training scores", test_source: str = "test scores") -> FitResult:
    """Fit the requested methods on ``train`` and measure every stream and method on ``test``."""
    if options.method not in (*METHODS, "all"):
        raise InputError(f"unknown fusion method {options.method!r} (expected {', '.join(METHODS)} or all)")
    check_compatible(train, test, train_source, test_source)
    if not (test.labels >= 0).any():
        raise InputError(f"{test_source}: no labelled video; the accuracy table needs test labels")
    rows = [accuracy_row(name, test.scores[n], test.labels) for n, name in enumerate(test.stream_names)]
    if test.model_fused is not None:
        rows.append(accuracy_row("model fused", test.model_fused, test.labels))
    notes: list[str] = []
    fitted: dict[str, Fusion] = {}
    for method in METHODS if options.method == "all" else (options.method,):
        if method == "early" and options.method == "all" and not _has_features(train, test):
            notes.append("early: skipped, the score files carry no per-stream features")
            continue
        fitted[method] = _fit_one(method, train, options, train_source)
        fused = apply_fusion(fitted[method], test, test_source)
        rows.append(accuracy_row(_row_name(fitted[method]), fused, test.labels))
    fusion = fitted["awf" if options.method == "all" else options.method]
    title = f"{len(test.video_ids)} test videos, {test.num_classes} classes, accuracy in %"
    return FitResult(fusion, rows, notes, format_table(rows, title))


def fit_fusion_files(train: ScoreSource, test: ScoreSource, output: PathLike, options: FitOptions = FitOptions(),
                     plot: PathLike | None = None) -> FitResult:
    """Load both score sources, run ``fit_fusion``, write the fusion JSON and, if asked, the weight plot."""
    if plot is not None and options.method == "early":
        raise InputError(f"{plot}: early fusion has no per-class stream weights to plot")
    result = fit_fusion(train.load(), test.load(), options, train.name, test.name)
    save_fusion(output, result.fusion)
    if plot is not None and isinstance(result.fusion, LateFusion):
        plot_weights(plot, result.fusion)
    return result


def _has_features(*score_sets: ScoreSet) -> bool:
    return all(name in s.features for s in score_sets for name in s.stream_names)


def _fit_one(method: str, train: ScoreSet, options: FitOptions, source: str) -> Fusion:
    if method == "awf":
        return fit_awf(train, options.awf, source)
    if method == "average":
        return fit_average(train)
    if method == "global":
        return fit_global(train, options.global_step, source)
    return fit_early(train, options.svm, source)


def _row_name(fusion: Fusion) -> str:
    if fusion.method == "awf":
        return f"AWF (lambda={fusion.info['lambda']:g}, w_min={fusion.info['min_weight']:.3g})"
    if fusion.method == "global" and isinstance(fusion, LateFusion):
        weights = ", ".join(f"{name} {w:.2f}" for name, w in zip(fusion.stream_names, fusion.weights[0]))
        return f"global weights ({weights})"
    return {"average": "late average", "early": "early (linear SVM)"}[fusion.method]
