"""Random terms of the zero-inflation model (glmmTMB's ``ziformula = ~ ... + (1 | g)``) in
the model layer: a term tagged ``predictor="zi"`` enters the zero part's linear predictor
(mixedfx/model/joint.py ``family_inputs``, zero_inflation.py ``with_predictor_offsets``).

The density against the JointDistribution and scipy; the density of record integrated
over both site effects on a grid and maximized, and its Laplace approximation (a 2 x 2
curvature per row) and importance sampling, against glmmTMB 1.1.5
(tests/fixtures/make_zi_random_fixtures.R: simulated, 600 rows, 30 sites) and the
simulated truth; the MCEM fit of the estimators' ``ziformula = "~ mined + (1 | site)"``
against glmmTMB, the exact maximum and the truth, its standard errors, predictions,
tables and summary; and the tools on that fit (issue 17): one Wald covariance for both
tables, prediction intervals with the zi effects' uncertainty (against a by-hand Monte
Carlo), confint, anova against glmmTMB's and emmeans' (tests/fixtures/
make_zi_random_tools_fixtures.R), to_arviz, and the sharded sums (tests/distributed_zi_check.py).
"""

import io
import json
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, GridMarginal, caret_column, objective_and_record, subprocess_env
from scipy import optimize, special, stats

import mixedfx
from mixedfx import FormulaError, ParameterError
from mixedfx._tf import tf
from mixedfx.design import RandomTermData
from mixedfx.estimator import base
from mixedfx.exceptions import DataError
from mixedfx.inference import finish, layout
from mixedfx.model import (Binomial, MixedModel, ModelParameters, NegativeBinomial, Poisson, TruncatedPoisson,
                           build_joint_distribution, marginal_log_likelihood)
from mixedfx.model.joint import family_inputs, numpy_random_part

with open(FIXTURES / "glmmtmb_zi_random.json") as _handle:
    REFERENCE = json.load(_handle)

NAMES = ("(Intercept)", "minedyes")


# -- the density -------------------------------------------------------------------------------

def _model(base, rng, *, n=90, q=(6, 5)):
    """A zero-inflated (or hurdle) model with one random term of each linear predictor on
    different factors, an offset and a two-column zero-inflation design."""
    family = base.zero_inflated(("Intercept", "w"))
    X, X_zi = (np.column_stack([np.ones(n), rng.normal(size=n)]) for _ in range(2))
    terms = (RandomTermData("g0", rng.integers(0, q[0], n).astype(np.int32), None, q[0]),
             RandomTermData("g1", rng.integers(0, q[1], n).astype(np.int32), None, q[1], predictor="zi"))
    trials = rng.integers(1, 8, n).astype(np.float64) if base.takes_trial_weights else None
    response = rng.poisson(2.0, n).astype(float) * (rng.uniform(size=n) < 0.6)
    if trials is not None:
        response = np.minimum(response, trials)
    if not base.zero_inflatable:  # hurdle: its truncated base never gives a zero, the zero part does
        response = np.where(response > 0, response, 0.0)
    model = MixedModel(family, X, response, terms, ("Intercept", "x"), offset=0.3 * rng.normal(size=n),
                       trials=trials, family_design={"zi": X_zi})
    params = {"zi": np.array([-0.5, 0.8]), **({"dispersion": np.float64(1.7)} if base.parameter_names else {})}
    return model, np.array([0.7, 0.4]), np.array([0.6, 1.1]), params


def _by_hand(model, beta, effects, params):
    """Each row's zero-inflated log-likelihood in scipy, from the two linear predictors."""
    eta = model.fixed_design @ beta + model.offset + effects[0][model.random_terms[0].group_index, 0]
    logits = model.family_design["zi"] @ params["zi"] + effects[1][model.random_terms[1].group_index, 0]
    y, base = model.response, model.family.base
    if isinstance(base, Binomial):
        count = stats.binom.logpmf(y, model.trials, special.expit(eta))
    elif isinstance(base, NegativeBinomial):
        size = params["dispersion"]  # nbinom2's size
        count = stats.nbinom.logpmf(y, size, size / (size + np.exp(eta)))
    else:
        count = stats.poisson.logpmf(y, np.exp(eta))
    log_pi, log_keep = -np.logaddexp(0, -logits), -np.logaddexp(0, logits)
    return np.where(y == 0, np.logaddexp(log_pi, log_keep + count), log_keep + count)


@pytest.mark.parametrize("base", [Poisson(), NegativeBinomial(), Binomial()], ids=str)
def test_objective_is_the_joint_distribution_and_scipy(base):
    """The fit's objective (joint_log_prob) equals the JointDistribution's log_prob to 1e-10
    with a random term in each linear predictor, and scipy's zero-inflated density with
    the zi term's effects added to the zero part's logits (not to eta)."""
    rng = np.random.default_rng(7)
    model, beta, sds, params = _model(base, rng)
    effects = [s * rng.normal(size=(t.num_levels, 1)) for s, t in zip(sds, model.random_terms)]
    joint = build_joint_distribution(model.tensors(), fixed_effects=beta, random_scale_tril=[[[s]] for s in sds],
                                     family=model.family, family_params=params)
    objective, record = objective_and_record(model, joint, effects, beta, sds, params)
    prior = sum(stats.norm.logpdf(b, scale=s).sum() for b, s in zip(effects, sds))
    assert abs(objective - record) < 1e-10 * abs(record)
    assert abs(objective - (prior + _by_hand(model, beta, effects, params).sum())) < 1e-10 * abs(record)


