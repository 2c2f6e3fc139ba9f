"""Prior weights (``sample_weight``, lme4's ``weights=``) for every family, and binomial
trials by ``trials=``.

The numbers come from tests/fixtures/make_weights_fixtures.R (lme4 1.1 and glmmTMB,
weights_fixtures.json holds the data it fitted): lmer's precision weights (sleepstudy),
glmer's Poisson and binomial weights (cbpp) and glmmTMB's negative binomial weights
(grouseticks).  The density of record, :func:`mixedfx.model.joint.response_log_prob`, is
checked against scipy.stats, and the fast paths (the exact Gaussian marginal, the Laplace
approximation) against lme4 at lme4's estimates.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES
from scipy import special, stats

import mixedfx
from mixedfx import DataError, MixedEffectsRegressor
from mixedfx._tf import tf
from mixedfx.design import RandomTermData, bind_data
from mixedfx.formula import parse_formula
from mixedfx.inference import FixedIterations
from mixedfx.model import (
    Gaussian,
    MixedModel,
    ModelParameters,
    NegativeBinomial,
    Ordinal,
    Poisson,
    Binomial,
    bind_model,
    gaussian_marginal,
    get_family,
    laplace_mode,
    marginal_log_likelihood,
    term_z,
)
from mixedfx.model.blocks import BlockSystem
from mixedfx.model.joint import response_log_prob

WEIGHTS = json.loads((FIXTURES / "weights_fixtures.json").read_text())
SLEEP = "Reaction ~ Days + (Days | Subject)"
CBPP_POISSON = "incidence ~ period + (1 | herd)"
CBPP_CBIND = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
#: lme4's Laplace log-likelihood at its own estimates agrees with ours to about 3e-4 (its
#: PIRLS stops short of the exact mode; the same gap without weights, see test_families).
LAPLACE_TOL = 1e-3


def _frame(name):
    frame = pd.DataFrame(WEIGHTS[name]["data"])
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].astype(str)
    return frame


def _model(family, formula, frame, **kwargs):
    return bind_model(get_family(family), bind_data(parse_formula(formula), frame, **kwargs))


def _params(fit, *, family_params=None):
    beta = np.array(list(fit["fixed_effects"].values()))
    return ModelParameters(beta, [np.array([[fit["theta"]]])], family_params or {})


def _lmer_params(fit):
    t, sigma = fit["theta"], fit["sigma"]
    scale_tril = sigma * np.array([[t[0], 0.0], [t[1], t[2]]])  # lme4's theta: Lambda by columns, relative to sigma
    return ModelParameters(np.array(list(fit["fixed_effects"].values())), [scale_tril], {"sigma": sigma})


# -- the density of record ------------------------------------------------------------------------------------------

def _tiny(family, response, weights, trials=None):
    term = RandomTermData("g", np.array([0, 0, 1, 1, 2], dtype=np.int32), None, 3)
    X = np.column_stack([np.ones(5), np.linspace(-1.0, 1.0, 5)])
    return MixedModel(family, X, np.asarray(response, dtype=float), (term,), ("Intercept", "x"), trials=trials,
                      weights=weights)


@pytest.mark.parametrize("name", ["gaussian", "poisson", "binomial", "negative_binomial", "ordinal"])
def test_weighted_log_prob_is_scipys(name):
    """Gaussian: row i normal with sd sigma / sqrt(w_i); every other family: w_i times the
    row's log-likelihood (scipy.stats), padding rows (row_weight 0) left out."""
    w = np.array([0.5, 2.0, 1.0, 3.0, 1.5])
    beta, b = np.array([0.3, 0.8]), np.array([[0.2], [-0.4], [0.1]])
    eta = 0.3 + 0.8 * np.linspace(-1.0, 1.0, 5) + b[[0, 0, 1, 1, 2], 0]
    trials, params = None, {}
    if name == "gaussian":
        family, y, params = Gaussian(), np.array([0.1, 1.2, -0.3, 2.0, 0.7]), {"sigma": 0.6}
        expected = stats.norm.logpdf(y, eta, 0.6 / np.sqrt(w))
    elif name == "poisson":
        family, y = Poisson(), np.array([0.0, 2.0, 1.0, 4.0, 3.0])
        expected = w * stats.poisson.logpmf(y, np.exp(eta))
    elif name == "binomial":
        family, y, trials = Binomial(), np.array([1.0, 3.0, 0.0, 5.0, 2.0]), np.array([2.0, 4.0, 3.0, 6.0, 2.0])
        expected = w * stats.binom.logpmf(y, trials, special.expit(eta))
    elif name == "negative_binomial":
        family, y, params = NegativeBinomial(), np.array([0.0, 2.0, 1.0, 7.0, 3.0]), {"dispersion": 2.5}
        expected = w * stats.nbinom.logpmf(y, 2.5, 2.5 / (2.5 + np.exp(eta)))
    else:
        family, y, params = Ordinal(n_categories=3), np.array([0.0, 2.0, 1.0, 2.0, 1.0]), {"cutpoints": [0.0, 1.1]}
        upper = np.append(special.expit(np.array([0.0, 1.1])[None, :] - eta[:, None]), np.ones((5, 1)), axis=1)
        lower = np.append(np.zeros((5, 1)), upper[:, :-1], axis=1)
        expected = w * np.log((upper - lower)[np.arange(5), y.astype(int)])
    model = _tiny(family, y, w, trials)
    tensors = model.tensors()
    family_params = {k: tf.constant(v, tf.float64) for k, v in params.items()}
    total = response_log_prob(tensors, [tf.constant(b)], fixed_effects=beta, family=family, family_params=family_params)
    assert float(total) == pytest.approx(expected.sum(), rel=1e-10)
    padded = tensors.__class__(**{**tensors.__dict__, "row_weight": tf.constant([1.0, 1.0, 0.0, 1.0, 1.0], tf.float64)})
    total = response_log_prob(padded, [tf.constant(b)], fixed_effects=beta, family=family, family_params=family_params)
    assert float(total) == pytest.approx(expected.sum() - expected[2], rel=1e-10)


