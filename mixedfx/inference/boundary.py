"""Singular fits: variance components whose maximum likelihood estimate is zero.

Monte Carlo EM approaches a zero variance slowly, and its Monte Carlo noise keeps the
estimate a little above zero, so the boundary cannot be read off the trace as lme4
reads its optimizer's ``theta``.  It is tested instead: a standard deviation is at
the boundary when setting it to zero does not lower the log-likelihood (exact for
the Gaussian family, profiled over the fixed effects, or the restricted likelihood
of a REML fit; the Laplace approximation for the others) by more than ``tolerance``.
Only small standard deviations are tried.  For the families judged by the Laplace
approximation, whose estimates keep more Monte Carlo noise, a zero that passes must
also be the approximation's maximum along that standard deviation (a bounded search
between zero and twice the estimate): glmer reports 0.07, not zero, where the
likelihood at zero is only 5e-4 lower.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from mixedfx.inference.layout import ParameterLayout
from mixedfx.model.blocks import DenseBlockTooLarge
from mixedfx.model.gaussian import gaussian_marginal
from mixedfx.model.joint import MixedModel, ModelParameters
from mixedfx.model.likelihood import marginal_log_likelihood

__all__ = ["boundary_components", "zero_components"]


def zero_components(params: ModelParameters, components) -> ModelParameters:
    """``params`` with the standard deviations ``components`` (``(term, coefficient)``
    pairs) set to zero: the coefficient's row of the term's Cholesky factor."""
    scale_tril = [np.array(L, dtype=np.float64) for L in params.random_scale_tril]
    for term, coefficient in components:
        scale_tril[term][coefficient, :] = 0.0
    return ModelParameters(params.fixed_effects, tuple(scale_tril), dict(params.family_params))


def _scaled_component(params: ModelParameters, component, sd: float) -> ModelParameters:
    """``params`` with the standard deviation ``component`` set to ``sd`` (its row of the
    Cholesky factor rescaled, the correlations kept)."""
    scale_tril = [np.array(L, dtype=np.float64) for L in params.random_scale_tril]
    term, coefficient = component
    row = scale_tril[term][coefficient, :]
    scale_tril[term][coefficient, :] = row * (sd / np.sqrt(row @ row))
    return ModelParameters(params.fixed_effects, tuple(scale_tril), dict(params.family_params))


def _interior_maximum(model, params, component, at_zero: float, *, seed: int, gain: float = 1e-6) -> bool:
    """Whether the Laplace log-likelihood along the standard deviation ``component``
    peaks above zero: more than ``gain`` above ``at_zero``, its value at zero, somewhere
    in (0, twice the estimate]."""
    term, coefficient = component
    row = np.asarray(params.random_scale_tril[term])[coefficient, :]
    estimate = float(np.sqrt(row @ row))
    if not estimate > 0.0:  # already at zero
        return False
    best = minimize_scalar(lambda sd: -_log_likelihood(model, _scaled_component(params, component, sd),
                                                       reml=False, seed=seed),
                           bounds=(1e-6 * estimate, 2.0 * estimate), method="bounded",
                           options={"xatol": 1e-3 * estimate})
    return -float(best.fun) > at_zero + gain


def _log_likelihood(model: MixedModel, params: ModelParameters, *, reml: bool, seed: int) -> float:
    if model.family.conjugate_gaussian:
        exact = gaussian_marginal(model, params)
        return exact.reml_log_likelihood if reml else exact.profiled_log_likelihood
    return marginal_log_likelihood(model, params, seed=seed, n_draws=0).laplace


def boundary_components(model: MixedModel, params: ModelParameters, *, reml: bool = False,
                        relative: float | None = None,
                        tolerance: float = 1e-3, seed: int = 0) -> tuple[list, list[str]]:
    """The standard deviations estimated at zero.

    Parameters
    ----------
    model : MixedModel
    params : ModelParameters
        The estimates.
    reml : bool, default False
        Judge by the restricted likelihood (a REML fit; Gaussian family).
    relative : float, optional
        Only standard deviations below ``relative`` times the residual sd (Gaussian)
        or ``relative`` on the linear predictor's scale (other families) are tried;
        by default the family's ``boundary_candidate_sd`` (0.05 Gaussian, 0.25 others).
    tolerance : float, default 1e-3
        Largest drop of the log-likelihood that still counts as no drop.
    seed : int

    Returns
    -------
    components : list of (int, int)
        ``(term, coefficient)`` of each standard deviation at zero.
    names : list of str
        Their names in :attr:`FitSummary.parameter_names`.

    Examples
    --------
    Two groups with the same mean: the likelihood is highest at a group sd of zero,
    so a small estimate is moved there; a large one is left alone:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> from mixedfx.inference.boundary import boundary_components
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 1.0, 2.0]), (term,), ("Intercept",))
    >>> boundary_components(model, ModelParameters(np.array([1.5]), np.array([0.01]), {"sigma": 0.5}))
    ([(0, 0)], ['sd(g)'])
    >>> boundary_components(model, ModelParameters(np.array([1.5]), np.array([1.0]), {"sigma": 0.5}))
    ([], [])
    """
    layout = ParameterLayout.from_model(model)
    sd_names = [name for name, kind in zip(layout.names, layout.kinds) if kind == "sd"]
    residual_sd = model.family.residual_sd(params.family_params)
    unit = 1.0 if residual_sd is None else residual_sd
    relative = model.family.boundary_candidate_sd if relative is None else relative
    candidates, position = [], 0
    for k, L in enumerate(params.random_scale_tril):
        sds = np.sqrt(np.diag(L @ L.T))
        for c, sd in enumerate(sds):
            if sd < relative * unit:
                candidates.append(((k, c), sd_names[position]))
            position += 1
    if not candidates:
        return [], []
    try:
        reference = _log_likelihood(model, params, reml=reml, seed=seed)
    except (DenseBlockTooLarge, np.linalg.LinAlgError):  # too large or degenerate: leave it to the trace
        return [], []
    components, names = [], []
    for component, name in candidates:
        trial = zero_components(params, components + [component])
        at_zero = _log_likelihood(model, trial, reml=reml, seed=seed)
        if at_zero < reference - tolerance:
            continue
        if model.family.conjugate_gaussian or not _interior_maximum(
                model, zero_components(params, components), component, at_zero, seed=seed):
            components.append(component)
            names.append(name)
    return components, names
