"""glmmTMB's families (mixedfx/model/glmmtmb_families.py): their densities against the
JointDistribution and scipy, their fits against glmmTMB and against simulated truth.

The reference fits and the data they fit come from
tests/fixtures/make_glmmtmb_family_fixtures.R (the true values are in that script and in
each fixture's ``truth``).
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import objective_and_record, FIXTURES
from scipy import special, stats

import mixedfx
from mixedfx import DataError
from mixedfx.explained_variance import variance_decomposition
from mixedfx._tf import tf
from mixedfx.design import RandomTermData
from mixedfx.model import (
    RESPONSE,
    Beta,
    BetaBinomial,
    Gamma,
    MixedModel,
    ModelParameters,
    NegativeBinomial,
    NegativeBinomial1,
    StudentT,
    build_joint_distribution,
    get_family,
    marginal_log_likelihood,
)

#: seven glmmTMB comparisons, 15-35 s each on 2 cores
pytestmark = pytest.mark.slow

with open(FIXTURES / "glmmtmb_families.json") as _handle:
    REFERENCE = json.load(_handle)
with open(FIXTURES / "glmmtmb_r2.json") as _handle:
    R2_REFERENCE = json.load(_handle)  # tests/fixtures/make_r2_glmmtmb_fixtures.R

#: case: (formula, family as the user spells it)
CASES = {
    "gamma": ("y ~ x + (1 | g)", "Gamma"),
    "gamma_crossed": ("y ~ x + (1 | g1) + (1 | g2)", "gamma"),
    "nbinom1": ("y ~ x + (1 | g)", "nbinom1"),
    "beta": ("y ~ x + (1 | g)", "beta"),
    "t": ("y ~ x + (1 | g)", "t"),
    "t_df4": ("y ~ x + (1 | g)", StudentT(df=4.0)),
    "betabinomial": ("cbind(successes, failures) ~ x + (1 | g)", "betabinomial"),
}


def reference_family_parameters(case: str) -> dict:
    """glmmTMB's family parameters in mixedfx's names: a Gamma's ``sigma(fit)`` is
    ``1 / sqrt(shape)`` and its summary's dispersion ``sigma^2``; nbinom1's, beta's and
    betabinomial's ``sigma(fit)`` is the dispersion; a t's is its scale, ``psi`` its df."""
    fixture = REFERENCE[case]
    family = get_family(CASES[case][1])
    if family.name == "gamma":
        return {"dispersion": fixture["sigma"] ** 2}
    if family.name == "t":
        out = {"sigma": fixture["sigma"]}
        if "df" in family.parameter_names:
            out["df"] = fixture["family_params"]["Student-t df"]
        return out
    return {"dispersion": fixture["sigma"]}


def reference_sd(case: str, group: str) -> float:
    """glmmTMB's sd of a random intercept (the JSON unboxes a one-element vector)."""
    return float(np.atleast_1d(REFERENCE[case]["sds"][group])[0])


def load_data(case: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURES / REFERENCE[case]["data"])


@pytest.fixture(scope="module")
def fits():
    """Each case fitted once (lazily: a test asks for the cases it needs)."""
    cache = {}

    def get(case):
        if case not in cache:
            formula, family = CASES[case]
            cache[case] = mixedfx.glmer(formula, load_data(case), family=family, tol=0.05, random_state=0,
                                        verbose=0)
        return cache[case]

    return get


# -- the densities -------------------------------------------------------------------------

