"""lme4's one-line calls: ``lmer`` and ``glmer`` fit an estimator and return it."""

from __future__ import annotations

import pandas as pd

from mixedfx.estimator.classifier import MixedEffectsClassifier
from mixedfx.estimator.regressor import MixedEffectsRegressor
from mixedfx.model import get_family

__all__ = ["lmer", "glmer"]


def lmer(formula: str, data: pd.DataFrame, **kwargs) -> MixedEffectsRegressor:
    """Fit a linear mixed model in one call, as lme4's ``lmer(formula, data, REML=FALSE)``.

    Parameters
    ----------
    formula : str
        lme4 formula, e.g. ``"y ~ service + (1 | s) + (1 | d) + (1 | dept)"``.
    data : pandas.DataFrame
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
    return MixedEffectsRegressor(formula, **kwargs).fit(data)


def glmer(formula: str, data: pd.DataFrame, *, family="bernoulli", **kwargs):
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
    return estimator(formula, family=family, **kwargs).fit(data)
