"""Sharded fits on :mod:`tf.distribute`: the rows split across replicas, their sums all-reduced.

A mixed model's data enter Monte Carlo EM only through sums over rows: the
log-likelihood and its gradient in the random effects (every leapfrog step of the
E-step), the Gaussian M-step's cross-products of the fixed design with the sampled
random part (every kept draw), the preconditioner's per-level information (every
iteration), and ``X'X``, ``X'y``, ``y'y`` (once).  So the rows are split into one
contiguous shard per replica (padded to equal sizes with copies of the first row whose
``row_weight`` is zero), each replica computes its shard's sums, and the sums are
all-reduced.  Everything else, the fixed effects, the variance parameters and the
chains' random effects, is small next to the rows and is *replicated*: every replica
(every worker of a :class:`tf.distribute.MultiWorkerMirroredStrategy`) holds the
same values, sees the same all-reduced sums and draws the same random numbers, so
the chains move identically everywhere.  ``docs/scaling.md`` explains why, and the
partitioned design for ten million levels.

What is compiled: each replica's shard computation (the per-row work, which is what
grows with the data) is an XLA program (``tf.function(jit_compile=True)``) run on the
replica's device by ``strategy.run``.  The EM loop, the HMC transitions and the
reductions between them form one ``tf.function`` graph: XLA cannot hold a
cross-replica reduction on CPU devices (``jit_compile=True`` around ``strategy.run``
and ``strategy.reduce`` compiles, but into a single XLA program for one device, so the
shards would not run on their replicas), and a reduction cannot sit inside control
flow *within* a replica function (MirroredStrategy's ``merge_call`` refuses it).  So
the loop runs in cross-replica context and calls ``strategy.run`` at each evaluation,
the pattern of TensorFlow's custom training loops.

Every family is sharded: the Gaussian M-step's cross-products, and the other families'
Newton M-step, whose gradient, Hessian and objective are sums over rows and draws.
After the fit, the Gaussian family's exact likelihood is computed from sharded sums
(:func:`sharded_gaussian_marginal`); the other families' Laplace and importance-sampling
likelihood still runs on the host, from all rows.
"""

from __future__ import annotations

import functools

import numpy as np

from mixedfx._tf import tf, tfp
from mixedfx.exceptions import ParameterError
from mixedfx.inference.estep import Centering, hmc_e_step, prior_precision_diagonal
from mixedfx.inference.mstep import (
    Expansion,
    covariance_update,
    expansion_columns,
    gaussian_regression,
    glm_regression,
    gaussian_row_statistics,
    moment_statistics,
    rao_blackwell_corrections,
    reduce_state,
    reml_statistics,
)
from mixedfx.model.blocks import BlockSystem, DenseBlockTooLarge
from mixedfx.model.families import Gaussian
from mixedfx.model.gaussian import GaussianMarginal, marginal_from_cross_products
from mixedfx.model.joint import (
    MixedModel,
    ModelParameters,
    ModelTensors,
    data_log_likelihood,
    linear_predictor,
    random_effects_log_prior,
)

__all__ = ["ShardedRows", "check_strategy", "sharded_gaussian_marginal"]

_SUM = tf.distribute.ReduceOp.SUM


def check_strategy(strategy) -> None:
    """Raise :class:`~mixedfx.ParameterError` unless ``strategy`` can run a sharded fit.

    Parameters
    ----------
    strategy : object
        Should be a :class:`tf.distribute.Strategy`.

    Examples
    --------
    >>> from mixedfx.inference.distributed import check_strategy
    >>> check_strategy("gpu")
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.ParameterError: distribute must be a tf.distribute.Strategy (MirroredStrategy, MultiWorkerMirroredStrategy), got 'gpu'
    """
    if not isinstance(strategy, tf.distribute.Strategy):
        raise ParameterError(
            "distribute must be a tf.distribute.Strategy (MirroredStrategy, MultiWorkerMirroredStrategy), "
            f"got {strategy!r}"
        )


