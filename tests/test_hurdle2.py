"""Hurdles, second round (issue #17): glmmTMB's hurdle Gamma (``family = ziGamma(link =
"log")`` with a ``ziformula``), the ``truncated_nbinom1`` hurdle and a hurdle with a
``dispformula`` (``truncated_nbinom2``): the Gamma hurdle's density against scipy and the
JointDistribution, its moments and quantiles, fits against glmmTMB and the simulated
truth, predict's types, residuals, intervals, simulate and the response checks.

The reference fits and their simulated data come from tests/fixtures/make_hurdle2_fixtures.R
(true values in the script and in each case's ``truth``).
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, objective_and_record
from scipy import integrate, special, stats
from test_hurdle import _random_model

import mixedfx
from mixedfx import DataError, ParameterError
from mixedfx._tf import tf
from mixedfx.design import bind_data
from mixedfx.formula import parse_formula
from mixedfx.model import Gamma, Hurdle, ModelParameters, bind_model, get_family, marginal_log_likelihood

with open(FIXTURES / "glmmtmb_hurdle2.json") as _handle:
    REFERENCE = json.load(_handle)

FORMULA = "y ~ x + (1 | g)"
#: mixedfx's family name of each case (glmmTMB's spelling: get_family resolves it).
FAMILY = {"gamma_hurdle": "ziGamma", "hurdle_nbinom1": "truncated_nbinom1", "hurdle_nbinom2_disp": "truncated_nbinom2"}


def load(case: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURES / REFERENCE[case]["data"])


def _extra(case: str) -> dict:
    """The ``ziformula`` and, where the case has one, the ``dispformula``."""
    fixture = REFERENCE[case]
    out = {"ziformula": fixture["ziformula"]}
    return {**out, "dispformula": fixture["dispformula"]} if fixture["dispformula"] != "~1" else out


@pytest.fixture(scope="module")
def fits():
    """Each case fitted once (about 20-60 s each on a shared machine), lazily."""
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = mixedfx.glmer(FORMULA, load(case), family=FAMILY[case], tol=0.05, random_state=0,
                                        verbose=0, **_extra(case))
        return cache[case]

    return get


# -- the Gamma hurdle's density --------------------------------------------------------------------
def _scipy_gamma(eta, dispersion):
    """glmmTMB's Gamma of each row in scipy: mean ``exp(eta)``, shape ``1 / dispersion``."""
    return stats.gamma(1.0 / dispersion, scale=np.exp(eta) * dispersion)


@pytest.mark.parametrize("dispersion", [0.4, 1.7], ids=["shape 2.5", "shape 0.59"])
def test_gamma_hurdle_log_prob_is_scipys(dispersion):
    """log pi at zero and log(1 - pi) + scipy's Gamma log density elsewhere, pi =
    logistic(X_zi @ zi), to 1e-10, from the family and from its TFP distribution (the
    record); a shape below 1 (an infinite Gamma density at 0) included; the gradients in
    eta (zero at the zeros) and in the dispersion are finite."""
    rng = np.random.default_rng(5)
    family = Gamma().zero_inflated(("Intercept", "w"))
    n = 80
    eta, X_zi = rng.normal(0.5, 1.0, n), np.column_stack([np.ones(n), rng.normal(size=n)])
    y = np.where(rng.random(n) < 0.4, 0.0, rng.gamma(2.0, 1.5, n))
    params = {"dispersion": np.float64(dispersion), "zi": np.array([-0.3, 0.9])}
    pi = special.expit(X_zi @ params["zi"])
    expected = np.where(y == 0, np.log(pi), np.log1p(-pi) + _scipy_gamma(eta, dispersion).logpdf(np.where(y > 0, y, 1.0)))
    eta_t, dispersion_t = tf.constant(eta), tf.constant(np.float64(dispersion))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([eta_t, dispersion_t])
        got = family.log_prob(eta_t, {**params, "dispersion": dispersion_t}, tf.constant(y),
                              trials=tf.constant(X_zi))
        total = tf.reduce_sum(got)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    gradient = tape.gradient(got, eta_t).numpy()
    assert np.all(np.isfinite(gradient)) and np.all(gradient[y == 0] == 0.0)
    assert np.isfinite(tape.gradient(total, dispersion_t).numpy())
    record = family.distribution(eta_t, params, trials=tf.constant(X_zi)).log_prob(y).numpy()
    np.testing.assert_allclose(record, expected, rtol=1e-10)


