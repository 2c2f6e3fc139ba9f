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

``A`` is handled by block elimination (:class:`mixedfx.model.blocks.BlockSystem`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from mixedfx.model.blocks import BlockSystem, DenseBlockTooLarge
from mixedfx.model.joint import MixedModel, ModelParameters

__all__ = ["GaussianMarginal", "gaussian_marginal", "marginal_from_cross_products", "term_z", "DenseBlockTooLarge"]


@dataclass(frozen=True)
class GaussianMarginal:
    """Exact marginal quantities of a linear mixed model at given parameters.

    Attributes
    ----------
    log_likelihood : float
        Marginal log-likelihood of the response at the given fixed effects (the ML
        criterion).
    fixed_effects_cov : numpy.ndarray of shape (n_fixed, n_fixed)
        ``(X' V^-1 X)^-1``: the covariance of the fixed-effects estimate.
    conditional_means : tuple of numpy.ndarray
        Per term, the conditional mean of each level's coefficients at the given
        fixed effects, ``(num_levels, dim)``.
    conditional_sds : tuple of numpy.ndarray
        Per term, their conditional standard deviations, ``(num_levels, dim)``.
    conditional_covs : tuple of numpy.ndarray
        Per term, each level's conditional covariance, ``(num_levels, dim, dim)``
        (lme4's ``postVar``).
    gls_fixed_effects : numpy.ndarray of shape (n_fixed,)
        The generalized least squares estimate ``(X'V^-1X)^-1 X'V^-1 y``: the fixed
        effects that maximize both likelihoods given the variance parameters.
    profiled_log_likelihood : float
        The log-likelihood at ``gls_fixed_effects``.
    reml_log_likelihood : float
        The restricted log-likelihood, ``profiled_log_likelihood - log|X'V^-1X| / 2
        + p log(2 pi) / 2`` (lme4's ``-REMLcrit / 2``).
    """

    log_likelihood: float
    fixed_effects_cov: np.ndarray
    conditional_means: tuple[np.ndarray, ...]
    conditional_sds: tuple[np.ndarray, ...]
    conditional_covs: tuple[np.ndarray, ...] = ()
    gls_fixed_effects: np.ndarray | None = None
    profiled_log_likelihood: float | None = None
    reml_log_likelihood: float | None = None


def gaussian_marginal(
    model: MixedModel,
    params: ModelParameters,
    *,
    profile_fixed_effects: bool = False,
    max_dense_entries: int = 60_000_000,
) -> GaussianMarginal:
    """Exact log-likelihood, fixed-effects covariance and conditional modes.

    Parameters
    ----------
    model : MixedModel
        A Gaussian model with its response.
    params : ModelParameters
        Parameter values; ``family_params["sigma"]`` is the residual sd.
    profile_fixed_effects : bool, default False
        Evaluate ``log_likelihood`` and the conditional moments at the GLS estimate
        of the fixed effects instead of ``params.fixed_effects`` (one elimination
        serves both, since the solutions are linear in the residual).
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
    y = model.response - (0.0 if model.offset is None else model.offset)
    n = model.n_obs
    beta = np.asarray(params.fixed_effects, dtype=np.float64)
    sigma = float(params.family_params["sigma"])
    residual = y - X @ beta
    terms = model.random_terms
    if not terms:
        xtx = X.T @ X / sigma**2
        cov = np.linalg.inv(xtx) if X.shape[1] else np.zeros((0, 0))
        loglik = -0.5 * (n * np.log(2 * np.pi * sigma**2) + residual @ residual / sigma**2)
        return GaussianMarginal(float(loglik), cov, (), ())  # no random terms: the GLS extras are not needed
    scaled = [term_z(term, n) @ L / sigma for term, L in zip(terms, params.random_scale_tril)]
    system = BlockSystem(terms, scaled, max_dense_entries=max_dense_entries)
    W = np.column_stack([residual, X])
    v1, vr = system.project(W)
    return marginal_from_cross_products(system, W.T @ W, v1, vr, params=params, n_obs=n,
                                        profile_fixed_effects=profile_fixed_effects)


def marginal_from_cross_products(system: BlockSystem, wtw, v1, vr, *, params: ModelParameters, n_obs,
                                 profile_fixed_effects: bool = False) -> GaussianMarginal:
    """:func:`gaussian_marginal` from its sums over rows.

    With ``W = [r, X]`` (``r = y - offset - X beta`` at ``params``) and ``U`` the
    scaled random-effects design of ``system``, everything follows from ``W'W``,
    ``U'W`` (``v1``, ``vr`` in the block layout of :meth:`BlockSystem.project`) and
    the blocks of ``U'U`` that ``system`` holds: sums over rows, which a sharded fit
    computes per shard and adds up.

    Parameters
    ----------
    system : BlockSystem
    wtw : numpy.ndarray of shape (1 + n_fixed, 1 + n_fixed)
    v1 : numpy.ndarray of shape (q1, d1, 1 + n_fixed)
    vr : numpy.ndarray of shape (width, 1 + n_fixed)
    params : ModelParameters
    n_obs : int
    profile_fixed_effects : bool, default False

    Returns
    -------
    GaussianMarginal
    """
    n = n_obs
    beta = np.asarray(params.fixed_effects, dtype=np.float64)
    sigma = float(params.family_params["sigma"])
    x1, xr = system.solve(v1, vr)
    reduced = wtw - system.quadratic(v1, vr, x1, xr)
    loglik = -0.5 * (n * np.log(2 * np.pi * sigma**2) + system.logdet + reduced[0, 0] / sigma**2)
    p = beta.shape[0]
    profiled, reml = float(loglik), float(loglik)
    gls = beta
    if p:
        xtvx = 0.5 * (reduced[1:, 1:] + reduced[1:, 1:].T) / sigma**2
        cov = linalg.inv(xtvx)
        xtvr = reduced[1:, 0] / sigma**2
        step = cov @ xtvr
        gls = beta + step
        profiled = float(loglik + 0.5 * xtvr @ step)
        reml = profiled - 0.5 * float(np.linalg.slogdet(xtvx)[1]) + 0.5 * p * np.log(2 * np.pi)
    else:
        cov = np.zeros((0, 0))
    if profile_fixed_effects and p:
        # the residual at the GLS estimate is r - X step: so are its solutions
        x1 = (x1[:, :, 0] - x1[:, :, 1:] @ step)[:, :, None]
        xr = (xr[:, 0] - xr[:, 1:] @ step)[:, None]
        loglik = profiled
    # b = L v per level, v | y ~ N(A^-1 U'r / sigma, A^-1).
    whitened = system.to_terms(x1, xr)
    blocks = system.inverse_diagonal_blocks()
    means, sds, covs = [], [], []
    for v, block, L in zip(whitened, blocks, params.random_scale_tril):
        means.append((v / sigma) @ L.T)
        covs.append(np.einsum("ab,jbc,dc->jad", L, block, L))
        sds.append(np.sqrt(np.einsum("jaa->ja", covs[-1])))
    return GaussianMarginal(float(loglik), cov, tuple(means), tuple(sds), tuple(covs), gls, profiled, reml)


def term_z(term, n_rows: int) -> np.ndarray:
    """A term's per-row ``z`` as an ``(n_rows, dim)`` array (ones for an intercept)."""
    return np.ones((n_rows, 1)) if term.z is None else np.asarray(term.z, dtype=np.float64).reshape(n_rows, -1)
