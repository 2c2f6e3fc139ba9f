"""lme4's one-line calls: ``lmer`` and ``glmer`` fit an estimator and return it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mixedfx.estimator.classifier import MixedEffectsClassifier
from mixedfx.estimator.regressor import MixedEffectsRegressor
from mixedfx.exceptions import DataError, did_you_mean
from mixedfx.model import get_family

__all__ = ["lmer", "glmer"]


def _row_argument(value, data: pd.DataFrame, name: str):
    """``weights=`` or ``trials=`` as lme4 takes them: a column of ``data`` named by a
    string, or values per row (array-like); ``None`` stays ``None``."""
    if value is None or not isinstance(value, str):
        return value
    if value not in data.columns:
        raise DataError(f"{name}={value!r} names no column of the data.{did_you_mean(value, data.columns)}")
    return np.asarray(data[value])


def lmer(formula: str, data: pd.DataFrame, *, weights=None, **kwargs) -> MixedEffectsRegressor:
    """Fit a linear mixed model in one call, as lme4's ``lmer(formula, data, REML=FALSE)``.

    Parameters
    ----------
    formula : str
        lme4 formula, e.g. ``"y ~ service + (1 | s) + (1 | d) + (1 | dept)"``.
    data : pandas.DataFrame
    weights : str or array-like of shape (n_rows,), optional
        lmer's ``weights=``: precision weights (row ``i``'s residual variance is
        ``sigma^2 / w_i``), as a column name of ``data`` or values per row; passed to
        ``fit`` as ``sample_weight``.
    **kwargs
        Other :class:`MixedEffectsRegressor` parameters (``random_state``,
        ``verbose``, ``tol``, ...).

    Returns
    -------
    MixedEffectsRegressor
        The fitted estimator.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> fit = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> list(fit.variance_components_["group"])
    ['g', 'Residual']
    """
    kwargs.setdefault("family", "gaussian")
    sample_weight = _row_argument(weights, data, "weights")
    return MixedEffectsRegressor(formula, **kwargs).fit(data, sample_weight=sample_weight)


def glmer(formula: str, data: pd.DataFrame, *, family="bernoulli", weights=None, trials=None, **kwargs):
    """Fit a generalized linear mixed model in one call, as lme4's ``glmer``.

    Parameters
    ----------
    formula : str
        lme4 formula; ``cbind(successes, failures) ~ ...`` for a binomial response,
        ``offset(log(exposure))`` for rates.
    data : pandas.DataFrame
    family : str or Family, default "bernoulli"
        ``"bernoulli"`` and ``"ordinal"`` give a :class:`MixedEffectsClassifier`;
        ``"binomial"``, ``"poisson"``, ``"negative_binomial"`` and ``"gaussian"`` a
        :class:`MixedEffectsRegressor`.
    weights : str or array-like of shape (n_rows,), optional
        glmer's prior ``weights=``: each row's log-likelihood is multiplied by its
        weight; a column name of ``data`` or values per row.
    trials : str or array-like of shape (n_rows,), optional
        A binomial response's trials, for a response of proportions or successes (as a
        column name or values per row); ``cbind(successes, failures)`` is the other way.
    **kwargs
        Other estimator parameters.

    Returns
    -------
    MixedEffectsClassifier or MixedEffectsRegressor
        The fitted estimator.

    Examples
    --------
    >>> import numpy as np
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> data["count"] = np.random.default_rng(0).poisson(np.exp(0.3 + 0.2 * data["x"]))
    >>> fit = mixedfx.glmer("count ~ x + (1 | g)", data, family="poisson", random_state=0, verbose=0)
    >>> type(fit).__name__, fit.family_.link
    ('MixedEffectsRegressor', 'log')
    """
    resolved = get_family(family)
    estimator = MixedEffectsClassifier if resolved.is_classification else MixedEffectsRegressor
    fit_arguments = {"sample_weight": _row_argument(weights, data, "weights")}
    if trials is not None:
        fit_arguments["trials"] = _row_argument(trials, data, "trials")
    return estimator(formula, family=family, **kwargs).fit(data, **fit_arguments)
