"""Continuous covariance structures inside the bar (issue 19, second round): ou, exp, gau.

References: glmmTMB 1.1.5 with numFactor (tests/fixtures/make_spatial_structure_fixtures.R), on
  spatial_points.csv  10 fields x 15 points (x1, x2) x 2 replicates, y_exp drawn from exp
      (sd 1, range 2), y_gau from gau (sd 1, range 1.5), sigma 0.5, y = 1 + 0.5 cov + b;
  spatial_times.csv   12 subjects x 12 unequally spaced times t x 2 replicates, y from ou
      (sd 1, rate 0.5), sigma 0.5.
Acceptance (issue 19): sd within 3 %, range (rate) within 5 %, logLik within 0.5 of glmmTMB's
(the exact Gaussian log-likelihood); fixed-effect SEs within 3 % of lme4's (X'V^-1X)^-1 at
glmmTMB's estimates (computed in R).  Every fit is ML, as glmmTMB's REML = FALSE.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

import mixedfx
from conftest import caret_column
from mixedfx._tf import tf
from mixedfx.design import RandomTermData
from mixedfx.exceptions import DataError, FormulaError
from mixedfx.model import Gaussian, MixedModel, ModelParameters, gaussian_marginal, joint_log_prob
from mixedfx.model.covariance import structure_for
from mixedfx.report import format_summary
from mixedfx.results import count_parameters

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "spatial_structures.json").read_text())
POINTS = pd.read_csv(FIXTURES / "spatial_points.csv")
TIMES = pd.read_csv(FIXTURES / "spatial_times.csv")
FORMULAS = {"exp": ("y_exp ~ cov + exp(x1 + x2 + 0 | field)", POINTS),
            "gau": ("y_gau ~ cov + gau(x1 + x2 + 0 | field)", POINTS),
            "ou": ("y ~ cov + ou(t + 0 | subject)", TIMES)}
SCALE = {"exp": "range", "gau": "range", "ou": "rate"}


@pytest.fixture(scope="module")
def fits():
    """One fit per structure, made when a test first asks for it."""
    cache = {}

    def get(structure):
        if structure not in cache:
            formula, data = FORMULAS[structure]
            cache[structure] = mixedfx.lmer(formula, data, random_state=0, verbose=0)
        return cache[structure]

    return get


def _estimates(model) -> dict:
    components = model.variance_components_
    cov = model.random_cov_[0].to_numpy()
    scale = components.loc[components["var1"].isin(list(SCALE)), "sdcor"]
    return {"sd": np.sqrt(np.diag(cov)), "scale": float(scale.iloc[0]),
            "sigma": float(components.loc[components["group"] == "Residual", "sdcor"].iloc[0])}


# -- against glmmTMB ---------------------------------------------------------------------------

@pytest.mark.parametrize("structure", ["exp", "gau", "ou"])
def test_matches_glmmtmb(fits, structure):
    """sd (one common, every point's) and sigma within 3 %, range or rate within 5 %, logLik
    within 0.5, fixed effects within a tenth of their SE, and their SEs within 3 % of glmmTMB's;
    the covariance is the structure at its reported parameters (to 2 % of the variance)."""
    model, ref = fits(structure), REFERENCE[structure]
    got = _estimates(model)
    np.testing.assert_allclose(got["sd"], ref["sd"], rtol=0.03)
    np.testing.assert_allclose(got["scale"], ref["scale"], rtol=0.05)
    np.testing.assert_allclose(got["sigma"], ref["sigma"], rtol=0.03)
    assert abs(model.log_likelihood_ - ref["logLik"]) < 0.5
    beta_gap = np.abs(model.fixed_effects_.to_numpy() - list(ref["fixed_effects"].values()))
    assert np.all(beta_gap < 0.1 * np.array(ref["fixed_effects_se"])), beta_gap
    np.testing.assert_allclose(np.sqrt(np.diag(model.fixed_effects_cov_.to_numpy())), ref["fixed_effects_se"],
                               rtol=0.03)
    points = model.model_.random_terms[0].coordinates
    d = distance.cdist(points, points)
    kernel = {"exp": np.exp(-d / got["scale"]), "gau": np.exp(-(d / got["scale"]) ** 2),
              "ou": np.exp(-got["scale"] * d)}[structure]
    # the estimate is the structure at the window's mean parameters (CovarianceStructure.average:
    # the mean of the window's gau matrices was 0.022 off the kernel at the reported range)
    np.testing.assert_allclose(model.random_cov_[0].to_numpy(), got["sd"][0] ** 2 * kernel, rtol=0.01,
                               atol=0.02 * got["sd"][0] ** 2)


@pytest.mark.parametrize("structure", ["exp", "gau", "ou"])
def test_truth_recovered(fits, structure):
    """The simulated truth: log sd and log range (rate) within 2.5 of glmmTMB's standard
    errors of them (0.07 .. 0.10 and 0.17 .. 0.27), sigma within 10 %, the fixed effects
    within 2.5 SEs."""
    got, ref, truth = _estimates(fits(structure)), REFERENCE[structure], REFERENCE["truth"][structure]
    se_log_sd, se_log_scale = ref["theta_se"]
    assert abs(np.log(got["sd"][0] / truth["sd"])) < 2.5 * se_log_sd
    assert abs(np.log(got["scale"] / truth[SCALE[structure]])) < 2.5 * se_log_scale
    assert abs(got["sigma"] - truth["sigma"]) < 0.1 * truth["sigma"]
    beta = fits(structure).fixed_effects_.to_numpy()
    assert np.all(np.abs(beta - REFERENCE["truth"]["fixed_effects"]) < 2.5 * np.array(ref["fixed_effects_se"]))


def test_reports_name_the_structure_parameters(fits):
    """glmmTMB's VarCorr: one sd and the range; its df (5) counted by AIC; numFactor's
    level names; ``(exp)`` in the summary."""
    model = fits("exp")
    components = model.variance_components_
    assert components[["var1", "var2"]].iloc[1].tolist() == ["exp", "range"]
    assert len(components) == 3  # sd, range, residual
    assert count_parameters(model) == REFERENCE["exp"]["df"]
    assert "(exp)" in format_summary(model)
    points = np.unique(POINTS[["x1", "x2"]].to_numpy(), axis=0)
    assert list(model.random_effects_["field"].columns) == [f"({x:g},{y:g})" for x, y in points]


def test_predict_at_fitted_points_and_refuses_new_ones(fits):
    """predict adds each row's field-and-point effect; a point not seen in the fit is a
    DataError (no kriging), which ``re_form='~0'`` avoids."""
    model = fits("exp")
    effects = model.random_effects_["field"]
    labels = [f"({x:g},{y:g})" for x, y in POINTS[["x1", "x2"]].to_numpy()]
    own = effects.to_numpy()[effects.index.get_indexer(POINTS["field"]), effects.columns.get_indexer(labels)]
    beta = model.fixed_effects_.to_numpy()
    np.testing.assert_allclose(model.predict(POINTS), beta[0] + beta[1] * POINTS["cov"] + own, rtol=1e-10)
    new = POINTS.head(2).assign(x1=[20.0, 0.5])
    with pytest.raises(DataError, match=re.escape("not seen in fit (e.g. (20.0,")):
        model.predict(new)
    np.testing.assert_allclose(model.predict(new, re_form="~0"), beta[0] + beta[1] * new["cov"], rtol=1e-12)


# -- the structures at given parameters, and the densities -------------------------------------

def test_structure_covariances_at_given_parameters():
    """glmmTMB's formulas (glmmTMB.cpp): exp(-d exp(-theta1)), exp(-d^2 exp(-2 theta1)),
    ou exp(-exp(theta1) |t - t'|), times exp(2 theta0); unconstrained() inverts covariance()."""
    points = np.array([[0.0, 0.0], [1.0, 0.5], [3.0, 2.0], [0.2, 4.0]])
    d = distance.cdist(points, points)
    theta = np.array([0.3, 0.4])
    expected = {"exp": np.exp(-d * np.exp(-theta[1])), "gau": np.exp(-d**2 * np.exp(-2 * theta[1]))}
    for name, corr in expected.items():
        structure = structure_for(name, coordinates=points)
        cov = structure.covariance(theta, 4).numpy()
        np.testing.assert_allclose(cov, np.exp(2 * theta[0]) * corr, rtol=1e-7)
        np.testing.assert_allclose(structure.unconstrained(cov), theta, rtol=1e-6)
    times = np.array([[0.0], [0.5], [2.0], [2.1]])
    ou = structure_for("ou", coordinates=times)
    cov = ou.covariance(theta, 4).numpy()
    np.testing.assert_allclose(cov, np.exp(2 * theta[0]) * np.exp(-np.exp(theta[1]) * distance.cdist(times, times)))
    np.testing.assert_allclose(ou.parameters(cov)["rate"], np.exp(theta[1]))
    assert ou == structure_for("ou", coordinates=times.copy()) and ou != structure_for("ou", coordinates=times + 1)


def test_projection_recovers_the_structure():
    """The M-step's projection of a second moment drawn from exp (500 levels): Newton's
    maximum of the expected complete-data log-likelihood, range within 10 % of the truth."""
    points = np.array([[0.0, 0.0], [1.0, 0.5], [3.0, 2.0], [0.2, 4.0], [2.0, 2.0]])
    exp = structure_for("exp", coordinates=points)
    truth = exp.covariance(np.log([1.5, 2.0]), 5).numpy()
    draws = np.random.default_rng(1).multivariate_normal(np.zeros(5), truth, size=500)
    fitted = tf.function(exp.project)(draws.T @ draws, 500).numpy()  # as the fit runs it: in a graph
    assert abs(exp.parameters(fitted)["range"] - 2.0) < 0.2
    assert abs(np.sqrt(fitted[0, 0]) - 1.5) < 0.1


def test_joint_and_exact_likelihood_agree_with_scipy():
    """At an exp covariance over 4 points: log p(y, b) of the JointDistribution and the
    exact marginal log-likelihood against scipy's dense multivariate normals."""
    rng = np.random.default_rng(3)
    points = np.array([[0.0, 0.0], [1.0, 0.5], [3.0, 2.0], [0.2, 4.0]])
    n_fields, dim, sigma, beta = 5, 4, 0.7, np.array([1.0, 0.5])
    cov = structure_for("exp", coordinates=points).covariance(np.log([1.3, 2.0]), dim).numpy()
    field = np.repeat(np.arange(n_fields), dim).astype(np.int32)
    point = np.tile(np.arange(dim), n_fields)
    X = np.column_stack([np.ones(field.size), rng.normal(size=field.size)])
    y = rng.normal(size=field.size) + X @ beta
    term = RandomTermData("field", field, np.eye(dim)[point], n_fields, tuple("abcd"), covariance="exp",
                          coordinates=points)
    model = MixedModel(Gaussian(), X, y, (term,), ("Intercept", "x"))
    effects = rng.normal(size=(n_fields, dim))
    scale_tril = np.linalg.cholesky(cov)
    joint = float(joint_log_prob(model.tensors(), [effects], fixed_effects=beta, random_scale_tril=[scale_tril],
                                 family=Gaussian(), family_params={"sigma": np.float64(sigma)}))
    dense = (stats.multivariate_normal(np.zeros(dim), cov).logpdf(effects).sum()
             + stats.norm(X @ beta + effects[field, point], sigma).logpdf(y).sum())
    np.testing.assert_allclose(joint, dense, rtol=1e-10)
    marginal = gaussian_marginal(model, ModelParameters(beta, (scale_tril,), {"sigma": sigma})).log_likelihood
    V = np.kron(np.eye(n_fields), cov) + sigma**2 * np.eye(field.size)  # rows ordered field, point
    np.testing.assert_allclose(marginal, stats.multivariate_normal(X @ beta, V).logpdf(y), rtol=1e-10)


# -- formula errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("formula, message, at", [
    ("y_exp ~ cov + exp(x1 + x2 | field)", "takes coordinate columns and no intercept", "exp("),
    ("y_exp ~ cov + exp(1 + x1 + x2 | field)", "takes coordinate columns and no intercept", "1 +"),
    ("y_exp ~ cov + gau(0 | field)", "needs numeric coordinate columns left of the bar", "| field"),
    ("y_exp ~ cov + exp(log(x1) + 0 | field)", "joined by '+'", "log"),
    ("y_exp ~ cov + ou(x1 + x2 + 0 | field)", "takes one coordinate column", "ou"),
    ("y_exp ~ cov + exp(label + x2 + 0 | field)", "coordinate column 'label' of", "exp("),
    ("y_exp ~ cov + mat(x1 + x2 | field)", "takes coordinate columns and no intercept", "mat("),
])
def test_errors_point_at_the_term(formula, message, at):
    data = POINTS.head(60).assign(label=lambda frame: frame["field"] + "x")
    with pytest.raises(FormulaError, match=re.escape(message)) as info:
        mixedfx.MixedEffectsRegressor(formula, verbose=0).fit(data)
    assert caret_column(info.value) == formula.index(at)
    assert list(data.columns) == list(POINTS.columns) + ["label"]  # the user's frame untouched
