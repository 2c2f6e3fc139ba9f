"""The documentation's worked example: TFP's "Linear Mixed Effects Models" tutorial with mixedfx.

TensorFlow Probability's tutorial fits ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``
to lme4's InstEval ratings: a random 80/20 split, a fit to the 80%, the loss curve, a
trace plot of some lecturers' effects, a histogram of the held-out residuals, and
histograms of the student, lecturer and department effects; it closes by suggesting an
ordinal model for the ratings.  :func:`run` does all of it with mixedfx, writes every
figure as a PNG, and returns the numbers the documentation prints.  It adds what the
tutorial leaves out: the comparison of the fit with lme4's fit to the same training
rows, and the ordinal model (on the training rows of a random subsample of students,
to keep the documentation build short), compared with a Gaussian model fitted to the
same rows.

From the shell (progress bars and a digest of the numbers; ``numbers.json`` and the
figures land in ``OUT_DIR``)::

    python -m mixedfx.examples.tutorial OUT_DIR --lme4 tests/fixtures/lme4_insteval_train.json

The documentation build (``docs/_ext/worked_example.py``) runs the same command twice,
side by side, once with ``--part gaussian`` and once with ``--part ordinal``, and
combines the two (:func:`compare_ordinal`).  The split, the subsample and every fit
are seeded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mixedfx.examples.insteval import FORMULA, gaussian_log_density, split

__all__ = ["FIGURES", "N_ORDINAL_STUDENTS", "PARTS", "run", "compare_ordinal", "lme4_comparison", "class_shares"]

#: Students drawn at random for the ordinal model and the Gaussian model it is compared
#: with: about 6,400 of the 58,737 training rows, which keeps the documentation build
#: short (an ordinal fit is slower than a Gaussian one: ``benchmarks/RESULTS.md``).
#:
#: Examples
#: --------
#: The subsample :func:`run` draws (with its default ``random_state=0``):
#:
#: >>> import numpy as np
#: >>> import mixedfx
#: >>> from mixedfx.examples.insteval import split
#: >>> from mixedfx.examples.tutorial import N_ORDINAL_STUDENTS
#: >>> data = mixedfx.datasets.load_insteval()
#: >>> train, test = split(data, train_fraction=0.8, random_state=0)
#: >>> rng = np.random.default_rng(0)
#: >>> students = rng.choice(data["s"].cat.categories, size=N_ORDINAL_STUDENTS, replace=False)
#: >>> N_ORDINAL_STUDENTS, int(train["s"].isin(students).sum()), len(train)
#: (300, 6409, 58737)
N_ORDINAL_STUDENTS = 300

#: The PNG files :func:`run` writes, by what they show.
#:
#: Examples
#: --------
#: >>> from mixedfx.examples.tutorial import FIGURES
#: >>> FIGURES["loss"], FIGURES["trace"]
#: ('loss.png', 'trace_instructors.png')
#: >>> sorted(FIGURES)
#: ['loss', 'ordinal', 'random_effects', 'residuals', 'trace']
FIGURES = {
    "loss": "loss.png",
    "trace": "trace_instructors.png",
    "residuals": "residuals_test.png",
    "random_effects": "random_effects.png",
    "ordinal": "ordinal_classes.png",
}


#: The two halves of :func:`run`, which can run in separate processes
#: (``python -m mixedfx.examples.tutorial OUT_DIR --part gaussian``).
#:
#: Examples
#: --------
#: >>> from mixedfx.examples.tutorial import PARTS, run
#: >>> PARTS
#: ('gaussian', 'ordinal')
#: >>> run("figures", parts=("poisson",))
#: Traceback (most recent call last):
#: ...
#: ValueError: unknown parts ['poisson']; the parts are ('gaussian', 'ordinal')
PARTS = ("gaussian", "ordinal")


def run(out_dir, *, reference=None, n_ordinal_students=N_ORDINAL_STUDENTS, random_state=0, verbose=0,
        parts=PARTS) -> dict:
    """Run the worked example: fits, figures (PNG files in ``out_dir``) and numbers.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Folder for the figures (created if missing; the file names are
        :data:`FIGURES`) and ``summary.txt``, the 80% fit's ``summary()``.
    reference : dict, optional
        lme4's ML fit of the same model to the same training rows: the ``"ml"`` entry
        of ``tests/fixtures/lme4_insteval_train.json`` (``fixed_effects``,
        ``fixed_effects_se``, ``varcorr``, ``logLik``), made by
        ``tests/fixtures/make_tutorial_fixture.py`` for ``random_state=0``.  Without it
        the comparison is skipped.
    n_ordinal_students : int, default 300
        Students in the ordinal model's subsample.
    random_state : int, default 0
        Seed of the split, the subsample and every fit.
    verbose : int, default 0
        Passed to the estimators (``1`` shows progress bars).
    parts : sequence of {"gaussian", "ordinal"}, default both
        ``"gaussian"``: the tutorial's fit to 80% of the rows, its four figures, its
        comparison with ``reference``, and a Gaussian model fitted to the training
        rows of a random subsample of students.  ``"ordinal"``: the ordinal model
        fitted to the same rows.  The two parts are independent, and of about equal
        cost (the documentation build runs them in two processes, side by side); with
        both, the two models are compared on the subsample's held-out rows
        (:func:`compare_ordinal`).

    Returns
    -------
    dict
        JSON-serializable numbers: ``split``, ``subsample``, ``fit`` (the 80% fit),
        ``prediction``, ``lme4`` (the comparison table as records) and
        ``ordinal_gaussian`` from the Gaussian part, ``ordinal_fit`` from the other,
        and ``ordinal`` (:func:`compare_ordinal`) with both; ``warnings`` lists every
        warning a fit raised, ``seconds`` the wall time of each fit, ``figures`` the
        files written.

    Examples
    --------
    The fits take about a minute on two CPU cores, too long for a doctest (the lines
    marked ``+SKIP`` are not run here); the documentation build runs them
    (``docs/_ext/worked_example.py``), and ``tests/test_docs.py`` checks the page
    they make, its figures and its comparison with lme4:

    >>> import json
    >>> from mixedfx.examples.tutorial import FIGURES, run
    >>> with open("tests/fixtures/lme4_insteval_train.json") as handle:  # doctest: +SKIP
    ...     reference = json.load(handle)["ml"]
    >>> numbers = run("figures", reference=reference)  # doctest: +SKIP
    >>> sorted(numbers)  # doctest: +SKIP
    ['figures', 'fit', 'formula', 'lme4', 'ordinal', 'ordinal_fit', 'ordinal_gaussian', 'prediction', 'random_state', 'seconds', 'split', 'subsample', 'warnings']
    >>> sorted(numbers["figures"]) == sorted(FIGURES.values())  # doctest: +SKIP
    True

    An unknown part is refused before any work:

    >>> run("figures", parts=("poisson",))
    Traceback (most recent call last):
    ...
    ValueError: unknown parts ['poisson']; the parts are ('gaussian', 'ordinal')

    From a shell, one part at a time, then the comparison of the two::

        python -m mixedfx.examples.tutorial figures --part gaussian --lme4 tests/fixtures/lme4_insteval_train.json
        python -m mixedfx.examples.tutorial figures --part ordinal
        python -m mixedfx.examples.tutorial figures --combine
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; the parts are {PARTS}")
    import matplotlib.pyplot as plt

    import mixedfx
    from mixedfx.plotting import plot_objective, plot_random_effects, plot_residuals, plot_trace

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    numbers: dict = {"formula": FORMULA, "random_state": random_state, "warnings": [], "seconds": {},
                     "figures": []}

    def save(figure, key):
        figure.savefig(out / FIGURES[key], dpi=100)
        plt.close(figure)
        numbers["figures"].append(FIGURES[key])

    # [split]
    data = mixedfx.datasets.load_insteval()
    train, test = split(data, train_fraction=0.8, random_state=random_state)
    # [/split]
    numbers["split"] = {
        "n_rows": len(data), "n_train": len(train), "n_test": len(test),
        "unseen_students": int((~test["s"].isin(set(train["s"]))).sum()),
        "unseen_instructors": int((~test["d"].isin(set(train["d"]))).sum()),
    }
    # [subsample]
    rng = np.random.default_rng(random_state)
    students = rng.choice(data["s"].cat.categories, size=n_ordinal_students, replace=False)
    sub_train = train[train["s"].isin(students)]
    sub_test = test[test["s"].isin(students)]
    # [/subsample]
    numbers["subsample"] = {"n_students": int(n_ordinal_students), "n_train": len(sub_train),
                            "n_test": len(sub_test), "y_test": sub_test["y"].astype(int).tolist()}

    if "gaussian" in parts:
        with _recorded_warnings(numbers, "80% fit"):
            # [fit]
            model = mixedfx.MixedEffectsRegressor(FORMULA, random_state=random_state, verbose=verbose)
            model.fit(train)
            # [/fit]
        summary = io.StringIO()
        model.summary(file=summary)
        (out / "summary.txt").write_text(summary.getvalue())
        numbers["fit"] = _fit_record(model)
        numbers["fit"]["variance_components"] = model.variance_components_[["group", "sdcor"]].to_dict("records")
        numbers["fit"]["fixed_effects"] = model.fixed_effects_.to_dict()
        numbers["fit"]["fit_summary_table"] = model.fit_summary_.table().reset_index().to_dict("records")

        # [loss]
        ax = plot_objective(model)
        # [/loss]
        save(ax.figure, "loss")

        # [trace]
        instructors = model.random_effects_["d"].index[:5]
        ax = plot_trace(model, "d", levels=instructors)
        # [/trace]
        save(ax.figure, "trace")

        # [residuals]
        ax = plot_residuals(model, test)
        predicted = model.predict(test)  # unseen students and lecturers: zero random effect
        rmse = np.sqrt(np.mean((test["y"] - predicted) ** 2))
        population = model.predict(test, include_random=False)  # the fixed effects alone
        rmse_population = np.sqrt(np.mean((test["y"] - population) ** 2))
        # [/residuals]
        save(ax.figure, "residuals")
        numbers["prediction"] = {"rmse": float(rmse), "rmse_population": float(rmse_population),
                                 "residual_sd": float(np.std(test["y"] - predicted))}

        # [random_effects]
        axes = plot_random_effects(model)
        # [/random_effects]
        save(axes[0].figure, "random_effects")

        if reference is not None:
            # [lme4]
            table = lme4_comparison(model, reference)  # lme4 fitted to the same training rows
            # [/lme4]
            numbers["lme4"] = {"table": table.reset_index().to_dict("records")}

        with _recorded_warnings(numbers, "Gaussian fit to the subsample"):
            # [ordinal_gaussian]
            gaussian = mixedfx.MixedEffectsRegressor(FORMULA, random_state=random_state, verbose=verbose)
            gaussian.fit(sub_train)
            gaussian_mean = gaussian.predict(sub_test)
            sigma = gaussian.variance_components_.set_index("group").loc["Residual", "sdcor"]
            # [/ordinal_gaussian]
        numbers["ordinal_gaussian"] = {"fit": _fit_record(gaussian), "mean": gaussian_mean.tolist(),
                                       "sigma": float(sigma)}

    if "ordinal" in parts:
        with _recorded_warnings(numbers, "ordinal fit"):
            # [ordinal]
            ordinal = mixedfx.MixedEffectsClassifier(FORMULA, family="ordinal", random_state=random_state,
                                                     verbose=verbose)
            ordinal.fit(sub_train)
            proba = ordinal.predict_proba(sub_test)  # one column per rating, 1 to 5
            # [/ordinal]
        numbers["ordinal_fit"] = {
            "fit": _fit_record(ordinal), "classes": [int(c) for c in ordinal.classes_],
            "cutpoints": {str(k): float(v) for k, v in ordinal.cutpoints_.items()},
            "fixed_effects": {str(k): float(v) for k, v in ordinal.fixed_effects_.items()},
            "variance_components": ordinal.variance_components_[["group", "sdcor"]].to_dict("records"),
            "proba": proba.tolist(), "predicted": [int(c) for c in ordinal.predict(sub_test)],
        }

    if "ordinal_gaussian" in numbers and "ordinal_fit" in numbers:
        numbers["ordinal"] = compare_ordinal(numbers, out)
        numbers["figures"].append(FIGURES["ordinal"])
    return numbers


