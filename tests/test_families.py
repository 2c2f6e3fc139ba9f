"""GLMM families against glmer, glmmTMB and clmm, and against simulated truth.

The R reference data sets (tests/fixtures/make_glmm_fixtures.R) are themselves
simulated, with the true values written in that script; the fits are checked against
both the reference fits and the truth.
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES
from scipy import special
from sklearn.base import clone

import mixedfx
from mixedfx import DataError, MixedEffectsClassifier, MixedEffectsRegressor, ParameterError
from mixedfx._tf import tf
from mixedfx.model import Bernoulli, Binomial, MixedModel, ModelParameters, NegativeBinomial, Ordinal, Poisson
from mixedfx.model import marginal_log_likelihood

#: glmer/glmmTMB comparisons: a dozen GLMM fits (Laplace references included)
pytestmark = pytest.mark.slow


def load_glmm(name):
    """A reference fit written by tests/fixtures/make_glmm_fixtures.R."""
    with open(FIXTURES / f"glmm_{name}.json") as handle:
        return json.load(handle)


def reference_values(fixture):
    fixed = {k.replace("(Intercept)", "Intercept"): v for k, v in fixture["fixed_effects"].items()}
    se = {k.replace("(Intercept)", "Intercept"): v for k, v in fixture["fixed_effects_se"].items()}
    sds = {row["grp"]: row["sdcor"] for row in fixture["varcorr"]}
    return fixed, se, sds


def check_against(model, fixture, *, names=None):
    """sds within 5% (10% below 20 levels); fixed effects within 0.25 SE."""
    fixed, se, sds = reference_values(fixture)
    ours = model.variance_components_.set_index("group")["sdcor"]
    for group, value in sds.items():
        levels = model.random_design_.factors[group].num_levels
        tolerance = 0.10 if levels < 20 else 0.05
        assert ours[group] == pytest.approx(value, rel=tolerance), (group, ours[group], value)
    for name, value in fixed.items():
        ours_name = (names or {}).get(name, name)
        assert abs(model.fixed_effects_[ours_name] - value) < 0.25 * se[name], (name, model.fixed_effects_[ours_name], value)


CASES = {
    "cbpp_binomial": ("cbpp.csv", "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", "binomial"),
    "binomial_crossed": ("binomial_crossed.csv", "cbind(successes, failures) ~ x + (1 | g1) + (1 | g2)", "binomial"),
    "poisson_crossed": ("poisson_crossed.csv", "y ~ x + offset(np.log(exposure)) + (1 | g1) + (1 | g2)", "poisson"),
    "negbin_crossed": ("negbin_crossed.csv", "y ~ x + (1 | g1) + (1 | g2)", "negative_binomial"),
}


@pytest.fixture(scope="module")
def fits():
    out = {}
    for name, (data_file, formula, family) in CASES.items():
        data = pd.read_csv(FIXTURES / data_file)
        out[name] = (data, mixedfx.glmer(formula, data, family=family, tol=0.05, random_state=0, verbose=0))
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_r_reference(fits, name):
    _, model = fits[name]
    names = {f"period{k}": f"C(period)[T.{k}]" for k in (2, 3, 4)}
    check_against(model, load_glmm(name), names=names)


@pytest.mark.parametrize("name", sorted(CASES))
def test_standard_errors_match_the_r_reference(fits, name):
    """Laplace (penalized IRLS) standard errors at the conditional modes, as glmer's
    vcov: within 5% (measured: within 2.5%)."""
    _, model = fits[name]
    _, se, _ = reference_values(load_glmm(name))
    ours = np.sqrt(np.diag(model.fixed_effects_cov_))
    np.testing.assert_allclose(ours, list(se.values()), rtol=0.05)
    assert model.fit_summary_.converged


def test_negative_binomial_dispersion_matches_glmmtmb(fits):
    _, model = fits["negbin_crossed"]
    assert model.dispersion_ == pytest.approx(load_glmm("negbin_crossed")["dispersion"], rel=0.05)


@pytest.mark.parametrize(
    "name, truth",
    [
        # the values the R script simulated from
        ("binomial_crossed", {"Intercept": -0.3, "x": 0.6, "g1": 0.7, "g2": 0.5}),
        ("poisson_crossed", {"Intercept": 0.2, "x": 0.4, "g1": 0.6, "g2": 0.4}),
        ("negbin_crossed", {"Intercept": 1.0, "x": 0.5, "g1": 0.6, "g2": 0.4}),
    ],
)
def test_recovers_the_simulated_truth(fits, name, truth):
    _, model = fits[name]
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    for k, value in truth.items():
        if k in model.fixed_effects_.index:
            j = list(model.fixed_effects_.index).index(k)
            assert abs(model.fixed_effects_[k] - value) < 3.5 * se[j], (k, model.fixed_effects_[k])
        else:
            levels = model.random_design_.factors[k].num_levels
            sd = model.variance_components_.set_index("group")["sdcor"][k]
            assert abs(np.log(sd / value)) < 3.5 / np.sqrt(2 * levels), (k, sd)


@pytest.mark.parametrize("name", ["cbpp_binomial", "binomial_crossed", "poisson_crossed", "negbin_crossed"])
def test_laplace_reproduces_the_reference_at_its_estimates(fits, name):
    """Our Laplace approximation equals glmer's (and glmmTMB's) logLik at their estimates."""
    data, model = fits[name]
    fixture = load_glmm(name)
    fixed, _, sds = reference_values(fixture)
    fixed = {k if k in model.fixed_effects_.index else f"C(period)[T.{k[-1]}]": v for k, v in fixed.items()}
    X = model.fixed_design_.transform(data)
    terms = model.random_design_.materialize(data)
    response, trials = model.response_design_.evaluate(data)
    bound = MixedModel(model.family_, X, response, terms, model.fixed_design_.column_names,
                       offset=model.fixed_design_.offset(data), trials=trials)
    family_params = {"dispersion": fixture["dispersion"]} if "dispersion" in fixture else {}
    params = ModelParameters(np.array([fixed[c] for c in model.fixed_design_.column_names]),
                             np.array([sds[t.name] for t in terms]), family_params)
    result = marginal_log_likelihood(bound, params, n_draws=400, seed=1)
    assert result.laplace == pytest.approx(fixture["logLik"], abs=0.02)
    # importance sampling corrects the Laplace approximation by a little, with a small error
    assert abs(result.log_likelihood - result.laplace) < 1.0 and result.standard_error < 0.1
    assert model.log_likelihood_ == pytest.approx(result.log_likelihood, abs=0.5)


def test_proportion_with_trials_argument_and_deprecated_sample_weight(fits):
    """trials= takes a proportion response's trials; sample_weight still does, with a
    FutureWarning: the same model as cbind(successes, failures), bit for bit."""
    data, model = fits["binomial_crossed"]
    trials = data["successes"] + data["failures"]
    proportion = data.assign(p=data["successes"] / trials)
    estimator = MixedEffectsRegressor("p ~ x + (1 | g1) + (1 | g2)", family="binomial", tol=0.05, random_state=0,
                                      verbose=0)
    # glmer's spelling: trials= names a column (the estimator's fit(..., trials=) underneath)
    explicit = mixedfx.glmer("p ~ x + (1 | g1) + (1 | g2)", proportion.assign(n=trials), family="binomial",
                             trials="n", tol=0.05, random_state=0, verbose=0)
    np.testing.assert_array_equal(explicit.fixed_effects_, model.fixed_effects_)
    with pytest.warns(FutureWarning, match="sample_weight as the trials of a proportion response is deprecated"):
        weighted = clone(estimator).fit(proportion, sample_weight=trials)
    np.testing.assert_array_equal(weighted.fixed_effects_, model.fixed_effects_)
    np.testing.assert_allclose(weighted.predict(proportion.head()), model.predict(data.head()))


def test_poisson_predictions_use_the_offset(fits):
    data, model = fits["poisson_crossed"]
    rows = data.head(4)
    doubled = rows.assign(exposure=2 * rows["exposure"])
    np.testing.assert_allclose(model.predict(doubled), 2 * model.predict(rows))
    eta = (model.fixed_effects_["Intercept"] + model.fixed_effects_["x"] * rows["x"] + np.log(rows["exposure"])
           + model.random_effects_["g1"].loc[rows["g1"], "(Intercept)"].to_numpy()
           + model.random_effects_["g2"].loc[rows["g2"], "(Intercept)"].to_numpy())
    np.testing.assert_allclose(model.predict(rows), np.exp(eta))


def test_glmm_summary(fits, capsys):
    _, model = fits["cbpp_binomial"]
    model.summary()
    text = capsys.readouterr().out
    for piece in ("Generalized linear mixed model", "binomial (logit link)", "z value", "Pr(>|z|)",
                  "logLik use the log-likelihood by adaptive Gauss-Hermite quadrature (25 nodes",
                  "logLik by the Laplace approximation (glmer's)", "herd", "; HMC acceptance 0.",
                  "; final step size "):
        assert piece in text, piece
    assert "Residual" not in text


# -- classifiers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bernoulli_data():
    data, effects = mixedfx.datasets.make_mixed_data(
        3000, groups={"a": 60, "b": 40}, fixed_effects={"Intercept": -0.4, "x": 0.8},
        random_sd={"a": 0.9, "b": 0.5}, family="bernoulli", return_effects=True, random_state=3)
    data["label"] = np.where(data["y"] == 1, "yes", "no")
    return data


@pytest.fixture(scope="module")
def bernoulli_fit(bernoulli_data):
    return MixedEffectsClassifier("label ~ x + (1 | a) + (1 | b)", random_state=0, verbose=0).fit(bernoulli_data)


def test_bernoulli_recovers_the_truth(bernoulli_fit):
    model = bernoulli_fit
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    assert abs(model.fixed_effects_["Intercept"] + 0.4) < 3.5 * se[0]
    assert abs(model.fixed_effects_["x"] - 0.8) < 3.5 * se[1]
    sds = model.variance_components_.set_index("group")["sdcor"]
    assert abs(np.log(sds["a"] / 0.9)) < 3.5 / np.sqrt(2 * 60)
    assert abs(np.log(sds["b"] / 0.5)) < 3.5 / np.sqrt(2 * 40) * 1.5  # b is less informed


def test_classifier_contract(bernoulli_fit, bernoulli_data):
    model, data = bernoulli_fit, bernoulli_data
    assert model.classes_.tolist() == ["no", "yes"]
    proba = model.predict_proba(data)
    assert proba.shape == (len(data), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(proba[:, 1], special.expit(model.decision_function(data)))
    labels = model.predict(data)
    assert set(labels) <= {"no", "yes"}
    np.testing.assert_array_equal(labels, np.where(proba[:, 1] > 0.5, "yes", "no"))
    accuracy = model.score(data)
    assert accuracy == pytest.approx(np.mean(labels == data["label"]))
    assert accuracy > 0.65
    unseen = data.head(3).assign(a="never")
    expected = special.expit(model.fixed_effects_["Intercept"] + model.fixed_effects_["x"] * unseen["x"]
                             + model.random_effects_["b"].loc[unseen["b"], "(Intercept)"].to_numpy())
    np.testing.assert_allclose(model.predict_proba(unseen)[:, 1], expected)
    with pytest.raises(mixedfx.NewLevelError):
        model.predict(unseen, new_levels="error")


def test_glmer_returns_the_right_estimator(bernoulli_data):
    with pytest.raises(ParameterError, match="use MixedEffectsClassifier for family='bernoulli'"):
        MixedEffectsRegressor("y ~ x + (1 | a)", family="bernoulli", verbose=0).fit(bernoulli_data)
    with pytest.raises(ParameterError, match="use MixedEffectsRegressor for family='poisson'"):
        MixedEffectsClassifier("y ~ x + (1 | a)", family="poisson", verbose=0).fit(bernoulli_data)


@pytest.mark.parametrize(
    "estimator, formula, transform, family, match",
    [
        (MixedEffectsClassifier, "y ~ x + (1 | a)", lambda d: d.assign(y=d.index % 3), "bernoulli",
         "a bernoulli response needs exactly 2 classes, found 3"),
        (MixedEffectsClassifier, "y ~ x + (1 | a)", None, "ordinal", "an ordinal response needs at least 3 classes"),
        (MixedEffectsRegressor, "y ~ x + (1 | a)", lambda d: d.assign(y=d["y"] - 1), "poisson",
         "must be non-negative integer counts"),
        (MixedEffectsRegressor, "y ~ x + (1 | a)", lambda d: d.assign(y=d["y"] + 0.5), "negative_binomial",
         "must be non-negative integer counts"),
        (MixedEffectsRegressor, "cbind(y, x) ~ x + (1 | a)", None, "binomial", "trials for 'cbind\\(y, x\\)' must be positive integers"),
        (MixedEffectsRegressor, "cbind(y, 1 - y) ~ x + (1 | a)", lambda d: d.assign(y=2 * d["y"]), "binomial",
         "must be integer successes between 0 and the trials"),
    ],
)
def test_bad_responses(bernoulli_data, estimator, formula, transform, family, match):
    data = bernoulli_data if transform is None else transform(bernoulli_data)
    with pytest.raises(DataError, match=match):
        estimator(formula, family=family, verbose=0).fit(data)


def test_trials_only_for_binomial(bernoulli_data):
    with pytest.raises(ParameterError, match="trials .* are for the binomial family, not the gaussian family"):
        MixedEffectsRegressor("y ~ x + (1 | a)", verbose=0).fit(bernoulli_data, trials=np.ones(len(bernoulli_data)))


@pytest.fixture(scope="module")
def ordinal_fit():
    data = mixedfx.datasets.make_mixed_data(
        3000, groups={"a": 50, "b": 30}, fixed_effects={"x": 0.7}, random_sd={"a": 0.8, "b": 0.5},
        family="ordinal", cutpoints=(-1.5, 0.0, 1.2), random_state=4)
    data["grade"] = pd.Categorical(np.array(["low", "mid", "high", "top"])[data["y"]],
                                   categories=["low", "mid", "high", "top"], ordered=True)
    return data, MixedEffectsClassifier("grade ~ x + (1 | a) + (1 | b)", family="ordinal", random_state=0,
                                        verbose=0).fit(data)


def test_ordinal_recovers_the_truth(ordinal_fit):
    data, model = ordinal_fit
    assert model.classes_.tolist() == ["low", "mid", "high", "top"]  # category order, not alphabetical
    assert list(model.cutpoints_.index) == ["low|mid", "mid|high", "high|top"]
    assert list(model.fixed_effects_.index) == ["x"]  # no intercept: the cutpoints stand in
    np.testing.assert_allclose(model.cutpoints_, [-1.5, 0.0, 1.2], atol=0.35)
    assert np.all(np.diff(model.cutpoints_) > 0)
    se = np.sqrt(model.fixed_effects_cov_.loc["x", "x"])
    assert abs(model.fixed_effects_["x"] - 0.7) < 3.5 * se
    sds = model.variance_components_.set_index("group")["sdcor"]
    assert abs(np.log(sds["a"] / 0.8)) < 3.5 / np.sqrt(2 * 50)
    proba = model.predict_proba(data.head(5))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    eta = model.decision_function(data.head(5))
    first = special.expit(model.cutpoints_.iloc[0] - eta)
    np.testing.assert_allclose(proba[:, 0], first)
    assert model.score(data) > 0.4


def test_fisher_weights_are_the_expected_information():
    """Each family's Fisher weight equals the mean squared score over its own draws."""
    eta = tf.constant([-1.0, 0.0, 2.0], tf.float64)
    for family, params in [
        (Poisson(), {}),
        (Bernoulli(), {}),
        (Binomial(link_name="probit"), {}),
        (NegativeBinomial(), {"dispersion": tf.constant(2.0, tf.float64)}),
        (Ordinal(n_categories=3), {"cutpoints": tf.constant([-0.5, 0.7], tf.float64)}),
    ]:
        trials = tf.fill([3], tf.constant(4.0, tf.float64)) if isinstance(family, Binomial) else None
        samples = family.distribution(eta, params, trials=trials).sample(40000, seed=(1, 2))
        tiled = tf.tile(eta[None, :], [40000, 1])
        with tf.GradientTape() as tape:
            tape.watch(tiled)
            total = tf.reduce_sum(family.distribution(tiled, params, trials=trials).log_prob(samples))
        score = tape.gradient(total, tiled)
        empirical = tf.reduce_mean(tf.square(score), axis=0).numpy()
        np.testing.assert_allclose(family.fisher_weight(eta, params, trials=trials).numpy(), empirical, rtol=0.06,
                                   err_msg=str(family))