def test_gamma_hurdle_objective_is_the_joint_distributions_log_prob():
    """The fit's objective equals the JointDistribution's log_prob (a tfd.Mixture of a point
    mass and the Gamma) to 1e-10 relative, on a response drawn from the JointDistribution
    itself: zeros and positive values, no negatives."""
    family = Gamma().zero_inflated(("Intercept", "w"))
    model, joint, effects, beta, sds, params = _random_model(family, np.random.default_rng(6))
    assert 0.2 < np.mean(model.response == 0) < 0.8 and np.all(model.response >= 0)
    objective, record = objective_and_record(model, joint, effects, beta, sds, params)
    assert np.isfinite(record)
    assert objective == pytest.approx(record, rel=1e-10)


def test_gamma_hurdle_moments_and_quantiles():
    """response_mean, response_variance and response_quantile_at (what predict, residuals
    and predict_interval ask) are the hurdle's: the mean and variance of the mixture by
    quadrature of scipy's Gamma (to 1e-8), and the quantiles 0 below pi, else scipy's
    Gamma quantile at (q - pi) / (1 - pi)."""
    family = Gamma().zero_inflated(("Intercept",))
    eta, params = np.log([0.3, 2.5, 7.0]), {"dispersion": np.float64(0.6), "zi": np.array([-0.4])}
    rows, pi = np.ones((3, 1)), special.expit(-0.4)
    law = _scipy_gamma(eta, 0.6)
    moments = [[integrate.quad(lambda y, k=k, i=i: y**k * law.pdf(y)[i], 0, np.inf)[0] for i in range(3)]
               for k in (1, 2)]
    mean = (1 - pi) * np.array(moments[0])
    np.testing.assert_allclose(family.response_mean(eta, params, rows=rows), mean, rtol=1e-8)
    np.testing.assert_allclose(family.response_variance(eta, params, rows=rows),
                               (1 - pi) * np.array(moments[1]) - mean**2, rtol=1e-8)
    np.testing.assert_allclose(family.conditional_mean(eta, params, rows=rows), np.exp(eta), rtol=1e-12)
    for q in (0.025, 0.3, 0.5, 0.975):
        expected = np.zeros(3) if q <= pi else law.ppf((q - pi) / (1 - pi))
        np.testing.assert_allclose(family.response_quantile_at(eta, q, params, rows=rows), expected, rtol=1e-10)


# -- against glmmTMB ---------------------------------------------------------------------------------
def _bound(case):
    """The case's model bound by the design layer (unfitted) and the fixture."""
    fixture, data = REFERENCE[case], load(case)
    bound = bind_data(parse_formula(FORMULA), data, **_extra(case))
    return bind_model(get_family(FAMILY[case]), bound), bound, fixture


def _glmmtmb_dispersion(case):
    """glmmTMB's dispersion in mixedfx's terms: the Gamma's sigma(fit)^2 (its summary's
    "Dispersion estimate (sigma^2)"), nbinom1's phi."""
    sigma = REFERENCE[case]["sigma"]
    return sigma**2 if case == "gamma_hurdle" else sigma


