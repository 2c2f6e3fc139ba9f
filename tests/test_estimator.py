"""MixedEffectsRegressor: lme4 agreement, the scikit-learn contract, errors, persistence."""

import copy
import pickle

import numpy as np
import pandas as pd
import pytest
from conftest import (assert_draws_centre_on_conditional_means, assert_ranef_match_lme4, fitted_sds, load_house,
                      load_lme4, lme4_fixed_effects, lme4_fixed_effects_se, lme4_sds)
from scipy import stats
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

import mixedfx
from mixedfx import ConvergenceWarning, DataError, FormulaError, MixedEffectsRegressor, NewLevelError, ParameterError

FORMULA = "y ~ x + (1 | g1) + (1 | g2)"


def test_matches_lme4_on_crossed_data(crossed_small_fit):
    reference = load_lme4("crossed_small_ml")
    model = crossed_small_fit
    sds, ref_sds = fitted_sds(model), lme4_sds(reference)
    for group in ("g1", "g2", "Residual"):
        assert sds[group] == pytest.approx(ref_sds[group], rel=0.02), group
    distance = (model.fixed_effects_ - lme4_fixed_effects(reference)) / lme4_fixed_effects_se(reference)
    assert np.all(np.abs(distance) < 0.25), distance
    assert model.log_likelihood_ == pytest.approx(reference["logLik"], abs=0.5)
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    np.testing.assert_allclose(se, lme4_fixed_effects_se(reference)[model.fixed_effects_.index], rtol=0.02)
    assert model.fit_summary_.converged


def test_fitted_attributes(crossed_small_fit, crossed_small):
    model = crossed_small_fit
    check_is_fitted(model)
    assert list(model.fixed_effects_.index) == ["Intercept", "x"]
    components = model.variance_components_
    assert list(components.columns) == ["group", "var1", "var2", "vcov", "sdcor"]
    assert list(components["group"]) == ["g1", "g2", "Residual"]
    assert list(components["var1"]) == ["(Intercept)", "(Intercept)", None]
    np.testing.assert_allclose(components["vcov"], components["sdcor"] ** 2)
    assert set(model.random_effects_) == {"g1", "g2"}
    g1 = model.random_effects_["g1"]
    assert list(g1.index) == sorted(crossed_small["g1"].unique()) and list(g1.columns) == ["(Intercept)"]
    assert model.n_obs_ == len(crossed_small)
    summary = model.fit_summary_
    assert summary.n_iter == len(summary.objective) == len(summary.acceptance) == summary.trace.shape[0]
    assert summary.e_step == "gibbs" and summary.acceptance_rate == 1.0  # the Gaussian default: exact draws
    assert summary.parameter_names == ("Intercept", "x", "sd(g1)", "sd(g2)", "sigma")
    judged = np.isfinite(summary.tolerance)  # the fixed effects are exact GLS: the rule does not judge them
    assert judged.tolist() == [False, False, True, True, True]
    assert np.all(summary.mcse[judged] <= summary.tolerance[judged])
    assert summary.parameter_trace().shape == (summary.n_iter, 5)


def test_random_effects_match_lme4s_conditional_modes(crossed_small_fit):
    """random_effects_ and their conditional sds against lme4's ranef(condVar = TRUE), same data, ML."""
    assert_ranef_match_lme4(crossed_small_fit, load_house("crossed_small"))


def test_draws_centre_on_the_conditional_means(crossed_small_fit):
    """The MCMC draws of the E-step average to the exact conditional means within their Monte Carlo error."""
    assert_draws_centre_on_conditional_means(crossed_small_fit)


def test_predict_is_fixed_part_plus_conditional_means(crossed_small_fit, crossed_small):
    model = crossed_small_fit
    rows = crossed_small.head(20)
    expected = (
        model.fixed_effects_["Intercept"]
        + model.fixed_effects_["x"] * rows["x"].to_numpy()
        + model.random_effects_["g1"].loc[rows["g1"], "(Intercept)"].to_numpy()
        + model.random_effects_["g2"].loc[rows["g2"], "(Intercept)"].to_numpy()
    )
    predicted = model.predict(rows)
    assert isinstance(predicted, np.ndarray) and predicted.dtype == np.float64
    np.testing.assert_allclose(predicted, expected, rtol=1e-12)


