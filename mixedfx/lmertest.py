"""Denominator degrees of freedom and type III F tests, as lmerTest and pbkrtest compute them.

Three calls, each taking a fitted estimator (``model_``, ``model_parameters_``,
``method``, ``fixed_design_``):

* :func:`fixed_effects_table`: lmerTest's ``summary()`` coefficient table;
* :func:`contrast_df`: the t test of each row of a contrast matrix ``L``;
* :func:`anova_type3`: lmerTest's ``anova(m, type = 3)`` table.

``ddf`` is ``"satterthwaite"`` (lmerTest's default), ``"kenward-roger"`` (pbkrtest;
REML fits only, as in lmerTest), ``"residual"`` (``n - p``) or ``"asymptotic"`` (Wald
z, ``df = inf``).  The Satterthwaite pieces (the Hessian of the exact (RE)ML deviance
in ``(theta, sigma)`` and the Jacobian of the fixed effects' covariance) come from
:mod:`mixedfx.model.ddf` by TensorFlow autodiff; the Kenward-Roger adjustment is
analytic, as pbkrtest's.  Families other than the Gaussian have no denominator
degrees of freedom: their tables hold Wald z (or chi-square over q) statistics,
``df = inf``, whatever ``ddf`` asks, and say so in ``DataFrame.attrs["note"]``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from mixedfx.exceptions import ParameterError
from mixedfx.lmertest_contrasts import type3_hypotheses
from mixedfx.model.ddf import kenward_roger_pieces, satterthwaite_pieces

__all__ = ["DDF_METHODS", "check_ddf", "fixed_effects_table", "contrast_df", "anova_type3", "type3_hypotheses"]

#: The accepted ``ddf`` values, lmerTest's default first.
#:
#: Examples
#: --------
#: >>> from mixedfx.lmertest import DDF_METHODS
#: >>> DDF_METHODS[0]
#: 'satterthwaite'
DDF_METHODS = ("satterthwaite", "kenward-roger", "residual", "asymptotic")

_GLMM_NOTE = ("Wald z statistics (df = inf): denominator degrees of freedom exist for Gaussian fits only, "
              "without a dispformula (as lme4's glmer and glmmTMB)")
_EXACT_NOTE = ("an exact fit (zero residuals, see mixedfx.inference.exact): the residual df, n - p, as lm's, "
               "and zero standard errors")


class _Context:
    """What the tests need from a fitted estimator, computed once per call.

    Attributes
    ----------
    method : str
        The ``ddf`` actually used (``"asymptotic"`` for a non-Gaussian family).
    beta, cov : numpy.ndarray
        The fixed effects and the covariance the t statistics use (Kenward-Roger's
        adjusted one for that method).
    note : str or None
    """

    def __init__(self, model, ddf: str):
        check_ddf(ddf)
        bound, params = model.model_, model.model_parameters_
        self.names = list(model.fixed_design_.column_names)
        self.beta = np.asarray(params.fixed_effects, dtype=np.float64)
        self.cov = np.asarray(model.fixed_effects_cov_, dtype=np.float64)
        self.note = None
        gaussian = bound.family.conjugate_gaussian and "sigma" in params.family_params
        if not gaussian:
            ddf, self.note = "asymptotic", _GLMM_NOTE
            # The reported fixed effects (an ordinal model's internal intercept becomes its
            # cutpoints), which fixed_effects_cov_ is the covariance of.
            self.names = list(model.fixed_effects_.index)
            self.beta = np.asarray(model.fixed_effects_, dtype=np.float64)
        self.sigma = float(params.family_params["sigma"]) if gaussian else 1.0
        if gaussian and self.sigma == 0.0 and ddf != "asymptotic":  # an exact fit: lm's residual df
            ddf, self.note = "residual", _EXACT_NOTE
        self.method, self.n_obs, self.p = ddf, bound.n_obs, len(self.beta)
        self.satt = self.kr = None
        reml = str(getattr(model, "method", "ml")).lower() == "reml"
        if ddf == "satterthwaite" and bound.random_terms:
            self.satt = satterthwaite_pieces(bound, params, reml=reml)
            self.cov = self.satt.fixed_cov
        elif ddf == "kenward-roger":
            if not reml:
                raise ParameterError("Kenward-Roger degrees of freedom need a REML fit (as lmerTest and pbkrtest): "
                                 "refit with method='reml', or use ddf='satterthwaite'")
            self.kr = kenward_roger_pieces(bound, params)
            self.cov = self.kr.adjusted_cov

    def t_df(self, row: np.ndarray) -> float:
        """The denominator df of one contrast row."""
        if self.method == "asymptotic":
            return np.inf
        if self.method == "residual" or (self.satt is None and self.kr is None):
            return float(self.n_obs - self.p)
        if self.kr is not None:
            return _kenward_roger_df(row[None, :], self.kr)[0]
        return _satterthwaite_df(row, self.satt)

    def f_test(self, L: np.ndarray) -> dict:
        """lmerTest's ``contestMD``: one row of the F table for the hypothesis ``L beta = 0``."""
        if self.note is _EXACT_NOTE:
            raise ParameterError("an exact fit (zero residuals) has no F tests: every F statistic is infinite and "
                                 "its sum of squares undefined (R's anova of such an lm warns that it is unreliable)")
        if self.kr is not None:
            return self._kr_f_test(L)
        if L.shape[0] == 1:
            return self._one_df_f(L[0])
        values, vectors = np.linalg.eigh(L @ self.cov @ L.T)
        values, vectors = values[::-1], vectors[:, ::-1]  # decreasing, as R's eigen
        q = int(np.sum(values > max(np.sqrt(np.finfo(float).eps) * values[0], 0.0)))
        PtL = vectors[:, :q].T @ L
        if q == 1:
            return self._one_df_f(PtL[0])
        F = float(np.sum((PtL @ self.beta) ** 2 / values[:q]) / q)
        if self.method == "satterthwaite" and self.satt is not None:
            nu = np.array([_satterthwaite_df(row, self.satt) for row in PtL])
            dendf = _f_statistic_df(nu)
        else:
            dendf = self.t_df(PtL[0])
        return _f_row(F, q, dendf, self.sigma)

    def _one_df_f(self, row: np.ndarray) -> dict:
        se = np.sqrt(float(row @ self.cov @ row))
        t = float(row @ self.beta) / se if se > 0 else np.copysign(np.inf, float(row @ self.beta))
        return _f_row(t * t, 1, self.t_df(row), self.sigma)

    def _kr_f_test(self, L: np.ndarray) -> dict:
        q = int(np.linalg.matrix_rank(L))
        estimate = L @ self.beta
        F_unscaled = float(estimate @ np.linalg.solve(L @ self.kr.adjusted_cov @ L.T, estimate)) / q
        dendf, scaling = _kenward_roger_df(L, self.kr)
        return _f_row(F_unscaled, q, dendf, self.sigma, scaling=scaling)


