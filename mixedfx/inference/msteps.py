"""The two regression strategies of the M-step, behind one small interface.

Every M-step has a regression part, which fits the fixed effects, the expansion
matrices ``C_k`` and the family's own parameters, and a covariance part that is the
same for every family (:func:`~mixedfx.inference.mstep.covariance_update`).  The
regression part comes in two strategies:

* :class:`GaussianMStep`: closed-form least squares from sufficient statistics that
  the E-step accumulates at every kept draw (families whose
  ``conjugate_gaussian`` is true);
* :class:`NewtonMStep`: Newton's method on the expected log-likelihood over the
  E-step's draws (every other family).

Both answer the same two questions, so the compiled loop never asks which it runs:

* ``statistics(row_sums, effects, *, fixed_effects, free, data)``: the per-chain
  statistics of one draw that the E-step averages, with ``log_likelihood`` among them;
* ``update(statistics, *, row_sums, draws, fixed_effects, free, data)``: the new
  fixed effects, ``C_k`` per term and the family's unconstrained parameters.

``row_sums`` is the rows object of :mod:`mixedfx.inference.rows` (``sum(fn, *args)``),
``data`` the per-fit tensors of the compiled call (``xtx``, ``xty``, ``yty``,
``xtx_inv``, ``n_obs``).  :func:`m_step_for` chooses the strategy by asking the
family.
"""

from __future__ import annotations

import numpy as np

from mixedfx._tf import tf
from mixedfx.inference.mstep import (
    gaussian_regression,
    gaussian_row_statistics,
    glm_regression,
    newton_rows,
    reml_statistics,
)
from mixedfx.model.covariance import structure_for

__all__ = ["GaussianMStep", "NewtonMStep", "m_step_for"]


class GaussianMStep:
    """The closed-form regression of the M-step (least squares, ML or REML).

    Parameters
    ----------
    family : Family
        A family whose ``conjugate_gaussian`` is true (its only parameter ``sigma``).
    log_likelihood : callable
        ``log_likelihood(rows, effects, fixed_effects, free)``, a sum over rows per chain.
    tensors_of : callable
        ``tensors_of(rows)``: the rows (a chunk or a shard) as
        :class:`~mixedfx.model.ModelTensors`.
    dims : tuple of int
        Coefficients per random term.
    reml : bool, default False

    Examples
    --------
    The compiled loop builds one per static configuration (see
    :func:`m_step_for`); its statistics are sums over rows:

    >>> import numpy as np
    >>> from mixedfx._tf import tf
    >>> from mixedfx.inference.msteps import GaussianMStep
    >>> from mixedfx.inference.rows import RowChunks, model_tensors
    >>> from mixedfx.model import Gaussian
    >>> rows = {"fixed_design": tf.ones([4, 1], tf.float64), "response": tf.constant([1.0, 2.0, 3.0, 4.0], tf.float64),
    ...         "regression_response": tf.constant([1.0, 2.0, 3.0, 4.0], tf.float64),
    ...         "row_weight": tf.ones([4], tf.float64), "group_index_0": tf.constant([0, 1, 0, 1])}
    >>> def tensors_of(r):
    ...     return model_tensors(r, num_levels=(2,), keys=("g",), dims=(1,))
    >>> step = GaussianMStep(Gaussian(), log_likelihood=lambda r, b, beta, u: tf.zeros([1], tf.float64),
    ...                      tensors_of=tensors_of, dims=(1,))
    >>> effects = [tf.constant([[[0.5], [-0.5]]], tf.float64)]  # one chain, two levels
    >>> stats = step.statistics(RowChunks(rows, chunk_rows=4), effects, fixed_effects=tf.zeros([1], tf.float64),
    ...                         free=tf.zeros([1], tf.float64), data={})
    >>> sorted(stats), stats["pty"].numpy().tolist()  # P'y: sum of b[g] * y
    (['log_likelihood', 'ptp', 'pty', 'xtp'], [[-1.0]])
    """

    def __init__(self, family, *, log_likelihood, tensors_of, dims, reml=False, structures=()):
        self.family = family
        self.dims = tuple(dims)
        self.reml = reml
        self.basis = expansion_basis(self.dims, structures)

        def row_statistics(rows, effects, fixed_effects, free):
            """Per chain, X'P, P'P, P'y and the log-likelihood of a chunk of rows."""
            tensors = tensors_of(rows)
            out = gaussian_row_statistics(effects, fixed_design=tensors.fixed_design,
                                          response=rows["regression_response"], group_index=tensors.group_index,
                                          z=tensors.z, row_weight=tensors.row_weight)
            out["log_likelihood"] = log_likelihood(rows, effects, fixed_effects, free)
            return out

        # made once, so that a sharded fit compiles it once
        self._row_statistics = row_statistics

    def statistics(self, row_sums, effects, *, fixed_effects, free, data):
        """The least-squares statistics of one draw (and, for REML, ``reml_ptu`` and
        ``reml_utu``; see :func:`~mixedfx.inference.mstep.reml_statistics`)."""
        stats = row_sums.sum(self._row_statistics, effects, fixed_effects, free)
        if self.reml:
            stats.update(reml_statistics(stats, dims=self.dims, fixed_xtx_inv=data["xtx_inv"]))
        return stats

    def update(self, statistics, *, row_sums, draws, fixed_effects, free, data):
        """``(fixed_effects, scale_matrix, free)`` in closed form
        (:func:`~mixedfx.inference.mstep.gaussian_regression`); ``row_sums``, ``draws``
        and ``fixed_effects`` are not needed."""
        reml = None
        if self.reml:
            reml = {"xtx_inv": data["xtx_inv"], "sigma": tf.reshape(self.family.constrain(free)["sigma"], [])}
        regression_beta, scale_matrix, sigma = gaussian_regression(
            statistics, fixed_xtx=data["xtx"], fixed_xty=data["xty"], ols_beta=data["ols_beta"],
            ols_rss=data["ols_rss"], n_obs=data["n_obs"],
            dims=self.dims, reml=reml, basis=self.basis,
        )
        return regression_beta, scale_matrix, tf.math.log(sigma)[None]


