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

The two quadratic forms are computed as sums of squares, ``W'(I + UU')^-1 W =
R'R + x'x`` with ``W = [r, X]``, ``x = A^-1 U'W`` and ``R = W - U x``, not as the
differences above: when sigma is small beside the random effects' sds the
differences cancel to rounding (a response constant within the levels of a factor).

One computation, :func:`gaussian_marginal`, gives them all; its variants are
parameters.  ``A`` is handled by block elimination
(:class:`mixedfx.model.blocks.BlockSystem`) from sums over rows (:class:`CrossProducts`)
that a pluggable ``row_sums`` computes: in memory by default
(:func:`local_cross_products`), shard by shard in a sharded fit
(:func:`mixedfx.inference.distributed.sharded_cross_products`).  When its dense Schur
block would not fit in memory (two large crossed factors), ``solver="conjugate_gradients"``
solves the same systems by preconditioned conjugate gradients, matrix-free, in memory
linear in the rows: the fixed effects' covariance, the GLS estimate and the
conditional means stay exact (to the solver's tolerance); the log-determinant, and
with it the log-likelihood, is not computed.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from mixedfx.exceptions import ParameterError
from mixedfx.model.blocks import BlockSystem, DenseBlockTooLarge
from mixedfx.model.joint import MixedModel, ModelParameters

__all__ = ["GaussianMarginal", "gaussian_marginal", "CrossProducts", "RowSums",
           "local_cross_products", "term_z", "DenseBlockTooLarge"]


@dataclass(frozen=True)
class GaussianMarginal:
    """Exact marginal quantities of a linear mixed model at given parameters.

    Attributes
    ----------
    log_likelihood : float or None
        Marginal log-likelihood of the response at the given fixed effects (the ML
        criterion); ``None`` (as the other likelihoods and the conditional sds and
        covariances) when computed by ``solver="conjugate_gradients"``.
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

    Examples
    --------
    Two groups of two rows, group means 1.5 and 4.5 around an intercept of 3; with
    ``sd = sigma = 1`` each group's deviation of 1.5 shrinks by ``2 / (2 + 1)``:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> params = ModelParameters(np.array([3.0]), np.array([1.0]), {"sigma": 1.0})
    >>> from mixedfx.model import gaussian_marginal
    >>> marginal = gaussian_marginal(model, params)
    >>> round(marginal.log_likelihood, 4), marginal.gls_fixed_effects.round(4).tolist()
    (-6.7744, [3.0])
    >>> marginal.conditional_means[0].ravel().round(4).tolist(), marginal.conditional_sds[0].ravel().round(4).tolist()
    ([-1.0, 1.0], [0.5774, 0.5774])
    >>> marginal.fixed_effects_cov.round(4).tolist()
    [[0.75]]
    """

    log_likelihood: float | None
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
    solver: str = "dense",
    row_sums: RowSums | None = None,
    max_dense_entries: int | None = None,
    tol: float = 1e-8,
    max_iter: int = 1000,
    chunk_rows: int = 1 << 20,
) -> GaussianMarginal:
    """Exact log-likelihood, fixed-effects covariance and conditional modes.

    The one computation of the exact Gaussian quantities.  Everything follows from
    ``U'W``, the solves ``x = A^-1 U'W`` and ``W'V^-1W sigma^2 = R'R + x'x`` with
    ``R = W - U x`` (module docstring); its variants are
    parameters:

    * ``solver="dense"``: ``A`` by block elimination, with the sums over rows from
      ``row_sums`` (default :func:`local_cross_products`; a sharded fit passes
      :func:`mixedfx.inference.distributed.sharded_cross_products`);
    * ``solver="conjugate_gradients"``: the solves by preconditioned conjugate
      gradients, matrix-free, ``chunk_rows`` rows at a time (memory linear in the
      rows): the fixed effects' covariance, the GLS estimate and the conditional means
      (to ``tol``); no log-determinant, so the likelihoods and the conditional sds and
      covariances are ``None`` / empty;
    * ``solver="auto"``: dense, or conjugate gradients when the dense block would
      exceed ``max_dense_entries``.

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
    solver : {"dense", "conjugate_gradients", "auto"}, default "dense"
    row_sums : callable, optional
        ``row_sums(model, params, max_dense_entries=...)`` returning
        :class:`CrossProducts` (dense solver only); default
        :func:`local_cross_products`.
    max_dense_entries : int, optional
        Bound on the entries of the dense block (default
        :data:`mixedfx.model.blocks.MAX_DENSE_ENTRIES`, about 480 MB of float64).
    tol : float, default 1e-8
        Conjugate gradients: relative residual at which the solver stops.
    max_iter : int, default 1000
        Conjugate gradients: iterations before giving up.
    chunk_rows : int, default 2**20
        Conjugate gradients: rows per pass of the products with ``U``.

    Returns
    -------
    GaussianMarginal

    Raises
    ------
    DenseBlockTooLarge
        If ``solver="dense"`` and the dense blocks would exceed ``max_dense_entries``.
    numpy.linalg.LinAlgError
        When conjugate gradients do not reach ``tol`` in ``max_iter`` iterations.
    ParameterError
        For a family other than the Gaussian, or an unknown ``solver``.

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
    >>> iterative = gaussian_marginal(model, params, solver="conjugate_gradients")
    >>> iterative.log_likelihood, iterative.conditional_means[0].ravel().round(4).tolist()
    (None, [-1.0, 1.0])
    """
    if not model.family.conjugate_gaussian:
        raise ParameterError(f"the exact marginal likelihood is the Gaussian family's, not {model.family.name!r}'s")
    if solver not in ("dense", "conjugate_gradients", "auto"):
        raise ParameterError(f"solver must be 'dense', 'conjugate_gradients' or 'auto', got {solver!r}")
    options = dict(profile_fixed_effects=profile_fixed_effects, row_sums=row_sums, max_dense_entries=max_dense_entries,
                   tol=tol, max_iter=max_iter, chunk_rows=chunk_rows)
    if model.weights is not None:  # precision weights: the unweighted model on rows scaled by sqrt(w)
        scaled, constant = model.row_scaled()
        result = gaussian_marginal(scaled, params, solver=solver, **options)
        return dataclasses.replace(result, **{name: getattr(result, name) + constant for name in (
            "log_likelihood", "profiled_log_likelihood", "reml_log_likelihood") if getattr(result, name) is not None})
    if solver == "auto":
        try:
            return gaussian_marginal(model, params, solver="dense", **options)
        except DenseBlockTooLarge:
            return gaussian_marginal(model, params, solver="conjugate_gradients", **options)
    if not model.random_terms:
        return _without_random_terms(model, params)
    if solver == "dense":
        sums = (local_cross_products if row_sums is None else row_sums)(model, params,
                                                                        max_dense_entries=max_dense_entries)
        system = sums.system
        solution = _term_blocks(system, *system.solve(sums.v1, sums.vr))
        reduced = _penalized_gram(model, params, solution, chunk_rows=chunk_rows)
        return _marginal(params, model.n_obs, reduced, solution, logdet=system.logdet,
                         inverse_blocks=system.inverse_diagonal_blocks, profile_fixed_effects=profile_fixed_effects)
    if row_sums is not None:
        raise ParameterError("row_sums serves the dense solver; conjugate gradients sum over local chunks of rows")
    rhs, apply_a, precondition = _chunked_operator(model, params, chunk_rows=chunk_rows)
    solution = _conjugate_gradients(rhs, apply_a, precondition, tol=tol, max_iter=max_iter)
    reduced = _penalized_gram(model, params, solution, chunk_rows=chunk_rows)
    return _marginal(params, model.n_obs, reduced, solution, logdet=None, inverse_blocks=None,
                     profile_fixed_effects=profile_fixed_effects)


