"""R's formula functions, for formulaic's evaluation context.

A formula pasted from R calls ``factor``, ``as.factor``, ``relevel``, ``scale``, ``poly``,
``ns`` and friends.  :mod:`mixedfx.formula.r_syntax` rewrites R's operators and dotted
names; this module gives the names their R meaning.  The stateful ones (``poly``, ``ns``;
formulaic's own ``scale``) learn their constants at fit time into formulaic's
``ModelSpec``, so prediction replays R's ``predvars``: the same centring, polynomial
coefficients and knots.

Examples
--------
>>> import pandas as pd
>>> from mixedfx.design import evaluate_formula
>>> frame = pd.DataFrame({"x": [1.0, 2.0, 4.0, 8.0], "f": ["a", "b", "c", "b"]})
>>> matrix, spec = evaluate_formula('0 + poly(x, 2, raw = TRUE) + relevel(f, ref = "b")', frame)
>>> matrix.tolist()[0], spec.column_names[:2]
([1.0, 1.0, 1.0, 0.0, 0.0], ('poly(x, 2, raw=True)[1]', 'poly(x, 2, raw=True)[2]'))
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from formulaic.materializers.types import FactorValues
from formulaic.transforms import TRANSFORMS
from formulaic.utils.stateful_transforms import stateful_transform
from scipy.interpolate import BSpline

from mixedfx.exceptions import DataError

__all__ = ["R_FUNCTIONS", "factor", "relevel", "poly", "ns"]

_C = TRANSFORMS["C"]
_contr = TRANSFORMS["contr"]
_formulaic_poly = TRANSFORMS["poly"]


def factor(x, levels=None):
    """R's ``factor(x)`` (and ``as.factor``): treat ``x`` as categorical, treatment coded.

    ``levels`` fixes the level order, whose first level is the baseline, as in R.
    """
    return _C(x, levels=None if levels is None else list(np.atleast_1d(levels)))


def relevel(x, ref):
    """R's ``relevel(f, ref = "b")``: categorical ``x`` with baseline level ``ref``."""
    present = pd.unique(pd.Series(np.asarray(x)).dropna())
    if ref not in set(present):  # R's levels are strings: ref = "309" names the level 309
        ref = next((level for level in present if str(level) == str(ref)), ref)
    if ref not in set(present):
        shown = ", ".join(map(repr, sorted(map(str, present))[:10]))
        raise DataError(f"relevel(ref={ref!r}): {ref!r} is not a level of the column (levels: {shown})")
    return _C(x, _contr.treatment(base=ref))


def as_numeric(x):
    """R's ``as.numeric(x)``: the values as float64."""
    return np.asarray(x, dtype=np.float64)


@stateful_transform
def poly(x, degree=1, raw=False, _state={}):  # noqa: B006 (formulaic replaces the default)
    """R's ``poly(x, degree, raw = FALSE)``: orthonormal polynomials as R's, or raw powers.

    Columns are named ``1`` to ``degree``, as R numbers them; the orthogonal basis keeps
    its fit-time recurrence coefficients for new data (formulaic's ``poly``).
    """
    if raw:
        values = np.asarray(x, dtype=np.float64)
        columns = np.stack([values**k for k in range(1, int(degree) + 1)], axis=1)
        return FactorValues(columns, column_names=tuple(str(k) for k in range(1, int(degree) + 1)))
    return _formulaic_poly(x, degree, raw=False, _state=_state)


@stateful_transform
def ns(x, df=None, knots=None, intercept=False, Boundary_knots=None, _state={}):  # noqa: B006, N803
    """R's ``splines::ns``: the natural cubic spline basis, column for column as R's.

    Interior knots are the quantiles of ``x`` (``df - 1 - intercept`` of them) unless
    ``knots`` is given; the boundary knots are the range of ``x``.  Beyond them the basis
    continues linearly, as R's.  The knots are learned at fit time and replayed.
    """
    values = np.asarray(x, dtype=np.float64)
    if "knots" not in _state:
        boundary = (np.array([np.nanmin(values), np.nanmax(values)]) if Boundary_knots is None
                    else np.sort(np.asarray(Boundary_knots, dtype=np.float64)))
        if knots is None:
            if df is None:
                raise DataError("ns() needs df or knots, e.g. ns(x, df = 3)")
            n_interior = int(df) - 1 - int(bool(intercept))
            if n_interior < 0:
                raise DataError(f"ns(df = {df}) is too small: df must be at least {1 + int(bool(intercept))}")
            inside = values[(values >= boundary[0]) & (values <= boundary[1])]
            probs = np.linspace(0.0, 1.0, n_interior + 2)[1:-1]
            knots = np.quantile(inside, probs) if n_interior else np.array([])
        _state["knots"] = [float(k) for k in np.atleast_1d(knots)]
        _state["boundary"] = [float(b) for b in boundary]
        _state["intercept"] = bool(intercept)
    basis = _natural_spline_basis(values, np.array(_state["knots"]), np.array(_state["boundary"]),
                                  intercept=_state["intercept"])
    return FactorValues(basis, column_names=tuple(str(k) for k in range(1, basis.shape[1] + 1)))


def _natural_spline_basis(x: np.ndarray, knots: np.ndarray, boundary: np.ndarray, *,
                          intercept: bool) -> np.ndarray:
    """R's ``ns`` basis: cubic B-splines on the knots, projected (by the QR of the
    boundary second-derivative constraints, as R does) onto the natural splines."""
    all_knots = np.sort(np.concatenate([np.repeat(boundary, 4), knots]))
    n_basis = len(all_knots) - 4
    spline = BSpline(all_knots, np.eye(n_basis), 3, extrapolate=True)
    basis = np.full((x.shape[0], n_basis), np.nan)
    below, above = x < boundary[0], x > boundary[1]
    inside = ~(below | above) & ~np.isnan(x)
    basis[inside] = spline(x[inside])
    slope = spline.derivative(1)
    for mask, pivot in ((below, boundary[0]), (above, boundary[1])):
        if mask.any():  # linear beyond the boundary knots, as R's ns
            basis[mask] = spline(pivot)[None, :] + (x[mask] - pivot)[:, None] * slope(pivot)[None, :]
    constraints = spline.derivative(2)(boundary)
    if not intercept:
        constraints, basis = constraints[:, 1:], basis[:, 1:]
    q, _ = np.linalg.qr(constraints.T, mode="complete")
    return (basis @ q)[:, 2:]


#: The R-named functions a pasted R formula may call (``as.factor`` reaches
#: ``as_factor`` through :func:`mixedfx.formula.translate_r`).
R_FUNCTIONS = {
    "factor": factor,
    "as_factor": factor,
    "relevel": relevel,
    "as_numeric": as_numeric,
    "poly": poly,
    "ns": ns,
    "log1p": np.log1p,
    "log10": np.log10,
    "log2": np.log2,
}
