"""Sums over the rows: the one place where the inference loop touches the data.

A mixed model's data enter Monte Carlo EM only through sums over rows: the
log-likelihood and its gradient in the random effects (every leapfrog step), the
Gaussian M-step's cross-products (every kept draw), the preconditioner's per-level
information (every iteration), the Newton M-step's gradient, Hessian and objective
(other families).  The loop asks a *rows* object for them, with two methods:

* ``sum(fn, *args)``: ``fn(rows, *args)`` summed over the rows, for any nest of
  tensors ``fn`` returns;
* ``sum_with_gradient(fn, variables, *args)``: the same for a value (one per chain),
  differentiable in ``variables`` (the chains' random effects), with the gradient
  accumulated alongside the value and attached by ``tf.custom_gradient``.

Two kinds of rows implement them.  :class:`RowChunks` holds the rows on one device
and streams them through a ``tf.while_loop`` a chunk at a time (for large data, so
that the loop's working memory is that of one chunk), inside the fit's single XLA
program.  :class:`mixedfx.inference.distributed.ShardedRows` splits them across the
replicas of a :class:`tf.distribute.Strategy` and all-reduces the shards' sums.

``rows`` is a dict of row tensors: ``fixed_design``, ``response``,
``regression_response`` (the response less any offset), ``row_weight`` (0 for
padding rows), ``offset`` and ``trials`` (``None`` when absent), and per term ``k``
``group_index_k`` and ``z_k`` (``None`` for a random intercept).
"""

from __future__ import annotations

from dataclasses import dataclass

from mixedfx._tf import tf
from mixedfx.model.joint import ModelTensors

__all__ = ["RowChunks", "chunk_rows_for", "model_tensors"]

def chunk_rows_for(padded_rows: int, *, max_rows: int = 1 << 17) -> int:
    """Rows per chunk: all of them up to ``2 * max_rows``, else the largest power of two
    that divides ``padded_rows`` and is at most ``max_rows`` (default 131,072;
    :func:`~mixedfx.inference.fit_mcem` passes
    :attr:`~mixedfx.inference.MCEMOptions.max_rows_per_chunk`).

    Examples
    --------
    >>> from mixedfx.inference.rows import chunk_rows_for
    >>> chunk_rows_for(73728), chunk_rows_for(10 * 2**20), chunk_rows_for(9 * 2**15)
    (73728, 131072, 32768)
    >>> chunk_rows_for(1024, max_rows=256)
    256
    """
    if padded_rows <= 2 * max_rows:
        return padded_rows
    chunk = padded_rows & -padded_rows  # the largest power of two dividing it
    return min(chunk, max_rows)


def model_tensors(rows: dict, *, num_levels, keys, dims, one_hot=None, predictors=None) -> ModelTensors:
    """The row tensors of ``rows`` (a chunk or a shard) as :class:`ModelTensors`
    (``predictors``: per term the linear predictor it enters, ``None`` for all ``"cond"``).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx._tf import tf
    >>> from mixedfx.inference.rows import model_tensors
    >>> rows = {"fixed_design": tf.ones([4, 1], tf.float64), "response": tf.zeros([4], tf.float64),
    ...         "row_weight": tf.ones([4], tf.float64), "group_index_0": tf.constant([0, 1, 0, 1])}
    >>> tensors = model_tensors(rows, num_levels=(2,), keys=("g",), dims=(1,))
    >>> tensors.z, tensors.offset, tensors.num_levels
    ((None,), None, (2,))
    """
    terms = range(len(num_levels))
    return ModelTensors(
        rows["fixed_design"], rows["response"], tuple(rows[f"group_index_{k}"] for k in terms),
        tuple(rows.get(f"z_{k}") for k in terms), tuple(num_levels), tuple(keys), tuple(dims),
        offset=rows.get("offset"), trials=rows.get("trials"), row_weight=rows.get("row_weight"), one_hot=one_hot,
        prior_weight=rows.get("prior_weight"), predictors=predictors,
    )


def with_accumulated_gradient(compute, variables):
    """``compute(*variables)``'s value, differentiable in ``variables`` by the gradients
    that ``compute`` returns with it (``(value, gradients)``).

    ``value`` may have leading (chain) dimensions: element ``c`` depends on the
    ``c``-th slice of every variable only, so the gradient of ``sum_c u_c value_c``
    is ``u_c`` times the ``c``-th slice of ``gradients``.  (For a sum over shards this
    is also why TensorFlow's own gradient of an all-reduce, which all-reduces the
    upstream gradients, cannot be used: it would count every replica's.)
    """

    @tf.custom_gradient
    def attached(*xs):
        value, gradients = compute(*xs)

        def backward(upstream):
            out = []
            for g in gradients:
                trailing = tf.ones([g.shape.rank - upstream.shape.rank], tf.int32)
                out.append(tf.reshape(upstream, tf.concat([tf.shape(upstream), trailing], 0)) * g)
            return out

        return value, backward

    return attached(*variables)