class ShardedRows:
    """A model's rows split across a strategy's replicas, and sums over them.

    The rows are cut into ``num_replicas_in_sync`` contiguous shards of equal size;
    the last shards are padded with copies of the first row whose ``row_weight`` is
    zero, so that every per-row quantity stays finite and contributes nothing.  Each
    worker places only its own replicas' shards, one per local device.

    Parameters
    ----------
    model : MixedModel
    strategy : tf.distribute.Strategy

    Attributes
    ----------
    strategy : tf.distribute.Strategy
    shards : dict
        Per-replica row tensors: ``fixed_design``, ``response``,
        ``regression_response`` (the response less any offset), ``row_weight``,
        ``group_index_k`` and ``z_k`` per term, ``offset`` and ``trials`` when present.
    n_rows : int
        Rows of the model (without padding).
    rows_per_replica : int

    Examples
    --------
    >>> import numpy as np, tensorflow as tf
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> from mixedfx.inference.distributed import ShardedRows
    >>> term = RandomTermData(name="g", group_index=np.array([0, 1, 0, 1, 1], dtype=np.int32),
    ...                       z=None, num_levels=2)
    >>> model = MixedModel(Gaussian(), np.ones((5, 1)), np.arange(5.0), (term,), ("Intercept",))
    >>> rows = ShardedRows(model, tf.distribute.get_strategy())
    >>> float(rows.sum(lambda shard: tf.reduce_sum(shard["response"] * shard["row_weight"])))
    10.0
    """

    def __init__(self, model: MixedModel, strategy):
        self.strategy = strategy
        n = model.n_obs
        replicas = strategy.num_replicas_in_sync
        per = -(-n // replicas)
        self.n_rows, self.rows_per_replica = n, per
        y = model.response
        arrays = {
            "fixed_design": model.fixed_design,
            "response": y,
            "regression_response": y - (0.0 if model.offset is None else model.offset),
            "row_weight": np.ones(n),
        }
        if model.offset is not None:
            arrays["offset"] = model.offset
        if model.trials is not None:
            arrays["trials"] = model.trials
        for k, term in enumerate(model.random_terms):
            arrays[f"group_index_{k}"] = term.group_index.astype(np.int32)
            if term.z is not None:
                arrays[f"z_{k}"] = np.asarray(term.z, dtype=np.float64).reshape(n, -1)
        pad = per * replicas - n
        if pad:
            arrays = {name: np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) for name, a in arrays.items()}
            arrays["row_weight"][n:] = 0.0
        try:
            devices = strategy.extended.worker_devices
        except RuntimeError:  # the default strategy: the current device
            devices = (None,)

        def shard(context):
            r = context.replica_id_in_sync_group
            with tf.device(devices[r % len(devices)]):
                return {name: tf.identity(tf.constant(a[r * per:(r + 1) * per], tf.int32 if a.dtype == np.int32
                                                      else tf.float64))
                        for name, a in arrays.items()}

        self.shards = strategy.experimental_distribute_values_from_function(shard)

    def sum(self, fn, *args, reuse=True):
        """``fn(shard, *args)`` summed over the shards, on every replica.

        ``fn`` returns a nest of float tensors of fixed shapes; it runs as an XLA program
        on each replica's device.  The results travel as one packed vector, so one
        all-reduce serves the whole nest.  With ``reuse``, the program is kept for
        later calls with the same ``fn`` (the call sites of a traced loop).
        """
        compiled = _compiled(fn) if reuse else _compiled.__wrapped__(fn)
        layout = {}

        def packed(shard, *rest):  # traced once per replica, with this call
            out = compiled(shard, *rest)
            flat = tf.nest.flatten(out)
            layout.setdefault("nest", out)
            layout.setdefault("shapes", [t.shape for t in flat])
            return tf.concat([tf.reshape(t, [-1]) for t in flat], axis=0)

        per_replica = self.strategy.run(packed, args=(self.shards, *args))
        total = self.strategy.reduce(_SUM, per_replica, axis=None)
        sizes = [int(np.prod(shape)) for shape in layout["shapes"]]
        parts = tf.split(total, sizes) if len(sizes) > 1 else [total]
        flat = [tf.reshape(part, shape) for part, shape in zip(parts, layout["shapes"])]
        return tf.nest.pack_sequence_as(layout["nest"], flat)

    def sum_with_gradient(self, fn, variables, *args):
        """``fn(shard, variables, *args)`` summed over shards, differentiable in ``variables``.

        Each replica computes its shard's value and gradient; both are all-reduced in one
        go, and the gradient is attached with :func:`tf.custom_gradient`.  (The gradient
        TensorFlow gives a replica-context all-reduce is the all-reduce of the upstream
        gradients, for a loss summed over replicas: here that would multiply the
        gradient by the number of replicas.)  ``fn``'s value may have leading (chain)
        dimensions, which the gradient treats as independent.
        """
        local = _with_gradient(fn)

        @tf.custom_gradient
        def total(*xs):
            value, gradients = self.sum(local, list(xs), *args)

            def gradient(upstream):  # the value's (chain) dimensions lead each gradient's
                out = []
                for g in gradients:
                    trailing = tf.ones([g.shape.rank - upstream.shape.rank], tf.int32)
                    out.append(tf.reshape(upstream, tf.concat([tf.shape(upstream), trailing], 0)) * g)
                return out

            return value, gradient

        return total(*variables)

    @staticmethod
    def tensors(shard, num_levels, keys, dims) -> ModelTensors:
        """A shard as :class:`ModelTensors` (inside a replica function)."""
        terms = range(len(num_levels))
        return ModelTensors(
            shard["fixed_design"], shard["response"], tuple(shard[f"group_index_{k}"] for k in terms),
            tuple(shard.get(f"z_{k}") for k in terms), tuple(num_levels), tuple(keys), tuple(dims),
            offset=shard.get("offset"), trials=shard.get("trials"), row_weight=shard["row_weight"],
        )


