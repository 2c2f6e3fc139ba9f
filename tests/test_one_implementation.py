"""One implementation of each computation, with its variants as parameters.

* the exact Gaussian quantities: :func:`gaussian_marginal`'s dense solver (sums over
  rows in memory or by shard) and conjugate-gradient solver, against the dense n x n
  algebra;
* the random effects' conditional modes: :func:`laplace_mode` (observed or expected
  curvature; block elimination or conjugate gradients), against the gradient of the
  JointDistribution's log_prob;
* the family parameters as tensors: :func:`family_tensors`.
"""

import numpy as np
import pytest

from mixedfx import ParameterError
from mixedfx._tf import tf
from mixedfx.design import RandomTermData
from mixedfx.inference import conditional_modes
from mixedfx.inference.distributed import sharded_cross_products
from mixedfx.model import (
    DenseBlockTooLarge,
    Gaussian,
    MixedModel,
    ModelParameters,
    Poisson,
    family_tensors,
    gaussian_marginal,
    joint_log_prob,
    laplace_mode,
)


@pytest.fixture
def crossed(rng):
    """Two crossed intercept terms and a slope: 60 rows, 6 x 4 levels."""
    n = 60
    g1 = rng.integers(0, 6, n).astype(np.int32)
    g2 = rng.integers(0, 4, n).astype(np.int32)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = 1.0 + 0.3 * X[:, 1] + rng.normal(size=6)[g1] + 0.5 * rng.normal(size=4)[g2] + rng.normal(size=n)
    terms = (RandomTermData("g1", g1, None, 6), RandomTermData("g2", g2, None, 4))
    model = MixedModel(Gaussian(), X, y, terms, ("Intercept", "x"))
    params = ModelParameters(np.array([0.9, 0.25]), np.array([0.8, 0.4]), {"sigma": 1.1})
    return model, params


def dense_algebra(model, params):
    """Log-likelihood, fixed-effects covariance, GLS estimate and conditional means and
    sds (at ``params``' fixed effects) from the dense n x n marginal covariance."""
    X, y, n = model.fixed_design, model.response, model.n_obs
    Z = np.hstack([np.eye(t.num_levels)[t.group_index] for t in model.random_terms])
    G = np.diag(np.concatenate([np.full(t.num_levels, float(L[0, 0]) ** 2)
                                for t, L in zip(model.random_terms, params.random_scale_tril)]))
    sigma = params.family_params["sigma"]
    V = Z @ G @ Z.T + sigma**2 * np.eye(n)
    Vinv = np.linalg.inv(V)
    r = y - X @ params.fixed_effects
    loglik = -0.5 * (n * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + r @ Vinv @ r)
    cov = np.linalg.inv(X.T @ Vinv @ X)
    gls = cov @ X.T @ Vinv @ y
    mean = G @ Z.T @ Vinv @ r
    sds = np.sqrt(np.diag(np.linalg.inv(Z.T @ Z / sigma**2 + np.linalg.inv(G))))
    return loglik, cov, gls, mean, sds


@pytest.mark.parametrize("variant", ["dense", "sharded sums", "conjugate_gradients", "auto past the bound"])
def test_every_variant_of_the_exact_gaussian_computation_matches_the_dense_algebra(crossed, variant):
    model, params = crossed
    loglik, cov, gls, mean, sds = dense_algebra(model, params)
    options = {
        "dense": {},
        "sharded sums": {"row_sums": sharded_cross_products(tf.distribute.get_strategy())},
        "conjugate_gradients": {"solver": "conjugate_gradients", "tol": 1e-12, "chunk_rows": 16},
        "auto past the bound": {"solver": "auto", "max_dense_entries": 1, "tol": 1e-12},
    }[variant]
    result = gaussian_marginal(model, params, **options)
    np.testing.assert_allclose(result.fixed_effects_cov, cov, rtol=1e-9)
    np.testing.assert_allclose(result.gls_fixed_effects, gls, rtol=1e-9)
    np.testing.assert_allclose(np.concatenate([m.ravel() for m in result.conditional_means]), mean, atol=1e-9)
    if variant in ("dense", "sharded sums"):
        assert result.log_likelihood == pytest.approx(loglik, abs=1e-9)
        np.testing.assert_allclose(np.concatenate([s.ravel() for s in result.conditional_sds]), sds, rtol=1e-9)
    else:  # matrix-free: no log-determinant, so no likelihood and no conditional sds
        assert result.log_likelihood is None and result.reml_log_likelihood is None
        assert result.conditional_sds == ()


def test_conjugate_gradients_profile_the_fixed_effects_as_the_dense_solver_does(crossed):
    model, params = crossed
    dense = gaussian_marginal(model, params, profile_fixed_effects=True)
    iterative = gaussian_marginal(model, params, profile_fixed_effects=True, solver="conjugate_gradients", tol=1e-12)
    at_params = gaussian_marginal(model, params, solver="conjugate_gradients", tol=1e-12)
    for ours, theirs, unprofiled in zip(iterative.conditional_means, dense.conditional_means,
                                        at_params.conditional_means):
        np.testing.assert_allclose(ours, theirs, atol=1e-9)
        assert np.max(np.abs(ours - unprofiled)) > 1e-3  # profiling moved them


