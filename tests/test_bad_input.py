"""Bad input fails loudly and clearly; numerical faults are recovered or refused, never NaN.

Each case below names what it feeds in and the message it expects.  The table
``BAD_INPUT`` holds the cases that must raise before any compilation: formula errors,
response errors, missing values under ``missing="raise"``, empty and too-small data, a
grouping factor with a level per row, infinite, constant and out-of-range values, and
wrong types.  The tests after it fit the small shared model (one compiled program, see
``conftest.small_fit``) to show what is accepted, and how: rows with missing values
dropped as lme4's ``na.omit`` does, polars and pandas nullable dtypes converted,
unused categories dropped as R's ``model.frame`` does, huge magnitudes fitted (or
warned about, as lme4 warns), and the user's DataFrame never changed.

Elsewhere in the suite, and not repeated here:

* a singular fit converges to the boundary and is flagged, with finite outputs:
  ``test_results.py::test_singular_fit_is_detected_and_reported``;
* a rank-deficient fixed design drops its aliased columns with a warning:
  ``test_fixed_side.py::test_rank_deficient_fit_drops_aliased_columns_and_says_so``;
* the same ``random_state`` gives the same estimates bit for bit, and another stays
  within Monte Carlo error:
  ``test_estimator.py::test_same_seed_same_estimates_other_seed_within_monte_carlo_error``;
* invalid estimator parameters: ``test_estimator.py::test_invalid_parameters_raise_in_fit``.
"""

from __future__ import annotations

import io
import json
import re
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest
import scipy.sparse
from conftest import FIXTURES, SMALL_FORMULA, fitted_sds, small_settings

import mixedfx
from mixedfx import (
    DataError,
    DataWarning,
    FitError,
    FormulaError,
    MixedEffectsClassifier,
    MixedEffectsRegressor,
    MixedFXError,
    NewLevelError,
    ParameterError,
)
from mixedfx._tf import tf
from mixedfx.inference import FixedIterations, MCEMOptions, fit_mcem
from mixedfx.inference.estep import hmc_e_step


def _regressor(formula=SMALL_FORMULA, **params):
    return MixedEffectsRegressor(formula, **{"verbose": 0, **params})


def _classifier(formula, **params):
    return MixedEffectsClassifier(formula, **{"verbose": 0, **params})


def _at(column, row, value):
    """A transform that sets one cell (on a copy)."""
    def transform(frame):
        frame = frame.copy()
        if isinstance(value, str):
            frame[column] = frame[column].astype(object)
        elif isinstance(value, float):
            frame[column] = frame[column].astype(np.float64)
        frame.loc[row, column] = value
        return frame
    return transform