def test_hurdle_zero_part_takes_the_random_part():
    """A hurdle's ``p(0) = pi``: each zero row's log-likelihood is ``log_sigmoid`` of its zero
    part's logit, random part included."""
    rng = np.random.default_rng(3)
    model, beta, _, params = _model(TruncatedPoisson(), rng)
    effects = [rng.normal(size=(t.num_levels, 1)) for t in model.random_terms]
    eta, natural = family_inputs(model.tensors(), [tf.constant(e) for e in effects], fixed_effects=beta,
                                 family=model.family, family_params=params)
    rows = model.family.log_prob(eta, natural, model.response, trials=model.family_rows).numpy()
    logits = model.family_design["zi"] @ params["zi"] + numpy_random_part(effects, model.random_terms,
                                                                           predictor="zi", n_rows=model.n_obs)
    zero = model.response == 0
    assert zero.sum() > 10
    np.testing.assert_allclose(rows[zero], -np.logaddexp(0, -logits[zero]), rtol=1e-12)


def test_a_family_without_a_zero_part_refuses_the_term():
    """A zi-tagged term on a family without the zi linear predictor: a DataError naming it."""
    term = RandomTermData("site", np.array([0, 1, 0, 1], dtype=np.int32), None, 2, predictor="zi")
    with pytest.raises(DataError, match="'site' enters the 'zi' linear predictor.*has: cond"):
        MixedModel(Poisson(), np.ones((4, 1)), np.array([0.0, 1, 2, 3]), (term,), ("Intercept",))


# -- the density of record against glmmTMB ----------------------------------------------------

def _salamander_like():
    """The fixture's data as a model: cond and zi designs (Intercept, minedyes), a site
    intercept in each linear predictor."""
    data = pd.read_csv(FIXTURES / REFERENCE["data"])
    site = pd.factorize(data["site"], sort=True)[0].astype(np.int32)
    X = np.column_stack([np.ones(len(data)), (data["mined"] == "yes").to_numpy(float)])
    terms = (RandomTermData("site", site, None, 30), RandomTermData("site", site, None, 30, predictor="zi"))
    return MixedModel(Poisson().zero_inflated(("Intercept", "minedyes")), X, data["count"].to_numpy(float), terms,
                      ("Intercept", "minedyes"), family_design={"zi": X})


def _glmmtmb_theta():
    return np.array([*(REFERENCE["fixed_effects"][k] for k in NAMES),
                     *(REFERENCE["zi_fixed_effects"][k] for k in NAMES),
                     np.log(REFERENCE["sds"]["site"]), np.log(REFERENCE["zi_sds"]["site"])])


@pytest.fixture(scope="module")
def exact_fit():
    """The maximum of the exact marginal likelihood (BFGS from beta = zi = 0, sds 0.5)."""
    marginal = GridMarginal(_salamander_like())
    result = optimize.minimize(marginal, np.array([0.0, 0.0, 0.0, 0.0, np.log(0.5), np.log(0.5)]), jac=True,
                               method="BFGS", options={"gtol": 1e-4})
    assert result.success, result.message
    return marginal, result


def test_density_of_record_at_glmmtmb_estimates_matches_scipy(exact_fit):
    """The grid integral of the density of record at glmmTMB's estimates equals the same
    integral of scipy's zero-inflated Poisson (1e-9), and lies above glmmTMB's Laplace
    logLik by the Laplace approximation's error (0.578 here: each site's posterior of its
    zi effect is skewed; the measured gap is asserted to within 0.05 of it)."""
    marginal, _ = exact_fit
    theta = _glmmtmb_theta()
    ours = -marginal(theta)[0]
    data = pd.read_csv(FIXTURES / REFERENCE["data"])
    site, y = pd.factorize(data["site"], sort=True)[0], data["count"].to_numpy(float)
    m = (data["mined"] == "yes").to_numpy(float)
    uc, uz = np.linspace(-6, 6, 81), np.linspace(-6, 6, 41)
    log_w = np.log(np.outer(stats.norm.pdf(uc) * (uc[1] - uc[0]), stats.norm.pdf(uz) * (uz[1] - uz[0])))
    total = 0.0
    for s in range(30):
        r = site == s
        eta = theta[0] + theta[1] * m[r] + np.exp(theta[4]) * uc[:, None, None]
        logits = theta[2] + theta[3] * m[r] + np.exp(theta[5]) * uz[None, :, None]
        count = stats.poisson.logpmf(y[r], np.exp(eta))
        log_pi, log_keep = -np.logaddexp(0, -logits), -np.logaddexp(0, logits)
        total += special.logsumexp(np.where(y[r] == 0, np.logaddexp(log_pi, log_keep + count),
                                            log_keep + count).sum(-1) + log_w)
    assert abs(ours - total) < 1e-9
    assert abs(ours - REFERENCE["logLik"] - 0.578) < 0.05


