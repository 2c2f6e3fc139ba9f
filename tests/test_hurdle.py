"""Zero-truncated counts and glmmTMB's hurdle model (mixedfx/model/truncated.py and
mixedfx/model/zero_inflation.py): the densities against scipy and the JointDistribution,
the sampler, the response's moments and quantiles against sums over the pmf, the
Salamanders hurdle fits against glmmTMB, predict's types, residuals, simulate and the
zero-truncated response check.

The reference fits come from tests/fixtures/make_hurdle_fixtures.R (glmmTMB's Salamanders
data with ``spp``, written to tests/fixtures/salamanders_spp.csv).
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import objective_and_record, FIXTURES
from scipy import special, stats

import mixedfx
from mixedfx import DataError, ParameterError
from mixedfx._tf import tf
from mixedfx.design import RandomTermData, bind_data
from mixedfx.formula import parse_formula
from mixedfx.model import (RESPONSE, MixedModel, ModelParameters, NegativeBinomial, NegativeBinomial1, Poisson,
                           ZeroTruncated, bind_model, build_joint_distribution, get_family,
                           marginal_log_likelihood)

with open(FIXTURES / "glmmtmb_hurdle.json") as _handle:
    REFERENCE = json.load(_handle)

FORMULA = "count ~ spp + mined + (1 | site)"
COUNT_FAMILIES = [Poisson(), NegativeBinomial(), NegativeBinomial1()]


def salamanders() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "salamanders_spp.csv")


def ours(name: str) -> str:
    """glmmTMB's coefficient name in mixedfx's spelling (``sppDF`` -> ``spp[T.DF]``)."""
    if name == "(Intercept)":
        return "Intercept"
    for column in ("spp", "mined"):
        if name.startswith(column):
            return f"{column}[T.{name[len(column):]}]"
    raise KeyError(name)


@pytest.fixture(scope="module")
def fits():
    """Each hurdle fitted once to Salamanders (about 30 s each), lazily."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = mixedfx.glmer(FORMULA, salamanders(), family=family, ziformula="~ spp + mined",
                                          tol=0.05, random_state=0, verbose=0)
        return cache[family]

    return get


# -- the densities ---------------------------------------------------------------------------

def _scipy_law(base, eta, params):
    """scipy's count distribution of each row."""
    mu = np.exp(eta)
    if base.name == "poisson":
        return stats.poisson(mu)
    if base.name == "nbinom1":
        phi = params["dispersion"]
        return stats.nbinom(mu / phi, 1.0 / (1.0 + phi))
    size = params["dispersion"]
    return stats.nbinom(size, size / (size + mu))


def _scipy_pmf(base, y, eta, params):
    """scipy's pmf of the count family (``y`` may be a grid broadcast against ``eta``)."""
    return _scipy_law(base, eta, params).pmf(y)


def _scipy_truncated_log_pmf(base, y, eta, params):
    """``log f(y) - log P(y > 0)`` with scipy's accurate ``logsf``."""
    law = _scipy_law(base, eta, params)
    return law.logpmf(y) - law.logsf(0)


def _params(base, **extra):
    return {**({"dispersion": np.float64(1.7)} if base.parameter_names else {}), **extra}


@pytest.mark.parametrize("base", COUNT_FAMILIES, ids=lambda f: f.name)
def test_truncated_log_prob_is_scipys(base):
    """log f(y) - log(1 - f(0)) with scipy's f for y > 0, to 1e-10 (1e-12 absolute), from the family and
    from its TFP distribution; -inf at zero; small means (f(0) near 1) included."""
    rng = np.random.default_rng(1)
    family = ZeroTruncated(base)
    eta = rng.normal(0.0, 1.5, 60) - np.r_[np.zeros(50), np.full(10, 6.0)]
    y = rng.integers(1, 12, 60).astype(float)
    params = _params(base)
    expected = _scipy_truncated_log_pmf(base, y, eta, params)
    got = family.log_prob(tf.constant(eta), params, tf.constant(y)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)  # rounding: values near 0 at f(0) ~ 1
    record = family.distribution(tf.constant(eta), params).log_prob(y).numpy()
    np.testing.assert_allclose(record, expected, rtol=1e-10, atol=1e-12)
    assert np.all(np.isneginf(family.log_prob(tf.constant(eta[:3]), params, tf.zeros(3, tf.float64)).numpy()))