# (id, estimator, transform of the small frame, y, exception, message (literal), formula position or None)
BAD_INPUT = [
    # -- formula errors -------------------------------------------------------------------
    ("unbalanced parenthesis", _regressor("y ~ x + (1 | g"), None, None, FormulaError,
     "unbalanced '(': it is never closed at position 8", 8),
    ("unbalanced closing parenthesis", _regressor("y ~ x) + (1 | g)"), None, None, FormulaError,
     "unbalanced ')': nothing to close at position 5", 5),
    ("empty bar", _regressor("y ~ x + ( | g)"), None, None, FormulaError,
     "empty left side of the bar: write '(1 | g)' for a random intercept at position 10", 10),
    ("missing tilde", _regressor("y + x + (1 | g)"), None, None, FormulaError,
     "missing '~': a formula reads 'response ~ terms'", None),
    ("unknown function", _regressor("y ~ foo(x) + (1 | g)"), None, None, FormulaError,
     "unknown function 'foo' in 'foo(x)' (formulas can call abs, bs, C,", 4),
    ("misspelt function", _regressor("y ~ lgo(x) + (1 | g)"), None, None, FormulaError,
     "unknown function 'lgo' in 'lgo(x)'; did you mean 'log'?", 4),
    ("unknown numpy function in a slope", _regressor("y ~ x + (np.lgo(x) | g)"), None, None, FormulaError,
     "unknown function 'np.lgo' in 'np.lgo(x)'; did you mean 'log'?", 9),
    ("unknown function in the response", _regressor("foo(y) ~ x + (1 | g)"), None, None, FormulaError,
     "unknown function 'foo' in 'foo(y)'", 0),
    ("unknown fixed column", _regressor("y ~ xx + (1 | g)"), None, None, DataError,
     "column 'xx' used in the formula 'xx' is not in the data. Did you mean 'x'?", None),
    ("unknown grouping column", _regressor("y ~ x + (1 | gg)"), None, None, DataError,
     "grouping column 'gg' in term '(1 | gg)' is not in the data. Did you mean 'g'?", None),
    ("unknown response column", _regressor("yy ~ x + (1 | g)"), None, None, DataError,
     "the response column 'yy' is not in the data. Did you mean 'y'?", None),
    # -- response errors -----------------------------------------------------------------
    ("non-numeric gaussian response", _regressor("f ~ x + (1 | g)"), None, None, DataError,
     "the response 'f' must be numeric for the gaussian family, got dtype", None),
    ("non-numeric poisson response", _regressor("f ~ x + (1 | g)", family="poisson"), None, None, DataError,
     "the response 'f' must be numeric for the poisson family, got dtype", None),
    ("negative poisson response", _regressor("count ~ x + (1 | g)", family="poisson"), _at("count", 7, -1),
     None, DataError, "the poisson response 'count' must be non-negative integer counts; found -1.0", None),
    ("non-integer poisson response", _regressor("count ~ x + (1 | g)", family="poisson"), _at("count", 7, 2.5),
     None, DataError, "the poisson response 'count' must be non-negative integer counts; found 2.5", None),
    ("bernoulli response of three classes", _classifier("f ~ x + (1 | g)"), _at("f", 7, "c"), None, DataError,
     "a bernoulli response needs exactly 2 classes, found 3 (a, b, c); use family='ordinal' for ordered categories",
     None),
    ("continuous response to a classifier", _classifier("y ~ x + (1 | g)"), None, None, DataError,
     "Unknown label type: continuous. A bernoulli response needs exactly 2 classes, found 120 distinct numbers",
     None),
    ("ordinal response of two classes", _classifier("f ~ x + (1 | g)", family="ordinal"), None, None, DataError,
     "an ordinal response needs at least 3 classes, found 2 (a, b); use family='bernoulli' for two", None),
    # -- missing values under missing="raise" ---------------------------------------------
    ("missing values, missing='raise'", _regressor(missing="raise"),
     lambda d: d.assign(y=d["y"].where(d.index != 3), x=d["x"].where(d.index != 4),
                        g=d["g"].where(d.index != 5)),
     None, DataError,
     "3 of 120 rows have missing values (NaN/None) in the columns the model uses ('y': 1, 'x': 1, 'g': 1); "
     "drop or impute them, or use missing='drop'", None),
    ("missing y given to fit, missing='raise'", _regressor("~ x + f + (1 | g)", missing="raise"), None,
     np.where(np.arange(120) == 9, np.nan, 1.0), DataError,
     "1 of 120 rows have missing values (NaN/None) in the columns the model uses ('y': 1)", None),
    ("every row missing", _regressor(), lambda d: d.assign(x=np.nan), None, DataError,
     "every row has a missing value in the columns the model uses ('x': 120); nothing is left to fit", None),
    # -- empty data, too few rows ---------------------------------------------------------
    ("empty data", _regressor(), lambda d: d.iloc[:0], None, DataError,
     "X has 0 sample(s) (shape=(0, 5)) while a minimum of 2 is required", None),
    ("fewer rows than parameters", _regressor(), lambda d: d.iloc[[0, 1, 10, 11]].assign(f=["a", "b", "a", "b"]),
     None, DataError,
     "4 rows are too few to estimate 5 parameters (3 fixed effects, 1 variance parameters, 1 of the family)", None),
    ("a level per row (gaussian)", _regressor("y ~ x + (1 | id)"), lambda d: d.assign(id=np.arange(len(d))), None,
     DataError, "number of levels of each grouping factor must be < number of observations (problems: id)", None),
    # -- infinite, constant, out-of-range values ------------------------------------------
    ("infinite predictor", _regressor(), _at("x", 5, np.inf), None, DataError,
     "column 'x' of 'x + f' has 1 non-finite value(s) (inf or NaN; e.g. inf in row 5)", None),
    ("log of zero", _regressor("y ~ np.log(t) + (1 | g)"), lambda d: d.assign(t=np.where(d.index == 2, 0.0, 1.5)),
     None, DataError, "column 'np.log(t)' of 'np.log(t)' has 1 non-finite value(s) (inf or NaN; e.g. -inf in row 2)",
     None),
    ("infinite response", _regressor(), _at("y", 6, -np.inf), None, DataError,
     "the response 'y' has 1 non-finite value(s) (NaN or inf)", None),
    ("infinite grouping value", _regressor("y ~ x + (1 | h)"), lambda d: d.assign(h=np.where(d.index == 1, np.inf,
                                                                                           d.index % 7 * 1.0)),
     None, DataError, "grouping column 'h' has 1 infinite value(s); a level must be a label or a finite number", None),
    ("constant response", _regressor(), lambda d: d.assign(y=3.0), None, DataError,
     "Response is constant: every value of 'y' is 3, so there is no variation for the model to explain", None),
    ("all-zero counts", _regressor("count ~ x + (1 | g)", family="poisson"), lambda d: d.assign(count=0), None,
     DataError, "Response is constant: every value of 'count' is 0", None),
    ("response beyond float64's range", _regressor(), lambda d: d.assign(y=d["y"] * 1e200), None, DataError,
     "the response 'y' has standard deviation 1.49e+200, outside the 1e-50 to 1e+50", None),
    ("response below float64's range", _regressor(), lambda d: d.assign(y=d["y"] * 1e-200), None, DataError,
     "outside the 1e-50 to 1e+50 that a float64 fit handles; rescale it", None),
    # -- wrong types ----------------------------------------------------------------------
    ("numpy array with a formula", _regressor(), lambda d: d.to_numpy(), None, DataError,
     "X must be a pandas DataFrame (or a polars DataFrame, a pyarrow Table or Parquet file(s)) with the columns "
     "the formula names, got ndarray", None),
    ("sparse matrix", _regressor(), lambda d: scipy.sparse.csr_matrix(d[["x", "y"]].to_numpy()), None, DataError,
     "X is a sparse matrix; sparse input is not supported", None),
    ("polars LazyFrame", _regressor(), lambda d: pl.from_pandas(d).lazy(), None, DataError,
     "X is a polars LazyFrame; collect() it first", None),
    ("duplicated column name", _regressor(), lambda d: pd.concat([d, d[["x"]]], axis=1), None, DataError,
     "X has more than one column named 'x'", None),
    ("datetime predictor", _regressor("y ~ t + (1 | g)"), lambda d: d.assign(t=pd.date_range("2020", periods=len(d))),
     None, DataError, "column 't' has dtype datetime64[", None),
    ("complex predictor", _regressor(), lambda d: d.assign(x=d["x"] + 1j), None, DataError,
     "Complex data not supported: column 'x' holds complex numbers", None),
    ("unhashable grouping value", _regressor(), lambda d: d.assign(g=[{"a": 1}] + list(d["g"].iloc[1:])), None,
     DataError, "grouping column 'g' holds a dict ({'a': 1}); a level must be a label (a string or a number)", None),
    ("y of the wrong length", _regressor("~ x + f + (1 | g)"), None, np.ones(3), DataError,
     "y must be one-dimensional with 120 values, got shape (3,)", None),
]


