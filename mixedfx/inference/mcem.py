"""Monte Carlo EM: the fitting loop.

One compiled call runs ``iterations_per_call`` EM iterations inside a
``tf.while_loop`` under ``tf.function(jit_compile=True)``: each iteration is an HMC
E-step (:mod:`mixedfx.inference.estep`) followed by the parameter-expanded M-step
(:mod:`mixedfx.inference.mstep`).  Python runs only between calls, to consult the
stopping rule (:mod:`mixedfx.inference.stopping`) and to update the progress bar.

Compiled functions are cached per static configuration (family, sampler settings,
term structure) and tensor shapes, and the rows and levels are padded up to shape
buckets (:mod:`mixedfx.inference.buckets`), so fits of data of similar sizes, as in
cross-validation, a bootstrap or a grid search, compile once.  Nothing compiled is
ever stored on an estimator.
"""

from __future__ import annotations

import collections
import functools
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from mixedfx._tf import tf, tfp
from mixedfx.exceptions import FitError
from mixedfx.inference.buckets import ShapeBuckets
from mixedfx.inference.estep import Centering, data_precision_diagonal, hmc_e_step, prior_precision_diagonal
from mixedfx.inference.initial import conditional_modes, initial_parameters
from mixedfx.inference.layout import ParameterLayout, complete_data_scale, fixed_effects_scale
from mixedfx.inference.mstep import (
    Expansion,
    covariance_update,
    gaussian_regression,
    gaussian_row_statistics,
    glm_regression,
    moment_statistics,
    newton_rows,
    rao_blackwell_corrections,
    reduce_state,
    reml_statistics,
)
from mixedfx.inference.rows import RowChunks, chunk_rows_for, model_tensors
from mixedfx.inference.stopping import Decision, MonteCarloErrorRule
from mixedfx.inference.structure import location_expansions, nested_centering
from mixedfx.inference.summary import FitSummary
from mixedfx.model.families import Family, Gaussian
from mixedfx.model.joint import (
    MixedModel,
    ModelParameters,
    gaussian_log_likelihood_float32,
    linear_predictor,
    prior_log_prob,
    response_log_prob,
)

__all__ = ["MCEMOptions", "MCEMResult", "fit_mcem"]


@dataclass(frozen=True)
class MCEMOptions:
    """Settings of the Monte Carlo EM loop.

    Attributes
    ----------
    n_chains : int, default 2
        HMC chains run side by side (vectorized) in each E-step.
    n_draws : int, default 5
        Draws kept per chain per E-step.
    n_burnin : int, default 3
        Transitions per E-step that adapt the step size before the kept draws.  The
        chains carry over from one E-step to the next, so little burn-in is needed.
    n_initial_burnin : int, default 50
        Burn-in of the very first E-step, whose chains start at zero.
    n_leapfrog_steps : int, default 8
    target_accept_prob : float, default 0.75
    initial_step_size : float, default 0.5
        On the preconditioned scale, where the conditional sds are about one.
    iterations_per_call : int, default 5
        EM iterations per compiled call; the stopping rule is consulted between calls.
    max_iter : int, default 500
    max_retries : int, default 6
        How often a block of iterations may be run again from its starting
        parameters when its E-steps produced non-finite values or more than half of
        their HMC transitions diverged: first with the chains moved to the random
        effects' conditional modes (:func:`conditional_modes`), then with a tenth of
        the step size each time.  Past that, the fit raises :class:`~mixedfx.FitError`.
    max_kept_draws : int, default 1000
        Draws kept per chain for diagnostics (the latest of the averaging window).
    draws_memory_bytes : int, default 64 MiB
        Bound on the memory of the kept draws; fewer are kept when it binds (their
        diagnostics need a few times as much, briefly).
    float32_e_step : bool, default True
        Gaussian family: the E-step's per-row work on the random effects (gathering
        each row's coefficients, the residual, and the scatter of its gradient back to
        the levels) in float32, the fixed part ``y - X beta`` and every sum over rows in
        float64 (see :func:`mixedfx.model.gaussian_log_likelihood_float32`).  The M-step, the stopping
        rule and the reported log-likelihood stay float64.  The other families are
        float64 throughout.
    max_rows_per_chunk : int, default 131072
        Rows per chunk of the sums over rows inside the compiled loop (bounds the
        memory of the per-row intermediates; see :mod:`mixedfx.inference.rows`).
    max_dense_entries : int, default 60,000,000
        Largest dense block (entries) of the exact Gaussian computations, about
        480 MB of float64; past it the conjugate-gradient path is used.
    diagnostic_entries : int, default 1,048,576
        Draws per slice of levels in the sampler diagnostics (8 MiB of float64).
    rhat_warning : float, default 1.05
        R-hat of the random effects' mean squares, beyond its chance level (see
        ``FitSummary.rhat``), above which the estimators warn.

    Examples
    --------
    The estimators build it from their ``n_chains``, ``n_draws``,
    ``n_leapfrog_steps`` and ``max_iter``; :func:`fit_mcem` takes it directly:

    >>> import dataclasses
    >>> from mixedfx.inference import MCEMOptions
    >>> options = MCEMOptions()
    >>> options.n_chains, options.n_draws, options.n_leapfrog_steps, options.max_iter
    (2, 5, 8, 500)
    >>> dataclasses.replace(options, n_chains=4).n_chains
    4
    """

    n_chains: int = 2
    n_draws: int = 5
    n_burnin: int = 3
    n_initial_burnin: int = 50
    n_leapfrog_steps: int = 8
    target_accept_prob: float = 0.75
    initial_step_size: float = 0.5
    iterations_per_call: int = 5
    max_iter: int = 500
    max_retries: int = 6
    max_kept_draws: int = 1000
    draws_memory_bytes: int = 64 * 2**20
    float32_e_step: bool = True
    max_rows_per_chunk: int = 1 << 17
    max_dense_entries: int = 60_000_000
    diagnostic_entries: int = 1 << 20
    rhat_warning: float = 1.05


