"""Sums over the rows, a chunk of rows at a time.

Inside the compiled loop every per-row quantity (the linear predictor of each chain,
its gradient, the M-step's regressors) is an intermediate of ``rows x chains`` (or
``rows x chains x coefficients``) numbers.  For large data :class:`RowChunks` streams
the rows through a ``tf.while_loop`` in chunks and adds up the chunks' sums, so the
working memory of the loop is that of one chunk, and only the data themselves grow
with the rows.  The log-likelihood and its gradient are accumulated together
(:meth:`RowChunks.value_and_gradient`), with the gradient handed to automatic
differentiation through ``tf.custom_gradient``, so HMC sees an ordinary
differentiable target.  With one chunk, everything runs on the whole rows as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixedfx._tf import tf

__all__ = ["RowChunks", "chunk_rows_for"]

#: Data with more (padded) rows than this are streamed in chunks.
MAX_ROWS_PER_CHUNK = 1 << 17


def chunk_rows_for(padded_rows: int, *, max_rows: int | None = None) -> int:
    """Rows per chunk: all of them up to ``2 * max_rows``, else the largest power of two
    that divides ``padded_rows`` and is at most ``max_rows`` (default
    :data:`MAX_ROWS_PER_CHUNK`).

    Examples
    --------
    >>> from mixedfx.inference.rows import chunk_rows_for
    >>> chunk_rows_for(73728), chunk_rows_for(10 * 2**20), chunk_rows_for(9 * 2**15)
    (73728, 131072, 32768)
    """
    max_rows = MAX_ROWS_PER_CHUNK if max_rows is None else max_rows
    if padded_rows <= 2 * max_rows:
        return padded_rows
    chunk = padded_rows & -padded_rows  # the largest power of two dividing it
    return min(chunk, max_rows)


@dataclass(frozen=True)
class RowChunks:
    """Per-row tensors, and sums of functions of them a chunk at a time.

    Attributes
    ----------
    rows : dict
        Tensors whose first dimension is the rows (nested tuples allowed, ``None``
        leaves kept as they are).
    chunk_rows : int
        Rows per chunk; it divides the number of rows.
    n_chunks : int

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx._tf import tf
    >>> from mixedfx.inference.rows import RowChunks
    >>> chunks = RowChunks({"x": tf.constant(np.arange(8.0))}, chunk_rows=2, n_chunks=4)
    >>> float(chunks.sum(lambda rows: {"total": tf.reduce_sum(rows["x"] ** 2)})["total"])
    140.0
    """

    rows: dict
    chunk_rows: int
    n_chunks: int

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

        return tf.nest.map_structure(take, self.rows)

    def sum(self, fn):
        """``sum_chunks fn(chunk_rows)`` for a function returning a structure of tensors."""
        if self.n_chunks == 1:
            return fn(self.rows)
        first = fn(self.chunk(0))

        def body(i, total):
            return i + 1, tf.nest.map_structure(tf.add, total, fn(self.chunk(i)))

        _, total = tf.while_loop(lambda i, total: i < self.n_chunks, body, (tf.constant(1), first))
        return total

    def value_and_gradient(self, fn, variables):
        """``sum_chunks fn(chunk, *variables)`` with its gradient in ``variables``.

        ``fn`` returns a tensor (e.g. one value per chain); the result is differentiable
        in ``variables``: its gradient, accumulated chunk by chunk, is attached with
        ``tf.custom_gradient`` (the chunks' intermediates are never kept).
        """
        variables = list(variables)
        if self.n_chunks == 1:
            return fn(self.rows, *variables)

        @tf.custom_gradient
        def accumulated(*values):
            def one(i):
                with tf.GradientTape() as tape:
                    tape.watch(values)
                    value = fn(self.chunk(i), *values)
                # each element of value depends on its own slice (e.g. a chain's state),
                # so the gradient of the sum is the stack of the elements' gradients
                return value, tape.gradient(value, values)

            first_value, first_gradient = one(0)

            def body(i, value, gradient):
                chunk_value, chunk_gradient = one(i)
                return i + 1, value + chunk_value, [a + b for a, b in zip(gradient, chunk_gradient)]

            _, value, gradient = tf.while_loop(lambda i, *_: i < self.n_chunks, body,
                                               (tf.constant(1), first_value, list(first_gradient)))

            def backward(upstream):
                extra = len(gradient[0].shape) - len(upstream.shape)
                scale = tf.reshape(upstream, tf.concat([tf.shape(upstream), tf.ones([extra], tf.int32)], 0))
                return [scale * g for g in gradient]

            return value, backward

        return accumulated(*variables)