@functools.lru_cache(maxsize=64)
def _compiled(fn):
    """``fn`` as an XLA program, kept per function so that every call site of a traced
    loop shares it (one compilation per device and input shapes)."""
    return tf.function(fn, jit_compile=True, autograph=False)


@functools.lru_cache(maxsize=64)
def _with_gradient(fn):
    """``fn``'s value and its gradient in its second argument (a list of tensors)."""

    def local(shard, xs, *args):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            value = fn(shard, xs, *args)
        return value, tape.gradient(value, xs)

    return local


# -- the sums a fit needs once ------------------------------------------------------------
def _setup_sums(rows: ShardedRows, config):
    """``n``, ``X'X``, ``X'y``, ``y'y`` and the per-level sums of the centring and REML."""

    def local(shard):
        w = shard["row_weight"]
        X, y = shard["fixed_design"], shard["regression_response"]
        out = {
            "n_obs": tf.reduce_sum(w),
            "xtx": tf.linalg.matmul(X * w[:, None], X, transpose_a=True),
            "xty": tf.linalg.matvec(X * w[:, None], y, transpose_a=True),
            "yty": tf.reduce_sum(w * y * y),
        }
        for k, q in enumerate(config.num_levels):
            index = shard[f"group_index_{k}"]
            out[f"rows_per_level_{k}"] = tf.math.unsorted_segment_sum(w, index, q)
            if config.reml:
                z = shard.get(f"z_{k}")
                z = tf.ones_like(X[:, :1]) if z is None else z
                out[f"level_xz_{k}"] = tf.math.unsorted_segment_sum(
                    (w[:, None] * z)[:, :, None] * X[:, None, :], index, q)
        return out

    return tf.function(lambda: rows.sum(local, reuse=False), autograph=False)()


