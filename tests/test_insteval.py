"""Acceptance on InstEval: lme4's ML estimates, and prediction on held-out rows."""

import pickle

import numpy as np
import pytest
from conftest import fitted_sds, load_lme4, lme4_fixed_effects, lme4_fixed_effects_se, lme4_sds

pytestmark = pytest.mark.slow


def test_full_data_ml_fit_matches_lme4(insteval_fit):
    reference = load_lme4("insteval_ml")
    assert reference["lme4_version"] == "1.1.31" and reference["method"] == "ML"
    model = insteval_fit
    sds, ref = fitted_sds(model), lme4_sds(reference)
    for group, tolerance in (("s", 0.02), ("d", 0.02), ("Residual", 0.02), ("dept", 0.10)):
        assert sds[group] == pytest.approx(ref[group], rel=tolerance), (group, sds[group], ref[group])
    distance = (model.fixed_effects_ - lme4_fixed_effects(reference)) / lme4_fixed_effects_se(reference)
    assert np.all(np.abs(distance) < 0.25), distance
    assert model.log_likelihood_ == pytest.approx(-118860.884, abs=1.0)
    assert model.fit_summary_.converged


def test_fit_record_and_levels(insteval_fit):
    model = insteval_fit
    assert {name: f.num_levels for name, f in model.random_design_.factors.items()} == {"s": 2972, "d": 1128, "dept": 14}
    assert model.n_obs_ == 73421
    summary = model.fit_summary_
    # the Gaussian default E-step, blocked Gibbs, draws exactly: every draw is kept
    assert summary.n_iter < 200 and summary.e_step == "gibbs" and summary.acceptance_rate == 1.0
    assert np.all(np.isfinite(summary.objective)) and summary.objective.shape == (summary.n_iter,)
    # the averaging window holds the estimate: its mean is what was reported
    window = summary.trace[summary.window_start:]
    # the fixed effects are the exact GLS estimate given the variance parameters; the
    # EM iterations' own fixed effects average to it within a few hundredths of an SE
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    assert np.all(np.abs(window[:, :2].mean(axis=0) - model.fixed_effects_.to_numpy()) < 0.05 * se)


def test_fitted_insteval_model_pickles(insteval_fit, insteval):
    rows = insteval.sample(500, random_state=0)
    restored = pickle.loads(pickle.dumps(insteval_fit))
    np.testing.assert_array_equal(restored.predict(rows), insteval_fit.predict(rows))


def test_example_holdout_beats_fixed_effects_only(capsys):
    from mixedfx.examples import insteval as example

    result = example.run(random_state=0, verbose=1)
    printed = capsys.readouterr().out
    assert result["rmse_mixed"] < result["rmse_fixed_only"] - 0.05
    # the ratings are ordered categories: the ordinal model predicts them better
    assert result["lpd_ordinal"] > result["lpd_gaussian"] + 0.01
    assert "log predictive density per rating, ordinal" in printed
    assert f"held-out RMSE, mixed model:        {result['rmse_mixed']:.4f}" in printed
    assert result["unseen_students"] > 0  # the population policy was exercised
    model = result["model"]
    train, test = example.split(model_data := __import__("mixedfx").datasets.load_insteval(), random_state=0)
    unseen = ~test["s"].isin(set(train["s"]))
    rows = test[unseen]
    # an unseen student contributes zero: the same prediction as with the student removed
    population = model.predict(rows)
    expected = (model.fixed_effects_["Intercept"] + model.fixed_effects_["service"] * rows["service"].to_numpy()
                + model.random_effects_["d"].loc[rows["d"], "(Intercept)"].to_numpy()
                + model.random_effects_["dept"].loc[rows["dept"], "(Intercept)"].to_numpy())
    np.testing.assert_allclose(population, expected, rtol=1e-12)
    assert len(model_data) == 73421
