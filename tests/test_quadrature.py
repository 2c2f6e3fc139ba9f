"""Adaptive Gauss-Hermite quadrature (mixedfx/model/quadrature.py) and the finish that
re-estimates a small sd on it (mixedfx/inference/boundary.py's quadrature_components).

The reference is glmer with ``nAGQ = 25`` and ``nAGQ = 1`` on binary responses in 400
clusters of three (tests/fixtures/make_agq_fixtures.R, which writes agq_binary.csv and
glmer_agq.json): there the Laplace sd, 0.145, is 16 % below the quadrature one, 0.172.
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES

import mixedfx
from mixedfx import ParameterError
from mixedfx.design import bind_data
from mixedfx.formula import parse_formula
from mixedfx.model import ModelParameters, bind_model, get_family, marginal_log_likelihood
from mixedfx.model.quadrature import quadrature_applies, quadrature_log_likelihood

REFERENCE = json.loads((FIXTURES / "glmer_agq.json").read_text())
FORMULA = "y ~ x + (1 | g)"


@pytest.fixture(scope="module")
def data():
    return pd.read_csv(FIXTURES / "agq_binary.csv")


@pytest.fixture(scope="module")
def model(data):
    return bind_model(get_family("binomial"), bind_data(parse_formula(FORMULA), data))


def _params(entry) -> ModelParameters:
    fixed = entry["fixed_effects"]
    return ModelParameters(np.array([fixed["(Intercept)"], fixed["x"]]), np.array([entry["sd"]]), {})


@pytest.mark.parametrize("case", ["agq25", "laplace", "at_parameters"])
def test_quadrature_is_glmers_nagq25(model, case):
    """At glmer's nAGQ = 25 estimates its logLik, and at given parameters its nAGQ = 25
    deviance function's value, to 1e-8 (the two differ from the Laplace value by 0.01 to 1)."""
    entry = REFERENCE[case]
    if case != "laplace":
        assert quadrature_log_likelihood(model, _params(entry)) == pytest.approx(entry["logLik"], abs=1e-8)
    # one node is the Laplace approximation, glmer's nAGQ = 1 logLik at its own estimates
    one_node = quadrature_log_likelihood(model, _params(entry), n_points=1)
    assert one_node == pytest.approx(marginal_log_likelihood(model, _params(entry), n_draws=0).laplace, abs=1e-9)
    if case == "laplace":
        assert one_node == pytest.approx(entry["logLik"], abs=1e-6)


def test_quadrature_needs_one_scalar_term(data):
    two = bind_model(get_family("binomial"), bind_data(parse_formula("y ~ x + (1 | g) + (0 + x | g)"), data))
    assert not quadrature_applies(two)
    with pytest.raises(ParameterError, match="single random term of one coefficient"):
        quadrature_log_likelihood(two, ModelParameters(np.zeros(2), (np.ones((1, 1)), np.ones((1, 1))), {}))


@pytest.mark.slow
def test_small_sd_is_glmers_nagq25(data):
    """The fitted sd is glmer's nAGQ = 25 one (0.172) to 2 %, not its Laplace one (0.145),
    and the fixed effects are within 0.1 of their SE of glmer's nAGQ = 25 ones."""
    fit = mixedfx.glmer(FORMULA, data, family="binomial", random_state=0, verbose=0)
    sd = fit.variance_components_.set_index("group").loc["g", "sdcor"]
    assert fit.fit_summary_.by_quadrature == ("sd(g)",)
    assert sd == pytest.approx(REFERENCE["agq25"]["sd"], rel=0.02)
    se = np.sqrt(np.diag(fit.fixed_effects_cov_))
    reference = REFERENCE["agq25"]["fixed_effects"]
    for k, name in enumerate(["(Intercept)", "x"]):
        assert abs(fit.fixed_effects_.iloc[k] - reference[name]) < 0.1 * se[k], name


def test_moments_and_integral_against_scipy_quad(model, data):
    """Each level's conditional mean and variance of b (first 5 levels), and the whole
    log-likelihood (every level), against scipy's adaptive quadrature of
    binomial(y | eta + b) N(b; 0, sd^2): to 1e-8."""
    from scipy import integrate, stats

    from mixedfx.model.quadrature import quadrature_moments

    params = _params(REFERENCE["at_parameters"])
    means, covs = quadrature_moments(model, params)
    term = model.random_terms[0]
    eta = model.fixed_design @ params.fixed_effects
    sd = REFERENCE["at_parameters"]["sd"]
    total = 0.0
    for level in range(term.num_levels):
        rows = term.group_index == level

        def integrand(b, power, rows=rows):
            p = 1.0 / (1.0 + np.exp(-(eta[rows] + b)))
            return b**power * np.prod(stats.binom.pmf(model.response[rows], 1, p)) * stats.norm.pdf(b, scale=sd)

        mass = integrate.quad(integrand, -8 * sd, 8 * sd, args=(0,), epsabs=1e-14)[0]
        total += np.log(mass)
        if level < 5:
            first, second = (integrate.quad(integrand, -8 * sd, 8 * sd, args=(k,), epsabs=1e-14)[0] for k in (1, 2))
            assert means[level, 0] == pytest.approx(first / mass, abs=1e-8)
            assert covs[level, 0, 0] == pytest.approx(second / mass - (first / mass) ** 2, abs=1e-8)
    assert quadrature_log_likelihood(model, params) == pytest.approx(total, abs=1e-8)