def test_exact_fit_against_glmmtmb_and_truth(exact_fit):
    """The density of record's maximum likelihood against glmmTMB (Laplace): fixed and zi
    effects within 0.1 SE, sd(site) of the conditional model within 5 %; the zi sd within
    10 %: the exact likelihood puts it at 0.870, glmmTMB's Laplace one at 0.815, and
    glmmTMB's own profile (the fixture's ``zi_sd_profile``) is flat there (logLik -1017.77
    at 0.8 and -1018.17 at 1.0, within 0.4 of its maximum).  The simulated truth is
    recovered within 2 of glmmTMB's SEs (effects) and 25 % (sds from 30 sites)."""
    marginal, result = exact_fit
    theta = result.x
    se = np.array([*REFERENCE["fixed_effects_se"].values(), *REFERENCE["zi_fixed_effects_se"].values()])
    reference = _glmmtmb_theta()
    assert np.all(np.abs(theta[:4] - reference[:4]) < 0.1 * se)
    assert abs(np.exp(theta[4]) / REFERENCE["sds"]["site"] - 1) < 0.05
    assert abs(np.exp(theta[5]) / REFERENCE["zi_sds"]["site"] - 1) < 0.10
    assert -result.fun >= -marginal(reference)[0]  # the maximum: above glmmTMB's estimates' exact value
    truth = REFERENCE["truth"]
    assert np.all(np.abs(theta[:4] - np.array([*truth["cond"], *truth["zi"]])) < 2 * se)
    assert abs(np.exp(theta[4]) / truth["sd_cond"] - 1) < 0.25
    assert abs(np.exp(theta[5]) / truth["sd_zi"] - 1) < 0.25


def test_laplace_and_importance_sampling_against_glmmtmb_and_the_grid(exact_fit):
    """The Laplace approximation with a 2 x 2 curvature per row (mixedfx/model/predictor_laplace.py)
    at glmmTMB's estimates is glmmTMB's logLik (-1017.76745) to 1e-4, its conditional modes
    are glmmTMB's ranef of both linear predictors to 1e-3; the importance-sampling estimate
    is the grid's exact value within 4 Monte Carlo SEs."""
    marginal, _ = exact_fit
    theta = _glmmtmb_theta()
    params = ModelParameters(theta[:2], np.exp(theta[4:]), {"zi": theta[2:4]})
    result = marginal_log_likelihood(_salamander_like(), params, n_draws=1000, seed=1)
    assert abs(result.laplace - REFERENCE["logLik"]) < 1e-4
    np.testing.assert_allclose(result.conditional_modes[0][:, 0], REFERENCE["ranef_cond"], atol=1e-3)
    np.testing.assert_allclose(result.conditional_modes[1][:, 0], REFERENCE["ranef_zi"], atol=1e-3)
    exact = -marginal(theta)[0]
    assert 0 < result.standard_error < 0.2
    assert abs(result.log_likelihood - exact) < 4 * result.standard_error


def test_importance_sampling_passes_count_both_linear_predictors(monkeypatch):
    """With random terms in both linear predictors each pass stacks ``[draws, 2, rows]``:
    the pass budget (``ROW_PASS_ENTRIES``) counts both predictors, and the passes
    give the one-pass estimate and standard error."""
    from mixedfx.model import likelihood, predictor_laplace

    model, theta = _salamander_like(), _glmmtmb_theta()
    params = ModelParameters(theta[:2], np.exp(theta[4:]), {"zi": theta[2:4]})
    whole = marginal_log_likelihood(model, params, n_draws=60, seed=1)
    shapes, original = [], predictor_laplace._summed_log_likelihood

    def spy(family, parts, *args):
        shapes.append(tuple(parts.shape))
        return original(family, parts, *args)

    monkeypatch.setattr(predictor_laplace, "_summed_log_likelihood", spy)
    monkeypatch.setattr(likelihood, "ROW_PASS_ENTRIES", 3 * 2 * model.n_obs + 1)
    passes = marginal_log_likelihood(model, params, n_draws=60, seed=1)
    stacked = [shape[0] for shape in shapes if shape[1:] == (2, model.n_obs)]
    assert max(stacked) == 3 and sum(stacked) == 60, stacked
    assert passes.log_likelihood == pytest.approx(whole.log_likelihood, abs=1e-9)
    assert passes.standard_error == pytest.approx(whole.standard_error, rel=1e-9)


# -- the fit (MCEM, the estimators) -------------------------------------------------------------

#: the Wald covariance computations of the fit's final estimates (see ``fitted``)
WALD_CALLS = []


