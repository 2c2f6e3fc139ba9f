"""Block elimination of ``A = U' diag(w) U + I``, the random-effects precision.

``U`` has one column per (term, level, coefficient): row ``i`` holds ``z_i' L_k`` in
the columns of its level of term ``k`` (``L_k`` the term's Cholesky factor, so the
whitened effects ``v`` with ``b = L v`` are standard normal a priori).  ``A`` is never
formed whole.  The term with the most columns comes first; its block is block
diagonal (one ``dim x dim`` block per level) because each row belongs to one level,
so it is eliminated exactly and only the Schur complement over the remaining terms'
columns is factored densely (MixedModels.jl orders its blocks the same way).  For
InstEval that is a 1,142 x 1,142 Cholesky factor instead of 4,114 x 4,114.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

__all__ = ["BlockSystem", "DenseBlockTooLarge"]


class DenseBlockTooLarge(RuntimeError):
    """The dense Schur block would not fit the memory bound."""


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
    max_dense_entries : int
        Bound on the entries of the dense blocks.

    Raises
    ------
    DenseBlockTooLarge
    """

    def __init__(self, terms, scaled, weights=None, *, max_dense_entries: int = 60_000_000):
        self.terms = terms
        self.scaled = [np.asarray(u, dtype=np.float64) for u in scaled]
        n = self.scaled[0].shape[0]
        self.weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        self._layout([t.num_levels for t in terms], [u.shape[1] for u in self.scaled], max_dense_entries)
        self._factor(*self._cross_products())

    @classmethod
    def from_cross_products(cls, num_levels, dims, a11, a1r, arr, *, max_dense_entries: int = 60_000_000):
        """The system from its sums over rows, computed elsewhere (per shard, then summed).

        Parameters
        ----------
        num_levels, dims : sequence of int
            Per term.
        a11 : numpy.ndarray of shape (q1, d1, d1)
            ``U_1' diag(w) U_1`` level by level, for the first term of :meth:`order`.
        a1r : numpy.ndarray of shape (q1 * d1, width)
            ``U_1' diag(w) U_rest``.
        arr : numpy.ndarray of shape (width, width)
            ``U_rest' diag(w) U_rest``.

        Such a system solves and factors as one built from rows; it has no rows, so
        :meth:`project` is not available.
        """
        system = cls.__new__(cls)
        system.terms, system.scaled, system.weights = None, None, None
        system._layout(list(num_levels), list(dims), max_dense_entries)
        system._factor(np.asarray(a11, dtype=np.float64), np.asarray(a1r, dtype=np.float64),
                       np.asarray(arr, dtype=np.float64))
        return system

    @staticmethod
    def order(num_levels, dims) -> list[int]:
        """Terms in elimination order: the one with the most columns first."""
        return sorted(range(len(num_levels)), key=lambda k: -num_levels[k] * dims[k])

    def _layout(self, num_levels, dims, max_dense_entries):
        self.num_levels, self.dims = num_levels, dims
        order = self.order(num_levels, dims)
        self.first, self.rest = order[0], order[1:]
        self.q1, self.d1 = num_levels[self.first], dims[self.first]
        self.offsets, width = {}, 0
        for k in self.rest:
            self.offsets[k] = width
            width += num_levels[k] * dims[k]
        self.width = width
        if self.q1 * self.d1 * width + width * width > max_dense_entries:
            raise DenseBlockTooLarge(
                f"exact computation needs dense blocks of {self.q1 * self.d1} x {width} and {width} x {width} entries"
            )

    def columns(self, k: int, c: int) -> np.ndarray:
        """Column of ``U`` holding coefficient ``c`` of term ``k``, per row (within its block)."""
        index = self.terms[k].group_index.astype(np.int64) * self.dims[k] + c
        return index if k == self.first else self.offsets[k] + index

    def _cross_products(self):
        """``A - I`` in blocks, from the rows: ``a11``, ``a1r``, ``arr``."""
        q1, d1, width, w = self.q1, self.d1, self.width, self.weights
        u1, g1 = self.scaled[self.first], self.terms[self.first].group_index.astype(np.int64)
        a11 = np.zeros((q1, d1, d1))
        for a in range(d1):
            for b in range(d1):
                a11[:, a, b] = np.bincount(g1, weights=w * u1[:, a] * u1[:, b], minlength=q1)
        a1r = np.zeros(q1 * d1 * width)
        arr = np.zeros(width * width)
        for k in self.rest:
            for c in range(self.dims[k]):
                col_k = self.columns(k, c)
                uk = w * self.scaled[k][:, c]
                for a in range(d1):
                    a1r += np.bincount(self.columns(self.first, a) * width + col_k, weights=uk * u1[:, a],
                                       minlength=q1 * d1 * width)
                for m in self.rest:
                    for e in range(self.dims[m]):
                        arr += np.bincount(col_k * width + self.columns(m, e), weights=uk * self.scaled[m][:, e],
                                           minlength=width * width)
        return a11, a1r.reshape(q1 * d1, width), arr.reshape(width, width)

    def _factor(self, a11, a1r, arr):
        q1, d1, width = self.q1, self.d1, self.width
        a11 = a11 + np.eye(d1)
        self.a11 = a11
        self.chol11 = np.linalg.cholesky(a11)
        self.inv11 = np.linalg.inv(a11)
        self.a1r = a1r
        self.inv_a1r = np.matmul(self.inv11, self.a1r.reshape(q1, d1, width)).reshape(q1 * d1, width)
        schur = arr + np.eye(width) - self.a1r.T @ self.inv_a1r
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

    def inverse_diagonal_blocks(self):
        """Per term, the ``dim x dim`` diagonal blocks of ``A^-1``, shape ``(num_levels, dim, dim)``."""
        width = self.width
        chol_inv = linalg.solve_triangular(self.chol, np.eye(width), lower=True) if width else np.zeros((0, 0))
        cross = (self.inv_a1r @ chol_inv.T).reshape(self.q1, self.d1, width)
        out = [None] * len(self.num_levels)
        out[self.first] = self.inv11 + np.matmul(cross, cross.transpose(0, 2, 1))
        if width:
            inverse_rest = chol_inv.T @ chol_inv
        for k in self.rest:
            q, d = self.num_levels[k], self.dims[k]
            block = slice(self.offsets[k], self.offsets[k] + q * d)
            sub = inverse_rest[block, block].reshape(q, d, q, d)
            out[k] = sub[np.arange(q), :, np.arange(q), :]
        return out