@dataclass(frozen=True)
class CrossProducts:
    """The sums over rows behind the dense exact Gaussian quantities.

    With ``U`` the scaled random-effects design (row ``i``: ``z_i' L_k / sigma`` in the
    columns of its level of term ``k``) and ``W = [y - offset - X beta, X]`` at the
    given parameters.

    Attributes
    ----------
    system : BlockSystem
        ``A = U'U + I``, factored.
    v1 : numpy.ndarray of shape (q1, d1, 1 + n_fixed)
    vr : numpy.ndarray of shape (width, 1 + n_fixed)
        ``U'W`` in the block layout of :meth:`BlockSystem.project`.

    Examples
    --------
    :func:`local_cross_products` makes one from the rows:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> from mixedfx.model.gaussian import local_cross_products
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> sums = local_cross_products(model, ModelParameters(np.array([3.0]), np.array([1.0]), {"sigma": 1.0}))
    >>> sums.v1[:, 0, :].tolist()
    [[-3.0, 2.0], [3.0, 2.0]]
    """

    system: BlockSystem
    v1: np.ndarray
    vr: np.ndarray


#: What :func:`gaussian_marginal` calls for its sums over rows:
#: ``row_sums(model, params, *, max_dense_entries=None) -> CrossProducts``.
RowSums = Callable[..., CrossProducts]


