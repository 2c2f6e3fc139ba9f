"""The model layer: the joint distribution and the closed-form Gaussian quantities."""

import numpy as np
import pytest

import mixedfx
from conftest import load_lme4, lme4_fixed_effects, lme4_fixed_effects_se, lme4_sds
from scipy import stats

from mixedfx import ParameterError, parse_formula
from mixedfx._tf import tf
from mixedfx.design import RandomDesign, RandomTermData, build_fixed_design
from mixedfx.model import (
    RESPONSE,
    Gaussian,
    MixedModel,
    ModelParameters,
    build_joint_distribution,
    gaussian_marginal,
    get_family,
    random_effect_keys,
)


def build_model(data, formula):
    spec = parse_formula(formula)
    random_design = RandomDesign.from_spec(spec, data)
    fixed_design, X = build_fixed_design(spec.fixed, data)
    y = data[spec.response].to_numpy(dtype=float)
    return MixedModel(Gaussian(), X, y, random_design.materialize(data), fixed_design.column_names)


@pytest.fixture
def tiny(rng):
    n = 30
    g1 = rng.integers(0, 5, n).astype(np.int32)
    g2 = rng.integers(0, 3, n).astype(np.int32)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = 1.0 + 0.3 * X[:, 1] + rng.normal(size=5)[g1] + 0.5 * rng.normal(size=3)[g2] + rng.normal(size=n)
    terms = (RandomTermData("g1", g1, None, 5), RandomTermData("g2", g2, None, 3))
    model = MixedModel(Gaussian(), X, y, terms, ("Intercept", "x"))
    params = ModelParameters(np.array([0.9, 0.25]), np.array([0.8, 0.4]), {"sigma": 1.1})
    return model, params


def dense_reference(model, params):
    """The same quantities from the dense n x n marginal covariance."""
    X, y, n = model.fixed_design, model.response, model.n_obs
    Z = np.zeros((n, 0))
    prior = []
    for term, L in zip(model.random_terms, params.random_scale_tril):
        sd = float(L[0, 0])
        block = np.zeros((n, term.num_levels))
        block[np.arange(n), term.group_index] = 1.0
        Z = np.hstack([Z, block])
        prior += [sd**2] * term.num_levels
    G = np.diag(prior)
    sigma = params.family_params["sigma"]
    V = Z @ G @ Z.T + sigma**2 * np.eye(n)
    loglik = stats.multivariate_normal(X @ params.fixed_effects, V).logpdf(y)
    Vinv = np.linalg.inv(V)
    cov = np.linalg.inv(X.T @ Vinv @ X)
    mean = G @ Z.T @ Vinv @ (y - X @ params.fixed_effects)
    post_cov = np.linalg.inv(Z.T @ Z / sigma**2 + np.linalg.inv(G))
    return loglik, cov, mean, np.sqrt(np.diag(post_cov))


def test_gaussian_marginal_matches_dense_algebra(tiny):
    model, params = tiny
    exact = gaussian_marginal(model, params)
    loglik, cov, mean, sd = dense_reference(model, params)
    assert exact.log_likelihood == pytest.approx(loglik, rel=1e-12)
    np.testing.assert_allclose(exact.fixed_effects_cov, cov, rtol=1e-10)
    np.testing.assert_allclose(np.concatenate([m[:, 0] for m in exact.conditional_means]), mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([s[:, 0] for s in exact.conditional_sds]), sd, rtol=1e-9)


def _within_between_gls(X, y, group, tau, sigma):
    """The GLS estimate of a random-intercept model without cancellation: per level,
    ``X_j' V_j^-1 X_j sigma^2`` is the within-level scatter plus
    ``n_j sigma^2 / (sigma^2 + n_j tau^2)`` times the level means' outer product."""
    xtvx, xtvy = 0.0, 0.0
    for j in np.unique(group):
        Xj, yj = X[group == j], y[group == j]
        n, xbar, ybar = len(yj), Xj.mean(axis=0), yj.mean()
        shrink = n * sigma**2 / (sigma**2 + n * tau**2)
        xtvx = xtvx + (Xj - xbar).T @ (Xj - xbar) + shrink * np.outer(xbar, xbar)
        xtvy = xtvy + (Xj - xbar).T @ (yj - ybar) + shrink * xbar * ybar
    return np.linalg.solve(xtvx, xtvy)


