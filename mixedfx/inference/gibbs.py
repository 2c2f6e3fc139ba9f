"""The E-step by blocked Gibbs sampling, where the family allows it.

When the response given the linear predictor is normal with a known precision per
row (the family's :meth:`~mixedfx.model.Family.gaussian_rows` says so; the Gaussian
family, with or without precision weights or a dispersion model), the random
effects of one term given everything else are Gaussian and independent across the
term's levels: level ``l``'s coefficients have precision

``P_l = sum_{rows i of l} w_i z_i z_i' + Sigma^-1``

and mean ``P_l^-1 sum_{rows i of l} w_i z_i r_i``, with ``w_i`` the row's precision
and ``r_i`` its working response less the linear predictor without this term.  One
sweep draws every term in turn from that conditional, exactly: one pass over the
rows per term (segment sums by level) and a batched ``dim x dim`` Cholesky factor,
against the dozens of gradient passes of an HMC transition.

:class:`BlockedGibbs` is a :class:`tfp.mcmc.TransitionKernel`, so the E-step stays a
swappable MCMC kernel (``MCEMOptions(e_step=...)``), with HMC
(:func:`~mixedfx.inference.estep.hmc_e_step`) the generic one.

* Nested random intercepts are swept in the centred coordinates of
  :class:`~mixedfx.inference.estep.Centering` (the same as HMC's), where a
  department's coordinate and its instructors' are nearly independent: a term with a
  centred child has no rows of its own (the data reach it through the child) and is
  drawn from its own prior and its children's; a term with a parent has its parent's
  coordinate as its prior mean.
* REML integrates the fixed effects out under a flat prior: each sweep first draws
  them from their Gaussian conditional given the random effects (data augmentation),
  then the random effects given them; the random effects' stationary distribution is
  the REML target.
"""

from __future__ import annotations

from typing import NamedTuple

from mixedfx._tf import tf, tfp
from mixedfx.inference.estep import Centering, EStepResult
from mixedfx.model.joint import family_inputs

__all__ = ["BlockedGibbs", "BlockedGibbsResults", "gibbs_e_step", "gibbs_row_functions", "prior_precision_matrices",
           "term_sums"]


class BlockedGibbsResults(NamedTuple):
    """The kernel's results: how many sweeps it has made (Gibbs keeps no other state)."""

    sweeps: tf.Tensor


def prior_precision_matrices(random_scale_tril):
    """``Sigma^-1 = L^-T L^-1`` per term, ``[dim, dim]``, from each term's Cholesky factor."""
    out = []
    for scale_tril in random_scale_tril:
        inverse = tf.linalg.triangular_solve(scale_tril, tf.eye(tf.shape(scale_tril)[0], dtype=scale_tril.dtype))
        out.append(tf.linalg.matmul(inverse, inverse, transpose_a=True))
    return out


def gibbs_row_functions(family, tensors_of, num_levels):
    """The two sums over rows the kernel asks for, as functions of a chunk of rows
    (for :meth:`~mixedfx.inference.rows.RowChunks.sum`).

    ``block(rows, effects, own, fixed_effects, free, term)``: the data's share of term
    ``term``'s conditional, ``(sum w z z', sum w z r)`` per level, ``[..., levels, dim,
    dim]`` and ``[..., levels, dim]``, with ``r`` the working response less the linear
    predictor of ``effects`` (model coordinates) plus the term's own part at ``own``
    (its coordinates, whose sum down a centred chain is what the rows see).

    ``fixed(rows, effects, free)``: ``(sum w x x', sum w x (y_w - eta_random))`` for the
    fixed effects' conditional (REML), ``eta_random`` the linear predictor without
    ``X beta``.
    """

    def rows_of(tensors, effects, fixed_effects, free):
        eta, params = family_inputs(tensors, effects, fixed_effects=fixed_effects, family=family,
                                    family_params=family.constrain(free))
        precision, working = family.gaussian_rows(eta, params, tensors.response, trials=tensors.trials,
                                                  weights=tensors.prior_weight)
        if tensors.row_weight is not None:
            precision = precision * tensors.row_weight
        return eta, precision, working

    def block(row_data, effects, own, fixed_effects, free, term):
        tensors = tensors_of(row_data)
        eta, precision, working = rows_of(tensors, effects, fixed_effects, free)
        return term_sums(tensors, term, num_levels[term], own, eta=eta, precision=precision,
                         precision_working=precision * working)

    def fixed(row_data, effects, free):
        tensors = tensors_of(row_data)
        X = tensors.fixed_design
        eta, precision, working = rows_of(tensors, effects, tf.zeros_like(X[0]), free)
        weighted = precision[..., None] * X  # [..., n, p]
        return (tf.einsum("...np,nr->...pr", weighted, X),
                tf.einsum("...np,...n->...p", weighted, working - eta))

    return block, fixed


