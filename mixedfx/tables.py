"""The fitted estimators' tables, built from the finished fit's arrays.

lme4's ``as.data.frame(VarCorr(m))`` layout, the per-term covariance matrices, the
conditional means of the random effects per grouping factor (uncorrelated terms of one
factor, ``(x || g)``, side by side), the quantiles of the Pearson residuals, and an
ordinal model's thresholds.  Pure functions of arrays and designs: the estimators call
them and store what they return.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mixedfx.model.covariance import term_structure

__all__ = [
    "variance_components_frame",
    "random_cov_frames",
    "random_effects_frames",
    "residual_quantiles",
    "thresholds_series",
    "coefficient_table",
]


def variance_components_frame(terms, random_cov, *, residual_sd=None) -> pd.DataFrame:
    """lme4's ``as.data.frame(VarCorr(m))``: columns ``group``, ``var1``, ``var2``,
    ``vcov``, ``sdcor``.

    Per term, one row per coefficient (variance and sd), then one per pair (covariance
    and correlation); a final ``"Residual"`` row when ``residual_sd`` is given.  A term
    with a covariance structure (``ar1(0 + t | g)``) has one row per parameter of its
    structure instead, as glmmTMB's ``VarCorr`` reports it: the sds (one where the
    structure has a common sd), then e.g. ``("ar1", "rho")``; see
    :meth:`mixedfx.model.covariance.CovarianceStructure.components`.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from mixedfx.tables import variance_components_frame
    >>> term = SimpleNamespace(name="g", coef_names=("(Intercept)", "x"), dim=2)
    >>> frame = variance_components_frame([term], [np.array([[4.0, 1.0], [1.0, 1.0]])], residual_sd=0.5)
    >>> frame[["var1", "var2", "sdcor"]].to_numpy().tolist()
    [['(Intercept)', None, 2.0], ['x', None, 1.0], ['(Intercept)', 'x', 0.5], [None, None, 0.5]]
    """
    rows = []
    for term, matrix in zip(terms, random_cov):
        structure = term_structure(term)
        for var1, var2, vcov, sdcor in structure.components(term.coef_names, matrix):
            rows.append({"group": term.name, "var1": var1, "var2": var2, "vcov": vcov, "sdcor": sdcor})
    if residual_sd is not None:
        rows.append({"group": "Residual", "var1": None, "var2": None, "vcov": residual_sd**2, "sdcor": residual_sd})
    frame = pd.DataFrame(rows, columns=["group", "var1", "var2", "vcov", "sdcor"])
    for column in ("group", "var1", "var2"):
        frame[column] = pd.Series([row[column] for row in rows], dtype=object)
    return frame


def random_cov_frames(terms, random_cov) -> tuple[pd.DataFrame, ...]:
    """Per term, its coefficients' covariance matrix, labelled by coefficient."""
    return tuple(pd.DataFrame(matrix, index=list(term.coef_names), columns=list(term.coef_names))
                 for term, matrix in zip(terms, random_cov))


def random_effects_frames(random_design, means, covs, draws):
    """Per grouping factor: the conditional means (a frame, levels by coefficients),
    each level's conditional covariance and the kept draws; the terms of one factor,
    ``(x || g)``, side by side (block-diagonal covariances).

    Returns
    -------
    effects, covariances, draws : dict of str
        Keyed by the term's name (the grouping factor).
    """
    effects, covariances, kept = {}, {}, {}
    for term, term_means, term_covs, term_draws in zip(random_design.terms, means, covs, draws):
        labels = random_design.factors[term.factor].labels
        block = pd.DataFrame(term_means, index=labels, columns=list(term.coef_names))
        if term.name not in effects:
            effects[term.name], covariances[term.name], kept[term.name] = block, term_covs, term_draws
        else:  # uncorrelated terms of one factor, (x || g): side by side
            effects[term.name] = effects[term.name].join(block)
            covariances[term.name] = _block_diagonal(covariances[term.name], term_covs)
            kept[term.name] = np.concatenate([kept[term.name], term_draws], axis=-1)
    return effects, covariances, kept


def residual_quantiles(family, model, family_params, linear_predictor) -> pd.Series | None:
    """Quantiles (``Min``, ``1Q``, ``Median``, ``3Q``, ``Max``) of the Pearson residuals of
    the training rows; ``None`` for a family without residuals."""
    if not family.has_residuals:
        return None
    # one row vector at a time (ten million rows: 80 MB each)
    pearson = model.response - family.response_mean(linear_predictor, family_params, rows=model.family_rows) * (
        1.0 if model.trials is None else model.trials)
    pearson /= np.sqrt(np.maximum(family.response_variance(linear_predictor, family_params,
                                                           rows=model.family_rows), 1e-300))
    return pd.Series(np.quantile(pearson, [0.0, 0.25, 0.5, 0.75, 1.0]), index=["Min", "1Q", "Median", "3Q", "Max"])


def thresholds_series(family, thresholds) -> pd.Series | None:
    """An ordinal model's cutpoints, named like clmm's (``"1|2"``); ``None`` without."""
    if thresholds is None:
        return None
    return pd.Series(thresholds, index=list(family.parameter_labels()), name="cutpoint")


def _block_diagonal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per level, the block-diagonal matrix of ``a[j]`` and ``b[j]``."""
    da, db = a.shape[-1], b.shape[-1]
    out = np.zeros(a.shape[:-2] + (da + db, da + db))
    out[..., :da, :da], out[..., da:, da:] = a, b
    return out


def coefficient_table(estimates, names, cov) -> pd.DataFrame:
    """glmmTMB's "Zero-inflation model" or "Dispersion model" table: ``Estimate``,
    ``Std. Error`` (from ``cov``, the coefficients' Wald covariance), ``z value`` and
    ``Pr(>|z|)``, one row per column of the design."""
    from scipy import stats

    estimate = np.atleast_1d(np.asarray(estimates, dtype=float))
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    z = estimate / se
    return pd.DataFrame({"Estimate": estimate, "Std. Error": se, "z value": z,
                         "Pr(>|z|)": 2.0 * stats.norm.sf(np.abs(z))}, index=list(names))
