"""The ``mixedfx`` command line.

.. code-block:: console

    $ mixedfx fit "y ~ service + (1 | s) + (1 | d) + (1 | dept)" --data insteval
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    fit.add_argument("formula", help='lme4 formula, e.g. "y ~ service + (1 | s) + (1 | d) + (1 | dept)"')
    fit.add_argument("--data", required=True, help="'insteval', or a .csv / .parquet file")
    fit.add_argument("--family", default="gaussian", help="response family (default: gaussian)")
    fit.add_argument("--random-state", type=int, default=0, help="seed of the MCMC draws (default: 0)")
    fit.add_argument("--max-iter", type=int, default=500, help="maximum EM iterations (default: 500)")
    fit.add_argument("--tol", type=float, default=0.1, help="Monte Carlo error tolerance (default: 0.1)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    from mixedfx.estimator import MixedEffectsRegressor
    from mixedfx.exceptions import MixedFXError

    try:
        data = load_data(args.data)
        model = MixedEffectsRegressor(
            args.formula,
            family=args.family,
            random_state=args.random_state,
            max_iter=args.max_iter,
            tol=args.tol,
            verbose=0 if args.quiet else 1,
        ).fit(data)
    except MixedFXError as exc:
        print(f"mixedfx: error: {exc}", file=sys.stderr)
        return 2
    model.summary()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