@functools.lru_cache(maxsize=8)
def _sharded_iterations(config, strategy):
    """The sharded counterpart of :func:`mixedfx.inference.mcem._compiled_iterations`:
    the same EM iterations, with every sum over rows taken shard by shard."""
    from mixedfx.inference.mcem import _trace_row  # the loop's trace row (mcem imports this module lazily)

    n_iter = config.iterations_per_call
    family = config.family
    gaussian = isinstance(family, Gaussian)
    num_levels, keys, dims = config.num_levels, config.keys, config.dims

    def shard_tensors(shard):
        return ShardedRows.tensors(shard, num_levels, keys, dims)

    def local_log_likelihood(shard, effects, fixed_effects, free):
        return data_log_likelihood(shard_tensors(shard), effects, fixed_effects=fixed_effects, family=family,
                                   family_params=family.constrain(free))

    def local_statistics(shard, effects, fixed_effects, free):
        tensors = shard_tensors(shard)
        out = gaussian_row_statistics(effects, fixed_design=tensors.fixed_design,
                                      response=shard["regression_response"], group_index=tensors.group_index,
                                      z=tensors.z, row_weight=tensors.row_weight)
        out["log_likelihood"] = local_log_likelihood(shard, effects, fixed_effects, free)
        return out

    def local_data_precision(shard, mean_effects, fixed_effects, free):
        tensors = shard_tensors(shard)
        family_params = family.constrain(free)
        eta = linear_predictor(tensors.fixed_design, fixed_effects, mean_effects, tensors.group_index, tensors.z,
                               tensors.offset)
        weight = family.fisher_weight(eta, family_params, trials=tensors.trials) * tensors.row_weight
        out = []
        for index, term_z, q in zip(tensors.group_index, tensors.z, num_levels):
            if term_z is None:
                out.append(tf.math.unsorted_segment_sum(weight, index, q)[:, None])
            else:
                out.append(tf.math.unsorted_segment_sum(weight[:, None] * tf.square(term_z), index, q))
        return out

    @tf.function(autograph=False)
    def run(fixed_effects, scale_tril, free, state, step_size, seed, num_burnin, data, shards):
        rows = _Rows(strategy, shards)
        dtype = fixed_effects.dtype
        expansions = tuple(
            Expansion(targets, values) for targets, values in zip(config.expansion_targets, data["level_values"])
        )
        n_obs = data["n_obs"]
        parent_level = data["parent_level"]
        centering = Centering(parent=config.centering_parent, parent_level=parent_level)
        if config.reml:
            def profiled_fixed_effects(effects):
                xtzb = tf.add_n([tf.einsum("qdp,cqd->cp", xz, b) for xz, b in zip(data["level_xz"], effects)])
                return tf.stop_gradient(tf.linalg.matvec(data["xtx_inv"], data["xty"] - xtzb))

        rows_per_level, children_per_level = {}, {}
        for root, child in centering.roots:
            rows_per_level[root] = data["rows_per_level"][root]
            children_per_level[root] = tf.math.unsorted_segment_sum(
                tf.ones_like(parent_level[child], dtype=dtype), parent_level[child], num_levels[root])

        def body(i, fixed_effects, scale_tril, free, state, step_size, seed, sums, outer_sums, traces):
            seed, step_seed = tfp.random.split_seed(seed)
            family_params = family.constrain(free)

            def beta_for(effects):
                return profiled_fixed_effects(effects) if config.reml else fixed_effects

            def target_log_prob(*effects):
                effects = list(effects)
                prior = random_effects_log_prior(effects, scale_tril, dtype=dtype)
                return prior + rows.sum_with_gradient(local_log_likelihood, effects, beta_for(effects), free)

            def statistics(current):
                if gaussian:
                    stats = rows.sum(local_statistics, list(current), beta_for(current), free)
                else:
                    stats = {"log_likelihood": rows.sum(local_log_likelihood, list(current), fixed_effects, free)}
                log_likelihood = stats.pop("log_likelihood")
                if config.reml:
                    stats.update(reml_statistics(stats, dims=dims, fixed_xtx_inv=data["xtx_inv"]))
                stats.update(moment_statistics(current, expansions=expansions))
                stats["log_joint"] = random_effects_log_prior(current, scale_tril, dtype=dtype) + log_likelihood
                return stats

            data_precision = rows.sum(local_data_precision, [tf.reduce_mean(s, 0) for s in state], fixed_effects,
                                      free)
            prior_precision = prior_precision_diagonal(scale_tril)
            scale = centering.scale(data_precision, prior_precision, parent_level, num_levels)

            def rao_blackwellized(coordinates):
                return centering.conditional_means(coordinates, parent_level, num_levels, prior_precision)

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
                    return rows.sum(_newton_rows(fn, len(num_levels)), flat_draws, *args)

                regression_beta, scale_matrix, new_free = glm_regression(
                    None, fixed_design=None, response=None, trials=None, offset=None, family=family,
                    fixed_effects=fixed_effects, free=free, dims=dims, sums=newton_sums,
                    n_draws=config.n_draws * int(state[0].shape[0]),
                )
            new_beta, new_scale_tril, location = covariance_update(
                stats, fixed_effects=regression_beta, scale_matrix=scale_matrix, num_levels=num_levels,
                dims=dims, expansions=expansions,
            )
            new_state = reduce_state(e_step.final_state, scale_matrix=scale_matrix, location=location,
                                     expansions=expansions)
            sums = [a + b for a, b in zip(sums, e_step.effects_sum)]
            outer_sums = [a + b for a, b in zip(outer_sums, e_step.effects_outer_sum)]
            traces = {
                "parameters": traces["parameters"].write(i, _trace_row(new_beta, new_scale_tril, family, new_free)),
                "objective": traces["objective"].write(i, e_step.statistics["log_joint"]),
                "acceptance": traces["acceptance"].write(i, e_step.acceptance_rate),
                "step_size": traces["step_size"].write(i, e_step.step_size),
                "draws": [array.write(i, draws if config.keep_all_draws else draws[-1:])
                          for array, draws in zip(traces["draws"], e_step.draws)],
            }
            return (i + 1, new_beta, new_scale_tril, new_free, new_state, e_step.step_size, seed, sums, outer_sums,
                    traces)

        sums = [tf.zeros([q, d], dtype) for q, d in zip(num_levels, dims)]
        outer_sums = [tf.zeros([q, d, d], dtype) for q, d in zip(num_levels, dims)]
        traces = {name: tf.TensorArray(dtype, size=n_iter)
                  for name in ("parameters", "objective", "acceptance", "step_size")}
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

    return run


