"""The documentation's zero-inflation check: observed zeros against simulated ones, on Salamanders.

glmmTMB's Salamanders counts (``count ~ mined + (1 | site)``) fitted twice, as a plain
Poisson GLMM and as a zero-inflated one (``ziformula="~ mined"``); each fitted model
simulates the response many times (``simulate``, new site effects each time, as lme4's
and DHARMa's default), and the number of zeros of each simulated response is set
against the number observed: glmmTMB's and DHARMa's ``testZeroInflation`` check, drawn.

From the shell (``numbers.json`` and ``zero_counts.png`` land in ``OUT_DIR``)::

    python -m mixedfx.examples.zero_inflation OUT_DIR --data tests/fixtures/salamanders.csv

The documentation build (``docs/_ext/zero_inflation_example.py``) runs that command and
caches its outputs.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["FIGURE", "N_SIMULATIONS", "zero_counts", "run"]

#: The PNG file :func:`run` writes.
#:
#: Examples
#: --------
#: >>> from mixedfx.examples.zero_inflation import FIGURE
#: >>> FIGURE
#: 'zero_counts.png'
FIGURE = "zero_counts.png"

#: Simulated responses per fitted model.
#:
#: Examples
#: --------
#: >>> from mixedfx.examples.zero_inflation import N_SIMULATIONS
#: >>> N_SIMULATIONS
#: 500
N_SIMULATIONS = 500


def zero_counts(data, *, n_simulations=N_SIMULATIONS, random_state=0):
    """Fit the Poisson and the zero-inflated Poisson GLMM; count the zeros they simulate.

    Parameters
    ----------
    data : pandas.DataFrame
        Salamanders' ``count``, ``mined`` and ``site`` columns.
    n_simulations : int, default N_SIMULATIONS
        Simulated responses per model.
    random_state : int, default 0
        Seeds the fits and the simulations.

    Returns
    -------
    observed : int
        Zeros in ``data["count"]``.
    simulated : dict
        Per model (``"Poisson"``, ``"zero-inflated Poisson"``), the number of zeros of
        each simulated response (an array of ``n_simulations`` integers).
    models : dict
        The fitted models, by the same names.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.examples.zero_inflation import zero_counts
    >>> data = pd.read_csv("tests/fixtures/salamanders.csv")  # doctest: +SKIP
    >>> observed, simulated, models = zero_counts(data)  # doctest: +SKIP
    >>> observed, simulated["Poisson"].mean() < observed  # doctest: +SKIP
    (387, True)
    """
    import mixedfx

    formula = "count ~ mined + (1 | site)"
    models = {
        "Poisson": mixedfx.glmer(formula, data, family="poisson", random_state=random_state, verbose=0),
        "zero-inflated Poisson": mixedfx.glmer(formula, data, family="poisson", ziformula="~ mined",
                                               random_state=random_state, verbose=0),
    }
    observed = int((data["count"] == 0).sum())
    simulated = {name: (model.simulate(n_simulations, random_state=random_state) == 0).sum(axis=0).to_numpy()
                 for name, model in models.items()}
    return observed, simulated, models


def run(out_dir, data, *, n_simulations=N_SIMULATIONS, random_state=0) -> dict:
    """Run :func:`zero_counts`, draw :data:`FIGURE` into ``out_dir`` and return the numbers.

    The numbers (also written as ``numbers.json``): the rows, the zeros observed, per
    model the mean, 2.5 % and 97.5 % quantiles of the simulated zero counts and the
    share of simulations with at least as many zeros as observed, the fit's estimates,
    and the seconds it all took.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.examples.zero_inflation import run
    >>> numbers = run("/tmp/zi", pd.read_csv("tests/fixtures/salamanders.csv"))  # doctest: +SKIP
    >>> numbers["figure"]  # doctest: +SKIP
    'zero_counts.png'
    """
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        observed, simulated, models = zero_counts(data, n_simulations=n_simulations, random_state=random_state)
    numbers = {"n_rows": len(data), "observed": observed, "n_simulations": n_simulations, "models": {},
               "warnings": sorted({f"{type(w.message).__name__}: {w.message}" for w in caught
                                   if not issubclass(w.category, (DeprecationWarning, FutureWarning))})}
    for name, counts in simulated.items():
        model = models[name]
        low, high = np.quantile(counts, [0.025, 0.975])
        numbers["models"][name] = {
            "mean": float(counts.mean()), "low": float(low), "high": float(high),
            "share_at_least_observed": float(np.mean(counts >= observed)),
            "fixed_effects": {k: float(v) for k, v in model.fixed_effects_.items()},
            "sd_site": float(model.variance_components_.set_index("group")["sdcor"]["site"]),
            "zi_fixed_effects": ({k: float(v) for k, v in model.zi_fixed_effects_["Estimate"].items()}
                                 if getattr(model, "zi_fixed_effects_", None) is not None else {}),
        }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _figure(observed, simulated).savefig(out / FIGURE, dpi=100)
    numbers["figure"] = FIGURE
    numbers["seconds"] = time.perf_counter() - started
    (out / "numbers.json").write_text(json.dumps(numbers, indent=2))
    return numbers


def _figure(observed: int, simulated: dict):
    """Histograms of each model's simulated zero counts, and the observed count as a line."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 3.8))
    counts = np.concatenate(list(simulated.values()))
    bins = np.arange(min(counts.min(), observed) - 0.5, max(counts.max(), observed) + 5.5, 5)
    for (name, values), color in zip(simulated.items(), ("tab:blue", "tab:orange")):
        axis.hist(values, bins=bins, color=color, alpha=0.6, label=f"{name}: mean {values.mean():.0f}")
    axis.axvline(observed, color="black", linewidth=2, label=f"observed: {observed}")
    axis.set_xlabel(f"zeros in a simulated response ({sum(len(v) for v in simulated.values()) // len(simulated)} "
                    "simulations per model)")
    axis.set_ylabel("simulations")
    axis.set_title("Salamanders: observed zeros against each fitted model's simulations")
    axis.legend(loc="upper left", frameon=False)
    figure.tight_layout()
    return figure


def main(argv=None) -> int:
    """``python -m mixedfx.examples.zero_inflation OUT_DIR --data CSV``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--data", required=True, help="Salamanders as CSV (count, mined, site)")
    parser.add_argument("--simulations", type=int, default=N_SIMULATIONS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    numbers = run(args.out_dir, pd.read_csv(args.data), n_simulations=args.simulations, random_state=args.seed)
    print(json.dumps({k: v for k, v in numbers.items() if k != "models"}
                     | {name: {k: m[k] for k in ("mean", "low", "high", "share_at_least_observed")}
                        for name, m in numbers["models"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