@pytest.mark.parametrize("solver", ["dense", "conjugate_gradients"])
def test_gls_with_sigma_far_below_the_random_sd_is_not_lost_to_rounding(rng, solver):
    """A response constant within levels: at sigma 1e-7 beside sd 1.8, X'V^-1X sigma^2 of
    the intercept is ~1e-14 against X'X ~ 200, which W'W - (U'W)'A^-1(U'W) lost entirely
    (the intercept came out 1.75 away from the levels' mean)."""
    n, levels = 200, 12
    group = rng.integers(0, levels, n).astype(np.int32)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = (2.0 + 3.0 * rng.normal(size=levels))[group]
    model = MixedModel(Gaussian(), X, y, (RandomTermData("g", group, None, levels),), ("Intercept", "x"))
    params = ModelParameters(np.array([0.0, 0.0]), np.array([1.8]), {"sigma": 1e-7})
    gls = gaussian_marginal(model, params, profile_fixed_effects=True, solver=solver).gls_fixed_effects
    reference = _within_between_gls(X, y, group, 1.8, 1e-7)
    assert reference[0] == pytest.approx(np.mean(np.unique(y)), abs=1e-6)  # the mean of the level means
    np.testing.assert_allclose(gls, reference, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "fixture, formula",
    [("crossed_small_ml", "y ~ x + (1 | g1) + (1 | g2)"), ("insteval_ml", "y ~ service + (1 | s) + (1 | d) + (1 | dept)")],
)
def test_gaussian_marginal_reproduces_lme4_at_its_estimates(fixture, formula, crossed_small, insteval):
    reference = load_lme4(fixture)
    data = crossed_small if fixture.startswith("crossed") else insteval
    model = build_model(data, formula)
    sds = lme4_sds(reference)
    params = ModelParameters(
        lme4_fixed_effects(reference)[list(model.fixed_names)].to_numpy(),
        np.array([sds[t.name] for t in model.random_terms]),
        {"sigma": sds["Residual"]},
    )
    assert [L.shape for L in params.random_scale_tril] == [(1, 1)] * len(model.random_terms)
    exact = gaussian_marginal(model, params)
    assert exact.log_likelihood == pytest.approx(reference["logLik"], rel=1e-9)
    se = np.sqrt(np.diag(exact.fixed_effects_cov))
    np.testing.assert_allclose(se, lme4_fixed_effects_se(reference)[list(model.fixed_names)], rtol=1e-6)


def test_joint_distribution_structure_and_log_prob(tiny):
    model, params = tiny
    joint = build_joint_distribution(
        model.tensors(), fixed_effects=params.fixed_effects, random_scale_tril=params.random_scale_tril,
        family=Gaussian(), family_params={"sigma": params.family_params["sigma"]},
    )
    draw = joint.sample(seed=(3, 4))
    assert sorted(draw) == ["g1", "g2", RESPONSE]
    assert tuple(draw["g1"].shape) == (5, 1) and tuple(draw[RESPONSE].shape) == (30,)
    batch = joint.sample(7, seed=(5, 6))
    assert tuple(batch[RESPONSE].shape) == (7, 30)
    b1, b2 = draw["g1"].numpy()[:, 0], draw["g2"].numpy()[:, 0]
    eta = model.fixed_design @ params.fixed_effects + b1[model.random_terms[0].group_index] + b2[model.random_terms[1].group_index]
    manual = (
        stats.norm(0, 0.8).logpdf(b1).sum()
        + stats.norm(0, 0.4).logpdf(b2).sum()
        + stats.norm(eta, 1.1).logpdf(model.response).sum()
    )
    value = joint.log_prob({"g1": b1[:, None], "g2": b2[:, None], RESPONSE: model.response})
    assert float(value) == pytest.approx(manual, rel=1e-12)
    # Leading sample dimensions broadcast (chains in the E-step).
    stacked = joint.log_prob({"g1": np.stack([b1, b1])[..., None], "g2": np.stack([b2, b2])[..., None],
                              RESPONSE: model.response})
    assert stacked.shape == (2,) and float(stacked[1]) == pytest.approx(manual, rel=1e-12)


def test_joint_distribution_with_a_correlated_slope(rng):
    n = 40
    g = rng.integers(0, 6, n).astype(np.int32)
    x = rng.normal(size=n)
    z = np.column_stack([np.ones(n), x])
    terms = (RandomTermData("g", g, z, 6, ("(Intercept)", "x")),)
    model = MixedModel(Gaussian(), np.column_stack([np.ones(n), x]), rng.normal(size=n), terms, ("Intercept", "x"))
    L = np.array([[0.9, 0.0], [0.3, 0.4]])
    joint = build_joint_distribution(model.tensors(), fixed_effects=[0.5, 1.0], random_scale_tril=[L],
                                     family=Gaussian(), family_params={"sigma": 0.7})
    draw = joint.sample(seed=(8, 9))
    b = draw["g"].numpy()
    assert b.shape == (6, 2)
    eta = 0.5 + x + b[g, 0] + b[g, 1] * x
    manual = stats.multivariate_normal(np.zeros(2), L @ L.T).logpdf(b).sum() + stats.norm(eta, 0.7).logpdf(model.response).sum()
    assert float(joint.log_prob({"g": b, RESPONSE: model.response})) == pytest.approx(manual, rel=1e-12)