def local_cross_products(model: MixedModel, params: ModelParameters, *,
                         max_dense_entries: int | None = None) -> CrossProducts:
    """:class:`CrossProducts` from all of ``model``'s rows, in memory (the default ``row_sums``).

    Parameters
    ----------
    model : MixedModel
    params : ModelParameters
    max_dense_entries : int, optional

    Returns
    -------
    CrossProducts

    Raises
    ------
    DenseBlockTooLarge

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> from mixedfx.model.gaussian import local_cross_products
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> sums = local_cross_products(model, ModelParameters(np.array([3.0]), np.array([2.0]), {"sigma": 1.0}))
    >>> round(sums.system.logdet, 4)  # log(1 + 2 * 2^2) per level
    4.3944
    """
    n = model.n_obs
    BlockSystem.check_size(model.random_terms, max_dense_entries=max_dense_entries)
    sigma = float(params.family_params["sigma"])
    scaled = [term_z(term, n) @ L / sigma for term, L in zip(model.random_terms, params.random_scale_tril)]
    system = BlockSystem(model.random_terms, scaled, max_dense_entries=max_dense_entries)
    W = np.column_stack([_residual(model, params), model.fixed_design])
    v1, vr = system.project(W)
    return CrossProducts(system, v1, vr)


def _residual(model: MixedModel, params: ModelParameters, rows=slice(None)) -> np.ndarray:
    """``y - offset - X beta`` on ``rows``."""
    y = model.response[rows] - (0.0 if model.offset is None else model.offset[rows])
    return y - model.fixed_design[rows] @ np.asarray(params.fixed_effects, dtype=np.float64)


def _without_random_terms(model: MixedModel, params: ModelParameters) -> GaussianMarginal:
    """The exact quantities of a linear model (no random terms; the GLS extras are not needed)."""
    X, n = model.fixed_design, model.n_obs
    sigma = float(params.family_params["sigma"])
    residual = _residual(model, params)
    xtx = X.T @ X / sigma**2
    cov = np.linalg.inv(xtx) if X.shape[1] else np.zeros((0, 0))
    loglik = -0.5 * (n * np.log(2 * np.pi * sigma**2) + residual @ residual / sigma**2)
    return GaussianMarginal(float(loglik), cov, (), ())


def _penalized_gram(model: MixedModel, params: ModelParameters, solution, *, chunk_rows: int) -> np.ndarray:
    """``W'(I + UU')^-1 W`` as ``R'R + X'X`` with ``X = A^-1 U'W`` (``solution``, per term
    ``(num_levels, dim, 1 + n_fixed)``) and ``R = W - U X`` its residual, ``chunk_rows``
    rows at a time.

    Equal to ``W'W - (U'W)' A^-1 (U'W)``, but a sum of squares instead of a difference:
    when sigma is small beside the random effects' sds, the fixed effects that the
    grouping factors nearly reproduce (an intercept when the response is constant within
    levels) have ``X'V^-1X sigma^2`` of order ``sigma^2 / sd^2``, which the difference
    of two terms of order ``X'X`` loses entirely to rounding (the GLS estimate came out
    as noise) and the sum of squares keeps to a relative error of order ``1e-8``.
    """
    n, sigma = model.n_obs, float(params.family_params["sigma"])
    factors = [np.asarray(L, dtype=np.float64) / sigma for L in params.random_scale_tril]
    gram = _dot_matrix(solution, solution)
    for start in range(0, n, chunk_rows):
        rows = slice(start, min(n, start + chunk_rows))
        r = np.column_stack([_residual(model, params, rows), model.fixed_design[rows]])
        for term, factor, x in zip(model.random_terms, factors, solution):
            z = np.ones((r.shape[0], 1)) if term.z is None else np.asarray(term.z[rows], dtype=np.float64)
            u = z.reshape(r.shape[0], -1) @ factor
            r -= np.einsum("nd,ndm->nm", u, x[term.group_index[rows]])
        gram += r.T @ r
    return 0.5 * (gram + gram.T)


def _term_blocks(system: BlockSystem, x1, xr) -> list[np.ndarray]:
    """A solution in the block layout of :meth:`BlockSystem.project` as per-term
    ``(num_levels, dim, m)`` arrays (all columns)."""
    out = [None] * len(system.num_levels)
    out[system.first] = x1
    for k in system.rest:
        q, d = system.num_levels[k], system.dims[k]
        out[k] = xr[system.offsets[k]:system.offsets[k] + q * d].reshape(q, d, -1)
    return out