@dataclass(frozen=True, eq=False)
class MCEMResult:
    """Estimates, conditional moments and draws of the random effects, and the fit record.

    Attributes
    ----------
    parameters : ModelParameters
    random_effects : tuple of numpy.ndarray
        Per term, the mean of the sampled coefficients over the averaging window's
        draws, shape ``(num_levels, dim)``.
    random_effects_cov : tuple of numpy.ndarray
        Per term, their covariance over the same draws (the conditional covariance
        of each level's coefficients), shape ``(num_levels, dim, dim)``.
    draws : tuple of numpy.ndarray
        Per term, the kept draws, shape ``(n_chains, n_kept, num_levels, dim)``: the
        draws of the E-steps in the averaging window (the latest ``max_kept_draws``
        per chain at most, and within ``draws_memory_bytes``).
    summary : FitSummary

    Examples
    --------
    :func:`fit_mcem` returns one; the estimators turn it into their fitted attributes:

    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> from mixedfx.design import RandomDesign, build_fixed_design
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> spec = mixedfx.parse_formula("y ~ x + (1 | g)")
    >>> fixed, X = build_fixed_design(spec.fixed, data)
    >>> terms = RandomDesign.from_spec(spec, data).materialize(data)
    >>> model = MixedModel(Gaussian(), X, data["y"].to_numpy(), terms, fixed.column_names)
    >>> from mixedfx.inference import fit_mcem
    >>> result = fit_mcem(model, seed=[1, 2])
    >>> result.parameters.fixed_effects.round(1).tolist()
    [1.0, 0.5]
    >>> result.random_effects[0].shape, result.random_effects_cov[0].shape  # 30 levels, 1 coefficient
    ((30, 1), (30, 1, 1))
    >>> draws = result.draws[0]  # (chains, kept draws, levels, coefficients)
    >>> draws.shape[0], draws.shape[2:], result.summary.converged
    (2, (30, 1), True)
    """

    parameters: ModelParameters
    random_effects: tuple[np.ndarray, ...]
    random_effects_cov: tuple[np.ndarray, ...]
    draws: tuple[np.ndarray, ...]
    summary: FitSummary


@dataclass(frozen=True)
class _StaticConfig:
    """What a compiled function depends on besides tensor shapes (the cache key)."""

    family: Family
    n_draws: int
    n_burnin: int
    n_leapfrog_steps: int
    target_accept_prob: float
    iterations_per_call: int
    num_levels: tuple[int, ...]  # padded (see ShapeBuckets)
    dims: tuple[int, ...]
    keys: tuple[str, ...]
    expansion_targets: tuple
    centering_parent: tuple
    reml: bool = False
    keep_all_draws: bool = True
    chunk_rows: int = 0  # rows per chunk of the sums over rows (all of them when 0)
    one_hot: tuple = ()  # per term: one-hot products instead of gathers (few levels, on a GPU)
    float32_e_step: bool = False  # Gaussian: the E-step's random part in float32


def _trace_row(fixed_effects, scale_tril, family, free):
    """The trace row of the parameters: fixed effects, then each term's sds and
    correlations (lme4's order), then the family's parameters."""
    parts = [fixed_effects]
    for L in scale_tril:
        cov = tf.linalg.matmul(L, L, transpose_b=True)
        sds = tf.sqrt(tf.linalg.diag_part(cov))
        parts.append(sds)
        dim = L.shape[-1]
        pairs = [(a, b) for a in range(dim) for b in range(a + 1, dim)]
        if pairs:
            parts.append(tf.stack([cov[a, b] / (sds[a] * sds[b]) for a, b in pairs]))
    natural = family.constrain(free)
    parts += [tf.reshape(natural[name], [-1]) for name in family.parameter_names]
    return tf.concat(parts, axis=0)