def _random_model(family, rng, *, n=60, levels=(7, 4)):
    """A two-factor model with an offset (and trials for the beta-binomial) whose response
    is drawn from the JointDistribution itself, at random parameters."""
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    terms = tuple(RandomTermData(f"g{k}", rng.integers(0, q, n).astype(np.int32), None, q)
                  for k, q in enumerate(levels))
    offset = 0.3 * rng.normal(size=n)
    trials = rng.integers(1, 12, n).astype(np.float64) if family.name == "betabinomial" else None
    beta = rng.normal(scale=0.5, size=2)
    sds = rng.uniform(0.3, 1.0, size=len(levels))
    own = {"dispersion": rng.uniform(0.3, 3.0) if family.name in ("gamma", "nbinom1") else rng.uniform(2.0, 20.0),
           "sigma": rng.uniform(0.3, 2.0), "df": rng.uniform(2.5, 12.0)}
    family_params = {k: np.float64(own[k]) for k in family.parameter_names}
    placeholder = MixedModel(family, X, np.full(n, 0.5), terms, ("Intercept", "x"), offset=offset, trials=trials)
    joint = build_joint_distribution(placeholder.tensors(), fixed_effects=beta,
                                     random_scale_tril=[np.array([[s]]) for s in sds], family=family,
                                     family_params=family_params)
    draw = joint.sample(seed=(int(rng.integers(1 << 30)), 7))
    model = MixedModel(family, X, draw[RESPONSE].numpy(), terms, ("Intercept", "x"), offset=offset, trials=trials)
    effects = [draw[f"g{k}"].numpy() for k in range(len(levels))]
    return model, joint, effects, beta, sds, family_params


NEW_FAMILIES = [Gamma(), NegativeBinomial1(), Beta(), StudentT(), StudentT(df=3.0), BetaBinomial()]


@pytest.mark.parametrize("family", NEW_FAMILIES, ids=lambda f: f"{f.name}{'' if getattr(f, 'df', None) is None else '_df'}")
@pytest.mark.parametrize("seed", [1, 2])
def test_fit_objective_is_the_joint_distributions_log_prob(family, seed):
    """The fit's objective (prior plus the family's log_prob) equals the
    JointDistribution's log_prob to 1e-10 relative, with an offset (and trials)."""
    rng = np.random.default_rng(seed)
    model, joint, effects, beta, sds, family_params = _random_model(family, rng)
    objective, record = objective_and_record(model, joint, effects, beta, sds, family_params)
    assert np.isfinite(record)
    assert objective == pytest.approx(record, rel=1e-10)


def _scipy_log_pdf(family, y, eta, params, trials):
    """Each row's density as glmmTMB parametrises the family, written with scipy.stats."""
    if family.name == "gamma":
        shape = 1.0 / params["dispersion"]
        return stats.gamma.logpdf(y, shape, scale=np.exp(eta) / shape)
    if family.name == "nbinom1":
        phi = params["dispersion"]
        return stats.nbinom.logpmf(y, np.exp(eta) / phi, 1.0 / (1.0 + phi))
    if family.name == "beta":
        mu, phi = special.expit(eta), params["dispersion"]
        return stats.beta.logpdf(y, mu * phi, (1.0 - mu) * phi)
    if family.name == "t":
        df = params.get("df", family.df)
        return stats.t.logpdf(y, df, loc=eta, scale=params["sigma"])
    mu, phi = special.expit(eta), params["dispersion"]
    return stats.betabinom.logpmf(y, trials, mu * phi, (1.0 - mu) * phi)


@pytest.mark.parametrize("family", NEW_FAMILIES, ids=lambda f: f"{f.name}{'' if getattr(f, 'df', None) is None else '_df'}")
def test_log_prob_is_glmmtmbs_parametrisation(family):
    """Each row's log_prob equals scipy's density with glmmTMB's parameters (Gamma
    shape 1/dispersion, nbinom1 size mu/phi, beta shapes mu phi and (1-mu) phi, ...),
    and the variance method equals the distribution's."""
    rng = np.random.default_rng(5)
    model, _, effects, beta, _, params = _random_model(family, rng)
    eta = model.fixed_design @ beta + model.offset + sum(b[t.group_index, 0] for b, t in zip(effects, model.random_terms))
    ours = family.log_prob(tf.constant(eta), params, tf.constant(model.response),
                           trials=None if model.trials is None else tf.constant(model.trials)).numpy()
    np.testing.assert_allclose(ours, _scipy_log_pdf(family, model.response, eta, params, model.trials), rtol=1e-10)
    if family.name == "t" and params.get("df", family.df) <= 2:
        return
    dist = family.distribution(tf.constant(eta), params, trials=None if model.trials is None else tf.constant(model.trials))
    np.testing.assert_allclose(family.variance(family.mean(eta, params), params, trials=model.trials),
                               dist.variance().numpy(), rtol=1e-10)
    np.testing.assert_allclose(family.mean(eta, params) * (1.0 if model.trials is None else model.trials),
                               dist.mean().numpy(), rtol=1e-10)


