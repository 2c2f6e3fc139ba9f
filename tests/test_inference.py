"""Inference building blocks: stopping rules, centring, expansions and the HMC kernel."""

import numpy as np
import pytest

import mixedfx

from mixedfx._tf import tf, tfp
from mixedfx.design import RandomTermData
from mixedfx.inference import (
    FixedIterations,
    MonteCarloErrorRule,
    location_expansions,
    monte_carlo_standard_error,
)
from mixedfx.inference import nested_centering
from mixedfx.inference.estep import Centering, JitteredLeapfrogSteps
from mixedfx.model import Gaussian, MixedModel


def test_monte_carlo_standard_error_of_white_noise(rng):
    series = rng.normal(size=(4000, 2)) * np.array([1.0, 3.0])
    np.testing.assert_allclose(monte_carlo_standard_error(series), [1 / np.sqrt(4000), 3 / np.sqrt(4000)], rtol=0.1)


def test_monte_carlo_standard_error_accounts_for_autocorrelation(rng):
    # AR(1) with phi = 0.9: the standard error of the mean is sqrt((1+phi)/(1-phi)) ~ 4.4x larger.
    phi, n = 0.9, 20000
    x = np.zeros(n)
    noise = rng.normal(size=n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    iid = x.std() / np.sqrt(n)
    assert monte_carlo_standard_error(x[:, None])[0] / iid == pytest.approx(np.sqrt(19), rel=0.2)


def test_monte_carlo_standard_error_of_a_column_at_rounding_level(rng):
    """A column that an exact M-step recomputes each iteration moves at the rounding level
    (the nbinom2 hurdle's zero part on Salamanders): no Monte Carlo error, where its AR(1)
    coefficient of about 1 made it infinite, and the fit's summary "inf x tolerance"."""
    rounding = 2.4 + 1e-14 * np.cumsum(rng.normal(size=40))
    noisy = 2.4 + 1e-3 * rng.normal(size=40)
    mcse = monte_carlo_standard_error(np.column_stack([rounding, noisy]))
    assert mcse[0] == 0.0 and 0.0 < mcse[1] < 1e-3


def test_rule_waits_while_parameters_drift(rng):
    rule = MonteCarloErrorRule(tol=0.1)
    drifting = np.linspace(0.0, 1.0, 10)[:, None] + 0.001 * rng.normal(size=(10, 1))
    decision = rule.assess(drifting, window_start=None, scale=np.ones(1))
    assert decision.window_start is None and not decision.converged


def test_rule_opens_window_then_converges_on_noise(rng):
    rule = MonteCarloErrorRule(tol=0.1, min_window=10)
    trace = 1.0 + 0.01 * rng.normal(size=(10, 3))
    first = rule.assess(trace, window_start=None, scale=np.ones(3))
    assert first.window_start == 10 and not first.converged
    longer = np.vstack([trace, 1.0 + 0.01 * rng.normal(size=(40, 3))])
    decision = rule.assess(longer, window_start=10, scale=np.ones(3))
    assert decision.converged and decision.mcse.shape == (3,)
    assert np.all(decision.mcse <= 0.1)
    # The same noise against a tolerance it cannot meet keeps averaging.
    strict = rule.assess(longer, window_start=10, scale=np.full(3, 1e-3))
    assert not strict.converged and "x tolerance" in strict.message


def test_rule_drops_drifting_half_of_window(rng):
    rule = MonteCarloErrorRule(tol=0.1)
    # slow EM drift inside the window: 0.02 per iteration under noise of 0.01
    trace = 0.02 * np.arange(30)[:, None] + 0.01 * rng.normal(size=(30, 1))
    decision = rule.assess(trace, window_start=0, scale=np.full(1, 0.01))
    assert decision.window_start == 15 and "first half dropped" in decision.message


def test_rule_ignores_frozen_parameters(rng):
    rule = MonteCarloErrorRule(tol=0.1)
    trace = np.column_stack([1 + 0.001 * rng.normal(size=30), np.linspace(-5, -20, 30)])
    frozen = np.array([False, True])
    assert rule.assess(trace[:10], window_start=None, scale=np.ones(2), frozen=frozen).window_start == 10
    assert rule.assess(trace, window_start=10, scale=np.ones(2), frozen=frozen).converged


def test_fixed_iterations_rule():
    rule = FixedIterations(n_iter=20, n_average=10)
    assert rule.assess(np.zeros((5, 1)), window_start=None, scale=np.ones(1)).window_start is None
    assert rule.assess(np.zeros((10, 1)), window_start=None, scale=np.ones(1)).window_start == 10
    assert rule.assess(np.zeros((20, 1)), window_start=10, scale=np.ones(1)).converged


def nested_model(rng):
    # 12 instructors nested in 4 departments, crossed with 20 students.
    n = 400
    instructor = rng.integers(0, 12, n).astype(np.int32)
    department = (instructor // 3).astype(np.int32)
    student = rng.integers(0, 20, n).astype(np.int32)
    X = np.column_stack([np.ones(n), rng.normal(size=n), (department == 1).astype(float)])
    terms = (
        RandomTermData("student", student, None, 20),
        RandomTermData("instructor", instructor, None, 12),
        RandomTermData("dept", department, None, 4),
    )
    return MixedModel(Gaussian(), X, rng.normal(size=n), terms, ("Intercept", "x", "dept1"))


def test_nested_factors_are_found_and_centred(rng):
    model = nested_model(rng)
    centering = nested_centering(model)
    assert centering.parent == (None, 2, None)
    np.testing.assert_array_equal(centering.parent_level[1], np.arange(12) // 3)
    effects = [tf.constant(rng.normal(size=(2, q, 1))) for q in (20, 12, 4)]
    parent_level = [None if m is None else tf.constant(m) for m in centering.parent_level]
    sampler = centering.to_sampler(effects, parent_level)
    expected = effects[1].numpy() + effects[2].numpy()[:, np.arange(12) // 3]
    np.testing.assert_allclose(sampler[1].numpy(), expected)
    back = centering.to_model(sampler, parent_level)
    for a, b in zip(back, effects):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-14)


def test_chains_of_nesting_centre_step_by_step():
    centering = Centering(parent=(None, 0, 1), parent_level=(None, np.array([0, 0, 1]), np.array([0, 1, 2, 2])))
    level = [None, tf.constant([0, 0, 1]), tf.constant([0, 1, 2, 2])]
    effects = [tf.constant([[1.0, 2.0]])[..., None], tf.constant([[10.0, 20.0, 30.0]])[..., None],
               tf.constant([[100.0, 200.0, 300.0, 400.0]])[..., None]]
    sampler = centering.to_sampler(effects, level)
    np.testing.assert_allclose(sampler[2].numpy()[..., 0], [[111.0, 221.0, 332.0, 432.0]])
    np.testing.assert_allclose(centering.to_model(sampler, level)[2].numpy(), effects[2].numpy())


def test_location_expansion_finds_group_level_columns(rng):
    model = nested_model(rng)
    expansions = location_expansions(model)
    # the intercept is constant within every factor; "dept1" within instructors and departments
    assert [e.targets for e in expansions] == [((0,),), ((0, 2),), ((0, 2),)]
    np.testing.assert_allclose(expansions[2].level_values[:, 1], [0, 1, 0, 0])


def test_location_expansion_of_a_slope_term(rng):
    n = 100
    x = rng.normal(size=n)
    g = rng.integers(0, 5, n).astype(np.int32)
    X = np.column_stack([np.ones(n), x])
    z = np.column_stack([np.ones(n), x])
    with_slope = MixedModel(Gaussian(), X, rng.normal(size=n), (RandomTermData("g", g, z, 5, ("(Intercept)", "x")),),
                            ("Intercept", "x"))
    (expansion,) = location_expansions(with_slope)
    assert expansion.targets == ((0,), (1,)) and expansion.level_values.shape == (5, 1)
    # a slope on a variable that is not a fixed effect cannot be absorbed
    other = MixedModel(Gaussian(), X[:, :1], rng.normal(size=n), (RandomTermData("g", g, z, 5, ("(Intercept)", "x")),),
                       ("Intercept",))
    assert not location_expansions(other)[0].active


def test_rao_blackwellized_root_has_the_gaussian_full_conditional():
    # root with 2 levels, child with 4 levels (2 per root level)
    centering = Centering(parent=(None, 0), parent_level=(None, np.array([0, 0, 1, 1])))
    assert centering.roots == ((0, 1),)
    child = tf.constant([[[1.0], [3.0], [-2.0], [0.0]]], tf.float64)
    prior_precision = [tf.constant([4.0], tf.float64), tf.constant([0.5], tf.float64)]
    parent_level = [None, tf.constant([0, 0, 1, 1])]
    replaced = centering.conditional_means([tf.zeros([1, 2, 1], tf.float64), child], parent_level, (2, 4), prior_precision)
    variances = centering.conditional_variances(parent_level, (2, 4), prior_precision)
    precision = 4.0 + 2 * 0.5
    np.testing.assert_allclose(variances[0].numpy(), [1 / precision] * 2)
    np.testing.assert_allclose(replaced[0].numpy()[0, :, 0], [(1 + 3) * 0.5 / precision, (-2 + 0) * 0.5 / precision])


def test_jittered_hmc_samples_the_right_distribution():
    scale = tf.constant([1.0, 2.0, 0.5], tf.float64)

    def target(x):
        return -0.5 * tf.reduce_sum(tf.square(x / scale), axis=-1)

    kernel = JitteredLeapfrogSteps(
        tfp.mcmc.HamiltonianMonteCarlo(target, step_size=tf.constant(0.3, tf.float64), num_leapfrog_steps=6), 6
    )

    @tf.function(jit_compile=True, autograph=False)
    def run():
        return tfp.mcmc.sample_chain(
            3000, tf.zeros([4, 3], tf.float64), kernel=kernel, num_burnin_steps=100,
            trace_fn=lambda _, results: results.accepted_results.num_leapfrog_steps, seed=tf.constant([7, 8]),
        )

    draws, steps = run()
    draws = draws.numpy().reshape(-1, 3)
    np.testing.assert_allclose(draws.std(axis=0), scale.numpy(), rtol=0.08)
    np.testing.assert_allclose(draws.mean(axis=0), 0.0, atol=0.1)
    assert set(np.unique(steps.numpy())) == set(range(3, 10))


def test_row_chunks_sum_and_gradient_match_the_whole_rows():
    from mixedfx.inference.rows import RowChunks

    rng = np.random.default_rng(3)
    n, q = 64, 5
    rows = {"y": tf.constant(rng.normal(size=n)), "g": tf.constant(rng.integers(0, q, n), tf.int32),
            "x": tf.constant(rng.normal(size=(n, 2)))}
    effects = tf.constant(rng.normal(size=(3, q, 1)))  # three chains

    def log_lik(chunk, variables, shift):
        eta = tf.gather(variables[0], chunk["g"], axis=-2)[..., 0] + tf.reduce_sum(chunk["x"], axis=-1) + shift
        return -0.5 * tf.reduce_sum(tf.square(chunk["y"] - eta), axis=-1)

    values, gradients = [], []
    for chunk_rows in (n, 16, 8):
        chunks = RowChunks(rows, chunk_rows=chunk_rows)
        assert chunks.n_chunks == n // chunk_rows
        with tf.GradientTape() as tape:
            tape.watch(effects)
            value = chunks.sum_with_gradient(log_lik, [effects], tf.constant(0.5, tf.float64))
            weighted = tf.reduce_sum(value * tf.constant([1.0, 2.0, -1.0], tf.float64))
        values.append(value.numpy())
        gradients.append(tape.gradient(weighted, effects).numpy())
        sums = chunks.sum(lambda chunk: {"n": tf.reduce_sum(tf.ones_like(chunk["y"])), "x": tf.reduce_sum(chunk["x"], 0)})
        assert float(sums["n"]) == n
        np.testing.assert_allclose(sums["x"].numpy(), rows["x"].numpy().sum(axis=0), rtol=1e-12)
    for value, gradient in zip(values[1:], gradients[1:]):
        np.testing.assert_allclose(value, values[0], rtol=1e-12)
        np.testing.assert_allclose(gradient, gradients[0], rtol=1e-10, atol=1e-12)


def _crossed_small_model(data):
    """``y ~ x + (1 | g1) + (1 | g2)`` on ``data``, bound without the estimator."""
    codes = [data[g].astype("category").cat.codes.to_numpy().astype(np.int32) for g in ("g1", "g2")]
    terms = tuple(RandomTermData(g, c, None, int(c.max()) + 1) for g, c in zip(("g1", "g2"), codes))
    X = np.column_stack([np.ones(len(data)), data["x"].to_numpy()])
    return MixedModel(Gaussian(), X, data["y"].to_numpy(dtype=float), terms, ("Intercept", "x"))


def test_fit_streaming_rows_in_chunks_matches_the_whole_rows_fit(crossed_small, monkeypatch):
    """Large data stream their rows through the compiled loop in chunks; small chunks
    (``MCEMOptions.max_rows_per_chunk``) on a small data set must give the same fit (up
    to summation order), and the rows must really have been summed in chunks."""
    import mixedfx.inference.loop as loop
    from mixedfx.inference import MCEMOptions, fit_mcem
    from mixedfx.inference.rows import RowChunks

    built = []

    class RecordedChunks(RowChunks):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.n_chunks)

    monkeypatch.setattr(loop, "RowChunks", RecordedChunks)
    model = _crossed_small_model(crossed_small)
    whole = fit_mcem(model, seed=[5, 6]).summary
    chunked = fit_mcem(model, options=MCEMOptions(max_rows_per_chunk=256), seed=[5, 6]).summary
    assert 8 in built  # 1,500 rows padded to 2,048: 8 chunks of 256 rows were traced
    assert chunked.n_iter == whole.n_iter
    np.testing.assert_allclose(chunked.estimate, whole.estimate, rtol=1e-6)


def test_one_hot_products_give_the_same_fit_as_gathers(crossed_small, monkeypatch):
    """On a GPU, factors with few levels are applied by one-hot products (their gradient a
    matrix product, not a scatter-add); forcing that path here must give the same fit."""
    import mixedfx.inference.mcem as mcem

    gathers = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g1) + (1 | g2)", random_state=5, verbose=0).fit(crossed_small)
    monkeypatch.setattr(mcem, "one_hot_terms", lambda num_levels: tuple(q <= 64 for q in num_levels))
    assert mcem.one_hot_terms((30, 20)) == (True, True)
    products = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g1) + (1 | g2)", random_state=5, verbose=0).fit(crossed_small)
    assert products.fit_summary_.n_iter == gathers.fit_summary_.n_iter
    np.testing.assert_allclose(products.fit_summary_.estimate, gathers.fit_summary_.estimate, rtol=1e-6)