@functools.lru_cache(maxsize=16)
def _iterations(config: _StaticConfig, strategy=None):
    """The EM iterations of one compiled call, for a configuration.

    Every sum over the rows goes through a *rows* object (:mod:`mixedfx.inference.rows`):
    on one device the rows are summed a chunk at a time inside one XLA program
    (``tf.function(jit_compile=True)``); with a ``strategy`` the rows are sharded
    across its replicas (:class:`~mixedfx.inference.distributed.ShardedRows`), each
    shard's sums run as an XLA program on its replica, and the loop around them is a
    ``tf.function`` graph (XLA cannot hold the cross-replica reductions).  The
    functions summed over rows are made here, once per configuration, so that a
    sharded fit compiles each of them once.
    """
    n_iter = config.iterations_per_call
    family = config.family
    gaussian = isinstance(family, Gaussian)
    num_levels, keys, dims = config.num_levels, config.keys, config.dims
    n_terms = len(num_levels)

    def tensors_of(rows):
        return model_tensors(rows, num_levels=num_levels, keys=keys, dims=dims, one_hot=config.one_hot or None)

    # -- the sums over rows ----------------------------------------------------------------
    def log_likelihood(rows, effects, fixed_effects, free):
        return response_log_prob(tensors_of(rows), effects, fixed_effects=fixed_effects, family=family,
                                 family_params=family.constrain(free))

    def e_step_log_likelihood(rows, effects, fixed_effects, free):
        if not config.float32_e_step:
            return log_likelihood(rows, effects, fixed_effects, free)
        return gaussian_log_likelihood_float32(tensors_of(rows), effects, fixed_effects=fixed_effects,
                                               sigma=family.constrain(free)["sigma"],
                                               regression_response=rows["regression_response"])

    def gaussian_sums(rows, effects, fixed_effects, free):
        tensors = tensors_of(rows)
        out = gaussian_row_statistics(effects, fixed_design=tensors.fixed_design, response=rows["regression_response"],
                                      group_index=tensors.group_index, z=tensors.z, row_weight=tensors.row_weight)
        out["log_likelihood"] = log_likelihood(rows, effects, fixed_effects, free)
        return out

    def information(rows, mean_effects, fixed_effects, free):
        tensors = tensors_of(rows)
        eta = linear_predictor(tensors.fixed_design, fixed_effects, mean_effects, tensors.group_index, tensors.z,
                               tensors.offset, one_hot=tensors.one_hot)
        weight = family.fisher_weight(eta, family.constrain(free), trials=tensors.trials) * tensors.row_weight
        return data_precision_diagonal(weight=weight, group_index=tensors.group_index, z=tensors.z,
                                       num_levels=num_levels)

    def level_sums(rows):
        """Per level: its rows, and for REML the sums of x z' (X'Z b without the rows)."""
        tensors = tensors_of(rows)
        w = tensors.row_weight
        out = {"rows_per_level": [tf.math.unsorted_segment_sum(w, index, q)
                                  for index, q in zip(tensors.group_index, num_levels)]}
        if config.reml:
            X = tensors.fixed_design
            out["level_xz"] = [
                tf.math.unsorted_segment_sum(
                    (w[:, None] * (tf.ones_like(X[:, :1]) if z is None else z))[:, :, None] * X[:, None, :], index, q)
                for index, z, q in zip(tensors.group_index, tensors.z, num_levels)]
        return out

    def run(fixed_effects, scale_tril, free, state, step_size, seed, num_burnin, data, row_data):
        if strategy is None:
            rows = RowChunks(row_data, chunk_rows=config.chunk_rows)
        else:
            from mixedfx.inference.distributed import ShardedRows

            rows = ShardedRows.of_shards(strategy, row_data)
        dtype = fixed_effects.dtype
        level_weight = data["level_weight"]
        expansions = tuple(
            Expansion(targets, values) for targets, values in zip(config.expansion_targets, data["level_values"])
        )
        n_obs = data["n_obs"]  # the data's rows, not the padded ones
        centering = Centering(parent=config.centering_parent, parent_level=data["parent_level"])
        parent_level = data["parent_level"]
        per_level = rows.sum(level_sums)
        if config.reml:
            def profiled_fixed_effects(effects):
                # beta_hat(b) = (X'X)^-1 X'(y - Zb), per chain.  The log density's gradient
                # in beta vanishes there, so stop_gradient leaves its gradient in b exact.
                xtzb = tf.add_n([tf.einsum("qdp,cqd->cp", xz, b) for xz, b in zip(per_level["level_xz"], effects)])
                return tf.stop_gradient(tf.linalg.matvec(data["xtx_inv"], data["xty"] - xtzb))

        rows_per_level, children_per_level = {}, {}
        for root, child in centering.roots:
            rows_per_level[root] = per_level["rows_per_level"][root]
            children_per_level[root] = tf.math.unsorted_segment_sum(
                tf.ones_like(parent_level[child], dtype=dtype), parent_level[child], num_levels[root])

        def body(i, fixed_effects, scale_tril, free, state, step_size, seed, sums, outer_sums, traces):
            seed, step_seed = tfp.random.split_seed(seed)
            family_params = family.constrain(free)

            def beta_for(effects):
                # for REML at the fixed effects that maximize the density (beta integrated out)
                return profiled_fixed_effects(effects) if config.reml else fixed_effects

            def prior(effects):
                return prior_log_prob(effects, random_scale_tril=scale_tril, level_weight=level_weight, dtype=dtype)

            def target_log_prob(*effects):
                # the value of build_joint_distribution(...).log_prob, computed directly
                effects = list(effects)
                return prior(effects) + rows.sum_with_gradient(e_step_log_likelihood, effects, beta_for(effects),
                                                               free)

            def statistics(current):
                current = list(current)
                if gaussian:
                    stats = rows.sum(gaussian_sums, current, beta_for(current), free)
                    if config.reml:
                        stats.update(reml_statistics(stats, dims=dims, fixed_xtx_inv=data["xtx_inv"]))
                else:
                    stats = {"log_likelihood": rows.sum(log_likelihood, current, fixed_effects, free)}
                stats["log_joint"] = prior(current) + stats.pop("log_likelihood")
                stats.update(moment_statistics(current, expansions=expansions, level_weight=level_weight))
                return stats

            prior_precision = prior_precision_diagonal(scale_tril)
            scale = centering.scale(
                rows.sum(information, [tf.reduce_mean(s, 0) for s in state], fixed_effects, free),
                prior_precision, parent_level, num_levels)

            def rao_blackwellized(coordinates):
                # nested roots are Rao-Blackwellized in the M-step statistics
                return centering.conditional_means(coordinates, parent_level, num_levels, prior_precision)

            # The first E-step of a call may burn in longer (chains starting at zero).
            burnin = tf.where(i == 0, num_burnin, config.n_burnin)
            e_step = hmc_e_step(
                target_log_prob, current_state=state, scale=scale, step_size=step_size,
                num_draws=config.n_draws, num_burnin=burnin, num_leapfrog_steps=config.n_leapfrog_steps,
                target_accept_prob=config.target_accept_prob, trace_fn=statistics, seed=step_seed,
                centering=centering, parent_level=parent_level,
                statistics_coordinates=rao_blackwellized if centering.roots else None,
            )
            stats = e_step.statistics
            if centering.roots:
                variances = centering.conditional_variances(parent_level, num_levels, prior_precision)
                stats = rao_blackwell_corrections(
                    stats, roots=centering.roots, variances=variances, rows_per_level=rows_per_level,
                    children_per_level=children_per_level, dims=dims,
                )
            if gaussian:
                reml = None
                if config.reml:
                    reml = {"xtx_inv": data["xtx_inv"], "sigma": tf.reshape(family_params["sigma"], [])}
                regression_beta, scale_matrix, sigma = gaussian_regression(
                    stats, fixed_xtx=data["xtx"], fixed_xty=data["xty"], response_ss=data["yty"], n_obs=n_obs,
                    dims=dims, reml=reml,
                )
                new_free = tf.math.log(sigma)[None]
            else:
                flat_draws = [tf.reshape(d, tf.concat([[-1], tf.shape(d)[2:]], 0)) for d in e_step.draws]

                def newton_sums(fn, *args):
                    return rows.sum(newton_rows(fn, n_terms), flat_draws, *args)

                regression_beta, scale_matrix, new_free = glm_regression(
                    None, fixed_design=None, response=None, trials=None, offset=None, family=family,
                    fixed_effects=fixed_effects, free=free, dims=dims, sums=newton_sums,
                    n_draws=config.n_draws * int(state[0].shape[0]),
                )
            new_beta, new_scale_tril, location = covariance_update(
                stats, fixed_effects=regression_beta, scale_matrix=scale_matrix, num_levels=data["level_count"],
                dims=dims, expansions=expansions,
            )
            # Carry the chains into the reduced parametrization of the new estimate.
            new_state = reduce_state(e_step.final_state, scale_matrix=scale_matrix, location=location,
                                     expansions=expansions)
            sums = [a + b for a, b in zip(sums, e_step.effects_sum)]
            outer_sums = [a + b for a, b in zip(outer_sums, e_step.effects_outer_sum)]
            traces = {
                "parameters": traces["parameters"].write(i, _trace_row(new_beta, new_scale_tril, family, new_free)),
                "objective": traces["objective"].write(i, e_step.statistics["log_joint"]),
                "acceptance": traces["acceptance"].write(i, e_step.acceptance_rate),
                "step_size": traces["step_size"].write(i, e_step.step_size),
                "divergences": traces["divergences"].write(i, e_step.divergences),
                # each E-step's draws (before the M-step's reparametrization), for diagnostics;
                # only the last one of each when the model is large
                "draws": [array.write(i, draws if config.keep_all_draws else draws[-1:])
                          for array, draws in zip(traces["draws"], e_step.draws)],
            }
            return i + 1, new_beta, new_scale_tril, new_free, new_state, e_step.step_size, seed, sums, outer_sums, traces

        sums = [tf.zeros([q, d], dtype) for q, d in zip(num_levels, dims)]
        outer_sums = [tf.zeros([q, d, d], dtype) for q, d in zip(num_levels, dims)]
        traces = {name: tf.TensorArray(dtype, size=n_iter) for name in ("parameters", "objective", "acceptance", "step_size",
                                                                   "divergences")}
        traces["draws"] = [tf.TensorArray(dtype, size=n_iter) for _ in num_levels]
        loop = tf.while_loop(
            lambda i, *_: i < n_iter,
            body,
            (tf.constant(0), fixed_effects, scale_tril, free, state, step_size, seed, sums, outer_sums, traces),
        )
        _, fixed_effects, scale_tril, free, state, step_size, seed, sums, outer_sums, traces = loop
        return {
            "fixed_effects": fixed_effects,
            "scale_tril": scale_tril,
            "free": free,
            "state": state,
            "step_size": step_size,
            "seed": seed,
            "effects_sum": sums,
            "effects_outer_sum": outer_sums,
            "draws": [array.stack() for array in traces.pop("draws")],
            **{f"trace_{name}": array.stack() for name, array in traces.items()},
        }

    return tf.function(run, jit_compile=strategy is None, autograph=False)