@pytest.fixture(scope="module")
def fitted():
    """The estimator's fit of the fixture's model (glmmTMB's ``ziformula = ~ mined + (1 | site)``),
    recording in :data:`WALD_CALLS` the parameters of every Wald covariance computed
    (through each name it is reached by)."""
    data = pd.read_csv(FIXTURES / REFERENCE["data"])
    original = layout.wald_covariance

    def counted(model, params, random_effects):
        WALD_CALLS.append(np.array(params.fixed_effects))
        return original(model, params, random_effects)

    with pytest.MonkeyPatch.context() as patch:
        for module in (layout, finish, base):
            if hasattr(module, "wald_covariance"):
                patch.setattr(module, "wald_covariance", counted)
        return mixedfx.MixedEffectsRegressor(REFERENCE["formula"], family="poisson",
                                             ziformula=REFERENCE["ziformula"], random_state=0, verbose=0).fit(data)


def _fitted_theta(fitted):
    sds = fitted.variance_components_.set_index("group")["sdcor"]
    return np.array([*fitted.fixed_effects_, *fitted.zi_fixed_effects_["Estimate"],
                     np.log(sds["site"]), np.log(sds["zi~site"])])


def test_fit_against_glmmtmb_the_exact_maximum_and_truth(fitted, exact_fit):
    """MCEM maximizes the exact likelihood: its estimates against glmmTMB (Laplace): fixed
    and zi effects within 0.1 SE, sd(site) within 5 %; the zi sd within 5 % of the exact
    maximum's (0.870) and 10 % of glmmTMB's (0.815, its Laplace likelihood's; see
    test_exact_fit_against_glmmtmb_and_truth); the exact log-likelihood at its estimates
    within 0.05 of the maximum; its Laplace logLik at most 0.1 below glmmTMB's (which
    maximizes it); the truth within 2 SE and 25 %."""
    marginal, result = exact_fit
    theta = _fitted_theta(fitted)
    se = np.array([*REFERENCE["fixed_effects_se"].values(), *REFERENCE["zi_fixed_effects_se"].values()])
    reference = _glmmtmb_theta()
    assert np.all(np.abs(theta[:4] - reference[:4]) < 0.1 * se)
    assert abs(np.exp(theta[4]) / REFERENCE["sds"]["site"] - 1) < 0.05
    assert abs(np.exp(theta[5]) / np.exp(result.x[5]) - 1) < 0.05
    assert abs(np.exp(theta[5]) / REFERENCE["zi_sds"]["site"] - 1) < 0.10
    assert -result.fun - (-marginal(theta)[0]) < 0.05
    assert 0.0 <= REFERENCE["logLik"] - fitted.log_likelihood_laplace_ < 0.1
    assert abs(fitted.log_likelihood_ - (-marginal(theta)[0])) < 4 * fitted.log_likelihood_se_
    truth = REFERENCE["truth"]
    assert np.all(np.abs(theta[:4] - np.array([*truth["cond"], *truth["zi"]])) < 2 * se)
    assert abs(np.exp(theta[4]) / truth["sd_cond"] - 1) < 0.25
    assert abs(np.exp(theta[5]) / truth["sd_zi"] - 1) < 0.25


def test_standard_errors_against_glmmtmb(fitted):
    """The Wald SEs of the conditional and the zi fixed effects (the random effects of
    both linear predictors profiled out) within 5 % of glmmTMB's."""
    ours = np.array([*np.sqrt(np.diag(fitted.fixed_effects_cov_)), *fitted.zi_fixed_effects_["Std. Error"]])
    theirs = np.array([*REFERENCE["fixed_effects_se"].values(), *REFERENCE["zi_fixed_effects_se"].values()])
    np.testing.assert_allclose(ours, theirs, rtol=0.05)


def test_predict_takes_the_zi_random_effects(fitted):
    """``predict`` with every term (glmmTMB's ``re.form = NULL``): ``zprob`` is the logistic
    of the zi fixed part plus the site's zi effect, ``response`` ``(1 - pi) mu`` with both
    sites' effects (1e-12 by hand); against glmmTMB's predictions within 0.05 (zprob) and
    10 % (response, conditional): its estimates are the Laplace likelihood's and its
    effects the conditional modes, ours the exact likelihood's and the conditional means.
    A new site gets no effect; ``re_form="~0"`` leaves every random term out (glmmTMB 1.1.5's
    ``re.form = NA`` keeps the zi ones: the fixture's ``zprob_population``)."""
    P = REFERENCE["predictions"]
    new = pd.DataFrame({"site": P["site"], "mined": P["mined"]})
    zprob, response = fitted.predict(new, type="zprob"), fitted.predict(new, type="response")
    m = (new["mined"] == "yes").to_numpy(float)
    zi, beta = fitted.zi_fixed_effects_["Estimate"].to_numpy(), fitted.fixed_effects_.to_numpy()
    seen = new["site"].isin(fitted.random_effects_["site"].index).to_numpy()
    sites = new["site"].where(seen, "s01")

    def effect(key):
        return np.where(seen, fitted.random_effects_[key].loc[sites, "(Intercept)"].to_numpy(), 0.0)

    by_hand = special.expit(zi[0] + zi[1] * m + effect("zi~site"))
    assert not np.allclose(effect("zi~site"), 0.0)
    np.testing.assert_allclose(zprob, by_hand, rtol=1e-12)
    np.testing.assert_allclose(response, (1 - by_hand) * np.exp(beta[0] + beta[1] * m + effect("site")), rtol=1e-12)
    np.testing.assert_allclose(zprob, P["zprob"], atol=0.05)
    np.testing.assert_allclose(response, P["response"], rtol=0.10)
    np.testing.assert_allclose(fitted.predict(new, type="conditional"), P["conditional"], rtol=0.10)
    population = fitted.predict(new, type="zprob", re_form="~0")
    np.testing.assert_allclose(population, special.expit(zi[0] + zi[1] * m), rtol=1e-12)
    assert zprob[-1] == population[-1]  # the new site


