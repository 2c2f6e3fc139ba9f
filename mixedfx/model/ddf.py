"""Exact linear-mixed-model quantities behind denominator degrees of freedom.

lmerTest's Satterthwaite method needs, as functions of the variance parameters
``varpar = (theta, sigma)`` (lme4's relative Cholesky factors, column-wise lower
triangle per term, then the residual sd), the (RE)ML deviance and the covariance of
the fixed effects.  :func:`deviance_and_fixed_cov` computes both in TensorFlow
(float64) by lme4's penalized least squares, exactly; :func:`satterthwaite_pieces`
differentiates them by autodiff (``tf.GradientTape``: the Hessian of the deviance and
the Jacobian of the covariance), where lmerTest uses numDeriv's Richardson finite
differences of the same deterministic functions.

pbkrtest's Kenward-Roger adjustment (:func:`kenward_roger_pieces`) is analytic in the
covariance parametrization (variances, covariances, residual variance) and forms
``n x n`` matrices, as pbkrtest does.

Both build each term's random-effects design densely (``n x levels*dim``): they are
meant for the data sizes on which these small-sample corrections matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixedfx._tf import native_logs_silenced, tf
from mixedfx.exceptions import DataError, ParameterError
from mixedfx.model.covariance import structure_for, term_structure
from mixedfx.model.joint import MixedModel, ModelParameters

__all__ = ["SatterthwaitePieces", "KenwardRogerPieces", "variance_parameters", "deviance_and_fixed_cov",
           "satterthwaite_pieces", "kenward_roger_pieces", "MAX_DENSE_DDF_ENTRIES"]

#: Largest ``n * q`` (rows times random-effect columns) of the dense design, and the
#: largest ``n * n`` of Kenward-Roger's matrices (about 400 MB of float64).
MAX_DENSE_DDF_ENTRIES = 50_000_000


def variance_parameters(params: ModelParameters, structures=()) -> np.ndarray:
    """lmerTest's ``varpar``: each term's relative Cholesky factor (column-wise lower triangle), then sigma.

    A term with a covariance structure (``structures``, per term its name; empty: all
    ``us``) has the structure's unconstrained parameters of its relative covariance
    instead (:meth:`mixedfx.model.covariance.CovarianceStructure.unconstrained`):
    Satterthwaite's df do not depend on the parametrization.

    Parameters
    ----------
    params : ModelParameters
        With ``family_params["sigma"]``; ``random_scale_tril`` is ``sigma`` times
        lme4's relative factor.
    structures : tuple of str

    Returns
    -------
    numpy.ndarray
        ``(theta_1, ..., theta_K, sigma)`` in lme4's order within a term.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import ModelParameters
    >>> from mixedfx.model.ddf import variance_parameters
    >>> L = np.array([[2.0, 0.0], [1.0, 4.0]])
    >>> variance_parameters(ModelParameters(np.zeros(1), (L,), {"sigma": 2.0})).tolist()
    [1.0, 0.5, 2.0, 2.0]
    """
    sigma = float(params.family_params["sigma"])
    parts = []
    structures = structures or ("us",) * len(params.random_scale_tril)
    for L, name in zip(params.random_scale_tril, structures):
        structure = structure_for(name)
        if not structure.unstructured:  # the structure's own parameters of the relative covariance
            parts.append(structure.unconstrained(L @ L.T / sigma**2))
            continue
        rows, cols = np.tril_indices(L.shape[0])
        order = np.lexsort((rows, cols))  # column-wise, as lme4's theta
        parts.append(L[rows[order], cols[order]] / sigma)
    return np.concatenate(parts + [np.array([sigma])])


def _dense_terms(model: MixedModel) -> list[np.ndarray]:
    """Each term's design as ``(n, num_levels, dim)``: row i's ``z`` in its level's slot."""
    n = model.n_obs
    total = sum(t.num_levels * t.dim for t in model.random_terms) * n
    if total > MAX_DENSE_DDF_ENTRIES:
        raise DataError(f"degrees of freedom by the exact dense path need {total:,} entries for the random-effects "
                        f"design (limit {MAX_DENSE_DDF_ENTRIES:,}); use ddf='residual' or 'asymptotic' at this size")
    out = []
    for term in model.random_terms:
        z = np.ones((n, 1)) if term.z is None else np.asarray(term.z, dtype=np.float64).reshape(n, -1)
        dense = np.zeros((n, term.num_levels, term.dim))
        dense[np.arange(n), np.asarray(term.group_index)] = z
        out.append(dense)
    return out


def _structures(model: MixedModel) -> tuple:
    return tuple(term_structure(t) for t in model.random_terms)


def _theta_sizes(model: MixedModel) -> list[int]:
    return [structure_for(name).n_params(t.dim) for t, name in zip(model.random_terms, _structures(model))]