def compare_ordinal(numbers: dict, out_dir) -> dict:
    """Compare the ordinal and the Gaussian model on the subsample's held-out ratings.

    Run by :func:`run` when it runs both parts; when the parts run in two processes,
    their numbers are merged and passed here (the documentation build does that).
    Writes the figure ``FIGURES["ordinal"]`` into ``out_dir``.

    Parameters
    ----------
    numbers : dict
        With ``subsample`` (``y_test``: the held-out ratings, and the subsample's
        sizes), ``ordinal_fit`` (the ordinal model's ``classes``, ``proba`` and
        ``predicted`` for those rows, its fit record and estimates) and
        ``ordinal_gaussian`` (the Gaussian model's predicted ``mean`` and residual
        ``sigma``, its fit record), as :func:`run` records them.
    out_dir : str or pathlib.Path
        Folder for the figure.

    Returns
    -------
    dict
        The subsample's sizes, both fit records, the ordinal model's estimates, the
        mean held-out log predictive density of each model (``lpd_ordinal``,
        ``lpd_gaussian``: the Gaussian's on each rating's unit interval), the share
        of exactly predicted ratings (``accuracy_ordinal``; ``accuracy_gaussian``
        rounds the Gaussian mean) and ``class_shares`` (see :func:`class_shares`).

    Examples
    --------
    Four held-out ratings on a scale of three:

    >>> import tempfile
    >>> from mixedfx.examples.tutorial import compare_ordinal
    >>> numbers = {
    ...     "subsample": {"n_students": 2, "n_train": 10, "n_test": 4, "y_test": [1, 2, 2, 3]},
    ...     "ordinal_fit": {"fit": {}, "classes": [1, 2, 3], "cutpoints": {}, "fixed_effects": {},
    ...                     "variance_components": [], "predicted": [1, 2, 2, 3],
    ...                     "proba": [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7]]},
    ...     "ordinal_gaussian": {"fit": {}, "mean": [1.4, 2.2, 2.6, 2.6], "sigma": 0.6}}
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     result = compare_ordinal(numbers, folder)
    >>> round(result["lpd_ordinal"], 3), round(result["lpd_gaussian"], 3)
    (-0.518, -0.685)
    >>> result["accuracy_ordinal"], result["accuracy_gaussian"]
    (1.0, 0.75)
    """
    subsample, ordinal, gaussian = numbers["subsample"], numbers["ordinal_fit"], numbers["ordinal_gaussian"]
    truth = np.asarray(subsample["y_test"])
    classes = np.asarray(ordinal["classes"])
    proba = np.asarray(ordinal["proba"], dtype=float)
    mean, sigma = np.asarray(gaussian["mean"], dtype=float), float(gaussian["sigma"])
    column = np.searchsorted(classes, truth)
    lpd_ordinal = float(np.mean(np.log(np.maximum(proba[np.arange(len(truth)), column], 1e-300))))
    lpd_gaussian = float(np.mean(gaussian_log_density(truth, mean, sigma)))
    shares = class_shares(truth, proba, classes, gaussian_mean=mean, sigma=sigma)
    import matplotlib.pyplot as plt

    figure = _class_share_figure(shares)
    figure.savefig(Path(out_dir) / FIGURES["ordinal"], dpi=100)
    plt.close(figure)
    return {
        "n_students": subsample["n_students"], "n_train": subsample["n_train"], "n_test": subsample["n_test"],
        "fit": ordinal["fit"], "gaussian_fit": gaussian["fit"],
        "cutpoints": ordinal["cutpoints"], "fixed_effects": ordinal["fixed_effects"],
        "variance_components": ordinal["variance_components"],
        "lpd_ordinal": lpd_ordinal, "lpd_gaussian": lpd_gaussian,
        "accuracy_ordinal": float(np.mean(np.asarray(ordinal["predicted"]) == truth)),
        "accuracy_gaussian": float(np.mean(np.clip(np.round(mean), classes.min(), classes.max()) == truth)),
        "class_shares": shares.reset_index().to_dict("records"),
    }


