"""glmmTMB's reduced-rank covariance ``rr(x | g, d)`` (issue 19).

References: glmmTMB 1.1.5 (tests/fixtures/make_reduced_rank_fixture.R) on reduced_rank.csv,
100 subjects x 4 traits x 2 replicates, trait means (2, 1, 0, -1), sigma 0.5; y1's effects have
rank 1 (loadings 1, 0.8, -0.6, 1.2), y2's rank 2.  Fits are ML, as glmmTMB's REML = FALSE.
Acceptance (issue 19): sds within 3 %, covariance entries within 3 % of the product of the sds,
fixed effects within 0.1 of their SE, SEs within 3 %, logLik within 0.5 of glmmTMB's (the
exact Gaussian log-likelihood); the covariance's floor (1e-8 of the mean variance) moves the
log-likelihood by less than 1e-3 from the exact rank-d one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mixedfx
from conftest import caret_column
from mixedfx._tf import tf
from mixedfx.design import RandomTermData
from mixedfx.exceptions import FormulaError, ParameterError
from mixedfx.model import (RESPONSE, Gaussian, MixedModel, ModelParameters, build_joint_distribution,
                           gaussian_marginal, joint_log_prob)
from mixedfx.model.covariance import structure_for
from mixedfx.model.ddf import kenward_roger_pieces
from mixedfx.report import format_summary
from mixedfx.results import count_parameters

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "reduced_rank.json").read_text())
DATA = pd.read_csv(FIXTURES / "reduced_rank.csv")
FORMULAS = {"d1": "y1 ~ 0 + trait + rr(0 + trait | id, d = 1)", "d2": "y2 ~ 0 + trait + rr(0 + trait | id, d = 2)"}


@pytest.fixture(scope="module")
def fits():
    """One fit per rank, made when a test first asks for it (about 40 s each)."""
    cache = {}

    def get(key):
        if key not in cache:
            cache[key] = mixedfx.lmer(FORMULAS[key], DATA, random_state=0, verbose=0)
        return cache[key]

    return get


def _covariance(model) -> np.ndarray:
    return model.random_cov_[0].to_numpy()


def _sigma(model) -> float:
    components = model.variance_components_
    return float(components.loc[components["group"] == "Residual", "sdcor"].iloc[0])


def _dense_log_likelihood(model, cov) -> float:
    """The Gaussian marginal log-likelihood at the fit's fixed effects and sigma with the
    term's covariance ``cov`` (which may be singular), subject by subject with scipy."""
    beta, sigma = model.fixed_effects_.to_numpy(), _sigma(model)
    trait = DATA["trait"].str[1:].astype(int).to_numpy() - 1
    total = 0.0
    for _, rows in DATA.groupby("id").indices.items():
        Z = np.eye(4)[trait[rows]]
        V = Z @ cov @ Z.T + sigma**2 * np.eye(len(rows))
        total += stats.multivariate_normal(beta[trait[rows]], V).logpdf(DATA["y1"].to_numpy()[rows])
    return float(total)


def _assert_matches_glmmtmb(model, ref):
    sds = np.sqrt(np.diag(_covariance(model)))
    np.testing.assert_allclose(sds, ref["sd"], rtol=0.03)
    gap = np.abs(_covariance(model) - np.array(ref["covariance"]))
    assert np.all(gap < 0.03 * np.outer(ref["sd"], ref["sd"])), gap
    np.testing.assert_allclose(_sigma(model), ref["sigma"], rtol=0.03)
    assert abs(model.log_likelihood_ - ref["logLik"]) < 0.5
    beta_gap = np.abs(model.fixed_effects_.to_numpy() - list(ref["fixed_effects"].values()))
    assert np.all(beta_gap < 0.1 * np.array(ref["fixed_effects_se"])), beta_gap
    np.testing.assert_allclose(np.sqrt(np.diag(model.fixed_effects_cov_.to_numpy())), ref["fixed_effects_se"],
                               rtol=0.03)
    assert count_parameters(model) == ref["df"]  # q d - d (d - 1) / 2 loadings, 4 means, sigma


# -- against glmmTMB ---------------------------------------------------------------------------

def test_rank_one_matches_glmmtmb(fits):
    """d = 1: sds and sigma within 3 %, covariance entries within 3 % of the product of the
    sds, logLik within 0.5, fixed effects within a tenth of their SE and their SEs within
    3 %, 9 parameters (glmmTMB's df); VarCorr's correlations (all +-1 at rank 1)."""
    model, ref = fits("d1"), REFERENCE["d1"]
    _assert_matches_glmmtmb(model, ref)
    corr = model.variance_components_.dropna(subset=["var2"])["sdcor"].to_numpy()
    expected = np.array(ref["correlation"])[np.triu_indices(4, 1)]
    np.testing.assert_allclose(corr, expected, atol=1e-6)