def term_sums(tensors, term, num_levels, own, *, eta, precision, precision_working):
    """Per level of term ``term``, ``(sum w z z', sum z (w r))`` over the rows of
    ``tensors``, ``[..., levels, dim, dim]`` and ``[..., levels, dim]``: ``w`` the rows'
    precision (``[..., n]``), ``w r = precision_working - w (eta - own part)`` with
    ``precision_working`` the row's linear coefficient in ``eta`` (``w y`` for a
    Gaussian row, ``kappa`` for a Polya-Gamma augmented one) and ``own`` the term's
    coordinates, whose part of ``eta`` is added back."""
    index, z = tensors.group_index[term], tensors.z[term]
    z = tf.ones_like(tensors.fixed_design[:, :1]) if z is None else z  # [n, dim]
    own_rows = tf.reduce_sum(tf.gather(own, index, axis=-2) * z, axis=-1)  # [..., n]
    weighted = precision[..., None] * z  # [..., n, dim]
    # rows first for the segment sums: [n, ..., dim]
    rows_first = tf.experimental.numpy.moveaxis
    outer = rows_first(weighted[..., :, None] * z[:, None, :], -3, 0)
    linear = rows_first(z * (precision_working - precision * (eta - own_rows))[..., None], -2, 0)
    return (rows_first(tf.math.unsorted_segment_sum(outer, index, num_levels), 0, -3),
            rows_first(tf.math.unsorted_segment_sum(linear, index, num_levels), 0, -2))


