"""Structured covariances in GLMMs (issue 19: "it works for every family").

References: glmmTMB 1.1.5 (tests/fixtures/make_glmm_structure_fixtures.R), Laplace ML fits of
  glmm_structure_ar1.csv  40 subjects x 6 equally spaced times of Poisson counts,
      b ~ ar1(sd 0.7, rho 0.6), log mu = 1 + 0.1 time + b: ``ar1(0 + timef | subject)``;
  glmm_structure_cs.csv   60 herds x 4 periods of binomial counts out of 12, b ~ cs(sds 0.6,
      0.8, 1.0, 0.8, rho 0.5): ``cbind(incidence, healthy) ~ period + cs(0 + period | herd)``;
  glmm_structure_exp.csv  12 fields x 15 points x 2 replicates of Poisson counts, b ~ exp(sd
      0.7, range 2) over the plane: ``exp(x1 + x2 + 0 | field)`` (glmmTMB's ``numFactor``).
Acceptance: sds within 5 % (the GLMM tolerance of issue 17; the Gaussian structures take 3 %),
rho within 0.05, range within 5 %, fixed effects within a tenth of glmmTMB's standard error;
our Laplace approximation at glmmTMB's estimates is glmmTMB's logLik.

``tol`` bounds each estimate's Monte Carlo error by ``tol`` times its standard error, so a
0.1 SE tolerance needs ``tol=0.03`` (3.3 Monte Carlo errors): at the default 0.1 the ar1
intercept stopped 1.2 x 0.1 SE from glmmTMB's (0.8959 against 0.9134; seeds 1 and 2: 0.9076,
0.9136), Monte Carlo error, not a bias.  The spatial fit does not reach ``tol=0.03`` in 500
iterations (200 to 370 s): it runs at the default, and its fixed effects are held to 0.2 SE.
Why the intercept misses glmmTMB's 0.5337 (SE 0.094) by more than 0.1 SE: Monte Carlo error, not
a bias nor another optimum (measured 2026-12-07):
  * seeds 0, 1, 2 at tol 0.1: 0.5447, 0.5377, 0.5289 (+0.118, +0.043, -0.050 SE; mean +0.037 SE);
    seed 0 at tol 0.03 (500 iterations, not converged): 0.5241 (-0.102 SE);
  * not another optimum: at seed 0's estimates our Laplace logLik is -670.244 against -670.212 at
    glmmTMB's, and the exact one (importance sampling, 4,000 draws, the same draws at both
    points) is lower too, by 0.030 and 0.022 (two seeds): glmmTMB's estimates are the better by
    either likelihood, so the miss is no Laplace-versus-exact difference;
  * not the range dragging the intercept: at seed 0's covariance (range 1.770, 4 % above
    glmmTMB's 1.7006) both logLiks, Laplace and exact, peak in the intercept at 0.535 (a grid of
    0.01), glmmTMB's value, where the Monte Carlo EM average stands at 0.5447.
The range stops above glmmTMB's at tol 0.1 on all three seeds (1.770, 1.826, 1.800) and nearer at
tol 0.03 (1.743): EM's slow approach, which a smaller tol shortens.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES

import mixedfx
from mixedfx.model import ModelParameters, laplace_mode, marginal_log_likelihood
from mixedfx.model.covariance import term_structure

REFERENCE = json.loads((FIXTURES / "glmm_structures.json").read_text())

#: case: (formula, data, family, tol, tolerance of the fixed effects in glmmTMB's SEs)
CASES = {
    "poisson_ar1": ("y ~ time + ar1(0 + timef | subject)", "glmm_structure_ar1.csv", "poisson", 0.03, 0.1),
    "binomial_cs": ("cbind(incidence, healthy) ~ period + cs(0 + period | herd)", "glmm_structure_cs.csv",
                    "binomial", 0.03, 0.1),
    "poisson_exp": ("y ~ cov + exp(x1 + x2 + 0 | field)", "glmm_structure_exp.csv", "poisson", 0.1, 0.2),
}
#: each fit takes about 40 s on 2 cores alone (most of it compiling; 60 to 120 s on a
#: loaded machine): the spatial one runs in CI only (``-m "not slow"`` leaves it out)
PARAMS = [pytest.param("poisson_ar1"), pytest.param("binomial_cs"), pytest.param("poisson_exp", marks=pytest.mark.slow)]


def _data(case: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURES / CASES[case][1])


@pytest.fixture(scope="module")
def fits():
    """One fit per case, made when a test first asks for it."""
    cache = {}

    def get(case):
        if case not in cache:
            formula, _, family, tol, _ = CASES[case]
            cache[case] = mixedfx.glmer(formula, _data(case), family=family, random_state=0, verbose=0, tol=tol)
        return cache[case]

    return get


def _covariance(model) -> np.ndarray:
    return model.random_cov_[0].to_numpy()


def _structure_parameters(model) -> dict:
    """``variance_components_``'s structure rows, e.g. ``{"rho": 0.69}``."""
    components = model.variance_components_
    rows = components[components["var2"].notna()]
    return dict(zip(rows["var2"], rows["sdcor"]))