def test_laplace_alone_skips_the_sampling_and_nothing_else():
    """n_draws=0 (the profile's and the boundary test's deviance) returns the same
    Laplace value and modes as the sampled estimate, and says that nothing was sampled."""
    model = _tiny(Poisson(), [0.0, 2.0, 1.0, 4.0, 3.0], np.array([0.5, 2.0, 1.0, 3.0, 1.5]))
    params = ModelParameters(np.array([0.3, 0.8]), [np.array([[0.7]])], {})
    alone, sampled = marginal_log_likelihood(model, params, n_draws=0), marginal_log_likelihood(model, params)
    assert alone.laplace == sampled.laplace == alone.log_likelihood
    assert alone.log_likelihood != sampled.log_likelihood and np.isfinite(sampled.standard_error)
    assert np.isinf(alone.standard_error) and alone.method == "Laplace"
    np.testing.assert_array_equal(alone.conditional_modes[0], sampled.conditional_modes[0])


# -- Gaussian: lmer's precision weights, by the exact path --------------------------------------------------------

@pytest.mark.parametrize("fit, scale", [("ml", 1.0), ("ml_double", 2.0), ("reml", 1.0)])
def test_exact_gaussian_matches_lmer_weights(fit, scale):
    """At lmer's estimates the exact path gives lmer's log-likelihood (or REML criterion)
    and its fixed effects (the GLS estimate).  Doubling the weights (lme4's numbers)
    leaves the fixed effects, the random effects' sds and the likelihood as they were
    and doubles sigma^2: theta, relative to sigma, shrinks by sqrt(2)."""
    frame, reference = _frame("sleepstudy"), WEIGHTS["sleepstudy"][fit]
    model = _model("gaussian", SLEEP, frame, sample_weight=scale * frame["w"])
    exact = gaussian_marginal(model, _lmer_params(reference), profile_fixed_effects=True)
    log_likelihood = exact.reml_log_likelihood if fit == "reml" else exact.log_likelihood
    assert log_likelihood == pytest.approx(reference["logLik"], abs=1e-6)
    np.testing.assert_allclose(exact.gls_fixed_effects, list(reference["fixed_effects"].values()), rtol=1e-8)
    if fit == "ml_double":
        single = WEIGHTS["sleepstudy"]["ml"]
        assert reference["sigma"] == pytest.approx(np.sqrt(2.0) * single["sigma"], rel=1e-4)
        np.testing.assert_allclose(reference["sdcor"][:3], single["sdcor"][:3], atol=5e-3, rtol=1e-3)


