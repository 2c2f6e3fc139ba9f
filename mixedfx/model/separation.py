"""Complete and quasi-complete separation of a categorical response by the fixed effects.

When a linear combination of the fixed-effect columns orders the response's categories
without error, the likelihood keeps growing as that combination's coefficients grow: the
maximum likelihood estimates are infinite, and a fit returns whatever finite values its
iterations stopped at.  R's ``glm()`` says "fitted probabilities numerically 0 or 1
occurred"; the ``detectseparation`` package finds the directions exactly, by the linear
program of Konis (2007), which is what :func:`find_separation` solves (with
:func:`scipy.optimize.linprog`).

The program looks for a direction ``(d_beta, d_cut)`` of the fixed effects and the
category cutpoints (one cutpoint for a binary response, ``K - 1`` ordered ones for an
ordinal response) along which no observation's likelihood decreases:

- a row at or below category ``k``: ``d_cut[k] - x' d_beta >= 0``;
- a row above category ``k``: ``x' d_beta - d_cut[k] >= 0`` (a binomial row with some
  successes and some failures is both, so its ``x' d_beta`` equals ``d_cut``);
- the cutpoints stay ordered: ``d_cut`` does not decrease.

If some row's inequality can be strict, the likelihood has no maximum: the separation is
*complete* when all rows' inequalities can be strict at once, *quasi-complete* otherwise.
The columns named are those that move in the direction found.  Random effects are left
out: a grouping level whose rows are all one class is shrunk by its variance, as in lme4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize

__all__ = ["Separation", "find_separation", "separation_of_model"]

_TOL = 1e-7


@dataclass(frozen=True)
class Separation:
    """A separation found in the data.

    Attributes
    ----------
    kind : {"complete", "quasi-complete"}
    columns : tuple of str
        The fixed-effect columns whose estimates run off to infinity.

    Examples
    --------
    >>> from mixedfx.model.separation import Separation
    >>> text = Separation(kind="complete", columns=("x",)).message("y")
    >>> text.split(":")[0], "'x'" in text
    ('complete separation', True)
    """

    kind: str
    columns: tuple[str, ...]

    def message(self, response: str) -> str:
        """The warning's text, naming the columns and what to do."""
        shown = ", ".join(repr(name) for name in self.columns)
        return (
            f"{self.kind} separation: the fixed-effect column(s) {shown} separate the categories of "
            f"{response!r}, so their maximum likelihood estimates are infinite (glm() warns 'fitted "
            "probabilities numerically 0 or 1 occurred'); the values reported are where the iterations "
            "stopped and their standard errors are meaningless. Drop or merge the column(s), or combine "
            "the categories they separate"
        )


def find_separation(fixed_design, below, above, n_cuts: int, *, names) -> Separation | None:
    """The separation of a categorical response by the columns of ``fixed_design``, or None.

    Parameters
    ----------
    fixed_design : numpy.ndarray of shape (n_rows, n_fixed)
    below, above : numpy.ndarray of int, shape (n_rows,)
        Per row, the cutpoint the row lies at or below, and the cutpoint it lies above;
        ``-1`` for none.
    n_cuts : int
        The number of cutpoints (1 for a binary response).
    names : sequence of str
        The columns' names.

    Returns
    -------
    Separation or None

    Examples
    --------
    ``x`` puts every 1 above every 0, so its slope is infinite; ``z`` does not:

    >>> import numpy as np
    >>> from mixedfx.model.separation import find_separation
    >>> y = np.array([0, 0, 0, 1, 1, 1])
    >>> X = np.column_stack([np.ones(6), [1.0, 2, 3, 4, 5, 6], [1.0, -1, 1, -1, 1, -1]])
    >>> below, above = np.where(y == 0, 0, -1), np.where(y == 1, 0, -1)
    >>> find_separation(X, below, above, 1, names=["(Intercept)", "x", "z"])
    Separation(kind='complete', columns=('x',))
    >>> find_separation(X[:, [0, 2]], below, above, 1, names=["(Intercept)", "z"]) is None
    True
    """
    X = np.asarray(fixed_design, dtype=np.float64)
    rows = _constraint_rows(X, below, above, n_cuts)
    n_fixed = X.shape[1]
    if rows.shape[0] == 0 or _separating_direction(rows, n_cuts) is None:
        return None
    # the culprits: the columns without which the categories are no longer separated
    culprits = [j for j in range(n_fixed)
                if _separating_direction(np.delete(rows, j, axis=1), n_cuts) is None]
    if not culprits:  # several columns separate on their own: those of one separating direction
        direction = _separating_direction(rows, n_cuts)
        culprits = [j for j in np.flatnonzero(np.abs(direction[:n_fixed]) > 1e-6) if not _is_constant(X, j)]
    kind = "complete" if _complete(rows, n_cuts) else "quasi-complete"
    return Separation(kind=kind, columns=tuple(names[j] for j in culprits))