def fit_mcem(
    model: MixedModel,
    *,
    initial: ModelParameters | None = None,
    method: str = "ml",
    options: MCEMOptions | None = None,
    stopping_rule=None,
    seed=None,
    progress: bool = False,
    distribute=None,
) -> MCEMResult:
    """Fit a mixed model by Monte Carlo EM.

    Parameters
    ----------
    model : MixedModel
        The model bound to its training data.
    initial : ModelParameters, optional
        Starting values; by default :func:`initial_parameters`.
    method : {"ml", "reml"}, default "ml"
        Maximum likelihood, or restricted maximum likelihood (Gaussian family only):
        the E-step then integrates the fixed effects out under a flat prior.
    options : MCEMOptions, optional
    stopping_rule : object with an ``assess`` method, optional
        By default :class:`MonteCarloErrorRule` with ``tol=0.1``.
    seed : int or array of two ints, optional
        Stateless seed; the same seed gives the same fit on the same machine.
    progress : bool, default False
        Show a tqdm progress bar (it appears only on fits longer than two seconds).
    distribute : tf.distribute.Strategy, optional
        Shard the rows across the strategy's replicas and all-reduce their sums
        (:mod:`mixedfx.inference.distributed`).

    Returns
    -------
    MCEMResult

    Examples
    --------
    The estimators call it on the model they bind; the layers below the estimator
    can also be used directly (formula, designs, model, then this):

    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> from mixedfx.design import RandomDesign, build_fixed_design
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> spec = mixedfx.parse_formula("y ~ x + (1 | g)")
    >>> fixed, X = build_fixed_design(spec.fixed, data)
    >>> terms = RandomDesign.from_spec(spec, data).materialize(data)
    >>> model = MixedModel(Gaussian(), X, data["y"].to_numpy(), terms, fixed.column_names)
    >>> from mixedfx.inference import fit_mcem
    >>> result = fit_mcem(model, seed=[1, 2])
    >>> result.summary.converged
    True
    >>> result.parameters.fixed_effects.round(1).tolist(), round(float(result.parameters.family_params["sigma"]), 1)
    ([1.0, 0.5], 1.0)
    >>> sd = result.parameters.random_scale_tril[0][0, 0]
    >>> bool(0.6 < sd < 1.0)  # simulated with sd 0.8
    True
    """
    options = options or MCEMOptions()
    if method not in ("ml", "reml"):
        raise ValueError(f"method must be 'ml' or 'reml', got {method!r}")
    reml = method == "reml"
    if reml and not isinstance(model.family, Gaussian):
        raise ValueError(f"REML is defined for the Gaussian family only, not {model.family.name!r}")
    rule = stopping_rule if stopping_rule is not None else MonteCarloErrorRule()
    initial = initial or initial_parameters(model)
    layout = ParameterLayout.from_model(model)
    expansions = location_expansions(model)
    centering = nested_centering(model)
    dims = tuple(t.dim for t in model.random_terms)
    num_levels = tuple(t.num_levels for t in model.random_terms)
    centred = {k for k, parent in enumerate(centering.parent) if parent is not None} | set(centering.parent)
    buckets = ShapeBuckets.for_sizes(model.n_obs, num_levels, unpadded_terms=centred)
    config = _StaticConfig(
        family=model.family,
        n_draws=options.n_draws,
        n_burnin=options.n_burnin,
        n_leapfrog_steps=options.n_leapfrog_steps,
        target_accept_prob=options.target_accept_prob,
        iterations_per_call=options.iterations_per_call,
        num_levels=buckets.padded_levels,
        dims=dims,
        keys=model.keys,
        expansion_targets=tuple(e.targets for e in expansions),
        centering_parent=centering.parent,
        reml=reml,
        keep_all_draws=8 * options.n_chains * options.n_draws * sum(q * d for q, d in zip(buckets.padded_levels, dims))
        <= 16 * 2**20,
        chunk_rows=chunk_rows_for(buckets.padded_rows),
        one_hot=one_hot_terms(buckets.padded_levels),
        float32_e_step=options.float32_e_step and isinstance(model.family, Gaussian),
    )
    run = _iterations(config, distribute)
    X = model.fixed_design
    # The Gaussian regression works on the response less any offset.
    y = model.response - (0.0 if model.offset is None else model.offset)

    def constant(values, dtype=tf.float64):
        return None if values is None else tf.constant(values, dtype)

    if distribute is None:
        row_data = _padded_rows(model, buckets)
    else:
        from mixedfx.inference.distributed import ShardedRows

        row_data = ShardedRows(model, distribute).shards
    data = {
        "level_weight": tuple(constant(buckets.level_weight(k)) for k in range(len(dims))),
        "n_obs": tf.constant(float(model.n_obs), tf.float64),
        "level_count": tuple(tf.constant(float(q), tf.float64) for q in num_levels),
        "level_values": tuple(constant(buckets.pad_levels(k, e.level_values)) for k, e in enumerate(expansions)),
        "parent_level": tuple(None if m is None else tf.constant(m, tf.int32) for m in centering.parent_level),
        "xtx": tf.constant(X.T @ X),
        "xtx_inv": tf.constant(np.linalg.pinv(X.T @ X) if reml else np.zeros((X.shape[1],) * 2)),
        "xty": tf.constant(X.T @ y),
        "yty": tf.constant(float(y @ y), tf.float64),
    }
    fixed_effects = tf.constant(initial.fixed_effects, tf.float64)
    scale_tril = [tf.constant(L, tf.float64) for L in initial.random_scale_tril]
    free = tf.constant(model.family.free_from_parameters(initial.family_params), tf.float64)
    state = [tf.zeros([options.n_chains, q, d], tf.float64) for q, d in zip(config.num_levels, dims)]
    real = [slice(0, q) for q in num_levels]  # the data's levels among the padded ones
    step_size = tf.constant(options.initial_step_size, tf.float64)
    seed = tf.constant(_seed_pair(seed), tf.int32)
    draws_per_call = options.iterations_per_call * options.n_draws * options.n_chains

    rows, objective, acceptance, step_sizes, divergences = [], [], [], [], []
    recoveries, restarted_at = [], None
    window_start, draws_summed = None, 0
    sums = [np.zeros((q, d)) for q, d in zip(num_levels, dims)]
    outer_sums = [np.zeros((q, d, d)) for q, d in zip(num_levels, dims)]
    bytes_per_draw = 8 * options.n_chains * sum(q * d for q, d in zip(num_levels, dims))
    kept = collections.deque(maxlen=max(1, min(options.max_kept_draws, options.draws_memory_bytes // bytes_per_draw)))
    decision = Decision(None, False, message="not started")
    fixed_scale = None
    gaussian = isinstance(model.family, Gaussian)
    unjudged = np.arange(layout.size) < (layout.n_fixed if gaussian else 0)
    start_time = time.perf_counter()
    first_call_seconds = 0.0
    bar = tqdm(desc="MCEM", unit="it", disable=not progress, delay=2.0, leave=False, dynamic_ncols=True)
    bar.set_postfix_str("tracing and compiling (XLA)", refresh=False)
    try:
        while len(rows) < options.max_iter:
            num_burnin = options.n_initial_burnin if not rows else options.n_burnin
            out = run(fixed_effects, scale_tril, free, state, step_size, seed, tf.constant(num_burnin), data, row_data)
            if not rows:
                first_call_seconds = time.perf_counter() - start_time
            chunk = out["trace_parameters"].numpy()
            fault = _block_fault(out, chunk, layout.names, transitions=options.n_chains * options.n_draws)
            if fault is not None:
                # Start the block again from where it started, with a smaller step size.
                block = f"iterations {len(rows) + 1}-{len(rows) + len(chunk)}"
                if len(recoveries) >= options.max_retries:
                    raise FitError(
                        f"Monte Carlo EM broke down in {block} ({fault}) and {len(recoveries)} retries with "
                        f"smaller HMC step sizes did not help; check the data for extreme values or rescale them, and "
                        "whether the model fits the response exactly (a residual variance of zero)"
                    )
                if restarted_at != len(rows):
                    # First, move the chains to where the random effects' mass is.
                    state = _chains_at_modes(model, fixed_effects, scale_tril, free, n_chains=options.n_chains,
                                             buckets=buckets)
                    restarted_at, action = len(rows), "retried from the random effects' conditional modes"
                else:
                    smaller = float(step_size) / 10.0
                    action = f"retried with step size {float(step_size):.3g} -> {smaller:.3g}"
                    step_size = tf.constant(smaller, tf.float64)
                recoveries.append(f"{block}: {fault}; {action}")
                seed = out["seed"]
                continue
            fixed_effects, scale_tril, free = out["fixed_effects"], out["scale_tril"], out["free"]
            state, step_size, seed = out["state"], out["step_size"], out["seed"]
            divergences.extend(out["trace_divergences"].numpy())
            rows.extend(chunk)
            objective.extend(out["trace_objective"].numpy())
            acceptance.extend(out["trace_acceptance"].numpy())
            step_sizes.extend(out["trace_step_size"].numpy())
            chunk_draws = [d.numpy()[:, :, :, levels] for d, levels in zip(out["draws"], real)]
            kept.extend((len(rows) - len(chunk) + j, [d[j, t] for d in chunk_draws])
                        for j in range(len(chunk)) for t in range(chunk_draws[0].shape[1]))
            if window_start is not None:
                for k, (s, o) in enumerate(zip(out["effects_sum"], out["effects_outer_sum"])):
                    sums[k] += s.numpy()[real[k]]
                    outer_sums[k] += o.numpy()[real[k]]
                draws_summed += draws_per_call
            trace = np.asarray(rows)
            posterior_var = [
                np.maximum(np.diagonal(o.numpy()[levels], axis1=1, axis2=2) / draws_per_call
                           - (m.numpy()[levels] / draws_per_call) ** 2, 0.0)
                for m, o, levels in zip(out["effects_sum"], out["effects_outer_sum"], real)
            ]
            if fixed_scale is None:
                # Exact standard errors cost about one EM iteration: computed once, after
                # the first (parameter-expanded) iterations brought the estimate close.
                # Gaussian fits report the exact GLS fixed effects at the variance
                # estimates, so their Monte Carlo error is not judged (below) and the
                # complete-data standard errors only label the trace.
                fixed_scale = (complete_data_scale(model, layout.parameters(trace[-1])) if gaussian
                               else fixed_effects_scale(model, layout.parameters(trace[-1])))
            scale = layout.statistical_scale(model, trace[-1], fixed_scale=fixed_scale, posterior_var=posterior_var)
            frozen = layout.at_boundary(trace[-1], residual_sd=layout.residual_sd(trace[-1])) | unjudged
            decision = rule.assess(layout.working(trace), window_start=window_start, scale=scale, frozen=frozen)
            if decision.window_start != window_start:
                # The conditional means average the draws from the window's start on.
                window_start = decision.window_start
                sums = [np.zeros_like(s) for s in sums]
                outer_sums = [np.zeros_like(o) for o in outer_sums]
                draws_summed = 0
            bar.update(len(chunk))
            bar.set_postfix_str(decision.message, refresh=False)
            if decision.converged:
                break
    finally:
        bar.close()

    trace = np.asarray(rows)
    n_iter = trace.shape[0]
    if window_start is None or window_start >= n_iter:
        window_start = max(n_iter - options.iterations_per_call, 0)
    window = trace[window_start:]
    estimate = layout.average(window)
    if decision.tolerance is not None:
        tolerance = layout.natural_spread(decision.tolerance, estimate)
    else:
        tolerance = np.full(layout.size, np.nan)
    if draws_summed == 0:  # never reached a window: use the last call's draws
        sums = [s.numpy()[levels] for s, levels in zip(out["effects_sum"], real)]
        outer_sums = [o.numpy()[levels] for o, levels in zip(out["effects_outer_sum"], real)]
        draws_summed = draws_per_call
    window_draws = [draw for iteration, draw in kept if iteration >= window_start] or [kept[-1][1]]
    # (n_chains, n_kept, num_levels, dim) per term, ArviZ's (chain, draw, ...) order
    draws = tuple(np.stack([d[k] for d in window_draws], axis=1) for k in range(len(dims)))
    diagnostics = sampler_diagnostics(draws)
    frozen = layout.at_boundary(estimate, residual_sd=layout.residual_sd(estimate))
    initial_row = layout.row(initial)
    summary = FitSummary(
        converged=bool(decision.converged),
        message=decision.message if decision.converged else f"stopped at max_iter={options.max_iter}: {decision.message}",
        n_iter=n_iter,
        window_start=window_start,
        n_averaged=n_iter - window_start,
        n_draws_averaged=draws_summed,
        parameter_names=layout.names,
        initial=initial_row,
        estimate=estimate,
        mcse=layout.monte_carlo_error(window, estimate),
        tolerance=tolerance,
        trace=trace,
        objective=np.asarray(objective),
        acceptance=np.asarray(acceptance),
        step_size=np.asarray(step_sizes),
        n_chains=options.n_chains,
        n_draws=options.n_draws,
        n_leapfrog_steps=options.n_leapfrog_steps,
        at_boundary=tuple(name for name, flag in zip(layout.names, frozen) if flag),
        elapsed_seconds=time.perf_counter() - start_time,
        first_call_seconds=first_call_seconds,
        method=method,
        divergences=np.asarray(divergences, dtype=np.int64),
        n_retries=len(recoveries),
        recoveries=tuple(recoveries),
        **diagnostics,
    )
    random_effects = tuple(s / draws_summed for s in sums)
    random_effects_cov = tuple(o / draws_summed - m[:, :, None] * m[:, None, :] for o, m in zip(outer_sums, random_effects))
    return MCEMResult(parameters=layout.parameters(estimate), random_effects=random_effects,
                      random_effects_cov=random_effects_cov, draws=draws, summary=summary)


def _chains_at_modes(model, fixed_effects, scale_tril, free, *, n_chains: int, buckets: ShapeBuckets):
    """Every chain's state at the random effects' conditional modes (see
    :func:`conditional_modes`); padded levels at zero."""
    params = ModelParameters(fixed_effects.numpy(), tuple(L.numpy() for L in scale_tril),
                             {k: v.numpy() for k, v in model.family.constrain(free).items()})
    modes = [buckets.pad_levels(k, m) for k, m in enumerate(conditional_modes(model, params))]
    return [tf.constant(np.broadcast_to(m, (n_chains,) + m.shape).copy(), tf.float64) for m in modes]


def _block_fault(out, chunk: np.ndarray, names, *, transitions: int) -> str | None:
    """What went wrong in a block of iterations, or None: non-finite parameters, log
    densities or chains, or more than half of the kept HMC transitions divergent."""
    divergent = out["trace_divergences"].numpy()
    record = f"{int(divergent.sum())} of {transitions * len(divergent)} kept HMC transitions diverged"
    if not np.all(np.isfinite(chunk)):
        bad = [names[j] for j in np.flatnonzero(~np.all(np.isfinite(chunk), axis=0))]
        return f"non-finite values of {', '.join(bad)}; {record}"
    if not np.all(np.isfinite(out["trace_objective"].numpy())):
        return f"non-finite log densities in the E-step; {record}"
    if not all(np.all(np.isfinite(s.numpy())) for s in out["state"]):
        return f"non-finite random effects in the E-step's chains; {record}"
    if divergent.sum() > 0.5 * transitions * len(divergent):
        return record
    return None


#: Terms with at most this many (padded) levels are applied by one-hot products on a GPU.
ONE_HOT_MAX_LEVELS = 64


def one_hot_terms(num_levels, *, devices=None) -> tuple[bool, ...]:
    """Per term, whether the compiled loop applies it by a one-hot product.

    On a GPU, a factor with few levels (at most :data:`ONE_HOT_MAX_LEVELS`) is applied
    as a product of the rows' one-hot indicators with its coefficients, whose gradient
    is another matrix product, instead of a gather, whose gradient is a scatter-add
    that many rows crowd onto few levels.  On a CPU, gathers are as fast and lighter.

    Parameters
    ----------
    num_levels : sequence of int
    devices : sequence of str, optional
        Device types to decide for (default: the logical devices TensorFlow sees).

    Examples
    --------
    >>> from mixedfx.inference.mcem import one_hot_terms
    >>> one_hot_terms([3072, 1152, 16], devices=["CPU", "GPU"]), one_hot_terms([16], devices=["CPU"])
    ((False, False, True), (False,))
    """
    if devices is None:
        devices = [d.device_type for d in tf.config.list_logical_devices()]
    gpu = "GPU" in devices
    return tuple(bool(gpu and q <= ONE_HOT_MAX_LEVELS) for q in num_levels)


def _padded_rows(model: MixedModel, buckets: ShapeBuckets) -> dict:
    """The model's rows as tensors, padded to the bucket (see :mod:`mixedfx.inference.rows`)."""
    pad = buckets.pad_rows
    response = tf.constant(pad(model.response), tf.float64)
    rows = {
        "fixed_design": tf.constant(pad(model.fixed_design), tf.float64),
        "response": response,
        "regression_response": response if model.offset is None else tf.constant(pad(model.response - model.offset),
                                                                                  tf.float64),
        "row_weight": tf.constant(buckets.row_weight(), tf.float64),
    }
    if model.offset is not None:
        rows["offset"] = tf.constant(pad(model.offset), tf.float64)
    if model.trials is not None:
        rows["trials"] = tf.constant(pad(model.trials, fill=1.0), tf.float64)
    for k, term in enumerate(model.random_terms):
        rows[f"group_index_{k}"] = tf.constant(pad(term.group_index), tf.int32)
        if term.z is not None:
            rows[f"z_{k}"] = tf.constant(pad(term.z), tf.float64)
    return rows


_DIAGNOSTIC_ENTRIES = 1 << 20  # draws per slice of levels in sampler_diagnostics (8 MiB of float64)


def sampler_diagnostics(draws) -> dict:
    """R-hat and effective sample sizes of kept draws (:mod:`tfp.mcmc.diagnostic`).

    Parameters
    ----------
    draws : sequence of numpy.ndarray
        Per term, ``(n_chains, n_draws, num_levels, dim)``.

    Returns
    -------
    dict
        ``rhat``: the largest R-hat of the statistics the M-step uses, each term's
        mean square of every coefficient over its levels (what a chain that has not
        mixed gets wrong first), chains against each other.  ``rhat_noise``: how far
        above 1 that R-hat goes by chance alone (its 95% point when the chains agree,
        about ``1.92 / ESS`` per chain for two chains), for the same statistic.
        ``rhat_max``: the largest R-hat over every coefficient of every level; with
        thousands of levels and a hundred draws per chain its chance fluctuations
        alone reach about 1.1.  ``ess_min``: the smallest effective sample size over
        levels, all chains together.  ``n_kept_draws``: draws per chain.  R-hat is
        ``nan`` with fewer than 4 draws per chain, or a single chain.

    Notes
    -----
    The chains are compared with each other, not split in halves: within the
    averaging window the parameters still move by their Monte Carlo error, which
    shifts both chains' draws alike and would make a chain's halves differ even
    when the chains agree.
    """
    n_chains, n_kept = draws[0].shape[:2]
    nan = float("nan")
    out = {"rhat": nan, "rhat_noise": nan, "rhat_max": nan, "ess_min": nan, "n_kept_draws": int(n_kept)}
    if n_kept < 4:
        return out
    worst, levels_rhat, ess = None, [], []
    chi2_95 = {1: 3.841, 2: 5.991, 3: 7.815}.get(n_chains - 1, 3.841 + 1.645 * np.sqrt(2 * (n_chains - 1)))
    for d in draws:
        # The per-level diagnostics a slice of levels at a time: their FFTs take several
        # times the draws' memory.
        num_levels = d.shape[2]
        step = max(1, _DIAGNOSTIC_ENTRIES // max(1, n_chains * n_kept * d.shape[3]))
        slices = [slice(start, min(num_levels, start + step)) for start in range(0, num_levels, step)]
        square_sum = 0.0
        for levels in slices:
            samples = tf.constant(np.swapaxes(d[:, :, levels], 0, 1))  # (draw, chain, level, coefficient)
            ess.append(tfp.mcmc.effective_sample_size(samples, cross_chain_dims=1 if n_chains > 1 else None).numpy())
            if n_chains > 1:
                levels_rhat.append(tfp.mcmc.potential_scale_reduction(samples, independent_chain_ndims=1).numpy())
                square_sum = square_sum + tf.reduce_sum(tf.square(samples), axis=2)
        if n_chains < 2:
            continue
        mean_square = square_sum / num_levels
        rhat = tfp.mcmc.potential_scale_reduction(mean_square, independent_chain_ndims=1).numpy()
        ess_per_chain = tfp.mcmc.effective_sample_size(mean_square, cross_chain_dims=1).numpy() / n_chains
        # R-hat^2 - 1 is about the between-chain variance over the within-chain one:
        # chi-square with n_chains - 1 degrees of freedom over (n_chains - 1) ESS.
        noise = np.sqrt(1.0 + chi2_95 / ((n_chains - 1) * np.maximum(ess_per_chain, 1.0))) - 1.0
        j = int(np.nanargmax(rhat - noise))
        if worst is None or rhat[j] - noise[j] > worst[0] - worst[1]:
            worst = (float(rhat[j]), float(noise[j]))
    if worst is not None:
        out["rhat"], out["rhat_noise"] = worst
        out["rhat_max"] = float(max(np.nanmax(r) for r in levels_rhat))
    out["ess_min"] = float(min(np.nanmin(e) for e in ess))
    return out


def _seed_pair(seed) -> list[int]:
    if seed is None:
        return [int(x) for x in np.random.default_rng().integers(0, 2**31 - 1, size=2)]
    if np.ndim(seed) == 0:
        return [int(x) for x in np.random.default_rng(int(seed)).integers(0, 2**31 - 1, size=2)]
    return [int(x) for x in np.asarray(seed).ravel()[:2]]