@pytest.mark.parametrize("name, estimator, transform, y, error, message, position", BAD_INPUT,
                         ids=[case[0] for case in BAD_INPUT])
def test_bad_input_raises_a_mixedfx_error_that_names_the_fault(small_frame, name, estimator, transform, y, error,
                                                               message, position):
    data = small_frame if transform is None else transform(small_frame)
    with pytest.raises(error, match=re.escape(message)) as caught:
        estimator.fit(data, y)
    assert isinstance(caught.value, MixedFXError) and isinstance(caught.value, (ValueError, TypeError))
    if position is not None:
        assert caught.value.position == position
        assert str(caught.value).splitlines()[-1] == " " * (4 + position) + "^"


# -- missing values: lme4's na.omit, and predictions that stay aligned with their rows -----------------------------


def _with_missing(frame):
    """The small frame with three more rows, each with one missing value, and a NaN in a
    column the formula does not use (that row is kept)."""
    extra = frame.iloc[[0, 1, 2]].copy()
    extra.index = [1000, 1001, 1002]
    extra.loc[1000, "y"] = np.nan
    extra.loc[1001, "x"] = np.nan
    extra.loc[1002, "g"] = None
    out = pd.concat([extra.iloc[:2], frame.iloc[:60], extra.iloc[2:], frame.iloc[60:]])
    out["unused"] = np.where(np.arange(len(out)) == 10, np.nan, 1.0)
    return out