@pytest.mark.parametrize("base", COUNT_FAMILIES, ids=lambda f: f.name)
def test_hurdle_log_prob_is_scipys(base):
    """log pi at zero and log(1 - pi) + log f(y) - log(1 - f(0)) elsewhere, pi = logistic(X_zi @ zi),
    to 1e-10; and its gradient is finite at the zeros."""
    rng = np.random.default_rng(2)
    family = ZeroTruncated(base).zero_inflated(("Intercept", "w"))
    n = 80
    eta, X_zi = rng.normal(0.5, 1.0, n), np.column_stack([np.ones(n), rng.normal(size=n)])
    y = np.where(rng.random(n) < 0.4, 0.0, rng.integers(1, 10, n))
    params = _params(base, zi=np.array([-0.3, 0.9]))
    pi = special.expit(X_zi @ params["zi"])
    positive = np.log1p(-pi) + _scipy_truncated_log_pmf(base, y, eta, params)
    expected = np.where(y == 0, np.log(pi), positive)
    eta_t = tf.constant(eta)
    with tf.GradientTape() as tape:
        tape.watch(eta_t)
        got = family.log_prob(eta_t, params, tf.constant(y), trials=tf.constant(X_zi))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    gradient = tape.gradient(got, eta_t).numpy()
    assert np.all(np.isfinite(gradient)) and np.all(gradient[y == 0] == 0.0)


def _random_model(family, rng, *, n=80, levels=(7, 4)):
    """A two-factor model with an offset (and a two-column zero-part design for a hurdle),
    its response drawn from the JointDistribution itself."""
    hurdle = family.coefficient_block() is not None
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    X_zi = np.column_stack([np.ones(n), rng.normal(size=n)]) if hurdle else None
    terms = tuple(RandomTermData(f"g{k}", rng.integers(0, q, n).astype(np.int32), None, q)
                  for k, q in enumerate(levels))
    offset = 0.3 * rng.normal(size=n)
    beta, sds = np.array([0.3, 0.4]), rng.uniform(0.3, 1.0, size=len(levels))
    params = {**({"zi": np.array([-0.5, 0.8])} if hurdle else {}),
              **({"dispersion": np.float64(rng.uniform(0.5, 3.0))} if family.parameter_names[:1] == ("dispersion",)
                 else {})}
    placeholder = MixedModel(family, X, np.ones(n), terms, ("Intercept", "x"), offset=offset, family_design=X_zi)
    joint = build_joint_distribution(placeholder.tensors(), fixed_effects=beta,
                                     random_scale_tril=[np.array([[s]]) for s in sds], family=family,
                                     family_params=params)
    draw = joint.sample(seed=(int(rng.integers(1 << 30)), 7))
    model = MixedModel(family, X, draw[RESPONSE].numpy(), terms, ("Intercept", "x"), offset=offset,
                       family_design=X_zi)
    return model, joint, [draw[f"g{k}"].numpy() for k in range(len(levels))], beta, sds, params


