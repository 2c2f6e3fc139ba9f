"""The inverse Gaussian family (mixedfx/model/glmmtmb_families.py, ``InverseGaussian``):
its density against the JointDistribution and scipy, its fit against lme4's
``glmer(..., family = inverse.gaussian(link = "log"))`` and against the maximum-likelihood
fit computed in R, and against simulated truth.

The data, the lme4 fits and the R reference come from
tests/fixtures/make_inverse_gaussian_fixtures.R (true values in that script and in each
fixture's ``truth``).  lme4's glmer is not the maximum-likelihood fit of a family with a
dispersion (its penalised deviance ignores the dispersion, VarCorr's sds are
``theta * sigma(fit)``): that script also maximises the exact marginal likelihood of the
one-factor case (``exact_ml``: ``integrate()`` per group with ``statmod::dinvgauss``), the
fit Monte Carlo EM targets, and evaluates the Laplace approximation at lme4's estimates.
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, objective_and_record
from scipy import stats

import mixedfx
from mixedfx import DataError, ParameterError
from mixedfx._tf import tf
from mixedfx.design import RandomTermData
from mixedfx.explained_variance import variance_decomposition
from mixedfx.model import (
    RESPONSE,
    InverseGaussian,
    MixedModel,
    ModelParameters,
    build_joint_distribution,
    get_family,
    marginal_log_likelihood,
)

with open(FIXTURES / "lme4_inverse_gaussian.json") as _handle:
    REFERENCE = json.load(_handle)

CASES = {"one": "y ~ x + (1 | g)", "crossed": "y ~ x + (1 | g1) + (1 | g2)"}


def load_data(case: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURES / REFERENCE[case]["data"])


def renamed(values: dict) -> dict:
    """R's coefficient names in formulaic's ("(Intercept)" -> "Intercept")."""
    return {k.replace("(Intercept)", "Intercept"): v for k, v in values.items()}


@pytest.fixture(scope="module")
def fits():
    """Each case fitted once (lazily: a test asks for the cases it needs)."""
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = mixedfx.glmer(CASES[case], load_data(case), family="inverse.gaussian", tol=0.05,
                                        random_state=0, verbose=0)
        return cache[case]

    return get


# -- the density ---------------------------------------------------------------------------

def _random_model(rng, *, n=60, levels=(7, 4)):
    """A two-factor model with an offset whose response is drawn from the
    JointDistribution itself, at random parameters."""
    family = InverseGaussian()
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    terms = tuple(RandomTermData(f"g{k}", rng.integers(0, q, n).astype(np.int32), None, q)
                  for k, q in enumerate(levels))
    offset = 0.3 * rng.normal(size=n)
    beta, sds = rng.normal(scale=0.5, size=2), rng.uniform(0.3, 1.0, size=len(levels))
    family_params = {"dispersion": np.float64(rng.uniform(0.1, 2.0))}
    placeholder = MixedModel(family, X, np.full(n, 0.5), terms, ("Intercept", "x"), offset=offset)
    joint = build_joint_distribution(placeholder.tensors(), fixed_effects=beta,
                                     random_scale_tril=[np.array([[s]]) for s in sds], family=family,
                                     family_params=family_params)
    draw = joint.sample(seed=(int(rng.integers(1 << 30)), 7))
    model = MixedModel(family, X, draw[RESPONSE].numpy(), terms, ("Intercept", "x"), offset=offset)
    effects = [draw[f"g{k}"].numpy() for k in range(len(levels))]
    return model, joint, effects, beta, sds, family_params


@pytest.mark.parametrize("seed", [1, 2])
def test_fit_objective_is_the_joint_distributions_log_prob(seed):
    """The fit's objective (prior plus the family's log_prob) equals the
    JointDistribution's log_prob to 1e-10 relative, with an offset."""
    model, joint, effects, beta, sds, family_params = _random_model(np.random.default_rng(seed))
    objective, record = objective_and_record(model, joint, effects, beta, sds, family_params)
    assert np.isfinite(record)
    assert objective == pytest.approx(record, rel=1e-10)