def test_missing_rows_are_dropped_like_na_omit(small_frame, small_fit):
    data = _with_missing(small_frame)
    with pytest.warns(DataWarning, match=re.escape(
            "dropped 3 of 123 rows with missing values ('y': 1, 'x': 1, 'g': 1), as lme4's na.omit does; "
            "the fit uses the other 120")):
        model = _regressor(**small_settings()).fit(data)
    assert model.n_obs_ == 120
    assert model.dropped_rows_.tolist() == [1000, 1001, 1002]
    # The same rows, the same seed: the same fit, bit for bit.
    np.testing.assert_array_equal(model.fit_summary_.trace, small_fit.fit_summary_.trace)
    np.testing.assert_array_equal(model.fixed_effects_, small_fit.fixed_effects_)
    assert small_fit.dropped_rows_.tolist() == []


def test_missing_response_given_as_y_is_dropped(small_frame, small_fit):
    y = small_frame["y"].to_numpy().copy()
    data = pd.concat([small_frame, small_frame.iloc[[4]]], ignore_index=True)
    y = np.append(y, np.nan)
    with pytest.warns(DataWarning, match=re.escape("dropped 1 of 121 rows with missing values ('y': 1)")):
        model = _regressor("~ x + f + (1 | g)", **small_settings()).fit(data, y)
    np.testing.assert_array_equal(model.fixed_effects_, small_fit.fixed_effects_)
    assert model.dropped_rows_.tolist() == [120]


def test_prediction_never_drops_rows(small_fit, small_frame):
    rows = small_frame.iloc[:4].copy()
    rows.loc[rows.index[1], "x"] = np.nan
    with pytest.raises(DataError, match=re.escape("column 'x' contains missing values (NaN/None) in 1 row(s)")):
        small_fit.predict(rows)
    # A missing grouping level is a new level: population prediction under "population" (lme4's allow.new.levels).
    rows = small_frame.iloc[:4].copy()
    rows["g"] = rows["g"].astype(object)
    rows.loc[rows.index[2], "g"] = None
    predicted = small_fit.predict(rows)
    assert predicted.shape == (4,) and np.all(np.isfinite(predicted))
    assert predicted[2] == pytest.approx(small_fit.predict(rows.iloc[[2]], include_random=False)[0], rel=1e-12)
    np.testing.assert_allclose(predicted[[0, 1, 3]], small_fit.predict(small_frame.iloc[[0, 1, 3]]), rtol=1e-12)
    with pytest.raises(NewLevelError, match=re.escape(
            "1 row(s) have a missing value (NaN/None) in grouping factor 'g': NAs are not allowed in prediction data for "
            "grouping variables")):
        small_fit.predict(rows, new_levels="error")


# -- what is accepted: converted, and fitted as the plain frame is ------------------------------------------------


def _same_fit(model, reference):
    np.testing.assert_array_equal(model.fit_summary_.trace, reference.fit_summary_.trace)
    np.testing.assert_array_equal(model.fixed_effects_, reference.fixed_effects_)
    assert list(model.fixed_effects_.index) == list(reference.fixed_effects_.index)


def test_polars_frames_are_converted(small_frame, small_fit):
    frame = pl.from_pandas(small_frame)
    model = _regressor(**small_settings()).fit(frame)
    _same_fit(model, small_fit)
    np.testing.assert_array_equal(model.predict(frame), small_fit.predict(small_frame))
    np.testing.assert_array_equal(model.predict_interval(frame.head(3))["fit"],
                                  small_fit.predict(small_frame.head(3)))