def lme4_comparison(model, reference) -> pd.DataFrame:
    """Estimates of a fitted Gaussian model next to lme4's.

    Parameters
    ----------
    model : MixedEffectsRegressor
        Fitted by ML to the data lme4 was fitted to.
    reference : dict
        lme4's fit in the layout of ``tests/fixtures/lme4_*_ml.json``.

    Returns
    -------
    pandas.DataFrame
        Indexed by parameter in lme4's names (fixed effects, ``sd(<group>)``,
        ``sigma``, ``logLik``); columns ``mixedfx``, ``lme4``, ``difference``
        (mixedfx minus lme4) and ``relative`` (the difference in lme4 standard errors
        for a fixed effect, in percent for a standard deviation, empty for logLik).

    Examples
    --------
    >>> import mixedfx
    >>> from mixedfx.examples.tutorial import lme4_comparison
    >>> reference = {  # made-up values in lme4's layout
    ...     "fixed_effects": {"(Intercept)": 1.0, "x": 0.5},
    ...     "fixed_effects_se": {"(Intercept)": 0.15, "x": 0.04},
    ...     "varcorr": [{"grp": "g", "var1": "(Intercept)", "var2": None, "sdcor": 0.8},
    ...                 {"grp": "Residual", "var1": None, "var2": None, "sdcor": 1.0}],
    ...     "logLik": -900.0}
    >>> lme4_comparison(model, reference).index.tolist()
    ['(Intercept)', 'x', 'sd(g)', 'sigma', 'logLik']
    """
    rows = []
    for name, value in reference["fixed_effects"].items():
        ours = float(model.fixed_effects_[name.replace("(Intercept)", "Intercept")])
        se = reference["fixed_effects_se"][name]
        rows.append((name, ours, value, ours - value, (ours - value) / se))
    sds = model.variance_components_
    for entry in reference["varcorr"]:
        if entry.get("var2") not in (None, {}):
            continue  # correlations: not in this model
        if entry["grp"] == "Residual":
            name, ours = "sigma", float(sds.loc[sds["group"] == "Residual", "sdcor"].iloc[0])
        else:
            mask = (sds["group"] == entry["grp"]) & (sds["var1"] == entry["var1"]) & sds["var2"].isna()
            name = f"sd({entry['grp']})" if entry["var1"] == "(Intercept)" else f"sd({entry['grp']}, {entry['var1']})"
            ours = float(sds.loc[mask, "sdcor"].iloc[0])
        difference = ours - entry["sdcor"]
        rows.append((name, ours, entry["sdcor"], difference, 100.0 * difference / entry["sdcor"]))
    log_likelihood = model.log_likelihood_
    rows.append(("logLik", float(log_likelihood), reference["logLik"], float(log_likelihood) - reference["logLik"],
                 np.nan))
    frame = pd.DataFrame(rows, columns=["parameter", "mixedfx", "lme4", "difference", "relative"])
    return frame.set_index("parameter")


