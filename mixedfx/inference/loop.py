"""The compiled EM iterations: one call runs several in a ``tf.while_loop``.

:func:`compiled_iterations` makes, once per static configuration (:class:`LoopConfig`),
a ``tf.function(jit_compile=True)`` that runs ``iterations_per_call`` EM iterations
from an :class:`EMState` and returns a :class:`BlockOutput`.  The ``tf.while_loop``'s
variables are one named record, :class:`LoopState`.  Each iteration is

1. the E-step (:func:`~mixedfx.inference.estep.hmc_e_step`, preconditioned by the
   data's information at the chains' mean, or with ``LoopConfig.e_step == "gibbs"``
   :func:`~mixedfx.inference.gibbs.gibbs_e_step`), whose ``trace_fn`` collects the
   M-step strategy's statistics (:mod:`mixedfx.inference.msteps`) and the moments of
   the random effects;
2. the M-step: the strategy's regression, then the covariance part
   (:func:`~mixedfx.inference.mstep.covariance_update`), then the chains mapped into
   the reduced parametrization.

Every sum over rows goes through a rows object (:mod:`mixedfx.inference.rows`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

from mixedfx._tf import tf, tfp
from mixedfx.inference.estep import Centering, data_precision_diagonal, hmc_e_step, prior_precision_diagonal
from mixedfx.inference.gibbs import BlockedGibbs, gibbs_e_step, gibbs_row_functions, prior_precision_matrices
from mixedfx.inference.polya_gamma import PolyaGammaGibbs, polya_gamma_row_functions
from mixedfx.inference.mstep import (
    Expansion,
    covariance_update,
    moment_statistics,
    rao_blackwell_corrections,
    reduce_state,
)
from mixedfx.inference.msteps import m_step_for
from mixedfx.inference.rows import RowChunks, model_tensors
from mixedfx.model.covariance import structure_for
from mixedfx.model.families import Family
from mixedfx.model.joint import (family_tensors, gaussian_log_likelihood_float32, linear_predictor, linear_predictors,
                                 prior_log_prob, response_log_prob)

__all__ = ["BlockOutput", "EMState", "LoopConfig", "LoopState", "compiled_iterations", "trace_row"]

TRACE_NAMES = ("parameters", "objective", "acceptance", "step_size", "divergences")


class EMState(NamedTuple):
    """Where Monte Carlo EM stands between iterations: what one compiled call starts
    from and hands on to the next.

    Attributes
    ----------
    fixed_effects : Tensor
    scale_tril : list of Tensor
        Per term, the Cholesky factor of its covariance.
    free : Tensor
        The family's unconstrained parameters.
    chains : list of Tensor
        Per term, the HMC chains' random effects, ``[n_chains, padded levels, dim]``.
    step_size : Tensor
        The HMC step size (on the preconditioned scale).
    seed : Tensor
        Stateless seed, shape ``[2]``.

    Examples
    --------
    >>> from mixedfx.inference.loop import EMState
    >>> EMState._fields
    ('fixed_effects', 'scale_tril', 'free', 'chains', 'step_size', 'seed')
    """

    fixed_effects: tf.Tensor
    scale_tril: list
    free: tf.Tensor
    chains: list
    step_size: tf.Tensor
    seed: tf.Tensor


class LoopState(NamedTuple):
    """The variables of the ``tf.while_loop`` of one compiled call.

    Attributes
    ----------
    iteration : Tensor
        Iterations done in this call.
    em : EMState
    effects_sum, effects_outer_sum : list of Tensor
        Per term, the sums over this call's draws of each level's effects and of their
        outer products.
    traces : dict
        ``TensorArray`` per traced quantity (:data:`TRACE_NAMES`), and ``draws``: per
        term, each iteration's draws.

    Examples
    --------
    ``tf.while_loop`` carries it as one structure; an iteration returns a new one:

    >>> from mixedfx.inference.loop import LoopState
    >>> LoopState._fields
    ('iteration', 'em', 'effects_sum', 'effects_outer_sum', 'traces')
    """

    iteration: tf.Tensor
    em: EMState
    effects_sum: list
    effects_outer_sum: list
    traces: dict


class BlockOutput(NamedTuple):
    """What one compiled call returns: the state it ends in, the sums of its draws,
    its draws (per term ``[iterations, draws, n_chains, levels, dim]``) and its traces
    (``traces[name]`` one value or row per iteration)."""

    em: EMState
    effects_sum: list
    effects_outer_sum: list
    draws: list
    traces: dict


@dataclass(frozen=True)
class LoopConfig:
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
    structures: tuple = ()  # per term: its covariance structure's name (mixedfx.model.covariance); () all "us"
    predictors: tuple | None = None  # per term: the linear predictor it enters; None all "cond"
    e_step: str = "hmc"  # the E-step's kernel: "hmc" or "gibbs" (resolved from MCEMOptions.e_step)
    # Test hook (MCEMOptions.fault_injection): "nan" or "inf", put into the chains at
    # the iteration ``data["fault_iteration"]`` of a call; None adds nothing to the graph.
    fault_kind: str | None = None


def trace_row(fixed_effects, scale_tril, family, free):
    """The trace row of the parameters: fixed effects, then each term's sds and
    correlations (lme4's order), then the family's parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx._tf import tf
    >>> from mixedfx.inference.loop import trace_row
    >>> from mixedfx.model import Gaussian
    >>> L = tf.constant([[2.0, 0.0], [0.5, 1.0]], tf.float64)  # sds 2 and sqrt(1.25)
    >>> row = trace_row(tf.constant([1.0], tf.float64), [L], Gaussian(), tf.constant([0.0], tf.float64))
    >>> np.round(row.numpy(), 4).tolist()  # beta, sd, sd, correlation, sigma
    [1.0, 2.0, 1.118, 0.4472, 1.0]
    """
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


@dataclass(frozen=True)
class _RowFunctions:
    """The functions a compiled call sums over rows, made once per configuration so that
    a sharded fit compiles each of them once."""

    log_likelihood: object
    e_step_log_likelihood: object
    information: object
    level_sums: object
    m_step: object  # GaussianMStep or NewtonMStep
    gibbs: tuple | None = None  # (block, fixed): the blocked Gibbs kernel's sums (gibbs_row_functions)


def _row_functions(config: LoopConfig) -> _RowFunctions:
    """The sums over rows of one configuration (see :class:`_RowFunctions`)."""
    family, num_levels = config.family, config.num_levels

    def tensors_of(row_data):
        return model_tensors(row_data, num_levels=num_levels, keys=config.keys, dims=config.dims,
                             one_hot=config.one_hot or None, predictors=config.predictors)

    def log_likelihood(row_data, effects, fixed_effects, free):
        return response_log_prob(tensors_of(row_data), effects, fixed_effects=fixed_effects, family=family,
                                 family_params=family.constrain(free))

    def e_step_log_likelihood(row_data, effects, fixed_effects, free):
        if not config.float32_e_step:
            return log_likelihood(row_data, effects, fixed_effects, free)
        return gaussian_log_likelihood_float32(tensors_of(row_data), effects, fixed_effects=fixed_effects,
                                               sigma=family.constrain(free)["sigma"],
                                               regression_response=row_data["regression_response"])

    def information(row_data, mean_effects, fixed_effects, free):
        """The data's share of each level's precision (the preconditioner)."""
        tensors = tensors_of(row_data)
        if config.predictors is not None:
            weight = predictor_weights(family, tensors, mean_effects, fixed_effects, family.constrain(free))
            return data_precision_diagonal(weight=weight, group_index=tensors.group_index, z=tensors.z,
                                           num_levels=num_levels)
        eta = linear_predictor(tensors.fixed_design, fixed_effects, mean_effects, tensors.group_index, tensors.z,
                               tensors.offset, one_hot=tensors.one_hot)
        weight = family.weighted_fisher_weight(eta, family.constrain(free), trials=tensors.trials,
                                               weights=tensors.prior_weight) * tensors.row_weight
        return data_precision_diagonal(weight=weight, group_index=tensors.group_index, z=tensors.z,
                                       num_levels=num_levels)

    def level_sums(row_data):
        """Per level: its rows, and for REML the sums of x z' (X'Z b without the rows)."""
        tensors = tensors_of(row_data)
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

    m_step = m_step_for(family, log_likelihood=log_likelihood, tensors_of=tensors_of, dims=config.dims,
                        reml=config.reml, structures=config.structures, predictors=config.predictors)
    gibbs = None
    if config.e_step == "gibbs":  # the family says which: conditionally Gaussian, or Polya-Gamma augmented
        row_functions = gibbs_row_functions if family.conditionally_gaussian else polya_gamma_row_functions
        gibbs = row_functions(family, tensors_of, num_levels)
    return _RowFunctions(log_likelihood, e_step_log_likelihood, information, level_sums, m_step, gibbs)


def predictor_weights(family, tensors, effects, fixed_effects, natural) -> list:
    """Per term, each row's curvature of the linear predictor the term enters, at
    ``effects`` (the preconditioner's weights when terms enter the family's own linear
    predictors): the family's Fisher weight for ``"cond"``, minus the row's second
    derivative (by automatic differentiation, clipped at zero) for the others."""
    eta, own = linear_predictors(tensors, effects, fixed_effects=fixed_effects)
    natural = family_tensors(natural, dtype=eta.dtype)
    keys = list(own)
    values = [own[key] for key in keys]
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(values)
        with tf.GradientTape() as inner:
            inner.watch(values)
            params = family.with_predictor_offsets(natural, dict(zip(keys, values)))
            total = tf.reduce_sum(family.weighted_log_prob(eta, params, tensors.response, trials=tensors.trials,
                                                           weights=tensors.prior_weight) * tensors.row_weight)
        score_sums = [tf.reduce_sum(s) for s in inner.gradient(total, values)]
    # rows are independent: the gradient of a score's sum in its own predictor is each row's d2
    second = [outer.gradient(score, value) for score, value in zip(score_sums, values)]
    del outer
    weights = {"cond": family.weighted_fisher_weight(eta, params, trials=tensors.trials,
                                                     weights=tensors.prior_weight) * tensors.row_weight}
    weights.update({key: tf.maximum(-d2, 0.0) * tensors.row_weight for key, d2 in zip(keys, second)})
    return [weights[tag] for tag in tensors.predictors]


@dataclass(frozen=True)
class _CallContext:
    """What every iteration of one compiled call shares: the configuration, the rows
    object (``row_sums``), the per-fit tensors and the structure read off them."""

    config: LoopConfig
    functions: _RowFunctions
    row_sums: object
    data: dict
    expansions: tuple
    centering: Centering
    rows_per_level: dict
    children_per_level: dict
    level_xz: list | None

    def fixed_effects_for(self, effects, fixed_effects):
        """The fixed effects the density is evaluated at: for REML those that maximize it
        given ``effects`` (beta integrated out), ``beta_hat(b) = (X'X)^-1 X'(y - Zb)``
        per chain; the density's gradient in beta vanishes there, so stop_gradient
        leaves its gradient in b exact."""
        if not self.config.reml:
            return fixed_effects
        xtzb = tf.add_n([tf.einsum("qdp,cqd->cp", xz, b) for xz, b in zip(self.level_xz, effects)])
        return tf.stop_gradient(tf.linalg.matvec(self.data["xtx_inv"], self.data["xty"] - xtzb))


def _call_context(config, functions, strategy, data, row_data) -> _CallContext:
    """The shared part of one compiled call (see :class:`_CallContext`)."""
    if strategy is None:
        row_sums = RowChunks(row_data, chunk_rows=config.chunk_rows)
    else:
        from mixedfx.inference.distributed import ShardedRows

        row_sums = ShardedRows.of_shards(strategy, row_data)
    expansions = tuple(
        Expansion(targets, values) for targets, values in zip(config.expansion_targets, data["level_values"])
    )
    centering = Centering(parent=config.centering_parent, parent_level=data["parent_level"])
    parent_level = data["parent_level"]
    per_level = row_sums.sum(functions.level_sums)
    rows_per_level, children_per_level = {}, {}
    for root, child in centering.roots:
        rows_per_level[root] = per_level["rows_per_level"][root]
        children_per_level[root] = tf.math.unsorted_segment_sum(
            tf.ones_like(parent_level[child], dtype=tf.float64), parent_level[child], config.num_levels[root])
    return _CallContext(config, functions, row_sums, data, expansions, centering, rows_per_level, children_per_level,
                        per_level.get("level_xz"))


def _e_step(ctx: _CallContext, em: EMState, *, step_seed, prior_precision, num_burnin):
    """One E-step from ``em``'s chains, by HMC or blocked Gibbs (``config.e_step``);
    its ``trace_fn`` collects the M-step strategy's statistics, the log joint density
    and the moments of each draw."""
    config, centering, data = ctx.config, ctx.centering, ctx.data
    parent_level, num_levels, level_weight = data["parent_level"], config.num_levels, data["level_weight"]
    dtype = em.fixed_effects.dtype

    def prior(effects):
        return prior_log_prob(effects, random_scale_tril=em.scale_tril, level_weight=level_weight, dtype=dtype)

    def target_log_prob(*effects):
        # the value of build_joint_distribution(...).log_prob, computed directly
        effects = list(effects)
        return prior(effects) + ctx.row_sums.sum_with_gradient(
            ctx.functions.e_step_log_likelihood, effects, ctx.fixed_effects_for(effects, em.fixed_effects), em.free)

    def statistics(current):
        """Per chain, what the M-step averages over the draws."""
        current = list(current)
        stats = ctx.functions.m_step.statistics(
            ctx.row_sums, current, fixed_effects=ctx.fixed_effects_for(current, em.fixed_effects), free=em.free,
            data=data)
        stats["log_joint"] = prior(current) + stats.pop("log_likelihood")
        stats.update(moment_statistics(current, expansions=ctx.expansions, level_weight=level_weight,
                                       projected=_reml_projected(config, centering)))
        return stats

    def rao_blackwellized(coordinates):
        # nested roots are Rao-Blackwellized in the M-step statistics
        return centering.conditional_means(coordinates, parent_level, num_levels, prior_precision)

    if config.e_step == "gibbs":
        return gibbs_e_step(
            _gibbs_kernel(ctx, em), current_state=em.chains, num_draws=config.n_draws, num_burnin=num_burnin,
            trace_fn=statistics, seed=step_seed, step_size=em.step_size,
            statistics_coordinates=rao_blackwellized if centering.roots else None)
    mean_chains = [tf.reduce_mean(s, 0) for s in em.chains]
    information = ctx.row_sums.sum(ctx.functions.information, mean_chains, em.fixed_effects, em.free)
    scale = centering.scale(information, prior_precision, parent_level, num_levels)
    whitening = _whitening(config.structures, em.scale_tril)
    scale = [s if W is None else tf.math.rsqrt(tf.linalg.matmul(h, tf.square(tf.cast(W, h.dtype))) + 1.0)
             for s, W, h in zip(scale, whitening, information)]
    return hmc_e_step(
        target_log_prob, current_state=em.chains, scale=scale, step_size=em.step_size,
        num_draws=config.n_draws, num_burnin=num_burnin, num_leapfrog_steps=config.n_leapfrog_steps,
        target_accept_prob=config.target_accept_prob, trace_fn=statistics, seed=step_seed,
        centering=centering, parent_level=parent_level,
        statistics_coordinates=rao_blackwellized if centering.roots else None, whitening=whitening,
    )


def _gibbs_kernel(ctx: _CallContext, em: EMState) -> BlockedGibbs:
    """The blocked Gibbs kernel at ``em``'s parameters: its sums over rows go through
    the call's rows object; under REML each sweep first draws the fixed effects given
    the random effects, from ``N(A^-1 c, A^-1)`` with ``A = X'WX`` (flat prior).  A
    family that is not conditionally Gaussian is Polya-Gamma augmented
    (:class:`~mixedfx.inference.polya_gamma.PolyaGammaGibbs`)."""
    block, fixed = ctx.functions.gibbs
    data = ctx.data
    if not ctx.config.family.conditionally_gaussian:
        return PolyaGammaGibbs(
            lambda term, effects, own, fixed_effects, seed: ctx.row_sums.sum_seeded(
                block, seed, effects, own, fixed_effects, em.free, term),
            prior_precision=prior_precision_matrices(em.scale_tril), fixed_effects=em.fixed_effects,
            num_levels=ctx.config.num_levels, centering=ctx.centering, parent_level=data["parent_level"],
            level_weight=data["level_weight"])

    def block_sums(term, effects, own, fixed_effects):
        return ctx.row_sums.sum(block, effects, own, fixed_effects, em.free, term)

    def fixed_effects_draw(effects, seed):
        precision, linear = ctx.row_sums.sum(fixed, effects, em.free)
        chol = tf.linalg.cholesky(precision)
        mean = tf.linalg.cholesky_solve(chol, linear[..., None])[..., 0]
        noise = tf.random.stateless_normal(tf.shape(mean), seed, dtype=mean.dtype)
        return mean + tf.linalg.triangular_solve(chol, noise[..., None], lower=True, adjoint=True)[..., 0]

    return BlockedGibbs(
        block_sums, prior_precision=prior_precision_matrices(em.scale_tril), fixed_effects=em.fixed_effects,
        num_levels=ctx.config.num_levels, fixed_effects_draw=fixed_effects_draw if ctx.config.reml else None,
        centering=ctx.centering, parent_level=data["parent_level"], level_weight=data["level_weight"])


def _reml_projected(config: LoopConfig, centering) -> tuple:
    """The terms whose second moment along their location expansion is Rao-Blackwellized
    (REML only; :func:`~mixedfx.inference.mstep.covariance_update`): those outside
    nested centring, whose roots have their own Rao-Blackwellization."""
    if not config.reml:
        return ()
    return tuple(k for k in range(len(config.num_levels))
                 if centering.parent[k] is None and centering.children[k] is None)


def _whitening(structures, scale_tril) -> list:
    """Per term, the Cholesky factor the E-step whitens its effects by (``b = L z``), where
    its structure asks for it (a nearly singular covariance, ``rr``); else ``None``."""
    structures = structures or ("us",) * len(scale_tril)
    return [L if structure_for(name).whitened_e_step else None for name, L in zip(structures, scale_tril)]


def _m_step(ctx: _CallContext, em: EMState, e_step, *, prior_precision):
    """The M-step after ``e_step``: the strategy's regression, the covariance part, and
    the chains carried into the reduced parametrization of the new estimate.

    Returns ``(fixed_effects, scale_tril, free, chains)``.
    """
    config, centering, data = ctx.config, ctx.centering, ctx.data
    stats = e_step.statistics
    if centering.roots:
        variances = centering.conditional_variances(data["parent_level"], config.num_levels, prior_precision)
        stats = rao_blackwell_corrections(
            stats, roots=centering.roots, variances=variances, rows_per_level=ctx.rows_per_level,
            children_per_level=ctx.children_per_level, dims=config.dims,
        )
    regression_beta, scale_matrix, new_free = ctx.functions.m_step.update(
        stats, row_sums=ctx.row_sums, draws=e_step.draws, fixed_effects=em.fixed_effects, free=em.free, data=data)
    structures = config.structures or ("us",) * len(scale_matrix)
    scale_matrix = [structure_for(name).adapt_expansion(C, stats[f"btb_{k}"])
                    for k, (name, C) in enumerate(zip(structures, scale_matrix))]
    # the location expansions' targets index the fixed effects followed by the family's
    # unconstrained parameters (a term of a family's own linear predictor: its coefficients)
    p = regression_beta.shape[0]
    shifted, new_scale_tril, location = covariance_update(
        stats, fixed_effects=tf.concat([regression_beta, new_free], 0), scale_matrix=scale_matrix,
        num_levels=data["level_count"], dims=config.dims, expansions=ctx.expansions, structures=config.structures,
        current_scale_tril=em.scale_tril if config.reml else None,
    )
    new_beta, new_free = shifted[:p], shifted[p:]
    new_chains = reduce_state(e_step.final_state, scale_matrix=scale_matrix, location=location,
                              expansions=ctx.expansions)
    return new_beta, new_scale_tril, new_free, new_chains


def _iteration(ctx: _CallContext, loop: LoopState, num_burnin) -> LoopState:
    """One EM iteration: E-step, M-step, and the sums and traces it adds to."""
    config, em, i = ctx.config, loop.em, loop.iteration
    if config.fault_kind is not None:
        em = _inject_fault(em, i, ctx.data["fault_iteration"], float(config.fault_kind))
    seed, step_seed = tfp.random.split_seed(em.seed)
    prior_precision = prior_precision_diagonal(em.scale_tril)
    # The first E-step of a call may burn in longer (chains starting at zero).
    burnin = tf.where(i == 0, num_burnin, config.n_burnin)
    e_step = _e_step(ctx, em, step_seed=step_seed, prior_precision=prior_precision, num_burnin=burnin)
    new_beta, new_scale_tril, new_free, new_chains = _m_step(ctx, em, e_step, prior_precision=prior_precision)
    traces = loop.traces
    traces = {
        "parameters": traces["parameters"].write(i, trace_row(new_beta, new_scale_tril, config.family, new_free)),
        "objective": traces["objective"].write(i, e_step.statistics["log_joint"]),
        "acceptance": traces["acceptance"].write(i, e_step.acceptance_rate),
        "step_size": traces["step_size"].write(i, e_step.step_size),
        "divergences": traces["divergences"].write(i, e_step.divergences),
        # each E-step's draws (before the M-step's reparametrization), for diagnostics;
        # only the last one of each when the model is large
        "draws": [array.write(i, draws if config.keep_all_draws else draws[-1:])
                  for array, draws in zip(traces["draws"], e_step.draws)],
    }
    return LoopState(
        iteration=i + 1,
        em=EMState(new_beta, new_scale_tril, new_free, new_chains, e_step.step_size, seed),
        effects_sum=[a + b for a, b in zip(loop.effects_sum, e_step.effects_sum)],
        effects_outer_sum=[a + b for a, b in zip(loop.effects_outer_sum, e_step.effects_outer_sum)],
        traces=traces,
    )


def _inject_fault(em: EMState, iteration, fault_iteration, value: float) -> EMState:
    """The test hook of :attr:`MCEMOptions.fault_injection`: every chain's state set
    to ``value`` (NaN or inf) when ``iteration`` is ``fault_iteration``, unchanged
    otherwise (a ``tf.where`` on the loop counter)."""
    hit = tf.equal(iteration, fault_iteration)
    chains = [tf.where(hit, tf.constant(value, c.dtype), c) for c in em.chains]
    return em._replace(chains=chains)


def _start(config: LoopConfig, em: EMState) -> LoopState:
    """The loop's variables before its first iteration: zero sums, empty traces."""
    dtype, n_iter = em.fixed_effects.dtype, config.iterations_per_call
    traces = {name: tf.TensorArray(dtype, size=n_iter) for name in TRACE_NAMES}
    traces["draws"] = [tf.TensorArray(dtype, size=n_iter) for _ in config.num_levels]
    return LoopState(
        iteration=tf.constant(0),
        em=EMState(*em),
        effects_sum=[tf.zeros([q, d], dtype) for q, d in zip(config.num_levels, config.dims)],
        effects_outer_sum=[tf.zeros([q, d, d], dtype) for q, d in zip(config.num_levels, config.dims)],
        traces=traces,
    )


@functools.lru_cache(maxsize=16)
def compiled_iterations(config: LoopConfig, strategy=None):
    """The EM iterations of one compiled call, for a configuration.

    Returns ``run(em, num_burnin, data, row_data) -> BlockOutput``: ``em`` an
    :class:`EMState`, ``num_burnin`` the first E-step's burn-in, ``data`` the per-fit
    tensors (``level_weight``, ``n_obs``, ``level_count``, ``level_values``,
    ``parent_level``, ``xtx``, ``xtx_inv``, ``xty``, ``yty``, and with
    ``config.fault_kind`` set ``fault_iteration``, the iteration of this call at which
    the fault is injected, -1 for none) and ``row_data`` the padded rows (or a strategy's shards).

    Every sum over the rows goes through a rows object (:mod:`mixedfx.inference.rows`):
    on one device the rows are summed a chunk at a time inside one XLA program
    (``tf.function(jit_compile=True)``); with a ``strategy`` the rows are sharded
    across its replicas (:class:`~mixedfx.inference.distributed.ShardedRows`), each
    shard's sums run as an XLA program on its replica, and the loop around them is a
    ``tf.function`` graph (XLA cannot hold the cross-replica reductions).  The
    functions summed over rows are made here, once per configuration, so that a
    sharded fit compiles each of them once.

    Examples
    --------
    One compiled function per configuration (:func:`~mixedfx.inference.fit_mcem` makes
    the configuration from the model and :class:`~mixedfx.inference.MCEMOptions`):

    >>> from mixedfx.inference.loop import LoopConfig, compiled_iterations
    >>> from mixedfx.model import Gaussian
    >>> config = LoopConfig(family=Gaussian(), n_draws=5, n_burnin=3, n_leapfrog_steps=8, target_accept_prob=0.75,
    ...                     iterations_per_call=5, num_levels=(32,), dims=(1,), keys=("g",),
    ...                     expansion_targets=(((0,),),), centering_parent=(None,))
    >>> compiled_iterations(config) is compiled_iterations(config)
    True
    """
    functions = _row_functions(config)

    def run(em, num_burnin, data, row_data):
        """``iterations_per_call`` EM iterations from ``em`` (a ``tf.while_loop``)."""
        ctx = _call_context(config, functions, strategy, data, row_data)
        loop = tf.while_loop(
            lambda loop: loop.iteration < config.iterations_per_call,
            lambda loop: (_iteration(ctx, loop, num_burnin),),
            (_start(config, em),),
        )[0]
        traces = dict(loop.traces)
        draws = [array.stack() for array in traces.pop("draws")]
        return BlockOutput(loop.em, loop.effects_sum, loop.effects_outer_sum, draws,
                           {name: array.stack() for name, array in traces.items()})

    return tf.function(run, jit_compile=strategy is None, autograph=False)