class NewtonMStep:
    """The regression of the M-step by Newton's method, for any family.

    Parameters
    ----------
    family : Family
    log_likelihood : callable
        ``log_likelihood(rows, effects, fixed_effects, free)``, a sum over rows per chain.
    dims : tuple of int
        Coefficients per random term.

    Examples
    --------
    >>> from mixedfx.inference.msteps import NewtonMStep
    >>> from mixedfx.model import Poisson
    >>> step = NewtonMStep(Poisson(), log_likelihood=None, dims=(1,))
    >>> step.family.name, step.dims
    ('poisson', (1,))
    """

    def __init__(self, family, *, log_likelihood, dims, structures=(), predictors=None):
        self.family = family
        self.dims = tuple(dims)
        self._log_likelihood = log_likelihood
        self.basis = expansion_basis(self.dims, structures)
        # per expansion coefficient, the linear predictor its term enters (None: all "cond")
        self.column_predictors = None if predictors is None else tuple(
            tag for tag, dim in zip(predictors, self.dims) for _ in range(dim * dim))

    def statistics(self, row_sums, effects, *, fixed_effects, free, data):
        """Only the log-likelihood: the Newton steps read the draws themselves."""
        return {"log_likelihood": row_sums.sum(self._log_likelihood, effects, fixed_effects, free)}

    def update(self, statistics, *, row_sums, draws, fixed_effects, free, data):
        """``(fixed_effects, scale_matrix, free)`` by Newton steps on the expected
        log-likelihood over ``draws`` (per term ``[n_draws, n_chains, levels, dim]``;
        :func:`~mixedfx.inference.mstep.glm_regression`)."""
        flat_draws = [tf.reshape(d, tf.concat([[-1], tf.shape(d)[2:]], 0)) for d in draws]
        n_draws = int(draws[0].shape[0]) * int(draws[0].shape[1])  # every chain's draws
        n_terms = len(self.dims)

        def newton_sums(fn, *args):
            return row_sums.sum(newton_rows(fn, n_terms), flat_draws, *args)

        return glm_regression(newton_sums, n_draws=n_draws, family=self.family, fixed_effects=fixed_effects,
                              free=free, dims=self.dims, basis=self.basis, column_predictors=self.column_predictors)


def expansion_basis(dims, structures):
    """The scale expansions the terms' covariance structures allow, as one matrix whose
    columns span the expansion coefficients (``sum(dim**2)`` rows); ``None`` when every
    term is unstructured (any ``C_k``).  A structured term's ``C_k`` is restricted to
    those that keep its structure (a diagonal or a multiple of the identity), so that
    the expanded M-step's fixed point is still the structured maximum likelihood."""
    if not structures or all(structure_for(name).unstructured for name in structures):
        return None
    blocks = [structure_for(name).expansion_basis(dim) for name, dim in zip(structures, dims)]
    rows, cols = sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)
    out, r, c = np.zeros((rows, cols)), 0, 0
    for block in blocks:
        out[r:r + block.shape[0], c:c + block.shape[1]] = block
        r, c = r + block.shape[0], c + block.shape[1]
    return out


def m_step_for(family, *, log_likelihood, tensors_of, dims, reml=False, structures=(), predictors=None):
    """The M-step regression strategy for ``family``: :class:`GaussianMStep` where
    ``family.conjugate_gaussian``, else :class:`NewtonMStep`.

    Examples
    --------
    >>> from mixedfx.inference.msteps import m_step_for
    >>> from mixedfx.model import Gaussian, Poisson
    >>> [type(m_step_for(f, log_likelihood=None, tensors_of=None, dims=(1,))).__name__
    ...  for f in (Gaussian(), Poisson())]
    ['GaussianMStep', 'NewtonMStep']
    """
    if family.conjugate_gaussian and predictors is None:
        return GaussianMStep(family, log_likelihood=log_likelihood, tensors_of=tensors_of, dims=dims, reml=reml,
                             structures=structures)
    return NewtonMStep(family, log_likelihood=log_likelihood, dims=dims, structures=structures, predictors=predictors)