class BlockedGibbs(tfp.mcmc.TransitionKernel):
    """Blocked Gibbs sampling of the random effects of a conditionally Gaussian model.

    Each step sweeps the terms in order; term ``k``'s coordinates (per chain and
    level, ``[n_chains, levels, dim]``) are drawn exactly from their Gaussian
    conditional given the other terms, the fixed effects and the data.  The data's
    share of that conditional comes from ``block_sums`` (segment sums over the
    rows), the priors' from ``prior_precision`` and ``centering``.

    Parameters
    ----------
    block_sums : callable
        ``block_sums(term, effects, own, fixed_effects)`` returns ``(precision,
        linear)``, the sums over rows ``sum w z z'`` and ``sum w z r`` per level of
        ``term`` (see :func:`gibbs_row_functions`); ``effects`` are in model
        coordinates, ``own`` is the term's sampler coordinates.
    prior_precision : list of Tensor
        ``Sigma_k^-1`` per term, ``[dim, dim]``.
    fixed_effects : Tensor
        ``[p]``, or ``[n_chains, p]``.
    fixed_effects_draw : callable, optional
        ``fixed_effects_draw(effects, seed)``: fixed effects drawn given the random
        effects (model coordinates) at the start of each sweep (REML's data
        augmentation); by default ``fixed_effects`` throughout.
    centering : Centering, optional
        Sampler coordinates of nested random intercepts.
    parent_level : tuple of Tensor, optional
        ``centering``'s parent-level maps.
    num_levels : tuple of int
        Levels per term (padded).
    level_weight : tuple of (Tensor or None), optional
        Per term, the 0/1 mask of real levels (children of a padded level do not count).
    name : str, optional

    Examples
    --------
    One intercept per level of a factor with two levels, two rows each, ``sigma = 1``
    and a prior sd of 1: each level's conditional is ``N(sum r / 3, 1 / 3)``.

    >>> import numpy as np
    >>> import tensorflow as tf
    >>> import tensorflow_probability as tfp
    >>> from mixedfx.inference.gibbs import BlockedGibbs
    >>> index = tf.constant([0, 0, 1, 1]); y = tf.constant([1.0, 2.0, 4.0, 5.0], tf.float64)
    >>> def block_sums(term, effects, own, fixed_effects):  # sigma = 1: w = 1, r = y
    ...     ones = tf.ones([2, 4], tf.float64)  # [chains, rows]
    ...     rows_first = tf.transpose(ones * y)
    ...     return (tf.ones([2, 2, 1, 1], tf.float64) * 2.0,
    ...             tf.transpose(tf.math.unsorted_segment_sum(rows_first, index, 2))[..., None])
    >>> kernel = BlockedGibbs(block_sums, prior_precision=[tf.eye(1, dtype=tf.float64)],
    ...                       fixed_effects=tf.zeros([1], tf.float64), num_levels=(2,))
    >>> @tf.function  # one graph for the 4000 sweeps (eagerly, each sweep would run op by op)
    ... def sample():
    ...     return tfp.mcmc.sample_chain(4000, current_state=[tf.zeros([2, 2, 1], tf.float64)], kernel=kernel,
    ...                                  trace_fn=None, seed=(1, 2))[0]
    >>> draws = sample()
    >>> np.round(draws.numpy().mean(axis=(0, 1))[:, 0], 1).tolist(), round(float(draws.numpy().var()), 1)
    ([1.0, 3.0], 1.3)
    >>> kernel.is_calibrated
    True
    """

    def __init__(self, block_sums, *, prior_precision, fixed_effects, num_levels, fixed_effects_draw=None,
                 centering=None, parent_level=None, level_weight=None, name=None):
        self._parameters = dict(
            block_sums=block_sums, prior_precision=prior_precision, fixed_effects=fixed_effects,
            num_levels=tuple(num_levels), fixed_effects_draw=fixed_effects_draw,
            centering=centering or Centering.none(len(prior_precision)),
            parent_level=parent_level or (None,) * len(prior_precision),
            level_weight=level_weight or (None,) * len(prior_precision), name=name)

    @property
    def parameters(self):
        """Constructor arguments, as TFP's kernels expose them."""
        return self._parameters

    @property
    def is_calibrated(self):
        """Exact draws from each block's conditional: no Metropolis correction needed."""
        return True

    def bootstrap_results(self, init_state):
        """No sweeps yet."""
        return BlockedGibbsResults(sweeps=tf.constant(0, tf.int32))

    def one_step(self, current_state, previous_kernel_results, seed=None):
        """One sweep: every term drawn from its conditional, in order."""
        p = self._parameters
        state = list(current_state)
        seeds = tfp.random.split_seed(seed, n=len(state) + 1)
        fixed_effects = p["fixed_effects"]
        if p["fixed_effects_draw"] is not None:
            fixed_effects = p["fixed_effects_draw"](self.to_model(state), seeds[-1])
        for k in range(len(state)):
            augmentation_seed, noise_seed = self.term_seeds(seeds[k])
            mean, chol = self.block_conditional(k, state, fixed_effects, seed=augmentation_seed)
            noise = tf.random.stateless_normal(tf.shape(mean), noise_seed, dtype=mean.dtype)
            # L^-T noise has covariance (L L')^-1 = P^-1
            state[k] = mean + tf.linalg.triangular_solve(chol, noise[..., None], lower=True, adjoint=True)[..., 0]
        return state, BlockedGibbsResults(sweeps=previous_kernel_results.sweeps + 1)

    def term_seeds(self, seed):
        """``(augmentation seed, noise seed)`` of one term's draw: no augmentation here
        (:class:`~mixedfx.inference.polya_gamma.PolyaGammaGibbs` has one)."""
        return None, seed

    def to_model(self, state):
        """Sampler coordinates to model coordinates (:meth:`Centering.to_model`)."""
        return self._parameters["centering"].to_model(list(state), self._parameters["parent_level"])

    def block_conditional(self, term, state, fixed_effects, seed=None):
        """Term ``term``'s conditional given the rest of ``state`` (sampler coordinates):
        ``(mean, chol)``, its mean ``[..., levels, dim]`` and the Cholesky factor of its
        precision ``[..., levels, dim, dim]`` (``seed``: the augmentation's, if any)."""
        precision, linear = self.conditional_precision(term, state, fixed_effects, seed=seed)
        chol = tf.linalg.cholesky(precision)
        return tf.linalg.cholesky_solve(chol, linear[..., None])[..., 0], chol

    def conditional_precision(self, term, state, fixed_effects, seed=None):
        """``(P, h)`` of term ``term``'s conditional, ``log p = -x'Px/2 + h'x + const``
        per level: the rows' share (a term at the end of its centred chain, or not
        centred), its own prior's (centred on its parent's coordinate), and its
        centred children's priors'.  With an augmentation ``seed``, ``block_sums``
        takes it last (the rows' auxiliary variables are drawn with it)."""
        p = self._parameters
        centering, parent_level, prior = p["centering"], p["parent_level"], p["prior_precision"]
        own = state[term]
        if centering.children[term] is None:
            extra = () if seed is None else (seed,)
            precision, linear = p["block_sums"](term, self.to_model(state), own, fixed_effects, *extra)
        else:  # the rows see only the chain's last term
            precision, linear = tf.zeros_like(own[..., None]) * own[..., None, :], tf.zeros_like(own)
        precision = precision + prior[term]
        parent = centering.parent[term]
        if parent is not None:
            prior_mean = tf.gather(state[parent], parent_level[term], axis=-2)
            linear = linear + tf.linalg.matvec(prior[term], prior_mean)
        child = centering.children[term]
        if child is not None:
            weight = p["level_weight"][child]
            index = parent_level[child]
            values = state[child] if weight is None else state[child] * weight[:, None]
            count = tf.ones_like(index, own.dtype) if weight is None else weight
            count = tf.math.unsorted_segment_sum(count, index, p["num_levels"][term])
            total = tf.math.unsorted_segment_sum(tf.experimental.numpy.moveaxis(values, -2, 0), index,
                                                 p["num_levels"][term])
            precision = precision + count[:, None, None] * prior[child]
            linear = linear + tf.linalg.matvec(prior[child], tf.experimental.numpy.moveaxis(total, 0, -2))
        return precision, linear