def test_float32_e_step_log_likelihood_and_gradient_match_float64():
    """The Gaussian E-step's per-row random part runs in float32; its log-likelihood and
    gradient must match float64 closely, also for a response far from zero, slopes,
    per-chain fixed effects (REML) and padded rows."""
    from mixedfx.model import ModelTensors, gaussian_log_likelihood_float32
    from mixedfx.model.joint import response_log_prob

    rng = np.random.default_rng(11)
    n, q1, q2 = 5000, 40, 7
    g1, g2 = rng.integers(0, q1, n).astype(np.int32), rng.integers(0, q2, n).astype(np.int32)
    x = rng.normal(size=n) * 30.0
    X = np.column_stack([np.ones(n), x])
    effects = [rng.normal(size=(2, q1, 2)) * [1.0, 0.05], rng.normal(size=(2, q2, 1))]  # two chains
    beta = np.array([[2e5, 0.5], [2e5 + 0.1, 0.49]])  # per chain, as REML's profiled fixed effects
    y = (2e5 + 0.5 * x + effects[0][0, g1, 0] + effects[0][0, g1, 1] * x + effects[1][0, g2, 0]
         + rng.normal(size=n))
    weight = np.ones(n)
    weight[-300:] = 0.0  # padding rows
    tensors = ModelTensors(
        fixed_design=tf.constant(X), response=tf.constant(y),
        group_index=(tf.constant(g1), tf.constant(g2)),
        z=(tf.constant(np.column_stack([np.ones(n), x])), None),
        num_levels=(q1, q2), keys=("g1", "g2"), dims=(2, 1), row_weight=tf.constant(weight))
    sigma = tf.constant(1.3, tf.float64)
    variables = [tf.constant(e) for e in effects]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(variables)
        # float64 reference, chain by chain (response_log_prob takes one fixed-effect vector)
        exact = tf.stack([response_log_prob(tensors, [v[c] for v in variables], fixed_effects=tf.constant(beta[c]),
                                            family=Gaussian(), family_params={"sigma": sigma}) for c in range(2)])
        mixed = gaussian_log_likelihood_float32(tensors, variables, fixed_effects=tf.constant(beta), sigma=sigma,
                                                regression_response=tensors.response)
        exact_total, mixed_total = tf.reduce_sum(exact), tf.reduce_sum(mixed)
    assert mixed.dtype == tf.float64 and mixed.shape == (2,)
    np.testing.assert_allclose(mixed.numpy(), exact.numpy(), rtol=1e-7)
    # what HMC uses: differences between states, here between the two chains
    assert abs(float(mixed[0] - mixed[1]) - float(exact[0] - exact[1])) < 0.01
    for exact_gradient, mixed_gradient in zip(tape.gradient(exact_total, variables), tape.gradient(mixed_total, variables)):
        scale = np.max(np.abs(exact_gradient.numpy()))
        np.testing.assert_allclose(mixed_gradient.numpy(), exact_gradient.numpy(), atol=1e-5 * scale)


