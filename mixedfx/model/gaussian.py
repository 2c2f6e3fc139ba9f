"""Closed-form quantities of the linear mixed model (Gaussian family).

With ``U = Z Lambda / sigma`` and ``A = U'U + I``, the marginal covariance of the
response is ``V = sigma^2 (I + U U')``, and

* ``log|V| = n log sigma^2 + log|A|``;
* ``r' V^-1 r = (r'r - (U'r)' A^-1 (U'r)) / sigma^2`` with ``r = y - X beta``;
* ``X' V^-1 X = (X'X - (U'X)' A^-1 (U'X)) / sigma^2``, whose inverse is the
  covariance of the fixed-effects estimate;
* the conditional means and variances of the random effects are
  ``Lambda A^-1 U'r / sigma`` and ``diag(Lambda A^-1 Lambda)``.

``A`` is never formed whole.  The term with the most levels comes first; its block of
``A`` is diagonal because each row belongs to one level, so it is eliminated exactly
and only the Schur complement over the remaining terms' levels is factored densely
(MixedModels.jl orders its blocks the same way).  For InstEval that is a 1,142 x 1,142
Cholesky factor instead of 4,114 x 4,114.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from mixedfx.model.joint import MixedModel, ModelParameters

__all__ = ["GaussianMarginal", "gaussian_marginal", "DenseBlockTooLarge"]


class DenseBlockTooLarge(RuntimeError):
    """The dense Schur block would not fit the memory bound."""


@dataclass(frozen=True)
class GaussianMarginal:
    """Exact marginal quantities of a linear mixed model at given parameters.

    Attributes
    ----------
    log_likelihood : float
        Marginal log-likelihood of the response (the ML criterion).
    fixed_effects_cov : numpy.ndarray of shape (n_fixed, n_fixed)
        ``(X' V^-1 X)^-1``: the covariance of the fixed-effects estimate.
    conditional_means : tuple of numpy.ndarray
        Per term, the conditional mean of each level's random effect.
    conditional_sds : tuple of numpy.ndarray
        Per term, the conditional standard deviation of each level's effect.
    """

    log_likelihood: float
    fixed_effects_cov: np.ndarray
    conditional_means: tuple[np.ndarray, ...]
    conditional_sds: tuple[np.ndarray, ...]


def gaussian_marginal(
    model: MixedModel,
    params: ModelParameters,
    *,
    max_dense_entries: int = 60_000_000,
) -> GaussianMarginal:
    """Exact log-likelihood, fixed-effects covariance and conditional modes.

    Parameters
    ----------
    model : MixedModel
        A Gaussian model with its response.
    params : ModelParameters
        Parameter values; ``family_params["sigma"]`` is the residual sd.
    max_dense_entries : int, default 60_000_000
        Bound on the entries of the dense blocks (about 480 MB of float64).

    Returns
    -------
    GaussianMarginal

    Raises
    ------
    DenseBlockTooLarge
        If the dense blocks would exceed ``max_dense_entries``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters, gaussian_marginal
    >>> term = RandomTermData(name="g", group_index=np.array([0, 0, 1, 1], dtype=np.int32),
    ...                       z=None, num_levels=2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]),
    ...                    (term,), ("Intercept",))
    >>> params = ModelParameters(np.array([3.0]), np.array([1.0]), {"sigma": 1.0})
    >>> round(gaussian_marginal(model, params).log_likelihood, 4)
    -6.7744
    """
    X = model.fixed_design
    y = model.response
    n = model.n_obs
    beta = np.asarray(params.fixed_effects, dtype=np.float64)
    sigma = float(params.family_params["sigma"])
    residual = y - X @ beta
    terms = model.random_terms
    if not terms:
        xtx = X.T @ X / sigma**2
        cov = np.linalg.inv(xtx) if X.shape[1] else np.zeros((0, 0))
        loglik = -0.5 * (n * np.log(2 * np.pi * sigma**2) + residual @ residual / sigma**2)
        return GaussianMarginal(float(loglik), cov, (), ())

    order = sorted(range(len(terms)), key=lambda k: -terms[k].num_levels)
    first, rest = order[0], order[1:]
    scaled_z = {}
    for k in order:
        z = np.ones(n) if terms[k].z is None else np.asarray(terms[k].z, dtype=np.float64)
        scaled_z[k] = float(params.random_sd[k]) * z / sigma
    g1, u1, q1 = terms[first].group_index, scaled_z[first], terms[first].num_levels
    offsets, q_rest = {}, 0
    for k in rest:
        offsets[k] = q_rest
        q_rest += terms[k].num_levels
    if q1 * q_rest + q_rest * q_rest > max_dense_entries:
        raise DenseBlockTooLarge(
            f"exact computation needs dense blocks of {q1} x {q_rest} and {q_rest} x {q_rest} entries"
        )

    a11 = 1.0 + np.bincount(g1, weights=u1 * u1, minlength=q1)
    a1r = np.zeros(q1 * q_rest)
    arr = np.zeros(q_rest * q_rest)
    for k in rest:
        col_k = offsets[k] + terms[k].group_index
        a1r += np.bincount(g1 * q_rest + col_k, weights=u1 * scaled_z[k], minlength=q1 * q_rest)
        for m in rest:
            col_m = offsets[m] + terms[m].group_index
            arr += np.bincount(col_k * q_rest + col_m, weights=scaled_z[k] * scaled_z[m], minlength=q_rest**2)
    a1r = a1r.reshape(q1, q_rest)
    arr = arr.reshape(q_rest, q_rest) + np.eye(q_rest)

    inv_a11 = 1.0 / a11
    schur = arr - a1r.T @ (inv_a11[:, None] * a1r)
    chol = linalg.cholesky(schur, lower=True) if q_rest else np.zeros((0, 0))
    logdet = np.sum(np.log(a11)) + 2.0 * np.sum(np.log(np.diag(chol)))

    def project(columns: np.ndarray):
        """U' w for each column w: the first block and the rest."""
        v1 = np.stack([np.bincount(g1, weights=u1 * w, minlength=q1) for w in columns.T], axis=1)
        vr = np.zeros((q_rest, columns.shape[1]))
        for k in rest:
            for j, w in enumerate(columns.T):
                vr[offsets[k]:offsets[k] + terms[k].num_levels, j] = np.bincount(
                    terms[k].group_index, weights=scaled_z[k] * w, minlength=terms[k].num_levels
                )
        return v1, vr

    def solve(v1, vr):
        t = vr - a1r.T @ (inv_a11[:, None] * v1)
        xr = linalg.cho_solve((chol, True), t) if q_rest else t
        x1 = inv_a11[:, None] * (v1 - a1r @ xr)
        return x1, xr

    W = np.column_stack([residual, X])
    v1, vr = project(W)
    x1, xr = solve(v1, vr)
    # quad[i, j] = (U'W_i)' A^-1 (U'W_j)
    quad = v1.T @ x1 + vr.T @ xr
    wtw = W.T @ W
    reduced = wtw - quad
    loglik = -0.5 * (n * np.log(2 * np.pi * sigma**2) + logdet + reduced[0, 0] / sigma**2)
    p = X.shape[1]
    if p:
        xtvx = reduced[1:, 1:] / sigma**2
        cov = linalg.inv(0.5 * (xtvx + xtvx.T))
    else:
        cov = np.zeros((0, 0))

    # Conditional modes: Lambda A^-1 U'r / sigma; variances: diag(Lambda A^-1 Lambda).
    if q_rest:
        chol_inv = linalg.solve_triangular(chol, np.eye(q_rest), lower=True)
        diag_rest = np.sum(chol_inv**2, axis=0)
        cross = a1r @ chol_inv.T
        diag_first = inv_a11 + inv_a11**2 * np.sum(cross**2, axis=1)
    else:
        diag_rest = np.zeros(0)
        diag_first = inv_a11
    means, sds = [None] * len(terms), [None] * len(terms)
    tau = np.asarray(params.random_sd, dtype=np.float64)
    means[first] = tau[first] * x1[:, 0] / sigma
    sds[first] = tau[first] * np.sqrt(diag_first)
    for k in rest:
        block = slice(offsets[k], offsets[k] + terms[k].num_levels)
        means[k] = tau[k] * xr[block, 0] / sigma
        sds[k] = tau[k] * np.sqrt(diag_rest[block])
    return GaussianMarginal(float(loglik), cov, tuple(means), tuple(sds))