def test_new_levels_policy(crossed_small_fit, crossed_small):
    model = crossed_small_fit
    row = crossed_small.head(1).copy()
    row["g1"] = "never-seen"
    expected = (
        model.fixed_effects_["Intercept"]
        + model.fixed_effects_["x"] * row["x"].iloc[0]
        + model.random_effects_["g2"].loc[row["g2"].iloc[0], "(Intercept)"]
    )
    assert model.predict(row)[0] == pytest.approx(expected)
    with pytest.raises(NewLevelError, match=r"grouping factor 'g1'.*'never-seen'"):
        model.predict(row, new_levels="error")
    strict = clone(model).set_params(new_levels="error")
    assert strict.new_levels == "error"
    with pytest.raises(ParameterError, match="new_levels must be one of"):
        model.predict(row, new_levels="zero")


def test_unseen_fixed_level_raises(rng):
    data = pd.DataFrame(
        {
            "y": rng.normal(size=200),
            "f": rng.choice(["a", "b", "c"], size=200),
            "g": rng.choice([f"g{i}" for i in range(10)], size=200),
        }
    )
    model = MixedEffectsRegressor("y ~ f + (1 | g)", random_state=0, verbose=0, max_iter=30,
                                  stopping_rule=mixedfx.inference.FixedIterations(n_iter=10, n_average=5)).fit(data)
    with pytest.raises(NewLevelError, match=r"column 'f' has level\(s\) 'd'"):
        model.predict(pd.DataFrame({"f": ["a", "d"], "g": ["g1", "g2"]}))


def test_fit_with_explicit_y_and_one_sided_formula(crossed_small):
    from_formula = MixedEffectsRegressor(FORMULA, random_state=3, verbose=0).fit(crossed_small)
    explicit = MixedEffectsRegressor("~ x + (1 | g1) + (1 | g2)", random_state=3, verbose=0).fit(
        crossed_small.drop(columns="y"), crossed_small["y"]
    )
    np.testing.assert_array_equal(from_formula.fixed_effects_, explicit.fixed_effects_)
    np.testing.assert_array_equal(from_formula.variance_components_["sdcor"], explicit.variance_components_["sdcor"])


def test_same_seed_same_estimates_other_seed_within_monte_carlo_error(crossed_small, crossed_small_fit):
    again = clone(crossed_small_fit).fit(crossed_small)
    np.testing.assert_array_equal(again.fit_summary_.trace, crossed_small_fit.fit_summary_.trace)
    np.testing.assert_array_equal(again.fixed_effects_, crossed_small_fit.fixed_effects_)
    np.testing.assert_array_equal(again.variance_components_["sdcor"], crossed_small_fit.variance_components_["sdcor"])
    np.testing.assert_array_equal(again.predict(crossed_small), crossed_small_fit.predict(crossed_small))
    other = MixedEffectsRegressor(FORMULA, random_state=1, verbose=0).fit(crossed_small)
    assert not np.array_equal(other.fit_summary_.trace[-1], crossed_small_fit.fit_summary_.trace[-1])
    mcse = np.hypot(other.fit_summary_.mcse, crossed_small_fit.fit_summary_.mcse)
    difference = np.abs(other.fit_summary_.estimate - crossed_small_fit.fit_summary_.estimate)
    assert np.all(difference < 5 * mcse + 1e-12), (difference, mcse)


def test_user_frame_is_not_mutated(crossed_small):
    frame = crossed_small.copy(deep=True)
    frame["g1"] = frame["g1"].astype("category")
    before = frame.copy(deep=True)
    model = MixedEffectsRegressor(FORMULA, random_state=0, verbose=0).fit(frame)
    model.predict(frame)
    model.score(frame)
    pd.testing.assert_frame_equal(frame, before)


