"""Estimated marginal means and their contrasts, as R's emmeans computes them.

:func:`emmeans` builds emmeans' reference grid from the fitted fixed design (every
factor at all its levels, every numeric covariate at its mean unless ``at=`` gives
values), averages the design rows of the factors not asked for with equal weights, and
reports ``L beta`` with standard errors from ``fixed_effects_cov_``.  :func:`contrast`
(and :meth:`EMMeans.pairs`) compares the means with the adjusted p-values of emmeans:
Tukey's studentized range, Holm, Bonferroni, Sidak and Benjamini-Hochberg.

Degrees of freedom come from a pluggable source (``df=``): a name in :data:`DF_METHODS`,
a number, or a callable ``df(model, L) -> array`` with one df per row of ``L``.  GLMMs
use ``"asymptotic"`` (emmeans' ``Inf``: z statistics and ``asymp.LCL``/``asymp.UCL``).
For a Gaussian fit the default is the estimator's ``ddf`` parameter (``"satterthwaite"``,
lmerTest's, for an estimator without one); :data:`DF_METHODS` holds
:mod:`mixedfx.lmertest`'s ``"satterthwaite"``, ``"kenward-roger"`` and ``"residual"``
df of each row (its :func:`~mixedfx.lmertest.contrast_df`).

The module reads a fitted estimator only through ``fixed_design_``, ``fixed_effects_``,
``fixed_effects_cov_``, ``family_`` and ``model_``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pandas as pd
from scipy import special, stats

from mixedfx import lmertest
from mixedfx.exceptions import DataError, ParameterError
from mixedfx.results import coefficient_rows

__all__ = ["emmeans", "contrast", "EMMeans", "DF_METHODS", "asymptotic_df", "p_adjust"]


def asymptotic_df(model, L) -> np.ndarray:
    """Infinite degrees of freedom for every row of ``L`` (Wald z, emmeans' ``Inf``).

    Examples
    --------
    >>> import numpy as np
    >>> asymptotic_df(None, np.ones((2, 3))).tolist()
    [inf, inf]
    """
    return np.full(np.shape(L)[0], np.inf)


def _lmertest_df(ddf: str) -> Callable:
    """``df(model, L)`` of :func:`mixedfx.lmertest.contrast_df` with method ``ddf``."""
    def df(model, L):
        return lmertest.contrast_df(model, np.asarray(L, dtype=np.float64), ddf=ddf)["df"].to_numpy()
    df.__name__ = f"{ddf.replace('-', '_')}_df"
    return df


#: Named sources of denominator degrees of freedom, ``name -> df(model, L)``:
#: ``"asymptotic"`` (z), and lmerTest's ``"satterthwaite"``, ``"kenward-roger"`` (REML
#: fits) and ``"residual"`` from :func:`mixedfx.lmertest.contrast_df` (a GLMM gets
#: infinite df from those too).
#:
#: Examples
#: --------
#: >>> from mixedfx.marginal_means import DF_METHODS
#: >>> sorted(DF_METHODS)
#: ['asymptotic', 'kenward-roger', 'residual', 'satterthwaite']
DF_METHODS: dict[str, Callable] = {"asymptotic": asymptotic_df,
                                   **{name: _lmertest_df(name) for name in ("satterthwaite", "kenward-roger",
                                                                            "residual")}}

_RESPONSE_NAMES = {"logit": "prob", "probit": "prob", "cloglog": "prob", "log": "rate"}
_RATIO_NAMES = {"logit": "odds.ratio", "log": "ratio"}
_ADJUSTMENTS = ("tukey", "holm", "bonferroni", "sidak", "fdr", "BH", "none")


def _link_derivative(link: str, eta: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """d mean / d eta of the inverse link, for the delta method."""
    derivatives = {"identity": lambda: np.ones_like(eta), "logit": lambda: mean * (1.0 - mean),
                   "probit": lambda: stats.norm.pdf(eta), "log": lambda: mean,
                   "cloglog": lambda: np.exp(eta - np.exp(eta))}
    if link not in derivatives:
        raise ParameterError(f"type='response' is not available for the {link!r} link")
    return derivatives[link]()


@dataclass(frozen=True, eq=False)
class EMMeans:
    """Estimated marginal means: the reference grid's rows, their ``L``, and the fit.

    Built by :func:`emmeans`; :attr:`table` is emmeans' summary as a DataFrame and
    :meth:`pairs` / :func:`contrast` compare the means.

    Attributes
    ----------
    grid : pandas.DataFrame
        One row per mean: the ``specs`` variables, then the ``by`` variables.
    L : numpy.ndarray of shape (n_means, n_fixed)
        The means are ``L @ fixed_effects_`` on the link scale.
    specs, by : tuple of str
        The variables whose levels are compared, and the grouping variables.
    type : str
        ``"link"`` or ``"response"``.
    df : str, float or callable
        The df source (see :func:`emmeans`).
    level : float
        Confidence level of the limits.
    model : estimator
        The fitted estimator.
    table : pandas.DataFrame
        emmeans' columns: the grid, ``emmean`` (or ``prob``/``rate``/``response``),
        ``SE``, ``df``, ``lower.CL``/``upper.CL`` (``asymp.LCL``/``asymp.UCL`` at
        infinite df).

    Examples
    --------
    A logit model's means on the response scale (a stand-in for a fitted
    :class:`~mixedfx.MixedEffectsClassifier`: the attributes emmeans reads):

    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> from mixedfx.design import build_fixed_design
    >>> from mixedfx.model import Bernoulli
    >>> frame = pd.DataFrame({"f": ["a", "b", "c", "a", "b", "c"]})
    >>> design, X = build_fixed_design("f", frame)
    >>> fit = SimpleNamespace(fixed_design_=design, family_=Bernoulli(),
    ...     fixed_effects_=pd.Series([-1.0, 0.5, 1.0], index=design.column_names),
    ...     fixed_effects_cov_=pd.DataFrame(np.diag([0.04, 0.08, 0.08])), model_=SimpleNamespace(fixed_design=X))
    >>> emm = emmeans(fit, "f", type="response")
    >>> emm.L.tolist()
    [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    >>> emm.table.round(4)
       f    prob      SE   df  asymp.LCL  asymp.UCL
    0  a  0.2689  0.0393  inf     0.1991     0.3525
    1  b  0.3775  0.0814  inf     0.2352     0.5446
    2  c  0.5000  0.0866  inf     0.3365     0.6635
    """

    grid: pd.DataFrame
    L: np.ndarray
    specs: tuple
    by: tuple
    type: str
    df: object
    level: float
    model: object = field(repr=False)
    table: pd.DataFrame = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "table", _means_table(self))

    def pairs(self, *, adjust="tukey", reverse=False, type=None) -> pd.DataFrame:
        """All pairwise differences of the means within each ``by`` group.

        Parameters
        ----------
        adjust : {"tukey", "holm", "bonferroni", "sidak", "fdr", "none"}, default "tukey"
            Multiplicity adjustment within each ``by`` group.
        reverse : bool, default False
            ``"B - A"`` instead of ``"A - B"`` (emmeans' ``revpairwise``).
        type : {"link", "response"}, optional
            Defaults to the means' own type.

        Returns
        -------
        pandas.DataFrame
            See :func:`contrast`.
        """
        method = "revpairwise" if reverse else "pairwise"
        return contrast(self, method=method, adjust=adjust, type=type)

    def __getitem__(self, key):
        return self.table[key]

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return self.table.to_string(index=False)


def emmeans(model, specs, *, by=None, at=None, type="link", level=0.95, df=None, data=None,
            component="cond") -> EMMeans:
    """Estimated marginal means, as R's ``emmeans(model, specs, by = by, at = at)``.

    Parameters
    ----------
    model : MixedEffectsRegressor or MixedEffectsClassifier
        A fitted estimator.
    specs : str or sequence of str
        The variable(s) whose means are wanted, e.g. ``"recipe"``.
    by : str or sequence of str, optional
        Variables to condition on: one set of means (and of contrasts) per level.
    at : dict, optional
        Values of grid variables: a list of values for a numeric covariate (instead of
        its mean) or a subset of a factor's levels.
    type : {"link", "response"}, default "link"
        ``"response"`` back-transforms through the inverse link: delta-method SEs and
        back-transformed confidence limits, as emmeans' ``type = "response"``.
    level : float, default 0.95
        Confidence level.
    df : str, float or callable, optional
        Degrees of freedom: a key of :data:`DF_METHODS`, a number, or a callable
        ``df(model, L)`` returning one df per row of ``L``.  Default: ``"asymptotic"``
        for a GLMM, ``"satterthwaite"`` for a Gaussian fit.
    data : pandas.DataFrame, optional
        The training rows: needed only when a numeric covariate enters the fixed part
        through a transform alone (``np.log(x)``), so that its mean cannot be read from
        the design.
    component : {"cond", "zi"}, default "cond"
        As emmeans' ``component`` for glmmTMB: ``"zi"`` gives the means of the
        zero-inflation model (its design, coefficients and their block of
        ``wald_cov_``), on the logit scale or, with ``type="response"``, as zero
        probabilities; asymptotic df.

    Returns
    -------
    EMMeans
        ``.table`` is the DataFrame; ``.pairs()`` the pairwise comparisons.

    Raises
    ------
    ParameterError
        For an unknown variable, ``at`` value, ``type`` or ``df``, naming it.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> from mixedfx.design import build_fixed_design
    >>> from mixedfx.model import Gaussian
    >>> frame = pd.DataFrame({"f": ["a", "b", "c", "a", "b", "c"], "x": [0.0, 1, 2, 3, 4, 5]})
    >>> design, X = build_fixed_design("f + x", frame)
    >>> fit = SimpleNamespace(fixed_design_=design, family_=Gaussian(),
    ...     fixed_effects_=pd.Series([1.0, 2.0, 3.0, 0.5], index=design.column_names),
    ...     fixed_effects_cov_=pd.DataFrame(np.eye(4) * 0.01), model_=SimpleNamespace(fixed_design=X))
    >>> emm = emmeans(fit, "f", df=10.0)
    >>> emm.table[["f", "emmean", "SE", "df"]].round(4)
       f  emmean      SE    df
    0  a    2.25  0.2693  10.0
    1  b    4.25  0.2872  10.0
    2  c    5.25  0.2872  10.0
    >>> emm.pairs(adjust="none")[["contrast", "estimate", "t.ratio"]].round(3)
      contrast  estimate  t.ratio
    0    a - b      -2.0  -20.000
    1    a - c      -3.0  -30.000
    2    b - c      -1.0   -7.071
    """
    if type not in ("link", "response"):
        raise ParameterError(f"type must be 'link' or 'response', got {type!r}")
    if not 0.0 < float(level) < 1.0:
        raise ParameterError(f"level must lie strictly between 0 and 1, got {level!r}")
    specs, by = _names(specs, "specs"), _names(by, "by")
    model = _component(model, component)
    design = model.fixed_design_
    if tuple(model.fixed_effects_.index) != tuple(design.column_names):
        raise ParameterError("emmeans needs fixed effects that match the fixed design's columns; an ordinal "
                             "model's intercept is its cutpoints, so its marginal means are not available")
    variables = _grid_variables(model, at=dict(at or {}), data=data)
    for name in specs + by:
        if name not in variables:
            raise ParameterError(f"{name!r} is not a variable of the fixed part; "
                                 f"the reference grid has {sorted(variables)}")
    grid, L = _average_grid(design, variables, keep=specs + by)
    return EMMeans(grid=grid, L=L, specs=specs, by=by, type=type, df=df, level=float(level), model=model)


@dataclass(frozen=True)
class _ZeroInflationLink:
    """The zero-inflation model's logit link, as a family's ``link`` and ``mean``."""

    link: str = "logit"
    conjugate_gaussian: bool = False

    def mean(self, linear_predictor, parameters=None):
        """The zero probability of a logit."""
        return special.expit(np.asarray(linear_predictor, dtype=np.float64))


def _component(model, component: str):
    """The estimator itself (``"cond"``), or a view of its zero-inflation model
    (``"zi"``) with the five attributes this module reads."""
    if component == "cond":
        return model
    if component != "zi":
        raise ParameterError(f"component must be 'cond' or 'zi', got {component!r}")
    design, table = getattr(model, "zi_design_", None), getattr(model, "zi_fixed_effects_", None)
    if design is None or table is None:
        raise ParameterError("component='zi' needs a model fitted with a ziformula")
    if getattr(model, "wald_cov_", None) is None:
        raise ParameterError("this fit has no wald_cov_ (it was saved by an older mixedfx): refit it for the "
                             "zero-inflation model's marginal means")
    rows = coefficient_rows(model, "zi")
    cov = np.asarray(model.wald_cov_, dtype=np.float64)[np.ix_(rows, rows)]
    names = list(design.column_names)
    return SimpleNamespace(fixed_design_=design, family_=_ZeroInflationLink(),
                           fixed_effects_=pd.Series(table["Estimate"].to_numpy(dtype=float), index=names),
                           fixed_effects_cov_=pd.DataFrame(cov, index=names, columns=names),
                           model_=SimpleNamespace(fixed_design=np.asarray(model.model_.family_design["zi"])))


def _names(value, what: str) -> tuple:
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(n, str) for n in names):
        raise ParameterError(f"{what} must be a variable name or a list of names, got {value!r}")
    return names


def _categorical_levels(model_spec) -> dict:
    """Data variable -> levels of every categorical factor of the formulaic spec."""
    data_vars = set(model_spec.variables_by_source.get("data", ()))
    levels = {}
    for expression, (kind, state) in model_spec.encoder_state.items():
        if getattr(kind, "value", kind) != "categorical":
            continue
        used = [v for v in data_vars if re.search(rf"(?<![\w.]){re.escape(v)}(?![\w])", str(expression))]
        if len(used) == 1:
            levels[used[0]] = list(state["categories"])
    return levels


def _grid_variables(model, *, at: dict, data) -> dict:
    """Each grid variable's values: factor levels, covariate means, or ``at=``."""
    design = model.fixed_design_
    spec = design.model_spec
    data_vars = sorted(set(spec.variables_by_source.get("data", ())))
    for offset_spec in design.offset_specs:
        data_vars += sorted(set(offset_spec.variables_by_source.get("data", ())) - set(data_vars))
    levels = _categorical_levels(spec)
    unknown = set(at) - set(data_vars)
    if unknown:
        raise ParameterError(f"at= names {sorted(unknown)}, not variables of the fixed part {data_vars}")
    columns = list(design.column_names)
    variables = {}
    for name in data_vars:
        if name in levels:
            values = list(at.get(name, levels[name]))
            bad = [v for v in values if v not in levels[name]]
            if bad:
                raise ParameterError(f"at= gives level(s) {bad} of {name!r}, which has levels {levels[name]}")
            variables[name] = values
        elif name in at:
            variables[name] = list(np.atleast_1d(at[name]))
        elif data is not None:
            if name not in data.columns:
                raise DataError(f"data has no column {name!r}, a variable of the fixed part")
            variables[name] = [float(np.mean(np.asarray(data[name], dtype=float)))]
        elif name in columns:
            variables[name] = [float(np.mean(model.model_.fixed_design[:, columns.index(name)]))]
        else:
            raise ParameterError(f"the mean of the covariate {name!r} cannot be read from the design (it enters only "
                                 "through a transform): pass the training rows as data=, or its value as at=")
    return variables


def _average_grid(design, variables: dict, *, keep: tuple) -> tuple[pd.DataFrame, np.ndarray]:
    """The full reference grid's design rows averaged over the variables not kept.

    Rows are ordered as emmeans orders them: the first ``keep`` variable varies fastest.
    """
    names = list(variables)
    combos = [tuple(reversed(c)) for c in itertools.product(*[variables[n] for n in reversed(names)])]
    full = pd.DataFrame(combos, columns=names)
    X = design.transform(full)
    if design.offset_specs:
        raise ParameterError("emmeans of a model with offset(...) terms is not supported yet")
    kept_values = [variables[n] for n in keep]
    cells = [tuple(reversed(c)) for c in itertools.product(*reversed(kept_values))]
    rows = []
    for cell in cells:
        mask = np.ones(len(full), dtype=bool)
        for name, value in zip(keep, cell):
            mask &= (full[name] == value).to_numpy()
        rows.append(X[mask].mean(axis=0))
    grid = pd.DataFrame(cells, columns=list(keep))
    return grid, np.asarray(rows).reshape(len(cells), X.shape[1])


def _resolve_df(emm_or_model, df, L) -> np.ndarray:
    """The df of each row of ``L`` from the df source ``df`` (see :func:`emmeans`)."""
    model = emm_or_model
    if df is None:
        if not model.family_.conjugate_gaussian:
            df = "asymptotic"
        else:  # the estimator's ddf (lmerTest's Satterthwaite without one)
            df = getattr(model, "ddf", None) or "satterthwaite"
    if isinstance(df, str):
        if df not in DF_METHODS:
            raise ParameterError(f"df must be one of {sorted(DF_METHODS)}, a number or a callable, got {df!r}")
        df = DF_METHODS[df]
    if callable(df):
        values = np.asarray(df(model, L), dtype=float).reshape(-1)
    else:
        values = np.full(L.shape[0], float(df))
    if values.shape != (L.shape[0],) or np.any(~(values > 0)):
        raise ParameterError(f"the df source gave {values!r}; expected {L.shape[0]} positive values")
    return values


def _estimates(model, L: np.ndarray, df) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(L beta, SE, df)`` on the link scale."""
    beta = model.fixed_effects_.to_numpy(dtype=float)
    cov = np.asarray(model.fixed_effects_cov_, dtype=float)
    estimate = L @ beta
    se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", L, cov, L), 0.0))
    return estimate, se, _resolve_df(model, df, L)


def _means_table(emm: EMMeans) -> pd.DataFrame:
    """emmeans' summary of the means (link or response scale)."""
    estimate, se, df = _estimates(emm.model, emm.L, emm.df)
    quantile = np.where(np.isinf(df), stats.norm.ppf(0.5 + emm.level / 2),
                        stats.t.ppf(0.5 + emm.level / 2, np.where(np.isinf(df), 1.0, df)))
    lower, upper = estimate - quantile * se, estimate + quantile * se
    name = "emmean"
    link = emm.model.family_.link
    if emm.type == "response" and link != "identity":
        family = emm.model.family_
        name = _RESPONSE_NAMES.get(link, "response")
        mean = family.mean(estimate)
        se = np.abs(_link_derivative(link, estimate, mean)) * se
        estimate, lower, upper = mean, family.mean(lower), family.mean(upper)
    table = emm.grid.copy()
    asymptotic = bool(np.all(np.isinf(df)))
    low, high = ("asymp.LCL", "asymp.UCL") if asymptotic else ("lower.CL", "upper.CL")
    table[name], table["SE"], table["df"], table[low], table[high] = estimate, se, df, lower, upper
    return table


def _label(grid: pd.DataFrame, names: tuple, row: int) -> str:
    """A mean's label in a contrast: its levels joined by spaces; numbers get their
    variable's name, as emmeans writes ``Days0``."""
    parts = []
    for name in names:
        value = grid[name].iloc[row]
        parts.append(f"{name}{value:g}" if isinstance(value, (int, float, np.number)) else str(value))
    return " ".join(parts)


def _contrast_matrix(labels: list, method, ref: int) -> tuple[np.ndarray, list]:
    """Coefficients (n_contrasts, n_means) and labels of an emmeans contrast family."""
    k = len(labels)
    if method in ("pairwise", "revpairwise"):
        pairs = list(itertools.combinations(range(k), 2))
        if method == "revpairwise":
            pairs = [(j, i) for i, j in reversed(pairs)]
        coef = np.zeros((len(pairs), k))
        for row, (i, j) in enumerate(pairs):
            coef[row, i], coef[row, j] = 1.0, -1.0
        return coef, [f"{labels[i]} - {labels[j]}" for i, j in pairs]
    if method == "trt.vs.ctrl":
        others = [j for j in range(k) if j != ref]
        coef = np.zeros((len(others), k))
        for row, j in enumerate(others):
            coef[row, j], coef[row, ref] = 1.0, -1.0
        return coef, [f"{labels[j]} - {labels[ref]}" for j in others]
    if method == "eff":
        coef = np.eye(k) - 1.0 / k
        return coef, [f"{label} effect" for label in labels]
    if isinstance(method, dict):
        coef = np.asarray([np.asarray(v, dtype=float) for v in method.values()])
        if coef.ndim != 2 or coef.shape[1] != k:
            raise ParameterError(f"each custom contrast needs {k} coefficients (one per mean), got {coef.shape}")
        return coef, [str(name) for name in method]
    raise ParameterError("method must be 'pairwise', 'revpairwise', 'trt.vs.ctrl', 'eff' or a dict of "
                         f"coefficient lists, got {method!r}")


def p_adjust(p, method: str, *, statistic=None, n_means=None, df=None) -> np.ndarray:
    """Adjust one family of p-values as emmeans does (R's ``p.adjust``, and Tukey).

    Parameters
    ----------
    p : array-like
        Unadjusted two-sided p-values of one family of contrasts.
    method : {"tukey", "holm", "bonferroni", "sidak", "fdr", "BH", "none"}
        ``"tukey"`` uses the studentized range with ``n_means`` means and ``df``
        degrees of freedom, at ``sqrt(2) |statistic|``.
    statistic, n_means, df : optional
        Needed by ``"tukey"`` only.

    Returns
    -------
    numpy.ndarray
        The adjusted p-values.

    Examples
    --------
    >>> p_adjust([0.01, 0.04, 0.03], "holm").round(4).tolist()
    [0.03, 0.06, 0.06]
    >>> p_adjust([0.01, 0.04, 0.03], "fdr").round(4).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, dtype=float)
    m = len(p)
    if method == "none" or m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(1.0, m * p)
    if method == "sidak":
        return 1.0 - (1.0 - p) ** m
    if method == "holm":
        order = np.argsort(p)
        adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
        return adjusted[np.argsort(order)]
    if method in ("fdr", "BH"):
        order = np.argsort(p)[::-1]
        adjusted = np.minimum(1.0, np.minimum.accumulate(m / np.arange(m, 0, -1) * p[order]))
        return adjusted[np.argsort(order)]
    if method == "tukey":
        q = np.sqrt(2.0) * np.abs(np.asarray(statistic, dtype=float))
        return np.asarray(stats.studentized_range.sf(q, n_means, np.asarray(df, dtype=float)), dtype=float)
    raise ParameterError(f"adjust must be one of {_ADJUSTMENTS}, got {method!r}")


def contrast(emm: EMMeans, method="pairwise", *, adjust=None, ref=0, type=None) -> pd.DataFrame:
    """Contrasts of estimated marginal means, as emmeans' ``contrast``/``pairs``.

    Parameters
    ----------
    emm : EMMeans
        From :func:`emmeans`.
    method : {"pairwise", "revpairwise", "trt.vs.ctrl", "eff"} or dict, default "pairwise"
        The contrast family; a dict maps a label to one coefficient per mean.
    adjust : {"tukey", "holm", "bonferroni", "sidak", "fdr", "none"}, optional
        Multiplicity adjustment within each ``by`` group.  Default: ``"tukey"`` for
        pairwise comparisons, ``"fdr"`` for ``"eff"``, ``"holm"`` otherwise (emmeans'
        ``"dunnettx"`` for ``trt.vs.ctrl`` is not available).  Tukey's adjustment
        applies to pairwise comparisons only.
    ref : int, default 0
        Position of the control mean for ``"trt.vs.ctrl"``.
    type : {"link", "response"}, optional
        Default: the type of ``emm``.  On the response scale the differences of a logit
        or log model become ``odds.ratio`` or ``ratio`` (with delta-method SEs and
        ``null = 1``); the statistics and p-values are those of the link scale.

    Returns
    -------
    pandas.DataFrame
        ``contrast``, the ``by`` variables, ``estimate`` (or ``odds.ratio``/``ratio``),
        ``SE``, ``df``, ``t.ratio`` (``z.ratio`` at infinite df), ``p.value``.

    Examples
    --------
    The model of :class:`EMMeans`' example: odds ratios against the first level, and
    Tukey-adjusted pairwise differences on the logit scale.

    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> from mixedfx.design import build_fixed_design
    >>> from mixedfx.model import Bernoulli
    >>> frame = pd.DataFrame({"f": ["a", "b", "c", "a", "b", "c"]})
    >>> design, X = build_fixed_design("f", frame)
    >>> fit = SimpleNamespace(fixed_design_=design, family_=Bernoulli(),
    ...     fixed_effects_=pd.Series([-1.0, 0.5, 1.0], index=design.column_names),
    ...     fixed_effects_cov_=pd.DataFrame(np.diag([0.04, 0.08, 0.08])), model_=SimpleNamespace(fixed_design=X))
    >>> emm = emmeans(fit, "f")
    >>> contrast(emm, "trt.vs.ctrl", adjust="none", type="response").round(4)
      contrast  odds.ratio      SE   df  null  z.ratio  p.value
    0    b / a      1.6487  0.4663  inf   1.0   1.7678   0.0771
    1    c / a      2.7183  0.7688  inf   1.0   3.5355   0.0004
    >>> contrast(emm)[["contrast", "estimate", "z.ratio", "p.value"]].round(4)
      contrast  estimate  z.ratio  p.value
    0    a - b      -0.5  -1.7678   0.1805
    1    a - c      -1.0  -3.5355   0.0012
    2    b - c      -0.5  -1.2500   0.4237
    """
    type = emm.type if type is None else type
    pairwise = method in ("pairwise", "revpairwise")
    adjust = ("tukey" if pairwise else "fdr" if method == "eff" else "holm") if adjust is None else adjust
    if adjust not in _ADJUSTMENTS:
        raise ParameterError(f"adjust must be one of {_ADJUSTMENTS}, got {adjust!r}")
    if adjust == "tukey" and not pairwise:
        raise ParameterError("the Tukey adjustment applies to pairwise comparisons only; choose another adjust")
    codes = np.zeros(len(emm.grid), dtype=int) if not emm.by else \
        emm.grid.groupby(list(emm.by), sort=False).ngroup().to_numpy()
    groups = [np.flatnonzero(codes == code) for code in range(int(codes.max()) + 1)]
    pieces = []
    for rows in groups:
        labels = [_label(emm.grid, emm.specs, r) for r in rows]
        if not 0 <= ref < len(rows):
            raise ParameterError(f"ref={ref} is not the position of a mean (there are {len(rows)})")
        coef, names = _contrast_matrix(labels, method, ref)
        pieces.append(_contrast_group(emm, coef @ emm.L[rows], names, rows[0], adjust=adjust, n_means=len(rows),
                                      type=type, ratio=pairwise or method == "trt.vs.ctrl"))
    return pd.concat(pieces, ignore_index=True)


def _contrast_group(emm, L, names, first_row, *, adjust, n_means, type, ratio) -> pd.DataFrame:
    """One ``by`` group's contrasts: estimates, SEs, df, statistics, adjusted p."""
    estimate, se, df = _estimates(emm.model, L, emm.df)
    statistic = estimate / se
    t_df = np.where(np.isinf(df), 1.0, df)
    p = np.where(np.isinf(df), 2.0 * stats.norm.sf(np.abs(statistic)), 2.0 * stats.t.sf(np.abs(statistic), t_df))
    adjusted = p_adjust(p, adjust, statistic=statistic, n_means=n_means, df=df)
    table = pd.DataFrame({"contrast": names})
    for name in emm.by:
        table[name] = emm.grid[name].iloc[first_row]
    link = emm.model.family_.link
    name = "estimate"
    if type == "response" and ratio and link in _RATIO_NAMES:
        name = _RATIO_NAMES[link]
        estimate = np.exp(estimate)
        se = estimate * se
        table["contrast"] = [n.replace(" - ", " / ") for n in names]
    table[name], table["SE"], table["df"] = estimate, se, df
    if name != "estimate":
        table["null"] = 1.0
    table["z.ratio" if np.all(np.isinf(df)) else "t.ratio"] = statistic
    table["p.value"] = adjusted
    return table
