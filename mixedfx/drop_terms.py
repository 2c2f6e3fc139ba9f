"""lme4's ``drop1`` for mixed models: each droppable fixed term left out in turn.

This module is of the results layer: it refits estimators through their
:meth:`~mixedfx.MixedEffectsRegressor.update`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.utils.validation import check_is_fitted

from mixedfx.exceptions import ParameterError
from mixedfx.results import count_parameters

__all__ = ["drop1", "droppable_terms"]


def droppable_terms(model) -> list[str]:
    """The fixed terms that respect marginality: those contained in no other term.

    As R's ``drop.scope``: with ``a * b``, only ``a:b`` may be dropped.

    Parameters
    ----------
    model : fitted MixedEffectsRegressor or MixedEffectsClassifier

    Returns
    -------
    list of str
        Term labels in formula order, e.g. ``["recipe:temp"]``.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> data["z"] = data["x"] ** 2
    >>> model = mixedfx.lmer("y ~ x * z + (1 | g)", data, random_state=0, verbose=0)
    >>> droppable_terms(model)
    ['x:z']
    """
    check_is_fitted(model, "fixed_effects_")
    terms = [term for term in model.fixed_design_.model_spec.terms if str(term) != "1"]
    factors = [frozenset(str(factor) for factor in term.factors) for term in terms]
    return [str(term) for term, own in zip(terms, factors) if not any(own < other for other in factors)]


def _log_likelihood(model) -> float:
    """The log-likelihood glmer reports (Laplace) where there is one, else the model's."""
    laplace = getattr(model, "log_likelihood_laplace_", None)
    value = laplace if laplace is not None else model.log_likelihood_
    if value is None:
        raise ParameterError("drop1 needs the models' log-likelihoods, which were not computed (too large)")
    return float(value)


def drop1(model, *, test="Chisq") -> pd.DataFrame:
    """Each droppable fixed term left out in turn, as lme4's ``drop1(m, test = "Chisq")``.

    Every model is fitted by maximum likelihood: a REML fit is refitted with ML first
    (lme4's ``drop1`` compares ML log-likelihoods too, through ``extractAIC``, which
    calls ``refitML``).  Terms follow marginality (:func:`droppable_terms`).  For a
    GLMM the log-likelihood is the Laplace approximation
    (``log_likelihood_laplace_``, glmer's ``logLik``), so that the table is lme4's;
    for a Gaussian model it is exact.

    Parameters
    ----------
    model : fitted MixedEffectsRegressor or MixedEffectsClassifier
        Fitted with a formula; its ``training_data_`` is refitted.
    test : {"Chisq", "none"}, default "Chisq"
        ``"Chisq"`` adds the likelihood-ratio statistic ``LRT`` and its p-value
        ``Pr(Chi)`` (chi-squared with ``Df`` degrees of freedom).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``"<none>"`` and the dropped terms; columns ``Df`` (parameters
        removed), ``AIC``, and with ``test="Chisq"`` ``LRT`` and ``Pr(Chi)``.

    Raises
    ------
    ParameterError
        For another ``test``, or a model without fixed terms to drop.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> table = mixedfx.drop1(model)
    >>> list(table.index), list(table.columns), int(table.loc["x", "Df"])
    (['<none>', 'x'], ['Df', 'AIC', 'LRT', 'Pr(Chi)'], 1)
    >>> bool(table.loc["x", "Pr(Chi)"] < 1e-10)
    True
    """
    check_is_fitted(model, "fixed_effects_")
    if test not in ("Chisq", "none"):
        raise ParameterError(f"test must be 'Chisq' or 'none', got {test!r}")
    base = model if model.method_ != "reml" else model.update(method="ml", verbose=0)
    terms = droppable_terms(base)
    if not terms:
        raise ParameterError("the model has no fixed term to drop (drop1 drops fixed terms, not the intercept)")
    loglik, npar = _log_likelihood(base), count_parameters(base)
    rows = {"<none>": (np.nan, -2.0 * loglik + 2.0 * npar, np.nan)}
    for term in terms:
        smaller = base.update(f"~ . - {term}", verbose=0)
        small_npar = count_parameters(smaller)
        small_loglik = _log_likelihood(smaller)
        rows[term] = (npar - small_npar, -2.0 * small_loglik + 2.0 * small_npar, 2.0 * (loglik - small_loglik))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["Df", "AIC", "LRT"])
    if test == "none":
        return table[["Df", "AIC"]]
    table["Pr(Chi)"] = stats.chi2.sf(table["LRT"].clip(lower=0.0), table["Df"])
    return table