def value_and_gradient(fn, rows, variables, *args):
    """``fn(rows, variables, *args)`` and its gradient in ``variables`` (a list)."""
    with tf.GradientTape() as tape:
        tape.watch(variables)
        value = fn(rows, variables, *args)
    return value, tape.gradient(value, variables)


@dataclass(frozen=True)
class RowChunks:
    """Rows on one device, summed a chunk at a time.

    Attributes
    ----------
    rows : dict
        Row tensors (see the module's docstring); ``None`` values stay ``None``.
    chunk_rows : int
        Rows per chunk; it divides the number of rows.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx._tf import tf
    >>> from mixedfx.inference.rows import RowChunks
    >>> chunks = RowChunks({"x": tf.constant(np.arange(8.0))}, chunk_rows=2)
    >>> float(chunks.sum(lambda rows, power: {"total": tf.reduce_sum(rows["x"] ** power)}, 2.0)["total"])
    140.0
    """

    rows: dict
    chunk_rows: int

    @property
    def n_chunks(self) -> int:
        """How many chunks the rows make."""
        n_rows = next(v for v in tf.nest.flatten(self.rows) if v is not None).shape[0]
        return n_rows // self.chunk_rows

    def chunk(self, i):
        """The rows of chunk ``i`` (a tensor index), same structure as :attr:`rows`."""
        if self.n_chunks == 1:
            return self.rows
        start = i * self.chunk_rows

        def take(value):
            if value is None:
                return None
            begin = tf.concat([[start], tf.zeros([value.shape.rank - 1], tf.int32)], 0)
            size = tf.concat([[self.chunk_rows], tf.shape(value)[1:]], 0)
            return tf.slice(value, begin, size)

        return {name: take(value) for name, value in self.rows.items()}

    def _accumulate(self, fn):
        """``sum_i fn(chunk_i)`` for ``fn`` returning a nest of tensors."""
        if self.n_chunks == 1:
            return fn(self.rows)
        first = fn(self.chunk(0))

        def body(i, total):
            return i + 1, tf.nest.map_structure(tf.add, total, fn(self.chunk(i)))

        _, total = tf.while_loop(lambda i, total: i < self.n_chunks, body, (tf.constant(1), first))
        return total

    def sum(self, fn, *args):
        """``fn(rows, *args)`` summed over the chunks."""
        return self._accumulate(lambda rows: fn(rows, *args))

    def sum_seeded(self, fn, seed, *args):
        """``fn(rows, chunk_seed, *args)`` summed over the chunks, ``chunk_seed`` being
        ``seed`` folded with the chunk's index (independent random draws per chunk; one
        chunk takes ``seed`` itself).

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx._tf import tf
        >>> from mixedfx.inference.rows import RowChunks
        >>> chunks = RowChunks({"x": tf.constant(np.ones(8))}, chunk_rows=4)
        >>> def noisy(rows, seed):
        ...     return tf.reduce_sum(rows["x"] * tf.random.stateless_uniform([4], seed, dtype=tf.float64))
        >>> bool(0.0 < float(chunks.sum_seeded(noisy, tf.constant([1, 2]))) < 8.0)
        True
        """
        if self.n_chunks == 1:
            return fn(self.rows, seed, *args)

        def chunk_sum(i):
            return fn(self.chunk(i), tf.random.experimental.stateless_fold_in(seed, i), *args)

        def body(i, total):
            return i + 1, tf.nest.map_structure(tf.add, total, chunk_sum(i))

        _, total = tf.while_loop(lambda i, total: i < self.n_chunks, body, (tf.constant(1), chunk_sum(0)))
        return total

    def sum_with_gradient(self, fn, variables, *args):
        """``fn(rows, variables, *args)`` summed over the chunks, differentiable in
        ``variables``; the chunks' intermediates are never kept."""
        variables = list(variables)
        if self.n_chunks == 1:
            return fn(self.rows, variables, *args)
        return with_accumulated_gradient(
            lambda *xs: self._accumulate(lambda rows: value_and_gradient(fn, rows, list(xs), *args)), variables)
