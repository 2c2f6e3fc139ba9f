"""Finishing a fit: from the Monte Carlo EM result to the estimates an estimator stores.

:func:`finish_fit` warns of a separation of a categorical response by the fixed
effects (:mod:`mixedfx.model.separation`), moves the standard deviations whose ML
estimate is zero onto the boundary, re-estimates a small one (and the random effects'
conditional moments) by quadrature where the model allows it, computes the exact
Gaussian quantities (dense, sharded across devices, or by conjugate gradients when the
dense blocks are too large) or, for the other families, the log-likelihood (by
quadrature for one scalar random term, by importance sampling otherwise) and the Laplace
standard errors, and returns one :class:`FinishedFit` record.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from mixedfx.exceptions import DataWarning
from mixedfx.inference.boundary import boundary_components, quadrature_components, zero_components
from mixedfx.inference.distributed import sharded_cross_products
from mixedfx.inference.layout import ParameterLayout, fixed_effects_covariance, wald_covariance
from mixedfx.inference.mcem import MCEMResult
from mixedfx.inference.runaway import runaway_fixed_effects, runaway_message
from mixedfx.inference.memory import peak_memory_bytes
from mixedfx.inference.summary import FitSummary
from mixedfx.model import (
    DenseBlockTooLarge,
    MixedModel,
    ModelParameters,
    gaussian_marginal,
    marginal_log_likelihood,
)
from mixedfx.model.quadrature import (QUADRATURE_METHOD, quadrature_applies, quadrature_log_likelihood,
                                       quadrature_moments)
from mixedfx.model.separation import separation_of_model
from mixedfx.model.variation import little_variation_of_model

__all__ = ["FinishedFit", "finish_fit"]


@dataclasses.dataclass(frozen=True, eq=False)
class FinishedFit:
    """What a fit hands the estimator: the final estimates and everything computed from them.

    Attributes
    ----------
    parameters : ModelParameters
        The estimates: boundary sds at zero; for the Gaussian family the fixed effects
        are the generalized least squares estimate given the variance parameters.
    summary : FitSummary
        The Monte Carlo EM record, with the boundary estimates set to zero.
    fixed_effects_cov : numpy.ndarray of shape (n_fixed, n_fixed)
        Internal fixed effects (the model's ``fixed_names``); NaN when too large.
    log_likelihood, log_likelihood_se : float or None
        ``None`` when not computed; the standard error is 0 when exact.
    log_likelihood_method : str or None
    log_likelihood_laplace : float or None
        The Laplace approximation at the estimates (glmer's ``logLik``); the exact
        value for the Gaussian family; ``None`` when not computed.
    conditional_means, conditional_covs : tuple of numpy.ndarray
        Per term, ``(num_levels, dim)`` and ``(num_levels, dim, dim)``: exact for the
        Gaussian family where computed, from the E-step draws otherwise.
    draws : tuple of numpy.ndarray
        Per term, the kept E-step draws.
    boundary_names : tuple of str
        The parameters moved onto the boundary.
    wald_cov : numpy.ndarray or None
        For a family with its own coefficients (glmmTMB's ``zi`` or ``disp``): the Wald
        covariance of the fixed effects and the family's unconstrained parameters
        jointly (:func:`~mixedfx.inference.layout.wald_covariance`), computed once;
        ``fixed_effects_cov`` is its leading block.  ``None`` otherwise.
    """

    parameters: ModelParameters
    summary: FitSummary
    fixed_effects_cov: np.ndarray
    log_likelihood: float | None
    log_likelihood_se: float | None
    log_likelihood_method: str | None
    log_likelihood_laplace: float | None
    conditional_means: tuple
    conditional_covs: tuple
    draws: tuple
    boundary_names: tuple[str, ...]
    wald_cov: np.ndarray | None = None


def finish_fit(model: MixedModel, result: MCEMResult, *, reml: bool = False, seed: int = 0, distribute=None,
               max_dense_entries: int | None = None, stacklevel: int = 2) -> FinishedFit:
    """The estimates of a Monte Carlo EM fit, finished.

    Parameters
    ----------
    model : MixedModel
    result : MCEMResult
        From :func:`~mixedfx.inference.fit_mcem`.
    reml : bool, default False
        A REML fit: judge the boundary and report the log-likelihood by the
        restricted likelihood (``family.conjugate_gaussian`` only).
    seed : int, default 0
        Seed of the importance-sampling log-likelihood.
    distribute : tf.distribute.Strategy, optional
        Take the exact Gaussian sums over rows shard by shard.
    max_dense_entries : int, optional
        Bound on the dense blocks of the exact Gaussian computations; past it, the
        conjugate-gradient path (without log-likelihood and conditional sds).
    stacklevel : int, default 2
        Of the warnings issued when a quantity could not be computed, counted from
        this function (2: its caller).

    Returns
    -------
    FinishedFit

    Examples
    --------
    >>> import mixedfx
    >>> from mixedfx.design import bind_data
    >>> from mixedfx.model import Gaussian, bind_model
    >>> from mixedfx.inference import MCEMOptions, fit_mcem
    >>> from mixedfx.inference.finish import finish_fit
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = bind_model(Gaussian(), bind_data(mixedfx.parse_formula("y ~ x + (1 | g)"), data))
    >>> finished = finish_fit(model, fit_mcem(model, options=MCEMOptions(), seed=(0, 1), progress=False))
    >>> finished.log_likelihood_method, finished.log_likelihood_se, finished.fixed_effects_cov.shape
    ('exact', 0.0, (2, 2))
    >>> finished.parameters.fixed_effects.round(1).tolist()
    [1.0, 0.5]
    """
    finished = _finish(model, result, reml=reml, seed=seed, distribute=distribute,
                       max_dense_entries=max_dense_entries, stacklevel=stacklevel + 1)
    # The exact computations may set the peak: measured again after them.
    summary = dataclasses.replace(finished.summary, memory_peak_bytes=peak_memory_bytes())
    return dataclasses.replace(finished, summary=summary)


def _finish(model, result, *, reml, seed, distribute, max_dense_entries, stacklevel) -> FinishedFit:
    """:func:`finish_fit`'s work, but for the memory figure."""
    params, summary = result.parameters, _with_data_warnings(model, result.summary, stacklevel=stacklevel + 1)
    components, names = boundary_components(model, params, reml=reml, seed=seed)
    if components:
        # Singular fit: these sds' ML estimate is zero, which Monte Carlo EM only approaches.
        params = zero_components(params, components)
        estimate = summary.estimate.copy()
        estimate[[summary.parameter_names.index(name) for name in names]] = 0.0
        summary = dataclasses.replace(
            summary, estimate=estimate, at_boundary=tuple(dict.fromkeys(summary.at_boundary + tuple(names))))
    params, refined = quadrature_components(model, params, start=result.random_effects)
    moments = (tuple(result.random_effects), tuple(result.random_effects_cov))
    if refined:  # a small sd that the EM iterates leave to Monte Carlo noise
        estimate = ParameterLayout.from_model(model).row(params)  # the sd and the family's parameters moved
        summary = dataclasses.replace(summary, estimate=estimate, by_quadrature=tuple(refined))
        moments = tuple((m,) for m in quadrature_moments(model, params, start=result.random_effects))
    common = dict(summary=summary, draws=tuple(result.draws), boundary_names=tuple(names))
    exact = None
    if model.family.conjugate_gaussian:
        exact = _exact_gaussian(model, params, distribute=distribute, max_dense_entries=max_dense_entries,
                                stacklevel=stacklevel + 1)
    if exact is not None:
        log_likelihood = exact.reml_log_likelihood if reml else exact.log_likelihood
        computed = log_likelihood is not None
        return FinishedFit(
            parameters=dataclasses.replace(params, fixed_effects=exact.gls_fixed_effects),
            fixed_effects_cov=exact.fixed_effects_cov, log_likelihood=log_likelihood,
            log_likelihood_se=0.0 if computed else None,
            log_likelihood_method=("exact (REML criterion)" if reml else "exact") if computed else None,
            log_likelihood_laplace=log_likelihood,
            conditional_means=tuple(exact.conditional_means),
            conditional_covs=tuple(exact.conditional_covs) if exact.conditional_covs else tuple(
                result.random_effects_cov),
            **common,
        )
    likelihood = (None, None, None, None)
    try:
        likelihood = _log_likelihood(model, params, seed=seed, start=result.random_effects,
                                     max_dense_entries=max_dense_entries)
    except DenseBlockTooLarge as exc:
        warnings.warn(f"log-likelihood not computed: {exc}", UserWarning, stacklevel=stacklevel)
    joint = None
    if model.family.coefficient_blocks():  # one computation for the fixed effects' and the family's tables
        joint = wald_covariance(model, params, result.random_effects)
        cov = joint[:len(model.fixed_names), :len(model.fixed_names)]
    else:
        try:
            cov = fixed_effects_covariance(model, params, result.random_effects)
        except DenseBlockTooLarge:
            cov = np.full((len(model.fixed_names),) * 2, np.nan)
    return FinishedFit(parameters=params, fixed_effects_cov=cov, wald_cov=joint, log_likelihood=likelihood[0],
                       log_likelihood_se=likelihood[1], log_likelihood_method=likelihood[2],
                       log_likelihood_laplace=likelihood[3],
                       conditional_means=moments[0], conditional_covs=moments[1], **common)


def _log_likelihood(model, params, *, seed, start, max_dense_entries) -> tuple:
    """``(log-likelihood, its standard error, method, Laplace approximation)`` of a
    non-Gaussian fit: by adaptive Gauss-Hermite quadrature (glmer's ``nAGQ = 25``,
    standard error 0) where the model has one scalar random term, by importance sampling
    (a Monte Carlo standard error) otherwise."""
    quadrature = quadrature_applies(model)
    estimate = marginal_log_likelihood(model, params, seed=seed, start=start, max_dense_entries=max_dense_entries,
                                       **({"n_draws": 0} if quadrature else {}))
    if quadrature:
        return (quadrature_log_likelihood(model, params, start=start), 0.0, QUADRATURE_METHOD, estimate.laplace)
    return estimate.log_likelihood, estimate.standard_error, estimate.method, estimate.laplace


def _with_data_warnings(model: MixedModel, summary: FitSummary, *, stacklevel: int) -> FitSummary:
    """Warn of a separation of the response by the fixed effects, of a response that
    does not vary within the levels of a grouping factor, and of fixed effects that run
    away across the iterations; record them."""
    separation = separation_of_model(model)
    texts = little_variation_of_model(model)
    if separation is not None:
        texts = (separation.message("the response"),) + texts
    n_fixed = len(model.fixed_names)
    runaway = runaway_fixed_effects(summary.trace[:, :n_fixed], summary.parameter_names[:n_fixed],
                                    bound=model.family.runaway_bound)
    runaway = tuple(name for name in runaway if separation is None or name not in separation.columns)
    if runaway:  # those the separation warning names are not named twice
        texts = texts + (runaway_message(runaway),)
    for text in texts:
        warnings.warn(text, DataWarning, stacklevel=stacklevel)
    if not texts:
        return summary
    return dataclasses.replace(summary, data_warnings=summary.data_warnings + texts)


def _exact_gaussian(model, params, *, distribute, max_dense_entries, stacklevel):
    """Given the variance parameters, the fixed effects and the conditional moments of
    the random effects in closed form (lme4's, exactly), by the one implementation
    :func:`~mixedfx.model.gaussian_marginal`: its sums over rows local or shard by
    shard, its solves dense, or by conjugate gradients when too large to factor;
    ``None`` if even that fails."""
    row_sums = None if distribute is None else sharded_cross_products(distribute)
    try:
        return gaussian_marginal(model, params, profile_fixed_effects=True, row_sums=row_sums,
                                 max_dense_entries=max_dense_entries)
    except DenseBlockTooLarge as exc:
        exact = None
        try:
            exact = gaussian_marginal(model, params, profile_fixed_effects=True, solver="conjugate_gradients")
            done = "the fixed effects, their standard errors and the conditional means are exact (solved " \
                   "iteratively); the log-likelihood and the conditional sds are not computed"
        except np.linalg.LinAlgError as failure:
            done = (f"no exact quantities computed ({failure}); the fixed effects are the Monte Carlo EM "
                    "averages, whose Monte Carlo error the stopping rule does not judge for a Gaussian fit")
        warnings.warn(f"{exc}: {done}", UserWarning, stacklevel=stacklevel)
        return exact