def _reference_covariance(case: str, model) -> np.ndarray:
    """glmmTMB's covariance in mixedfx's order of coefficients: ``timef`` and ``period``
    levels sort alike; the points of ``exp`` are rebuilt from glmmTMB's theta (log sd, log
    range) by the term's structure, since numFactor orders them otherwise."""
    ref = REFERENCE[case]
    if case == "poisson_exp":
        (term,) = model.model_.random_terms
        return term_structure(term).covariance(np.array(ref["theta"]), term.dim).numpy()
    return np.array(ref["covariance"])


# -- against glmmTMB ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", PARAMS)
def test_matches_glmmtmb(fits, case):
    """sds within 5 %, rho within 0.05 (range within 5 %), fixed effects within 0.1 SE
    (the spatial fit's 0.2 SE: see the module's docstring)."""
    model, ref = fits(case), REFERENCE[case]
    sds = np.sqrt(np.diag(_covariance(model)))
    np.testing.assert_allclose(sds, ref["sds"], rtol=0.05)
    parameters = _structure_parameters(model)
    if case == "poisson_exp":
        assert list(parameters) == ["range"]
        assert parameters["range"] == pytest.approx(ref["range"], rel=0.05)
    else:
        assert list(parameters) == ["rho"]
        assert abs(parameters["rho"] - np.array(ref["correlation"])[0, 1]) < 0.05
    fixed = np.array(list(ref["fixed_effects"].values()))
    tolerance = CASES[case][4] * np.array(ref["fixed_effects_se"])
    assert np.all(np.abs(model.fixed_effects_.to_numpy() - fixed) < tolerance), (
        model.fixed_effects_.to_numpy(), fixed)


@pytest.mark.parametrize("case", PARAMS)
def test_laplace_reproduces_glmmtmbs_loglik(fits, case):
    """Our Laplace approximation at glmmTMB's estimates is glmmTMB's logLik to 1e-3 (the
    structured covariance enters the prior of the mode search and the determinant); at
    our Monte Carlo EM estimates it lies just below glmmTMB's maximum (measured: 0.02 to
    0.03 below).  The modes at glmmTMB's estimates are glmmTMB's ``ranef`` (to 1e-4)."""
    model, ref = fits(case), REFERENCE[case]
    bound = model.model_
    theirs = ModelParameters(np.array(list(ref["fixed_effects"].values())),
                             (np.linalg.cholesky(_reference_covariance(case, model)),), {})
    assert marginal_log_likelihood(bound, theirs, n_draws=0).laplace == pytest.approx(ref["logLik"], abs=1e-3)
    modes = laplace_mode(bound, theirs).modes[0]
    if case != "poisson_exp":  # numFactor orders the points otherwise
        np.testing.assert_allclose(modes[:5], np.array(ref["ranef_head"]), atol=1e-4)
    assert ref["logLik"] - 0.1 < model.log_likelihood_laplace_ < ref["logLik"] + 0.02, (
        model.log_likelihood_laplace_, ref["logLik"])


# -- simulated truth ---------------------------------------------------------------------------

def test_ar1_recovers_the_simulated_truth(fits):
    """The counts' truth sd 0.7, rho 0.6, fixed effects (1, 0.1), each within 2.5 of
    glmmTMB's standard errors (sd 0.055, rho 0.073, delta method from vcov(full = TRUE));
    the fitted matrix is exactly ar1 (rho^lag)."""
    model, ref = fits("poisson_ar1"), REFERENCE["poisson_ar1"]
    cov, truth = _covariance(model), ref["truth"]
    sd, rho = np.sqrt(cov[0, 0]), _structure_parameters(model)["rho"]
    assert abs(sd - truth["sd"]) < 2.5 * ref["sd_se"]
    assert abs(rho - truth["rho"]) < 2.5 * ref["rho_se"]
    assert np.all(np.abs(model.fixed_effects_.to_numpy() - truth["fixed_effects"])
                  < 2.5 * np.array(ref["fixed_effects_se"]))
    lag = np.abs(np.subtract.outer(np.arange(6), np.arange(6)))
    # the estimate is ar1 at the window's mean parameters (CovarianceStructure.average;
    # the mean of the window's matrices was 0.6 % off ar1 at lag 5)
    np.testing.assert_allclose(cov, sd**2 * rho**lag, rtol=0.01)