def test_nullable_dtypes_and_unused_categories(small_frame, small_fit):
    frame = small_frame.assign(
        x=small_frame["x"].astype("Float64"),
        g=small_frame["g"].astype("string"),
        # an unused level, first in the category order: R's model.frame drops it
        f=pd.Categorical(small_frame["f"], categories=["z", "a", "b"]),
        count=small_frame["count"].astype("Int64"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rank-deficiency warning for the unused level
        model = _regressor(**small_settings()).fit(frame)
    _same_fit(model, small_fit)  # f[T.b] against baseline a, as for plain strings
    assert list(model.fixed_effects_.index) == ["Intercept", "x", "f[T.b]"]
    np.testing.assert_array_equal(model.predict(frame), small_fit.predict(small_frame))
    # Predicting rows whose categorical still lists the unused level is fine; using it is not.
    with pytest.raises(NewLevelError, match=r"column 'f' has level\(s\) 'z'"):
        model.predict(frame.head(2).assign(f=pd.Categorical(["z", "a"], categories=["z", "a", "b"])))
    # Numbers stored as objects are numbers (as scikit-learn reads them), not categories.
    objects = _regressor(**small_settings()).fit(small_frame.assign(x=small_frame["x"].astype(object)))
    _same_fit(objects, small_fit)


def test_nullable_missing_values_follow_the_policy(small_frame, small_fit):
    frame = pd.concat([small_frame, small_frame.iloc[[0]]], ignore_index=True)
    frame["x"] = frame["x"].astype("Float64")
    frame.loc[120, "x"] = pd.NA
    with pytest.warns(DataWarning, match=re.escape("dropped 1 of 121 rows with missing values ('x': 1)")):
        model = _regressor(**small_settings()).fit(frame)
    _same_fit(model, small_fit)


def test_the_users_frame_is_never_changed(small_frame):
    frame = _with_missing(small_frame)
    frame["f"] = pd.Categorical(frame["f"], categories=["z", "a", "b"])
    frame["x"] = frame["x"].astype("Float64")
    before = frame.copy(deep=True)
    with pytest.warns(DataWarning):
        model = _regressor(**small_settings()).fit(frame)
    rows = frame.dropna(subset=["x"])
    model.predict(rows)
    model.predict_interval(rows.head(5))
    model.score(rows.dropna(subset=["y"]))
    pd.testing.assert_frame_equal(frame, before, check_exact=True)
    assert list(frame["f"].cat.categories) == ["z", "a", "b"]


# -- magnitudes ----------------------------------------------------------------------------------------------------


def test_huge_magnitudes_are_fitted_on_their_own_scale(small_frame, small_fit):
    """Gaussian fits are scale-equivariant in float64: a response times 1e30 gives
    estimates times 1e30 and a log-likelihood less n log(1e30)."""
    model = _regressor(**small_settings()).fit(small_frame.assign(y=small_frame["y"] * 1e30))
    np.testing.assert_allclose(model.fixed_effects_ / 1e30, small_fit.fixed_effects_, rtol=1e-6)
    np.testing.assert_allclose(fitted_sds(model) / 1e30, fitted_sds(small_fit), rtol=1e-6)
    assert model.log_likelihood_ + 120 * np.log(1e30) == pytest.approx(small_fit.log_likelihood_, abs=1e-6)


def test_predictors_on_very_different_scales_warn_as_lme4_does(small_frame, small_fit):
    with pytest.warns(DataWarning, match=re.escape(
            "Some predictor variables are on very different scales: consider rescaling (standard deviations: x 9")):
        model = _regressor(**small_settings()).fit(small_frame.assign(x=small_frame["x"] * 1e6))
    assert model.fixed_effects_["x"] * 1e6 == pytest.approx(small_fit.fixed_effects_["x"], rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/1 dummies and moderate scales do not warn
        _regressor(**small_settings()).fit(small_frame.assign(x=small_frame["x"] * 100))


def test_counts_beyond_float32_match_glmer():
    """Counts around 2.4e7 (float32 holds integers exactly only up to 2**24): the fit
    runs in float64 and matches glmer, after the E-step restarts its chains at the
    random effects' conditional modes (from zero, HMC cannot reach the narrow
    conditional distribution: its first iterations break down)."""
    reference = json.loads((FIXTURES / "glmm_large_counts.json").read_text())
    data = pd.read_csv(FIXTURES / "large_counts.csv")
    assert data["count"].max() > 2**24
    model = _regressor("count ~ x + (1 | g)", family="poisson", random_state=0).fit(data)
    fixed = pd.Series(reference["fixed_effects"]).rename({"(Intercept)": "Intercept"})
    se = pd.Series(reference["fixed_effects_se"]).rename({"(Intercept)": "Intercept"})
    assert np.all(np.abs(model.fixed_effects_ - fixed) < 0.1 * se), (model.fixed_effects_, fixed)
    assert fitted_sds(model)["g"] == pytest.approx(reference["varcorr"][0]["sdcor"], rel=0.01)
    assert model.log_likelihood_ == pytest.approx(reference["logLik"], abs=0.05)
    np.testing.assert_allclose(np.sqrt(np.diag(model.fixed_effects_cov_)), se, rtol=0.01)
    summary = model.fit_summary_
    assert summary.n_retries == 1
    assert summary.recoveries[0].startswith("iterations 1-5: non-finite values of")
    assert summary.recoveries[0].endswith("retried from the random effects' conditional modes")


# -- numerical faults: divergent transitions, NaN log densities ---------------------------------------------------


def test_divergent_transitions_are_counted():
    """A standard normal target: a step size of 100 diverges at every transition, 0.5 never."""
    @tf.function(autograph=False)
    def e_step(step_size):
        return hmc_e_step(
            lambda b: -0.5 * tf.reduce_sum(tf.square(b), axis=[-2, -1]),
            current_state=[tf.zeros([2, 5, 1], tf.float64)], scale=[tf.ones([5, 1], tf.float64)],
            step_size=tf.constant(step_size, tf.float64), num_draws=10, num_burnin=0, num_leapfrog_steps=4,
            target_accept_prob=0.75, trace_fn=lambda state: {"mean": tf.reduce_mean(state[0], axis=[-2, -1])},
            seed=tf.constant([1, 2]),
        ).divergences
    assert float(e_step(100.0)) == 20.0
    assert float(e_step(0.5)) == 0.0


def test_divergent_e_steps_are_retried_and_recorded(small_fit):
    """A huge initial step size: the first E-steps diverge at every transition and the
    variances become NaN.  The block is run again (chains at the conditional modes,
    then smaller steps), the retries are recorded, and the estimates are the usual ones."""
    rule = FixedIterations(n_iter=30, n_average=15)
    # HMC's recovery (the Gaussian default, blocked Gibbs, has no step size to diverge with)
    usual = fit_mcem(small_fit.model_, options=MCEMOptions(e_step="hmc"), stopping_rule=rule, seed=1)
    recovered = fit_mcem(small_fit.model_, options=MCEMOptions(e_step="hmc", initial_step_size=1e4),
                         stopping_rule=rule, seed=1)
    summary = recovered.summary
    assert summary.n_retries == 5 and len(summary.recoveries) == 5
    assert summary.recoveries[0] == ("iterations 1-5: non-finite values of Intercept, x, f[T.b], sd(g), sigma; "
                                     "50 of 50 kept HMC transitions diverged; "
                                     "retried from the random effects' conditional modes")
    assert summary.recoveries[1] == ("iterations 1-5: 50 of 50 kept HMC transitions diverged; "
                                     "retried with step size 1e+04 -> 1e+03")
    assert summary.recoveries[-1].endswith("retried with step size 10 -> 1")
    assert summary.n_iter == 30 and summary.divergences.shape == (30,)
    assert "5 retries" in repr(summary)
    assert np.all(np.isfinite(summary.estimate))
    np.testing.assert_allclose(summary.estimate, usual.summary.estimate,
                               atol=5 * float(np.max(np.hypot(summary.mcse, usual.summary.mcse))))
    assert usual.summary.n_retries == 0 and usual.summary.n_divergent == 0


def test_a_fit_that_cannot_recover_raises_instead_of_returning_nan(small_fit, small_frame):
    options = MCEMOptions(e_step="hmc", initial_step_size=1e4, max_retries=2)
    with pytest.raises(FitError, match=re.escape(
            "Monte Carlo EM broke down in iterations 1-5 (50 of 50 kept HMC transitions diverged) and 2 retries "
            "with smaller HMC step sizes did not help")):
        fit_mcem(small_fit.model_, options=options, stopping_rule=FixedIterations(n_iter=30, n_average=15), seed=1)



def test_a_response_the_random_effects_reproduce_is_their_ml_fit(small_frame):
    """y is g's level number (0-11): the residual variance goes to zero (a DataWarning says
    why), and the ML estimates are the levels' mean 5.5 and their population sd
    sqrt(143 / 12) = 3.452; the final GLS step once lost the intercept to cancellation."""
    exact = small_frame.assign(y=small_frame["g"].str[1:].astype(float))
    with pytest.warns(DataWarning, match="the response does not vary within the levels of grouping factor 'g'"):
        model = _regressor(**small_settings()).fit(exact)
    assert model.fixed_effects_["Intercept"] == pytest.approx(5.5, abs=1e-6)
    np.testing.assert_allclose(model.fixed_effects_.drop("Intercept"), 0.0, atol=1e-6)
    components = model.variance_components_.set_index("group")["sdcor"]
    assert components["g"] == pytest.approx(np.sqrt(143 / 12), rel=1e-3)
    assert components["Residual"] < 1e-3


def test_a_response_the_fixed_effects_reproduce_is_lms_exact_fit(small_frame):
    """Hard but legal: lm's "essentially perfect fit". A warning names the cause; the
    fixed effects are the exact coefficients, every variance and standard error is
    zero (the residual df n - p, as lm's), no Monte Carlo EM runs; the F tests and the
    ICC, which are undefined, refuse by name. lme4 refuses such data."""
    exact = small_frame.assign(y=1.0 + 2.0 * small_frame["x"] - 0.5 * (small_frame["f"] == "b"))
    weights = np.linspace(0.5, 2.0, len(exact))
    with pytest.warns(DataWarning, match="essentially perfect fit: the fixed effects reproduce the response exactly"):
        model = _regressor().fit(exact, sample_weight=weights)
    np.testing.assert_allclose(model.fixed_effects_.to_numpy(), [1.0, 2.0, -0.5], atol=1e-12)
    np.testing.assert_allclose(model.predict(exact), exact["y"], atol=1e-12)
    assert model.fit_summary_.n_iter == 0 and not model.variance_components_["sdcor"].any()
    assert model.fit_summary_.e_step == "none"
    table = model.fixed_effects_table()
    assert not table["Std. Error"].any() and (table["df"] == 120 - 3).all() and np.isinf(table["t value"]).all()
    text = io.StringIO()
    model.summary(file=text)
    assert "no Monte Carlo EM: essentially perfect fit" in text.getvalue()
    with pytest.raises(ParameterError, match="an exact fit .zero residuals. has no F tests"):
        mixedfx.anova(model)
    with pytest.raises(ParameterError, match="the ICC is undefined"):
        model.icc()


def test_non_finite_estimates_are_never_returned(small_frame, monkeypatch):
    """Whatever the inference layer hands back, fit never stores a NaN estimate."""
    import dataclasses

    import mixedfx.estimator.base

    real = mixedfx.estimator.base.fit_mcem

    def broken(model, **kwargs):
        result = real(model, **kwargs)
        fixed = np.array(result.parameters.fixed_effects, dtype=float)
        fixed[1] = np.nan
        return dataclasses.replace(result, parameters=dataclasses.replace(result.parameters, fixed_effects=fixed))

    monkeypatch.setattr(mixedfx.estimator.base, "fit_mcem", broken)
    with pytest.raises(FitError, match=re.escape(
            "the fit produced non-finite estimates (fixed effect Intercept, fixed effect x, fixed effect f[T.b], "
            "random effects of g); no estimates are returned")):
        _regressor(**small_settings()).fit(small_frame)