def test_exact_gaussian_is_the_laplace_of_the_density_of_record():
    """For a Gaussian the Laplace approximation is exact: the Newton solver on the
    weighted density of record (Family.weighted_log_prob) reproduces the exact path
    (which scales the rows by sqrt(w))."""
    frame = _frame("sleepstudy")
    model = _model("gaussian", SLEEP, frame, sample_weight=frame["w"])
    params = _lmer_params(WEIGHTS["sleepstudy"]["ml"])
    mode = laplace_mode(model, params)
    scaled = [term_z(t, model.n_obs) @ L for t, L in zip(model.random_terms, params.random_scale_tril)]
    laplace = mode.objective - 0.5 * BlockSystem(model.random_terms, scaled, mode.weight).logdet
    assert laplace == pytest.approx(gaussian_marginal(model, params).log_likelihood, abs=1e-7)


def test_gaussian_weights_are_precisions_not_replications():
    """lmer's Gaussian weights are precisions: a weight of 2 is not a duplicated row
    (the residual variance counts rows, not weights), so the two likelihoods differ by
    more than the constant sum(log w) / 2."""
    frame = _frame("sleepstudy")
    params = _lmer_params(WEIGHTS["sleepstudy"]["ml"])
    weighted = gaussian_marginal(_model("gaussian", SLEEP, frame, sample_weight=frame["w"]), params).log_likelihood
    replicated = frame.loc[frame.index.repeat(frame["w"])]
    repeated = gaussian_marginal(_model("gaussian", SLEEP, replicated), params).log_likelihood
    assert abs(weighted - repeated) > 100.0


# -- GLMMs: each row's log-likelihood times its weight, by the Laplace path ---------------------------------------

def test_poisson_weights_match_glmer_and_replicated_rows():
    frame, fits = _frame("cbpp"), WEIGHTS["cbpp"]
    weighted = _model("poisson", CBPP_POISSON, frame, sample_weight=frame["w"])
    result = marginal_log_likelihood(weighted, _params(fits["poisson"]))
    assert result.laplace == pytest.approx(fits["poisson"]["logLik"], abs=LAPLACE_TOL)
    # glmer on the replicated rows: the same estimates and likelihood
    np.testing.assert_allclose(list(fits["poisson_replicated"]["fixed_effects"].values()),
                               list(fits["poisson"]["fixed_effects"].values()), rtol=1e-7)
    replicated = _model("poisson", CBPP_POISSON, frame.loc[frame.index.repeat(frame["w"])])
    assert marginal_log_likelihood(replicated, _params(fits["poisson"])).laplace == pytest.approx(result.laplace,
                                                                                                rel=1e-10)