def separation_of_model(model) -> Separation | None:
    """Ask ``model.family`` how its response sits among its categories, and look for
    a separation by the model's fixed effects (None for families without categories).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Bernoulli, MixedModel
    >>> from mixedfx.model.separation import separation_of_model
    >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> model = MixedModel(Bernoulli(), X, np.array([0.0, 0.0, 1.0, 1.0]), (), ("Intercept", "x"))
    >>> separation_of_model(model)
    Separation(kind='complete', columns=('x',))
    """
    cuts = model.family.separation_cuts(model.response, trials=model.trials)
    if cuts is None or model.fixed_design.shape[1] == 0:
        return None
    below, above, n_cuts = cuts
    return find_separation(model.fixed_design, below, above, n_cuts, names=model.fixed_names)


def _is_constant(fixed_design, j: int) -> bool:
    column = np.asarray(fixed_design)[:, j]
    return bool(np.all(column == column[0]))


def _constraint_rows(X: np.ndarray, below, above, n_cuts: int) -> np.ndarray:
    """The distinct rows ``a`` of the constraints ``a' (d_beta, d_cut) >= 0``, columns scaled to 1."""
    scale = np.max(np.abs(X), axis=0)
    X = X / np.where(scale > 0, scale, 1.0)
    cut = np.eye(n_cuts)
    below, above = np.asarray(below), np.asarray(above)
    parts = [np.hstack([-X[below >= 0], cut[below[below >= 0]]]),
             np.hstack([X[above >= 0], -cut[above[above >= 0]]])]
    return np.unique(np.vstack(parts), axis=0)


def _order_rows(n_fixed: int, n_cuts: int) -> np.ndarray:
    """``d_cut[k + 1] - d_cut[k] >= 0`` as rows over ``(d_beta, d_cut)``."""
    rows = np.zeros((max(n_cuts - 1, 0), n_fixed + n_cuts))
    for k in range(n_cuts - 1):
        rows[k, n_fixed + k], rows[k, n_fixed + k + 1] = -1.0, 1.0
    return rows


def _separating_direction(rows: np.ndarray, n_cuts: int, *, batch: int = 2000) -> np.ndarray | None:
    """A direction meeting every constraint with a positive sum, or None if there is none.

    Solved on a working set of rows that grows by cutting planes: a direction found on
    the working set is checked against every row and the rows it violates are added;
    when the working set has no such direction, its constraints hold with equality, and
    the rows outside the span of its own rows are added.  A million rows cost a few
    small programs instead of one large one.
    """
    rng = np.random.default_rng(0)
    work = rng.permutation(rows.shape[0])[:batch]
    while True:
        direction = _lp_direction(rows[work], n_cuts)
        if direction is not None:
            missed = np.flatnonzero(rows @ direction < -1e-9)
        else:
            null = linalg.null_space(rows[work])
            missed = np.flatnonzero(np.abs(rows @ null).max(axis=1) > 1e-9) if null.size else np.zeros(0, int)
        missed = np.setdiff1d(missed, work)
        if missed.size == 0:
            return direction
        work = np.concatenate([work, missed[np.argsort(rng.random(missed.size))[:batch]]])


def _lp_direction(rows: np.ndarray, n_cuts: int) -> np.ndarray | None:
    """The linear program on these rows: maximize the sum of ``a' d`` over the box."""
    size = rows.shape[1]
    order = _order_rows(size - n_cuts, n_cuts)
    result = optimize.linprog(-rows.sum(axis=0), A_ub=-np.vstack([rows, order]),
                              b_ub=np.zeros(rows.shape[0] + order.shape[0]), bounds=[(-1.0, 1.0)] * size,
                              method="highs")
    if result.status != 0 or -result.fun <= _TOL * max(rows.shape[0], 1):
        return None
    return result.x


def _complete(rows: np.ndarray, n_cuts: int, *, batch: int = 2000) -> bool:
    """Whether one direction makes every constraint strict (complete separation);
    solved on a working set of rows grown by the rows a candidate violates."""
    size = rows.shape[1]
    order = _order_rows(size - n_cuts, n_cuts)
    work = np.random.default_rng(0).permutation(rows.shape[0])[:batch]
    c = np.zeros(size + 1)
    c[-1] = -1.0
    while True:
        # variables (d, t): maximize t subject to a'd >= t for every row, t <= 1
        A = np.vstack([np.hstack([-rows[work], np.ones((work.size, 1))]),
                       np.hstack([-order, np.zeros((order.shape[0], 1))])])
        result = optimize.linprog(c, A_ub=A, b_ub=np.zeros(A.shape[0]),
                                  bounds=[(-1.0, 1.0)] * size + [(None, 1.0)], method="highs")
        if result.status != 0 or -result.fun <= _TOL:
            return False
        missed = np.setdiff1d(np.flatnonzero(rows @ result.x[:size] < -result.fun - 1e-9), work)
        if missed.size == 0:
            return True
        work = np.concatenate([work, missed[:batch]])