@functools.lru_cache(maxsize=64)
def _newton_rows(fn, n_terms):
    """A Newton-step sum of :func:`~mixedfx.inference.mstep.glm_regression` on a shard: the
    expansion regressors of the draws built from the shard's rows."""

    def local(shard, flat_draws, *args):
        group_index = tuple(shard[f"group_index_{k}"] for k in range(n_terms))
        z = tuple(shard.get(f"z_{k}") for k in range(n_terms))
        rows = {"parts": expansion_columns(flat_draws, group_index, z), "fixed_design": shard["fixed_design"],
                "response": shard["response"], "trials": shard.get("trials"), "offset": shard.get("offset"),
                "row_weight": shard["row_weight"]}
        return fn(rows, *args)

    return local


class _Rows:
    """:class:`ShardedRows`' sums inside the loop's graph, over the shards it was given."""

    sum = ShardedRows.sum
    sum_with_gradient = ShardedRows.sum_with_gradient

    def __init__(self, strategy, shards):
        self.strategy, self.shards = strategy, shards


class ShardedIterations:
    """The EM iterations of :func:`~mixedfx.inference.fit_mcem` on a strategy's replicas.

    Called like the single-device compiled function, ``run(fixed_effects, scale_tril,
    free, state, step_size, seed, num_burnin, data)``; the rows of ``data`` are
    replaced by the shards, and ``X'X``, ``X'y``, ``y'y`` and the per-level sums by
    their all-reduced values.
    """

    def __init__(self, config, model: MixedModel, strategy):
        check_strategy(strategy)
        self.rows = ShardedRows(model, strategy)
        self.run = _sharded_iterations(config, strategy)
        sums = {name: value.numpy() for name, value in _setup_sums(self.rows, config).items()}
        xtx = sums["xtx"]
        self.globals = {
            "n_obs": tf.constant(sums["n_obs"], tf.float64),
            "xtx": tf.constant(xtx),
            "xty": tf.constant(sums["xty"]),
            "yty": tf.constant(sums["yty"], tf.float64),
            "xtx_inv": tf.constant(np.linalg.pinv(xtx) if config.reml else np.zeros_like(xtx)),
            "rows_per_level": tuple(tf.constant(sums[f"rows_per_level_{k}"]) for k in range(len(config.num_levels))),
        }
        if config.reml:
            self.globals["level_xz"] = tuple(tf.constant(sums[f"level_xz_{k}"]) for k in range(len(config.num_levels)))

    def __call__(self, fixed_effects, scale_tril, free, state, step_size, seed, num_burnin, data):
        data = {"level_values": data["level_values"], "parent_level": data["parent_level"], **self.globals}
        return self.run(fixed_effects, scale_tril, free, state, step_size, seed, num_burnin, data, self.rows.shards)