def _marginal(params: ModelParameters, n_obs: int, reduced, solution, *, logdet, inverse_blocks,
              profile_fixed_effects: bool) -> GaussianMarginal:
    """The exact quantities from ``W'V^-1W`` (times sigma^2) and the solves ``A^-1 U'W``.

    ``reduced`` is ``W'W - (U'W)' A^-1 (U'W)`` (:func:`_penalized_gram`); ``solution`` holds, per term,
    ``A^-1 U'W`` as ``(num_levels, dim, 1 + n_fixed)``; ``logdet`` is ``log|A|`` and
    ``inverse_blocks`` a callable returning ``A^-1``'s diagonal blocks per term (both
    ``None`` when the solver does not provide them: then so are the likelihoods and
    the conditional sds and covariances).
    """
    n = n_obs
    beta = np.asarray(params.fixed_effects, dtype=np.float64)
    sigma = float(params.family_params["sigma"])
    loglik = None
    if logdet is not None:
        loglik = float(-0.5 * (n * np.log(2 * np.pi * sigma**2) + logdet + reduced[0, 0] / sigma**2))
    p = beta.shape[0]
    profiled, reml, gls = loglik, loglik, beta
    if p:
        xtvx = 0.5 * (reduced[1:, 1:] + reduced[1:, 1:].T) / sigma**2
        # equilibrated: at sigma -> 0 the diagonal spans ~1e16 (fixed effects the levels
        # reproduce against those they do not), which is scaling, not singularity
        scale = 1.0 / np.sqrt(np.diagonal(xtvx))
        cov = scale[:, None] * linalg.inv(scale[:, None] * xtvx * scale) * scale
        xtvr = reduced[1:, 0] / sigma**2
        step = cov @ xtvr
        gls = beta + step
        if loglik is not None:
            profiled = float(loglik + 0.5 * xtvr @ step)
            reml = profiled - 0.5 * float(np.linalg.slogdet(xtvx)[1]) + 0.5 * p * np.log(2 * np.pi)
    else:
        cov = np.zeros((0, 0))
    at_gls = profile_fixed_effects and p
    if at_gls:
        loglik = profiled
    # b = L v per level, v | y ~ N(A^-1 U'r / sigma, A^-1); at the GLS estimate the
    # residual is r - X step, and so are its solutions.
    means = tuple((((x[:, :, 0] - x[:, :, 1:] @ step) if at_gls else x[:, :, 0]) / sigma) @ L.T
                  for x, L in zip(solution, params.random_scale_tril))
    sds, covs = [], []
    if inverse_blocks is not None:
        for block, L in zip(inverse_blocks(), params.random_scale_tril):
            covs.append(np.einsum("ab,jbc,dc->jad", L, block, L))
            sds.append(np.sqrt(np.einsum("jaa->ja", covs[-1])))
    return GaussianMarginal(loglik, cov, means, tuple(sds), tuple(covs), gls, profiled, reml)


def term_z(term, n_rows: int) -> np.ndarray:
    """A term's per-row ``z`` as an ``(n_rows, dim)`` array (ones for an intercept).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import term_z
    >>> index = np.array([0, 0, 1], dtype=np.int32)
    >>> term_z(RandomTermData("g", index, None, 2), 3).tolist()
    [[1.0], [1.0], [1.0]]
    >>> slope = RandomTermData("g", index, np.array([[1.0, 0.5], [1.0, 2.0], [1.0, 1.0]]), 2, ("(Intercept)", "x"))
    >>> term_z(slope, 3).tolist()
    [[1.0, 0.5], [1.0, 2.0], [1.0, 1.0]]
    """
    return np.ones((n_rows, 1)) if term.z is None else np.asarray(term.z, dtype=np.float64).reshape(n_rows, -1)


