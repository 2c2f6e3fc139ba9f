"""Simulated data with known truth: the fit recovers it, and lands on the exact ML optimum."""

import numpy as np
import pytest
from scipy import optimize

import mixedfx
from mixedfx import parse_formula
from mixedfx.design import RandomDesign, build_fixed_design
from mixedfx.model import Gaussian, MixedModel, ModelParameters, gaussian_marginal

#: a large simulated fit checked against the truth and the exact ML estimate
pytestmark = pytest.mark.slow

TRUTH_FIXED = {"Intercept": 1.5, "x": 0.7, "z": -0.4}
TRUTH_SD = {"a": 0.9, "b": 0.5, "c": 0.3}
FORMULA = "y ~ x + z + (1 | a) + (1 | b) + (1 | c)"


@pytest.fixture(scope="module")
def simulated():
    return mixedfx.datasets.make_mixed_data(
        5000, groups={"a": 120, "b": 60, "c": 25}, fixed_effects=TRUTH_FIXED, random_sd=TRUTH_SD,
        noise_sd=1.2, return_effects=True, random_state=7,
    )


@pytest.fixture(scope="module")
def simulated_fit(simulated):
    data, _ = simulated
    return mixedfx.MixedEffectsRegressor(FORMULA, random_state=11, verbose=0).fit(data)


def exact_maximum_likelihood(data, formula):
    """ML by Nelder-Mead on the closed-form Gaussian likelihood: an independent optimizer."""
    spec = parse_formula(formula)
    random_design = RandomDesign.from_spec(spec, data)
    fixed_design, X = build_fixed_design(spec.fixed, data)
    y = data[spec.response].to_numpy(dtype=float)
    model = MixedModel(Gaussian(), X, y, random_design.materialize(data), fixed_design.column_names)
    p, k = X.shape[1], len(model.random_terms)

    def negative_loglik(theta):
        params = ModelParameters(theta[:p], np.exp(theta[p:p + k]), {"sigma": float(np.exp(theta[-1]))})
        return -gaussian_marginal(model, params).log_likelihood

    start = np.concatenate([np.linalg.lstsq(X, y, rcond=None)[0], np.log(np.full(k, 0.5)), [0.0]])
    result = optimize.minimize(negative_loglik, start, method="Nelder-Mead",
                               options={"maxiter": 40000, "maxfev": 40000, "xatol": 1e-9, "fatol": 1e-10})
    theta = result.x
    return theta[:p], np.exp(theta[p:p + k]), float(np.exp(theta[-1])), -result.fun


def test_recovers_the_truth(simulated_fit):
    model = simulated_fit
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    for name, value in TRUTH_FIXED.items():
        z = (model.fixed_effects_[name] - value) / se[list(model.fixed_effects_.index).index(name)]
        assert abs(z) < 3.5, (name, z)
    sds = model.variance_components_.set_index("group")["sdcor"]
    for name, value in TRUTH_SD.items():
        levels = model.random_design_.factors[name].num_levels
        # sd of log sd-hat is about 1/sqrt(2 q): allow 3.5 of those
        assert abs(np.log(sds[name] / value)) < 3.5 / np.sqrt(2 * levels), (name, sds[name])
    assert sds["Residual"] == pytest.approx(1.2, rel=0.05)


def test_conditional_means_track_the_true_effects(simulated, simulated_fit):
    _, effects = simulated
    for name in ("a", "b"):
        estimated = simulated_fit.random_effects_[name]["(Intercept)"]
        truth = effects[name].reindex(estimated.index)
        assert np.corrcoef(estimated, truth)[0, 1] > 0.9, name


def test_lands_on_the_exact_maximum_likelihood_estimate(simulated, simulated_fit):
    data, _ = simulated
    beta, sds, sigma, loglik = exact_maximum_likelihood(data, FORMULA)
    model = simulated_fit
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    assert np.all(np.abs(model.fixed_effects_.to_numpy() - beta) < 0.1 * se)
    fitted = model.variance_components_["sdcor"].to_numpy()
    np.testing.assert_allclose(fitted, np.concatenate([sds, [sigma]]), rtol=0.02)
    assert model.log_likelihood_ == pytest.approx(loglik, abs=0.1)
    assert model.log_likelihood_ <= loglik + 1e-6  # the exact optimum is the maximum