def test_tables_and_summary_separate_the_zi_terms(fitted):
    """The zi term is ``zi~site`` in variance_components_, random_effects_ and the fit's
    parameter names; the summary prints glmmTMB's two random-effects blocks."""
    assert fitted.variance_components_["group"].tolist() == ["site", "zi~site"]
    assert list(fitted.random_effects_) == ["site", "zi~site"]
    assert fitted.random_effects_["zi~site"].shape == (30, 1)
    assert "zi~sd(site)" in fitted.fit_summary_.parameter_names
    buffer = io.StringIO()
    fitted.summary(file=buffer)
    text = buffer.getvalue()
    block = text[text.index("Random effects:"):text.index("Fixed effects:")]
    assert "Conditional model:" in block and "Zero-inflation model:" in block
    assert block.index("Conditional model:") < block.index("Zero-inflation model:")
    assert block.count("site   (Intercept)") == 2


def test_a_zi_random_term_needs_a_zero_inflated_family():
    """A ziformula with random terms on a family without zero inflation: a ParameterError;
    one without a fixed part: a FormulaError at it."""
    data = pd.read_csv(FIXTURES / REFERENCE["data"])
    with pytest.raises(ParameterError, match="ziformula .zero inflation. is for the families"):
        mixedfx.MixedEffectsRegressor("count ~ mined + (1 | site)", family="gaussian",
                                      ziformula="~ mined + (1 | site)").fit(data)
    formula = "~ 0 + (1 | site)"
    with pytest.raises(FormulaError, match="need its fixed part") as error:
        mixedfx.MixedEffectsRegressor("count ~ mined + (1 | site)", family="poisson", ziformula=formula).fit(data)
    assert formula[caret_column(error.value)] == "0"


def test_residuals_and_simulate_take_the_zi_random_effects(fitted):
    """The training residuals are the response less ``predict``'s (zi random part in);
    responses simulated at the conditional means (``re_form=None``) are zero as often as
    ``pi + (1 - pi) exp(-mu)`` with each site's zi effect says (each site's 20 rows x 300
    draws: within 5 Monte Carlo SEs)."""
    data = pd.read_csv(FIXTURES / REFERENCE["data"])
    np.testing.assert_allclose(fitted.residuals(), data["count"] - fitted.predict(data), rtol=1e-12, atol=1e-12)
    pi, mu = fitted.predict(data, type="zprob"), fitted.predict(data, type="conditional")
    expected = pi + (1 - pi) * np.exp(-mu)
    simulated = fitted.simulate(300, re_form=None, random_state=1).to_numpy()
    per_site = pd.DataFrame({"site": data["site"], "sim": (simulated == 0).mean(axis=1), "expected": expected})
    sums = per_site.groupby("site")[["sim", "expected"]].mean()
    se = np.sqrt(sums["expected"] * (1 - sums["expected"]) / (20 * 300))
    assert np.all(np.abs(sums["sim"] - sums["expected"]) < 5 * se)
    assert sums["expected"].std() > 0.1  # the sites' zi effects matter


def test_save_load_and_pickle_keep_the_zi_terms(fitted, tmp_path):
    """A saved (and a pickled) fit predicts the same zero probabilities and responses:
    the zi term's predictor tag and effects travel with it (the zi sites' effects move
    ``zprob`` by more than 0.1 between sites, so a term read back as conditional shows)."""
    data = pd.read_csv(FIXTURES / REFERENCE["data"]).head(40)
    fitted.save(tmp_path / "zi.mixedfx")
    for copy in (mixedfx.load(tmp_path / "zi.mixedfx"), pickle.loads(pickle.dumps(fitted))):
        for kind in ("zprob", "response"):
            np.testing.assert_allclose(copy.predict(data, type=kind), fitted.predict(data, type=kind), rtol=1e-12)
        pd.testing.assert_frame_equal(copy.predict_interval(data, kind="mean"), fitted.predict_interval(data, kind="mean"))
        assert list(copy.variance_components_["group"]) == ["site", "zi~site"]


# -- the tools with a zi random term (issue 17) -------------------------------------------------