def check_ddf(ddf) -> str:
    """``ddf`` itself, or a :class:`~mixedfx.ParameterError` naming it and the choices.

    Examples
    --------
    >>> check_ddf("kenward-roger")
    'kenward-roger'
    """
    if not isinstance(ddf, str) or ddf not in DDF_METHODS:
        raise ParameterError(f"ddf must be one of {DDF_METHODS}, got {ddf!r}")
    return ddf


def _context(model, ddf: str) -> _Context:
    """The model's :class:`_Context` for ``ddf``, kept on the model (``_ddf_cache``) for its
    current parameters: the Satterthwaite and Kenward-Roger pieces are autodiff Hessians
    and Jacobians, worth computing once per fit.  The cache belongs to the identical
    ``model_parameters_`` object, so a refit (new parameters) never reuses it; the estimators
    also drop it on refit and leave it out of their pickled state."""
    check_ddf(ddf)
    cache = getattr(model, "_ddf_cache", None)
    if not isinstance(cache, dict) or cache.get("parameters") is not model.model_parameters_:
        cache = {"parameters": model.model_parameters_}
        try:
            model._ddf_cache = cache
        except AttributeError:  # a read-only stand-in: no caching
            pass
    if ddf not in cache:
        cache[ddf] = _Context(model, ddf)
    return cache[ddf]


def _f_row(F: float, q: int, dendf: float, sigma: float, *, scaling: float = 1.0) -> dict:
    """lmerTest's ``mk_Ftable``: ``Mean Sq = F sigma^2`` before Kenward-Roger's scaling of F."""
    mean_sq = F * sigma**2
    F = F * scaling
    p_value = stats.chi2.sf(F * q, q) if np.isinf(dendf) else stats.f.sf(F, q, dendf)
    return {"Sum Sq": mean_sq * q, "Mean Sq": mean_sq, "NumDF": q, "DenDF": dendf, "F value": F,
            "Pr(>F)": float(p_value)}


