"""The Polya-Gamma blocked Gibbs E-step (mixedfx.inference.polya_gamma): binomial and
bernoulli logit models with ``MCEMOptions(e_step="gibbs")``.

* The sampler: ``PG(b, c)`` draws have the closed-form mean ``b tanh(c/2) / (2c)``,
  variance ``b (sinh c - c) / (4 c^3 cosh^2(c/2))`` and Laplace transform
  ``E exp(-t omega) = (cosh(c/2) / cosh(sqrt(c^2/4 + t/2)))^b`` (numpy), to
  tolerances that a series truncated without its tail (a mean 2 % low) fails.
* Density of record: the family's ``(b, kappa)`` change ``kappa eta - b log cosh(eta / 2)``
  as the JointDistribution's log_prob changes when a block moves.
* Stationarity: the kernel's long-run means and variances of the random effects are
  the conditional posterior's, from a numerical integral of the JointDistribution's
  density (one term; binomial trials, an offset), and from importance sampling with
  that density (crossed terms with a random slope; bernoulli).
* A fit with ``e_step="gibbs"`` on cbpp matches glmer (tests/fixtures/glmm_cbpp_binomial.json)
  to the HMC fits' tolerances (tests/test_families.py: sd within 10 % below 20 levels,
  fixed effects within 0.25 SE); the crossed binomial fixture is a slow test.
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES

import mixedfx
from mixedfx._tf import tf, tfp
from mixedfx.design import RandomTermData
from mixedfx.exceptions import ParameterError
from mixedfx.inference import MCEMOptions, fit_mcem
from mixedfx.inference.gibbs import prior_precision_matrices
from mixedfx.inference.mcem import e_step_kernel
from mixedfx.inference.polya_gamma import PolyaGammaGibbs, polya_gamma_row_functions, polya_gamma_sample
from mixedfx.model import RESPONSE, Bernoulli, Binomial, MixedModel, Poisson, build_joint_distribution
from mixedfx.model import joint_log_prob
from mixedfx.model.glmmtmb_families import BetaBinomial


def _pg_mean_variance(b, c):
    """Closed forms (numpy), the limits 1/4 and 1/24 at c = 0."""
    if c == 0:
        return b / 4.0, b / 24.0
    return b * np.tanh(c / 2) / (2 * c), b * (np.sinh(c) - c) / (4 * c**3 * np.cosh(c / 2) ** 2)


SAMPLER_CASES = [(1.0, 0.0), (1.0, 2.5), (4.0, -0.7), (15.0, 8.0)]


@pytest.fixture(scope="module")
def pg_draws():
    b = np.array([case[0] for case in SAMPLER_CASES])[:, None]
    c = np.array([case[1] for case in SAMPLER_CASES])[:, None]
    sample = tf.function(polya_gamma_sample, autograph=False)
    return sample(tf.constant(b * np.ones((1, 100_000))), tf.constant(c), seed=tf.constant([5, 6])).numpy()


@pytest.mark.parametrize("case", range(len(SAMPLER_CASES)))
def test_sampler_mean_and_variance_are_the_closed_forms(pg_draws, case):
    """100,000 draws: the mean within 4 standard errors (0.26 % at b = 1, c = 0, where
    the series' first 10 terms without their tail fall 2.0 % short), the variance
    within 2 %."""
    b, c = SAMPLER_CASES[case]
    mean, variance = _pg_mean_variance(b, c)
    draws = pg_draws[case]
    assert abs(draws.mean() - mean) < 4 * np.sqrt(variance / draws.size), (draws.mean(), mean)
    assert draws.var() == pytest.approx(variance, rel=0.02)
    assert draws.min() > 0


@pytest.mark.parametrize("case", range(len(SAMPLER_CASES)))
def test_sampler_has_the_polya_gamma_laplace_transform(pg_draws, case):
    """``E exp(-t omega)`` at t = 1, 5, 25 (the shape beyond two moments) within 4
    standard errors of ``(cosh(c/2) / cosh(sqrt(c^2/4 + t/2)))^b``."""
    b, c = SAMPLER_CASES[case]
    draws = pg_draws[case]
    for t in (1.0, 5.0, 25.0):
        values = np.exp(-t * draws)
        exact = (np.cosh(c / 2) / np.cosh(np.sqrt(c**2 / 4 + t / 2))) ** b
        assert abs(values.mean() - exact) < 4 * values.std() / np.sqrt(draws.size) + 1e-12, (t, values.mean(), exact)


def test_sampler_draws_zero_for_zero_trials():
    draws = polya_gamma_sample(tf.constant([0.0, 1.0], tf.float64), tf.constant([0.3, 0.3], tf.float64), seed=(1, 2))
    assert draws.numpy()[0] == 0.0 and draws.numpy()[1] > 0.0


def test_chunked_rows_draw_independent_omegas():
    """Rows summed a chunk at a time (large data) give each chunk its own seed: two
    chunks of identical rows draw different ``omega``, and the chunked sum is the sum
    of the chunks' own."""
    from mixedfx.inference.rows import RowChunks

    rows = {"b": tf.ones([8], tf.float64), "c": tf.fill([8], tf.constant(0.5, tf.float64))}

    def draw(chunk, seed):
        return polya_gamma_sample(chunk["b"], chunk["c"], seed=seed)

    chunks, seed = RowChunks(rows, chunk_rows=4), tf.constant([3, 4])
    first, second = (draw(chunks.chunk(i), tf.random.experimental.stateless_fold_in(seed, i)).numpy() for i in (0, 1))
    assert not np.allclose(first, second)
    np.testing.assert_allclose(chunks.sum_seeded(draw, seed).numpy(), first + second, rtol=1e-12)


def test_family_pieces_change_like_the_joint_distributions_log_prob():
    """``kappa (eta1 - eta0) - b (log cosh(eta1 / 2) - log cosh(eta0 / 2))`` summed over rows is
    the change of the JointDistribution's log_prob when the random effects move (so the
    augmented rows are the density of record's); a bernoulli's b is 1."""
    rng = np.random.default_rng(2)
    model, joint, beta, _ = _binomial_one_term(rng)
    b, kappa = model.family.polya_gamma_rows(model.response, trials=model.trials)
    effects = [rng.normal(size=(3, 1)) for _ in range(2)]
    eta = [model.fixed_design @ beta + model.offset + e[model.random_terms[0].group_index, 0] for e in effects]
    log_cosh = [np.logaddexp(e / 2, -e / 2) for e in eta]  # log cosh + log 2
    change = np.sum(kappa.numpy() * (eta[1] - eta[0]) - b.numpy() * (log_cosh[1] - log_cosh[0]))
    prior = tfp.distributions.Normal(np.float64(0.0), np.float64(1.2))
    expected = [float(joint.log_prob({"g": e, RESPONSE: model.response})) - float(np.sum(prior.log_prob(e)))
                for e in effects]
    assert change == pytest.approx(expected[1] - expected[0], rel=1e-10)
    ones, _ = Bernoulli().polya_gamma_rows(np.array([0.0, 1.0]))
    assert ones.numpy().tolist() == [1.0, 1.0]


def test_e_step_choice_asks_the_family():
    gibbs = MCEMOptions(e_step="gibbs")
    assert e_step_kernel(Binomial(), gibbs) == "gibbs" and e_step_kernel(Bernoulli(), gibbs) == "gibbs"
    for family in (Binomial(link_name="probit"), BetaBinomial(), Poisson()):
        with pytest.raises(ParameterError, match=f"the {family.name} family's is not"):
            e_step_kernel(family, gibbs)
    g = np.repeat(np.arange(5), 4).astype(np.int32)
    probit = MixedModel(Binomial(link_name="probit"), np.ones((20, 1)), np.arange(20.0) % 2,
                        (RandomTermData("g", g, None, 5),), ("Intercept",))
    with pytest.raises(ParameterError, match="logit link"):
        fit_mcem(probit, options=gibbs)


# -- stationarity ----------------------------------------------------------------------------


def _binomial_one_term(rng, n=24):
    """Binomial, trials 1 to 5, an offset and a covariate; one random intercept with 3 levels."""
    x = rng.normal(size=n)
    g = rng.integers(0, 3, n).astype(np.int32)
    trials = rng.integers(1, 6, n).astype(float)
    X = np.column_stack([np.ones(n), x])
    beta, sd = np.array([-0.3, 0.8]), 1.2
    terms = (RandomTermData("g", g, None, 3),)
    extra = {"offset": 0.4 * rng.normal(size=n), "trials": trials}
    placeholder = MixedModel(Binomial(), X, np.zeros(n), terms, ("Intercept", "x"), **extra)
    joint = build_joint_distribution(placeholder.tensors(), fixed_effects=beta, random_scale_tril=[[[sd]]],
                                     family=Binomial(), family_params={})
    y = joint.sample(seed=(int(rng.integers(1 << 30)), 1))[RESPONSE].numpy()
    return MixedModel(Binomial(), X, y, terms, ("Intercept", "x"), **extra), joint, beta, [np.array([[sd]])]


def _kernel(model, beta, scale_trils):
    """The kernel on the whole rows of ``model``, as the fit builds it (without padding)."""
    tensors = model.tensors()
    block, _ = polya_gamma_row_functions(model.family, lambda rows: rows, tensors.num_levels)
    free = tf.zeros([0], tf.float64)
    return PolyaGammaGibbs(
        lambda term, effects, own, fixed_effects, seed: block(tensors, seed, effects, own, fixed_effects, free, term),
        prior_precision=prior_precision_matrices([tf.constant(L, tf.float64) for L in scale_trils]),
        fixed_effects=tf.constant(beta, tf.float64), num_levels=tensors.num_levels)


def _long_run(kernel, model, n_chains, n_sweeps):
    """``(draws [sweeps * chains, coefficients], ESS per coefficient)`` (a graph; the fit's
    XLA compilation is exercised by the fit below)."""

    @tf.function(autograph=False)
    def sample(state):
        return tfp.mcmc.sample_chain(n_sweeps, current_state=state, kernel=kernel, num_burnin_steps=20,
                                     trace_fn=None, seed=(3, 4))

    state = [tf.zeros([n_chains, t.num_levels, t.dim], tf.float64) for t in model.random_terms]
    draws = np.concatenate([d.numpy().reshape(n_sweeps, n_chains, -1) for d in sample(state)], axis=-1)
    ess = tfp.mcmc.effective_sample_size(tf.constant(draws), cross_chain_dims=1).numpy()
    return draws.reshape(-1, draws.shape[-1]), ess


def _assert_moments(flat, ess, mean, covariance, *, reference_error=0.0):
    """Means within 4.5 Monte Carlo standard errors, covariances within 5 of theirs."""
    error = np.sqrt(np.diag(covariance) / ess + reference_error**2)
    z_mean = (flat.mean(axis=0) - mean) / error
    assert np.all(np.abs(z_mean) < 4.5), (flat.mean(axis=0), mean)
    sd = np.sqrt(np.diag(covariance))
    z_cov = (np.cov(flat, rowvar=False) - covariance) / np.sqrt((np.outer(sd, sd) ** 2 + covariance**2) / ess.min())
    assert np.all(np.abs(z_cov) < 5.0), (np.cov(flat, rowvar=False), covariance)


def test_long_run_is_the_posterior_by_numerical_integration():
    """One term (the levels independent given the parameters): each level's posterior
    mean and variance by the trapezoid rule over 801 points of the JointDistribution's
    log_prob (``joint_log_prob`` on the grid, checked equal to it), against 4 chains of
    2,500 sweeps."""
    rng = np.random.default_rng(11)
    model, joint, beta, scale_trils = _binomial_one_term(rng)
    grid = np.linspace(-7.0, 7.0, 801)
    mean, variance = np.zeros(3), np.zeros(3)
    for level in range(3):
        effects = np.zeros((grid.size, 3, 1))
        effects[:, level, 0] = grid
        log_density = joint_log_prob(model.tensors(), [effects], fixed_effects=beta, random_scale_tril=scale_trils,
                                     family=model.family, family_params={}).numpy()
        assert log_density[400] == pytest.approx(
            float(joint.log_prob({"g": effects[400], RESPONSE: model.response})), rel=1e-12)
        density = np.exp(log_density - log_density.max())
        density /= np.trapezoid(density, grid)
        mean[level] = np.trapezoid(grid * density, grid)
        variance[level] = np.trapezoid((grid - mean[level]) ** 2 * density, grid)
    flat, ess = _long_run(_kernel(model, beta, scale_trils), model, 4, 2500)
    _assert_moments(flat, ess, mean, np.diag(variance))


@pytest.mark.slow
def test_long_run_is_the_posterior_by_importance_sampling():
    """Crossed terms, one with a random slope (``(1 + x | g0) + (1 | g1)``, 3 and 4
    levels: 10 coefficients), bernoulli rows: the posterior's mean and covariance by
    self-normalized importance sampling with the JointDistribution's density (400,000
    draws from a t proposal with 5 degrees of freedom, twice the kernel's covariance),
    against 4 chains of 2,500 sweeps."""
    rng = np.random.default_rng(5)
    n = 60
    x = rng.normal(size=n)
    g0, g1 = rng.integers(0, 3, n).astype(np.int32), rng.integers(0, 4, n).astype(np.int32)
    terms = (RandomTermData("g0", g0, np.column_stack([np.ones(n), x]), 3, coef_names=("(Intercept)", "x")),
             RandomTermData("g1", g1, None, 4))
    X = np.column_stack([np.ones(n), x])
    beta = np.array([0.2, -0.5])
    scale_trils = [np.array([[1.0, 0.0], [0.3, 0.6]]), np.array([[0.8]])]
    placeholder = MixedModel(Bernoulli(), X, np.zeros(n), terms, ("Intercept", "x"), trials=np.ones(n))
    joint = build_joint_distribution(placeholder.tensors(), fixed_effects=beta, random_scale_tril=scale_trils,
                                     family=Bernoulli(), family_params={})
    y = joint.sample(seed=(17, 2))[RESPONSE].numpy()
    model = MixedModel(Bernoulli(), X, y, terms, ("Intercept", "x"), trials=np.ones(n))
    flat, ess = _long_run(_kernel(model, beta, scale_trils), model, 4, 2500)
    # importance sampling from a t proposal around the draws (any proposal that covers the
    # posterior gives the posterior's moments; the draws only make it efficient)
    center, spread = flat.mean(axis=0), 2.0 * np.cov(flat, rowvar=False)
    proposal = tfp.distributions.MultivariateStudentTLinearOperator(
        df=5.0, loc=center, scale=tf.linalg.LinearOperatorLowerTriangular(np.linalg.cholesky(spread)))
    points = proposal.sample(400_000, seed=(9, 10))
    effects = [tf.reshape(points[:, :6], [-1, 3, 2]), tf.reshape(points[:, 6:], [-1, 4, 1])]
    log_target = joint_log_prob(model.tensors(), effects, fixed_effects=beta, random_scale_tril=scale_trils,
                                family=model.family, family_params={}).numpy()
    probe = {"g0": effects[0][0], "g1": effects[1][0], RESPONSE: model.response}
    assert log_target[0] == pytest.approx(float(joint.log_prob(probe)), rel=1e-12)
    log_weight = log_target - proposal.log_prob(points).numpy()
    weight = np.exp(log_weight - log_weight.max())
    weight /= weight.sum()
    points = points.numpy()
    mean = weight @ points
    covariance = (points - mean).T @ (weight[:, None] * (points - mean))
    is_ess = 1.0 / np.sum(weight**2)
    assert is_ess > 50_000, is_ess
    _assert_moments(flat, ess, mean, covariance, reference_error=np.sqrt(np.diag(covariance) / is_ess))


# -- fits against glmer ------------------------------------------------------------------------

GLMER = {  # name: (data, formula)
    "cbpp_binomial": ("cbpp.csv", "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)"),
    "binomial_crossed": ("binomial_crossed.csv", "cbind(successes, failures) ~ x + (1 | g1) + (1 | g2)"),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "binomial_crossed" else name
                                  for name in sorted(GLMER)])