@pytest.mark.parametrize("base", COUNT_FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("hurdle", [False, True], ids=["truncated", "hurdle"])
def test_fit_objective_is_the_joint_distributions_log_prob(base, hurdle):
    """The fit's objective equals the JointDistribution's log_prob (the truncated TFP
    distribution; for a hurdle, a tfd.Mixture with it) to 1e-10 relative; the draw has no
    zeros when truncated, and zeros when a hurdle."""
    rng = np.random.default_rng(3)
    family = ZeroTruncated(base)
    family = family.zero_inflated(("Intercept", "w")) if hurdle else family
    model, joint, effects, beta, sds, params = _random_model(family, rng)
    zeros = np.mean(model.response == 0)
    assert zeros > 0.2 if hurdle else zeros == 0.0
    objective, record = objective_and_record(model, joint, effects, beta, sds, params)
    assert np.isfinite(record)
    assert objective == pytest.approx(record, rel=1e-10)


@pytest.mark.parametrize("base", COUNT_FAMILIES, ids=lambda f: f.name)
def test_truncated_sampler_draws_the_truncated_law(base):
    """10000 draws at means 0.05 and 3 (f(0) = 0.95 and small): no zeros, the share of ones
    and the mean within 4.5 Monte Carlo SEs of the truncated law's."""
    family, params = ZeroTruncated(base), _params(base)
    eta = np.log([0.05, 3.0])
    draws = family.distribution(tf.constant(eta), params).sample(10000, seed=(4, 2)).numpy()
    assert draws.min() >= 1
    f0, f1 = _scipy_pmf(base, 0, eta, params), _scipy_pmf(base, 1, eta, params)
    ones = f1 / (1 - f0)
    assert np.all(np.abs(np.mean(draws == 1, axis=0) - ones) < 4.5 * np.sqrt(ones * (1 - ones) / 10000) + 1e-3)
    mean = family.response_mean(eta, params)
    np.testing.assert_allclose(mean, np.exp(eta) / (1 - f0), rtol=1e-10)
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 4.5 * draws.std(axis=0) / np.sqrt(10000))