def test_the_dense_solver_refuses_past_its_bound_and_bad_arguments_name_themselves(crossed, monkeypatch):
    model, params = crossed
    # refused before any row is touched: building the scaled designs (term_z) would be
    # a few hundred MB at ten million rows, the 10M benchmark's memory peak
    import mixedfx.model.gaussian

    def no_rows(*args, **kwargs):
        raise AssertionError("the rows were read before the bound was checked")

    with monkeypatch.context() as patch:
        patch.setattr(mixedfx.model.gaussian, "term_z", no_rows)
        with pytest.raises(DenseBlockTooLarge):
            gaussian_marginal(model, params, max_dense_entries=1)
    with pytest.raises(ParameterError, match="solver must be .* got 'cholesky'"):
        gaussian_marginal(model, params, solver="cholesky")
    with pytest.raises(ParameterError, match="row_sums serves the dense solver"):
        gaussian_marginal(model, params, solver="conjugate_gradients", row_sums=sharded_cross_products(
            tf.distribute.get_strategy()))
    poisson = MixedModel(Poisson(), model.fixed_design, np.round(np.abs(model.response)), model.random_terms,
                         model.fixed_names)
    with pytest.raises(ParameterError, match="the Gaussian family's, not 'poisson'"):
        gaussian_marginal(poisson, ModelParameters(params.fixed_effects, params.random_scale_tril, {}))


@pytest.fixture
def poisson(rng):
    """A crossed Poisson model with a correlated random slope on the first term."""
    n = 400
    g1 = rng.integers(0, 12, n).astype(np.int32)
    g2 = rng.integers(0, 5, n).astype(np.int32)
    x = rng.normal(size=n)
    z = np.column_stack([np.ones(n), x])
    b1 = rng.normal(size=(12, 2)) * [0.8, 0.4]
    eta = 0.2 + 0.5 * x + np.sum(z * b1[g1], axis=1) + 0.6 * rng.normal(size=5)[g2]
    y = rng.poisson(np.exp(eta)).astype(float)
    terms = (RandomTermData("g1", g1, z, 12, ("(Intercept)", "x")), RandomTermData("g2", g2, None, 5))
    model = MixedModel(Poisson(), np.column_stack([np.ones(n), x]), y, terms, ("Intercept", "x"))
    params = ModelParameters(np.array([0.2, 0.5]), (np.array([[0.8, 0.0], [0.2, 0.35]]), np.array([[0.6]])), {})
    return model, params


def joint_gradient(model, params, effects):
    """The gradient of the JointDistribution's log_prob in the random effects."""
    variables = [tf.constant(b) for b in effects]
    with tf.GradientTape() as tape:
        tape.watch(variables)
        value = joint_log_prob(model.tensors(), variables, fixed_effects=params.fixed_effects,
                               random_scale_tril=params.random_scale_tril, family=model.family,
                               family_params=params.family_tensors())
    return [g.numpy() for g in tape.gradient(value, variables)]


@pytest.mark.parametrize("curvature,max_dense_entries", [("observed", None), ("expected", None),
                                                         ("observed", 1)])
def test_the_one_newton_solver_finds_the_joint_distributions_mode(poisson, curvature, max_dense_entries):
    """Each variant (observed or expected curvature; block elimination, or conjugate
    gradients when the dense block is over its bound) stops where the gradient of the
    density of record vanishes; the gradient at the start is far from zero."""
    model, params = poisson
    mode = laplace_mode(model, params, curvature=curvature, max_dense_entries=max_dense_entries,
                        max_iterations=200)
    start = joint_gradient(model, params, [np.zeros((t.num_levels, t.dim)) for t in model.random_terms])
    assert max(np.abs(g).max() for g in start) > 1.0
    for gradient in joint_gradient(model, params, mode.modes):
        assert np.abs(gradient).max() < 1e-3  # the decrement stops it at g' A^-1 g < 1e-8


def test_conditional_modes_is_the_expected_curvature_mode_and_pins_a_zero_sd_at_zero(poisson):
    model, params = poisson
    reference = laplace_mode(model, params, curvature="observed").modes
    for ours, theirs in zip(conditional_modes(model, params), reference):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    singular = ModelParameters(params.fixed_effects, (params.random_scale_tril[0], np.array([[0.0]])), {})
    modes = conditional_modes(model, singular)
    assert np.all(modes[1] == 0.0) and np.abs(modes[0]).max() > 0.1


def test_family_tensors_converts_numbers_arrays_and_tensors_without_changing_the_input():
    params = {"sigma": 2, "cutpoints": np.array([-1.0, 0.5], dtype=np.float32), "alpha": tf.constant(3.0)}
    tensors = family_tensors(params, dtype=tf.float64)
    assert {name: (value.dtype, value.numpy().tolist()) for name, value in tensors.items()} == {
        "sigma": (tf.float64, 2.0), "cutpoints": (tf.float64, [-1.0, 0.5]), "alpha": (tf.float64, 3.0)}
    assert params["cutpoints"].dtype == np.float32 and params["alpha"].dtype == tf.float32
    assert ModelParameters(np.zeros(1), np.ones(1), {"sigma": 1.5}).family_tensors(dtype=tf.float32)[
        "sigma"].dtype == tf.float32