def test_binomial_trials_three_ways_and_prior_weights_on_top():
    """cbind(k, n - k), k with trials=n and the proportion with trials=n are one model;
    a proportion with sample_weight=n is the deprecated spelling of the last.  Prior
    weights on cbind multiply each row's log-likelihood: glmer reports the same
    log-likelihood for cbind with weights=w, and for prop ~ with weights = w n up to the
    binomial coefficients' constant."""
    frame, fits = _frame("cbpp"), WEIGHTS["cbpp"]
    params = _params(fits["binomial"])
    cbind = _model("binomial", CBPP_CBIND, frame)
    proportion = frame.assign(prop=frame["incidence"] / frame["size"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_trials = _model("binomial", "incidence ~ period + (1 | herd)", frame, trials=frame["size"])
        by_proportion = _model("binomial", "prop ~ period + (1 | herd)", proportion, trials=frame["size"])
    with pytest.warns(FutureWarning, match="pass fit\\(..., trials=n\\)"):
        deprecated = _model("binomial", "prop ~ period + (1 | herd)", proportion, sample_weight=frame["size"])
    for other in (by_trials, by_proportion, deprecated):
        np.testing.assert_array_equal(other.response, cbind.response)
        np.testing.assert_array_equal(other.trials, cbind.trials)
        assert other.weights is None
    assert marginal_log_likelihood(cbind, params).laplace == pytest.approx(fits["binomial"]["logLik"],
                                                                           abs=LAPLACE_TOL)
    weighted_fit = fits["binomial_weighted"]
    weighted = _model("binomial", CBPP_CBIND, frame, sample_weight=frame["w"])
    laplace = marginal_log_likelihood(weighted, _params(weighted_fit)).laplace
    assert laplace == pytest.approx(weighted_fit["logLik"], abs=LAPLACE_TOL)
    k, n, w = (frame[c].to_numpy(dtype=float) for c in ("incidence", "size", "w"))

    def log_choose(a, b):
        return special.gammaln(a + 1) - special.gammaln(b + 1) - special.gammaln(a - b + 1)

    constant = np.sum(log_choose(w * n, w * k) - w * log_choose(n, k))
    assert laplace + constant == pytest.approx(fits["binomial_weighted_prop"]["logLik"], abs=LAPLACE_TOL)


def test_negative_binomial_weights_match_glmmtmb():
    frame, fit = _frame("grouseticks"), WEIGHTS["grouseticks"]["negative_binomial"]
    model = _model("negative_binomial", "TICKS ~ YEAR + (1 | BROOD)", frame, sample_weight=frame["w"])
    params = ModelParameters(np.array(list(fit["fixed_effects"].values())), [np.array([[fit["sd"]]])],
                             {"dispersion": fit["dispersion"]})
    assert marginal_log_likelihood(model, params).laplace == pytest.approx(fit["logLik"], abs=LAPLACE_TOL)


@pytest.mark.parametrize("family", ["poisson", "binomial", "bernoulli", "negative_binomial", "ordinal"])
def test_integer_weights_are_replicated_rows(family):
    """Every family but the Gaussian: weights 0-3 give the Laplace log-likelihood and the
    conditional modes of the data with each row repeated that many times (zero: dropped)."""
    rng = np.random.default_rng(3)
    n = 60
    frame = pd.DataFrame({"x": rng.normal(size=n), "g": rng.integers(0, 8, n).astype(str)})
    eta = 0.4 * frame["x"] + rng.normal(size=8)[frame["g"].astype(int)]
    response = {"poisson": rng.poisson(np.exp(eta)), "negative_binomial": rng.poisson(np.exp(eta)),
                "binomial": rng.binomial(4, special.expit(eta)), "bernoulli": rng.binomial(1, special.expit(eta)),
                "ordinal": np.digitize(eta + rng.logistic(size=n), [-0.5, 0.7])}[family]
    frame["y"], frame["n"] = response, 4
    w = rng.integers(0, 4, n)
    formula = "cbind(y, n - y) ~ x + (1 | g)" if family == "binomial" else "y ~ x + (1 | g)"
    kind = get_family(family)
    if family == "ordinal":
        kind = kind.for_classes([0, 1, 2])
    weighted = bind_model(kind, bind_data(parse_formula(formula), frame, sample_weight=w))
    repeated = bind_model(kind, bind_data(parse_formula(formula), frame.loc[frame.index.repeat(w)]))
    family_params = {"negative_binomial": {"dispersion": 3.0}, "ordinal": {"cutpoints": np.array([0.0, 1.3])}}
    params = ModelParameters(np.array([0.2, 0.5]), [np.array([[0.7]])], family_params.get(family, {}))
    one, other = marginal_log_likelihood(weighted, params), marginal_log_likelihood(repeated, params)
    assert one.laplace == pytest.approx(other.laplace, rel=1e-9)
    np.testing.assert_allclose(one.conditional_modes[0], other.conditional_modes[0], atol=1e-8)


# -- the estimators ------------------------------------------------------------------------------------------------

def test_weighted_lmer_fit_by_monte_carlo_em():
    """lmer(..., weights="w") (the estimator's fit with sample_weight underneath) reaches
    lmer's weighted estimates: the fixed effects (GLS at the estimated variances) within a
    tenth of their standard errors, the sds within the fit's Monte Carlo error."""
    frame, reference = _frame("sleepstudy"), WEIGHTS["sleepstudy"]["ml"]
    model = mixedfx.lmer(SLEEP, frame, weights="w", random_state=0, verbose=0)
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    np.testing.assert_allclose(model.fixed_effects_, list(reference["fixed_effects"].values()), atol=0.1 * se.min())
    sds = model.variance_components_["sdcor"].to_numpy()[[0, 1, 3]]
    expected = np.array(reference["sdcor"])[[0, 1, 3]]
    assert np.all(np.abs(sds - expected) < 0.05 * expected), (sds, expected)
    assert model.log_likelihood_ == pytest.approx(reference["logLik"], abs=0.1)


def test_weighted_glmer_poisson_fit_by_monte_carlo_em():
    """The Poisson estimator with sample_weight reaches glmer's weighted estimates within
    five Monte Carlo standard errors plus a tenth of their standard errors; glmer's
    weights= as values per row."""
    frame, reference = _frame("cbpp"), WEIGHTS["cbpp"]["poisson"]
    model = mixedfx.glmer(CBPP_POISSON, frame, family="poisson", weights=frame["w"].to_numpy(), random_state=0,
                          verbose=0)
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    expected = np.array(list(reference["fixed_effects"].values()))
    mcse = model.fit_summary_.mcse[:len(expected)]
    assert np.all(np.abs(model.fixed_effects_.to_numpy() - expected) < 5 * mcse + 0.1 * se), (model.fixed_effects_,
                                                                                             expected)
    sd = float(model.variance_components_["sdcor"].iloc[0])
    assert sd == pytest.approx(reference["theta"], rel=0.05)


@pytest.mark.filterwarnings("ignore::mixedfx.SamplerWarning")  # 10 iterations: the draws' R-hat is not the point
def test_zero_weights_drop_rows_and_refit_identically():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=80), "g": rng.integers(0, 8, 80).astype(str)})
    frame["y"] = frame["x"] + rng.normal(size=8)[frame["g"].astype(int)] + rng.normal(size=80)
    w = np.ones(80)
    w[[3, 10, 11]] = 0.0
    settings = dict(random_state=0, verbose=0, stopping_rule=FixedIterations(n_iter=10, n_average=5))
    before = frame.copy()
    weighted = MixedEffectsRegressor("y ~ x + (1 | g)", **settings).fit(frame, sample_weight=w)
    pd.testing.assert_frame_equal(frame, before)  # the user's data unchanged
    assert weighted.dropped_rows_.tolist() == [3, 10, 11] and weighted.n_obs_ == 77
    dropped = MixedEffectsRegressor("y ~ x + (1 | g)", **settings).fit(frame.drop(index=[3, 10, 11]))
    # to rounding (weights of one multiply in a different XLA fusion order: 5e-16 measured);
    # one kept zero-weight row moves them by about 1e-2
    np.testing.assert_allclose(weighted.fixed_effects_, dropped.fixed_effects_, rtol=1e-12)