def test_gibbs_fit_matches_glmer(name):
    """To the HMC fits' tolerances against glmer (tests/test_families.py's
    ``check_against``: sds within 10 % below 20 levels, 5 % above; fixed effects within
    0.25 SE), and the log-likelihood within 0.5 of glmer's Laplace value."""
    data_file, formula = GLMER[name]
    fixture = json.loads((FIXTURES / f"glmm_{name}.json").read_text())
    model = mixedfx.glmer(formula, pd.read_csv(FIXTURES / data_file), family="binomial", tol=0.05, random_state=0,
                          verbose=0, options=MCEMOptions(e_step="gibbs"))
    assert float(np.mean(model.fit_summary_.acceptance)) == 1.0  # Gibbs ran (HMC's is about 0.75)
    assert model.fit_summary_.e_step == "gibbs" and "gibbs E-step" in repr(model.fit_summary_)
    ours = model.variance_components_.set_index("group")["sdcor"]
    for row in fixture["varcorr"]:
        tolerance = 0.10 if fixture["n_levels"][row["grp"]] < 20 else 0.05
        assert ours[row["grp"]] == pytest.approx(row["sdcor"], rel=tolerance), (row["grp"], ours[row["grp"]])
    theirs = list(fixture["fixed_effects"].values())
    se = np.array(list(fixture["fixed_effects_se"].values()))
    distance = (model.fixed_effects_.to_numpy() - theirs) / se
    assert np.all(np.abs(distance) < 0.25), distance
    assert model.log_likelihood_ == pytest.approx(fixture["logLik"], abs=0.5)
    assert model.fit_summary_.converged
