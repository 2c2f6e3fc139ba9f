"""The ``mixedfx`` command line.

.. code-block:: console

    $ mixedfx fit "y ~ service + (1 | s) + (1 | d) + (1 | dept)" --data insteval
    $ mixedfx report "y ~ service + (1 | s) + (1 | d) + (1 | dept)" --data insteval --out insteval_report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["main", "load_data"]

#: Data sets that ``--data`` accepts by name.
NAMED_DATA = ("insteval",)


def load_data(source: str) -> pd.DataFrame:
    """Load ``--data``: a shipped data set by name, or a CSV or Parquet file.

    Parameters
    ----------
    source : str
        ``"insteval"``, or a path ending in ``.csv``, ``.csv.gz``, ``.parquet`` or
        ``.pq``.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    mixedfx.DataError
        For a missing file or an unknown format.

    Examples
    --------
    >>> from mixedfx.cli import load_data
    >>> load_data("insteval").shape
    (73421, 7)
    """
    from mixedfx.datasets import load_insteval
    from mixedfx.exceptions import DataError, did_you_mean

    if source.lower() == "insteval":
        return load_insteval()
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"--data {source!r} is neither a shipped data set ({', '.join(NAMED_DATA)}) nor an existing file."
            + did_you_mean(source, NAMED_DATA)
        )
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        return pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    raise DataError(f"cannot tell the format of {source!r}: use a .csv, .csv.gz or .parquet file")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixedfx", description="Mixed-effects models with lme4 formulas.")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit a model and print its summary")
    _add_fit_arguments(fit)
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    report = commands.add_parser(
        "report", help="fit a model and write its report: summary, tables, plots and report.md",
        description="Fit a model on a random part of the rows and write into OUT: summary.txt, report.md, "
                    "the tables as CSV and the diagnostic plots as PNG (the residuals on the held-out rows).",
    )
    _add_fit_arguments(report)
    report.add_argument("--out", required=True, help="directory to write the report into (created if missing)")
    report.add_argument("--test-fraction", type=float, default=0.2,
                        help="fraction of rows held out for the residual plot, drawn with --random-state "
                             "(default: 0.2; 0 fits every row)")
    report.add_argument("--quiet", action="store_true", help="no progress lines and no progress bar")
    return parser


def _add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("formula", help='lme4 formula, e.g. "y ~ service + (1 | s) + (1 | d) + (1 | dept)"')
    parser.add_argument("--data", required=True, help="'insteval', or a .csv / .parquet file")
    parser.add_argument("--family", default="gaussian", help="response family (default: gaussian)")
    parser.add_argument("--method", default="ml", choices=("ml", "reml"),
                        help="maximum likelihood, or REML for the gaussian family (default: ml)")
    parser.add_argument("--random-state", type=int, default=0, help="seed of the MCMC draws (default: 0)")
    parser.add_argument("--max-iter", type=int, default=500, help="maximum EM iterations (default: 500)")
    parser.add_argument("--tol", type=float, default=0.1, help="Monte Carlo error tolerance (default: 0.1)")


def _split_rows(data: pd.DataFrame, *, test_fraction: float, random_state: int):
    """A seeded random split of the rows into ``(train, test)``; ``test`` has ``round(fraction * n)`` rows."""
    from mixedfx.exceptions import DataError, ParameterError

    if not 0.0 <= test_fraction < 1.0:
        raise ParameterError(f"--test-fraction must be at least 0 and below 1, got {test_fraction}")
    n_test = int(round(test_fraction * len(data)))
    if len(data) - n_test < 2:
        raise DataError(f"--test-fraction {test_fraction} leaves {len(data) - n_test} of {len(data)} rows to fit")
    order = np.random.default_rng(random_state).permutation(len(data))
    return data.iloc[np.sort(order[n_test:])], data.iloc[np.sort(order[:n_test])]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    from mixedfx.exceptions import MixedFXError

    if args.command == "report":
        return _report(args)
    try:
        data = load_data(args.data)
        model = _estimator(args).fit(data)
    except MixedFXError as exc:
        print(f"mixedfx: error: {exc}", file=sys.stderr)
        return 2
    model.summary()
    return 0


def _estimator(args: argparse.Namespace):
    """The estimator the arguments describe: a classifier for bernoulli and ordinal responses."""
    from mixedfx.estimator import MixedEffectsClassifier, MixedEffectsRegressor
    from mixedfx.model import get_family

    settings = dict(family=args.family, random_state=args.random_state, max_iter=args.max_iter, tol=args.tol,
                    verbose=0 if args.quiet else 1)
    if get_family(args.family).is_classification:
        if args.method != "ml":
            from mixedfx.exceptions import ParameterError

            raise ParameterError(f"--method {args.method} is for the gaussian family; {args.family} is fitted by ML")
        return MixedEffectsClassifier(args.formula, **settings)
    return MixedEffectsRegressor(args.formula, method=args.method, **settings)


def _report(args: argparse.Namespace) -> int:
    """``mixedfx report``: fit on the training rows, then :func:`mixedfx.report.write_report`."""
    from mixedfx.exceptions import MixedFXError
    from mixedfx.report import write_report

    def say(message: str) -> None:
        if not args.quiet:
            print(f"mixedfx report: {message}", file=sys.stderr, flush=True)

    try:
        say(f"loading data {args.data}")
        data = load_data(args.data)
        train, test = _split_rows(data, test_fraction=args.test_fraction, random_state=args.random_state)
        say(f"fitting {args.formula} on {len(train)} rows ({len(test)} held out)")
        model = _estimator(args).fit(train)
        files = write_report(model, train=train, test=test, out_dir=args.out, progress=say)
    except MixedFXError as exc:
        print(f"mixedfx: error: {exc}", file=sys.stderr)
        return 2
    except (ImportError, OSError) as exc:  # matplotlib missing, or the directory not writable
        print(f"mixedfx: error: {exc}", file=sys.stderr)
        return 2
    say(f"wrote {len(files)} files into {args.out}")
    print(files[-1])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