def test_float32_e_step_fit_matches_the_float64_fit(crossed_small):
    from mixedfx.inference import MCEMOptions, fit_mcem

    model = _crossed_small_model(crossed_small)
    fits = [fit_mcem(model, options=MCEMOptions(e_step="hmc", float32_e_step=flag), seed=[3, 4]).summary
            for flag in (False, True)]
    assert all(f.converged for f in fits)
    variance = [i for i, name in enumerate(fits[0].parameter_names) if name.startswith("sd(") or name == "sigma"]
    difference = np.abs(fits[1].estimate - fits[0].estimate)[variance]
    allowed = 5.0 * np.hypot(fits[0].tolerance, fits[1].tolerance)[variance]
    assert np.all(difference <= allowed), (difference, allowed)
    assert not np.array_equal(fits[1].estimate, fits[0].estimate)  # the float32 path did run


def test_gaussian_row_statistics_are_each_chains_cross_products():
    """The M-step's ``X'P``, ``P'P`` and ``P'y`` come from one matrix product over every
    chain's columns at once; each chain's blocks must be its own cross products (three
    chains, a two-coefficient term beside an intercept term, padding rows weighted out)."""
    from mixedfx.inference.mstep import expansion_columns, gaussian_row_statistics

    rng = np.random.default_rng(4)
    n, levels = 50, (6, 4)
    index = [tf.constant(rng.integers(0, q, n), tf.int32) for q in levels]
    z = [tf.constant(rng.normal(size=(n, 2))), None]
    X, y = rng.normal(size=(n, 3)), rng.normal(size=n)
    weight = (rng.random(n) > 0.2).astype(float)
    state = [tf.constant(rng.normal(size=(3, q, d))) for q, d in zip(levels, (2, 1))]
    got = gaussian_row_statistics(state, fixed_design=tf.constant(X), response=tf.constant(y), group_index=index,
                                  z=z, row_weight=tf.constant(weight))
    parts = expansion_columns(state, index, z).numpy() * weight[:, None]  # [chains, rows, 2 * 2 + 1]
    expected = {"xtp": np.einsum("np,cnk->cpk", X, parts), "ptp": np.einsum("cnk,cnl->ckl", parts, parts),
                "pty": np.einsum("cnk,n->ck", parts, y)}
    for key, value in expected.items():
        np.testing.assert_allclose(got[key].numpy(), value, rtol=1e-12, atol=1e-12, err_msg=key)
