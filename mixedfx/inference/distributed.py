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
the pattern of TensorFlow's custom training loops.  The loop itself is the
single-device one (:func:`mixedfx.inference.mcem.fit_mcem`), given
:class:`ShardedRows` instead of :class:`~mixedfx.inference.rows.RowChunks` as its rows.

Every family is sharded: the Gaussian M-step's cross-products, and the other families'
Newton M-step, whose gradient, Hessian and objective are sums over rows and draws.
After the fit, the Gaussian family's exact likelihood is computed from sharded sums
(:func:`mixedfx.model.gaussian_marginal` with :func:`sharded_cross_products`); the
other families' Laplace and importance-sampling likelihood still runs on the host,
from all rows.
"""

from __future__ import annotations

import functools

import numpy as np

from mixedfx._tf import tf
from mixedfx.exceptions import ParameterError
from mixedfx.inference.rows import model_tensors, value_and_gradient, with_accumulated_gradient
from mixedfx.model.blocks import BlockSystem, DenseBlockTooLarge, MAX_DENSE_ENTRIES
from mixedfx.model.gaussian import CrossProducts, RowSums
from mixedfx.model.joint import MixedModel, ModelParameters, ModelTensors

__all__ = ["ShardedRows", "check_strategy", "sharded_cross_products"]

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
        if model.family_rows is not None:
            arrays["trials"] = model.family_rows
        if model.weights is not None:
            arrays["prior_weight"] = model.weights
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
        go, and the gradient is attached with :func:`tf.custom_gradient`
        (:func:`~mixedfx.inference.rows.with_accumulated_gradient`).  ``fn``'s value may
        have leading (chain) dimensions, which the gradient treats as independent.
        """
        local = _with_gradient(fn)
        return with_accumulated_gradient(lambda *xs: self.sum(local, list(xs), *args), list(variables))

    @classmethod
    def of_shards(cls, strategy, shards) -> ShardedRows:
        """Sums over ``shards`` (a strategy's per-replica row tensors) inside a traced loop."""
        rows = cls.__new__(cls)
        rows.strategy, rows.shards = strategy, shards
        return rows

    @staticmethod
    def tensors(shard, num_levels, keys, dims, predictors=None) -> ModelTensors:
        """A shard as :class:`ModelTensors` (inside a replica function); ``predictors``
        as :func:`~mixedfx.inference.rows.model_tensors`' (a model's ``predictors``: the
        linear predictor each term enters, glmmTMB's ``zi`` ones included)."""
        return model_tensors(shard, num_levels=num_levels, keys=keys, dims=dims, predictors=predictors)


@functools.lru_cache(maxsize=64)
def _compiled(fn):
    """``fn`` as an XLA program, kept per function so that every call site of a traced
    loop shares it (one compilation per device and input shapes)."""
    return tf.function(fn, jit_compile=True, autograph=False)


@functools.lru_cache(maxsize=64)
def _with_gradient(fn):
    """``fn``'s value and its gradient in its second argument (a list of tensors)."""

    def local(shard, xs, *args):
        return value_and_gradient(fn, shard, xs, *args)

    return local


# -- the exact Gaussian likelihood from sharded sums ---------------------------------------
def sharded_cross_products(strategy) -> RowSums:
    """The ``row_sums`` of :func:`mixedfx.model.gaussian_marginal` for a sharded fit.

    Every input of the block elimination is a sum over rows: with ``U`` the scaled
    random-effects design (row ``i``: ``z_i' L_k / sigma`` in the columns of its levels)
    and ``W = [y - offset - X beta, X]``, the blocks of ``U'U`` and ``U'W`` (``W'V^-1W`` is
    then the sum of squares of ``W - U A^-1 U'W``, one more pass over the rows on the host).
    Each replica computes them on its shard, they are all-reduced, and the dense
    factorization (level counts squared, independent of the rows) runs once on the
    host, as in the single-device computation.  ``max_dense_entries`` bounds the
    coupling block too, which each replica sums densely.

    Parameters
    ----------
    strategy : tf.distribute.Strategy

    Returns
    -------
    callable
        ``row_sums(model, params, *, max_dense_entries=None) -> CrossProducts``.

    Raises
    ------
    ParameterError
        Unless ``strategy`` is a :class:`tf.distribute.Strategy`.

    Examples
    --------
    >>> import numpy as np, tensorflow as tf
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters, gaussian_marginal
    >>> from mixedfx.inference.distributed import sharded_cross_products
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> params = ModelParameters(np.array([3.0]), np.array([1.0]), {"sigma": 1.0})
    >>> row_sums = sharded_cross_products(tf.distribute.get_strategy())
    >>> round(gaussian_marginal(model, params, row_sums=row_sums).log_likelihood, 4)
    -6.7744
    """
    check_strategy(strategy)

    def row_sums(model: MixedModel, params: ModelParameters, *, max_dense_entries: int | None = None):
        terms = model.random_terms
        num_levels = tuple(t.num_levels for t in terms)
        dims = tuple(t.dim for t in terms)
        first, width = BlockSystem.order(num_levels, dims)[0], sum(q * d for q, d in zip(num_levels, dims))
        width -= num_levels[first] * dims[first]
        q1, d1 = num_levels[first], dims[first]
        bound = MAX_DENSE_ENTRIES if max_dense_entries is None else max_dense_entries
        if q1 * d1 * width + width * width > bound:
            raise DenseBlockTooLarge(
                f"exact computation needs dense blocks of {q1 * d1} x {width} and {width} x {width} entries")
        sigma = float(params.family_params["sigma"])
        scale_tril = [tf.constant(np.asarray(L, dtype=np.float64) / sigma) for L in params.random_scale_tril]
        beta = tf.constant(np.asarray(params.fixed_effects, dtype=np.float64))
        sums = _marginal_sums(ShardedRows(model, strategy), num_levels, dims, beta, scale_tril)
        sums = {name: value.numpy() for name, value in sums.items()}
        system = BlockSystem.from_cross_products(num_levels, dims, sums["a11"], sums["a1r"], sums["arr"],
                                                 max_dense_entries=bound)
        return CrossProducts(system, sums["v1"], sums["vr"])

    return row_sums


@functools.lru_cache(maxsize=16)
def _marginal_cross_products(num_levels, dims):
    """Per shard, the sums of :func:`sharded_cross_products`, for one term structure
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
    """The cross-products of :func:`_marginal_cross_products`, summed over ``rows``' shards."""
    local = _marginal_cross_products(num_levels, dims)
    return tf.function(lambda: rows.sum(local, beta, scale_tril), autograph=False)()