@pytest.mark.parametrize("base", COUNT_FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("kind", ["truncated", "hurdle", "zero-inflated"])
def test_response_moments_and_quantiles_are_the_pmfs(base, kind):
    """response_mean, response_variance and response_quantile_at (what predict, residuals
    and predict_interval ask) are the mean, variance and quantiles of the pmf summed on
    0..400 (to 1e-8; quantiles exactly), for truncated, hurdle and zero-inflated families."""
    eta, params = np.log([0.3, 2.5, 7.0]), _params(base, zi=np.array([0.4]))
    rows, pi = np.ones((3, 1)), special.expit(0.4)
    family = {"truncated": ZeroTruncated(base), "hurdle": ZeroTruncated(base).zero_inflated(("Intercept",)),
              "zero-inflated": base.zero_inflated(("Intercept",))}[kind]
    grid = np.arange(401.0)[:, None]
    pmf = _scipy_pmf(base, grid, eta, params)
    if kind != "zero-inflated":
        pmf = np.where(grid > 0, pmf / (1 - pmf[0]), 0.0)
    if kind != "truncated":
        pmf = (1 - pi) * pmf + np.where(grid == 0, pi, 0.0)
    mean = (grid * pmf).sum(0)
    rows = None if kind == "truncated" else rows
    np.testing.assert_allclose(family.response_mean(eta, params, rows=rows), mean, rtol=1e-8)
    np.testing.assert_allclose(family.response_variance(eta, params, rows=rows), ((grid - mean) ** 2 * pmf).sum(0),
                               rtol=1e-8)
    cdf = np.cumsum(pmf, axis=0)
    for q in (0.025, 0.3, 0.5, 0.975):
        expected = np.argmax(cdf >= q - 1e-12, axis=0)
        np.testing.assert_array_equal(family.response_quantile_at(eta, q, params, rows=rows), expected)


# -- against glmmTMB -------------------------------------------------------------------------

def _laplace_at_glmmtmbs(fixture, data):
    """Our Laplace log-likelihood at glmmTMB's estimates, on ``data`` (the model bound by the
    design layer, unfitted)."""
    zi = {"ziformula": "~ spp + mined"} if fixture["ziformula"] != "~0" else {}
    bound = bind_data(parse_formula(FORMULA), data, **zi)
    model = bind_model(get_family(fixture["family"]), bound)
    by_ours = {ours(k): v for k, v in fixture["fixed_effects"].items()}
    own = {"dispersion": fixture["sigma"]} if "dispersion" in model.family.parameter_names else {}
    if zi:
        by_zi = {ours(k): v for k, v in fixture["zi_fixed_effects"].items()}
        own["zi"] = np.array([by_zi[n] for n in bound.zi_design.column_names])
    params = ModelParameters(np.array([by_ours[n] for n in model.fixed_names]), np.array([fixture["sds"]["site"]]),
                             own)
    return marginal_log_likelihood(model, params, n_draws=0, seed=1).laplace


@pytest.mark.slow
@pytest.mark.parametrize("family", ["truncated_poisson", "truncated_nbinom2"])
def test_hurdle_matches_glmmtmb(fits, family):
    """Conditional and zero fixed effects within 0.1 glmmTMB SE; the zero part's SEs within
    2 % (a logistic regression apart, the hurdle's likelihood factorizes); the dispersion
    within 5 %; sd(site) within 5 % (nbinom2's 0.0745 by the quadrature finish); our Laplace
    logLik within 0.01 of glmmTMB's."""
    model, fixture = fits(family), REFERENCE["hurdle_" + family]
    assert model.fit_summary_.converged
    for name, value in fixture["fixed_effects"].items():
        estimate = model.fixed_effects_[ours(name)]
        assert abs(estimate - value) < 0.1 * fixture["fixed_effects_se"][name], (name, estimate, value)
    table = model.zi_fixed_effects_
    for name, value in fixture["zi_fixed_effects"].items():
        se = fixture["zi_fixed_effects_se"]["zi~" + name]
        assert abs(table.loc[ours(name), "Estimate"] - value) < 0.1 * se, (name, table.loc[ours(name)], value)
        assert table.loc[ours(name), "Std. Error"] == pytest.approx(se, rel=0.02), name
    sd = model.variance_components_.set_index("group").loc["site", "sdcor"]
    assert sd == pytest.approx(fixture["sds"]["site"], rel=0.05)
    if family == "truncated_nbinom2":
        # sd(site) 0.0745 on a flat likelihood: the EM iterates wander from 0.009 to 0.055 and
        # their average stops at 0.033; the quadrature finish takes it, with the dispersion
        # it trades off against, to the likelihood's maximum
        assert model.fit_summary_.by_quadrature == ("sd(site)",)
        assert model.dispersion_ == pytest.approx(fixture["sigma"], rel=0.05)
    assert abs(model.log_likelihood_laplace_ - fixture["logLik"]) < 0.01


@pytest.mark.parametrize("case", ["hurdle_truncated_poisson", "hurdle_truncated_nbinom2", "truncated_poisson",
                                  "truncated_nbinom2"])
def test_laplace_at_glmmtmbs_estimates_is_glmmtmbs_loglik(case):
    """Our Laplace approximation at glmmTMB's estimates is glmmTMB's logLik to 1e-3: the
    hurdles on every row and the truncated families on the positive counts."""
    fixture = REFERENCE[case]
    data = salamanders()
    if fixture["rows"] != "all":
        data = data[data["count"] > 0].reset_index(drop=True)
    assert _laplace_at_glmmtmbs(fixture, data) == pytest.approx(fixture["logLik"], abs=1e-3)


@pytest.mark.slow
def test_predict_types_residuals_and_intervals(fits):
    """predict's types are glmmTMB's (zprob to 1e-3, the others to 3 %: conditional modes
    of the random effects here): "conditional" the truncated mean mu / (1 - f(0)),
    "response" (1 - pi) times it, "link" log mu; residuals are y minus "response" and,
    scaled, divided by the hurdle's sd; the prediction interval's ends are its quantiles."""
    model, fixture = fits("truncated_poisson"), REFERENCE["hurdle_truncated_poisson"]
    data = salamanders()
    head = data.head(5)
    with pytest.raises(ParameterError, match="r2 and the ICC are not defined"):  # no one variance to use
        model.r2()
    zprob, conditional = model.predict(head, type="zprob"), model.predict(head, type="conditional")
    link = model.predict(head, type="link")
    np.testing.assert_allclose(zprob, fixture["predict_zprob"], rtol=1e-3)
    np.testing.assert_allclose(conditional, fixture["predict_conditional"], rtol=0.03)
    np.testing.assert_allclose(model.predict(head), fixture["predict_response"], rtol=0.03)
    np.testing.assert_allclose(link, fixture["predict_link"], atol=0.03)
    np.testing.assert_allclose(conditional, np.exp(link) / -np.expm1(-np.exp(link)), rtol=1e-12)
    response = model.predict(data)
    np.testing.assert_allclose(model.predict(head), (1 - zprob) * conditional, rtol=1e-12)
    np.testing.assert_allclose(model.residuals(), data["count"] - response, rtol=1e-10, atol=1e-12)
    pi, mu = model.predict(data, type="zprob"), np.exp(model.predict(data, type="link"))
    keep = -np.expm1(-mu)
    variance = (1 - pi) * (mu + mu**2) / keep - response**2  # E[y^2] - E[y]^2
    np.testing.assert_allclose(model.residuals(scaled=True), (data["count"] - response) / np.sqrt(variance),
                               rtol=1e-8)
    np.testing.assert_allclose(model.residuals(data.head(30)), model.residuals()[:30], rtol=1e-10, atol=1e-12)
    table = model.predict_interval(data)
    np.testing.assert_allclose(table["fit"], response, rtol=1e-12)
    assert np.all(table["lower"][pi >= 0.025] == 0.0)  # P(y = 0) = pi covers the lower 2.5 %
    assert np.all((table["lower"] <= table["fit"]) & (table["fit"] <= table["upper"]))
    inside = (data["count"] >= table["lower"]) & (data["count"] <= table["upper"])
    assert inside.mean() > 0.95, inside.mean()


@pytest.mark.slow
def test_simulate_reproduces_the_zero_fraction(fits):
    """simulate() from the Poisson hurdle: the share of zeros over 200 simulations is the
    mean pi (within 4 Monte Carlo SEs), which is the data's zero fraction (the zero part's
    logistic fit reproduces it); the positive draws' mean is the mean truncated mean."""
    model = fits("truncated_poisson")
    data = salamanders()
    simulated = model.simulate(200, X=data, random_state=1, re_form=None).to_numpy()
    pi = model.predict(data, type="zprob")
    expected = np.mean(pi)
    share = np.mean(simulated == 0)
    assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / simulated.size)
    assert expected == pytest.approx(np.mean(data["count"] == 0), abs=1e-4)
    conditional = model.predict(data, type="conditional")
    weights = (1 - pi) / np.sum(1 - pi)
    positive = simulated[simulated > 0]
    assert abs(positive.mean() - np.sum(weights * conditional)) < 4 * positive.std() / np.sqrt(positive.size)