def _relative_factor(varpar, d: int, name: str):
    """A term's relative Cholesky factor from its slice of ``varpar``: lme4's theta, or
    the structure's parameters (see :func:`variance_parameters`)."""
    structure = structure_for(name)
    if not structure.unstructured:
        return tf.linalg.cholesky(structure.covariance(varpar, d))
    rows, cols = np.tril_indices(d)
    order = np.lexsort((rows, cols))
    return tf.scatter_nd(np.stack([rows[order], cols[order]], axis=1), varpar, (d, d))


def deviance_and_fixed_cov(model: MixedModel, varpar, *, reml: bool, dense_terms=None):
    """The (RE)ML deviance profiled over the fixed effects, and their covariance, at ``varpar``.

    lmerTest's ``devfun_vp`` and ``get_covbeta``: with ``U = Z Lambda(theta)``,
    ``A = U'U + I``, ``R_X'R_X = X'X - X'U A^-1 U'X``, the ML deviance is
    ``log|A| + pwrss / sigma^2 + n log(2 pi sigma^2)``; REML adds
    ``log|R_X'R_X| - p log(2 pi sigma^2)``; the covariance is ``sigma^2 (R_X'R_X)^-1``.

    Parameters
    ----------
    model : MixedModel
        A Gaussian model with its response.
    varpar : tf.Tensor or array of float64
        As :func:`variance_parameters`.
    reml : bool
    dense_terms : list of numpy.ndarray, optional
        The dense designs (computed when omitted).

    Returns
    -------
    deviance : tf.Tensor, scalar
    fixed_cov : tf.Tensor of shape (p, p)

    Examples
    --------
    Minus twice :func:`mixedfx.model.gaussian_marginal`'s REML log-likelihood:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters, gaussian_marginal
    >>> from mixedfx.model.ddf import deviance_and_fixed_cov, variance_parameters
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> params = ModelParameters(np.array([3.0]), np.array([1.0]), {"sigma": 1.0})
    >>> dev, cov = deviance_and_fixed_cov(model, variance_parameters(params), reml=True)
    >>> round(float(dev), 6), round(float(-2 * gaussian_marginal(model, params).reml_log_likelihood), 6)
    (11.998538, 11.998538)
    >>> np.round(cov.numpy(), 4).tolist()
    [[0.75]]
    """
    dense_terms = _dense_terms(model) if dense_terms is None else dense_terms
    varpar = tf.convert_to_tensor(varpar, dtype=tf.float64)
    X = tf.constant(model.fixed_design, dtype=tf.float64)
    y_np = model.response - (0.0 if model.offset is None else model.offset)
    y = tf.constant(y_np, dtype=tf.float64)[:, None]
    n, p = model.fixed_design.shape
    sigma = varpar[-1]
    blocks, start = [], 0
    for dense, size, name in zip(dense_terms, _theta_sizes(model), _structures(model)):
        d = dense.shape[2]
        T = _relative_factor(varpar[start:start + size], d, name)
        start += size
        U_k = tf.einsum("nja,ab->njb", tf.constant(dense), T)  # rows' z' T in their level's slot
        blocks.append(tf.reshape(U_k, (n, -1)))
    U = tf.concat(blocks, axis=1)
    chol = tf.linalg.cholesky(tf.matmul(U, U, transpose_a=True) + tf.eye(U.shape[1], dtype=tf.float64))
    cu = tf.linalg.triangular_solve(chol, tf.matmul(U, y, transpose_a=True))
    cx = tf.linalg.triangular_solve(chol, tf.matmul(U, X, transpose_a=True))
    rxtrx = tf.matmul(X, X, transpose_a=True) - tf.matmul(cx, cx, transpose_a=True)
    rhs = tf.matmul(X, y, transpose_a=True) - tf.matmul(cx, cu, transpose_a=True)
    beta = tf.linalg.solve(rxtrx, rhs)
    pwrss = tf.reduce_sum(y * y) - tf.reduce_sum(cu * cu) - tf.reduce_sum(beta * rhs)
    log_det_a = 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)))
    two_pi_s2 = 2.0 * np.pi * sigma**2
    deviance = log_det_a + pwrss / sigma**2 + n * tf.math.log(two_pi_s2)
    if reml:
        deviance = deviance + tf.linalg.logdet(rxtrx) - p * tf.math.log(two_pi_s2)
    return deviance, sigma**2 * tf.linalg.inv(rxtrx)


