"""Closed-form quantities of the linear mixed model (Gaussian family).

With ``U = Z Lambda / sigma`` (``Lambda`` block diagonal with each term's
``scale_tril`` once per level) and ``A = U'U + I``, the marginal covariance of the
response is ``V = sigma^2 (I + U U')``, and

* ``log|V| = n log sigma^2 + log|A|``;
* ``r' V^-1 r = (r'r - (U'r)' A^-1 (U'r)) / sigma^2`` with ``r = y - X beta``;
* ``X' V^-1 X = (X'X - (U'X)' A^-1 (U'X)) / sigma^2``, whose inverse is the
  covariance of the fixed-effects estimate;
* the conditional means and variances of the random effects are
  ``Lambda A^-1 U'r / sigma`` and ``diag(Lambda A^-1 Lambda)``.

``A`` is never formed whole.  The term with the most levels comes first; its block of
``A`` is block diagonal (one ``dim x dim`` block per level) because each row belongs
to one level, so it is eliminated exactly and only the Schur complement over the
remaining terms' coefficients is factored densely
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
        Per term, the conditional mean of each level's coefficients, ``(num_levels, dim)``.
    conditional_sds : tuple of numpy.ndarray
        Per term, their conditional standard deviations, ``(num_levels, dim)``.
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

    # Columns of U = Z Lambda / sigma, per term: row i has z_i' L_k / sigma at its level.
    scaled = []
    for term, scale_tril in zip(terms, params.random_scale_tril):
        z = np.ones((n, 1)) if term.z is None else np.asarray(term.z, dtype=np.float64).reshape(n, -1)
        scaled.append(z @ scale_tril / sigma)
    dims = [term.dim for term in terms]
    order = sorted(range(len(terms)), key=lambda k: -terms[k].num_levels * dims[k])
    first, rest = order[0], order[1:]
    q1, d1 = terms[first].num_levels, dims[first]
    u1, g1 = scaled[first], terms[first].group_index.astype(np.int64)
    offsets, width = {}, 0
    for k in rest:
        offsets[k] = width
        width += terms[k].num_levels * dims[k]
    if q1 * d1 * width + width * width > max_dense_entries:
        raise DenseBlockTooLarge(
            f"exact computation needs dense blocks of {q1 * d1} x {width} and {width} x {width} entries"
        )

    def columns(k, c):
        """Column of U holding coefficient c of term k, per row (within its block)."""
        index = terms[k].group_index.astype(np.int64) * dims[k] + c
        return index if k == first else offsets[k] + index

    # A = U'U + I, in blocks: first term (block diagonal), first x rest, rest x rest.
    a11 = np.zeros((q1, d1, d1))
    for a in range(d1):
        for b in range(d1):
            a11[:, a, b] = np.bincount(g1, weights=u1[:, a] * u1[:, b], minlength=q1)
    a11 += np.eye(d1)
    a1r = np.zeros(q1 * d1 * width)
    arr = np.zeros(width * width)
    for k in rest:
        for c in range(dims[k]):
            col_k = columns(k, c)
            for a in range(d1):
                a1r += np.bincount(columns(first, a) * width + col_k, weights=u1[:, a] * scaled[k][:, c],
                                   minlength=q1 * d1 * width)
            for m in rest:
                for e in range(dims[m]):
                    arr += np.bincount(col_k * width + columns(m, e), weights=scaled[k][:, c] * scaled[m][:, e],
                                       minlength=width * width)
    a1r = a1r.reshape(q1, d1, width)
    arr = arr.reshape(width, width) + np.eye(width)

    inv11 = np.linalg.inv(a11)
    logdet11 = float(np.sum(np.linalg.slogdet(a11)[1]))
    inv_a1r = np.matmul(inv11, a1r)  # (q1, d1, width)
    a1r_flat, inv_a1r_flat = a1r.reshape(q1 * d1, width), inv_a1r.reshape(q1 * d1, width)
    schur = arr - a1r_flat.T @ inv_a1r_flat
    chol = linalg.cholesky(schur, lower=True) if width else np.zeros((0, 0))
    logdet = logdet11 + 2.0 * np.sum(np.log(np.diag(chol)))

    def project(W: np.ndarray):
        """U' W: the first block as (q1, d1, m), the rest as (width, m)."""
        m = W.shape[1]
        v1 = np.zeros((q1, d1, m))
        for a in range(d1):
            for j in range(m):
                v1[:, a, j] = np.bincount(g1, weights=u1[:, a] * W[:, j], minlength=q1)
        vr = np.zeros((width, m))
        for k in rest:
            for c in range(dims[k]):
                for j in range(m):
                    vr[:, j] += np.bincount(columns(k, c), weights=scaled[k][:, c] * W[:, j], minlength=width)
        return v1, vr

    def solve(v1, vr):
        m = v1.shape[2]
        t = vr - inv_a1r_flat.T @ v1.reshape(q1 * d1, m)
        xr = linalg.cho_solve((chol, True), t) if width else t
        x1 = np.matmul(inv11, v1 - (a1r_flat @ xr).reshape(q1, d1, m))
        return x1, xr

    W = np.column_stack([residual, X])
    v1, vr = project(W)
    x1, xr = solve(v1, vr)
    m = W.shape[1]
    quad = v1.reshape(q1 * d1, m).T @ x1.reshape(q1 * d1, m) + vr.T @ xr  # (U'W_i)' A^-1 (U'W_j)
    reduced = W.T @ W - quad
    loglik = -0.5 * (n * np.log(2 * np.pi * sigma**2) + logdet + reduced[0, 0] / sigma**2)
    p = X.shape[1]
    if p:
        xtvx = reduced[1:, 1:] / sigma**2
        cov = linalg.inv(0.5 * (xtvx + xtvx.T))
    else:
        cov = np.zeros((0, 0))

    # b = L v per level, v | y ~ N(A^-1 U'r / sigma, A^-1).
    chol_inv = linalg.solve_triangular(chol, np.eye(width), lower=True) if width else np.zeros((0, 0))
    cross = (inv_a1r_flat @ chol_inv.T).reshape(q1, d1, width)  # (A^-1)_11 = inv11 + cross cross'
    means, sds = [None] * len(terms), [None] * len(terms)
    L1 = params.random_scale_tril[first]
    cov_v = inv11 + np.matmul(cross, cross.transpose(0, 2, 1))
    means[first] = (x1[:, :, 0] / sigma) @ L1.T
    sds[first] = np.sqrt(np.einsum("ab,jbc,ac->ja", L1, cov_v, L1))
    if width:
        inverse_rest = chol_inv.T @ chol_inv
    for k in rest:
        q, d, L = terms[k].num_levels, dims[k], params.random_scale_tril[k]
        block = slice(offsets[k], offsets[k] + q * d)
        means[k] = (xr[block, 0].reshape(q, d) / sigma) @ L.T
        sub = inverse_rest[block, block].reshape(q, d, q, d)
        per_level = sub[np.arange(q), :, np.arange(q), :]  # (q, d, d)
        sds[k] = np.sqrt(np.einsum("ab,jbc,ac->ja", L, per_level, L))
    return GaussianMarginal(float(loglik), cov, tuple(means), tuple(sds))