@pytest.mark.slow
def test_binarized_insteval_matches_glmer(insteval):
    data = insteval.assign(good=(insteval["y"] >= 4).astype(int))
    model = mixedfx.glmer("good ~ service + (1 | s) + (1 | d) + (1 | dept)", data, family="bernoulli",
                          random_state=0)
    fixture = load_glmm("insteval_bernoulli")
    check_against(model, fixture)
    assert model.classes_.tolist() == [0, 1]


@pytest.mark.slow
def test_insteval_ordinal_matches_clmm(insteval):
    data = insteval[insteval["s"].astype(int) <= 1000]  # the subsample clmm fitted: students 1-1000
    model = mixedfx.glmer("y ~ service + (1 | s) + (1 | d) + (1 | dept)", data, family="ordinal", random_state=0)
    fixture = load_glmm("insteval_ordinal")
    check_against(model, fixture)
    for name, value in fixture["cutpoints"].items():
        assert abs(model.cutpoints_[name] - value) < 0.25 * fixture["cutpoints_se"][name], name


def test_probit_link_recovers_the_truth():
    rng = np.random.default_rng(8)
    n, levels = 3000, 50
    g = rng.integers(0, levels, n)
    x = rng.normal(size=n)
    eta = 0.3 + 0.6 * x + rng.normal(scale=0.5, size=levels)[g]
    data = pd.DataFrame({"y": (rng.normal(size=n) < eta).astype(int), "x": x, "g": [f"g{i}" for i in g]})
    model = MixedEffectsClassifier("y ~ x + (1 | g)", family=Bernoulli(link_name="probit"), random_state=0,
                                   verbose=0).fit(data)
    assert str(model.family_) == "bernoulli (probit link)"
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    assert abs(model.fixed_effects_["Intercept"] - 0.3) < 3.5 * se[0]
    assert abs(model.fixed_effects_["x"] - 0.6) < 3.5 * se[1]
    sd = model.variance_components_.set_index("group")["sdcor"]["g"]
    assert abs(np.log(sd / 0.5)) < 3.5 / np.sqrt(2 * levels)
    from scipy import stats

    np.testing.assert_allclose(model.predict_proba(data.head())[:, 1], stats.norm.cdf(model.decision_function(data.head())))


def test_ordinal_log_prob_equals_ordered_logistic_and_stays_finite():
    """The two-cutpoint log-probability is TFP's OrderedLogistic.log_prob, tails included."""
    family = Ordinal(n_categories=5)
    rng = np.random.default_rng(0)
    cutpoints = {"cutpoints": tf.constant(np.sort(rng.normal(size=4)) * 3, tf.float64)}
    eta = tf.constant(np.concatenate([rng.normal(size=2000) * 5, [-40.0, 40.0, -700.0, 700.0]]), tf.float64)
    response = tf.constant(rng.integers(0, 5, size=eta.shape[0]).astype(float), tf.float64)
    ours = family.log_prob(eta, cutpoints, response).numpy()
    tfp_value = family.distribution(eta, cutpoints).log_prob(response).numpy()
    np.testing.assert_allclose(ours, tfp_value, rtol=1e-12, atol=1e-12)
    with tf.GradientTape() as tape:
        tape.watch(eta)
        total = tf.reduce_sum(family.log_prob(eta, cutpoints, response))
    assert np.all(np.isfinite(tape.gradient(total, eta).numpy()))
