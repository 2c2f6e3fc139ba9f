"""Block elimination of ``A = U' diag(w) U + I``, the random-effects precision.

``U`` has one column per (term, level, coefficient): row ``i`` holds ``z_i' L_k`` in
the columns of its level of term ``k`` (``L_k`` the term's Cholesky factor, so the
whitened effects ``v`` with ``b = L v`` are standard normal a priori).  ``A`` is never
formed whole.  The term with the most columns comes first; its block is block
diagonal (one ``dim x dim`` block per level) because each row belongs to one level,
so it is eliminated exactly and only the Schur complement over the remaining terms'
columns is factored densely (MixedModels.jl orders its blocks the same way).  For
InstEval that is a 1,142 x 1,142 Cholesky factor instead of 4,114 x 4,114.

The coupling block between the first term and the rest is sparse (a row touches one
level of each term, so it has at most one non-zero per row and pair of coefficients)
and is kept as a :mod:`scipy.sparse` matrix, so memory grows with the rows plus the
square of the remaining terms' columns, never with their product with the first
term's.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, sparse

__all__ = ["BlockSystem", "DenseBlockTooLarge"]


#: Default bound on the entries of the dense Schur block (about 480 MB of float64).
MAX_DENSE_ENTRIES = 60_000_000


class DenseBlockTooLarge(RuntimeError):
    """The dense Schur block would not fit the memory bound.

    The estimators catch it: Gaussian fits then solve the same systems iteratively
    (:func:`~mixedfx.model.gaussian_marginal` with ``solver="conjugate_gradients"``,
    or ``solver="auto"``), without the
    log-likelihood; the other families go without the exact quantities (with a
    warning).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import BlockSystem, DenseBlockTooLarge
    >>> g = RandomTermData("g", np.array([0, 1, 2, 0, 1, 2], dtype=np.int32), None, 3)
    >>> h = RandomTermData("h", np.array([0, 0, 0, 1, 1, 1], dtype=np.int32), None, 2)
    >>> try:
    ...     BlockSystem([g, h], [np.ones((6, 1)), np.ones((6, 1))], max_dense_entries=3)
    ... except DenseBlockTooLarge as error:
    ...     print(error)
    exact computation needs a dense block of 2 x 2 entries (the columns of the random terms other than the largest, 'g'); the bound is 3
    """


class BlockSystem:
    """``A = U' diag(w) U + I`` in blocks, with its log-determinant, solves and square root.

    Parameters
    ----------
    terms : sequence of RandomTermData
    scaled : sequence of numpy.ndarray
        Per term, the rows of ``U`` restricted to its coefficients: ``z_i' L_k``
        (shape ``(n_rows, dim)``).
    weights : numpy.ndarray of shape (n_rows,), optional
        Row weights ``w`` (all ones when omitted).
    max_dense_entries : int, optional
        Bound on the entries of the dense Schur block (the remaining terms' columns,
        squared); default :data:`MAX_DENSE_ENTRIES`.

    Raises
    ------
    DenseBlockTooLarge

    Examples
    --------
    Two crossed intercept terms on six rows; the log-determinant and a solve agree
    with the dense ``A``:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import BlockSystem
    >>> g = RandomTermData("g", np.array([0, 1, 2, 0, 1, 2], dtype=np.int32), None, 3)
    >>> h = RandomTermData("h", np.array([0, 0, 0, 1, 1, 1], dtype=np.int32), None, 2)
    >>> system = BlockSystem([g, h], [np.full((6, 1), 0.8), np.full((6, 1), 0.5)])
    >>> U = np.zeros((6, 5))
    >>> U[np.arange(6), g.group_index] = 0.8
    >>> U[np.arange(6), 3 + h.group_index] = 0.5
    >>> A = U.T @ U + np.eye(5)
    >>> bool(np.isclose(system.logdet, np.linalg.slogdet(A)[1]))
    True
    >>> y = np.arange(6.0)[:, None]
    >>> x1, xr = system.solve(*system.project(y))
    >>> x = np.concatenate([x1.ravel(), xr.ravel()])  # g's block first: it has the most columns
    >>> bool(np.allclose(x, np.linalg.solve(A, U.T @ y).ravel()))
    True
    """

    def __init__(self, terms, scaled, weights=None, *, max_dense_entries: int | None = None):
        self.terms = terms
        self.scaled = [np.asarray(u, dtype=np.float64) for u in scaled]
        n = self.scaled[0].shape[0]
        self.weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        self._layout([t.num_levels for t in terms], [u.shape[1] for u in self.scaled], max_dense_entries)
        self._factor(*self._cross_products())

    @classmethod
    def from_cross_products(cls, num_levels, dims, a11, a1r, arr, *, max_dense_entries: int | None = None):
        """The system from its sums over rows, computed elsewhere (per shard, then summed).

        Parameters
        ----------
        num_levels, dims : sequence of int
            Per term.
        a11 : numpy.ndarray of shape (q1, d1, d1)
            ``U_1' diag(w) U_1`` level by level, for the first term of :meth:`order`.
        a1r : numpy.ndarray or scipy.sparse matrix of shape (q1 * d1, width)
            ``U_1' diag(w) U_rest``.
        arr : numpy.ndarray of shape (width, width)
            ``U_rest' diag(w) U_rest``.
        max_dense_entries : int, optional

        Returns
        -------
        BlockSystem
            It solves and factors as one built from rows; it has no rows, so
            :meth:`project` is not available.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx.design import RandomTermData
        >>> from mixedfx.model import BlockSystem
        >>> g = RandomTermData("g", np.array([0, 1, 2, 0, 1, 2], dtype=np.int32), None, 3)
        >>> h = RandomTermData("h", np.array([0, 0, 0, 1, 1, 1], dtype=np.int32), None, 2)
        >>> rows = BlockSystem([g, h], [np.full((6, 1), 0.8), np.full((6, 1), 0.5)])
        >>> a11, a1r, arr = rows._cross_products()
        >>> sums = BlockSystem.from_cross_products([3, 2], [1, 1], a11, a1r.toarray(), arr.toarray())
        >>> bool(np.isclose(sums.logdet, rows.logdet))
        True
        """
        system = cls.__new__(cls)
        system.terms, system.scaled, system.weights = None, None, None
        system._layout(list(num_levels), list(dims), max_dense_entries)
        system._factor(np.asarray(a11, dtype=np.float64), sparse.csr_matrix(a1r, dtype=np.float64),
                       sparse.csr_matrix(arr, dtype=np.float64))
        return system

    @staticmethod
    def order(num_levels, dims) -> list[int]:
        """Terms in elimination order: the one with the most columns first."""
        return sorted(range(len(num_levels)), key=lambda k: -num_levels[k] * dims[k])

    @classmethod
    def check_size(cls, terms, *, max_dense_entries: int | None = None) -> None:
        """Raise :class:`DenseBlockTooLarge` if ``terms``' dense block would exceed the
        bound, before any sum over rows is made (at ten million rows the scaled designs
        alone are a few hundred MB, for nothing when the bound then refuses)."""
        num_levels, dims = [t.num_levels for t in terms], [t.dim for t in terms]
        order = cls.order(num_levels, dims)
        width = sum(num_levels[k] * dims[k] for k in order[1:])
        _check_width(width, terms[order[0]].name, max_dense_entries)

    def _layout(self, num_levels, dims, max_dense_entries):
        self.num_levels, self.dims = list(num_levels), list(dims)
        order = self.order(self.num_levels, self.dims)
        self.first, self.rest = order[0], order[1:]
        self.q1, self.d1 = self.num_levels[self.first], self.dims[self.first]
        self.offsets, width = {}, 0
        for k in self.rest:
            self.offsets[k] = width
            width += self.num_levels[k] * self.dims[k]
        self.width = width
        _check_width(width, self.terms[self.first].name if self.terms is not None else f"term {self.first}",
                     max_dense_entries)

    def columns(self, k: int, c: int) -> np.ndarray:
        """Column of ``U`` holding coefficient ``c`` of term ``k``, per row (within its block)."""
        index = self.terms[k].group_index.astype(np.int64) * self.dims[k] + c
        return index if k == self.first else self.offsets[k] + index

    def _cross_products(self):
        """``A - I`` in blocks, from the rows: ``a11`` (per level), ``a1r`` and ``arr`` (sparse)."""
        q1, d1, width, w = self.q1, self.d1, self.width, self.weights
        u1 = self.scaled[self.first]
        g1 = self.terms[self.first].group_index.astype(np.int64)
        a11 = np.zeros((q1, d1, d1))
        for a in range(d1):
            for b in range(d1):
                a11[:, a, b] = np.bincount(g1, weights=w * u1[:, a] * u1[:, b], minlength=q1)
        # U_1' W U_rest and U_rest' W U_rest, one sparse matrix each (duplicates summed)
        first_rows = [self.columns(self.first, a) for a in range(d1)]
        rest_cols = [(self.columns(k, c), self.scaled[k][:, c]) for k in self.rest for c in range(self.dims[k])]
        a1r = sparse.csr_matrix((q1 * d1, width))
        arr = sparse.csr_matrix((width, width))
        for col_k, uk in rest_cols:
            uk = w * uk
            for a in range(d1):
                a1r = a1r + sparse.coo_matrix((uk * u1[:, a], (first_rows[a], col_k)), shape=(q1 * d1, width)).tocsr()
            for col_m, um in rest_cols:
                arr = arr + sparse.coo_matrix((uk * um, (col_k, col_m)), shape=(width, width)).tocsr()
        return a11, a1r, arr

    def _factor(self, a11, a1r, arr):
        width = self.width
        a11 = a11 + np.eye(self.d1)
        self.a11 = a11
        self.chol11 = np.linalg.cholesky(a11)
        self.inv11 = np.linalg.inv(a11)
        self.a1r = a1r
        # A11^-1 A1R: the block-diagonal inverse applied level by level keeps the sparsity
        self.inv_a1r = (_block_diagonal(self.inv11) @ a1r).tocsr()
        schur = arr.toarray() + np.eye(width) - (a1r.T @ self.inv_a1r).toarray()
        self.chol = linalg.cholesky(schur, lower=True) if width else np.zeros((0, 0))
        self.logdet = float(2.0 * np.sum(np.log(np.diagonal(self.chol11, axis1=1, axis2=2)))
                            + 2.0 * np.sum(np.log(np.diag(self.chol))))

    # -- products and solves --------------------------------------------------------------
    def project(self, W: np.ndarray, *, weighted: bool = True):
        """``U' diag(w) W`` (or ``U' W`` when not ``weighted``) for the columns of ``W``:
        (first block ``(q1, d1, m)``, rest ``(width, m)``)."""
        m = W.shape[1]
        ww = self.weights[:, None] * W if weighted else W
        u1, g1 = self.scaled[self.first], self.terms[self.first].group_index.astype(np.int64)
        v1 = np.zeros((self.q1, self.d1, m))
        for a in range(self.d1):
            for j in range(m):
                v1[:, a, j] = np.bincount(g1, weights=u1[:, a] * ww[:, j], minlength=self.q1)
        vr = np.zeros((self.width, m))
        for k in self.rest:
            for c in range(self.dims[k]):
                for j in range(m):
                    vr[:, j] += np.bincount(self.columns(k, c), weights=self.scaled[k][:, c] * ww[:, j],
                                            minlength=self.width)
        return v1, vr

    def solve(self, v1, vr):
        """``A^-1 v`` for ``v`` in the block layout of :meth:`project`."""
        m = v1.shape[2]
        t = vr - self.inv_a1r.T @ v1.reshape(self.q1 * self.d1, m)
        xr = linalg.cho_solve((self.chol, True), t) if self.width else t
        x1 = np.matmul(self.inv11, v1 - (self.a1r @ xr).reshape(self.q1, self.d1, m))
        return x1, xr

    def quadratic(self, v1, vr, x1, xr) -> np.ndarray:
        """``v' A^-1 v`` for every pair of columns, given ``x = A^-1 v``."""
        m = v1.shape[2]
        return v1.reshape(self.q1 * self.d1, m).T @ x1.reshape(self.q1 * self.d1, m) + vr.T @ xr

    def inverse_square_root(self, eps1, epsr):
        """``L^-T eps`` with ``A = L L'``: maps standard normal draws to ``N(0, A^-1)``.

        ``eps1`` has shape ``(q1, d1, m)``, ``epsr`` ``(width, m)``.
        """
        m = eps1.shape[2]
        xr = linalg.solve_triangular(self.chol, epsr, lower=True, trans="T") if self.width else epsr
        # first block: C1' x1 = eps1 - C1^-1 A1R xr
        coupling = (self.a1r @ xr).reshape(self.q1, self.d1, m)
        inner = np.linalg.solve(self.chol11, coupling)
        rhs = eps1 - inner
        x1 = np.linalg.solve(np.transpose(self.chol11, (0, 2, 1)), rhs)
        return x1, xr

    def to_terms(self, x1, xr, column: int = 0):
        """Split a solution into per-term ``(num_levels, dim)`` arrays (whitened scale)."""
        out = [None] * len(self.num_levels)
        out[self.first] = x1[:, :, column]
        for k in self.rest:
            q, d = self.num_levels[k], self.dims[k]
            out[k] = xr[self.offsets[k]:self.offsets[k] + q * d, column].reshape(q, d)
        return out

    def inverse_diagonal_blocks(self, *, chunk_entries: int = 8_000_000):
        """Per term, the ``dim x dim`` diagonal blocks of ``A^-1``, shape ``(num_levels, dim, dim)``.

        The first term's blocks, ``A11^-1 + (A11^-1 A1R) S^-1 (A11^-1 A1R)'`` per level
        (``S`` the Schur complement), are computed a chunk of levels at a time, so
        that no dense ``(levels x width)`` matrix is formed whole.
        """
        width = self.width
        chol_inv = linalg.solve_triangular(self.chol, np.eye(width), lower=True) if width else np.zeros((0, 0))
        out = [None] * len(self.num_levels)
        first = self.inv11.copy()
        if width:
            per_chunk = max(1, chunk_entries // (self.d1 * width))
            for start in range(0, self.q1, per_chunk):
                stop = min(self.q1, start + per_chunk)
                rows = self.inv_a1r[start * self.d1:stop * self.d1]
                cross = np.asarray((rows @ chol_inv.T)).reshape(stop - start, self.d1, width)
                first[start:stop] += np.matmul(cross, cross.transpose(0, 2, 1))
        out[self.first] = first
        for k in self.rest:
            # the diagonal blocks of S^-1 = C^-T C^-1, from the columns of C^-1 alone
            q, d = self.num_levels[k], self.dims[k]
            columns = chol_inv[:, self.offsets[k]:self.offsets[k] + q * d].reshape(width, q, d)
            out[k] = np.einsum("iqa,iqb->qab", columns, columns)
        return out


def _block_diagonal(blocks: np.ndarray) -> sparse.csr_matrix:
    """The sparse block-diagonal matrix of ``blocks`` (shape ``(q, d, d)``)."""
    q, d, _ = blocks.shape
    rows = (np.arange(q)[:, None, None] * d + np.arange(d)[None, :, None]) + np.zeros((1, 1, d), dtype=np.int64)
    cols = (np.arange(q)[:, None, None] * d + np.arange(d)[None, None, :]) + np.zeros((1, d, 1), dtype=np.int64)
    return sparse.csr_matrix((blocks.ravel(), (rows.ravel(), cols.ravel())), shape=(q * d, q * d))


def _check_width(width: int, largest: str, max_dense_entries: int | None) -> None:
    """Raise :class:`DenseBlockTooLarge` if the dense block, ``width`` square, exceeds the
    bound (``largest``: the term eliminated first, named in the message)."""
    max_dense_entries = MAX_DENSE_ENTRIES if max_dense_entries is None else max_dense_entries
    if width * width > max_dense_entries:
        raise DenseBlockTooLarge(
            f"exact computation needs a dense block of {width} x {width} entries (the columns of the random "
            f"terms other than the largest, {largest!r}); the bound is {max_dense_entries:,}"
        )