@pytest.mark.slow
def test_rank_two_matches_glmmtmb(fits):
    """d = 2 on y2 (about 40 s): the same tolerances, 12 parameters."""
    _assert_matches_glmmtmb(fits("d2"), REFERENCE["d2"])


def test_truth_recovered(fits):
    """The simulated rank-1 truth: the loadings' direction within 5 degrees, their length
    within 2.5 standard errors of a variance estimated from 100 subjects (log scale,
    2.5 / sqrt(2 * 100)), sigma within 10 %, the trait means within 2.5 SEs."""
    model, truth = fits("d1"), REFERENCE["truth"]
    loadings = structure_for("rr", arguments=(("d", "1"),)).loadings(_covariance(model))[:, 0]
    true = np.array([1.0, 0.8, -0.6, 1.2])
    np.testing.assert_allclose(np.outer(true, true), truth["d1_covariance"])
    cosine = abs(loadings @ true) / (np.linalg.norm(loadings) * np.linalg.norm(true))
    assert cosine > np.cos(np.radians(5.0)), np.degrees(np.arccos(cosine))
    assert abs(np.log(np.linalg.norm(loadings) / np.linalg.norm(true))) < 2.5 / np.sqrt(200)
    assert abs(_sigma(model) - truth["sigma"]) < 0.1 * truth["sigma"]
    beta = model.fixed_effects_.to_numpy()
    assert np.all(np.abs(beta - truth["means"]) < 2.5 * np.array(REFERENCE["d1"]["fixed_effects_se"]))


# -- the density of record ---------------------------------------------------------------------

def test_floor_moves_the_log_likelihood_by_less_than_1e_3(fits):
    """The fitted covariance is the rank-1 ``Lambda Lambda'`` plus 1e-8 of its mean variance
    times I: its three smallest eigenvalues are that floor; the exact Gaussian
    log-likelihood with it (the fit's, ``gaussian_marginal``, and scipy's dense one) is
    within 1e-3 of the exact rank-1 one (scipy with ``Lambda Lambda'`` itself)."""
    model = fits("d1")
    rr = structure_for("rr", arguments=(("d", "1"),))
    cov = _covariance(model)
    loadings = rr.loadings(cov)
    low_rank = loadings @ loadings.T
    floor = rr.floor * np.trace(low_rank) / 4
    np.testing.assert_allclose(cov, low_rank + floor * np.eye(4), rtol=1e-10, atol=1e-12)
    jitter = 1e-12 * np.trace(cov)  # the Cholesky factor's, as for every covariance (mixedfx.inference.layout)
    np.testing.assert_allclose(np.linalg.eigvalsh(cov)[:3], floor + jitter, rtol=1e-5)
    floored = _dense_log_likelihood(model, cov)
    params = model.model_parameters_
    np.testing.assert_allclose(gaussian_marginal(model.model_, params).log_likelihood, floored, rtol=1e-10)
    np.testing.assert_allclose(model.log_likelihood_, floored, rtol=1e-10)
    assert abs(floored - _dense_log_likelihood(model, low_rank)) < 1e-3


def test_joint_distribution_and_exact_likelihood_agree_with_scipy():
    """At an rr covariance (d = 2 over 4 coefficients): the fit's objective
    (``joint_log_prob``), the JointDistribution's ``log_prob`` and scipy's dense densities
    of ``(y, b)``; the exact marginal log-likelihood against scipy's."""
    rng = np.random.default_rng(5)
    n_ids, dim, sigma, beta = 6, 4, 0.6, np.array([1.0, -0.5])
    rr = structure_for("rr", arguments=(("d", "2"),))
    cov = rr.covariance(np.array([1.0, 0.5, -0.6, 0.9, 0.8, 0.5, -0.4]), dim).numpy()
    ids = np.repeat(np.arange(n_ids), dim).astype(np.int32)
    trait = np.tile(np.arange(dim), n_ids)
    X = np.column_stack([np.ones(ids.size), rng.normal(size=ids.size)])
    y = rng.normal(size=ids.size) + X @ beta
    term = RandomTermData("id", ids, np.eye(dim)[trait], n_ids, tuple("abcd"), covariance="rr",
                          covariance_args=(("d", "2"),))
    model = MixedModel(Gaussian(), X, y, (term,), ("Intercept", "x"))
    effects = rng.multivariate_normal(np.zeros(dim), cov, size=n_ids)
    scale_tril = np.linalg.cholesky(cov)
    family_params = {"sigma": np.float64(sigma)}
    objective = float(joint_log_prob(model.tensors(), [effects], fixed_effects=beta, random_scale_tril=[scale_tril],
                                     family=Gaussian(), family_params=family_params))
    joint = build_joint_distribution(model.tensors(), fixed_effects=beta, random_scale_tril=[scale_tril],
                                     family=Gaussian(), family_params=family_params)
    record = float(joint.log_prob({model.tensors().keys[0]: effects, RESPONSE: y}))
    dense = (stats.multivariate_normal(np.zeros(dim), cov).logpdf(effects).sum()
             + stats.norm(X @ beta + effects[ids, trait], sigma).logpdf(y).sum())
    # the floored covariance's condition number (about 1e8) costs scipy's logpdf digits
    np.testing.assert_allclose([objective, record], dense, rtol=0, atol=1e-6)
    np.testing.assert_allclose(objective, record, rtol=1e-12)
    marginal = gaussian_marginal(model, ModelParameters(beta, (scale_tril,), {"sigma": sigma})).log_likelihood
    V = np.kron(np.eye(n_ids), cov) + sigma**2 * np.eye(ids.size)
    np.testing.assert_allclose(marginal, stats.multivariate_normal(X @ beta, V).logpdf(y), rtol=1e-10)