def test_one_wald_covariance_gives_both_tables(fitted):
    """The Wald covariance of the fixed effects and the zi coefficients jointly is computed
    once at the final estimates (it was twice: the fixed effects' in the finish, the zi
    table's in the estimator), kept as ``wald_cov_`` (numpy in a DataFrame: it pickles);
    ``fixed_effects_cov_`` and the zi table's SEs are its blocks exactly; their SEs within
    5 % of glmmTMB's."""
    final = [beta for beta in WALD_CALLS if np.array_equal(beta, fitted.model_parameters_.fixed_effects)]
    assert len(final) == 1
    joint = fitted.wald_cov_.to_numpy()
    assert list(fitted.wald_cov_.index) == ["Intercept", "mined[T.yes]", "zi~(Intercept)", "zi~mined[T.yes]"]
    np.testing.assert_array_equal(fitted.fixed_effects_cov_.to_numpy(), joint[:2, :2])
    np.testing.assert_array_equal(fitted.zi_fixed_effects_["Std. Error"].to_numpy(), np.sqrt(np.diag(joint)[2:]))
    assert abs(joint[0, 2]) > 0.1 * np.sqrt(joint[0, 0] * joint[2, 2])  # the cross block that predict_interval uses
    ours = np.sqrt(np.diag(joint))
    theirs = np.array([*REFERENCE["fixed_effects_se"].values(), *REFERENCE["zi_fixed_effects_se"].values()])
    np.testing.assert_allclose(ours, theirs, rtol=0.05)


def _linear_predictor_draws(fitted, new, n, rng, *, zi_random=True):
    """By hand: per row of ``new``, ``n`` draws of the two linear predictors: the estimates
    plus normal noise of the coefficients' joint Wald covariance and of each site's
    conditional variance of its effect in each (``zi_random=False``: the zi one's left out)."""
    m = (new["mined"] == "yes").to_numpy(float)
    site = fitted.random_effects_["site"].index.get_indexer(new["site"])
    X = np.column_stack([np.ones(len(new)), m])
    joint = fitted.wald_cov_.to_numpy()
    beta, zi = fitted.fixed_effects_.to_numpy(), fitted.zi_fixed_effects_["Estimate"].to_numpy()
    coefficients = rng.multivariate_normal(np.concatenate([beta, zi]), joint, size=n)  # [n, 4]
    eta = coefficients[:, :2] @ X.T + fitted.random_effects_["site"].iloc[site, 0].to_numpy()
    zeta = coefficients[:, 2:] @ X.T + fitted.random_effects_["zi~site"].iloc[site, 0].to_numpy()
    sd_cond = np.sqrt(fitted.random_effects_cov_["site"][site, 0, 0])
    sd_zi = np.sqrt(fitted.random_effects_cov_["zi~site"][site, 0, 0]) * zi_random
    return eta + sd_cond * rng.normal(size=eta.shape), zeta + sd_zi * rng.normal(size=zeta.shape)


def test_predict_interval_takes_the_zi_random_effects(fitted):
    """``predict_interval`` of a zi-random fit: the mean's interval is the 2.5 % and 97.5 %
    quantiles of ``(1 - expit(zeta)) exp(eta)`` over the two linear predictors' estimates'
    distribution (by hand: 200,000 pseudo-random draws; within 2 %).  Leaving out the zi
    effects' conditional variance narrows it by far more (by 5 % where the zero
    probability is 0.1, over 15 % at the other four rows), so the test sees it; the prediction interval's ends are those of the by-hand mixture's
    quantiles (within 1 count)."""
    P = REFERENCE["predictions"]
    new = pd.DataFrame({"site": P["site"][:5], "mined": P["mined"][:5]})
    rng = np.random.default_rng(5)
    mean = fitted.predict_interval(new, kind="mean")
    eta, zeta = _linear_predictor_draws(fitted, new, 200_000, rng)
    by_hand = np.quantile((1 - special.expit(zeta)) * np.exp(eta), [0.025, 0.975], axis=0)
    np.testing.assert_allclose(mean[["lower", "upper"]].to_numpy().T, by_hand, rtol=0.02)
    np.testing.assert_allclose(mean["fit"], fitted.predict(new, type="response"), rtol=1e-12)
    eta0, zeta0 = _linear_predictor_draws(fitted, new, 200_000, rng, zi_random=False)
    narrow = np.diff(np.quantile((1 - special.expit(zeta0)) * np.exp(eta0), [0.025, 0.975], axis=0), axis=0)
    ratio = narrow[0] / (mean["upper"] - mean["lower"]).to_numpy()  # measured: 0.78, 0.84, 0.69, 0.95, 0.79
    assert np.all(ratio < 0.97) and np.sum(ratio < 0.85) >= 4
    prediction = fitted.predict_interval(new, kind="prediction")
    pi, mu = special.expit(zeta[:10_000]), np.exp(eta[:10_000])
    counts = np.arange(80)[:, None, None]
    cdf = (pi + (1 - pi) * stats.poisson.cdf(counts, mu)).mean(axis=1)  # [count, row]
    for q, column in ((0.025, "lower"), (0.975, "upper")):
        np.testing.assert_allclose(prediction[column], np.argmax(cdf >= q, axis=0), atol=1.0)
    assert prediction["upper"].max() >= 10