def test_each_rows_density_is_scipys_invgauss():
    """Each row's log_prob is scipy's ``invgauss(mu * phi, scale = 1 / phi)`` (mean mu,
    shape lambda = 1 / phi) to 1e-10, and the family's mean and variance ``phi mu^3`` are
    the distribution's."""
    model, _, effects, beta, _, params = _random_model(np.random.default_rng(5))
    family, phi = model.family, float(params["dispersion"])
    eta = model.fixed_design @ beta + model.offset + sum(b[t.group_index, 0] for b, t in zip(effects, model.random_terms))
    ours = family.log_prob(tf.constant(eta), params, tf.constant(model.response)).numpy()
    np.testing.assert_allclose(ours, stats.invgauss.logpdf(model.response, np.exp(eta) * phi, scale=1.0 / phi),
                               rtol=1e-10)
    dist = family.distribution(tf.constant(eta), params)
    np.testing.assert_allclose(family.mean(eta, params), dist.mean().numpy(), rtol=1e-10)
    np.testing.assert_allclose(family.variance(family.mean(eta, params), params), phi * np.exp(3 * eta), rtol=1e-10)
    np.testing.assert_allclose(dist.variance().numpy(), phi * np.exp(3 * eta), rtol=1e-10)


def test_a_dispersion_model_gives_each_row_its_dispersion():
    """With a ``dispformula``, row ``i``'s density is scipy's at dispersion
    ``exp(z_i' d)`` (no lme4 or glmmTMB reference fits one: the density alone is checked)."""
    family = InverseGaussian().with_dispersion_model(("Intercept", "z"))
    rng = np.random.default_rng(3)
    design = np.column_stack([np.ones(8), rng.normal(size=8)])
    coefficients, eta, y = np.array([-0.5, 0.7]), rng.normal(size=8), rng.uniform(0.2, 4.0, size=8)
    phi = np.exp(design @ coefficients)
    ours = family.log_prob(tf.constant(eta), {"disp": coefficients}, tf.constant(y), trials=design).numpy()
    np.testing.assert_allclose(ours, stats.invgauss.logpdf(y, np.exp(eta) * phi, scale=1.0 / phi), rtol=1e-10)


def test_fisher_weight_is_the_expected_information():
    """``1 / (phi mu)`` equals the mean squared score about eta over the family's draws."""
    family = InverseGaussian()
    eta = tf.constant([-1.0, 0.0, 1.5], tf.float64)
    params = {"dispersion": tf.constant(0.6, tf.float64)}
    samples = family.distribution(eta, params).sample(40000, seed=(3, 4))
    tiled = tf.tile(eta[None, :], [40000, 1])
    with tf.GradientTape() as tape:
        tape.watch(tiled)
        total = tf.reduce_sum(family.distribution(tiled, params).log_prob(samples))
    empirical = tf.reduce_mean(tf.square(tape.gradient(total, tiled)), axis=0).numpy()
    np.testing.assert_allclose(family.fisher_weight(eta, params).numpy(), empirical, rtol=0.05)


# -- against R -----------------------------------------------------------------------------

def test_matches_the_maximum_likelihood_fit_computed_in_r(fits):
    """The fit Monte Carlo EM targets, computed in R (exact marginal likelihood by
    integrate(), maximised): fixed effects within 0.1 of its SE, the sd and the
    dispersion within 5 %."""
    model, reference = fits("one"), REFERENCE["one"]["exact_ml"]
    se = renamed(reference["fixed_effects_se"])
    for name, value in renamed(reference["fixed_effects"]).items():
        assert abs(model.fixed_effects_[name] - value) < 0.1 * se[name], (name, model.fixed_effects_[name], value)
    sd = model.variance_components_.set_index("group")["sdcor"]["g"]
    assert sd == pytest.approx(reference["sd"], rel=0.05)
    assert model.model_parameters_.family_params["dispersion"] == pytest.approx(reference["dispersion"], rel=0.05)
    assert model.fit_summary_.converged