# -- the structure -----------------------------------------------------------------------------

def test_covariance_loadings_and_parameter_count():
    """glmmTMB's parametrization: the loadings column by column below the diagonal,
    ``q d - d (d - 1) / 2`` of them; ``loadings`` rotates any factor of the covariance
    back to that lower-triangular form with a positive diagonal; 2 by default."""
    rr = structure_for("rr", arguments=(("d", "2"),))
    theta = np.array([1.0, 0.5, -0.6, 0.9, 0.8, 0.5, -0.4])
    loadings = np.array([[1.0, 0.0], [0.5, 0.8], [-0.6, 0.5], [0.9, -0.4]])
    cov = rr.covariance(theta, 4).numpy()
    low_rank = loadings @ loadings.T
    np.testing.assert_allclose(cov, low_rank + 1e-8 * np.trace(low_rank) / 4 * np.eye(4), rtol=1e-12)
    np.testing.assert_allclose(rr.loadings(cov), loadings, atol=1e-6)
    np.testing.assert_allclose(rr.unconstrained(cov), theta, atol=1e-6)
    rotation = np.array([[0.6, -0.8], [0.8, 0.6]])
    rotated = loadings @ rotation
    np.testing.assert_allclose(rr.loadings(rr._floored(tf.constant(rotated @ rotated.T), 4).numpy()), loadings,
                               atol=1e-6)
    assert [structure_for("rr", arguments=(("d", str(d)),)).n_params(4) for d in (1, 2, 3)] == [4, 7, 9]
    assert structure_for("rr") == rr and structure_for("rr", arguments=(("d", "1"),)) != rr


def test_projection_is_probabilistic_pca_and_maximizes():
    """The M-step (compiled, as the fit runs it): the d leading eigenvectors of the mean
    second moment ``S`` scaled by ``sqrt(lambda - noise)``, ``noise`` the floor of ``S``
    (1e-8 of its mean variance); at that noise its expected complete-data log-likelihood
    is above that of any nearby loadings (random perturbations), and the draws' rank-2
    truth is recovered."""
    rng = np.random.default_rng(2)
    rr = structure_for("rr", arguments=(("d", "2"),))
    truth = rr.covariance(np.array([1.0, 0.5, -0.6, 0.9, 0.8, 0.5, -0.4]), 4).numpy()
    draws = rng.multivariate_normal(np.zeros(4), truth + 0.05 * np.eye(4), size=400)
    S = draws.T @ draws / 400
    fitted = tf.function(rr.project)(draws.T @ draws, 400).numpy()
    values, vectors = np.linalg.eigh(S)
    noise = rr.floor * np.trace(S) / 4
    top = vectors[:, 2:] * np.sqrt(values[2:] - noise)
    np.testing.assert_allclose(rr.loadings(fitted) @ rr.loadings(fitted).T, top @ top.T, rtol=1e-8, atol=1e-10)

    def objective(loadings):
        cov = loadings @ loadings.T + noise * np.eye(4)
        return -np.linalg.slogdet(cov)[1] - np.trace(np.linalg.solve(cov, S))

    loadings = rr.loadings(fitted)
    best = objective(loadings)
    for _ in range(20):
        assert objective(loadings + 0.01 * np.tril(rng.normal(size=(4, 2)))) < best
    assert np.max(np.abs(fitted - truth)) < 0.25


# -- reports, predictions, simulations ---------------------------------------------------------