def test_predict_interval_without_the_zi_terms_is_the_fixed_parts(fitted):
    """``re_form="~0"`` leaves every random term out: the interval is the single linear
    predictor's (the zi probability at its fixed part, as ``predict``)."""
    new = pd.DataFrame({"site": ["s01", "s05"], "mined": ["no", "yes"]})
    table = fitted.predict_interval(new, kind="mean", re_form="~0")
    np.testing.assert_allclose(table["fit"], fitted.predict(new, type="response", re_form="~0"), rtol=1e-12)
    assert np.all(table["lower"] < table["fit"]) and np.all(table["fit"] < table["upper"])


with open(FIXTURES / "glmmtmb_zi_random_tools.json") as _handle:
    TOOLS = json.load(_handle)


def test_confint_of_the_zi_model(fitted):
    """``confint(method="profile")`` would hold the zi coefficients at their estimates
    while profiling the rest (too narrow, with the zi sd profiled at fixed zi effects):
    a ParameterError naming the zi coefficients, the term ``zi~site`` and the reason.
    Wald intervals cover the zi coefficients too (their SEs are the zi table's), and
    match glmmTMB's ``confint`` (estimate +- z SE) within 0.2 of its SEs at each end."""
    with pytest.raises(ParameterError, match=r"own coefficients \(zi\) and the random terms zi~site .* too narrow"):
        fitted.confint(method="profile")
    wald = fitted.confint()
    assert wald.loc[["sd(site)", "zi~sd(site)"]].isna().all().all()  # Wald: no sds, as lme4's and glmmTMB's
    z, names = stats.norm.ppf(0.975), ["zi~(Intercept)", "zi~mined[T.yes]"]
    np.testing.assert_allclose(wald.loc[names, "97.5 %"] - wald.loc[names, "2.5 %"],
                               2 * z * fitted.zi_fixed_effects_["Std. Error"].to_numpy(), rtol=1e-12)
    for table, se, rows in (("fixed_effects", "fixed_effects_se", ["Intercept", "mined[T.yes]"]),
                            ("zi_fixed_effects", "zi_fixed_effects_se", names)):  # glmmTMB's confint(m)
        estimate, error = np.array(list(REFERENCE[table].values())), np.array(list(REFERENCE[se].values()))
        for column, sign in (("2.5 %", -1), ("97.5 %", 1)):
            assert np.all(np.abs(wald.loc[rows, column] - (estimate + sign * z * error)) < 0.2 * error)


def test_to_arviz_holds_the_zi_term_draws(fitted):
    """``to_arviz``: the zi term's kept E-step draws are the variable ``zi~site`` with its
    30 sites; their mean per site is its conditional mean (``random_effects_``, within
    0.02) and their sd its conditional sd (within 10 %)."""
    posterior = fitted.to_arviz().posterior
    assert set(posterior.data_vars) == {"site", "zi~site"}
    draws = posterior["zi~site"]
    assert draws.dims == ("chain", "draw", "zi~site_level", "zi~site_coef") and draws.sizes["zi~site_level"] == 30
    assert list(draws["zi~site_level"].values[:2]) == ["s01", "s02"]
    values = draws.values.reshape(-1, 30)
    np.testing.assert_allclose(values.mean(axis=0), fitted.random_effects_["zi~site"].iloc[:, 0], atol=0.02)
    np.testing.assert_allclose(values.std(axis=0), np.sqrt(fitted.random_effects_cov_["zi~site"][:, 0, 0]), rtol=0.1)


def test_marginal_means_against_emmeans(fitted):
    """``emmeans(m, "mined")`` of the zi-random fit is emmeans' (its default component for
    glmmTMB, the conditional model, on the log scale): the means within 0.1 of glmmTMB's
    SEs, the SEs within 5 % (tests/fixtures/make_zi_random_tools_fixtures.R)."""
    table = mixedfx.emmeans(fitted, "mined").table
    R = TOOLS["emmeans_cond"]
    assert table["mined"].tolist() == R["mined"]
    assert np.all(np.abs(table["emmean"] - R["emmean"]) < 0.1 * np.array(R["SE"]))
    np.testing.assert_allclose(table["SE"], R["SE"], rtol=0.05)


