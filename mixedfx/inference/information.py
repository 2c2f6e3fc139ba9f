"""The observed information of a GLMM's joint density, from per-row second derivatives.

:func:`~mixedfx.inference.layout.wald_covariance` needs minus the Hessian of

    log p(y, b) = sum_i f_i(eta_i, theta) + log p(b)

in the fixed effects ``beta``, the family's unconstrained parameters ``theta`` and the
random effects ``b``.  Each row's log density depends on ``v = (beta, theta, b)`` only
through its linear predictors ``eta_i`` (the conditional one, and one per linear
predictor of the family's own that has random terms, glmmTMB's ``zi``) and ``theta``,
so the Hessian is ``sum_i J_i' H_i J_i`` with ``H_i`` the small Hessian of ``f_i`` in
``(eta_i, theta)`` and ``J_i`` the row's sparse design (``x_i``, and ``z_i`` at the
row's levels).  Automatic differentiation gives every row's ``H_i`` in
``channels + n_theta`` reverse passes of the summed gradient (one per predictor and per
family parameter), where the Hessian in ``v`` took one per entry of ``v``: a thousand
for a million-row zero-inflated Poisson model with 1,100 random effects.  The blocks are
then sums over rows (``numpy.bincount`` by level).
"""

from __future__ import annotations

import numpy as np

from mixedfx._tf import tf
from mixedfx.model import term_z

__all__ = ["observed_information"]

#: Rows per slice of the per-row second derivatives (each a few vectors of the slice's length).
INFORMATION_SLICE_ROWS = 2**18


def observed_information(model, params, effects, *, dense: bool) -> np.ndarray:
    """Minus the Hessian of the joint log density at ``params`` and ``effects`` (per term
    ``(num_levels, dim)``), in ``(beta, theta, b)`` (``b`` term by term, level-major) when
    ``dense``, else in ``(beta, theta)`` with ``b`` held at ``effects``.

    Examples
    --------
    A Poisson intercept and one random intercept of two levels: the intercept's
    information is the sum of the means, each level's its rows' means plus the prior's
    precision ``1 / sd^2``:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import MixedModel, ModelParameters, Poisson
    >>> term = RandomTermData("g", np.array([0, 0, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Poisson(), np.ones((3, 1)), np.array([1.0, 2.0, 0.0]), (term,), ("Intercept",))
    >>> params = ModelParameters(np.array([0.0]), (np.array([[0.5]]),), {})
    >>> info = observed_information(model, params, [np.zeros((2, 1))], dense=True)
    >>> (info + 0.0).round(6).tolist()  # means exp(0) = 1; prior precision 4
    [[3.0, 2.0, 1.0], [2.0, 6.0, 0.0], [1.0, 0.0, 5.0]]
    """
    family, terms = model.family, model.random_terms
    p = model.fixed_design.shape[1]
    free = np.asarray(family.free_from_parameters(params.family_params), dtype=np.float64)
    tags = model.predictors or ("cond",) * len(terms)
    channels = ("cond",) + tuple(sorted(set(tags) - {"cond"}))
    zs = [term_z(term, model.n_obs) for term in terms]  # once: a slice takes its rows of them
    etas = _linear_predictors(model, params, effects, channels, tags, zs)
    offsets = np.cumsum([p + free.size] + [b.size for b in effects]) if dense else None
    size = offsets[-1] if dense else p + free.size
    # the blocks on the diagonal (filled whole), and those above it (mirrored at the end)
    hessian = _Hessian(np.zeros((size, size)), np.zeros((size, size)))
    pieces = _row_pieces_function(model, channels, free.size)
    n_rows = model.n_obs
    for start in range(0, n_rows, INFORMATION_SLICE_ROWS):
        stop = min(start + INFORMATION_SLICE_ROWS, n_rows)
        on_eta, on_free = (t.numpy() for t in pieces(tf.constant(etas[:, start:stop]), tf.constant(free),
                                                     tf.constant(start), tf.constant(stop)))
        rows = _RowBlock(model, zs, start, stop, on_eta, channels, tags)
        _add_fixed_and_family(hessian, rows, on_free, p, free.size)
        if dense:
            _add_random(hessian, rows, offsets, p, free.size)
    if dense:
        for k, L in enumerate(params.random_scale_tril):
            block = slice(offsets[k], offsets[k + 1])
            hessian.diagonal[block, block] -= np.kron(np.eye(terms[k].num_levels), np.linalg.inv(L @ L.T))
    full = hessian.diagonal + hessian.above + hessian.above.T
    return -0.5 * (full + full.T)


class _Hessian:
    """The Hessian being summed: ``diagonal`` its blocks on the diagonal, ``above`` those above it."""

    def __init__(self, diagonal, above):
        self.diagonal, self.above = diagonal, above


def _linear_predictors(model, params, effects, channels, tags, zs) -> np.ndarray:
    """``(channels, n_rows)``: the conditional linear predictor (offset and every ``cond``
    term included), then per own predictor the random terms' part of it."""
    n = model.n_obs
    etas = np.zeros((len(channels), n))
    etas[0] = model.fixed_design @ np.asarray(params.fixed_effects, dtype=np.float64)
    if model.offset is not None:
        etas[0] += model.offset
    for term, z, b, tag in zip(model.random_terms, zs, effects, tags):
        etas[channels.index(tag)] += np.sum(z * np.asarray(b)[term.group_index], axis=1)
    return etas