@pytest.mark.parametrize("family, params", [
    (Gamma(), {"dispersion": 0.4}),
    (Beta(), {"dispersion": 6.0}),
    (StudentT(), {"sigma": 0.8, "df": 5.0}),
])
def test_fisher_weights_are_the_expected_information(family, params):
    """The Fisher weights stated as exact equal the mean squared score over the family's draws."""
    eta = tf.constant([-1.0, 0.0, 1.5], tf.float64)
    params = {k: tf.constant(v, tf.float64) for k, v in params.items()}
    samples = family.distribution(eta, params).sample(40000, seed=(3, 4))
    tiled = tf.tile(eta[None, :], [40000, 1])
    with tf.GradientTape() as tape:
        tape.watch(tiled)
        total = tf.reduce_sum(family.distribution(tiled, params).log_prob(samples))
    empirical = tf.reduce_mean(tf.square(tape.gradient(total, tiled)), axis=0).numpy()
    np.testing.assert_allclose(family.fisher_weight(eta, params).numpy(), empirical, rtol=0.05)


# -- against glmmTMB -----------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_glmmtmb(fits, case):
    """Fixed effects within 0.1 glmmTMB SE, random-effect sds within 5 %, the family's
    own parameters within 5 %."""
    model, fixture = fits(case), REFERENCE[case]
    for name, value in fixture["fixed_effects"].items():
        ours = model.fixed_effects_[name.replace("(Intercept)", "Intercept")]
        assert abs(ours - value) < 0.1 * fixture["fixed_effects_se"][name], (name, ours, value)
    sds = model.variance_components_.set_index("group")["sdcor"]
    for group in fixture["sds"]:
        value = reference_sd(case, group)
        assert sds[group] == pytest.approx(value, rel=0.05), (group, sds[group], value)
    for name, value in reference_family_parameters(case).items():
        assert model.model_parameters_.family_params[name] == pytest.approx(value, rel=0.05), name
    assert model.fit_summary_.converged


@pytest.mark.parametrize("case", sorted(R2_REFERENCE))
def test_r2_is_nakagawas_with_performances_variance_parts(fits, case):
    """Nakagawa's R² within 0.01 of R's (performance 0.10.2 on the glmmTMB fit), with
    Nakagawa et al. (2017)'s distribution-specific variance: nbinom1 as performance's;
    the Gamma's lognormal log1p(sigma^2) and the t's sigma^2 df / (df - 2), which
    performance 0.10.2 replaces by sigma^2 and sigma (measured: Gamma 0.757 against
    0.777 here, t 0.733 against 0.672).  The fixed and random parts within 5 % of
    insight::get_variance's, at our estimates against glmmTMB's."""
    model, reference = fits(case), R2_REFERENCE[case]
    parts = variance_decomposition(model, null_intercept=0.0)  # its fixed and random parts need no null model
    assert parts["var_fixed"] == pytest.approx(reference["var_fixed"], rel=0.05)
    assert parts["var_random"] == pytest.approx(reference["var_random"], rel=0.05)
    r2 = model.r2()
    expected = reference["nakagawa"]
    np.testing.assert_allclose(r2.to_numpy(), [expected["conditional"], expected["marginal"]], atol=0.01)