@pytest.mark.parametrize("case", ["one", pytest.param("crossed", marks=pytest.mark.slow)])
def test_matches_lme4s_glmer_where_it_is_comparable(fits, case):
    """lme4's glmer(inverse.gaussian(link = "log")): the slope within 0.1 SE; the
    intercept within 0.2 SE (lme4's own two optimizers put it 0.12 SE apart on the
    one-factor data); the dispersion within 10 % of lme4's sigma(fit)^2, a Pearson
    moment estimate (measured 2.9 % and 7.9 %; its inverse would be off 10-fold).
    lme4's sds are not compared: its penalised deviance weighs |u|^2 without the
    dispersion, and its sds come out 22-26 % below the maximum-likelihood ones (those are
    checked against R's exact fit above)."""
    model, fixture = fits(case), REFERENCE[case]
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    for j, (name, value) in enumerate(renamed(fixture["fixed_effects"]).items()):
        allowed = 0.1 if name == "x" else 0.2
        assert abs(model.fixed_effects_[name] - value) < allowed * se[j], (name, model.fixed_effects_[name], value)
    assert model.model_parameters_.family_params["dispersion"] == pytest.approx(fixture["sigma"] ** 2, rel=0.10)


def _bound_model(model, case):
    data = load_data(case)
    response, trials = model.response_design_.evaluate(data)
    response, trials = model.family_.validate_response(response, trials=trials, name="y")
    terms = model.random_design_.materialize(data)
    bound = MixedModel(model.family_, model.fixed_design_.transform(data), response, terms,
                       model.fixed_design_.column_names, trials=trials)
    return bound


def test_laplace_reproduces_rs_at_lme4s_and_at_the_ml_estimates(fits):
    """Our Laplace approximation equals the one computed in R with statmod's density
    (to 1e-3), at lme4's estimates (sd theta * sigma, dispersion sigma^2) and at R's
    maximum-likelihood estimates, and 2000 importance draws give R's exact marginal
    log-likelihood (integrate()) within 4 Monte Carlo SEs; lme4's own logLik (-628.97) is not this number: it
    adds inverse.gaussian()$aic with the dispersion dev / n to a penalised deviance that
    ignores the dispersion.  Our fit's logLik lies within 0.4 below R's exact maximum."""
    model, fixture = fits("one"), REFERENCE["one"]
    bound = _bound_model(model, "one")
    names = model.fixed_design_.column_names
    lme4 = ModelParameters(np.array([renamed(fixture["fixed_effects"])[c] for c in names]),
                           np.array([fixture["at_lme4_estimates"]["sd"]]),
                           {"dispersion": fixture["at_lme4_estimates"]["dispersion"]})
    assert marginal_log_likelihood(bound, lme4, n_draws=0).laplace == pytest.approx(
        fixture["at_lme4_estimates"]["laplace"], abs=1e-3)  # measured: 4e-6
    sampled = marginal_log_likelihood(bound, lme4, n_draws=2000, seed=1)  # importance sampling: R's exact one
    assert abs(sampled.log_likelihood - fixture["at_lme4_estimates"]["exact"]) < 4.0 * sampled.standard_error
    ml = fixture["exact_ml"]
    at_ml = ModelParameters(np.array([renamed(ml["fixed_effects"])[c] for c in names]), np.array([ml["sd"]]),
                            {"dispersion": ml["dispersion"]})
    assert marginal_log_likelihood(bound, at_ml, n_draws=0).laplace == pytest.approx(ml["laplace_at_ml"], abs=1e-3)
    # the fit's own logLik (300 draws at its estimates) was measured 0.26 below R's maximum
    assert ml["logLik"] - 0.4 < model.log_likelihood_ < ml["logLik"] + 0.05, (model.log_likelihood_, ml["logLik"])


@pytest.mark.parametrize("case", ["one", pytest.param("crossed", marks=pytest.mark.slow)])
def test_recovers_the_simulated_truth(fits, case):
    """Fixed effects within 3.5 SE of the values simulated from, sds within 3.5 of their
    asymptotic relative SE, the dispersion within 20 % (its relative SE is sqrt(2/n),
    under 6.5 %)."""
    model, truth = fits(case), REFERENCE[case]["truth"]
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    sds = model.variance_components_.set_index("group")["sdcor"]
    for name, value in truth.items():
        if name in model.fixed_effects_.index:
            j = list(model.fixed_effects_.index).index(name)
            assert abs(model.fixed_effects_[name] - value) < 3.5 * se[j], (name, model.fixed_effects_[name])
        elif name in model.random_design_.factors:
            levels = model.random_design_.factors[name].num_levels
            assert abs(np.log(sds[name] / value)) < 3.5 / np.sqrt(2 * levels), (name, sds[name])
        else:
            estimate = model.model_parameters_.family_params[name]
            assert estimate == pytest.approx(value, rel=0.20), (name, estimate)