def _satterthwaite_df(row: np.ndarray, pieces) -> float:
    """``2 (l'Cl)^2 / (g' A g)``, ``g_i = l' dC/dvarpar_i l`` (lmerTest's ``contest1D``)."""
    variance = float(row @ pieces.fixed_cov @ row)
    gradient = np.einsum("a,kab,b->k", row, pieces.fixed_cov_jacobian, row)
    return 2.0 * variance**2 / float(gradient @ pieces.varpar_cov @ gradient)


def _f_statistic_df(nu: np.ndarray, tol: float = 1e-8) -> float:
    """lmerTest's ``get_Fstat_ddf``: the F denominator df from the q t-statistics' df."""
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    expected = float(np.sum(nu / (nu - 2)))
    return 2.0 * expected / (expected - len(nu))


def _kenward_roger_df(L: np.ndarray, kr) -> tuple[float, float]:
    """pbkrtest's ``.KR_adjust`` / ``Lb_ddf``: the denominator df and the F scaling for ``L beta = 0``."""
    Phi = kr.fixed_cov
    theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    u = [theta @ Phi @ P @ Phi for P in kr.P]
    A1 = A2 = 0.0
    for i in range(len(u)):
        for j in range(i, len(u)):
            weight = (1.0 if i == j else 2.0) * kr.W[i, j]
            A1 += weight * np.trace(u[i]) * np.trace(u[j])
            A2 += weight * np.sum(u[i] * u[j].T)
    q = float(np.linalg.matrix_rank(L))
    B = (A1 + 6 * A2) / (2 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    denominator = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / denominator, (q - g) / denominator, (q + 2 - g) / denominator
    V0, V1, V2 = 1 + c1 * B, 1 - c2 * B, 1 - c3 * B
    V0 = 0.0 if abs(V0) < 1e-10 else V0
    ratio = 0.0 if abs(V1) < 1e-10 else (1 - A2 / q) / V1  # pbkrtest's .divZero
    rho = ratio**2 * V0 / V2 / q
    df2 = 4 + (q + 2) / (q * rho - 1)
    scaling = 1.0 if abs(df2 - 2) < 1e-2 else df2 * (1 - A2 / q) / (df2 - 2)
    return float(df2), float(scaling)


def _t_table(context: _Context, L: np.ndarray, index) -> pd.DataFrame:
    """Estimate, SE, df, t and p of each row of ``L``, lmerTest's column names."""
    estimate = L @ context.beta
    se = np.sqrt(np.einsum("ia,ab,ib->i", L, context.cov, L))
    df = np.array([context.t_df(row) for row in L])
    with np.errstate(divide="ignore"):  # an exact fit's zero standard errors: t is infinite, as lm's
        t = estimate / se
    p = np.where(np.isinf(df), 2 * stats.norm.sf(np.abs(t)), 2 * stats.t.sf(np.abs(t), np.where(np.isinf(df), 1, df)))
    z = context.method == "asymptotic"
    table = pd.DataFrame({"Estimate": estimate, "Std. Error": se, "df": df, "z value" if z else "t value": t,
                          "Pr(>|z|)" if z else "Pr(>|t|)": p}, index=index)
    table.attrs["ddf"] = context.method
    if context.note:
        table.attrs["note"] = context.note
    return table


def fixed_effects_table(model, *, ddf: str = "satterthwaite") -> pd.DataFrame:
    """lmerTest's coefficient table: estimate, standard error, df, t and p per fixed effect.

    Parameters
    ----------
    model : MixedEffectsRegressor
        A fitted estimator.
    ddf : {"satterthwaite", "kenward-roger", "residual", "asymptotic"}, default "satterthwaite"
        Kenward-Roger uses pbkrtest's adjusted covariance for the standard errors and
        needs a REML fit; ``"asymptotic"`` gives Wald z (``z value``, ``Pr(>|z|)``).

    Returns
    -------
    pandas.DataFrame
        Columns ``Estimate``, ``Std. Error``, ``df``, ``t value``, ``Pr(>|t|)``,
        indexed by the fixed-effect names; ``attrs["ddf"]`` names the method (and
        ``attrs["note"]`` explains Wald z for a non-Gaussian family).

    Raises
    ------
    ParameterError
        For an unknown ``ddf``, or Kenward-Roger on an ML fit.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(300, groups={"g": 12}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...                                         random_sd={"g": 0.8}, random_state=2)
    >>> fit = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", method="reml", random_state=0, verbose=0).fit(data)
    >>> table = fixed_effects_table(fit)
    >>> list(table.columns)
    ['Estimate', 'Std. Error', 'df', 't value', 'Pr(>|t|)']
    >>> intercept_df, x_df = table["df"]  # the intercept's near the 12 groups, x's near the 300 rows
    >>> round(intercept_df), int(round(x_df, -1))
    (11, 290)
    >>> intercept_df, x_df = fixed_effects_table(fit, ddf="kenward-roger")["df"]
    >>> round(intercept_df), int(round(x_df, -1))
    (11, 290)
    """
    context = _context(model, ddf)
    return _t_table(context, np.eye(context.p), context.names)


def contrast_df(model, L, *, ddf: str = "satterthwaite") -> pd.DataFrame:
    """The t test of each row of a contrast matrix (lmerTest's ``contest(m, L, joint = FALSE)``).

    Parameters
    ----------
    model : MixedEffectsRegressor
        A fitted estimator.
    L : array-like of shape (k, n_fixed) or (n_fixed,), or pandas.DataFrame
        Contrast rows over the fixed effects, in ``fixed_design_.column_names``
        order (a DataFrame's columns are reordered by name, its index kept).
    ddf : {"satterthwaite", "kenward-roger", "residual", "asymptotic"}, default "satterthwaite"

    Returns
    -------
    pandas.DataFrame
        One row per contrast: ``Estimate``, ``Std. Error``, ``df``, ``t value``,
        ``Pr(>|t|)``.

    Raises
    ------
    ValueError
        When ``L`` does not have one column per fixed effect.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(300, groups={"g": 12}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...                                         random_sd={"g": 0.8}, random_state=2)
    >>> fit = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", method="reml", random_state=0, verbose=0).fit(data)
    >>> at_one = contrast_df(fit, [[1.0, 1.0]])  # the mean response at x = 1
    >>> round(float(at_one["df"].iloc[0]))
    12
    """
    context = _context(model, ddf)
    if isinstance(L, pd.DataFrame):
        missing = [name for name in context.names if name not in L.columns]
        if missing:
            raise ValueError(f"contrast matrix lacks the fixed effect column(s) {missing}")
        index, L = L.index, L[context.names].to_numpy(dtype=np.float64)
    else:
        L = np.atleast_2d(np.asarray(L, dtype=np.float64))
        index = range(L.shape[0])
    if L.shape[1] != context.p:
        raise ValueError(f"contrast matrix has {L.shape[1]} columns; the model has {context.p} fixed effects "
                         f"{context.names}")
    return _t_table(context, L, index)


def anova_type3(model, *, ddf: str = "satterthwaite") -> pd.DataFrame:
    """lmerTest's type III F table: one F test per fixed-effect term.

    Each term's hypothesis matrix is lmerTest's (SAS) type III one, built in the
    treatment basis and carried to the model's coding (:func:`type3_hypotheses`), so that
    ``C(f, contr.sum)`` and the default coding give the same table; the F test, its Satterthwaite df
    (lmerTest's ``contestMD``: eigen-decomposed ``L C L'`` and
    ``get_Fstat_ddf``) or Kenward-Roger df and scaling (pbkrtest's ``KRmodcomp``) as
    lmerTest's.

    Parameters
    ----------
    model : MixedEffectsRegressor
        A fitted estimator.
    ddf : {"satterthwaite", "kenward-roger", "residual", "asymptotic"}, default "satterthwaite"

    Returns
    -------
    pandas.DataFrame
        Indexed by term, columns ``Sum Sq``, ``Mean Sq``, ``NumDF``, ``DenDF``,
        ``F value``, ``Pr(>F)``.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(300, groups={"g": 12}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...                                         random_sd={"g": 0.8}, random_state=2)
    >>> fit = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", method="reml", random_state=0, verbose=0).fit(data)
    >>> table = anova_type3(fit)
    >>> list(table.index), list(table.columns)
    (['x'], ['Sum Sq', 'Mean Sq', 'NumDF', 'DenDF', 'F value', 'Pr(>F)'])
    """
    context = _context(model, ddf)
    hypotheses = type3_hypotheses(model.fixed_design_)
    rows = {term: context.f_test(L) for term, L in hypotheses.items()}
    table = pd.DataFrame.from_dict(rows, orient="index",
                                   columns=["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"])
    table.attrs["ddf"] = context.method
    if context.note:
        table.attrs["note"] = context.note
    return table
