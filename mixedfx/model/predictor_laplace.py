"""The Newton search over the random effects when they enter more than one linear
predictor (glmmTMB's random terms in the ``ziformula``).

:func:`~mixedfx.model.laplace_mode` and :func:`~mixedfx.model.marginal_log_likelihood`
solve ``A = U' W U + I`` with one curvature ``w_i`` per row, the second derivative of
its log-likelihood in its linear predictor.  With a second linear predictor (the zero
part's logit) row ``i``'s curvature is a ``P x P`` matrix ``W_i`` over its predictors
(a zero couples the count and the zero part).  Its eigen-decomposition
``W_i = sum_j lambda_ij a_ij a_ij'`` turns it into ``P`` pseudo-rows of weight
``lambda_ij`` each, whose row of ``U`` holds ``a_ij[p] z_i' L_k`` in the columns of
each term ``k`` of predictor ``p``: the same
:class:`~mixedfx.model.blocks.BlockSystem`, on ``P n`` rows, is then ``A`` exactly.
The score enters the pseudo-rows as ``a_ij' g_i`` (``g_i`` the row's gradient over its
predictors), which :meth:`BlockSystem.project` maps back to ``U' g``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mixedfx._tf import tf
from mixedfx.exceptions import ParameterError
from mixedfx.model.blocks import BlockSystem, DenseBlockTooLarge
from mixedfx.model.gaussian import term_z
from mixedfx.model.joint import MixedModel, ModelParameters, numpy_linear_predictor, numpy_random_part

__all__ = ["PredictorsNewtonProblem"]


def _summed_log_likelihood(family, parts, family_params, response, trials, weights, keys):
    """``log p(y | predictors)`` summed over rows; ``parts[..., p, :]`` is predictor ``keys[p]``."""
    offsets = {key: parts[..., p, :] for p, key in enumerate(keys) if p > 0}
    params = family.with_predictor_offsets(family_params, offsets)
    rows = family.weighted_log_prob(parts[..., 0, :], params, response, trials=trials, weights=weights)
    return tf.reduce_sum(rows, axis=-1)


@tf.function(autograph=False, reduce_retracing=True)
def _derivatives(family, parts, family_params, response, trials, weights, keys):
    """The summed log-likelihood, its gradient in each predictor ``[P, n]`` and each row's
    second derivatives ``[P, P, n]`` (rows are independent: each row's depend on its own
    predictors only)."""
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(parts)
        with tf.GradientTape() as inner:
            inner.watch(parts)
            total = _summed_log_likelihood(family, parts, family_params, response, trials, weights, keys)
        score = inner.gradient(total, parts)
        sums = [tf.reduce_sum(score[p]) for p in range(len(keys))]
    second = tf.stack([outer.gradient(s, parts) for s in sums])
    del outer
    return total, score, second


class PredictorsNewtonProblem:
    """The pieces of the Newton search over whitened random effects ``v`` (``b = L v``)
    when the terms enter more than one linear predictor (see the module docstring): the
    interface of :class:`mixedfx.model.likelihood._NewtonProblem`, with the predictors
    stacked (:meth:`linear` gives ``[P, n]``, ``"cond"`` first) and a row curvature that
    is its eigen-decomposition ``(lambda [n, P], a [n, P, P])``.

    Parameters
    ----------
    model : MixedModel
        With :attr:`~mixedfx.model.MixedModel.predictors`.
    params : ModelParameters
    expected : bool, default False
        The expected curvature is not available for two predictors; the observed one,
        clipped positive, stands in (the E-step's restarts only start from the mode).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import MixedModel, ModelParameters, Poisson
    >>> from mixedfx.model.predictor_laplace import PredictorsNewtonProblem
    >>> g = np.array([0, 0, 1, 1], dtype=np.int32)
    >>> terms = (RandomTermData("g", g, None, 2), RandomTermData("g", g, None, 2, predictor="zi"))
    >>> model = MixedModel(Poisson().zero_inflated(("Intercept",)), np.ones((4, 1)), np.array([0.0, 1, 3, 0]), terms,
    ...                    ("Intercept",), family_design={"zi": np.ones((4, 1))})
    >>> problem = PredictorsNewtonProblem(model, ModelParameters(np.array([0.5]), np.array([1.0, 1.0]),
    ...                                                          {"zi": np.array([0.0])}))
    >>> problem.keys, problem.linear([np.zeros((2, 1)), np.ones((2, 1))]).tolist()
    (('cond', 'zi'), [[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])
    """

    def __init__(self, model: MixedModel, params: ModelParameters, *, expected: bool = False):
        n = model.n_obs
        self.model, self.params, self.expected = model, params, expected
        self.keys = tuple(dict.fromkeys(("cond", *model.predictors)))
        self.terms = model.random_terms
        self.slot = [self.keys.index(term.predictor) for term in self.terms]
        self.scaled = [term_z(term, n) @ L for term, L in zip(self.terms, params.random_scale_tril)]
        self.whitened_terms = [replace(term, z=u) for term, u in zip(self.terms, self.scaled)]
        self.pseudo_terms = [replace(term, group_index=np.tile(term.group_index, len(self.keys)))
                             for term in self.terms]
        self.fixed = numpy_linear_predictor(model.fixed_design, params.fixed_effects, (), (), offset=model.offset)
        self.family_params = params.family_tensors()
        self.response = tf.constant(model.response, tf.float64)
        self.trials = None if model.family_rows is None else tf.constant(model.family_rows, tf.float64)
        self.weights = None if model.weights is None else tf.constant(model.weights, tf.float64)

    def linear(self, v) -> np.ndarray:
        """The predictors ``[P, n]`` at whitened random effects ``v``."""
        n = self.model.n_obs
        return np.stack([(self.fixed if p == 0 else 0.0)
                         + numpy_random_part(v, self.whitened_terms, predictor=key, n_rows=n)
                         for p, key in enumerate(self.keys)])

    def log_likelihood(self, parts) -> np.ndarray:
        """``log p(y | predictors)`` summed over rows, for a stack ``[..., P, n]``."""
        return _summed_log_likelihood(self.model.family, tf.constant(parts), self.family_params, self.response,
                                      self.trials, self.weights, self.keys).numpy()

    def derivatives(self, parts):
        """``(log-likelihood, gradient [P, n], clipped curvature, exact curvature)``; a
        curvature is ``(lambda [n, P], a [n, P, P])``, the eigen-decomposition of each row's
        minus second derivative matrix."""
        total, score, second = _derivatives(self.model.family, tf.constant(parts), self.family_params, self.response,
                                            self.trials, self.weights, self.keys)
        curvature = -np.transpose(second.numpy(), (2, 0, 1))  # [n, P, P]
        values, vectors = np.linalg.eigh(0.5 * (curvature + np.transpose(curvature, (0, 2, 1))))
        clipped = (np.maximum(values, 1e-12), vectors)
        return float(total), score.numpy(), clipped, (None if self.expected else (values, vectors))

    def any_clipped(self, curvature) -> bool:
        """Whether some row's exact curvature has an eigenvalue the search clipped."""
        return bool(np.any(curvature[0] < 1e-12))

    def system(self, curvature, *, max_dense_entries=None) -> BlockSystem:
        """``A = U' W U + I`` on the pseudo-rows of ``curvature``."""
        values, vectors = curvature
        scaled = [np.concatenate([vectors[:, p, j][:, None] * u for j in range(len(self.keys))])
                  for p, u in zip(self.slot, self.scaled)]
        try:
            return BlockSystem(self.pseudo_terms, scaled, values.T.reshape(-1), max_dense_entries=max_dense_entries)
        except DenseBlockTooLarge as error:
            raise ParameterError(f"{error}: the matrix-free solver takes one linear predictor only") from None

    def score_rows(self, score, curvature) -> np.ndarray:
        """The pseudo-rows' score ``a_ij' g_i`` (``[P n]``, in :meth:`system`'s row order)."""
        return np.einsum("npj,pn->jn", curvature[1], score).reshape(-1)