@pytest.mark.parametrize("weights, match", [
    ([1.0, 1.0, -2.0], r"sample_weight must be finite and non-negative; position 2 holds -2\.0"),
    ([1.0, np.nan, 1.0], r"sample_weight must be finite and non-negative; position 1 holds nan"),
    ([1.0, np.inf, 1.0], r"sample_weight must be finite and non-negative; position 1 holds inf"),
    ([0.0, 0.0, 0.0], r"sample_weight is zero for every row"),
    ([1.0, 1.0], r"sample_weight must hold 3 values"),
])
def test_bad_weights_are_refused_by_position(weights, match):
    frame = pd.DataFrame({"y": [1.0, 2.0, 4.0], "x": [0.0, 1.0, 2.0], "g": list("aba")})
    with pytest.raises(DataError, match=match):
        bind_data(parse_formula("y ~ x + (1 | g)"), frame, sample_weight=weights)


def test_lmer_and_glmer_name_a_missing_weights_column():
    frame = pd.DataFrame({"y": [1.0, 2.0, 4.0], "x": [0.0, 1.0, 2.0], "g": list("aba"), "wt": [1.0, 2.0, 1.0]})
    with pytest.raises(DataError, match=r"weights='w' names no column of the data. Did you mean 'wt'\?"):
        mixedfx.lmer("y ~ x + (1 | g)", frame, weights="w")
    with pytest.raises(DataError, match=r"trials='n' names no column of the data"):
        mixedfx.glmer("y ~ x + (1 | g)", frame, family="binomial", trials="n")


def test_bad_trials_are_refused():
    frame = pd.DataFrame({"k": [1.0, 2.0, 0.0], "n": [2.0, 3.0, 1.0], "g": list("aba")})
    with pytest.raises(DataError, match=r"trials must be positive whole numbers; position 1 holds 2\.5"):
        bind_data(parse_formula("k ~ 1 + (1 | g)"), frame, trials=[2.0, 2.5, 1.0])
    with pytest.raises(DataError, match=r"either by cbind\(successes, failures\) or by trials=, not both"):
        bind_data(parse_formula("cbind(k, n - k) ~ 1 + (1 | g)"), frame, trials=frame["n"])