def _glmmtmb_own(case, fixture, bound):
    """glmmTMB's family parameters in mixedfx's names: Gamma's dispersion sigma^2, nbinom1's
    phi, the dispersion model's log size, the zero part's coefficients."""
    own = {"zi": np.array([fixture["zi_effects"][name] for name in fixture["zi_effects"]])}
    assert [n.replace("Intercept", "(Intercept)") for n in bound.zi_design.column_names] == list(fixture["zi_effects"])
    if "disp_effects" in fixture:
        own["disp"] = np.array(list(fixture["disp_effects"].values()))
    else:
        own["dispersion"] = _glmmtmb_dispersion(case)
    return own


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_laplace_at_glmmtmbs_estimates_is_glmmtmbs_loglik(case):
    """Our Laplace log-likelihood at glmmTMB's estimates is glmmTMB's logLik to 1e-3: the
    same density (Gamma hurdle, truncated nbinom1 hurdle, truncated nbinom2 hurdle with a
    dispersion model: log size = X_disp @ disp) and parametrisation."""
    model, bound, fixture = _bound(case)
    params = ModelParameters(np.array(list(fixture["fixed_effects"].values())), np.array([fixture["sds"]["g"]]),
                             _glmmtmb_own(case, fixture, bound))
    assert marginal_log_likelihood(model, params, n_draws=0).laplace == pytest.approx(fixture["logLik"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_hurdle_matches_glmmtmb(fits, case):
    """Conditional, zero-part and dispersion-model coefficients within 0.1 glmmTMB SE and
    their SEs within 5 %; sd(g) within 5 %; the dispersion (Gamma: sigma^2) within 5 %; our
    Laplace logLik close below glmmTMB's (its maximum: within 0.05 below, 0.01 above; the
    Monte Carlo EM stops at tol=0.05, measured 0.012 below for nbinom1)."""
    model, fixture = fits(case), REFERENCE[case]
    assert model.fit_summary_.converged
    tables = [(model.fixed_effects_table(), fixture["fixed_effects"], fixture["fixed_effects_se"], ""),
              (model.zi_fixed_effects_, fixture["zi_effects"], fixture["zi_effects_se"], "zi~")]
    if "disp_effects" in fixture:
        tables.append((model.disp_fixed_effects_, fixture["disp_effects"], fixture["disp_effects_se"], "d~"))
    else:
        assert model.dispersion_ == pytest.approx(_glmmtmb_dispersion(case), rel=0.05)
    for table, values, ses, prefix in tables:
        for name, value in values.items():
            ours, se = name.replace("(Intercept)", "Intercept"), ses[prefix + name if prefix + name in ses else name]
            assert abs(table.loc[ours, "Estimate"] - value) < 0.1 * se, (prefix, name, table.loc[ours], value)
            assert table.loc[ours, "Std. Error"] == pytest.approx(se, rel=0.05), (prefix, name)
    sd = model.variance_components_.set_index("group").loc["g", "sdcor"]
    assert sd == pytest.approx(fixture["sds"]["g"], rel=0.05)
    assert fixture["logLik"] - 0.05 < model.log_likelihood_laplace_ < fixture["logLik"] + 0.01


@pytest.mark.slow
def test_gamma_hurdle_recovers_the_simulated_truth(fits):
    """The Gamma hurdle's conditional and zero-part coefficients lie within 2.5 of our SEs of
    the simulated values, sd(g) within 2.5 of its asymptotic SE (sd / sqrt(2 * 25 groups)),
    and the shape within 3 of the Gamma MLE's asymptotic SE (1 / sqrt(n (trigamma(k) - 1 / k))
    on the positive rows)."""
    model, truth = fits("gamma_hurdle"), REFERENCE["gamma_hurdle"]["truth"]
    for table, prefix in ((model.fixed_effects_table(), ""), (model.zi_fixed_effects_, "zi_")):
        for name in table.index:
            error = table.loc[name, "Estimate"] - truth[prefix + name]
            assert abs(error) < 2.5 * table.loc[name, "Std. Error"], (prefix, name, error)
    sd = model.variance_components_.set_index("group").loc["g", "sdcor"]
    assert abs(sd - truth["g"]) < 2.5 * truth["g"] / np.sqrt(50)
    shape, n_positive = 1.0 / truth["dispersion"], int(np.sum(load("gamma_hurdle")["y"] > 0))
    se = 1.0 / np.sqrt(n_positive * (special.polygamma(1, shape) - 1.0 / shape))
    assert abs(1.0 / model.dispersion_ - shape) < 3 * se, (1.0 / model.dispersion_, shape, se)


@pytest.mark.slow
def test_gamma_hurdle_predict_residuals_intervals_and_simulate(fits, tmp_path):
    """predict's types are glmmTMB's (zprob to 1e-4; conditional and response to 3 %, link
    to 0.03: conditional modes of the random effects there); "conditional" is exp(link),
    "response" (1 - zprob) times it; residuals are y minus "response" and, scaled, divided
    by the hurdle's sd; the prediction interval's lower end is 0 where pi >= 0.025, its upper
    end the Gamma's quantile at (0.975 - pi) / (1 - pi) and the mean interval's upper mu,
    and it covers over 95 % of the rows; simulate's zero share is the mean pi (4 Monte Carlo SEs) and its
    positive draws' mean the (1 - pi)-weighted conditional mean; a saved fit loads back with
    the same family and predictions."""
    model, fixture, data = fits("gamma_hurdle"), REFERENCE["gamma_hurdle"], load("gamma_hurdle")
    head = data.head(5)
    zprob, conditional = model.predict(head, type="zprob"), model.predict(head, type="conditional")
    link = model.predict(head, type="link")
    np.testing.assert_allclose(zprob, fixture["predict_zprob"], rtol=1e-4)
    np.testing.assert_allclose(conditional, fixture["predict_conditional"], rtol=0.03)
    np.testing.assert_allclose(model.predict(head), fixture["predict_response"], rtol=0.03)
    np.testing.assert_allclose(link, fixture["predict_link"], atol=0.03)
    np.testing.assert_allclose(conditional, np.exp(link), rtol=1e-12)
    np.testing.assert_allclose(model.predict(head), (1 - zprob) * conditional, rtol=1e-12)
    pi, mu = model.predict(data, type="zprob"), model.predict(data, type="conditional")
    response, phi = (1 - pi) * mu, model.dispersion_
    np.testing.assert_allclose(model.residuals(), data["y"] - response, rtol=1e-10, atol=1e-12)
    variance = (1 - pi) * (phi * mu**2 + mu**2) - response**2  # E[y^2] - E[y]^2
    np.testing.assert_allclose(model.residuals(scaled=True), (data["y"] - response) / np.sqrt(variance), rtol=1e-8)
    table = model.predict_interval(data)
    assert np.all(table["lower"][pi >= 0.025] == 0.0)  # P(y = 0) = pi covers the lower 2.5 %
    mu_high = model.predict_interval(data, kind="mean")["upper"] / (1 - pi)  # mu at the linear predictor's upper end
    upper = stats.gamma.ppf((0.975 - pi) / (1 - pi), 1 / phi, scale=mu_high * phi)
    np.testing.assert_allclose(table["upper"], upper, rtol=1e-8)
    inside = (data["y"] >= table["lower"]) & (data["y"] <= table["upper"])
    assert inside.mean() > 0.95, inside.mean()
    simulated = model.simulate(100, X=data, random_state=1, re_form=None).to_numpy()  # given the fitted modes
    assert simulated.min() >= 0.0
    expected, share = np.mean(pi), np.mean(simulated == 0)
    assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / simulated.size), (share, expected)
    positive = simulated[simulated > 0]
    weighted = np.sum((1 - pi) * mu) / np.sum(1 - pi)
    assert abs(positive.mean() - weighted) < 4 * positive.std() / np.sqrt(positive.size), (positive.mean(), weighted)
    model.save(tmp_path / "gamma_hurdle.mixedfx")
    loaded = mixedfx.load(tmp_path / "gamma_hurdle.mixedfx")
    assert loaded.family_ == model.family_
    for kind in ("response", "zprob", "conditional"):
        np.testing.assert_allclose(loaded.predict(head, type=kind), model.predict(head, type=kind), rtol=1e-12)


# -- names and refusals --------------------------------------------------------------------------------
def test_gamma_hurdle_names_and_response_checks():
    """glmmTMB's ``ziGamma`` resolves to the Gamma family, which with a ziformula is the
    Hurdle; zeros are accepted with a ziformula, refused without one (naming the column and
    the ziGamma hurdle), a negative value is a DataError naming the column either way; r2 is
    refused by name."""
    assert isinstance(get_family("ziGamma"), Gamma) and isinstance(get_family("zigamma"), Gamma)
    family = get_family("ziGamma").zero_inflated(("Intercept",))
    assert isinstance(family, Hurdle) and str(family) == "hurdle gamma (log link)"
    data = load("gamma_hurdle").head(60)
    values, _ = family.validate_response(data["y"].to_numpy(), name="y")
    assert np.sum(values == 0) > 10
    with pytest.raises(DataError, match=r"Gamma response 'y' must be positive; found 0\.0 .*ziGamma hurdle"):
        mixedfx.glmer(FORMULA, data, family="ziGamma", verbose=0)
    negative = data.assign(y=np.where(np.arange(60) == 7, -1.5, data["y"]))
    with pytest.raises(DataError, match=r"hurdle gamma \(log link\) response 'y' must be zero or positive; found -1\.5"):
        mixedfx.glmer(FORMULA, negative, family="ziGamma", ziformula="~ w", verbose=0)
    assert negative.loc[7, "y"] == -1.5  # the caller's frame untouched
    from mixedfx.explained_variance import distribution_variance

    with pytest.raises(ParameterError, match="r2 and the ICC are not defined"):
        distribution_variance(family, {"dispersion": 0.5, "zi": np.array([0.0])}, null_intercept=0.5)
