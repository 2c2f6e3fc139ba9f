"""glmmTMB's reduced-rank covariance structure, ``rr(x | g, d = 2)``.

The covariance of a level's ``dim`` coefficients is ``Lambda Lambda'``, ``Lambda`` a
``dim x d`` matrix of loadings (a factor-analytic model of the random effects), plus a
fixed floor that keeps it full rank.  The structure owns its parameters, its M-step (in
closed form), its report, its profile coordinates (the sds, the loadings' directions as
nuisance coordinates), and two hooks a singular covariance needs from Monte Carlo EM:
the E-step samples its effects whitened (``whitened_e_step``) and the parameter
expansion acts on the loadings' span (:meth:`ReducedRank.adapt_expansion`).  Registered in
:data:`mixedfx.model.covariance.STRUCTURES`.
"""

from __future__ import annotations

import numpy as np

from mixedfx._tf import tf
from mixedfx.model.covariance import CovarianceStructure

__all__ = ["ReducedRank"]


class ReducedRank(CovarianceStructure):
    """``rr``: glmmTMB's reduced-rank covariance ``Lambda Lambda'`` (``rr(x | g, d = 2)``),
    ``Lambda`` a ``dim x d`` matrix of loadings with zeros above its diagonal (glmmTMB's
    ``theta``, column by column: ``dim d - d(d - 1)/2`` parameters; ``d`` 2 by default, as
    glmmTMB's), plus a fixed relative floor ``floor * mean(diag(Lambda Lambda')) I``.

    ``Lambda Lambda'`` has rank ``d < dim``: the floor (1e-8 of the mean variance) keeps the
    covariance, its Cholesky factor and the JointDistribution's density full rank, and it is
    scale-free, so the scalar expansions of PX-EM keep the structure.  The M-step is then in
    closed form, probabilistic PCA at a fixed noise (Tipping & Bishop 1999): ``Lambda`` from
    the ``d`` leading eigenpairs ``(lambda_i, u_i)`` of the mean second moment ``S``,
    ``u_i sqrt(max(lambda_i - floor tr(S) / dim, 0))``.  Loadings are identified up to a
    rotation; :meth:`loadings` rotates them to glmmTMB's lower-triangular form.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model.covariance import structure_for
    >>> rr = structure_for("rr", arguments=(("d", "1"),))
    >>> rr.n_params(3), structure_for("rr").n_params(4)  # 3 loadings; d = 2: 4 + 3
    (3, 7)
    >>> cov = rr.covariance(np.array([1.0, -0.5, 2.0]), 3).numpy()
    >>> (cov - rr.floor * np.trace(cov) / 3 / (1 + rr.floor) * np.eye(3)).round(6).tolist()
    [[1.0, -0.5, 2.0], [-0.5, 0.25, -1.0], [2.0, -1.0, 4.0]]
    >>> rr.loadings(cov).round(6).tolist()
    [[1.0], [-0.5], [2.0]]
    """

    name = "rr"
    expansion = "full"
    correlates = True
    whitened_e_step = True
    floor = 1e-8  # the covariance's floor, relative to its mean variance

    def __init__(self, rank: int = 2):
        self.rank = int(rank)

    def linear_basis(self, dim: int):
        """None: ``Lambda Lambda'`` is not linear in the loadings (Kenward-Roger refuses it)."""
        return None

    @classmethod
    def build(cls, *, coordinates=None, arguments=()) -> CovarianceStructure:
        """``d`` from ``(("d", "1"),)`` or the positional ``(("", "1"),)`` (the parser has
        checked it is a positive integer); 2 when not written."""
        values = dict(arguments)
        return cls(int(values.get("d", values.get("", 2))))

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.rank == other.rank

    def __hash__(self) -> int:
        return hash((self.name, self.rank))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank})"

    def n_params(self, dim: int) -> int:
        d = min(self.rank, dim)
        return dim * d - d * (d - 1) // 2

    def _slots(self, dim: int) -> np.ndarray:
        """The loadings' free entries ``(row, column)``, column by column (glmmTMB's order)."""
        return np.array([(i, j) for j in range(min(self.rank, dim)) for i in range(j, dim)], dtype=np.int64)

    def _floored(self, low_rank, dim: int):
        return low_rank + self.floor * tf.linalg.trace(low_rank) / dim * tf.eye(dim, dtype=tf.float64)

    def covariance(self, params, dim: int):
        params = tf.convert_to_tensor(params, tf.float64)
        loadings = tf.scatter_nd(self._slots(dim), params, (dim, min(self.rank, dim)))
        return self._floored(tf.linalg.matmul(loadings, loadings, transpose_b=True), dim)

    def project(self, second_moment, n_levels):
        """Closed form: probabilistic PCA of the mean second moment at the fixed floor."""
        S = tf.convert_to_tensor(second_moment, tf.float64) / tf.cast(n_levels, tf.float64)
        S = 0.5 * (S + tf.transpose(S))
        dim, d = int(S.shape[0]), min(self.rank, int(S.shape[0]))
        noise = self.floor * tf.linalg.trace(S) / dim
        values, vectors = tf.linalg.eigh(S)  # ascending
        loadings = vectors[:, dim - d:] * tf.sqrt(tf.maximum(values[dim - d:] - noise, 0.0))[None, :]
        return self._floored(tf.linalg.matmul(loadings, loadings, transpose_b=True), dim)

    def adapt_expansion(self, scale_matrix, second_moment):
        """``C`` on the span of the second moment's ``d`` leading eigenvectors (the loadings'
        span, where the effects vary: there ``C`` maps the loadings to the regression of
        the data on the factor scores, the factor model's M-step), the identity across it
        (where the effects stay within the floor and the regression's ``C`` is noise).

        Without the expansion the loadings' direction could not move: the effects' second
        moment lies along the current loadings up to the floor, so its projection keeps
        them (EM with a singular covariance stalls)."""
        S = tf.convert_to_tensor(second_moment, tf.float64)
        dim = int(S.shape[0])
        span = tf.linalg.eigh(0.5 * (S + tf.transpose(S)))[1][:, dim - min(self.rank, dim):]
        P = tf.linalg.matmul(span, span, transpose_b=True)
        C = tf.convert_to_tensor(scale_matrix, tf.float64)
        return tf.linalg.matmul(C, P) + tf.eye(dim, dtype=tf.float64) - P

    def average(self, covs) -> np.ndarray:
        """The window's mean matrix, which has rank above ``d``, projected back to rank
        ``d`` (:meth:`project`)."""
        return self.project(np.mean(np.asarray(covs, dtype=np.float64), axis=0), 1).numpy()

    def loadings(self, cov) -> np.ndarray:
        """glmmTMB's loadings of a covariance in the structure (numpy, ``dim x d``): zero
        above the diagonal, the diagonal non-negative, ``Lambda Lambda'`` the covariance
        less its floor (the leading ``d`` eigenpairs, rotated by a QR factorization)."""
        cov = np.asarray(cov, dtype=np.float64)
        dim = cov.shape[0]
        d = min(self.rank, dim)
        noise = self.floor * np.trace(cov) / (dim * (1.0 + self.floor))
        values, vectors = np.linalg.eigh(0.5 * (cov + cov.T) - noise * np.eye(dim))
        loadings = vectors[:, dim - d:] * np.sqrt(np.maximum(values[dim - d:], 0.0))
        lower = np.linalg.qr(loadings.T)[1].T  # loadings' = Q R: loadings = R' Q', R' lower
        signs = np.where(np.diag(lower) < 0.0, -1.0, 1.0)
        return lower * signs[None, :]

    def unconstrained(self, cov) -> np.ndarray:
        """The free loadings of :meth:`loadings`, column by column."""
        cov = np.asarray(cov, dtype=np.float64)
        rows, cols = self._slots(cov.shape[0]).T
        return self.loadings(cov)[rows, cols]

    def start(self, cov):
        """:meth:`unconstrained` (eagerly: the M-step needs no start)."""
        return tf.constant(self.unconstrained(np.asarray(cov)))

    def natural_coordinates(self, coef_names) -> list[tuple]:
        """Profile intervals' coordinates (:mod:`mixedfx.profile`): an sd per coefficient,
        ``sd(g, coef)`` (the norm of the loadings' row, glmmTMB's ``VarCorr`` sd), then each
        later row's direction: row ``i`` of ``Lambda`` is ``sd_i w_i / |w_i|``, ``w_i`` its
        ``min(i + 1, d)`` free entries, unbounded and not reported (the fourth entry
        ``False``: optimized at each profile point).  The first row's direction is fixed
        (its diagonal non-negative, as :meth:`loadings`).

        ``w_i`` has one entry more than the sphere's angles (its length is free): every
        direction, a zero diagonal included, is a smooth interior point, with no poles of
        spherical coordinates; at ``d = 1`` a row's direction is its sign, which no
        continuous path changes, so the profile keeps the estimate's signs.

        Examples
        --------
        >>> from mixedfx.model.covariance import structure_for
        >>> coords = structure_for("rr", arguments=(("d", "1"),)).natural_coordinates(["a", "b", "c"])
        >>> coords[:3]
        [('sd', 'a', (0.0, None)), ('sd', 'b', (0.0, None)), ('sd', 'c', (0.0, None))]
        >>> coords[3:]
        [('direction1', 'b', (None, None), False), ('direction1', 'c', (None, None), False)]
        """
        names = list(coef_names)
        out = [("sd", c, (0.0, None)) for c in names]
        for i in range(1, len(names)):
            out += [(f"direction{j + 1}", names[i], (None, None), False) for j in range(min(i + 1, self.rank))]
        return out

    def natural_values(self, cov) -> np.ndarray:
        """The sds of :meth:`loadings`' rows, then each later row's unit direction (a row of
        zeros: the unit vector of its last free entry)."""
        loadings = self.loadings(cov)
        dim, d = loadings.shape
        sds = np.sqrt(np.sum(loadings ** 2, axis=1))
        out = [sds]
        for i in range(1, dim):
            k = min(i + 1, d)
            out.append(loadings[i, :k] / sds[i] if sds[i] > 0 else np.eye(k)[k - 1])
        return np.concatenate(out)

    def natural_covariance(self, values, dim: int) -> np.ndarray:
        """``Lambda Lambda'`` plus the floor, ``Lambda``'s rows ``sd_i w_i / |w_i|`` (``NaN``
        where some ``w_i`` is zero: no direction)."""
        values = np.asarray(values, dtype=np.float64)
        d = min(self.rank, dim)
        loadings = np.zeros((dim, d))
        loadings[0, 0] = values[0]
        start = dim
        for i in range(1, dim):
            k = min(i + 1, d)
            w, start = values[start:start + k], start + k
            norm = np.sqrt(np.sum(w ** 2))
            if not norm > 0:
                return np.full((dim, dim), np.nan)
            loadings[i, :k] = values[i] * w / norm
        low_rank = loadings @ loadings.T
        return low_rank + self.floor * np.trace(low_rank) / dim * np.eye(dim)

    def components(self, coef_names, cov) -> list[tuple]:
        """As glmmTMB's ``VarCorr`` of ``rr``: an sd per coefficient and the correlation of
        each pair (of ``Lambda Lambda'``; the floor shifts them by about 1e-8)."""
        return CovarianceStructure().components(coef_names, cov)

    def label(self, cov) -> str:
        return f"(rr, d = {self.rank})"

    def validate(self, *, coef_names, intercept: bool, factor_levels) -> str | None:
        reason = super().validate(coef_names=coef_names, intercept=intercept, factor_levels=factor_levels)
        if reason is None and self.rank >= len(coef_names):
            return (f"rr() has rank d = {self.rank}, which must be below its number of coefficients "
                    f"({len(coef_names)}): write d = 1 .. {len(coef_names) - 1}")
        return reason