def class_shares(y, proba, classes, *, gaussian_mean=None, sigma=None) -> pd.DataFrame:
    """Observed share of each rating next to an ordinal model's mean predicted probability.

    Parameters
    ----------
    y : array-like of shape (n_rows,)
        Observed ratings.
    proba : array-like of shape (n_rows, n_classes)
        An ordinal model's ``predict_proba`` for the same rows.
    classes : sequence
        The ratings, in the order of ``proba``'s columns (the model's ``classes_``).
    gaussian_mean, sigma : array-like of shape (n_rows,) and float, optional
        A Gaussian model's predicted means for the rows and its residual sd: adds the
        column ``gaussian``, the mean probability it puts on each rating's unit
        interval (see :func:`mixedfx.examples.insteval.gaussian_log_density`).

    Returns
    -------
    pandas.DataFrame
        One row per class (index ``rating``); columns ``observed``, ``ordinal`` (and
        ``gaussian``).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.examples.tutorial import class_shares
    >>> y = np.array([1, 2, 2, 3])
    >>> proba = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7]])
    >>> class_shares(y, proba, [1, 2, 3]).round(2)  # doctest: +NORMALIZE_WHITESPACE
            observed  ordinal
    rating
    1           0.25     0.25
    2           0.50     0.40
    3           0.25     0.35
    """
    truth = np.asarray(y)
    frame = pd.DataFrame({
        "observed": [float(np.mean(truth == c)) for c in classes],
        "ordinal": np.asarray(proba, dtype=float).mean(axis=0),
    }, index=pd.Index([int(c) for c in classes], name="rating"))
    if gaussian_mean is not None:
        mean = np.asarray(gaussian_mean, dtype=float)
        frame["gaussian"] = [
            float(np.mean(np.exp(gaussian_log_density(np.full(len(mean), c), mean, sigma)))) for c in classes
        ]
    return frame