def gibbs_e_step(kernel: BlockedGibbs, *, current_state, num_draws: int, num_burnin, trace_fn, seed, step_size,
                 statistics_coordinates=None) -> EStepResult:
    """One E-step by :class:`BlockedGibbs`: ``num_burnin`` sweeps, then ``num_draws`` kept.

    The same contract as :func:`~mixedfx.inference.estep.hmc_e_step`: ``current_state``,
    the draws and ``trace_fn`` in model coordinates, the kernel in its sampler
    coordinates; ``step_size`` passes through (Gibbs has none), the acceptance rate is
    one and there are no divergences.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from mixedfx.inference.gibbs import BlockedGibbs, gibbs_e_step
    >>> def block_sums(term, effects, own, fixed_effects):  # no rows: the prior alone
    ...     return tf.zeros([2, 3, 1, 1], tf.float64), tf.zeros([2, 3, 1], tf.float64)
    >>> kernel = BlockedGibbs(block_sums, prior_precision=[tf.eye(1, dtype=tf.float64)],
    ...                       fixed_effects=tf.zeros([1], tf.float64), num_levels=(3,))
    >>> result = gibbs_e_step(kernel, current_state=[tf.zeros([2, 3, 1], tf.float64)], num_draws=4, num_burnin=2,
    ...                       trace_fn=lambda e: {"m": tf.reduce_mean(e[0], axis=[-2, -1])}, seed=tf.constant([1, 2]),
    ...                       step_size=tf.constant(0.5, tf.float64))
    >>> result.draws[0].shape.as_list(), float(result.acceptance_rate), float(result.divergences)
    ([4, 2, 3, 1], 1.0, 0.0)
    """
    centering, parent_level = kernel.parameters["centering"], kernel.parameters["parent_level"]

    def trace(state, _):
        coordinates = state if statistics_coordinates is None else statistics_coordinates(state)
        return trace_fn(kernel.to_model(coordinates))

    draws, statistics = tfp.mcmc.sample_chain(
        num_results=num_draws, current_state=centering.to_sampler(list(current_state), parent_level), kernel=kernel,
        num_burnin_steps=num_burnin, trace_fn=trace, seed=seed)
    draws = kernel.to_model(draws)
    dtype = step_size.dtype
    return EStepResult(
        statistics=tf.nest.map_structure(lambda s: tf.reduce_mean(s, axis=[0, 1]), statistics),
        effects_sum=[tf.reduce_sum(d, axis=[0, 1]) for d in draws],
        effects_outer_sum=[tf.einsum("scqa,scqb->qab", d, d) for d in draws],
        draws=draws,
        final_state=[d[-1] for d in draws],
        step_size=step_size,
        acceptance_rate=tf.constant(1.0, dtype),
        divergences=tf.constant(0.0, dtype),
    )