def test_gaussian_marginal_with_correlated_slopes_matches_dense_algebra(rng):
    n = 50
    g1 = rng.integers(0, 7, n).astype(np.int32)
    g2 = rng.integers(0, 4, n).astype(np.int32)
    x = rng.normal(size=n)
    z = np.column_stack([np.ones(n), x])
    terms = (RandomTermData("g1", g1, z, 7, ("(Intercept)", "x")), RandomTermData("g2", g2, None, 4))
    X = np.column_stack([np.ones(n), x])
    y = rng.normal(size=n)
    model = MixedModel(Gaussian(), X, y, terms, ("Intercept", "x"))
    L1 = np.array([[0.9, 0.0], [0.3, 0.4]])
    params = ModelParameters(np.array([0.2, 0.1]), (L1, np.array([[0.6]])), {"sigma": 0.8})
    Z1 = np.zeros((n, 14))
    Z1[np.arange(n), 2 * g1] = 1.0
    Z1[np.arange(n), 2 * g1 + 1] = x
    Z2 = np.zeros((n, 4))
    Z2[np.arange(n), g2] = 1.0
    Z = np.hstack([Z1, Z2])
    G = np.zeros((18, 18))
    for j in range(7):
        G[2 * j:2 * j + 2, 2 * j:2 * j + 2] = L1 @ L1.T
    G[14:, 14:] = 0.36 * np.eye(4)
    V = Z @ G @ Z.T + 0.64 * np.eye(n)
    exact = gaussian_marginal(model, params)
    assert exact.log_likelihood == pytest.approx(stats.multivariate_normal(X @ params.fixed_effects, V).logpdf(y), rel=1e-12)
    Vinv = np.linalg.inv(V)
    np.testing.assert_allclose(exact.fixed_effects_cov, np.linalg.inv(X.T @ Vinv @ X), rtol=1e-10)
    mean = G @ Z.T @ Vinv @ (y - X @ params.fixed_effects)
    np.testing.assert_allclose(exact.conditional_means[0], mean[:14].reshape(7, 2), atol=1e-12)
    post = np.linalg.inv(Z.T @ Z / 0.64 + np.linalg.inv(G))
    np.testing.assert_allclose(exact.conditional_sds[0], np.sqrt(np.diag(post)[:14]).reshape(7, 2), rtol=1e-9)
    np.testing.assert_allclose(exact.conditional_sds[1][:, 0], np.sqrt(np.diag(post)[14:]), rtol=1e-9)


def test_random_effect_keys_are_unique_identifiers():
    keys = random_effect_keys(["s", "a:b", "a.b", "response", "1g"])
    assert keys == ("s", "a_b", "a_b_2", "response_2", "g_1g")
    assert all(k.isidentifier() for k in keys)


def test_families_resolve_and_refuse_unknown_names():
    assert get_family("gaussian") == Gaussian() and get_family(Gaussian()) == Gaussian()
    with pytest.raises(ParameterError, match="unknown family 'poison'; supported: bernoulli, beta, betabinomial, binomial, gamma, gaussian, inverse_gaussian, nbinom1"):
        get_family("poison")


def test_gaussian_family_checks_the_response():
    family = Gaussian()
    with pytest.raises(ValueError, match="must be numeric"):
        family.validate_response(np.array(["a", "b"]), name="y")
    with pytest.raises(ValueError, match="2 non-finite"):
        family.validate_response(np.array([1.0, np.nan, np.inf]), name="y")
    weights = family.fisher_weight(tf.zeros(3, tf.float64), {"sigma": tf.constant(2.0, tf.float64)})
    np.testing.assert_allclose(weights.numpy(), 0.25)


def test_levels_equal_to_rows_are_refused_like_lmer():
    n = 10
    terms = (RandomTermData("id", np.arange(n, dtype=np.int32), None, n),)
    model = MixedModel(Gaussian(), np.ones((n, 1)), np.arange(n, dtype=float), terms, ("Intercept",))
    with pytest.raises(ValueError, match=r"number of levels of each grouping factor must be < number of observations \(problems: id\)"):
        model.check_identifiable()


