"""The ``fit-fusion`` command: per-class stream weights (AWF) and the other fusions, fitted and compared."""

from __future__ import annotations

import click

from actrec.cli.group import cli


def _parse_lambda(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """``auto`` (None: choose by cross-validation) or a finite lambda >= 0."""
    if value == "auto":
        return None
    try:
        lam = float(value)
    except ValueError:
        raise click.BadParameter(f"expected 'auto' or a number, found {value!r}") from None
    if not 0 <= lam < float("inf"):
        raise click.BadParameter(f"lambda must be a finite number >= 0, found {value}")
    return lam


def _score_source_options(side: str):
    """The --SIDE-scores, --SIDE-ids and --SIDE-labels options, defined once for the train and test sides."""
    existing = click.Path(exists=True, dir_okay=False)
    options = [
        click.option(f"--{side}-scores", multiple=True, required=True, type=existing,
                     help=f"{side} scores: one actrec .npz, or .npy matrices (N, C) or (S, N, C), repeated for "
                          "several streams"),
        click.option(f"--{side}-ids", type=existing, help=f"video-id list (one per line) for the {side} .npy rows"),
        click.option(f"--{side}-labels", type=existing,
                     help=f"labels of the {side} .npy rows: an actrec manifest .csv or an int .npy"),
    ]

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@cli.command("fit-fusion", epilog="""\b
Examples:
  actrec fit-fusion --train-scores ucf101_s1_train.npz --test-scores ucf101_s1_test.npz \\
      --method all -o fusion.json --plot weights.png
\b
  actrec fit-fusion --train-scores rgb_train.npy --train-scores flow_train.npy \\
      --train-ids train_ids.txt --train-labels ucf101_split1.csv \\
      --test-scores rgb_test.npy --test-scores flow_test.npy \\
      --test-ids test_ids.txt --test-labels ucf101_split1.csv \\
      --stream-names rgb,flow --lambda 0.3 --min-weight 0.1 -o fusion.json""")
@_score_source_options("train")
@_score_source_options("test")
@click.option("--stream-names", help="comma-separated names of the stacked .npy streams, e.g. rgb,flow")
@click.option("--logits", is_flag=True,
              help="the .npy scores are logits (e.g. mmaction2's average_clips='score'): apply a softmax per row; "
                   "without it every row must be probabilities summing to 1")
@click.option("--method", type=click.Choice(["awf", "average", "global", "early", "all"]), default="awf",
              show_default=True, help="fusion to fit and write; 'all' fits and compares every method and writes AWF")
@click.option("--lambda", "lam", default="auto", show_default=True, callback=_parse_lambda,
              help="AWF lambda (eq. 5), or 'auto' to choose lambda (and w_min) by k-fold cross-validation")
@click.option("--min-weight", type=click.FloatRange(0, 1), default=None,
              help="AWF lower bound w_min on every stream weight (weights sum to 1) [default: 0, or CV with auto]")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="k of the k-fold cross-validation behind --lambda auto")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="fusion JSON to write (weights per class and stream, lambda, w_min, names)")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="PNG of the per-class stream weights, classes sorted by the second stream's weight")
def fit_fusion_command(train_scores, train_ids, train_labels, test_scores, test_ids, test_labels, stream_names,
                       logits, method, lam, min_weight, folds, output, plot) -> None:
    """Fit per-class stream weights (AWF) on training scores and compare fusions on test scores.

    AWF solves the linear program of STILT eqs. 5-7 per class, with weights >= --min-weight summing to 1.
    Prints top-1, top-5 and mean class accuracy of every stream and fitted method, and writes the fusion JSON.
    """
    import warnings

    from actrec.fusion.awf import AwfParams
    from actrec.fusion.fit import FitOptions, fit_fusion_files
    from actrec.fusion.scores import FusionWarning, ScoreSource

    names = tuple(n.strip() for n in stream_names.split(",")) if stream_names else None
    train = ScoreSource(tuple(train_scores), train_ids, train_labels, names, logits)
    test = ScoreSource(tuple(test_scores), test_ids, test_labels, names, logits)
    options = FitOptions(method=method, awf=AwfParams(lam=lam, min_weight=min_weight, folds=folds))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FusionWarning)
        try:
            result = fit_fusion_files(train, test, output, options, plot)
        finally:
            for warning in caught:
                click.echo(f"warning: {warning.message}", err=True)
    click.echo(result.table)
    for note in result.notes:
        click.echo(note)
    click.echo(f"wrote {output}" + (f" and {plot}" if plot else ""))