def test_importance_sampling_passes_are_bounded_and_change_nothing(model, monkeypatch):
    """The importance-sampled log-likelihood evaluates its draws in passes of at most
    ``ROW_PASS_ENTRIES`` draws x rows (at a million rows of the zero-inflated
    Poisson, a batch of 50 draws at once peaked at 7.6 GB, passes at 1.7 GB), and the
    passes give the estimate and its standard error of one pass of all 50 draws."""
    from mixedfx.model import likelihood

    params = _params(REFERENCE["agq25"])
    whole = marginal_log_likelihood(model, params, n_draws=120, seed=3)
    shapes, family = [], type(model.family)
    original = family.weighted_log_prob

    def spy(self, eta, *args, **kwargs):
        shapes.append(tuple(eta.shape))
        return original(self, eta, *args, **kwargs)

    monkeypatch.setattr(family, "weighted_log_prob", spy)
    monkeypatch.setattr(likelihood, "ROW_PASS_ENTRIES", 7 * model.n_obs + 5)
    passes = marginal_log_likelihood(model, params, n_draws=120, seed=3)
    stacked = [draws for draws, *rows in shapes if rows == [model.n_obs]]  # [draws, rows] stacks
    assert max(stacked) == 7 and sum(stacked) == 120, stacked
    assert passes.log_likelihood == pytest.approx(whole.log_likelihood, abs=1e-9)
    assert passes.standard_error == pytest.approx(whole.standard_error, rel=1e-9)


@pytest.mark.slow
def test_fit_reports_the_quadratures_moments_and_log_likelihood(data, model):
    """After the finish, random_effects_ are the quadrature's conditional means at the
    fitted parameters (not the E-step's at the EM sd), and log_likelihood_ is the
    quadrature's, exact (SE 0), within 3 of its standard errors of an importance-sampling
    estimate with 4,000 draws at the same parameters."""
    from mixedfx.model.quadrature import QUADRATURE_METHOD, quadrature_moments

    fit = mixedfx.glmer(FORMULA, data, family="binomial", random_state=0, verbose=0)
    means, _ = quadrature_moments(fit.model_, fit.model_parameters_)
    np.testing.assert_allclose(np.asarray(fit.random_effects_["g"]).ravel(), means.ravel(), atol=1e-6)
    assert (fit.log_likelihood_method_, fit.log_likelihood_se_) == (QUADRATURE_METHOD, 0.0)
    assert fit.log_likelihood_ == pytest.approx(quadrature_log_likelihood(fit.model_, fit.model_parameters_),
                                                abs=1e-9)
    sampled = marginal_log_likelihood(fit.model_, fit.model_parameters_, n_draws=4000, seed=2)
    assert abs(fit.log_likelihood_ - sampled.log_likelihood) < 3 * sampled.standard_error + 1e-3
    assert fit.log_likelihood_laplace_ == pytest.approx(sampled.laplace, abs=1e-6)  # mode searches from two starts


FAMILY_CASES = {  # make_mixed_data's family: (formula, glmer's family, fit arguments)
    "poisson": ("y ~ x + (1 | g)", "poisson", {"weights": np.r_[np.ones(300), 2 * np.ones(300)]}),
    "binomial": ("cbind(successes, failures) ~ x + (1 | g)", "binomial", {}),
    "ordinal": ("y ~ x + (1 | g)", "ordinal", {}),
    "negative_binomial": ("y ~ x + (1 | g)", "nbinom2", {}),
}


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_fitted_log_likelihood_is_the_importance_sampled_one(family):
    """For each family (prior weights, trials, cutpoints, a dispersion), the fit's
    quadrature log-likelihood agrees with an independent estimate of the same integral,
    importance sampling with 4,000 draws, within 4 of its standard errors (measured:
    differences 0.0000 to 0.0006, standard errors 0.0000 to 0.0054)."""
    from mixedfx.inference import FixedIterations

    formula, name, arguments = FAMILY_CASES[family]
    data = mixedfx.datasets.make_mixed_data(600, groups={"g": 40}, fixed_effects={"Intercept": 0.3, "x": 0.5},
                                            random_sd={"g": 0.15}, family=family, random_state=1)
    fit = mixedfx.glmer(formula, data, family=name, random_state=0, verbose=0,
                        stopping_rule=FixedIterations(n_iter=10, n_average=5), **arguments)
    sampled = marginal_log_likelihood(fit.model_, fit.model_parameters_, n_draws=4000, seed=3)
    assert fit.log_likelihood_se_ == 0.0
    assert abs(fit.log_likelihood_ - sampled.log_likelihood) < 4 * sampled.standard_error + 1e-3