# -- the exact Gaussian likelihood from sharded sums ---------------------------------------
def sharded_gaussian_marginal(model: MixedModel, params: ModelParameters, *, strategy,
                              profile_fixed_effects: bool = False,
                              max_dense_entries: int = 60_000_000) -> GaussianMarginal:
    """:func:`mixedfx.model.gaussian_marginal` with its sums over rows taken shard by shard.

    Every input of the block elimination is a sum over rows: with ``U`` the scaled
    random-effects design (row ``i``: ``z_i' L_k / sigma`` in the columns of its levels)
    and ``W = [y - offset - X beta, X]``, the blocks of ``U'U``, ``U'W`` and ``W'W``.
    Each replica computes them on its shard, they are all-reduced, and the dense
    factorization (level counts squared, independent of the rows) runs once on the
    host, as in the single-device computation.

    Parameters
    ----------
    model : MixedModel
        A Gaussian model with its response.
    params : ModelParameters
    strategy : tf.distribute.Strategy
    profile_fixed_effects : bool, default False
    max_dense_entries : int, default 60_000_000

    Returns
    -------
    GaussianMarginal

    Examples
    --------
    >>> import numpy as np, tensorflow as tf
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> from mixedfx.inference.distributed import sharded_gaussian_marginal
    >>> term = RandomTermData(name="g", group_index=np.array([0, 0, 1, 1], dtype=np.int32),
    ...                       z=None, num_levels=2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]),
    ...                    (term,), ("Intercept",))
    >>> params = ModelParameters(np.array([3.0]), np.array([1.0]), {"sigma": 1.0})
    >>> marginal = sharded_gaussian_marginal(model, params, strategy=tf.distribute.get_strategy())
    >>> round(marginal.log_likelihood, 4)
    -6.7744
    """
    check_strategy(strategy)
    if not isinstance(model.family, Gaussian):
        raise ParameterError(f"the exact marginal likelihood is the Gaussian family's, not {model.family.name!r}'s")
    terms = model.random_terms
    num_levels = tuple(t.num_levels for t in terms)
    dims = tuple(t.dim for t in terms)
    first, width = BlockSystem.order(num_levels, dims)[0], sum(q * d for q, d in zip(num_levels, dims))
    width -= num_levels[first] * dims[first]
    q1, d1 = num_levels[first], dims[first]
    if q1 * d1 * width + width * width > max_dense_entries:
        raise DenseBlockTooLarge(
            f"exact computation needs dense blocks of {q1 * d1} x {width} and {width} x {width} entries")
    sigma = float(params.family_params["sigma"])
    scale_tril = [tf.constant(np.asarray(L, dtype=np.float64) / sigma) for L in params.random_scale_tril]
    beta = tf.constant(np.asarray(params.fixed_effects, dtype=np.float64))
    rows = ShardedRows(model, strategy)
    sums = _marginal_sums(rows, num_levels, dims, beta, scale_tril)
    sums = {name: value.numpy() for name, value in sums.items()}
    system = BlockSystem.from_cross_products(num_levels, dims, sums["a11"], sums["a1r"], sums["arr"],
                                             max_dense_entries=max_dense_entries)
    return marginal_from_cross_products(system, sums["wtw"], sums["v1"], sums["vr"], params=params,
                                        n_obs=model.n_obs, profile_fixed_effects=profile_fixed_effects)