def test_zero_inflation_marginal_means_against_emmeans(fitted):
    """``emmeans(m, "mined", component = "zi")``: the zero-inflation model's means on the
    logit scale within 0.15 of emmeans' SEs (our zi coefficients are within 0.06 SE of
    glmmTMB's; the "yes" mean adds two of them), the SEs within 5 %; as zero
    probabilities, the delta method's SEs; the contrast is the minedyes coefficient."""
    R = TOOLS["emmeans_zi"]
    emm = mixedfx.emmeans(fitted, "mined", component="zi")
    table = emm.table
    assert table["mined"].tolist() == R["mined"]
    assert np.all(np.abs(table["emmean"] - R["emmean"]) < 0.15 * np.array(R["SE"])), table["emmean"]
    np.testing.assert_allclose(table["SE"], R["SE"], rtol=0.05)
    response = mixedfx.emmeans(fitted, "mined", component="zi", type="response").table
    np.testing.assert_allclose(response["prob"], special.expit(table["emmean"]), rtol=1e-12)
    slope = response["prob"] * (1.0 - response["prob"])
    np.testing.assert_allclose(response["SE"], slope * table["SE"], rtol=1e-12)
    pairs = emm.pairs()
    zi = fitted.zi_fixed_effects_
    assert pairs["estimate"].iloc[0] == pytest.approx(-zi["Estimate"].iloc[1], rel=1e-10)
    assert pairs["SE"].iloc[0] == pytest.approx(zi["Std. Error"].iloc[1], rel=1e-10)
    with pytest.raises(ParameterError, match="component must be 'cond' or 'zi', got 'disp'"):
        mixedfx.emmeans(fitted, "mined", component="disp")
    with pytest.raises(ParameterError, match="component='zi' needs a model fitted with a ziformula"):
        mixedfx.emmeans(types.SimpleNamespace(), "mined", component="zi")


@pytest.fixture(scope="module")
def without_zi_term():
    """glmmTMB's m0 of the anova: the same model without the zi random term."""
    data = pd.read_csv(FIXTURES / REFERENCE["data"])
    return mixedfx.MixedEffectsRegressor(REFERENCE["formula"], family="poisson", ziformula=TOOLS["m0"]["ziformula"],
                                         random_state=0, verbose=0).fit(data)


@pytest.mark.slow
def test_anova_of_the_zi_term_against_glmmtmb(fitted, without_zi_term):
    """``anova(m0, m1)`` tests the zi random term by a likelihood ratio on 1 df with the
    naive chi-square p-value, as glmmTMB's ``anova`` (no boundary correction: the sd's
    null value is on the boundary, where the p-value halves; ``attrs["note"]`` says so).
    On the Laplace likelihoods (``log_likelihood_laplace_``, glmmTMB's) the statistic is
    glmmTMB's 18.977 within 0.3; the table's (the importance-sampled exact likelihoods)
    lies above it by twice m1's Laplace error (0.578, see
    test_density_of_record_at_glmmtmb_estimates_matches_scipy) within 4 Monte Carlo SEs
    plus 0.3 (measured: 20.43; m0's Laplace error is under 0.06)."""
    table = mixedfx.anova(without_zi_term, fitted, names=["m0", "m1"])
    R = TOOLS["anova"]
    assert table["npar"].tolist() == R["npar"] and table.loc["m1", "Df"] == R["Df"]
    laplace = 2 * (fitted.log_likelihood_laplace_ - without_zi_term.log_likelihood_laplace_)
    assert abs(laplace - R["Chisq"]) < 0.3
    assert abs(without_zi_term.log_likelihood_laplace_ - TOOLS["m0"]["logLik"]) < 0.1
    se = np.hypot(*table.attrs["logLik_se"].values())
    assert abs(table.loc["m1", "Chisq"] - (R["Chisq"] + 2 * 0.578)) < 8 * se + 0.3
    assert table.loc["m1", "Pr(>Chisq)"] == pytest.approx(stats.chi2.sf(table.loc["m1", "Chisq"], 1), rel=1e-12)
    assert "boundary" in table.attrs["note"]


@pytest.mark.slow
def test_sharded_sums_take_the_zi_term():
    """On three logical CPU devices (tests/distributed_zi_check.py, in a subprocess) the
    response's log-likelihood of the zi-random model and its gradient in both terms'
    effects, summed over padded shards as a sharded fit sums them, equal the sums on
    all rows (1e-12); without the terms' linear predictors (the zi term read as a
    conditional one) the sum moves by over 100."""
    env = {**subprocess_env(), "MIXEDFX_CPU_DEVICES": "3"}
    env.pop("TF_CONFIG", None)
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "distributed_zi_check.py")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 3 and out["rows_per_replica"] * 3 > out["n_rows"] == 599
    assert out["predictors"] == ["cond", "zi"]
    assert abs(out["sharded"] - out["local"]) < 1e-12 * abs(out["local"])
    for local, sharded in zip(out["local_gradient"], out["sharded_gradient"]):
        np.testing.assert_allclose(sharded, local, rtol=1e-12, atol=1e-12)
    assert abs(out["sharded_without_predictors"] - out["local"]) > 100


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_zi_parameters(fitted):
    """``confint(method="bootstrap")`` refits responses simulated with both site effects:
    every parameter, the zi coefficients and ``zi~sd(site)`` included, gets finite ends
    (two replicates: the machinery, not the coverage; each refit about 15-70 s)."""
    table = fitted.confint(method="bootstrap", n_boot=2, random_state=1)
    assert list(table.index) == list(fitted.fit_summary_.parameter_names)
    assert np.isfinite(table.to_numpy()).all() and table.attrs["n_boot"] == 2
    assert np.all(table["97.5 %"] > table["2.5 %"])  # the two replicates differ in every parameter
    assert 0.3 < table.loc["zi~sd(site)"].mean() < 2.0