def _class_share_figure(shares: pd.DataFrame):
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    width = 0.8 / len(shares.columns)
    positions = np.arange(len(shares))
    labels = {"observed": "observed", "ordinal": "ordinal model", "gaussian": "Gaussian model"}
    for k, column in enumerate(shares.columns):
        ax.bar(positions + (k - (len(shares.columns) - 1) / 2) * width, shares[column], width=width,
               label=labels.get(column, column), color=f"C{k}")
    ax.set_xticks(positions, [str(c) for c in shares.index])
    ax.set_xlabel("rating")
    ax.set_ylabel("share of held-out rows")
    ax.set_title("Held-out ratings: observed shares and mean predicted probabilities")
    ax.legend()
    return figure


def _fit_record(model) -> dict:
    summary = model.fit_summary_
    return {
        "n_obs": int(model.n_obs_), "n_iter": int(summary.n_iter), "n_averaged": int(summary.n_averaged),
        "converged": bool(summary.converged), "elapsed_seconds": float(summary.elapsed_seconds),
        "first_call_seconds": float(summary.first_call_seconds), "acceptance_rate": summary.acceptance_rate,
        "rhat": float(summary.rhat), "rhat_noise": float(getattr(summary, "rhat_noise", float("nan"))),
        "rhat_max": float(summary.rhat_max), "ess_min": float(summary.ess_min),
        "at_boundary": list(summary.at_boundary),
        "log_likelihood": None if model.log_likelihood_ is None else float(model.log_likelihood_),
        "log_likelihood_se": None if model.log_likelihood_se_ is None else float(model.log_likelihood_se_),
    }


