"""Random terms of the zero-inflation model (glmmTMB's ``ziformula = ~ ... + (1 | g)``) in
the model layer: a term tagged ``predictor="zi"`` enters the zero part's linear predictor
(mixedfx/model/joint.py ``family_inputs``, zero_inflation.py ``with_predictor_offsets``).

Only the model layer takes them so far: the density against the JointDistribution and
scipy; the density of record integrated over both site effects on a grid and maximized,
and its Laplace approximation (a 2 x 2 curvature per row) and importance sampling, against
glmmTMB 1.1.5 (tests/fixtures/make_zi_random_fixtures.R: simulated, 600 rows, 30 sites)
and the simulated truth.  The MCEM fit refuses such terms, and the estimators'
``ziformula`` refuses a bar (FormulaError at it).
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, caret_column, objective_and_record
from scipy import optimize, special, stats

import mixedfx
from mixedfx import FormulaError, ParameterError
from mixedfx._tf import tf
from mixedfx.design import RandomTermData
from mixedfx.exceptions import DataError
from mixedfx.inference import fit_mcem
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


class _GridMarginal:
    """The exact marginal log-likelihood: the sites are independent and each has one
    effect per linear predictor, so it is a sum over sites of 2-D integrals, taken by the
    trapezoid rule on a grid of the standardized effects (81 x 41 points over +-6 sd; the
    trapezoid rule on a smooth peak converges geometrically: 121 x 61 and 241 x 121 points
    agree to 2e-7), of the density of record's rows (family_inputs, the family's
    log_prob), with its gradient by autodiff."""

    def __init__(self, model, n_cond=81, n_zi=41):
        self.model, self.tensors = model, model.tensors()
        uc, uz = np.linspace(-6, 6, n_cond), np.linspace(-6, 6, n_zi)
        weights = np.outer(stats.norm.pdf(uc) * (uc[1] - uc[0]), stats.norm.pdf(uz) * (uz[1] - uz[0]))
        grid = np.meshgrid(uc, uz, indexing="ij")
        self.nodes = [tf.constant(g.reshape(-1, 1, 1)) for g in grid]
        self.log_weights = tf.constant(np.log(weights).reshape(-1, 1))
        self.site = tf.constant(model.random_terms[0].group_index)
        self.value = tf.function(self._value)

    def _value(self, theta):
        family, q = self.model.family, self.model.random_terms[0].num_levels
        level = tf.ones([1, q, 1], tf.float64)
        effects = [self.nodes[0] * tf.exp(theta[4]) * level, self.nodes[1] * tf.exp(theta[5]) * level]
        eta, params = family_inputs(self.tensors, effects, fixed_effects=theta[:2], family=family,
                                    family_params={"zi": theta[2:4]})
        rows = family.log_prob(eta, params, self.tensors.response, trials=self.tensors.trials)  # [nodes, n]
        per_site = tf.transpose(tf.math.unsorted_segment_sum(tf.transpose(rows), self.site, q))
        return tf.reduce_sum(tf.reduce_logsumexp(per_site + self.log_weights, axis=0))

    def __call__(self, theta):
        """``(minus the log-likelihood, its gradient)`` at ``(beta, zi, log sd_cond, log sd_zi)``."""
        theta = tf.constant(theta, tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(theta)
            value = self.value(theta)
        return -float(value), -tape.gradient(value, theta).numpy()


def _glmmtmb_theta():
    return np.array([*(REFERENCE["fixed_effects"][k] for k in NAMES),
                     *(REFERENCE["zi_fixed_effects"][k] for k in NAMES),
                     np.log(REFERENCE["sds"]["site"]), np.log(REFERENCE["zi_sds"]["site"])])


@pytest.fixture(scope="module")
def exact_fit():
    """The maximum of the exact marginal likelihood (BFGS from beta = zi = 0, sds 0.5)."""
    marginal = _GridMarginal(_salamander_like())
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


# -- what does not take them yet --------------------------------------------------------------

def test_fit_refuses_zi_terms():
    """The MCEM fit (its preconditioner uses one linear predictor) refuses zi-tagged terms
    with a ParameterError rather than fit a wrong model."""
    with pytest.raises(ParameterError, match="ziformula.*not fitted yet"):
        fit_mcem(_salamander_like(), seed=[1, 2])


def test_estimator_refuses_a_bar_in_ziformula_at_the_bar():
    """The estimators' ziformula keeps refusing random terms: a FormulaError with a caret at the bar."""
    data = pd.read_csv(FIXTURES / REFERENCE["data"])
    formula = "~ mined + (1 | site)"
    with pytest.raises(FormulaError, match="random terms in ziformula") as error:
        mixedfx.MixedEffectsRegressor("count ~ mined + (1 | site)", family="poisson", ziformula=formula).fit(data)
    assert formula[caret_column(error.value)] in "(|"
