"""The TFP "Linear Mixed Effects Models" tutorial, done with mixedfx.

Fits ``y ~ service + (1 | s) + (1 | d) + (1 | dept)`` to a random 80% of InstEval
(the tutorial's split), predicts the held-out 20% (students and lecturers the fit never
saw get a zero random effect, ``new_levels="population"``), and compares the held-out
RMSE with a fixed-effects-only model.  Then, as the tutorial suggests, it fits the
ratings as what they are, ordered categories (a cumulative-logit model), and compares
the two models' held-out log predictive density (the Gaussian's on the rating's unit
interval).  Run it with::

    python -m mixedfx.examples.insteval
"""

from __future__ import annotations

import argparse
import time

import numpy as np

FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept)"

#: lme4 1.1-31 ML estimates on the full data (tests/fixtures/lme4_insteval_ml.json).
LME4_FULL_DATA = {"sd(s)": 0.325528, "sd(d)": 0.514983, "sd(dept)": 0.078519, "sigma": 1.177493}


def split(data, *, train_fraction=0.8, random_state=0):
    """Random train/test split of the rows, as the TFP tutorial's ``sample(frac=0.8)``.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.examples.insteval import split
    >>> frame = pd.DataFrame({"y": range(10)})
    >>> train, test = split(frame, train_fraction=0.8, random_state=0)
    >>> len(train), len(test), sorted(train["y"].tolist() + test["y"].tolist()) == list(range(10))
    (8, 2, True)
    """
    rng = np.random.default_rng(random_state)
    in_train = rng.permutation(len(data)) < int(round(train_fraction * len(data)))
    return data[in_train], data[~in_train]


def gaussian_log_density(y, mean, sigma):
    """Log probability a Normal(mean, sigma) puts on each rating's unit interval
    (``(-inf, 1.5]`` for 1, ``[4.5, inf)`` for 5): comparable with an ordinal model's."""
    from scipy import stats

    upper = np.where(y >= 5, np.inf, y + 0.5)
    lower = np.where(y <= 1, -np.inf, y - 0.5)
    mass = stats.norm.cdf((upper - mean) / sigma) - stats.norm.cdf((lower - mean) / sigma)
    return np.log(np.maximum(mass, 1e-300))


def run(*, random_state=0, verbose=1, ordinal=True) -> dict:
    """Fit, predict and compare; returns the numbers it prints.

    Returns
    -------
    dict
        ``rmse_mixed``, ``rmse_fixed_only``, ``unseen_students``,
        ``unseen_instructors``, ``fit_seconds``, the fitted ``model``, and with
        ``ordinal=True`` the mean held-out log predictive densities ``lpd_gaussian``
        and ``lpd_ordinal`` and the ``ordinal_model``.

    Examples
    --------
    The fits take a minute or more on two CPU cores, too long for a doctest (the
    lines marked ``+SKIP`` are not run here); ``tests/test_insteval.py`` runs them
    and checks what is shown:

    >>> from mixedfx.examples.insteval import FORMULA, run
    >>> FORMULA
    'y ~ service + (1 | s) + (1 | d) + (1 | dept)'
    >>> result = run(random_state=0, verbose=0)  # doctest: +SKIP
    >>> result["rmse_mixed"] < result["rmse_fixed_only"]  # doctest: +SKIP
    True
    >>> result["lpd_ordinal"] > result["lpd_gaussian"]  # doctest: +SKIP
    True
    """
    import mixedfx

    data = mixedfx.datasets.load_insteval()
    train, test = split(data, random_state=random_state)
    started = time.perf_counter()
    model = mixedfx.MixedEffectsRegressor(FORMULA, random_state=random_state, verbose=verbose).fit(train)
    fit_seconds = time.perf_counter() - started
    predicted = model.predict(test)  # new_levels="population": unseen levels get a zero effect
    rmse_mixed = float(np.sqrt(np.mean((test["y"].to_numpy() - predicted) ** 2)))

    # Fixed effects only: least squares of y on [1, service] over the training rows.
    design = np.column_stack([np.ones(len(train)), train["service"].to_numpy()])
    coef, *_ = np.linalg.lstsq(design, train["y"].to_numpy(dtype=float), rcond=None)
    baseline = coef[0] + coef[1] * test["service"].to_numpy()
    rmse_fixed = float(np.sqrt(np.mean((test["y"].to_numpy() - baseline) ** 2)))

    seen_students = set(train["s"])
    seen_instructors = set(train["d"])
    result = {
        "rmse_mixed": rmse_mixed,
        "rmse_fixed_only": rmse_fixed,
        "unseen_students": int((~test["s"].isin(seen_students)).sum()),
        "unseen_instructors": int((~test["d"].isin(seen_instructors)).sum()),
        "fit_seconds": fit_seconds,
        "model": model,
    }
    if verbose:
        model.summary()
        print()
        print(f"train rows {len(train)}, test rows {len(test)}; fit took {fit_seconds:.1f} s")
        print(
            f"test rows with a student / lecturer not seen in training: "
            f"{result['unseen_students']} / {result['unseen_instructors']} (predicted with a zero random effect)"
        )
        print(f"held-out RMSE, mixed model:        {rmse_mixed:.4f}")
        print(f"held-out RMSE, fixed effects only: {rmse_fixed:.4f}")
        sds = model.variance_components_.set_index("group")["sdcor"]
        print("standard deviations (80% fit) vs lme4 on the full data:")
        for name, reference in LME4_FULL_DATA.items():
            key = "Residual" if name == "sigma" else name[3:-1]
            print(f"  {name:9s} {sds[key]:.4f}   lme4 {reference:.4f}")
    if ordinal:
        started = time.perf_counter()
        ordinal_model = mixedfx.MixedEffectsClassifier(
            FORMULA, family="ordinal", random_state=random_state, verbose=verbose
        ).fit(train)
        ordinal_seconds = time.perf_counter() - started
        truth = test["y"].to_numpy()
        proba = ordinal_model.predict_proba(test)
        column = np.searchsorted(ordinal_model.classes_, truth)
        lpd_ordinal = float(np.mean(np.log(np.maximum(proba[np.arange(len(test)), column], 1e-300))))
        sigma = float(model.variance_components_.set_index("group")["sdcor"]["Residual"])
        lpd_gaussian = float(np.mean(gaussian_log_density(truth, predicted, sigma)))
        result.update(lpd_ordinal=lpd_ordinal, lpd_gaussian=lpd_gaussian, ordinal_model=ordinal_model)
        if verbose:
            print()
            print(f"ordinal (cumulative logit) fit took {ordinal_seconds:.1f} s; cutpoints "
                  + ", ".join(f"{k} {v:.3f}" for k, v in ordinal_model.cutpoints_.items()))
            print(f"held-out log predictive density per rating, Gaussian: {lpd_gaussian:.4f}")
            print(f"held-out log predictive density per rating, ordinal:  {lpd_ordinal:.4f}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--no-ordinal", action="store_true", help="skip the ordinal model")
    args = parser.parse_args(argv)
    run(random_state=args.random_state, verbose=0 if args.quiet else 1, ordinal=not args.no_ordinal)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