# -- what the fitted model answers ----------------------------------------------------------

def test_quantiles_intervals_and_simulations_follow_the_fitted_family(fits):
    """The 2.5 % and 97.5 % response quantiles at the conditional means hold 95 % of the
    training responses (within 3.5 binomial SEs); predict_interval holds at least that;
    simulate()'s 50,000 draws are positive, their mean is the conditional mean to 2 % and
    their mean squared Pearson residual ``(y - mu)^2 / mu^3`` is the fitted dispersion to
    6 % (its relative SE is sqrt((2 + 15 phi mu) / 50000), about 1.5 %; a dispersion read
    as its inverse, or 20 % off, is not)."""
    model, data = fits("one"), load_data("one")
    y, mean, params = data["y"].to_numpy(), model.predict(data), model.model_parameters_.family_params
    lower, upper = (model.family_.response_quantile(mean, q, params) for q in (0.025, 0.975))
    band = 3.5 * np.sqrt(0.95 * 0.05 / len(data))
    assert abs(np.mean((y >= lower) & (y <= upper)) - 0.95) < band
    interval = model.predict_interval(data, alpha=0.05)
    assert np.mean((y >= interval["lower"]) & (y <= interval["upper"])) > 0.95 - band
    draws = model.simulate(100, random_state=0, re_form=None).to_numpy()
    assert np.all(draws > 0)
    assert np.mean(draws) == pytest.approx(np.mean(mean), rel=0.02)
    pearson = np.mean((draws - mean[:, None]) ** 2 / mean[:, None] ** 3)
    assert pearson == pytest.approx(params["dispersion"], rel=0.06)


def test_summary_aic_and_r2(fits, capsys):
    """The summary prints the dispersion (R's sigma^2); AIC counts 4 parameters as lme4's
    df does (2 fixed effects, the sd, the dispersion); r2's distribution-specific variance
    is Nakagawa's lognormal ``log1p(phi mu)`` (``V(mu) / mu^2 = phi mu``)."""
    model = fits("one")
    model.summary()
    phi = model.model_parameters_.family_params["dispersion"]
    assert f"Dispersion parameter for inverse.gaussian family (sigma^2): {phi:.4g}" in capsys.readouterr().out
    assert mixedfx.results.count_parameters(model) == 4
    assert model.aic_ == pytest.approx(-2.0 * model.log_likelihood_ + 8.0)
    parts = variance_decomposition(model, null_intercept=0.4)
    assert parts["var_distribution"] == pytest.approx(np.log1p(phi * np.exp(0.4)), rel=1e-12)


# -- names and bad input -------------------------------------------------------------------

def test_reached_by_lme4s_and_mixedfxs_names():
    for name in ("inverse_gaussian", "inverse.gaussian", "Inverse.Gaussian"):
        assert isinstance(get_family(name), InverseGaussian)
    assert get_family("inverse.gaussian").link == "log"


@pytest.mark.parametrize("link", ["1/mu^2", "inverse", "identity"])
def test_links_other_than_log_are_refused(link):
    with pytest.raises(ParameterError, match=f"log link only .* got '{link}'".replace("^", r"\^")):
        InverseGaussian(link_name=link)


@pytest.mark.parametrize("values, match", [
    ([1.0, 2.0, 0.0, 3.0], r"inverse Gaussian response 'wait_min' must be positive; found 0\.0 \(10 row"),
    ([1.0, -2.0, 1.0, 3.0], r"inverse Gaussian response 'wait_min' must be positive; found -2\.0"),
])
def test_a_response_at_or_below_zero_is_a_data_error_naming_the_column(values, match):
    frame = pd.DataFrame({"wait_min": np.tile(values, 10), "x": np.arange(40.0), "g": np.repeat(np.arange(8), 5)})
    original = frame.copy()
    for family in ("inverse.gaussian", "inverse_gaussian"):
        with pytest.raises(DataError, match=match):
            mixedfx.glmer("wait_min ~ x + (1 | g)", frame, family=family, verbose=0)
    pd.testing.assert_frame_equal(frame, original)