def _row_pieces_function(model, channels, n_free):
    """A compiled function of one slice of rows: the Hessian of the summed log density in
    the slice's linear predictors and ``theta``, as ``(on_eta, on_free)``: ``on_eta[a, c, i]``
    the derivative of row ``i`` in channel ``c`` and in ``a`` (a channel, or ``theta_k`` at
    ``len(channels) + k``), ``on_free[a]`` the summed derivatives in ``a`` and ``theta``."""
    family = model.family
    response, rows, weights = (None if a is None else tf.constant(a, tf.float64)
                               for a in (model.response, model.family_rows, model.weights))
    zero = tf.UnconnectedGradients.ZERO

    @tf.function
    def pieces(etas, free, start, stop):
        def cut(tensor):
            return None if tensor is None else tensor[start:stop]

        with tf.GradientTape(persistent=True) as outer:
            outer.watch([etas, free])
            with tf.GradientTape() as inner:
                inner.watch([etas, free])
                natural = family.constrain(free)
                own = {tag: etas[c] for c, tag in enumerate(channels) if c}
                natural = family.with_predictor_offsets(natural, own) if own else natural
                total = tf.reduce_sum(family.weighted_log_prob(etas[0], natural, cut(response), trials=cut(rows),
                                                               weights=cut(weights)))
            on_eta, on_free = inner.gradient(total, [etas, free], unconnected_gradients=zero)
            sums = [tf.reduce_sum(on_eta[c]) for c in range(len(channels))] + [on_free[k] for k in range(n_free)]
        second = [outer.gradient(s, [etas, free], unconnected_gradients=zero) for s in sums]
        del outer
        return tf.stack([s[0] for s in second]), tf.stack([s[1] for s in second])

    return pieces


class _RowBlock:
    """One slice of rows: its fixed design, each term's levels and ``z``, and the per-row
    second derivatives ``w(c, d)`` (in two channels) and ``u(c, k)`` (in a channel and ``theta_k``)."""

    def __init__(self, model, zs, start, stop, on_eta, channels, tags):
        self.X = model.fixed_design[start:stop]
        self.levels = [term.group_index[start:stop] for term in model.random_terms]
        self.z = [z[start:stop] for z in zs]
        self.sizes = [(term.num_levels, term.dim) for term in model.random_terms]
        self.channel = [channels.index(tag) for tag in tags]
        self.on_eta, self.n_channels = on_eta, len(channels)

    def w(self, c, d):
        return self.on_eta[c, d]

    def u(self, c, k):
        return self.on_eta[self.n_channels + k, c]


def _add_fixed_and_family(hessian, rows, on_free, p, n_free):
    """The ``(beta, theta)`` blocks of one slice."""
    X, c = rows.X, rows.n_channels
    hessian.diagonal[:p, :p] += X.T @ (rows.w(0, 0)[:, None] * X)
    for k in range(n_free):
        hessian.above[:p, p + k] += X.T @ rows.u(0, k)
    hessian.diagonal[p:p + n_free, p:p + n_free] += on_free[c:, :]


def _add_random(hessian, rows, offsets, p, n_free):
    """The blocks of one slice that involve the random effects: with ``beta``, ``theta``
    and each other, summed by level (``bincount``)."""
    X = rows.X
    for k, ((q, dim), levels, z, c) in enumerate(zip(rows.sizes, rows.levels, rows.z, rows.channel)):
        o = offsets[k]
        for e in range(dim):
            entries = slice(o + e, o + q * dim, dim)  # coefficient e of every level
            for j in range(p):
                hessian.above[j, entries] += np.bincount(levels, rows.w(0, c) * z[:, e] * X[:, j], minlength=q)
            for f in range(n_free):
                hessian.above[p + f, entries] += np.bincount(levels, rows.u(c, f) * z[:, e], minlength=q)
        for m in range(k, len(rows.sizes)):
            _add_random_pair(hessian, rows, k, m, offsets)


def _add_random_pair(hessian, rows, k, m, offsets):
    """Terms ``k`` and ``m >= k``'s block of one slice: per level pair (one level per row)."""
    (qk, dk), (qm, dm) = rows.sizes[k], rows.sizes[m]
    weight = rows.w(rows.channel[k], rows.channel[m])
    pair = rows.levels[k].astype(np.int64) * qm + rows.levels[m]
    for e in range(dk):
        for f in range(dm):
            values = weight * rows.z[k][:, e] * rows.z[m][:, f]
            row_entries = np.arange(qk) * dk + offsets[k] + e
            column_entries = np.arange(qm) * dm + offsets[m] + f
            if k == m:  # one level per row: only a level with itself
                hessian.diagonal[row_entries, column_entries] += np.bincount(rows.levels[k], values, minlength=qk)
            else:
                hessian.above[np.ix_(row_entries, column_entries)] += np.bincount(
                    pair, values, minlength=qk * qm).reshape(qk, qm)