@pytest.mark.parametrize("formula", ["y ~ x + (1 | g1) + (1 | g2)"])
def test_iterative_solves_match_the_block_elimination_at_lme4s_estimates(formula, crossed_small):
    """Past the dense-block bound (two large crossed factors), conjugate gradients give
    the same fixed-effect covariance, GLS estimate and conditional means."""
    fixture = load_lme4("crossed_small_ml")
    model = build_model(crossed_small, formula)
    sds = lme4_sds(fixture)
    params = ModelParameters(lme4_fixed_effects(fixture)[list(model.fixed_names)].to_numpy(),
                             np.array([sds[t.name] for t in model.random_terms]), {"sigma": sds["Residual"]})
    exact = gaussian_marginal(model, params, profile_fixed_effects=True)
    iterative = gaussian_marginal(model, params, profile_fixed_effects=True, solver="conjugate_gradients",
                                  tol=1e-10, chunk_rows=256)  # 6 chunks
    np.testing.assert_allclose(iterative.fixed_effects_cov, exact.fixed_effects_cov, rtol=1e-7)
    np.testing.assert_allclose(iterative.gls_fixed_effects, exact.gls_fixed_effects, rtol=1e-8, atol=1e-10)
    for ours, theirs in zip(iterative.conditional_means, exact.conditional_means):
        np.testing.assert_allclose(ours, theirs, atol=1e-8)
    # and lme4's own standard errors, which the exact elimination reproduces
    se = np.sqrt(np.diag(iterative.fixed_effects_cov))
    np.testing.assert_allclose(se, lme4_fixed_effects_se(fixture)[list(model.fixed_names)].to_numpy(), rtol=1e-6)


def test_fit_beyond_the_dense_bound_keeps_exact_standard_errors(crossed_small, crossed_small_fit):
    options = mixedfx.inference.MCEMOptions(max_dense_entries=10)  # every dense block is over the bound
    with pytest.warns(UserWarning, match="solved iteratively"):
        large = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g1) + (1 | g2)", random_state=0, verbose=0,
                                              options=options).fit(crossed_small)
    assert large.log_likelihood_ is None and large.aic_ is None
    np.testing.assert_allclose(large.fixed_effects_cov_.to_numpy(), crossed_small_fit.fixed_effects_cov_.to_numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(large.fixed_effects_.to_numpy(), crossed_small_fit.fixed_effects_.to_numpy(), rtol=1e-6)
    for name in ("g1", "g2"):
        np.testing.assert_allclose(large.random_effects_[name].to_numpy(),
                                   crossed_small_fit.random_effects_[name].to_numpy(), atol=1e-6)


def test_prior_log_prob_is_the_joint_distributions_prior(rng):
    """The fitting loop's prior (written out, no TFP distribution objects) against the
    JointDistribution's log_prob less the response's, for terms of one, two and three
    coefficients and two chains; and with padded levels masked out, against scipy."""
    from mixedfx.model.joint import prior_log_prob, response_log_prob

    n = 60
    x, w = rng.normal(size=n), rng.normal(size=n)
    groups = [rng.integers(0, q, n).astype(np.int32) for q in (5, 4, 3)]
    zs = [None, np.column_stack([np.ones(n), x]), np.column_stack([np.ones(n), x, w])]
    terms = tuple(RandomTermData(f"g{k}", g, z, int(g.max()) + 1, tuple(f"c{j}" for j in range(1 if z is None else z.shape[1])))
                  for k, (g, z) in enumerate(zip(groups, zs)))
    model = MixedModel(Gaussian(), np.column_stack([np.ones(n), x]), rng.normal(size=n), terms, ("Intercept", "x"))
    scale_tril = [np.array([[0.7]]), np.array([[0.9, 0.0], [-0.4, 0.5]]),
                  np.array([[1.2, 0.0, 0.0], [0.3, 0.6, 0.0], [-0.2, 0.1, 0.4]])]
    effects = [rng.normal(size=(2, t.num_levels, t.dim)) for t in terms]  # two chains
    joint = build_joint_distribution(model.tensors(), fixed_effects=[0.5, 1.0], random_scale_tril=scale_tril,
                                     family=Gaussian(), family_params={"sigma": 0.8})
    for chain in range(2):
        draw = {t.name: e[chain] for t, e in zip(terms, effects)}
        draw[RESPONSE] = model.response
        expected = float(joint.log_prob(draw)) - float(response_log_prob(
            model.tensors(), [e[chain] for e in effects], fixed_effects=np.array([0.5, 1.0]), family=Gaussian(),
            family_params={"sigma": np.float64(0.8)}))
        got = prior_log_prob(effects, random_scale_tril=scale_tril).numpy()
        assert got.shape == (2,) and got[chain] == pytest.approx(expected, rel=1e-12)
    weight = [np.array([1.0, 1.0, 1.0, 0.0, 0.0]), None, np.array([1.0, 0.0, 1.0])]
    masked = prior_log_prob(effects, random_scale_tril=scale_tril, level_weight=weight).numpy()[0]
    manual = sum(((1.0 if m is None else m) * stats.multivariate_normal(np.zeros(L.shape[0]), L @ L.T).logpdf(
        e[0].reshape(-1, L.shape[0]))).sum() for e, L, m in zip(effects, scale_tril, weight))
    assert masked == pytest.approx(manual, rel=1e-12)