def test_sklearn_contract(crossed_small_fit):
    params = crossed_small_fit.get_params()
    assert params["formula"] == FORMULA and params["random_state"] == 0
    fresh = clone(crossed_small_fit)
    assert fresh.get_params() == params and not hasattr(fresh, "fixed_effects_")
    # __init__ only assigns: invalid values are accepted until fit.
    odd = MixedEffectsRegressor(FORMULA, family="poison", new_levels="zero", max_iter=-1)
    assert odd.get_params()["family"] == "poison"
    assert odd.set_params(max_iter=3).max_iter == 3
    with pytest.raises(NotFittedError):
        MixedEffectsRegressor(FORMULA).predict(pd.DataFrame({"x": [1.0]}))


def test_score_takes_the_response_from_the_formula(crossed_small_fit, crossed_small):
    r2 = crossed_small_fit.score(crossed_small)
    assert r2 == pytest.approx(crossed_small_fit.score(crossed_small, crossed_small["y"]))
    fixed_only = np.corrcoef(crossed_small["x"], crossed_small["y"])[0, 1] ** 2
    assert r2 > fixed_only + 0.2


def test_pickle_round_trip_holds_no_tensorflow(crossed_small_fit, crossed_small):
    blob = pickle.dumps(crossed_small_fit)
    assert b"tensorflow" not in blob
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(restored.predict(crossed_small), crossed_small_fit.predict(crossed_small))
    clone_of_fitted = copy.deepcopy(crossed_small_fit)
    np.testing.assert_array_equal(clone_of_fitted.predict(crossed_small), crossed_small_fit.predict(crossed_small))


def test_joint_distribution_at_the_estimates(crossed_small_fit, crossed_small):
    joint = crossed_small_fit.joint_distribution(crossed_small)
    draw = joint.sample(seed=(1, 2))
    assert sorted(draw) == ["g1", "g2", "response"]
    assert draw["g1"].shape == (60, 1) and draw["response"].shape == (len(crossed_small),)
    sds = fitted_sds(crossed_small_fit)
    b1, b2 = draw["g1"].numpy()[:, 0], draw["g2"].numpy()[:, 0]
    codes1 = crossed_small_fit.random_design_.factors["g1"].encode(crossed_small)
    codes2 = crossed_small_fit.random_design_.factors["g2"].encode(crossed_small)
    eta = crossed_small_fit.fixed_effects_["Intercept"] + crossed_small_fit.fixed_effects_["x"] * crossed_small["x"].to_numpy()
    eta = eta + b1[codes1] + b2[codes2]
    manual = (stats.norm(0, sds["g1"]).logpdf(b1).sum() + stats.norm(0, sds["g2"]).logpdf(b2).sum()
              + stats.norm(eta, sds["Residual"]).logpdf(crossed_small["y"]).sum())
    value = joint.log_prob({"g1": b1[:, None], "g2": b2[:, None], "response": crossed_small["y"].to_numpy()})
    assert float(value) == pytest.approx(manual, rel=1e-10)
    with pytest.raises(NewLevelError):
        crossed_small_fit.joint_distribution(crossed_small.head(3).assign(g1="zz"))


def test_summary_prints_lme4_layout(crossed_small_fit, capsys):
    crossed_small_fit.summary()
    text = capsys.readouterr().out
    for piece in ("Linear mixed model fit by maximum likelihood", "Formula: " + FORMULA, "Random effects:",
                  "Fixed effects:", "Number of obs: 1500, groups:  g1, 60; g2, 25", "Scaled residuals:",
                  "logLik", "MCEM converged", "; blocked Gibbs E-step;"):
        assert piece in text, piece
    assert "HMC acceptance" not in text and "step size" not in text  # the Gaussian default draws exactly
    loglik = f"{crossed_small_fit.log_likelihood_:.1f}"
    assert loglik in text


def test_lmer_one_liner(crossed_small, crossed_small_fit):
    model = mixedfx.lmer(FORMULA, crossed_small, random_state=0, verbose=0)
    assert isinstance(model, MixedEffectsRegressor)
    np.testing.assert_array_equal(model.fixed_effects_, crossed_small_fit.fixed_effects_)