@dataclass(frozen=True)
class SatterthwaitePieces:
    """What lmerTest's Satterthwaite method needs, at one ``varpar``.

    Attributes
    ----------
    varpar : numpy.ndarray of shape (k,)
    fixed_cov : numpy.ndarray of shape (p, p)
        The covariance of the fixed effects at ``varpar``.
    fixed_cov_jacobian : numpy.ndarray of shape (k, p, p)
        Its derivative in each variance parameter (lmerTest's ``Jac_list``).
    varpar_cov : numpy.ndarray of shape (k, k)
        ``2 H^+``, ``H`` the Hessian of the deviance, its pseudo-inverse over the
        eigenvalues above ``1e-8`` (lmerTest's ``vcov_varpar``).
    hessian_eigenvalues : numpy.ndarray of shape (k,)
    """

    varpar: np.ndarray
    fixed_cov: np.ndarray
    fixed_cov_jacobian: np.ndarray
    varpar_cov: np.ndarray
    hessian_eigenvalues: np.ndarray


def satterthwaite_pieces(model: MixedModel, params: ModelParameters, *, reml: bool, tol: float = 1e-8):
    """The Hessian of the exact deviance and the Jacobian of the fixed effects' covariance, by autodiff.

    Parameters
    ----------
    model : MixedModel
        A Gaussian model with its response and at least one random term.
    params : ModelParameters
        The variance parameters to evaluate at (the fixed effects are profiled).
    reml : bool
        Differentiate the REML deviance (True) or the ML deviance.
    tol : float, default 1e-8
        Eigenvalues of the Hessian at or below it are dropped from its inverse, as
        lmerTest does.

    Returns
    -------
    SatterthwaitePieces

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> from mixedfx.model.ddf import satterthwaite_pieces
    >>> g = np.repeat(np.arange(4), 3).astype(np.int32)
    >>> term = RandomTermData("g", g, None, 4)
    >>> y = np.array([1.0, 2.0, 1.5, 4.0, 5.0, 4.5, 2.0, 2.5, 3.0, 6.0, 5.0, 5.5])
    >>> model = MixedModel(Gaussian(), np.ones((12, 1)), y, (term,), ("Intercept",))
    >>> pieces = satterthwaite_pieces(model, ModelParameters(np.zeros(1), np.array([1.6]), {"sigma": 0.6}), reml=True)
    >>> pieces.fixed_cov_jacobian.shape, pieces.varpar_cov.shape
    ((2, 1, 1), (2, 2))
    """
    dense = _dense_terms(model)
    varpar = tf.Variable(variance_parameters(params, _structures(model)), dtype=tf.float64)
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            deviance, cov = deviance_and_fixed_cov(model, varpar, reml=reml, dense_terms=dense)
        gradient = inner.gradient(deviance, varpar)
    # the jacobians' vectorized graphs make TF 2.21 log "oneDNN supports DT_INT32 only on
    # platforms with AVX-512" to the terminal once per process: not the user's concern
    with native_logs_silenced():
        hessian = outer.jacobian(gradient, varpar).numpy()
        jacobian = outer.jacobian(cov, varpar).numpy()  # (p, p, k)
    del outer
    hessian = 0.5 * (hessian + hessian.T)
    values, vectors = np.linalg.eigh(hessian)
    keep = values > tol
    inverse = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
    return SatterthwaitePieces(varpar.numpy(), cov.numpy(), np.moveaxis(jacobian, -1, 0), 2.0 * inverse, values)


@dataclass(frozen=True)
class KenwardRogerPieces:
    """pbkrtest's ``vcovAdj`` result: the adjusted covariance and what ``Lb_ddf`` needs.

    Attributes
    ----------
    fixed_cov : numpy.ndarray of shape (p, p)
        ``Phi = (X' Sigma^-1 X)^-1``, unadjusted.
    adjusted_cov : numpy.ndarray of shape (p, p)
        ``Phi_A``, Kenward and Roger's adjusted covariance.
    P : numpy.ndarray of shape (g, p, p)
        ``-X' Sigma^-1 G_i Sigma^-1 X`` per covariance parameter.
    W : numpy.ndarray of shape (g, g)
        Twice the inverse of the expected information of the covariance parameters.
    """

    fixed_cov: np.ndarray
    adjusted_cov: np.ndarray
    P: np.ndarray
    W: np.ndarray


def _covariance_derivatives(model: MixedModel, dense_terms) -> list[np.ndarray]:
    """pbkrtest's ``G_i``: ``dSigma / dgamma_i`` per element of each term's structure's
    linear basis (:meth:`~mixedfx.model.covariance.CovarianceStructure.linear_basis`;
    for ``us`` every variance and covariance, lower triangle), then ``I``."""
    G = []
    for dense, name in zip(dense_terms, _structures(model)):
        flat = dense.reshape(dense.shape[0], -1)  # (n, levels * dim)
        for basis in structure_for(name).linear_basis(dense.shape[2]):
            mixed = np.einsum("mlb,ab->mla", dense, basis).reshape(flat.shape)
            G.append(flat @ mixed.T)  # sum over levels of D_l basis D_l'
    G.append(np.eye(model.n_obs))
    return G