@contextlib.contextmanager
def _recorded_warnings(numbers: dict, what: str):
    """Record mixedfx's warnings raised inside the block into ``numbers["warnings"]``
    (instead of printing them: the documentation shows them) and its wall time into
    ``numbers["seconds"][what]``."""
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = set()
    for item in caught:
        key = (item.category.__name__, str(item.message))
        if key not in seen and item.category.__module__.startswith("mixedfx"):
            seen.add(key)
            numbers["warnings"].append({"fit": what, "category": key[0], "message": key[1]})
    numbers["seconds"][what] = time.perf_counter() - started


def _combine(out_dir) -> dict:
    """Merge the two parts' numbers (``numbers-gaussian.json``, ``numbers-ordinal.json``),
    compare the ordinal and the Gaussian model (:func:`compare_ordinal`), and leave out
    the per-row arrays the comparison needed."""
    out = Path(out_dir)
    numbers: dict = {"warnings": [], "seconds": {}, "figures": []}
    for part in PARTS:
        piece = json.loads((out / f"numbers-{part}.json").read_text())
        numbers["warnings"] += piece.pop("warnings")
        numbers["seconds"].update(piece.pop("seconds"))
        numbers["figures"] += piece.pop("figures")
        numbers.update(piece)
    numbers["ordinal"] = compare_ordinal(numbers, out)
    numbers["figures"].append(FIGURES["ordinal"])
    return _without_rows(numbers)


def _without_rows(numbers: dict) -> dict:
    """``numbers`` without the held-out rows' values and predictions (kept in the parts' files)."""
    slim = dict(numbers)
    for key, fields in (("subsample", ("y_test",)), ("ordinal_fit", ("proba", "predicted")),
                        ("ordinal_gaussian", ("mean",))):
        if key in slim:
            slim[key] = {k: v for k, v in slim[key].items() if k not in fields}
    return slim


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder for the figures and numbers.json")
    parser.add_argument("--lme4", help="lme4's fit to the training rows as JSON "
                                       "(tests/fixtures/lme4_insteval_train.json; its 'ml' entry is used)")
    parser.add_argument("--ordinal-students", type=int, default=N_ORDINAL_STUDENTS)
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--part", choices=PARTS, action="append",
                        help="run only this part (repeatable); default both")
    parser.add_argument("--combine", action="store_true",
                        help="fit nothing: combine the numbers the two parts wrote into OUT_DIR into numbers.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, no printed summary")
    args = parser.parse_args(argv)
    if args.combine:
        numbers = _combine(args.out_dir)
        name = "numbers.json"
    else:
        reference = None
        if args.lme4:
            with open(args.lme4) as handle:
                reference = json.load(handle)
            reference = reference.get("ml", reference)
        parts = tuple(args.part or PARTS)
        numbers = run(args.out_dir, reference=reference, n_ordinal_students=args.ordinal_students,
                      random_state=args.random_state, verbose=0 if args.quiet else 1, parts=parts)
        if set(parts) == set(PARTS):
            name, numbers = "numbers.json", _without_rows(numbers)
        else:
            name = f"numbers-{'-'.join(parts)}.json"
    with open(Path(args.out_dir) / name, "w") as handle:
        json.dump(numbers, handle, indent=2, default=float)
    if not args.quiet:
        print(json.dumps({k: v for k, v in numbers.items() if k in ("prediction", "lme4", "ordinal", "warnings")},
                         indent=2, default=float))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
