"""Nakagawa's R² and the intraclass correlation, as R's performance package computes them.

The variance of the response on the latent (link) scale splits into three parts, as in
``insight::get_variance``:

* fixed: ``var(X beta)`` over the training rows (the fixed part of the linear predictor,
  offsets excluded; denominator ``n - 1``, as R's ``var``);
* random: for each random term, the mean over rows of ``z' Sigma z`` (Johnson's 2014
  extension for random slopes; ``z`` is the term's per-row covariate vector), summed
  over terms; a term with one level per row (an observation-level random effect) counts
  as residual instead, as insight's dispersion variance;
* distribution-specific: ``sigma^2`` (identity link), ``pi^2/3`` (logit), ``1`` (probit),
  ``pi^2/6`` (cloglog), and for a log link the lognormal approximation
  ``log1p(V(mu) / mu^2)`` with ``mu = exp(b0)``, ``b0`` the intercept of the null model
  (the same random terms, an intercept alone), ``V`` the family's variance function:
  ``log1p(1/mu)`` for the Poisson, ``log1p(1/mu + 1/theta)`` for the negative binomial.

Then marginal R² = fixed / total, conditional R² = (fixed + random) / total, adjusted
ICC = random / (random + residual), unadjusted ICC = random / total.

The variance parts are asked of the family only through its ``link``, its ``variance``
function and its parameters, so every family mixedfx has is covered, ordinal included
(performance treats ``clmm`` fits as logit: ``pi^2/3``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from mixedfx.exceptions import ParameterError

__all__ = ["r2", "icc", "variance_decomposition", "distribution_variance"]

_LATENT_VARIANCE = {"logit": np.pi**2 / 3.0, "probit": 1.0, "cloglog": np.pi**2 / 6.0}


def distribution_variance(family, family_params, *, null_intercept=None) -> float:
    """The distribution-specific variance on the link scale (performance's default).

    Parameters
    ----------
    family : Family
        The fitted family (``model.family_``).
    family_params : mapping
        Its parameters (``model.model_parameters_.family_params``).
    null_intercept : float, optional
        The intercept of the null model; required for a log link.

    Returns
    -------
    float

    Raises
    ------
    ParameterError
        For a log link without ``null_intercept``, or a link with no known latent
        variance.

    Examples
    --------
    >>> from mixedfx.model import Bernoulli, Gaussian, NegativeBinomial, Poisson
    >>> round(distribution_variance(Bernoulli(), {}), 6)  # pi^2 / 3
    3.289868
    >>> distribution_variance(Bernoulli(link_name="probit"), {})
    1.0
    >>> distribution_variance(Gaussian(), {"sigma": 2.0})
    4.0
    >>> import numpy as np
    >>> round(distribution_variance(Poisson(), {}, null_intercept=np.log(4.0)), 6)  # log1p(1/4)
    0.223144
    >>> round(distribution_variance(NegativeBinomial(), {"dispersion": 2.0}, null_intercept=np.log(4.0)), 6)
    0.559616
    """
    link = family.link
    if link in _LATENT_VARIANCE:
        return float(_LATENT_VARIANCE[link])
    if link == "identity":
        return float(np.asarray(family.variance(np.zeros(1), family_params)).reshape(-1)[0])
    if link == "log":
        if null_intercept is None:
            raise ParameterError("the lognormal approximation of a log-link family needs the null model's intercept "
                                 "(null_intercept=)")
        mu = np.exp(float(null_intercept))
        variance = float(np.asarray(family.variance(np.array([mu]), family_params)).reshape(-1)[0])
        return float(np.log1p(variance / mu**2))
    raise ParameterError(f"no distribution-specific variance is known for the {link!r} link")


def _random_variance(model) -> tuple[float, float]:
    """``(random, observation_level)``: the mean of ``z' Sigma z`` over rows, summed over
    the terms, split into terms with fewer levels than rows and the others."""
    bound = model.model_
    random, observation_level = 0.0, 0.0
    for data, cov in zip(bound.random_terms, model.random_cov_):
        sigma = np.asarray(cov, dtype=float)
        if data.z is None:
            value = float(sigma[0, 0])
        else:
            z = np.asarray(data.z, dtype=float)
            value = float(np.mean(np.einsum("ij,jk,ik->i", z, sigma, z)))
        if data.num_levels >= bound.n_obs:
            observation_level += value
        else:
            random += value
    return random, observation_level


def _null_intercept(model) -> float:
    """The intercept of the null model: the same random terms and offset, an intercept
    alone, fitted with the estimator's own settings."""
    bound = model.model_
    null = dataclasses.replace(bound, fixed_design=np.ones((bound.n_obs, 1)), fixed_names=("Intercept",))
    refit = model.refitted(bound_model=null, random_state=model.random_state)
    return float(np.asarray(refit.model_parameters_.fixed_effects).reshape(-1)[0])


def variance_decomposition(model, *, null_intercept=None) -> pd.Series:
    """The latent-scale variance parts behind :func:`r2` and :func:`icc`.

    Parameters
    ----------
    model : MixedEffectsRegressor or MixedEffectsClassifier
        A fitted estimator.
    null_intercept : float, optional
        The null model's intercept, for a log-link family; fitted when omitted (one
        more Monte Carlo EM fit).

    Returns
    -------
    pandas.Series
        ``var_fixed``, ``var_random``, ``var_residual`` (distribution-specific plus
        observation-level random effects) and ``var_distribution``, as
        ``insight::get_variance`` names them.

    Examples
    --------
    A Poisson model (a stand-in for a fitted estimator: the attributes read), with the
    null model's intercept given, ``log(4)``, so that no null model is fitted:

    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Poisson
    >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> fit = SimpleNamespace(
    ...     fixed_effects_=pd.Series([1.0, 0.3]), family_=Poisson(), random_cov_=(np.array([[0.5]]),),
    ...     model_=SimpleNamespace(fixed_design=X, random_terms=(term,), n_obs=4),
    ...     model_parameters_=SimpleNamespace(fixed_effects=np.array([1.0, 0.3]), family_params={}))
    >>> variance_decomposition(fit, null_intercept=np.log(4.0)).round(4)  # 0.09 * 5/3, 0.5, log1p(1/4)
    var_fixed           0.1500
    var_random          0.5000
    var_residual        0.2231
    var_distribution    0.2231
    dtype: float64
    """
    if not hasattr(model, "fixed_effects_"):
        raise NotFittedError(f"this {type(model).__name__} is not fitted yet; call fit before r2 or icc")
    bound = model.model_
    params = model.model_parameters_
    linear = bound.fixed_design @ np.asarray(params.fixed_effects, dtype=float)
    var_fixed = float(np.var(linear, ddof=1))
    var_random, observation_level = _random_variance(model)
    refusal = model.family_.r2_refusal()  # before a null model's fit
    if refusal is not None:
        raise ParameterError(refusal)
    if model.family_.link == "log" and null_intercept is None:
        null_intercept = _null_intercept(model)
    var_distribution = distribution_variance(model.family_, params.family_params, null_intercept=null_intercept)
    return pd.Series({"var_fixed": var_fixed, "var_random": var_random,
                      "var_residual": var_distribution + observation_level, "var_distribution": var_distribution})


def r2(model, *, null_intercept=None) -> pd.Series:
    """Nakagawa's marginal and conditional R², as ``performance::r2_nakagawa``.

    Parameters
    ----------
    model : MixedEffectsRegressor or MixedEffectsClassifier
        A fitted estimator of any family.
    null_intercept : float, optional
        See :func:`variance_decomposition`.

    Returns
    -------
    pandas.Series
        ``R2_conditional`` (fixed and random effects) and ``R2_marginal`` (fixed
        effects alone).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Bernoulli
    >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> fit = SimpleNamespace(
    ...     fixed_effects_=pd.Series([0.0, 1.0]), family_=Bernoulli(), random_cov_=(np.array([[2.0]]),),
    ...     model_=SimpleNamespace(fixed_design=X, random_terms=(term,), n_obs=4),
    ...     model_parameters_=SimpleNamespace(fixed_effects=np.array([0.0, 1.0]), family_params={}))
    >>> r2(fit).round(4)  # var(X beta) = 5/3, random 2, distribution pi^2/3
    R2_conditional    0.5271
    R2_marginal       0.2396
    dtype: float64
    """
    parts = variance_decomposition(model, null_intercept=null_intercept)
    total = parts["var_fixed"] + parts["var_random"] + parts["var_residual"]
    return pd.Series({"R2_conditional": (parts["var_fixed"] + parts["var_random"]) / total,
                      "R2_marginal": parts["var_fixed"] / total})


def icc(model, *, null_intercept=None) -> pd.Series:
    """The adjusted and unadjusted intraclass correlation, as ``performance::icc``.

    Parameters
    ----------
    model : MixedEffectsRegressor or MixedEffectsClassifier
        A fitted estimator of any family.
    null_intercept : float, optional
        See :func:`variance_decomposition`.

    Returns
    -------
    pandas.Series
        ``ICC_adjusted`` = random / (random + residual) and ``ICC_unadjusted`` =
        random / (fixed + random + residual).

    Examples
    --------
    The model of :func:`r2`'s example:

    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Bernoulli
    >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> fit = SimpleNamespace(
    ...     fixed_effects_=pd.Series([0.0, 1.0]), family_=Bernoulli(), random_cov_=(np.array([[2.0]]),),
    ...     model_=SimpleNamespace(fixed_design=X, random_terms=(term,), n_obs=4),
    ...     model_parameters_=SimpleNamespace(fixed_effects=np.array([0.0, 1.0]), family_params={}))
    >>> icc(fit).round(4)  # 2 / (2 + pi^2/3), 2 / (5/3 + 2 + pi^2/3)
    ICC_adjusted      0.3781
    ICC_unadjusted    0.2875
    dtype: float64
    """
    parts = variance_decomposition(model, null_intercept=null_intercept)
    total = parts["var_fixed"] + parts["var_random"] + parts["var_residual"]
    if parts["var_random"] + parts["var_residual"] <= 0.0:
        raise ParameterError("the ICC is undefined: the random effects' and the residual variances are both zero "
                             "(an exact fit)")
    return pd.Series({"ICC_adjusted": parts["var_random"] / (parts["var_random"] + parts["var_residual"]),
                      "ICC_unadjusted": parts["var_random"] / total})