def _chunked_operator(model: MixedModel, params: ModelParameters, *, chunk_rows: int):
    """The conjugate-gradient solver's sums over rows, ``chunk_rows`` rows at a time.

    Returns ``U'W`` (per term ``(num_levels, dim, 1 + n_fixed)``), a function
    applying ``A = U'U + I`` to per-term blocks, and one applying the block-Jacobi
    preconditioner (each level's ``(I + sum over its rows of u u')^-1``).
    """
    X = model.fixed_design
    sigma = float(params.family_params["sigma"])
    terms = model.random_terms
    n, p = X.shape
    chunks = [slice(start, min(n, start + chunk_rows)) for start in range(0, n, chunk_rows)]
    # U's rows per term: z_i' L / sigma (a constant for a random intercept)
    factors = [L / sigma for L in params.random_scale_tril]

    def rows_of_u(k, rows):
        z = terms[k].z
        return None if z is None else np.asarray(z[rows], dtype=np.float64).reshape(-1, terms[k].dim) @ factors[k]

    def accumulate_transpose(out, rows, values):  # out_k += U_k' values on a chunk of rows
        for k, term in enumerate(terms):
            g = term.group_index[rows]
            u = rows_of_u(k, rows)
            for a in range(term.dim):
                weight = factors[k][0, 0] if u is None else u[:, a:a + 1]
                for j in range(values.shape[1]):
                    out[k][:, a, j] += np.bincount(g, weights=weight[:, 0] * values[:, j] if u is not None
                                                   else weight * values[:, j], minlength=term.num_levels)

    def new_blocks(m):
        return [np.zeros((t.num_levels, t.dim, m)) for t in terms]

    def apply_a(v):  # A v = U'(U v) + v, a chunk of rows at a time
        out = new_blocks(v[0].shape[2])
        for rows in chunks:
            uv = 0.0
            for k, term in enumerate(terms):
                picked = v[k][term.group_index[rows]]  # (rows, dim, m)
                u = rows_of_u(k, rows)
                uv = uv + (factors[k][0, 0] * picked[:, 0, :] if u is None else np.einsum("nd,ndm->nm", u, picked))
            accumulate_transpose(out, rows, uv)
        return [o + x for o, x in zip(out, v)]

    rhs = new_blocks(p + 1)
    for rows in chunks:
        accumulate_transpose(rhs, rows, np.column_stack([_residual(model, params, rows), X[rows]]))
    inverse_blocks = []
    for k, term in enumerate(terms):
        block = np.zeros((term.num_levels, term.dim, term.dim))
        for rows in chunks:
            g = term.group_index[rows]
            u = rows_of_u(k, rows)
            if u is None:
                block[:, 0, 0] += factors[k][0, 0] ** 2 * np.bincount(g, minlength=term.num_levels)
                continue
            for a in range(term.dim):
                for b in range(term.dim):
                    block[:, a, b] += np.bincount(g, weights=u[:, a] * u[:, b], minlength=term.num_levels)
        inverse_blocks.append(np.linalg.inv(block + np.eye(term.dim)))

    def precondition(v):
        return [np.matmul(inv, x) for inv, x in zip(inverse_blocks, v)]

    return rhs, apply_a, precondition


def _conjugate_gradients(rhs, apply_a, precondition, *, tol: float, max_iter: int) -> list[np.ndarray]:
    """Preconditioned conjugate gradients for ``A x = rhs``, every column at once.

    ``rhs`` and the solution are per-term ``(num_levels, dim, m)`` blocks; the solver
    stops when every column's residual is below ``tol`` times its right-hand side's
    norm, and raises :class:`numpy.linalg.LinAlgError` after ``max_iter`` iterations.
    """

    def dot(a, b):  # column-wise inner products
        return sum(np.einsum("qdm,qdm->m", x, z) for x, z in zip(a, b))

    solution = [np.zeros_like(r) for r in rhs]
    residual = [r.copy() for r in rhs]
    preconditioned = precondition(residual)
    direction = [z.copy() for z in preconditioned]
    rho = dot(residual, preconditioned)
    scale = np.sqrt(np.maximum(dot(rhs, rhs), 1e-300))
    for _ in range(max_iter):
        if np.all(np.sqrt(dot(residual, residual)) <= tol * scale):
            return solution
        a_direction = apply_a(direction)
        step = rho / np.maximum(dot(direction, a_direction), 1e-300)
        solution = [x + step * d for x, d in zip(solution, direction)]
        residual = [r - step * ad for r, ad in zip(residual, a_direction)]
        preconditioned = precondition(residual)
        rho, previous = dot(residual, preconditioned), rho
        direction = [z + (rho / np.maximum(previous, 1e-300)) * d for z, d in zip(preconditioned, direction)]
    raise np.linalg.LinAlgError(f"conjugate gradients did not reach a relative residual of {tol} "
                                f"in {max_iter} iterations")


def _dot_matrix(a, b) -> np.ndarray:
    """``sum_blocks a' b`` for per-term ``(num_levels, dim, m)`` blocks: an ``(m, m)`` matrix."""
    return sum(np.einsum("qdm,qdk->mk", x, z) for x, z in zip(a, b))