def kenward_roger_pieces(model: MixedModel, params: ModelParameters) -> KenwardRogerPieces:
    """Kenward and Roger's adjusted covariance of the fixed effects (pbkrtest's ``vcovAdj16_internal``).

    In the covariance parametrization ``Sigma = sum_i gamma_i G_i`` (each term's
    variances and covariances, then the residual variance), with ``Phi`` the
    unadjusted covariance, ``P_i = -X'Sigma^-1 G_i Sigma^-1 X``,
    ``Q_ij = X'Sigma^-1 G_i Sigma^-1 G_j Sigma^-1 X``, ``W = 2 I_E^-1`` (the expected
    information, ``tr(Sigma^-1 G_i Sigma^-1 G_j)`` less its fixed-effects
    corrections) and ``Phi_A = Phi + 2 Phi (sum_ij W_ij (Q_ij - P_i Phi P_j)) Phi``.
    Dense ``n x n`` algebra, as pbkrtest.

    Parameters
    ----------
    model : MixedModel
        A Gaussian model with its response and at least one random term.
    params : ModelParameters
        The (REML) variance parameters.

    Returns
    -------
    KenwardRogerPieces

    Raises
    ------
    DataError
        When ``n * n`` exceeds :data:`MAX_DENSE_DDF_ENTRIES`.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> from mixedfx.model.ddf import kenward_roger_pieces
    >>> g = np.repeat(np.arange(4), 3).astype(np.int32)
    >>> model = MixedModel(Gaussian(), np.ones((12, 1)), np.zeros(12), (RandomTermData("g", g, None, 4),),
    ...                    ("Intercept",))
    >>> kr = kenward_roger_pieces(model, ModelParameters(np.zeros(1), np.array([1.6]), {"sigma": 0.6}))
    >>> bool(kr.adjusted_cov[0, 0] >= kr.fixed_cov[0, 0])
    True
    """
    n = model.n_obs
    if n * n > MAX_DENSE_DDF_ENTRIES:
        raise DataError(f"Kenward-Roger forms {n} x {n} matrices (as pbkrtest); above the limit of "
                        f"{MAX_DENSE_DDF_ENTRIES:,} entries use ddf='satterthwaite'")
    nonlinear = [structure_for(name).name for term, name in zip(model.random_terms, _structures(model))
                 if structure_for(name).linear_basis(term.dim) is None]
    if nonlinear:
        raise ParameterError(f"Kenward-Roger degrees of freedom are not yet available for covariance structures "
                             f"nonlinear in their parameters ({', '.join(nonlinear)}; us, diag, homdiag and homcs "
                             f"have them): use ddf='satterthwaite'")
    dense = _dense_terms(model)
    sigma = float(params.family_params["sigma"])
    X = model.fixed_design
    Sigma = sigma**2 * np.eye(n)
    for D, L in zip(dense, params.random_scale_tril):
        ZC = np.einsum("nja,ab->njb", D, L @ L.T)
        Sigma += np.einsum("nja,mja->nm", ZC, D)
    chol = np.linalg.cholesky(Sigma)
    Sigma_inv = np.linalg.inv(chol).T @ np.linalg.inv(chol)
    G = _covariance_derivatives(model, dense)
    TT = Sigma_inv @ X
    HH = [g @ Sigma_inv for g in G]
    OO = [h @ X for h in HH]
    Phi = np.linalg.inv(X.T @ TT)
    k = len(G)
    P = np.stack([-(o.T @ TT) for o in OO])
    P = 0.5 * (P + np.transpose(P, (0, 2, 1)))
    Q = [[OO[r].T @ Sigma_inv @ OO[s] for s in range(k)] for r in range(k)]
    info = np.empty((k, k))
    for r in range(k):
        for s in range(r, k):
            info[r, s] = info[s, r] = (np.sum(HH[r].T * HH[s]) - 2 * np.sum(Phi * Q[r][s])
                                       + np.sum((Phi @ P[r]) * (P[s] @ Phi)))
    W = 2 * (np.linalg.inv(info) if np.min(np.abs(np.linalg.eigvalsh(info))) > 1e-10 else np.linalg.pinv(info))
    W = 0.5 * (W + W.T)
    UU = np.zeros_like(Phi)
    for r in range(k):
        for s in range(k):
            UU += W[r, s] * (Q[r][s] - P[r] @ Phi @ P[s])  # pbkrtest's r > s half is the transpose
    return KenwardRogerPieces(Phi, Phi + 2 * Phi @ UU @ Phi, P, W)