def test_non_convergence_warns(crossed_small):
    with pytest.warns(ConvergenceWarning, match="did not converge in 5 iterations"):
        model = MixedEffectsRegressor(FORMULA, max_iter=5, random_state=0, verbose=0).fit(crossed_small)
    assert not model.fit_summary_.converged and np.all(np.isfinite(model.fixed_effects_))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"formula": 42}, "formula must be an lme4 formula string"),
        ({"formula": None}, "formula=None fits every column of X .* give groups="),
        ({"groups": "g1"}, "groups= is for formula=None"),
        ({"missing": "omit"}, "missing must be one of"),
        ({"family": "poison"}, "unknown family 'poison'"),
        ({"new_levels": "zero"}, "new_levels must be one of"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1"),
        ({"n_chains": 1.5}, "n_chains must be an integer"),
        ({"tol": -1}, "tol must be a positive number"),
        ({"stopping_rule": object()}, "stopping_rule must have an assess"),
    ],
)
def test_invalid_parameters_raise_in_fit(crossed_small, params, match):
    model = MixedEffectsRegressor(FORMULA, verbose=0).set_params(**params)
    with pytest.raises(ParameterError, match=match):
        model.fit(crossed_small)


@pytest.mark.parametrize(
    "formula, transform, error, match",
    [
        ("y ~ x + (1 | g3)", None, DataError, r"grouping column 'g3' .* Did you mean 'g[12]'\?"),
        ("y ~ xx + (1 | g1)", None, DataError, r"column 'xx' .* Did you mean 'x'\?"),
        ("y ~ x + (1 | g1", None, FormulaError, "unbalanced"),
        ("~ x + (1 | g1)", None, DataError, "no response"),
        ("y ~ x + (1 | g1)", lambda f: f.assign(y=f["g1"]), DataError, "the response 'y' must be numeric for the gaussian family"),
        ("y ~ x + (1 | g1)", lambda f: f.assign(x=np.where(np.arange(len(f)) == 3, np.inf, f["x"])), DataError,
         r"column 'x' of 'x' has 1 non-finite value\(s\) \(inf or NaN; e.g. inf in row 3\)"),
        ("y ~ x + (1 | row)", lambda f: f.assign(row=np.arange(len(f))), DataError,
         "number of levels of each grouping factor must be < number of observations"),
        ("y ~ x + (x | g1) + (1 | g1)", None, FormulaError, "appears in two random terms"),
        ("y ~ x", None, FormulaError, "No random effects terms specified in formula"),
    ],
)
def test_bad_input_raises_mixedfx_errors(crossed_small, formula, transform, error, match):
    data = crossed_small if transform is None else transform(crossed_small)
    with pytest.raises(error, match=match):
        MixedEffectsRegressor(formula, verbose=0).fit(data)


def test_predict_names_a_missing_column(crossed_small_fit, crossed_small):
    with pytest.raises(DataError, match=r"column 'x' used in the formula 'x' is not in the data"):
        crossed_small_fit.predict(crossed_small.drop(columns="x"))


def test_numpy_input_is_refused_clearly(crossed_small):
    with pytest.raises(DataError, match="X must be a pandas DataFrame"):
        MixedEffectsRegressor(FORMULA, verbose=0).fit(crossed_small.to_numpy())


def test_y_length_is_checked(crossed_small):
    with pytest.raises(DataError, match="y must be one-dimensional with 1500 values"):
        MixedEffectsRegressor("~ x + (1 | g1)", verbose=0).fit(crossed_small, np.ones(3))


def test_tensorflow_noise_stays_out_of_the_terminal():
    """Import, device set-up and XLA compilation stay quiet; importing compiles nothing
    (the XLA service starts at the first fit: start_xla's program is traced then)."""
    import subprocess
    import sys

    script = (
        "import mixedfx\n"
        "from mixedfx._tf import tf, _first_compile\n"
        "print(tf.config.experimental.tensor_float_32_execution_enabled())\n"
        "print(_first_compile.experimental_get_tracing_count())\n"
        "data = mixedfx.datasets.make_mixed_data(200, groups={'g': 8}, random_state=0)\n"
        "mixedfx.MixedEffectsRegressor('y ~ 1 + (1 | g)', random_state=0, verbose=0).fit(data)\n"
        "print(_first_compile.experimental_get_tracing_count())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "0", "1"]
    assert done.stderr.strip() == "", done.stderr