# -- refusals -------------------------------------------------------------------------------------

def test_zeros_in_a_truncated_response_are_a_data_error():
    """A zero-truncated family without a ziformula refuses zeros, naming the column and the
    hurdle; with the zeros dropped it fits; glmmTMB's names resolve."""
    data = salamanders().head(120)
    with pytest.raises(DataError, match=r"truncated_nbinom2 response 'count' must be positive .* ziformula"):
        mixedfx.glmer(FORMULA, data, family="truncated_nbinom2", verbose=0)
    for name in ("truncated_poisson", "truncated_nbinom1", "truncated_nbinom2"):
        assert mixedfx.model.get_family(name).name == name
    assert str(ZeroTruncated(Poisson()).zero_inflated(("Intercept",))) == "hurdle truncated_poisson (log link)"


@pytest.mark.parametrize("base", COUNT_FAMILIES, ids=str)
def test_r2_of_a_truncated_family_is_refused(base):
    """r2 and the ICC need one distribution-specific variance; a truncated family's response
    has none of the kind performance defines (insight's differ by version): refused by name."""
    from mixedfx.explained_variance import distribution_variance

    with pytest.raises(ParameterError, match=r"truncated_\w+ family has no distribution-specific variance"):
        distribution_variance(ZeroTruncated(base), {"dispersion": 2.0}, null_intercept=0.5)