@functools.lru_cache(maxsize=16)
def _marginal_cross_products(num_levels, dims):
    """Per shard, the sums of :func:`sharded_gaussian_marginal`, for one term structure
    (cached, so refits and repeated evaluations reuse the compiled program)."""
    order = BlockSystem.order(num_levels, dims)
    first, rest = order[0], order[1:]
    offsets, width = {}, 0
    for k in rest:
        offsets[k] = width
        width += num_levels[k] * dims[k]
    q1, d1 = num_levels[first], dims[first]
    terms = range(len(num_levels))

    def local(shard, beta, scale_tril):
        w = shard["row_weight"]
        X = shard["fixed_design"]
        W = tf.concat([(shard["regression_response"] - tf.linalg.matvec(X, beta))[:, None], X], axis=1)
        m = W.shape[1]
        scaled, columns = {}, {}
        for k in terms:
            z = shard.get(f"z_{k}")
            z = tf.ones_like(W[:, :1]) if z is None else z
            scaled[k] = tf.linalg.matmul(z, scale_tril[k])  # (rows, d_k)
            index = shard[f"group_index_{k}"]
            column = index[:, None] * dims[k] + tf.range(dims[k])[None, :]  # (rows, d_k)
            columns[k] = column if k == first else offsets[k] + column
        g1, u1 = shard[f"group_index_{first}"], scaled[first]
        weighted_u1 = w[:, None] * u1
        out = {
            "a11": tf.math.unsorted_segment_sum(weighted_u1[:, :, None] * u1[:, None, :], g1, q1),
            "v1": tf.math.unsorted_segment_sum(weighted_u1[:, :, None] * W[:, None, :], g1, q1),
            "wtw": tf.linalg.matmul(w[:, None] * W, W, transpose_a=True),
        }
        a1r = tf.zeros([q1 * d1 * width], tf.float64)
        arr = tf.zeros([width * width], tf.float64)
        vr = tf.zeros([width, m], tf.float64)
        for k in rest:
            uk, ck = w[:, None] * scaled[k], columns[k]
            vr = vr + tf.math.unsorted_segment_sum(tf.reshape(uk[:, :, None] * W[:, None, :], [-1, m]),
                                                   tf.reshape(ck, [-1]), width)
            pairs = columns[first][:, :, None] * width + ck[:, None, :]  # (rows, d1, dk)
            a1r = a1r + tf.math.unsorted_segment_sum(tf.reshape(u1[:, :, None] * uk[:, None, :], [-1]),
                                                     tf.reshape(pairs, [-1]), q1 * d1 * width)
            for j in rest:
                pairs = ck[:, :, None] * width + columns[j][:, None, :]
                arr = arr + tf.math.unsorted_segment_sum(tf.reshape(uk[:, :, None] * scaled[j][:, None, :], [-1]),
                                                         tf.reshape(pairs, [-1]), width * width)
        out["a1r"] = tf.reshape(a1r, [q1 * d1, width])
        out["arr"] = tf.reshape(arr, [width, width])
        out["vr"] = vr
        return out

    return local


def _marginal_sums(rows, num_levels, dims, beta, scale_tril):
    local = _marginal_cross_products(num_levels, dims)
    return tf.function(lambda: rows.sum(local, beta, scale_tril), autograph=False)()