def test_reports_name_the_structure(fits):
    """``variance_components_`` as glmmTMB's VarCorr (4 sds, 6 correlations, residual);
    ``summary()`` names ``rr`` and its rank; AIC counts the 9 parameters."""
    model = fits("d1")
    components = model.variance_components_
    assert len(components) == 11
    assert components["var1"].iloc[:4].tolist() == [f"trait[t{k}]" for k in range(1, 5)]
    text = format_summary(model)
    assert "(rr, d = 1)" in text
    np.testing.assert_allclose(model.aic_, -2 * model.log_likelihood_ + 2 * 9)


def test_predict_and_simulate_read_the_covariance(fits):
    """predict adds each row's subject-and-trait effect; simulate draws new effects with
    the rank-1 covariance: two traits of one subject correlate as
    ``cov_12 / sqrt((var_1 + sigma^2)(var_2 + sigma^2))`` (0 without the term)."""
    model = fits("d1")
    effects = model.random_effects_["id"]
    column = DATA["trait"].map(lambda t: f"trait[{t}]")
    own = effects.to_numpy()[effects.index.get_indexer(DATA["id"]), effects.columns.get_indexer(column)]
    beta = model.fixed_effects_.to_numpy()[DATA["trait"].str[1:].astype(int) - 1]
    np.testing.assert_allclose(model.predict(DATA), beta + own, rtol=1e-10)
    sims = model.simulate(200, random_state=1).to_numpy()
    first = sims[(DATA["trait"] == "t1").to_numpy()][::2]  # the first replicate, subject order
    third = sims[(DATA["trait"] == "t3").to_numpy()][::2]
    cov, sigma = _covariance(model), _sigma(model)
    expected = cov[0, 2] / np.sqrt((cov[0, 0] + sigma**2) * (cov[2, 2] + sigma**2))
    observed = np.corrcoef((first - first.mean(1, keepdims=True)).ravel(),
                           (third - third.mean(1, keepdims=True)).ravel())[0, 1]
    assert abs(observed - expected) < 0.03, (observed, expected)


def test_refused_where_structures_are(fits):
    """Kenward-Roger degrees of freedom refuse rr as they refuse every structure nonlinear
    in its parameters (profile intervals profile its sds: tests/test_profile_rr.py)."""
    model = fits("d1")
    with pytest.raises(ParameterError, match=re.escape("not yet available for covariance structures nonlinear in their parameters (rr;")):
        kenward_roger_pieces(model.model_, model.model_parameters_)  # what ddf="kenward-roger" of a REML fit asks


# -- formula errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("formula, message, at", [
    ("y1 ~ x + rr(1 + x | id, d = 5)", "rr() has rank d = 5, which must be below its number of coefficients (2)",
     "rr("),
    ("y1 ~ x + rr(1 + x | id, 2)", "rr() has rank d = 2", "rr("),
    ("y1 ~ x + rr(1 + x | id)", "rr() has rank d = 2", "rr("),  # glmmTMB's default d = 2
    ("y1 ~ x + rr(1 | id, d = 1)", "rr() correlates coefficients: it needs at least two", "rr("),
    ("y1 ~ x + rr(1 + x | id, d = 0)", "rr(...)'s d must be a positive integer, not '0'", "d = 0"),
    ("y1 ~ x + rr(1 + x | id, d = 1.5)", "rr(...)'s d must be a positive integer, not '1.5'", "d = 1.5"),
    ("y1 ~ x + rr(1 + x | id, k = 1)", "rr(...) has no argument 'k'; it takes d", "k = 1"),
    ("y1 ~ x + rr(1 + x | id, d = 1, 2)", "rr(...) takes 1 argument(s) after the term: d", "2)"),
    ("y1 ~ x + cs(1 + x | id, d = 1)", "cs(...) takes no arguments after the term", ", d"),
])
def test_errors_point_at_the_term(formula, message, at):
    data = DATA.head(80).assign(x=np.arange(80) % 5 * 1.0)
    with pytest.raises(FormulaError, match=re.escape(message)) as info:
        mixedfx.MixedEffectsRegressor(formula, verbose=0).fit(data)
    assert caret_column(info.value) == formula.index(at)
    assert list(data.columns) == list(DATA.columns) + ["x"]  # the user's frame untouched


def test_parsed_rank_is_named_and_printed():
    """A positional rank is named ``d``; the spec prints glmmTMB's spelling."""
    (term,) = mixedfx.parse_formula("y ~ rr(0 + trait | id, 1)").random
    assert term.covariance_args == (("d", "1"),)
    assert str(term) == "rr(0 + trait | id, d = 1)"