@pytest.mark.slow
def test_exp_recovers_the_simulated_truth(fits):
    """The spatial counts' truth sd 0.7 and range 2 within 2.5 of glmmTMB's standard
    errors of log sd (0.09) and log range (0.27)."""
    model, ref = fits("poisson_exp"), REFERENCE["poisson_exp"]
    log_sd = np.log(np.sqrt(_covariance(model)[0, 0]))
    log_range = np.log(_structure_parameters(model)["range"])
    assert abs(log_sd - np.log(ref["truth"]["sd"])) < 2.5 * ref["theta_se"][0]
    assert abs(log_range - np.log(ref["truth"]["range"])) < 2.5 * ref["theta_se"][1]


# -- ranef, predict, simulate on a structured GLMM ---------------------------------------------

@pytest.mark.parametrize("case, group", [("poisson_ar1", "subject"), ("binomial_cs", "herd")])
def test_ranef_predict_and_simulate(fits, case, group):
    """ranef: one row per group, one column per time (period); its first five groups within
    0.08 of glmmTMB's conditional modes (ours are conditional means, sd about 0.6; measured
    0.065 Poisson, 0.070 binomial: the mean below the mode, the modes themselves agree to
    1e-7, test_laplace_reproduces_glmmtmbs_loglik).
    predict on the training rows: the first twelve within 8 % of glmmTMB's predict, and the
    fitted means follow the observed counts (correlation above 0.8); glmmTMB predicts at the
    modes, we at the conditional means, which lie below the modes on a log link (the
    posterior of b, exp(y b - mu e^b) times a normal, is skewed left): ours are 3.4 to 6.6 %
    lower on the first twelve Poisson rows.  simulate (new effects drawn with the
    structured covariance): the mean within 10 % and the zero fraction within 0.03 of the
    data's, and the correlation of the first two times of one group within 0.04 of the one
    the fitted covariance implies (0 when simulate ignores the structure's correlation)."""
    model, ref = fits(case), REFERENCE[case]
    data = _data(case)
    effects = model.random_effects_[group]
    assert effects.shape == (data[group].nunique(), np.array(ref["covariance"]).shape[0])
    np.testing.assert_allclose(effects.to_numpy()[:5], np.array(ref["ranef_head"]), atol=0.08)
    observed = data["y"] if case == "poisson_ar1" else data["incidence"]
    size = 1.0 if case == "poisson_ar1" else data["size"].to_numpy()
    fitted = model.predict(data)
    np.testing.assert_allclose(fitted[:12], ref["fitted_head"], rtol=0.08)
    assert np.corrcoef(fitted * size, observed)[0, 1] > 0.8
    sims = model.simulate(200, random_state=1).to_numpy()
    assert sims.shape == (len(data), 200)
    assert sims.mean() == pytest.approx(observed.mean(), rel=0.1)
    assert abs((sims == 0).mean() - (observed == 0).mean()) < 0.03
    n_groups = data[group].nunique()
    wide = sims.reshape(n_groups, -1, 200)  # rows sorted by group, then time
    first, second = wide[:, 0], wide[:, 1]
    simulated = np.corrcoef(first.ravel(), second.ravel())[0, 1]
    eta = model.predict(data.iloc[:2], include_random=False, type="link")
    implied = _implied_correlation(eta, _covariance(model)[:2, :2], size=1.0 if case == "poisson_ar1" else 12.0)
    assert abs(simulated - implied) < 0.04


def _implied_correlation(eta, cov, *, size):
    """The correlation of two counts of one group whose effects have covariance ``cov``:
    Poisson (``size`` 1.0, log link) or binomial out of ``size`` (logit), by the laws of
    total variance and covariance over 200,000 normal draws of the two effects."""
    b = np.random.default_rng(0).multivariate_normal(np.zeros(2), cov, size=200_000)
    if size == 1.0:
        mean = np.exp(np.asarray(eta) + b)
        variance = mean
    else:
        p = 1.0 / (1.0 + np.exp(-(np.asarray(eta) + b)))
        mean, variance = size * p, size * p * (1 - p)
    covariance = np.cov(mean.T)
    total = np.diag(covariance) + variance.mean(0)
    return covariance[0, 1] / np.sqrt(total[0] * total[1])