@pytest.mark.parametrize("case", sorted(CASES))
def test_laplace_reproduces_glmmtmbs_loglik_at_its_estimates(fits, case):
    """Our Laplace approximation at glmmTMB's estimates is glmmTMB's logLik (to 1e-3):
    the family's density and its parameters are glmmTMB's, and the Laplace determinant
    takes each row's exact curvature as glmmTMB's does (a Student-t outlier's is negative)."""
    model, fixture = fits(case), REFERENCE[case]
    data = load_data(case)
    response, trials = model.response_design_.evaluate(data)
    response, trials = model.family_.validate_response(response, trials=trials, name="y")
    terms = model.random_design_.materialize(data)
    bound = MixedModel(model.family_, model.fixed_design_.transform(data), response, terms,
                       model.fixed_design_.column_names, trials=trials)
    fixed = {k.replace("(Intercept)", "Intercept"): v for k, v in fixture["fixed_effects"].items()}
    params = ModelParameters(np.array([fixed[c] for c in model.fixed_design_.column_names]),
                             np.array([reference_sd(case, t.name) for t in terms]), reference_family_parameters(case))
    result = marginal_log_likelihood(bound, params, n_draws=200, seed=1)
    assert result.laplace == pytest.approx(fixture["logLik"], abs=1e-3)  # measured: within 4e-6
    # at our Monte Carlo EM estimates: close below glmmTMB's maximum
    laplace = model.log_likelihood_laplace_
    assert fixture["logLik"] - 0.25 < laplace < fixture["logLik"] + 0.02, (laplace, fixture["logLik"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_recovers_the_simulated_truth(fits, case):
    """Fixed effects within 3.5 SE of the values simulated from, sds within 3.5 of their
    asymptotic relative SE, the family's parameters within 25 % (glmmTMB's own nbinom1
    estimate lies 16 % from its truth on these 800 rows; a variance read as the wrong
    parametrisation is off by far more)."""
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
        elif name in model.family_.parameter_names:
            estimate = model.model_parameters_.family_params[name]
            assert estimate == pytest.approx(value, rel=0.25), (name, estimate)


@pytest.mark.parametrize("case", ["gamma", "beta", "t"])
def test_response_quantiles_cover_the_training_rows(fits, case):
    """The family's 2.5 % and 97.5 % response quantiles at the fitted conditional means
    hold 95 % of the observed responses, within 3.5 binomial SEs (a dispersion 20 %
    off, or quantiles of the wrong parametrisation, move it by more)."""
    model = fits(case)
    data = load_data(case)
    mean, params = model.predict(data), model.model_parameters_.family_params
    lower, upper = (model.family_.response_quantile(mean, q, params) for q in (0.025, 0.975))
    covered = np.mean((data["y"] >= lower) & (data["y"] <= upper))
    assert abs(covered - 0.95) < 3.5 * np.sqrt(0.95 * 0.05 / len(data)), covered


@pytest.mark.parametrize("case", ["gamma", "nbinom1", "beta", "t"])
def test_prediction_intervals_hold_at_least_their_level(fits, case):
    """predict_interval's prediction intervals (the link-scale interval's ends taken to
    the response's quantiles: conservative by construction) hold the fit and at least
    95 % of the training responses."""
    model = fits(case)
    data = load_data(case)
    interval = model.predict_interval(data, alpha=0.05)
    assert np.all((interval["lower"] <= interval["fit"]) & (interval["fit"] <= interval["upper"]))
    covered = np.mean((data["y"] >= interval["lower"]) & (data["y"] <= interval["upper"]))
    assert covered > 0.95 - 3.5 * np.sqrt(0.95 * 0.05 / len(data)), covered


def test_summary_reports_the_dispersion_as_glmmtmb_does(fits, capsys):
    """The summary prints glmmTMB's dispersion line (Gamma: sigma^2 = 1 / shape)."""
    model = fits("gamma")
    model.summary()
    text = capsys.readouterr().out
    expected = model.model_parameters_.family_params["dispersion"]
    assert f"Dispersion estimate for Gamma family (sigma^2): {expected:.4g}" in text
    assert expected == pytest.approx(REFERENCE["gamma"]["sigma"] ** 2, rel=0.05)


@pytest.mark.parametrize("case, n_params", [("t", 5), ("t_df4", 4), ("betabinomial", 4)])
def test_parameter_count_and_summary_of_the_familys_own_parameters(fits, case, n_params, capsys):
    """AIC counts the family's own parameters as glmmTMB's does (a t's sigma and df, or
    sigma alone when df is fixed), and the summary prints them."""
    model = fits(case)
    assert mixedfx.results.count_parameters(model) == n_params
    assert model.aic_ == pytest.approx(-2.0 * model.log_likelihood_ + 2.0 * n_params)
    model.summary()
    text = capsys.readouterr().out
    params = model.model_parameters_.family_params
    if model.family_.name == "t":
        assert f"Dispersion estimate for t family (sigma^2): {params['sigma'] ** 2:.4g}" in text
        assert ("Student-t df: 4 (fixed)" in text) == (case == "t_df4")
    else:
        assert f"Dispersion parameter for betabinomial family (): {params['dispersion']:.4g}" in text


def test_simulated_and_observed_responses_spread_alike(fits):
    """simulate() draws from the fitted family: for the beta fit, with the random effects
    at their conditional means, the simulated responses lie in (0, 1) and their mean
    squared Pearson residual equals the observed one's to 10 % (a precision read as
    its inverse, or 20 % off, would not)."""
    model = fits("beta")
    y = load_data("beta")["y"].to_numpy()
    mean = model.predict(load_data("beta"))
    draws = model.simulate(100, random_state=0, re_form=None).to_numpy()
    assert np.all((draws > 0) & (draws < 1))
    observed = np.mean((y - mean) ** 2 / (mean * (1 - mean)))
    simulated = np.mean((draws - mean[:, None]) ** 2 / (mean * (1 - mean))[:, None])
    assert simulated == pytest.approx(observed, rel=0.10)


# -- names and bad input -------------------------------------------------------------------

def test_families_are_reached_by_glmmtmbs_names():
    assert isinstance(get_family("Gamma"), Gamma) and isinstance(get_family("gamma"), Gamma)
    assert isinstance(get_family("nbinom2"), NegativeBinomial) and isinstance(get_family("nbinom1"), NegativeBinomial1)
    assert isinstance(get_family("beta_family"), Beta) and isinstance(get_family("t"), StudentT)
    assert isinstance(get_family("betabinomial"), BetaBinomial)


@pytest.mark.parametrize("family, values, match", [
    ("Gamma", [1.0, 2.0, 0.0, 3.0], r"Gamma response 'weight_kg' must be positive; found 0\.0"),
    ("gamma", [1.0, -2.0, 1.0, 3.0], r"'weight_kg' must be positive; found -2\.0"),
    ("beta", [0.2, 0.5, 1.0, 0.3], r"beta response 'weight_kg' must lie strictly between 0 and 1; found 1\.0"),
    ("beta", [0.2, 0.0, 0.4, 0.3], r"'weight_kg' must lie strictly between 0 and 1; found 0\.0"),
    ("beta", [0.2, 1.5, 0.4, 0.3], r"'weight_kg' must lie strictly between 0 and 1; found 1\.5"),
    ("nbinom1", [1.0, 2.5, 0.0, 3.0], r"'weight_kg' must be non-negative integer counts"),
])
def test_responses_outside_the_support_are_a_data_error_naming_the_column(family, values, match):
    frame = pd.DataFrame({"weight_kg": np.tile(values, 10), "x": np.arange(40.0), "g": np.repeat(np.arange(8), 5)})
    original = frame.copy()
    with pytest.raises(DataError, match=match):
        mixedfx.glmer("weight_kg ~ x + (1 | g)", frame, family=family, verbose=0)
    pd.testing.assert_frame_equal(frame, original)


def test_fixed_df_must_be_positive():
    with pytest.raises(mixedfx.ParameterError, match="df must be a positive number"):
        StudentT(df=-1.0)
